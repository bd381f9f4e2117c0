//! Per-frame cost of the L2 pipeline (criterion, ns per frame): known unicast between two guest
//! ports, a broadcast flood, a trunk ingress (tag pop), and software segmentation of a 64 KiB
//! TCP super-frame for a port without offloads; a 64-byte frame in from and out to a VXLAN
//! peer carrying 4000 networks.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use vrouter::buf::PacketBuf;
use vrouter::datapath::{Datapath, DatapathConfig, NetSpec, PortSpec, Transmit};
use vrouter::switch::stats::DropReason;
use vrouter::switch::{NetId, PortId, Role};
use vrouter::time::Instant;
use vrouter::wire::ethernet::MacAddr;
use vrouter::wire::vnet::{Gso, VnetHdr};

struct Count(u64);
impl Transmit for Count {
    fn transmit(&mut self, _: PortId, _: Option<&VnetHdr>, f: &[u8]) -> Result<(), DropReason> {
        self.0 += f.len() as u64;
        Ok(())
    }
}

fn dp() -> Datapath {
    let acc = |n: &str, offload: bool| PortSpec {
        name: n.into(), ifname: n.into(), kind: "tap".into(), role: Role::Access { net: NetId(0), security: None }, offload: offload.into(), mac_limit: Some(16),
    };
    l2_datapath(
        vec![NetSpec { name: "a".into(), vlan: Some(101) }],
        vec![
            acc("p0", true),
            acc("p1", true),
            acc("p2", false),
            PortSpec { name: "t".into(), ifname: "t".into(), kind: "netdev".into(), role: Role::trunk(&[(101, NetId(0))]), offload: true.into(), mac_limit: None },
        ],
    )
}

/// A switch-only datapath (no router) with these networks and ports.
fn l2_datapath(nets: Vec<NetSpec>, ports: Vec<PortSpec>) -> Datapath {
    Datapath::new(DatapathConfig {
        router_mac: MacAddr([2, 0, 0, 0, 0, 1]),
        nets,
        ports,
        mac_aging: std::time::Duration::from_secs(300),
        mac_table_size: 1024,
        security: Default::default(),
        vxlan_mtu: 1450,
        pins: Vec::new(),
        l3: Default::default(),
    })
}

fn frame(dst: [u8; 6], src: [u8; 6], len: usize) -> Vec<u8> {
    let mut f = dst.to_vec();
    f.extend_from_slice(&src);
    f.extend_from_slice(&[0x08, 0x00]);
    f.resize(len, 0);
    f
}

fn bench(c: &mut Criterion) {
    let m1 = [0x52, 0x54, 0, 0, 0, 1];
    let m2 = [0x52, 0x54, 0, 0, 0, 2];
    let mut g = c.benchmark_group("l2");
    g.throughput(Throughput::Elements(1));
    let mut d = dp();
    let mut tx = Count(0);
    let now = Instant::from_secs(1);
    d.process(now, PortId(1), &mut PacketBuf::from_frame(&frame([0xff; 6], m2, 60), VnetHdr::default()), &mut tx);
    let mut b = PacketBuf::from_frame(&frame(m2, m1, 1514), VnetHdr::default());
    g.bench_function("unicast_known_1514B", |bn| bn.iter(|| d.process(std::hint::black_box(now), PortId(0), &mut b, &mut tx)));
    let mut b = PacketBuf::from_frame(&frame([0xff; 6], m1, 60), VnetHdr::default());
    g.bench_function("broadcast_flood_3_ports", |bn| bn.iter(|| d.process(std::hint::black_box(now), PortId(0), &mut b, &mut tx)));
    let mut tagged = frame(m2, [0x52, 0x54, 0, 0, 0, 3], 1518);
    tagged.splice(12..12, [0x81, 0x00, 0x00, 101]);
    tagged.truncate(1518);
    // Includes reloading the 1518-byte tagged frame each time (the pop modifies the buffer).
    let mut b = PacketBuf::new();
    g.bench_function("trunk_ingress_pop_1518B", |bn| {
        bn.iter(|| {
            b.load(&tagged, VnetHdr::default());
            d.process(std::hint::black_box(now), PortId(3), &mut b, &mut tx)
        })
    });
    // 64 KiB TCP super-frame to a port without offload: software segmentation into 45 frames.
    let mut sf = Vec::new();
    etherparse::PacketBuilder::ethernet2(m1, [0x52, 0x54, 0, 0, 0, 9])
        .ipv4([10, 1, 1, 11], [10, 1, 1, 12], 64)
        .tcp(40000, 5201, 1, 65535)
        .write(&mut sf, &vec![0u8; 65_000])
        .unwrap();
    d.process(now, PortId(2), &mut PacketBuf::from_frame(&frame([0xff; 6], [0x52, 0x54, 0, 0, 0, 9], 60), VnetHdr::default()), &mut tx);
    let v = VnetHdr { needs_csum: true, gso: Gso::TcpV4, gso_size: 1448, hdr_len: 54, csum_start: 34, csum_offset: 16, ..Default::default() };
    let mut b = PacketBuf::from_frame(&sf, v);
    g.throughput(Throughput::Bytes(65_000));
    g.bench_function("sw_segment_64k_superframe", |bn| bn.iter(|| d.process(std::hint::black_box(now), PortId(0), &mut b, &mut tx)));
    g.throughput(Throughput::Elements(1));
    vxlan(&mut g);
    g.finish();
}

/// A VXLAN peer carrying 4000 networks: a 64-byte frame in from it (the VNI's network, then a
/// guest port) and one out to it (the network's VNI). The guest is on the last network, the
/// far end of a scan of the peer's VNIs: the cost must not grow with them.
fn vxlan(g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    struct Udp(u64);
    impl Transmit for Udp {
        fn transmit(&mut self, _: PortId, _: Option<&VnetHdr>, f: &[u8]) -> Result<(), DropReason> {
            self.0 += f.len() as u64;
            Ok(())
        }
        fn transmit_udp(&mut self, _: PortId, _: u16, p: &[u8], _: Option<usize>) -> Result<(), vrouter::datapath::Partial> {
            self.0 += p.len() as u64;
            Ok(())
        }
    }
    const NETS: u16 = 4000;
    let peer: std::net::Ipv4Addr = [192, 0, 2, 2].into();
    let last = NetId(NETS - 1);
    let mut d = l2_datapath(
        (0..NETS).map(|i| NetSpec { name: format!("n{i}"), vlan: None }).collect(),
        vec![
            PortSpec { name: "g".into(), ifname: "g".into(), kind: "tap".into(), role: Role::Access { net: last, security: None }, offload: true.into(), mac_limit: Some(16) },
            PortSpec {
                name: "vx".into(),
                ifname: peer.to_string(),
                kind: "vxlan".into(),
                role: Role::Vtep { remote: peer, vnis: vrouter::switch::VniMap::new((0..NETS).map(|i| (5000 + i as u32, NetId(i)))), evpn: false, unicast_only: Vec::new() },
                offload: vrouter::wire::vnet::Offloads::NONE,
                mac_limit: None,
            },
        ],
    );
    let (guest, remote) = ([0x52, 0x54, 0, 0, 0, 1], [0x52, 0x54, 0, 0, 7, 7]);
    let now = Instant::from_secs(1);
    let mut tx = Udp(0);
    let mut encap = vec![0x08, 0, 0, 0];
    encap.extend_from_slice(&(5000 + u32::from(last.0)).to_be_bytes()[1..]);
    encap.push(0);
    encap.extend_from_slice(&frame(guest, remote, 64));
    d.process(now, PortId(0), &mut PacketBuf::from_frame(&frame([0xff; 6], guest, 64), VnetHdr::default()), &mut tx);
    let sent = tx.0;
    let mut b = PacketBuf::new();
    g.bench_function("vxlan_decap_64B_4000_vnis", |bn| {
        bn.iter(|| {
            b.load(&encap, VnetHdr::default());
            d.vxlan_in(std::hint::black_box(now), peer, &mut b, &mut tx)
        })
    });
    assert!(tx.0 > sent, "decapsulated frames were not forwarded");
    let sent = tx.0;
    let out = frame(remote, guest, 64);
    g.bench_function("vxlan_encap_64B_4000_vnis", |bn| {
        bn.iter(|| {
            b.load(&out, VnetHdr::default());
            d.process(std::hint::black_box(now), PortId(0), &mut b, &mut tx)
        })
    });
    assert!(tx.0 > sent, "frames to the peer were not encapsulated");
}

criterion_group!(benches, bench);
criterion_main!(benches);
