#!/usr/bin/env bash
# bench/s3prune.sh [--size MIB] [--percent P] [--work DIR]
# What prune costs on S3 (a Ceph RADOS Gateway over loopback,
# tests/s3/rgw.sh) against the same prune of a local directory holding the
# same chain. The chain: a full of a realistic disk (bench/mkdisk.sh) and
# five days of changes (bench/dayofchanges.sh), the same bytes into a
# directory and into a bucket. Phases:
#   roll  prune --keep-last 5: the full goes, i1 becomes a synthetic full
#   fold  prune --keep-last 1 afterwards: i1..i4 folded into i5 (a synthetic
#         full again)
# For each: wall time on S3 and in the directory, the merged image's bytes,
# what the S3 prune received and sent, and what fetching the whole images
# the merge reads would have received (the simple way this avoids), and the
# time of one curl PUT of the merged image's bytes (the upload's ceiling).
# Warm page cache; one run (--repeat is not offered: a run takes minutes).
# CBIMG_S3_RGW_DIR=DIR reuses a running cluster (tests/s3/rgw.sh start DIR).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
CBIMG=${CBIMG:-$here/../build/cbimg}
RGW=$here/../tests/s3/rgw.sh
size=512 percent=3 work=/tmp/cbimg-s3prune-bench
while [ $# -gt 0 ]; do
	case $1 in
	--size) size=$2; shift 2 ;;
	--percent) percent=$2; shift 2 ;;
	--work) work=$2; shift 2 ;;
	*) echo "usage: $0 [--size MIB] [--percent P] [--work DIR]" >&2; exit 2 ;;
	esac
done
. "$here/lib.sh"
bench_start s3prune.sh
rgw_up
bkt=prune-bench-$(date +%s)
bash "$RGW" bucket "$rdir" "$bkt"
export CBIMG_STATE_DIR=$work/state
now() { date +%s%N; }
ms() { echo $((($(now) - $1) / 1000000)); }

disk=$work/disk.img
bash "$here/mkdisk.sh" "$disk" "$size" >/dev/null
mkdir -p "$work/dir"
for k in 0 1 2 3 4 5; do
	[ "$k" = 0 ] || bash "$here/dayofchanges.sh" "$disk" "$percent" "$k" >/dev/null 2>&1
	"$CBIMG" backup -q --no-state "$disk" "$work/dir"
	"$CBIMG" backup -q "$disk" "s3://$bkt/c"
done
rm -f "$disk" # prunes never read the source

# phase NAME RULE...: the prune in both places, and what it cost
phase() {
	local name=$1 t whole img
	shift
	"$CBIMG" prune --dry-run --json "$@" "s3://$bkt/c" >"$work/plan.json"
	# the images the merge reads in full: the removed points' and the kept one's
	whole=$("$CBIMG" list --json "s3://$bkt/c" | jq --slurpfile p "$work/plan.json" \
		'[.[] | select(.id as $i | $p[0].points[] | select(.id == $i and .action != "keep")) | .stored_bytes] | add')
	t=$(now)
	"$CBIMG" prune -q --no-state "$@" "$work/dir"
	local tdir
	tdir=$(ms "$t")
	t=$(now)
	"$CBIMG" prune --json "$@" "s3://$bkt/c" >"$work/p.json"
	local ts3
	ts3=$(ms "$t")
	img=$(ls -S "$work"/dir/*-m*.cbi | head -1)
	t=$(now)
	s3curl -T "$img" "$S3_ENDPOINT/$bkt/ceil/$name" -o /dev/null
	local tput
	tput=$(ms "$t")
	jq -r --arg n "$name" --argjson tdir "$tdir" --argjson ts3 "$ts3" --argjson tput "$tput" --argjson whole "$whole" \
		'"\($n): S3 \($ts3) ms, directory \($tdir) ms (\($ts3 / $tdir * 100 | floor / 100)x); merged image \(.bytes_written) B, PUT of it \($tput) ms; received \(.bytes_received) B (whole images: \($whole) B, \(.bytes_received / $whole * 100 | floor) %), sent \(.bytes_sent) B"' \
		"$work/p.json"
}
echo "s3prune.sh: ${size} MiB disk, ${percent}% a day, 6 points; $(nproc) CPUs; RGW on 127.0.0.1"
phase roll --keep-last 5
phase fold --keep-last 1
