//! Per-packet cost of the VPN core (criterion): sealing a full-size packet for a peer (ChaCha20-
//! Poly1305 through boringtun, the session lookup, the counters) and opening one from it (the
//! index dispatch, the replay window, decryption). With the frame's own cost in the pipeline
//! (`l3_nat`'s routed path) this bounds what one core can push through the tunnel, apart from
//! the far end.

use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use std::net::{IpAddr, SocketAddrV4};
use vrouter::time::Instant;
use vrouter::vpn::{Key, PeerSpec, Rx, Vpn, VpnSpec};

const ROUTER: [u8; 32] = [7; 32];
const PEER: [u8; 32] = [9; 32];
const LEN: usize = 1420;

fn setup() -> (Vpn, Tunn, SocketAddrV4) {
    let from: SocketAddrV4 = "198.51.100.7:51820".parse().unwrap();
    let mut v = Vpn::new(VpnSpec {
        listen: "203.0.113.10:51820".parse().unwrap(),
        private_key: Key(ROUTER),
        address: "10.250.0.1/24".parse().unwrap(),
        mtu: 1420,
        peers: vec![PeerSpec {
            name: "branch".into(),
            public_key: Key(PEER).public(),
            preshared_key: None,
            endpoint: Some(from),
            allowed_ips: vec!["192.168.50.0/24".parse().unwrap()],
            nets: None,
            keepalive: None,
        }],
    });
    let mut t = Tunn::new(StaticSecret::from(PEER), PublicKey::from(&StaticSecret::from(ROUTER)), None, None, 1, None);
    let mut buf = vec![0u8; 2048];
    let mut out = Vec::new();
    let TunnResult::WriteToNetwork(init) = t.encapsulate(&packet(), &mut buf) else { panic!() };
    v.receive(Instant(1), from, init, &mut out).unwrap();
    let mut data = vec![0u8; 2048];
    let TunnResult::WriteToNetwork(ka) = t.decapsulate(Some(IpAddr::V4(*from.ip())), &out[0].1, &mut data) else { panic!() };
    v.receive(Instant(1), from, ka, &mut out).unwrap();
    (v, t, from)
}

fn packet() -> Vec<u8> {
    let mut out = Vec::new();
    etherparse::PacketBuilder::ipv4([192, 168, 50, 10], [10, 1, 1, 11], 64).udp(5000, 6000).write(&mut out, &[0xab; LEN - 28]).unwrap();
    out
}

fn bench(c: &mut Criterion) {
    let (mut v, mut t, from) = setup();
    let pkt = packet();
    let mut g = c.benchmark_group("vpn");
    g.throughput(Throughput::Bytes(LEN as u64));
    let mut d = vec![0u8; 2048];
    g.bench_function("seal_1420", |b| b.iter(|| v.seal(0, &pkt, &mut d).unwrap()));
    let mut out = Vec::new();
    let mut buf = vec![0u8; 2048];
    g.bench_function("open_1420", |b| {
        b.iter_batched(
            || match t.encapsulate(&pkt, &mut buf) {
                TunnResult::WriteToNetwork(m) => m.to_vec(),
                r => panic!("{r:?}"),
            },
            |m| assert!(matches!(v.receive(Instant(2), from, &m, &mut out), Ok(Rx::Inner { .. }))),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
