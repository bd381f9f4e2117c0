//! `ctl diff -f FILE|-`: what applying a config would change, by name, against the running
//! one; nothing is applied, an invalid file gets `file:line: key: message`.

mod common;
use common::*;

#[test]
fn diff_names_what_would_change() {
    let mut lab = Lab::new("df");
    let base = [
        cfg::router(&lab.id),
        cfg::l3_network("web", "10.1.1.0/24", "10.1.1.1", ""),
        cfg::l3_network("db", "10.1.2.0/24", "10.1.2.1", ""),
        cfg::port("a", "web", "tap", &lab.name("a"), "52:54:00:74:01:11", "ip = \"10.1.1.11\""),
    ]
    .concat();
    lab.vrouter(&base);
    let running = std::fs::read_to_string(lab.path("vrouter.toml")).unwrap();
    let sock = lab.path("ctl.sock");
    let diff = |text: &str, args: &[&str]| {
        let f = lab.path("new.toml");
        std::fs::write(&f, text).unwrap();
        let mut a = vec![bin(), "ctl", "-s", sock.to_str().unwrap(), "diff", "-f", f.to_str().unwrap()];
        a.extend_from_slice(args);
        run(&a)
    };
    // The running file itself: no changes.
    let o = diff(&running, &[]);
    assert!(o.status.success());
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "no changes");
    // A port added, a network changed, the other network's position moved.
    let new = running.replace("name = \"db\"\ncidr = \"10.1.2.0/24\"\ngateway = \"10.1.2.1\"\n", "name = \"db\"\ncidr = \"10.1.2.0/24\"\ngateway = \"10.1.2.1\"\nmtu = 1400\n")
        + &cfg::port("b", "db", "tap", &lab.name("b"), "52:54:00:74:02:11", "");
    let o = diff(&new, &["--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let got: Vec<String> = v["changes"].as_array().unwrap().iter().map(|c| format!("{} {} {}", c["op"].as_str().unwrap(), c["kind"].as_str().unwrap(), c["id"].as_str().unwrap())).collect();
    assert_eq!(got, ["change network db", "add port b"], "{v}");
    assert_eq!(v["counts"]["port"]["add"], 1);
    // From stdin, as a table.
    let mut c = std::process::Command::new(bin())
        .args(["ctl", "-s", sock.to_str().unwrap(), "diff", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    c.stdin.take().unwrap().write_all(running.replace("ip = \"10.1.1.11\"", "ip = \"10.1.1.12\"").as_bytes()).unwrap();
    let o = c.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["change", "port", "a"]), "{text}");
    // An invalid file: refused with file:line: key, nothing changes, the router keeps serving.
    let o = diff(&running.replace("cidr = \"10.1.2.0/24\"", "cidr = \"10.1.2.7/24\""), &[]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("new.toml:") && err.contains("network[1].cidr") && err.contains("host bits"), "{err}");
    assert!(lab.vrouter_alive());
    assert_eq!(lab.show("ports").as_array().unwrap().len(), 1, "nothing was applied");
}
