#!/usr/bin/env bash
# examples/demo.sh - a guided tour of cbimg on a generated ext4 disk image.
#
#   make demo                      (builds cbimg, then runs this script)
#   CBIMG=build/cbimg bash examples/demo.sh
#
# Needs no root and no loop devices: the "disk" is a 256 MiB raw image file
# holding a real ext4 file system, built with `mkfs.ext4 -d` and changed with
# `debugfs -w`. Everything happens in a fresh directory under /tmp, removed
# at the end (KEEP=1 keeps it).
set -euo pipefail

CBIMG=${CBIMG:-build/cbimg}
case $CBIMG in /*) ;; *) CBIMG=$PWD/$CBIMG ;; esac
if [ ! -x "$CBIMG" ]; then
	echo "demo: $CBIMG not found; run 'make' first (or set CBIMG=/path/to/cbimg)" >&2
	exit 1
fi
export PATH=$PATH:/usr/sbin:/sbin
for tool in mkfs.ext4 debugfs fsck.ext4 sha256sum; do
	command -v "$tool" >/dev/null 2>&1 || {
		echo "demo: $tool not found; install e2fsprogs and coreutils (make deps)" >&2
		exit 1
	}
done

W=$(mktemp -d /tmp/cbimg-demo.XXXXXX)
cleanup() {
	if [ "${KEEP:-0}" = 1 ]; then
		echo "(work directory kept: $W)"
	else
		rm -rf "$W"
	fi
}
trap cleanup EXIT

bold=
norm=
if [ -t 1 ]; then
	bold=$(printf '\033[1m')
	norm=$(printf '\033[0m')
fi
step() { printf '\n%s==> %s%s\n' "$bold" "$*" "$norm"; }
# cb ARGS...: shows and runs one cbimg command.
cb() {
	printf '%s$ cbimg %s%s\n' "$bold" "$*" "$norm" | sed "s#$W/##g"
	"$CBIMG" "$@"
}
sha() { sha256sum <"$1" | cut -d' ' -f1; }
same() {
	if [ "$1" = "$2" ]; then
		echo "   OK: $3 (sha256 ${1:0:16}...)"
	else
		echo "   MISMATCH: $3: $1 != $2" >&2
		exit 1
	fi
}
ext4_ls() { debugfs -R "ls -p /" "$1" 2>/dev/null | awk -F/ 'NF > 5 && $6 != "." && $6 != ".." { printf " %s", $6 } END { print "" }'; }

cd "$W"
DISK=$W/disk.img
DEST=$W/backups
mkdir -p "$DEST" tree

step "1. Build a 256 MiB disk image with an ext4 file system (mkfs.ext4 -d, no root needed)"
find /usr/share/doc /usr/share/common-licenses /usr/share/perl5 /usr/share/zoneinfo \
	-type f -size -1024k 2>/dev/null | head -n 1500 >"$W/files.list" || true
tar -cf - --files-from="$W/files.list" 2>/dev/null | tar -xf - -C tree 2>/dev/null || true
head -c $((8 * 1024 * 1024)) /dev/urandom >tree/photos.bin
printf 'These notes will be deleted before the second backup.\n' >tree/notes.txt
truncate -s 256M "$DISK"
mkfs.ext4 -q -F -L demo -d tree "$DISK"
echo "   $(find tree -type f | wc -l) files copied in, $(du -sh tree | cut -f1) of data"
echo "   top level of the file system:$(ext4_ls "$DISK")"
SHA0=$(sha "$DISK")

step "2. First backup: a full image (NAME.cbi) plus its index (NAME.cbx)"
cb backup --job demo "$DISK" "$DEST"
ls -l "$DEST" | sed 1d

step "3. Change the file system: add two files, delete one (debugfs -w)"
{
	echo "Written by the cbimg demo on $(date -u)."
	seq 1 5000
} >"$W/new.txt"
head -c $((2 * 1024 * 1024)) /dev/urandom >"$W/new.bin"
debugfs -w -R "write $W/new.txt new.txt" "$DISK" >/dev/null 2>&1
debugfs -w -R "write $W/new.bin new.bin" "$DISK" >/dev/null 2>&1
debugfs -w -R "rm notes.txt" "$DISK" >/dev/null 2>&1
echo "   top level of the file system now:$(ext4_ls "$DISK")"
fsck.ext4 -n -f "$DISK" >/dev/null 2>&1 || { echo "   the changed file system does not check clean" >&2; exit 1; }
SHA1=$(sha "$DISK")

step "4. Second backup: an incremental holding only the blocks that changed"
cb backup --job demo "$DISK" "$DEST"
echo
cb list "$DEST"
echo
ls -l "$DEST" | sed 1d
echo "   (the incremental's image is a small fraction of the full's)"

step "5. Verify every file of the chain (digests of files and of every block)"
cb verify "$DEST"

step "6. Restore both points to new files and compare with the saved states"
FULL=$(ls -1S "$DEST"/*.cbi | head -n 1)   # the full is the larger image
INCR=$(ls -1S "$DEST"/*.cbi | tail -n 1)
cb info "$INCR"
echo
cb restore "$FULL" "$W/restored-0.img"
same "$(sha "$W/restored-0.img")" "$SHA0" "point 0 equals the disk as it was at the first backup"
cb restore "$INCR" "$W/restored-1.img"
same "$(sha "$W/restored-1.img")" "$SHA1" "point 1 equals the disk as it was at the second backup"

step "7. The restored images are valid ext4 file systems (fsck.ext4 -n -f)"
for i in 0 1; do
	if fsck.ext4 -n -f "$W/restored-$i.img" >"$W/fsck.out" 2>&1; then
		echo "   OK: restored-$i.img: $(tail -n 1 "$W/fsck.out")"
	else
		cat "$W/fsck.out" >&2
		echo "   fsck.ext4 found errors in restored-$i.img" >&2
		exit 1
	fi
	echo "   restored-$i.img top level:$(ext4_ls "$W/restored-$i.img")"
done

step "8. Roll the current disk back to point 0, writing only the blocks that differ"
cb restore --force --changed-only "$FULL" "$DISK"
same "$(sha "$DISK")" "$SHA0" "the disk is back to its state at the first backup"

step "Done"
echo "   cbimg compared blocks, stored only changed ones, and restored both points exactly."
echo "   Try: $CBIMG --help"
