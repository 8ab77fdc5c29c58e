#!/usr/bin/env bash
# e2e-timeout: 1800
# (more than run.sh's 600 s: a Ceph cluster and ~190 checks; over 500 s under ASan on a loaded machine)
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
#   - wrong credentials, a missing bucket, an unreachable endpoint, libcurl
#     that cannot be loaded (local commands still run): one line, exit 1
#   - an encrypted chain: no object holds the source's plaintext
#   - reads by ranged GET: every point of a 3-point chain restores bit for bit,
#     the newest reading only the records it needs; verify streams each image;
#     restore --changed-only fetches only the records of the blocks that differ;
#     a byte changed in the bucket: verify and restore exit 3
#   - log (this machine's runs) and catalog rebuild (from LIST) on S3
#   - mount of an S3 point (FUSE): disk.img is the source, a file copied out
#     of its ext4 (loop-mounted) is the original
#   - prune (s3prune): keep rules, selectors, dry run, other hosts untouched,
#     only the needed records fetched, an encrypted chain, kill -9 before each
#     request of its upload and deletes (tests/e2e/reqkill_shim.c)
#   - prune's lease renewed past its length (a second prune and a backup
#     refused, saying a prune holds the job: the lock object's op line), and
#     lost while radosgw stalls: it stops before its next store or delete,
#     every listed point restores, the next prune finishes
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
check_grep "info names the point's objects by their s3:// URLs" "^index_file: +s3://$B/$FULL\$"
expect_exit 0 "$CBIMG" info --json "s3://$B/$FULL"
check_eq "... in JSON too" "$(jout .index_path)" "s3://$B/$FULL"
# usage errors, notes and "no points" lines name the s3:// operand, never
# the local view in the state directory
expect_exit 2 "$CBIMG" restore s3://$B/pc1 "$T/rx.img"
check_grep "a prefix without a point: the usage error names it by its s3:// URL" \
	"^cbimg restore: 's3://$B/pc1' is a directory: name a point file in it"
check_eq "... and never the local view" "$(grep -c "$CBIMG_STATE_DIR" "$T/stderr")" 0
expect_exit 2 "$CBIMG" restore --json s3://$B/pc1 "$T/rx.img"
check_eq "... in JSON too" "$(jout .error | cut -d"'" -f2)" "s3://$B/pc1"
expect_exit 0 "$CBIMG" list --host nosuchhost s3://$B/pc1
check_grep "list: no matching points, naming the s3:// operand" "^cbimg: no matching points in 's3://$B/pc1'\$"
expect_exit 0 "$CBIMG" log --host nosuchhost s3://$B/pc1
check_grep "log: no matching runs, naming the s3:// operand" "^cbimg: no matching runs recorded in 's3://$B/pc1'\$"
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
	check_grep "the next run takes over the dead run's lock or aborts its upload" "took over the lock .* left by a backup on |aborted 1 unfinished"
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
# The first run's index PUT (its commit) is sent 6 s late (reqkill_shim.c's
# CBIMG_DELAY_REQUEST; the lease's requests are not), so that it outlasts
# the lease on any machine: it once ended within 3.5 s, or between the
# check that it still ran and the second run's request for the lock.
bucket lease
export CBIMG_STATE_DIR=$T/state-lease
RKL=$T/reqdelay.so
cc -O2 -shared -fPIC -o "$RKL" "$E2E_DIR/reqkill_shim.c" -ldl 2>"$T/cc.err" ||
	die "cannot build tests/e2e/reqkill_shim.c: $(head -3 "$T/cc.err")"
LS=$T/lease.img
head -c $((24 << 20)) "$BIG" >"$LS"
t0=$(date +%s.%N)
CBIMG_S3_LEASE=3 CBIMG_S3_JOBS=1 CBIMG_DELAY_REQUEST=".cbx 6000" LD_PRELOAD="$RKL" \
	ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}verify_asan_link_order=0" \
	"$CBIMG" backup -q --threads 1 --level 1 "$LS" s3://$B/l >"$T/l1.out" 2>&1 &
LP=$!
BGPIDS+=("$LP")
sleep 3.5
if kill -0 "$LP" 2>/dev/null; then
	expect_exit 1 env CBIMG_S3_LEASE=3 "$CBIMG" backup -q --level 1 "$LS" s3://$B/l
	check_grep "a second run after the first one's initial lease ran out is refused (renewed)" "another cbimg .* is backing up"
	check_grep "... one line naming the holder's host and pid, that it backs up, the job, the source, the DEST" \
		"^cbimg: another cbimg \(host [^,]+, pid $LP\) is backing up job 'default' of '$LS' to 's3://$B/l/?' \(lock object"
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
	expect_exit 0 "$CBIMG" log --json s3://$B/r
	check_eq "log: the run that failed mid-upload is recorded as failed" "$(jout '[.[] | .result] | join(",")')" "ok,failed"
	check_eq "... with its error naming the endpoint, and no point" \
		"$(jout '.[1] | (.message | test("S3 endpoint .http://127.0.0.1:[0-9]+")), .file' | tr '\n' ' ')" "true null "
	expect_exit 0 "$CBIMG" backup --level 1 "$KS" s3://$B/r
	check_eq "no unfinished upload after the next run" "$(uploads $B)" 0
	expect_exit 0 "$CBIMG" restore s3://$B/r latest "$T/rs.back"
	check "the next run's point restores bit for bit" cmp -s "$T/rs.back" "$KS"
else
	wait "$RP"
	skip_part "the backup finished before its upload was seen: restart not tested"
fi

# ------------------------------------------------- a refused commit
# Every single PUT of an index object fails (tests/e2e/reqkill_shim.c:
# CBIMG_REFUSE_PUT): the image went up, the commit did not. The run exits 1
# with one line naming the index object, and the run log (cbimg log) shows
# it failed with that error and no point: never "ok" for a point that is not
# in the bucket. Then a damaged image object: verify's and restore's
# messages name it by its s3:// URL, not the local view in the state directory.
bucket refused
RF=$B
export CBIMG_STATE_DIR=$T/state-refused
RKS=$T/refuse.so
cc -O2 -shared -fPIC -o "$RKS" "$E2E_DIR/reqkill_shim.c" -ldl 2>"$T/cc.err" ||
	die "cannot build tests/e2e/reqkill_shim.c: $(head -3 "$T/cc.err")"
RFS=$T/refuse.img
head -c $((8 << 20)) /dev/urandom >"$RFS"
expect_exit 0 "$CBIMG" backup -q "$RFS" s3://$RF/f
fill_random "$RFS" 1024 512
expect_exit 1 env CBIMG_S3_RETRIES=1 CBIMG_REFUSE_PUT=.cbx LD_PRELOAD="$RKS" \
	ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}verify_asan_link_order=0" "$CBIMG" backup -q "$RFS" s3://$RF/f
check_grep "index PUT refused: the point was not stored, naming the index object" \
	"^cbimg: the point was not stored in 's3://$RF/f': .*'s3://$RF/f/[^']*_incr0001_[^']*\.cbx'"
check_eq "... on one line" "$(wc -l <"$T/stderr")" 1
RFERR=$(cat "$T/stderr")
expect_exit 0 "$CBIMG" log --json s3://$RF/f
check_eq "log: the full ok, the refused run failed (not ok)" "$(jout '[.[] | .result] | join(",")')" "ok,failed"
check_eq "... with the same one-line error" "cbimg: $(jout '.[1].message')" "$RFERR"
check_eq "... and no point named" "$(jout '.[1] | [.point, .file, .index_file] | map(. // "none") | join(",")')" "none,none,none"
expect_exit 0 "$CBIMG" log s3://$RF/f
check_grep "log's table says failed" "failed"
expect_exit 0 "$CBIMG" list --json s3://$RF/f
check_eq "no point listed for it" "$(jout length)" 1
check_eq "no object of it left in the bucket" "$(keys $RF | grep -c '_incr0001_')" 0
expect_exit 0 "$CBIMG" backup -q "$RFS" s3://$RF/f
expect_exit 0 "$CBIMG" log --json s3://$RF/f
check_eq "the next run is ok, the failed one still failed" "$(jout '[.[] | .result] | join(",")')" "ok,failed,ok"
# a damaged image object: one byte inverted in its records
DI=$(keys $RF | grep '_incr0001_.*\.cbi$')
s3curl GET "$RF/$DI" >"$T/dmg.cbi"
DO=$(($(stat -c %s "$T/dmg.cbi") / 2))
DB=$(od -An -tu1 -j "$DO" -N1 "$T/dmg.cbi" | tr -d ' ')
printf "\\$(printf %o $((255 - DB)))" | dd of="$T/dmg.cbi" bs=1 seek="$DO" conv=notrunc status=none
curl -s -f --aws-sigv4 "aws:amz:default:s3" --user "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY" \
	-H 'x-amz-content-sha256: UNSIGNED-PAYLOAD' -T "$T/dmg.cbi" "$S3_ENDPOINT/$RF/$DI" >/dev/null || die "PUT of $DI"
expect_exit 3 "$CBIMG" verify s3://$RF/f
check_grep "verify names the damaged object by its s3:// URL" "^DAMAGED s3://$RF/$DI: "
check_eq "... and never the local view" "$(grep -c "$CBIMG_STATE_DIR" "$T/stdout" "$T/stderr" | awk -F: '{ n += $2 } END { print n }')" 0
expect_exit 3 "$CBIMG" verify --json s3://$RF/f
check_eq "verify --json: path and problems name s3:// URLs" \
	"$(jout '[.path] + [.problems[].path] | unique | join(" ")')" "s3://$RF/f s3://$RF/$DI"
expect_exit 3 "$CBIMG" restore s3://$RF/f latest "$T/dmg.out"
check_grep "restore's error names the damaged object by its s3:// URL, with the reason" \
	"^cbimg: 's3://$RF/$DI': .*(mismatch|damaged)"
check_eq "... and never the local view" "$(grep -c "$CBIMG_STATE_DIR" "$T/stderr")" 0
rm -f "$T/dmg.out" "$T/dmg.cbi"

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
# libcurl is loaded at the first s3:// DEST (dlopen): one that cannot be
# loaded (CBIMG_S3_LIBCURL naming a file that is not a library) leaves
# local commands alone and gives an s3:// DEST one line
echo "not a library" >"$T/libcurl-broken.so"
expect_exit 0 env CBIMG_S3_LIBCURL=$T/libcurl-broken.so "$CBIMG" list "$T"
expect_exit 1 env CBIMG_S3_LIBCURL=$T/libcurl-broken.so "$CBIMG" list s3://$BASIC/pc1
check_grep "libcurl that cannot be loaded is named, with the reason" \
	"^cbimg: S3 needs libcurl, which is not usable here: .*libcurl-broken\.so.*\(install libcurl4\)"
check_eq "... on one line" "$(wc -l <"$T/stderr")" 1
expect_exit 0 env CBIMG_S3_LIBCURL=libcurl.so.4 "$CBIMG" list s3://$BASIC/pc1

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

# ------------------------------------- reads by ranged GET (restore, verify)
# Three points; the incrementals replace the first 8 MiB of 20: a restore of
# the newest reads only the records it needs from the full (a trace of every
# GET: CBIMG_S3_TRACE), nothing is downloaded whole; verify streams every
# image for its digest; a byte changed in the bucket behind cbimg's back is
# damage (exit 3) for verify and for a restore that needs it.
bucket ranged
RB=$B
export CBIMG_STATE_DIR=$T/state-ranged
RS=$T/ranged.img
head -c $((20 << 20)) /dev/urandom >"$RS"
truncate -s 32M "$RS"
expect_exit 0 "$CBIMG" backup -q --job rg "$RS" s3://$RB/p
cp "$RS" "$T/rg0.img"
fill_random "$RS" 0 4096
expect_exit 0 "$CBIMG" backup -q --job rg "$RS" s3://$RB/p
cp "$RS" "$T/rg1.img"
fill_random "$RS" 4096 4096
expect_exit 0 "$CBIMG" backup -q --job rg "$RS" s3://$RB/p
cp "$RS" "$T/rg2.img"
# gets_of KEY: bytes the traced GETs fetched of object KEY
gets_of() { awk -v k="$1" '$1 == "GET" && $2 == k && $5 != "failed" { s += $4 } END { print s + 0 }' "$T/trace"; }
objsize() { s3curl GET "$RB?list-type=2&prefix=$(printf %s "$1" | sed "s,/,%2F,g")" | grep -o '<Size>[0-9]*</Size>' | head -1 | tr -dc 0-9; }
for seq in 0 1 2; do
	IDX=$(keys $RB | grep "_[a-z]*000${seq}_.*\.cbx$")
	rm -f "$T/trace" "$T/rr.img"
	expect_exit 0 env CBIMG_S3_TRACE=$T/trace "$CBIMG" restore "s3://$RB/$IDX" "$T/rr.img"
	check "point seq $seq restores bit for bit through ranged GETs" cmp -s "$T/rr.img" "$T/rg$seq.img"
done
FULLI=$(keys $RB | grep 'full0000.*\.cbi$')
FSIZE=$(objsize "$FULLI")
got=$(gets_of "$FULLI")
check_eq "the newest point's restore fetched only the full's records it needs ($got of $FSIZE bytes, < 3/4)" \
	"$([ "$got" -gt 0 ] && [ $((got * 4)) -lt $((FSIZE * 3)) ] && echo y)" y
check_eq "... by ranged GETs of at most 4 MiB (none of the whole image)" \
	"$(awk '$1 == "GET" && $4 > 4194304' "$T/trace" | wc -l)" 0
check_eq "... with nothing downloaded to the state directory (no file holds over 1 MiB)" \
	"$(find "$CBIMG_STATE_DIR" -type f -printf '%b\n' | awk '$1 * 512 > 1048576' | wc -l)" 0
# changed-only from S3: a target holding the full's disk with a byte changed
# in 6 blocks spread over its 20 MiB of data and one in its zeros fetches
# only those 6 records of the full (each about stored_bytes / stored_blocks:
# random data), plus 64 KiB (the reader's coalescing gap), not the records
# of the blocks that are the same (one pass fetched the whole image); a
# second run finds nothing to fetch
expect_exit 0 "$CBIMG" info --json "s3://$RB/$FULLI"
BS=$(jout .block_size) AVG=$(jout '.stored_bytes / .stored_blocks | floor')
cp "$T/rg0.img" "$T/co.img"
for k in 3 17 31 45 59 73; do flip_byte "$T/co.img" $((k * BS + 1000)); done
flip_byte "$T/co.img" $((25 << 20))
rm -f "$T/trace"
expect_exit 0 env CBIMG_S3_TRACE=$T/trace "$CBIMG" restore --json --changed-only --force "s3://$RB/$FULLI" "$T/co.img"
check "changed-only from S3 restores the full bit for bit" cmp -s "$T/co.img" "$T/rg0.img"
check_eq "... writing the 7 blocks that differ, skipping the others" \
	"$(jout '[.blocks_written, .blocks_skipped] | join(",")')" "7,$(((32 << 20) / BS - 7))"
got=$(gets_of "$FULLI")
check_eq "... fetching only their 6 records from the full ($got bytes, at most 6 * $AVG + 65536)" \
	"$([ "$got" -gt 0 ] && [ "$got" -le $((6 * AVG + 65536)) ] && echo y)" y
rm -f "$T/trace"
expect_exit 0 env CBIMG_S3_TRACE=$T/trace "$CBIMG" restore --json --changed-only --force "s3://$RB/$FULLI" "$T/co.img"
check_eq "changed-only onto a target already the same: nothing written, no image read" \
	"$(jout .blocks_written),$(grep -c '\.cbi ' "$T/trace")" "0,0"
rm -f "$T/trace"
expect_exit 0 env CBIMG_S3_TRACE=$T/trace "$CBIMG" verify s3://$RB/p
short=0
for k in $(keys $RB | grep '\.cbi$'); do
	[ "$(gets_of "$k")" -ge "$(objsize "$k")" ] || short=$((short + 1))
done
check_eq "verify streamed every image whole from the bucket (its digest covers every byte)" "$short" 0
# a byte in the middle of the full's image (a record the newest point needs), changed in the bucket
s3curl GET "$RB/$FULLI" >"$T/full.cbi"
flip_byte "$T/full.cbi" $((FSIZE * 3 / 4))
curl -s -f --aws-sigv4 "aws:amz:default:s3" --user "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY" \
	-H 'x-amz-content-sha256: UNSIGNED-PAYLOAD' -T "$T/full.cbi" "$S3_ENDPOINT/$RB/$FULLI" -o /dev/null ||
	die "PUT of the damaged image"
expect_exit 3 "$CBIMG" verify s3://$RB/p
check_grep "verify names the damaged image's digest" "DAMAGED .*$(basename "$FULLI").*(digest|SHA-256)"
check_grep "... and its damaged block" "DAMAGED .*$(basename "$FULLI"): block [0-9]+"
expect_exit 3 "$CBIMG" restore s3://$RB/p latest "$T/rr2.img"
check_eq "restore of a point that needs the damaged record: exit 3" "$RC" 3
check_eq "no run directory left in the state" "$(ls -d "$CBIMG_STATE_DIR"/s3/*/run-* 2>/dev/null | wc -l)" 0
# the newest index replaced in the bucket by a damaged one of the same size,
# after verify has cached it: the cache knows its copy by the object's ETag,
# so verify (and list) read the bucket's version, not the old copy
NEWX=$(keys $RB | grep '_incr0002_.*\.cbx$')
s3curl GET "$RB/$NEWX" >"$T/newx.orig"
cp "$T/newx.orig" "$T/newx.bad"
flip_byte "$T/newx.bad" $(($(stat -c %s "$T/newx.bad") / 2))
curl -s -f --aws-sigv4 "aws:amz:default:s3" --user "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY" \
	-H 'x-amz-content-sha256: UNSIGNED-PAYLOAD' -T "$T/newx.bad" "$S3_ENDPOINT/$RB/$NEWX" -o /dev/null ||
	die "PUT of the damaged index"
expect_exit 3 "$CBIMG" verify s3://$RB/p
check_grep "an index replaced in the bucket by a damaged one of the same size: verify sees it" \
	"DAMAGED .*$(basename "$NEWX")"
curl -s -f --aws-sigv4 "aws:amz:default:s3" --user "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY" \
	-H 'x-amz-content-sha256: UNSIGNED-PAYLOAD' -T "$T/newx.orig" "$S3_ENDPOINT/$RB/$NEWX" -o /dev/null ||
	die "PUT of the original index"

# ------------------------------------------------- log and catalog rebuild
expect_exit 0 "$CBIMG" log --json s3://$RB/p
check_eq "log shows this machine's three runs into the prefix" "$(jout '[.[] | .result] | join(",")')" "ok,ok,ok"
expect_exit 0 "$CBIMG" log --limit 1 --json s3://$RB/p
check_eq "log --limit 1: the newest run" "$(jout '.[0].file')" "$(basename "$(keys $RB | grep '_incr0002_.*\.cbi$')")"
expect_exit 0 "$CBIMG" log s3://$RB/p
check_grep "the table names the run's image" "incr0002_.*\.cbi"
expect_exit 0 env CBIMG_STATE_DIR=$T/state-other "$CBIMG" log s3://$RB/p
check_grep "another state directory has no runs there" "no runs recorded in 's3://$RB/p'"
nkeys=$(keys $RB | wc -l)
CACHE=$(echo "$CBIMG_STATE_DIR"/s3/*/cache)
rm -f "$CACHE"/*.cbx
echo garbage >"$CACHE/cbimg-catalog.sqlite"
expect_exit 0 "$CBIMG" catalog rebuild --json s3://$RB/p
check_eq "catalog rebuild from LIST: 3 points" "$(jout .points)" 3
check_eq "... named by the bucket" "$(jout .dest)" "s3://$RB/p"
check_eq "... nothing written to the bucket" "$(keys $RB | wc -l)" "$nkeys"
check "... the cache's catalog is a database again" sh -c "head -c 15 '$CACHE/cbimg-catalog.sqlite' | grep -q 'SQLite format'"
expect_exit 0 "$CBIMG" list --json s3://$RB/p
check_eq "list after the rebuild: 3 points" "$(jout length)" 3

# --------------------------------------------------------- mount on S3
if ! is_root || [ ! -c /dev/fuse ]; then
	skip_part "not root or no /dev/fuse: mount on S3 not tested"
elif ! command -v mkfs.ext4 >/dev/null 2>&1; then
	skip_part "mkfs.ext4 missing: mount on S3 not tested"
else
	bucket mnt
	export CBIMG_STATE_DIR=$T/state-mnt
	mkdir -p "$T/tree/docs"
	head -c $((3 << 20)) /dev/urandom >"$T/tree/docs/report.bin"
	echo "hello from S3" >"$T/tree/hello.txt"
	mkfs.ext4 -q -F -d "$T/tree" "$T/ext.img" 32M >"$T/mkfs.out" 2>&1 || die "mkfs.ext4: $(cat "$T/mkfs.out")"
	expect_exit 0 "$CBIMG" backup -q --job m "$T/ext.img" s3://$B/m
	MI=$(keys $B | grep '\.cbx$')
	MNT=$T/s3mnt
	mkdir -p "$MNT" "$T/lm"
	s3read_umount() {
		mountpoint -q "$T/lm" 2>/dev/null && umount "$T/lm"
		grep -q " $MNT fuse.cbimg " /proc/self/mounts 2>/dev/null &&
			{ "$CBIMG" umount "$MNT" >/dev/null 2>&1 || umount -l "$MNT"; }
	}
	if declare -f s3_cleanup >/dev/null; then
		trap 's3read_umount; s3_cleanup' EXIT
	else
		trap 's3read_umount; cleanup' EXIT
	fi
	rm -f "$T/trace"
	expect_exit 0 env CBIMG_S3_TRACE=$T/trace "$CBIMG" mount "s3://$B/$MI" "$MNT"
	check_eq "mount of an S3 point: disk.img is the source, byte for byte" "$(sha256 "$MNT/disk.img")" \
		"$(sha256 "$T/ext.img")"
	if losetup -f >/dev/null 2>&1 && mount -o ro,loop "$MNT/disk.img" "$T/lm" 2>"$T/mount.err"; then
		check "a file copied out of the mounted ext4 is the original" cmp -s "$T/lm/docs/report.bin" \
			"$T/tree/docs/report.bin"
		check_eq "... and a small one" "$(cat "$T/lm/hello.txt")" "hello from S3"
		umount "$T/lm"
	else
		skip_part "no loop device: the mounted ext4 is not loop-mounted ($(cat "$T/mount.err" 2>/dev/null))"
	fi
	expect_exit 0 "$CBIMG" umount "$MNT"
	check_eq "the mount read by ranged GETs of at most 4 MiB" \
		"$([ "$(grep -c '^GET ' "$T/trace")" -gt 0 ] && awk '$1 == "GET" && $4 > 4194304' "$T/trace" | wc -l)" 0
	check_eq "no run directory left after umount" "$(ls -d "$CBIMG_STATE_DIR"/s3/*/run-* 2>/dev/null | wc -l)" 0
fi

# ------------------------------------------------- prune on S3 (s3prune)
# A chain of four points of host pc1 and two of host pc2 under one prefix;
# prune --keep-last 2 of pc1 makes seq 2 a synthetic full (folding seq 0 and
# 1 into it). Checked: the dry run changes nothing; every point left
# restores bit for bit; list shows no removed point and their objects are
# gone; only the records still needed were fetched; pc2 is untouched; the
# chain continues. Then an encrypted chain, and kill -9 of prune at several
# moments (before each request of its upload and deletes).
bucket prune
export CBIMG_STATE_DIR=$T/state-prune
# shims come by LD_PRELOAD below: in an ASan build the sanitizer's runtime
# is then not first in the library list, which it checks by default
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}verify_asan_link_order=0"
mkdir -p "$T/psums"
PS=$T/prune.img PS2=$T/prune2.img
head -c $((8 << 20)) /dev/urandom >"$PS"
head -c $((3 << 20)) /dev/urandom >"$PS2"
# pback HOST FILE PREFIX ARGS...: a backup of FILE as HOST (job sys) into
# s3://$B/PREFIX; the SHA-256 of FILE under the point's id in $T/psums
pback() {
	local h=$1 f=$2 pf=$3
	shift 3
	"$CBIMG" backup -q --json --host "$h" --job sys --level 1 "$@" "$f" "s3://$B/$pf" >"$T/pb.json" 2>"$T/pb.err" ||
		die "backup to s3://$B/$pf: $(cat "$T/pb.err")"
	sha256 "$f" >"$T/psums/$(jq -r .point.id "$T/pb.json")"
}
# restores HOST PREFIX ARGS...: every point list shows of HOST restores bit for
# bit (ARGS: restore's, e.g. a password file); 0 when all do, $NPTS: how many
restores() {
	local h=$1 pf=$2 bad=0 id name
	shift 2
	NPTS=0
	"$CBIMG" list --json --host "$h" "s3://$B/$pf" >"$T/pl.json" 2>"$T/pl.err" ||
		{ echo "       | list fails: $(cat "$T/pl.err")"; return 1; }
	while read -r id name; do
		NPTS=$((NPTS + 1))
		rm -f "$T/pr.out"
		if ! "$CBIMG" restore -q "$@" "s3://$B/$pf/$name" "$T/pr.out" 2>"$T/pr.err" ||
			[ "$(sha256 "$T/pr.out")" != "$(cat "$T/psums/$id" 2>/dev/null)" ]; then
			bad=$((bad + 1))
			echo "       | $name does not restore: $(head -2 "$T/pr.err")"
		fi
	done < <(jq -r '.[] | "\(.id) \(.index_file)"' "$T/pl.json")
	return $bad
}
pback pc1 "$PS" p
fill_random "$PS" 0 2048
pback pc1 "$PS" p
fill_random "$PS" 0 2048 # the same blocks again: seq 1's records are needed by no point
pback pc1 "$PS" p
fill_random "$PS" 5120 64
pback pc1 "$PS" p
pback pc2 "$PS2" p
fill_random "$PS2" 100 100
pback pc2 "$PS2" p
keys "$B" | sort >"$T/pkeys.0"
expect_exit 0 "$CBIMG" list --json --host pc1 s3://$B/p
IMG_BYTES=$(jout '[.[] | select(.seq <= 2) | .stored_bytes] | add')
IMG1=$(jout '.[] | select(.seq == 1) | .stored_bytes')
expect_exit 0 "$CBIMG" prune --dry-run --json --host pc1 --keep-last 2 s3://$B/p
check_eq "dry run: seq 0 and 1 removed, seq 2 a synthetic full, seq 3 kept" \
	"$(jout '[.points[] | .action] | join(",")')" "remove,remove,synthetic-full,keep"
check_eq "dry run: the points are named by s3:// URLs" "$(jout '.points[0].index_file' | cut -c1-5)" "s3://"
check_eq "dry run: no object changed" "$(keys "$B" | sort)" "$(cat "$T/pkeys.0")"
jout '.points[] | select(.action == "remove") | .index_file' | xargs -n1 basename | sed 's/\.cbx$//' >"$T/removed"
expect_exit 0 "$CBIMG" prune --json --host pc1 --keep-last 2 s3://$B/p
check_eq "prune: 2 removed, 1 merged image written" "$(jout '"\(.removed) \(.merged)"')" "2 1"
RECV=$(jout .bytes_received)
echo "  (prune received $RECV bytes; the three images it merges are $IMG_BYTES bytes, seq 1's $IMG1)"
check "prune fetched only the records still needed (less than the images less seq 1's image)" \
	test "$RECV" -lt $((IMG_BYTES - IMG1))
expect_exit 0 "$CBIMG" log --json --host pc1 s3://$B/p
check_eq "log records the prune on S3 (this machine's runs), ok, 2 points removed" \
	"$(jout '.[-1] | "\(.kind) \(.result) \(.points_removed)"')" "prune ok 2"
expect_exit 0 "$CBIMG" list --json --host pc1 s3://$B/p
check_eq "list shows seq 2 and 3 of pc1 only" "$(jout '[.[] | .seq] | join(",")')" "2,3"
check "every point left restores bit for bit" restores pc1 p
left=0
while read -r n; do left=$((left + $(keys "$B" | grep -c -- "$n"))); done <"$T/removed"
check_eq "no object of a removed point is left" "$left" 0
check_eq "seq 2's merged image is an object of its own (-m0000)" "$(keys "$B" | grep -c -- '-m0000\.cbi$')" 1
check_eq "pc2's objects are untouched" "$(keys "$B" | grep '^p/pc2_' | sort)" "$(grep '^p/pc2_' "$T/pkeys.0")"
check "pc2's points restore bit for bit" restores pc2 p
check_eq "... both of them" "$NPTS" 2
check_eq "no lock object and no unfinished upload left" "$(keys "$B" | grep -c cbimg-lock) $(uploads "$B")" "0 0"
check_eq "nothing left in the state's work directories" "$(ls -d "$CBIMG_STATE_DIR"/s3/*/prune-* 2>/dev/null | wc -l)" 0
expect_exit 0 "$CBIMG" verify s3://$B/p
fill_random "$PS" 3000 64
pback pc1 "$PS" p
check_eq "the next backup continues the chain (an incremental)" "$(jq -r .point.type "$T/pb.json")" incremental
# the staging directory now holds incrementals' indexes only (the full was
# rolled forward): its run is still recorded (it once was forgotten as an
# outbox's)
expect_exit 0 "$CBIMG" log --json --host pc1 s3://$B/p
check_eq "log records the backup after the roll forward, ok, naming its point" \
	"$(jout '.[-1] | "\(.result) \(.point.id)"')" "ok $(jq -r .point.id "$T/pb.json")"
check "... and every point restores" restores pc1 p
check_eq "... three of them" "$NPTS" 3
expect_exit 0 "$CBIMG" prune --json --host pc1 --keep-last 5 s3://$B/p
check_eq "a prune with nothing to remove changes nothing" "$(jout '"\(.removed) \(.merged)"')" "0 0"
expect_exit 2 "$CBIMG" prune --json --keep-last 1 s3://$B/p
check_grep "selectors matching two hosts: refused, naming the bucket" "several jobs in 's3://$B/p'"
expect_exit 1 "$CBIMG" prune --json --host nobody --keep-last 1 s3://$B/p
check_grep "no point matches: one line naming the bucket" "no points in 's3://$B/p"

# an encrypted chain: the merged records re-sealed, no plaintext sent
echo "encrypted prune on s3" >"$T/ppass"
cp "$PT" "$T/pt2.img"
pback pc3 "$T/pt2.img" e --encrypt --scrypt 12:8:1 --password-file "$T/ppass"
printf 'CBIMG-PLAINTEXT-MARKER-CHANGED-1' | dd of="$T/pt2.img" bs=1 seek=3000000 conv=notrunc 2>/dev/null
pback pc3 "$T/pt2.img" e --password-file "$T/ppass"
printf 'CBIMG-PLAINTEXT-MARKER-CHANGED-2' | dd of="$T/pt2.img" bs=1 seek=9000000 conv=notrunc 2>/dev/null
pback pc3 "$T/pt2.img" e --password-file "$T/ppass"
expect_exit 4 env -u CBIMG_PASSWORD "$CBIMG" prune --keep-last 1 s3://$B/e
check_eq "without the passphrase: exit 4, nothing changed" "$(keys "$B" | grep -c '^e/')" 7
expect_exit 0 "$CBIMG" prune --json --keep-last 1 --password-file "$T/ppass" s3://$B/e
check_eq "encrypted: seq 2 becomes a synthetic full" "$(jout '[.points[] | .action] | join(",")')" \
	"remove,remove,synthetic-full"
check "the encrypted point left restores bit for bit" restores pc3 e --password-file "$T/ppass"
leak=0
for k in $(keys "$B" | grep '^e/'); do
	s3curl GET "$B/$k" >"$T/obj"
	grep -q 'CBIMG-PLAINTEXT-MARKER' "$T/obj" && leak=$((leak + 1))
done
check_eq "key file, index, merged image left; none holds plaintext" "$(keys "$B" | grep -c '^e/') $leak" "3 0"

# two merges in one run: --keep-daily 2 over six points made on two days
# (tests/e2e/clock_shim.c) keeps seq 2, a synthetic full of seq 0 to 2, and
# seq 5, into which seq 3 and 4 are folded
CLK=$T/clock.so
cc -O2 -shared -fPIC -o "$CLK" "$E2E_DIR/clock_shim.c" -ldl 2>"$T/cc.err" ||
	die "cannot build tests/e2e/clock_shim.c: $(head -3 "$T/cc.err")"
PD=$T/pd.img
head -c $((6 << 20)) /dev/urandom >"$PD"
d0=$(($(date +%s) / 86400 * 86400 - 2 * 86400 + 3600)) # 01:00 UTC two days ago
for k in 0 1 2 3 4 5; do
	[ $k = 0 ] || fill_random "$PD" $((k * 512)) 1024
	CBIMG_TEST_TIME=$((d0 + (k / 3) * 86400 + k * 600)) LD_PRELOAD=$CLK pback pd "$PD" d
done
expect_exit 0 env TZ=UTC "$CBIMG" prune --json --keep-daily 2 s3://$B/d
check_eq "two days: seq 2 a synthetic full, seq 5 merged, the others removed" \
	"$(jout '[.points[] | .action] | join(",")')" "remove,remove,synthetic-full,remove,remove,merge"
check "both points left restore bit for bit" restores pd d
check_eq "... two of them" "$NPTS" 2
check_eq "left: two indexes and their two merged images" \
	"$(keys "$B" | grep '^d/' | grep -c '\.cbx$') $(keys "$B" | grep '^d/' | grep -c -- '-m[0-9]*\.cbi$') $(keys "$B" | grep -c '^d/')" \
	"2 2 4"

# kill -9 of prune before each of its last requests (its upload and its
# deletes) and at S3_PRUNE_KILL_MOMENTS (default 4) moments spread over the
# earlier ones, each on a fresh copy of one chain (tests/e2e/reqkill_shim.c:
# SIGKILL just before the Nth HTTP request; one transfer at a time, so the
# order of the requests is fixed)
bucket prunekill
RK=$T/reqkill.so
cc -O2 -shared -fPIC -o "$RK" "$E2E_DIR/reqkill_shim.c" -ldl 2>"$T/cc.err" ||
	die "cannot build tests/e2e/reqkill_shim.c: $(head -3 "$T/cc.err")"
KS2=$T/pk.img
head -c $((12 << 20)) /dev/urandom >"$KS2"
for k in 0 1 2 3; do
	[ $k = 0 ] || fill_random "$KS2" $((k * 2048)) 2048
	pback pk "$KS2" orig
done
mkdir -p "$T/korig"
keys "$B" | grep '^orig/' | sed 's|^orig/||' >"$T/korig.names"
while read -r n; do s3curl GET "$B/orig/$n" >"$T/korig/$n"; done <"$T/korig.names"
# copy_chain PREFIX: the original chain's objects under PREFIX
copy_chain() {
	local n
	while read -r n; do
		curl -s -f --aws-sigv4 "aws:amz:default:s3" --user "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY" \
			-H 'x-amz-content-sha256: UNSIGNED-PAYLOAD' -T "$T/korig/$n" "$S3_ENDPOINT/$B/$1/$n" >/dev/null ||
			die "copy of $n to $1"
	done <"$T/korig.names"
}
# objs PREFIX: the object names under PREFIX (without it), sorted; pobjs: but the lock object
objs() { keys "$B" | grep "^$1/" | sed "s|^$1/||" | sort; }
pobjs() { objs "$1" | grep -v '^\.cbimg-lock-'; }
copy_chain k0
expect_exit 0 env LD_PRELOAD="$RK" CBIMG_REQUEST_LOG="$T/nreq" CBIMG_S3_JOBS=1 "$CBIMG" prune -q --keep-last 1 s3://$B/k0
R=$(cat "$T/nreq")
objs k0 >"$T/k.final"
LAST=$(grep -c . "$T/korig.names") # at least one request per object it stores or deletes
M=${S3_PRUNE_KILL_MOMENTS:-4}
moments=$( (seq $((R > LAST + 1 ? R - LAST - 1 : 1)) "$R"
	for ((m = 1; m <= M; m++)); do echo $(((R - LAST - 1) * m / (M + 1) + 1)); done) | sort -n | uniq)
echo "  (an uninterrupted prune makes $R requests; killing it before each of $(echo $moments | wc -w) of them)"
bad=0 n=0 before=0 during=0 done_=0 took=0 aborted=0
for N in $moments; do
	n=$((n + 1))
	copy_chain k$N
	{ CBIMG_KILL_REQUEST=$N CBIMG_S3_JOBS=1 LD_PRELOAD="$RK" "$CBIMG" prune -q --keep-last 1 s3://$B/k$N >/dev/null 2>&1; } 2>/dev/null
	if [ "$(pobjs k$N)" = "$(sort "$T/korig.names")" ]; then
		before=$((before + 1)) # it had stored nothing yet
	elif [ "$(pobjs k$N)" = "$(cat "$T/k.final")" ]; then
		done_=$((done_ + 1)) # every delete done, the lock not yet released
	else
		during=$((during + 1)) # the merged image stored, deletes under way
	fi
	restores pk k$N || { bad=$((bad + 1)); echo "       | request $N: a listed point does not restore"; }
	"$CBIMG" prune --keep-last 1 s3://$B/k$N >"$T/again.out" 2>&1 ||
		{ bad=$((bad + 1)); echo "       | request $N: the next prune fails: $(cat "$T/again.out")"; }
	grep -q "took over the lock" "$T/again.out" && took=$((took + 1))
	if grep -q "took over the lock" "$T/again.out" && ! grep -q "took over the lock .* left by a prune on " "$T/again.out"; then
		bad=$((bad + 1))
		echo "       | request $N: the takeover note does not say a prune left the lock: $(cat "$T/again.out")"
	fi
	grep -q "aborted 1 unfinished upload of the job" "$T/again.out" && aborted=$((aborted + 1))
	[ "$(objs k$N)" = "$(cat "$T/k.final")" ] ||
		{ bad=$((bad + 1)); echo "       | request $N: other objects than an uninterrupted prune leaves:"; objs k$N | sed 's/^/       | /'; }
	restores pk k$N || { bad=$((bad + 1)); echo "       | request $N: after the next prune, a point does not restore"; }
done
echo "  $n kills: $before before the prune stored an object, $during after it stored the merged image and" \
	"before its last delete, $done_ after its deletes; the next prune took over $took locks and aborted" \
	"$aborted multipart uploads"
check_eq "kill -9 before $n requests of prune: every listed point restores, the next prune finishes" "$bad" 0
check "some kills landed between the merged image's store and the last delete" test "$during" -gt 0
check_eq "no unfinished upload left by the killed prunes" "$(uploads "$B")" 0

# ------------------------------------------------- prune's lease
# prune renews its lock's lease as a backup does (format/SPEC.md, "Lease
# renewal"). Its merged image's PUT slowed (reqkill_shim.c's
# CBIMG_DELAY_REQUEST: sent 6 s late, the lease's GET and PUT not), a prune
# lasts well past a 3 s lease: it succeeds, and meanwhile (before it changes
# the bucket, so that the second one's read of it is whole) a second prune
# and a backup of the job (from another state directory: another machine) are
# refused. Then radosgw is paused for 5 s just after a prune (its deletes
# slowed: each sent 0.6 s late) took its lock: it stops before its next store
# or delete, says why on one line, exit 1; every listed point restores and
# the next prune finishes.
bucket prunelease
export CBIMG_STATE_DIR=$T/state-plock
PL=$T/pl.img
head -c $((4 << 20)) /dev/urandom >"$PL"
for k in 0 1 2 3 4 5; do
	[ $k = 0 ] || fill_random "$PL" $((k * 512)) 256
	pback pl "$PL" a
	pback pl "$PL" b
done
objs a | grep -v '^\.cbimg-lock-' >"$T/pl.a0"
objs b >"$T/pl.b0"
t0=$(date +%s.%N)
CBIMG_S3_LEASE=3 CBIMG_S3_JOBS=1 CBIMG_DELAY_REQUEST="-m0000.cbi 6000" LD_PRELOAD="$RK" \
	"$CBIMG" prune -q --keep-last 1 s3://$B/a >"$T/pl1.out" 2>&1 &
LP=$!
BGPIDS+=("$LP")
sleep 3.5
if kill -0 "$LP" 2>/dev/null; then
	check_eq "the bucket unchanged so far" "$(pobjs a)" "$(cat "$T/pl.a0")"
	# the lock object's body says what holds it (revision 2.11), and so do the refusals
	lk=$(keys "$B" | grep '^a/\.cbimg-lock-' | head -1)
	check_eq "the prune's lock object names its operation: op prune" "$(s3curl GET "$B/$lk" | grep -x 'op .*')" "op prune"
	held="another cbimg \(host [^,]+, pid $LP\) is pruning job 'sys' of '$PL' in 's3://$B/a/?' \(lock object '[^']+', lease until [0-9]+ s after the epoch\)"
	expect_exit 1 env CBIMG_S3_LEASE=3 CBIMG_STATE_DIR="$T/state-plock2" "$CBIMG" prune --json --keep-last 1 s3://$B/a
	check_grep "a second prune after the first one's initial lease ran out is refused (renewed)" \
		"^cbimg: another cbimg .* job 'sys'"
	check_grep "... one line saying a prune (its host and pid) holds the job" "^cbimg: $held\$"
	check_eq "... on one line" "$(wc -l <"$T/stderr")" 1
	jmsg=$(jq -r '"\(.exit) \(.error)"' "$T/stdout")
	expect_exit 1 env CBIMG_S3_LEASE=3 CBIMG_STATE_DIR="$T/state-plock2" \
		"$CBIMG" backup -q --host pl --job sys --level 1 "$PL" s3://$B/a
	check_grep "... and so is a backup of the job" "^cbimg: another cbimg .* job 'sys'"
	check_grep "... saying a prune holds the job, not a backup" "^cbimg: $held\$"
	OUT=$jmsg
	check_grep "the second prune's --json: the same message, exit 1" "^1 $held\$"
	wait "$LP"
	RC=$?
	OUT=$(cat "$T/pl1.out")
	check_eq "the prune that outlasted its 3 s lease ($(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') s) succeeds" "$RC" 0
	check "... every point left restores" restores pl a
	check_eq "... one of them" "$NPTS" 1
	check_eq "... its lock object deleted, no upload left" "$(keys "$B" | grep -c '^a/\.cbimg-lock') $(uploads "$B")" "0 0"
else
	wait "$LP"
	skip_part "the prune ended within 3.5 s: its lease renewal was not tested"
fi
CBIMG_S3_LEASE=3 CBIMG_S3_JOBS=1 CBIMG_DELAY_REQUEST="DELETE 600" LD_PRELOAD="$RK" \
	"$CBIMG" prune --keep-last 1 s3://$B/b >"$T/pl2.out" 2>&1 &
LP=$!
BGPIDS+=("$LP")
seen=0
for i in $(seq 1 500); do
	if keys "$B" | grep -q '^b/\.cbimg-lock'; then seen=1; break; fi
	kill -0 "$LP" 2>/dev/null || break
	sleep 0.01
done
if [ "$seen" = 1 ] && bash "$RGW" pause-rgw "$RDIR"; then
	sleep 5
	bash "$RGW" resume-rgw "$RDIR"
	wait "$LP"
	RC=$?
	OUT=$(cat "$T/pl2.out")
	check_eq "prune's lease lost while radosgw stalled: exit 1" "$RC" 1
	check_grep "one line: stopped before its next store or delete, naming the lock and why" \
		"^cbimg: the prune stopped before its next store or delete.*lock of job 'sys' in 's3://$B/b/?'.*(renewed in time|lost)"
	check_eq "... on one line" "$(wc -l <"$T/pl2.out")" 1
	echo "  (prune said: $(cut -c1-300 "$T/pl2.out"))"
	if [ "$(pobjs b)" = "$(grep -v '^\.cbimg-lock-' "$T/pl.b0")" ]; then
		echo "  (the prune stopped before it stored the merged image)"
	elif [ -z "$(comm -23 <(grep -v '^\.cbimg-lock-' "$T/pl.b0") <(pobjs b))" ]; then
		echo "  (the prune stored the merged image and stopped before its first delete)"
	else
		echo "  (the prune stopped after $(comm -23 <(grep -v '^\.cbimg-lock-' "$T/pl.b0") <(pobjs b) | wc -l) deletes)"
	fi
	check "... every point list shows restores" restores pl b
	check_eq "... its lock object deleted (it still named the run)" "$(keys "$B" | grep -c '^b/\.cbimg-lock')" 0
	expect_exit 0 "$CBIMG" prune -q --keep-last 1 s3://$B/b
	check "the next prune finishes: its point restores" restores pl b
	expect_exit 0 "$CBIMG" log --json s3://$B/b
	check_eq "log: the stopped prune failed, with its line, then the next prune ok" \
		"$(jout '[.[] | select(.kind == "prune") | .result] | join(",")') $(jout '[.[] | select(.kind == "prune")][0].message | startswith("the prune stopped")')" \
		"failed,ok true"
	check_eq "... one point, as the uninterrupted prune of a copy left ($(pobjs a | wc -l) objects)" \
		"$NPTS $(pobjs b | wc -l)" "1 $(pobjs a | wc -l)"
	check_eq "no unfinished upload left" "$(uploads "$B")" 0
else
	wait "$LP"
	skip_part "the prune's lock not seen, or radosgw not paused: prune's lease loss not tested"
fi

finish
