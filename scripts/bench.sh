#!/usr/bin/env bash
# End-to-end benchmark, vrouter side by side with the Linux kernel doing the same job, in one run.
#   L2, guest-to-guest on one network:
#     vrouter: two namespaces whose NICs are vrouter taps (release build).
#     kernel:  two namespaces on veth pairs into a Linux bridge (the bridge lives in its own
#              namespace, so nothing touches the root namespace).
#   L3, guest -> outside through source NAT (a second vrouter instance):
#     vrouter: a guest namespace on a tap of network "net" 10.8.0.0/24 (gateway 10.8.0.1), and an
#              "outside" namespace holding the [public] tap (203.0.113.1/24, 198.51.100.5/32 on lo);
#              the guest leaves as source_nat_ip 203.0.113.10.
#     kernel:  guest ns <-veth-> router ns <-veth-> outside ns, ip_forward=1 and an nft masquerade
#              on the router's "pub" interface, same addresses.
# Prints iperf3 single-stream TCP throughput (DURATION s, default 10), 64-byte UDP packets/s
# (iperf3 -u -b 0 -l 64), TCP request/response transactions/s (scripts/lib/tcp-rr.py: netperf's
# TCP_RR, which Debian does not ship) and ping RTT p50 and p99 for
# each (medians of ROUNDS alternating rounds, default 3), the ratios, and vrouter's counters
# (software-segmented super-frames; GSO frames received from the NAT guest).
# NO_SERVICES=1 skips the DHCP/DNS part; NO_LB=1 the load balancer part (scripts/lib/bench-lb.sh:
# new connections/s with wrk and iperf3 through the VIP, vrouter beside haproxy); NO_VXLAN=1 the
# VXLAN part (scripts/lib/bench-vxlan.sh: iperf3 guest to guest across VXLAN, two vrouters beside
# two kernel vxlan devices with Linux bridges); NO_OBSERVE=1 the observability cost
# (scripts/lib/bench-observe.sh: forwarding with metrics scraped every second and a capture on
# another port, against neither); NO_METADATA=1 the metadata requests/s beside nginx
# (scripts/lib/bench-metadata.sh); NO_RELOAD=1 the live reconfiguration at scale (scripts/lib/
# bench-reload.sh: 1000 ports, 10k forwards, 10k firewall rules applied and changed one rule at a
# time, the datapath's pause, ping loss across the changes, per-packet cost at 10 and 20k rules,
# beside nftables loading the same rules); NO_VPN=1 the VPN part (scripts/lib/bench-vpn.sh: iperf3
# guest to a branch LAN through vrouter's WireGuard beside a wireguard-go gateway, and a handshake
# flood); NO_EVPN=1 the BGP EVPN control plane (scripts/lib/bench-evpn.sh: routes/s learned and
# advertised, a new MAC to its route, session loss to withdrawal, vrouter beside FRR on a kernel
# VTEP, both clients of one FRR route reflector); NO_SYSTEMVM=1 the system VM (scripts/lib/bench-systemvm.sh: image size, QEMU start to
# the first DHCP ACK, iperf3 through it beside a Linux router VM of the same kernel, under TCG).
# BUSY_POLL_US sets vrouter's [router] busy_poll_us (default 2000) for both vrouter setups;
# IO_URING=false sets [router] io_uring = false (one write per small frame, for comparison).
# Then DHCP leases/s and DNS queries/s, vrouter beside dnsmasq (scripts/lib/bench-services.sh).
# Add --micro to also run the criterion per-stage benchmarks (ns/frame): l2_forward, and
# l3_nat when benches/l3_nat.rs exists.
#
# BENCH_ONLY=kernel runs only the Linux setups (no cargo build, no vrouter; --micro is skipped):
#   BENCH_ONLY=kernel DURATION=3 ROUNDS=1 bash scripts/bench.sh
# BENCH_ONLY=vrouter runs only the vrouter setups. Unset (default): both, side by side.
# Run as root. Everything lives in namespaces named vb<pid>-..., removed on exit (the kernel
# NAT module may get loaded; its rules exist only in the router namespace).
# Numbers go in notes, never in tests.
set -euo pipefail
cd "$(dirname "$0")/.."
# Root runs it as it is; another user through sudo, where there is one.
if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null && exec sudo -E bash "$0" "$@"
    echo "scripts/bench.sh needs root (and there is no sudo here)" >&2
    exit 1
fi
MEDIAN_FMT=%.3f
source scripts/lib/bench-common.sh
source scripts/deps.sh
export PATH="$HOME/.cargo/bin:$PATH"
DURATION=${DURATION:-10}
PINGS=${PINGS:-200}
ROUNDS=${ROUNDS:-3}
VR=$PWD/target/release/vrouter
[ "$run_vr" = 1 ] && cargo build --release --locked -q

id=$$
work=$(mktemp -d /tmp/vrouter-bench.XXXXXX)
# L2: vrouter guests, bridge guests, the bridge.
nsv1=vb$id-v1 nsv2=vb$id-v2 nsk1=vb$id-k1 nsk2=vb$id-k2 nsbr=vb$id-br
# L3: vrouter guest and outside; kernel guest, router and outside.
nsvg=vb$id-vg nsvo=vb$id-vo nskg=vb$id-kg nskr=vb$id-kr nsko=vb$id-ko
all_ns="$nsv1 $nsv2 $nsk1 $nsk2 $nsbr $nsvg $nsvo $nskg $nskr $nsko"
vr_pid="" vr3_pid=""
cleanup() {
    set +e
    [ -n "$vr_pid" ] && kill "$vr_pid" 2>/dev/null && wait "$vr_pid" 2>/dev/null
    [ -n "$vr3_pid" ] && kill "$vr3_pid" 2>/dev/null && wait "$vr3_pid" 2>/dev/null
    del_namespaces $all_ns
    rm -rf "$work"
}
trap cleanup EXIT

wait_sock() { # socket vrouter-pid log
    for _ in $(seq 100); do [ -S "$1" ] && return 0; sleep 0.05; done
    echo "vrouter did not open its control socket $1:" >&2; cat "$3" >&2; return 1
}

# ---- L2, vrouter ----
setup_l2_vrouter() {
    cat >"$work/bench.toml" <<TOML
[router]
name = "bench$id"
busy_poll_us = ${BUSY_POLL_US:-2000}
io_uring = ${IO_URING:-true}
control_socket = "$work/ctl.sock"
[[network]]
name = "net"
cidr = "10.9.0.0/24"
[[port]]
name = "g1"
network = "net"
kind = "tap"
ifname = "vb$id-t1"
mac = "52:54:00:99:00:01"
ip = "10.9.0.1"
[[port]]
name = "g2"
network = "net"
kind = "tap"
ifname = "vb$id-t2"
mac = "52:54:00:99:00:02"
ip = "10.9.0.2"
TOML
    "$VR" run -c "$work/bench.toml" 2>"$work/vrouter.log" &
    vr_pid=$!
    wait_sock "$work/ctl.sock" "$vr_pid" "$work/vrouter.log"
    local i ns tap
    for i in 1 2; do
        ns=vb$id-v$i; tap=vb$id-t$i
        ip netns add "$ns"
        ip link set "$tap" netns "$ns"
        ip -n "$ns" link set lo up
        ip -n "$ns" addr add "10.9.0.$i/24" dev "$tap"
        ip -n "$ns" link set "$tap" up
    done
}

# ---- L2, Linux bridge + veth ----
setup_l2_kernel() {
    ip netns add "$nsbr"
    ip -n "$nsbr" link add br0 type bridge
    ip -n "$nsbr" link set br0 up
    local i ns
    for i in 1 2; do
        ns=vb$id-k$i
        ip netns add "$ns"
        ip -n "$nsbr" link add "p$i" type veth peer name eth0 netns "$ns"
        ip -n "$nsbr" link set "p$i" master br0 up
        ip -n "$ns" link set lo up
        ip -n "$ns" addr add "10.9.0.$i/24" dev eth0
        ip -n "$ns" link set eth0 up
    done
}

# ---- L3, vrouter: guest -> [vrouter: route + source NAT] -> outside ----
OUT_IP=198.51.100.5 SNAT_IP=203.0.113.10
setup_l3_vrouter() {
    cat >"$work/bench-l3.toml" <<TOML
[router]
name = "bench$id-l3"
busy_poll_us = ${BUSY_POLL_US:-2000}
io_uring = ${IO_URING:-true}
control_socket = "$work/ctl3.sock"
[[network]]
name = "net"
cidr = "10.8.0.0/24"
gateway = "10.8.0.1"
[[port]]
name = "guest"
network = "net"
kind = "tap"
ifname = "vb$id-g"
mac = "52:54:00:98:00:02"
ip = "10.8.0.2"
[public]
kind = "tap"
ifname = "vb$id-pub"
ips = ["$SNAT_IP/24"]
gateway = "203.0.113.1"
source_nat_ip = "$SNAT_IP"
TOML
    "$VR" run -c "$work/bench-l3.toml" 2>"$work/vrouter-l3.log" &
    vr3_pid=$!
    wait_sock "$work/ctl3.sock" "$vr3_pid" "$work/vrouter-l3.log"
    ip netns add "$nsvg"
    ip link set "vb$id-g" netns "$nsvg"
    ip -n "$nsvg" link set lo up
    ip -n "$nsvg" addr add 10.8.0.2/24 dev "vb$id-g"
    ip -n "$nsvg" link set "vb$id-g" up
    ip -n "$nsvg" route add default via 10.8.0.1
    ip netns add "$nsvo"
    ip link set "vb$id-pub" netns "$nsvo"
    ip -n "$nsvo" link set lo up
    ip -n "$nsvo" addr add "$OUT_IP/32" dev lo
    ip -n "$nsvo" addr add 203.0.113.1/24 dev "vb$id-pub"
    ip -n "$nsvo" link set "vb$id-pub" up
}

# ---- L3, Linux: guest <-veth-> router (ip_forward + nft masquerade) <-veth-> outside ----
setup_l3_kernel() {
    ip netns add "$nskg"
    ip netns add "$nskr"
    ip netns add "$nsko"
    ip -n "$nskr" link add priv type veth peer name eth0 netns "$nskg"
    ip -n "$nskr" link add pub type veth peer name eth0 netns "$nsko"
    ip -n "$nskr" link set lo up
    ip -n "$nskr" addr add 10.8.0.1/24 dev priv
    ip -n "$nskr" addr add "$SNAT_IP/24" dev pub
    ip -n "$nskr" link set priv up
    ip -n "$nskr" link set pub up
    ip -n "$nskr" route add default via 203.0.113.1
    ip netns exec "$nskr" sysctl -qw net.ipv4.ip_forward=1
    ip netns exec "$nskr" nft add table ip nat
    ip netns exec "$nskr" nft add chain ip nat post '{ type nat hook postrouting priority 100; }'
    ip netns exec "$nskr" nft add rule ip nat post oifname "pub" masquerade
    ip -n "$nskg" link set lo up
    ip -n "$nskg" addr add 10.8.0.2/24 dev eth0
    ip -n "$nskg" link set eth0 up
    ip -n "$nskg" route add default via 10.8.0.1
    ip -n "$nsko" link set lo up
    ip -n "$nsko" addr add "$OUT_IP/32" dev lo
    ip -n "$nsko" addr add 203.0.113.1/24 dev eth0
    ip -n "$nsko" link set eth0 up
}

tput() { # ns-client ns-server [target] -> Gbit/s of one iperf3 run
    ip netns exec "$2" iperf3 -s -1 >/dev/null 2>&1 &
    local spid=$! out
    sleep 0.5
    if ! out=$(ip netns exec "$1" iperf3 -c "${3:-10.9.0.2}" --connect-timeout 5000 -t "$DURATION" -J); then
        kill "$spid" 2>/dev/null; wait "$spid" 2>/dev/null
        echo "iperf3 $1 -> ${3:-10.9.0.2} failed" >&2; return 1
    fi
    wait "$spid" 2>/dev/null || true
    python3 -c 'import json,sys; print("%.2f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9))' <<<"$out"
}
rtt() { # ns [target] -> "p50 p99" RTT in ms over $PINGS pings (after a warm-up)
    ip netns exec "$1" ping -c 20 -i 0.01 -q "${2:-10.9.0.2}" >/dev/null
    ip netns exec "$1" ping -c "$PINGS" -i 0.01 "${2:-10.9.0.2}" |
        python3 -c 'import re,sys,statistics; t=sorted(float(m.group(1)) for m in re.finditer(r"time=([0-9.]+)", sys.stdin.read())); print("%.3f %.3f" % (statistics.median(t), t[min(len(t) - 1, int(len(t) * 0.99))]))'
}
pps() { # ns-client ns-server [target] -> 64-byte UDP datagrams/s received (iperf3 -u -b 0 -l 64)
    # Bound to the target: an unbound server answers UDP from the address routing picks (the
    # outside's 203.0.113.1, not 198.51.100.5), which the client's connected socket ignores.
    ip netns exec "$2" iperf3 -s -1 -B "${3:-10.9.0.2}" >/dev/null 2>&1 &
    local spid=$! out
    sleep 0.5
    if ! out=$(ip netns exec "$1" iperf3 -c "${3:-10.9.0.2}" -u -b 0 -l 64 -t "$DURATION" -J); then
        kill "$spid" 2>/dev/null; wait "$spid" 2>/dev/null
        echo "iperf3 -u $1 -> ${3:-10.9.0.2} failed" >&2; return 1
    fi
    wait "$spid" 2>/dev/null || true
    python3 -c 'import json,sys; d=json.load(sys.stdin); e=d["end"].get("sum") or d["end"]["sum_received"]; print("%.0f" % ((e["packets"] - e.get("lost_packets", 0)) / e["seconds"]))' <<<"$out" || { echo "iperf3 -u: $(head -c 300 <<<"$out")" >&2; echo -; }
}
rr() { # ns-client ns-server [target] -> TCP 1-byte request/response transactions/s
    local ip=${3:-10.9.0.2}
    ip netns exec "$2" python3 scripts/lib/tcp-rr.py server "$ip" 7002 >/dev/null 2>&1 &
    local spid=$!
    sleep 0.3
    ip netns exec "$1" python3 scripts/lib/tcp-rr.py client "$ip" 7002 "$DURATION" || echo -
    kill "$spid" 2>/dev/null; wait "$spid" 2>/dev/null || true
}
peer_seen() { # ns-client ns-server -> the source address the outside server saw (NAT check)
    # shellcheck disable=SC2016 # $SOCAT_PEERADDR is expanded by the shell socat starts
    ip netns exec "$2" socat -T 5 TCP-LISTEN:7001,reuseaddr SYSTEM:'echo $SOCAT_PEERADDR' &
    local spid=$! out=""
    for _ in $(seq 20); do
        sleep 0.1
        out=$(ip netns exec "$1" socat -t 3 -T 5 - "TCP:$OUT_IP:7001,connect-timeout=2" </dev/null 2>/dev/null) && [ -n "$out" ] && break
    done
    kill "$spid" 2>/dev/null; wait "$spid" 2>/dev/null
    echo "${out:-none}"
}
stat_of() { # socket python-expression-on-stats-json (s) -> value, or "?" when unavailable
    "$VR" ctl -s "$1" show stats --json | python3 -c "import json,sys; s=json.load(sys.stdin); print($2)" ||
        echo "?"
}

[ "$run_vr" = 1 ] && { setup_l2_vrouter; setup_l3_vrouter; }
[ "$run_k" = 1 ] && { setup_l2_kernel; setup_l3_kernel; }

# This machine is shared and noisy: alternate the two setups ROUNDS times and compare medians.
# ---- L2 rounds ----
[ "$run_vr" = 1 ] && must_ping "$nsv1" 10.9.0.2 "L2 vrouter" "$work/vrouter.log"
[ "$run_k" = 1 ] && must_ping "$nsk1" 10.9.0.2 "L2 bridge"
vgs=() kgs=() vps=() kps=() vp99=() kp99=() vpp=() kpp=() vrr=() krr=()
for r in $(seq "$ROUNDS"); do
    if [ "$run_vr" = 1 ]; then
        echo "L2 round $r/$ROUNDS: vrouter ..." >&2
        vgs+=("$(tput "$nsv1" "$nsv2")"); read -r a b <<<"$(rtt "$nsv1")"; vps+=("$a"); vp99+=("$b")
        vpp+=("$(pps "$nsv1" "$nsv2")"); vrr+=("$(rr "$nsv1" "$nsv2")")
    fi
    if [ "$run_k" = 1 ]; then
        echo "L2 round $r/$ROUNDS: linux bridge ..." >&2
        kgs+=("$(tput "$nsk1" "$nsk2")"); read -r a b <<<"$(rtt "$nsk1")"; kps+=("$a"); kp99+=("$b")
        kpp+=("$(pps "$nsk1" "$nsk2")"); krr+=("$(rr "$nsk1" "$nsk2")")
    fi
    echo "   vrouter $(last vgs) Gbit/s $(last vps) ms $(last vpp) pps $(last vrr) tps   bridge $(last kgs) Gbit/s $(last kps) ms $(last kpp) pps $(last krr) tps" >&2
done
vg=$(median ${vgs[@]+"${vgs[@]}"}) kg=$(median ${kgs[@]+"${kgs[@]}"})
vp=$(median ${vps[@]+"${vps[@]}"}) kp=$(median ${kps[@]+"${kps[@]}"})
vq=$(median ${vp99[@]+"${vp99[@]}"}) kq=$(median ${kp99[@]+"${kp99[@]}"})
vpps=$(MEDIAN_FMT=%.0f median ${vpp[@]+"${vpp[@]}"}) kpps=$(MEDIAN_FMT=%.0f median ${kpp[@]+"${kpp[@]}"})
vtps=$(MEDIAN_FMT=%.0f median ${vrr[@]+"${vrr[@]}"}) ktps=$(MEDIAN_FMT=%.0f median ${krr[@]+"${krr[@]}"})
segs=-
[ "$run_vr" = 1 ] && segs=$(stat_of "$work/ctl.sock" 's["totals"]["tx_sw_segmented"]')

# ---- L3 rounds: guest -> outside through source NAT ----
vpeer=- kpeer=-
if [ "$run_vr" = 1 ]; then
    must_ping "$nsvg" "$OUT_IP" "L3 vrouter" "$work/vrouter-l3.log"
    vpeer=$(peer_seen "$nsvg" "$nsvo")
fi
if [ "$run_k" = 1 ]; then
    must_ping "$nskg" "$OUT_IP" "L3 kernel router"
    kpeer=$(peer_seen "$nskg" "$nsko")
fi
echo "L3: the outside sees the guest as: vrouter $vpeer, kernel $kpeer (expected $SNAT_IP)" >&2
v3gs=() k3gs=() v3ps=() k3ps=() v3p99=() k3p99=() v3pp=() k3pp=() v3rr=() k3rr=()
for r in $(seq "$ROUNDS"); do
    if [ "$run_vr" = 1 ]; then
        echo "L3 round $r/$ROUNDS: vrouter NAT ..." >&2
        v3gs+=("$(tput "$nsvg" "$nsvo" "$OUT_IP")"); read -r a b <<<"$(rtt "$nsvg" "$OUT_IP")"; v3ps+=("$a"); v3p99+=("$b")
        v3pp+=("$(pps "$nsvg" "$nsvo" "$OUT_IP")"); v3rr+=("$(rr "$nsvg" "$nsvo" "$OUT_IP")")
    fi
    if [ "$run_k" = 1 ]; then
        echo "L3 round $r/$ROUNDS: linux router NAT ..." >&2
        k3gs+=("$(tput "$nskg" "$nsko" "$OUT_IP")"); read -r a b <<<"$(rtt "$nskg" "$OUT_IP")"; k3ps+=("$a"); k3p99+=("$b")
        k3pp+=("$(pps "$nskg" "$nsko" "$OUT_IP")"); k3rr+=("$(rr "$nskg" "$nsko" "$OUT_IP")")
    fi
    echo "   vrouter $(last v3gs) Gbit/s $(last v3ps) ms $(last v3pp) pps $(last v3rr) tps   linux router $(last k3gs) Gbit/s $(last k3ps) ms $(last k3pp) pps $(last k3rr) tps" >&2
done
v3g=$(median ${v3gs[@]+"${v3gs[@]}"}) k3g=$(median ${k3gs[@]+"${k3gs[@]}"})
v3p=$(median ${v3ps[@]+"${v3ps[@]}"}) k3p=$(median ${k3ps[@]+"${k3ps[@]}"})
v3q=$(median ${v3p99[@]+"${v3p99[@]}"}) k3q=$(median ${k3p99[@]+"${k3p99[@]}"})
v3pps=$(MEDIAN_FMT=%.0f median ${v3pp[@]+"${v3pp[@]}"}) k3pps=$(MEDIAN_FMT=%.0f median ${k3pp[@]+"${k3pp[@]}"})
v3tps=$(MEDIAN_FMT=%.0f median ${v3rr[@]+"${v3rr[@]}"}) k3tps=$(MEDIAN_FMT=%.0f median ${k3rr[@]+"${k3rr[@]}"})
segs3=- gso3=-
if [ "$run_vr" = 1 ]; then
    segs3=$(stat_of "$work/ctl3.sock" 's["totals"]["tx_sw_segmented"]')
    gso3=$(stat_of "$work/ctl3.sock" 'next(p["rx_gso_frames"] for p in s["ports"] if p["name"] == "guest")')
fi

printf '\n%-30s %14s %14s %10s\n' "guest-to-guest, one network" "vrouter" "linux bridge" "ratio"
printf '%-30s %14s %14s %10s\n' "iperf3 TCP 1 stream (Gbit/s)" "$vg" "$kg" "$(ratio "$vg" "$kg")"
printf '%-30s %14s %14s %10s\n' "ping RTT p50 (ms)" "$vp" "$kp" "$(ratio "$kp" "$vp")"
printf '%-30s %14s %14s %10s\n' "ping RTT p99 (ms)" "$vq" "$kq" "$(ratio "$kq" "$vq")"
printf '%-30s %14s %14s %10s\n' "UDP 64 B (packets/s)" "$vpps" "$kpps" "$(ratio "$vpps" "$kpps")"
printf '%-30s %14s %14s %10s\n' "TCP_RR 1 B (transactions/s)" "$vtps" "$ktps" "$(ratio "$vtps" "$ktps")"
echo "(medians of $ROUNDS alternating rounds of ${DURATION}s; throughput ratio = vrouter/bridge and"
echo " RTT ratio = bridge/vrouter, higher is better for both; software-segmented super-frames: $segs)"

printf '\n%-30s %14s %14s %10s\n' "guest -> outside, source NAT" "vrouter" "linux router" "ratio"
printf '%-30s %14s %14s %10s\n' "iperf3 TCP 1 stream (Gbit/s)" "$v3g" "$k3g" "$(ratio "$v3g" "$k3g")"
printf '%-30s %14s %14s %10s\n' "ping RTT p50 (ms)" "$v3p" "$k3p" "$(ratio "$k3p" "$v3p")"
printf '%-30s %14s %14s %10s\n' "ping RTT p99 (ms)" "$v3q" "$k3q" "$(ratio "$k3q" "$v3q")"
printf '%-30s %14s %14s %10s\n' "UDP 64 B (packets/s)" "$v3pps" "$k3pps" "$(ratio "$v3pps" "$k3pps")"
printf '%-30s %14s %14s %10s\n' "TCP_RR 1 B (transactions/s)" "$v3tps" "$k3tps" "$(ratio "$v3tps" "$k3tps")"
echo "(medians of $ROUNDS alternating rounds of ${DURATION}s; linux router = ip_forward + nft masquerade;"
echo " throughput ratio = vrouter/kernel, RTT ratio = kernel/vrouter, higher is better for both;"
echo " vrouter NAT run: software-segmented super-frames (totals.tx_sw_segmented): $segs3,"
echo " GSO super-frames received from the guest (guest rx_gso_frames): $gso3;"
echo " source address seen by the outside: vrouter $vpeer, kernel $kpeer)"

# ---- DHCP and DNS: vrouter and dnsmasq, side by side ----
if [ -z "$BENCH_ONLY" ] && [ -z "${NO_SERVICES:-}" ]; then
    VR=$VR bash scripts/lib/bench-services.sh
fi

# ---- Load balancing: vrouter and haproxy in front of the same backends ----
if [ -z "${NO_LB:-}" ]; then
    VR=$VR bash scripts/lib/bench-lb.sh
fi

# ---- VXLAN: guest to guest across an underlay, two vrouters and two kernel VTEPs ----
if [ -z "${NO_VXLAN:-}" ]; then
    VR=$VR bash scripts/lib/bench-vxlan.sh
fi

# ---- VPN: guest to a branch LAN through vrouter's WireGuard beside a wireguard-go gateway ----
if [ -z "${NO_VPN:-}" ]; then
    VR=$VR bash scripts/lib/bench-vpn.sh
fi

# ---- EVPN: routes learned and advertised through an FRR reflector, beside FRR + kernel VTEP ----
if [ -z "${NO_EVPN:-}" ] && [ "$run_vr" = 1 ]; then
    VR=$VR bash scripts/lib/bench-evpn.sh
fi

# ---- System VM: boot to first ACK, iperf3 through it beside a Linux router VM (QEMU/TCG) ----
if [ -z "${NO_SYSTEMVM:-}" ] && [ "$run_vr" = 1 ]; then
    VR=$VR bash scripts/lib/bench-systemvm.sh
fi

# ---- Metadata: requests/s from a guest, vrouter's service beside nginx ----
if [ "$run_vr" = 1 ] && [ -z "${NO_METADATA:-}" ]; then
    bash scripts/lib/bench-metadata.sh
fi

# ---- Observability: forwarding with metrics scraped and a capture running, against neither ----
if [ "$run_vr" = 1 ] && [ -z "${NO_OBSERVE:-}" ]; then
    bash scripts/lib/bench-observe.sh
fi

# ---- Live reconfiguration at scale: vrouter's apply beside nftables loading the same rules ----
if [ -z "${NO_RELOAD:-}" ]; then
    bash scripts/lib/bench-reload.sh
fi

if [ "${1:-}" = "--micro" ]; then
    if [ "$run_vr" = 1 ]; then
        benches=(--bench l2_forward)
        [ -f benches/l3_nat.rs ] && benches+=(--bench l3_nat)
        [ -f benches/vpn.rs ] && benches+=(--bench vpn)
        cargo bench --locked "${benches[@]}" -- --noplot 2>&1 | grep -E "^[A-Za-z0-9_]+/|time:|thrpt:"
    else
        echo "(--micro skipped: BENCH_ONLY=$BENCH_ONLY)"
    fi
fi
