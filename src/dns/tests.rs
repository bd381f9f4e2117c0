use super::*;
use hickory_proto::op::Message;
use hickory_proto::rr::rdata::{A, SOA};
use hickory_proto::rr::Record;

const UP1: &str = "192.0.2.53:53";
const UP2: &str = "192.0.2.54:53";

fn up(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn cfg() -> DnsConfig {
    DnsConfig {
        domains: vec!["acct42.internal".into()],
        nets: vec!["10.1.1.0/24".parse().unwrap(), "10.2.16.0/20".parse().unwrap()],
        upstreams: vec![up(UP1), up(UP2)],
        cache_entries: 100,
        upstream_timeout_ms: 2000,
    }
}

fn server() -> DnsServer {
    let mut s = DnsServer::new(cfg());
    s.set_hosts(vec![
        ("web1.acct42.internal".into(), Ipv4Addr::new(10, 1, 1, 11)),
        ("db1.acct42.internal".into(), Ipv4Addr::new(10, 1, 1, 12)),
        ("app.west.acct42.internal".into(), Ipv4Addr::new(10, 2, 17, 5)),
    ]);
    s
}

fn name(s: &str) -> Name {
    Name::from_ascii(s).unwrap()
}

fn query_msg(id: u16, qname: &str, qtype: RecordType, edns: Option<u16>) -> Vec<u8> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.queries.push(Query::query(name(qname), qtype));
    if let Some(p) = edns {
        let mut e = Edns::new();
        e.set_max_payload(p);
        m.edns = Some(e);
    }
    m.to_vec().unwrap()
}

const C1: Client = Client { id: 1 };
const C2: Client = Client { id: 2 };
const C3: Client = Client { id: 3 };

fn ask(s: &mut DnsServer, now: u64, c: Client, t: Transport, id: u16, q: &str, qt: RecordType) -> Vec<Action> {
    let mut out = Vec::new();
    s.query(Instant(now), c, t, &query_msg(id, q, qt, None), &mut out).unwrap();
    out
}

/// The only action, a reply: (client, decoded message, wire length).
fn reply(out: &[Action]) -> (Client, Message, usize) {
    assert_eq!(out.len(), 1, "{out:?}");
    match &out[0] {
        Action::Reply { client, payload } => (*client, Message::from_vec(payload).unwrap(), payload.len()),
        a => panic!("expected a reply, got {a:?}"),
    }
}

/// The only action, an upstream query: (upstream, raw payload).
fn upstream(out: &[Action]) -> (SocketAddr, Vec<u8>) {
    assert_eq!(out.len(), 1, "{out:?}");
    match &out[0] {
        Action::Upstream { upstream, payload } => (*upstream, payload.clone()),
        a => panic!("expected an upstream query, got {a:?}"),
    }
}

fn answer_to(q: &[u8], rcode: ResponseCode, answers: Vec<Record>, authorities: Vec<Record>) -> Vec<u8> {
    let qm = Message::from_vec(q).unwrap();
    let mut m = Message::response(qm.metadata.id, OpCode::Query);
    m.metadata.response_code = rcode;
    m.metadata.recursion_desired = true;
    m.metadata.recursion_available = true;
    m.queries = qm.queries.clone();
    m.answers = answers;
    m.authorities = authorities;
    m.to_vec().unwrap()
}

fn a_rec(n: &str, ttl: u32, ip: [u8; 4]) -> Record {
    Record::from_rdata(name(n), ttl, RData::A(A(Ipv4Addr::from(ip))))
}

fn soa_rec(zone: &str, ttl: u32, minimum: u32) -> Record {
    let soa = SOA::new(name(&format!("ns.{zone}")), name(&format!("h.{zone}")), 1, 1, 1, 1, minimum);
    Record::from_rdata(name(zone), ttl, RData::SOA(soa))
}

fn a_addrs(m: &Message) -> Vec<Ipv4Addr> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect()
}

#[test]
fn local_a_is_authoritative() {
    let mut s = server();
    let (c, m, _) = reply(&ask(&mut s, 0, C1, Transport::Udp, 7, "web1.acct42.internal.", RecordType::A));
    assert_eq!(c, C1);
    assert_eq!(m.metadata.id, 7);
    assert_eq!(m.metadata.message_type, MessageType::Response);
    assert!(m.metadata.authoritative);
    assert!(m.metadata.recursion_available);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(a_addrs(&m), vec![Ipv4Addr::new(10, 1, 1, 11)]);
    assert_eq!(m.answers[0].ttl, zone::LOCAL_TTL);
    assert_eq!(s.counters().local_answers, 1);
    assert_eq!(s.counters().forwarded, 0);
}

#[test]
fn local_names_are_case_insensitive() {
    let mut s = server();
    let (_, m, _) = reply(&ask(&mut s, 0, C1, Transport::Udp, 7, "WeB1.ACCT42.Internal.", RecordType::A));
    assert_eq!(a_addrs(&m), vec![Ipv4Addr::new(10, 1, 1, 11)]);
    // The client's spelling comes back.
    assert_eq!(m.queries[0].name.to_ascii(), "WeB1.ACCT42.Internal.");
    assert_eq!(m.answers[0].name.to_ascii(), "WeB1.ACCT42.Internal.");
}

#[test]
fn local_ptr_is_authoritative() {
    let mut s = server();
    let (_, m, _) = reply(&ask(&mut s, 0, C1, Transport::Udp, 8, "11.1.1.10.in-addr.arpa.", RecordType::PTR));
    assert!(m.metadata.authoritative);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(m.answers.len(), 1);
    match &m.answers[0].data {
        RData::PTR(p) => assert_eq!(p.0.to_ascii(), "web1.acct42.internal."),
        d => panic!("{d:?}"),
    }
    // A /20 owns its /24 reverse zones: 10.2.17.5 is ours...
    let (_, m, _) = reply(&ask(&mut s, 0, C1, Transport::Udp, 9, "5.17.2.10.in-addr.arpa.", RecordType::PTR));
    assert!(m.metadata.authoritative);
    assert_eq!(m.answers.len(), 1);
    // ...an unknown address in our nets is NXDOMAIN with the reverse zone's SOA...
    let (_, m, _) = reply(&ask(&mut s, 0, C1, Transport::Udp, 10, "99.1.1.10.in-addr.arpa.", RecordType::PTR));
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(m.authorities[0].name.to_ascii(), "1.1.10.in-addr.arpa.");
    // ...and an address outside them (10.2.32.1 is past the /20) is forwarded.
    let out = ask(&mut s, 0, C1, Transport::Udp, 11, "1.32.2.10.in-addr.arpa.", RecordType::PTR);
    upstream(&out);
    assert_eq!(s.counters().local_answers, 3);
}

#[test]
fn unknown_local_name_is_nxdomain_with_soa() {
    let mut s = server();
    let (_, m, _) = reply(&ask(&mut s, 0, C1, Transport::Udp, 9, "nope.acct42.internal.", RecordType::A));
    assert!(m.metadata.authoritative);
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert!(m.answers.is_empty());
    assert_eq!(m.authorities.len(), 1);
    let soa = &m.authorities[0];
    assert_eq!(soa.name.to_ascii(), "acct42.internal.");
    assert_eq!(soa.ttl, 60);
    match &soa.data {
        RData::SOA(x) => assert_eq!(x.minimum, 60),
        d => panic!("{d:?}"),
    }
    assert_eq!(s.counters().nxdomain, 1);
    assert_eq!(s.counters().forwarded, 0);
}

#[test]
fn known_name_other_type_is_nodata() {
    let mut s = server();
    for (n, qt) in [
        ("web1.acct42.internal.", RecordType::AAAA),
        ("web1.acct42.internal.", RecordType::MX),
        // The apex and an empty non-terminal exist too.
        ("acct42.internal.", RecordType::A),
        ("west.acct42.internal.", RecordType::A),
    ] {
        let (_, m, _) = reply(&ask(&mut s, 0, C1, Transport::Udp, 1, n, qt));
        assert!(m.metadata.authoritative, "{n}");
        assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{n}");
        assert!(m.answers.is_empty(), "{n}");
        assert!(matches!(m.authorities[0].data, RData::SOA(_)), "{n}");
    }
    // SOA at the apex is answered.
    let (_, m, _) = reply(&ask(&mut s, 0, C1, Transport::Udp, 1, "acct42.internal.", RecordType::SOA));
    assert!(matches!(m.answers[0].data, RData::SOA(_)));
}

#[test]
fn set_hosts_replaces_the_table() {
    let mut s = server();
    s.set_hosts(vec![("web2.acct42.internal".into(), Ipv4Addr::new(10, 1, 1, 20))]);
    let (_, m, _) = reply(&ask(&mut s, 0, C1, Transport::Udp, 1, "web1.acct42.internal.", RecordType::A));
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    let (_, m, _) = reply(&ask(&mut s, 0, C1, Transport::Udp, 1, "web2.acct42.internal.", RecordType::A));
    assert_eq!(a_addrs(&m), vec![Ipv4Addr::new(10, 1, 1, 20)]);
}

/// First query forwards once; an identical one while pending adds a waiter; the answer goes
/// to both with their own ids; later the cache answers with decremented TTLs; after expiry the
/// name is forwarded again.
#[test]
fn forwarding_shares_pending_then_caches() {
    let mut s = server();
    let out = ask(&mut s, 0, C1, Transport::Udp, 100, "example.com.", RecordType::A);
    let (to, q) = upstream(&out);
    assert_eq!(to, up(UP1));
    let qm = Message::from_vec(&q).unwrap();
    assert!(qm.metadata.recursion_desired);
    assert_eq!(qm.queries[0].name.to_ascii(), "example.com.");
    assert!(qm.edns.is_some());

    let out = ask(&mut s, 100, C2, Transport::Udp, 200, "EXAMPLE.com.", RecordType::A);
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(s.counters().forwarded, 1);

    let ans = answer_to(&q, ResponseCode::NoError, vec![a_rec("example.com.", 300, [93, 184, 216, 34])], vec![]);
    let mut out = Vec::new();
    s.upstream_answer(Instant(500), up(UP1), &ans, &mut out);
    assert_eq!(out.len(), 2);
    let r1 = reply(&out[..1]);
    let r2 = reply(&out[1..]);
    assert_eq!((r1.0, r1.1.metadata.id), (C1, 100));
    assert_eq!((r2.0, r2.1.metadata.id), (C2, 200));
    assert_eq!(r2.1.queries[0].name.to_ascii(), "EXAMPLE.com.");
    for m in [&r1.1, &r2.1] {
        assert!(!m.metadata.authoritative);
        assert_eq!(a_addrs(m), vec![Ipv4Addr::new(93, 184, 216, 34)]);
        assert_eq!(m.answers[0].ttl, 300);
    }
    assert_eq!(s.counters().upstream_answers, 1);

    // 10 s later: from the cache, TTL decremented.
    let out = ask(&mut s, 10_500, C3, Transport::Udp, 300, "example.com.", RecordType::A);
    let (c, m, _) = reply(&out);
    assert_eq!((c, m.metadata.id), (C3, 300));
    assert_eq!(m.answers[0].ttl, 290);
    assert_eq!(s.counters().cache_hits, 1);
    assert_eq!(s.counters().forwarded, 1);
    assert!(s.poll_at() <= Instant(300_500));

    // Expired: forwarded again.
    let mut out = Vec::new();
    s.poll(Instant(300_500), &mut out);
    assert!(out.is_empty());
    assert_eq!(s.counters().cache_entries, 0);
    let out = ask(&mut s, 300_500, C3, Transport::Udp, 301, "example.com.", RecordType::A);
    upstream(&out);
    assert_eq!(s.counters().forwarded, 2);
}

#[test]
fn cache_entry_is_not_served_at_expiry_even_without_poll() {
    let mut s = server();
    let (_, q) = upstream(&ask(&mut s, 0, C1, Transport::Udp, 1, "example.com.", RecordType::A));
    let ans = answer_to(&q, ResponseCode::NoError, vec![a_rec("example.com.", 5, [1, 2, 3, 4])], vec![]);
    s.upstream_answer(Instant(0), up(UP1), &ans, &mut Vec::new());
    reply(&ask(&mut s, 4_999, C1, Transport::Udp, 2, "example.com.", RecordType::A));
    upstream(&ask(&mut s, 5_000, C1, Transport::Udp, 3, "example.com.", RecordType::A));
}

#[test]
fn negative_answers_are_cached_from_soa_minimum() {
    let mut s = server();
    let (_, q) = upstream(&ask(&mut s, 0, C1, Transport::Udp, 1, "gone.example.com.", RecordType::A));
    let ans = answer_to(&q, ResponseCode::NXDomain, vec![], vec![soa_rec("example.com.", 3600, 30)]);
    let mut out = Vec::new();
    s.upstream_answer(Instant(0), up(UP1), &ans, &mut out);
    let (_, m, _) = reply(&out);
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);

    let (_, m, _) = reply(&ask(&mut s, 10_000, C2, Transport::Udp, 2, "gone.example.com.", RecordType::A));
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(m.authorities[0].ttl, 20, "min(SOA TTL, MINIMUM) minus age");
    assert_eq!(s.counters().cache_hits, 1);
    upstream(&ask(&mut s, 30_000, C2, Transport::Udp, 3, "gone.example.com.", RecordType::A));

    // NODATA is cached the same way; the negative TTL is capped at an hour.
    let (_, q) = upstream(&ask(&mut s, 0, C1, Transport::Udp, 4, "example.com.", RecordType::AAAA));
    let ans = answer_to(&q, ResponseCode::NoError, vec![], vec![soa_rec("example.com.", 86400, 86400)]);
    s.upstream_answer(Instant(0), up(UP1), &ans, &mut Vec::new());
    reply(&ask(&mut s, 3_599_000, C1, Transport::Udp, 5, "example.com.", RecordType::AAAA));
    upstream(&ask(&mut s, 3_600_000, C1, Transport::Udp, 6, "example.com.", RecordType::AAAA));

    // Without an SOA a negative answer is not cached.
    let (_, q) = upstream(&ask(&mut s, 0, C1, Transport::Udp, 7, "nosoa.example.com.", RecordType::A));
    let ans = answer_to(&q, ResponseCode::NXDomain, vec![], vec![]);
    s.upstream_answer(Instant(0), up(UP1), &ans, &mut Vec::new());
    upstream(&ask(&mut s, 1, C1, Transport::Udp, 8, "nosoa.example.com.", RecordType::A));
}

#[test]
fn upstream_timeout_tries_next_then_servfail() {
    let mut s = server();
    let (to, _) = upstream(&ask(&mut s, 0, C1, Transport::Udp, 42, "slow.example.", RecordType::A));
    assert_eq!(to, up(UP1));
    assert_eq!(s.poll_at(), Instant(2000));
    let mut out = Vec::new();
    s.poll(Instant(1999), &mut out);
    assert!(out.is_empty());
    s.poll(Instant(2000), &mut out);
    let (to, _) = upstream(&out);
    assert_eq!(to, up(UP2));
    assert_eq!(s.poll_at(), Instant(4000));
    out.clear();
    s.poll(Instant(4000), &mut out);
    let (c, m, _) = reply(&out);
    assert_eq!((c, m.metadata.id), (C1, 42));
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    let c = s.counters();
    assert_eq!((c.upstream_timeouts, c.servfail, c.pending, c.forwarded), (2, 1, 0, 2));
    assert_eq!(s.poll_at(), Instant(u64::MAX));
    // SERVFAIL is not cached.
    upstream(&ask(&mut s, 4001, C1, Transport::Udp, 43, "slow.example.", RecordType::A));
}

#[test]
fn late_answer_from_first_upstream_is_accepted() {
    let mut s = server();
    let (_, q1) = upstream(&ask(&mut s, 0, C1, Transport::Udp, 42, "slow.example.", RecordType::A));
    let mut out = Vec::new();
    s.poll(Instant(2000), &mut out);
    upstream(&out);
    let ans = answer_to(&q1, ResponseCode::NoError, vec![a_rec("slow.example.", 60, [1, 1, 1, 1])], vec![]);
    out.clear();
    s.upstream_answer(Instant(2100), up(UP1), &ans, &mut out);
    let (_, m, _) = reply(&out);
    assert_eq!(a_addrs(&m), vec![Ipv4Addr::new(1, 1, 1, 1)]);
    assert_eq!(s.poll_at(), Instant(62_100), "only the cache entry's expiry is left");
}

#[test]
fn upstream_servfail_moves_to_next_upstream() {
    let mut s = server();
    let (_, q) = upstream(&ask(&mut s, 0, C1, Transport::Udp, 1, "flaky.example.", RecordType::A));
    let mut out = Vec::new();
    s.upstream_answer(Instant(10), up(UP1), &answer_to(&q, ResponseCode::ServFail, vec![], vec![]), &mut out);
    let (to, q2) = upstream(&out);
    assert_eq!(to, up(UP2));
    out.clear();
    s.upstream_answer(Instant(20), up(UP2), &answer_to(&q2, ResponseCode::ServFail, vec![], vec![]), &mut out);
    let (_, m, _) = reply(&out);
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    assert_eq!(s.counters().cache_entries, 0);
    // UP2 never answered well, so UP1 is still preferred.
    let (to, _) = upstream(&ask(&mut s, 30, C1, Transport::Udp, 2, "flaky.example.", RecordType::A));
    assert_eq!(to, up(UP1));
}

#[test]
fn preferred_upstream_follows_the_last_good_answer() {
    let mut s = server();
    upstream(&ask(&mut s, 0, C1, Transport::Udp, 1, "a.example.", RecordType::A));
    let mut out = Vec::new();
    s.poll(Instant(2000), &mut out);
    let (to, q) = upstream(&out);
    assert_eq!(to, up(UP2));
    let ans = answer_to(&q, ResponseCode::NoError, vec![a_rec("a.example.", 60, [1, 1, 1, 1])], vec![]);
    s.upstream_answer(Instant(2001), up(UP2), &ans, &mut Vec::new());
    let (to, _) = upstream(&ask(&mut s, 3000, C1, Transport::Udp, 2, "b.example.", RecordType::A));
    assert_eq!(to, up(UP2));
}

#[test]
fn wrong_id_source_or_question_is_ignored() {
    let mut s = server();
    let (_, q) = upstream(&ask(&mut s, 0, C1, Transport::Udp, 5, "example.org.", RecordType::A));
    let good = answer_to(&q, ResponseCode::NoError, vec![a_rec("example.org.", 60, [6, 6, 6, 6])], vec![]);
    let mut out = Vec::new();

    let mut wrong_id = good.clone();
    wrong_id[0] ^= 0x55;
    s.upstream_answer(Instant(1), up(UP1), &wrong_id, &mut out);
    // From an upstream it was not sent to.
    s.upstream_answer(Instant(1), up(UP2), &good, &mut out);
    s.upstream_answer(Instant(1), up("203.0.113.9:53"), &good, &mut out);
    // Right id, other question.
    let mut qm = Message::from_vec(&q).unwrap();
    qm.queries[0].name = name("evil.example.");
    let other = answer_to(&qm.to_vec().unwrap(), ResponseCode::NoError, vec![a_rec("evil.example.", 60, [6, 6, 6, 6])], vec![]);
    s.upstream_answer(Instant(1), up(UP1), &other, &mut out);
    // Other type.
    qm.queries[0] = Query::query(name("example.org."), RecordType::AAAA);
    let other = answer_to(&qm.to_vec().unwrap(), ResponseCode::NoError, vec![], vec![]);
    s.upstream_answer(Instant(1), up(UP1), &other, &mut out);
    // A query, not an answer.
    s.upstream_answer(Instant(1), up(UP1), &q, &mut out);
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(s.counters().upstream_ignored, 6);
    assert_eq!(s.counters().upstream_answers, 0);

    s.upstream_answer(Instant(1), up(UP1), &good, &mut out);
    let (_, m, _) = reply(&out);
    assert_eq!(a_addrs(&m), vec![Ipv4Addr::new(6, 6, 6, 6)]);
    // A replay of the same answer finds nothing pending.
    out.clear();
    s.upstream_answer(Instant(2), up(UP1), &good, &mut out);
    assert!(out.is_empty());
    assert_eq!(s.counters().upstream_ignored, 7);
}

fn many_hosts(s: &mut DnsServer, n: u32) {
    s.set_hosts((0..n).map(|i| ("big.acct42.internal".to_string(), Ipv4Addr::from(0x0a01_0100 + i))).collect());
}

#[test]
fn udp_reply_too_big_is_truncated_with_tc() {
    let mut s = server();
    many_hosts(&mut s, 40);
    let (_, m, len) = reply(&ask(&mut s, 0, C1, Transport::Udp, 1, "big.acct42.internal.", RecordType::A));
    assert!(len <= 512);
    assert!(m.metadata.truncation);
    assert!(m.answers.is_empty());
    assert_eq!(m.queries.len(), 1);
    assert_eq!(s.counters().truncated, 1);

    // With EDNS0 (4096, capped at 1232) it fits, and the reply has an OPT.
    let mut out = Vec::new();
    s.query(Instant(0), C1, Transport::Udp, &query_msg(2, "big.acct42.internal.", RecordType::A, Some(4096)), &mut out).unwrap();
    let (_, m, len) = reply(&out);
    assert!(len > 512 && len <= 1232);
    assert!(!m.metadata.truncation);
    assert_eq!(m.answers.len(), 40);
    assert_eq!(m.edns.as_ref().map(|e| e.max_payload()), Some(1232));
}

#[test]
fn edns_payload_is_capped_at_1232() {
    let mut s = server();
    many_hosts(&mut s, 100);
    let mut out = Vec::new();
    s.query(Instant(0), C1, Transport::Udp, &query_msg(2, "big.acct42.internal.", RecordType::A, Some(4096)), &mut out).unwrap();
    let (_, m, len) = reply(&out);
    assert!(len <= 1232);
    assert!(m.metadata.truncation);
    assert!(m.edns.is_some());
}

#[test]
fn tcp_reply_is_not_truncated() {
    let mut s = server();
    many_hosts(&mut s, 200);
    let (_, m, len) = reply(&ask(&mut s, 0, C1, Transport::Tcp, 1, "big.acct42.internal.", RecordType::A));
    assert!(len > 1232);
    assert!(!m.metadata.truncation);
    assert_eq!(m.answers.len(), 200);
}

#[test]
fn big_upstream_answer_truncated_for_udp_then_served_whole_over_tcp_from_cache() {
    let mut s = server();
    let (_, q) = upstream(&ask(&mut s, 0, C1, Transport::Udp, 1, "big.example.", RecordType::A));
    let recs = (0..60).map(|i| a_rec("big.example.", 300, [192, 0, 2, i])).collect();
    let mut out = Vec::new();
    s.upstream_answer(Instant(0), up(UP1), &answer_to(&q, ResponseCode::NoError, recs, vec![]), &mut out);
    let (_, m, len) = reply(&out);
    assert!(len <= 512);
    assert!(m.metadata.truncation);
    let (_, m, _) = reply(&ask(&mut s, 1000, C1, Transport::Tcp, 2, "big.example.", RecordType::A));
    assert!(!m.metadata.truncation);
    assert_eq!(m.answers.len(), 60);
    assert_eq!(s.counters().cache_hits, 1);
}

#[test]
fn truncated_upstream_answer_is_relayed_not_cached() {
    let mut s = server();
    let (_, q) = upstream(&ask(&mut s, 0, C1, Transport::Udp, 1, "tc.example.", RecordType::TXT));
    let qm = Message::from_vec(&q).unwrap();
    let mut m = Message::response(qm.metadata.id, OpCode::Query);
    m.metadata.truncation = true;
    m.queries = qm.queries.clone();
    let mut out = Vec::new();
    s.upstream_answer(Instant(0), up(UP1), &m.to_vec().unwrap(), &mut out);
    let (_, m, _) = reply(&out);
    assert!(m.metadata.truncation);
    assert_eq!(m.metadata.id, 1);
    // The TCP retry is forwarded again (over UDP).
    upstream(&ask(&mut s, 10, C1, Transport::Tcp, 2, "tc.example.", RecordType::TXT));
}

#[test]
fn garbage_with_valid_header_is_formerr() {
    let mut s = server();
    let mut p = query_msg(0x1234, "example.com.", RecordType::A, None);
    p.truncate(14); // the question is cut short
    let mut out = Vec::new();
    s.query(Instant(0), C1, Transport::Udp, &p, &mut out).unwrap();
    let (_, m, _) = reply(&out);
    assert_eq!(m.metadata.id, 0x1234);
    assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
    assert!(m.metadata.recursion_desired);

    // QDCOUNT other than one.
    let mut p = query_msg(0x4321, "example.com.", RecordType::A, None);
    p[5] = 2;
    out.clear();
    s.query(Instant(0), C1, Transport::Udp, &p, &mut out).unwrap();
    assert_eq!(reply(&out).1.metadata.response_code, ResponseCode::FormErr);
    let mut h = [0u8; 12];
    h[0] = 9;
    out.clear();
    s.query(Instant(0), C1, Transport::Udp, &h, &mut out).unwrap();
    assert_eq!(reply(&out).1.metadata.response_code, ResponseCode::FormErr);
    assert_eq!(s.counters().formerr, 3);

    // No header: nothing to answer.
    out.clear();
    assert_eq!(s.query(Instant(0), C1, Transport::Udp, &[1, 2, 3], &mut out), Err(Ignored::Malformed));
    assert!(out.is_empty());
}

#[test]
fn responses_are_never_answered() {
    let mut s = server();
    let mut p = query_msg(1, "example.com.", RecordType::A, None);
    p[2] |= 0x80;
    let mut out = Vec::new();
    assert_eq!(s.query(Instant(0), C1, Transport::Udp, &p, &mut out), Err(Ignored::NotQuery));
    assert!(out.is_empty());
}

#[test]
fn update_opcode_is_notimp() {
    let mut s = server();
    let mut m = Message::new(77, MessageType::Query, OpCode::Update);
    m.queries.push(Query::query(name("acct42.internal."), RecordType::SOA));
    let mut out = Vec::new();
    s.query(Instant(0), C1, Transport::Udp, &m.to_vec().unwrap(), &mut out).unwrap();
    let (_, r, _) = reply(&out);
    assert_eq!(r.metadata.id, 77);
    assert_eq!(r.metadata.op_code, OpCode::Update);
    assert_eq!(r.metadata.response_code, ResponseCode::NotImp);
    assert_eq!(s.counters().notimp, 1);
}

#[test]
fn edns_version_above_zero_is_badvers() {
    let mut s = server();
    let mut m = Message::new(5, MessageType::Query, OpCode::Query);
    m.queries.push(Query::query(name("example.com."), RecordType::A));
    let mut e = Edns::new();
    e.set_version(1);
    m.edns = Some(e);
    let mut out = Vec::new();
    s.query(Instant(0), C1, Transport::Udp, &m.to_vec().unwrap(), &mut out).unwrap();
    let (_, r, _) = reply(&out);
    // 16 is BADVERS in an OPT-carrying reply (hickory decodes the shared code as BADSIG).
    assert_eq!(u16::from(r.metadata.response_code), 16);
    assert!(r.edns.is_some());
}

#[test]
fn zone_transfers_are_refused() {
    let mut s = server();
    let (_, m, _) = reply(&ask(&mut s, 0, C1, Transport::Tcp, 1, "acct42.internal.", RecordType::AXFR));
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    let (_, m, _) = reply(&ask(&mut s, 0, C1, Transport::Tcp, 1, "example.com.", RecordType::AXFR));
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
}

#[test]
fn client_without_edns_gets_no_opt() {
    let mut s = server();
    let (_, m, _) = reply(&ask(&mut s, 0, C1, Transport::Udp, 1, "web1.acct42.internal.", RecordType::A));
    assert!(m.edns.is_none());
}

#[test]
fn retransmission_is_absorbed_and_waiters_are_capped() {
    let mut s = server();
    upstream(&ask(&mut s, 0, C1, Transport::Udp, 1, "popular.example.", RecordType::A));
    let mut out = Vec::new();
    let r = s.query(Instant(1), C1, Transport::Udp, &query_msg(1, "popular.example.", RecordType::A, None), &mut out);
    assert_eq!(r, Err(Ignored::Refused));
    assert!(out.is_empty());
    assert_eq!(s.counters().duplicates, 1);
    for i in 1..MAX_WAITERS as u16 {
        assert!(ask(&mut s, 1, Client { id: 1000 + u64::from(i) }, Transport::Udp, i, "popular.example.", RecordType::A)
            .is_empty());
    }
    let r = s.query(Instant(1), C2, Transport::Udp, &query_msg(9, "popular.example.", RecordType::A, None), &mut out);
    assert_eq!(r, Err(Ignored::Refused));
    assert!(out.is_empty());
    assert_eq!(s.counters().waiters_full, 1);
    s.poll(Instant(10_000), &mut out);
    s.poll(Instant(20_000), &mut out);
    assert_eq!(out.iter().filter(|a| matches!(a, Action::Reply { .. })).count(), MAX_WAITERS);
}

#[test]
fn pending_queries_are_capped() {
    let mut s = server();
    for i in 0..MAX_PENDING {
        upstream(&ask(&mut s, 0, C1, Transport::Udp, i as u16, &format!("n{i}.example."), RecordType::A));
    }
    let (_, m, _) = reply(&ask(&mut s, 0, C1, Transport::Udp, 9, "one-too-many.example.", RecordType::A));
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    assert_eq!(s.counters().pending_full, 1);
    assert_eq!(s.counters().pending, MAX_PENDING as u64);
}

#[test]
fn no_upstreams_is_servfail() {
    let mut s = DnsServer::new(DnsConfig { upstreams: vec![], ..cfg() });
    let (_, m, _) = reply(&ask(&mut s, 0, C1, Transport::Udp, 1, "example.com.", RecordType::A));
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    assert_eq!(s.counters().pending, 0);
}

#[test]
fn cache_is_capped_evicting_soonest_expiry() {
    let mut s = DnsServer::new(DnsConfig { cache_entries: 2, ..cfg() });
    for (i, ttl) in [(0u8, 100u32), (1, 50), (2, 200)] {
        let n = format!("c{i}.example.");
        let (_, q) = upstream(&ask(&mut s, 0, C1, Transport::Udp, 1, &n, RecordType::A));
        let ans = answer_to(&q, ResponseCode::NoError, vec![a_rec(&n, ttl, [1, 1, 1, i])], vec![]);
        s.upstream_answer(Instant(0), up(UP1), &ans, &mut Vec::new());
    }
    assert_eq!(s.counters().cache_entries, 2);
    assert_eq!(s.counters().cache_evictions, 1);
    reply(&ask(&mut s, 1, C1, Transport::Udp, 1, "c0.example.", RecordType::A));
    reply(&ask(&mut s, 1, C1, Transport::Udp, 1, "c2.example.", RecordType::A));
    upstream(&ask(&mut s, 1, C1, Transport::Udp, 1, "c1.example.", RecordType::A));
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(r: &mut Rng, mut p: Vec<u8>) -> Vec<u8> {
    for _ in 0..1 + r.below(4) {
        match r.below(5) {
            0 if !p.is_empty() => {
                let i = r.below(p.len());
                p[i] ^= 1 << r.below(8);
            }
            1 if !p.is_empty() => {
                let i = r.below(p.len());
                p[i] = r.next() as u8;
            }
            2 => p.truncate(r.below(p.len() + 1)),
            3 => {
                let n = r.below(40);
                p.extend((0..n).map(|_| r.next() as u8));
            }
            _ if p.len() > 13 => {
                // A compression pointer somewhere.
                let i = 12 + r.below(p.len() - 12);
                p[i] = 0xc0 | (r.next() as u8 & 0x3f);
            }
            _ => {}
        }
    }
    p
}

/// Thousands of random and mutated messages through every entry point: nothing panics, every
/// reply decodes-or-not without harm, the caps hold.
#[test]
fn random_and_mutated_messages_never_panic() {
    let mut s = server();
    let mut hosts: Vec<(String, Ipv4Addr)> =
        (0..50).map(|i| ("big.acct42.internal".to_string(), Ipv4Addr::new(10, 1, 1, 100 + i))).collect();
    hosts.push(("web1.acct42.internal".into(), Ipv4Addr::new(10, 1, 1, 11)));
    s.set_hosts(hosts);
    let mut r = Rng(0x1234_5678_9abc_def1);
    let names = ["web1.acct42.internal.", "x.acct42.internal.", "11.1.1.10.in-addr.arpa.", "example.com.", "a.b.c.example.net."];
    let types = [RecordType::A, RecordType::AAAA, RecordType::PTR, RecordType::SOA, RecordType::ANY, RecordType::TXT];
    let mut now = 0u64;
    let mut upstream_queries: Vec<Vec<u8>> = Vec::new();
    for i in 0..6000u32 {
        now += r.below(300) as u64;
        let base = query_msg(r.next() as u16, names[r.below(names.len())], types[r.below(types.len())], (r.below(2) == 0).then_some(r.next() as u16));
        let p = match r.below(4) {
            0 => (0..r.below(600)).map(|_| r.next() as u8).collect(),
            1 => base,
            _ => mutate(&mut r, base),
        };
        let t = if r.below(4) == 0 { Transport::Tcp } else { Transport::Udp };
        let mut out = Vec::new();
        let _ = s.query(Instant(now), Client { id: u64::from(i % 7) }, t, &p, &mut out);
        // Upstream answers: to real pending queries, intact or mutated, and random bytes.
        if !upstream_queries.is_empty() && r.below(2) == 0 {
            let q = upstream_queries.swap_remove(r.below(upstream_queries.len()));
            let n = Message::from_vec(&q).unwrap().queries[0].name.clone();
            let recs = (0..r.below(80))
                .map(|j| Record::from_rdata(n.clone(), r.below(1000) as u32, RData::A(A(Ipv4Addr::new(10, 9, 8, j as u8)))))
                .collect();
            let rc = [ResponseCode::NoError, ResponseCode::NXDomain, ResponseCode::ServFail][r.below(3)];
            let auth = if r.below(2) == 0 { vec![soa_rec("example.com.", r.below(5000) as u32, r.below(5000) as u32)] } else { vec![] };
            let ans = answer_to(&q, rc, recs, auth);
            let ans = if r.below(3) == 0 { mutate(&mut r, ans) } else { ans };
            let from = if r.below(8) == 0 { up(UP2) } else { up(UP1) };
            s.upstream_answer(Instant(now), from, &ans, &mut out);
        }
        if r.below(10) == 0 {
            let junk: Vec<u8> = (0..r.below(200)).map(|_| r.next() as u8).collect();
            s.upstream_answer(Instant(now), up(UP1), &junk, &mut out);
        }
        if r.below(5) == 0 {
            s.poll(Instant(now), &mut out);
        }
        for a in out {
            match a {
                Action::Upstream { payload, .. } => upstream_queries.push(payload),
                Action::Reply { payload, .. } => {
                    assert!(payload.len() >= 12);
                    assert!(payload[2] & 0x80 != 0, "replies are responses");
                }
            }
        }
        let c = s.counters();
        assert!(c.pending <= MAX_PENDING as u64);
        assert!(c.cache_entries <= 100);
        assert!(s.poll_at() >= Instant(0));
    }
    let c = s.counters();
    assert!(c.formerr > 0 && c.local_answers > 0 && c.forwarded > 0 && c.upstream_answers > 0, "{c:?}");
    // Everything drains.
    let mut out = Vec::new();
    for k in 0..=MAX_ATTEMPTS as u64 {
        s.poll(Instant(now + 100_000_000 + k * 10_000), &mut out);
    }
    assert_eq!(s.counters().pending, 0);
    assert_eq!(s.counters().cache_entries, 0);
    assert_eq!(s.poll_at(), Instant(u64::MAX));
}
