#!/usr/bin/env bash
# Full + two incrementals of a 32 MiB raw image file with random data, written
# zeros and sparse holes; restore of every point; list linkage; moved and
# renamed chain files; damage detection; size change; --force; --changed-only;
# usage errors.
. "$(dirname "$0")/lib.sh"
need_jq

KiB=1024
BS=65536
SRC=$T/src.img
D=$T/dest
mkdir -p "$D"

# -------------------------------------------------------------- state 0
# KiB ranges: 0-8192 random, 8192-12288 written zeros, 12288-20480 random,
# 20480-28672 hole, 28672-31744 random, 31744-32768 hole.
truncate -s 32M "$SRC"
fill_random "$SRC" 0 8192
fill_zero "$SRC" 8192 4096
fill_random "$SRC" 12288 8192
fill_random "$SRC" 28672 3072
cp --sparse=always "$SRC" "$T/state0.img"
SHA0=$(sha256 "$SRC")

expect_exit 0 "$CBIMG" backup -q --job t1 --block-size 64K "$SRC" "$D" || die "full backup failed; nothing else to test"
check_eq "no temporary file left after backup" "$(find "$D" -name '*.tmp' | wc -l)" 0

# -------------------------------------------------------------- state 1
# Changed 64 KiB blocks: 1, 15, 16, 17, 128, 192, 330, 511 (8 blocks).
fill_random "$SRC" 100 4                 # block 1
fill_random "$SRC" 1000 128              # blocks 15..17
fill_random "$SRC" 8200 4                # block 128 (was written zeros)
fill_zero "$SRC" 12288 64                # block 192 (was random, now zeros)
fill_random "$SRC" 21120 64              # block 330 (was a hole)
fill_random "$SRC" 32767 1               # block 511 (last KiB; was a hole)
# block 50 rewritten with the same bytes: not a change.
dd if="$T/state0.img" of="$SRC" bs=64K skip=50 seek=50 count=1 conv=notrunc status=none
cp --sparse=always "$SRC" "$T/state1.img"
SHA1=$(sha256 "$SRC")
[ "$SHA1" != "$SHA0" ] || die "test setup: state 1 equals state 0"

expect_exit 0 "$CBIMG" backup --json --job t1 "$SRC" "$D" || die "first incremental failed"
check_eq "backup --json: incremental with 8 changed blocks" \
	"$(jout '"\(.type) \(.blocks_changed) \(.blocks_total) \(.point.seq)"')" "incremental 8 512 1"

# -------------------------------------------------------------- state 2
# Changed blocks: 0, 3, 192 (back to its state-0 content), 400 (4 blocks).
fill_random "$SRC" 0 4                   # block 0
if ! fallocate -p -o $((3 * BS)) -l "$BS" "$SRC" 2>/dev/null; then
	fill_zero "$SRC" 192 64          # block 3
fi
dd if="$T/state0.img" of="$SRC" bs=64K skip=192 seek=192 count=1 conv=notrunc status=none
fill_random "$SRC" $((400 * 64)) 64      # block 400 (was a hole)
cp --sparse=always "$SRC" "$T/state2.img"
SHA2=$(sha256 "$SRC")

expect_exit 0 "$CBIMG" backup -q --job t1 "$SRC" "$D" || die "second incremental failed"
SHAS=("$SHA0" "$SHA1" "$SHA2")

# -------------------------------------------------------------- list --json
if list_json "$D"; then
	pass "list --json prints a JSON array"
else
	fail "list --json failed or printed no JSON array"; cat "$T/list.err" "$T/list.raw" 2>/dev/null | head
	finish
fi
check_eq "3 points listed" "$(jqr 'length')" 3
check_eq "types" "$(jqr '[.[].type] | join(",")')" "full,incremental,incremental"
check_eq "seqs" "$(jqr '[.[].seq] | map(tostring) | join(",")')" "0,1,2"
check_eq "full has parent null" "$(jqr '.[0].parent')" null
check_eq "point 1 parent is point 0" "$(jqr '.[1].parent == .[0].id')" true
check_eq "point 2 parent is point 1" "$(jqr '.[2].parent == .[1].id')" true
check_eq "one chain" "$(jqr '[.[].chain] | unique | length')" 1
check_eq "ids distinct" "$(jqr '[.[].id] | unique | length')" 3
check_eq "job" "$(jqr '[.[].job] | unique | join(",")')" t1
check_eq "size" "$(jqr '[.[].size] | unique | map(tostring) | join(",")')" $((32 * 1024 * 1024))
check_eq "block size 64 KiB, kept by the incrementals" "$(jqr '[.[].block_size] | unique | map(tostring) | join(",")')" "$BS"
check_eq "all have image" "$(jqr 'all(.[]; .has_image == true)')" true
check_eq "full: changed_blocks = non-zero blocks" "$(jqr '.[0].changed_blocks')" 304
check_eq "full: zero_blocks" "$(jqr '.[0].zero_blocks')" 208
check_eq "incremental 1: changed_blocks" "$(jqr '.[1].changed_blocks')" 8
check_eq "incremental 2: changed_blocks" "$(jqr '.[2].changed_blocks')" 4
check_eq "incrementals store at most their changed blocks" \
	"$(jqr '(.[1].stored_blocks <= 8) and (.[2].stored_blocks <= 4) and (.[1].stored_blocks > 0)')" true
check_eq "incremental images are small" \
	"$(jqr '(.[1].stored_bytes < 2*1048576) and (.[2].stored_bytes < 2*1048576) and (.[0].stored_bytes > 16*1048576)')" true
check_eq "files named .cbi/.cbx" \
	"$(jqr 'all(.[]; (.file | endswith(".cbi")) and (.index_file | endswith(".cbx")))')" true
check_eq "files exist" "$(jqr '.[].p, .[].ip' | while read -r f; do [ -f "$f" ] || echo missing; done)" ""
cp "$T/list.json" "$T/list-orig.json"
FULL_CBI=$(jqr '.[0].p')
INC2_CBI=$(jqr '.[2].p')
INC2_CBX=$(jqr '.[2].ip')
INC1_CBX=$(jqr '.[1].ip')

# -------------------------------------------------------------- info
if run "$CBIMG" info --json "$INC2_CBX" && printf '%s' "$OUT" | jq -e . >/dev/null 2>&1; then
	check_eq "info --json: seq/type of newest" \
		"$(printf '%s' "$OUT" | jq -r '"\(.seq) \(.type)"')" "2 incremental"
else
	fail "info --json $INC2_CBX (exit $RC)"; printf '%s\n' "$OUT" | head -5
fi
expect_exit 0 "$CBIMG" info "$FULL_CBI"

# -------------------------------------------------------------- verify + restore
expect_exit 0 "$CBIMG" verify "$D"
expect_exit 0 "$CBIMG" verify "$INC2_CBI"

for i in 0 1 2; do
	f=$(jqr ".[$i].p")
	if expect_exit 0 "$CBIMG" restore -q "$f" "$T/r$i.img"; then
		check_eq "restore of point $i reproduces state $i" "$(sha256 "$T/r$i.img")" "${SHAS[$i]}"
	fi
done
expect_exit 0 "$CBIMG" restore -q "$INC1_CBX" "$T/r1x.img" &&
	check_eq "restore from the index file of point 1" "$(sha256 "$T/r1x.img")" "$SHA1"
if [ -f "$T/r0.img" ]; then
	alloc=$(($(stat -c %b "$T/r0.img") * $(stat -c %B "$T/r0.img")))
	if [ "$alloc" -lt $((24 * 1024 * 1024)) ]; then
		pass "restored file is sparse ($((alloc / KiB)) KiB allocated of 32768)"
	else
		fail "restored file is not sparse ($((alloc / KiB)) KiB allocated of 32768)"
	fi
fi

# -------------------------------------------------------------- --force, --changed-only
cp "$T/state2.img" "$T/existing.img"
expect_exit nz "$CBIMG" restore -q "$FULL_CBI" "$T/existing.img"
check_eq "existing file untouched without --force" "$(sha256 "$T/existing.img")" "$SHA2"
: >"$T/empty.img"
expect_exit 0 "$CBIMG" restore -q "$INC1_CBX" "$T/empty.img" &&
	check_eq "restore onto an existing empty file without --force" "$(sha256 "$T/empty.img")" "$SHA1"
# State 2 differs from state 0 in blocks 0, 1, 3, 15, 16, 17, 128, 330, 400, 511.
if expect_exit 0 "$CBIMG" restore --json --force --changed-only "$FULL_CBI" "$T/existing.img"; then
	check_eq "--changed-only restore of point 0 onto state 2 gives state 0" "$(sha256 "$T/existing.img")" "$SHA0"
	check_eq "--changed-only wrote exactly the 10 differing blocks" \
		"$(jout '"\(.blocks_written) \(.blocks_total)"')" "10 512"
fi
cp "$T/state0.img" "$T/existing2.img"
expect_exit 0 "$CBIMG" restore -q --force --changed-only "$INC2_CBI" "$T/existing2.img" &&
	check_eq "--changed-only restore of point 2 onto state 0 gives state 2" "$(sha256 "$T/existing2.img")" "$SHA2"
cp "$T/state1.img" "$T/existing3.img"
expect_exit 0 "$CBIMG" restore -q --force "$FULL_CBI" "$T/existing3.img" &&
	check_eq "--force restore of point 0 onto state 1 gives state 0" "$(sha256 "$T/existing3.img")" "$SHA0"
# A target longer than the image: --force restore must give exactly the image
# content (file truncated), or at least the image's bytes at the start.
truncate -s 40M "$T/longer.img"
if expect_exit 0 "$CBIMG" restore -q --force "$FULL_CBI" "$T/longer.img"; then
	check_eq "restore onto a longer file: first 32 MiB equal state 0" \
		"$(head -c $((32 * 1024 * 1024)) "$T/longer.img" | sha256sum | cut -d' ' -f1)" "$SHA0"
fi
rm -f "$T"/existing*.img "$T/empty.img" "$T/longer.img" "$T/r1x.img"

# -------------------------------------------------------------- moved + renamed
D2=$T/moved
mkdir -p "$D2"
n=0
for i in 2 0 1; do
	mv "$(jq -r ".[$i].p" "$T/list-orig.json")" "$D2/image-$n-renamed.cbi"
	mv "$(jq -r ".[$i].ip" "$T/list-orig.json")" "$D2/zz$((9 - n))-index.cbx"
	n=$((n + 1))
done
check_eq "source directory empty after the move" "$(count_files "$D")" 0
expect_exit 0 "$CBIMG" verify "$D2"
if list_json "$D2"; then
	check_eq "moved chain: 3 points" "$(jqr 'length')" 3
	check_eq "moved chain: same ids" "$(jqr '[.[].id] | join(",")')" "$(jq -r '[.[].id] | join(",")' "$T/list-orig.json")"
	for i in 0 1 2; do
		f=$(jqr ".[$i].p")
		expect_exit 0 "$CBIMG" verify "$f"
		rm -f "$T/r$i.img"
		if expect_exit 0 "$CBIMG" restore -q "$f" "$T/r$i.img"; then
			check_eq "moved+renamed: restore of point $i" "$(sha256 "$T/r$i.img")" "${SHAS[$i]}"
		fi
		rm -f "$T/r$i.img"
	done
	cp "$T/list.json" "$T/list-moved.json"
else
	fail "list --json of the moved chain"
	finish
fi
MFULL_CBI=$(jq -r '.[0].p' "$T/list-moved.json")
MINC2_CBI=$(jq -r '.[2].p' "$T/list-moved.json")
MINC2_CBX=$(jq -r '.[2].ip' "$T/list-moved.json")

# -------------------------------------------------------------- damage: flipped byte
D3=$T/damaged
cp -a "$D2" "$D3"
fcbi=$D3/$(basename "$MFULL_CBI")
sz=$(filesize "$fcbi")
flip_byte "$fcbi" $((sz / 2)) || fail "flip_byte"
expect_exit 3 "$CBIMG" verify "$D3" &&
	check_grep "verify names the damaged block" "DAMAGED .*$(basename "$fcbi").*: block [0-9]+"
expect_exit 3 "$CBIMG" verify "$fcbi" && check_grep "verify FILE names a block" "block [0-9]+"
expect_exit 3 "$CBIMG" verify "$D3/$(basename "$MINC2_CBI")"
expect_exit 3 "$CBIMG" restore -q "$fcbi" "$T/rdamaged.img"
check_eq "the undamaged copy still verifies" "$("$CBIMG" verify "$D2" >/dev/null 2>&1 </dev/null; echo $?)" 0
rm -rf --one-file-system "$D3" "$T/rdamaged.img"

# -------------------------------------------------------------- damage: truncated index / image
D4=$T/truncidx
cp -a "$D2" "$D4"
x=$D4/$(basename "$MINC2_CBX")
truncate -s $(($(filesize "$x") - 100)) "$x"
expect_exit 3 "$CBIMG" verify "$x"
expect_exit 3 "$CBIMG" verify "$D4"
rm -rf --one-file-system "$D4"
D5=$T/truncimg
cp -a "$D2" "$D5"
x=$D5/$(basename "$MFULL_CBI")
truncate -s $(($(filesize "$x") / 2)) "$x"
expect_exit 3 "$CBIMG" verify "$D5"
expect_exit 3 "$CBIMG" verify "$D5/$(basename "$MINC2_CBX")"
# a restore that needs the truncated full's blocks: damage (3), named
expect_exit 3 "$CBIMG" restore -q "$D5/$(basename "$MINC2_CBX")" "$T/trunc-restore.img" &&
	check_grep "restore names the truncated image" "image file of point seq 0 is damaged"
check "nothing left of the failed restore" test ! -e "$T/trunc-restore.img"
rm -rf --one-file-system "$D5"

# -------------------------------------------------------------- size change
truncate -s 40M "$SRC"
fill_random "$SRC" 36000 100
SHA3=$(sha256 "$SRC")
expect_exit 1 "$CBIMG" backup -q --job t1 "$SRC" "$D2"
check_eq "refused backup wrote no file" "$(count_files "$D2")" 6
expect_exit 0 "$CBIMG" backup -q --job t1 --full "$SRC" "$D2"
if list_json "$D2"; then
	check_eq "after --full: 4 points" "$(jqr 'length')" 4
	newfull=$(jqr '[.[] | select(.size == 41943040)] | .[0]')
	check_eq "new point is a full of the new size" \
		"$(printf '%s' "$newfull" | jq -r '"\(.type) \(.seq) \(.parent)"')" "full 0 null"
	check_eq "new full starts a new chain" "$(jqr '[.[].chain] | unique | length')" 2
	f=$(printf '%s' "$newfull" | jq -r .p)
	expect_exit 0 "$CBIMG" restore -q "$f" "$T/r3.img" &&
		check_eq "restore of the new full" "$(sha256 "$T/r3.img")" "$SHA3"
	rm -f "$T/r3.img"
	newchain=$(printf '%s' "$newfull" | jq -r .chain)
	fill_random "$SRC" 0 64
	SHA4=$(sha256 "$SRC")
	expect_exit 0 "$CBIMG" backup -q --job t1 "$SRC" "$D2"
	list_json "$D2"
	inc=$(jqr "[.[] | select(.chain == \"$newchain\" and .seq == 1)] | .[0]")
	check_eq "next backup continues the new chain" "$(printf '%s' "$inc" | jq -r .type)" incremental
	f=$(printf '%s' "$inc" | jq -r .p)
	if [ -n "$f" ] && [ "$f" != null ]; then
		expect_exit 0 "$CBIMG" restore -q "$f" "$T/r4.img" &&
			check_eq "restore of the new chain's incremental" "$(sha256 "$T/r4.img")" "$SHA4"
	fi
	rm -f "$T/r4.img"
else
	fail "list --json after --full"
fi

# -------------------------------------------------------------- other block size, other job
head -c 3000000 /dev/urandom >"$T/small.img"
expect_exit 0 "$CBIMG" backup -q --job bs16 --block-size 16K "$T/small.img" "$D2"
if list_json "$D2"; then
	check_eq "--block-size 16K recorded" "$(jqr '[.[] | select(.job == "bs16")] | .[0].block_size')" 16384
	check_eq "--block-size 16K: block count of a 3000000-byte source" \
		"$(jqr '[.[] | select(.job == "bs16")] | .[0].changed_blocks')" 184
	f=$(jqr '[.[] | select(.job == "bs16")] | .[0].p')
	expect_exit 0 "$CBIMG" restore -q "$f" "$T/rsmall.img" &&
		check_eq "restore of a source whose size is not a multiple of the block size" \
			"$(sha256 "$T/rsmall.img")" "$(sha256 "$T/small.img")"
fi
expect_exit 0 "$CBIMG" verify "$D2"

# -------------------------------------------------------------- default block size
# The default is what `backup --help` announces, and is a power of two in 4K..4M.
def=$("$CBIMG" backup --help 2>&1 | sed -n 's/.*--block-size.*(default \([0-9]*\)\([KM]\)).*/\1 \2/p' | head -n 1)
case $def in
*K) defbytes=$((${def% K} * 1024)) ;;
*M) defbytes=$((${def% M} * 1024 * 1024)) ;;
*) defbytes= ;;
esac
expect_exit 0 "$CBIMG" backup -q --job defbs "$T/small.img" "$D2"
if [ -n "$defbytes" ] && list_json "$D2"; then
	check_eq "default block size is the one --help announces ($def)" \
		"$(jqr '[.[] | select(.job == "defbs")] | .[0].block_size')" "$defbytes"
	check "default block size is a power of two in 4K..4M" \
		[ $((defbytes & (defbytes - 1))) = 0 -a "$defbytes" -ge 4096 -a "$defbytes" -le 4194304 ]
else
	fail "default block size not found in 'cbimg backup --help' ($def)"
fi

# -------------------------------------------------------------- usage errors
expect_exit 2 "$CBIMG" backup --block-size 3K "$SRC" "$T/u1"
expect_exit 2 "$CBIMG" backup --block-size 64X "$SRC" "$T/u1"
expect_exit 2 "$CBIMG" backup "$SRC"
expect_exit 2 "$CBIMG" backup
expect_exit 2 "$CBIMG" restore "$MINC2_CBI"
expect_exit 2 "$CBIMG" restore
expect_exit 2 "$CBIMG" verify
expect_exit 2 "$CBIMG" list
expect_exit 2 "$CBIMG" info
expect_exit 2 "$CBIMG" backup --no-such-option "$SRC" "$T/u1"
expect_exit 2 "$CBIMG" no-such-command
expect_exit 2 "$CBIMG"
check_eq "usage errors wrote nothing" "$([ -e "$T/u1" ] && count_files "$T/u1" || echo 0)" 0
expect_exit 1 "$CBIMG" restore -q "$T/no-such-point.cbi" "$T/x.img"
expect_exit 1 "$CBIMG" backup -q "$T/no-such-source.img" "$T/u2"

finish
