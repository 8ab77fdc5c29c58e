#!/usr/bin/env bash
# tests/stress/kill-sweep.sh - the long kill -9 sweep (not part of make
# check): tests/e2e/t_kill_sweep.sh with every call of each kind killed in
# turn (fsync, directory fsync, rename, pwrite), 30 timed kills per
# scenario, a full and an incremental, plain and encrypted, and passwd:
# several hundred moments (606 in 23 minutes, 0 failures, on a busy 2-core
# machine with a 4 MiB source, when it was written).
#   CBIMG=build/cbimg bash tests/stress/kill-sweep.sh
#   KILL_SWEEP_TIMED=N KILL_SWEEP_MIB=M ... to change the defaults
here=$(cd "$(dirname "$0")" && pwd)
: "${CBIMG:=$here/../../build/cbimg}"
case $CBIMG in /*) ;; *) CBIMG=$PWD/$CBIMG ;; esac
export CBIMG
export KILL_SWEEP_LONG=1 KILL_SWEEP_FULL=1
export KILL_SWEEP_TIMED=${KILL_SWEEP_TIMED:-30}
export KILL_SWEEP_MIB=${KILL_SWEEP_MIB:-4}
exec bash "$here/../e2e/t_kill_sweep.sh"
