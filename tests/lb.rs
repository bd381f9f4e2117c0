//! The load balancer end to end: three backend guests on network web (10.1.1.11-13) each run a
//! server that answers with its own name and the address it saw the client come from; an
//! "outside" namespace holds the public gateway (203.0.113.1) and remote clients on its
//! loopback; a guest on network db (10.1.2.11) and one on web (10.1.1.14) are inside clients.
//! Covers round robin (equal and weighted), source affinity, leastconn, health checks taking
//! backends out and back (tcp and http), refusal when none is up (TCP RST, UDP port
//! unreachable), the client's address at the backend, the VIP from guests, and `ctl show lb`.

mod common;
use common::*;
use serde_json::Value;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const VIP: &str = "203.0.113.10";
const PUBLIC_GW: &str = "203.0.113.1";
const REMOTES: [&str; 3] = ["198.51.100.5", "198.51.100.6", "198.51.100.7"];
const BACKENDS: [&str; 3] = ["10.1.1.11", "10.1.1.12", "10.1.1.13"];

/// argv: TAG PORT [HEALTH_STATUS]. TCP: a thread per connection. "GET ..." gets an HTTP answer
/// (HEALTH_STATUS for /health, default 200); "hold" is answered and held open until the client
/// closes; anything else gets "TAG PEER". UDP on the same port answers "TAG PEER". Logs
/// "conn PEER" / "check PEER" per TCP connection.
const SERVER: &str = r#"
import socket, sys, threading
tag, port = sys.argv[1], int(sys.argv[2])
health = sys.argv[3] if len(sys.argv) > 3 else '200'
def conn(c, a):
    c.settimeout(5)
    try:
        d = c.recv(1024)
        if d.startswith(b'GET '):
            print('check', a[0], flush=True)
            st = health if d.split()[1] == b'/health' else '200'
            body = tag + '\n'
            c.sendall(f'HTTP/1.0 {st} X\r\nContent-Length: {len(body)}\r\n\r\n{body}'.encode())
        else:
            print('conn', a[0], flush=True)
            c.sendall(f'{tag} {a[0]}\n'.encode())
            if d.startswith(b'hold'):
                c.settimeout(None)
                while c.recv(100):
                    pass
    except OSError:
        pass
    c.close()
def udp():
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(('0.0.0.0', port))
    while True:
        d, a = u.recvfrom(2048)
        u.sendto(f'{tag} {a[0]}\n'.encode(), a)
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('0.0.0.0', port))
s.listen(128)
threading.Thread(target=udp, daemon=True).start()
print('listening', flush=True)
while True:
    c, a = s.accept()
    threading.Thread(target=conn, args=(c, a), daemon=True).start()
"#;

/// argv: PROTO DST PORT N SRC|- [hold]. N sequential requests; one line each: the answer,
/// "REFUSED" (RST or port unreachable, with the milliseconds it took) or "TIMEOUT". With
/// "hold", N connections are opened and kept until the process is killed.
const CLIENT: &str = r#"
import socket, sys, time
proto, dst, port, n, src = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
hold = len(sys.argv) > 6
kept = []
for _ in range(n):
    t = time.time()
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM if proto == 'tcp' else socket.SOCK_DGRAM)
    s.settimeout(3)
    if src != '-':
        s.bind((src, 0))
    try:
        s.connect((dst, port))
        s.sendall(b'hold\n' if hold else b'hi\n')
        d = s.recv(100)
        print(d.decode().strip() if d else 'EMPTY', flush=True)
    except ConnectionRefusedError:
        print('REFUSED', int((time.time() - t) * 1000), flush=True)
    except OSError as e:
        print('TIMEOUT', e, flush=True)
    if hold:
        kept.append(s)
    else:
        s.close()
if hold:
    print('holding', flush=True)
    time.sleep(600)
"#;

/// The SYNs the kernel of namespace `ns` has retransmitted (TcpExt TCPSynRetrans).
fn syn_retrans(lab: &Lab, ns: &str) -> u64 {
    let o = lab.exec(ns, &["cat", "/proc/net/netstat"]);
    let text = String::from_utf8_lossy(&o.stdout);
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else { panic!("no TcpExt in /proc/net/netstat: {text}") };
    names.split_whitespace().zip(values.split_whitespace()).find(|(n, _)| *n == "TCPSynRetrans").and_then(|(_, v)| v.parse().ok()).expect("TCPSynRetrans")
}

fn config(lab: &Lab, lbs: &str) -> String {
    let mut c = [
        cfg::router(&lab.id),
        cfg::l3_network("web", "10.1.1.0/24", "10.1.1.1", ""),
        cfg::l3_network("db", "10.1.2.0/24", "10.1.2.1", ""),
    ]
    .concat();
    for (i, ip) in BACKENDS.iter().enumerate() {
        c += &cfg::port(&format!("a{}", i + 1), "web", "tap", &lab.name(&format!("a{}", i + 1)), &format!("52:54:00:10:01:1{}", i + 1), &format!("ip = \"{ip}\""));
    }
    c += &cfg::port("a4", "web", "tap", &lab.name("a4"), "52:54:00:10:01:14", "ip = \"10.1.1.14\"");
    c += &cfg::port("b1", "db", "tap", &lab.name("b1"), "52:54:00:10:02:11", "ip = \"10.1.2.11\"");
    c += &format!("[public]\nkind = \"tap\"\nifname = \"{}\"\nips = [\"{VIP}/24\"]\ngateway = \"{PUBLIC_GW}\"\n", lab.name("pb"));
    c + lbs
}

fn lb(name: &str, proto: &str, port: u16, algorithm: &str, weights: [u32; 3], check: &str) -> String {
    let backends: Vec<String> = BACKENDS.iter().zip(weights).map(|(ip, w)| format!("{{ ip = \"{ip}\", port = 8080, weight = {w} }}")).collect();
    let check = if check.is_empty() { String::new() } else { format!("health_check = {check}\n") };
    format!(
        "[[load_balancer]]\nname = \"{name}\"\npublic_ip = \"{VIP}\"\nprotocol = \"{proto}\"\nport = {port}\nalgorithm = \"{algorithm}\"\nbackends = [{}]\n{check}",
        backends.join(", ")
    )
}

struct Net {
    backends: Vec<String>,
    /// The backend servers' pids (to stop them).
    pids: Vec<u32>,
    out: String,
    b1: String,
    a4: String,
}

fn topology(lab: &mut Lab, health: [&str; 3]) -> Net {
    let (mut backends, mut pids) = (Vec::new(), Vec::new());
    for (i, ip) in BACKENDS.iter().enumerate() {
        let p = format!("a{}", i + 1);
        let ifname = lab.name(&p);
        let ns = lab.guest(&format!("n{p}"), &ifname, &format!("{ip}/24"));
        ok(&["ip", "-n", &ns, "route", "add", "default", "via", "10.1.1.1"]);
        pids.push(start_server(lab, &ns, i, health[i]));
        backends.push(ns);
    }
    let a4 = lab.name("a4");
    let a4 = lab.guest("na4", &a4, "10.1.1.14/24");
    ok(&["ip", "-n", &a4, "route", "add", "default", "via", "10.1.1.1"]);
    let b1 = lab.name("b1");
    let b1 = lab.guest("nb1", &b1, "10.1.2.11/24");
    ok(&["ip", "-n", &b1, "route", "add", "default", "via", "10.1.2.1"]);
    let pb = lab.name("pb");
    let out = lab.guest("out", &pb, &format!("{PUBLIC_GW}/24"));
    for r in REMOTES {
        ok(&["ip", "-n", &out, "addr", "add", &format!("{r}/32"), "dev", "lo"]);
    }
    Net { backends, pids, out, b1, a4 }
}

/// Starts backend `i`'s server (again, after a stop); returns its pid.
fn start_server(lab: &mut Lab, ns: &str, i: usize, health: &str) -> u32 {
    let log = server_log(lab, i);
    let tag = format!("be{}", i + 1);
    let pid = lab.spawn_in(ns, &["python3", "-u", "-c", SERVER, &tag, "8080", health], &log);
    wait_for(&format!("server {tag}"), Duration::from_secs(5), || std::fs::read_to_string(&log).unwrap_or_default().contains("listening"));
    pid
}

fn server_log(lab: &Lab, i: usize) -> PathBuf {
    lab.path(&format!("be{}.log", i + 1))
}

/// N requests from `ns` (from `src`), one answer line each.
fn requests(lab: &Lab, ns: &str, proto: &str, port: u16, n: usize, src: &str) -> Vec<String> {
    let (p, n) = (port.to_string(), n.to_string());
    let o = lab.exec(ns, &["python3", "-c", CLIENT, proto, VIP, &p, &n, src]);
    assert!(o.status.success(), "client: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).lines().map(String::from).collect()
}

/// How many answers came from each backend (by tag), failures under their own word.
fn tally(answers: &[String]) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for a in answers {
        *m.entry(a.split_whitespace().next().unwrap_or("").to_string()).or_insert(0) += 1;
    }
    m
}

/// The first request through a fresh vrouter may wait for ARP: warm every path up.
fn warm_up(lab: &Lab, ns: &str, port: u16) {
    wait_for("a first answer through the VIP", Duration::from_secs(10), || {
        requests(lab, ns, "tcp", port, 1, "-")[0].starts_with("be")
    });
}

fn lb_row<'a>(v: &'a Value, name: &str) -> &'a Value {
    v.as_array().and_then(|a| a.iter().find(|r| r["name"] == name)).unwrap_or_else(|| panic!("no lb {name} in {v}"))
}

fn states(lab: &Lab, name: &str) -> Vec<String> {
    let v = lab.show("lb");
    lb_row(&v, name)["backends"].as_array().unwrap().iter().map(|b| b["state"].as_str().unwrap().to_string()).collect()
}

#[test]
fn round_robin_spreads_by_weight_and_backends_see_the_client() {
    let mut lab = Lab::new("lbr");
    let lbs = [
        lb("web", "tcp", 80, "roundrobin", [1, 1, 1], ""),
        lb("weighted", "tcp", 81, "roundrobin", [3, 1, 1], ""),
        lb("dns", "udp", 5353, "roundrobin", [1, 1, 1], ""),
    ]
    .concat();
    let c = config(&lab, &lbs);
    lab.vrouter(&c);
    let net = topology(&mut lab, ["200"; 3]);
    warm_up(&lab, &net.out, 80);
    warm_up(&lab, &net.out, 81);

    let answers = requests(&lab, &net.out, "tcp", 80, 30, REMOTES[0]);
    let t = tally(&answers);
    for be in ["be1", "be2", "be3"] {
        let n = t.get(be).copied().unwrap_or(0);
        assert!((9..=11).contains(&n), "{be} got {n} of 30: {t:?}");
    }
    // Destination NAT only: the backend saw the remote client's own address.
    assert!(answers.iter().all(|a| a.ends_with(REMOTES[0])), "{answers:?}");

    let t = tally(&requests(&lab, &net.out, "tcp", 81, 25, "-"));
    for (be, want) in [("be1", 15), ("be2", 5), ("be3", 5)] {
        let n = t.get(be).copied().unwrap_or(0);
        assert!(n.abs_diff(want) <= 1, "weights 3:1:1: {be} got {n} of 25: {t:?}");
    }

    let t = tally(&requests(&lab, &net.out, "udp", 5353, 6, "-"));
    assert_eq!((t.get("be1"), t.get("be2"), t.get("be3")), (Some(&2), Some(&2), Some(&2)), "udp: {t:?}");

    // Guests reach the VIP: from another network with their own address, from the backends'
    // network through the gateway (else the backend would answer around the router).
    let from_db = requests(&lab, &net.b1, "tcp", 80, 3, "-");
    assert!(from_db.iter().all(|a| a.starts_with("be") && a.ends_with("10.1.2.11")), "{from_db:?}");
    let from_web = requests(&lab, &net.a4, "tcp", 80, 3, "-");
    assert!(from_web.iter().all(|a| a.starts_with("be") && a.ends_with("10.1.1.1")), "{from_web:?}");

    let v = lab.show("lb");
    let web = lb_row(&v, "web");
    let total: u64 = web["backends"].as_array().unwrap().iter().map(|b| b["total"].as_u64().unwrap()).sum();
    assert!(total >= 36, "web totals {web}");
    assert!(web["backends"].as_array().unwrap().iter().all(|b| b["state"] == "up"));
    let sock = lab.path("ctl.sock");
    let table = ok(&[bin(), "ctl", "-s", sock.to_str().unwrap(), "show", "lb"]);
    assert!(table.contains("web 203.0.113.10:80/tcp roundrobin") && table.contains("10.1.1.13:8080"), "{table}");
}

#[test]
fn source_affinity_and_leastconn() {
    let mut lab = Lab::new("lbs");
    let lbs = [lb("src", "tcp", 80, "source", [1, 1, 1], ""), lb("least", "tcp", 82, "leastconn", [1, 1, 1], "")].concat();
    let c = config(&lab, &lbs);
    lab.vrouter(&c);
    let net = topology(&mut lab, ["200"; 3]);
    warm_up(&lab, &net.out, 80);

    let mut seen = Vec::new();
    for r in REMOTES {
        let t = tally(&requests(&lab, &net.out, "tcp", 80, 8, r));
        assert_eq!(t.len(), 1, "client {r} moved between backends: {t:?}");
        seen.push(t.into_keys().next().unwrap());
    }
    eprintln!("source affinity: {REMOTES:?} -> {seen:?}");

    // Two long connections occupy two backends; new short ones all go to the idle third.
    let hold_log = lab.path("hold.log");
    lab.spawn_in(&net.out, &["python3", "-u", "-c", CLIENT, "tcp", VIP, "82", "2", "-", "hold"], &hold_log);
    wait_for("two held connections", Duration::from_secs(10), || std::fs::read_to_string(&hold_log).unwrap_or_default().contains("holding"));
    let held = tally(&std::fs::read_to_string(&hold_log).unwrap().lines().filter(|l| l.starts_with("be")).map(String::from).collect::<Vec<_>>());
    assert_eq!(held.len(), 2, "held connections should sit on two backends: {held:?}");
    let idle = ["be1", "be2", "be3"].into_iter().find(|b| !held.contains_key(*b)).unwrap();
    let t = tally(&requests(&lab, &net.out, "tcp", 82, 6, "-"));
    assert_eq!(t.get(idle), Some(&6), "leastconn should prefer idle {idle}: {t:?}");
    let v = lab.show("lb");
    let active: Vec<u64> = lb_row(&v, "least")["backends"].as_array().unwrap().iter().map(|b| b["active"].as_u64().unwrap()).collect();
    assert_eq!(active.iter().sum::<u64>(), 2, "only the held connections are active: {active:?}");
}

#[test]
fn health_checks_take_backends_out_and_back_and_refuse_when_none_is_up() {
    let mut lab = Lab::new("lbh");
    let tcp_check = "{ kind = \"tcp\", interval_ms = 300, timeout_ms = 200, rise = 2, fall = 2 }";
    let http_check = "{ kind = \"http\", path = \"/health\", expect = 200, interval_ms = 300, timeout_ms = 200, rise = 2, fall = 2 }";
    let lbs = [
        lb("web", "tcp", 80, "roundrobin", [1, 1, 1], tcp_check),
        lb("http", "tcp", 83, "roundrobin", [1, 1, 1], http_check),
        // Nothing listens for TCP on 8081: every backend fails its check.
        lb("dns", "udp", 5353, "roundrobin", [1, 1, 1], tcp_check).replace("port = 8080", "port = 8081"),
    ]
    .concat();
    let c = config(&lab, &lbs);
    lab.vrouter(&c);
    // be2 answers /health with 503: down for the http check, up for the tcp one.
    let net = topology(&mut lab, ["200", "503", "200"]);
    warm_up(&lab, &net.out, 80);
    wait_for("checks to settle", Duration::from_secs(5), || states(&lab, "http") == ["up", "down", "up"]);
    let t = tally(&requests(&lab, &net.out, "tcp", 83, 6, "-"));
    assert_eq!((t.get("be1"), t.get("be2"), t.get("be3")), (Some(&3), None, Some(&3)), "http check: {t:?}");
    // Checks come from the gateway of the backends' network.
    let log = std::fs::read_to_string(server_log(&lab, 0)).unwrap();
    assert!(log.lines().any(|l| l == "check 10.1.1.1"), "{log}");

    // Stop be3: within fall x interval (+ one timeout) it takes no new connections.
    signal(net.pids[2], "KILL");
    let stopped = Instant::now();
    wait_for("be3 down", Duration::from_secs(3), || states(&lab, "web")[2] == "down");
    eprintln!("be3 marked down {} ms after its server stopped", stopped.elapsed().as_millis());
    let t = tally(&requests(&lab, &net.out, "tcp", 80, 10, "-"));
    assert_eq!(t.get("be3"), None, "{t:?}");
    assert_eq!(t.get("be1").copied().unwrap_or(0) + t.get("be2").copied().unwrap_or(0), 10, "{t:?}");

    // Start it again: back after rise successes.
    let be3 = start_server(&mut lab, &net.backends[2].clone(), 2, "200");
    wait_for("be3 up", Duration::from_secs(3), || states(&lab, "web")[2] == "up");
    let t = tally(&requests(&lab, &net.out, "tcp", 80, 9, "-"));
    assert_eq!(t.get("be3"), Some(&3), "{t:?}");

    // No backend up: refused at once, TCP by RST, UDP by port unreachable.
    wait_for("dns backends down", Duration::from_secs(3), || states(&lab, "dns").iter().all(|s| s == "down"));
    let udp = requests(&lab, &net.out, "udp", 5353, 1, "-");
    assert!(udp[0].starts_with("REFUSED"), "{udp:?}");
    for pid in [net.pids[0], net.pids[1], be3] {
        signal(pid, "KILL");
    }
    wait_for("all web backends down", Duration::from_secs(3), || states(&lab, "web").iter().all(|s| s == "down"));
    // Refused by the first SYN's answer: the client's own retransmission timer (1 s) never
    // fired. A liveness bound from the client's kernel, not a timing assertion.
    let before = syn_retrans(&lab, &net.out);
    let r = requests(&lab, &net.out, "tcp", 80, 1, "-");
    assert!(r[0].starts_with("REFUSED"), "not refused: {r:?}");
    assert_eq!(syn_retrans(&lab, &net.out), before, "the client had to retransmit its SYN before the refusal: {r:?}");
    let v = lab.show("lb");
    assert!(lb_row(&v, "web")["refused"].as_u64().unwrap() >= 1);
    assert!(lab.drops("public", "lb_no_backend") >= 2);
}
