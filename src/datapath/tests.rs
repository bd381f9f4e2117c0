//! Pipeline tests on virtual time: flooding scope, learning, aging, limits, VLAN push/pop with
//! offload metadata, software segmentation on the egress path.

use super::*;
use crate::switch::Security;
use crate::wire::vnet::Gso;

#[derive(Default)]
struct Sink(Vec<(PortId, Option<VnetHdr>, Vec<u8>)>);

impl Transmit for Sink {
    fn transmit(&mut self, port: PortId, vnet: Option<&VnetHdr>, frame: &[u8]) -> Result<(), DropReason> {
        self.0.push((port, vnet.copied(), frame.to_vec()));
        Ok(())
    }
}

impl Sink {
    fn ports(&self) -> Vec<u16> {
        let mut v: Vec<u16> = self.0.iter().map(|(p, _, _)| p.0).collect();
        v.sort();
        v.dedup();
        v
    }
}

const A: NetId = NetId(0);
const B: NetId = NetId(1);
const ROUTER: MacAddr = MacAddr([2, 0, 0, 0, 0, 1]);

fn access(name: &str, net: NetId, offload: bool) -> PortSpec {
    PortSpec { name: name.into(), ifname: name.into(), kind: "tap".into(), role: Role::Access { net, security: None }, offload: offload.into(), mac_limit: Some(4) }
}

/// p0,p1: net A (offload); p2: net B; p3: trunk A=101,B=102 (offload); p4: net A without offload;
/// p5: trunk A only, without offload.
fn dp() -> Datapath {
    let trunk = |name: &str, pairs: &[(u16, NetId)], offload: bool| PortSpec {
        name: name.into(), ifname: name.into(), kind: "netdev".into(), role: Role::trunk(pairs), offload: offload.into(), mac_limit: None,
    };
    Datapath::new(DatapathConfig {
        router_mac: ROUTER,
        nets: vec![NetSpec { name: "a".into(), vlan: Some(101) }, NetSpec { name: "b".into(), vlan: Some(102) }],
        ports: vec![
            access("p0", A, true),
            access("p1", A, true),
            access("p2", B, true),
            trunk("p3", &[(101, A), (102, B)], true),
            access("p4", A, false),
            trunk("p5", &[(101, A)], false),
        ],
        mac_aging: Duration::from_secs(300),
        mac_table_size: 64,
        security: Default::default(),
        vxlan_mtu: 1450,
        pins: Vec::new(),
        l3: Default::default(),
    })
}

fn mac(i: u8) -> MacAddr {
    MacAddr([0x52, 0x54, 0, 0, 0, i])
}

fn eth(dst: MacAddr, src: MacAddr, payload: &[u8]) -> Vec<u8> {
    let mut f = dst.0.to_vec();
    f.extend_from_slice(&src.0);
    f.extend_from_slice(&[0x08, 0x00]);
    f.extend_from_slice(payload);
    f
}

fn tagged(vid: u16, f: &[u8]) -> Vec<u8> {
    let mut t = f[..12].to_vec();
    t.extend_from_slice(&crate::wire::vlan::tag_bytes(vid, 0));
    t.extend_from_slice(&f[12..]);
    t
}

fn send(d: &mut Datapath, now: u64, port: u16, frame: &[u8], vnet: VnetHdr) -> Sink {
    let mut s = Sink::default();
    let mut b = PacketBuf::from_frame(frame, vnet);
    d.process(Instant::from_secs(now), PortId(port), &mut b, &mut s);
    s
}

fn drops(d: &Datapath, port: u16, r: DropReason) -> u64 {
    d.stats(PortId(port)).unwrap().dropped(r)
}

#[test]
fn broadcast_floods_own_network_only_never_back() {
    let mut d = dp();
    let f = eth(MacAddr::BROADCAST, mac(1), &[0; 46]);
    let s = send(&mut d, 0, 0, &f, VnetHdr::default());
    assert_eq!(s.ports(), vec![1, 3, 4, 5]);
    // The trunk copy carries net A's tag; access copies are untagged and identical.
    for (p, _, out) in &s.0 {
        match p.0 {
            3 | 5 => assert_eq!(out, &tagged(101, &f)),
            _ => assert_eq!(out, &f),
        }
    }
    // From net B: only net B's members.
    let s = send(&mut d, 0, 2, &eth(MacAddr::BROADCAST, mac(2), &[0; 46]), VnetHdr::default());
    assert_eq!(s.ports(), vec![3]);
    assert_eq!(s.0[0].2[14..16], [0x00, 102]);
}

#[test]
fn learned_unicast_goes_to_one_port_and_networks_do_not_share_tables() {
    let mut d = dp();
    send(&mut d, 0, 1, &eth(MacAddr::BROADCAST, mac(1), &[0; 46]), VnetHdr::default());
    let s = send(&mut d, 0, 0, &eth(mac(1), mac(9), &[0; 46]), VnetHdr::default());
    assert_eq!(s.ports(), vec![1]);
    // A guest of net B sending to mac(1) is flooded within B: never reaches p1.
    let s = send(&mut d, 0, 2, &eth(mac(1), mac(3), &[0; 46]), VnetHdr::default());
    assert_eq!(s.ports(), vec![3]);
    // Net B using mac(1) as its own source does not poison net A's entry.
    send(&mut d, 0, 2, &eth(MacAddr::BROADCAST, mac(1), &[0; 46]), VnetHdr::default());
    let s = send(&mut d, 0, 0, &eth(mac(1), mac(9), &[0; 46]), VnetHdr::default());
    assert_eq!(s.ports(), vec![1]);
}

#[test]
fn aging_turns_unicast_back_into_flood() {
    let mut d = dp();
    send(&mut d, 0, 1, &eth(MacAddr::BROADCAST, mac(1), &[0; 46]), VnetHdr::default());
    assert_eq!(send(&mut d, 300, 0, &eth(mac(1), mac(9), &[0; 46]), VnetHdr::default()).ports(), vec![1]);
    d.poll(Instant::from_secs(301), &mut Sink::default());
    assert_eq!(send(&mut d, 301, 0, &eth(mac(1), mac(9), &[0; 46]), VnetHdr::default()).ports(), vec![1, 3, 4, 5]);
    assert!(d.poll_at() > Instant::from_secs(301));
}

#[test]
fn mac_move_and_hairpin() {
    let mut d = dp();
    send(&mut d, 0, 1, &eth(MacAddr::BROADCAST, mac(1), &[0; 46]), VnetHdr::default());
    send(&mut d, 1, 4, &eth(MacAddr::BROADCAST, mac(1), &[0; 46]), VnetHdr::default());
    assert_eq!(d.stats(PortId(4)).unwrap().mac_moves, 1);
    assert_eq!(send(&mut d, 2, 0, &eth(mac(1), mac(9), &[0; 46]), VnetHdr::default()).ports(), vec![4]);
    let s = send(&mut d, 2, 4, &eth(mac(1), mac(7), &[0; 46]), VnetHdr::default());
    assert!(s.0.is_empty());
    assert_eq!(drops(&d, 4, DropReason::Hairpin), 1);
}

#[test]
fn per_port_learning_limit() {
    let mut d = dp();
    for i in 1..=4 {
        assert_eq!(send(&mut d, 0, 0, &eth(MacAddr::BROADCAST, mac(i), &[0; 46]), VnetHdr::default()).0.len(), 4);
    }
    let s = send(&mut d, 0, 0, &eth(MacAddr::BROADCAST, mac(5), &[0; 46]), VnetHdr::default());
    assert!(s.0.is_empty());
    assert_eq!(drops(&d, 0, DropReason::PortMacLimit), 1);
}

#[test]
fn vlan_hygiene_is_counted() {
    let mut d = dp();
    let f = eth(MacAddr::BROADCAST, mac(1), &[0; 46]);
    assert!(send(&mut d, 0, 0, &tagged(102, &f), VnetHdr::default()).0.is_empty());
    assert_eq!(drops(&d, 0, DropReason::TaggedOnAccess), 1);
    assert!(send(&mut d, 0, 3, &f, VnetHdr::default()).0.is_empty());
    assert_eq!(drops(&d, 3, DropReason::UntaggedOnTrunk), 1);
    assert!(send(&mut d, 0, 3, &tagged(999, &f), VnetHdr::default()).0.is_empty());
    assert_eq!(drops(&d, 3, DropReason::UnknownVlan), 1);
    assert!(send(&mut d, 0, 3, &tagged(101, &tagged(102, &f)), VnetHdr::default()).0.is_empty());
    assert_eq!(drops(&d, 3, DropReason::DoubleTagged), 1);
    // p5 carries only net A: VLAN 102 is unknown there.
    assert!(send(&mut d, 0, 5, &tagged(102, &f), VnetHdr::default()).0.is_empty());
    assert_eq!(drops(&d, 5, DropReason::UnknownVlan), 1);
    // A correctly tagged trunk frame is popped onto net A's guest ports.
    let s = send(&mut d, 0, 3, &tagged(101, &f), VnetHdr::default());
    assert_eq!(s.ports(), vec![0, 1, 4, 5]);
    assert!(s.0.iter().filter(|(p, _, _)| p.0 != 5).all(|(_, _, out)| out == &f));
}

#[test]
fn runt_and_bad_sources_are_dropped() {
    let mut d = dp();
    assert!(send(&mut d, 0, 0, &[1, 2, 3], VnetHdr::default()).0.is_empty());
    assert_eq!(drops(&d, 0, DropReason::Malformed), 1);
    assert!(send(&mut d, 0, 0, &eth(mac(1), MacAddr::BROADCAST, &[]), VnetHdr::default()).0.is_empty());
    assert_eq!(drops(&d, 0, DropReason::BadSrcMac), 1);
    assert!(send(&mut d, 0, 0, &eth(ROUTER, mac(1), &[]), VnetHdr::default()).0.is_empty());
    assert_eq!(drops(&d, 0, DropReason::BadIp), 1, "an empty IPv4 packet for the router");
    // Nobody may speak as the router.
    assert!(send(&mut d, 0, 0, &eth(MacAddr::BROADCAST, ROUTER, &[]), VnetHdr::default()).0.is_empty());
    assert_eq!(drops(&d, 0, DropReason::BadSrcMac), 2);
    // STP BPDU / LLDP destinations are never bridged; the next group address is.
    let stp = MacAddr([0x01, 0x80, 0xc2, 0, 0, 0x00]);
    let lldp = MacAddr([0x01, 0x80, 0xc2, 0, 0, 0x0e]);
    assert!(send(&mut d, 0, 0, &eth(stp, mac(1), &[0; 46]), VnetHdr::default()).0.is_empty());
    assert!(send(&mut d, 0, 0, &eth(lldp, mac(1), &[0; 46]), VnetHdr::default()).0.is_empty());
    assert_eq!(drops(&d, 0, DropReason::LinkLocal), 2);
    let mcast = MacAddr([0x01, 0x80, 0xc2, 0, 0, 0x10]);
    assert_eq!(send(&mut d, 0, 0, &eth(mcast, mac(1), &[0; 46]), VnetHdr::default()).ports(), vec![1, 3, 4, 5]);
}

#[test]
fn port_security_macs_are_pinned_against_trunk_takeover() {
    let mut d = dp_secured(1);
    // Known before it ever spoke: unicast goes straight to p1.
    assert_eq!(send(&mut d, 0, 0, &eth(mac(1), mac(9), &[0; 46]), VnetHdr::default()).ports(), vec![1]);
    // Someone behind the trunk claims mac(1): dropped, and the entry stays on p1.
    let f = tagged(101, &eth(MacAddr::BROADCAST, mac(1), &[0; 46]));
    assert!(send(&mut d, 0, 3, &f, VnetHdr::default()).0.is_empty());
    assert_eq!(drops(&d, 3, DropReason::SpoofedMac), 1);
    assert_eq!(send(&mut d, 1000, 0, &eth(mac(1), mac(9), &[0; 46]), VnetHdr::default()).ports(), vec![1]);
}

/// The test datapath with port `i` locked to `mac(1)`, built through the constructor (which
/// pins the MAC), as a config would build it.
fn dp_secured(i: usize) -> Datapath {
    let d = dp();
    let mut ports = d.ports.clone();
    ports[i].role = Role::Access { net: A, security: Some(Security { mac: mac(1), ip: None, allowed: Default::default() }) };
    ports[i].mac_limit = Some(1);
    Datapath::new(DatapathConfig {
        ports,
        router_mac: ROUTER,
        nets: vec![NetSpec { name: "a".into(), vlan: Some(101) }, NetSpec { name: "b".into(), vlan: Some(102) }],
        mac_aging: Duration::from_secs(300),
        mac_table_size: 64,
        security: Default::default(),
        vxlan_mtu: 1450,
        pins: Vec::new(),
        l3: Default::default(),
    })
}

#[test]
fn port_security_blocks_spoofed_mac() {
    let mut cfg_dp = dp_secured(0);
    assert!(send(&mut cfg_dp, 0, 0, &eth(MacAddr::BROADCAST, mac(2), &[0; 46]), VnetHdr::default()).0.is_empty());
    assert_eq!(drops(&cfg_dp, 0, DropReason::SpoofedMac), 1);
    assert_eq!(send(&mut cfg_dp, 0, 0, &eth(MacAddr::BROADCAST, mac(1), &[0; 46]), VnetHdr::default()).0.len(), 4);
}

fn tcp_super(payload_len: usize) -> Vec<u8> {
    let mut v = Vec::new();
    etherparse::PacketBuilder::ethernet2(mac(1).0, mac(2).0)
        .ipv4([10, 1, 1, 11], [10, 1, 1, 12], 64)
        .tcp(40000, 5201, 1, 65535)
        .ack(1)
        .write(&mut v, &vec![0xab; payload_len])
        .unwrap();
    v
}

#[test]
fn gso_superframe_crosses_as_one_unit_and_tag_shifts_offsets() {
    let mut d = dp();
    let v = VnetHdr { needs_csum: true, gso: Gso::TcpV4, gso_size: 1448, hdr_len: 54, csum_start: 34, csum_offset: 16, ..Default::default() };
    // Learn mac(2) on the offload trunk p3, then send a 20 KB super-frame from p0 to it.
    let f2 = tagged(101, &eth(MacAddr::BROADCAST, mac(2), &[0; 46]));
    send(&mut d, 0, 3, &f2, VnetHdr::default());
    let sf = tcp_super(20_000);
    let s = send(&mut d, 0, 0, &sf, v);
    assert_eq!(s.0.len(), 1, "one unit");
    let (p, vn, out) = &s.0[0];
    assert_eq!(p.0, 3);
    assert_eq!(out.len(), sf.len() + 4);
    let vn = vn.unwrap();
    assert_eq!((vn.csum_start, vn.hdr_len, vn.gso_size, vn.gso), (38, 58, 1448, Gso::TcpV4));
    // Learn mac(2) on p1 (offload access port): the super-frame passes through unchanged.
    send(&mut d, 1, 1, &eth(MacAddr::BROADCAST, mac(2), &[0; 46]), VnetHdr::default());
    let s = send(&mut d, 1, 0, &sf, v);
    assert_eq!(s.0, vec![(PortId(1), Some(v), sf.clone())]);
}

#[test]
fn gso_superframe_is_segmented_for_ports_without_offload() {
    let mut d = dp();
    let v = VnetHdr { needs_csum: true, gso: Gso::TcpV4, gso_size: 1448, hdr_len: 54, csum_start: 34, csum_offset: 16, ..Default::default() };
    send(&mut d, 0, 4, &eth(MacAddr::BROADCAST, mac(2), &[0; 46]), VnetHdr::default());
    let s = send(&mut d, 0, 0, &tcp_super(10_000), v);
    assert_eq!(s.0.len(), 7); // ceil(10000 / 1448)
    for (p, vn, seg) in &s.0 {
        assert_eq!(p.0, 4);
        assert!(vn.is_none());
        assert!(seg.len() <= 14 + 20 + 20 + 1448);
        let pkt = etherparse::SlicedPacket::from_ethernet(seg).unwrap();
        let Some(etherparse::NetSlice::Ipv4(ip)) = &pkt.net else { panic!() };
        let Some(etherparse::TransportSlice::Tcp(t)) = &pkt.transport else { panic!() };
        let h = ip.header().to_header();
        assert_eq!(t.checksum(), t.to_header().calc_checksum_ipv4(&h, t.payload()).unwrap());
    }
    assert_eq!(d.stats(PortId(4)).unwrap().tx_sw_segmented, 1);
    assert_eq!(d.stats(PortId(4)).unwrap().tx_frames, 7);
    // Flooded to the non-offload trunk p5 as well: segments carry the tag.
    let mut d = dp();
    let s = send(&mut d, 0, 0, &tcp_super(3000), v);
    let on5: Vec<_> = s.0.iter().filter(|(p, _, _)| p.0 == 5).collect();
    assert_eq!(on5.len(), 3);
    assert!(on5.iter().all(|(_, _, f)| f[12..16] == [0x81, 0x00, 0x00, 101]));
}

#[test]
fn lying_offload_metadata_is_dropped_at_ingress() {
    let mut d = dp();
    // csum_start/offset aimed at the IPv4 source address.
    let v = VnetHdr { needs_csum: true, csum_start: 14, csum_offset: 12, ..Default::default() };
    let s = send(&mut d, 0, 0, &tcp_super(100), v);
    assert!(s.0.is_empty());
    assert_eq!(drops(&d, 0, DropReason::BadVnetHdr), 1);
    // A GSO super-frame asking for 1-byte segments.
    let v = VnetHdr { needs_csum: true, gso: Gso::TcpV4, gso_size: 1, hdr_len: 54, csum_start: 34, csum_offset: 16, ..Default::default() };
    assert!(send(&mut d, 0, 0, &tcp_super(60_000), v).0.is_empty());
    assert_eq!(drops(&d, 0, DropReason::BadVnetHdr), 2);
}

#[test]
fn full_table_still_forwards_without_learning() {
    let mut d = Datapath::new(DatapathConfig {
        router_mac: ROUTER,
        nets: vec![NetSpec { name: "a".into(), vlan: Some(101) }],
        ports: vec![access("p0", A, true), access("p1", A, true)],
        mac_aging: Duration::from_secs(300),
        mac_table_size: 2,
        security: Default::default(),
        vxlan_mtu: 1450,
        pins: Vec::new(),
        l3: Default::default(),
    });
    send(&mut d, 0, 0, &eth(MacAddr::BROADCAST, mac(1), &[0; 46]), VnetHdr::default());
    send(&mut d, 0, 1, &eth(MacAddr::BROADCAST, mac(2), &[0; 46]), VnetHdr::default());
    // Table full: a third source is forwarded, not learned, and counted.
    assert_eq!(send(&mut d, 0, 0, &eth(mac(2), mac(3), &[0; 46]), VnetHdr::default()).ports(), vec![1]);
    assert_eq!(d.stats(PortId(0)).unwrap().learn_table_full, 1);
    assert_eq!(d.stats(PortId(0)).unwrap().total_drops(), 0);
    // Replies to it are flooded (unknown), as on a Linux bridge.
    assert_eq!(send(&mut d, 0, 1, &eth(mac(3), mac(2), &[0; 46]), VnetHdr::default()).ports(), vec![0]);
}

#[test]
fn trunk_priority_is_kept_from_trunk_to_trunk() {
    let mut d = dp();
    let f = eth(MacAddr::BROADCAST, mac(7), &[0; 46]);
    let mut t = tagged(101, &f);
    t[14] |= 5 << 5 | 1 << 4; // PCP 5, DEI set
    let s = send(&mut d, 0, 3, &t, VnetHdr::default());
    // Out of the other trunk with the same priority; to guest ports untagged.
    let on5: Vec<_> = s.0.iter().filter(|(p, _, _)| p.0 == 5).collect();
    assert_eq!(on5.len(), 1);
    assert_eq!(on5[0].2, t);
    assert!(s.0.iter().filter(|(p, _, _)| p.0 != 5).all(|(_, _, out)| *out == f));
    // Guest frames leave trunks with priority 0.
    let s = send(&mut d, 0, 0, &eth(MacAddr::BROADCAST, mac(8), &[0; 46]), VnetHdr::default());
    assert!(s.0.iter().filter(|(p, _, _)| p.0 == 3).all(|(_, _, out)| out[14] >> 4 == 0));
    // A priority-tagged guest frame (VID 0) is the port's own: popped, its priority kept.
    let mut pt = tagged(0, &eth(MacAddr::BROADCAST, mac(9), &[0; 46]));
    pt[14] |= 3 << 5;
    let s = send(&mut d, 0, 0, &pt, VnetHdr::default());
    assert_eq!(s.ports(), vec![1, 3, 4, 5]);
    let on3 = s.0.iter().find(|(p, _, _)| p.0 == 3).unwrap();
    assert_eq!((on3.2[14] >> 5, u16::from_be_bytes([on3.2[14], on3.2[15]]) & 0xfff), (3, 101), "priority 3 on VLAN 101");
    assert!(s.0.iter().filter(|(p, _, _)| p.0 == 1).all(|(_, _, out)| out[12..14] == [8, 0]), "untagged to guests");
}

#[test]
fn lost_port_forgets_its_learned_macs() {
    let mut d = dp();
    send(&mut d, 0, 1, &eth(MacAddr::BROADCAST, mac(1), &[0; 46]), VnetHdr::default());
    assert_eq!(send(&mut d, 0, 0, &eth(mac(1), mac(9), &[0; 46]), VnetHdr::default()).ports(), vec![1]);
    d.port_lost(PortId(1));
    assert_eq!(send(&mut d, 0, 0, &eth(mac(1), mac(9), &[0; 46]), VnetHdr::default()).ports(), vec![1, 3, 4, 5]);
    d.port_lost(PortId(999)); // unknown ids are ignored
}

/// Frames and VXLAN datagrams as the I/O edge would get them.
#[derive(Default)]
struct Wire {
    frames: Vec<(PortId, Option<VnetHdr>, Vec<u8>)>,
    udp: Vec<(PortId, Vec<u8>, Option<usize>)>,
    /// Datagrams the underlay takes before sends fail (`None`: all).
    udp_room: Option<usize>,
    /// Frames a port takes before writes fail (`None`: all).
    frame_room: Option<usize>,
    /// Every send to a peer fails so (an unreachable underlay).
    udp_fail: Option<DropReason>,
}

impl Transmit for Wire {
    fn transmit(&mut self, port: PortId, vnet: Option<&VnetHdr>, frame: &[u8]) -> Result<(), DropReason> {
        if let Some(r) = &mut self.frame_room {
            if *r == 0 {
                return Err(DropReason::TxFull);
            }
            *r -= 1;
        }
        self.frames.push((port, vnet.copied(), frame.to_vec()));
        Ok(())
    }
    fn transmit_udp(&mut self, port: PortId, _entropy: u16, payload: &[u8], seg: Option<usize>) -> Result<(), Partial> {
        if let Some(reason) = self.udp_fail {
            return Err(Partial { reason, sent: 0 });
        }
        let n = seg.map_or(1, |s| payload.len().div_ceil(s));
        if let Some(room) = &mut self.udp_room {
            if *room < n {
                let sent = *room;
                if sent > 0 {
                    let s = seg.unwrap_or(payload.len());
                    self.udp.push((port, payload[..sent * s].to_vec(), seg));
                }
                *room = 0;
                return Err(Partial { reason: DropReason::TxFull, sent });
            }
            *room -= n;
        }
        self.udp.push((port, payload.to_vec(), seg));
        Ok(())
    }
}

const PEER: std::net::Ipv4Addr = std::net::Ipv4Addr::new(192, 0, 2, 2);

/// p0: net A with offload; p1: net A without; p2: VXLAN peer 192.0.2.2 carrying A as VNI
/// 5001. Overlay MTU 1450.
fn dp_vxlan() -> Datapath {
    dp_vxlan_with(false, Vec::new())
}

/// [`dp_vxlan`] with the peer learned over EVPN (`evpn`) and carrying `unicast_only`.
fn dp_vxlan_with(evpn: bool, unicast_only: Vec<NetId>) -> Datapath {
    let vtep = PortSpec {
        name: "vx".into(),
        ifname: "vx".into(),
        kind: "vxlan".into(),
        role: Role::Vtep { remote: PEER, vnis: crate::switch::VniMap::new([(5001, A)]), evpn, unicast_only },
        offload: false.into(),
        mac_limit: None,
    };
    Datapath::new(DatapathConfig {
        router_mac: ROUTER,
        nets: vec![NetSpec { name: "a".into(), vlan: None }],
        ports: vec![access("p0", A, true), access("p1", A, false), vtep],
        mac_aging: Duration::from_secs(300),
        mac_table_size: 64,
        security: Default::default(),
        vxlan_mtu: 1450,
        pins: Vec::new(),
        l3: Default::default(),
    })
}

/// A TCP segment from mac(9) (behind the peer) to `dst`, checksums complete.
fn tcp_seg(dst: MacAddr, seq: u32, id: u16, len: usize) -> Vec<u8> {
    let mut v = Vec::new();
    etherparse::PacketBuilder::ethernet2(mac(9).0, dst.0)
        .ipv4([10, 1, 1, 9], [10, 1, 1, 11], 64)
        .tcp(5201, 40000, seq, 1000)
        .ack(1)
        .write(&mut v, &(0..len).map(|i| (i % 251) as u8).collect::<Vec<_>>())
        .unwrap();
    v[18..20].copy_from_slice(&id.to_be_bytes());
    v[24..26].fill(0);
    let c = crate::wire::checksum::checksum(&v[14..34]);
    v[24..26].copy_from_slice(&c.to_be_bytes());
    v
}

fn vx(inner: &[u8]) -> Vec<u8> {
    let mut d = vec![0u8; 8];
    crate::wire::vxlan::emit(&mut d, 5001);
    d.extend_from_slice(inner);
    d
}

fn tcp_ok(f: &[u8]) -> bool {
    let p = etherparse::SlicedPacket::from_ethernet(f).unwrap();
    let Some(etherparse::NetSlice::Ipv4(ip)) = &p.net else { return false };
    let Some(etherparse::TransportSlice::Tcp(t)) = &p.transport else { return false };
    t.checksum() == t.to_header().calc_checksum_ipv4(&ip.header().to_header(), t.payload()).unwrap()
}

/// One UDP_GRO read of five segments of one flow reaches the offload port as one super-frame
/// that cuts back into the very same five; the port without offload gets the five as they came.
#[test]
fn vxlan_batch_coalesces_for_offload_ports_only() {
    let mut b = PacketBuf::new();
    for (port, offload) in [(0u16, true), (1, false)] {
        let mut d = dp_vxlan();
        let dst = mac(port as u8 + 1);
        send(&mut d, 0, port, &eth(MacAddr::BROADCAST, dst, &[0; 46]), VnetHdr::default());
        let segs: Vec<Vec<u8>> = (0..5u32).map(|i| tcp_seg(dst, 1 + i * 1000, 10 + i as u16, if i == 4 { 500 } else { 1000 })).collect();
        let batch: Vec<u8> = segs.iter().flat_map(|s| vx(s)).collect();
        // Equal-sized datagrams but the last, as GRO hands them over.
        let mut w = Wire::default();
        d.vxlan_batch(Instant::from_secs(1), PEER, &batch, 8 + segs[0].len(), &mut b, &mut w);
        let st = d.stats(PortId(port)).unwrap();
        if offload {
            assert_eq!(w.frames.len(), 1, "one super-frame");
            let (p, v, f) = &w.frames[0];
            let v = v.unwrap();
            assert_eq!((p.0, v.gso, v.gso_size), (0, Gso::TcpV4, 1000));
            let mut again = Vec::new();
            let mut scratch = vec![0u8; 70_000];
            crate::offload::finish(f, &v, &mut scratch, &mut |s| again.push(s.to_vec())).unwrap();
            assert_eq!(again, segs);
            assert_eq!((st.tx_frames, st.tx_coalesced), (1, 1));
        } else {
            let got: Vec<Vec<u8>> = w.frames.iter().map(|(_, _, f)| f.clone()).collect();
            assert_eq!(got, segs);
            assert_eq!((st.tx_frames, st.tx_coalesced), (5, 0));
        }
        assert_eq!(d.stats(PortId(2)).unwrap().rx_frames, 5);
    }
}

/// A kernel VTEP over a veth hands over its guest's super-frame whole, in one datagram with a
/// partial checksum: it becomes a GSO frame again, cut to the overlay MTU wherever it must be.
#[test]
fn leaked_superframe_from_a_kernel_vtep_is_resegmented() {
    let mut b = PacketBuf::new();
    let mut d = dp_vxlan();
    send(&mut d, 0, 0, &eth(MacAddr::BROADCAST, mac(1), &[0; 46]), VnetHdr::default());
    send(&mut d, 0, 1, &eth(MacAddr::BROADCAST, mac(2), &[0; 46]), VnetHdr::default());
    for (dst, port) in [(mac(1), 0u16), (mac(2), 1)] {
        let mut f = tcp_seg(dst, 1, 1, 10_000);
        // The kernel's partial checksum: the pseudo-header sum alone.
        let l4 = (f.len() - 34) as u32;
        let partial = crate::wire::checksum::fold(crate::wire::checksum::pseudo_v4([10, 1, 1, 9], [10, 1, 1, 11], 6, l4));
        f[50..52].copy_from_slice(&partial.to_be_bytes());
        let dg = vx(&f);
        let mut w = Wire::default();
        d.vxlan_batch(Instant::from_secs(1), PEER, &dg, dg.len(), &mut b, &mut w);
        if port == 0 {
            assert_eq!(w.frames.len(), 1);
            let v = w.frames[0].1.unwrap();
            assert_eq!((v.gso, v.gso_size, v.needs_csum, v.hdr_len), (Gso::TcpV4, 1410, true, 54));
        } else {
            assert_eq!(w.frames.len(), 8, "ceil(10000 / 1410)");
            assert!(w.frames.iter().all(|(p, _, s)| p.0 == 1 && s.len() <= 14 + 1450 && tcp_ok(s)));
        }
    }
    assert_eq!(d.stats(PortId(2)).unwrap().rx_gso_frames, 2);
    // A datagram cut short by the socket is counted against its peer.
    d.vxlan_truncated(PEER);
    assert_eq!(drops(&d, 2, DropReason::VxlanTruncated), 1);
    d.vxlan_truncated(std::net::Ipv4Addr::new(192, 0, 2, 99));
    assert_eq!(d.show_stats().vxlan.unknown_peer, 1);
}

/// A guest's super-frame to a remote MAC leaves as equal-sized datagrams (one UDP_SEGMENT
/// batch per buffer-full), each a VXLAN header and a valid segment, all of them, in order;
/// a tiny segment size spills over several batches.
#[test]
fn superframe_to_a_peer_is_segmented_in_batches() {
    let mut d = dp_vxlan();
    let mut b = PacketBuf::new();
    let mut w = Wire::default();
    // mac(9) lives behind the peer.
    let arp = vx(&eth(MacAddr::BROADCAST, mac(9), &[0; 46]));
    d.vxlan_batch(Instant::from_secs(0), PEER, &arp, arp.len(), &mut b, &mut w);
    for (mss, payload) in [(1398u16, 60_000usize), (48, 60_000)] {
        let mut f = Vec::new();
        etherparse::PacketBuilder::ethernet2(mac(1).0, mac(9).0)
            .ipv4([10, 1, 1, 11], [10, 1, 1, 9], 64)
            .tcp(40000, 5201, 7, 1000)
            .write(&mut f, &(0..payload).map(|i| (i % 253) as u8).collect::<Vec<_>>())
            .unwrap();
        let v = VnetHdr { needs_csum: true, gso: Gso::TcpV4, gso_size: mss, hdr_len: 54, csum_start: 34, csum_offset: 16, ..Default::default() };
        let mut w = Wire::default();
        let mut pb = PacketBuf::from_frame(&f, v);
        d.process(Instant::from_secs(1), PortId(0), &mut pb, &mut w);
        let mut seq = 7u32;
        let mut batches = 0;
        for (p, payload, seg) in &w.udp {
            assert_eq!(p.0, 2);
            batches += 1;
            let seg = seg.unwrap_or(payload.len());
            for dg in payload.chunks(seg) {
                assert_eq!(&dg[..8], &vx(&[])[..]);
                let inner = &dg[8..];
                assert!(inner.len() - 14 <= 1450 && tcp_ok(inner));
                assert_eq!(u32::from_be_bytes(inner[38..42].try_into().unwrap()), seq);
                seq += (inner.len() - 54) as u32;
            }
        }
        assert_eq!(seq, 7 + payload as u32, "every byte, in order");
        assert!(if mss == 48 { batches > 1 } else { batches == 1 }, "mss {mss}: {batches} batches");
    }
}

/// Inner checksums of decapsulated frames, IPv4 and IPv6: complete and right is valid, the
/// pseudo-header sum alone is partial (to be finished), anything else is left for the
/// receiver to refuse.
/// A decapsulated frame's checksum state, its headers read as vxlan_ingress reads them.
fn state(f: &[u8]) -> VnetHdr {
    match FrameCtx::parse(f) {
        Ok(c) => inner_checksum_state(f, inner_l4(&c, f).as_ref()),
        Err(_) => VnetHdr::default(),
    }
}

#[test]
fn inner_checksum_states() {
    use crate::wire::checksum;
    let mut v6 = Vec::new();
    etherparse::PacketBuilder::ethernet2(mac(9).0, mac(1).0)
        .ipv6([0xfd; 16], [0xfe; 16], 64)
        .udp(5000, 53)
        .write(&mut v6, &[7u8; 101])
        .unwrap();
    let v4 = tcp_seg(mac(1), 1, 1, 333);
    for (f, l4, co, pseudo) in [
        (v6.clone(), 54usize, 6usize, checksum::pseudo_v6([0xfd; 16], [0xfe; 16], 17, 109)),
        (v4.clone(), 34, 16, checksum::pseudo_v4([10, 1, 1, 9], [10, 1, 1, 11], 6, 353)),
    ] {
        let st = state(&f);
        assert!(st.data_valid && !st.needs_csum, "complete");
        let mut partial = f.clone();
        partial[l4 + co..l4 + co + 2].copy_from_slice(&checksum::fold(pseudo).to_be_bytes());
        let st = state(&partial);
        assert!(st.needs_csum && !st.data_valid && st.csum_start as usize == l4 && st.csum_offset as usize == co, "partial");
        let mut out = Vec::new();
        let mut scratch = vec![0u8; 4096];
        crate::offload::finish(&partial, &st, &mut scratch, &mut |s| out.push(s.to_vec())).unwrap();
        assert_eq!(out, vec![f.clone()], "finishing the partial one gives the original");
        let mut bad = f.clone();
        bad[l4 + co] ^= 0x55;
        assert_eq!(state(&bad), VnetHdr::default(), "wrong");
        assert_eq!(state(&f[..50]), VnetHdr::default(), "cut short");
    }
}

/// A kernel VTEP's guest sending with UDP_SEGMENT: over a veth its datagrams arrive as one
/// tunnelled super-datagram, and the kernel states the inner segment size. That is not where
/// VXLAN datagrams end: the guest's payload, crafted as VXLAN headers at those offsets, must
/// never be taken for frames of its own. The super-datagram leaves as the guest's datagrams.
#[test]
fn tunnelled_udp_superdatagram_is_one_datagram_and_its_datagrams_survive() {
    let seg = 1000usize;
    // The payload plants, where a cut at `seg` would fall, a VXLAN header and a broadcast
    // frame from mac(66).
    let mut payload = vec![0x5au8; 4 * seg];
    for k in 1..5 {
        let at = k * seg - (8 + 14 + 20 + 8);
        if at + 8 + 60 <= payload.len() {
            let fake = vx(&eth(MacAddr::BROADCAST, mac(66), &[0x11; 46]));
            payload[at..at + fake.len()].copy_from_slice(&fake);
        }
    }
    let mut f = Vec::new();
    etherparse::PacketBuilder::ethernet2(mac(9).0, mac(1).0)
        .ipv4([10, 1, 1, 9], [10, 1, 1, 11], 64)
        .udp(4433, 5000)
        .write(&mut f, &payload)
        .unwrap();
    // The kernel leaves the checksum partial.
    let partial = crate::wire::checksum::fold(crate::wire::checksum::pseudo_v4([10, 1, 1, 9], [10, 1, 1, 11], 17, (8 + payload.len()) as u32));
    f[40..42].copy_from_slice(&partial.to_be_bytes());
    for (port, offload) in [(0u16, true), (1, false)] {
        let mut d = dp_vxlan();
        let dst = mac(port as u8 + 1);
        let mut f = f.clone();
        f[..6].copy_from_slice(&dst.0);
        let dg = vx(&f);
        send(&mut d, 0, port, &eth(MacAddr::BROADCAST, dst, &[0; 46]), VnetHdr::default());
        let mut w = Wire::default();
        let mut b = PacketBuf::new();
        d.vxlan_batch(Instant::from_secs(1), PEER, &dg, seg, &mut b, &mut w);
        assert!(w.frames.iter().all(|(p, _, _)| p.0 == port), "only to the destination: {:?}", w.frames.iter().map(|x| x.0).collect::<Vec<_>>());
        assert!(!d.show_fdb(Instant::from_secs(1)).iter().any(|r| r.mac == mac(66).to_string()), "a planted frame was taken");
        if offload {
            assert_eq!(w.frames.len(), 1);
            let v = w.frames[0].1.unwrap();
            assert_eq!((v.gso, v.gso_size, v.needs_csum, v.csum_offset), (Gso::UdpL4, seg as u16, true, 6));
        } else {
            assert_eq!(w.frames.len(), 4, "the guest's four datagrams");
            let mut got = Vec::new();
            for (_, _, s) in &w.frames {
                let p = etherparse::SlicedPacket::from_ethernet(s).unwrap();
                let Some(etherparse::NetSlice::Ipv4(ip)) = &p.net else { panic!() };
                let Some(etherparse::TransportSlice::Udp(u)) = &p.transport else { panic!() };
                assert_eq!(u.checksum(), u.to_header().calc_checksum_ipv4(&ip.header().to_header(), u.payload()).unwrap());
                got.extend_from_slice(u.payload());
            }
            assert_eq!(got, payload);
        }
    }
}

/// A batch to a peer that the underlay takes only in part: what left is counted as sent, the
/// rest as dropped, datagram by datagram; a coalesced super-frame whose write fails counts each
/// segment it was made of.
#[test]
fn partial_sends_count_what_left_and_what_was_lost() {
    let mut d = dp_vxlan();
    let mut b = PacketBuf::new();
    let arp = vx(&eth(MacAddr::BROADCAST, mac(9), &[0; 46]));
    d.vxlan_batch(Instant::from_secs(0), PEER, &arp, arp.len(), &mut b, &mut Wire::default());
    let mut f = Vec::new();
    etherparse::PacketBuilder::ethernet2(mac(1).0, mac(9).0)
        .ipv4([10, 1, 1, 11], [10, 1, 1, 9], 64)
        .tcp(40000, 5201, 7, 1000)
        .write(&mut f, &vec![7u8; 13_980])
        .unwrap();
    // 13980 bytes of 1398-byte segments: ten datagrams, of which the underlay takes four.
    let v = VnetHdr { needs_csum: true, gso: Gso::TcpV4, gso_size: 1398, hdr_len: 54, csum_start: 34, csum_offset: 16, ..Default::default() };
    let before = d.stats(PortId(2)).unwrap().tx_frames;
    let mut w = Wire { udp_room: Some(4), ..Wire::default() };
    d.process(Instant::from_secs(1), PortId(0), &mut PacketBuf::from_frame(&f, v), &mut w);
    let st = d.stats(PortId(2)).unwrap();
    assert_eq!(st.tx_frames - before, 4);
    assert_eq!(st.tx_bytes, 4 * (54 + 1398));
    assert_eq!(drops(&d, 2, DropReason::TxFull), 6);

    // Five segments coalesced for the offload port, whose write then fails: five frames lost.
    let mut d = dp_vxlan();
    let dst = mac(1);
    send(&mut d, 0, 0, &eth(MacAddr::BROADCAST, dst, &[0; 46]), VnetHdr::default());
    let segs: Vec<Vec<u8>> = (0..5u32).map(|i| tcp_seg(dst, 1 + i * 1000, 10 + i as u16, 1000)).collect();
    let batch: Vec<u8> = segs.iter().flat_map(|s| vx(s)).collect();
    let mut w = Wire { frame_room: Some(0), ..Wire::default() };
    d.vxlan_batch(Instant::from_secs(1), PEER, &batch, 8 + segs[0].len(), &mut b, &mut w);
    assert_eq!(drops(&d, 0, DropReason::TxFull), 5);
    assert_eq!(d.stats(PortId(0)).unwrap().tx_frames, 0);
}

/// A priority-tagged frame from a guest whose offload offsets would point before the frame once
/// the tag is gone: counted as a failed tag removal, not as a bad vnet header.
#[test]
fn a_tag_that_cannot_be_popped_has_its_own_reason() {
    let mut d = dp();
    let mut f = tagged(0, &eth(mac(2), mac(1), &[0; 46]));
    f[16..18].copy_from_slice(&[0x08, 0x00]);
    let v = VnetHdr { needs_csum: true, csum_start: 2, csum_offset: 0, ..Default::default() };
    send(&mut d, 0, 0, &f, v);
    assert_eq!(drops(&d, 0, DropReason::TagPopFailed), 1, "{:?}", d.stats(PortId(0)).unwrap().drop_map());
    assert_eq!(drops(&d, 0, DropReason::BadVnetHdr), 0);
}

/// A super-datagram from a kernel VTEP whose inner packet is TCP, not UDP, cannot be cut into
/// the sender's datagrams: its own reason, not "too big".
#[test]
fn an_uncuttable_superdatagram_is_not_called_too_big() {
    let mut d = dp_vxlan();
    let mut b = PacketBuf::new();
    let mut w = Wire::default();
    let seg = tcp_seg(mac(1), 1, 1, 100);
    // One message holding two datagrams' worth, its inner packet claiming the whole length.
    let inner = tcp_seg(mac(1), 1, 1, 400);
    let dg = vx(&inner);
    d.vxlan_batch(Instant::from_secs(1), PEER, &dg, 8 + seg.len(), &mut b, &mut w);
    assert_eq!(drops(&d, 2, DropReason::VxlanBadSuperframe), 1, "{:?}", d.stats(PortId(2)).unwrap().drop_map());
    assert_eq!(drops(&d, 2, DropReason::VxlanTooBig), 0);
}

/// A peer's state says what is known: nothing yet, heard from, a send that failed after the
/// last datagram heard, silence for a minute.
#[test]
fn vxlan_peer_state_is_what_is_known() {
    let mut d = dp_vxlan();
    let mut b = PacketBuf::new();
    let state = |d: &Datapath, t: u64| d.show_ports(Instant::from_secs(t)).into_iter().find(|r| r.name == "vx").and_then(|r| r.peer).unwrap();
    assert_eq!(state(&d, 0).state, "unknown");
    assert!(d.show_ports(Instant::from_secs(0))[0].peer.is_none(), "guest ports have no peer state");
    let arp = vx(&eth(MacAddr::BROADCAST, mac(9), &[0; 46]));
    d.vxlan_batch(Instant::from_secs(1), PEER, &arp, arp.len(), &mut b, &mut Wire::default());
    let s = state(&d, 3);
    assert_eq!((s.state, s.last_rx_secs, s.last_tx_error_secs), ("up", Some(2), None));
    // A guest's frame to mac(9) cannot leave: the route to the peer is gone.
    let mut w = Wire { udp_fail: Some(DropReason::PortDown), ..Wire::default() };
    send(&mut d, 0, 0, &eth(MacAddr::BROADCAST, mac(1), &[0; 46]), VnetHdr::default());
    let mut pb = PacketBuf::from_frame(&eth(mac(9), mac(1), &[0; 46]), VnetHdr::default());
    d.process(Instant::from_secs(4), PortId(0), &mut pb, &mut w);
    assert_eq!(state(&d, 5).state, "unreachable");
    d.vxlan_batch(Instant::from_secs(6), PEER, &arp, arp.len(), &mut b, &mut Wire::default());
    assert_eq!(state(&d, 6).state, "up");
    assert_eq!(state(&d, 6 + 61).state, "unknown");
}

/// A guest's USO super-datagram (3 x 1000 bytes) to a port that negotiated checksum and TSO but
/// not USO is cut into three datagrams, each complete; to a port that takes USO it crosses
/// whole; in the other direction the TSO-only port's own TCP super-frames still cross whole.
#[test]
fn a_uso_frame_is_segmented_for_a_port_without_uso() {
    use crate::wire::vnet::Offloads;
    let mut ports = vec![access("p0", A, true), access("p1", A, true), access("p2", A, true)];
    ports[1].offload = Offloads::TSO;
    let mut d = Datapath::new(DatapathConfig {
        router_mac: ROUTER,
        nets: vec![NetSpec { name: "a".into(), vlan: None }],
        ports,
        mac_aging: Duration::from_secs(300),
        mac_table_size: 64,
        security: Default::default(),
        vxlan_mtu: 1450,
        pins: Vec::new(),
        l3: Default::default(),
    });
    send(&mut d, 0, 1, &eth(MacAddr::BROADCAST, mac(2), &[0; 46]), VnetHdr::default());
    send(&mut d, 0, 2, &eth(MacAddr::BROADCAST, mac(3), &[0; 46]), VnetHdr::default());
    let uso = |dst: MacAddr| {
        let mut f = Vec::new();
        etherparse::PacketBuilder::ethernet2(mac(1).0, dst.0).ipv4([10, 1, 1, 1], [10, 1, 1, 2], 64).udp(5000, 6000).write(&mut f, &vec![9u8; 3000]).unwrap();
        let l4 = (f.len() - 34) as u32;
        let partial = crate::wire::checksum::fold(crate::wire::checksum::pseudo_v4([10, 1, 1, 1], [10, 1, 1, 2], 17, l4));
        f[40..42].copy_from_slice(&partial.to_be_bytes());
        let v = VnetHdr { needs_csum: true, gso: Gso::UdpL4, gso_size: 1000, hdr_len: 42, csum_start: 34, csum_offset: 6, ..Default::default() };
        (f, v)
    };
    let (f, v) = uso(mac(2));
    let s = send(&mut d, 1, 0, &f, v);
    assert_eq!(s.0.len(), 3, "three datagrams for the port without USO");
    for (p, vh, seg) in &s.0 {
        assert_eq!(p.0, 1);
        assert!(vh.is_none_or(|h| h.is_plain()), "{vh:?}");
        let pkt = etherparse::SlicedPacket::from_ethernet(seg).unwrap();
        let (Some(etherparse::NetSlice::Ipv4(ip)), Some(etherparse::TransportSlice::Udp(u))) = (&pkt.net, &pkt.transport) else { panic!() };
        assert_eq!(u.payload().len(), 1000);
        assert_eq!(u.checksum(), u.to_header().calc_checksum_ipv4(&ip.header().to_header(), u.payload()).unwrap());
    }
    assert_eq!(d.stats(PortId(1)).unwrap().tx_sw_segmented, 1);
    let (f, v) = uso(mac(3));
    let s = send(&mut d, 1, 0, &f, v);
    assert_eq!(s.0.len(), 1, "whole for the USO port");
    assert_eq!(s.0[0].1.map(|h| h.gso), Some(Gso::UdpL4));
    // TCP super-frames to the TSO-only port still cross whole.
    let t = tcp_super(20_000);
    let tv = VnetHdr { needs_csum: true, gso: Gso::TcpV4, gso_size: 1448, hdr_len: 54, csum_start: 34, csum_offset: 16, ..Default::default() };
    let s = send(&mut d, 1, 0, &t, tv);
    assert_eq!(s.0.len(), 1);
}

/// A VTEP that carries a VNI for unicast only (EVPN: MAC routes, no type-3 route) gets no
/// flooded frame of it, but the frames to MACs behind it.
#[test]
fn a_unicast_only_vtep_gets_no_flood() {
    for (unicast_only, flooded) in [(vec![], true), (vec![A], false)] {
        let mut d = dp_vxlan_with(true, unicast_only);
        let mut w = Wire::default();
        d.process(Instant::from_secs(1), PortId(0), &mut PacketBuf::from_frame(&eth(MacAddr::BROADCAST, mac(1), &[0; 46]), VnetHdr::default()), &mut w);
        assert_eq!(!w.udp.is_empty(), flooded, "broadcast to the VTEP");
        // mac(9) is behind the VTEP (an EVPN route): unicast goes there either way.
        assert_eq!(d.evpn_sync(Instant::from_secs(1), &[(A, mac(9), PortId(2))]), 0);
        let mut w = Wire::default();
        d.process(Instant::from_secs(1), PortId(0), &mut PacketBuf::from_frame(&eth(mac(9), mac(1), &[0; 46]), VnetHdr::default()), &mut w);
        assert_eq!(w.udp.len(), 1, "unicast to the VTEP");
    }
}

#[test]
fn vxlan_entropy_keeps_a_datagrams_fragments_together() {
    let udp = |sport: u16, frag: u16| {
        let mut f = Vec::new();
        etherparse::PacketBuilder::ethernet2([0x52, 0x54, 0, 0, 0, 1], [0x52, 0x54, 0, 0, 0, 2])
            .ipv4([10, 1, 1, 11], [10, 1, 1, 12], 64)
            .udp(sport, 53)
            .write(&mut f, &[7u8; 64])
            .unwrap();
        // Turn it into a fragment (MF, offset `frag` units) without touching the rest.
        f[20..22].copy_from_slice(&(0x2000 | frag).to_be_bytes());
        f
    };
    let e = |f: &[u8]| flow_entropy(&FrameCtx::parse(f).unwrap());
    // The first fragment and a later one (whose "ports" would be payload bytes) agree.
    let (first, later) = (udp(40000, 0), udp(40000, 10));
    let mut later = later;
    later[34..38].copy_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
    assert_eq!(e(&first), e(&later));
    // Whole datagrams of two flows differ (their ports are hashed).
    let whole = |sport: u16| {
        let mut f = udp(sport, 0);
        f[20..22].copy_from_slice(&[0, 0]);
        f
    };
    assert_ne!(e(&whole(40000)), e(&whole(40001)));
}

/// The flow cache against the full path: two datapaths, one with the cache and one without,
/// take the same seeded mix of routed, source-NAT and port-forward traffic in both directions
/// (TCP with every flag, UDP, TTL 1, fragments, bad header checksums, packets over a
/// network's MTU with and without DF, pending checksums), with guests moving between ports,
/// neighbours changing MAC, timers and ageing, a guest's port lost; every frame each sends, in
/// order, and every counter and conntrack entry must be the same, and the cache must have
/// taken most established packets.
mod flow_cache_differential {
    use super::*;
    use crate::config::schema::{Action, Proto};
    use crate::filter::{Classifier, Rule};
    use crate::router::{Forward, NetL3, PublicL3};

    const G: MacAddr = MacAddr([0x52, 0x54, 0, 0, 0, 0x11]);
    const H: [MacAddr; 2] = [MacAddr([0x52, 0x54, 0, 0, 0, 0x21]), MacAddr([0x52, 0x54, 0, 0, 0, 0x22])];
    const GW: [MacAddr; 2] = [MacAddr([0x52, 0x54, 0, 0, 9, 1]), MacAddr([0x52, 0x54, 0, 0, 9, 2])];
    const PUBLIC: u16 = 3;

    fn l3_dp(cache: bool) -> Datapath {
        let mut d = Datapath::new(l3_cfg(0));
        d.flow_cache.set_on(cache);
        d
    }

    /// As a reload would: variant 1 sends the port forward to another port of the guest and
    /// closes the public firewall to it, so its flows are revoked; variant 0 is the original.
    fn reload(d: &mut Datapath, now: u64, variant: u8) {
        let svc = crate::router::reload::Services { spec: crate::build::ServiceSpec { dhcp: None, served: vec![false; 2], dns: None }, metadata_enabled: false, vms: Vec::new() };
        d.reconfigure(Instant(now), l3_cfg(variant), svc, &|_| true, &|_| true);
    }

    fn l3_cfg(variant: u8) -> DatapathConfig {
        let pip: std::net::Ipv4Addr = [203, 0, 113, 10].into();
        let net = |cidr: &str, gw: [u8; 4], mtu: u16| NetL3 {
            domain: None,
            cidr: cidr.parse().unwrap(),
            gateway: Some(gw.into()),
            mtu,
            egress: Classifier::new(Vec::new()),
            egress_default: Action::Allow,
        };
        let mut firewall = std::collections::HashMap::new();
        let open = if variant == 0 { "0.0.0.0/0" } else { "198.51.100.7/32" };
        firewall.insert(pip, Classifier::new(vec![Rule { protocol: Proto::Tcp, ports: Some("8080".parse().unwrap()), nets: vec![open.parse().unwrap()], value: () }]));
        let private_port = if variant == 0 { "80" } else { "81" };
        DatapathConfig {
            router_mac: ROUTER,
            nets: vec![NetSpec { name: "web".into(), vlan: None }, NetSpec { name: "db".into(), vlan: None }],
            ports: vec![
                access("g", A, true),
                access("h", B, true),
                access("x", A, false),
                PortSpec { name: "public".into(), ifname: "pub".into(), kind: "tap".into(), role: Role::Public, offload: true.into(), mac_limit: Some(0) },
            ],
            mac_aging: Duration::from_secs(300),
            mac_table_size: 64,
            security: Default::default(),
            vxlan_mtu: 1450,
            pins: Vec::new(),
            l3: L3Config {
                nets: vec![net("10.1.1.0/24", [10, 1, 1, 1], 1500), net("10.1.2.0/24", [10, 1, 2, 1], 1400)],
                public: Some(PublicL3 { ips: vec!["203.0.113.10/24".parse().unwrap()], gateway: [203, 0, 113, 1].into(), source_nat_ip: pip, mtu: 1500 }),
                conntrack_max: 24,
                forwards: vec![Forward { protocol: 6, public_ip: pip, public_port: "8080".parse().unwrap(), private_ip: [10, 1, 1, 11].into(), private_port: private_port.parse().unwrap() }],
                firewall,
                ..Default::default()
            },
        }
    }

    fn arp(src: MacAddr, spa: [u8; 4], tpa: [u8; 4]) -> Vec<u8> {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&src.0);
        f.extend_from_slice(&[8, 6, 0, 1, 8, 0, 6, 4, 0, 1]);
        f.extend_from_slice(&src.0);
        f.extend_from_slice(&spa);
        f.extend_from_slice(&[0; 6]);
        f.extend_from_slice(&tpa);
        f.resize(60, 0);
        f
    }

    /// xorshift64: the same mix on every run.
    fn next(r: &mut u64) -> u64 {
        *r ^= *r << 13;
        *r ^= *r >> 7;
        *r ^= *r << 17;
        *r
    }

    struct Packet {
        port: u16,
        src_mac: MacAddr,
        src: [u8; 4],
        dst: [u8; 4],
        sport: u16,
        dport: u16,
    }

    /// One packet of the mix: who sends what (`x` picks), and how it is made (`y`).
    fn packet(x: u64, y: u64, g_port: u16, h_mac: MacAddr, gw_mac: MacAddr) -> (Vec<u8>, VnetHdr, u16) {
        let flow = (x >> 8) % 16;
        let p = match x % 6 {
            // A guest to another network and back (routed).
            0 => Packet { port: g_port, src_mac: G, src: [10, 1, 1, 11], dst: [10, 1, 2, 11], sport: 40000 + flow as u16, dport: 5201 },
            1 => Packet { port: 1, src_mac: h_mac, src: [10, 1, 2, 11], dst: [10, 1, 1, 11], sport: 5201, dport: 40000 + flow as u16 },
            // A guest to the outside (source NAT keeps a free port) and back.
            2 => Packet { port: g_port, src_mac: G, src: [10, 1, 1, 11], dst: [198, 51, 100, 5], sport: 41000 + flow as u16, dport: 443 },
            3 => Packet { port: PUBLIC, src_mac: gw_mac, src: [198, 51, 100, 5], dst: [203, 0, 113, 10], sport: 443, dport: 41000 + flow as u16 },
            // The outside through the port forward and back.
            4 => Packet { port: PUBLIC, src_mac: gw_mac, src: [198, 51, 100, 7], dst: [203, 0, 113, 10], sport: 3000 + flow as u16, dport: 8080 },
            _ => Packet { port: g_port, src_mac: G, src: [10, 1, 1, 11], dst: [198, 51, 100, 7], sport: 80, dport: 3000 + flow as u16 },
        };
        let udp = (x >> 12).is_multiple_of(4) && !matches!(x % 6, 4 | 5);
        let ttl = if y.is_multiple_of(20) { 1 } else { 64 };
        let (payload, df) = match (y >> 8) % 25 {
            0 => (1400, true),
            1 => (1400, false),
            n => ((n as usize * 7) % 90, (y >> 16).is_multiple_of(2)),
        };
        let flags = match (y >> 24) % 30 {
            0 => 0x02,
            1 => 0x04,
            2 => 0x11,
            3 => 0x12,
            4..=10 => 0x18,
            _ => 0x10,
        };
        let b = etherparse::PacketBuilder::ethernet2(p.src_mac.0, ROUTER.0);
        let mut ip = etherparse::Ipv4Header::new(0, ttl, etherparse::IpNumber::TCP, p.src, p.dst).unwrap();
        ip.dont_fragment = df;
        ip.identification = (y >> 32) as u16;
        let b = b.ip(etherparse::IpHeaders::Ipv4(ip, Default::default()));
        let mut f = Vec::new();
        let body = vec![0x5au8; payload];
        if udp {
            b.udp(p.sport, p.dport).write(&mut f, &body).unwrap();
        } else {
            let mut t = b.tcp(p.sport, p.dport, 1000 + (y >> 40) as u32, 65000);
            if flags & 0x02 != 0 {
                t = t.syn();
            }
            if flags & 0x04 != 0 {
                t = t.rst();
            }
            if flags & 0x01 != 0 {
                t = t.fin();
            }
            if flags & 0x10 != 0 {
                t = t.ack(1);
            }
            if flags & 0x08 != 0 {
                t = t.psh();
            }
            t.write(&mut f, &body).unwrap();
        }
        let fix_csum = |f: &mut Vec<u8>| {
            f[24] = 0;
            f[25] = 0;
            let c = crate::wire::checksum::checksum(&f[14..34]);
            f[24..26].copy_from_slice(&c.to_be_bytes());
        };
        match (y >> 48) % 50 {
            // A first fragment.
            0 => {
                f[20] |= 0x20;
                fix_csum(&mut f);
            }
            // A header checksum that is wrong.
            1 => f[25] ^= 0x40,
            _ => {}
        }
        let mut vnet = VnetHdr::default();
        if !udp && payload == 1400 && (y >> 20).is_multiple_of(2) {
            // A TSO super-frame of segments that fit one network's MTU and not the other's.
            vnet = VnetHdr { needs_csum: true, gso: Gso::TcpV4, hdr_len: 54, gso_size: if (y >> 21).is_multiple_of(2) { 700 } else { 1400 }, csum_start: 34, csum_offset: 16, ..VnetHdr::default() };
        } else if (y >> 56).is_multiple_of(8) {
            // The guest's checksum is left to the receiver (a partial one in the field).
            vnet.needs_csum = true;
            vnet.csum_start = 34;
            vnet.csum_offset = if udp { 6 } else { 16 };
        }
        if f.len() < 60 {
            f.resize(60, 0);
        }
        (f, vnet, p.port)
    }

    fn snapshot(d: &Datapath) -> (String, String) {
        let mut stats = serde_json::to_value(d.show_stats()).unwrap();
        stats.as_object_mut().unwrap().remove("flow_cache");
        (stats.to_string(), format!("{:?}", d.router.ct.iter().collect::<Vec<_>>()))
    }

    #[test]
    fn the_flow_cache_does_what_the_full_path_does() {
        let mut with = l3_dp(true);
        let mut without = l3_dp(false);
        let mut now = 1_000u64;
        let mut r = 0x9e37_79b9_7f4a_7c15u64;
        let (mut g_port, mut h_mac, mut gw_mac) = (0u16, H[0], GW[0]);
        let (mut frames, mut established) = (0u64, 0u64);
        let mut variant = 0u8;
        let run = |with: &mut Datapath, without: &mut Datapath, now: u64, port: u16, f: &[u8], vnet: VnetHdr| {
            let send = |d: &mut Datapath| {
                let mut s = Sink::default();
                d.process(Instant(now), PortId(port), &mut PacketBuf::from_frame(f, vnet), &mut s);
                s
            };
            let (a, b) = (send(with), send(without));
            assert_eq!(a.0, b.0, "at {now} ms, port {port}, frame {f:02x?}");
        };
        for (port, f) in [(PUBLIC, arp(GW[0], [203, 0, 113, 1], [203, 0, 113, 10])), (0, arp(G, [10, 1, 1, 11], [10, 1, 1, 1])), (1, arp(H[0], [10, 1, 2, 11], [10, 1, 2, 1]))] {
            run(&mut with, &mut without, now, port, &f, VnetHdr::default());
        }
        for step in 0..30_000u32 {
            let (x, y) = (next(&mut r), next(&mut r));
            match x % 100 {
                0..=79 => {
                    let (f, vnet, port) = packet(x >> 8, y, g_port, h_mac, gw_mac);
                    run(&mut with, &mut without, now, port, &f, vnet);
                    frames += 1;
                }
                80..=87 => now += 1 + y % 3000,
                // Long enough for flows, learned MACs and neighbours to age out.
                88 => now += 30_000 + y % 400_000,
                89 | 90 => {
                    let (mut a, mut b) = (Sink::default(), Sink::default());
                    with.poll(Instant(now), &mut a);
                    without.poll(Instant(now), &mut b);
                    // Timers walk hash tables (each with its own seed): the same frames, in
                    // some order.
                    let sorted = |mut v: Vec<(PortId, Option<VnetHdr>, Vec<u8>)>| {
                        v.sort_by(|x, y| (x.0, &x.2).cmp(&(y.0, &y.2)));
                        v
                    };
                    assert_eq!(sorted(a.0), sorted(b.0), "poll at {now} ms");
                }
                // The guest moves to the other port of its network (and announces itself).
                91 | 92 => {
                    g_port = if g_port == 0 { 2 } else { 0 };
                    run(&mut with, &mut without, now, g_port, &arp(G, [10, 1, 1, 11], [10, 1, 1, 1]), VnetHdr::default());
                }
                // A neighbour answers with another MAC (a replaced VM, a failed-over gateway).
                93 | 94 => {
                    h_mac = if h_mac == H[0] { H[1] } else { H[0] };
                    run(&mut with, &mut without, now, 1, &arp(h_mac, [10, 1, 2, 11], [10, 1, 2, 1]), VnetHdr::default());
                }
                95 => {
                    gw_mac = if gw_mac == GW[0] { GW[1] } else { GW[0] };
                    run(&mut with, &mut without, now, PUBLIC, &arp(gw_mac, [203, 0, 113, 1], [203, 0, 113, 10]), VnetHdr::default());
                }
                96 => {
                    with.port_lost(PortId(1));
                    without.port_lost(PortId(1));
                }
                // A reload that changes the port forward (flows through it are revoked or
                // re-decided), and one that changes it back.
                97 => {
                    variant ^= 1;
                    reload(&mut with, now, variant);
                    reload(&mut without, now, variant);
                }
                _ => {
                    // Established traffic in a burst: what the cache is for.
                    for k in 0..8 {
                        let (f, vnet, port) = packet(x >> 8, (y & !0xff_ffff_ff00) | (k << 8) | 0x1000_0000, g_port, h_mac, gw_mac);
                        run(&mut with, &mut without, now, port, &f, vnet);
                        frames += 1;
                        established += 1;
                    }
                }
            }
            if step % 1000 == 0 {
                assert_eq!(snapshot(&with), snapshot(&without), "after step {step}");
            }
        }
        assert_eq!(snapshot(&with), snapshot(&without));
        let s = with.flow_cache.stats;
        assert_eq!(without.flow_cache.stats, flowcache::FlowCacheStats::default());
        assert!(s.hits > established / 3 && s.fills > 100, "{s:?} of {frames} frames, {established} in bursts");
        assert!(with.router.stats.forwarded > s.hits, "the full path forwarded some too");
    }
}
