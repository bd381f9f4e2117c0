//! Seeing inside a running router: a real Prometheus server (Debian's) scrapes vrouter's
//! metrics endpoint and answers a per-port rate query through its HTTP API; `ctl health`
//! turns degraded when an uplink's interface is deleted and healthy again when it returns.

mod common;
use common::*;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

/// A free loopback port (bound and released: a small race, harmless here).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `GET path` on 127.0.0.1:port; the body, if the status is 200.
fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes()).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_string()).or_else(|| head.starts_with("HTTP/1.0 200").then(|| body.to_string()))
}

fn base(lab: &Lab, metrics: u16) -> String {
    [
        cfg::router(&lab.id),
        format!("metrics_listen = \"127.0.0.1:{metrics}\"\n"),
        cfg::network("web", "10.1.1.0/24", Some(101)),
        cfg::port("g1", "web", "tap", &lab.name("g1"), "52:54:00:70:01:11", "ip = \"10.1.1.11\""),
        cfg::port("g2", "web", "tap", &lab.name("g2"), "52:54:00:70:01:12", "ip = \"10.1.1.12\""),
    ]
    .concat()
}

#[test]
fn prometheus_scrapes_and_answers_a_per_port_rate() {
    let mut lab = Lab::new("pm");
    let metrics = free_port();
    lab.vrouter(&base(&lab, metrics));
    let g1 = lab.guest("n1", &lab.name("g1"), "10.1.1.11/24");
    lab.guest("n2", &lab.name("g2"), "10.1.1.12/24");
    assert!(lab.ping(&g1, "10.1.1.12", 5));

    // The endpoint itself, in Prometheus's conventions.
    wait_for("a published snapshot", Duration::from_secs(5), || http_get(metrics, "/metrics").is_some_and(|b| b.contains("vrouter_port_receive_packets_total{port=\"g1\"")));
    let body = http_get(metrics, "/metrics").unwrap();
    for want in [
        "# TYPE vrouter_port_receive_bytes_total counter",
        "vrouter_port_up{port=\"g1\",mode=\"access\",network=\"web\"} 1",
        "vrouter_fdb_limit{network=\"web\"} 8192",
        "vrouter_conntrack_limit 262144",
        "# TYPE vrouter_frame_processing_seconds histogram",
        "# TYPE vrouter_port_write_seconds histogram",
        "vrouter_rx_coalesce_pauses_total 0",
        "# TYPE vrouter_flow_cache_hits_total counter",
        "vrouter_health_check{check=\"datapath\"} 0",
        "vrouter_build_info{version=",
    ] {
        assert!(body.contains(want), "{want} not in:\n{body}");
    }

    // A real Prometheus scrapes it every second.
    let prom = free_port();
    let conf = lab.path("prometheus.yml");
    std::fs::write(
        &conf,
        format!("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: vrouter\n    static_configs:\n      - targets: ['127.0.0.1:{metrics}']\n"),
    )
    .unwrap();
    let data = lab.path("prom-data");
    lab.spawn_host(
        &[
            "prometheus",
            &format!("--config.file={}", conf.display()),
            &format!("--storage.tsdb.path={}", data.display()),
            &format!("--web.listen-address=127.0.0.1:{prom}"),
        ],
        &lab.path("prometheus.log"),
    );
    // Traffic through g1 while it scrapes.
    let pinger = lab.spawn_in(&g1, &["ping", "-i", "0.1", "-c", "150", "10.1.1.12"], &lab.path("ping.log"));
    let q = "/api/v1/query?query=rate(vrouter_port_receive_packets_total%7Bport%3D%22g1%22%7D%5B5s%5D)";
    let mut last = String::new();
    let got = (0..40).any(|_| {
        std::thread::sleep(Duration::from_millis(500));
        last = http_get(prom, q).unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(&last).unwrap_or_default();
        v["data"]["result"].as_array().and_then(|r| r.first()).and_then(|r| r["value"][1].as_str()).and_then(|s| s.parse::<f64>().ok()).is_some_and(|x| x > 1.0)
    });
    assert!(got, "no per-port rate from Prometheus: {last}\n{}", std::fs::read_to_string(lab.path("prometheus.log")).unwrap_or_default());
    // The scrape target is up as Prometheus sees it.
    let up = http_get(prom, "/api/v1/query?query=up").unwrap_or_default();
    assert!(up.contains("\"1\"]"), "{up}");
    let _ = pinger;
}

fn health(lab: &Lab) -> (i32, serde_json::Value) {
    let o = run(&[bin(), "ctl", "-s", lab.path("ctl.sock").to_str().unwrap(), "health", "--json"]);
    (o.status.code().unwrap_or(-1), serde_json::from_slice(&o.stdout).unwrap_or_default())
}

fn check<'a>(h: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    h["checks"].as_array().unwrap().iter().find(|c| c["check"] == name).unwrap()
}

#[test]
fn health_follows_an_uplink_that_goes_and_comes_back() {
    let mut lab = Lab::new("hl");
    let metrics = free_port();
    let peer = lab.name("pe");
    ok(&["ip", "netns", "add", &peer]);
    lab.adopt_netns(peer.clone());
    let up = lab.name("up");
    let mk = || {
        ok(&["ip", "link", "add", &up, "type", "veth", "peer", "name", "eth0", "netns", &peer]);
        ok(&["ip", "-n", &peer, "link", "set", "eth0", "up"]);
    };
    mk();
    let cfg = base(&lab, metrics) + &format!("[[uplink]]\nname = \"trunk0\"\nkind = \"netdev\"\nifname = \"{up}\"\nnetworks = [\"web\"]\n");
    lab.vrouter(&cfg);
    let (code, h) = health(&lab);
    assert_eq!(code, 0, "{h:#}");
    assert_eq!(h["status"], "ok");
    for c in ["ports", "public_gateway", "dns_upstreams", "dhcp_pools", "conntrack", "lease_log", "load_balancers", "config", "datapath"] {
        assert!(!check(&h, c)["detail"].as_str().unwrap_or("").is_empty(), "{c}: {h:#}");
    }

    // The uplink's interface is deleted: degraded, saying which port and for how long.
    ok(&["ip", "link", "del", &up]);
    wait_for("degraded", Duration::from_secs(10), || health(&lab).0 == 1);
    let (_, h) = health(&lab);
    assert_eq!(h["status"], "degraded");
    let ports = check(&h, "ports");
    assert_eq!(ports["status"], "degraded");
    assert!(ports["detail"].as_str().unwrap().contains("trunk0 waiting"), "{ports}");
    // The same report is a metric.
    wait_for("the health metric", Duration::from_secs(5), || http_get(metrics, "/metrics").is_some_and(|b| b.contains("vrouter_health_check{check=\"ports\"} 1")));
    let text = run(&[bin(), "ctl", "-s", lab.path("ctl.sock").to_str().unwrap(), "health"]);
    assert_eq!(text.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&text.stdout).contains("overall: degraded"));

    // It returns: healthy again.
    mk();
    wait_for("healthy again", Duration::from_secs(10), || health(&lab).0 == 0);

    // The file on disk no longer the running config: degraded, said so.
    let path = lab.path("vrouter.toml");
    let mut t = std::fs::read_to_string(&path).unwrap();
    t.push_str("\n# edited\n");
    std::fs::write(&path, t).unwrap();
    let (code, h) = health(&lab);
    assert_eq!((code, check(&h, "config")["status"].as_str()), (1, Some("degraded")), "{h:#}");
}

/// A tmux server of the test's own (its own socket), killed on drop.
struct Tmux(String);

impl Tmux {
    fn cmd(&self, args: &[&str]) -> std::process::Output {
        let mut a = vec!["tmux", "-L", self.0.as_str()];
        a.extend_from_slice(args);
        run(&a)
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]);
    }
}

#[test]
fn top_shows_a_ports_rate_under_iperf3() {
    let mut lab = Lab::new("tp");
    lab.vrouter(&base(&lab, free_port()));
    let g1 = lab.guest("n1", &lab.name("g1"), "10.1.1.11/24");
    let g2 = lab.guest("n2", &lab.name("g2"), "10.1.1.12/24");
    assert!(lab.ping(&g1, "10.1.1.12", 5));
    let tmux = Tmux(format!("vrouter-{}", lab.id));
    let top = format!("{} ctl -s {} top --interval 0.5", bin(), lab.path("ctl.sock").display());
    let o = tmux.cmd(&["new-session", "-d", "-s", "top", "-x", "160", "-y", "40", &top]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    lab.spawn_in(&g2, &["iperf3", "-s", "-1"], &lab.path("iperf-s.log"));
    std::thread::sleep(Duration::from_millis(300));
    lab.spawn_in(&g1, &["iperf3", "-c", "10.1.1.12", "-t", "8"], &lab.path("iperf-c.log"));
    let mut screen = String::new();
    let busy = (0..30).any(|_| {
        std::thread::sleep(Duration::from_millis(300));
        screen = String::from_utf8_lossy(&tmux.cmd(&["capture-pane", "-p", "-t", "top"]).stdout).into_owned();
        screen.lines().find(|l| l.starts_with("g1 ")).is_some_and(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            // RX bit/s from the iperf3 sender: megabits at least.
            cols.get(2).is_some_and(|c| c.ends_with('M') || c.ends_with('G'))
        })
    });
    assert!(busy, "no rate for g1 on the screen:\n{screen}");
    assert!(screen.contains("flows:") && screen.contains("PORT"), "{screen}");
    // q quits.
    assert!(tmux.cmd(&["send-keys", "-t", "top", "q"]).status.success());
    wait_for("top to quit", Duration::from_secs(5), || !tmux.cmd(&["has-session", "-t", "top"]).status.success());
}
