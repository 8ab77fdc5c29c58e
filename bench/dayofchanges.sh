#!/usr/bin/env bash
# bench/dayofchanges.sh IMG PERCENT SEED
# Apply "a day of changes" to an ext4 file system in a raw image file,
# without mounting it (no root, no loop device): debugfs edits the metadata,
# dd writes file data straight into the blocks debugfs maps for it.
#
# PERCENT (default 3) is the share of the file system's used bytes that the
# day writes, split roughly as:
#   45%  new files in /home/user/dayN (half incompressible "media", half
#        text-like data that compresses about 2:1)
#   35%  parts of existing files rewritten in place (same physical blocks,
#        as a database or a VM image updates itself), 16 KiB to 512 KiB at
#        block-aligned offsets
#   20%  appended to a few existing files ("logs"): new blocks are mapped
#        after the file's last one (debugfs bmap -a), the size is raised, the
#        data written into them; the file's old blocks stay where they were
# and a few existing files are deleted. Every touched file gets a new mtime.
# SEED makes it deterministic: the same image and seed give the same bytes.
set -euo pipefail
export PATH=$PATH:/usr/sbin:/sbin
img=$1 pct=${2:-3} seed=${3:-1}
for t in debugfs dumpe2fs dd openssl od awk; do
	command -v "$t" >/dev/null || { echo "dayofchanges: $t not found" >&2; exit 1; }
done
read -r bsz used_kb < <(dumpe2fs -h "$img" 2>/dev/null | awk -F: '
	/^Block count/ {bc=$2} /^Free blocks/ {fb=$2} /^Block size/ {bs=$2+0}
	END {print bs, int((bc-fb)*bs/1024)}')
[ -n "${bsz:-}" ] && [ "$bsz" -gt 0 ] || { echo "dayofchanges: $img is not an ext2/3/4 image" >&2; exit 1; }
target_kb=$(( used_kb * pct / 100 ))
new_kb=$(( target_kb * 45 / 100 ))
rew_kb=$(( target_kb * 35 / 100 ))
app_kb=$(( target_kb - new_kb - rew_kb ))
work=$(mktemp -d /tmp/dayofchanges.XXXXXX)
trap 'rm -rf "$work"' EXIT
dbg() { debugfs "$@" 2>/dev/null; }

# Deterministic pseudo-random bytes: rnd KEY BYTES. Text-like: txt KEY BYTES.
rnd() { openssl enc -aes-128-ctr -K "$(printf '%032x' "$1")" -iv 0 -nosalt </dev/zero 2>/dev/null | head -c "$2" || true; }
txt() { rnd "$1" $(( $2 / 2 + 64 )) | od -An -tu2 -w16 -v | head -c "$2" || true; }
# awk's rand, seeded: the choices below depend on SEED only.
pick() { awk -v seed=$(( seed * 10 + $1 )) 'BEGIN{srand(seed)} {print rand() "\t" $0}' | sort -k1,1 | cut -f2-; }

# 1. All regular files (path, size, blocks mapped): walk the tree one
#    directory level at a time, one debugfs run per level.
: >"$work/files"
printf '/\n' >"$work/dirs"
while [ -s "$work/dirs" ]; do
	awk '{print "ls -p \"" $0 "\""}' "$work/dirs" >"$work/cmds"
	dbg -f "$work/cmds" "$img" | awk -F/ -v files="$work/files" -v dirs="$work/dirs.next" '
		/^debugfs: ls -p / { d = substr($0, 16); gsub(/"/, "", d); if (d != "/") d = d "/"; next }
		NF >= 7 && $6 != "." && $6 != ".." && $6 !~ /[ "\\]/ {
			if ($3 ~ /^040/) print d $6 > dirs
			else if ($3 ~ /^100/ && $7 + 0 > 0) print d $6 "\t" $7 >> files
		}'
	mv -f "$work/dirs.next" "$work/dirs" 2>/dev/null || : >"$work/dirs"
done
sort -o "$work/files" "$work/files"
nfiles=$(wc -l <"$work/files")
[ "$nfiles" -ge 20 ] || { echo "dayofchanges: only $nfiles files in $img" >&2; exit 1; }

# 2. Choose: deletions (a few small files), appends (a few files), in-place
#    rewrites (files of 64 KiB or more), none chosen twice.
pick 1 <"$work/files" | awk -F'\t' -v n=$(( seed * 3 % 17 + 8 )) '$2 < 1048576 && c < n {print; c++}' >"$work/del"
pick 2 <"$work/files" | grep -vxF -f "$work/del" |
	awk -F'\t' '$2 >= 4096 && $2 < 64 * 1048576 && c < 6 {print; c++}' >"$work/app"
pick 3 <"$work/files" | grep -vxF -f "$work/del" | grep -vxF -f "$work/app" |
	awk -F'\t' -v budget=$(( rew_kb * 1024 )) -v bs="$bsz" -v seed="$seed" '
	BEGIN { srand(seed + 7) }
	$2 >= 65536 && done < budget {
		nblk = int($2 / bs)                     # whole blocks of the file
		len = int((16384 + rand() * (524288 - 16384)) / bs)
		if (len < 1) len = 1
		if (len > int(nblk / 2)) len = int(nblk / 2)   # a part, not all of it
		if (len < 1) len = 1
		start = int(rand() * (nblk - len + 1))
		print $1 "\t" start "\t" len
		done += len * bs
	}' >"$work/rew"

now=$(( 1700000000 + seed * 86400 ))
cmds=$work/cmds
: >"$cmds"
# deletions
cut -f1 "$work/del" | while read -r f; do echo "rm \"$f\""; done >>"$cmds"
# new files
echo "mkdir /home" >>"$cmds"
echo "mkdir /home/user" >>"$cmds"
echo "mkdir /home/user/day$seed" >>"$cmds"
n=0 done_kb=0
while [ "$done_kb" -lt "$new_kb" ]; do
	n=$((n + 1))
	sz=$(( (n * 7919 % 2048) + 64 ))   # 64 KiB .. 2 MiB
	if [ $((n % 2)) = 1 ]; then
		rnd $((seed * 100000 + n)) $((sz * 1024)) >"$work/new$n"
	else
		txt $((seed * 100000 + n)) $((sz * 1024)) >"$work/new$n"
	fi
	echo "write $work/new$n /home/user/day$seed/file$n" >>"$cmds"
	done_kb=$((done_kb + sz))
done
# appends, step 1: map new blocks after the last one
napp=$(wc -l <"$work/app")
per_app=$(( napp > 0 ? app_kb * 1024 / napp : 0 ))
while IFS=$'\t' read -r f size; do
	first=$(( (size + bsz - 1) / bsz )) last=$(( (size + per_app - 1) / bsz ))
	for ((l = first; l <= last; l++)); do echo "bmap -a \"$f\" $l"; done
	echo "sif \"$f\" size $(( size + per_app ))"
done <"$work/app" >>"$cmds"
dbg -w -f "$cmds" "$img" >/dev/null

# Physical block of every logical block to be written (appends, rewrites).
: >"$cmds"
while IFS=$'\t' read -r f size; do
	for ((l = size / bsz; l <= (size + per_app - 1) / bsz; l++)); do echo "bmap \"$f\" $l"; done
done <"$work/app" >>"$cmds"
while IFS=$'\t' read -r f start len; do
	for ((l = start; l < start + len; l++)); do echo "bmap \"$f\" $l"; done
done <"$work/rew" >>"$cmds"
dbg -f "$cmds" "$img" | awk '
	/^debugfs: bmap / { sub(/^debugfs: bmap "/, ""); n = split($0, a, "\" "); f = a[1]; l = a[2]; next }
	/^[0-9]+/ { print f "\t" l "\t" $1 }' >"$work/map"

# 3. Write the data: dd into the image at the mapped blocks, one dd per run
#    of physically contiguous blocks.
write_run() { # FILE_WITH_DATA DATA_OFFSET PHYS_BYTE_OFFSET LEN
	dd if="$1" of="$img" bs=1M iflag=skip_bytes,count_bytes oflag=seek_bytes conv=notrunc status=none \
		skip="$2" seek="$3" count="$4"
}
# file F's data for logical range [from_byte, to_byte) is in DATA at offset 0;
# walk the map and emit contiguous runs.
write_file_range() { # F DATA FROM_BYTE TO_BYTE
	local f=$1 data=$2 from=$3 to=$4
	awk -F'\t' -v f="$f" -v bs="$bsz" -v from="$from" -v to="$to" '
		$1 == f && $3 > 0 {
			lo = $2 * bs; hi = lo + bs
			if (lo < from) lo = from; if (hi > to) hi = to
			if (lo >= hi) next
			phys = $3 * bs + (lo - $2 * bs)
			if (n && phys == pend && lo == lend) { lend = hi; pend = phys + (hi - lo); next }
			if (n) printf "%.0f %.0f %.0f\n", lstart - from, pstart, lend - lstart
			n = 1; lstart = lo; lend = hi; pstart = phys; pend = phys + (hi - lo)
		}
		END { if (n) printf "%.0f %.0f %.0f\n", lstart - from, pstart, lend - lstart }' "$work/map" |
	while read -r doff poff len; do write_run "$data" "$doff" "$poff" "$len"; done
}
k=0
while IFS=$'\t' read -r f size; do
	k=$((k + 1))
	txt $((seed * 100000 + 50000 + k)) "$per_app" >"$work/app$k"
	write_file_range "$f" "$work/app$k" "$size" $((size + per_app))
done <"$work/app"
rew_bytes=0
while IFS=$'\t' read -r f start len; do
	k=$((k + 1))
	if [ $((k % 2)) = 1 ]; then rnd $((seed * 100000 + 50000 + k)) $((len * bsz)) >"$work/rew$k"
	else txt $((seed * 100000 + 50000 + k)) $((len * bsz)) >"$work/rew$k"; fi
	write_file_range "$f" "$work/rew$k" $((start * bsz)) $(((start + len) * bsz))
	rew_bytes=$((rew_bytes + len * bsz))
done <"$work/rew"

# 4. New mtimes for every file touched.
cut -f1 "$work/app" "$work/rew" | sort -u | while read -r f; do
	echo "sif \"$f\" mtime @$now"
	echo "sif \"$f\" ctime @$now"
done >"$cmds"
dbg -w -f "$cmds" "$img" >/dev/null
sync "$img" 2>/dev/null || true

echo "$img: day $seed: $n new files ($((done_kb / 1024)) MiB), $(wc -l <"$work/rew") in-place rewrites" \
	"($((rew_bytes / 1048576)) MiB), $napp appends ($((napp * per_app / 1048576)) MiB)," \
	"$(wc -l <"$work/del") deletions; of $nfiles files, $((used_kb / 1024)) MiB used"
