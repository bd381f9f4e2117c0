//! Guests in network namespaces on vrouter taps: connectivity, throughput, isolation between
//! networks, VLAN hopping from a guest port, and the control socket.

mod common;
use common::*;
use std::time::Duration;

/// web: a1, a2 (port security with IPs); db: b1, the intruder, without port security so it
/// may use any MAC and IP it likes.
fn config(lab: &Lab) -> String {
    [
        cfg::router(&lab.id),
        cfg::network("web", "10.1.1.0/24", Some(101)),
        cfg::network("db", "10.1.2.0/24", Some(102)),
        cfg::port("a1", "web", "tap", &lab.name("a1"), "52:54:00:10:01:11", "ip = \"10.1.1.11\""),
        cfg::port("a2", "web", "tap", &lab.name("a2"), "52:54:00:10:01:12", "ip = \"10.1.1.12\""),
        cfg::port("b1", "db", "tap", &lab.name("b1"), "52:54:00:10:02:11", "port_security = false"),
    ]
    .concat()
}

#[test]
fn two_guests_ping_and_iperf3_and_ctl() {
    let mut lab = Lab::new("p");
    let cfg = config(&lab);
    let sock = lab.vrouter(&cfg);
    let a1 = lab.guest("n1", &lab.name("a1"), "10.1.1.11/24");
    let a2 = lab.guest("n2", &lab.name("a2"), "10.1.1.12/24");
    // The guest NIC got the configured MAC from vrouter.
    let link = ok(&["ip", "-n", &a1, "link", "show", &lab.name("a1")]);
    assert!(link.contains("52:54:00:10:01:11"), "{link}");

    assert!(lab.ping(&a1, "10.1.1.12", 5), "a1 -> a2");
    assert!(lab.ping(&a2, "10.1.1.11", 5), "a2 -> a1");
    let out = lab.exec(&a1, &["ping", "-c", "5", "-i", "0.2", "10.1.1.12"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains(" 0% packet loss"));

    // iperf3: a short TCP run must move data both ways through vrouter.
    let srv = lab.spawn_in(&a2, &["iperf3", "-s", "-1"], &lab.path("iperf-s.log"));
    // Retry while the server is still starting (a refused connect does not use up `-1`).
    let mut o = lab.exec(&a1, &["true"]);
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(250));
        o = lab.exec(&a1, &["iperf3", "-c", "10.1.1.12", "-t", "2", "-J"]);
        if o.status.success() || !String::from_utf8_lossy(&o.stdout).contains("unable to connect") {
            break;
        }
    }
    assert!(o.status.success(), "iperf3: {}", String::from_utf8_lossy(&o.stdout));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let bytes = j["end"]["sum_received"]["bytes"].as_u64().unwrap();
    let bps = j["end"]["sum_received"]["bits_per_second"].as_f64().unwrap();
    eprintln!("iperf3 through vrouter: {:.2} Gbit/s", bps / 1e9);
    assert!(bytes > 1_000_000, "iperf3 moved only {bytes} bytes");
    let _ = srv;

    // Control socket: tables as JSON and as text, socket mode 0600.
    let ports = lab.show("ports");
    let a1p = ports.as_array().unwrap().iter().find(|p| p["name"] == "a1").unwrap();
    assert_eq!(a1p["offload"], true);
    assert!(a1p["rx_frames"].as_u64().unwrap() > 1000);
    let fdb = lab.show("fdb");
    let macs: Vec<&str> = fdb.as_array().unwrap().iter().map(|e| e["mac"].as_str().unwrap()).collect();
    assert!(macs.contains(&"52:54:00:10:01:11") && macs.contains(&"52:54:00:10:01:12"), "{fdb}");
    let stats = lab.show("stats");
    assert!(stats["totals"]["tx_bytes"].as_u64().unwrap() >= bytes);
    assert!(stats["latency"]["frame"]["count"].as_u64().unwrap() > 1000, "{stats}");
    // Offloads end to end: the sender's TSO super-frames crossed whole, none was cut in software.
    let a1s = stats["ports"].as_array().unwrap().iter().find(|p| p["name"] == "a1").unwrap();
    assert!(a1s["rx_gso_frames"].as_u64().unwrap() > 100, "{a1s}");
    assert!(a1s["rx_bytes"].as_u64().unwrap() / a1s["rx_frames"].as_u64().unwrap() > 1514, "{a1s}");
    assert_eq!(stats["totals"]["tx_sw_segmented"], 0);
    assert!(stats["latency"]["write"]["p50_ns"].as_u64().unwrap() > 0, "{stats}");
    // The guests' NICs had their MAC before they first went up: nothing legitimate was dropped.
    assert_eq!(stats["totals"]["drops"].get("spoofed_mac"), None, "{stats}");
    let text = ok(&[bin(), "ctl", "-s", sock.to_str().unwrap(), "show", "ports"]);
    assert!(text.starts_with("NAME") && text.contains("a2"), "{text}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777, 0o600);
    // A client that connects and says nothing does not block the others: a request sent while
    // it holds its connection is answered before the server would give up on the silent one
    // (10 s). A liveness bound, not a performance figure.
    use std::io::{BufRead, Write};
    let _silent = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    let mut q = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    q.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    q.write_all(b"{\"cmd\":\"show\",\"table\":\"ports\"}\n").unwrap();
    let mut answer = String::new();
    std::io::BufReader::new(&q).read_line(&mut answer).expect("answered while a silent client is connected");
    assert!(answer.contains("\"ok\":true"), "{answer}");
    // Garbage on the control socket gets an error answer; the daemon keeps running.
    let mut s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    s.write_all(b"\xff\xfe{not json\n").unwrap();
    let mut line = String::new();
    std::io::BufReader::new(&s).read_line(&mut line).unwrap();
    assert!(line.contains("\"ok\":false"), "{line}");
    let o = run(&[bin(), "ctl", "-s", sock.to_str().unwrap(), "show", "lb"]);
    assert!(o.status.success() && String::from_utf8_lossy(&o.stdout).contains("no [[load_balancer]] configured"));
    // The file unchanged: a reload applies nothing and says so.
    let o = run(&[bin(), "ctl", "-s", sock.to_str().unwrap(), "reload"]);
    assert!(o.status.success() && String::from_utf8_lossy(&o.stdout).contains("no changes"), "{}", String::from_utf8_lossy(&o.stderr));
    let o = run(&[bin(), "ctl", "-s", sock.to_str().unwrap(), "show", "leases"]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("no network is served by DHCP"));
    assert!(lab.vrouter_alive());
    assert!(lab.ping(&a1, "10.1.1.12", 2));
}

/// A python3 one-liner that sends raw frames (hex) out of an interface.
fn send_raw(lab: &Lab, ns: &str, ifname: &str, frames: &[String]) {
    let code = format!(
        "import socket\ns=socket.socket(socket.AF_PACKET, socket.SOCK_RAW)\ns.bind(('{ifname}',0))\nfor f in {frames:?}:\n  [s.send(bytes.fromhex(f)) for _ in range(3)]\n"
    );
    let o = lab.exec(ns, &["python3", "-c", &code]);
    assert!(o.status.success(), "raw send: {}", String::from_utf8_lossy(&o.stderr));
}

fn icmp_frame(dst: &str, src: &str, tags: &[u16]) -> String {
    // IPv4 10.1.1.50 -> 10.1.1.11 ICMP echo (checksums need not be right: it must not arrive).
    let mut f = format!("{}{}", dst.replace(':', ""), src.replace(':', ""));
    for t in tags {
        f += &format!("8100{t:04x}");
    }
    f += "0800450000540000400040010000";
    f += "0a010132"; // 10.1.1.50
    f += "0a01010b"; // 10.1.1.11
    f += "08000000000100010000";
    f += &"00".repeat(56);
    f
}

#[test]
fn networks_are_isolated_even_against_spoofing_and_vlan_hopping() {
    let mut lab = Lab::new("i");
    let cfg = config(&lab);
    lab.vrouter(&cfg);
    let a1 = lab.guest("n1", &lab.name("a1"), "10.1.1.11/24");
    let a2 = lab.guest("n2", &lab.name("a2"), "10.1.1.12/24");
    let b1if = lab.name("b1");
    // The db guest takes an address of the web subnet.
    let b1 = lab.guest("n3", &b1if, "10.1.1.50/24");
    assert!(lab.ping(&a1, "10.1.1.12", 5), "same network works");

    // Watch everything a1 receives.
    let pcap = lab.path("a1.pcap");
    let tcpdump = lab.spawn_in(&a1, &["tcpdump", "--immediate-mode", "-i", &lab.name("a1"), "-n", "-U", "-w", pcap.to_str().unwrap()], &lab.path("tcpdump.log"));
    wait_for("tcpdump", Duration::from_secs(10), || std::fs::metadata(&pcap).is_ok_and(|m| m.len() > 0));

    // 1. ARP broadcasts for a web address.
    assert!(!lab.ping(&b1, "10.1.1.11", 2), "db guest must not reach web by ARP");
    // 2. Straight to a1's MAC with a static neighbour entry.
    ok(&["ip", "-n", &b1, "neigh", "replace", "10.1.1.11", "lladdr", "52:54:00:10:01:11", "dev", &b1if]);
    assert!(!lab.ping(&b1, "10.1.1.11", 2), "db guest must not reach web by MAC");
    // 3. Using a2's MAC as its own: must not poison web's table either.
    ok(&["ip", "-n", &b1, "link", "set", &b1if, "address", "52:54:00:10:01:12"]);
    assert!(!lab.ping(&b1, "10.1.1.11", 2));
    // 4. VLAN hopping: frames tagged with web's VLAN, single and double, unicast and broadcast.
    let me = "52:54:00:10:01:12";
    send_raw(&lab, &b1, &b1if, &[
        icmp_frame("52:54:00:10:01:11", me, &[101]),
        icmp_frame("ff:ff:ff:ff:ff:ff", me, &[101]),
        icmp_frame("52:54:00:10:01:11", me, &[102, 101]),
    ]);
    // Web keeps working, with a2 still found where it really is.
    assert!(lab.ping(&a1, "10.1.1.12", 3), "web still works after the spoofing");
    std::thread::sleep(Duration::from_millis(300));
    lab.interrupt(tcpdump);

    let count = |filter: &str| -> usize {
        let o = run(&["tcpdump", "-n", "-r", pcap.to_str().unwrap(), filter]);
        String::from_utf8_lossy(&o.stdout).lines().count()
    };
    assert!(count("host 10.1.1.12") > 0, "positive control: a1 saw a2's traffic");
    assert_eq!(count("host 10.1.1.50 or vlan or ether src 52:54:00:10:02:11"), 0, "a frame crossed from db to web");
    assert!(lab.drops("b1", "tagged_on_access") >= 9, "{}", lab.show("stats"));
    // a2's entry in web's table is still a2's port.
    let fdb = lab.show("fdb");
    let e = fdb.as_array().unwrap().iter().find(|e| e["network"] == "web" && e["mac"] == me).unwrap();
    assert_eq!(e["port"], "a2");
    let _ = a2;
}

#[test]
fn port_security_drops_spoofed_sources() {
    let mut lab = Lab::new("s");
    let cfg = config(&lab);
    lab.vrouter(&cfg);
    let a1 = lab.guest("n1", &lab.name("a1"), "10.1.1.11/24");
    let a2if = lab.name("a2");
    let a2 = lab.guest("n2", &a2if, "10.1.1.12/24");
    assert!(lab.ping(&a2, "10.1.1.11", 5));
    // a2 claims another address: its ARP and IP are dropped.
    ok(&["ip", "-n", &a2, "addr", "flush", "dev", &a2if]);
    ok(&["ip", "-n", &a2, "addr", "add", "10.1.1.99/24", "dev", &a2if]);
    assert!(!lab.ping(&a2, "10.1.1.11", 2));
    assert!(lab.drops("a2", "spoofed_ip") > 0);
    // a2 changes its MAC: dropped too.
    ok(&["ip", "-n", &a2, "addr", "flush", "dev", &a2if]);
    ok(&["ip", "-n", &a2, "addr", "add", "10.1.1.12/24", "dev", &a2if]);
    ok(&["ip", "-n", &a2, "link", "set", &a2if, "address", "52:54:00:10:01:99"]);
    assert!(!lab.ping(&a2, "10.1.1.11", 2));
    assert!(lab.drops("a2", "spoofed_mac") > 0);
    // Back to its own identity: works again.
    ok(&["ip", "-n", &a2, "link", "set", &a2if, "address", "52:54:00:10:01:12"]);
    ok(&["ip", "-n", &a1, "neigh", "flush", "all"]);
    assert!(lab.ping(&a2, "10.1.1.11", 5));
}

#[test]
fn sigterm_shuts_down_cleanly_and_existing_taps_survive() {
    let mut lab = Lab::new("x");
    // A persistent tap made beforehand (as an operator's tooling might): vrouter opens it and
    // must leave it in place on exit; the taps it creates itself must disappear.
    let pre = lab.name("pre");
    ok(&["ip", "tuntap", "add", "dev", &pre, "mode", "tap", "vnet_hdr"]);
    struct DelLink(String);
    impl Drop for DelLink {
        fn drop(&mut self) {
            let _ = std::process::Command::new("ip").args(["link", "del", &self.0]).status();
        }
    }
    let _del = DelLink(pre.clone());
    let cfg = [
        cfg::router(&lab.id),
        cfg::network("n", "10.7.0.0/24", None),
        cfg::port("p1", "n", "tap", &pre, "52:54:00:70:00:01", ""),
        cfg::port("p2", "n", "tap", &lab.name("new"), "52:54:00:70:00:02", ""),
    ]
    .concat();
    let sock = lab.vrouter(&cfg);
    assert!(run(&["ip", "link", "show", &lab.name("new")]).status.success());
    let pid = lab.vrouter_pid();
    signal(pid, "TERM");
    wait_for("vrouter exit", std::time::Duration::from_secs(5), || !lab.vrouter_alive());
    assert_eq!(lab.vrouter_exit_code(), Some(0));
    assert!(lab.log().contains("shutting down"), "{}", lab.log());
    assert!(!sock.exists(), "control socket removed");
    assert!(!run(&["ip", "link", "show", &lab.name("new")]).status.success(), "vrouter's own tap is gone");
    assert!(run(&["ip", "link", "show", &pre]).status.success(), "the pre-existing tap is kept");
}

#[test]
fn tap_trunk_tags_egress_and_pops_ingress() {
    let mut lab = Lab::new("k");
    let cfg = format!(
        "{}\n[[uplink]]\nname = \"trunk0\"\nkind = \"tap\"\nifname = \"{}\"\nnetworks = [\"web\", \"db\"]\n",
        config(&lab),
        lab.name("tk")
    );
    lab.vrouter(&cfg);
    let a1 = lab.guest("n1", &lab.name("a1"), "10.1.1.11/24");
    let b1 = lab.guest("n3", &lab.name("b1"), "10.1.2.11/24");
    // The "physical switch" side of the trunk: a namespace holding the tap's kernel end.
    let tk = lab.name("tk");
    let sw = lab.guest("sw", &tk, "192.0.2.1/24");
    let sw_pcap = lab.path("sw.pcap");
    let b1_pcap = lab.path("b1.pcap");
    let t1 = lab.spawn_in(&sw, &["tcpdump", "--immediate-mode", "-i", &tk, "-n", "-e", "-U", "-w", sw_pcap.to_str().unwrap()], &lab.path("t1.log"));
    let t2 = lab.spawn_in(&b1, &["tcpdump", "--immediate-mode", "-i", &lab.name("b1"), "-n", "-e", "-U", "-w", b1_pcap.to_str().unwrap()], &lab.path("t2.log"));
    for p in [&sw_pcap, &b1_pcap] {
        wait_for("tcpdump", Duration::from_secs(10), || std::fs::metadata(p).is_ok_and(|m| m.len() > 0));
    }
    // Egress: web's ARP broadcast leaves the trunk tagged 101.
    assert!(!lab.ping(&a1, "10.1.1.99", 1));
    // Ingress: a frame tagged 102 reaches db's guest untagged; 103 is carried by no network.
    let src = "52:54:00:77:00:01";
    send_raw(&lab, &sw, &tk, &[icmp_frame("ff:ff:ff:ff:ff:ff", src, &[102]), icmp_frame("ff:ff:ff:ff:ff:ff", src, &[103])]);
    std::thread::sleep(Duration::from_millis(300));
    lab.interrupt(t1);
    lab.interrupt(t2);
    let read = |f: &std::path::Path, filter: &str| -> String {
        String::from_utf8_lossy(&run(&["tcpdump", "-n", "-e", "-r", f.to_str().unwrap(), filter]).stdout).into_owned()
    };
    let out = read(&sw_pcap, "vlan 101 and arp");
    assert!(out.contains("vlan 101") && out.contains("10.1.1.99"), "tagged ARP on the trunk: {out}");
    assert!(read(&sw_pcap, "not vlan and ether src 52:54:00:10:01:11").is_empty(), "untagged web frame on the trunk");
    let got = read(&b1_pcap, &format!("ether src {src}"));
    assert_eq!(got.lines().count(), 3, "three untagged copies of the VLAN 102 frame: {got}");
    assert!(!got.contains("vlan"), "{got}");
    assert_eq!(lab.drops("trunk0", "unknown_vlan"), 3);
    let fdb = lab.show("fdb");
    assert!(fdb.as_array().unwrap().iter().any(|e| e["mac"] == src && e["network"] == "db" && e["port"] == "trunk0"), "{fdb}");
}

/// iperf3 client in `from` against a server in `to` at `addr`; bytes received.
fn iperf(lab: &mut Lab, from: &str, to: &str, addr: &str, reverse: bool) -> u64 {
    lab.spawn_in(to, &["iperf3", "-s", "-1"], &lab.path(&format!("iperf-{to}-{reverse}.log")));
    let mut args = vec!["iperf3", "-c", addr, "-t", "2", "-J"];
    if reverse {
        args.push("-R");
    }
    let mut o = lab.exec(from, &["true"]);
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(250));
        o = lab.exec(from, &args);
        if o.status.success() || !String::from_utf8_lossy(&o.stdout).contains("unable to connect") {
            break;
        }
    }
    assert!(o.status.success(), "iperf3: {}", String::from_utf8_lossy(&o.stdout));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    j["end"]["sum_received"]["bytes"].as_u64().unwrap()
}

fn port_stats(lab: &Lab, name: &str) -> serde_json::Value {
    let st = lab.show("stats");
    st["ports"].as_array().unwrap().iter().find(|p| p["name"] == name).unwrap().clone()
}

/// TSO super-frames cross a trunk whole, both ways, through both trunk kinds: two vrouter
/// instances (two "hosts") joined by an 802.1Q trunk, the first on a `tap` trunk it creates,
/// the second attached to that tap's kernel side as a `netdev` trunk (AF_PACKET). A TCP stream
/// between their guests is tagged on the way out with its offload metadata adjusted, popped on
/// the way in, and never cut in software.
#[test]
fn tso_superframes_cross_tap_and_netdev_trunks_whole() {
    let mut h1 = Lab::new("g1");
    let mut h2 = Lab::new("g2");
    let tk = h1.name("tk");
    // Each host: network web on VLAN 101, one guest, and the trunk between them.
    let host = |lab: &Lab, guest: &str, mac: &str, ip: &str, kind: &str| {
        [
            cfg::router(&lab.id),
            cfg::network("web", "10.1.1.0/24", Some(101)),
            cfg::port(guest, "web", "tap", &lab.name(guest), mac, &format!("ip = \"{ip}\"")),
            format!("[[uplink]]\nname = \"trunk0\"\nkind = \"{kind}\"\nifname = \"{tk}\"\nnetworks = [\"web\"]\n"),
        ]
        .concat()
    };
    let c1 = host(&h1, "a1", "52:54:00:10:01:11", "10.1.1.11", "tap");
    h1.vrouter(&c1);
    let c2 = host(&h2, "b1", "52:54:00:10:01:50", "10.1.1.50", "netdev");
    h2.vrouter(&c2);
    let a1 = h1.guest("n1", &h1.name("a1"), "10.1.1.11/24");
    let b1 = h2.guest("n1", &h2.name("b1"), "10.1.1.50/24");
    assert!(h1.ping(&a1, "10.1.1.50", 10), "a1 -> b1 across the trunk");
    let out = iperf(&mut h1, &a1, &b1, "10.1.1.50", false);
    let back = iperf(&mut h1, &a1, &b1, "10.1.1.50", true);
    assert!(out > 1_000_000 && back > 1_000_000, "{out} / {back} bytes");
    for (lab, kind) in [(&h1, "tap"), (&h2, "netdev")] {
        let t = port_stats(lab, "trunk0");
        let avg_tx = t["tx_bytes"].as_u64().unwrap() / t["tx_frames"].as_u64().unwrap().max(1);
        eprintln!("{kind} trunk: tx {} frames, {avg_tx} B on average; rx_gso_frames {}", t["tx_frames"], t["rx_gso_frames"]);
        assert!(avg_tx > 1518, "{kind} trunk: super-frames left whole: {t}");
        assert!(t["rx_gso_frames"].as_u64().unwrap() > 100, "{kind} trunk: super-frames arrived whole: {t}");
        assert_eq!(lab.show("stats")["totals"]["tx_sw_segmented"], 0, "{kind}: nothing was cut in software");
    }
}
