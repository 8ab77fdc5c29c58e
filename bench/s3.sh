#!/usr/bin/env bash
# bench/s3.sh [--size MIB] [--repeat N] [--work DIR]
# Backup to S3 (a Ceph RADOS Gateway over loopback, tests/s3/rgw.sh) against
# backup to a local directory, and against the gateway's own ceilings
# measured in the same run with curl (PUT and GET of the same bytes as the
# full's image, in CBIMG_S3_JOBS (4) parallel streams, as cbimg uses).
# Phases, alternated run by run so that a noisy machine disturbs all alike:
#   full     backup --full of a realistic disk (bench/mkdisk.sh) to a dir / to S3
#   incr     an incremental after a day of changes (bench/dayofchanges.sh):
#            bytes sent against bytes stored (image + index)
#   restore  the newest point from the dir / from S3
# Prints medians and the ratios the issue asks for. CBIMG_S3_RGW_DIR=DIR
# reuses a running cluster (tests/s3/rgw.sh start DIR).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
CBIMG=${CBIMG:-$here/../build/cbimg}
RGW=$here/../tests/s3/rgw.sh
size=1024 repeat=3 work=/tmp/cbimg-s3-bench
while [ $# -gt 0 ]; do
	case $1 in
	--size) size=$2; shift 2 ;;
	--repeat) repeat=$2; shift 2 ;;
	--work) work=$2; shift 2 ;;
	*) echo "usage: $0 [--size MIB] [--repeat N] [--work DIR]" >&2; exit 2 ;;
	esac
done
. "$here/lib.sh"
bench_start s3.sh
rgw_up
jobs=${CBIMG_S3_JOBS:-4}
bkt=bench-$(date +%s)
bash "$RGW" bucket "$rdir" "$bkt"

disk=$work/disk.img
bash "$here/mkdisk.sh" "$disk" "$size" >/dev/null
now() { date +%s.%N; }
since() { echo "$(now) - $1" | bc; }
median() { sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
ratio() { echo "scale=2; $1 / $2" | bc; }
s3curl() {
	curl -s -f --aws-sigv4 "aws:amz:default:s3" --user "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY" \
		-H 'x-amz-content-sha256: UNSIGNED-PAYLOAD' "$@"
}

: >"$work/t.full.dir" ; : >"$work/t.full.s3" ; : >"$work/t.put"
: >"$work/t.rest.dir" ; : >"$work/t.rest.s3" ; : >"$work/t.get"
: >"$work/t.incr.dir" ; : >"$work/t.incr.s3"
for r in $(seq 1 "$repeat"); do
	cp --sparse=always "$disk" "$work/d.img"
	rm -rf "$work/dir" "$work/state-dir" "$work/state-s3"
	mkdir -p "$work/dir"
	drop
	t=$(now); "$CBIMG" backup -q --state-dir "$work/state-dir" "$work/d.img" "$work/dir"; since "$t" >>"$work/t.full.dir"
	drop
	t=$(now); "$CBIMG" backup -q --json --state-dir "$work/state-s3" "$work/d.img" "s3://$bkt/r$r" >"$work/full.json"
	since "$t" >>"$work/t.full.s3"
	# the ceiling: the full's image bytes in $jobs parallel PUTs, then GETs
	img=$(ls "$work"/dir/*.cbi)
	split -n "$jobs" -d "$img" "$work/part."
	drop
	t=$(now)
	for p in "$work"/part.*; do s3curl -T "$p" "$S3_ENDPOINT/$bkt/ceil$r/$(basename "$p")" -o /dev/null & done
	wait
	since "$t" >>"$work/t.put"
	t=$(now)
	for p in "$work"/part.*; do s3curl "$S3_ENDPOINT/$bkt/ceil$r/$(basename "$p")" -o "$p.back" & done
	wait
	since "$t" >>"$work/t.get"
	imgbytes=$(stat -c %s "$img")
	rm -f "$work"/part.*
	# an incremental after a day of changes
	bash "$here/dayofchanges.sh" "$work/d.img" 3 "$r" >/dev/null 2>&1
	drop
	t=$(now); "$CBIMG" backup -q --json --state-dir "$work/state-dir" "$work/d.img" "$work/dir" >"$work/incr.dir.json"
	since "$t" >>"$work/t.incr.dir"
	drop
	t=$(now); "$CBIMG" backup -q --json --state-dir "$work/state-s3" "$work/d.img" "s3://$bkt/r$r" >"$work/incr.json"
	since "$t" >>"$work/t.incr.s3"
	rm -f "$work/out.img"
	drop
	t=$(now); "$CBIMG" restore -q "$work/dir" latest "$work/out.img"; since "$t" >>"$work/t.rest.dir"
	rm -f "$work/out.img"
	drop
	t=$(now); "$CBIMG" restore -q --state-dir "$work/state-s3" "s3://$bkt/r$r" latest "$work/out.img"
	since "$t" >>"$work/t.rest.s3"
	cmp -s "$work/out.img" "$work/d.img" || { echo "s3.sh: the restore from S3 differs" >&2; exit 1; }
	rm -f "$work/out.img"
done
fd=$(median <"$work/t.full.dir") fs=$(median <"$work/t.full.s3") put=$(median <"$work/t.put")
id=$(median <"$work/t.incr.dir") is=$(median <"$work/t.incr.s3")
rd=$(median <"$work/t.rest.dir") rs=$(median <"$work/t.rest.s3") get=$(median <"$work/t.get")
sent=$(jq -r .bytes_sent "$work/incr.json")
stored=$(jq -r '.point.stored_bytes + .point.index_bytes' "$work/incr.json")
mib() { echo "scale=1; $1 / 1048576" | bc; }
echo "S3 benchmark: ${size} MiB disk (mkdisk.sh), full image $(mib "$imgbytes") MiB, $repeat runs, medians (s)"
echo "radosgw on 127.0.0.1 (Ceph $(ceph --version | awk '{print $3}')), $jobs parallel streams, part ${CBIMG_S3_PART_MIB:-16} MiB"
printf '%-34s %8s %8s %8s\n' phase dir S3 ceiling
printf '%-34s %8.2f %8.2f %8.2f\n' "full backup" "$fd" "$fs" "$put"
printf '%-34s %8.2f %8.2f %8s\n' "incremental (3% day)" "$id" "$is" "-"
printf '%-34s %8.2f %8.2f %8.2f\n' "restore newest" "$rd" "$rs" "$get"
echo "full to S3 / full to dir:        $(ratio "$fs" "$fd")  (target 1.3)"
echo "full to S3 / PUT of its image:   $(ratio "$fs" "$put")  (target 1.2)"
echo "restore from S3 / GET of image:  $(ratio "$rs" "$get")  (target 1.3)"
echo "restore from S3 / from dir:      $(ratio "$rs" "$rd")"
echo "incremental to S3 / to dir:      $(ratio "$is" "$id")"
echo "incremental: sent $sent bytes for $stored stored (image + index): $(ratio "$sent" "$stored")"
# the pairs behind the full's median (a loaded machine shows in their spread)
echo "full backup per run (dir, S3, S3/dir):"
paste "$work/t.full.dir" "$work/t.full.s3" | awk '{ printf "  %.2f %.2f %.2f\n", $1, $2, $2 / $1 }'
