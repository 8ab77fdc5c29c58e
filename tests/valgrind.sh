#!/usr/bin/env bash
# tests/valgrind.sh BUILD - unit tests and a small file backup / incremental /
# restore / verify / list / info through BUILD/cbimg, all under valgrind.
# Fails when valgrind reports an error or a definite leak, or when a command
# gives a wrong result.   (make valgrind)
set -u

BUILD=${1:-build}
case $BUILD in /*) ;; *) BUILD=$PWD/$BUILD ;; esac
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CBIMG=$BUILD/cbimg
command -v valgrind >/dev/null 2>&1 || { echo "valgrind not installed (make deps)" >&2; exit 1; }
[ -x "$CBIMG" ] || { echo "$CBIMG not found; run make first" >&2; exit 1; }

VG=(valgrind -q --error-exitcode=9 --leak-check=full --errors-for-leak-kinds=definite
	--show-leak-kinds=definite --track-origins=yes)
T=$(mktemp -d /tmp/cbimg-valgrind.XXXXXX)
trap 'rm -rf "$T"' EXIT
export CBIMG_VECTORS=$ROOT/format/vectors

failed=0
ran=0
# vg EXPECTED_EXIT cmd...: runs cmd under valgrind.
vg() {
	local want=$1 rc
	shift
	ran=$((ran + 1))
	"${VG[@]}" "$@" </dev/null >"$T/vg.out" 2>&1
	rc=$?
	if [ "$rc" = 9 ]; then
		echo "VALGRIND ERRORS: ${*#"$BUILD/"}"
		head -n 60 "$T/vg.out"
		failed=$((failed + 1))
	elif [ "$rc" != "$want" ]; then
		echo "FAIL (exit $rc, expected $want): $*"
		tail -n 20 "$T/vg.out"
		failed=$((failed + 1))
	else
		echo "ok   $*" | sed "s#$T/##g; s#$BUILD/##g"
	fi
}
check_same() {
	if [ "$(sha256sum <"$1" | cut -d' ' -f1)" = "$(sha256sum <"$2" | cut -d' ' -f1)" ]; then
		echo "ok   $3"
	else
		echo "FAIL $3"
		failed=$((failed + 1))
	fi
}

echo "== unit tests under valgrind"
shopt -s nullglob
units=("$BUILD"/tests/test_*)
[ ${#units[@]} -gt 0 ] || echo "(no unit test binaries in $BUILD/tests)"
for t in "${units[@]}"; do
	[ -x "$t" ] && vg 0 "$t"
done

echo "== cbimg under valgrind"
D=$T/dest
mkdir -p "$D"
truncate -s 3M "$T/src.img"
dd if=/dev/urandom of="$T/src.img" bs=64K count=20 conv=notrunc status=none
dd if=/dev/urandom of="$T/src.img" bs=64K seek=30 count=5 conv=notrunc status=none
cp "$T/src.img" "$T/state0.img"
vg 0 "$CBIMG" backup -q --job vg --threads 2 "$T/src.img" "$D"
dd if=/dev/urandom of="$T/src.img" bs=4K seek=3 count=2 conv=notrunc status=none
dd if=/dev/zero of="$T/src.img" bs=64K seek=31 count=1 conv=notrunc status=none
cp "$T/src.img" "$T/state1.img"
vg 0 "$CBIMG" backup --job vg --threads 2 "$T/src.img" "$D"
vg 0 "$CBIMG" list "$D"
vg 0 "$CBIMG" list --json "$D"
full=$(ls -1S "$D"/*.cbi | head -n 1)
incr=$(ls -1S "$D"/*.cbi | tail -n 1)
incx=${incr%.cbi}.cbx
vg 0 "$CBIMG" info "$incr"
vg 0 "$CBIMG" info --json "$incx"
vg 0 "$CBIMG" verify "$D"
vg 0 "$CBIMG" restore -q --threads 2 "$full" "$T/r0.img"
check_same "$T/r0.img" "$T/state0.img" "restore of the full"
vg 0 "$CBIMG" restore "$incx" "$T/r1.img"
check_same "$T/r1.img" "$T/state1.img" "restore of the incremental"
vg 0 "$CBIMG" restore -q --force --changed-only "$full" "$T/r1.img"
check_same "$T/r1.img" "$T/state0.img" "--changed-only restore"
# Error paths must not leak either.
vg 2 "$CBIMG" backup --block-size 3K "$T/src.img" "$D"
vg 1 "$CBIMG" restore -q "$T/missing.cbi" "$T/x.img"
vg 1 "$CBIMG" restore -q "$full" "$T/r0.img"        # exists, no --force
truncate -s 4M "$T/src.img"
vg 1 "$CBIMG" backup -q --job vg "$T/src.img" "$D"  # size changed
cp -a "$D" "$T/damaged"
f=$T/damaged/$(basename "$full")
sz=$(stat -c %s "$f")
printf '\x55\xaa' | dd of="$f" bs=1 seek=$((sz / 2)) conv=notrunc status=none
vg 3 "$CBIMG" verify "$T/damaged"

echo "== an encrypted chain under valgrind"
E=$T/enc
mkdir -p "$E"
export CBIMG_STATE_DIR=$T/state
printf 'vg-passphrase\n' >"$T/pw"
printf 'other\n' >"$T/pw2"
cp "$T/state0.img" "$T/esrc.img"
vg 0 "$CBIMG" backup -q --job enc --encrypt --scrypt 12:8:1 --password-file "$T/pw" "$T/esrc.img" "$E"
cp "$T/state1.img" "$T/esrc.img"
vg 0 "$CBIMG" backup -q --job enc --password-file "$T/pw" "$T/esrc.img" "$E"
vg 4 "$CBIMG" backup -q --job enc --password-file "$T/pw2" "$T/esrc.img" "$E"
vg 4 "$CBIMG" backup -q --job enc "$T/esrc.img" "$E"
vg 0 "$CBIMG" verify --password-file "$T/pw" "$E"
vg 4 "$CBIMG" verify --password-file "$T/pw2" "$E"
einc=$(ls -1 "$E"/*incr0001*.cbx)
vg 0 "$CBIMG" restore -q --password-file "$T/pw" "$einc" "$T/e1.img"
check_same "$T/e1.img" "$T/state1.img" "restore of the encrypted incremental"
vg 0 "$CBIMG" passwd -q --scrypt 12:8:1 --password-file "$T/pw" --new-password-file "$T/pw2" "$einc"
vg 0 "$CBIMG" info "$einc"
cp -a "$E" "$T/edamaged"
f=$(ls -1S "$T"/edamaged/*.cbi | head -n 1)
sz=$(stat -c %s "$f")
printf '\x55\xaa' | dd of="$f" bs=1 seek=$((sz / 2)) conv=notrunc status=none
vg 3 "$CBIMG" verify --password-file "$T/pw2" "$T/edamaged"
vg 3 "$CBIMG" restore -q --password-file "$T/pw2" "$f" "$T/e2.img"
vg 0 "$CBIMG" backup -q --job sha --hash sha256 "$T/esrc.img" "$D"

echo "== --used-only on an ext4 image, and a multi-threaded restore of it"
if command -v mkfs.ext4 >/dev/null 2>&1; then
	mkdir -p "$T/tree" "$T/uo"
	head -c 3000000 /dev/urandom >"$T/tree/a.bin"
	seq 1 100000 >"$T/tree/b.txt"
	truncate -s 48M "$T/ext4.img"
	mkfs.ext4 -q -F -d "$T/tree" "$T/ext4.img" >/dev/null 2>&1
	vg 0 "$CBIMG" backup -q --no-state --used-only --job uo "$T/ext4.img" "$T/uo"
	vg 0 "$CBIMG" backup -q --no-state --used-only --job uo "$T/ext4.img" "$T/uo"
	uox=$(ls -1 "$T"/uo/*incr0001*.cbx)
	vg 0 "$CBIMG" restore -q --threads 3 "$uox" "$T/uo.img"
	vg 1 "$CBIMG" backup -q --no-state --used-only --job bad "$T/state0.img" "$T/uo"
else
	echo "SKIP: mkfs.ext4 not installed"
fi

echo "== $ran commands under valgrind, $failed failed"
[ "$failed" = 0 ]
