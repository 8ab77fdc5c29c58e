#!/usr/bin/env bash
# bench/mkdisk.sh IMG SIZE_MIB [FILL_MIB]
# Build a realistic test disk: a raw image file holding an ext4 filesystem
# (4 KiB blocks, as on any real disk) populated with real files of this
# system (mkfs.ext4 -d: no root, no loop device), about FILL MiB of them
# (default 60% of the disk). Whole trees are copied in a fixed order while
# they fit, then single files top the fill up to within about 1% of FILL,
# so the result is repeatable on one machine.
set -euo pipefail
export PATH=$PATH:/usr/sbin:/sbin
img=$1 size=$2 fill=${3:-$(( size * 6 / 10 ))}
rm -f "$img"
truncate -s "${size}M" "$img"
stage=$(mktemp -d /tmp/mkdisk.XXXXXX)
trap 'rm -rf "$stage" "$stage.topup"' EXIT
trees="/usr/include /usr/share/doc /usr/bin /usr/share/locale /usr/lib/gcc /usr/share/perl /usr/lib/python3
       /usr/lib/x86_64-linux-gnu /usr/lib/llvm-14 /usr/lib/jvm /usr/share /usr/lib /usr/sbin /opt /var/lib /var/cache"
have_kb=0 fill_kb=$(( fill * 1024 )) copied=""
for t in $trees; do
	[ -d "$t" ] || continue
	[ "$have_kb" -ge "$fill_kb" ] && break
	[ -e "$stage$t" ] && continue           # a parent tree is already in
	s=$(du -sk "$t" 2>/dev/null | cut -f1)
	if [ $((have_kb + s)) -le "$fill_kb" ]; then
		mkdir -p "$stage$(dirname "$t")"
		cp -a "$t" "$stage$t" 2>/dev/null || true
		copied="$copied $t"
		have_kb=$(du -sk "$stage" | cut -f1)
	fi
done
# Top up with single files, in a fixed order, from trees not copied yet.
if [ "$have_kb" -lt $(( fill_kb * 99 / 100 )) ]; then
	for t in $trees; do [ -d "$t" ] && echo "$t"; done |
		xargs -I{} find {} -xdev -type f -size -64M -printf '%k\t%p\n' 2>/dev/null |
		awk -F'\t' -v copied="$copied" -v need=$(( fill_kb - have_kb )) '
			BEGIN { n = split(copied, c, " ") }
			{ for (i = 1; i <= n; i++) if (index($2, c[i] "/") == 1) next
			  if (seen[$2]++ || got + $1 > need) next
			  print $2; got += $1; if (got >= need * 0.995) exit }' >"$stage.topup" || true
	xargs -r -d '\n' cp -a --parents -t "$stage" <"$stage.topup" 2>/dev/null || true
	rm -f "$stage.topup"
	have_kb=$(du -sk "$stage" | cut -f1)
fi
mkfs.ext4 -q -F -b 4096 -E lazy_itable_init=0,lazy_journal_init=0 -d "$stage" "$img"
echo "$img: ${size} MiB ext4 holding $(( have_kb / 1024 )) MiB of files ($(find "$stage" -type f | wc -l) files)"
