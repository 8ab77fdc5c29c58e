#!/usr/bin/env bash
# Two backup disks in rotation (issue 14, item 1): A, B, A, B with one local
# state. Each disk gets a chain of its own (a full on the first run of each,
# then incrementals), every point on either disk restores bit for bit
# without the other, and verify passes on both. The disks are ext4 file
# systems on loop devices, mounted only while in use, when run as root;
# plain directories otherwise. Then: the outbox flow needs --outbox (and
# still works with it), and an encrypted job is never continued in clear on
# a new disk.
. "$(dirname "$0")/lib.sh"
need_jq

SRC=$T/disk.img
head -c $((4 * 1024 * 1024)) /dev/urandom >"$SRC"
truncate -s 16M "$SRC"

ON_LOOP=0
if is_root && command -v mkfs.ext4 >/dev/null 2>&1 && losetup -f >/dev/null 2>&1; then
	ON_LOOP=1
	for d in A B; do
		truncate -s 64M "$T/usb$d.img"
		mkfs.ext4 -q -F -L "ROT$d$$" "$T/usb$d.img" || die "mkfs $d"
		new_loop "$T/usb$d.img" || die "losetup $d"
		eval "DEV_$d=\$LOOPDEV"
	done
	echo "  (disks on loop devices: A=$DEV_A B=$DEV_B)"
else
	echo "  (not root or no loop device: the disks are plain directories)"
fi
MNT=$T/usb

# attach DISK: the disk is plugged in; its cbimg directory is $MNT/cbimg.
attach() {
	if [ "$ON_LOOP" = 1 ]; then
		local dev
		eval "dev=\$DEV_$1"
		do_mount "$dev" "$MNT" || die "mount disk $1"
	else
		rm -f "$MNT" && ln -s "$T/dir$1" "$MNT" && mkdir -p "$T/dir$1"
	fi
	mkdir -p "$MNT/cbimg"
}
# detach: the disk is unplugged.
detach() {
	if [ "$ON_LOOP" = 1 ]; then
		do_umount "$MNT" || die "umount"
		MOUNTS=("${MOUNTS[@]:0:${#MOUNTS[@]}-1}")
	else
		rm -f "$MNT"
	fi
}

declare -A SHA
run_no=0
# rotate DISK TYPE SEQ: change the source, back up onto DISK, expect TYPE SEQ.
rotate() {
	run_no=$((run_no + 1))
	fill_random "$SRC" $((run_no * 512)) 256
	SHA[$1$3]=$(sha256 "$SRC")
	attach "$1"
	expect_exit 0 "$CBIMG" backup --json --job usb "$SRC" "$MNT/cbimg" &&
		check_eq "run $run_no on disk $1: $2 seq $3" "$(jout '"\(.type) \(.point.seq) \(.from_state)"')" "$2 $3 false"
	cp "$T/stderr" "$T/stderr.$run_no"
	detach
}

echo "== A, B, A, B"
rotate A full 0
rotate B full 0
OUT=$(cat "$T/stderr.2")
check_grep "run 2: a new chain on the empty disk B, said so" "holds no chain of job 'usb': starting a new chain with a full"
check_grep "run 2: the note names --outbox" "--outbox"
rotate A incremental 1
OUT=$(cat "$T/stderr.3")
check_grep "run 3: disk A's own chain, said so" "continuing the chain in"
rotate B incremental 1
rotate A incremental 2
rotate B incremental 2

echo "== every point from both disks"
for d in A B; do
	attach "$d"
	expect_exit 0 "$CBIMG" verify "$MNT/cbimg"
	if list_json "$MNT/cbimg"; then
		check_eq "disk $d: one chain" "$(jqr 'map(.chain) | unique | length')" 1
		check_eq "disk $d: seq 0, 1, 2" "$(jqr 'map("\(.seq)\(.type[0:1])") | join(",")')" "0f,1i,2i"
		for s in 0 1 2; do
			rm -f "$T/r.img"
			expect_exit 0 "$CBIMG" restore -q "$(jqr ".[] | select(.seq == $s) | .p")" "$T/r.img"
			check_eq "disk $d seq $s restores bit for bit" "$(sha256 "$T/r.img")" "${SHA[$d$s]}"
		done
		jqr '.[0].chain' >"$T/chain.$d"
	else
		fail "list on disk $d"
	fi
	detach
done
check "the two disks hold different chains" test "$(cat "$T/chain.A")" != "$(cat "$T/chain.B")"

echo "== the outbox flow takes --outbox"
# The state follows disk B's chain (run 6). An empty outbox with --outbox:
# an incremental from the state, shipped to disk B.
mkdir -p "$T/outbox"
fill_random "$SRC" 6000 128
SHA_OUT=$(sha256 "$SRC")
expect_exit 0 "$CBIMG" backup --json --job usb --outbox "$SRC" "$T/outbox" &&
	check_eq "--outbox: an incremental from the local state" \
		"$(jout '"\(.type) \(.point.seq) \(.from_state)"')" "incremental 3 true"
check_eq "the outbox holds only the new point" "$(count_files "$T/outbox")" 2
attach B
cp "$T"/outbox/*.cb? "$MNT/cbimg/"
expect_exit 0 "$CBIMG" verify "$MNT/cbimg"
if list_json "$MNT/cbimg"; then
	rm -f "$T/r.img"
	expect_exit 0 "$CBIMG" restore -q "$(jqr '.[] | select(.seq == 3) | .p')" "$T/r.img"
	check_eq "the shipped incremental restores on disk B" "$(sha256 "$T/r.img")" "$SHA_OUT"
fi
detach
# --outbox is refused where it makes no sense, and with nothing to continue.
expect_exit 2 "$CBIMG" backup -q --job usb --outbox --full "$SRC" "$T/outbox"
expect_exit 2 "$CBIMG" backup -q --job usb --outbox --no-state "$SRC" "$T/outbox"
mkdir -p "$T/outbox2"
expect_exit 1 "$CBIMG" backup -q --job other --outbox "$SRC" "$T/outbox2"
check_grep "--outbox without a state: explained" "no local state of it"
check_eq "nothing written" "$(count_files "$T/outbox2")" 0

echo "== an encrypted job on a new disk"
PW=$T/pw
printf 'rotation secret\n' >"$PW"
chmod 600 "$PW"
mkdir -p "$T/encA" "$T/encB"
expect_exit 0 "$CBIMG" backup -q --job enc --encrypt --scrypt 12:8:1 --password-file "$PW" "$SRC" "$T/encA"
expect_exit 1 "$CBIMG" backup -q --job enc --password-file "$PW" "$SRC" "$T/encB"
check_grep "a clear chain after an encrypted one: refused" "refusing to start an unencrypted one"
check_eq "nothing written on refusal" "$(count_files "$T/encB")" 0
expect_exit 0 "$CBIMG" backup --json --job enc --encrypt --scrypt 12:8:1 --password-file "$PW" "$SRC" "$T/encB" &&
	check_eq "with --encrypt: an encrypted full on the new disk" \
		"$(jout '"\(.type) \(.point.encrypted)"')" "full true"
finish
