#!/usr/bin/env bash
# The main job: a demo account on this machine. Installs what it needs, builds vrouter, starts
# it on conf/demo.toml (two "web" guests and one "db" guest, each a network namespace whose NIC
# is the kernel side of a vrouter tap, and an "outside" namespace on the public tap), and shows:
# guests pinging each other on one network and across networks through the router, the networks
# isolated at L2, guests reaching the outside through source NAT, the outside reaching guests
# through a port forward and a static NAT, a load balancer spreading HTTP requests over the two
# web guests in turn and taking one out when its health check fails (and back when it passes),
# security groups at work (db1 admits its database port from web's members only: the outside is
# refused even through a port forward, and the drops are counted), iperf3 results, a live
# change (a new VM and a new forward applied while an iperf3 transfer keeps going), and the
# control socket's tables. Cleans up everything it made.
# Run as root:  bash scripts/demo.sh  (another user: it re-runs itself with sudo)
set -euo pipefail
cd "$(dirname "$0")/.."
# Root runs it as it is; another user through sudo, where there is one.
if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null && exec sudo -E bash "$0" "$@"
    echo "scripts/demo.sh needs root (taps, namespaces) (and there is no sudo here)" >&2
    exit 1
fi
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
metrics_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
sed -e "s#vrd-\\([a-z0-9]*\\)#v$id-\\1#" -e "s#/run/vrouter/demo.sock#$sock#" -e "s#/var/lib/vrouter/demo#$work/state#" \
    -e "s#127.0.0.1:9464#127.0.0.1:$metrics_port#" conf/demo.toml >"$work/demo.toml"
vr_pid=""
cleanup() {
    set +e
    [ -n "$vr_pid" ] && kill "$vr_pid" 2>/dev/null && wait "$vr_pid" 2>/dev/null
    local g ns p
    for g in web1 web2 db1 web3 out; do
        ns=$(ns_of $g)
        # Servers this script started live in its namespaces only.
        for p in $(ip netns pids "$ns" 2>/dev/null); do kill "$p" 2>/dev/null; done
        ip netns del "$ns" 2>/dev/null
    done
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
fail() { echo "   FAILED: $*"; echo "--- vrouter log (tail)"; tail -20 "$work/vrouter.log"; exit 1; }

# The guests' DHCP client: busybox udhcpc, with an event script that configures the address
# and default route it was given (and prints them).
cat >"$work/udhcpc.sh" <<'SCRIPT'
#!/bin/sh
case "$1" in
  bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/$mask" dev "$interface"
    ip route replace default via "$router" dev "$interface"
    echo "   lease: $ip/$mask router $router dns $dns domain $domain mtu ${mtu:-?} hostname ${hostname:-?}"
    ;;
esac
exit 0
SCRIPT
chmod +x "$work/udhcpc.sh"
guest() { # name [hostname to send]
    local ns tap
    ns=$(ns_of "$1"); tap=$(if_of "$1")
    ip netns add "$ns"
    ip link set "$tap" netns "$ns"
    ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1
    ip -n "$ns" link set lo up
    ip -n "$ns" link set "$tap" up
    echo "   guest $1: netns $ns, NIC $tap $(ip -n "$ns" -br link show "$tap" | awk '{print $3}'), DHCP:"
    ip netns exec "$ns" busybox udhcpc -i "$tap" -f -q -n -t 5 -T 1 -s "$work/udhcpc.sh" -O mtu -O search ${2:+-x hostname:$2} \
        | grep "lease:" || fail "no lease for $1"
}
echo "== guests (network namespaces on vrouter taps), configured by vrouter's DHCP"
guest web1
guest web2
guest db1 db1
echo "== vrouter ctl show leases"
$VR ctl -s "$sock" show leases
echo "== names: web1 asks the router's DNS (10.1.1.1) for db1, web2, and db1's address backwards"
for q in db1.demo.internal web2.demo.internal; do
    echo "   $q -> $(ip netns exec "$(ns_of web1)" dig @10.1.1.1 +short "$q")"
done
db1_ip=$(ip netns exec "$(ns_of web1)" dig @10.1.1.1 +short db1.demo.internal)
[ -n "$db1_ip" ] || fail "db1 does not resolve"
echo "   $db1_ip -> $(ip netns exec "$(ns_of web1)" dig @10.1.1.1 +short -x "$db1_ip")"
echo "   nobody.demo.internal -> $(ip netns exec "$(ns_of web1)" dig @10.1.1.1 nobody.demo.internal | grep -o 'status: [A-Z]*')"
echo "== outside (a namespace on the public tap: the public gateway, and a remote host on its lo)"
out=$(ns_of out) pub=$(if_of pub)
ip netns add "$out"
ip link set "$pub" netns "$out"
ip -n "$out" link set lo up
ip -n "$out" addr add 198.51.100.5/32 dev lo
ip -n "$out" addr add 203.0.113.1/24 dev "$pub"
ip -n "$out" link set "$pub" up
echo "   outside: netns $out, NIC $pub 203.0.113.1/24, lo 198.51.100.5/32"

# One-shot TCP server: prints the peer address it saw and answers one line ({peer} is replaced).
cat >"$work/serve.py" <<'PY'
import socket, sys
port, who, reply = int(sys.argv[1]), sys.argv[2], sys.argv[3]
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", port))
s.listen(1)
s.settimeout(30)
try:
    c, (ip, p) = s.accept()
except socket.timeout:
    sys.exit(f"   [{who}] nobody connected to port {port}")
print(f"   [{who} server on port {port}] connection from {ip}:{p}", flush=True)
c.sendall((reply.replace("{peer}", ip) + "\n").encode())
c.close()
PY
srv_pid="" got=""
serve() { # guest port reply: one connection in the guest's namespace, in the background
    ip netns exec "$(ns_of "$1")" python3 "$work/serve.py" "$2" "$1" "$3" &
    srv_pid=$!
}
ask() { # guest host port: sets $got to the server's answer (retried until the server listens)
    got=""
    for _ in $(seq 30); do
        got=$(ip netns exec "$(ns_of "$1")" socat -t 3 -T 5 - "TCP:$2:$3,connect-timeout=2" </dev/null 2>/dev/null) &&
            [ -n "$got" ] && break
        got=""; sleep 0.1
    done
    [ -n "$got" ] || kill "$srv_pid" 2>/dev/null
    wait "$srv_pid" 2>/dev/null || true
}
pings() { # guest target what: three pings that must get answers
    local res
    res=$(ip netns exec "$(ns_of "$1")" ping -c 3 -i 0.2 "$2") || fail "$3: $1 cannot ping $2"
    echo "$res" | grep -m1 "ttl=" || true
    echo "$res" | tail -2
}

echo "== web1 -> web2 (same network)"
pings web1 10.1.1.12 "same network"
echo "== web2 -> web1"
pings web2 10.1.1.11 "same network"

echo "== web1 -> db1 ($db1_ip, other network: routed through the gateway 10.1.1.1, so the TTL drops by one)"
pings web1 "$db1_ip" "routing between networks"
echo "   traceroute (the router answers with time exceeded from 10.1.1.1):"
ip netns exec "$(ns_of web1)" traceroute -n -q 1 -w 1 -m 4 "$db1_ip" 2>&1 | sed 's/^/   /' || true

echo "== db1 takes a web address (10.1.1.50) and tries web1 directly at L2 (/32 route out its NIC): must fail"
db1=$(ns_of db1) db1if=$(if_of db1)
ip -n "$db1" addr add 10.1.1.50/32 dev "$db1if"
ip -n "$db1" route add 10.1.1.11/32 dev "$db1if" src 10.1.1.50
if ip netns exec "$db1" ping -c 2 -W 1 10.1.1.11 >/dev/null 2>&1; then
    fail "db1 reached web1 at L2"
else
    echo "   blocked: db1's frames never leave network db, and its port security drops the foreign source 10.1.1.50"
fi
ip -n "$db1" route del 10.1.1.11/32 dev "$db1if"
ip -n "$db1" addr del 10.1.1.50/32 dev "$db1if"

echo "== web1 -> outside (198.51.100.5) through source NAT"
pings web1 198.51.100.5 "source NAT"
serve out 8000 "{peer}"
ask web1 198.51.100.5 8000
echo "   the outside saw web1 as: ${got:-nothing}"
[ "$got" = 203.0.113.10 ] || fail "web1 should leave as the source NAT address 203.0.113.10"

echo "== outside -> 203.0.113.10:2222, forwarded to web1:22"
serve web1 22 "web1 port 22 here; you are {peer}"
ask out 203.0.113.10 2222
echo "   the outside got: ${got:-nothing}"
[[ "$got" == "web1 port 22 here"* ]] || fail "the port forward 203.0.113.10:2222 -> 10.1.1.11:22"

echo "== outside -> 203.0.113.11 (web2's static NAT), port 8080"
serve web2 8080 "web2 port 8080 here; you are {peer}"
ask out 203.0.113.11 8080
echo "   the outside got: ${got:-nothing}"
[[ "$got" == "web2 port 8080 here"* ]] || fail "the static NAT 203.0.113.11 <-> 10.1.1.12"
echo "== web2 -> outside: leaves as its static NAT address"
serve out 8001 "{peer}"
ask web2 198.51.100.5 8001
echo "   the outside saw web2 as: ${got:-nothing}"
[ "$got" = 203.0.113.11 ] || fail "web2 should leave as its static NAT address 203.0.113.11"

# Long-lived servers for the load balancer and the security groups, one thread per connection,
# on each PORT given: PORT/http answers any HTTP request with 200 and "NAME CLIENT-ADDRESS",
# a plain PORT sends "NAME port PORT here; you are CLIENT-ADDRESS". Prints "listening" once bound.
cat >"$work/servers.py" <<'PY'
import socket, sys, threading
name = sys.argv[1]
def handle(c, peer, port, http):
    c.settimeout(3)
    try:
        if http:
            req = b""
            while b"\r\n\r\n" not in req and len(req) < 8192:
                d = c.recv(1024)
                if not d:
                    break
                req += d
            body = f"{name} {peer}\n".encode()
            c.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
                      b"Connection: close\r\n\r\n" % len(body) + body)
        else:
            c.sendall(f"{name} port {port} here; you are {peer}\n".encode())
    except OSError:
        pass
    c.close()
def serve(s, port, http):
    while True:
        c, a = s.accept()
        threading.Thread(target=handle, args=(c, a[0], port, http), daemon=True).start()
for spec in sys.argv[2:]:
    port, _, kind = spec.partition("/")
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", int(port)))
    s.listen(64)
    threading.Thread(target=serve, args=(s, int(port), kind == "http"), daemon=True).start()
print("listening", flush=True)
threading.Event().wait()
PY
# HTTP client: N requests to DST:PORT from address SRC (- for any), one line each: the body of
# a 200 answer, "REFUSED" or "TIMEOUT".
cat >"$work/get.py" <<'PY'
import socket, sys
dst, port, n, src = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
for _ in range(n):
    s = socket.socket()
    s.settimeout(3)
    try:
        if src != "-":
            s.bind((src, 0))
        s.connect((dst, port))
        s.sendall(f"GET / HTTP/1.0\r\nHost: {dst}\r\n\r\n".encode())
        data = b""
        while d := s.recv(4096):
            data += d
        head, _, body = data.partition(b"\r\n\r\n")
        status = head.split(b"\r\n")[0].decode(errors="replace")
        print(body.decode().strip() if status.split()[1:2] == ["200"] else f"BAD {status}", flush=True)
    except ConnectionRefusedError:
        print("REFUSED", flush=True)
    except OSError as e:
        print("TIMEOUT", e, flush=True)
    finally:
        s.close()
PY
started=""
start_servers() { # guest port[/http]...: servers in the guest's namespace; sets $started (pid)
    local g=$1 log="$work/servers-$1.log"; shift
    ip netns exec "$(ns_of "$g")" python3 -u "$work/servers.py" "$g" "$@" >"$log" 2>&1 &
    started=$!
    for _ in $(seq 50); do grep -q listening "$log" && return; sleep 0.1; done
    cat "$log"; fail "the servers in $g did not start"
}
lb_states() { # the web-lb backends' states, in config order ("up down")
    $VR ctl -s "$sock" show lb --json |
        python3 -c 'import json,sys; print(*[b["state"] for l in json.load(sys.stdin) if l["name"]=="web-lb" for b in l["backends"]])'
}
wait_states() { # "states" seconds: until web-lb's backends are in those states; prints how long
    local t0=$SECONDS
    for _ in $(seq $(($2 * 5))); do
        [ "$(lb_states)" = "$1" ] && { echo "   web-lb backends: $1 (after $((SECONDS - t0)) s)"; return; }
        sleep 0.2
    done
    $VR ctl -s "$sock" show lb
    fail "web-lb's backends should be \"$1\", are \"$(lb_states)\""
}
answers=()
lb_requests() { # n: n HTTP requests from the outside's remote host to the VIP; sets $answers
    mapfile -t answers < <(ip netns exec "$out" python3 "$work/get.py" 203.0.113.10 80 "$1" 198.51.100.5)
    local i
    for i in "${!answers[@]}"; do
        case "${answers[$i]}" in
            web*) echo "   request $((i + 1)): answered by ${answers[$i]% *}, which saw the client as ${answers[$i]#* }" ;;
            *) echo "   request $((i + 1)): ${answers[$i]}" ;;
        esac
    done
}
count() { # who: how many of $answers came from that guest
    local a n=0
    for a in "${answers[@]}"; do [ "${a%% *}" = "$1" ] && n=$((n + 1)); done
    echo $n
}

echo "== load balancer web-lb: http://203.0.113.10/ over web1 and web2 port 8000, round robin"
echo "   health checks GET / from 10.1.1.1 every second; nothing listened on port 8000 so far: $(lb_states)"
start_servers web1 8000/http
start_servers web2 8000/http
web2_srv=$started
wait_states "up up" 15
echo "   6 requests from the outside's remote host 198.51.100.5:"
lb_requests 6
alternate=yes
for i in 1 2 3 4 5; do [ "${answers[$i]%% *}" != "${answers[$((i - 1))]%% *}" ] || alternate=no; done
[ "$(count web1)" = 3 ] && [ "$(count web2)" = 3 ] && [ $alternate = yes ] ||
    fail "round robin over two backends should alternate web1 and web2: ${answers[*]}"
for a in "${answers[@]}"; do
    [ "${a#* }" = 198.51.100.5 ] || fail "the backends should see the client's own address: $a"
done
echo "   spread: web1 $(count web1), web2 $(count web2), alternating; the backends saw the client's own address"
echo "== vrouter ctl show lb"
$VR ctl -s "$sock" show lb
echo "== web2's server stops: two failed checks take it out of web-lb"
kill "$web2_srv"; wait "$web2_srv" 2>/dev/null || true
wait_states "up down" 10
$VR ctl -s "$sock" show lb
echo "   4 more requests:"
lb_requests 4
[ "$(count web1)" = 4 ] || fail "with web2 down every request should go to web1: ${answers[*]}"
echo "   all 4 went to web1"
echo "== web2's server starts again: two good checks put it back"
start_servers web2 8000/http
wait_states "up up" 10
lb_requests 4
[ "$(count web1)" = 2 ] && [ "$(count web2)" = 2 ] || fail "web2 should be back in turn: ${answers[*]}"

sg_drops() { # port: its security_group drop counter
    $VR ctl -s "$sock" show stats --json |
        python3 -c 'import json,sys; print(sum(p.get("drops",{}).get("security_group",0) for p in json.load(sys.stdin)["ports"] if p["name"]==sys.argv[1]))' "$1"
}
try_tcp() { # guest host port tries: sets $got to the first line the server sends ("" if none)
    got=""
    for _ in $(seq "$4"); do
        got=$(ip netns exec "$(ns_of "$1")" socat -t 3 -T 3 - "TCP:$2:$3,connect-timeout=2" </dev/null 2>/dev/null) &&
            [ -n "$got" ] && return
        got=""; sleep 0.1
    done
}
echo "== security groups: web1 and web2 are in \"web\" (open), db1 in \"db\": tcp/5432 from members of"
echo "   \"web\" only, ping and traceroute from the web network, nothing else in"
[ "$db1_ip" = 10.1.2.100 ] || fail "conf/demo.toml forwards 203.0.113.10:5432 to 10.1.2.100, but db1 got $db1_ip"
start_servers db1 5432 22
before=$(sg_drops db1)
for g in web1 web2; do
    try_tcp $g "$db1_ip" 5432 30
    echo "   $g -> db1:5432: ${got:-no answer}"
    [[ "$got" == "db1 port 5432 here"* ]] || fail "$g (a member of web) should reach db1:5432"
done
try_tcp web1 "$db1_ip" 22 1
echo "   web1 -> db1:22: ${got:-no answer (dropped: the group opens 5432 only)}"
[ -z "$got" ] || fail "db1:22 should be closed to web1"
try_tcp out 203.0.113.10 5432 1
echo "   outside -> 203.0.113.10:5432, forwarded to db1:5432: ${got:-no answer (dropped: not a member of web)}"
[ -z "$got" ] || fail "the outside should not reach db1:5432"
after=$(sg_drops db1)
echo "   db1's port, drops.security_group: $before -> $after (each attempt's SYN and its retransmission)"
[ $((after - before)) -ge 2 ] || fail "db1's security group should have dropped both attempts"
$VR ctl -s "$sock" show stats --json |
    python3 -c 'import json,sys; print("   security groups in all:", ", ".join(f"{k} {v}" for k, v in json.load(sys.stdin)["security_groups"].items()))'

iperf() { # client-guest server-guest target label
    echo "== iperf3 $4 (5 s, one TCP stream)"
    ip netns exec "$(ns_of "$2")" iperf3 -s -1 >/dev/null 2>&1 &
    local spid=$! res=""
    for _ in $(seq 20); do   # until the server listens
        sleep 0.25
        if res=$(ip netns exec "$(ns_of "$1")" iperf3 -c "$3" --connect-timeout 3000 -t 5 -f g 2>&1); then break; fi
        res=""
    done
    [ -n "$res" ] || { kill "$spid" 2>/dev/null; fail "iperf3 $4"; }
    wait "$spid" 2>/dev/null || true
    echo "$res" | grep -E "sender|receiver"
}
iperf web1 web2 10.1.1.12 "web1 -> web2, same network"
iperf web1 out 198.51.100.5 "web1 -> outside through source NAT"

echo "== live change: while iperf3 runs web1 -> outside (8 s), a new VM web3 and a forward"
echo "   203.0.113.10:8080 -> web3:8000 are applied to the running router (ctl diff, ctl apply)"
cp "$work/demo.toml" "$work/demo-live.toml"
cat >>"$work/demo-live.toml" <<TOML

[[port]]
name = "web3"
network = "web"
kind = "tap"
ifname = "$(if_of web3)"
mac = "52:54:00:00:01:13"
ip = "10.1.1.13"
hostname = "web3"
security_groups = ["web"]

[[port_forward]]
public_ip = "203.0.113.10"
protocol = "tcp"
public_port = "8080"
private_ip = "10.1.1.13"
private_port = "8000"
TOML
ip netns exec "$(ns_of out)" iperf3 -s -1 >/dev/null 2>&1 &
live_srv=$!
sleep 0.5
ip netns exec "$(ns_of web1)" iperf3 -c 198.51.100.5 -t 8 -i 1 -f g >"$work/live-iperf.txt" 2>&1 &
live_cli=$!
sleep 2
$VR ctl -s "$sock" diff -f "$work/demo-live.toml" | sed 's/^/   /'
$VR ctl -s "$sock" apply -f "$work/demo-live.toml" | sed 's/^/   /' || fail "ctl apply"
guest web3
echo "   web3 resolves web1: $(ip netns exec "$(ns_of web3)" dig @10.1.1.1 +short web1.demo.internal)"
pings web3 10.1.1.11 "web3 -> web1"
serve web3 8000 "web3 port 8000 here; you are {peer}"
ask out 203.0.113.10 8080
echo "   the outside through the new forward got: ${got:-nothing}"
[[ "$got" == "web3 port 8000 here"* ]] || fail "the forward added live"
wait "$live_cli" || fail "the iperf3 transfer across the change"
wait "$live_srv" 2>/dev/null || true
echo "   the transfer, second by second (the change landed at about 2 s):"
grep -E "sec .*bits/sec" "$work/live-iperf.txt" | sed 's/^/   /'
if grep -E "^\[ *[0-9]+\] +[0-9.]+-[0-9.]+ +sec .* 0\.00 [KMG]?bits/sec" "$work/live-iperf.txt" | grep -qv sender; then
    fail "an interval of the transfer stood still"
fi
$VR ctl -s "$sock" show stats --json |
    python3 -c 'import json,sys; r=json.load(sys.stdin)["router"]; print("   flows ended by the change (reload_revoked):", r["reload_revoked"])'

echo "== metadata: web1 asks 169.254.169.254 (and the gateway) what cloud-init asks"
ns1=$(ns_of web1)
for k in instance-id local-hostname local-ipv4 public-ipv4 service-offering public-keys; do
    printf '   %-18s %s\n' "$k" "$(ip netns exec "$ns1" curl -s --max-time 3 "http://169.254.169.254/latest/meta-data/$k")"
done
echo "   user-data: $(ip netns exec "$ns1" curl -s --max-time 3 http://10.1.1.1/latest/user-data | tr '\n' ' ')"
echo "== password server: the operator sets one (stdin), web1 gets it once, then saved_password"
echo 'Demo-Pass-42' | $VR ctl -s "$sock" set-password web1
for _ in 1 2; do
    echo "   send_my_password -> $(ip netns exec "$ns1" curl -s --max-time 3 -H 'DomU_Request: send_my_password' http://10.1.1.1:8080/)"
    ip netns exec "$ns1" curl -s --max-time 3 -H 'DomU_Request: saved_password' http://10.1.1.1:8080/ >/dev/null
done
[ "$(ip netns exec "$(ns_of db1)" curl -s --max-time 3 http://169.254.169.254/latest/meta-data/instance-id)" = db1 ] || fail "db1's own metadata"
echo "== vrouter ctl show metadata"
$VR ctl -s "$sock" show metadata

echo "== vrouter ctl capture web1 --direction in -c 6 -w - | tcpdump -r -   (web1 pings web2; the LB's"
echo "   health checks to web1 show up too)"
( sleep 0.5; ip netns exec "$ns1" ping -c 6 -i 0.2 10.1.1.12 >/dev/null ) &
pinger=$!
$VR ctl -s "$sock" capture web1 --direction in -c 6 -w - | tcpdump -r - -n -e 2>/dev/null | sed 's/^/   /'
wait "$pinger"

echo "== vrouter ctl health (exit 0 healthy, 1 degraded, 2 failing)"
$VR ctl -s "$sock" health || true
echo "== Prometheus metrics at 127.0.0.1:$metrics_port/metrics (a few of them)"
curl -s --max-time 3 "http://127.0.0.1:$metrics_port/metrics" |
    grep -E '^vrouter_(port_receive_packets_total\{port="web1"|dhcp_leases_bound|nat_ports_in_use|lb_backend_up|health)' | head -12 | sed 's/^/   /'

echo "== vrouter ctl show ports"
$VR ctl -s "$sock" show ports
echo "== vrouter ctl show fdb"
$VR ctl -s "$sock" show fdb
echo "== vrouter ctl show conntrack"
$VR ctl -s "$sock" show conntrack
echo "== vrouter ctl show stats"
$VR ctl -s "$sock" show stats
echo "== not in this demo yet: VXLAN (conf/vrouter.toml documents its keys)"
echo "== done; cleaning up"
