#!/bin/bash
# t_prune.sh - cbimg prune (issue 11): keep rules, merged points, synthetic
# fulls, identity of kept points, two jobs on one DEST, an encrypted split
# chain, and kill -9 at random moments.
#
# The source is a 2 MiB file with 4 KiB blocks (fast; the format does not
# care what the source is). Backups are made days apart with
# tests/e2e/clock_shim.c (LD_PRELOAD: CLOCK_REALTIME = $CBIMG_TEST_TIME).
# PRUNE_SEED (default 11) and PRUNE_BACKUPS (default 30) make longer runs:
#     PRUNE_SEED=$RANDOM PRUNE_BACKUPS=200 bash tests/e2e/run.sh t_prune.sh
# A second randomized sequence (root: a loop device) backs up an ext4 file
# system with --used-only: mounted, written, unmounted, backed up, pruned,
# restored, fsck -n (PRUNE_EXT4_BACKUPS, default 12).
. "$(dirname "$0")/lib.sh"
# The clock shim comes by LD_PRELOAD: in an ASan build the sanitizer's
# runtime then is not first in the library list, which it checks by default.
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}verify_asan_link_order=0"
need_jq

SHIM=$T/clock_shim.so
cc -O2 -shared -fPIC -o "$SHIM" "$E2E_DIR/clock_shim.c" -ldl 2>"$T/cc.err" ||
	die "cannot build tests/e2e/clock_shim.c: $(head -3 "$T/cc.err")"
RANDOM=${PRUNE_SEED:-11}
NB=${PRUNE_BACKUPS:-30}
NOW=1796000000 # 2026-11-29
export TZ=UTC

SRC=$T/src
D=$T/dest
mkdir -p "$D" "$T/sums"
head -c 2M /dev/urandom >"$SRC"

# bk ARGS...: one backup at the next time step (1 to 40 hours later); its
# point's SHA-256 is kept under its point id. Sets ID.
bk() {
	NOW=$((NOW + 3600 * (1 + RANDOM % 40)))
	CBIMG_TEST_TIME=$NOW LD_PRELOAD=$SHIM "$CBIMG" backup -q --json --block-size 4K "$@" >"$T/bk.json" 2>"$T/bk.err" ||
		{ fail "backup $*: $(cat "$T/bk.err")"; return 1; }
	ID=$(jq -r .point.id "$T/bk.json")
	sha256sum <"${SRC_NOW:-$SRC}" | cut -c1-64 >"$T/sums/$ID"
}

change() { # a few random blocks of $1 (default the source)
	local f=${1:-$SRC} k
	for ((k = 0; k < 1 + RANDOM % 6; k++)); do
		dd if=/dev/urandom of="$f" bs=4096 seek=$((RANDOM % 509)) count=$((1 + RANDOM % 3)) conv=notrunc status=none
	done
}

# check_all DEST [--password-file F]: every listed point restores bit for
# bit, list exits 0, verify passes.
check_all() {
	local dest=$1 bad=0 n=0 id idx
	shift
	"$CBIMG" list --json "$dest" >"$T/list.json" 2>"$T/list.err" || { fail "list '$dest' exits $?: $(cat "$T/list.err")"; return 1; }
	while read -r id idx; do
		n=$((n + 1))
		rm -f "$T/out"
		if ! "$CBIMG" restore -q "$@" "$idx" "$T/out" 2>"$T/re.err"; then
			bad=$((bad + 1)); echo "       | restore $idx: $(cat "$T/re.err")"
		elif [ "$(sha256sum <"$T/out" | cut -c1-64)" != "$(cat "$T/sums/$id" 2>/dev/null)" ]; then
			bad=$((bad + 1)); echo "       | $idx restores other bytes"
		fi
	done < <(jq -r '.[] | "\(.id) \(.index_path)"' "$T/list.json")
	check_eq "all $n points of $(basename "$dest") restore bit for bit" "$bad" 0
	"$CBIMG" verify -q "$@" --no-state "$dest" >"$T/v.out" 2>&1 || { fail "verify $(basename "$dest"): $(head -5 "$T/v.out")"; return 1; }
}

echo "== randomized sequence (seed ${PRUNE_SEED:-11}, $NB backups)"
RULES=("--keep-last 3" "--keep-daily 3" "--keep-hourly 4" "--keep-weekly 2 --keep-last 1" "--keep-within 3d"
	"--keep-daily 2 --keep-weekly 2" "--keep-last 1" "--keep-chains 1 --keep-last 2" "--keep-monthly 1 --keep-daily 1")
merges=0 synth=0 catbad=0
for ((b = 1; b <= NB; b++)); do
	change
	full=
	[ $((RANDOM % 13)) = 0 ] && full=--full
	bk --job r $full "$SRC" "$D" || break
	newest=$ID
	if [ $((b % 4)) = 0 ]; then
		rule=${RULES[$((RANDOM % ${#RULES[@]}))]}
		# shellcheck disable=SC2086
		"$CBIMG" prune --json $rule "$D" >"$T/pr.json" 2>"$T/pr.err" || { fail "prune $rule: $(cat "$T/pr.err")"; break; }
		merges=$((merges + $(jq '[.points[] | select(.action == "merge")] | length' "$T/pr.json")))
		synth=$((synth + $(jq '[.points[] | select(.action == "synthetic-full")] | length' "$T/pr.json")))
		gone=0
		for id in $(jq -r '.points[] | select(.action == "remove") | .id' "$T/pr.json"); do
			ls "$D" | grep -q "_${id:0:8}" && gone=$((gone + 1))
		done
		check_eq "after prune $rule: removed points are gone" "$gone" 0
		# the prune brought the catalog's rows up to date (no list in between)
		if command -v sqlite3 >/dev/null &&
			[ "$(sqlite3 "$D/cbimg-catalog.sqlite" 'SELECT count(*) FROM points')" != "$(ls "$D"/*.cbx | wc -l)" ]; then
			catbad=$((catbad + 1))
		fi
		kept_newest=$(jq -r --arg n "$newest" '[.points[] | select(.id == $n and .action != "remove")] | length' "$T/pr.json")
		check_eq "the newest point is kept" "$kept_newest" 1
		check_all "$D"
		change
		bk --job r "$SRC" "$D" || break
		check_eq "the next backup continues the newest point" "$(jq -r '.point.parent' "$T/bk.json")" "$newest"
	fi
done
[ "$merges" -gt 0 ] && pass "merges into a kept point: $merges" || fail "no merge happened (seed)"
[ "$synth" -gt 0 ] && pass "synthetic fulls: $synth" || fail "no synthetic full happened (seed)"

echo "== randomized sequence on an ext4 loop device (--used-only)"
ext4_sequence() {
	local NE=${PRUNE_EXT4_BACKUPS:-12} D5=$T/ext4dest M5=$T/mnt dev b k files rule newest fsckbad=0 nf=0 folded=0
	local t0=$SECONDS
	truncate -s 48M "$T/ext4.img"
	new_loop "$T/ext4.img" || { fail "losetup"; return; }
	dev=$LOOPDEV
	mkfs.ext4 -q -F "$dev" >"$T/mkfs.out" 2>&1 || { fail "mkfs.ext4: $(cat "$T/mkfs.out")"; return; }
	mkdir -p "$D5"
	for ((b = 1; b <= NE; b++)); do
		do_mount "$dev" "$M5" || { fail "mount $dev"; return; }
		for ((k = 0; k < 1 + RANDOM % 3; k++)); do
			head -c $((4096 * (1 + RANDOM % 400))) /dev/urandom >"$M5/f$nf"
			nf=$((nf + 1))
		done
		files=("$M5"/f*)
		[ $((RANDOM % 3)) = 0 ] && rm -f "${files[$((RANDOM % ${#files[@]}))]}"
		do_umount "$M5"
		SRC_NOW=/dev/null bk --job e4 --used-only "$dev" "$D5" || return
		newest=$ID
		# what this point restores, before any prune: a used-only point
		# restores the unused blocks as zeros, so not the device's bytes
		rm -f "$T/r4.img"
		"$CBIMG" restore -q "$(jq -r .point.index_path "$T/bk.json")" "$T/r4.img" 2>"$T/re.err" ||
			{ fail "restore after backup $b: $(cat "$T/re.err")"; return; }
		sha256sum <"$T/r4.img" | cut -c1-64 >"$T/sums/$ID"
		if [ $((b % 3)) = 0 ]; then
			rule=${RULES[$((RANDOM % ${#RULES[@]}))]}
			# shellcheck disable=SC2086
			"$CBIMG" prune --json $rule "$D5" >"$T/pr.json" 2>"$T/pr.err" || { fail "ext4: prune $rule: $(cat "$T/pr.err")"; return; }
			folded=$((folded + $(jq '[.points[] | select(.action == "merge" or .action == "synthetic-full")] | length' "$T/pr.json")))
			check_all "$D5"
			# the newest point restores to a file system that fsck finds clean
			rm -f "$T/r4.img"
			"$CBIMG" restore -q "$D5" latest "$T/r4.img" 2>"$T/re.err" || { fail "restore latest: $(cat "$T/re.err")"; return; }
			fsck.ext4 -n -f "$T/r4.img" >"$T/fsck.out" 2>&1 || { fsckbad=$((fsckbad + 1)); echo "       | $(tail -3 "$T/fsck.out")"; }
		fi
	done
	rm -f "$T/r4.img"
	[ "$folded" -gt 0 ] && pass "ext4 used-only: merged images written: $folded" || fail "ext4: no merge happened (seed)"
	check_eq "ext4 used-only: after each prune the newest point restores a clean file system (fsck -n)" "$fsckbad" 0
	check_eq "ext4 used-only: every point is used-only" "$("$CBIMG" list --json "$D5" | jq '[.[] | select(.used_only | not)] | length')" 0
	SRC_NOW=/dev/null bk --job e4 --used-only "$dev" "$D5" &&
		check_eq "ext4: the next backup continues the newest point" "$(jq -r '.point.parent' "$T/bk.json")" "$newest"
	echo "  (ext4 sequence: $((SECONDS - t0)) s)"
}
if ! is_root || ! command -v losetup >/dev/null || ! losetup -f >/dev/null 2>&1 || ! command -v mkfs.ext4 >/dev/null; then
	skip_part "ext4 loop device sequence: needs root, losetup and mkfs.ext4"
else
	ext4_sequence
fi

echo "== log records prune runs; list is right at once"
check_eq "every prune is a run in the log" "$("$CBIMG" log --json "$D" | jq '[.[] | select(.kind == "prune" and .result == "ok")] | length')" $((NB / 4))
check_eq "with the points it removed" "$("$CBIMG" log --json "$D" | jq '[.[] | select(.kind == "prune") | .points_removed] | add > 0')" true
run "$CBIMG" log "$D"
check_grep "log shows prune runs" 'prune: [0-9]+ points? removed'
command -v sqlite3 >/dev/null && check_eq "after each prune the catalog's rows were the files' (no listing between)" "$catbad" 0

echo "== no rule: refused, nothing removed"
before=$(ls "$D" | sort | md5sum)
expect_exit 2 "$CBIMG" prune "$D"
check_eq "nothing removed" "$(ls "$D" | sort | md5sum)" "$before"

echo "== two jobs on one DEST"
D2=$T/two; mkdir -p "$D2"
SRC2=$T/src2
head -c 2M /dev/urandom >"$SRC2"
for ((k = 0; k < 5; k++)); do
	change; bk --job a "$SRC" "$D2"
	change "$SRC2"; SRC_NOW=$SRC2 bk --job b "$SRC2" "$D2"
done
expect_exit 2 "$CBIMG" prune --keep-last 1 "$D2"
b_before=$(cd "$D2" && sha256sum ./*_b_* | sort)
expect_exit 0 "$CBIMG" prune --job a --keep-last 2 "$D2"
check_eq "job b untouched" "$(cd "$D2" && sha256sum ./*_b_* | sort)" "$b_before"
check_eq "job a has 2 points" "$("$CBIMG" list --json --job a "$D2" | jq length)" 2
check_all "$D2"

echo "== encrypted, split chain"
D3=$T/enc; mkdir -p "$D3"
export CBIMG_PASSWORD=prune-test
head -c 3M /dev/urandom >"$T/src3"
for ((k = 0; k < 6; k++)); do
	change "$T/src3"
	SRC_NOW=$T/src3 bk --job e --encrypt --split 1M --scrypt 12:8:1 "$T/src3" "$D3"
done
expect_exit 0 "$CBIMG" prune --keep-daily 2 "$D3"
run ls "$D3"
check_grep "the merged image is split too" '-m0000\.cbi\.001$'
check_all "$D3"
expect_exit 0 "$CBIMG" prune --keep-last 1 "$D3"
check_eq "one point left: a synthetic full" "$("$CBIMG" list --json "$D3" | jq -r '.[0].type')" "synthetic full"
check_all "$D3"
# the DEST holds no seq 0 now, yet it is no outbox: the next run is
# recorded (it once was forgotten, and the catalog with it)
change "$T/src3"
SRC_NOW=$T/src3 bk --job e --encrypt --split 1M --scrypt 12:8:1 "$T/src3" "$D3"
check_eq "the backup after the roll forward is in the log, ok" \
	"$("$CBIMG" log --json --job e "$D3" | jq -r '.[-1] | "\(.kind) \(.result) \(.point.id)"')" "backup ok $ID"
check_all "$D3"
unset CBIMG_PASSWORD

echo "== kill -9 at random moments"
D4=$T/kill; mkdir -p "$D4"
for ((k = 0; k < 8; k++)); do change; bk --job k "$SRC" "$D4"; done
cp -a "$D4" "$T/kill.orig"
bad=0
for ((m = 0; m < 12; m++)); do
	rm -rf --one-file-system "$D4" && cp -a "$T/kill.orig" "$D4"
	"$CBIMG" prune --keep-last 2 --keep-daily 2 "$D4" >/dev/null 2>&1 &
	pid=$!
	sleep "0.00$((RANDOM % 10))$((RANDOM % 10))"
	kill -9 "$pid" 2>/dev/null
	wait "$pid" 2>/dev/null
	# every point still listed restores
	while read -r id idx; do
		rm -f "$T/out"
		"$CBIMG" restore -q "$idx" "$T/out" 2>/dev/null && [ "$(sha256sum <"$T/out" | cut -c1-64)" = "$(cat "$T/sums/$id")" ] ||
			{ bad=$((bad + 1)); echo "       | moment $m: $idx does not restore"; }
	done < <("$CBIMG" list --json "$D4" 2>/dev/null | jq -r '.[] | "\(.id) \(.index_path)"')
	"$CBIMG" prune --keep-last 2 --keep-daily 2 "$D4" >/dev/null 2>"$T/again.err" ||
		{ bad=$((bad + 1)); echo "       | moment $m: the next prune fails: $(cat "$T/again.err")"; }
	"$CBIMG" verify -q --no-state "$D4" >/dev/null 2>&1 || { bad=$((bad + 1)); echo "       | moment $m: verify fails after the next prune"; }
done
check_eq "kill -9 at 12 moments: every listed point restores, the next prune finishes, verify passes" "$bad" 0

finish
