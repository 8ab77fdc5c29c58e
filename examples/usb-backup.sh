#!/usr/bin/env bash
# usb-backup.sh - back up this PC's disks to the shared USB disk, found by its
# file system label (default CBIMG-USB), whatever device name it got today.
#
#   usb-backup.sh [--label LABEL] [--job JOB] DEVICE...
#
# The USB disk is usually FAT32 or exFAT so that every PC can read it; cbimg
# splits image files below 4 GiB there by itself. Every PC writes to the same
# directory: files are named host_source_job_time_..., and chains are kept
# apart by host and by the source's identity, so PC1's sda and PC2's sda
# never mix. Exit status: that of the last failing cbimg run, else 0.
set -u
label=CBIMG-USB job=usb
while [ $# -gt 0 ]; do
	case $1 in
	--label) label=$2; shift 2 ;;
	--job) job=$2; shift 2 ;;
	-h|--help) sed -n '2,12p' "$0"; exit 0 ;;
	*) break ;;
	esac
done
[ $# -gt 0 ] || { echo "usage: $0 [--label LABEL] [--job JOB] DEVICE..." >&2; exit 2; }
cbimg=${CBIMG:-cbimg}

dev=$(blkid -L "$label" 2>/dev/null) || { echo "usb-backup: no disk labelled '$label' is attached" >&2; exit 1; }
mnt=$(findmnt -n -o TARGET --source "$dev" | head -n 1)
mounted_here=0
if [ -z "$mnt" ]; then
	mnt=$(mktemp -d /run/cbimg-usb.XXXXXX)
	mount "$dev" "$mnt" || { echo "usb-backup: unable to mount $dev" >&2; rmdir "$mnt"; exit 1; }
	mounted_here=1
fi
dest=$mnt/cbimg
mkdir -p "$dest"
rc=0
for src in "$@"; do
	echo "usb-backup: $src -> $dest (job $job, host $(hostname))"
	"$cbimg" backup --job "$job" "$src" "$dest" || rc=$?
done
sync
if [ "$mounted_here" = 1 ]; then
	umount "$mnt" && rmdir "$mnt"
fi
exit "$rc"
