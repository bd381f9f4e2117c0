//! Two speakers wired back to back on virtual time (the "TCP connection" is a byte pipe
//! carried by the test), and a scripted neighbour for what a good speaker never sends.

use super::*;

const A: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
const B: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 3);
const VNI: u32 = 5001;

fn cfg(me: Ipv4Addr, peer: Ipv4Addr, max_routes: usize) -> SpeakerConfig {
    SpeakerConfig {
        asn: 65000,
        router_id: me,
        local: me,
        nets: vec![EvpnNet { name: "web".into(), vni: VNI, rd: Rd::ip(me, 1), route_targets: vec![RouteTarget { asn: 65000, value: VNI }] }],
        neighbors: vec![NeighborSpec { addr: peer, remote_as: 65000, hold_secs: 9, keepalive_secs: 3, max_routes }],
    }
}

fn mac(i: u8) -> [u8; 6] {
    [0x52, 0x54, 0, 0, 0, i]
}

/// A and B, and whether the pipe between them is up.
struct Pair {
    a: Speaker,
    b: Speaker,
    now: Instant,
    up: bool,
    /// Bytes A sent to B, as seen on the wire.
    a_sent: Vec<Vec<u8>>,
}

impl Pair {
    fn new() -> Pair {
        Pair { a: Speaker::new(cfg(A, B, 1000)), b: Speaker::new(cfg(B, A, 1000)), now: Instant::from_secs(1), up: true, a_sent: Vec::new() }
    }

    /// Carries out both speakers' I/O until nothing moves; A's connection attempt reaches B
    /// as an accepted connection (B's own attempts are refused: one session, A initiates).
    fn pump(&mut self) {
        for _ in 0..100 {
            let (ia, ib) = (self.a.take_io(), self.b.take_io());
            if ia.is_empty() && ib.is_empty() {
                return;
            }
            for io in ia {
                match io {
                    Io::Connect { peer, .. } if self.up => {
                        // B takes the connection: it behaves as if it had dialled.
                        self.b.nbrs[0].state = State::Connect;
                        self.a.connected(self.now, peer);
                        self.b.connected(self.now, A);
                    }
                    Io::Connect { peer, .. } => self.a.connect_failed(self.now, peer, "refused".into()),
                    Io::Send(_, bytes) if self.up => {
                        self.a_sent.push(bytes.clone());
                        self.b.received(self.now, A, &bytes);
                    }
                    Io::Close(_) if self.up => self.b.closed(self.now, A, "reset"),
                    _ => {}
                }
            }
            for io in ib {
                match io {
                    Io::Connect { peer, .. } => self.b.connect_failed(self.now, peer, "refused".into()),
                    Io::Send(_, bytes) if self.up => self.a.received(self.now, B, &bytes),
                    Io::Close(_) if self.up => self.a.closed(self.now, B, "reset"),
                    _ => {}
                }
            }
        }
        panic!("the speakers never settled");
    }

    /// Advances virtual time by `secs` in 100 ms steps, running timers.
    fn run(&mut self, secs: f64) {
        let end = self.now + Duration::from_secs_f64(secs);
        while self.now < end {
            self.now = self.now + Duration::from_millis(100);
            self.a.poll(self.now);
            self.b.poll(self.now);
            self.pump();
        }
    }
}

#[test]
fn session_comes_up_and_routes_flow_both_ways() {
    let mut p = Pair::new();
    p.b.nbrs[0].next_connect = Instant(u64::MAX);
    p.run(0.5);
    assert_eq!(p.a.nbrs[0].state, State::Established);
    assert_eq!(p.b.nbrs[0].state, State::Established);
    // Each learned the other's type-3 route: the flood list.
    assert_eq!(p.a.view().vnis[&VNI].flood, BTreeSet::from([B]));
    assert_eq!(p.a.view().vteps(), BTreeMap::from([(B, VtepVnis { all: BTreeSet::from([VNI]), flood: BTreeSet::from([VNI]) })]));
    let g = p.a.generation();
    p.b.set_local(p.now, BTreeSet::from([(VNI, mac(1), None), (VNI, mac(1), Some(Ipv4Addr::new(10, 1, 1, 12)))]));
    p.pump();
    assert!(p.a.generation() > g);
    let r = &p.a.view().vnis[&VNI].macs[&MacKey(mac(1))];
    assert_eq!((r.vtep, r.seq, r.ips.clone()), (B, 0, vec![Ipv4Addr::new(10, 1, 1, 12)]));
    let s = p.a.snapshot(p.now);
    assert_eq!((s.neighbors[0].routes_in, s.neighbors[0].routes_out), (3, 1));
    // Gone from B: withdrawn at A.
    p.b.set_local(p.now, BTreeSet::new());
    p.pump();
    assert!(p.a.view().vnis[&VNI].macs.is_empty());
    // Keepalives hold the session up well past the hold time.
    p.run(30.0);
    assert_eq!(p.a.nbrs[0].state, State::Established);
    assert!(p.a.snapshot(p.now).neighbors[0].counters.messages_in > 10);
}

#[test]
fn learned_routes_vanish_with_the_hold_timer_and_come_back() {
    let mut p = Pair::new();
    p.b.nbrs[0].next_connect = Instant(u64::MAX);
    p.b.set_local(p.now, BTreeSet::from([(VNI, mac(1), None)]));
    p.run(0.5);
    assert_eq!(p.a.view().vnis[&VNI].macs.len(), 1);
    p.up = false;
    p.run(8.0);
    assert_eq!(p.a.nbrs[0].state, State::Established, "within the hold time");
    p.run(1.5);
    assert_ne!(p.a.nbrs[0].state, State::Established);
    assert!(p.a.view().vnis[&VNI].macs.is_empty() && p.a.view().vnis[&VNI].flood.is_empty());
    assert!(p.a.nbrs[0].last_error.as_deref().unwrap().contains("hold timer expired"));
    // The link returns: A reconnects with backoff, B is reset to accept, routes return.
    p.up = true;
    p.b.nbrs[0].state = State::Idle;
    p.b.nbrs[0].adj_out.clear();
    p.run(5.0);
    assert_eq!(p.a.nbrs[0].state, State::Established);
    assert_eq!(p.a.view().vnis[&VNI].macs.len(), 1);
}

#[test]
fn a_mac_that_moves_gets_a_higher_sequence_number_and_the_old_place_yields() {
    let mut p = Pair::new();
    p.b.nbrs[0].next_connect = Instant(u64::MAX);
    p.a.set_local(p.now, BTreeSet::from([(VNI, mac(7), None)]));
    p.run(0.5);
    assert_eq!(p.b.view().vnis[&VNI].macs[&MacKey(mac(7))].seq, 0);
    // The VM comes up on B (its MAC learned there) while A still has it.
    p.b.set_local(p.now, BTreeSet::from([(VNI, mac(7), None)]));
    p.pump();
    assert_eq!(p.b.snapshot(p.now).local_macs[&VNI], vec![(MacKey(mac(7)), 1)]);
    // A sees the newer route win over its own: the MAC is now behind B in A's view.
    let r = &p.a.view().vnis[&VNI].macs[&MacKey(mac(7))];
    assert_eq!((r.vtep, r.seq), (B, 1));
    // B's view does not list its own MAC (A's seq 0 loses).
    assert!(p.b.view().vnis[&VNI].macs.is_empty());
    // A's datapath follows (the MAC no longer local): A withdraws.
    p.a.set_local(p.now, BTreeSet::new());
    p.pump();
    assert!(p.a.snapshot(p.now).local_macs.is_empty());
    assert!(p.b.view().vnis[&VNI].macs.is_empty());
    // And back to A: A's number goes above B's.
    p.a.set_local(p.now, BTreeSet::from([(VNI, mac(7), None)]));
    p.pump();
    assert_eq!(p.a.snapshot(p.now).local_macs[&VNI], vec![(MacKey(mac(7)), 2)]);
    assert_eq!(p.b.view().vnis[&VNI].macs[&MacKey(mac(7))].seq, 2);
}

#[test]
fn a_mac_claimed_by_two_hosts_stops_raising_its_number() {
    let mut p = Pair::new();
    p.b.nbrs[0].next_connect = Instant(u64::MAX);
    p.run(0.5);
    let m = BTreeSet::from([(VNI, mac(9), None)]);
    for _ in 0..12 {
        p.a.set_local(p.now, m.clone());
        p.pump();
        p.b.set_local(p.now, BTreeSet::new());
        p.pump();
        p.b.set_local(p.now, m.clone());
        p.pump();
        p.a.set_local(p.now, BTreeSet::new());
        p.pump();
        p.run(0.2);
    }
    let (sa, sb) = (p.a.snapshot(p.now), p.b.snapshot(p.now));
    assert!(sa.duplicate_macs + sb.duplicate_macs >= 1, "the race was detected");
    assert!(p.b.mobility[&(VNI, mac(9))].seq <= 2 * DUP_MOVES as u32 + 1);
}

#[test]
fn routes_past_the_cap_are_refused_and_counted() {
    let mut p = Pair::new();
    p.a = Speaker::new(cfg(A, B, 5));
    p.b.nbrs[0].next_connect = Instant(u64::MAX);
    p.b.set_local(p.now, (1..=10).map(|i| (VNI, mac(i), None)).collect());
    p.run(0.5);
    let s = p.a.snapshot(p.now);
    assert_eq!(s.neighbors[0].routes_in, 5);
    assert_eq!(s.neighbors[0].counters.routes_refused, 6);
    assert_eq!(s.neighbors[0].state, State::Established);
}

#[test]
fn routes_of_other_route_targets_are_not_imported() {
    let mut p = Pair::new();
    let mut c = cfg(B, A, 1000);
    c.nets[0].route_targets = vec![RouteTarget { asn: 65000, value: 9999 }];
    p.b = Speaker::new(c);
    p.b.nbrs[0].next_connect = Instant(u64::MAX);
    p.b.set_local(p.now, BTreeSet::from([(VNI, mac(1), None)]));
    p.run(0.5);
    assert_eq!(p.a.nbrs[0].adj_in.len(), 2, "held in the Adj-RIB-In");
    assert!(p.a.view().vnis[&VNI].flood.is_empty() && p.a.view().vnis[&VNI].macs.is_empty());
}

/// A scripted neighbour: A connects to it, it answers with whatever the test writes.
fn scripted(max_routes: usize) -> (Speaker, Instant) {
    let mut a = Speaker::new(cfg(A, B, max_routes));
    let now = Instant::from_secs(1);
    a.poll(now);
    assert!(matches!(a.take_io()[..], [Io::Connect { .. }]));
    a.connected(now, B);
    let io = a.take_io();
    let Io::Send(_, open) = &io[0] else { panic!() };
    assert!(matches!(wire::parse(open), Ok(Message::Open(_))));
    (a, now)
}

fn notification_sent(io: &[Io]) -> Option<(u8, u8)> {
    io.iter().find_map(|i| match i {
        Io::Send(_, b) => match wire::parse(b) {
            Ok(Message::Notification { code, subcode, .. }) => Some((code, subcode)),
            _ => None,
        },
        _ => None,
    })
}

#[test]
fn garbage_gets_a_notification_and_a_counted_error() {
    // Not a BGP marker.
    let (mut a, now) = scripted(100);
    a.received(now, B, &[0u8; 40]);
    let io = a.take_io();
    assert_eq!(notification_sent(&io), Some((1, 1)));
    assert!(io.contains(&Io::Close(B)));
    assert_eq!(a.snapshot(now).neighbors[0].counters.errors_sent, 1);
    assert_eq!(a.nbrs[0].state, State::Idle);
    // An OPEN from the wrong AS.
    let (mut a, now) = scripted(100);
    a.received(now, B, &wire::open(65001, 9, B));
    assert_eq!(notification_sent(&a.take_io()), Some((2, 2)));
    // An UPDATE before the session is established.
    let (mut a, now) = scripted(100);
    a.received(now, B, &wire::end_of_rib());
    assert_eq!(notification_sent(&a.take_io()), Some((5, 0)));
    // A malformed UPDATE in an established session: its routes go with it.
    let (mut a, now) = scripted(100);
    a.received(now, B, &wire::open(65000, 9, B));
    a.received(now, B, &wire::keepalive());
    assert_eq!(a.nbrs[0].state, State::Established);
    let mut u = wire::update_reach(
        &Attrs { next_hop: Some(B), route_targets: vec![RouteTarget { asn: 65000, value: VNI }], ..Default::default() },
        &[Route::Imet { rd: Rd::ip(B, 1), tag: 0, origin: B }],
    );
    a.received(now, B, &u);
    assert_eq!(a.view().vnis[&VNI].flood.len(), 1);
    // The type-3 route's length now runs past its attribute.
    let at = u.windows(2).position(|w| w == [0x03, 0x11]).unwrap();
    u[at + 1] = 0x30;
    a.take_io();
    a.received(now, B, &u);
    let io = a.take_io();
    assert_eq!(notification_sent(&io).map(|c| c.0), Some(3));
    assert!(a.view().vnis[&VNI].flood.is_empty());
    // Messages split across reads are reassembled.
    let (mut a, now) = scripted(100);
    let o = wire::open(65000, 9, B);
    a.received(now, B, &o[..7]);
    a.received(now, B, &o[7..]);
    assert_eq!(a.nbrs[0].state, State::OpenConfirm);
}

#[test]
fn a_flapping_neighbour_is_dampened() {
    let (mut a, mut now) = scripted(100);
    // The session comes up, then the neighbour resets it at once; A dials again each time.
    a.received(now, B, &wire::open(65000, 9, B));
    a.received(now, B, &wire::keepalive());
    a.closed(now, B, "reset by peer");
    let mut established = 1;
    let mut last = now;
    for _ in 0..600 {
        now = now + Duration::from_millis(100);
        a.poll(now);
        if a.take_io().iter().any(|i| matches!(i, Io::Connect { .. })) {
            assert!(!a.snapshot(now).neighbors[0].dampened);
            a.connected(now, B);
            a.received(now, B, &wire::open(65000, 9, B));
            a.received(now, B, &wire::keepalive());
            established += 1;
            last = now;
            a.closed(now, B, "reset by peer");
        }
    }
    let s = a.snapshot(now);
    assert!(s.neighbors[0].dampened, "held down after repeated flaps: {:?}", s.neighbors[0]);
    assert_eq!(established, 3, "the third flap suppresses it");
    assert!(s.neighbors[0].retry_in_secs.unwrap() > 30);
    // It decays: the neighbour is tried again, about two minutes after the last flap.
    let mut tried = None;
    for _ in 0..3000 {
        now = now + Duration::from_millis(100);
        a.poll(now);
        if tried.is_none() && a.take_io().iter().any(|i| matches!(i, Io::Connect { .. })) {
            tried = Some(now.since(last).as_secs());
        }
    }
    let t = tried.expect("tried again");
    assert!((100..=140).contains(&t), "{t} s");
}

#[test]
fn many_macs_are_packed_into_few_updates_and_a_clean_stop_says_cease() {
    let mut p = Pair::new();
    p.b = Speaker::new(cfg(B, A, 10_000));
    p.b.nbrs[0].next_connect = Instant(u64::MAX);
    p.run(0.5);
    let before = p.a_sent.len();
    p.a.set_local(p.now, (0..2000u32).map(|i| (VNI, [0x52, 0x54, 0, 0, (i >> 8) as u8, i as u8], None)).collect());
    p.pump();
    let msgs = p.a_sent.len() - before;
    assert!(msgs <= 20, "{msgs} messages for 2000 routes");
    assert!(p.a_sent.iter().all(|m| m.len() <= wire::MAX_LEN));
    assert_eq!(p.b.view().vnis[&VNI].macs.len(), 2000);
    p.a.shutdown();
    p.pump();
    assert!(p.b.view().vnis[&VNI].macs.is_empty());
    assert!(p.b.nbrs[0].last_error.as_deref().unwrap().contains("administrative shutdown"));
}

#[test]
fn a_withdrawal_with_another_label_still_withdraws() {
    let (mut a, now) = scripted(100);
    a.received(now, B, &wire::open(65000, 9, B));
    a.received(now, B, &wire::keepalive());
    let m = |vni| Route::Mac { rd: Rd::ip(B, 1), tag: 0, mac: mac(3), ip: None, vni };
    let attrs = Attrs { next_hop: Some(B), route_targets: vec![RouteTarget { asn: 65000, value: VNI }], ..Default::default() };
    a.received(now, B, &wire::update_reach(&attrs, &[m(VNI)]));
    assert_eq!(a.view().vnis[&VNI].macs.len(), 1);
    // FRR withdraws with label 0.
    a.received(now, B, &wire::update_unreach(&[m(0)]));
    assert!(a.view().vnis[&VNI].macs.is_empty());
}

#[test]
fn ebgp_prepends_its_as_and_refuses_loops() {
    let mut p = Pair::new();
    let mut ca = cfg(A, B, 1000);
    ca.asn = 65001;
    ca.neighbors[0].remote_as = 65002;
    let mut cb = cfg(B, A, 1000);
    cb.asn = 65002;
    cb.neighbors[0].remote_as = 65001;
    // Route targets are per AS by default; both import 65000:5001 here.
    p.a = Speaker::new(ca);
    p.b = Speaker::new(cb);
    p.b.nbrs[0].next_connect = Instant(u64::MAX);
    p.b.set_local(p.now, BTreeSet::from([(VNI, mac(1), None)]));
    p.run(0.5);
    assert_eq!(p.a.nbrs[0].state, State::Established);
    assert_eq!(p.a.view().vnis[&VNI].macs[&MacKey(mac(1))].vtep, B);
    // What A sent carries A's AS and no LOCAL_PREF.
    let sent = p.a_sent.iter().filter_map(|m| match wire::parse(m) {
        Ok(Message::Update(u)) if !u.reach.is_empty() => Some(u),
        _ => None,
    });
    for u in sent {
        assert_eq!((u.attrs.as_path.clone(), u.attrs.local_pref), (vec![65001], None));
    }
    // A route that already went through A's AS is not taken (a loop).
    let looped = Attrs { next_hop: Some(B), as_path: vec![65002, 65001], route_targets: vec![RouteTarget { asn: 65000, value: VNI }], ..Default::default() };
    p.a.received(p.now, B, &wire::update_reach(&looped, &[Route::Mac { rd: Rd::ip(B, 9), tag: 0, mac: mac(2), ip: None, vni: VNI }]));
    assert!(!p.a.view().vnis[&VNI].macs.contains_key(&MacKey(mac(2))));
    assert!(p.a.snapshot(p.now).neighbors[0].counters.routes_ignored >= 1);
}

#[test]
fn a_sequence_number_at_its_maximum_does_not_overflow() {
    let (mut a, now) = scripted(100);
    a.received(now, B, &wire::open(65000, 9, B));
    a.received(now, B, &wire::keepalive());
    let attrs = Attrs { next_hop: Some(B), mac_seq: Some(u32::MAX), route_targets: vec![RouteTarget { asn: 65000, value: VNI }], ..Default::default() };
    a.received(now, B, &wire::update_reach(&attrs, &[Route::Mac { rd: Rd::ip(B, 1), tag: 0, mac: mac(5), ip: None, vni: VNI }]));
    // The MAC shows up here: ours cannot go higher; the speaker stays sane.
    a.set_local(now, BTreeSet::from([(VNI, mac(5), None)]));
    assert_eq!(a.snapshot(now).local_macs[&VNI], vec![(MacKey(mac(5)), u32::MAX)]);
}

#[test]
fn a_vtep_known_only_by_mac_routes_gets_unicast_not_floods() {
    let (mut a, now) = scripted(100);
    a.received(now, B, &wire::open(65000, 9, B));
    a.received(now, B, &wire::keepalive());
    let c = Ipv4Addr::new(192, 0, 2, 9);
    let attrs = |nh| Attrs { next_hop: Some(nh), route_targets: vec![RouteTarget { asn: 65000, value: VNI }], ..Default::default() };
    a.received(now, B, &wire::update_reach(&attrs(B), &[Route::Imet { rd: Rd::ip(B, 1), tag: 0, origin: B }]));
    a.received(now, B, &wire::update_reach(&attrs(c), &[Route::Mac { rd: Rd::ip(c, 1), tag: 0, mac: mac(4), ip: None, vni: VNI }]));
    let v = a.view().vteps();
    assert_eq!(v[&B], VtepVnis { all: BTreeSet::from([VNI]), flood: BTreeSet::from([VNI]) });
    assert_eq!(v[&c], VtepVnis { all: BTreeSet::from([VNI]), flood: BTreeSet::new() });
}
