//! The L3 router end to end: guests in namespaces on vrouter taps (default route via their
//! network's gateway), and an "outside" namespace holding the kernel side of the public tap. The
//! outside has the public gateway 203.0.113.1 and, on its loopback, two "remote" hosts beyond it
//! (198.51.100.5, 192.0.2.5). Covers source NAT (with offloads intact), port forwarding (single,
//! range, UDP), static NAT both ways, the public firewall, egress rules, routing between networks
//! with ICMP errors (TTL, path MTU), hairpin forwarding and the conntrack cap.
//! Nothing is added to the root namespace: every address and route lives in a lab namespace.

mod common;
use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

/// Remote hosts beyond the public gateway (on the outside namespace's loopback).
const REMOTE: &str = "198.51.100.5";
const OTHER_REMOTE: &str = "192.0.2.5";
const PUBLIC_GW: &str = "203.0.113.1";
/// `source_nat_ip`, and the second public address (static NAT where a test configures one).
const SNAT_IP: &str = "203.0.113.10";
const STATIC_IP: &str = "203.0.113.11";

// ---------------------------------------------------------------------------------------------
// Config

/// `[router]`, networks web (10.1.1.0/24) and db (10.1.2.0/24) with gateways .1, and ports a1
/// (10.1.1.11), a2 (10.1.1.12) on web and b1 (10.1.2.11) on db. `db_extra` goes into db's table.
fn networks(lab: &Lab, db_extra: &str) -> String {
    [
        cfg::router(&lab.id),
        cfg::l3_network("web", "10.1.1.0/24", "10.1.1.1", ""),
        cfg::l3_network("db", "10.1.2.0/24", "10.1.2.1", db_extra),
        cfg::port("a1", "web", "tap", &lab.name("a1"), "52:54:00:10:01:11", "ip = \"10.1.1.11\""),
        cfg::port("a2", "web", "tap", &lab.name("a2"), "52:54:00:10:01:12", "ip = \"10.1.1.12\""),
        cfg::port("b1", "db", "tap", &lab.name("b1"), "52:54:00:10:02:11", "ip = \"10.1.2.11\""),
    ]
    .concat()
}

/// `[public]` on tap `<id>pb` with both public addresses; `extra` holds further keys (`mtu = 1400`).
fn public(lab: &Lab, extra: &str) -> String {
    format!(
        "[public]\nkind = \"tap\"\nifname = \"{}\"\nips = [\"{SNAT_IP}/24\", \"{STATIC_IP}/24\"]\ngateway = \"{PUBLIC_GW}\"\nsource_nat_ip = \"{SNAT_IP}\"\n{extra}\n",
        lab.name("pb")
    )
}

fn port_forward(protocol: &str, public_port: &str, private_ip: &str, private_port: &str) -> String {
    format!(
        "[[port_forward]]\npublic_ip = \"{SNAT_IP}\"\nprotocol = \"{protocol}\"\npublic_port = \"{public_port}\"\nprivate_ip = \"{private_ip}\"\nprivate_port = \"{private_port}\"\n"
    )
}

fn static_nat(public_ip: &str, private_ip: &str) -> String {
    format!("[[static_nat]]\npublic_ip = \"{public_ip}\"\nprivate_ip = \"{private_ip}\"\n")
}

fn egress(network: &str, protocol: &str, ports: &str, action: &str) -> String {
    format!(
        "[[egress]]\nnetwork = \"{network}\"\nprotocol = \"{protocol}\"\nports = \"{ports}\"\ndestinations = [\"0.0.0.0/0\"]\naction = \"{action}\"\n"
    )
}

// ---------------------------------------------------------------------------------------------
// Topology

/// A guest namespace on port `port`'s tap with `ip`/24 and a default route via `gw`.
fn guest(lab: &mut Lab, port: &str, ip: &str, gw: &str) -> String {
    let ifname = lab.name(port);
    let ns = lab.guest(&format!("n{port}"), &ifname, &format!("{ip}/24"));
    ok(&["ip", "-n", &ns, "route", "add", "default", "via", gw]);
    ns
}

/// The outside namespace on the public tap: the public gateway on the tap, the remote hosts on lo.
fn outside(lab: &mut Lab) -> String {
    let pb = lab.name("pb");
    let out = lab.guest("out", &pb, &format!("{PUBLIC_GW}/24"));
    for a in [REMOTE, OTHER_REMOTE] {
        ok(&["ip", "-n", &out, "addr", "add", &format!("{a}/32"), "dev", "lo"]);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Peers: small python3 servers and clients. Servers answer "TAG:PORT PEER_ADDRESS", so the
// client's output shows what the server saw as the source, after any NAT on the way.

/// argv: TAG HOST PORT...; one thread per port; logs "PORT PEER" per connection.
const TCP_SERVER: &str = r#"
import socket, sys, threading
tag, host = sys.argv[1], sys.argv[2]
def serve(s, port):
    while True:
        c, a = s.accept()
        print(port, a[0], flush=True)
        c.settimeout(2)
        try:
            c.recv(100)
            c.sendall(f'{tag}:{port} {a[0]}\n'.encode())
        except OSError:
            pass
        c.close()
socks = []
for p in sys.argv[3:]:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, int(p)))
    s.listen(64)
    socks.append((s, int(p)))
for s, p in socks:
    threading.Thread(target=serve, args=(s, p), daemon=True).start()
print('listening', flush=True)
threading.Event().wait()
"#;

/// argv: DST PORT TIMEOUT [SRC]; prints the server's line; exit 3 when the exchange fails.
const TCP_CLIENT: &str = r#"
import socket, sys
s = socket.socket()
s.settimeout(float(sys.argv[3]))
if len(sys.argv) > 4:
    s.bind((sys.argv[4], 0))
try:
    s.connect((sys.argv[1], int(sys.argv[2])))
    s.sendall(b'hi\n')
    d = b''
    while not d.endswith(b'\n'):
        x = s.recv(100)
        if not x:
            break
        d += x
except OSError as e:
    print('ERR', e)
    sys.exit(3)
if not d:
    print('ERR empty answer')
    sys.exit(3)
print(d.decode().strip())
"#;

/// argv: TAG HOST PORT; answers "TAG:PORT PEER " + the datagram.
const UDP_SERVER: &str = r#"
import socket, sys
tag, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((host, port))
print('listening', flush=True)
while True:
    d, a = s.recvfrom(2048)
    print(port, a[0], flush=True)
    s.sendto(f'{tag}:{port} {a[0]} '.encode() + d, a)
"#;

/// argv: DST PORT [SRC]; three tries of 1 s; prints "REPLY_SOURCE ANSWER"; exit 3 on no answer.
const UDP_CLIENT: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(1)
if len(sys.argv) > 3:
    s.bind((sys.argv[3], 0))
for _ in range(3):
    s.sendto(b'ping', (sys.argv[1], int(sys.argv[2])))
    try:
        d, a = s.recvfrom(2048)
    except OSError:
        continue
    print(a[0], d.decode().strip())
    sys.exit(0)
print('ERR no answer')
sys.exit(3)
"#;

/// 5000 datagrams to REMOTE, each to a distinct destination port (a new flow each).
const UDP_FLOOD: &str = r#"
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sent = 0
for p in range(20000, 25000):
    try:
        s.sendto(b'x', ('198.51.100.5', p))
        sent += 1
    except OSError:
        pass
print(sent)
"#;

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn wait_listening(log: &Path, what: &str) {
    let t = std::time::Instant::now();
    while !read(log).contains("listening") {
        assert!(t.elapsed() < Duration::from_secs(5), "{what} did not start: {}", read(log));
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts a TCP server in `ns` on `host` and `ports`; returns its log ("PORT PEER" lines).
fn tcp_server(lab: &mut Lab, ns: &str, tag: &str, host: &str, ports: &[u16]) -> PathBuf {
    let log = lab.path(&format!("tcp-{tag}-{}.log", ports[0]));
    let mut args: Vec<String> = ["python3", "-u", "-c", TCP_SERVER, tag, host].iter().map(|s| s.to_string()).collect();
    args.extend(ports.iter().map(|p| p.to_string()));
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    lab.spawn_in(ns, &a, &log);
    wait_listening(&log, &format!("tcp server {tag} {ports:?}"));
    log
}

fn udp_server(lab: &mut Lab, ns: &str, tag: &str, host: &str, port: u16) -> PathBuf {
    let log = lab.path(&format!("udp-{tag}-{port}.log"));
    let p = port.to_string();
    lab.spawn_in(ns, &["python3", "-u", "-c", UDP_SERVER, tag, host, &p], &log);
    wait_listening(&log, &format!("udp server {tag} {port}"));
    log
}

/// One TCP request from `ns` to `dst:port` (from source address `src` if given): the server's
/// answer, or None when the connection is refused or times out within `secs`. A client that
/// cannot even start (say, `src` is not local) fails the test rather than passing as "refused".
fn tcp_request(lab: &Lab, ns: &str, dst: &str, port: u16, src: Option<&str>, secs: u32) -> Option<String> {
    let (p, t) = (port.to_string(), secs.to_string());
    let mut args = vec!["python3", "-c", TCP_CLIENT, dst, &p, &t];
    args.extend(src);
    let o = lab.exec(ns, &args);
    match o.status.code() {
        Some(0) => Some(String::from_utf8_lossy(&o.stdout).trim().to_string()),
        Some(3) => None,
        _ => panic!("tcp client in {ns} -> {dst}:{port} broke: {}", text(&o)),
    }
}

/// A TCP request that must succeed within a few tries (first packets may wait for ARP).
fn tcp_ok(lab: &Lab, ns: &str, dst: &str, port: u16, src: Option<&str>) -> String {
    for _ in 0..4 {
        if let Some(r) = tcp_request(lab, ns, dst, port, src, 3) {
            return r;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("tcp {ns} -> {dst}:{port} (src {src:?}) never answered; stats: {}", lab.show("stats"));
}

/// One UDP request (three tries inside): "REPLY_SOURCE ANSWER" or None.
fn udp_request(lab: &Lab, ns: &str, dst: &str, port: u16, src: Option<&str>) -> Option<String> {
    let p = port.to_string();
    let mut args = vec!["python3", "-c", UDP_CLIENT, dst, &p];
    args.extend(src);
    let o = lab.exec(ns, &args);
    match o.status.code() {
        Some(0) => Some(String::from_utf8_lossy(&o.stdout).trim().to_string()),
        Some(3) => None,
        _ => panic!("udp client in {ns} -> {dst}:{port} broke: {}", text(&o)),
    }
}

/// Waits until something listens on TCP `port` in `ns` (iperf3 -s -1 must not see a probe).
fn wait_tcp_listen(lab: &Lab, ns: &str, port: u16) {
    let filter = format!("sport = :{port}");
    wait_for(&format!("tcp listener on {port} in {ns}"), Duration::from_secs(5), || {
        !String::from_utf8_lossy(&lab.exec(ns, &["ss", "-Hltn", &filter]).stdout).trim().is_empty()
    });
}

/// Bytes received by an `iperf3 -J` client run, printing the rate.
fn iperf_bytes(o: &Output, what: &str) -> u64 {
    assert!(o.status.success(), "iperf3 {what}: {}", text(o));
    let j: Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("iperf3 json {e}: {}", text(o)));
    let bytes = j["end"]["sum_received"]["bytes"].as_u64().unwrap_or(0);
    let bps = j["end"]["sum_received"]["bits_per_second"].as_f64().unwrap_or(0.0);
    eprintln!("iperf3 {what}: {:.2} Gbit/s, {bytes} bytes", bps / 1e9);
    bytes
}

fn port_stats<'a>(stats: &'a Value, name: &str) -> &'a Value {
    stats["ports"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == name))
        .unwrap_or_else(|| panic!("no port {name:?} in stats: {stats}"))
}

/// A counter that the contract says exists.
fn count(v: &Value, what: &str) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("{what} is not a count: {v}"))
}

fn flows(ct: &Value) -> Vec<Value> {
    ct["flows"].as_array().cloned().unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------

#[test]
fn snat_iperf3_and_outside_sees_source_nat_ip() {
    let mut lab = Lab::new("sn");
    let cfg = [networks(&lab, ""), public(&lab, "")].concat();
    let sock = lab.vrouter(&cfg);
    let a1 = guest(&mut lab, "a1", "10.1.1.11", "10.1.1.1");
    let out = outside(&mut lab);
    assert!(lab.ping(&a1, "10.1.1.1", 5), "a1 -> its gateway");
    assert!(lab.ping(&a1, REMOTE, 5), "a1 -> remote through source NAT");

    // The outside sees the source NAT address, never the private one.
    let log = tcp_server(&mut lab, &out, "out", REMOTE, &[7000]);
    assert_eq!(tcp_ok(&lab, &a1, REMOTE, 7000, None), format!("out:7000 {SNAT_IP}"));
    let seen = read(&log);
    assert!(seen.lines().any(|l| l == format!("7000 {SNAT_IP}")) && !seen.contains("10.1.1."), "{seen}");

    // iperf3 through source NAT; conntrack shows the flow while it runs.
    lab.spawn_in(&out, &["iperf3", "-s", "-1"], &lab.path("iperf-s.log"));
    wait_tcp_listen(&lab, &out, 5201);
    let (o, flow) = std::thread::scope(|s| {
        let client = s.spawn(|| lab.exec(&a1, &["iperf3", "-c", REMOTE, "-t", "2", "-J"]));
        let mut flow = None;
        for _ in 0..60 {
            flow = flows(&lab.show("conntrack"))
                .into_iter()
                .find(|f| f["proto"] == "tcp" && f["src"] == "10.1.1.11" && f["dport"] == 5201);
            if flow.is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        (client.join().unwrap(), flow)
    });
    let bytes = iperf_bytes(&o, "guest -> outside through source NAT");
    assert!(bytes > 1_000_000, "iperf3 moved only {bytes} bytes");
    let flow = flow.expect("no conntrack entry for the iperf3 flow while it ran");
    assert_eq!(flow["dst"], REMOTE, "{flow}");
    assert_eq!(flow["reply_src"], REMOTE, "{flow}");
    assert_eq!(flow["reply_sport"], 5201, "{flow}");
    assert_eq!(flow["reply_dst"], SNAT_IP, "{flow}");
    assert!(flow["reply_dport"].is_u64() && flow["sport"].is_u64(), "{flow}");

    // Offloads survive NAT: the guest's TSO super-frames crossed whole, nothing was cut in software.
    let stats = lab.show("stats");
    let a1s = port_stats(&stats, "a1");
    assert!(count(&a1s["rx_gso_frames"], "a1 rx_gso_frames") > 100, "{a1s}");
    assert_eq!(stats["totals"]["tx_sw_segmented"], 0, "NAT forced software segmentation: {stats}");
    let pbs = port_stats(&stats, "public");
    assert!(count(&pbs["tx_bytes"], "public tx_bytes") >= bytes, "{pbs}");
    assert!(count(&stats["conntrack"]["created"], "conntrack.created") > 0, "{stats}");
    assert!(count(&stats["router"]["snat_flows"], "router.snat_flows") > 0, "{stats}");

    // The public port is listed with its role.
    let ports = lab.show("ports");
    let p = ports.as_array().unwrap().iter().find(|p| p["name"] == "public").unwrap_or_else(|| panic!("{ports}"));
    assert_eq!(p["kind"], "tap", "{p}");
    assert_eq!(p["mode"], "public", "{p}");
    assert_eq!(p["ifname"], lab.name("pb").as_str(), "{p}");

    // Text form: a header line, then the flows.
    let t = ok(&[bin(), "ctl", "-s", sock.to_str().unwrap(), "show", "conntrack"]);
    let header = t.lines().next().unwrap_or_default();
    assert!(header.to_uppercase().contains("PROTO") && !header.contains("10.1.1.11"), "header first: {t}");
    assert!(t.lines().skip(1).any(|l| l.contains("10.1.1.11") && l.contains(SNAT_IP)), "{t}");
}

#[test]
fn port_forward_single_and_range_and_static_nat() {
    let mut lab = Lab::new("pf");
    let cfg = [
        networks(&lab, ""),
        public(&lab, ""),
        port_forward("tcp", "2222", "10.1.1.11", "22"),
        port_forward("tcp", "8000-8002", "10.1.1.11", "8000-8002"),
        port_forward("udp", "5353", "10.1.1.11", "5353"),
        static_nat(STATIC_IP, "10.1.1.12"),
    ]
    .concat();
    lab.vrouter(&cfg);
    let a1 = guest(&mut lab, "a1", "10.1.1.11", "10.1.1.1");
    let a2 = guest(&mut lab, "a2", "10.1.1.12", "10.1.1.1");
    let out = outside(&mut lab);
    tcp_server(&mut lab, &a1, "a1", "0.0.0.0", &[22, 8000, 8001, 8002]);
    udp_server(&mut lab, &a1, "a1", "0.0.0.0", 5353);
    tcp_server(&mut lab, &a2, "a2", "0.0.0.0", &[80]);
    tcp_server(&mut lab, &out, "out", REMOTE, &[7000]);
    assert!(lab.ping(&out, SNAT_IP, 5), "the router answers on its public address");

    // Single port: 2222 -> a1:22; the client's address reaches the guest unchanged.
    assert_eq!(tcp_ok(&lab, &out, SNAT_IP, 2222, Some(REMOTE)), format!("a1:22 {REMOTE}"));
    assert_eq!(tcp_ok(&lab, &out, SNAT_IP, 2222, None), format!("a1:22 {PUBLIC_GW}"));
    // Range: 8000-8002 -> 8000-8002, port by port.
    for p in 8000..=8002u16 {
        assert_eq!(tcp_ok(&lab, &out, SNAT_IP, p, Some(REMOTE)), format!("a1:{p} {REMOTE}"));
    }
    // UDP: the answer comes back from the public address and port.
    let u = udp_request(&lab, &out, SNAT_IP, 5353, Some(REMOTE)).expect("no answer through the UDP forward");
    assert!(u.starts_with(&format!("{SNAT_IP} a1:5353 {REMOTE}")), "{u}");

    // Static NAT inbound: any port of 203.0.113.11 reaches a2.
    assert_eq!(tcp_ok(&lab, &out, STATIC_IP, 80, Some(REMOTE)), format!("a2:80 {REMOTE}"));
    // Static NAT outbound: a2 leaves with its own public address, a1 with the source NAT address.
    assert_eq!(tcp_ok(&lab, &a2, REMOTE, 7000, None), format!("out:7000 {STATIC_IP}"));
    assert_eq!(tcp_ok(&lab, &a1, REMOTE, 7000, None), format!("out:7000 {SNAT_IP}"));

    // The private network is not reachable directly, even with a route to it via the router.
    ok(&["ip", "-n", &out, "route", "add", "10.1.1.0/24", "via", SNAT_IP]);
    assert_eq!(tcp_request(&lab, &out, "10.1.1.11", 22, None, 2), None, "private address reached from outside");
    assert!(!lab.ping(&out, "10.1.1.11", 2), "private address answered ping from outside");
    assert!(lab.drops("public", "not_forwarded") > 0, "{}", lab.show("stats"));
}

#[test]
fn firewall_source_cidr() {
    let mut lab = Lab::new("fw");
    let cfg = [
        networks(&lab, ""),
        public(&lab, ""),
        port_forward("tcp", "2222", "10.1.1.11", "22"),
        format!("[[firewall]]\npublic_ip = \"{SNAT_IP}\"\nprotocol = \"tcp\"\nports = \"2222\"\nsources = [\"198.51.100.0/24\"]\n"),
    ]
    .concat();
    lab.vrouter(&cfg);
    let a1 = guest(&mut lab, "a1", "10.1.1.11", "10.1.1.1");
    let out = outside(&mut lab);
    tcp_server(&mut lab, &a1, "a1", "0.0.0.0", &[22]);

    assert_eq!(tcp_ok(&lab, &out, SNAT_IP, 2222, Some(REMOTE)), format!("a1:22 {REMOTE}"), "allowed source");
    assert_eq!(tcp_request(&lab, &out, SNAT_IP, 2222, Some(OTHER_REMOTE), 2), None, "source outside the rule was served");
    assert!(lab.drops("public", "firewall") > 0, "{}", lab.show("stats"));
    // The refusal is per source: the allowed one is still served.
    assert_eq!(tcp_ok(&lab, &out, SNAT_IP, 2222, Some(REMOTE)), format!("a1:22 {REMOTE}"));
}

#[test]
fn egress_rules() {
    let mut lab = Lab::new("eg");
    let cfg = [
        networks(&lab, "egress_default = \"deny\""),
        public(&lab, ""),
        egress("web", "tcp", "25", "deny"),
        egress("db", "tcp", "80", "allow"),
    ]
    .concat();
    lab.vrouter(&cfg);
    let a1 = guest(&mut lab, "a1", "10.1.1.11", "10.1.1.1");
    let b1 = guest(&mut lab, "b1", "10.1.2.11", "10.1.2.1");
    let out = outside(&mut lab);
    tcp_server(&mut lab, &out, "out", REMOTE, &[25, 80, 81]);

    // web: everything but tcp/25.
    assert!(lab.ping(&a1, REMOTE, 5), "web allows icmp");
    assert_eq!(tcp_ok(&lab, &a1, REMOTE, 80, None), format!("out:80 {SNAT_IP}"));
    assert_eq!(tcp_request(&lab, &a1, REMOTE, 25, None, 2), None, "web reached tcp/25 despite the deny rule");
    assert!(lab.drops("a1", "egress_denied") > 0, "{}", lab.show("stats"));

    // db: deny by default, tcp/80 allowed; the router's own address is not egress.
    assert!(lab.ping(&b1, "10.1.2.1", 5), "db guest -> its gateway");
    assert_eq!(tcp_ok(&lab, &b1, REMOTE, 80, None), format!("out:80 {SNAT_IP}"));
    assert_eq!(tcp_request(&lab, &b1, REMOTE, 81, None, 2), None, "db reached tcp/81 despite egress_default deny");
    assert!(!lab.ping(&b1, REMOTE, 2), "db pinged out despite egress_default deny");

    // Between the account's networks too. web -> db is allowed by web's rules; db's reply belongs
    // to that flow (rules are decided on a flow's first packet). db -> web is denied.
    assert!(lab.ping(&a1, "10.1.2.11", 5), "web -> db");
    assert!(!lab.ping(&b1, "10.1.1.11", 2), "db -> web despite egress_default deny");
    assert!(lab.drops("b1", "egress_denied") > 0, "{}", lab.show("stats"));
    // Only the denied attempts were dropped; what is allowed still works.
    assert_eq!(tcp_ok(&lab, &a1, REMOTE, 80, None), format!("out:80 {SNAT_IP}"));
}

#[test]
fn routing_between_networks_ping_ttl_traceroute_pmtu() {
    let mut lab = Lab::new("rt");
    let cfg = [networks(&lab, ""), public(&lab, "mtu = 1400")].concat();
    lab.vrouter(&cfg);
    let a1 = guest(&mut lab, "a1", "10.1.1.11", "10.1.1.1");
    let b1 = guest(&mut lab, "b1", "10.1.2.11", "10.1.2.1");
    let out = outside(&mut lab);
    ok(&["ip", "-n", &out, "link", "set", "dev", &lab.name("pb"), "mtu", "1400"]);

    // The router answers on every gateway and public address.
    assert!(lab.ping(&a1, "10.1.1.1", 5), "a1 -> its gateway");
    assert!(lab.ping(&a1, "10.1.2.1", 3), "a1 -> db's gateway");
    assert!(lab.ping(&a1, SNAT_IP, 3), "a1 -> public address");
    assert!(lab.ping(&out, SNAT_IP, 5), "outside -> public address");
    // Routed between networks, both ways.
    assert!(lab.ping(&a1, "10.1.2.11", 5), "web -> db");
    assert!(lab.ping(&b1, "10.1.1.11", 5), "db -> web");
    assert!(lab.ping(&a1, REMOTE, 5), "web -> outside");

    // TTL 1: time exceeded from the sender's gateway.
    let mut ttl = String::new();
    for _ in 0..3 {
        ttl = text(&lab.exec(&a1, &["ping", "-c", "1", "-W", "2", "-t", "1", REMOTE]));
        if ttl.contains("Time to live exceeded") {
            break;
        }
    }
    assert!(ttl.contains("Time to live exceeded") && ttl.contains("From 10.1.1.1"), "{ttl}");

    // traceroute: the gateway is hop 1, the remote host is the last hop (its port-unreachable
    // comes back through NAT translated to the guest).
    let tr = text(&lab.exec(&a1, &["traceroute", "-n", "-q", "1", "-w", "2", "-m", "5", REMOTE]));
    let hops: Vec<&str> = tr.lines().filter(|l| l.trim_start().chars().next().is_some_and(|c| c.is_ascii_digit())).collect();
    assert!(hops.first().is_some_and(|h| h.trim_start().starts_with("1 ") && h.contains("10.1.1.1")), "{tr}");
    assert!(hops.len() >= 2 && hops.last().is_some_and(|h| h.contains(REMOTE)), "{tr}");

    // Path MTU: DF and too big for the public link -> frag-needed with the MTU; smaller passes.
    let mut big = String::new();
    let pmtu = |s: &str| s.contains("Frag needed") || s.contains("mtu = 1400") || s.contains("mtu=1400");
    for _ in 0..3 {
        let o = lab.exec(&a1, &["ping", "-c", "1", "-W", "2", "-M", "do", "-s", "1472", REMOTE]);
        big = text(&o);
        assert!(!o.status.success(), "1500-byte DF packet crossed a 1400 MTU link: {big}");
        if pmtu(&big) {
            break;
        }
    }
    assert!(pmtu(&big), "no frag-needed for a 1500-byte DF packet: {big}");
    let small = (0..3).any(|_| lab.exec(&a1, &["ping", "-c", "1", "-W", "2", "-M", "do", "-s", "1300", REMOTE]).status.success());
    assert!(small, "1328-byte DF ping to the outside failed");

    let stats = lab.show("stats");
    assert!(lab.drops("a1", "ttl_exceeded") > 0, "{stats}");
    assert!(lab.drops("a1", "frag_needed") > 0, "{stats}");
    assert!(count(&stats["router"]["icmp_sent"], "router.icmp_sent") >= 2, "{stats}");
}

#[test]
fn hairpin_port_forward() {
    let mut lab = Lab::new("hp");
    let cfg = [networks(&lab, ""), public(&lab, ""), port_forward("tcp", "2222", "10.1.1.11", "22")].concat();
    lab.vrouter(&cfg);
    let a1 = guest(&mut lab, "a1", "10.1.1.11", "10.1.1.1");
    let a2 = guest(&mut lab, "a2", "10.1.1.12", "10.1.1.1");
    let out = outside(&mut lab);
    tcp_server(&mut lab, &a1, "a1", "0.0.0.0", &[22]);

    // From the outside (control), then from a2 on the same network: the request reaches a1 with
    // the source rewritten to web's gateway, so a1's reply returns through the router.
    assert_eq!(tcp_ok(&lab, &out, SNAT_IP, 2222, Some(REMOTE)), format!("a1:22 {REMOTE}"));
    for _ in 0..3 {
        assert_eq!(tcp_ok(&lab, &a2, SNAT_IP, 2222, None), "a1:22 10.1.1.1", "hairpin");
    }
}

#[test]
fn conntrack_limit_spares_established() {
    let mut lab = Lab::new("ct");
    let cfg = [networks(&lab, ""), public(&lab, ""), "[conntrack]\nmax_flows = 64\n".to_string()].concat();
    lab.vrouter(&cfg);
    let a1 = guest(&mut lab, "a1", "10.1.1.11", "10.1.1.1");
    let a2 = guest(&mut lab, "a2", "10.1.1.12", "10.1.1.1");
    let out = outside(&mut lab);
    assert!(lab.ping(&a1, REMOTE, 5), "a1 -> outside");
    assert!(lab.ping(&a2, "10.1.1.1", 5), "a2 -> its gateway (so the flood is not held by ARP)");

    lab.spawn_in(&out, &["iperf3", "-s", "-1"], &lab.path("iperf-s.log"));
    wait_tcp_listen(&lab, &out, 5201);
    let (o, flood) = std::thread::scope(|s| {
        let client = s.spawn(|| lab.exec(&a1, &["iperf3", "-c", REMOTE, "-t", "4", "-J"]));
        // Once iperf3's control and data connections are tracked, flood new flows from a2.
        for _ in 0..60 {
            let n = flows(&lab.show("conntrack")).iter().filter(|f| f["proto"] == "tcp" && f["dport"] == 5201).count();
            if n >= 2 {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let flood = lab.exec(&a2, &["python3", "-c", UDP_FLOOD]);
        (client.join().unwrap(), flood)
    });
    assert!(flood.status.success(), "flood: {}", text(&flood));
    eprintln!("flood sent {} datagrams", String::from_utf8_lossy(&flood.stdout).trim());
    let bytes = iperf_bytes(&o, "established flow during a new-flow flood");
    assert!(bytes > 1_000_000, "iperf3 moved only {bytes} bytes");

    let stats = lab.show("stats");
    let ct = &stats["conntrack"];
    assert_eq!(ct["max"], 64, "{ct}");
    assert!(count(&ct["flows"], "conntrack.flows") <= 64, "{ct}");
    assert!(count(&ct["refused"], "conntrack.refused") + count(&ct["evicted"], "conntrack.evicted") > 0, "{ct}");
    let table = lab.show("conntrack");
    assert!(count(&table["count"], "conntrack count") <= 64 && flows(&table).len() <= 64, "{}", table["count"]);
    assert!(lab.vrouter_alive());
}

/// The flow cache (datapath::flowcache) takes established flows' packets, routed and through
/// source NAT, both ways: the transfers arrive whole and `show stats` says how many packets it
/// forwarded; `flow_cache = false`, applied live, sends every packet through the full path,
/// and traffic still flows; back on, it takes packets again.
#[test]
fn flow_cache_takes_established_flows_and_turns_off_live() {
    let mut lab = Lab::new("fc");
    let cfg = [networks(&lab, ""), public(&lab, "")].concat();
    let sock = lab.vrouter(&cfg);
    let a1 = guest(&mut lab, "a1", "10.1.1.11", "10.1.1.1");
    let b1 = guest(&mut lab, "b1", "10.1.2.11", "10.1.2.1");
    let out = outside(&mut lab);
    assert!(lab.ping(&a1, "10.1.2.11", 5), "web -> db");
    assert!(lab.ping(&a1, REMOTE, 5), "web -> outside");
    let cache = |lab: &Lab| {
        let st = lab.show("stats");
        (count(&st["flow_cache"]["hits"], "flow_cache.hits"), count(&st["flow_cache"]["fills"], "flow_cache.fills"), count(&st["router"]["forwarded"], "router.forwarded"))
    };
    // Small UDP datagrams and TCP, routed and through source NAT, each for a second.
    let transfers = |lab: &mut Lab, tag: &str| {
        for (server, dst, what) in [(&b1, "10.1.2.11", "routed"), (&out, REMOTE, "source NAT")] {
            for udp in [true, false] {
                lab.spawn_in(server, &["iperf3", "-s", "-1", "-B", dst], &lab.path(&format!("iperf-{tag}-{what}-{udp}.log")));
                wait_tcp_listen(lab, server, 5201);
                let mut args = vec!["iperf3", "-c", dst, "-t", "1", "-J"];
                if udp {
                    args.extend(["-u", "-b", "20M", "-l", "64"]);
                }
                let o = lab.exec(&a1, &args);
                let bytes = iperf_bytes(&o, &format!("{what}, udp {udp}, {tag}"));
                assert!(bytes > 100_000, "{what} udp={udp} {tag}: only {bytes} bytes");
            }
        }
    };
    let (h0, _, _) = cache(&lab);
    transfers(&mut lab, "on");
    let (h1, f1, fwd1) = cache(&lab);
    assert!(h1 > h0 + 1000 && f1 > 0 && fwd1 > h1, "hits {h0} -> {h1}, fills {f1}, forwarded {fwd1}");
    let t = ok(&[bin(), "ctl", "-s", sock.to_str().unwrap(), "show", "stats"]);
    assert!(t.contains(&format!("routed {fwd1} packets, {h1} of them by the flow cache ({f1} fills)")), "{t}");
    eprintln!("flow cache on: {h1} hits, {f1} fills, {fwd1} routed");

    // Off, live: the same traffic takes the full path.
    let file = lab.path("vrouter.toml");
    let on = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, on.replacen("[router]\n", "[router]\nflow_cache = false\n", 1)).unwrap();
    ok(&[bin(), "ctl", "-s", sock.to_str().unwrap(), "reload"]);
    transfers(&mut lab, "off");
    let (h2, _, fwd2) = cache(&lab);
    assert_eq!(h2, h1, "the flow cache forwarded packets while off");
    assert!(fwd2 > fwd1 + 1000, "forwarded {fwd1} -> {fwd2}");

    // On again.
    std::fs::write(&file, on).unwrap();
    ok(&[bin(), "ctl", "-s", sock.to_str().unwrap(), "reload"]);
    transfers(&mut lab, "again");
    let (h3, _, _) = cache(&lab);
    assert!(h3 > h2 + 1000, "hits {h2} -> {h3} after turning it back on");
}
