//! DHCP server tests: client messages are built with dhcproto (an independent encoder), the
//! server's replies decoded with it, and time is driven by hand (unix seconds for leases,
//! milliseconds for the rate limiter).

use super::*;
use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable};

const T0: u64 = 1_700_000_000;
const U: Ipv4Addr = Ipv4Addr::UNSPECIFIED;

fn a(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn mac(n: u8) -> MacAddr {
    MacAddr([0x52, 0x54, 0, 0, 0, n])
}

fn web() -> DhcpNet {
    DhcpNet {
        name: "web".into(),
        cidr: "10.1.1.0/24".parse().unwrap(),
        gateway: a("10.1.1.1"),
        range: Some((a("10.1.1.100"), a("10.1.1.199"))),
        lease_secs: 3600,
        mtu: 1500,
        domain: Some("acct42.internal".into()),
        routes: Vec::new(),
    }
}

/// A client message of type `t` from `m`.
fn msg(m: MacAddr, t: MessageType) -> Message {
    let mut q = Message::new_with_id(0x1234_5678, U, U, U, U, &m.0);
    q.opts_mut().insert(DhcpOption::MessageType(t));
    q
}

fn discover(m: MacAddr) -> Message {
    msg(m, MessageType::Discover)
}

/// REQUEST in SELECTING: server id and requested address.
fn select(m: MacAddr, ip: Ipv4Addr) -> Message {
    let mut q = msg(m, MessageType::Request);
    q.opts_mut().insert(DhcpOption::ServerIdentifier(a("10.1.1.1")));
    q.opts_mut().insert(DhcpOption::RequestedIpAddress(ip));
    q
}

/// REQUEST in INIT-REBOOT: requested address only.
fn init_reboot(m: MacAddr, ip: Ipv4Addr) -> Message {
    let mut q = msg(m, MessageType::Request);
    q.opts_mut().insert(DhcpOption::RequestedIpAddress(ip));
    q
}

/// REQUEST in RENEWING/REBINDING: ciaddr.
fn renew(m: MacAddr, ip: Ipv4Addr) -> Message {
    let mut q = msg(m, MessageType::Request);
    q.set_ciaddr(ip);
    q
}

fn with(mut q: Message, o: DhcpOption) -> Message {
    q.opts_mut().insert(o);
    q
}

/// A server under test with its clocks and a default port.
struct H {
    s: DhcpServer,
    now: u64,
    ms: u64,
    port: u16,
}

impl H {
    fn new(s: DhcpServer) -> H {
        H { s, now: T0, ms: 1_000_000, port: 1 }
    }
    fn web() -> H {
        H::new(DhcpServer::new(vec![Some(web())], Vec::new()))
    }
    /// Sends `q` from `m` (one second later on the rate limiter's clock, so it never limits).
    fn send(&mut self, m: MacAddr, q: &Message) -> (Result<(), Ignored>, Vec<Action>) {
        self.ms += 1000;
        let mut out = Vec::new();
        let r = self.s.handle(self.now, self.ms, 0, self.port, m, &q.to_vec().unwrap(), &mut out);
        (r, out)
    }
    /// Sends `q`, makes every record durable, and returns the replies and the records.
    fn exchange(&mut self, m: MacAddr, q: &Message) -> (Vec<Sent>, Vec<LeaseRecord>) {
        let (r, out) = self.send(m, q);
        r.unwrap();
        self.settle(out)
    }
    fn settle(&mut self, out: Vec<Action>) -> (Vec<Sent>, Vec<LeaseRecord>) {
        let (sends, recs, top) = split(out);
        let mut sends = sends;
        if let Some(seq) = top {
            let mut more = Vec::new();
            self.s.committed(1, seq, &mut more);
            sends.extend(split(more).0);
        }
        (sends, recs)
    }
    /// DISCOVER, REQUEST, commit: the address acknowledged.
    fn dora(&mut self, m: MacAddr) -> Ipv4Addr {
        let (offer, _) = self.exchange(m, &discover(m));
        assert_eq!(offer.len(), 1);
        assert_eq!(offer[0].mtype(), MessageType::Offer);
        let ip = offer[0].msg.yiaddr();
        let (ack, recs) = self.exchange(m, &select(m, ip));
        assert_eq!(ack.len(), 1);
        assert_eq!(ack[0].mtype(), MessageType::Ack);
        assert_eq!(ack[0].msg.yiaddr(), ip);
        assert!(matches!(recs.last(), Some(LeaseRecord::Bind(l)) if l.ip == ip && l.mac == m));
        ip
    }
}

/// A decoded Send.
struct Sent {
    dst_ip: Ipv4Addr,
    dst_mac: MacAddr,
    raw: Vec<u8>,
    msg: Message,
}

impl Sent {
    fn mtype(&self) -> MessageType {
        self.msg.opts().msg_type().unwrap()
    }
    fn opt(&self, c: OptionCode) -> Option<&DhcpOption> {
        self.msg.opts().get(c)
    }
}

/// Sends decoded, records, and the highest Persist seq.
fn split(out: Vec<Action>) -> (Vec<Sent>, Vec<LeaseRecord>, Option<u64>) {
    let (mut sends, mut recs, mut top) = (Vec::new(), Vec::new(), None);
    for act in out {
        match act {
            Action::Send { net, dst_ip, dst_mac, payload } => {
                assert_eq!(net, 0);
                let msg = Message::decode(&mut Decoder::new(&payload)).unwrap();
                assert_eq!(msg.opcode(), Opcode::BootReply);
                sends.push(Sent { dst_ip, dst_mac, raw: payload, msg });
            }
            Action::Persist { seq, record } => {
                assert!(top.is_none_or(|t| t < seq), "seqs increase");
                top = Some(seq);
                recs.push(record);
            }
        }
    }
    (sends, recs, top)
}

/// The raw value of option `code` in an encoded message (instances concatenated).
fn raw_opt(p: &[u8], code: u8) -> Option<Vec<u8>> {
    let mut i = 240;
    let mut v: Option<Vec<u8>> = None;
    while i < p.len() {
        match p[i] {
            0 => i += 1,
            255 => break,
            c => {
                let len = p[i + 1] as usize;
                if c == code {
                    v.get_or_insert_with(Vec::new).extend_from_slice(&p[i + 2..i + 2 + len]);
                }
                i += 2 + len;
            }
        }
    }
    v
}

#[test]
fn dora_pool_client_gets_first_address_and_ack_waits_for_commit() {
    let mut h = H::web();
    let m = mac(1);
    let (r, out) = h.send(m, &discover(m));
    r.unwrap();
    let (offer, recs, _) = split(out);
    assert!(recs.is_empty(), "an OFFER is not persisted");
    assert_eq!(offer.len(), 1);
    let o = &offer[0];
    assert_eq!(o.mtype(), MessageType::Offer);
    assert_eq!(o.msg.yiaddr(), a("10.1.1.100"));
    assert_eq!(o.msg.xid(), 0x1234_5678);
    assert_eq!(o.msg.chaddr(), &m.0);
    // No broadcast flag, no ciaddr: unicast to the offered address at the client's MAC.
    assert_eq!((o.dst_ip, o.dst_mac), (a("10.1.1.100"), m));
    assert_eq!(o.opt(OptionCode::ServerIdentifier), Some(&DhcpOption::ServerIdentifier(a("10.1.1.1"))));
    assert_eq!(o.opt(OptionCode::SubnetMask), Some(&DhcpOption::SubnetMask(a("255.255.255.0"))));
    assert_eq!(o.opt(OptionCode::Router), Some(&DhcpOption::Router(vec![a("10.1.1.1")])));
    assert_eq!(o.opt(OptionCode::DomainNameServer), Some(&DhcpOption::DomainNameServer(vec![a("10.1.1.1")])));
    assert_eq!(o.opt(OptionCode::BroadcastAddr), Some(&DhcpOption::BroadcastAddr(a("10.1.1.255"))));
    assert_eq!(o.opt(OptionCode::InterfaceMtu), Some(&DhcpOption::InterfaceMtu(1500)));
    assert_eq!(o.opt(OptionCode::AddressLeaseTime), Some(&DhcpOption::AddressLeaseTime(3600)));
    assert_eq!(o.opt(OptionCode::Renewal), Some(&DhcpOption::Renewal(1800)));
    assert_eq!(o.opt(OptionCode::Rebinding), Some(&DhcpOption::Rebinding(3150)));
    assert_eq!(o.opt(OptionCode::DomainName), Some(&DhcpOption::DomainName("acct42.internal".into())));
    assert_eq!(raw_opt(&o.raw, 119).unwrap(), b"\x06acct42\x08internal\x00");
    assert!(o.opt(OptionCode::Hostname).is_none());
    assert!(raw_opt(&o.raw, 121).is_none(), "no routes configured, no option 121");
    assert_eq!(h.s.leases().len(), 1);
    assert_eq!(h.s.leases()[0].state, LeaseState::Offered);

    let (r, out) = h.send(m, &select(m, a("10.1.1.100")));
    r.unwrap();
    assert_eq!(out.len(), 1, "only the record, no ACK yet: {out:?}");
    let Action::Persist { seq, record: LeaseRecord::Bind(l) } = &out[0] else { panic!("{out:?}") };
    let seq = *seq;
    assert_eq!((l.ip, l.mac, l.state, l.expires, l.net), (a("10.1.1.100"), m, LeaseState::Bound, T0 + 3600, 0));
    let mut rel = Vec::new();
    h.s.committed(1, seq - 1, &mut rel);
    assert!(rel.is_empty(), "not durable yet");
    h.s.committed(seq, seq, &mut rel);
    let (ack, _, _) = split(rel);
    assert_eq!(ack.len(), 1);
    assert_eq!(ack[0].mtype(), MessageType::Ack);
    assert_eq!(ack[0].msg.yiaddr(), a("10.1.1.100"));
    assert_eq!((ack[0].dst_ip, ack[0].dst_mac), (a("10.1.1.100"), m));
    assert_eq!(ack[0].opt(OptionCode::AddressLeaseTime), Some(&DhcpOption::AddressLeaseTime(3600)));
    let mut again = Vec::new();
    h.s.committed(seq, seq, &mut again);
    assert!(again.is_empty(), "an ACK is released once");

    assert_eq!(h.s.lease_of(0, m), Some(a("10.1.1.100")));
    assert_eq!(h.s.lease_of(0, mac(2)), None);
    let c = h.s.counters();
    assert_eq!((c.discovers, c.offers, c.requests, c.acks, c.naks), (1, 1, 1, 1, 0));
    let l = h.s.leases();
    assert_eq!(l.len(), 1);
    assert_eq!(l[0].state, LeaseState::Bound);
}

#[test]
fn broadcast_flag_and_ciaddr_choose_the_destination() {
    let mut h = H::web();
    let m = mac(1);
    let mut q = discover(m);
    q.set_flags(Flags::default().set_broadcast());
    let (o, _) = h.exchange(m, &q);
    assert_eq!((o[0].dst_ip, o[0].dst_mac), (Ipv4Addr::BROADCAST, MacAddr::BROADCAST));
    assert!(o[0].msg.flags().broadcast());
    let mut q = select(m, a("10.1.1.100"));
    q.set_flags(Flags::default().set_broadcast());
    let (ack, _) = h.exchange(m, &q);
    assert_eq!((ack[0].dst_ip, ack[0].dst_mac), (Ipv4Addr::BROADCAST, MacAddr::BROADCAST));
    // RENEWING: unicast to ciaddr, ciaddr echoed.
    let (ack, _) = h.exchange(m, &renew(m, a("10.1.1.100")));
    assert_eq!((ack[0].dst_ip, ack[0].dst_mac), (a("10.1.1.100"), m));
    assert_eq!(ack[0].msg.ciaddr(), a("10.1.1.100"));
}

#[test]
fn reserved_mac_gets_reserved_ip_and_hostname() {
    let res = vec![
        Reservation { net: 0, mac: mac(9), ip: a("10.1.1.11"), hostname: Some("web1".into()) },
        // Inside the pool: pool clients must skip it.
        Reservation { net: 0, mac: mac(8), ip: a("10.1.1.100"), hostname: None },
    ];
    let mut h = H::new(DhcpServer::new(vec![Some(web())], res));
    let m = mac(9);
    let (o, _) = h.exchange(m, &discover(m));
    assert_eq!(o[0].msg.yiaddr(), a("10.1.1.11"));
    assert_eq!(o[0].opt(OptionCode::Hostname), Some(&DhcpOption::Hostname("web1".into())));
    // Even when it asks for something else, the reservation wins.
    let (nak, _) = h.exchange(m, &select(m, a("10.1.1.150")));
    assert_eq!(nak[0].mtype(), MessageType::Nak);
    let (ack, recs) = h.exchange(m, &select(m, a("10.1.1.11")));
    assert_eq!(ack[0].mtype(), MessageType::Ack);
    assert_eq!(ack[0].opt(OptionCode::Hostname), Some(&DhcpOption::Hostname("web1".into())));
    let LeaseRecord::Bind(l) = &recs[0] else { panic!() };
    assert_eq!(l.hostname.as_deref(), Some("web1"));
    assert_eq!(h.s.lease_of(0, m), Some(a("10.1.1.11")));

    // A pool client gets the first pool address not reserved, and cannot take the name.
    let p = mac(1);
    let (o, _) = h.exchange(p, &with(discover(p), DhcpOption::Hostname("web1".into())));
    assert_eq!(o[0].msg.yiaddr(), a("10.1.1.101"));
    assert!(o[0].opt(OptionCode::Hostname).is_none());
    let (_, recs) = h.exchange(p, &with(select(p, a("10.1.1.101")), DhcpOption::Hostname("web1".into())));
    let LeaseRecord::Bind(l) = &recs[0] else { panic!() };
    assert_eq!(l.hostname, None, "a reservation's name is not for others");
    // A pool client cannot take a reserved address by asking for it.
    let q = mac(2);
    let (nak, _) = h.exchange(q, &init_reboot(q, a("10.1.1.100")));
    assert_eq!(nak[0].mtype(), MessageType::Nak);
    let hosts = h.s.hosts();
    assert_eq!(hosts, vec![(0, "web1".to_string(), a("10.1.1.11"))]);
}

#[test]
fn client_hostname_is_kept_when_valid_and_never_echoed() {
    let mut h = H::web();
    let m = mac(1);
    let (o, _) = h.exchange(m, &with(discover(m), DhcpOption::Hostname("Laptop-7".into())));
    let ip = o[0].msg.yiaddr();
    let (ack, recs) = h.exchange(m, &with(select(m, ip), DhcpOption::Hostname("Laptop-7".into())));
    assert!(ack[0].opt(OptionCode::Hostname).is_none());
    let LeaseRecord::Bind(l) = &recs[0] else { panic!() };
    assert_eq!(l.hostname.as_deref(), Some("laptop-7"));
    // A renewal without option 12 keeps the name.
    let (_, recs) = h.exchange(m, &renew(m, ip));
    let LeaseRecord::Bind(l) = &recs[0] else { panic!() };
    assert_eq!(l.hostname.as_deref(), Some("laptop-7"));
    assert_eq!(h.s.hosts(), vec![(0, "laptop-7".to_string(), ip)]);
    // Another client cannot take a name in use; invalid names are ignored.
    for (n, name) in [(2, "laptop-7"), (3, "bad_name"), (4, "-x"), (5, "a.b"), (6, "")] {
        let c = mac(n);
        let (o, _) = h.exchange(c, &with(discover(c), DhcpOption::Hostname(name.into())));
        let (_, recs) = h.exchange(c, &with(select(c, o[0].msg.yiaddr()), DhcpOption::Hostname(name.into())));
        let LeaseRecord::Bind(l) = &recs[0] else { panic!() };
        assert_eq!(l.hostname, None, "{name:?}");
    }
    assert_eq!(h.s.hosts().len(), 1);
}

#[test]
fn previous_address_comes_back_after_release() {
    let mut h = H::web();
    let (ca, cb, cc) = (mac(1), mac(2), mac(3));
    assert_eq!(h.dora(ca), a("10.1.1.100"));
    assert_eq!(h.dora(cb), a("10.1.1.101"));
    let mut rel = msg(ca, MessageType::Release);
    rel.set_ciaddr(a("10.1.1.100"));
    rel.opts_mut().insert(DhcpOption::ServerIdentifier(a("10.1.1.1")));
    let (sent, recs) = h.exchange(ca, &rel);
    assert!(sent.is_empty(), "RELEASE has no reply");
    assert_eq!(recs, vec![LeaseRecord::Free { net: 0, ip: a("10.1.1.100") }]);
    assert_eq!(h.s.lease_of(0, ca), None);
    assert_eq!(h.s.leases().len(), 1);
    // Someone else's release of B's lease is refused.
    let mut fake = msg(ca, MessageType::Release);
    fake.set_ciaddr(a("10.1.1.101"));
    assert_eq!(h.send(ca, &fake).0, Err(Ignored::UnknownLease));
    // A new client gets a never-used address before a released one.
    let (o, _) = h.exchange(cc, &discover(cc));
    assert_eq!(o[0].msg.yiaddr(), a("10.1.1.102"));
    // The releasing client gets its address back.
    let (o, _) = h.exchange(ca, &discover(ca));
    assert_eq!(o[0].msg.yiaddr(), a("10.1.1.100"));
    assert_eq!(h.s.counters().releases, 1);
}

#[test]
fn leases_survive_restart_from_the_encoded_log() {
    let mut h = H::web();
    let (ca, cb) = (mac(1), mac(2));
    let cid = DhcpOption::ClientIdentifier(vec![1, 0x52, 0x54, 0, 0, 0, 1]);
    let mut log: Vec<String> = Vec::new();
    let (o, _) = h.exchange(ca, &with(discover(ca), cid.clone()));
    let ip_a = o[0].msg.yiaddr();
    let (_, recs) = h.exchange(ca, &with(with(select(ca, ip_a), cid.clone()), DhcpOption::Hostname("alpha".into())));
    log.extend(recs.iter().map(|r| h.s.encode(r)));
    let (o, _) = h.exchange(cb, &discover(cb));
    let ip_b = o[0].msg.yiaddr();
    let (_, recs) = h.exchange(cb, &select(cb, ip_b));
    log.extend(recs.iter().map(|r| h.s.encode(r)));
    let mut rel = msg(cb, MessageType::Release);
    rel.set_ciaddr(ip_b);
    let (_, recs) = h.exchange(cb, &rel);
    log.extend(recs.iter().map(|r| h.s.encode(r)));
    // kill -9 while writing one more line: a torn record at the end of the file.
    let torn = LeaseRecord::Bind(Lease {
        net: 0,
        ip: a("10.1.1.150"),
        mac: mac(7),
        client_id: None,
        hostname: None,
        expires: T0 + 3600,
        state: LeaseState::Bound,
    })
    .encode("web");
    log.push(torn[..torn.len() - 5].to_string());
    let text = log.join("\n");

    let mut h2 = H::web();
    h2.now = T0 + 100;
    let recs: Vec<LeaseRecord> = text.lines().filter_map(|l| h2.s.decode(l)).collect();
    assert_eq!(recs.len(), 3, "the torn line is skipped");
    h2.s.restore(recs, h2.now);
    assert_eq!(h2.s.lease_of(0, ca), Some(ip_a));
    assert_eq!(h2.s.lease_of(0, mac(7)), None);
    assert_eq!(h2.s.hosts(), vec![(0, "alpha".to_string(), ip_a)]);

    // INIT-REBOOT from the old client: ACKed with the same address, after its record.
    let (ack, recs) = h2.exchange(ca, &with(init_reboot(ca, ip_a), cid.clone()));
    assert_eq!(ack[0].mtype(), MessageType::Ack);
    assert_eq!(ack[0].msg.yiaddr(), ip_a);
    assert!(matches!(&recs[..], [LeaseRecord::Bind(l)] if l.ip == ip_a && l.hostname.as_deref() == Some("alpha")));
    // RENEWING: same address, lease extended from now.
    h2.now += 1000;
    let (ack, recs) = h2.exchange(ca, &with(renew(ca, ip_a), cid.clone()));
    assert_eq!(ack[0].mtype(), MessageType::Ack);
    assert_eq!((ack[0].dst_ip, ack[0].dst_mac), (ip_a, ca));
    assert!(matches!(&recs[..], [LeaseRecord::Bind(l)] if l.ip == ip_a && l.expires == h2.now + 3600));
    // A new client gets a different address; the released client gets its own back.
    let c = mac(3);
    let (o, _) = h2.exchange(c, &discover(c));
    assert_ne!(o[0].msg.yiaddr(), ip_a);
    assert_ne!(o[0].msg.yiaddr(), ip_b);
    let (o, _) = h2.exchange(cb, &discover(cb));
    assert_eq!(o[0].msg.yiaddr(), ip_b);
    // Someone else asking for A's address is refused.
    let (nak, _) = h2.exchange(c, &init_reboot(c, ip_a));
    assert_eq!(nak[0].mtype(), MessageType::Nak);
}

#[test]
fn renewal_after_lost_state_is_acked_when_the_address_is_free() {
    // The lease log lost the client (crash before the record was durable means no ACK was
    // sent; this covers a wiped state_dir): its renewal still succeeds if nobody has the address.
    let mut h = H::web();
    let m = mac(1);
    let (ack, recs) = h.exchange(m, &renew(m, a("10.1.1.150")));
    assert_eq!(ack[0].mtype(), MessageType::Ack);
    assert_eq!(ack[0].msg.yiaddr(), a("10.1.1.150"));
    assert_eq!(recs.len(), 1);
    assert_eq!(h.s.lease_of(0, m), Some(a("10.1.1.150")));
}

#[test]
fn replaying_the_log_rebuilds_the_lease_table() {
    let mut h = H::web();
    let mut log = Vec::new();
    let enc = |r: &LeaseRecord| r.encode("web");
    let mut keep = |recs: Vec<LeaseRecord>| log.extend(recs.iter().map(enc));
    for n in 1..=5 {
        let m = mac(n);
        let (o, _) = h.exchange(m, &discover(m));
        let (_, r) = h.exchange(m, &with(select(m, o[0].msg.yiaddr()), DhcpOption::Hostname(format!("h{n}"))));
        keep(r);
    }
    let mut rel = msg(mac(2), MessageType::Release);
    rel.set_ciaddr(a("10.1.1.101"));
    keep(h.exchange(mac(2), &rel).1);
    let mut dec = msg(mac(3), MessageType::Decline);
    dec.opts_mut().insert(DhcpOption::RequestedIpAddress(a("10.1.1.102")));
    keep(h.exchange(mac(3), &dec).1);
    h.now += 300;
    keep(h.exchange(mac(4), &renew(mac(4), a("10.1.1.103"))).1);
    // An outstanding offer is not part of the durable table.
    h.exchange(mac(9), &discover(mac(9)));
    let durable = |s: &DhcpServer| s.leases().into_iter().filter(|l| l.state != LeaseState::Offered).collect::<Vec<_>>();

    let mut h2 = H::web();
    let recs: Vec<LeaseRecord> = log.iter().filter_map(|l| h2.s.decode(l)).collect();
    h2.s.restore(recs, h.now);
    assert_eq!(durable(&h2.s), durable(&h.s));
    assert_eq!(h2.s.hosts(), h.s.hosts());
    assert_eq!(durable(&h.s).len(), 4);
}

#[test]
fn decline_quarantines_the_address_for_ten_minutes() {
    let mut h = H::web();
    let (ca, cb, cc) = (mac(1), mac(2), mac(3));
    let ip = h.dora(ca);
    assert_eq!(ip, a("10.1.1.100"));
    // Declining an address one does not hold is refused.
    let mut bogus = msg(cb, MessageType::Decline);
    bogus.opts_mut().insert(DhcpOption::RequestedIpAddress(ip));
    assert_eq!(h.send(cb, &bogus).0, Err(Ignored::UnknownLease));
    let mut dec = msg(ca, MessageType::Decline);
    dec.opts_mut().insert(DhcpOption::RequestedIpAddress(ip));
    dec.opts_mut().insert(DhcpOption::ServerIdentifier(a("10.1.1.1")));
    let (sent, recs) = h.exchange(ca, &dec);
    assert!(sent.is_empty());
    assert_eq!(recs, vec![LeaseRecord::Decline { net: 0, ip, until: T0 + 600 }]);
    assert_eq!(h.s.lease_of(0, ca), None);
    let l = h.s.leases();
    assert_eq!((l.len(), l[0].ip, l[0].state, l[0].expires), (1, ip, LeaseState::Declined, T0 + 600));
    // Nobody gets it meanwhile, not even by asking.
    let (o, _) = h.exchange(ca, &discover(ca));
    assert_eq!(o[0].msg.yiaddr(), a("10.1.1.101"));
    let (nak, _) = h.exchange(cb, &init_reboot(cb, ip));
    assert_eq!(nak[0].mtype(), MessageType::Nak);
    // After ten minutes it is free again.
    h.now = T0 + 600;
    let mut out = Vec::new();
    h.s.expire(h.now, &mut out);
    assert!(out.is_empty(), "{out:?}");
    let (o, _) = h.exchange(cc, &discover(cc));
    assert_eq!(o[0].msg.yiaddr(), ip);
    assert_eq!(h.s.counters().declines, 1);
}

#[test]
fn pool_exhaustion_offers_nothing() {
    let mut net = web();
    net.range = Some((a("10.1.1.100"), a("10.1.1.102")));
    let mut h = H::new(DhcpServer::new(vec![Some(net)], Vec::new()));
    for n in 1..=3 {
        h.dora(mac(n));
    }
    let (r, out) = h.send(mac(4), &discover(mac(4)));
    assert_eq!(r, Err(Ignored::PoolExhausted));
    assert!(out.is_empty());
    assert_eq!(h.s.counters().ignored_pool_exhausted, 1);
    // A bound client still gets its own address again.
    let (o, _) = h.exchange(mac(2), &discover(mac(2)));
    assert_eq!(o[0].msg.yiaddr(), a("10.1.1.101"));

    // A reservations-only network has nothing for strangers.
    let mut net = web();
    net.range = None;
    let res = vec![Reservation { net: 0, mac: mac(9), ip: a("10.1.1.9"), hostname: None }];
    let mut h = H::new(DhcpServer::new(vec![Some(net)], res));
    assert_eq!(h.send(mac(1), &discover(mac(1))).0, Err(Ignored::PoolExhausted));
    assert_eq!(h.dora(mac(9)), a("10.1.1.9"));
}

#[test]
fn nak_for_a_wrong_requested_address() {
    let mut h = H::web();
    let (ca, cb) = (mac(1), mac(2));
    let ip_b = h.dora(cb);
    for q in [
        init_reboot(ca, a("10.9.9.9")),   // another network
        init_reboot(ca, a("10.1.1.1")),   // the gateway
        init_reboot(ca, a("10.1.1.255")), // broadcast
        init_reboot(ca, a("10.1.1.50")),  // outside the pool
        init_reboot(ca, ip_b),            // someone else's
        select(ca, ip_b),
        renew(ca, ip_b),
        renew(ca, a("192.168.0.7")),
    ] {
        let (nak, recs) = h.exchange(ca, &q);
        assert!(recs.is_empty());
        assert_eq!(nak.len(), 1);
        let n = &nak[0];
        assert_eq!(n.mtype(), MessageType::Nak);
        assert_eq!((n.dst_ip, n.dst_mac), (Ipv4Addr::BROADCAST, MacAddr::BROADCAST), "NAKs are broadcast");
        assert_eq!(n.msg.yiaddr(), U);
        assert_eq!(n.opt(OptionCode::ServerIdentifier), Some(&DhcpOption::ServerIdentifier(a("10.1.1.1"))));
        assert!(n.opt(OptionCode::AddressLeaseTime).is_none());
        assert!(n.raw.len() >= 300);
    }
    assert_eq!(h.s.counters().naks, 8);
    assert_eq!(h.s.lease_of(0, cb), Some(ip_b));
    assert_eq!(h.s.lease_of(0, ca), None);
    // A REQUEST with no address at all is malformed.
    assert_eq!(h.send(ca, &msg(ca, MessageType::Request)).0, Err(Ignored::Malformed));
}

#[test]
fn request_for_another_server_withdraws_our_offer() {
    let mut h = H::web();
    let m = mac(1);
    h.exchange(m, &discover(m));
    let mut q = select(m, a("10.1.1.100"));
    q.opts_mut().insert(DhcpOption::ServerIdentifier(a("10.1.1.254")));
    let (r, out) = h.send(m, &q);
    assert_eq!(r, Err(Ignored::NotForUs));
    assert!(out.is_empty());
    assert!(h.s.leases().is_empty());
}

#[test]
fn rogue_server_messages_from_guests_are_ignored() {
    let mut h = H::web();
    let m = mac(1);
    let mut offer = msg(m, MessageType::Offer);
    offer.set_opcode(Opcode::BootReply).set_yiaddr(a("10.1.1.66"));
    offer.opts_mut().insert(DhcpOption::ServerIdentifier(a("10.1.1.66")));
    let (r, out) = h.send(m, &offer);
    assert_eq!(r, Err(Ignored::ServerMessage));
    assert!(out.is_empty());
    // A server message type in a BOOTREQUEST, and a BOOTREPLY of any type.
    assert_eq!(h.send(m, &msg(m, MessageType::Ack)).0, Err(Ignored::ServerMessage));
    let mut reply = discover(m);
    reply.set_opcode(Opcode::BootReply);
    assert_eq!(h.send(m, &reply).0, Err(Ignored::ServerMessage));
    assert_eq!(h.send(m, &msg(m, MessageType::Nak)).0, Err(Ignored::ServerMessage));
    assert_eq!(h.s.counters().ignored_server_message, 4);
    assert!(h.s.leases().is_empty());
}

#[test]
fn other_messages_are_ignored_with_their_reason() {
    let mut h = H::web();
    let m = mac(1);
    // chaddr is not the Ethernet source.
    assert_eq!(h.send(mac(2), &discover(m)).0, Err(Ignored::NotForUs));
    // Relayed.
    let mut q = discover(m);
    q.set_giaddr(a("10.1.1.254"));
    assert_eq!(h.send(m, &q).0, Err(Ignored::NotForUs));
    // Lease query and unknown message types.
    assert_eq!(h.send(m, &msg(m, MessageType::LeaseQuery)).0, Err(Ignored::NotRequest));
    assert_eq!(h.send(m, &msg(m, MessageType::Unknown(99))).0, Err(Ignored::NotRequest));
    // BOOTP (no message type), no magic cookie, too short, empty.
    let mut bootp = discover(m);
    bootp.opts_mut().clear();
    assert_eq!(h.send(m, &bootp).0, Err(Ignored::Malformed));
    let mut raw = discover(m).to_vec().unwrap();
    raw[236] = 0;
    let mut out = Vec::new();
    assert_eq!(h.s.handle(T0, 9_000_000, 0, 1, m, &raw, &mut out), Err(Ignored::Malformed));
    assert_eq!(h.s.handle(T0, 9_000_000, 0, 1, m, &raw[..200], &mut out), Err(Ignored::Malformed));
    assert_eq!(h.s.handle(T0, 9_000_000, 0, 1, m, &[], &mut out), Err(Ignored::Malformed));
    // No DHCP on the network, or no such network.
    let mut s = DhcpServer::new(vec![Some(web()), None], Vec::new());
    let d = discover(m).to_vec().unwrap();
    assert_eq!(s.handle(T0, 0, 1, 1, m, &d, &mut out), Err(Ignored::NoNetwork));
    assert_eq!(s.handle(T0, 0, 7, 1, m, &d, &mut out), Err(Ignored::NoNetwork));
    assert!(out.is_empty());
    let c = h.s.counters();
    assert_eq!((c.ignored_not_for_us, c.ignored_not_request, c.ignored_malformed), (2, 2, 4));
    assert_eq!(s.counters().ignored_no_network, 2);
}

#[test]
fn option_121_golden_bytes() {
    let mut net = web();
    net.routes = vec![("10.1.2.0/24".parse().unwrap(), a("10.1.1.1")), ("0.0.0.0/0".parse().unwrap(), a("10.1.1.1"))];
    let mut h = H::new(DhcpServer::new(vec![Some(net)], Vec::new()));
    let m = mac(1);
    let (o, _) = h.exchange(m, &discover(m));
    assert_eq!(raw_opt(&o[0].raw, 121).unwrap(), vec![24, 10, 1, 2, 10, 1, 1, 1, 0, 10, 1, 1, 1]);
    let (ack, _) = h.exchange(m, &select(m, o[0].msg.yiaddr()));
    assert_eq!(raw_opt(&ack[0].raw, 121).unwrap(), vec![24, 10, 1, 2, 10, 1, 1, 1, 0, 10, 1, 1, 1]);
    // dhcproto reads the same routes back.
    let Some(DhcpOption::ClasslessStaticRoute(r)) = ack[0].opt(OptionCode::ClasslessStaticRoute) else { panic!() };
    assert_eq!(r.len(), 2);
    assert_eq!((r[0].0.addr(), r[0].0.prefix_len(), r[0].1), (a("10.1.2.0"), 24, a("10.1.1.1")));
    assert_eq!((r[1].0.addr(), r[1].0.prefix_len(), r[1].1), (a("0.0.0.0"), 0, a("10.1.1.1")));
    // Other prefix lengths: significant octets only.
    let r: [(Ipv4Net, Ipv4Addr); 2] = [("10.0.0.128/25".parse().unwrap(), a("10.1.1.1")), ("192.168.7.9/32".parse().unwrap(), a("10.1.1.2"))];
    assert_eq!(msg::classless_routes(&r), vec![25, 10, 0, 0, 128, 10, 1, 1, 1, 32, 192, 168, 7, 9, 10, 1, 1, 2]);
}

#[test]
fn replies_are_padded_to_the_bootp_minimum() {
    let mut net = web();
    net.domain = None;
    let mut h = H::new(DhcpServer::new(vec![Some(net)], Vec::new()));
    let m = mac(1);
    let (o, _) = h.exchange(m, &discover(m));
    assert!(o[0].raw.len() >= 300, "{}", o[0].raw.len());
    assert_eq!(o[0].raw.len(), 300, "a short reply is padded to exactly 300");
    let (ack, _) = h.exchange(m, &select(m, o[0].msg.yiaddr()));
    assert!(ack[0].raw.len() >= 300);
    let (nak, _) = h.exchange(mac(2), &init_reboot(mac(2), a("10.9.9.9")));
    assert!(nak[0].raw.len() >= 300);
    // A long domain that does not fit the client's 576 bytes loses the search list first.
    let mut net = web();
    net.domain = Some(format!("{}.{}.{}.{}", "a".repeat(63), "b".repeat(63), "c".repeat(63), "d".repeat(7)));
    let mut h = H::new(DhcpServer::new(vec![Some(net)], Vec::new()));
    let (o, _) = h.exchange(m, &discover(m));
    assert!(o[0].raw.len() <= 576 - 28, "{}", o[0].raw.len());
    assert!(o[0].opt(OptionCode::DomainName).is_some());
    assert!(o[0].opt(OptionCode::DomainSearch).is_none());
}

#[test]
fn inform_gets_configuration_without_a_lease() {
    let mut h = H::web();
    let m = mac(1);
    let mut q = msg(m, MessageType::Inform);
    q.set_ciaddr(a("10.1.1.50"));
    let (r, out) = h.send(m, &q);
    r.unwrap();
    let (ack, recs, _) = split(out);
    assert!(recs.is_empty(), "nothing to persist: sent at once");
    let k = &ack[0];
    assert_eq!(k.mtype(), MessageType::Ack);
    assert_eq!((k.dst_ip, k.dst_mac), (a("10.1.1.50"), m));
    assert_eq!((k.msg.yiaddr(), k.msg.ciaddr()), (U, a("10.1.1.50")));
    assert!(k.opt(OptionCode::AddressLeaseTime).is_none());
    assert!(k.opt(OptionCode::Renewal).is_none());
    assert!(k.opt(OptionCode::Rebinding).is_none());
    assert!(k.opt(OptionCode::Router).is_some());
    assert!(h.s.leases().is_empty());
    let c = h.s.counters();
    assert_eq!((c.informs, c.acks), (1, 1));
    // From outside the network: not ours.
    let mut q = msg(m, MessageType::Inform);
    q.set_ciaddr(a("10.2.2.2"));
    assert_eq!(h.send(m, &q).0, Err(Ignored::NotForUs));
}

#[test]
fn renewal_is_persisted_before_its_ack() {
    let mut h = H::web();
    let m = mac(1);
    let ip = h.dora(m);
    h.now = T0 + 1800;
    let (r, out) = h.send(m, &renew(m, ip));
    r.unwrap();
    let [Action::Persist { seq, record: LeaseRecord::Bind(l) }] = &out[..] else { panic!("{out:?}") };
    assert_eq!(l.expires, T0 + 1800 + 3600);
    let mut rel = Vec::new();
    h.s.committed(*seq, *seq, &mut rel);
    assert_eq!(split(rel).0[0].mtype(), MessageType::Ack);
    assert_eq!(h.s.leases()[0].expires, T0 + 1800 + 3600);
}

#[test]
fn expiry_frees_leases_and_offers() {
    let mut h = H::web();
    let (ca, cb, cc) = (mac(1), mac(2), mac(3));
    let ip = h.dora(ca);
    h.exchange(cc, &discover(cc)); // offered .101
    let mut out = Vec::new();
    h.s.expire(T0 + 59, &mut out);
    assert!(out.is_empty());
    assert_eq!(h.s.leases().len(), 2);
    h.s.expire(T0 + 60, &mut out);
    assert!(out.is_empty(), "an expired offer is not persisted");
    assert_eq!(h.s.leases().len(), 1);
    h.s.expire(T0 + 3599, &mut out);
    assert!(out.is_empty());
    assert_eq!(h.s.lease_of(0, ca), Some(ip));
    h.s.expire(T0 + 3600, &mut out);
    assert!(matches!(&out[..], [Action::Persist { record: LeaseRecord::Free { net: 0, ip: i }, .. }] if *i == ip));
    assert_eq!(h.s.lease_of(0, ca), None);
    assert!(h.s.leases().is_empty());
    assert!(h.s.hosts().is_empty());
    let mut again = Vec::new();
    h.s.expire(T0 + 4000, &mut again);
    assert!(again.is_empty(), "freed once");
    // The address is free: a new client gets the lowest never-used one, and the old client
    // its own.
    h.now = T0 + 4000;
    let (o, _) = h.exchange(cb, &discover(cb));
    assert_eq!(o[0].msg.yiaddr(), a("10.1.1.102"));
    let (o, _) = h.exchange(ca, &discover(ca));
    assert_eq!(o[0].msg.yiaddr(), ip);
}

#[test]
fn lapsed_lease_is_taken_over_without_expire_and_survives_replay() {
    // A lease that expired but was not swept yet is free; its takeover is logged as a Bind
    // that supersedes the old one on replay.
    let mut net = web();
    net.range = Some((a("10.1.1.100"), a("10.1.1.100")));
    let mut h = H::new(DhcpServer::new(vec![Some(net.clone())], Vec::new()));
    let mut log = Vec::new();
    let (o, _) = h.exchange(mac(1), &discover(mac(1)));
    log.extend(h.exchange(mac(1), &select(mac(1), o[0].msg.yiaddr())).1);
    h.now += 3600;
    assert_eq!(h.dora(mac(2)), a("10.1.1.100"));
    log.extend(h.exchange(mac(2), &renew(mac(2), a("10.1.1.100"))).1);
    let mut h2 = H::new(DhcpServer::new(vec![Some(net)], Vec::new()));
    h2.s.restore(log, h.now);
    assert_eq!(h2.s.lease_of(0, mac(2)), Some(a("10.1.1.100")));
    assert_eq!(h2.s.lease_of(0, mac(1)), None);
}

#[test]
fn per_port_rate_limit() {
    let mut s = DhcpServer::new(vec![Some(web())], Vec::new());
    let m = mac(1);
    let d = discover(m).to_vec().unwrap();
    let mut out = Vec::new();
    let t = 5_000_000;
    for i in 0..40 {
        assert_eq!(s.handle(T0, t, 0, 7, m, &d, &mut out), Ok(()), "message {i} within the burst");
    }
    assert_eq!(s.handle(T0, t, 0, 7, m, &d, &mut out), Err(Ignored::RateLimited));
    // Other ports have their own bucket.
    assert_eq!(s.handle(T0, t, 0, 8, m, &d, &mut out), Ok(()));
    // 20 per second: one more after 50 ms, not two.
    assert_eq!(s.handle(T0, t + 50, 0, 7, m, &d, &mut out), Ok(()));
    assert_eq!(s.handle(T0, t + 50, 0, 7, m, &d, &mut out), Err(Ignored::RateLimited));
    let ok = (0..40).filter(|_| s.handle(T0, t + 1050, 0, 7, m, &d, &mut out).is_ok()).count();
    assert_eq!(ok, 20);
    // A clock that goes backwards refills nothing and breaks nothing.
    assert_eq!(s.handle(T0, t, 0, 7, m, &d, &mut out), Err(Ignored::RateLimited));
    assert_eq!(s.counters().ignored_rate_limited, 2 + 20 + 1);
}

#[test]
fn outstanding_offers_are_capped_per_port() {
    let mut h = H::web();
    for n in 1..=4 {
        h.exchange(mac(n), &discover(mac(n)));
    }
    assert_eq!(h.send(mac(5), &discover(mac(5))).0, Err(Ignored::RateLimited));
    // A retransmitted DISCOVER re-offers the same address without using quota.
    let (o, _) = h.exchange(mac(1), &discover(mac(1)));
    assert_eq!(o[0].msg.yiaddr(), a("10.1.1.100"));
    // Another port is not affected.
    h.port = 2;
    h.exchange(mac(6), &discover(mac(6)));
    h.port = 1;
    // A completed exchange gives its slot back; so does an expired offer.
    h.exchange(mac(1), &select(mac(1), a("10.1.1.100")));
    h.exchange(mac(5), &discover(mac(5)));
    assert_eq!(h.send(mac(7), &discover(mac(7))).0, Err(Ignored::RateLimited));
    let mut out = Vec::new();
    h.s.expire(T0 + 60, &mut out);
    h.now = T0 + 60;
    h.exchange(mac(7), &discover(mac(7)));
}

#[test]
fn lease_records_round_trip_and_reject_damage() {
    let recs = [
        LeaseRecord::Bind(Lease {
            net: 3,
            ip: a("10.1.1.100"),
            mac: mac(1),
            client_id: Some(vec![1, 0x52, 0x54, 0, 0, 0, 1]),
            hostname: Some("web-1".into()),
            expires: T0,
            state: LeaseState::Bound,
        }),
        LeaseRecord::Bind(Lease {
            net: 0,
            ip: a("10.1.1.101"),
            mac: mac(2),
            client_id: Some(Vec::new()),
            hostname: Some("we ird\n%-ü".into()),
            expires: u64::MAX,
            state: LeaseState::Bound,
        }),
        LeaseRecord::Bind(Lease {
            net: 0,
            ip: a("10.1.1.102"),
            mac: mac(3),
            client_id: None,
            hostname: Some("-".into()),
            expires: 0,
            state: LeaseState::Released,
        }),
        LeaseRecord::Bind(Lease {
            net: 0,
            ip: a("10.1.1.103"),
            mac: mac(3),
            client_id: None,
            hostname: Some(String::new()),
            expires: 0,
            state: LeaseState::Bound,
        }),
        LeaseRecord::Free { net: 1, ip: a("10.1.2.7") },
        LeaseRecord::Decline { net: 0, ip: a("10.1.1.5"), until: T0 + 600 },
    ];
    let names = ["web", "db"];
    let idx = |n: &str| names.iter().position(|x| *x == n);
    let name = |r: &LeaseRecord| match r {
        LeaseRecord::Bind(l) => names.get(l.net).copied().unwrap_or("acct-3"),
        LeaseRecord::Free { net, .. } | LeaseRecord::Decline { net, .. } => names[*net],
    };
    for r in &recs[1..] {
        let line = r.encode(name(r));
        assert!(!line.contains('\n') && !line.contains('\r'), "{line}");
        assert_eq!(LeaseRecord::decode(&line, idx).as_ref(), Some(r), "{line}");
        assert_eq!(LeaseRecord::decode(&format!("{line}\n"), idx).as_ref(), Some(r));
        for cut in 0..line.len() {
            if line.is_char_boundary(cut) {
                assert_eq!(LeaseRecord::decode(&line[..cut], idx), None, "torn at {cut}: {line}");
            }
        }
        // Any one changed byte is caught.
        let b = line.as_bytes();
        for i in 0..b.len() {
            let mut c = b.to_vec();
            c[i] = if c[i] == b'0' { b'1' } else { b'0' };
            if let Ok(s) = std::str::from_utf8(&c) {
                assert_eq!(LeaseRecord::decode(s, idx), None, "{s}");
            }
        }
    }
    // Keyed by the network's name; a name the config no longer has is not read.
    let line = recs[0].encode("acct-3");
    assert!(line.starts_with("lease acct-3 10.1.1.100 52:54:00:00:00:01 1700000000 bound 01525400000001 web-1 *"), "{line}");
    assert_eq!(LeaseRecord::decode(&line, idx), None);
    assert_eq!(recs[2].encode("web").split(' ').nth(7), Some("%2d"), "a hostname of \"-\" is not \"none\"");
    // The format before names (network by position) is still read.
    let old = "free 1 10.1.2.7";
    let old = format!("{old} *{:08x}", old.bytes().fold(0x811c_9dc5u32, |h, x| (h ^ x as u32).wrapping_mul(0x0100_0193)));
    assert_eq!(LeaseRecord::decode(&old, idx), Some(LeaseRecord::Free { net: 1, ip: a("10.1.2.7") }));
    for junk in ["", "*", " *", "bind", "lease", "free 0 10.1.1.1 *00000000", "hello world *12345678"] {
        assert_eq!(LeaseRecord::decode(junk, idx), None, "{junk}");
    }
}

/// A small deterministic generator (xorshift64*), so the fuzz test needs no extra crate.
struct Rng(u64);

impl Rng {
    fn step(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.step() % n.max(1) as u64) as usize
    }
    fn byte(&mut self) -> u8 {
        self.step() as u8
    }
}

#[test]
fn any_input_is_ok_or_err_never_a_panic() {
    let m = mac(1);
    let seeds: Vec<Vec<u8>> = vec![
        with(with(discover(m), DhcpOption::Hostname("fuzz".into())), DhcpOption::ClientIdentifier(vec![1, 2, 3]))
            .to_vec()
            .unwrap(),
        select(m, a("10.1.1.100")).to_vec().unwrap(),
        renew(m, a("10.1.1.100")).to_vec().unwrap(),
        init_reboot(m, a("10.1.1.120")).to_vec().unwrap(),
        with(msg(m, MessageType::Decline), DhcpOption::RequestedIpAddress(a("10.1.1.100"))).to_vec().unwrap(),
        renew(m, a("10.1.1.100")).set_opts(msg(m, MessageType::Release).opts().clone()).to_vec().unwrap(),
    ];
    // Options whose decoders in dhcproto assert or parse names: given bad lengths on purpose.
    let nasty: [&[u8]; 12] = [
        &[80, 3, 1, 2, 3],
        &[81, 0],
        &[81, 1, 0],
        &[94, 2, 1, 2],
        &[151, 0],
        &[152, 1, 0],
        &[119, 4, 0xc0, 0x00, 3, b'a'],
        &[121, 3, 33, 1, 2],
        &[82, 2, 1, 9],
        &[53, 0],
        &[12, 2, 0xff, 0xfe],
        &[61, 0],
    ];
    let mut s = DhcpServer::new(
        vec![Some(DhcpNet { routes: vec![("0.0.0.0/0".parse().unwrap(), a("10.1.1.1"))], ..web() }), None],
        vec![Reservation { net: 0, mac: mac(9), ip: a("10.1.1.9"), hostname: Some("nine".into()) }],
    );
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut ok, mut now, mut ms) = (0, T0, 0u64);
    let mut out = Vec::new();
    for i in 0..6000 {
        let mut p = match rng.below(4) {
            0 => (0..rng.below(700)).map(|_| rng.byte()).collect(),
            _ => seeds[rng.below(seeds.len())].clone(),
        };
        // Mutations: flipped bytes (biased to the header and the first options), nasty
        // options spliced in before the end, truncation, trailing junk.
        for _ in 0..rng.below(6) {
            if !p.is_empty() {
                let at = if rng.below(2) == 0 { rng.below(p.len().min(260)) } else { rng.below(p.len()) };
                p[at] = rng.byte();
            }
        }
        if rng.below(2) == 0 && p.len() > 241 {
            let at = 240 + rng.below(p.len() - 240);
            let o = nasty[rng.below(nasty.len())];
            p.splice(at..at, o.iter().copied());
        }
        match rng.below(6) {
            0 => p.truncate(rng.below(p.len() + 1)),
            1 => p.extend((0..rng.below(64)).map(|_| rng.byte())),
            _ => {}
        }
        // Usually from the MAC in chaddr (so processing goes deep), sometimes not.
        let src = match (p.get(28..34), rng.below(4)) {
            (Some(c), 0..=2) => MacAddr::from_bytes(c).unwrap(),
            _ => mac(rng.byte()),
        };
        ms += 60;
        if i % 50 == 0 {
            now += rng.below(200) as u64;
        }
        let port = rng.below(3) as u16;
        let net = if rng.below(20) == 0 { 1 } else { 0 };
        if s.handle(now, ms, net, port, src, &p, &mut out).is_ok() {
            ok += 1;
        }
        if i % 7 == 0 {
            let top = out.iter().filter_map(|x| if let Action::Persist { seq, .. } = x { Some(*seq) } else { None }).max();
            if let Some(t) = top {
                s.committed(1, t, &mut out);
            }
        }
        if i % 97 == 0 {
            s.expire(now, &mut out);
        }
        for x in out.drain(..) {
            match x {
                Action::Send { payload, net, .. } => {
                    assert_eq!(net, 0);
                    assert!(payload.len() >= 300);
                    Message::decode(&mut Decoder::new(&payload)).unwrap();
                }
                Action::Persist { record, .. } => {
                    assert_eq!(s.decode(&s.encode(&record)), Some(record));
                }
            }
        }
    }
    assert!(ok > 100, "the fuzzer reaches the lease logic ({ok} accepted)");
    let cidr: Ipv4Net = "10.1.1.0/24".parse().unwrap();
    for l in s.leases() {
        assert!(cidr.contains(l.ip) && l.ip != a("10.1.1.1"), "{l:?}");
    }
    // Fully random input with every byte value at every position of a short header.
    for len in 0..300 {
        let p: Vec<u8> = (0..len).map(|_| rng.byte()).collect();
        let _ = s.handle(now, ms, 0, 9, m, &p, &mut out);
        ms += 100;
    }
}

#[test]
fn a_client_holds_one_lease_per_network() {
    let mut h = H::web();
    let m = mac(1);
    let old = h.dora(m);
    // It asks for another free address (INIT-REBOOT after its config changed): its old lease
    // is freed, and the freeing is logged before the new lease.
    let (ack, recs) = h.exchange(m, &init_reboot(m, a("10.1.1.150")));
    assert_eq!(ack[0].msg.yiaddr(), a("10.1.1.150"));
    assert_eq!(recs.len(), 2);
    assert_eq!(recs[0], LeaseRecord::Free { net: 0, ip: old });
    assert!(matches!(&recs[1], LeaseRecord::Bind(l) if l.ip == a("10.1.1.150")));
    assert_eq!(h.s.lease_of(0, m), Some(a("10.1.1.150")));
    let l = h.s.leases();
    assert_eq!((l.len(), l[0].ip), (1, a("10.1.1.150")));
    // Replies carry nothing of the request's header beyond xid, flags and chaddr.
    let mut q = discover(mac(2));
    q.set_sname_str("evil").set_fname_str("boot.efi").set_hops(3).set_secs(9);
    let (o, _) = h.exchange(mac(2), &q);
    let r = &o[0].msg;
    assert_eq!((r.sname(), r.fname(), r.hops(), r.secs(), r.siaddr(), r.giaddr()), (None, None, 0, 0, U, U));
}

#[test]
fn reservations_that_cannot_be_served_are_ignored() {
    let res = vec![
        Reservation { net: 0, mac: mac(1), ip: a("10.1.1.1"), hostname: None },   // the gateway
        Reservation { net: 0, mac: mac(2), ip: a("10.2.0.5"), hostname: None },   // another network
        Reservation { net: 5, mac: mac(3), ip: a("10.1.1.5"), hostname: None },   // no such network
        Reservation { net: 0, mac: mac(4), ip: a("10.1.1.7"), hostname: Some("x".into()) },
        Reservation { net: 0, mac: mac(5), ip: a("10.1.1.7"), hostname: Some("y".into()) }, // address again
    ];
    let mut h = H::new(DhcpServer::new(vec![Some(web())], res));
    for n in [1, 2, 3] {
        assert!(h.dora(mac(n)).octets()[3] >= 100, "pool address for {n}");
    }
    assert_eq!(h.dora(mac(4)), a("10.1.1.7"));
    assert_ne!(h.dora(mac(5)), a("10.1.1.7"));
    assert_eq!(h.s.hosts(), vec![(0, "x".to_string(), a("10.1.1.7"))]);
}

#[test]
fn pool_walk_skips_records_reservations_and_the_gateway() {
    // A pool that starts below the gateway and ends at the broadcast address.
    let mut net = web();
    net.range = Some((a("10.1.1.0"), a("10.1.1.255")));
    let res = vec![Reservation { net: 0, mac: mac(99), ip: a("10.1.1.3"), hostname: None }];
    let mut h = H::new(DhcpServer::new(vec![Some(net)], res));
    let got: Vec<u8> = (1..=6).map(|n| h.dora(mac(n)).octets()[3]).collect();
    assert_eq!(got, vec![2, 4, 5, 6, 7, 8]);
    // Released addresses are reused only when no never-used one is left.
    let mut net = web();
    net.range = Some((a("10.1.1.253"), a("10.1.1.255")));
    let mut h = H::new(DhcpServer::new(vec![Some(net)], Vec::new()));
    assert_eq!(h.dora(mac(1)), a("10.1.1.253"));
    assert_eq!(h.dora(mac(2)), a("10.1.1.254"));
    let mut rel = msg(mac(1), MessageType::Release);
    rel.set_ciaddr(a("10.1.1.253"));
    h.exchange(mac(1), &rel);
    assert_eq!(h.dora(mac(3)), a("10.1.1.253"));
    assert_eq!(h.send(mac(4), &discover(mac(4))).0, Err(Ignored::PoolExhausted));
}

/// The first Persist seq in `out`.
fn first_seq(out: &[Action]) -> u64 {
    out.iter().find_map(|x| if let Action::Persist { seq, .. } = x { Some(*seq) } else { None }).unwrap()
}

#[test]
fn an_ack_is_released_only_for_records_reported_on_disk() {
    let mut h = H::web();
    let (m1, m2) = (mac(1), mac(2));
    let (o, _) = h.exchange(m1, &discover(m1));
    let (r, out1) = h.send(m1, &select(m1, o[0].msg.yiaddr()));
    r.unwrap();
    let s1 = first_seq(&out1);
    let (o, _) = h.exchange(m2, &discover(m2));
    let (r, out2) = h.send(m2, &select(m2, o[0].msg.yiaddr()));
    r.unwrap();
    let s2 = first_seq(&out2);
    assert_eq!(h.s.held(), 2);
    // The writer reports only the second record durable (the first was lost, say): the first
    // ACK never goes out, the second does.
    let mut rel = Vec::new();
    h.s.committed(s2, s2, &mut rel);
    let (acks, _, _) = split(rel);
    assert_eq!(acks.len(), 1);
    assert_eq!(acks[0].dst_mac, m2);
    assert_eq!(h.s.held(), 0, "the unreported ACK is gone, not kept for a later range");
    let mut rel = Vec::new();
    h.s.committed(s1, s1, &mut rel);
    assert!(rel.is_empty());
}

#[test]
fn while_the_log_fails_new_leases_wait_and_durable_ones_renew_for_what_the_disk_knows() {
    let mut h = H::web();
    let m = mac(1);
    let ip = h.dora(m);
    h.s.set_store_ok(false);
    // A new client is not acknowledged (nor even held: its REQUEST is ignored).
    let c = mac(2);
    let (o, _) = h.exchange(c, &discover(c));
    let (r, out) = h.send(c, &select(c, o[0].msg.yiaddr()));
    assert_eq!(r, Err(Ignored::StoreFailing));
    assert!(out.is_empty());
    assert_eq!(h.s.counters().ignored_store_failing, 1);
    // The durable lease renews at once, for the time left on disk, without a record.
    h.now += 1000;
    let (r, out) = h.send(m, &renew(m, ip));
    r.unwrap();
    let (acks, recs, _) = split(out);
    assert!(recs.is_empty());
    assert_eq!(acks[0].mtype(), MessageType::Ack);
    assert_eq!(acks[0].opt(OptionCode::AddressLeaseTime), Some(&DhcpOption::AddressLeaseTime(3600 - 1000)));
    assert_eq!(h.s.counters().renewals_from_disk, 1);
    // Past the durable expiry nothing is confirmed.
    h.now = T0 + 3600;
    assert_eq!(h.send(m, &renew(m, ip)).0, Err(Ignored::StoreFailing));
    // The disk is back: everyone is served and records are written again.
    h.s.set_store_ok(true);
    let (acks, recs) = h.exchange(m, &renew(m, ip));
    assert_eq!(acks[0].mtype(), MessageType::Ack);
    assert_eq!(recs.len(), 1);
    h.dora(c);
}

#[test]
fn a_lease_acked_but_not_yet_durable_is_not_renewed_from_disk() {
    let mut h = H::web();
    let m = mac(1);
    let (o, _) = h.exchange(m, &discover(m));
    let ip = o[0].msg.yiaddr();
    let (r, _) = h.send(m, &select(m, ip));
    r.unwrap();
    // The writer fails before this record was reported: the disk knows nothing of it.
    h.s.set_store_ok(false);
    assert_eq!(h.send(m, &renew(m, ip)).0, Err(Ignored::StoreFailing));
}

#[test]
fn leases_follow_their_network_by_name_when_networks_are_reordered() {
    let db = DhcpNet {
        name: "db".into(),
        cidr: "10.1.2.0/24".parse().unwrap(),
        gateway: a("10.1.2.1"),
        range: Some((a("10.1.2.100"), a("10.1.2.199"))),
        ..web()
    };
    let mut s1 = DhcpServer::new(vec![Some(web()), Some(db.clone())], Vec::new());
    let mut h = H::new(DhcpServer::new(vec![Some(web())], Vec::new()));
    std::mem::swap(&mut h.s, &mut s1);
    let m = mac(1);
    let ip = h.dora(m);
    let log: Vec<String> = h.s.leases().iter().map(|l| h.s.encode(&LeaseRecord::Bind(l.clone()))).collect();
    // A new network is inserted first: web is now network 1.
    let other = DhcpNet { name: "new".into(), cidr: "10.1.3.0/24".parse().unwrap(), gateway: a("10.1.3.1"), range: Some((a("10.1.3.100"), a("10.1.3.199"))), ..web() };
    let mut s2 = DhcpServer::new(vec![Some(other), Some(db), Some(web())], Vec::new());
    let recs: Vec<LeaseRecord> = log.iter().filter_map(|l| s2.decode(l)).collect();
    s2.restore(recs, T0 + 10);
    assert_eq!(s2.lease_of(2, m), Some(ip));
    assert_eq!(s2.lease_of(0, m), None);
    assert_eq!(s2.leases().len(), 1);
}

#[test]
fn an_ack_that_reaches_the_disk_late_or_superseded_is_not_sent() {
    let mut h = H::web();
    let m = mac(1);
    let (o, _) = h.exchange(m, &discover(m));
    let ip = o[0].msg.yiaddr();
    let (r, out) = h.send(m, &select(m, ip));
    r.unwrap();
    let s1 = first_seq(&out);
    // The disk took 10 s: the client was told nothing, and is not told a lease longer than the
    // record now.
    h.now += 10;
    h.s.expire(h.now, &mut Vec::new());
    let mut rel = Vec::new();
    h.s.committed(s1, s1, &mut rel);
    assert!(split(rel).0.is_empty());
    assert_eq!(h.s.counters().acks_stale, 1);
    // Its retry is acknowledged at once; the record is on disk, so a renewal while the log
    // fails is answered from it.
    let (acks, _) = h.exchange(m, &renew(m, ip));
    assert_eq!(acks[0].mtype(), MessageType::Ack);
    // A REQUEST superseded by the next one before either reached the disk: only the newer ACK.
    h.now += 1;
    let (_, o1) = h.send(m, &renew(m, ip));
    h.now += 1;
    let (_, o2) = h.send(m, &renew(m, ip));
    let (a, b) = (first_seq(&o1), first_seq(&o2));
    let mut rel = Vec::new();
    h.s.committed(a, b, &mut rel);
    let (acks, _, _) = split(rel);
    assert_eq!(acks.len(), 1, "the older ACK announced a lease the record no longer has");
}

#[test]
fn pool_usage_counts_what_may_be_handed_out() {
    // A reservation inside the pool is counted once; the gateway never.
    let r = Reservation { net: 0, mac: mac(9), ip: a("10.1.1.150"), hostname: None };
    let wide = DhcpNet { range: Some((a("10.1.1.0"), a("10.1.1.255"))), ..web() };
    let mut h = H::new(DhcpServer::new(vec![Some(wide)], vec![r]));
    let u = h.s.pool_usage();
    assert_eq!((u[0].bound, u[0].size), (0, 253), "254 hosts without the gateway");
    h.dora(mac(1));
    assert_eq!(h.s.pool_usage()[0].bound, 1);
    let h2 = H::web();
    assert_eq!(h2.s.pool_usage()[0].size, 100);
}

#[test]
fn reload_keeps_leases_the_new_pool_allows_and_logs_the_others_free() {
    let mut h = H::web();
    let (m1, m2) = (mac(1), mac(2));
    let ip1 = h.dora(m1);
    let ip2 = h.dora(m2);
    assert_eq!((ip1, ip2), (a("10.1.1.100"), a("10.1.1.101")));
    // The pool shrinks to start at .101: the first lease is outside it now.
    let mut n = web();
    n.range = Some((a("10.1.1.101"), a("10.1.1.150")));
    let mut out = Vec::new();
    h.s.reconfigure(vec![Some(n.clone())], Vec::new(), |_| true, &mut out);
    let (_, recs, top) = split(out);
    assert_eq!(recs, vec![LeaseRecord::Free { net: 0, ip: ip1 }], "the lease outside the pool is released");
    let line = h.s.log_line(top.unwrap(), &recs[0]);
    assert!(line.line.contains("web") && line.line.contains("10.1.1.100"), "logged by network name: {}", line.line);
    assert_eq!(h.s.lease_of(0, m2), Some(ip2), "the lease inside it stays");
    assert_eq!(h.s.lease_of(0, m1), None);
    assert_eq!(h.s.counters().acks, 2, "counters carry on");
    // The network goes: its leases are released, logged under its old name.
    let mut out = Vec::new();
    h.s.reconfigure(vec![None], Vec::new(), |_| false, &mut out);
    let (_, recs, top) = split(out);
    assert_eq!(recs, vec![LeaseRecord::Free { net: 0, ip: ip2 }]);
    assert!(h.s.log_line(top.unwrap(), &recs[0]).line.contains("web"));
    assert_eq!(h.s.lease_of(0, m2), None);
}
