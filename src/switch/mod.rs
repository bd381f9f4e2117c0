//! The L2 stages of the pipeline: ingress classification (which network a frame belongs to,
//! VLAN hygiene), port security, MAC learning and the forwarding decision. Pure: no I/O, no
//! clock; `datapath` calls these in the order of a frame's walk.

pub mod fdb;
pub mod stats;

use crate::frame::{FrameCtx, L3};
use crate::wire::ethernet::{ethertype, MacAddr};
use crate::wire::vlan::{self, VlanFrame};
use stats::DropReason;
use std::net::Ipv4Addr;

/// Index of a port (guest port or uplink) in the datapath's port table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortId(pub u16);

/// Index of a network (broadcast domain).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct NetId(pub u16);

/// What may source frames from a guest port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Security {
    pub mac: MacAddr,
    pub ip: Option<Ipv4Addr>,
    /// Extra source addresses the guest may use (`allowed_addresses`: a VRRP VIP).
    pub allowed: Allowed,
}

/// Up to [`Allowed::MAX`] extra addresses, inline (so `Security` stays `Copy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Allowed {
    addrs: [u32; Allowed::MAX],
    len: u8,
}

impl Allowed {
    pub const MAX: usize = 8;
    /// The first [`Allowed::MAX`] of `list` (config validation refuses longer lists).
    pub fn new(list: &[Ipv4Addr]) -> Self {
        let mut a = Allowed::default();
        for ip in list.iter().take(Self::MAX) {
            a.addrs[a.len as usize] = u32::from(*ip);
            a.len += 1;
        }
        a
    }
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        self.addrs[..self.len as usize].contains(&u32::from(ip))
    }
    pub fn iter(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.addrs[..self.len as usize].iter().map(|a| Ipv4Addr::from(*a))
    }
}

/// How a port attaches to networks.
#[derive(Debug, Clone, PartialEq)]
pub enum Role {
    /// A guest port: untagged, one network, optionally locked to the guest's MAC/IP.
    Access { net: NetId, security: Option<Security> },
    /// An 802.1Q trunk: each network carried with its VLAN id. `vlans[vid]` is that network;
    /// `native`, if any, is carried untagged (untagged and priority-tagged frames belong to
    /// it, and its frames leave without a tag): a NIC per network, as CloudStack plugs its
    /// router into each guest network's bridge.
    Trunk { vlans: Box<[Option<NetId>]>, native: Option<NetId> },
    /// The public side: in no network; everything arriving goes to the router.
    Public,
    /// A VXLAN peer (remote VTEP): each network carried with its VNI. Its frames arrive
    /// decapsulated, their network given by the VNI, not by the frame.
    /// `evpn`: learned over BGP EVPN; the MACs behind it come from its routes, not from its
    /// frames (as a kernel VTEP with `nolearning` under FRR).
    /// `unicast_only`: networks it carries but wants no flooded traffic of (EVPN: no type-3
    /// route for them).
    Vtep { remote: std::net::Ipv4Addr, vnis: VniMap, evpn: bool, unicast_only: Vec<NetId> },
    /// A slot whose port was removed by a reload (and not yet taken by a new one): in no
    /// network, nothing arrives on it or leaves through it.
    Vacant,
}

/// A VXLAN peer's VNIs and the networks they carry, looked up either way by binary search:
/// every frame from a peer asks for its VNI's network and every frame to it for its network's
/// VNI, and an EVPN peer may carry thousands (a scan cost microseconds a frame).
///
/// Invariant: one table sorted by VNI, one by network, each key once; of pairs given for one
/// key the first wins, as the scan it replaces answered. (Config validation gives each
/// network one VNI, so both tables hold the same pairs.)
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VniMap {
    by_vni: Vec<(u32, NetId)>,
    by_net: Vec<(NetId, u32)>,
}

impl VniMap {
    pub fn new(pairs: impl IntoIterator<Item = (u32, NetId)>) -> VniMap {
        let mut by_vni: Vec<(u32, NetId)> = pairs.into_iter().collect();
        let mut by_net: Vec<(NetId, u32)> = by_vni.iter().map(|&(v, n)| (n, v)).collect();
        // Stable sorts: of pairs with one key, the first given stays first and is kept.
        by_vni.sort_by_key(|p| p.0);
        by_vni.dedup_by_key(|p| p.0);
        by_net.sort_by_key(|p| p.0);
        by_net.dedup_by_key(|p| p.0);
        VniMap { by_vni, by_net }
    }

    /// The network VNI `vni` carries.
    #[inline]
    pub fn net(&self, vni: u32) -> Option<NetId> {
        self.by_vni.binary_search_by_key(&vni, |p| p.0).ok().map(|i| self.by_vni[i].1)
    }

    /// The VNI network `n` travels in.
    #[inline]
    pub fn vni(&self, n: NetId) -> Option<u32> {
        self.by_net.binary_search_by_key(&n, |p| p.0).ok().map(|i| self.by_net[i].1)
    }

    /// The pairs, by VNI.
    pub fn iter(&self) -> impl Iterator<Item = (u32, NetId)> + '_ {
        self.by_vni.iter().copied()
    }

    pub fn len(&self) -> usize {
        self.by_vni.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_vni.is_empty()
    }
}

impl Role {
    pub fn trunk(pairs: &[(u16, NetId)]) -> Role {
        Role::trunk_native(pairs, None)
    }

    /// Whether frames of network `n` may leave through a port of this role (an access port's
    /// own network, a trunk's tagged or native ones, a VXLAN peer's VNIs).
    pub fn carries(&self, n: NetId) -> bool {
        match self {
            Role::Access { net, .. } => *net == n,
            Role::Trunk { vlans, native } => *native == Some(n) || vlans.contains(&Some(n)),
            Role::Vtep { vnis, .. } => vnis.vni(n).is_some(),
            Role::Public | Role::Vacant => false,
        }
    }

    /// A trunk that also carries `native` untagged.
    pub fn trunk_native(pairs: &[(u16, NetId)], native: Option<NetId>) -> Role {
        let mut vlans = vec![None; 4096].into_boxed_slice();
        for &(vid, net) in pairs {
            if let Some(s) = vlans.get_mut(vid as usize) {
                *s = Some(net);
            }
        }
        Role::Trunk { vlans, native }
    }
}

/// Decides the network of a frame arriving on a port with `role`. Returns the network and
/// whether a tag must be popped first.
#[inline]
pub fn classify(role: &Role, frame: &[u8]) -> Result<(NetId, bool), DropReason> {
    // Most frames: untagged on an access port.
    if let (Role::Access { net, .. }, Some(et)) = (role, frame.get(12..14)) {
        if !vlan::is_tag_ethertype(u16::from_be_bytes([et[0], et[1]])) {
            return Ok((*net, false));
        }
    }
    classify_tagged(role, frame)
}

/// [`classify`] for everything but an untagged frame on an access port.
#[inline(never)]
fn classify_tagged(role: &Role, frame: &[u8]) -> Result<(NetId, bool), DropReason> {
    let et = frame.get(12..14).map(|b| u16::from_be_bytes([b[0], b[1]])).ok_or(DropReason::Malformed)?;
    match role {
        Role::Access { net, .. } => {
            // A priority tag (802.1Q, VID 0: a guest using 802.1p) belongs to the port's
            // network: popped, its priority kept. Any other tag, and 802.1ad or the legacy
            // 0x9100 TPID, is a guest trying to reach another VLAN (or to have the physical
            // network read a tag of its own): dropped.
            if et == ethertype::VLAN {
                let v = VlanFrame::new_checked(frame).map_err(|_| DropReason::Malformed)?;
                if v.vid() == 0 && !vlan::is_tag_ethertype(v.inner_ethertype()) {
                    return Ok((*net, true));
                }
            }
            if vlan::is_tag_ethertype(et) {
                return Err(DropReason::TaggedOnAccess);
            }
            Ok((*net, false))
        }
        Role::Public | Role::Vtep { .. } | Role::Vacant => Err(DropReason::NotForwarded),
        Role::Trunk { vlans, native } => {
            if et == ethertype::QINQ {
                return Err(DropReason::DoubleTagged);
            }
            if et != ethertype::VLAN {
                return native.map(|n| (n, false)).ok_or(DropReason::UntaggedOnTrunk);
            }
            let v = VlanFrame::new_checked(frame).map_err(|_| DropReason::Malformed)?;
            if vlan::is_tag_ethertype(v.inner_ethertype()) {
                return Err(DropReason::DoubleTagged);
            }
            // A priority tag belongs to the native network, as on an access port.
            if let (0, Some(n)) = (v.vid(), native) {
                return Ok((*n, true));
            }
            match vlans.get(v.vid() as usize).copied().flatten() {
                Some(net) => Ok((net, true)),
                None => Err(DropReason::UnknownVlan),
            }
        }
    }
}

/// Port security (anti-spoofing) on an untagged frame from a guest port: the source MAC must be
/// the guest's, and with a configured IP, IPv4 sources and ARP senders must be that IP (or
/// 0.0.0.0 for DHCP discovery and ARP probes) and IPv6 sources must be link-local or `::`.
/// `dynamic`: the port has no fixed IP but its network is served by DHCP: `Some(lease)` is the
/// address it may use (`Some(None)`: none yet, only 0.0.0.0); `None`: addresses are not checked.
pub fn check_security(sec: &Security, dynamic: Option<Option<Ipv4Addr>>, ctx: &FrameCtx, frame: &[u8]) -> Result<(), DropReason> {
    if ctx.src != sec.mac {
        return Err(DropReason::SpoofedMac);
    }
    let ip = match (sec.ip, dynamic) {
        (Some(ip), _) => ip,
        (None, Some(Some(lease))) => lease,
        // Nothing leased yet: only the unspecified address (DHCP, ARP probes) may be used.
        (None, Some(None)) => Ipv4Addr::UNSPECIFIED,
        (None, None) => return Ok(()),
    };
    match ctx.l3 {
        // The checked view: version 4, IHL >= 5, lengths inside the frame.
        L3::BadIpv4 | L3::BadArp => Err(DropReason::Malformed),
        L3::Ipv4 => {
            let p = &ctx.ip;
            if p.ip.src == ip || sec.allowed.contains(p.ip.src) {
                return Ok(());
            }
            // DHCP from an unconfigured client: 0.0.0.0:68 -> 67 (first fragment, UDP).
            let dhcp = p.ip.src.is_unspecified() && p.ip.frag_offset == 0 && p.udp().is_some_and(|u| u.dst_port == 67);
            if dhcp {
                Ok(())
            } else {
                Err(DropReason::SpoofedIp)
            }
        }
        L3::Arp => {
            let a = &ctx.arp;
            if a.sender_mac != sec.mac {
                return Err(DropReason::SpoofedMac);
            }
            let spa = a.sender_ip;
            if spa == ip || spa.is_unspecified() || sec.allowed.contains(spa) {
                Ok(())
            } else {
                Err(DropReason::SpoofedIp)
            }
        }
        L3::Other => match ctx.ethertype {
        ethertype::IPV6 => {
            // Networks are IPv4; a locked port may speak IPv6 only link-locally (neighbour
            // discovery, DAD from ::), never from a routable address it could claim.
            let h = etherparse::Ipv6HeaderSlice::from_slice(&frame[crate::frame::L3_OFFSET..]).map_err(|_| DropReason::Malformed)?;
            let src = h.source_addr();
            let link_local = src.segments()[0] & 0xffc0 == 0xfe80;
            if link_local || src.is_unspecified() {
                Ok(())
            } else {
                Err(DropReason::SpoofedIp)
            }
        }
            // Other protocols carry no address to check; the source MAC was checked above.
            _ => Ok(()),
        },
    }
}

/// What no guest may send, with or without port security: frames claiming its network's
/// gateway address (ARP sender or IPv4 source), IPv6 router advertisements, and DHCPv6 server
/// messages (the router, and nobody else, serves the network).
pub fn guest_guard(ctx: &FrameCtx, frame: &[u8], gateway: Option<Ipv4Addr>) -> Result<(), DropReason> {
    match (ctx.l3, gateway) {
        (L3::Arp, Some(gw)) if ctx.arp.sender_ip == gw => return Err(DropReason::SpoofedGateway),
        (L3::Ipv4, Some(gw)) if ctx.ip.ip.src == gw => return Err(DropReason::SpoofedGateway),
        _ => {}
    }
    if ctx.ethertype == ethertype::IPV6 {
        use etherparse::TransportSlice;
        if let Ok(p) = etherparse::SlicedPacket::from_ethernet(frame) {
            match p.transport {
                Some(TransportSlice::Icmpv6(i)) if i.type_u8() == 134 => return Err(DropReason::RogueRa),
                Some(TransportSlice::Udp(u)) if u.source_port() == 547 => return Err(DropReason::RogueDhcpv6),
                _ => {}
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gg(f: &[u8], gw: Option<Ipv4Addr>) -> Result<(), DropReason> {
        guest_guard(&FrameCtx::parse(f).unwrap(), f, gw)
    }

    fn cs(sec: &Security, dynamic: Option<Option<Ipv4Addr>>, f: &[u8]) -> Result<(), DropReason> {
        check_security(sec, dynamic, &FrameCtx::parse(f).unwrap(), f)
    }

    fn frame(src: [u8; 6], et: u16, rest: &[u8]) -> Vec<u8> {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&src);
        f.extend_from_slice(&et.to_be_bytes());
        f.extend_from_slice(rest);
        f
    }

    #[test]
    fn vni_map_answers_as_the_scan_of_its_pairs_does() {
        // Out of order, a VNI given twice and a network given twice: the first pair wins,
        // as `find` over the list said.
        let pairs = [(7000, NetId(3)), (5001, NetId(0)), (6000, NetId(9)), (5001, NetId(4)), (8000, NetId(9)), (16_777_215, NetId(1))];
        let m = VniMap::new(pairs);
        for vni in [0, 5000, 5001, 6000, 7000, 8000, 9999, 16_777_215] {
            assert_eq!(m.net(vni), pairs.iter().find(|p| p.0 == vni).map(|p| p.1), "{vni}");
        }
        for n in 0..12 {
            assert_eq!(m.vni(NetId(n)), pairs.iter().find(|p| p.1 == NetId(n)).map(|p| p.0), "{n}");
            assert_eq!(Role::Vtep { remote: Ipv4Addr::LOCALHOST, vnis: m.clone(), evpn: false, unicast_only: Vec::new() }.carries(NetId(n)), pairs.iter().any(|p| p.1 == NetId(n)));
        }
        assert_eq!(m.iter().map(|p| p.0).collect::<Vec<_>>(), [5001, 6000, 7000, 8000, 16_777_215]);
        let one_to_one = [(7000, NetId(3)), (5001, NetId(0)), (6000, NetId(9))];
        assert_eq!(VniMap::new(one_to_one), VniMap::new(one_to_one.iter().rev().copied()), "order does not matter");
        // Thousands, against the scan.
        let many: Vec<(u32, NetId)> = (0..4000u32).map(|i| (10_000 + i * 7 % 4000, NetId((i * 13 % 4000) as u16))).collect();
        let m = VniMap::new(many.iter().copied());
        assert_eq!(m.len(), 4000);
        for k in 0..4100u32 {
            assert_eq!(m.net(10_000 + k), many.iter().find(|p| p.0 == 10_000 + k).map(|p| p.1));
            assert_eq!(m.vni(NetId(k as u16)), many.iter().find(|p| p.1 == NetId(k as u16)).map(|p| p.0));
        }
        assert!(VniMap::default().is_empty() && VniMap::default().net(1).is_none());
    }

    #[test]
    fn trunk_classification() {
        let r = Role::trunk(&[(101, NetId(0)), (102, NetId(1))]);
        let t = |tpid: u16, vid: u16, inner: u16| {
            let mut rest = vid.to_be_bytes().to_vec();
            rest.extend_from_slice(&inner.to_be_bytes());
            frame([2; 6], tpid, &rest)
        };
        assert_eq!(classify(&r, &t(0x8100, 102, 0x0800)), Ok((NetId(1), true)));
        assert_eq!(classify(&r, &t(0x8100, 103, 0x0800)), Err(DropReason::UnknownVlan));
        assert_eq!(classify(&r, &t(0x8100, 101, 0x8100)), Err(DropReason::DoubleTagged));
        assert_eq!(classify(&r, &t(0x88a8, 101, 0x0800)), Err(DropReason::DoubleTagged));
        assert_eq!(classify(&r, &frame([2; 6], 0x0800, &[0; 4])), Err(DropReason::UntaggedOnTrunk));
        // With a native network: untagged and priority-tagged frames are its; tags still count.
        let n = Role::trunk_native(&[(101, NetId(0))], Some(NetId(2)));
        assert_eq!(classify(&n, &frame([2; 6], 0x0800, &[0; 4])), Ok((NetId(2), false)));
        assert_eq!(classify(&n, &t(0x8100, 0, 0x0800)), Ok((NetId(2), true)));
        assert_eq!(classify(&n, &t(0x8100, 101, 0x0800)), Ok((NetId(0), true)));
        assert_eq!(classify(&n, &t(0x8100, 102, 0x0800)), Err(DropReason::UnknownVlan));
        assert_eq!(classify(&n, &t(0x88a8, 101, 0x0800)), Err(DropReason::DoubleTagged));
        let a = Role::Access { net: NetId(3), security: None };
        assert_eq!(classify(&a, &t(0x8100, 101, 0x0800)), Err(DropReason::TaggedOnAccess));
        assert_eq!(classify(&a, &t(0x8100, 0, 0x0800)), Ok((NetId(3), true)), "priority tag");
        assert_eq!(classify(&a, &t(0x8100, 0, 0x8100)), Err(DropReason::TaggedOnAccess), "priority tag over a tag");
        assert_eq!(classify(&a, &t(0x9100, 101, 0x0800)), Err(DropReason::TaggedOnAccess), "legacy QinQ TPID");
        assert_eq!(classify(&a, &t(0x88a8, 0, 0x0800)), Err(DropReason::TaggedOnAccess), "802.1ad");
        assert_eq!(classify(&r, &t(0x8100, 0, 0x0800)), Err(DropReason::UnknownVlan), "no untagged network on trunks");
        assert_eq!(classify(&a, &frame([2; 6], 0x0806, &[])), Ok((NetId(3), false)));
    }

    #[test]
    fn guests_cannot_be_the_gateway_or_a_router() {
        let gw = Some(Ipv4Addr::new(10, 1, 1, 1));
        let mut arp = [0u8; 28];
        arp[..6].copy_from_slice(&[0, 1, 8, 0, 6, 4]);
        arp[14..18].copy_from_slice(&[10, 1, 1, 1]);
        assert_eq!(gg(&frame([2; 6], 0x0806, &arp), gw), Err(DropReason::SpoofedGateway));
        arp[14..18].copy_from_slice(&[10, 1, 1, 9]);
        assert_eq!(gg(&frame([2; 6], 0x0806, &arp), gw), Ok(()));
        let v6 = |build: &dyn Fn(etherparse::PacketBuilderStep<etherparse::IpHeaders>, &mut Vec<u8>)| {
            let mut out = Vec::new();
            let b = etherparse::PacketBuilder::ethernet2([2; 6], [0x33, 0x33, 0, 0, 0, 1]).ipv6([0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1], [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1], 255);
            build(b, &mut out);
            out
        };
        let ra = v6(&|b, out| b.icmpv6_raw(134, 0, [0; 4]).write(out, &[0; 8]).unwrap());
        let rs = v6(&|b, out| b.icmpv6_raw(133, 0, [0; 4]).write(out, &[]).unwrap());
        let dhcp6 = v6(&|b, out| b.udp(547, 546).write(out, &[7, 0, 0, 1]).unwrap());
        assert_eq!(gg(&ra, gw), Err(DropReason::RogueRa));
        assert_eq!(gg(&rs, gw), Ok(()), "router solicitations are a client's");
        assert_eq!(gg(&dhcp6, gw), Err(DropReason::RogueDhcpv6));
    }

    #[test]
    fn security() {
        let mac = MacAddr([0x52, 0x54, 0, 0, 0, 1]);
        let sec = Security { mac, ip: Some(Ipv4Addr::new(10, 1, 1, 11)), allowed: Allowed::new(&[Ipv4Addr::new(10, 1, 1, 200)]) };
        let mut ip = [0u8; 28];
        ip[0] = 0x45;
        ip[3] = 28;
        ip[9] = 17;
        ip[12..16].copy_from_slice(&[10, 1, 1, 11]);
        assert_eq!(cs(&sec, None, &frame(mac.0, 0x0800, &ip)), Ok(()));
        assert_eq!(cs(&sec, None, &frame([2; 6], 0x0800, &ip)), Err(DropReason::SpoofedMac));
        ip[12..16].copy_from_slice(&[10, 1, 1, 12]);
        assert_eq!(cs(&sec, None, &frame(mac.0, 0x0800, &ip)), Err(DropReason::SpoofedIp));
        let mut vip = ip;
        vip[12..16].copy_from_slice(&[10, 1, 1, 200]);
        assert_eq!(cs(&sec, None, &frame(mac.0, 0x0800, &vip)), Ok(()), "allowed_addresses (a VRRP VIP)");
        ip[12..16].copy_from_slice(&[0, 0, 0, 0]);
        ip[22..24].copy_from_slice(&[0, 67]);
        assert_eq!(cs(&sec, None, &frame(mac.0, 0x0800, &ip)), Ok(()), "DHCP discover");
        let mut arp = [0u8; 28];
        arp[..6].copy_from_slice(&[0, 1, 8, 0, 6, 4]);
        arp[8..14].copy_from_slice(&mac.0);
        arp[14..18].copy_from_slice(&[10, 1, 1, 99]);
        assert_eq!(cs(&sec, None, &frame(mac.0, 0x0806, &arp)), Err(DropReason::SpoofedIp));
        assert_eq!(cs(&sec, None, &frame(mac.0, 0x0800, &ip[..10])), Err(DropReason::Malformed));
        // No fixed address, DHCP on the network: the lease, and nothing else, once there is one.
        let dynsec = Security { mac, ip: None, allowed: Allowed::default() };
        let mut leased = ip;
        leased[12..16].copy_from_slice(&[10, 1, 1, 100]);
        let l = Some(Ipv4Addr::new(10, 1, 1, 100));
        assert_eq!(cs(&dynsec, Some(l), &frame(mac.0, 0x0800, &leased)), Ok(()));
        assert_eq!(cs(&dynsec, Some(None), &frame(mac.0, 0x0800, &leased)), Err(DropReason::SpoofedIp), "no lease yet");
        assert_eq!(cs(&dynsec, Some(None), &frame(mac.0, 0x0800, &ip)), Ok(()), "DHCP from 0.0.0.0 before a lease");
        assert_eq!(cs(&dynsec, None, &frame(mac.0, 0x0800, &leased)), Ok(()), "no DHCP: not checked");
        let mut bad_ihl = ip;
        bad_ihl[0] = 0x44;
        assert_eq!(cs(&sec, None, &frame(mac.0, 0x0800, &bad_ihl)), Err(DropReason::Malformed), "IHL < 5");
        let mut v6 = ip;
        v6[0] = 0x65;
        assert_eq!(cs(&sec, None, &frame(mac.0, 0x0800, &v6)), Err(DropReason::Malformed), "version 6 in an IPv4 frame");
        let mut v6 = [0u8; 40];
        v6[0] = 0x60;
        assert_eq!(cs(&sec, None, &frame(mac.0, 0x86dd, &v6)), Ok(()), "DAD from ::");
        v6[8..10].copy_from_slice(&[0xfe, 0x80]);
        v6[23] = 1;
        assert_eq!(cs(&sec, None, &frame(mac.0, 0x86dd, &v6)), Ok(()), "link-local");
        v6[8..10].copy_from_slice(&[0x20, 0x01]);
        assert_eq!(cs(&sec, None, &frame(mac.0, 0x86dd, &v6)), Err(DropReason::SpoofedIp), "global");
    }
}
