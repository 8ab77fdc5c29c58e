#!/usr/bin/env bash
# cbimg mount / umount, the nbdkit plugin and restore --partition:
#  - every point of five 5-point chains (plain, encrypted with a password
#    file, split into 1 MiB segments, --used-only, --hash sha256): the
#    SHA-256 of the mounted disk.img, of `cbimg restore` of the point and of
#    nbdcopy through the plugin are the same;
#  - --fs on an ext4 loop device whose tree changes between backups: each
#    point's mounted tree equals a copy taken at that backup (diff -r);
#  - a GPT disk with an ext4 and an xfs partition: part1 and part2, each
#    mounts (--fs: part1/ and part2/), restore --partition N gives that
#    partition's bytes;
#  - --fs on btrfs, vfat and exfat disks (the last two where the kernel has
#    the driver);
#  - a damaged stored block: EIO for its range and a log line, the blocks
#    beside it read right, a whole read stops at the damage with only right
#    bytes before it; nbdcopy fails;
#  - bad input: wrong passphrase (4), missing parent (1), mount point not a
#    directory (1), already mounted (1), umount of what is no cbimg mount (1),
#    each one line.
# Skips visibly without root or /dev/fuse; the --fs parts without loop
# devices, the plugin checks without nbdkit, nbdcopy or the plugin.
. "$(dirname "$0")/lib.sh"
need_jq
is_root || skip "needs root (FUSE mounts, loop devices)"
[ -c /dev/fuse ] || skip "no /dev/fuse: FUSE is not available here"
command -v mkfs.ext4 >/dev/null 2>&1 && command -v debugfs >/dev/null 2>&1 ||
	skip "mkfs.ext4 or debugfs not installed (e2fsprogs)"

PLUGIN=${CBIMG_NBDKIT_PLUGIN:-$(dirname "$CBIMG")/nbdkit-cbimg-plugin.so}
HAVE_NBD=0
if command -v nbdkit >/dev/null 2>&1 && command -v nbdcopy >/dev/null 2>&1 && [ -f "$PLUGIN" ]; then
	HAVE_NBD=1
else
	skip_part "nbdkit, nbdcopy or the plugin ($PLUGIN) missing: the plugin is not tested"
fi
HAVE_LOOP=0
if command -v losetup >/dev/null 2>&1 && losetup -f >/dev/null 2>&1; then
	HAVE_LOOP=1
else
	skip_part "no free loop device: --fs and the partition file systems are not tested"
fi

# Our mounts are unmounted (file systems first) before lib.sh's cleanup
# removes $T.
CBMOUNTS=()
mount_cleanup() {
	local i m
	for ((i = ${#CBMOUNTS[@]} - 1; i >= 0; i--)); do
		m=${CBMOUNTS[$i]}
		if grep -q " $m fuse.cbimg " /proc/self/mounts 2>/dev/null; then
			"$CBIMG" umount "$m" >/dev/null 2>&1 || umount -R -l "$m" 2>/dev/null
		fi
	done
}
trap 'mount_cleanup; cleanup' EXIT

# cbmount MNT ARGS...: cbimg mount ARGS... MNT, must succeed.
cbmount() {
	local m=$1
	shift
	mkdir -p "$m"
	CBMOUNTS+=("$m")
	expect_exit 0 "$CBIMG" mount "$@" "$m"
}

cbumount() {
	expect_exit 0 "$CBIMG" umount "$1"
}

# nbd_sha POINT [KEY=VALUE...]: SHA-256 of the disk through the plugin.
nbd_sha() {
	local p=$1
	shift
	rm -f "$T/nbd.out"
	nbdkit -U - "$PLUGIN" point="$p" "$@" --run "nbdcopy \"\$uri\" $T/nbd.out" >"$T/nbd.log" 2>&1 || {
		echo "nbdcopy-failed"
		return
	}
	sha256 "$T/nbd.out"
}

# one_line: stderr of the last expect_exit is one line starting "cbimg: "
one_line() {
	check_eq "$1: one line" "$(wc -l <"$T/stderr")" 1
	check_grep "$1: 'cbimg: ' message" "^cbimg: "
}

# ------------------------------------------------------------ every point exact
IMG=$T/disk.img
truncate -s 24M "$IMG"
mkdir -p "$T/tree0"
for i in $(seq 1 40); do yes "file $i of the first tree" | head -c $((i * 997)) >"$T/tree0/f$i.txt"; done
mkfs.ext4 -q -F -b 1024 -d "$T/tree0" "$IMG" >"$T/mkfs.out" 2>&1 || die "mkfs.ext4: $(cat "$T/mkfs.out")"
echo "the passphrase of t_mount" >"$T/pw"
echo "not the passphrase" >"$T/badpw"
VARIANTS="plain enc split used sha"
vopts() {
	case $1 in
	plain) echo "" ;;
	enc) echo "--encrypt --password-file $T/pw --scrypt 12:8:1" ;;
	split) echo "--split 1M" ;;
	used) echo "--used-only" ;;
	sha) echo "--hash sha256" ;;
	esac
}
for step in 0 1 2 3 4; do
	if [ "$step" -gt 0 ]; then
		head -c $((2 * 1024 * 1024)) /dev/urandom >"$T/blob"
		debugfs -w -R "write $T/blob /blob$step" "$IMG" >/dev/null 2>&1 || die "debugfs write"
		[ "$step" = 3 ] && debugfs -w -R "rm /blob1" "$IMG" >/dev/null 2>&1
		fill_random "$IMG" $((20 * 1024 + step * 64)) 64 # bytes no file uses (used-only drops them)
	else
		head -c $((2 * 1024 * 1024)) /dev/urandom >"$T/blob"
		debugfs -w -R "write $T/blob /blob0" "$IMG" >/dev/null 2>&1 || die "debugfs write"
	fi
	for v in $VARIANTS; do
		mkdir -p "$T/d_$v"
		# shellcheck disable=SC2046
		run "$CBIMG" backup -q --block-size 64K --job "j$v" $(vopts "$v") "$IMG" "$T/d_$v" ||
			die "backup $v step $step: $OUT"
	done
done
for v in $VARIANTS; do
	pts=$(ls -1 "$T/d_$v"/*.cbx | sort)
	check_eq "$v: 5 points" "$(echo "$pts" | wc -l)" 5
	[ "$v" = split ] && check "split: the images are in segments" test -n "$(ls "$T/d_$v"/*.cbi.001 2>/dev/null)"
	pw=()
	nbdpw=()
	[ "$v" = enc ] && pw=(--password-file "$T/pw") && nbdpw=(password=+"$T/pw")
	k=0
	for p in $pts; do
		rm -f "$T/r.img"
		run "$CBIMG" restore -q "${pw[@]}" "$p" "$T/r.img" || { fail "restore $v point $k: $OUT"; continue; }
		want=$(sha256 "$T/r.img")
		cbmount "$T/m" "${pw[@]}" "$p" || continue
		check_eq "$v point $k: mounted disk.img equals restore" "$(sha256 "$T/m/disk.img")" "$want"
		check_eq "$v point $k: size" "$(stat -c %s "$T/m/disk.img")" "$(stat -c %s "$T/r.img")"
		cbumount "$T/m"
		if [ "$HAVE_NBD" = 1 ]; then
			check_eq "$v point $k: nbdcopy through the plugin equals restore" "$(nbd_sha "$p" "${nbdpw[@]}")" "$want"
		fi
		k=$((k + 1))
	done
done
check_eq "umount: nothing left mounted" "$(grep -c fuse.cbimg /proc/self/mounts)" 0

# The last point of the plain chain: restore equals the disk, and partitions
# are not invented for a disk without a table.
last=$(ls -1 "$T/d_plain"/*.cbx | sort | tail -1)
cbmount "$T/m" "$last"
check_eq "plain newest point equals the source" "$(sha256 "$T/m/disk.img")" "$(sha256 "$IMG")"
check_eq "no partition table: disk.img alone" "$(ls "$T/m" | tr '\n' ' ')" "disk.img "
check_eq "read-only: writing is refused" "$( (echo x >>"$T/m/disk.img") 2>&1 | grep -c -i 'read-only\|permission')" 1
cbumount "$T/m"
if [ "$HAVE_NBD" = 1 ]; then
	run nbdkit -U - "$PLUGIN" point="$last" --run 'nbdinfo --size "$uri"'
	check_eq "nbdinfo: the disk's size" "$OUT" "$(stat -c %s "$IMG")"
fi

# --------------------------------------------------------------- bad input
expect_exit 4 "$CBIMG" mount --password-file "$T/badpw" "$(ls -1 "$T/d_enc"/*.cbx | tail -1)" "$T/m"
one_line "wrong passphrase"
mkdir -p "$T/orphan"
cp "$(ls -1 "$T/d_plain"/*.cbx | sort | tail -1)" "$(ls -1 "$T/d_plain"/*.cbi | sort | tail -1)" "$T/orphan/"
expect_exit 1 "$CBIMG" mount "$(ls "$T"/orphan/*.cbx)" "$T/m"
one_line "missing parent"
check_grep "missing parent: named" "parent|missing"
: >"$T/notdir"
expect_exit 1 "$CBIMG" mount "$last" "$T/notdir"
one_line "mount point not a directory"
check_grep "not a directory: said" "not a directory"
expect_exit 1 "$CBIMG" mount "$last" "$T/nosuchdir"
one_line "missing mount point"
cbmount "$T/m" "$last"
expect_exit 1 "$CBIMG" mount "$last" "$T/m"
one_line "already mounted"
check_grep "already mounted: said" "already a mount point"
# prune changes no chain that is mounted (the mount holds its chain's lock
# byte shared): refused, named, nothing removed; after umount it goes on.
before=$(ls "$T/d_plain" | sort)
expect_exit 1 "$CBIMG" prune --keep-last 1 "$T/d_plain"
check_grep "prune of a mounted chain: refused, says why" "is mounted"
check_eq "prune of a mounted chain: nothing removed" "$(ls "$T/d_plain" | sort)" "$before"
cbumount "$T/m"
expect_exit 0 "$CBIMG" prune --keep-last 1 "$T/d_plain"
check_eq "prune after umount: one point left" "$(ls "$T/d_plain"/*.cbx | wc -l)" 1
expect_exit 1 "$CBIMG" umount "$T/m"
one_line "umount of what is not mounted"
expect_exit 1 "$CBIMG" umount /proc
one_line "umount of another file system"
check_grep "umount of another file system: said" "not a cbimg mount"
expect_exit 2 "$CBIMG" mount --cache lots "$last" "$T/m"
expect_exit 2 "$CBIMG" mount "$last"
if [ "$HAVE_NBD" = 1 ]; then
	run nbdkit -U - "$PLUGIN" point="$(ls -1 "$T/d_enc"/*.cbx | tail -1)" password=+"$T/badpw" --run true
	check "plugin: wrong passphrase fails" test "$RC" -ne 0
	check_grep "plugin: wrong passphrase said" "passphrase"
fi

# ------------------------------------------------------------------ damage
head -c $((4 * 1024 * 1024)) /dev/urandom >"$T/rand.img"
mkdir -p "$T/d_dmg"
run "$CBIMG" backup -q --block-size 64K "$T/rand.img" "$T/d_dmg" || die "backup for damage: $OUT"
dp=$(ls "$T"/d_dmg/*.cbi)
flip_byte "$dp" $(($(filesize "$dp") / 2)) || die "flip_byte"
run "$CBIMG" verify "$dp"
bad=$(printf '%s\n' "$OUT" | grep -oE 'block [0-9]+' | head -1 | awk '{ print $2 }')
[ -n "$bad" ] || die "verify did not name the damaged block: $OUT"
mkdir -p "$T/m"
CBMOUNTS+=("$T/m")
"$CBIMG" mount -f "$dp" "$T/m" 2>"$T/fg.log" &
fgpid=$!
for _ in $(seq 1 50); do grep -q " $T/m fuse.cbimg " /proc/self/mounts && break; sleep 0.1; done
check "damage: mounted with -f" grep -q " $T/m fuse.cbimg " /proc/self/mounts
B=65536
run dd if="$T/m/disk.img" of="$T/blk" bs=$B skip="$bad" count=1 status=none
check "damage: reading block $bad fails" test "$RC" -ne 0
check_grep "damage: EIO" "Input/output error"
check "damage: a log line names the block" grep -q "block $bad" "$T/fg.log"
for nb in $((bad - 1)) $((bad + 1)); do
	[ "$nb" -lt 0 ] || [ "$nb" -ge 64 ] && continue
	dd if="$T/m/disk.img" of="$T/blk" bs=$B skip="$nb" count=1 status=none 2>/dev/null
	dd if="$T/rand.img" of="$T/blk.want" bs=$B skip="$nb" count=1 status=none
	check "damage: block $nb beside it reads right" cmp -s "$T/blk" "$T/blk.want"
done
cat "$T/m/disk.img" >"$T/whole" 2>/dev/null
check "damage: a whole read fails" test $? -ne 0
check "damage: ... and stops at the damaged block" test "$(filesize "$T/whole")" -le $((bad * B))
check "damage: every byte it returned is right" cmp -s -n "$(filesize "$T/whole")" "$T/whole" "$T/rand.img"
cbumount "$T/m"
wait "$fgpid"
check_eq "damage: mount -f exits 0 once unmounted" "$?" 0
if [ "$HAVE_NBD" = 1 ]; then
	check_eq "damage: nbdcopy through the plugin fails" "$(nbd_sha "$dp")" "nbdcopy-failed"
fi

# ---------------------------------------------------- --fs on an ext4 loop device
if [ "$HAVE_LOOP" = 1 ]; then
	truncate -s 32M "$T/ext.img"
	new_loop "$T/ext.img" || die "losetup"
	EXT=$LOOPDEV
	mkfs.ext4 -q -F "$EXT" >/dev/null 2>&1 || die "mkfs.ext4"
	mkdir -p "$T/src" "$T/d_fs"
	for step in 0 1 2; do
		do_mount "$EXT" "$T/src" || die "mount $EXT"
		case $step in
		0) mkdir -p "$T/src/a/b" && for i in 1 2 3; do yes "step0 $i" | head -c $((i * 5000)) >"$T/src/a/b/f$i"; done ;;
		1) rm "$T/src/a/b/f2" && mkdir "$T/src/c" && head -c 300000 /dev/urandom >"$T/src/c/r.bin" &&
			echo changed >"$T/src/a/b/f1" ;;
		2) mv "$T/src/c" "$T/src/d" && ln -s ../d/r.bin "$T/src/a/link" && yes step2 | head -c 70000 >>"$T/src/a/b/f3" ;;
		esac
		rm -rf --one-file-system "$T/snap$step" && cp -a "$T/src" "$T/snap$step"
		rm -rf --one-file-system "$T/snap$step/lost+found"
		do_umount "$T/src" || die "umount"
		run "$CBIMG" backup -q --block-size 64K "$EXT" "$T/d_fs" || die "backup of $EXT: $OUT"
	done
	k=0
	for p in $(ls -1 "$T/d_fs"/*.cbx | sort); do
		cbmount "$T/m" --fs "$p" || continue
		check_eq "--fs point $k: the view" "$(ls "$T/m" | tr '\n' ' ')" "disk.img fs "
		check "--fs point $k: the tree as it was at that backup" diff -r --exclude=lost+found "$T/snap$k" "$T/m/fs"
		check "--fs point $k: ext4 mounted ro" grep -q " $T/m/fs ext4 ro," /proc/self/mounts
		cbumount "$T/m"
		check "--fs point $k: nothing left mounted" test -z "$(grep " $T/m" /proc/self/mounts)"
		k=$((k + 1))
	done
	check_eq "--fs: no loop device left on disk.img" "$(losetup -a | grep -c "$T/m/disk.img")" 0
fi

# ----------------------------------------------------- GPT: ext4 and xfs partitions
if [ "$HAVE_LOOP" = 1 ] && command -v sgdisk >/dev/null 2>&1 && command -v mkfs.xfs >/dev/null 2>&1; then
	G=$T/gpt.img
	truncate -s 360M "$G"
	sgdisk -n 1:2048:+24M -t 1:8300 -n 2:0:+310M -t 2:8300 "$G" >/dev/null 2>&1 || die "sgdisk"
	p1=$((2048 * 512))
	s1=$((24 * 1024 * 1024))
	p2=$(sgdisk -i 2 "$G" | awk '/First sector/ { print $3 * 512 }')
	s2=$((310 * 1024 * 1024))
	losetup -f --show -o "$p1" --sizelimit "$s1" "$G" >"$T/l1" && LOOPS+=("$(cat "$T/l1")")
	losetup -f --show -o "$p2" --sizelimit "$s2" "$G" >"$T/l2" && LOOPS+=("$(cat "$T/l2")")
	mkfs.ext4 -q -F "$(cat "$T/l1")" >/dev/null 2>&1 || die "mkfs.ext4 on partition 1"
	mkfs.xfs -q -f "$(cat "$T/l2")" >"$T/mkfs.out" 2>&1 || die "mkfs.xfs on partition 2: $(cat "$T/mkfs.out")"
	do_mount "$(cat "$T/l1")" "$T/g1" && echo "on ext4" >"$T/g1/hello.txt" && do_umount "$T/g1"
	do_mount "$(cat "$T/l2")" "$T/g2" && echo "on xfs" >"$T/g2/hello.txt" && do_umount "$T/g2"
	losetup -d "$(cat "$T/l1")" "$(cat "$T/l2")"
	mkdir -p "$T/d_gpt"
	run "$CBIMG" backup -q "$G" "$T/d_gpt" || die "backup of the GPT disk: $OUT"
	gp=$(ls "$T"/d_gpt/*.cbx)
	cbmount "$T/m" "$gp"
	check_eq "GPT: disk.img, part1, part2" "$(ls "$T/m" | tr '\n' ' ')" "disk.img part1 part2 "
	check_eq "GPT: part1's size" "$(stat -c %s "$T/m/part1")" "$s1"
	check_eq "GPT: part2's size" "$(stat -c %s "$T/m/part2")" "$s2"
	check_eq "GPT: part1 is partition 1's bytes" "$(sha256 "$T/m/part1")" \
		"$(dd if="$G" bs=1M skip=1 count=24 status=none | sha256sum | cut -d' ' -f1)"
	for n in 1 2; do
		mkdir -p "$T/pm$n"
		if mount -o ro,loop "$T/m/part$n" "$T/pm$n" 2>"$T/mount.err" || mount -o ro,loop,norecovery,nouuid "$T/m/part$n" "$T/pm$n" 2>"$T/mount.err"; then
			check "GPT: part$n loop-mounts and holds its file" test -s "$T/pm$n/hello.txt"
			umount "$T/pm$n"
		else
			fail "GPT: part$n does not mount: $(cat "$T/mount.err")"
		fi
	done
	sleep 0.5
	cbumount "$T/m"
	cbmount "$T/m" --fs "$gp"
	check_eq "GPT --fs: part1/ and part2/" "$(ls -F "$T/m" | tr '\n' ' ')" "disk.img part1/ part2/ "
	check_eq "GPT --fs: ext4 partition's file" "$(cat "$T/m/part1/hello.txt" 2>&1)" "on ext4"
	check_eq "GPT --fs: xfs partition's file" "$(cat "$T/m/part2/hello.txt" 2>&1)" "on xfs"
	check "GPT --fs: xfs mounted ro,norecovery" grep -q " $T/m/part2 xfs ro,.*norecovery" /proc/self/mounts
	cbumount "$T/m"
	check "GPT --fs: nothing left mounted" test -z "$(grep " $T/m" /proc/self/mounts)"
	expect_exit 0 "$CBIMG" restore -q --partition 2 "$gp" "$T/p2.img"
	check_eq "restore --partition 2: that partition's bytes" "$(sha256 "$T/p2.img")" \
		"$(dd if="$G" bs=512 skip=$((p2 / 512)) count=$((s2 / 512)) status=none | sha256sum | cut -d' ' -f1)"
	expect_exit 1 "$CBIMG" restore -q --partition 3 "$gp" "$T/p3.img"
	one_line "restore --partition 3 of two"
	check "restore --partition 3: no file left" test ! -e "$T/p3.img"
	expect_exit 1 "$CBIMG" restore -q --partition 1 "$last" "$T/p1.img"
	check_grep "restore --partition without a table: said" "no partition table"
else
	skip_part "no loop device, sgdisk or mkfs.xfs: the GPT partitions are not tested"
fi


# ----------------------------------------------------- --fs: btrfs, vfat, exfat
if [ "$HAVE_LOOP" = 1 ]; then
	mkdir -p "$T/broot" && echo "on btrfs" >"$T/broot/hello.txt"
	for fs in btrfs vfat exfat; do
		img=$T/$fs.img
		rm -f "$img"
		truncate -s 128M "$img"
		case $fs in
		btrfs) command -v mkfs.btrfs >/dev/null 2>&1 && mkfs.btrfs -q --rootdir "$T/broot" "$img" >/dev/null 2>&1 ;;
		vfat) command -v mkfs.vfat >/dev/null 2>&1 && mkfs.vfat "$img" >/dev/null 2>&1 ;;
		exfat) command -v mkfs.exfat >/dev/null 2>&1 && mkfs.exfat "$img" >/dev/null 2>&1 ;;
		esac || {
			skip_part "mkfs.$fs missing or failed: --fs on $fs not tested"
			continue
		}
		mkdir -p "$T/d_$fs"
		run "$CBIMG" backup -q "$img" "$T/d_$fs" || { fail "backup of the $fs disk: $OUT"; continue; }
		cbmount "$T/m" --fs "$(ls "$T/d_$fs"/*.cbx)" || continue
		if grep -q " $T/m/fs $fs ro," /proc/self/mounts; then
			pass "--fs: $fs mounted read-only"
			[ "$fs" = btrfs ] && check_eq "--fs: the btrfs file" "$(cat "$T/m/fs/hello.txt")" "on btrfs"
		elif grep -q "no $fs driver" "$T/stderr"; then
			skip_part "no $fs driver in this kernel: --fs left it unmounted, with a note"
		else
			fail "--fs: $fs not mounted: $OUT"
		fi
		cbumount "$T/m"
	done
	check_eq "--fs: nothing left mounted" "$(grep -c " $T/m" /proc/self/mounts)" 0
fi

finish
