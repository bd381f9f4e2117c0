//! The lease log on a disk that is full: vrouter's `state_dir` is a tmpfs of 64 KiB made by
//! the test and filled up (the log, empty, has no page to write into). While it is full, no
//! lease is acknowledged (a busybox udhcpc gets nothing) and `ctl show leases` and the log say
//! why; once space is freed the writer's retry succeeds and the clients get their leases.
//! (A renewal answered from the disk's copy while the log fails is a unit test of the DHCP
//! core: on tmpfs an append that fits the log's last page succeeds even on a full disk.) After `kill -9` and a restart with a config that puts a
//! new network before the others, every acknowledged lease is in the log, with its network, and
//! no address was given twice.

mod common;
use common::*;
use std::path::PathBuf;
use std::time::Duration;

/// A tmpfs mounted for the test, unmounted (lazily, so a straggler cannot keep it) on drop.
struct Tiny(PathBuf);

impl Tiny {
    fn mount(at: PathBuf, size: &str) -> Tiny {
        std::fs::create_dir_all(&at).unwrap();
        ok(&["mount", "-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs", at.to_str().unwrap()]);
        Tiny(at)
    }

    /// Fills the filesystem with `fill` until the kernel refuses.
    fn fill(&self) {
        let f = self.0.join("fill");
        let o = run(&["dd", "if=/dev/zero", &format!("of={}", f.display()), "bs=4096"]);
        assert!(!o.status.success(), "dd should have hit ENOSPC");
        // Not one more page: appending to a new page of the log must fail.
        assert!(std::fs::OpenOptions::new().create(true).append(true).open(self.0.join("probe")).and_then(|mut p| {
            use std::io::Write;
            p.write_all(&[0; 4096])?;
            p.sync_all()
        })
        .is_err());
        let _ = std::fs::remove_file(self.0.join("probe"));
    }

    fn free(&self) {
        std::fs::remove_file(self.0.join("fill")).unwrap();
    }
}

impl Drop for Tiny {
    fn drop(&mut self) {
        let _ = run(&["umount", "-l", self.0.to_str().unwrap()]);
    }
}

fn config(lab: &Lab, first: &str) -> String {
    let mut c = cfg::router(&lab.id);
    c += first;
    c += &cfg::l3_network("web", "10.1.1.0/24", "10.1.1.1", "dhcp_range = [\"10.1.1.100\", \"10.1.1.199\"]\nlease_secs = 600\n");
    for (i, p) in ["c1", "c2", "c3"].iter().enumerate() {
        c += &cfg::port(p, "web", "tap", &lab.name(p), &format!("52:54:00:60:01:1{i}"), "");
    }
    c
}

/// One udhcpc run that must fail (no lease within about three seconds).
fn no_lease(lab: &Lab, ns: &str, ifname: &str) {
    let script = udhcpc_script(lab);
    let o = lab.exec(ns, &["env", "ENVFILE=/dev/null", "busybox", "udhcpc", "-i", ifname, "-f", "-q", "-n", "-t", "3", "-T", "1", "-s", &script]);
    assert!(!o.status.success(), "a lease was acknowledged while the log could not be written: {}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
}

#[test]
fn no_lease_is_acknowledged_that_is_not_on_disk() {
    let mut lab = Lab::new("ld");
    let tiny = Tiny::mount(lab.path("state"), "64k");
    // The disk is full before the first lease: the log is empty and cannot grow.
    tiny.fill();
    lab.vrouter(&config(&lab, ""));
    let n1 = lab.bare_guest("n1", "c1");
    let n2 = lab.bare_guest("n2", "c2");
    let n3 = lab.bare_guest("n3", "c3");
    let (i1, i2, i3) = (lab.name("c1"), lab.name("c2"), lab.name("c3"));

    // c1 and c2 ask and get nothing; the log and `show leases` say why.
    no_lease(&lab, &n1, &i1);
    no_lease(&lab, &n2, &i2);
    let l = lab.show("leases");
    assert_eq!(l["store"]["ok"], false, "{l}");
    assert!(l["store"]["error"].as_str().unwrap_or("").contains("No space left"), "{l}");
    assert!(l["counters"]["ignored_store_failing"].as_u64().unwrap_or(0) > 0, "{l}");
    assert_eq!(l["counters"]["acks"], 0, "{l}");
    assert!(lab.log().contains("lease log write failed"), "{}", lab.log());
    let text = ok(&[bin(), "ctl", "-s", lab.path("ctl.sock").to_str().unwrap(), "show", "leases"]);
    assert!(text.contains("lease log: FAILING"), "{text}");

    // Space comes back: the writer's retry succeeds and clients are served again.
    tiny.free();
    wait_for("the lease log to write again", Duration::from_secs(10), || lab.show("leases")["store"]["ok"] == true);
    let a1 = udhcpc(&lab, &n1, &i1, &[]).get("ip").cloned().unwrap_or_default();
    let a2 = udhcpc(&lab, &n2, &i2, &[]).get("ip").cloned().unwrap_or_default();
    let a3 = udhcpc(&lab, &n3, &i3, &[]).get("ip").cloned().unwrap_or_default();
    let mut all = vec![a1.clone(), a2.clone(), a3.clone()];
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 3, "an address was acknowledged twice: {a1} {a2} {a3}");

    // kill -9; every acknowledged lease is in the log, intact and keyed by network name.
    signal(lab.vrouter_pid(), "KILL");
    wait_for("vrouter to die", Duration::from_secs(5), || !lab.vrouter_alive());
    let log = std::fs::read_to_string(lab.path("state/leases.log")).unwrap();
    for (ip, mac) in [(&a1, "52:54:00:60:01:10"), (&a2, "52:54:00:60:01:11"), (&a3, "52:54:00:60:01:12")] {
        assert!(log.lines().any(|l| l.starts_with(&format!("lease web {ip} {mac} "))), "{ip} {mac} not in the log:\n{log}");
    }
    assert!(!log.lines().any(|l| l.starts_with("bind ")), "{log}");

    // Restart with a network inserted before `web`: the leases stay with `web`.
    let _ = std::fs::remove_file(lab.path("ctl.sock"));
    let first = cfg::l3_network("aaa", "10.1.9.0/24", "10.1.9.1", "dhcp_range = [\"10.1.9.100\", \"10.1.9.199\"]\n");
    lab.vrouter(&config(&lab, &first));
    let rows = lab.show("leases")["leases"].as_array().cloned().unwrap_or_default();
    for ip in [&a1, &a2, &a3] {
        assert!(rows.iter().any(|r| r["ip"] == ip.as_str() && r["network"] == "web" && r["state"] == "bound"), "{ip}: {rows:?}");
    }
    assert_eq!(rows.len(), 3, "{rows:?}");
    // And they are honoured: c1 (its tap made anew by the new vrouter) gets its own back.
    wait_for("the new tap", Duration::from_secs(5), || run(&["ip", "link", "show", &i1]).status.success());
    ok(&["ip", "link", "set", &i1, "netns", &n1]);
    ok(&["ip", "-n", &n1, "link", "set", &i1, "up"]);
    let c1 = udhcpc(&lab, &n1, &i1, &["-r", &a1]).get("ip").cloned().unwrap_or_default();
    assert_eq!(c1, a1);
    let counters = lab.show("leases")["counters"].clone();
    assert_eq!(counters["naks"], 0, "{counters}");
    drop(tiny);
}
