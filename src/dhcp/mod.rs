//! The DHCPv4 server (RFC 2131), one per account, serving each guest network that has DHCP.
//!
//! Sans-IO: [`DhcpServer::handle`] takes a request's UDP payload with the network, the ingress
//! port, the Ethernet source and the time, and pushes [`Action`]s: replies to send and lease
//! records to make durable. The I/O edge owns the sockets and the lease log; it writes each
//! [`Action::Persist`] record (with fsync) and then calls [`DhcpServer::committed`], which
//! releases the ACKs that were waiting for it. Nothing here reads a clock or touches an fd.
//!
//! Two clocks come in: `now`, wall-clock unix seconds, for leases (they are persisted and must
//! mean the same after a restart), and `now_ms`, monotonic milliseconds, for rate limiting.
//!
//! Invariants:
//! - An ACK that creates or extends a lease goes out only after its Bind record is durable
//!   (`committed(first, last)` names exactly the records that reached the disk); so after a
//!   crash the log knows every address a guest was told it has, and replaying the log
//!   (`restore`) never hands an acknowledged address to someone else.
//! - While the I/O edge reports that the log cannot be written (`set_store_ok(false)`), no new
//!   or extended lease is acknowledged (`store_failing`; clients retry). A client renewing a
//!   lease that is already on disk is answered, with the lease time the disk knows and no
//!   more. The held ACKs stay bounded (`MAX_HELD`).
//! - An address is held by at most one client at a time: a client is offered or acknowledged
//!   an address only if it is free, expired, or already that client's (`usable`).
//! - A reservation binds a MAC to its address: the reserved client gets only that address, and
//!   the pool never gives it to anyone else. The gateway, the network and the broadcast
//!   addresses are never handed out.
//! - A client (client identifier, else MAC) holds at most one Bound lease per network: binding
//!   it elsewhere frees (and logs the freeing of) its other lease.
//! - Guest input cannot panic the server or grow it without bound: every table is keyed by an
//!   address of a configured pool or reservation, or by a port (u16); requests are rate
//!   limited per port, and a port holds at most four unanswered offers.
//!
//! Not supported: relay agents (giaddr set) and option overload; a request whose chaddr is not
//! the Ethernet source is not served either (the MAC that port security vouches for is the one
//! that gets a lease), and plain BOOTP clients (no message type) are not served.

mod msg;
mod record;

use crate::config::types::Ipv4Net;
use crate::wire::ethernet::MacAddr;
use dhcproto::v4::MessageType;
use msg::{Kind, Reject, Request};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::Ipv4Addr;

/// An OFFER holds its address for this long without a REQUEST.
const OFFER_SECS: u64 = 60;
/// A declined address is quarantined for this long (someone else answers on it).
const DECLINE_SECS: u64 = 600;
/// Per-port token bucket: sustained messages per second, and burst.
const RATE_PER_SEC: u64 = 20;
const RATE_BURST: u64 = 40;
/// Unanswered OFFERs one port may hold at once (a guest making up MACs cannot drain the pool
/// faster than it completes exchanges).
const MAX_OFFERS_PER_PORT: u32 = 4;
/// ACKs waiting for their lease to be durable, at most: if the disk stops answering, further
/// REQUESTs are ignored (clients retry) instead of piling up.
const MAX_HELD: usize = 4096;

/// Per-network DHCP settings (the lead builds them from config).
#[derive(Debug, Clone)]
pub struct DhcpNet {
    pub name: String,
    pub cidr: Ipv4Net,
    /// Option 3 router, option 54 server identifier, option 6 DNS server.
    pub gateway: Ipv4Addr,
    /// Dynamic pool, inclusive; `None` serves reservations only.
    pub range: Option<(Ipv4Addr, Ipv4Addr)>,
    /// Option 51 (renewal T1 = 1/2, rebinding T2 = 7/8: options 58, 59).
    pub lease_secs: u32,
    /// Option 26.
    pub mtu: u16,
    /// Options 15 and 119 (search list).
    pub domain: Option<String>,
    /// Option 121 classless static routes (RFC 3442) incl. the default route 0.0.0.0/0 via
    /// gateway, sent when non-empty (the lead fills it when the account has more than one network).
    pub routes: Vec<(Ipv4Net, Ipv4Addr)>,
}

/// A fixed address for a MAC on a network (a port's `ip`), with its hostname.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub net: usize,
    pub mac: MacAddr,
    pub ip: Ipv4Addr,
    pub hostname: Option<String>,
}

/// A lease as persisted and shown (`ctl show leases`). Times are wall-clock unix seconds
/// (leases survive restarts, so monotonic time is useless for them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Lease {
    pub net: usize,
    pub ip: Ipv4Addr,
    pub mac: MacAddr,
    pub client_id: Option<Vec<u8>>,
    pub hostname: Option<String>,
    pub expires: u64,
    pub state: LeaseState,
}

/// `Offered` is never persisted; `Released` is kept in memory only, to give a returning client
/// its previous address, and is not shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LeaseState {
    Offered,
    Bound,
    Released,
    Declined,
}

/// One line of the lease log (append-only; the lead writes them with fsync). `encode` gives one
/// line of text without '\n'; `decode` parses one line (None for a corrupt/partial line, which
/// recovery skips). Replaying all records in order rebuilds the lease table.
///
/// To compact the log, write a Bind for each Bound lease and a Decline (until = `expires`) for
/// each Declined one from [`DhcpServer::leases`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseRecord {
    Bind(Lease),
    Free { net: usize, ip: Ipv4Addr },
    Decline { net: usize, ip: Ipv4Addr, until: u64 },
}

/// A lease log line ready for the disk, with what the log's compaction needs: the address it
/// is about (`key`: network name and address) and whether it keeps that address taken
/// (`live`: a lease or a quarantine) or gives it back (a release).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub seq: u64,
    pub key: String,
    pub line: String,
    pub live: bool,
}

/// A served network's lease use (`pool_usage`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PoolUsage {
    pub network: String,
    pub bound: u64,
    pub size: u64,
    /// The dynamic part: `dhcp_range` less the reserved addresses in it, and its leases bound
    /// (what can run out: a reservation always has its address).
    pub dynamic_bound: u64,
    pub dynamic_size: u64,
}

/// What the server wants done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send this DHCP message (UDP payload, already padded to >= 300 bytes) from gateway:67 to
    /// `dst_ip`:68 at Ethernet `dst_mac`, on network `net`. Broadcast when the client asked for
    /// it (flag) or has no address yet: dst_ip 255.255.255.255 and dst_mac ff:ff:ff:ff:ff:ff.
    Send { net: usize, dst_ip: Ipv4Addr, dst_mac: MacAddr, payload: Vec<u8> },
    /// Make this record durable, then call `committed(seq)`; only then may the ACK go out.
    Persist { seq: u64, record: LeaseRecord },
}

/// Why a message was ignored (each is a counter the lead shows in stats).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Ignored {
    /// Not a DHCP message: too short, no magic cookie, no message type (BOOTP), a chaddr that
    /// is not an Ethernet address, an unusable source MAC, a request without an address.
    Malformed,
    /// A message type the server does not serve (lease query, FORCERENEW, unknown) or an op
    /// code that is neither request nor reply.
    NotRequest,
    /// A server message (BOOTREPLY, OFFER, ACK, NAK) from a guest: a rogue DHCP server.
    ServerMessage,
    /// No address to offer (pool full, or a reservations-only network and no reservation).
    PoolExhausted,
    /// Over the port's message rate, or the port holds too many unanswered offers.
    RateLimited,
    /// For another server (server identifier), relayed (giaddr), chaddr not the Ethernet
    /// source, or an INFORM from outside the network.
    NotForUs,
    /// The network has no DHCP service.
    NoNetwork,
    /// A RELEASE or DECLINE for an address the client does not hold.
    UnknownLease,
    /// The lease log cannot be written (disk full, I/O error): a new or extended lease could
    /// not be made durable, so it is not acknowledged (the client retries).
    StoreFailing,
}

/// Counters for `show stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DhcpCounters {
    pub discovers: u64,
    pub offers: u64,
    pub requests: u64,
    pub acks: u64,
    pub naks: u64,
    pub releases: u64,
    pub declines: u64,
    pub informs: u64,
    pub ignored_malformed: u64,
    pub ignored_not_request: u64,
    pub ignored_server_message: u64,
    pub ignored_pool_exhausted: u64,
    pub ignored_rate_limited: u64,
    pub ignored_not_for_us: u64,
    pub ignored_no_network: u64,
    pub ignored_unknown_lease: u64,
    pub ignored_store_failing: u64,
    /// Renewals answered from the lease on disk while the log could not be written.
    pub renewals_from_disk: u64,
    /// ACKs not sent because their record reached the disk too late or was superseded.
    pub acks_stale: u64,
}

impl DhcpCounters {
    fn ignored(&mut self, why: Ignored) {
        let c = match why {
            Ignored::Malformed => &mut self.ignored_malformed,
            Ignored::NotRequest => &mut self.ignored_not_request,
            Ignored::ServerMessage => &mut self.ignored_server_message,
            Ignored::PoolExhausted => &mut self.ignored_pool_exhausted,
            Ignored::RateLimited => &mut self.ignored_rate_limited,
            Ignored::NotForUs => &mut self.ignored_not_for_us,
            Ignored::NoNetwork => &mut self.ignored_no_network,
            Ignored::UnknownLease => &mut self.ignored_unknown_lease,
            Ignored::StoreFailing => &mut self.ignored_store_failing,
        };
        *c += 1;
    }
}

/// A lease table entry: the lease, and for an OFFER the port it was made through.
#[derive(Debug, Clone)]
struct Rec {
    lease: Lease,
    port: u16,
    /// Until when the log on disk says this client holds this address (0: it does not): the
    /// most a renewal may be told while the log cannot be written.
    durable: u64,
}

impl Rec {
    /// Free for anyone: released, or its time is up.
    fn free(&self, now: u64) -> bool {
        self.lease.state == LeaseState::Released || self.lease.expires <= now
    }
}

/// Whether a lease belongs to the client: by client identifier when both have one (RFC 2131
/// 4.2), else by MAC.
fn owns(l: &Lease, mac: MacAddr, cid: Option<&[u8]>) -> bool {
    match (l.client_id.as_deref(), cid) {
        (Some(a), Some(b)) => a == b,
        _ => l.mac == mac,
    }
}

/// One network's configuration and lease table.
struct NetState {
    cfg: DhcpNet,
    /// The pool clamped to the network, as u32 bounds.
    pool: Option<(u32, u32)>,
    /// Addresses of the pool that may be handed out (no gateway, network or broadcast), counted
    /// once; reserved addresses inside it are subtracted when asked.
    pool_hosts: u64,
    /// MAC -> (reserved address, hostname).
    res_by_mac: HashMap<MacAddr, (Ipv4Addr, Option<String>)>,
    /// Reserved address -> MAC.
    res_by_ip: HashMap<u32, MacAddr>,
    /// Every address the server has a record of, in address order.
    recs: BTreeMap<u32, Rec>,
    /// A client's most recent record, by MAC and by client identifier (hints: always checked
    /// against the record with `owns`). Declined records are not indexed.
    by_mac: HashMap<MacAddr, u32>,
    by_cid: HashMap<Vec<u8>, u32>,
}

impl NetState {
    fn new(cfg: DhcpNet) -> Self {
        let net = u32::from(cfg.cidr.addr) & cfg.cidr.mask();
        let bcast = u32::from(cfg.cidr.broadcast());
        let pool = cfg.range.and_then(|(a, b)| {
            let (lo, hi) = (u32::from(a).max(net), u32::from(b).min(bcast));
            (lo <= hi).then_some((lo, hi))
        });
        let gw = u32::from(cfg.gateway);
        let pool_hosts = pool.map_or(0, |(lo, hi)| {
            let (lo, hi) = if cfg.cidr.prefix <= 30 { (lo.max(net + 1), hi.min(bcast.saturating_sub(1))) } else { (lo, hi) };
            if lo > hi {
                0
            } else {
                (hi - lo) as u64 + 1 - u64::from((lo..=hi).contains(&gw))
            }
        });
        NetState {
            cfg,
            pool,
            pool_hosts,
            res_by_mac: HashMap::new(),
            res_by_ip: HashMap::new(),
            recs: BTreeMap::new(),
            by_mac: HashMap::new(),
            by_cid: HashMap::new(),
        }
    }

    /// A host address of the network other than the gateway.
    fn host_ok(&self, ip: Ipv4Addr) -> bool {
        let c = &self.cfg.cidr;
        let a = u32::from(ip);
        let edge = c.prefix <= 30 && (a == u32::from(c.addr) & c.mask() || ip == c.broadcast());
        c.contains(ip) && ip != self.cfg.gateway && !edge
    }

    fn in_pool(&self, a: u32) -> bool {
        self.pool.is_some_and(|(lo, hi)| lo <= a && a <= hi)
    }

    /// The configuration allows this address for this MAC (records aside): its reservation,
    /// or, without one, a pool address nobody has reserved.
    fn allowed(&self, mac: MacAddr, ip: Ipv4Addr) -> bool {
        if let Some((rip, _)) = self.res_by_mac.get(&mac) {
            return *rip == ip;
        }
        let a = u32::from(ip);
        self.host_ok(ip) && self.in_pool(a) && !self.res_by_ip.contains_key(&a)
    }

    /// The client may have this address now: allowed, and not held or quarantined by anyone
    /// else. A reservation wins over any record.
    fn usable(&self, mac: MacAddr, cid: Option<&[u8]>, ip: Ipv4Addr, now: u64) -> bool {
        if !self.allowed(mac, ip) {
            return false;
        }
        if self.res_by_mac.contains_key(&mac) {
            return true;
        }
        match self.recs.get(&u32::from(ip)) {
            None => true,
            Some(r) if r.lease.state == LeaseState::Declined => r.lease.expires <= now,
            Some(r) => r.free(now) || owns(&r.lease, mac, cid),
        }
    }

    /// The addresses of records the client owns (its current or previous one).
    fn client_addrs(&self, mac: MacAddr, cid: Option<&[u8]>) -> Vec<u32> {
        let mut v = Vec::with_capacity(2);
        let hints = cid.and_then(|c| self.by_cid.get(c)).into_iter().chain(self.by_mac.get(&mac));
        for &a in hints {
            let mine = self.recs.get(&a).is_some_and(|r| r.lease.state != LeaseState::Declined && owns(&r.lease, mac, cid));
            if mine && !v.contains(&a) {
                v.push(a);
            }
        }
        v
    }

    /// The lowest pool address nobody has a record of; failing that, the lowest whose record
    /// is free (released or expired), so a returning client is likelier to find its address.
    /// Walks the gaps between records: O(records + reservations), not O(pool).
    fn lowest_free(&self, now: u64) -> Option<u32> {
        let (lo, hi) = self.pool?;
        let ok = |a: u32| self.host_ok(Ipv4Addr::from(a)) && !self.res_by_ip.contains_key(&a);
        // The next address without a record to try; None once past the pool.
        let mut cand = Some(lo);
        for &a in self.recs.range(lo..=hi).map(|(a, _)| a) {
            while let Some(c) = cand.filter(|&c| c < a) {
                if ok(c) {
                    return Some(c);
                }
                cand = c.checked_add(1);
            }
            cand = a.checked_add(1);
        }
        while let Some(c) = cand.filter(|&c| c <= hi) {
            if ok(c) {
                return Some(c);
            }
            cand = c.checked_add(1);
        }
        self.recs.range(lo..=hi).find(|(&a, r)| ok(a) && r.free(now)).map(|(&a, _)| a)
    }

    /// Stores a record, replacing the one at its address; keeps the client indexes.
    /// What the disk knows of the same client's lease at that address stays known.
    fn put(&mut self, mut rec: Rec) -> Option<Rec> {
        let a = u32::from(rec.lease.ip);
        let old = self.remove(a);
        if let Some(o) = old.as_ref().filter(|o| o.lease.state == LeaseState::Bound && o.lease.mac == rec.lease.mac && rec.lease.state != LeaseState::Declined) {
            rec.durable = rec.durable.max(o.durable);
        }
        if rec.lease.state != LeaseState::Declined {
            self.by_mac.insert(rec.lease.mac, a);
            if let Some(c) = &rec.lease.client_id {
                self.by_cid.insert(c.clone(), a);
            }
        }
        self.recs.insert(a, rec);
        old
    }

    fn remove(&mut self, a: u32) -> Option<Rec> {
        let old = self.recs.remove(&a)?;
        if self.by_mac.get(&old.lease.mac) == Some(&a) {
            self.by_mac.remove(&old.lease.mac);
        }
        if let Some(c) = &old.lease.client_id {
            if self.by_cid.get(c) == Some(&a) {
                self.by_cid.remove(c);
            }
        }
        Some(old)
    }

    /// A hostname is taken if a reservation or another client's live lease carries it.
    fn name_taken(&self, name: &str, mac: MacAddr, cid: Option<&[u8]>, now: u64) -> bool {
        self.res_by_mac.iter().any(|(m, (_, h))| *m != mac && h.as_deref() == Some(name))
            || self.recs.values().any(|r| {
                r.lease.state == LeaseState::Bound
                    && r.lease.expires > now
                    && r.lease.hostname.as_deref() == Some(name)
                    && !owns(&r.lease, mac, cid)
            })
    }
}

/// Per-port token bucket, in thousandths of a message.
struct Bucket {
    milli: u64,
    last_ms: u64,
}

impl Bucket {
    fn take(&mut self, now_ms: u64) -> bool {
        let elapsed = now_ms.saturating_sub(self.last_ms);
        self.last_ms = self.last_ms.max(now_ms);
        // RATE_PER_SEC messages per 1000 ms = RATE_PER_SEC thousandths per ms.
        self.milli = self.milli.saturating_add(elapsed.saturating_mul(RATE_PER_SEC)).min(RATE_BURST * 1000);
        if self.milli >= 1000 {
            self.milli -= 1000;
            true
        } else {
            false
        }
    }
}

/// The DHCP server for all of an account's networks.
pub struct DhcpServer {
    nets: Vec<Option<NetState>>,
    buckets: HashMap<u16, Bucket>,
    /// Unanswered OFFERs per port.
    offers: HashMap<u16, u32>,
    /// ACKs waiting for their record to be durable, in seq order.
    held: VecDeque<Held>,
    seq: u64,
    /// Whether the lease log is being written (the I/O edge says).
    store_ok: bool,
    /// The latest wall-clock time seen (for the queries that take no time).
    now: u64,
    counters: DhcpCounters,
    /// Network names of the Free records the last reload pushed (by seq), for their log lines.
    freed_names: Vec<(u64, String)>,
}

/// An ACK waiting for its Bind record (`seq`) to reach the disk.
#[derive(Debug)]
struct Held {
    seq: u64,
    ack: Action,
    net: usize,
    ip: Ipv4Addr,
    mac: MacAddr,
    expires: u64,
    /// When the REQUEST came (unix seconds).
    at: u64,
}

/// A held ACK whose record reached the disk later than this after its REQUEST is not sent:
/// it would tell the client a lease longer than the disk's (the client has retried anyway).
const ACK_STALE_SECS: u64 = 5;

/// Forgets an OFFER's claim on its port's quota.
fn drop_offer(offers: &mut HashMap<u16, u32>, rec: &Rec) {
    if rec.lease.state == LeaseState::Offered {
        if let Some(n) = offers.get_mut(&rec.port) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                offers.remove(&rec.port);
            }
        }
    }
}

impl DhcpServer {
    /// `nets[i]` is network i's DHCP settings (`None`: no DHCP there). Reservations for a
    /// network without DHCP, for an address that is not a host of the network (or is the
    /// gateway), or repeating a MAC or address already reserved there, are ignored.
    pub fn new(nets: Vec<Option<DhcpNet>>, reservations: Vec<Reservation>) -> Self {
        let mut nets: Vec<Option<NetState>> = nets.into_iter().map(|n| n.map(NetState::new)).collect();
        for r in reservations {
            let Some(Some(ns)) = nets.get_mut(r.net) else { continue };
            let a = u32::from(r.ip);
            if !ns.host_ok(r.ip) || ns.res_by_mac.contains_key(&r.mac) || ns.res_by_ip.contains_key(&a) {
                continue;
            }
            ns.res_by_ip.insert(a, r.mac);
            ns.res_by_mac.insert(r.mac, (r.ip, r.hostname));
        }
        DhcpServer {
            nets,
            buckets: HashMap::new(),
            offers: HashMap::new(),
            held: VecDeque::new(),
            seq: 0,
            store_ok: true,
            now: 0,
            counters: DhcpCounters::default(),
            freed_names: Vec::new(),
        }
    }

    /// Replays the lease log at start (records in file order); `now` in unix seconds. Records
    /// the current configuration no longer allows (network gone, address outside the pool or
    /// reserved for another MAC) are dropped; expired leases are remembered as released, so
    /// their clients still get their address back if it is free. Runs before any traffic, so
    /// there are no offers to withdraw.
    pub fn restore(&mut self, records: impl IntoIterator<Item = LeaseRecord>, now: u64) {
        self.now = self.now.max(now);
        for r in records {
            match r {
                LeaseRecord::Bind(mut l) => {
                    let Some(Some(ns)) = self.nets.get_mut(l.net) else { continue };
                    if !ns.allowed(l.mac, l.ip) {
                        continue;
                    }
                    if l.state != LeaseState::Bound || l.expires <= now {
                        l.state = LeaseState::Released;
                    }
                    if l.state == LeaseState::Bound {
                        // One Bound lease per client (the live server logged a Free anyway).
                        for a in ns.client_addrs(l.mac, l.client_id.as_deref()) {
                            if let Some(r) = ns.recs.get_mut(&a) {
                                r.lease.state = LeaseState::Released;
                                r.durable = 0;
                            }
                        }
                    }
                    let durable = if l.state == LeaseState::Bound { l.expires } else { 0 };
                    ns.put(Rec { lease: l, port: 0, durable });
                }
                LeaseRecord::Free { net, ip } => {
                    let Some(Some(ns)) = self.nets.get_mut(net) else { continue };
                    if let Some(r) = ns.recs.get_mut(&u32::from(ip)) {
                        if r.lease.state != LeaseState::Declined {
                            r.lease.state = LeaseState::Released;
                            r.durable = 0;
                        }
                    }
                }
                LeaseRecord::Decline { net, ip, until } => {
                    let Some(Some(ns)) = self.nets.get_mut(net) else { continue };
                    if until > now && ns.cfg.cidr.contains(ip) {
                        ns.put(Rec { lease: declined(net, ip, until), port: 0, durable: 0 });
                    } else {
                        ns.remove(u32::from(ip));
                    }
                }
            }
        }
    }

    /// A DHCP packet (UDP payload) from a guest on network `net`, sent from Ethernet source
    /// `src_mac` through port `port` (an opaque u16 used for per-port rate limiting).
    /// `now` is unix seconds; `now_ms` monotonic milliseconds (rate limiting). Pushes actions.
    #[allow(clippy::too_many_arguments)]
    pub fn handle(
        &mut self,
        now: u64,
        now_ms: u64,
        net: usize,
        port: u16,
        src_mac: MacAddr,
        payload: &[u8],
        out: &mut Vec<Action>,
    ) -> Result<(), Ignored> {
        self.now = self.now.max(now);
        let r = self.handle_inner(now, now_ms, net, port, src_mac, payload, out);
        if let Err(why) = r {
            self.counters.ignored(why);
        }
        r
    }

    #[allow(clippy::too_many_arguments)]
    fn handle_inner(
        &mut self,
        now: u64,
        now_ms: u64,
        net: usize,
        port: u16,
        src_mac: MacAddr,
        payload: &[u8],
        out: &mut Vec<Action>,
    ) -> Result<(), Ignored> {
        let bucket = self.buckets.entry(port).or_insert(Bucket { milli: RATE_BURST * 1000, last_ms: now_ms });
        if !bucket.take(now_ms) {
            return Err(Ignored::RateLimited);
        }
        if !matches!(self.nets.get(net), Some(Some(_))) {
            return Err(Ignored::NoNetwork);
        }
        let req = msg::parse(payload).map_err(|r| match r {
            Reject::Malformed => Ignored::Malformed,
            Reject::ServerMessage => Ignored::ServerMessage,
            Reject::NotRequest => Ignored::NotRequest,
        })?;
        let mac = msg::chaddr_mac(&req.msg).ok_or(Ignored::Malformed)?;
        if !src_mac.is_unicast() {
            return Err(Ignored::Malformed);
        }
        if mac != src_mac || !req.msg.giaddr().is_unspecified() {
            return Err(Ignored::NotForUs);
        }
        match req.mtype {
            MessageType::Discover => self.discover(now, net, port, mac, &req, out),
            MessageType::Request => self.request(now, net, port, mac, &req, out),
            MessageType::Release => self.release(net, mac, &req, out),
            MessageType::Decline => self.decline(now, net, mac, &req, out),
            MessageType::Inform => self.inform(net, mac, &req, out),
            _ => Err(Ignored::NotRequest),
        }
    }

    fn ns(&self, net: usize) -> Result<&NetState, Ignored> {
        self.nets.get(net).and_then(|n| n.as_ref()).ok_or(Ignored::NoNetwork)
    }

    fn ns_mut(&mut self, net: usize) -> Result<&mut NetState, Ignored> {
        self.nets.get_mut(net).and_then(|n| n.as_mut()).ok_or(Ignored::NoNetwork)
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// The hostname a lease gets: the reservation's, else the client's option 12 if it is a
    /// valid label nobody else uses, else what the client's record already had.
    fn lease_hostname(ns: &NetState, mac: MacAddr, req: &Request, now: u64, prev: Option<&Rec>) -> Option<String> {
        let cid = req.client_id.as_deref();
        if let Some((_, h)) = ns.res_by_mac.get(&mac) {
            return h.clone();
        }
        if let Some(h) = req.hostname.as_deref().and_then(msg::sanitize_hostname) {
            if !ns.name_taken(&h, mac, cid, now) {
                return Some(h);
            }
        }
        prev.filter(|r| owns(&r.lease, mac, cid)).and_then(|r| r.lease.hostname.clone())
    }

    /// A reply as a Send: NAKs broadcast; a client with an address (ciaddr) gets unicast there;
    /// the broadcast flag, or no address to send to, means broadcast; else unicast to the
    /// offered address at the client's MAC (RFC 2131 4.1, no relays).
    fn send(net: usize, req: &Request, mac: MacAddr, kind: Kind, yiaddr: Ipv4Addr, payload: Vec<u8>) -> Action {
        let ciaddr = req.msg.ciaddr();
        let (dst_ip, dst_mac) = if kind == Kind::Nak {
            (Ipv4Addr::BROADCAST, MacAddr::BROADCAST)
        } else if !ciaddr.is_unspecified() {
            (ciaddr, mac)
        } else if req.msg.flags().broadcast() || yiaddr.is_unspecified() {
            (Ipv4Addr::BROADCAST, MacAddr::BROADCAST)
        } else {
            (yiaddr, mac)
        };
        Action::Send { net, dst_ip, dst_mac, payload }
    }

    fn discover(&mut self, now: u64, net: usize, port: u16, mac: MacAddr, req: &Request, out: &mut Vec<Action>) -> Result<(), Ignored> {
        self.counters.discovers += 1;
        let ns = self.ns(net)?;
        let cid = req.client_id.as_deref();
        // Reservation, else the client's previous address, else the one it asks for, else the
        // lowest free one (RFC 2131 4.3.1).
        let ip = if let Some((rip, _)) = ns.res_by_mac.get(&mac) {
            *rip
        } else if let Some(a) = ns.client_addrs(mac, cid).into_iter().find(|&a| ns.usable(mac, cid, Ipv4Addr::from(a), now)) {
            Ipv4Addr::from(a)
        } else if let Some(r) = req.requested.filter(|&r| ns.usable(mac, cid, r, now)) {
            r
        } else {
            Ipv4Addr::from(ns.lowest_free(now).ok_or(Ignored::PoolExhausted)?)
        };
        let a = u32::from(ip);
        let prev = ns.recs.get(&a);
        let hostname = Self::lease_hostname(ns, mac, req, now, prev);
        let mine_live = prev.filter(|r| owns(&r.lease, mac, cid) && r.lease.expires > now).map(|r| r.lease.state);
        match mine_live {
            // Already the client's: offer it again without touching the lease.
            Some(LeaseState::Bound) => {}
            Some(LeaseState::Offered) => {
                let ns = self.ns_mut(net)?;
                if let Some(r) = ns.recs.get_mut(&a) {
                    r.lease.expires = now.saturating_add(OFFER_SECS);
                    r.lease.hostname = hostname;
                }
            }
            _ => {
                if self.offers.get(&port).copied().unwrap_or(0) >= MAX_OFFERS_PER_PORT {
                    return Err(Ignored::RateLimited);
                }
                let lease = Lease {
                    net,
                    ip,
                    mac,
                    client_id: req.client_id.clone(),
                    hostname,
                    expires: now.saturating_add(OFFER_SECS),
                    state: LeaseState::Offered,
                };
                let ns = self.nets.get_mut(net).and_then(|n| n.as_mut()).ok_or(Ignored::NoNetwork)?;
                if let Some(old) = ns.put(Rec { lease, port, durable: 0 }) {
                    drop_offer(&mut self.offers, &old);
                }
                *self.offers.entry(port).or_insert(0) += 1;
            }
        }
        let ns = self.ns(net)?;
        let echo = ns.res_by_mac.get(&mac).and_then(|(_, h)| h.as_deref());
        let payload = msg::reply(ns, req, Kind::Offer, ip, echo, None).ok_or(Ignored::Malformed)?;
        out.push(Self::send(net, req, mac, Kind::Offer, ip, payload));
        self.counters.offers += 1;
        Ok(())
    }

    fn nak(&mut self, net: usize, mac: MacAddr, req: &Request, out: &mut Vec<Action>) -> Result<(), Ignored> {
        let ns = self.ns(net)?;
        let payload = msg::reply(ns, req, Kind::Nak, Ipv4Addr::UNSPECIFIED, None, None).ok_or(Ignored::Malformed)?;
        out.push(Self::send(net, req, mac, Kind::Nak, Ipv4Addr::UNSPECIFIED, payload));
        self.counters.naks += 1;
        Ok(())
    }

    /// REQUEST in any state: SELECTING (server id, option 50), INIT-REBOOT (option 50 only),
    /// RENEWING/REBINDING (ciaddr). The server is authoritative for its networks, so a client
    /// asking for an address it may not have gets a NAK, and one asking for a free address it
    /// may have gets it even without a record (state lost in a crash before the log had it).
    fn request(&mut self, now: u64, net: usize, port: u16, mac: MacAddr, req: &Request, out: &mut Vec<Action>) -> Result<(), Ignored> {
        if self.held.len() >= MAX_HELD {
            return Err(Ignored::RateLimited);
        }
        self.counters.requests += 1;
        let cid = req.client_id.as_deref();
        let gw = self.ns(net)?.cfg.gateway;
        if req.server_id.is_some_and(|s| s != gw) {
            // The client took another server's offer: withdraw ours.
            let ns = self.nets.get_mut(net).and_then(|n| n.as_mut()).ok_or(Ignored::NoNetwork)?;
            for a in ns.client_addrs(mac, cid) {
                if let Some(r) = ns.recs.get_mut(&a) {
                    if r.lease.state == LeaseState::Offered {
                        drop_offer(&mut self.offers, r);
                        r.lease.state = LeaseState::Released;
                        r.durable = 0;
                    }
                }
            }
            return Err(Ignored::NotForUs);
        }
        let ciaddr = Some(req.msg.ciaddr()).filter(|c| !c.is_unspecified());
        let ip = if req.server_id.is_some() { req.requested.or(ciaddr) } else { ciaddr.or(req.requested) };
        let ip = ip.ok_or(Ignored::Malformed)?;
        let ns = self.ns(net)?;
        if !ns.usable(mac, cid, ip, now) {
            return self.nak(net, mac, req, out);
        }
        let a = u32::from(ip);
        let echo = ns.res_by_mac.get(&mac).and_then(|(_, h)| h.clone());
        if !self.store_ok {
            // Only what is already on disk may be confirmed, and for no longer than the disk
            // knows: a crash now must not let someone else have this address while the client
            // still believes it holds it.
            let durable = ns.recs.get(&a).filter(|r| r.lease.state == LeaseState::Bound && owns(&r.lease, mac, cid)).map_or(0, |r| r.durable);
            if durable <= now {
                return Err(Ignored::StoreFailing);
            }
            let left = u32::try_from(durable - now).unwrap_or(u32::MAX);
            let payload = msg::reply(ns, req, Kind::Ack, ip, echo.as_deref(), Some(left)).ok_or(Ignored::Malformed)?;
            out.push(Self::send(net, req, mac, Kind::Ack, ip, payload));
            self.counters.acks += 1;
            self.counters.renewals_from_disk += 1;
            return Ok(());
        }
        let hostname = Self::lease_hostname(ns, mac, req, now, ns.recs.get(&a));
        let lease_secs = ns.cfg.lease_secs;
        let payload = msg::reply(ns, req, Kind::Ack, ip, echo.as_deref(), None).ok_or(Ignored::Malformed)?;
        let ack = Self::send(net, req, mac, Kind::Ack, ip, payload);

        // The client's other leases on this network go (logged before the new one).
        let ns = self.nets.get_mut(net).and_then(|n| n.as_mut()).ok_or(Ignored::NoNetwork)?;
        let mut freed = Vec::new();
        for other in ns.client_addrs(mac, cid) {
            if other == a {
                continue;
            }
            if let Some(r) = ns.recs.get_mut(&other) {
                drop_offer(&mut self.offers, r);
                if r.lease.state == LeaseState::Bound {
                    freed.push(r.lease.ip);
                }
                r.lease.state = LeaseState::Released;
                r.durable = 0;
            }
        }
        let lease = Lease {
            net,
            ip,
            mac,
            client_id: req.client_id.clone(),
            hostname,
            expires: now.saturating_add(lease_secs as u64),
            state: LeaseState::Bound,
        };
        if let Some(old) = ns.put(Rec { lease: lease.clone(), port, durable: 0 }) {
            drop_offer(&mut self.offers, &old);
        }
        for ip in freed {
            let seq = self.next_seq();
            out.push(Action::Persist { seq, record: LeaseRecord::Free { net, ip } });
        }
        let seq = self.next_seq();
        let held = Held { seq, ack, net, ip, mac, expires: lease.expires, at: now };
        out.push(Action::Persist { seq, record: LeaseRecord::Bind(lease) });
        self.held.push_back(held);
        Ok(())
    }

    fn release(&mut self, net: usize, mac: MacAddr, req: &Request, out: &mut Vec<Action>) -> Result<(), Ignored> {
        let ns = self.nets.get_mut(net).and_then(|n| n.as_mut()).ok_or(Ignored::NoNetwork)?;
        if req.server_id.is_some_and(|s| s != ns.cfg.gateway) {
            return Err(Ignored::NotForUs);
        }
        let ip = req.msg.ciaddr();
        let cid = req.client_id.as_deref();
        match ns.recs.get_mut(&u32::from(ip)) {
            Some(r) if r.lease.state == LeaseState::Bound && owns(&r.lease, mac, cid) => {
                r.lease.state = LeaseState::Released;
                r.durable = 0;
            }
            _ => return Err(Ignored::UnknownLease),
        }
        let seq = self.next_seq();
        out.push(Action::Persist { seq, record: LeaseRecord::Free { net, ip } });
        self.counters.releases += 1;
        Ok(())
    }

    fn decline(&mut self, now: u64, net: usize, mac: MacAddr, req: &Request, out: &mut Vec<Action>) -> Result<(), Ignored> {
        let ns = self.nets.get_mut(net).and_then(|n| n.as_mut()).ok_or(Ignored::NoNetwork)?;
        if req.server_id.is_some_and(|s| s != ns.cfg.gateway) {
            return Err(Ignored::NotForUs);
        }
        let ip = req.requested.ok_or(Ignored::Malformed)?;
        let cid = req.client_id.as_deref();
        let a = u32::from(ip);
        let held = ns.recs.get(&a).is_some_and(|r| {
            matches!(r.lease.state, LeaseState::Bound | LeaseState::Offered) && owns(&r.lease, mac, cid)
        });
        if !held {
            return Err(Ignored::UnknownLease);
        }
        if !self.store_ok {
            // A quarantine that cannot be written is not started (the client declines again).
            return Err(Ignored::StoreFailing);
        }
        let until = now.saturating_add(DECLINE_SECS);
        if let Some(old) = ns.put(Rec { lease: declined(net, ip, until), port: 0, durable: 0 }) {
            drop_offer(&mut self.offers, &old);
        }
        let seq = self.next_seq();
        out.push(Action::Persist { seq, record: LeaseRecord::Decline { net, ip, until } });
        self.counters.declines += 1;
        Ok(())
    }

    fn inform(&mut self, net: usize, mac: MacAddr, req: &Request, out: &mut Vec<Action>) -> Result<(), Ignored> {
        self.counters.informs += 1;
        let ns = self.ns(net)?;
        let ciaddr = req.msg.ciaddr();
        if !ciaddr.is_unspecified() && !ns.cfg.cidr.contains(ciaddr) {
            return Err(Ignored::NotForUs);
        }
        let payload = msg::reply(ns, req, Kind::InformAck, Ipv4Addr::UNSPECIFIED, None, None).ok_or(Ignored::Malformed)?;
        out.push(Self::send(net, req, mac, Kind::InformAck, Ipv4Addr::UNSPECIFIED, payload));
        self.counters.acks += 1;
        Ok(())
    }

    /// Applies a reload: `nets[i]` is network slot i's settings now, `same(i)` whether slot i is
    /// still the network it was. A network that stays keeps every record its new settings still
    /// allow (a lease inside the changed pool, a reservation's); any other lease is released:
    /// a Free record goes to the log (pushed as `Action::Persist`) and the address is free
    /// again. A removed network's leases go the same way. Counters carry on.
    pub fn reconfigure(&mut self, nets: Vec<Option<DhcpNet>>, reservations: Vec<Reservation>, same: impl Fn(usize) -> bool, out: &mut Vec<Action>) {
        self.freed_names.clear();
        let mut fresh = DhcpServer::new(nets, reservations);
        let old = std::mem::take(&mut self.nets);
        let mut freed: Vec<(usize, Ipv4Addr, String)> = Vec::new();
        for (i, ns) in old.into_iter().enumerate() {
            let Some(ns) = ns else { continue };
            let name = ns.cfg.name.clone();
            let keep_net = same(i) && matches!(fresh.nets.get(i), Some(Some(_)));
            for (_, rec) in ns.recs {
                let l = &rec.lease;
                let kept = keep_net && {
                    let n = fresh.nets[i].as_ref().expect("checked above");
                    match l.state {
                        LeaseState::Declined => n.cfg.cidr.contains(l.ip),
                        _ => n.allowed(l.mac, l.ip),
                    }
                };
                if kept {
                    if let Some(Some(n)) = fresh.nets.get_mut(i) {
                        n.put(rec);
                    }
                } else {
                    drop_offer(&mut self.offers, &rec);
                    if matches!(l.state, LeaseState::Bound | LeaseState::Declined) {
                        freed.push((i, l.ip, name.clone()));
                    }
                }
            }
        }
        self.nets = std::mem::take(&mut fresh.nets);
        // ACKs held for a record that is gone now are not sent.
        self.held.retain(|h| self.nets.get(h.net).and_then(|n| n.as_ref()).is_some_and(|n| n.recs.get(&u32::from(h.ip)).is_some_and(|r| r.lease.mac == h.mac)));
        for (net, ip, name) in freed {
            let seq = self.next_seq();
            let record = LeaseRecord::Free { net, ip };
            out.push(Action::Persist { seq, record: record.clone() });
            self.freed_names.push((seq, name));
        }
    }

    /// Records `first..=last` are on disk: the ACKs they held go out (as Action::Send). The
    /// log writes records in seq order and never skips one, so a held ACK below `first` was
    /// never reported durable: it is dropped unsent (its client retries), never released.
    pub fn committed(&mut self, first: u64, last: u64, out: &mut Vec<Action>) {
        while self.held.front().is_some_and(|h| h.seq <= last) {
            let Some(h) = self.held.pop_front() else { break };
            if h.seq < first {
                continue;
            }
            let mut live = false;
            if let Some(r) = self.nets.get_mut(h.net).and_then(|n| n.as_mut()).and_then(|ns| ns.recs.get_mut(&u32::from(h.ip))) {
                if r.lease.mac == h.mac && r.lease.state == LeaseState::Bound {
                    r.durable = r.durable.max(h.expires);
                    live = r.lease.expires == h.expires;
                }
            }
            // Sent only while it still says what the disk says: the lease it announces is the
            // one on record, and not so late that its lease time overstates the record's.
            if !live || self.now > h.at.saturating_add(ACK_STALE_SECS) {
                self.counters.acks_stale += 1;
                continue;
            }
            out.push(h.ack);
            self.counters.acks += 1;
        }
    }

    /// The log line for a record (networks by name).
    pub fn encode(&self, r: &LeaseRecord) -> String {
        let net = match r {
            LeaseRecord::Bind(l) => l.net,
            LeaseRecord::Free { net, .. } | LeaseRecord::Decline { net, .. } => *net,
        };
        let name = self.nets.get(net).and_then(|n| n.as_ref()).map_or("-", |n| n.cfg.name.as_str());
        r.encode(name)
    }

    /// The record as a line for the lease log.
    pub fn log_line(&self, seq: u64, r: &LeaseRecord) -> LogLine {
        let (net, ip, live) = match r {
            LeaseRecord::Bind(l) => (l.net, l.ip, true),
            LeaseRecord::Free { net, ip } => (*net, *ip, false),
            LeaseRecord::Decline { net, ip, .. } => (*net, *ip, true),
        };
        // A release by a reload names a network that may be gone already.
        let gone = self.freed_names.iter().find(|(s, _)| *s == seq).map(|(_, n)| n.as_str());
        let name = gone.or_else(|| self.nets.get(net).and_then(|n| n.as_ref()).map(|n| n.cfg.name.as_str())).unwrap_or("-");
        LogLine { seq, key: format!("{name} {ip}"), line: r.encode(name), live }
    }

    /// A log line as a record of the running config (`None`: corrupt, or its network is gone).
    pub fn decode(&self, line: &str) -> Option<LeaseRecord> {
        LeaseRecord::decode(line, |name| self.nets.iter().position(|n| n.as_ref().is_some_and(|n| n.cfg.name == name)))
    }

    /// Whether the lease log is being written; while it is not, nothing new is acknowledged.
    pub fn set_store_ok(&mut self, ok: bool) {
        self.store_ok = ok;
    }

    pub fn store_ok(&self) -> bool {
        self.store_ok
    }

    /// ACKs waiting for the disk.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Expired leases and offers are reclaimed (Persist a Free record for expired Bound leases).
    /// Expired leases and offers stay in memory as released (the client's previous address);
    /// expired quarantines are forgotten.
    pub fn expire(&mut self, now: u64, out: &mut Vec<Action>) {
        self.now = self.now.max(now);
        for (net, ns) in self.nets.iter_mut().enumerate() {
            let Some(ns) = ns else { continue };
            let mut gone = Vec::new();
            for (&a, r) in ns.recs.iter_mut() {
                if r.lease.expires > now || r.lease.state == LeaseState::Released {
                    continue;
                }
                match r.lease.state {
                    LeaseState::Bound => {
                        r.lease.state = LeaseState::Released;
                        r.durable = 0;
                        self.seq += 1;
                        out.push(Action::Persist { seq: self.seq, record: LeaseRecord::Free { net, ip: r.lease.ip } });
                    }
                    LeaseState::Offered => {
                        drop_offer(&mut self.offers, r);
                        r.lease.state = LeaseState::Released;
                        r.durable = 0;
                    }
                    LeaseState::Declined => gone.push(a),
                    LeaseState::Released => {}
                }
            }
            for a in gone {
                ns.remove(a);
            }
        }
    }

    /// The address port-security must allow for a guest with this MAC on `net` (its current
    /// Bound, unexpired lease), if any. "Unexpired" is judged at the latest time the server
    /// was given.
    pub fn lease_of(&self, net: usize, mac: MacAddr) -> Option<Ipv4Addr> {
        let ns = self.nets.get(net)?.as_ref()?;
        let r = ns.recs.get(ns.by_mac.get(&mac)?)?;
        (r.lease.state == LeaseState::Bound && r.lease.expires > self.now && r.lease.mac == mac).then_some(r.lease.ip)
    }

    /// The MAC holding a Bound, unexpired lease on `ip` in network `net`.
    pub fn holder_of(&self, net: usize, ip: Ipv4Addr) -> Option<MacAddr> {
        let ns = self.nets.get(net)?.as_ref()?;
        let r = ns.recs.get(&u32::from(ip))?;
        (r.lease.state == LeaseState::Bound && r.lease.expires > self.now).then_some(r.lease.mac)
    }

    /// Name -> address and address -> name for DNS: Bound leases (and reservations) with a
    /// hostname. A reservation's name comes first; a lease's name is listed only if no earlier
    /// entry of its network has it.
    pub fn hosts(&self) -> Vec<(usize, String, Ipv4Addr)> {
        let mut v: Vec<(usize, String, Ipv4Addr)> = Vec::new();
        for (net, ns) in self.nets.iter().enumerate() {
            let Some(ns) = ns else { continue };
            let mut res: Vec<_> =
                ns.res_by_mac.values().filter_map(|(ip, h)| h.as_ref().map(|h| (net, h.clone(), *ip))).collect();
            res.sort_by_key(|e| u32::from(e.2));
            // A name taken by a reservation (or an earlier lease) is not given twice.
            let mut named: std::collections::HashSet<&str> = ns.res_by_mac.values().filter_map(|(_, h)| h.as_deref()).collect();
            v.extend(res);
            for r in ns.recs.values() {
                let l = &r.lease;
                let Some(h) = l.hostname.as_deref() else { continue };
                if l.state == LeaseState::Bound && l.expires > self.now && named.insert(h) {
                    v.push((net, h.to_string(), l.ip));
                }
            }
        }
        v
    }

    /// Snapshot for `ctl show leases`: Bound, Offered and Declined entries, by network and address.
    pub fn leases(&self) -> Vec<Lease> {
        self.nets
            .iter()
            .flatten()
            .flat_map(|ns| ns.recs.values())
            .filter(|r| r.lease.state != LeaseState::Released && r.lease.expires > self.now)
            .map(|r| r.lease.clone())
            .collect()
    }

    pub fn counters(&self) -> DhcpCounters {
        self.counters
    }

    /// Per served network: its name, the leases bound now, and how many addresses it may hand
    /// out (the dynamic pool without the gateway and reserved addresses, plus the reservations).
    pub fn pool_usage(&self) -> Vec<PoolUsage> {
        self.nets
            .iter()
            .flatten()
            .map(|ns| {
                let bound = ns.recs.values().filter(|r| r.lease.state == LeaseState::Bound && r.lease.expires > self.now).count() as u64;
                let reserved_in_pool = ns.pool.map_or(0, |(lo, hi)| ns.res_by_ip.keys().filter(|a| (lo..=hi).contains(*a)).count() as u64);
                let dynamic_bound = ns
                    .recs
                    .values()
                    .filter(|r| r.lease.state == LeaseState::Bound && r.lease.expires > self.now && !ns.res_by_ip.contains_key(&u32::from(r.lease.ip)))
                    .count() as u64;
                let dynamic_size = ns.pool_hosts.saturating_sub(reserved_in_pool);
                PoolUsage { network: ns.cfg.name.clone(), bound, size: dynamic_size + ns.res_by_ip.len() as u64, dynamic_bound, dynamic_size }
            })
            .collect()
    }
}

fn declined(net: usize, ip: Ipv4Addr, until: u64) -> Lease {
    Lease { net, ip, mac: MacAddr::ZERO, client_id: None, hostname: None, expires: until, state: LeaseState::Declined }
}

#[cfg(test)]
mod tests;
