//! The router's side of the VPN: WireGuard datagrams to the `listen` address are opened here
//! and their packets enter the pipeline from `Iface::Tunnel(peer)`; packets routed to a peer
//! are sealed here and leave as UDP from the `listen` address through the public port, their
//! next hop resolved like any public destination.
//!
//! Packets for a tunnel wait in the outbox as ordinary frames until [`Router::seal_tunnel`]
//! (the datapath calls it before each drain), so everything the router makes for a peer
//! (routed packets, their fragments, ICMP errors, DNS answers, echo replies) takes one path.
//! A GSO super-frame is cut into its segments before sealing; a partial checksum is completed.

use super::{Iface, Out, Router, Verdict};
use crate::buf::PacketBuf;
use crate::router::neigh::{Queued, Resolve};
use crate::switch::stats::DropReason;
use crate::time::Instant;
use crate::wire::ethernet::ethertype;
use crate::wire::ipv4::{self, proto, Ipv4Packet};
use crate::wire::vnet::{Gso, VnetHdr};
use crate::wire::{be16, checksum};
use std::net::SocketAddrV4;

/// Outer headers of a sealed datagram: Ethernet, IPv4, UDP.
const OUTER: usize = 14 + 20 + 8;

impl Router {
    /// A datagram to the WireGuard port (`hl`, `tl`: its IP header and total length).
    pub(super) fn vpn_in(&mut self, now: Instant, buf: &mut PacketBuf, hl: usize, tl: usize) -> Verdict {
        let Some(v) = self.vpn.as_mut() else { return Verdict::Drop(DropReason::NoL3) };
        let f = buf.frame();
        let src = std::net::Ipv4Addr::new(f[26], f[27], f[28], f[29]);
        let from = SocketAddrV4::new(src, be16(f, 14 + hl));
        let r = v.receive(now, from, &f[14 + hl + 8..14 + tl], &mut self.vpn_tx);
        self.vpn_flush(now);
        match r {
            Err(reason) => Verdict::Drop(reason),
            Ok(crate::vpn::Rx::Done) => Verdict::Consumed,
            Ok(crate::vpn::Rx::Inner { peer, off, len }) => {
                let Some(v) = self.vpn.as_ref() else { return Verdict::Consumed };
                let inner = v.inner(off, len);
                // Not an IPv4 packet (boringtun checked the version): nothing to route.
                if len < 20 {
                    return Verdict::Drop(DropReason::BadIp);
                }
                let fr = buf.init(14 + len);
                fr[0..6].copy_from_slice(&self.mac.0);
                fr[12..14].copy_from_slice(&ethertype::IPV4.to_be_bytes());
                fr[14..].copy_from_slice(inner);
                match crate::frame::FrameCtx::parse(buf.frame()) {
                    Ok(c) if c.l3 == crate::frame::L3::Ipv4 => self.ipv4(now, Iface::Tunnel(peer), buf, &c.ip),
                    _ => Verdict::Drop(DropReason::BadIp),
                }
            }
        }
    }

    /// A routed packet for a peer: into the outbox, sealed at the next drain. Too big for the
    /// tunnel and not DF: fragmented first (DF was answered with frag-needed before).
    pub(super) fn tunnel_out(&mut self, iface: Iface, buf: &mut PacketBuf, tl: usize, df: bool) -> Verdict {
        if buf.vnet.gso == Gso::None && tl > self.mtu(iface) && !df {
            return match self.fragment_out(iface, buf, tl) {
                Ok(()) => Verdict::Consumed,
                Err(r) => Verdict::Drop(r),
            };
        }
        let fresh = self.buf();
        let b = std::mem::replace(buf, fresh);
        self.outbox.push(Out { iface, buf: b, port: None });
        self.stats.forwarded += 1;
        Verdict::Consumed
    }

    /// Seals every frame in the outbox that is for a tunnel into a datagram to its peer's
    /// endpoint (or drops it, counted, when the peer has none yet).
    pub fn seal_tunnel(&mut self, now: Instant) {
        if self.vpn.is_none() || !self.outbox.iter().any(|o| matches!(o.iface, Iface::Tunnel(_))) {
            return;
        }
        // Taken out into a vector kept between drains (the outbox keeps its capacity too):
        // sealing pushes the datagrams (and any ARP request) back onto the outbox.
        let mut sealed = std::mem::take(&mut self.vpn_sealing);
        sealed.extend(self.outbox.extract_if(.., |o| matches!(o.iface, Iface::Tunnel(_))));
        for mut o in sealed.drain(..) {
            if let Iface::Tunnel(p) = o.iface {
                self.seal_one(now, p, &mut o.buf);
            }
            self.recycle(o.buf);
        }
        self.vpn_sealing = sealed;
    }

    fn seal_one(&mut self, now: Instant, peer: u16, b: &mut PacketBuf) {
        let f = b.frame();
        let Ok(ip) = Ipv4Packet::new_checked(f.get(14..).unwrap_or(&[])) else { return };
        let tl = ip.total_len();
        if b.vnet.is_plain() {
            self.seal_packet(now, peer, &b.frame()[14..14 + tl]);
            return;
        }
        // Offload work the guest left to the receiver: done here, since the peer gets bytes.
        // The segments are laid end to end in a buffer kept between calls (no allocation per
        // segment), then sealed one by one.
        let (mut scratch, mut segs) = (std::mem::take(&mut self.vpn_scratch), std::mem::take(&mut self.vpn_segs));
        scratch.resize(crate::buf::MAX_FRAME, 0);
        segs.0.clear();
        segs.1.clear();
        let frame = &b.frame()[..14 + tl];
        let ok = crate::offload::finish(frame, &b.vnet, &mut scratch, &mut |seg| {
            segs.0.extend_from_slice(&seg[14..]);
            segs.1.push(segs.0.len());
        })
        .is_ok();
        if ok {
            let mut start = 0;
            for &end in &segs.1 {
                self.seal_packet(now, peer, &segs.0[start..end]);
                start = end;
            }
        }
        self.vpn_scratch = scratch;
        self.vpn_segs = segs;
    }

    /// Seals one IPv4 packet for `peer` and sends the datagram.
    fn seal_packet(&mut self, now: Instant, peer: u16, pkt: &[u8]) {
        let mut b = self.buf();
        let room = OUTER + (pkt.len() + crate::vpn::SEAL_OVERHEAD).max(148);
        let f = b.init(room);
        let Some(v) = self.vpn.as_mut() else { return };
        match v.seal(peer, pkt, &mut f[OUTER..]) {
            Ok((ep, n)) => {
                b.truncate(OUTER + n);
                self.emit_datagram(now, ep, b);
            }
            Err(_) => self.recycle(b),
        }
    }

    /// Sends what the VPN asked to (handshakes, cookies, keepalives, released packets).
    pub(super) fn vpn_flush(&mut self, now: Instant) {
        for (ep, d) in std::mem::take(&mut self.vpn_tx) {
            let mut b = self.buf();
            let f = b.init(OUTER + d.len());
            f[OUTER..].copy_from_slice(&d);
            self.emit_datagram(now, ep, b);
        }
    }

    /// Fills the outer headers of `b` (payload at `OUTER..`) for a datagram from the listen
    /// address to `ep`, and sends it out of the public port.
    fn emit_datagram(&mut self, now: Instant, ep: SocketAddrV4, mut b: PacketBuf) {
        let Some(l) = self.vpn.as_ref().map(|v| v.listen()) else { return };
        let udp_len = b.len() - 34;
        self.ident = self.ident.wrapping_add(1);
        let ident = self.ident;
        let f = b.frame_mut();
        f[6..12].copy_from_slice(&self.mac.0);
        f[12..14].copy_from_slice(&ethertype::IPV4.to_be_bytes());
        ipv4::emit_header(&mut f[14..34], *l.ip(), *ep.ip(), proto::UDP, 64, udp_len, ident);
        let u = &mut f[34..];
        u[0..2].copy_from_slice(&l.port().to_be_bytes());
        u[2..4].copy_from_slice(&ep.port().to_be_bytes());
        u[4..6].copy_from_slice(&(udp_len as u16).to_be_bytes());
        // A partial checksum (the pseudo-header's sum, as the kernel leaves it): a port that
        // takes the offload passes it on, any other has it finished in software at egress.
        let pseudo = checksum::fold(checksum::pseudo_v4(l.ip().octets(), ep.ip().octets(), proto::UDP, udp_len as u32));
        u[6..8].copy_from_slice(&pseudo.to_be_bytes());
        b.vnet = VnetHdr { needs_csum: true, csum_start: 34, csum_offset: 6, ..VnetHdr::default() };
        let hop = self.public_next_hop(*ep.ip());
        match self.resolve(now, Iface::Public, hop) {
            Resolve::Mac(mac) => {
                b.frame_mut()[0..6].copy_from_slice(&mac.0);
                self.outbox.push(Out { iface: Iface::Public, buf: b, port: None });
            }
            Resolve::Pending => {
                let q = Queued { frame: b.frame().to_vec(), vnet: b.vnet, origin: None };
                if self.neigh.enqueue(Iface::Public, hop, q) {
                    self.stats.neigh_queued += 1;
                }
                self.recycle(b);
            }
            Resolve::Failed => self.recycle(b),
        }
    }

    /// `show vpn`.
    pub fn vpn_row(&self, now: Instant) -> Option<crate::vpn::VpnRow> {
        self.vpn.as_ref().map(|v| v.row(now))
    }
}
