//! Rule classifiers for the public firewall and the per-network egress rules.
//!
//! A [`Classifier`] answers "which is the first rule, in configuration order, that matches this
//! protocol, port and address?" without scanning every rule: rules are split by protocol, and
//! each protocol's port space is cut into elementary intervals at the rules' range boundaries;
//! an interval lists (in order) only the rules covering it. A lookup is one binary search plus a
//! walk over the few rules of that interval. Lookups happen on a flow's first packet only; later
//! packets replay the decision stored in conntrack.

use crate::config::schema::Proto;
use crate::config::types::{Ipv4Net, PortRange};
use crate::wire::ipv4::proto;
use std::net::Ipv4Addr;

pub mod sg;

/// One rule: what it matches, and what it says.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule<T> {
    pub protocol: Proto,
    pub ports: Option<PortRange>,
    pub nets: Vec<Ipv4Net>,
    pub value: T,
}

#[derive(Debug, Clone, Default)]
struct PortIndex {
    /// Start of each elementary interval, ascending; interval i covers starts[i]..starts[i+1].
    starts: Vec<u32>,
    /// Rule indices covering each interval, in configuration order.
    rules: Vec<Vec<u32>>,
}

impl PortIndex {
    fn build<T>(rules: &[Rule<T>], wanted: impl Fn(&Rule<T>) -> bool) -> PortIndex {
        let mut cuts: Vec<u32> = vec![0, 65536];
        for r in rules.iter().filter(|r| wanted(r)) {
            if let Some(p) = r.ports {
                cuts.push(p.lo as u32);
                cuts.push(p.hi as u32 + 1);
            }
        }
        cuts.sort_unstable();
        cuts.dedup();
        cuts.pop();
        let covering = |lo: u32| -> Vec<u32> {
            rules
                .iter()
                .enumerate()
                .filter(|(_, r)| wanted(r))
                .filter(|(_, r)| r.ports.is_none_or(|p| (p.lo as u32..=p.hi as u32).contains(&lo)))
                .map(|(i, _)| i as u32)
                .collect()
        };
        let rules_per = cuts.iter().map(|&lo| covering(lo)).collect();
        PortIndex { starts: cuts, rules: rules_per }
    }

    fn candidates(&self, port: u16) -> &[u32] {
        let i = self.starts.partition_point(|&s| s <= port as u32);
        i.checked_sub(1).and_then(|i| self.rules.get(i)).map_or(&[], |v| v.as_slice())
    }
}

#[derive(Debug, Clone)]
pub struct Classifier<T> {
    rules: Vec<Rule<T>>,
    tcp: PortIndex,
    udp: PortIndex,
    icmp: PortIndex,
    other: PortIndex,
}

impl<T> Classifier<T> {
    pub fn new(rules: Vec<Rule<T>>) -> Self {
        let has = |want: Proto| move |r: &Rule<T>| r.protocol == want || r.protocol == Proto::All;
        Classifier {
            tcp: PortIndex::build(&rules, has(Proto::Tcp)),
            udp: PortIndex::build(&rules, has(Proto::Udp)),
            icmp: PortIndex::build(&rules, has(Proto::Icmp)),
            other: PortIndex::build(&rules, |r: &Rule<T>| r.protocol == Proto::All),
            rules,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The first rule matching an IP protocol number, a port (the destination port for TCP and
    /// UDP; ignored otherwise) and an address (source or destination, as the rule set means).
    pub fn lookup(&self, protocol: u8, port: u16, addr: Ipv4Addr) -> Option<&T> {
        self.find(protocol, port, |r| r.nets.iter().any(|n| n.contains(addr)))
    }

    /// The first rule for this protocol and port that `matches` accepts (for rules whose
    /// address test is not a CIDR list, such as a security group's `remote_group`).
    pub fn find(&self, protocol: u8, port: u16, matches: impl Fn(&Rule<T>) -> bool) -> Option<&T> {
        let (idx, port) = match protocol {
            proto::TCP => (&self.tcp, port),
            proto::UDP => (&self.udp, port),
            proto::ICMP => (&self.icmp, 0),
            _ => (&self.other, 0),
        };
        idx.candidates(port).iter().map(|&i| &self.rules[i as usize]).find(|r| matches(r)).map(|r| &r.value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(p: Proto, ports: Option<&str>, nets: &[&str], v: u32) -> Rule<u32> {
        Rule { protocol: p, ports: ports.map(|s| s.parse().unwrap()), nets: nets.iter().map(|n| n.parse().unwrap()).collect(), value: v }
    }

    #[test]
    fn first_match_in_order_by_proto_port_and_net() {
        let c = Classifier::new(vec![
            rule(Proto::Tcp, Some("25"), &["0.0.0.0/0"], 1),
            rule(Proto::Tcp, Some("20-30"), &["198.51.100.0/24"], 2),
            rule(Proto::All, None, &["192.0.2.0/24"], 3),
            rule(Proto::Udp, Some("53"), &["0.0.0.0/0"], 4),
        ]);
        let a = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert_eq!(c.lookup(proto::TCP, 25, a("198.51.100.1")), Some(&1));
        assert_eq!(c.lookup(proto::TCP, 26, a("198.51.100.1")), Some(&2));
        assert_eq!(c.lookup(proto::TCP, 26, a("8.8.8.8")), None);
        assert_eq!(c.lookup(proto::TCP, 31, a("192.0.2.9")), Some(&3));
        assert_eq!(c.lookup(proto::ICMP, 0, a("192.0.2.9")), Some(&3));
        assert_eq!(c.lookup(47, 0, a("192.0.2.9")), Some(&3));
        assert_eq!(c.lookup(proto::UDP, 53, a("10.0.0.1")), Some(&4));
        assert_eq!(c.lookup(proto::UDP, 54, a("10.0.0.1")), None);
        assert_eq!(c.lookup(proto::TCP, 65535, a("192.0.2.1")), Some(&3));
        assert_eq!(c.lookup(proto::TCP, 1, a("198.51.100.1")), None);
    }
}
