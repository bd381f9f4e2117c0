//! vrouter as the account's system VM, end to end under QEMU (TCG): the image built by
//! `scripts/systemvm.sh` boots with its config from fw_cfg; its NICs (found by MAC) sit on one
//! Linux bridge per guest network and one to an "outside" namespace, as CloudStack plugs its
//! virtual router into each network's bridge. Two namespace guests (veths on the web bridge) and
//! a QEMU guest VM (its tap on the db bridge) get their leases from it, resolve each other by
//! name, cross networks and reach the outside through source NAT; the outside reaches a guest
//! through a port forward. From the host, `ctl -s` over the virtio-serial line shows the leases
//! and applies a new forward, which then works. The VM is killed and booted again: the leases
//! and the applied config came back from its state disk, and the guests renew with ACKs. Then an
//! ACPI power-down ends it cleanly. Nothing is added to the root namespace.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const WEB_MAC: &str = "52:54:00:5a:00:01";
const DB_MAC: &str = "52:54:00:5a:00:02";
const PUB_MAC: &str = "52:54:00:5a:00:09";
const G1_MAC: &str = "52:54:00:5b:01:11";
const G2_MAC: &str = "52:54:00:5b:01:12";
const VM_MAC: &str = "52:54:00:5b:02:11";
const DOMAIN: &str = "acct.internal";

/// The image, built with the binary under test; built twice, it must be the same bytes.
fn image(lab: &Lab) -> PathBuf {
    let build = |dir: &Path| {
        let o = run(&["bash", repo().join("scripts/systemvm.sh").to_str().unwrap(), "build", dir.to_str().unwrap(), "--state-disk", "--binary", bin()]);
        assert!(o.status.success(), "systemvm.sh: {}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        eprintln!("{}", String::from_utf8_lossy(&o.stdout).trim());
        ["kernel", "initrd", "state.img"].map(|f| std::fs::read(dir.join(f)).unwrap())
    };
    let dir = lab.path("image");
    let first = build(&dir);
    let again = build(&lab.path("image-again"));
    for (i, f) in ["kernel", "initrd", "state.img"].iter().enumerate() {
        assert!(first[i] == again[i], "{f} differs between two builds from the same inputs");
    }
    let _ = std::fs::remove_dir_all(lab.path("image-again"));
    let size = first[0].len() + first[1].len();
    assert!(size < 30_000_000, "kernel + initrd are {size} bytes");
    dir
}

fn config(forward_2223: bool) -> String {
    let mut c = format!(
        r#"[router]
name = "acct"
[[network]]
name = "web"
cidr = "10.1.1.0/24"
gateway = "10.1.1.1"
dhcp_range = ["10.1.1.100", "10.1.1.150"]
domain = "{DOMAIN}"
[[network]]
name = "db"
cidr = "10.1.2.0/24"
gateway = "10.1.2.1"
domain = "{DOMAIN}"
[[uplink]]
name = "web0"
kind = "netdev"
match_mac = "{WEB_MAC}"
untagged = "web"
[[uplink]]
name = "db0"
kind = "netdev"
match_mac = "{DB_MAC}"
untagged = "db"
[public]
kind = "netdev"
match_mac = "{PUB_MAC}"
ips = ["203.0.113.10/24"]
gateway = "203.0.113.1"
[[port]]
name = "web1"
network = "web"
kind = "remote"
via = "web0"
mac = "{G1_MAC}"
ip = "10.1.1.11"
hostname = "web1"
[[port]]
name = "db1"
network = "db"
kind = "remote"
via = "db0"
mac = "{VM_MAC}"
ip = "10.1.2.11"
hostname = "db1"
[[port_forward]]
public_ip = "203.0.113.10"
protocol = "tcp"
public_port = "2222"
private_ip = "10.1.1.11"
private_port = "22"
"#
    );
    if forward_2223 {
        c.push_str("[[port_forward]]\npublic_ip = \"203.0.113.10\"\nprotocol = \"tcp\"\npublic_port = \"2223\"\nprivate_ip = \"10.1.1.100\"\nprivate_port = \"22\"\n");
    }
    c
}

struct Vm {
    pid: u32,
    console: PathBuf,
    monitor: PathBuf,
}

/// Boots the system VM in namespace `ns` (its taps are made there and put on the bridges).
fn boot(lab: &mut Lab, img: &Path, ns: &str, round: u32) -> Vm {
    let console = lab.path(&format!("systemvm-{round}.log"));
    let monitor = lab.path("monitor.sock");
    let _ = std::fs::remove_file(&monitor);
    let sock = lab.path("ctl.sock");
    let cfg = lab.path("acct.toml");
    let kernel = img.join("kernel");
    let initrd = img.join("initrd");
    let state = img.join("state.img");
    let (tw, td, tp) = (lab.name("sw"), lab.name("sd"), lab.name("sp"));
    let nic = |id: &str, tap: &str, mac: &str| [format!("tap,id={id},ifname={tap},script=no,downscript=no"), format!("virtio-net-pci,netdev={id},mac={mac},romfile=")];
    let [n0, d0] = nic("n0", &tw, WEB_MAC);
    let [n1, d1] = nic("n1", &td, DB_MAC);
    let [n2, d2] = nic("n2", &tp, PUB_MAC);
    let args: Vec<String> = vec![
        "qemu-system-x86_64".into(), "-name".into(), "systemvm".into(), "-machine".into(), "q35".into(), "-accel".into(), "tcg".into(),
        "-cpu".into(), "qemu64".into(), "-smp".into(), "1".into(), "-m".into(), "256".into(), "-nodefaults".into(), "-display".into(), "none".into(),
        "-no-reboot".into(), "-serial".into(), format!("file:{}", console.display()),
        "-monitor".into(), format!("unix:{},server=on,wait=off", monitor.display()),
        "-kernel".into(), kernel.display().to_string(), "-initrd".into(), initrd.display().to_string(), "-append".into(), "console=ttyS0".into(),
        "-fw_cfg".into(), format!("name=opt/vrouter/config,file={}", cfg.display()),
        "-device".into(), "virtio-serial".into(),
        "-chardev".into(), format!("socket,id=ctl,path={},server=on,wait=off", sock.display()),
        "-device".into(), "virtserialport,chardev=ctl,name=org.vrouter.ctl".into(),
        "-drive".into(), format!("file={},if=virtio,format=raw", state.display()),
        "-netdev".into(), n0, "-device".into(), d0, "-netdev".into(), n1, "-device".into(), d1, "-netdev".into(), n2, "-device".into(), d2,
    ];
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let pid = lab.spawn_in(ns, &argv, &lab.path(&format!("qemu-{round}.out")));
    for (tap, br) in [(&tw, "bweb"), (&td, "bdb"), (&tp, "bpub")] {
        wait_for(&format!("QEMU's tap {tap}"), Duration::from_secs(10), || lab.exec(ns, &["ip", "link", "show", tap]).status.success());
        ok(&["ip", "-n", ns, "link", "set", tap, "master", br, "up"]);
    }
    Vm { pid, console, monitor }
}

fn console(vm: &Vm) -> String {
    std::fs::read_to_string(&vm.console).unwrap_or_default()
}

/// A namespace with a veth on bridge `br` of namespace `host`, with `mac`.
fn on_bridge(lab: &mut Lab, host: &str, br: &str, suffix: &str, mac: &str) -> String {
    let ns = lab.name(suffix);
    ok(&["ip", "netns", "add", &ns]);
    lab.adopt_netns(ns.clone());
    let hv = lab.name(&format!("h{suffix}"));
    ok(&["ip", "-n", host, "link", "add", &hv, "type", "veth", "peer", "name", "eth0", "netns", &ns]);
    ok(&["ip", "-n", host, "link", "set", &hv, "master", br, "up"]);
    ok(&["ip", "netns", "exec", &ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
    ok(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
    ok(&["ip", "-n", &ns, "link", "set", "eth0", "address", mac]);
    ok(&["ip", "-n", &ns, "link", "set", "eth0", "up"]);
    ns
}

/// udhcpc in `ns` until a lease (`tries` attempts of ~3 s); returns the lease's options.
fn lease(lab: &Lab, ns: &str, extra: &[&str]) -> std::collections::HashMap<String, String> {
    udhcpc(lab, ns, "eth0", extra)
}

/// A TCP server on `ip:port` in `ns` answering each connection with "TAG PEER".
fn server(lab: &mut Lab, ns: &str, ip: &str, port: u16, tag: &str) {
    let py = format!(
        "import socket\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind(('{ip}',{port}))\ns.listen(16)\nwhile True:\n  c,a=s.accept()\n  c.sendall(('{tag} '+a[0]+'\\n').encode())\n  c.close()\n"
    );
    lab.spawn_in(ns, &["python3", "-c", &py], &lab.path(&format!("srv-{tag}-{port}.log")));
}

/// Connects from `ns` to `ip:port`; the server's line, or None.
fn fetch(lab: &Lab, ns: &str, ip: &str, port: u16) -> Option<String> {
    let py = format!("import socket\nc=socket.create_connection(('{ip}',{port}),timeout=3)\nprint(c.recv(100).decode().strip())\n");
    (0..10).find_map(|_| {
        let o = lab.exec(ns, &["python3", "-c", &py]);
        if o.status.success() {
            return Some(String::from_utf8_lossy(&o.stdout).trim().to_string());
        }
        std::thread::sleep(Duration::from_millis(500));
        None
    })
}

fn ctl(lab: &Lab, args: &[&str]) -> std::process::Output {
    let sock = lab.path("ctl.sock");
    let mut a = vec![bin(), "ctl", "-s", sock.to_str().unwrap()];
    a.extend_from_slice(args);
    run(&a)
}

fn dig(lab: &Lab, ns: &str, server: &str, name: &str) -> String {
    let o = lab.exec(ns, &["dig", "+short", "+time=2", "+tries=3", &format!("@{server}"), name]);
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// The QEMU guest VM on the db bridge: its lease, a name, the web guest and the outside.
const VM_SCRIPT: &str = r#"
. /lib/vrguest.sh
cat > /tmp/udhcpc.sh <<'EOS'
#!/bin/sh
[ "$1" = bound ] && ip addr add "$ip/$mask" dev "$interface" && ip route add default via "$router" && echo "VRT_LEASE=$ip router=$router dns=$dns"
exit 0
EOS
chmod +x /tmp/udhcpc.sh
if busybox udhcpc -i eth0 -n -q -t 30 -T 2 -s /tmp/udhcpc.sh; then echo VRT_DHCP_OK; else echo VRT_DHCP_FAIL; exit 1; fi
nslookup web1.acct.internal 10.1.2.1 2>&1 | grep -q 10.1.1.11 && echo VRT_NAME_OK || echo VRT_NAME_FAIL
if vrg_wait_ping 10.1.1.11 60; then echo VRT_WEB_OK; else echo VRT_WEB_FAIL; fi
if vrg_wait_ping 198.51.100.5 30; then echo VRT_OUT_OK; else echo VRT_OUT_FAIL; fi
echo "VRT_META=$(printf 'GET /latest/meta-data/local-hostname HTTP/1.0\r\n\r\n' | nc -w 5 169.254.169.254 80 | tail -n 1)"
echo VRT_END
sleep 600
"#;

#[test]
fn system_vm_boots_serves_an_account_and_keeps_its_state_across_a_reboot() {
    let mut lab = Lab::new("sv");
    let img = image(&lab);
    std::fs::write(lab.path("acct.toml"), config(false)).unwrap();
    // The hypervisor host: a bridge per guest network and one for the public side.
    let host = lab.name("h");
    ok(&["ip", "netns", "add", &host]);
    lab.adopt_netns(host.clone());
    ok(&["ip", "netns", "exec", &host, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
    ok(&["ip", "netns", "exec", &host, "sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"]);
    for br in ["bweb", "bdb", "bpub"] {
        ok(&["ip", "-n", &host, "link", "add", br, "type", "bridge"]);
        ok(&["ip", "-n", &host, "link", "set", br, "up"]);
    }
    let out = on_bridge(&mut lab, &host, "bpub", "out", "52:54:00:5c:00:01");
    ok(&["ip", "-n", &out, "addr", "add", "203.0.113.1/24", "dev", "eth0"]);
    ok(&["ip", "-n", &out, "addr", "add", "198.51.100.5/32", "dev", "lo"]);
    let g1 = on_bridge(&mut lab, &host, "bweb", "g1", G1_MAC);
    let g2 = on_bridge(&mut lab, &host, "bweb", "g2", G2_MAC);

    let t0 = Instant::now();
    let mut vm = boot(&mut lab, &img, &host, 1);
    // The web guest asks until the system VM answers: QEMU start to first ACK.
    let l1 = lease(&lab, &g1, &["-t", "40", "-T", "1"]);
    let first_ack = t0.elapsed();
    eprintln!("system VM: QEMU start to first DHCP ACK {:.1} s", first_ack.as_secs_f64());
    assert_eq!(l1.get("ip").map(String::as_str), Some("10.1.1.11"), "the reservation: {l1:?}\n{}", console(&vm));
    assert_eq!(l1.get("hostname").map(String::as_str), Some("web1"), "{l1:?}");
    let l2 = lease(&lab, &g2, &["-x", "hostname:web2"]);
    let g2_ip = l2.get("ip").cloned().unwrap_or_default();
    assert_eq!(g2_ip, "10.1.1.100", "the pool's first address: {l2:?}");
    // The QEMU guest VM on the db network.
    let qtap = lab.name("qt");
    let vm_log = qemu_guest(&mut lab, "gvm", &qtap, VM_MAC, VM_SCRIPT, Some(&host));
    ok(&["ip", "-n", &host, "link", "set", &qtap, "master", "bdb", "up"]);

    // Names, across networks, the outside through source NAT, and back through a forward.
    for ns in [&g1, &g2] {
        ok(&["ip", "-n", ns, "route", "replace", "default", "via", "10.1.1.1"]);
    }
    assert_eq!(dig(&lab, &g2, "10.1.1.1", &format!("web1.{DOMAIN}")), "10.1.1.11");
    assert_eq!(dig(&lab, &g1, "10.1.1.1", &format!("web2.{DOMAIN}")), g2_ip, "a dynamic guest by the name it sent");
    assert_eq!(dig(&lab, &g1, "10.1.1.1", &format!("db1.{DOMAIN}")), "10.1.2.11");
    let vmc = wait_marker(&vm_log, "VRT_END", 240);
    for m in ["VRT_LEASE=10.1.2.11 router=10.1.2.1 dns=10.1.2.1", "VRT_NAME_OK", "VRT_WEB_OK", "VRT_OUT_OK", "VRT_META=db1"] {
        assert!(vmc.contains(m), "guest VM: {m} missing:\n{vmc}");
    }
    assert!(lab.ping(&g1, "10.1.2.11", 10), "web guest -> the VM on db");
    // Metadata for a VM behind an uplink: known by the uplink it is behind, its MAC and its
    // address; a guest that is no configured VM gets nothing.
    let meta = |ns: &str| {
        let py = "import urllib.request\nprint(urllib.request.urlopen('http://10.1.1.1/latest/meta-data/instance-id', timeout=3).read().decode())\n";
        let o = lab.exec(ns, &["python3", "-c", py]);
        o.status.success().then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    assert_eq!(meta(&g1).as_deref(), Some("web1"), "the remote VM's own metadata");
    assert_eq!(meta(&g2), None, "a guest that is not a configured VM");
    server(&mut lab, &out, "198.51.100.5", 80, "outside");
    assert_eq!(fetch(&lab, &g1, "198.51.100.5", 80).as_deref(), Some("outside 203.0.113.10"), "source NAT");
    server(&mut lab, &g1, "10.1.1.11", 22, "g1");
    server(&mut lab, &g2, &g2_ip, 22, "g2");
    assert_eq!(fetch(&lab, &out, "203.0.113.10", 2222).as_deref(), Some("g1 203.0.113.1"), "the forward to web1");

    // From the host, over virtio-serial: leases, then a new forward applied live.
    let o = ctl(&lab, &["show", "leases", "--json"]);
    assert!(o.status.success(), "ctl over virtio-serial: {}{}", String::from_utf8_lossy(&o.stderr), console(&vm));
    let leases: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let ips: Vec<&str> = leases["leases"].as_array().unwrap().iter().filter_map(|l| l["ip"].as_str()).collect();
    for ip in ["10.1.1.11", "10.1.1.100", "10.1.2.11"] {
        assert!(ips.contains(&ip), "{ip} not in {leases}");
    }
    let newf = lab.path("acct-new.toml");
    std::fs::write(&newf, config(true)).unwrap();
    let o = ctl(&lab, &["apply", "-f", newf.to_str().unwrap()]);
    assert!(o.status.success(), "apply over virtio-serial: {}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert_eq!(fetch(&lab, &out, "203.0.113.10", 2223).as_deref(), Some("g2 203.0.113.1"), "the applied forward");
    let o = ctl(&lab, &["health"]);
    eprintln!("health over virtio-serial:\n{}", String::from_utf8_lossy(&o.stdout));

    // Killed (no shutdown at all) and booted again with the same disk and fw_cfg.
    lab.kill(vm.pid);
    let t1 = Instant::now();
    vm = boot(&mut lab, &img, &host, 2);
    let again = lease(&lab, &g2, &["-r", &g2_ip, "-t", "40", "-T", "1"]);
    eprintln!("system VM: reboot to the first renewal's ACK {:.1} s", t1.elapsed().as_secs_f64());
    assert_eq!(again.get("ip"), Some(&g2_ip), "the dynamic guest kept its address: {again:?}\n{}", console(&vm));
    let c = console(&vm);
    assert!(c.contains("config: the last applied one"), "the applied config came back from the state disk:\n{c}");
    let o = ctl(&lab, &["show", "leases", "--json"]);
    let leases: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
    assert!(leases["counters"]["naks"].as_u64() == Some(0), "no NAK after the reboot: {leases}");
    assert_eq!(fetch(&lab, &out, "203.0.113.10", 2223).as_deref(), Some("g2 203.0.113.1"), "the applied forward after the reboot");

    // ACPI power button: vrouter stops, the disk is unmounted, the VM powers off.
    let o = run(&["bash", "-c", &format!("echo system_powerdown | socat - UNIX-CONNECT:{}", vm.monitor.display())]);
    assert!(o.status.success());
    wait_for("a clean power-off", Duration::from_secs(60), || console(&vm).contains("reboot: Power down"));
    let c = console(&vm);
    assert!(c.contains("systemvm: power button: shutting down") && c.contains("shutting down"), "{c}");
    assert!(!c.contains("\x1b["), "the console log has no colour codes");
}
