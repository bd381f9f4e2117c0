//! BGP EVPN with FRR: vrouter hosts join a VXLAN fabric as VTEPs that learn each other, and a
//! Linux kernel VTEP, through an FRR route reflector; no `[[vxlan.peer]]` anywhere.
//!
//! One underlay (a Linux bridge in its own namespace, 192.0.2.0/24) joins:
//! - rr (192.0.2.1): FRR bgpd as route reflector, `bgp listen range` (hosts join unannounced);
//! - host A (192.0.2.10): vrouter A, network web (10.1.1.0/24, vni 5001, gateway 10.1.1.1);
//! - host B (192.0.2.11): vrouter B, web without a gateway;
//! - host K (192.0.2.12): the kernel: a VXLAN device (`nolearning`) in a bridge with a guest,
//!   FRR zebra + bgpd with `advertise-all-vni`;
//! - host C (192.0.2.13): a third vrouter added later, a config on that host only.
//!
//! Covers: sessions through the reflector; type-2 routes for vrouter guests at FRR and in
//! the kernel's VXLAN FDB with the right VTEP; the kernel guest's MAC in vrouter's FDB from
//! BGP before any traffic; ping and iperf3 across all three; a host added; MAC mobility (a
//! guest moving from A to C); a clean stop withdrawing at once; kill -9 withdrawing within the
//! hold time; a neighbour sending garbage gets a NOTIFICATION and a counted error.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const RR: &str = "192.0.2.1";
const A: &str = "192.0.2.10";
const B: &str = "192.0.2.11";
const K: &str = "192.0.2.12";
const C: &str = "192.0.2.13";
const ROGUE: &str = "192.0.2.66";

/// FRR daemons in namespace `ns`, their sockets and pid files in a directory of the lab's.
struct Frr {
    dir: PathBuf,
}

fn frr(lab: &mut Lab, ns: &str, tag: &str, conf: &str, zebra: bool) -> Frr {
    let dir = lab.path(&format!("frr-{tag}"));
    std::fs::create_dir_all(&dir).unwrap();
    let conf_path = dir.join("frr.conf");
    std::fs::write(&conf_path, conf).unwrap();
    ok(&["chown", "-R", "frr:frr", dir.to_str().unwrap()]);
    ok(&["chmod", "755", lab.dir.to_str().unwrap()]);
    let d = dir.to_str().unwrap().to_string();
    let (z, c) = (format!("{d}/zserv.api"), conf_path.to_str().unwrap().to_string());
    let common = |daemon: &str| -> Vec<String> {
        ["-f", &c, "-i", &format!("{d}/{daemon}.pid"), "-z", &z, "--vty_socket", &d, "-P", "0", "-u", "frr", "-g", "frr", "--log", &format!("file:{d}/{daemon}.log")]
            .iter()
            .map(|s| s.to_string())
            .collect()
    };
    if zebra {
        let mut a = vec!["/usr/lib/frr/zebra".to_string()];
        a.extend(common("zebra"));
        let a: Vec<&str> = a.iter().map(|s| s.as_str()).collect();
        lab.spawn_in(ns, &a, &dir.join("zebra.out"));
        wait_for("zebra's socket", Duration::from_secs(10), || Path::new(&z).exists());
    }
    let mut a = vec!["/usr/lib/frr/bgpd".to_string()];
    a.extend(common("bgpd"));
    if !zebra {
        // A reflector needs no kernel routes.
        a.push("-Z".into());
    }
    let a: Vec<&str> = a.iter().map(|s| s.as_str()).collect();
    lab.spawn_in(ns, &a, &dir.join("bgpd.out"));
    let f = Frr { dir };
    wait_for(&format!("bgpd {tag}"), Duration::from_secs(10), || f.vtysh(ns, "show bgp summary").is_some());
    f
}

impl Frr {
    fn vtysh(&self, ns: &str, cmd: &str) -> Option<String> {
        let o = run(&["ip", "netns", "exec", ns, "vtysh", "--vty_socket", self.dir.to_str().unwrap(), "-c", cmd]);
        o.status.success().then(|| String::from_utf8_lossy(&o.stdout).into_owned())
    }

    fn json(&self, ns: &str, cmd: &str) -> serde_json::Value {
        self.vtysh(ns, cmd).and_then(|s| serde_json::from_str(&s).ok()).unwrap_or_default()
    }
}

/// The MACs (lower case) with type-2 routes in FRR's EVPN table, with their next hops.
fn frr_macs(f: &Frr, ns: &str) -> Vec<(String, String)> {
    let j = f.json(ns, "show bgp l2vpn evpn route type macip json");
    let mut v = Vec::new();
    if let Some(rds) = j.as_object() {
        for (_, rd) in rds {
            let Some(prefixes) = rd.as_object() else { continue };
            for (_, p) in prefixes {
                for path in p["paths"].as_array().into_iter().flatten() {
                    // FRR nests paths one level deeper in some versions.
                    for leg in path.as_array().cloned().unwrap_or_else(|| vec![path.clone()]) {
                        if let Some(mac) = leg["mac"].as_str().or(leg["macAddress"].as_str()) {
                            let nh = leg["nexthops"][0]["ip"].as_str().unwrap_or("").to_string();
                            v.push((mac.to_lowercase(), nh));
                        }
                    }
                }
            }
        }
    }
    v
}

fn kernel_fdb(lab: &Lab, ns: &str, dev: &str) -> String {
    String::from_utf8_lossy(&lab.exec(ns, &["bridge", "fdb", "show", "dev", dev]).stdout).into_owned()
}

fn bgp_state(lab: &Lab, sock: &Path) -> String {
    let s = lab.show_at(sock, "bgp");
    s["neighbors"][0]["state"].as_str().unwrap_or("").to_string()
}

fn flood_list(lab: &Lab, sock: &Path) -> Vec<String> {
    let s = lab.show_at(sock, "evpn");
    s["evpn"]["vnis"]["5001"]["flood"].as_array().map(|a| a.iter().map(|x| x.as_str().unwrap_or("").to_string()).collect()).unwrap_or_default()
}

fn fdb_row(lab: &Lab, sock: &Path, mac: &str) -> Option<serde_json::Value> {
    lab.show_at(sock, "fdb").as_array().unwrap().iter().find(|r| r["mac"] == mac).cloned()
}

fn vrouter_cfg(lab: &Lab, tag: &str, local: &str, gateway: bool, ports: &str) -> String {
    // Host C's session is signed (TCP MD5), as the reflector has it (a wrong key: no session).
    let password = if tag == "c" { "password = \"evpn-md5-key\"\n" } else { "" };
    let web = if gateway { cfg::l3_network("web", "10.1.1.0/24", "10.1.1.1", "vni = 5001") } else { format!("{}vni = 5001\n", cfg::network("web", "10.1.1.0/24", None)) };
    let metrics = if tag == "a" { "metrics_listen = \"127.0.0.1:9910\"\n" } else { "" };
    format!(
        "{}{metrics}{web}{ports}[vxlan]\nlocal = \"{local}\"\n[bgp]\nasn = 65000\n[[bgp.neighbor]]\naddress = \"{RR}\"\nremote_as = 65000\n{password}",
        cfg::router(&format!("{}{tag}", lab.id))
    )
}


const GA: &str = "52:54:00:40:01:11";
const GB: &str = "52:54:00:40:01:12";
const GK: &str = "52:54:00:40:01:14";
const GC: &str = "52:54:00:40:01:13";
const GM: &str = "52:54:00:40:01:20";

#[test]
fn vtep_hosts_learn_each_other_through_an_frr_reflector() {
    let mut lab = Lab::new("ev");
    let ul = underlay(&mut lab);
    let rr = underlay_host(&mut lab, &ul, "rr", RR);
    let ha = underlay_host(&mut lab, &ul, "ha", A);
    let hb = underlay_host(&mut lab, &ul, "hb", B);
    let hk = underlay_host(&mut lab, &ul, "hk", K);
    let hc = underlay_host(&mut lab, &ul, "hc", C);
    let hx = underlay_host(&mut lab, &ul, "hx", ROGUE);
    let hku = lab.name("hku");

    let rr_frr = frr(
        &mut lab,
        &rr,
        "rr",
        &format!(
            "frr defaults datacenter\nhostname rr\nrouter bgp 65000\n bgp router-id {RR}\n no bgp default ipv4-unicast\n bgp cluster-id {RR}\n \
             neighbor fabric peer-group\n neighbor fabric remote-as 65000\n bgp listen range 192.0.2.0/26 peer-group fabric\n \
             neighbor {C} peer-group fabric\n neighbor {C} password evpn-md5-key\n \
             address-family l2vpn evpn\n  neighbor fabric activate\n  neighbor fabric route-reflector-client\n exit-address-family\n"
        ),
        false,
    );

    // The kernel VTEP: a VXLAN device without data-plane learning, in a bridge with a guest;
    // FRR advertises its VNI and local MACs and programs what it learns into the FDB.
    let kvx = "vxlan5001";
    ok(&["ip", "-n", &hk, "link", "add", kvx, "type", "vxlan", "id", "5001", "dstport", "4789", "local", K, "nolearning", "dev", &hku]);
    ok(&["ip", "-n", &hk, "link", "add", "br5001", "type", "bridge"]);
    ok(&["ip", "-n", &hk, "link", "set", kvx, "master", "br5001", "up"]);
    ok(&["ip", "-n", &hk, "link", "set", "br5001", "up"]);
    let gk = lab.name("ngk");
    ok(&["ip", "netns", "add", &gk]);
    lab.adopt_netns(gk.clone());
    let (kv, kg) = (lab.name("kv"), lab.name("kg"));
    ok(&["ip", "-n", &hk, "link", "add", &kv, "mtu", "1450", "type", "veth", "peer", "name", &kg, "netns", &gk]);
    ok(&["ip", "-n", &hk, "link", "set", &kv, "master", "br5001", "up"]);
    ok(&["ip", "-n", &gk, "link", "set", &kg, "address", GK]);
    ok(&["ip", "-n", &gk, "link", "set", "lo", "up"]);
    ok(&["ip", "-n", &gk, "addr", "add", "10.1.1.14/24", "dev", &kg]);
    ok(&["ip", "-n", &gk, "link", "set", &kg, "mtu", "1450", "up"]);
    let _ = lab.exec(&gk, &["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
    // The orchestrator knows the guest's MAC (as Neutron does): a static entry, advertised
    // before the guest sends anything.
    ok(&["ip", "netns", "exec", &hk, "bridge", "fdb", "add", GK, "dev", &kv, "master", "static"]);
    let _k = frr(
        &mut lab,
        &hk,
        "k",
        &format!(
            "frr defaults datacenter\nhostname k\nrouter bgp 65000\n bgp router-id {K}\n no bgp default ipv4-unicast\n \
             neighbor {RR} remote-as 65000\n address-family l2vpn evpn\n  neighbor {RR} activate\n  advertise-all-vni\n exit-address-family\n"
        ),
        true,
    );

    let (n_ga, n_gb, n_gm) = (lab.name("ga"), lab.name("gb"), lab.name("gm"));
    let ca = vrouter_cfg(
        &lab,
        "a",
        A,
        true,
        &[
            cfg::port("ga", "web", "tap", &n_ga, GA, "ip = \"10.1.1.11\""),
            // The guest that will move: no port security, so its MAC is learned, not pinned.
            cfg::port("gm", "web", "tap", &n_gm, GM, "port_security = false"),
        ]
        .concat(),
    );
    let cb = vrouter_cfg(&lab, "b", B, false, &cfg::port("gb", "web", "tap", &n_gb, GB, "ip = \"10.1.1.12\""));
    let sa = lab.vrouter_at("a", Some(&ha), &ca);
    let sb = lab.vrouter_at("b", Some(&hb), &cb);
    let pid_b = lab.vrouter_pid();
    let ga = host_guest(&mut lab, &ha, &n_ga, "nga", "10.1.1.11/24", Some("10.1.1.1"));
    let gm = host_guest(&mut lab, &ha, &n_gm, "ngm", "10.1.1.20/24", Some("10.1.1.1"));
    let gb = host_guest(&mut lab, &hb, &n_gb, "ngb", "10.1.1.12/24", Some("10.1.1.1"));

    wait_for("both vrouters established", Duration::from_secs(20), || bgp_state(&lab, &sa) == "established" && bgp_state(&lab, &sb) == "established");
    // Every VTEP in every flood list, from type-3 routes alone.
    wait_for("flood lists", Duration::from_secs(15), || {
        let (fa, fb) = (flood_list(&lab, &sa), flood_list(&lab, &sb));
        fa.contains(&B.to_string()) && fa.contains(&K.to_string()) && fb.contains(&A.to_string()) && fb.contains(&K.to_string())
    });
    let ports = lab.show_at(&sa, "ports");
    assert!(ports.as_array().unwrap().iter().any(|p| p["name"] == format!("vxlan-{K}")), "a learned VTEP is a VXLAN peer port: {ports}");

    // The kernel guest's MAC arrives over BGP, before any frame crossed the fabric.
    let t = Instant::now();
    while !fdb_row(&lab, &sa, GK).is_some_and(|r| r["type"] == "evpn") {
        if t.elapsed() > Duration::from_secs(15) {
            panic!(
                "the kernel guest's MAC is not in A's FDB from BGP\nA evpn: {}\nA fdb: {}\nA bgp: {}\nreflector: {}",
                lab.show_at(&sa, "evpn"),
                lab.show_at(&sa, "fdb"),
                lab.show_at(&sa, "bgp"),
                rr_frr.vtysh(&rr, "show bgp l2vpn evpn route").unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let r = fdb_row(&lab, &sa, GK).unwrap();
    assert_eq!(r["port"], format!("vxlan-{K}"), "{r}");
    assert_eq!(r["age_secs"], serde_json::Value::Null, "an EVPN entry does not age: {r}");

    // vrouter guests' MACs are type-2 routes at the reflector, with their VTEP as next hop,
    // and in the kernel host's VXLAN FDB (programmed by FRR).
    let t = Instant::now();
    loop {
        let m = frr_macs(&rr_frr, &rr);
        if m.contains(&(GA.into(), A.into())) && m.contains(&(GB.into(), B.into())) && m.contains(&(GK.into(), K.into())) {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(15), "vrouter MACs not at the reflector: {m:?}\n{}", rr_frr.vtysh(&rr, "show bgp l2vpn evpn route type macip json").unwrap_or_default());
        std::thread::sleep(Duration::from_millis(200));
    }
    wait_for("vrouter MACs in the kernel's VXLAN FDB", Duration::from_secs(15), || {
        let f = kernel_fdb(&lab, &hk, kvx);
        f.lines().any(|l| l.starts_with(GA) && l.contains(&format!("dst {A}"))) && f.lines().any(|l| l.starts_with(GB) && l.contains(&format!("dst {B}")))
    });

    // Traffic across all three hosts.
    assert!(lab.ping(&ga, "10.1.1.12", 5), "A -> B");
    assert!(lab.ping(&gb, "10.1.1.11", 3), "B -> A");
    assert!(lab.ping(&ga, "10.1.1.14", 5), "A -> kernel");
    assert!(lab.ping(&gk, "10.1.1.12", 5), "kernel -> B");
    assert!(lab.ping(&gb, "10.1.1.1", 3), "B -> the gateway on A");
    iperf_between(&mut lab, &ga, &gb, "10.1.1.11", "b-to-a");
    iperf_between(&mut lab, &gk, &ga, "10.1.1.14", "a-to-kernel");
    // MAC+IP routes once the addresses are known (ARP).
    wait_for("MAC+IP routes", Duration::from_secs(10), || {
        let j = rr_frr.json(&rr, "show bgp l2vpn evpn route type macip json").to_string();
        j.contains("10.1.1.11") && j.contains("10.1.1.12")
    });

    // The session and the fabric in the metrics.
    let scrape = lab.exec(&ha, &["python3", "-c", "import urllib.request;print(urllib.request.urlopen('http://127.0.0.1:9910/metrics').read().decode())"]);
    let m = String::from_utf8_lossy(&scrape.stdout).into_owned();
    for want in [
        format!("vrouter_bgp_session_up{{neighbor=\"{RR}\"}} 1"),
        "vrouter_evpn_vteps{vni=\"5001\"} 2".to_string(),
        "vrouter_evpn_remote_macs{".to_string(),
        "vrouter_bgp_routes_received{".to_string(),
    ] {
        assert!(m.contains(&want), "{want} not in the metrics:\n{}", m.lines().filter(|l| l.contains("bgp") || l.contains("evpn")).collect::<Vec<_>>().join("\n"));
    }

    // A third host: a config on that host only (its session signed with TCP MD5).
    let n_gc = lab.name("gc");
    let cc = vrouter_cfg(&lab, "c", C, false, &cfg::port("gc", "web", "tap", &n_gc, GC, "ip = \"10.1.1.13\""));
    let sc = lab.vrouter_at("c", Some(&hc), &cc);
    let pid_c = lab.vrouter_pid();
    let gc = host_guest(&mut lab, &hc, &n_gc, "ngc", "10.1.1.13/24", Some("10.1.1.1"));
    wait_for("A and B learn C", Duration::from_secs(20), || flood_list(&lab, &sa).contains(&C.to_string()) && flood_list(&lab, &sb).contains(&C.to_string()));
    assert!(lab.ping(&ga, "10.1.1.13", 5), "A -> C");
    assert!(lab.ping(&gc, "10.1.1.14", 5), "C -> kernel");

    // MAC mobility: the guest gm moves from A to C (its old NIC goes quiet, the same MAC
    // comes up on C and speaks); the fabric follows the higher sequence number.
    assert!(lab.ping(&gm, "10.1.1.12", 5), "gm on A");
    wait_for("gm advertised by A", Duration::from_secs(10), || frr_macs(&rr_frr, &rr).contains(&(GM.into(), A.into())));
    // The old NIC falls silent but stays attached (a VM paused for migration): A still has
    // the MAC learned when it appears on C, so C must outbid A's route.
    ok(&["ip", "-n", &gm, "addr", "flush", "dev", &n_gm]);
    ok(&["ip", "-n", &gm, "link", "set", &n_gm, "arp", "off"]);
    let n_gm2 = lab.name("gm2");
    let cc2 = cc.clone() + &cfg::port("gm", "web", "tap", &n_gm2, GM, "port_security = false");
    std::fs::write(lab.path("c2.toml"), cc2.replace("@SOCK@", sc.to_str().unwrap()).replace("@STATE@", lab.path("cstate").to_str().unwrap())).unwrap();
    ok(&[bin(), "ctl", "-s", sc.to_str().unwrap(), "apply", "-f", lab.path("c2.toml").to_str().unwrap()]);
    let gm2 = host_guest(&mut lab, &hc, &n_gm2, "ngm2", "10.1.1.20/24", Some("10.1.1.1"));
    assert!(lab.ping(&gm2, "10.1.1.14", 5), "gm on C");
    wait_for("A yields gm to C", Duration::from_secs(10), || fdb_row(&lab, &sa, GM).is_some_and(|r| r["type"] == "evpn" && r["port"] == format!("vxlan-{C}")));
    wait_for("the reflector has gm at C only", Duration::from_secs(10), || {
        let m = frr_macs(&rr_frr, &rr);
        m.contains(&(GM.into(), C.into())) && !m.contains(&(GM.into(), A.into()))
    });
    let t = Instant::now();
    loop {
        let ev = lab.show_at(&sc, "evpn");
        if ev["local_macs"]["5001"].as_array().is_some_and(|a| a.iter().any(|m| m[0] == GM && m[1].as_u64() >= Some(1))) {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "C does not advertise gm with a higher sequence number: {ev}\nreflector {:?}\nA gm {:?}\nC log {}",
            frr_macs(&rr_frr, &rr),
            fdb_row(&lab, &sa, GM),
            std::fs::read_to_string(lab.path("cvrouter.log")).unwrap_or_default().lines().filter(|l| !l.contains("DEBUG")).collect::<Vec<_>>().join("\n")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_for("the kernel follows gm", Duration::from_secs(10), || kernel_fdb(&lab, &hk, kvx).lines().any(|l| l.starts_with(GM) && l.contains(&format!("dst {C}"))));
    assert!(lab.ping(&gk, "10.1.1.20", 5), "kernel -> gm at its new place");
    assert!(lab.ping(&gb, "10.1.1.20", 5), "B -> gm at its new place");

    // A neighbour that sends garbage: a NOTIFICATION back, a counted error, no harm.
    let rogue = r#"
import socket, sys, time
s = socket.socket(); s.bind((sys.argv[1], 179)); s.listen(1)
s.settimeout(20)
c, _ = s.accept()
c.settimeout(5)
c.recv(4096)
c.sendall(b"\x00" * 16 + b"\x00\x20\x01" + b"garbage-garbage-")
time.sleep(0.5)
try:
    d = c.recv(4096)
except Exception:
    d = b""
print(d.hex())
"#;
    // vrouter dials its neighbours: the rogue listens on port 179 at a neighbour address A is
    // given by a config change.
    let out = lab.path("rogue.out");
    let rpid = lab.spawn_in(&hx, &["python3", "-c", rogue, ROGUE], &out);
    let ca2 = ca.clone() + &format!("[[bgp.neighbor]]\naddress = \"{ROGUE}\"\nremote_as = 65000\n");
    std::fs::write(lab.path("a2.toml"), ca2.replace("@SOCK@", sa.to_str().unwrap()).replace("@STATE@", lab.path("astate").to_str().unwrap())).unwrap();
    ok(&[bin(), "ctl", "-s", sa.to_str().unwrap(), "apply", "-f", lab.path("a2.toml").to_str().unwrap()]);
    wait_for("the rogue's error counted", Duration::from_secs(15), || {
        let s = lab.show_at(&sa, "bgp");
        s["neighbors"].as_array().unwrap().iter().any(|n| n["address"] == ROGUE && n["counters"]["errors_sent"].as_u64() >= Some(1))
    });
    let t = Instant::now();
    while std::fs::read_to_string(&out).unwrap_or_default().trim().is_empty() && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let reply = std::fs::read_to_string(&out).unwrap_or_default();
    assert!(reply.trim().starts_with("ffffffffffffffffffffffffffffffff0015030101"), "NOTIFICATION (1/1: not synchronized) expected, got {reply:?}");
    lab.kill(rpid);
    assert_eq!(bgp_state(&lab, &sa), "established", "the reflector session is untouched");
    assert!(lab.ping(&ga, "10.1.1.12", 3), "A -> B still");

    // A clean stop withdraws at once.
    signal(pid_b, "TERM");
    let t = Instant::now();
    while flood_list(&lab, &sa).contains(&B.to_string()) || fdb_row(&lab, &sa, GB).is_some() {
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "B's routes not withdrawn at A\nA evpn {}\nA fdb {}\nB log {}\nA log {}",
            lab.show_at(&sa, "evpn"),
            lab.show_at(&sa, "fdb"),
            std::fs::read_to_string(lab.path("bvrouter.log")).unwrap_or_default(),
            std::fs::read_to_string(lab.path("avrouter.log")).unwrap_or_default().lines().filter(|l| !l.contains("DEBUG")).collect::<Vec<_>>().join("\n")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("clean stop: withdrawn at A after {} ms", t.elapsed().as_millis());
    wait_for("B's MAC gone from the kernel", Duration::from_secs(5), || !kernel_fdb(&lab, &hk, kvx).contains(GB));
    assert!(!lab.show_at(&sa, "ports").as_array().unwrap().iter().any(|p| p["name"] == format!("vxlan-{B}")), "B's VXLAN port went with its routes");

    // kill -9: withdrawn within the hold time (9 s) and the reflector's detection.
    lab.kill(pid_c);
    let t = Instant::now();
    wait_for("C's routes withdrawn at A", Duration::from_secs(15), || !flood_list(&lab, &sa).contains(&C.to_string()));
    eprintln!("kill -9: withdrawn at A after {:.1} s", t.elapsed().as_secs_f64());
    assert!(fdb_row(&lab, &sa, GC).is_none() && fdb_row(&lab, &sa, GM).is_none());
    assert!(lab.ping(&ga, "10.1.1.14", 3), "A -> kernel still");
}
