#!/usr/bin/env bash
# The ways cbimg's users work, end to end on loop devices carrying ext4:
#  1. several PCs back up to one shared destination (kept apart by host and
#     source identity; a changed identity under the same path is refused);
#  2. several independent schedules (jobs) of one source, interleaved;
#  3. a chain seeded with a full at a remote site, continued from the local
#     state into empty outboxes, shipped, verified and restored there, and
#     the conflicts between DEST and the local state;
#  4. a chain moved elsewhere with its files renamed keeps working, backup
#     included.
. "$(dirname "$0")/lib.sh"
need_jq
need_root_loop
[ "$SKIPPED" = 1 ] && finish

MNT=$T/mnt
mkdir -p "$MNT"

# mkdisk NAME: a 64 MiB ext4 file system on a loop device; sets DEV_<NAME>.
mkdisk() {
	truncate -s 64M "$T/$1.img"
	mkfs.ext4 -q -F "$T/$1.img" || die "mkfs $1"
	new_loop "$T/$1.img" || die "losetup $1"
	eval "DEV_$1=$LOOPDEV"
}

# change DEV TAG: mount, add/modify/delete files, unmount.
change() {
	do_mount "$1" "$MNT" || die "mount $1"
	head -c $((RANDOM % 512 * 1024 + 65536)) /dev/urandom >"$MNT/new-$2.bin"
	mkdir -p "$MNT/docs"
	cp -a /usr/share/doc/bash "$MNT/docs/bash-$2" 2>/dev/null || true
	[ -f "$MNT/log.txt" ] && dd if=/dev/urandom of="$MNT/log.txt" bs=4k count=2 conv=notrunc status=none
	date >>"$MNT/log.txt"
	rm -f "$MNT"/new-old-*.bin
	for f in "$MNT"/new-*.bin; do
		case $f in *"-$2.bin") ;; *) mv "$f" "$MNT/new-old-$(basename "$f")" 2>/dev/null ;; esac
	done
	do_umount "$MNT" || die "umount"
}

# restore_check POINT SHA LABEL: restore to a new file, compare, fsck.
restore_check() {
	rm -f "$T/r.img"
	if "$CBIMG" restore -q "$1" "$T/r.img" >/dev/null 2>"$T/r.err"; then
		check_eq "$3: restored sha256" "$(sha256 "$T/r.img")" "$2"
		if fsck.ext4 -n -f "$T/r.img" >/dev/null 2>&1; then pass "$3: fsck -n clean"; else fail "$3: fsck -n"; fi
	else
		fail "$3: restore failed: $(cat "$T/r.err")"
	fi
}

# point_of DIR JQFILTER: path of the image of the point selected by a jq
# filter over list --json (e.g. '.host=="pc1" and .seq==1').
point_of() {
	list_json "$1" || return 1
	jq -r "map(select($2)) | .[0].p // empty" "$T/list.json"
}

echo "== 1. several PCs share one destination"
mkdisk pc1
mkdisk pc2
USB=$T/usb
mkdir -p "$USB"
S1_0=$(sha256 "$DEV_pc1")
S2_0=$(sha256 "$DEV_pc2")
# Both PCs back up at the same time.
"$CBIMG" backup -q --host pc1 "$DEV_pc1" "$USB" >"$T/b1.out" 2>&1 &
p1=$!
"$CBIMG" backup -q --host pc2 "$DEV_pc2" "$USB" >"$T/b2.out" 2>&1 &
p2=$!
if wait "$p1" && wait "$p2"; then pass "two concurrent backups to one DEST"; else
	fail "concurrent backups: $(cat "$T/b1.out" "$T/b2.out")"; fi
change "$DEV_pc1" a
change "$DEV_pc2" a
S1_1=$(sha256 "$DEV_pc1")
S2_1=$(sha256 "$DEV_pc2")
expect_exit 0 "$CBIMG" backup -q --host pc1 "$DEV_pc1" "$USB"
expect_exit 0 "$CBIMG" backup -q --host pc2 "$DEV_pc2" "$USB"
if list_json "$USB"; then
	check_eq "pc1 has full + incremental" "$(jqr '[.[] | select(.host=="pc1") | "\(.seq)\(.type[0:1])"] | join(",")')" "0f,1i"
	check_eq "pc2 has full + incremental" "$(jqr '[.[] | select(.host=="pc2") | "\(.seq)\(.type[0:1])"] | join(",")')" "0f,1i"
	check_eq "two chains" "$(jqr '[.[].chain] | unique | length')" 2
else
	fail "list --json"
fi
check "file names tell whose backup it is" test "$(ls "$USB" | grep -c '^pc1_')" = 4 -a "$(ls "$USB" | grep -c '^pc2_')" = 4
restore_check "$(point_of "$USB" '.host=="pc1" and .seq==0')" "$S1_0" "pc1 seq 0"
restore_check "$(point_of "$USB" '.host=="pc1" and .seq==1')" "$S1_1" "pc1 seq 1"
restore_check "$(point_of "$USB" '.host=="pc2" and .seq==0')" "$S2_0" "pc2 seq 0"
restore_check "$(point_of "$USB" '.host=="pc2" and .seq==1')" "$S2_1" "pc2 seq 1"
# Another disk under the same device name: refused, never compared with the
# wrong chain; --full starts a new chain.
losetup -d "$DEV_pc1"
truncate -s 64M "$T/other.img"
mkfs.ext4 -q -F "$T/other.img"
losetup "$DEV_pc1" "$T/other.img" || die "losetup other"
expect_exit 1 "$CBIMG" backup -q --host pc1 "$DEV_pc1" "$USB"
check_grep "the refusal names the identity change" "another disk" "$T/stderr"
expect_exit 0 "$CBIMG" backup --json --full --host pc1 "$DEV_pc1" "$USB" &&
	check_eq "--full: a new chain for the other disk" "$(jout '.type')" full
losetup -d "$DEV_pc1"
losetup "$DEV_pc1" "$T/pc1.img" || die "losetup pc1"

echo "== 2. two schedules of one source, interleaved"
D2=$T/jobs
mkdir -p "$D2"
declare -A WANT
run_job() { # JOB STATE_SHA
	if "$CBIMG" backup --json --host pc2 --job "$1" "$DEV_pc2" "$D2" >"$T/j.json" 2>"$T/j.err"; then
		WANT["$1:$(jq -r .point.seq "$T/j.json")"]=$2
	else
		fail "backup --job $1: $(cat "$T/j.err")"
	fi
}
s=$(sha256 "$DEV_pc2"); run_job daily "$s"; run_job weekly "$s"
change "$DEV_pc2" b; s=$(sha256 "$DEV_pc2"); run_job daily "$s"
change "$DEV_pc2" c; s=$(sha256 "$DEV_pc2"); run_job daily "$s"; run_job weekly "$s"
change "$DEV_pc2" d; s=$(sha256 "$DEV_pc2"); run_job daily "$s"
check_eq "daily has 4 points, weekly 2" "$(list_json "$D2" && jqr '[.[] | .job] | group_by(.) | map("\(.[0])=\(length)") | join(",")')" "daily=4,weekly=2"
check_eq "weekly's seq 1 holds all changes since its own full" \
	"$(jqr '.[] | select(.job=="weekly" and .seq==1) | .changed_blocks > 0')" true
for k in "${!WANT[@]}"; do
	job=${k%%:*} seq=${k##*:}
	restore_check "$(point_of "$D2" ".job==\"$job\" and .seq==$seq")" "${WANT[$k]}" "job $job seq $seq"
done

echo "== 3. seeded at a remote site, continued from the local state"
SD=$T/state3
LOCAL=$T/usb3
REMOTE=$T/remote
mkdir -p "$LOCAL" "$REMOTE"
R0=$(sha256 "$DEV_pc2")
expect_exit 0 "$CBIMG" backup -q --state-dir "$SD" --host pc2 --job offsite "$DEV_pc2" "$LOCAL"
cp "$LOCAL"/*.cb? "$REMOTE"/                       # carried to the remote site
rm -f "$LOCAL"/*.cb?                                # the USB disk is reused
change "$DEV_pc2" e
R1=$(sha256 "$DEV_pc2")
# Without --outbox, an empty DEST gets a new chain (a full) with a note,
# never an incremental whose parents are elsewhere (on a copy of the state).
cp -a "$SD" "$T/sd-noout"
mkdir -p "$T/noout"
expect_exit 0 "$CBIMG" backup --json --state-dir "$T/sd-noout" --host pc2 --job offsite "$DEV_pc2" "$T/noout" &&
	check_eq "empty DEST without --outbox: a new chain" \
		"$(jout '"\(.type) \(.point.seq) \(.from_state)"')" "full 0 false"
check_grep "empty DEST without --outbox: said so" "starting a new chain with a full" "$T/stderr"
mkdir -p "$T/out1"
expect_exit 0 "$CBIMG" backup --json --state-dir "$SD" --host pc2 --job offsite --outbox "$DEV_pc2" "$T/out1" &&
	check_eq "outbox run: an incremental from the local state" \
		"$(jout '"\(.type) \(.point.seq) \(.from_state)"')" "incremental 1 true"
check_grep "outbox run says it used the local state" "local state" "$T/stderr"
check_eq "outbox holds only the new point's two files" "$(count_files "$T/out1")" 2
cp "$T/out1"/*.cb? "$REMOTE"/                      # shipped
change "$DEV_pc2" f
R2=$(sha256 "$DEV_pc2")
mkdir -p "$T/out2"
expect_exit 0 "$CBIMG" backup -q --state-dir "$SD" --host pc2 --job offsite --outbox "$DEV_pc2" "$T/out2"
cp "$T/out2"/*.cb? "$REMOTE"/
expect_exit 0 "$CBIMG" verify "$REMOTE"
restore_check "$(point_of "$REMOTE" '.job=="offsite" and .seq==0')" "$R0" "remote seq 0"
restore_check "$(point_of "$REMOTE" '.job=="offsite" and .seq==1')" "$R1" "remote seq 1"
restore_check "$(point_of "$REMOTE" '.job=="offsite" and .seq==2')" "$R2" "remote seq 2"
# Conflicts. The state is ahead of DEST (the USB disk holds only the full):
# refused, never forked.
mkdir -p "$T/old"
cp "$(point_of "$REMOTE" '.seq==0')" "$(jqr '.[] | select(.seq==0) | .ip')" "$T/old"/
expect_exit 1 "$CBIMG" backup -q --state-dir "$SD" --host pc2 --job offsite "$DEV_pc2" "$T/old"
check_grep "state ahead of DEST: explained" "points in between are elsewhere" "$T/stderr"
check_eq "nothing written on refusal" "$(count_files "$T/old")" 2
# That seed disk, verified on the source machine: behind the local state is
# no damage, a note saying how far behind (issue 14, item 4), and exit 5:
# succeeded with a warning (item 5).
expect_exit 5 "$CBIMG" verify --state-dir "$SD" "$T/old"
check_grep "verify of a seed disk: a note saying how far behind" \
	"note: chain .* ends at seq 0 here; the local state is at seq 2: 2 points behind"
check_eq "verify of a seed disk: no DAMAGED line" "$(grep -c DAMAGED "$T/stdout")" 0
expect_exit 5 "$CBIMG" verify -q --state-dir "$SD" "$T/old"
check_eq "verify -q: the note is silenced" "$OUT" ""
expect_exit 5 "$CBIMG" verify --json --state-dir "$SD" "$T/old"
check_eq "verify --json: one chain behind, ok" "$(jout '"\(.behind) \(.ok) \(.notes | length)"')" "1 true 1"
# DEST is ahead of the state (an old copy of the state): DEST wins, said so.
cp -a "$SD" "$T/state-old"
mkdir -p "$T/out3"
expect_exit 0 "$CBIMG" backup -q --state-dir "$SD" --host pc2 --job offsite --outbox "$DEV_pc2" "$T/out3"
cp "$T/out3"/*.cb? "$REMOTE"/                      # remote now at seq 3, state at 3
rm -rf --one-file-system "$SD" && cp -a "$T/state-old" "$SD"          # state back at seq 2
change "$DEV_pc2" g
R4=$(sha256 "$DEV_pc2")
expect_exit 0 "$CBIMG" backup --json --state-dir "$SD" --host pc2 --job offsite "$DEV_pc2" "$REMOTE" &&
	check_eq "DEST ahead of the state: continues DEST's chain" "$(jout '"\(.point.seq) \(.from_state)"')" "4 false"
check_grep "DEST ahead of the state: explained" "continuing from" "$T/stderr"
# Shipping an outbox with a plain cp never replaces the remote's catalog
# (item 17): an outbox holds none. One lock file per DEST (item 15): an old
# per-job lock file nobody holds is removed. (On copies of the remote and
# the state: the steps below go on with the originals.)
RS=$T/remote-ship SS=$T/state-ship
cp -a "$REMOTE" "$RS" && cp -a "$SD" "$SS"
expect_exit 0 "$CBIMG" log --json "$RS"
check_eq "remote: its own run logged" "$(jout '[.[] | select(.result == "ok")] | length')" 1
REMOTE_RUN=$(jout '.[0].file')
: >"$RS/.cbimg-0123456789abcdef.lock"
change "$DEV_pc2" g2
R5=$(sha256 "$DEV_pc2")
mkdir -p "$T/out6"
expect_exit 0 "$CBIMG" backup -q --state-dir "$SS" --host pc2 --job offsite --outbox "$DEV_pc2" "$T/out6"
check_eq "outbox: no catalog and no run log" "$(ls -A "$T/out6" | grep -c '^cbimg-')" 0
cp "$T/out6"/* "$RS"/                              # shipped, everything
expect_exit 0 "$CBIMG" log --json "$RS"
check_eq "remote: its catalog kept after the outbox was shipped" "$(jout '.[0].file')" "$REMOTE_RUN"
expect_exit 0 "$CBIMG" verify --state-dir "$SS" "$RS"
restore_check "$(point_of "$RS" '.job=="offsite" and .seq==5')" "$R5" "remote seq 5"
expect_exit 0 "$CBIMG" backup -q --state-dir "$SS" --host pc2 --job offsite "$DEV_pc2" "$RS"
check_eq "one lock file in the remote DEST" "$(ls -A "$RS" | grep '\.lock$' | tr '\n' ' ')" ".cbimg.lock "
# A damaged state with an empty outbox: refused (no silent new chain).
for f in "$SD"/*/*.cbx; do flip_byte "$f" 600; done
mkdir -p "$T/out5"
expect_exit 3 "$CBIMG" backup -q --state-dir "$SD" --host pc2 --job offsite --outbox "$DEV_pc2" "$T/out5"
check_grep "damaged state: explained" "local state of job 'offsite' is damaged" "$T/stderr"
check_eq "nothing written" "$(count_files "$T/out5")" 0
expect_exit 0 "$CBIMG" verify "$REMOTE"
restore_check "$(point_of "$REMOTE" '.job=="offsite" and .seq==4')" "$R4" "remote seq 4"

echo "== 4. a chain moved elsewhere, files renamed, keeps working"
MOVED=$T/elsewhere/deeper
mkdir -p "$MOVED"
n=0
for f in "$REMOTE"/*.cb?; do
	n=$((n + 1))
	mv "$f" "$MOVED/renamed-$n.${f##*.}"
done
change "$DEV_pc2" h
R5=$(sha256 "$DEV_pc2")
expect_exit 0 "$CBIMG" backup --json --no-state --host pc2 --job offsite "$DEV_pc2" "$MOVED" &&
	check_eq "backup continues the moved chain" "$(jout '"\(.type) \(.point.seq)"')" "incremental 5"
expect_exit 0 "$CBIMG" verify "$MOVED"
check_eq "list shows the whole chain" "$(list_json "$MOVED" && jqr '[.[] | select(.job=="offsite")] | length')" 6
restore_check "$(point_of "$MOVED" '.job=="offsite" and .seq==5')" "$R5" "moved seq 5"
restore_check "$(point_of "$MOVED" '.job=="offsite" and .seq==1')" "$R1" "moved seq 1"

finish
