#!/usr/bin/env bash
# bench/prune.sh [--size MIB] [--percent P] [--repeat N] [--work DIR] [--reuse] [--dest-fs ext4|exfat|vfat]
#                 [--no-prefault]
# What a prune costs against cp of the bytes involved (issue 11, "Speed"):
#   fold  - 5 incrementals folded into the next kept point (a full, i1..i6;
#           --keep-monthly 2 keeps the full and i6, made in two months with
#           the clock shim): its merged image against cp of as many bytes;
#   roll  - the full rolled forward (--keep-last 6 removes the full; i1
#           becomes a synthetic full): against cp of the new full's bytes.
# The target of both is a ratio of at most 1.5. Each is timed with a cold
# page cache (dropped before every timed command: root) and a warm one (the
# files read once before), prune and cp alternately, each after the same
# preparation (prep below), so that a loaded machine disturbs both sides
# alike; medians of --repeat runs, ratios of the medians, and the ratios
# pair by pair. CPU seconds (user + system) are reported beside the wall
# times: a loaded machine stretches them less. cp is `cp A B && sync B` (cbimg syncs what it writes; cp
# without a sync would only fill the page cache). The source disk is moved
# away before the prunes: they never read it. --reuse keeps DIR at the end
# and, when it holds a chain made with the same --size and --percent, times
# on it without making it again (to compare two builds on the same chain).
# --dest-fs ext4 times on a file system of its own instead of DIR's: an
# ext4 made with mkfs.ext4's defaults (a journal, no online discard, as on a
# USB disk) on a loop device whose file lies in DIR, made afresh and
# unmounted at the end (root); exfat and vfat (FAT32) likewise, the file
# systems of most shared USB disks. Not xfs or btrfs: there cp clones the
# file (copy_file_range shares its extents), which no merge of records of
# many files can. Without it, DIR's file system is what is
# measured: bench/RESULTS.md shows why that matters (this VM's root file
# system has no journal and is mounted with discard, so every unlink of a
# prune waits for the discard of the blocks it frees).
# Before every timed command, prune and cp alike, the bench writes and
# removes a file on /dev/shm of twice the chain's size (--no-prefault: not):
# on a VM whose balloon reports free pages to its host (virtio-balloon
# free page reporting, as on the machine of bench/RESULTS.md), memory
# freed a few seconds before is handed back, and the first touch of each
# page costs a host fault (there 1.2-1.5 s of system time for 421 MiB of
# page cache, against 0.15-0.3 s). Which side pays it depended on what the
# previous command freed and when; touched just before, the free memory
# both sides take is the guest's own; and, as root, free page reporting is
# turned off while timing (below), so that it stays the guest's own. Both
# are skipped with --no-prefault, and the prefault when /dev/shm is missing
# or MemAvailable is below three times that size.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
CBIMG=${CBIMG:-$here/../build/cbimg}
size=4096 percent=3 repeat=3 work=/tmp/cbimg-prune-bench reuse=0 destfs='' prefault=1
while [ $# -gt 0 ]; do
	case $1 in
	--size) size=$2; shift 2 ;;
	--percent) percent=$2; shift 2 ;;
	--repeat) repeat=$2; shift 2 ;;
	--work) work=$2; shift 2 ;;
	--reuse) reuse=1; shift ;;
	--dest-fs) destfs=$2; shift 2 ;;
	--no-prefault) prefault=0; shift ;;
	*) echo "usage: $0 [--size MIB] [--percent P] [--repeat N] [--work DIR] [--reuse] [--dest-fs ext4|exfat|vfat] [--no-prefault]" >&2; exit 2 ;;
	esac
done
. "$here/lib.sh"
export TZ=UTC
if [ "$reuse" = 1 ] && [ "$(cat "$work/chain.stamp" 2>/dev/null)" = "$size $percent" ]; then
	[ -x "$CBIMG" ] || { echo "prune.sh: no cbimg at $CBIMG (run make)" >&2; exit 1; }
	can_drop=0
	if [ "$(id -u)" = 0 ] && [ -w /proc/sys/vm/drop_caches ]; then can_drop=1; fi
	echo "reusing the chain in $work"
else
bench_start prune.sh

cc -O2 -shared -fPIC -o "$work/clock.so" "$here/../tests/e2e/clock_shim.c" -ldl
disk=$work/disk.img
bash "$here/mkdisk.sh" "$disk" "$size" >/dev/null
mkdir -p "$work/orig"
now=1793000000 # 2026-10-25: the full in October, the incrementals from November 12
for k in 0 1 2 3 4 5 6; do
	if [ "$k" -gt 0 ]; then
		bash "$here/dayofchanges.sh" "$disk" "$percent" "$k" >/dev/null
		now=$((k == 1 ? 1794500000 : now + 86400))
	fi
	CBIMG_TEST_TIME=$now LD_PRELOAD=$work/clock.so \
		"$CBIMG" backup -q --no-state --job bench --threads 2 "$disk" "$work/orig"
done
mv "$disk" "$work/disk.away" # prune never reads the source
echo "$size $percent" >"$work/chain.stamp"
fi
# at exit: free page reporting as it was, the file system of --dest-fs
# unmounted and removed, and $work removed unless --reuse
rep=/sys/module/page_reporting/parameters/page_reporting_order rep_old='' fsimg='' loopdev='' tw=$work
cleanup() {
	if [ -n "$rep_old" ]; then echo "$rep_old" >"$rep"; fi
	if [ -n "$fsimg" ]; then
		if mountpoint -q "$tw"; then umount "$tw"; fi
		if [ -n "$loopdev" ]; then losetup -d "$loopdev" 2>/dev/null || true; fi
		rm -f "$fsimg"
	fi
	if [ "$reuse" != 1 ]; then rm -rf --one-file-system "$work"; fi
}
trap cleanup EXIT
du -sh "$work/orig" | sed 's/^/chain: /'
# pf: MiB written to /dev/shm and removed before each timed command (0: none)
pf=0
if [ "$prefault" = 1 ]; then
	pf=$(du -sm "$work/orig" | awk '{ print $1 * 2 }')
	avail=$(awk '$1 == "MemAvailable:" { print int($2 / 1024) }' /proc/meminfo)
	if [ ! -d /dev/shm ] || [ "$avail" -lt $((pf * 3)) ]; then
		echo "not prefaulting: /dev/shm missing or $avail MiB available, under 3 x $pf"
		pf=0
	else
		echo "prefault: $pf MiB written to /dev/shm and removed before each timed command"
	fi
fi
prefault() {
	[ "$pf" -gt 0 ] || return 0
	dd if=/dev/zero of=/dev/shm/cbimg-prune-bench.pf bs=1M count="$pf" status=none
	rm -f /dev/shm/cbimg-prune-bench.pf
}

# tw: where the timed prunes and copies run (DIR, or the ext4 of --dest-fs)
cpa="cp -a" # how prep copies the chain (FAT keeps no owners or modes)
case $destfs in
'') echo "file system: $(findmnt -no FSTYPE,OPTIONS -T "$work")" ;;
ext4 | exfat | vfat)
	[ "$(id -u)" = 0 ] || { echo "prune.sh: --dest-fs needs root (a loop device)" >&2; exit 1; }
	tw=$work/mnt
	fsimg=$work/fs.img
	if mountpoint -q "$tw"; then umount "$tw"; fi
	# room for the chain twice (orig and its copy) and the merged image
	rm -f "$fsimg"
	truncate -s "$(du -sm "$work/orig" | awk '{ print int($1 * 3 + 1024) }')M" "$fsimg"
	case $destfs in
	ext4) mkfs.ext4 -q -F "$fsimg" ;;
	exfat) mkfs.exfat "$fsimg" >/dev/null; cpa="cp -R" ;;
	vfat) mkfs.vfat -F 32 "$fsimg" >/dev/null; cpa="cp -R" ;;
	esac
	mkdir -p "$tw"
	loopdev=$(losetup -f --show "$fsimg")
	# the kernel's driver, else the FUSE one (this VM's kernel has no FAT)
	if mount -t "$destfs" "$loopdev" "$tw" 2>/dev/null; then
		driver="kernel $destfs"
	elif [ "$destfs" = exfat ] && mount.exfat-fuse "$loopdev" "$tw" >/dev/null 2>&1; then
		driver=exfat-fuse
	elif [ "$destfs" = vfat ] && fusefat -o rw+ "$loopdev" "$tw" >/dev/null 2>&1; then
		driver=fusefat
	else
		echo "prune.sh: unable to mount $destfs on $loopdev" >&2
		exit 1
	fi
	$cpa "$work/orig" "$tw/orig"
	sync
	echo "file system: $destfs (mkfs defaults), $driver, on $loopdev, $(findmnt -no OPTIONS "$tw")"
	;;
*) echo "prune.sh: --dest-fs takes ext4, exfat or vfat" >&2; exit 2 ;;
esac

# Free page reporting off while timing (root, with --prefault's default):
# the balloon of the VM of bench/RESULTS.md reports free memory to its host
# continuously (about 1 GiB a pass, a pass every few seconds even when
# idle), so the memory prefault touched was often handed back again before
# the timed command took it. page_reporting_order above the largest order
# (10) reports nothing; restored at exit.
if [ "$pf" -gt 0 ] && [ -w "$rep" ]; then
	rep_old=$(cat "$rep")
	echo 11 >"$rep"
	echo "free page reporting off while timing (page_reporting_order $rep_old -> 11, restored at exit)"
elif [ -e "$rep" ]; then
	echo "free page reporting left on (needs root and --prefault's default): the ratios swing more"
fi

# prep CACHE [FILE]: what comes before each timed command, prune and cp
# alike, so that both start from the same recent history (on the VM of
# bench/RESULTS.md, what was written a few seconds before slows what comes
# next, through the host): a fresh copy of the chain in d, synced; then the
# page cache dropped (cold) or d and FILE read once (warm); then prefault.
prep() {
	rm -rf "$tw/d" "$tw/copy"
	$cpa "$tw/orig" "$tw/d"
	sync
	if [ "$1" = cold ]; then drop; else cat "$tw/d"/* ${2:+"$2"} >/dev/null; fi
	prefault
}

# one NAME RULE CACHE: a timed prune and a timed cp of as many bytes, appended
# to $work/times as "NAME CACHE prune|cp SECONDS USER SYS"
one() {
	local name=$1 rule=$2 cache=$3 f
	prep "$cache"
	# shellcheck disable=SC2086
	/usr/bin/time -f "$name $cache prune %e %U %S" -a -o "$work/times" "$CBIMG" prune --json $rule "$tw/d" >"$work/pr.json"
	jq -r .bytes_written "$work/pr.json" >"$work/bytes.$name"
	# the merged image: the bytes the prune wrote, copied by cp
	f=$(ls "$tw/d"/*-m0*.cbi*)
	mv "$f" "$tw/merged"
	prep "$cache" "$tw/merged"
	/usr/bin/time -f "$name $cache cp %e %U %S" -a -o "$work/times" sh -c 'cp "$1" "$2" && sync "$2"' sh "$tw/merged" "$tw/copy"
	rm -f "$tw/copy" "$tw/merged"
}

: >"$work/times"
for i in $(seq "$repeat"); do
	for cache in cold warm; do
		one fold "--keep-monthly 2" "$cache"
		one roll "--keep-last 6" "$cache"
	done
done

median() { sort -n | awk '{ a[NR] = $1 } END { print (NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2) }'; }
echo
echo "cbimg prune against cp of the bytes it writes; $size MiB disk, $percent% a day, medians of $repeat"
[ "$can_drop" = 1 ] || echo "(not root: the page cache was not dropped; 'cold' is warm too)"
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) cores"
printf '%-6s %-5s %8s %8s %8s %6s %-14s %9s %9s %6s\n' case cache MiB "prune s" "cp s" ratio target \
	"prune cpu" "cp cpu" ratio
for name in fold roll; do
	for cache in cold warm; do
		p=$(awk -v n="$name" -v c="$cache" '$1 == n && $2 == c && $3 == "prune" { print $4 }' "$work/times" | median)
		c=$(awk -v n="$name" -v c="$cache" '$1 == n && $2 == c && $3 == "cp" { print $4 }' "$work/times" | median)
		pc=$(awk -v n="$name" -v c="$cache" '$1 == n && $2 == c && $3 == "prune" { print $5 + $6 }' "$work/times" | median)
		cc=$(awk -v n="$name" -v c="$cache" '$1 == n && $2 == c && $3 == "cp" { print $5 + $6 }' "$work/times" | median)
		r=$(ratio "$p" "$c")
		printf '%-6s %-5s %8.1f %8.3f %8.3f %6.2f %-14s %9.3f %9.3f %6.2f\n' "$name" "$cache" \
			"$(mib "$(cat "$work/bytes.$name")")" "$p" "$c" "$r" \
			"$(awk -v r="$r" 'BEGIN { print (r <= 1.5 ? "PASS (<= 1.5)" : "FAIL (> 1.5)") }')" "$pc" "$cc" \
			"$(ratio "$pc" "$(awk -v c="$cc" 'BEGIN { print c + 0.001 }')")"
	done
done
# The same pairs ratio by ratio: each prune against the cp right after it
# (one call of one()), so that a minute's drift falls on both sides of a
# ratio; the median and the spread of those ratios.
echo "pair by pair (each prune / the cp after it): median [min-max]"
for name in fold roll; do
	for cache in cold warm; do
		awk -v n="$name" -v c="$cache" '$1 == n && $2 == c { if ($3 == "prune") p = $4; else if (p) { print p / $4; p = 0 } }' \
			"$work/times" | sort -n | awk -v n="$name" -v c="$cache" '{ a[NR] = $1 }
			END { if (!NR) exit; m = NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2
				printf "%-6s %-5s %6.2f [%.2f-%.2f]\n", n, c, m, a[1], a[NR] }'
	done
done
