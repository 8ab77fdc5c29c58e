#!/usr/bin/env bash
# Point selectors (restore, info, verify, list: "DEST latest", --latest,
# --at TIME, --host/--source/--job, several jobs refused with the
# candidates, exit 2), exit status 5 for a backup that succeeded with a
# warning, and the --json-progress JSON Lines stream.
. "$(dirname "$0")/lib.sh"
need_jq

D=$T/dest
mkdir -p "$D"
fill_random "$T/s.img" 0 2048
b() { "$CBIMG" backup -q --no-state --host h1 --source-id s1 --block-size 64K "$@"; }

# Three points of job daily over two chains: the newest is the second full.
cp "$T/s.img" "$T/v0.img"
expect_exit 0 b --job daily "$T/s.img" "$D" || die "backup 1"
dd if=/dev/urandom of="$T/s.img" bs=64K count=1 conv=notrunc status=none
cp "$T/s.img" "$T/v1.img"
expect_exit 0 b --job daily "$T/s.img" "$D" || die "backup 2"
lj() { "$CBIMG" list --json "$D" >"$T/l.json" || die "list"; jq -r "$1" "$T/l.json"; }
T1=$(lj '.[1].created_ns')
sleep 1.1
dd if=/dev/urandom of="$T/s.img" bs=64K count=1 seek=3 conv=notrunc status=none
cp "$T/s.img" "$T/v2.img"
expect_exit 0 b --job daily --full "$T/s.img" "$D" || die "backup 3 (new chain)"
NEWEST=$(lj '.[-1].index_file')
SECOND=$(lj '.[1].index_file')

# restore DEST latest TARGET, and --latest
expect_exit 0 "$CBIMG" restore "$D" latest "$T/r1.img"
check "restore DEST latest: the newest point" cmp -s "$T/r1.img" "$T/v2.img"
check_grep "restore names the point chosen" "restoring '.*$(basename "$NEWEST" .cbx)"
expect_exit 0 "$CBIMG" restore --latest -q "$D" "$T/r2.img"
check "restore --latest: the newest point" cmp -s "$T/r2.img" "$T/v2.img"
check_eq "-q: nothing printed" "$OUT" ""

# --at: the second point's second (UTC, ISO 8601), and @SECONDS
AT=$(date -u -d "@$((T1 / 1000000000))" +%Y-%m-%dT%H:%M:%SZ)
expect_exit 0 "$CBIMG" restore --at "$AT" "$D" "$T/r3.img"
check "restore --at $AT: the point of that second" cmp -s "$T/r3.img" "$T/v1.img"
expect_exit 0 "$CBIMG" restore --json --at "@$((T1 / 1000000000))" "$D" "$T/r4.img"
check_eq "--at @SECONDS: JSON names the point" "$(jout .point.index_file)" "$SECOND"
# local time, "YYYY-MM-DD HH:MM:SS"
LOCAL=$(TZ=Asia/Tokyo date -d "@$((T1 / 1000000000))" '+%Y-%m-%d %H:%M:%S')
expect_exit 0 env TZ=Asia/Tokyo "$CBIMG" info --json --at "$LOCAL" "$D"
check_eq "--at local time (TZ): the same point" "$(jout .index_file)" "$SECOND"
expect_exit 1 "$CBIMG" restore --at 2001-01-01 "$D" "$T/r5.img"
check_grep "--at before every point: says so" "at or before 2001-01-01"
expect_exit 2 "$CBIMG" restore --at yesterday "$D" "$T/r5.img"
check_grep "--at garbage: usage error naming the forms" "invalid time 'yesterday'"

# info, verify and list take the same selectors
expect_exit 0 "$CBIMG" info --json "$D" latest
check_eq "info DEST latest" "$(jout .index_file)" "$NEWEST"
expect_exit 0 "$CBIMG" verify "$D" latest
check_grep "verify DEST latest: checked and OK" "OK"
expect_exit 0 "$CBIMG" verify --json --at "$AT" "$D"
check_eq "verify --at: that point and its parent" "$(jout .points_checked)" 2
expect_exit 0 "$CBIMG" list --json --latest "$D"
check_eq "list --latest: one point" "$(jout 'length')" 1
check_eq "list --latest: the newest" "$(jout '.[0].index_file')" "$NEWEST"
expect_exit 0 "$CBIMG" list --json "$D" latest
check_eq "list DEST latest" "$(jout '.[0].index_file')" "$NEWEST"

# a directory without a selector: a usage error that suggests one
expect_exit 2 "$CBIMG" restore "$D" "$T/r6.img"
check_grep "restore DEST TARGET: suggests a selector" "is a directory.*latest"
expect_exit 2 "$CBIMG" restore --latest "$D/$(basename "$NEWEST")" "$T/r6.img"
check_grep "a selector with a file: usage error" "is not a directory"

# Another job and another host: ambiguous without --job / --host
expect_exit 0 b --job weekly "$T/s.img" "$D" || die "backup weekly"
expect_exit 0 "$CBIMG" backup -q --no-state --host h2 --source-id s1 --job daily "$T/s.img" "$D" \
	|| die "backup of h2"
expect_exit 2 "$CBIMG" restore "$D" latest "$T/r7.img"
check_grep "several jobs: refused" "several jobs in"
check_grep "candidates listed: h1 daily" "host 'h1' job 'daily' source 's1'"
check_grep "candidates listed: h1 weekly" "host 'h1' job 'weekly'"
check_grep "candidates listed: h2 daily" "host 'h2' job 'daily'"
check "nothing restored" test ! -e "$T/r7.img"
expect_exit 2 "$CBIMG" info --job daily "$D"
check_grep "--job daily still matches two hosts" "host 'h2'"
expect_exit 0 "$CBIMG" restore --host h1 --job daily "$D" "$T/r8.img"
check "--host h1 --job daily: the newest of that job" cmp -s "$T/r8.img" "$T/v2.img"
expect_exit 0 "$CBIMG" list --json --job weekly --latest "$D"
check_eq "list --job weekly --latest" "$(jout '.[0].job')" weekly
expect_exit 1 "$CBIMG" info --job nosuch "$D"
check_grep "no such job: says so" "no matching points"
expect_exit 2 "$CBIMG" restore --json "$D" latest "$T/r7.img"
check_eq "--json: the refusal is a JSON error" "$(jout .exit)" 2

# ---------------------------------------------------------- exit status 5
mkdir -p "$T/d5"
expect_exit 0 "$CBIMG" backup -q --no-state "$T/s.img" "$T/d5"
expect_exit 5 "$CBIMG" backup -q --no-state --block-size 8K "$T/s.img" "$T/d5"
check_grep "exit 5 with the warning on stderr" "^cbimg: warning: --block-size"
expect_exit 5 "$CBIMG" backup --json --no-state --hash sha256 "$T/s.img" "$T/d5"
check_eq "exit 5 --json: the result, not an error object" "$(jout '.warnings | length')" 1
check_eq "exit 5 --json: a point was written" "$(jout '.point.seq')" 2

# a live source: mounted read-write, read without a snapshot (root, loop)
if is_root && command -v mkfs.ext4 >/dev/null 2>&1 && losetup -f >/dev/null 2>&1; then
	truncate -s 16M "$T/live.img"
	mkfs.ext4 -q -F "$T/live.img" >/dev/null 2>&1 || die "mkfs.ext4"
	new_loop "$T/live.img" || die "losetup"
	do_mount "$LOOPDEV" "$T/mnt-live" || die "mount"
	mkdir -p "$T/dl"
	expect_exit 5 "$CBIMG" backup -q --no-state --snapshot none --allow-inconsistent "$LOOPDEV" "$T/dl"
	check_grep "mounted read-write, read without a snapshot: warns, exit 5" "^cbimg: warning: .*mounted read-write"
	do_umount "$T/mnt-live"
	expect_exit 0 "$CBIMG" backup -q --no-state "$LOOPDEV" "$T/dl"
	check_eq "unmounted: no warning, exit 0" "$OUT" ""
else
	skip_part "live source mounted read-write: needs root, a loop device and mkfs.ext4"
fi

# ------------------------------------------------------- --json-progress
is_jsonl() { jq -e . "$1" >/dev/null 2>&1 && ! grep -qv '^{.*}$' "$1"; }
fill_random "$T/big.img" 0 $((96 * 1024))
mkdir -p "$T/dp"
expect_exit 0 "$CBIMG" backup --no-state --json-progress --level 19 "$T/big.img" "$T/dp"
check "backup --json-progress: every line is one JSON object" is_jsonl "$T/stdout"
check_eq "backup: every line is a progress object of backup" \
	"$(jq -r 'select(.message_type != "progress" or .command != "backup" or .schema != 1)' "$T/stdout")" ""
check_eq "backup: one final line, the last" "$(jq -r .final "$T/stdout" | grep -c true)-$(tail -n1 "$T/stdout" | jq .final)" "1-true"
check_eq "backup: final line at 100% of the source" \
	"$(tail -n1 "$T/stdout" | jq -r '"\(.percent) \(.bytes_done == .bytes_total) \(.bytes_total)"')" \
	"100 true $((96 * 1024 * 1024))"
check_eq "backup: fields" "$(tail -n1 "$T/stdout" | jq -c 'keys')" \
	'["bytes_done","bytes_total","command","elapsed","final","message_type","percent","rate","schema"]'
check_eq "backup: bytes_done never decreases" \
	"$(jq -s '[.[].bytes_done] | . == sort' "$T/stdout")" true
N=$(wc -l <"$T/stdout")
E=$(tail -n1 "$T/stdout" | jq .elapsed)
check "backup: at most ~4 lines a second ($N lines in $E s)" \
	awk -v n="$N" -v e="$E" 'BEGIN { exit !(n <= 4 * e + 3) }'
check_eq "no human summary on stdout" "$(grep -vc '^{' "$T/stdout")" 0

expect_exit 0 "$CBIMG" restore --json --json-progress "$T/dp" latest "$T/rp.img"
check "restore --json --json-progress: JSON Lines" is_jsonl "$T/stdout"
check_eq "restore: the --json summary is the last line" "$(tail -n1 "$T/stdout" | jq -r .target)" "$T/rp.img"
check_eq "restore: the line before is the final progress" \
	"$(tail -n2 "$T/stdout" | head -n1 | jq -r '"\(.command) \(.final)"')" "restore true"
check "restored image equals the source" cmp -s "$T/rp.img" "$T/big.img"

expect_exit 0 "$CBIMG" verify --json-progress "$T/dp"
check_eq "verify --json-progress: progress lines of verify only" \
	"$(jq -r 'select(.command != "verify") | 1' "$T/stdout")" ""
check_eq "verify: ends with a final line" "$(tail -n1 "$T/stdout" | jq .final)" true
# damage under --json-progress: DAMAGED lines on stderr, stdout stays JSON Lines
cp -a "$T/d5" "$T/d6"
img=$(ls "$T/d6"/*full0000*.cbi | head -n1)
flip_byte "$img" $(( $(filesize "$img") / 2 ))
expect_exit 3 "$CBIMG" verify --json-progress --no-state "$T/d6"
check "damaged: stdout holds JSON Lines only" is_jsonl "$T/stdout"
check "damaged: the problem on stderr" grep -q '^DAMAGED ' "$T/stderr"
expect_exit 1 "$CBIMG" backup --json --json-progress --no-state "$T/nosuch.img" "$T/dp"
check_eq "a failure with --json: the error object is the last line" "$(tail -n1 "$T/stdout" | jq .exit)" 1
finish
