//! What the I/O edge adds to the datapath's snapshots for observability: the ports' attach
//! state, the lease log, the config file, the loop's heartbeat and per-frame latency. Builds
//! the health input and the telemetry snapshot the metrics endpoint serves.

use super::latency::Latency;
use super::Slot;
use crate::control::health::{self, HealthInput, PoolHealth, PortHealth};
use crate::control::telemetry::{self, ConfigInfo, Telemetry};
use crate::datapath::Datapath;
use crate::time::Instant;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Unix time in milliseconds.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// The datapath loop's heartbeat: the unix time (ms) of its last turn. The control thread
/// reads it to tell a stalled loop from a busy one.
pub type Heartbeat = Arc<AtomicU64>;

/// The running config: where it came from and what it was.
pub struct ConfigState {
    pub path: std::path::PathBuf,
    pub hash: String,
    pub loaded_unix: u64,
    pub reloads: u64,
    pub full_percent: u8,
    /// The file's modification time and length when last hashed, and the verdict: the file is
    /// read again only when they change (one stat a second on the loop, not a read).
    pub seen: std::cell::Cell<Option<(std::time::SystemTime, u64, bool)>>,
}

impl ConfigState {
    /// Whether the file on disk is still the running config.
    fn same_on_disk(&self) -> Result<bool, String> {
        let err = |e: std::io::Error| format!("{}: {e}", self.path.display());
        let m = std::fs::metadata(&self.path).map_err(err)?;
        let stamp = (m.modified().map_err(err)?, m.len());
        if let Some((t, l, same)) = self.seen.get() {
            if (t, l) == stamp {
                return Ok(same);
            }
        }
        let same = std::fs::read(&self.path).map(|b| telemetry::fnv64(&b) == self.hash).map_err(err)?;
        self.seen.set(Some((stamp.0, stamp.1, same)));
        Ok(same)
    }
}

/// Each port's state as the I/O edge knows it: a device port `up` or `waiting`, a VXLAN peer
/// its peer state.
pub(super) fn port_states(dp: &Datapath, slots: &[Slot], now: Instant) -> Vec<PortHealth> {
    let by_name: std::collections::HashMap<&str, &Slot> = slots.iter().filter_map(|s| Some((s.open.as_ref()?.name.as_str(), s))).collect();
    dp.show_ports(now)
        .into_iter()
        .map(|row| match by_name.get(row.name.as_str()) {
            Some(s) => PortHealth {
                name: row.name,
                state: s.state().to_string(),
                waiting_secs: s.lost_at.filter(|_| s.dev.is_none()).map(|t| t.elapsed().as_secs()),
            },
            None => PortHealth { name: row.name, state: row.peer.map_or("up", |p| p.state).to_string(), waiting_secs: None },
        })
        .collect()
}

/// Gathers what the health checks look at (probing the public gateway if needed).
pub(super) fn health_input(dp: &mut Datapath, slots: &[Slot], now: Instant, cfg: &ConfigState, beat: &Heartbeat) -> HealthInput {
    let public_gateway = dp.health_probe(now);
    let r = dp.router();
    let secs_ago = |t: Option<Instant>| t.map(|t| now.since(t).as_secs());
    let dns = r.dns_upstream_health().map(|(has, a, t)| (has, secs_ago(a), secs_ago(t)));
    // Only a dynamic pool can run out: reserved addresses are always their VMs'.
    let pools = r.dhcp_pools().into_iter().map(|p| (p.network, p.dynamic_bound, p.dynamic_size)).collect();
    let lease_log = r.serves_any_dhcp().then(|| r.lease_store().0.map(String::from));
    let lb = r
        .lb_rows()
        .into_iter()
        .map(|l| PoolHealth { up: l.backends.iter().filter(|b| b.state == "up").count(), total: l.backends.len(), name: l.name })
        .collect();
    HealthInput {
        ports: port_states(dp, slots, now),
        public_gateway,
        dns,
        pools,
        conntrack: (r.ct.len(), r.ct.max()),
        lease_log,
        lb,
        config_same: cfg.same_on_disk(),
        heartbeat_ms: unix_ms().saturating_sub(beat.load(Ordering::Relaxed)),
        full_percent: cfg.full_percent,
    }
}

/// The snapshot for the metrics endpoint.
#[allow(clippy::too_many_arguments)]
pub(super) fn telemetry(dp: &mut Datapath, slots: &[Slot], now: Instant, cfg: &ConfigState, beat: &Heartbeat, lat: &Latency, router: &str, start_unix: u64, fdb_limit: usize) -> Telemetry {
    let input = health_input(dp, slots, now, cfg, beat);
    let health = health::evaluate(&input);
    let r = dp.router();
    Telemetry {
        router: router.to_string(),
        start_unix,
        stats: Some(dp.show_stats()),
        ports: dp.show_ports(now),
        port_states: input.ports.into_iter().map(|p| p.state).collect(),
        fdb_limit,
        nat: r.ct.translated(),
        dhcp: r.dhcp_counters().map(|c| (c, r.dhcp_pools())),
        dns: r.dns_counters(),
        lb: r.lb_rows(),
        vpn: r.vpn_row(now),
        bgp: None,
        frame_latency: telemetry::from_hdr(&lat.frame),
        write_latency: telemetry::from_hdr(&lat.write),
        rx_pauses: lat.rx_pauses,
        config: ConfigInfo { hash: cfg.hash.clone(), loaded_unix: cfg.loaded_unix, reloads: cfg.reloads },
        health,
    }
}
