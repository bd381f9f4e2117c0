#!/usr/bin/env bash
# DHCP and DNS, vrouter side by side with dnsmasq serving the same kind of network, in one run:
#   DNS: dnsperf from a client namespace, queries per second for local names (authoritative)
#        and for forwarded names answered from the cache (an upstream on loopback answers once).
#   DHCP: scripts/lib/dhcp-load.py (raw frames, one MAC per client, 64 handshakes in flight)
#        completes DISCOVER/OFFER/REQUEST/ACK for CLIENTS clients; leases per second. vrouter's
#        leases are durable (fsync before each ACK batch); dnsmasq rewrites its lease file
#        without fsync, and runs with --no-ping (its default ping check before each offer would
#        make it far slower).
# Called by scripts/bench.sh with VR (the vrouter binary) set; also runs on its own as root.
set -euo pipefail
cd "$(dirname "$0")/../.."
VR=${VR:-$PWD/target/release/vrouter}
DNS_SECS=${DNS_SECS:-5}
CLIENTS=${CLIENTS:-2000}
id=$$
work=$(mktemp -d /tmp/vrouter-bench-svc.XXXXXX)
nsv=vs$id-v nsc=vs$id-c nsd=vs$id-d nsk=vs$id-k
pids=()
cleanup() {
    set +e
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
    for n in $nsv $nsc $nsd $nsk; do
        for p in $(ip netns pids "$n" 2>/dev/null); do kill "$p" 2>/dev/null; done
        ip netns del "$n" 2>/dev/null
    done
    rm -rf "$work"
}
trap cleanup EXIT

# An upstream DNS server that answers every A question (TTL 3600), for forwarded names.
cat >"$work/upstream.py" <<'PY'
import socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(('127.0.0.1', int(sys.argv[1])))
while True:
    q, a = s.recvfrom(4096)
    i = 12
    while q[i] != 0:
        i += q[i] + 1
    ans = b'\xc0\x0c' + struct.pack('>HHIH', 1, 1, 3600, 4) + bytes([192, 0, 2, 77])
    s.sendto(q[:2] + struct.pack('>HHHHH', 0x8180, 1, 1, 0, 0) + q[12:i + 5] + ans, a)
PY
UP=$((20000 + id % 20000))
for n in 0 1 2 3 4 5 6 7; do echo "host$n.bench.internal A"; done >"$work/local.txt"
for n in 0 1 2 3 4 5 6 7; do echo "www$n.example.com A"; done >"$work/cached.txt"

# ---- vrouter: a network with DHCP (a /16 pool) and DNS; the client is a namespace on a tap
# trunk-less access port for DNS, and on a tap trunk for the DHCP generator (one MAC per guest).
{
    echo "[router]"
    echo "name = \"bsvc$id\""
    echo "control_socket = \"$work/ctl.sock\""
    echo "state_dir = \"$work/state\""
    echo "mac_table_size = 65536"
    echo "[[network]]"
    echo "name = \"svc\""
    echo "cidr = \"10.7.0.0/16\""
    echo "gateway = \"10.7.0.1\""
    echo "vlan = 7"
    echo "dhcp_range = [\"10.7.1.0\", \"10.7.250.0\"]"
    echo "domain = \"bench.internal\""
    echo "[[port]]"
    echo "name = \"c\""
    echo "network = \"svc\""
    echo "kind = \"tap\""
    echo "ifname = \"vs$id-c\""
    echo "mac = \"52:54:00:77:00:02\""
    echo "ip = \"10.7.0.2\""
    for n in 0 1 2 3 4 5 6 7; do
        printf '[[port]]\nname = "h%s"\nnetwork = "svc"\nkind = "tap"\nifname = "vs%s-h%s"\nmac = "52:54:00:77:01:%02x"\nip = "10.7.0.%s"\nhostname = "host%s"\n' "$n" "$id" "$n" "$n" $((10 + n)) "$n"
    done
    echo "[[uplink]]"
    echo "name = \"trunk\""
    echo "kind = \"tap\""
    echo "ifname = \"vs$id-t\""
    echo "networks = [\"svc\"]"
    echo "[dns]"
    echo "upstreams = [\"127.0.0.1:$UP\"]"
    echo "cache_entries = 10000"
} >"$work/svc.toml"
python3 "$work/upstream.py" "$UP" & pids+=($!)
"$VR" run -c "$work/svc.toml" 2>"$work/vrouter.log" & pids+=($!)
for _ in $(seq 200); do [ -S "$work/ctl.sock" ] && break; sleep 0.05; done
[ -S "$work/ctl.sock" ] || { cat "$work/vrouter.log"; exit 1; }
ip netns add "$nsv"
ip link set "vs$id-c" netns "$nsv"
ip link set "vs$id-t" netns "$nsv"
ip -n "$nsv" link set lo up
ip -n "$nsv" addr add 10.7.0.2/16 dev "vs$id-c"
ip -n "$nsv" link set "vs$id-c" up
ip -n "$nsv" link set "vs$id-t" up
ip netns exec "$nsv" ping -c 2 -W 1 10.7.0.1 >/dev/null

# ---- dnsmasq: the same network in its own namespace, reached over a veth pair ----
ip netns add "$nsd"
ip netns add "$nsk"
ip -n "$nsd" link add eth0 type veth peer name eth0 netns "$nsk"
ip -n "$nsd" link set lo up
ip -n "$nsk" link set lo up
ip -n "$nsd" addr add 10.6.0.1/16 dev eth0
ip -n "$nsk" addr add 10.6.0.2/16 dev eth0
ip -n "$nsd" link set eth0 up
ip -n "$nsk" link set eth0 up
ip netns exec "$nsd" python3 "$work/upstream.py" "$UP" & pids+=($!)
hosts=()
for n in 0 1 2 3 4 5 6 7; do hosts+=("--host-record=host$n.bench.internal,10.6.0.$((10 + n))"); done
ip netns exec "$nsd" dnsmasq --keep-in-foreground --user=root --no-resolv --no-hosts --bind-interfaces \
    --interface=eth0 --except-interface=lo --listen-address=10.6.0.1 --server=127.0.0.1#$UP --cache-size=10000 \
    --dhcp-range=10.6.1.0,10.6.250.0,86400 --dhcp-leasefile="$work/dnsmasq.leases" --dhcp-lease-max=100000 \
    --no-ping --pid-file="$work/dnsmasq.pid" --log-facility=/dev/null "${hosts[@]}" & pids+=($!)
sleep 0.5
ip netns exec "$nsk" ping -c 2 -W 1 10.6.0.1 >/dev/null

qps() { # ns server queryfile -> queries per second
    ip netns exec "$1" dnsperf -s "$2" -d "$3" -l "$DNS_SECS" -c 4 -q 200 2>&1 |
        awk '/Queries per second/ {print int($4)}'
}
# Warm the caches (the first forwarded query of each name goes upstream).
qps "$nsv" 10.7.0.1 "$work/cached.txt" >/dev/null || true
qps "$nsk" 10.6.0.1 "$work/cached.txt" >/dev/null || true
echo "DNS: local names ..." >&2
vl=$(qps "$nsv" 10.7.0.1 "$work/local.txt"); kl=$(qps "$nsk" 10.6.0.1 "$work/local.txt")
echo "DNS: cached forwarded names ..." >&2
vc=$(qps "$nsv" 10.7.0.1 "$work/cached.txt"); kc=$(qps "$nsk" 10.6.0.1 "$work/cached.txt")
echo "DHCP: $CLIENTS clients ..." >&2
vd=$(ip netns exec "$nsv" python3 scripts/lib/dhcp-load.py "vs$id-t" "$CLIENTS" 64 7)
kd=$(ip netns exec "$nsk" python3 scripts/lib/dhcp-load.py eth0 "$CLIENTS" 64)
rate() { echo "$1" | awk '{print int($(NF-1))}'; }
ratio() { python3 -c "import sys; a,b=float(sys.argv[1] or 0),float(sys.argv[2] or 0); print('%.2f' % (a/b) if b else '-')" "$1" "$2"; }
printf '\n%-34s %12s %12s %8s\n' "services (one network)" "vrouter" "dnsmasq" "ratio"
printf '%-34s %12s %12s %8s\n' "DNS local names (queries/s)" "$vl" "$kl" "$(ratio "$vl" "$kl")"
printf '%-34s %12s %12s %8s\n' "DNS cached forwarded (queries/s)" "$vc" "$kc" "$(ratio "$vc" "$kc")"
printf '%-34s %12s %12s %8s\n' "DHCP leases/s ($CLIENTS clients)" "$(rate "$vd")" "$(rate "$kd")" "$(ratio "$(rate "$vd")" "$(rate "$kd")")"
echo "(dnsperf: 4 clients, 200 outstanding, ${DNS_SECS}s; DHCP: $vd | dnsmasq: $kd)"
