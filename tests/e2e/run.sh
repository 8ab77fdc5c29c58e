#!/usr/bin/env bash
# tests/e2e/run.sh - runs every tests/e2e/t_*.sh (or the ones named on the
# command line), each in its own bash process, and summarizes.
#   CBIMG=/abs/path/build/cbimg bash tests/e2e/run.sh [t_name.sh ...]
# A test exits 0 (passed), 77 (skipped) or anything else (failed).
set -u

here=$(cd "$(dirname "$0")" && pwd)
: "${CBIMG:=$here/../../build/cbimg}"
case $CBIMG in /*) ;; *) CBIMG=$PWD/$CBIMG ;; esac
export CBIMG
if [ ! -x "$CBIMG" ]; then
	echo "run.sh: cbimg binary not found: $CBIMG" >&2
	echo "0 passed, 1 failed"
	exit 1
fi

TEST_TIMEOUT=${TEST_TIMEOUT:-600}

if [ $# -gt 0 ]; then
	tests=()
	for t in "$@"; do
		case $t in */*) tests+=("$t") ;; *) tests+=("$here/$t") ;; esac
	done
else
	tests=("$here"/t_*.sh)
fi

passed=0 failed=0 skipped=0
failed_names=()
start_all=$(date +%s)
echo "cbimg e2e tests with $CBIMG ($("$CBIMG" --version 2>/dev/null | head -1))"
for t in "${tests[@]}"; do
	[ -f "$t" ] || { echo "run.sh: no such test: $t" >&2; failed=$((failed + 1)); continue; }
	name=$(basename "$t" .sh)
	echo "=== $name"
	if [[ " ${E2E_SKIP:-} " == *" $name "* ]]; then
		# make test: the sweeps run once, in the ASan pass (Makefile)
		skipped=$((skipped + 1))
		echo "--- SKIP $name (E2E_SKIP: it runs in the other pass of make test)"
		continue
	fi
	start=$(date +%s)
	# a test may ask for more time with a line "# e2e-timeout: SECONDS"
	# (t_s3 under ASan starts a Ceph cluster and runs ~190 checks)
	tmo=$(sed -n 's/^# e2e-timeout: \([0-9][0-9]*\)$/\1/p' "$t" | head -n 1)
	[ -n "$tmo" ] && [ "$tmo" -gt "$TEST_TIMEOUT" ] || tmo=$TEST_TIMEOUT
	if command -v timeout >/dev/null 2>&1; then
		(timeout -k 10 "$tmo" bash "$t" </dev/null)
	else
		(bash "$t" </dev/null)
	fi
	rc=$?
	secs=$(($(date +%s) - start))
	case $rc in
	0) passed=$((passed + 1)); echo "--- PASS $name (${secs}s)" ;;
	77) skipped=$((skipped + 1)); echo "--- SKIP $name (${secs}s)" ;;
	124 | 137) failed=$((failed + 1)); failed_names+=("$name"); echo "--- FAIL $name (timed out after ${tmo}s)" ;;
	*) failed=$((failed + 1)); failed_names+=("$name"); echo "--- FAIL $name (exit $rc, ${secs}s)" ;;
	esac
done
echo "e2e total time: $(($(date +%s) - start_all))s"
[ "$failed" -gt 0 ] && echo "failed: ${failed_names[*]}"
if [ "$skipped" -gt 0 ]; then
	echo "$passed passed, $failed failed, $skipped skipped"
else
	echo "$passed passed, $failed failed"
fi
[ "$failed" -eq 0 ]
