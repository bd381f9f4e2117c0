//! The router's side of load balancing: a new connection to a virtual IP:port is given a
//! backend (its destination translated, its source kept, so the backend sees the client), or
//! refused at once when no backend is up; health checks run from the gateway addresses.
//!
//! Address translation per client:
//! - from the public side: destination only (DNAT); replies come back through the router since
//!   it is the backends' gateway;
//! - from a guest on another network: the same (routed, client address kept);
//! - from a guest on the backend's own network: the source becomes the gateway too, or the
//!   backend would answer the client directly around the router.

use super::{Decision, FlowKind, Router, Verdict};
use crate::buf::PacketBuf;
use crate::conntrack::{Egress, Key};
use crate::router::Iface;
use crate::switch::stats::DropReason;
use crate::time::Instant;
use crate::wire::ethernet::{ethertype, MacAddr};
use crate::wire::ipv4::{self, icmp, proto};
use crate::wire::checksum;
use std::net::Ipv4Addr;

impl Router {
    pub(super) fn lb_decide(&mut self, now: Instant, from: Iface, k: &Key, lb: usize) -> Decision {
        self.release_backends();
        let Some(p) = self.lb.pick(lb, k.src) else {
            self.lb.refused(lb);
            return Decision::Refuse;
        };
        let same_net = from == Iface::Net(p.net);
        let reply = if same_net {
            let Some(gw) = self.gateway(p.net) else { return Decision::Drop(DropReason::NoRoute) };
            match self.nat_reply(now, k, p.ip, p.port, gw) {
                Some(r) => r,
                None => return Decision::Drop(DropReason::NatExhausted),
            }
        } else {
            Key { src: p.ip, dst: k.src, sport: p.port, dport: k.sport, proto: k.proto }
        };
        if self.ct.contains(now, &reply) {
            return Decision::Drop(DropReason::NatExhausted);
        }
        let back = match from {
            Iface::Public => self.public_next_hop(k.src),
            Iface::Net(_) | Iface::Tunnel(_) => k.src,
        };
        let egress = [Egress { iface: Iface::Net(p.net), next_hop: p.ip }, Egress { iface: from, next_hop: back }];
        let kind = if same_net { FlowKind::Hairpin } else { FlowKind::Dnat };
        Decision::Flow { reply, egress, kind, tag: p.tag }
    }

    /// No backend is up: a TCP connection is reset, a UDP datagram gets port unreachable, so the
    /// client learns at once instead of timing out.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn refuse(&mut self, now: Instant, from: Iface, eth_src: MacAddr, buf: &PacketBuf, k: &Key, hl: usize, tl: usize) -> Verdict {
        let f = &buf.frame()[14..14 + tl];
        let (src, dst, sport, dport) = (k.src, k.dst, k.sport, k.dport);
        match k.proto {
            proto::TCP => {
                // (ipv4() made sure a whole TCP header is there.)
                let t = &f[hl..];
                let seq = u32::from_be_bytes([t[4], t[5], t[6], t[7]]);
                let ack = u32::from_be_bytes([t[8], t[9], t[10], t[11]]);
                let flags = t[13];
                let doff = ((t[12] >> 4) as usize * 4).clamp(20, t.len());
                // RFC 793 "Reset Generation": answer an ACK with its own sequence number,
                // anything else by acknowledging what it occupied.
                let seg_len = (t.len() - doff) as u32 + u32::from(flags & 0x02 != 0) + u32::from(flags & 0x01 != 0);
                let (rseq, rack, rflags) = if flags & 0x10 != 0 { (ack, 0, 0x04) } else { (0, seq.wrapping_add(seg_len), 0x14) };
                let p = self.tcp_reset(dst, dport, src, sport, rseq, rack, rflags);
                self.new_frame(from, eth_src, ethertype::IPV4, 40).copy_from_slice(&p);
                self.stats.lb_resets += 1;
            }
            _ => {
                let pkt = f.to_vec();
                self.icmp_error(now, from, eth_src, &pkt, icmp::DEST_UNREACH, icmp::CODE_PORT_UNREACH, 0);
            }
        }
        Verdict::Drop(DropReason::LbNoBackend)
    }

    /// A 40-byte IPv4 TCP segment with RST (and `flags`) from `src:sport` to `dst:dport`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn tcp_reset(&mut self, src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, seq: u32, ack: u32, flags: u8) -> [u8; 40] {
        self.ident = self.ident.wrapping_add(1);
        let mut o = [0u8; 40];
        ipv4::emit_header(&mut o[..20], src, dst, proto::TCP, 64, 20, self.ident);
        let r = &mut o[20..];
        crate::wire::tcp::TcpRepr { src_port: sport, dst_port: dport, seq, ack, flags, window: 0 }.emit(r);
        let sum = checksum::add(checksum::pseudo_v4(src.octets(), dst.octets(), proto::TCP, 20), r);
        r[16..18].copy_from_slice(&(!checksum::fold(sum)).to_be_bytes());
        o
    }

    /// Connections that closed or expired stop counting for their backends.
    pub(super) fn release_backends(&mut self) {
        for t in self.ct.released.drain(..) {
            self.lb.release(t);
        }
    }

    /// Runs the health checker: its segments leave from the gateways, its results move
    /// backends up and down.
    pub(super) fn run_checks(&mut self, now: Instant) {
        let (mut out, mut results) = (Vec::new(), Vec::new());
        self.hc.run(now, &mut out, &mut results);
        for (n, p) in out {
            self.emit_ip(now, n, &p);
        }
        for (t, o) in results {
            self.lb.check_result(t, o, false);
        }
    }

    /// `ctl show lb`: every load balancer with its backends (active counts up to date).
    pub fn lb_rows(&self) -> Vec<crate::lb::LbRow> {
        let mut rows = self.lb.rows();
        // Releases not yet drained are counted out here too, so the snapshot is exact.
        for &t in &self.ct.released {
            let (l, b) = crate::lb::untag(t);
            if let Some(r) = rows.get_mut(l).and_then(|r| r.backends.get_mut(b)) {
                r.active = r.active.saturating_sub(1);
            }
        }
        rows
    }
}
