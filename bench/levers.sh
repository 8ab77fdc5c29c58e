#!/usr/bin/env bash
# bench/levers.sh - the levers of a full backup against `zstd -T2 -3`
# (issue 16, target 4: at most 0.8x its time and 1.03x its size): time
# against size for block sizes, levels and --used-only, the cost of the
# SHA-256 digest over the output, and what a per-chain zstd dictionary would
# gain (bench/zdict.c, measured outside cbimg on the same blocks).
#
#   CBIMG=/abs/build/cbimg bash bench/levers.sh [options]
#
# options:
#   --disk IMG      use this disk image (default: build one with mkdisk.sh)
#   --size MIB      size of the disk mkdisk.sh builds (default 2048; 60% files)
#   --repeat N      pairs per configuration (default 3): zstd, cbimg, zstd, cbimg...
#   --cold          drop the page cache before every timed command (root);
#                   default warm: the disk is read once first, then stays cached
#   --configs LIST  cbimg configurations, ';'-separated option strings
#                   (default: the table below)
#   --no-dict       skip the dictionary measurement
#   --work DIR      scratch directory (default /tmp/cbimg-levers; removed at the end)
#
# Each cbimg configuration is a full backup into an empty directory with
# --no-state; each is paired with a `zstd -q -T2 -3` of the same disk run
# just before it (zstd's output synced inside its timing, as cbimg fsyncs its
# own), and the table shows the median over the pairs of cbimg/zstd, for wall
# and for CPU (user + sys) time. Bytes: image + index (cbimg), the .zst file.
set -euo pipefail
export LC_ALL=C
here=$(cd "$(dirname "$0")" && pwd)

disk= size=2048 repeat=3 cold=0 dict=1 W=/tmp/cbimg-levers
configs="--level 3;--level 1;--level 2;--level 5;--block-size 64K;--block-size 1M;--block-size 1M --level 1"
configs="$configs;--block-size 4M;--block-size 4M --level 1;--used-only;--threads 1"
while [ $# -gt 0 ]; do
	case $1 in
	--disk) disk=$2; shift 2 ;;
	--size) size=$2; shift 2 ;;
	--repeat) repeat=$2; shift 2 ;;
	--cold) cold=1; shift ;;
	--configs) configs=$2; shift 2 ;;
	--no-dict) dict=0; shift ;;
	--work) W=$2; shift 2 ;;
	-h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
	*) echo "levers: unknown option '$1' (see --help)" >&2; exit 2 ;;
	esac
done
CBIMG=${CBIMG:-$here/../build/cbimg}
case $CBIMG in /*) ;; *) CBIMG=$PWD/$CBIMG ;; esac
[ -x "$CBIMG" ] || { echo "levers: $CBIMG not found; run 'make' first (or set CBIMG)" >&2; exit 1; }
for t in zstd openssl /usr/bin/time cc; do
	command -v "$t" >/dev/null || { echo "levers: $t is required" >&2; exit 1; }
done
if [ "$cold" = 1 ] && { [ "$(id -u)" != 0 ] || [ ! -w /proc/sys/vm/drop_caches ]; }; then
	echo "levers: --cold needs root (to drop the page cache)" >&2; exit 1
fi

if [ -e "$W" ] && [ ! -e "$W/.cbimg-levers" ] && [ -n "$(ls -A "$W" 2>/dev/null)" ]; then
	echo "levers: $W exists and is not a levers directory; remove it or use --work" >&2; exit 1
fi
rm -rf "$W"
mkdir -p "$W"
: >"$W/.cbimg-levers"
trap 'rm -rf "$W"' EXIT
cp "$CBIMG" "$W/cbimg"
CB=$W/cbimg
export CBIMG_STATE_DIR=$W/state

if [ -z "$disk" ]; then
	echo "== building a ${size} MiB disk (mkdisk.sh)" >&2
	disk=$W/disk.img
	bash "$here/mkdisk.sh" "$disk" "$size" >&2
fi
[ -f "$disk" ] || { echo "levers: no disk image '$disk'" >&2; exit 1; }

drop() { sync; if [ "$cold" = 1 ]; then echo 3 >/proc/sys/vm/drop_caches; fi; }
# timed CMD: run a bash command line under GNU time; sets WALL and CPU (s)
timed() {
	local t0 t1 u s
	drop
	t0=$(date +%s%N)
	/usr/bin/time -f '%U %S' -o "$W/time" bash -c "$1" >"$W/out" 2>"$W/err" ||
		{ echo "levers: FAILED: $1" >&2; sed 's/^/   | /' "$W/err" >&2; exit 1; }
	t1=$(date +%s%N)
	read -r u s <"$W/time"
	WALL=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f", (b - a) / 1e9}')
	CPU=$(awk -v u="$u" -v s="$s" 'BEGIN {printf "%.2f", u + s}')
}
med() { sort -g | awk '{v[NR] = $1} END {printf "%.3f", NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
jnum() { sed -n "s/^ *\"$1\": \([0-9.]*\).*/\1/p" "$2" | head -n 1; }

[ "$cold" = 1 ] || cat "$disk" >/dev/null   # warm: the disk in the page cache
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
T0=$(date +%s)
rows=$W/rows
: >"$rows"
ZB=
IFS=';' read -r -a cfgs <<<"$configs"
for cfg in "${cfgs[@]}"; do
	rw= rc= zw= zc=
	for ((i = 1; i <= repeat; i++)); do
		timed "zstd -q -T2 -3 <'$disk' >'$W/full.zst' && sync '$W/full.zst'"
		zw=$WALL zc=$CPU
		ZB=$(stat -c %s "$W/full.zst")
		rm -f "$W/full.zst"
		rm -rf "$W/dest" "$W/state" && mkdir "$W/dest"
		timed "'$CB' backup --json --no-state $cfg '$disk' '$W/dest'"
		rw="$rw $(awk -v a="$WALL" -v b="$zw" 'BEGIN {printf "%.4f", a / b}')"
		rc="$rc $(awk -v a="$CPU" -v b="$zc" 'BEGIN {printf "%.4f", (b > 0 ? a / b : 0)}')"
		printf '   %-28s pair %d: cbimg %s s (CPU %s), zstd %s s (CPU %s)\n' "$cfg" "$i" "$WALL" "$CPU" "$zw" "$zc" >&2
	done
	B=$(jnum bytes_written "$W/out")
	printf '%s\t%s\t%s\t%s\t%s\n' "$cfg" "$B" "$(awk -v a="$B" -v b="$ZB" 'BEGIN {printf "%.3f", a / b}')" \
		"$(printf '%s\n' $rw | med) ($(printf '%s\n' $rw | sort -g | head -n 1)-$(printf '%s\n' $rw | sort -g | tail -n 1))" \
		"$(printf '%s\n' $rc | med)" >>"$rows"
	if [ "$cfg" = "--level 3" ]; then   # the default: keep its image for the SHA-256 measurement
		rm -rf "$W/default" && mv "$W/dest" "$W/default"
	fi
done

# SHA-256 over the output: the image digest every point carries (format/SPEC.md)
SHA=
if [ -d "$W/default" ]; then
	img=$(ls "$W"/default/*.cbi | head -n 1)
	cat "$img" >/dev/null
	s=
	for ((i = 1; i <= repeat; i++)); do
		timed "openssl dgst -sha256 '$img' >/dev/null"
		s="$s $CPU"
	done
	SHA="$(printf '%s\n' $s | med) s CPU for SHA-256 of the default image ($(stat -c %s "$img") bytes, openssl dgst)"
fi

# the dictionary, outside cbimg: the same non-zero blocks, compressed alone
# with and without a dictionary trained on the first 8 MiB of data / spread
DICT=$W/dict.rows
: >"$DICT"
if [ "$dict" = 1 ]; then
	cc -O2 -o "$W/zdict" "$here/zdict.c" -lzstd
	for bs in 65536 262144 1048576; do
		for mode in first spread; do
			"$W/zdict" "$disk" "$bs" 3 8 112 "$mode" >>"$DICT"
		done
	done
fi

LOAD1=$(cut -d' ' -f1-3 /proc/loadavg)
echo "cbimg full-backup levers, $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs ($(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)), run took $(( $(date +%s) - T0 )) s"
echo "disk: $disk, $(stat -c %s "$disk") bytes ($(du -k "$disk" | cut -f1) KiB allocated), on $(df --output=source "$disk" | tail -n 1)"
echo "page cache: $([ "$cold" = 1 ] && echo 'dropped before every command (cold)' || echo 'warm (disk read once first)')"
echo "load average at the start: $LOAD0, at the end: $LOAD1 (other work skews times: read the ratios)"
echo "zstd -q -T2 -3: $ZB bytes (the last run); $repeat pairs per row, ratios cbimg/zstd pair by pair, median (min-max)"
echo
echo "| cbimg options | bytes (image + index) | / zstd bytes | wall / zstd | CPU / zstd |"
echo "|---|--:|--:|--:|--:|"
awk -F'\t' '{printf "| `%s` | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5}' "$rows"
echo
[ -z "$SHA" ] || echo "SHA-256: $SHA"
if [ -s "$DICT" ]; then
	echo
	echo "dictionary (bench/zdict.c, level 3, 112 KiB dictionary trained on 8 MiB of blocks; one thread's CPU s):"
	echo
	echo "| block | samples | blocks | plain bytes | with dictionary | ratio | train s | compress s plain / dict | decompress s plain / dict |"
	echo "|--:|---|--:|--:|--:|--:|--:|--:|--:|"
	awk '{for (i = 1; i <= NF; i++) {split($i, kv, "="); v[kv[1]] = kv[2]}
		printf "| %dK | %s | %s | %s | %s | %s | %s | %s / %s | %s / %s |\n", v["block"] / 1024, v["mode"], v["blocks"],
			v["plain"], v["with_dict"], v["ratio"], v["train_s"], v["comp_plain_s"], v["comp_dict_s"],
			v["dec_plain_s"], v["dec_dict_s"]}' "$DICT"
fi
