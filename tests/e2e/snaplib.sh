# tests/e2e/snaplib.sh - helpers of the snapshot tests (t_snapshot*.sh),
# sourced after lib.sh: a live file system with a writer on it, and the
# check of a restored image of it.
#
# The writer keeps creating and rewriting files w/fNN, each holding its own
# checksum (first line: the SHA-256 of the rest), each written to a
# temporary name, fsynced and renamed over the old one; then it appends the
# file's name to w/log and fsyncs the log. A consistent image of the file
# system therefore holds a log each of whose names is a file with a valid
# checksum: the files finished before the freeze. An inconsistent one may
# not (and may not even pass fsck).

# mkfs_live TYPE IMAGE: a file system of TYPE (ext4, xfs, btrfs) on IMAGE.
mkfs_live() {
	case $1 in
	ext4) mkfs.ext4 -q -F "$2" >/dev/null 2>&1 ;;
	xfs) mkfs.xfs -q -f "$2" >/dev/null 2>&1 ;;
	btrfs) mkfs.btrfs -q -f "$2" >/dev/null 2>&1 ;;
	esac
}

# have_fs TYPE: its mkfs, its checker and the kernel's driver are here.
have_fs() {
	case $1 in
	ext4) command -v mkfs.ext4 >/dev/null && command -v e2fsck >/dev/null ;;
	xfs) command -v mkfs.xfs >/dev/null && command -v xfs_repair >/dev/null &&
		{ grep -qw xfs /proc/filesystems || modprobe xfs 2>/dev/null; } ;;
	btrfs) command -v mkfs.btrfs >/dev/null && command -v btrfs >/dev/null &&
		{ grep -qw btrfs /proc/filesystems || modprobe btrfs 2>/dev/null; } ;;
	*) return 1 ;;
	esac
}

# fsck_ro TYPE IMAGE: a read-only full check; 0 when clean.
fsck_ro() {
	case $1 in
	ext4) e2fsck -n -f "$2" >"$T/fsck.out" 2>&1 ;;
	xfs) xfs_repair -n "$2" >"$T/fsck.out" 2>&1 ;;
	btrfs) btrfs check --readonly "$2" >"$T/fsck.out" 2>&1 ;;
	esac
}

# ballast DIR MIB: a file of random bytes, so that a backup of the file
# system takes a while (writes happen during the read).
ballast() {
	head -c "$(($2 << 20))" /dev/urandom >"$1/ballast" && sync "$1/ballast"
}

# writer_start DIR: the writer in the background (pid in WRITER).
WRITER=
writer_start() {
	local d=$1/w
	mkdir -p "$d" && : >"$d/log" && sync "$d/log" "$d"
	rm -f "$T/writer.stop"
	(
		i=0
		while [ ! -e "$T/writer.stop" ]; do
			f=f$((i % 40))
			head -c $(((RANDOM % 48 + 1) * 1024)) /dev/urandom >"$d/.data"
			{ sha256sum <"$d/.data" | cut -c1-64; cat "$d/.data"; } >"$d/$f.new"
			sync "$d/$f.new"
			mv "$d/$f.new" "$d/$f"
			sync "$d"
			echo "$f" >>"$d/log"
			sync "$d/log"
			i=$((i + 1))
		done
	) </dev/null >/dev/null 2>&1 &
	WRITER=$!
	BGPIDS+=("$WRITER")
}

writer_stop() {
	touch "$T/writer.stop"
	wait "$WRITER" 2>/dev/null
}

# writer_count DIR: lines in the writer's log.
writer_count() { wc -l <"$1/w/log"; }

# check_restored TYPE IMAGE WHAT: IMAGE passes the file system's check, and
# every file its writer's log lists exists with a valid checksum.
check_restored() {
	local ty=$1 img=$2 what=$3 mnt=$T/rmnt.$RANDOM bad=0 n=0 f opts=ro
	mkdir -p "$mnt"
	if [ "$ty" = xfs ]; then
		# a frozen xfs is consistent once its log is replayed (as on any
		# snapshot of it): xfs_repair -n checks a replayed image only
		mount -o loop,nouuid "$img" "$mnt" 2>"$T/mount.err" && umount "$mnt" ||
			fail "$what: the restored xfs mounts to replay its log ($(cat "$T/mount.err"))"
	fi
	if fsck_ro "$ty" "$img"; then
		pass "$what: the restored image passes the $ty check"
	else
		fail "$what: the restored image fails the $ty check"
		sed 's/^/       | /' "$T/fsck.out" | head -15
	fi
	case $ty in ext4) opts=ro,noload ;; xfs) opts=ro,nouuid ;; esac
	if ! mount -o "loop,$opts" "$img" "$mnt" 2>"$T/mount.err"; then
		fail "$what: the restored image mounts ($(cat "$T/mount.err"))"
		return
	fi
	MOUNTS+=("$mnt")
	while read -r f; do
		n=$((n + 1))
		if [ ! -f "$mnt/w/$f" ] ||
			[ "$(head -n 1 "$mnt/w/$f")" != "$(tail -n +2 "$mnt/w/$f" | sha256sum | cut -c1-64)" ]; then
			bad=$((bad + 1))
			[ $bad -le 3 ] && echo "       | $f: missing or bad checksum"
		fi
	done < <(sort -u "$mnt/w/log")
	if [ "$n" -gt 0 ] && [ "$bad" = 0 ]; then
		pass "$what: every file of the log ($(wc -l <"$mnt/w/log") entries, $n names) has a valid checksum"
	else
		fail "$what: $bad of $n files of the log missing or damaged"
	fi
	umount "$mnt"
}

# trace_usable DEV DEST: does `backup --snapshot trace` work here? (wtrace,
# tracefs). Sets TRACE_WHY when not.
TRACE_WHY=
trace_usable() {
	TRACE_WHY=$("$CBIMG" backup -q --no-state --snapshot trace "$1" "$2" 2>&1 >/dev/null)
	local rc=$?
	rm -f "$2"/*.cbi "$2"/*.cbx
	[ $rc = 0 ] || [ $rc = 5 ]
}
