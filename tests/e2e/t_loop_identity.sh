#!/usr/bin/env bash
# Source identity of loop devices and their partitions. A whole loop device
# is named by its backing file ("loop:<file>", as before). A partition of a
# loop device (loop0p1) has neither a by-id name nor a backing file, and its
# kernel name changes with the loop device's number: it is named by libblkid
# from what is on it, its partition UUID ("part:<uuid>"), else its file
# system's UUID ("fs:<uuid>"). Attached again under another number, the same
# partition continues its chain.
. "$(dirname "$0")/lib.sh"
need_root_loop
need_jq
[ "$SKIPPED" = 1 ] && finish
command -v mkfs.ext4 >/dev/null 2>&1 || skip "mkfs.ext4 not installed (e2fsprogs)"

D=$T/dest
mkdir -p "$D"
IMG=$T/parted.img
MIB=$((1024 * 1024))
truncate -s $((64 * MIB)) "$IMG"
# an MBR by hand (no partitioning tool needed): disk signature c0ffee01 at
# 440, partition 1 of type 0x83 from sector 2048 to the end, 55 aa at 510
mbr() {
	printf "$1" | dd of="$IMG" bs=1 seek=440 conv=notrunc status=none
	# status, first CHS, type, last CHS, first LBA 2048, 129024 sectors
	printf '\x00\x00\x00\x00\x83\x00\x00\x00\x00\x08\x00\x00\x00\xf8\x01\x00' |
		dd of="$IMG" bs=1 seek=446 conv=notrunc status=none
	printf '\x55\xaa' | dd of="$IMG" bs=1 seek=510 conv=notrunc status=none
}
mbr '\x01\xee\xff\xc0'

# attach_parted: attaches IMG with its partitions scanned; sets LOOPDEV and
# PART (its first partition), waiting for the partition's device node. A
# kernel without the MBR parser finds no partition: partx adds it then.
attach_parted() {
	LOOPDEV=$(losetup -P -f --show "$IMG") || return 1
	LOOPS+=("$LOOPDEV")
	PART=${LOOPDEV}p1
	local i
	for i in $(seq 50); do
		[ -b "$PART" ] && return 0
		[ "$i" = 10 ] && command -v partx >/dev/null 2>&1 && partx -a "$LOOPDEV" >/dev/null 2>&1
		sleep 0.1
	done
	return 1
}
# detach DEV: detaches a loop device this test attached, and forgets it (the
# number may be another test's by the end)
detach() {
	local l keep=()
	losetup -d "$1" || return 1
	for l in "${LOOPS[@]}"; do [ "$l" = "$1" ] || keep+=("$l"); done
	LOOPS=("${keep[@]+"${keep[@]}"}")
}
attach_parted || skip "no partition device for a loop device (losetup -P)"
L1=$LOOPDEV
mkfs.ext4 -q -F "$PART" >"$T/mkfs.out" 2>&1 || die "mkfs.ext4 $PART: $(cat "$T/mkfs.out")"
FSUUID=$(dumpe2fs -h "$PART" 2>/dev/null | sed -n 's/^Filesystem UUID: *//p')

expect_exit 0 "$CBIMG" backup --json --no-state --job lp "$PART" "$D"
check_eq "partition of a loop device: its partition UUID" "$(jout .point.source)" "part:c0ffee01-01"
check_eq "a full" "$(jout .type)" full
back=$(cat "/sys/block/$(basename "$L1")/loop/backing_file")
expect_exit 0 "$CBIMG" backup --json --no-state --job whole "$L1" "$D"
check_eq "whole loop device: its backing file, as before" "$(jout .point.source)" "loop:$back"

# attached again under another number (a file holds the old one meanwhile)
detach "$L1"
truncate -s $MIB "$T/filler.img"
new_loop "$T/filler.img" || die "losetup filler"
attach_parted || die "losetup -P again"
[ "$LOOPDEV" != "$L1" ] || die "test setup: the image got the same loop device again"
expect_exit 0 "$CBIMG" backup --json --no-state --job lp "$PART" "$D"
check_eq "same partition as $(basename "$PART") (was $(basename "$L1")p1): the chain goes on, nothing changed" \
	"$(jout '"\(.type) \(.point.seq) \(.blocks_changed) \(.point.source)"')" "incremental 1 0 part:c0ffee01-01"

# no disk signature, so no partition UUID: the file system's UUID
L2=$LOOPDEV
detach "$L2"
mbr '\x00\x00\x00\x00'
attach_parted || die "losetup -P without a disk signature"
expect_exit 0 "$CBIMG" backup --json --no-state --job fsid "$PART" "$D"
check_eq "no partition UUID: the file system's UUID" "$(jout .point.source)" "fs:$FSUUID"
expect_exit 0 "$CBIMG" verify "$D"

finish
