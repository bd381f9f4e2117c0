#!/usr/bin/env bash
# The main job: a demo account on this machine. Installs what it needs, builds vrouter, starts
# it on conf/demo.toml (two "web" guests and one "db" guest, each a network namespace whose NIC
# is the kernel side of a vrouter tap), and shows the guests pinging each other, the networks
# isolated, the control socket's tables and an iperf3 result. Cleans up everything it made.
# Run as root:  sudo scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "scripts/demo.sh needs root (taps, namespaces)" >&2; exit 1; }
source scripts/deps.sh
export PATH="$HOME/.cargo/bin:$PATH"

echo "== building vrouter (release)"
cargo build --release --locked -q
VR=target/release/vrouter

# Unique names for this run: interfaces v<pid>-..., namespaces vd<pid>-..., own socket.
id=$$
work=$(mktemp -d /tmp/vrouter-demo.XXXXXX)
sock=$work/demo.sock
ns_of() { echo "vd$id-$1"; }
if_of() { echo "v$id-$1"; }
sed -e "s#vrd-\\([a-z0-9]*\\)#v$id-\\1#" -e "s#/run/vrouter/demo.sock#$sock#" conf/demo.toml >"$work/demo.toml"
vr_pid=""
cleanup() {
    set +e
    [ -n "$vr_pid" ] && kill "$vr_pid" 2>/dev/null && wait "$vr_pid" 2>/dev/null
    for g in web1 web2 db1; do ip netns del "$(ns_of $g)" 2>/dev/null; done
    rm -rf "$work"
}
trap cleanup EXIT

echo "== vrouter check"
$VR check -c "$work/demo.toml"
echo "== vrouter run"
$VR run -c "$work/demo.toml" 2>"$work/vrouter.log" &
vr_pid=$!
for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.05; done
[ -S "$sock" ] || { cat "$work/vrouter.log"; exit 1; }

guest() { # name addr
    local ns tap
    ns=$(ns_of "$1"); tap=$(if_of "$1")
    ip netns add "$ns"
    ip link set "$tap" netns "$ns"
    ip -n "$ns" link set lo up
    ip -n "$ns" addr add "$2" dev "$tap"
    ip -n "$ns" link set "$tap" up
    echo "   guest $1: netns $ns, NIC $tap $(ip -n "$ns" -br link show "$tap" | awk '{print $3}') $2"
}
echo "== guests (network namespaces on vrouter taps)"
guest web1 10.1.1.11/24
guest web2 10.1.1.12/24
guest db1 10.1.2.11/24
# db1 also takes a web address, to show that networks are isolated at L2 regardless.
ip -n "$(ns_of db1)" addr add 10.1.1.50/24 dev "$(if_of db1)"

echo "== web1 -> web2 (same network)"
ip netns exec "$(ns_of web1)" ping -c 3 -i 0.2 10.1.1.12 | tail -2
echo "== web2 -> web1"
ip netns exec "$(ns_of web2)" ping -c 3 -i 0.2 10.1.1.11 | tail -2
echo "== db1 -> web1 (other network, even with a web address): must fail"
if ip netns exec "$(ns_of db1)" ping -c 2 -W 1 10.1.1.11 >/dev/null 2>&1; then
    echo "   UNEXPECTED: db1 reached web1"; exit 1
else
    echo "   blocked: web frames never enter db, and db1's port security drops its foreign source (spoofed_ip)"
fi

echo "== iperf3 web1 -> web2 through vrouter (5 s, one TCP stream)"
ip netns exec "$(ns_of web2)" iperf3 -s -1 >/dev/null 2>&1 &
for _ in $(seq 20); do   # until the server listens
    sleep 0.25
    if out=$(ip netns exec "$(ns_of web1)" iperf3 -c 10.1.1.12 -t 5 -f g 2>&1); then break; fi
done
echo "$out" | grep -E "sender|receiver"

echo "== vrouter ctl show ports"
$VR ctl -s "$sock" show ports
echo "== vrouter ctl show fdb"
$VR ctl -s "$sock" show fdb
echo "== vrouter ctl show stats"
$VR ctl -s "$sock" show stats
echo "== not built yet: DHCP, DNS, routing between networks, NAT, forwards, load balancing"
echo "   (they arrive as pipeline stages; conf/vrouter.toml documents their keys)"
echo "== done; cleaning up"
