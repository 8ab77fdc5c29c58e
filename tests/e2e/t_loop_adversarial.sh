#!/usr/bin/env bash
# The failures of issue 15 that need loop devices and mounts (root):
#  2. restore --force onto the backing file of a mounted loop device is
#     refused (the file stays as it is), as restore onto the mounted device
#     is; a backup of such a file is of a live disk: the "mounted
#     read-write" warning, and --used-only refuses; a loop device backed by
#     one of the chain's files is refused as a target;
#  6. a DEST that is a bare mount point (its disk not mounted) is refused,
#     named in the message; DEST's file system is recorded in the local
#     state and checked; --dest-uuid.
. "$(dirname "$0")/lib.sh"
need_root_loop
need_jq

S=$T/s.img
D=$T/dest
M=$T/mnt
mkdir -p "$D" "$M"
truncate -s 8M "$S"
fill_random "$S" 0 512
"$CBIMG" backup -q "$S" "$D" || die "backup"
P=$(ls "$D"/*.cbx)

# ------------------------------------------------- 2. loop backing files
FS=$T/fs.img
truncate -s 16M "$FS"
mkfs.ext4 -q -F "$FS" || die "mkfs.ext4"
new_loop "$FS" || die "losetup"
L=$LOOPDEV
do_mount "$L" "$M" || die "mount $L"
echo hello >"$M/file"
sync
SUM=$(sha256 "$FS")
expect_exit 1 "$CBIMG" restore --force "$P" "$L"
check_grep "the mounted device is refused" "mounted"
expect_exit 1 "$CBIMG" restore --force "$P" "$FS"
check_grep "its backing file is refused, naming the loop device" "backing file of loop device '$L'.*mounted on"
check_eq "the backing file is unchanged" "$(sha256 "$FS")" "$SUM"
ln -s "$FS" "$T/fs-link.img"
expect_exit 1 "$CBIMG" restore --force "$P" "$T/fs-link.img"
check_eq "the backing file is unchanged (through a link)" "$(sha256 "$FS")" "$SUM"
# a backup of the backing file is of a live disk
DB=$T/dest-live
mkdir -p "$DB"
expect_exit 1 "$CBIMG" backup --no-state --snapshot none "$FS" "$DB"
check_grep "without a snapshot, a backup of it is refused" "source '$FS' is mounted read-write on '$M'.*--allow-inconsistent"
expect_exit 5 "$CBIMG" backup --no-state --snapshot none --allow-inconsistent "$FS" "$DB"  # a warning: exit 5
check_grep "... and with --allow-inconsistent, read with a warning" "read without a snapshot while mounted read-write"
expect_exit 0 "$CBIMG" backup --json --no-state "$FS" "$DB"
check_grep "by default, the loop device's file system is frozen (or traced)" '"snapshot": *"(freeze|trace)"'
expect_exit 1 "$CBIMG" backup --no-state --full --used-only "$FS" "$DB"
check_grep "--used-only refuses it" "used-only.*mounted read-write"
do_umount "$M"
# unmounted, the loop device merely attached: the file is an ordinary file
expect_exit 0 "$CBIMG" backup -q --no-state --full --used-only "$FS" "$DB"
expect_exit 0 "$CBIMG" restore -q --force "$P" "$FS"
check_eq "restore onto the unmounted loop's file writes it" "$(sha256 "$FS")" "$(sha256 "$S")"
losetup -d "$L"

# a loop device over one of the chain's files
cp "$S" "$T/s2.img"
D2=$T/dest2
mkdir -p "$D2"
"$CBIMG" backup -q --no-state "$T/s2.img" "$D2" || die "backup 2"
I2=$(ls "$D2"/*.cbi)
cp "$I2" "$T/i2.copy"
new_loop "$I2" 2>/dev/null || die "losetup over the image"
expect_exit 2 "$CBIMG" restore --force "$(ls "$D2"/*.cbx)" "$LOOPDEV"
check_grep "a loop device over the chain's image is refused" "writes to.*file of the chain"
check "the image is unchanged" cmp -s "$I2" "$T/i2.copy"
losetup -d "$LOOPDEV"

# ------------------------------------------------- 6. a bare mount point
USB=$T/usb.img
truncate -s 32M "$USB"
mkfs.ext4 -q -F "$USB" || die "mkfs.ext4 usb"
new_loop "$USB" || die "losetup usb"
UL=$LOOPDEV
UUID=$(blkid -s UUID -o value "$UL")
[ -n "$UUID" ] || die "no UUID for $UL"
UM=$T/usb
mkdir -p "$UM"
# (a) listed in fstab (LIBMOUNT_FSTAB: libmount's fstab for this test), not mounted
printf 'UUID=%s %s ext4 noauto 0 2\n' "$UUID" "$UM" >"$T/fstab"
export LIBMOUNT_FSTAB=$T/fstab
expect_exit 2 "$CBIMG" backup -q "$S" "$UM"
check_grep "fstab: the missing disk is named" "UUID=$UUID.*not mounted"
mkdir -p "$UM/backups"
expect_exit 2 "$CBIMG" backup -q "$S" "$UM/backups"
check_eq "nothing written under the bare mount point" "$(find "$UM" -type f | wc -l)" 0
do_mount "$UL" "$UM" || die "mount usb"
mkdir -p "$UM/backups"
expect_exit 0 "$CBIMG" backup -q --job usb "$S" "$UM/backups"
# (d) --dest-uuid
expect_exit 0 "$CBIMG" backup -q --job usb --dest-uuid "$UUID" "$S" "$UM/backups"
expect_exit 0 "$CBIMG" backup -q --job usb --dest-uuid "${UUID^^}" "$S" "$UM/backups"
expect_exit 2 "$CBIMG" backup -q --job usb --dest-uuid 01234567-89ab-cdef-0123-456789abcdef "$S" "$UM/backups"
check_grep "--dest-uuid: both UUIDs named" "$UUID.*01234567-89ab"
do_umount "$UM"
unset LIBMOUNT_FSTAB
# (c) not in fstab: the local state knows the job wrote to that disk
expect_exit 2 "$CBIMG" backup -q --job usb "$S" "$UM/backups"
check_grep "the state names the file system the job wrote to" "last wrote to file system $UUID"
check_eq "nothing written on the file system below" "$(find "$UM" -type f | wc -l)" 0
expect_exit 2 "$CBIMG" backup -q --job usb --dest-uuid "$UUID" "$S" "$UM/backups"
# ------------------------------------------------- 9. catalog rebuild, read-only
RO=$T/ro
mkdir -p "$RO"
"$CBIMG" list "$D" >/dev/null || fail "list (catalog up to date)"
if mount --bind "$D" "$RO" && MOUNTS+=("$RO") && mount -o remount,ro,bind "$RO"; then
	expect_exit 1 "$CBIMG" catalog rebuild "$RO"
	check_grep "a current read-only catalog is not called out of date" "read-only: not rebuilt \(it is up to date"
	umount "$RO"
	fill_random "$S" 2048 64
	"$CBIMG" backup -q --no-state "$S" "$D" || fail "backup"
	rm -f "$D"/*incr0001*.cbx "$D"/*incr0001*.cbi
	mount --bind "$D" "$RO" && mount -o remount,ro,bind "$RO" || die "read-only bind mount"
	expect_exit 1 "$CBIMG" catalog rebuild "$RO"
	check_grep "an out-of-date read-only catalog is called so" "read-only and out of date"
	umount "$RO"
else
	skip_part "no read-only bind mount here"
fi

# (b) an empty directory under /mnt on the root file system
if [ "$(stat -c %d /mnt 2>/dev/null)" = "$(stat -c %d /)" ] && MNTD=$(mktemp -d /mnt/cbimg-e2e.XXXXXX); then
	expect_exit 2 "$CBIMG" backup -q --no-state "$S" "$MNTD"
	check_grep "an empty directory under /mnt is refused" "empty directory on the root file system"
	touch "$MNTD/keep"
	expect_exit 0 "$CBIMG" backup -q --no-state "$S" "$MNTD"
	rm -rf --one-file-system "$MNTD"
else
	skip_part "/mnt is not on the root file system here"
fi

finish
