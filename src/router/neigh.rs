//! The neighbour table: IPv4 -> MAC per interface (ARP), with retries, a bounded queue of frames
//! waiting for resolution, and a cap. Sans-IO: it says which ARP requests to send and which
//! queued frames became sendable or must be given up; the router builds and sends them.
//!
//! Invariants: at most `cap` entries; at most [`QUEUE_PER_NEIGH`] frames per entry,
//! [`QUEUE_PER_SOURCE`] from one sender and [`QUEUE_TOTAL`] over the table; an incomplete entry is retried [`RETRIES`] times one second
//! apart, then fails for [`FAIL_HOLD`] (its frames are returned to be answered with host
//! unreachable).

use super::Iface;
use crate::time::Instant;
use crate::wire::ethernet::MacAddr;
use crate::wire::vnet::VnetHdr;
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::time::Duration;

pub const QUEUE_PER_NEIGH: usize = 16;
pub const QUEUE_TOTAL: usize = 256;
/// Frames of one sender (its IPv4 source) queued over the table: a guest sending to many
/// silent addresses cannot fill the queue for the others.
pub const QUEUE_PER_SOURCE: u16 = 64;
pub const RETRIES: u8 = 3;
pub const RETRY_EVERY: Duration = Duration::from_secs(1);
pub const FAIL_HOLD: Duration = Duration::from_secs(3);
/// A confirmed entry is used without question this long (Linux: base_reachable_time 30 s,
/// randomised up to 45 s).
pub const REACHABLE: Duration = Duration::from_secs(30);
/// A stale entry is still used, and re-probed at most this often.
pub const PROBE_EVERY: Duration = Duration::from_secs(5);
/// A stale entry nobody confirms is forgotten after this long.
pub const STALE_GC: Duration = Duration::from_secs(600);

/// A frame waiting for its next hop's MAC.
pub struct Queued {
    pub frame: Vec<u8>,
    pub vnet: VnetHdr,
    /// Who sent it, to tell them if the next hop never answers.
    pub origin: Option<Origin>,
}

/// The sender of a queued frame, as it arrived (before any rewrite).
pub struct Origin {
    pub iface: Iface,
    pub mac: MacAddr,
    /// The IP packet as received, cut to what an ICMP error quotes.
    pub quote: Vec<u8>,
}

enum State {
    /// `probes`: refresh probes sent since the last confirmation.
    Reachable { mac: MacAddr, confirmed: Instant, probed: Instant, probes: u8 },
    Incomplete { tries: u8, next: Instant },
    Failed { until: Instant },
}

struct Entry {
    state: State,
    queue: Vec<Queued>,
}

/// What the table knows of a neighbour, for health checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NeighState {
    /// It answered ARP this many seconds ago.
    Reachable { confirmed_secs: u64 },
    /// Asked, no answer yet.
    Resolving,
    /// Asked and never answered (given up until a retry).
    Failed,
    /// Never asked.
    Unknown,
}

/// What a lookup found.
pub enum Resolve {
    Mac(MacAddr),
    /// Unknown yet: queue the frame (if there is room) and wait.
    Pending,
    /// Recently failed to resolve.
    Failed,
}

/// Work for the router after a lookup, a confirmation or a timer.
#[derive(Default)]
pub struct Work {
    /// ARP requests to send: (interface, target, known MAC for a unicast probe).
    pub requests: Vec<(Iface, Ipv4Addr, Option<MacAddr>)>,
    /// Frames that can go now: (interface, next-hop MAC, frame).
    pub ready: Vec<(Iface, MacAddr, Queued)>,
    /// Frames given up on.
    pub failed: Vec<(Iface, Queued)>,
}

/// Slots of the resolved-neighbour cache in front of the map.
const FAST_SLOTS: usize = 64;

/// A resolved neighbour, cached for the per-packet path: valid while the table has not changed
/// since (`gen`) and until the entry needs a probe (`until`).
#[derive(Clone, Copy)]
struct Fast {
    iface: Iface,
    ip: Ipv4Addr,
    mac: MacAddr,
    gen: u32,
    until: Instant,
}

impl Work {
    pub fn is_empty(&self) -> bool {
        self.requests.is_empty() && self.ready.is_empty() && self.failed.is_empty()
    }
}

pub struct Neighbours {
    map: HashMap<(Iface, Ipv4Addr), Entry, foldhash::fast::RandomState>,
    /// Direct-mapped by address: most packets go to a few next hops (the public gateway, the
    /// guests of a network), found here without hashing the map's key.
    fast: [Option<Fast>; FAST_SLOTS],
    /// Bumped by every change that can alter or remove a reachable entry (confirmations,
    /// forgetting, making room), so a cached answer never outlives what it cached.
    gen: u32,
    cap: usize,
    queued: usize,
    /// Frames queued per sender.
    by_src: HashMap<Ipv4Addr, u16>,
    next_timer: Instant,
}

fn fast_slot(ip: Ipv4Addr) -> usize {
    (u32::from(ip).wrapping_mul(0x9e37_79b1) >> (32 - FAST_SLOTS.trailing_zeros())) as usize
}

/// Who a queued frame is counted against: its sender as it arrived (the origin's quote), not
/// the source NAT made of it, or every guest behind one public address would share one share;
/// the frame's own source when there is no origin (the router's own frames).
fn source(q: &Queued) -> Option<Ipv4Addr> {
    if let Some(b) = q.origin.as_ref().and_then(|o| o.quote.get(12..16)) {
        return Some(Ipv4Addr::new(b[0], b[1], b[2], b[3]));
    }
    crate::wire::ipv4::Ipv4Packet::new_checked(q.frame.get(14..)?).ok().map(|p| p.src())
}

/// A queued frame leaves the table (sent or given up): its sender's count goes down.
fn release(by_src: &mut HashMap<Ipv4Addr, u16>, q: &Queued) {
    if let Some(s) = source(q) {
        if let Some(n) = by_src.get_mut(&s) {
            *n -= 1;
            if *n == 0 {
                by_src.remove(&s);
            }
        }
    }
}

impl Neighbours {
    pub fn new(cap: usize) -> Self {
        Neighbours {
            map: HashMap::with_capacity_and_hasher(64, Default::default()),
            fast: [None; FAST_SLOTS],
            gen: 0,
            cap,
            queued: 0,
            by_src: HashMap::new(),
            next_timer: Instant(u64::MAX),
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The MAC for `ip` on `iface`, starting resolution (and asking for a request) if needed.
    #[inline]
    pub fn resolve(&mut self, now: Instant, iface: Iface, ip: Ipv4Addr, work: &mut Work) -> Resolve {
        match self.cached(now, iface, ip) {
            Some(m) => Resolve::Mac(m),
            None => self.resolve_slow(now, iface, ip, work, fast_slot(ip)),
        }
    }

    /// The answer [`Self::resolve`] would give from its cache alone: a MAC that needs no work.
    #[inline]
    pub fn cached(&self, now: Instant, iface: Iface, ip: Ipv4Addr) -> Option<MacAddr> {
        self.cached_until(now, iface, ip).map(|(mac, _)| mac)
    }

    /// [`Self::cached`]'s answer and until when it stands while [`Self::gen`] is unchanged.
    #[inline]
    pub fn cached_until(&self, now: Instant, iface: Iface, ip: Ipv4Addr) -> Option<(MacAddr, Instant)> {
        let f = self.fast[fast_slot(ip)].as_ref()?;
        (f.ip == ip && f.iface == iface && f.gen == self.gen && now < f.until).then_some((f.mac, f.until))
    }

    /// Changes with every change that can make a cached answer wrong.
    pub fn gen(&self) -> u32 {
        self.gen
    }

    /// Nothing here changes an entry the cache may hold (a cached entry is reachable and not
    /// yet due for a probe; this changes only entries that are not, and makes room through
    /// `gc`, which counts as a change), so it leaves the generation alone: a flood of misses
    /// for other addresses does not empty the cache.
    fn resolve_slow(&mut self, now: Instant, iface: Iface, ip: Ipv4Addr, work: &mut Work, slot: usize) -> Resolve {
        if let Some(e) = self.map.get_mut(&(iface, ip)) {
            return match &mut e.state {
                State::Reachable { mac, confirmed, probed, probes } => {
                    let m = *mac;
                    // Until it needs probing, the answer is the same for every packet.
                    let until = *confirmed + REACHABLE;
                    if now < until {
                        self.fast[slot] = Some(Fast { iface, ip, mac: m, gen: self.gen, until });
                        return Resolve::Mac(m);
                    }
                    if now.since(*confirmed) >= REACHABLE && now.since(*probed) >= PROBE_EVERY {
                        if *probes >= RETRIES {
                            // Stale and silent (it moved, or went away without a word): resolve
                            // it afresh rather than keep sending to a MAC nobody answers for.
                            e.state = State::Incomplete { tries: 1, next: now + RETRY_EVERY };
                            self.next_timer = self.next_timer.min(now + RETRY_EVERY);
                            work.requests.push((iface, ip, None));
                            return Resolve::Pending;
                        }
                        *probed = now;
                        *probes += 1;
                        work.requests.push((iface, ip, Some(m)));
                    }
                    Resolve::Mac(m)
                }
                State::Incomplete { .. } => Resolve::Pending,
                State::Failed { until } if *until > now => Resolve::Failed,
                State::Failed { .. } => {
                    e.state = State::Incomplete { tries: 1, next: now + RETRY_EVERY };
                    self.next_timer = self.next_timer.min(now + RETRY_EVERY);
                    work.requests.push((iface, ip, None));
                    Resolve::Pending
                }
            };
        }
        if self.map.len() >= self.cap && !self.gc(now) {
            return Resolve::Failed;
        }
        self.map.insert((iface, ip), Entry { state: State::Incomplete { tries: 1, next: now + RETRY_EVERY }, queue: Vec::new() });
        self.next_timer = self.next_timer.min(now + RETRY_EVERY);
        work.requests.push((iface, ip, None));
        Resolve::Pending
    }

    /// What is known of `ip` on `iface`, without starting anything.
    pub fn state_of(&self, now: Instant, iface: Iface, ip: Ipv4Addr) -> NeighState {
        match self.map.get(&(iface, ip)).map(|e| &e.state) {
            Some(State::Reachable { confirmed, .. }) => NeighState::Reachable { confirmed_secs: now.since(*confirmed).as_secs() },
            Some(State::Incomplete { .. }) => NeighState::Resolving,
            Some(State::Failed { .. }) => NeighState::Failed,
            None => NeighState::Unknown,
        }
    }

    /// Queues a frame for an entry that is resolving. False if there is no room.
    pub fn enqueue(&mut self, iface: Iface, ip: Ipv4Addr, q: Queued) -> bool {
        if self.queued >= QUEUE_TOTAL {
            return false;
        }
        let src = source(&q);
        if src.and_then(|s| self.by_src.get(&s)).is_some_and(|n| *n >= QUEUE_PER_SOURCE) {
            return false;
        }
        match self.map.get_mut(&(iface, ip)) {
            Some(e) if matches!(e.state, State::Incomplete { .. }) && e.queue.len() < QUEUE_PER_NEIGH => {
                e.queue.push(q);
                self.queued += 1;
                if let Some(s) = src {
                    *self.by_src.entry(s).or_insert(0) += 1;
                }
                true
            }
            _ => false,
        }
    }

    /// `ip` is at `mac` on `iface` (an ARP reply or a request from it). `create`: add an entry
    /// if there is none (only when the ARP was aimed at us, as Linux does).
    pub fn confirm(&mut self, now: Instant, iface: Iface, ip: Ipv4Addr, mac: MacAddr, create: bool, work: &mut Work) {
        self.gen = self.gen.wrapping_add(1);
        if !self.map.contains_key(&(iface, ip)) && !(create && (self.map.len() < self.cap || self.gc(now))) {
            return;
        }
        let e = self.map.entry((iface, ip)).or_insert(Entry { state: State::Failed { until: now }, queue: Vec::new() });
        e.state = State::Reachable { mac, confirmed: now, probed: now, probes: 0 };
        self.queued -= e.queue.len();
        for q in e.queue.drain(..) {
            release(&mut self.by_src, &q);
            work.ready.push((iface, mac, q));
        }
    }

    /// Every resolved entry: (interface, address, MAC).
    pub fn resolved(&self) -> impl Iterator<Item = (Iface, Ipv4Addr, MacAddr)> + '_ {
        self.map.iter().filter_map(|((i, ip), e)| match e.state {
            State::Reachable { mac, .. } => Some((*i, *ip, mac)),
            _ => None,
        })
    }

    pub fn poll_at(&self) -> Instant {
        self.next_timer
    }

    /// Retries and failures of incomplete entries.
    pub fn poll(&mut self, now: Instant, work: &mut Work) {
        if now < self.next_timer {
            return;
        }
        // Only incomplete entries change here, and the cache holds none.
        let mut next = Instant(u64::MAX);
        let mut drained = 0;
        for ((iface, ip), e) in self.map.iter_mut() {
            if let State::Incomplete { tries, next: at } = &mut e.state {
                if *at <= now {
                    if *tries < RETRIES {
                        *tries += 1;
                        *at = now + RETRY_EVERY;
                        work.requests.push((*iface, *ip, None));
                    } else {
                        e.state = State::Failed { until: now + FAIL_HOLD };
                        drained += e.queue.len();
                        for q in e.queue.drain(..) {
                            release(&mut self.by_src, &q);
                            work.failed.push((*iface, q));
                        }
                        continue;
                    }
                }
                next = next.min(*at);
            }
        }
        self.queued -= drained;
        self.next_timer = next;
    }

    /// Forgets every neighbour (and queued frame) on interfaces `keep` rejects: a network a
    /// reload removed or renumbered.
    pub fn forget(&mut self, keep: impl Fn(Iface) -> bool) {
        self.gen = self.gen.wrapping_add(1);
        let (by_src, queued) = (&mut self.by_src, &mut self.queued);
        self.map.retain(|(iface, _), e| {
            if keep(*iface) {
                return true;
            }
            for q in &e.queue {
                release(by_src, q);
                *queued -= 1;
            }
            false
        });
    }

    /// Forgets one neighbour (and its queued frames): its address now belongs to another VM.
    pub fn forget_addr(&mut self, iface: Iface, ip: Ipv4Addr) {
        self.gen = self.gen.wrapping_add(1);
        if let Some(e) = self.map.remove(&(iface, ip)) {
            for q in &e.queue {
                release(&mut self.by_src, q);
            }
            self.queued -= e.queue.len();
        }
    }

    /// Makes room: drops failed entries and long-stale ones. True if something was freed.
    fn gc(&mut self, now: Instant) -> bool {
        self.gen = self.gen.wrapping_add(1);
        let before = self.map.len();
        self.map.retain(|_, e| match e.state {
            State::Failed { until } => until > now,
            State::Reachable { confirmed, .. } => now.since(confirmed) < STALE_GC,
            State::Incomplete { .. } => true,
        });
        self.map.len() < before
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::switch::NetId;

    fn q() -> Queued {
        Queued { frame: vec![0; 60], vnet: VnetHdr::default(), origin: None }
    }

    fn mac_of(r: Resolve) -> Option<MacAddr> {
        match r {
            Resolve::Mac(m) => Some(m),
            _ => None,
        }
    }

    #[test]
    fn cached_answers_follow_the_table() {
        let mut n = Neighbours::new(8);
        let (i, j) = (Iface::Net(NetId(0)), Iface::Net(NetId(1)));
        let ip = Ipv4Addr::new(10, 1, 1, 11);
        let (a, b) = (MacAddr([2, 0, 0, 0, 0, 0xa]), MacAddr([2, 0, 0, 0, 0, 0xb]));
        let t0 = Instant::from_secs(1);
        let mut w = Work::default();
        n.confirm(t0, i, ip, a, true, &mut w);
        assert_eq!(mac_of(n.resolve(t0, i, ip, &mut w)), Some(a));
        assert_eq!(mac_of(n.resolve(t0, i, ip, &mut w)), Some(a), "from the cache");
        // The same address on another interface is another neighbour.
        assert!(matches!(n.resolve(t0, j, ip, &mut w), Resolve::Pending));
        // It moved: the cache does not keep the old MAC.
        n.confirm(t0, i, ip, b, false, &mut w);
        assert_eq!(mac_of(n.resolve(t0, i, ip, &mut w)), Some(b));
        // Forgotten (its address went to another VM): resolved afresh.
        n.forget_addr(i, ip);
        w = Work::default();
        assert!(matches!(n.resolve(t0, i, ip, &mut w), Resolve::Pending));
        assert_eq!(w.requests.len(), 1);
        // Past the reachable time the cache steps aside and the entry is probed.
        n.confirm(t0, i, ip, a, true, &mut w);
        let _ = n.resolve(t0, i, ip, &mut w);
        let mut w = Work::default();
        assert_eq!(mac_of(n.resolve(t0 + REACHABLE, i, ip, &mut w)), Some(a));
        assert_eq!(w.requests, vec![(i, ip, Some(a))], "a unicast probe");
    }

    #[test]
    fn resolve_queue_retry_fail_then_confirm() {
        let mut n = Neighbours::new(8);
        let i = Iface::Net(NetId(0));
        let ip = Ipv4Addr::new(10, 1, 1, 11);
        let mut w = Work::default();
        let t0 = Instant::from_secs(1);
        assert!(matches!(n.resolve(t0, i, ip, &mut w), Resolve::Pending));
        assert_eq!(w.requests.len(), 1);
        for _ in 0..QUEUE_PER_NEIGH {
            assert!(n.enqueue(i, ip, q()));
        }
        assert!(!n.enqueue(i, ip, q()), "per-neighbour cap");
        // Two retries, then failure returns the queue.
        let mut w = Work::default();
        n.poll(t0 + Duration::from_secs(1), &mut w);
        n.poll(t0 + Duration::from_secs(2), &mut w);
        assert_eq!(w.requests.len(), 2);
        n.poll(t0 + Duration::from_secs(3), &mut w);
        assert_eq!(w.failed.len(), QUEUE_PER_NEIGH);
        assert!(matches!(n.resolve(t0 + Duration::from_secs(4), i, ip, &mut w), Resolve::Failed));
        // After the hold, a new attempt; a reply releases what was queued since.
        let t1 = t0 + Duration::from_secs(7);
        assert!(matches!(n.resolve(t1, i, ip, &mut w), Resolve::Pending));
        assert!(n.enqueue(i, ip, q()));
        let mut w = Work::default();
        let mac = MacAddr([0x52, 0x54, 0, 0, 0, 0x11]);
        n.confirm(t1, i, ip, mac, false, &mut w);
        assert_eq!(w.ready.len(), 1);
        assert!(matches!(n.resolve(t1, i, ip, &mut w), Resolve::Mac(m) if m == mac));
        // Stale: still used, probed once per PROBE_EVERY.
        let mut w = Work::default();
        let t2 = t1 + REACHABLE;
        assert!(matches!(n.resolve(t2, i, ip, &mut w), Resolve::Mac(_)));
        assert!(matches!(n.resolve(t2, i, ip, &mut w), Resolve::Mac(_)));
        assert_eq!(w.requests.len(), 1);
        // Probes nobody answers: after RETRIES of them it is resolved afresh.
        let mut t = t2;
        for _ in 1..RETRIES {
            t = t + PROBE_EVERY;
            assert!(matches!(n.resolve(t, i, ip, &mut w), Resolve::Mac(_)));
        }
        assert!(matches!(n.resolve(t + PROBE_EVERY, i, ip, &mut w), Resolve::Pending));
    }

    #[test]
    fn capped() {
        let mut n = Neighbours::new(2);
        let mut w = Work::default();
        let i = Iface::Public;
        let t = Instant::from_secs(1);
        for k in 0..2 {
            assert!(matches!(n.resolve(t, i, Ipv4Addr::new(203, 0, 113, k), &mut w), Resolve::Pending));
        }
        assert!(matches!(n.resolve(t, i, Ipv4Addr::new(203, 0, 113, 9), &mut w), Resolve::Failed));
        assert_eq!(n.len(), 2);
    }

    /// One sender queueing for many silent neighbours holds at most its share; another
    /// sender still queues; the share comes back when the frames leave.
    #[test]
    fn one_sender_cannot_fill_the_queue() {
        let frame_from = |src: [u8; 4]| {
            let mut f = vec![0u8; 14 + 20];
            f[12..14].copy_from_slice(&[8, 0]);
            f[14] = 0x45;
            f[16..18].copy_from_slice(&20u16.to_be_bytes());
            f[26..30].copy_from_slice(&src);
            Queued { frame: f, vnet: VnetHdr::default(), origin: None }
        };
        let mut n = Neighbours::new(4096);
        let i = Iface::Net(NetId(0));
        let mut w = Work::default();
        let t = Instant(1_000);
        let mut taken = 0;
        for k in 0..32u8 {
            let ip = Ipv4Addr::new(10, 9, 0, k);
            let _ = n.resolve(t, i, ip, &mut w);
            for _ in 0..QUEUE_PER_NEIGH {
                taken += usize::from(n.enqueue(i, ip, frame_from([10, 1, 1, 11])));
            }
        }
        assert_eq!(taken, QUEUE_PER_SOURCE as usize);
        let other = Ipv4Addr::new(10, 9, 1, 1);
        let _ = n.resolve(t, i, other, &mut w);
        assert!(n.enqueue(i, other, frame_from([10, 1, 1, 12])), "another sender still queues");
        // The first sender's frames fail (no answer): its share is free again.
        for s in 1..=4u64 {
            n.poll(Instant(1_000 + s * 1_000), &mut w);
        }
        let again = Ipv4Addr::new(10, 9, 2, 1);
        let _ = n.resolve(Instant(10_000), i, again, &mut w);
        assert!(n.enqueue(i, again, frame_from([10, 1, 1, 11])));
    }

    /// Frames source-NATed to one public address are counted against their senders as they
    /// arrived (the origin's quote), not against the shared public address.
    #[test]
    fn shares_are_by_sender_before_nat() {
        let natted = |sender: [u8; 4]| {
            let mut f = vec![0u8; 14 + 20];
            f[12..14].copy_from_slice(&[8, 0]);
            f[14] = 0x45;
            f[16..18].copy_from_slice(&20u16.to_be_bytes());
            f[26..30].copy_from_slice(&[203, 0, 113, 10]);
            let mut quote = f[14..].to_vec();
            quote[12..16].copy_from_slice(&sender);
            Queued { frame: f, vnet: VnetHdr::default(), origin: Some(Origin { iface: Iface::Net(NetId(0)), mac: MacAddr([2, 0, 0, 0, 0, 1]), quote }) }
        };
        let mut n = Neighbours::new(4096);
        let i = Iface::Public;
        let mut w = Work::default();
        let t = Instant(1_000);
        for k in 0..8u8 {
            let ip = Ipv4Addr::new(198, 51, 100, k);
            let _ = n.resolve(t, i, ip, &mut w);
            for _ in 0..QUEUE_PER_NEIGH {
                let _ = n.enqueue(i, ip, natted([10, 1, 1, 66]));
            }
        }
        let other = Ipv4Addr::new(198, 51, 100, 200);
        let _ = n.resolve(t, i, other, &mut w);
        assert!(n.enqueue(i, other, natted([10, 1, 1, 12])), "another guest behind the same public address still queues");
        assert!(!n.enqueue(i, other, natted([10, 1, 1, 66])), "the first guest is over its share");
    }
}
