#!/usr/bin/env bash
# bench/crypto.sh [--size MIB] [--percent P] [--repeat N] [--work DIR]
# What encryption costs: full and incremental backups of the same realistic
# disk (bench/mkdisk.sh, then bench/dayofchanges.sh), plain and encrypted
# (--encrypt) and with --hash sha256, run alternately so that a noisy
# machine disturbs both sides alike. Prints each variant's median wall time
# and CPU time (user + system, which other work on a shared machine
# disturbs less) and their ratios to the plain run of the same phase; the
# issue's target is an encrypted/plain ratio of at most 1.2 for both phases.
# Needs root only to drop the page cache between runs (else reads may be
# cached, and the output says so).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
CBIMG=${CBIMG:-$here/../build/cbimg}
size=2048 percent=3 repeat=3 work=/tmp/cbimg-crypto-bench
while [ $# -gt 0 ]; do
	case $1 in
	--size) size=$2; shift 2 ;;
	--percent) percent=$2; shift 2 ;;
	--repeat) repeat=$2; shift 2 ;;
	--work) work=$2; shift 2 ;;
	*) echo "usage: $0 [--size MIB] [--percent P] [--repeat N] [--work DIR]" >&2; exit 2 ;;
	esac
done
. "$here/lib.sh"
bench_start crypto.sh

disk=$work/disk.img
bash "$here/mkdisk.sh" "$disk" "$size" >/dev/null
cp --sparse=always "$disk" "$work/disk0.img"
bash "$here/dayofchanges.sh" "$work/disk.img" "$percent" 1 >/dev/null
mv "$work/disk.img" "$work/disk1.img"
printf 'bench-passphrase\n' >"$work/pw"

variants="plain encrypted sha256"
opts_plain=""
opts_encrypted="--encrypt --password-file $work/pw"
opts_sha256="--hash sha256"

# run VARIANT PHASE: one timed backup, appended to $work/times
run() {
	local v=$1 ph=$2 opts d=$work/dest-$1
	eval "opts=\$opts_$v"
	if [ "$ph" = full ]; then
		rm -rf "$d" "$work/state-$v"; mkdir -p "$d"
		cp --sparse=always "$work/disk0.img" "$work/src-$v.img"
	else
		cp --sparse=always "$work/disk1.img" "$work/src-$v.img"
	fi
	drop
	local full=""
	[ "$ph" = full ] && full=--full
	# shellcheck disable=SC2086
	/usr/bin/time -f "$v $ph %e %U %S" -a -o "$work/times" \
		"$CBIMG" backup -q --state-dir "$work/state-$v" --job bench $opts $full "$work/src-$v.img" "$d"
}

for i in $(seq "$repeat"); do
	for v in $variants; do run "$v" full; done
	for v in $variants; do run "$v" incremental; done
done

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
echo "cbimg crypto bench, $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs, ${size} MiB disk, ${percent}% day of changes, median of $repeat"
[ "$can_drop" = 1 ] || echo "note: not root: the page cache was not dropped, reads may be cached"
printf '| %-9s | %-11s | %8s | %7s | %8s | %7s | %s |\n' variant phase seconds ratio "CPU s" ratio "all runs (wall)"
printf '|-----------|-------------|---------:|--------:|---------:|--------:|----------|\n'
for ph in full incremental; do
	base=$(awk -v p=$ph '$1=="plain" && $2==p {print $3}' "$work/times" | median)
	cbase=$(awk -v p=$ph '$1=="plain" && $2==p {print $4+$5}' "$work/times" | median)
	for v in $variants; do
		all=$(awk -v p=$ph -v v=$v '$1==v && $2==p {printf "%.2f ", $3}' "$work/times")
		m=$(awk -v p=$ph -v v=$v '$1==v && $2==p {print $3}' "$work/times" | median)
		c=$(awk -v p=$ph -v v=$v '$1==v && $2==p {print $4+$5}' "$work/times" | median)
		printf '| %-9s | %-11s | %8.2f | %7.2f | %8.2f | %7.2f | %s|\n' "$v" "$ph" "$m" \
			"$(echo "$m / $base" | bc -l)" "$c" "$(echo "$c / $cbase" | bc -l)" "$all"
	done
done
for v in $variants; do
	printf '%s: %s bytes in DEST\n' "$v" "$(du -sb "$work/dest-$v" | cut -f1)"
done
