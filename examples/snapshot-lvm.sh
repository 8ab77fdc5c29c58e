#!/bin/sh
# snapshot-lvm.sh - an LVM snapshot of a logical volume for cbimg's
# --snapshot exec (cbimg-backup(1), SNAPSHOTS). UNTESTED: the test machines
# have no device mapper. Kept simple on purpose; read it before use.
#
#   cbimg backup --snapshot-cmd '/usr/local/bin/snapshot-lvm.sh create' \
#       --snapshot-cleanup '/usr/local/bin/snapshot-lvm.sh remove' \
#       /dev/vg0/root /backup/root
#
# create: lvcreate a snapshot LV NAME-cbimg of $CBIMG_SOURCE (set by cbimg)
# with room for CBIMG_LVM_SIZE (default 2G) of changes during the backup,
# and print its device: what cbimg reads. remove: lvremove it. The point
# is the origin's (its identity and chain), not the snapshot's.
set -eu
src=${CBIMG_SOURCE:?run by cbimg --snapshot-cmd / --snapshot-cleanup}
vg=$(lvs --noheadings -o vg_name "$src" | tr -d ' ')
lv=$(lvs --noheadings -o lv_name "$src" | tr -d ' ')
snap=$lv-cbimg
case ${1:-} in
create)
	lvcreate -q -s -n "$snap" -L "${CBIMG_LVM_SIZE:-2G}" "$vg/$lv" >&2
	echo "/dev/$vg/$snap"
	;;
remove)
	lvremove -q -f "$vg/$snap" >&2
	;;
*)
	echo "usage: snapshot-lvm.sh create|remove (run by cbimg)" >&2
	exit 2
	;;
esac
