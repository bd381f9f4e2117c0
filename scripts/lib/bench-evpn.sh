#!/usr/bin/env bash
# BGP EVPN control plane: vrouter as a VTEP beside FRR on a Linux kernel VTEP, both clients of
# one FRR route reflector, in one run.
#   underlay  ee<pid>-ul: a bridge, 192.0.2.0/24
#   rr        ee<pid>-rr 192.0.2.1: FRR bgpd, route reflector (`bgp listen range`)
#   vrouter   ee<pid>-ha 192.0.2.10: vrouter, network web (vni 5001), a guest port whose
#             namespace ee<pid>-ga injects frames from many source MACs
#   kernel    ee<pid>-hk 192.0.2.12: VXLAN device + bridge + FRR (zebra, bgpd,
#             advertise-all-vni); namespace ee<pid>-gk injects frames into the bridge
#   probe     ee<pid>-hp 192.0.2.50: scripts/lib/bgp-peer.py, a scripted RR client that
#             advertises routes and timestamps every route it is sent
# Measures, for vrouter and for FRR+kernel side by side:
#   - learning: the probe advertises N (ROUTES, default 5000) type-2 routes; time until each
#     VTEP holds them (vrouter: `show bgp` routes in and `show evpn` MACs; FRR: the neighbour's
#     prefixes received and the kernel VXLAN FDB), as routes per second;
#   - advertising: N frames from N new source MACs into each VTEP's guest side; time from the
#     first frame until the probe (through the reflector) has all N routes, routes per second;
#   - a new MAC to its route at the probe: one frame from a new MAC, median of 5 (ms);
#   - session loss to withdrawal at the probe: a clean stop (vrouter SIGTERM, bgpd SIGTERM) and
#     kill -9 (then the reflector's hold time, 9 s, decides).
# Called by scripts/bench.sh (NO_EVPN=1 skips it); also on its own as root:
#   ROUTES=2000 bash scripts/lib/bench-evpn.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
[ "$(id -u)" = 0 ] || { echo "scripts/lib/bench-evpn.sh needs root" >&2; exit 1; }
VR=${VR:-$PWD/target/release/vrouter}
ROUTES=${ROUTES:-5000}
source scripts/lib/bench-common.sh
for c in python3 vtysh /usr/lib/frr/bgpd /usr/lib/frr/zebra bridge; do
    command -v "$c" >/dev/null || [ -x "$c" ] || { echo "bench-evpn: $c is missing (run scripts/deps.sh)" >&2; exit 1; }
done

id=$$
work=$(mktemp -d /tmp/vrouter-bench-evpn.XXXXXX)
chmod 755 "$work"
ul=ee$id-ul rr=ee$id-rr ha=ee$id-ha hk=ee$id-hk hp=ee$id-hp ga=ee$id-ga gk=ee$id-gk
all_ns="$ga $gk $ha $hk $hp $rr $ul"
vr_pid="" frr_pids="" peer_pid=""
cleanup() {
    set +e
    exec 7>&- 2>/dev/null
    [ -n "$peer_pid" ] && kill "$peer_pid" 2>/dev/null
    [ -n "$vr_pid" ] && kill "$vr_pid" 2>/dev/null && wait "$vr_pid" 2>/dev/null
    for p in $frr_pids; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
    del_namespaces $all_ns
    rm -rf "$work"
}
trap cleanup EXIT

mkns() { ip netns add "$1"; ip -n "$1" link set lo up; ip netns exec "$1" sysctl -qw net.ipv6.conf.all.disable_ipv6=1; }
host() { # ns addr: a host on the underlay bridge
    mkns "$1"
    ip link add "${1}u" netns "$1" type veth peer name "${1}b" netns "$ul"
    ip -n "$ul" link set "${1}b" master br0 up
    ip -n "$1" addr add "$2/24" dev "${1}u"
    ip -n "$1" link set "${1}u" up
}
now() { python3 -c 'import time; print("%.6f" % time.monotonic())'; }
# FRR daemons of one host, everything in $work/frr-TAG.
frr_start() { # ns tag zebra(0|1)
    local d=$work/frr-$2
    mkdir -p "$d"
    cat >"$d/frr.conf"
    chown -R frr:frr "$d"
    local common="-f $d/frr.conf -z $d/zserv.api --vty_socket $d -P 0 -u frr -g frr --log file:$d/log"
    if [ "$3" = 1 ]; then
        ip netns exec "$1" /usr/lib/frr/zebra $common -i "$d/zebra.pid" >/dev/null 2>&1 &
        frr_pids="$frr_pids $!"
        for _ in $(seq 100); do [ -S "$d/zserv.api" ] && break; sleep 0.1; done
    fi
    ip netns exec "$1" /usr/lib/frr/bgpd $common -i "$d/bgpd.pid" $([ "$3" = 1 ] || echo -Z) >/dev/null 2>&1 &
    frr_pids="$frr_pids $!"
    eval "bgpd_$2=$!"
    for _ in $(seq 100); do vtysh_ "$1" "$2" "show bgp summary" >/dev/null 2>&1 && break; sleep 0.1; done
}
vtysh_() { ip netns exec "$1" vtysh --vty_socket "$work/frr-$2" -c "$3"; }
# Waits (polling every 20 ms, at most $3 s) until command $1 prints a number >= $2; prints the
# seconds since $4 (default: the call), or "-".
wait_count() {
    local cmd=$1 want=$2 limit=$3 t0=${4:-$(now)} n
    while :; do
        n=$(eval "$cmd" 2>/dev/null || echo 0)
        [ "${n:-0}" -ge "$want" ] 2>/dev/null && { python3 -c "import sys; print('%.3f' % ($(now)-$t0))"; return; }
        python3 -c "import sys; sys.exit(0 if $(now)-$t0 < $limit else 1)" || { echo -; return; }
        sleep 0.02
    done
}
# Probe log helpers: lines "<t> reach <mac> <nh>" / "<t> withdraw <mac>".
probe_count() { grep -c " reach 02:$1" "$work/probe.log" || true; }
probe_first_after() { # t0 kind prefix -> seconds from t0 to the first such line after t0, or "-"
    python3 - "$1" "$2" "$3" "$work/probe.log" <<'EOF'
import sys
t0, kind, prefix, path = float(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
for l in open(path):
    p = l.split()
    if len(p) >= 3 and p[1] == kind and p[2].startswith(prefix) and float(p[0]) >= t0:
        print("%.3f" % (float(p[0]) - t0)); break
else:
    print("-")
EOF
}
probe_nth_after() { # t0 prefix n -> seconds from t0 until n reach lines for prefix, or "-"
    python3 - "$1" "$2" "$3" "$work/probe.log" <<'EOF'
import sys
t0, prefix, n, path = float(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
seen = set()
for l in open(path):
    p = l.split()
    if len(p) >= 3 and p[1] == "reach" and p[2].startswith(prefix) and float(p[0]) >= t0:
        seen.add(p[2])
        if len(seen) >= n:
            print("%.3f" % (float(p[0]) - t0)); break
else:
    print("-")
EOF
}
# N frames from N source MACs PREFIX:xx:xx:xx (broadcast ARP-like, ethertype 0x88b5) on IFACE.
inject() { # ns iface prefix(2 bytes hex, e.g. aa01) n
    ip netns exec "$1" python3 - "$2" "$3" "$4" <<'EOF'
import socket, sys, time
iface, pre, n = sys.argv[1], bytes.fromhex(sys.argv[2]), int(sys.argv[3])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((iface, 0))
for i in range(n):
    src = bytes([0x02]) + pre + bytes([(i >> 16) & 255, (i >> 8) & 255, i & 255])
    s.send(b"\xff" * 6 + src + b"\x88\xb5" + b"\x00" * 46)
    # Paced (the same for both sides): a tap's queue holds a few hundred frames.
    if i % 100 == 99:
        time.sleep(0.002)
EOF
}

mkns "$ul"
ip -n "$ul" link add br0 type bridge
ip -n "$ul" link set br0 up
host "$rr" 192.0.2.1
host "$ha" 192.0.2.10
host "$hk" 192.0.2.12
host "$hp" 192.0.2.50

frr_start "$rr" rr 0 <<'EOF'
frr defaults datacenter
hostname rr
router bgp 65000
 bgp router-id 192.0.2.1
 no bgp default ipv4-unicast
 bgp cluster-id 192.0.2.1
 neighbor fabric peer-group
 neighbor fabric remote-as 65000
 bgp listen range 192.0.2.0/24 peer-group fabric
 address-family l2vpn evpn
  neighbor fabric activate
  neighbor fabric route-reflector-client
 exit-address-family
EOF

# The kernel VTEP.
ip -n "$hk" link add vxlan5001 type vxlan id 5001 dstport 4789 local 192.0.2.12 nolearning dev "${hk}u"
ip -n "$hk" link add br5001 type bridge
ip -n "$hk" link set vxlan5001 master br5001 up
ip -n "$hk" link set br5001 up
mkns "$gk"
ip -n "$hk" link add kv type veth peer name kg netns "$gk"
ip -n "$hk" link set kv master br5001 up
ip -n "$gk" link set kg up
frr_start "$hk" k 1 <<'EOF'
frr defaults datacenter
hostname k
router bgp 65000
 bgp router-id 192.0.2.12
 no bgp default ipv4-unicast
 neighbor 192.0.2.1 remote-as 65000
 address-family l2vpn evpn
  neighbor 192.0.2.1 activate
  advertise-all-vni
 exit-address-family
EOF

# vrouter.
mkns "$ga"
cat >"$work/vrouter.toml" <<EOF
[router]
name = "ee$id"
control_socket = "$work/ctl.sock"
state_dir = "$work/state"
mac_table_size = $((ROUTES * 3 + 100))
mac_limit_per_port = $((ROUTES * 2 + 100))

[[network]]
name = "web"
cidr = "10.1.1.0/24"
vni = 5001

[[port]]
name = "ga"
network = "web"
kind = "tap"
ifname = "ee$id-t"
mac = "52:54:00:ee:00:01"
port_security = false

[vxlan]
local = "192.0.2.10"

[bgp]
asn = 65000
max_routes = $((ROUTES * 4))

[[bgp.neighbor]]
address = "192.0.2.1"
remote_as = 65000
EOF
start_vrouter() {
    ip netns exec "$ha" "$VR" run -c "$work/vrouter.toml" 2>>"$work/vrouter.log" &
    vr_pid=$!
    for _ in $(seq 100); do [ -S "$work/ctl.sock" ] && break; sleep 0.05; done
}
ctl() { "$VR" ctl -s "$work/ctl.sock" "$@"; }
vr_routes_in() { ctl show bgp --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["neighbors"][0]["routes_in"])'; }
vr_state() { ctl show bgp --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["neighbors"][0]["state"])'; }
vr_fdb_evpn() { ctl show fdb --json | python3 -c 'import json,sys; print(sum(1 for r in json.load(sys.stdin) if r["type"] == "evpn" and r["mac"].startswith("02:be")))'; }
k_pfx() { vtysh_ "$hk" k "show bgp l2vpn evpn summary json" | python3 -c 'import json,sys; j=json.load(sys.stdin); print(sum(p.get("pfxRcd",0) for p in j.get("peers",{}).values()))'; }
k_fdb() { ip netns exec "$hk" bridge fdb show dev vxlan5001 | grep -c "^02:be" || true; }
attach_guest() { # vrouter made the tap in its host namespace: into the guest's
    for _ in $(seq 40); do ip -n "$ha" link show "ee$id-t" >/dev/null 2>&1 && break; sleep 0.05; done
    ip -n "$ha" link set "ee$id-t" netns "$ga"
    ip -n "$ga" link set "ee$id-t" up
}
start_vrouter
attach_guest

# The probe.
mkfifo "$work/probe.in"
ip netns exec "$hp" python3 scripts/lib/bgp-peer.py 192.0.2.50 192.0.2.1 <"$work/probe.in" >"$work/probe.log" 2>&1 &
peer_pid=$!
exec 7>"$work/probe.in"
for _ in $(seq 200); do
    grep -q established "$work/probe.log" && [ "$(vr_state 2>/dev/null)" = established ] && [ "$(k_pfx 2>/dev/null || echo 0)" -ge 1 ] && break
    sleep 0.1
done
[ "$(vr_state)" = established ] || { echo "bench-evpn: vrouter's session did not come up" >&2; tail "$work/vrouter.log" >&2; exit 1; }
sleep 1
base_vr=$(vr_routes_in)
base_k=$(k_pfx)

echo "== EVPN: $ROUTES type-2 routes, vrouter beside FRR 8.4 + kernel VXLAN, one FRR route reflector =="
# 1. Learning.
# Each side measured on its own send (a withdrawal in between), polled alone.
withdraw_all() {
    echo "withdraw $ROUTES" >&7
    wait_count "echo \$(( $base_k + $ROUTES - \$(k_pfx) ))" "$ROUTES" 60 >/dev/null
    wait_count "echo \$(( $base_vr + $ROUTES - \$(vr_routes_in) ))" "$ROUTES" 60 >/dev/null
    wait_count "echo \$(( $ROUTES - \$(k_fdb) ))" "$ROUTES" 60 >/dev/null
}
t=$(now); echo "advertise $ROUTES" >&7
learn_vr=$(wait_count "echo \$((\$(vr_routes_in) - $base_vr))" "$ROUTES" 60 "$t")
withdraw_all
t=$(now); echo "advertise $ROUTES" >&7
learn_vr_fdb=$(wait_count vr_fdb_evpn "$ROUTES" 60 "$t")
withdraw_all
t=$(now); echo "advertise $ROUTES" >&7
learn_k=$(wait_count "echo \$((\$(k_pfx) - $base_k))" "$ROUTES" 60 "$t")
withdraw_all
t=$(now); echo "advertise $ROUTES" >&7
learn_k_fdb=$(wait_count k_fdb "$ROUTES" 60 "$t")
rate() { [ "$1" = - ] && echo - || python3 -c "print('%.0f' % ($ROUTES/max($1,0.001)))"; }
printf "%-44s %12s %12s\n" "" vrouter "FRR+kernel"
printf "%-44s %12s %12s\n" "learn: all routes held (s)" "$learn_vr" "$learn_k"
printf "%-44s %12s %12s\n" "learn: routes/s" "$(rate "$learn_vr")" "$(rate "$learn_k")"
printf "%-44s %12s %12s\n" "learn: all in the forwarding table (s)" "$learn_vr_fdb" "$learn_k_fdb"

# 2. Advertising: N new MACs on each VTEP's guest side.
t0=$(now); inject "$ga" "ee$id-t" aa01 "$ROUTES"
for _ in $(seq 600); do [ "$(probe_count aa:01)" -ge "$ROUTES" ] && break; sleep 0.1; done
adv_vr=$(probe_nth_after "$t0" 02:aa:01 "$ROUTES")
t0=$(now); inject "$gk" kg aa02 "$ROUTES"
for _ in $(seq 600); do [ "$(probe_count aa:02)" -ge "$ROUTES" ] && break; sleep 0.1; done
adv_k=$(probe_nth_after "$t0" 02:aa:02 "$ROUTES")
printf "%-44s %12s %12s\n" "advertise: all at the probe via the RR (s)" "$adv_vr" "$adv_k"
printf "%-44s %12s %12s\n" "advertise: routes/s" "$(rate "$adv_vr")" "$(rate "$adv_k")"

# 3. One new MAC to its route at the probe, median of 5.
one_vr=() one_k=()
for i in 1 2 3 4 5; do
    t0=$(now); inject "$ga" "ee$id-t" "b$i"01 1
    for _ in $(seq 100); do [ "$(probe_count "b$i:01")" -ge 1 ] && break; sleep 0.02; done
    v=$(probe_first_after "$t0" reach "02:b$i:01"); [ "$v" != - ] && one_vr+=("$(python3 -c "print($v*1000)")")
    t0=$(now); inject "$gk" kg "c$i"01 1
    for _ in $(seq 100); do [ "$(probe_count "c$i:01")" -ge 1 ] && break; sleep 0.02; done
    v=$(probe_first_after "$t0" reach "02:c$i:01"); [ "$v" != - ] && one_k+=("$(python3 -c "print($v*1000)")")
done
MEDIAN_FMT=%.0f
printf "%-44s %12s %12s\n" "a new MAC to its route at the probe (ms)" "$(median "${one_vr[@]}")" "$(median "${one_k[@]}")"

# 4. Session loss to withdrawal at the probe.
t0=$(now); kill -TERM "$vr_pid"; wait "$vr_pid" 2>/dev/null || true; vr_pid=""
for _ in $(seq 100); do [ "$(probe_first_after "$t0" withdraw 02:aa:01)" != - ] && break; sleep 0.05; done
stop_vr=$(probe_first_after "$t0" withdraw 02:aa:01)
t0=$(now); kill -TERM "$bgpd_k"; wait "$bgpd_k" 2>/dev/null || true
for _ in $(seq 100); do [ "$(probe_first_after "$t0" withdraw 02:aa:02)" != - ] && break; sleep 0.05; done
stop_k=$(probe_first_after "$t0" withdraw 02:aa:02)
printf "%-44s %12s %12s\n" "clean stop to withdrawal at the probe (s)" "$stop_vr" "$stop_k"
# A fresh vrouter whose 20 new MACs (prefix $2) the probe has; then the fault (the rest of
# the arguments), and into variable $1 the seconds until the probe hears the first withdrawal
# of them. (Not in a $(...) subshell: vrouter is started here and its pid must stay known.)
withdrawal_after() { # var prefix(4 hex) fault-command...
    local var=$1 pre=$2 t0 t1 m
    shift 2
    m="02:${pre:0:2}:${pre:2:2}"
    start_vrouter
    attach_guest
    for _ in $(seq 100); do [ "$(vr_state 2>/dev/null)" = established ] && break; sleep 0.1; done
    t1=$(now); inject "$ga" "ee$id-t" "$pre" 20
    for _ in $(seq 100); do [ "$(probe_nth_after "$t1" "$m" 20)" != - ] && break; sleep 0.05; done
    t0=$(now); "$@"
    for _ in $(seq 300); do [ "$(probe_first_after "$t0" withdraw "$m")" != - ] && break; sleep 0.05; done
    printf -v "$var" %s "$(probe_first_after "$t0" withdraw "$m")"
}
kill_9() { kill -KILL "$vr_pid"; wait "$vr_pid" 2>/dev/null || true; vr_pid=""; }
# kill -9 closes the process's sockets (the kernel sends FIN): the reflector withdraws at once.
withdrawal_after kill_vr d001 kill_9
printf "%-44s %12s %12s\n" "kill -9 to withdrawal at the probe (s)" "$kill_vr" "-"
# A host lost (its underlay link down, no FIN): the reflector's hold timer (9 s) decides.
withdrawal_after lost_vr d101 ip -n "$ha" link set "${ha}u" down
printf "%-44s %12s %12s\n" "host lost to withdrawal at the probe (s)" "$lost_vr" "(the RR's hold)"
echo "(the probe, a scripted iBGP client of the same reflector, timestamps every route it is sent)"
