#!/usr/bin/env bash
# t_snapshot.sh - consistent backups of a mounted ext4 on a loop device while
# a writer keeps changing it (issue 13): --snapshot freeze and trace give an
# image that passes fsck -n -f with every file the writer logged intact;
# none is refused unless --allow-inconsistent (exit 5, changed blocks
# counted); read-only or unmounted sources need no snapshot; the file system
# holding DEST or the state is never frozen; kill -9 of cbimg while frozen
# thaws within a second (the guardian); --freeze-timeout thaws and fails.
# Needs root and loop devices (and tracefs with the tracer for trace).
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/snaplib.sh"
need_root_loop
need_jq

IMG=$T/live.img
M=$T/m
truncate -s 128M "$IMG"
mkfs_live ext4 "$IMG" || die "mkfs.ext4"
new_loop "$IMG" || die "losetup"
L=$LOOPDEV
do_mount "$L" "$M" || die "mount"
ballast "$M" 24

# --- none: refused, unless --allow-inconsistent (exit 5, counted)
mkdir -p "$T/d0"
expect_exit 1 "$CBIMG" backup -q --no-state --snapshot none "$L" "$T/d0"
check_grep "none on a mounted source: refused, naming --allow-inconsistent" \
	"^cbimg: source '$L' is mounted read-write on '$M'.*--allow-inconsistent"
check_eq "none refused: one line" "$(printf '%s\n' "$OUT" | wc -l)" 1
writer_start "$M"
sleep 0.5
expect_exit 5 "$CBIMG" backup --json --no-state --level 9 --threads 1 --snapshot none --allow-inconsistent "$L" "$T/d0"
check_eq "--allow-inconsistent: snapshot none in --json" "$(jout .snapshot)" none
check_grep "--allow-inconsistent: the count of changed blocks, as a warning" "blocks? changed during the read"
n=$(jout .blocks_changed_during_read)
if [ -n "$n" ] && [ "$n" != null ] && [ "$n" -ge 0 ]; then pass "blocks_changed_during_read in --json ($n)"; else fail "blocks_changed_during_read: '$n'"; fi

# --- freeze, with the writer running
mkdir -p "$T/df"
c0=$(writer_count "$M")
expect_exit 0 "$CBIMG" backup --json --no-state --level 9 --threads 1 --snapshot freeze "$L" "$T/df"
check_eq "freeze: --json says so" "$(jout .snapshot)" freeze
ms=$(jout .freeze_ms)
check "freeze: the window is reported ($ms ms)" awk -v m="$ms" 'BEGIN { exit !(m > 0) }'
sleep 0.3
check "the writer went on after the thaw" test "$(writer_count "$M")" -gt "$c0"
expect_exit 0 "$CBIMG" restore -q "$T/df" latest "$T/rf.img"
check_restored ext4 "$T/rf.img" "freeze"

# --- trace, with the writer running
mkdir -p "$T/dt" "$T/dprobe"
if trace_usable "$L" "$T/dprobe"; then
	expect_exit 0 "$CBIMG" backup --json --no-state --level 9 --threads 1 --snapshot trace "$L" "$T/dt"
	check_eq "trace: --json says so" "$(jout .snapshot)" trace
	check_eq "trace: complete" "$(jout .trace_incomplete)" false
	echo "       (trace: frozen $(jout .freeze_ms) ms, $(jout .blocks_reread) blocks re-read)"
	check "trace: blocks written during the read were re-read" test "$(jout .blocks_reread)" -gt 0
	expect_exit 0 "$CBIMG" restore -q "$T/dt" latest "$T/rt.img"
	check_restored ext4 "$T/rt.img" "trace"
	# an incremental on top, still live
	expect_exit 0 "$CBIMG" backup --json --no-state --snapshot trace "$L" "$T/dt"
	check_eq "trace: an incremental" "$(jout .type)" incremental
	expect_exit 0 "$CBIMG" restore -q "$T/dt" latest "$T/rt2.img"
	check_restored ext4 "$T/rt2.img" "trace, incremental"
	# auto is trace where it works
	expect_exit 0 "$CBIMG" backup --json --no-state "$L" "$T/dt"
	check_eq "auto chooses trace" "$(jout .snapshot)" trace
else
	skip_part "--snapshot trace: $TRACE_WHY"
	expect_exit 0 "$CBIMG" backup --json --no-state "$L" "$T/dt"
	check_eq "auto chooses freeze without the tracer" "$(jout .snapshot)" freeze
fi
writer_stop

# --- never freeze the file system holding DEST or the state
mkdir -p "$M/dest"
expect_exit 1 "$CBIMG" backup -q --no-state --snapshot freeze "$L" "$M/dest"
check_grep "DEST on the source's file system: freeze refused, says why" "cannot be frozen: it holds DEST '$M/dest'"
expect_exit 1 "$CBIMG" backup -q --no-state "$L" "$M/dest"
check_grep "... and auto refuses, naming the options" \
	"cannot be frozen \(it holds DEST.*--snapshot exec.*--snapshot none --allow-inconsistent"
expect_exit 1 "$CBIMG" backup -q --state-dir "$M/state" --snapshot freeze "$L" "$T/df"
check_grep "the state directory on it: refused" "it holds the state directory"
check "the file system is writable after the refusals" timeout 5 touch "$M/after-refusal"

# kids PID: its child processes (the guardian), without procps (a fresh
# machine has no pgrep); under load cbimg may take seconds to get there
kids() { cat /proc/"$1"/task/*/children 2>/dev/null | tr ' ' '\n' | grep -v '^$'; }

# --- kill -9 while frozen: the guardian thaws within a second. cbimg is
# held frozen by a full pipe on its stdout (--json-progress blocks).
mkfifo "$T/fifo"
exec 7<>"$T/fifo"
dd if=/dev/zero of="$T/fifo" bs=4096 count=64 oflag=nonblock status=none 2>/dev/null
# (fd 1500: a descriptor above 1024 that the guardian must not keep)
"$CBIMG" backup --no-state --json-progress --snapshot freeze "$L" "$T/dk" >"$T/fifo" 2>"$T/kill.err" \
	1500>"$T/high-fd" &
pid=$!
BGPIDS+=("$pid")
mkdir -p "$T/dk"
for _ in $(seq 300); do [ -n "$(kids "$pid")" ] && break; sleep 0.1; done
sleep 1 # the freeze follows the guardian's start
g=$(kids "$pid" | head -1)
check "the guardian runs while frozen" test -n "$g"
check "the guardian holds no descriptor of cbimg's above 1024 (fd 1500 closed)" \
	test ! -e "/proc/${g:-0}/fd/1500"
check "... nor DEST's files: only stdio, its socket and the mount point" \
	test "$(ls "/proc/${g:-0}/fd" 2>/dev/null | wc -l)" -le 5
(echo x >"$M/probe" && date +%s%N >"$T/probe.done") &
probe=$!
sleep 0.7
check "while cbimg is blocked, the file system is frozen (a write waits)" test ! -e "$T/probe.done"
t0=$(date +%s%N)
kill -9 "$pid" 2>/dev/null
wait "$probe"
t1=$(cat "$T/probe.done" 2>/dev/null || echo 0)
ms=$(((t1 - t0) / 1000000))
check "kill -9 while frozen: writable again within a second (${ms} ms)" test "$ms" -lt 1000
wait "$pid" 2>/dev/null
exec 7>&-
rm -f "$T/fifo"
check_eq "kill -9: no point left" "$(count_files "$T/dk")" 0

# --- --freeze-timeout: the guardian thaws, the backup fails cleanly
mkfifo "$T/fifo"
exec 7<>"$T/fifo"
dd if=/dev/zero of="$T/fifo" bs=4096 count=64 oflag=nonblock status=none 2>/dev/null
mkdir -p "$T/dto"
"$CBIMG" backup --no-state --json-progress --freeze-timeout 1 --snapshot freeze "$L" "$T/dto" \
	>"$T/fifo" 2>"$T/to.err" &
pid=$!
BGPIDS+=("$pid")
for _ in $(seq 600); do [ -n "$(kids "$pid")" ] && break; sleep 0.05; done # the guardian
sleep 0.2 # the freeze follows it at once; the guardian thaws 1 s after its start
t0=$(date +%s%N)
(echo y >"$M/probe2" && date +%s%N >"$T/probe2.done") &
probe=$!
wait "$probe"
ms=$((($(cat "$T/probe2.done") - t0) / 1000000))
check "--freeze-timeout 1: writable again within the timeout and a bit (a write waited ${ms} ms)" \
	test "$ms" -lt 2500
check "--freeze-timeout 1: ... thawed by the guardian while cbimg is still stuck" kill -0 "$pid"
cat "$T/fifo" >/dev/null 7>&- &
drain=$!
wait "$pid"
rc=$?
exec 7>&-
wait "$drain" 2>/dev/null
rm -f "$T/fifo"
check_eq "--freeze-timeout: the backup fails (exit 1)" "$rc" 1
OUT=$(cat "$T/to.err")
check_grep "--freeze-timeout: says why" "freeze.*longer than --freeze-timeout"
check_eq "--freeze-timeout: no point written" "$(count_files "$T/dto")" 0

# --- read-only, then unmounted: no snapshot needed
mount -o remount,ro "$M" || fail "remount ro"
mkdir -p "$T/dro"
expect_exit 0 "$CBIMG" backup --json --no-state --snapshot none "$L" "$T/dro"
check_eq "mounted read-only: none needs no --allow-inconsistent" "$(jout .snapshot)" none
expect_exit 0 "$CBIMG" backup --json --no-state "$L" "$T/dro"
check_eq "mounted read-only: auto takes no snapshot" "$(jout .snapshot)" none
check_eq "mounted read-only: nothing frozen" "$(jout .freeze_ms)" 0
do_umount "$M"
expect_exit 0 "$CBIMG" backup --json --no-state --snapshot freeze "$L" "$T/dro"
check_eq "unmounted: even --snapshot freeze takes none" "$(jout .snapshot)" none

# --- the usage errors
expect_exit 2 "$CBIMG" backup --snapshot sometimes "$L" "$T/dro"
check_grep "an unknown mode: usage error naming the modes" "expected auto, trace, freeze, reflink, exec or none"
expect_exit 2 "$CBIMG" backup --freeze-timeout 0 "$L" "$T/dro"
expect_exit 2 "$CBIMG" backup --no-state --snapshot exec "$L" "$T/dro"
check_grep "exec without a command: usage error" "needs --snapshot-cmd"
expect_exit 2 "$CBIMG" backup --no-state --snapshot reflink "$L" "$T/dro"
check_grep "reflink of a device: usage error" "not a regular file"
finish
