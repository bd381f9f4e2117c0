//! `ctl capture`: pcapng that tcpdump reads, from a file and streamed into `tcpdump -r -`, both
//! directions of a ping with the right MACs, and with `--drops` a spoofed frame with its drop
//! reason in the frame's comment.

mod common;
use common::*;
use std::process::{Command, Stdio};
use std::time::Duration;

const G1: &str = "52:54:00:71:01:11";
const G2: &str = "52:54:00:71:01:12";

fn setup(tag: &str) -> (Lab, String, String) {
    let mut lab = Lab::new(tag);
    let cfg = [
        cfg::router(&lab.id),
        cfg::network("web", "10.1.1.0/24", None),
        cfg::port("g1", "web", "tap", &lab.name("g1"), G1, "ip = \"10.1.1.11\""),
        cfg::port("g2", "web", "tap", &lab.name("g2"), G2, "ip = \"10.1.1.12\""),
    ]
    .concat();
    lab.vrouter(&cfg);
    let g1 = lab.guest("n1", &lab.name("g1"), "10.1.1.11/24");
    let g2 = lab.guest("n2", &lab.name("g2"), "10.1.1.12/24");
    assert!(lab.ping(&g1, "10.1.1.12", 5));
    (lab, g1, g2)
}

fn capture(lab: &Lab, args: &[&str]) -> std::process::Child {
    let sock = lab.path("ctl.sock");
    let mut a = vec!["ctl", "-s", sock.to_str().unwrap(), "capture"];
    a.extend_from_slice(args);
    Command::new(bin()).args(&a).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
}

/// tcpdump's reading of a capture file.
fn tcpdump(file: &std::path::Path) -> String {
    let o = run(&["tcpdump", "-r", file.to_str().unwrap(), "-n", "-e"]);
    assert!(o.status.success(), "tcpdump: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Waits (at most 30 s: a capture short of its count would wait forever) for a child and
/// returns (success, stdout, stderr).
fn finish(mut c: std::process::Child) -> (bool, Vec<u8>, String) {
    let t = std::time::Instant::now();
    while matches!(c.try_wait(), Ok(None)) {
        if t.elapsed() > Duration::from_secs(30) {
            let _ = c.kill();
            let o = c.wait_with_output().unwrap();
            panic!("capture did not end: {}", String::from_utf8_lossy(&o.stderr));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let o = c.wait_with_output().unwrap();
    (o.status.success(), o.stdout, String::from_utf8_lossy(&o.stderr).into_owned())
}

#[test]
fn a_ping_captured_to_a_file_and_to_tcpdump() {
    let (lab, g1, _) = setup("cp");
    // To a file: both directions of four echo exchanges on g1.
    let file = lab.path("g1.pcapng");
    let c = capture(&lab, &["g1", "-c", "8", "-w", file.to_str().unwrap()]);
    std::thread::sleep(Duration::from_millis(300));
    let o = lab.exec(&g1, &["ping", "-c", "8", "-i", "0.2", "10.1.1.12"]);
    assert!(o.status.success());
    let (ok, _, err) = finish(c);
    assert!(ok, "{err}");
    assert!(err.contains("8 frame(s) captured, 0 lost"), "{err}");
    let text = tcpdump(&file);
    assert!(text.lines().any(|l| l.contains(&format!("{G1} > {G2}")) && l.contains("ICMP echo request")), "{text}");
    assert!(text.lines().any(|l| l.contains(&format!("{G2} > {G1}")) && l.contains("ICMP echo reply")), "{text}");
    // The port's name is the interface's (pcapng if_name).
    let bytes = std::fs::read(&file).unwrap();
    assert!(bytes.windows(2).any(|w| w == b"g1"));

    // Streamed: `-w -` into `tcpdump -r -`, only what leaves towards g1.
    let sock = lab.path("ctl.sock");
    let pipe = format!("{} ctl -s {} capture g1 --direction out -c 3 -w - | tcpdump -r - -n -e", bin(), sock.display());
    let sh = Command::new("sh").args(["-c", &pipe]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(lab.exec(&g1, &["ping", "-c", "6", "-i", "0.2", "10.1.1.12"]).status.success());
    let (ok, out, err) = finish(sh);
    let out = String::from_utf8_lossy(&out);
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}\n{err}");
    assert!(lines.iter().all(|l| l.contains(&format!("{G2} > {G1}")) && l.contains("echo reply")), "{out}");
}

#[test]
fn dropped_frames_come_with_their_reason() {
    let (lab, g1, _) = setup("cd");
    let file = lab.path("drops.pcapng");
    let c = capture(&lab, &["g1", "--drops", "--direction", "in", "-c", "6", "-w", file.to_str().unwrap()]);
    std::thread::sleep(Duration::from_millis(300));
    // g1 claims an address that is not its own: port security drops its ARP and IP.
    let ifname = lab.name("g1");
    ok(&["ip", "-n", &g1, "addr", "add", "10.1.1.99/24", "dev", &ifname]);
    let _ = lab.exec(&g1, &["ping", "-c", "3", "-i", "0.3", "-W", "1", "-I", "10.1.1.99", "10.1.1.12"]);
    // And some that pass.
    let _ = lab.exec(&g1, &["ping", "-c", "6", "-i", "0.2", "10.1.1.12"]);
    let (ok, _, err) = finish(c);
    assert!(ok, "{err}");
    let text = tcpdump(&file);
    assert!(text.contains("10.1.1.99"), "the spoofed frames are in the capture: {text}");
    let bytes = std::fs::read(&file).unwrap();
    let comment = b"dropped: spoofed_ip";
    assert!(bytes.windows(comment.len()).any(|w| w == comment), "no drop reason in the capture:\n{text}");
    assert!(lab.drops("g1", "spoofed_ip") > 0);
}

#[test]
fn a_missing_port_is_refused_and_a_terminal_gets_no_binary() {
    let (mut lab, _, _) = setup("cx");
    let sock = lab.path("ctl.sock");
    let o = run(&[bin(), "ctl", "-s", sock.to_str().unwrap(), "capture", "nope", "-c", "1", "-w", lab.path("x").to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("no port named \"nope\""), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(lab.vrouter_alive());
}
