//! The VPN core against boringtun peers in-process: handshakes both ways, data both ways,
//! strangers, garbage, replays, cryptokey routing, road warriors' learned endpoints, and the
//! router's whole path (a datagram on the public side becomes a routed packet on a guest
//! network; a guest's packet becomes a datagram to the peer that the peer opens).

use super::*;
use crate::buf::PacketBuf;
use crate::router::{Iface, L3Config, NetL3, PublicL3, Router, Verdict};
use crate::wire::ethernet::MacAddr;
use crate::wire::vnet::VnetHdr;

const T0: Instant = Instant(10_000);
const ROUTER_KEY: [u8; 32] = [7; 32];
const BRANCH_KEY: [u8; 32] = [9; 32];
const WARRIOR_KEY: [u8; 32] = [11; 32];

fn a(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn ep(s: &str) -> SocketAddrV4 {
    s.parse().unwrap()
}

fn spec() -> VpnSpec {
    VpnSpec {
        listen: ep("203.0.113.10:51820"),
        private_key: Key(ROUTER_KEY),
        address: "10.250.0.1/24".parse().unwrap(),
        mtu: 1420,
        peers: vec![
            PeerSpec {
                name: "branch".into(),
                public_key: Key(BRANCH_KEY).public(),
                preshared_key: None,
                endpoint: Some(ep("198.51.100.7:51820")),
                allowed_ips: vec!["192.168.50.0/24".parse().unwrap(), "192.168.50.128/25".parse().unwrap()],
                nets: None,
                keepalive: None,
            },
            PeerSpec {
                name: "laptop".into(),
                public_key: Key(WARRIOR_KEY).public(),
                preshared_key: None,
                endpoint: None,
                allowed_ips: vec!["10.250.0.5/32".parse().unwrap()],
                nets: Some(vec![NetId(0)]),
                keepalive: None,
            },
        ],
    }
}

/// The far side: a boringtun tunnel with `key`, talking to the router.
fn far(key: [u8; 32], index: u32) -> Tunn {
    Tunn::new(StaticSecret::from(key), PublicKey::from(&StaticSecret::from(ROUTER_KEY)), None, None, index, None)
}

fn ip_packet(src: &str, dst: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    etherparse::PacketBuilder::ipv4(a(src).octets(), a(dst).octets(), 64).udp(5000, 6000).write(&mut out, payload).unwrap();
    out
}

/// Completes a handshake initiated by `t` from `from`; returns the first data datagram (the
/// packet that waited for the session).
fn connect(v: &mut Vpn, t: &mut Tunn, from: SocketAddrV4, packet: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; 2048];
    let init = match t.encapsulate(packet, &mut buf) {
        TunnResult::WriteToNetwork(d) => d.to_vec(),
        r => panic!("{r:?}"),
    };
    assert_eq!(init[0], 1, "a handshake initiation");
    let mut out = Vec::new();
    assert_eq!(v.receive(T0, from, &init, &mut out), Ok(Rx::Done));
    assert_eq!(out.len(), 1, "one handshake response");
    assert_eq!(out[0].0, from, "answered where it came from");
    let resp = out.remove(0).1;
    let mut data = vec![0u8; 2048];
    // The initiator confirms the session with a keepalive, then sends what waited for it.
    let keepalive = match t.decapsulate(Some(IpAddr::V4(*from.ip())), &resp, &mut data) {
        TunnResult::WriteToNetwork(d) => d.to_vec(),
        r => panic!("{r:?}"),
    };
    assert_eq!(v.receive(T0, from, &keepalive, &mut out), Ok(Rx::Done));
    match t.decapsulate(None, &[], &mut data) {
        TunnResult::WriteToNetwork(d) => d.to_vec(),
        r => panic!("{r:?}"),
    }
}

#[test]
fn keys_are_base64_and_never_printed() {
    let k = Key([42; 32]);
    assert_eq!(Key::from_base64(&k.to_base64()), Ok(k));
    assert_eq!(format!("{k:?}"), "Key(..)");
    assert!(!format!("{:?}", spec()).contains(&Key(ROUTER_KEY).to_base64()));
    assert!(Key::from_base64("not base64!").is_err());
    assert!(Key::from_base64("AAAA").is_err(), "3 bytes is no key");
    // wg's own vector: the public key of this private key (from `wg pubkey`).
    let private = Key::from_base64("yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=").unwrap();
    assert_eq!(private.public().to_base64(), "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=");
}

#[test]
fn handshake_then_data_both_ways() {
    let mut v = Vpn::new(spec());
    let mut t = far(BRANCH_KEY, 77);
    let from = ep("198.51.100.7:51820");
    let pkt = ip_packet("192.168.50.10", "10.1.1.11", b"hello");
    let data = connect(&mut v, &mut t, from, &pkt);
    let mut out = Vec::new();
    let Ok(Rx::Inner { peer, off, len }) = v.receive(T0, from, &data, &mut out) else { panic!() };
    assert_eq!(peer, 0);
    assert_eq!(v.inner(off, len), &pkt[..]);
    assert!(out.is_empty());
    let row = v.row(T0);
    assert_eq!((row.peers[0].counters.handshakes, row.peers[0].counters.rx_packets), (1, 1));
    assert_eq!(row.peers[0].last_handshake_secs, Some(0));

    // Back: sealed by the router, opened by the branch.
    let reply = ip_packet("10.1.1.11", "192.168.50.10", b"world");
    let mut d = vec![0u8; 2048];
    let (to, n) = v.seal(0, &reply, &mut d).unwrap();
    assert_eq!(to, from);
    let mut opened = vec![0u8; 2048];
    match t.decapsulate(Some(IpAddr::V4(*from.ip())), &d[..n], &mut opened) {
        TunnResult::WriteToTunnelV4(p, src) => {
            assert_eq!(p, &reply[..]);
            assert_eq!(src, a("10.1.1.11"));
        }
        r => panic!("{r:?}"),
    }

    // The same datagram again: a replay.
    assert_eq!(v.receive(T0, from, &data, &mut out), Err(DropReason::VpnReplay));
    assert_eq!(v.counters.replays, 1);
    // A flipped bit: fails authentication.
    let mut bad = data.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    assert!(matches!(v.receive(T0, from, &bad, &mut out), Err(DropReason::VpnBadAuth | DropReason::VpnReplay)));
}

#[test]
fn strangers_and_garbage_are_counted_never_answered() {
    let mut v = Vpn::new(spec());
    let mut out = Vec::new();
    // A key no peer has.
    let mut t = far([13; 32], 5);
    let mut buf = vec![0u8; 2048];
    let TunnResult::WriteToNetwork(init) = t.encapsulate(&ip_packet("192.168.50.10", "10.1.1.11", b"x"), &mut buf) else { panic!() };
    assert_eq!(v.receive(T0, ep("198.51.100.99:1"), init, &mut out), Err(DropReason::VpnStranger));
    // Not WireGuard at all, or cut short.
    for g in [&b""[..], b"\x01", b"\x04\0\0\0garbage", &[0xffu8; 200][..], &[1u8; 148][..]] {
        assert!(v.receive(T0, ep("198.51.100.99:1"), g, &mut out).is_err(), "{g:?}");
    }
    // Data for a session index no peer holds.
    let mut fake = vec![4u8, 0, 0, 0];
    fake.extend_from_slice(&(200u32 << 8).to_le_bytes());
    fake.extend_from_slice(&[0; 40]);
    assert_eq!(v.receive(T0, ep("198.51.100.99:1"), &fake, &mut out), Err(DropReason::VpnStranger));
    assert!(out.is_empty(), "no answer to any of them");
    assert!(v.counters.strangers >= 2 && v.counters.malformed >= 3, "{:?}", v.counters);
}

#[test]
fn handshakes_are_rate_limited_per_source_before_any_crypto() {
    let mut v = Vpn::new(spec());
    let mut out = Vec::new();
    let junk = [1u8; 148];
    let flood = ep("198.51.100.66:1000");
    let refused = (0..100).filter(|_| v.receive(T0, flood, &junk, &mut out) == Err(DropReason::VpnRateLimited)).count();
    assert_eq!(refused, 100 - HS_BURST as usize, "the burst passes to the MAC check, the rest stops here");
    // Another source is not affected; data messages are never limited this way.
    assert_eq!(v.receive(T0, ep("198.51.100.67:1000"), &junk, &mut out), Err(DropReason::VpnMalformed));
    let mut data = vec![4u8, 0, 0, 0];
    data.extend_from_slice(&[0; 40]);
    assert_ne!(v.receive(T0, flood, &data, &mut out), Err(DropReason::VpnRateLimited));
    // A second later it has its rate again; two seconds later its whole burst.
    let t1 = Instant(T0.0 + 1000);
    assert_ne!(v.receive(t1, flood, &junk, &mut out), Err(DropReason::VpnRateLimited));
    let t3 = Instant(T0.0 + 3000);
    let refused = (0..100).filter(|_| v.receive(t3, flood, &junk, &mut out) == Err(DropReason::VpnRateLimited)).count();
    assert_eq!(refused, 100 - HS_BURST as usize);
    assert_eq!(v.counters.rate_limited, 2 * (100 - HS_BURST as u64));
    assert!(out.is_empty());
}

#[test]
fn cryptokey_routing_is_most_specific_and_sources_route_back() {
    let v = Vpn::new(spec());
    assert_eq!(v.route(a("192.168.50.200")), Some(0));
    assert_eq!(v.route(a("10.250.0.5")), Some(1));
    assert_eq!(v.route(a("10.250.0.6")), None);
    assert!(v.allowed(0, a("192.168.50.10")));
    assert!(!v.allowed(0, a("10.250.0.5")), "the laptop's address is not the branch's");
    assert!(!v.allowed(1, a("172.16.9.9")));
    assert!(v.may_reach(0, NetId(1)) && v.may_reach(1, NetId(0)) && !v.may_reach(1, NetId(1)));
}

#[test]
fn road_warrior_endpoint_is_learned_and_follows_it() {
    let mut v = Vpn::new(spec());
    let mut d = vec![0u8; 2048];
    let pkt = ip_packet("10.1.1.11", "10.250.0.5", b"x");
    assert_eq!(v.seal(1, &pkt, &mut d), Err(DropReason::VpnNoEndpoint));
    let mut t = far(WARRIOR_KEY, 3);
    let first = ep("192.0.2.9:40000");
    let data = connect(&mut v, &mut t, first, &ip_packet("10.250.0.5", "10.1.1.11", b"hi"));
    let mut out = Vec::new();
    assert!(matches!(v.receive(T0, first, &data, &mut out), Ok(Rx::Inner { peer: 1, .. })));
    assert_eq!(v.seal(1, &pkt, &mut d).map(|(e, _)| e), Ok(first));
    // It roams: a later authenticated datagram from elsewhere moves it.
    let moved = ep("192.0.2.77:41000");
    let mut buf = vec![0u8; 2048];
    let TunnResult::WriteToNetwork(data) = t.encapsulate(&ip_packet("10.250.0.5", "10.1.1.11", b"again"), &mut buf) else { panic!() };
    assert!(matches!(v.receive(T0, moved, data, &mut out), Ok(Rx::Inner { peer: 1, .. })));
    assert_eq!(v.seal(1, &pkt, &mut d).map(|(e, _)| e), Ok(moved));
    assert_eq!(v.row(T0).peers[1].endpoint.as_deref(), Some("192.0.2.77:41000"));
}

#[test]
fn reload_keeps_sessions_of_unchanged_peers() {
    let mut v = Vpn::new(spec());
    let mut t = far(BRANCH_KEY, 1);
    let from = ep("198.51.100.7:51820");
    let data = connect(&mut v, &mut t, from, &ip_packet("192.168.50.10", "10.1.1.11", b"a"));
    let mut out = Vec::new();
    assert!(v.receive(T0, from, &data, &mut out).is_ok());
    // The laptop goes; the branch gets another network list: its session stays.
    let mut s = spec();
    s.peers.truncate(1);
    s.peers[0].nets = Some(vec![NetId(1)]);
    v.reconfigure(s.clone());
    let mut buf = vec![0u8; 2048];
    let TunnResult::WriteToNetwork(d) = t.encapsulate(&ip_packet("192.168.50.10", "10.1.2.11", b"b"), &mut buf) else { panic!() };
    assert!(matches!(v.receive(T0, from, d, &mut out), Ok(Rx::Inner { peer: 0, .. })), "the session survived");
    assert!(!v.may_reach(0, NetId(0)));
    assert_eq!(v.route(a("10.250.0.5")), None);
    // A new private key: every session starts afresh.
    s.private_key = Key([8; 32]);
    v.reconfigure(s);
    let TunnResult::WriteToNetwork(d) = t.encapsulate(&ip_packet("192.168.50.10", "10.1.2.11", b"c"), &mut buf) else { panic!() };
    assert!(v.receive(T0, from, d, &mut out).is_err());
}

#[test]
fn timers_retry_handshakes_on_the_pipeline_clock() {
    let mut v = Vpn::new(spec());
    let mut d = vec![0u8; 2048];
    // A packet for the branch with no session: an initiation goes out at once.
    let (to, n) = v.seal(0, &ip_packet("10.1.1.11", "192.168.50.10", b"x"), &mut d).unwrap();
    assert_eq!((to, d[0], n), (ep("198.51.100.7:51820"), 1, 148));
    assert_eq!(v.counters.handshakes_started, 1);
    let mut out = Vec::new();
    v.poll(T0, &mut out);
    assert_eq!(v.poll_at(), Instant(T0.0 + 250), "the next tick");
    v.poll(Instant(T0.0 + 100), &mut out);
    assert!(out.is_empty(), "nothing before the tick");
}

// The router's path, with the VPN as one of its interfaces.

const R: MacAddr = MacAddr([2, 0, 0, 0, 0, 1]);
const GW: MacAddr = MacAddr([0x52, 0x54, 0, 0, 9, 1]);
const G1: MacAddr = MacAddr([0x52, 0x54, 0, 0, 1, 0x11]);

fn router() -> Router {
    router_with(Vec::new())
}

/// The router with `web_egress` as the web network's egress rules.
fn router_with(web_egress: Vec<crate::filter::Rule<crate::config::schema::Action>>) -> Router {
    use crate::config::schema::Action;
    use crate::filter::Classifier;
    let mut rules = Some(web_egress);
    let mut net = |cidr: &str, gw: &str| NetL3 {
        domain: None,
        cidr: cidr.parse().unwrap(),
        gateway: Some(a(gw)),
        mtu: 1500,
        egress: Classifier::new(rules.take().unwrap_or_default()),
        egress_default: Action::Allow,
    };
    let mut r = Router::new(
        R,
        L3Config {
            nets: vec![net("10.1.1.0/24", "10.1.1.1"), net("10.1.2.0/24", "10.1.2.1")],
            public: Some(PublicL3 { ips: vec!["203.0.113.10/24".parse().unwrap()], gateway: a("203.0.113.1"), source_nat_ip: a("203.0.113.10"), mtu: 1500 }),
            vpn: Some(spec()),
            ..Default::default()
        },
    );
    // The public gateway's MAC and the web guest's are known.
    for (iface, mac, ip, ours) in [(Iface::Public, GW, "203.0.113.1", "203.0.113.10"), (Iface::Net(NetId(0)), G1, "10.1.1.11", "10.1.1.1")] {
        let mut f = vec![0u8; 42];
        f[0..6].copy_from_slice(&R.0);
        f[6..12].copy_from_slice(&mac.0);
        f[12..14].copy_from_slice(&[8, 6]);
        crate::wire::arp::ArpRepr { operation: crate::wire::arp::OP_REPLY, sender_mac: mac, sender_ip: a(ip), target_mac: R, target_ip: a(ours) }.emit(&mut f[14..]);
        r.handle_frame(T0, iface, &mut PacketBuf::from_frame(&f, VnetHdr::default()));
    }
    r.outbox.clear();
    r
}

/// A UDP datagram from `from` to the listen address, as a frame from the public gateway.
fn datagram(from: SocketAddrV4, payload: &[u8]) -> PacketBuf {
    let mut out = Vec::new();
    etherparse::PacketBuilder::ethernet2(GW.0, R.0).ipv4(from.ip().octets(), [203, 0, 113, 10], 60).udp(from.port(), 51820).write(&mut out, payload).unwrap();
    PacketBuf::from_frame(&out, VnetHdr::default())
}

/// Drains the router's outbox (sealing first) and returns the UDP payloads sent to the public
/// side.
fn sent(r: &mut Router) -> Vec<Vec<u8>> {
    r.seal_tunnel(T0);
    let mut v = Vec::new();
    for o in r.outbox.drain(..) {
        assert_eq!(o.iface, Iface::Public);
        let f = o.buf.frame();
        assert_eq!(&f[0..6], &GW.0, "to the public gateway's MAC");
        let p = etherparse::SlicedPacket::from_ethernet(f).unwrap();
        let Some(etherparse::TransportSlice::Udp(u)) = p.transport else { panic!("not UDP") };
        assert_eq!(u.source_port(), 51820);
        v.push(u.payload().to_vec());
    }
    v
}

#[test]
fn router_opens_datagrams_into_networks_and_seals_guest_packets() {
    let mut r = router();
    let mut t = far(BRANCH_KEY, 1);
    let from = ep("198.51.100.7:51820");
    let mut buf = vec![0u8; 2048];
    let TunnResult::WriteToNetwork(init) = t.encapsulate(&ip_packet("192.168.50.10", "10.1.1.11", b"q"), &mut buf) else { panic!() };
    assert_eq!(r.handle_frame(T0, Iface::Public, &mut datagram(from, init)), Verdict::Consumed);
    let out = sent(&mut r);
    assert_eq!(out.len(), 1);
    let mut data = vec![0u8; 2048];
    let TunnResult::WriteToNetwork(keepalive) = t.decapsulate(Some(IpAddr::V4(*from.ip())), &out[0], &mut data) else { panic!() };
    assert_eq!(r.handle_frame(T0, Iface::Public, &mut datagram(from, keepalive)), Verdict::Consumed);
    let TunnResult::WriteToNetwork(first) = t.decapsulate(None, &[], &mut data) else { panic!() };
    // The queued packet, opened and routed to the guest on web, untranslated.
    let mut b = datagram(from, first);
    assert_eq!(r.handle_frame(T0, Iface::Public, &mut b), Verdict::Forward(Iface::Net(NetId(0))));
    let f = b.frame();
    assert_eq!((&f[0..6], &f[14 + 12..14 + 16]), (&G1.0[..], &[192, 168, 50, 10][..]), "to the guest, from the LAN's own address");
    // A guest's answer: sealed to the branch, opened there intact.
    let mut g = Vec::new();
    etherparse::PacketBuilder::ethernet2(G1.0, R.0).ipv4([10, 1, 1, 11], [192, 168, 50, 10], 64).udp(6000, 5000).write(&mut g, b"answer").unwrap();
    assert_eq!(r.handle_frame(T0, Iface::Net(NetId(0)), &mut PacketBuf::from_frame(&g, VnetHdr::default())), Verdict::Consumed);
    let out = sent(&mut r);
    assert_eq!(out.len(), 1);
    match t.decapsulate(Some(IpAddr::V4(*from.ip())), &out[0], &mut data) {
        TunnResult::WriteToTunnelV4(p, src) => {
            assert_eq!(src, a("10.1.1.11"));
            assert_eq!(&p[p.len() - 6..], b"answer");
            assert_eq!(p[8], 63, "one hop: TTL decremented");
        }
        r => panic!("{r:?}"),
    }
    // Cryptokey routing: the branch speaking for an address that is not its own.
    let TunnResult::WriteToNetwork(d) = t.encapsulate(&ip_packet("172.16.9.9", "10.1.1.11", b"spoof"), &mut buf) else { panic!() };
    assert_eq!(r.handle_frame(T0, Iface::Public, &mut datagram(from, d)), Verdict::Drop(DropReason::VpnSourceNotAllowed));
    assert_eq!(r.vpn_row(T0).unwrap().peers[0].counters.source_not_allowed, 1);
    // The laptop's prefix is not reachable from db (its networks are web only); the router's
    // own VPN address answers ping from the branch.
    let mut g = Vec::new();
    etherparse::PacketBuilder::ethernet2(G1.0, R.0).ipv4([10, 1, 2, 11], [10, 250, 0, 5], 64).udp(1, 2).write(&mut g, b"x").unwrap();
    assert_eq!(r.handle_frame(T0, Iface::Net(NetId(1)), &mut PacketBuf::from_frame(&g, VnetHdr::default())), Verdict::Drop(DropReason::NoRoute));
}

#[test]
fn tunnel_mtu_frag_needed_for_df_and_fragments_otherwise() {
    let mut r = router();
    // A session with the branch first, so what is sealed goes out as data.
    let mut t = far(BRANCH_KEY, 1);
    let from = ep("198.51.100.7:51820");
    let mut buf = vec![0u8; 4096];
    let TunnResult::WriteToNetwork(init) = t.encapsulate(&ip_packet("192.168.50.10", "10.1.1.11", b"q"), &mut buf) else { panic!() };
    assert_eq!(r.handle_frame(T0, Iface::Public, &mut datagram(from, init)), Verdict::Consumed);
    let out = sent(&mut r);
    let mut data = vec![0u8; 4096];
    let TunnResult::WriteToNetwork(ka) = t.decapsulate(Some(IpAddr::V4(*from.ip())), &out[0], &mut data) else { panic!() };
    // The keepalive confirms the session to the router (a responder sends only after that).
    assert_eq!(r.handle_frame(T0, Iface::Public, &mut datagram(from, ka)), Verdict::Consumed);
    let big = |df: bool| {
        let mut g = Vec::new();
        etherparse::PacketBuilder::ethernet2(G1.0, R.0).ipv4([10, 1, 1, 11], [192, 168, 50, 10], 64).udp(6000, 5000).write(&mut g, &[7u8; 1472]).unwrap();
        g[20] = if df { 0x40 } else { 0 };
        crate::wire::ipv4::Ipv4Packet::new_checked(&mut g[14..]).unwrap().fill_checksum();
        PacketBuf::from_frame(&g, VnetHdr::default())
    };
    // DF and over the tunnel's 1420: frag-needed back to the guest, naming 1420.
    assert_eq!(r.handle_frame(T0, Iface::Net(NetId(0)), &mut big(true)), Verdict::Drop(DropReason::FragNeeded));
    let icmp = r.outbox.iter().find(|o| o.iface == Iface::Net(NetId(0))).expect("an ICMP error to the guest");
    let f = icmp.buf.frame();
    assert_eq!((f[14 + 20], f[14 + 21], u16::from_be_bytes([f[14 + 26], f[14 + 27]])), (3, 4, 1420));
    r.outbox.clear();
    // Without DF: two fragments, each sealed on its own, each opened intact by the branch.
    assert_eq!(r.handle_frame(T0, Iface::Net(NetId(0)), &mut big(false)), Verdict::Consumed);
    let out = sent(&mut r);
    assert_eq!(out.len(), 2);
    let mut total = 0;
    for d in out {
        match t.decapsulate(Some(IpAddr::V4(*from.ip())), &d, &mut data) {
            TunnResult::WriteToTunnelV4(p, _) => {
                assert!(p.len() <= 1420);
                total += p.len() - 20;
            }
            r => panic!("{r:?}"),
        }
    }
    assert_eq!(total, 8 + 1472, "the whole datagram in two fragments");
}

#[test]
fn packets_waiting_for_a_session_leave_when_the_initiator_confirms_it() {
    // The router has something for the branch before any session: it initiates, and the
    // packet leaves right after the response arrives.
    let mut v = Vpn::new(spec());
    let mut t = far(BRANCH_KEY, 1);
    let from = ep("198.51.100.7:51820");
    let mut d = vec![0u8; 2048];
    let pkt = ip_packet("10.1.1.11", "192.168.50.10", b"first");
    let (_, n) = v.seal(0, &pkt, &mut d).unwrap();
    let mut resp = vec![0u8; 2048];
    let TunnResult::WriteToNetwork(r) = t.decapsulate(Some(IpAddr::V4(*from.ip())), &d[..n], &mut resp) else { panic!() };
    let mut out = Vec::new();
    assert_eq!(v.receive(T0, from, r, &mut out), Ok(Rx::Done));
    let mut opened = vec![0u8; 2048];
    let got: Vec<Vec<u8>> = out
        .iter()
        .filter_map(|(_, m)| match t.decapsulate(Some(IpAddr::V4(*from.ip())), m, &mut opened) {
            TunnResult::WriteToTunnelV4(p, _) => Some(p.to_vec()),
            _ => None,
        })
        .collect();
    assert_eq!(got, vec![pkt.clone()], "the waiting packet, once");

    // Both sides start at once (the router has a packet waiting, the branch initiates too):
    // whatever crosses, the packet reaches the branch exactly once, and the branch's reaches
    // the router, within a few exchanges.
    let mut v = Vpn::new(spec());
    let mut t = far(BRANCH_KEY, 2);
    let (_, n) = v.seal(0, &pkt, &mut d).unwrap();
    let mut to_branch: Vec<Vec<u8>> = vec![d[..n].to_vec()];
    let mut buf = vec![0u8; 2048];
    let theirs = ip_packet("192.168.50.10", "10.1.1.11", b"x");
    let TunnResult::WriteToNetwork(init) = t.encapsulate(&theirs, &mut buf) else { panic!() };
    let mut to_router: Vec<Vec<u8>> = vec![init.to_vec()];
    let (mut at_branch, mut at_router) = (Vec::new(), Vec::new());
    for _ in 0..6 {
        let mut out = Vec::new();
        for m in to_router.drain(..) {
            if let Ok(Rx::Inner { off, len, .. }) = v.receive(T0, from, &m, &mut out) {
                at_router.push(v.inner(off, len).to_vec());
            }
        }
        to_branch.extend(out.into_iter().map(|(_, m)| m));
        for m in to_branch.drain(..) {
            let mut r = t.decapsulate(Some(IpAddr::V4(*from.ip())), &m, &mut opened);
            loop {
                match r {
                    TunnResult::WriteToTunnelV4(p, _) => at_branch.push(p.to_vec()),
                    TunnResult::WriteToNetwork(x) => to_router.push(x.to_vec()),
                    _ => break,
                }
                r = t.decapsulate(None, &[], &mut opened);
            }
        }
    }
    assert_eq!(at_branch, vec![pkt], "the router's waiting packet, once");
    assert_eq!(at_router, vec![theirs], "the branch's waiting packet, once");
}

#[test]
fn guest_traffic_into_the_tunnel_is_subject_to_egress_rules_and_never_translated() {
    use crate::config::schema::{Action, Proto};
    use crate::filter::Rule;
    let mut r = router_with(vec![Rule { protocol: Proto::Udp, ports: Some("5000".parse().unwrap()), nets: vec!["192.168.50.0/24".parse().unwrap()], value: Action::Deny }]);
    let udp_to = |port: u16| {
        let mut g = Vec::new();
        etherparse::PacketBuilder::ethernet2(G1.0, R.0).ipv4([10, 1, 1, 11], [192, 168, 50, 10], 64).udp(6000, port).write(&mut g, b"x").unwrap();
        PacketBuf::from_frame(&g, VnetHdr::default())
    };
    // The network's egress rule denies UDP 5000 toward the branch: dropped before any tunnel.
    assert_eq!(r.handle_frame(T0, Iface::Net(NetId(0)), &mut udp_to(5000)), Verdict::Drop(DropReason::EgressDenied));
    // Another port goes into the tunnel (sealed: a handshake initiation leaves first), and no
    // flow into a tunnel is ever source-NATed.
    assert_eq!(r.handle_frame(T0, Iface::Net(NetId(0)), &mut udp_to(5001)), Verdict::Consumed);
    let out = sent(&mut r);
    assert_eq!((out.len(), out[0][0]), (1, 1), "a handshake initiation to the branch");
    assert_eq!(r.ct.translated().len(), 0, "nothing translated: {:?}", r.ct.translated());
}
