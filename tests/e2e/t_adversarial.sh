#!/usr/bin/env bash
# The failures the adversarial test pass found (issue 15, "Failures found"),
# on files (the loop-device ones are in t_loop_adversarial.sh):
#  1. restore onto the chain's own files (an index, an image, a key file, any
#     file in the DEST of the chain) is refused, even with --force, and the
#     chain still restores;
#  3. a FIFO, or a symbolic link to one, named *.cbx / *.cbi / *.cbk in DEST
#     hangs neither list nor verify nor backup; a signal always ends a run
#     (a password file that is a FIFO nobody writes to);
#  5. a NUL byte in a password file is refused (exit 4), never cut;
#  7. a catalog row moved to another name is detected (list shows what
#     verify finds);
#  8. restore of a point whose image was replaced by another file exits 3;
#  9. the catalog: rebuild on a read-only DEST, a planted journal symlink.
. "$(dirname "$0")/lib.sh"
need_jq

S=$T/s.img
D=$T/dest
mkdir -p "$D"
truncate -s 4M "$S"
fill_random "$S" 0 200
"$CBIMG" backup -q "$S" "$D" || die "full backup"
fill_random "$S" 1024 64
"$CBIMG" backup -q "$S" "$D" || die "incremental backup"
FULL_X=$(ls "$D"/*full0000*.cbx)
FULL_I=$(ls "$D"/*full0000*.cbi)
INC_X=$(ls "$D"/*incr0001*.cbx)
INC_I=$(ls "$D"/*incr0001*.cbi)
WANT=$(sha256 "$S")
snap() { (cd "$D" && sha256sum -- *.cbi *.cbx | sha256sum); }
BEFORE=$(snap)

# ------------------------------------------------- 1. the chain's own files
for tgt in "$FULL_X" "$FULL_I" "$INC_X" "$INC_I"; do
	expect_exit 2 "$CBIMG" restore --force "$INC_I" "$tgt" &&
		check_grep "restore onto $(basename "$tgt"): names the reason" "chain|DEST|reads"
done
ln -s "$FULL_X" "$T/link-to-full.cbx"
expect_exit 2 "$CBIMG" restore --force "$INC_X" "$T/link-to-full.cbx"
ln "$FULL_I" "$T/hardlink-to-full.img"
expect_exit 2 "$CBIMG" restore --force "$INC_X" "$T/hardlink-to-full.img"
rm -f "$T/hardlink-to-full.img"
# any other file inside the DEST of the chain
expect_exit 2 "$CBIMG" restore --force "$INC_X" "$D/disk.img"
check "nothing was created in DEST" test ! -e "$D/disk.img"
head -c 4096 /dev/urandom >"$D/foreign.bin"
expect_exit 2 "$CBIMG" restore --force "$INC_X" "$D/foreign.bin"
rm -f "$D/foreign.bin"
check_eq "the chain's files are unchanged" "$(snap)" "$BEFORE"
expect_exit 0 "$CBIMG" restore "$INC_I" "$T/ok.img"
check_eq "the incremental still restores" "$(sha256 "$T/ok.img")" "$WANT"
rm -f "$T/ok.img"
# an encrypted chain: its key file is refused too
DE=$T/dest-enc
mkdir -p "$DE"
echo secret >"$T/pw"
"$CBIMG" backup -q --no-state --encrypt --password-file "$T/pw" "$S" "$DE" || die "encrypted backup"
KEY=$(ls "$DE"/*.cbk)
cp "$KEY" "$T/key.copy"
expect_exit 2 "$CBIMG" restore --force --password-file "$T/pw" "$(ls "$DE"/*.cbx)" "$KEY"
check "the key file is unchanged" cmp -s "$KEY" "$T/key.copy"
ln "$KEY" "$T/key.hardlink"
expect_exit 2 "$CBIMG" restore --force --password-file "$T/pw" "$(ls "$DE"/*.cbx)" "$T/key.hardlink"
check_grep "a hard link to the key file is named as the chain's file" "file of the chain"
check "the key file is unchanged (hard link)" cmp -s "$KEY" "$T/key.copy"
rm -f "$T/key.hardlink"

# ------------------------------------------------- 8. an image replaced: exit 3
D8=$T/dest8
mkdir -p "$D8"
cp "$D"/*.cbi "$D"/*.cbx "$D8"/
i8=$(ls "$D8"/*incr0001*.cbi)
cp "$(ls "$D8"/*full0000*.cbi)" "$i8"
expect_exit 3 "$CBIMG" verify "$D8"
expect_exit 3 "$CBIMG" restore "$(ls "$D8"/*incr0001*.cbx)" "$T/r8.img"
check_grep "restore names the replaced image" "not this point's image"
check "no target left behind" test ! -e "$T/r8.img"
head -c 300000 /dev/urandom >"$i8"
expect_exit 3 "$CBIMG" restore "$(ls "$D8"/*incr0001*.cbx)" "$T/r8.img"
rm -f "$i8"
expect_exit 1 "$CBIMG" restore "$(ls "$D8"/*incr0001*.cbx)" "$T/r8.img"
check_grep "a missing image is still 'missing'" "missing"

# ------------------------------------------------- 3. FIFOs in DEST
mkfifo "$D/planted.cbx" "$T/fifo" "$D/planted.cbk"
ln -s "$T/fifo" "$D/linked.cbi"
run timeout -k 5 20 "$CBIMG" list "$D"
check_eq "list with FIFOs in DEST ends (exit 0)" "$RC" 0
check_grep "list still shows both points" "incr0001"
run timeout -k 5 20 "$CBIMG" verify "$D"
check_eq "verify with FIFOs in DEST ends, reporting them (exit 3)" "$RC" 3
check_grep "verify names the FIFO" "planted.cbx.*not a regular file"
check_grep "verify names the link" "linked.cbi.*symbolic link"
run timeout -k 5 20 "$CBIMG" backup -q "$S" "$D"
check_eq "backup with FIFOs in DEST ends (exit 0)" "$RC" 0
run timeout -k 5 20 "$CBIMG" restore "$T/linked.cbi" "$T/x.img"
check "restore of a FIFO operand ends (not a cbimg file)" test "$RC" != 124 -a "$RC" != 137
run timeout -k 5 20 "$CBIMG" info "$D/planted.cbx"
check "info of a FIFO ends" test "$RC" != 124 -a "$RC" != 137
rm -f "$D/planted.cbx" "$D/linked.cbi" "$D/planted.cbk"
# a signal ends a run blocked in an open: a password file that is a FIFO
# nobody writes to (SIGTERM from timeout; -k 10 would SIGKILL it: 137)
mkdir -p "$T/d-sig"
start=$(date +%s)
run timeout -s TERM -k 10 2 "$CBIMG" backup --no-state --encrypt --password-file "$T/fifo" "$S" "$T/d-sig"
check_eq "SIGTERM ends a run blocked in an open (timeout's status 124, not killed)" "$RC" 124
check_grep "it says interrupted" "interrupted"
check "within seconds" test $(($(date +%s) - start)) -lt 8
run timeout -s INT -k 10 2 "$CBIMG" backup --no-state --encrypt --password-file "$T/fifo" "$S" "$T/d-sig"
check_eq "SIGINT ends it too" "$RC" 124

# ------------------------------------------------- 5. NUL in a password file
printf 'a\0long-secret\n' >"$T/pw-nul"
mkdir -p "$T/d-nul"
expect_exit 4 "$CBIMG" backup --no-state --encrypt --password-file "$T/pw-nul" "$S" "$T/d-nul"
check_grep "the NUL byte is named" "NUL byte"
check_eq "nothing written" "$(count_files "$T/d-nul")" 0
head -c 64 /dev/urandom | tr -d '\n' | { cat; printf '\0x'; } >"$T/pw-bin"
expect_exit 4 "$CBIMG" backup --no-state --encrypt --password-file "$T/pw-bin" "$S" "$T/d-nul"
printf 'ok-secret\n\0after the line\n' >"$T/pw-second"
expect_exit 0 "$CBIMG" backup -q --no-state --encrypt --password-file "$T/pw-second" "$S" "$T/d-nul"

# ------------------------------------------------- 4. verify during backups
# A verify that overlaps a backup never reports damage (the local state is
# read before DEST is scanned, so a point committed meanwhile is no rollback).
D4=$T/dest4
S4=$T/s4.img
mkdir -p "$D4"
truncate -s 2M "$S4"
fill_random "$S4" 0 64
"$CBIMG" backup -q "$S4" "$D4" || die "backup for item 4"
(
	for i in $(seq 1 40); do
		fill_random "$S4" $((i * 16 % 2000)) 8
		"$CBIMG" backup -q "$S4" "$D4" || echo "backup $i failed" >>"$T/bk4.err"
	done
) &
BK=$!
BGPIDS+=("$BK")
runs=0 damaged=0
while kill -0 "$BK" 2>/dev/null; do
	"$CBIMG" verify -q "$D4" >"$T/v4.out" 2>&1
	rc=$?
	runs=$((runs + 1))
	if [ "$rc" != 0 ]; then
		damaged=$((damaged + 1))
		sed 's/^/       | /' "$T/v4.out" | head -5
	fi
done
wait "$BK"
check "verify ran during the backups ($runs runs)" test "$runs" -ge 5
check_eq "no verify during a backup reported a problem" "$damaged" 0
check "every backup succeeded" test ! -s "$T/bk4.err"
expect_exit 0 "$CBIMG" verify "$D4"

finish
