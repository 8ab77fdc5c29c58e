#!/usr/bin/env bash
# The scripts in examples/ work as documented: usb-backup.sh finds the USB
# disk by its label, mounts it and backs up; remote-seeding.sh's three steps
# give a chain that verifies and restores at the "remote" directory. The
# systemd units verify (systemd-analyze, offline, when it is installed) and
# score below 5 in 'systemd-analyze security'; their script cbimg-job fails
# on a missing backup disk and starts a new chain by the age of the newest
# full, not by the date.
. "$(dirname "$0")/lib.sh"
need_jq
need_root_loop
[ "$SKIPPED" = 1 ] && finish
EX=$E2E_DIR/../../examples
export CBIMG

SRC=$T/disk.img
head -c $((8 * 1024 * 1024)) /dev/urandom >"$SRC"
truncate -s 32M "$SRC"

# A USB disk with a label, attached as a loop device, not mounted.
LABEL=CBIMGT$$
truncate -s 96M "$T/usb.img"
# ext4 here: this machine's kernel may lack vfat (FAT destinations are
# tested through FUSE in t_fat.sh); the script only needs mount(8).
mkfs.ext4 -q -F -L "$LABEL" "$T/usb.img"
new_loop "$T/usb.img" || die "losetup"
blkid -p "$LOOPDEV" >/dev/null 2>&1 || true
expect_exit 0 bash "$EX/usb-backup.sh" --label "$LABEL" --job usb "$SRC"
fill_random "$SRC" 1024 64
expect_exit 0 bash "$EX/usb-backup.sh" --label "$LABEL" --job usb "$SRC"
expect_exit 1 bash "$EX/usb-backup.sh" --label NO-SUCH-LABEL-$$ "$SRC"
do_mount "$LOOPDEV" "$T/usbmnt" || die "mount usb"
if list_json "$T/usbmnt/cbimg"; then
	check_eq "two points on the USB disk" "$(jqr 'map("\(.seq)\(.type[0:1])") | join(",")')" "0f,1i"
	rm -f "$T/r.img"
	expect_exit 0 "$CBIMG" restore -q "$(jqr '.[1].p')" "$T/r.img"
	check_eq "restore from the USB disk" "$(sha256 "$T/r.img")" "$(sha256 "$SRC")"
else
	fail "list on the USB disk"
fi
do_umount "$T/usbmnt"

# Remote seeding, as the example's steps say.
export CBIMG_STATE_DIR=$T/state-remote
expect_exit 0 bash "$EX/remote-seeding.sh" seed "$SRC" "$T/carry"
mkdir -p "$T/remote"
cp "$T"/carry/*.cb? "$T/remote/"
fill_random "$SRC" 2048 64
expect_exit 0 bash "$EX/remote-seeding.sh" outbox "$SRC" "$T/outbox"
cp "$T"/outbox/*.cb? "$T/remote/"
expect_exit 0 bash "$EX/remote-seeding.sh" check "$T/remote"
if list_json "$T/remote"; then
	rm -f "$T/r2.img"
	expect_exit 0 "$CBIMG" restore -q "$(jqr '.[1].p')" "$T/r2.img"
	check_eq "remote restore of the shipped incremental" "$(sha256 "$T/r2.img")" "$(sha256 "$SRC")"
fi

echo "== systemd units and their scripts"
U=$EX/systemd
for f in cbimg-job cbimg-notify; do
	check "bash -n $f" bash -n "$U/$f"
done
if command -v shellcheck >/dev/null 2>&1; then
	check "shellcheck of the example scripts" shellcheck "$U/cbimg-job" "$U/cbimg-notify" \
		"$EX/usb-backup.sh" "$EX/remote-seeding.sh"
fi
check_eq "no sh -c one-liners in the units" "$(cat "$U"/*.service | grep -c 'sh -c')" 0
check_eq "no program given by an absolute path" "$(cat "$U"/*.service | grep -Ec '^Exec[A-Za-z]*=[-@:+!]*/')" 0
check_eq "no silent ConditionPathIsMountPoint= skip" "$(cat "$U"/*.service | grep -c 'ConditionPath')" 0
check_eq "no day-of-month test" "$(cat "$U"/* | grep -Ec 'date \+%%?d')" 0
for u in daily weekly; do
	check "cbimg-$u@.service has an OnFailure= hook" grep -q '^OnFailure=cbimg-failure@%n.service' \
		"$U/cbimg-$u@.service"
done
if command -v systemd-analyze >/dev/null 2>&1; then
	mkdir -p "$T/units"
	for u in daily weekly failure; do
		cp "$U/cbimg-$u@.service" "$T/units/cbimg-$u@dev-sda.service"
	done
	for u in daily weekly; do
		cp "$U/cbimg-$u@.timer" "$T/units/cbimg-$u@dev-sda.timer"
	done
	# The scripts and man pages are not installed here: only those
	# complaints are expected.
	(cd "$T/units" && systemd-analyze verify --man=no ./*.service ./*.timer) >"$T/verify.out" 2>&1
	grep -v -e 'is not executable' "$T/verify.out" >"$T/verify.rest"
	check_eq "systemd-analyze verify: no other complaint" "$(cat "$T/verify.rest")" ""
	for u in daily weekly failure; do
		score=$(systemd-analyze security --offline=yes "$T/units/cbimg-$u@dev-sda.service" 2>/dev/null |
			sed -n 's/.*Overall exposure level for .*: \([0-9.]*\) .*/\1/p')
		echo "  (systemd-analyze security cbimg-$u@dev-sda.service: ${score:-none})"
		check "cbimg-$u@.service: exposure below 5" awk -v s="${score:-99}" 'BEGIN { exit !(s < 5) }'
	done
else
	echo "SKIP: systemd-analyze not installed: the units are checked by grep only"
fi

# cbimg-job without systemd: settings from the environment.
JOB=$U/cbimg-job
expect_exit 2 env -u CBIMG_DEST bash "$JOB" daily "$SRC"
mkdir -p "$T/notmounted/cbimg"
CBIMG_DEST=$T/notmounted/cbimg CBIMG_MOUNT=$T/notmounted expect_exit 1 bash "$JOB" daily "$SRC"
check_grep "a missing backup disk is a failure, said so" "backup disk not mounted at"
CBIMG_DEST=$T/no-such-disk/cbimg expect_exit 1 bash "$JOB" daily "$SRC"
check_grep "a missing destination is a failure, said so" "does not exist: is the backup disk attached"
mkdir -p "$T/weekly"
export CBIMG_DEST=$T/weekly CBIMG_FULL_AFTER_DAYS=7 CBIMG_PASSWORD_FILE=$T/no-password-file
expect_exit 0 bash "$JOB" weekly "$SRC"
fill_random "$SRC" 4096 64
expect_exit 0 bash "$JOB" weekly "$SRC"
if list_json "$T/weekly"; then
	check_eq "weekly: a full, then an incremental within 7 days" "$(jqr 'map("\(.seq)\(.type[0:1])") | join(",")')" "0f,1i"
fi
# The newest full's age decides, whatever the date: a stand-in for cbimg
# lists one full of the given age, and prints the backup it is asked for.
cat >"$T/fakecbimg" <<'EOS'
#!/usr/bin/env bash
if [ "$1" = list ]; then
	printf '[{"type":"full","seq":0,"created_ns":"%s"},{"type":"incremental","seq":1,"created_ns":"%s"}]\n' \
		"$(( $(date +%s) - FAKE_AGE_DAYS * 86400 ))000000000" "$(date +%s%N)"
else
	echo "ARGS: $*"
fi
EOS
chmod +x "$T/fakecbimg"
CBIMG=$T/fakecbimg FAKE_AGE_DAYS=8 expect_exit 0 bash "$JOB" weekly "$SRC"
check_grep "a full 8 days old: a new chain" "ARGS: backup .*--full"
CBIMG=$T/fakecbimg FAKE_AGE_DAYS=2 expect_exit 0 bash "$JOB" weekly "$SRC"
check_eq "a full 2 days old: no --full" "$(grep -c -- '--full' "$T/stdout")" 0
unset CBIMG_DEST CBIMG_FULL_AFTER_DAYS CBIMG_PASSWORD_FILE
# Retention after a good backup (CBIMG_KEEP): only this job's points go, what
# the kept ones need merged into them; another job on the disk is untouched.
mkdir -p "$T/keep"
"$CBIMG" backup -q --job other "$SRC" "$T/keep" || die "backup of the other job"
for i in 1 2 3 4; do
	fill_random "$SRC" 4096 64
	CBIMG_DEST=$T/keep CBIMG_KEEP="--keep-last 2" expect_exit 0 bash "$JOB" daily "$SRC"
done
check_grep "the retention step runs prune" "prune --keep-last 2"
if list_json "$T/keep"; then
	check_eq "retention: two points of the job kept" "$(jqr '[.[] | select(.job == "daily")] | length')" 2
	check_eq "retention: the other job untouched" "$(jqr '[.[] | select(.job == "other")] | length')" 1
fi
expect_exit 0 "$CBIMG" restore -q --force "$(ls -1 "$T/keep"/*daily*.cbx | sort | tail -1)" "$T/keep.img"
check_eq "retention: the newest point restores" "$(sha256 "$T/keep.img")" "$(sha256 "$SRC")"
expect_exit 0 "$CBIMG" verify "$T/keep"
finish
