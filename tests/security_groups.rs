//! Security groups end to end, between guests of one network (filtered at L2) and toward the
//! outside (routed and NATed). Network web 10.1.1.0/24 (DHCP pool .100-.199):
//! - g1 10.1.1.11 in "ssh-only": in, tcp/22 from anywhere and anything from members of
//!   "admins"; out, anything;
//! - g2 10.1.1.12 in "admins" (a member by its fixed address);
//! - g3 10.1.1.13 without groups (unfiltered, a member of nothing);
//! - g4 in "admins" without a fixed address: a member through its DHCP lease.
//!
//! An outside namespace on the public tap runs a server the guests reach through source NAT.

mod common;
use common::*;
use std::time::Duration;

const G1: &str = "10.1.1.11";
const REMOTE: &str = "198.51.100.5";

/// argv: PORT...; answers "ok PEER" on each TCP port.
const SERVER: &str = r#"
import socket, sys, threading
def serve(s):
    while True:
        c, a = s.accept()
        try:
            c.sendall(f'ok {a[0]}\n'.encode())
        except OSError:
            pass
        c.close()
for p in sys.argv[1:]:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(('0.0.0.0', int(p)))
    s.listen(16)
    threading.Thread(target=serve, args=(s,), daemon=True).start()
print('listening', flush=True)
threading.Event().wait()
"#;

/// argv: DST PORT; prints the answer, or "FAIL <error>" after 2 s.
const CLIENT: &str = r#"
import socket, sys
s = socket.socket()
s.settimeout(2)
try:
    s.connect((sys.argv[1], int(sys.argv[2])))
    print(s.recv(100).decode().strip())
except OSError as e:
    print('FAIL', e)
"#;

fn connect(lab: &Lab, ns: &str, dst: &str, port: u16) -> String {
    let o = lab.exec(ns, &["python3", "-c", CLIENT, dst, &port.to_string()]);
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn server(lab: &mut Lab, ns: &str, tag: &str, ports: &[&str]) {
    let log = lab.path(&format!("{tag}.log"));
    let mut args = vec!["python3", "-u", "-c", SERVER];
    args.extend_from_slice(ports);
    lab.spawn_in(ns, &args, &log);
    wait_for(&format!("server {tag}"), Duration::from_secs(5), || std::fs::read_to_string(&log).unwrap_or_default().contains("listening"));
}

#[test]
fn groups_filter_between_guests_and_follow_leases() {
    let mut lab = Lab::new("sg");
    let groups = r#"
[[security_group]]
name = "ssh-only"
rules = [
  { direction = "ingress", protocol = "tcp", ports = "22", cidr = "0.0.0.0/0" },
  { direction = "ingress", protocol = "all", remote_group = "admins" },
  { direction = "egress", protocol = "all", cidr = "0.0.0.0/0" },
]
[[security_group]]
name = "admins"
rules = [
  { direction = "ingress", protocol = "all", cidr = "0.0.0.0/0" },
  { direction = "egress", protocol = "all", cidr = "0.0.0.0/0" },
]
"#;
    let c = [
        cfg::router(&lab.id),
        cfg::l3_network("web", "10.1.1.0/24", "10.1.1.1", "dhcp_range = [\"10.1.1.100\", \"10.1.1.199\"]"),
        cfg::port("g1", "web", "tap", &lab.name("g1"), "52:54:00:20:01:11", "ip = \"10.1.1.11\"\nsecurity_groups = [\"ssh-only\"]"),
        cfg::port("g2", "web", "tap", &lab.name("g2"), "52:54:00:20:01:12", "ip = \"10.1.1.12\"\nsecurity_groups = [\"admins\"]"),
        cfg::port("g3", "web", "tap", &lab.name("g3"), "52:54:00:20:01:13", "ip = \"10.1.1.13\""),
        cfg::port("g4", "web", "tap", &lab.name("g4"), "52:54:00:20:01:14", "security_groups = [\"admins\"]"),
        format!("[public]\nkind = \"tap\"\nifname = \"{}\"\nips = [\"203.0.113.10/24\"]\ngateway = \"203.0.113.1\"\n", lab.name("pb")),
        groups.to_string(),
    ]
    .concat();
    lab.vrouter(&c);
    let mut ns = Vec::new();
    for (i, g) in ["g1", "g2", "g3"].iter().enumerate() {
        let ifname = lab.name(g);
        let n = lab.guest(&format!("n{g}"), &ifname, &format!("10.1.1.1{}/24", i + 1));
        ok(&["ip", "-n", &n, "route", "add", "default", "via", "10.1.1.1"]);
        ns.push(n);
    }
    let g4if = lab.name("g4");
    let g4 = lab.bare_guest("ng4", "g4");
    let pb = lab.name("pb");
    let out = lab.guest("out", &pb, "203.0.113.1/24");
    ok(&["ip", "-n", &out, "addr", "add", &format!("{REMOTE}/32"), "dev", "lo"]);
    server(&mut lab, &ns[0], "g1", &["22", "8080"]);
    server(&mut lab, &out, "out", &["9000"]);

    // The unfiltered non-member reaches tcp/22 and nothing else.
    assert_eq!(connect(&lab, &ns[2], G1, 22), "ok 10.1.1.13");
    assert!(connect(&lab, &ns[2], G1, 8080).starts_with("FAIL"), "tcp/8080 from a non-member must be refused");
    assert!(!lab.ping(&ns[2], G1, 2), "ping from a non-member must be refused");
    assert!(lab.drops("g1", "security_group") >= 2, "{}", lab.show("stats"));
    // g1's own traffic out is allowed, and its replies come back: to a guest and to the outside.
    assert!(lab.ping(&ns[0], "10.1.1.13", 3));
    assert_eq!(connect(&lab, &ns[0], REMOTE, 9000), "ok 203.0.113.10");
    // A member by its fixed address reaches everything.
    assert_eq!(connect(&lab, &ns[1], G1, 8080), "ok 10.1.1.12");
    assert!(lab.ping(&ns[1], G1, 3));

    // A member by its DHCP lease, once it has one.
    let lease = udhcpc(&lab, &g4, &g4if, &[]);
    let ip = lease.get("ip").cloned().unwrap_or_else(|| panic!("no lease: {lease:?}"));
    assert!(ip.starts_with("10.1.1.1"), "{ip}");
    assert_eq!(connect(&lab, &g4, G1, 8080), format!("ok {ip}"));
    // ... and still not the non-member.
    assert!(connect(&lab, &ns[2], G1, 8080).starts_with("FAIL"));
    let s = lab.show("stats");
    assert!(s["security_groups"]["flows_allowed"].as_u64().unwrap() >= 4, "{s}");
}
