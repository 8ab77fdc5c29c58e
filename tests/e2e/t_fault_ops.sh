#!/usr/bin/env bash
# Fault injection (tests/fault/faultshim.c) beyond the backup itself, which
# t_fault.sh covers: the Nth fsync, directory fsync, rename, pwrite or
# allocation fails in
#   - `cbimg passwd` of an encrypted chain (the key files in DEST and in the
#     local state);
#   - `cbimg catalog rebuild`;
#   - the catalog's updates during a backup (run begin and end, the new
#     point's rows): CBIMG_FAULT_ONLY counts the catalog's files alone, so
#     that every one of its writes is failed in turn;
#   - `cbimg prune` that folds two points into a synthetic full (the full
#     rolls forward): its merged image, its removals, its catalog rows, the
#     reads of its digest, which reads the merged image back (a failed one
#     makes the prune write the image again without reading it back, and
#     succeed with a note), and the fdatasync in mid-copy of a merged image
#     of over 64 MiB.
# After each failure:
#   - every point that `cbimg list` shows restores bit for bit (with the
#     old or the new passphrase: a passwd that failed half-way may leave
#     either), and list shows exactly the points there were (plus the new
#     one for a backup that says it succeeded);
#   - the next run of the same command, without faults, succeeds, and every
#     point then restores.
. "$(dirname "$0")/lib.sh"
need_jq

SHIM=${CBIMG_FAULT_SHIM:-$(dirname "$CBIMG")/tests/libcbifault.so}
[ -f "$SHIM" ] || skip "fault shim not built: $SHIM (make $(dirname "$CBIMG")/tests/libcbifault.so)"

FAULT_ENV=()
MALLOC=1
if ldd "$CBIMG" 2>/dev/null | grep -q libasan; then
	MALLOC=0
	skip_part "malloc faults: an AddressSanitizer build (its allocator must own every allocation)"
	FAULT_ENV=(ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}verify_asan_link_order=0")
fi
BOPTS=(-q --threads 2 --block-size 64K)
KDF=(--scrypt 12:8:1)
start=$(date +%s)
INJECTED=0

# ---------------------------------------------------------------- helpers
# faulty KIND N ONLY cmd...: runs cmd with the Nth call of KIND failing
# (ONLY: count only files whose path contains it); output in $W/out, status
# in $RC, HIT=1 when the fault was reached.
faulty() {
	local kind=$1 n=$2 only=$3
	shift 3
	rm -f "$W/fault.log"
	# (a subshell: the shell's own "Segmentation fault" note stays out of the log)
	(env "${FAULT_ENV[@]+"${FAULT_ENV[@]}"}" LD_PRELOAD="$SHIM" CBIMG_FAULT="$kind:$n" CBIMG_FAULT_ONLY="$only" \
		CBIMG_FAULT_IGNORE="${IGN:-}" CBIMG_FAULT_LOG="$W/fault.log" "$@" </dev/null >"$W/out" 2>&1; exit $?) 2>/dev/null
	RC=$?
	HIT=0
	grep -q '^hit' "$W/fault.log" 2>/dev/null && HIT=1
}

# opens DIR PASS...: the first passphrase that opens DIR's key file (a
# restore of the newest point without the local state's copy), or nothing.
opens() {
	local d=$1 p f
	shift
	f=$(jq -r '.[-1].index_file' "$W/list.json")
	for p in "$@"; do
		if CBIMG_PASSWORD=$p CBIMG_STATE_DIR=$W/nostate "$CBIMG" restore -q "$d/$f" "$W/probe.img" \
			</dev/null >/dev/null 2>&1; then
			rm -f "$W/probe.img"
			echo "$p"
			return 0
		fi
	done
	rm -f "$W/probe.img"
	return 1
}

# check_points WHAT PASS...: list works, shows the points of $W/want
# ("index_file sha" lines) and each restores with one of the passphrases.
check_points() {
	local what=$1 d=$W/dest f sha got p
	shift
	if ! "$CBIMG" list --json "$d" </dev/null >"$W/list.json" 2>"$W/list.err"; then
		echo "$what: list failed: $(cat "$W/list.err")" >>"$W/problems"
		return
	fi
	got=$(jq -r '.[].index_file' "$W/list.json" | sort)
	[ "$got" = "$(cut -d' ' -f1 "$W/want" | sort)" ] ||
		echo "$what: list shows [$(echo $got)], expected [$(cut -d' ' -f1 "$W/want" | sort | xargs)]" >>"$W/problems"
	[ -s "$W/want" ] || return 0
	[ $# = 0 ] && set -- ""
	if ! p=$(opens "$d" "$@"); then
		echo "$what: no passphrase opens the chain any more" >>"$W/problems"
		return
	fi
	while read -r f sha; do
		rm -f "$W/r.img"
		if CBIMG_PASSWORD=$p CBIMG_STATE_DIR=$W/state "$CBIMG" restore -q "$d/$f" "$W/r.img" \
			</dev/null >"$W/restore.out" 2>&1; then
			[ "$(sha256 "$W/r.img")" = "$sha" ] || echo "$what: $f restores wrong bytes" >>"$W/problems"
		else
			echo "$what: $f does not restore: $(head -c 300 "$W/restore.out")" >>"$W/problems"
		fi
	done <"$W/want"
	rm -f "$W/r.img"
	PASS_NOW=$p
}

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

# plans: "KIND:STEP" with STEP 1 (every call), geo (every call to the
# 4th, then each next one half as far again) or geo2 (then twice as far). The catalog's many SQLite
# writes are stepped through geometrically unless FAULT_FULL=1.
# A third field names files whose calls are not counted (IGN, the shim's
# CBIMG_FAULT_IGNORE). PLANS, when set, replaces the list.
PWRITE_STEP=1
PLANS=
plans() {
	if [ -n "$PLANS" ]; then
		echo "$PLANS"
		return
	fi
	echo "fsync:$PWRITE_STEP dirfsync:1 rename:1 pwrite:$PWRITE_STEP"
	[ "$MALLOC" = 1 ] && echo "malloc:geo"
}

next_n() {
	if [ "$2" = geo ] && [ "$1" -ge 4 ]; then echo $(($1 + 1 + $1 / 2));
	elif [ "$2" = geo2 ] && [ "$1" -ge 4 ]; then echo $(($1 * 2 + 1));
	else echo $(($1 + 1)); fi
}

# loop NAME BODY: for every plan and N until a run no longer reaches
# its fault, fresh copy, then BODY KIND N (which appends to $W/problems).
loop() {
	local name=$1 body=$2 plan kind step n injected bad
	for plan in $(plans); do
		IFS=: read -r kind step IGN <<<"$plan"
		n=1 injected=0 bad=0
		while :; do
			fresh
			"$body" "$kind" "$n"
			if [ -s "$W/problems" ]; then
				fail "$(head -c 2000 "$W/problems")"
				bad=1
			fi
			[ "$HIT" = 1 ] || break
			injected=$((injected + 1))
			n=$(next_n "$n" "$step")
		done
		INJECTED=$((INJECTED + injected))
		[ "$bad" = 0 ] && pass "$name: $injected $kind failures ($([ "${step#geo}" != "$step" ] &&
			echo "stepped up to call $n" || echo "every call to $n")${IGN:+; calls on $IGN files not counted}), invariant held"
		IGN=
	done
}

# base NAME ENC: $BASE with a full and an incremental in dest/, the local
# state in state/ and $BASE/want.
base() {
	local p sha
	BASE=$T/base-$1
	mkdir -p "$BASE/dest" "$BASE/state"
	SRC=$BASE/src.img
	head -c $((1024 * 1024)) /dev/urandom >"$SRC"
	: >"$BASE/want"
	local eopts=()
	[ "$2" = enc ] && eopts=(--encrypt "${KDF[@]}")
	for i in 0 1; do
		CBIMG_PASSWORD=old CBIMG_STATE_DIR=$BASE/state "$CBIMG" backup --json "${BOPTS[@]:1}" "${eopts[@]}" \
			"$SRC" "$BASE/dest" </dev/null >"$BASE/b.json" 2>"$BASE/b.err" || die "$1: baseline backup $i: $(cat "$BASE/b.err")"
		p=$(jq -r '.point.index_path' "$BASE/b.json")
		echo "$(basename "$p") $(sha256 "$SRC")" >>"$BASE/want"
		fill_random "$SRC" 256 128
	done
}

# ---------------------------------------------------------------- passwd
printf 'old\n' >"$T/pw-old"
printf 'new\n' >"$T/pw-new"
printf 'next\n' >"$T/pw-next"

passwd_body() {
	local kind=$1 n=$2 key
	key=$(ls "$W/dest"/*.cbk)
	faulty "$kind" "$n" "" "$CBIMG" passwd -q --password-file "$T/pw-old" --new-password-file "$T/pw-new" \
		"${KDF[@]}" --state-dir "$W/state" "$key"
	if [ "$HIT" = 0 ]; then
		[ "$RC" = 0 ] || echo "passwd $kind:$n: no fault, exit $RC: $(cat "$W/out")" >>"$W/problems"
		check_points "passwd $kind:$n (no fault)" new
		return
	fi
	[ "$RC" -lt 128 ] || [ "$kind" = malloc ] || echo "passwd $kind:$n: killed by signal $((RC - 128))" >>"$W/problems"
	check_points "passwd $kind:$n" old new
	# The next run, from the passphrase that opens DEST's key file now. The
	# same command again (old to new) takes up a run that stopped between
	# DEST's key file and the state's copy (the state's copy still opens with
	# the old one); it fails, with exit 4, when every copy was already
	# rewrapped and only a directory sync failed. Counted and shown.
	local from=$T/pw-old
	if [ "${PASS_NOW:-}" = new ]; then
		from=$T/pw-new
		"$CBIMG" passwd -q --password-file "$T/pw-old" --new-password-file "$T/pw-new" "${KDF[@]}" \
			--state-dir "$W/state" "$key" </dev/null >/dev/null 2>&1 || RETRY_FAILS=$((RETRY_FAILS + 1))
	fi
	if ! "$CBIMG" passwd -q --password-file "$from" --new-password-file "$T/pw-next" "${KDF[@]}" \
		--state-dir "$W/state" "$key" </dev/null >"$W/next.out" 2>&1; then
		echo "passwd $kind:$n: the next passwd failed: $(cat "$W/next.out")" >>"$W/problems"
		return
	fi
	check_points "passwd $kind:$n, after the next passwd" next
	# and the chain goes on under the new passphrase
	if CBIMG_PASSWORD=next CBIMG_STATE_DIR=$W/state "$CBIMG" backup --json "${BOPTS[@]:1}" "${KDF[@]}" \
		"$SRC" "$W/dest" </dev/null >"$W/next.json" 2>"$W/next.err"; then
		echo "$(jq -r '.point.index_path | split("/") | last' "$W/next.json") $(sha256 "$SRC")" >>"$W/want"
		check_points "passwd $kind:$n, after the next backup" next
	else
		echo "passwd $kind:$n: the next backup failed: $(cat "$W/next.err")" >>"$W/problems"
	fi
}

RETRY_FAILS=0
base passwd enc
loop passwd passwd_body
[ "$RETRY_FAILS" = 0 ] ||
	echo "  NOTE: $RETRY_FAILS failed passwd run(s) left DEST's key file under the new passphrase and the local" \
		"state's copy under the old one; the same passwd again (old to new) then exits 4, new to new works"

# ---------------------------------------------------------- catalog rebuild
rebuild_body() {
	local kind=$1 n=$2
	faulty "$kind" "$n" "" "$CBIMG" catalog -q rebuild "$W/dest"
	if [ "$HIT" = 0 ]; then
		[ "$RC" = 0 ] || echo "rebuild $kind:$n: no fault, exit $RC: $(cat "$W/out")" >>"$W/problems"
		check_points "rebuild $kind:$n (no fault)" old
		return
	fi
	[ "$RC" -lt 128 ] || [ "$kind" = malloc ] || echo "rebuild $kind:$n: killed by signal $((RC - 128))" >>"$W/problems"
	check_points "rebuild $kind:$n" old
	"$CBIMG" catalog -q rebuild "$W/dest" </dev/null >"$W/next.out" 2>&1 ||
		echo "rebuild $kind:$n: the next rebuild failed: $(cat "$W/next.out")" >>"$W/problems"
	check_points "rebuild $kind:$n, after the next rebuild" old
}

[ "${FAULT_FULL:-0}" = 1 ] || PWRITE_STEP=geo
base rebuild plain
loop "catalog rebuild" rebuild_body

# ------------------------------------- the catalog's updates during a backup
# Only the catalog's files count (CBIMG_FAULT_ONLY): its run begin, its run
# end and the new point's rows. A catalog failure is a warning, so the
# backup itself succeeds.
catbackup_body() {
	local kind=$1 n=$2
	faulty "$kind" "$n" cbimg-catalog env CBIMG_STATE_DIR="$W/state" "$CBIMG" backup --json "${BOPTS[@]:1}" \
		"$SRC" "$W/dest"
	# a catalog that could not be updated is a warning: exit 5 (issue 14)
	if [ "$RC" = 0 ] || [ "$RC" = 5 ]; then
		echo "$(jq -r '.point.index_path | split("/") | last' "$W/out" 2>/dev/null) $(sha256 "$SRC")" >>"$W/want"
	elif [ "$HIT" = 1 ] && [ "$kind" = malloc ]; then
		# an allocation may fail outside the catalog's own code too
		:
	else
		echo "catalog-in-backup $kind:$n: exit $RC: $(head -c 500 "$W/out")" >>"$W/problems"
	fi
	[ "$RC" -lt 128 ] || [ "$kind" = malloc ] || echo "catalog-in-backup $kind:$n: killed by signal $((RC - 128))" >>"$W/problems"
	check_points "catalog-in-backup $kind:$n"
	local nrc=0
	CBIMG_STATE_DIR=$W/state "$CBIMG" backup --json "${BOPTS[@]:1}" "$SRC" "$W/dest" \
		</dev/null >"$W/next.json" 2>"$W/next.err" || nrc=$?
	if [ "$nrc" = 0 ] || [ "$nrc" = 5 ]; then
		echo "$(jq -r '.point.index_path | split("/") | last' "$W/next.json") $(sha256 "$SRC")" >>"$W/want"
		check_points "catalog-in-backup $kind:$n, after the next backup"
	else
		echo "catalog-in-backup $kind:$n: the next backup failed: $(cat "$W/next.err")" >>"$W/problems"
	fi
}

base catbackup plain
fill_random "$SRC" 0 64
# allocation faults would count every allocation, not the catalog's alone
MALLOC_SAVED=$MALLOC
MALLOC=0
loop "catalog updates in a backup" catbackup_body
MALLOC=$MALLOC_SAVED

# ------------------------------------------------------------------ prune
# A prune that rolls the full forward, failed at each call; the scenario and
# its invariants are in prune_lib.sh (shared with t_kill_sweep.sh). fsync and
# pwrite are stepped through every call with the catalog's files not counted
# (the merged image's; a failure in the catalog is a note, and the sections
# above fail its writes), directory fsyncs and renames through every call,
# allocations at calls 1-4 and then twice as far each time: kept short, as
# this whole script runs in make check.
. "$(dirname "$0")/prune_lib.sh"
prune_body() {
	local kind=$1 n=$2
	faulty "$kind" "$n" "" "$CBIMG" prune "${PRUNE_RULE[@]}" --state-dir "$W/state" "$W/dest"
	[ "$RC" -lt 128 ] || [ "$kind" = malloc ] || echo "prune $kind:$n: killed by signal $((RC - 128))" >>"$W/problems"
	[ "$HIT" = 1 ] || [ "$RC" = 0 ] || echo "prune $kind:$n: no fault, exit $RC: $(cat "$W/out")" >>"$W/problems"
	prune_check "prune $kind:$n"
}

prune_base
PLANS="fsync:1:cbimg-catalog dirfsync:1 rename:1 pwrite:1:cbimg-catalog"
[ "$MALLOC" = 1 ] && PLANS="$PLANS malloc:geo2"
loop prune prune_body
PLANS=
# the merged image's digest reads the file back (sfile.c, copy mode): each
# of its reads fails in turn (only the temporary file's reads are counted).
# A file system that does not read back what was just written (fusefat)
# must not stop a prune: it writes the image again, its digest computed
# from memory, with a note, and succeeds (prune.c). With SYNC_FAIL=1, a
# failed sync (below) must fail the prune instead: exit 1, one line.
prune_pread_body() {
	local kind=$1 n=$2
	faulty "$kind" "$n" ".tmp" "$CBIMG" prune "${PRUNE_RULE[@]}" --state-dir "$W/state" "$W/dest"
	[ "$RC" -lt 128 ] || echo "prune $kind:$n: killed by signal $((RC - 128))" >>"$W/problems"
	[ "$HIT" = 1 ] || [ "$RC" = 0 ] || echo "prune $kind:$n: no fault, exit $RC: $(cat "$W/out")" >>"$W/problems"
	if [ "$HIT" = 1 ] && [ "${SYNC_FAIL:-0}" = 1 ]; then
		[ "$RC" = 1 ] || echo "prune $kind:$n: a failed sync of the merged image: exit $RC, not 1" >>"$W/problems"
		grep -q "^cbimg: unable to write .*: Input/output error$" "$W/out" ||
			echo "prune $kind:$n: no one-line I/O error: $(head -c 300 "$W/out")" >>"$W/problems"
	elif [ "$HIT" = 1 ]; then
		[ "$RC" = 0 ] || echo "prune $kind:$n: a failed read-back of the merged image: exit $RC, not 0: $(head -c 300 "$W/out")" >>"$W/problems"
		grep -q "^note: '.*' did not read back as written (Input/output error): written again without reading it back$" "$W/out" ||
			echo "prune $kind:$n: no note of the read-back: $(head -c 300 "$W/out")" >>"$W/problems"
	fi
	[ "$HIT" = 0 ] || [ -z "$(find "$W/dest" -name '*.tmp')" ] ||
		echo "prune $kind:$n: a temporary file left: $(find "$W/dest" -name '*.tmp')" >>"$W/problems"
	prune_check "prune $kind:$n"
}
PLANS="pread:1"
loop "prune (the digest's reads of the merged image)" prune_pread_body
PLANS=
# a merged image of over 64 MiB is made durable as it is written (sfile.c,
# SFW_FLUSH_STEP, by the flusher's thread): the first sync of the temporary
# file is that fdatasync in mid-copy, whose failure Linux reports once only,
# so the prune must fail on it (at the writer's next step or at the seal),
# never succeed past it
prune_base 80 base-prune-big
PLANS="fsync:1"
SYNC_FAIL=1
loop "prune (an fdatasync in mid-copy of an 80 MiB merged image)" prune_pread_body
SYNC_FAIL=0
PLANS=

echo "  ($INJECTED injected failures in $(($(date +%s) - start)) s)"
finish
