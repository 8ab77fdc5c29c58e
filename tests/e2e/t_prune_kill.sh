#!/bin/bash
# t_prune_kill.sh - kill -9 of cbimg prune at moments spread evenly over its
# run (issue 11), on a plain chain and on an encrypted, split one. After
# each kill: every point that list shows restores bit for bit; the next
# run of the job (a backup at odd moments, a prune at even ones) finishes
# or rolls back the half-done prune; then the removed points are gone,
# verify passes, and the next backup continues the newest point.
#
# PRUNE_KILL_MOMENTS (default 10 per chain: 20 in make check) sets the
# number of moments; tests/stress/prune-kill-sweep.sh runs >= 100 per chain.
# PRUNE_KILL_MIB (default 3) sets the source size, and the changes between
# backups grow with it: with 64 a prune writes tens of MiB (a synthetic full
# of the whole source), so that most kills land while it runs. Each kill is
# counted as landing before the prune changed a file of DEST, while it ran
# (a temporary, a merged image or a removal had happened), or after its end.
# PRUNE_KILL_ONLY=plain or =encrypted sweeps one chain only.
. "$(dirname "$0")/lib.sh"
# The clock shim comes by LD_PRELOAD: in an ASan build the sanitizer's
# runtime then is not first in the library list, which it checks by default.
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}verify_asan_link_order=0"
need_jq

M=${PRUNE_KILL_MOMENTS:-10}
MIB=${PRUNE_KILL_MIB:-3}
export TZ=UTC
SHIM=$T/clock_shim.so
cc -O2 -shared -fPIC -o "$SHIM" "$E2E_DIR/clock_shim.c" -ldl 2>"$T/cc.err" ||
	die "cannot build tests/e2e/clock_shim.c: $(head -3 "$T/cc.err")"
RULE=(--keep-daily 2 --keep-last 1)

# make_chain DIR SRC ARGS...: 8 backups, two a day, into DIR; the SHA-256
# of each point under its id in $T/sums.
make_chain() {
	local d=$1 src=$2 now=1796000000 k id
	shift 2
	mkdir -p "$d" "$T/sums"
	for ((k = 0; k < 8; k++)); do
		dd if=/dev/urandom of="$src" bs=4096 seek=$(((k * 37 % 700) * MIB / 3)) count=$(((20 + k) * MIB / 3)) \
			conv=notrunc status=none
		now=$((now + 43200))
		CBIMG_TEST_TIME=$now LD_PRELOAD=$SHIM "$CBIMG" backup -q --json --no-state --block-size 4K "$@" "$src" "$d" \
			>"$T/bk.json" 2>"$T/bk.err" || die "backup: $(cat "$T/bk.err")"
		id=$(jq -r .point.id "$T/bk.json")
		sha256sum <"$src" | cut -c1-64 >"$T/sums/$id"
	done
}

# files DIR: DEST's files with their sizes, but the catalog and the lock
# file (which a prune touches first thing): what a kill may have changed.
files() {
	(cd "$1" && find . -maxdepth 1 -type f ! -name 'cbimg-catalog*' ! -name '*.lock' -printf '%f %s\n' | sort)
}

# sweep NAME DIR SRC ARGS...: kill prune at M moments of its run on copies of DIR.
sweep() {
	local name=$1 d=$2 src=$3 m t0 t1 dur bad=0 pid id idx finished=0 killed=0 before=0 during=0
	shift 3
	cp -a "$d" "$T/orig"
	files "$T/orig" >"$T/orig.files"
	# the length of an uninterrupted prune, for the spread of the moments
	t0=$(date +%s%N)
	"$CBIMG" prune "$@" "${RULE[@]}" "$d" >/dev/null 2>"$T/pr.err" || die "prune $name: $(cat "$T/pr.err")"
	t1=$(date +%s%N)
	dur=$(((t1 - t0) / 1000)) # microseconds
	echo "  prune of $name takes ${dur} us; killing it at $M moments"
	"$CBIMG" list --json "$d" | jq -r '.[].id' | sort >"$T/want.ids"
	for ((m = 0; m < M; m++)); do
		rm -rf --one-file-system "$d" && cp -a "$T/orig" "$d"
		"$CBIMG" prune "$@" "${RULE[@]}" "$d" >/dev/null 2>&1 &
		pid=$!
		# moment m of M over 1.2 times the run (some kills land after the end)
		sleep "$(printf '0.%06d' $((dur * 12 * m / (10 * M))))"
		if kill -9 "$pid" 2>/dev/null; then
			killed=$((killed + 1))
			wait "$pid" 2>/dev/null
			if [ "$(files "$d")" = "$(cat "$T/orig.files")" ]; then
				before=$((before + 1))
			else
				during=$((during + 1))
			fi
		fi
		wait "$pid" 2>/dev/null
		while read -r id idx; do
			rm -f "$T/out"
			"$CBIMG" restore -q "$@" "$idx" "$T/out" 2>/dev/null &&
				[ "$(sha256sum <"$T/out" | cut -c1-64)" = "$(cat "$T/sums/$id")" ] ||
				{ bad=$((bad + 1)); echo "       | moment $m: $(basename "$idx") does not restore"; }
		done < <("$CBIMG" list --json "$d" 2>/dev/null | jq -r '.[] | "\(.id) \(.index_path)"')
		if ((m % 2)); then # the next backup finishes it (then a prune removes the rest)
			CBIMG_TEST_TIME=1797000000 LD_PRELOAD=$SHIM "$CBIMG" backup -q --json --no-state --block-size 4K "$@" \
				"$src" "$d" >"$T/bk.json" 2>"$T/bk.err"
			rc=$?
			[ "$rc" = 0 ] || [ "$rc" = 5 ] || { bad=$((bad + 1)); echo "       | moment $m: backup exits $rc: $(cat "$T/bk.err")"; }
			grep -q "interrupted prune" "$T/bk.err" "$T/bk.json" && finished=$((finished + 1))
			sha256sum <"$src" | cut -c1-64 >"$T/sums/$(jq -r .point.id "$T/bk.json")"
			[ "$(jq -r .point.type "$T/bk.json")" = incremental ] ||
				{ bad=$((bad + 1)); echo "       | moment $m: the backup after the kill is no incremental"; }
		else
			"$CBIMG" prune "$@" "${RULE[@]}" "$d" >"$T/again.out" 2>&1 ||
				{ bad=$((bad + 1)); echo "       | moment $m: the next prune fails: $(cat "$T/again.out")"; }
			grep -q "interrupted prune" "$T/again.out" && finished=$((finished + 1))
			[ "$("$CBIMG" list --json "$d" | jq -r '.[].id' | sort)" = "$(cat "$T/want.ids")" ] ||
				{ bad=$((bad + 1)); echo "       | moment $m: other points than an uninterrupted prune leaves"; }
		fi
		"$CBIMG" verify -q --no-state "$@" "$d" >"$T/v.out" 2>&1 ||
			{ bad=$((bad + 1)); echo "       | moment $m: verify: $(head -3 "$T/v.out")"; }
	done
	echo "  $name: $M kills: $during while the prune was changing DEST, $before before its first change," \
		"$((M - killed)) after its end; $finished finished by the next run"
	check_eq "$name: kill -9 at $M moments ($killed while running, $finished finished by the next run): invariants hold" "$bad" 0
	rm -rf --one-file-system "$T/orig"
}

if [ "${PRUNE_KILL_ONLY:-plain}" = plain ]; then
	echo "== plain chain"
	head -c ${MIB}M /dev/urandom >"$T/src1"
	make_chain "$T/plain" "$T/src1"
	sweep plain "$T/plain" "$T/src1"
fi

if [ "${PRUNE_KILL_ONLY:-encrypted}" = encrypted ]; then
	echo "== encrypted, split chain"
	export CBIMG_PASSWORD=sweep
	head -c ${MIB}M /dev/urandom >"$T/src2"
	make_chain "$T/enc" "$T/src2" --encrypt --scrypt 12:8:1 --split 1M
	sweep encrypted-split "$T/enc" "$T/src2"
fi
finish
