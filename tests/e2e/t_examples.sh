#!/usr/bin/env bash
# The scripts in examples/ work as documented: usb-backup.sh finds the USB
# disk by its label, mounts it and backs up; remote-seeding.sh's three steps
# give a chain that verifies and restores at the "remote" directory.
. "$(dirname "$0")/lib.sh"
need_jq
need_root_loop
[ "$SKIPPED" = 1 ] && finish
EX=$E2E_DIR/../../examples
export CBIMG

SRC=$T/disk.img
head -c $((8 * 1024 * 1024)) /dev/urandom >"$SRC"
truncate -s 32M "$SRC"

# A USB disk with a label, attached as a loop device, not mounted.
LABEL=CBIMGT$$
truncate -s 96M "$T/usb.img"
# ext4 here: this machine's kernel may lack vfat (FAT destinations are
# tested through FUSE in t_fat.sh); the script only needs mount(8).
mkfs.ext4 -q -F -L "$LABEL" "$T/usb.img"
new_loop "$T/usb.img" || die "losetup"
blkid -p "$LOOPDEV" >/dev/null 2>&1 || true
expect_exit 0 bash "$EX/usb-backup.sh" --label "$LABEL" --job usb "$SRC"
fill_random "$SRC" 1024 64
expect_exit 0 bash "$EX/usb-backup.sh" --label "$LABEL" --job usb "$SRC"
expect_exit 1 bash "$EX/usb-backup.sh" --label NO-SUCH-LABEL-$$ "$SRC"
do_mount "$LOOPDEV" "$T/usbmnt" || die "mount usb"
if list_json "$T/usbmnt/cbimg"; then
	check_eq "two points on the USB disk" "$(jqr 'map("\(.seq)\(.type[0:1])") | join(",")')" "0f,1i"
	rm -f "$T/r.img"
	expect_exit 0 "$CBIMG" restore -q "$(jqr '.[1].p')" "$T/r.img"
	check_eq "restore from the USB disk" "$(sha256 "$T/r.img")" "$(sha256 "$SRC")"
else
	fail "list on the USB disk"
fi
do_umount "$T/usbmnt"

# Remote seeding, as the example's steps say.
export CBIMG_STATE_DIR=$T/state-remote
expect_exit 0 bash "$EX/remote-seeding.sh" seed "$SRC" "$T/carry"
mkdir -p "$T/remote"
cp "$T"/carry/*.cb? "$T/remote/"
fill_random "$SRC" 2048 64
expect_exit 0 bash "$EX/remote-seeding.sh" outbox "$SRC" "$T/outbox"
cp "$T"/outbox/*.cb? "$T/remote/"
expect_exit 0 bash "$EX/remote-seeding.sh" check "$T/remote"
if list_json "$T/remote"; then
	rm -f "$T/r2.img"
	expect_exit 0 "$CBIMG" restore -q "$(jqr '.[1].p')" "$T/r2.img"
	check_eq "remote restore of the shipped incremental" "$(sha256 "$T/r2.img")" "$(sha256 "$SRC")"
fi
finish
