#!/usr/bin/env bash
# A backup killed with SIGKILL in the middle leaves the destination as it was:
# the earlier points are listed and verify, no new .cbi/.cbx appears, and the
# next backup succeeds.
. "$(dirname "$0")/lib.sh"
need_jq

D=$T/dest
mkdir -p "$D"

# Earlier points: a full and an incremental of a small source (job "small").
head -c $((4 * 1024 * 1024)) /dev/urandom >"$T/small.img"
expect_exit 0 "$CBIMG" backup -q --job small "$T/small.img" "$D" || die "backup of the small source"
fill_random "$T/small.img" 512 64
SHA_SMALL=$(sha256 "$T/small.img")
expect_exit 0 "$CBIMG" backup -q --job small "$T/small.img" "$D" || die "incremental of the small source"
list_json "$D" || die "list --json"
check_eq "2 earlier points" "$(jqr 'length')" 2
cp "$T/list.json" "$T/list-before.json"
before=$(cd "$D" && ls -1 -- *.cbi *.cbx | sort)

# A 512 MiB random source, backed up slowly (one thread, high level) so that
# the kill lands in the middle.
head -c $((512 * 1024 * 1024)) /dev/urandom >"$T/big.img" || die "creating the 512 MiB source"
SHA_BIG=$(sha256 "$T/big.img")

"$CBIMG" backup -q --job big --threads 1 --level 19 "$T/big.img" "$D" </dev/null >"$T/bg.out" 2>&1 &
pid=$!
BGPIDS+=("$pid")
seen=0
for _ in $(seq 1 1000); do      # up to ~10 s
	if [ -n "$(find "$D" -maxdepth 1 -name '*.tmp' -print -quit)" ]; then
		seen=1
		break
	fi
	kill -0 "$pid" 2>/dev/null || break
	sleep 0.01
done
sleep 0.3
if kill -0 "$pid" 2>/dev/null; then
	kill -9 "$pid"
	wait "$pid" 2>/dev/null
	killed=1
else
	wait "$pid" 2>/dev/null
	killed=0
fi
BGPIDS=()
check_eq "a temporary file existed while the backup ran" "$seen" 1
if [ "$killed" = 1 ]; then
	pass "backup was killed while running"
else
	fail "backup finished before it could be killed (exit status unknown); test inconclusive"
	sed 's/^/       | /' "$T/bg.out"
fi

after=$(cd "$D" && ls -1 -- *.cbi *.cbx | sort)
check_eq "no .cbi/.cbx file appeared" "$after" "$before"
if list_json "$D"; then
	check_eq "list shows only the earlier points" "$(jqr '[.[].id] | join(",")')" \
		"$(jq -r '[.[].id] | join(",")' "$T/list-before.json")"
else
	fail "list --json after the kill"; cat "$T/list.err"
fi
expect_exit 0 "$CBIMG" verify "$D"
f=$(jq -r '.[1].p' "$T/list-before.json")
expect_exit 0 "$CBIMG" restore -q "$f" "$T/rsmall.img" &&
	check_eq "earlier point still restores" "$(sha256 "$T/rsmall.img")" "$SHA_SMALL"

# The next backup of the big source succeeds (leftover .tmp files do not matter).
expect_exit 0 "$CBIMG" backup -q --job big --level 1 "$T/big.img" "$D"
if list_json "$D"; then
	check_eq "3 points after the next backup" "$(jqr 'length')" 3
	big=$(jqr '[.[] | select(.job == "big")] | .[0]')
	check_eq "new point is a full" "$(printf '%s' "$big" | jq -r .type)" full
	f=$(printf '%s' "$big" | jq -r .p)
	rm -f "$T/rsmall.img"
	expect_exit 0 "$CBIMG" restore -q "$f" "$T/rbig.img" &&
		check_eq "restore of the big source" "$(sha256 "$T/rbig.img")" "$SHA_BIG"
	rm -f "$T/rbig.img"
fi

# Killing an incremental of the same chain leaves the chain usable.
fill_random "$T/big.img" 0 $((64 * 1024))
SHA_BIG2=$(sha256 "$T/big.img")
before=$(cd "$D" && ls -1 -- *.cbi *.cbx | sort)
"$CBIMG" backup -q --job big --threads 1 --level 19 "$T/big.img" "$D" </dev/null >"$T/bg.out" 2>&1 &
pid=$!
BGPIDS+=("$pid")
for _ in $(seq 1 1000); do
	[ -n "$(find "$D" -maxdepth 1 -name '*.tmp' -newer "$T/bg.out" -print -quit)" ] && break
	kill -0 "$pid" 2>/dev/null || break
	sleep 0.01
done
sleep 0.3
if kill -0 "$pid" 2>/dev/null; then
	kill -9 "$pid"
	wait "$pid" 2>/dev/null
	after=$(cd "$D" && ls -1 -- *.cbi *.cbx | sort)
	check_eq "killed incremental: no .cbi/.cbx file appeared" "$after" "$before"
	expect_exit 0 "$CBIMG" verify "$D"
else
	wait "$pid" 2>/dev/null
	skip_part "incremental finished before the kill; kill-during-incremental not checked"
fi
BGPIDS=()
expect_exit 0 "$CBIMG" backup -q --job big "$T/big.img" "$D"
if list_json "$D"; then
	inc=$(jqr '[.[] | select(.job == "big" and .seq == 1)] | .[0]')
	check_eq "incremental after the killed one has seq 1" "$(printf '%s' "$inc" | jq -r .type)" incremental
	f=$(printf '%s' "$inc" | jq -r .p)
	expect_exit 0 "$CBIMG" restore -q "$f" "$T/rbig.img" &&
		check_eq "restore of the incremental" "$(sha256 "$T/rbig.img")" "$SHA_BIG2"
	rm -f "$T/rbig.img"
fi

finish
