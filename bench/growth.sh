#!/usr/bin/env bash
# bench/growth.sh [--sizes "512 1024 2048"] [--percents "1 3 10 30"]
#                 [--apparent "16G 256G 1T"] [--work DIR]
# How cbimg's cost grows, in one run, each figure as a ratio to `cat` of
# the same source, or for sparse files to the dense disk's backup (page
# cache dropped before every timed command):
#  1. disk size: a realistic disk (bench/mkdisk.sh, 60% full) of each size,
#     full and incremental after a 3% day of changes (bench/dayofchanges.sh);
#  2. changed fraction: the largest disk, incrementals after days of
#     changes of each percentage, each from the same starting disk;
#  3. apparent size: the smallest disk's data at the start of sparse files
#     of each apparent size, full and incremental.
# Prints one table: case, seconds, cat seconds, ratio, bytes read and
# written, peak RSS. Needs root to drop the page cache (else it says so).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
CBIMG=${CBIMG:-$here/../build/cbimg}
sizes="512 1024 2048" percents="1 3 10 30" apparent="16G 256G 1T" work=/tmp/cbimg-growth
while [ $# -gt 0 ]; do
	case $1 in
	--sizes) sizes=$2; shift 2 ;;
	--percents) percents=$2; shift 2 ;;
	--apparent) apparent=$2; shift 2 ;;
	--work) work=$2; shift 2 ;;
	*) echo "usage: $0 [--sizes LIST] [--percents LIST] [--apparent LIST] [--work DIR]" >&2; exit 2 ;;
	esac
done
. "$here/lib.sh"
bench_start growth.sh

# timed NAME CMD...: wall seconds and peak RSS (KiB) of CMD into $SEC $RSS
timed() {
	local name=$1
	shift
	drop
	/usr/bin/time -f '%e %M' -o "$work/$name.time" "$@" >"$work/$name.out" 2>"$work/$name.err"
	read -r SEC RSS <"$work/$name.time"
}
catsec() { timed cat cat "$1" >/dev/null; CAT=$SEC; }
backup() { # NAME SRC DEST
	timed "$1" "$CBIMG" backup --json --no-state --no-space-check --job g "$2" "$3"
	READ=$(jq -r .bytes_read "$work/$1.out")
	WRITTEN=$(jq -r .bytes_written "$work/$1.out")
	CHANGED=$(jq -r .blocks_changed "$work/$1.out")
}
rows=$work/rows
row() { # CASE NOTE
	printf '| %-34s | %7.2f | %6.2f | %6.2f | %13s | %13s | %7.1f | %s |\n' "$1" "$SEC" "$CAT" \
		"$(echo "$SEC / $CAT" | bc -l)" "$READ" "$WRITTEN" "$(echo "$RSS / 1024" | bc -l)" "$2" >>"$rows"
}

last=
for s in $sizes; do
	d=$work/disk$s.img
	bash "$here/mkdisk.sh" "$d" "$s" >/dev/null
	cp --sparse=always "$d" "$work/base$s.img"
	mkdir -p "$work/d$s"
	catsec "$d"
	backup full$s "$d" "$work/d$s"
	row "size ${s} MiB: full" "$CHANGED blocks stored"
	[ -n "$last" ] || DENSE_FULL=$SEC
	bash "$here/dayofchanges.sh" "$d" 3 1 >/dev/null
	catsec "$d"
	backup incr$s "$d" "$work/d$s"
	row "size ${s} MiB: incremental 3%" "$CHANGED blocks changed"
	[ -n "$last" ] || DENSE_INCR=$SEC
	rm -rf "$work/d$s"
	last=$s
done

for p in $percents; do
	d=$work/pct.img
	cp --sparse=always "$work/base$last.img" "$d"
	rm -rf "$work/dp"
	mkdir -p "$work/dp"
	"$CBIMG" backup -q --no-state --job g "$d" "$work/dp"
	bash "$here/dayofchanges.sh" "$d" "$p" 7 >/dev/null
	catsec "$d"
	backup pct$p "$d" "$work/dp"
	row "${last} MiB, ${p}% changed: incremental" "$CHANGED blocks changed"
done
rm -rf "$work/dp" "$work/pct.img"

first=${sizes%% *}
for a in $apparent; do
	d=$work/sparse.img
	cp --sparse=always "$work/base$first.img" "$d"
	truncate -s "$a" "$d"
	rm -rf "$work/ds"
	mkdir -p "$work/ds"
	# baseline: the same backup of the dense disk (cat would read the holes)
	CAT=$DENSE_FULL
	backup sfull "$d" "$work/ds"
	row "${first} MiB data in ${a}: full" "baseline: dense full; index $(stat -c %s "$work/ds/$(basename "$(jq -r .point.index_file "$work/sfull.out")")") B"
	dd if="$work/disk$first.img" of="$d" conv=notrunc,sparse bs=1M status=none
	CAT=$DENSE_INCR
	backup sincr "$d" "$work/ds"
	row "${first} MiB data in ${a}: incremental" "baseline: dense incremental; $CHANGED blocks changed"
done

echo "cbimg growth bench, $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"
[ "$can_drop" = 1 ] || echo "note: not root: the page cache was not dropped, reads may be cached"
printf '| %-34s | %7s | %6s | %6s | %13s | %13s | %7s | %s |\n' case seconds base ratio "bytes read" "bytes written" "RSS MiB" note
printf '|%s|---------:|-------:|-------:|--------------:|--------------:|--------:|------|\n' "------------------------------------"
cat "$rows"
echo "ratio = cbimg seconds / base seconds: cat of the same source, or for the sparse files the same backup of the dense disk"
