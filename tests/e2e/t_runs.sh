#!/usr/bin/env bash
# The run-length index (format version 3, SPEC revision 2.6) through the CLI:
# a 512 MiB sparse file of 4 KiB blocks (131072 blocks) holding 3 MiB of data
# in three places, a full and an incremental; both indexes are version 3 and
# a few KiB (not 3 MiB); verify,
# restore of each point (byte for byte), --changed-only, info (and whether
# it says the index is one of runs, text and JSON); a source of
# fewer than 65536 blocks still gets a fixed index (version 1) that the
# committed vectors' older files sit beside; the older vectors (version 1,
# valid/chain1) still verify and restore with this build.
. "$(dirname "$0")/lib.sh"

SRC=$T/big.img
D=$T/dest
mkdir -p "$D"
truncate -s 512M "$SRC"
MiB=1048576
put() { head -c "$2" /dev/urandom | dd of="$SRC" bs=1M seek="$1" conv=notrunc status=none; }
put 0 $MiB
put 100 $MiB
dd if=/dev/zero of="$SRC" bs=1M seek=200 count=8 conv=notrunc status=none # written zeros
put 400 $MiB
truncate -s 512M "$SRC"
cp --sparse=always "$SRC" "$T/state0.img"
SHA0=$(sha256 "$SRC")

expect_exit 0 "$CBIMG" backup -q --block-size 4K --job r "$SRC" "$D" || die "full backup failed"
X0=$(ls "$D"/*_full0000_*.cbx)
check_eq "full: index version 3" "$(od -An -t u4 -j 8 -N 4 "$X0" | tr -d ' ')" 3
check "full: index of a 512 MiB sparse source under 64 KiB ($(filesize "$X0") bytes)" [ "$(filesize "$X0")" -lt 65536 ]

put 100 4096          # a changed block
put 300 $MiB          # data where a hole was: splits a run
dd if=/dev/zero of="$SRC" bs=1M seek=0 count=1 conv=notrunc status=none # data became zeros
truncate -s 512M "$SRC"
SHA1=$(sha256 "$SRC")
expect_exit 0 "$CBIMG" backup -q --job r "$SRC" "$D" || die "incremental failed"
X1=$(ls "$D"/*_incr0001_*.cbx)
check_eq "incremental: index version 3" "$(od -An -t u4 -j 8 -N 4 "$X1" | tr -d ' ')" 3
check "incremental: index under 64 KiB ($(filesize "$X1") bytes)" [ "$(filesize "$X1")" -lt 65536 ]

expect_exit 0 "$CBIMG" verify -q --no-state "$D"
expect_exit 0 "$CBIMG" restore -q "$X0" "$T/r0.img"
check_eq "restore of the full" "$(sha256 "$T/r0.img")" "$SHA0"
expect_exit 0 "$CBIMG" restore -q "$X1" "$T/r1.img"
check_eq "restore of the incremental" "$(sha256 "$T/r1.img")" "$SHA1"
check "the restored file is sparse" [ "$(du -k "$T/r1.img" | cut -f1)" -lt 65536 ]
expect_exit 0 "$CBIMG" restore -q --force --changed-only "$X0" "$T/r1.img"
check_eq "changed-only restore of the full onto the incremental's state" "$(sha256 "$T/r1.img")" "$SHA0"
rm -f "$T/r0.img" "$T/r1.img"
expect_exit 0 "$CBIMG" info "$X1"
check_grep "info: zero blocks counted as blocks, not items" "zero_blocks: *130304"
check_grep "info: the index is one of runs" "^index: +runs \\(version 3"
expect_exit 0 "$CBIMG" info --json "$X1"
check_eq "info --json: index_version 3" "$(jq -r .index_version "$T/stdout")" 3
check_eq "info --json: index_runs true" "$(jq -r .index_runs "$T/stdout")" true
I1=$(ls "$D"/*_incr0001_*.cbi)
expect_exit 0 "$CBIMG" info "$I1"
check_grep "info of the image: the index's kind, from the index beside it" "^index: +runs \\(version 3"
expect_exit 0 "$CBIMG" list --json "$D"
check_eq "list --json: no index_version (the catalog does not keep it)" "$(jq -r '.[0] | has("index_version")' "$T/stdout")" false

# a damaged run: verify reports it (exit 3)
cp -a "$D" "$T/bad"
XB=$(ls "$T/bad"/*_incr0001_*.cbx)
# item 0 is the run of blocks 0..25599 (zeros, then holes): its count changed
flip_byte "$XB" $((512 + 8)) 1
expect_exit 3 "$CBIMG" verify -q --no-state "$T/bad"
check_grep "verify names the damaged index" "unable to read the index entry"

# below 65536 blocks: fixed entries, version 1, as older readers read them
truncate -s 64M "$T/small.img"
head -c $MiB /dev/urandom | dd of="$T/small.img" conv=notrunc status=none
mkdir -p "$T/ds"
expect_exit 0 "$CBIMG" backup -q --job s "$T/small.img" "$T/ds"
XS=$(ls "$T/ds"/*_full0000_*.cbx)
check_eq "small source: index version 1" "$(od -An -t u4 -j 8 -N 4 "$XS" | tr -d ' ')" 1
check_eq "small source: 640 + 24 x 256 bytes" "$(filesize "$XS")" $((640 + 24 * 256))
expect_exit 0 "$CBIMG" info "$XS"
check_grep "info: a fixed index" "^index: +fixed \\(version 1: one entry per block\\)"
expect_exit 0 "$CBIMG" info --json "$XS"
check_eq "info --json: index_runs false" "$(jq -r '"\(.index_version) \(.index_runs)"' "$T/stdout")" "1 false"
mv "$XS" "$T/xs.moved"
expect_exit 0 "$CBIMG" info "$(ls "$T/ds"/*_full0000_*.cbi)"
check_grep "info of an image without its index: the index's kind unknown" "^index: +- \\(no index file read\\)"
expect_exit 0 "$CBIMG" info --json "$(ls "$T/ds"/*_full0000_*.cbi)"
check_eq "info --json of that image: no index_version" "$(jq -r 'has("index_version")' "$T/stdout")" false
mv "$T/xs.moved" "$XS"

# older files stay readable: the committed version-1 vectors
V=$(dirname "$0")/../../format/vectors/valid/chain1
if [ -d "$V" ]; then
	expect_exit 0 "$CBIMG" verify -q --no-state "$V"
	while read -r seq want; do
		x=$(ls "$V"/*_"$([ "$seq" = 0 ] && echo full || echo incr)$(printf %04d "$seq")"_*.cbx)
		check_eq "version-1 vector seq $seq: index version 1" "$(od -An -t u4 -j 8 -N 4 "$x" | tr -d ' ')" 1
		expect_exit 0 "$CBIMG" restore -q "$x" "$T/v.img"
		check_eq "version-1 vector seq $seq restores" "$(sha256sum <"$T/v.img" | cut -d' ' -f1)" "$want"
		rm -f "$T/v.img"
	done <"$V/expected.sha256"
else
	skip_part "format/vectors/valid/chain1 not found"
fi
# an index of runs with a bad-range map (revisions 2.6 and 2.5 together):
# the map follows the items and is found from the file's end. The bad-read
# shim is preloaded, so ASan's link-order check is off (as in t_rescue)
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}verify_asan_link_order=0"
if command -v cc >/dev/null 2>&1 &&
	cc -O2 -shared -fPIC -o "$T/badread.so" "$(dirname "$0")/badread_shim.c" -ldl 2>/dev/null; then
	truncate -s 300M "$T/bad.img"
	head -c 8M /dev/urandom | dd of="$T/bad.img" bs=1M seek=100 conv=notrunc status=none
	mkdir -p "$T/db"
	BADR=104858112:512,104861696:4096
	expect_exit 5 env CBIMG_BAD_FILE="$T/bad.img" CBIMG_BAD_RANGES=$BADR LD_PRELOAD="$T/badread.so" \
		"$CBIMG" backup -q --no-state --block-size 4K --rescue "$T/bad.img" "$T/db"
	XB=$(ls "$T/db"/*_full0000_*.cbx)
	check_eq "rescue on a large source: index version 3" "$(od -An -t u4 -j 8 -N 4 "$XB" | tr -d ' ')" 3
	expect_exit 5 "$CBIMG" restore -q --allow-bad "$XB" "$T/b.img"
	cp "$T/bad.img" "$T/bexp.img"
	dd if=/dev/zero of="$T/bexp.img" bs=1 seek=104858112 count=512 conv=notrunc status=none
	dd if=/dev/zero of="$T/bexp.img" bs=1 seek=104861696 count=4096 conv=notrunc status=none
	check_eq "runs + bad-range map: restore --allow-bad gives the source with zeros in the bad ranges" \
		"$(sha256sum <"$T/b.img" | cut -d' ' -f1)" "$(sha256sum <"$T/bexp.img" | cut -d' ' -f1)"
	expect_exit 0 "$CBIMG" verify -q --no-state "$T/db"
	rm -f "$T/b.img" "$T/bexp.img" "$T/bad.img"
else
	skip_part "no cc: the bad-read shim cannot be built"
fi
# the free-space estimate of a sparse image file counts its allocated bytes,
# not the apparent size past its file system's end (1 TiB file, 4 GiB ext4,
# DEST a 64 MiB tmpfs: the old estimate asked for 274 GB)
if is_root && command -v mkfs.ext4 >/dev/null 2>&1 && mkdir -p "$T/small" && mount -t tmpfs -o size=64M tmpfs "$T/small"; then
	truncate -s 1T "$T/tera.img"
	mkfs.ext4 -q -F "$T/tera.img" 4G
	expect_exit 0 "$CBIMG" backup -q --no-state "$T/tera.img" "$T/small"
	umount "$T/small"
	rm -f "$T/tera.img"
else
	skip_part "needs root, mkfs.ext4 and a tmpfs for the free-space estimate of a sparse file"
fi
finish
