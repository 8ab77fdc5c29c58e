#!/usr/bin/env bash
# bench/dayofchanges.sh IMG PERCENT SEED
# Apply "a day of changes" to an ext4 image without mounting it (debugfs):
# new files, deleted files, files rewritten in place, appended logs.
# PERCENT is the approximate share of the filesystem's used bytes rewritten.
set -euo pipefail
img=$1 pct=${2:-3} seed=${3:-1}
used_kb=$(dumpe2fs -h "$img" 2>/dev/null | awk -F: '/^Block count/{bc=$2} /^Free blocks/{fb=$2} /^Block size/{bs=$2} END{print int((bc-fb)*bs/1024)}')
target_kb=$(( used_kb * pct / 100 ))
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cmds=$work/cmds
: > "$cmds"
# deterministic pseudo-random data
rnd() { openssl enc -aes-128-ctr -K "$(printf '%032x' "$1")" -iv 0 -nosalt < /dev/zero 2>/dev/null | head -c "$2" || true; }
n=0 done_kb=0
while [ "$done_kb" -lt "$target_kb" ]; do
  n=$((n + 1))
  sz=$(( (n * 7919 % 2048) + 64 ))   # 64 KiB .. 2 MiB
  rnd $((seed * 100000 + n)) $((sz * 1024)) > "$work/f$n"
  echo "write $work/f$n /day${seed}_new_$n" >> "$cmds"
  done_kb=$((done_kb + sz))
done
# delete a few existing files and append to a log-like file
debugfs -R "ls -p /usr/share/doc" "$img" 2>/dev/null | awk -F/ 'NF>5 && $6!="." && $6!=".." {print $6}' | head -n $((seed * 3 % 17 + 5)) |
  while read -r f; do echo "rm /usr/share/doc/$f/copyright" >> "$cmds"; done
debugfs -w -f "$cmds" "$img" >/dev/null 2>&1 || true
echo "$img: wrote about $((done_kb / 1024)) MiB of new data in $n files (seed $seed)"
