//! A VM restart must not cut the VM off: QEMU (and libvirt) delete a VM's tap when it powers off
//! and create one with the same name when it starts again. vrouter keeps the port configured,
//! notices the interface go and come back (rtnetlink), and reattaches it with the same settings,
//! while forwarding for everyone else never pauses. A `tap` port whose tap is deleted from
//! outside is recreated. Here a veth end stands in for QEMU's tap.

mod common;
use common::*;
use std::time::{Duration, Instant};

fn port_state(lab: &Lab, name: &str) -> String {
    let ports = lab.show("ports");
    ports.as_array().unwrap().iter().find(|p| p["name"] == name).map(|p| p["state"].as_str().unwrap_or("").to_string()).unwrap_or_default()
}

/// A veth pair whose `outer` end stays in vrouter's namespace (the "tap" a netdev port
/// attaches to) and whose other end is the guest's NIC in `ns`.
fn veth_guest(lab: &Lab, outer: &str, ns: &str, mac: &str, addr: &str) {
    let inner = lab.name("vi");
    ok(&["ip", "link", "add", outer, "type", "veth", "peer", "name", &inner, "netns", ns]);
    ok(&["ip", "-n", ns, "link", "set", &inner, "address", mac]);
    ok(&["ip", "-n", ns, "addr", "add", addr, "dev", &inner]);
    ok(&["ip", "-n", ns, "link", "set", &inner, "up"]);
}

#[test]
fn netdev_and_tap_ports_reattach_while_others_keep_forwarding() {
    let mut lab = Lab::new("ra");
    let vx = lab.name("vx");
    let vm_ns = lab.name("vm");
    ok(&["ip", "netns", "add", &vm_ns]);
    lab.adopt_netns(vm_ns.clone());
    ok(&["ip", "netns", "exec", &vm_ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
    veth_guest(&lab, &vx, &vm_ns, "52:54:00:40:01:30", "10.1.1.30/24");
    let cfg = [
        cfg::router(&lab.id),
        cfg::network("web", "10.1.1.0/24", None),
        cfg::port("a1", "web", "tap", &lab.name("a1"), "52:54:00:40:01:11", "ip = \"10.1.1.11\""),
        cfg::port("a2", "web", "tap", &lab.name("a2"), "52:54:00:40:01:12", "ip = \"10.1.1.12\""),
        cfg::port("vm", "web", "netdev", &vx, "52:54:00:40:01:30", "ip = \"10.1.1.30\""),
    ]
    .concat();
    lab.vrouter(&cfg);
    let a1 = lab.guest("n1", &lab.name("a1"), "10.1.1.11/24");
    let a2 = lab.guest("n2", &lab.name("a2"), "10.1.1.12/24");
    assert!(lab.ping(&vm_ns, "10.1.1.11", 5), "vm -> a1 before the restart");
    assert_eq!(port_state(&lab, "vm"), "up");

    // Traffic between the others runs through the whole restart.
    let pings = lab.path("a1a2.log");
    let pinger = lab.spawn_in(&a1, &["ping", "-i", "0.05", "-c", "160", "-W", "1", "10.1.1.12"], &pings);

    // The VM powers off: its interface disappears.
    ok(&["ip", "link", "del", &vx]);
    wait_for("vm port to wait for its interface", Duration::from_secs(10), || port_state(&lab, "vm") == "waiting");
    let ports = lab.show("ports");
    let vm = ports.as_array().unwrap().iter().find(|p| p["name"] == "vm").unwrap();
    assert!(vm["waiting_secs"].is_u64(), "{vm}");
    // ... and starts again: the same name comes back.
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    veth_guest(&lab, &vx, &vm_ns, "52:54:00:40:01:30", "10.1.1.30/24");
    wait_for("vm port to reattach", Duration::from_secs(10), || port_state(&lab, "vm") == "up");
    let reattach = t.elapsed();
    eprintln!("netdev port reattached {} ms after its interface came back", reattach.as_millis());
    assert!(lab.ping(&vm_ns, "10.1.1.11", 5), "vm -> a1 after the restart");
    assert!(lab.log().contains("port reattached"), "{}", lab.log());

    // The vm port's restart did not pause forwarding between a1 and a2 (the pinger ran before
    // the tap deletion); count what came back.
    wait_for("pinger", Duration::from_secs(30), || std::fs::read_to_string(&pings).unwrap_or_default().contains("packets transmitted"));
    let _ = pinger;
    let out = std::fs::read_to_string(&pings).unwrap();
    let line = out.lines().find(|l| l.contains("packets transmitted")).unwrap();
    let nums: Vec<u64> = line.split(|c: char| !c.is_ascii_digit()).filter_map(|w| w.parse().ok()).collect();
    eprintln!("a1 -> a2 while the vm port went and came back: {line}");
    assert!(nums.len() >= 2 && nums[1] + 2 >= nums[0], "forwarding between a1 and a2 paused: {line}");
    // A tap deleted from outside (in the guest's namespace) is recreated by vrouter.
    let a2if = lab.name("a2");
    ok(&["ip", "-n", &a2, "link", "del", &a2if]);
    wait_for("tap a2 to be recreated", Duration::from_secs(10), || run(&["ip", "link", "show", &a2if]).status.success());
    assert_eq!(port_state(&lab, "a2"), "up");
    ok(&["ip", "link", "set", &a2if, "netns", &a2]);
    ok(&["ip", "-n", &a2, "addr", "add", "10.1.1.12/24", "dev", &a2if]);
    ok(&["ip", "-n", &a2, "link", "set", &a2if, "up"]);
    let link = ok(&["ip", "-n", &a2, "link", "show", &a2if]);
    assert!(link.contains("52:54:00:40:01:12"), "recreated with the guest's MAC: {link}");
    assert!(lab.ping(&a1, "10.1.1.12", 5), "a1 -> a2 over the recreated tap");

    assert!(lab.vrouter_alive());
}

/// A `netdev` port may name its interface by MAC (`match_mac`) instead of by name, as a system
/// VM's NICs come up in whatever order: vrouter attaches to whatever interface has that MAC, and
/// after the interface goes, to the one that has it next, under any name.
#[test]
fn netdev_port_found_by_its_mac_under_any_name() {
    let mut lab = Lab::new("rm");
    let (vx, vy) = (lab.name("vx"), lab.name("vy"));
    let vm_ns = lab.name("vm");
    ok(&["ip", "netns", "add", &vm_ns]);
    lab.adopt_netns(vm_ns.clone());
    ok(&["ip", "netns", "exec", &vm_ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
    veth_guest(&lab, &vx, &vm_ns, "52:54:00:41:01:30", "10.1.1.30/24");
    // The interface vrouter attaches to (the veth's outer end) carries the MAC it is matched by.
    ok(&["ip", "link", "set", &vx, "address", "02:00:00:41:00:01"]);
    let cfg = [
        cfg::router(&lab.id),
        cfg::network("web", "10.1.1.0/24", None),
        cfg::port("a1", "web", "tap", &lab.name("a1"), "52:54:00:41:01:11", "ip = \"10.1.1.11\""),
        "[[port]]\nname = \"vm\"\nnetwork = \"web\"\nkind = \"netdev\"\nmatch_mac = \"02:00:00:41:00:01\"\nmac = \"52:54:00:41:01:30\"\nip = \"10.1.1.30\"\n".to_string(),
    ]
    .concat();
    lab.vrouter(&cfg);
    lab.guest("n1", &lab.name("a1"), "10.1.1.11/24");
    assert!(lab.ping(&vm_ns, "10.1.1.11", 5), "vm -> a1 through the port found by MAC");
    let ports = lab.show("ports");
    let vm = ports.as_array().unwrap().iter().find(|p| p["name"] == "vm").cloned().unwrap();
    assert_eq!((vm["ifname"].as_str(), vm["state"].as_str()), (Some("mac:02:00:00:41:00:01"), Some("up")), "{vm}");
    // The interface goes and comes back under another name, with the same MAC.
    ok(&["ip", "link", "del", &vx]);
    wait_for("vm port to wait", Duration::from_secs(10), || port_state(&lab, "vm") == "waiting");
    veth_guest(&lab, &vy, &vm_ns, "52:54:00:41:01:30", "10.1.1.30/24");
    ok(&["ip", "link", "set", &vy, "address", "02:00:00:41:00:01"]);
    wait_for("vm port to reattach by MAC", Duration::from_secs(10), || port_state(&lab, "vm") == "up");
    assert!(lab.ping(&vm_ns, "10.1.1.11", 5), "vm -> a1 through the renamed interface");
}

/// A NIC per guest network (the system VM's layout, as CloudStack plugs its router into each
/// guest network's bridge): an `[[uplink]]` with `untagged = "web"` carries web without tags,
/// and the VM behind it is a `kind = "remote"` port `via` that uplink. It gets its reservation
/// and hostname from vrouter's DHCP, its name resolves, it reaches a guest on a tap port and the
/// gateway; its MAC is bound to the uplink (a guest elsewhere sending from it is dropped).
#[test]
fn uplink_carries_its_native_network_untagged_with_a_remote_vm() {
    let mut lab = Lab::new("ru");
    let vx = lab.name("vx");
    let vm_ns = lab.name("vm");
    ok(&["ip", "netns", "add", &vm_ns]);
    lab.adopt_netns(vm_ns.clone());
    ok(&["ip", "netns", "exec", &vm_ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
    let inner = lab.name("vi");
    ok(&["ip", "link", "add", &vx, "type", "veth", "peer", "name", &inner, "netns", &vm_ns]);
    ok(&["ip", "-n", &vm_ns, "link", "set", &inner, "address", "52:54:00:42:01:30"]);
    ok(&["ip", "-n", &vm_ns, "link", "set", "lo", "up"]);
    ok(&["ip", "-n", &vm_ns, "link", "set", &inner, "up"]);
    let cfg = [
        cfg::router(&lab.id),
        cfg::l3_network("web", "10.1.1.0/24", "10.1.1.1", "dhcp_range = [\"10.1.1.100\", \"10.1.1.120\"]\ndomain = \"web.test\""),
        cfg::port("a1", "web", "tap", &lab.name("a1"), "52:54:00:42:01:11", "ip = \"10.1.1.11\""),
        cfg::port("a2", "web", "tap", &lab.name("a2"), "52:54:00:42:01:12", "port_security = false"),
        format!("[[uplink]]\nname = \"webnic\"\nkind = \"netdev\"\nifname = \"{vx}\"\nuntagged = \"web\"\n"),
        "[[port]]\nname = \"vm\"\nnetwork = \"web\"\nkind = \"remote\"\nvia = \"webnic\"\nmac = \"52:54:00:42:01:30\"\nip = \"10.1.1.30\"\nhostname = \"vm\"\n".to_string(),
    ]
    .concat();
    lab.vrouter(&cfg);
    let a1 = lab.guest("n1", &lab.name("a1"), "10.1.1.11/24");
    let lease = udhcpc(&lab, &vm_ns, &inner, &[]);
    assert_eq!(lease.get("ip").map(String::as_str), Some("10.1.1.30"), "the remote VM's reservation through the untagged uplink: {lease:?}");
    assert!(lab.ping(&vm_ns, "10.1.1.11", 5), "behind the uplink -> a1");
    assert!(lab.ping(&vm_ns, "10.1.1.1", 5), "behind the uplink -> the gateway");
    assert!(lab.ping(&a1, "10.1.1.30", 5), "a1 -> behind the uplink");
    let name = lab.exec(&a1, &["dig", "@10.1.1.1", "+short", "vm.web.test"]);
    assert_eq!(String::from_utf8_lossy(&name.stdout).trim(), "10.1.1.30", "the remote VM's name");
    let fdb = lab.show("fdb");
    assert!(fdb.as_array().unwrap().iter().any(|r| r["mac"] == "52:54:00:42:01:30" && r["port"] == "webnic" && r["type"] == "static"), "{fdb}");
    let ports = lab.show("ports");
    let up = ports.as_array().unwrap().iter().find(|p| p["name"] == "webnic").cloned().unwrap();
    assert_eq!(up["untagged"], "web", "{up}");
    assert!(!ports.as_array().unwrap().iter().any(|p| p["name"] == "vm"), "a remote VM has no port of its own");
    assert_eq!(lab.drops("webnic", "untagged_on_trunk"), 0);
    // Its metadata, through the uplink: by its MAC there and its address.
    let py = "import urllib.request\nprint(urllib.request.urlopen('http://169.254.169.254/latest/meta-data/local-hostname', timeout=3).read().decode())\n";
    ok(&["ip", "-n", &vm_ns, "route", "replace", "default", "via", "10.1.1.1"]);
    let o = lab.exec(&vm_ns, &["python3", "-c", py]);
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "vm", "metadata behind the uplink: {}{}", String::from_utf8_lossy(&o.stderr), lab.show("stats"));
    // A guest on another port (no port security of its own) sending from the remote VM's MAC.
    let a2 = lab.guest("n2", &lab.name("a2"), "10.1.1.50/24");
    ok(&["ip", "-n", &a2, "link", "set", &lab.name("a2"), "address", "52:54:00:42:01:30"]);
    assert!(!lab.ping(&a2, "10.1.1.11", 2), "the remote VM's MAC from elsewhere gets nowhere");
    assert!(lab.drops("a2", "spoofed_mac") > 0);
    assert!(lab.ping(&vm_ns, "10.1.1.11", 5), "the remote VM is still reached");
}
