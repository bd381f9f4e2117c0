use super::*;
use crate::wire::ipv4::proto;

fn spec(alg: Algorithm, weights: &[u32], check: bool) -> LbSpec {
    LbSpec {
        name: "web".into(),
        vip: Ipv4Addr::new(203, 0, 113, 10),
        proto: proto::TCP,
        port: 80,
        algorithm: alg,
        backends: weights
            .iter()
            .enumerate()
            .map(|(i, &w)| BackendSpec { ip: Ipv4Addr::new(10, 1, 1, 11 + i as u8), port: 8080, weight: w, net: NetId(0) })
            .collect(),
        check: check.then(|| CheckSpec { kind: CheckKind::Tcp, interval: Duration::from_secs(1), timeout: Duration::from_millis(500), rise: 2, fall: 3 }),
    }
}

fn counts(b: &mut Balancer, n: usize, client: impl Fn(usize) -> Ipv4Addr) -> Vec<usize> {
    let mut c = vec![0; b.lbs[0].backends.len()];
    for i in 0..n {
        let p = b.pick(0, client(i)).unwrap();
        c[(p.tag & 0xffff) as usize] += 1;
    }
    c
}

#[test]
fn roundrobin_is_exact_and_weighted_and_interleaved() {
    let mut b = Balancer::new(vec![spec(Algorithm::Roundrobin, &[1, 1, 1], false)]);
    assert_eq!(counts(&mut b, 30, |_| Ipv4Addr::LOCALHOST), vec![10, 10, 10]);
    let mut b = Balancer::new(vec![spec(Algorithm::Roundrobin, &[5, 1, 1], false)]);
    let seq: Vec<u32> = (0..7).map(|_| b.pick(0, Ipv4Addr::LOCALHOST).unwrap().tag & 0xffff).collect();
    // nginx's smooth sequence for 5,1,1: a a b a c a a
    assert_eq!(seq, vec![0, 0, 1, 0, 2, 0, 0]);
}

#[test]
fn leastconn_prefers_idle_backends_and_counts_releases() {
    let mut b = Balancer::new(vec![spec(Algorithm::Leastconn, &[1, 1, 1], false)]);
    // Backend 0 holds three long connections.
    for _ in 0..3 {
        b.opened(tag(0, 0));
    }
    for _ in 0..6 {
        let p = b.pick(0, Ipv4Addr::LOCALHOST).unwrap();
        assert_ne!(p.tag, tag(0, 0));
        b.opened(p.tag);
        b.release(p.tag);
    }
    b.release(tag(0, 0));
    b.release(tag(0, 0));
    b.release(tag(0, 0));
    b.release(tag(0, 0)); // never below zero
    assert_eq!(b.rows()[0].backends[0].active, 0);
    assert_eq!(b.rows()[0].backends[1].total, 3);
}

#[test]
fn source_hash_is_sticky_and_moves_few_clients() {
    let mut b = Balancer::new(vec![spec(Algorithm::Source, &[1, 1, 1, 1], true)]);
    let client = |i: usize| Ipv4Addr::from(0x0a00_0000u32 + i as u32 * 7919);
    let before: Vec<u32> = (0..4000).map(|i| b.pick(0, client(i)).unwrap().tag).collect();
    let again: Vec<u32> = (0..4000).map(|i| b.pick(0, client(i)).unwrap().tag).collect();
    assert_eq!(before, again);
    let c = counts(&mut b, 4000, client);
    assert!(c.iter().all(|&n| (800..1200).contains(&n)), "{c:?}");
    // Backend 3 fails: only its clients move.
    for _ in 0..3 {
        b.check_result(tag(0, 3), Err("timeout"), false);
    }
    assert!(!b.is_up(tag(0, 3)));
    let after: Vec<u32> = (0..4000).map(|i| b.pick(0, client(i)).unwrap().tag).collect();
    let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
    let on3 = before.iter().filter(|&&t| t == tag(0, 3)).count();
    assert!(after.iter().all(|&t| t != tag(0, 3)));
    assert!(moved <= on3 + 4000 / 50, "moved {moved}, backend 3 had {on3}");
}

#[test]
fn fall_and_rise_take_consecutive_results() {
    let mut b = Balancer::new(vec![spec(Algorithm::Roundrobin, &[1, 1], true)]);
    let t = tag(0, 1);
    assert!(!b.check_result(t, Err("refused"), false));
    assert!(!b.check_result(t, Ok(()), false)); // streak broken
    assert!(!b.check_result(t, Err("refused"), false));
    assert!(!b.check_result(t, Err("refused"), false));
    assert!(b.check_result(t, Err("refused"), false));
    assert!(!b.is_up(t));
    for _ in 0..4 {
        assert_eq!(b.pick(0, Ipv4Addr::LOCALHOST).unwrap().tag, tag(0, 0));
    }
    assert!(!b.check_result(t, Ok(()), false));
    assert!(b.check_result(t, Ok(()), false));
    assert!(b.is_up(t));
    b.check_result(tag(0, 0), Err("timeout"), false);
    for _ in 0..3 {
        b.check_result(tag(0, 0), Err("timeout"), false);
        b.check_result(t, Err("timeout"), false);
    }
    assert_eq!(b.pick(0, Ipv4Addr::LOCALHOST), None);
    let row = &b.rows()[0];
    assert_eq!(row.backends[1].state, "down");
    assert_eq!(row.backends[1].last_failure, Some("timeout"));
}

#[test]
fn without_checks_results_are_ignored() {
    let mut b = Balancer::new(vec![spec(Algorithm::Roundrobin, &[1], false)]);
    for _ in 0..10 {
        assert!(!b.check_result(tag(0, 0), Err("refused"), true));
    }
    assert!(b.pick(0, Ipv4Addr::LOCALHOST).is_some());
    assert_eq!(b.find(Ipv4Addr::new(203, 0, 113, 10), proto::TCP, 80), Some(0));
    assert_eq!(b.find(Ipv4Addr::new(203, 0, 113, 10), proto::UDP, 80), None);
}

#[test]
fn reload_keeps_backends_by_address_and_retires_removed_ones() {
    let mut b = Balancer::new(vec![spec(Algorithm::Leastconn, &[1, 1], false)]);
    let t0 = b.pick(0, Ipv4Addr::LOCALHOST).unwrap().tag;
    b.opened(t0);
    let t1 = b.pick(0, Ipv4Addr::LOCALHOST).unwrap().tag;
    b.opened(t1);
    assert_ne!(t0, t1);
    // The first backend's weight changes and a third is added: the tags keep naming the same
    // backends, with their connection counts.
    let mut s = spec(Algorithm::Leastconn, &[4, 1, 1], false);
    b.reconfigure(vec![s.clone()]);
    assert!(b.is_member(t0) && b.is_member(t1));
    assert_eq!(b.rows()[0].backends.iter().map(|r| r.active).collect::<Vec<_>>(), vec![1, 1, 0]);
    // The second one goes: its tag is no longer a member and it is never picked again.
    s.backends.remove(1);
    b.reconfigure(vec![s.clone()]);
    assert!(b.is_member(t0) && !b.is_member(t1));
    assert!(!b.holds(0, Ipv4Addr::new(10, 1, 1, 12), 8080));
    for _ in 0..20 {
        let p = b.pick(0, Ipv4Addr::LOCALHOST).unwrap();
        assert_ne!(p.tag, t1);
        b.opened(p.tag);
    }
    // Its connection still releases cleanly.
    b.release(t1);
    assert_eq!(b.rows()[0].backends.len(), 2);
    // The load balancer goes: nothing is found at its address any more.
    b.reconfigure(Vec::new());
    assert_eq!(b.find(s.vip, s.proto, s.port), None);
    assert!(!b.is_member(t0));
    assert!(b.rows().is_empty());
}
