#!/usr/bin/env bash
# bench/wtrace_overhead.sh - what tracing writes (src/lib/wtrace.c, the
# trace snapshot mode) costs the writers of the traced device.
#
#   WTRACE_HELPER=/abs/build/tests/wtrace_helper bash bench/wtrace_overhead.sh [RUNS]
#
# A loop device on a 1 GiB file in /tmp; each workload runs RUNS times
# (default 5) with tracing on and off in turn (on, off, on, off, ...), timed
# around the writer alone (tracing's start and stop, about a second of fixed
# cost mostly in the kernel's buffer allocation and instance removal, are
# timed apart). Prints the medians of wall time and of the writer's CPU time
# (user + system: the tracepoints run in the writer's context) and their
# ratios, per workload, and the tracer's own wall and CPU time:
#   dd1M   1 GiB, 1 MiB O_DIRECT writes  (1024 requests)
#   dd4k   256 MiB, 4 KiB O_DIRECT writes (65536 requests: the event-heavy case)
#   buf    1 GiB buffered writes + fsync (writeback's large requests)
# Needs root and a free loop device.
set -euo pipefail
export LC_ALL=C
H=${WTRACE_HELPER:?set WTRACE_HELPER to the built tests/wtrace_helper}
RUNS=${1:-5}
W=$(mktemp -d /tmp/cbimg-wtrace-bench.XXXXXX)
truncate -s 1G "$W/disk.img"
L=$(losetup -f --show "$W/disk.img")
trap 'losetup -d "$L"; rm -rf --one-file-system "$W"' EXIT
dd if=/dev/zero of="$L" bs=1M count=1024 oflag=direct status=none # allocate the file

declare -A cmd=(
	[dd1M]="dd if=/dev/zero of=$L bs=1M count=1024 oflag=direct status=none"
	[dd4k]="dd if=/dev/zero of=$L bs=4k count=65536 oflag=direct status=none"
	[buf]="dd if=/dev/zero of=$L bs=1M count=1024 conv=fsync status=none"
)
# timed CMD FILE: runs CMD, appends "wall_ms cpu_ms" (cpu: CMD's user + system) to FILE
timed='TIMEFORMAT="%R %U %S"; { time eval "$1" ; } 2>"$2.tmp"; awk "{ printf \"%d %d\\n\", \$1 * 1000, (\$2 + \$3) * 1000 }" "$2.tmp" >>"$2"'
median() { sort -n "$1" | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b ? a / b : 0 }'; }

printf '%-6s %10s %10s %7s %10s %10s %7s %s\n' workload "wall on" "wall off" ratio "cpu on" "cpu off" ratio complete
for w in dd1M dd4k buf; do
	: >"$W/on"
	: >"$W/off"
	: >"$W/setup"
	comp=
	for ((i = 0; i < RUNS; i++)); do
		TIMEFORMAT="%R %U %S"
		{ time out=$("$H" trace "$L" 4096 0 bash -c "$timed" _ "${cmd[$w]}" "$W/on"); } 2>"$W/h.tmp"
		comp="$comp${out%% *} "
		# the tracer's own cost: the helper's wall and CPU less the writer's
		read -r hw hu hs <"$W/h.tmp"
		read -r ww wc < <(tail -1 "$W/on")
		awk -v hw="$hw" -v hu="$hu" -v hs="$hs" -v ww="$ww" -v wc="$wc" \
			'BEGIN { printf "%d %d\n", hw * 1000 - ww, (hu + hs) * 1000 - wc }' >>"$W/setup"
		bash -c "$timed" _ "${cmd[$w]}" "$W/off"
	done
	for f in on off setup; do
		cut -d' ' -f1 "$W/$f" >"$W/$f.w"
		cut -d' ' -f2 "$W/$f" >"$W/$f.c"
	done
	won=$(median "$W/on.w") woff=$(median "$W/off.w") con=$(median "$W/on.c") coff=$(median "$W/off.c")
	printf '%-6s %10s %10s %7s %10s %10s %7s %s\n' "$w" "$won" "$woff" "$(ratio "$won" "$woff")" "$con" "$coff" \
		"$(ratio "$con" "$coff")" "$(echo "$comp" | tr ' ' '\n' | sort | uniq -c | tr '\n' ' ')"
	echo "       the tracer itself (start, drain thread, collect, stop), median: $(median "$W/setup.w") ms wall," \
		"$(median "$W/setup.c") ms CPU"
done
