#!/usr/bin/env bash
# The command line and its JSON (issue 14): list sorts each host/job/source
# group by creation time (newest last, whatever chain) and shows HOST and
# CHAIN; the documented "newest point" recipe; a file that is not a cbimg file
# is a usage error (exit 2), a truncated cbimg file damage (exit 3); times in
# nanoseconds are JSON strings; "point" is an object in every command; every
# JSON document has "schema"; failures under --json print one error object;
# missing operands are named, mistyped commands and options get "did you
# mean", counts agree in number; bash completion; make install / uninstall.
. "$(dirname "$0")/lib.sh"
need_jq

D=$T/dest
SRC=$T/src.img
mkdir -p "$D"
head -c $((2 * 1024 * 1024)) /dev/urandom >"$SRC"
B=(backup --json --block-size 64K --host pc1 --source-id disk-a --job daily)

# ------------------------------------------------------------ list order
expect_exit 0 "$CBIMG" "${B[@]}" "$SRC" "$D" || die "first backup failed"
first_chain=$(jout .point.chain)
fill_random "$SRC" 0 64
expect_exit 0 "$CBIMG" "${B[@]}" "$SRC" "$D"
# Another job between the chains, and new chains (--full) until one has a
# smaller id than an older chain: the old order (by chain id) put that
# newest point before older ones, so '.[-1]' was not the newest.
expect_exit 0 "$CBIMG" backup -q --block-size 64K --host pc1 --source-id disk-a --job weekly "$SRC" "$D"
max_chain=$first_chain
for i in 1 2 3 4 5 6 7 8 9 10; do
	fill_random "$SRC" 64 64
	expect_exit 0 "$CBIMG" "${B[@]}" --full "$SRC" "$D" || break
	newest=$(jout .point.id)
	newest_path=$(jout .point.path)
	chain=$(jout .point.chain)
	[[ $chain < $max_chain ]] && break
	max_chain=$chain
done
fill_random "$SRC" 128 64
expect_exit 0 "$CBIMG" "${B[@]}" "$SRC" "$D" # an incremental on the newest chain
newest=$(jout .point.id)
newest_path=$(jout .point.path)

expect_exit 0 "$CBIMG" list --json "$D"
check_eq "list: newest last in each group (creation times ascend)" \
	"$(jout 'group_by([.host, .job, .source]) | map(map(.created_ns) | . == sort) | all')" true
check_eq "list: groups stay together (job daily, then weekly)" \
	"$(jout '[.[].job] | . == sort')" true
check_eq "list --job daily: the last point is the newest backup" \
	"$("$CBIMG" list --json --host pc1 --job daily "$D" | jq -r '.[-1].id')" "$newest"
# the recipe of cbimg-list(1) and cbimg-restore(1), as documented
recipe=$("$CBIMG" list --json --host pc1 --job daily "$D" |
	jq -r --arg h pc1 --arg j daily \
		'map(select(.host == $h and .job == $j and .has_image)) | sort_by(.created_ns) | .[-1].path')
check_eq "the documented newest-point recipe picks the newest point" "$recipe" "$newest_path"

expect_exit 0 "$CBIMG" list --job daily "$D"
check_grep "table: HOST and CHAIN columns" "^FILE +HOST +JOB +CHAIN +SEQ +TYPE +CREATED +SIZE +CHANGED +STORED"
check_eq "table: rows in the JSON order, CHAIN the id's first 8 digits" \
	"$(awk 'NR > 1 { print $2, $4, $5 }' "$T/stdout")" \
	"$("$CBIMG" list --json --job daily "$D" | jq -r '.[] | "\(.host) \(.chain[0:8]) \(.seq)"')"

# ------------------------------------------------------------ not a cbimg file
printf 'hi' >"$T/afile"
head -c 10000 /dev/urandom >"$T/random.bin"
point=$("$CBIMG" list --json --job weekly "$D" | jq -r '.[0].path')
head -c 100 "$point" >"$T/trunc.cbi"
cp "$T/trunc.cbi" "$T/trunc-no-ext"
for f in afile random.bin; do
	expect_exit 2 "$CBIMG" restore "$T/$f" "$T/out.img"
	check_grep "restore $f: not a cbimg file (a usage error)" "'.*$f': not a cbimg image or index"
	expect_exit 2 "$CBIMG" info "$T/$f"
	expect_exit 2 "$CBIMG" verify "$T/$f"
	check_grep "verify $f: not a cbimg file" "not a cbimg image or index"
done
check "nothing was restored from a non-cbimg file" test ! -e "$T/out.img"
expect_exit 3 "$CBIMG" restore "$T/trunc.cbi" "$T/out.img"
check_grep "a truncated cbimg file stays damage" "truncated|unfinished"
expect_exit 3 "$CBIMG" restore "$T/trunc-no-ext" "$T/out.img"
expect_exit 3 "$CBIMG" verify "$T/trunc.cbi"
: >"$T/empty.cbi"
expect_exit 3 "$CBIMG" info "$T/empty.cbi"  # an emptied point file: damage
: >"$T/empty"
expect_exit 2 "$CBIMG" info "$T/empty"

# ------------------------------------------------------------ JSON: numbers jq can read
expect_exit 0 "$CBIMG" info --json "$point"
check_eq "created_ns is a string of digits" "$(jout '.created_ns | type == "string" and test("^[0-9]{19}$")')" true
check_eq "created_ns agrees with created" \
	"$(jout '.created_ns[0:10] | tonumber | todate')" "$(jout .created)"
expect_exit 0 "$CBIMG" log --json "$D"
check_eq "log: started_ns and ended_ns are strings" \
	"$(jout 'map(.started_ns, .ended_ns | type) | unique | join(",")')" string

# ------------------------------------------------------------ JSON: point, schema
check_eq "log: point is an object with the id, type and files" \
	"$(jout '.[-1].point | "\(type) \(.id) \(.type) \(.file | test("\\.cbi$"))"')" "object $newest incremental true"
check_eq "log: schema in every run" "$(jout 'map(.schema) | unique | join(",")')" 1
expect_exit 0 "$CBIMG" restore --json "$newest_path" "$T/restored.img"
check_eq "restore: point is the restored point's object" \
	"$(jout '"\(.schema) \(.point | type) \(.point.id) \(.point.path)"')" "1 object $newest $newest_path"
check_eq "restore: the image matches the source" "$(sha256 "$T/restored.img")" "$(sha256 "$SRC")"
expect_exit 0 "$CBIMG" "${B[@]}" "$SRC" "$D"
check_eq "backup: schema, point object" "$(jout '"\(.schema) \(.point | type)"')" "1 object"
expect_exit 0 "$CBIMG" verify --json "$D"
check_eq "verify: schema and exit" "$(jout '"\(.schema) \(.ok) \(.exit)"')" "1 true 0"
expect_exit 0 "$CBIMG" info --json "$point"
check_eq "info: schema" "$(jout .schema)" 1
expect_exit 0 "$CBIMG" list --json "$D"
check_eq "list: schema in every point" "$(jout 'map(.schema) | unique | join(",")')" 1
expect_exit 0 "$CBIMG" catalog --json rebuild "$D"
check_eq "catalog --json" "$(jout '"\(.schema) \(.action) \(.points)"')" "1 rebuild $("$CBIMG" list --json "$D" | jq length)"

# ------------------------------------------------------------ JSON: failures
# one_error WANT_EXIT cmd...: fails with WANT_EXIT, prints exactly one JSON
# value on stdout, {"schema", "error", "exit"}, and the message on stderr.
one_error() {
	local want=$1
	shift
	expect_exit "$want" "$@" || return
	check_eq "--json error object: $(show_cmd "$@")" \
		"$(jq -s -c 'map([.schema, .exit, (.error | type)])' "$T/stdout" 2>&1)" "[[1,$want,\"string\"]]"
	check_eq "  its error is the message on stderr" \
		"cbimg: $(jq -r .error "$T/stdout" 2>/dev/null)" "$(grep -m1 '^cbimg' "$T/stderr" | sed 's/^cbimg [a-z]*:/cbimg:/')"
}
one_error 1 "$CBIMG" list --json "$T/no-such-dir"
one_error 1 "$CBIMG" log --json "$T/no-such-dir"
one_error 2 "$CBIMG" restore --json "$T/afile" "$T/out.img"
one_error 2 "$CBIMG" backup --json "$SRC"
one_error 2 "$CBIMG" list --json --no-such-option "$D"
one_error 2 "$CBIMG" bakup --json "$SRC" "$D"
one_error 2 "$CBIMG" passwd --json "$point"
one_error 2 "$CBIMG" catalog --json rebuild
one_error 1 "$CBIMG" catalog --json rebuild "$T/no-such-dir"
one_error 1 "$CBIMG" restore --json "$T/no-such.cbi" "$T/out.img"
# damage: verify's own object, not a second one
cp "$point" "$T/damaged.cbi"
flip_byte "$T/damaged.cbi" 1000
expect_exit 3 "$CBIMG" verify --json "$T/damaged.cbi"
check_eq "verify damage under --json: one object, exit 3" \
	"$(jq -s -c 'map([.schema, .ok, .exit])' "$T/stdout")" "[[1,false,3]]"
check_eq "verify: a problem names its file as path" \
	"$(jout '.problems[0] | "\(.path | test("damaged\\.cbi$")) \(has("file"))"')" "true false"
expect_exit 1 "$CBIMG" list -- --json &&
	check_eq "an operand '--json' after '--' is no option: no JSON" "$(wc -c <"$T/stdout")" 0

# ------------------------------------------------------------ messages
expect_exit 2 "$CBIMG" backup
check_grep "backup: missing SOURCE" "missing SOURCE operand"
expect_exit 2 "$CBIMG" backup "$SRC"
check_grep "backup: missing DEST" "missing DEST operand"
expect_exit 2 "$CBIMG" restore "$point"
check_grep "restore: missing TARGET" "missing TARGET operand"
expect_exit 2 "$CBIMG" list
check_grep "list: missing DEST" "missing DEST operand"
expect_exit 2 "$CBIMG" catalog
check_grep "catalog: the action is named" "missing operand 'rebuild'"
expect_exit 2 "$CBIMG" bakup "$SRC" "$D"
check_grep "mistyped command: did you mean" "unknown command 'bakup' \(did you mean 'backup'\?\)"
expect_exit 2 "$CBIMG" restor
check_grep "mistyped command: restore" "did you mean 'restore'"
expect_exit 2 "$CBIMG" xyzzy
check_grep "no suggestion for a word like no command" "^cbimg: unknown command 'xyzzy'$"
expect_exit 2 "$CBIMG" help lsit
check_grep "help of a mistyped command" "did you mean 'list'"
expect_exit 2 "$CBIMG" list --jsno "$D"
check_grep "mistyped option: did you mean" "unknown option '--jsno' \(did you mean '--json'\?\)"
expect_exit 0 "$CBIMG" verify "$point"
check_grep "verify: one point, singular" "verified [0-9]+ files?, 1 point, [0-9]+ blocks?: OK"
D1=$T/one
mkdir -p "$D1"
head -c 65536 /dev/urandom >"$T/small.img"
expect_exit 0 "$CBIMG" backup -q --block-size 64K "$T/small.img" "$D1"
expect_exit 0 "$CBIMG" verify "$D1"
check_grep "verify: 1 block, singular" "verified 2 files, 1 point, 1 block: OK"
expect_exit 0 "$CBIMG" catalog rebuild "$D1"
check_grep "catalog: 1 point" "rebuilt: 1 point$"

# ------------------------------------------------------------ bash completion
REPO=$(cd "$E2E_DIR/../.." && pwd)
comp() {
	bash -c '. "$1"; shift; COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); _cbimg; echo "${COMPREPLY[*]}"' \
		comp "$REPO/completion/cbimg.bash" "$CBIMG" "$@"
}
check_eq "bash completion: cbimg ba<TAB>" "$(comp ba)" backup
check_eq "bash completion: cbimg backup --jo<TAB>" "$(comp backup --jo)" --job
check_eq "bash completion: cbimg list --j<TAB>" "$(comp list --j)" "--job --json"
check_eq "bash completion: cbimg backup --hash <TAB>" "$(comp backup --hash '')" "xxh3 sha256"
check_eq "bash completion: cbimg catalog <TAB>" "$(comp catalog '')" rebuild
check_eq "bash completion: cbimg help ver<TAB>" "$(comp help ver)" verify
check_eq "bash completion: files for operands" "$(cd "$T" && comp restore afil)" afile
check_eq "bash completion: every command" "$(comp '')" \
	"$("$CBIMG" help | sed -n '/^commands:/,/^$/p' | awk 'NR > 1 && NF { print $1 }' | tr '\n' ' ')help"
if command -v zsh >/dev/null 2>&1; then
	check "zsh completion parses" zsh -n "$REPO/completion/_cbimg"
else
	skip_part "zsh not installed: the zsh completion is not parsed"
fi

# ------------------------------------------------------------ make install / uninstall
BUILD_DIR=$(dirname "$CBIMG")
if ! command -v make >/dev/null 2>&1; then
	skip_part "make not installed: install/uninstall not tested"
elif [ ! -f "$BUILD_DIR/libcbimg.a" ]; then
	skip_part "no libcbimg.a beside $CBIMG: install/uninstall not tested"
else
	I=$T/inst
	mkdir -p "$I"
	if run env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL make -s -C "$REPO" BUILD="$BUILD_DIR" DESTDIR="$I" PREFIX=/usr install; then
		pass "make install DESTDIR=..."
		for f in bin/cbimg lib/libcbimg.a include/cbimg.h share/man/man1/cbimg-list.1 \
			share/man/man5/cbimg-format.5 share/man/man7/cbimg-scenarios.7 share/doc/cbimg/README.md \
			share/bash-completion/completions/cbimg share/zsh/site-functions/_cbimg; do
			check "installed: $f" test -s "$I/usr/$f"
		done
		check_eq "installed completion is the script" \
			"$(sha256 "$I/usr/share/bash-completion/completions/cbimg")" "$(sha256 "$REPO/completion/cbimg.bash")"
		if run env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL make -s -C "$REPO" BUILD="$BUILD_DIR" DESTDIR="$I" PREFIX=/usr uninstall; then
			pass "make uninstall DESTDIR=..."
			check_eq "uninstall left nothing below the prefix" "$(cd "$I" && find . -mindepth 1 | sort | tr '\n' ' ')" "./usr "
		else
			fail "make uninstall failed: $OUT"
		fi
		# uninstall removes only what install put there
		run env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL make -s -C "$REPO" BUILD="$BUILD_DIR" DESTDIR="$I" PREFIX=/usr install
		mkdir -p "$I/usr/share/man/man1" && echo keep >"$I/usr/share/man/man1/other.1"
		run env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL make -s -C "$REPO" BUILD="$BUILD_DIR" DESTDIR="$I" PREFIX=/usr uninstall
		check_eq "uninstall keeps other files" "$(cd "$I" && find . -type f | sort | tr '\n' ' ')" "./usr/share/man/man1/other.1 "
	else
		fail "make install failed: $OUT"
	fi
fi

finish
