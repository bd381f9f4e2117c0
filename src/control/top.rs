//! `ctl top`: a live view of the router, like `iftop` for its ports. Pure: [`Sample`]s are
//! read from `show stats` answers, [`render`] turns two of them into a screen of per-port
//! packets/s and bit/s both ways, drops/s by reason, flows, leases and load-balancer backends.
//! The terminal (raw mode, the `q` key, the refresh) is the binary's.

use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Write;

/// One port's counters at one moment.
#[derive(Debug, Clone, Default)]
pub struct PortSample {
    pub name: String,
    pub rx_frames: u64,
    pub rx_bytes: u64,
    pub tx_frames: u64,
    pub tx_bytes: u64,
    pub drops: BTreeMap<String, u64>,
}

/// What one refresh reads.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    /// Seconds, monotonic (the client's clock).
    pub at: f64,
    pub ports: Vec<PortSample>,
    pub flows: u64,
    pub max_flows: u64,
    /// (network, bound, pool size), if DHCP is served.
    pub leases: Vec<(String, u64, u64)>,
    /// (load balancer, backend, state, active connections).
    pub backends: Vec<(String, String, String, u64)>,
}

impl Sample {
    /// From `show stats` (and, when served, `show leases` and `show lb`) answers.
    pub fn from_json(at: f64, stats: &Value, leases: Option<&Value>, lb: Option<&Value>) -> Sample {
        let u = |v: &Value| v.as_u64().unwrap_or(0);
        let ports = stats["ports"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|p| PortSample {
                        name: p["name"].as_str().unwrap_or("?").to_string(),
                        rx_frames: u(&p["rx_frames"]),
                        rx_bytes: u(&p["rx_bytes"]),
                        tx_frames: u(&p["tx_frames"]),
                        tx_bytes: u(&p["tx_bytes"]),
                        drops: p["drops"].as_object().map(|m| m.iter().map(|(k, v)| (k.clone(), u(v))).collect()).unwrap_or_default(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mut leases_by_net: BTreeMap<String, u64> = BTreeMap::new();
        if let Some(rows) = leases.and_then(|l| l["leases"].as_array()) {
            for r in rows.iter().filter(|r| r["state"] == "bound") {
                *leases_by_net.entry(r["network"].as_str().unwrap_or("?").to_string()).or_default() += 1;
            }
        }
        let backends = lb
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .flat_map(|l| {
                        let name = l["name"].as_str().unwrap_or("?").to_string();
                        l["backends"].as_array().cloned().unwrap_or_default().into_iter().map(move |b| {
                            (name.clone(), format!("{}:{}", b["ip"].as_str().unwrap_or("?"), b["port"]), b["state"].as_str().unwrap_or("?").to_string(), u(&b["active"]))
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        Sample {
            at,
            ports,
            flows: u(&stats["conntrack"]["flows"]),
            max_flows: u(&stats["conntrack"]["max"]),
            leases: leases_by_net.into_iter().map(|(n, b)| (n, b, 0)).collect(),
            backends,
        }
    }
}

/// 1234567 -> "1.23M".
pub fn human(v: f64) -> String {
    let (d, s) = if v >= 1e9 {
        (1e9, "G")
    } else if v >= 1e6 {
        (1e6, "M")
    } else if v >= 1e3 {
        (1e3, "k")
    } else {
        return format!("{v:.0}");
    };
    format!("{:.2}{s}", v / d)
}

/// The screen for the interval from `prev` to `cur` (`title`: the router and socket).
pub fn render(title: &str, prev: &Sample, cur: &Sample) -> String {
    let dt = (cur.at - prev.at).max(1e-3);
    let rate = |a: u64, b: u64| b.saturating_sub(a) as f64 / dt;
    let mut s = String::new();
    let _ = writeln!(s, "vrouter top: {title}   (every {dt:.1} s; q quits)");
    let _ = writeln!(s);
    let _ = writeln!(s, "{:<16} {:>10} {:>10} {:>10} {:>10} {:>9}", "PORT", "RX pkt/s", "RX bit/s", "TX pkt/s", "TX bit/s", "drops/s");
    let mut drops: BTreeMap<String, f64> = BTreeMap::new();
    for p in &cur.ports {
        let q = prev.ports.iter().find(|x| x.name == p.name).cloned().unwrap_or_default();
        let d: u64 = p.drops.values().sum::<u64>().saturating_sub(q.drops.values().sum());
        for (k, v) in &p.drops {
            let r = rate(q.drops.get(k).copied().unwrap_or(0), *v);
            if r > 0.0 {
                *drops.entry(k.clone()).or_default() += r;
            }
        }
        let _ = writeln!(
            s,
            "{:<16} {:>10} {:>10} {:>10} {:>10} {:>9}",
            p.name,
            human(rate(q.rx_frames, p.rx_frames)),
            human(rate(q.rx_bytes, p.rx_bytes) * 8.0),
            human(rate(q.tx_frames, p.tx_frames)),
            human(rate(q.tx_bytes, p.tx_bytes) * 8.0),
            human(d as f64 / dt)
        );
    }
    let _ = writeln!(s);
    if drops.is_empty() {
        let _ = writeln!(s, "drops/s: none");
    } else {
        let list: Vec<String> = drops.iter().map(|(k, v)| format!("{k}={}", human(*v))).collect();
        let _ = writeln!(s, "drops/s: {}", list.join(" "));
    }
    let _ = writeln!(s, "flows: {} of {}", cur.flows, cur.max_flows);
    if !cur.leases.is_empty() {
        let list: Vec<String> = cur.leases.iter().map(|(n, b, _)| format!("{n}={b}")).collect();
        let _ = writeln!(s, "leases bound: {}", list.join(" "));
    }
    for (lb, b, st, active) in &cur.backends {
        let _ = writeln!(s, "lb {lb} {b}: {st}, {active} active");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_between_two_samples() {
        let stats = |rx: u64, bytes: u64, drop: u64| serde_json::json!({
            "ports": [{"name": "g1", "rx_frames": rx, "rx_bytes": bytes, "tx_frames": 0, "tx_bytes": 0, "drops": {"spoofed_ip": drop}}],
            "conntrack": {"flows": 3, "max": 100}
        });
        let a = Sample::from_json(10.0, &stats(100, 1_000, 0), None, None);
        let b = Sample::from_json(12.0, &stats(2_100, 2_501_000, 4), None, None);
        let screen = render("acct", &a, &b);
        let line = screen.lines().find(|l| l.starts_with("g1")).unwrap();
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cols[1..], ["1.00k", "10.00M", "0", "0", "2"], "{screen}");
        assert!(screen.contains("drops/s: spoofed_ip=2"));
        assert!(screen.contains("flows: 3 of 100"));
        assert_eq!(human(999.0), "999");
        assert_eq!(human(1_500_000_000.0), "1.50G");
    }
}
