#!/bin/bash
# tests/s3/rgw.sh - a throw-away Ceph cluster (one monitor, one bluestore
# OSD on a sparse file, no manager) with radosgw serving S3 on 127.0.0.1,
# from Debian 12's packages (`make deps` installs them, DEB_PKGS_S3:
#   apt-get install -y --no-install-recommends ceph-mon ceph-osd radosgw ceph-common curl).
#
#   rgw.sh start DIR [PORT]  start a cluster in DIR (private config DIR/ceph.conf),
#                            write DIR/env (S3_ENDPOINT, AWS_* test keys); exit 77
#                            with "SKIP: ..." when Ceph is not installed
#   rgw.sh stop DIR          stop it: signals only processes whose command line
#                            names DIR/ceph.conf
#   rgw.sh bucket DIR NAME   create a bucket (one per test)
#   rgw.sh restart-rgw DIR   stop and start radosgw only
#   rgw.sh stop-rgw DIR / start-rgw DIR
#   rgw.sh pause-rgw DIR / resume-rgw DIR   SIGSTOP / SIGCONT radosgw (a stalled server)
#
# Traps measured on this machine (issue 18): with auth none, radosgw hangs
# 300 s unless "ms mon client mode = crc" and "ms client mode = crc"; the
# beast frontend needs tcp_nodelay=1 or every GET/LIST stalls ~40 ms; one
# OSD needs pool size 1, "mon allow pool size one" and chooseleaf type 0.
# The OSD is a sparse 16 GiB file: a full OSD (4 GiB filled after several
# test runs and a benchmark on one cluster, measured) blocks every write, and
# radosgw then answers nothing ("Timeout was reached"). A cluster per run
# stores well under 1 GiB.
# Sourced by tests (tests/e2e/t_s3*.sh) or run directly.
set -u

RGW_ACCESS_KEY=${RGW_ACCESS_KEY:-CBIMGTESTACCESSKEY01}
RGW_SECRET_KEY=${RGW_SECRET_KEY:-cbimgTestSecretKey0000000000000000000001}

rgw_have_ceph()
{
	command -v ceph-mon >/dev/null && command -v ceph-osd >/dev/null &&
		command -v radosgw >/dev/null && command -v radosgw-admin >/dev/null
}

# The PIDs of the Ceph daemons whose command line names DIR's config
# ("ceph-mon -c DIR/ceph.conf ...", ceph-osd, radosgw), nothing else.
rgw_pids()
{
	local conf="$1/ceph.conf" f cmd
	for f in $(grep -lsF -- "$conf" /proc/[0-9]*/cmdline); do
		cmd=$( { tr '\0' ' ' <"$f"; } 2>/dev/null) || continue
		case "$cmd" in
		"ceph-mon -c $conf "* | "ceph-osd -c $conf "* | "radosgw -c $conf "*) f=${f#/proc/} && echo "${f%/cmdline}" ;;
		esac
	done
}

rgw_conf()
{
	local dir=$1 port=$2 monport=$3
	cat >"$dir/ceph.conf" <<EOF
[global]
fsid = $(cat "$dir/fsid")
mon host = 127.0.0.1:$monport
mon initial members = a
public network = 127.0.0.0/8
ms bind ipv6 = false
ms bind msgr2 = false
auth cluster required = none
auth service required = none
auth client required = none
ms mon client mode = crc
ms client mode = crc
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon data avail warn = 5
mon data avail crit = 1
osd crush chooseleaf type = 0
osd crush update on start = false
osd class update on start = false
run dir = $dir/run
log file = $dir/log/\$name.log
admin socket = $dir/run/\$name.asok
pid file = $dir/run/\$name.pid
mon data = $dir/mon/\$name
osd data = $dir/osd/\$name
osd objectstore = bluestore
bluestore block create = true
bluestore block size = 17179869184
bluestore fsck on mount = false
osd memory target = 536870912
bluestore cache autotune = false
bluestore cache size = 67108864
[client.rgw.a]
rgw frontends = beast endpoint=127.0.0.1:$port tcp_nodelay=1
rgw data = $dir/rgw
rgw dns name = 127.0.0.1
rgw enable usage log = false
rgw thread pool size = 64
EOF
}

rgw_start_rgw()
{
	local dir=$1
	radosgw -c "$dir/ceph.conf" -n client.rgw.a --keyring=/dev/null >>"$dir/log/rgw.out" 2>&1
	local port=$(cat "$dir/port") i
	for i in $(seq 1 600); do
		curl -s -o /dev/null "http://127.0.0.1:$port/" && return 0
		sleep 0.1
	done
	echo "rgw.sh: radosgw did not answer on port $port (see $dir/log)" >&2
	return 1
}

# stop-rgw: radosgw is killed (SIGKILL: a crash, in the middle of whatever
# it serves), found by its pid file and checked to name our config.
rgw_stop_rgw()
{
	local dir=$1 p
	p=$(cat "$dir/run/client.rgw.a.pid" 2>/dev/null) || return 0
	{ tr '\0' ' ' <"/proc/$p/cmdline"; } 2>/dev/null | grep -q "^radosgw -c $dir/ceph.conf " || return 0
	kill -9 "$p" 2>/dev/null
	while kill -0 "$p" 2>/dev/null; do sleep 0.05; done
	return 0
}

# pause-rgw / resume-rgw: SIGSTOP / SIGCONT to radosgw (a server that stalls:
# connections stay open, nothing is answered), found as stop-rgw finds it.
rgw_signal_rgw()
{
	local dir=$1 sig=$2 p
	p=$(cat "$dir/run/client.rgw.a.pid" 2>/dev/null) || return 1
	{ tr '\0' ' ' <"/proc/$p/cmdline"; } 2>/dev/null | grep -q "^radosgw -c $dir/ceph.conf " || return 1
	kill -"$sig" "$p"
}

rgw_start()
{
	local dir=$1 port=${2:-0} t0=$(date +%s.%N)
	if ! rgw_have_ceph; then
		echo "SKIP: Ceph is not installed (apt-get install -y --no-install-recommends ceph-mon ceph-osd radosgw ceph-common curl; make deps installs them)"
		return 77
	fi
	if ! command -v curl >/dev/null 2>&1; then
		echo "SKIP: curl is not installed (the S3 tests' own client: apt-get install -y curl; make deps installs it)"
		return 77
	fi
	mkdir -p "$dir"/{run,log,mon/mon.a,osd/osd.0,rgw}
	dir=$(cd "$dir" && pwd)
	# free ports: the kernel's choice for rgw, the next one for the monitor
	if [ "$port" = 0 ]; then
		port=$((20000 + RANDOM % 20000))
		while (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null ||
			(exec 3<>/dev/tcp/127.0.0.1/$((port + 1))) 2>/dev/null; do port=$((port + 2)); done
	fi
	echo "$port" >"$dir/port"
	cat /proc/sys/kernel/random/uuid >"$dir/fsid"
	rgw_conf "$dir" "$port" $((port + 1))
	local c="-c $dir/ceph.conf"
	monmaptool --create --clobber --fsid "$(cat "$dir/fsid")" --addv a "[v1:127.0.0.1:$((port + 1))]" \
		"$dir/monmap" >/dev/null || return 1
	ceph-mon $c -i a --mkfs --monmap "$dir/monmap" --keyring=/dev/null >>"$dir/log/setup.out" 2>&1 || return 1
	ceph-mon $c -i a >>"$dir/log/setup.out" 2>&1 || return 1
	local ouuid=$(cat /proc/sys/kernel/random/uuid)
	timeout 60 ceph $c osd create "$ouuid" >/dev/null 2>>"$dir/log/setup.out" || { echo "rgw.sh: the monitor did not come up" >&2; return 1; }
	ceph-osd $c -i 0 --mkfs --no-mon-config --osd-uuid "$ouuid" >>"$dir/log/setup.out" 2>&1 || return 1
	ceph-osd $c -i 0 >>"$dir/log/setup.out" 2>&1 || return 1
	timeout 60 ceph $c osd crush add osd.0 1.0 host=localhost root=default >/dev/null 2>&1
	local i
	for i in $(seq 1 600); do
		ceph $c osd stat 2>/dev/null | grep -q '1 up' && break
		sleep 0.1
	done
	rgw_start_rgw "$dir" || return 1
	timeout 60 radosgw-admin $c user create --uid=cbimg --display-name=cbimg \
		--access-key="$RGW_ACCESS_KEY" --secret-key="$RGW_SECRET_KEY" >/dev/null 2>>"$dir/log/setup.out" || return 1
	cat >"$dir/env" <<EOF
export S3_ENDPOINT=http://127.0.0.1:$port
export AWS_ACCESS_KEY_ID=$RGW_ACCESS_KEY
export AWS_SECRET_ACCESS_KEY=$RGW_SECRET_KEY
export AWS_REGION=default
unset AWS_PROFILE AWS_ENDPOINT_URL AWS_SESSION_TOKEN AWS_CA_BUNDLE
EOF
	# wait until a bucket can be made (pools are created on first use)
	for i in $(seq 1 300); do
		rgw_bucket "$dir" cbimg-probe 2>/dev/null && break
		sleep 0.2
	done
	echo "rgw.sh: S3 on http://127.0.0.1:$port in $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') s" >&2
}

rgw_stop()
{
	local dir=$1 p pids
	[ -f "$dir/ceph.conf" ] || return 0
	dir=$(cd "$dir" && pwd)
	pids=$(rgw_pids "$dir")
	[ -n "$pids" ] && kill $pids 2>/dev/null
	for i in $(seq 1 100); do
		pids=$(rgw_pids "$dir")
		[ -z "$pids" ] && return 0
		sleep 0.1
	done
	kill -9 $pids 2>/dev/null
	return 0
}

# A bucket through the S3 API itself (curl's SigV4), so that the test needs
# nothing but curl.
rgw_bucket()
{
	local dir=$1 name=$2 port
	port=$(cat "$dir/port")
	local code
	code=$(curl -s -o /dev/null -w '%{http_code}' -X PUT --aws-sigv4 "aws:amz:default:s3" \
		--user "$RGW_ACCESS_KEY:$RGW_SECRET_KEY" -H 'x-amz-content-sha256: UNSIGNED-PAYLOAD' \
		"http://127.0.0.1:$port/$name")
	[ "$code" = 200 ] || [ "$code" = 409 ]
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
	cmd=${1:-}
	shift || true
	case "$cmd" in
	start) rgw_start "$@" ;;
	stop) rgw_stop "$@" ;;
	bucket) rgw_bucket "$@" ;;
	stop-rgw) rgw_stop_rgw "$(cd "$1" && pwd)" ;;
	start-rgw) rgw_start_rgw "$(cd "$1" && pwd)" ;;
	pause-rgw) rgw_signal_rgw "$(cd "$1" && pwd)" STOP ;;
	resume-rgw) rgw_signal_rgw "$(cd "$1" && pwd)" CONT ;;
	restart-rgw) d=$(cd "$1" && pwd) && rgw_stop_rgw "$d" && rgw_start_rgw "$d" ;;
	*) echo "usage: rgw.sh start DIR [PORT] | stop DIR | bucket DIR NAME | stop-rgw DIR | start-rgw DIR | restart-rgw DIR | pause-rgw DIR | resume-rgw DIR" >&2
	   exit 2 ;;
	esac
fi
