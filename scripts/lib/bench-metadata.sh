#!/usr/bin/env bash
# Metadata requests/s: a guest asking vrouter's metadata service (its gateway, port 80) for
# /latest/meta-data/instance-id, beside the same guest setup asking nginx serving the same
# answer from a namespace across a veth, in one run. wrk, 4 connections (the metadata service's
# share for one guest address), keep-alive and `Connection: close`; DURATION s (default 10),
# medians of ROUNDS (default 3). Run as root; namespaces vm<pid>-..., removed on exit.
# Numbers go in notes, never in tests.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/lib/bench-common.sh
need_root "$@"
release_build
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}

id=$$
work=$(mktemp -d /tmp/vrouter-bench-md.XXXXXX)
nsg=vm$id-g nsc=vm$id-c nsn=vm$id-n
pids=()
cleanup() {
    set +e
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
    del_namespaces $nsg $nsc $nsn
    rm -rf "$work"
}
trap cleanup EXIT

# vrouter: guest g (10.6.0.11) on a tap, its metadata served on the gateway 10.6.0.1.
cat >"$work/md.toml" <<TOML
[router]
name = "md$id"
control_socket = "$work/ctl.sock"
state_dir = "$work/state"
busy_poll_us = ${BUSY_POLL_US:-2000}
[[network]]
name = "net"
cidr = "10.6.0.0/24"
gateway = "10.6.0.1"
[[port]]
name = "g"
network = "net"
kind = "tap"
ifname = "vm$id-t"
mac = "52:54:00:96:00:11"
ip = "10.6.0.11"
instance_id = "i-0000bench"
TOML
"$VR" run -c "$work/md.toml" 2>"$work/vrouter.log" &
pids+=($!)
for _ in $(seq 100); do [ -S "$work/ctl.sock" ] && break; sleep 0.05; done
ip netns add "$nsg"
ip link set "vm$id-t" netns "$nsg"
ip -n "$nsg" link set lo up
ip -n "$nsg" addr add 10.6.0.11/24 dev "vm$id-t"
ip -n "$nsg" link set "vm$id-t" up

# nginx: the same answer from a namespace, the client across a veth.
ip netns add "$nsc"
ip netns add "$nsn"
ip -n "$nsc" link add eth0 type veth peer name eth0 netns "$nsn"
for n in $nsc $nsn; do ip -n "$n" link set lo up; ip -n "$n" link set eth0 up; done
ip -n "$nsc" addr add 10.6.1.11/24 dev eth0
ip -n "$nsn" addr add 10.6.1.1/24 dev eth0
mkdir -p "$work/nginx/latest/meta-data"
printf 'i-0000bench' >"$work/nginx/latest/meta-data/instance-id"
cat >"$work/nginx.conf" <<NGINX
worker_processes 1;
daemon off;
user root;
pid $work/nginx.pid;
error_log $work/nginx-error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $work/body;
    proxy_temp_path $work/proxy;
    fastcgi_temp_path $work/fastcgi;
    uwsgi_temp_path $work/uwsgi;
    scgi_temp_path $work/scgi;
    default_type text/plain;
    server { listen 80; root $work/nginx; }
}
NGINX
ip netns exec "$nsn" nginx -e "$work/nginx-error.log" -p "$work" -c "$work/nginx.conf" &
pids+=($!)
sleep 0.5
want=i-0000bench
got=$(ip netns exec "$nsg" curl -s --max-time 3 http://10.6.0.1/latest/meta-data/instance-id || true)
[ "$got" = "$want" ] || { echo "vrouter metadata answered '$got'" >&2; cat "$work/vrouter.log" >&2; exit 1; }
got=$(ip netns exec "$nsc" curl -s --max-time 3 http://10.6.1.1/latest/meta-data/instance-id || true)
[ "$got" = "$want" ] || { echo "nginx answered '$got'" >&2; exit 1; }

rps() { # ns url [extra wrk args] -> requests/s
    local ns=$1 url=$2; shift 2
    ip netns exec "$ns" wrk -t1 -c4 -d "${DURATION}s" "$@" "$url" | awk '/Requests\/sec/ { printf "%.0f\n", $2 }'
}
vk=() nk=() vc=() nc=()
for r in $(seq "$ROUNDS"); do
    echo "round $r/$ROUNDS ..." >&2
    vk+=("$(rps "$nsg" http://10.6.0.1/latest/meta-data/instance-id)")
    nk+=("$(rps "$nsc" http://10.6.1.1/latest/meta-data/instance-id)")
    vc+=("$(rps "$nsg" http://10.6.0.1/latest/meta-data/instance-id -H 'Connection: close')")
    nc+=("$(rps "$nsc" http://10.6.1.1/latest/meta-data/instance-id -H 'Connection: close')")
    echo "   keep-alive vrouter $(last vk) nginx $(last nk)   close vrouter $(last vc) nginx $(last nc) req/s" >&2
done
MEDIAN_FMT=%.0f
a=$(median "${vk[@]}") b=$(median "${nk[@]}") c=$(median "${vc[@]}") d=$(median "${nc[@]}")
echo
echo "metadata requests/s, one guest, wrk -t1 -c4 (median of $ROUNDS rounds, ${DURATION}s each)"
printf '%-28s %10s %10s %8s\n' "" vrouter nginx ratio
printf '%-28s %10s %10s %8s\n' "keep-alive" "$a" "$b" "$(ratio "$a" "$b")"
printf '%-28s %10s %10s %8s\n' "Connection: close" "$c" "$d" "$(ratio "$c" "$d")"
"$VR" ctl -s "$work/ctl.sock" show metadata --json | python3 -c 'import json,sys; print("vrouter counters:", json.load(sys.stdin)["counters"])'
