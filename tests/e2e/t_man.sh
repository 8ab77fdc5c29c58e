#!/usr/bin/env bash
# Manual pages: for every command that `cbimg help` lists, man/cbimg-COMMAND.1
# exists, has the sections of a complete page, renders without groff warnings
# and mentions every long option that `cbimg help COMMAND` prints; cbimg(1)
# lists every command page; every page in man/ renders without warnings.
# Skips (visibly) when groff is not installed (`make deps` installs groff-base).
. "$(dirname "$0")/lib.sh"

MAN=$(cd "$E2E_DIR/../../man" 2>/dev/null && pwd) || die "no man/ directory beside tests/"
command -v groff >/dev/null 2>&1 || skip "groff not installed (apt-get install -y groff-base, or make deps)"

# render PAGE: groff's warnings (all of them, -ww) on $T/warn; the text, on
# one long line per paragraph and without hyphenation, on $T/text.
render() {
	groff -man -ww -Tascii -rLL=4000n -rHY=0 -P-cbou "$1" >"$T/text" 2>"$T/warn"
}

# check_render PAGE: passes when groff renders PAGE with no warning.
check_render() {
	local name
	name=$(basename "$1")
	if ! render "$1"; then
		fail "$name: groff failed"
		sed 's/^/       | /' "$T/warn" | head -20
		return 1
	fi
	if [ -s "$T/warn" ]; then
		fail "$name: groff -ww warnings"
		sed 's/^/       | /' "$T/warn" | head -20
		return 1
	fi
	pass "$name renders without warnings"
}

commands=$("$CBIMG" help 2>/dev/null | sed -n '/^commands:/,/^$/p' | awk 'NR > 1 && NF { print $1 }')
[ -n "$commands" ] || die "no commands found in the output of 'cbimg help'"

for cmd in $commands; do
	page=$MAN/cbimg-$cmd.1
	if [ ! -f "$page" ]; then
		fail "man/cbimg-$cmd.1 missing (cbimg help lists '$cmd')"
		continue
	fi
	pass "man/cbimg-$cmd.1 exists"
	missing=
	for sec in NAME SYNOPSIS DESCRIPTION OPTIONS "EXIT STATUS" EXAMPLES "SEE ALSO"; do
		grep -Eq "^\.SH \"?$sec\"?\$" "$page" || missing="$missing [$sec]"
	done
	check_eq "cbimg-$cmd.1 has every section of a complete page" "${missing# }" ""
	check_render "$page" || continue
	opts=$("$CBIMG" help "$cmd" 2>/dev/null | sed -n '/^options:/,$p' | grep -oE -- '--[a-z0-9][a-z0-9-]*' | sort -u)
	if [ -z "$opts" ]; then
		fail "no options found in 'cbimg help $cmd'"
		continue
	fi
	missing=
	for o in $opts; do
		grep -Eq -- "$o([^a-z0-9-]|\$)" "$T/text" || missing="$missing $o"
	done
	check_eq "cbimg-$cmd.1 mentions every option of 'cbimg help $cmd' ($(echo $opts | wc -w))" "${missing# }" ""
done

# The overview lists every command's page (in SEE ALSO, and COMMANDS).
if [ -f "$MAN/cbimg.1" ]; then
	missing=
	render "$MAN/cbimg.1"
	for cmd in $commands; do
		grep -q "cbimg-$cmd(1)" "$T/text" || missing="$missing cbimg-$cmd(1)"
	done
	check_eq "cbimg(1) refers to every command's page" "${missing# }" ""
else
	fail "man/cbimg.1 missing"
fi

# Every page, the overview, cbimg-format(5) and cbimg-scenarios(7) included.
for page in "$MAN"/*.[1-8]; do
	case $(basename "$page") in cbimg-*.1) continue ;; esac  # checked above
	check_render "$page"
done

finish
