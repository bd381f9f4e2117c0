//! A reload inside the router: new rules in, state kept and reconciled.
//!
//! The rules (networks, public side, static NATs, forwards, firewall, load balancers, service
//! settings) are replaced whole, between batches; what traffic built stays: flows, neighbours,
//! leases, the DNS cache, load balancers' connection counts and health. Each flow carries the
//! rules epoch it was decided under; a reload starts a new epoch, and a flow's next packet
//! re-decides it under the new rules without side effects ([`Router::redecide`]): decided the
//! same way (same translation, same backend, same networks), it carries on untouched; decided
//! otherwise, or refused, it ends there (`reload_revoked`). That packet is dropped; what
//! follows it is handled as a new packet under the new rules. Nothing is walked at reload time
//! but the networks and neighbours of networks that changed, so the pause does not grow with
//! the number of flows.
//!
//! Invariants: slots (`NetId`, `PortId`, load balancer and backend slots) keep their meaning
//! across a reload (see `build::Numbering`), so a flow's interfaces and tag never point at
//! something else; a flow whose network or backend is gone cannot pass the re-decision.

use super::{Iface, Router};
use crate::conntrack::{Egress, Flow};
use crate::switch::{NetId, PortId};
use crate::time::Instant;
use crate::wire::ethernet::MacAddr;
use std::net::Ipv4Addr;

/// What a reload gives the router, besides its tables.
pub struct Services {
    pub spec: crate::build::ServiceSpec,
    pub metadata_enabled: bool,
    pub vms: Vec<super::meta::VmSpec>,
}

impl Router {
    /// Applies new rules. `same_net(n)` / `same_port(p)`: slot n / p still holds the network /
    /// port it held (by name and generation).
    pub fn reconfigure(&mut self, now: Instant, mac: MacAddr, mut cfg: super::L3Config, svc: Services, same_net: impl Fn(NetId) -> bool, same_port: impl Fn(PortId) -> bool) {
        cfg.seed = self.cfg.seed;
        // Networks that are not the same any more (gone, readdressed): what was learned on
        // them is forgotten; the router's own endpoints there are made again when needed.
        let kept: Vec<bool> = (0..cfg.nets.len().max(self.cfg.nets.len()))
            .map(|i| {
                let n = NetId(i as u16);
                same_net(n)
                    && match (self.cfg.nets.get(i), cfg.nets.get(i)) {
                        (Some(a), Some(b)) => a.cidr == b.cidr && a.gateway == b.gateway && a.mtu == b.mtu,
                        _ => false,
                    }
            })
            .collect();
        let keep = |n: NetId| kept.get(n.0 as usize).copied().unwrap_or(false);
        let public_kept = match (&self.cfg.public, &cfg.public) {
            (Some(a), Some(b)) => a.gateway == b.gateway,
            _ => false,
        };
        self.neigh.forget(|i| match i {
            Iface::Net(n) => keep(n),
            Iface::Public => public_kept,
            Iface::Tunnel(_) => true,
        });
        // An address that changes hands (a VM gone, another with its address, a new MAC) is
        // asked again rather than sent to the MAC it had.
        let old_vms = self.meta.addresses();
        let new_vms: std::collections::HashMap<PortId, (NetId, Option<MacAddr>, Option<Ipv4Addr>)> = svc.vms.iter().map(|v| (v.port, (v.net, v.mac, v.fixed_ip))).collect();
        for (p, net, mac, ip) in old_vms {
            let stays = same_port(p) && new_vms.get(&p) == Some(&(net, mac, ip));
            if let (false, Some(ip)) = (stays, ip) {
                self.neigh.forget_addr(Iface::Net(net), ip);
            }
        }
        for (p, (net, _, ip)) in &new_vms {
            if let (false, Some(ip)) = (same_port(*p), ip) {
                self.neigh.forget_addr(Iface::Net(*net), *ip);
            }
        }
        if mac != self.mac {
            // A new router MAC: everyone who knows the old one hears of the new one.
            self.garp.extend(cfg.public.iter().flat_map(|p| p.ips.iter().map(|i| i.addr)));
            self.garp_nets = true;
        }
        self.svc.tcp.forget(keep);
        self.meta.tcp.forget(keep);
        self.frags.clear();
        self.frags_by_src.clear();

        let old_public = std::mem::take(&mut self.public_ips);
        self.forwards_by_ip = super::forwards_by_ip(&cfg.forwards);
        self.public_ips = cfg.public.as_ref().map(|p| p.ips.iter().map(|i| i.addr).collect()).unwrap_or_default();
        // Added public addresses are announced (gratuitous ARP), as at start.
        self.garp.extend(self.public_ips.iter().filter(|a| !old_public.contains(a)));
        self.static_by_public = cfg.static_nat.iter().copied().collect();
        self.static_by_private = cfg.static_nat.iter().map(|&(p, q)| (q, p)).collect();
        self.ct.timeouts = cfg.timeouts;
        self.ct.set_max(cfg.conntrack_max);
        self.ct.epoch = self.ct.epoch.wrapping_add(1);
        // Slots that hold another network from now on: flows decided before never reach it.
        self.net_since.resize(cfg.nets.len(), 0);
        for (i, since) in self.net_since.iter_mut().enumerate() {
            if !keep(NetId(i as u16)) {
                *since = self.ct.epoch;
            }
        }
        self.release_backends();
        self.lb.reconfigure(cfg.lbs.clone());
        self.mac = mac;
        match (self.vpn.as_mut(), cfg.vpn.clone()) {
            (Some(v), Some(spec)) => v.reconfigure(spec),
            (_, spec) => self.vpn = spec.map(crate::vpn::Vpn::new),
        }
        self.net_index = super::nets::NetIndex::new(&cfg.nets);
        self.cfg = cfg;
        let targets = self.lb.check_targets();
        let seed = self.rng.u64();
        self.hc = crate::lb::health::Checker::new(now, seed, targets, |n| {
            let net = self.cfg.nets.get(n.0 as usize)?;
            Some((net.gateway?, net.cidr.prefix, net.mtu as usize))
        });
        let same: Vec<bool> = (0..self.cfg.nets.len()).map(|i| same_net(NetId(i as u16))).collect();
        self.reconfigure_services(svc.spec, &same);
        self.meta.reconfigure(svc.metadata_enabled, svc.vms, same_port);
    }

    /// Whether a load-balanced flow is still on a backend of `lb` that is in its pool: the one
    /// its tag names (a flow past its close has no tag: its address then).
    fn same_backend(&self, f: &Flow, lb: usize) -> bool {
        if f.tag == crate::conntrack::NO_TAG {
            return self.lb.holds(lb, f.reply.src, f.reply.sport);
        }
        crate::lb::untag(f.tag).0 == lb && self.lb.is_member(f.tag) && self.lb.backend_addr(f.tag) == Some((f.reply.src, f.reply.sport))
    }

    /// A TCP flow a reload ended: its guest side gets a reset now, so the guest's connection
    /// ends rather than lingering, or coming back through source NAT as a new flow with the
    /// same ports. A guest that sent the packet is answered like a REJECT with tcp-reset (RFC
    /// 793's reset for a segment: its own ACK number as the sequence); a guest the packet was
    /// for gets the reset in its place, from its peer as it sees it, at the packet's sequence
    /// number. The public side gets nothing (the router never answers the outside for what it
    /// does not serve).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn revoke_reset(&mut self, now: Instant, from: Iface, eth_src: MacAddr, f: &Flow, dir: crate::conntrack::Dir, seq: u32, ack: u32, flags: u8) {
        use crate::wire::ethernet::ethertype;
        let k = match dir {
            crate::conntrack::Dir::Orig => f.orig,
            crate::conntrack::Dir::Reply => f.reply,
        };
        if let Iface::Net(_) = from {
            let (rseq, rack, rflags) = if flags & 0x10 != 0 { (ack, 0, 0x04) } else { (0, seq.wrapping_add(1), 0x14) };
            let p = self.tcp_reset(k.dst, k.dport, k.src, k.sport, rseq, rack, rflags);
            self.new_frame(from, eth_src, ethertype::IPV4, 40).copy_from_slice(&p);
            self.stats.revoke_resets += 1;
            return;
        }
        if let Iface::Net(n) = f.egress[dir as usize].iface {
            let t = f.target(dir);
            // Only onto the network the flow was decided for (its slot may hold another now).
            let since = self.net_since.get(n.0 as usize).copied().unwrap_or(0);
            if self.gateway(n).is_some() && f.epoch >= since && self.net_of(t.dst) == Some(n) {
                let p = self.tcp_reset(t.src, t.sport, t.dst, t.dport, seq, 0, 0x04);
                self.emit_ip(now, n, &p);
                self.stats.revoke_resets += 1;
            }
        }
    }

    /// Whether the rules now in force decide flow `f` the way it was decided, without side
    /// effects (no NAT port taken, no backend picked). `Some`: where each direction leaves
    /// now (a next hop may have changed); `None`: the flow must end.
    pub(super) fn redecide(&self, f: &Flow) -> Option<[Egress; 2]> {
        let k = &f.orig;
        let [out, back] = f.egress;
        let net_iface = |ip: Ipv4Addr| self.net_of(ip).map(Iface::Net);
        match back.iface {
            Iface::Net(n) => {
                let net = self.cfg.nets.get(n.0 as usize)?;
                if !net.cidr.contains(k.src) || Some(k.src) == net.gateway {
                    return None;
                }
                // The metadata address is the router's own now.
                if self.meta.enabled && super::meta::is_metadata_ip(back.iface, k.dst) {
                    return None;
                }
                if !self.egress_allowed(n, k) {
                    return None;
                }
                if self.public_ips.contains(&k.dst) || self.is_gateway(k.dst) {
                    if let Some(lb) = self.lb.find(k.dst, k.proto, k.dport) {
                        // The same backend, still in this load balancer's pool.
                        if !self.same_backend(f, lb) || net_iface(f.reply.src) != Some(out.iface) {
                            return None;
                        }
                        if out.iface == back.iface && Some(f.reply.dst) != self.gateway(n) {
                            return None;
                        }
                        return Some(f.egress);
                    }
                    // Hairpin through a forward or a static NAT.
                    let (pip, pport) = self.dnat_target(k.dst, k.proto, k.dport)?;
                    let m = self.net_of(pip)?;
                    if (pip, pport) != (f.reply.src, f.reply.sport) || out.iface != Iface::Net(m) || self.gateway(m) != Some(f.reply.dst) {
                        return None;
                    }
                    return Some(f.egress);
                }
                if let Some(m) = self.net_of(k.dst) {
                    return (out.iface == Iface::Net(m) && f.reply == k.reverse()).then_some(f.egress);
                }
                // Into a VPN peer's tunnel: the same peer, still allowed this network.
                if let Some(p) = self.vpn.as_ref().and_then(|v| v.route(k.dst)) {
                    let ok = out.iface == Iface::Tunnel(p) && self.vpn.as_ref().is_some_and(|v| v.may_reach(p, n)) && f.reply == k.reverse();
                    return ok.then_some(f.egress);
                }
                // Source NAT: the same public address (static NAT or source NAT).
                let public = self.cfg.public.as_ref()?;
                let nat_ip = self.static_by_private.get(&k.src).copied().unwrap_or(public.source_nat_ip);
                if out.iface != Iface::Public || f.reply.dst != nat_ip || !self.public_ips.contains(&nat_ip) {
                    return None;
                }
                // Its translated port is a forward's now: the outside must reach the forward.
                if matches!(k.proto, crate::wire::ipv4::proto::TCP | crate::wire::ipv4::proto::UDP) && self.forward_of(nat_ip, k.proto, f.reply.dport).is_some() {
                    return None;
                }
                Some([Egress { iface: Iface::Public, next_hop: self.public_next_hop(k.dst) }, back])
            }
            Iface::Public => {
                if !self.public_ips.contains(&k.dst) {
                    return None;
                }
                if let Some(fw) = self.cfg.firewall.get(&k.dst) {
                    fw.lookup(k.proto, k.dport, k.src)?;
                }
                let back = Egress { iface: Iface::Public, next_hop: self.public_next_hop(k.src) };
                if let Some(lb) = self.lb.find(k.dst, k.proto, k.dport) {
                    if !self.same_backend(f, lb) || net_iface(f.reply.src) != Some(out.iface) {
                        return None;
                    }
                    return Some([out, back]);
                }
                let (pip, pport) = self.dnat_target(k.dst, k.proto, k.dport)?;
                if (pip, pport) != (f.reply.src, f.reply.sport) || net_iface(pip) != Some(out.iface) {
                    return None;
                }
                Some([out, back])
            }
            Iface::Tunnel(p) => {
                let v = self.vpn.as_ref()?;
                let m = self.net_of(k.dst)?;
                let ok = v.allowed(p, k.src) && v.may_reach(p, m) && out.iface == Iface::Net(m) && f.reply == k.reverse();
                ok.then_some(f.egress)
            }
        }
    }
}
