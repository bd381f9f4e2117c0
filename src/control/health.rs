//! Router health, in the spirit of CloudStack's VR health checks: each check looks at one
//! thing the running router can see (its ports, the public gateway, DNS upstreams, DHCP pools,
//! conntrack, the lease log, load-balancer pools, the config file, the datapath loop) and says
//! what it saw. Pure: the I/O edge gathers a [`HealthInput`], [`evaluate`] judges it.
//!
//! The overall status is the worst check's: `ok` (exit 0), `degraded` (1), `failing` (2).

use crate::router::neigh::NeighState;
use serde::Serialize;
use std::net::Ipv4Addr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok = 0,
    Degraded = 1,
    Failing = 2,
}

/// One check's verdict and what it saw.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub check: &'static str,
    pub status: Status,
    pub detail: String,
}

/// A port as the I/O edge sees it.
#[derive(Debug, Clone)]
pub struct PortHealth {
    pub name: String,
    /// `up`, `waiting` (its interface is gone), or a VXLAN peer's `up`/`unreachable`/`unknown`.
    pub state: String,
    pub waiting_secs: Option<u64>,
}

/// A load balancer's pool.
#[derive(Debug, Clone)]
pub struct PoolHealth {
    pub name: String,
    pub up: usize,
    pub total: usize,
}

/// Everything the checks look at, gathered by the I/O edge.
#[derive(Debug, Clone)]
pub struct HealthInput {
    pub ports: Vec<PortHealth>,
    pub public_gateway: Option<(Ipv4Addr, NeighState)>,
    /// DNS forwarding: whether upstreams are configured, seconds since the last answer and
    /// since the last timeout (`None`: never).
    pub dns: Option<(bool, Option<u64>, Option<u64>)>,
    /// (network, leases bound, addresses it may hand out).
    pub pools: Vec<(String, u64, u64)>,
    /// (flows, limit).
    pub conntrack: (usize, usize),
    /// `Some(None)`: the lease log writes; `Some(Some(why))`: it does not; `None`: no DHCP.
    pub lease_log: Option<Option<String>>,
    pub lb: Vec<PoolHealth>,
    /// Whether the config file on disk is the running one (`Err`: it cannot be read).
    pub config_same: Result<bool, String>,
    /// Milliseconds since the datapath loop last turned.
    pub heartbeat_ms: u64,
    /// A pool or table at or past this percentage of its size is degraded.
    pub full_percent: u8,
}

/// How long the datapath loop may go without a turn (it wakes at least once a second).
pub const STALL_MS: u64 = 3_000;

fn check(check: &'static str, status: Status, detail: impl Into<String>) -> Check {
    Check { check, status, detail: detail.into() }
}

fn pct(used: u64, size: u64) -> u64 {
    used.saturating_mul(100).checked_div(size).unwrap_or(0)
}

/// Judges every check.
pub fn evaluate(h: &HealthInput) -> Vec<Check> {
    let full = h.full_percent as u64;
    let mut out = Vec::new();

    let bad: Vec<String> = h
        .ports
        .iter()
        .filter(|p| p.state != "up")
        .map(|p| match p.waiting_secs {
            Some(s) => format!("{} {} for {s} s", p.name, p.state),
            None => format!("{} {}", p.name, p.state),
        })
        .collect();
    out.push(if bad.is_empty() {
        check("ports", Status::Ok, format!("{} port(s) up", h.ports.len()))
    } else {
        check("ports", Status::Degraded, bad.join("; "))
    });

    out.push(match h.public_gateway {
        None => check("public_gateway", Status::Ok, "no public side"),
        Some((gw, NeighState::Reachable { confirmed_secs })) => check("public_gateway", Status::Ok, format!("{gw} answered ARP {confirmed_secs} s ago")),
        Some((gw, NeighState::Resolving | NeighState::Unknown)) => check("public_gateway", Status::Degraded, format!("{gw}: ARP asked, no answer yet")),
        Some((gw, NeighState::Failed)) => check("public_gateway", Status::Failing, format!("{gw} does not answer ARP")),
    });

    out.push(match h.dns {
        None => check("dns_upstreams", Status::Ok, "DNS not served"),
        Some((false, _, _)) => check("dns_upstreams", Status::Ok, "no upstreams configured (local names only)"),
        Some((true, answer, timeout)) => match (answer, timeout) {
            (_, None) => check("dns_upstreams", Status::Ok, answer.map_or("no query forwarded yet".into(), |a| format!("last answer {a} s ago"))),
            (Some(a), Some(t)) if a <= t => check("dns_upstreams", Status::Ok, format!("last answer {a} s ago (a timeout {t} s ago)")),
            (Some(a), Some(t)) => check("dns_upstreams", Status::Degraded, format!("a query timed out {t} s ago, no answer since (last {a} s ago)")),
            (None, Some(t)) => check("dns_upstreams", Status::Degraded, format!("queries time out (last {t} s ago); no upstream has answered")),
        },
    });

    if h.pools.is_empty() {
        out.push(check("dhcp_pools", Status::Ok, "DHCP not served"));
    } else {
        let worst = h.pools.iter().map(|(_, b, s)| if *s > 0 && b >= s { Status::Failing } else if pct(*b, *s) >= full { Status::Degraded } else { Status::Ok }).max().unwrap_or(Status::Ok);
        let detail = h
            .pools
            .iter()
            .map(|(n, b, s)| if *s == 0 { format!("{n}: reservations only") } else { format!("{n}: {b} of {s} ({} %)", pct(*b, *s)) })
            .collect::<Vec<_>>()
            .join("; ");
        out.push(check("dhcp_pools", worst, detail));
    }

    let (flows, max) = h.conntrack;
    let p = pct(flows as u64, max as u64);
    out.push(check("conntrack", if p >= full { Status::Degraded } else { Status::Ok }, format!("{flows} of {max} flows ({p} %)")));

    out.push(match &h.lease_log {
        None => check("lease_log", Status::Ok, "no DHCP leases to keep"),
        Some(None) => check("lease_log", Status::Ok, "writing and fsyncing"),
        Some(Some(why)) => check("lease_log", Status::Failing, format!("cannot be written: {why}")),
    });

    if h.lb.is_empty() {
        out.push(check("load_balancers", Status::Ok, "none configured"));
    } else {
        let worst = h.lb.iter().map(|l| if l.up == 0 { Status::Failing } else if l.up < l.total { Status::Degraded } else { Status::Ok }).max().unwrap_or(Status::Ok);
        let detail = h.lb.iter().map(|l| format!("{}: {} of {} up", l.name, l.up, l.total)).collect::<Vec<_>>().join("; ");
        out.push(check("load_balancers", worst, detail));
    }

    out.push(match &h.config_same {
        Ok(true) => check("config", Status::Ok, "the file on disk is the running config"),
        Ok(false) => check("config", Status::Degraded, "the file on disk differs from the running config (not applied)"),
        Err(e) => check("config", Status::Degraded, format!("the config file cannot be read: {e}")),
    });

    out.push(if h.heartbeat_ms < STALL_MS {
        check("datapath", Status::Ok, format!("loop turned {} ms ago", h.heartbeat_ms))
    } else {
        check("datapath", Status::Failing, format!("loop has not turned for {} ms", h.heartbeat_ms))
    });
    out
}

/// The worst status of the checks.
pub fn overall(checks: &[Check]) -> Status {
    checks.iter().map(|c| c.status).max().unwrap_or(Status::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy() -> HealthInput {
        HealthInput {
            ports: vec![PortHealth { name: "g1".into(), state: "up".into(), waiting_secs: None }],
            public_gateway: Some(("203.0.113.1".parse().unwrap(), NeighState::Reachable { confirmed_secs: 3 })),
            dns: Some((true, Some(5), None)),
            pools: vec![("web".into(), 10, 100)],
            conntrack: (10, 1000),
            lease_log: Some(None),
            lb: vec![PoolHealth { name: "web".into(), up: 2, total: 2 }],
            config_same: Ok(true),
            heartbeat_ms: 20,
            full_percent: 90,
        }
    }

    fn status_of(h: &HealthInput, name: &str) -> Status {
        evaluate(h).into_iter().find(|c| c.check == name).unwrap().status
    }

    #[test]
    fn each_check_says_what_it_saw() {
        let h = healthy();
        let c = evaluate(&h);
        assert_eq!(overall(&c), Status::Ok, "{c:?}");
        assert_eq!(c.len(), 9);
        let mut h2 = h.clone();
        h2.ports[0] = PortHealth { name: "up1".into(), state: "waiting".into(), waiting_secs: Some(12) };
        assert_eq!(status_of(&h2, "ports"), Status::Degraded);
        assert!(evaluate(&h2)[0].detail.contains("up1 waiting for 12 s"));
        let mut h3 = h.clone();
        h3.public_gateway = Some(("203.0.113.1".parse().unwrap(), NeighState::Failed));
        assert_eq!(overall(&evaluate(&h3)), Status::Failing);
        let mut h4 = h.clone();
        h4.pools = vec![("web".into(), 91, 100)];
        h4.conntrack = (950, 1000);
        assert_eq!(status_of(&h4, "dhcp_pools"), Status::Degraded);
        assert_eq!(status_of(&h4, "conntrack"), Status::Degraded);
        h4.pools = vec![("web".into(), 100, 100)];
        assert_eq!(status_of(&h4, "dhcp_pools"), Status::Failing);
        let mut h5 = h.clone();
        h5.dns = Some((true, Some(30), Some(2)));
        assert_eq!(status_of(&h5, "dns_upstreams"), Status::Degraded);
        h5.lease_log = Some(Some("No space left on device".into()));
        assert_eq!(status_of(&h5, "lease_log"), Status::Failing);
        h5.lb = vec![PoolHealth { name: "web".into(), up: 0, total: 2 }];
        assert_eq!(status_of(&h5, "load_balancers"), Status::Failing);
        h5.config_same = Ok(false);
        assert_eq!(status_of(&h5, "config"), Status::Degraded);
        h5.heartbeat_ms = 5_000;
        assert_eq!(status_of(&h5, "datapath"), Status::Failing);
    }
}
