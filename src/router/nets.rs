//! Which network holds an address: the networks' prefixes sorted by first address, searched
//! in O(log n). Every packet from the public side asks it of its source and every routed
//! packet of its destination (a network's broadcast address is not forwarded), and an
//! instance may hold up to 4094 networks, where a scan cost microseconds a packet.
//!
//! Invariant: the answer is the linear scan's (the lowest-numbered network containing the
//! address). Config validation rejects overlapping networks; identical slots (vacant ones
//! left by a reload) keep the lowest number; should others overlap (a datapath built by
//! hand), the index steps aside and the scan answers.

use super::NetL3;
use crate::switch::NetId;
use std::net::Ipv4Addr;

#[derive(Debug, Default)]
pub(crate) struct NetIndex {
    /// (first address, last address, network), sorted by first address, disjoint.
    sorted: Vec<(u32, u32, u16)>,
    disjoint: bool,
}

impl NetIndex {
    pub(crate) fn new(nets: &[NetL3]) -> NetIndex {
        let mut sorted: Vec<(u32, u32, u16)> = nets
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let first = u32::from(n.cidr.addr) & n.cidr.mask();
                (first, first | !n.cidr.mask(), i as u16)
            })
            .collect();
        sorted.sort_unstable();
        // Identical ranges: the lowest-numbered network answers (sorted by number within).
        sorted.dedup_by(|b, a| a.0 == b.0 && a.1 == b.1);
        let disjoint = sorted.windows(2).all(|w| w[0].1 < w[1].0);
        NetIndex { sorted, disjoint }
    }

    /// The network holding `ip`, as `nets.iter().position(|n| n.cidr.contains(ip))` would
    /// say (`nets`: what the index was built from).
    #[inline]
    pub(crate) fn find(&self, nets: &[NetL3], ip: Ipv4Addr) -> Option<NetId> {
        if !self.disjoint {
            return nets.iter().position(|n| n.cidr.contains(ip)).map(|i| NetId(i as u16));
        }
        self.entry(u32::from(ip)).map(|e| NetId(e.2))
    }

    /// Whether `ip` is some network's broadcast address, as
    /// `nets.iter().any(|n| n.cidr.broadcast() == ip)` would say: that address lies in its
    /// own network alone, so only the network holding it is asked.
    #[inline]
    pub(crate) fn is_broadcast(&self, nets: &[NetL3], ip: Ipv4Addr) -> bool {
        if !self.disjoint {
            return nets.iter().any(|n| n.cidr.broadcast() == ip);
        }
        // A prefix's broadcast address is its last one, which the entry holds: the network
        // itself is not read (a chain of dependent loads on every routed packet).
        let a = u32::from(ip);
        self.entry(a).is_some_and(|&(_, last, _)| last == a)
    }

    /// The entry whose range holds `a` (disjoint ranges only).
    #[inline]
    fn entry(&self, a: u32) -> Option<&(u32, u32, u16)> {
        let i = self.sorted.partition_point(|e| e.0 <= a);
        let e = self.sorted.get(i.checked_sub(1)?)?;
        (a <= e.1).then_some(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::types::Ipv4Net;

    fn net(cidr: &str) -> NetL3 {
        NetL3 { cidr: cidr.parse::<Ipv4Net>().unwrap(), ..NetL3::vacant() }
    }

    fn scan(nets: &[NetL3], ip: Ipv4Addr) -> Option<NetId> {
        nets.iter().position(|n| n.cidr.contains(ip)).map(|i| NetId(i as u16))
    }

    #[test]
    fn answers_as_the_scan_does() {
        // Disjoint, out of order, with vacant slots in between and a /32 and a /31.
        let nets = vec![net("10.1.2.0/24"), NetL3::vacant(), net("10.1.1.0/24"), net("192.168.7.9/32"), NetL3::vacant(), net("172.16.0.0/12"), net("10.1.3.0/31")];
        let idx = NetIndex::new(&nets);
        assert!(idx.disjoint);
        let probes = ["10.1.1.0", "10.1.1.255", "10.1.2.7", "10.1.3.0", "10.1.3.1", "10.1.3.2", "10.1.0.255", "172.15.255.255", "172.16.0.0", "172.31.255.255", "172.32.0.0", "192.168.7.9", "192.168.7.8", "192.168.7.10", "0.0.0.0", "255.255.255.255", "255.255.255.254"];
        for p in probes {
            let ip: Ipv4Addr = p.parse().unwrap();
            assert_eq!(idx.find(&nets, ip), scan(&nets, ip), "{p}");
            assert_eq!(idx.is_broadcast(&nets, ip), nets.iter().any(|n| n.cidr.broadcast() == ip), "{p}");
        }
        assert_eq!(idx.find(&nets, "255.255.255.255".parse().unwrap()), Some(NetId(1)));
        assert_eq!(idx.find(&nets, "10.1.2.7".parse().unwrap()), Some(NetId(0)));
        // Many networks: every address of a sweep, against the scan.
        let many: Vec<NetL3> = (0..1000u32).rev().map(|i| net(&format!("10.{}.{}.0/24", i / 256, i % 256))).collect();
        let idx = NetIndex::new(&many);
        for a in (u32::from(Ipv4Addr::new(9, 255, 255, 0))..u32::from(Ipv4Addr::new(10, 4, 0, 10))).step_by(37).chain([0x0a03_e7ff, 0x0a03_e8ff, 0x0a00_00ff]) {
            assert_eq!(idx.find(&many, a.into()), scan(&many, a.into()));
            assert_eq!(idx.is_broadcast(&many, a.into()), many.iter().any(|n| n.cidr.broadcast() == Ipv4Addr::from(a)), "{a:#x}");
        }
        assert!(idx.is_broadcast(&many, "10.3.231.255".parse().unwrap()) && !idx.is_broadcast(&many, "10.3.232.255".parse().unwrap()));
    }

    #[test]
    fn overlapping_networks_fall_back_to_the_scan() {
        let nets = vec![net("10.0.0.0/8"), net("10.1.1.0/24")];
        let idx = NetIndex::new(&nets);
        assert!(!idx.disjoint);
        assert_eq!(idx.find(&nets, "10.1.1.5".parse().unwrap()), Some(NetId(0)));
        assert!(idx.is_broadcast(&nets, "10.1.1.255".parse().unwrap()) && idx.is_broadcast(&nets, "10.255.255.255".parse().unwrap()));
        assert_eq!(NetIndex::new(&[]).find(&[], "10.1.1.5".parse().unwrap()), None);
    }
}
