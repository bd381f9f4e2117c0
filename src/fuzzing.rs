//! Fuzz entry points, shared by the cargo-fuzz targets in fuzz/ and by the bounded smoke test
//! that runs in every `cargo test` (stable toolchain, no libFuzzer needed).

use crate::buf::PacketBuf;
use crate::datapath::{Datapath, DatapathConfig, NetSpec, PortSpec, Transmit};
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
}

/// A datapath with every kind of port: access with/without security and offload, two trunks.
pub fn fuzz_datapath() -> Datapath {
    let acc = |n: &str, net, security, offload| PortSpec {
        name: n.into(), ifname: n.into(), kind: "tap".into(), role: Role::Access { net, security }, offload, mac_limit: Some(8),
    };
    let sec = Security { mac: MacAddr([0x52, 0x54, 0, 0, 0, 1]), ip: Some([10, 1, 1, 11].into()) };
    Datapath::new(DatapathConfig {
        router_mac: MacAddr([2, 0, 0, 0, 0, 1]),
        nets: vec![NetSpec { name: "a".into(), vlan: Some(101) }, NetSpec { name: "b".into(), vlan: Some(102) }],
        ports: vec![
            acc("p0", NetId(0), Some(sec), true),
            acc("p1", NetId(0), None, false),
            acc("p2", NetId(1), None, true),
            PortSpec { name: "t0".into(), ifname: "t0".into(), kind: "netdev".into(), role: Role::trunk(&[(101, NetId(0)), (102, NetId(1))]), offload: false, mac_limit: None },
            PortSpec { name: "t1".into(), ifname: "t1".into(), kind: "netdev".into(), role: Role::trunk(&[(101, NetId(0))]), offload: true, mac_limit: None },
        ],
        mac_aging: Duration::from_secs(300),
        mac_table_size: 64,
        l3: Default::default(),
    })
}

/// Interprets `data` as a sequence of (port, vnet header, frame) records and runs them through
/// one datapath. Must never panic.
pub fn datapath(dp: &mut Datapath, data: &[u8]) {
    let mut rest = data;
    let mut t = 0u64;
    let mut sink = Null(0);
    let mut b = PacketBuf::new();
    while rest.len() >= 13 {
        let port = PortId((rest[0] as usize % dp.port_count()) as u16);
        let len = u16::from_le_bytes([rest[1], rest[2]]) as usize;
        let vnet = VnetHdr::parse(&rest[3..13]).unwrap_or_default();
        rest = &rest[13..];
        let take = len.min(rest.len());
        b.load(&rest[..take], vnet);
        rest = &rest[take..];
        t += 1000;
        dp.process(Instant::from_millis(t), port, &mut b, &mut sink);
        dp.poll(Instant::from_millis(t), &mut sink);
    }
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
        }
        let st = dp.show_stats();
        // The generator must reach the interesting paths, or this smoke test proves little.
        assert!(st["totals"]["tx_sw_segmented"].as_u64().unwrap() > 0, "{st}");
        for reason in ["tagged_on_access", "unknown_vlan", "bad_vnet_hdr", "double_tagged"] {
            assert!(st["totals"]["drops"][reason].as_u64().unwrap_or(0) > 0, "{reason} never hit: {st}");
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
