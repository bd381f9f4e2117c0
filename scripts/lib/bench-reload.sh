#!/usr/bin/env bash
# Live reconfiguration at scale, vrouter beside the Linux kernel (nftables) loading the same
# rules, in one run:
#   - vrouter: an account with NPORTS guest ports (taps, each a DHCP reservation), NFWD port
#     forwards and NFW firewall rules (defaults 1000 / 10000 / 10000): its cold start, `ctl
#     apply` of it on top of a small account (10 forwards, 10 rules), and ONE_CHANGES one-rule
#     changes on top of it (default 20): the datapath's pause (`pause_ms`, the loop's time for
#     the change) and the round trip of `ctl apply` (client to reply), medians and maxima;
#   - ping loss at 10 ms intervals (a guest to the outside, through source NAT) across those
#     changes (goal 0);
#   - per-packet cost of an established flow at 10 and at NFWD+NFW rules: UDP 64-byte
#     datagrams through a forward (iperf3 -u, DURATION s, default 5), received packets/s,
#     and the ratio (goal about 1);
#   - kernel: the same forwards (one DNAT rule each) and firewall rules (one filter rule each)
#     loaded with `nft -f` in a namespace, a one-rule `nft add rule`, and a full reload
#     (`flush ruleset` + `nft -f`, what a VR that rewrites its iptables does).
# Run as root; namespaces vl<pid>-..., removed on exit. Numbers go in notes, never in tests.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/lib/bench-common.sh
need_root "$@"
release_build
NPORTS=${NPORTS:-1000}
NFWD=${NFWD:-10000}
NFW=${NFW:-10000}
ONE_CHANGES=${ONE_CHANGES:-20}
DURATION=${DURATION:-5}

id=$$
work=$(mktemp -d /tmp/vrouter-bench-rl.XXXXXX)
nsg=vl$id-g nsh=vl$id-h nso=vl$id-o nsk=vl$id-k nsr=vl$id-r
pids=()
cleanup() {
    set +e
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
    del_namespaces $nsg $nsh $nso $nsk $nsr
    rm -rf "$work"
}
trap cleanup EXIT

ms() { python3 -c 'import time; print(time.monotonic_ns() // 1000)'; }

# The account's config: $1 forwards, $2 firewall rules, $3 ports (the first two are the
# measured guests), $4 the private port of forward 0 (a one-rule change flips it).
account() {
    python3 - "$1" "$2" "$3" "$4" "$id" "$work" "${BUSY_POLL_US:-2000}" <<'PY'
import sys
nfwd, nfw, nports, p0, id, work, busy = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6], sys.argv[7]
out = [f'''[router]
name = "rl{id}"
control_socket = "{work}/ctl.sock"
state_dir = "{work}/state"
busy_poll_us = {busy}
[conntrack]
max_flows = 65536
[[network]]
name = "net"
cidr = "10.20.0.0/16"
gateway = "10.20.0.1"
[public]
kind = "tap"
ifname = "vl{id}pb"
ips = ["203.0.113.10/24"]
gateway = "203.0.113.1"
''']
def ip(i): return f"10.20.{2 + i // 200}.{10 + i % 200}"
for i in range(nports):
    out.append(f'[[port]]\nname = "g{i}"\nnetwork = "net"\nkind = "tap"\nifname = "vl{id}t{i}"\nmac = "52:54:00:20:{i >> 8:02x}:{i & 255:02x}"\nip = "{ip(i)}"\nhostname = "g{i}"\n')
# The measured forward: 5201 to g0 (UDP, and TCP for iperf3's control connection), and the
# rules that let it in.
for proto in ("udp", "tcp"):
    out.append(f'[[port_forward]]\npublic_ip = "203.0.113.10"\nprotocol = "{proto}"\npublic_port = "5201"\nprivate_ip = "{ip(0)}"\nprivate_port = "5201"\n')
    out.append(f'[[firewall]]\npublic_ip = "203.0.113.10"\nprotocol = "{proto}"\nports = "5201"\nsources = ["0.0.0.0/0"]\n')
for k in range(nfwd):
    port = p0 if k == 0 else 80
    out.append(f'[[port_forward]]\npublic_ip = "203.0.113.10"\nprotocol = "tcp"\npublic_port = "{10000 + k}"\nprivate_ip = "{ip(k % nports)}"\nprivate_port = "{port}"\n')
for k in range(nfw):
    out.append(f'[[firewall]]\npublic_ip = "203.0.113.10"\nprotocol = "tcp"\nports = "{10000 + k}"\nsources = ["198.51.{100 + k // 250 % 100}.{k % 250}/32"]\n')
print("".join(out))
PY
}

echo "== building configs ($NPORTS ports, $NFWD forwards, $NFW firewall rules)"
account 10 10 2 80 >"$work/small.toml"
account "$NFWD" "$NFW" "$NPORTS" 80 >"$work/big.toml"
account "$NFWD" "$NFW" "$NPORTS" 81 >"$work/big2.toml"
echo "   big config: $(wc -c <"$work/big.toml") bytes"

apply() { # file -> prints "total_ms pause_ms build_ms"
    "$VR" ctl -s "$work/ctl.sock" apply -f "$1" --json >"$work/reply.json"
    python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d["total_ms"], d["pause_ms"], d["build_ms"])' "$work/reply.json"
}
start() { # config -> starts vrouter, waits until it answers; sets ready_ms
    local t0; t0=$(ms)
    cp "$1" "$work/run.toml"
    ip netns exec "$nsr" "$VR" run -c "$work/run.toml" >/dev/null 2>>"$work/vrouter.log" &
    pids+=($!)
    for _ in $(seq 600); do [ -S "$work/ctl.sock" ] && "$VR" ctl -s "$work/ctl.sock" show stats --json >/dev/null 2>&1 && break; sleep 0.05; done
    ready_ms=$(( ($(ms) - t0) / 1000 ))
}
stop() {
    local p=${pids[-1]}
    kill "$p"; wait "$p" 2>/dev/null || true
    unset 'pids[-1]'
    rm -f "$work/ctl.sock"
}
guests() { # moves the taps of g0, g1 and the public port into namespaces
    ip netns add "$nsg"; ip netns add "$nsh"; ip netns add "$nso"
    ip -n "$nsr" link set "vl${id}t0" netns "$nsg"; ip -n "$nsr" link set "vl${id}t1" netns "$nsh"; ip -n "$nsr" link set "vl${id}pb" netns "$nso"
    ip -n "$nsg" link set lo up; ip -n "$nsg" addr add 10.20.2.10/16 dev "vl${id}t0"; ip -n "$nsg" link set "vl${id}t0" up
    ip -n "$nsg" route add default via 10.20.0.1
    ip -n "$nsh" link set lo up; ip -n "$nsh" addr add 10.20.2.11/16 dev "vl${id}t1"; ip -n "$nsh" link set "vl${id}t1" up
    ip -n "$nsh" route add default via 10.20.0.1
    ip -n "$nso" link set lo up; ip -n "$nso" addr add 203.0.113.1/24 dev "vl${id}pb"; ip -n "$nso" link set "vl${id}pb" up
    ip -n "$nso" addr add 198.51.100.5/32 dev lo
}
pps() { # -> UDP 64-byte datagrams/s received by g0 through the forward, DURATION s
    timeout $((DURATION + 10)) ip netns exec "$nsg" iperf3 -s -1 -p 5201 >/dev/null 2>&1 &
    local s=$!
    sleep 0.3
    ip netns exec "$nso" iperf3 -c 203.0.113.10 -p 5201 -u -b 0 -l 64 -t "$DURATION" -J >"$work/iperf.json" 2>/dev/null || true
    wait $s 2>/dev/null || true
    python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); e=d["end"]["sum"]; print(int(e["packets"] - e["lost_packets"]) // int(float(sys.argv[2])))' "$work/iperf.json" "$DURATION" 2>/dev/null || echo -
}

if [ "$run_vr" = 1 ]; then
    # vrouter runs in a namespace of its own, where the taps it makes appear. Without IPv6
    # there, the kernel sides of the ports nobody uses stay quiet: a thousand taps each sending
    # router solicitations and MLD reports would be flooded to every other port.
    ip netns add "$nsr"
    ip netns exec "$nsr" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
    ip -n "$nsr" link set lo up
    echo "== vrouter: cold start with the big config"
    start "$work/big.toml"
    cold=$ready_ms
    stop
    echo "== vrouter: small account, then the big one applied live"
    start "$work/small.toml"
    guests
    must_ping "$nsg" 198.51.100.5 "guest to outside" "$work/vrouter.log"
    pps_small=$(pps)
    read -r big_total big_pause big_build < <(apply "$work/big.toml")
    pps_big=$(pps)
    echo "== vrouter: $ONE_CHANGES one-rule changes with a ping every 10 ms"
    ip netns exec "$nsg" ping -i 0.01 -W 1 198.51.100.5 >"$work/ping.txt" 2>&1 &
    ping_pid=$!
    sleep 1
    totals=() pauses=()
    for i in $(seq "$ONE_CHANGES"); do
        f=$work/big.toml; [ $((i % 2)) = 1 ] && f=$work/big2.toml
        read -r t p _ < <(apply "$f")
        totals+=("$t") pauses+=("$p")
        sleep 0.2
    done
    sleep 1
    kill -INT $ping_pid; wait $ping_pid 2>/dev/null || true
    sent=$(grep -o '[0-9]* packets transmitted' "$work/ping.txt" | grep -o '^[0-9]*' || echo -)
    recv=$(grep -o '[0-9]* received' "$work/ping.txt" | grep -o '^[0-9]*' || echo -)
    must_ping "$nsh" 10.20.2.10 "guest to guest after the changes" "$work/vrouter.log"
fi

if [ "$run_k" = 1 ]; then
    echo "== kernel: nftables with the same rules"
    ip netns add "$nsk"
    python3 - "$NFWD" "$NFW" "$NPORTS" >"$work/rules.nft" <<'PY'
import sys
nfwd, nfw, nports = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
def ip(i): return f"10.20.{2 + i // 200}.{10 + i % 200}"
print("table ip nat {\n chain prerouting {\n  type nat hook prerouting priority -100;")
print(f'  ip daddr 203.0.113.10 udp dport 5201 dnat to {ip(0)}:5201')
print(f'  ip daddr 203.0.113.10 tcp dport 5201 dnat to {ip(0)}:5201')
for k in range(nfwd):
    print(f"  ip daddr 203.0.113.10 tcp dport {10000 + k} dnat to {ip(k % nports)}:80")
print(" }\n}\ntable ip filter {\n chain forward {\n  type filter hook forward priority 0; policy drop;\n  ct state established,related accept")
print('  ip daddr 10.20.2.10 udp dport 5201 accept')
print('  ip daddr 10.20.2.10 tcp dport 5201 accept')
for k in range(nfw):
    print(f"  ip saddr 198.51.{100 + k // 250 % 100}.{k % 250} tcp dport {10000 + k} accept")
print(" }\n}")
PY
    t0=$(ms); ip netns exec "$nsk" nft -f "$work/rules.nft"; k_load=$(( ($(ms) - t0) / 1000 ))
    k_add=() k_full=()
    for i in $(seq "$ONE_CHANGES"); do
        t0=$(ms); ip netns exec "$nsk" nft add rule ip nat prerouting ip daddr 203.0.113.10 tcp dport $((40000 + i)) dnat to 10.20.2.10:80
        k_add+=($(( ($(ms) - t0) / 1000 )))
        t0=$(ms); ip netns exec "$nsk" nft -f - <<<"flush ruleset
include \"$work/rules.nft\""
        k_full+=($(( ($(ms) - t0) / 1000 )))
    done
fi

MEDIAN_FMT=%.1f
vr_total=$(median ${totals[@]+"${totals[@]}"}); vr_pause=$(median ${pauses[@]+"${pauses[@]}"})
max() { [ $# -gt 0 ] && printf '%s\n' "$@" | sort -g | tail -1 || echo -; }
ka=$(median ${k_add[@]+"${k_add[@]}"}); kf=$(median ${k_full[@]+"${k_full[@]}"})
echo
echo "| $NPORTS ports, $NFWD forwards, $NFW firewall rules | vrouter | kernel (nft) | ratio |"
echo "|---|---|---|---|"
echo "| load from nothing (ms) | cold start ${cold:--}; live apply ${big_total:--} (pause ${big_pause:--}, build ${big_build:--}) | nft -f ${k_load:--} | $(ratio "${big_total:--}" "${k_load:--}") |"
echo "| one-rule change, round trip (ms, median / max of $ONE_CHANGES) | $vr_total / $(max ${totals[@]+"${totals[@]}"}) | add rule $ka / full reload $kf | $(ratio "$vr_total" "$kf") (vs full reload) |"
echo "| one-rule change, datapath pause (ms, median / max) | $vr_pause / $(max ${pauses[@]+"${pauses[@]}"}) | - | |"
echo "| ping every 10 ms across the changes: lost / sent | $(( ${sent:-0} - ${recv:-0} )) / ${sent:--} | | |"
echo "| established flow, UDP 64 B pkt/s at 10 rules / at $((NFWD + NFW)) | ${pps_small:--} / ${pps_big:--} | | $(ratio "${pps_big:--}" "${pps_small:--}") |"
