#!/usr/bin/env bash
# Chains are kept per (host, source, job): --source-id, --host and --job pick
# the chain; an unchanged source gives an empty incremental; options that must
# not change the result (--threads, --level) do not; missing points are
# reported.
. "$(dirname "$0")/lib.sh"
need_jq

D=$T/dest
mkdir -p "$D"
A=$T/a.img
B=$T/b.img
head -c $((2 * 1024 * 1024)) /dev/urandom >"$A"
SHA_A=$(sha256 "$A")

expect_exit 0 "$CBIMG" backup -q --job j --source-id disk1 --host h1 "$A" "$D"
# Same source id and host, different path: continues the chain.
cp "$A" "$B"
fill_random "$B" 300 10
SHA_B=$(sha256 "$B")
expect_exit 0 "$CBIMG" backup --json --job j --source-id disk1 --host h1 --threads 1 --level 19 "$B" "$D" &&
	check_eq "same --source-id from another path: incremental seq 1, 1 changed block" \
		"$(jout '"\(.type) \(.point.seq) \(.blocks_changed)"')" "incremental 1 1"
# Another host: a new chain.
expect_exit 0 "$CBIMG" backup --json --job j --source-id disk1 --host h2 "$B" "$D" &&
	check_eq "another --host: a new full" "$(jout '"\(.type) \(.point.seq) \(.point.host)"')" "full 0 h2"
# Another job: a new chain.
expect_exit 0 "$CBIMG" backup --json --job k --source-id disk1 --host h1 "$B" "$D" &&
	check_eq "another --job: a new full" "$(jout '"\(.type) \(.point.seq) \(.point.job)"')" "full 0 k"
# Unchanged source: an incremental with nothing changed.
expect_exit 0 "$CBIMG" backup --json --job j --source-id disk1 --host h1 "$B" "$D" &&
	check_eq "unchanged source: incremental seq 2 with 0 changed blocks" \
		"$(jout '"\(.type) \(.point.seq) \(.blocks_changed) \(.blocks_stored)"')" "incremental 2 0 0"

if list_json "$D"; then
	check_eq "5 points" "$(jqr 'length')" 5
	check_eq "3 chains" "$(jqr '[.[].chain] | unique | length')" 3
	check_eq "source ids recorded" "$(jqr '[.[].source] | unique | join(",")')" disk1
	check_eq "hosts recorded" "$(jqr '[.[].host] | unique | join(",")')" "h1,h2"
	p1=$(jqr '[.[] | select(.host == "h1" and .job == "j" and .seq == 1)] | .[0].p')
	p2=$(jqr '[.[] | select(.host == "h1" and .job == "j" and .seq == 2)] | .[0].p')
	p0=$(jqr '[.[] | select(.host == "h1" and .job == "j" and .seq == 0)] | .[0].p')
	p0x=$(jqr '[.[] | select(.host == "h1" and .job == "j" and .seq == 0)] | .[0].ip')
	expect_exit 0 "$CBIMG" restore -q --threads 1 "$p1" "$T/r1.img" &&
		check_eq "restore (--threads 1) of the level-19 incremental" "$(sha256 "$T/r1.img")" "$SHA_B"
	expect_exit 0 "$CBIMG" restore -q "$p2" "$T/r2.img" &&
		check_eq "restore of the empty incremental" "$(sha256 "$T/r2.img")" "$SHA_B"
	expect_exit 0 "$CBIMG" restore -q "$p0" "$T/r0.img" &&
		check_eq "restore of the full" "$(sha256 "$T/r0.img")" "$SHA_A"

	# The full's files gone: its incrementals cannot be restored or verified.
	D2=$T/nofull
	mkdir -p "$D2"
	jqr '.[] | select(.host == "h1" and .job == "j" and .seq > 0) | .p, .ip' |
		while read -r f; do cp "$f" "$D2/"; done
	check_eq "copied the incrementals' 4 files" "$(count_files "$D2")" 4
	expect_exit nz "$CBIMG" restore -q "$D2/$(basename "$p2")" "$T/rx.img"
	check_grep "missing parent is named in the message" "[Pp]arent|not found|missing|No such"
	expect_exit nz "$CBIMG" verify "$D2/$(basename "$p2")"

	# The full's image gone but its index kept: list shows it without image;
	# restoring a point that needs its blocks fails.
	D3=$T/noimage
	cp -a "$D" "$D3"
	rm -f "$D3/$(basename "$p0")"
	if list_json "$D3"; then
		check_eq "point without image: has_image false" \
			"$(jqr "[.[] | select(.ip == \"$D3/$(basename "$p0x")\")] | .[0].has_image")" false
	else
		fail "list --json with a missing image"
	fi
	expect_exit nz "$CBIMG" restore -q "$D3/$(basename "$p1")" "$T/ry.img"
	expect_exit nz "$CBIMG" verify "$D3"
else
	fail "list --json"
fi

# Identity derived from the path when no --source-id: the last chain of this
# host and job was made from the same path under another identity (another
# disk plugged in under the same name?), so cbimg refuses rather than
# compare against the wrong chain; --full starts a new one.
expect_exit 1 "$CBIMG" backup -q --job j --host h1 "$B" "$D"
expect_exit 0 "$CBIMG" backup --json --full --job j --host h1 "$B" "$D" &&
	check_eq "identity changed under the same path, --full: a new full" "$(jout '.type')" full
# A path no chain of this job has seen before: a new full.
cp "$A" "$T/c.img"
expect_exit 0 "$CBIMG" backup --json --job j --host h1 "$T/c.img" "$D" &&
	check_eq "default source id of another path: a new full" "$(jout '.type')" full

finish
