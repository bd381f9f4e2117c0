//! Attacks from a guest and from the public side, each with honest guests' traffic running
//! beside it, each protection seen in its drop counter, and a positive control showing the test
//! can see the attack land where nothing stops it.
//!
//! One account: network web (10.1.1.0/24, gateway .1, DHCP pool .100-.149), guests a1 (.11) and
//! a2 (.12) with port security, the attacker m on a port without port security (its MACs are
//! bounded by `mac_limit_per_port` only, as a guest running containers or a router), and a
//! public side (203.0.113.10) whose outside namespace reaches a1's TCP port 80 through a
//! forward on 8080.

mod common;
use common::*;
use std::time::Duration;

/// The floods here count what vrouter does with what reaches it. Side by side on two cores
/// they starve each other's loops, and frames are lost in the taps' queues before vrouter sees
/// them (how many depends on the load: CI failed twice on a positive control so). One at a
/// time; a failed test does not stop the others.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

fn config(lab: &Lab) -> String {
    [
        cfg::router(&lab.id),
        "mac_limit_per_port = 16\n".to_string(),
        cfg::l3_network("web", "10.1.1.0/24", "10.1.1.1", "dhcp_range = [\"10.1.1.100\", \"10.1.1.149\"]\nlease_secs = 600\n"),
        cfg::port("a1", "web", "tap", &lab.name("a1"), "52:54:00:60:01:11", "ip = \"10.1.1.11\""),
        cfg::port("a2", "web", "tap", &lab.name("a2"), "52:54:00:60:01:12", "ip = \"10.1.1.12\""),
        cfg::port("m", "web", "tap", &lab.name("m"), "52:54:00:60:01:66", "port_security = false"),
        cfg::port("c", "web", "tap", &lab.name("c"), "52:54:00:60:01:21", ""),
        format!(
            "[public]\nkind = \"tap\"\nifname = \"{}\"\nips = [\"203.0.113.10/24\"]\ngateway = \"203.0.113.1\"\n",
            lab.name("pb")
        ),
        "[[port_forward]]\npublic_ip = \"203.0.113.10\"\nprotocol = \"tcp\"\npublic_port = \"8080\"\nprivate_ip = \"10.1.1.11\"\nprivate_port = \"80\"\n".to_string(),
    ]
    .concat()
}

struct Net {
    a1: String,
    a2: String,
    m: String,
    out: String,
}

fn topology(lab: &mut Lab) -> Net {
    let cfg = config(lab);
    lab.vrouter(&cfg);
    topology_after_start(lab)
}

/// The guests and the outside around a vrouter already started.
fn topology_after_start(lab: &mut Lab) -> Net {
    let (ta1, ta2, tm) = (lab.name("a1"), lab.name("a2"), lab.name("m"));
    let a1 = lab.guest("na1", &ta1, "10.1.1.11/24");
    let a2 = lab.guest("na2", &ta2, "10.1.1.12/24");
    let m = lab.guest("nm", &tm, "10.1.1.66/24");
    for ns in [&a1, &a2, &m] {
        ok(&["ip", "-n", ns, "route", "add", "default", "via", "10.1.1.1"]);
    }
    // The outside: the kernel side of the public tap, with the public gateway.
    let out = lab.name("out");
    ok(&["ip", "netns", "add", &out]);
    lab.adopt_netns(out.clone());
    let pb = lab.name("pb");
    wait_for("public tap", Duration::from_secs(5), || run(&["ip", "link", "show", &pb]).status.success());
    ok(&["ip", "link", "set", &pb, "netns", &out]);
    ok(&["ip", "-n", &out, "addr", "add", "203.0.113.1/24", "dev", &pb]);
    ok(&["ip", "-n", &out, "addr", "add", "203.0.113.7/24", "dev", &pb]);
    ok(&["ip", "-n", &out, "link", "set", &pb, "up"]);
    ok(&["ip", "-n", &out, "link", "set", "lo", "up"]);
    assert!(lab.ping(&a1, "10.1.1.12", 5), "a1 -> a2 before any attack");
    Net { a1, a2, m, out }
}

/// A python3 program run in `ns` (argv after the code: `args`).
fn py(lab: &Lab, ns: &str, code: &str, args: &[&str]) -> String {
    let mut a = vec!["python3", "-c", code];
    a.extend_from_slice(args);
    let o = lab.exec(ns, &a);
    assert!(o.status.success(), "python: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Sends frames given as hex on argv[1..] from interface argv[0], `REPEAT` times each.
/// The kernel itself refuses some (a frame shorter than an Ethernet header): those are skipped
/// and the number sent is printed.
const RAW: &str = r#"
import socket, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((sys.argv[1], 0))
n = 0
for h in sys.argv[2:]:
    try:
        s.send(bytes.fromhex(h)); n += 1
    except OSError:
        pass
print(n)
"#;

/// An HTTP server on argv[1]:80 answering "ok", a connection per thread (a connection held
/// open must not block the others).
const HTTP: &str = r#"
import socketserver, sys
class H(socketserver.BaseRequestHandler):
    def handle(self):
        self.request.recv(4096)
        self.request.sendall(b'HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok')
socketserver.ThreadingTCPServer.allow_reuse_address = True
socketserver.ThreadingTCPServer.request_queue_size = 4096
socketserver.ThreadingTCPServer((sys.argv[1], 80), H).serve_forever()
"#;

/// The router's MAC as guest namespace `ns` resolves its gateway (hex, no colons).
fn gateway_mac(lab: &Lab, ns: &str) -> String {
    assert!(lab.ping(ns, "10.1.1.1", 2));
    let neigh = String::from_utf8_lossy(&lab.exec(ns, &["ip", "neigh", "show", "10.1.1.1"]).stdout).into_owned();
    neigh.split_whitespace().skip_while(|w| *w != "lladdr").nth(1).expect("the gateway's MAC").replace(':', "")
}

/// Honest traffic while an attack runs: a1 pings a2 every 10 ms; returns the ping process
/// output file, read with `ping_loss` once it ended.
fn honest_ping(lab: &mut Lab, net: &Net, secs: u32) -> std::path::PathBuf {
    let out = lab.path(&format!("honest-{secs}.log"));
    lab.spawn_in(&net.a1, &["ping", "-i", "0.01", "-w", &secs.to_string(), "-q", "10.1.1.12"], &out);
    out
}

fn ping_loss(log: &std::path::Path) -> f64 {
    let t = std::time::Instant::now();
    loop {
        let s = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(l) = s.lines().find(|l| l.contains("packet loss")) {
            let pct = l.split(',').find(|p| p.contains("packet loss")).unwrap().trim().split('%').next().unwrap().parse::<f64>().unwrap();
            return pct;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "the honest ping never finished: {s}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn fdb_on(lab: &Lab, port: &str) -> usize {
    lab.show("fdb").as_array().unwrap().iter().filter(|r| r["port"] == port).count()
}

#[test]
fn mac_flooding_is_capped_per_port_and_honest_guests_keep_talking() {
    let _one = one_at_a_time();
    let mut lab = Lab::new("af");
    let net = topology(&mut lab);
    let tm = lab.name("m");
    let ping = honest_ping(&mut lab, &net, 4);
    // 5000 frames from 5000 source MACs, broadcast (each one would be flooded to everyone).
    let flood = r#"
import socket, sys, time
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((sys.argv[1], 0))
for i in range(5000):
    src = bytes([0x02, 0x66, 0, (i >> 16) & 255, (i >> 8) & 255, i & 255])
    s.send(b"\xff" * 6 + src + b"\x88\xb5" + b"\x00" * 46)
    if i % 100 == 99:
        time.sleep(0.002)  # a tap's queue holds a few hundred frames
"#;
    py(&lab, &net.m, flood, &[&tm]);
    let loss = ping_loss(&ping);
    assert!(loss < 5.0, "the honest ping lost {loss}% during the flood");
    // Positive control: the attack reached the switch and taught it MACs, up to the cap.
    assert_eq!(fdb_on(&lab, "m"), 16, "the port's MAC limit, exactly: {}", lab.show("fdb"));
    // Every frame from a MAC past the limit was dropped (on a busy machine some never left the
    // tap's queue: counted against what arrived).
    let st = lab.show("stats");
    let rx = st["ports"].as_array().unwrap().iter().find(|p| p["name"] == "m").map(|p| p["rx_frames"].as_u64().unwrap_or(0)).unwrap_or(0);
    let dropped = lab.drops("m", "port_mac_limit");
    assert!(dropped >= 2500 && dropped + 16 >= rx.saturating_sub(20), "{dropped} dropped of {rx} received");
    // The honest guests' entries are where they were.
    let fdb = lab.show("fdb");
    for (mac, port) in [("52:54:00:60:01:11", "a1"), ("52:54:00:60:01:12", "a2")] {
        assert!(fdb.as_array().unwrap().iter().any(|r| r["mac"] == mac && r["port"] == port), "{mac} moved: {fdb}");
    }
    assert!(lab.ping(&net.a2, "10.1.1.11", 2));
}

#[test]
fn arp_spoofing_of_the_gateway_and_of_guests_is_dropped() {
    let _one = one_at_a_time();
    let mut lab = Lab::new("aa");
    let net = topology(&mut lab);
    let tm = lab.name("m");
    let ping = honest_ping(&mut lab, &net, 3);
    // Gratuitous ARP replies from m claiming the gateway (10.1.1.1) and a1 (10.1.1.11), sent
    // to broadcast and straight to a2's MAC.
    // An ARP reply: m's MAC as the sender of `ip`, to `dst`.
    let arp = |dst: &str, ip: [u8; 4]| {
        let ipx: String = ip.iter().map(|b| format!("{b:02x}")).collect();
        format!("{dst}5254006001660806000108000604000252540060016 6{ipx}{dst}{ipx}").replace(' ', "")
    };
    let frames: Vec<String> = [("ffffffffffff", [10, 1, 1, 1]), ("525400600112", [10, 1, 1, 1]), ("525400600112", [10, 1, 1, 11])]
        .iter()
        .flat_map(|(d, ip)| std::iter::repeat_n(arp(d, *ip), 50))
        .collect();
    let mut args: Vec<&str> = vec![&tm];
    args.extend(frames.iter().map(|s| s.as_str()));
    py(&lab, &net.m, RAW, &args);
    let loss = ping_loss(&ping);
    assert!(loss < 5.0, "honest ping lost {loss}%");
    assert!(lab.drops("m", "spoofed_gateway") >= 100, "gateway claims: {}", lab.drops("m", "spoofed_gateway"));
    // a2 still reaches its gateway's MAC (the router's), not m's.
    assert!(lab.ping(&net.a2, "10.1.1.1", 2));
    let neigh = String::from_utf8_lossy(&lab.exec(&net.a2, &["ip", "neigh", "show", "10.1.1.1"]).stdout).into_owned();
    assert!(!neigh.contains("52:54:00:60:01:66"), "a2 believes m is the gateway: {neigh}");
    // Positive control: the same kind of frame claiming m's own address is not dropped.
    let before = lab.drops("m", "spoofed_gateway");
    py(&lab, &net.m, RAW, &[&tm, &arp("ffffffffffff", [10, 1, 1, 66])]);
    assert_eq!(lab.drops("m", "spoofed_gateway"), before);
    // Claims about another guest from a port without port security are not the switch's to
    // judge (as on any bridge); a2's own traffic to a1 still works because a1 answers itself.
    assert!(lab.ping(&net.a2, "10.1.1.11", 3));
}

#[test]
fn dhcp_starvation_from_made_up_macs_leaves_leases_for_honest_clients() {
    let _one = one_at_a_time();
    let mut lab = Lab::new("ad");
    let net = topology(&mut lab);
    let tm = lab.name("m");
    // 300 DISCOVERs, each from its own MAC (Ethernet source and chaddr agree, as a real
    // starvation tool does), paced so the server sees them all.
    let starve = r#"
import socket, struct, sys, time
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((sys.argv[1], 0))
def csum(b):
    if len(b) % 2: b += b"\0"
    t = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while t >> 16: t = (t & 0xffff) + (t >> 16)
    return ~t & 0xffff
for i in range(300):
    mac = bytes([0x02, 0x77, 0, 0, i >> 8, i & 255])
    bootp = struct.pack("!BBBBIHH4s4s4s4s16s64s128s", 1, 1, 6, 0, 0x1000 + i, 0, 0x8000, b"\0"*4, b"\0"*4, b"\0"*4, b"\0"*4, mac + b"\0"*10, b"\0"*64, b"\0"*128)
    bootp += b"\x63\x82\x53\x63" + b"\x35\x01\x01" + b"\xff"
    udp = struct.pack("!HHHH", 68, 67, 8 + len(bootp), 0) + bootp
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), i, 0, 64, 17, 0, b"\0"*4, b"\xff"*4)
    ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
    s.send(b"\xff"*6 + mac + b"\x08\x00" + ip + udp)
    if i % 20 == 19: time.sleep(0.02)
"#;
    py(&lab, &net.m, starve, &[&tm]);
    std::thread::sleep(Duration::from_millis(500));
    // Positive control: the attack reached the DHCP server (offers were made to m's MACs).
    let fdb_m = fdb_on(&lab, "m");
    assert!(fdb_m >= 10, "the attack's MACs were seen: {fdb_m}");
    assert!(lab.drops("m", "port_mac_limit") >= 250, "{}", lab.drops("m", "port_mac_limit"));
    // An honest client still gets an address from the pool.
    let c = lab.bare_guest("nc", "c");
    let env = udhcpc(&lab, &c, &lab.name("c"), &[]);
    let ip = env.get("ip").cloned().unwrap_or_default();
    assert!(ip.starts_with("10.1.1.1"), "the honest client got no lease: {env:?}");
    let leases = lab.show("leases");
    let from_m = leases["leases"].as_array().unwrap().iter().filter(|l| l["mac"].as_str().unwrap_or("").starts_with("02:77")).count();
    assert!(from_m <= 16, "the attacker holds {from_m} leases, over its port's MAC limit");
    assert!(lab.ping(&net.a1, "10.1.1.12", 2));
}

#[test]
fn malformed_frames_are_counted_and_nothing_else_happens() {
    let _one = one_at_a_time();
    let mut lab = Lab::new("am");
    let net = topology(&mut lab);
    let ta2 = lab.name("a2");
    let ping = honest_ping(&mut lab, &net, 3);
    let eth = "525400600111525400600112"; // a1's MAC <- a2's (a2 has port security: its own MAC)
    let ipv4 = |ihl_len: &str, total: &str, rest: &str| format!("{eth}0800{ihl_len}00{total}000040004001f00d0a01010c0a01010b{rest}");
    let frames: Vec<String> = vec![
        // Runts: shorter than an Ethernet header, and a header alone.
        "5254006001".to_string(),
        eth.to_string(),
        // IPv4: IHL 3 (< 5), total length past the frame, total length under the header, bad
        // header checksum, version 6 in an IPv4 ethertype.
        ipv4("43", "0054", &"00".repeat(40)),
        ipv4("45", "0fff", &"00".repeat(40)),
        ipv4("45", "0010", &"00".repeat(40)),
        ipv4("45", "0054", &"00".repeat(64)),
        format!("{eth}08006500005400004000400100000a01010c0a01010b{}", "00".repeat(64)),
        // ARP with a bad hardware length, and cut short.
        format!("{eth}080600010800090400015254006001120a01010c0000000000000a01010b"),
        format!("{eth}0806000108000604"),
        // An oversized frame (9000 bytes on a 1500 network).
        format!("{eth}0800{}", "45".repeat(9000)),
    ];
    let before: u64 = ["malformed", "bad_ip", "truncated"].iter().map(|r| lab.drops("a2", r)).sum();
    for f in &frames {
        py(&lab, &net.a2, RAW, &[&ta2, f]);
    }
    let loss = ping_loss(&ping);
    assert!(loss < 5.0, "honest ping lost {loss}%");
    let after: u64 = ["malformed", "bad_ip", "truncated"].iter().map(|r| lab.drops("a2", r)).sum();
    let st = lab.show("stats");
    let a2 = st["ports"].as_array().unwrap().iter().find(|p| p["name"] == "a2").cloned().unwrap();
    // The kernel refuses to send the runts and the jumbo itself; the rest reach vrouter.
    assert!(after - before >= 6, "malformed frames counted: {} ({a2})", after - before);
    // Nothing of them reached a1: its tap got no frame of these lengths (a1 only saw pings).
    assert!(lab.vrouter_alive());
    assert!(lab.ping(&net.a1, "10.1.1.12", 2));
}

#[test]
fn the_public_side_gets_no_dhcp_dns_or_metadata_answers() {
    let _one = one_at_a_time();
    let mut lab = Lab::new("ap");
    let net = topology(&mut lab);
    // Positive control: the forward works from the outside (the public side is reachable).
    let srv = lab.path("http.log");
    lab.spawn_in(&net.a1, &["python3", "-c", HTTP, "10.1.1.11"], &srv);
    let t = std::time::Instant::now();
    while String::from_utf8_lossy(&lab.exec(&net.a1, &["ss", "-Hltn", "sport = :80"]).stdout).trim().is_empty() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "a1's http server: {} / {}",
            std::fs::read_to_string(&srv).unwrap_or_default(),
            String::from_utf8_lossy(&lab.exec(&net.a1, &["ss", "-ltnp"]).stdout)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let o = lab.exec(&net.out, &["python3", "-c", "import urllib.request;print(urllib.request.urlopen('http://203.0.113.10:8080/', timeout=5).status)"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "200", "{}", String::from_utf8_lossy(&o.stderr));
    // DNS to the public address, DHCP on the public link, metadata on port 80 of the public
    // address and of 169.254.169.254 through it: no answer.
    let o = lab.exec(&net.out, &["dig", "@203.0.113.10", "+time=1", "+tries=1", "a1.internal"]);
    let d = String::from_utf8_lossy(&o.stdout).into_owned();
    // No DNS message came back at all (dig prints a header with `status:` for any reply).
    assert!(!d.contains("status:") && !d.contains("ANSWER SECTION"), "DNS answered on the public side: {d}");
    let o = lab.exec(&net.out, &["python3", "-c", "import urllib.request;print(urllib.request.urlopen('http://203.0.113.10/latest/meta-data/', timeout=2).status)"]);
    assert!(!o.status.success(), "metadata answered on the public side: {}", String::from_utf8_lossy(&o.stdout));
    let pb = lab.name("pb");
    let dhcp = r#"
import socket, struct, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, sys.argv[1].encode())
s.bind(("0.0.0.0", 68))
mac = bytes([0x02, 0x55, 0, 0, 0, 1])
m = struct.pack("!BBBBIHH4s4s4s4s16s64s128s", 1, 1, 6, 0, 77, 0, 0x8000, b"\0"*4, b"\0"*4, b"\0"*4, b"\0"*4, mac + b"\0"*10, b"\0"*64, b"\0"*128) + b"\x63\x82\x53\x63\x35\x01\x01\xff"
s.sendto(m, ("255.255.255.255", 67))
s.settimeout(2)
try:
    s.recvfrom(2048); print("answered")
except socket.timeout:
    print("silent")
"#;
    let o = lab.exec(&net.out, &["python3", "-c", dhcp, &pb]);
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "silent", "{}", String::from_utf8_lossy(&o.stderr));
    // And the service queries were counted as what they are, not served.
    let st = lab.show("stats");
    let public = st["ports"].as_array().unwrap().iter().find(|p| p["name"] == "public").cloned().unwrap();
    let drops: u64 = public["drops"].as_object().map(|m| m.values().filter_map(|v| v.as_u64()).sum()).unwrap_or(0);
    assert!(drops >= 2, "public-side service queries not counted: {public}");
    assert!(lab.ping(&net.a1, "10.1.1.12", 2));
}

/// IPv4 packets built in Python: `ipv4(src, dst, proto, ident, frag_field, payload)`.
const IPV4: &str = r#"
import socket, struct
def csum(b):
    if len(b) % 2: b += b"\0"
    t = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while t >> 16: t = (t & 0xffff) + (t >> 16)
    return ~t & 0xffff
def ipv4(src, dst, proto, ident, frag, payload):
    h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ident, frag, 64, proto, 0, socket.inet_aton(src), socket.inet_aton(dst))
    return h[:10] + struct.pack("!H", csum(h)) + h[12:] + payload
"#;

#[test]
fn a_syn_flood_against_a_forward_and_a_load_balancer_leaves_room_for_honest_connections() {
    let _one = one_at_a_time();
    let mut lab = Lab::new("as");
    // The same topology with a small flow table, so a flood can fill it, and a load balancer
    // on port 80 in front of a1 and a2.
    let cfg = config(&lab)
        + "[conntrack]\nmax_flows = 1000\n"
        + "[[load_balancer]]\nname = \"web\"\npublic_ip = \"203.0.113.10\"\nprotocol = \"tcp\"\nport = 80\nalgorithm = \"roundrobin\"\nbackends = [{ ip = \"10.1.1.11\", port = 80 }, { ip = \"10.1.1.12\", port = 80 }]\n";
    lab.vrouter(&cfg);
    let net = topology_after_start(&mut lab);
    let srv = lab.path("http.log");
    lab.spawn_in(&net.a1, &["python3", "-c", HTTP, "10.1.1.11"], &srv);
    lab.spawn_in(&net.a2, &["python3", "-c", HTTP, "10.1.1.12"], &lab.path("http2.log"));
    for g in [&net.a1, &net.a2] {
        wait_for("the servers", Duration::from_secs(10), || !String::from_utf8_lossy(&lab.exec(g, &["ss", "-Hltn", "sport = :80"]).stdout).trim().is_empty());
    }
    let get = "import urllib.request;print(urllib.request.urlopen('http://203.0.113.10:8080/', timeout=3).read().decode())";
    // An honest client holds a connection open across the flood (established: never evicted).
    let held = lab.path("held.out");
    let hold = "import socket,time\nc=socket.create_connection(('203.0.113.10',8080),timeout=5)\ntime.sleep(6)\nc.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n')\nprint(c.recv(100).decode().split()[1])\n";
    lab.spawn_in(&net.out, &["python3", "-c", hold], &held);
    std::thread::sleep(Duration::from_millis(500));
    // 5000 SYNs from 5000 spoofed sources.
    let flood = format!(
        "{IPV4}\nimport random\ns = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)\nfor i in range(5000):\n    src = '198.51.%d.%d' % (100 + (i >> 8) % 50, i & 255)\n    tcp = struct.pack('!HHIIBBHHH', 20000 + i % 40000, (8080, 80)[i % 2], i, 0, 5 << 4, 0x02, 65535, 0, 0)\n    ph = socket.inet_aton(src) + socket.inet_aton('203.0.113.10') + struct.pack('!BBH', 0, 6, len(tcp))\n    tcp = tcp[:16] + struct.pack('!H', csum(ph + tcp)) + tcp[18:]\n    s.sendto(ipv4(src, '203.0.113.10', 6, i, 0, tcp), ('203.0.113.10', 0))\n"
    );
    let o = lab.exec(&net.out, &["python3", "-c", &flood]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Positive control: the flood filled the flow table (evictions happened).
    let ct = lab.show("stats");
    // (Some of the flood may be lost in the tap's queue when the machine is busy: the table
    // being full and evicting is what matters.)
    let c = &ct["conntrack"];
    let (flows, max, evicted) = (c["flows"].as_u64().unwrap_or(0), c["max"].as_u64().unwrap_or(0), c["evicted"].as_u64().unwrap_or(0));
    assert!(flows == max && evicted >= 1000, "the flood did not fill the table: {c}");
    // New honest connections still open, and the held one survived.
    for url in ["http://203.0.113.10:8080/", "http://203.0.113.10/", "http://203.0.113.10/"] {
        let o = lab.exec(&net.out, &["python3", "-c", &get.replace("http://203.0.113.10:8080/", url)]);
        assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "ok", "an honest connection to {url} after the flood: {}", String::from_utf8_lossy(&o.stderr));
    }
    let t = std::time::Instant::now();
    while std::fs::read_to_string(&held).unwrap_or_default().trim().is_empty() && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(std::fs::read_to_string(&held).unwrap_or_default().trim(), "200", "the established connection was broken by the flood");
    assert!(lab.ping(&net.a1, "10.1.1.12", 2));
}

#[test]
fn a_fragment_flood_from_one_guest_leaves_room_for_the_others() {
    let _one = one_at_a_time();
    let mut lab = Lab::new("ag");
    let net = topology(&mut lab);
    // 5000 first fragments from m, each its own datagram (more than the whole fragment table,
    // 4096), then later fragments for its last 100. They go beyond the outside (which drops
    // them unreassembled): filling the outside kernel's own reassembly memory is not what this
    // test is about.
    let flood = format!(
        "{IPV4}\nimport sys\ns = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)\ns.bind((sys.argv[1], 0))\neth = bytes.fromhex('{gw}525400600166') + b'\\x08\\x00'\nfor i in range(5000):\n    s.send(eth + ipv4('10.1.1.66', '198.51.100.99', 17, i, 0x2000, struct.pack('!HHHH', 4000, 9, 1008, 0) + b'x' * 1000))\n    if i % 100 == 99:\n        import time; time.sleep(0.002)\nfor i in range(4900, 5000):\n    s.send(eth + ipv4('10.1.1.66', '198.51.100.99', 17, i, 1008 // 8, b'y' * 200))\n",
        gw = "{GW}"
    );
    // Positive control of the honest side: fragmented pings go through before the flood.
    let o = lab.exec(&net.a2, &["ping", "-c", "2", "-W", "2", "-s", "3000", "203.0.113.1"]);
    assert!(o.status.success(), "a2's fragmented pings before the flood: {}", String::from_utf8_lossy(&o.stdout));
    // The router's MAC: what a1 resolved for its gateway.
    let gw_mac = gateway_mac(&lab, &net.a1);
    let flood = flood.replace("{GW}", &gw_mac);
    let tm = lab.name("m");
    let o = lab.exec(&net.m, &["python3", "-c", &flood, &tm]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Positive control: m's later fragments found no flow: it had used up its share.
    let no_flow = lab.drops("m", "frag_no_flow");
    assert!(no_flow >= 90, "m's over-share fragments: {no_flow}");
    // a2's own fragmented datagrams (3000-byte pings, fragmented both ways) still go through.
    let o = lab.exec(&net.a2, &["ping", "-c", "3", "-W", "2", "-s", "3000", "203.0.113.1"]);
    assert!(o.status.success(), "a2's fragmented pings after the flood: {}", String::from_utf8_lossy(&o.stdout));
    assert_eq!(lab.drops("a2", "frag_no_flow"), 0);
}

#[test]
fn nat_port_exhaustion_toward_one_destination_spares_the_others() {
    let _one = one_at_a_time();
    let mut lab = Lab::new("an");
    let net = topology(&mut lab);
    let tm = lab.name("m");
    let gw_mac = gateway_mac(&lab, &net.m);
    // 70000 UDP flows to 203.0.113.1:9 from m (two of its addresses, every source port): more
    // than the 64512 translated ports one destination can have.
    let flood = format!(
        "{IPV4}\nimport sys, time\ns = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)\ns.bind((sys.argv[1], 0))\neth = bytes.fromhex('{gw_mac}525400600166') + b'\\x08\\x00'\nn = 0\nfor src in ('10.1.1.66', '10.1.1.67'):\n    for sport in range(1024, 65536):\n        if n == 70000: break\n        s.send(eth + ipv4(src, '203.0.113.1', 17, n & 0xffff, 0, struct.pack('!HHHH', sport, 9, 9, 0) + b'z'))\n        n += 1\n        if n % 200 == 0: time.sleep(0.002)\n"
    );
    let o = lab.exec(&net.m, &["python3", "-c", &flood, &tm]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Positive control: that destination's ports are used up: even an honest guest's new flow
    // to it finds none.
    let exhausted = lab.drops("m", "nat_exhausted");
    assert!(exhausted >= 1000, "m's flows past the port space: {exhausted}");
    let udp = "import socket,sys\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\nfor p in range(3):\n    s.sendto(b'x',(sys.argv[1],int(sys.argv[2])))\n";
    let _ = lab.exec(&net.a2, &["python3", "-c", udp, "203.0.113.1", "9"]);
    assert!(lab.drops("a2", "nat_exhausted") >= 1, "the destination's port space is shared");
    // Every other destination is untouched: another address of the outside, by ping and TCP.
    assert!(lab.ping(&net.a1, "203.0.113.7", 3), "another destination");
    lab.spawn_in(&net.out, &["python3", "-c", "import socket\ns=socket.socket(); s.bind(('203.0.113.7', 7000)); s.listen(8)\nwhile True:\n    c,_=s.accept(); c.sendall(b'hi'); c.close()\n"], &lab.path("srv7.log"));
    wait_for("the outside's server", Duration::from_secs(5), || !String::from_utf8_lossy(&lab.exec(&net.out, &["ss", "-Hltn", "sport = :7000"]).stdout).trim().is_empty());
    let o = lab.exec(&net.a1, &["python3", "-c", "import socket;c=socket.create_connection(('203.0.113.7',7000),timeout=3);print(c.recv(10).decode())"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "hi", "{}", String::from_utf8_lossy(&o.stderr));
    assert!(lab.ping(&net.a1, "10.1.1.12", 2));
}

#[test]
fn icmp_floods_are_answered_within_limits_and_errors_are_rate_limited() {
    let _one = one_at_a_time();
    let mut lab = Lab::new("ai");
    let net = topology(&mut lab);
    let ping = honest_ping(&mut lab, &net, 4);
    // An echo flood at the gateway (answered, as Linux does), and a flood of datagrams with
    // TTL 1 toward the outside: each would earn an ICMP time exceeded, at most 200/s are sent.
    let o = lab.exec(&net.m, &["ping", "-f", "-c", "5000", "-w", "3", "10.1.1.1"]);
    let flood = String::from_utf8_lossy(&o.stdout).into_owned();
    let udp = "import socket,time\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, 1)\nend=time.time()+2\nn=0\nwhile time.time()<end:\n    s.sendto(b'x',('203.0.113.1',33434)); n+=1\nprint(n)\n";
    let sent: u64 = String::from_utf8_lossy(&lab.exec(&net.m, &["python3", "-c", udp]).stdout).trim().parse().unwrap_or(0);
    let loss = ping_loss(&ping);
    assert!(loss < 5.0, "the honest ping lost {loss}% during the floods ({flood})");
    assert!(flood.contains("received"), "{flood}");
    let st = lab.show("stats");
    let limited = st["router"]["icmp_rate_limited"].as_u64().unwrap_or(0);
    let errors = st["router"]["icmp_sent"].as_u64().unwrap_or(0);
    // Positive control: the flood elicited errors (some sent), far fewer than it asked for.
    // Compared with what reached the router, not with what the guest sent: its kernel drops
    // at the tap's queue whatever the loop has not read yet, and how much depends on the
    // machine's load.
    assert!(
        sent > 1000 && errors >= 1 && limited > 1000 && limited > 10 * errors,
        "{sent} TTL-1 datagrams, {errors} errors sent, {limited} held back: {}",
        st["router"]
    );
    assert!(lab.ping(&net.a2, "10.1.1.11", 2));
}

#[test]
fn a_dns_flood_from_one_guest_leaves_the_resolver_to_the_others() {
    let _one = one_at_a_time();
    let mut lab = Lab::new("ad2");
    // A slow upstream on loopback: every answer 1.5 s late, so queries stay pending.
    let port = {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        s.local_addr().unwrap().port()
    };
    let slow = r#"
import socket, struct, sys, threading, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(('127.0.0.1', int(sys.argv[1])))
def answer(q, a):
    time.sleep(1.5)
    i = 12
    while q[i] != 0:
        i += q[i] + 1
    s.sendto(q[:2] + struct.pack('>HHHHH', 0x8180, 1, 1, 0, 0) + q[12:i + 5] + b'\xc0\x0c' + struct.pack('>HHIH', 1, 1, 300, 4) + bytes([192, 0, 2, 77]), a)
while True:
    q, a = s.recvfrom(4096)
    threading.Thread(target=answer, args=(q, a), daemon=True).start()
"#;
    lab.spawn_host(&["python3", "-c", slow, &port.to_string()], &lab.path("slow.log"));
    let cfg = config(&lab).replace("lease_secs = 600\n", "lease_secs = 600\ndomain = \"acct.internal\"\n") + &format!("[dns]\nupstreams = [\"127.0.0.1:{port}\"]\ncache_entries = 0\n");
    lab.vrouter(&cfg);
    let net = topology_after_start(&mut lab);
    // 5000 queries for 5000 outside names from m (distinct names: the same one would share
    // one upstream query), as fast as it can.
    let flood = "import socket,struct,time\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\nfor i in range(5000):\n    n=b'f%d' % i\n    q=struct.pack('>HHHHHH',i,0x0100,1,0,0,0)+bytes([len(n)])+n+bytes([7])+b'example'+bytes([0])+struct.pack('>HH',1,1)\n    s.sendto(q,('10.1.1.1',53))\n    if i % 200 == 199: time.sleep(0.002)\n";
    let o = lab.exec(&net.m, &["python3", "-c", flood]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // While m's queries wait for the slow upstream, a2 asks for an outside name: answered.
    let d = String::from_utf8_lossy(&lab.exec(&net.a2, &["dig", "@10.1.1.1", "+time=4", "+tries=1", "honest.example."]).stdout).into_owned();
    assert!(d.contains("192.0.2.77"), "a2's query during m's flood: {d}");
    // Positive control: m's flood ran into its share (128 pending queries per source).
    let busy = lab.drops("m", "dns_busy");
    assert!(busy >= 3000, "m's queries over its share: {busy}: {}", lab.show("stats"));
    assert_eq!(lab.drops("a2", "dns_busy"), 0);
}

#[test]
fn a_guest_sending_to_unresolvable_addresses_cannot_fill_the_neighbour_queue() {
    let _one = one_at_a_time();
    let mut lab = Lab::new("aq");
    let net = topology(&mut lab);
    // m sends to 150 public addresses nobody answers ARP for, 10 datagrams each: the router
    // queues frames while it asks (16 per address, 256 in all, 64 per sender).
    let flood = "import socket,time\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\nfor k in range(10):\n    for h in range(100, 250):\n        s.sendto(b'q',('203.0.113.%d' % h, 9))\n        if h % 100 == 99: time.sleep(0.002)\n";
    let o = lab.exec(&net.m, &["python3", "-c", flood]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Right away, before those entries fail: a2 reaches an outside address it never talked to
    // (its first frame waits in the queue for ARP like m's did).
    assert!(lab.ping(&net.a2, "203.0.113.7", 2), "a2 to a new outside address during m's flood");
    // Positive control: m's frames ran into its share of the queue, many times over (1500
    // frames against a share of 64; how many of the rest are refused as over the share rather
    // than lost in m's tap queue or refused after their entries failed depends on the
    // machine's load: 935 in one CI run).
    let full = lab.drops("m", "neigh_queue_full");
    assert!(full >= 200, "m's frames over its share: {full}");
    assert_eq!(lab.drops("a2", "neigh_queue_full"), 0);
}

/// A "VM" that writes to its tap as QEMU does, with a virtio_net_hdr before each frame it
/// chooses itself: argv[1] the tap to create, argv[2] a file whose appearance starts the
/// writes, then frames as `HEX_VNET:HEX_FRAME`.
const QEMU_LIKE: &str = r#"
import fcntl, os, struct, subprocess, sys, time
TUNSETIFF, IFF_TAP, IFF_NO_PI, IFF_VNET_HDR = 0x400454ca, 0x0002, 0x1000, 0x4000
fd = os.open("/dev/net/tun", os.O_RDWR)
fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", sys.argv[1].encode(), IFF_TAP | IFF_NO_PI | IFF_VNET_HDR))
subprocess.run(["ip", "link", "set", sys.argv[1], "up"], check=True)
while not os.path.exists(sys.argv[2]):
    time.sleep(0.05)
ok = bad = 0
for a in sys.argv[3:]:
    v, f = a.split(":")
    try:
        os.write(fd, bytes.fromhex(v) + bytes.fromhex(f)); ok += 1
    except OSError:
        bad += 1
print(ok, bad, flush=True)
time.sleep(3)
"#;

#[test]
fn a_vm_writing_bad_offload_headers_is_counted_and_harms_nobody() {
    let _one = one_at_a_time();
    let mut lab = Lab::new("av");
    let tq = lab.name("q");
    let go = lab.path("go");
    let out = lab.path("qemu-like.out");
    // A TCP segment from the "VM" q (MAC 52:54:00:60:01:77, 10.1.1.22:40000) to a2
    // (10.1.1.12:80), 100 bytes of payload, handed to its tap with a partial checksum.
    let tcp_frame = {
        let mut f = String::from("52540060011252540060017708004500008c000040004006");
        f += "0000"; // header checksum (not checked for a partial-checksum frame's L4; IPv4 is)
        f += "0a0101160a01010c"; // 10.1.1.22 -> 10.1.1.12
        f += "9c400050000000010000000050180200";
        f += "00000000"; // checksum (partial) and urgent pointer
        f += &"61".repeat(100);
        // The IPv4 header checksum, computed here.
        let b: Vec<u8> = (0..f.len()).step_by(2).map(|i| u8::from_str_radix(&f[i..i + 2], 16).unwrap()).collect();
        let ip = &b[14..34];
        let mut sum: u32 = ip.chunks(2).map(|c| u16::from_be_bytes([c[0], c[1]]) as u32).sum();
        while sum >> 16 != 0 {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        let c = !(sum as u16);
        format!("{}{:04x}{}", &f[..48], c, &f[52..])
    };
    // virtio_net_hdr: flags, gso_type, hdr_len, gso_size, csum_start, csum_offset (LE).
    let vnet = |flags: u8, gso: u8, gso_size: u16, start: u16, off: u16| format!("{flags:02x}{gso:02x}0000{}{}{}", hex16(gso_size), hex16(start), hex16(off));
    fn hex16(v: u16) -> String {
        v.to_le_bytes().iter().map(|b| format!("{b:02x}")).collect()
    }
    let frames = [
        // Good: a partial checksum where TCP's is (start 34, offset 16).
        format!("{}:{tcp_frame}", vnet(1, 0, 0, 34, 16)),
        // Bad: the checksum offset is not TCP's (the kernel's tap only checks it is inside).
        format!("{}:{tcp_frame}", vnet(1, 0, 0, 34, 4)),
        format!("{}:{tcp_frame}", vnet(1, 0, 0, 40, 16)),
        // Bad: TCP segmentation asked of a segment with a 1-byte MSS.
        format!("{}:{tcp_frame}", vnet(1, 1, 1, 34, 16)),
    ];
    let mut args: Vec<String> = vec![tq.clone(), go.to_str().unwrap().to_string()];
    args.extend(frames.iter().cloned());
    let mut a: Vec<&str> = vec!["python3", "-c", QEMU_LIKE];
    a.extend(args.iter().map(|s| s.as_str()));
    lab.spawn_host(&a, &out);
    wait_for("the VM's tap", Duration::from_secs(5), || run(&["ip", "link", "show", &tq]).status.success());
    let cfg = config(&lab) + &cfg::port("q", "web", "netdev", &tq, "52:54:00:60:01:77", "port_security = false");
    lab.vrouter(&cfg);
    let net = topology_after_start(&mut lab);
    let cap = lab.path("a2.pcap");
    let ta2 = lab.name("a2");
    let tcpdump = lab.spawn_in(&net.a2, &["tcpdump", "-nn", "-U", "-i", &ta2, "-w", cap.to_str().unwrap(), "tcp port 80"], &lab.path("tcpdump.log"));
    std::thread::sleep(Duration::from_millis(800));
    std::fs::write(&go, "").unwrap();
    let t = std::time::Instant::now();
    while std::fs::read_to_string(&out).unwrap_or_default().trim().is_empty() {
        assert!(t.elapsed() < Duration::from_secs(10), "the VM never wrote");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    lab.interrupt(tcpdump);
    let written = std::fs::read_to_string(&out).unwrap_or_default();
    // What the kernel's tap took (all four: it only checks that the checksum field lies in the
    // frame), vrouter saw: the three bad ones counted, the good one delivered.
    let bad = lab.drops("q", "bad_vnet_hdr");
    let took: usize = written.split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or(0);
    assert!(took >= 2, "the tap took {written}");
    assert!(
        bad as usize == took - 1,
        "bad headers counted: {bad} of {took} written ({written}): {}",
        lab.show("stats")["ports"].as_array().unwrap().iter().find(|p| p["name"] == "q").cloned().unwrap_or_default()
    );
    let seen = String::from_utf8_lossy(&lab.exec(&net.a2, &["tcpdump", "-nn", "-r", cap.to_str().unwrap()]).stdout).into_owned();
    // Positive control: the good frame reached a2 (so the test sees what gets through).
    assert!(seen.lines().count() >= 1 && seen.lines().count() as u64 <= took as u64 - bad, "a2 saw: {seen}");
    assert!(lab.ping(&net.a1, "10.1.1.12", 2));
}
