#!/usr/bin/env bash
# backup --rescue: a source with unreadable ranges (issue 15).
#
# The source is a file served by tests/e2e/badfile.c (a FUSE file system
# built here that fails reads meeting the byte ranges listed in a file, and
# "heals" when that file changes): one sector, a whole block, and 20
# scattered sectors. Read as a file and behind a loop device:
#  - backup without --rescue fails (exit 1), one line, and writes no point;
#  - backup --rescue exits 5 with a summary, and the point's bad-range map
#    (read from the index with od) is exactly the injected ranges;
#  - restore refuses the point (exit 3, one line naming ranges, nothing
#    written); --allow-bad restores it (exit 5), equal by SHA-256 to the
#    source with zeros in the bad ranges;
#  - info, list and verify (exit 0, a known-bad note) show the bad bytes;
#  - cbimg mount fails reads of a bad range with EIO, not of others;
#  - after a partial heal an incremental needs --rescue and carries the
#    still-bad range; after a full heal it restores without --allow-bad,
#    equal to the source;
#  - prune --keep-last 1 keeps the map of the kept point.
# Without root or FUSE the FUSE parts skip visibly, and the same checks on a
# file run through tests/e2e/badread_shim.c (LD_PRELOAD) instead; without a
# free loop device the loop part skips visibly.
. "$(dirname "$0")/lib.sh"
need_jq
command -v cc >/dev/null 2>&1 || skip "cc not installed: the test helpers cannot be built"
# the bad-read shim is preloaded: an ASan build must not insist on coming first
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}verify_asan_link_order=0"

BS=65536
SZ=$((4 * 1024 * 1024))
SRC=$T/backing.img
fill_random "$SRC" 0 $((SZ / 1024))

# The injected ranges: one sector, one whole block, 20 scattered sectors.
RANGES=$T/ranges
{
	echo "65536 512"
	echo "$((16 * BS)) $BS"
	for k in $(seq 0 19); do echo "$((2 * 1048576 + k * 4096)) 512"; done
} >"$RANGES"

# map_of INDEX: the bad-range map of an index file, "OFFSET LENGTH" a line
# (format/SPEC.md, "Bad-range map": a 32-byte tail before the trailer).
u64() { od -An -t u8 --endian=little -j "$2" -N 8 "$1" | tr -d ' '; }
map_of() {
	local f=$1 size tail n start k
	size=$(filesize "$f")
	tail=$((size - 160))
	[ "$(dd if="$f" bs=1 skip="$tail" count=8 status=none | tr -dc A-Z)" = CBIBADMP ] || { echo "no-map"; return; }
	n=$(u64 "$f" $((tail + 8)))
	start=$((tail - 16 * n))
	for ((k = 0; k < n; k++)); do
		echo "$(u64 "$f" $((start + 16 * k))) $(u64 "$f" $((start + 16 * k + 8)))"
	done
}
# zeroed FILE OUT: a copy of FILE with zeros in the ranges of $RANGES_NOW.
zeroed() {
	cp "$1" "$2"
	local o l
	while read -r o l; do
		dd if=/dev/zero of="$2" bs=512 seek=$((o / 512)) count=$((l / 512)) conv=notrunc status=none
	done <"$RANGES_NOW"
}
newest_cbx() { ls -1 "$1"/*.cbx | sort | tail -1; }
npoints() { ls -1 "$1"/*.cbx 2>/dev/null | wc -l; }

# rescue_checks NAME SOURCE DEST [ENV...]: the checks of one source (a file
# or a device); ENV (VAR=value words) is set for each backup.
rescue_checks() {
	local name=$1 src=$2 dest=$3 p sum bad
	shift 3
	mkdir -p "$dest"
	RANGES_NOW=$RANGES
	expect_exit 1 env "$@" "$CBIMG" backup --no-state --block-size 64K "$src" "$dest"
	check_grep "$name: without --rescue: the read error is named" "unable to read source"
	check_eq "$name: without --rescue: one line" "$(wc -l <"$T/stderr")" 1
	check_eq "$name: without --rescue: no point written" "$(npoints "$dest")" 0

	expect_exit 5 env "$@" "$CBIMG" backup --no-state --block-size 64K --rescue --retries 2 --json "$src" "$dest"
	check_eq "$name: --json: bad bytes" "$(jout .rescue.bad_bytes)" $((512 + BS + 20 * 512))
	check_eq "$name: --json: bad ranges" "$(jout .rescue.bad_ranges)" 22
	check_eq "$name: --json: rescued bytes" "$(jout .rescue.rescued_bytes)" $((SZ - 512 - BS - 20 * 512))
	check_grep "$name: a warning names the first ranges" "warning: .* could not be read \(bytes 65536-66047, "
	p=$(newest_cbx "$dest")
	check_eq "$name: the map is exactly the injected ranges" "$(map_of "$p")" "$(sort -n "$RANGES")"

	mkdir -p "$T/summary.d"
	expect_exit 5 env "$@" "$CBIMG" backup --no-state --rescue "$src" "$T/summary.d"
	check_grep "$name: ddrescue-style summary: rescued" "^rescued: .*\($((SZ - 512 - BS - 20 * 512)) bytes"
	check_grep "$name: summary: bad bytes and ranges" "^bad: +$((512 + BS + 20 * 512)) bytes in 22 ranges"
	check_grep "$name: summary: retries" "^retries: +[0-9]+ reads after [0-9]+ failed read"
	rm -rf --one-file-system "$T/summary.d"

	rm -f "$T/r.img"
	expect_exit 3 "$CBIMG" restore "$p" "$T/r.img"
	check_eq "$name: restore refused: one line" "$(wc -l <"$T/stderr")" 1
	check_grep "$name: restore refused: names the ranges" "22 ranges .*bytes 65536-66047, 1048576-1114111, .*--allow-bad"
	check "$name: restore refused: nothing written" test ! -e "$T/r.img"
	expect_exit 5 "$CBIMG" restore --allow-bad --json "$p" "$T/r.img"
	check_eq "$name: restore --allow-bad --json: bad bytes" "$(jout .bad_bytes)" $((512 + BS + 20 * 512))
	zeroed "$SRC" "$T/want.img"
	check_eq "$name: restore --allow-bad: the source with zeros in the bad ranges" \
		"$(sha256 "$T/r.img")" "$(sha256 "$T/want.img")"

	expect_exit 0 "$CBIMG" verify --no-state "$dest"
	check_grep "$name: verify: known-bad note, not damage" "note: .*known-bad: $((512 + BS + 20 * 512)) bytes in 22 ranges"
	expect_exit 0 "$CBIMG" info --json "$p"
	check_eq "$name: info --json: bad_bytes" "$(jout .bad_bytes)" $((512 + BS + 20 * 512))
	expect_exit 0 "$CBIMG" list "$dest"
	check_grep "$name: list: a BAD column with the bad bytes" " BAD$"
	check_grep "$name: list: the point's bad bytes" " $((512 + BS + 20 * 512))$"
}

# heal_checks NAME SOURCE DEST HEAL [ENV...]: HEAL CONTENT makes only the
# ranges of CONTENT fail from now on.
heal_checks() {
	local name=$1 src=$2 dest=$3 heal=$4 p
	shift 4
	# partial heal: only the first sector stays bad
	$heal "65536 512"
	RANGES_NOW=$T/ranges.now
	echo "65536 512" >"$RANGES_NOW"
	expect_exit 1 env "$@" "$CBIMG" backup --no-state "$src" "$dest"
	check_eq "$name: still bad, no --rescue: no new point" "$(npoints "$dest")" 1
	expect_exit 5 env "$@" "$CBIMG" backup --no-state --rescue "$src" "$dest"
	p=$(newest_cbx "$dest")
	check_eq "$name: incremental: the still-bad range carried, the healed ones gone" "$(map_of "$p")" "65536 512"
	rm -f "$T/r.img"
	expect_exit 5 "$CBIMG" restore --allow-bad "$p" "$T/r.img"
	zeroed "$SRC" "$T/want.img"
	check_eq "$name: incremental restores the healed ranges' bytes" "$(sha256 "$T/r.img")" "$(sha256 "$T/want.img")"
	# full heal: no --rescue needed, no map, restores without --allow-bad
	$heal ""
	expect_exit 0 env "$@" "$CBIMG" backup --no-state "$src" "$dest"
	p=$(newest_cbx "$dest")
	check_eq "$name: healed incremental has no map" "$(map_of "$p")" "no-map"
	rm -f "$T/r.img"
	expect_exit 0 "$CBIMG" restore "$p" "$T/r.img"
	check_eq "$name: healed incremental equals the source" "$(sha256 "$T/r.img")" "$(sha256 "$SRC")"
	expect_exit 0 "$CBIMG" verify --no-state "$dest"
}

# ---------------------------------------------------------------- FUSE
FUSE=0
if ! is_root; then
	skip_part "not root: the FUSE source (badfile) and the loop device are not tested"
elif [ ! -c /dev/fuse ] || ! command -v fusermount3 >/dev/null 2>&1; then
	skip_part "no /dev/fuse or fusermount3: the FUSE source (badfile) is not tested"
elif ! cc -O2 -o "$T/badfile" "$E2E_DIR/badfile.c" $(pkg-config --cflags --libs fuse3 2>/dev/null) 2>"$T/cc.err"; then
	skip_part "cannot build tests/e2e/badfile.c (libfuse3-dev): $(head -1 "$T/cc.err")"
else
	FUSE=1
fi

LOOP=
CBM=
rescue_cleanup() {
	[ -n "$CBM" ] && grep -q " $CBM fuse.cbimg " /proc/self/mounts && "$CBIMG" umount "$CBM" >/dev/null 2>&1
	[ -n "$LOOP" ] && losetup -d "$LOOP" 2>/dev/null
	[ "$FUSE" = 1 ] && mountpoint -q "$T/fuse" && fusermount3 -u "$T/fuse" 2>/dev/null
}
trap 'rescue_cleanup; cleanup' EXIT

fuse_heal() { printf '%s\n' "$1" >"$RANGES.live"; }
if [ "$FUSE" = 1 ]; then
	mkdir -p "$T/fuse"
	cp "$RANGES" "$RANGES.live"
	"$T/badfile" "$SRC" "$RANGES.live" "$T/fuse" >"$T/badfile.log" 2>&1 &
	BGPIDS+=($!)
	MOUNTS+=("$T/fuse")
	for _ in $(seq 50); do [ -e "$T/fuse/disk" ] && break; sleep 0.1; done
	if [ ! -e "$T/fuse/disk" ]; then
		fail "badfile did not mount: $(cat "$T/badfile.log")"
		FUSE=0
	fi
fi
if [ "$FUSE" = 1 ]; then
	check "badfile: a read of a bad sector fails" sh -c "! dd if=$T/fuse/disk bs=512 skip=128 count=1 of=/dev/null status=none 2>/dev/null"
	check "badfile: the next sector reads" dd if="$T/fuse/disk" bs=512 skip=129 count=1 of=/dev/null status=none

	rescue_checks "file" "$T/fuse/disk" "$T/d_file"

	# cbimg mount: a bad range fails with EIO, other bytes read
	p=$(newest_cbx "$T/d_file")
	CBM=$T/cbm
	mkdir -p "$CBM"
	if run "$CBIMG" mount "$p" "$CBM"; then
		check "mount: a read of a bad range fails" \
			sh -c "! dd if=$CBM/disk.img bs=4096 skip=16 count=1 of=/dev/null status=none 2>$T/dd.err"
		check_eq "mount: with EIO" "$(grep -c 'Input/output error' "$T/dd.err")" 1
		check_eq "mount: bytes outside the bad ranges read as the source's" \
			"$(dd if="$CBM/disk.img" bs=4096 skip=32 count=64 status=none | sha256sum | cut -d' ' -f1)" \
			"$(dd if="$SRC" bs=4096 skip=32 count=64 status=none | sha256sum | cut -d' ' -f1)"
		expect_exit 0 "$CBIMG" umount "$CBM"
	else
		skip_part "cbimg mount failed here ($OUT): the EIO of mount is not tested"
	fi

	# ------------------------------------------------------ loop device
	if command -v losetup >/dev/null 2>&1 && LOOP=$(losetup -r -f --show "$T/fuse/disk" 2>"$T/losetup.err"); then
		rescue_checks "loop" "$LOOP" "$T/d_loop"
		losetup -d "$LOOP" 2>/dev/null
		LOOP=
	else
		skip_part "no loop device over the FUSE file ($(cat "$T/losetup.err" 2>/dev/null)): the loop part is not tested"
	fi

	heal_checks "file" "$T/fuse/disk" "$T/d_file" fuse_heal
	cp "$RANGES" "$RANGES.live"
fi

# ------------------------------------------ the same without FUSE (LD_PRELOAD)
SHIM=$T/badread.so
if cc -O2 -shared -fPIC -o "$SHIM" "$E2E_DIR/badread_shim.c" -ldl 2>"$T/cc.err"; then
	SHIM_RANGES=$(awk '{printf "%s%s:%s", (NR > 1 ? "," : ""), $1, $2}' "$RANGES")
	shim_env() { echo "LD_PRELOAD=$SHIM CBIMG_BAD_FILE=$SRC CBIMG_BAD_RANGES=$SHIM_RANGES"; }
	# shellcheck disable=SC2046
	rescue_checks "shim" "$SRC" "$T/d_shim" $(shim_env)
	shim_heal() { SHIM_RANGES=$(echo "$1" | awk 'NF == 2 {printf "%s:%s", $1, $2}'); }
	# heal_checks reads the shim's ranges through a function: re-expand them
	heal_shim() {
		local name=$1 src=$2 dest=$3 p
		shim_heal "65536 512"
		RANGES_NOW=$T/ranges.now
		echo "65536 512" >"$RANGES_NOW"
		expect_exit 5 env $(shim_env) "$CBIMG" backup --no-state --rescue "$src" "$dest"
		p=$(newest_cbx "$dest")
		check_eq "$name: incremental: the still-bad range carried" "$(map_of "$p")" "65536 512"
		rm -f "$T/r.img"
		expect_exit 5 "$CBIMG" restore --allow-bad "$p" "$T/r.img"
		zeroed "$SRC" "$T/want.img"
		check_eq "$name: incremental restores the healed ranges' bytes" "$(sha256 "$T/r.img")" "$(sha256 "$T/want.img")"
		# prune merges the full into the kept point: its map stays, it restores alike
		expect_exit 0 "$CBIMG" prune --no-state --keep-last 1 "$dest"
		p=$(newest_cbx "$dest")
		check_eq "$name: after prune: one point" "$(npoints "$dest")" 1
		check_eq "$name: after prune: the kept point's map" "$(map_of "$p")" "65536 512"
		rm -f "$T/r.img"
		expect_exit 3 "$CBIMG" restore "$p" "$T/r.img"
		expect_exit 5 "$CBIMG" restore --allow-bad "$p" "$T/r.img"
		check_eq "$name: after prune: restores alike" "$(sha256 "$T/r.img")" "$(sha256 "$T/want.img")"
		expect_exit 0 "$CBIMG" verify --no-state "$dest"
	}
	heal_shim "shim" "$SRC" "$T/d_shim"
else
	skip_part "cannot build tests/e2e/badread_shim.c: $(head -1 "$T/cc.err")"
fi

finish
