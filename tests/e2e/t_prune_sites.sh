#!/bin/bash
# t_prune_sites.sh - prune across sites and jobs (issue 11):
#   - an outbox (examples/remote-seeding.sh): list shows its points as
#     "parent elsewhere" and exits 0 (the local state knows the parent), but
#     3 with --no-state, and 3 for a backup disk whose full was moved away;
#   - remote seeding after a prune at the remote site: the full rolls
#     forward there, and the next outbox incremental still applies;
#   - two hosts on one DEST: prune of one while a backup of the other runs;
#   - prune of a --hash sha256 chain (the --used-only chain is in t_prune.sh,
#     on an ext4 loop device);
#   - --json-progress, and SIGTERM during the merge: exit 1, every point
#     restores, no temporary left, the next prune finishes;
#   - the job's lock: a backup or a second prune of a job that a prune holds
#     (stopped with SIGSTOP in its merge) is refused with one line saying a
#     prune (its pid) holds it, --json too; a prune of a job a backup holds
#     says a backup does.
. "$(dirname "$0")/lib.sh"
need_jq
export TZ=UTC
EX=$E2E_DIR/../../examples/remote-seeding.sh

# sum ID FILE: the SHA-256 of FILE as point ID's content
sum() { mkdir -p "$T/sums"; sha256sum <"$2" | cut -c1-64 >"$T/sums/$1"; }

# check_all DEST [ARGS]: every listed point restores bit for bit, verify passes.
check_all() {
	local dest=$1 bad=0 n=0 id idx
	shift
	"$CBIMG" list --json "$@" "$dest" >"$T/list.json" 2>"$T/list.err" ||
		{ fail "list '$dest' exits $?: $(cat "$T/list.err")"; return 1; }
	while read -r id idx; do
		n=$((n + 1))
		rm -f "$T/out"
		if ! "$CBIMG" restore -q "$idx" "$T/out" 2>"$T/re.err"; then
			bad=$((bad + 1)); echo "       | restore $idx: $(cat "$T/re.err")"
		elif [ "$(sha256sum <"$T/out" | cut -c1-64)" != "$(cat "$T/sums/$id" 2>/dev/null)" ]; then
			bad=$((bad + 1)); echo "       | $idx restores other bytes"
		fi
	done < <(jq -r '.[] | "\(.id) \(.index_path)"' "$T/list.json")
	rm -f "$T/out"
	check_eq "all $n points of $(basename "$dest") restore bit for bit" "$bad" 0
	"$CBIMG" verify -q --no-state "$dest" >"$T/v.out" 2>&1 || fail "verify $(basename "$dest"): $(head -5 "$T/v.out")"
}

change() { # change FILE N: N random 64 KiB pieces
	local k
	for ((k = 0; k < $2; k++)); do
		dd if=/dev/urandom of="$1" bs=64K seek=$((RANDOM % 64)) count=1 conv=notrunc status=none
	done
}

echo "== remote seeding, an outbox, a prune at the remote site"
SRC=$T/src
head -c 4M /dev/urandom >"$SRC"
mkdir -p "$T/remote" "$T/outbox"
export JOB=offsite
ship() { # the outbox's files to the remote site, then empty it
	cp "$T/outbox"/* "$T/remote/" && rm -f "$T/outbox"/*
}
CBIMG=$CBIMG bash "$EX" seed "$SRC" "$T/usb" >"$T/ex.out" 2>&1 || die "seed: $(cat "$T/ex.out")"
sum "$("$CBIMG" list --json "$T/usb" | jq -r '.[-1].id')" "$SRC"
cp "$T/usb"/*.cb? "$T/remote/"
for ((k = 1; k <= 4; k++)); do
	change "$SRC" 3
	CBIMG=$CBIMG bash "$EX" outbox "$SRC" "$T/outbox" >"$T/ex.out" 2>&1 || die "outbox $k: $(cat "$T/ex.out")"
	sum "$("$CBIMG" list --json "$T/outbox" | jq -r '.[-1].id')" "$SRC"
	if [ "$k" = 1 ]; then
		expect_exit 0 "$CBIMG" list "$T/outbox"
		check_grep "an outbox's point is 'parent elsewhere'" 'parent elsewhere'
		check_grep "with a note on stderr" 'earlier points are elsewhere'
		expect_exit 0 "$CBIMG" list --json "$T/outbox"
		check_eq "--json: not restorable here, parent elsewhere" "$(jq -c '[.[0].restorable, .[0].parent_elsewhere]' "$T/stdout")" '[false,true]'
		expect_exit 3 "$CBIMG" list --no-state "$T/outbox"
		check_grep "--no-state: no parent!" 'no parent!'
		expect_exit 3 "$CBIMG" list --state-dir "$T/nostate" "$T/outbox"
	fi
	if [ "$k" = 2 ]; then # two points in the outbox: both vouched for
		CBIMG=$CBIMG bash "$EX" outbox "$SRC" "$T/outbox" >"$T/ex.out" 2>&1 || die "outbox $k: $(cat "$T/ex.out")"
		sum "$("$CBIMG" list --json "$T/outbox" | jq -r '.[-1].id')" "$SRC"
		expect_exit 0 "$CBIMG" list --json "$T/outbox"
		check_eq "two outbox points, both 'parent elsewhere'" "$(jq '[.[] | select(.parent_elsewhere)] | length' "$T/stdout")" 2
	fi
	ship
done
check_all "$T/remote"
expect_exit 0 "$CBIMG" prune --json --keep-last 2 "$T/remote"
check_eq "the remote site's full rolls forward" "$(jq -r '[.points[] | select(.action == "synthetic-full")] | length' "$T/stdout")" 1
check_all "$T/remote"
# the next outbox incremental, made from the local state alone, still applies
change "$SRC" 3
CBIMG=$CBIMG bash "$EX" outbox "$SRC" "$T/outbox" >"$T/ex.out" 2>&1 || die "outbox after prune: $(cat "$T/ex.out")"
sum "$("$CBIMG" list --json "$T/outbox" | jq -r '.[-1].id')" "$SRC"
expect_exit 0 "$CBIMG" list "$T/outbox"
ship
check_all "$T/remote"
check_eq "the remote chain: a synthetic full and two incrementals" \
	"$("$CBIMG" list --json "$T/remote" | jq -c '[.[] | .type]')" '["synthetic full","incremental","incremental"]'
# a second prune at the remote site, then one more shipment
expect_exit 0 "$CBIMG" prune --keep-last 1 "$T/remote"
change "$SRC" 2
CBIMG=$CBIMG bash "$EX" outbox "$SRC" "$T/outbox" >"$T/ex.out" 2>&1 || die "outbox after prune 2: $(cat "$T/ex.out")"
sum "$("$CBIMG" list --json "$T/outbox" | jq -r '.[-1].id')" "$SRC"
ship
check_all "$T/remote"
unset JOB

echo "== a backup disk whose full was moved away: damage, whatever the state says"
D=$T/disk
mkdir -p "$D" "$T/away"
for ((k = 0; k < 3; k++)); do
	change "$SRC" 2
	"$CBIMG" backup -q --job disk --block-size 64K "$SRC" "$D" || die "backup disk $k"
done
mv "$D"/*_full0000_* "$T/away/"
expect_exit 3 "$CBIMG" list "$D"
check_grep "the points of a disk whose full is gone: no parent!" 'no parent!'
run "$CBIMG" list "$D"
if grep -q 'parent elsewhere' "$T/stdout"; then fail "a moved-away full shown as 'parent elsewhere'"; else pass "not 'parent elsewhere'"; fi
mv "$T/away"/* "$D/"
expect_exit 0 "$CBIMG" list "$D"

echo "== two hosts on one DEST: a prune of one while a backup of the other runs"
D2=$T/shared
mkdir -p "$D2"
head -c 4M /dev/urandom >"$T/a.img"
head -c 96M /dev/urandom >"$T/b.img"
for ((k = 0; k < 5; k++)); do
	change "$T/a.img" 2
	"$CBIMG" backup -q --json --host pc-a --job daily --block-size 64K "$T/a.img" "$D2" >"$T/bk.json" || die "backup a $k"
	sum "$(jq -r .point.id "$T/bk.json")" "$T/a.img"
	[ "$k" -lt 2 ] || continue
	dd if=/dev/urandom of="$T/b.img" bs=1M seek=$((k * 7)) count=1 conv=notrunc status=none
	"$CBIMG" backup -q --json --host pc-b --job daily --block-size 64K "$T/b.img" "$D2" >"$T/bk.json" || die "backup b $k"
	sum "$(jq -r .point.id "$T/bk.json")" "$T/b.img"
done
b_before=$(cd "$D2" && sha256sum ./pc-b_* | sort)
dd if=/dev/urandom of="$T/b.img" bs=1M seek=50 count=8 conv=notrunc status=none
sum_b=$(sha256sum <"$T/b.img" | cut -c1-64)
"$CBIMG" backup -q --json --host pc-b --job daily --block-size 64K --full "$T/b.img" "$D2" >"$T/bkb.json" 2>"$T/bkb.err" &
bpid=$!
BGPIDS+=("$bpid")
sleep 0.2
expect_exit 0 "$CBIMG" prune --host pc-a --keep-last 2 "$D2"
if kill -0 "$bpid" 2>/dev/null; then b_during=1; else b_during=0; fi
wait "$bpid"
check_eq "the backup of host pc-b during the prune of pc-a succeeds" "$?" 0
echo "$sum_b" >"$T/sums/$(jq -r .point.id "$T/bkb.json")"
echo "  (the backup of pc-b was $([ "$b_during" = 1 ] || echo "no longer ")running when the prune of pc-a ended)"
check_eq "pc-b's earlier files untouched" "$(cd "$D2" && sha256sum $(echo "$b_before" | awk '{print $2}') | sort)" "$b_before"
check_eq "pc-a keeps 2 points" "$("$CBIMG" list --json --host pc-a "$D2" | jq length)" 2
check_eq "pc-b has its 3 points" "$("$CBIMG" list --json --host pc-b "$D2" | jq length)" 3
check_all "$D2"

echo "== a --hash sha256 chain"
D3=$T/sha
mkdir -p "$D3"
head -c 4M /dev/urandom >"$T/s.img"
for ((k = 0; k < 6; k++)); do
	change "$T/s.img" 2
	"$CBIMG" backup -q --json --job s --hash sha256 --block-size 64K "$T/s.img" "$D3" >"$T/bk.json" || die "backup sha256 $k"
	sum "$(jq -r .point.id "$T/bk.json")" "$T/s.img"
done
expect_exit 0 "$CBIMG" prune --json --keep-last 3 "$D3"
check_eq "sha256: the full rolls forward" "$(jq -r '[.points[] | select(.action == "synthetic-full")] | length' "$T/stdout")" 1
check_all "$D3"
check_eq "the merged point keeps its hash" "$("$CBIMG" list --json "$D3" | jq -r '[.[] | .hash] | unique | join(",")')" sha256
change "$T/s.img" 2
"$CBIMG" backup -q --json --job s --hash sha256 --block-size 64K "$T/s.img" "$D3" >"$T/bk.json" || die "backup sha256 after prune"
sum "$(jq -r .point.id "$T/bk.json")" "$T/s.img"
check_eq "the next backup is an incremental" "$(jq -r .point.type "$T/bk.json")" incremental
expect_exit 0 "$CBIMG" prune --keep-last 1 "$D3"
check_all "$D3"

echo "== --json-progress; SIGTERM during a merge"
D4=$T/prog
mkdir -p "$D4"
head -c 64M /dev/urandom >"$T/p.img"
for ((k = 0; k < 3; k++)); do
	change "$T/p.img" 4
	"$CBIMG" backup -q --json --job p --block-size 64K "$T/p.img" "$D4" >"$T/bk.json" || die "backup p $k"
	sum "$(jq -r .point.id "$T/bk.json")" "$T/p.img"
done
cp -a "$D4" "$T/prog.orig"
is_jsonl() { jq -e . "$1" >/dev/null 2>&1 && ! grep -qv '^{.*}$' "$1"; }
"$CBIMG" prune --json-progress --keep-last 1 "$D4" >"$T/jp.out" 2>"$T/jp.err" &
ppid=$!
BGPIDS+=("$ppid")
k=0
while [ ! -s "$T/jp.out" ] && [ "$k" -lt 500 ]; do sleep 0.01; k=$((k + 1)); done
kill -TERM "$ppid" 2>/dev/null
wait "$ppid"
rc=$?
if [ "$rc" = 0 ]; then
	echo "  (the prune ended before SIGTERM reached it: nothing to check of an interruption)"
else
	check_eq "SIGTERM during the merge: exit 1" "$rc" 1
	OUT=$(cat "$T/jp.err")
	check_grep "it says: interrupted" interrupted
	check "stdout stays JSON Lines" is_jsonl "$T/jp.out"
	check_eq "no temporary left" "$(ls -A "$D4" | grep '^\.cbimg-' | grep -vc '\.lock$')" 0
	check_all "$D4"
fi
rm -rf --one-file-system "$D4" && cp -a "$T/prog.orig" "$D4"
expect_exit 0 "$CBIMG" prune --json --json-progress --keep-last 1 "$D4"
check "prune --json --json-progress: JSON Lines" is_jsonl "$T/stdout"
check_eq "progress lines of prune, then the result" \
	"$(jq -r 'if .message_type == "progress" then .command else "result" end' "$T/stdout" | uniq | xargs)" "prune result"
check_eq "the last progress line is final, all bytes done" \
	"$(jq -r 'select(.message_type == "progress") | "\(.final) \(.bytes_done == .bytes_total) \(.bytes_total > 60000000)"' "$T/stdout" | tail -1)" "true true true"
check_eq "the result: one synthetic full" "$(tail -1 "$T/stdout" | jq -r '[.points[] | select(.action == "synthetic-full")] | length')" 1
check_all "$D4"
rm -rf --one-file-system "$D4" && cp -a "$T/prog.orig" "$D4"
expect_exit 0 "$CBIMG" prune -q --keep-last 1 "$D4"
check_eq "prune -q: nothing on stdout" "$(wc -c <"$T/stdout")" 0
check_all "$D4"

echo "== the job's lock names its holder: a prune, a backup"
# stopped PID: stopped by SIGSTOP (state T), not ended (a zombie, Z)
stopped() { [ "$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null)" = T ]; }
# hold_after_progress OUT CMD...: start CMD (--json-progress to OUT) in the
# background, stop it once its first progress line is out (it holds the
# job's lock by then); HOLDER is its pid
hold_after_progress() {
	local out=$1 k=0
	shift
	"$@" >"$out" 2>"$out.err" &
	HOLDER=$!
	BGPIDS+=("$HOLDER")
	while [ ! -s "$out" ] && [ "$k" -lt 500 ]; do sleep 0.01; k=$((k + 1)); done
	kill -STOP "$HOLDER" 2>/dev/null
	stopped "$HOLDER"
}
rm -rf --one-file-system "$D4" && cp -a "$T/prog.orig" "$D4"
if hold_after_progress "$T/hp.out" "$CBIMG" prune --json-progress --keep-last 1 "$D4"; then
	msg="another cbimg (pid $HOLDER) is pruning job 'p' of '$T/p.img' in '$D4'"
	expect_exit 1 "$CBIMG" backup -q --job p --block-size 64K "$T/p.img" "$D4"
	check_eq "a backup while a prune of the job runs is refused: one line, a prune (its pid) holds the job" \
		"$(cat "$T/stderr")" "cbimg: $msg"
	expect_exit 1 "$CBIMG" backup -q --json --job p --block-size 64K "$T/p.img" "$D4"
	check_eq "... --json: the same message" "$(jq -r '"\(.exit) \(.error)"' "$T/stdout")" "1 $msg"
	expect_exit 1 "$CBIMG" prune --keep-last 1 "$D4"
	check_eq "... and a second prune of the job is refused alike" "$(cat "$T/stderr")" "cbimg: $msg"
	expect_exit 1 "$CBIMG" prune --json --keep-last 1 "$D4"
	check_eq "... --json too" "$(jq -r .error "$T/stdout")" "$msg"
	kill -CONT "$HOLDER"
	wait "$HOLDER"
	check_eq "the prune, continued, succeeds" "$?" 0
	check_all "$D4"
else
	kill -CONT "$HOLDER" 2>/dev/null
	wait "$HOLDER"
	skip_part "the prune ended before it could be stopped: its lock was not tested"
fi
dd if=/dev/urandom of="$T/p.img" bs=1M seek=9 count=1 conv=notrunc status=none
if hold_after_progress "$T/hb.out" "$CBIMG" backup --json-progress --job p --block-size 64K --full "$T/p.img" "$D4"
then
	msg="another cbimg (pid $HOLDER) is backing up job 'p' of '$T/p.img' to '$D4'"
	expect_exit 1 "$CBIMG" prune --keep-last 1 "$D4"
	check_eq "a prune while a backup of the job runs is refused: a backup (its pid) holds the job" \
		"$(cat "$T/stderr")" "cbimg: $msg"
	expect_exit 1 "$CBIMG" backup -q --job p --block-size 64K "$T/p.img" "$D4"
	check_eq "... and so is a second backup" "$(cat "$T/stderr")" "cbimg: $msg"
	kill -CONT "$HOLDER"
	wait "$HOLDER"
	check_eq "the backup, continued, succeeds" "$?" 0
else
	kill -CONT "$HOLDER" 2>/dev/null
	wait "$HOLDER"
	skip_part "the backup ended before it could be stopped: its lock was not tested"
fi
finish
