#!/usr/bin/env bash
# bench/mount.sh - cbimg mount (FUSE view of a point) against restore.
#   CBIMG=/abs/path/cbimg bash bench/mount.sh [--size MIB] [--cache SIZE] [--work DIR] [--repeat N]
# Needs root (FUSE, drop_caches, the --fs loop mount). On a disk made by
# mkdisk.sh (ext4 with real files) with a full and an incremental point
# (a day of changes), for the incremental point:
#   1. sequential read of the mounted disk.img (dd bs=1M to /dev/null) against
#      `cbimg restore` of the point to a new file in /dev/shm (restore cannot
#      write to /dev/null): the ratio restore time / mount time (>= 0.8 is the
#      issue's target: the view at least 0.8 x restore's throughput);
#   2. random 4 KiB reads (bench/randread.c, 4000 distinct pages, readahead
#      off) after a cold start: p50/p90/p99 latency, and the point reader's
#      counters (the view's user.cbimg.stats attribute: cache hits and misses,
#      zero blocks, which need no cache);
#   3. `find | xargs sha256sum` over the --fs mounted tree against the same
#      over the source file system loop-mounted read-only;
#   4. the serving process's peak RSS (VmHWM) against --cache.
# The page cache is dropped before every timed command. Times are the median
# of --repeat runs (default 3).
set -euo pipefail
export PATH=$PATH:/usr/sbin:/sbin
here=$(cd "$(dirname "$0")" && pwd)
CBIMG=${CBIMG:-$here/../build/cbimg}
size=1024 cache=64M work=/tmp/cbimg-bench-mount repeat=3
while [ $# -gt 0 ]; do
	case $1 in
	--size) size=$2; shift 2 ;;
	--cache) cache=$2; shift 2 ;;
	--work) work=$2; shift 2 ;;
	--repeat) repeat=$2; shift 2 ;;
	*) echo "usage: $0 [--size MIB] [--cache SIZE] [--work DIR] [--repeat N]" >&2; exit 2 ;;
	esac
done
[ "$(id -u)" = 0 ] || { echo "bench/mount.sh: needs root (FUSE, drop_caches, loop mounts)" >&2; exit 1; }
. "$here/lib.sh"
bench_start mount
m=$work/m src=$work/srcmnt shm=/dev/shm/cbimg-bench-mount.img
mkdir -p "$m" "$src" "$work/d"
cleanup_mounts() {
	"$CBIMG" umount "$m" >/dev/null 2>&1 || true
	umount "$src" >/dev/null 2>&1 || true
	rm -f "$shm"
}
trap 'cleanup_mounts; rm -rf --one-file-system "$work"' EXIT

median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
# t CMD...: seconds taken by CMD, page cache dropped first
t() {
	drop
	local a b
	a=$(date +%s.%N)
	"$@" >/dev/null 2>&1
	b=$(date +%s.%N)
	echo "$b - $a" | bc -l
}

echo "== disk: ${size} MiB, $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"
bash "$here/mkdisk.sh" "$work/disk.img" "$size" >/dev/null
"$CBIMG" backup -q --no-state "$work/disk.img" "$work/d"
bash "$here/dayofchanges.sh" "$work/disk.img" 3 1 >/dev/null
"$CBIMG" backup -q --no-state "$work/disk.img" "$work/d"
p=$(ls -1 "$work"/d/*.cbx | sort | tail -1)
cc -O2 -o "$work/randread" "$here/randread.c"

# 1. sequential
rs=() ms=()
for _ in $(seq "$repeat"); do
	rm -f "$shm"
	rs+=("$(t "$CBIMG" restore -q "$p" "$shm")")
	rm -f "$shm"
	"$CBIMG" mount --cache "$cache" "$p" "$m"
	ms+=("$(t dd if="$m/disk.img" of=/dev/null bs=1M)")
	"$CBIMG" umount "$m"
done
r=$(printf '%s\n' "${rs[@]}" | median)
s=$(printf '%s\n' "${ms[@]}" | median)
bytes=$(stat -c %s "$work/disk.img")
printf 'sequential: restore to /dev/shm %.3f s (%.0f MB/s), mounted dd bs=1M %.3f s (%.0f MB/s), view/restore throughput %.2f\n' \
	"$r" "$(echo "$bytes / $r / 1000000" | bc -l)" "$s" "$(echo "$bytes / $s / 1000000" | bc -l)" "$(echo "$r / $s" | bc -l)"
echo "  restore runs: ${rs[*]}; mount runs: ${ms[*]}"

# 2. random 4 KiB reads, cold (a fresh mount, page cache dropped)
"$CBIMG" mount --cache "$cache" "$p" "$m"
drop
echo "random 4 KiB, cold: $("$work/randread" "$m/disk.img" 4000 7)"
echo "  stats: $("$work/randread" --xattr "$m" user.cbimg.stats)"
pid=$("$work/randread" --xattr "$m" user.cbimg.pid)
echo "peak RSS of the serving process: $(awk '/VmHWM/ { printf "%.1f MiB", $2 / 1024 }' "/proc/$pid/status") (--cache $cache)"
"$CBIMG" umount "$m"

# 3. a tree walk with sha256sum: --fs view against the source file system
walk() { (cd "$1" && find . -type f -print0 | xargs -0 -r sha256sum >/dev/null); }
mount -o ro,loop,noload "$work/disk.img" "$src"
os=()
for _ in $(seq "$repeat"); do os+=("$(t walk "$src")"); done
umount "$src"
"$CBIMG" mount --fs --cache "$cache" "$p" "$m"
vs=()
for _ in $(seq "$repeat"); do vs+=("$(t walk "$m/fs")"); done
pid=$("$work/randread" --xattr "$m" user.cbimg.pid)
hwm=$(awk '/VmHWM/ { printf "%.1f MiB", $2 / 1024 }' "/proc/$pid/status")
echo "  stats: $("$work/randread" --xattr "$m" user.cbimg.stats)"
"$CBIMG" umount "$m"
o=$(printf '%s\n' "${os[@]}" | median)
v=$(printf '%s\n' "${vs[@]}" | median)
printf 'find | xargs sha256sum: source fs %.3f s, --fs view %.3f s, view/source time %.2f\n' "$o" "$v" "$(echo "$v / $o" | bc -l)"
echo "  source runs: ${os[*]}; view runs: ${vs[*]}"
echo "peak RSS of the serving process after the walks: $hwm (--cache $cache)"
