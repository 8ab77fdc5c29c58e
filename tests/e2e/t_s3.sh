#!/usr/bin/env bash
# DEST on S3 (issue 18), against a real Ceph RADOS Gateway started here
# (tests/s3/rgw.sh; one cluster for the whole test, a bucket per scenario;
# skipped visibly without Ceph). CBIMG_S3_RGW_DIR=DIR reuses a cluster
# already started with `tests/s3/rgw.sh start DIR`.
#   - the client and the lock rules against the server (test_s3's and test_objstore's server parts)
#   - full, incremental, list, info, restore bit for bit, verify
#   - three hosts backing up to one bucket at the same time, twice; every point restores
#   - backup killed mid-upload: no half point listed; the next run aborts the
#     leftover multipart upload, takes over the lock, and continues the chain
#   - the image streamed as it is made: no local copy (a file-size limit below
#     its size), peak RSS below the source's size, restores bit for bit
#   - the lock's lease renewed past its length (a second run refused), and lost
#     while radosgw stalls: the run stops before its commit, nothing listed
#   - radosgw stopped during a backup: a clean failure; restarted: the next run succeeds
#   - wrong credentials, a missing bucket, an unreachable endpoint: one line, exit 1
#   - an encrypted chain: no object holds the source's plaintext
. "$(dirname "$0")/lib.sh"
need_jq
RGW=$E2E_DIR/../s3/rgw.sh

if [ -n "${CBIMG_S3_RGW_DIR:-}" ]; then
	RDIR=$CBIMG_S3_RGW_DIR
else
	RDIR=$T/rgw
	t0=$(date +%s)
	bash "$RGW" start "$RDIR"
	rc=$?
	[ "$rc" = 77 ] && skip "no Ceph (radosgw) or no curl: S3 tests not run"
	if [ "$rc" != 0 ]; then
		bash "$RGW" stop "$RDIR"
		tail -20 "$RDIR"/log/*.log 2>/dev/null | tail -40
		die "the Ceph cluster did not start"
	fi
	echo "  (Ceph RGW up in $(($(date +%s) - t0)) s)"
	s3_cleanup() {
		bash "$RGW" stop "$RDIR"
		cleanup
	}
	trap s3_cleanup EXIT
fi
. "$RDIR/env"
export CBIMG_S3_PART_MIB=5 # multipart uploads from 5 MiB on: several parts per image here
# bucket NAME: a new bucket NAME-<run> for one scenario; its name in $B (a reused cluster keeps old ones)
SUF=$(date +%s%N | cut -c8-16)
bucket() {
	B=$1-$SUF
	bash "$RGW" bucket "$RDIR" "$B" || die "bucket $B"
}

# s3curl METHOD PATH: a signed request with curl itself (to look behind cbimg's back)
s3curl() {
	curl -s --aws-sigv4 "aws:amz:default:s3" --user "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY" \
		-H 'x-amz-content-sha256: UNSIGNED-PAYLOAD' -X "$1" "$S3_ENDPOINT/$2"
}
uploads() { s3curl GET "$1?prefix=&uploads=" | grep -o '<UploadId>' | wc -l; }
keys() { s3curl GET "$1?list-type=2" | grep -o '<Key>[^<]*</Key>' | sed 's/<[^>]*>//g'; }

# wait_upload PID: until bucket $B has an unfinished multipart upload (seen=1),
# or PID has ended (seen=0)
wait_upload() {
	seen=0
	for i in $(seq 1 1000); do
		if [ "$(uploads "$B")" -gt 0 ]; then seen=1; return; fi
		kill -0 "$1" 2>/dev/null || return
		sleep 0.02
	done
}

# ----------------------------------------------------- the client itself
for u in test_s3 test_objstore test_s3up test_s3lease; do
	UNIT=$(dirname "$CBIMG")/tests/$u
	if [ -x "$UNIT" ]; then
		bucket unit
		if CBIMG_S3_TEST_BUCKET=$B "$UNIT" >"$T/unit.out" 2>&1; then
			pass "$u against RGW: $(grep -c '\[       OK \]' "$T/unit.out") tests ok"
		else
			fail "$u against RGW"
			tail -20 "$T/unit.out"
		fi
	else
		skip_part "$u not built ($UNIT): its server tests not run"
	fi
done

# ------------------------------------------------ a chain, read back
bucket basic
BASIC=$B
SRC=$T/disk.img
head -c $((24 << 20)) /dev/urandom >"$SRC"
truncate -s 40M "$SRC"
expect_exit 0 "$CBIMG" backup --json "$SRC" s3://$B/pc1
check_eq "the point's key file field is empty, its index an s3:// URL" "$(jout .key_file)" null
cp "$SRC" "$T/v0.img"
fill_random "$SRC" 1024 300
expect_exit 0 "$CBIMG" backup --json "$SRC" s3://$B/pc1
check_eq "second run is an incremental" "$(jout .point.type)" incremental
check_eq "the incremental uploads little (sent < 2 MiB)" "$([ "$(jout .bytes_sent)" -lt $((2 << 20)) ] && echo y)" y
cp "$SRC" "$T/v1.img"
expect_exit 0 "$CBIMG" list --json s3://$B/pc1
check_eq "list shows 2 points" "$(jout length)" 2
expect_exit 0 "$CBIMG" list s3://$B/pc1
check_eq "list knows the images' sizes (ranged GETs of their ends, no 'missing')" "$(grep -c missing "$T/stdout")" 0
check "the catalog cache lives in the state directory" test -f "$(echo "$CBIMG_STATE_DIR"/s3/*/cache)/cbimg-catalog.sqlite"
check_eq "the cache holds no whole image (sparse stand-ins of 128 KiB)" \
	"$(du -sk "$(echo "$CBIMG_STATE_DIR"/s3/*/cache)" | cut -f1 | awk '{ print ($1 < 1024) ? "small" : $1 }')" small
expect_exit 0 "$CBIMG" restore s3://$B/pc1 latest "$T/r1.img"
check "latest restores bit for bit" cmp -s "$T/r1.img" "$T/v1.img"
FULL=$(keys $B | grep 'full0000.*\.cbx$')
expect_exit 0 "$CBIMG" restore "s3://$B/$FULL" "$T/r0.img"
check "the full, named by its index object, restores bit for bit" cmp -s "$T/r0.img" "$T/v0.img"
expect_exit 0 "$CBIMG" verify s3://$B/pc1
expect_exit 0 "$CBIMG" info "s3://$B/$FULL"
check_eq "no run directory left in the state" "$(ls -d "$CBIMG_STATE_DIR"/s3/*/run-* 2>/dev/null | wc -l)" 0
check_eq "no image staged locally after the upload" "$(find "$CBIMG_STATE_DIR"/s3/*/job-* -name '*.cbi' | wc -l)" 0

# ----------------------------------------- three hosts, one bucket, at once
bucket office
for h in 1 2 3; do
	head -c $((12 << 20)) /dev/urandom >"$T/h$h.img"
done
for round in 0 1; do
	pids=()
	for h in 1 2 3; do
		[ "$round" = 1 ] && fill_random "$T/h$h.img" $((h * 512)) 256
		cp "$T/h$h.img" "$T/h$h.r$round"
		CBIMG_STATE_DIR=$T/state-h$h "$CBIMG" backup -q --host host$h --job sys "$T/h$h.img" s3://$B/all \
			>"$T/h$h.out" 2>&1 &
		pids+=($!)
	done
	ok=0
	for p in "${pids[@]}"; do wait "$p" && ok=$((ok + 1)); done
	check_eq "round $round: three concurrent backups succeed" "$ok" 3
done
expect_exit 0 "$CBIMG" list --json s3://$B/all
check_eq "six points in the bucket" "$(jout length)" 6
for h in 1 2 3; do
	expect_exit 0 "$CBIMG" restore --host host$h --job sys s3://$B/all latest "$T/h$h.back"
	check "host$h's newest point restores bit for bit" cmp -s "$T/h$h.back" "$T/h$h.r1"
	N0=$(jq -r ".[] | select(.host == \"host$h\" and .seq == 0) | .index_file" "$T/stdout" 2>/dev/null)
	"$CBIMG" list --json --host host$h s3://$B/all >"$T/l.json"
	N0=$(jq -r '.[] | select(.seq == 0) | .index_file' "$T/l.json" | xargs basename)
	expect_exit 0 "$CBIMG" restore "s3://$B/all/$N0" "$T/h$h.back0"
	check "host$h's full restores bit for bit" cmp -s "$T/h$h.back0" "$T/h$h.r0"
done

# ------------------------------------------------- killed mid-upload
bucket killed
KS=$T/kill.img
head -c $((80 << 20)) /dev/urandom >"$KS"
export CBIMG_STATE_DIR=$T/state-kill
expect_exit 0 "$CBIMG" backup -q --level 1 "$KS" s3://$B/k
fill_random "$KS" 0 $((60 << 10))
CBIMG_S3_JOBS=1 "$CBIMG" backup -q --level 1 "$KS" s3://$B/k >"$T/k.out" 2>&1 &
KP=$!
BGPIDS+=("$KP")
wait_upload "$KP"
kill -9 "$KP" 2>/dev/null
wait "$KP" 2>/dev/null
if [ "$seen" = 1 ]; then
	pass "backup killed while its multipart upload was open"
	check_eq "an unfinished upload is left" "$([ "$(uploads $B)" -gt 0 ] && echo y)" y
	expect_exit 0 "$CBIMG" verify s3://$B/k
	check_grep "verify reports the unfinished upload" "note: 1 unfinished multipart upload under 's3://$B/k'"
	expect_exit 0 "$CBIMG" list --json s3://$B/k
	check_eq "no half point listed" "$(jout length)" 1
	expect_exit 0 "$CBIMG" backup --level 1 "$KS" s3://$B/k
	check_grep "the next run takes over the dead run's lock or aborts its upload" "took over the lock|aborted 1 unfinished"
	check_eq "no unfinished upload after the next run" "$(uploads $B)" 0
	expect_exit 0 "$CBIMG" list --json s3://$B/k
	check_eq "the chain continues: 2 points" "$(jout '[.[] | .seq] | sort | join(",")')" "0,1"
	expect_exit 0 "$CBIMG" restore s3://$B/k latest "$T/k.back"
	check "the point after the kill restores bit for bit" cmp -s "$T/k.back" "$KS"
else
	skip_part "the backup finished before its upload was seen: kill not tested"
fi


# ------------------------------------------------- streamed, in bounded memory
# The image goes up while it is made: no local file of it (a process file-size
# limit far below the image's size would kill a run that staged it: SIGXFSZ),
# and the run's memory stays below the source's size (a few 5 MiB parts).
bucket stream
export CBIMG_STATE_DIR=$T/state-stream
BIG=$T/big.img
head -c $((96 << 20)) /dev/urandom >"$BIG"
(
	ulimit -f $((16 << 10)) # KiB: no file above 16 MiB
	TIMECMD=()
	[ -x /usr/bin/time ] && TIMECMD=(/usr/bin/time -f 'maxrss_kib %M' -o "$T/big.time")
	CBIMG_S3_JOBS=2 exec "${TIMECMD[@]}" "$CBIMG" backup --json --level 1 "$BIG" s3://$B/s
) >"$T/stdout" 2>"$T/stderr"
RC=$?
OUT=$(cat "$T/stdout" "$T/stderr")
check_eq "a 96 MiB incompressible full under a 16 MiB file-size limit: exit 0" "$RC" 0
RSS=$(awk '/maxrss_kib/ { print $2 }' "$T/big.time" 2>/dev/null)
echo "  (peak RSS of the backup: ${RSS:-?} KiB; its image $(($(jout .point.stored_bytes) >> 20)) MiB)"
if [ ! -x /usr/bin/time ]; then
	skip_part "no /usr/bin/time (Debian package time; make deps installs it): peak RSS not measured"
elif grep -q __asan_init "$CBIMG" 2>/dev/null; then
	skip_part "peak RSS not bounded under AddressSanitizer (its shadow memory and quarantine)"
else
	check_eq "its peak RSS stays below 80 MiB (streamed in 5 MiB parts, not held whole)" \
		"$([ -n "$RSS" ] && [ "$RSS" -lt $((80 << 10)) ] && echo y)" y
fi
check_eq "the image went up in parts (sent >= 96 MiB)" "$([ "$(jout .bytes_sent)" -ge $((96 << 20)) ] && echo y)" y
check_eq "no image file in the state directory" "$(find "$CBIMG_STATE_DIR" -name '*.cbi' -o -name '*.cbi.*' | wc -l)" 0
check_eq "no unfinished upload after it" "$(uploads $B)" 0
expect_exit 0 "$CBIMG" restore s3://$B/s latest "$T/big.back"
check "the streamed full restores bit for bit" cmp -s "$T/big.back" "$BIG"
rm -f "$T/big.back"
# SIGTERM mid-upload: the run stops cleanly, its upload aborted, nothing listed
CBIMG_S3_JOBS=1 "$CBIMG" backup -q --level 1 "$BIG" s3://$B/t >"$T/t.out" 2>&1 &
TP=$!
BGPIDS+=("$TP")
wait_upload "$TP"
if [ "$seen" = 1 ]; then
	kill -TERM "$TP"
	wait "$TP"
	RC=$?
	OUT=$(cat "$T/t.out")
	check_eq "SIGTERM while streaming: exit 1" "$RC" 1
	check_grep "... saying it was interrupted" "^cbimg: interrupted"
	check_eq "its multipart upload aborted, none left" "$(uploads $B)" 0
	expect_exit 0 "$CBIMG" list --json s3://$B/t
	check_eq "no point listed" "$(jout length)" 0
else
	wait "$TP"
	skip_part "the backup finished before its upload was seen: SIGTERM not tested"
fi
fill_random "$BIG" 2048 4096
expect_exit 0 env CBIMG_S3_JOBS=2 "$CBIMG" backup --json --level 1 "$BIG" s3://$B/s
check_eq "the incremental sends its changed records and index, about 4 MiB (< 6 MiB)" \
	"$([ "$(jout .bytes_sent)" -lt $((6 << 20)) ] && echo y)" y
expect_exit 0 "$CBIMG" restore s3://$B/s latest "$T/big.back"
check "the streamed incremental restores bit for bit" cmp -s "$T/big.back" "$BIG"
expect_exit 0 "$CBIMG" verify s3://$B/s
rm -f "$T/big.back"

# ------------------------------------------------- the lock's lease
# A lease of 3 s is renewed every second; a run counts its lock held for 5/6 of
# the lease after the last renewal and stops itself (before its commit) past
# that. So a backup that outlasts its lease and succeeds was renewed, and a
# second run of the job meanwhile is refused, not let in by an expired lease.
bucket lease
export CBIMG_STATE_DIR=$T/state-lease
LS=$T/lease.img
head -c $((24 << 20)) "$BIG" >"$LS"
t0=$(date +%s.%N)
# (level 19 on incompressible data: several seconds, whatever the machine)
CBIMG_S3_LEASE=3 CBIMG_S3_JOBS=1 "$CBIMG" backup -q --threads 1 --level 19 "$LS" s3://$B/l >"$T/l1.out" 2>&1 &
LP=$!
BGPIDS+=("$LP")
sleep 3.5
if kill -0 "$LP" 2>/dev/null; then
	expect_exit 1 env CBIMG_S3_LEASE=3 "$CBIMG" backup -q --level 1 "$LS" s3://$B/l
	check_grep "a second run after the first one's initial lease ran out is refused (renewed)" "another cbimg .* is backing up"
	wait "$LP"
	RC=$?
	check_eq "the run that outlasted its 3 s lease ($(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') s) succeeds" "$RC" 0
	expect_exit 0 "$CBIMG" list --json s3://$B/l
	check_eq "one point" "$(jout length)" 1
else
	wait "$LP"
	skip_part "the backup ended within 3.5 s: its lease renewal was not tested"
fi
# the renewals stall (radosgw paused for longer than the lease): the run stops
# before its commit, cleanly, and says why
CBIMG_S3_LEASE=3 CBIMG_S3_JOBS=1 "$CBIMG" backup --threads 1 --level 1 "$BIG" s3://$B/p >"$T/l2.out" 2>&1 &
LP=$!
BGPIDS+=("$LP")
wait_upload "$LP"
if [ "$seen" = 1 ] && bash "$RGW" pause-rgw "$RDIR"; then
	sleep 5
	bash "$RGW" resume-rgw "$RDIR"
	wait "$LP"
	RC=$?
	OUT=$(cat "$T/l2.out")
	if [ "$RC" = 0 ]; then
		skip_part "the backup had sent its commit before the pause: lease loss not tested"
	else
		check_eq "lease lost while radosgw stalled: exit 1" "$RC" 1
		check_grep "one line: the lock was not renewed, stopped before the commit" \
			"^cbimg: .*stopped before its commit.*lock of job 'default' in 's3://$B/p'"
		check_eq "... on one line" "$(wc -l <"$T/l2.out")" 1
		expect_exit 0 "$CBIMG" list --json s3://$B/p
		check_eq "no half point listed" "$(jout length)" 0
		check_eq "its upload aborted" "$(uploads $B)" 0
		expect_exit 0 "$CBIMG" backup -q --level 1 "$BIG" s3://$B/p
		expect_exit 0 "$CBIMG" restore s3://$B/p latest "$T/big.back"
		check "the next run's point restores bit for bit" cmp -s "$T/big.back" "$BIG"
		rm -f "$T/big.back"
	fi
else
	wait "$LP"
	skip_part "no upload seen, or radosgw not paused: lease loss not tested"
fi

# ------------------------------------------------- radosgw restarted
bucket restart
export CBIMG_STATE_DIR=$T/state-rs
expect_exit 0 "$CBIMG" backup -q --level 1 "$KS" s3://$B/r
cp "$KS" "$T/rs0.img"
fill_random "$KS" 0 $((60 << 10))
CBIMG_S3_JOBS=1 CBIMG_S3_RETRIES=3 "$CBIMG" backup --level 1 "$KS" s3://$B/r >"$T/rs.out" 2>&1 &
RP=$!
BGPIDS+=("$RP")
wait_upload "$RP"
if [ "$seen" = 1 ]; then
	bash "$RGW" stop-rgw "$RDIR"
	wait "$RP"
	RC=$?
	OUT=$(cat "$T/rs.out")
	check_eq "radosgw stopped mid-upload: the backup fails with exit 1" "$RC" 1
	check_grep "one line naming the endpoint" "cbimg: .*S3 endpoint 'http://127.0.0.1:[0-9]+'"
	bash "$RGW" start-rgw "$RDIR" || die "radosgw did not restart"
	expect_exit 0 "$CBIMG" list --json s3://$B/r
	check_eq "no half point listed after the failure" "$(jout length)" 1
	expect_exit 0 "$CBIMG" backup --level 1 "$KS" s3://$B/r
	check_eq "no unfinished upload after the next run" "$(uploads $B)" 0
	expect_exit 0 "$CBIMG" restore s3://$B/r latest "$T/rs.back"
	check "the next run's point restores bit for bit" cmp -s "$T/rs.back" "$KS"
else
	wait "$RP"
	skip_part "the backup finished before its upload was seen: restart not tested"
fi

# ------------------------------------------------- bad configurations
export CBIMG_STATE_DIR=$T/state-bad
expect_exit 1 env AWS_SECRET_ACCESS_KEY=wrong "$CBIMG" backup -q "$SRC" s3://$BASIC/pc9
check_grep "wrong credentials: access denied" "^cbimg: .*access denied.*SignatureDoesNotMatch"
check_eq "... on one line" "$(wc -l <"$T/stderr")" 1
expect_exit 1 "$CBIMG" list s3://no-such-bucket/x
check_grep "a missing bucket is named" "^cbimg: bucket 'no-such-bucket' does not exist"
expect_exit 1 env CBIMG_S3_RETRIES=2 "$CBIMG" backup -q --s3-endpoint http://127.0.0.1:1 "$SRC" s3://$BASIC/pc9
check_grep "an unreachable endpoint is named" "^cbimg: S3 endpoint 'http://127.0.0.1:1'.*(connect|Couldn)"
expect_exit 1 env -u AWS_ACCESS_KEY_ID -u AWS_SECRET_ACCESS_KEY HOME=$T AWS_PROFILE=none "$CBIMG" list s3://$BASIC/pc1
check_grep "no credentials: one line" "^cbimg: no S3 credentials"
expect_exit 2 "$CBIMG" list s3://Bad_Bucket/x
check_eq "a bad bucket name is a usage error" "$RC" 2
expect_exit 2 "$CBIMG" prune --keep-last 1 s3://$BASIC/pc1
check_grep "prune says it does not work on S3 yet" "prune does not work on S3 yet"

# ------------------------------------------------- an encrypted chain
bucket secret
export CBIMG_STATE_DIR=$T/state-enc
PT=$T/plain.img
for i in $(seq 1 2000); do printf 'CBIMG-PLAINTEXT-MARKER-%06d-' "$i"; done >"$T/marker"
: >"$PT"
for i in $(seq 1 200); do cat "$T/marker"; done >>"$PT"
truncate -s 16M "$PT"
echo "s3 test pass" >"$T/pass"
expect_exit 0 "$CBIMG" backup -q --encrypt --scrypt 12:8:1 --password-file "$T/pass" "$PT" s3://$B/e
printf 'CBIMG-PLAINTEXT-MARKER-CHANGED' | dd of="$PT" bs=1 seek=5000000 conv=notrunc 2>/dev/null
expect_exit 0 "$CBIMG" backup -q --password-file "$T/pass" "$PT" s3://$B/e
n=0 leak=0
for k in $(keys $B); do
	n=$((n + 1))
	s3curl GET "$B/$k" >"$T/obj"
	grep -q 'CBIMG-PLAINTEXT-MARKER' "$T/obj" && leak=$((leak + 1))
done
check_eq "key file, 2 images, 2 indexes in the bucket" "$n" 5
check_eq "no object holds the plaintext" "$leak" 0
expect_exit 0 "$CBIMG" restore --password-file "$T/pass" s3://$B/e latest "$T/pt.back"
check "the encrypted chain restores bit for bit" cmp -s "$T/pt.back" "$PT"

finish
