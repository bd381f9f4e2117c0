//! Receive coalescing (GRO): consecutive TCP/IPv4 segments of one flow, bound for one port
//! that takes virtio_net_hdr metadata, are merged back into one GSO super-frame, so the guest's
//! stack handles one 64 KiB frame (and sends one ACK) where it would have handled forty-five.
//! The counterpart of [`crate::offload`], used where segments arrive one datagram at a time
//! (VXLAN).
//!
//! The merge rules are the kernel's (`tcp_gro_receive`, `inet_gro_receive`): same addresses,
//! ports, TOS, TTL and DF; IP ids consecutive (or fixed); no IP options or fragments; the next
//! sequence number; the same ACK, window, header length and option bytes; no SYN, RST, URG, FIN
//! or CWR; every segment but the last exactly the first one's size. A segment shorter than that,
//! or one with PSH, closes the super-frame. Only segments whose checksum is known good (verified,
//! or partial as a local sender left it) are merged; the super-frame leaves with a partial
//! checksum (pseudo-header only), as the kernel's own GRO leaves it.
//!
//! Invariants: frames of one flow leave in the order they were offered; a frame that is not
//! merged first flushes whatever its port has pending, so nothing overtakes; a flow holds at
//! most [`MAX_FRAME`] bytes. Pure: frames in, frames out through a callback; no allocation after
//! the slots are made.

use crate::buf::MAX_FRAME;
use crate::switch::PortId;
use crate::wire::checksum;
use crate::wire::vnet::{Gso, VnetHdr};

/// The smallest segment merged (Linux's TCP_MIN_SND_MSS, the floor `offload` accepts).
const MIN_MSS: usize = 48;

/// Flows held at once (the kernel keeps 8 per bucket).
pub const MAX_FLOWS: usize = 8;

const ETH: usize = 14;
const IP: usize = 20;
const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_PSH: u8 = 0x08;
const TCP_URG: u8 = 0x20;
const TCP_CWR: u8 = 0x80;

/// Where a flow's frames go once flushed: the port, the metadata and the frame.
pub type Emit<'a> = dyn FnMut(PortId, &VnetHdr, &[u8]) + 'a;

/// A merge candidate's parsed headers (untagged Ethernet, IPv4 without options, TCP).
struct Seg {
    thl: usize,
    seq: u32,
    id: u16,
    flags: u8,
    payload: usize,
}

/// A TCP/IPv4 segment we may merge, or `None`. The frame must be exactly the IP packet (no
/// Ethernet padding) with a checksum that is good or partial.
fn candidate(f: &[u8], v: &VnetHdr) -> Option<Seg> {
    if v.gso != Gso::None || f.len() < ETH + IP + 20 || f[12..14] != [0x08, 0x00] || f[ETH] != 0x45 {
        return None;
    }
    let ip = &f[ETH..];
    let total = u16::from_be_bytes([ip[2], ip[3]]) as usize;
    // Fragments (MF or an offset, or the reserved bit), other protocols and damaged headers
    // never merge: the merged header is written afresh and would hide the damage.
    if ETH + total != f.len() || ip[9] != 6 || u16::from_be_bytes([ip[6], ip[7]]) & 0xbfff != 0 || checksum::checksum(&ip[..IP]) != 0 {
        return None;
    }
    let tcp = &f[ETH + IP..];
    let thl = (tcp[12] >> 4) as usize * 4;
    let flags = tcp[13];
    if thl < 20 || ETH + IP + thl >= f.len() || flags & (TCP_SYN | TCP_RST | TCP_URG | TCP_FIN | TCP_CWR) != 0 {
        return None;
    }
    let good = v.data_valid || (v.needs_csum && v.csum_start as usize == ETH + IP && v.csum_offset == 16);
    if !good {
        return None;
    }
    Some(Seg {
        thl,
        seq: u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]),
        id: u16::from_be_bytes([ip[4], ip[5]]),
        flags,
        payload: f.len() - ETH - IP - thl,
    })
}

struct Flow {
    port: PortId,
    /// The first segment's headers followed by every merged payload.
    frame: Vec<u8>,
    /// The first segment's metadata, kept for a flow of one segment.
    vnet: VnetHdr,
    thl: usize,
    mss: usize,
    next_seq: u32,
    last_id: u16,
    segs: u32,
}

impl Flow {
    fn hdr_len(&self) -> usize {
        ETH + IP + self.thl
    }

    /// Same flow: MACs, IP addresses and TCP ports.
    fn same_flow(&self, f: &[u8]) -> bool {
        self.frame[..12] == f[..12] && self.frame[ETH + 12..ETH + 20] == f[ETH + 12..ETH + 20] && self.frame[ETH + IP..ETH + IP + 4] == f[ETH + IP..ETH + IP + 4]
    }

    /// `s` (of the same flow) continues this super-frame.
    fn continues(&self, f: &[u8], s: &Seg) -> bool {
        let (a, b) = (&self.frame[ETH..], &f[ETH..]);
        let df = |ip: &[u8]| ip[6] & 0x40;
        let ids_ok = s.id == self.last_id.wrapping_add(1) || (df(b) != 0 && s.id == self.last_id);
        let (ta, tb) = (&a[IP..], &b[IP..]);
        s.thl == self.thl
            && s.seq == self.next_seq
            && s.payload <= self.mss
            && a[1] == b[1] // TOS (and ECN)
            && a[8] == b[8] // TTL
            && df(a) == df(b)
            && ids_ok
            && ta[8..12] == tb[8..12] // ACK number
            && ta[12] == tb[12]
            && ta[13] & !TCP_PSH == tb[13] & !TCP_PSH
            && ta[14..16] == tb[14..16] // window
            && ta[20..self.thl] == tb[20..s.thl] // options, timestamps included
            && self.frame.len() + s.payload <= MAX_FRAME.min(ETH + 65_535)
    }

    fn append(&mut self, f: &[u8], s: &Seg) {
        self.frame.extend_from_slice(&f[ETH + IP + s.thl..]);
        self.next_seq = s.seq.wrapping_add(s.payload as u32);
        self.last_id = s.id;
        self.segs += 1;
        if s.flags & TCP_PSH != 0 {
            self.frame[ETH + IP + 13] |= TCP_PSH;
        }
    }

    /// Fixes the headers for the merged length and hands the frame on.
    fn emit(&mut self, out: &mut Emit<'_>) {
        if self.segs == 1 {
            out(self.port, &self.vnet, &self.frame);
            return;
        }
        let total = (self.frame.len() - ETH) as u16;
        let f = &mut self.frame;
        f[ETH + 2..ETH + 4].copy_from_slice(&total.to_be_bytes());
        f[ETH + 10..ETH + 12].fill(0);
        let c = checksum::checksum(&f[ETH..ETH + IP]);
        f[ETH + 10..ETH + 12].copy_from_slice(&c.to_be_bytes());
        let l4 = (total as usize - IP) as u32;
        let src: [u8; 4] = f[ETH + 12..ETH + 16].try_into().unwrap_or_default();
        let dst: [u8; 4] = f[ETH + 16..ETH + 20].try_into().unwrap_or_default();
        let partial = checksum::fold(checksum::pseudo_v4(src, dst, 6, l4));
        f[ETH + IP + 16..ETH + IP + 18].copy_from_slice(&partial.to_be_bytes());
        let v = VnetHdr {
            needs_csum: true,
            data_valid: false,
            gso: Gso::TcpV4,
            ecn: false,
            hdr_len: self.hdr_len() as u16,
            gso_size: self.mss as u16,
            csum_start: (ETH + IP) as u16,
            csum_offset: 16,
        };
        out(self.port, &v, &self.frame);
    }
}

/// What became of an offered frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Held (alone or merged); it leaves with a later flush.
    Held,
    /// Not a candidate: the caller sends it now. Whatever its port had pending was flushed
    /// first.
    Declined,
}

/// The coalescer: up to [`MAX_FLOWS`] flows in progress.
pub struct Coalescer {
    flows: Vec<Flow>,
    /// Buffers of flushed flows, reused.
    spare: Vec<Vec<u8>>,
    /// Segments merged into super-frames of more than one (a counter for the caller to read).
    pub merged: u64,
}

impl Default for Coalescer {
    fn default() -> Self {
        Self::new()
    }
}

impl Coalescer {
    pub fn new() -> Self {
        Coalescer { flows: Vec::with_capacity(MAX_FLOWS), spare: Vec::new(), merged: 0 }
    }

    /// True when no flow is pending.
    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    /// Offers `frame`, bound for `port`. Flushed frames (this port's, or an old flow's to make
    /// room) go to `out` before this call returns.
    pub fn offer(&mut self, port: PortId, frame: &[u8], v: &VnetHdr, out: &mut Emit<'_>) -> Offer {
        let Some(s) = candidate(frame, v) else {
            self.flush_port(port, out);
            return Offer::Declined;
        };
        if let Some(i) = self.flows.iter().position(|fl| fl.port == port && fl.same_flow(frame)) {
            if self.flows[i].continues(frame, &s) {
                let fl = &mut self.flows[i];
                fl.append(frame, &s);
                // A short segment or PSH ends the super-frame (the sender's write ended).
                if s.payload < fl.mss || s.flags & TCP_PSH != 0 {
                    self.flush_at(i, out);
                }
                return Offer::Held;
            }
            self.flush_at(i, out);
        } else if self.flows.len() == MAX_FLOWS {
            self.flush_at(0, out);
        }
        // A flow starts only with a segment a GSO frame may be cut to (offload's floor).
        if s.payload < MIN_MSS {
            self.flush_port(port, out);
            return Offer::Declined;
        }
        let mut buf = self.spare.pop().unwrap_or_else(|| Vec::with_capacity(MAX_FRAME));
        buf.clear();
        buf.extend_from_slice(frame);
        let fl = Flow {
            port,
            frame: buf,
            vnet: *v,
            thl: s.thl,
            mss: s.payload,
            next_seq: s.seq.wrapping_add(s.payload as u32),
            last_id: s.id,
            segs: 1,
        };
        if s.flags & TCP_PSH != 0 {
            // Nothing may follow it in this super-frame: send it as it is.
            self.flows.push(fl);
            let i = self.flows.len() - 1;
            self.flush_at(i, out);
        } else {
            self.flows.push(fl);
        }
        Offer::Held
    }

    fn flush_at(&mut self, i: usize, out: &mut Emit<'_>) {
        // `remove`, not `swap_remove`: flows leave in the order they started.
        let mut fl = self.flows.remove(i);
        if fl.segs > 1 {
            self.merged += fl.segs as u64;
        }
        fl.emit(out);
        self.spare.push(fl.frame);
    }

    /// Sends what `port` has pending.
    pub fn flush_port(&mut self, port: PortId, out: &mut Emit<'_>) {
        let mut i = 0;
        while i < self.flows.len() {
            if self.flows[i].port == port {
                self.flush_at(i, out);
            } else {
                i += 1;
            }
        }
    }

    /// Sends everything pending.
    pub fn flush(&mut self, out: &mut Emit<'_>) {
        while !self.flows.is_empty() {
            self.flush_at(0, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::offload;
    use etherparse::PacketBuilder;

    const A: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const B: [u8; 6] = [2, 0, 0, 0, 0, 2];

    /// One segment as a sender builds it, with a valid checksum and timestamps.
    fn seg(sport: u16, seq: u32, id: u16, payload: &[u8], psh: bool) -> Vec<u8> {
        let mut b = PacketBuilder::ethernet2(A, B)
            .ipv4([10, 1, 1, 11], [10, 1, 1, 12], 64)
            .tcp(sport, 5201, seq, 502)
            .ack(77)
            .options(&[etherparse::TcpOptionElement::Noop, etherparse::TcpOptionElement::Noop, etherparse::TcpOptionElement::Timestamp(9, 8)])
            .unwrap();
        if psh {
            b = b.psh();
        }
        let mut v = Vec::new();
        b.write(&mut v, payload).unwrap();
        // etherparse writes id 0 and DF clear; give each segment its id and set DF.
        v[ETH + 4..ETH + 6].copy_from_slice(&id.to_be_bytes());
        v[ETH + 6] |= 0x40;
        v[ETH + 10..ETH + 12].fill(0);
        let c = checksum::checksum(&v[ETH..ETH + IP]);
        v[ETH + 10..ETH + 12].copy_from_slice(&c.to_be_bytes());
        v
    }

    fn valid() -> VnetHdr {
        VnetHdr { data_valid: true, ..Default::default() }
    }

    fn run(c: &mut Coalescer, frames: &[(PortId, Vec<u8>, VnetHdr)]) -> Vec<(PortId, VnetHdr, Vec<u8>)> {
        let mut out = Vec::new();
        for (p, f, v) in frames {
            let mut e = |p: PortId, v: &VnetHdr, f: &[u8]| out.push((p, *v, f.to_vec()));
            if c.offer(*p, f, v, &mut e) == Offer::Declined {
                e(*p, v, f);
            }
        }
        c.flush(&mut |p, v, f| out.push((p, *v, f.to_vec())));
        out
    }

    fn data(n: usize, k: u8) -> Vec<u8> {
        (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(k)).collect()
    }

    /// Merging then segmenting gives back the original segments byte for byte: the merged
    /// headers are right (lengths, IP checksum, partial TCP checksum, PSH on the last only),
    /// and the metadata is what `offload::finish` needs.
    #[test]
    fn merge_then_segment_is_identity() {
        let mss = 1000;
        let mut segs = Vec::new();
        for i in 0..5u32 {
            let last = i == 4;
            let len = if last { 300 } else { mss };
            segs.push(seg(40000, 1000 + i * mss as u32, 7 + i as u16, &data(len, i as u8), last));
        }
        let frames: Vec<_> = segs.iter().map(|s| (PortId(1), s.clone(), valid())).collect();
        let mut c = Coalescer::new();
        let out = run(&mut c, &frames);
        assert_eq!(out.len(), 1, "one super-frame");
        let (p, v, f) = &out[0];
        assert_eq!(*p, PortId(1));
        assert_eq!((v.gso, v.gso_size, v.hdr_len, v.needs_csum, v.csum_start, v.csum_offset), (Gso::TcpV4, mss as u16, 66, true, 34, 16));
        assert_eq!(f.len(), 66 + 4 * mss + 300);
        assert_eq!(u16::from_be_bytes([f[16], f[17]]) as usize, f.len() - 14);
        assert_eq!(checksum::checksum(&f[14..34]), 0, "IP header checksum");
        assert_eq!(c.merged, 5);
        let mut scratch = vec![0u8; 70_000];
        let mut again = Vec::new();
        offload::finish(f, v, &mut scratch, &mut |s| again.push(s.to_vec())).unwrap();
        assert_eq!(again, segs);
    }

    /// A gap, a changed ACK, a different flow or port, and a pure ACK each stop a merge; the
    /// order of each flow's bytes is kept.
    #[test]
    fn merge_boundaries() {
        let p = PortId(1);
        let f = |seq: u32, id: u16| (p, seg(40000, seq, id, &data(100, 0), false), valid());
        let mut acked = seg(40000, 1200, 3, &data(100, 0), false);
        acked[ETH + IP + 11] = 78; // ack 78: checksum no longer matters, data_valid says so
        let other = (p, seg(40001, 5000, 9, &data(100, 1), false), valid());
        let other_port = (PortId(2), seg(40000, 1100, 2, &data(100, 0), false), valid());
        let pure_ack = (p, seg(40000, 1300, 4, &[], false), valid());
        let frames = vec![
            f(1000, 1),
            other.clone(),
            f(1100, 2),
            other_port,
            (p, acked, valid()),
            f(1400, 5), // a gap: 1300 never came
            pure_ack,
        ];
        let mut c = Coalescer::new();
        let out = run(&mut c, &frames);
        let summary: Vec<(u16, u16, usize)> =
            out.iter().map(|(p, _, f)| (p.0, u16::from_be_bytes([f[ETH + IP], f[ETH + IP + 1]]), f.len() - 66)).collect();
        // The changed ACK and the gap each flushed what came before; the pure ACK flushes
        // port 1 (flows in the order they started) before it leaves itself; port 2 waited for
        // the final flush.
        assert_eq!(
            summary,
            vec![(1, 40000, 200), (1, 40000, 100), (1, 40001, 100), (1, 40000, 100), (1, 40000, 0), (2, 40000, 100)]
        );
        // Port 2's frame was a single segment and left with its own metadata.
        assert!(out[5].1.data_valid && out[5].1.gso == Gso::None);
    }

    /// Bad or unknown checksums, options in the IP header, fragments, padding and flags that
    /// end a stream are never merged; a frame we decline flushes its port first.
    #[test]
    fn declines() {
        let good = seg(40000, 1000, 1, &data(100, 0), false);
        let next = seg(40000, 1100, 2, &data(100, 0), false);
        let mut c = Coalescer::new();
        let mut out = Vec::new();
        let mut e = |p: PortId, v: &VnetHdr, f: &[u8]| out.push((p, *v, f.to_vec()));
        assert_eq!(c.offer(PortId(1), &good, &valid(), &mut e), Offer::Held);
        assert_eq!(c.offer(PortId(1), &next, &VnetHdr::default(), &mut e), Offer::Declined, "unknown checksum");
        assert_eq!(out.len(), 1, "the held frame left first");
        let mut fin = next.clone();
        fin[ETH + IP + 13] |= TCP_FIN;
        let mut frag = next.clone();
        frag[ETH + 6] |= 0x20;
        let mut padded = next.clone();
        padded.push(0);
        let mut syn = next.clone();
        syn[ETH + IP + 13] |= TCP_SYN;
        let partial_elsewhere = VnetHdr { needs_csum: true, csum_start: 20, csum_offset: 16, ..Default::default() };
        for f in [&fin, &frag, &padded, &syn] {
            assert!(candidate(f, &valid()).is_none());
        }
        assert!(candidate(&next, &partial_elsewhere).is_none());
        assert!(candidate(&next[..40], &valid()).is_none());
        assert!(candidate(&[], &valid()).is_none());
        let gso = VnetHdr { gso: Gso::TcpV4, gso_size: 100, ..valid() };
        assert!(candidate(&next, &gso).is_none());
        let mut bad_ip = next.clone();
        bad_ip[ETH + 8] = 1; // TTL changed, IP checksum not: a damaged header
        assert!(candidate(&bad_ip, &valid()).is_none());
        // Too small a first segment starts no flow (it could not be cut back to size).
        let mut c = Coalescer::new();
        let tiny = seg(40000, 1000, 1, &data(20, 0), false);
        assert_eq!(c.offer(PortId(1), &tiny, &valid(), &mut |_, _, _| {}), Offer::Declined);
        assert!(c.is_empty());
    }

    /// More flows than slots: the oldest leaves; nothing is lost.
    #[test]
    fn too_many_flows_evict_the_oldest() {
        let frames: Vec<_> = (0..MAX_FLOWS as u16 + 3).map(|i| (PortId(1), seg(30000 + i, 1, 1, &data(50, 0), false), valid())).collect();
        let mut c = Coalescer::new();
        let out = run(&mut c, &frames);
        let ports: Vec<u16> = out.iter().map(|(_, _, f)| u16::from_be_bytes([f[34], f[35]])).collect();
        assert_eq!(ports, (0..MAX_FLOWS as u16 + 3).map(|i| 30000 + i).collect::<Vec<_>>());
    }

    /// A flow never grows past one IPv4 packet.
    #[test]
    fn caps_at_64k() {
        let mss = 1400usize;
        let frames: Vec<_> =
            (0..60u32).map(|i| (PortId(1), seg(40000, i * mss as u32, i as u16, &data(mss, 0), false), valid())).collect();
        let mut c = Coalescer::new();
        let out = run(&mut c, &frames);
        assert!(out.len() >= 2);
        assert!(out.iter().all(|(_, _, f)| f.len() - ETH <= 65_535));
        assert_eq!(out.iter().map(|(_, _, f)| f.len() - 66).sum::<usize>(), 60 * mss);
    }
}
