#!/usr/bin/env bash
# bench/mkdisk.sh IMG SIZE_MIB [FILL_MIB]
# Build a realistic test disk: a raw image file holding an ext4 filesystem
# populated (mkfs.ext4 -d, no root needed) with real files of this system,
# about FILL MiB of them (default 60% of the disk).
set -euo pipefail
img=$1 size=$2 fill=${3:-$(( size * 6 / 10 ))}
rm -f "$img"
truncate -s "${size}M" "$img"
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
# Candidate trees in a fixed order; sizes measured once, so the choice is
# quick and repeatable on one machine.
have=0
for t in /usr/include /usr/share/doc /usr/bin /usr/share/locale /usr/lib/gcc /usr/share/perl /usr/lib/python3 \
         /usr/lib/x86_64-linux-gnu /usr/lib/llvm-14 /usr/lib/jvm /usr/share /usr/lib; do
  [ -d "$t" ] || continue
  [ "$have" -ge "$fill" ] && break
  s=$(du -sm "$t" 2>/dev/null | cut -f1)
  if [ $((have + s)) -le $((fill + fill / 10)) ]; then
    mkdir -p "$stage$(dirname "$t")"
    cp -a "$t" "$stage$t" 2>/dev/null || true
    have=$((have + s))
  fi
done
mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 -d "$stage" "$img"
echo "$img: ${size} MiB ext4 holding about ${have} MiB of files"
