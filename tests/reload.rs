//! Live reconfiguration end to end: `ctl apply` (also from stdin), `ctl reload` and SIGHUP on a
//! running account with traffic, in real namespaces. What a change does not name keeps working
//! (an iperf3 transfer through a port forward, a TCP session between two guests, learned MACs,
//! leases); what it removes ends (`reload_revoked`); an invalid file changes nothing; an applied
//! config survives kill -9.

mod common;
use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

const PUBLIC_GW: &str = "203.0.113.1";
const SNAT_IP: &str = "203.0.113.10";
const LB_IP: &str = "203.0.113.11";

/// What a config of the test account holds; each test changes some of it and applies it.
#[derive(Clone)]
struct Account {
    /// A network `first` (10.1.5.0/24) written before all others.
    first: bool,
    /// Port a3 (a DHCP reservation, 10.1.1.13) exists.
    a3: bool,
    /// Forward SNAT_IP:5201 -> a1:5201 (the iperf3 transfer's).
    fwd_iperf: bool,
    /// Forward SNAT_IP:8080 -> b1:80.
    fwd_extra: bool,
    /// Load balancer LB_IP:80 backends (a1:80 with this weight, b1:80).
    lb_a1: bool,
    a1_weight: u32,
    lb_b1: bool,
    /// Security group of port a2: ingress tcp 22 and 80 (tight: 22 only).
    sg_tight: bool,
    /// VXLAN peers.
    peers: Vec<&'static str>,
    /// DNS upstream port.
    dns_port: u16,
}

impl Account {
    fn base() -> Self {
        Account { first: false, a3: false, fwd_iperf: true, fwd_extra: false, lb_a1: true, a1_weight: 1, lb_b1: true, sg_tight: false, peers: vec!["127.0.0.3"], dns_port: 5353 }
    }

    fn text(&self, lab: &Lab) -> String {
        let mut s = cfg::router(&lab.id);
        if self.first {
            s += &cfg::l3_network("first", "10.1.5.0/24", "10.1.5.1", "dhcp_range = [\"10.1.5.100\", \"10.1.5.150\"]");
        }
        s += &cfg::l3_network("web", "10.1.1.0/24", "10.1.1.1", "dhcp_range = [\"10.1.1.100\", \"10.1.1.150\"]\ndomain = \"web.test\"");
        s += &cfg::l3_network("db", "10.1.2.0/24", "10.1.2.1", "");
        s += &cfg::l3_network("ovl", "10.1.9.0/24", "10.1.9.1", "vni = 5009\nmtu = 1400");
        s += &cfg::port("a1", "web", "tap", &lab.name("a1"), "52:54:00:20:01:11", "ip = \"10.1.1.11\"\nhostname = \"a1\"");
        s += &cfg::port("a2", "web", "tap", &lab.name("a2"), "52:54:00:20:01:12", "ip = \"10.1.1.12\"\nsecurity_groups = [\"locked\"]");
        // b1 without port security: its MAC is learned, not pinned.
        s += &cfg::port("b1", "db", "tap", &lab.name("b1"), "52:54:00:20:02:11", "ip = \"10.1.2.11\"\nport_security = false");
        s += &cfg::port("d1", "web", "tap", &lab.name("d1"), "52:54:00:20:01:21", "");
        if self.a3 {
            s += &cfg::port("a3", "web", "tap", &lab.name("a3"), "52:54:00:20:01:13", "ip = \"10.1.1.13\"\nhostname = \"a3\"");
        }
        s += &format!(
            "[public]\nkind = \"tap\"\nifname = \"{}\"\nips = [\"{SNAT_IP}/24\", \"{LB_IP}/24\"]\ngateway = \"{PUBLIC_GW}\"\nsource_nat_ip = \"{SNAT_IP}\"\n",
            lab.name("pb")
        );
        if self.fwd_iperf {
            s += &format!("[[port_forward]]\npublic_ip = \"{SNAT_IP}\"\nprotocol = \"tcp\"\npublic_port = \"5201\"\nprivate_ip = \"10.1.1.11\"\nprivate_port = \"5201\"\n");
        }
        if self.fwd_extra {
            s += &format!("[[port_forward]]\npublic_ip = \"{SNAT_IP}\"\nprotocol = \"tcp\"\npublic_port = \"8080\"\nprivate_ip = \"10.1.2.11\"\nprivate_port = \"80\"\n");
        }
        let mut backends = Vec::new();
        if self.lb_a1 {
            backends.push(format!("{{ ip = \"10.1.1.11\", port = 80, weight = {} }}", self.a1_weight));
        }
        if self.lb_b1 {
            backends.push("{ ip = \"10.1.2.11\", port = 80 }".to_string());
        }
        s += &format!("[[load_balancer]]\nname = \"web\"\npublic_ip = \"{LB_IP}\"\nprotocol = \"tcp\"\nport = 80\nalgorithm = \"leastconn\"\nbackends = [{}]\n", backends.join(", "));
        s += "[[security_group]]\nname = \"locked\"\nrules = [\n  { direction = \"ingress\", protocol = \"tcp\", ports = \"22\", cidr = \"0.0.0.0/0\" },\n";
        if !self.sg_tight {
            s += "  { direction = \"ingress\", protocol = \"tcp\", ports = \"80\", cidr = \"0.0.0.0/0\" },\n";
        }
        s += "]\n";
        // One port per lab: the tests of this file run at once, in one process.
        let port = 20000 + lab.id.bytes().fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(b as u32)) % 40000;
        s += &format!("[vxlan]\nlocal = \"127.0.0.1\"\nport = {port}\n");
        for p in &self.peers {
            s += &format!("[[vxlan.peer]]\nremote = \"{p}\"\n");
        }
        s += &format!("[dns]\nupstreams = [\"127.0.0.1:{}\"]\n", self.dns_port);
        s
    }
}

/// Writes `a`'s config for `vrouter ctl apply -f` and applies it; the reply.
fn apply(lab: &Lab, a: &Account) -> Value {
    let f = lab.path("next.toml");
    std::fs::write(&f, fill(lab, &a.text(lab))).unwrap();
    let sock = lab.path("ctl.sock");
    let out = ok(&[bin(), "ctl", "-s", sock.to_str().unwrap(), "apply", "-f", f.to_str().unwrap(), "--json"]);
    serde_json::from_str(&out).unwrap()
}

/// The config text as the lab writes it (socket and state paths filled in).
fn fill(lab: &Lab, text: &str) -> String {
    text.replace("@SOCK@", lab.path("ctl.sock").to_str().unwrap()).replace("@STATE@", lab.path("state").to_str().unwrap())
}

fn ctl(lab: &Lab, args: &[&str]) -> std::process::Output {
    let sock = lab.path("ctl.sock");
    let mut a = vec![bin(), "ctl", "-s", sock.to_str().unwrap()];
    a.extend_from_slice(args);
    run(&a)
}

/// Router counters from `show stats`.
fn router_stat(lab: &Lab, key: &str) -> u64 {
    lab.show("stats")["router"][key].as_u64().unwrap_or(0)
}

/// A guest on port `port` with `ip`/24 and a default route via `gw`.
fn guest(lab: &mut Lab, port: &str, ip: &str, gw: &str) -> String {
    let ifname = lab.name(port);
    let ns = lab.guest(&format!("n{port}"), &ifname, &format!("{ip}/24"));
    ok(&["ip", "-n", &ns, "route", "add", "default", "via", gw]);
    ns
}

fn outside(lab: &mut Lab) -> String {
    let pb = lab.name("pb");
    lab.guest("out", &pb, &format!("{PUBLIC_GW}/24"))
}

/// A TCP echo server on `port` (python3): every line comes back.
const ECHO_SERVER: &str = r#"
import socket, sys, threading
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('0.0.0.0', int(sys.argv[1])))
s.listen(64)
def serve(c):
    f = c.makefile('rwb', buffering=0)
    for line in f:
        f.write(line)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

/// Keeps `n` connections to DST:PORT, each sending a line every 0.2 s for SECS seconds and
/// expecting it back within 2 s; prints per connection "ok" or "broken", and
/// "peer <addr>" first (who answered, from the server's side: not known here, so the local
/// port). Exit 0 always; the test reads the lines.
const ECHO_CLIENTS: &str = r#"
import socket, sys, time, threading
dst, port, n, secs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
res = {}
def run(i):
    try:
        c = socket.create_connection((dst, port), timeout=3)
        c.settimeout(2)
        f = c.makefile('rwb', buffering=0)
        end = time.time() + secs
        k = 0
        while time.time() < end:
            msg = f'{i} {k}\n'.encode()
            f.write(msg)
            if f.readline() != msg:
                raise OSError('bad echo')
            k += 1
            time.sleep(0.2)
        res[i] = f'ok {k}'
    except OSError as e:
        res[i] = f'broken {e}'
ts = [threading.Thread(target=run, args=(i,)) for i in range(n)]
for t in ts: t.start()
for t in ts: t.join()
for i in range(n):
    print(i, res.get(i, 'missing'), flush=True)
"#;

fn write_script(lab: &Lab, name: &str, text: &str) -> PathBuf {
    let p = lab.path(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// Lines "i ok k" / "i broken why" of an ECHO_CLIENTS run.
fn echo_results(p: &Path) -> Vec<(bool, String)> {
    std::fs::read_to_string(p).unwrap_or_default().lines().map(|l| (l.split_whitespace().nth(1) == Some("ok"), l.to_string())).collect()
}

fn wait_exit(lab: &Lab, out: &Path, lines: usize, secs: u64) {
    let _ = lab;
    wait_for(&format!("{} lines in {}", lines, out.display()), Duration::from_secs(secs), || {
        std::fs::read_to_string(out).unwrap_or_default().lines().count() >= lines
    });
}

/// The base account running, guests a1 and b1 and the outside in place, the scripts written.
struct Setup {
    lab: Lab,
    acct: Account,
    a1: String,
    b1: String,
    out: String,
    echo: PathBuf,
    clients: PathBuf,
}

fn setup(tag: &str) -> Setup {
    let mut lab = Lab::new(tag);
    let acct = Account::base();
    lab.vrouter(&acct.text(&lab));
    let a1 = guest(&mut lab, "a1", "10.1.1.11", "10.1.1.1");
    let b1 = guest(&mut lab, "b1", "10.1.2.11", "10.1.2.1");
    let out = outside(&mut lab);
    let echo = write_script(&lab, "echo.py", ECHO_SERVER);
    let clients = write_script(&lab, "clients.py", ECHO_CLIENTS);
    Setup { lab, acct, a1, b1, out, echo, clients }
}

#[test]
fn live_changes_keep_what_they_do_not_touch() {
    let Setup { mut lab, mut acct, a1, b1, out, echo, clients } = setup("rl");
    lab.spawn_in(&b1, &["python3", echo.to_str().unwrap(), "7000"], &lab.path("echo-b1.log"));
    lab.spawn_in(&a1, &["iperf3", "-s", "-1"], &lab.path("iperf-s.log"));
    assert!(lab.ping(&a1, "10.1.2.11", 10), "a1 reaches b1");
    // b1's MAC is learned (no port security), a1's pinned.
    let fdb_has = |lab: &Lab, mac: &str| lab.show("fdb").as_array().unwrap().iter().any(|r| r["mac"] == mac);
    assert!(fdb_has(&lab, "52:54:00:20:02:11"));

    // The transfer through the forward, and a guest-to-guest session, run across the changes.
    let iperf_out = lab.path("iperf.json");
    std::thread::sleep(Duration::from_millis(500));
    lab.spawn_in(&out, &["iperf3", "-c", SNAT_IP, "-t", "10", "-i", "0.5", "-J"], &iperf_out);
    let session = lab.path("session.txt");
    lab.spawn_in(&a1, &["python3", clients.to_str().unwrap(), "10.1.2.11", "7000", "1", "10"], &session);
    std::thread::sleep(Duration::from_secs(2));

    // 1. A new VM: port a3 with its reservation (and the tap it needs).
    acct.a3 = true;
    let r = apply(&lab, &acct);
    assert_eq!(r["changes"]["port"]["add"], 1, "{r}");
    assert_eq!(r["devices_opened"], 1, "{r}");
    assert!(r["pause_ms"].as_f64().unwrap() < 1000.0, "{r}");
    let a3 = lab.bare_guest("na3", "a3");
    let lease = udhcpc(&lab, &a3, &lab.name("a3"), &[]);
    assert_eq!(lease.get("ip").map(String::as_str), Some("10.1.1.13"), "a3's reservation: {lease:?}");
    assert!(lab.ping(&a3, "10.1.1.11", 5) && lab.ping(&a3, "10.1.2.11", 5), "the new guest reaches the others");
    // 2. Another forward; 3. a load-balancer backend (b1 was there, a1 stays); 4. a tighter
    // group on a2; 5. a VXLAN peer; 6. other DNS upstreams. One apply each.
    acct.fwd_extra = true;
    apply(&lab, &acct);
    acct.lb_b1 = false;
    apply(&lab, &acct);
    acct.lb_b1 = true;
    apply(&lab, &acct);
    acct.sg_tight = true;
    apply(&lab, &acct);
    acct.peers.push("127.0.0.2");
    let r = apply(&lab, &acct);
    assert_eq!(r["changes"]["vxlan_peer"]["add"], 1, "{r}");
    acct.dns_port = 5354;
    apply(&lab, &acct);
    let ports = lab.show("ports");
    assert!(ports.as_array().unwrap().iter().any(|p| p["name"] == "vxlan-127.0.0.2"), "{ports}");
    assert!(ports.as_array().unwrap().iter().any(|p| p["name"] == "a3"), "{ports}");

    wait_exit(&lab, &session, 1, 20);
    let res = echo_results(&session);
    assert!(res.iter().all(|(ok, _)| *ok), "the guest-to-guest session broke: {res:?}");
    wait_for("iperf3 to finish", Duration::from_secs(20), || std::fs::read_to_string(&iperf_out).unwrap_or_default().trim_end().ends_with('}'));
    let j: Value = serde_json::from_str(&std::fs::read_to_string(&iperf_out).unwrap()).unwrap();
    let intervals = j["intervals"].as_array().unwrap();
    let rates: Vec<f64> = intervals.iter().map(|i| i["sum"]["bits_per_second"].as_f64().unwrap_or(0.0)).collect();
    let retrans: Vec<u64> = intervals.iter().map(|i| i["sum"]["retransmits"].as_u64().unwrap_or(0)).collect();
    eprintln!("iperf3 intervals (Mbit/s): {:?}", rates.iter().map(|r| (r / 1e6) as u64).collect::<Vec<_>>());
    eprintln!("retransmits per interval: {retrans:?}");
    assert!(rates.len() >= 18, "iperf3 ran its 10 s: {} intervals", rates.len());
    assert!(rates.iter().all(|r| *r > 0.0), "an interval at zero: {rates:?}");
    let total: u64 = j["end"]["sum_sent"]["retransmits"].as_u64().unwrap_or(0);
    assert!(total < 2000, "a retransmission burst: {total} ({retrans:?})");
    // What the changes did not name is still there.
    assert!(fdb_has(&lab, "52:54:00:20:02:11"), "b1's learned MAC survived");
    let leases = lab.show("leases");
    assert!(leases.to_string().contains("10.1.1.13"), "a3's lease survived: {leases}");
    assert_eq!(router_stat(&lab, "reload_revoked"), 0, "nothing was revoked");
    // The new forward works.
    lab.spawn_in(&b1, &["python3", echo.to_str().unwrap(), "80"], &lab.path("echo-b1-80.log"));
    std::thread::sleep(Duration::from_millis(500));
    let o = lab.exec(&out, &["python3", clients.to_str().unwrap(), SNAT_IP, "8080", "1", "0.5"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("ok"), "the added forward: {}", String::from_utf8_lossy(&o.stdout));

    // Removing the forward a transfer uses ends that transfer's flow, and nothing else.
    lab.spawn_in(&a1, &["python3", echo.to_str().unwrap(), "5201"], &lab.path("echo-a1.log"));
    std::thread::sleep(Duration::from_millis(500));
    let fwd_run = lab.path("fwd.txt");
    lab.spawn_in(&out, &["python3", clients.to_str().unwrap(), SNAT_IP, "5201", "2", "6"], &fwd_run);
    let session2 = lab.path("session2.txt");
    lab.spawn_in(&a1, &["python3", clients.to_str().unwrap(), "10.1.2.11", "7000", "2", "6"], &session2);
    std::thread::sleep(Duration::from_secs(2));
    acct.fwd_iperf = false;
    let r = apply(&lab, &acct);
    assert_eq!(r["changes"]["port_forward"]["remove"], 1, "{r}");
    wait_exit(&lab, &fwd_run, 2, 20);
    wait_exit(&lab, &session2, 2, 20);
    let fwd = echo_results(&fwd_run);
    assert!(fwd.iter().all(|(ok, _)| !ok), "connections through the removed forward ended: {fwd:?}");
    let s2 = echo_results(&session2);
    assert!(s2.iter().all(|(ok, _)| *ok), "other flows went on: {s2:?}");
    assert!(router_stat(&lab, "reload_revoked") >= 2, "counted: {}", lab.show("stats")["router"]);
    assert!(lab.drops("public", "reload_revoked") + lab.drops("a1", "reload_revoked") >= 1);
    // An invalid file: refused with file:line, the old config serving.
    let bad = lab.path("bad.toml");
    std::fs::write(&bad, fill(&lab, &acct.text(&lab)).replace("[[load_balancer]]", "[[load_balancer]]\nbogus = 1")).unwrap();
    let o = ctl(&lab, &["apply", "-f", bad.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "invalid config accepted");
    assert!(err.contains("bad.toml:") && err.contains("bogus") && err.contains("running config keeps serving"), "{err}");
    assert!(lab.ping(&a1, "10.1.2.11", 5), "still forwarding after the refusal");
    let o = lab.exec(&out, &["python3", clients.to_str().unwrap(), SNAT_IP, "8080", "1", "0.5"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("ok"), "the forward still works after the refusal");
    // Valid but not realisable (a netdev port whose interface does not exist), with a new tap
    // port beside it: refused whole, the tap made for it deleted again.
    let unreal = fill(&lab, &acct.text(&lab))
        + &cfg::port("x1", "web", "tap", &lab.name("x1"), "52:54:00:20:01:31", "")
        + &cfg::port("x2", "web", "netdev", &lab.name("x2"), "52:54:00:20:01:32", "");
    let f = lab.path("unreal.toml");
    std::fs::write(&f, unreal).unwrap();
    let o = ctl(&lab, &["apply", "-f", f.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "an unrealisable config was accepted");
    assert!(err.contains("nothing applied") && err.contains("x2"), "{err}");
    assert!(!run(&["ip", "link", "show", &lab.name("x1")]).status.success(), "the tap made for the refused change is gone");
    assert!(!lab.show("ports").to_string().contains("\"x1\""));
    assert!(lab.ping(&a3, "10.1.1.11", 5), "a3 kept its port");
    // a3 gets a new MAC: its NIC (in its namespace) follows through the tap's fd, and its
    // reservation and port security follow the MAC.
    let f = lab.path("newmac.toml");
    std::fs::write(&f, fill(&lab, &acct.text(&lab)).replace("52:54:00:20:01:13", "52:54:00:20:01:77")).unwrap();
    let o = ctl(&lab, &["apply", "-f", f.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let link = String::from_utf8_lossy(&lab.exec(&a3, &["ip", "link", "show", &lab.name("a3")]).stdout).to_string();
    assert!(link.contains("52:54:00:20:01:77"), "{link}");
    let lease = udhcpc(&lab, &a3, &lab.name("a3"), &[]);
    assert_eq!(lease.get("ip").map(String::as_str), Some("10.1.1.13"), "{lease:?}");
    assert!(lab.ping(&a3, "10.1.2.11", 5), "a3 with its new MAC reaches b1");
}

#[test]
fn backend_removal_ends_only_its_connections() {
    let Setup { mut lab, mut acct, a1, b1, out, echo, clients } = setup("rb");
    lab.spawn_in(&a1, &["python3", echo.to_str().unwrap(), "80"], &lab.path("echo-a1.log"));
    lab.spawn_in(&b1, &["python3", echo.to_str().unwrap(), "80"], &lab.path("echo-b1.log"));
    std::thread::sleep(Duration::from_millis(700));
    let res = lab.path("lb.txt");
    lab.spawn_in(&out, &["python3", clients.to_str().unwrap(), LB_IP, "80", "6", "6"], &res);
    wait_for("connections on both backends", Duration::from_secs(10), || {
        let lb = lab.show("lb");
        let b = &lb[0]["backends"];
        b[0]["active"].as_u64().unwrap_or(0) >= 3 && b[1]["active"].as_u64().unwrap_or(0) >= 3
    });
    // a1 gets a new weight and a second backend appears: a1's connections stay.
    acct.a1_weight = 3;
    let r = apply(&lab, &acct);
    assert_eq!(r["changes"]["backend"]["change"], 1, "{r}");
    acct.lb_b1 = false;
    let r = apply(&lab, &acct);
    assert_eq!(r["changes"]["backend"]["remove"], 1, "{r}");
    wait_exit(&lab, &res, 6, 20);
    let v = echo_results(&res);
    let (ok_n, broken) = (v.iter().filter(|(o, _)| *o).count(), v.iter().filter(|(o, _)| !*o).count());
    assert_eq!((ok_n, broken), (3, 3), "b1's three connections ended, a1's three went on: {v:?}");
    let lb = lab.show("lb");
    assert_eq!(lb[0]["backends"].as_array().unwrap().len(), 1, "{lb}");
    assert!(router_stat(&lab, "reload_revoked") >= 3);
}

#[test]
fn applied_config_survives_kill_and_leases_survive_renumbering() {
    let mut lab = Lab::new("rk");
    let mut acct = Account::base();
    let cfgp = lab.path("vrouter.toml");
    lab.vrouter(&acct.text(&lab));
    // A DHCP guest on web (d1: no fixed address).
    let d1 = lab.bare_guest("nd1", "d1");
    let lease = udhcpc(&lab, &d1, &lab.name("d1"), &[]);
    let ip = lease.get("ip").cloned().expect("a lease");
    // A network inserted before all others, applied from stdin.
    acct.first = true;
    acct.fwd_extra = true;
    let text = fill(&lab, &acct.text(&lab));
    let sock = lab.path("ctl.sock");
    let mut child = std::process::Command::new(bin())
        .args(["ctl", "-s", sock.to_str().unwrap(), "apply", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), text.as_bytes()).unwrap();
    drop(child.stdin.take());
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "apply from stdin");
    let summary = String::from_utf8_lossy(&o.stdout);
    assert!(summary.contains("network add 1") && summary.contains("written to"), "{summary}");
    assert_eq!(std::fs::read_to_string(&cfgp).unwrap(), text, "the config file is what was applied");
    let leases = lab.show("leases");
    assert!(leases.to_string().contains(&ip), "the lease survived the renumbering: {leases}");
    let again = udhcpc(&lab, &d1, &lab.name("d1"), &[]);
    assert_eq!(again.get("ip"), Some(&ip), "the guest renews the same address");
    // kill -9 and start again from the file: what was applied comes back, leases too.
    signal(lab.vrouter_pid(), "KILL");
    wait_for("vrouter to die", Duration::from_secs(5), || !lab.vrouter_alive());
    let _ = std::fs::remove_file(&sock);
    let text_now = std::fs::read_to_string(&cfgp).unwrap();
    lab.vrouter(&text_now);
    let nets = lab.show("stats")["networks"].clone();
    assert!(nets.to_string().contains("\"first\""), "{nets}");
    let leases = lab.show("leases");
    assert!(leases.to_string().contains(&ip), "the lease survived the restart: {leases}");
    // SIGHUP does what `ctl reload` does: the file changed on disk is applied.
    acct.fwd_extra = false;
    std::fs::write(&cfgp, fill(&lab, &acct.text(&lab))).unwrap();
    signal(lab.vrouter_pid(), "HUP");
    wait_for("SIGHUP reload", Duration::from_secs(10), || lab.log().contains("SIGHUP: config reloaded"));
    assert!(lab.log().contains("port_forward"), "the reload named what changed");
    // A tap port's new MAC and the VXLAN sockets' new TTL: the tap and the sockets stay (a tap
    // cannot be attached twice, the VXLAN port cannot be bound twice).
    let text = fill(&lab, &acct.text(&lab)).replace("52:54:00:20:01:21", "52:54:00:20:01:99").replace("[vxlan]\n", "[vxlan]\nttl = 9\n");
    let f = lab.path("mac.toml");
    std::fs::write(&f, &text).unwrap();
    let o = ctl(&lab, &["apply", "-f", f.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!((r["devices_opened"].as_u64(), r["changes"]["port"]["change"].as_u64()), (Some(0), Some(1)), "{r}");
    // The guest's NIC (the tap's kernel side; after the restart above vrouter made it anew, so
    // it is in this namespace, unused) has the new MAC.
    let link = String::from_utf8_lossy(&run(&["ip", "link", "show", &lab.name("d1")]).stdout).to_string();
    assert!(link.contains("52:54:00:20:01:99"), "{link}");
    std::fs::write(&cfgp, fill(&lab, &acct.text(&lab))).unwrap();
    // `ctl reload` with nothing changed: applied, no changes.
    assert!(ctl(&lab, &["reload"]).status.success());
    let o = ctl(&lab, &["reload"]);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("no changes"), "{}", String::from_utf8_lossy(&o.stdout));
}
