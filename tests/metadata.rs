//! What cloud-init asks the virtual router, asked by cloud-init's own datasource code (Debian's
//! cloud-init package, run with /usr/bin/python3 in a guest namespace) through the CloudStack
//! path on the gateway and through 169.254.169.254, by curl and wget too; the password server
//! hands a password out once; a guest using another guest's address gets nothing of the
//! other's; the outside gets no answer on 80 or 8080; bad requests and a connection flood are
//! refused and counted while the guests' own requests are still answered.

mod common;
use common::*;
use std::time::Duration;

const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGx0ZXN0a2V5 test@vrouter";

fn config(lab: &Lab) -> String {
    std::fs::write(lab.path("web1.userdata"), "#cloud-config\nhostname: web1\nruncmd: [echo hello]\n").unwrap();
    [
        cfg::router(&lab.id),
        cfg::l3_network("web", "10.1.1.0/24", "10.1.1.1", "dhcp_range = [\"10.1.1.100\", \"10.1.1.199\"]\n"),
        cfg::port(
            "w1",
            "web",
            "tap",
            &lab.name("w1"),
            "52:54:00:73:01:11",
            &format!("ip = \"10.1.1.11\"\nhostname = \"web1\"\ninstance_id = \"i-0001\"\npublic_keys = [\"{KEY}\"]\nuser_data_file = \"web1.userdata\"\n[port.metadata]\nservice-offering = \"small\"\navailability-zone = \"zone-a\"\n"),
        ),
        // A guest whose address comes from DHCP, and one without port security.
        cfg::port("w2", "web", "tap", &lab.name("w2"), "52:54:00:73:01:12", "hostname = \"web2\"\nuser_data = \"#cloud-config\\nhostname: web2\\n\"\n"),
        cfg::port("w3", "web", "tap", &lab.name("w3"), "52:54:00:73:01:13", "ip = \"10.1.1.13\"\nport_security = false\n"),
        "[public]\nkind = \"tap\"\n".to_string() + &format!("ifname = \"{}\"\nips = [\"203.0.113.10/24\", \"203.0.113.11/24\"]\ngateway = \"203.0.113.1\"\nsource_nat_ip = \"203.0.113.10\"\n", lab.name("pub")),
        "[[static_nat]]\npublic_ip = \"203.0.113.11\"\nprivate_ip = \"10.1.1.11\"\n".to_string(),
    ]
    .concat()
}

/// cloud-init's EC2 helpers (what its CloudStack and EC2 datasources call) against `base`.
const CLOUD_INIT: &str = r#"
import json, sys
from cloudinit.sources.helpers import ec2
base = sys.argv[1]
md = ec2.get_instance_metadata("latest", base, timeout=3, retries=1)
ud = ec2.get_instance_userdata("latest", base, timeout=3, retries=1)
print(json.dumps({"md": md, "ud": ud.decode() if isinstance(ud, bytes) else ud}))
"#;

const PASSWORD: &str = r#"
import sys
from cloudinit.sources.DataSourceCloudStack import CloudStackPasswordServerClient
print(CloudStackPasswordServerClient(sys.argv[1]).get_password())
"#;

fn cloud_init(lab: &Lab, ns: &str, base: &str) -> serde_json::Value {
    let o = lab.exec(ns, &["/usr/bin/python3", "-c", CLOUD_INIT, base]);
    assert!(o.status.success(), "cloud-init helpers: {}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn curl(lab: &Lab, ns: &str, args: &[&str]) -> (bool, String) {
    let mut a = vec!["curl", "-sS", "--max-time", "3"];
    a.extend_from_slice(args);
    let o = lab.exec(ns, &a);
    (o.status.success(), String::from_utf8_lossy(&o.stdout).into_owned())
}

#[test]
fn cloud_init_reads_its_own_data_and_nobody_elses() {
    let mut lab = Lab::new("md");
    lab.vrouter(&config(&lab));
    let w1 = lab.guest("n1", &lab.name("w1"), "10.1.1.11/24");
    ok(&["ip", "-n", &w1, "route", "add", "default", "via", "10.1.1.1"]);
    let w2 = lab.bare_guest("n2", "w2");
    let a2 = udhcpc(&lab, &w2, &lab.name("w2"), &[]).get("ip").cloned().unwrap_or_default();
    assert!(a2.starts_with("10.1.1.1"), "{a2}");
    let w3 = lab.guest("n3", &lab.name("w3"), "10.1.1.13/24");
    ok(&["ip", "-n", &w3, "route", "add", "default", "via", "10.1.1.1"]);

    // cloud-init through the CloudStack path (the DHCP server's address) and 169.254.169.254.
    for base in ["http://10.1.1.1", "http://169.254.169.254"] {
        let v = cloud_init(&lab, &w1, base);
        let md = &v["md"];
        assert_eq!(md["instance-id"], "i-0001", "{base}: {v:#}");
        assert_eq!(md["local-hostname"], "web1");
        assert_eq!(md["local-ipv4"], "10.1.1.11");
        assert_eq!(md["public-ipv4"], "203.0.113.11", "the static NAT address");
        assert_eq!(md["service-offering"], "small");
        assert_eq!(md["availability-zone"], "zone-a");
        assert_eq!(md["public-keys"], KEY);
        assert_eq!(v["ud"], "#cloud-config\nhostname: web1\nruncmd: [echo hello]\n");
    }
    // The DHCP guest gets its own: its lease address and inline user data.
    let v = cloud_init(&lab, &w2, "http://10.1.1.1");
    assert_eq!((v["md"]["local-ipv4"].as_str(), v["md"]["local-hostname"].as_str(), v["md"]["instance-id"].as_str()), (Some(a2.as_str()), Some("web2"), Some("w2")), "{v:#}");
    assert_eq!(v["md"]["public-ipv4"], "203.0.113.10", "the source NAT address");
    assert_eq!(v["ud"], "#cloud-config\nhostname: web2\n");

    // curl and wget get the same; OpenStack's JSON too; HEAD, 404 and 405.
    assert_eq!(curl(&lab, &w1, &["http://169.254.169.254/latest/meta-data/instance-id"]), (true, "i-0001".into()));
    let o = lab.exec(&w1, &["wget", "-q", "-O", "-", "http://10.1.1.1/latest/meta-data/local-hostname"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "web1");
    let (_, j) = curl(&lab, &w1, &["http://169.254.169.254/openstack/latest/meta_data.json"]);
    let j: serde_json::Value = serde_json::from_str(&j).unwrap();
    assert_eq!((j["uuid"].as_str(), j["public_keys"]["key-0"].as_str()), (Some("i-0001"), Some(KEY)));
    let (_, code) = curl(&lab, &w1, &["-o", "/dev/null", "-w", "%{http_code}", "http://10.1.1.1/latest/meta-data/nope"]);
    assert_eq!(code, "404");
    let (_, code) = curl(&lab, &w1, &["-o", "/dev/null", "-w", "%{http_code}", "-X", "POST", "http://10.1.1.1/latest/user-data"]);
    assert_eq!(code, "405");
    // Keep-alive: two requests on one connection.
    let (ok1, both) = curl(&lab, &w1, &["http://10.1.1.1/latest/meta-data/vm-id", "http://10.1.1.1/latest/meta-data/local-ipv4"]);
    assert!(ok1 && both == "i-000110.1.1.11", "{both}");

    // w3 (no port security) claims w1's address: nothing of w1's, and not even an answer.
    let w3if = lab.name("w3");
    ok(&["ip", "-n", &w3, "addr", "add", "10.1.1.11/32", "dev", &w3if]);
    let (ok3, body) = curl(&lab, &w3, &["--interface", "10.1.1.11", "http://10.1.1.1/latest/meta-data/instance-id"]);
    assert!(!ok3 && !body.contains("i-0001"), "{body}");
    assert!(lab.drops("w3", "metadata_refused") > 0);
    let m = lab.show("metadata");
    assert!(m["counters"]["refused_spoofed"].as_u64().unwrap() > 0, "{m}");
    // Its own address still gets its own data.
    assert_eq!(curl(&lab, &w3, &["http://10.1.1.1/latest/meta-data/instance-id"]), (true, "w3".into()));
    // w3 tells the router, by gratuitous ARP, that w1's address is at its MAC: w1's answers
    // still go to w1 (straight out of w1's port), none to w3.
    let garp = r#"
import socket, struct, sys
ifname, mac = sys.argv[1], bytes.fromhex(sys.argv[2].replace(':', ''))
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((ifname, 0))
ip = socket.inet_aton('10.1.1.11')
arp = struct.pack('!HHBBH6s4s6s4s', 1, 0x0800, 6, 4, 2, mac, ip, b'\xff' * 6, ip)
for _ in range(3):
    s.send(b'\xff' * 6 + mac + b'\x08\x06' + arp)
"#;
    let o = lab.exec(&w3, &["python3", "-c", garp, &w3if, "52:54:00:73:01:13"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let pcap = lab.path("w3.pcap");
    let td = lab.spawn_in(&w3, &["tcpdump", "-i", &w3if, "-n", "-U", "-w", pcap.to_str().unwrap(), "tcp port 80"], &lab.path("td3.log"));
    wait_for("tcpdump", Duration::from_secs(10), || std::fs::metadata(&pcap).is_ok_and(|m| m.len() > 0));
    assert_eq!(curl(&lab, &w1, &["http://10.1.1.1/latest/meta-data/instance-id"]), (true, "i-0001".into()));
    lab.interrupt(td);
    let seen = String::from_utf8_lossy(&run(&["tcpdump", "-r", pcap.to_str().unwrap(), "-n"]).stdout).into_owned();
    assert!(!seen.contains("10.1.1.11"), "w1's metadata traffic reached w3: {seen}");

    // `show metadata` lists what each VM gets, never a password.
    let rows = m["vms"].as_array().unwrap();
    let r1 = rows.iter().find(|r| r["port"] == "w1").unwrap();
    assert_eq!((r1["ip"].as_str(), r1["user_data_bytes"].as_u64()), (Some("10.1.1.11"), Some(50)));
}

#[test]
fn the_password_server_and_the_outside() {
    let mut lab = Lab::new("pw");
    lab.vrouter(&config(&lab));
    let w1 = lab.guest("n1", &lab.name("w1"), "10.1.1.11/24");
    let out = lab.guest("no", &lab.name("pub"), "203.0.113.1/24");
    let sock = lab.path("ctl.sock");
    // Set a password: from stdin, never on the command line.
    let mut c = std::process::Command::new(bin()).args(["ctl", "-s", sock.to_str().unwrap(), "set-password", "w1"]).stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).spawn().unwrap();
    use std::io::Write;
    c.stdin.take().unwrap().write_all(b"Tr0ub4dor&3\n").unwrap();
    assert!(c.wait().unwrap().success());
    assert!(!lab.log().contains("Tr0ub4dor"), "the password reached the log");
    assert_eq!(lab.show("metadata")["vms"].as_array().unwrap().iter().find(|r| r["port"] == "w1").unwrap()["password_pending"], true);
    // cloud-init's client: the password once (it acknowledges), then none.
    let get = || String::from_utf8_lossy(&lab.exec(&w1, &["/usr/bin/python3", "-c", PASSWORD, "10.1.1.1"]).stdout).trim().to_string();
    assert_eq!(get(), "Tr0ub4dor&3");
    assert_eq!(get(), "None");
    let (_, raw) = curl(&lab, &w1, &["-H", "DomU_Request: send_my_password", "http://10.1.1.1:8080/"]);
    assert_eq!(raw, "saved_password");

    // The outside: nothing on 80 or 8080 of the public IP (no forward is configured).
    for port in ["80", "8080"] {
        for ip in ["203.0.113.10", "203.0.113.11"] {
            let (okp, body) = curl(&lab, &out, &["--max-time", "2", &format!("http://{ip}:{port}/latest/meta-data/")]);
            assert!(!okp && body.is_empty(), "{ip}:{port}: {body}");
        }
    }
    let (okp, _) = curl(&lab, &out, &["--max-time", "2", "http://169.254.169.254/latest/meta-data/"]);
    assert!(!okp);
}

#[test]
fn bad_requests_and_a_flood_are_refused_and_counted() {
    let mut lab = Lab::new("mf");
    lab.vrouter(&config(&lab));
    let w1 = lab.guest("n1", &lab.name("w1"), "10.1.1.11/24");
    // Oversized and malformed heads: 431 and 400, counted.
    let script = r#"
import socket, sys
def ask(data):
    s = socket.create_connection(("10.1.1.1", 80), timeout=3)
    s.sendall(data)
    out = b""
    try:
        while True:
            b = s.recv(4096)
            if not b:
                break
            out += b
    except socket.timeout:
        pass
    s.close()
    return out.split(b"\r\n")[0].decode()
print(ask(b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n"))
print(ask(b"BREW ME\r\n\r\n"))
# A flood: many connections held open without a word (opened within the 5 s a connection may
# wait for its head, after which the service drops it).
held = []
for _ in range(12):
    try:
        held.append(socket.create_connection(("10.1.1.1", 80), timeout=0.3))
    except OSError:
        pass
print(len(held))
"#;
    let o = lab.exec(&w1, &["python3", "-c", script]);
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() == 3, "{text}{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(lines[0], "HTTP/1.1 431 Request Header Fields Too Large");
    assert_eq!(lines[1], "HTTP/1.1 400 Bad Request");
    let held: usize = lines[2].parse().unwrap();
    assert!(held <= 4, "one address holds at most its share: {held}");
    // A held-up guest's flood did not take the service from the others.
    let w2 = lab.bare_guest("n2", "w2");
    udhcpc(&lab, &w2, &lab.name("w2"), &[]);
    assert_eq!(curl(&lab, &w2, &["http://10.1.1.1/latest/meta-data/instance-id"]), (true, "w2".into()));
    let m = lab.show("metadata")["counters"].clone();
    assert!(m["bad_requests"].as_u64().unwrap() >= 2 && m["refused_busy"].as_u64().unwrap() >= 1, "{m}");
    wait_for("the service is back for w1", Duration::from_secs(15), || curl(&lab, &w1, &["http://10.1.1.1/latest/meta-data/instance-id"]) == (true, "i-0001".into()));
}
