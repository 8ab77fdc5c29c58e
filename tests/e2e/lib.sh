# tests/e2e/lib.sh - helpers sourced by every tests/e2e/t_*.sh.
#
# A test script does:
#     . "$(dirname "$0")/lib.sh"
#     ... assertions (pass/fail/expect_exit/check_eq/...) ...
#     finish
#
# Exit status of a test script: 0 all assertions passed, 1 at least one failed,
# 77 skipped (nothing could be checked). run.sh interprets these.
set -u

E2E_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CBIMG=${CBIMG:-$E2E_DIR/../../build/cbimg}
if [ ! -x "$CBIMG" ]; then
	echo "FAIL: cbimg binary not found or not executable: $CBIMG (set CBIMG=...)" >&2
	exit 1
fi
export LC_ALL=C

PASS=0
FAIL=0
SKIPPED=0
LOOPS=()   # loop devices attached by this test
MOUNTS=()  # mount points mounted by this test
BGPIDS=()  # background processes started by this test
T=$(mktemp -d /tmp/cbimg-e2e.XXXXXX) || { echo "FAIL: mktemp" >&2; exit 1; }
# Keep each test's local job state (see cbimg backup --state-dir) to itself.
export CBIMG_STATE_DIR=$T/state

cleanup() {
	local i p m l
	for p in "${BGPIDS[@]+"${BGPIDS[@]}"}"; do
		kill -9 "$p" 2>/dev/null
		wait "$p" 2>/dev/null
	done
	for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do
		m=${MOUNTS[$i]}
		if mountpoint -q "$m" 2>/dev/null; then
			umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null
		fi
	done
	for l in "${LOOPS[@]+"${LOOPS[@]}"}"; do
		losetup -d "$l" 2>/dev/null
	done
	if [ "${KEEP:-0}" = 1 ]; then
		echo "(kept $T)"
	else
		rm -rf --one-file-system "$T"
	fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------------------------ results
pass() { PASS=$((PASS + 1)); echo "  ok   $*"; }
fail() { FAIL=$((FAIL + 1)); echo "  FAIL $*"; }

# skip "reason": the whole test cannot run here; prints a visible line, exits 77
# unless something already failed.
skip() {
	SKIPPED=1
	echo "SKIP: $*"
	finish
}

# skip_part "reason": one part of a test cannot run here; the test continues.
skip_part() {
	echo "SKIP: $*"
}

finish() {
	echo "  -- $PASS ok, $FAIL failed"
	if [ "$FAIL" -gt 0 ]; then
		exit 1
	fi
	if [ "$SKIPPED" = 1 ] && [ "$PASS" = 0 ]; then
		exit 77
	fi
	exit 0
}

# Abort the test (counts as a failure): for steps later steps depend on.
die() {
	fail "$*"
	finish
}

# ------------------------------------------------------------------ checks
# expect_exit CODE cmd...: runs cmd (stdin /dev/null); its stdout goes to
# $T/stdout, its stderr to $T/stderr, both to $OUT; passes when its exit
# status is CODE. CODE "nz" means any non-zero status. Returns 0 on pass, 1 on
# failure.
OUT=
RC=0
expect_exit() {
	local want=$1
	shift
	"$@" </dev/null >"$T/stdout" 2>"$T/stderr"
	RC=$?
	OUT=$(cat "$T/stdout" "$T/stderr")
	if [ "$want" = nz ] && [ "$RC" -ne 0 ]; then
		pass "exit $RC (non-zero): $(show_cmd "$@")"
		return 0
	elif [ "$want" != nz ] && [ "$RC" -eq "$want" ]; then
		pass "exit $RC: $(show_cmd "$@")"
		return 0
	fi
	fail "exit $RC, expected $want: $(show_cmd "$@")"
	printf '%s\n' "$OUT" | sed 's/^/       | /' | head -20
	return 1
}

# run cmd...: like expect_exit without the assertion; status in $RC.
run() {
	"$@" </dev/null >"$T/stdout" 2>"$T/stderr"
	RC=$?
	OUT=$(cat "$T/stdout" "$T/stderr")
	return "$RC"
}

# jout EXPR: jq -r EXPR on the stdout of the last expect_exit/run.
jout() { jq -r "$1" "$T/stdout" 2>/dev/null; }

show_cmd() {
	local s="$*"
	s=${s//"$CBIMG"/cbimg}
	s=${s//"$T"/\$T}
	printf '%s' "$s"
}

# check_eq DESCRIPTION ACTUAL EXPECTED
check_eq() {
	if [ "$2" = "$3" ]; then
		pass "$1"
		return 0
	fi
	fail "$1: got '$2', expected '$3'"
	return 1
}

# check DESCRIPTION cmd...: passes when cmd succeeds (output not captured).
check() {
	local d=$1
	shift
	if "$@" </dev/null; then
		pass "$d"
		return 0
	fi
	fail "$d"
	return 1
}

# check_grep DESCRIPTION REGEX: $OUT (of the last expect_exit/run) matches REGEX.
check_grep() {
	if printf '%s\n' "$OUT" | grep -Eq -- "$2"; then
		pass "$1"
		return 0
	fi
	fail "$1: output does not match /$2/"
	printf '%s\n' "$OUT" | sed 's/^/       | /' | head -20
	return 1
}

# ------------------------------------------------------------------ data
# sha256 FILE_OR_DEVICE: prints the hex digest of the whole content.
sha256() {
	sha256sum <"$1" | cut -d' ' -f1
}

# fill_random FILE OFFSET_KIB LEN_KIB: writes random bytes in place.
fill_random() {
	dd if=/dev/urandom of="$1" bs=1K seek="$2" count="$3" conv=notrunc status=none
}

# fill_zero FILE OFFSET_KIB LEN_KIB: writes (allocated) zero bytes in place.
fill_zero() {
	dd if=/dev/zero of="$1" bs=1K seek="$2" count="$3" conv=notrunc status=none
}

# flip_byte FILE OFFSET: inverts the byte at OFFSET.
flip_byte() {
	local b
	b=$(dd if="$1" bs=1 skip="$2" count=1 status=none | od -An -tu1 | tr -d ' ')
	[ -n "$b" ] || return 1
	printf "$(printf '\\%03o' $((b ^ 255)))" |
		dd of="$1" bs=1 seek="$2" count=1 conv=notrunc status=none
}

filesize() { stat -c %s "$1"; }

# count_points DIR: number of *.cbi and *.cbx files (non-hidden).
count_files() {
	find "$1" -maxdepth 1 \( -name '*.cbi' -o -name '*.cbx' \) ! -name '.*' | wc -l
}

# ------------------------------------------------------------------ JSON
have_jq() { command -v jq >/dev/null 2>&1; }

# The file tests cannot check anything without jq: a failure, not a skip.
need_jq() {
	have_jq || die "jq is required by the end-to-end tests: apt-get install -y jq"
}

# list_json DIR: runs `cbimg list --json DIR` into $T/list.json, sorted by
# job, chain, seq, with .p and .ip added. Returns non-zero when cbimg fails or prints invalid JSON.
list_json() {
	"$CBIMG" list --json "$1" </dev/null >"$T/list.raw" 2>"$T/list.err" || return 1
	jq -e 'type == "array"' "$T/list.raw" >/dev/null 2>&1 || return 1
	# .p / .ip: paths of the image and index files (the listing's "path" and
	# "index_path" when present, else DIR/"file").
	jq --arg d "$1" 'map(. + {p: (.path // ($d + "/" + .file)),
	                           ip: (.index_path // ($d + "/" + .index_file))})
	                 | sort_by(.job, .chain, .seq)' "$T/list.raw" >"$T/list.json"
}

# jqr EXPR: jq -r EXPR on $T/list.json.
jqr() { jq -r "$1" "$T/list.json"; }

# ------------------------------------------------------------------ root / loop
is_root() { [ "$(id -u)" = 0 ]; }

need_root() {
	is_root || skip "needs root (running as uid $(id -u))"
}

need_root_loop() {
	is_root || skip "needs root for loop devices (running as uid $(id -u))"
	command -v losetup >/dev/null 2>&1 || skip "losetup not installed (util-linux)"
	losetup -f >/dev/null 2>&1 || skip "no free loop device (losetup -f failed; in a container? try --privileged)"
	command -v mkfs.ext4 >/dev/null 2>&1 || skip "mkfs.ext4 not installed (e2fsprogs)"
	command -v fsck.ext4 >/dev/null 2>&1 || skip "fsck.ext4 not installed (e2fsprogs)"
}

# new_loop FILE: attaches FILE to a free loop device; sets LOOPDEV.
LOOPDEV=
new_loop() {
	LOOPDEV=$(losetup -f --show "$1") || return 1
	LOOPS+=("$LOOPDEV")
}

# do_mount [OPTS] DEV DIR: mounts and remembers DIR for cleanup.
do_mount() {
	local opts=()
	if [ $# = 3 ]; then opts=(-o "$1"); shift; fi
	mkdir -p "$2"
	mount "${opts[@]+"${opts[@]}"}" "$1" "$2" || return 1
	MOUNTS+=("$2")
}

do_umount() {
	sync
	umount "$1"
}

# dir_state DIR: the names in DIR (hidden ones too) except lock files.
dir_state() {
	(cd "$1" && ls -1A | grep -v '\.lock$' | sort)
}
