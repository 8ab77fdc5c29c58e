#!/usr/bin/env bash
# remote-seeding.sh - the steps of seeding a chain at a remote site and then
# sending only incrementals. Run the steps by hand; each prints what it does.
#
#   remote-seeding.sh seed    DEVICE USBDIR   # 1. full image to a USB disk
#   remote-seeding.sh outbox  DEVICE OUTBOX   # 2. later: an incremental, made
#                                             #    from the local state alone
#   remote-seeding.sh check   REMOTEDIR       # 3. at the remote site
#
# Between 1 and 2: carry the USB disk to the remote site and copy its .cbi
# and .cbx files (and their .NNN segments) into REMOTEDIR. After each 2:
# copy OUTBOX's files into REMOTEDIR (rsync, scp, a courier), then empty it.
# cbimg keeps a copy of the newest index of the job in /var/lib/cbimg
# (--state-dir), so step 2 never needs the full image or earlier files.
set -eu
job=${JOB:-offsite}
cbimg=${CBIMG:-cbimg}
case ${1:-} in
seed)
	mkdir -p "$3"
	"$cbimg" backup --job "$job" --full "$2" "$3"
	echo "now carry $3 to the remote site and copy its *.cbi* and *.cbx files there" ;;
outbox)
	mkdir -p "$3"
	"$cbimg" backup --job "$job" "$2" "$3"
	echo "ship the files in $3 to the remote site, then empty $3" ;;
check)
	"$cbimg" verify "$2"
	"$cbimg" list "$2" ;;
*)
	sed -n '2,14p' "$0"; exit 2 ;;
esac
