#!/usr/bin/env bash
# t_snapshot_fs.sh - consistent backups of live file systems beyond a plain
# ext4 loop device (issue 13), each with the checksummed writer of
# snaplib.sh running during the backup: xfs and btrfs as the live file
# system (freeze, and trace where the tracer works); a partition of a loop
# device with partitions (losetup -P), as the source and inside a whole-disk
# source; --snapshot reflink of an ext4 image file on btrfs that is mounted
# through a loop device; --snapshot exec with examples/snapshot-btrfs.sh;
# a trace with a tiny buffer that loses events, which must re-read
# everything frozen and say so. Needs root and loop devices; each part skips
# visibly when its file system or the tracer is missing.
#
# Each live file system is backed up in the modes of SNAP_MODES (default
# "auto": trace where the tracer works, else freeze; t_snapshot.sh covers
# both on ext4); tests/stress/snapshot.sh runs "freeze trace" with a larger
# ballast (SNAP_BALLAST_MIB, default 4).
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/snaplib.sh"
need_root_loop
need_jq
EX=$E2E_DIR/../../examples
MODES=${SNAP_MODES:-auto}
BALLAST=${SNAP_BALLAST_MIB:-4}

# live_fs TYPE SIZE: a mounted TYPE on a loop device at $T/TYPE.m, with
# ballast; LIVE_DEV is the device.
LIVE_DEV=
live_fs() {
	local img=$T/$1.img
	truncate -s "$2" "$img"
	mkfs_live "$1" "$img" || return 1
	new_loop "$img" || return 1
	LIVE_DEV=$LOOPDEV
	do_mount "$LIVE_DEV" "$T/$1.m" || return 1
	ballast "$T/$1.m" "$BALLAST"
}

# backup_check TYPE DEV MODE WHAT [ARGS...]: a backup of DEV with MODE while
# the writer runs on the mounted file system, restored and checked.
backup_check() {
	local ty=$1 dev=$2 mode=$3 what=$4 d
	shift 4
	d=$T/d.$RANDOM
	mkdir -p "$d"
	expect_exit 0 "$CBIMG" backup --json --no-state --threads 1 --snapshot "$mode" "$@" "$dev" "$d" ||
		return
	[ "$mode" = auto ] && mode=$AUTO
	check_eq "$what: --snapshot $mode used" "$(jout .snapshot)" "$mode"
	echo "       ($what: frozen $(jout .freeze_ms) ms, $(jout .blocks_reread) blocks re-read)"
	expect_exit 0 "$CBIMG" restore -q "$d" latest "$T/r.img" || return
	check_restored "$ty" "$T/r.img" "$what"
	rm -f "$T/r.img"
}

# modes DEV: USE gets the modes of $MODES that can be used on DEV, AUTO
# what auto chooses there; a visible skip for trace where the tracer cannot
# be used.
AUTO=freeze
USE=()
TRACE_OK=
modes() {
	local m
	AUTO=freeze
	USE=()
	# the tracer works for every loop device or none: asked once
	[ -n "$TRACE_OK" ] || { trace_usable "$1" "$T/dprobe" && TRACE_OK=yes || TRACE_OK=no; }
	[ "$TRACE_OK" = yes ] && AUTO=trace
	for m in $MODES; do
		if [ "$m" = trace ] && [ "$AUTO" != trace ]; then
			skip_part "trace on $1: $TRACE_WHY"
			continue
		fi
		USE+=("$m")
	done
	[ "$AUTO" = trace ] || [[ " $MODES " != *" auto "* ]] || skip_part "auto is freeze on $1: $TRACE_WHY"
}

mkdir -p "$T/dprobe"
for ty in xfs btrfs; do
	if ! have_fs "$ty"; then
		skip_part "$ty as the live file system: mkfs.$ty, its checker or the kernel's driver missing"
		continue
	fi
	size=160M
	[ "$ty" = xfs ] && size=320M # mkfs.xfs's smallest
	live_fs "$ty" "$size" || { fail "$ty: make and mount"; continue; }
	writer_start "$T/$ty.m"
	sleep 0.3
	modes "$LIVE_DEV"
	for m in "${USE[@]}"; do
		backup_check "$ty" "$LIVE_DEV" "$m" "$ty, $m"
	done
	writer_stop
	do_umount "$T/$ty.m"
done

# --- a partition of a loop device with partitions
# an MBR with one Linux partition from sector 2048, 129024 sectors long;
# a kernel without the MBR parser finds no partition: partx adds it then
truncate -s 100M "$T/disk.img"
printf '\x00\x00\x00\x00\x83\x00\x00\x00\x00\x08\x00\x00\x00\xf8\x01\x00' |
	dd of="$T/disk.img" bs=1 seek=446 conv=notrunc status=none
printf '\x55\xaa' | dd of="$T/disk.img" bs=1 seek=510 conv=notrunc status=none
PD=$(losetup -P -f --show "$T/disk.img") || die "losetup -P"
LOOPS+=("$PD")
P1=${PD}p1
for i in $(seq 50); do
	[ -b "$P1" ] && break
	[ "$i" = 10 ] && command -v partx >/dev/null 2>&1 && partx -a "$PD" >/dev/null 2>&1
	sleep 0.1
done
if [ -b "$P1" ]; then
	mkfs_live ext4 "$P1" || fail "mkfs on $P1"
	do_mount "$P1" "$T/part.m" || die "mount $P1"
	ballast "$T/part.m" "$BALLAST"
	writer_start "$T/part.m"
	sleep 0.3
	modes "$P1"
	for m in "${USE[@]}"; do
		backup_check ext4 "$P1" "$m" "a partition (${P1#/dev/}), $m"
	done
	# the whole disk, a partition of which is mounted: frozen (or traced) too
	mkdir -p "$T/dwhole"
	expect_exit 0 "$CBIMG" backup --json --no-state "$PD" "$T/dwhole"
	check_eq "the whole disk of a mounted partition: auto uses $AUTO" "$(jout .snapshot)" "$AUTO"
	expect_exit 0 "$CBIMG" restore -q --partition 1 "$T/dwhole" latest "$T/rp.img"
	check_restored ext4 "$T/rp.img" "the whole disk, partition 1"
	rm -f "$T/rp.img"
	writer_stop
	do_umount "$T/part.m"
else
	skip_part "a partition source: no partition device for a loop device (losetup -P, partx)"
fi

# --- btrfs as the host: reflink of an ext4 image file mounted through a
# loop device (frozen for the clone), and exec with the btrfs example
if have_fs btrfs; then
	truncate -s 200M "$T/host.img"
	mkfs_live btrfs "$T/host.img" || die "mkfs.btrfs"
	new_loop "$T/host.img" || die "losetup"
	do_mount "$LOOPDEV" "$T/host" || die "mount btrfs"
	truncate -s 64M "$T/host/vm.img"
	mkfs_live ext4 "$T/host/vm.img" || die "mkfs.ext4 in btrfs"
	new_loop "$T/host/vm.img" || die "losetup vm.img"
	VMLOOP=$LOOPDEV
	do_mount "$LOOPDEV" "$T/vm.m" || die "mount vm.img"
	ballast "$T/vm.m" "$BALLAST"
	writer_start "$T/vm.m"
	sleep 0.3
	backup_check ext4 "$T/host/vm.img" reflink "an image file on btrfs, reflink"
	check_eq "reflink: the clone is gone" "$(find "$T/host" -maxdepth 1 -name '.*cbimg-clone*' | wc -l)" 0
	writer_stop
	do_umount "$T/vm.m"
	losetup -d "$VMLOOP"

	# exec: a read-only btrfs snapshot of the subvolume, as the example makes it
	sum=$(sha256 "$T/host/vm.img")
	mkdir -p "$T/dx"
	expect_exit 0 "$CBIMG" backup --json --no-state --snapshot-cmd "$EX/snapshot-btrfs.sh create" \
		--snapshot-cleanup "$EX/snapshot-btrfs.sh remove" "$T/host/vm.img" "$T/dx"
	check_eq "exec: --json says so" "$(jout .snapshot)" exec
	check_eq "exec: the snapshot was removed" "$(find "$T/host" -maxdepth 1 -name '.cbimg-snap-*' | wc -l)" 0
	list_json "$T/dx" || fail "list"
	check_eq "exec: the point is the origin's (its identity)" "$(jqr '.[0].source')" "file:$T/host/vm.img"
	expect_exit 0 "$CBIMG" restore -q "$T/dx" latest "$T/rx.img"
	check_eq "exec: the restored image is the file" "$(sha256 "$T/rx.img")" "$sum"
	check_restored ext4 "$T/rx.img" "exec, btrfs snapshot"
	expect_exit 1 "$CBIMG" backup -q --no-state --snapshot-cmd "exit 7" \
		--snapshot-cleanup "touch '$T/cleaned'" "$T/host/vm.img" "$T/dx"
	check_grep "exec: a failing command fails the backup" "--snapshot-cmd 'exit 7' failed \(exit status 7\)"
	check "exec: ... and its cleanup still ran" test -e "$T/cleaned"
	do_umount "$T/host"
else
	skip_part "reflink and exec on btrfs: mkfs.btrfs or the driver missing"
fi

# --- a trace that loses events (a tiny buffer): everything re-read frozen.
# Bursts of small direct writes (a request, so an event, each) outrun the
# tracer's drain of a 1 KiB buffer.
live_fs ext4 96M || die "ext4"
writer_start "$T/ext4.m"
head -c 8M /dev/zero >"$T/ext4.m/burst" && sync
(while [ ! -e "$T/writer.stop" ]; do
	dd if=/dev/zero of="$T/ext4.m/burst" bs=4k count=2048 oflag=direct conv=notrunc status=none 2>/dev/null
done) &
BGPIDS+=("$!")
sleep 0.3
modes "$LIVE_DEV"
if [ "$TRACE_OK" = yes ]; then
	mkdir -p "$T/dov"
	run "$CBIMG" backup --json --no-state --threads 1 --snapshot trace --trace-buffer 1K "$LIVE_DEV" "$T/dov"
	if [ "$(jout .trace_incomplete)" = true ]; then
		check_eq "overrun: exit 5 (a warning)" "$RC" 5
		check_grep "overrun: says so" "lost events.*every block was read again under the freeze"
		check_eq "overrun: every block re-read" "$(jout .blocks_reread)" "$(jout .blocks_total)"
		"$CBIMG" restore -q "$T/dov" latest "$T/ro.img" || fail "restore"
		check_restored ext4 "$T/ro.img" "trace after an overrun"
	elif [ "$RC" = 0 ]; then
		skip_part "overrun: no event was lost with a 1K trace buffer here"
	else
		fail "trace with a tiny buffer: exit $RC"
		printf '%s\n' "$OUT" | sed 's/^/       | /' | head
	fi
else
	skip_part "overrun: $TRACE_WHY"
fi
writer_stop
finish
