//! Software fallbacks for offloads: when a frame carries work for the receiver (a partial L4
//! checksum, or a GSO super-frame to be cut into MSS-sized segments) and the egress port cannot
//! take a virtio_net_hdr, this module finishes that work, like the kernel's skb_gso_segment and
//! skb_checksum_help.
//!
//! Pure: frame bytes and metadata in, finished frames out through a callback, written into a
//! caller-owned scratch buffer (no allocation). Any inconsistency between the metadata and the
//! headers is an error, never a panic.

use crate::wire::checksum;
use crate::wire::ethernet::ethertype;
use crate::wire::vnet::{Gso, VnetHdr};

/// Why a frame could not be finished in software.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffloadError {
    /// Offsets or headers do not describe a well-formed packet.
    Malformed,
    /// A combination we do not segment (IPv6 extension headers, non-TCP/UDP).
    Unsupported,
    /// The destination took no more frames (too small a buffer, or its own send failed).
    Sink,
}

const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

struct Layout {
    l3: usize,
    v4: bool,
    l4: usize,
    proto: u8,
    /// End of the IP packet (excludes Ethernet padding).
    end: usize,
}

fn be16(b: &[u8], at: usize) -> Result<u16, OffloadError> {
    b.get(at..at + 2).map(|s| u16::from_be_bytes([s[0], s[1]])).ok_or(OffloadError::Malformed)
}

/// Where L3 and L4 start in an Ethernet frame (one optional 802.1Q tag), using etherparse's
/// checked header slices; IPv6 extension headers are walked to find the transport protocol.
fn layout(f: &[u8]) -> Result<Layout, OffloadError> {
    use etherparse::{Ipv4HeaderSlice, Ipv6ExtensionsSlice, Ipv6HeaderSlice};
    let mut l3 = 14;
    let mut et = be16(f, 12)?;
    if et == ethertype::VLAN {
        et = be16(f, 16)?;
        l3 = 18;
    }
    let ip = f.get(l3..).ok_or(OffloadError::Malformed)?;
    match et {
        ethertype::IPV4 => {
            let h = Ipv4HeaderSlice::from_slice(ip).map_err(|_| OffloadError::Malformed)?;
            let (hl, total) = (h.slice().len(), h.total_len() as usize);
            if total < hl || l3 + total > f.len() {
                return Err(OffloadError::Malformed);
            }
            Ok(Layout { l3, v4: true, l4: l3 + hl, proto: h.protocol().0, end: l3 + total })
        }
        ethertype::IPV6 => {
            let h = Ipv6HeaderSlice::from_slice(ip).map_err(|_| OffloadError::Malformed)?;
            let end = l3 + 40 + h.payload_length() as usize;
            if end > f.len() {
                return Err(OffloadError::Malformed);
            }
            let (exts, proto, _) = Ipv6ExtensionsSlice::from_slice(h.next_header(), &f[l3 + 40..end])
                .map_err(|_| OffloadError::Unsupported)?;
            Ok(Layout { l3, v4: false, l4: l3 + 40 + exts.slice().len(), proto: proto.0, end })
        }
        _ => Err(OffloadError::Unsupported),
    }
}

/// Smallest segment size accepted for GSO: Linux's TCP_MIN_SND_MSS for TCP, one byte of
/// payload per datagram is legal for UDP but 8 keeps the fan-out of one super-frame bounded.
const MIN_GSO_SIZE: u16 = 48;

/// Checks that offload metadata from an untrusted port describes this very frame, before the
/// frame goes anywhere. A partial checksum must sit exactly in the TCP/UDP header (anything
/// else could make the receiver, or our own software path, overwrite MACs or IP addresses
/// after port security has passed them); a GSO type must match the packet's protocols; and the
/// segment size must be sane (a tiny one would multiply one frame into thousands).
pub fn validate(f: &[u8], v: &VnetHdr) -> Result<(), OffloadError> {
    if v.is_plain() {
        return Ok(());
    }
    checked_layout(f, v).map(|_| ())
}

/// [`validate`] for a frame whose headers ingress already read: an IPv4 packet's layout comes
/// from the context instead of a second parse.
pub fn validate_ctx(f: &[u8], v: &VnetHdr, ctx: &crate::frame::FrameCtx) -> Result<(), OffloadError> {
    if v.is_plain() {
        return Ok(());
    }
    match ctx.ipv4() {
        Some(ip) => {
            let lay = Layout { l3: crate::frame::L3_OFFSET, v4: true, l4: ip.l4_offset(), proto: ip.ip.protocol, end: ip.end() };
            check_layout(lay, v).map(|_| ())
        }
        None => validate(f, v),
    }
}

/// The frame's layout, once its non-plain offload metadata has been checked against it.
fn checked_layout(f: &[u8], v: &VnetHdr) -> Result<Layout, OffloadError> {
    check_layout(layout(f)?, v)
}

/// `lay` if the non-plain offload metadata `v` describes it.
fn check_layout(lay: Layout, v: &VnetHdr) -> Result<Layout, OffloadError> {
    if v.needs_csum {
        let (cs, co) = (v.csum_start as usize, v.csum_offset as usize);
        match lay.proto {
            IPPROTO_TCP if cs == lay.l4 && co == 16 => {}
            IPPROTO_UDP if cs == lay.l4 && co == 6 => {}
            IPPROTO_TCP | IPPROTO_UDP => return Err(OffloadError::Malformed),
            // Other protocols (none use it today): the field must at least lie in L4.
            _ if cs >= lay.l4 => {}
            _ => return Err(OffloadError::Malformed),
        }
        // The checksum field itself must lie inside the IP packet (a short IP length can cut
        // the L4 header off).
        if cs + co + 2 > lay.end {
            return Err(OffloadError::Malformed);
        }
    }
    let ok = match v.gso {
        Gso::None => true,
        Gso::TcpV4 => lay.v4 && lay.proto == IPPROTO_TCP && v.gso_size >= MIN_GSO_SIZE,
        Gso::TcpV6 => !lay.v4 && lay.proto == IPPROTO_TCP && v.gso_size >= MIN_GSO_SIZE,
        Gso::UdpL4 => lay.proto == IPPROTO_UDP && v.gso_size >= 8,
    };
    if ok {
        Ok(lay)
    } else {
        Err(OffloadError::Malformed)
    }
}

fn pseudo(s: &[u8], lay: &Layout, l4_len: usize) -> u64 {
    let p = lay.proto;
    if lay.v4 {
        let a = |o: usize| [s[lay.l3 + o], s[lay.l3 + o + 1], s[lay.l3 + o + 2], s[lay.l3 + o + 3]];
        checksum::pseudo_v4(a(12), a(16), p, l4_len as u32)
    } else {
        let mut src = [0u8; 16];
        let mut dst = [0u8; 16];
        src.copy_from_slice(&s[lay.l3 + 8..lay.l3 + 24]);
        dst.copy_from_slice(&s[lay.l3 + 24..lay.l3 + 40]);
        checksum::pseudo_v6(src, dst, p, l4_len as u32)
    }
}

/// Completes a pending (partial) L4 checksum in place and clears the flag; for frames the
/// router must cut into IP fragments. GSO frames are refused (they are segmented instead).
pub fn complete_checksum(frame: &mut [u8], v: &mut VnetHdr) -> Result<(), OffloadError> {
    if !v.needs_csum {
        return Ok(());
    }
    if v.gso != Gso::None {
        return Err(OffloadError::Unsupported);
    }
    let lay = checked_layout(frame, v)?;
    let (cs, co) = (v.csum_start as usize, v.csum_offset as usize);
    let mut c = !checksum::fold(checksum::add(0, &frame[cs..lay.end]));
    if lay.proto == IPPROTO_UDP && c == 0 {
        c = 0xffff;
    }
    frame[cs + co..cs + co + 2].copy_from_slice(&c.to_be_bytes());
    v.needs_csum = false;
    Ok(())
}

/// Where finished frames are written: room for each one in turn, filled in place, so a
/// segment is copied once, straight to where it is sent from.
pub trait Sink {
    /// Room for the next frame of exactly `len` bytes, or `None`: take no more.
    fn next(&mut self, len: usize) -> Option<&mut [u8]>;
    /// The frame in the room last handed out is complete.
    fn done(&mut self);
}

/// One frame at a time in a scratch buffer, each handed to a callback.
struct ScratchSink<'a, 'b> {
    buf: &'a mut [u8],
    len: usize,
    out: &'a mut (dyn FnMut(&[u8]) + 'b),
}

impl Sink for ScratchSink<'_, '_> {
    fn next(&mut self, len: usize) -> Option<&mut [u8]> {
        self.len = len;
        self.buf.get_mut(..len)
    }
    fn done(&mut self) {
        (self.out)(&self.buf[..self.len]);
    }
}

/// Finishes `frame` for a port without offloads and hands each resulting frame to `out`.
/// Returns how many frames were produced.
pub fn finish(
    frame: &[u8],
    v: &VnetHdr,
    scratch: &mut [u8],
    out: &mut dyn FnMut(&[u8]),
) -> Result<usize, OffloadError> {
    if v.is_plain() {
        out(frame);
        return Ok(1);
    }
    finish_into(frame, v, &mut ScratchSink { buf: scratch, len: 0, out })
}

/// Finishes a frame whose metadata asks for work (a partial checksum, GSO) into `sink`:
/// the checksum completed, or the segments cut. Returns how many frames were produced.
pub fn finish_into(frame: &[u8], v: &VnetHdr, sink: &mut dyn Sink) -> Result<usize, OffloadError> {
    let lay = checked_layout(frame, v)?;
    if v.gso != Gso::None {
        return segment(frame, &lay, v, sink);
    }
    let s = sink.next(frame.len()).ok_or(OffloadError::Sink)?;
    s.copy_from_slice(frame);
    if v.needs_csum {
        // Only the IP packet is summed: Ethernet padding is not part of it.
        let (cs, co) = (v.csum_start as usize, v.csum_offset as usize);
        let mut c = !checksum::fold(checksum::add(0, &s[cs..lay.end]));
        if lay.proto == IPPROTO_UDP && c == 0 {
            c = 0xffff; // RFC 768: zero means "no checksum"
        }
        s[cs + co..cs + co + 2].copy_from_slice(&c.to_be_bytes());
    }
    sink.done();
    Ok(1)
}

/// Cuts a super-frame whose metadata `checked_layout` has accepted (so the GSO type matches
/// the L3/L4 protocols and the segment size is sane) into wire-sized frames. Each payload
/// byte is read once: copied and summed for the segment's checksum in the same pass.
fn segment(f: &[u8], lay: &Layout, v: &VnetHdr, sink: &mut dyn Sink) -> Result<usize, OffloadError> {
    let want = lay.proto;
    let hdr_end = if want == IPPROTO_TCP {
        let doff = *f.get(lay.l4 + 12).ok_or(OffloadError::Malformed)?;
        let thl = (doff >> 4) as usize * 4;
        if thl < 20 {
            return Err(OffloadError::Malformed);
        }
        lay.l4 + thl
    } else {
        lay.l4 + 8
    };
    if hdr_end > lay.end {
        return Err(OffloadError::Malformed);
    }
    let mss = v.gso_size as usize;
    let payload = &f[hdr_end..lay.end];
    if mss < 8 {
        return Err(OffloadError::Malformed);
    }
    let seq0 = if want == IPPROTO_TCP {
        u32::from_be_bytes([f[lay.l4 + 4], f[lay.l4 + 5], f[lay.l4 + 6], f[lay.l4 + 7]])
    } else {
        0
    };
    let id0 = if lay.v4 { be16(f, lay.l3 + 4)? } else { 0 };
    let n = payload.len().div_ceil(mss).max(1);
    let csum_at = lay.l4 + if want == IPPROTO_TCP { 16 } else { 6 };
    for i in 0..n {
        let chunk = &payload[(i * mss).min(payload.len())..((i + 1) * mss).min(payload.len())];
        let end = hdr_end + chunk.len();
        let s = sink.next(end).ok_or(OffloadError::Sink)?;
        s[..hdr_end].copy_from_slice(&f[..hdr_end]);
        // The L4 header starts on an even offset and is a whole number of words long, so the
        // payload's sum adds to the header's as it stands.
        let chunk_sum = checksum::copy_add(0, &mut s[hdr_end..], chunk);
        if lay.v4 {
            let total = (end - lay.l3) as u16;
            s[lay.l3 + 2..lay.l3 + 4].copy_from_slice(&total.to_be_bytes());
            s[lay.l3 + 4..lay.l3 + 6].copy_from_slice(&id0.wrapping_add(i as u16).to_be_bytes());
            s[lay.l3 + 10] = 0;
            s[lay.l3 + 11] = 0;
            let c = checksum::checksum(&s[lay.l3..lay.l4]);
            s[lay.l3 + 10..lay.l3 + 12].copy_from_slice(&c.to_be_bytes());
        } else {
            let plen = (end - lay.l3 - 40) as u16;
            s[lay.l3 + 4..lay.l3 + 6].copy_from_slice(&plen.to_be_bytes());
        }
        if want == IPPROTO_TCP {
            let seq = seq0.wrapping_add((i * mss) as u32);
            s[lay.l4 + 4..lay.l4 + 8].copy_from_slice(&seq.to_be_bytes());
            let flags = &mut s[lay.l4 + 13];
            if i + 1 < n {
                *flags &= !(0x01 | 0x08); // FIN and PSH only on the last segment
            }
            if i > 0 {
                *flags &= !0x80; // CWR only on the first
            }
        } else {
            let ulen = (end - lay.l4) as u16;
            s[lay.l4 + 4..lay.l4 + 6].copy_from_slice(&ulen.to_be_bytes());
        }
        s[csum_at..csum_at + 2].fill(0);
        let sum = checksum::add(pseudo(s, lay, end - lay.l4) + chunk_sum, &s[lay.l4..hdr_end]);
        let mut c = !checksum::fold(sum);
        if want == IPPROTO_UDP && c == 0 {
            c = 0xffff;
        }
        s[csum_at..csum_at + 2].copy_from_slice(&c.to_be_bytes());
        sink.done();
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{PacketBuilder, SlicedPacket, TransportSlice, NetSlice};

    fn tcp_superframe(payload: &[u8], tag: bool) -> Vec<u8> {
        let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
        let b = if tag {
            b.single_vlan(etherparse::VlanId::try_new(101).unwrap())
                .ipv4([10, 1, 1, 11], [10, 1, 1, 12], 64)
        } else {
            b.ipv4([10, 1, 1, 11], [10, 1, 1, 12], 64)
        };
        let b = b.tcp(40000, 5201, 1000, 65535).ack(7).psh().fin();
        let mut v = Vec::new();
        b.write(&mut v, payload).unwrap();
        v
    }

    fn check_segments(tag: bool) {
        let payload: Vec<u8> = (0..250u32).map(|i| (i * 7) as u8).collect();
        let f = tcp_superframe(&payload, tag);
        let l3 = if tag { 18 } else { 14 };
        let v = VnetHdr { needs_csum: true, gso: Gso::TcpV4, gso_size: 100, hdr_len: (l3 + 40) as u16, csum_start: (l3 + 20) as u16, csum_offset: 16, ..Default::default() };
        let mut scratch = vec![0u8; 70000];
        let mut segs: Vec<Vec<u8>> = Vec::new();
        let n = finish(&f, &v, &mut scratch, &mut |s| segs.push(s.to_vec())).unwrap();
        assert_eq!(n, 3);
        let mut got = Vec::new();
        for (i, s) in segs.iter().enumerate() {
            let p = SlicedPacket::from_ethernet(s).unwrap();
            let Some(NetSlice::Ipv4(ip)) = &p.net else { panic!("not ipv4") };
            let h = ip.header().to_header();
            assert_eq!(h.header_checksum, h.calc_header_checksum(), "segment {i} ip checksum");
            assert_eq!(h.identification, i as u16);
            let Some(TransportSlice::Tcp(t)) = &p.transport else { panic!("not tcp") };
            let th = t.to_header();
            assert_eq!(th.sequence_number, 1000 + 100 * i as u32);
            assert_eq!(th.checksum, th.calc_checksum_ipv4(&h, t.payload()).unwrap(), "segment {i} tcp checksum");
            assert_eq!(th.fin, i == 2);
            assert_eq!(th.psh, i == 2);
            assert!(th.ack);
            got.extend_from_slice(t.payload());
        }
        assert_eq!(got, payload);
        assert_eq!(segs[2].len(), l3 + 40 + 50);
    }

    #[test]
    fn tcpv4_segmentation_untagged() {
        check_segments(false);
    }

    #[test]
    fn tcpv4_segmentation_tagged() {
        check_segments(true);
    }

    /// Byte-exact oracle: each segment equals what etherparse builds from scratch for that
    /// segment (sequence number, IP id, FIN/PSH only on the last, lengths, both checksums).
    #[test]
    fn segments_match_independently_built_frames_byte_for_byte() {
        use etherparse::{IpHeaders, Ipv4Header, IpNumber};
        let payload: Vec<u8> = (0..100u8).collect();
        let build = |seq: u32, id: u16, last: bool, data: &[u8]| {
            let mut ip = Ipv4Header::new(0, 64, IpNumber::TCP, [10, 1, 1, 11], [10, 1, 1, 12]).unwrap();
            ip.identification = id;
            let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
                .ip(IpHeaders::Ipv4(ip, Default::default()))
                .tcp(40000, 5201, seq, 65535)
                .ack(7);
            let b = if last { b.psh().fin() } else { b };
            let mut v = Vec::new();
            b.write(&mut v, data).unwrap();
            v
        };
        let sf = build(1000, 0x1234, true, &payload);
        let v = VnetHdr { needs_csum: true, gso: Gso::TcpV4, gso_size: 48, hdr_len: 54, csum_start: 34, csum_offset: 16, ..Default::default() };
        let mut scratch = vec![0u8; 256];
        let mut segs = Vec::new();
        finish(&sf, &v, &mut scratch, &mut |s| segs.push(s.to_vec())).unwrap();
        assert_eq!(segs, vec![
            build(1000, 0x1234, false, &payload[0..48]),
            build(1048, 0x1235, false, &payload[48..96]),
            build(1096, 0x1236, true, &payload[96..100]),
        ]);
    }

    #[test]
    fn tcpv6_and_udp_l4_segments_match_independent_frames() {
        use etherparse::{IpHeaders, Ipv4Header, IpNumber};
        let eth = || PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
        let (a, b) = ([0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1], [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        let v6 = |seq: u32, d: &[u8]| {
            let mut v = Vec::new();
            eth().ipv6(a, b, 64).tcp(1, 2, seq, 100).ack(9).write(&mut v, d).unwrap();
            v
        };
        let data: Vec<u8> = (0..70u8).collect();
        let v = VnetHdr { needs_csum: true, gso: Gso::TcpV6, gso_size: 48, hdr_len: 74, csum_start: 54, csum_offset: 16, ..Default::default() };
        let mut scratch = vec![0u8; 256];
        let mut segs = Vec::new();
        finish(&v6(5, &data), &v, &mut scratch, &mut |s| segs.push(s.to_vec())).unwrap();
        assert_eq!(segs, vec![v6(5, &data[..48]), v6(53, &data[48..])]);

        let udp = |id: u16, d: &[u8]| {
            let mut ip = Ipv4Header::new(0, 64, IpNumber::UDP, [10, 0, 0, 1], [10, 0, 0, 2]).unwrap();
            ip.identification = id;
            let mut v = Vec::new();
            eth().ip(IpHeaders::Ipv4(ip, Default::default())).udp(53, 5353).write(&mut v, d).unwrap();
            v
        };
        let data = &data[..20];
        let v = VnetHdr { needs_csum: true, gso: Gso::UdpL4, gso_size: 8, hdr_len: 42, csum_start: 34, csum_offset: 6, ..Default::default() };
        let mut segs = Vec::new();
        finish(&udp(7, data), &v, &mut scratch, &mut |s| segs.push(s.to_vec())).unwrap();
        assert_eq!(segs, vec![udp(7, &data[..8]), udp(8, &data[8..16]), udp(9, &data[16..])]);
    }

    /// Completes the partial L4 checksum of an untagged IPv4 frame (L4 at byte 34) in software.
    fn complete(partial: &[u8], csum_offset: u16) -> Vec<u8> {
        let v = VnetHdr { needs_csum: true, csum_start: 34, csum_offset, ..Default::default() };
        let mut scratch = vec![0u8; 2048];
        let mut out = Vec::new();
        finish(partial, &v, &mut scratch, &mut |s| out = s.to_vec()).unwrap();
        out
    }

    // Golden bytes: a 2-byte TCP payload whose partial checksum (pseudo-header sum) is completed.
    #[test]
    fn partial_checksum_completed_golden() {
        let f = tcp_superframe(b"hi", false);
        let mut partial = f.clone();
        // Put the pseudo-header sum in the field, as a kernel sending CHECKSUM_PARTIAL does.
        let ps = checksum::fold(checksum::pseudo_v4([10, 1, 1, 11], [10, 1, 1, 12], 6, 22));
        partial[50..52].copy_from_slice(&ps.to_be_bytes());
        let out = complete(&partial, 16);
        assert_eq!(out, f, "completed checksum equals the one etherparse computed");
        assert_eq!(&out[50..52], &f[50..52]);
    }

    #[test]
    fn checksum_offsets_must_point_at_the_l4_checksum() {
        let f = tcp_superframe(b"hello", false);
        let ok = VnetHdr { needs_csum: true, csum_start: 34, csum_offset: 16, ..Default::default() };
        assert_eq!(validate(&f, &ok), Ok(()));
        // Aimed at the IPv4 source address, or at the MACs: refused.
        for (cs, co) in [(14, 12), (0, 0), (0, 6), (34, 14), (30, 20)] {
            let v = VnetHdr { needs_csum: true, csum_start: cs, csum_offset: co, ..Default::default() };
            assert_eq!(validate(&f, &v), Err(OffloadError::Malformed), "{cs}/{co}");
            let mut scratch = vec![0u8; 2048];
            assert!(finish(&f, &v, &mut scratch, &mut |_| panic!("must not emit")).is_err());
        }
        // GSO type must match the packet, and tiny segments are refused.
        let v = VnetHdr { gso: Gso::TcpV4, gso_size: 1, ..ok };
        assert_eq!(validate(&f, &v), Err(OffloadError::Malformed));
        let v = VnetHdr { gso: Gso::UdpL4, gso_size: 1000, ..ok };
        assert_eq!(validate(&f, &v), Err(OffloadError::Malformed));
        let v = VnetHdr { gso: Gso::TcpV4, gso_size: 1448, ..ok };
        assert_eq!(validate(&f, &v), Ok(()));
        // An IP length that cuts the TCP header short: refused, not indexed out of bounds.
        let mut short = f.clone();
        short[16..18].copy_from_slice(&30u16.to_be_bytes());
        assert_eq!(validate(&short, &ok), Err(OffloadError::Malformed));
        let mut scratch = vec![0u8; 2048];
        assert!(finish(&short, &ok, &mut scratch, &mut |_| {}).is_err());
        // Plain frames need no layout at all (ARP, anything).
        assert_eq!(validate(&[0u8; 20], &VnetHdr::default()), Ok(()));
    }

    #[test]
    fn udp_checksum_zero_is_sent_as_ffff() {
        // Find a payload whose UDP checksum computes to zero, then complete it in software.
        let mut p = [0u8; 4];
        let build = |p: &[u8]| {
            let mut v = Vec::new();
            PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]).ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64).udp(1, 2).write(&mut v, p).unwrap();
            v
        };
        // etherparse writes 0xffff for a zero sum; adjust the payload until that happens.
        let mut found = None;
        for a in 0..=255u8 {
            for b in 0..=255u8 {
                p[0] = a;
                p[1] = b;
                let f = build(&p);
                if f[40..42] == [0xff, 0xff] {
                    found = Some(f);
                    break;
                }
            }
            if found.is_some() {
                break;
            }
        }
        let f = found.expect("some payload sums to zero");
        let mut partial = f.clone();
        let ps = checksum::fold(checksum::pseudo_v4([10, 0, 0, 1], [10, 0, 0, 2], 17, 12));
        partial[40..42].copy_from_slice(&ps.to_be_bytes());
        let out = complete(&partial, 6);
        assert_eq!(&out[40..42], &[0xff, 0xff]);
    }

    #[test]
    fn lying_metadata_is_an_error() {
        let f = tcp_superframe(b"hello", false);
        let mut scratch = vec![0u8; 2048];
        let v = VnetHdr { needs_csum: true, csum_start: 60, csum_offset: 16, ..Default::default() };
        assert_eq!(finish(&f, &v, &mut scratch, &mut |_| {}), Err(OffloadError::Malformed));
        let v = VnetHdr { gso: Gso::TcpV6, gso_size: 1000, ..Default::default() };
        assert_eq!(finish(&f, &v, &mut scratch, &mut |_| {}), Err(OffloadError::Malformed));
        let mut arp = f.clone();
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        let v = VnetHdr { gso: Gso::TcpV4, gso_size: 1000, ..Default::default() };
        assert_eq!(finish(&arp, &v, &mut scratch, &mut |_| {}), Err(OffloadError::Unsupported));
        let v = VnetHdr { gso: Gso::TcpV4, gso_size: 10, ..Default::default() };
        assert_eq!(finish(&f[..30], &v, &mut scratch, &mut |_| {}), Err(OffloadError::Malformed));
    }
}
