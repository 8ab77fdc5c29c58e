#!/usr/bin/env bash
# tests/stress/prune-kill-sweep.sh - the long kill -9 sweep of cbimg prune
# (issue 11): tests/e2e/t_prune_kill.sh with MOMENTS (default 100) moments on
# the plain chain and as many on the encrypted split chain. Not in make check
# (which runs 10 + 10).
#   CBIMG=$PWD/build/cbimg bash tests/stress/prune-kill-sweep.sh [MOMENTS]
here=$(cd "$(dirname "$0")" && pwd)
PRUNE_KILL_MOMENTS=${1:-100} TEST_TIMEOUT=${TEST_TIMEOUT:-7200} exec bash "$here/../e2e/run.sh" t_prune_kill.sh
