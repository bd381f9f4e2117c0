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
use crate::offload;
use crate::router::{Iface, L3Config, Router, Verdict};
use crate::switch::fdb::{Fdb, LearnError, Learned};
use crate::switch::stats::{DropReason, PortStats};
use crate::switch::{self, NetId, PortId, Role};
use crate::time::Instant;
use crate::wire::ethernet::{EthernetFrame, MacAddr};
use crate::wire::vnet::VnetHdr;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// Where the pipeline's output goes. The I/O edge writes to the port's fd; `vnet` is `Some`
/// exactly when the port was declared offload-capable.
pub trait Transmit {
    fn transmit(&mut self, port: PortId, vnet: Option<&VnetHdr>, frame: &[u8]) -> Result<(), DropReason>;
}

/// One port as the datapath sees it.
#[derive(Debug, Clone)]
pub struct PortSpec {
    pub name: String,
    pub ifname: String,
    /// "tap" or "netdev" (for display).
    pub kind: String,
    pub role: Role,
    /// The egress takes virtio_net_hdr metadata (GSO super-frames, partial checksums).
    pub offload: bool,
    /// Max MACs learned on this port (`None`: network cap only).
    pub mac_limit: Option<usize>,
}

#[derive(Debug, Clone)]
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
}

/// A row of `ctl show ports`.
#[derive(Debug, Clone, Serialize)]
pub struct PortRow {
    pub name: String,
    pub ifname: String,
    pub kind: String,
    pub offload: bool,
    pub macs_learned: usize,
    pub rx_frames: u64,
    pub rx_bytes: u64,
    pub tx_frames: u64,
    pub tx_bytes: u64,
    /// All drops on this port.
    pub drops: u64,
    #[serde(flatten)]
    pub role: RoleRow,
}

/// How a port attaches, as shown.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "mode", rename_all = "lowercase")]
pub enum RoleRow {
    Access { network: String, port_security: bool, mac: Option<String>, ip: Option<String> },
    Trunk { networks: Vec<TrunkNet> },
    Public { network: Option<String> },
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
struct Ingress {
    net: NetId,
    src: MacAddr,
    dst: MacAddr,
}

struct Net {
    spec: NetSpec,
    /// Every port carrying this network (guest ports and trunks), in config order.
    members: Vec<PortId>,
}

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
}

impl Datapath {
    pub fn new(cfg: DatapathConfig) -> Self {
        let mut nets: Vec<Net> = cfg.nets.into_iter().map(|spec| Net { spec, members: Vec::new() }).collect();
        for (i, p) in cfg.ports.iter().enumerate() {
            let id = PortId(i as u16);
            match &p.role {
                Role::Access { net, .. } => {
                    if let Some(n) = nets.get_mut(net.0 as usize) {
                        n.members.push(id);
                    }
                }
                Role::Trunk { vlans } => {
                    for net in vlans.iter().flatten() {
                        if let Some(n) = nets.get_mut(net.0 as usize) {
                            if !n.members.contains(&id) {
                                n.members.push(id);
                            }
                        }
                    }
                }
                Role::Public => {}
            }
        }
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
        let sg = crate::filter::sg::SecurityGroups::new(cfg.security, cfg.ports.len());
        Datapath {
            sg,
            router_mac: cfg.router_mac,
            fdb,
            stats: vec![PortStats::default(); cfg.ports.len()],
            ports: cfg.ports,
            nets,
            next_sweep: Instant::ZERO,
            scratch: vec![0u8; crate::buf::BUF_SIZE].into_boxed_slice(),
            router: Router::new(cfg.router_mac, cfg.l3),
            public_port,
        }
    }

    pub fn port_name(&self, p: PortId) -> &str {
        self.ports.get(p.0 as usize).map_or("?", |s| s.name.as_str())
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

    /// The router, for snapshots (conntrack pages, counters).
    pub fn router(&self) -> &Router {
        &self.router
    }

    /// The router, to install its services and replay persisted state at start.
    pub fn router_mut(&mut self) -> &mut Router {
        &mut self.router
    }

    /// Event: lease records up to `seq` are durable; the DHCP ACKs they held go out.
    pub fn dhcp_committed(&mut self, now: Instant, seq: u64, tx: &mut dyn Transmit) {
        self.router.dhcp_committed(seq);
        self.drain_outbox(now, tx);
    }

    /// Event: an upstream DNS server answered.
    pub fn dns_upstream(&mut self, now: Instant, from: std::net::SocketAddr, payload: &[u8], tx: &mut dyn Transmit) {
        self.router.dns_upstream(now, from, payload);
        self.drain_outbox(now, tx);
    }

    /// Sends what the router made (ARP, ICMP, frames released by ARP resolution) through the
    /// normal egress.
    fn drain_outbox(&mut self, now: Instant, tx: &mut dyn Transmit) {
        if self.router.outbox.is_empty() {
            return;
        }
        // Egress never makes new router frames, so one pass empties it; the Vec (and its
        // capacity) goes back for the next ones.
        let mut out = std::mem::take(&mut self.router.outbox);
        for mut o in out.drain(..) {
            self.egress_routed(now, o.iface, &mut o.buf, tx);
            self.router.recycle(o.buf);
        }
        self.router.outbox = out;
    }

    /// A frame the router finished (Ethernet header set) leaves on `iface`.
    fn egress_routed(&mut self, now: Instant, iface: Iface, buf: &mut PacketBuf, tx: &mut dyn Transmit) {
        match iface {
            Iface::Net(net) if (net.0 as usize) < self.nets.len() => {
                let dst = MacAddr::from_bytes(buf.frame()).unwrap_or(MacAddr::BROADCAST);
                let _ = self.forward(now, net, dst, ROUTER_PORT, buf, tx);
            }
            Iface::Net(_) => {}
            Iface::Public => {
                if let Some(p) = self.public_port {
                    self.output(now, p, None, buf, tx);
                }
            }
        }
    }

    /// Runs one received frame through the pipeline.
    pub fn process(&mut self, now: Instant, in_port: PortId, buf: &mut PacketBuf, tx: &mut dyn Transmit) {
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
        let Ingress { net, src, dst } = self.ingress(in_port, buf)?;
        self.learn(now, net, src, in_port)?;
        if self.sg.filtered(in_port) {
            let r = &self.router;
            self.sg.check(now, in_port, crate::filter::sg::Way::FromGuest, buf.frame(), &|a| r.lease_holder(a))?;
        }
        if let Some(r) = self.dhcp(now, net, in_port, src, dst, buf) {
            self.drain_outbox(now, tx);
            return r;
        }
        if self.for_router(dst, buf) {
            let v = self.router.handle(now, Iface::Net(net), buf);
            let r = self.l3_verdict(now, v, buf, tx);
            self.drain_outbox(now, tx);
            if v != Verdict::NotMine {
                return r;
            }
        }
        self.forward(now, net, dst, in_port, buf, tx)
    }

    /// DHCP on a network vrouter serves: client messages (UDP to port 67, broadcast or to the
    /// router) go to the server and nowhere else; server messages from guests (UDP from port 67
    /// to 68) are a rogue server and dropped. `None`: not DHCP, or a network without the service.
    fn dhcp(&mut self, now: Instant, net: NetId, in_port: PortId, src: MacAddr, dst: MacAddr, buf: &PacketBuf) -> Option<Result<(), DropReason>> {
        let f = buf.frame();
        if f.get(12..14) != Some(&crate::wire::ethernet::ethertype::IPV4.to_be_bytes()[..]) || !self.router.serves_dhcp(net) {
            return None;
        }
        let ip = crate::wire::ipv4::Ipv4Packet::new_checked(&f[14..]).ok()?;
        if ip.protocol() != crate::wire::ipv4::proto::UDP || ip.frag_offset() != 0 {
            return None;
        }
        let udp = ip.payload();
        let (sport, dport) = (u16::from_be_bytes([*udp.first()?, *udp.get(1)?]), u16::from_be_bytes([*udp.get(2)?, *udp.get(3)?]));
        if sport == 67 && dport == 68 {
            return Some(Err(DropReason::RogueDhcp));
        }
        if dport != 67 || !(dst.is_broadcast() || dst == self.router_mac) {
            return None;
        }
        // Rate limits are per guest: on an access port that is the port; a trunk carries many
        // guests (a whole host's), each limited on its own, keyed by its MAC.
        let key = match self.ports[in_port.0 as usize].role {
            Role::Trunk { .. } => 0x8000 | (src.0.iter().fold(0u16, |h, b| h.rotate_left(5) ^ *b as u16) & 0x7fff),
            _ => in_port.0 & 0x7fff,
        };
        Some(self.router.dhcp_in(now, net, key, src, &f[14..]))
    }

    /// The router takes frames for its MAC and the broadcasts it answers (ARP).
    fn for_router(&self, dst: MacAddr, buf: &PacketBuf) -> bool {
        dst == self.router_mac
            || (dst.is_broadcast() && buf.frame().get(12..14) == Some(&crate::wire::ethernet::ethertype::ARP.to_be_bytes()[..]))
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
        let (dst, src, et) = {
            let eth = EthernetFrame::new_checked(buf.frame()).map_err(|_| DropReason::Malformed)?;
            (eth.dst(), eth.src(), eth.ethertype())
        };
        if crate::wire::vlan::is_tag_ethertype(et) {
            return Err(DropReason::TaggedOnAccess);
        }
        if !src.is_unicast() || src == self.router_mac {
            return Err(DropReason::BadSrcMac);
        }
        if dst.is_link_local() {
            return Err(DropReason::LinkLocal);
        }
        offload::validate(buf.frame(), &buf.vnet).map_err(|_| DropReason::BadVnetHdr)?;
        if !self.for_router(dst, buf) {
            return Err(if dst.is_multicast() { DropReason::UnsupportedL3 } else { DropReason::NotForwarded });
        }
        let v = self.router.handle(now, Iface::Public, buf);
        let r = match v {
            Verdict::NotMine => Ok(()),
            v => self.l3_verdict(now, v, buf, tx),
        };
        self.drain_outbox(now, tx);
        r
    }

    /// Ingress: which network the frame belongs to (popping a trunk tag), and whether it may
    /// enter at all (source address, 802.1D link-local groups, port security, offload metadata).
    fn ingress(&self, in_port: PortId, buf: &mut PacketBuf) -> Result<Ingress, DropReason> {
        let (dst, src) = {
            let eth = EthernetFrame::new_checked(buf.frame()).map_err(|_| DropReason::Malformed)?;
            (eth.dst(), eth.src())
        };
        let role = &self.ports[in_port.0 as usize].role;
        let (net, tagged) = switch::classify(role, buf.frame())?;
        if tagged && !buf.pop_vlan() {
            return Err(DropReason::BadVnetHdr);
        }
        if !src.is_unicast() || src == self.router_mac {
            return Err(DropReason::BadSrcMac);
        }
        // A guest's BPDU or LLDP must never reach a physical switch through a trunk.
        if dst.is_link_local() {
            return Err(DropReason::LinkLocal);
        }
        if let Role::Access { net: n, .. } = role {
            switch::guest_guard(buf.frame(), self.router.gateway(*n))?;
        }
        if let Role::Access { net: n, security: Some(sec) } = role {
            // Without a fixed address, a guest on a network vrouter serves DHCP to may source
            // exactly its current lease's address (and 0.0.0.0 while it asks for one).
            let dynamic = (sec.ip.is_none() && self.router.serves_dhcp(*n)).then(|| self.router.lease_of(*n, sec.mac));
            switch::check_security(sec, dynamic, buf.frame())?;
        }
        // Offload metadata is guest-controlled too: it must describe this frame, or a receiver
        // finishing the checksum could rewrite headers that port security has just passed.
        offload::validate(buf.frame(), &buf.vnet).map_err(|_| DropReason::BadVnetHdr)?;
        Ok(Ingress { net, src, dst })
    }

    /// Learning: remember where `src` lives (or refuse a port over its limit, or a pinned MAC).
    fn learn(&mut self, now: Instant, net: NetId, src: MacAddr, in_port: PortId) -> Result<(), DropReason> {
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
    fn forward(
        &mut self,
        now: Instant,
        net: NetId,
        dst: MacAddr,
        in_port: PortId,
        buf: &mut PacketBuf,
        tx: &mut dyn Transmit,
    ) -> Result<(), DropReason> {
        if !dst.is_multicast() {
            match self.fdb.lookup(net, dst, now) {
                Some(p) if p == in_port => return Err(DropReason::Hairpin),
                Some(p) => {
                    self.output(now, p, Some(net), buf, tx);
                    return Ok(());
                }
                None => {}
            }
        }
        self.flood(now, net, in_port, buf, tx);
        Ok(())
    }

    fn flood(&mut self, now: Instant, net: NetId, in_port: PortId, buf: &mut PacketBuf, tx: &mut dyn Transmit) {
        let n = net.0 as usize;
        for i in 0..self.nets[n].members.len() {
            let p = self.nets[n].members[i];
            if p != in_port {
                self.output(now, p, Some(net), buf, tx);
            }
        }
    }

    /// Egress: tag for trunks, then hand the frame (or its software-finished segments) to `tx`.
    fn output(&mut self, now: Instant, port: PortId, net: Option<NetId>, buf: &mut PacketBuf, tx: &mut dyn Transmit) {
        let pi = port.0 as usize;
        if self.sg.filtered(port) {
            let r = &self.router;
            if let Err(e) = self.sg.check(now, port, crate::filter::sg::Way::ToGuest, buf.frame(), &|a| r.lease_holder(a)) {
                self.stats[pi].drop(e);
                return;
            }
        }
        let trunk = matches!(self.ports[pi].role, Role::Trunk { .. });
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
        let st = &mut self.stats[pi];
        let len = buf.len() as u64;
        let offload = self.ports[pi].offload;
        if offload || buf.vnet.is_plain() {
            match tx.transmit(port, offload.then_some(&buf.vnet), buf.frame()) {
                Ok(()) => {
                    st.tx_frames += 1;
                    st.tx_bytes += len;
                }
                Err(r) => st.drop(r),
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
            Role::Trunk { vlans } => RoleRow::Trunk {
                networks: vlans
                    .iter()
                    .enumerate()
                    .filter_map(|(vid, n)| n.map(|n| TrunkNet { network: self.nets[n.0 as usize].spec.name.clone(), vlan: vid as u16 }))
                    .collect(),
            },
            Role::Public => RoleRow::Public { network: None },
        }
    }

    pub fn show_ports(&self) -> Vec<PortRow> {
        self.ports
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let s = &self.stats[i];
                PortRow {
                    name: p.name.clone(),
                    ifname: p.ifname.clone(),
                    kind: p.kind.clone(),
                    offload: p.offload,
                    macs_learned: self.fdb.port_count(PortId(i as u16)),
                    rx_frames: s.rx_frames,
                    rx_bytes: s.rx_bytes,
                    tx_frames: s.tx_frames,
                    tx_bytes: s.tx_bytes,
                    drops: s.total_drops(),
                    role: self.role_row(&p.role),
                }
            })
            .collect()
    }

    pub fn show_fdb(&self, now: Instant) -> Vec<FdbRow> {
        let mut rows: Vec<FdbRow> = self
            .fdb
            .iter()
            .map(|(n, m, e)| {
                let age_secs = (!e.fixed).then(|| now.since(e.last_seen).as_secs());
                FdbRow {
                    network: self.nets[n.0 as usize].spec.name.clone(),
                    mac: m.to_string(),
                    port: self.ports[e.port.0 as usize].name.clone(),
                    kind: if age_secs.is_some() { "learned" } else { "static" },
                    age_secs,
                }
            })
            .collect();
        rows.sort_by(|a, b| (&a.network, &a.mac, &a.port).cmp(&(&b.network, &b.mac, &b.port)));
        rows
    }

    pub fn show_stats(&self) -> StatsSnapshot {
        let mut totals = PortStats::default();
        let ports = self
            .ports
            .iter()
            .zip(&self.stats)
            .map(|(p, s)| {
                totals.rx_frames += s.rx_frames;
                totals.tx_frames += s.tx_frames;
                totals.rx_bytes += s.rx_bytes;
                totals.rx_gso_frames += s.rx_gso_frames;
                totals.tx_bytes += s.tx_bytes;
                totals.tx_sw_segmented += s.tx_sw_segmented;
                totals.mac_moves += s.mac_moves;
                totals.learn_table_full += s.learn_table_full;
                for (t, d) in totals.drops.iter_mut().zip(s.drops.iter()) {
                    *t += d;
                }
                PortStatsRow { name: Some(p.name.clone()), drops: s.drop_map(), stats: s.clone() }
            })
            .collect();
        let networks = self
            .nets
            .iter()
            .enumerate()
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
        }
    }
}

#[cfg(test)]
mod tests;
