#!/usr/bin/env bash
# bench/s3.sh [--size MIB] [--repeat N] [--work DIR]
# Backup to S3 (a Ceph RADOS Gateway over loopback, tests/s3/rgw.sh) against
# backup to a local directory, and against the gateway's own ceilings
# measured in the same run with curl (PUT and GET of the same bytes as the
# full's image, in CBIMG_S3_JOBS (4) parallel streams, as cbimg uses).
# Phases, alternated run by run so that a noisy machine disturbs all alike:
#   full     backup --full of a realistic disk (bench/mkdisk.sh) to a dir / to S3
#   incr     an incremental after a day of changes (bench/dayofchanges.sh):
#            bytes sent against bytes stored (image + index)
#   restore  the newest point from the dir / from S3
# Prints medians and the ratios the issue asks for, then the CPU of every
# phase (user + sys): the timed command's own (cbimg, or the ceiling's
# curls: this shell's children, bash's `times`) and the Ceph daemons'
# (radosgw, ceph-osd, ceph-mon: /proc/PID/stat before and after), their sum
# over the cores (no run can be faster than that) and whether the full's
# and the restore's targets lie below it. CBIMG_S3_RGW_DIR=DIR reuses a
# running cluster (tests/s3/rgw.sh start DIR).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
CBIMG=${CBIMG:-$here/../build/cbimg}
RGW=$here/../tests/s3/rgw.sh
size=1024 repeat=3 work=/tmp/cbimg-s3-bench
while [ $# -gt 0 ]; do
	case $1 in
	--size) size=$2; shift 2 ;;
	--repeat) repeat=$2; shift 2 ;;
	--work) work=$2; shift 2 ;;
	*) echo "usage: $0 [--size MIB] [--repeat N] [--work DIR]" >&2; exit 2 ;;
	esac
done
. "$here/lib.sh"
bench_start s3.sh
rgw_up
jobs=${CBIMG_S3_JOBS:-4}
bkt=bench-$(date +%s)
bash "$RGW" bucket "$rdir" "$bkt"

disk=$work/disk.img
bash "$here/mkdisk.sh" "$disk" "$size" >/dev/null
cstats=$(ceph_stats)
tck=$(getconf CLK_TCK) cores=$(nproc)
# phase_start / phase_end NAME around a timed command: its wall time goes
# to t.NAME; to c.NAME a line "client radosgw osd mon" in CPU seconds. The
# client is what this shell's children used in between (bash's `times`,
# taken in this shell: the command and its reaped descendants, nothing
# else is started in between); the daemons' window is a few ms wider.
# A fifth column: the whole machine's busy CPU seconds (/proc/stat: user,
# nice, system, irq, softirq, steal), kernel threads and softirq work (the
# loopback's TCP) included, which the processes' own accounting misses.
machine_ticks() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9 }' /proc/stat; }
phase_start() { g0=$(ceph_ticks "$cstats"); m0=$(machine_ticks); t=$(now); times >"$work/cpu.0"; }
phase_end() {
	times >"$work/cpu.1"
	since "$t" >>"$work/t.$1"
	awk -v tck="$tck" -v g0="$g0" -v g1="$(ceph_ticks "$cstats")" -v m0="$m0" -v m1="$(machine_ticks)" '
		function sec(x, a) { gsub(",", ".", x); split(x, a, "m"); sub("s$", "", a[2]); return a[1] * 60 + a[2] }
		FNR == 2 { c[++n] = sec($1) + sec($2) }
		END { split(g0, a); split(g1, b)
			printf "%.3f %.3f %.3f %.3f %.3f\n", c[2] - c[1], (b[1] - a[1]) / tck, (b[2] - a[2]) / tck, (b[3] - a[3]) / tck,
				(m1 - m0) / tck }
	' "$work/cpu.0" "$work/cpu.1" >>"$work/c.$1"
}
# what the daemons use when nothing is asked of them
g0=$(ceph_ticks "$cstats"); sleep 2
idle=$(awk -v tck="$tck" -v g0="$g0" -v g1="$(ceph_ticks "$cstats")" \
	'BEGIN { split(g0, a); split(g1, b); printf "%.3f", (b[1] + b[2] + b[3] - a[1] - a[2] - a[3]) / tck / 2 }')

phases="full.dir full.s3 put get incr.dir incr.s3 rest.dir rest.s3 rest.mem"
# rest.mem: the same restore from S3 into memory (a file on /dev/shm): the
# fetch, checks and decompression without the durable write of the disk,
# which the GET ceiling (curl into the page cache, no sync) does not do
# either. Skipped when /dev/shm lacks room for the disk.
memdir=
if [ -d /dev/shm ] && [ "$(df -Pk /dev/shm | awk 'NR == 2 { print $4 }')" -gt $((size * 1024 * 2)) ]; then
	memdir=$(mktemp -d /dev/shm/cbimg-s3-bench.XXXXXX)
	prev=$(trap -p EXIT | awk -F"'" '{ print $2 }') # lib.sh's (no single quotes in it)
	# shellcheck disable=SC2064 # memdir now, the rest at exit
	trap "rm -rf --one-file-system '$memdir'; $prev" EXIT
fi
for ph in $phases; do : >"$work/t.$ph"; : >"$work/c.$ph"; done
for r in $(seq 1 "$repeat"); do
	cp --sparse=always "$disk" "$work/d.img"
	rm -rf "$work/dir" "$work/state-dir" "$work/state-s3"
	mkdir -p "$work/dir"
	drop
	phase_start; "$CBIMG" backup -q --state-dir "$work/state-dir" "$work/d.img" "$work/dir"; phase_end full.dir
	drop
	phase_start; "$CBIMG" backup -q --json --state-dir "$work/state-s3" "$work/d.img" "s3://$bkt/r$r" >"$work/full.json"
	phase_end full.s3
	# the ceiling: the full's image bytes in $jobs parallel PUTs, then GETs
	img=$(ls "$work"/dir/*.cbi)
	split -n "$jobs" -d "$img" "$work/part."
	drop
	phase_start
	for p in "$work"/part.*; do s3curl -T "$p" "$S3_ENDPOINT/$bkt/ceil$r/$(basename "$p")" -o /dev/null & done
	wait
	phase_end put
	phase_start
	for p in "$work"/part.*; do s3curl "$S3_ENDPOINT/$bkt/ceil$r/$(basename "$p")" -o "$p.back" & done
	wait
	phase_end get
	imgbytes=$(stat -c %s "$img")
	rm -f "$work"/part.*
	# an incremental after a day of changes
	bash "$here/dayofchanges.sh" "$work/d.img" 3 "$r" >/dev/null 2>&1
	drop
	phase_start; "$CBIMG" backup -q --json --state-dir "$work/state-dir" "$work/d.img" "$work/dir" >"$work/incr.dir.json"
	phase_end incr.dir
	drop
	phase_start; "$CBIMG" backup -q --json --state-dir "$work/state-s3" "$work/d.img" "s3://$bkt/r$r" >"$work/incr.json"
	phase_end incr.s3
	rm -f "$work/out.img"
	drop
	phase_start; "$CBIMG" restore -q "$work/dir" latest "$work/out.img"; phase_end rest.dir
	rm -f "$work/out.img"
	drop
	phase_start; "$CBIMG" restore -q --state-dir "$work/state-s3" "s3://$bkt/r$r" latest "$work/out.img"
	phase_end rest.s3
	if [ -n "$memdir" ]; then
		rm -f "$memdir/out.img"
		drop
		phase_start; "$CBIMG" restore -q --state-dir "$work/state-s3" "s3://$bkt/r$r" latest "$memdir/out.img"
		phase_end rest.mem
		cmp -s "$memdir/out.img" "$work/d.img" || { echo "s3.sh: the restore from S3 into memory differs" >&2; exit 1; }
		rm -f "$memdir/out.img"
	fi
	cmp -s "$work/out.img" "$work/d.img" || { echo "s3.sh: the restore from S3 differs" >&2; exit 1; }
	rm -f "$work/out.img"
done
fd=$(median <"$work/t.full.dir") fs=$(median <"$work/t.full.s3") put=$(median <"$work/t.put")
id=$(median <"$work/t.incr.dir") is=$(median <"$work/t.incr.s3")
rd=$(median <"$work/t.rest.dir") rs=$(median <"$work/t.rest.s3") get=$(median <"$work/t.get")
sent=$(jq -r .bytes_sent "$work/incr.json")
stored=$(jq -r '.point.stored_bytes + .point.index_bytes' "$work/incr.json")
echo "S3 benchmark: ${size} MiB disk (mkdisk.sh), full image $(mib "$imgbytes") MiB, $repeat runs, medians (s)"
echo "radosgw on 127.0.0.1 (Ceph $(ceph --version | awk '{print $3}')), $jobs parallel streams, part ${CBIMG_S3_PART_MIB:-16} MiB"
printf '%-34s %8s %8s %8s\n' phase dir S3 ceiling
printf '%-34s %8.2f %8.2f %8.2f\n' "full backup" "$fd" "$fs" "$put"
printf '%-34s %8.2f %8.2f %8s\n' "incremental (3% day)" "$id" "$is" "-"
printf '%-34s %8.2f %8.2f %8.2f\n' "restore newest" "$rd" "$rs" "$get"
echo "full to S3 / full to dir:        $(ratio "$fs" "$fd")  (target 1.3)"
echo "full to S3 / PUT of its image:   $(ratio "$fs" "$put")  (target 1.2)"
echo "restore from S3 / GET of image:  $(ratio "$rs" "$get")  (target 1.3)"
echo "restore from S3 / from dir:      $(ratio "$rs" "$rd")"
[ -n "$memdir" ] && echo "restore from S3 into memory / GET of image: $(ratio "$(median <"$work/t.rest.mem")" "$get")  (the disk's durable write left out, as the ceiling leaves it out)"
echo "incremental to S3 / to dir:      $(ratio "$is" "$id")"
echo "incremental: sent $sent bytes for $stored stored (image + index): $(ratio "$sent" "$stored")"
# the pairs behind the full's median (a loaded machine shows in their spread)
echo "full backup per run (dir, S3, S3/dir):"
paste "$work/t.full.dir" "$work/t.full.s3" | awk '{ printf "  %.2f %.2f %.2f\n", $1, $2, $2 / $1 }'

# CPU per phase: each column the median of its own over the runs (Ceph and
# total: of the runs' sums, so with several runs the columns need not add
# up); bound = total / cores, the shortest wall time in which
# that much CPU fits on this machine (kernel threads, e.g. loopback softirq
# work or writeback, are not counted, so the real bound is higher).
cpurow() { # NAME LABEL
	local -a col
	local k
	for k in 1 2 3 4; do col[$k]=$(awk -v k="$k" '{ print $k }' "$work/c.$1" | median); done
	tot=$(awk '{ print $1 + $2 + $3 + $4 }' "$work/c.$1" | median)
	mach=$(awk '{ print $5 }' "$work/c.$1" | median)
	printf '%-20s %6.2f %7.2f %8.2f %6.2f %6.2f %6.2f %6.2f %6.2f %8.2f %6.2f\n' "$2" "$(median <"$work/t.$1")" \
		"${col[1]}" "${col[2]}" "${col[3]}" "${col[4]}" "$(awk '{ print $2 + $3 + $4 }' "$work/c.$1" | median)" \
		"$tot" "$(awk -v a="$tot" -v n="$cores" 'BEGIN { print a / n }')" \
		"$mach" "$(awk -v a="$mach" -v n="$cores" 'BEGIN { print a / n }')"
}
echo
echo "CPU seconds (user + sys) per phase, medians; client = the timed command (cbimg, or the ceiling's curls),"
echo "Ceph = radosgw + ceph-osd + ceph-mon meanwhile; bound = total / $cores cores: no faster with this much CPU"
echo "machine = the whole machine's busy CPU meanwhile (/proc/stat: kernel threads and softirq too); mbound = machine / $cores"
printf '%-20s %6s %7s %8s %6s %6s %6s %6s %6s %8s %6s\n' phase wall client radosgw osd mon Ceph total bound machine mbound
cpurow full.dir "full to dir"
cpurow full.s3 "full to S3"
cpurow put "PUT ceiling"
cpurow get "GET ceiling"
cpurow incr.dir "incremental to dir"
cpurow incr.s3 "incremental to S3"
cpurow rest.dir "restore from dir"
cpurow rest.s3 "restore from S3"
[ -n "$memdir" ] && cpurow rest.mem "restore S3 to memory"
echo "Ceph when idle: $idle cores (2 s before the runs)"
# verdict PHASE WALL TARGET WHAT HOW: is the target below the CPU bound?
verdict() {
	local tot bound mach mbound
	tot=$(awk '{ print $1 + $2 + $3 + $4 }' "$work/c.$1" | median)
	bound=$(awk -v a="$tot" -v n="$cores" 'BEGIN { printf "%.4f", a / n }')
	mach=$(awk '{ print $5 }' "$work/c.$1" | median)
	mbound=$(awk -v a="$mach" -v n="$cores" 'BEGIN { printf "%.4f", a / n }')
	printf '%s: target %.2f s (%s), took %.2f s; CPU bound %.2f s (processes: %.2f CPU s / %d cores), %.2f s (the machine: %.2f CPU s): ' \
		"$4" "$3" "$5" "$2" "$bound" "$tot" "$cores" "$mbound" "$mach"
	if awk -v t="$3" -v b="$bound" 'BEGIN { exit !(t < b) }'; then
		echo "the target is below the processes' bound, so it cannot be met on this machine with the CPU measured here."
	elif awk -v t="$3" -v b="$mbound" 'BEGIN { exit !(t < b) }'; then
		echo "the target is below the machine's bound: with the kernel's own work (loopback TCP, write-back) it cannot be met here."
	else
		echo "the target is above both bounds: CPU alone does not rule it out."
	fi
}
tfull=$(awk -v d="$fd" -v p="$put" 'BEGIN { a = 1.3 * d; b = 1.2 * p; printf "%.3f", (a > b ? a : b) }')
verdict full.s3 "$fs" "$tfull" "full backup to S3" "the slower of 1.3 x dir $fd s and 1.2 x PUT $put s"
verdict rest.s3 "$rs" "$(awk -v g="$get" 'BEGIN { printf "%.3f", 1.3 * g }')" "restore from S3" "1.3 x GET $get s"
