#!/usr/bin/env bash
# bench/bench.sh - cbimg against its peers, side by side, in one run on one disk.
#
#   make bench                                  (4 GiB disk, about 11 minutes on 2 cores)
#   CBIMG=/abs/build/cbimg bash bench/bench.sh [options]
#
# options:
#   --size MIB         size of the test disk (default 4096); 512 makes a smoke run
#   --fill MIB         MiB of real files on it (default 60% of --size)
#   --percent P        the day of changes rewrites about P% of the used bytes (default 3)
#   --scale-size SIZE  apparent size of the sparse "scale" file, truncate(1) syntax
#                      (default 1T for --size 4096 or more, else --size x 256 MiB)
#   --work DIR         scratch directory (default /tmp/cbimg-bench; removed at the end)
#   --results FILE     where the table also goes (default /tmp/cbimg-bench-results-DATE.txt)
#   --keep             keep the scratch directory
#   --no-install       do not apt-get install missing peers (they are skipped)
#   --repeat N         run the commands the targets compare N times and take the
#                      median (default 3 from --size 2048 up, else 1)
#   --wait-quiet SEC   before each timed command, wait up to SEC seconds for the
#                      other processes to use less than 0.15 CPU cores (default 0)
#   --warm             keep the page cache warm (never drop it): the CPU cost per byte
#   --peers LIST       run only these peers (e.g. "zstd blocksync-fast"; default: all)
#
# blocksync-fast is not packaged in Debian: it runs when BLOCKSYNC_FAST names
# a binary of it (or one is on PATH), else it is skipped with a note.
#
# See bench/README.md for what is measured and how; bench/RESULTS.md for a run.
set -euo pipefail
export LC_ALL=C
export PATH=$PATH:/usr/sbin:/sbin
here=$(cd "$(dirname "$0")" && pwd)

size=4096 fill= pct=3 scale= W=/tmp/cbimg-bench results= keep=0 install=1 quiet_wait=0 repeat= warm=0 peers=
while [ $# -gt 0 ]; do
	case $1 in
	--size) size=$2; shift 2 ;;
	--fill) fill=$2; shift 2 ;;
	--percent) pct=$2; shift 2 ;;
	--scale-size) scale=$2; shift 2 ;;
	--work) W=$2; shift 2 ;;
	--results) results=$2; shift 2 ;;
	--keep) keep=1; shift ;;
	--no-install) install=0; shift ;;
	--wait-quiet) quiet_wait=$2; shift 2 ;;
	--repeat) repeat=$2; shift 2 ;;
	--warm) warm=1; shift ;;
	--peers) peers=$2; shift 2 ;;
	-h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
	*) echo "bench: unknown option '$1' (see --help)" >&2; exit 2 ;;
	esac
done
[ -n "$fill" ] || fill=$(( size * 6 / 10 ))
[ -n "$scale" ] || { if [ "$size" -ge 4096 ]; then scale=1T; else scale=$(( size * 256 ))M; fi; }
[ -n "$repeat" ] || { if [ "$size" -ge 2048 ]; then repeat=3; else repeat=1; fi; }
[ -n "$results" ] || results=/tmp/cbimg-bench-results-$(date -u +%Y%m%dT%H%M%SZ).txt

CBIMG=${CBIMG:-$here/../build/cbimg}
case $CBIMG in /*) ;; *) CBIMG=$PWD/$CBIMG ;; esac
[ -x "$CBIMG" ] || { echo "bench: $CBIMG not found; run 'make' first (or set CBIMG)" >&2; exit 1; }

say() { printf '== %s\n' "$*" >&2; }
note() { printf '   %s\n' "$*" >&2; }
root=0; [ "$(id -u)" = 0 ] && root=1

# --- tools: install what is missing (root, Debian), skip what cannot be had
declare -A pkg_of=([restic]=restic [borg]=borgbackup [casync]=casync [rdiff]=rdiff
	[partclone.ext4]=partclone [qemu-img]=qemu-utils [zstd]=zstd [/usr/bin/time]=time
	[mkfs.ext4]=e2fsprogs [debugfs]=e2fsprogs [openssl]=openssl)
have() { command -v "$1" >/dev/null 2>&1; }
missing=()
for t in "${!pkg_of[@]}"; do have "$t" || missing+=("$t"); done
if [ ${#missing[@]} -gt 0 ] && [ "$install" = 1 ] && [ "$root" = 1 ] && have apt-get; then
	say "installing missing tools: ${missing[*]}"
	apt-get update -qq >/dev/null 2>&1 || note "apt-get update failed"
	for t in "${missing[@]}"; do
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkg_of[$t]}" >/dev/null 2>&1 ||
			note "apt-get install ${pkg_of[$t]} failed"
	done
fi
for t in /usr/bin/time mkfs.ext4 debugfs openssl; do
	have "$t" || { echo "bench: $t is required (package ${pkg_of[$t]})" >&2; exit 1; }
done
skipped=()
for t in zstd restic borg casync rdiff partclone.ext4 qemu-img; do
	if [ -n "$peers" ] && [[ " $peers " != *" $t "* ]]; then
		skipped+=("$t")
	elif ! have "$t"; then
		echo "SKIP: $t: not installed (package ${pkg_of[$t]}) - its rows are left out" >&2
		skipped+=("$t")
	fi
done

BSF=${BLOCKSYNC_FAST:-$(command -v blocksync-fast || true)}
if [ -n "$peers" ] && [[ " $peers " != *" blocksync-fast "* ]]; then
	skipped+=(blocksync-fast)
elif [ -z "$BSF" ]; then
	echo "SKIP: blocksync-fast: not packaged in Debian and not found; set BLOCKSYNC_FAST to a binary built from its source (bench/README.md) - its rows are left out" >&2
	skipped+=(blocksync-fast)
elif [ ! -f "$BSF" ] || [ ! -x "$BSF" ]; then
	echo "SKIP: blocksync-fast: BLOCKSYNC_FAST=$BSF is not an executable file - its rows are left out" >&2
	skipped+=(blocksync-fast)
elif ! "$BSF" --version >/dev/null 2>&1; then
	echo "SKIP: blocksync-fast: $BSF --version fails ($("$BSF" --version 2>&1 | head -n 1 | cut -c1-80)) - its rows are left out" >&2
	skipped+=(blocksync-fast)
else
	BSF_VERSION=$("$BSF" --version 2>&1 | head -n 1 | cut -d, -f1)
fi

# --- scratch directory, ours only
if [ -e "$W" ]; then
	if [ -e "$W/.cbimg-bench" ]; then rm -rf "$W"
	elif [ -n "$(ls -A "$W" 2>/dev/null)" ]; then
		echo "bench: $W exists and is not a bench directory; remove it or use --work" >&2; exit 1
	fi
fi
mkdir -p "$W"
: >"$W/.cbimg-bench"
cleanup() { if [ "$keep" = 1 ]; then note "scratch kept: $W"; else rm -rf "$W"; fi; }
trap cleanup EXIT
cd "$W"
cp "$CBIMG" "$W/cbimg"   # a fixed binary for the whole run
CB=$W/cbimg

# cbimg keeps a local copy of each job's newest index (default /var/lib/cbimg):
# the bench keeps its own, so it neither reads nor leaves state there.
export CBIMG_STATE_DIR=$W/cbimg-state
export RESTIC_PASSWORD=bench RESTIC_CACHE_DIR=$W/restic-cache
export BORG_PASSPHRASE= BORG_BASE_DIR=$W/borg-base BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes
export BORG_RELOCATED_REPO_ACCESS_IS_OK=yes

can_drop=0
if [ "$warm" = 1 ]; then echo "NOTE: --warm: the page cache is kept warm (never dropped)" >&2
elif [ "$root" = 1 ] && [ -w /proc/sys/vm/drop_caches ]; then can_drop=1
else echo "NOTE: not root: the page cache is NOT dropped before each command; reads may be cached" >&2; fi
drop_caches() { sync; [ "$can_drop" = 1 ] && echo 3 >/proc/sys/vm/drop_caches || true; }
digest() { if have xxhsum; then xxhsum -H2 <"$1" | cut -d' ' -f1; else sha256sum <"$1" | cut -d' ' -f1; fi; }
bytes() { du -sb "$@" 2>/dev/null | awk '{s += $1} END {printf "%.0f\n", s}'; }   # apparent bytes
alloc() { du -s --block-size=1 "$1" | cut -f1; }                                   # allocated bytes
jnum() { sed -n "s/^ *\"$1\": \([0-9.]*\).*/\1/p" "$2" | head -n 1; }
jstr() { sed -n "s/^ *\"$1\": \"\(.*\)\".*/\1/p" "$2" | head -n 1; }
rows=$W/rows.tsv
: >"$rows"

# timed NAME CMD [PATH...]: drop the page cache, run CMD (a bash command
# line) under GNU time, then fsync the files under each PATH (cbimg fsyncs
# what it writes; zstd, qemu-img, partclone... leave it in the page cache,
# so every tool is timed until its output is durable). Sets SEC and RSS_KB;
# returns CMD's status. stdout goes to $W/NAME.out, stderr to $W/NAME.err.
timed() {
	local name=$1 cmd=$2 rc=0 t0 t1
	shift 2
	REPNOTE=
	wait_quiet
	drop_caches
	b0=$(busy_jiffies)
	t0=$(date +%s%N)
	/usr/bin/time -f '%U %S %M' -o "$W/$name.time" bash -c "$cmd" >"$W/$name.out" 2>"$W/$name.err" || rc=$?
	for p in "$@"; do
		if [ -d "$p" ]; then find "$p" -type f -exec sync {} + 2>/dev/null || true
		elif [ -e "$p" ]; then sync "$p" 2>/dev/null || true; fi
	done
	t1=$(date +%s%N)
	b1=$(busy_jiffies)
	SEC=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f", (b - a) / 1e9}')
	read -r u_s s_s RSS_KB < <(tail -n 1 "$W/$name.time") || true
	case $RSS_KB in '' | *[!0-9]*) RSS_KB=0 u_s=0 s_s=0 ;; esac
	# CPU that other processes used meanwhile, in cores (0.00 = a quiet machine)
	OTHER=$(awk -v j=$(( b1 - b0 )) -v hz="$HZ" -v u="$u_s" -v s="$s_s" -v t="$SEC" \
		'BEGIN {o = (j / hz - u - s) / (t > 0 ? t : 1); printf "%.2f", o < 0 ? 0 : o}')
	if [ "$rc" != 0 ]; then
		echo "FAILED ($rc): $cmd" >&2
		tail -n 5 "$W/$name.err" | sed 's/^/   | /' >&2
	fi
	return "$rc"
}
HZ=$(getconf CLK_TCK)
busy_jiffies() { awk '/^cpu / {printf "%.0f\n", $2 + $3 + $4 + $7 + $8 + $9; exit}' /proc/stat; }
WAITED=0
wait_quiet() { # until the machine is idle for one second, at most $quiet_wait s
	local until=$(( $(date +%s) + quiet_wait )) a b
	while [ "$quiet_wait" -gt 0 ] && [ "$(date +%s)" -lt "$until" ]; do
		a=$(busy_jiffies); sleep 1; b=$(busy_jiffies)
		[ $(( (b - a) * 100 )) -lt $(( HZ * 15 )) ] && return 0
		WAITED=$((WAITED + 1))
	done
	return 0
}
# rep NAME RESET CMD [PATH...]: timed, $repeat times, RESET (a command line,
# untimed) before each; SEC and OTHER of the median run, RSS_KB the largest;
# NAME.out/.err are those of the last run (whose output files remain).
rep() {
	local name=$1 reset=$2 cmd=$3 i rc=0 all="" rss=0 med
	shift 3
	for ((i = 1; i <= repeat; i++)); do
		[ -z "$reset" ] || bash -c "$reset" || true
		timed "$name.r$i" "$cmd" "$@" || rc=$?
		cp "$W/$name.r$i.out" "$W/$name.out"; cp "$W/$name.r$i.err" "$W/$name.err"
		[ "$rc" = 0 ] || return "$rc"
		all="$all$SEC $OTHER"$'\n'
		[ "$RSS_KB" -gt "$rss" ] && rss=$RSS_KB
	done
	med=$(printf '%s' "$all" | sort -n | sed -n "$(( (repeat + 1) / 2 ))p")
	SEC=${med% *} OTHER=${med#* } RSS_KB=$rss
	REPNOTE=
	[ "$repeat" -gt 1 ] && REPNOTE="; median of $(printf '%s' "$all" | cut -d' ' -f1 | paste -sd/) s"
	return 0
}
# row TOOL PHASE SECONDS RSS_KB BYTES NOTE: one line of the table (OTHER from the last timed)
row() { printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" "$6" "${OTHER:-}" >>"$rows"; }
failrow() { row "$1" "$2" "-" 0 "-" "FAILED: $(tail -n 1 "$W/$3.err" | cut -c1-60)"; }
ok() { case " ${skipped[*]} " in *" $1 "*) return 1 ;; esac; return 0; }

DISK=$W/disk.img
say "cbimg bench: ${size} MiB disk, ${fill} MiB of files, ${pct}% day of changes, scale file ${scale}"
note "cbimg: $CBIMG ($("$CB" --version 2>/dev/null | head -n 1))"
note "scratch: $W   results: $results"
T_START=$(date +%s)
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)

# ============================================================ the disk
say "building the disk image"
bash "$here/mkdisk.sh" "$DISK" "$size" "$fill" >&2
cp --sparse=always "$DISK" "$W/diskA.img"      # the state before the changes, for checks
DIG_A=$(digest "$DISK")

# ============================================================ full
say "phase full (state A)"
mkdir -p cb cb64k cb1m cbscale
if rep cat-full "" "cat '$DISK' >/dev/null"; then row cat full "$SEC" "$RSS_KB" 0 "read baseline$REPNOTE"; fi

cbfull() { # TOOL DEST EXTRA_OPTS REPEAT(0/1): each chain has its own state directory
	local st=$2.state
	if { [ "$4" = 1 ] && rep "$1-full" "rm -rf '$2' '$st'; mkdir '$2'" "CBIMG_STATE_DIR='$st' '$CB' backup --json $3 '$DISK' '$2'" "$2"; } ||
		{ [ "$4" != 1 ] && timed "$1-full" "CBIMG_STATE_DIR='$st' '$CB' backup --json $3 '$DISK' '$2'" "$2"; }; then
		FULL_IDX=$(jstr index_path "$W/$1-full.out")
		row "$1" full "$SEC" "$RSS_KB" "$(jnum bytes_written "$W/$1-full.out")" \
			"block $(jnum block_size "$W/$1-full.out") B; index $(bytes "$FULL_IDX") B; $(jnum blocks_stored "$W/$1-full.out") blocks stored$REPNOTE"
	else failrow "$1" full "$1-full"; fi
}
cbfull cbimg "$W/cb" "" 1
CB_FULL_POINT=$(jstr path "$W/cbimg-full.out")
CB_FULL_IDX=$(jstr index_path "$W/cbimg-full.out")
cbfull "cbimg --block-size 64K" "$W/cb64k" "--job bs64k --block-size 64K" 0
cbfull "cbimg --block-size 1M" "$W/cb1m" "--job bs1m --block-size 1M" 0

if ok zstd; then
	if rep zstd-full "rm -f '$W/full.zst'" "zstd -q -T2 -3 <'$DISK' >'$W/full.zst'" "$W/full.zst"; then
		row "zstd -T2 -3" full "$SEC" "$RSS_KB" "$(bytes "$W/full.zst")" "full baseline$REPNOTE"
	else failrow "zstd -T2 -3" full zstd-full; fi
fi
if ok restic; then
	restic -r "$W/restic" init -q >/dev/null 2>"$W/restic-init.err" || echo "restic init failed" >&2
	if timed restic-1 "restic -r '$W/restic' backup -q --stdin --stdin-filename disk.img <'$DISK'" "$W/restic"; then
		row "restic" full "$SEC" "$RSS_KB" "$(bytes "$W/restic")" "1st run, backup --stdin"
	else failrow restic full restic-1; fi
fi
if ok borg; then
	borg init -e none "$W/borg" >/dev/null 2>"$W/borg-init.err" || echo "borg init failed" >&2
	if timed borg-1 "cd '$W' && borg create --read-special '$W/borg::a' disk.img" "$W/borg"; then
		row "borg" full "$SEC" "$RSS_KB" "$(bytes "$W/borg")" "1st run, lz4"
	else failrow borg full borg-1; fi
fi
if ok casync; then
	mkdir -p "$W/casync"
	if timed casync-1 "casync make --store='$W/casync/store' '$W/casync/a.caibx' '$DISK'" "$W/casync"; then
		row "casync" full "$SEC" "$RSS_KB" "$(bytes "$W/casync")" "make, 1st run"
	else failrow casync full casync-1; fi
fi
RDIFF_SIG_S= RDIFF_SIG_RSS=0
if ok rdiff; then
	# the signature of the old state, used by the delta in the incremental phase
	if timed rdiff-sig "rdiff signature '$DISK' '$W/rdiff.sig'" "$W/rdiff.sig"; then
		RDIFF_SIG_S=$SEC RDIFF_SIG_RSS=$RSS_KB
	else failrow rdiff incremental rdiff-sig; fi
fi
if ok blocksync-fast; then
	# its state for the incremental: a digest of A (4 KiB blocks, XXH3LOW), no data
	if rep bsf-digest "rm -f '$W/bsf.digest'" "'$BSF' --make-digest -s '$DISK' -f '$W/bsf.digest'" "$W/bsf.digest"; then
		row "blocksync-fast" full "$SEC" "$RSS_KB" "$(bytes "$W/bsf.digest")" "--make-digest of A only (no data is kept)$REPNOTE"
		cp "$W/bsf.digest" "$W/bsf.digest.A"
	else failrow blocksync-fast full bsf-digest; fi
fi
if ok partclone.ext4; then
	if timed partclone "partclone.ext4 -c -q -s '$DISK' -o '$W/partclone.img' -L '$W/partclone.log'" "$W/partclone.img"; then
		row "partclone.ext4 -c" full "$SEC" "$RSS_KB" "$(bytes "$W/partclone.img")" "used blocks, uncompressed"
	else failrow "partclone.ext4 -c" full partclone; fi
fi
if ok qemu-img; then
	if timed qemu "qemu-img convert -f raw -O qcow2 -c '$DISK' '$W/disk.qcow2'" "$W/disk.qcow2"; then
		row "qemu-img qcow2 -c" full "$SEC" "$RSS_KB" "$(bytes "$W/disk.qcow2")" "zlib"
	else failrow "qemu-img qcow2 -c" full qemu; fi
fi
# scale: the same data at the start of a sparse file of $scale apparent size
BIG=$W/big.img
cp --sparse=always "$DISK" "$BIG" && truncate -s "$scale" "$BIG"
if timed cbimg-scale-full "'$CB' backup --json --no-space-check '$BIG' '$W/cbscale'" "$W/cbscale"; then
	SCALE_FULL_IDX=$(jstr index_path "$W/cbimg-scale-full.out")
	row cbimg "scale full" "$SEC" "$RSS_KB" "$(jnum bytes_written "$W/cbimg-scale-full.out")" \
		"$scale sparse; index $(bytes "$SCALE_FULL_IDX") B"
else failrow cbimg "scale full" cbimg-scale-full; fi

# ============================================================ a day of changes
say "a day of changes (${pct}%)"
bash "$here/dayofchanges.sh" "$DISK" "$pct" 1 >&2
DIG_B=$(digest "$DISK")
[ "$DIG_A" != "$DIG_B" ] || { echo "bench: the day of changes changed nothing" >&2; exit 1; }

# ============================================================ incremental
say "phase incremental (state B)"
mkdir -p "$W/snap"
if rep cat-incr "" "cat '$DISK' >/dev/null"; then row cat incremental "$SEC" "$RSS_KB" 0 "read baseline$REPNOTE"; fi
cbincr() { # TOOL DEST EXTRA_OPTS REPEAT(0/1)
	local before st=$2.state
	before=$(bytes "$2")
	if [ "$4" = 1 ]; then cp -a "$2" "$W/snap.cb"; cp -a "$st" "$W/snap.cbstate"; fi
	if { [ "$4" = 1 ] && rep "$1-incr" "rm -rf '$2' '$st'; cp -a '$W/snap.cb' '$2'; cp -a '$W/snap.cbstate' '$st'" \
			"CBIMG_STATE_DIR='$st' '$CB' backup --json $3 '$DISK' '$2'" "$2"; } ||
		{ [ "$4" != 1 ] && timed "$1-incr" "CBIMG_STATE_DIR='$st' '$CB' backup --json $3 '$DISK' '$2'" "$2"; }; then
		INCR_IDX=$(jstr index_path "$W/$1-incr.out")
		row "$1" incremental "$SEC" "$RSS_KB" "$(( $(bytes "$2") - before ))" \
			"$(jnum blocks_changed "$W/$1-incr.out")/$(jnum blocks_total "$W/$1-incr.out") blocks changed; index $(bytes "$INCR_IDX") B$REPNOTE"
	else failrow "$1" incremental "$1-incr"; fi
	rm -rf "$W/snap.cb" "$W/snap.cbstate"
}
cbincr cbimg "$W/cb" "" 1
CB_INCR_POINT=$(jstr path "$W/cbimg-incr.out")
CB_INCR_IDX=$(jstr index_path "$W/cbimg-incr.out")
# the floor of every incremental: the same disk again, nothing changed (seq 2 of the main chain)
if timed cbimg-unchanged "CBIMG_STATE_DIR='$W/cb.state' '$CB' backup --json '$DISK' '$W/cb'" "$W/cb"; then
	row cbimg "unchanged incremental" "$SEC" "$RSS_KB" "$(jnum bytes_written "$W/cbimg-unchanged.out")" \
		"$(jnum blocks_changed "$W/cbimg-unchanged.out") blocks changed; scan rate $(awk -v b="$(stat -c %s "$DISK")" -v s="$SEC" 'BEGIN {printf "%.2f", b / s / 1e9}') GB/s"
else failrow cbimg "unchanged incremental" cbimg-unchanged; fi
cbincr "cbimg --block-size 64K" "$W/cb64k" "--job bs64k" 0
cbincr "cbimg --block-size 1M" "$W/cb1m" "--job bs1m" 0
if ok restic; then
	before=$(bytes "$W/restic")
	[ "$repeat" = 1 ] || cp -a "$W/restic" "$W/restic-cache" "$W/snap/" 2>/dev/null || true
	if rep restic-2 "[ ! -d '$W/snap/restic' ] || { rm -rf '$W/restic' '$W/restic-cache'; cp -a '$W/snap/restic' '$W/snap/restic-cache' '$W/'; }" \
		"restic -r '$W/restic' backup -q --stdin --stdin-filename disk.img <'$DISK'" "$W/restic"; then
		row "restic" incremental "$SEC" "$RSS_KB" "$(( $(bytes "$W/restic") - before ))" "2nd run$REPNOTE"
	else failrow restic incremental restic-2; fi
fi
if ok borg; then
	before=$(bytes "$W/borg")
	[ "$repeat" = 1 ] || cp -a "$W/borg" "$W/borg-base" "$W/snap/" 2>/dev/null || true
	if rep borg-2 "[ ! -d '$W/snap/borg' ] || { rm -rf '$W/borg' '$W/borg-base'; cp -a '$W/snap/borg' '$W/snap/borg-base' '$W/'; }" \
		"cd '$W' && borg create --read-special '$W/borg::b' disk.img" "$W/borg"; then
		row "borg" incremental "$SEC" "$RSS_KB" "$(( $(bytes "$W/borg") - before ))" "2nd run$REPNOTE"
	else failrow borg incremental borg-2; fi
fi
if ok blocksync-fast && [ -f "$W/bsf.digest.A" ]; then
	if rep bsf-incr "rm -f '$W/bsf.delta'; cp '$W/bsf.digest.A' '$W/bsf.digest'" \
		"'$BSF' --make-delta -s '$DISK' -f '$W/bsf.digest' -D '$W/bsf.delta'" "$W/bsf.delta" "$W/bsf.digest"; then
		row "blocksync-fast" incremental "$SEC" "$RSS_KB" "$(bytes "$W/bsf.delta")" \
			"--make-delta against A's digest: changed 4 KiB blocks, uncompressed$REPNOTE"
	else failrow blocksync-fast incremental bsf-incr; fi
fi
if ok casync; then
	before=$(bytes "$W/casync")
	if timed casync-2 "casync make --store='$W/casync/store' '$W/casync/b.caibx' '$DISK'" "$W/casync"; then
		row "casync" incremental "$SEC" "$RSS_KB" "$(( $(bytes "$W/casync") - before ))" "2nd run, same store"
	else failrow casync incremental casync-2; fi
fi
if ok rdiff && [ -n "$RDIFF_SIG_S" ]; then
	if timed rdiff-delta "rdiff delta '$W/rdiff.sig' '$DISK' '$W/rdiff.delta'" "$W/rdiff.delta"; then
		tot=$(awk -v a="$RDIFF_SIG_S" -v b="$SEC" 'BEGIN {printf "%.3f", a + b}')
		rss=$(( RSS_KB > RDIFF_SIG_RSS ? RSS_KB : RDIFF_SIG_RSS ))
		row "rdiff" incremental "$tot" "$rss" "$(( $(bytes "$W/rdiff.sig") + $(bytes "$W/rdiff.delta") ))" \
			"signature of A ${RDIFF_SIG_S} s + delta ${SEC} s"
	else failrow rdiff incremental rdiff-delta; fi
fi
cp --sparse=always "$DISK" "$BIG" && truncate -s "$scale" "$BIG"
if timed cbimg-scale-incr "'$CB' backup --json --no-space-check '$BIG' '$W/cbscale'" "$W/cbscale"; then
	SCALE_INCR_IDX=$(jstr index_path "$W/cbimg-scale-incr.out")
	row cbimg "scale incremental" "$SEC" "$RSS_KB" "$(jnum bytes_written "$W/cbimg-scale-incr.out")" \
		"$scale sparse; $(jnum blocks_changed "$W/cbimg-scale-incr.out") blocks changed; index $(bytes "$SCALE_INCR_IDX") B"
else failrow cbimg "scale incremental" cbimg-scale-incr; fi
rm -f "$BIG"
rm -rf "$W/snap"

# ============================================================ restore
say "phase restore (newest point to a new file)"
if [ -n "$CB_INCR_POINT" ]; then
	if rep cbimg-restore "rm -f '$W/restored.img'" "'$CB' restore --json '$CB_INCR_POINT' '$W/restored.img'" "$W/restored.img"; then
		row cbimg restore "$SEC" "$RSS_KB" "$(alloc "$W/restored.img")" "incremental point, new sparse file$REPNOTE"
		[ "$(digest "$W/restored.img")" = "$DIG_B" ] || { echo "bench: cbimg restore is WRONG" >&2; exit 1; }
	else failrow cbimg restore cbimg-restore; fi
	rm -f "$W/restored.img"
fi
if ok zstd && [ -f "$W/full.zst" ]; then
	if rep zstd-d "rm -f '$W/zrestored.img'" "zstd -q -d '$W/full.zst' -o '$W/zrestored.img'" "$W/zrestored.img"; then
		row "zstd -d" restore "$SEC" "$RSS_KB" "$(alloc "$W/zrestored.img")" "restore baseline, sparse output$REPNOTE"
		[ "$(digest "$W/zrestored.img")" = "$DIG_A" ] || { echo "bench: zstd restore is WRONG" >&2; exit 1; }
	else failrow "zstd -d" restore zstd-d; fi
	rm -f "$W/zrestored.img"
fi

# ============================================================ changed-only restore
say "phase changed-only restore (full point onto a copy of state B)"
cp --sparse=always "$DISK" "$W/target.img"
if rep cat-co "" "cat '$W/target.img' >/dev/null"; then row cat "changed-only restore" "$SEC" "$RSS_KB" 0 "read baseline$REPNOTE"; fi
if [ -n "$CB_FULL_POINT" ]; then
	if rep cbimg-co "cp --sparse=always '$DISK' '$W/target.img'" \
		"'$CB' restore --json --force --changed-only '$CB_FULL_POINT' '$W/target.img'" "$W/target.img"; then
		row cbimg "changed-only restore" "$SEC" "$RSS_KB" "$(jnum bytes_written "$W/cbimg-co.out")" \
			"$(jnum blocks_written "$W/cbimg-co.out")/$(jnum blocks_total "$W/cbimg-co.out") blocks written$REPNOTE"
		[ "$(digest "$W/target.img")" = "$DIG_A" ] || { echo "bench: cbimg changed-only restore is WRONG" >&2; exit 1; }
	else failrow cbimg "changed-only restore" cbimg-co; fi
fi
rm -f "$W/target.img"
T_END=$(date +%s)
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)

# ============================================================ the table
{
	echo "cbimg bench, $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs, ${size} MiB disk with ${fill} MiB of files," \
		"${pct}% day of changes, scale file ${scale}; run took $(( T_END - T_START )) s"
	echo "load average at the start: $LOAD_START, at the end: $LOAD_END (other work on the machine skews times)"
	[ "$repeat" -gt 1 ] && echo "cat, cbimg (main chain, restores), zstd, zstd -d and the restic and borg 2nd runs: median of $repeat runs"
	[ "$quiet_wait" -gt 0 ] && echo "waited up to ${quiet_wait} s before each command for a quiet machine (${WAITED} s in all)"
	if [ "$can_drop" = 1 ]; then echo "page cache dropped before every timed command (cold)"
	elif [ "$warm" = 1 ]; then echo "page cache kept warm (--warm): sources read from memory"
	else echo "page cache NOT dropped (not root): reads may come from the cache"; fi
	echo "CPU: $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1); storage of $W: $(df --output=source "$W" | tail -n 1)"
	if ok blocksync-fast; then echo "blocksync-fast: $BSF ($BSF_VERSION)"; fi
	echo
	awk -F'\t' '
	function ref(ph) { return ph == "scale full" ? "full" : ph ~ /incremental$/ ? "incremental" : ph }
	{ tool[NR] = $1; ph[NR] = $2; s[NR] = $3; rss[NR] = $4; by[NR] = $5; nt[NR] = $6; oc[NR] = $7
	  if ($1 == "cbimg" && $2 !~ /^scale/ && $3 != "-") cb[$2] = $3 }
	END {
		fmt = "| %-22s | %-20s | %8s | %8s | %13s | %6s | %5s | %s\n"
		printf fmt, "tool", "phase", "seconds", "RSS MiB", "bytes written", "ratio", "other", "note |"
		printf "|%s|%s|%s|%s|%s|%s|%s|%s|\n", "------------------------", "----------------------", "---------:", "---------:", "--------------:", "-------:", "------:", "------"
		for (i = 1; i <= NR; i++) {
			r = ref(ph[i]); ratio = "-"
			if (s[i] != "-" && (r in cb) && cb[r] > 0) ratio = sprintf("%.2f", s[i] / cb[r])
			printf fmt, tool[i], ph[i], s[i], sprintf("%.1f", rss[i] / 1024), by[i], ratio, oc[i], nt[i] " |"
		}
	}' "$rows"
	echo
	echo "ratio = seconds / cbimg's seconds in the same phase (scale rows: / cbimg's on the ${size} MiB file)"
	echo "other = CPU cores that other processes kept busy during the command (0.00: the machine was quiet)"
	echo
	echo "targets (issue 16; the cat limit and the scan rate depend on the page cache: this run is $([ "$warm" = 1 ] && echo warm || echo cold)):"
	awk -F'\t' -v warm="$warm" -v size_b="$(stat -c %s "$DISK")" '
	{ key = $1 "|" $2; S[key] = $3; B[key] = $5; R[key] = $4 }
	function has(k) { return (k in S) && S[k] != "-" }
	function verdict(ok) { return ok ? "PASS" : "FAIL" }
	function line(ok, text) { printf "  %s  %s\n", verdict(ok), text }
	function na(text) { printf "  n/a   %s\n", text }
	END {
		c = "cbimg|incremental"; k = "cat|incremental"
		lim = warm ? 2 : 1.1
		if (has(c) && has(k)) line(S[c] <= lim * S[k], sprintf("1. incremental <= %gx cat (%s): %.3f s vs cat %.3f s = %.2fx", lim, warm ? "warm" : "cold", S[c], S[k], S[c] / S[k]))
		else na("1. incremental vs cat")
		p = "blocksync-fast|incremental"
		if (has(c) && has(p)) {
			line(S[p] >= S[c], sprintf("1. blocksync-fast time / cbimg time >= 1: %.3f s / %.3f s = %.2f", S[p], S[c], S[p] / S[c]))
			line(B[c] < B[p], sprintf("1. incremental writes fewer bytes than blocksync-fast: %d vs %d bytes = %.3fx (limit < 1x)", B[c], B[p], B[c] / B[p]))
		} else na("1. incremental vs blocksync-fast (not run)")
		u = "cbimg|unchanged incremental"
		if (has(u) && warm) line(size_b / S[u] / 1e9 >= 4, sprintf("2. unchanged-disk scan rate >= 4 GB/s warm: %.2f GB/s (%.0f bytes in %.3f s)", size_b / S[u] / 1e9, size_b, S[u]))
		else if (has(u)) printf "  info  2. unchanged-disk scan rate: %.2f GB/s cold (%.0f bytes in %.3f s; the target is for a warm cache)\n", size_b / S[u] / 1e9, size_b, S[u]
		x = "cbimg|scale incremental"
		if (has(x) && has(c)) line(S[x] <= 1.1 * S[c], sprintf("3. sparse-source incremental <= 1.1x the dense one: %.3f s vs %.3f s = %.2fx", S[x], S[c], S[x] / S[c]))
		else na("3. sparse-source incremental (not run)")
		c = "cbimg|full"; z = "zstd -T2 -3|full"
		if (has(c) && has(z)) {
			line(S[c] <= 0.8 * S[z], sprintf("4. full <= 0.8x zstd -T2 -3 time: %.3f s vs %.3f s = %.2fx", S[c], S[z], S[c] / S[z]))
			line(B[c] <= 1.03 * B[z], sprintf("4. full <= 1.03x zstd -T2 -3 size: %d vs %d bytes = %.3fx", B[c], B[z], B[c] / B[z]))
		} else na("4. full vs zstd -T2 -3 (not run)")
		c = "cbimg|restore"; z = "zstd -d|restore"
		if (has(c) && has(z)) line(S[c] <= 0.5 * S[z], sprintf("6. restore <= 0.5x zstd -d time: %.3f s vs %.3f s = %.2fx", S[c], S[z], S[c] / S[z]))
		else na("6. restore vs zstd -d (not run)")
		# the earlier issues targets, still watched
		c = "cbimg|incremental"
		split("restic borg", peers, " ")
		for (j = 1; j <= 2; j++) {
			p = peers[j] "|incremental"
			if (has(c) && has(p)) line(S[p] >= 10 * S[c], sprintf("(earlier) incremental >= 10x faster than %s 2nd run: %.3f s vs %.3f s = %.1fx faster", peers[j], S[c], S[p], S[p] / S[c]))
			else na("(earlier) incremental >= 10x faster than " peers[j] " 2nd run (not run)")
		}
		c = "cbimg|changed-only restore"; k = "cat|changed-only restore"
		if (has(c) && has(k)) line(S[c] <= 2 * S[k], sprintf("(earlier) changed-only restore <= 2x cat: %.3f s vs cat %.3f s = %.2fx", S[c], S[k], S[c] / S[k]))
		else na("(earlier) changed-only restore <= 2x cat")
	}' "$rows"
	# peak RSS <= 64 MiB + the size of the index of the point written or restored
	while IFS=$'\t' read -r ph idx; do
		r=$(awk -F'\t' -v ph="$ph" '$1 == "cbimg" && $2 == ph && $3 != "-" {print $4}' "$rows")
		[ -n "$r" ] && [ -n "$idx" ] && [ -f "$idx" ] || { echo "  n/a   peak RSS, $ph"; continue; }
		ib=$(bytes "$idx")
		awk -v r="$r" -v ib="$ib" -v ph="$ph" 'BEGIN {
			lim = 64 * 1048576 + ib; v = r * 1024
			printf "  %s  peak RSS <= 64 MiB + index, %s: %.1f MiB vs %.1f MiB (index %d B) = %.2fx of the limit\n",
				(v <= lim ? "PASS" : "FAIL"), ph, v / 1048576, lim / 1048576, ib, v / lim }'
	done <<-EOF
		full	${CB_FULL_IDX:-}
		incremental	${CB_INCR_IDX:-}
		restore	${CB_INCR_IDX:-}
		changed-only restore	${CB_FULL_IDX:-}
		scale full	${SCALE_FULL_IDX:-}
		scale incremental	${SCALE_INCR_IDX:-}
	EOF
	if [ ${#skipped[@]} -gt 0 ]; then echo; echo "skipped (not installed, or left out by --peers): ${skipped[*]}"; fi
} | tee "$results"
say "results written to $results"
