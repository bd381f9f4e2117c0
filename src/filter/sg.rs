//! Security groups: stateful per-port filters, as Neutron's OVS firewall and CloudStack's
//! security groups apply them at the hypervisor. A port with groups accepts and sends only what
//! its groups' rules allow, plus replies to what they allowed (and ICMP errors about it); a port
//! without groups is not filtered at all.
//!
//! The check sits at L2, on the guest's side of the switch: frames a guest sends are checked
//! against its egress rules as they enter, frames for a guest against its ingress rules as they
//! leave for its port. So traffic between two guests of one network is filtered exactly like
//! routed or load-balanced traffic (which reaches the port the same way, after translation).
//!
//! State: each filtered port has its own connection table (a conntrack zone, as OVS uses one per
//! port), so a flow one guest's egress rules allowed is not taken as allowed by the receiving
//! guest's ingress rules. The rules of a port's groups are merged into one classifier per
//! direction (protocol and port-interval index, see [`super::Classifier`]) and consulted on a
//! flow's first packet only; later packets cost one table lookup.
//!
//! `remote_group` rules match the group's current members: the fixed address and
//! `allowed_addresses` of every port in the group, and the address DHCP currently leases to
//! such a port's MAC (asked of the DHCP server at match time, so it follows leases as they come
//! and go without any bookkeeping here).
//!
//! Always allowed: ARP, and DHCP between a guest and the server (a guest must get its address
//! before any rule can name it). Not IPv4 and not ARP (IPv6 included): dropped. Non-first
//! fragments carry no ports and pass; their first fragment was checked.

use super::{Classifier, Rule};
use crate::conntrack::{Conntrack, Egress, Key, Timeouts};
use crate::router::Iface;
use crate::switch::stats::DropReason;
use crate::switch::{NetId, PortId};
use crate::time::Instant;
use crate::frame::{FrameCtx, L3};
use crate::wire::ethernet::MacAddr;
use crate::wire::ipv4::{icmp, proto};
use std::collections::HashMap;
use std::net::Ipv4Addr;

/// Flows tracked per filtered port. A full table evicts flows that never became established.
pub const PORT_FLOWS: usize = 32_768;

/// A rule's value: the `remote_group` it names (group id), or `None` for a CIDR rule.
pub type SgRule = Rule<Option<u16>>;

/// One filtered port, as built from the config.
#[derive(Debug, Clone, PartialEq)]
pub struct PortGroups {
    pub port: PortId,
    pub net: NetId,
    /// The guest's MAC (its DHCP lease makes it a member of its groups).
    pub mac: Option<MacAddr>,
    /// Fixed address and allowed_addresses.
    pub addrs: Vec<Ipv4Addr>,
    pub groups: Vec<u16>,
    pub ingress: Vec<SgRule>,
    pub egress: Vec<SgRule>,
}

#[derive(Debug, Clone, Default)]
pub struct SgConfig {
    pub ports: Vec<PortGroups>,
    pub timeouts: Timeouts,
}

/// Which way a frame crosses the port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Way {
    /// Sent by the guest (its egress rules).
    FromGuest,
    /// Delivered to the guest (its ingress rules).
    ToGuest,
}

struct PortSg {
    ingress: Classifier<Option<u16>>,
    egress: Classifier<Option<u16>>,
    ct: Conntrack,
    /// What the port was built from (a reload compares it).
    spec: PortGroups,
}

/// What a reload keeps of a port: its connection table, and its classifiers if its rules stay.
type Reused = (Conntrack, Option<(Classifier<Option<u16>>, Classifier<Option<u16>>)>);

/// A flow's note: which way its first packet crossed the port.
const AUX_TO_GUEST: u8 = 1;

/// Counters for `show stats`.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct SgStats {
    pub flows_allowed: u64,
    pub related_allowed: u64,
    pub denied: u64,
    /// Flows a reload's new rules no longer allow, ended at their next packet.
    pub reload_revoked: u64,
}

/// Who is in which group.
#[derive(Default)]
struct Members {
    /// Member addresses -> the ports holding them.
    fixed: HashMap<Ipv4Addr, Vec<PortId>>,
    /// (network, MAC) of filtered ports -> the port (its lease makes it a member).
    by_mac: HashMap<(NetId, MacAddr), PortId>,
    /// Groups of each filtered port.
    groups: HashMap<PortId, Vec<u16>>,
}

impl Members {
    /// Whether `addr` belongs to group `g` now. `lease_holder` names the (network, MAC) DHCP
    /// currently leases `addr` to.
    fn contains(&self, g: u16, addr: Ipv4Addr, lease_holder: &dyn Fn(Ipv4Addr) -> Option<(NetId, MacAddr)>) -> bool {
        let in_group = |p: &PortId| self.groups.get(p).is_some_and(|gs| gs.contains(&g));
        if self.fixed.get(&addr).is_some_and(|ps| ps.iter().any(in_group)) {
            return true;
        }
        lease_holder(addr).and_then(|k| self.by_mac.get(&k)).is_some_and(in_group)
    }
}

pub struct SecurityGroups {
    /// By port index; `None`: not filtered.
    ports: Vec<Option<PortSg>>,
    members: Members,
    pub stats: SgStats,
}

impl SecurityGroups {
    pub fn new(cfg: SgConfig, port_count: usize) -> Self {
        Self::build(cfg, port_count, |_| None)
    }

    /// The groups of `cfg`; a port's connection table (and its classifiers, when its rules are
    /// unchanged) come from `reuse` when it gives them (a reload keeping a port's state), else
    /// are new.
    fn build(cfg: SgConfig, port_count: usize, mut reuse: impl FnMut(&PortGroups) -> Option<Reused>) -> Self {
        let mut s = SecurityGroups { ports: (0..port_count).map(|_| None).collect(), members: Members::default(), stats: SgStats::default() };
        for p in cfg.ports {
            if s.ports.get(p.port.0 as usize).is_none() {
                continue;
            }
            for &a in &p.addrs {
                s.members.fixed.entry(a).or_default().push(p.port);
            }
            if let Some(m) = p.mac {
                s.members.by_mac.insert((p.net, m), p.port);
            }
            s.members.groups.insert(p.port, p.groups.clone());
            let (ct, classifiers) = match reuse(&p) {
                Some((ct, c)) => (ct, c),
                None => (Conntrack::new(PORT_FLOWS, cfg.timeouts), None),
            };
            let (ingress, egress) = classifiers.unwrap_or_else(|| (Classifier::new(p.ingress.clone()), Classifier::new(p.egress.clone())));
            let i = p.port.0 as usize;
            s.ports[i] = Some(PortSg { ingress, egress, ct, spec: p });
        }
        s
    }

    /// Applies a reload's groups. A port that is still the same port (`same(port)`) and still
    /// filtered keeps its connection table; if its rules, or any group's membership, changed,
    /// its flows are re-checked against the new rules at their next packet (and end there if
    /// no longer allowed). Counters carry on.
    pub fn reconfigure(&mut self, cfg: SgConfig, port_count: usize, same: impl Fn(PortId) -> bool) {
        let timeouts = cfg.timeouts;
        let mut members = Members::default();
        for p in &cfg.ports {
            members.groups.insert(p.port, p.groups.clone());
            for &a in &p.addrs {
                members.fixed.entry(a).or_default().push(p.port);
            }
            if let Some(m) = p.mac {
                members.by_mac.insert((p.net, m), p.port);
            }
        }
        let members_changed = members.groups != self.members.groups || members.fixed != self.members.fixed || members.by_mac != self.members.by_mac;
        let mut old = std::mem::take(&mut self.ports);
        let stats = self.stats;
        *self = Self::build(cfg, port_count, |p| {
            if !same(p.port) {
                return None;
            }
            let o = old.get_mut(p.port.0 as usize)?.take()?;
            let mut ct = o.ct;
            ct.timeouts = timeouts;
            let same_rules = o.spec == *p;
            if members_changed || !same_rules {
                ct.epoch = ct.epoch.wrapping_add(1);
            }
            Some((ct, same_rules.then_some((o.ingress, o.egress))))
        });
        self.stats = stats;
    }

    /// Whether the port has groups (else it is not filtered).
    #[inline]
    pub fn filtered(&self, port: PortId) -> bool {
        matches!(self.ports.get(port.0 as usize), Some(Some(_)))
    }

    /// Flows tracked over all ports.
    pub fn flows(&self) -> usize {
        self.ports.iter().flatten().map(|p| p.ct.len()).sum()
    }

    /// Checks one frame (untagged Ethernet) crossing filtered port `port`: `ctx` is what its
    /// headers say, `frame` its bytes (read only for an ICMP error's quote).
    pub fn check(
        &mut self,
        now: Instant,
        port: PortId,
        way: Way,
        ctx: &FrameCtx,
        frame: &[u8],
        lease_holder: &dyn Fn(Ipv4Addr) -> Option<(NetId, MacAddr)>,
    ) -> Result<(), DropReason> {
        self.check_inner(now, port, way, ctx, frame, lease_holder).inspect_err(|_| self.stats.denied += 1)
    }

    /// [`Self::check`] on a frame not read yet.
    #[cfg(test)]
    pub fn check_frame(&mut self, now: Instant, port: PortId, way: Way, frame: &[u8], lease_holder: &dyn Fn(Ipv4Addr) -> Option<(NetId, MacAddr)>) -> Result<(), DropReason> {
        match FrameCtx::parse(frame) {
            Ok(c) => self.check(now, port, way, &c, frame, lease_holder),
            Err(_) => Err(DropReason::SecurityGroup),
        }
    }

    fn check_inner(
        &mut self,
        now: Instant,
        port: PortId,
        way: Way,
        ctx: &FrameCtx,
        frame: &[u8],
        lease_holder: &dyn Fn(Ipv4Addr) -> Option<(NetId, MacAddr)>,
    ) -> Result<(), DropReason> {
        let ip = match ctx.l3 {
            L3::Arp | L3::BadArp => return Ok(()),
            L3::Ipv4 => &ctx.ip,
            L3::BadIpv4 | L3::Other => return Err(DropReason::SecurityGroup),
        };
        if ip.ip.frag_offset != 0 {
            return Ok(());
        }
        let protocol = ip.ip.protocol;
        let ports = ip.ports().ok_or(DropReason::SecurityGroup)?;
        let dhcp = match way {
            Way::FromGuest => (68, 67),
            Way::ToGuest => (67, 68),
        };
        if protocol == proto::UDP && ports == dhcp {
            return Ok(());
        }
        let Some(Some(p)) = self.ports.get_mut(port.0 as usize) else { return Ok(()) };
        if ip.icmp().is_some_and(|i| icmp::is_error(i.msg_type)) {
            // Related: an error about a packet of a tracked flow (either way).
            if let Some(q) = frame.get(ip.l4_offset()..ip.end()).and_then(crate::nat::quoted_key) {
                if p.ct.lookup(now, &q).is_some() {
                    self.stats.related_allowed += 1;
                    return Ok(());
                }
            }
        }
        let key = Key { src: ip.ip.src, dst: ip.ip.dst, sport: ports.0, dport: ports.1, proto: protocol };
        let tcp = ip.tcp_flags();
        if let Some((idx, dir)) = p.ct.lookup(now, &key) {
            let f = p.ct.flow(idx);
            if f.epoch != p.ct.epoch {
                // Decided under rules a reload replaced: allowed still, or it ends here.
                let (orig, w) = (f.orig, if f.aux == AUX_TO_GUEST { Way::ToGuest } else { Way::FromGuest });
                if !allows(p, &self.members, w, &orig, lease_holder) {
                    p.ct.remove(idx);
                    self.stats.reload_revoked += 1;
                    return Err(DropReason::ReloadRevoked);
                }
                let e = f.egress;
                p.ct.refresh(idx, e);
            }
            p.ct.update(now, idx, dir, tcp, ip.ip.total_len as usize);
            return Ok(());
        }
        if !allows(p, &self.members, way, &key, lease_holder) {
            return Err(DropReason::SecurityGroup);
        }
        let none = Egress { iface: Iface::Public, next_hop: Ipv4Addr::UNSPECIFIED };
        let idx = p.ct.insert(now, key, key.reverse(), [none, none]).map_err(crate::router::ct_drop)?;
        if way == Way::ToGuest {
            p.ct.set_aux(idx, AUX_TO_GUEST);
        }
        p.ct.update(now, idx, crate::conntrack::Dir::Orig, tcp, ip.ip.total_len as usize);
        self.stats.flows_allowed += 1;
        Ok(())
    }

    /// Timer work: expired flows leave every port's table.
    pub fn sweep(&mut self, now: Instant) {
        for p in self.ports.iter_mut().flatten() {
            p.ct.sweep(now);
        }
    }
}

/// Whether the port's rules let a flow whose first packet is `key` cross `way`.
fn allows(p: &PortSg, members: &Members, way: Way, key: &Key, lease_holder: &dyn Fn(Ipv4Addr) -> Option<(NetId, MacAddr)>) -> bool {
    let (rules, remote) = match way {
        Way::FromGuest => (&p.egress, key.dst),
        Way::ToGuest => (&p.ingress, key.src),
    };
    rules
        .find(key.proto, key.dport, |r| match r.value {
            Some(g) => members.contains(g, remote, lease_holder),
            None => r.nets.iter().any(|n| n.contains(remote)),
        })
        .is_some()
}

#[cfg(test)]
mod tests;
