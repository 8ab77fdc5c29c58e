#!/usr/bin/env bash
# A backup that runs out of space fails, and leaves neither a .cbi/.cbx nor a
# temporary file behind; earlier points in the destination stay intact.
. "$(dirname "$0")/lib.sh"
need_root
command -v mountpoint >/dev/null 2>&1 || skip "mountpoint not installed (util-linux)"

D=$T/tiny
mkdir -p "$D"
if ! mount -t tmpfs -o size=2m cbimg-e2e "$D" 2>"$T/mount.err"; then
	skip "cannot mount a tmpfs ($(cat "$T/mount.err"))"
fi
MOUNTS+=("$D")

# An earlier point that fits: 512 KiB random.
head -c $((512 * 1024)) /dev/urandom >"$T/small.img"
expect_exit 0 "$CBIMG" backup -q --job small "$T/small.img" "$D" || die "small backup into the tmpfs"
before=$(dir_state "$D")

head -c $((16 * 1024 * 1024)) /dev/urandom >"$T/big.img"
expect_exit nz "$CBIMG" backup --job big "$T/big.img" "$D"
check_eq "backup out of space exits 1" "$RC" 1
check_grep "message names the reason" "[Ss]pace|ENOSPC"
check_eq "no new file (no .cbi/.cbx, no .tmp) left behind" "$(dir_state "$D")" "$before"
expect_exit 0 "$CBIMG" verify "$D"
if have_jq && list_json "$D"; then
	check_eq "list shows the earlier point only" "$(jqr '[.[].job] | join(",")')" small
fi

# The preflight refuses it before writing, in one line naming DEST, the
# free and the needed bytes; --no-space-check writes until the disk is full
# (as above: exit 1, nothing left behind).
expect_exit 1 "$CBIMG" backup -q --job big "$T/big.img" "$D"
check_grep "preflight: one clear line" "^cbimg: not enough space in '[^']*tiny': [0-9]+ bytes free, a full of '[^']*big.img' needs about [0-9]+ "
check_eq "preflight: a single line" "$(wc -l <"$T/stderr")" 1
check_eq "preflight: nothing written" "$(dir_state "$D")" "$before"
expect_exit 1 "$CBIMG" backup -q --no-space-check --job big "$T/big.img" "$D"
check "--no-space-check: the write itself runs out of space" grep -q "No space left on device" "$T/stderr"
check_eq "--no-space-check: nothing left behind" "$(dir_state "$D")" "$before"

# Out of space during an incremental of an existing chain: same guarantees.
# Fill the tmpfs, leaving ~100 KiB, then try an incremental of ~512 KiB.
dd if=/dev/zero of="$D/.filler" bs=64K status=none 2>/dev/null
sz=$(filesize "$D/.filler")
truncate -s $((sz - 100 * 1024)) "$D/.filler"
before=$(dir_state "$D")
head -c $((512 * 1024)) /dev/urandom >"$T/small.img"
expect_exit 1 "$CBIMG" backup -q --job small "$T/small.img" "$D"
check_eq "incremental out of space: nothing left behind" "$(dir_state "$D")" "$before"
rm -f "$D/.filler"
expect_exit 0 "$CBIMG" verify "$D"

finish
