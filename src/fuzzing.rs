//! Fuzz entry points, shared by the cargo-fuzz targets in fuzz/ and by the bounded smoke test
//! that runs in every `cargo test` (stable toolchain, no libFuzzer needed).

use crate::buf::PacketBuf;
use crate::datapath::{Datapath, DatapathConfig, NetSpec, PortSpec, Transmit};
use crate::router::{Forward, L3Config, NetL3, PublicL3};
use crate::switch::stats::DropReason;
use crate::switch::{NetId, PortId, Role, Security};
use crate::time::Instant;
use crate::wire::ethernet::MacAddr;
use crate::wire::vnet::VnetHdr;
use std::time::Duration;

struct Null(usize);
impl Transmit for Null {
    fn transmit(&mut self, _: PortId, _: Option<&VnetHdr>, f: &[u8]) -> Result<(), DropReason> {
        self.0 += f.len();
        Ok(())
    }
    fn transmit_udp(&mut self, _: PortId, _: u16, payload: &[u8], _: Option<usize>) -> Result<(), crate::datapath::Partial> {
        self.0 += payload.len();
        Ok(())
    }
}

/// The fuzz datapath's VXLAN peer.
const FUZZ_VTEP: [u8; 4] = [192, 0, 2, 11];

/// A datapath with every kind of port: access with/without security and offload, two trunks.
pub fn fuzz_datapath() -> Datapath {
    let mut dp = Datapath::new(fuzz_config(0).0);
    let (dhcp, nets, dns) = fuzz_services();
    dp.router_mut().set_services(Some(dhcp), nets, Some(dns));
    dp
}

/// The fuzz datapath's config, changed as `v`'s bits say (what a reload may do): 1 removes
/// port p2, 2 removes network b (and what is on it), 4 the forwards, 8 a backend, 16 p1's ssh
/// rule, 32 the static NAT, 64 web's egress rule, 128 adds a port p7.
fn fuzz_config(v: u8) -> (DatapathConfig, crate::build::ServiceSpec) {
    let acc = |n: &str, net, security, offload: bool| PortSpec {
        name: n.into(), ifname: n.into(), kind: "tap".into(), role: Role::Access { net, security }, offload: offload.into(), mac_limit: Some(8),
    };
    let sec = Security { mac: MacAddr([0x52, 0x54, 0, 0, 0, 1]), ip: Some([10, 1, 1, 11].into()), allowed: crate::switch::Allowed::default() };
    let mut c = DatapathConfig {
        router_mac: MacAddr([2, 0, 0, 0, 0, 1]),
        nets: vec![NetSpec { name: "a".into(), vlan: Some(101) }, NetSpec { name: "b".into(), vlan: Some(102) }],
        ports: vec![
            acc("p0", NetId(0), Some(sec), true),
            acc("p1", NetId(0), None, false),
            acc("p2", NetId(1), None, true),
            PortSpec { name: "t0".into(), ifname: "t0".into(), kind: "netdev".into(), role: Role::trunk(&[(101, NetId(0)), (102, NetId(1))]), offload: false.into(), mac_limit: None },
            PortSpec { name: "t1".into(), ifname: "t1".into(), kind: "netdev".into(), role: Role::trunk(&[(101, NetId(0))]), offload: true.into(), mac_limit: None },
            PortSpec { name: "public".into(), ifname: "pub".into(), kind: "tap".into(), role: Role::Public, offload: true.into(), mac_limit: Some(0) },
            PortSpec {
                name: "vxlan".into(),
                ifname: "192.0.2.11".into(),
                kind: "vxlan".into(),
                role: Role::Vtep { remote: FUZZ_VTEP.into(), vnis: crate::switch::VniMap::new([(5001, NetId(0))]), evpn: false, unicast_only: Vec::new() },
                offload: false.into(),
                mac_limit: None,
            },
        ],
        mac_aging: Duration::from_secs(300),
        mac_table_size: 64,
        security: fuzz_groups(),
        vxlan_mtu: 1450,
        pins: Vec::new(),
        l3: fuzz_l3(),
    };
    if v & 1 != 0 || v & 2 != 0 {
        c.ports[2] = PortSpec::vacant();
    }
    if v & 2 != 0 {
        c.nets[1] = NetSpec { name: String::new(), vlan: None };
        c.ports[3].role = Role::trunk(&[(101, NetId(0))]);
        c.l3.nets[1] = NetL3::vacant();
        c.l3.lbs[0].backends.retain(|b| b.net != NetId(1));
    }
    if v & 4 != 0 {
        c.l3.forwards.clear();
    }
    if v & 8 != 0 {
        c.l3.lbs[0].backends.remove(0);
    }
    if v & 16 != 0 {
        c.security.ports[0].ingress.remove(0);
    }
    if v & 32 != 0 {
        c.l3.static_nat.clear();
    }
    if v & 64 != 0 {
        c.l3.nets[0].egress = crate::filter::Classifier::new(Vec::new());
    }
    if v & 128 != 0 {
        c.ports.push(acc("p7", NetId(0), None, true));
    }
    let (dhcp, served, dns) = fuzz_service_specs();
    let mut dhcp = dhcp;
    if v & 2 != 0 {
        dhcp.1.retain(|r| r.net != 1);
    }
    (c, crate::build::ServiceSpec { dhcp: Some(dhcp), served, dns: Some(dns) })
}

/// Applies config variant `v` to the fuzz datapath, as a reload would.
pub fn fuzz_reload(dp: &mut Datapath, now: Instant, v: u8) {
    let (c, spec) = fuzz_config(v);
    let old_ports: Vec<String> = (0..dp.port_count()).map(|i| dp.port_name(PortId(i as u16)).to_string()).collect();
    let old_nets: Vec<String> = (0..2).map(|i| dp.net_name(NetId(i)).to_string()).collect();
    let new_ports: Vec<String> = c.ports.iter().map(|p| p.name.clone()).collect();
    let new_nets: Vec<String> = c.nets.iter().map(|n| n.name.clone()).collect();
    let same_port = |p: PortId| {
        let i = p.0 as usize;
        matches!((old_ports.get(i), new_ports.get(i)), (Some(a), Some(b)) if !a.is_empty() && a != "?" && a == b)
    };
    let same_net = |n: NetId| {
        let i = n.0 as usize;
        matches!((old_nets.get(i), new_nets.get(i)), (Some(a), Some(b)) if !a.is_empty() && a != "?" && a == b)
    };
    let svc = crate::router::reload::Services { spec, metadata_enabled: true, vms: Vec::new() };
    dp.reconfigure(now, c, svc, &same_port, &same_net);
}

/// Port p1 in a group: ssh from anywhere, everything from members (p0's address), all out.
fn fuzz_groups() -> crate::filter::sg::SgConfig {
    use crate::config::schema::Proto;
    use crate::filter::Rule;
    let any = || vec!["0.0.0.0/0".parse().expect("net")];
    crate::filter::sg::SgConfig {
        ports: vec![crate::filter::sg::PortGroups {
            port: PortId(1),
            net: NetId(0),
            mac: Some(MacAddr([0x52, 0x54, 0, 0, 0, 2])),
            addrs: vec![[10, 1, 1, 12].into()],
            groups: vec![0],
            ingress: vec![
                Rule { protocol: Proto::Tcp, ports: Some("22".parse().expect("port")), nets: any(), value: None },
                Rule { protocol: Proto::All, ports: None, nets: Vec::new(), value: Some(0) },
            ],
            egress: vec![Rule { protocol: Proto::All, ports: None, nets: any(), value: None }],
        }],
        timeouts: Default::default(),
    }
}

/// DHCP on network "a" (pool and a reservation), DNS for "fuzz.internal" with an upstream.
fn fuzz_services() -> (crate::dhcp::DhcpServer, Vec<bool>, crate::dns::DnsServer) {
    let ((nets, res), served, dns) = fuzz_service_specs();
    (crate::dhcp::DhcpServer::new(nets, res), served, crate::dns::DnsServer::new(dns))
}

type DhcpSpec = (Vec<Option<crate::dhcp::DhcpNet>>, Vec<crate::dhcp::Reservation>);

fn fuzz_service_specs() -> (DhcpSpec, Vec<bool>, crate::dns::DnsConfig) {
    use crate::dhcp::{DhcpNet, Reservation};
    let net = DhcpNet {
        name: "a".into(),
        cidr: "10.1.1.0/24".parse().expect("cidr"),
        gateway: [10, 1, 1, 1].into(),
        range: Some(([10, 1, 1, 100].into(), [10, 1, 1, 110].into())),
        lease_secs: 600,
        mtu: 1400,
        domain: Some("fuzz.internal".into()),
        routes: vec![("0.0.0.0/0".parse().expect("net"), [10, 1, 1, 1].into())],
    };
    let dhcp = (
        vec![Some(net), None],
        vec![Reservation { net: 0, mac: MacAddr([0x52, 0x54, 0, 0, 0, 1]), ip: [10, 1, 1, 11].into(), hostname: Some("one".into()) }],
    );
    let dns = crate::dns::DnsConfig {
        domains: vec!["fuzz.internal".into()],
        nets: vec!["10.1.1.0/24".parse().expect("net"), "10.1.2.0/24".parse().expect("net")],
        upstreams: vec!["127.0.0.1:53".parse().expect("addr")],
        cache_entries: 64,
        upstream_timeout_ms: 500,
    };
    (dhcp, vec![true, false], dns)
}

/// The DHCP server on any client message (as if from a guest of network "a"). Never panics.
pub fn dhcp(data: &[u8]) {
    let (mut d, _, _) = fuzz_services();
    let mut out = Vec::new();
    let mac = MacAddr([0x52, 0x54, 0, 0, 0, data.first().copied().unwrap_or(2)]);
    let _ = d.handle(1_000, 1_000, 0, 0, mac, data, &mut out);
    d.committed(0, u64::MAX, &mut out);
    d.expire(10_000, &mut out);
}

/// The DNS server on any query and any upstream answer. Never panics.
pub fn dns(data: &[u8]) {
    let (_, _, mut d) = fuzz_services();
    let mut out = Vec::new();
    let _ = d.query(Instant(1), crate::dns::Client { id: 1 }, crate::dns::Transport::Udp, data, &mut out);
    let _ = d.query(Instant(1), crate::dns::Client { id: 2 }, crate::dns::Transport::Tcp, data, &mut out);
    d.upstream_answer(Instant(2), "127.0.0.1:53".parse().expect("addr"), data, &mut out);
    d.poll(Instant(10_000), &mut out);
}

/// The router of the fuzz datapath: both networks routed, a public side with every kind of
/// rule, and a small conntrack table so eviction and refusal are reached.
fn fuzz_l3() -> L3Config {
    use crate::config::schema::{Action, Proto};
    use crate::filter::{Classifier, Rule};
    let net = |cidr: &str, gw: [u8; 4], rules| NetL3 {
        domain: None,
        cidr: cidr.parse().expect("cidr"),
        gateway: Some(gw.into()),
        mtu: 1400,
        egress: Classifier::new(rules),
        egress_default: Action::Allow,
    };
    let deny25 = vec![Rule { protocol: Proto::Tcp, ports: Some("25".parse().expect("port")), nets: vec!["0.0.0.0/0".parse().expect("net")], value: Action::Deny }];
    let mut firewall = std::collections::HashMap::new();
    firewall.insert(
        [203, 0, 113, 11].into(),
        Classifier::new(vec![Rule { protocol: Proto::All, ports: None, nets: vec!["198.51.100.0/24".parse().expect("net")], value: () }]),
    );
    L3Config {
        nets: vec![net("10.1.1.0/24", [10, 1, 1, 1], deny25), net("10.1.2.0/24", [10, 1, 2, 1], Vec::new())],
        public: Some(PublicL3 {
            ips: vec!["203.0.113.10/24".parse().expect("ip"), "203.0.113.11/24".parse().expect("ip")],
            gateway: [203, 0, 113, 1].into(),
            source_nat_ip: [203, 0, 113, 10].into(),
            mtu: 1400,
        }),
        static_nat: vec![([203, 0, 113, 11].into(), [10, 1, 2, 11].into())],
        forwards: vec![Forward {
            protocol: 6,
            public_ip: [203, 0, 113, 10].into(),
            public_port: "2222".parse().expect("port"),
            private_ip: [10, 1, 1, 11].into(),
            private_port: "22".parse().expect("port"),
        }],
        firewall,
        vpn: Some(fuzz_vpn()),
        conntrack_max: 256,
        lbs: vec![crate::lb::LbSpec {
            name: "lb".into(),
            vip: [203, 0, 113, 10].into(),
            proto: 6,
            port: 80,
            algorithm: crate::config::schema::Algorithm::Leastconn,
            backends: vec![
                crate::lb::BackendSpec { ip: [10, 1, 1, 11].into(), port: 8080, weight: 2, net: NetId(0) },
                crate::lb::BackendSpec { ip: [10, 1, 2, 11].into(), port: 8080, weight: 1, net: NetId(1) },
            ],
            check: Some(crate::lb::CheckSpec {
                kind: crate::lb::CheckKind::Http { path: "/h".into(), expect: 200 },
                interval: Duration::from_millis(700),
                timeout: Duration::from_millis(300),
                rise: 1,
                fall: 1,
            }),
        }],
        ..Default::default()
    }
}

/// Private key of the fuzz router's WireGuard endpoint, and of its one site peer (whose
/// handshakes the smoke run makes for real, so data messages reach the router's path).
pub const FUZZ_WG_ROUTER: [u8; 32] = [7; 32];
pub const FUZZ_WG_PEER: [u8; 32] = [9; 32];

/// WireGuard on 203.0.113.10:51820: a site behind 192.168.50.0/24, a road warrior at
/// 10.250.0.5 reaching the first network only.
fn fuzz_vpn() -> crate::vpn::VpnSpec {
    use crate::vpn::{Key, PeerSpec, VpnSpec};
    VpnSpec {
        listen: "203.0.113.10:51820".parse().expect("listen"),
        private_key: Key(FUZZ_WG_ROUTER),
        address: "10.250.0.1/24".parse().expect("address"),
        mtu: 1320,
        peers: vec![
            PeerSpec {
                name: "site".into(),
                public_key: Key(FUZZ_WG_PEER).public(),
                preshared_key: None,
                endpoint: Some("198.51.100.5:51820".parse().expect("endpoint")),
                allowed_ips: vec!["192.168.50.0/24".parse().expect("net")],
                nets: None,
                keepalive: Some(5),
            },
            PeerSpec {
                name: "laptop".into(),
                public_key: Key([11; 32]).public(),
                preshared_key: None,
                endpoint: None,
                allowed_ips: vec!["10.250.0.5/32".parse().expect("net")],
                nets: Some(vec![NetId(0)]),
                keepalive: None,
            },
        ],
    }
}

/// Interprets `data` as a sequence of (port, vnet header, frame) records and runs them through
/// one datapath; a record starting with 0xff is a reload to config variant `data[1]` instead.
/// Must never panic, and after every step no flow or learned MAC may point at something the
/// config no longer has ([`Datapath::audit`]).
pub fn datapath(dp: &mut Datapath, data: &[u8]) {
    let mut rest = data;
    let mut t = 0u64;
    let mut sink = Null(0);
    let mut b = PacketBuf::new();
    while rest.len() >= 13 {
        if rest[0] == 0xff {
            t += 1000;
            fuzz_reload(dp, Instant::from_millis(t), rest[1]);
            rest = &rest[2..];
            if let Err(e) = dp.audit() {
                panic!("after a reload: {e}");
            }
            continue;
        }
        let port = PortId((rest[0] as usize % dp.port_count()) as u16);
        let len = u16::from_le_bytes([rest[1], rest[2]]) as usize;
        let vnet = VnetHdr::parse(&rest[3..13]).unwrap_or_default();
        rest = &rest[13..];
        let take = len.min(rest.len());
        let record = &rest[..take];
        rest = &rest[take..];
        t += 1000;
        if dp.port_name(port) == "vxlan" {
            // Datagrams from the peer, or (odd lengths) from a stranger; the header's segment
            // size, when set, cuts the record into a GRO batch of datagrams that size.
            let from = if len.is_multiple_of(2) { FUZZ_VTEP.into() } else { std::net::Ipv4Addr::new(192, 0, 2, 99) };
            let seg = if vnet.gso_size > 0 { vnet.gso_size as usize } else { take };
            dp.vxlan_batch(Instant::from_millis(t), from, record, seg, &mut b, &mut sink);
        } else {
            b.load(record, vnet);
            dp.process(Instant::from_millis(t), port, &mut b, &mut sink);
        }
        dp.poll(Instant::from_millis(t), &mut sink);
        if let Err(e) = dp.audit() {
            panic!("{e}");
        }
    }
}

/// Wire parsers (Ethernet, 802.1Q, virtio_net_hdr, IPv4, ARP, quoted ICMP errors), the NAT
/// rewrites and the software offload path on arbitrary bytes. Must never panic.
pub fn wire(data: &[u8]) {
    use crate::conntrack::Key;
    use crate::wire::{arp::ArpPacket, ethernet::EthernetFrame, ipv4::Ipv4Packet, vlan::VlanFrame};
    let _ = EthernetFrame::new_checked(data).map(|f| (f.dst(), f.src(), f.ethertype()));
    let _ = VlanFrame::new_checked(data).map(|v| (v.vid(), v.inner_ethertype()));
    let _ = ArpPacket::new_checked(data).map(|a| (a.operation(), a.sender_ip(), a.target_ip()));
    if let Ok(p) = Ipv4Packet::new_checked(data) {
        let _ = (p.verify_checksum(), p.src(), p.dst(), p.frag_offset(), p.payload().len());
        let _ = crate::nat::quoted_key(p.payload());
        let from = Key { src: p.src(), dst: p.dst(), sport: 1, dport: 2, proto: p.protocol() };
        let to = Key { src: [203, 0, 113, 10].into(), sport: 1024, ..from };
        let mut copy = data.to_vec();
        crate::nat::rewrite(&mut copy, data.first().is_some_and(|b| b & 1 == 1), &from, &to);
        let mut copy = data.to_vec();
        let _ = crate::nat::rewrite_icmp_error(&mut copy, to.src, to.dst, &from, &to);
    }
    // A metadata request head (what a guest sends to port 80 / 8080).
    if let Ok((req, _)) = crate::metadata::Request::parse(data) {
        let vm = crate::metadata::Vm { public_keys: vec!["k".into()], user_data: Some(data.to_vec()), ..Default::default() };
        let _ = crate::metadata::answer(&req, Some(&vm)).encode(req.method == "HEAD", req.keep_alive);
        let _ = crate::metadata::password(&req, &mut Some("p".into()));
    }
    if let Ok(h) = VnetHdr::parse(data) {
        let mut scratch = vec![0u8; crate::buf::BUF_SIZE];
        let _ = crate::offload::finish(data.get(10..).unwrap_or(&[]), &h, &mut scratch, &mut |_| {});
    }
}

/// BGP: the codec on arbitrary bytes, and a speaker with an established session fed them as
/// a neighbour's stream (in chunks, as reads split it). Never a panic; the learned routes
/// stay within the neighbour's cap; a session the bytes broke is down with an error counted.
pub fn bgp(data: &[u8]) {
    bgp_run(data);
}

/// [`bgp`], returning the routes the session holds and the errors it sent at the end.
pub fn bgp_run(data: &[u8]) -> (usize, u64) {
    use crate::bgp::{EvpnNet, NeighborSpec, Speaker, SpeakerConfig};
    use crate::wire::bgp::{self as wire, Rd, RouteTarget};
    let _ = wire::frame(data);
    let _ = wire::parse(data);
    let me = std::net::Ipv4Addr::new(192, 0, 2, 2);
    let peer = std::net::Ipv4Addr::new(192, 0, 2, 1);
    let cfg = SpeakerConfig {
        asn: 65000,
        router_id: me,
        local: me,
        nets: vec![EvpnNet { name: "web".into(), vni: 5001, rd: Rd::ip(me, 1), route_targets: vec![RouteTarget { asn: 65000, value: 5001 }] }],
        neighbors: vec![NeighborSpec { addr: peer, remote_as: 65000, hold_secs: 9, keepalive_secs: 3, max_routes: 64 }],
    };
    let mut sp = Speaker::new(cfg);
    let now = Instant::from_secs(1);
    sp.poll(now);
    sp.connected(now, peer);
    sp.received(now, peer, &wire::open(65000, 9, peer));
    sp.received(now, peer, &wire::keepalive());
    sp.set_local(now, [(5001, [2, 0, 0, 0, 0, 1], None)].into_iter().collect());
    let mut at = 0;
    while at < data.len() {
        let n = 1 + (data[at] as usize * 7) % 900;
        let end = (at + n).min(data.len());
        sp.received(now, peer, &data[at..end]);
        at = end;
    }
    let _ = sp.take_io();
    let s = sp.snapshot(now);
    assert!(s.neighbors[0].routes_in <= 64, "over the cap: {}", s.neighbors[0].routes_in);
    let _ = serde_json::to_string(&s);
    (s.neighbors[0].routes_in, s.neighbors[0].counters.errors_sent)
}

/// Config parsing must turn any text into a config or diagnostics, never a panic.
pub fn config(data: &[u8]) {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = crate::config::parse(s, std::path::Path::new("fuzz.toml"));
    }
}

#[cfg(test)]
mod tests {
    use crate::wire::vnet::Gso;

    /// Frames the datapath sends on one port.
    struct Capture(crate::switch::PortId, Vec<Vec<u8>>);
    impl crate::datapath::Transmit for Capture {
        fn transmit(&mut self, p: crate::switch::PortId, _: Option<&crate::wire::vnet::VnetHdr>, f: &[u8]) -> Result<(), crate::switch::stats::DropReason> {
            if p == self.0 {
                self.1.push(f.to_vec());
            }
            Ok(())
        }
    }

    /// The tunnel port under fire with a real peer's session up: its data messages mutated,
    /// replayed, cut short, re-typed, and handshakes from strangers and replayed initiations,
    /// all through the public port. Nothing panics, the datapath stays consistent, and every
    /// refusal is counted by a VPN reason.
    #[test]
    fn wireguard_fuzz() {
        use boringtun::noise::{Tunn, TunnResult};
        use boringtun::x25519::{PublicKey, StaticSecret};
        use crate::buf::PacketBuf;
        use crate::switch::stats::DropReason;
        use crate::time::Instant;
        let mut dp = super::fuzz_datapath();
        let public = dp.port_id("public").unwrap();
        let mut cap = Capture(public, Vec::new());
        let gw_mac = [0x52, 0x54, 0, 0, 9, 1];
        let frame = |payload: &[u8]| {
            let mut out = Vec::new();
            etherparse::PacketBuilder::ethernet2(gw_mac, [2, 0, 0, 0, 0, 1]).ipv4([198, 51, 100, 5], [203, 0, 113, 10], 60).udp(51820, 51820).write(&mut out, payload).unwrap();
            out
        };
        let mut t = 1_000u64;
        let mut feed = |dp: &mut crate::datapath::Datapath, cap: &mut Capture, f: &[u8]| {
            t += 10;
            let mut b = PacketBuf::from_frame(f, Default::default());
            dp.process(Instant::from_millis(t), public, &mut b, cap);
            dp.poll(Instant::from_millis(t), cap);
            dp.audit().unwrap();
        };
        // The public gateway answers ARP, so the router's answers leave at once.
        let mut arp = vec![0u8; 42];
        arp[0..6].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        arp[6..12].copy_from_slice(&gw_mac);
        arp[12..14].copy_from_slice(&[8, 6]);
        crate::wire::arp::ArpRepr { operation: 2, sender_mac: crate::wire::ethernet::MacAddr(gw_mac), sender_ip: [203, 0, 113, 1].into(), target_mac: crate::wire::ethernet::MacAddr([2, 0, 0, 0, 0, 1]), target_ip: [203, 0, 113, 10].into() }.emit(&mut arp[14..]);
        feed(&mut dp, &mut cap, &arp);
        let router_pub = PublicKey::from(&StaticSecret::from(super::FUZZ_WG_ROUTER));
        let mut peer = Tunn::new(StaticSecret::from(super::FUZZ_WG_PEER), router_pub, None, None, 1, None);
        let mut buf = vec![0u8; 4096];
        let mut inner = Vec::new();
        etherparse::PacketBuilder::ipv4([192, 168, 50, 10], [10, 1, 1, 11], 64).udp(1, 2).write(&mut inner, b"x").unwrap();
        let TunnResult::WriteToNetwork(init) = peer.encapsulate(&inner, &mut buf) else { panic!() };
        let init = init.to_vec();
        feed(&mut dp, &mut cap, &frame(&init));
        let resp = cap.1.iter().rev().find(|f| f.len() > 42 && f[42] == 2).expect("a handshake response").clone();
        let mut out = vec![0u8; 4096];
        let TunnResult::WriteToNetwork(ka) = peer.decapsulate(Some([203, 0, 113, 10].into()), &resp[42..], &mut out) else { panic!() };
        let ka = ka.to_vec();
        feed(&mut dp, &mut cap, &frame(&ka));
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for i in 0..3000 {
            let n = 20 + (next() % 1400) as usize;
            let mut pkt = inner.clone();
            pkt.resize(n.max(inner.len()), 0);
            let len = pkt.len() as u16;
            pkt[2..4].copy_from_slice(&len.to_be_bytes());
            // Sources inside and outside the peer's allowed_ips, to every kind of destination.
            pkt[12..16].copy_from_slice(&[[192, 168, 50, 10], [172, 16, 9, 9], [10, 1, 1, 11]][(next() % 3) as usize]);
            pkt[16..20].copy_from_slice(&[[10, 1, 1, 11], [10, 1, 2, 11], [10, 250, 0, 1], [203, 0, 113, 10], [8, 8, 8, 8]][(next() % 5) as usize]);
            pkt[9] = [17u8, 6, 1][(next() % 3) as usize];
            pkt[10] = 0;
            pkt[11] = 0;
            let c = crate::wire::checksum::checksum(&pkt[..20]);
            pkt[10..12].copy_from_slice(&c.to_be_bytes());
            let TunnResult::WriteToNetwork(d) = peer.encapsulate(&pkt, &mut buf) else { continue };
            let mut d = d.to_vec();
            match i % 6 {
                0 => {}
                1 => {
                    let at = (next() as usize) % d.len();
                    d[at] ^= (next() as u8) | 1;
                }
                2 => d.truncate((next() as usize) % d.len()),
                3 => d[0] = (next() % 6) as u8,
                4 => feed(&mut dp, &mut cap, &frame(&d)), // sent twice: the second is a replay
                _ => d = if next() % 2 == 0 { init.clone() } else { (0..(next() % 200) as usize).map(|_| next() as u8).collect() },
            }
            feed(&mut dp, &mut cap, &frame(&d));
        }
        let st = dp.stats(public).unwrap();
        for r in [DropReason::VpnReplay, DropReason::VpnMalformed, DropReason::VpnSourceNotAllowed] {
            assert!(st.drops[r as usize] > 0, "{} never counted: {:?}", r.name(), st.drops);
        }
        let row = dp.router().vpn_row(Instant::from_millis(t)).unwrap();
        assert!(row.peers[0].counters.rx_packets > 500, "{row:?}");
    }

    /// The BGP target on FRR's own messages (captured) and this speaker's, mutated: flipped
    /// bytes, cut, lengths rewritten, messages spliced.
    #[test]
    fn bgp_fuzz() {
        use crate::wire::bgp as wire;
        let hex = |s: &str| -> Vec<u8> { (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect() };
        let me = std::net::Ipv4Addr::new(192, 0, 2, 1);
        let attrs = wire::Attrs {
            next_hop: Some(me),
            local_pref: Some(100),
            route_targets: vec![wire::RouteTarget { asn: 65000, value: 5001 }],
            vxlan_encap: true,
            mac_seq: Some(3),
            pmsi: Some((6, 5001, me)),
            ..Default::default()
        };
        let routes: Vec<wire::Route> = (0..40u8)
            .map(|i| wire::Route::Mac { rd: wire::Rd::ip(me, 1), tag: 0, mac: [2, 0, 0, 0, 1, i], ip: (i % 2 == 0).then_some([10, 1, 1, i].into()), vni: 5001 })
            .chain([wire::Route::Imet { rd: wire::Rd::ip(me, 1), tag: 0, origin: me }])
            .collect();
        let seeds: Vec<Vec<u8>> = vec![
            // FRR 8.4.4's type-2 and type-3 UPDATEs (see wire::bgp's tests).
            hex("ffffffffffffffffffffffffffffffff008c0200000075900e004f00194604c000020c0002210001c000020c000200000000000000000000000000003096d0813b39700000138902210001c000020c0002000000000000000000000000000030aabbccddeeff00001389400101005002000040050400000064c01010030c0000000000080002fde800001389"),
            hex("ffffffffffffffffffffffffffffffff0065020000004e900e001c00194604c000020c0003110001c000020c00020000000020c000020c400101005002000040050400000064c01010030c0000000000080002fde800001389c016090006001389c000020c"),
            wire::update_reach(&attrs, &routes),
            wire::update_unreach(&routes[..10]),
            wire::route_refresh(),
            wire::keepalive(),
            wire::end_of_rib(),
        ];
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let iters: usize = std::env::var("VROUTER_FUZZ_ITERS").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000);
        let (mut learned, mut refused) = (0, 0);
        for _ in 0..iters {
            let mut d = Vec::new();
            for _ in 0..(1 + next() % 4) {
                let mut m = seeds[(next() % seeds.len() as u64) as usize].clone();
                match next() % 5 {
                    0 => {
                        for _ in 0..(1 + next() % 4) {
                            let i = (next() as usize) % m.len();
                            m[i] = next() as u8;
                        }
                    }
                    1 => m.truncate((next() as usize) % m.len()),
                    2 => {
                        // A length field inside the body says something else.
                        let i = 19 + (next() as usize) % (m.len() - 19).max(1);
                        if i < m.len() {
                            m[i] = m[i].wrapping_add(1 + (next() % 8) as u8);
                        }
                    }
                    3 => {
                        let l = (m.len() as u16).wrapping_add((next() % 16) as u16).wrapping_sub(8);
                        m[16..18].copy_from_slice(&l.to_be_bytes());
                    }
                    _ => {}
                }
                d.extend_from_slice(&m);
            }
            let (r, e) = super::bgp_run(&d);
            learned += (r > 0) as usize;
            refused += (e > 0) as usize;
        }
        // Both sides of the target were exercised: sessions that learned, sessions closed.
        assert!(learned > iters / 20 && refused > iters / 20, "learned in {learned}, errors in {refused} of {iters}");
        // Unmutated, the seeds are taken whole (44 routes, 10 withdrawn); 80 more reach the cap
        // of 64, which holds without an error.
        let whole: Vec<u8> = seeds.iter().flatten().copied().collect();
        assert_eq!(super::bgp_run(&whole), (34, 0));
        let more: Vec<wire::Route> = (0..80u8).map(|i| wire::Route::Mac { rd: wire::Rd::ip(me, 2), tag: 0, mac: [2, 0, 0, 0, 2, i], ip: None, vni: 5001 }).collect();
        let big = [whole, wire::update_reach(&attrs, &more)].concat();
        assert_eq!(super::bgp_run(&big), (64, 0), "the cap is reached and holds, no error");
    }

    /// A bounded smoke run of the fuzz targets on pseudo-random and mutated inputs.
    #[test]
    fn fuzz_smoke() {
        let mut dp = super::fuzz_datapath();
        let mut x: u64 = std::env::var("VROUTER_FUZZ_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(0x9e37_79b9_7f4a_7c15) | 1;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        // VROUTER_FUZZ_ITERS runs a longer stress locally (stable toolchain, no libFuzzer).
        let iters: usize = std::env::var("VROUTER_FUZZ_ITERS").ok().and_then(|v| v.parse().ok()).unwrap_or(50_000);
        for _ in 0..iters {
            // One input = a few records: [port][len u16][vnet 10][frame]. Most are plausible
            // (broadcast or learned-looking destinations, IPv4/IPv6/VLAN/QinQ/ARP ethertypes,
            // valid-looking offload headers), then randomly corrupted.
            let mut d = Vec::new();
            for _ in 0..(1 + next() % 4) {
                let n = 14 + (next() % 1600) as usize;
                let mut frame: Vec<u8> = (0..n).map(|_| next() as u8).collect();
                if next() % 2 == 0 {
                    frame[..6].copy_from_slice(&[0xff; 6]);
                }
                frame[6] &= 0xfe; // unicast sources, so learning runs
                let et: [u8; 2] = [[0x08, 0x00], [0x81, 0x00], [0x88, 0xa8], [0x86, 0xdd], [0x08, 0x06]][(next() % 5) as usize];
                frame[12..14].copy_from_slice(&et);
                if et == [0x81, 0x00] && n > 18 {
                    frame[14] = 0;
                    frame[15] = [101u8, 102, 7][(next() % 3) as usize];
                    frame[16..18].copy_from_slice(&[0x08, 0x00]);
                }
                if et == [0x08, 0x00] && n > 34 {
                    frame[14] = 0x45;
                    frame[16..18].copy_from_slice(&((n - 14) as u16).to_be_bytes());
                    frame[23] = [6u8, 17, 1][(next() % 3) as usize];
                    // Routed traffic: to the router's MAC, between plausible addresses, with a
                    // header checksum that mostly verifies, so the L3 stages run deep.
                    if next() % 2 == 0 {
                        const ADDRS: [[u8; 4]; 11] = [
                            [10, 1, 1, 11], [10, 1, 1, 12], [10, 1, 2, 11], [198, 51, 100, 5], [203, 0, 113, 10],
                            [203, 0, 113, 11], [10, 1, 1, 1], [203, 0, 113, 1], [192, 0, 2, 9], [192, 168, 50, 10], [10, 250, 0, 5],
                        ];
                        frame[..6].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
                        frame[20] = [0x40u8, 0, 0x20, 0x00][(next() % 4) as usize];
                        frame[21] = if next() % 4 == 0 { next() as u8 } else { 0 };
                        frame[22] = (next() % 4) as u8 * 32;
                        frame[26..30].copy_from_slice(&ADDRS[(next() % 11) as usize]);
                        frame[30..34].copy_from_slice(&ADDRS[(next() % 11) as usize]);
                        if n > 38 {
                            let p = [[0x08, 0xae], [0, 80], [0, 53], [0, 25], [0, 22], [0, 67], [0xca, 0x6c]][(next() % 7) as usize];
                            frame[36..38].copy_from_slice(&p);
                            if p == [0xca, 0x6c] && n > 46 {
                                // A WireGuard message type, to the tunnel endpoint.
                                frame[42..46].copy_from_slice(&[1 + (next() % 4) as u8, 0, 0, 0]);
                            }
                            if p == [0, 67] {
                                // A DHCP client: 0.0.0.0:68 -> broadcast:67, or a rogue server's reply.
                                frame[..6].copy_from_slice(&[0xff; 6]);
                                frame[26..30].copy_from_slice(&[0, 0, 0, 0]);
                                frame[30..34].copy_from_slice(&[255; 4]);
                                frame[34..36].copy_from_slice(&[0, 68]);
                                if next() % 4 == 0 {
                                    frame[34..38].copy_from_slice(&[0, 67, 0, 68]);
                                }
                            }
                            if frame[23] == 1 {
                                frame[34] = [8u8, 0, 3, 11][(next() % 4) as usize];
                            }
                            if frame[23] == 6 && n > 48 {
                                frame[47] = [0x02u8, 0x12, 0x10, 0x11, 0x04][(next() % 5) as usize];
                            }
                        }
                        if frame[34] == 3 || frame[34] == 11 {
                            // An ICMP error quoting one of the flows above.
                            let q = 34 + 8;
                            if n > q + 28 {
                                frame[q] = 0x45;
                                frame[q + 9] = 17;
                                frame[q + 12..q + 16].copy_from_slice(&ADDRS[(next() % 11) as usize]);
                                frame[q + 16..q + 20].copy_from_slice(&ADDRS[(next() % 11) as usize]);
                            }
                        }
                        frame[24] = 0;
                        frame[25] = 0;
                        let c = crate::wire::checksum::checksum(&frame[14..34]);
                        frame[24..26].copy_from_slice(&c.to_be_bytes());
                    }
                }
                if et == [0x08, 0x06] && n >= 42 && next() % 2 == 0 {
                    // ARP that teaches the router neighbours, so forwarding reaches egress.
                    const ARP: [([u8; 4], [u8; 4]); 4] = [
                        ([10, 1, 1, 11], [10, 1, 1, 1]),
                        ([10, 1, 2, 11], [10, 1, 2, 1]),
                        ([203, 0, 113, 1], [203, 0, 113, 10]),
                        ([198, 51, 100, 5], [203, 0, 113, 10]),
                    ];
                    let (spa, tpa) = ARP[(next() % 4) as usize];
                    frame[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1 + (next() % 2) as u8]);
                    let sha: [u8; 6] = frame[6..12].try_into().unwrap_or([2; 6]);
                    frame[22..28].copy_from_slice(&sha);
                    frame[28..32].copy_from_slice(&spa);
                    frame[38..42].copy_from_slice(&tpa);
                }
                let mut vnet = [0u8; 10];
                if next() % 2 == 0 {
                    let v = crate::wire::vnet::VnetHdr {
                        needs_csum: true,
                        gso: [Gso::None, Gso::TcpV4, Gso::TcpV6, Gso::UdpL4][(next() % 4) as usize],
                        gso_size: (next() % 2000) as u16,
                        hdr_len: 54,
                        csum_start: [34u16, 38, 14, 0][(next() % 4) as usize],
                        csum_offset: [16u16, 6, 12][(next() % 3) as usize],
                        ..Default::default()
                    };
                    v.emit(&mut vnet);
                }
                if next() % 8 == 0 {
                    let at = (next() as usize) % frame.len();
                    frame[at] ^= next() as u8;
                }
                // The IP packet alone (and with its first byte made IPv4-like) through the wire
                // parsers and NAT rewrites.
                let mut ip = frame[14.min(frame.len())..].to_vec();
                super::wire(&ip);
                if let Some(b) = ip.first_mut() {
                    *b = 0x45;
                    super::wire(&ip);
                }
                if next() % 16 == 0 {
                    // A reload between frames, to a random variant of the config.
                    d.extend_from_slice(&[0xff, next() as u8]);
                }
                d.push(next() as u8);
                d.extend_from_slice(&(frame.len() as u16).to_le_bytes());
                d.extend_from_slice(&vnet);
                d.extend_from_slice(&frame);
            }
            if next() % 4 == 0 {
                d.truncate((next() as usize) % d.len().max(1));
            }
            super::datapath(&mut dp, &d);
            super::config(&d);
            if next() % 8 == 0 {
                super::dhcp(&d);
                super::dns(&d);
            }
        }
        let st = serde_json::to_value(dp.show_stats()).expect("stats");
        // The generator must reach the interesting paths, or this smoke test proves little.
        assert!(st["totals"]["tx_sw_segmented"].as_u64().unwrap() > 0, "{st}");
        for reason in ["tagged_on_access", "unknown_vlan", "bad_vnet_hdr", "double_tagged", "bad_ip", "spoofed_source", "ttl_exceeded"] {
            assert!(st["totals"]["drops"][reason].as_u64().unwrap_or(0) > 0, "{reason} never hit: {st}");
        }
        // The L3 path is reached: routing, NAT, ICMP generation, ARP answers.
        for reason in ["dhcp_ignored", "rogue_dhcp"] {
            assert!(st["totals"]["drops"][reason].as_u64().unwrap_or(0) > 0, "{reason} never hit: {st}");
        }
        assert!(dp.router().dns_counters().is_some_and(|c| c.queries > 0), "DNS never reached");
        for counter in ["forwarded", "snat_flows", "icmp_sent", "arp_replies", "echo_replies"] {
            assert!(st["router"][counter].as_u64().unwrap_or(0) > 0, "router {counter} never hit: {st}");
        }
        let base = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/conf/vrouter.toml")).unwrap();
        // The documented config with a few bytes changed, lines dropped or repeated: parse
        // errors, type errors and cross-check failures, never a panic.
        let lines: Vec<&str> = base.lines().collect();
        for _ in 0..iters / 100 {
            let mut l = lines.clone();
            for _ in 0..(1 + next() % 3) {
                let at = (next() as usize) % l.len();
                match next() % 3 {
                    0 => {
                        l.remove(at);
                    }
                    1 => l.insert(at, l[(next() as usize) % l.len()]),
                    _ => {}
                }
            }
            let mut b = l.join("\n").into_bytes();
            for _ in 0..(next() % 3) {
                let at = (next() as usize) % b.len();
                b[at] = b"=[]\"\n#x.0{},-9"[(next() % 14) as usize];
            }
            super::config(&b);
        }
    }
}
