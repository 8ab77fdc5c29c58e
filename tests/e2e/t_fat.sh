#!/usr/bin/env bash
# FAT32 and exFAT destinations, as on USB disks: file names valid there,
# image files stored as segments (--split, automatic on FAT), a chain moved
# and renamed with its segments, a missing segment reported by verify, a
# killed backup's temporary segments cleaned up, and a prune that rolls the
# full forward in segments. Each file system is made
# on a loop device and mounted with the kernel driver when it has one, else
# with the FUSE drivers Debian packages (fusefat, exfat-fuse).
. "$(dirname "$0")/lib.sh"
need_root
need_jq
command -v losetup >/dev/null 2>&1 || skip "losetup not installed (util-linux)"
losetup -f >/dev/null 2>&1 || skip "no free loop device (losetup -f failed; in a container? try --privileged)"

# The tools: dosfstools, fusefat, exfatprogs, exfat-fuse (in DEB_PKGS, so
# `make deps` installs them); a missing one is installed here if apt-get can
# (CBIMG_E2E_NO_INSTALL=1 prevents that), else its part is skipped.
need_cmds() {
	local c
	for c in "$@"; do command -v "$c" >/dev/null 2>&1 || return 1; done
}
try_install() {
	[ "${CBIMG_E2E_NO_INSTALL:-0}" = 1 ] && return 1
	command -v apt-get >/dev/null 2>&1 || return 1
	echo "  (installing $* with apt-get)"
	DEBIAN_FRONTEND=noninteractive timeout 300 apt-get install -y -qq "$@" >"$T/apt.out" 2>&1 ||
		{ timeout 300 apt-get update -qq >/dev/null 2>&1 &&
		  DEBIAN_FRONTEND=noninteractive timeout 300 apt-get install -y -qq "$@" >"$T/apt.out" 2>&1; }
}
need_cmds mkfs.vfat || try_install dosfstools
need_cmds mkfs.exfat || try_install exfatprogs

MIB=$((1024 * 1024))
SEG=$((64 * MIB))

# mount_fat KIND IMAGE DIR: mounts a new KIND (fat|exfat) file system made in
# IMAGE on DIR: kernel driver first, else FUSE. Sets DRIVER.
DRIVER=
mount_fs() {
	local kind=$1 img=$2 dir=$3
	mkdir -p "$dir"
	new_loop "$img" || return 1
	if [ "$kind" = fat ]; then
		mkfs.vfat -F 32 -n CBIMGFAT "$LOOPDEV" >"$T/mkfs.out" 2>&1 || return 1
		if mount -t vfat "$LOOPDEV" "$dir" 2>/dev/null; then
			DRIVER="kernel vfat"
		else
			need_cmds fusefat || try_install fusefat
			need_cmds fusefat || return 1
			# rw+: fusefat mounts read-only unless asked for its write support
			fusefat -o rw+ "$LOOPDEV" "$dir" >"$T/fuse.out" 2>&1 || return 1
			DRIVER="fusefat"
		fi
	else
		mkfs.exfat -L CBIMGEX "$LOOPDEV" >"$T/mkfs.out" 2>&1 || return 1
		if mount -t exfat "$LOOPDEV" "$dir" 2>/dev/null; then
			DRIVER="kernel exfat"
		else
			need_cmds mount.exfat-fuse || try_install exfat-fuse
			need_cmds mount.exfat-fuse || return 1
			mount.exfat-fuse "$LOOPDEV" "$dir" >"$T/fuse.out" 2>&1 || return 1
			DRIVER="exfat-fuse"
		fi
	fi
	MOUNTS+=("$dir")
	mountpoint -q "$dir"
}

# Every name in DIR is valid on FAT: none of \/:*?"<>| or control
# characters, no trailing dot or space, at most 255 bytes.
check_names() {
	local bad
	bad=$(cd "$1" && ls -1A | LC_ALL=C grep -E '[\\:*?"<>|[:cntrl:]]|[. ]$|^.{256,}$')
	check_eq "$2: every file name is valid on FAT" "$bad" ""
}

# seg_count FILE: prints the number of files FILE, FILE.001, ...; fails
# unless all but the last are exactly SEG bytes and the last at most SEG.
seg_count() {
	local f=$1 n=1 ok=0 cur=$1 next
	while :; do
		next=$(printf '%s.%03d' "$f" "$n")
		if [ -e "$next" ]; then
			[ "$(filesize "$cur")" = "$SEG" ] || ok=1
		else
			[ "$(filesize "$cur")" -le "$SEG" ] || ok=1
			break
		fi
		cur=$next
		n=$((n + 1))
	done
	echo "$n"
	return $ok
}

# The source: incompressible, so that the images are as big as the source.
SRC=$T/src.img
SRC_MIB=${FAT_SRC_MIB:-300}
head -c $((SRC_MIB * MIB)) /dev/urandom >"$SRC" || die "test setup: no source"
SHA0=$(sha256 "$SRC")
SHA1=

# pruned KIND DIR SRC WHAT: after `prune --json` of DIR to its newest point
# (its output in $T/stdout): the prune's notes shown, no temporary file
# left, verify passes, and the newest point restores SRC's bytes.
pruned() {
	local kind=$1 dir=$2 src=$3 what=$4
	[ "$(jout '.notes | length')" = 0 ] || echo "  ($kind: prune noted: $(jout '.notes[]'))"
	check_eq "$kind: no temporary file left by prune" "$(cd "$dir" && ls -1A | grep -c '\.tmp$')" 0
	expect_exit 0 "$CBIMG" verify "$dir"
	expect_exit 0 "$CBIMG" restore "$dir" latest "$T/rp.img"
	check_eq "$kind: $what restores the newest state" "$(sha256 "$T/rp.img")" "$(sha256 "$src")"
	rm -f "$T/rp.img"
}

# suite KIND MNT EXPECT_FS: the whole scenario on one mounted file system.
suite() {
	local kind=$1 mnt=$2 fs=$3 D=$2/backups M=$2/moved
	local full incr fimg iimg n want

	mkdir -p "$D" || { fail "$kind: mkdir on the mount"; return; }
	# fusefat keeps no catalog: the backup warns, exit status 5
	# fusefat keeps its run history in a run log now (no catalog warning): exit 0
	local brc=0
	# names with characters FAT refuses: the file names must still be valid
	expect_exit $brc "$CBIMG" backup --json --split 64M --host 'lab:pc*1' --job 'usb "nightly"' \
		"$SRC" "$D" || return
	check_eq "$kind: full backup" "$(jout .type)" full
	check_eq "$kind: destination detected as $fs" "$(jout .dest_fs)" "$fs"
	check_eq "$kind: segment size recorded" "$(jout .point.segment_size)" "$SEG"
	full=$(jout .point.path)
	fimg=$(basename "$full")
	case $fimg in *[:*\"\ ]*) fail "$kind: unsanitized name $fimg" ;; *) pass "$kind: name $fimg" ;; esac
	n=$(seg_count "$full") && pass "$kind: full image in $n files, all but the last exactly 64 MiB" ||
		fail "$kind: segment sizes of $fimg (n=$n)"
	want=$(( ($(jout .point.stored_bytes) + SEG - 1) / SEG ))
	check_eq "$kind: number of segments" "$n" "$want"
	[ "$n" -ge 5 ] && pass "$kind: the image spans several segments" ||
		fail "$kind: only $n segments for a ${SRC_MIB} MiB image"
	check_eq "$kind: one image and one index per point" "$(count_files "$D")" 2
	check_eq "$kind: no temporary file left" "$(cd "$D" && ls -1A | grep -c '\.tmp$')" 0
	check_names "$D" "$kind"
	expect_exit 0 "$CBIMG" info "$full"
	check_grep "$kind: info shows the segments" "segments: +64 MiB each: image $n files, index 1 file"

	# an incremental of a few changed regions
	fill_random "$SRC" 4096 4096
	fill_random "$SRC" $((100 * 1024)) 2048
	fill_random "$SRC" $((SRC_MIB * 1024 - 1024)) 1024
	SHA1=$(sha256 "$SRC")
	expect_exit $brc "$CBIMG" backup --json --split 64M --host 'lab:pc*1' --job 'usb "nightly"' \
		"$SRC" "$D" || return
	check_eq "$kind: incremental backup" "$(jout .type)" incremental
	incr=$(jout .point.path)
	iimg=$(basename "$incr")
	expect_exit 0 "$CBIMG" verify "$D"

	expect_exit 0 "$CBIMG" restore "$full" "$T/r0.img"
	check_eq "$kind: restore of the full" "$(sha256 "$T/r0.img")" "$SHA0"
	expect_exit 0 "$CBIMG" restore "$incr" "$T/r1.img"
	check_eq "$kind: restore of the incremental" "$(sha256 "$T/r1.img")" "$SHA1"
	rm -f "$T/r0.img" "$T/r1.img"

	# move and rename the chain, every segment with its file
	mkdir -p "$M"
	local f b new
	for f in "$D"/*; do
		b=$(basename "$f")
		case $b in
		"${fimg%.cbi}".*) new=p0${b#"${fimg%.cbi}"} ;;
		"${iimg%.cbi}".*) new=p1${b#"${iimg%.cbi}"} ;;
		*) continue ;;
		esac
		mv "$f" "$M/$new" || fail "$kind: mv $b"
	done
	check_eq "$kind: every file of the chain moved" "$(count_files "$D")" 0
	n=$(seg_count "$M/p0.cbi") && pass "$kind: renamed with its $n segments" ||
		fail "$kind: renamed segments of p0.cbi (n=$n)"
	expect_exit 0 "$CBIMG" verify "$M"
	expect_exit 0 "$CBIMG" restore "$M/p1.cbx" "$T/r1.img"
	check_eq "$kind: restore of the moved incremental" "$(sha256 "$T/r1.img")" "$SHA1"
	expect_exit 0 "$CBIMG" restore "$M/p0.cbi" "$T/r0.img"
	check_eq "$kind: restore of the moved full" "$(sha256 "$T/r0.img")" "$SHA0"
	rm -f "$T/r0.img" "$T/r1.img"

	# a file renamed without its segments, then a segment deleted: verify
	# names the missing segment (and the segments left behind)
	mv "$M/p0.cbi" "$M/q0.cbi"
	expect_exit 3 "$CBIMG" verify "$M"
	check_grep "$kind: verify names the segment the renamed file lacks" "q0\.cbi\.001' is missing"
	check_grep "$kind: verify reports the segments left behind" \
		"p0\.cbi\.001: segment file without its first segment"
	expect_exit nz "$CBIMG" restore "$M/p1.cbi" "$T/r1.img"
	mv "$M/q0.cbi" "$M/p0.cbi"
	rm -f "$M/p0.cbi.002"
	expect_exit 3 "$CBIMG" verify "$M"
	check_grep "$kind: verify names the deleted middle segment" "p0\.cbi\.002' is missing"
	rm -f "$T/r1.img"
	rm -rf --one-file-system "$M"

	# automatic detection: a small source, no --split
	local small=$T/small.img A=$mnt/auto
	head -c $((8 * MIB)) /dev/urandom >"$small"
	mkdir -p "$A"
	expect_exit $brc "$CBIMG" backup --json --job auto "$small" "$A" || return
	check_eq "$kind: automatic detection: $fs" "$(jout .dest_fs)" "$fs"
	if [ "$fs" = fat ]; then want=$((4095 * MIB)); else want=0; fi
	check_eq "$kind: automatic segment size" "$(jout .point.segment_size)" "$want"
	expect_exit 0 "$CBIMG" info --json "$(jout .point.index_path)"
	check_eq "$kind: info reports the segment size" "$(jout .segment_size)" "$want"
	expect_exit $brc "$CBIMG" backup --json --split 0 --job auto0 "$small" "$A"
	check_eq "$kind: --split 0 never splits" "$(jout .point.segment_size)" 0
	if [ "$fs" = fat ]; then
		expect_exit 2 "$CBIMG" backup --split 4G --job big "$small" "$A"
		check_grep "$kind: segments too large for FAT refused" "do not fit on the FAT"
	fi
	expect_exit 0 "$CBIMG" verify "$A"
	check_names "$A" "$kind (auto)"

	# a killed backup leaves hidden .tmp segments; the next run removes them
	local K=$mnt/kill pid i tmps
	mkdir -p "$K"
	"$CBIMG" backup -q --split 4M --threads 1 --job kill --source-id kill "$SRC" "$K" \
		</dev/null >/dev/null 2>&1 &
	pid=$!
	BGPIDS+=("$pid")
	for ((i = 0; i < 300; i++)); do
		tmps=$(cd "$K" && ls -1A | grep -c '\.tmp$')
		[ "$tmps" -ge 3 ] && break
		sleep 0.1
	done
	kill -9 "$pid" 2>/dev/null
	wait "$pid" 2>/dev/null
	tmps=$(cd "$K" && ls -1A | grep -c '\.tmp$')
	if [ "$tmps" -ge 3 ]; then
		pass "$kind: killed backup left $tmps temporary segments"
		check_eq "$kind: temporary names are hidden and tagged" \
			"$(cd "$K" && ls -1A | grep '\.tmp$' | grep -vc '^\.cbimg-[0-9a-f]\{16\}-[0-9]*\.')" 0
		check_eq "$kind: nothing a scan would take" "$(count_files "$K")" 0
		expect_exit $brc "$CBIMG" backup -q --split 4M --job kill --source-id kill "$small" "$K"
		check_eq "$kind: the next backup removed them" "$(cd "$K" && ls -1A | grep -c '\.tmp$')" 0
	else
		skip_part "$kind: the backup finished before it could be killed"
	fi
	rm -rf --one-file-system "$K" "$A" "$D"

	# prune on the file system (issue 11: where Macrium's retention does
	# not run): two incrementals and the full folded into a synthetic full,
	# written in segments like the chain. fusefat does not always read back
	# what was just written; the prune then writes the image again without
	# reading it back, with a note (prune.c), and must still succeed.
	local P=$mnt/prune psrc=$T/psrc.img merged
	head -c $((40 * MIB)) /dev/urandom >"$psrc"
	mkdir -p "$P"
	expect_exit $brc "$CBIMG" backup -q --split 4M --job prune --source-id prune "$psrc" "$P" || return
	fill_random "$psrc" 1024 1024
	expect_exit $brc "$CBIMG" backup -q --split 4M --job prune --source-id prune "$psrc" "$P"
	fill_random "$psrc" 30720 2048
	expect_exit $brc "$CBIMG" backup -q --split 4M --job prune --source-id prune "$psrc" "$P"
	expect_exit 0 "$CBIMG" prune --json --keep-last 1 "$P"
	check_eq "$kind: prune removed the full and the first incremental" "$(jout .removed)" 2
	check_eq "$kind: prune wrote one merged image" "$(jout .merged)" 1
	merged=$(cd "$P" && ls -1 | grep -- '-m0000\.cbi$')
	[ -n "$merged" ] && [ -e "$P/$merged.009" ] && pass "$kind: the synthetic full is in 4 MiB segments" ||
		fail "$kind: no segmented merged image: $(cd "$P" && ls -1 | tr '\n' ' ')"
	check_names "$P" "$kind (prune)"
	pruned "$kind" "$P" "$psrc" "the synthetic full"
	rm -rf --one-file-system "$P"
	# the same in one file per image (the automatic segment size: 4095 MiB
	# on FAT, none on exFAT), where fusefat failed the old build's prune
	# (EPERM on reading the merged image back)
	head -c $((8 * MIB)) /dev/urandom >"$psrc"
	mkdir -p "$P"
	expect_exit $brc "$CBIMG" backup -q --job prune1 --source-id prune1 "$psrc" "$P" || return
	fill_random "$psrc" 1024 1024
	expect_exit $brc "$CBIMG" backup -q --job prune1 --source-id prune1 "$psrc" "$P"
	expect_exit 0 "$CBIMG" prune --json --keep-last 1 "$P"
	check_eq "$kind: prune of unsplit images wrote one merged image" "$(jout .merged)" 1
	pruned "$kind" "$P" "$psrc" "the unsplit synthetic full"
	rm -f "$psrc"
	rm -rf --one-file-system "$P"
}

for kind in fat exfat; do
	echo "  -- $kind"
	if [ "$kind" = fat ]; then
		need_cmds mkfs.vfat || { skip_part "FAT32: mkfs.vfat not available (dosfstools)"; continue; }
	else
		need_cmds mkfs.exfat || { skip_part "exFAT: mkfs.exfat not available (exfatprogs)"; continue; }
	fi
	rm -f "$T/$kind.img"
	truncate -s 600M "$T/$kind.img"
	if ! mount_fs "$kind" "$T/$kind.img" "$T/mnt-$kind"; then
		skip_part "$kind: cannot mount a $kind file system here: $(cat "$T/mkfs.out" "$T/fuse.out" 2>/dev/null | tail -2)"
		continue
	fi
	echo "  ($kind on $LOOPDEV with $DRIVER)"
	dev=$LOOPDEV
	# restore the source to its first state for each file system
	# a local state of its own: the chains of one file system are not
	# continued on the other
	CBIMG_STATE_DIR=$T/state-$kind suite "$kind" "$T/mnt-$kind" "$kind"
	sync
	umount "$T/mnt-$kind" 2>/dev/null || umount -l "$T/mnt-$kind"
	sync
	fsck=fsck.vfat
	[ "$kind" = exfat ] && fsck=fsck.exfat
	if command -v "$fsck" >/dev/null 2>&1; then
		if "$fsck" -n "$dev" >"$T/fsck.out" 2>&1; then
			pass "$kind: $fsck finds the file system clean"
		else
			fail "$kind: $fsck: $(tail -3 "$T/fsck.out")"
		fi
	fi
	# a new random source for the next file system
	head -c $((SRC_MIB * MIB)) /dev/urandom >"$SRC"
	SHA0=$(sha256 "$SRC")
done
[ "$PASS" -gt 0 ] || skip "no FAT or exFAT file system could be made and mounted here"
finish
