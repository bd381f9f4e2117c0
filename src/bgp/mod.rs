//! A BGP speaker for L2VPN EVPN (RFC 4271, RFC 7432, RFC 8365): how vrouter joins a fabric of
//! VTEPs as one more, so that hosts and MACs are learned from route reflectors (FRR) instead
//! of `[[vxlan.peer]]` lists and flooding.
//!
//! Sans-IO: the I/O edge (`io::bgp`) owns the TCP connections and the clock; it reports what
//! happened (`connected`, `received`, `closed`, `connect_failed`), hands in the local MACs
//! ([`Speaker::set_local`]) and carries out the [`Io`] the speaker asks for. Timers (connect
//! retry with backoff and flap dampening, hold, keepalive) run on the `now` it is given.
//!
//! What is advertised: per VXLAN network, a type-3 route (ingress replication PMSI, VXLAN
//! encapsulation, the network's route targets) and a type-2 route for every local guest MAC
//! (and one per known IPv4 address of it), with a MAC mobility sequence number one above the
//! highest seen elsewhere when the MAC came from another VTEP. What is learned: routes whose
//! route targets a local network imports, as an [`EvpnView`] (per VNI: the flood list of
//! VTEPs and the MACs behind each). Learned routes live with their session.
//!
//! Invariants: bytes from a neighbour only through `wire::bgp`; a malformed message closes
//! the session with a NOTIFICATION and a counted error; no neighbour holds more than its
//! `max_routes` routes here (past it: refused and counted); a session that keeps flapping is
//! held down (dampening) rather than reconnected at once.

#[cfg(test)]
mod tests;

use crate::time::Instant;
use crate::wire::bgp::{self as wire, code, Attrs, Message, Rd, Route, RouteTarget};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

pub const PORT: u16 = 179;
/// Routes a neighbour may hold here unless configured.
pub const MAX_ROUTES_DEFAULT: usize = 100_000;
/// First reconnect delay; it doubles per failed attempt up to `BACKOFF_MAX`.
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A TCP connect that takes longer is given up on.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The hold time while waiting for the neighbour's OPEN (RFC 4271 suggests 4 minutes; a
/// fabric peer answers in milliseconds).
const OPEN_HOLD: Duration = Duration::from_secs(30);
/// Flap dampening (RFC 2439's shape): each session loss adds a penalty that halves every
/// `HALF_LIFE`; above `SUPPRESS` the neighbour is not reconnected until it decays to `REUSE`.
const PENALTY: f64 = 1000.0;
const SUPPRESS: f64 = 2500.0;
const REUSE: f64 = 750.0;
const HALF_LIFE: f64 = 60.0;
/// RFC 7432 §15.1: a MAC that moves this often within `DUP_WINDOW` is a duplicate; its
/// sequence number is not raised again until the window passes.
const DUP_MOVES: usize = 5;
const DUP_WINDOW: Duration = Duration::from_secs(180);

/// A neighbour as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeighborSpec {
    pub addr: Ipv4Addr,
    pub remote_as: u32,
    pub hold_secs: u16,
    pub keepalive_secs: u16,
    pub max_routes: usize,
}

/// A VXLAN network as EVPN sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvpnNet {
    pub name: String,
    pub vni: u32,
    pub rd: Rd,
    /// Exported and imported alike.
    pub route_targets: Vec<RouteTarget>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpeakerConfig {
    pub asn: u32,
    pub router_id: Ipv4Addr,
    /// This VTEP's underlay address: the next hop of everything advertised.
    pub local: Ipv4Addr,
    pub nets: Vec<EvpnNet>,
    pub neighbors: Vec<NeighborSpec>,
}

/// A route as a key of the Adj-RIB-In: a MAC route without its label.
fn key(r: &Route) -> Route {
    match *r {
        Route::Mac { rd, tag, mac, ip, .. } => Route::Mac { rd, tag, mac, ip, vni: 0 },
        r => r,
    }
}

/// A local guest MAC (and an IPv4 address it is known by, if any) in VNI `vni`.
pub type LocalMac = (u32, [u8; 6], Option<Ipv4Addr>);

/// What the speaker asks the I/O edge to do; a connection is known by its neighbour's address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Io {
    /// Open a TCP connection from `local` to the neighbour.
    Connect { peer: Ipv4Addr, local: Ipv4Addr, to: SocketAddrV4 },
    Send(Ipv4Addr, Vec<u8>),
    /// Close the connection (after what was sent before it).
    Close(Ipv4Addr),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Idle,
    Connect,
    OpenSent,
    OpenConfirm,
    Established,
}

/// A learned route's attributes that matter here.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Learned {
    next_hop: Ipv4Addr,
    /// A MAC route's label (its VNI), kept out of the route's key: a withdrawal may carry
    /// another (RFC 7432 §7.2: the label is not part of the key).
    vni: u32,
    seq: u32,
    rts: Vec<RouteTarget>,
}

/// Counters of one neighbour (they survive its sessions).
#[derive(Debug, Clone, Default, Serialize)]
pub struct NeighborCounters {
    pub messages_in: u64,
    pub messages_out: u64,
    pub updates_in: u64,
    pub updates_out: u64,
    /// Sessions that reached Established.
    pub established: u64,
    /// Established sessions lost.
    pub flaps: u64,
    /// NOTIFICATIONs sent because of what the neighbour sent (malformed or unexpected).
    pub errors_sent: u64,
    pub notifications_in: u64,
    /// Routes not taken: over `max_routes`.
    pub routes_refused: u64,
    /// Routes not taken: another family, an IPv6 next hop, our own, an AS loop, no import.
    pub routes_ignored: u64,
    pub connect_failures: u64,
}

struct Neighbor {
    spec: NeighborSpec,
    state: State,
    next_connect: Instant,
    connect_deadline: Instant,
    backoff: Duration,
    rx: Vec<u8>,
    hold: Duration,
    keepalive: Duration,
    hold_deadline: Instant,
    next_keepalive: Instant,
    peer_id: Option<Ipv4Addr>,
    up_since: Option<Instant>,
    adj_in: HashMap<Route, Learned>,
    /// What this session was sent, by route (its attributes, to see a change).
    adj_out: HashMap<Route, Attrs>,
    penalty: f64,
    penalty_at: Instant,
    /// Held down by flap dampening until the penalty decays to `REUSE`.
    suppressed: bool,
    last_error: Option<String>,
    c: NeighborCounters,
}

impl Neighbor {
    fn new(spec: NeighborSpec) -> Self {
        Neighbor {
            spec,
            state: State::Idle,
            next_connect: Instant::ZERO,
            connect_deadline: Instant::ZERO,
            backoff: BACKOFF_MIN,
            rx: Vec::new(),
            hold: Duration::ZERO,
            keepalive: Duration::ZERO,
            hold_deadline: Instant::ZERO,
            next_keepalive: Instant::ZERO,
            peer_id: None,
            up_since: None,
            adj_in: HashMap::new(),
            adj_out: HashMap::new(),
            penalty: 0.0,
            penalty_at: Instant::ZERO,
            suppressed: false,
            last_error: None,
            c: NeighborCounters::default(),
        }
    }

    fn penalty(&self, now: Instant) -> f64 {
        self.penalty * 0.5f64.powf(now.since(self.penalty_at).as_secs_f64() / HALF_LIFE)
    }

    /// When a dampened neighbour may be tried again.
    fn reuse_at(&self, now: Instant) -> Instant {
        let p = self.penalty(now);
        if p <= REUSE {
            return now;
        }
        now + Duration::from_secs_f64(HALF_LIFE * (p / REUSE).log2())
    }
}

/// The fabric as learned: per VNI, the VTEPs that want its flooded traffic and the MACs
/// behind other VTEPs (only those that win against a local one by MAC mobility).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct EvpnView {
    pub vnis: BTreeMap<u32, VniView>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct VniView {
    /// From type-3 routes.
    pub flood: BTreeSet<Ipv4Addr>,
    /// MAC -> (VTEP, sequence number, IPv4 addresses advertised with it).
    pub macs: BTreeMap<MacKey, RemoteMac>,
}

/// A MAC as a map key that serializes as text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MacKey(pub [u8; 6]);

impl Serialize for MacKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&crate::wire::ethernet::MacAddr(self.0).to_string())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RemoteMac {
    pub vtep: Ipv4Addr,
    pub seq: u32,
    pub ips: Vec<Ipv4Addr>,
}

/// The VNIs a VTEP carries (a type-3 or a type-2 route), and those it wants flooded traffic
/// of (a type-3 route: its flood list membership).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct VtepVnis {
    pub all: BTreeSet<u32>,
    pub flood: BTreeSet<u32>,
}

impl EvpnView {
    /// Every VTEP with the VNIs it carries: the VXLAN peers to have. Flooded traffic goes to
    /// exactly the VTEPs of a VNI's flood list; one known only by its MAC routes gets unicast.
    pub fn vteps(&self) -> BTreeMap<Ipv4Addr, VtepVnis> {
        let mut m: BTreeMap<Ipv4Addr, VtepVnis> = BTreeMap::new();
        for (vni, v) in &self.vnis {
            for ip in &v.flood {
                let e = m.entry(*ip).or_default();
                e.all.insert(*vni);
                e.flood.insert(*vni);
            }
            for r in v.macs.values() {
                m.entry(r.vtep).or_default().all.insert(*vni);
            }
        }
        m
    }
}

/// `ctl show bgp`: one row per neighbour.
#[derive(Debug, Clone, Serialize)]
pub struct NeighborRow {
    pub address: Ipv4Addr,
    pub remote_as: u32,
    pub state: State,
    pub peer_id: Option<Ipv4Addr>,
    pub uptime_secs: Option<u64>,
    pub hold_secs: u64,
    pub keepalive_secs: u64,
    pub routes_in: usize,
    pub routes_out: usize,
    pub max_routes: usize,
    /// Seconds until the next connection attempt while idle.
    pub retry_in_secs: Option<u64>,
    pub dampened: bool,
    pub last_error: Option<String>,
    pub counters: NeighborCounters,
}

#[derive(Debug, Clone, Serialize)]
pub struct BgpSnapshot {
    pub asn: u32,
    pub router_id: Ipv4Addr,
    pub local: Ipv4Addr,
    pub neighbors: Vec<NeighborRow>,
    /// Local routes advertised (type 3 and type 2).
    pub advertised: usize,
    /// MACs whose sequence number stopped rising (duplicate detection).
    pub duplicate_macs: usize,
    pub evpn: EvpnView,
    /// Per VNI, the local MACs advertised (with their sequence numbers).
    pub local_macs: BTreeMap<u32, Vec<(MacKey, u32)>>,
    pub networks: Vec<NetRow>,
}

#[derive(Debug, Clone, Serialize)]
pub struct NetRow {
    pub name: String,
    pub vni: u32,
    pub rd: String,
    pub route_targets: Vec<String>,
}

/// Mobility state of a local MAC.
#[derive(Debug, Clone, Default)]
struct Mobility {
    seq: u32,
    /// When its sequence number was raised (for duplicate detection).
    moves: Vec<Instant>,
}

pub struct Speaker {
    cfg: SpeakerConfig,
    nbrs: Vec<Neighbor>,
    /// The local routes wanted, with their attributes.
    local: BTreeMap<Route, Attrs>,
    local_macs: BTreeSet<LocalMac>,
    mobility: HashMap<(u32, [u8; 6]), Mobility>,
    duplicates: usize,
    view: EvpnView,
    /// Bumped when `view` changes.
    generation: u64,
    out: Vec<Io>,
}

impl Speaker {
    pub fn new(cfg: SpeakerConfig) -> Self {
        let nbrs = cfg.neighbors.iter().cloned().map(Neighbor::new).collect();
        let mut s = Speaker {
            cfg,
            nbrs,
            local: BTreeMap::new(),
            local_macs: BTreeSet::new(),
            mobility: HashMap::new(),
            duplicates: 0,
            view: EvpnView::default(),
            generation: 0,
            out: Vec::new(),
        };
        s.rebuild_local(Instant::ZERO);
        s
    }


    /// A new config: neighbours that stay (same address, AS and timers, same identity of
    /// ours) keep their sessions; the others are closed (Cease, configuration change) or
    /// started. New networks or route targets are advertised and imported at once.
    pub fn reconfigure(&mut self, now: Instant, cfg: SpeakerConfig) {
        let same_identity = (cfg.asn, cfg.router_id, cfg.local) == (self.cfg.asn, self.cfg.router_id, self.cfg.local);
        let mut old: Vec<Option<Neighbor>> = std::mem::take(&mut self.nbrs).into_iter().map(Some).collect();
        let mut nbrs = Vec::new();
        for spec in &cfg.neighbors {
            match old.iter().position(|o| o.as_ref().is_some_and(|o| same_identity && o.spec == *spec)) {
                Some(i) => nbrs.push(old[i].take().expect("present")),
                None => nbrs.push(Neighbor::new(spec.clone())),
            }
        }
        for n in old.into_iter().flatten() {
            if n.state != State::Idle {
                if matches!(n.state, State::OpenSent | State::OpenConfirm | State::Established) {
                    self.out.push(Io::Send(n.spec.addr, wire::notification(code::CEASE, code::CEASE_CONFIG_CHANGE, &[])));
                }
                self.out.push(Io::Close(n.spec.addr));
            }
        }
        self.nbrs = nbrs;
        self.cfg = cfg;
        self.recompute_view();
        self.rebuild_local(now);
    }

    /// Ends every session with a Cease (administrative shutdown), for a clean stop: the
    /// neighbours withdraw what they learned from this speaker at once.
    pub fn shutdown(&mut self) {
        for n in &mut self.nbrs {
            if matches!(n.state, State::OpenSent | State::OpenConfirm | State::Established) {
                self.out.push(Io::Send(n.spec.addr, wire::notification(code::CEASE, code::CEASE_SHUTDOWN, &[])));
            }
            if n.state != State::Idle {
                self.out.push(Io::Close(n.spec.addr));
            }
            n.state = State::Idle;
        }
    }

    pub fn take_io(&mut self) -> Vec<Io> {
        std::mem::take(&mut self.out)
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn view(&self) -> &EvpnView {
        &self.view
    }

    fn idx(&self, peer: Ipv4Addr) -> Option<usize> {
        self.nbrs.iter().position(|n| n.spec.addr == peer)
    }

    /// When [`Speaker::poll`] has work next.
    pub fn poll_at(&self) -> Instant {
        let mut at = Instant(u64::MAX);
        for n in &self.nbrs {
            let t = match n.state {
                State::Idle if n.suppressed => n.next_connect.max(n.reuse_at(n.next_connect)),
                State::Idle => n.next_connect,
                State::Connect => n.connect_deadline,
                State::OpenSent => n.hold_deadline,
                State::OpenConfirm | State::Established if n.hold.is_zero() => Instant(u64::MAX),
                State::OpenConfirm | State::Established => n.hold_deadline.min(n.next_keepalive),
            };
            at = at.min(t);
        }
        at
    }

    /// Timers: connection attempts, connect timeouts, hold expiry, keepalives.
    pub fn poll(&mut self, now: Instant) {
        for i in 0..self.nbrs.len() {
            let n = &mut self.nbrs[i];
            let addr = n.spec.addr;
            match n.state {
                State::Idle if now >= n.next_connect => {
                    if n.suppressed {
                        if n.penalty(now) > REUSE {
                            continue;
                        }
                        n.suppressed = false;
                    }
                    n.state = State::Connect;
                    n.connect_deadline = now + CONNECT_TIMEOUT;
                    n.rx.clear();
                    self.out.push(Io::Connect { peer: addr, local: self.cfg.local, to: SocketAddrV4::new(addr, PORT) });
                }
                State::Connect if now >= n.connect_deadline => {
                    self.out.push(Io::Close(addr));
                    self.failed(now, i, "connect timed out".into());
                }
                State::OpenSent | State::OpenConfirm | State::Established if !n.hold.is_zero() || n.state == State::OpenSent => {
                    if now >= n.hold_deadline {
                        self.notify(now, i, code::HOLD_EXPIRED, 0, false);
                        continue;
                    }
                    if n.state != State::OpenSent && now >= n.next_keepalive {
                        n.next_keepalive = now + n.keepalive;
                        n.c.messages_out += 1;
                        self.out.push(Io::Send(addr, wire::keepalive()));
                    }
                }
                _ => {}
            }
        }
    }

    /// The TCP connection to `peer` is up: the OPEN goes out.
    pub fn connected(&mut self, now: Instant, peer: Ipv4Addr) {
        let Some(i) = self.idx(peer) else { return };
        let n = &mut self.nbrs[i];
        if n.state != State::Connect {
            return;
        }
        n.state = State::OpenSent;
        n.hold_deadline = now + OPEN_HOLD;
        n.c.messages_out += 1;
        self.out.push(Io::Send(peer, wire::open(self.cfg.asn, n.spec.hold_secs, self.cfg.router_id)));
    }

    /// The connection attempt failed (refused, unreachable).
    pub fn connect_failed(&mut self, now: Instant, peer: Ipv4Addr, why: String) {
        if let Some(i) = self.idx(peer) {
            if self.nbrs[i].state == State::Connect {
                self.failed(now, i, why);
            }
        }
    }

    /// The neighbour closed the connection (or it broke).
    pub fn closed(&mut self, now: Instant, peer: Ipv4Addr, why: &str) {
        if let Some(i) = self.idx(peer) {
            if self.nbrs[i].state != State::Idle {
                self.down(now, i, format!("connection closed: {why}"));
            }
        }
    }

    fn failed(&mut self, now: Instant, i: usize, why: String) {
        let n = &mut self.nbrs[i];
        n.c.connect_failures += 1;
        n.last_error = Some(why);
        n.state = State::Idle;
        n.next_connect = now + n.backoff;
        n.backoff = (n.backoff * 2).min(BACKOFF_MAX);
    }

    /// Sends a NOTIFICATION and ends the session.
    fn notify(&mut self, now: Instant, i: usize, c: u8, sub: u8, their_fault: bool) {
        let n = &mut self.nbrs[i];
        n.c.messages_out += 1;
        if their_fault {
            n.c.errors_sent += 1;
        }
        self.out.push(Io::Send(n.spec.addr, wire::notification(c, sub, &[])));
        self.down(now, i, format!("sent NOTIFICATION: {}", wire::Error { code: c, subcode: sub }));
    }

    /// The session ends: what it taught is forgotten, a reconnect is scheduled.
    fn down(&mut self, now: Instant, i: usize, why: String) {
        let n = &mut self.nbrs[i];
        self.out.push(Io::Close(n.spec.addr));
        if n.state == State::Established {
            n.c.flaps += 1;
            n.penalty = n.penalty(now) + PENALTY;
            n.penalty_at = now;
            n.suppressed |= n.penalty > SUPPRESS;
        }
        n.state = State::Idle;
        n.up_since = None;
        n.rx.clear();
        n.adj_out.clear();
        n.next_connect = now + n.backoff;
        n.backoff = (n.backoff * 2).min(BACKOFF_MAX);
        n.last_error = Some(why);
        let had = !n.adj_in.is_empty();
        n.adj_in.clear();
        if had {
            self.recompute_view();
        }
    }

    /// Bytes from `peer`'s connection.
    pub fn received(&mut self, now: Instant, peer: Ipv4Addr, bytes: &[u8]) {
        let Some(i) = self.idx(peer) else { return };
        if matches!(self.nbrs[i].state, State::Idle | State::Connect) {
            return;
        }
        self.nbrs[i].rx.extend_from_slice(bytes);
        let mut at = 0;
        let mut changed = false;
        loop {
            let n = &self.nbrs[i];
            let buf = &n.rx[at..];
            let len = match wire::frame(buf) {
                Ok(Some((_, len))) => len,
                Ok(None) => break,
                Err(e) => {
                    self.notify(now, i, e.code, e.subcode, true);
                    return;
                }
            };
            if buf.len() < len {
                break;
            }
            let msg = wire::parse(&buf[..len]);
            at += len;
            match msg {
                Ok(m) => match self.handle(now, i, m) {
                    Ok(c) => changed |= c,
                    Err(()) => return,
                },
                Err(e) => {
                    self.notify(now, i, e.code, e.subcode, true);
                    return;
                }
            }
            if self.nbrs[i].state == State::Idle {
                return;
            }
        }
        self.nbrs[i].rx.drain(..at);
        if changed {
            self.recompute_view();
            // A route that moved a local MAC away raises nothing; one that lost to a local
            // MAC is answered by a higher sequence number.
            self.rebuild_local(now);
        }
    }

    /// One message; `Ok(true)` when learned routes changed, `Err` when the session ended.
    fn handle(&mut self, now: Instant, i: usize, m: Message) -> Result<bool, ()> {
        let local_as = self.cfg.asn;
        let n = &mut self.nbrs[i];
        n.c.messages_in += 1;
        if !n.hold.is_zero() {
            n.hold_deadline = now + n.hold;
        }
        match (n.state, m) {
            (_, Message::Notification { code: c, subcode, .. }) => {
                n.c.notifications_in += 1;
                let why = format!("received NOTIFICATION: {}", wire::Error { code: c, subcode });
                self.down(now, i, why);
                Err(())
            }
            (State::OpenSent, Message::Open(o)) => {
                if o.asn != n.spec.remote_as {
                    self.notify(now, i, code::OPEN, code::OPEN_BAD_AS, true);
                    return Err(());
                }
                if o.id == self.cfg.router_id && n.spec.remote_as == local_as {
                    self.notify(now, i, code::OPEN, code::OPEN_BAD_ID, true);
                    return Err(());
                }
                let hold = o.hold.min(n.spec.hold_secs);
                n.hold = Duration::from_secs(hold as u64);
                n.keepalive = if hold == 0 { Duration::ZERO } else { Duration::from_secs((n.spec.keepalive_secs.min(hold / 3).max(1)) as u64) };
                n.peer_id = Some(o.id);
                n.state = State::OpenConfirm;
                n.hold_deadline = now + if hold == 0 { OPEN_HOLD } else { n.hold };
                n.next_keepalive = now + n.keepalive;
                n.c.messages_out += 1;
                self.out.push(Io::Send(n.spec.addr, wire::keepalive()));
                if !o.evpn {
                    n.last_error = Some("the neighbour did not offer L2VPN EVPN".into());
                }
                Ok(false)
            }
            (State::OpenConfirm, Message::Keepalive) => {
                n.state = State::Established;
                n.up_since = Some(now);
                n.backoff = BACKOFF_MIN;
                n.c.established += 1;
                n.last_error = None;
                self.sync(i, true);
                Ok(false)
            }
            (State::Established, Message::Keepalive) => Ok(false),
            (State::Established, Message::RouteRefresh { afi, safi }) => {
                if (afi, safi) == (wire::AFI_L2VPN, wire::SAFI_EVPN) {
                    self.nbrs[i].adj_out.clear();
                    self.sync(i, true);
                }
                Ok(false)
            }
            (State::Established, Message::Update(u)) => {
                n.c.updates_in += 1;
                Ok(self.learn(i, u))
            }
            (_, _) => {
                self.notify(now, i, code::FSM, 0, true);
                Err(())
            }
        }
    }

    /// Takes an UPDATE's EVPN routes into neighbour `i`'s Adj-RIB-In.
    fn learn(&mut self, i: usize, u: wire::Update) -> bool {
        let (asn, local) = (self.cfg.asn, self.cfg.local);
        let ebgp = self.nbrs[i].spec.remote_as != asn;
        let n = &mut self.nbrs[i];
        n.c.routes_ignored += u.ignored as u64;
        let mut changed = false;
        for r in &u.unreach {
            changed |= n.adj_in.remove(&key(r)).is_some();
        }
        if u.reach.is_empty() {
            return changed;
        }
        let nh = match (u.reach.first(), u.attrs.pmsi, u.attrs.next_hop) {
            (_, _, Some(nh)) => nh,
            _ => {
                n.c.routes_ignored += u.reach.len() as u64;
                return changed;
            }
        };
        let looped = ebgp && u.attrs.as_path.contains(&asn);
        for r in u.reach {
            let usable = !matches!(r, Route::Other { .. }) && !looped && nh != local && !nh.is_unspecified();
            if !usable {
                n.c.routes_ignored += 1;
                // An update replaces what the route said before: it is no longer usable.
                changed |= n.adj_in.remove(&key(&r)).is_some();
                continue;
            }
            let vni = if let Route::Mac { vni, .. } = r { vni } else { 0 };
            let r = key(&r);
            let l = Learned { next_hop: nh, vni, seq: u.attrs.mac_seq.unwrap_or(0), rts: u.attrs.route_targets.clone() };
            if !n.adj_in.contains_key(&r) && n.adj_in.len() >= n.spec.max_routes {
                n.c.routes_refused += 1;
                continue;
            }
            if n.adj_in.get(&r) != Some(&l) {
                n.adj_in.insert(r, l);
                changed = true;
            }
        }
        changed
    }

    /// The network a learned route belongs to: one importing one of its route targets (the
    /// route's VNI decides between several).
    fn net_of(&self, rts: &[RouteTarget], vni: Option<u32>) -> Option<u32> {
        let mut found = None;
        for net in &self.cfg.nets {
            if net.route_targets.iter().any(|rt| rts.contains(rt)) {
                if Some(net.vni) == vni {
                    return Some(net.vni);
                }
                found.get_or_insert(net.vni);
            }
        }
        found
    }

    fn recompute_view(&mut self) {
        let mut v = EvpnView::default();
        for net in &self.cfg.nets {
            v.vnis.insert(net.vni, VniView::default());
        }
        for n in &self.nbrs {
            for (r, l) in &n.adj_in {
                match *r {
                    Route::Imet { .. } => {
                        if let Some(vni) = self.net_of(&l.rts, None) {
                            v.vnis.entry(vni).or_default().flood.insert(l.next_hop);
                        }
                    }
                    Route::Mac { mac, ip, .. } => {
                        let Some(vni) = self.net_of(&l.rts, Some(l.vni)) else { continue };
                        let e = v.vnis.entry(vni).or_default().macs.entry(MacKey(mac)).or_insert(RemoteMac { vtep: l.next_hop, seq: l.seq, ips: Vec::new() });
                        // The highest sequence number wins, then the lowest VTEP address.
                        if (l.seq, std::cmp::Reverse(l.next_hop)) > (e.seq, std::cmp::Reverse(e.vtep)) {
                            *e = RemoteMac { vtep: l.next_hop, seq: l.seq, ips: Vec::new() };
                        }
                        if let Some(ip) = ip {
                            if e.vtep == l.next_hop && !e.ips.contains(&ip) {
                                e.ips.push(ip);
                            }
                        }
                    }
                    Route::Other { .. } => {}
                }
            }
        }
        // A local MAC stays local unless the remote route is newer (MAC mobility).
        for (vni, mac, _) in &self.local_macs {
            let ours = self.mobility.get(&(*vni, *mac)).map_or(0, |m| m.seq);
            if let Some(vv) = v.vnis.get_mut(vni) {
                if vv.macs.get(&MacKey(*mac)).is_some_and(|r| r.seq <= ours) {
                    vv.macs.remove(&MacKey(*mac));
                }
            }
        }
        for vv in v.vnis.values_mut() {
            vv.macs.values_mut().for_each(|r| r.ips.sort());
        }
        if v != self.view {
            self.view = v;
            self.generation += 1;
        }
    }

    /// The local MACs now (guests on this host, in VXLAN networks): what changed is
    /// advertised or withdrawn on every established session.
    pub fn set_local(&mut self, now: Instant, macs: BTreeSet<LocalMac>) {
        if macs == self.local_macs {
            return;
        }
        let before: BTreeSet<(u32, [u8; 6])> = self.local_macs.iter().map(|(v, m, _)| (*v, *m)).collect();
        for (vni, mac, _) in &macs {
            if before.contains(&(*vni, *mac)) {
                continue;
            }
            // MAC mobility: a MAC another VTEP advertises appeared here; ours must be newer.
            // (The view still holds the remote route: the MAC was not local a moment ago.)
            let Some(r) = self.view.vnis.get(vni).and_then(|v| v.macs.get(&MacKey(*mac))).map(|r| r.seq) else { continue };
            let m = self.mobility.entry((*vni, *mac)).or_default();
            m.moves.retain(|t| now.since(*t) < DUP_WINDOW);
            if r >= m.seq && m.moves.len() < DUP_MOVES {
                m.seq = r.saturating_add(1);
                m.moves.push(now);
            }
        }
        self.local_macs = macs;
        self.recompute_view();
        self.rebuild_local(now);
    }

    fn rebuild_local(&mut self, now: Instant) {
        let me = self.cfg.local;
        let ibgp_pref = Some(100);
        let mut want: BTreeMap<Route, Attrs> = BTreeMap::new();
        let base = |net: &EvpnNet| Attrs {
            origin: 0,
            as_path: Vec::new(),
            local_pref: ibgp_pref,
            next_hop: Some(me),
            route_targets: net.route_targets.clone(),
            mac_seq: None,
            pmsi: None,
            vxlan_encap: true,
        };
        for net in &self.cfg.nets {
            want.insert(Route::Imet { rd: net.rd, tag: 0, origin: me }, Attrs { pmsi: Some((6, net.vni, me)), ..base(net) });
        }
        for &(vni, mac, ip) in &self.local_macs {
            let Some(net) = self.cfg.nets.iter().find(|n| n.vni == vni) else { continue };
            let seq = self.mobility.get(&(vni, mac)).map_or(0, |m| m.seq);
            let attrs = Attrs { mac_seq: (seq > 0).then_some(seq), ..base(net) };
            want.insert(Route::Mac { rd: net.rd, tag: 0, mac, ip, vni }, attrs);
        }
        // A duplicate (two hosts claim it): its number stopped rising.
        self.duplicates = self.mobility.values().filter(|m| m.moves.iter().filter(|t| now.since(**t) < DUP_WINDOW).count() >= DUP_MOVES).count();
        // Forget the mobility of MACs that are neither here nor anywhere else.
        let local_keys: BTreeSet<(u32, [u8; 6])> = self.local_macs.iter().map(|(v, m, _)| (*v, *m)).collect();
        let view = &self.view;
        self.mobility.retain(|k, _| local_keys.contains(k) || view.vnis.get(&k.0).is_some_and(|v| v.macs.contains_key(&MacKey(k.1))));
        self.local = want;
        for i in 0..self.nbrs.len() {
            if self.nbrs[i].state == State::Established {
                self.sync(i, false);
            }
        }
    }

    /// Brings neighbour `i`'s Adj-RIB-Out to `self.local`: withdrawals, then advertisements
    /// grouped by attributes and packed into messages of at most 4096 bytes.
    fn sync(&mut self, i: usize, end_of_rib: bool) {
        let ebgp = self.nbrs[i].spec.remote_as != self.cfg.asn;
        let asn = self.cfg.asn;
        let n = &mut self.nbrs[i];
        let addr = n.spec.addr;
        let gone: Vec<Route> = n.adj_out.keys().filter(|r| !self.local.contains_key(r)).copied().collect();
        let mut msgs = Vec::new();
        let mut batch: Vec<Route> = Vec::new();
        let mut size = wire::UNREACH_OVERHEAD;
        for r in gone {
            if size + r.encoded_len() > wire::MAX_LEN {
                msgs.push(wire::update_unreach(&batch));
                batch.clear();
                size = wire::UNREACH_OVERHEAD;
            }
            size += r.encoded_len();
            batch.push(r);
            n.adj_out.remove(&r);
        }
        if !batch.is_empty() {
            msgs.push(wire::update_unreach(&batch));
        }
        let mut groups: BTreeMap<Vec<u8>, (Attrs, Vec<Route>)> = BTreeMap::new();
        for (r, a) in &self.local {
            if n.adj_out.get(r) == Some(a) {
                continue;
            }
            let mut a = a.clone();
            if ebgp {
                a.local_pref = None;
                a.as_path = vec![asn];
            }
            let key = wire::update_reach(&a, &[]);
            groups.entry(key).or_insert_with(|| (a, Vec::new())).1.push(*r);
            n.adj_out.insert(*r, self.local[r].clone());
        }
        for (_, (a, routes)) in groups {
            let over = wire::update_overhead(&a);
            let mut batch: Vec<Route> = Vec::new();
            let mut size = over;
            for r in routes {
                if size + r.encoded_len() > wire::MAX_LEN {
                    msgs.push(wire::update_reach(&a, &batch));
                    batch.clear();
                    size = over;
                }
                size += r.encoded_len();
                batch.push(r);
            }
            if !batch.is_empty() {
                msgs.push(wire::update_reach(&a, &batch));
            }
        }
        if end_of_rib {
            msgs.push(wire::end_of_rib());
        }
        n.c.updates_out += msgs.len() as u64;
        n.c.messages_out += msgs.len() as u64;
        self.out.extend(msgs.into_iter().map(|m| Io::Send(addr, m)));
    }

    pub fn snapshot(&self, now: Instant) -> BgpSnapshot {
        let neighbors = self
            .nbrs
            .iter()
            .map(|n| NeighborRow {
                address: n.spec.addr,
                remote_as: n.spec.remote_as,
                state: n.state,
                peer_id: n.peer_id.filter(|_| n.state != State::Idle),
                uptime_secs: n.up_since.map(|t| now.since(t).as_secs()),
                hold_secs: n.hold.as_secs(),
                keepalive_secs: n.keepalive.as_secs(),
                routes_in: n.adj_in.len(),
                routes_out: n.adj_out.len(),
                max_routes: n.spec.max_routes,
                retry_in_secs: (n.state == State::Idle).then(|| (if n.suppressed { n.next_connect.max(n.reuse_at(now)) } else { n.next_connect }).millis().saturating_sub(now.millis()).div_ceil(1000)),
                dampened: n.suppressed,
                last_error: n.last_error.clone(),
                counters: n.c.clone(),
            })
            .collect();
        let mut local: BTreeMap<u32, Vec<(MacKey, u32)>> = BTreeMap::new();
        for (r, a) in &self.local {
            if let Route::Mac { vni, mac, ip: None, .. } = r {
                local.entry(*vni).or_default().push((MacKey(*mac), a.mac_seq.unwrap_or(0)));
            }
        }
        BgpSnapshot {
            asn: self.cfg.asn,
            router_id: self.cfg.router_id,
            local: self.cfg.local,
            local_macs: local,
            neighbors,
            advertised: self.local.len(),
            duplicate_macs: self.duplicates,
            evpn: self.view.clone(),
            networks: self
                .cfg
                .nets
                .iter()
                .map(|n| NetRow { name: n.name.clone(), vni: n.vni, rd: n.rd.to_string(), route_targets: n.route_targets.iter().map(|r| r.to_string()).collect() })
                .collect(),
        }
    }
}

