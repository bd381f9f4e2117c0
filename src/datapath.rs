//! The pipeline: one frame in, zero or more frames out, in the order of DESIGN.md's "frame's
//! walk": slice -> ingress (network, VLAN hygiene, port security) -> learn -> L3 (the router:
//! ARP, routing, conntrack, NAT, filters) for frames addressed to the router -> L2 forward or
//! flood -> egress (tag, offload fix-ups).
//!
//! The router is a member port of every network: a frame it routes re-enters L2 forwarding on
//! the destination network from [`ROUTER_PORT`], and frames it makes (ARP, ICMP) leave through
//! the same egress as forwarded ones. The public port is not part of any network: everything
//! arriving there goes to the router.
//!
//! Sans-IO: `process(now, port, frame, tx)` never touches an fd or the clock; frames leave
//! through the [`Transmit`] trait, which the I/O edge implements with real writes and tests
//! implement with a Vec. Invariants: a frame never leaves its network's ports; it never goes
//! back out the port it came in on; every frame that is not transmitted is counted as a drop
//! with its reason on the ingress (or egress) port.
//!
//! State is partitioned by port and network so that later several workers can each own some
//! ports; today one datapath thread owns all of it.

use crate::buf::PacketBuf;
use crate::frame::FrameCtx;
use crate::offload;
use crate::router::{Iface, L3Config, Router, Verdict};
use crate::switch::fdb::{Fdb, LearnError, Learned};
use crate::switch::stats::{DropReason, PortStats};
use crate::switch::{self, NetId, PortId, Role};
use crate::time::Instant;
use crate::wire::ethernet::MacAddr;
use crate::wire::vnet::VnetHdr;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// Where the pipeline's output goes. The I/O edge writes to the port's fd; `vnet` is `Some`
/// exactly when the port was declared offload-capable.
pub trait Transmit {
    fn transmit(&mut self, port: PortId, vnet: Option<&VnetHdr>, frame: &[u8]) -> Result<(), DropReason>;
    /// UDP payloads for VXLAN peer `port` (each a VXLAN header and a frame): one datagram, or
    /// with `seg`, datagrams of `seg` bytes each back to back (the last may be shorter) to be
    /// sent as one batch. `entropy` (a hash of the inner flow) picks the outer source port.
    /// A batch that fails part-way says how many of its datagrams left.
    fn transmit_udp(&mut self, port: PortId, entropy: u16, payload: &[u8], seg: Option<usize>) -> Result<(), Partial> {
        let _ = (port, entropy, payload, seg);
        Err(Partial { reason: DropReason::TxError, sent: 0 })
    }
}

/// A send that failed after `sent` of its datagrams had left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partial {
    pub reason: DropReason,
    pub sent: usize,
}

/// How many frames a (super-)frame is on the wire: its segments, or one.
fn wire_frames(len: usize, v: &VnetHdr) -> u64 {
    if v.gso == crate::wire::vnet::Gso::None || v.gso_size == 0 {
        return 1;
    }
    len.saturating_sub(v.hdr_len as usize).div_ceil(v.gso_size as usize).max(1) as u64
}

/// One port as the datapath sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct PortSpec {
    pub name: String,
    pub ifname: String,
    /// "tap" or "netdev" (for display).
    pub kind: String,
    pub role: Role,
    /// What the egress takes in virtio_net_hdr metadata (GSO super-frames by type, partial
    /// checksums); a frame it cannot take is finished in software first.
    pub offload: crate::wire::vnet::Offloads,
    /// Max MACs learned on this port (`None`: network cap only).
    pub mac_limit: Option<usize>,
}

impl PortSpec {
    /// A slot with no port (removed by a reload).
    pub fn vacant() -> Self {
        PortSpec {
            name: String::new(),
            ifname: String::new(),
            kind: String::new(),
            role: Role::Vacant,
            offload: crate::wire::vnet::Offloads::NONE,
            mac_limit: Some(0),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct NetSpec {
    pub name: String,
    pub vlan: Option<u16>,
}

#[derive(Debug, Clone)]
pub struct DatapathConfig {
    pub router_mac: MacAddr,
    pub nets: Vec<NetSpec>,
    pub ports: Vec<PortSpec>,
    pub mac_aging: Duration,
    pub mac_table_size: usize,
    pub l3: L3Config,
    /// Security groups of the ports that have some.
    pub security: crate::filter::sg::SgConfig,
    /// IP bytes a frame to a VXLAN peer may carry (underlay MTU minus 50).
    pub vxlan_mtu: usize,
    /// MACs bound to a port besides port-security guests': VMs behind an uplink (`kind =
    /// "remote"` ports): learned nowhere else.
    pub pins: Vec<(NetId, MacAddr, PortId)>,
}

/// A row of `ctl show ports`.
#[derive(Debug, Clone, Serialize)]
pub struct PortRow {
    pub name: String,
    pub ifname: String,
    pub kind: String,
    /// The port carries virtio_net_hdr metadata.
    pub offload: bool,
    /// What its egress takes: `csum`, `tso4`, `tso6`, `uso`.
    pub offloads: Vec<&'static str>,
    pub macs_learned: usize,
    pub rx_frames: u64,
    pub rx_bytes: u64,
    pub tx_frames: u64,
    pub tx_bytes: u64,
    /// All drops on this port.
    pub drops: u64,
    /// A VXLAN peer's reachability, as far as it is known.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub peer: Option<PeerRow>,
    #[serde(flatten)]
    pub role: RoleRow,
}

/// Dropped frames held for capture between two collections by the I/O edge.
const DROPPED_CAP: usize = 1024;

/// A frame dropped on a watched port, as it arrived, with the reason.
#[derive(Debug, Clone)]
pub struct DroppedFrame {
    pub port: PortId,
    pub reason: DropReason,
    pub vnet: VnetHdr,
    pub frame: Vec<u8>,
}

/// A peer heard from within this long, with no failed send since, is up.
const PEER_QUIET: Duration = Duration::from_secs(60);

/// What the datapath knows of a VXLAN peer: when it last heard a datagram from it and when a
/// send to it last failed (unreachable or refused). UDP has no session: nothing else is known.
#[derive(Debug, Clone, Copy, Default)]
struct PeerHealth {
    last_rx: Option<Instant>,
    last_tx_ok: Option<Instant>,
    last_tx_error: Option<Instant>,
}

impl PeerHealth {
    fn row(&self, now: Instant) -> PeerRow {
        let ago = |t: Option<Instant>| t.map(|t| now.since(t).as_secs());
        let failing = self.last_tx_error.is_some_and(|e| self.last_rx.is_none_or(|r| e > r) && self.last_tx_ok.is_none_or(|o| e > o));
        let heard = self.last_rx.is_some_and(|t| now.since(t) < PEER_QUIET);
        let state = if failing {
            "unreachable"
        } else if heard {
            "up"
        } else {
            "unknown"
        };
        PeerRow { state, last_rx_secs: ago(self.last_rx), last_tx_error_secs: ago(self.last_tx_error) }
    }
}

/// A VXLAN peer's state in `ctl show ports`: `up` (a datagram arrived within the last minute
/// and no send failed since), `unreachable` (a send failed for want of a route, EHOSTUNREACH
/// and the like, after the last datagram heard and the last send that left), or `unknown`
/// (nothing heard for a minute, nothing failed).
#[derive(Debug, Clone, Serialize)]
pub struct PeerRow {
    pub state: &'static str,
    pub last_rx_secs: Option<u64>,
    pub last_tx_error_secs: Option<u64>,
}

/// How a port attaches, as shown.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "mode", rename_all = "lowercase")]
pub enum RoleRow {
    Access { network: String, port_security: bool, mac: Option<String>, ip: Option<String> },
    Trunk {
        networks: Vec<TrunkNet>,
        /// The network carried untagged, if any.
        #[serde(skip_serializing_if = "Option::is_none")]
        untagged: Option<String>,
    },
    Public { network: Option<String> },
    Vxlan { remote: String, networks: Vec<VxlanNet> },
}

#[derive(Debug, Clone, Serialize)]
pub struct VxlanNet {
    pub network: String,
    pub vni: u32,
}

/// VXLAN datagrams that reached no peer port (their drops are counted on no port).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct VxlanStats {
    /// From an address that is not a configured `[[vxlan.peer]]`.
    pub unknown_peer: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct TrunkNet {
    pub network: String,
    pub vlan: u16,
}

/// A row of `ctl show fdb`.
#[derive(Debug, Clone, Serialize)]
pub struct FdbRow {
    pub network: String,
    pub mac: String,
    pub port: String,
    /// "learned" or "static" (pinned by port security).
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub age_secs: Option<u64>,
}

/// One port's counters (or the totals), with the non-zero drops by reason.
#[derive(Debug, Clone, Serialize)]
pub struct PortStatsRow {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(flatten)]
    pub stats: PortStats,
    pub drops: BTreeMap<&'static str, u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct NetRow {
    pub name: String,
    pub vlan: Option<u16>,
    pub macs: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct CtRow {
    pub flows: usize,
    pub max: usize,
    #[serde(flatten)]
    pub stats: crate::conntrack::CtStats,
}

/// `ctl show stats`, as the datapath knows it (the I/O edge adds uptime, latency, DNS).
#[derive(Debug, Clone, Serialize)]
pub struct StatsSnapshot {
    pub totals: PortStatsRow,
    pub ports: Vec<PortStatsRow>,
    pub networks: Vec<NetRow>,
    pub fdb_entries: usize,
    pub router: crate::router::RouterStats,
    pub neighbours: usize,
    pub conntrack: CtRow,
    pub security_groups: SgRow,
    pub vxlan: VxlanStats,
    /// Established packets the flow cache forwarded, and how often the full path filled it.
    pub flow_cache: flowcache::FlowCacheStats,
}

#[derive(Debug, Clone, Serialize)]
pub struct SgRow {
    /// Flows tracked over all filtered ports.
    pub flows: usize,
    #[serde(flatten)]
    pub stats: crate::filter::sg::SgStats,
}

/// The router's own port on every network: never a real port, so no hairpin check fires for
/// routed frames and flooding reaches every member.
pub const ROUTER_PORT: PortId = PortId(u16::MAX);

/// What ingress established about a frame.
struct Net {
    spec: NetSpec,
    /// Every port carrying this network (guest ports and trunks), in config order.
    members: Vec<PortId>,
}

/// Bytes of encapsulated segments sent to a VXLAN peer at a time: a 64 KiB super-frame's
/// segments with their headers, with room to spare.
const VX_BATCH: usize = 128 << 10;

/// How often aged MAC entries are swept.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

pub struct Datapath {
    router_mac: MacAddr,
    ports: Vec<PortSpec>,
    nets: Vec<Net>,
    fdb: Fdb,
    stats: Vec<PortStats>,
    next_sweep: Instant,
    /// Where software segmentation writes (one segment at a time).
    scratch: Box<[u8]>,
    router: Router,
    public_port: Option<PortId>,
    sg: crate::filter::sg::SecurityGroups,
    /// VXLAN peers by address.
    vteps: std::collections::HashMap<std::net::Ipv4Addr, PortId>,
    vx_stats: VxlanStats,
    /// What is known of each VXLAN peer's reachability, by port (default for other ports).
    peer_health: Vec<PeerHealth>,
    /// Ports whose dropped frames are captured (`ctl capture --drops`), the frames waiting
    /// for the I/O edge, and those that did not fit.
    drop_watch: Vec<PortId>,
    dropped: Vec<DroppedFrame>,
    dropped_lost: u64,
    /// Encapsulated segments of one super-frame, sent in batches, and their lengths.
    vx_batch: Box<[u8]>,
    vx_lens: Vec<usize>,
    /// The overlay MTU (IP bytes a frame to a VXLAN peer may carry).
    vxlan_mtu: usize,
    /// Receive coalescing, on while a batch of segments (a UDP_GRO read) is processed.
    gro: crate::gro::Coalescer,
    gro_on: bool,
    /// Counters of ports a reload removed (the totals never go down).
    retired: PortStats,
    /// Established flows' last forwarding, replayed (see [`flowcache`]).
    flow_cache: flowcache::FlowCache,
}

/// VXLAN peers' ports by the peer's address.
fn vteps_of(ports: &[PortSpec]) -> std::collections::HashMap<std::net::Ipv4Addr, PortId> {
    ports
        .iter()
        .enumerate()
        .filter_map(|(i, p)| match &p.role {
            Role::Vtep { remote, .. } => Some((*remote, PortId(i as u16))),
            _ => None,
        })
        .collect()
}

/// Each network's member ports (guest ports, trunks and VXLAN peers carrying it), in slot order.
fn add_members(nets: &mut [Net], ports: &[PortSpec]) {
    for (i, p) in ports.iter().enumerate() {
        let id = PortId(i as u16);
        let mut add = |net: NetId| {
            if let Some(n) = nets.get_mut(net.0 as usize) {
                if !n.members.contains(&id) {
                    n.members.push(id);
                }
            }
        };
        match &p.role {
            Role::Access { net, .. } => add(*net),
            Role::Trunk { vlans, native } => vlans.iter().flatten().chain(native).for_each(|n| add(*n)),
            // Flooding goes to exactly the VTEPs that asked for it.
            Role::Vtep { vnis, unicast_only, .. } => {
                let quiet: std::collections::HashSet<NetId> = unicast_only.iter().copied().collect();
                vnis.iter().filter(|(_, n)| !quiet.contains(n)).for_each(|(_, n)| add(n))
            }
            Role::Public | Role::Vacant => {}
        }
    }
}

impl Datapath {
    pub fn new(cfg: DatapathConfig) -> Self {
        let mut nets: Vec<Net> = cfg.nets.into_iter().map(|spec| Net { spec, members: Vec::new() }).collect();
        add_members(&mut nets, &cfg.ports);
        let public_port = cfg.ports.iter().position(|p| matches!(p.role, Role::Public)).map(|i| PortId(i as u16));
        let caps = cfg.ports.iter().map(|p| p.mac_limit).collect();
        let mut fdb = Fdb::new(nets.len(), caps, cfg.mac_table_size, cfg.mac_aging);
        // A port-security guest's MAC is known up front: unicast to it is never flooded, and no
        // other port (a trunk included) can take it over.
        for (i, p) in cfg.ports.iter().enumerate() {
            if let Role::Access { net, security: Some(sec) } = &p.role {
                fdb.pin(*net, sec.mac, PortId(i as u16));
            }
        }
        for &(net, mac, port) in &cfg.pins {
            if (net.0 as usize) < nets.len() && (port.0 as usize) < cfg.ports.len() {
                fdb.pin(net, mac, port);
            }
        }
        let sg = crate::filter::sg::SecurityGroups::new(cfg.security, cfg.ports.len());
        let vteps = vteps_of(&cfg.ports);
        Datapath {
            sg,
            vteps,
            vx_stats: VxlanStats::default(),
            peer_health: vec![PeerHealth::default(); cfg.ports.len()],
            drop_watch: Vec::new(),
            dropped: Vec::new(),
            dropped_lost: 0,
            vx_batch: vec![0u8; VX_BATCH].into_boxed_slice(),
            vx_lens: Vec::new(),
            vxlan_mtu: cfg.vxlan_mtu,
            gro: crate::gro::Coalescer::new(),
            gro_on: false,
            router_mac: cfg.router_mac,
            fdb,
            stats: vec![PortStats::default(); cfg.ports.len()],
            ports: cfg.ports,
            nets,
            next_sweep: Instant::ZERO,
            scratch: vec![0u8; crate::buf::BUF_SIZE].into_boxed_slice(),
            router: Router::new(cfg.router_mac, cfg.l3),
            public_port,
            retired: PortStats::default(),
            flow_cache: flowcache::FlowCache::default(),
        }
    }

    /// Applies a reload's tables between batches. Slots keep their meaning (`build::Numbering`):
    /// a port or network that is still the same (`same_port`, `same_net`: same name, same
    /// generation) keeps its counters, its learned MACs (unless its role changed: another
    /// network, VLANs, security) and its flows; a removed one's learned MACs go, and its
    /// counters stay in the totals. The router re-decides flows lazily (see `router::reload`).
    pub fn reconfigure(&mut self, now: Instant, cfg: DatapathConfig, svc: crate::router::reload::Services, same_port: &dyn Fn(PortId) -> bool, same_net: &dyn Fn(NetId) -> bool) {
        self.flow_cache.invalidate();
        let n = cfg.ports.len();
        for i in 0..self.ports.len().max(n) {
            let p = PortId(i as u16);
            if !same_port(p) || i >= n {
                if let Some(st) = self.stats.get_mut(i) {
                    self.retired.absorb(st);
                    *st = PortStats::default();
                }
                if let Some(h) = self.peer_health.get_mut(i) {
                    *h = PeerHealth::default();
                }
            }
        }
        self.stats.resize(n, PortStats::default());
        self.peer_health.resize(n, PeerHealth::default());
        let old_ports = std::mem::replace(&mut self.ports, cfg.ports);
        let role_kept: Vec<bool> = (0..n).map(|i| same_port(PortId(i as u16)) && old_ports.get(i).is_some_and(|o| o.role == self.ports[i].role)).collect();
        let net_kept: Vec<bool> = (0..cfg.nets.len()).map(|i| same_net(NetId(i as u16)) && self.nets.get(i).is_some_and(|o| o.spec.vlan == cfg.nets[i].vlan)).collect();
        let caps = self.ports.iter().map(|p| p.mac_limit).collect();
        self.fdb.reconfigure(cfg.nets.len(), caps, cfg.mac_table_size, cfg.mac_aging, |net, port| {
            net_kept.get(net.0 as usize).copied().unwrap_or(false) && role_kept.get(port.0 as usize).copied().unwrap_or(false)
        });
        for (i, p) in self.ports.iter().enumerate() {
            if let Role::Access { net, security: Some(sec) } = &p.role {
                self.fdb.pin(*net, sec.mac, PortId(i as u16));
            }
        }
        for &(net, mac, port) in &cfg.pins {
            if (net.0 as usize) < cfg.nets.len() && (port.0 as usize) < self.ports.len() {
                self.fdb.pin(net, mac, port);
            }
        }
        self.nets = cfg.nets.into_iter().map(|spec| Net { spec, members: Vec::new() }).collect();
        add_members(&mut self.nets, &self.ports);
        self.public_port = self.ports.iter().position(|p| matches!(p.role, Role::Public)).map(|i| PortId(i as u16));
        self.vteps = vteps_of(&self.ports);
        self.sg.reconfigure(cfg.security, n, |p| role_kept.get(p.0 as usize).copied().unwrap_or(false));
        let live = |p: &PortId| self.ports.get(p.0 as usize).is_some_and(|s| s.role != Role::Vacant);
        self.drop_watch.retain(live);
        self.dropped.retain(|d| self.ports.get(d.port.0 as usize).is_some_and(|s| s.role != Role::Vacant));
        self.vxlan_mtu = cfg.vxlan_mtu;
        self.router_mac = cfg.router_mac;
        self.router.reconfigure(now, cfg.router_mac, cfg.l3, svc, same_net, same_port);
    }

    /// Checks what must hold after any sequence of frames and reloads (fuzzing, tests): no
    /// learned MAC on a vacant port or network, or on a guest port of another network; no flow
    /// decided under the current rules leaving through a network that is gone or counted by a
    /// backend that left its pool. (A flow of an older epoch may name what is gone: it is
    /// re-decided before any packet of it is forwarded.)
    pub fn audit(&self) -> Result<(), String> {
        for (net, mac, e) in self.fdb.iter() {
            let port = self.ports.get(e.port.0 as usize).ok_or_else(|| format!("{mac} on port {} past the table", e.port.0))?;
            if port.role == Role::Vacant || self.nets.get(net.0 as usize).is_none_or(|n| n.spec.name.is_empty()) {
                return Err(format!("{mac} learned on a removed port or network ({} / {})", e.port.0, net.0));
            }
            if let Role::Access { net: n, .. } = port.role {
                if n != net {
                    return Err(format!("{mac} in network {} on port {} of network {}", net.0, port.name, n.0));
                }
            }
        }
        let r = self.router();
        for f in r.ct.iter().filter(|f| f.epoch == r.ct.epoch) {
            for e in f.egress {
                if let crate::router::Iface::Net(n) = e.iface {
                    if r.gateway(n).is_none() {
                        return Err(format!("a current flow {:?} leaves through removed network {}", f.orig, n.0));
                    }
                }
            }
            if f.tag != crate::conntrack::NO_TAG && !r.lb.is_member(f.tag) {
                return Err(format!("a current flow {:?} counted by a backend out of its pool", f.orig));
            }
        }
        Ok(())
    }

    /// The port named `name` (ports, uplinks, the public port, `vxlan-<address>` peers).
    pub fn port_id(&self, name: &str) -> Option<PortId> {
        self.ports.iter().position(|p| p.name == name).map(|i| PortId(i as u16))
    }

    pub fn port_name(&self, p: PortId) -> &str {
        self.ports.get(p.0 as usize).map_or("?", |s| s.name.as_str())
    }

    /// The network named `name`.
    pub fn net_named(&self, name: &str) -> Option<NetId> {
        self.nets.iter().position(|n| !name.is_empty() && n.spec.name == name).map(|i| NetId(i as u16))
    }

    pub fn net_name(&self, n: NetId) -> &str {
        self.nets.get(n.0 as usize).map_or("?", |s| s.spec.name.as_str())
    }

    pub fn port_count(&self) -> usize {
        self.ports.len()
    }

    /// Counts a drop the I/O edge saw (truncated read, bad vnet header).
    pub fn count_drop(&mut self, port: PortId, r: DropReason) {
        if let Some(s) = self.stats.get_mut(port.0 as usize) {
            s.drop(r);
        }
    }

    /// A frame the I/O edge accepted (and the port counted as sent) failed when it was
    /// written later: it moves from sent to dropped.
    pub fn tx_failed(&mut self, port: PortId, r: DropReason, bytes: u64) {
        if let Some(s) = self.stats.get_mut(port.0 as usize) {
            s.tx_frames = s.tx_frames.saturating_sub(1);
            s.tx_bytes = s.tx_bytes.saturating_sub(bytes);
            s.drop(r);
        }
    }

    /// The port's device failed: forget the MACs learned on it (pinned ones stay: they are
    /// configuration), so traffic for them is flooded rather than sent into a dead port.
    pub fn port_lost(&mut self, port: PortId) {
        if (port.0 as usize) < self.ports.len() {
            self.fdb.flush_port(port);
        }
    }

    pub fn stats(&self, port: PortId) -> Option<&PortStats> {
        self.stats.get(port.0 as usize)
    }

    /// When `poll` next has work: the earliest deadline over every subsystem (MAC aging, ARP
    /// retries, conntrack expiry).
    pub fn poll_at(&self) -> Instant {
        self.next_sweep.min(self.router.poll_at())
    }

    /// Timer work: expire aged MAC entries, ARP retries, conntrack sweeps; may transmit.
    pub fn poll(&mut self, now: Instant, tx: &mut dyn Transmit) {
        if now >= self.next_sweep {
            self.fdb.expire(now);
            self.sg.sweep(now);
            self.next_sweep = now + SWEEP_EVERY;
        }
        self.router.poll(now);
        self.drain_outbox(now, tx);
    }

    /// Health: the public gateway and what is known of it; asks for it by ARP when the table
    /// has nothing fresh (the request leaves with the next `poll`).
    pub fn health_probe(&mut self, now: Instant) -> Option<(std::net::Ipv4Addr, crate::router::neigh::NeighState)> {
        self.router.probe_public_gateway(now)
    }

    /// The router, for snapshots (conntrack pages, counters).
    pub fn router(&self) -> &Router {
        &self.router
    }

    /// The router, to install its services and replay persisted state at start.
    pub fn router_mut(&mut self) -> &mut Router {
        &mut self.router
    }

    /// Event: lease records `first..=last` are on disk; the DHCP ACKs they held go out.
    pub fn dhcp_committed(&mut self, now: Instant, first: u64, last: u64, tx: &mut dyn Transmit) {
        self.router.dhcp_committed(first, last);
        self.drain_outbox(now, tx);
    }

    /// Event: an upstream DNS server answered.
    pub fn dns_upstream(&mut self, now: Instant, from: std::net::SocketAddr, payload: &[u8], tx: &mut dyn Transmit) {
        self.router.dns_upstream(now, from, payload);
        self.drain_outbox(now, tx);
    }

    /// Sends what the router made (ARP, ICMP, frames released by ARP resolution) through the
    /// normal egress.
    #[inline]
    fn drain_outbox(&mut self, now: Instant, tx: &mut dyn Transmit) {
        if !self.router.outbox.is_empty() {
            self.drain_outbox_now(now, tx);
        }
    }

    #[inline(never)]
    fn drain_outbox_now(&mut self, now: Instant, tx: &mut dyn Transmit) {
        self.router.seal_tunnel(now);
        // Egress never makes new router frames, so one pass empties it; the Vec (and its
        // capacity) goes back for the next ones.
        let mut out = std::mem::take(&mut self.router.outbox);
        for mut o in out.drain(..) {
            match (o.port, o.iface) {
                // Only to a port that carries that very network (a VM's own, or the uplink a
                // remote VM sits behind).
                (Some(p), Iface::Net(n)) if self.ports.get(p.0 as usize).is_some_and(|s| s.role.carries(n)) => {
                    self.output(now, p, Some(n), &mut o.buf, tx, None);
                }
                (Some(_), _) => {}
                (None, iface) => self.egress_routed(now, iface, &mut o.buf, tx),
            }
            self.router.recycle(o.buf);
        }
        self.router.outbox = out;
    }

    /// A frame the router finished (Ethernet header set) leaves on `iface`.
    fn egress_routed(&mut self, now: Instant, iface: Iface, buf: &mut PacketBuf, tx: &mut dyn Transmit) {
        match iface {
            Iface::Net(net) if (net.0 as usize) < self.nets.len() => {
                let dst = MacAddr::from_bytes(buf.frame()).unwrap_or(MacAddr::BROADCAST);
                let _ = self.forward(now, net, dst, ROUTER_PORT, buf, tx, None);
            }
            Iface::Net(_) => {}
            Iface::Public => {
                if let Some(p) = self.public_port {
                    self.output(now, p, None, buf, tx, None);
                }
            }
            // Sealed by the router before the outbox is drained; nothing is routed here raw.
            Iface::Tunnel(_) => {}
        }
    }

    /// Runs one received frame through the pipeline.
    pub fn process(&mut self, now: Instant, in_port: PortId, buf: &mut PacketBuf, tx: &mut dyn Transmit) {
        if self.drop_watch.is_empty() {
            return self.process_one(now, in_port, buf, tx);
        }
        let seen = self.watch_before(buf.vnet, buf.frame());
        self.process_one(now, in_port, buf, tx);
        self.watch_after(seen);
    }

    /// The flow cache on (the default) or off (every packet takes the router's full path).
    /// Either way it starts empty.
    pub fn set_flow_cache(&mut self, on: bool) {
        self.flow_cache.set_on(on);
    }

    /// Capture of dropped frames: which ports to watch (empty: none, and no cost).
    pub fn watch_drops(&mut self, ports: Vec<PortId>) {
        self.drop_watch = ports;
        self.drop_watch.retain(|p| (p.0 as usize) < self.stats.len());
    }

    /// The frames dropped on watched ports since the last call, and how many did not fit.
    pub fn take_dropped(&mut self) -> (Vec<DroppedFrame>, u64) {
        (std::mem::take(&mut self.dropped), std::mem::take(&mut self.dropped_lost))
    }

    /// The watched ports' drop counters and a copy of the frame, before it is processed (the
    /// pipeline rewrites frames in place).
    fn watch_before(&self, vnet: VnetHdr, frame: &[u8]) -> (Vec<[u64; DropReason::COUNT]>, VnetHdr, Vec<u8>) {
        (self.drop_watch.iter().map(|p| self.stats[p.0 as usize].drops).collect(), vnet, frame.to_vec())
    }

    /// Records the frame against each watched port whose drop counters moved, with the reason.
    fn watch_after(&mut self, (before, vnet, frame): (Vec<[u64; DropReason::COUNT]>, VnetHdr, Vec<u8>)) {
        for (p, b) in self.drop_watch.iter().zip(before) {
            let now = &self.stats[p.0 as usize].drops;
            let Some(r) = DropReason::ALL.iter().find(|&&r| now[r as usize] > b[r as usize]) else { continue };
            if self.dropped.len() >= DROPPED_CAP {
                self.dropped_lost += 1;
                continue;
            }
            self.dropped.push(DroppedFrame { port: *p, reason: *r, vnet, frame: frame.clone() });
        }
    }

    fn process_one(&mut self, now: Instant, in_port: PortId, buf: &mut PacketBuf, tx: &mut dyn Transmit) {
        let pi = in_port.0 as usize;
        let Some(st) = self.stats.get_mut(pi) else { return };
        st.rx_frames += 1;
        st.rx_bytes += buf.len() as u64;
        if buf.vnet.gso != crate::wire::vnet::Gso::None {
            st.rx_gso_frames += 1;
        }
        if let Err(r) = self.ingress_and_forward(now, in_port, buf, tx) {
            self.stats[pi].drop(r);
        }
    }

    /// The walk of DESIGN.md, one stage per call; each stage either passes the frame on or
    /// says why it stops.
    fn ingress_and_forward(
        &mut self,
        now: Instant,
        in_port: PortId,
        buf: &mut PacketBuf,
        tx: &mut dyn Transmit,
    ) -> Result<(), DropReason> {
        if matches!(self.ports[in_port.0 as usize].role, Role::Public) {
            return self.public_in(now, buf, tx);
        }
        // Filled in place: a context returned by value would be copied on the way.
        let mut ctx = FrameCtx::EMPTY;
        let net = self.ingress(in_port, buf, &mut ctx)?;
        self.switch_in(now, net, &ctx, in_port, buf, tx)
    }

    /// From learning on: security groups, DHCP, the router, L2 forwarding. `ctx` is what
    /// ingress read of the frame's headers.
    fn switch_in(&mut self, now: Instant, net: NetId, ctx: &FrameCtx, in_port: PortId, buf: &mut PacketBuf, tx: &mut dyn Transmit) -> Result<(), DropReason> {
        self.learn(now, net, ctx.src, in_port)?;
        if self.sg.filtered(in_port) {
            let r = &self.router;
            self.sg.check(now, in_port, crate::filter::sg::Way::FromGuest, ctx, buf.frame(), &|a| r.lease_holder(a))?;
        }
        if let Some(r) = self.dhcp(now, net, in_port, ctx, buf) {
            self.drain_outbox(now, tx);
            return r;
        }
        if self.for_router(ctx) {
            if let Some(r) = self.router_in(now, net, ctx, in_port, buf, tx) {
                return r;
            }
        }
        self.forward(now, net, ctx.dst, in_port, buf, tx, Some(ctx))
    }

    /// A frame from a network for the router: the flow cache, else the router's full path.
    /// `None`: not the router's after all (a multicast it does not take), switched on.
    /// Out of line, so switching keeps a lean frame of its own.
    #[inline(never)]
    fn router_in(&mut self, now: Instant, net: NetId, ctx: &FrameCtx, in_port: PortId, buf: &mut PacketBuf, tx: &mut dyn Transmit) -> Option<Result<(), DropReason>> {
        if self.cached_forward(now, Iface::Net(net), ctx, buf, tx) {
            return Some(Ok(()));
        }
        self.router.set_ingress(Some(in_port));
        let v = self.router.handle(now, Iface::Net(net), buf, ctx);
        self.router.set_ingress(None);
        let r = self.l3_verdict(now, v, buf, tx);
        self.cache_hop(now, v);
        self.drain_outbox(now, tx);
        (v != Verdict::NotMine).then_some(r)
    }

    fn is_vtep(&self, p: PortId) -> bool {
        matches!(self.ports.get(p.0 as usize).map(|s| &s.role), Some(Role::Vtep { .. }))
    }

    /// A VXLAN datagram's UDP payload (header and inner frame) from `from`: decapsulated and
    /// run through the pipeline from that peer's port, its network given by the VNI. Only
    /// configured peers, only the VNIs they carry; everything else is counted and dropped.
    pub fn vxlan_in(&mut self, now: Instant, from: std::net::Ipv4Addr, buf: &mut PacketBuf, tx: &mut dyn Transmit) {
        self.vxlan_one(now, from, buf, tx, None);
    }

    /// `udp_gso`: the datagram is a local sender's whole tunnelled UDP super-datagram whose
    /// inner segments are this many bytes.
    fn vxlan_one(&mut self, now: Instant, from: std::net::Ipv4Addr, buf: &mut PacketBuf, tx: &mut dyn Transmit, udp_gso: Option<usize>) {
        if self.drop_watch.is_empty() {
            return self.vxlan_one_inner(now, from, buf, tx, udp_gso);
        }
        // The inner frame, as a capture of the peer's port shows it.
        let inner = buf.frame().get(crate::wire::vxlan::HEADER_LEN..).unwrap_or_default().to_vec();
        let seen = self.watch_before(VnetHdr::default(), &[]);
        self.vxlan_one_inner(now, from, buf, tx, udp_gso);
        self.watch_after((seen.0, seen.1, inner));
    }

    fn vxlan_one_inner(&mut self, now: Instant, from: std::net::Ipv4Addr, buf: &mut PacketBuf, tx: &mut dyn Transmit, udp_gso: Option<usize>) {
        let Some(&port) = self.vteps.get(&from) else {
            self.vx_stats.unknown_peer += 1;
            return;
        };
        let pi = port.0 as usize;
        let st = &mut self.stats[pi];
        st.rx_frames += 1;
        st.rx_bytes += buf.len() as u64;
        if let Some(h) = self.peer_health.get_mut(pi) {
            h.last_rx = Some(now);
        }
        if let Err(r) = self.vxlan_ingress(now, port, buf, tx, udp_gso) {
            self.stats[pi].drop(r);
        }
    }

    /// What one batched (UDP_GRO) read returns: VXLAN datagrams from `from`, back to back,
    /// `seg` bytes each (the last may be shorter). See [`Self::vxlan_messages`].
    pub fn vxlan_batch(&mut self, now: Instant, from: std::net::Ipv4Addr, datagrams: &[u8], seg: usize, buf: &mut PacketBuf, tx: &mut dyn Transmit) {
        self.vxlan_messages(now, [(from, datagrams, seg)], buf, tx);
    }

    /// What one `recvmmsg` returns: messages of (sender, datagrams back to back, datagram
    /// size). Each datagram runs through [`Self::vxlan_in`]; TCP segments that end up bound
    /// for offload-capable ports are coalesced into super-frames across all of them, and
    /// everything held leaves before this returns.
    ///
    /// The kernel gives the size of a UDP_GRO message's datagrams, but for a local sender's
    /// tunnelled UDP super-datagram (a kernel VTEP's guest using UDP_SEGMENT, over a veth) it
    /// gives the inner segment size of what is really one datagram. Cutting there would turn
    /// a guest's payload into VXLAN headers of its choosing, so a message whose first inner
    /// packet is longer than the stated size is taken as one datagram.
    pub fn vxlan_messages<'a>(
        &mut self,
        now: Instant,
        msgs: impl IntoIterator<Item = (std::net::Ipv4Addr, &'a [u8], usize)>,
        buf: &mut PacketBuf,
        tx: &mut dyn Transmit,
    ) {
        self.gro_on = true;
        for (from, datagrams, seg) in msgs {
            let seg = seg.max(1);
            if seg < datagrams.len() && inner_ip_len(datagrams).is_some_and(|l| crate::wire::vxlan::HEADER_LEN + 14 + l > seg) {
                buf.load(datagrams, VnetHdr::default());
                self.vxlan_one(now, from, buf, tx, Some(seg));
                continue;
            }
            for d in datagrams.chunks(seg) {
                buf.load(d, VnetHdr::default());
                self.vxlan_one(now, from, buf, tx, None);
            }
        }
        self.gro_on = false;
        let stats = &mut self.stats;
        self.gro.flush(&mut |p, v, f| gro_sent(stats, tx, p, v, f));
    }

    /// A datagram from `from` that did not fit the receive buffer: counted against its peer.
    pub fn vxlan_truncated(&mut self, from: std::net::Ipv4Addr) {
        match self.vteps.get(&from) {
            Some(p) => self.stats[p.0 as usize].drop(DropReason::VxlanTruncated),
            None => self.vx_stats.unknown_peer += 1,
        }
    }

    fn vxlan_ingress(&mut self, now: Instant, port: PortId, buf: &mut PacketBuf, tx: &mut dyn Transmit, udp_gso: Option<usize>) -> Result<(), DropReason> {
        let vni = crate::wire::vxlan::VxlanPacket::new_checked(buf.frame()).map_err(|_| DropReason::BadVxlan)?.vni();
        let Role::Vtep { vnis, .. } = &self.ports[port.0 as usize].role else { return Err(DropReason::UnknownVni) };
        let net = vnis.net(vni).ok_or(DropReason::UnknownVni)?;
        buf.pull(crate::wire::vxlan::HEADER_LEN);
        // The inner frame's headers, read once: the checksum state and a leaked super-frame's
        // metadata come from them (a leaked super-frame's rewrite touches only its L4
        // checksum field, which the context does not hold).
        let mut ctx = FrameCtx::EMPTY;
        ctx.parse_into(buf.frame()).map_err(|_| DropReason::Malformed)?;
        let l4 = inner_l4(&ctx, buf.frame());
        let mut v = inner_checksum_state(buf.frame(), l4.as_ref());
        let leaked = match udp_gso {
            Some(seg) => leaked_udp_superframe(buf.frame_mut(), &mut v, seg, self.vxlan_mtu, l4.as_ref())?,
            None => leaked_superframe(buf.frame_mut(), &mut v, self.vxlan_mtu, l4.as_ref()),
        };
        buf.vnet = v;
        // RFC 7348: a VTEP drops inner frames carrying a VLAN tag unless configured otherwise.
        self.edge_checks(&ctx)?;
        if leaked {
            self.stats[port.0 as usize].rx_gso_frames += 1;
        }
        self.switch_in(now, net, &ctx, port, buf, tx)
    }

    /// Egress to a VXLAN peer: the header goes in the headroom (no copy) for a plain frame; a
    /// super-frame is segmented in software, each segment encapsulated, and the lot handed over
    /// in batches (UDP_SEGMENT at the I/O edge). Frames over the overlay MTU are counted,
    /// never sent to be lost on the underlay.
    fn output_vxlan(&mut self, port: PortId, vni: u32, buf: &mut PacketBuf, tx: &mut dyn Transmit, ctx: Option<&FrameCtx>) -> Result<(), DropReason> {
        use crate::wire::vxlan;
        let v = buf.vnet;
        let gso = v.gso != crate::wire::vnet::Gso::None;
        let l3 = if gso { (v.hdr_len as usize).saturating_sub(14) + v.gso_size as usize } else { buf.len().saturating_sub(14) };
        if l3 > self.vxlan_mtu {
            return Err(DropReason::VxlanTooBig);
        }
        let entropy = match ctx {
            Some(c) => flow_entropy(c),
            None => FrameCtx::parse(buf.frame()).map_or(0, |c| flow_entropy(&c)),
        };
        let mut hdr = [0u8; vxlan::HEADER_LEN];
        vxlan::emit(&mut hdr, vni);
        let pi = port.0 as usize;
        if v.is_plain() {
            let len = buf.len() as u64;
            if !buf.push_front(&hdr) {
                return Err(DropReason::TagPushFailed);
            }
            let r = tx.transmit_udp(port, entropy, buf.frame(), None);
            buf.pull(vxlan::HEADER_LEN);
            r.map_err(|p| p.reason)?;
            self.stats[pi].tx_frames += 1;
            self.stats[pi].tx_bytes += len;
            return Ok(());
        }
        let mut sink = VxSink { buf: &mut self.vx_batch, used: 0, cur: 0, lens: &mut self.vx_lens, hdr, port, entropy, tx, frames: 0, bytes: 0, err: None };
        sink.lens.clear();
        let r = offload::finish_into(buf.frame(), &v, &mut sink);
        let flushed = r.is_ok() && sink.flush();
        let (frames, bytes, err) = (sink.frames, sink.bytes, sink.err);
        let st = &mut self.stats[pi];
        st.tx_frames += frames;
        st.tx_bytes += bytes;
        // What left is counted above; what did not, frame by frame.
        let lost = wire_frames(buf.len(), &v).saturating_sub(frames).max(1);
        if let Some(e) = err {
            st.drop_n(e, lost);
            return Ok(());
        }
        if !flushed {
            st.drop_n(DropReason::OffloadFailed, lost);
            return Ok(());
        }
        if gso {
            st.tx_sw_segmented += 1;
        }
        Ok(())
    }

    /// DHCP on a network vrouter serves: client messages (UDP to port 67, broadcast or to the
    /// router) go to the server and nowhere else; server messages from guests (UDP from port 67
    /// to 68) are a rogue server and dropped. `None`: not DHCP, or a network without the service.
    fn dhcp(&mut self, now: Instant, net: NetId, in_port: PortId, ctx: &FrameCtx, buf: &PacketBuf) -> Option<Result<(), DropReason>> {
        let udp = ctx.ipv4()?.udp()?;
        if !self.router.serves_dhcp(net) {
            return None;
        }
        let (src, dst, f) = (ctx.src, ctx.dst, buf.frame());
        let (sport, dport) = (udp.src_port, udp.dst_port);
        if sport == 67 && dport == 68 {
            return Some(Err(DropReason::RogueDhcp));
        }
        if dport != 67 || !(dst.is_broadcast() || dst == self.router_mac) {
            return None;
        }
        // Rate limits are per guest: on an access port that is the port; a trunk carries many
        // guests (a whole host's), each limited on its own, keyed by its MAC.
        let key = match self.ports[in_port.0 as usize].role {
            Role::Trunk { .. } | Role::Vtep { .. } => 0x8000 | (src.0.iter().fold(0u16, |h, b| h.rotate_left(5) ^ *b as u16) & 0x7fff),
            _ => in_port.0 & 0x7fff,
        };
        Some(self.router.dhcp_in(now, net, key, src, &f[14..]))
    }

    /// The router takes frames for its MAC and the broadcasts it answers (ARP).
    fn for_router(&self, ctx: &FrameCtx) -> bool {
        ctx.dst == self.router_mac || (ctx.dst.is_broadcast() && ctx.ethertype == crate::wire::ethernet::ethertype::ARP)
    }

    /// A frame for the router from `from` that the flow cache forwards: an
    /// established flow direction the full path forwarded before, with nothing changed since
    /// that its checks read. `false`: the full path's (nothing was done).
    #[inline]
    fn cached_forward(&mut self, now: Instant, from: Iface, ctx: &FrameCtx, buf: &mut PacketBuf, tx: &mut dyn Transmit) -> bool {
        // Only a packet that could have been taken, and missed, has its forwarding noted.
        self.router.hops = false;
        if !self.flow_cache.is_on() {
            return false;
        }
        let Some(ip) = ctx.ipv4() else { return false };
        let Some(est) = self.router.established(now, buf, ip) else { return false };
        let gens = (self.flow_cache.gen(), self.fdb.gen(), self.router.neigh.gen());
        let Some(e) = self.flow_cache.get(est.slot, est.serial, from, est.wire, gens, now) else {
            // The full path gets the lookup just made (`found`).
            self.router.hops = self.flow_cache.wants(est.slot, gens, now);
            return false;
        };
        let (port, net, mac) = (e.port, e.net, e.mac);
        self.router.found = None;
        self.flow_cache.stats.hits += 1;
        self.router.replay(now, &est, buf, mac);
        self.output(now, port, net, buf, tx, None);
        true
    }

    /// After the full path ran a frame with verdict `v`: the router's note of
    /// how it forwarded the frame's flow direction (if it did), with the egress port that
    /// forwarding went to, into the flow cache.
    fn cache_hop(&mut self, now: Instant, v: Verdict) {
        self.router.found = None;
        self.router.hops = false;
        let Some(hop) = self.router.hop.take() else { return };
        if !matches!(v, Verdict::Forward(_)) {
            return;
        }
        let (port, net, until) = match hop.to {
            // As `egress_routed`: the MAC table's port for the next hop (never a flood).
            Iface::Net(n) if (n.0 as usize) < self.nets.len() => match self.fdb.lookup_until(n, hop.mac, now) {
                Some((p, until)) if p != ROUTER_PORT => (p, Some(n), until),
                _ => return,
            },
            Iface::Public => match self.public_port {
                Some(p) => (p, None, Instant(u64::MAX)),
                None => return,
            },
            _ => return,
        };
        let gens = (self.flow_cache.gen(), self.fdb.gen(), hop.neigh_gen);
        self.flow_cache.fill(&hop, port, net, until, gens);
    }

    fn l3_verdict(&mut self, now: Instant, v: Verdict, buf: &mut PacketBuf, tx: &mut dyn Transmit) -> Result<(), DropReason> {
        match v {
            Verdict::Forward(iface) => {
                self.egress_routed(now, iface, buf, tx);
                Ok(())
            }
            Verdict::Consumed | Verdict::NotMine => Ok(()),
            Verdict::Drop(r) => Err(r),
        }
    }

    /// The public port: not part of any network; what is addressed to the router (or a
    /// broadcast ARP) goes to it, everything else stops here.
    fn public_in(&mut self, now: Instant, buf: &mut PacketBuf, tx: &mut dyn Transmit) -> Result<(), DropReason> {
        let mut ctx = FrameCtx::EMPTY;
        self.untagged_edge(buf, &mut ctx)?;
        offload::validate_ctx(buf.frame(), &buf.vnet, &ctx).map_err(|_| DropReason::BadVnetHdr)?;
        if !self.for_router(&ctx) {
            return Err(if ctx.dst.is_multicast() { DropReason::UnsupportedL3 } else { DropReason::NotForwarded });
        }
        if self.cached_forward(now, Iface::Public, &ctx, buf, tx) {
            return Ok(());
        }
        let v = self.router.handle(now, Iface::Public, buf, &ctx);
        let r = match v {
            Verdict::NotMine => Ok(()),
            v => self.l3_verdict(now, v, buf, tx),
        };
        self.cache_hop(now, v);
        self.drain_outbox(now, tx);
        r
    }

    /// The checks of an edge that carries untagged frames of one network and no guest of its
    /// own (the public port, a VXLAN peer): no tag, a plausible source, no 802.1D group.
    /// Fills `ctx` with what the frame's headers say.
    fn untagged_edge(&self, buf: &PacketBuf, ctx: &mut FrameCtx) -> Result<(), DropReason> {
        ctx.parse_into(buf.frame()).map_err(|_| DropReason::Malformed)?;
        self.edge_checks(ctx)
    }

    /// [`Self::untagged_edge`]'s checks on a frame already read into `ctx`.
    fn edge_checks(&self, ctx: &FrameCtx) -> Result<(), DropReason> {
        let (dst, src) = (ctx.dst, ctx.src);
        if crate::wire::vlan::is_tag_ethertype(ctx.ethertype) {
            return Err(DropReason::TaggedOnAccess);
        }
        if !src.is_unicast() || src == self.router_mac {
            return Err(DropReason::BadSrcMac);
        }
        if dst.is_link_local() {
            return Err(DropReason::LinkLocal);
        }
        Ok(())
    }

    /// Ingress: which network the frame belongs to (popping a trunk tag), and whether it may
    /// enter at all (source address, 802.1D link-local groups, port security, offload metadata).
    fn ingress(&self, in_port: PortId, buf: &mut PacketBuf, ctx: &mut FrameCtx) -> Result<NetId, DropReason> {
        let role = &self.ports[in_port.0 as usize].role;
        let (net, tagged) = switch::classify(role, buf.frame())?;
        if tagged && !buf.pop_vlan() {
            return Err(DropReason::TagPopFailed);
        }
        // The one read of the frame's headers that every later stage works from.
        ctx.parse_into(buf.frame()).map_err(|_| DropReason::Malformed)?;
        let (dst, src) = (ctx.dst, ctx.src);
        if !src.is_unicast() || src == self.router_mac {
            return Err(DropReason::BadSrcMac);
        }
        // A guest's BPDU or LLDP must never reach a physical switch through a trunk.
        if dst.is_link_local() {
            return Err(DropReason::LinkLocal);
        }
        if let Role::Access { net: n, .. } = role {
            switch::guest_guard(ctx, buf.frame(), self.router.gateway(*n))?;
        }
        if let Role::Access { net: n, security: Some(sec) } = role {
            // Without a fixed address, a guest on a network vrouter serves DHCP to may source
            // exactly its current lease's address (and 0.0.0.0 while it asks for one).
            let dynamic = (sec.ip.is_none() && self.router.serves_dhcp(*n)).then(|| self.router.lease_of(*n, sec.mac));
            switch::check_security(sec, dynamic, ctx, buf.frame())?;
        }
        // Offload metadata is guest-controlled too: it must describe this frame, or a receiver
        // finishing the checksum could rewrite headers that port security has just passed.
        offload::validate_ctx(buf.frame(), &buf.vnet, ctx).map_err(|_| DropReason::BadVnetHdr)?;
        Ok(net)
    }

    /// Learning: remember where `src` lives (or refuse a port over its limit, or a pinned MAC).
    fn learn(&mut self, now: Instant, net: NetId, src: MacAddr, in_port: PortId) -> Result<(), DropReason> {
        if let Some(Role::Vtep { evpn: true, .. }) = self.ports.get(in_port.0 as usize).map(|p| &p.role) {
            return Ok(());
        }
        let st = &mut self.stats[in_port.0 as usize];
        match self.fdb.learn(net, src, in_port, now) {
            Ok(Learned::Moved { .. }) => st.mac_moves += 1,
            Ok(_) => {}
            Err(LearnError::PortLimit) => return Err(DropReason::PortMacLimit),
            Err(LearnError::NetFull) => st.learn_table_full += 1,
            Err(LearnError::Pinned) => return Err(DropReason::SpoofedMac),
        }
        Ok(())
    }

    /// L2 forwarding: a learned unicast destination gets the frame alone; group and unknown
    /// destinations are flooded to the network's other ports.
    /// `ctx`: what the frame's headers say, when they were read and not rewritten since.
    #[allow(clippy::too_many_arguments)]
    fn forward(
        &mut self,
        now: Instant,
        net: NetId,
        dst: MacAddr,
        in_port: PortId,
        buf: &mut PacketBuf,
        tx: &mut dyn Transmit,
        ctx: Option<&FrameCtx>,
    ) -> Result<(), DropReason> {
        if !dst.is_multicast() {
            match self.fdb.lookup_from(in_port, net, dst, now) {
                Some(p) if p == in_port => return Err(DropReason::Hairpin),
                Some(p) => {
                    self.output(now, p, Some(net), buf, tx, ctx);
                    return Ok(());
                }
                None => {}
            }
        }
        self.flood(now, net, in_port, buf, tx, ctx);
        Ok(())
    }

    fn flood(&mut self, now: Instant, net: NetId, in_port: PortId, buf: &mut PacketBuf, tx: &mut dyn Transmit, ctx: Option<&FrameCtx>) {
        let n = net.0 as usize;
        // Split horizon: what came from one VTEP was replicated to every VTEP by its sender.
        let from_vtep = self.is_vtep(in_port);
        for i in 0..self.nets[n].members.len() {
            let p = self.nets[n].members[i];
            if p != in_port && !(from_vtep && self.is_vtep(p)) {
                self.output(now, p, Some(net), buf, tx, ctx);
            }
        }
    }

    /// Egress: tag for trunks, then hand the frame (or its software-finished segments) to `tx`.
    /// `ctx`: what the frame's headers say, if read and not rewritten since (else they are read
    /// here, only for a port with security groups).
    fn output(&mut self, now: Instant, port: PortId, net: Option<NetId>, buf: &mut PacketBuf, tx: &mut dyn Transmit, ctx: Option<&FrameCtx>) {
        let pi = port.0 as usize;
        if self.sg.filtered(port) {
            let fresh;
            let ctx = match ctx {
                Some(c) => Ok(c),
                None => {
                    fresh = FrameCtx::parse(buf.frame());
                    fresh.as_ref().map_err(|_| DropReason::SecurityGroup)
                }
            };
            let r = &self.router;
            if let Err(e) = ctx.and_then(|c| self.sg.check(now, port, crate::filter::sg::Way::ToGuest, c, buf.frame(), &|a| r.lease_holder(a))) {
                self.stats[pi].drop(e);
                return;
            }
        }
        if let Role::Vtep { vnis, .. } = &self.ports[pi].role {
            let vni = net.and_then(|n| vnis.vni(n));
            let (errors_before, sent_before) = (self.stats[pi].dropped(DropReason::PortDown), self.stats[pi].tx_frames);
            let r = match vni {
                Some(vni) => self.output_vxlan(port, vni, buf, tx, ctx),
                None => Err(DropReason::UnknownVni),
            };
            if let Err(r) = r {
                self.stats[pi].drop(r);
            }
            // An unreachable peer (EHOSTUNREACH, ENETUNREACH, ENETDOWN) says something about it;
            // a full queue or a local refusal does not. A send that leaves says the route is back.
            if let Some(h) = self.peer_health.get_mut(pi) {
                if self.stats[pi].dropped(DropReason::PortDown) > errors_before {
                    h.last_tx_error = Some(now);
                } else if self.stats[pi].tx_frames > sent_before {
                    h.last_tx_ok = Some(now);
                }
            }
            return;
        }
        // A trunk tags every network but its native one.
        let trunk = matches!(&self.ports[pi].role, Role::Trunk { native, .. } if net.is_none() || *native != net);
        let vid = net.and_then(|n| self.nets[n.0 as usize].spec.vlan);
        if trunk {
            match vid {
                Some(v) if buf.push_vlan(v, buf.prio) => {}
                _ => {
                    self.stats[pi].drop(DropReason::TagPushFailed);
                    return;
                }
            }
        }
        let caps = self.ports[pi].offload;
        // Only untagged ports that take TCPv4 super-frames ever hold frames, so no other port
        // has anything to wait for.
        if self.gro_on && caps.tso4 && caps.csum && !trunk {
            let stats = &mut self.stats;
            if self.gro.offer(port, buf.frame(), &buf.vnet, &mut |p, v, f| gro_sent(stats, tx, p, v, f)) == crate::gro::Offer::Held {
                return;
            }
        }
        let st = &mut self.stats[pi];
        let len = buf.len() as u64;
        if caps.takes(&buf.vnet) {
            match tx.transmit(port, caps.vnet.then_some(&buf.vnet), buf.frame()) {
                Ok(()) => {
                    st.tx_frames += 1;
                    st.tx_bytes += len;
                }
                Err(r) => st.drop_n(r, wire_frames(buf.len(), &buf.vnet)),
            }
        } else {
            let gso = buf.vnet.gso != crate::wire::vnet::Gso::None;
            let mut emit = |seg: &[u8]| match tx.transmit(port, None, seg) {
                Ok(()) => {
                    st.tx_frames += 1;
                    st.tx_bytes += seg.len() as u64;
                }
                Err(r) => st.drop(r),
            };
            match offload::finish(buf.frame(), &buf.vnet, &mut self.scratch, &mut emit) {
                Ok(_) if gso => st.tx_sw_segmented += 1,
                Ok(_) => {}
                Err(_) => st.drop(DropReason::OffloadFailed),
            }
        }
        if trunk {
            // Undo our own push; the ingress priority stays for the next port.
            let prio = buf.prio;
            buf.pop_vlan();
            buf.prio = prio;
        }
    }

    // ---- typed snapshots for the control plane (off the per-packet path); JSON and tables
    // are made on the control side ----

    fn role_row(&self, r: &Role) -> RoleRow {
        match r {
            Role::Access { net, security } => RoleRow::Access {
                network: self.nets[net.0 as usize].spec.name.clone(),
                port_security: security.is_some(),
                mac: security.map(|s| s.mac.to_string()),
                ip: security.and_then(|s| s.ip).map(|i| i.to_string()),
            },
            Role::Trunk { vlans, native } => RoleRow::Trunk {
                untagged: native.map(|n| self.nets[n.0 as usize].spec.name.clone()),
                networks: vlans
                    .iter()
                    .enumerate()
                    .filter_map(|(vid, n)| n.map(|n| TrunkNet { network: self.nets[n.0 as usize].spec.name.clone(), vlan: vid as u16 }))
                    .collect(),
            },
            Role::Public | Role::Vacant => RoleRow::Public { network: None },
            Role::Vtep { remote, vnis, .. } => RoleRow::Vxlan {
                remote: remote.to_string(),
                networks: vnis.iter().map(|(vni, n)| VxlanNet { network: self.nets[n.0 as usize].spec.name.clone(), vni }).collect(),
            },
        }
    }

    pub fn show_ports(&self, now: Instant) -> Vec<PortRow> {
        self.ports
            .iter()
            .enumerate()
            .filter(|(_, p)| p.role != Role::Vacant)
            .map(|(i, p)| {
                let s = &self.stats[i];
                PortRow {
                    name: p.name.clone(),
                    ifname: p.ifname.clone(),
                    kind: p.kind.clone(),
                    offload: p.offload.vnet,
                    offloads: p.offload.names(),
                    macs_learned: self.fdb.port_count(PortId(i as u16)),
                    rx_frames: s.rx_frames,
                    rx_bytes: s.rx_bytes,
                    tx_frames: s.tx_frames,
                    tx_bytes: s.tx_bytes,
                    drops: s.total_drops(),
                    peer: matches!(p.role, Role::Vtep { .. }).then(|| self.peer_health[i].row(now)),
                    role: self.role_row(&p.role),
                }
            })
            .collect()
    }

    /// EVPN: the FDB's entries from routes become exactly `want` ((network, MAC, VTEP port));
    /// what was learned on other ports for those MACs is overridden (they moved). Returns how
    /// many were refused (a configured MAC, or a full table).
    pub fn evpn_sync(&mut self, now: Instant, want: &[(NetId, MacAddr, PortId)]) -> usize {
        let set: std::collections::HashSet<(NetId, MacAddr, PortId)> = want.iter().copied().collect();
        self.fdb.retain_remote(|n, m, p| set.contains(&(n, m, p)));
        let mut refused = 0;
        for &(n, m, p) in want {
            if self.fdb.lookup(n, m, now) == Some(p) && self.fdb.iter_one(n, m).is_some_and(|e| e.remote) {
                continue;
            }
            if (n.0 as usize) >= self.nets.len() || !self.is_vtep(p) || !self.fdb.install_remote(n, m, p, now) {
                refused += 1;
            }
        }
        refused
    }

    /// Addresses configured for guests (port security's `ip` and `allowed_addresses`):
    /// (network, MAC, address).
    pub fn configured_addresses(&self) -> Vec<(NetId, MacAddr, std::net::Ipv4Addr)> {
        let mut v = Vec::new();
        for p in &self.ports {
            if let Role::Access { net, security: Some(s) } = &p.role {
                v.extend(s.ip.into_iter().chain(s.allowed.iter()).map(|ip| (*net, s.mac, ip)));
            }
        }
        v
    }

    /// The MACs of this host's guests (learned or configured on ports that are not VXLAN
    /// peers, not aged out), by network: what EVPN advertises.
    pub fn local_macs(&self, now: Instant) -> Vec<(NetId, MacAddr)> {
        self.fdb
            .iter()
            .filter(|(n, m, e)| !e.remote && !self.is_vtep(e.port) && self.fdb.lookup(*n, *m, now).is_some())
            .map(|(n, m, _)| (n, m))
            .collect()
    }

    pub fn show_fdb(&self, now: Instant) -> Vec<FdbRow> {
        let mut rows: Vec<FdbRow> = self
            .fdb
            .iter()
            .map(|(n, m, e)| {
                let age_secs = (!e.fixed && !e.remote).then(|| now.since(e.last_seen).as_secs());
                FdbRow {
                    network: self.nets[n.0 as usize].spec.name.clone(),
                    mac: m.to_string(),
                    port: self.ports[e.port.0 as usize].name.clone(),
                    kind: if e.remote { "evpn" } else if age_secs.is_some() { "learned" } else { "static" },
                    age_secs,
                }
            })
            .collect();
        rows.sort_by(|a, b| (&a.network, &a.mac, &a.port).cmp(&(&b.network, &b.mac, &b.port)));
        rows
    }

    pub fn show_stats(&self) -> StatsSnapshot {
        // Removed ports' counters stay in the totals, so they never go down.
        let mut totals = self.retired.clone();
        let ports = self
            .ports
            .iter()
            .zip(&self.stats)
            .filter(|(p, s)| p.role != Role::Vacant || s.rx_frames + s.tx_frames > 0)
            .map(|(p, s)| {
                totals.absorb(s);
                PortStatsRow { name: Some(p.name.clone()), drops: s.drop_map(), stats: s.clone() }
            })
            .collect();
        let networks = self
            .nets
            .iter()
            .enumerate()
            .filter(|(_, n)| !n.spec.name.is_empty())
            .map(|(i, n)| NetRow { name: n.spec.name.clone(), vlan: n.spec.vlan, macs: self.fdb.net_count(NetId(i as u16)) })
            .collect();
        let ct = &self.router.ct;
        StatsSnapshot {
            totals: PortStatsRow { name: None, drops: totals.drop_map(), stats: totals },
            ports,
            networks,
            fdb_entries: self.fdb.len(),
            router: self.router.stats,
            neighbours: self.router.neigh.len(),
            conntrack: CtRow { flows: ct.len(), max: ct.max(), stats: ct.stats },
            security_groups: SgRow { flows: self.sg.flows(), stats: self.sg.stats },
            vxlan: self.vx_stats,
            flow_cache: self.flow_cache.stats,
        }
    }
}

/// Offload state of a decapsulated frame. A sender whose underlay offloads checksums (the
/// kernel's VXLAN over a veth, say) may leave the inner TCP/UDP checksum partial (the
/// pseudo-header sum only), and a UDP socket hands that over unfinished: such a frame is
/// marked as needing its checksum (finished at egress, or by the guest's virtio driver); one
/// whose checksum verifies is marked valid, so the guest need not verify it again.
fn inner_checksum_state(f: &[u8], l4: Option<&InnerL4>) -> VnetHdr {
    use crate::wire::checksum;
    use crate::wire::ipv4::proto;
    let mut v = VnetHdr::default();
    let Some(&InnerL4 { at, proto: p, pseudo, end }) = l4 else { return v };
    let co = match p {
        proto::TCP => 16,
        proto::UDP => 6,
        _ => return v,
    };
    let l4 = &f[at..end];
    // UDP over IPv4 may carry no checksum (zero); over IPv6 zero is invalid and left for the
    // receiver to refuse.
    if l4.len() < co + 2 || (p == proto::UDP && crate::wire::be16(l4, 6) == 0) {
        return v;
    }
    // The partial form first: it costs nothing, and a complete checksum that happens to equal
    // it is merely computed again, to the same value.
    if crate::wire::be16(l4, co) == checksum::fold(pseudo) {
        v.needs_csum = true;
        v.csum_start = at as u16;
        v.csum_offset = co as u16;
    } else if checksum::fold(checksum::add(pseudo, l4)) == 0xffff {
        v.data_valid = true;
    }
    v
}

/// A decapsulated frame's transport layer: where it starts and ends, its protocol, and its
/// pseudo-header sum. IPv4 unfragmented, IPv6 without extension headers; `None` otherwise.
#[derive(Clone, Copy)]
struct InnerL4 {
    at: usize,
    proto: u8,
    pseudo: u64,
    end: usize,
}

/// IPv4 from what the frame's context says; IPv6 (which the context does not read) from the
/// bytes of `f`, the frame the context was read from.
fn inner_l4(ctx: &FrameCtx, f: &[u8]) -> Option<InnerL4> {
    use crate::wire::checksum;
    if let Some(ip) = ctx.ipv4() {
        if ip.ip.is_fragment() {
            return None;
        }
        let (p, at, end) = (ip.ip.protocol, ip.l4_offset(), ip.end());
        return Some(InnerL4 { at, proto: p, pseudo: checksum::pseudo_v4(ip.ip.src.octets(), ip.ip.dst.octets(), p, (end - at) as u32), end });
    }
    match f.get(12..14)? {
        [0x86, 0xdd] if f.len() >= 54 && f[14] >> 4 == 6 => {
            let end = 54 + crate::wire::be16(f, 18) as usize;
            f.get(54..end)?;
            let (mut src, mut dst) = ([0u8; 16], [0u8; 16]);
            src.copy_from_slice(&f[22..38]);
            dst.copy_from_slice(&f[38..54]);
            Some(InnerL4 { at: 54, proto: f[20], pseudo: checksum::pseudo_v6(src, dst, f[20], (end - 54) as u32), end })
        }
        _ => None,
    }
}

/// Software-finished frames for a VXLAN peer, each behind its VXLAN header, back to back in
/// `buf`; sent in batches of equal-sized datagrams (UDP_SEGMENT at the I/O edge) whenever the
/// buffer fills, and at the end.
struct VxSink<'a> {
    buf: &'a mut [u8],
    used: usize,
    cur: usize,
    lens: &'a mut Vec<usize>,
    hdr: [u8; crate::wire::vxlan::HEADER_LEN],
    port: PortId,
    entropy: u16,
    tx: &'a mut dyn Transmit,
    /// Frames and inner bytes sent so far.
    frames: u64,
    bytes: u64,
    err: Option<DropReason>,
}

impl VxSink<'_> {
    /// Sends what the buffer holds. False (and `err` set) if the send failed.
    fn flush(&mut self) -> bool {
        let (lens, batch) = (&*self.lens, &self.buf[..self.used]);
        let n = lens.len();
        if n == 0 {
            return true;
        }
        // One batch when every datagram but the last has the first one's size (segments
        // do); otherwise one datagram at a time.
        let first = lens[0];
        let even = lens.iter().enumerate().all(|(i, &l)| l == first || (i == n - 1 && l < first));
        let r = if even {
            self.tx.transmit_udp(self.port, self.entropy, batch, (n > 1).then_some(first))
        } else {
            let mut at = 0;
            lens.iter().enumerate().try_for_each(|(i, &l)| {
                let r = self.tx.transmit_udp(self.port, self.entropy, &batch[at..at + l], None);
                at += l;
                r.map_err(|p| Partial { sent: i, ..p })
            })
        };
        if let Err(p) = r {
            let sent = p.sent.min(n);
            self.frames += sent as u64;
            self.bytes += lens[..sent].iter().map(|l| l - crate::wire::vxlan::HEADER_LEN).sum::<usize>() as u64;
            self.err = Some(p.reason);
            return false;
        }
        self.frames += n as u64;
        self.bytes += (self.used - n * crate::wire::vxlan::HEADER_LEN) as u64;
        self.used = 0;
        self.lens.clear();
        true
    }
}

impl offload::Sink for VxSink<'_> {
    fn next(&mut self, len: usize) -> Option<&mut [u8]> {
        let need = self.hdr.len() + len;
        if self.used + need > self.buf.len() && !self.flush() {
            return None;
        }
        let room = self.buf.get_mut(self.used..self.used + need)?;
        room[..self.hdr.len()].copy_from_slice(&self.hdr);
        self.cur = need;
        Some(&mut room[self.hdr.len()..])
    }
    fn done(&mut self) {
        self.used += self.cur;
        self.lens.push(self.cur);
    }
}

/// Counts and writes one frame the coalescer let go (its port takes virtio_net_hdr metadata).
fn gro_sent(stats: &mut [PortStats], tx: &mut dyn Transmit, port: PortId, v: &VnetHdr, f: &[u8]) {
    let Some(st) = stats.get_mut(port.0 as usize) else { return };
    match tx.transmit(port, Some(v), f) {
        Ok(()) => {
            st.tx_frames += 1;
            st.tx_bytes += f.len() as u64;
            if v.gso != crate::wire::vnet::Gso::None {
                st.tx_coalesced += 1;
            }
        }
        // A coalesced super-frame lost is each of the segments it was made of.
        Err(r) => st.drop_n(r, wire_frames(f.len(), v)),
    }
}

/// A TCP/IPv4 frame over the overlay MTU from a VXLAN peer is a super-frame that never met a
/// wire: the kernel's VXLAN device over a veth sends its guests' GSO packets whole (a
/// SKB_GSO_UDP_TUNNEL datagram, handed to a UDP socket as one) and leaves their segmentation
/// to whoever transmits them last. Such a frame becomes a GSO super-frame again, with the
/// overlay's segment size (what a segment on a real underlay could carry) and a partial
/// checksum, so a guest takes it as one frame and any other egress cuts it to size. True if
/// the frame was marked so.
fn leaked_superframe(f: &mut [u8], v: &mut VnetHdr, mtu: usize, l4: Option<&InnerL4>) -> bool {
    use crate::wire::checksum;
    if !(v.needs_csum || v.data_valid) || f.get(12..14) != Some(&[0x08, 0x00][..]) {
        return false;
    }
    let Some(&InnerL4 { at: l4, proto, pseudo, end }) = l4 else { return false };
    let hl = l4 - 14;
    if end - 14 <= mtu || proto != crate::wire::ipv4::proto::TCP {
        return false;
    }
    let Some(&doff) = f.get(l4 + 12) else { return false };
    let thl = (doff >> 4) as usize * 4;
    let Some(mss) = mtu.checked_sub(hl + thl).filter(|&m| m >= 48) else { return false };
    if thl < 20 || l4 + thl >= end {
        return false;
    }
    f[l4 + 16..l4 + 18].copy_from_slice(&checksum::fold(pseudo).to_be_bytes());
    *v = VnetHdr {
        needs_csum: true,
        data_valid: false,
        gso: crate::wire::vnet::Gso::TcpV4,
        // CWR belongs on the first segment only.
        ecn: f[l4 + 13] & 0x80 != 0,
        hdr_len: (l4 + thl) as u16,
        gso_size: mss as u16,
        csum_start: l4 as u16,
        csum_offset: 16,
    };
    true
}

/// The length its IP header gives the inner packet of the first VXLAN datagram in `d`.
fn inner_ip_len(d: &[u8]) -> Option<usize> {
    let ip = crate::wire::vxlan::HEADER_LEN + 14;
    match d.get(ip - 2..ip)? {
        [0x08, 0x00] => d.get(ip + 2..ip + 4).map(|b| u16::from_be_bytes([b[0], b[1]]) as usize),
        [0x86, 0xdd] => d.get(ip + 4..ip + 6).map(|b| 40 + u16::from_be_bytes([b[0], b[1]]) as usize),
        _ => None,
    }
}

/// A local sender's whole tunnelled UDP super-datagram (see [`Datapath::vxlan_messages`]):
/// its inner UDP packet becomes a USO super-frame of `seg`-byte datagrams, so every egress
/// delivers the guest's datagrams as they were sent. One that cannot be (not UDP with a
/// known checksum state, segments over the overlay MTU) is dropped: delivered whole it would
/// merge datagrams. True if marked.
fn leaked_udp_superframe(f: &mut [u8], v: &mut VnetHdr, seg: usize, mtu: usize, l4: Option<&InnerL4>) -> Result<bool, DropReason> {
    let Some(&InnerL4 { at: l4, proto, pseudo, .. }) = l4 else { return Err(DropReason::VxlanBadSuperframe) };
    let hl = l4 - 14;
    if proto != crate::wire::ipv4::proto::UDP || !(v.needs_csum || v.data_valid) || seg < 8 {
        return Err(DropReason::VxlanBadSuperframe);
    }
    if hl + 8 + seg > mtu || seg > u16::MAX as usize {
        return Err(DropReason::VxlanTooBig);
    }
    let meta = VnetHdr {
        needs_csum: true,
        data_valid: false,
        gso: crate::wire::vnet::Gso::UdpL4,
        ecn: false,
        hdr_len: (l4 + 8) as u16,
        gso_size: seg as u16,
        csum_start: l4 as u16,
        csum_offset: 6,
    };
    offload::validate(f, &meta).map_err(|_| DropReason::VxlanBadSuperframe)?;
    // A USO frame carries the pseudo-header sum, whatever the sender left there.
    f[l4 + 6..l4 + 8].copy_from_slice(&crate::wire::checksum::fold(pseudo).to_be_bytes());
    *v = meta;
    Ok(true)
}

/// A hash of the inner flow (MACs, and IPv4 addresses and ports when present) for the outer
/// UDP source port, so the underlay's ECMP can spread flows (RFC 7348 section 5).
fn flow_entropy(ctx: &FrameCtx) -> u16 {
    let mut h: u32 = 0x811c_9dc5;
    let mut eat = |b: &[u8]| {
        for &x in b {
            h = (h ^ x as u32).wrapping_mul(0x0100_0193);
        }
    };
    eat(&ctx.dst.0);
    eat(&ctx.src.0);
    if let Some(ip) = ctx.ipv4() {
        eat(&[ip.ip.protocol]);
        eat(&ip.ip.src.octets());
        eat(&ip.ip.dst.octets());
        // Every fragment of a datagram takes its first fragment's path: no ports for any.
        if let (Some((sp, dp)), false) = (ip.ports(), ip.ip.is_fragment()) {
            eat(&sp.to_be_bytes());
            eat(&dp.to_be_bytes());
        }
    }
    (h ^ (h >> 16)) as u16
}

pub mod flowcache;
#[cfg(test)]
mod tests;
