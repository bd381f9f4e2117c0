#!/usr/bin/env bash
# Layer-4 load balancing, vrouter side by side with haproxy (the CloudStack VR's load balancer), in
# front of the same three backends, in one run:
#   backends: namespaces vb<pid>-b1..b3, each one nginx worker on :8080 answering "bN <client address>"
#             (and /health -> 200); b1 also runs an iperf3 server on :5201. Each backend namespace
#             holds both NICs: the vrouter tap (10.1.1.1N/24, default route via vrouter's 10.1.1.1)
#             and a veth to haproxy's guest bridge (10.1.1.1N/32, route to haproxy's 10.1.1.2/32),
#             so both load balancers reach the very same server processes.
#   haproxy: client ns (203.0.113.1/24) <-veth-> router ns (VIP 203.0.113.10/24, ip_forward on,
#            br0 10.1.1.2/24 with a veth to each backend); haproxy mode tcp, balance roundrobin,
#            tcp health checks every 2 s; a second listener VIP:5201 -> 10.1.1.11:5201 (iperf3).
#   vrouter: network "web" 10.1.1.0/24 with the backends on taps, [public] tap in its own client
#            ns (203.0.113.1/24), [[load_balancer]] web-lb VIP:80 -> the three :8080 and iperf
#            VIP:5201 -> 10.1.1.11:5201. Backends see the client's real address.
# Measures, alternating ROUNDS rounds (default 3) of DURATION s (default 10), medians:
#   new connections/s: wrk -t1 -c32 -H 'Connection: close' http://203.0.113.10/ (plus errors);
#   iperf3 single-stream TCP throughput through the VIP.
# Prints vrouter, haproxy and vrouter/haproxy (goals: >= 2x the connection rate, >= 1.5x throughput).
# BENCH_ONLY=kernel runs only haproxy, BENCH_ONLY=vrouter only vrouter (as in scripts/bench.sh).
# The vrouter half is skipped, with a message, when $VR does not exist or says load balancing is
# not built yet. HAPROXY_THREADS (default 1) sets haproxy's nbthread.
# Called by scripts/bench.sh with VR (the vrouter binary) set; also runs on its own as root:
#   DURATION=3 ROUNDS=1 bash scripts/lib/bench-lb.sh
# Everything lives in namespaces named vb<pid>-..., removed on exit; nothing touches the root namespace.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ "$(id -u)" = 0 ] || { echo "scripts/lib/bench-lb.sh needs root" >&2; exit 1; }
VR=${VR:-$PWD/target/release/vrouter}
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
# One thread: vrouter forwards on one datapath thread, a CloudStack VR usually has one vCPU, and on
# a small shared machine a second haproxy thread only competes with wrk and the backends.
HAPROXY_THREADS=${HAPROXY_THREADS:-1}
source scripts/lib/bench-common.sh
for c in haproxy nginx wrk iperf3 python3; do
    command -v "$c" >/dev/null || { echo "bench-lb: $c is missing (run scripts/deps.sh)" >&2; exit 1; }
done

id=$$
VIP=203.0.113.10 CLIENT=203.0.113.1 HAP_SRC=10.1.1.2
work=$(mktemp -d /tmp/vrouter-bench-lb.XXXXXX)
# Backends; haproxy's client and router; vrouter's client (holds the [public] tap).
nsb1=vb$id-b1 nsb2=vb$id-b2 nsb3=vb$id-b3 nshc=vb$id-hc nshr=vb$id-hr nsvc=vb$id-vc
all_ns="$nsb1 $nsb2 $nsb3 $nshc $nshr $nsvc"
pids=() vr_pid=""
cleanup() {
    set +e
    local p
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
    [ -n "$vr_pid" ] && kill "$vr_pid" 2>/dev/null && wait "$vr_pid" 2>/dev/null
    del_namespaces $all_ns
    rm -rf "$work"
}
trap cleanup EXIT

# ---- vrouter: present, and with load balancing built? ----
vr_skip=""
write_vrouter_config() {
    local i
    {
        echo "[router]"
        echo "name = \"blb$id\""
        echo "busy_poll_us = ${BUSY_POLL_US:-2000}"
        echo "state_dir = \"$work/state\""
        echo "control_socket = \"$work/ctl.sock\""
        echo "[[network]]"
        echo "name = \"web\""
        echo "cidr = \"10.1.1.0/24\""
        echo "gateway = \"10.1.1.1\""
        for i in 1 2 3; do
            printf '[[port]]\nname = "b%s"\nnetwork = "web"\nkind = "tap"\nifname = "vb%s-t%s"\nmac = "52:54:00:10:01:1%s"\nip = "10.1.1.1%s"\n' \
                "$i" "$id" "$i" "$i" "$i"
        done
        echo "[public]"
        echo "kind = \"tap\""
        echo "ifname = \"vb$id-pub\""
        echo "ips = [\"$VIP/24\"]"
        echo "gateway = \"$CLIENT\""
        echo "[[load_balancer]]"
        echo "name = \"web-lb\""
        echo "public_ip = \"$VIP\""
        echo "protocol = \"tcp\""
        echo "port = 80"
        echo "algorithm = \"roundrobin\""
        echo "backends = [{ ip = \"10.1.1.11\", port = 8080 }, { ip = \"10.1.1.12\", port = 8080 }, { ip = \"10.1.1.13\", port = 8080 }]"
        echo "health_check = { kind = \"tcp\", interval_ms = 2000, timeout_ms = 1000, rise = 2, fall = 3 }"
        # No health check here (nor on haproxy's iperf listener): a probe would be taken by
        # iperf3 for a test client.
        echo "[[load_balancer]]"
        echo "name = \"iperf\""
        echo "public_ip = \"$VIP\""
        echo "protocol = \"tcp\""
        echo "port = 5201"
        echo "algorithm = \"roundrobin\""
        echo "backends = [{ ip = \"10.1.1.11\", port = 5201 }]"
    } >"$work/lb.toml"
}
if [ "$run_vr" = 1 ]; then
    if [ ! -x "$VR" ]; then
        vr_skip="no vrouter binary at $VR"
    else
        write_vrouter_config
        if ! chk=$("$VR" check -c "$work/lb.toml" 2>&1); then
            echo "bench-lb: vrouter check rejects the benchmark config:" >&2; echo "$chk" >&2; exit 1
        fi
        if grep -q "not built in this version: load balancing" <<<"$chk"; then
            vr_skip="this vrouter does not implement [[load_balancer]] yet"
        fi
    fi
    if [ -n "$vr_skip" ]; then
        echo "bench-lb: skipping the vrouter half: $vr_skip" >&2
        run_vr=0
    fi
fi
if [ "$run_vr" = 0 ] && [ "$run_k" = 0 ]; then
    echo "bench-lb: nothing to run" >&2; exit 0
fi

# ---- backends: one nginx worker each on :8080, iperf3 on b1:5201 ----
backend_ns() { # N -> namespace of backend N
    local v=nsb$1; echo "${!v}"
}
start_nginx() { # N
    local d=$work/nginx-b$1
    mkdir -p "$d"
    cat >"$d/nginx.conf" <<NGINX
worker_processes 1;
daemon off;
user root;
pid $d/nginx.pid;
error_log $d/error.log warn;
worker_rlimit_nofile 16384;
events { worker_connections 8192; }
http {
    access_log off;
    client_body_temp_path $d/body;
    proxy_temp_path $d/proxy;
    fastcgi_temp_path $d/fastcgi;
    uwsgi_temp_path $d/uwsgi;
    scgi_temp_path $d/scgi;
    default_type text/plain;
    server {
        listen 8080 backlog=4096;
        location = /health { return 200 "ok\n"; }
        location / { return 200 "b$1 \$remote_addr\n"; }
    }
}
NGINX
    ip netns exec "$(backend_ns "$1")" nginx -e "$d/error.log" -p "$d" -c "$d/nginx.conf" &
    pids+=($!)
}
for i in 1 2 3; do
    ns=$(backend_ns $i)
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    start_nginx $i
done
ip netns exec "$nsb1" iperf3 -s -p 5201 >/dev/null 2>&1 &
pids+=($!)

# ---- haproxy: client <-veth-> router (VIP; br0 on the guest side) <-veth-> each backend ----
setup_haproxy() {
    local i ns
    ip netns add "$nshc"
    ip netns add "$nshr"
    ip -n "$nshr" link add pub type veth peer name eth0 netns "$nshc"
    ip -n "$nshr" link add br0 type bridge
    ip -n "$nshr" link set lo up
    ip -n "$nshr" addr add "$VIP/24" dev pub
    ip -n "$nshr" addr add "$HAP_SRC/24" dev br0
    ip -n "$nshr" link set pub up
    ip -n "$nshr" link set br0 up
    ip netns exec "$nshr" sysctl -qw net.ipv4.ip_forward=1
    ip netns exec "$nshr" sysctl -qw net.ipv4.ip_local_port_range="1024 65535"
    for i in 1 2 3; do
        ns=$(backend_ns $i)
        ip -n "$nshr" link add "b$i" type veth peer name hk netns "$ns"
        ip -n "$nshr" link set "b$i" master br0 up
        # The same address as on the vrouter tap, as a /32: the /24 (and the default route)
        # belong to vrouter's side, haproxy's side is reached through its one host route.
        ip -n "$ns" addr add "10.1.1.1$i/32" dev hk
        ip -n "$ns" link set hk up
        ip -n "$ns" route add "$HAP_SRC/32" dev hk
    done
    ip -n "$nshc" link set lo up
    ip -n "$nshc" addr add "$CLIENT/24" dev eth0
    ip -n "$nshc" link set eth0 up
    ip netns exec "$nshc" sysctl -qw net.ipv4.ip_local_port_range="1024 65535"
    # maxconn 4096 and the timeouts follow the CloudStack VR's haproxy.cfg; the client/server
    # timeouts must outlast iperf3's idle control connection.
    cat >"$work/haproxy.cfg" <<HAP
global
    maxconn 4096
    nbthread $HAPROXY_THREADS
defaults
    mode tcp
    retries 3
    option redispatch
    timeout connect 5s
    timeout client 10m
    timeout server 10m
    timeout check 1s
listen web-lb
    bind $VIP:80
    maxconn 4096
    balance roundrobin
    server b1 10.1.1.11:8080 check inter 2000 rise 2 fall 3
    server b2 10.1.1.12:8080 check inter 2000 rise 2 fall 3
    server b3 10.1.1.13:8080 check inter 2000 rise 2 fall 3
listen iperf
    bind $VIP:5201
    server b1 10.1.1.11:5201
HAP
    ip netns exec "$nshr" haproxy -db -f "$work/haproxy.cfg" >"$work/haproxy.log" 2>&1 &
    pids+=($!)
}

# ---- vrouter: the backends' taps on network "web", the [public] tap in its client namespace ----
setup_vrouter() {
    local i ns tap
    "$VR" run -c "$work/lb.toml" 2>"$work/vrouter.log" &
    vr_pid=$!
    for _ in $(seq 100); do [ -S "$work/ctl.sock" ] && break; sleep 0.05; done
    [ -S "$work/ctl.sock" ] || { echo "vrouter did not open its control socket:" >&2; cat "$work/vrouter.log" >&2; exit 1; }
    for i in 1 2 3; do
        ns=$(backend_ns $i) tap=vb$id-t$i
        ip link set "$tap" netns "$ns"
        ip -n "$ns" link set "$tap" address "52:54:00:10:01:1$i"
        ip -n "$ns" addr add "10.1.1.1$i/24" dev "$tap"
        ip -n "$ns" link set "$tap" up
        ip -n "$ns" route add default via 10.1.1.1
    done
    ip netns add "$nsvc"
    ip link set "vb$id-pub" netns "$nsvc"
    ip -n "$nsvc" link set lo up
    ip -n "$nsvc" addr add "$CLIENT/24" dev "vb$id-pub"
    ip -n "$nsvc" link set "vb$id-pub" up
    ip netns exec "$nsvc" sysctl -qw net.ipv4.ip_local_port_range="1024 65535"
}

[ "$run_k" = 1 ] && setup_haproxy
[ "$run_vr" = 1 ] && setup_vrouter

# Waits (health checks need a few seconds) until six consecutive requests through the VIP reach
# all three backends; prints the backends in answer order and the client address they saw.
cat >"$work/probe.py" <<'PY'
import http.client, sys, time
vip, deadline, seen = sys.argv[1], time.time() + 20, []
while time.time() < deadline:
    try:
        c = http.client.HTTPConnection(vip, 80, timeout=1)
        c.request("GET", "/", headers={"Connection": "close"})
        seen.append(c.getresponse().read().decode().split())
        c.close()
    except (OSError, http.client.HTTPException):
        seen.append(["-", "-"])
        time.sleep(0.2)
    last = seen[-6:]
    if len(last) == 6 and {b[0] for b in last} == {"b1", "b2", "b3"}:
        print(" ".join(b[0] for b in last), "| backends saw the client as", " ".join(sorted({b[1] for b in last})))
        sys.exit(0)
print("not all backends answered within 20 s; last answers:", " ".join(b[0] for b in seen[-6:]))
sys.exit(1)
PY
probe() { # client-ns label log...
    local ns=$1 what=$2 out; shift 2
    if out=$(ip netns exec "$ns" python3 "$work/probe.py" "$VIP"); then
        echo "$what: $out" >&2; return 0
    fi
    echo "$what: $out" >&2
    local f; for f in "$@"; do echo "--- $f" >&2; tail -20 "$f" >&2; done
    return 1
}
[ "$run_vr" = 1 ] && probe "$nsvc" "vrouter" "$work/vrouter.log"
[ "$run_k" = 1 ] && probe "$nshc" "haproxy" "$work/haproxy.log"

conns() { # client-ns -> "requests/s errors" of one wrk run (errors: socket errors + non-2xx/3xx)
    local out
    out=$(ip netns exec "$1" wrk -t1 -c32 -d"${DURATION}s" -H 'Connection: close' "http://$VIP/") ||
        { echo "wrk through $1 failed" >&2; return 1; }
    awk '/^Requests\/sec:/ {r = $2}
         /Socket errors:/ {gsub(",", ""); e += $4 + $6 + $8 + $10}
         /Non-2xx or 3xx responses:/ {e += $5}
         END {if (r == "") exit 1; printf "%.0f %d\n", r, e}' <<<"$out"
}
tput() { # client-ns -> Gbit/s of one iperf3 run through the VIP
    local out
    if ! out=$(ip netns exec "$1" iperf3 -c "$VIP" --connect-timeout 5000 -t "$DURATION" -J); then
        echo "iperf3 through $1 failed" >&2; return 1
    fi
    python3 -c 'import json,sys; print("%.2f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9))' <<<"$out"
}

# This machine is shared and noisy: alternate the two load balancers ROUNDS times, compare medians.
vcs=() kcs=() vgs=() kgs=()
verr=0 kerr=0
for r in $(seq "$ROUNDS"); do
    if [ "$run_vr" = 1 ]; then
        echo "LB round $r/$ROUNDS: vrouter ..." >&2
        ce=$(conns "$nsvc"); read -r c e <<<"$ce"; vcs+=("$c"); verr=$((verr + e))
        g=$(tput "$nsvc"); vgs+=("$g")
    fi
    if [ "$run_k" = 1 ]; then
        echo "LB round $r/$ROUNDS: haproxy ..." >&2
        ce=$(conns "$nshc"); read -r c e <<<"$ce"; kcs+=("$c"); kerr=$((kerr + e))
        g=$(tput "$nshc"); kgs+=("$g")
    fi
    echo "   vrouter $(last vcs) conn/s $(last vgs) Gbit/s   haproxy $(last kcs) conn/s $(last kgs) Gbit/s" >&2
done
vc=$(median ${vcs[@]+"${vcs[@]}"}) kc=$(median ${kcs[@]+"${kcs[@]}"})
vg=$(median ${vgs[@]+"${vgs[@]}"}) kg=$(median ${kgs[@]+"${kgs[@]}"})
[ "$run_vr" = 1 ] || verr=-
[ "$run_k" = 1 ] || kerr=-
if [ "$run_vr" = 1 ]; then
    echo "vrouter load balancers after the runs:" >&2
    "$VR" ctl -s "$work/ctl.sock" show lb 2>&1 | sed 's/^/   /' >&2 || true
fi

printf '\n%-34s %12s %12s %8s\n' "load balancer, 3 backends" "vrouter" "haproxy" "ratio"
printf '%-34s %12s %12s %8s\n' "new connections (requests/s)" "$vc" "$kc" "$(ratio "$vc" "$kc")"
printf '%-34s %12s %12s %8s\n' "  errors (socket + non-2xx, total)" "$verr" "$kerr" ""
printf '%-34s %12s %12s %8s\n' "iperf3 TCP 1 stream (Gbit/s)" "$vg" "$kg" "$(ratio "$vg" "$kg")"
echo "(medians of $ROUNDS alternating rounds of ${DURATION}s; wrk -t1 -c32 with Connection: close,"
echo " one request per connection; haproxy $(haproxy -v | awk 'NR==1 {print $3}') mode tcp, nbthread $HAPROXY_THREADS;"
echo " ratio = vrouter/haproxy, goals >= 2.00 for connections and >= 1.50 for throughput${vr_skip:+; vrouter skipped: $vr_skip})"
