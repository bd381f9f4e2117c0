//! The snapshot the datapath thread publishes for the metrics endpoint (once a second, while
//! an endpoint is configured), and its Prometheus text exposition.
//!
//! Invariants: the scrape side only reads a published `Arc<Telemetry>`, so a scraper, however
//! fast, never adds work to the datapath thread; labels come from the config (ports, networks,
//! public IPs, load balancers, backends, drop reasons, check names), never from traffic, so the
//! series set stays bounded. Names follow Prometheus's conventions: base units (`_bytes`,
//! `_seconds`), `_total` on counters.

use super::health::{Check, Status};
use crate::datapath::{PortRow, RoleRow, StatsSnapshot};
use crate::dhcp::{DhcpCounters, PoolUsage};
use crate::dns::{DnsCounters, LATENCY_BUCKETS_MS};
use crate::lb::LbRow;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

/// A per-stage latency histogram as exported: bucket upper bounds in seconds with the count
/// in each bucket (not cumulative), the sum in seconds and the count.
#[derive(Debug, Clone, Default)]
pub struct Histogram {
    pub buckets: Vec<(f64, u64)>,
    pub sum: f64,
    pub count: u64,
}

/// Where the config came from.
#[derive(Debug, Clone, Default)]
pub struct ConfigInfo {
    /// FNV-1a 64 of the file's bytes, hex.
    pub hash: String,
    /// Unix seconds when it was loaded.
    pub loaded_unix: u64,
    pub reloads: u64,
}

/// Everything the metrics endpoint exposes, as of `at_unix`.
#[derive(Debug, Clone, Default)]
pub struct Telemetry {
    pub router: String,
    pub start_unix: u64,
    pub stats: Option<StatsSnapshot>,
    pub ports: Vec<PortRow>,
    /// The I/O edge's view of each port: `up` or `waiting` (VXLAN peers: their peer state).
    pub port_states: Vec<String>,
    pub fdb_limit: usize,
    /// NAT ports in use: (translated address, protocol number, flows).
    pub nat: Vec<(Ipv4Addr, u8, u32)>,
    pub dhcp: Option<(DhcpCounters, Vec<PoolUsage>)>,
    pub dns: Option<DnsCounters>,
    pub lb: Vec<LbRow>,
    pub vpn: Option<crate::vpn::VpnRow>,
    /// The BGP EVPN speaker's last snapshot.
    pub bgp: Option<Arc<crate::bgp::BgpSnapshot>>,
    pub frame_latency: Histogram,
    /// One write (or writev) syscall to a port.
    pub write_latency: Histogram,
    /// Receive coalescing's pauses so far (io::coalesce).
    pub rx_pauses: u64,
    pub config: ConfigInfo,
    pub health: Vec<Check>,
}

/// The latest snapshot, shared between the datapath thread (writer) and the endpoint.
pub type Published = Arc<Mutex<Arc<Telemetry>>>;

/// FNV-1a 64 (config identity; not a security boundary).
pub fn fnv64(b: &[u8]) -> String {
    let h = b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &x| (h ^ x as u64).wrapping_mul(0x0100_0000_01b3));
    format!("{h:016x}")
}

/// Bucket bounds (seconds) for per-frame processing time.
pub const FRAME_BUCKETS: [f64; 12] = [1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 1e-2, 1e-1];

/// An hdrhistogram of nanoseconds as a Prometheus histogram over `FRAME_BUCKETS`.
pub fn from_hdr(h: &hdrhistogram::Histogram<u64>) -> Histogram {
    let mut prev = 0u64;
    let mut buckets = Vec::with_capacity(FRAME_BUCKETS.len());
    for &b in &FRAME_BUCKETS {
        let upto = h.count_between(0, (b * 1e9) as u64);
        buckets.push((b, upto.saturating_sub(prev)));
        prev = upto;
    }
    let sum = h.iter_recorded().map(|v| v.value_iterated_to() as f64 * v.count_at_value() as f64).sum::<f64>() / 1e9;
    Histogram { buckets, sum, count: h.len() }
}

fn proto_name(p: u8) -> String {
    match p {
        1 => "icmp".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        n => n.to_string(),
    }
}

type Labels = Vec<(&'static str, String)>;

/// Writes one metric family.
struct Out<'a, 'b> {
    e: &'a mut DescriptorEncoder<'b>,
}

impl Out<'_, '_> {
    fn family<M: EncodeMetric>(&mut self, name: &str, help: &str, unit: Option<Unit>, kind: MetricType, series: Vec<(Labels, M)>) -> std::fmt::Result {
        if series.is_empty() {
            return Ok(());
        }
        let mut me = self.e.encode_descriptor(name, help, unit.as_ref(), kind)?;
        for (labels, m) in series {
            m.encode(me.encode_family(&labels)?)?;
        }
        Ok(())
    }

    fn counter(&mut self, name: &str, help: &str, unit: Option<Unit>, series: Vec<(Labels, u64)>) -> std::fmt::Result {
        let s = series.into_iter().map(|(l, v)| (l, ConstCounter::new(v))).collect();
        self.family(name, help, unit, MetricType::Counter, s)
    }

    fn gauge(&mut self, name: &str, help: &str, unit: Option<Unit>, series: Vec<(Labels, i64)>) -> std::fmt::Result {
        let s = series.into_iter().map(|(l, v)| (l, ConstGauge::new(v))).collect();
        self.family(name, help, unit, MetricType::Gauge, s)
    }

    fn histogram(&mut self, name: &str, help: &str, h: &Histogram) -> std::fmt::Result {
        let mut me = self.e.encode_descriptor(name, help, Some(&Unit::Seconds), MetricType::Histogram)?;
        me.encode_histogram::<Labels>(h.sum, h.count, &h.buckets, None)
    }
}

fn one(v: u64) -> Vec<(Labels, u64)> {
    vec![(Vec::new(), v)]
}

fn g1(v: i64) -> Vec<(Labels, i64)> {
    vec![(Vec::new(), v)]
}

impl Telemetry {
    fn port_labels(&self) -> Vec<Labels> {
        self.ports
            .iter()
            .map(|p| {
                let (mode, network) = match &p.role {
                    RoleRow::Access { network, .. } => ("access", network.clone()),
                    RoleRow::Trunk { .. } => ("trunk", String::new()),
                    RoleRow::Public { network } => ("public", network.clone().unwrap_or_default()),
                    RoleRow::Vxlan { .. } => ("vxlan", String::new()),
                };
                vec![("port", p.name.clone()), ("mode", mode.to_string()), ("network", network)]
            })
            .collect()
    }

    /// The whole exposition.
    fn encode_into(&self, o: &mut Out) -> std::fmt::Result {
        o.gauge("vrouter_build_info", "vrouter's version (the value is 1).", None, vec![(vec![("version", env!("CARGO_PKG_VERSION").to_string()), ("router", self.router.clone())], 1)])?;
        o.gauge("vrouter_start_time", "When this vrouter started, unix time.", Some(Unit::Seconds), g1(self.start_unix as i64))?;
        if let Some(s) = &self.stats {
            let labels = self.port_labels();
            let per = |f: &dyn Fn(&crate::switch::stats::PortStats) -> u64| -> Vec<(Labels, u64)> {
                s.ports.iter().zip(&labels).map(|(p, l)| (l.clone(), f(&p.stats))).collect()
            };
            o.counter("vrouter_port_receive_packets", "Frames received on the port (a GSO super-frame counts once).", None, per(&|p| p.rx_frames))?;
            o.counter("vrouter_port_receive", "Bytes received on the port.", Some(Unit::Bytes), per(&|p| p.rx_bytes))?;
            o.counter("vrouter_port_transmit_packets", "Frames sent on the port.", None, per(&|p| p.tx_frames))?;
            o.counter("vrouter_port_transmit", "Bytes sent on the port.", Some(Unit::Bytes), per(&|p| p.tx_bytes))?;
            o.counter("vrouter_port_receive_gso_frames", "GSO super-frames received (offloads at work on the sender).", None, per(&|p| p.rx_gso_frames))?;
            o.counter("vrouter_port_transmit_coalesced_frames", "Super-frames built for the port by receive coalescing.", None, per(&|p| p.tx_coalesced))?;
            o.counter("vrouter_port_transmit_segmented_frames", "Super-frames segmented in software for the port.", None, per(&|p| p.tx_sw_segmented))?;
            let mut drops = Vec::new();
            for (p, l) in s.ports.iter().zip(&labels) {
                for (reason, n) in &p.drops {
                    let mut l = l.clone();
                    l.push(("reason", reason.to_string()));
                    drops.push((l, *n));
                }
            }
            o.counter("vrouter_port_drops", "Frames dropped, by port and reason (reasons that occurred).", None, drops)?;
            let up = self.port_states.iter().zip(&labels).map(|(st, l)| (l.clone(), i64::from(st == "up"))).collect();
            o.gauge("vrouter_port_up", "1 if the port is up (its interface attached, or a VXLAN peer heard from), else 0.", None, up)?;
            let nets: Vec<(Labels, i64)> = s.networks.iter().map(|n| (vec![("network", n.name.clone())], n.macs as i64)).collect();
            o.gauge("vrouter_fdb_entries", "Learned MAC addresses per network.", None, nets.clone())?;
            o.gauge("vrouter_fdb_limit", "MAC table size per network.", None, nets.into_iter().map(|(l, _)| (l, self.fdb_limit as i64)).collect())?;
            let ct = &s.conntrack;
            o.gauge("vrouter_conntrack_entries", "Tracked flows.", None, g1(ct.flows as i64))?;
            o.gauge("vrouter_conntrack_limit", "The flow table's size (max_flows).", None, g1(ct.max as i64))?;
            o.counter("vrouter_conntrack_created", "Flows created.", None, one(ct.stats.created))?;
            o.counter("vrouter_conntrack_expired", "Flows that timed out.", None, one(ct.stats.expired))?;
            o.counter("vrouter_conntrack_evicted", "Unestablished flows evicted to make room.", None, one(ct.stats.evicted))?;
            o.counter("vrouter_conntrack_refused", "New flows refused, the table full of established ones.", None, one(ct.stats.refused))?;
            o.counter("vrouter_conntrack_collisions", "New flows refused, their tuple held by a live flow.", None, one(ct.stats.collisions))?;
            o.gauge("vrouter_neighbours", "Entries in the neighbour (ARP) table.", None, g1(s.neighbours as i64))?;
            let r = &s.router;
            o.counter("vrouter_router_forwarded_packets", "Packets routed.", None, one(r.forwarded))?;
            o.counter("vrouter_flow_cache_hits", "Packets of established flows the flow cache forwarded (of vrouter_router_forwarded_packets).", None, one(s.flow_cache.hits))?;
            o.counter("vrouter_flow_cache_fills", "Flow directions the router's full path entered into the flow cache.", None, one(s.flow_cache.fills))?;
            o.counter("vrouter_router_icmp_sent", "ICMP errors and echo replies the router sent.", None, one(r.icmp_sent))?;
            o.counter("vrouter_security_group_flows_allowed", "Flows security groups let start.", None, one(s.security_groups.stats.flows_allowed))?;
            o.counter("vrouter_security_group_denied", "Packets security groups refused.", None, one(s.security_groups.stats.denied))?;
            o.gauge("vrouter_security_group_flows", "Flows tracked by security groups.", None, g1(s.security_groups.flows as i64))?;
            o.counter("vrouter_vxlan_unknown_peer_datagrams", "VXLAN datagrams from an address that is not a peer.", None, one(s.vxlan.unknown_peer))?;
        }
        let nat = self.nat.iter().map(|(ip, p, n)| (vec![("ip", ip.to_string()), ("protocol", proto_name(*p))], *n as i64)).collect();
        o.gauge("vrouter_nat_ports_in_use", "Source-translated flows by translated address and protocol.", None, nat)?;
        if let Some((c, pools)) = &self.dhcp {
            o.gauge("vrouter_dhcp_leases_bound", "Leases bound now.", None, pools.iter().map(|p| (vec![("network", p.network.clone())], p.bound as i64)).collect())?;
            o.gauge("vrouter_dhcp_pool_size", "Addresses DHCP may hand out.", None, pools.iter().map(|p| (vec![("network", p.network.clone())], p.size as i64)).collect())?;
            let msgs = [("discover", c.discovers), ("offer", c.offers), ("request", c.requests), ("ack", c.acks), ("nak", c.naks), ("release", c.releases), ("decline", c.declines), ("inform", c.informs)];
            o.counter("vrouter_dhcp_messages", "DHCP messages by type (received and sent).", None, msgs.iter().map(|(t, v)| (vec![("type", t.to_string())], *v)).collect())?;
            let ign = [
                ("malformed", c.ignored_malformed),
                ("not_request", c.ignored_not_request),
                ("server_message", c.ignored_server_message),
                ("pool_exhausted", c.ignored_pool_exhausted),
                ("rate_limited", c.ignored_rate_limited),
                ("not_for_us", c.ignored_not_for_us),
                ("no_network", c.ignored_no_network),
                ("unknown_lease", c.ignored_unknown_lease),
                ("store_failing", c.ignored_store_failing),
            ];
            o.counter("vrouter_dhcp_ignored", "DHCP messages not answered, by reason.", None, ign.iter().map(|(t, v)| (vec![("reason", t.to_string())], *v)).collect())?;
        }
        if let Some(d) = &self.dns {
            o.counter("vrouter_dns_queries", "DNS queries from guests.", None, one(d.queries))?;
            let rc = [("nxdomain", d.nxdomain), ("servfail", d.servfail), ("formerr", d.formerr), ("notimp", d.notimp), ("refused", d.refused)];
            o.counter("vrouter_dns_error_responses", "DNS responses with an error rcode, by rcode.", None, rc.iter().map(|(r, v)| (vec![("rcode", r.to_string())], *v)).collect())?;
            o.counter("vrouter_dns_local_answers", "Answers from the local zones.", None, one(d.local_answers))?;
            o.counter("vrouter_dns_cache_hits", "Answers from the cache.", None, one(d.cache_hits))?;
            o.gauge("vrouter_dns_cache_entries", "Cached answers.", None, g1(d.cache_entries as i64))?;
            o.counter("vrouter_dns_upstream_queries", "Queries sent upstream (retries included).", None, one(d.forwarded))?;
            o.counter("vrouter_dns_upstream_timeouts", "Upstream attempts that timed out.", None, one(d.upstream_timeouts))?;
            let mut buckets: Vec<(f64, u64)> = LATENCY_BUCKETS_MS.iter().zip(d.upstream_latency.iter()).map(|(b, n)| (*b as f64 / 1000.0, *n)).collect();
            let counted: u64 = d.upstream_latency.iter().sum();
            buckets.push((f64::INFINITY, d.upstream_answers.saturating_sub(counted)));
            o.histogram("vrouter_dns_upstream_latency", "How long upstream answers took.", &Histogram { buckets, sum: d.upstream_latency_sum_ms as f64 / 1000.0, count: d.upstream_answers })?;
        }
        let mut up = Vec::new();
        let mut active = Vec::new();
        let mut total = Vec::new();
        let mut checks = Vec::new();
        for lb in &self.lb {
            for b in &lb.backends {
                let l: Labels = vec![("lb", lb.name.clone()), ("backend", format!("{}:{}", b.ip, b.port))];
                up.push((l.clone(), i64::from(b.state == "up")));
                active.push((l.clone(), b.active as i64));
                total.push((l.clone(), b.total));
                let mut ok = l.clone();
                ok.push(("result", "ok".into()));
                checks.push((ok, b.checks_ok));
                let mut failed = l;
                failed.push(("result", "failed".into()));
                checks.push((failed, b.checks_failed));
            }
        }
        o.gauge("vrouter_lb_backend_up", "1 if the backend takes new connections.", None, up)?;
        o.gauge("vrouter_lb_backend_active_connections", "Connections open to the backend.", None, active)?;
        o.counter("vrouter_lb_backend_connections", "Connections given to the backend.", None, total)?;
        o.counter("vrouter_lb_backend_health_checks", "Health checks by result.", None, checks)?;
        if let Some(v) = &self.vpn {
            let per = |f: &dyn Fn(&crate::vpn::PeerRow) -> u64| -> Vec<(Labels, u64)> { v.peers.iter().map(|p| (vec![("peer", p.name.clone())], f(p))).collect() };
            o.counter("vrouter_vpn_rx_bytes", "Bytes received from each WireGuard peer (decrypted).", None, per(&|p| p.rx_bytes))?;
            o.counter("vrouter_vpn_tx_bytes", "Bytes sent to each WireGuard peer (before encryption).", None, per(&|p| p.tx_bytes))?;
            o.counter("vrouter_vpn_handshakes", "Handshakes completed with each peer.", None, per(&|p| p.counters.handshakes))?;
            let ago = v.peers.iter().map(|p| (vec![("peer", p.name.clone())], p.last_handshake_secs.map_or(-1, |s| s as i64))).collect();
            o.gauge("vrouter_vpn_last_handshake_age", "Seconds since each peer's last handshake (-1: none yet).", Some(Unit::Seconds), ago)?;
            let c = &v.counters;
            let drops = [("stranger", c.strangers), ("malformed", c.malformed), ("replay", c.replays), ("bad_auth", c.bad_auth), ("under_load", c.under_load), ("rate_limited", c.rate_limited)];
            o.counter("vrouter_vpn_dropped_datagrams", "WireGuard datagrams dropped, by reason.", None, drops.iter().map(|(r, n)| (vec![("reason", r.to_string())], *n)).collect())?;
            let refused = per(&|p| p.counters.source_not_allowed);
            o.counter("vrouter_vpn_source_not_allowed", "Decrypted packets from a peer with a source outside its allowed_ips.", None, refused)?;
        }
        if let Some(b) = &self.bgp {
            let per = |f: &dyn Fn(&crate::bgp::NeighborRow) -> u64| -> Vec<(Labels, u64)> { b.neighbors.iter().map(|n| (vec![("neighbor", n.address.to_string())], f(n))).collect() };
            let up = b.neighbors.iter().map(|n| (vec![("neighbor", n.address.to_string())], (n.state == crate::bgp::State::Established) as i64)).collect();
            o.gauge("vrouter_bgp_session_up", "1 if the BGP session with the neighbour is established.", None, up)?;
            let routes = |f: &dyn Fn(&crate::bgp::NeighborRow) -> usize| -> Vec<(Labels, i64)> { b.neighbors.iter().map(|n| (vec![("neighbor", n.address.to_string())], f(n) as i64)).collect() };
            o.gauge("vrouter_bgp_routes_received", "EVPN routes held from the neighbour.", None, routes(&|n| n.routes_in))?;
            o.gauge("vrouter_bgp_routes_advertised", "EVPN routes advertised to the neighbour.", None, routes(&|n| n.routes_out))?;
            o.counter("vrouter_bgp_routes_refused", "Routes refused: over the neighbour's max_routes.", None, per(&|n| n.counters.routes_refused))?;
            o.counter("vrouter_bgp_errors_sent", "NOTIFICATIONs sent for what the neighbour sent (malformed or unexpected).", None, per(&|n| n.counters.errors_sent))?;
            o.counter("vrouter_bgp_flaps", "Established sessions lost.", None, per(&|n| n.counters.flaps))?;
            o.counter("vrouter_bgp_updates_received", "UPDATE messages received.", None, per(&|n| n.counters.updates_in))?;
            let vnis = |f: &dyn Fn(&crate::bgp::VniView) -> usize| -> Vec<(Labels, i64)> { b.evpn.vnis.iter().map(|(v, x)| (vec![("vni", v.to_string())], f(x) as i64)).collect() };
            o.gauge("vrouter_evpn_vteps", "Remote VTEPs in each VNI's flood list.", None, vnis(&|v| v.flood.len()))?;
            o.gauge("vrouter_evpn_remote_macs", "MACs behind remote VTEPs, from EVPN routes.", None, vnis(&|v| v.macs.len()))?;
            let local = b.local_macs.iter().map(|(v, m)| (vec![("vni", v.to_string())], m.len() as i64)).collect();
            o.gauge("vrouter_evpn_local_macs", "Local MACs advertised.", None, local)?;
        }
        o.histogram("vrouter_frame_processing", "Time from reading a frame to having written all its copies.", &self.frame_latency)?;
        o.histogram("vrouter_port_write", "Time of one write syscall to a port.", &self.write_latency)?;
        o.counter("vrouter_rx_coalesce_pauses", "Pauses the loop took to let continuous input gather into bursts (receive coalescing).", None, one(self.rx_pauses))?;
        o.gauge("vrouter_config_info", "The running config's hash (the value is 1).", None, vec![(vec![("hash", self.config.hash.clone())], 1)])?;
        o.gauge("vrouter_config_load_time", "When the running config was loaded, unix time.", Some(Unit::Seconds), g1(self.config.loaded_unix as i64))?;
        o.counter("vrouter_config_reloads", "Configs applied while running.", None, one(self.config.reloads))?;
        let health = self.health.iter().map(|c| (vec![("check", c.check.to_string())], c.status as i64)).collect();
        o.gauge("vrouter_health_check", "Each health check: 0 ok, 1 degraded, 2 failing.", None, health)?;
        let worst = self.health.iter().map(|c| c.status).max().unwrap_or(Status::Ok);
        o.gauge("vrouter_health", "Overall health: 0 ok, 1 degraded, 2 failing.", None, g1(worst as i64))
    }
}

/// The registry's view of the published snapshot.
#[derive(Debug)]
struct Snapshot(Published);

impl Collector for Snapshot {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let t = self.0.lock().map(|g| g.clone()).unwrap_or_default();
        t.encode_into(&mut Out { e: &mut e })
    }
}

/// A registry whose one collector reads `published` at each scrape.
pub fn registry(published: Published) -> Registry {
    let mut r = Registry::default();
    r.register_collector(Box::new(Snapshot(published)));
    r
}

/// The Prometheus text (0.0.4) of a registry.
pub fn render(r: &Registry) -> String {
    let mut s = String::new();
    // Writing to a String cannot fail; an encoder error would be a bug in a metric name.
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut s, r) {
        s = format!("# encoding failed: {e}\n");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_conventional_names_and_bounded_labels() {
        let mut h = hdrhistogram::Histogram::<u64>::new_with_bounds(10, 10_000_000_000, 3).unwrap();
        for v in [500u64, 1_500, 3_000, 200_000] {
            h.record(v).unwrap();
        }
        let mut dns = DnsCounters { queries: 7, upstream_answers: 3, ..Default::default() };
        dns.upstream_latency[0] = 2;
        let t = Telemetry {
            router: "acct".into(),
            nat: vec![("203.0.113.10".parse().unwrap(), 6, 4)],
            dns: Some(dns),
            frame_latency: from_hdr(&h),
            config: ConfigInfo { hash: fnv64(b"x"), loaded_unix: 5, reloads: 0 },
            health: vec![Check { check: "ports", status: Status::Degraded, detail: String::new() }],
            ..Default::default()
        };
        let text = render(&registry(Arc::new(Mutex::new(Arc::new(t)))));
        for want in [
            "vrouter_nat_ports_in_use{ip=\"203.0.113.10\",protocol=\"tcp\"} 4",
            "# TYPE vrouter_dns_queries_total counter",
            "vrouter_dns_queries_total 7",
            "vrouter_dns_upstream_latency_seconds_bucket{le=\"0.001\"} 2",
            "vrouter_dns_upstream_latency_seconds_bucket{le=\"+Inf\"} 3",
            "vrouter_frame_processing_seconds_bucket{le=\"1e-06\"} 1",
            "vrouter_frame_processing_seconds_bucket{le=\"+Inf\"} 4",
            "vrouter_frame_processing_seconds_count 4",
            "vrouter_health_check{check=\"ports\"} 1",
            "vrouter_health 1",
            "vrouter_config_reloads_total 0",
        ] {
            assert!(text.contains(want), "{want} missing from:\n{text}");
        }
    }
}
