#!/usr/bin/env bash
# tests/fuzz/run.sh BUILD TARGET... - runs each libFuzzer target
# BUILD/fuzz/fuzz_TARGET for FUZZ_TIME seconds (default 60), FUZZ_JOBS of
# them at a time (default 1), under `nice -n 19`. The working corpus grows in
# BUILD/fuzz-corpus/TARGET (the seeds in tests/fuzz/corpus/TARGET are only
# read); crashes go to BUILD/fuzz-crashes/ and the logs to BUILD/fuzz-logs/.
# Prints, per target, libFuzzer's last figures: executions per second, and
# coverage (cov: edges, ft: features) and corpus size. Exit 1 if any target
# found a crash, a leak or a timeout.
set -u
build=$1
shift
here=$(cd "$(dirname "$0")" && pwd)
time=${FUZZ_TIME:-60}
jobs=${FUZZ_JOBS:-1}
mkdir -p "$build/fuzz-logs" "$build/fuzz-crashes"
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:allocator_may_return_null=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

one() {
	local t=$1
	mkdir -p "$build/fuzz-corpus/$t"
	nice -n 19 "$build/fuzz/fuzz_$t" -max_total_time="$time" -timeout=10 -rss_limit_mb=2048 \
		-print_final_stats=1 -artifact_prefix="$build/fuzz-crashes/$t-" \
		"$build/fuzz-corpus/$t" "$here/corpus/$t" >"$build/fuzz-logs/$t.log" 2>&1
	echo $? >"$build/fuzz-logs/$t.rc"
}

running=0
for t in "$@"; do
	one "$t" &
	running=$((running + 1))
	if [ "$running" -ge "$jobs" ]; then
		wait -n
		running=$((running - 1))
	fi
done
wait

bad=0
printf '%-10s %8s %8s %8s %8s %6s %s\n' target execs exec/s cov ft corpus result
for t in "$@"; do
	log=$build/fuzz-logs/$t.log
	rc=$(cat "$build/fuzz-logs/$t.rc" 2>/dev/null || echo '?')
	last=$(grep -E '^#[0-9]+' "$log" | tail -1)
	execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$')
	eps=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$')
	cov=$(printf '%s' "$last" | grep -o 'cov: [0-9]*' | grep -o '[0-9]*')
	ft=$(printf '%s' "$last" | grep -o 'ft: [0-9]*' | grep -o '[0-9]*')
	corp=$(printf '%s' "$last" | grep -o 'corp: [0-9]*' | grep -o '[0-9]*$')
	res=ok
	if [ "$rc" != 0 ]; then
		res="FAILED (exit $rc): $(grep -m1 -E 'ERROR|SUMMARY|deadly|Timeout|leak' "$log")"
		bad=1
	fi
	printf '%-10s %8s %8s %8s %8s %6s %s\n' "$t" "${execs:-?}" "${eps:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}" "$res"
done
[ "$bad" = 0 ] || ls -1 "$build/fuzz-crashes"
exit "$bad"
