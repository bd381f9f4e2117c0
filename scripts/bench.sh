#!/usr/bin/env bash
# End-to-end benchmark, vrouter side by side with the Linux kernel doing the same job, in one
# run: guest-to-guest on one L2 network.
#   vrouter: two namespaces whose NICs are vrouter taps (release build).
#   kernel:  two namespaces on veth pairs into a Linux bridge (the bridge lives in its own
#            namespace, so nothing touches the root namespace).
# Prints iperf3 single-stream TCP throughput (DURATION s, default 10) and ping RTT p50 for
# both (medians of ROUNDS alternating rounds, default 3), and the ratios. Add --micro to also run the criterion per-stage benchmarks (ns/frame).
# Run as root. Numbers go in notes, never in tests.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "scripts/bench.sh needs root" >&2; exit 1; }
source scripts/deps.sh
export PATH="$HOME/.cargo/bin:$PATH"
DURATION=${DURATION:-10}
PINGS=${PINGS:-200}
cargo build --release --locked -q
VR=$PWD/target/release/vrouter

id=$$
work=$(mktemp -d /tmp/vrouter-bench.XXXXXX)
nsv1=vb$id-v1 nsv2=vb$id-v2 nsk1=vb$id-k1 nsk2=vb$id-k2 nsbr=vb$id-br
vr_pid=""
cleanup() {
    set +e
    [ -n "$vr_pid" ] && kill "$vr_pid" 2>/dev/null && wait "$vr_pid" 2>/dev/null
    for n in $nsv1 $nsv2 $nsk1 $nsk2 $nsbr; do ip netns del "$n" 2>/dev/null; done
    rm -rf "$work"
}
trap cleanup EXIT

# ---- vrouter ----
cat >"$work/bench.toml" <<TOML
[router]
name = "bench$id"
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
for _ in $(seq 100); do [ -S "$work/ctl.sock" ] && break; sleep 0.05; done
for i in 1 2; do
    ns=vb$id-v$i; tap=vb$id-t$i
    ip netns add "$ns"
    ip link set "$tap" netns "$ns"
    ip -n "$ns" link set lo up
    ip -n "$ns" addr add "10.9.0.$i/24" dev "$tap"
    ip -n "$ns" link set "$tap" up
done

# ---- Linux bridge + veth ----
ip netns add "$nsbr"
ip -n "$nsbr" link add br0 type bridge
ip -n "$nsbr" link set br0 up
for i in 1 2; do
    ns=vb$id-k$i
    ip netns add "$ns"
    ip -n "$nsbr" link add "p$i" type veth peer name eth0 netns "$ns"
    ip -n "$nsbr" link set "p$i" master br0 up
    ip -n "$ns" link set lo up
    ip -n "$ns" addr add "10.9.0.$i/24" dev eth0
    ip -n "$ns" link set eth0 up
done

tput() { # ns-client ns-server -> Gbit/s of one iperf3 run
    ip netns exec "$2" iperf3 -s -1 >/dev/null 2>&1 &
    local spid=$!
    sleep 0.5
    ip netns exec "$1" iperf3 -c 10.9.0.2 -t "$DURATION" -J |
        python3 -c 'import json,sys; print("%.2f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9))'
    wait "$spid" 2>/dev/null || true
}
rtt() { # ns -> p50 RTT in ms over $PINGS pings (after a warm-up)
    ip netns exec "$1" ping -c 20 -i 0.01 -q 10.9.0.2 >/dev/null
    ip netns exec "$1" ping -c "$PINGS" -i 0.01 10.9.0.2 |
        python3 -c 'import re,sys,statistics; t=[float(m.group(1)) for m in re.finditer(r"time=([0-9.]+)", sys.stdin.read())]; print("%.3f" % statistics.median(t))'
}
median() { python3 -c 'import sys,statistics; print("%.3f" % statistics.median(float(x) for x in sys.argv[1:]))' "$@"; }

# This machine is shared and noisy: alternate the two setups ROUNDS times and compare medians.
ROUNDS=${ROUNDS:-3}
ip netns exec "$nsv1" ping -c 3 -W 1 10.9.0.2 >/dev/null
ip netns exec "$nsk1" ping -c 3 -W 1 10.9.0.2 >/dev/null
vgs=() kgs=() vps=() kps=()
for r in $(seq "$ROUNDS"); do
    echo "round $r/$ROUNDS: vrouter ..." >&2
    vgs+=("$(tput "$nsv1" "$nsv2")"); vps+=("$(rtt "$nsv1")")
    echo "round $r/$ROUNDS: linux bridge ..." >&2
    kgs+=("$(tput "$nsk1" "$nsk2")"); kps+=("$(rtt "$nsk1")")
    echo "   vrouter ${vgs[-1]} Gbit/s ${vps[-1]} ms   bridge ${kgs[-1]} Gbit/s ${kps[-1]} ms" >&2
done
vg=$(median "${vgs[@]}") kg=$(median "${kgs[@]}") vp=$(median "${vps[@]}") kp=$(median "${kps[@]}")
segs=$("$VR" ctl -s "$work/ctl.sock" show stats --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["totals"]["tx_sw_segmented"])')

printf '\n%-30s %14s %14s %10s\n' "guest-to-guest, one network" "vrouter" "linux bridge" "ratio"
printf '%-30s %14s %14s %10s\n' "iperf3 TCP 1 stream (Gbit/s)" "$vg" "$kg" "$(python3 -c "print('%.2f' % ($vg/$kg))")"
printf '%-30s %14s %14s %10s\n' "ping RTT p50 (ms)" "$vp" "$kp" "$(python3 -c "print('%.2f' % ($kp/$vp))")"
echo "(medians of $ROUNDS alternating rounds of ${DURATION}s; throughput ratio = vrouter/bridge and"
echo " RTT ratio = bridge/vrouter, higher is better for both; software-segmented super-frames: $segs)"

if [ "${1:-}" = "--micro" ]; then
    cargo bench --locked --bench l2_forward -- --noplot 2>&1 | grep -E "^l2/|time:|thrpt:"
fi
