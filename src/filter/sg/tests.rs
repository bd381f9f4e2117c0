use super::*;
use crate::wire::ethernet::ethertype;
use crate::wire::ipv4;
use crate::config::schema::Proto;
use crate::config::types::Ipv4Net;

const GUEST: Ipv4Addr = Ipv4Addr::new(10, 1, 1, 11);
const PEER: Ipv4Addr = Ipv4Addr::new(10, 1, 1, 12);
const DHCP_GUEST: Ipv4Addr = Ipv4Addr::new(10, 1, 1, 150);
const PEER_MAC: MacAddr = MacAddr([0x52, 0x54, 0, 0, 0, 0x12]);
const DHCP_MAC: MacAddr = MacAddr([0x52, 0x54, 0, 0, 0, 0x50]);

/// An Ethernet + IPv4 + TCP/UDP (or ICMP echo) frame.
fn frame(src: Ipv4Addr, dst: Ipv4Addr, p: u8, sport: u16, dport: u16, tcp_flags: u8) -> Vec<u8> {
    let l4 = if p == proto::TCP { 20 } else { 8 };
    let mut f = vec![0u8; 14 + 20 + l4];
    f[12..14].copy_from_slice(&ethertype::IPV4.to_be_bytes());
    ipv4::emit_header(&mut f[14..34], src, dst, p, 64, l4, 1);
    let t = &mut f[34..];
    if p == proto::ICMP {
        t[0] = icmp::ECHO_REQUEST;
        t[4..6].copy_from_slice(&sport.to_be_bytes());
    } else {
        t[0..2].copy_from_slice(&sport.to_be_bytes());
        t[2..4].copy_from_slice(&dport.to_be_bytes());
    }
    if p == proto::TCP {
        t[12] = 5 << 4;
        t[13] = tcp_flags;
    }
    f
}

fn rule(protocol: Proto, ports: Option<&str>, cidr: Option<&str>, group: Option<u16>) -> SgRule {
    Rule { protocol, ports: ports.map(|p| p.parse().unwrap()), nets: cidr.iter().map(|c| c.parse::<Ipv4Net>().unwrap()).collect(), value: group }
}

/// Port 0 (GUEST) in group 0 "web": ingress tcp/22 from anywhere and anything from group 1
/// "admins"; egress anything. Port 1 (PEER) and port 2 (a DHCP guest) are in group 1.
fn groups() -> SecurityGroups {
    let admins = vec![rule(Proto::All, None, Some("0.0.0.0/0"), None)];
    let ports = vec![
        PortGroups {
            port: PortId(0),
            net: NetId(0),
            mac: None,
            addrs: vec![GUEST],
            groups: vec![0],
            ingress: vec![rule(Proto::Tcp, Some("22"), Some("0.0.0.0/0"), None), rule(Proto::All, None, None, Some(1))],
            egress: vec![rule(Proto::All, None, Some("0.0.0.0/0"), None)],
        },
        PortGroups { port: PortId(1), net: NetId(0), mac: Some(PEER_MAC), addrs: vec![PEER], groups: vec![1], ingress: admins.clone(), egress: admins.clone() },
        PortGroups { port: PortId(2), net: NetId(0), mac: Some(DHCP_MAC), addrs: vec![], groups: vec![1], ingress: admins.clone(), egress: admins },
    ];
    SecurityGroups::new(SgConfig { ports, timeouts: Timeouts::default() }, 4)
}

fn no_leases(_: Ipv4Addr) -> Option<(NetId, MacAddr)> {
    None
}

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const OUTSIDE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 5);

#[test]
fn ingress_allows_only_its_rules_and_replies_to_egress_pass() {
    let mut sg = groups();
    let t = Instant::ZERO;
    let p = PortId(0);
    assert!(sg.filtered(p) && !sg.filtered(PortId(3)));
    // tcp/22 in: allowed, and its reply out follows the flow.
    assert_eq!(sg.check_frame(t, p, Way::ToGuest, &frame(OUTSIDE, GUEST, proto::TCP, 40000, 22, SYN), &no_leases), Ok(()));
    assert_eq!(sg.check_frame(t, p, Way::FromGuest, &frame(GUEST, OUTSIDE, proto::TCP, 22, 40000, SYN | ACK), &no_leases), Ok(()));
    // tcp/80 in: refused.
    assert_eq!(sg.check_frame(t, p, Way::ToGuest, &frame(OUTSIDE, GUEST, proto::TCP, 40001, 80, SYN), &no_leases), Err(DropReason::SecurityGroup));
    // The guest's own connection out: its replies come in, whatever the port.
    assert_eq!(sg.check_frame(t, p, Way::FromGuest, &frame(GUEST, OUTSIDE, proto::TCP, 50000, 443, SYN), &no_leases), Ok(()));
    assert_eq!(sg.check_frame(t, p, Way::ToGuest, &frame(OUTSIDE, GUEST, proto::TCP, 443, 50000, SYN | ACK), &no_leases), Ok(()));
    // ... but not a different remote port posing as one.
    assert_eq!(sg.check_frame(t, p, Way::ToGuest, &frame(OUTSIDE, GUEST, proto::TCP, 444, 50000, ACK), &no_leases), Err(DropReason::SecurityGroup));
    // Echo out, reply in.
    assert_eq!(sg.check_frame(t, p, Way::FromGuest, &frame(GUEST, OUTSIDE, proto::ICMP, 7, 7, 0), &no_leases), Ok(()));
    let mut reply = frame(OUTSIDE, GUEST, proto::ICMP, 7, 7, 0);
    reply[34] = icmp::ECHO_REPLY;
    assert_eq!(sg.check_frame(t, p, Way::ToGuest, &reply, &no_leases), Ok(()));
    // DHCP and ARP always; IPv6 never.
    assert_eq!(sg.check_frame(t, p, Way::ToGuest, &frame(Ipv4Addr::new(10, 1, 1, 1), GUEST, proto::UDP, 67, 68, 0), &no_leases), Ok(()));
    let mut arp = vec![0u8; 42];
    arp[12..14].copy_from_slice(&ethertype::ARP.to_be_bytes());
    assert_eq!(sg.check_frame(t, p, Way::ToGuest, &arp, &no_leases), Ok(()));
    let mut v6 = vec![0u8; 60];
    v6[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
    assert_eq!(sg.check_frame(t, p, Way::FromGuest, &v6, &no_leases), Err(DropReason::SecurityGroup));
    assert_eq!(sg.stats.denied, 3);
}

#[test]
fn each_port_keeps_its_own_state() {
    let mut sg = groups();
    let t = Instant::ZERO;
    // PEER (port 1) may send anything, but GUEST's ingress decides on its own: tcp/80 from a
    // member of "admins" passes, the same from a non-member does not.
    let f = frame(PEER, GUEST, proto::TCP, 40000, 80, SYN);
    assert_eq!(sg.check_frame(t, PortId(1), Way::FromGuest, &f, &no_leases), Ok(()));
    assert_eq!(sg.check_frame(t, PortId(0), Way::ToGuest, &f, &no_leases), Ok(()));
    let stranger = Ipv4Addr::new(10, 1, 1, 99);
    assert_eq!(sg.check_frame(t, PortId(0), Way::ToGuest, &frame(stranger, GUEST, proto::TCP, 40000, 80, SYN), &no_leases), Err(DropReason::SecurityGroup));
}

#[test]
fn remote_group_follows_the_lease() {
    let mut sg = groups();
    let t = Instant::ZERO;
    let f = frame(DHCP_GUEST, GUEST, proto::TCP, 40000, 80, SYN);
    assert_eq!(sg.check_frame(t, PortId(0), Way::ToGuest, &f, &no_leases), Err(DropReason::SecurityGroup));
    let leased = |a: Ipv4Addr| (a == DHCP_GUEST).then_some((NetId(0), DHCP_MAC));
    assert_eq!(sg.check_frame(t, PortId(0), Way::ToGuest, &f, &leased), Ok(()));
    // The lease moved to another MAC (a port not in the group): no longer a member.
    let other = |a: Ipv4Addr| (a == DHCP_GUEST).then_some((NetId(0), MacAddr([2, 0, 0, 0, 0, 9])));
    let g = frame(DHCP_GUEST, GUEST, proto::TCP, 40001, 80, SYN);
    assert_eq!(sg.check_frame(t, PortId(0), Way::ToGuest, &g, &other), Err(DropReason::SecurityGroup));
}

#[test]
fn related_icmp_errors_pass() {
    let mut sg = groups();
    let t = Instant::ZERO;
    let out = frame(GUEST, OUTSIDE, proto::UDP, 5000, 53, 0);
    assert_eq!(sg.check_frame(t, PortId(0), Way::FromGuest, &out, &no_leases), Ok(()));
    // Port unreachable quoting that datagram.
    let quote = &out[14..14 + 28];
    let mut f = vec![0u8; 14 + 20 + 8 + quote.len()];
    f[12..14].copy_from_slice(&ethertype::IPV4.to_be_bytes());
    ipv4::emit_header(&mut f[14..34], OUTSIDE, GUEST, proto::ICMP, 64, 8 + quote.len(), 9);
    f[34] = icmp::DEST_UNREACH;
    f[35] = icmp::CODE_PORT_UNREACH;
    f[42..].copy_from_slice(quote);
    assert_eq!(sg.check_frame(t, PortId(0), Way::ToGuest, &f, &no_leases), Ok(()));
    assert_eq!(sg.stats.related_allowed, 1);
}
