//! vrouter as a systemd service: the template unit in conf/ verifies with `systemd-analyze
//! verify` (no diagnostics at all), the daemon speaks the notification protocol a `Type=notify`
//! unit needs (READY, WATCHDOG from the loop, STOPPING) to a socket the test listens on, and
//! `--log-format json` writes one JSON object per line.

mod common;
use common::*;
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

#[test]
fn the_unit_verifies_cleanly() {
    let lab = Lab::new("un");
    let unit = std::fs::read_to_string(repo().join("conf/vrouter@.service")).unwrap();
    for want in ["Type=notify", "WatchdogSec=", "ExecReload=", "CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_RAW", "ProtectSystem=strict", "StateDirectory=", "RuntimeDirectory="] {
        assert!(unit.contains(want), "{want}");
    }
    // The unit names the installed binary; verify it against the one just built.
    let path = lab.path("vrouter@acct.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/vrouter", bin())).unwrap();
    let o = run(&["systemd-analyze", "verify", path.to_str().unwrap()]);
    let diag = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success() && diag.trim().is_empty(), "systemd-analyze verify: {diag}");
    // A positive control: the check does see a broken unit.
    let bad = lab.path("vrouter@bad.service");
    std::fs::write(&bad, unit.replace("/usr/local/bin/vrouter", bin()).replace("Type=notify", "Type=notify\nNoSuchKey=1")).unwrap();
    let o = run(&["systemd-analyze", "verify", bad.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("NoSuchKey"));
}

/// The daemon this test started by hand, killed (by its pid) if the test fails first.
struct Reap(std::process::Child);

impl Drop for Reap {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[test]
fn notify_protocol_and_json_logs() {
    let lab = Lab::new("nt");
    let sockp = lab.path("notify.sock");
    let listen = UnixDatagram::bind(&sockp).unwrap();
    listen.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let cfg = [cfg::router(&lab.id), cfg::network("web", "10.1.1.0/24", None), cfg::port("g1", "web", "tap", &lab.name("g1"), "52:54:00:72:01:11", "")].concat();
    let ctl = lab.path("ctl.sock");
    let cfgp = lab.path("vrouter.toml");
    std::fs::write(&cfgp, cfg.replace("@SOCK@", ctl.to_str().unwrap()).replace("@STATE@", lab.path("state").to_str().unwrap())).unwrap();
    let log = lab.path("vrouter.log");
    let mut child = Reap(std::process::Command::new(bin())
        .args(["--log-format", "json", "run", "-c", cfgp.to_str().unwrap()])
        .env("NOTIFY_SOCKET", &sockp)
        .env("WATCHDOG_USEC", "400000")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap());
    let mut got = Vec::new();
    let t = Instant::now();
    let mut buf = [0u8; 512];
    while t.elapsed() < Duration::from_secs(5) && got.iter().filter(|m: &&String| m.as_str() == "WATCHDOG=1").count() < 3 {
        if let Ok(n) = listen.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    assert!(got.first().is_some_and(|m| m.starts_with("READY=1\n")), "{got:?}");
    assert!(got.iter().filter(|m| *m == "WATCHDOG=1").count() >= 3, "{got:?}");
    signal(child.0.id(), "TERM");
    let mut stopping = false;
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(5) && !stopping {
        if let Ok(n) = listen.recv(&mut buf) {
            stopping = &buf[..n] == b"STOPPING=1";
        }
    }
    let _ = child.0.wait();
    assert!(stopping, "no STOPPING=1");
    // Every log line is a JSON object with a level and a message.
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.lines().count() >= 2, "{text}");
    for l in text.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert!(v["level"].is_string() && v["fields"]["message"].is_string(), "{l}");
    }
    assert!(text.contains("vrouter running"));
}
