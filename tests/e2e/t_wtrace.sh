#!/usr/bin/env bash
# The write tracer of the trace snapshot mode (src/lib/wtrace.c, issue 13),
# through tests/e2e/wtrace_helper.c (built beside cbimg, BUILD/tests): it
# starts tracing a loop device, runs a command that writes known blocks,
# collects and prints the marked blocks. Checks exact sets for O_DIRECT
# writes, discards and write-zeroes; at least a file's blocks for buffered
# writes through ext4 (also when they were dirty before tracing began); a
# write in flight when tracing starts (a loop device with slow writes);
# partitions (losetup -P) traced alone and as part of their disk; that a
# tiny buffer flooded reports incomplete and a normal one does not; that a
# killed tracer's instance is removed by the next one.
. "$(dirname "$0")/lib.sh"
need_root_loop
H=${CBIMG_WTRACE_HELPER:-$(dirname "$CBIMG")/tests/wtrace_helper}
[ -x "$H" ] || skip "no $H (the Makefile's check-e2e builds it beside cbimg)"

BS=4096
truncate -s 256M "$T/disk.img"
new_loop "$T/disk.img" || die "losetup"
L=$LOOPDEV
out=$("$H" usable "$L")
[ $? = 0 ] || skip "write tracing not usable here: $out"
echo "  (loop device $L)"

# trace DEV BUF_KIB CMD...: runs the helper; its output in $T/tr, the
# marked runs ("FIRST LAST" per line) in $T/runs, the first line in $HEAD
trace() {
	local dev=$1 kib=$2
	shift 2
	"$H" trace "$dev" "$BS" "$kib" "$@" >"$T/tr" 2>"$T/tr.err" || {
		fail "wtrace_helper trace $dev $*: $(cat "$T/tr.err")"
		return 1
	}
	HEAD=$(head -1 "$T/tr")
	tail -n +2 "$T/tr" >"$T/runs"
}
runs() { tr '\n' ';' <"$T/runs"; }
# marked B: is block B in one of the runs?
marked() { awk -v b="$1" '$1 <= b && b <= $2 { f = 1 } END { exit !f }' "$T/runs"; }
dio() { dd if=/dev/urandom of="$1" bs=$BS seek="$2" count="$3" oflag=direct conv=notrunc status=none; }

# --- O_DIRECT writes at known offsets: exactly their blocks
trace "$L" 0 sh -c "$(declare -f dio); BS=$BS; dio $L 10 3 && dio $L 1000 1 && dio $L 65535 1" &&
	check_eq "O_DIRECT writes: complete" "$HEAD" "complete=1 marked=5" &&
	check_eq "O_DIRECT writes: exactly the blocks written" "$(runs)" "10 12;1000 1000;65535 65535;"

# --- discard and write-zeroes change data: counted as writes
if command -v blkdiscard >/dev/null 2>&1; then
	trace "$L" 0 sh -c "blkdiscard -f -o 1M -l 64K $L && blkdiscard -f -z -o 2M -l 64K $L" &&
		check_eq "discard + write-zeroes: complete" "$HEAD" "complete=1 marked=32" &&
		check_eq "discard + write-zeroes: exactly their blocks" "$(runs)" "256 271;512 527;"
else
	skip_part "no blkdiscard: discard not checked"
fi

# --- reads are not writes; a read-only run marks nothing
trace "$L" 0 dd if="$L" of=/dev/null bs=1M count=64 iflag=direct status=none &&
	check_eq "reads mark nothing" "$HEAD $(runs)" "complete=1 marked=0 "

# --- a flood of 10000 small writes: the default buffer keeps up (complete),
# an 8 KiB buffer cannot (incomplete, never silently)
trace "$L" 0 dd if=/dev/zero of="$L" bs=512 count=10000 oflag=direct status=none &&
	check_eq "10000 writes, default buffer: complete, blocks 0-1249" "$HEAD $(runs)" \
		"complete=1 marked=1250 0 1249;"
trace "$L" 8 dd if=/dev/zero of="$L" bs=512 count=10000 oflag=direct status=none &&
	check_eq "10000 writes, 8 KiB buffer: reported incomplete" "${HEAD%% *}" "complete=0"

# --- a write in flight when tracing starts: submitted before, completed
# after (a loop device on an nbdfuse file whose writes take 4 s, through
# nbdkit's delay filter): its completion event marks it
if command -v nbdfuse >/dev/null 2>&1 && command -v nbdkit >/dev/null 2>&1; then
	F=$T/fuse
	mkdir -p "$F"
	nbdfuse "$F/slow" --command nbdkit -s --filter=delay memory 64M wdelay=4 >"$T/nbdfuse.log" 2>&1 &
	BGPIDS+=($!)
	MOUNTS+=("$F")
	for i in $(seq 50); do
		[ -f "$F/slow" ] && break
		sleep 0.1
	done
	if [ -f "$F/slow" ] && S=$(losetup -f --show "$F/slow"); then
		LOOPS+=("$S")
		dd if=/dev/urandom of="$S" bs=$BS seek=7 count=1 oflag=direct status=none &
		dp=$!
		sleep 0.5
		# the command runs once tracing started: the write must still be
		# in flight then (else, on a slow machine, nothing is checked)
		trace "$S" 0 sh -c "kill -0 $dp 2>/dev/null && touch $T/inflight; while kill -0 $dp 2>/dev/null; do sleep 0.1; done"
		if [ -f "$T/inflight" ]; then
			check_eq "a write in flight when tracing started is marked" "$HEAD $(runs)" "complete=1 marked=1 7 7;"
		else
			skip_part "the write finished before tracing started (a slow machine): in-flight write not checked"
		fi
		wait "$dp"
		losetup -d "$S"
	else
		skip_part "nbdfuse did not come up ($(head -c 300 "$T/nbdfuse.log")): in-flight write not checked"
	fi
	umount "$F" 2>/dev/null
else
	skip_part "no nbdfuse/nbdkit: the write in flight at start not checked"
fi

# --- buffered writes through a mounted ext4: at least the file's blocks
mkfs.ext4 -q -F -b $BS "$L" >"$T/mkfs.out" 2>&1 || die "mkfs.ext4: $(cat "$T/mkfs.out")"
M=$T/mnt
do_mount "$L" "$M" || die "mount $L"
# file_blocks F: the physical blocks of F, one a line
file_blocks() {
	filefrag -e -b$BS "$1" | awk -F'[ .:]+' '/^ *[0-9]+:/ { for (b = $5; b <= $6; b++) print b }'
}
# all_marked F: are all of F's blocks marked? (prints the missing ones)
all_marked() {
	local b miss=0
	for b in $(file_blocks "$1"); do
		marked "$b" || { echo "block $b of $1 not marked"; miss=1; }
	done
	[ "$(file_blocks "$1" | wc -l)" -gt 0 ] || { echo "no blocks for $1"; miss=1; }
	return $miss
}
trace "$L" 0 sh -c "head -c 3M /dev/urandom >$M/a && sync" &&
	check_eq "ext4, file written and synced while tracing: complete" "${HEAD%% *}" "complete=1" &&
	check "ext4: every block of the file is marked" all_marked "$M/a"
# dirty in the page cache before tracing began, written back after
head -c 2M /dev/urandom >"$M/b"
trace "$L" 0 sync &&
	check "ext4: a file dirty before tracing began, synced after: its blocks are marked" all_marked "$M/b"
# rewrite in place (no new allocation) with O_DIRECT through the file system
# list_marked B...: are all these blocks marked?
list_marked() {
	local b
	[ $# -gt 0 ] || return 1
	for b; do marked "$b" || { echo "block $b not marked"; return 1; }; done
}
trace "$L" 0 dd if=/dev/urandom of="$M/a" bs=$BS seek=100 count=4 conv=notrunc oflag=direct status=none &&
	check "ext4: an O_DIRECT rewrite in place marks its blocks" list_marked $(file_blocks "$M/a" | sed -n 101,104p)
do_umount "$M" || die "umount"

# --- partitions: events come on the whole disk, shifted by the start
if command -v sgdisk >/dev/null 2>&1; then
	losetup -d "$L"
	LOOPS=()
	sgdisk -Z "$T/disk.img" >/dev/null 2>&1
	sgdisk -n1:2048:+64M -n2:0:+64M "$T/disk.img" >/dev/null 2>&1 || die "sgdisk"
	L=$(losetup -P -f --show "$T/disk.img") || die "losetup -P"
	LOOPS+=("$L")
	for i in $(seq 50); do
		[ -b "${L}p2" ] && break
		[ "$i" = 10 ] && partx -a "$L" >/dev/null 2>&1
		sleep 0.1
	done
	if [ -b "${L}p2" ]; then
		P2=${L}p2
		start=$(cat "/sys/class/block/$(basename "$P2")/start")
		echo "  (partition $P2 starts at sector $start)"
		trace "$P2" 0 sh -c "$(declare -f dio); BS=$BS; dio $P2 5 2 && dio ${L}p1 7 2 && dio $L 0 1" &&
			check_eq "partition traced: its blocks only, numbered from its start" \
				"$HEAD $(runs)" "complete=1 marked=2 5 6;"
		w=$((start * 512 / BS + 5))
		trace "$L" 0 sh -c "$(declare -f dio); BS=$BS; dio $P2 5 2" &&
			check_eq "whole disk traced, partition written: shifted by the start" "$HEAD $(runs)" \
				"complete=1 marked=2 $w $((w + 1));"
	else
		skip_part "no partition devices for a loop device (losetup -P)"
	fi
else
	skip_part "no sgdisk: partitions not checked"
fi

# --- a regular file cannot be traced: a reason
out=$("$H" usable "$T/disk.img")
check_eq "regular file: not usable" "$?" 77
OUT=$out check_grep "regular file: the reason" "not a block device"

# --- a killed tracer leaves its instance; the next start removes it
TR=$(awk '$3 == "tracefs" { print $2; exit }' /proc/mounts)
"$H" trace "$L" "$BS" 0 sleep 30 >/dev/null 2>&1 &
hp=$!
BGPIDS+=("$hp")
for i in $(seq 50); do
	ls "$TR/instances" 2>/dev/null | grep -q "^cbimg-wtrace-$hp-" && break
	sleep 0.1
done
check "a running tracer has its instance" sh -c "ls '$TR/instances' | grep -q '^cbimg-wtrace-$hp-'"
check "a running tracer's instance cannot be removed (EBUSY)" \
	sh -c "! rmdir '$TR'/instances/cbimg-wtrace-$hp-* 2>/dev/null"
{
	kill -9 "$hp"
	wait "$hp"
} 2>/dev/null # (bash's "Killed" too)
check "kill -9 leaves it behind" sh -c "ls '$TR/instances' | grep -q '^cbimg-wtrace-$hp-'"
trace "$L" 0 true &&
	check "the next start removed the dead tracer's instance" \
		sh -c "! ls '$TR/instances' | grep -q '^cbimg-wtrace-$hp-'"
finish
