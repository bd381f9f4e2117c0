//! The router: the L3 stage of the pipeline. On each guest network it is a member with the
//! router MAC and the network's gateway address; on the public side it owns the public IPs.
//! It answers ARP, keeps the neighbour table, routes between networks and to the public
//! gateway, tracks connections, applies source NAT, static NAT and port forwards (hairpin
//! included), the public firewall and the per-network egress rules, decrements TTL and
//! generates the ICMP errors that belong to a router (time exceeded, unreachable, frag needed),
//! translating ICMP errors that cross NAT.
//!
//! Sans-IO: [`Router::handle`] takes the time, the interface, the ingress port and a frame, and
//! returns a [`Verdict`]; frames the router makes (ARP, ICMP, frames released by ARP
//! resolution) wait in [`Router::outbox`] for the datapath to send through the normal egress.
//! Nothing here reads the clock, touches an fd or logs per packet.
//!
//! The first packet of a flow runs the rule stages and stores the decision in conntrack; later
//! packets do one lookup and replay it. Invariants: a packet from the public side reaches a
//! guest only through a static NAT, a port forward or a flow the guest opened; a guest's
//! private source never leaves on the public side; frames are only modified when they are
//! forwarded (a drop leaves the buffer as it came).

mod balance;
mod nets;
mod tunnel;
pub mod reload;
pub mod meta;
pub mod neigh;
pub mod services;
mod tcp_meta;
pub(crate) mod tcp_dns;

use crate::buf::PacketBuf;
use crate::config::schema::Action;
use crate::config::types::{Ipv4Iface, Ipv4Net, PortRange};
use crate::conntrack::{self, Conntrack, Dir, Egress, Key, Timeouts};
use crate::filter::Classifier;
use crate::nat;
use crate::switch::stats::DropReason;
use crate::switch::NetId;
use crate::time::Instant;
use crate::frame::{FrameCtx, Ipv4Ctx, L3};
use crate::wire::arp::{self, ArpRepr};
use crate::wire::{be16, checksum};
use crate::wire::ethernet::{ethertype, MacAddr};
use crate::wire::ipv4::{self, icmp, proto, Ipv4Packet};
use crate::wire::vnet::{Gso, VnetHdr};
use neigh::{Neighbours, Origin, Queued, Resolve, Work};
use serde::Serialize;
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::time::Duration;

/// Where a routed frame leaves: a guest network (through L2 forwarding from the router's own
/// port on it) or the public port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Iface {
    Net(NetId),
    Public,
    /// A WireGuard peer: what arrives decrypted from it, what is routed into its tunnel
    /// (sealed and sent to its endpoint through the public port).
    Tunnel(u16),
}

/// A guest network as the router sees it.
#[derive(Debug, Clone)]
pub struct NetL3 {
    pub cidr: Ipv4Net,
    /// DNS zone of the network's hosts (`<hostname>.<domain>`).
    pub domain: Option<String>,
    pub gateway: Option<Ipv4Addr>,
    pub mtu: u16,
    pub egress: Classifier<Action>,
    pub egress_default: Action,
}

impl NetL3 {
    /// A network slot with no network (removed by a reload): it contains no address a packet
    /// can have (255.255.255.255 is dropped before any lookup), has no gateway, allows nothing.
    pub fn vacant() -> Self {
        NetL3 {
            cidr: Ipv4Net { addr: Ipv4Addr::BROADCAST, prefix: 32 },
            domain: None,
            gateway: None,
            mtu: 1500,
            egress: Classifier::new(Vec::new()),
            egress_default: Action::Deny,
        }
    }
}

#[derive(Debug, Clone)]
pub struct PublicL3 {
    pub ips: Vec<Ipv4Iface>,
    pub gateway: Ipv4Addr,
    /// Where guests' outbound traffic is translated to.
    pub source_nat_ip: Ipv4Addr,
    pub mtu: u16,
}

#[derive(Debug, Clone, Copy)]
pub struct Forward {
    pub protocol: u8,
    pub public_ip: Ipv4Addr,
    pub public_port: PortRange,
    pub private_ip: Ipv4Addr,
    pub private_port: PortRange,
}

/// Everything the router needs from the config (built by a pure function in `build`).
#[derive(Debug, Clone)]
pub struct L3Config {
    pub nets: Vec<NetL3>,
    pub public: Option<PublicL3>,
    /// (public, private) pairs.
    pub static_nat: Vec<(Ipv4Addr, Ipv4Addr)>,
    pub forwards: Vec<Forward>,
    /// Public IP -> the firewall rules naming it.
    pub firewall: HashMap<Ipv4Addr, Classifier<()>>,
    pub conntrack_max: usize,
    pub timeouts: Timeouts,
    pub neigh_cap: usize,
    pub lbs: Vec<crate::lb::LbSpec>,
    /// The WireGuard endpoint and its peers.
    pub vpn: Option<crate::vpn::VpnSpec>,
    /// Keys every random choice the router makes (NAT ports, DNS ids, TCP sequence numbers);
    /// the I/O edge fills it from the kernel, tests with a constant.
    pub seed: crate::entropy::Seed,
}

impl Default for L3Config {
    fn default() -> Self {
        L3Config {
            nets: Vec::new(),
            public: None,
            static_nat: Vec::new(),
            forwards: Vec::new(),
            firewall: HashMap::new(),
            conntrack_max: 262_144,
            timeouts: Timeouts::default(),
            neigh_cap: 4096,
            lbs: Vec::new(),
            vpn: None,
            seed: [0; 32],
        }
    }
}

/// What to do with a frame the router was handed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Rewritten (Ethernet header included): send it out of this interface.
    Forward(Iface),
    /// Answered, queued or absorbed; nothing more to do with the buffer.
    Consumed,
    /// Not for the router (an ARP between guests): forward it at L2 as usual.
    NotMine,
    Drop(DropReason),
}

/// A frame the router made, ready for egress.
pub struct Out {
    pub iface: Iface,
    pub buf: PacketBuf,
    /// Leave through exactly this port (a guest's own), whatever the MAC table says: the
    /// metadata service answers only the port that asked.
    pub port: Option<crate::switch::PortId>,
}

/// Router counters (a typed snapshot for `show stats`).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct RouterStats {
    pub forwarded: u64,
    pub arp_replies: u64,
    pub arp_requests: u64,
    pub icmp_sent: u64,
    pub icmp_rate_limited: u64,
    pub icmp_errors_translated: u64,
    pub echo_replies: u64,
    pub snat_flows: u64,
    pub dnat_flows: u64,
    pub hairpin_flows: u64,
    pub routed_flows: u64,
    pub fragments_forwarded: u64,
    pub fragmented: u64,
    pub neigh_queued: u64,
    pub neigh_unresolved: u64,
    /// Connections to a load balancer with no backend up, reset.
    pub lb_resets: u64,
    /// Flows a reload's new rules decide differently, ended at their next packet.
    pub reload_revoked: u64,
    /// TCP resets sent to guests for those flows.
    pub revoke_resets: u64,
}

/// ICMP errors the router may send: a token bucket (Linux: net.ipv4.icmp_ratelimit).
const ICMP_PER_SEC: u64 = 200;
const ICMP_BURST: u64 = 100;
/// Bytes of the offending packet quoted in an ICMP error (RFC 1812: up to 576 in total).
const ICMP_QUOTE: usize = 576 - 20 - 8;
/// Non-first fragments follow the first one's translation for this long.
const FRAG_TIMEOUT: Duration = Duration::from_secs(30);
const FRAG_CAP: usize = 4096;
/// Datagrams one source may have in the fragment table: one guest sending first fragments
/// cannot take it from the others.
const FRAG_PER_SOURCE: u32 = 512;
/// Ephemeral range for source NAT ports.
const NAT_PORT_LO: u16 = 1024;
/// Candidate ports tried before a new flow is refused for want of one: enough to find one of
/// the last 5% free ports 96% of the time, few enough that a flood toward an exhausted
/// destination costs little per refused flow.
const NAT_TRIES: u32 = 64;

#[derive(Clone, Copy)]
struct FragFlow {
    new_src: Ipv4Addr,
    new_dst: Ipv4Addr,
    egress: Egress,
    expires: Instant,
}

/// What the rule stages decided for a flow's first packet.
enum Decision {
    Flow { reply: Key, egress: [Egress; 2], kind: FlowKind, tag: u32 },
    /// For the router itself.
    Local,
    /// For a load balancer with no backend up: refused at once (RST or port unreachable).
    Refuse,
    Drop(DropReason),
}

#[derive(Clone, Copy)]
enum FlowKind {
    Routed,
    Snat,
    Dnat,
    Hairpin,
}

/// One flow direction as the router last forwarded it: the conntrack slot (`idx << 1 | dir`)
/// and decision ([`conntrack::Flow::serial`]), the interface its packets came in on and go out
/// of, the next hop's MAC and the egress MTU; valid while the neighbour table's generation is
/// `neigh_gen` and until `until`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Hop {
    pub slot: u32,
    pub serial: u32,
    pub from: Iface,
    pub to: Iface,
    pub mac: MacAddr,
    pub mtu: usize,
    pub neigh_gen: u32,
    pub until: Instant,
}

/// A packet of an established flow that needs nothing from the router but the replay of its
/// flow's decision (see [`Router::established`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Established {
    pub slot: u32,
    pub serial: u32,
    key: Key,
    /// The IP total length.
    pub tl: usize,
    /// The largest IP packet it makes on the wire (a super-frame's segments).
    pub wire: usize,
    tcp: u8,
}

pub struct Router {
    mac: MacAddr,
    cfg: L3Config,
    /// Which of `cfg.nets` holds an address (rebuilt with `cfg`).
    net_index: nets::NetIndex,
    static_by_public: HashMap<Ipv4Addr, Ipv4Addr>,
    static_by_private: HashMap<Ipv4Addr, Ipv4Addr>,
    forwards_by_ip: HashMap<(Ipv4Addr, u8), Forwards>,
    public_ips: Vec<Ipv4Addr>,
    pub ct: Conntrack,
    pub neigh: Neighbours,
    frags: HashMap<(Ipv4Addr, Ipv4Addr, u8, u16), FragFlow, foldhash::fast::RandomState>,
    /// Entries of `frags` by source.
    frags_by_src: HashMap<Ipv4Addr, u32, foldhash::fast::RandomState>,
    /// Frames made by the router, waiting for egress.
    pub outbox: Vec<Out>,
    pool: Vec<PacketBuf>,
    icmp_tokens: u64,
    icmp_refill: Instant,
    ident: u16,
    /// NAT port choices (RFC 6056: unpredictable to a remote).
    rng: crate::entropy::Csprng,
    /// Public addresses to announce with a gratuitous ARP (all at start, added ones on reload).
    garp: Vec<Ipv4Addr>,
    /// Announce every gateway too (the router's MAC changed).
    garp_nets: bool,
    /// The rules epoch since which each network slot holds the network it holds now.
    net_since: Vec<u32>,
    next_sweep: Instant,
    pub stats: RouterStats,
    svc: services::Services,
    pub lb: crate::lb::Balancer,
    hc: crate::lb::health::Checker,
    /// Metadata, user data and passwords for the guests.
    meta: meta::MetaSvc,
    /// The port the frame being handled arrived on (the datapath says; who asks for metadata).
    ingress: Option<crate::switch::PortId>,
    /// What [`Self::ipv4`] decided for the packet it last forwarded to a resolved next hop,
    /// for the datapath's flow cache to take that flow direction's next packets by
    /// [`Self::established`] and [`Self::replay`]; the datapath takes it after every packet.
    pub(crate) hop: Option<Hop>,
    /// Whether [`Self::hop`] is wanted for the packet at hand (the datapath's flow cache
    /// missed it and would keep it).
    pub(crate) hops: bool,
    /// The conntrack lookup [`Self::established`] just made for a packet the flow cache then
    /// did not take: [`Self::ipv4`] uses it instead of looking again. The datapath clears it
    /// after the packet, so it never outlives the packet it was made for.
    pub(crate) found: Option<(Key, Option<(u32, Dir)>)>,
    /// WireGuard peers, when configured.
    pub(crate) vpn: Option<crate::vpn::Vpn>,
    /// Datagrams the VPN asked to send (handshakes, cookies, keepalives), for `vpn_flush`.
    vpn_tx: Vec<(std::net::SocketAddrV4, Vec<u8>)>,
    /// Seals packets for the tunnel (a super-frame is cut into segments here first).
    vpn_scratch: Vec<u8>,
    /// Tunnel frames taken out of the outbox while they are sealed (kept: no allocation).
    vpn_sealing: Vec<Out>,
    /// A super-frame's segments end to end, and where each ends, while they are sealed
    /// (kept between super-frames: no allocation per segment).
    vpn_segs: (Vec<u8>, Vec<usize>),
}


/// The forwards of one public address and protocol, ordered by port: a lookup is a binary
/// search, so ten thousand forwards cost a new flow (and each NAT port candidate) no more than
/// ten. Where ranges overlap, the first in the file wins, as it always did (a linear scan then).
#[derive(Default)]
pub(super) struct Forwards {
    v: Vec<Forward>,
    disjoint: bool,
}

impl Forwards {
    fn find(&self, port: u16) -> Option<&Forward> {
        if !self.disjoint {
            return self.v.iter().find(|f| (f.public_port.lo..=f.public_port.hi).contains(&port));
        }
        let i = self.v.partition_point(|f| f.public_port.lo <= port).checked_sub(1)?;
        self.v.get(i).filter(|f| port <= f.public_port.hi)
    }
}

/// Forwards by public address and protocol.
pub(super) fn forwards_by_ip(all: &[Forward]) -> HashMap<(Ipv4Addr, u8), Forwards> {
    let mut m: HashMap<(Ipv4Addr, u8), Forwards> = HashMap::new();
    for f in all {
        m.entry((f.public_ip, f.protocol)).or_default().v.push(*f);
    }
    for t in m.values_mut() {
        let mut sorted = t.v.clone();
        sorted.sort_by_key(|f| f.public_port.lo);
        if sorted.windows(2).all(|w| w[0].public_port.hi < w[1].public_port.lo) {
            t.v = sorted;
            t.disjoint = true;
        }
    }
    m
}

/// The drop reason for a flow conntrack would not add.
pub fn ct_drop(e: crate::conntrack::InsertError) -> DropReason {
    match e {
        crate::conntrack::InsertError::Full => DropReason::ConntrackFull,
        crate::conntrack::InsertError::Collision => DropReason::ConntrackCollision,
    }
}

/// Addresses no public packet may come from: ours, the unspecified, loopback, multicast,
/// limited broadcast, and "this network".
fn martian(a: Ipv4Addr) -> bool {
    a.is_unspecified() || a.is_loopback() || a.is_multicast() || a.is_broadcast() || a.octets()[0] == 0
}

impl Router {
    pub fn new(mac: MacAddr, cfg: L3Config) -> Self {
        let forwards_by_ip = forwards_by_ip(&cfg.forwards);
        let public_ips = cfg.public.as_ref().map(|p| p.ips.iter().map(|i| i.addr).collect()).unwrap_or_default();
        let lb = crate::lb::Balancer::new(cfg.lbs.clone());
        let mut rng = crate::entropy::Csprng::new(cfg.seed);
        let hc = crate::lb::health::Checker::new(Instant::ZERO, rng.u64(), lb.check_targets(), |n| {
            let net = cfg.nets.get(n.0 as usize)?;
            Some((net.gateway?, net.cidr.prefix, net.mtu as usize))
        });
        Router {
            lb,
            hc,
            mac,
            net_index: nets::NetIndex::new(&cfg.nets),
            static_by_public: cfg.static_nat.iter().copied().collect(),
            static_by_private: cfg.static_nat.iter().map(|&(p, q)| (q, p)).collect(),
            forwards_by_ip,
            public_ips,
            ct: Conntrack::new(cfg.conntrack_max, cfg.timeouts),
            neigh: Neighbours::new(cfg.neigh_cap),
            frags: HashMap::with_capacity_and_hasher(64, Default::default()),
            frags_by_src: HashMap::with_capacity_and_hasher(16, Default::default()),
            outbox: Vec::new(),
            pool: Vec::new(),
            icmp_tokens: ICMP_BURST,
            icmp_refill: Instant::ZERO,
            ident: 1,
            svc: services::Services::new(rng.child()),
            meta: meta::MetaSvc::new(false, Vec::new(), rng.child()),
            ingress: None,
            hop: None,
            hops: false,
            found: None,
            vpn: cfg.vpn.clone().map(crate::vpn::Vpn::new),
            vpn_tx: Vec::new(),
            vpn_scratch: Vec::new(),
            vpn_segs: (Vec::new(), Vec::new()),
            vpn_sealing: Vec::new(),
            rng,
            garp: cfg.public.as_ref().map(|p| p.ips.iter().map(|i| i.addr).collect()).unwrap_or_default(),
            garp_nets: false,
            net_since: Vec::new(),
            next_sweep: Instant::ZERO,
            cfg,
            stats: RouterStats::default(),
        }
    }

    pub fn has_public(&self) -> bool {
        self.cfg.public.is_some()
    }

    /// Gives back a buffer used for an [`Out`] frame.
    pub fn recycle(&mut self, b: PacketBuf) {
        if self.pool.len() < 64 {
            self.pool.push(b);
        }
    }

    fn buf(&mut self) -> PacketBuf {
        self.pool.pop().unwrap_or_default()
    }

    /// A frame of `len` bytes after the Ethernet header, from the router to `dst` on `iface`,
    /// queued for egress; the caller fills in the returned payload.
    fn new_frame(&mut self, iface: Iface, dst: MacAddr, ethertype: u16, len: usize) -> &mut [u8] {
        let mut b = self.buf();
        let f = b.init(14 + len);
        f[0..6].copy_from_slice(&dst.0);
        f[6..12].copy_from_slice(&self.mac.0);
        f[12..14].copy_from_slice(&ethertype.to_be_bytes());
        self.outbox.push(Out { iface, buf: b, port: None });
        let n = self.outbox.len() - 1;
        &mut self.outbox[n].buf.frame_mut()[14..]
    }

    /// The next hop's MAC (sending ARP requests and releasing or failing queued frames as the
    /// neighbour table says).
    #[inline(always)]
    fn resolve(&mut self, now: Instant, iface: Iface, ip: Ipv4Addr) -> Resolve {
        // A tunnel has no link layer: its packets are sealed, then resolved as datagrams.
        if let Iface::Tunnel(_) = iface {
            return Resolve::Mac(MacAddr::ZERO);
        }
        if let Some(m) = self.neigh.cached(now, iface, ip) {
            return Resolve::Mac(m);
        }
        self.resolve_uncached(now, iface, ip)
    }

    #[inline(never)]
    fn resolve_uncached(&mut self, now: Instant, iface: Iface, ip: Ipv4Addr) -> Resolve {
        let mut w = Work::default();
        let r = self.neigh.resolve(now, iface, ip, &mut w);
        if !w.is_empty() {
            self.run_work(now, w);
        }
        r
    }

    /// Forgets expired fragment flows (and recounts them by source).
    fn expire_frags(&mut self, now: Instant) {
        let before = self.frags.len();
        self.frags.retain(|_, f| f.expires > now);
        if self.frags.len() != before {
            self.frags_by_src.clear();
            for (k, _) in self.frags.iter() {
                *self.frags_by_src.entry(k.0).or_insert(0) += 1;
            }
        }
    }

    /// The port the next frames arrive on (`None`: not from a guest port).
    pub fn set_ingress(&mut self, p: Option<crate::switch::PortId>) {
        self.ingress = p;
    }

    /// Health: the public gateway and what the neighbour table knows of it. Asks for it the
    /// way forwarding would (a first request, or a unicast probe of a stale entry), so an idle
    /// router still learns whether its gateway answers.
    pub fn probe_public_gateway(&mut self, now: Instant) -> Option<(Ipv4Addr, neigh::NeighState)> {
        let gw = self.cfg.public.as_ref()?.gateway;
        let _ = self.resolve(now, Iface::Public, gw);
        Some((gw, self.neigh.state_of(now, Iface::Public, gw)))
    }

    /// The network's gateway address (what no guest may claim).
    pub fn gateway(&self, n: NetId) -> Option<Ipv4Addr> {
        self.cfg.nets.get(n.0 as usize)?.gateway
    }

    #[inline]
    fn net_of(&self, ip: Ipv4Addr) -> Option<NetId> {
        self.net_index.find(&self.cfg.nets, ip)
    }

    fn is_gateway(&self, ip: Ipv4Addr) -> bool {
        self.cfg.nets.iter().any(|n| n.gateway == Some(ip))
    }

    #[inline(always)]
    fn mtu(&self, i: Iface) -> usize {
        match i {
            Iface::Net(n) => self.cfg.nets.get(n.0 as usize).map_or(1500, |n| n.mtu as usize),
            Iface::Public => self.cfg.public.as_ref().map_or(1500, |p| p.mtu as usize),
            Iface::Tunnel(_) => self.vpn.as_ref().map_or(1420, |v| v.mtu()),
        }
    }

    /// The next hop toward `dst` on the public side: on-link, or the public gateway.
    fn public_next_hop(&self, dst: Ipv4Addr) -> Ipv4Addr {
        match &self.cfg.public {
            Some(p) if p.ips.iter().any(|i| i.network().contains(dst)) => dst,
            Some(p) => p.gateway,
            None => dst,
        }
    }

    /// Our own address on `iface` for packets toward `to` (ARP sender, ICMP source).
    fn own_addr(&self, iface: Iface, to: Ipv4Addr) -> Option<Ipv4Addr> {
        match iface {
            Iface::Net(n) => self.gateway(n),
            Iface::Public => {
                let p = self.cfg.public.as_ref()?;
                p.ips.iter().find(|i| i.network().contains(to)).map(|i| i.addr).or(Some(p.source_nat_ip))
            }
            Iface::Tunnel(_) => self.vpn.as_ref().map(|v| v.address()),
        }
    }

    /// When `poll` next has work.
    pub fn poll_at(&self) -> Instant {
        let vpn = self.vpn.as_ref().map_or(Instant(u64::MAX), |v| v.poll_at());
        self.neigh.poll_at().min(self.next_sweep).min(self.services_poll_at()).min(self.hc.poll_at()).min(self.meta.tcp.poll_at()).min(vpn)
    }

    /// Timer work: ARP retries and failures, conntrack and fragment expiry, the gratuitous ARP
    /// for the public addresses at start.
    pub fn poll(&mut self, now: Instant) {
        for ip in std::mem::take(&mut self.garp) {
            self.emit_arp(Iface::Public, arp::OP_REQUEST, MacAddr::BROADCAST, ip, MacAddr::ZERO, ip);
        }
        if std::mem::take(&mut self.garp_nets) {
            for i in 0..self.cfg.nets.len() {
                let n = NetId(i as u16);
                if let Some(gw) = self.gateway(n) {
                    self.emit_arp(Iface::Net(n), arp::OP_REQUEST, MacAddr::BROADCAST, gw, MacAddr::ZERO, gw);
                }
            }
        }
        let mut w = Work::default();
        self.neigh.poll(now, &mut w);
        self.run_work(now, w);
        if now >= self.next_sweep {
            self.ct.sweep(now);
            self.expire_frags(now);
            self.next_sweep = now + Duration::from_millis(100);
        }
        self.services_poll(now);
        if self.meta.tcp.poll_at() <= now {
            self.meta_pump(now);
        }
        self.release_backends();
        if self.hc.poll_at() <= now {
            self.run_checks(now);
        }
        if let Some(v) = self.vpn.as_mut() {
            if v.poll_at() <= now {
                v.poll(now, &mut self.vpn_tx);
                self.vpn_flush(now);
            }
        }
    }

    pub(crate) fn run_work(&mut self, now: Instant, w: Work) {
        for (iface, ip, known) in w.requests {
            let Some(src) = self.own_addr(iface, ip) else { continue };
            let dst = known.unwrap_or(MacAddr::BROADCAST);
            self.emit_arp(iface, arp::OP_REQUEST, dst, src, MacAddr::ZERO, ip);
            self.stats.arp_requests += 1;
        }
        for (iface, mac, q) in w.ready {
            let mut b = self.buf();
            b.load(&q.frame, q.vnet);
            b.frame_mut()[0..6].copy_from_slice(&mac.0);
            let tl = b.len().saturating_sub(14);
            if b.vnet.gso == Gso::None && tl > self.mtu(iface) {
                // Too big and not DF (DF was answered before it was queued): cut it now.
                let _ = self.fragment_out(iface, &mut b, tl);
                self.recycle(b);
            } else {
                self.outbox.push(Out { iface, buf: b, port: None });
            }
        }
        for (_iface, q) in w.failed {
            self.stats.neigh_unresolved += 1;
            if let Some(o) = q.origin {
                self.icmp_error(now, o.iface, o.mac, &o.quote, icmp::DEST_UNREACH, icmp::CODE_HOST_UNREACH, 0);
            }
        }
    }

    /// Runs one frame addressed to the router (its MAC, or a broadcast ARP) that arrived on
    /// `from`. The frame is untagged (ingress popped any tag); `ctx` is what its headers say.
    pub fn handle(&mut self, now: Instant, from: Iface, buf: &mut PacketBuf, ctx: &FrameCtx) -> Verdict {
        match ctx.l3 {
            L3::Arp => self.arp(now, from, &ctx.arp, ctx.dst),
            L3::BadArp => Verdict::Drop(DropReason::Malformed),
            L3::Ipv4 => self.ipv4(now, from, buf, &ctx.ip),
            L3::BadIpv4 => Verdict::Drop(DropReason::BadIp),
            L3::Other if ctx.dst.is_multicast() => Verdict::NotMine,
            L3::Other => Verdict::Drop(DropReason::UnsupportedL3),
        }
    }

    /// [`Self::handle`] on a frame not read yet.
    #[cfg(test)]
    pub fn handle_frame(&mut self, now: Instant, from: Iface, buf: &mut PacketBuf) -> Verdict {
        match FrameCtx::parse(buf.frame()) {
            Ok(c) => self.handle(now, from, buf, &c),
            Err(_) => Verdict::Drop(DropReason::Malformed),
        }
    }

    fn arp(&mut self, now: Instant, from: Iface, a: &ArpRepr, eth_dst: MacAddr) -> Verdict {
        let (op, sha, spa, tpa) = (a.operation, a.sender_mac, a.sender_ip, a.target_ip);
        let ours = match from {
            Iface::Net(n) => self.gateway(n) == Some(tpa),
            Iface::Public => self.public_ips.contains(&tpa),
            Iface::Tunnel(_) => false,
        };
        // Nobody else may claim our addresses; a sender in the wrong place teaches us nothing.
        let plausible = !spa.is_unspecified()
            && sha.is_unicast()
            && !self.public_ips.contains(&spa)
            && !self.is_gateway(spa)
            && match from {
                Iface::Net(n) => self.cfg.nets.get(n.0 as usize).is_some_and(|c| c.cidr.contains(spa)),
                Iface::Public => self.net_of(spa).is_none(),
                Iface::Tunnel(_) => false,
            };
        if plausible {
            let mut w = Work::default();
            self.neigh.confirm(now, from, spa, sha, ours, &mut w);
            self.run_work(now, w);
        }
        if op == arp::OP_REQUEST && ours && plausible {
            self.emit_arp(from, arp::OP_REPLY, sha, tpa, sha, spa);
            self.stats.arp_replies += 1;
            return Verdict::Consumed;
        }
        if ours || !eth_dst.is_multicast() {
            Verdict::Consumed
        } else {
            Verdict::NotMine
        }
    }

    fn emit_arp(&mut self, iface: Iface, op: u16, eth_dst: MacAddr, spa: Ipv4Addr, tha: MacAddr, tpa: Ipv4Addr) {
        let repr = ArpRepr { operation: op, sender_mac: self.mac, sender_ip: spa, target_mac: tha, target_ip: tpa };
        // Padded to the Ethernet minimum.
        repr.emit(self.new_frame(iface, eth_dst, ethertype::ARP, 46));
    }

    /// An IPv4 packet (`ip`: what its headers say) through the router: source checks, the
    /// VPN endpoint, fragments, ICMP errors, conntrack, NAT and the TTL step.
    pub(crate) fn ipv4(&mut self, now: Instant, from: Iface, buf: &mut PacketBuf, ip: &Ipv4Ctx) -> Verdict {
        let r = &ip.ip;
        let (src, dst, protocol, ttl, frag_off, mf, df, tl, hl, ident) = (r.src, r.dst, r.protocol, r.ttl, r.frag_offset as usize, r.more_frags, r.dont_frag, r.total_len as usize, r.header_len as usize, r.ident);
        if !ipv4::header_checksum_ok(&buf.frame()[14..14 + hl]) {
            return Verdict::Drop(DropReason::BadIp);
        }
        // Source checks: the public side may not speak for our networks or our own addresses;
        // a guest only from its own network's prefix (strict reverse-path filtering).
        match from {
            Iface::Public => {
                if martian(src) || self.net_of(src).is_some() || self.public_ips.contains(&src) {
                    return Verdict::Drop(DropReason::SpoofedSource);
                }
            }
            Iface::Net(n) => {
                let ok = self.cfg.nets.get(n.0 as usize).is_some_and(|c| c.cidr.contains(src) && Some(src) != c.gateway);
                if !ok {
                    return Verdict::Drop(DropReason::SpoofedSource);
                }
            }
            // Cryptokey routing: a peer speaks only for its own allowed_ips.
            Iface::Tunnel(p) => {
                if !self.vpn.as_ref().is_some_and(|v| v.allowed(p, src)) {
                    if let Some(v) = self.vpn.as_mut() {
                        v.source_refused(p);
                    }
                    return Verdict::Drop(DropReason::VpnSourceNotAllowed);
                }
            }
        }
        // The WireGuard endpoint: whole datagrams to the listen address (the router's own UDP
        // socket, so to speak; fragments of one are not reassembled and end below).
        if from == Iface::Public && protocol == proto::UDP && frag_off == 0 && !mf {
            if let (Some(l), Some(u)) = (self.vpn.as_ref().map(|v| v.listen()), ip.udp()) {
                if *l.ip() == dst && u.dst_port == l.port() {
                    return self.vpn_in(now, buf, hl, tl);
                }
            }
        }
        if dst.is_broadcast() || dst.is_multicast() || self.net_index.is_broadcast(&self.cfg.nets, dst) {
            return Verdict::Drop(DropReason::NoRoute);
        }
        let eth_src = MacAddr::from_bytes(&buf.frame()[6..]).unwrap_or_default();
        if frag_off > 0 {
            return self.fragment_in(now, from, buf, (src, dst, protocol, ident), ttl, df, tl, eth_src);
        }
        let icmp_type = ip.icmp().map(|i| i.msg_type);
        if icmp_type.is_some_and(icmp::is_error) {
            return self.icmp_error_in(now, from, buf, hl, tl);
        }
        // A header cut short would have its ports rewritten without its checksum.
        let Some((sport, dport)) = ip.ports() else { return Verdict::Drop(DropReason::BadL4) };
        let tcp = ip.tcp_flags();
        // ICMP other than echo (and errors, handled above) is for the router or dropped.
        if icmp_type.is_some_and(|t| !matches!(t, icmp::ECHO_REQUEST | icmp::ECHO_REPLY)) {
            return Verdict::Drop(DropReason::NotForwarded);
        }
        let echo_reply = icmp_type == Some(icmp::ECHO_REPLY);
        let key = Key { src, dst, sport, dport, proto: protocol };
        let mut found = match self.found.take() {
            Some((k, f)) if k == key => f,
            _ => self.ct.lookup(now, &key),
        };
        if let Some((i, Dir::Orig)) = found {
            // A new connection reusing a closed one's tuple is decided afresh (Linux kills the
            // old entry the same way), so it may go to another backend and be counted.
            use conntrack::tcp_flags::{ACK, RST, SYN};
            let st = self.ct.flow(i).state;
            if protocol == proto::TCP && tcp & (SYN | ACK | RST) == SYN && matches!(st, conntrack::State::TimeWait | conntrack::State::Close) {
                self.ct.remove(i);
                found = None;
            }
        }
        let (idx, dir) = match found {
            // A packet belongs to a flow only when it comes from where that flow's packets of
            // its direction come from.
            Some((i, d)) if self.ct.flow(i).ingress(d) == from && self.ct.flow(i).epoch != self.ct.epoch => match self.redecide(self.ct.flow(i)) {
                // Decided under rules a reload replaced, and decided the same way now.
                Some(e) => {
                    self.ct.refresh(i, e);
                    (i, d)
                }
                None => {
                    let f = self.ct.flow(i).clone();
                    self.ct.remove(i);
                    self.stats.reload_revoked += 1;
                    if let (Some(t), true) = (ip.tcp(), tcp & conntrack::tcp_flags::RST == 0) {
                        self.revoke_reset(now, from, eth_src, &f, d, t.seq, t.ack, tcp);
                    }
                    return Verdict::Drop(DropReason::ReloadRevoked);
                }
            },
            Some((i, d)) if self.ct.flow(i).ingress(d) == from => (i, d),
            Some(_) => return Verdict::Drop(DropReason::SpoofedSource),
            None => match self.open_flow(now, from, eth_src, buf, &key, tl, hl, df, echo_reply, tcp) {
                Ok(i) => (i, Dir::Orig),
                Err(v) => return v,
            },
        };
        let flow = self.ct.flow(idx);
        let (target, egress) = (flow.target(dir), flow.egress[dir as usize]);
        if dir == Dir::Reply && tcp & conntrack::tcp_flags::RST != 0 && flow.tag != conntrack::NO_TAG && flow.state == conntrack::State::SynSent {
            // A backend refusing a new connection: a passive health failure.
            let t = flow.tag;
            self.lb.check_result(t, Err("reset by backend"), true);
        }
        if ttl <= 1 {
            return self.ttl_expired(now, from, eth_src, buf, tl);
        }
        if let Some(v) = self.check_mtu(now, from, eth_src, buf, tl, df, self.mtu(egress.iface)) {
            return v;
        }
        self.ct.update(now, idx, dir, tcp, tl);
        if mf {
            if self.frags.len() >= FRAG_CAP {
                self.expire_frags(now);
            }
            let key = (src, dst, protocol, ident);
            let mine = self.frags_by_src.get(&src).copied().unwrap_or(0);
            let fresh = !self.frags.contains_key(&key);
            // Over its share, a source's later fragments find no flow (frag_no_flow).
            if self.frags.len() < FRAG_CAP && (!fresh || mine < FRAG_PER_SOURCE) {
                self.frags.insert(key, FragFlow { new_src: target.src, new_dst: target.dst, egress, expires: now + FRAG_TIMEOUT });
                if fresh {
                    *self.frags_by_src.entry(src).or_insert(0) += 1;
                }
            }
        }
        // The next hop is resolved before the rewrite, so a frame that has to wait keeps what
        // its sender would need to hear that the host is unreachable.
        let r = self.resolve(now, egress.iface, egress.next_hop);
        let origin = self.origin_if_pending(&r, from, eth_src, buf, tl);
        let partial = buf.vnet.needs_csum;
        {
            let ipb = &mut buf.frame_mut()[14..14 + tl];
            nat::rewrite_forwarded(ipb, partial, &key, &target);
        }
        if self.hops && matches!(protocol, proto::TCP | proto::UDP) && matches!(r, Resolve::Mac(_)) && !matches!(from, Iface::Tunnel(_)) && !matches!(egress.iface, Iface::Tunnel(_)) {
            self.remember_hop(now, idx << 1 | dir as u32, from, egress);
        }
        self.send(egress, r, origin, buf, tl, df)
    }

    /// Notes in [`Self::hop`] how a flow direction was just forwarded, when the next hop's
    /// answer came from the neighbour cache (a fresh resolution is noted on the next packet).
    #[inline(never)]
    fn remember_hop(&mut self, now: Instant, slot: u32, from: Iface, egress: Egress) {
        if let Some((mac, until)) = self.neigh.cached_until(now, egress.iface, egress.next_hop) {
            let serial = self.ct.flow(slot >> 1).serial;
            self.hop = Some(Hop { slot, serial, from, to: egress.iface, mac, mtu: self.mtu(egress.iface), neigh_gen: self.neigh.gen(), until });
        }
    }

    /// A packet from `from` of an established flow, if nothing [`Self::ipv4`] would do with
    /// it depends on more than its flow, its direction, the interface it came from and the
    /// tables' generations: a whole, valid IPv4 header with TTL to spare, no fragment, TCP
    /// without SYN or RST (which may end or reopen a flow) or UDP, a flow decided under the
    /// current rules; whether it fits the egress MTU is the caller's to check, by `wire`
    /// (a super-frame's segments). Everything else that [`Self::ipv4`] checks (source,
    /// broadcast destination, the VPN endpoint, the flow's ingress) follows from the flow
    /// direction and the configuration, and was checked for the packet that made the [`Hop`].
    /// A flow found expired is removed, as [`Self::ipv4`]'s lookup would.
    #[inline]
    pub(crate) fn established(&mut self, now: Instant, buf: &PacketBuf, ip: &Ipv4Ctx) -> Option<Established> {
        use conntrack::tcp_flags::{RST, SYN};
        let r = &ip.ip;
        if r.frag_offset != 0 || r.more_frags || r.ttl <= 1 || !matches!(r.protocol, proto::TCP | proto::UDP) {
            return None;
        }
        let (sport, dport) = ip.ports()?;
        let tcp = ip.tcp_flags();
        if tcp & (SYN | RST) != 0 || !ipv4::header_checksum_ok(buf.frame().get(14..14 + r.header_len as usize)?) {
            return None;
        }
        let key = Key { src: r.src, dst: r.dst, sport, dport, proto: r.protocol };
        let found = self.ct.lookup(now, &key);
        self.found = Some((key, found));
        let (idx, dir) = found?;
        let f = self.ct.flow(idx);
        // What must fit the egress MTU: the packet, or each segment of a super-frame (which
        // is never cut, so DF or not, it must fit; see `check_mtu`).
        let v = &buf.vnet;
        let wire = if v.gso != Gso::None { (v.hdr_len as usize).saturating_sub(14) + v.gso_size as usize } else { r.total_len as usize };
        (f.epoch == self.ct.epoch).then_some(Established { slot: idx << 1 | dir as u32, serial: f.serial, key, tl: r.total_len as usize, wire, tcp })
    }

    /// What [`Self::ipv4`] does with an [`Established`] packet once its checks are known to
    /// pass and its next hop is `mac`: the conntrack update, the NAT rewrite and TTL step, the
    /// Ethernet addresses.
    #[inline]
    pub(crate) fn replay(&mut self, now: Instant, e: &Established, buf: &mut PacketBuf, mac: MacAddr) {
        let (idx, dir) = (e.slot >> 1, if e.slot & 1 == 0 { Dir::Orig } else { Dir::Reply });
        let flow = self.ct.flow(idx);
        let target = flow.nat.then(|| flow.target(dir));
        self.ct.update(now, idx, dir, e.tcp, e.tl);
        let partial = buf.vnet.needs_csum;
        let f = buf.frame_mut();
        match target {
            Some(t) => nat::rewrite_forwarded(&mut f[14..14 + e.tl], partial, &e.key, &t),
            None => nat::ttl_step(&mut f[14..14 + e.tl]),
        }
        f[0..6].copy_from_slice(&mac.0);
        f[6..12].copy_from_slice(&self.mac.0);
        self.stats.forwarded += 1;
    }

    /// A packet that opens no flow is turned away here; one that may gets a new conntrack entry
    /// (after its TTL and size were found fit, so a refused packet takes no NAT port).
    #[allow(clippy::too_many_arguments)]
    fn open_flow(
        &mut self,
        now: Instant,
        from: Iface,
        eth_src: MacAddr,
        buf: &mut PacketBuf,
        key: &Key,
        tl: usize,
        hl: usize,
        df: bool,
        echo_reply: bool,
        tcp: u8,
    ) -> Result<u32, Verdict> {
        // Only a request opens an ICMP flow; an unsolicited echo reply or RST goes nowhere.
        // (A reset for a gateway address may be a health check's answer: that is local.)
        let rst = key.proto == proto::TCP && tcp & conntrack::tcp_flags::RST != 0;
        if echo_reply || (rst && !(matches!(from, Iface::Net(_)) && self.is_gateway(key.dst))) {
            return Err(Verdict::Drop(DropReason::NotForwarded));
        }
        let (reply, egress, kind, tag) = match self.decide(now, from, key) {
            Decision::Drop(r) => return Err(Verdict::Drop(r)),
            Decision::Local => return Err(self.local(now, from, eth_src, buf, hl, tl)),
            Decision::Refuse => return Err(self.refuse(now, from, eth_src, buf, key, hl, tl)),
            Decision::Flow { reply, egress, kind, tag } => (reply, egress, kind, tag),
        };
        let ttl = buf.frame()[14 + 8];
        if ttl <= 1 {
            return Err(self.ttl_expired(now, from, eth_src, buf, tl));
        }
        if let Some(v) = self.check_mtu(now, from, eth_src, buf, tl, df, self.mtu(egress[0].iface)) {
            return Err(v);
        }
        let i = self.ct.insert(now, *key, reply, egress).map_err(|e| Verdict::Drop(ct_drop(e)))?;
        if tag != conntrack::NO_TAG {
            self.ct.set_tag(i, tag);
            self.lb.opened(tag);
        }
        match kind {
            FlowKind::Routed => self.stats.routed_flows += 1,
            FlowKind::Snat => self.stats.snat_flows += 1,
            FlowKind::Dnat => self.stats.dnat_flows += 1,
            FlowKind::Hairpin => self.stats.hairpin_flows += 1,
        }
        Ok(i)
    }

    /// TTL ran out here: time exceeded back to the sender.
    fn ttl_expired(&mut self, now: Instant, from: Iface, eth_src: MacAddr, buf: &PacketBuf, tl: usize) -> Verdict {
        self.icmp_error(now, from, eth_src, &buf.frame()[14..14 + tl], icmp::TIME_EXCEEDED, 0, 0);
        Verdict::Drop(DropReason::TtlExceeded)
    }

    /// For a frame about to wait for ARP: who sent it and what it looked like on arrival.
    #[inline(always)]
    fn origin_if_pending(&self, r: &Resolve, from: Iface, eth_src: MacAddr, buf: &PacketBuf, tl: usize) -> Option<Origin> {
        matches!(r, Resolve::Pending).then(|| Origin { iface: from, mac: eth_src, quote: buf.frame()[14..14 + tl.min(ICMP_QUOTE)].to_vec() })
    }

    /// Frag-needed for DF packets (and GSO super-frames, whose segments would be too big)
    /// larger than the egress MTU. `None`: it fits (or will be fragmented on the way out).
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn check_mtu(&mut self, now: Instant, from: Iface, eth_src: MacAddr, buf: &PacketBuf, tl: usize, df: bool, mtu: usize) -> Option<Verdict> {
        let v = &buf.vnet;
        let wire = if v.gso != Gso::None { (v.hdr_len as usize).saturating_sub(14) + v.gso_size as usize } else { tl };
        if wire <= mtu || (!df && v.gso == Gso::None) {
            return None;
        }
        self.frag_needed(now, from, eth_src, buf, tl, mtu)
    }

    /// Too big for `mtu` and may not be cut: "fragmentation needed" back to the sender.
    #[cold]
    #[inline(never)]
    fn frag_needed(&mut self, now: Instant, from: Iface, eth_src: MacAddr, buf: &PacketBuf, tl: usize, mtu: usize) -> Option<Verdict> {
        self.icmp_error(now, from, eth_src, &buf.frame()[14..14 + tl], icmp::DEST_UNREACH, icmp::CODE_FRAG_NEEDED, mtu as u16);
        Some(Verdict::Drop(DropReason::FragNeeded))
    }

    /// Finishes a rewritten frame for `egress` once its next hop was resolved (`r`): Ethernet
    /// addresses, or a place in the neighbour queue, or fragments when it is too big and may
    /// be cut.
    fn send(&mut self, egress: Egress, r: Resolve, origin: Option<Origin>, buf: &mut PacketBuf, tl: usize, df: bool) -> Verdict {
        if let Iface::Tunnel(_) = egress.iface {
            return self.tunnel_out(egress.iface, buf, tl, df);
        }
        match r {
            Resolve::Mac(mac) => {
                let f = buf.frame_mut();
                f[0..6].copy_from_slice(&mac.0);
                f[6..12].copy_from_slice(&self.mac.0);
                if buf.vnet.gso == Gso::None && tl > self.mtu(egress.iface) && !df {
                    return match self.fragment_out(egress.iface, buf, tl) {
                        Ok(()) => Verdict::Consumed,
                        Err(r) => Verdict::Drop(r),
                    };
                }
                self.stats.forwarded += 1;
                Verdict::Forward(egress.iface)
            }
            Resolve::Pending => {
                buf.frame_mut()[6..12].copy_from_slice(&self.mac.0);
                let q = Queued { frame: buf.frame()[..14 + tl].to_vec(), vnet: buf.vnet, origin };
                if self.neigh.enqueue(egress.iface, egress.next_hop, q) {
                    self.stats.neigh_queued += 1;
                    Verdict::Consumed
                } else {
                    Verdict::Drop(DropReason::NeighQueueFull)
                }
            }
            Resolve::Failed => Verdict::Drop(DropReason::NeighUnresolved),
        }
    }

    /// Splits a (non-DF) packet too big for its egress into fragments (RFC 791), each written
    /// straight into a pool buffer, finishing a pending checksum first since the receiver
    /// cannot see the whole datagram at once. The Ethernet header is already set.
    fn fragment_out(&mut self, iface: Iface, buf: &mut PacketBuf, tl: usize) -> Result<(), DropReason> {
        let mtu = self.mtu(iface);
        if buf.vnet.needs_csum {
            let mut v = buf.vnet;
            crate::offload::complete_checksum(buf.frame_mut(), &mut v).map_err(|_| DropReason::OffloadFailed)?;
            buf.vnet = v;
        }
        let f = buf.frame();
        let hl = ((f[14] & 0x0f) as usize) * 4;
        let w = be16(f, 14 + 6);
        let (base_off, base_mf) = (((w & 0x1fff) as usize) * 8, w & 0x2000 != 0);
        let data_len = tl - hl;
        let step = mtu.saturating_sub(hl) & !7;
        // The fragments' offsets must fit the 13-bit field.
        if step == 0 || base_off + data_len > 65_535 {
            return Err(DropReason::BadIp);
        }
        let mut off = 0;
        while off < data_len {
            let n = step.min(data_len - off);
            let mut frag = self.buf();
            let fr = frag.init(14 + hl + n);
            let f = buf.frame();
            fr[..14 + hl].copy_from_slice(&f[..14 + hl]);
            fr[14 + hl..].copy_from_slice(&f[14 + hl + off..14 + hl + off + n]);
            fr[16..18].copy_from_slice(&((hl + n) as u16).to_be_bytes());
            let mut w = ((base_off + off) / 8) as u16;
            if off + n < data_len || base_mf {
                w |= 0x2000;
            }
            fr[20..22].copy_from_slice(&w.to_be_bytes());
            if let Ok(mut p) = Ipv4Packet::new_checked(&mut fr[14..]) {
                p.fill_checksum();
            }
            self.outbox.push(Out { iface, buf: frag, port: None });
            off += n;
        }
        self.stats.forwarded += 1;
        self.stats.fragmented += 1;
        Ok(())
    }

    /// A non-first fragment: it carries no ports, so it follows the translation recorded for
    /// the first fragment of its datagram (same source, destination, protocol and id).
    #[allow(clippy::too_many_arguments)]
    fn fragment_in(
        &mut self,
        now: Instant,
        from: Iface,
        buf: &mut PacketBuf,
        id: (Ipv4Addr, Ipv4Addr, u8, u16),
        ttl: u8,
        df: bool,
        tl: usize,
        eth_src: MacAddr,
    ) -> Verdict {
        let Some(ff) = self.frags.get(&id).copied().filter(|f| f.expires > now) else {
            return Verdict::Drop(DropReason::FragNoFlow);
        };
        if ttl <= 1 {
            return self.ttl_expired(now, from, eth_src, buf, tl);
        }
        let r = self.resolve(now, ff.egress.iface, ff.egress.next_hop);
        let origin = self.origin_if_pending(&r, from, eth_src, buf, tl);
        {
            let ipb = &mut buf.frame_mut()[14..14 + tl];
            let Ok(mut p) = Ipv4Packet::new_checked(ipb) else { return Verdict::Drop(DropReason::BadIp) };
            if p.src() != ff.new_src {
                p.set_src(ff.new_src);
            }
            if p.dst() != ff.new_dst {
                p.set_dst(ff.new_dst);
            }
            p.decrement_ttl();
        }
        self.stats.fragments_forwarded += 1;
        self.send(ff.egress, r, origin, buf, tl, df)
    }

    /// The rule stages for a flow's first packet: where it goes, what it becomes, whether it
    /// may. Firewall and egress rules are classifier lookups, not scans.
    fn decide(&mut self, now: Instant, from: Iface, k: &Key) -> Decision {
        match from {
            Iface::Net(n) => {
                if self.meta.enabled && meta::is_metadata_ip(from, k.dst) {
                    return Decision::Local;
                }
                if self.public_ips.contains(&k.dst) || self.is_gateway(k.dst) {
                    if let Some(lb) = self.lb.find(k.dst, k.proto, k.dport) {
                        if !self.egress_allowed(n, k) {
                            return Decision::Drop(DropReason::EgressDenied);
                        }
                        return self.lb_decide(now, from, k, lb);
                    }
                    let Some((pip, pport)) = self.dnat_target(k.dst, k.proto, k.dport) else { return Decision::Local };
                    // Hairpin: a guest reaching its own account's public IP. The source becomes
                    // the destination network's gateway, so the reply comes back through us.
                    if !self.egress_allowed(n, k) {
                        return Decision::Drop(DropReason::EgressDenied);
                    }
                    let Some(m) = self.net_of(pip) else { return Decision::Drop(DropReason::NoRoute) };
                    let Some(gw) = self.gateway(m) else { return Decision::Drop(DropReason::NoRoute) };
                    let Some(reply) = self.nat_reply(now, k, pip, pport, gw) else { return Decision::Drop(DropReason::NatExhausted) };
                    let egress = [Egress { iface: Iface::Net(m), next_hop: pip }, Egress { iface: Iface::Net(n), next_hop: k.src }];
                    return Decision::Flow { reply, egress, kind: FlowKind::Hairpin, tag: conntrack::NO_TAG };
                }
                if !self.egress_allowed(n, k) {
                    return Decision::Drop(DropReason::EgressDenied);
                }
                if let Some(m) = self.net_of(k.dst) {
                    let egress = [Egress { iface: Iface::Net(m), next_hop: k.dst }, Egress { iface: Iface::Net(n), next_hop: k.src }];
                    return Decision::Flow { reply: k.reverse(), egress, kind: FlowKind::Routed, tag: conntrack::NO_TAG };
                }
                // Into a VPN peer's tunnel, never translated; only from networks it may reach.
                if let Some(v) = &self.vpn {
                    if let Some(p) = v.route(k.dst) {
                        if !v.may_reach(p, n) {
                            return Decision::Drop(DropReason::NoRoute);
                        }
                        let egress = [Egress { iface: Iface::Tunnel(p), next_hop: k.dst }, Egress { iface: Iface::Net(n), next_hop: k.src }];
                        return Decision::Flow { reply: k.reverse(), egress, kind: FlowKind::Routed, tag: conntrack::NO_TAG };
                    }
                }
                let Some(public) = &self.cfg.public else { return Decision::Drop(DropReason::NoRoute) };
                let nat_ip = self.static_by_private.get(&k.src).copied().unwrap_or(public.source_nat_ip);
                let Some(reply) = self.nat_reply(now, k, k.dst, k.dport, nat_ip) else { return Decision::Drop(DropReason::NatExhausted) };
                let egress = [
                    Egress { iface: Iface::Public, next_hop: self.public_next_hop(k.dst) },
                    Egress { iface: Iface::Net(n), next_hop: k.src },
                ];
                Decision::Flow { reply, egress, kind: FlowKind::Snat, tag: conntrack::NO_TAG }
            }
            Iface::Public => {
                if !self.public_ips.contains(&k.dst) {
                    return Decision::Drop(DropReason::NotForwarded);
                }
                if let Some(fw) = self.cfg.firewall.get(&k.dst) {
                    if fw.lookup(k.proto, k.dport, k.src).is_none() {
                        return Decision::Drop(DropReason::Firewall);
                    }
                }
                if let Some(lb) = self.lb.find(k.dst, k.proto, k.dport) {
                    return self.lb_decide(now, from, k, lb);
                }
                let Some((pip, pport)) = self.dnat_target(k.dst, k.proto, k.dport) else { return Decision::Local };
                let Some(m) = self.net_of(pip) else { return Decision::Drop(DropReason::NoRoute) };
                let reply = Key { src: pip, dst: k.src, sport: pport, dport: k.sport, proto: k.proto };
                if self.ct.contains(now, &reply) {
                    return Decision::Drop(DropReason::NatExhausted);
                }
                let egress = [
                    Egress { iface: Iface::Net(m), next_hop: pip },
                    Egress { iface: Iface::Public, next_hop: self.public_next_hop(k.src) },
                ];
                Decision::Flow { reply, egress, kind: FlowKind::Dnat, tag: conntrack::NO_TAG }
            }
            Iface::Tunnel(p) => {
                let Some(v) = &self.vpn else { return Decision::Drop(DropReason::NoRoute) };
                // The router itself: its VPN address (ping, DNS), a reachable network's gateway.
                if k.dst == v.address() {
                    return Decision::Local;
                }
                let Some(m) = self.net_of(k.dst) else { return Decision::Drop(DropReason::NoRoute) };
                if !v.may_reach(p, m) {
                    return Decision::Drop(DropReason::NoRoute);
                }
                if self.gateway(m) == Some(k.dst) {
                    return Decision::Local;
                }
                let egress = [Egress { iface: Iface::Net(m), next_hop: k.dst }, Egress { iface: Iface::Tunnel(p), next_hop: k.src }];
                Decision::Flow { reply: k.reverse(), egress, kind: FlowKind::Routed, tag: conntrack::NO_TAG }
            }
        }
    }

    fn egress_allowed(&self, n: NetId, k: &Key) -> bool {
        let Some(net) = self.cfg.nets.get(n.0 as usize) else { return false };
        let a = net.egress.lookup(k.proto, k.dport, k.dst).copied().unwrap_or(net.egress_default);
        a == Action::Allow
    }

    /// The port forward of a public address, protocol and port.
    fn forward_of(&self, ip: Ipv4Addr, protocol: u8, port: u16) -> Option<&Forward> {
        self.forwards_by_ip.get(&(ip, protocol))?.find(port)
    }

    /// Where a public address and port lead: a port forward (tcp/udp), else a static NAT.
    fn dnat_target(&self, ip: Ipv4Addr, protocol: u8, port: u16) -> Option<(Ipv4Addr, u16)> {
        if let Some(f) = self.forward_of(ip, protocol, port) {
            let p = if f.private_port.count() == 1 { f.private_port.lo } else { f.private_port.lo + (port - f.public_port.lo) };
            return Some((f.private_ip, p));
        }
        self.static_by_public.get(&ip).map(|&p| (p, port))
    }

    /// The reply key of a flow `k` whose source is translated to `nat_ip`, its replies coming
    /// from `remote:rport`: with the original source port (or ICMP id) if free, else a
    /// pseudo-random free one. "Free" means no live flow has that reply tuple, so a port is
    /// reused as soon as its flow expires, and the same port serves different remotes (as
    /// Linux's NAT does). Protocols without ports get the address only, once per remote.
    fn nat_reply(&mut self, now: Instant, k: &Key, remote: Ipv4Addr, rport: u16, nat_ip: Ipv4Addr) -> Option<Key> {
        let icmp = k.proto == proto::ICMP;
        let ports = matches!(k.proto, proto::TCP | proto::UDP);
        let reply = |p: u16| {
            let sport = if icmp { p } else { rport };
            Key { src: remote, dst: nat_ip, sport, dport: p, proto: k.proto }
        };
        // On a gateway address the health checks' local ports are the router's own.
        let own = k.proto == proto::TCP && self.is_gateway(nat_ip);
        let taken = |r: &Router, p: u16| {
            r.ct.contains(now, &reply(p)) || (ports && r.forward_of(nat_ip, k.proto, p).is_some()) || (own && crate::lb::health::PORTS.contains(&p))
        };
        let free = |r: &Router, p: u16| !taken(r, p);
        if !ports && !icmp {
            return free(self, 0).then(|| reply(0));
        }
        let lo = if icmp { 0u32 } else { NAT_PORT_LO as u32 };
        if (k.sport as u32) >= lo && free(self, k.sport) {
            return Some(reply(k.sport));
        }
        // RFC 6056 algorithm 2 (random start) with a random odd stride: a remote that sees one
        // translated port learns nothing about the next.
        let span = 65536 - lo;
        let h = self.rng.u32();
        let start = self.rng.u32() % span;
        // An odd stride: each run of tries visits distinct ports (at least 1024 of them).
        let stride = 2 * (h >> 16 | 1) + 1;
        (0..NAT_TRIES).map(|i| (lo + (start + i.wrapping_mul(stride)) % span) as u16).find(|&p| free(self, p)).map(reply)
    }

    /// The router's own endpoints: ICMP echo on every gateway and public address; UDP to an
    /// unserved port gets port unreachable.
    fn local(&mut self, now: Instant, from: Iface, eth_src: MacAddr, buf: &mut PacketBuf, hl: usize, tl: usize) -> Verdict {
        let (protocol, is_echo) = {
            let f = buf.frame();
            let l4 = &f[14 + hl..14 + tl];
            (f[14 + 9], l4.len() >= 8 && l4[0] == icmp::ECHO_REQUEST && f[14 + 9] == proto::ICMP)
        };
        let (src, dst) = match Ipv4Packet::new_checked(&buf.frame()[14..]) {
            Ok(p) => (p.src(), p.dst()),
            Err(_) => return Verdict::Drop(DropReason::BadIp),
        };
        let l4 = &buf.frame()[14 + hl..14 + tl];
        let dport = (l4.len() >= 4).then(|| be16(l4, 2));
        // Metadata and passwords: the router's own TCP endpoint, for the port's own address only.
        if let (Iface::Net(n), proto::TCP, Some(port)) = (from, protocol, dport) {
            if self.is_meta(n, dst, port) {
                let syn = l4.len() >= 14 && l4[13] & conntrack::tcp_flags::SYN != 0;
                let sport = be16(l4, 0);
                let vm = self.meta_port(n, self.ingress, eth_src);
                let (Some(p), true) = (vm, self.meta_allowed(n, vm, src)) else {
                    return Verdict::Drop(DropReason::MetadataRefused);
                };
                // A guest's TSO super-frame (a long request head) is cut into the segments the
                // stack expects; any other frame only has its checksum completed.
                let mut packets = Vec::new();
                if buf.vnet.gso == Gso::None {
                    let mut v = buf.vnet;
                    if crate::offload::complete_checksum(buf.frame_mut(), &mut v).is_err() {
                        return Verdict::Drop(DropReason::BadL4);
                    }
                    packets.push(buf.frame()[14..14 + tl].to_vec());
                } else {
                    let mut scratch = vec![0u8; crate::buf::MAX_FRAME];
                    let frame = &buf.frame()[..14 + tl];
                    if crate::offload::finish(frame, &buf.vnet, &mut scratch, &mut |seg| packets.push(seg[14..].to_vec())).is_err() {
                        return Verdict::Drop(DropReason::BadL4);
                    }
                }
                for packet in packets {
                    if let Err(r) = self.meta_in(now, n, p, eth_src, (src, sport), port, syn, packet) {
                        return Verdict::Drop(r);
                    }
                }
                return Verdict::Consumed;
            }
        }
        // DNS over TCP and health checks on the network's gateway: the router's own TCP endpoints.
        if let (Iface::Net(n), proto::TCP, Some(port)) = (from, protocol, dport) {
            let dns = port == 53 && self.serves_dns();
            if (dns || self.hc.owns(n, port)) && self.gateway(n) == Some(dst) {
                if buf.vnet.gso != Gso::None {
                    return Verdict::Drop(DropReason::BadL4);
                }
                let mut v = buf.vnet;
                if crate::offload::complete_checksum(buf.frame_mut(), &mut v).is_err() {
                    return Verdict::Drop(DropReason::BadL4);
                }
                let packet = buf.frame()[14..14 + tl].to_vec();
                if dns {
                    self.dns_tcp_in(now, n, packet);
                } else {
                    self.hc.input(n, packet);
                    self.run_checks(now);
                }
                return Verdict::Consumed;
            }
        }
        // DNS on the router's addresses, for guests and VPN peers only.
        if let (Iface::Net(_) | Iface::Tunnel(_), proto::UDP) = (from, protocol) {
            if dport == Some(53) && self.serves_dns() {
                let udp = &buf.frame()[14 + hl..14 + tl];
                let sport = be16(udp, 0);
                let payload = udp[8..].to_vec();
                return match self.dns_in(now, from, eth_src, src, sport, dst, &payload) {
                    Ok(()) => Verdict::Consumed,
                    Err(r) => Verdict::Drop(r),
                };
            }
        }
        if is_echo {
            if buf.vnet.needs_csum || buf.vnet.gso != Gso::None {
                return Verdict::Drop(DropReason::BadL4);
            }
            // The request, back to its sender: addresses swapped, type changed.
            let mut b = self.buf();
            b.load(&buf.frame()[..14 + tl], VnetHdr::default());
            let f = b.frame_mut();
            f[0..6].copy_from_slice(&eth_src.0);
            f[6..12].copy_from_slice(&self.mac.0);
            if let Ok(mut p) = Ipv4Packet::new_checked(&mut f[14..]) {
                p.set_src(dst);
                p.set_dst(src);
                p.set_ttl(64);
                let m = p.payload_mut();
                let c = checksum::update16(be16(m, 2), (icmp::ECHO_REQUEST as u16) << 8, (icmp::ECHO_REPLY as u16) << 8);
                m[0] = icmp::ECHO_REPLY;
                m[2..4].copy_from_slice(&c.to_be_bytes());
            }
            self.outbox.push(Out { iface: from, buf: b, port: None });
            self.stats.echo_replies += 1;
            return Verdict::Consumed;
        }
        if protocol == proto::UDP {
            let pkt = buf.frame()[14..14 + tl].to_vec();
            self.icmp_error(now, from, eth_src, &pkt, icmp::DEST_UNREACH, icmp::CODE_PORT_UNREACH, 0);
        }
        Verdict::Drop(DropReason::NoL3)
    }

    /// An ICMP error arriving: if it quotes a packet of a tracked flow, it is translated and
    /// sent where that flow's packets in the opposite direction go.
    fn icmp_error_in(&mut self, now: Instant, from: Iface, buf: &mut PacketBuf, hl: usize, tl: usize) -> Verdict {
        let (outer_src, outer_dst, ttl) = match Ipv4Packet::new_checked(&buf.frame()[14..]) {
            Ok(p) => (p.src(), p.dst(), p.ttl()),
            Err(_) => return Verdict::Drop(DropReason::BadIp),
        };
        let msg = &buf.frame()[14 + hl..14 + tl];
        // Its checksum is rewritten whole below: a damaged message must not come out valid.
        if checksum::checksum(msg) != 0 {
            return Verdict::Drop(DropReason::BadL4);
        }
        let Some(quoted) = nat::quoted_key(msg) else { return Verdict::Drop(DropReason::BadL4) };
        let k = quoted.reverse();
        let Some((idx, dir)) = self.ct.lookup(now, &k) else { return Verdict::Drop(DropReason::NotForwarded) };
        if self.ct.flow(idx).epoch != self.ct.epoch && self.ct.flow(idx).ingress(dir) == from {
            // An error about a flow decided under replaced rules: translated only if the new
            // rules still decide that flow the same way (else the flow ends here).
            match self.redecide(self.ct.flow(idx)) {
                Some(e) => self.ct.refresh(idx, e),
                None => {
                    self.ct.remove(idx);
                    self.stats.reload_revoked += 1;
                    return Verdict::Drop(DropReason::ReloadRevoked);
                }
            }
        }
        let flow = self.ct.flow(idx);
        let (target, egress) = (flow.target(dir), flow.egress[dir as usize]);
        // The error must come from where that direction's packets come from.
        if flow.ingress(dir) != from || outer_dst != k.dst || ttl <= 1 {
            return Verdict::Drop(DropReason::NotForwarded);
        }
        let new_quoted = target.reverse();
        let new_outer_src = if outer_src == k.src { target.src } else { outer_src };
        {
            let ipb = &mut buf.frame_mut()[14..14 + tl];
            if !nat::rewrite_icmp_error(ipb, new_outer_src, target.dst, &quoted, &new_quoted) {
                return Verdict::Drop(DropReason::BadL4);
            }
            if let Ok(mut p) = Ipv4Packet::new_checked(ipb) {
                p.decrement_ttl();
            }
        }
        self.stats.icmp_errors_translated += 1;
        let r = self.resolve(now, egress.iface, egress.next_hop);
        self.send(egress, r, None, buf, tl, true)
    }

    /// Sends an ICMP error about `pkt` (the IP packet as received) back to its sender, whose
    /// frame came from `eth_src` on `from`. Never about an ICMP error, a non-first fragment,
    /// or a packet from an address that cannot be answered; rate limited.
    #[allow(clippy::too_many_arguments)]
    fn icmp_error(&mut self, now: Instant, from: Iface, eth_src: MacAddr, pkt: &[u8], typ: u8, code: u8, mtu: u16) {
        let Ok(ip) = Ipv4Packet::new_checked(pkt) else { return };
        let l4 = ip.payload();
        if ip.frag_offset() != 0 || martian(ip.src()) || (ip.protocol() == proto::ICMP && l4.first().is_some_and(|t| icmp::is_error(*t))) {
            return;
        }
        let elapsed = now.millis().saturating_sub(self.icmp_refill.millis());
        if elapsed > 0 {
            self.icmp_tokens = (self.icmp_tokens + elapsed * ICMP_PER_SEC / 1000).min(ICMP_BURST);
            self.icmp_refill = now;
        }
        if self.icmp_tokens == 0 {
            self.stats.icmp_rate_limited += 1;
            return;
        }
        self.icmp_tokens -= 1;
        let src = match from {
            Iface::Public if self.public_ips.contains(&ip.dst()) => Some(ip.dst()),
            _ => self.own_addr(from, ip.src()),
        };
        let Some(src) = src else { return };
        let dst = ip.src();
        let quote = &pkt[..pkt.len().min(ICMP_QUOTE)];
        self.ident = self.ident.wrapping_add(1);
        let ident = self.ident;
        let f = self.new_frame(from, eth_src, ethertype::IPV4, 20 + 8 + quote.len());
        ipv4::emit_header(&mut f[..20], src, dst, proto::ICMP, 64, 8 + quote.len(), ident);
        let [m0, m1] = mtu.to_be_bytes();
        crate::wire::icmp::IcmpRepr { msg_type: typ, code, ident: 0 }.emit(&mut f[20..28], [0, 0, m0, m1]);
        f[28..].copy_from_slice(quote);
        let c = checksum::checksum(&f[20..]);
        f[22..24].copy_from_slice(&c.to_be_bytes());
        self.stats.icmp_sent += 1;
    }

    /// A page of the conntrack table (bounded work).
    pub fn conntrack_page(&self, now: Instant, offset: usize, limit: usize) -> (Vec<conntrack::FlowRow>, Option<usize>) {
        self.ct.page(now, offset, limit)
    }
}

#[cfg(test)]
mod tests;
