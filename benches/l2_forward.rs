//! Per-frame cost of the L2 pipeline (criterion, ns per frame): known unicast between two guest
//! ports, a broadcast flood, a trunk ingress (tag pop), and software segmentation of a 64 KiB
//! TCP super-frame for a port without offloads.

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
    Datapath::new(DatapathConfig {
        router_mac: MacAddr([2, 0, 0, 0, 0, 1]),
        nets: vec![NetSpec { name: "a".into(), vlan: Some(101) }],
        ports: vec![
            acc("p0", true),
            acc("p1", true),
            acc("p2", false),
            PortSpec { name: "t".into(), ifname: "t".into(), kind: "netdev".into(), role: Role::trunk(&[(101, NetId(0))]), offload: true.into(), mac_limit: None },
        ],
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
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
