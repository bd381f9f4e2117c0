#!/usr/bin/env bash
# Site-to-site VPN throughput: a guest reaching a branch LAN through vrouter's WireGuard tunnel,
# beside the same through a wireguard-go gateway (the userspace reference), to the same branch,
# in one run; then a handshake flood against vrouter's endpoint.
#   outside:  namespace vb<pid>-out: the public gateway 203.0.113.1 on vrouter's public tap, a veth
#             to the branch (198.51.100.0/24) and one to the reference gateway (192.0.2.0/24).
#   branch:   vb<pid>-br: wireguard-go (interface vb<pid>-wb, 51820) with two peers, vrouter
#             (allowed 10.8.0.0/24) and the reference gateway (10.7.0.0/24); LAN vb<pid>-lan
#             192.168.50.10 behind it. Both paths end at this one branch, so only the near side
#             differs.
#   vrouter:  guest vb<pid>-vg 10.8.0.2 on a tap of network "net" (gateway 10.8.0.1); [wireguard]
#             on 203.0.113.10:51820 with the branch as its peer.
#   reference: guest vb<pid>-kg 10.7.0.2 <-veth-> gateway vb<pid>-gw (ip_forward, wireguard-go
#             vb<pid>-wa, WAN 192.0.2.10) with the branch as its peer.
# Measures iperf3 single-stream TCP guest -> LAN in ROUNDS alternating rounds (default 3) of
# DURATION s (default 10), medians; prints both and vrouter/wireguard-go (target >= 1.0, goal
# >= 1.5). Then FLOOD_SECS (default 5) of handshake initiations with a valid mac1 and random
# contents (scripts/lib/wg-flood.py) from the outside at vrouter's endpoint while the tunnel
# carries an iperf3 stream: initiations sent, cookies answered, vrouter's counters, and the
# tunnel's throughput during the flood.
# BENCH_ONLY=kernel runs only the reference, BENCH_ONLY=vrouter only vrouter. Called by
# scripts/bench.sh (NO_VPN=1 skips it); also on its own as root:
#   DURATION=3 ROUNDS=1 bash scripts/lib/bench-vpn.sh
# Everything lives in namespaces named vb<pid>-...; wireguard-go's sockets in /var/run/wireguard
# are named after interfaces of this run.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ "$(id -u)" = 0 ] || { echo "scripts/lib/bench-vpn.sh needs root" >&2; exit 1; }
VR=${VR:-$PWD/target/release/vrouter}
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
FLOOD_SECS=${FLOOD_SECS:-5}
source scripts/lib/bench-common.sh
for c in iperf3 python3 wireguard-go wg; do
    command -v "$c" >/dev/null || { echo "bench-vpn: $c is missing (run scripts/deps.sh)" >&2; exit 1; }
done

id=$$
work=$(mktemp -d /tmp/vrouter-bench-vpn.XXXXXX)
nsout=vb$id-out nsbr=vb$id-br nslan=vb$id-lan nsvg=vb$id-vg nskg=vb$id-kg nsgw=vb$id-gw
all_ns="$nsvg $nskg $nsgw $nslan $nsbr $nsout"
wa=vb$id-wa wb=vb$id-wb
vr_pid="" wg_pids=""
cleanup() {
    set +e
    [ -n "$vr_pid" ] && kill "$vr_pid" 2>/dev/null && wait "$vr_pid" 2>/dev/null
    for p in $wg_pids; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
    del_namespaces $all_ns
    rm -f "/var/run/wireguard/$wa.sock" "/var/run/wireguard/$wb.sock"
    rm -rf "$work"
}
trap cleanup EXIT

key() { # name -> writes $work/name.key (600), prints the public key
    (umask 077; wg genkey >"$work/$1.key")
    wg pubkey <"$work/$1.key"
}
mkns() { ip netns add "$1"; ip -n "$1" link set lo up; ip netns exec "$1" sysctl -qw net.ipv6.conf.all.disable_ipv6=1; }
veth() { # nsA ifA addrA nsB ifB addrB
    ip -n "$1" link add "$2" type veth peer name "$5" netns "$4"
    ip -n "$1" addr add "$3" dev "$2"; ip -n "$4" addr add "$6" dev "$5"
    ip -n "$1" link set "$2" up; ip -n "$4" link set "$5" up
}
wggo() { # ns ifname -> starts wireguard-go in the foreground, waits for its socket
    ip netns exec "$1" env WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD=1 wireguard-go -f "$2" >"$work/$2.log" 2>&1 &
    wg_pids="$wg_pids $!"
    for _ in $(seq 100); do [ -S "/var/run/wireguard/$2.sock" ] && return 0; sleep 0.05; done
    echo "wireguard-go $2 did not start" >&2; cat "$work/$2.log" >&2; return 1
}

pub_vr=$(key vr) pub_a=$(key a) pub_b=$(key b)

# ---- the outside, the branch and its LAN ----
mkns "$nsout"; mkns "$nsbr"; mkns "$nslan"
ip netns exec "$nsout" sysctl -qw net.ipv4.ip_forward=1
ip netns exec "$nsbr" sysctl -qw net.ipv4.ip_forward=1
veth "$nsout" ob 198.51.100.1/24 "$nsbr" wan 198.51.100.7/24
ip -n "$nsbr" route add default via 198.51.100.1
veth "$nsbr" lan 192.168.50.1/24 "$nslan" eth0 192.168.50.10/24
ip -n "$nslan" route add default via 192.168.50.1
wggo "$nsbr" "$wb"
ip netns exec "$nsbr" wg set "$wb" private-key "$work/b.key" listen-port 51820 \
    peer "$pub_vr" allowed-ips 10.8.0.0/24 \
    peer "$pub_a" allowed-ips 10.7.0.0/24
ip -n "$nsbr" addr add 192.168.50.1/32 dev "$wb"
ip -n "$nsbr" link set "$wb" up
ip -n "$nsbr" route add 10.8.0.0/24 dev "$wb"
ip -n "$nsbr" route add 10.7.0.0/24 dev "$wb"

# ---- vrouter's side ----
if [ "$run_vr" = 1 ]; then
    cat >"$work/vpn.toml" <<TOML
[router]
name = "benchvpn$id"
busy_poll_us = ${BUSY_POLL_US:-0}
control_socket = "$work/ctl.sock"
[[network]]
name = "net"
cidr = "10.8.0.0/24"
gateway = "10.8.0.1"
[[port]]
name = "guest"
network = "net"
kind = "tap"
ifname = "vb$id-g"
mac = "52:54:00:97:00:02"
ip = "10.8.0.2"
[public]
kind = "tap"
ifname = "vb$id-p"
ips = ["203.0.113.10/24"]
gateway = "203.0.113.1"
[wireguard]
listen = "203.0.113.10:51820"
private_key_file = "$work/vr.key"
address = "10.250.0.1/24"
[[wireguard.peer]]
name = "branch"
public_key = "$pub_b"
endpoint = "198.51.100.7:51820"
allowed_ips = ["192.168.50.0/24"]
TOML
    "$VR" run -c "$work/vpn.toml" 2>"$work/vrouter.log" &
    vr_pid=$!
    for _ in $(seq 100); do [ -S "$work/ctl.sock" ] && break; sleep 0.05; done
    [ -S "$work/ctl.sock" ] || { echo "vrouter did not start:" >&2; cat "$work/vrouter.log" >&2; exit 1; }
    mkns "$nsvg"
    ip link set "vb$id-g" netns "$nsvg"
    ip -n "$nsvg" addr add 10.8.0.2/24 dev "vb$id-g"
    ip -n "$nsvg" link set "vb$id-g" up
    ip -n "$nsvg" route add default via 10.8.0.1
    ip link set "vb$id-p" netns "$nsout"
    ip -n "$nsout" addr add 203.0.113.1/24 dev "vb$id-p"
    ip -n "$nsout" link set "vb$id-p" up
    must_ping "$nsvg" 192.168.50.10 "vrouter tunnel" "$work/vrouter.log"
fi

# ---- the reference: a gateway running wireguard-go ----
if [ "$run_k" = 1 ]; then
    mkns "$nsgw"; mkns "$nskg"
    ip netns exec "$nsgw" sysctl -qw net.ipv4.ip_forward=1
    veth "$nsgw" in 10.7.0.1/24 "$nskg" eth0 10.7.0.2/24
    ip -n "$nskg" route add default via 10.7.0.1
    veth "$nsout" oa 192.0.2.1/24 "$nsgw" wan 192.0.2.10/24
    ip -n "$nsgw" route add default via 192.0.2.1
    wggo "$nsgw" "$wa"
    ip netns exec "$nsgw" wg set "$wa" private-key "$work/a.key" peer "$pub_b" endpoint 198.51.100.7:51820 allowed-ips 192.168.50.0/24
    ip -n "$nsgw" addr add 10.7.0.1/32 dev "$wa"
    ip -n "$nsgw" link set "$wa" up
    ip -n "$nsgw" route add 192.168.50.0/24 dev "$wa"
    must_ping "$nskg" 192.168.50.10 "wireguard-go tunnel" "$work/$wa.log"
fi

ip netns exec "$nslan" iperf3 -s -D -p 5201 --logfile "$work/iperf-s.log"
sleep 0.3
iperf_gbps() { # ns -> Gbit/s guest -> LAN, or nothing on failure
    ip netns exec "$1" iperf3 -c 192.168.50.10 -p 5201 -t "$DURATION" -J 2>/dev/null \
        | python3 -c 'import json,sys; print("%.3f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9))' 2>/dev/null || true
}
vr=() kr=()
for r in $(seq "$ROUNDS"); do
    if [ "$run_vr" = 1 ]; then x=$(iperf_gbps "$nsvg"); [ -n "$x" ] && vr+=("$x"); fi
    if [ "$run_k" = 1 ]; then x=$(iperf_gbps "$nskg"); [ -n "$x" ] && kr+=("$x"); fi
done
v=$(median "${vr[@]}") k=$(median "${kr[@]}")
echo
echo "== VPN: iperf3 TCP guest -> branch LAN through the tunnel, Gbit/s (median of $ROUNDS x ${DURATION}s) =="
printf "%-34s %10s\n" "vrouter (WireGuard in the pipeline)" "$v"
printf "%-34s %10s\n" "wireguard-go gateway (reference)" "$k"
printf "%-34s %10s   (target >= 1.0, goal >= 1.5)\n" "vrouter / wireguard-go" "$(ratio "$v" "$k")"

if [ "$run_vr" = 1 ] && [ "$FLOOD_SECS" != 0 ]; then
    ctl() { "$VR" ctl -s "$work/ctl.sock" "$@"; }
    before=$(ctl show vpn --json)
    ip netns exec "$nsvg" iperf3 -c 192.168.50.10 -p 5201 -t "$FLOOD_SECS" -J >"$work/flood-iperf.json" 2>/dev/null &
    ip_pid=$!
    flood=$(ip netns exec "$nsout" python3 scripts/lib/wg-flood.py "$(wg pubkey <"$work/vr.key")" 203.0.113.10 51820 "$FLOOD_SECS")
    wait "$ip_pid" || true
    after=$(ctl show vpn --json)
    during=$(python3 -c 'import json,sys; print("%.3f" % (json.load(open(sys.argv[1]))["end"]["sum_received"]["bits_per_second"]/1e9))' "$work/flood-iperf.json" 2>/dev/null || echo -)
    python3 - "$before" "$after" "$flood" "$during" "$FLOOD_SECS" <<'PY'
import json, sys
b, a = json.loads(sys.argv[1]), json.loads(sys.argv[2])
sent = int(sys.argv[3].split()[1]); cookies = int(sys.argv[3].split()[3]); secs = float(sys.argv[5])
d = lambda k: a[k] - b[k]
print()
print(f"== VPN: handshake flood ({secs:.0f} s of initiations with a valid mac1 and no known key) ==")
print(f"initiations sent          {sent} ({sent/secs:.0f}/s)")
print(f"cookie replies (under load) {d('cookies_sent')} sent, {cookies} seen by the flooder")
print(f"refused per source (rate) {d('rate_limited')}")
print(f"refused under load        {d('under_load')}")
print(f"strangers (DH done, no key) {d('strangers')} ({d('strangers')/secs:.0f}/s: the handshakes vrouter processed)")
print(f"tunnel iperf3 during flood {sys.argv[4]} Gbit/s")
PY
fi
