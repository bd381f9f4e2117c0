//! Per-frame cost of the L3 path (criterion, ns per frame): source NAT of an established flow
//! (one conntrack lookup, the flow cache's replay and an incremental rewrite; one flow, and
//! 1000 and 10,000 flows in turn; and with the flow cache off), the
//! first packet of a new flow (rule
//! stages, port allocation, conntrack insert), the routed path between two networks (with 2
//! networks on the router and with 2002; and with the flow cache off), and an
//! established and a new flow through a port forward with 10 and with 10,000 forwards and
//! firewall rules on the same address (the cost must not grow with the rules).
//! Also prints the conntrack table's memory per flow, measured by filling it with a million
//! flows.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use vrouter::buf::PacketBuf;
use vrouter::config::schema::Action;
use vrouter::conntrack::{Conntrack, Egress, Key, Timeouts};
use vrouter::datapath::{Datapath, DatapathConfig, NetSpec, PortSpec, Transmit};
use vrouter::filter::Classifier;
use vrouter::router::{Iface, L3Config, NetL3, PublicL3};
use vrouter::switch::stats::DropReason;
use vrouter::switch::{NetId, PortId, Role};
use vrouter::time::Instant;
use vrouter::wire::ethernet::MacAddr;
use vrouter::wire::vnet::VnetHdr;

struct Count(u64);
impl Transmit for Count {
    fn transmit(&mut self, _: PortId, _: Option<&VnetHdr>, f: &[u8]) -> Result<(), DropReason> {
        self.0 += f.len() as u64;
        Ok(())
    }
}

const R: [u8; 6] = [2, 0, 0, 0, 0, 1];
const G: [u8; 6] = [0x52, 0x54, 0, 0, 0, 1];
const H: [u8; 6] = [0x52, 0x54, 0, 0, 0, 2];
const GW: [u8; 6] = [0x52, 0x54, 0, 0, 9, 1];

fn dp(max_flows: usize) -> Datapath {
    dp_rules(max_flows, 0, 0)
}

/// The datapath with `rules` port forwards (203.0.113.10 tcp 10000.. -> 10.1.1.11:80) and as
/// many firewall rules on that address (one source and port each), plus the measured forward
/// tcp 8080 -> 10.1.1.11:80 open to all.
/// `extra_nets`: that many more networks (10.100.0.0/24 on, no ports), after the two measured.
fn dp_rules(max_flows: usize, rules: usize, extra_nets: usize) -> Datapath {
    use vrouter::config::schema::Proto;
    use vrouter::filter::Rule;
    use vrouter::router::Forward;
    let pip: std::net::Ipv4Addr = [203, 0, 113, 10].into();
    let fwd = |port: u16| Forward { protocol: 6, public_ip: pip, public_port: port.to_string().parse().unwrap(), private_ip: [10, 1, 1, 11].into(), private_port: "80".parse().unwrap() };
    let mut forwards: Vec<Forward> = (0..rules).map(|k| fwd(10000 + k as u16)).collect();
    forwards.push(fwd(8080));
    let mut fw: Vec<Rule<()>> = (0..rules)
        .map(|k| Rule { protocol: Proto::Tcp, ports: Some((10000 + k as u16).to_string().parse().unwrap()), nets: vec![format!("198.51.{}.{}/32", 100 + k / 250 % 100, k % 250).parse().unwrap()], value: () })
        .collect();
    fw.push(Rule { protocol: Proto::Tcp, ports: Some("8080".parse().unwrap()), nets: vec!["0.0.0.0/0".parse().unwrap()], value: () });
    let mut firewall = std::collections::HashMap::new();
    firewall.insert(pip, Classifier::new(fw));
    let acc = |n: &str, net| PortSpec {
        name: n.into(), ifname: n.into(), kind: "tap".into(), role: Role::Access { net, security: None }, offload: true.into(), mac_limit: Some(16),
    };
    let net = |cidr: &str, gw: [u8; 4]| NetL3 {
        domain: None,
        cidr: cidr.parse().unwrap(), gateway: Some(gw.into()), mtu: 1500, egress: Classifier::new(Vec::new()), egress_default: Action::Allow,
    };
    Datapath::new(DatapathConfig {
        router_mac: MacAddr(R),
        nets: [NetSpec { name: "web".into(), vlan: None }, NetSpec { name: "db".into(), vlan: None }]
            .into_iter()
            .chain((0..extra_nets).map(|i| NetSpec { name: format!("x{i}"), vlan: None }))
            .collect(),
        ports: vec![
            acc("g", NetId(0)),
            acc("h", NetId(1)),
            PortSpec { name: "public".into(), ifname: "pub".into(), kind: "tap".into(), role: Role::Public, offload: true.into(), mac_limit: Some(0) },
        ],
        mac_aging: std::time::Duration::from_secs(300),
        mac_table_size: 1024,
        security: Default::default(),
        vxlan_mtu: 1450,
        pins: Vec::new(),
        l3: L3Config {
            nets: [net("10.1.1.0/24", [10, 1, 1, 1]), net("10.1.2.0/24", [10, 1, 2, 1])]
                .into_iter()
                .chain((0..extra_nets).map(|i| net(&format!("10.{}.{}.0/24", 100 + i / 256, i % 256), [10, (100 + i / 256) as u8, (i % 256) as u8, 1])))
                .collect(),
            public: Some(PublicL3 {
                ips: vec!["203.0.113.10/24".parse().unwrap()],
                gateway: [203, 0, 113, 1].into(),
                source_nat_ip: [203, 0, 113, 10].into(),
                mtu: 1500,
            }),
            conntrack_max: max_flows,
            forwards,
            firewall,
            ..Default::default()
        },
    })
}

fn arp(sha: [u8; 6], spa: [u8; 4], tpa: [u8; 4]) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&sha);
    f.extend_from_slice(&[8, 6, 0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&sha);
    f.extend_from_slice(&spa);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&tpa);
    f.resize(60, 0);
    f
}

fn tcp(src: [u8; 4], sport: u16, dst: [u8; 4], payload: usize) -> Vec<u8> {
    let mut f = Vec::new();
    etherparse::PacketBuilder::ethernet2(G, R).ipv4(src, dst, 64).tcp(sport, 5201, 1, 65000).ack(1).write(&mut f, &vec![0u8; payload]).unwrap();
    f
}

fn bench(c: &mut Criterion) {
    let now = Instant::from_secs(1);
    let mut tx = Count(0);
    let mut d = dp(1 << 20);
    for (port, f) in [(2u16, arp(GW, [203, 0, 113, 1], [203, 0, 113, 10])), (0, arp(G, [10, 1, 1, 11], [10, 1, 1, 1])), (1, arp(H, [10, 1, 2, 11], [10, 1, 2, 1]))] {
        d.process(now, PortId(port), &mut PacketBuf::from_frame(&f, VnetHdr::default()), &mut tx);
    }
    let mut g = c.benchmark_group("l3");
    g.throughput(Throughput::Elements(1));
    // Every iteration reloads the frame (NAT rewrites it in place); the baseline shows that cost.
    let est = tcp([10, 1, 1, 11], 40000, [198, 51, 100, 5], 0);
    d.process(now, PortId(0), &mut PacketBuf::from_frame(&est, VnetHdr::default()), &mut tx);
    let mut b = PacketBuf::new();
    g.bench_function("reload_only_64B", |bn| bn.iter(|| b.load(std::hint::black_box(&est), VnetHdr::default())));
    g.bench_function("snat_established_64B", |bn| {
        bn.iter(|| {
            b.load(&est, VnetHdr::default());
            d.process(std::hint::black_box(now), PortId(0), &mut b, &mut tx)
        })
    });
    // The same with 1000 established flows taken in turn: no two frames in a row of one flow,
    // so nothing that remembers the last answer helps (the next hop and the port's own MAC
    // still do, as they would with real traffic).
    let many: Vec<Vec<u8>> = (0..1000u16).map(|i| tcp([10, 1, 1, 11], 20000 + i, [198, 51, 100, 5], 0)).collect();
    for f in &many {
        d.process(now, PortId(0), &mut PacketBuf::from_frame(f, VnetHdr::default()), &mut tx);
    }
    let mut turn = 0usize;
    g.bench_function("snat_established_64B_1000_flows", |bn| {
        bn.iter(|| {
            turn = (turn + 1) % many.len();
            b.load(&many[turn], VnetHdr::default());
            d.process(std::hint::black_box(now), PortId(0), &mut b, &mut tx)
        })
    });
    // 10,000 flows in turn: more than the flow cache holds (4096), so most packets miss it
    // and fill it for a flow that will not come back before it is overwritten: what the cache
    // costs when it cannot help, against the same with it off.
    let lots: Vec<Vec<u8>> = (0..10_000u32).map(|i| tcp([10, 1, 1, 11], 1024 + i as u16 * 6, [198, 51, 100, 6], 0)).collect();
    for f in &lots {
        d.process(now, PortId(0), &mut PacketBuf::from_frame(f, VnetHdr::default()), &mut tx);
    }
    for on in [true, false] {
        d.set_flow_cache(on);
        let name = if on { "snat_established_64B_10000_flows" } else { "snat_established_64B_10000_flows_no_flow_cache" };
        g.bench_function(name, |bn| {
            bn.iter(|| {
                turn = (turn + 1) % lots.len();
                b.load(&lots[turn], VnetHdr::default());
                d.process(std::hint::black_box(now), PortId(0), &mut b, &mut tx)
            })
        });
    }
    d.set_flow_cache(true);
    let routed = tcp([10, 1, 1, 11], 40001, [10, 1, 2, 11], 0);
    d.process(now, PortId(0), &mut PacketBuf::from_frame(&routed, VnetHdr::default()), &mut tx);
    g.bench_function("routed_established_64B", |bn| {
        bn.iter(|| {
            b.load(&routed, VnetHdr::default());
            d.process(std::hint::black_box(now), PortId(0), &mut b, &mut tx)
        })
    });
    // Both again with the flow cache off: every packet through the router's full path.
    d.set_flow_cache(false);
    g.bench_function("snat_established_64B_no_flow_cache", |bn| {
        bn.iter(|| {
            b.load(&est, VnetHdr::default());
            d.process(std::hint::black_box(now), PortId(0), &mut b, &mut tx)
        })
    });
    g.bench_function("routed_established_64B_no_flow_cache", |bn| {
        bn.iter(|| {
            b.load(&routed, VnetHdr::default());
            d.process(std::hint::black_box(now), PortId(0), &mut b, &mut tx)
        })
    });
    d.set_flow_cache(true);
    // The same with 2000 more networks on the router: what the router asks of the networks
    // per packet (is the destination a network's broadcast address, which network holds an
    // address) must not grow with them.
    {
        let mut d = dp_rules(1 << 16, 0, 2000);
        for (port, f) in [(2u16, arp(GW, [203, 0, 113, 1], [203, 0, 113, 10])), (0, arp(G, [10, 1, 1, 11], [10, 1, 1, 1])), (1, arp(H, [10, 1, 2, 11], [10, 1, 2, 1]))] {
            d.process(now, PortId(port), &mut PacketBuf::from_frame(&f, VnetHdr::default()), &mut tx);
        }
        let forwarded = tx.0;
        d.process(now, PortId(0), &mut PacketBuf::from_frame(&routed, VnetHdr::default()), &mut tx);
        g.bench_function("routed_established_64B_2000_nets", |bn| {
            bn.iter(|| {
                b.load(&routed, VnetHdr::default());
                d.process(std::hint::black_box(now), PortId(0), &mut b, &mut tx)
            })
        });
        assert!(tx.0 > forwarded, "the routed frames were not forwarded");
    }
    // New flows: a fresh source port and address each time (the table holds up to 1M; past
    // that, each new flow also evicts an unanswered one).
    let mut n: u32 = 0;
    let mut fresh = tcp([10, 1, 1, 11], 1, [198, 51, 100, 5], 0);
    g.bench_function("snat_new_flow_64B", |bn| {
        bn.iter(|| {
            n = n.wrapping_add(1);
            // Spread over guests and remotes as real traffic is: one remote:port only has
            // 64512 NAT ports per public IP (as with Linux), and then new flows are refused.
            fresh[29] = 2 + ((n >> 16) % 250) as u8;
            fresh[32..34].copy_from_slice(&((n % 65521) as u16).to_be_bytes());
            fresh[34..36].copy_from_slice(&(n as u16 | 1).to_be_bytes());
            fresh[24] = 0;
            fresh[25] = 0;
            let cs = vrouter::wire::checksum::checksum(&fresh[14..34]);
            fresh[24..26].copy_from_slice(&cs.to_be_bytes());
            b.load(&fresh, VnetHdr::default());
            d.process(std::hint::black_box(now), PortId(0), &mut b, &mut tx)
        })
    });
    // An established flow through a port forward, and new ones, with 10 and with 10,000
    // forwards and firewall rules on the same address: per-packet cost must not grow with them.
    for rules in [10usize, 10_000] {
        let mut d = dp_rules(1 << 16, rules, 0);
        for (port, f) in [(2u16, arp(GW, [203, 0, 113, 1], [203, 0, 113, 10])), (0, arp(G, [10, 1, 1, 11], [10, 1, 1, 1]))] {
            d.process(now, PortId(port), &mut PacketBuf::from_frame(&f, VnetHdr::default()), &mut tx);
        }
        let mut inbound = tcp([198, 51, 100, 5], 40000, [203, 0, 113, 10], 0);
        inbound[36..38].copy_from_slice(&8080u16.to_be_bytes());
        inbound[0..6].copy_from_slice(&R);
        inbound[6..12].copy_from_slice(&GW);
        let l4 = 14 + 20;
        inbound[l4 + 16] = 0;
        inbound[l4 + 17] = 0;
        d.process(now, PortId(2), &mut PacketBuf::from_frame(&inbound, VnetHdr::default()), &mut tx);
        g.bench_function(format!("dnat_established_64B_{rules}_rules"), |bn| {
            bn.iter(|| {
                b.load(&inbound, VnetHdr::default());
                d.process(std::hint::black_box(now), PortId(2), &mut b, &mut tx)
            })
        });
        let mut k: u16 = 0;
        let mut fresh = inbound.clone();
        g.bench_function(format!("dnat_new_flow_64B_{rules}_rules"), |bn| {
            bn.iter(|| {
                k = k.wrapping_add(1) | 1;
                fresh[34..36].copy_from_slice(&k.to_be_bytes());
                fresh[29] = (k >> 8) as u8 | 1;
                fresh[24] = 0;
                fresh[25] = 0;
                let cs = vrouter::wire::checksum::checksum(&fresh[14..34]);
                fresh[24..26].copy_from_slice(&cs.to_be_bytes());
                b.load(&fresh, VnetHdr::default());
                d.process(std::hint::black_box(now), PortId(2), &mut b, &mut tx)
            })
        });
        let st = serde_json::to_value(d.show_stats()).unwrap();
        eprintln!("{rules} rules: router {} / drops {}", st["router"]["dnat_flows"], st["totals"]["drops"]);
    }
    g.finish();
    let st = serde_json::to_value(d.show_stats()).unwrap();
    eprintln!("router: {}\nconntrack: {}", st["router"], st["conntrack"]);
    eprintln!("conntrack bytes per flow at 1M flows (entry + two index slots): {}", Conntrack::bytes_per_flow(1 << 20));
    // Resident memory of a table filled with a million flows.
    let rss = || std::fs::read_to_string("/proc/self/statm").ok().and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok()).unwrap_or(0) * 4096;
    let before = rss();
    let mut ct = Conntrack::new(1 << 20, Timeouts::default());
    let e = Egress { iface: Iface::Public, next_hop: [203, 0, 113, 1].into() };
    for i in 0..(1u32 << 20) {
        let o = Key { src: (0x0a00_0000 | (i >> 8)).into(), dst: (0xc633_0000 | (i >> 16)).into(), sport: i as u16, dport: 443, proto: 6 };
        let r = Key { src: o.dst, dst: [203, 0, 113, 10].into(), sport: 443, dport: i as u16, proto: 6 };
        let _ = ct.insert(now, o, r, [e, e]);
    }
    let after = rss();
    eprintln!("conntrack: {} flows resident in {:.1} MiB ({} bytes per flow)", ct.len(), (after - before) as f64 / 1048576.0, (after - before) / ct.len().max(1) as u64);
}

criterion_group!(benches, bench);
criterion_main!(benches);
