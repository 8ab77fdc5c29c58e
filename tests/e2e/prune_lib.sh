# tests/e2e/prune_lib.sh - the prune scenario of the fault loops
# (t_fault_ops.sh) and of the kill -9 sweep (t_kill_sweep.sh), sourced after
# lib.sh. Four points (a full, three incrementals); `prune --keep-last 2`
# folds the full and the first incremental into the third point, which
# becomes a synthetic full (the full rolls forward), and removes both. A
# failed or killed prune may leave any state between the two, so after it:
#   - list shows a subset of the four points that holds the two kept ones,
#     and each point it shows restores bit for bit;
#   - the next prune (of the same rule) succeeds and leaves exactly the
#     kept two;
#   - the next backup is an incremental of the newest point, and it and
#     the kept points restore.
# The caller's conventions: $W (a working copy: dest/, state/, want,
# problems), $BASE (made here), $SRC.
PRUNE_RULE=(--keep-last 2)
PRUNE_BOPTS=(--threads 2 --block-size 64K)

# prune_base [MIB [NAME]]: $BASE ($T/NAME, base-prune) with dest/ holding
# the four points of a source of MIB (1) MiB of random bytes, state/, all and
# want ("index_file sha256" of each), kept (the two kept).
prune_base() {
	BASE=$T/${2:-base-prune}
	mkdir -p "$BASE/dest" "$BASE/state"
	SRC=$BASE/src.img
	head -c $((${1:-1} * 1024 * 1024)) /dev/urandom >"$SRC"
	: >"$BASE/all"
	for i in 0 1 2 3; do
		CBIMG_STATE_DIR=$BASE/state "$CBIMG" backup --json "${PRUNE_BOPTS[@]}" "$SRC" "$BASE/dest" \
			</dev/null >"$BASE/b.json" 2>"$BASE/b.err" || die "prune: baseline backup $i: $(cat "$BASE/b.err")"
		echo "$(jq -r '.point.index_path | split("/") | last' "$BASE/b.json") $(sha256 "$SRC")" >>"$BASE/all"
		fill_random "$SRC" $((200 * i)) 150
	done
	cp "$BASE/all" "$BASE/want"
	tail -2 "$BASE/all" >"$BASE/kept"
	NEWEST_ID=$(jq -r .point.id "$BASE/b.json")
}

# prune_want WHAT: $W/want from what list shows now (of the four points);
# a problem when it shows another file or lacks a kept point.
prune_want() {
	local what=$1 f
	"$CBIMG" list --json "$W/dest" </dev/null >"$W/plist.json" 2>"$W/plist.err" ||
		{ echo "$what: list failed: $(cat "$W/plist.err")" >>"$W/problems"; return; }
	: >"$W/want"
	for f in $(jq -r '.[].index_file' "$W/plist.json"); do
		grep "^$f " "$BASE/all" >>"$W/want" || echo "$what: list shows an unknown point $f" >>"$W/problems"
	done
	while read -r f _; do
		grep -q "^$f " "$W/want" || echo "$what: the kept point $f is no longer listed" >>"$W/problems"
	done <"$BASE/kept"
}

# prune_restores WHAT: each point of $W/want restores bit for bit (a plain
# chain: check_points without its passphrase probe, to keep the loop short).
prune_restores() {
	local what=$1 f sha
	while read -r f sha; do
		rm -f "$W/r.img"
		if CBIMG_STATE_DIR=$W/state "$CBIMG" restore -q "$W/dest/$f" "$W/r.img" </dev/null >"$W/restore.out" 2>&1; then
			[ "$(sha256 "$W/r.img")" = "$sha" ] || echo "$what: $f restores wrong bytes" >>"$W/problems"
		else
			echo "$what: $f does not restore: $(head -c 300 "$W/restore.out")" >>"$W/problems"
		fi
	done <"$W/want"
	rm -f "$W/r.img"
}

# prune_check WHAT: the invariants above, after a failed or killed prune.
prune_check() {
	local what=$1 nrc=0 p
	prune_want "$what"
	prune_restores "$what"
	"$CBIMG" prune "${PRUNE_RULE[@]}" --state-dir "$W/state" "$W/dest" </dev/null >"$W/next.out" 2>&1 || nrc=$?
	[ "$nrc" = 0 ] || [ "$nrc" = 5 ] ||
		echo "$what: the next prune exits $nrc: $(cat "$W/next.out")" >>"$W/problems"
	"$CBIMG" list --json "$W/dest" </dev/null 2>&1 | jq -r '.[].index_file' >"$W/after.files"
	[ "$(cat "$W/after.files")" = "$(cut -d' ' -f1 "$BASE/kept")" ] ||
		echo "$what: after the next prune list shows [$(echo $(cat "$W/after.files"))]" >>"$W/problems"
	cp "$BASE/kept" "$W/want"
	if CBIMG_STATE_DIR=$W/state "$CBIMG" backup --json "${PRUNE_BOPTS[@]}" "$SRC" "$W/dest" \
		</dev/null >"$W/next.json" 2>"$W/next.err"; then
		p=$(jq -r .point.parent "$W/next.json")
		[ "$p" = "$NEWEST_ID" ] || echo "$what: the next backup's parent is $p, not the newest point" >>"$W/problems"
		echo "$(jq -r '.point.index_path | split("/") | last' "$W/next.json") $(sha256 "$SRC")" >>"$W/want"
		prune_restores "$what, after the next prune and a backup"
	else
		echo "$what: the next backup failed: $(cat "$W/next.err")" >>"$W/problems"
	fi
}
