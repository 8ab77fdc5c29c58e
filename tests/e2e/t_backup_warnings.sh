#!/usr/bin/env bash
# Warnings of a backup: one line each on standard error, and with --json an
# array "warnings" beside the joined string "warning" older scripts read.
. "$(dirname "$0")/lib.sh"
need_jq

D=$T/dest
mkdir -p "$D"
head -c $((1024 * 1024)) /dev/urandom >"$T/s.img"
expect_exit 0 "$CBIMG" backup -q "$T/s.img" "$D" || die "first backup"
check_eq "no warning: nothing on stderr" "$(cat "$T/stderr")" ""
expect_exit 0 "$CBIMG" backup --json "$T/s.img" "$D" || die "backup --json"
check_eq "no warning: empty array" "$(jq -c .warnings "$T/stdout")" "[]"
check_eq "no warning: warning is null" "$(jq -r .warning "$T/stdout")" null

# An existing chain ignores --block-size and --hash: two warnings, and the
# exit status of a run that succeeded with a warning, 5.
expect_exit 5 "$CBIMG" backup -q --block-size 8K --hash sha256 "$T/s.img" "$D"
check_eq "two warning lines" "$(grep -c '^cbimg: warning: ' "$T/stderr")" 2
check_grep "first: --block-size" "^cbimg: warning: --block-size applies to new chains only"
check_grep "second: --hash" "^cbimg: warning: --hash applies to new chains only"
expect_exit 5 "$CBIMG" backup --json --block-size 8K --hash sha256 "$T/s.img" "$D"
check_eq "--json: two warnings" "$(jq '.warnings | length' "$T/stdout")" 2
check_eq "--json: warning is the joined string" "$(jq -r .warning "$T/stdout")" \
	"$(jq -r '.warnings | join("; ")' "$T/stdout")"
check_eq "--json: nothing on stderr but the warnings" "$(grep -vc '^cbimg: warning: ' "$T/stderr")" 0
finish
