//! Router tests on virtual time: ARP, neighbour resolution, SNAT/DNAT round trips with
//! independently built packets (etherparse) as oracles, ICMP generation and translation,
//! fragments, and the source checks.

use super::*;
use crate::wire::arp::ArpPacket;
use crate::config::types::Ipv4Iface;
use crate::wire::ethernet::MacAddr;

const R: MacAddr = MacAddr([2, 0, 0, 0, 0, 1]);
const G1: MacAddr = MacAddr([0x52, 0x54, 0, 0, 1, 0x11]);
const G2: MacAddr = MacAddr([0x52, 0x54, 0, 0, 1, 0x12]);
const GW: MacAddr = MacAddr([0x52, 0x54, 0, 0, 9, 1]);
const WEB: Iface = Iface::Net(NetId(0));
const T0: Instant = Instant(10_000);

fn a(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn router(mtu: u16) -> Router {
    let net = |cidr: &str, gw: &str| NetL3 {
        domain: None,
        cidr: cidr.parse().unwrap(),
        gateway: Some(a(gw)),
        mtu: 1500,
        egress: Classifier::new(Vec::new()),
        egress_default: Action::Allow,
    };
    let ips: Vec<Ipv4Iface> = vec!["203.0.113.10/24".parse().unwrap(), "203.0.113.11/24".parse().unwrap()];
    Router::new(
        R,
        L3Config {
            nets: vec![net("10.1.1.0/24", "10.1.1.1"), net("10.1.2.0/24", "10.1.2.1")],
            public: Some(PublicL3 { ips, gateway: a("203.0.113.1"), source_nat_ip: a("203.0.113.10"), mtu }),
            static_nat: vec![(a("203.0.113.11"), a("10.1.1.12"))],
            forwards: vec![Forward {
                protocol: proto::TCP,
                public_ip: a("203.0.113.10"),
                public_port: "2222".parse().unwrap(),
                private_ip: a("10.1.1.11"),
                private_port: "22".parse().unwrap(),
            }],
            ..Default::default()
        },
    )
}

fn b(frame: &[u8]) -> PacketBuf {
    PacketBuf::from_frame(frame, VnetHdr::default())
}

fn tcp(src_mac: MacAddr, s: &str, sp: u16, d: &str, dp: u16, ttl: u8, syn: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let pb = etherparse::PacketBuilder::ethernet2(src_mac.0, R.0).ipv4(a(s).octets(), a(d).octets(), ttl).tcp(sp, dp, 1, 65000);
    let pb = if syn { pb.syn() } else { pb.ack(1) };
    pb.write(&mut out, b"data").unwrap();
    out
}

fn udp(src_mac: MacAddr, s: &str, sp: u16, d: &str, dp: u16, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    etherparse::PacketBuilder::ethernet2(src_mac.0, R.0).ipv4(a(s).octets(), a(d).octets(), 64).udp(sp, dp).write(&mut out, payload).unwrap();
    out
}

fn arp_frame(op: u16, sha: MacAddr, spa: &str, tpa: &str) -> Vec<u8> {
    let mut f = vec![0u8; 42];
    f[0..6].copy_from_slice(&if op == arp::OP_REQUEST { MacAddr::BROADCAST } else { R }.0);
    f[6..12].copy_from_slice(&sha.0);
    f[12..14].copy_from_slice(&[8, 6]);
    ArpRepr { operation: op, sender_mac: sha, sender_ip: a(spa), target_mac: MacAddr::ZERO, target_ip: a(tpa) }.emit(&mut f[14..]);
    f
}

/// The IP packet of a frame, with the DF flag set or cleared (checksum fixed).
fn set_df(f: &mut [u8], df: bool) {
    f[20] = if df { 0x40 } else { 0 };
    Ipv4Packet::new_checked(&mut f[14..]).unwrap().fill_checksum();
}

fn take(r: &mut Router) -> Vec<(Iface, Vec<u8>)> {
    r.outbox.drain(..).map(|o| (o.iface, o.buf.frame().to_vec())).collect()
}

/// Teaches the router where the public gateway and a guest are.
fn resolve_all(r: &mut Router) {
    let mut x = b(&arp_frame(arp::OP_REPLY, GW, "203.0.113.1", "203.0.113.10"));
    r.handle_frame(T0, Iface::Public, &mut x);
    for (m, ip) in [(G1, "10.1.1.11"), (G2, "10.1.1.12")] {
        let mut x = b(&arp_frame(arp::OP_REQUEST, m, ip, "10.1.1.1"));
        r.handle_frame(T0, WEB, &mut x);
    }
    take(r);
}

#[test]
fn arp_for_the_gateway_is_answered_golden() {
    let mut r = router(1500);
    let mut f = b(&arp_frame(arp::OP_REQUEST, G1, "10.1.1.11", "10.1.1.1"));
    assert_eq!(r.handle_frame(T0, WEB, &mut f), Verdict::Consumed);
    let out = take(&mut r);
    assert_eq!(out.len(), 1);
    let golden: Vec<u8> = [
        &G1.0[..], &R.0, &[8, 6], &[0, 1, 8, 0, 6, 4, 0, 2], &R.0, &[10, 1, 1, 1], &G1.0, &[10, 1, 1, 11],
    ]
    .concat();
    assert_eq!(&out[0].1[..42], &golden[..]);
    assert_eq!(out[0].0, WEB);
    // ARP between guests is not ours: forwarded at L2.
    let mut f = b(&arp_frame(arp::OP_REQUEST, G1, "10.1.1.11", "10.1.1.12"));
    assert_eq!(r.handle_frame(T0, WEB, &mut f), Verdict::NotMine);
    // The public side gets answers for public IPs only; a guest address is not ours there.
    let mut f = b(&arp_frame(arp::OP_REQUEST, GW, "203.0.113.1", "203.0.113.11"));
    assert_eq!(r.handle_frame(T0, Iface::Public, &mut f), Verdict::Consumed);
    assert_eq!(take(&mut r).len(), 1);
    let mut f = b(&arp_frame(arp::OP_REQUEST, GW, "203.0.113.1", "10.1.1.1"));
    assert_eq!(r.handle_frame(T0, Iface::Public, &mut f), Verdict::NotMine);
    assert!(take(&mut r).is_empty());
}

#[test]
fn snat_round_trip_through_arp_resolution() {
    let mut r = router(1500);
    // The guest's SYN waits for the public gateway's MAC.
    let mut f = b(&tcp(G1, "10.1.1.11", 40000, "198.51.100.5", 80, 64, true));
    assert_eq!(r.handle_frame(T0, WEB, &mut f), Verdict::Consumed);
    let out = take(&mut r);
    assert_eq!(out.len(), 1, "one ARP request");
    let req = ArpPacket::new_checked(&out[0].1[14..]).unwrap();
    assert_eq!((out[0].0, req.operation(), req.sender_ip(), req.target_ip()), (Iface::Public, arp::OP_REQUEST, a("203.0.113.10"), a("203.0.113.1")));
    // The reply releases it, translated: an independently built packet is the oracle.
    let mut rep = b(&arp_frame(arp::OP_REPLY, GW, "203.0.113.1", "203.0.113.10"));
    assert_eq!(r.handle_frame(T0, Iface::Public, &mut rep), Verdict::Consumed);
    let out = take(&mut r);
    assert_eq!(out.len(), 1);
    let mut want = tcp(G1, "203.0.113.10", 40000, "198.51.100.5", 80, 63, true);
    want[0..6].copy_from_slice(&GW.0);
    want[6..12].copy_from_slice(&R.0);
    assert_eq!(out[0], (Iface::Public, want));
    // The answer comes back to the guest (whose MAC is learned from its ARP).
    let mut g = b(&arp_frame(arp::OP_REQUEST, G1, "10.1.1.11", "10.1.1.1"));
    r.handle_frame(T0, WEB, &mut g);
    take(&mut r);
    let mut back = b(&tcp(GW, "198.51.100.5", 80, "203.0.113.10", 40000, 60, true));
    assert_eq!(r.handle_frame(T0, Iface::Public, &mut back), Verdict::Forward(WEB));
    let mut want = tcp(GW, "198.51.100.5", 80, "10.1.1.11", 40000, 59, true);
    want[0..6].copy_from_slice(&G1.0);
    want[6..12].copy_from_slice(&R.0);
    assert_eq!(back.frame(), &want[..]);
    assert_eq!(r.ct.len(), 1);
    assert_eq!(r.stats.snat_flows, 1);
}

#[test]
fn colliding_source_ports_get_distinct_nat_ports_and_reuse_after_expiry() {
    let mut r = router(1500);
    resolve_all(&mut r);
    let mut f1 = b(&udp(G1, "10.1.1.11", 5000, "198.51.100.5", 53, b"q"));
    let mut f2 = b(&udp(G2, "10.1.1.13", 5000, "198.51.100.5", 53, b"q"));
    assert_eq!(r.handle_frame(T0, WEB, &mut f1), Verdict::Forward(Iface::Public));
    // 10.1.1.13 is not G2's address but the router does not enforce port security (ingress does).
    assert_eq!(r.handle_frame(T0, WEB, &mut f2), Verdict::Forward(Iface::Public));
    let sport = |f: &PacketBuf| be16(f.frame(), 34);
    assert_eq!(sport(&f1), 5000);
    assert_ne!(sport(&f2), 5000);
    assert!(sport(&f2) >= NAT_PORT_LO);
    let p2 = etherparse::SlicedPacket::from_ethernet(f2.frame()).unwrap();
    assert!(p2.net.is_some() && p2.transport.is_some());
    // After the UDP timeout the first port is free again for another guest.
    let later = T0 + Duration::from_secs(31);
    let mut f3 = b(&udp(G2, "10.1.1.13", 5000, "198.51.100.5", 53, b"q"));
    assert_eq!(r.handle_frame(later, WEB, &mut f3), Verdict::Forward(Iface::Public));
    assert_eq!(sport(&f3), 5000);
}

/// The ports 20 guests colliding on source port 5000 towards one remote are given, with the
/// router keyed by `seed`.
fn collision_ports(seed: u8) -> Vec<u16> {
    let mut r = router(1500);
    r.rng = crate::entropy::Csprng::new([seed; 32]);
    resolve_all(&mut r);
    (0..20)
        .map(|i| {
            let mut f = b(&udp(G1, &format!("10.1.1.{}", 20 + i), 5000, "198.51.100.5", 53, b"q"));
            assert_eq!(r.handle_frame(T0, WEB, &mut f), Verdict::Forward(Iface::Public));
            be16(f.frame(), 34)
        })
        .collect()
}

#[test]
fn nat_ports_after_a_collision_are_keyed_by_the_seed() {
    let a1 = collision_ports(1);
    // Replayable under a fixed seed (tests), unpredictable under the kernel's (RFC 6056).
    assert_eq!(a1, collision_ports(1));
    let a2 = collision_ports(2);
    assert_eq!(a1[0], 5000);
    let (x, y) = (&a1[1..], &a2[1..]);
    assert!(x.iter().zip(y).filter(|(p, q)| p == q).count() <= 1, "{x:?} vs {y:?}");
    // No step between successive choices repeats as an LCG's or a counter's would.
    let steps: std::collections::HashSet<u16> = x.windows(2).map(|w| w[1].wrapping_sub(w[0])).collect();
    assert!(steps.len() >= 15, "{x:?}");
}

#[test]
fn port_forward_static_nat_and_no_direct_private_access() {
    let mut r = router(1500);
    resolve_all(&mut r);
    let mut f = b(&tcp(GW, "198.51.100.5", 33000, "203.0.113.10", 2222, 60, true));
    assert_eq!(r.handle_frame(T0, Iface::Public, &mut f), Verdict::Forward(WEB));
    let mut want = tcp(GW, "198.51.100.5", 33000, "10.1.1.11", 22, 59, true);
    want[0..6].copy_from_slice(&G1.0);
    want[6..12].copy_from_slice(&R.0);
    assert_eq!(f.frame(), &want[..]);
    // The guest's answer leaves from the public address and port.
    let mut back = b(&tcp(G1, "10.1.1.11", 22, "198.51.100.5", 33000, 64, false));
    assert_eq!(r.handle_frame(T0, WEB, &mut back), Verdict::Forward(Iface::Public));
    let p = Ipv4Packet::new_checked(&back.frame()[14..]).unwrap();
    assert_eq!((p.src(), be16(back.frame(), 34)), (a("203.0.113.10"), 2222));
    // Static NAT: any port, both ways.
    let mut s = b(&udp(GW, "198.51.100.5", 7, "203.0.113.11", 9999, b"x"));
    assert_eq!(r.handle_frame(T0, Iface::Public, &mut s), Verdict::Forward(WEB));
    assert_eq!(Ipv4Packet::new_checked(&s.frame()[14..]).unwrap().dst(), a("10.1.1.12"));
    let mut o = b(&udp(G2, "10.1.1.12", 6000, "198.51.100.7", 53, b"x"));
    assert_eq!(r.handle_frame(T0, WEB, &mut o), Verdict::Forward(Iface::Public));
    assert_eq!(Ipv4Packet::new_checked(&o.frame()[14..]).unwrap().src(), a("203.0.113.11"));
    // A private address is never reached from outside, and unknown ports go nowhere.
    let mut d = b(&tcp(GW, "198.51.100.5", 1, "10.1.1.11", 22, 60, true));
    assert_eq!(r.handle_frame(T0, Iface::Public, &mut d), Verdict::Drop(DropReason::NotForwarded));
    let mut d = b(&tcp(GW, "198.51.100.5", 1, "203.0.113.10", 23, 60, true));
    assert_eq!(r.handle_frame(T0, Iface::Public, &mut d), Verdict::Drop(DropReason::NoL3));
    // Spoofed sources from outside: a guest network, our own address.
    for src in ["10.1.1.99", "203.0.113.11", "127.0.0.1"] {
        let mut d = b(&tcp(GW, src, 1, "203.0.113.10", 2222, 60, true));
        assert_eq!(r.handle_frame(T0, Iface::Public, &mut d), Verdict::Drop(DropReason::SpoofedSource), "{src}");
    }
    // A guest may not source from outside its network.
    let mut d = b(&tcp(G1, "10.1.2.50", 1, "198.51.100.5", 80, 60, true));
    assert_eq!(r.handle_frame(T0, WEB, &mut d), Verdict::Drop(DropReason::SpoofedSource));
}

#[test]
fn hairpin_rewrites_source_to_the_gateway() {
    let mut r = router(1500);
    resolve_all(&mut r);
    let mut f = b(&tcp(G2, "10.1.1.12", 45000, "203.0.113.10", 2222, 64, true));
    assert_eq!(r.handle_frame(T0, WEB, &mut f), Verdict::Forward(WEB));
    let p = Ipv4Packet::new_checked(&f.frame()[14..]).unwrap();
    assert_eq!((p.src(), p.dst(), be16(f.frame(), 36)), (a("10.1.1.1"), a("10.1.1.11"), 22));
    let nat_port = be16(f.frame(), 34);
    let mut back = b(&tcp(G1, "10.1.1.11", 22, "10.1.1.1", nat_port, 64, false));
    assert_eq!(r.handle_frame(T0, WEB, &mut back), Verdict::Forward(WEB));
    let p = Ipv4Packet::new_checked(&back.frame()[14..]).unwrap();
    assert_eq!((p.src(), p.dst(), be16(back.frame(), 34), be16(back.frame(), 36)), (a("203.0.113.10"), a("10.1.1.12"), 2222, 45000));
    assert_eq!(&back.frame()[0..6], &G2.0);
}

#[test]
fn ttl_expiry_and_df_oversize_get_icmp_errors() {
    let mut r = router(1400);
    resolve_all(&mut r);
    let pkt = tcp(G1, "10.1.1.11", 40000, "198.51.100.5", 80, 1, true);
    let mut f = b(&pkt);
    assert_eq!(r.handle_frame(T0, WEB, &mut f), Verdict::Drop(DropReason::TtlExceeded));
    let out = take(&mut r);
    assert_eq!(out.len(), 1);
    let e = &out[0].1;
    assert_eq!(&e[0..6], &G1.0, "back to the sender's MAC");
    let ip = Ipv4Packet::new_checked(&e[14..]).unwrap();
    assert!(ip.verify_checksum());
    assert_eq!((ip.src(), ip.dst(), ip.protocol()), (a("10.1.1.1"), a("10.1.1.11"), proto::ICMP));
    assert_eq!((ip.payload()[0], ip.payload()[1]), (icmp::TIME_EXCEEDED, 0));
    assert_eq!(checksum::checksum(ip.payload()), 0);
    assert_eq!(&ip.payload()[8..], &pkt[14..], "the offending packet is quoted as received");
    // DF and larger than the public MTU: frag needed with the MTU.
    let mut big = udp(G1, "10.1.1.11", 5000, "198.51.100.5", 9, &[7u8; 1450]);
    set_df(&mut big, true);
    let mut f = b(&big);
    assert_eq!(r.handle_frame(T0, WEB, &mut f), Verdict::Drop(DropReason::FragNeeded));
    let out = take(&mut r);
    let ip = Ipv4Packet::new_checked(&out[0].1[14..]).unwrap();
    assert_eq!((ip.payload()[0], ip.payload()[1], be16(ip.payload(), 6)), (icmp::DEST_UNREACH, icmp::CODE_FRAG_NEEDED, 1400));
    // Without DF it is fragmented instead; the fragments carry the whole datagram.
    set_df(&mut big, false);
    let mut f = b(&big);
    assert_eq!(r.handle_frame(T0, WEB, &mut f), Verdict::Consumed);
    let frags = take(&mut r);
    assert_eq!(frags.len(), 2);
    let mut data = Vec::new();
    for (i, (iface, fr)) in frags.iter().enumerate() {
        assert_eq!(*iface, Iface::Public);
        let p = Ipv4Packet::new_checked(&fr[14..]).unwrap();
        assert!(p.verify_checksum() && p.total_len() <= 1400);
        assert_eq!((p.more_frags(), p.frag_offset() == data.len()), (i == 0, true));
        data.extend_from_slice(p.payload());
    }
    let whole = Ipv4Packet::new_checked(&big[14..]).unwrap();
    assert_eq!(data.len(), whole.payload().len());
    assert_eq!(&data[8..], &whole.payload()[8..], "payload intact (ports translated)");
}

#[test]
fn icmp_error_from_outside_is_translated_to_the_guest() {
    let mut r = router(1500);
    resolve_all(&mut r);
    // traceroute-style UDP probe, SNATed.
    let mut f = b(&udp(G1, "10.1.1.11", 40001, "198.51.100.5", 33434, b"probe"));
    assert_eq!(r.handle_frame(T0, WEB, &mut f), Verdict::Forward(Iface::Public));
    let sent = f.frame()[14..].to_vec();
    // Port unreachable from the destination, quoting what it got.
    let mut msg = vec![3, 3, 0, 0, 0, 0, 0, 0];
    msg.extend_from_slice(&sent);
    let c = checksum::checksum(&msg);
    msg[2..4].copy_from_slice(&c.to_be_bytes());
    let mut e = vec![0u8; 34];
    e[0..6].copy_from_slice(&R.0);
    e[6..12].copy_from_slice(&GW.0);
    e[12..14].copy_from_slice(&[8, 0]);
    ipv4::emit_header(&mut e[14..34], a("198.51.100.5"), a("203.0.113.10"), proto::ICMP, 60, msg.len(), 1);
    e.extend_from_slice(&msg);
    let mut eb = b(&e);
    assert_eq!(r.handle_frame(T0, Iface::Public, &mut eb), Verdict::Forward(WEB));
    let ip = Ipv4Packet::new_checked(&eb.frame()[14..]).unwrap();
    assert!(ip.verify_checksum());
    assert_eq!((ip.src(), ip.dst()), (a("198.51.100.5"), a("10.1.1.11")));
    assert_eq!(checksum::checksum(ip.payload()), 0);
    let orig = udp(G1, "10.1.1.11", 40001, "198.51.100.5", 33434, b"probe");
    let mut want_quote = orig[14..].to_vec();
    want_quote[8] = 63; // the quoted TTL is what left the router
    Ipv4Packet::new_checked(&mut want_quote[..]).unwrap().fill_checksum();
    assert_eq!(&ip.payload()[8..], &want_quote[..]);
    assert_eq!(r.stats.icmp_errors_translated, 1);
    // A damaged error message is not repaired and passed on.
    let mut eb = b(&e);
    eb.frame_mut()[14 + 20 + 8 + 20] ^= 0xff; // another source port, checksum left as it was
    assert_eq!(r.handle_frame(T0, Iface::Public, &mut eb), Verdict::Drop(DropReason::BadL4));
    // An error quoting no flow of ours goes nowhere.
    let m = &mut eb.frame_mut()[14 + 20..];
    m[2..4].copy_from_slice(&[0, 0]);
    let c = checksum::checksum(m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    assert_eq!(r.handle_frame(T0, Iface::Public, &mut eb), Verdict::Drop(DropReason::NotForwarded));
}

#[test]
fn non_first_fragments_follow_the_first() {
    let mut r = router(1500);
    resolve_all(&mut r);
    // Two fragments of one UDP datagram: the first holds the ports.
    let mut first = udp(G1, "10.1.1.11", 5000, "198.51.100.5", 9, &[1u8; 32]);
    first[18..20].copy_from_slice(&77u16.to_be_bytes());
    first[20] = 0x20; // MF
    Ipv4Packet::new_checked(&mut first[14..]).unwrap().fill_checksum();
    let mut second = first.clone();
    second[20..22].copy_from_slice(&(40u16 / 8).to_be_bytes());
    Ipv4Packet::new_checked(&mut second[14..]).unwrap().fill_checksum();
    let mut lone = second.clone();
    lone[18..20].copy_from_slice(&78u16.to_be_bytes());
    Ipv4Packet::new_checked(&mut lone[14..]).unwrap().fill_checksum();
    let mut f = b(&first);
    assert_eq!(r.handle_frame(T0, WEB, &mut f), Verdict::Forward(Iface::Public));
    let mut s = b(&second);
    assert_eq!(r.handle_frame(T0, WEB, &mut s), Verdict::Forward(Iface::Public));
    let p = Ipv4Packet::new_checked(&s.frame()[14..]).unwrap();
    assert!(p.verify_checksum());
    assert_eq!(p.src(), a("203.0.113.10"));
    let mut l = b(&lone);
    assert_eq!(r.handle_frame(T0, WEB, &mut l), Verdict::Drop(DropReason::FragNoFlow));
}

#[test]
fn echo_to_router_addresses_and_bad_headers() {
    let mut r = router(1500);
    let mut out = Vec::new();
    etherparse::PacketBuilder::ethernet2(G1.0, R.0)
        .ipv4(a("10.1.1.11").octets(), a("203.0.113.10").octets(), 64)
        .icmpv4_echo_request(7, 1)
        .write(&mut out, b"ping")
        .unwrap();
    let mut f = b(&out);
    assert_eq!(r.handle_frame(T0, WEB, &mut f), Verdict::Consumed);
    let o = take(&mut r);
    let ip = Ipv4Packet::new_checked(&o[0].1[14..]).unwrap();
    assert!(ip.verify_checksum());
    assert_eq!((ip.src(), ip.dst(), ip.payload()[0]), (a("203.0.113.10"), a("10.1.1.11"), icmp::ECHO_REPLY));
    assert_eq!(checksum::checksum(ip.payload()), 0);
    // Broken headers are counted by reason, nothing panics.
    let good = tcp(G1, "10.1.1.11", 1, "198.51.100.5", 80, 64, true);
    let mut bad_csum = good.clone();
    bad_csum[24] ^= 1;
    let mut bad_ihl = good.clone();
    bad_ihl[14] = 0x44;
    let mut short_l4 = good[..14 + 20 + 3].to_vec();
    short_l4[16..18].copy_from_slice(&23u16.to_be_bytes());
    Ipv4Packet::new_checked(&mut short_l4[14..]).unwrap().fill_checksum();
    for (f, why) in [(bad_csum, DropReason::BadIp), (bad_ihl, DropReason::BadIp), (short_l4, DropReason::BadL4), (good[..20].to_vec(), DropReason::BadIp)] {
        let mut x = b(&f);
        assert_eq!(r.handle_frame(T0, WEB, &mut x), Verdict::Drop(why));
    }
}

#[test]
fn host_unreachable_reaches_the_sender_with_what_it_sent() {
    let mut r = router(1500);
    let mut g = b(&arp_frame(arp::OP_REQUEST, G1, "10.1.1.11", "10.1.1.1"));
    r.handle_frame(T0, WEB, &mut g);
    take(&mut r);
    // The public gateway never answers ARP: the queued datagram fails after the retries.
    let sent = udp(G1, "10.1.1.11", 5000, "198.51.100.5", 53, b"q");
    let mut f = b(&sent);
    assert_eq!(r.handle_frame(T0, WEB, &mut f), Verdict::Consumed);
    for s in 1..=3 {
        r.poll(T0 + Duration::from_secs(s));
    }
    let out = take(&mut r);
    let (iface, e) = out.iter().find(|(_, f)| f[12..14] == [8, 0]).expect("an ICMP error");
    assert_eq!(*iface, WEB);
    assert_eq!(&e[0..6], &G1.0, "to the sender's MAC, not the router's");
    let ip = Ipv4Packet::new_checked(&e[14..]).unwrap();
    assert_eq!((ip.src(), ip.dst()), (a("10.1.1.1"), a("10.1.1.11")));
    assert_eq!((ip.payload()[0], ip.payload()[1]), (icmp::DEST_UNREACH, icmp::CODE_HOST_UNREACH));
    assert_eq!(&ip.payload()[8..], &sent[14..], "the datagram as the guest sent it, before NAT");
    assert_eq!(r.stats.neigh_unresolved, 1);
}

#[test]
fn portless_protocols_get_the_address_only_and_replies_come_back() {
    let mut r = router(1500);
    resolve_all(&mut r);
    let gre = |mac: MacAddr, s: &str, d: &str| {
        let mut f = vec![0u8; 14 + 20 + 8];
        f[0..6].copy_from_slice(&R.0);
        f[6..12].copy_from_slice(&mac.0);
        f[12..14].copy_from_slice(&[8, 0]);
        ipv4::emit_header(&mut f[14..34], a(s), a(d), 47, 64, 8, 9);
        f
    };
    let mut out = b(&gre(G1, "10.1.1.11", "198.51.100.5"));
    assert_eq!(r.handle_frame(T0, WEB, &mut out), Verdict::Forward(Iface::Public));
    assert_eq!(Ipv4Packet::new_checked(&out.frame()[14..]).unwrap().src(), a("203.0.113.10"));
    let mut back = b(&gre(GW, "198.51.100.5", "203.0.113.10"));
    assert_eq!(r.handle_frame(T0, Iface::Public, &mut back), Verdict::Forward(WEB));
    assert_eq!(Ipv4Packet::new_checked(&back.frame()[14..]).unwrap().dst(), a("10.1.1.11"));
    // A second guest to the same remote cannot share the translated address for it.
    let mut other = b(&gre(G1, "10.1.1.13", "198.51.100.5"));
    assert_eq!(r.handle_frame(T0, WEB, &mut other), Verdict::Drop(DropReason::NatExhausted));
}

#[test]
fn a_packet_matching_a_flow_from_the_wrong_side_is_refused() {
    let mut r = router(1500);
    resolve_all(&mut r);
    let mut f = b(&udp(G1, "10.1.1.11", 5000, "10.1.2.11", 53, b"q"));
    assert!(matches!(r.handle_frame(T0, WEB, &mut f), Verdict::Forward(_) | Verdict::Consumed));
    // The same orig tuple arriving from db's side is not that flow's packet.
    let mut spoof = b(&udp(G2, "10.1.1.11", 5000, "10.1.2.11", 53, b"q"));
    assert_eq!(r.handle_frame(T0, Iface::Net(NetId(1)), &mut spoof), Verdict::Drop(DropReason::SpoofedSource));
}

#[test]
fn a_dns_retransmission_waits_for_the_same_answer() {
    let mut r = router(1500);
    resolve_all(&mut r);
    let upstream: std::net::SocketAddr = "127.0.0.1:5353".parse().unwrap();
    let dns = crate::dns::DnsServer::new(crate::dns::DnsConfig { upstreams: vec![upstream], ..Default::default() });
    r.set_services(None, vec![false, false], Some(dns));
    // A query for a forwarded name, sent twice with the same id from the same port.
    let q = [0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, b'x', 7, b'e', b'x', b'a', b'm', b'p', b'l', b'e', 0, 0, 1, 0, 1];
    for _ in 0..2 {
        let mut f = b(&udp(G1, "10.1.1.11", 40000, "10.1.1.1", 53, &q));
        assert_eq!(r.handle_frame(T0, WEB, &mut f), Verdict::Consumed);
    }
    let up = r.take_upstream();
    assert_eq!(up.len(), 1, "one upstream question");
    // The upstream answers: the guest gets exactly one reply.
    let mut ans = up[0].1.clone();
    ans[2] |= 0x80;
    r.dns_upstream(T0, upstream, &ans);
    let replies: Vec<_> = take(&mut r).into_iter().filter(|(_, f)| f.len() > 42 && f[36..38] == [0x9c, 0x40]).collect();
    assert_eq!(replies.len(), 1, "one answer for the query and its retransmission");
    assert_eq!(&replies[0].1[42..44], &[0x12, 0x34]);
}

/// One guest filling the fragment table with first fragments keeps only its share: another
/// guest's fragmented datagram still gets through whole.
#[test]
fn one_source_cannot_take_the_fragment_table() {
    let mut r = router(1500);
    resolve_all(&mut r);
    let frag = |src: &str, id: u16, offset: u16, more: bool| {
        let mut f = udp(G1, src, 5000, "198.51.100.5", 9, &[1u8; 32]);
        f[18..20].copy_from_slice(&id.to_be_bytes());
        f[20..22].copy_from_slice(&((offset / 8) | if more { 0x2000 } else { 0 }).to_be_bytes());
        Ipv4Packet::new_checked(&mut f[14..]).unwrap().fill_checksum();
        b(&f)
    };
    for id in 0..600u16 {
        assert_eq!(r.handle_frame(T0, WEB, &mut frag("10.1.1.11", id, 0, true)), Verdict::Forward(Iface::Public));
    }
    // Its first 512 datagrams are followed; past its share, later fragments find no flow.
    assert_eq!(r.handle_frame(T0, WEB, &mut frag("10.1.1.11", 10, 40, false)), Verdict::Forward(Iface::Public));
    assert_eq!(r.handle_frame(T0, WEB, &mut frag("10.1.1.11", 590, 40, false)), Verdict::Drop(DropReason::FragNoFlow));
    // Another guest is unaffected.
    assert_eq!(r.handle_frame(T0, WEB, &mut frag("10.1.1.13", 7, 0, true)), Verdict::Forward(Iface::Public));
    assert_eq!(r.handle_frame(T0, WEB, &mut frag("10.1.1.13", 7, 40, false)), Verdict::Forward(Iface::Public));
    // Expiry gives the share back.
    r.poll(T0 + Duration::from_secs(31));
    assert_eq!(r.handle_frame(T0 + Duration::from_secs(31), WEB, &mut frag("10.1.1.11", 700, 0, true)), Verdict::Forward(Iface::Public));
    assert_eq!(r.handle_frame(T0 + Duration::from_secs(31), WEB, &mut frag("10.1.1.11", 700, 40, false)), Verdict::Forward(Iface::Public));
}

/// One guest asking for many slow names holds at most its share of the resolver's clients.
#[test]
fn one_source_cannot_take_the_resolver() {
    let mut r = router(1500);
    resolve_all(&mut r);
    let upstream: std::net::SocketAddr = "127.0.0.1:5353".parse().unwrap();
    let dns = crate::dns::DnsServer::new(crate::dns::DnsConfig { upstreams: vec![upstream], ..Default::default() });
    r.set_services(None, vec![false, false], Some(dns));
    let query = |id: u16, name: &str| {
        let mut q = vec![(id >> 8) as u8, id as u8, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in name.split('.') {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.extend_from_slice(&[0, 0, 1, 0, 1]);
        q
    };
    let n = services::DNS_PER_SOURCE as u16;
    for i in 0..n {
        let mut f = b(&udp(G1, "10.1.1.11", 40000, "10.1.1.1", 53, &query(i, &format!("n{i}.example"))));
        assert_eq!(r.handle_frame(T0, WEB, &mut f), Verdict::Consumed, "query {i}");
    }
    let mut f = b(&udp(G1, "10.1.1.11", 40000, "10.1.1.1", 53, &query(n, "one-more.example")));
    assert_eq!(r.handle_frame(T0, WEB, &mut f), Verdict::Drop(DropReason::DnsBusy));
    let mut f = b(&udp(G2, "10.1.1.13", 40001, "10.1.1.1", 53, &query(1, "other.example")));
    assert_eq!(r.handle_frame(T0, WEB, &mut f), Verdict::Consumed, "another guest is still served");
}

fn no_services(nets: usize) -> reload::Services {
    reload::Services { spec: crate::build::ServiceSpec { dhcp: None, served: vec![false; nets], dns: None }, metadata_enabled: false, vms: Vec::new() }
}

#[test]
fn reload_keeps_flows_decided_alike_and_revokes_the_others() {
    let mut r = router(1500);
    resolve_all(&mut r);
    let snat = || b(&tcp(G1, "10.1.1.11", 40000, "198.51.100.5", 80, 64, false));
    let dnat = || b(&tcp(GW, "198.51.100.5", 5555, "203.0.113.10", 2222, 64, false));
    let stat = || b(&tcp(G2, "10.1.1.12", 40001, "198.51.100.5", 443, 64, false));
    assert_eq!(r.handle_frame(T0, WEB, &mut b(&tcp(G1, "10.1.1.11", 40000, "198.51.100.5", 80, 64, true))), Verdict::Forward(Iface::Public));
    assert_eq!(r.handle_frame(T0, Iface::Public, &mut b(&tcp(GW, "198.51.100.5", 5555, "203.0.113.10", 2222, 64, true))), Verdict::Forward(WEB));
    assert_eq!(r.handle_frame(T0, WEB, &mut b(&tcp(G2, "10.1.1.12", 40001, "198.51.100.5", 443, 64, true))), Verdict::Forward(Iface::Public));
    let flows = r.ct.len();
    // An unrelated forward and a firewall for another address: every flow carries on.
    let mut c = r.cfg.clone();
    c.forwards.push(Forward { protocol: proto::TCP, public_ip: a("203.0.113.10"), public_port: "8080".parse().unwrap(), private_ip: a("10.1.2.11"), private_port: "80".parse().unwrap() });
    c.firewall.insert(a("203.0.113.11"), Classifier::new(vec![crate::filter::Rule { protocol: crate::config::schema::Proto::Tcp, ports: None, nets: vec!["192.0.2.0/24".parse().unwrap()], value: () }]));
    r.reconfigure(T0, R, c, no_services(2), |_| true, |_| true);
    assert_eq!(r.handle_frame(T0, WEB, &mut snat()), Verdict::Forward(Iface::Public));
    assert_eq!(r.handle_frame(T0, Iface::Public, &mut dnat()), Verdict::Forward(WEB));
    assert_eq!(r.handle_frame(T0, WEB, &mut stat()), Verdict::Forward(Iface::Public));
    assert_eq!((r.stats.reload_revoked, r.ct.len()), (0, flows));
    // The forward 2222 goes: its flow ends at its next packet, the others do not.
    let mut c = r.cfg.clone();
    c.forwards.retain(|f| f.public_port.lo != 2222);
    r.reconfigure(T0, R, c, no_services(2), |_| true, |_| true);
    take(&mut r);
    assert_eq!(r.handle_frame(T0, Iface::Public, &mut dnat()), Verdict::Drop(DropReason::ReloadRevoked));
    // The guest behind the forward gets a reset from its peer, at the dropped segment's
    // sequence number (1, the test segments'): an oracle built independently.
    let out = take(&mut r);
    assert_eq!(out.len(), 1, "one reset");
    let mut want = Vec::new();
    etherparse::PacketBuilder::ethernet2(R.0, G1.0).ipv4(a("198.51.100.5").octets(), a("10.1.1.11").octets(), 64).tcp(5555, 22, 1, 0).rst().write(&mut want, &[]).unwrap();
    assert_eq!(out[0].0, WEB);
    let got = &out[0].1;
    assert_eq!((&got[..14], &got[26..34], &got[34..38], &got[38..42], got[47] & 0x04), (&want[..14], &want[26..34], &want[34..38], &want[38..42], 0x04));
    assert!(Ipv4Packet::new_checked(&got[14..]).unwrap().verify_checksum());
    assert_eq!(r.handle_frame(T0, WEB, &mut snat()), Verdict::Forward(Iface::Public));
    assert_eq!(r.stats.reload_revoked, 1);
    assert_eq!(r.ct.len(), flows - 1);
    // The static NAT goes: the flow that left with its address ends; plain source NAT stays.
    let mut c = r.cfg.clone();
    c.static_nat.clear();
    r.reconfigure(T0, R, c, no_services(2), |_| true, |_| true);
    assert_eq!(r.handle_frame(T0, WEB, &mut stat()), Verdict::Drop(DropReason::ReloadRevoked));
    assert_eq!(r.handle_frame(T0, WEB, &mut snat()), Verdict::Forward(Iface::Public));
    // An egress rule now denies port 80 from web: that flow ends too.
    let mut c = r.cfg.clone();
    c.nets[0].egress = Classifier::new(vec![crate::filter::Rule { protocol: crate::config::schema::Proto::Tcp, ports: Some("80".parse().unwrap()), nets: vec!["0.0.0.0/0".parse().unwrap()], value: Action::Deny }]);
    r.reconfigure(T0, R, c, no_services(2), |_| true, |_| true);
    take(&mut r);
    assert_eq!(r.handle_frame(T0, WEB, &mut snat()), Verdict::Drop(DropReason::ReloadRevoked));
    // The guest that sent it is answered with a reset (its ACK number, 1, as the sequence).
    let out = take(&mut r);
    assert_eq!(out.len(), 1);
    let rst = &out[0].1;
    assert_eq!((out[0].0, &rst[0..6], &rst[26..30], &rst[30..34], &rst[34..36], &rst[38..42], rst[47]), (WEB, &G1.0[..], &[198u8, 51, 100, 5][..], &[10u8, 1, 1, 11][..], &80u16.to_be_bytes()[..], &1u32.to_be_bytes()[..], 0x04));
    assert_eq!(r.stats.reload_revoked, 3);
    assert_eq!(r.stats.revoke_resets, 3, "one per revoked TCP flow");
    assert_eq!(r.ct.len(), flows - 3);
}

#[test]
fn reload_that_removes_a_network_ends_its_flows_and_forgets_its_neighbours() {
    let mut r = router(1500);
    resolve_all(&mut r);
    assert_eq!(r.handle_frame(T0, WEB, &mut b(&tcp(G1, "10.1.1.11", 40000, "198.51.100.5", 80, 64, true))), Verdict::Forward(Iface::Public));
    assert!(r.neigh.state_of(T0, WEB, a("10.1.1.11")) != neigh::NeighState::Unknown);
    // web's slot becomes vacant (its name is gone).
    let mut c = r.cfg.clone();
    c.nets[0] = NetL3::vacant();
    r.reconfigure(T0, R, c, no_services(2), |n| n.0 != 0, |_| true);
    assert_eq!(r.neigh.state_of(T0, WEB, a("10.1.1.11")), neigh::NeighState::Unknown);
    // A packet of the flow from the public side finds it revoked.
    let back = r.ct.flow(0).reply;
    let mut f = b(&tcp(GW, "198.51.100.5", 80, "203.0.113.10", back.dport, 64, false));
    assert_eq!(r.handle_frame(T0, Iface::Public, &mut f), Verdict::Drop(DropReason::ReloadRevoked));
    assert_eq!(r.ct.len(), 0);
}
