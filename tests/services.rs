//! DHCP and DNS served by vrouter to real clients: busybox udhcpc and ISC dhclient get leases
//! with their options, dig resolves the guests by name and address and forwarded names through
//! an upstream server running on loopback, leases survive `kill -9`, and a guest running its
//! own DHCP server reaches nobody.

mod common;
use common::*;
use std::time::Duration;

const DOMAIN: &str = "acct.internal";

/// web (DHCP pool .100-.199, domain acct.internal) and db (reservations only); the guests'
/// ports are locked to their MACs but have no fixed IP except the reserved one, so port security
/// follows their leases.
fn config(lab: &Lab, upstream: u16, kind: &str, extra_ports: &str) -> String {
    [
        cfg::router(&lab.id),
        cfg::l3_network("web", "10.1.1.0/24", "10.1.1.1", &format!("dhcp_range = [\"10.1.1.100\", \"10.1.1.199\"]\ndomain = \"{DOMAIN}\"\nmtu = 1400\nlease_secs = 600\n")),
        cfg::l3_network("db", "10.1.2.0/24", "10.1.2.1", &format!("domain = \"db.{DOMAIN}\"\n")),
        cfg::port("r1", "web", kind, &lab.name("r1"), "52:54:00:50:01:11", "ip = \"10.1.1.11\"\nhostname = \"web1\""),
        cfg::port("d1", "web", kind, &lab.name("d1"), "52:54:00:50:01:21", ""),
        cfg::port("d2", "web", kind, &lab.name("d2"), "52:54:00:50:01:22", ""),
        cfg::port("b1", "db", kind, &lab.name("b1"), "52:54:00:50:02:11", "ip = \"10.1.2.11\"\nhostname = \"db1\""),
        extra_ports.to_string(),
        format!("[dns]\nupstreams = [\"127.0.0.1:{upstream}\"]\ncache_entries = 100\n"),
    ]
    .concat()
}

/// ISC dhclient in `ns` with its own config, script and lease file (nothing of the host's:
/// its default script would rewrite the host's resolv.conf). Returns the address it bound.
fn dhclient(lab: &Lab, ns: &str, ifname: &str, release: bool) -> Option<String> {
    let conf = lab.path("dhclient.conf");
    std::fs::write(
        &conf,
        "option rfc3442-classless-static-routes code 121 = array of unsigned integer 8;\nsend host-name \"dyn3\";\nrequest subnet-mask, broadcast-address, routers, domain-name, domain-name-servers, domain-search, interface-mtu, rfc3442-classless-static-routes;\ntimeout 20;\n",
    )
    .unwrap();
    let script = lab.path("dhclient.sh");
    let out = lab.path(&format!("{ns}-dhclient.env"));
    std::fs::write(
        &script,
        format!("#!/bin/sh\ncase \"$reason\" in\n  BOUND|RENEW|REBOOT|REBIND)\n    ip addr flush dev \"$interface\"\n    ip addr add \"$new_ip_address/24\" dev \"$interface\"\n    env | sort > {}\n    ;;\nesac\nexit 0\n", out.display()),
    )
    .unwrap();
    ok(&["chmod", "+x", script.to_str().unwrap()]);
    let lease = lab.path(&format!("{ns}.leases"));
    let pid = lab.path(&format!("{ns}.dhclient.pid"));
    let mut args = vec!["dhclient", "-1", "-cf", conf.to_str().unwrap(), "-sf", script.to_str().unwrap(), "-lf", lease.to_str().unwrap(), "-pf", pid.to_str().unwrap()];
    if release {
        args.insert(1, "-r");
    }
    args.push(ifname);
    let o = lab.exec(ns, &args);
    if release {
        return None;
    }
    assert!(o.status.success(), "dhclient: {}", String::from_utf8_lossy(&o.stderr));
    // It goes to the background once bound: end it by its pid (ours).
    if let Ok(p) = std::fs::read_to_string(&pid) {
        signal(p.trim().parse().unwrap_or(0), "TERM");
    }
    let env = std::fs::read_to_string(&out).unwrap_or_default();
    env.lines().find_map(|l| l.strip_prefix("new_ip_address=")).map(String::from)
}

/// A DNS server on loopback that answers every A question with 192.0.2.77 (TTL 300) and
/// counts the queries it got in a file.
fn upstream(lab: &mut Lab) -> (u16, std::path::PathBuf) {
    let count = lab.path("upstream.count");
    let portf = lab.path("upstream.port");
    let code = format!(
        r#"
import socket, struct
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(('127.0.0.1', 0))
open('{portf}', 'w').write(str(s.getsockname()[1]))
n = 0
while True:
    q, a = s.recvfrom(4096)
    n += 1
    open('{count}', 'w').write(str(n))
    qid, flags, qd = struct.unpack('>HHH', q[:6])
    i = 12
    while q[i] != 0:
        i += q[i] + 1
    question = q[12:i + 5]
    # "big..." names get 60 addresses: more than fits a plain 512-byte UDP answer.
    count = 60 if q[13:16] == b'big' else 1
    ans = b''.join(b'\xc0\x0c' + struct.pack('>HHIH', 1, 1, 300, 4) + bytes([192, 0, 2, 77 + k]) for k in range(count))
    s.sendto(struct.pack('>HHHHHH', qid, 0x8180, 1, count, 0, 0) + question + ans, a)
"#,
        portf = portf.display(),
        count = count.display()
    );
    lab.spawn_host(&["python3", "-c", &code], &lab.path("upstream.log"));
    wait_for("upstream DNS", Duration::from_secs(5), || portf.exists() && std::fs::read_to_string(&portf).is_ok_and(|s| !s.is_empty()));
    (std::fs::read_to_string(&portf).unwrap().trim().parse().unwrap(), count)
}

fn dig(lab: &Lab, ns: &str, args: &[&str]) -> String {
    let mut a = vec!["dig", "@10.1.1.1", "+time=2", "+tries=2"];
    a.extend_from_slice(args);
    let o = lab.exec(ns, &a);
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn dhcp_and_dns_for_real_clients() {
    let mut lab = Lab::new("dh");
    let (up_port, up_count) = upstream(&mut lab);
    let cfg = config(&lab, up_port, "tap", &cfg::port("d3", "web", "tap", &lab.name("d3"), "52:54:00:50:01:23", ""));
    lab.vrouter(&cfg);
    let r1 = lab.bare_guest("n1", "r1");
    let d1 = lab.bare_guest("n2", "d1");
    let d3 = lab.bare_guest("n3", "d3");

    // The reserved guest: its address, hostname, router, DNS, MTU, domain and search list, and
    // classless routes (two networks).
    let e = udhcpc(&lab, &r1, &lab.name("r1"), &[]);
    assert_eq!(e.get("ip").map(String::as_str), Some("10.1.1.11"), "{e:?}");
    assert_eq!(e.get("router").map(String::as_str), Some("10.1.1.1"), "{e:?}");
    assert_eq!(e.get("dns").map(|s| s.trim()), Some("10.1.1.1"), "{e:?}");
    assert_eq!(e.get("mtu").map(String::as_str), Some("1400"), "{e:?}");
    assert_eq!(e.get("domain").map(String::as_str), Some(DOMAIN), "{e:?}");
    assert_eq!(e.get("search").map(String::as_str), Some(DOMAIN), "{e:?}");
    assert_eq!(e.get("hostname").map(String::as_str), Some("web1"), "{e:?}");
    assert_eq!(e.get("serverid").map(String::as_str), Some("10.1.1.1"), "{e:?}");
    let routes = e.get("staticroutes").cloned().unwrap_or_default();
    assert!(routes.contains("10.1.2.0/24 10.1.1.1") && routes.contains("0.0.0.0/0 10.1.1.1"), "option 121: {routes:?}");
    // A dynamic guest (udhcpc, sending its hostname) gets the first pool address.
    let e = udhcpc(&lab, &d1, &lab.name("d1"), &["-x", "hostname:dyn1"]);
    let d1_ip = e.get("ip").cloned().unwrap_or_default();
    assert_eq!(d1_ip, "10.1.1.100", "{e:?}");
    // ISC dhclient gets another one.
    let d3_ip = dhclient(&lab, &d3, &lab.name("d3"), false).expect("dhclient bound");
    assert_eq!(d3_ip, "10.1.1.101");
    let leases = lab.show("leases");
    let rows = leases["leases"].as_array().unwrap();
    let find = |ip: &str| rows.iter().find(|l| l["ip"] == ip).cloned().unwrap_or_default();
    assert_eq!(find("10.1.1.100")["mac"], "52:54:00:50:01:21", "{leases}");
    assert_eq!(find("10.1.1.100")["hostname"], "dyn1", "{leases}");
    assert_eq!(find("10.1.1.100")["state"], "bound", "{leases}");
    assert_eq!(find("10.1.1.101")["hostname"], "dyn3", "{leases}");
    let text = ok(&[bin(), "ctl", "-s", lab.path("ctl.sock").to_str().unwrap(), "show", "leases"]);
    assert!(text.starts_with("NETWORK") && text.contains("10.1.1.100"), "{text}");

    // Port security follows the lease: d1 may source 10.1.1.100, not another address.
    assert!(lab.ping(&d1, "10.1.1.1", 3), "leased guest -> gateway");
    ok(&["ip", "-n", &d1, "addr", "add", "10.1.1.150/24", "dev", &lab.name("d1")]);
    assert!(!lab.exec(&d1, &["ping", "-c", "2", "-W", "1", "-I", "10.1.1.150", "10.1.1.1"]).status.success());
    assert!(lab.drops("d1", "spoofed_ip") > 0, "{}", lab.show("stats"));

    // DNS: A and PTR for reserved and dynamic guests, NXDOMAIN inside the account's domain.
    assert_eq!(dig(&lab, &d1, &["+short", &format!("web1.{DOMAIN}")]).trim(), "10.1.1.11");
    assert_eq!(dig(&lab, &d1, &["+short", &format!("dyn1.{DOMAIN}")]).trim(), "10.1.1.100");
    assert_eq!(dig(&lab, &d1, &["+short", &format!("dyn3.{DOMAIN}")]).trim(), "10.1.1.101");
    assert_eq!(dig(&lab, &d1, &["+short", &format!("db1.db.{DOMAIN}")]).trim(), "10.1.2.11");
    assert_eq!(dig(&lab, &d1, &["+short", "-x", "10.1.1.11"]).trim(), format!("web1.{DOMAIN}."));
    assert_eq!(dig(&lab, &d1, &["+short", "-x", "10.1.1.100"]).trim(), format!("dyn1.{DOMAIN}."));
    let nx = dig(&lab, &d1, &[&format!("nobody.{DOMAIN}")]);
    assert!(nx.contains("status: NXDOMAIN") && nx.contains(" aa"), "{nx}");
    // A forwarded name, asked twice: the upstream sees one query; the second answer is cached.
    assert_eq!(dig(&lab, &d1, &["+short", "outside.example"]).trim(), "192.0.2.77");
    assert_eq!(dig(&lab, &r1, &["+short", "outside.example"]).trim(), "192.0.2.77");
    assert_eq!(std::fs::read_to_string(&up_count).unwrap_or_default(), "1", "upstream queries");
    let st = lab.show("stats");
    assert!(st["dns"]["cache_hits"].as_u64().unwrap_or(0) >= 1, "{}", st["dns"]);
    // TCP on the router's own endpoint: a local name, and a forwarded answer too big for a
    // plain UDP reply (TC set, then the client's TCP retry gets all 60 records).
    assert_eq!(dig(&lab, &d1, &["+tcp", "+short", &format!("web1.{DOMAIN}")]).trim(), "10.1.1.11");
    let big = dig(&lab, &d1, &["+noedns", "big.example"]);
    assert!(big.contains("Truncated, retrying in TCP mode") && big.contains("ANSWER: 60"), "{big}");
    let edns = dig(&lab, &d1, &["+bufsize=1232", "+short", "big.example"]);
    assert_eq!(edns.lines().count(), 60, "EDNS0: the 60 records fit 1232 bytes: {edns}");

    // Renew (udhcpc asking for its address again) keeps it; release frees it.
    let e = udhcpc(&lab, &d1, &lab.name("d1"), &["-r", "10.1.1.100"]);
    assert_eq!(e.get("ip").map(String::as_str), Some("10.1.1.100"), "{e:?}");
    dhclient(&lab, &d3, &lab.name("d3"), true);
    let released = (0..50).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        let l = lab.show("leases");
        !l["leases"].as_array().unwrap().iter().any(|r| r["ip"] == "10.1.1.101" && r["state"] == "bound")
    });
    assert!(released, "d3's lease released: {} {}", lab.show("leases"), lab.show("stats")["ports"]);
    assert_eq!(lab.show("leases")["counters"]["releases"], 1);
    // The public side never got in the way, and nothing was left unanswered by mistake.
    assert!(lab.vrouter_alive());
}

#[test]
fn leases_survive_kill_9_and_no_address_is_given_twice() {
    let mut lab = Lab::new("dk");
    let (up_port, _) = upstream(&mut lab);
    // netdev ports on veth pairs: the guests' NICs outlive the vrouter process.
    let mut nss = Vec::new();
    for (i, (name, mac)) in [("d1", "52:54:00:50:01:21"), ("d2", "52:54:00:50:01:22")].iter().enumerate() {
        let ns = lab.name(&format!("g{i}"));
        ok(&["ip", "netns", "add", &ns]);
        lab.adopt_netns(ns.clone());
        let _ = lab.exec(&ns, &["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
        ok(&["ip", "link", "add", &lab.name(name), "type", "veth", "peer", "name", "eth0", "netns", &ns]);
        ok(&["ip", "-n", &ns, "link", "set", "eth0", "address", mac]);
        ok(&["ip", "-n", &ns, "link", "set", "eth0", "up"]);
        nss.push(ns);
    }
    let cfg = config(&lab, up_port, "netdev", "");
    // The reserved ports' interfaces exist too (netdev needs them).
    // Their peers live in a namespace of the lab, so the pairs go with it even on failure.
    let spare = lab.name("gx");
    ok(&["ip", "netns", "add", &spare]);
    lab.adopt_netns(spare.clone());
    for n in ["r1", "b1"] {
        ok(&["ip", "link", "add", &lab.name(n), "type", "veth", "peer", "name", n, "netns", &spare]);
    }
    lab.vrouter(&cfg);
    let a = udhcpc(&lab, &nss[0], "eth0", &[]).get("ip").cloned().unwrap_or_default();
    let b = udhcpc(&lab, &nss[1], "eth0", &[]).get("ip").cloned().unwrap_or_default();
    assert!(a.starts_with("10.1.1.1") && b.starts_with("10.1.1.1") && a != b, "{a} {b}");

    // kill -9, and a new vrouter on the same state_dir.
    signal(lab.vrouter_pid(), "KILL");
    wait_for("vrouter to die", Duration::from_secs(5), || !lab.vrouter_alive());
    let _ = std::fs::remove_file(lab.path("ctl.sock"));
    lab.vrouter(&cfg);
    let log = lab.log();
    assert!(log.contains("DHCP leases restored"), "{log}");
    // Both clients ask for their addresses again (INIT-REBOOT-style requests): acknowledged,
    // same addresses.
    let a2 = udhcpc(&lab, &nss[0], "eth0", &["-r", &a]).get("ip").cloned().unwrap_or_default();
    let b2 = udhcpc(&lab, &nss[1], "eth0", &["-r", &b]).get("ip").cloned().unwrap_or_default();
    assert_eq!((a2.as_str(), b2.as_str()), (a.as_str(), b.as_str()));
    let counters = lab.show("leases")["counters"].clone();
    assert_eq!(counters["naks"], 0, "{counters}");
    // A new client (another client identifier, option 61) asking for one of those addresses
    // gets a different one.
    let c = udhcpc(&lab, &nss[1], "eth0", &["-x", "0x3d:01525400500199", "-r", &a]).get("ip").cloned().unwrap_or_default();
    assert!(!c.is_empty() && c != a && c != b, "a new client got {c} (taken: {a}, {b})");
    for n in ["r1", "b1", "d1", "d2"] {
        let _ = run(&["ip", "link", "del", &lab.name(n)]);
    }
}

#[test]
fn a_guests_own_dhcp_server_reaches_nobody() {
    let mut lab = Lab::new("dr");
    let (up_port, _) = upstream(&mut lab);
    let extra = cfg::port("rg", "web", "tap", &lab.name("rg"), "52:54:00:50:01:66", "ip = \"10.1.1.66\"");
    let cfg = config(&lab, up_port, "tap", &extra);
    lab.vrouter(&cfg);
    let rogue = lab.guest("rg", &lab.name("rg"), "10.1.1.66/24");
    let d1 = lab.bare_guest("n2", "d1");
    let pcap = lab.path("d1.pcap");
    let td = lab.spawn_in(&d1, &["tcpdump", "--immediate-mode", "-i", &lab.name("d1"), "-n", "-e", "-U", "-w", pcap.to_str().unwrap(), "udp"], &lab.path("td.log"));
    wait_for("tcpdump", Duration::from_secs(10), || std::fs::metadata(&pcap).is_ok_and(|m| m.len() > 0));
    // The rogue server answers everyone: broadcast server messages from port 67 to 68.
    let send = "import socket,time\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.setsockopt(socket.SOL_SOCKET,socket.SO_BROADCAST,1)\ns.bind(('10.1.1.66',67))\nfor _ in range(5):\n  s.sendto(bytes([2,1,6,0])+bytes(296),('255.255.255.255',68))\n  time.sleep(0.05)\n";
    let o = lab.exec(&rogue, &["python3", "-c", send]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // A client on the same network gets its lease from vrouter, and never sees the rogue.
    let e = udhcpc(&lab, &d1, &lab.name("d1"), &[]);
    assert_eq!(e.get("serverid").map(String::as_str), Some("10.1.1.1"), "{e:?}");
    std::thread::sleep(Duration::from_millis(300));
    lab.interrupt(td);
    let read = |filter: &str| String::from_utf8_lossy(&run(&["tcpdump", "-n", "-e", "-r", pcap.to_str().unwrap(), filter]).stdout).lines().count();
    assert!(read("udp src port 67") > 0, "positive control: vrouter's own replies are in the capture");
    assert_eq!(read("udp src port 67 and ether src 52:54:00:50:01:66"), 0, "the rogue server reached a client");
    assert!(lab.drops("rg", "rogue_dhcp") >= 5, "{}", lab.show("stats"));
}
