#!/usr/bin/env bash
# bench/snapshot.sh - the snapshot modes of a live backup (issue 13): how
# long the file system stays frozen with --snapshot trace against --snapshot
# freeze (which freezes for the whole read), and what tracing costs the
# run's time.
#
#   CBIMG=/abs/build/cbimg bash bench/snapshot.sh [--size GIB] [--data MIB]
#                                                 [--rate N] [--repeat N]
#
# An ext4 of --size GiB (default 4) on a loop device over a sparse file in
# /tmp, mounted, holding --data MiB (default 1024) of random files; a full
# backup first (not timed); then --repeat (default 3) pairs of incremental
# backups, freeze then trace, while a writer rewrites a 4 KiB piece of a
# 1 GiB file at a random place --rate times a second (default 20) with
# fdatasync: about 1% of the 256 KiB blocks written during one read of the
# default disk. Reports, as medians: each mode's freeze window (freeze_ms of
# --json) and blocks re-read (trace), and the ratio trace/freeze of the
# windows. Then the cost of tracing on the run's time: --repeat more pairs
# with the writer stopped (with it, freeze stops the writer for the whole
# read and trace does not, so the two runs would not do the same work),
# and the ratio trace/freeze of their times. Needs root and a free loop
# device.
set -euo pipefail
export LC_ALL=C
CBIMG=${CBIMG:?set CBIMG to the built cbimg}
size=4 data=1024 rate=20 repeat=3
while [ $# -gt 0 ]; do
	case $1 in
	--size) size=$2; shift 2 ;;
	--data) data=$2; shift 2 ;;
	--rate) rate=$2; shift 2 ;;
	--repeat) repeat=$2; shift 2 ;;
	*) echo "usage: bench/snapshot.sh [--size GIB] [--data MIB] [--rate N] [--repeat N]" >&2; exit 2 ;;
	esac
done
W=$(mktemp -d /tmp/cbimg-snapbench.XXXXXX)
L=
cleanup() {
	touch "$W/stop"
	wait 2>/dev/null || true
	mountpoint -q "$W/m" && umount "$W/m"
	[ -n "$L" ] && losetup -d "$L"
	rm -rf --one-file-system "$W"
}
trap cleanup EXIT
truncate -s "${size}G" "$W/disk.img"
mkfs.ext4 -q -F "$W/disk.img"
L=$(losetup -f --show "$W/disk.img")
mkdir -p "$W/m" "$W/d"
mount "$L" "$W/m"
for ((i = 0; i < data / 64; i++)); do
	head -c 64M /dev/urandom >"$W/m/data$i"
done
head -c 1G /dev/zero >"$W/m/hot" # the writer's file, allocated
sync
"$CBIMG" backup -q --no-state --snapshot freeze "$L" "$W/d" || true # the full: not timed

# the writer: $rate fdatasync'd 4 KiB writes a second at random places
cat >"$W/writer.sh" <<'EOF'
f=$1 pause=$2 stop=$3
while [ ! -e "$stop" ]; do
	dd if=/dev/urandom of="$f" bs=4k count=1 seek=$((RANDOM * 8 % 262144)) conv=notrunc,fdatasync status=none
	sleep "$pause"
done
EOF
bash "$W/writer.sh" "$W/m/hot" "$(awk -v r="$rate" 'BEGIN { printf "%.4f", 1 / r }')" "$W/stop" &
writer=$!

run() { # MODE: one incremental, its --json into $W/out.json
	"$CBIMG" backup --json --no-state --snapshot "$1" "$L" "$W/d" >"$W/out.json"
	jq -r '[.freeze_ms, .seconds, .blocks_reread, .blocks_total] | @tsv' "$W/out.json"
}
median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
: >"$W/freeze.tsv"
: >"$W/trace.tsv"
for ((r = 0; r < repeat; r++)); do
	run freeze >>"$W/freeze.tsv"
	run trace >>"$W/trace.tsv"
done
touch "$W/stop"
wait "$writer"
: >"$W/freeze-quiet.tsv"
: >"$W/trace-quiet.tsv"
for ((r = 0; r < repeat; r++)); do
	run freeze >>"$W/freeze-quiet.tsv"
	run trace >>"$W/trace-quiet.tsv"
done
fz_ms=$(cut -f1 "$W/freeze.tsv" | median)
fz_s=$(cut -f2 "$W/freeze-quiet.tsv" | median)
tr_ms=$(cut -f1 "$W/trace.tsv" | median)
tr_s=$(cut -f2 "$W/trace-quiet.tsv" | median)
tr_re=$(cut -f3 "$W/trace.tsv" | median)
total=$(head -1 "$W/trace.tsv" | cut -f4)
echo "cbimg snapshot bench, $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs, ${size} GiB ext4 on a loop device," \
	"${data} MiB of data, writer ${rate} x 4 KiB/s; medians of $repeat incremental runs each"
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-8s %12s %10s %14s\n' mode freeze_ms seconds blocks_reread
echo "(freeze_ms and blocks_reread with the writer; seconds without it)"
printf '%-8s %12.1f %10.2f %14s\n' freeze "$fz_ms" "$fz_s" -
printf '%-8s %12.1f %10.2f %14s\n' trace "$tr_ms" "$tr_s" "$tr_re of $total"
awk -v a="$tr_ms" -v b="$fz_ms" -v c="$tr_s" -v d="$fz_s" 'BEGIN {
	printf "freeze window, trace / freeze: %.4f (target <= 0.05)\n", a / b
	printf "run time, trace / freeze:      %.3f (target <= 1.05)\n", c / d }'
echo "raw runs (freeze_ms seconds blocks_reread blocks_total):"
sed 's/^/  freeze, writer /' "$W/freeze.tsv"
sed 's/^/  trace, writer  /' "$W/trace.tsv"
sed 's/^/  freeze, quiet  /' "$W/freeze-quiet.tsv"
sed 's/^/  trace, quiet   /' "$W/trace-quiet.tsv"
