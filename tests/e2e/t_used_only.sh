#!/usr/bin/env bash
# --used-only on a real ext4 file system on a loop device: files written,
# deleted (their stale blocks stay on the device), unmounted; a full and an
# incremental with --used-only read and store less than without it; every
# restore passes fsck -n, holds exactly the same files, and has zeros in
# every cbimg block whose file system blocks are all free (the deleted
# files' bytes there are not backed up); mixed points (used-only after a
# plain point) restore; refusals: mounted read-write, no ext file system,
# journal needing recovery.
#
# The files are generated here, not copied from the host: what the test sees
# must not depend on what the machine has installed. Nor may it depend on
# where the allocator puts the deleted files: a cbimg block (256 KiB) that
# holds even one used file system block is backed up whole, deleted bytes
# beside it included (mkfs gives this 192 MiB file system 1 KiB blocks, and
# its block 1 starts group 0, so a deleted file's first or last KiB often
# shares a cbimg block with a live file). The check therefore asks the file
# system which cbimg blocks are wholly free.
. "$(dirname "$0")/lib.sh"
need_root_loop
need_jq
[ "$SKIPPED" = 1 ] && finish

SIZE=$((192 * 1024 * 1024))
D=$T/dest
M=$T/mnt
R=$T/rmnt
mkdir -p "$D" "$M" "$R"
truncate -s "$SIZE" "$T/disk.img"
new_loop "$T/disk.img" || die "losetup"
A=$LOOPDEV
mkfs.ext4 -q -F "$A" >"$T/mkfs.out" 2>&1 || die "mkfs.ext4: $(cat "$T/mkfs.out")"

do_mount "$A" "$M" || die "mount $A"
# 1200 text files in 40 directories, of sizes from 1 byte to 48 KiB
for d in $(seq -w 0 39); do
	mkdir -p "$M/tree/d$d"
	for i in $(seq 0 29); do
		yes "cbimg used-only test, file d$d/f$i" | head -c $(((10#$d * 30 + i) * 7919 % 49152 + 1)) \
			>"$M/tree/d$d/f$i.txt"
	done
done
mkdir -p "$M/data"
head -c $((5 * 1024 * 1024)) /dev/urandom >"$M/data/keep.bin"
# 40 MiB of random bytes and 1 MiB of a recognisable pattern, then
# deleted: their blocks keep the bytes
head -c $((40 * 1024 * 1024)) /dev/urandom >"$M/gone.bin"
yes "DELETED-FILE-CONTENT-cbimg-used-only" | head -c $((1024 * 1024)) >"$M/gone.txt"
sync
rm -f "$M/gone.txt" "$M/gone.bin"
do_umount "$M" || die "umount"
grep -a -q -m1 "DELETED-FILE-CONTENT" "$A" || die "test setup: the deleted file's bytes are not on the device"

# tree_sum DIR: one SHA-256 over every file's path, type, size and contents
tree_sum() {
	(cd "$1" && find . -path ./lost+found -prune -o -print0 | sort -z |
		xargs -0 -r stat -c '%n %F %s %a' && find . -type f -print0 | sort -z | xargs -0 -r sha256sum) |
		sha256sum | cut -d' ' -f1
}
do_mount ro "$A" "$M" || die "mount ro"
TREE0=$(tree_sum "$M")
do_umount "$M"

# -------------------------------------------------------------- full
expect_exit 0 "$CBIMG" backup --json --no-state --job plain "$A" "$D" || die "plain full"
plain_read=$(jout .bytes_read) plain_written=$(jout .bytes_written)
expect_exit 0 "$CBIMG" backup --json --no-state --used-only --job used "$A" "$D" || die "used-only full"
check_eq "used-only full: point flagged" "$(jout .point.used_only)" true
check "used-only full: some blocks unused ($(jout .blocks_unused))" test "$(jout .blocks_unused)" -gt 0
check "used-only full reads less ($(jout .bytes_read) < $plain_read bytes)" test "$(jout .bytes_read)" -lt "$plain_read"
check "used-only full writes less ($(jout .bytes_written) < $plain_written bytes)" \
	test "$(jout .bytes_written)" -lt "$((plain_written - 20 * 1024 * 1024))"
full=$D/$(basename "$(jout .point.index_file)")
expect_exit 0 "$CBIMG" info --json "$full"
check_eq "info: used_only" "$(jout .used_only)" true
expect_exit 0 "$CBIMG" verify "$D"
list_json "$D" || die "list --json"
check_eq "list (catalog): used_only per point" \
	"$(jqr '[.[] | select(.job == "used" or .job == "plain") | "\(.job):\(.used_only)"] | sort | join(",")')" \
	"plain:false,used:true"

# free_runs DEV: the runs of cbimg blocks (256 KiB, the default) in which
# DEV's file system marks every block free, from dumpe2fs's free ranges
# (merged across groups), one "FIRST COUNT" per line.
BS=$((256 * 1024))
free_runs() {
	dumpe2fs "$1" 2>/dev/null | awk -v BS=$BS '
		function emit(  s, e, f, l) {
			s = ca * fbs; e = (cb + 1) * fbs
			f = int((s + BS - 1) / BS); l = int(e / BS)
			if (l > f) print f, l - f
		}
		/^Block size:/ { fbs = $3 }
		/^  Free blocks: / {
			sub(/^  Free blocks: /, "")
			n = split($0, r, /, */)
			for (i = 1; i <= n; i++) {
				if (r[i] == "") continue
				k = split(r[i], ab, "-"); a = ab[1] + 0; b = (k > 1 ? ab[2] : ab[1]) + 0
				if (cnt && a == cb + 1) { cb = b; continue }
				if (cnt) emit()
				ca = a; cb = b; cnt = 1
			}
		}
		END { if (cnt) emit() }'
}
# nonzero_runs IMG RUNS: how many of the runs (free_runs output in file RUNS)
# hold a byte other than zero in IMG
nonzero_runs() {
	local f n c=0
	while read -r f n; do
		[ "$(dd if="$1" bs=$BS skip="$f" count="$n" status=none | tr -d '\000' | head -c 1 | wc -c)" = 0 ] ||
			c=$((c + 1))
	done <"$2"
	echo $c
}

# restore_check LABEL POINT TREE: restore to a file, fsck -n, same files,
# zeros in every cbimg block the file system (still as backed up on $A)
# marks wholly free, where the device holds deleted data.
restore_check() {
	free_runs "$A" >"$T/free.runs"
	local stale
	stale=$(nonzero_runs "$A" "$T/free.runs")
	[ "$stale" -gt 0 ] || die "test setup: no wholly free cbimg block holds deleted data ($1)"
	rm -f "$T/r.img"
	expect_exit 0 "$CBIMG" restore -q "$2" "$T/r.img" || return
	if fsck.ext4 -fn "$T/r.img" >"$T/fsck.out" 2>&1; then
		pass "$1: fsck -n clean"
	else
		fail "$1: fsck -n: $(tail -3 "$T/fsck.out" | tr '\n' ' ')"
	fi
	local left
	left=$(nonzero_runs "$T/r.img" "$T/free.runs")
	if [ "$left" != 0 ]; then
		fail "$1: the deleted file's blocks were backed up ($left of the $stale free runs with stale data)"
	else
		pass "$1: free blocks restored as zeros ($stale free runs with stale data on the device)"
	fi
	do_mount ro,loop "$T/r.img" "$R" || { fail "$1: mount the restored image"; return; }
	check_eq "$1: same files, sizes, modes and contents" "$(tree_sum "$R")" "$3"
	do_umount "$R"
}
restore_check "used-only full" "$full" "$TREE0"

# -------------------------------------------------------------- incremental
do_mount "$A" "$M" || die "mount"
rm -rf --one-file-system "$M/tree/d00"
head -c $((3 * 1024 * 1024)) /dev/urandom >"$M/data/new.bin"
dd if=/dev/urandom of="$M/data/keep.bin" bs=4K seek=7 count=3 conv=notrunc status=none
do_umount "$M"
do_mount ro "$A" "$M" || die "mount ro"
TREE1=$(tree_sum "$M")
do_umount "$M"
expect_exit 0 "$CBIMG" backup --json --no-state --used-only --job used "$A" "$D" || die "used-only incremental"
check_eq "used-only incremental: seq 1" "$(jout .point.seq)" 1
check "used-only incremental stores few blocks ($(jout .blocks_stored))" test "$(jout .blocks_stored)" -lt 100
restore_check "used-only incremental" "$D/$(basename "$(jout .point.index_file)")" "$TREE1"
# a used-only point after a plain one (job plain), and back
expect_exit 0 "$CBIMG" backup --json --no-state --used-only --job plain "$A" "$D" || die "mixed"
check_eq "mixed chain: incremental flagged" "$(jout .point.used_only)" true
restore_check "used-only incremental on a plain full" "$D/$(basename "$(jout .point.index_file)")" "$TREE1"
expect_exit 0 "$CBIMG" verify "$D"

# -------------------------------------------------------------- refusals
do_mount "$A" "$M" || die "mount"
expect_exit 1 "$CBIMG" backup --no-state --used-only --job used "$A" "$D" &&
	check_grep "mounted read-write: refused, says why" "mounted read-write"
do_umount "$M"
head -c $((8 * 1024 * 1024)) /dev/urandom >"$T/noext.img"
expect_exit 1 "$CBIMG" backup --no-state --used-only --job x "$T/noext.img" "$D" &&
	check_grep "no ext file system: refused" "no ext2/ext3/ext4 file system"
cp --sparse=always "$T/disk.img" "$T/recover.img"
# the needs_recovery feature (incompat bit 0x4 at superblock offset 0x60)
b=$(od -An -tu1 -j $((1024 + 0x60)) -N1 "$T/recover.img" | tr -d ' ')
printf "\\$(printf %03o $((b | 4)))" | dd of="$T/recover.img" bs=1 seek=$((1024 + 0x60)) conv=notrunc status=none
expect_exit 1 "$CBIMG" backup --no-state --used-only --job r "$T/recover.img" "$D" &&
	check_grep "journal needing recovery: refused" "needs recovery"
# not cleanly unmounted: the state's VALID_FS bit (superblock offset 0x3a)
cp --sparse=always "$T/disk.img" "$T/unclean.img"
b=$(od -An -tu1 -j $((1024 + 0x3a)) -N1 "$T/unclean.img" | tr -d ' ')
printf "\\$(printf %03o $((b & ~1)))" | dd of="$T/unclean.img" bs=1 seek=$((1024 + 0x3a)) conv=notrunc status=none
expect_exit 1 "$CBIMG" backup --no-state --used-only --job r "$T/unclean.img" "$D" &&
	check_grep "not cleanly unmounted: refused" "not cleanly unmounted"
check_eq "refusals left no files behind" "$(ls -1 "$D" | grep -c -E '_(x|r)_')" 0

finish
