#!/usr/bin/env bash
# tests/stress/snapshot.sh - the long variant of the live-backup tests (not
# part of make check): tests/e2e/t_snapshot_fs.sh with every live file system
# backed up both frozen and traced (and auto), with 32 MiB of ballast so that
# more is written during each read; then tests/e2e/t_snapshot.sh.
#   CBIMG=build/cbimg bash tests/stress/snapshot.sh
#   SNAP_BALLAST_MIB=N to change the ballast
here=$(cd "$(dirname "$0")" && pwd)
: "${CBIMG:=$here/../../build/cbimg}"
case $CBIMG in /*) ;; *) CBIMG=$PWD/$CBIMG ;; esac
export CBIMG
export SNAP_MODES="freeze trace auto"
export SNAP_BALLAST_MIB=${SNAP_BALLAST_MIB:-32}
bash "$here/../e2e/t_snapshot_fs.sh" || exit 1
exec bash "$here/../e2e/t_snapshot.sh"
