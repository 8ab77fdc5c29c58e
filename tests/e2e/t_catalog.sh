#!/usr/bin/env bash
# The catalog DEST/cbimg-catalog.sqlite: list filters by host, source and job;
# log shows ok and failed runs; a deleted or corrupt catalog is rebuilt and the
# listing stays right; files that appear, vanish or are renamed behind its back
# are noticed; three backups of different sources into the same DEST at once
# all succeed and all appear; a catalog that cannot be written only costs a
# warning; catalog rebuild.
. "$(dirname "$0")/lib.sh"
need_jq

D=$T/dest
CAT=$D/cbimg-catalog.sqlite
mkdir -p "$D"
for s in a b c; do head -c $((2 * 1024 * 1024)) /dev/urandom >"$T/$s.img"; done

# The points of `cbimg list --json [filters] $D`, one compact line per point
# (index file, id, image file, has_image), sorted: comparable across runs.
points() { "$CBIMG" list --json "$@" "$D" | jq -c 'map([.index_file, .id, .file, .has_image]) | sort'; }
count() { "$CBIMG" list --json "$@" "$D" | jq length; }

# ------------------------------------------------------------------ filters
B=(backup -q --block-size 64K)
expect_exit 0 "$CBIMG" "${B[@]}" --host pc1 --source-id disk-a --job daily "$T/a.img" "$D" ||
	die "first backup failed"
check "the first backup made the catalog" test -f "$CAT"
fill_random "$T/a.img" 0 64
expect_exit 0 "$CBIMG" "${B[@]}" --host pc1 --source-id disk-a --job daily "$T/a.img" "$D"
expect_exit 0 "$CBIMG" "${B[@]}" --host pc1 --source-id disk-b --job daily "$T/b.img" "$D"
expect_exit 0 "$CBIMG" "${B[@]}" --host pc2 --source-id disk-c --job weekly "$T/c.img" "$D"

check_eq "list: every point" "$(count)" 4
check_eq "list --host pc1" "$(count --host pc1)" 3
check_eq "list --host pc2" "$(count --host pc2)" 1
check_eq "list --source disk-a" "$(count --source disk-a)" 2
check_eq "list --source takes the source path too" "$(count --source "$T/b.img")" 1
check_eq "list --job weekly" "$(count --job weekly)" 1
check_eq "list --host pc1 --job weekly" "$(count --host pc1 --job weekly)" 0
check_eq "list --source disk-a lists disk-a only" \
	"$("$CBIMG" list --json --source disk-a "$D" | jq -r '[.[].source] | unique | join(",")')" disk-a
expect_exit 0 "$CBIMG" list --host pc1 "$D"
check_eq "table: a header and three rows" "$(wc -l <"$T/stdout")" 4
check_grep "table: the usual columns" "^FILE +HOST +JOB +CHAIN +SEQ +TYPE +CREATED +SIZE +CHANGED +STORED"
expect_exit 0 "$CBIMG" list --host nobody "$D"
check_grep "nothing matches: said so" "no matching points"
expect_exit 2 "$CBIMG" list --host "$D"

# ------------------------------------------------------------------ log
truncate -s 3M "$T/a.img" # the chain holds 2 MiB: refused
expect_exit 1 "$CBIMG" backup -q --host pc1 --source-id disk-a --job daily "$T/a.img" "$D"
check_grep "the refusal says why" "use --full"
expect_exit 0 "$CBIMG" log --json "$D"
check_eq "log: five runs" "$(jout length)" 5
check_eq "log: oldest first, the refusal last" "$(jout '[.[].result] | join(",")')" "ok,ok,ok,ok,failed"
check_eq "log: the failed run's message" "$(jout '.[4].message | test("use --full")')" true
check_eq "log: the failed run wrote no point" "$(jout '[.[4].point, .[4].file] | map(. == null) | all')" true
check_eq "log: ok runs read and wrote bytes" \
	"$(jout '[.[0:4][] | .bytes_read > 0 and .bytes_written > 0 and .seconds >= 0] | all')" true
check_eq "log: the ok runs' files are the listed points" "$(jout '[.[0:4][].file] | sort | join(",")')" \
	"$("$CBIMG" list --json "$D" | jq -r '[.[].file] | sort | join(",")')"
check_eq "log: host, job and source recorded" "$(jout '.[3] | [.host, .job, .source] | join(",")')" \
	"pc2,weekly,disk-c"
expect_exit 0 "$CBIMG" log --json --host pc2 "$D"
check_eq "log --host pc2" "$(jout length)" 1
expect_exit 0 "$CBIMG" log --json --source disk-a --job daily "$D"
check_eq "log --source disk-a --job daily (the refusal included)" "$(jout length)" 3
expect_exit 0 "$CBIMG" log --json --limit 2 "$D"
check_eq "log --limit 2: the newest two" "$(jout '[.[].result] | join(",")')" "ok,failed"
expect_exit 0 "$CBIMG" log "$D"
check_grep "log table: header" "^STARTED +ENDED +DURATION +HOST +JOB +SOURCE +RESULT +READ +WRITTEN +FILE"
check_grep "log table: an ok row with its file" "pc2 +weekly .* ok .*\.cbi$"
check_grep "log table: the failed row" "pc1 +daily .* failed .* -$"
check_grep "log table: the failure's message below it" "^    .*use --full"
expect_exit 2 "$CBIMG" log --limit 0 "$D"
expect_exit 2 "$CBIMG" log "$D" extra
expect_exit 1 "$CBIMG" log "$T/nonexistent"
expect_exit 0 "$CBIMG" log "$T"
check_grep "no catalog: no runs" "no runs recorded"
check "log made no catalog where there was none" test ! -e "$T/cbimg-catalog.sqlite"

# ------------------------------------------------------------------ files are the truth
before=$(points)
rm -f "$CAT"
expect_exit 0 "$CBIMG" list "$D"
check_eq "catalog deleted: list unchanged" "$(points)" "$before"
check "catalog deleted: made again" test -f "$CAT"
expect_exit 0 "$CBIMG" log --json "$D"
check_eq "catalog deleted: the run history went with it" "$(jout length)" 0

head -c 20000 /dev/urandom >"$CAT"
check_eq "corrupt catalog: list unchanged" "$(points)" "$before"
check "corrupt catalog: moved aside" test -f "$CAT.corrupt"
expect_exit 0 "$CBIMG" log "$D"

# behind the catalog's back: rename a point's files, delete another's, copy
# one in from elsewhere
idx=$("$CBIMG" list --json --source disk-b "$D" | jq -r '.[0].index_path')
img=$("$CBIMG" list --json --source disk-b "$D" | jq -r '.[0].path')
mv "$idx" "$D/renamed.cbx"
mv "$img" "$D/renamed.cbi"
check_eq "renamed files: still one point of disk-b" \
	"$("$CBIMG" list --json --source disk-b "$D" | jq -r '.[0] | [.index_file, .file, .has_image] | join(",")')" \
	"renamed.cbx,renamed.cbi,true"
rm -f "$("$CBIMG" list --json --source disk-c "$D" | jq -r '.[0].index_path')"
check_eq "deleted index: its point is gone" "$(count --source disk-c)" 0
mkdir -p "$T/elsewhere"
expect_exit 0 "$CBIMG" "${B[@]}" --host pc9 --source-id disk-c --job other "$T/c.img" "$T/elsewhere"
cp "$T/elsewhere"/*.cb? "$D"/
check_eq "copied-in point: listed" "$(count --host pc9)" 1
check_eq "four points now" "$(count)" 4

expect_exit 0 "$CBIMG" catalog rebuild "$D"
check_grep "rebuild reports the points" "rebuilt: 4 points"
expect_exit 0 "$CBIMG" catalog -q rebuild "$D"
check_eq "rebuild -q prints nothing" "$OUT" ""
expect_exit 2 "$CBIMG" catalog frobnicate "$D"
expect_exit 2 "$CBIMG" catalog rebuild
expect_exit 1 "$CBIMG" catalog rebuild "$T/nonexistent"

# ------------------------------------------------------------------ concurrent writers
S=$T/shared
mkdir -p "$S"
for k in 1 2 3; do head -c $((8 * 1024 * 1024)) /dev/urandom >"$T/pc$k.img"; done
for round in 1 2; do
	pids=()
	for k in 1 2 3; do
		[ "$round" = 1 ] || fill_random "$T/pc$k.img" 1024 256
		"$CBIMG" backup -q --block-size 64K --host "pc$k" --source-id "disk$k" --job nightly \
			"$T/pc$k.img" "$S" >"$T/bg$k.out" 2>&1 &
		pids+=($!)
	done
	for k in 1 2 3; do
		wait "${pids[$((k - 1))]}"
		check_eq "round $round: concurrent backup of pc$k succeeds" "$?" 0
		check_eq "round $round: pc$k printed no warning" "$(cat "$T/bg$k.out")" ""
	done
done
D=$S
check_eq "concurrent: list shows all six points" "$(count)" 6
for k in 1 2 3; do
	check_eq "concurrent: pc$k has a full and an incremental" \
		"$("$CBIMG" list --json --host "pc$k" "$S" | jq -r '[.[].type] | join(",")')" "full,incremental"
done
expect_exit 0 "$CBIMG" log --json "$S"
check_eq "concurrent: log has six ok runs" "$(jout '[.[] | select(.result == "ok")] | length')" 6
check_eq "concurrent: the runs name their points" "$(jout '[.[].file] | sort | join(",")')" \
	"$("$CBIMG" list --json "$S" | jq -r '[.[].file] | sort | join(",")')"
check "concurrent: no journal left" test ! -e "$S/cbimg-catalog.sqlite-journal"
expect_exit 0 "$CBIMG" verify -q "$S"

# ------------------------------------------------------------------ on FAT32 and exFAT
# SQLite on USB-disk file systems, with the kernel driver or FUSE: rollback
# journal, no shared memory; three writers at once. fusefat (FUSE FAT32)
# corrupts files written in place, so there the catalog is not kept: the
# run history goes to the run log cbimg-log.jsonl (rewritten whole, never in
# place), list reads the files, and -q backups print nothing (cron mails
# nothing).
DRIVER=
fs_mount() { # fs_mount vfat|exfat IMAGE DIR: sets DRIVER
	local fs=$1 img=$2 dir=$3
	is_root || return 1
	if [ "$fs" = vfat ]; then
		command -v mkfs.vfat >/dev/null 2>&1 || return 1
		truncate -s 256M "$img" && mkfs.vfat -F 32 "$img" >/dev/null 2>&1 || return 1
	else
		command -v mkfs.exfat >/dev/null 2>&1 || return 1
		truncate -s 256M "$img" && mkfs.exfat "$img" >/dev/null 2>&1 || return 1
	fi
	mkdir -p "$dir"
	losetup -f >/dev/null 2>&1 && new_loop "$img" || return 1
	if mount -t "$fs" "$LOOPDEV" "$dir" 2>/dev/null; then
		DRIVER="kernel $fs"
	elif [ "$fs" = vfat ] && command -v fusefat >/dev/null 2>&1 &&
		fusefat -o rw+ "$LOOPDEV" "$dir" >"$T/fuse.out" 2>&1; then
		DRIVER=fusefat
	elif [ "$fs" = exfat ] && command -v mount.exfat-fuse >/dev/null 2>&1 &&
		mount.exfat-fuse "$LOOPDEV" "$dir" >"$T/fuse.out" 2>&1; then
		DRIVER=exfat-fuse
	else
		return 1
	fi
	MOUNTS+=("$dir")
}
for fs in vfat exfat; do
	F=$T/$fs
	# a local state per file system: the chains of one are not continued on
	# the other (an outbox-like DEST of incrementals keeps no catalog)
	export CBIMG_STATE_DIR=$T/state-$fs
	if ! fs_mount "$fs" "$T/$fs.img" "$F"; then
		skip_part "$fs part: needs root, a loop device, mkfs.$fs and a $fs driver"
		continue
	fi
	pids=()
	for k in 1 2 3; do
		"$CBIMG" backup -q --block-size 64K --host "pc$k" --source-id "disk$k" --job usb \
			"$T/pc$k.img" "$F" >"$T/$fs$k.out" 2>&1 &
		pids+=($!)
	done
	for k in 1 2 3; do
		wait "${pids[$((k - 1))]}"
		check_eq "$DRIVER: concurrent backup of pc$k succeeds" "$?" 0
		check_eq "$DRIVER: pc$k printed no warning" "$(cat "$T/$fs$k.out")" ""
	done
	D=$F
	check_eq "$DRIVER: list shows the three points" "$(count)" 3
	expect_exit 0 "$CBIMG" log --json "$F"
	if [ "$DRIVER" = fusefat ]; then
		check_eq "$DRIVER: log has the three runs" "$(jout '[.[] | select(.result == "ok")] | length')" 3
		check_eq "$DRIVER: the runs name their points" "$(jout '[.[].file] | sort | join(",")')" \
			"$("$CBIMG" list --json "$F" | jq -r '[.[].file] | sort | join(",")')"
		check "$DRIVER: no catalog file" test ! -e "$F/cbimg-catalog.sqlite"
		check "$DRIVER: a run log instead" test -s "$F/cbimg-log.jsonl"
		check_eq "$DRIVER: no temporary file left" "$(cd "$F" && ls -1A | grep -c '\.tmp$')" 0
		# -q silences notes, not errors
		expect_exit nz "$CBIMG" backup -q --host pc1 --source-id disk1 --job usb "$T/missing.img" "$F"
		check_grep "$DRIVER: -q still prints errors" "missing.img"
		expect_exit 0 "$CBIMG" log "$F"
		check_grep "$DRIVER: log shows the runs as a table" "pc3"
		# the runs of a fourth backup are added, the old ones kept
		expect_exit 0 "$CBIMG" backup -q --block-size 64K --host pc1 --source-id disk1 --job usb \
			"$T/pc1.img" "$F"
		check_eq "$DRIVER: -q backup printed nothing" "$OUT" ""
		expect_exit 0 "$CBIMG" log --json --host pc1 "$F"
		check_eq "$DRIVER: pc1 has two runs" "$(jout length)" 2
		check_eq "$DRIVER: no catalog made by list or log" "$(test -e "$F/cbimg-catalog.sqlite" && echo yes)" ""
	else
		check_eq "$DRIVER: log has the three runs" "$(jout '[.[] | select(.result == "ok")] | length')" 3
		rm -f "$F/cbimg-catalog.sqlite"
		check_eq "$DRIVER: catalog deleted, list still right" "$(count)" 3
		check "$DRIVER: catalog made again" test -f "$F/cbimg-catalog.sqlite"
	fi
done

export CBIMG_STATE_DIR=$T/state

# ------------------------------------------------------------------ an unusable catalog
R=$T/nocat
mkdir -p "$R/cbimg-catalog.sqlite" # a directory where the catalog should be
# a catalog not updated: exit status 5 (success with a warning)
expect_exit 5 "$CBIMG" backup -q --host pc1 --source-id disk-b "$T/b.img" "$R"
check_grep "catalog in the way: the backup warns" "warning: .*catalog"
expect_exit 5 "$CBIMG" backup -q --host pc1 --source-id disk-b "$T/b.img" "$R"
D=$R
check_eq "catalog in the way: list from the files" "$(count)" 2
expect_exit 1 "$CBIMG" log "$R"
check_grep "catalog in the way: log says why" "catalog"
rmdir "$R/cbimg-catalog.sqlite"

# A catalog file the backup may not write (root writes through chmod 444, so
# as root the backups run as nobody, and the catalog belongs to root).
AS=()
if is_root; then
	if command -v setpriv >/dev/null 2>&1; then
		AS=(setpriv --reuid=65534 --regid=65534 --clear-groups)
		chmod 755 "$T"
	else
		AS=(skip)
	fi
fi
if [ "${AS[*]}" = skip ]; then
	skip_part "read-only catalog file: running as root without setpriv"
else
	R=$T/rocat
	mkdir -p "$R"
	[ ${#AS[@]} = 0 ] || chown 65534:65534 "$R"
	expect_exit 0 "${AS[@]}" "$CBIMG" backup -q --no-state --source-id disk-b "$T/b.img" "$R"
	check_eq "writable catalog: no warning" "$OUT" ""
	chmod 444 "$R/cbimg-catalog.sqlite"
	[ ${#AS[@]} = 0 ] || chown 0:0 "$R/cbimg-catalog.sqlite"
	expect_exit 5 "${AS[@]}" "$CBIMG" backup -q --no-state --source-id disk-b "$T/b.img" "$R"
	check_grep "read-only catalog: the backup warns" "warning: .*catalog"
	expect_exit 0 "${AS[@]}" "$CBIMG" list --json "$R"
	check_eq "read-only catalog: list right (from the files)" "$(jout length)" 2
	expect_exit 0 "${AS[@]}" "$CBIMG" log --json "$R"
	check_eq "read-only catalog: log shows what it holds" "$(jout length)" 1
	chmod 644 "$R/cbimg-catalog.sqlite"
fi

finish
