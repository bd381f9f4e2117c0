#!/usr/bin/env bash
# Soak: mixed load against one vrouter for SOAK_SECS (default 600) while its config changes
# under it, then a summary table; exit 1 if anything it checks broke.
#   account:  web 10.1.1.0/24 (a1 10.1.1.11 reserved; a2 a DHCP client with 60 s leases), db
#             10.1.2.0/24 (b1 10.1.2.11); public 203.0.113.10 on a tap into the "outside"
#             namespace (203.0.113.1, 198.51.100.5 on lo); a port forward 2222 -> a1:22; a load
#             balancer 203.0.113.10:80 -> a1:8080, b1:8080 (python HTTP servers); metrics on
#             127.0.0.1.
#   load:     iperf3 a1 -> outside for the whole run (one TCP flow the changes never touch);
#             new TCP connections b1 -> outside through source NAT and outside -> the load
#             balancer's VIP, a few per second each; udhcpc on a2 renewing every 30 s; a DNS
#             query every 0.5 s; `ctl apply` every APPLY_SECS (5) alternating two configs (the
#             second adds a forward and a firewall rule on another address); a capture of 50
#             frames every 10 s; a metrics scrape every 2 s.
#   checks:   the iperf3 flow never stalls (no 1 s interval without bytes) and ends cleanly;
#             per-port counters in the scrapes never go down across the changes; RSS and open
#             fds stay bounded after a 20 s warm-up (RSS within +25 % and +16 MiB, fds within
#             +8); every apply succeeds; fewer than 1 % of new connections fail; no DHCP NAK.
# Run as root:  SOAK_SECS=120 bash scripts/soak.sh
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null && exec sudo -E bash "$0" "$@"
    echo "scripts/soak.sh needs root" >&2; exit 1
fi
source scripts/deps.sh
export PATH="$HOME/.cargo/bin:$PATH"
SOAK_SECS=${SOAK_SECS:-600}
APPLY_SECS=${APPLY_SECS:-5}
VR=${VR:-}
if [ -z "$VR" ]; then cargo build --release --locked -q; VR=$PWD/target/release/vrouter; fi

id=$$
w=$(mktemp -d /tmp/vrouter-soak.XXXXXX)
ns_a1=vs$id-a1 ns_a2=vs$id-a2 ns_b1=vs$id-b1 ns_out=vs$id-o
all_ns="$ns_a1 $ns_a2 $ns_b1 $ns_out"
pids=() vr_pid=""
cleanup() {
    set +e
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
    [ -n "$vr_pid" ] && kill "$vr_pid" 2>/dev/null && wait "$vr_pid" 2>/dev/null
    for n in $all_ns; do
        for p in $(ip netns pids "$n" 2>/dev/null); do kill "$p" 2>/dev/null; done
        ip netns del "$n" 2>/dev/null
    done
    rm -rf "$w"
}
trap cleanup EXIT
metrics=$(( 30000 + id % 20000 ))

config() { # extra -> config text
    cat <<TOML
[router]
name = "soak$id"
control_socket = "$w/ctl.sock"
state_dir = "$w/state"
metrics_listen = "127.0.0.1:$metrics"
[[network]]
name = "web"
cidr = "10.1.1.0/24"
gateway = "10.1.1.1"
dhcp_range = ["10.1.1.100", "10.1.1.150"]
lease_secs = 60
domain = "soak.internal"
[[network]]
name = "db"
cidr = "10.1.2.0/24"
gateway = "10.1.2.1"
[[port]]
name = "a1"
network = "web"
kind = "tap"
ifname = "vs$id-a1"
mac = "52:54:00:77:01:11"
ip = "10.1.1.11"
hostname = "a1"
[[port]]
name = "a2"
network = "web"
kind = "tap"
ifname = "vs$id-a2"
mac = "52:54:00:77:01:12"
[[port]]
name = "b1"
network = "db"
kind = "tap"
ifname = "vs$id-b1"
mac = "52:54:00:77:02:11"
ip = "10.1.2.11"
[public]
kind = "tap"
ifname = "vs$id-p"
ips = ["203.0.113.10/24", "203.0.113.11/24"]
gateway = "203.0.113.1"
source_nat_ip = "203.0.113.10"
[[port_forward]]
public_ip = "203.0.113.10"
protocol = "tcp"
public_port = "2222"
private_ip = "10.1.1.11"
private_port = "22"
[[load_balancer]]
name = "web"
public_ip = "203.0.113.10"
protocol = "tcp"
port = 80
algorithm = "roundrobin"
backends = [{ ip = "10.1.1.11", port = 8080 }, { ip = "10.1.2.11", port = 8080 }]
$1
TOML
}
config "" >"$w/a.toml"
config '[[port_forward]]
public_ip = "203.0.113.11"
protocol = "tcp"
public_port = "2223"
private_ip = "10.1.2.11"
private_port = "22"
[[firewall]]
public_ip = "203.0.113.11"
protocol = "tcp"
ports = "2223"
sources = ["198.51.100.0/24"]' >"$w/b.toml"
cp "$w/a.toml" "$w/vrouter.toml"
"$VR" run -c "$w/vrouter.toml" 2>"$w/vrouter.log" &
vr_pid=$!
for _ in $(seq 100); do [ -S "$w/ctl.sock" ] && break; sleep 0.05; done
[ -S "$w/ctl.sock" ] || { echo "soak: vrouter did not start" >&2; cat "$w/vrouter.log" >&2; exit 1; }
ctl() { "$VR" ctl -s "$w/ctl.sock" "$@"; }

guest() { # ns tap [addr gw]
    ip netns add "$1"; ip netns exec "$1" sysctl -qw net.ipv6.conf.all.disable_ipv6=1
    ip link set "$2" netns "$1"; ip -n "$1" link set lo up; ip -n "$1" link set "$2" up
    if [ -n "${3:-}" ]; then ip -n "$1" addr add "$3" dev "$2"; ip -n "$1" route add default via "$4"; fi
}
guest "$ns_a1" "vs$id-a1" 10.1.1.11/24 10.1.1.1
guest "$ns_a2" "vs$id-a2"
guest "$ns_b1" "vs$id-b1" 10.1.2.11/24 10.1.2.1
ip netns add "$ns_out"; ip netns exec "$ns_out" sysctl -qw net.ipv6.conf.all.disable_ipv6=1
ip link set "vs$id-p" netns "$ns_out"; ip -n "$ns_out" link set lo up
ip -n "$ns_out" addr add 203.0.113.1/24 dev "vs$id-p"; ip -n "$ns_out" link set "vs$id-p" up
ip -n "$ns_out" addr add 198.51.100.5/32 dev lo

# Servers: HTTP on the backends and outside, iperf3 outside.
srv() { ip netns exec "$1" python3 -m http.server --bind "$2" "$3" >/dev/null 2>&1 & pids+=($!); }
srv "$ns_a1" 10.1.1.11 8080; srv "$ns_b1" 10.1.2.11 8080; srv "$ns_out" 198.51.100.5 80
ip netns exec "$ns_out" iperf3 -s -B 198.51.100.5 >/dev/null 2>&1 & pids+=($!)
listening() { # ns addr:port -> waits until something listens there
    for _ in $(seq 100); do ip netns exec "$1" ss -ltn | grep -q " $2 " && return 0; sleep 0.1; done
    echo "soak: nothing listens on $2 in $1" >&2; return 1
}
listening "$ns_a1" 10.1.1.11:8080; listening "$ns_b1" 10.1.2.11:8080
listening "$ns_out" 198.51.100.5:80; listening "$ns_out" 198.51.100.5:5201
# DHCP on a2 (renews every 30 s, runs for the whole soak).
cat >"$w/udhcpc.sh" <<'EOS'
#!/bin/sh
case "$1" in bound|renew) ip addr flush dev "$interface"; ip addr add "$ip/$mask" dev "$interface"; [ -n "$router" ] && ip route replace default via "$router" ;; esac
exit 0
EOS
chmod +x "$w/udhcpc.sh"
ip netns exec "$ns_a2" busybox udhcpc -f -i "vs$id-a2" -s "$w/udhcpc.sh" -x hostname:a2 >"$w/udhcpc.log" 2>&1 & pids+=($!)

# The long flow.
ip netns exec "$ns_a1" iperf3 -c 198.51.100.5 -t "$SOAK_SECS" -i 1 -J >"$w/iperf.json" 2>"$w/iperf.err" & iperf_pid=$!
# Connection loops: "ok" or "fail" per attempt.
conn_loop() { # ns url out
    ip netns exec "$1" python3 - "$2" "$3" "$SOAK_SECS" <<'PY' &
import sys, time, urllib.request
url, out, secs = sys.argv[1], sys.argv[2], float(sys.argv[3])
ok = fail = 0
end = time.monotonic() + secs
while time.monotonic() < end:
    try:
        urllib.request.urlopen(url, timeout=3).read()
        ok += 1
    except Exception:
        fail += 1
    open(out, "w").write(f"{ok} {fail}\n")
    time.sleep(0.2)
PY
    pids+=($!)
}
conn_loop "$ns_b1" http://198.51.100.5/ "$w/nat.count"
conn_loop "$ns_out" http://203.0.113.10/ "$w/lb.count"

t0=$(date +%s)
dns_ok=0 dns_fail=0 applies=0 apply_fail=0 caps=0 scrapes=0 mono_fail=0 samples=()
next_apply=$((t0 + APPLY_SECS)) next_cap=$((t0 + 10)) next_scrape=$t0 next_sample=$t0 which=b
: >"$w/scrapes"
while [ $(( $(date +%s) - t0 )) -lt "$SOAK_SECS" ]; do
    now=$(date +%s)
    if ip netns exec "$ns_a1" dig +short +time=1 +tries=1 @10.1.1.1 a1.soak.internal | grep -q 10.1.1.11; then dns_ok=$((dns_ok + 1)); else dns_fail=$((dns_fail + 1)); fi
    if [ "$now" -ge "$next_apply" ]; then
        if ctl apply -f "$w/$which.toml" >>"$w/apply.log" 2>&1; then applies=$((applies + 1)); else apply_fail=$((apply_fail + 1)); fi
        [ "$which" = b ] && which=a || which=b
        next_apply=$((now + APPLY_SECS))
    fi
    if [ "$now" -ge "$next_cap" ]; then
        timeout 10 "$VR" ctl -s "$w/ctl.sock" capture a1 -c 50 -w /dev/null >/dev/null 2>&1 && caps=$((caps + 1))
        next_cap=$((now + 10))
    fi
    if [ "$now" -ge "$next_scrape" ]; then
        python3 - "$metrics" >>"$w/scrapes" <<'PY' && scrapes=$((scrapes + 1))
import re, sys, urllib.request
body = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=3).read().decode()
vals = {}
for m in re.finditer(r'^(vrouter_port_(?:receive|transmit)(?:_packets)?(?:_bytes)?_total)\{port="([^"]+)"[^}]*\} (\S+)$', body, re.M):
    vals[f"{m.group(1)}/{m.group(2)}"] = float(m.group(3))
print(" ".join(f"{k}={v:.0f}" for k, v in sorted(vals.items())))
PY
        next_scrape=$((now + 2))
    fi
    if [ "$now" -ge "$next_sample" ]; then
        rss=$(awk '/VmRSS/ { print $2 }' "/proc/$vr_pid/status")
        fds=$(ls "/proc/$vr_pid/fd" | wc -l)
        samples+=("$((now - t0)) $rss $fds")
        next_sample=$((now + 5))
    fi
    sleep 0.5
done
wait "$iperf_pid"; iperf_rc=$?
sleep 1
read -r nat_ok nat_fail <"$w/nat.count"
read -r lb_ok lb_fail <"$w/lb.count"
leases=$(ctl show leases --json)
ctl show stats --json >"$w/stats.json"
ctl show lb --json >"$w/lb.json" 2>/dev/null || true
printf '%s\n' "${samples[@]}" >"$w/samples"
python3 - "$w" "$SOAK_SECS" "$iperf_rc" "$dns_ok" "$dns_fail" "$applies" "$apply_fail" "$caps" "$nat_ok" "$nat_fail" "$lb_ok" "$lb_fail" "$leases" <<'PY'
import json, sys
w, secs, iperf_rc = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
dns_ok, dns_fail, applies, apply_fail, caps, nat_ok, nat_fail, lb_ok, lb_fail = map(int, sys.argv[4:13])
leases = json.loads(sys.argv[13])
bad = []
try:
    ip = json.load(open(f"{w}/iperf.json"))
    ivals = [i["sum"]["bits_per_second"] for i in ip["intervals"]]
    stalls = sum(1 for b in ivals if b == 0)
    gbps = ip["end"]["sum_received"]["bits_per_second"] / 1e9
    retr = ip["end"]["sum_sent"].get("retransmits", 0)
except Exception as e:
    ivals, stalls, gbps, retr = [], -1, 0.0, -1
    bad.append(f"iperf3 result unreadable: {e}")
if iperf_rc != 0 or stalls != 0 or len(ivals) < secs - 2:
    bad.append(f"the long flow broke: exit {iperf_rc}, {stalls} stalled intervals, {len(ivals)} intervals")
# Counters never go down.
prev, mono = {}, 0
for line in open(f"{w}/scrapes"):
    for kv in line.split():
        k, v = kv.split("=")
        v = float(v)
        if k in prev and v < prev[k]:
            mono += 1
        prev[k] = v
if mono:
    bad.append(f"{mono} counter(s) went down between scrapes")
scrapes = sum(1 for _ in open(f"{w}/scrapes"))
samples = [tuple(map(int, l.split())) for l in open(f"{w}/samples") if l.strip()]
warm = [s for s in samples if s[0] >= 20] or samples
rss0, fds0 = warm[0][1], warm[0][2]
rss_max = max(s[1] for s in warm); fds_max = max(s[2] for s in warm)
if rss_max > rss0 * 1.25 + 16 * 1024:
    bad.append(f"RSS grew from {rss0} to {rss_max} KiB")
if fds_max > fds0 + 8:
    bad.append(f"open fds grew from {fds0} to {fds_max}")
if apply_fail:
    bad.append(f"{apply_fail} apply(s) failed")
for name, ok, fail in (("source NAT", nat_ok, nat_fail), ("load balancer", lb_ok, lb_fail)):
    if ok + fail == 0 or fail > 0.01 * (ok + fail):
        bad.append(f"{name}: {fail} of {ok + fail} new connections failed")
c = leases.get("counters", {})
if c.get("naks", 0):
    bad.append(f"{c['naks']} DHCP NAK(s)")
rows = [
    ("duration", f"{secs} s"),
    ("iperf3 a1 -> outside", f"{gbps:.2f} Gbit/s, {len(ivals)} intervals, {stalls} stalled, {retr} retransmits"),
    ("new connections, source NAT", f"{nat_ok} ok, {nat_fail} failed"),
    ("new connections, load balancer", f"{lb_ok} ok, {lb_fail} failed"),
    ("DNS queries", f"{dns_ok} ok, {dns_fail} failed"),
    ("DHCP", f"{c.get('requests', 0)} requests, {c.get('acks', 0)} ACKs, {c.get('naks', 0)} NAKs"),
    ("ctl apply (alternating configs)", f"{applies} ok, {apply_fail} failed"),
    ("captures of 50 frames", f"{caps}"),
    ("metric scrapes", f"{scrapes}, {mono} counter decreases"),
    ("RSS after warm-up (KiB)", f"{rss0} -> max {rss_max}"),
    ("open fds after warm-up", f"{fds0} -> max {fds_max}"),
    ("drops by reason (all ports)", json.dumps(json.load(open(f"{w}/stats.json"))["totals"]["drops"])),
    ("load balancer backends", ", ".join(f"{b['ip']}:{b['port']} {b['state']} total {b['total']}" for l in json.load(open(f"{w}/lb.json")) for b in l["backends"])),
]
print()
print("== soak ==")
for k, v in rows:
    print(f"{k:34s} {v}")
print("result: " + ("ok" if not bad else "FAILED: " + "; ".join(bad)))
sys.exit(1 if bad else 0)
PY
