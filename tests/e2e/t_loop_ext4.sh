#!/usr/bin/env bash
# Block devices: a 256 MiB ext4 file system on a loop device with real files;
# full + two incrementals after file-level changes; restore of every point to
# a second loop device and to a file; fsck; --changed-only; mounted target
# refused; moved/renamed chain; damage detection.
. "$(dirname "$0")/lib.sh"
need_root_loop
need_jq

SIZE=$((256 * 1024 * 1024))
D=$T/dest
M=$T/mnt
mkdir -p "$D" "$M"

truncate -s "$SIZE" "$T/diskA.img"
truncate -s "$SIZE" "$T/diskB.img"
new_loop "$T/diskA.img" || die "losetup A"
A=$LOOPDEV
new_loop "$T/diskB.img" || die "losetup B"
B=$LOOPDEV
echo "  (loop devices: A=$A B=$B)"

mkfs.ext4 -q -F -L cbimg-e2e "$A" >"$T/mkfs.out" 2>&1 || die "mkfs.ext4: $(cat "$T/mkfs.out")"
do_mount "$A" "$M" || die "mount $A"

# Real files: up to ~2500 files (< 1 MiB each) from /usr/share/doc and
# /usr/include, plus random files of known size.
find /usr/share/doc /usr/include -type f -size -1024k 2>/dev/null | head -n 2500 >"$T/files.list"
tar -cf - --files-from="$T/files.list" 2>/dev/null | tar -xf - -C "$M" 2>/dev/null
mkdir -p "$M/data"
for i in 1 2 3 4 5 6; do
	head -c $((i * 1024 * 1024)) /dev/urandom >"$M/data/random$i.bin"
done
seq 1 200000 >"$M/data/numbers.txt"
nfiles=$(find "$M" -type f | wc -l)
[ "$nfiles" -gt 10 ] || die "test setup: only $nfiles files copied"
do_umount "$M" || die "umount"
SHA0=$(sha256 "$A")

expect_exit 0 "$CBIMG" backup -q --job disk "$A" "$D" || die "full backup of $A"

# -------------------------------------------------------------- changes 1
do_mount "$A" "$M" || die "mount $A"
mkdir -p "$M/new"
cp -a /usr/share/common-licenses "$M/new/" 2>/dev/null || cp -a /etc "$M/new/etc" 2>/dev/null
head -c 3000000 /dev/urandom >"$M/new/blob.bin"
rm -f "$M/data/random2.bin"
find "$M/usr" -type f -print0 2>/dev/null | head -z -n 200 | xargs -0 -r rm -f
dd if=/dev/urandom of="$M/data/random5.bin" bs=4K seek=100 count=10 conv=notrunc status=none
dd if=/dev/urandom of="$M/data/random6.bin" bs=1K seek=3 count=1 conv=notrunc status=none
head -c 777777 /dev/urandom >>"$M/data/random3.bin"
echo "appended line" >>"$M/data/numbers.txt"
do_umount "$M" || die "umount"
SHA1=$(sha256 "$A")
[ "$SHA1" != "$SHA0" ] || die "test setup: no change on the device"
expect_exit 0 "$CBIMG" backup -q --job disk "$A" "$D" || die "first incremental of $A"

# -------------------------------------------------------------- changes 2
do_mount "$A" "$M" || die "mount $A"
rm -rf --one-file-system "$M/new/common-licenses" "$M/data/random4.bin"
dd if=/dev/urandom of="$M/data/random1.bin" bs=4K seek=0 count=1 conv=notrunc status=none
dd if=/dev/urandom of="$M/new/blob.bin" bs=64K seek=10 count=2 conv=notrunc status=none
head -c 100000 /dev/urandom >>"$M/data/random6.bin"
mkdir -p "$M/new2"
head -c 1234567 /dev/urandom >"$M/new2/blob2.bin"
do_umount "$M" || die "umount"
SHA2=$(sha256 "$A")
expect_exit 0 "$CBIMG" backup -q --job disk "$A" "$D" || die "second incremental of $A"
SHAS=("$SHA0" "$SHA1" "$SHA2")

list_json "$D" || die "list --json"
check_eq "3 points" "$(jqr 'length')" 3
check_eq "types and seqs" "$(jqr '[.[] | "\(.type)/\(.seq)"] | join(",")')" "full/0,incremental/1,incremental/2"
check_eq "parent links" "$(jqr '(.[0].parent == null) and (.[1].parent == .[0].id) and (.[2].parent == .[1].id)')" true
check_eq "source size recorded" "$(jqr '.[0].size')" "$SIZE"
check_eq "incrementals changed only part of the device" \
	"$(jqr '(.[1].changed_blocks > 0) and (.[1].changed_blocks < .[0].changed_blocks) and (.[2].changed_blocks > 0)')" true
cp "$T/list.json" "$T/list-orig.json"
expect_exit 0 "$CBIMG" verify "$D"

# -------------------------------------------------------------- restore every point
for i in 0 1 2; do
	f=$(jqr ".[$i].p")
	expect_exit nz "$CBIMG" restore -q "$f" "$B"    # a device needs --force
	if expect_exit 0 "$CBIMG" restore -q --force "$f" "$B"; then
		check_eq "restore of point $i onto $B" "$(sha256 "$B")" "${SHAS[$i]}"
		expect_exit 0 fsck.ext4 -n -f "$B"
	fi
	if expect_exit 0 "$CBIMG" restore -q "$f" "$T/r$i.img"; then
		check_eq "restore of point $i to a file" "$(sha256 "$T/r$i.img")" "${SHAS[$i]}"
		expect_exit 0 fsck.ext4 -n -f "$T/r$i.img"
	fi
	rm -f "$T/r$i.img"
done

# -------------------------------------------------------------- --changed-only onto the newest state
f0=$(jqr '.[0].p')
if expect_exit 0 "$CBIMG" restore --json --force --changed-only "$f0" "$A"; then
	check_eq "--changed-only restore of point 0 onto the device holding state 2" "$(sha256 "$A")" "$SHA0"
	check_eq "--changed-only wrote some, but far from all, blocks" \
		"$(jout '(.blocks_written > 0) and (.blocks_written < .blocks_total / 4)')" true
fi
expect_exit 0 fsck.ext4 -n -f "$A"

# -------------------------------------------------------------- mounted target refused
# B holds state 2 now; mount it read-only (no writes, so its hash must stay).
shaB=$(sha256 "$B")
if do_mount "ro,noload" "$B" "$M"; then
	expect_exit nz "$CBIMG" restore -q --force "$f0" "$B"
	check_grep "refusal names the reason" "[Mm]ounted|[Bb]usy|in use"
	do_umount "$M"
	check_eq "mounted device left untouched" "$(sha256 "$B")" "$shaB"
else
	fail "could not mount $B read-only"
fi

# -------------------------------------------------------------- target device too small
truncate -s $((SIZE / 2)) "$T/diskC.img"
if new_loop "$T/diskC.img"; then
	C=$LOOPDEV
	expect_exit 1 "$CBIMG" restore -q --force "$f0" "$C"
	check_eq "too small device left untouched (no data)" "$(tr -d '\0' <"$C" | head -c 1 | wc -c)" 0
else
	fail "losetup of a third loop device"
fi

# -------------------------------------------------------------- moved + renamed chain
D2=$T/moved
mkdir -p "$D2"
for i in 0 1 2; do
	mv "$(jq -r ".[$i].p" "$T/list-orig.json")" "$D2/renamed-$((7 * i + 3)).cbi"
	mv "$(jq -r ".[$i].ip" "$T/list-orig.json")" "$D2/other-name-$i-x.cbx"
done
expect_exit 0 "$CBIMG" verify "$D2"
list_json "$D2" || die "list --json of the moved chain"
check_eq "moved chain: same ids" "$(jqr '[.[].id] | join(",")')" "$(jq -r '[.[].id] | join(",")' "$T/list-orig.json")"
for i in 2 1; do
	f=$(jqr ".[$i].ip")
	expect_exit 0 "$CBIMG" restore -q --force "$f" "$B" &&
		check_eq "moved+renamed: restore of point $i onto $B" "$(sha256 "$B")" "${SHAS[$i]}"
done

# -------------------------------------------------------------- damage
fcbi=$(jqr '.[0].p')
sz=$(filesize "$fcbi")
flip_byte "$fcbi" $((sz / 2)) || fail "flip_byte"
expect_exit 3 "$CBIMG" verify "$D2" && check_grep "verify names a damaged block" "DAMAGED .*: block [0-9]+"
expect_exit 3 "$CBIMG" verify "$(jqr '.[2].p')"

finish
