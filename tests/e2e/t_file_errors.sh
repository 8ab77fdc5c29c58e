#!/usr/bin/env bash
# Errors reported as they should be (issue 10's review fixes):
#  1. one error, one line: a failing command writes exactly one newline-ended
#     line to stderr (never a library message and the CLI's own run together)
#     for a missing DEST, a missing source, a file that is not a cbimg file
#     (a usage error since issue 14: exit 2);
#  2. an image whose trailer's table_offset + 24 * record_count + 128 wraps
#     around to the file size (crafted) is damage: info of the image and
#     restore exit 3, info of its index does not call the image complete;
#  3. the zstd level: 1 to 19 in the CLI as in the library; 20 is refused
#     (exit 2, nothing written).
. "$(dirname "$0")/lib.sh"

# put_u64 FILE OFFSET VALUE: a little-endian u64 in place (bash arithmetic
# wraps modulo 2^64, which is what the crafted values need).
put_u64() {
	local s='' i
	for i in 0 1 2 3 4 5 6 7; do
		s+=$(printf '\\%03o' $((($3 >> (8 * i)) & 255)))
	done
	printf "$s" | dd of="$1" bs=1 seek="$2" conv=notrunc status=none
}

# one_line DESCRIPTION: the stderr of the last expect_exit is one line,
# ended by a newline, with one "cbimg" message on it; stdout is empty, or
# with --json the one error object (issue 14: {"schema", "error", "exit"}).
one_line() {
	local lines last msgs
	lines=$(wc -l <"$T/stderr")
	last=$(tail -c 1 "$T/stderr" | od -An -tx1 | tr -d ' ')
	msgs=$(grep -o 'cbimg[a-z ]*:' "$T/stderr" | wc -l)
	local out_ok=0
	if [ ! -s "$T/stdout" ] || jq -e 'has("error") and has("exit")' "$T/stdout" >/dev/null 2>&1; then
		out_ok=1
	fi
	if [ "$lines" = 1 ] && [ "$last" = 0a ] && [ "$msgs" = 1 ] && [ "$out_ok" = 1 ]; then
		pass "$1: one line on stderr"
	else
		fail "$1: stderr is not one line ($lines newlines, last byte '$last', $msgs messages, stdout $(wc -c <"$T/stdout") bytes)"
		sed 's/^/       | /' "$T/stderr" | head -5
	fi
}

S=$T/s.img
D=$T/dest
mkdir -p "$D"
truncate -s 1M "$S"
head -c 4096 /dev/urandom | dd of="$S" conv=notrunc status=none
NOTCBI=$T/not-a-cbimg-file.cbx
head -c 8192 /dev/urandom >"$NOTCBI"

# ------------------------------------------------------------ 1. one line
expect_exit 1 "$CBIMG" backup "$S" "$T/missing-dest" && one_line "backup to a missing DEST"
expect_exit 1 "$CBIMG" backup -q "$S" "$T/missing-dest" && one_line "backup -q to a missing DEST"
expect_exit 1 "$CBIMG" backup --json "$S" "$T/missing-dest" && one_line "backup --json to a missing DEST"
expect_exit 1 "$CBIMG" backup "$T/missing-source.img" "$D" && one_line "backup of a missing source"
expect_exit 2 "$CBIMG" restore "$NOTCBI" "$T/out.img" && one_line "restore of a file that is not a cbimg file"
expect_exit 2 "$CBIMG" restore --json "$NOTCBI" "$T/out.img" && one_line "restore --json of a file that is not a cbimg file"
expect_exit 1 "$CBIMG" restore "$T/missing.cbx" "$T/out.img" && one_line "restore of a missing point"
expect_exit 2 "$CBIMG" info "$NOTCBI" && one_line "info of a file that is not a cbimg file"
expect_exit 1 "$CBIMG" list "$T/missing-dest" && one_line "list of a missing DEST"
check "nothing restored from a bad point" test ! -e "$T/out.img"

# ------------------------------------------------- 2. a wrapping trailer
expect_exit 0 "$CBIMG" backup -q --block-size 4K "$S" "$D" || die "backup failed"
IMG=$(ls "$D"/*.cbi)
IDX=${IMG%.cbi}.cbx
SZ=$(filesize "$IMG")
COUNT=256 # = n_blocks; 24 * 256 + 128 is more than the file holds
[ $((COUNT * 24 + 128)) -gt "$SZ" ] || die "image too large for the test ($SZ bytes)"
put_u64 "$IMG" $((SZ - 128 + 8)) $((SZ - 128 - COUNT * 24)) # table_offset, near 2^64
put_u64 "$IMG" $((SZ - 128 + 16)) "$COUNT"                   # record_count
expect_exit 3 "$CBIMG" info "$IMG" && one_line "info of the crafted image"
check_grep "info names the trailer" "trailer does not match"
run "$CBIMG" info "$IDX"
if printf '%s\n' "$OUT" | grep -q '^image: *complete'; then
	fail "info of the index calls the crafted image complete"
else
	pass "info of the index does not call the crafted image complete"
fi
expect_exit 3 "$CBIMG" restore "$IDX" "$T/out.img" && one_line "restore from the crafted image"
check "nothing restored from the crafted image" test ! -e "$T/out.img"
expect_exit 3 "$CBIMG" verify -q "$D"

# -------------------------------------------------------------- 3. level
D2=$T/dest2
mkdir -p "$D2"
expect_exit 2 "$CBIMG" backup --level 20 "$S" "$D2" && check_grep "level 20: the range is named" "1 to 19"
expect_exit 2 "$CBIMG" backup --level 0 "$S" "$D2"
check_eq "nothing written for a refused level" "$(count_files "$D2")" 0
expect_exit 0 "$CBIMG" backup -q --level 19 "$S" "$D2"
finish
