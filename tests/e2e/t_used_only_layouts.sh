#!/usr/bin/env bash
# --used-only on ext4 layouts that only libext2fs reads for cbimg: meta_bg
# (group descriptors in meta groups instead of after the superblock) and
# bigalloc (a bitmap bit per cluster of blocks), alone and together. Each
# file system is made in an image file with mkfs.ext4 -d (no root, no loop
# device), some files are deleted with debugfs (their bytes stay in the free
# blocks), and the image is backed up with --used-only, changed, backed up
# again, and both points restored: fsck -n is clean, every file dumped with
# debugfs equals the one written, and every cbimg block the file system
# marks wholly free is restored as zeros.
. "$(dirname "$0")/lib.sh"
need_jq
for c in mkfs.ext4 debugfs dumpe2fs fsck.ext4; do
	command -v "$c" >/dev/null 2>&1 || skip "$c not installed (e2fsprogs)"
done
[ "$SKIPPED" = 1 ] && finish

BS=$((256 * 1024))
D=$T/dest
mkdir -p "$D"

# free_runs IMG: the runs of cbimg blocks (BS bytes) in which IMG's file
# system marks every block free, one "FIRST COUNT" per line. dumpe2fs lists
# free ranges per group; with bigalloc each number is the first block of a
# free cluster.
free_runs() {
	dumpe2fs "$1" 2>/dev/null | awk -v BS=$BS '
		function emit(  s, e, f, l) {
			s = ca * fbs; e = (cb + 1) * fbs
			f = int((s + BS - 1) / BS); l = int(e / BS)
			if (l > f) print f, l - f
		}
		/^Block size:/ { fbs = $3; cl = 1 }
		/^Cluster size:/ { cl = $3 / fbs }
		/^  Free blocks: / {
			sub(/^  Free blocks: /, "")
			n = split($0, r, /, */)
			for (i = 1; i <= n; i++) {
				if (r[i] == "") continue
				k = split(r[i], ab, "-"); a = ab[1] + 0; b = (k > 1 ? ab[2] : ab[1]) + cl - 1
				if (cnt && a == cb + 1) { cb = b; continue }
				if (cnt) emit()
				ca = a; cb = b; cnt = 1
			}
		}
		END { if (cnt) emit() }'
}
# nonzero_runs IMG RUNS: how many of the runs in file RUNS hold a byte other
# than zero in IMG
nonzero_runs() {
	local f n c=0
	while read -r f n; do
		[ "$(dd if="$1" bs=$BS skip="$f" count="$n" status=none | tr -d '\000' | head -c 1 | wc -c)" = 0 ] ||
			c=$((c + 1))
	done <"$2"
	echo $c
}

# gen_tree DIR: 300 text files in 10 directories (1 byte to 96 KiB) and two
# random files, the same on every machine but the random ones
gen_tree() {
	local d i
	for d in $(seq -w 0 9); do
		mkdir -p "$1/d$d"
		for i in $(seq 0 29); do
			yes "cbimg layout test, file d$d/f$i" | head -c $(((10#$d * 30 + i) * 7919 % 98304 + 1)) \
				>"$1/d$d/f$i.txt"
		done
	done
	head -c $((3 * 1024 * 1024 + 777)) /dev/urandom >"$1/big.bin"
	head -c $((2 * 1024 * 1024)) /dev/urandom >"$1/gone.bin"
}

# check_point LABEL IMG POINT TREE: restore POINT, fsck -n, the files of
# TREE (with debugfs rdump) equal, IMG's wholly free blocks zero
check_point() {
	local label=$1 img=$2 point=$3 tree=$4 stale left
	free_runs "$img" >"$T/free.runs"
	stale=$(nonzero_runs "$img" "$T/free.runs")
	rm -rf --one-file-system "$T/r.img" "$T/dump"
	expect_exit 0 "$CBIMG" restore -q "$point" "$T/r.img" || return
	if fsck.ext4 -fn "$T/r.img" >"$T/fsck.out" 2>&1; then
		pass "$label: fsck -n clean"
	else
		fail "$label: fsck -n: $(tail -3 "$T/fsck.out" | tr '\n' ' ')"
	fi
	mkdir -p "$T/dump"
	debugfs -R "rdump / $T/dump" "$T/r.img" >/dev/null 2>&1
	rm -rf --one-file-system "$T/dump/lost+found"
	if diff -r "$tree" "$T/dump" >"$T/diff.out" 2>&1; then
		pass "$label: every file equal ($(find "$tree" -type f | wc -l) files)"
	else
		fail "$label: files differ: $(head -3 "$T/diff.out" | tr '\n' ' ')"
	fi
	left=$(nonzero_runs "$T/r.img" "$T/free.runs")
	if [ "$stale" -gt 0 ] && [ "$left" = 0 ]; then
		pass "$label: free blocks restored as zeros ($stale free runs with stale data in the image)"
	elif [ "$stale" = 0 ]; then
		fail "$label: test setup: no wholly free cbimg block holds deleted data"
	else
		fail "$label: $left of the $stale free runs with stale data were backed up"
	fi
}

# layout NAME "FEATURE..." MKFS_OPTIONS SIZE_MIB
layout() {
	local name=$1 feats=$2 opts=$3 mib=$4 img=$T/$1.img tree=$T/$1.tree full f
	echo "== $name: mkfs.ext4 $opts"
	rm -rf --one-file-system "$tree"
	gen_tree "$tree"
	# shellcheck disable=SC2086
	if ! mkfs.ext4 -q -F $opts -d "$tree" "$img" "${mib}M" >"$T/mkfs.out" 2>&1; then
		fail "$name: mkfs.ext4 $opts: $(tail -2 "$T/mkfs.out" | tr '\n' ' ')"
		return
	fi
	for f in $feats; do
		check "$name: file system made with $f" \
			bash -c "dumpe2fs -h '$img' 2>/dev/null | grep -q -E '^Filesystem features:.* $f( |\$)'"
	done
	# deleted without mounting: the blocks are freed, the bytes stay
	debugfs -w -R "rm /gone.bin" "$img" >/dev/null 2>&1
	rm -f "$tree/gone.bin"

	expect_exit 0 "$CBIMG" backup --json --no-state --used-only --job "$name" "$img" "$D" || return
	check "$name: full: some blocks unused ($(jout .blocks_unused))" test "$(jout .blocks_unused)" -gt 0
	check "$name: full reads less ($(jout .bytes_read) of $((mib * 1024 * 1024)) bytes)" \
		test "$(jout .bytes_read)" -lt "$((mib * 1024 * 1024 / 2))"
	full=$D/$(basename "$(jout .point.index_file)")
	check_point "$name full" "$img" "$full" "$tree"

	# changes: a file removed, one added, one rewritten (all with debugfs)
	head -c $((1024 * 1024 + 5)) /dev/urandom >"$tree/new.bin"
	debugfs -w -f - "$img" >/dev/null 2>&1 <<-EOF
		rm /d03/f7.txt
		rm /big.bin
		write $tree/new.bin /new.bin
		write $tree/new.bin /big.bin
	EOF
	rm -f "$tree/d03/f7.txt"
	cp "$tree/new.bin" "$tree/big.bin"
	expect_exit 0 "$CBIMG" backup --json --no-state --used-only --job "$name" "$img" "$D" || return
	check_eq "$name: incremental seq 1" "$(jout .point.seq)" 1
	check_point "$name incremental" "$img" "$D/$(basename "$(jout .point.index_file)")" "$tree"
}

layout meta_bg "meta_bg" "-t ext4 -b 4096 -O meta_bg,^resize_inode" 96
layout meta_bg_1k "meta_bg" "-t ext4 -b 1024 -O meta_bg,^resize_inode" 48
layout bigalloc "bigalloc" "-t ext4 -b 4096 -C 65536 -O bigalloc" 128
layout bigalloc_meta_bg "bigalloc meta_bg" "-t ext4 -b 4096 -C 32768 -O bigalloc,meta_bg,^resize_inode" 128
expect_exit 0 "$CBIMG" verify "$D"

finish
