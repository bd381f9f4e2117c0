//! `vrouter check` and `vrouter run` on good and broken configs: exit codes and file:line: key
//! messages, as an operator sees them.

mod common;
use common::*;
use std::path::PathBuf;

fn check(name: &str, text: &str) -> (i32, String) {
    let dir = std::env::temp_dir().join(format!("vrouter-check-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    let o = run(&[bin(), "check", "-c", p.to_str().unwrap()]);
    let _ = std::fs::remove_dir_all(&dir);
    (o.status.code().unwrap_or(-1), String::from_utf8_lossy(&o.stderr).into_owned())
}

const BASE: &str = r#"[router]
name = "t"

[[network]]
name = "web"
cidr = "10.1.1.0/24"
gateway = "10.1.1.1"
vlan = 101

[[network]]
name = "db"
cidr = "10.1.2.0/24"
vlan = 102

[[port]]
name = "vm1"
network = "web"
kind = "tap"
ifname = "vr-vm1"
mac = "52:54:00:12:34:01"
ip = "10.1.1.11"
"#;

/// Each case: config text, the line and key the message must name, a phrase it must contain.
fn cases() -> Vec<(&'static str, String, usize, &'static str, &'static str)> {
    vec![
        ("unknown_key", BASE.replace("vlan = 101", "vlan = 101\ncolour = \"red\""), 9, "network[0].colour", "unknown field"),
        ("missing_network", BASE.replace("network = \"web\"", "network = \"nope\""), 17, "port[0].network", "no [[network]] is named"),
        ("ip_outside_cidr", BASE.replace("ip = \"10.1.1.11\"", "ip = \"10.9.9.9\""), 21, "port[0].ip", "not a host address"),
        ("gateway_outside", BASE.replace("gateway = \"10.1.1.1\"", "gateway = \"10.1.2.1\""), 7, "network[0].gateway", "not a host address"),
        ("dup_vlan", BASE.replace("vlan = 102", "vlan = 101"), 13, "network[1].vlan", "duplicate VLAN id 101"),
        ("bad_vlan", BASE.replace("vlan = 102", "vlan = 4095"), 13, "network[1].vlan", "outside 1..4094"),
        ("bad_mac", BASE.replace("52:54:00:12:34:01", "52:54:00:12:34"), 20, "port[0].mac", "invalid MAC"),
        ("bad_cidr", BASE.replace("10.1.2.0/24", "10.1.2.7/24"), 12, "network[1].cidr", "host bits"),
        ("overlap", BASE.replace("10.1.2.0/24", "10.1.0.0/16"), 12, "network[1].cidr", "overlaps"),
        ("bad_type", BASE.replace("vlan = 101", "vlan = \"x\""), 8, "network[0].vlan", "invalid type"),
        ("bad_range", format!("{BASE}\n[[egress]]\nnetwork = \"web\"\nprotocol = \"tcp\"\nports = \"30-20\"\ndestinations = [\"0.0.0.0/0\"]\naction = \"deny\"\n"), 26, "egress[0].ports", "runs backwards"),
        ("bad_dhcp_range", BASE.replace("vlan = 101", "vlan = 101\ndhcp_range = [\"10.1.1.200\", \"10.1.1.100\"]"), 9, "network[0].dhcp_range", "runs backwards"),
        ("bad_enum", BASE.replace("kind = \"tap\"", "kind = \"vhost\""), 18, "port[0].kind", "unknown variant"),
        ("syntax", BASE.replace("name = \"vm1\"", "name = vm1"), 16, "name", "TOML syntax error"),
        (
            "dup_mac_ifname",
            format!("{BASE}\n[[port]]\nname = \"vm2\"\nnetwork = \"web\"\nkind = \"tap\"\nifname = \"vr-vm1\"\nmac = \"52:54:00:12:34:01\"\n"),
            27, "port[1].ifname", "duplicate interface name vr-vm1",
        ),
        (
            "trunk_without_vlan",
            format!("{}\n[[uplink]]\nname = \"t0\"\nkind = \"netdev\"\nifname = \"eth9\"\nnetworks = [\"db\"]\n", BASE.replace("vlan = 102\n", "")),
            26, "uplink[0].networks[0]", "has no `vlan`",
        ),
        ("security_needs_mac", BASE.replace("mac = \"52:54:00:12:34:01\"\n", ""), 15, "port[0].mac", "port_security"),
        ("user_data_twice", format!("{BASE}user_data = \"x\"\nuser_data_file = \"x.yaml\"\n"), 23, "port[0].user_data_file", "not both"),
        ("user_data_missing", format!("{BASE}user_data_file = \"no-such.yaml\"\n"), 22, "port[0].user_data_file", "No such file"),
        ("user_data_too_big", format!("{}user_data = \"{}\"\n", BASE.replace("name = \"t\"", "name = \"t\"\nuser_data_max = 4"), "x".repeat(5)), 23, "port[0].user_data", "over [router] user_data_max"),
        ("bad_public_key", format!("{BASE}public_keys = [\"\"]\n"), 22, "port[0].public_keys[0]", "one non-empty line"),
        ("match_mac_on_tap", BASE.replace("ifname = \"vr-vm1\"", "match_mac = \"02:00:00:00:00:01\""), 19, "port[0].match_mac", "needs kind = \"netdev\""),
        ("no_ifname", BASE.replace("ifname = \"vr-vm1\"\n", ""), 15, "port[0].ifname", "give `ifname`"),
        ("remote_without_via", BASE.replace("kind = \"tap\"\nifname = \"vr-vm1\"", "kind = \"remote\""), 15, "port[0].via", "missing"),
        ("reserved_port_name", BASE.replace("name = \"vm1\"", "name = \"public\""), 16, "port[0].name", "is reserved"),
        ("user_data_max_too_big", BASE.replace("name = \"t\"", "name = \"t\"\nuser_data_max = 100000"), 3, "router.user_data_max", "at most 61440"),
    ]
}

#[test]
fn broken_configs_name_file_line_and_key_and_exit_1() {
    for (name, text, line, key, phrase) in cases() {
        let (code, err) = check(&format!("{name}.toml"), &text);
        assert_eq!(code, 1, "{name}: exit code; stderr: {err}");
        let want = if key.is_empty() { format!("{name}.toml:{line}:") } else { format!("{name}.toml:{line}: {key}:") };
        assert!(err.contains(&want), "{name}: expected {want:?} in: {err}");
        assert!(err.contains(phrase), "{name}: expected {phrase:?} in: {err}");
    }
}

#[test]
fn several_errors_are_all_reported() {
    let text = BASE.replace("vlan = 102", "vlan = 101").replace("ip = \"10.1.1.11\"", "ip = \"10.1.2.11\"");
    let (code, err) = check("multi.toml", &text);
    assert_eq!(code, 1);
    assert!(err.contains("network[1].vlan") && err.contains("port[0].ip"), "{err}");
}

#[test]
fn every_file_in_conf_passes_and_unbuilt_keys_warn() {
    let conf = repo().join("conf");
    let mut n = 0;
    for e in std::fs::read_dir(&conf).unwrap() {
        let p: PathBuf = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "toml") {
            let o = run(&[bin(), "check", "-c", p.to_str().unwrap()]);
            assert!(o.status.success(), "{}: {}", p.display(), String::from_utf8_lossy(&o.stderr));
            assert!(String::from_utf8_lossy(&o.stdout).contains(": ok:"));
            n += 1;
        }
    }
    assert!(n >= 2, "conf/ should hold the documented example and the demo");
    let o = run(&[bin(), "check", "-c", repo().join("conf/vrouter.toml").to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains("load_balancer") && !err.contains("security_group"), "load balancing and security groups are built: {err}");
    assert!(!err.contains("public: has no effect") && !err.contains("port_forward") && !err.contains("egress"), "routing and NAT are built: {err}");
    assert!(!err.contains("vxlan") && !err.contains("vni"), "VXLAN is built: {err}");
    assert!(!err.contains("dns: has no effect") && !err.contains("dhcp_range: has no effect"), "DHCP and DNS are built: {err}");
}

#[test]
fn run_refuses_a_broken_config_and_a_missing_file() {
    let dir = std::env::temp_dir().join(format!("vrouter-run-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("bad.toml");
    std::fs::write(&p, BASE.replace("vlan = 102", "vlan = 101")).unwrap();
    let o = run(&[bin(), "run", "-c", p.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("bad.toml:13: network[1].vlan"));
    // Something that is not a socket where the control socket goes: refused, left in place.
    let blocker = dir.join("not-a-socket");
    std::fs::write(&blocker, "precious").unwrap();
    std::fs::write(&p, format!("[router]\nname = \"t\"\ncontrol_socket = \"{}\"\n", blocker.display())).unwrap();
    let o = run(&[bin(), "run", "-c", p.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("is not a socket"), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::read_to_string(&blocker).unwrap(), "precious");
    let o = run(&[bin(), "check", "-c", dir.join("absent.toml").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("cannot read"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// `[wireguard]`: keys read from files only their owner may read, the endpoint on a public
/// address, peers' prefixes clear of the account's networks and of each other.
/// `vrouter check` on `text` written to `dir/name`: its exit code and stderr.
fn check_in(dir: &std::path::Path, name: &str, text: &str) -> (i32, String) {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    let o = run(&[bin(), "check", "-c", p.to_str().unwrap()]);
    (o.status.code().unwrap_or(-1), String::from_utf8_lossy(&o.stderr).into_owned())
}

#[test]
fn wireguard_sections_are_checked() {
    let dir = std::env::temp_dir().join(format!("vrouter-check-{}-wg", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("acct.key");
    std::fs::write(&key, "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=\n").unwrap();
    ok(&["chmod", "600", key.to_str().unwrap()]);
    let loose = dir.join("loose.key");
    std::fs::write(&loose, "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=\n").unwrap();
    ok(&["chmod", "644", loose.to_str().unwrap()]);
    let good = format!(
        "{BASE}\n[public]\nkind = \"tap\"\nifname = \"vr-pub\"\nips = [\"203.0.113.10/24\"]\ngateway = \"203.0.113.1\"\n\n[wireguard]\nlisten = \"203.0.113.10:51820\"\nprivate_key_file = \"acct.key\"\naddress = \"10.250.0.1/24\"\n\n[[wireguard.peer]]\nname = \"branch\"\npublic_key = \"xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=\"\nendpoint = \"198.51.100.7:51820\"\nallowed_ips = [\"192.168.50.0/24\"]\nnetworks = [\"web\"]\npersistent_keepalive = 25\n"
    );
    let checkin = |name: &str, text: &str| check_in(&dir, name, text);
    let (code, err) = checkin("good.toml", &good);
    assert_eq!(code, 0, "{err}");
    let bad = [
        ("loose", good.replace("acct.key", "loose.key"), 31, "wireguard.private_key_file", "lets others read the key"),
        ("missing", good.replace("acct.key", "none.key"), 31, "wireguard.private_key_file", "No such file"),
        ("listen", good.replace("203.0.113.10:51820", "203.0.113.99:51820"), 30, "wireguard.listen", "not one of public.ips"),
        ("overlap", good.replace("192.168.50.0/24", "10.1.0.0/16"), 38, "wireguard.peer[0].allowed_ips[0]", "overlaps network \"web\""),
        ("net", good.replace("networks = [\"web\"]", "networks = [\"nope\"]"), 39, "wireguard.peer[0].networks[0]", "no [[network]] is named"),
        ("key", good.replace("xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=", "short"), 36, "wireguard.peer[0].public_key", "not"),
        ("own", good.replace("xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=", "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw="), 36, "wireguard.peer[0].public_key", "the router's own public key"),
        ("name", good.replace("name = \"branch\"", "name = \"db\""), 35, "wireguard.peer[0].name", "also a network's name"),
        ("mtu", good.replace("address = \"10.250.0.1/24\"", "address = \"10.250.0.1/24\"\nmtu = 65535"), 33, "wireguard.mtu", "leave 60 bytes"),
        ("address", good.replace("10.250.0.1/24", "10.1.1.5/24"), 32, "wireguard.address", "overlaps network"),
        ("unknown", good.replace("persistent_keepalive = 25", "keepalive = 25"), 40, "wireguard.peer[0].keepalive", "unknown field"),
    ];
    for (name, text, line, key, phrase) in bad {
        let (code, err) = checkin(&format!("{name}.toml"), &text);
        assert_eq!(code, 1, "{name}: {err}");
        let want = format!("{name}.toml:{line}: {key}:");
        assert!(err.contains(&want) && err.contains(phrase), "{name}: expected {want:?} and {phrase:?} in: {err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bgp_sections_are_checked() {
    let dir = std::env::temp_dir().join(format!("vrouter-check-{}-bgp", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = BASE.replace("vlan = 101\n", "vni = 5001\nroute_targets = [\"65000:5001\", \"4200000001:7\"]\n")
        + "\n[vxlan]\nlocal = \"192.0.2.10\"\n\n[bgp]\nasn = 65000\nmax_routes = 5000\n\n[[bgp.neighbor]]\naddress = \"192.0.2.1\"\nremote_as = 65000\nhold_secs = 9\nkeepalive_secs = 3\npassword = \"s3cret\"\n";
    let checkin = |name: &str, text: &str| check_in(&dir, name, text);
    let (code, err) = checkin("good.toml", &good);
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("no [[vxlan.peer]]"), "peers come from BGP: no warning expected: {err}");
    // (name, from, to, the key named, a phrase); the line is the one `to` lands on.
    let bad: [(&str, &str, &str, &str, &str); 10] = [
        ("asn", "asn = 65000", "asn = 23456", "bgp.asn", "not a usable AS number"),
        ("rt", "\"4200000001:7\"", "\"4200000001:70000\"", "network[0].route_targets[1]", "below 65536"),
        ("rt2", "\"65000:5001\"", "\"65000-5001\"", "network[0].route_targets[0]", "not a route target"),
        ("self", "address = \"192.0.2.1\"", "address = \"192.0.2.10\"", "bgp.neighbor[0].address", "the local VTEP address"),
        ("hold", "hold_secs = 9", "hold_secs = 2", "bgp.neighbor[0].hold_secs", "at least 3 seconds"),
        ("ka", "keepalive_secs = 3", "keepalive_secs = 30", "bgp.neighbor[0].keepalive_secs", "at most hold_secs"),
        ("ras", "remote_as = 65000", "remote_as = 0", "bgp.neighbor[0].remote_as", "not a usable AS number"),
        ("max", "max_routes = 5000", "max_routes = 0", "bgp.max_routes", "at least 1"),
        ("pw", "password = \"s3cret\"", "password = \"\"", "bgp.neighbor[0].password", "TCP MD5 key"),
        ("unknown", "hold_secs = 9", "holdtime = 9", "bgp.neighbor[0].holdtime", "unknown field"),
    ];
    for (name, from, to, key, phrase) in bad {
        assert!(good.contains(from), "{name}");
        let text = good.replacen(from, to, 1);
        let line = text[..text.find(to).unwrap()].matches('\n').count() + 1;
        let (code, err) = checkin(&format!("{name}.toml"), &text);
        assert_eq!(code, 1, "{name}: {err}");
        let want = format!("{name}.toml:{line}: {key}:");
        assert!(err.contains(&want) && err.contains(phrase), "{name}: expected {want:?} and {phrase:?} in: {err}");
    }
    // [bgp] without [vxlan]: EVPN needs a VTEP.
    let text = good.replace("[vxlan]\nlocal = \"192.0.2.10\"\n", "");
    let (code, err) = checkin("novxlan.toml", &text);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("bgp") && err.contains("needs a [vxlan] section"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
