#!/usr/bin/env bash
# remote-seeding.sh - the steps of seeding a chain at a remote site and then
# sending only incrementals. Run the steps by hand; each prints what it does.
#
#   remote-seeding.sh seed    DEVICE USBDIR   # 1. full image to a USB disk
#   remote-seeding.sh outbox  DEVICE OUTBOX   # 2. later: an incremental, made
#                                             #    from the local state alone
#                                             #    (cbimg backup --outbox)
#   remote-seeding.sh check   REMOTEDIR       # 3. at the remote site
#
# Between 1 and 2: carry the USB disk to the remote site and copy its .cbi
# and .cbx files (and their .NNN segments, and the .cbk key file of an
# encrypted chain) into REMOTEDIR. After each 2: copy OUTBOX's files into
# REMOTEDIR (rsync, scp, a courier), then empty it.
# cbimg keeps a copy of the newest index of the job in /var/lib/cbimg
# (--state-dir), so step 2 never needs the full image or earlier files;
# --outbox asks for that (without it, a DEST that holds no chain of the job
# gets a new full chain: right for a second USB disk, wrong for an outbox).
#
# Encryption (optional): set CBIMG_PASSWORD_FILE to a password file (the
# passphrase on its first line, chmod 600), or create /etc/cbimg/JOB.pass.
# Step 1 then starts an encrypted chain, and step 2 continues it and puts a
# copy of the key file into OUTBOX each time (same key, same name: it may
# overwrite the remote one). Step 3 needs the passphrase too (the file, or a
# prompt); a remote site that must not know it can only run 'cbimg list'.
set -eu
job=${JOB:-offsite}
cbimg=${CBIMG:-cbimg}
pwfile=${CBIMG_PASSWORD_FILE:-}
[ -z "$pwfile" ] && [ -e "/etc/cbimg/$job.pass" ] && pwfile=/etc/cbimg/$job.pass
pass=() crypt=()
if [ -n "$pwfile" ]; then
	pass=(--password-file "$pwfile")
	crypt=(--encrypt "${pass[@]}")
fi
case ${1:-} in
seed)
	mkdir -p "$3"
	"$cbimg" backup --job "$job" --full "${crypt[@]}" "$2" "$3"
	echo "now carry $3 to the remote site and copy its *.cbi*, *.cbx* and *.cbk files there" ;;
outbox)
	mkdir -p "$3"
	"$cbimg" backup --job "$job" --outbox "${crypt[@]}" "$2" "$3"
	echo "ship the files in $3 to the remote site, then empty $3" ;;
check)
	"$cbimg" verify "${pass[@]}" "$2"
	"$cbimg" list "$2" ;;
*)
	sed -n '2,22p' "$0"; exit 2 ;;
esac
