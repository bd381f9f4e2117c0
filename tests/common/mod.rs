//! Test lab: real network namespaces, real taps (created by the vrouter binary under test), real
//! peers. Every name carries the test process id and a per-test tag, and a [`Lab`] deletes
//! exactly what it created when dropped, also when the test fails. Needs root, as in CI.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_vrouter")
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs a command and returns its output (never panics on failure).
pub fn run(args: &[&str]) -> Output {
    Command::new(args[0]).args(&args[1..]).output().unwrap_or_else(|e| panic!("spawn {args:?}: {e}"))
}

/// Runs a command that must succeed.
pub fn ok(args: &[&str]) -> String {
    let o = run(args);
    assert!(o.status.success(), "{args:?} failed: {}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Config text builders, so each test states only what differs.
pub mod cfg {
    /// `[router]` for a lab (`@SOCK@` becomes the lab's control socket).
    pub fn router(id: &str) -> String {
        format!("[router]\nname = \"{id}\"\ncontrol_socket = \"@SOCK@\"\nstate_dir = \"@STATE@\"\n")
    }
    pub fn network(name: &str, cidr: &str, vlan: Option<u16>) -> String {
        let vlan = vlan.map(|v| format!("vlan = {v}\n")).unwrap_or_default();
        format!("[[network]]\nname = \"{name}\"\ncidr = \"{cidr}\"\n{vlan}")
    }
    /// A routed `[[network]]` with its `gateway`; `extra` holds further keys (`vlan = 101`,
    /// `egress_default = "deny"`).
    pub fn l3_network(name: &str, cidr: &str, gateway: &str, extra: &str) -> String {
        format!("[[network]]\nname = \"{name}\"\ncidr = \"{cidr}\"\ngateway = \"{gateway}\"\n{extra}\n")
    }
    /// A `[[port]]`; `extra` holds further keys (`ip = ...`, `port_security = false`).
    pub fn port(name: &str, network: &str, kind: &str, ifname: &str, mac: &str, extra: &str) -> String {
        format!("[[port]]\nname = \"{name}\"\nnetwork = \"{network}\"\nkind = \"{kind}\"\nifname = \"{ifname}\"\nmac = \"{mac}\"\n{extra}\n")
    }
}

pub struct Lab {
    /// Short unique prefix for names: "v<pid><tag>".
    pub id: String,
    pub dir: PathBuf,
    netns: Vec<String>,
    children: Vec<Child>,
    /// Processes started by helpers outside our Child handles (QEMU), ended by pid.
    pids: Vec<u32>,
    /// Index of the vrouter process in `children`.
    vrouter: Option<usize>,
    /// Directories made by helper scripts for this lab, removed on drop.
    dirs: Vec<PathBuf>,
    /// Children that lead a process group of their own (helpers), ended as a group.
    groups: Vec<u32>,
}

impl Lab {
    pub fn new(tag: &str) -> Lab {
        assert!(tag.len() <= 3, "tag too long for 15-byte ifnames");
        // SAFETY: geteuid has no preconditions.
        assert_eq!(unsafe { libc_geteuid() }, 0, "integration tests need root (CI runs as root)");
        let id = format!("v{}{}", std::process::id() % 1_000_000, tag);
        let dir = std::env::temp_dir().join(format!("vrouter-test-{id}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Lab { id, dir, netns: Vec::new(), children: Vec::new(), pids: Vec::new(), vrouter: None, dirs: Vec::new(), groups: Vec::new() }
    }

    /// A name unique to this lab, at most 15 bytes: id + suffix.
    pub fn name(&self, suffix: &str) -> String {
        let n = format!("{}{}", self.id, suffix);
        assert!(n.len() <= 15, "{n} is longer than IFNAMSIZ");
        n
    }

    pub fn path(&self, f: &str) -> PathBuf {
        self.dir.join(f)
    }

    /// Starts `vrouter run` on `config` (text; `@SOCK@` is replaced by this lab's socket).
    pub fn vrouter(&mut self, config: &str) -> PathBuf {
        self.vrouter_at("", None, config)
    }

    /// Starts another vrouter, named `tag` (its own socket `<tag>ctl.sock`, state and log
    /// `<tag>vrouter.log`), inside namespace `netns` if given (a "host" of a multi-host test).
    pub fn vrouter_at(&mut self, tag: &str, netns: Option<&str>, config: &str) -> PathBuf {
        let sock = self.path(&format!("{tag}ctl.sock"));
        let cfg = self.path(&format!("{tag}vrouter.toml"));
        let state = self.path(&format!("{tag}state"));
        std::fs::write(&cfg, config.replace("@SOCK@", sock.to_str().unwrap()).replace("@STATE@", state.to_str().unwrap())).unwrap();
        let logp = self.path(&format!("{tag}vrouter.log"));
        let log = std::fs::File::create(&logp).unwrap();
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, bin()]);
                c
            }
            None => Command::new(bin()),
        };
        let child = cmd.args(["run", "-c", cfg.to_str().unwrap()]).env("VROUTER_LOG", "debug").stdout(Stdio::null()).stderr(log).spawn().unwrap();
        self.children.push(child);
        self.vrouter = Some(self.children.len() - 1);
        let t = Instant::now();
        let text = || std::fs::read_to_string(&logp).unwrap_or_default();
        while !sock.exists() {
            if let Some(c) = self.children.last_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    panic!("vrouter {tag} exited with {st}: {}", text());
                }
            }
            assert!(t.elapsed() < Duration::from_secs(10), "vrouter {tag} did not start: {}", text());
            std::thread::sleep(Duration::from_millis(20));
        }
        sock
    }

    /// `vrouter ctl -s SOCK show TABLE --json` for any of the lab's vrouters.
    pub fn show_at(&self, sock: &Path, table: &str) -> serde_json::Value {
        let out = ok(&[bin(), "ctl", "-s", sock.to_str().unwrap(), "show", table, "--json"]);
        serde_json::from_str(&out).unwrap()
    }

    /// The vrouter's exit code once it has exited.
    pub fn vrouter_exit_code(&mut self) -> Option<i32> {
        let i = self.vrouter.expect("no vrouter started");
        self.children[i].try_wait().ok().flatten().and_then(|s| s.code())
    }

    /// The vrouter's pid.
    pub fn vrouter_pid(&self) -> u32 {
        self.children[self.vrouter.expect("no vrouter started")].id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.path("vrouter.log")).unwrap_or_default()
    }

    /// Whether the most recently started vrouter still runs.
    pub fn vrouter_alive(&mut self) -> bool {
        let i = self.vrouter.expect("no vrouter started");
        matches!(self.children[i].try_wait(), Ok(None))
    }

    /// `vrouter ctl show TABLE --json`.
    pub fn show(&self, table: &str) -> serde_json::Value {
        let sock = self.path("ctl.sock");
        let out = ok(&[bin(), "ctl", "-s", sock.to_str().unwrap(), "show", table, "--json"]);
        serde_json::from_str(&out).unwrap()
    }

    /// Drop counter `reason` of port `port` from `show stats`.
    pub fn drops(&self, port: &str, reason: &str) -> u64 {
        let s = self.show("stats");
        s["ports"].as_array().unwrap().iter().find(|p| p["name"] == port).map(|p| p["drops"][reason].as_u64().unwrap_or(0)).unwrap_or(0)
    }

    /// Creates namespace `id+suffix`, moves tap `ifname` (made by vrouter) into it, brings it up
    /// with `addr` (CIDR). Returns the namespace name.
    pub fn guest(&mut self, suffix: &str, ifname: &str, addr: &str) -> String {
        let ns = self.name(suffix);
        ok(&["ip", "netns", "add", &ns]);
        self.netns.push(ns.clone());
        wait_for(&format!("tap {ifname}"), Duration::from_secs(5), || run(&["ip", "link", "show", ifname]).status.success());
        ok(&["ip", "link", "set", ifname, "netns", &ns]);
        ok(&["ip", "netns", "exec", &ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
        ok(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        ok(&["ip", "-n", &ns, "addr", "add", addr, "dev", ifname]);
        ok(&["ip", "-n", &ns, "link", "set", ifname, "up"]);
        ns
    }

    /// A namespace whose NIC is the (vrouter-made) tap of port `port` (`id+port`), up but
    /// without an address (a DHCP client's).
    pub fn bare_guest(&mut self, suffix: &str, port: &str) -> String {
        let ifname = self.name(port);
        let ns = self.name(suffix);
        ok(&["ip", "netns", "add", &ns]);
        self.netns.push(ns.clone());
        wait_for(&format!("tap {ifname}"), Duration::from_secs(10), || run(&["ip", "link", "show", &ifname]).status.success());
        ok(&["ip", "link", "set", &ifname, "netns", &ns]);
        let _ = self.exec(&ns, &["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
        ok(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        ok(&["ip", "-n", &ns, "link", "set", &ifname, "up"]);
        ns
    }

    /// Runs a command inside namespace `ns`.
    pub fn exec(&self, ns: &str, args: &[&str]) -> Output {
        let mut a = vec!["ip", "netns", "exec", ns];
        a.extend_from_slice(args);
        run(&a)
    }

    pub fn spawn_in(&mut self, ns: &str, args: &[&str], out: &Path) -> u32 {
        let f = std::fs::File::create(out).unwrap();
        // Its own process group: whatever it forks is ended with it (see Drop).
        let c = Command::new("ip").args(["netns", "exec", ns]).args(args).stdout(f.try_clone().unwrap()).stderr(f).process_group(0).spawn().unwrap();
        let pid = c.id();
        self.groups.push(pid);
        self.children.push(c);
        pid
    }

    /// Starts a helper process in vrouter's own namespace (e.g. a server on loopback); it is
    /// ended when the lab is dropped.
    pub fn spawn_host(&mut self, args: &[&str], out: &Path) -> u32 {
        let f = std::fs::File::create(out).unwrap();
        let c = Command::new(args[0]).args(&args[1..]).stdout(f.try_clone().unwrap()).stderr(f).process_group(0).spawn().unwrap();
        let pid = c.id();
        self.groups.push(pid);
        self.children.push(c);
        pid
    }

    /// Tracks a directory made by a helper script, to be removed on drop.
    pub fn adopt_dir(&mut self, d: PathBuf) {
        if d.to_string_lossy().starts_with("/tmp/vrouter-guest-") {
            self.dirs.push(d);
        }
    }

    /// Tracks a namespace the test made itself, to be deleted on drop.
    pub fn adopt_netns(&mut self, ns: String) {
        self.netns.push(ns);
    }

    /// Tracks a pid started by a helper script, to be ended on drop.
    pub fn adopt_pid(&mut self, pid: u32) {
        self.pids.push(pid);
    }

    /// Pings from `ns` until one reply or `tries` seconds pass.
    pub fn ping(&self, ns: &str, dst: &str, tries: u32) -> bool {
        (0..tries).any(|_| self.exec(ns, &["ping", "-c", "1", "-W", "1", dst]).status.success())
    }

    /// Sends SIGKILL to a child (a crash, a VM pulled) and reaps it.
    pub fn kill(&mut self, pid: u32) {
        signal(pid, "KILL");
        if let Some(c) = self.children.iter_mut().find(|c| c.id() == pid) {
            let _ = c.wait();
        }
    }

    /// Sends SIGINT to a child (tcpdump flushes its file) and waits for it.
    pub fn interrupt(&mut self, pid: u32) {
        signal(pid, "INT");
        if let Some(c) = self.children.iter_mut().find(|c| c.id() == pid) {
            let t = Instant::now();
            while matches!(c.try_wait(), Ok(None)) && t.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// The udhcpc event script: configures the address and default route, and records the options
/// it was given.
pub fn udhcpc_script(lab: &Lab) -> String {
    let p = lab.path("udhcpc.sh");
    std::fs::write(
        &p,
        "#!/bin/sh\ncase \"$1\" in\n  bound|renew)\n    ip addr flush dev \"$interface\"\n    ip addr add \"$ip/$mask\" dev \"$interface\"\n    [ -n \"$router\" ] && ip route replace default via \"$router\" dev \"$interface\"\n    env | sort > \"$ENVFILE\"\n    ;;\nesac\nexit 0\n",
    )
    .unwrap();
    ok(&["chmod", "+x", p.to_str().unwrap()]);
    p.to_str().unwrap().to_string()
}

/// Runs busybox udhcpc once in `ns` on `ifname`; the options of the lease it got.
pub fn udhcpc(lab: &Lab, ns: &str, ifname: &str, extra: &[&str]) -> std::collections::HashMap<String, String> {
    let script = udhcpc_script(lab);
    let envfile = lab.path(&format!("{ns}-{ifname}.env"));
    let _ = std::fs::remove_file(&envfile);
    let mut args = vec!["env", "ENVFILE=", "busybox", "udhcpc", "-i", ifname, "-f", "-q", "-n", "-t", "6", "-T", "1", "-s", &script, "-O", "mtu", "-O", "search", "-O", "staticroutes", "-O", "domain"];
    let envset = format!("ENVFILE={}", envfile.display());
    args[1] = &envset;
    args.extend_from_slice(extra);
    let o = lab.exec(ns, &args);
    assert!(o.status.success(), "udhcpc in {ns}: {}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    let text = std::fs::read_to_string(&envfile).unwrap_or_default();
    text.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// Starts a QEMU test guest (scripts/lib/qemu-guest.sh) running `script`, its tap made in
/// `netns` (default: here); returns its serial log path. The lab ends it and removes its files.
pub fn qemu_guest(lab: &mut Lab, name: &str, tap: &str, mac: &str, script: &str, netns: Option<&str>) -> PathBuf {
    let sp = lab.path(&format!("{name}.sh"));
    std::fs::write(&sp, script).unwrap();
    let log = lab.path(&format!("{name}.log"));
    let lib = repo().join("scripts/lib/qemu-guest.sh");
    let ns = netns.map(|n| format!("QEMU_GUEST_NETNS={n} ")).unwrap_or_default();
    let cmd = format!(
        "source {} && {ns}qemu_guest_start {name} {tap} {mac} {} {} && echo PID=$QEMU_GUEST_PID DIR=${{_QG_WORKDIR[$QEMU_GUEST_PID]}}",
        lib.display(),
        sp.display(),
        log.display()
    );
    let o = run(&["bash", "-c", &cmd]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "qemu_guest_start: {out}{}", String::from_utf8_lossy(&o.stderr));
    let line = out.lines().find(|l| l.starts_with("PID=")).expect("pid line");
    let (pid, dir) = line.split_once(" DIR=").expect("pid and dir");
    lab.adopt_pid(pid.trim_start_matches("PID=").parse().expect("pid"));
    // The guest's initrd copy lives there; the helper's shell is gone, so the lab removes it.
    lab.adopt_dir(dir.trim().into());
    log
}

/// Waits until `log` (a console) shows `marker`; returns the text.
pub fn wait_marker(log: &Path, marker: &str, secs: u64) -> String {
    let t = Instant::now();
    loop {
        let s = std::fs::read_to_string(log).unwrap_or_default();
        if s.contains(marker) {
            return s;
        }
        assert!(t.elapsed() < Duration::from_secs(secs), "never saw {marker}; console:\n{s}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill").args([&format!("-{sig}"), &pid.to_string()]).status();
}

extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

impl Drop for Lab {
    fn drop(&mut self) {
        for pid in self.pids.drain(..) {
            signal(pid, "KILL");
        }
        for c in self.children.iter_mut().rev() {
            // Helpers run in process groups of their own: what they forked goes with them.
            if self.groups.contains(&c.id()) {
                let _ = Command::new("kill").args(["-TERM", "--", &format!("-{}", c.id())]).status();
            }
            if matches!(c.try_wait(), Ok(None)) {
                signal(c.id(), "TERM");
                let t = Instant::now();
                while matches!(c.try_wait(), Ok(None)) && t.elapsed() < Duration::from_secs(3) {
                    std::thread::sleep(Duration::from_millis(20));
                }
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        for ns in self.netns.drain(..) {
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        }
        if std::thread::panicking() {
            eprintln!("--- vrouter log ({}) ---\n{}", self.id, self.log());
        }
        for d in self.dirs.drain(..) {
            let _ = std::fs::remove_dir_all(d);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An underlay: a namespace holding the bridge `br0` that [`underlay_host`]s join.
pub fn underlay(lab: &mut Lab) -> String {
    let ul = lab.name("ul");
    ok(&["ip", "netns", "add", &ul]);
    lab.adopt_netns(ul.clone());
    ok(&["ip", "-n", &ul, "link", "add", "br0", "type", "bridge"]);
    ok(&["ip", "-n", &ul, "link", "set", "br0", "up"]);
    ul
}

/// A "host" namespace on an underlay: a veth into the bridge `br0` of namespace `br_ns`, with
/// `addr`/24 (multi-host VXLAN and EVPN tests).
pub fn underlay_host(lab: &mut Lab, br_ns: &str, tag: &str, addr: &str) -> String {
    let ns = lab.name(tag);
    ok(&["ip", "netns", "add", &ns]);
    lab.adopt_netns(ns.clone());
    let (here, there) = (lab.name(&format!("{tag}u")), lab.name(&format!("{tag}b")));
    ok(&["ip", "link", "add", &here, "netns", &ns, "type", "veth", "peer", "name", &there, "netns", br_ns]);
    ok(&["ip", "-n", br_ns, "link", "set", &there, "master", "br0", "up"]);
    ok(&["ip", "-n", &ns, "addr", "add", &format!("{addr}/24"), "dev", &here]);
    ok(&["ip", "-n", &ns, "link", "set", &here, "up"]);
    ok(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
    ns
}

/// A guest namespace on the tap `ifname` that vrouter made inside host namespace `host` (MTU
/// 1450: a VXLAN network's), with `addr` and a default route via `gw` if given.
pub fn host_guest(lab: &mut Lab, host: &str, ifname: &str, suffix: &str, addr: &str, gw: Option<&str>) -> String {
    let ns = lab.name(suffix);
    ok(&["ip", "netns", "add", &ns]);
    lab.adopt_netns(ns.clone());
    wait_for(&format!("tap {ifname}"), Duration::from_secs(5), || run(&["ip", "-n", host, "link", "show", ifname]).status.success());
    ok(&["ip", "-n", host, "link", "set", ifname, "netns", &ns]);
    let _ = lab.exec(&ns, &["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
    ok(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
    ok(&["ip", "-n", &ns, "link", "set", ifname, "mtu", "1450", "up"]);
    ok(&["ip", "-n", &ns, "addr", "add", addr, "dev", ifname]);
    if let Some(gw) = gw {
        ok(&["ip", "-n", &ns, "route", "add", "default", "via", gw]);
    }
    ns
}

/// iperf3 for 2 s from `client_ns` to a one-shot server in `server_ns` at `dst`: prints and
/// returns the bits per second, and fails the test under 1 MB moved.
pub fn iperf_between(lab: &mut Lab, server_ns: &str, client_ns: &str, dst: &str, what: &str) -> f64 {
    let log = lab.path(&format!("iperf-{what}.log"));
    lab.spawn_in(server_ns, &["iperf3", "-s", "-1"], &log);
    wait_for("iperf3 server", Duration::from_secs(5), || {
        !String::from_utf8_lossy(&lab.exec(server_ns, &["ss", "-Hltn", "sport = :5201"]).stdout).trim().is_empty()
    });
    let o = lab.exec(client_ns, &["iperf3", "-c", dst, "-t", "2", "-J", "--connect-timeout", "3000"]);
    assert!(o.status.success(), "iperf3 {what}: {}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let bps = j["end"]["sum_received"]["bits_per_second"].as_f64().unwrap_or(0.0);
    eprintln!("iperf3 {what}: {:.2} Gbit/s", bps / 1e9);
    assert!(j["end"]["sum_received"]["bytes"].as_u64().unwrap_or(0) > 1_000_000, "{what}: too little went through");
    bps
}
