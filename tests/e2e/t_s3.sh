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
#   - radosgw stopped during a backup: a clean failure; restarted: the next run succeeds
#   - wrong credentials, a missing bucket, an unreachable endpoint: one line, exit 1
#   - an encrypted chain: no object holds the source's plaintext
#   - reads by ranged GET: every point of a 3-point chain restores bit for bit,
#     the newest reading only the records it needs; verify streams each image;
#     a byte changed in the bucket: verify and restore exit 3
#   - log (this machine's runs) and catalog rebuild (from LIST) on S3
#   - mount of an S3 point (FUSE): disk.img is the source, a file copied out
#     of its ext4 (loop-mounted) is the original
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
for u in test_s3 test_objstore; do
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

finish
