//! The flow cache: the last forwarding of each established flow direction, replayed for the
//! packets after it without the router's per-packet checks and the two table walks to the
//! egress port (next hop, then the MAC table).
//!
//! Conntrack already decides once per flow; what it left per packet was re-checking what the
//! flow direction and the configuration settle (the source may use that network, the
//! destination is no broadcast, the flow came in where it should) and re-walking the
//! neighbour and MAC tables, about a third of a routed frame's instructions. An entry holds
//! the answers for one conntrack slot (`idx << 1 | dir`), direct-mapped by slot number like
//! OVS's exact-match cache, so a lookup is one index and a few compares after the conntrack
//! lookup the packet makes anyway.
//!
//! Invariant: an entry is used only while everything it was made from is unchanged: the
//! same decision of the same flow ([`crate::conntrack::Flow::serial`]), the same interface of
//! arrival (all the router sees of where a packet came from), the same generation of the
//! configuration (bumped by every reload), of the MAC table and of the neighbour table (each
//! bumped by every change that can move or remove an answer), and before the time either
//! table's answer could age out. What depends on the packet itself (TTL, fragments, TCP
//! SYN/RST, header checksum, size against the MTU) is checked per packet by
//! `Router::established` and here (offload metadata was checked at
//! ingress); a packet that fails any of it takes the full path, which counts its drop or
//! does its work, and notes how it forwarded the packet for the next one. The datapath's
//! test `flow_cache_differential` holds the two paths to the same frames and counters. Ingress (port security, the guest guard, security groups, learning, DHCP
//! interception) runs before the cache, egress (security groups, tags, offloads) after it,
//! as for every frame.

use crate::router::{Hop, Iface};
use crate::switch::{NetId, PortId};
use crate::time::Instant;
use crate::wire::ethernet::MacAddr;

/// Entries (a power of two): flows past this many share entries and take turns.
const ENTRIES: usize = 4096;

/// One miss in this many on an entry another live flow holds refills it.
const CONTENDED_FILL: u32 = 8;

/// A slot number no flow has (conntrack holds fewer than 2^31 flows).
const EMPTY: u32 = u32::MAX;

/// The generations an entry depends on: the configuration's, the MAC table's, the neighbour
/// table's.
pub(crate) type Gens = (u32, u32, u32);

#[derive(Debug, Clone, Copy)]
pub(crate) struct Entry {
    slot: u32,
    serial: u32,
    from: Iface,
    /// Where the packets go: the egress port, its network (`None`: the public port), the
    /// next hop's MAC.
    pub port: PortId,
    pub net: Option<NetId>,
    pub mac: MacAddr,
    /// Largest IP packet the egress takes unfragmented.
    mtu: usize,
    gens: Gens,
    until: Instant,
}

const VACANT: Entry = Entry {
    slot: EMPTY,
    serial: 0,
    from: Iface::Public,
    port: PortId(0),
    net: None,
    mac: MacAddr::ZERO,
    mtu: 0,
    gens: (0, 0, 0),
    until: Instant::ZERO,
};

/// How often the cache answered and how often the full path filled it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct FlowCacheStats {
    pub hits: u64,
    pub fills: u64,
}

pub(crate) struct FlowCache {
    entries: Box<[Entry]>,
    /// The configuration's generation (see [`Self::invalidate`]).
    gen: u32,
    on: bool,
    /// Misses on entries another live flow held (see [`Self::wants`]).
    contended: u32,
    pub stats: FlowCacheStats,
}

impl Default for FlowCache {
    fn default() -> Self {
        FlowCache { entries: vec![VACANT; ENTRIES].into_boxed_slice(), gen: 0, on: true, contended: 0, stats: FlowCacheStats::default() }
    }
}

impl FlowCache {
    /// The configuration's generation, for [`Gens`].
    pub fn gen(&self) -> u32 {
        self.gen
    }

    /// Forgets every entry (a reload: any answer may have changed).
    pub fn invalidate(&mut self) {
        self.gen = self.gen.wrapping_add(1);
    }

    /// Off: never answers, never fills (the full path alone; tests compare the two).
    pub fn set_on(&mut self, on: bool) {
        self.on = on;
        self.invalidate();
    }

    /// The entry for this packet: flow slot and decision, the interface it came in on (the
    /// router sees no more of where it came from), the largest IP packet it makes on the
    /// wire, the tables' current generations and the time.
    #[inline]
    pub(crate) fn get(&self, slot: u32, serial: u32, from: Iface, wire: usize, gens: Gens, now: Instant) -> Option<&Entry> {
        let e = &self.entries[slot as usize & (ENTRIES - 1)];
        (e.slot == slot && e.serial == serial && e.from == from && wire <= e.mtu && e.gens == gens && now < e.until).then_some(e)
    }

    /// Whether the full path should note how it forwards a packet of `slot` that missed:
    /// always when its entry is free, stale or its own; when another live flow holds it,
    /// one time in [`CONTENDED_FILL`], so that more flows than entries taking turns do not
    /// pay a fill per packet (OVS's EMC inserts with a probability for the same reason),
    /// while a flow that keeps coming still gets in.
    #[inline]
    pub(crate) fn wants(&mut self, slot: u32, gens: Gens, now: Instant) -> bool {
        let e = &self.entries[slot as usize & (ENTRIES - 1)];
        if e.slot == EMPTY || e.slot == slot || e.gens != gens || now >= e.until {
            return true;
        }
        self.contended = self.contended.wrapping_add(1);
        self.contended.is_multiple_of(CONTENDED_FILL)
    }

    /// Records how the full path just forwarded a flow direction: `hop` from the router, then
    /// the egress `port` (and network) that the MAC table gave until `port_until`. `gens`:
    /// the generations the answers were read under.
    pub(crate) fn fill(&mut self, hop: &Hop, port: PortId, net: Option<NetId>, port_until: Instant, gens: Gens) {
        if !self.on {
            return;
        }
        self.stats.fills += 1;
        self.entries[hop.slot as usize & (ENTRIES - 1)] = Entry {
            slot: hop.slot,
            serial: hop.serial,
            from: hop.from,
            port,
            net,
            mac: hop.mac,
            mtu: hop.mtu,
            gens,
            until: hop.until.min(port_until),
        };
    }

    pub fn is_on(&self) -> bool {
        self.on
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hop(slot: u32, serial: u32) -> Hop {
        Hop { slot, serial, from: Iface::Net(NetId(0)), to: Iface::Net(NetId(1)), mac: MacAddr([2, 0, 0, 0, 0, 9]), mtu: 1500, neigh_gen: 7, until: Instant(5000) }
    }

    #[test]
    fn an_entry_answers_only_what_it_was_made_from() {
        let mut c = FlowCache::default();
        let g = (c.gen(), 3, 7);
        c.fill(&hop(10, 4), PortId(2), Some(NetId(1)), Instant(4000), g);
        let now = Instant(1000);
        let e = c.get(10, 4, Iface::Net(NetId(0)), 1500, g, now).expect("a hit");
        assert_eq!((e.port, e.net, e.mac), (PortId(2), Some(NetId(1)), MacAddr([2, 0, 0, 0, 0, 9])));
        // Another decision of the flow (slot reused, or re-decided), another direction or
        // flow, another network of arrival, a bigger packet, any table changed, or
        // the earlier of the two ages reached: no answer.
        assert!(c.get(10, 5, Iface::Net(NetId(0)), 1500, g, now).is_none());
        assert!(c.get(11, 4, Iface::Net(NetId(0)), 1500, g, now).is_none());
        assert!(c.get(10 + ENTRIES as u32, 4, Iface::Net(NetId(0)), 1500, g, now).is_none());
        assert!(c.get(10, 4, Iface::Net(NetId(2)), 1500, g, now).is_none());
        assert!(c.get(10, 4, Iface::Net(NetId(0)), 1501, g, now).is_none());
        for other in [(g.0 + 1, 3, 7), (g.0, 4, 7), (g.0, 3, 8)] {
            assert!(c.get(10, 4, Iface::Net(NetId(0)), 1500, other, now).is_none());
        }
        assert!(c.get(10, 4, Iface::Net(NetId(0)), 1500, g, Instant(3999)).is_some());
        assert!(c.get(10, 4, Iface::Net(NetId(0)), 1500, g, Instant(4000)).is_none());
        c.invalidate();
        assert!(c.get(10, 4, Iface::Net(NetId(0)), 1500, (c.gen(), 3, 7), now).is_none());
        assert_eq!(c.stats, FlowCacheStats { hits: 0, fills: 1 });
    }

    #[test]
    fn a_flow_fills_a_free_stale_or_own_entry_and_one_held_by_another_only_now_and_then() {
        let mut c = FlowCache::default();
        let g = (c.gen(), 3, 7);
        let now = Instant(1000);
        assert!(c.wants(10, g, now), "free");
        c.fill(&hop(10, 4), PortId(2), None, Instant(4000), g);
        assert!(c.wants(10, g, now), "its own");
        assert!(c.wants(10 + ENTRIES as u32, (g.0, 4, 7), now), "stale: a table changed");
        assert!(c.wants(10 + ENTRIES as u32, g, Instant(5000)), "stale: aged");
        let held: Vec<bool> = (0..16).map(|_| c.wants(10 + ENTRIES as u32, g, now)).collect();
        assert_eq!(held.iter().filter(|&&w| w).count(), 16 / CONTENDED_FILL as usize, "{held:?}");
    }

    #[test]
    fn off_means_never_filled() {
        let mut c = FlowCache::default();
        c.set_on(false);
        let g = (c.gen(), 0, 7);
        c.fill(&hop(10, 4), PortId(2), None, Instant(u64::MAX), g);
        assert!(c.get(10, 4, Iface::Net(NetId(0)), 100, g, Instant(1)).is_none());
        assert_eq!(c.stats.fills, 0);
    }
}
