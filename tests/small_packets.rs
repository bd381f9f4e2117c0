//! Small frames written in bursts (io::txq): to a tap with io_uring and with one write per
//! frame, and to a packet socket (a `netdev` port) with sendmmsg, a burst arrives whole and in
//! order, the port's sent counter equals what the guest's kernel took, and writes that fail
//! (the guest's NIC down) move from sent to dropped. Under a flood the loop pauses to take
//! frames in bursts (receive coalescing); pings never make it pause.

mod common;
use common::*;
use std::time::Duration;

#[derive(Clone, Copy, PartialEq)]
enum Egress {
    TapUring,
    TapWrite,
    /// a2 is a `netdev` port on a veth whose peer is the guest's NIC; vrouter runs in a host
    /// namespace of its own.
    Netdev,
}

fn config(lab: &Lab, e: Egress) -> String {
    let kind = if e == Egress::Netdev { "netdev" } else { "tap" };
    [
        cfg::router(&lab.id),
        format!("io_uring = {}\n", e != Egress::TapWrite),
        cfg::network("n", "10.7.1.0/24", None),
        cfg::port("a1", "n", "tap", &lab.name("a1"), "52:54:00:70:01:11", ""),
        cfg::port("a2", "n", kind, &lab.name("a2"), "52:54:00:70:01:12", ""),
    ]
    .concat()
}

/// Numbered datagrams to 10.7.1.12:9000, as fast as Python sends them.
const SEND: &str = "import socket,struct,sys\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\nfor i in range(int(sys.argv[1]), int(sys.argv[2])):\n    try: s.sendto(struct.pack('!Q', i), ('10.7.1.12', 9000))\n    except OSError: pass\n";

/// Receives numbered datagrams until `ready` and then 1.5 s of silence; prints how many
/// arrived and how many came after a higher number.
const RECV: &str = "import socket,struct,sys,os\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.setsockopt(socket.SOL_SOCKET, 33, 64<<20)\ns.bind(('10.7.1.12', 9000))\nopen(sys.argv[1],'w').close()\ns.settimeout(20)\nn=0; late=0; last=-1\nwhile True:\n    try: d=s.recv(64)\n    except socket.timeout: break\n    s.settimeout(1.5)\n    i=struct.unpack('!Q', d)[0]\n    n+=1\n    if i < last: late+=1\n    last=max(last,i)\nprint(n, late)\n";

fn sysfs(lab: &Lab, ns: &str, ifname: &str, what: &str) -> u64 {
    let o = lab.exec(ns, &["cat", &format!("/sys/class/net/{ifname}/statistics/{what}")]);
    String::from_utf8_lossy(&o.stdout).trim().parse().unwrap()
}

fn port<'a>(st: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    st["ports"].as_array().unwrap().iter().find(|p| p["name"] == name).unwrap()
}

fn bursts_arrive_whole_in_order_and_failures_are_counted(tag: &str, e: Egress) {
    let mut lab = Lab::new(tag);
    let (i1, i2) = (lab.name("a1"), lab.name("a2"));
    let (a1, a2, host) = if e == Egress::Netdev {
        let (h, a2) = (lab.name("h"), lab.name("n2"));
        for ns in [&h, &a2] {
            ok(&["ip", "netns", "add", ns]);
            lab.adopt_netns(ns.clone());
        }
        ok(&["ip", "link", "add", &i2, "netns", &h, "type", "veth", "peer", "name", &i2, "netns", &a2]);
        lab.vrouter_at("", Some(&h), &config(&lab, e));
        let a1 = host_guest(&mut lab, &h, &i1, "n1", "10.7.1.11/24", None);
        let _ = lab.exec(&a2, &["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
        ok(&["ip", "-n", &a2, "link", "set", &i2, "address", "52:54:00:70:01:12", "mtu", "1450", "up"]);
        ok(&["ip", "-n", &a2, "addr", "add", "10.7.1.12/24", "dev", &i2]);
        (a1, a2, Some(h))
    } else {
        lab.vrouter(&config(&lab, e));
        (lab.guest("n1", &i1, "10.7.1.11/24"), lab.guest("n2", &i2, "10.7.1.12/24"), None)
    };
    assert!(lab.ping(&a1, "10.7.1.12", 5));
    let st = lab.show("stats");
    assert_eq!(st["latency"]["tap_io"], if e == Egress::TapWrite { "write" } else { "io_uring" }, "{}", st["latency"]);

    let ready = lab.path("ready");
    let out = lab.path("recv.out");
    lab.spawn_in(&a2, &["python3", "-c", RECV, ready.to_str().unwrap()], &out);
    wait_for("the receiver", Duration::from_secs(5), || ready.exists());
    // The loop stopped, a burst of 400 datagrams waits in a1's tap queue (500 long); resumed,
    // the loop reads them in one turn and writes them to a2 together.
    let pid = lab.vrouter_pid();
    signal(pid, "STOP");
    let o = lab.exec(&a1, &["python3", "-c", SEND, "0", "400"]);
    signal(pid, "CONT");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Then a flood: more than the loop reads in a turn, so turns end with full bursts.
    let o = lab.exec(&a1, &["python3", "-c", SEND, "400", "60400"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    wait_for("the receiver's report", Duration::from_secs(30), || std::fs::read_to_string(&out).is_ok_and(|s| s.trim().contains(' ')));
    let report = std::fs::read_to_string(&out).unwrap();
    let (got, late): (u64, u64) = {
        let mut w = report.split_whitespace().map(|x| x.parse().unwrap());
        (w.next().unwrap(), w.next().unwrap())
    };
    assert_eq!(late, 0, "datagrams out of order: {report}");
    assert!(got >= 400, "the stopped loop's burst did not arrive: {report}");

    let st = lab.show("stats");
    let burst = &st["latency"]["tx_burst"];
    assert!(burst["max"].as_u64().unwrap() >= 100, "no burst of small frames: {burst}");
    let text = ok(&[bin(), "ctl", "-s", lab.path("ctl.sock").to_str().unwrap(), "show", "stats"]);
    let mode = if e == Egress::TapWrite { "write" } else { "io_uring" };
    assert!(text.contains(&format!("small-frame bursts to taps by {mode}: ")), "{text}");
    // Every frame counted as sent to a2 is one a2's kernel took, and the other way round (a
    // veth drops what it is given while its peer is down on its own counter, and says nothing).
    let tx = port(&st, "a2")["tx_frames"].as_u64().unwrap();
    let veth_dropped = host.as_ref().map_or(0, |h| sysfs(&lab, h, &i2, "tx_dropped"));
    assert_eq!(tx, sysfs(&lab, &a2, &i2, "rx_packets") + veth_dropped, "a2: vrouter's sent against the guest's received");
    assert_eq!(port(&st, "a2")["drops"]["port_down"].as_u64().unwrap_or(0), 0);
    if e == Egress::Netdev {
        // A veth whose peer is down takes a frame and drops it on its own counter: the socket
        // reports nothing for vrouter to count.
        return;
    }

    // a2's NIC down: the tap refuses writes; each frame queued for it is a drop, not a send.
    ok(&["ip", "-n", &a2, "link", "set", &i2, "down"]);
    let o = lab.exec(&a1, &["python3", "-c", SEND, "0", "300"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut st = lab.show("stats");
    wait_for("drops at a2", Duration::from_secs(5), || {
        st = lab.show("stats");
        port(&st, "a2")["drops"]["port_down"].as_u64().unwrap_or(0) >= 300
    });
    assert_eq!(port(&st, "a2")["tx_frames"].as_u64().unwrap(), tx, "frames to a NIC that is down counted as sent");
    ok(&["ip", "-n", &a2, "link", "set", &i2, "up"]);
    assert!(lab.ping(&a1, "10.7.1.12", 5), "a2 back");
}

#[test]
fn io_uring_bursts_arrive_whole_in_order_and_failures_are_counted() {
    bursts_arrive_whole_in_order_and_failures_are_counted("su", Egress::TapUring);
}

#[test]
fn write_per_frame_bursts_arrive_whole_in_order_and_failures_are_counted() {
    bursts_arrive_whole_in_order_and_failures_are_counted("sw", Egress::TapWrite);
}

#[test]
fn sendmmsg_bursts_to_a_netdev_port_arrive_whole_and_in_order() {
    bursts_arrive_whole_in_order_and_failures_are_counted("sm", Egress::Netdev);
}

/// 50 bursts of 2000 numbered datagrams to 10.7.1.12:9000, 10 ms apart.
const BURSTS: &str = "import socket,struct,time\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\nfor b in range(50):\n    for i in range(b*2000, b*2000+2000):\n        try: s.sendto(struct.pack('!Q', i), ('10.7.1.12', 9000))\n        except OSError: pass\n    time.sleep(0.01)\n";

/// Receive coalescing (io::coalesce): pings never make the loop pause; a flood does, and its
/// frames still arrive whole and in order; `coalesce_us = 0`, applied live, stops it.
#[test]
fn a_flood_is_taken_in_bursts_and_pings_never_wait() {
    let mut lab = Lab::new("sc");
    let (i1, i2) = (lab.name("a1"), lab.name("a2"));
    lab.vrouter(&config(&lab, Egress::TapUring));
    let (a1, a2) = (lab.guest("n1", &i1, "10.7.1.11/24"), lab.guest("n2", &i2, "10.7.1.12/24"));
    let pauses = |lab: &Lab| {
        let st = lab.show("stats");
        (st["latency"]["rx_coalesce"]["pauses"].as_u64().unwrap(), st["latency"]["rx_coalesce"]["busy_windows"].as_u64().unwrap())
    };
    assert!(lab.ping(&a1, "10.7.1.12", 5));
    let o = lab.exec(&a1, &["ping", "-q", "-c", "50", "-i", "0.01", "10.7.1.12"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    assert_eq!(pauses(&lab), (0, 0), "pings made the loop pause");

    let flood = |lab: &mut Lab, tag: &str| -> (u64, u64) {
        let ready = lab.path(&format!("ready{tag}"));
        let out = lab.path(&format!("recv{tag}.out"));
        lab.spawn_in(&a2, &["python3", "-c", RECV, ready.to_str().unwrap()], &out);
        wait_for("the receiver", Duration::from_secs(5), || ready.exists());
        // Bursts of 2000 as fast as Python sends them, 10 ms apart: the end of every burst
        // finds the loop draining continuous input, however fast this build of it is.
        let o = lab.exec(&a1, &["python3", "-c", BURSTS]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        wait_for("the receiver's report", Duration::from_secs(30), || std::fs::read_to_string(&out).is_ok_and(|s| s.trim().contains(' ')));
        let report = std::fs::read_to_string(&out).unwrap();
        let mut w = report.split_whitespace().map(|x| x.parse().unwrap());
        (w.next().unwrap(), w.next().unwrap())
    };
    let (got, late) = flood(&mut lab, "1");
    assert_eq!(late, 0, "datagrams out of order");
    let (p, busy) = pauses(&lab);
    let text = ok(&[bin(), "ctl", "-s", lab.path("ctl.sock").to_str().unwrap(), "show", "stats"]);
    assert!(text.contains(&format!("receive coalescing: {p} pauses, {busy} ms of continuous small UDP input")), "{text}");
    assert!(p > 0 && busy > 0, "a flood of {got} datagrams (of 100000) made no pause: {p} pauses, {busy} busy windows");
    // Every frame the guest's kernel took was one vrouter counted as sent, pauses or not.
    let st = lab.show("stats");
    assert_eq!(port(&st, "a2")["tx_frames"].as_u64().unwrap(), sysfs(&lab, &a2, &i2, "rx_packets"));

    // Off, live: no more pauses.
    let cfg = lab.path("vrouter.toml");
    let text = std::fs::read_to_string(&cfg).unwrap().replacen("[router]\n", "[router]\ncoalesce_us = 0\n", 1);
    std::fs::write(&cfg, text).unwrap();
    ok(&[bin(), "ctl", "-s", lab.path("ctl.sock").to_str().unwrap(), "reload"]);
    let (before, _) = pauses(&lab);
    let (_, late) = flood(&mut lab, "2");
    assert_eq!(late, 0);
    assert_eq!(pauses(&lab).0, before, "coalesce_us = 0 still paused");
}
