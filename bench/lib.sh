# bench/lib.sh - what the small benchmarks (crypto.sh, growth.sh) share:
# source it after option parsing, with $work set.
#   bench_start NAME   checks $CBIMG, makes a fresh $work (removed at exit)
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
