//! The VPN end to end against real WireGuard peers (Debian's wireguard-go, configured with
//! `wg`). vrouter's public tap leads to an "outside" namespace (the public gateway, and the
//! router of a small internet); behind it a "branch" namespace runs wireguard-go with a "lan"
//! namespace behind that (site-to-site), and a "road warrior" namespace runs wireguard-go with
//! no endpoint known to vrouter (remote access). Guests of two account networks and the branch
//! LAN reach each other both ways (ping, TCP through iperf3); the public link carries nothing
//! but WireGuard's UDP; a branch packet from outside its allowed_ips is dropped and counted; a
//! wrong key reaches nothing; restarts of either side re-handshake and traffic resumes.
//! Nothing is added to the root namespace.

mod common;
use common::*;
use std::path::Path;
use std::time::Duration;

const PUBLIC_GW: &str = "203.0.113.1";
const PUBLIC_IP: &str = "203.0.113.10";
const BRANCH_WAN: &str = "198.51.100.7";
const RW_WAN: &str = "192.0.2.9";
const DOMAIN: &str = "acct.internal";

/// `wg genkey` into `dir/name.key` (mode 600) and its public key.
fn keypair(lab: &Lab, name: &str) -> (String, String) {
    let key = ok(&["wg", "genkey"]).trim().to_string();
    let path = lab.path(&format!("{name}.key"));
    std::fs::write(&path, format!("{key}\n")).unwrap();
    ok(&["chmod", "600", path.to_str().unwrap()]);
    let mut c = std::process::Command::new("wg").arg("pubkey").stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).spawn().unwrap();
    use std::io::Write;
    c.stdin.take().unwrap().write_all(key.as_bytes()).unwrap();
    let out = c.wait_with_output().unwrap();
    (path.to_str().unwrap().to_string(), String::from_utf8(out.stdout).unwrap().trim().to_string())
}

/// A veth pair between two namespaces with an address on each end.
fn link(a: &str, a_if: &str, a_addr: &str, b: &str, b_if: &str, b_addr: &str) {
    ok(&["ip", "-n", a, "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", b]);
    ok(&["ip", "-n", a, "addr", "add", a_addr, "dev", a_if]);
    ok(&["ip", "-n", b, "addr", "add", b_addr, "dev", b_if]);
    ok(&["ip", "-n", a, "link", "set", a_if, "up"]);
    ok(&["ip", "-n", b, "link", "set", b_if, "up"]);
}

fn netns(lab: &mut Lab, suffix: &str) -> String {
    let ns = lab.name(suffix);
    ok(&["ip", "netns", "add", &ns]);
    lab.adopt_netns(ns.clone());
    ok(&["ip", "netns", "exec", &ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
    ok(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
    ns
}

/// wireguard-go on interface `ifname` in `ns` (its UAPI socket is named after the interface,
/// whatever the namespace: each instance has a name of its own), configured with `wg set`.
#[allow(clippy::too_many_arguments)]
fn wireguard_go(lab: &mut Lab, ns: &str, ifname: &str, addr: &str, key: &str, listen: Option<u16>, peer: &str, endpoint: Option<&str>, allowed: &str) -> u32 {
    let sock = format!("/var/run/wireguard/{ifname}.sock");
    let _ = std::fs::remove_file(&sock);
    let pid = lab.spawn_in(ns, &["env", "WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD=1", "wireguard-go", "-f", ifname], &lab.path(&format!("{ifname}.log")));
    wait_for("wireguard-go's socket", Duration::from_secs(10), || Path::new(&sock).exists());
    let mut args = vec!["wg", "set", ifname, "private-key", key];
    let port = listen.map(|p| p.to_string());
    if let Some(p) = &port {
        args.extend(["listen-port", p]);
    }
    args.extend(["peer", peer, "allowed-ips", allowed, "persistent-keepalive", "5"]);
    if let Some(e) = endpoint {
        args.extend(["endpoint", e]);
    }
    let o = lab.exec(ns, &args);
    assert!(o.status.success(), "wg set: {}", String::from_utf8_lossy(&o.stderr));
    ok(&["ip", "-n", ns, "addr", "add", addr, "dev", ifname]);
    ok(&["ip", "-n", ns, "link", "set", ifname, "up"]);
    pid
}

/// GET from the metrics endpoint on loopback, waiting for the next snapshot (published once a
/// second) to have the VPN in it.
fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut body = String::new();
    wait_for("metrics with the VPN", Duration::from_secs(5), || {
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return false };
        let _ = s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes());
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        body = out;
        body.contains("vrouter_vpn_handshakes_total{peer=\"laptop\"} 1")
    });
    body
}


struct Topo {
    a1: String,
    b1: String,
    out: String,
    branch: String,
    lan: String,
    rw: String,
    /// Public keys: vrouter's, the branch's, the road warrior's.
    router_pub: String,
    branch_key: String,
    rw_key: String,
    config: String,
}

/// The account (web with a1, db with b1), its public side, the outside, the branch with its
/// LAN, and the road warrior's namespace (wireguard not started yet). vrouter starts with the
/// laptop peer only if `laptop`; `Topo::config` always has it. `router_extra` goes in [router].
fn topology(lab: &mut Lab, laptop: bool, router_extra: &str) -> Topo {
    let (router_key, router_pub) = keypair(lab, "router");
    let (branch_key, branch_pub) = keypair(lab, "branch");
    let (rw_key, rw_pub) = keypair(lab, "rw");
    let laptop_peer = format!("[[wireguard.peer]]\nname = \"laptop\"\npublic_key = \"{rw_pub}\"\nallowed_ips = [\"10.250.0.5/32\"]\nnetworks = [\"web\"]\n");
    let config = [
        cfg::router(&lab.id),
        router_extra.to_string(),
        cfg::l3_network("web", "10.1.1.0/24", "10.1.1.1", &format!("domain = \"{DOMAIN}\"\n")),
        cfg::l3_network("db", "10.1.2.0/24", "10.1.2.1", &format!("domain = \"{DOMAIN}\"\n")),
        cfg::port("a1", "web", "tap", &lab.name("a1"), "52:54:00:60:01:11", "ip = \"10.1.1.11\"\nhostname = \"web1\""),
        cfg::port("b1", "db", "tap", &lab.name("b1"), "52:54:00:60:02:11", "ip = \"10.1.2.11\"\nhostname = \"db1\""),
        format!("[public]\nkind = \"tap\"\nifname = \"{}\"\nips = [\"{PUBLIC_IP}/24\"]\ngateway = \"{PUBLIC_GW}\"\n", lab.name("pb")),
        format!("[wireguard]\nlisten = \"{PUBLIC_IP}:51820\"\nprivate_key_file = \"{router_key}\"\naddress = \"10.250.0.1/24\"\n"),
        format!(
            "[[wireguard.peer]]\nname = \"branch\"\npublic_key = \"{branch_pub}\"\nendpoint = \"{BRANCH_WAN}:51820\"\nallowed_ips = [\"192.168.50.0/24\"]\npersistent_keepalive = 5\n"
        ),
    ]
    .concat();
    lab.vrouter(&if laptop { format!("{config}{laptop_peer}") } else { config.clone() });
    let config = format!("{config}{laptop_peer}");
    let (ta1, tb1, tpb) = (lab.name("a1"), lab.name("b1"), lab.name("pb"));
    let a1 = lab.guest("na1", &ta1, "10.1.1.11/24");
    ok(&["ip", "-n", &a1, "route", "add", "default", "via", "10.1.1.1"]);
    let b1 = lab.guest("nb1", &tb1, "10.1.2.11/24");
    ok(&["ip", "-n", &b1, "route", "add", "default", "via", "10.1.2.1"]);
    let out = lab.guest("out", &tpb, &format!("{PUBLIC_GW}/24"));
    ok(&["ip", "netns", "exec", &out, "sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    let branch = netns(lab, "br");
    let lan = netns(lab, "lan");
    let rw = netns(lab, "rw");
    link(&out, &lab.name("ob"), "198.51.100.1/24", &branch, &lab.name("bo"), &format!("{BRANCH_WAN}/24"));
    ok(&["ip", "-n", &branch, "route", "add", "default", "via", "198.51.100.1"]);
    ok(&["ip", "netns", "exec", &branch, "sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    link(&branch, &lab.name("bl"), "192.168.50.1/24", &lan, &lab.name("lb"), "192.168.50.10/24");
    ok(&["ip", "-n", &lan, "route", "add", "default", "via", "192.168.50.1"]);
    link(&out, &lab.name("or"), "192.0.2.1/24", &rw, &lab.name("ro"), &format!("{RW_WAN}/24"));
    ok(&["ip", "-n", &rw, "route", "add", "default", "via", "192.0.2.1"]);
    Topo { a1, b1, out, branch, lan, rw, router_pub, branch_key, rw_key, config }
}

/// The branch's wireguard-go: vrouter as its peer for the account's networks.
fn branch_up(lab: &mut Lab, t: &Topo) -> u32 {
    let wg = lab.name("wgb");
    let endpoint = format!("{PUBLIC_IP}:51820");
    let pid = wireguard_go(lab, &t.branch, &wg, "192.168.50.1/32", &t.branch_key, Some(51820), &t.router_pub, Some(&endpoint), "10.1.1.0/24,10.1.2.0/24,10.250.0.1/32");
    ok(&["ip", "-n", &t.branch, "route", "add", "10.1.0.0/16", "dev", &wg]);
    ok(&["ip", "-n", &t.branch, "route", "add", "10.250.0.1/32", "dev", &wg]);
    pid
}

fn peer<'a>(v: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    v["peers"].as_array().unwrap().iter().find(|p| p["name"] == name).unwrap_or_else(|| panic!("no peer {name}: {v}"))
}

fn iperf_ok(lab: &mut Lab, server_ns: &str, server_ip: &str, client_ns: &str, what: &str) -> f64 {
    let log = lab.path(&format!("iperf-{server_ns}.log"));
    let pid = lab.spawn_in(server_ns, &["iperf3", "-s", "-1", "-B", server_ip], &log);
    std::thread::sleep(Duration::from_millis(300));
    let o = lab.exec(client_ns, &["iperf3", "-c", server_ip, "-t", "2", "-J"]);
    assert!(o.status.success(), "{what}: iperf3 failed: {}", String::from_utf8_lossy(&o.stdout));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let bps = v["end"]["sum_received"]["bits_per_second"].as_f64().unwrap_or(0.0);
    assert!(bps > 0.0, "{what}: nothing received: {v}");
    lab.interrupt(pid);
    bps
}

#[test]
fn site_to_site_both_ways_encrypted_and_cryptokey_routed() {
    let mut lab = Lab::new("vs");
    let t = topology(&mut lab, true, "");
    let cap = lab.path("public.pcap");
    let dump = lab.spawn_in(&t.out, &["tcpdump", "-i", &lab.name("pb"), "-n", "-U", "-w", cap.to_str().unwrap()], &lab.path("tcpdump.log"));
    let wgb = branch_up(&mut lab, &t);

    // Guests of both networks and the branch LAN, both ways.
    assert!(lab.ping(&t.lan, "10.1.1.11", 10), "branch LAN -> web guest: {}", lab.show("vpn"));
    assert!(lab.ping(&t.lan, "10.1.2.11", 5), "branch LAN -> db guest");
    assert!(lab.ping(&t.a1, "192.168.50.10", 5), "web guest -> branch LAN");
    assert!(lab.ping(&t.b1, "192.168.50.10", 5), "db guest -> branch LAN");
    // The router's VPN address answers the branch.
    assert!(lab.ping(&t.lan, "10.250.0.1", 5), "the router's VPN address");
    // TCP both ways, through iperf3: the guest sees the LAN's own address (never translated).
    let up = iperf_ok(&mut lab, &t.a1, "10.1.1.11", &t.lan, "LAN -> web guest");
    let down = iperf_ok(&mut lab, &t.lan, "192.168.50.10", &t.b1, "db guest -> LAN");
    eprintln!("through the tunnel: LAN -> guest {:.0} Mbit/s, guest -> LAN {:.0} Mbit/s", up / 1e6, down / 1e6);
    let flows = lab.show("conntrack");
    let seen = flows["flows"].as_array().unwrap().iter().any(|f| f["src"] == "192.168.50.10" && f["reply_dst"] == "192.168.50.10");
    assert!(seen, "a LAN flow kept its address both ways: {flows}");

    let v = lab.show("vpn");
    let b = peer(&v, "branch");
    assert!(b["handshakes"].as_u64().unwrap() >= 1 && b["rx_bytes"].as_u64().unwrap() > 1_000_000 && b["tx_bytes"].as_u64().unwrap() > 1_000_000, "{v}");
    assert_eq!(b["endpoint"], format!("{BRANCH_WAN}:51820"), "{v}");
    let text = ok(&[bin(), "ctl", "-s", lab.path("ctl.sock").to_str().unwrap(), "show", "vpn"]);
    assert!(text.contains("branch") && text.contains("192.168.50.0/24"), "{text}");
    // No key but public ones is ever shown or logged.
    let private = std::fs::read_to_string(lab.path("router.key")).unwrap();
    assert!(!text.contains(private.trim()) && !v.to_string().contains(private.trim()) && !lab.log().contains(private.trim()));

    // Cryptokey routing: the branch itself sends from an address outside its allowed_ips.
    ok(&["ip", "-n", &t.branch, "addr", "add", "172.16.9.9/32", "dev", "lo"]);
    let before = lab.drops("public", "vpn_source_not_allowed");
    assert!(!lab.exec(&t.branch, &["ping", "-c", "3", "-i", "0.2", "-W", "1", "-I", "172.16.9.9", "10.1.1.11"]).status.success(), "a spoofed source got an answer");
    let after = lab.drops("public", "vpn_source_not_allowed");
    assert!(after >= before + 3, "spoofed sources counted: {before} -> {after}");
    assert!(peer(&lab.show("vpn"), "branch")["source_not_allowed"].as_u64().unwrap() >= 3);

    // The public link carried nothing in clear: only UDP to and from 51820 (and ARP).
    lab.interrupt(dump);
    let o = run(&["tcpdump", "-n", "-r", cap.to_str().unwrap()]);
    let lines = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(lines.lines().count() > 100, "the capture saw the traffic: {lines}");
    for l in lines.lines() {
        let wg = l.contains(&format!("{PUBLIC_IP}.51820")) && l.contains("UDP");
        assert!(wg || l.contains("ARP"), "something in clear on the public link: {l}");
        assert!(!l.contains("10.1.") && !l.contains("192.168.50."), "inner address visible: {l}");
    }

    // The branch restarts: it handshakes again and traffic resumes.
    lab.interrupt(wgb);
    let wgb = branch_up(&mut lab, &t);
    assert!(lab.ping(&t.lan, "10.1.1.11", 15), "after the branch restarted: {}", lab.show("vpn"));
    // vrouter restarts (kill -9): the next guest packet starts a handshake to the branch.
    signal(lab.vrouter_pid(), "KILL");
    wait_for("vrouter gone", Duration::from_secs(5), || !lab.vrouter_alive());
    let _ = std::fs::remove_file(lab.path("ctl.sock"));
    let a1_tap = lab.name("a1");
    let b1_tap = lab.name("b1");
    let pb = lab.name("pb");
    // The taps went with the process; the namespaces keep theirs only while it lives, so the
    // guests are set up again on the new ones.
    for (ns, tap) in [(&t.a1, &a1_tap), (&t.b1, &b1_tap), (&t.out, &pb)] {
        let _ = lab.exec(ns, &["ip", "link", "del", tap]);
    }
    lab.vrouter(&t.config);
    let move_in = |_lab: &Lab, ns: &str, tap: &str, addr: &str, gw: Option<&str>| {
        wait_for(&format!("tap {tap}"), Duration::from_secs(5), || run(&["ip", "link", "show", tap]).status.success());
        ok(&["ip", "link", "set", tap, "netns", ns]);
        ok(&["ip", "-n", ns, "addr", "add", addr, "dev", tap]);
        ok(&["ip", "-n", ns, "link", "set", tap, "up"]);
        if let Some(gw) = gw {
            ok(&["ip", "-n", ns, "route", "replace", "default", "via", gw]);
        }
    };
    move_in(&lab, &t.a1, &a1_tap, "10.1.1.11/24", Some("10.1.1.1"));
    move_in(&lab, &t.out, &pb, &format!("{PUBLIC_GW}/24"), None);
    assert!(lab.ping(&t.a1, "192.168.50.10", 15), "after vrouter restarted: {}", lab.show("vpn"));
    assert!(lab.ping(&t.lan, "10.1.1.11", 5), "and the other way");
    lab.interrupt(wgb);
}

#[test]
fn road_warrior_reaches_its_network_and_resolves_names_wrong_key_reaches_nothing() {
    let mut lab = Lab::new("vr");
    let metrics = 40_000 + (std::process::id() % 20_000) as u16;
    let t = topology(&mut lab, false, &format!("metrics_listen = \"127.0.0.1:{metrics}\"\n"));
    let wgr = lab.name("wgr");
    let endpoint = format!("{PUBLIC_IP}:51820");
    let pid = wireguard_go(&mut lab, &t.rw, &wgr, "10.250.0.5/32", &t.rw_key, None, &t.router_pub, Some(&endpoint), "10.250.0.1/32,10.1.0.0/16");
    ok(&["ip", "-n", &t.rw, "route", "add", "10.1.0.0/16", "dev", &wgr]);
    ok(&["ip", "-n", &t.rw, "route", "add", "10.250.0.1/32", "dev", &wgr]);
    // Not a peer yet: its handshakes are a stranger's.
    assert!(!lab.ping(&t.rw, "10.1.1.11", 2), "an unknown key reached a guest");
    assert!(lab.drops("public", "vpn_stranger") > 0, "{}", lab.show("stats"));
    // Added live: the next handshake is answered.
    let f = lab.path("with-laptop.toml");
    std::fs::write(&f, t.config.replace("@SOCK@", lab.path("ctl.sock").to_str().unwrap()).replace("@STATE@", lab.path("state").to_str().unwrap())).unwrap();
    let o = run(&[bin(), "ctl", "-s", lab.path("ctl.sock").to_str().unwrap(), "apply", "-f", f.to_str().unwrap()]);
    assert!(o.status.success(), "apply: {}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    // vrouter knew no endpoint for it: the road warrior's first handshake taught it.
    assert!(lab.ping(&t.rw, "10.1.1.11", 15), "road warrior -> web guest: {}", lab.show("vpn"));
    let v = lab.show("vpn");
    assert!(peer(&v, "laptop")["endpoint"].as_str().unwrap_or("").starts_with(RW_WAN), "{v}");
    // Its own network only: db is not in its `networks`.
    assert!(!lab.ping(&t.rw, "10.1.2.11", 2), "road warrior reached a network it may not");
    // Names through the router's DNS on its VPN address.
    let o = lab.exec(&t.rw, &["dig", "+short", "+time=2", "+tries=3", "@10.250.0.1", &format!("web1.{DOMAIN}")]);
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "10.1.1.11", "{}", String::from_utf8_lossy(&o.stderr));
    // The guest reaches back (its reply, then a connection of its own).
    assert!(lab.ping(&t.a1, "10.250.0.5", 5), "web guest -> road warrior");
    // The peers in the metrics, by name.
    let body = http_get(metrics, "/metrics");
    for m in ["vrouter_vpn_rx_bytes_total{peer=\"laptop\"}", "vrouter_vpn_handshakes_total{peer=\"laptop\"}", "vrouter_vpn_dropped_datagrams_total{reason=\"stranger\"}"] {
        assert!(body.contains(m), "{m} missing from:\n{body}");
    }
    lab.interrupt(pid);

    // A peer whose key vrouter does not know: its handshakes go unanswered, nothing passes.
    let (bad_key, _) = keypair(&lab, "stranger");
    let before = lab.drops("public", "vpn_stranger");
    let pid = wireguard_go(&mut lab, &t.rw, &wgr, "10.250.0.5/32", &bad_key, None, &t.router_pub, Some(&endpoint), "10.250.0.1/32,10.1.0.0/16");
    ok(&["ip", "-n", &t.rw, "route", "replace", "10.1.0.0/16", "dev", &wgr]);
    assert!(!lab.ping(&t.rw, "10.1.1.11", 3), "a stranger's key reached a guest");
    let after = lab.drops("public", "vpn_stranger");
    assert!(after > before, "the stranger's handshakes were counted: {before} -> {after}");
    lab.interrupt(pid);
}
