#!/usr/bin/env bash
# --used-only on a real ext4 file system on a loop device: files written,
# deleted (their stale blocks stay on the device), unmounted; a full and an
# incremental with --used-only read and store less than without it; every
# restore passes fsck -n and holds exactly the same files (and nothing of
# the deleted ones); mixed points (used-only after a plain point) restore;
# refusals: mounted read-write, no ext file system, journal needing recovery.
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
find /usr/share/doc /usr/include -type f -size -512k 2>/dev/null | head -n 1500 >"$T/files.list"
tar -cf - --files-from="$T/files.list" 2>/dev/null | tar -xf - -C "$M" 2>/dev/null
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

# restore_check LABEL POINT TREE: restore to a file, fsck -n, same files,
# no bytes of the deleted file.
restore_check() {
	rm -f "$T/r.img"
	expect_exit 0 "$CBIMG" restore -q "$2" "$T/r.img" || return
	if fsck.ext4 -fn "$T/r.img" >"$T/fsck.out" 2>&1; then
		pass "$1: fsck -n clean"
	else
		fail "$1: fsck -n: $(tail -3 "$T/fsck.out" | tr '\n' ' ')"
	fi
	if grep -a -q -m1 "DELETED-FILE-CONTENT" "$T/r.img"; then
		fail "$1: the deleted file's blocks were backed up"
	else
		pass "$1: free blocks restored as zeros"
	fi
	do_mount ro,loop "$T/r.img" "$R" || { fail "$1: mount the restored image"; return; }
	check_eq "$1: same files, sizes, modes and contents" "$(tree_sum "$R")" "$3"
	do_umount "$R"
}
restore_check "used-only full" "$full" "$TREE0"

# -------------------------------------------------------------- incremental
do_mount "$A" "$M" || die "mount"
rm -rf "$M/usr/share/doc/$(ls "$M/usr/share/doc" | head -n 1)"
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
