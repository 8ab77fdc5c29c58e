# bench/lib.sh - what the small benchmarks (crypto.sh, growth.sh) share:
# source it after option parsing, with $work set.
#   bench_start NAME   checks $CBIMG, makes a fresh $work (removed at exit)
#   rgw_up             the S3 benches' Ceph RGW (below)
#   drop               syncs and drops the page cache (root only; see $can_drop)
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
