//! VXLAN across "hosts": three namespaces on one underlay (a Linux bridge in a fourth):
//! - host A (192.0.2.10) runs vrouter A: network web (10.1.1.0/24, vni 5001) whose router role
//!   it owns (gateway 10.1.1.1), network db (10.1.2.0/24, local only) and network other
//!   (10.9.0.0/24, vni 5003); guests ga 10.1.1.11 (web), gd 10.1.2.11 (db), gc 10.9.0.11 (other);
//! - host B (192.0.2.11) runs vrouter B: web (vni 5001, no gateway: A owns it) with guest gb
//!   10.1.1.12, and other (vni 5003) with guest gx, which claims 10.1.1.13 to test isolation;
//! - host K (192.0.2.12) is the Linux kernel: a VXLAN device (vni 5001, remote A) in a bridge
//!   with a veth to guest gk 10.1.1.14.
//!
//! Covers ping and iperf3 across two vrouters, the gateway and routing through the owner from
//! the far host, VNI isolation, interop with the kernel both ways, remote MACs in `show fdb`,
//! and drops of datagrams from unknown peers, for unknown VNIs and with bad headers.

mod common;
use common::*;
use std::path::Path;
use std::time::Duration;

const A: &str = "192.0.2.10";
const B: &str = "192.0.2.11";
const K: &str = "192.0.2.12";
const STRANGER: &str = "192.0.2.13";


/// argv: SRC DST HEX...; sends each hex payload as one UDP datagram to DST:4789 from SRC.
const SEND: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 0))
for h in sys.argv[3:]:
    s.sendto(bytes.fromhex(h), (sys.argv[2], 4789))
"#;

fn port_drops(lab: &Lab, sock: &Path, port: &str, reason: &str) -> u64 {
    let s = lab.show_at(sock, "stats");
    s["ports"].as_array().unwrap().iter().find(|p| p["name"] == port).map(|p| p["drops"][reason].as_u64().unwrap_or(0)).unwrap_or(0)
}

#[test]
fn two_vrouters_and_the_kernel_share_a_vni() {
    let mut lab = Lab::new("vx");
    let br = underlay(&mut lab);
    let ha = underlay_host(&mut lab, &br, "ha", A);
    let hb = underlay_host(&mut lab, &br, "hb", B);
    let hk = underlay_host(&mut lab, &br, "hk", K);
    let hku = lab.name("hku");
    ok(&["ip", "-n", &hk, "addr", "add", &format!("{STRANGER}/24"), "dev", &hku]);

    let web_a = cfg::l3_network("web", "10.1.1.0/24", "10.1.1.1", "vni = 5001");
    let ca = [
        cfg::router(&format!("{}a", lab.id)),
        web_a,
        cfg::l3_network("db", "10.1.2.0/24", "10.1.2.1", ""),
        cfg::network("other", "10.9.0.0/24", None),
        "vni = 5003\n".into(),
        cfg::port("ga", "web", "tap", &lab.name("ga"), "52:54:00:30:01:11", "ip = \"10.1.1.11\""),
        cfg::port("gd", "db", "tap", &lab.name("gd"), "52:54:00:30:02:11", "ip = \"10.1.2.11\""),
        cfg::port("gc", "other", "tap", &lab.name("gc"), "52:54:00:30:09:11", "port_security = false"),
        format!("[vxlan]\nlocal = \"{A}\"\n[[vxlan.peer]]\nremote = \"{B}\"\n[[vxlan.peer]]\nremote = \"{K}\"\nvnis = [5001]\n"),
    ]
    .concat();
    let cb = [
        cfg::router(&format!("{}b", lab.id)),
        cfg::network("web", "10.1.1.0/24", None),
        "vni = 5001\n".into(),
        cfg::network("other", "10.9.0.0/24", None),
        "vni = 5003\n".into(),
        cfg::port("gb", "web", "tap", &lab.name("gb"), "52:54:00:30:01:12", "port_security = false"),
        cfg::port("gx", "other", "tap", &lab.name("gx"), "52:54:00:30:09:12", "port_security = false"),
        format!("[vxlan]\nlocal = \"{B}\"\n[[vxlan.peer]]\nremote = \"{A}\"\n"),
    ]
    .concat();
    let (n_ga, n_gd, n_gc, n_gb, n_gx) = (lab.name("ga"), lab.name("gd"), lab.name("gc"), lab.name("gb"), lab.name("gx"));
    let sa = lab.vrouter_at("a", Some(&ha), &ca);
    let sb = lab.vrouter_at("b", Some(&hb), &cb);
    let ga = host_guest(&mut lab, &ha, &n_ga, "nga", "10.1.1.11/24", Some("10.1.1.1"));
    let gd = host_guest(&mut lab, &ha, &n_gd, "ngd", "10.1.2.11/24", Some("10.1.2.1"));
    let _gc = host_guest(&mut lab, &ha, &n_gc, "ngc", "10.9.0.11/24", None);
    let gb = host_guest(&mut lab, &hb, &n_gb, "ngb", "10.1.1.12/24", Some("10.1.1.1"));
    let gx = host_guest(&mut lab, &hb, &n_gx, "ngx", "10.1.1.13/24", None);

    // The kernel VTEP: vxlan device in a bridge with a veth to its guest.
    let vx = lab.name("kvx");
    ok(&["ip", "-n", &hk, "link", "add", &vx, "type", "vxlan", "id", "5001", "dstport", "4789", "local", K, "remote", A, "dev", &hku]);
    ok(&["ip", "-n", &hk, "link", "add", "kbr", "type", "bridge"]);
    ok(&["ip", "-n", &hk, "link", "set", &vx, "master", "kbr", "up"]);
    let gk = lab.name("ngk");
    ok(&["ip", "netns", "add", &gk]);
    lab.adopt_netns(gk.clone());
    let (kv, kg) = (lab.name("kv"), lab.name("kg"));
    ok(&["ip", "-n", &hk, "link", "add", &kv, "mtu", "1450", "type", "veth", "peer", "name", &kg, "netns", &gk]);
    ok(&["ip", "-n", &hk, "link", "set", &kv, "master", "kbr", "up"]);
    ok(&["ip", "-n", &hk, "link", "set", "kbr", "up"]);
    ok(&["ip", "-n", &gk, "link", "set", "lo", "up"]);
    ok(&["ip", "-n", &gk, "addr", "add", "10.1.1.14/24", "dev", &kg]);
    ok(&["ip", "-n", &gk, "link", "set", &kg, "mtu", "1450", "up"]);
    ok(&["ip", "-n", &gk, "route", "add", "default", "via", "10.1.1.1"]);

    // Across two vrouters, same VNI.
    assert!(lab.ping(&gb, "10.1.1.11", 5), "gb -> ga across VXLAN");
    assert!(lab.ping(&ga, "10.1.1.12", 3), "ga -> gb across VXLAN");
    // The gateway and routing come from A, the owner of web's router role.
    assert!(lab.ping(&gb, "10.1.1.1", 3), "gb -> its gateway on host A");
    assert!(lab.ping(&gb, "10.1.2.11", 3), "gb -> db through host A's router");
    assert!(lab.ping(&gd, "10.1.1.12", 3), "db -> gb through host A's router");
    iperf_between(&mut lab, &ga, &gb, "10.1.1.11", "vrouter-vrouter");
    // Another VNI is another network, whatever addresses its guests claim.
    assert!(!lab.ping(&gx, "10.1.1.11", 2), "vni 5003 must not reach vni 5001");

    // The kernel's VTEP, both ways.
    assert!(lab.ping(&gk, "10.1.1.11", 5), "kernel guest -> ga");
    assert!(lab.ping(&ga, "10.1.1.14", 3), "ga -> kernel guest");
    assert!(lab.ping(&gk, "10.1.2.11", 3), "kernel guest -> db through A's router");
    iperf_between(&mut lab, &gk, &ga, "10.1.1.14", "vrouter-kernel");
    iperf_between(&mut lab, &ga, &gk, "10.1.1.11", "kernel-vrouter");

    // Remote MACs are learned against their VTEP.
    let fdb = lab.show_at(&sa, "fdb");
    let rows = fdb.as_array().unwrap();
    assert!(rows.iter().any(|r| r["mac"] == "52:54:00:30:01:12" && r["port"] == format!("vxlan-{B}") && r["network"] == "web"), "{fdb}");
    let ports = lab.show_at(&sa, "ports");
    assert!(ports.as_array().unwrap().iter().any(|p| p["name"] == format!("vxlan-{K}") && p["mode"] == "vxlan" && p["tx_frames"].as_u64().unwrap() > 100), "{ports}");
    // Both peers were heard from just now: up, with when.
    for peer in [B, K] {
        let p = ports.as_array().unwrap().iter().find(|p| p["name"] == format!("vxlan-{peer}")).cloned().unwrap_or_default();
        assert_eq!(p["state"], "up", "{p}");
        assert!(p["last_rx_secs"].as_u64().is_some_and(|s| s < 60), "{p}");
    }
    // Segments from a vrouter peer were coalesced for ga's tap; the kernel VTEP's whole
    // super-frames (one tunnel-GSO datagram each over the veth) were taken as GSO frames.
    let st = lab.show_at(&sa, "stats");
    let port = |n: &str| st["ports"].as_array().unwrap().iter().find(|p| p["name"] == n).cloned().unwrap_or_default();
    assert!(port("ga")["tx_coalesced"].as_u64().unwrap_or(0) > 0, "no super-frame coalesced for ga: {}", port("ga"));
    assert!(port(&format!("vxlan-{K}"))["rx_gso_frames"].as_u64().unwrap_or(0) > 0, "{}", port(&format!("vxlan-{K}")));
    let stats_b = lab.show_at(&sb, "stats");
    assert_eq!(stats_b["totals"]["drops"]["vxlan_too_big"].as_u64().unwrap_or(0), 0, "{stats_b}");

    // Unknown peer, unknown VNI, bad flags: counted, never delivered.
    let arp_bcast = "ffffffffffff525400300199080600010800060400015254003001990a01010e0000000000000a01010b";
    let unknown_vni = format!("0800000000000100{arp_bcast}");
    let bad_flags = format!("0000000000138900{arp_bcast}");
    let good = format!("0800000000138900{arp_bcast}");
    lab.exec(&hk, &["python3", "-c", SEND, STRANGER, A, &good]);
    lab.exec(&hk, &["python3", "-c", SEND, K, A, &unknown_vni, &bad_flags, "0800"]);
    let k = format!("vxlan-{K}");
    wait_for("drop counters", Duration::from_secs(3), || {
        let s = lab.show_at(&sa, "stats");
        s["vxlan"]["unknown_peer"].as_u64().unwrap_or(0) >= 1 && port_drops(&lab, &sa, &k, "unknown_vni") >= 1 && port_drops(&lab, &sa, &k, "bad_vxlan") >= 2
    });
    let fdb = lab.show_at(&sa, "fdb");
    assert!(!fdb.as_array().unwrap().iter().any(|r| r["mac"] == "52:54:00:30:01:99"), "a dropped frame taught a MAC: {fdb}");
}
