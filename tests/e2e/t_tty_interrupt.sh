#!/usr/bin/env bash
# Ctrl-C at a passphrase prompt, on a pseudo-terminal (pty_helper.c, built
# here with cc -lutil): the first Ctrl-C ends the command at once, with the
# terminal's echo back on, "cbimg: interrupted" and exit status 1 (cbimg(1),
# "PROGRESS AND INTERRUPTION"), and nothing left in DEST. At the first prompt
# of a new encrypted chain, at its confirmation, and at the prompt of a
# restore that unlocks a chain.
. "$(dirname "$0")/lib.sh"
unset CBIMG_PASSWORD CBIMG_NEW_PASSWORD

H=$T/pty_helper
cc -O2 -o "$H" "$E2E_DIR/pty_helper.c" -lutil 2>"$T/cc.err" ||
	die "cannot build tests/e2e/pty_helper.c (needs cc): $(head -3 "$T/cc.err")"

# A pseudo-terminal must be available (a chroot without /dev/pts has none).
if ! "$H" -t 5 -- true >"$T/probe.out" 2>&1; then
	grep -q forkpty "$T/probe.out" && skip "no pseudo-terminal here ($(head -1 "$T/probe.out")): mount devpts on /dev/pts"
fi

S=$T/s.img
truncate -s 1M "$S"
head -c 65536 /dev/urandom | dd of="$S" conv=notrunc status=none

# interrupted DESCRIPTION STEP... -- CMD...: plays the steps; the command
# must end within 2 s of the Ctrl-C, exit 1 and leave echo on.
interrupted() {
	local d=$1 st echo ms
	shift
	"$H" -t 10 "$@" >"$T/pty.out" 2>"$T/pty.err"
	st=$(sed -n 's/^status=//p' "$T/pty.out")
	echo=$(sed -n 's/^echo=//p' "$T/pty.out")
	ms=$(sed -n 's/^elapsed_ms=//p' "$T/pty.out")
	if [ "$st" = "exit 1" ] && [ "$echo" = on ] && [ "${ms:-99999}" -lt 2000 ] &&
		grep -q '^cbimg: interrupted' "$T/pty.out"; then
		pass "$d: ended at once ($ms ms), exit 1, echo on, 'interrupted'"
	else
		fail "$d: status '$st', echo '$echo', $ms ms after Ctrl-C"
		sed 's/^/       | /' "$T/pty.out" "$T/pty.err" | head -12
	fi
}

D=$T/dest
mkdir -p "$D"
interrupted "Ctrl-C at the passphrase of a new chain" expect=Passphrase noecho reading intr -- \
	"$CBIMG" backup --encrypt --scrypt 12:8:1 "$S" "$D"
check_eq "nothing written to DEST" "$(find "$D" \( -name '*.cb[ixk]' -o -name '*.tmp' \) | wc -l)" 0
interrupted "Ctrl-C at the confirmation" expect=Passphrase noecho line=secret expect=again noecho reading intr -- \
	"$CBIMG" backup --encrypt --scrypt 12:8:1 "$S" "$D"
check_eq "nothing written to DEST" "$(find "$D" \( -name '*.cb[ixk]' -o -name '*.tmp' \) | wc -l)" 0

# An encrypted chain made with the passphrase in the environment; restore
# asks for it on the terminal.
CBIMG_PASSWORD=secret expect_exit 0 "$CBIMG" backup -q --encrypt --scrypt 12:8:1 --no-state "$S" "$D" ||
	die "encrypted backup failed"
IDX=$(ls "$D"/*.cbx)
interrupted "Ctrl-C at the passphrase of a restore" expect=Passphrase noecho reading intr -- \
	"$CBIMG" restore "$IDX" "$T/out.img"
check "nothing restored" test ! -e "$T/out.img"
check_eq "no temporary left beside the target" "$(find "$T" -maxdepth 1 -name '.*.tmp' | wc -l)" 0

# And the prompt still works: the passphrase typed is the one used.
"$H" -t 20 expect=Passphrase noecho line=secret -- "$CBIMG" restore -q "$IDX" "$T/out.img" \
	>"$T/pty.out" 2>&1
check_eq "restore with the passphrase typed at the prompt" "$(sed -n 's/^status=//p' "$T/pty.out")" "exit 0"
check_eq "restored bytes" "$(sha256 "$T/out.img")" "$(sha256 "$S")"
finish
