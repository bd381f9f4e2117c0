//! The forwarding database: (network, MAC) -> port, with aging and hard size caps.
//!
//! Keyed by guest-controlled bytes, so it uses a randomly seeded foldhash and never grows past
//! `max_per_net` entries per network or `max_per_port` entries per limited port. Invariant:
//! `per_net[n]` and `per_port[p]` equal the number of entries for network n / port p.

use super::{NetId, PortId};
use crate::time::Instant;
use crate::wire::ethernet::MacAddr;
use std::collections::HashMap;
use std::time::Duration;

#[derive(Debug, Clone, Copy)]
pub struct Entry {
    pub port: PortId,
    pub last_seen: Instant,
    /// Configured (a port-security guest's own MAC): never ages, never moves.
    pub fixed: bool,
    /// From an EVPN route (behind a VTEP): never ages; stays until withdrawn, or until the
    /// MAC shows up on another port (it moved).
    pub remote: bool,
}

/// Why a source address was not learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LearnError {
    NetFull,
    PortLimit,
    /// The MAC is pinned to another port.
    Pinned,
}

/// What learning did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Learned {
    New,
    Refreshed,
    Moved { from: PortId },
}

/// (network, MAC) packed in one word (the MAC as [`MacAddr::to_bits`]): every frame hashes it
/// twice (learn and lookup), and one u64 is one multiply for foldhash where the tuple was
/// three writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key(u64);

impl Key {
    fn new(net: NetId, mac: MacAddr) -> Key {
        Key(u64::from(net.0) << 48 | mac.to_bits())
    }
    fn net(self) -> NetId {
        NetId((self.0 >> 48) as u16)
    }
    fn mac(self) -> MacAddr {
        MacAddr::from_bits(self.0)
    }
}

pub struct Fdb {
    map: HashMap<Key, Entry, foldhash::fast::RandomState>,
    per_net: Vec<usize>,
    per_port: Vec<usize>,
    /// `None`: this port is bounded by the network cap only (trunks).
    port_cap: Vec<Option<usize>>,
    max_per_net: usize,
    aging: Duration,
    /// Per port, the source it last refreshed and until when that refresh stands: a port's
    /// frames mostly come from one MAC, so the per-frame learn is a compare, not a hash
    /// lookup. Valid only while `gen` is unchanged.
    recent: Vec<Option<(Key, Instant, u32)>>,
    /// Per ingress port, the destination it last looked up, where that was, and until when the
    /// entry is sure not to age out: a flow's frames are a compare here, not a hash lookup.
    /// Valid only while `gen` is unchanged.
    recent_dst: Vec<Option<(Key, PortId, Instant, u32)>>,
    /// Bumped by every change that can move or remove an existing entry (a new entry changes
    /// none), so a cached answer never outlives what it cached.
    gen: u32,
}

/// How stale a cached refresh may make `last_seen`: a small share of the aging time, so an
/// entry can age out at most this much early, and never more than a second.
fn refresh_every(aging: Duration) -> Duration {
    (aging / 16).min(Duration::from_secs(1))
}

impl Fdb {
    pub fn new(nets: usize, port_cap: Vec<Option<usize>>, max_per_net: usize, aging: Duration) -> Self {
        Fdb {
            map: HashMap::with_capacity_and_hasher(64, foldhash::fast::RandomState::default()),
            per_net: vec![0; nets],
            per_port: vec![0; port_cap.len()],
            recent: vec![None; port_cap.len()],
            recent_dst: vec![None; port_cap.len() + 1],
            port_cap,
            max_per_net,
            aging,
            gen: 0,
        }
    }

    fn changed(&mut self) {
        self.gen = self.gen.wrapping_add(1);
    }

    fn expired(&self, e: &Entry, now: Instant) -> bool {
        !e.fixed && !e.remote && now.since(e.last_seen) > self.aging
    }

    /// Pins `mac` to `port` (a port-security guest's configured MAC). Counts against the
    /// network's table but not against the port's learning limit.
    pub fn pin(&mut self, net: NetId, mac: MacAddr, port: PortId) {
        self.changed();
        let old = self.map.insert(Key::new(net, mac), Entry { port, last_seen: Instant::ZERO, fixed: true, remote: false });
        match old {
            None => self.per_net[net.0 as usize] += 1,
            Some(e) if !e.fixed => self.per_port[e.port.0 as usize] -= 1,
            Some(_) => {}
        }
    }

    fn port_full(&self, p: PortId) -> bool {
        self.port_cap[p.0 as usize].is_some_and(|c| self.per_port[p.0 as usize] >= c)
    }

    /// Records that `mac` was seen on `port` in `net`.
    #[inline]
    pub fn learn(&mut self, net: NetId, mac: MacAddr, port: PortId, now: Instant) -> Result<Learned, LearnError> {
        // Every frame comes here: the common case (the port's usual MAC, refreshed moments
        // ago) is a compare; the next most common (a known MAC on its port) one lookup.
        let key = Key::new(net, mac);
        let p = port.0 as usize;
        if let Some(Some((k, until, gen))) = self.recent.get(p) {
            if *k == key && *gen == self.gen && now < *until {
                return Ok(Learned::Refreshed);
            }
        }
        self.learn_lookup(key, net, port, now)
    }

    /// [`Self::learn`] past the port's cached source: the table itself.
    #[inline(never)]
    fn learn_lookup(&mut self, key: Key, net: NetId, port: PortId, now: Instant) -> Result<Learned, LearnError> {
        let p = port.0 as usize;
        let refresh = refresh_every(self.aging);
        let known = match self.map.get_mut(&key) {
            Some(e) if e.fixed => return if e.port == port { Ok(Learned::Refreshed) } else { Err(LearnError::Pinned) },
            Some(e) if e.port == port => {
                e.last_seen = now;
                if let Some(r) = self.recent.get_mut(p) {
                    *r = Some((key, now + refresh, self.gen));
                }
                return Ok(Learned::Refreshed);
            }
            Some(e) => Some(*e),
            None => None,
        };
        if let Some(e) = known {
            if self.port_full(port) {
                return Err(LearnError::PortLimit);
            }
            self.changed();
            self.per_port[e.port.0 as usize] -= 1;
            self.per_port[p] += 1;
            self.map.insert(key, Entry { port, last_seen: now, fixed: false, remote: false });
            return Ok(Learned::Moved { from: e.port });
        }
        if self.per_net[net.0 as usize] >= self.max_per_net {
            return Err(LearnError::NetFull);
        }
        if self.port_full(port) {
            return Err(LearnError::PortLimit);
        }
        // A new entry changes no existing one: the caches stay valid.
        self.per_net[net.0 as usize] += 1;
        self.per_port[p] += 1;
        self.map.insert(key, Entry { port, last_seen: now, fixed: false, remote: false });
        Ok(Learned::New)
    }

    /// The port `mac` was learned on, unless the entry has aged out.
    pub fn lookup(&self, net: NetId, mac: MacAddr, now: Instant) -> Option<PortId> {
        self.map.get(&Key::new(net, mac)).filter(|e| !self.expired(e, now)).map(|e| e.port)
    }

    /// [`Self::lookup`] for a frame that arrived on `from`, remembering the answer for that
    /// port's next frames (ports past the table's, such as the router's, share one slot).
    #[inline]
    pub fn lookup_from(&mut self, from: PortId, net: NetId, mac: MacAddr, now: Instant) -> Option<PortId> {
        let key = Key::new(net, mac);
        let slot = (from.0 as usize).min(self.recent_dst.len() - 1);
        if let Some(Some((k, p, until, gen))) = self.recent_dst.get(slot) {
            if *k == key && *gen == self.gen && now < *until {
                return Some(*p);
            }
        }
        let e = *self.map.get(&key).filter(|e| !self.expired(e, now))?;
        let until = self.sure_until(&e);
        if let Some(r) = self.recent_dst.get_mut(slot) {
            *r = Some((key, e.port, until, self.gen));
        }
        Some(e.port)
    }

    /// Until when an entry is sure not to age out, its generation unchanged: a fixed or
    /// remote entry never ages; a learned one lives at least until its last_seen plus the
    /// aging time.
    fn sure_until(&self, e: &Entry) -> Instant {
        if e.fixed || e.remote {
            Instant(u64::MAX)
        } else {
            e.last_seen + self.aging
        }
    }

    /// [`Self::lookup`]'s answer and until when it stands while [`Self::gen`] is unchanged.
    pub fn lookup_until(&self, net: NetId, mac: MacAddr, now: Instant) -> Option<(PortId, Instant)> {
        let e = self.map.get(&Key::new(net, mac)).filter(|e| !self.expired(e, now))?;
        Some((e.port, self.sure_until(e)))
    }

    /// Changes with every change that can move or remove an existing entry.
    pub fn gen(&self) -> u32 {
        self.gen
    }

    /// The entry for `mac` in `net`, aged or not.
    pub fn iter_one(&self, net: NetId, mac: MacAddr) -> Option<Entry> {
        self.map.get(&Key::new(net, mac)).copied()
    }

    /// Removes aged-out entries; returns how many.
    pub fn expire(&mut self, now: Instant) -> usize {
        self.changed();
        let aging = self.aging;
        let (per_net, per_port) = (&mut self.per_net, &mut self.per_port);
        let before = self.map.len();
        self.map.retain(|k, e| {
            let net = k.net();
            let keep = e.fixed || e.remote || now.since(e.last_seen) <= aging;
            if !keep {
                per_net[net.0 as usize] -= 1;
                per_port[e.port.0 as usize] -= 1;
            }
            keep
        });
        before - self.map.len()
    }

    /// New limits after a reload: `nets` network slots, the ports' caps; learned entries for
    /// which `keep(net, port)` holds stay, every other one (and every pinned one: the caller
    /// pins again) goes.
    pub fn reconfigure(&mut self, nets: usize, port_cap: Vec<Option<usize>>, max_per_net: usize, aging: Duration, keep: impl Fn(NetId, PortId) -> bool) {
        let (mut per_net, mut per_port) = (vec![0usize; nets], vec![0usize; port_cap.len()]);
        self.map.retain(|k, e| {
            let net = k.net();
            let ok = !e.fixed && (net.0 as usize) < nets && (e.port.0 as usize) < port_cap.len() && keep(net, e.port);
            if ok {
                per_net[net.0 as usize] += 1;
                per_port[e.port.0 as usize] += 1;
            }
            ok
        });
        self.per_net = per_net;
        self.per_port = per_port;
        self.recent = vec![None; port_cap.len()];
        self.recent_dst = vec![None; port_cap.len() + 1];
        self.changed();
        self.port_cap = port_cap;
        self.max_per_net = max_per_net;
        self.aging = aging;
    }

    /// Puts `mac` behind `port` (a VTEP) as an EVPN route says, over whatever was learned; a
    /// configured MAC stays. False if refused (pinned here, or the network's table is full).
    pub fn install_remote(&mut self, net: NetId, mac: MacAddr, port: PortId, now: Instant) -> bool {
        self.changed();
        match self.map.get_mut(&Key::new(net, mac)) {
            Some(e) if e.fixed => false,
            Some(e) => {
                if e.port != port {
                    self.per_port[e.port.0 as usize] -= 1;
                    self.per_port[port.0 as usize] += 1;
                }
                *e = Entry { port, last_seen: now, fixed: false, remote: true };
                true
            }
            None if self.per_net[net.0 as usize] >= self.max_per_net => false,
            None => {
                self.per_net[net.0 as usize] += 1;
                self.per_port[port.0 as usize] += 1;
                self.map.insert(Key::new(net, mac), Entry { port, last_seen: now, fixed: false, remote: true });
                true
            }
        }
    }

    /// Removes the EVPN entries for which `keep` is false (their routes were withdrawn).
    pub fn retain_remote(&mut self, keep: impl Fn(NetId, MacAddr, PortId) -> bool) {
        self.changed();
        let (per_net, per_port) = (&mut self.per_net, &mut self.per_port);
        self.map.retain(|k, e| {
            let net = k.net();
            let ok = !e.remote || keep(net, k.mac(), e.port);
            if !ok {
                per_net[net.0 as usize] -= 1;
                per_port[e.port.0 as usize] -= 1;
            }
            ok
        });
    }

    /// Forgets everything learned on `port` (port removed or link lost).
    pub fn flush_port(&mut self, port: PortId) {
        self.changed();
        let (per_net, per_port) = (&mut self.per_net, &mut self.per_port);
        self.map.retain(|k, e| {
            let net = k.net();
            if e.port == port && !e.fixed {
                per_net[net.0 as usize] -= 1;
                per_port[port.0 as usize] -= 1;
                false
            } else {
                true
            }
        });
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
    pub fn port_count(&self, p: PortId) -> usize {
        self.per_port[p.0 as usize]
    }
    pub fn net_count(&self, n: NetId) -> usize {
        self.per_net[n.0 as usize]
    }
    pub fn iter(&self) -> impl Iterator<Item = (NetId, MacAddr, Entry)> + '_ {
        self.map.iter().map(|(k, e)| (k.net(), k.mac(), *e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(i: u8) -> MacAddr {
        MacAddr([2, 0, 0, 0, 0, i])
    }
    const N: NetId = NetId(0);

    #[test]
    fn key_packs_network_and_mac_and_gives_them_back() {
        let k = Key::new(NetId(0x0102), MacAddr([0xfe, 0x54, 0x00, 0x12, 0x34, 0x56]));
        assert_eq!(k.0, 0x0102_5634_1200_54fe);
        assert_eq!(k.net(), NetId(0x0102));
        assert_eq!(k.mac(), MacAddr([0xfe, 0x54, 0x00, 0x12, 0x34, 0x56]));
        // The same MAC in two networks is two entries.
        let mut f = Fdb::new(2, vec![None, None], 100, Duration::from_secs(300));
        f.learn(NetId(0), mac(1), PortId(0), Instant::from_secs(1)).unwrap();
        f.learn(NetId(1), mac(1), PortId(1), Instant::from_secs(1)).unwrap();
        assert_eq!(f.lookup(NetId(0), mac(1), Instant::from_secs(2)), Some(PortId(0)));
        assert_eq!(f.lookup(NetId(1), mac(1), Instant::from_secs(2)), Some(PortId(1)));
        let mut all: Vec<_> = f.iter().map(|(n, m, e)| (n, m, e.port)).collect();
        all.sort_by_key(|(n, _, _)| n.0);
        assert_eq!(all, vec![(NetId(0), mac(1), PortId(0)), (NetId(1), mac(1), PortId(1))]);
    }

    #[test]
    fn cached_refresh_never_hides_a_change() {
        let mut f = Fdb::new(1, vec![None, None], 100, Duration::from_secs(300));
        let t = Instant::from_secs(10);
        assert_eq!(f.learn(N, mac(1), PortId(0), t), Ok(Learned::New));
        assert_eq!(f.learn(N, mac(1), PortId(0), t), Ok(Learned::Refreshed));
        assert_eq!(f.learn(N, mac(1), PortId(0), t), Ok(Learned::Refreshed), "from port 0's cache");
        // It moved to port 1 and back: port 0's cached refresh must not pass for the entry.
        assert_eq!(f.learn(N, mac(1), PortId(1), t), Ok(Learned::Moved { from: PortId(0) }));
        assert_eq!(f.learn(N, mac(1), PortId(0), t), Ok(Learned::Moved { from: PortId(1) }));
        assert_eq!(f.lookup(N, mac(1), t), Some(PortId(0)));
        // Flushed with its port: learned anew, not refreshed from the cache.
        assert_eq!(f.learn(N, mac(1), PortId(0), t), Ok(Learned::Refreshed));
        f.flush_port(PortId(0));
        assert_eq!(f.learn(N, mac(1), PortId(0), t), Ok(Learned::New));
        // A refresh from the cache leaves last_seen at most a second behind: with traffic every
        // 100 ms the entry never ages out.
        let mut g = Fdb::new(1, vec![None], 100, Duration::from_secs(2));
        for ms in (0..10_000).step_by(100) {
            g.learn(N, mac(2), PortId(0), Instant::from_millis(1000 + ms)).unwrap();
            if ms % 1000 == 0 {
                g.expire(Instant::from_millis(1000 + ms));
            }
            assert_eq!(g.lookup(N, mac(2), Instant::from_millis(1000 + ms)), Some(PortId(0)), "at {ms} ms");
        }
    }

    #[test]
    fn cached_lookups_follow_the_table() {
        let mut f = Fdb::new(1, vec![None, None, None], 100, Duration::from_secs(300));
        let t = Instant::from_secs(10);
        f.learn(N, mac(1), PortId(1), t).unwrap();
        assert_eq!(f.lookup_from(PortId(0), N, mac(1), t), Some(PortId(1)));
        assert_eq!(f.lookup_from(PortId(0), N, mac(1), t), Some(PortId(1)), "from port 0's cache");
        f.learn(N, mac(1), PortId(2), t).unwrap();
        assert_eq!(f.lookup_from(PortId(0), N, mac(1), t), Some(PortId(2)), "it moved");
        // The cache never outlives the entry's age.
        assert_eq!(f.lookup_from(PortId(0), N, mac(1), Instant::from_secs(310)), Some(PortId(2)));
        assert_eq!(f.lookup_from(PortId(0), N, mac(1), Instant::from_millis(310_001)), None);
        // The router's port (past the table's ports) has a slot too.
        f.learn(N, mac(1), PortId(1), t).unwrap();
        assert_eq!(f.lookup_from(PortId(u16::MAX), N, mac(1), t), Some(PortId(1)));
        f.flush_port(PortId(1));
        assert_eq!(f.lookup_from(PortId(u16::MAX), N, mac(1), t), None);
        assert_eq!(f.lookup_from(PortId(0), N, mac(3), t), None);
    }

    #[test]
    fn aging_on_virtual_time() {
        let mut f = Fdb::new(1, vec![None, None], 100, Duration::from_secs(300));
        f.learn(N, mac(1), PortId(0), Instant::from_secs(10)).unwrap();
        assert_eq!(f.lookup(N, mac(1), Instant::from_secs(310)), Some(PortId(0)));
        assert_eq!(f.lookup(N, mac(1), Instant::from_millis(310_001)), None);
        // Traffic refreshes the entry.
        f.learn(N, mac(1), PortId(0), Instant::from_secs(300)).unwrap();
        assert_eq!(f.expire(Instant::from_secs(599)), 0);
        assert_eq!(f.expire(Instant::from_secs(601)), 1);
        assert_eq!(f.net_count(N), 0);
        assert_eq!(f.port_count(PortId(0)), 0);
    }

    #[test]
    fn table_and_port_limits() {
        let mut f = Fdb::new(2, vec![Some(2), None], 3, Duration::from_secs(300));
        let t = Instant::ZERO;
        f.learn(N, mac(1), PortId(0), t).unwrap();
        f.learn(N, mac(2), PortId(0), t).unwrap();
        assert_eq!(f.learn(N, mac(3), PortId(0), t), Err(LearnError::PortLimit));
        f.learn(N, mac(3), PortId(1), t).unwrap();
        assert_eq!(f.learn(N, mac(4), PortId(1), t), Err(LearnError::NetFull));
        // Another network has its own table.
        f.learn(NetId(1), mac(4), PortId(1), t).unwrap();
        // Known MACs still refresh when the table is full.
        assert_eq!(f.learn(N, mac(3), PortId(1), t), Ok(Learned::Refreshed));
    }

    #[test]
    fn pinned_macs_never_age_or_move() {
        let mut f = Fdb::new(1, vec![Some(1), None], 10, Duration::from_secs(300));
        f.pin(N, mac(1), PortId(0));
        assert_eq!(f.learn(N, mac(1), PortId(1), Instant::ZERO), Err(LearnError::Pinned));
        assert_eq!(f.learn(N, mac(1), PortId(0), Instant::ZERO), Ok(Learned::Refreshed));
        assert_eq!(f.expire(Instant::from_secs(100_000)), 0);
        assert_eq!(f.lookup(N, mac(1), Instant::from_secs(100_000)), Some(PortId(0)));
        assert_eq!(f.port_count(PortId(0)), 0, "pins do not use the learning limit");
        assert_eq!(f.net_count(N), 1);
        f.flush_port(PortId(0));
        assert_eq!(f.lookup(N, mac(1), Instant::ZERO), Some(PortId(0)), "pins survive a flush");
    }

    #[test]
    fn mac_move_updates_counts() {
        let mut f = Fdb::new(1, vec![None, None], 10, Duration::from_secs(300));
        f.learn(N, mac(1), PortId(0), Instant::ZERO).unwrap();
        assert_eq!(f.learn(N, mac(1), PortId(1), Instant::ZERO), Ok(Learned::Moved { from: PortId(0) }));
        assert_eq!(f.lookup(N, mac(1), Instant::ZERO), Some(PortId(1)));
        assert_eq!((f.port_count(PortId(0)), f.port_count(PortId(1))), (0, 1));
        f.flush_port(PortId(1));
        assert!(f.is_empty());
        assert_eq!(f.net_count(N), 0);
    }
}
