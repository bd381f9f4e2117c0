//! Connection tracking: one entry per flow, keyed by the 5-tuple of each direction as it arrives
//! at the router (before any rewrite), the way Linux conntrack keys its ORIGINAL and REPLY tuples.
//!
//! A packet matching a flow's `orig` key is rewritten to `reverse(reply)`, one matching `reply`
//! to `reverse(orig)`: the NAT decision is implied by the two keys, so the per-packet path is one
//! hash lookup and a few field writes ("decide once per flow, then replay", DESIGN.md). Each flow
//! also stores where each direction leaves (interface and next hop), and the rules epoch it was
//! decided under: after a reload (a new epoch) the owner re-decides a flow on its next packet
//! and either keeps it ([`Conntrack::refresh`]) or ends it (OPTE's `set_rules_soft`).
//!
//! The index is a SwissTable of 4-byte slot numbers (flow index and direction): the keys live
//! in the flows themselves, as Linux keeps its tuples inside `nf_conn`, so a million flows
//! cost their entries plus about 20 bytes of index each. It is allocated for the cap up front,
//! so a flood never makes it grow; under heavy churn, though, SwissTable's deletion markers
//! can make it rehash in place now and then (a pause proportional to the table).
//!
//! Invariants: the table never holds more than `max` flows; both keys of a live flow are in the
//! map and point at it; a key is in the map at most once, so a NAT port chosen by checking the
//! map is never handed out twice. Expired flows are removed lazily on lookup and by an
//! incremental sweep (`sweep`), never by a full scan on the packet path. When the table is full a
//! new flow may evict a flow that never became established (unreplied UDP, half-open or closing
//! TCP), never an established one; otherwise it is refused and counted.
//!
//! Sans-IO: time comes in as [`Instant`]; nothing here logs or touches an fd.

use crate::router::Iface;
use crate::time::Instant;
use crate::wire::ipv4::proto;
use serde::Serialize;
use std::hash::BuildHasher;
use std::net::Ipv4Addr;
use std::time::Duration;

/// A flow's identity in one direction, as seen on the wire entering the router.
/// For ICMP echo, `sport` and `dport` both hold the echo identifier.
///
/// The addresses are kept apart in memory (`repr(C)`, a port between them): a key is built as
/// separate fields just before it is hashed, and adjacent addresses were read back by the hash
/// as one 8-byte load, which cannot be forwarded from two 4-byte stores and stalled every
/// packet (~4 ns).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct Key {
    pub src: Ipv4Addr,
    pub sport: u16,
    pub dst: Ipv4Addr,
    pub dport: u16,
    pub proto: u8,
}

/// The five fields as two words, hashed in two writes rather than five (the lookup of every
/// packet of every flow starts here).
impl std::hash::Hash for Key {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64((u32::from(self.src) as u64) << 32 | u32::from(self.dst) as u64);
        state.write_u64((self.sport as u64) << 24 | (self.dport as u64) << 8 | self.proto as u64);
    }
}

impl Key {
    pub fn reverse(&self) -> Key {
        Key { src: self.dst, dst: self.src, sport: self.dport, dport: self.sport, proto: self.proto }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    Orig,
    Reply,
}

impl Dir {
    fn idx(self) -> usize {
        self as usize
    }
    /// The other direction.
    pub fn rev(self) -> Dir {
        match self {
            Dir::Orig => Dir::Reply,
            Dir::Reply => Dir::Orig,
        }
    }
}

/// Protocol state, Linux conntrack's names where they exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum State {
    SynSent,
    SynRecv,
    Established,
    FinWait,
    CloseWait,
    TimeWait,
    Close,
    /// UDP/ICMP/other: no answer seen yet.
    Unreplied,
    /// UDP/ICMP/other: answered.
    Replied,
}

impl State {
    /// A flow worth keeping under pressure: an established TCP connection, or datagrams that
    /// were answered.
    pub fn assured(self) -> bool {
        matches!(self, State::Established | State::Replied)
    }
    /// A TCP connection on its way out (FIN or RST seen).
    pub fn closing(self) -> bool {
        matches!(self, State::FinWait | State::CloseWait | State::TimeWait | State::Close)
    }
}

/// Per-state timeouts. Defaults follow Linux's nf_conntrack sysctls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub tcp_established: Duration,
    pub tcp_syn: Duration,
    pub tcp_close: Duration,
    pub udp: Duration,
    pub udp_stream: Duration,
    pub icmp: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            tcp_established: Duration::from_secs(432_000),
            tcp_syn: Duration::from_secs(120),
            tcp_close: Duration::from_secs(120),
            udp: Duration::from_secs(30),
            udp_stream: Duration::from_secs(120),
            icmp: Duration::from_secs(30),
        }
    }
}

/// Where one direction of a flow leaves the router.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Egress {
    pub iface: Iface,
    pub next_hop: Ipv4Addr,
}

/// One tracked flow. Kept small: the table is sized for a million of them.
#[derive(Debug, Clone)]
pub struct Flow {
    pub orig: Key,
    pub reply: Key,
    pub egress: [Egress; 2],
    /// Expiry, milliseconds on the datapath clock.
    pub expires: u64,
    pub bytes: u64,
    pub packets: u32,
    pub state: State,
    /// Bit 0: FIN seen from the originator, bit 1: from the responder.
    fins: u8,
    live: bool,
    /// Who counts this connection (a load balancer's backend), or [`NO_TAG`]; handed back
    /// through [`Conntrack::released`] once, when the connection starts closing or ends.
    pub tag: u32,
    /// The rules epoch the flow was decided (or last re-decided) under.
    pub epoch: u32,
    /// The owner's note about the flow (security groups: which way its first packet crossed).
    pub aux: u8,
    /// Names this decision of this flow: a new flow in a reused slot, or a flow re-decided
    /// after a reload, gets a new one, so whatever was cached about the old one is not
    /// mistaken for it (the datapath's flow cache).
    pub serial: u32,
    /// Some address or port is translated (the reply key is not the original reversed).
    pub nat: bool,
}

/// A flow nobody counts.
pub const NO_TAG: u32 = u32::MAX;

impl Flow {
    /// What a packet of direction `dir` becomes: the reverse of the other direction's key.
    pub fn target(&self, dir: Dir) -> Key {
        match dir {
            Dir::Orig => self.reply.reverse(),
            Dir::Reply => self.orig.reverse(),
        }
    }
    /// Where packets of direction `dir` come from (where the other direction leaves).
    pub fn ingress(&self, dir: Dir) -> Iface {
        self.egress[dir.rev().idx()].iface
    }
}

/// TCP flags the state machine reads.
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const ACK: u8 = 0x10;
}

/// Counters of the table.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct CtStats {
    pub created: u64,
    pub expired: u64,
    /// Not-yet-established flows removed to make room for a new one.
    pub evicted: u64,
    /// New flows refused because the table was full of established ones.
    pub refused: u64,
    /// New flows refused because a live flow already held their tuple.
    pub collisions: u64,
}

/// Why a flow could not be added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsertError {
    /// The table is full and nothing may be evicted.
    Full,
    /// A live flow already holds one of the keys (or both keys are the same tuple).
    Collision,
}

/// A flow as the control plane shows it (a typed snapshot; JSON is made on the control side).
#[derive(Debug, Clone, Serialize)]
pub struct FlowRow {
    pub proto: &'static str,
    pub state: State,
    pub src: Ipv4Addr,
    pub sport: u16,
    pub dst: Ipv4Addr,
    pub dport: u16,
    pub reply_src: Ipv4Addr,
    pub reply_sport: u16,
    pub reply_dst: Ipv4Addr,
    pub reply_dport: u16,
    pub expires_secs: u64,
    pub packets: u32,
    pub bytes: u64,
}

/// How many slots one `sweep` call looks at, at least.
const SWEEP_MIN: usize = 1024;
/// How many slots a full table inspects for something evictable.
const EVICT_SCAN: usize = 64;

pub struct Conntrack {
    /// Slot numbers (`idx << 1 | dir`); the key of a slot is that flow's key in that direction.
    map: hashbrown::HashTable<u32>,
    hasher: foldhash::fast::RandomState,
    flows: Vec<Flow>,
    free: Vec<u32>,
    max: usize,
    live: usize,
    hand: usize,
    evict_hand: usize,
    pub timeouts: Timeouts,
    pub stats: CtStats,
    /// Tags of counted flows that closed or ended since the owner last looked.
    pub released: Vec<u32>,
    /// Live flows whose source was translated, by the address and protocol they were given
    /// (NAT ports in use): a handful of entries (public IPs and gateways).
    translated: std::collections::HashMap<(Ipv4Addr, u8), u32>,
    /// The current rules epoch: new flows get it; a flow with an older one is re-decided.
    pub epoch: u32,
    /// The last [`Flow::serial`] given.
    serial: u32,
}

fn slot(idx: u32, dir: Dir) -> u32 {
    idx << 1 | dir as u32
}

impl Conntrack {
    /// A table for at most `max` flows. The index is allocated up front so it never rehashes
    /// (a stall) under a flood.
    pub fn new(max: usize, timeouts: Timeouts) -> Self {
        let max = max.clamp(1, 1 << 24);
        Conntrack {
            map: hashbrown::HashTable::with_capacity(2 * max),
            hasher: foldhash::fast::RandomState::default(),
            flows: Vec::with_capacity(max.min(1 << 16)),
            free: Vec::new(),
            max,
            live: 0,
            hand: 0,
            evict_hand: 0,
            timeouts,
            stats: CtStats::default(),
            released: Vec::new(),
            translated: std::collections::HashMap::new(),
            epoch: 0,
            serial: 0,
        }
    }

    /// The live flows (tests and audits; the packet path never walks the table).
    pub fn iter(&self) -> impl Iterator<Item = &Flow> {
        self.flows.iter().filter(|f| f.live)
    }

    /// A new cap (a reload): flows over it are not removed, new ones wait until there is room.
    pub fn set_max(&mut self, max: usize) {
        self.max = max.clamp(1, 1 << 24);
    }

    pub fn len(&self) -> usize {
        self.live
    }
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }
    pub fn max(&self) -> usize {
        self.max
    }

    fn key_of(flows: &[Flow], s: u32) -> &Key {
        let f = &flows[(s >> 1) as usize];
        if s & 1 == 0 {
            &f.orig
        } else {
            &f.reply
        }
    }

    #[inline]
    fn find(&self, k: &Key) -> Option<u32> {
        let h = self.hasher.hash_one(k);
        self.map.find(h, |&s| Self::key_of(&self.flows, s) == k).copied()
    }

    fn index_insert(&mut self, k: Key, s: u32) {
        let h = self.hasher.hash_one(k);
        let (flows, hasher) = (&self.flows, &self.hasher);
        self.map.insert_unique(h, s, |&x| hasher.hash_one(Self::key_of(flows, x)));
    }

    fn index_remove(&mut self, k: &Key, s: u32) {
        let h = self.hasher.hash_one(k);
        if let Ok(e) = self.map.find_entry(h, |&x| x == s) {
            e.remove();
        }
    }

    /// Whether `k` is some live flow's key (NAT uses it to pick unused ports).
    pub fn contains(&self, now: Instant, k: &Key) -> bool {
        match self.find(k) {
            Some(s) => self.flows[(s >> 1) as usize].expires > now.millis(),
            None => false,
        }
    }

    /// The flow a packet with key `k` belongs to, and its direction. Expired flows are removed.
    #[inline]
    pub fn lookup(&mut self, now: Instant, k: &Key) -> Option<(u32, Dir)> {
        let s = self.find(k)?;
        let idx = s >> 1;
        if self.flows[idx as usize].expires <= now.millis() {
            self.expire_found(idx);
            return None;
        }
        Some((idx, if s & 1 == 0 { Dir::Orig } else { Dir::Reply }))
    }

    #[cold]
    #[inline(never)]
    fn expire_found(&mut self, idx: u32) {
        self.remove(idx);
        self.stats.expired += 1;
    }

    pub fn flow(&self, idx: u32) -> &Flow {
        &self.flows[idx as usize]
    }

    /// A flow re-decided the same way under the current rules: it carries on, with `egress`
    /// (where the new rules send each direction).
    pub fn refresh(&mut self, idx: u32, egress: [Egress; 2]) {
        let epoch = self.epoch;
        self.serial = self.serial.wrapping_add(1);
        let serial = self.serial;
        if let Some(f) = self.flows.get_mut(idx as usize).filter(|f| f.live) {
            f.epoch = epoch;
            f.egress = egress;
            f.serial = serial;
        }
    }

    /// Sets the owner's note on a live flow.
    pub fn set_aux(&mut self, idx: u32, aux: u8) {
        if let Some(f) = self.flows.get_mut(idx as usize).filter(|f| f.live) {
            f.aux = aux;
        }
    }

    /// Marks a live flow as counted by `tag` (see [`Flow::tag`]).
    pub fn set_tag(&mut self, idx: u32, tag: u32) {
        if let Some(f) = self.flows.get_mut(idx as usize).filter(|f| f.live) {
            f.tag = tag;
        }
    }

    /// Adds a flow for a first packet seen in the `orig` direction. The caller has checked that
    /// neither key is in use.
    pub fn insert(&mut self, now: Instant, orig: Key, reply: Key, egress: [Egress; 2]) -> Result<u32, InsertError> {
        if orig == reply {
            self.stats.collisions += 1;
            return Err(InsertError::Collision);
        }
        {
            // A stale flow holding a key (expired but not yet swept) gives way.
            for k in [orig, reply] {
                if let Some(s) = self.find(&k) {
                    let idx = s >> 1;
                    if self.flows[idx as usize].expires <= now.millis() {
                        self.remove(idx);
                        self.stats.expired += 1;
                    } else {
                        self.stats.collisions += 1;
                        return Err(InsertError::Collision);
                    }
                }
            }
        }
        if self.live >= self.max && !self.evict_one(now) {
            self.stats.refused += 1;
            return Err(InsertError::Full);
        }
        // A TCP flow starts half-open, whether its first packet is a SYN or it is picked up
        // mid-stream (Linux's nf_conntrack_tcp_loose): established once the other side answers.
        let state = if orig.proto == proto::TCP { State::SynSent } else { State::Unreplied };
        self.serial = self.serial.wrapping_add(1);
        let flow = Flow { orig, reply, egress, expires: 0, bytes: 0, packets: 0, state, fins: 0, live: true, tag: NO_TAG, epoch: self.epoch, aux: 0, serial: self.serial, nat: orig.reverse() != reply };
        let idx = match self.free.pop() {
            Some(i) => {
                self.flows[i as usize] = flow;
                i
            }
            None => {
                self.flows.push(flow);
                (self.flows.len() - 1) as u32
            }
        };
        let f = &mut self.flows[idx as usize];
        f.expires = now.millis() + self.timeouts.for_state(f.state).as_millis() as u64;
        self.index_insert(orig, slot(idx, Dir::Orig));
        self.index_insert(reply, slot(idx, Dir::Reply));
        if reply.dst != orig.src {
            *self.translated.entry((reply.dst, orig.proto)).or_insert(0) += 1;
        }
        self.live += 1;
        self.stats.created += 1;
        Ok(idx)
    }

    /// Accounts one packet of `len` bytes in direction `dir` and advances the state machine
    /// (`tcp`: the TCP flags, 0 for other protocols).
    pub fn update(&mut self, now: Instant, idx: u32, dir: Dir, tcp: u8, len: usize) {
        let t = &self.timeouts;
        let f = &mut self.flows[idx as usize];
        f.packets = f.packets.wrapping_add(1);
        f.bytes = f.bytes.wrapping_add(len as u64);
        f.state = if f.orig.proto == proto::TCP { tcp_next(f, dir, tcp) } else {
            match (f.state, dir) {
                (State::Unreplied, Dir::Reply) => State::Replied,
                (s, _) => s,
            }
        };
        if f.tag != NO_TAG && f.state.closing() {
            self.released.push(f.tag);
            f.tag = NO_TAG;
        }
        let mut timeout = t.for_state(f.state);
        if f.orig.proto == proto::ICMP {
            timeout = t.icmp;
        }
        f.expires = now.millis() + millis(timeout);
    }

    pub fn remove(&mut self, idx: u32) {
        let f = &mut self.flows[idx as usize];
        if !f.live {
            return;
        }
        f.live = false;
        if f.tag != NO_TAG {
            self.released.push(f.tag);
            f.tag = NO_TAG;
        }
        let (o, r) = (f.orig, f.reply);
        for (k, d) in [(o, Dir::Orig), (r, Dir::Reply)] {
            self.index_remove(&k, slot(idx, d));
        }
        if r.dst != o.src {
            if let Some(n) = self.translated.get_mut(&(r.dst, o.proto)) {
                *n -= 1;
                if *n == 0 {
                    self.translated.remove(&(r.dst, o.proto));
                }
            }
        }
        self.free.push(idx);
        self.live -= 1;
    }

    /// Live source-translated flows by translated address and protocol (NAT ports in use).
    pub fn translated(&self) -> Vec<(Ipv4Addr, u8, u32)> {
        let mut v: Vec<_> = self.translated.iter().map(|(&(a, p), &n)| (a, p, n)).collect();
        v.sort_unstable();
        v
    }

    /// Looks at the next slice of the table and removes expired flows. Called from timer work;
    /// covers the whole table about every hundred calls.
    pub fn sweep(&mut self, now: Instant) {
        let n = self.flows.len();
        if n == 0 {
            return;
        }
        let budget = (n / 100).max(SWEEP_MIN).min(n);
        for _ in 0..budget {
            self.hand = (self.hand + 1) % n;
            let f = &self.flows[self.hand];
            if f.live && f.expires <= now.millis() {
                self.remove(self.hand as u32);
                self.stats.expired += 1;
            }
        }
    }

    /// Frees one slot in a full table: an expired flow, or one that is not assured.
    fn evict_one(&mut self, now: Instant) -> bool {
        let n = self.flows.len();
        for _ in 0..EVICT_SCAN.min(n) {
            self.evict_hand = (self.evict_hand + 1) % n;
            let f = &self.flows[self.evict_hand];
            if !f.live {
                continue;
            }
            if f.expires <= now.millis() {
                self.remove(self.evict_hand as u32);
                self.stats.expired += 1;
                return true;
            }
            if !f.state.assured() {
                self.remove(self.evict_hand as u32);
                self.stats.evicted += 1;
                return true;
            }
        }
        false
    }

    /// Up to `limit` flows starting at slot `offset`, and the slot to continue from (`None` at
    /// the end). Bounded work per call, so a full table is shown without stalling forwarding.
    pub fn page(&self, now: Instant, offset: usize, limit: usize) -> (Vec<FlowRow>, Option<usize>) {
        let mut rows = Vec::new();
        let mut i = offset;
        let end = self.flows.len().min(offset.saturating_add(limit.saturating_mul(8)));
        while i < end && rows.len() < limit {
            let f = &self.flows[i];
            i += 1;
            if !f.live || f.expires <= now.millis() {
                continue;
            }
            rows.push(FlowRow {
                proto: match f.orig.proto {
                    proto::TCP => "tcp",
                    proto::UDP => "udp",
                    proto::ICMP => "icmp",
                    _ => "other",
                },
                state: f.state,
                src: f.orig.src,
                sport: f.orig.sport,
                dst: f.orig.dst,
                dport: f.orig.dport,
                reply_src: f.reply.src,
                reply_sport: f.reply.sport,
                reply_dst: f.reply.dst,
                reply_dport: f.reply.dport,
                expires_secs: (f.expires - now.millis()) / 1000,
                packets: f.packets,
                bytes: f.bytes,
            });
        }
        (rows, (i < self.flows.len()).then_some(i))
    }

    /// Bytes a full table uses per flow: the entry plus its two index slots (4 bytes and a
    /// control byte each), with the index's buckets rounded up to a power of two as SwissTable
    /// sizes them.
    pub fn bytes_per_flow(max: usize) -> usize {
        let buckets = (2 * max * 8 / 7).next_power_of_two();
        std::mem::size_of::<Flow>() + buckets * (std::mem::size_of::<u32>() + 1) / max.max(1)
    }
}

/// `d` in whole milliseconds, in u64 arithmetic (`Duration::as_millis` is u128).
#[inline]
fn millis(d: Duration) -> u64 {
    d.as_secs().saturating_mul(1000).saturating_add(u64::from(d.subsec_millis()))
}

impl Timeouts {
    fn for_state(&self, s: State) -> Duration {
        match s {
            State::SynSent | State::SynRecv => self.tcp_syn,
            State::Established => self.tcp_established,
            State::FinWait | State::CloseWait | State::TimeWait => self.tcp_close,
            State::Close => Duration::from_secs(10).min(self.tcp_close),
            State::Unreplied => self.udp,
            State::Replied => self.udp_stream,
        }
    }
}

/// The TCP state after a packet with `flags` in direction `dir` (no window tracking: the
/// endpoints are the guests' and the outside's own stacks).
fn tcp_next(f: &mut Flow, dir: Dir, flags: u8) -> State {
    use tcp_flags::*;
    let s = f.state;
    if flags & RST != 0 {
        return State::Close;
    }
    let syn = flags & SYN != 0;
    let ack = flags & ACK != 0;
    if flags & FIN != 0 {
        f.fins |= 1 << dir.idx();
    }
    match (s, dir) {
        // A new connection reusing the tuple after the old one closed.
        (State::TimeWait | State::Close, Dir::Orig) if syn && !ack => {
            f.fins = 0;
            State::SynSent
        }
        (State::SynSent, Dir::Reply) if syn && ack => State::SynRecv,
        // Picked up mid-stream: the other side answered, so it is a live connection.
        (State::SynSent, Dir::Reply) if !syn => State::Established,
        (State::SynRecv, Dir::Orig) if ack && !syn => State::Established,
        _ if f.fins == 3 => State::TimeWait,
        (State::Established, _) if f.fins != 0 => {
            if f.fins & 1 != 0 {
                State::FinWait
            } else {
                State::CloseWait
            }
        }
        _ => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::switch::NetId;

    fn key(sp: u16, dp: u16, p: u8) -> Key {
        Key { src: Ipv4Addr::new(10, 1, 1, 11), dst: Ipv4Addr::new(198, 51, 100, 5), sport: sp, dport: dp, proto: p }
    }
    fn eg() -> [Egress; 2] {
        let e = Egress { iface: Iface::Net(NetId(0)), next_hop: Ipv4Addr::new(10, 1, 1, 11) };
        [e, e]
    }
    fn snat(k: Key, port: u16) -> Key {
        Key { src: k.dst, dst: Ipv4Addr::new(203, 0, 113, 10), sport: k.dport, dport: port, proto: k.proto }
    }
    const T0: Instant = Instant(1_000);

    #[test]
    fn tcp_handshake_to_close_with_timeouts() {
        use tcp_flags::*;
        let mut ct = Conntrack::new(16, Timeouts::default());
        let o = key(40000, 80, proto::TCP);
        let r = snat(o, 1024);
        let i = ct.insert(T0, o, r, eg()).unwrap();
        assert_eq!(ct.flow(i).state, State::SynSent);
        assert_eq!(ct.lookup(T0, &r), Some((i, Dir::Reply)));
        ct.update(T0, i, Dir::Reply, SYN | ACK, 60);
        assert_eq!(ct.flow(i).state, State::SynRecv);
        ct.update(T0, i, Dir::Orig, ACK, 52);
        assert_eq!(ct.flow(i).state, State::Established);
        assert_eq!(ct.flow(i).expires, T0.millis() + 432_000_000);
        ct.update(T0, i, Dir::Orig, FIN | ACK, 52);
        assert_eq!(ct.flow(i).state, State::FinWait);
        ct.update(T0, i, Dir::Reply, FIN | ACK, 52);
        assert_eq!(ct.flow(i).state, State::TimeWait);
        // After the close timeout the flow is gone and its keys are free again.
        let later = T0 + Duration::from_secs(121);
        assert_eq!(ct.lookup(later, &o), None);
        assert!(!ct.contains(later, &r));
        assert_eq!(ct.len(), 0);
    }

    #[test]
    fn udp_replied_gets_stream_timeout() {
        let mut ct = Conntrack::new(16, Timeouts::default());
        let o = key(5000, 53, proto::UDP);
        let i = ct.insert(T0, o, snat(o, 5000), eg()).unwrap();
        ct.update(T0, i, Dir::Orig, 0, 60);
        assert_eq!(ct.flow(i).expires, T0.millis() + 30_000);
        ct.update(T0, i, Dir::Reply, 0, 60);
        assert_eq!(ct.flow(i).state, State::Replied);
        assert_eq!(ct.flow(i).expires, T0.millis() + 120_000);
    }

    #[test]
    fn full_table_evicts_unassured_and_spares_established() {
        let mut ct = Conntrack::new(4, Timeouts::default());
        let mut est = Vec::new();
        for p in 0..2 {
            let o = key(1000 + p, 80, proto::TCP);
            let i = ct.insert(T0, o, snat(o, 2000 + p), eg()).unwrap();
            ct.update(T0, i, Dir::Reply, tcp_flags::SYN | tcp_flags::ACK, 60);
            ct.update(T0, i, Dir::Orig, tcp_flags::ACK, 60);
            est.push(o);
        }
        // A flood of new UDP flows: each evicts an earlier unreplied one.
        for p in 0..100 {
            let o = key(3000 + p, 9, proto::UDP);
            ct.insert(T0, o, snat(o, 3000 + p), eg()).unwrap();
        }
        assert_eq!(ct.len(), 4);
        assert!(ct.stats.evicted >= 98);
        for o in &est {
            assert!(ct.lookup(T0, o).is_some(), "established flow survived");
        }
        // Only established flows left: new ones are refused.
        let mut ct2 = Conntrack::new(2, Timeouts::default());
        for o in est {
            let i = ct2.insert(T0, o, snat(o, o.sport + 1000), eg()).unwrap();
            ct2.update(T0, i, Dir::Reply, tcp_flags::SYN | tcp_flags::ACK, 60);
            ct2.update(T0, i, Dir::Orig, tcp_flags::ACK, 60);
        }
        let o = key(9, 9, proto::UDP);
        assert_eq!(ct2.insert(T0, o, snat(o, 9), eg()), Err(InsertError::Full));
        assert_eq!(ct2.stats.refused, 1);
        assert_eq!(ct2.stats.collisions, 0);
    }

    #[test]
    fn translated_flows_are_counted_by_address_and_protocol() {
        let mut ct = Conntrack::new(64, Timeouts::default());
        let pub_ip = Ipv4Addr::new(203, 0, 113, 10);
        let a = key(1000, 80, proto::TCP);
        let b = key(1001, 53, proto::UDP);
        let ia = ct.insert(T0, a, snat(a, 2000), eg()).unwrap();
        ct.insert(T0, b, snat(b, 2001), eg()).unwrap();
        // Not translated: the reply goes back to the original source.
        let c = key(1002, 53, proto::UDP);
        ct.insert(T0, c, c.reverse(), eg()).unwrap();
        assert_eq!(ct.translated(), vec![(pub_ip, proto::TCP, 1), (pub_ip, proto::UDP, 1)]);
        ct.remove(ia);
        assert_eq!(ct.translated(), vec![(pub_ip, proto::UDP, 1)]);
        // Expiry goes through the same path.
        ct.sweep(T0 + Duration::from_secs(3600));
        for _ in 0..200 {
            ct.sweep(T0 + Duration::from_secs(3600));
        }
        assert!(ct.translated().is_empty(), "{:?}", ct.translated());
    }

    #[test]
    fn a_tuple_held_by_a_live_flow_is_a_collision_not_a_full_table() {
        let mut ct = Conntrack::new(64, Timeouts::default());
        let o = key(1000, 80, proto::UDP);
        ct.insert(T0, o, snat(o, 2000), eg()).unwrap();
        // Another flow whose reply tuple is the first one's: refused as a collision.
        let o2 = key(1001, 80, proto::UDP);
        assert_eq!(ct.insert(T0, o2, snat(o, 2000), eg()), Err(InsertError::Collision));
        assert_eq!(ct.insert(T0, o2, o2, eg()), Err(InsertError::Collision));
        assert_eq!((ct.stats.collisions, ct.stats.refused), (2, 0));
        assert_eq!(crate::router::ct_drop(InsertError::Collision), crate::switch::stats::DropReason::ConntrackCollision);
    }

    #[test]
    fn sweep_expires_incrementally_and_reuses_slots() {
        let mut ct = Conntrack::new(5000, Timeouts::default());
        for p in 0..3000u16 {
            let o = key(p, 53, proto::UDP);
            ct.insert(T0, o, snat(o, p), eg()).unwrap();
        }
        let later = T0 + Duration::from_secs(31);
        for _ in 0..3 {
            ct.sweep(later);
        }
        assert_eq!(ct.len(), 0);
        assert_eq!(ct.stats.expired, 3000);
        let o = key(1, 1, proto::UDP);
        let i = ct.insert(later, o, snat(o, 1), eg()).unwrap();
        assert!((i as usize) < 3000, "slot reused");
        let (mut rows, mut next, mut pages) = (Vec::new(), Some(0), 0);
        while let Some(off) = next {
            let (r, n) = ct.page(later, off, 10);
            rows.extend(r);
            next = n;
            pages += 1;
        }
        assert_eq!(rows.len(), 1);
        assert!(pages >= 3000 / 80, "each page scans a bounded slice");
    }

    #[test]
    fn entry_is_compact() {
        // DESIGN: aim at <= 128 bytes per flow, a million flows well under 1 GiB.
        for max in [1 << 20, 1_000_000, 262_144] {
            let b = Conntrack::bytes_per_flow(max);
            assert!(b <= 128, "{b} bytes per flow at {max}");
        }
    }
}
