# bench/lib.sh - what the small benchmarks (crypto.sh, growth.sh) share:
# source it after option parsing, with $work set.
#   bench_start NAME   checks $CBIMG, makes a fresh $work (removed at exit)
#   rgw_up             the S3 benches' Ceph RGW (below)
#   drop               syncs and drops the page cache (root only; see $can_drop)
#   now, since T, median, ratio A B, mib BYTES, s3curl ARGS   the S3 benches'
#                      clock, figures (awk: bc is not installed on a fresh
#                      machine) and curl with the cluster's keys
#   ceph_stats         the /proc/PID/stat files of radosgw, ceph-osd and
#                      ceph-mon of $rdir; ceph_ticks: their CPU (below)
bench_start() {
	[ -x "$CBIMG" ] || { echo "$1: no cbimg at $CBIMG (run make)" >&2; exit 1; }
	rm -rf "$work"
	mkdir -p "$work"
	trap 'rm -rf "$work"' EXIT
	can_drop=0
	if [ "$(id -u)" = 0 ] && [ -w /proc/sys/vm/drop_caches ]; then can_drop=1; fi
}
drop() { sync; [ "$can_drop" = 1 ] && echo 3 >/proc/sys/vm/drop_caches || true; }

# rgw_up: the Ceph RGW of an S3 bench (needs $here, $work and $RGW, the
# path of tests/s3/rgw.sh): the running cluster of $CBIMG_S3_RGW_DIR, or
# one started in $work/rgw, stopped (and $work removed) at exit. Sets
# $rdir and sources the cluster's environment (endpoint and keys).
rgw_up() {
	if [ -n "${CBIMG_S3_RGW_DIR:-}" ]; then
		rdir=$CBIMG_S3_RGW_DIR
	else
		rdir=$work/rgw
		trap 'bash "$RGW" stop "$rdir"; rm -rf --one-file-system "$work"' EXIT
		bash "$RGW" start "$rdir" >&2 || exit 1
	fi
	. "$rdir/env"
}

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.3f\n", b - a }'; }
# the middle of an odd count (crypto.sh, mount.sh and prune.sh have their own)
median() { sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
mib() { awk -v a="$1" 'BEGIN { printf "%.1f", a / 1048576 }'; }
s3curl() {
	curl -s -f --aws-sigv4 "aws:amz:default:s3" --user "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY" \
		-H 'x-amz-content-sha256: UNSIGNED-PAYLOAD' "$@"
}

# ceph_stats: "/proc/R/stat /proc/O/stat /proc/M/stat" for the radosgw,
# ceph-osd and ceph-mon of the cluster in $rdir, found by their command
# lines (rgw.sh's rgw_pids: a /proc scan, no pgrep); fails naming a daemon
# that is not running.
ceph_stats() {
	local d p f pids out=
	pids=$( . "$RGW"; rgw_pids "$(cd "$rdir" && pwd)" )
	for d in radosgw ceph-osd ceph-mon; do
		f=
		for p in $pids; do
			[ "$( { tr '\0' '\n' <"/proc/$p/cmdline"; } 2>/dev/null | head -1)" = "$d" ] && f=/proc/$p/stat
		done
		[ -n "$f" ] || { echo "no $d of $rdir is running" >&2; return 1; }
		out="$out $f"
	done
	echo $out
}
# ceph_ticks STATS: the CPU (utime + stime, all threads, clock ticks) each
# of those daemons has used so far, on one line in that order; fails if one
# has gone
ceph_ticks() { awk '{ sub(/^.*\) /, ""); printf "%s%d", (NR > 1 ? " " : ""), $12 + $13 } END { print "" }' $1; }
