#!/usr/bin/env bash
# usb-backup.sh - back up this PC's disks to the shared USB disk, found by its
# file system label (default CBIMG-USB), whatever device name it got today.
#
#   usb-backup.sh [--label LABEL] [--job JOB] [--full]
#                 [--password-file FILE] DEVICE...
#
# The USB disk is usually FAT32 or exFAT so that every PC can read it; cbimg
# splits image files below 4 GiB there by itself. Every PC writes to the same
# directory: files are named host_source_job_time_..., and chains are kept
# apart by host and by the source's identity, so PC1's sda and PC2's sda
# never mix. Exit status: that of the last failing cbimg run, else 0
# (1 when the disk or the password file is not usable, 2 for a usage error).
#
# Encryption (optional): with a password file -- --password-file FILE, else
# $CBIMG_PASSWORD_FILE, else /etc/cbimg/JOB.pass if it exists -- backups are
# encrypted (cbimg backup --encrypt --password-file FILE). The file holds the
# passphrase on its first line, stays on this PC (never on the USB disk) and
# must be readable by its owner only (chmod 600). A new chain writes its key
# file (*_key_*.cbk) on the USB disk: copy it somewhere else too, without it
# the chain cannot be read. A job whose chain is not encrypted yet is
# refused (exit 2) until one run with --full starts an encrypted chain.
set -u
label=CBIMG-USB job=usb full='' pwfile=${CBIMG_PASSWORD_FILE:-}
while [ $# -gt 0 ]; do
	case $1 in
	--label) label=$2; shift 2 ;;
	--job) job=$2; shift 2 ;;
	--full) full=--full; shift ;;
	--password-file) pwfile=$2; shift 2 ;;
	-h|--help) sed -n '2,22p' "$0"; exit 0 ;;
	*) break ;;
	esac
done
[ $# -gt 0 ] || { echo "usage: $0 [--label LABEL] [--job JOB] [--full] [--password-file FILE] DEVICE..." >&2; exit 2; }
cbimg=${CBIMG:-cbimg}

[ -z "$pwfile" ] && [ -e "/etc/cbimg/$job.pass" ] && pwfile=/etc/cbimg/$job.pass
crypt=()
if [ -n "$pwfile" ]; then
	[ -r "$pwfile" ] || { echo "usb-backup: unable to read password file '$pwfile'" >&2; exit 1; }
	if [ -n "$(find "$pwfile" -maxdepth 0 -perm /077)" ]; then
		echo "usb-backup: password file '$pwfile' is open to others: chmod 600 '$pwfile'" >&2
		exit 1
	fi
	crypt=(--encrypt --password-file "$pwfile")
fi

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
	echo "usb-backup: $src -> $dest (job $job, host $(hostname)${pwfile:+, encrypted})"
	"$cbimg" backup --job "$job" $full "${crypt[@]}" "$src" "$dest" || rc=$?
done
sync
if [ "$mounted_here" = 1 ]; then
	umount "$mnt" && rmdir "$mnt"
fi
exit "$rc"
