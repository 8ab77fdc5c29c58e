#!/usr/bin/env bash
# verify never passes what restore rejects, and their classes agree
# (format/SPEC.md revision 2.4, "Full verification" and "Conformance"):
#  1. every vector of format/vectors (valid, encrypted, damaged): each point
#     restored by its index and by its image, the directory verified;
#  2. generated damage on a plain and an encrypted chain: single bytes
#     flipped all over every file; image header fields changed with the
#     header checksum and file digest made to match (rule I8);
#  3. the key cases: no key file (exit 1 from both), only damaged key files
#     (3 from both), a wrong passphrase (4 from both);
#  4. CBIMG_PASSWORD with a final newline is the same passphrase as the
#     password file's line; --scrypt below the floor 12:8:1 is refused.
# The rule checked for every set of files: verify exits 0 only if every
# restore does; a restore that exits 3 (damage) means verify exits 3; one
# that exits 1 (a missing parent or image: NOPARENT, or NOKEY) means
# verify exits 3 or 1; one that exits 4 means verify exits 4.
. "$(dirname "$0")/lib.sh"

VEC=$E2E_DIR/../../format/vectors
[ -d "$VEC/damaged" ] || die "no vectors in $VEC"
H=$T/crypto_helper
cc -O2 -o "$H" "$E2E_DIR/crypto_helper.c" -lxxhash 2>"$T/cc.err" ||
	die "cannot build tests/e2e/crypto_helper.c (needs cc and libxxhash-dev): $(head -3 "$T/cc.err")"
NOSTATE=(--state-dir "$T/nostate")

# verdict DIR [cbimg options]: restore every point file of DIR (index and
# image; with INDEX_ONLY=1 the index files only: an image restores its
# index's point) and verify DIR; compare the exit statuses. Prints a
# summary in $T/why on a mismatch. Restoring a file whose magic is gone
# is a usage error (exit 2, "not a cbimg image or index"): counted as a
# rejection by damage, since for the directory it is a damaged file.
# Restore runs with --allow-bad: the unreadable ranges of a rescue point
# (revision 2.5) are known and recorded, not damage, and verify reports
# them as known-bad; restore then exits 5 (counted as a success), while
# damage still exits 3.
INDEX_ONLY=0
verdict() {
	local d=$1 f rc vrc worst=0 saw1=0 saw3=0 saw4=0 files
	shift
	: >"$T/why"
	files=("$d"/*.cbx)
	[ "$INDEX_ONLY" = 1 ] || files+=("$d"/*.cbi)
	for f in "${files[@]}"; do
		[ -f "$f" ] || continue
		rm -f "$T/r.img"
		rc=0
		"$CBIMG" restore -q --allow-bad "${NOSTATE[@]}" "$@" "$f" "$T/r.img" >/dev/null 2>"$T/rerr" || rc=$?
		[ "$rc" = 5 ] && rc=0
		case $rc in
		0) ;;
		1) saw1=1 ;;
		2 | 3) saw3=1 ;;
		4) saw4=1 ;;
		*) echo "restore $(basename "$f"): exit $rc: $(head -c 300 "$T/rerr")" >>"$T/why"; worst=1 ;;
		esac
		[ "$rc" = 0 ] || echo "restore $(basename "$f"): $rc $(head -c 200 "$T/rerr")" >>"$T/why"
	done
	rm -f "$T/r.img"
	vrc=0
	"$CBIMG" verify -q "${NOSTATE[@]}" "$@" "$d" >"$T/vout" 2>&1 || vrc=$?
	echo "verify: $vrc $(head -c 300 "$T/vout")" >>"$T/why"
	[ "$worst" = 0 ] || return 1
	if [ "$saw4" = 1 ]; then [ "$vrc" = 4 ]; return; fi
	if [ "$saw3" = 1 ]; then [ "$vrc" = 3 ]; return; fi
	if [ "$saw1" = 1 ]; then [ "$vrc" = 3 ] || [ "$vrc" = 1 ]; return; fi
	# verify may find more than restore needs (a stray file, a record
	# nobody reads: 3), or warn (a duplicate, known-bad ranges: 5)
	[ "$vrc" = 0 ] || [ "$vrc" = 3 ] || [ "$vrc" = 5 ]
}

# one CASE DIR [options]: a verdict, counted.
NCASES=0 NBAD=0
one() {
	local name=$1
	shift
	NCASES=$((NCASES + 1))
	if verdict "$@"; then
		return 0
	fi
	NBAD=$((NBAD + 1))
	fail "$name: verify's verdict is milder than restore's:"
	sed 's/^/         /' "$T/why"
}

echo "== 1. the vectors"
for v in "$VEC"/valid/* "$VEC"/encrypted/* "$VEC"/damaged/*; do
	[ -d "$v" ] || continue
	c=$T/vec-$(basename "$(dirname "$v")")-$(basename "$v")
	cp -r "$v" "$c"
	opt=()
	[ -f "$c/passphrase" ] && opt=(--password-file "$c/passphrase")
	one "vector $(basename "$(dirname "$v")")/$(basename "$v")" "$c" "${opt[@]}"
	rm -rf --one-file-system "$c"
done
check_eq "every vector: verify's verdict agrees with restore's" "$NBAD" 0

echo "== 2. generated damage"
# A chain of 3 points, 48 blocks of 4 KiB, compressible and random blocks.
# Kept small: every case runs restore three times and verify once.
INDEX_ONLY=1
SRC=$T/src.img
mkchain() { # DIR [backup options]
	local d=$1
	shift
	mkdir -p "$d"
	truncate -s 192K "$SRC"
	fill_random "$SRC" 0 64
	"$CBIMG" backup -q --no-state --block-size 4K "$@" "$SRC" "$d" || die "backup into $d"
	fill_random "$SRC" 16 8
	printf 'changed text block\n%.0s' {1..100} | dd of="$SRC" bs=4096 seek=30 conv=notrunc status=none
	"$CBIMG" backup -q --no-state --block-size 4K "$@" "$SRC" "$d" || die "backup into $d"
	fill_random "$SRC" 100 8
	"$CBIMG" backup -q --no-state --block-size 4K "$@" "$SRC" "$d" || die "backup into $d"
	rm -f "$d"/.cbimg*.lock "$d"/cbimg-catalog*
}
printf 'verdict passphrase\n' >"$T/pw"
mkchain "$T/plain"
mkchain "$T/enc" --encrypt --scrypt 12:8:1 --password-file "$T/pw"
before=$NBAD
for kind in plain enc; do
	opt=()
	[ "$kind" = enc ] && opt=(--password-file "$T/pw")
	for f in "$T/$kind"/*.cbi "$T/$kind"/*.cbx; do
		size=$(filesize "$f")
		# offsets: a spread over the header, the body and the trailer
		# (fewer in the encrypted chain, where every run pays scrypt)
		step=1
		[ "$kind" = enc ] && step=2
		offs=$(awk -v n="$size" -v s="$step" 'BEGIN {
			split("3 20 33 50 70 100 129 140 150 160 300 475 490 506", h, " ");
			for (i = 1; i <= 14; i += s) print h[i];
			for (k = 1; k < 6; k += s) print int(512 + (n - 640) * k / 6);
			for (o = n - 125; o < n; o += 31 * s) print o }')
		for off in $offs; do
			c=$T/case
			rm -rf --one-file-system "$c"
			cp -r "$T/$kind" "$c"
			"$H" flip "$c/$(basename "$f")" "$off" || die "flip"
			one "$kind $(basename "$f") byte $off" "$c" "${opt[@]}"
		done
	done
done
# Image headers that disagree with their index (plain: checksum and file
# digest recomputed, so only I8 can tell).
setdigest() {
	local f=$1 h
	h=$(head -c -32 "$f" | sha256sum | cut -c1-64)
	printf "$(printf '%s' "$h" | sed 's/../\\x&/g')" | dd of="$f" bs=1 seek=$(($(filesize "$f") - 32)) conv=notrunc status=none
}
for f in "$T/plain"/*.cbi; do
	# offset:value: seq, chain_id, created_ns, level, job, host, source_path, segment_mib
	for ob in 128:9 50:255 137:1 144:7 153:122 217:122 410:122 148:1; do
		c=$T/case
		rm -rf --one-file-system "$c"
		cp -r "$T/plain" "$c"
		g=$c/$(basename "$f")
		# the byte must change: created_ns is a clock, and its byte may
		# already hold the value (CI saw byte 137 = 1, one run in 256)
		v=${ob#*:}
		cur=$(od -An -tu1 -j "${ob%%:*}" -N1 "$g" | tr -d ' ')
		[ "$cur" = "$v" ] && v=$((v ^ 1))
		printf "\\$(printf '%03o' "$v")" | dd of="$g" bs=1 seek="${ob%%:*}" conv=notrunc status=none
		"$H" hdrsum "$g" 504 || die "hdrsum"
		setdigest "$g"
		one "plain $(basename "$f") header byte ${ob%%:*} := ${ob#*:} (checksum, digest recomputed)" "$c"
		grep -q "header does not match" "$T/vout" || grep -q "damaged header" "$T/vout" ||
			fail "$(basename "$f") header byte ${ob%%:*}: verify does not name the header: $(head -c 300 "$T/vout")"
	done
done
check_eq "generated damage ($((NCASES)) cases in all): verify's verdict never milder than restore's" "$((NBAD - before))" 0

echo "== 3. key files"
c=$T/case
rm -rf --one-file-system "$c"
cp -r "$T/enc" "$c"
rm -f "$c"/*.cbk
LAST=$(ls "$c"/*incr0002*.cbx)
expect_exit 1 "$CBIMG" restore -q "${NOSTATE[@]}" --password-file "$T/pw" "$LAST" "$T/r.img" &&
	check_grep "no key file: restore names it" "neither in"
expect_exit 1 "$CBIMG" verify -q "${NOSTATE[@]}" --password-file "$T/pw" "$c" &&
	check_grep "no key file: verify exits 1 too, naming it" "neither in"
cp "$T"/enc/*.cbk "$c/"
K=$(ls "$c"/*.cbk)
printf '\001' | dd of="$K" bs=1 seek=200 conv=notrunc status=none
"$H" hdrsum "$K" 248 || die "hdrsum"
expect_exit 3 "$CBIMG" restore -q "${NOSTATE[@]}" --password-file "$T/pw" "$LAST" "$T/r.img" &&
	check_grep "only a damaged key file: restore exits 3" "no intact key file"
expect_exit 3 "$CBIMG" verify -q "${NOSTATE[@]}" --password-file "$T/pw" "$c" &&
	check_grep "only a damaged key file: verify exits 3, with the real reason" "reserved bytes not zero"
cp "$T"/enc/*.cbk "$c/"
printf 'wrong\n' >"$T/wrong"
expect_exit 4 "$CBIMG" restore -q "${NOSTATE[@]}" --password-file "$T/wrong" "$LAST" "$T/r.img"
expect_exit 4 "$CBIMG" verify -q "${NOSTATE[@]}" --password-file "$T/wrong" "$c"

echo "== 4. passphrase bytes, scrypt floor"
CBIMG_PASSWORD=$'verdict passphrase\n' expect_exit 0 "$CBIMG" verify -q "${NOSTATE[@]}" "$c"
CBIMG_PASSWORD=$'verdict passphrase\r\n' expect_exit 0 "$CBIMG" verify -q "${NOSTATE[@]}" "$c"
CBIMG_PASSWORD='verdict passphrase ' expect_exit 4 "$CBIMG" verify -q "${NOSTATE[@]}" "$c"
CBIMG_PASSWORD=$'\n' expect_exit 4 "$CBIMG" verify -q "${NOSTATE[@]}" "$c"
expect_exit 2 "$CBIMG" backup -q --no-state --encrypt --scrypt 10:8:1 --password-file "$T/pw" "$SRC" "$T/low" &&
	check_grep "--scrypt below the floor: usage error" "12 to 24"
expect_exit 2 "$CBIMG" backup -q --no-state --encrypt --scrypt 12:4:1 --password-file "$T/pw" "$SRC" "$T/low"
rm -f "$T/r.img"
finish
