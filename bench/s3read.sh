#!/usr/bin/env bash
# bench/s3read.sh [--size MIB] [--repeat N] [--work DIR]
# Restore from S3 alone (issue 18, the read side), for quick paired runs:
# one chain (a full of a realistic disk, bench/mkdisk.sh, and an incremental
# after a day of changes, bench/dayofchanges.sh) in a local directory and in
# a bucket of a Ceph RADOS Gateway over loopback (tests/s3/rgw.sh), then,
# each run in turn (the order alternated so that a noisy machine disturbs
# all alike):
#   get      the gateway's GET ceiling: the full's image bytes in
#            CBIMG_S3_JOBS (4) parallel curl GETs to files, as bench/s3.sh
#   s3       restore of the newest point from S3 (ranged GETs)
#   dir      restore of the newest point from the directory
# Prints medians, the ratio restore-from-S3 / GET ceiling (target 1.3) and
# what the restore fetched. CBIMG_S3_RGW_DIR=DIR reuses a running cluster.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
CBIMG=${CBIMG:-$here/../build/cbimg}
RGW=$here/../tests/s3/rgw.sh
size=1024 repeat=5 work=/tmp/cbimg-s3read-bench
while [ $# -gt 0 ]; do
	case $1 in
	--size) size=$2; shift 2 ;;
	--repeat) repeat=$2; shift 2 ;;
	--work) work=$2; shift 2 ;;
	*) echo "usage: $0 [--size MIB] [--repeat N] [--work DIR]" >&2; exit 2 ;;
	esac
done
. "$here/lib.sh"
bench_start s3read.sh
rgw_up
jobs=${CBIMG_S3_JOBS:-4}
bkt=s3read-$(date +%s)
bash "$RGW" bucket "$rdir" "$bkt"

disk=$work/d.img
bash "$here/mkdisk.sh" "$disk" "$size" >/dev/null
mkdir -p "$work/dir"
"$CBIMG" backup -q --state-dir "$work/state-dir" "$disk" "$work/dir"
"$CBIMG" backup -q --state-dir "$work/state-s3" "$disk" "s3://$bkt/p"
img=$(ls "$work"/dir/*.cbi)
imgbytes=$(stat -c %s "$img")
split -n "$jobs" -d "$img" "$work/part."
for p in "$work"/part.*; do s3curl -T "$p" "$S3_ENDPOINT/$bkt/ceil/$(basename "$p")" -o /dev/null; done
bash "$here/dayofchanges.sh" "$disk" 3 1 >/dev/null 2>&1
"$CBIMG" backup -q --state-dir "$work/state-dir" "$disk" "$work/dir"
"$CBIMG" backup -q --state-dir "$work/state-s3" "$disk" "s3://$bkt/p"

: >"$work/t.get"; : >"$work/t.s3"; : >"$work/t.dir"
get() {
	local t
	drop
	t=$(now)
	for p in "$work"/part.??; do s3curl "$S3_ENDPOINT/$bkt/ceil/$(basename "$p")" -o "$p.back" & done
	wait
	since "$t" >>"$work/t.get"
	rm -f "$work"/part.*.back
}
s3() {
	local t
	rm -f "$work/out.img"
	drop
	t=$(now)
	CBIMG_S3_TRACE=$work/trace "$CBIMG" restore -q --state-dir "$work/state-s3" "s3://$bkt/p" latest "$work/out.img"
	since "$t" >>"$work/t.s3"
	cmp -s "$work/out.img" "$disk" || { echo "s3read.sh: the restore from S3 differs" >&2; exit 1; }
}
dir() {
	local t
	rm -f "$work/out.img"
	drop
	t=$(now)
	"$CBIMG" restore -q "$work/dir" latest "$work/out.img"
	since "$t" >>"$work/t.dir"
}
for r in $(seq 1 "$repeat"); do
	rm -f "$work/trace"
	if [ $((r % 2)) = 1 ]; then get; s3; dir; else dir; s3; get; fi
done
rm -f "$work/out.img"
g=$(median <"$work/t.get") s=$(median <"$work/t.s3") d=$(median <"$work/t.dir")
stored=$(du -cb "$work"/dir/*.cbi | tail -1 | cut -f1)
fetched=$(awk '$1 == "GET" { s += $4; n++ } END { printf "%d %d", s, n }' "$work/trace")
echo "S3 restore benchmark: ${size} MiB disk (mkdisk.sh), full image $(mib "$imgbytes") MiB, images $(mib "$stored") MiB,"
echo "$repeat paired runs, medians (s); radosgw on 127.0.0.1 (Ceph $(ceph --version | awk '{print $3}')), $jobs streams"
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-34s %8s\n' "GET ceiling (full's image)" "$g" "restore newest from S3" "$s" "restore newest from dir" "$d"
echo "restore from S3 / GET ceiling:   $(ratio "$s" "$g")  (target 1.3)"
echo "restore from S3 / from dir:      $(ratio "$s" "$d")"
echo "restore fetched: $(mib "${fetched% *}") MiB in ${fetched#* } GETs (last run)"
echo "runs (get s3 dir):"
paste "$work/t.get" "$work/t.s3" "$work/t.dir"
