#!/usr/bin/env bash
# bench/depth.sh [--size MIB] [--days N] [--percent P] [--repeat N] [--warm] [--work DIR]
# Restore time against chain depth, and verify against restore, in one run:
#  - a disk (bench/mkdisk.sh, 60% full) backed up once (seq 0), then after
#    each of N days of changes (bench/dayofchanges.sh, P% each, seeds 1..N)
#    backed up again (seq 1..N): one chain of depth N;
#  - restore of the point at seq 1, 10 and N (the same disk, more and more
#    images to read from), each to a new file, checked against the disk of
#    that day;
#  - verify of the full alone against restore of the full (the same bytes
#    read, decompressed and hashed: throughput = their time ratio), and
#    verify of the whole chain.
# Prints one table: case, median seconds, ratio, peak RSS. The page cache is
# dropped before every timed command (root), or kept with --warm.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
CBIMG=${CBIMG:-$here/../build/cbimg}
size=512 days=50 pct=1 repeat=3 warm=0 work=/tmp/cbimg-depth
while [ $# -gt 0 ]; do
	case $1 in
	--size) size=$2; shift 2 ;;
	--days) days=$2; shift 2 ;;
	--percent) pct=$2; shift 2 ;;
	--repeat) repeat=$2; shift 2 ;;
	--warm) warm=1; shift ;;
	--work) work=$2; shift 2 ;;
	*) echo "usage: $0 [--size MIB] [--days N] [--percent P] [--repeat N] [--warm] [--work DIR]" >&2; exit 2 ;;
	esac
done
[ "$days" -ge 10 ] || { echo "depth.sh: --days must be at least 10" >&2; exit 2; }
. "$here/lib.sh"
bench_start depth.sh
[ "$warm" = 0 ] || can_drop=0

# med NAME CMD...: run CMD $repeat times (page cache dropped first unless
# --warm); SEC = the median wall seconds, RSS = the largest peak RSS (KiB)
med() {
	local name=$1 i all=() rss=0 s r
	shift
	for ((i = 1; i <= repeat; i++)); do
		rm -f "$work/out.img"
		drop
		/usr/bin/time -f '%e %M' -o "$work/$name.time" "$@" >"$work/$name.out" 2>"$work/$name.err" ||
			{ echo "depth.sh: $name failed:" >&2; cat "$work/$name.err" >&2; exit 1; }
		read -r s r <"$work/$name.time"
		all+=("$s")
		[ "$r" -gt "$rss" ] && rss=$r
	done
	SEC=$(printf '%s\n' "${all[@]}" | sort -n | sed -n "$(( (repeat + 1) / 2 ))p")
	RSS=$rss ALL="${all[*]}"
}
rows=$work/rows
row() { printf '| %-40s | %8.3f | %6.2f | %7.1f | %s |\n' "$1" "$SEC" "$2" "$(echo "$RSS / 1024" | bc -l)" "$3" >>"$rows"; }

d=$work/disk.img
D=$work/dest
export CBIMG_STATE_DIR=$work/state
bash "$here/mkdisk.sh" "$d" "$size" >/dev/null
mkdir -p "$D"
"$CBIMG" backup -q "$d" "$D"
sha256sum <"$d" | cut -d' ' -f1 >"$work/sha.0"
for ((day = 1; day <= days; day++)); do
	bash "$here/dayofchanges.sh" "$d" "$pct" "$day" >/dev/null
	"$CBIMG" backup -q "$d" "$D"
	case $day in 1 | 10 | "$days") sha256sum <"$d" | cut -d' ' -f1 >"$work/sha.$day" ;; esac
done
point() { ls "$D"/*_"$([ "$1" = 0 ] && echo full || echo incr)$(printf %04d "$1")"_*.cbx; }

for s in 1 10 "$days"; do
	med "restore$s" "$CBIMG" restore -q "$(point "$s")" "$work/out.img"
	[ "$(sha256sum <"$work/out.img" | cut -d' ' -f1)" = "$(cat "$work/sha.$s")" ] ||
		{ echo "depth.sh: restore of seq $s is WRONG" >&2; exit 1; }
	[ "$s" = 1 ] && base=$SEC
	row "restore, depth $s" "$(echo "$SEC / $base" | bc -l)" "median of $ALL s; ratio to depth 1"
done
med restore0 "$CBIMG" restore -q "$(point 0)" "$work/out.img"
r0=$SEC
row "restore of the full" 1 "median of $ALL s"
med verify0 "$CBIMG" verify -q --no-state "$(point 0)"
row "verify of the full" "$(echo "$r0 / $SEC" | bc -l)" "median of $ALL s; ratio = verify throughput / restore's"
med verifyall "$CBIMG" verify -q --no-state "$D"
row "verify of the whole chain ($((days + 1)) points)" "$(echo "$SEC / $r0" | bc -l)" \
	"median of $ALL s; $(du -cb "$D"/*.cbi "$D"/*.cbx | tail -n 1 | cut -f1) bytes of files; ratio to restore of the full"

echo "cbimg depth bench, $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs ($(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "${size} MiB disk, ${days} days of ${pct}% changes, median of $repeat; page cache $([ "$can_drop" = 1 ] && echo "dropped before every command (cold)" || echo "warm (not dropped)")"
printf '| %-40s | %8s | %6s | %7s | %s |\n' case seconds ratio "RSS MiB" note
printf '|%s|---------:|-------:|--------:|------|\n' "------------------------------------------"
cat "$rows"
