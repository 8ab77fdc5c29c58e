#!/usr/bin/env bash
# format/vectors/make-vectors.sh - (re)generate the test vectors of format/SPEC.md.
#
#   CBIMG=/abs/path/build/cbimg bash format/vectors/make-vectors.sh     (or: make vectors)
#   CBIMG=/abs/path/build/cbimg bash format/vectors/make-vectors.sh --check
#
# --check only runs the checks below on the vectors already present, without
# regenerating them (what a test suite wants).
#
# Writes format/vectors/valid/* and format/vectors/damaged/*, then checks them
# with the tool itself: every valid vector must verify (exit 0) and restore to
# the SHA-256 listed in its expected.sha256; every damaged vector must fail
# verify with exit status 3 and report each line of its 'expect' file.
#
# The sources are deterministic (text from awk, zeros, and AES-128-CTR key
# streams from openssl), so the restored bytes are the same on every run. The
# point ids, chain ids, creation times and therefore the file names and
# digests differ on every run: the vectors are regenerated as a whole.
#
# Needs bash, coreutils (dd, od, truncate, sha256sum), awk and openssl.
set -euo pipefail
export LC_ALL=C TZ=UTC

: "${CBIMG:?set CBIMG to the cbimg binary, e.g. CBIMG=\$PWD/build/cbimg}"
case $CBIMG in /*) ;; *) CBIMG=$PWD/$CBIMG ;; esac
[ -x "$CBIMG" ] || { echo "make-vectors: '$CBIMG' is not executable" >&2; exit 1; }
for t in awk openssl od dd truncate sha256sum; do
	command -v "$t" >/dev/null || { echo "make-vectors: '$t' is required" >&2; exit 1; }
done

HERE=$(cd "$(dirname "$0")" && pwd)
W=$(mktemp -d /tmp/cbimg-vectors.XXXXXX)
trap 'rm -rf "$W"' EXIT

BS=4096
# Options of every backup: fixed identity so the headers and names are stable
# apart from ids and times.
BK=(backup -q --block-size 4K --host vectorhost --job vec --source-id vector-source --threads 2)

die() { echo "make-vectors: $*" >&2; exit 1; }

# ------------------------------------------------------------ source helpers
# All helpers write into $W/disk.img, in units of 4 KiB blocks.

# text FIRST COUNT TAG: COUNT blocks of lines "cbimg TAG blk NNNNNN ln NNN",
# each line 32 bytes, 128 lines a block. Compresses well; differs per block.
text() {
	awk -v first="$1" -v count="$2" -v tag="$3" 'BEGIN {
		for (b = first; b < first + count; b++)
			for (l = 0; l < 128; l++)
				printf("%-31.31s\n", sprintf("cbimg %s blk %06d ln %03d", tag, b, l))
	}' | dd of="$W/disk.img" bs=$BS seek="$1" conv=notrunc status=none
}

# noise FIRST COUNT KEY: COUNT blocks of the AES-128-CTR key stream of key
# KEY (one byte, hex) with a zero IV: incompressible, but reproducible.
noise() {
	head -c $(($2 * BS)) /dev/zero |
		openssl enc -aes-128-ctr -nosalt -K "$(printf '%02x%030d' "0x$3" 0)" -iv "$(printf '%032d' 0)" |
		dd of="$W/disk.img" bs=$BS seek="$1" conv=notrunc status=none
}

# zero FIRST COUNT: COUNT blocks of written zeros.
zero() {
	dd if=/dev/zero of="$W/disk.img" bs=$BS seek="$1" count="$2" conv=notrunc status=none
}

# backup DEST: one backup of $W/disk.img into DEST; records the source's
# SHA-256 under the new seq in DEST/expected.sha256.
backup() {
	local dest=$1 seq
	seq=$(($(wc -l <"$dest/expected.sha256")))
	(cd "$W" && "$CBIMG" "${BK[@]}" disk.img "$dest") || die "backup into $dest failed"
	echo "$seq $(sha256sum <"$W/disk.img" | cut -d' ' -f1)" >>"$dest/expected.sha256"
}

# ------------------------------------------------------------- file helpers
u64() { od -An -t u8 --endian=little -j "$2" -N 8 "$1" | tr -d ' '; }
u32() { od -An -t u4 --endian=little -j "$2" -N 4 "$1" | tr -d ' '; }
fsize() { stat -c %s "$1"; }

# flip FILE OFFSET [MASK]: XOR one byte (default mask 0xff).
flip() {
	local f=$1 off=$2 mask=${3:-0xff} b
	b=$(od -An -t u1 -j "$off" -N 1 "$f" | tr -d ' ')
	[ -n "$b" ] || die "flip: offset $off beyond the end of $f"
	printf '%b' "\\0$(printf '%03o' $((b ^ mask)))" | dd of="$f" bs=1 seek="$off" conv=notrunc status=none
}

# point DIR KIND SEQ EXT: the file of the point with that seq (names are
# informational, but the tool's naming scheme makes them easy to find).
point() {
	local f
	f=$(printf '%s/*_%s%04d_*.%s' "$1" "$2" "$3" "$4")
	# shellcheck disable=SC2086
	set -- $f
	if [ $# != 1 ] || [ ! -f "$1" ]; then die "expected exactly one file matching $f"; fi
	echo "$1"
}

V=$HERE/valid
D=$HERE/damaged
CHECK_ONLY=0
case ${1:-} in
--check) CHECK_ONLY=1 ;;
--merged) CHECK_ONLY=2 ;;
--spec24) CHECK_ONLY=3 ;;
--rescue) CHECK_ONLY=4 ;;
--runs) CHECK_ONLY=5 ;;
"") ;;
*) die "usage: CBIMG=... make-vectors.sh [--check | --merged | --spec24 | --rescue | --runs]" ;;
esac

generate() {
generate_base
generate_merged
generate_spec24
generate_rescue
generate_runs
}

generate_base() {
# ============================================================ valid/chain1
# 1 MiB, 256 blocks of 4 KiB; seq 0 full, seq 1 and 2 incremental.
rm -rf "$V/chain1" "$V/tail"
for c in "$D"/*/; do [ -d "$c" ] && rm -rf "$c"; done
mkdir -p "$V/chain1" "$V/tail" "$D"

C1=$V/chain1
: >"$C1/expected.sha256"
rm -f "$W/disk.img"
truncate -s 1M "$W/disk.img"   # blocks 64..127 stay a hole: zero, never read
text 0 64 s0
noise 128 16 01               # incompressible: stored raw
text 144 112 s0
zero 200 1                    # written zeros: a zero block like the hole
backup "$C1"                  # seq 0: full

text 5 2 s1                   # changed, compressible
zero 10 1                     # changed to zero: recorded, not stored
text 70 1 s1                  # was zero, now data
noise 130 1 02                # changed, incompressible
text 255 1 s1                 # the last block
backup "$C1"                  # seq 1

text 5 1 s0                   # back to its seq-0 bytes: still a change from seq 1
text 10 1 s2
zero 131 1
noise 140 2 03
text 200 1 s2
backup "$C1"                  # seq 2

# ============================================================== valid/tail
# 3 blocks and 100 bytes: the last block is 100 bytes long. Also holds a
# leftover temporary file, which every reader must ignore.
T1=$V/tail
: >"$T1/expected.sha256"
rm -f "$W/disk.img"
text 0 3 t0
head -c 100 /dev/zero | tr '\0' 'x' >>"$W/disk.img"
backup "$T1"                  # seq 0
printf 'cbimg short last block\n' | dd of="$W/disk.img" bs=1 seek=$((3 * BS + 50)) conv=notrunc status=none
backup "$T1"                  # seq 1: only block 3 changed
# A crashed run: half an image under its temporary name .NAME.PID.tmp.
mkdir "$W/scratch"
text 1 1 t2
(cd "$W" && "$CBIMG" "${BK[@]}" disk.img scratch) || die "scratch backup failed"
s=$(point "$W/scratch" full 0 cbi)
head -c $(($(fsize "$s") / 2)) "$s" >"$T1/.$(basename "$s").4242.tmp"
rm -rf "$W/scratch"
# The backups' lock files (.cbimg.lock, .cbimg-<hex>.lock) are not part of the vectors.
rm -f "$C1"/.cbimg-*.lock "$T1"/.cbimg-*.lock "$C1"/.cbimg.lock "$T1"/.cbimg.lock

# ========================================================== damaged/<case>
# Each case is a copy of valid/chain1 (without expected.sha256) with one
# deliberate defect, and a file 'expect' listing text verify must print.
mkcase() {
	local c=$D/$1
	mkdir -p "$c"
	cp "$C1"/*.cbi "$C1"/*.cbx "$c/"
	echo "$c"
}

# record-payload: one byte of a zstd-compressed record payload in the full.
c=$(mkcase record-payload)
f=$(point "$c" full 0 cbi)
sz=$(fsize "$f")
tab=$(u64 "$f" $((sz - 120)))
nrec=$(u64 "$f" $((sz - 112)))
blk=
for ((k = 0; k < nrec; k++)); do
	e=$((tab + 24 * k))
	if [ "$(u32 "$f" $((e + 20)))" = 1 ] && [ "$(u32 "$f" $((e + 16)))" -ge 64 ]; then
		blk=$(u64 "$f" "$e")
		off=$(u64 "$f" $((e + 8)))
		len=$(u32 "$f" $((e + 16)))
		break
	fi
done
[ -n "$blk" ] || die "no compressed record found in $f"
flip "$f" $((off + 40 + len / 2))
printf '%s\n' "SHA-256 digest mismatch" "block $blk: " >"$c/expect"

# header-checksum: a bit of created_ns in the header of the seq-1 image.
c=$(mkcase header-checksum)
flip "$(point "$c" incr 1 cbi)" 137 0x01
printf '%s\n' "damaged header" "the image file of this point is missing" >"$c/expect"

# truncated-image: the last 100 bytes of the seq-2 image cut off.
c=$(mkcase truncated-image)
f=$(point "$c" incr 2 cbi)
truncate -s $(($(fsize "$f") - 100)) "$f"
printf '%s\n' "no trailer: the file is unfinished or truncated" \
	"the image file of this point is missing" >"$c/expect"

# truncated-index: the last 100 bytes of the seq-1 index cut off.
c=$(mkcase truncated-index)
f=$(point "$c" incr 1 cbx)
truncate -s $(($(fsize "$f") - 100)) "$f"
printf '%s\n' "no trailer: the file is unfinished or truncated" \
	"image file without a matching index file" "(seq 1)" "not found: the chain is incomplete" >"$c/expect"

# missing-trailer: the full's image cut at half its size.
c=$(mkcase missing-trailer)
f=$(point "$c" full 0 cbi)
truncate -s $(($(fsize "$f") / 2)) "$f"
printf '%s\n' "no trailer: the file is unfinished or truncated" \
	"the image file of this point is missing" >"$c/expect"

# index-entry: first hash byte of the entry of block 10 in the seq-2 index
# (a block seq 2 stored).
c=$(mkcase index-entry)
flip "$(point "$c" incr 2 cbx)" $((512 + 24 * 10))
printf '%s\n' "SHA-256 digest mismatch" "block 10: block does not match the index" >"$c/expect"

# table-entry: low byte of the record offset of block-table entry 3 of the full.
c=$(mkcase table-entry)
f=$(point "$c" full 0 cbi)
sz=$(fsize "$f")
tab=$(u64 "$f" $((sz - 120)))
[ "$(u64 "$f" $((tab + 24 * 3)))" = 3 ] || die "table entry 3 of $f is not block 3"
flip "$f" $((tab + 24 * 3 + 8)) 0x01
printf '%s\n' "SHA-256 digest mismatch" "block 3: record header does not match the block table" >"$c/expect"

# missing-parent: the two incrementals without the full.
c=$(mkcase missing-parent)
rm -f "$(point "$c" full 0 cbi)" "$(point "$c" full 0 cbx)"
printf '%s\n' "(seq 0)" "not found: the chain is incomplete" >"$c/expect"

# orphan-image: the seq-2 index is gone (as after a crash between the two
# renames of a backup): its image belongs to no point.
c=$(mkcase orphan-image)
rm -f "$(point "$c" incr 2 cbx)"
printf '%s\n' "image file without a matching index file" >"$c/expect"

# future-version: both files of seq 2 claim format version 5 (a version this reader does not know).
c=$(mkcase future-version)
flip "$(point "$c" incr 2 cbi)" 8 0x04
flip "$(point "$c" incr 2 cbx)" 8 0x04
printf '%s\n' "not a cbimg file or unsupported version" >"$c/expect"

}   # generate_base

# ====================================================== merged (rev. 2.3)
# Made with 'cbimg prune' at fixed times (tests/e2e/clock_shim.c makes
# CLOCK_REALTIME read $CBIMG_TEST_TIME), so that day-based keep rules pick
# the same points on every run.
#
# valid/merged: seq 0 (full) on day 1, seq 1..3 on day 2; 'prune
# --keep-daily 2' keeps seq 0 and seq 3 and folds seq 1 and 2 into a merged
# image of seq 3 (first 1, parent seq 0): a chain with a seq gap.
#
# encrypted/merged: an encrypted chain of three points, passphrase in the
# file 'passphrase'; 'prune --keep-last 1' makes seq 2 a synthetic full
# (first 0, no parent) whose records from seq 0 and 1 are re-sealed under
# seq 2's key.
generate_merged() {
command -v cc >/dev/null || die "'cc' is required for the merged vectors (clock shim)"
cc -O2 -shared -fPIC -o "$W/clock_shim.so" "$HERE/../../tests/e2e/clock_shim.c" -ldl ||
	die "cannot build tests/e2e/clock_shim.c"
local M=$V/merged X=$HERE/encrypted/merged t
rm -rf "$M" "$X"
mkdir -p "$M" "$X"
export CBIMG_STATE_DIR=$W/state
t=1795322897                  # 2026-11-22T04:48:17Z
attime() { CBIMG_TEST_TIME=$1 LD_PRELOAD=$W/clock_shim.so "${@:2}"; }

: >"$M/expected.sha256"
rm -f "$W/disk.img"
truncate -s 1M "$W/disk.img"
text 0 64 m0
noise 128 8 04
text 160 32 m0
attime $t backup "$M"                               # seq 0, day 1
text 3 2 m1
noise 129 1 05
attime $((t + 86400)) backup "$M"                   # seq 1, day 2
text 4 2 m2                                     # block 4 again: seq 1's copy is replaced
zero 161 1
attime $((t + 86400 + 3600)) backup "$M"            # seq 2
text 20 1 m3
noise 130 2 06
attime $((t + 86400 + 7200)) backup "$M"            # seq 3
attime $((t + 86400 + 7300)) "$CBIMG" prune --no-state --keep-daily 2 "$M" >/dev/null || die "prune of $M failed"
sed -i '/^[12] /d' "$M/expected.sha256"

: >"$X/expected.sha256"
printf 'vector-passphrase\n' >"$X/passphrase"
rm -f "$W/disk.img"
truncate -s 512K "$W/disk.img"
text 0 32 e0
noise 64 8 07
BK+=(--encrypt --scrypt 12:8:1 --password-file "$X/passphrase")
attime $t backup "$X"                               # seq 0
text 2 2 e1
noise 65 1 08
attime $((t + 3600)) backup "$X"                    # seq 1
text 3 1 e2
zero 66 1
attime $((t + 7200)) backup "$X"                    # seq 2
unset 'BK[-1]' 'BK[-2]' 'BK[-3]' 'BK[-4]' 'BK[-5]'
attime $((t + 7300)) "$CBIMG" prune --no-state --password-file "$X/passphrase" --keep-last 1 "$X" >/dev/null ||
	die "prune of $X failed"
sed -i '/^[01] /d' "$X/expected.sha256"
rm -f "$M"/.cbimg*.lock "$X"/.cbimg*.lock "$M"/cbimg-catalog* "$X"/cbimg-catalog*
unset CBIMG_STATE_DIR
}   # generate_merged

# ================================================ revision 2.4 (issue 17)
# Cases for the rules revision 2.4 made exact, made from the vectors above
# (valid/tail, small, and encrypted/merged), so that they can be added
# without regenerating the others (--spec24). Each has an 'expect' file; a
# case whose verify must not exit 3 has an 'exit' file with the status, and
# an encrypted one its 'passphrase'.
#
# setdigest FILE: recompute the file digest (SHA-256 of all but the last 32
# bytes) of a plain file, so that the defect is the only one.
setdigest() {
	local f=$1 h
	h=$(head -c -32 "$f" | sha256sum | cut -c1-64)
	printf "$(printf '%s' "$h" | sed 's/../\\x&/g')" |
		dd of="$f" bs=1 seek=$(($(fsize "$f") - 32)) conv=notrunc status=none
}

generate_spec24() {
command -v cc >/dev/null || die "'cc' is required for the revision-2.4 vectors (crypto_helper)"
cc -O2 -o "$W/crypto_helper" "$HERE/../../tests/e2e/crypto_helper.c" -lxxhash ||
	die "cannot build tests/e2e/crypto_helper.c (needs libxxhash-dev)"
local T1=$V/tail X=$HERE/encrypted/merged c f tab
rm -rf "$D/duplicate-image" "$D/image-header-chain" "$D/unsorted-table" "$D/keyfile-reserved"
mk24() {
	mkdir -p "$D/$1"
	cp "$T1"/*.cbi "$T1"/*.cbx "$D/$1/"
	echo "$D/$1"
}

# duplicate-image: a byte-identical second copy of seq 1's image under
# another name: a duplicate (a note, a warning), not an orphan; verify exits 5.
c=$(mk24 duplicate-image)
f=$(point "$c" incr 1 cbi)
cp "$f" "$c/zz-copy-of-$(basename "$f")"
echo 5 >"$c/exit"
printf '%s\n' "a duplicate of '" "(a second copy of point seq 1's image file; not used)" >"$c/expect"

# image-header-chain: seq 1's image says seq 3 (header checksum and file
# digest recomputed: every other check passes), under seq 1's index.
c=$(mk24 image-header-chain)
f=$(point "$c" incr 1 cbi)
printf '\003' | dd of="$f" bs=1 seek=128 conv=notrunc status=none
"$W/crypto_helper" hdrsum "$f" 504 || die "hdrsum $f"
setdigest "$f"
printf '%s\n' "header does not match its index file" "seq differs (I8)" >"$c/expect"

# unsorted-table: table entries 1 and 2 of the full's image swapped (digest
# recomputed): every entry still names its record, but the order is broken.
c=$(mk24 unsorted-table)
f=$(point "$c" full 0 cbi)
tab=$(u64 "$f" $(($(fsize "$f") - 120)))
[ "$(u64 "$f" "$tab")" = 0 ] && [ "$(u64 "$f" $((tab + 24)))" = 1 ] && [ "$(u64 "$f" $((tab + 48)))" = 2 ] ||
	die "the table of $f does not start with blocks 0, 1, 2"
dd if="$f" of="$W/e1" bs=1 skip=$((tab + 24)) count=24 status=none
dd if="$f" of="$W/e2" bs=1 skip=$((tab + 48)) count=24 status=none
dd if="$W/e2" of="$f" bs=1 seek=$((tab + 24)) conv=notrunc status=none
dd if="$W/e1" of="$f" bs=1 seek=$((tab + 48)) conv=notrunc status=none
setdigest "$f"
printf '%s\n' "block table out of order" >"$c/expect"

# keyfile-reserved: the encrypted chain with byte 200 of its key file (in
# the reserved range 160 ... 247) set, checksum recomputed: damaged (K6),
# with the real reason, not "checksum".
c=$D/keyfile-reserved
mkdir -p "$c"
cp "$X"/*.cbi "$X"/*.cbx "$X"/*.cbk "$X/passphrase" "$c/"
f=$(ls "$c"/*.cbk)
printf '\001' | dd of="$f" bs=1 seek=200 conv=notrunc status=none
"$W/crypto_helper" hdrsum "$f" 248 || die "hdrsum $f"
printf '%s\n' "damaged key file (reserved bytes not zero)" >"$c/expect"
}   # generate_spec24

# ====================================================== rescue (rev. 2.5)
# valid/rescue: a 1 MiB source whose reads fail (EIO) in some ranges, made
# with tests/e2e/badread_shim.c (LD_PRELOAD). seq 0: 'backup --rescue' with
# a sector of block 1 bad, block 2 wholly bad and 8 scattered sectors in
# block 40; seq 1: the disk "healed" but for block 1's sector, and block 5
# changed. expected.sha256 lists what 'restore --allow-bad' writes: the
# source with zeros in each point's bad ranges. damaged/badmap-range: the
# rescue chain with a range of seq 0's map moved past the source's end.
RESCUE_RANGES0=4096:512,8192:4096,163840:512,164864:512,165888:512,166912:512,167936:512,168960:512,169984:512,171008:512
RESCUE_RANGES1=4096:512
generate_rescue() {
command -v cc >/dev/null || die "'cc' is required for the rescue vectors (bad-read shim)"
cc -O2 -shared -fPIC -o "$W/badread.so" "$HERE/../../tests/e2e/badread_shim.c" -ldl ||
	die "cannot build tests/e2e/badread_shim.c"
local R=$V/rescue c f r
rm -rf "$R" "$D/badmap-range"
mkdir -p "$R"
: >"$R/expected.sha256"
rm -f "$W/disk.img"
truncate -s 1M "$W/disk.img"
text 0 64 r0
noise 128 4 09
rbackup() {           # rbackup RANGES: backup --rescue with RANGES failing; expected = zeros there
	local seq=$(($(wc -l <"$R/expected.sha256"))) rc=0
	(cd "$W" && CBIMG_BAD_FILE=$W/disk.img CBIMG_BAD_RANGES=$1 LD_PRELOAD=$W/badread.so \
		"$CBIMG" "${BK[@]}" --no-state --rescue --retries 1 disk.img "$R" 2>"$W/rescue.err") || rc=$?
	[ "$rc" = 5 ] || die "backup --rescue into $R exited $rc (want 5)"
	cp "$W/disk.img" "$W/expect.img"
	for r in ${1//,/ }; do
		dd if=/dev/zero of="$W/expect.img" bs=1 seek="${r%%:*}" count="${r##*:}" conv=notrunc status=none
	done
	echo "$seq $(sha256sum <"$W/expect.img" | cut -d' ' -f1)" >>"$R/expected.sha256"
}
rbackup "$RESCUE_RANGES0"                      # seq 0
text 5 1 r1
rbackup "$RESCUE_RANGES1"                      # seq 1: healed but one sector
rm -f "$R"/.cbimg*.lock "$R"/cbimg-catalog*
# damaged/badmap-range: the first range's offset (at 512 + 24 * 256) set to 2^40
mkdir -p "$D/badmap-range"
cp "$R"/*.cbi "$R"/*.cbx "$D/badmap-range/"
f=$(point "$D/badmap-range" full 0 cbx)
printf '\001' | dd of="$f" bs=1 seek=$((512 + 24 * 256 + 5)) conv=notrunc status=none
printf '%s\n' "bad-range map: ranges unsorted, overlapping, empty or outside the source" >"$D/badmap-range/expect"
}   # generate_rescue

# ================================================== runs (rev. 2.6)
# valid/runs: a 256 MiB sparse source, 65536 blocks of 4 KiB, so that the
# writer stores its indexes as runs (version 3): seq 0 full, seq 1 an
# incremental. damaged/runs-count: a copy whose seq-1 index has one run's
# count changed (its digest still the old one): verify reports damage.
generate_runs() {
local R=$V/runs c x
rm -rf "$R" "$D/runs-count"
mkdir -p "$R"
: >"$R/expected.sha256"
rm -f "$W/disk.img"
truncate -s 256M "$W/disk.img"  # 65536 blocks: runs from here on
text 0 16 r0
noise 100 4 09
text 30000 8 r0
zero 40000 100                # written zeros: a run like the holes
text 65535 1 r0               # the last block
backup "$R"                   # seq 0: items: data, runs of holes
text 3 1 r1
zero 5 1                      # a lone zero block: an entry, not a run
text 50000 2 r1               # splits a run in three
backup "$R"                   # seq 1
rm -f "$R"/.cbimg*.lock "$R"/cbimg-catalog*
c=$D/runs-count
mkdir -p "$c"
cp "$R"/*.cbi "$R"/*.cbx "$c/"
x=$(point "$c" incr 1 cbx)
# the item after the first 16 data blocks... is the run of blocks 16..99:
# its count (offset 512 + 24 * 16 + 8) gets bit 0 flipped
[ "$(u64 "$x" $((512 + 24 * 16)))" = 16 ] || die "runs-count: item 16 is not the run at block 16"
flip "$x" $((512 + 24 * 16 + 8)) 0x01
printf '%s\n' "SHA-256 digest mismatch" "block 0: unable to read the index entry" >"$c/expect"
}   # generate_runs

case $CHECK_ONLY in
0) generate ;;
2) generate_merged ;;
3) generate_spec24 ;;
4) generate_rescue ;;
5) generate_runs ;;
esac

# ================================================================== checks
fails=0
ok() { echo "ok   $*"; }
bad() { echo "FAIL $*"; fails=$((fails + 1)); }

check_valid() {
	local v=$1 name=$2 seq want x got rc okrc=0 ab=()
	shift 2
	# a point with bad ranges (rev. 2.5) restores only with --allow-bad, exit 5
	if [ "$(basename "$v")" = rescue ]; then ab=(--allow-bad); okrc=5; fi
	if "$CBIMG" verify -q --no-state "$@" "$v" >"$W/out" 2>&1; then ok "verify $name exits 0"; else bad "verify $name exits $? (want 0):"; cat "$W/out"; fi
	while read -r seq want; do
		x=$(point "$v" "$([ "$seq" = 0 ] && echo full || echo incr)" "$seq" cbx)
		rm -f "$W/restored"
		rc=0
		"$CBIMG" restore -q --state-dir "$W/nostate" "$@" "${ab[@]+"${ab[@]}"}" "$x" "$W/restored" >"$W/out" 2>&1 || rc=$?
		if [ "$rc" != "$okrc" ]; then
			bad "restore $name seq $seq exited $rc (want $okrc):"; cat "$W/out"; continue
		fi
		if [ "$okrc" = 5 ]; then
			rc=0
			"$CBIMG" restore -q --state-dir "$W/nostate" "$x" "$W/refused" >"$W/out" 2>&1 || rc=$?
			if [ "$rc" = 3 ] && [ ! -e "$W/refused" ]; then ok "restore $name seq $seq without --allow-bad: refused, exit 3"
			else bad "restore $name seq $seq without --allow-bad exited $rc (want 3, nothing written)"; fi
		fi
		got=$(sha256sum <"$W/restored" | cut -d' ' -f1)
		if [ "$got" = "$want" ]; then ok "restore $name seq $seq: $got"; else bad "restore $name seq $seq: $got, want $want"; fi
	done <"$v/expected.sha256"
}
for v in "$V"/*/; do
	v=${v%/}
	check_valid "$v" "valid/$(basename "$v")"
done
# encrypted/*: the passphrase is in the file passphrase of each directory
for v in "$HERE"/encrypted/*/; do
	[ -d "$v" ] || continue
	v=${v%/}
	check_valid "$v" "encrypted/$(basename "$v")" --password-file "$v/passphrase"
done
for c in "$D"/*/; do
	c=${c%/}
	name=damaged/$(basename "$c")
	rc=0 want_rc=3 vopt=(-q)
	# revision 2.4 cases: another status (notes are printed without -q), a passphrase
	if [ -f "$c/exit" ]; then want_rc=$(cat "$c/exit"); vopt=(); fi
	if [ -f "$c/passphrase" ]; then vopt+=(--password-file "$c/passphrase"); fi
	"$CBIMG" verify "${vopt[@]}" "$c" >"$W/out" 2>&1 || rc=$?
	if [ "$rc" = "$want_rc" ]; then ok "verify $name exits $want_rc"; else bad "verify $name exits $rc (want $want_rc):"; cat "$W/out"; fi
	while IFS= read -r want; do
		if grep -qF -- "$want" "$W/out"; then ok "  reports '$want'"; else bad "  $name: no '$want' in:"$'\n'"$(cat "$W/out")"; fi
	done <"$c/expect"
done
total=$(du -sb "$V" "$D" "$HERE/encrypted" | awk '{s += $1} END {print s}')
echo "vectors: $total bytes"
[ "$total" -lt $((2 * 1024 * 1024)) ] || bad "vectors exceed 2 MiB"
[ "$fails" = 0 ] || { echo "make-vectors: $fails checks FAILED" >&2; exit 1; }
echo "make-vectors: all checks passed"
