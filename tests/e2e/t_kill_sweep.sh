#!/usr/bin/env bash
# The kill -9 sweep: `cbimg backup` and `cbimg passwd` killed with SIGKILL
# at many moments, and after each kill:
#   - `cbimg list` works and shows the points there were, plus the new one
#     only if the kill came after the point was committed;
#   - every point it shows restores bit for bit (a passwd killed half-way
#     may leave the old or the new passphrase: one of them opens the chain);
#   - the next run (without a kill) succeeds, and what it made restores.
# Moments are of two sorts: exact ones, just before the Nth fsync,
# directory fsync, rename or pwrite (the fault shim's CBIMG_FAULT_KILL,
# tests/fault/faultshim.c), which walk through every step of the commit
# protocol; and timed ones, a SIGKILL from outside after a delay spread over
# the length of an unkilled run.
#
# Short by default (about 30 moments, under a minute: part of make check):
# an incremental and passwd, the first three calls of each kind and then
# every call number 2^k - 1. tests/stress/kill-sweep.sh runs the same with
# hundreds of moments:
#   KILL_SWEEP_LONG=1  a full and an incremental, plain and encrypted
#   KILL_SWEEP_FULL=1  every call of each kind, not a geometric selection
#   KILL_SWEEP_TIMED=N timed moments per scenario (default 3)
#   KILL_SWEEP_MIB=M   source size in MiB (default 1)
# prune: a prune that rolls the full forward (prune_lib.sh has the scenario
# and its invariants), killed before each fsync, directory fsync, rename and
# pwrite of its own files (the catalog's SQLite files are not counted:
# CBIMG_FAULT_IGNORE; the timed moments reach them) and at timed moments.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/prune_lib.sh"
need_jq

SHIM=${CBIMG_FAULT_SHIM:-$(dirname "$CBIMG")/tests/libcbifault.so}
[ -f "$SHIM" ] || skip "fault shim not built: $SHIM (make $(dirname "$CBIMG")/tests/libcbifault.so)"
FAULT_ENV=()
ldd "$CBIMG" 2>/dev/null | grep -q libasan &&
	FAULT_ENV=(ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}verify_asan_link_order=0")

FULL=${KILL_SWEEP_FULL:-0}
TIMED=${KILL_SWEEP_TIMED:-3}
MIB=${KILL_SWEEP_MIB:-1}
BOPTS=(--threads 2 --block-size 64K)
KDF=(--scrypt 12:8:1)
printf 'old\n' >"$T/pw-old"
printf 'new\n' >"$T/pw-new"
printf 'next\n' >"$T/pw-next"
start=$(date +%s)
MOMENTS=0

# ---------------------------------------------------------------- helpers
# fresh: a working copy of $BASE in $W.
fresh() {
	W=$T/w
	rm -rf --one-file-system "$W"
	mkdir -p "$W"
	cp -a "$BASE/dest" "$W/dest"
	cp -a "$BASE/state" "$W/state"
	cp "$BASE/want" "$W/want"
	: >"$W/problems"
}

# killed_at MOMENT cmd...: runs cmd, killed at MOMENT: "KIND:N" (just
# before the Nth call of KIND) or "t:SECONDS". KILLED=1 when it died of
# SIGKILL, RC its status.
killed_at() {
	local m=$1
	shift
	rm -f "$W/fault.log"
	if [ "${m%%:*}" = t ]; then
		"$@" </dev/null >"$W/out" 2>&1 &
		local pid=$!
		sleep "${m#t:}"
		kill -9 "$pid" 2>/dev/null
		wait "$pid" 2>/dev/null
		RC=$?
	else
		(env "${FAULT_ENV[@]+"${FAULT_ENV[@]}"}" LD_PRELOAD="$SHIM" CBIMG_FAULT="$m" CBIMG_FAULT_KILL=1 \
			CBIMG_FAULT_LOG="$W/fault.log" "$@" </dev/null >"$W/out" 2>&1; exit $?) 2>/dev/null
		RC=$?
	fi
	KILLED=0
	[ "$RC" = 137 ] && KILLED=1
}

# opens PASS...: the first passphrase that opens DEST's key file (a
# restore of the newest point without the local state's copy); "" for a
# plain chain.
opens() {
	local p f
	f=$(jq -r '.[-1].index_file' "$W/list.json")
	for p in "$@"; do
		if CBIMG_PASSWORD=$p CBIMG_STATE_DIR=$W/nostate "$CBIMG" restore -q "$W/dest/$f" "$W/probe.img" \
			</dev/null >/dev/null 2>&1; then
			rm -f "$W/probe.img"
			echo "$p"
			return 0
		fi
	done
	rm -f "$W/probe.img"
	return 1
}

# check_points WHAT NEW_SHA PASS...: list shows the points of $W/want and,
# when NEW_SHA is set, perhaps one more (then added to $W/want with that
# SHA-256); each restores with the passphrase that opens the chain.
check_points() {
	local what=$1 newsha=$2 f sha p extra
	shift 2
	if ! "$CBIMG" list --json "$W/dest" </dev/null >"$W/list.json" 2>"$W/list.err"; then
		echo "$what: list failed: $(cat "$W/list.err")" >>"$W/problems"
		return
	fi
	extra=$(jq -r '.[].index_file' "$W/list.json" | sort | comm -23 - <(cut -d' ' -f1 "$W/want" | sort))
	local missing
	missing=$(cut -d' ' -f1 "$W/want" | sort | comm -23 - <(jq -r '.[].index_file' "$W/list.json" | sort))
	[ -z "$missing" ] || echo "$what: points no longer listed: $missing" >>"$W/problems"
	if [ -n "$extra" ]; then
		if [ -n "$newsha" ] && [ "$(echo "$extra" | wc -l)" = 1 ]; then
			echo "$extra $newsha" >>"$W/want"
		else
			echo "$what: unexpected points listed: $extra" >>"$W/problems"
		fi
	fi
	[ -s "$W/want" ] || return 0
	[ $# = 0 ] && set -- ""
	if ! p=$(opens "$@"); then
		echo "$what: no passphrase opens the chain" >>"$W/problems"
		return
	fi
	while read -r f sha; do
		rm -f "$W/r.img"
		if CBIMG_PASSWORD=$p CBIMG_STATE_DIR=$W/state "$CBIMG" restore -q "$W/dest/$f" "$W/r.img" \
			</dev/null >"$W/restore.out" 2>&1; then
			[ "$(sha256 "$W/r.img")" = "$sha" ] || echo "$what: $f restores wrong bytes" >>"$W/problems"
		else
			echo "$what: $f does not restore: $(head -c 300 "$W/restore.out")" >>"$W/problems"
		fi
	done <"$W/want"
	rm -f "$W/r.img"
	PASS_NOW=$p
}

# moments KIND...: the exact moments of an unkilled run whose fault log
# counted the calls ($W/fault.log of a run with CBIMG_FAULT=KIND:huge), then
# TIMED timed ones over $RUN_SECS.
moments() {
	local kind calls n
	for kind in fsync dirfsync rename pwrite; do
		calls=$(awk -v k="$kind" '$1 == "calls" && $2 == k { print $3 }' "$BASE/calls.$kind" 2>/dev/null)
		n=1
		while [ "$n" -le "${calls:-0}" ]; do
			echo "$kind:$n"
			if [ "$FULL" != 1 ] && [ "$n" -ge 3 ]; then
				n=$((n * 2 + 1))
			else
				n=$((n + 1))
			fi
		done
	done
	local i
	for ((i = 1; i <= TIMED; i++)); do
		awk -v s="$RUN_SECS" -v i="$i" -v n="$TIMED" 'BEGIN { printf "t:%.3f\n", s * (i - 0.5) / n }'
	done
}

# count_calls cmd...: counts each kind's calls of an unkilled run of cmd on
# a fresh copy, and its length in seconds ($RUN_SECS).
count_calls() {
	local kind t0 t1
	for kind in fsync dirfsync rename pwrite; do
		fresh
		t0=$(date +%s.%N)
		env "${FAULT_ENV[@]+"${FAULT_ENV[@]}"}" LD_PRELOAD="$SHIM" CBIMG_FAULT="$kind:1000000000" \
			CBIMG_FAULT_LOG="$BASE/calls.$kind" "$@" </dev/null >/dev/null 2>&1
		t1=$(date +%s.%N)
	done
	RUN_SECS=$(awk -v a="$t0" -v b="$t1" 'BEGIN { d = b - a; print (d < 0.05 ? 0.05 : d) }')
}

report() {
	[ "${KILL_SWEEP_VERBOSE:-0}" = 1 ] && echo "  moments: $(moments | tr "\n" " ")"
	local name=$1 n=$2 bad=$3
	MOMENTS=$((MOMENTS + n))
	[ "$bad" = 0 ] && pass "$name: killed at $n moments, invariant held"
}

# ---------------------------------------------------------------- backup
# backup_scenario NAME ENC TYPE
backup_scenario() {
	local name=$1 enc=$2 type=$3 m n=0 bad=0 p sha
	local eopts=()
	[ "$enc" = enc ] && eopts=(--encrypt "${KDF[@]}")
	BASE=$T/base-$name
	rm -rf --one-file-system "$BASE"
	mkdir -p "$BASE/dest" "$BASE/state"
	SRC=$BASE/src.img
	head -c $((MIB * 1024 * 1024)) /dev/urandom >"$SRC"
	: >"$BASE/want"
	if [ "$type" = incr ]; then
		CBIMG_PASSWORD=old CBIMG_STATE_DIR=$BASE/state "$CBIMG" backup --json "${BOPTS[@]}" "${eopts[@]}" \
			"$SRC" "$BASE/dest" </dev/null >"$BASE/b.json" 2>"$BASE/b.err" || die "$name: baseline: $(cat "$BASE/b.err")"
		echo "$(jq -r '.point.index_path | split("/") | last' "$BASE/b.json") $(sha256 "$SRC")" >>"$BASE/want"
		fill_random "$SRC" 128 64
	fi
	sha=$(sha256 "$SRC")
	local cmd=(env CBIMG_PASSWORD=old "$CBIMG" backup -q "${BOPTS[@]}" "${eopts[@]}" "$SRC")
	count_calls env CBIMG_STATE_DIR="$T/w/state" "${cmd[@]}" "$T/w/dest"
	for m in $(moments); do
		fresh
		killed_at "$m" env CBIMG_STATE_DIR="$W/state" "${cmd[@]}" "$W/dest"
		n=$((n + 1))
		[ "$KILLED" = 1 ] || [ "$RC" = 0 ] || echo "$name $m: not killed, exit $RC: $(head -c 300 "$W/out")" >>"$W/problems"
		check_points "$name $m" "$sha" old
		# the next backup succeeds and restores
		if CBIMG_PASSWORD=old CBIMG_STATE_DIR=$W/state "$CBIMG" backup --json "${BOPTS[@]}" "${eopts[@]}" \
			"$SRC" "$W/dest" </dev/null >"$W/next.json" 2>"$W/next.err"; then
			p=$(jq -r '.point.index_path | split("/") | last' "$W/next.json")
			grep -q "^$p " "$W/want" || echo "$p $sha" >>"$W/want"
			check_points "$name $m, the next backup" "" old
		else
			echo "$name $m: the next backup failed: $(cat "$W/next.err")" >>"$W/problems"
		fi
		if [ -s "$W/problems" ]; then
			fail "$(head -c 1500 "$W/problems")"
			bad=$((bad + 1))
		fi
	done
	report "backup $name" "$n" "$bad"
}

# ---------------------------------------------------------------- passwd
passwd_scenario() {
	local name=passwd m n=0 bad=0 from key
	BASE=$T/base-passwd
	rm -rf --one-file-system "$BASE"
	mkdir -p "$BASE/dest" "$BASE/state"
	SRC=$BASE/src.img
	head -c $((MIB * 1024 * 1024)) /dev/urandom >"$SRC"
	: >"$BASE/want"
	CBIMG_PASSWORD=old CBIMG_STATE_DIR=$BASE/state "$CBIMG" backup --json "${BOPTS[@]}" --encrypt "${KDF[@]}" \
		"$SRC" "$BASE/dest" </dev/null >"$BASE/b.json" 2>"$BASE/b.err" || die "passwd: baseline: $(cat "$BASE/b.err")"
	echo "$(jq -r '.point.index_path | split("/") | last' "$BASE/b.json") $(sha256 "$SRC")" >>"$BASE/want"
	key=$(basename "$(ls "$BASE/dest"/*.cbk)")
	local cmd=("$CBIMG" passwd -q --password-file "$T/pw-old" --new-password-file "$T/pw-new" "${KDF[@]}")
	count_calls "${cmd[@]}" --state-dir "$T/w/state" "$T/w/dest/$key"
	for m in $(moments); do
		fresh
		killed_at "$m" "${cmd[@]}" --state-dir "$W/state" "$W/dest/$key"
		n=$((n + 1))
		[ "$KILLED" = 1 ] || [ "$RC" = 0 ] || echo "$name $m: not killed, exit $RC: $(head -c 300 "$W/out")" >>"$W/problems"
		check_points "$name $m" "" old new
		from=$T/pw-old
		[ "${PASS_NOW:-}" = new ] && from=$T/pw-new
		if "$CBIMG" passwd -q --password-file "$from" --new-password-file "$T/pw-next" "${KDF[@]}" \
			--state-dir "$W/state" "$W/dest/$key" </dev/null >"$W/next.out" 2>&1; then
			check_points "$name $m, the next passwd" "" next
		else
			echo "$name $m: the next passwd failed: $(cat "$W/next.out")" >>"$W/problems"
		fi
		if [ -s "$W/problems" ]; then
			fail "$(head -c 1500 "$W/problems")"
			bad=$((bad + 1))
		fi
	done
	report "$name" "$n" "$bad"
}

# ---------------------------------------------------------------- prune
prune_scenario() {
	local name=prune m n=0 bad=0
	prune_base
	export CBIMG_FAULT_IGNORE=cbimg-catalog
	local cmd=("$CBIMG" prune "${PRUNE_RULE[@]}")
	count_calls "${cmd[@]}" --state-dir "$T/w/state" "$T/w/dest"
	for m in $(moments); do
		fresh
		killed_at "$m" "${cmd[@]}" --state-dir "$W/state" "$W/dest"
		n=$((n + 1))
		[ "$KILLED" = 1 ] || [ "$RC" = 0 ] || echo "$name $m: not killed, exit $RC: $(head -c 300 "$W/out")" >>"$W/problems"
		prune_check "$name $m"
		if [ -s "$W/problems" ]; then
			fail "$(head -c 1500 "$W/problems")"
			bad=$((bad + 1))
		fi
	done
	unset CBIMG_FAULT_IGNORE
	report "$name" "$n" "$bad"
}

backup_scenario plain-incr plain incr
passwd_scenario
prune_scenario
if [ "${KILL_SWEEP_LONG:-0}" = 1 ]; then
	backup_scenario enc-full enc full
	backup_scenario plain-full plain full
	backup_scenario enc-incr enc incr
fi
echo "  ($MOMENTS moments in $(($(date +%s) - start)) s)"
finish
