#!/bin/sh
# snapshot-btrfs.sh - a btrfs snapshot of an image file for cbimg's
# --snapshot exec (cbimg-backup(1), SNAPSHOTS): a virtual machine's disk, or
# any raw image file, on a btrfs file system.
#
#   cbimg backup --snapshot-cmd '/usr/local/bin/snapshot-btrfs.sh create' \
#       --snapshot-cleanup '/usr/local/bin/snapshot-btrfs.sh remove' \
#       /srv/vm/disk.img /backup/vm
#
# create: makes a read-only snapshot of the subvolume that holds the file
# ($CBIMG_SOURCE, set by cbimg), named .cbimg-snap-FILE in the top directory
# of that subvolume, and prints the file's path inside it: what cbimg reads.
# remove: deletes that snapshot. The point is the origin's (its identity
# and chain), not the snapshot's. A snapshot is as consistent as the file
# after a power cut: stop or freeze what writes to it for a clean one.
# Tested by tests/e2e/t_snapshot_fs.sh.
set -eu
src=${CBIMG_SOURCE:?run by cbimg --snapshot-cmd / --snapshot-cleanup}
file=$(realpath "$src")
[ -f "$file" ] || { echo "snapshot-btrfs.sh: '$src' is not a file" >&2; exit 1; }
# the subvolume's root: the nearest directory whose inode number is 256
root=$(dirname "$file")
while [ "$(stat -c %i "$root")" != 256 ]; do
	[ "$root" != / ] || { echo "snapshot-btrfs.sh: '$src' is not on btrfs" >&2; exit 1; }
	root=$(dirname "$root")
done
snap=$root/.cbimg-snap-$(basename "$file")
case ${1:-} in
create)
	[ ! -e "$snap" ] || btrfs subvolume delete "$snap" >&2
	btrfs subvolume snapshot -r "$root" "$snap" >&2
	echo "$snap/${file#"$root"/}"
	;;
remove)
	[ ! -e "$snap" ] || btrfs subvolume delete "$snap" >&2
	;;
*)
	echo "usage: snapshot-btrfs.sh create|remove (run by cbimg)" >&2
	exit 2
	;;
esac
