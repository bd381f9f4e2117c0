//! Faults: vrouter killed with -9 in the middle of traffic and restarted, on a "host" that
//! forwards IP (as a hypervisor does) and has its own uplink. Nothing may leave un-NATed: not
//! through the public side while vrouter is down or restarting (its ports are packet sockets on
//! veths the host also sees), and not through the host's own routing.
//!
//! Namespaces: host H (vrouter runs here; ip_forward on, rp_filter off, a default route out
//! of its uplink to L), guest G (10.1.1.11 behind H's veth `g`), outside O (203.0.113.1 behind
//! H's veth `p`, vrouter's public side 203.0.113.10), and L (the host's upstream, 192.0.2.1),
//! where any leak would show.
//!
//! Also: the DNS upstream dying (SERVFAIL, not silence; local names still answered; timeouts
//! counted) and coming back (answered again with nothing restarted).

mod common;
use common::*;
use std::time::Duration;

fn veth(host: &str, here: &str, ns: &str, there: &str) {
    ok(&["ip", "-n", host, "link", "add", here, "type", "veth", "peer", "name", there, "netns", ns]);
    ok(&["ip", "-n", host, "link", "set", here, "up"]);
    ok(&["ip", "-n", ns, "link", "set", there, "up"]);
}

fn ns(lab: &mut Lab, tag: &str) -> String {
    let n = lab.name(tag);
    ok(&["ip", "netns", "add", &n]);
    lab.adopt_netns(n.clone());
    ok(&["ip", "-n", &n, "link", "set", "lo", "up"]);
    let _ = lab.exec(&n, &["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
    n
}

/// Source addresses of the IPv4 packets in a capture file that arrived on its interface.
fn sources(lab: &Lab, ns: &str, pcap: &std::path::Path) -> Vec<String> {
    let o = lab.exec(ns, &["tcpdump", "-nn", "-r", pcap.to_str().unwrap(), "ip"]);
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        // "a.b.c.d.port" for TCP and UDP, "a.b.c.d" otherwise.
        .map(|s| s.split('.').take(4).collect::<Vec<_>>().join("."))
        .collect()
}

#[test]
fn kill_9_under_load_leaks_nothing_unnated_and_guests_keep_working() {
    let mut lab = Lab::new("fk");
    let h = ns(&mut lab, "h");
    let g = ns(&mut lab, "g");
    let o = ns(&mut lab, "o");
    let l = ns(&mut lab, "l");
    veth(&h, "g", &g, "eth0");
    veth(&h, "p", &o, "eth0");
    veth(&h, "u", &l, "eth0");
    // The host forwards and does not filter by reverse path: the worst case for a leak.
    for k in ["net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0", "net.ipv4.conf.g.rp_filter=0", "net.ipv4.conf.p.rp_filter=0"] {
        ok(&["ip", "netns", "exec", &h, "sysctl", "-qw", k]);
    }
    ok(&["ip", "-n", &h, "addr", "add", "192.0.2.2/24", "dev", "u"]);
    ok(&["ip", "-n", &h, "route", "add", "default", "via", "192.0.2.1"]);
    ok(&["ip", "-n", &l, "addr", "add", "192.0.2.1/24", "dev", "eth0"]);
    ok(&["ip", "-n", &g, "link", "set", "eth0", "address", "52:54:00:70:01:11"]);
    ok(&["ip", "-n", &g, "addr", "add", "10.1.1.11/24", "dev", "eth0"]);
    ok(&["ip", "-n", &g, "route", "add", "default", "via", "10.1.1.1"]);
    ok(&["ip", "-n", &o, "addr", "add", "203.0.113.1/24", "dev", "eth0"]);
    let cfg = [
        cfg::router(&lab.id),
        cfg::l3_network("web", "10.1.1.0/24", "10.1.1.1", ""),
        cfg::port("a1", "web", "netdev", "g", "52:54:00:70:01:11", "ip = \"10.1.1.11\""),
        "[public]\nkind = \"netdev\"\nifname = \"p\"\nips = [\"203.0.113.10/24\"]\ngateway = \"203.0.113.1\"\n".to_string(),
    ]
    .concat();
    lab.vrouter_at("", Some(&h), &cfg);
    assert!(lab.ping(&g, "203.0.113.1", 5), "through source NAT before the fault");

    // Captures of what arrives at the outside and at the host's upstream.
    let (po, pl) = (lab.path("outside.pcap"), lab.path("upstream.pcap"));
    let co = lab.spawn_in(&o, &["tcpdump", "-nn", "-U", "-Q", "in", "-i", "eth0", "-w", po.to_str().unwrap(), "ip"], &lab.path("tcpdump-o.log"));
    let cl = lab.spawn_in(&l, &["tcpdump", "-nn", "-U", "-Q", "in", "-i", "eth0", "-w", pl.to_str().unwrap(), "ip"], &lab.path("tcpdump-l.log"));
    std::thread::sleep(Duration::from_millis(800));
    // Load: a TCP stream, pings every 20 ms, and UDP datagrams, all toward the outside.
    lab.spawn_in(&o, &["iperf3", "-s", "-1"], &lab.path("iperf-s.log"));
    wait_for("iperf3 server", Duration::from_secs(5), || !String::from_utf8_lossy(&lab.exec(&o, &["ss", "-Hltn", "sport = :5201"]).stdout).trim().is_empty());
    lab.spawn_in(&g, &["iperf3", "-c", "203.0.113.1", "-t", "8", "--connect-timeout", "3000"], &lab.path("iperf-c.log"));
    lab.spawn_in(&g, &["ping", "-i", "0.02", "-w", "8", "203.0.113.1"], &lab.path("ping.log"));
    let udp = "import socket,time\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\nend=time.time()+8\nwhile time.time()<end:\n    s.sendto(b'x'*100,('203.0.113.1',9)); time.sleep(0.01)\n";
    lab.spawn_in(&g, &["python3", "-c", udp], &lab.path("udp.log"));
    std::thread::sleep(Duration::from_secs(2));
    // kill -9 in the middle of it; 1.5 s down; the same config again.
    signal(lab.vrouter_pid(), "KILL");
    wait_for("vrouter to die", Duration::from_secs(5), || !lab.vrouter_alive());
    std::thread::sleep(Duration::from_millis(1500));
    let _ = std::fs::remove_file(lab.path("ctl.sock"));
    lab.vrouter_at("", Some(&h), &cfg);
    std::thread::sleep(Duration::from_secs(6));
    // The guest keeps working after the restart.
    assert!(lab.ping(&g, "203.0.113.1", 5), "through source NAT after the restart");
    lab.interrupt(co);
    lab.interrupt(cl);
    let at_o = sources(&lab, &o, &po);
    let at_l = sources(&lab, &l, &pl);
    assert!(at_o.len() > 500, "the outside saw the load: {} packets", at_o.len());
    eprintln!("outside: {} packets, all from 203.0.113.10; host upstream: {} packets", at_o.len(), at_l.len());
    let unnated: Vec<&String> = at_o.iter().filter(|s| s.as_str() != "203.0.113.10").collect();
    assert!(unnated.is_empty(), "{} packets reached the outside without source NAT, e.g. {:?}", unnated.len(), &unnated[..unnated.len().min(5)]);
    let leaked: Vec<&String> = at_l.iter().filter(|s| s.starts_with("10.1.1.")).collect();
    assert!(leaked.is_empty(), "{} guest packets left through the host's own routing", leaked.len());

    // Positive control: the upstream capture would see a leak. A frame to the host's own MAC
    // (as a guest that found it by ARP would send) is routed by the host straight out.
    let o2 = lab.exec(&h, &["cat", "/sys/class/net/g/address"]);
    let host_mac = String::from_utf8_lossy(&o2.stdout).trim().to_string();
    let pl2 = lab.path("upstream2.pcap");
    let cl2 = lab.spawn_in(&l, &["tcpdump", "-nn", "-U", "-Q", "in", "-i", "eth0", "-w", pl2.to_str().unwrap(), "ip"], &lab.path("tcpdump-l2.log"));
    std::thread::sleep(Duration::from_millis(800));
    ok(&["ip", "-n", &g, "neigh", "replace", "10.1.1.99", "lladdr", &host_mac, "dev", "eth0"]);
    ok(&["ip", "-n", &g, "route", "add", "198.51.100.0/24", "via", "10.1.1.99"]);
    let _ = lab.exec(&g, &["ping", "-c", "3", "-W", "1", "198.51.100.7"]);
    std::thread::sleep(Duration::from_millis(300));
    lab.interrupt(cl2);
    let seen = sources(&lab, &l, &pl2);
    assert!(seen.iter().any(|s| s == "10.1.1.11"), "the leak detector saw nothing when the host did forward: {seen:?}");
}

/// A DNS server on 127.0.0.1:`port` answering every A question with 192.0.2.77.
const UPSTREAM: &str = r#"
import socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('127.0.0.1', int(sys.argv[1])))
while True:
    q, a = s.recvfrom(4096)
    qid = struct.unpack('>H', q[:2])[0]
    i = 12
    while q[i] != 0:
        i += q[i] + 1
    question = q[12:i + 5]
    s.sendto(struct.pack('>HHHHHH', qid, 0x8180, 1, 1, 0, 0) + question + b'\xc0\x0c' + struct.pack('>HHIH', 1, 1, 300, 4) + bytes([192, 0, 2, 77]), a)
"#;

#[test]
fn dns_upstreams_dying_and_coming_back() {
    let mut lab = Lab::new("fu");
    // A free port for the upstream, on this (the root) namespace's loopback: vrouter's own
    // sockets ask it.
    let port = {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        s.local_addr().unwrap().port()
    };
    let cfg = [
        cfg::router(&lab.id),
        cfg::l3_network("web", "10.1.1.0/24", "10.1.1.1", "domain = \"acct.internal\"\n"),
        cfg::port("a1", "web", "tap", &lab.name("a1"), "52:54:00:71:01:11", "ip = \"10.1.1.11\"\nhostname = \"web1\""),
        format!("[dns]\nupstreams = [\"127.0.0.1:{port}\"]\ncache_entries = 0\n"),
    ]
    .concat();
    lab.vrouter(&cfg);
    let ta1 = lab.name("a1");
    let g = lab.guest("ga", &ta1, "10.1.1.11/24");
    let dig = |lab: &Lab, name: &str| -> String {
        String::from_utf8_lossy(&lab.exec(&g, &["dig", "@10.1.1.1", "+time=3", "+tries=1", name]).stdout).into_owned()
    };
    let up = lab.spawn_host(&["python3", "-c", UPSTREAM, &port.to_string()], &lab.path("upstream.log"));
    wait_for("the upstream answers", Duration::from_secs(10), || dig(&lab, "a.example.").contains("192.0.2.77"));
    // The upstream dies: an outside name gets SERVFAIL (not silence), local names still
    // resolve, and the timeouts are counted.
    lab.kill(up);
    let d = dig(&lab, "b.example.");
    assert!(d.contains("status: SERVFAIL"), "with the upstream dead: {d}");
    assert!(dig(&lab, "web1.acct.internal.").contains("10.1.1.11"), "local names while the upstream is dead");
    let st = lab.show("stats");
    assert!(st["dns"]["upstream_timeouts"].as_u64().unwrap_or(0) >= 1 && st["dns"]["servfail"].as_u64().unwrap_or(0) >= 1, "{}", st["dns"]);
    // It comes back on the same port: answers again, nothing to restart.
    lab.spawn_host(&["python3", "-c", UPSTREAM, &port.to_string()], &lab.path("upstream2.log"));
    wait_for("the upstream answers again", Duration::from_secs(10), || dig(&lab, "c.example.").contains("192.0.2.77"));
    assert!(lab.vrouter_alive());
}
