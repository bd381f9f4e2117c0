//! IPv4 headers (a checked view and a Repr) and where NAT finds a TCP/UDP checksum; ICMPv4
//! lives in `wire::icmp` (re-exported here as `ipv4::icmp`).
//!
//! Invariant: an [`Ipv4Packet`] made by [`Ipv4Packet::new_checked`] has version 4, an IHL of at
//! least 5, a header that fits the buffer and a total length between the header length and the
//! buffer length, so every accessor indexes in bounds. Ethernet padding after `total_len` is
//! outside [`Ipv4Packet::packet`].

use super::be16;
use super::checksum;
use super::{Result, WireError};
use std::net::Ipv4Addr;

pub const HEADER_LEN: usize = 20;

pub mod field {
    use core::ops::Range;
    pub const VER_IHL: usize = 0;
    pub const TOS: usize = 1;
    pub const LENGTH: Range<usize> = 2..4;
    pub const IDENT: Range<usize> = 4..6;
    pub const FLG_OFF: Range<usize> = 6..8;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: Range<usize> = 10..12;
    pub const SRC: Range<usize> = 12..16;
    pub const DST: Range<usize> = 16..20;
}

pub mod proto {
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
}

/// Offset of the checksum field inside a TCP or UDP header.
pub fn l4_checksum_offset(protocol: u8) -> Option<usize> {
    match protocol {
        proto::TCP => Some(16),
        proto::UDP => Some(6),
        _ => None,
    }
}


/// A view of an IPv4 packet (header and payload).
#[derive(Debug, Clone)]
pub struct Ipv4Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv4Packet<T> {
    /// Checks version, IHL, and that the header and total length fit `buffer`.
    pub fn new_checked(buffer: T) -> Result<Self> {
        let b = buffer.as_ref();
        if b.len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        if b[0] >> 4 != 4 {
            return Err(WireError::Malformed);
        }
        let hl = (b[0] & 0x0f) as usize * 4;
        let total = be16(b, 2) as usize;
        if hl < HEADER_LEN || total < hl {
            return Err(WireError::Malformed);
        }
        if hl > b.len() || total > b.len() {
            return Err(WireError::Truncated);
        }
        Ok(Ipv4Packet { buffer })
    }
    pub fn into_inner(self) -> T {
        self.buffer
    }
    fn b(&self) -> &[u8] {
        self.buffer.as_ref()
    }
    #[inline]
    pub fn header_len(&self) -> usize {
        (self.b()[0] & 0x0f) as usize * 4
    }
    #[inline]
    pub fn total_len(&self) -> usize {
        be16(self.b(), 2) as usize
    }
    #[inline]
    pub fn ident(&self) -> u16 {
        be16(self.b(), 4)
    }
    #[inline]
    pub fn dont_frag(&self) -> bool {
        self.b()[6] & 0x40 != 0
    }
    #[inline]
    pub fn more_frags(&self) -> bool {
        self.b()[6] & 0x20 != 0
    }
    /// Fragment offset in bytes.
    #[inline]
    pub fn frag_offset(&self) -> usize {
        ((be16(self.b(), 6) & 0x1fff) as usize) * 8
    }
    #[inline]
    pub fn is_fragment(&self) -> bool {
        self.more_frags() || self.frag_offset() != 0
    }
    #[inline]
    pub fn ttl(&self) -> u8 {
        self.b()[field::TTL]
    }
    #[inline]
    pub fn protocol(&self) -> u8 {
        self.b()[field::PROTOCOL]
    }
    #[inline]
    pub fn checksum(&self) -> u16 {
        be16(self.b(), 10)
    }
    #[inline]
    pub fn src(&self) -> Ipv4Addr {
        let b = self.b();
        Ipv4Addr::new(b[12], b[13], b[14], b[15])
    }
    #[inline]
    pub fn dst(&self) -> Ipv4Addr {
        let b = self.b();
        Ipv4Addr::new(b[16], b[17], b[18], b[19])
    }
    /// The header checksum verifies.
    #[inline]
    pub fn verify_checksum(&self) -> bool {
        header_checksum_ok(&self.b()[..self.header_len()])
    }
    /// Header and payload, without Ethernet padding.
    pub fn packet(&self) -> &[u8] {
        &self.b()[..self.total_len()]
    }
    pub fn payload(&self) -> &[u8] {
        &self.b()[self.header_len()..self.total_len()]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv4Packet<T> {
    fn m(&mut self) -> &mut [u8] {
        self.buffer.as_mut()
    }
    fn set_csum(&mut self, c: u16) {
        self.m()[field::CHECKSUM].copy_from_slice(&c.to_be_bytes());
    }
    /// Decrements the TTL, updating the header checksum incrementally (RFC 1624).
    pub fn decrement_ttl(&mut self) {
        let b = self.b();
        let old = be16(b, 8);
        let new = old.wrapping_sub(0x0100);
        let c = checksum::update16(self.checksum(), old, new);
        self.m()[field::TTL] = (new >> 8) as u8;
        self.set_csum(c);
    }
    /// Rewrites the addresses (where given) and steps the TTL down by one (when `ttl_step`),
    /// with one incremental header checksum update for all of it (a forwarded, translated
    /// packet's header in one pass).
    #[inline]
    pub fn rewrite_forwarded(&mut self, src: Option<Ipv4Addr>, dst: Option<Ipv4Addr>, ttl_step: bool) {
        let mut sum = !self.checksum() as u64;
        if let Some(a) = src {
            sum += checksum::delta32(u32::from(self.src()), u32::from(a));
            self.m()[field::SRC].copy_from_slice(&a.octets());
        }
        if let Some(a) = dst {
            sum += checksum::delta32(u32::from(self.dst()), u32::from(a));
            self.m()[field::DST].copy_from_slice(&a.octets());
        }
        if ttl_step {
            let old = be16(self.b(), 8);
            let new = old.wrapping_sub(0x0100);
            sum += !old as u64 + new as u64;
            self.m()[field::TTL] = (new >> 8) as u8;
        }
        self.set_csum(!checksum::fold(sum));
    }
    /// Sets the TTL, updating the header checksum incrementally.
    pub fn set_ttl(&mut self, ttl: u8) {
        let old = be16(self.b(), 8);
        let new = (ttl as u16) << 8 | (old & 0xff);
        let c = checksum::update16(self.checksum(), old, new);
        self.m()[field::TTL] = ttl;
        self.set_csum(c);
    }

    /// Rewrites the source address, updating the header checksum incrementally.
    pub fn set_src(&mut self, a: Ipv4Addr) {
        let c = checksum::update32(self.checksum(), u32::from(self.src()), u32::from(a));
        self.m()[field::SRC].copy_from_slice(&a.octets());
        self.set_csum(c);
    }
    /// Rewrites the destination address, updating the header checksum incrementally.
    pub fn set_dst(&mut self, a: Ipv4Addr) {
        let c = checksum::update32(self.checksum(), u32::from(self.dst()), u32::from(a));
        self.m()[field::DST].copy_from_slice(&a.octets());
        self.set_csum(c);
    }
    /// Recomputes the header checksum from scratch.
    pub fn fill_checksum(&mut self) {
        self.set_csum(0);
        let hl = self.header_len();
        let c = checksum::checksum(&self.b()[..hl]);
        self.set_csum(c);
    }
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let (hl, tl) = (self.header_len(), self.total_len());
        &mut self.m()[hl..tl]
    }
}

/// Whether an IPv4 header (exactly its `header_len` bytes) carries a valid checksum.
///
/// Every routed packet comes here, and nearly all headers are 20 bytes: those are summed as
/// five native-endian words without the general routine's lanes and tail (7 ns -> 1 ns).
#[inline(always)]
pub fn header_checksum_ok(header: &[u8]) -> bool {
    if let Ok(h) = <&[u8; HEADER_LEN]>::try_from(header) {
        let w = |i: usize| u32::from_ne_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]) as u64;
        // The ones'-complement sum does not depend on byte order (RFC 1071 2(B)): all ones
        // either way.
        // Folded without fold()'s loop: < 2^35, then < 2^32 + 8, then three 16-bit folds.
        let s = w(0) + w(4) + w(8) + w(12) + w(16);
        let s = (s & 0xffff_ffff) + (s >> 32);
        let s = (s & 0xffff) + (s >> 16);
        let s = (s & 0xffff) + (s >> 16);
        return (s & 0xffff) + (s >> 16) == 0xffff;
    }
    checksum::fold(checksum::add(0, header)) == 0xffff
}

/// The header fields the datapath acts on, read once from a checked view. Lengths are in
/// bytes; `frag_offset` too. Kept small (20 bytes): it travels with every frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Repr {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub protocol: u8,
    pub ttl: u8,
    pub header_len: u8,
    pub dont_frag: bool,
    pub total_len: u16,
    pub ident: u16,
    pub frag_offset: u16,
    pub more_frags: bool,
}

impl Ipv4Repr {
    #[inline]
    pub fn parse<T: AsRef<[u8]>>(p: &Ipv4Packet<T>) -> Self {
        Ipv4Repr {
            src: p.src(),
            dst: p.dst(),
            protocol: p.protocol(),
            ttl: p.ttl(),
            header_len: p.header_len() as u8,
            total_len: p.total_len() as u16,
            ident: p.ident(),
            dont_frag: p.dont_frag(),
            more_frags: p.more_frags(),
            frag_offset: p.frag_offset() as u16,
        }
    }
    #[inline]
    pub fn is_fragment(&self) -> bool {
        self.more_frags || self.frag_offset != 0
    }
    /// Writes a 20-byte header (options are not emitted: `header_len` is taken as 20) with a
    /// valid checksum.
    pub fn emit(&self, b: &mut [u8]) {
        let payload = self.total_len.saturating_sub(self.header_len as u16) as usize;
        emit_header(b, self.src, self.dst, self.protocol, self.ttl, payload, self.ident);
        let w = (self.dont_frag as u16) << 14 | (self.more_frags as u16) << 13 | (self.frag_offset / 8);
        if w != 0 {
            b[field::FLG_OFF].copy_from_slice(&w.to_be_bytes());
            b[field::CHECKSUM].copy_from_slice(&[0, 0]);
            let c = checksum::checksum(&b[..HEADER_LEN]);
            b[field::CHECKSUM].copy_from_slice(&c.to_be_bytes());
        }
    }
}

/// Writes a 20-byte IPv4 header (no options, DF clear) with a valid checksum.
pub fn emit_header(b: &mut [u8], src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, ttl: u8, payload_len: usize, ident: u16) {
    let total = (HEADER_LEN + payload_len) as u16;
    b[0] = 0x45;
    b[1] = 0;
    b[field::LENGTH].copy_from_slice(&total.to_be_bytes());
    b[field::IDENT].copy_from_slice(&ident.to_be_bytes());
    b[field::FLG_OFF].copy_from_slice(&[0, 0]);
    b[field::TTL] = ttl;
    b[field::PROTOCOL] = protocol;
    b[field::CHECKSUM].copy_from_slice(&[0, 0]);
    b[field::SRC].copy_from_slice(&src.octets());
    b[field::DST].copy_from_slice(&dst.octets());
    let c = checksum::checksum(&b[..HEADER_LEN]);
    b[field::CHECKSUM].copy_from_slice(&c.to_be_bytes());
}

pub use super::icmp;

#[cfg(test)]
mod tests {
    use super::*;

    // 192.168.0.1 -> 192.168.0.199 UDP, checksum 0xb861 (same golden header as checksum.rs).
    const H: [u8; 20] = [
        0x45, 0x00, 0x00, 0x14, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8, 0x00, 0x01, 0xc0, 0xa8,
        0x00, 0xc7,
    ];

    fn golden() -> [u8; 20] {
        let mut h = H;
        h[10] = 0;
        h[11] = 0;
        let c = checksum::checksum(&h);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        h
    }

    #[test]
    fn checked_view() {
        let h = golden();
        let p = Ipv4Packet::new_checked(&h[..]).unwrap();
        assert!(p.verify_checksum());
        assert_eq!(p.src(), Ipv4Addr::new(192, 168, 0, 1));
        assert!(p.dont_frag() && !p.is_fragment());
        assert_eq!(p.ttl(), 64);
        let mut bad = h;
        bad[0] = 0x44;
        assert_eq!(Ipv4Packet::new_checked(&bad[..]).unwrap_err(), WireError::Malformed);
        bad[0] = 0x65;
        assert_eq!(Ipv4Packet::new_checked(&bad[..]).unwrap_err(), WireError::Malformed);
        let mut long = h;
        long[2..4].copy_from_slice(&40u16.to_be_bytes());
        assert_eq!(Ipv4Packet::new_checked(&long[..]).unwrap_err(), WireError::Truncated);
        assert_eq!(Ipv4Packet::new_checked(&h[..19]).unwrap_err(), WireError::Truncated);
    }

    #[test]
    fn rewrites_keep_checksum_valid() {
        let mut h = golden();
        let mut p = Ipv4Packet::new_checked(&mut h[..]).unwrap();
        p.decrement_ttl();
        p.set_src(Ipv4Addr::new(203, 0, 113, 10));
        p.set_dst(Ipv4Addr::new(10, 1, 1, 11));
        assert_eq!(p.ttl(), 63);
        assert!(p.verify_checksum());
        let inc = p.checksum();
        p.fill_checksum();
        assert_eq!(inc, p.checksum());
    }

    #[test]
    fn forwarded_rewrite_is_one_update_of_all_three() {
        for (src, dst, ttl_step) in [(Some([203, 0, 113, 10]), None, true), (None, Some([10, 1, 1, 11]), true), (Some([1, 2, 3, 4]), Some([255, 255, 255, 255]), false), (None, None, true), (None, None, false)] {
            let mut h = golden();
            let mut p = Ipv4Packet::new_checked(&mut h[..]).unwrap();
            let (ttl, old_src, old_dst) = (p.ttl(), p.src(), p.dst());
            p.rewrite_forwarded(src.map(Ipv4Addr::from), dst.map(Ipv4Addr::from), ttl_step);
            assert_eq!(p.ttl(), ttl - ttl_step as u8);
            assert_eq!(p.src(), src.map_or(old_src, Ipv4Addr::from));
            assert_eq!(p.dst(), dst.map_or(old_dst, Ipv4Addr::from));
            assert!(p.verify_checksum());
            let inc = p.checksum();
            p.fill_checksum();
            assert_eq!(inc, p.checksum());
        }
    }

    #[test]
    fn header_checksum_fast_path_agrees() {
        let h = golden();
        assert!(header_checksum_ok(&h));
        // Every single-bit error is caught by the 20-byte path, as by the general one.
        for i in 0..160 {
            let mut b = h;
            b[i / 8] ^= 1 << (i % 8);
            assert!(!header_checksum_ok(&b), "bit {i}");
            assert_eq!(header_checksum_ok(&b), checksum::fold(checksum::add(0, &b)) == 0xffff);
        }
        // With options (24 bytes): the general path.
        let mut o = [0u8; 24];
        o[..20].copy_from_slice(&h);
        o[0] = 0x46;
        o[20..24].copy_from_slice(&[1, 1, 1, 0]); // NOP NOP NOP EOL
        o[10] = 0;
        o[11] = 0;
        let c = checksum::checksum(&o);
        o[10..12].copy_from_slice(&c.to_be_bytes());
        assert!(header_checksum_ok(&o));
        o[21] = 0;
        assert!(!header_checksum_ok(&o));
    }

    #[test]
    fn repr_parse_and_emit() {
        let h = golden();
        let r = Ipv4Repr::parse(&Ipv4Packet::new_checked(&h[..]).unwrap());
        assert_eq!((r.src, r.dst, r.protocol, r.ttl), (Ipv4Addr::new(192, 168, 0, 1), Ipv4Addr::new(192, 168, 0, 199), proto::UDP, 64));
        assert_eq!((r.header_len, r.total_len, r.ident, r.dont_frag, r.more_frags, r.frag_offset), (20, 20, 0, true, false, 0));
        let mut out = [0u8; 20];
        r.emit(&mut out);
        assert_eq!(out, h, "parse then emit gives the golden header back");
        // A middle fragment: MF and an offset of 1480 bytes (185 units).
        let mut f = h;
        f[6..8].copy_from_slice(&(0x2000u16 | 185).to_be_bytes());
        let r = Ipv4Repr::parse(&Ipv4Packet::new_checked(&f[..]).unwrap());
        assert!(r.is_fragment() && r.more_frags && !r.dont_frag);
        assert_eq!(r.frag_offset, 1480);
        r.emit(&mut out);
        assert_eq!(out[6..8], [0x20, 185]);
        assert!(Ipv4Packet::new_checked(&out[..]).unwrap().verify_checksum());
    }

    #[test]
    fn emitted_header_golden() {
        let mut b = [0u8; 28];
        emit_header(&mut b, Ipv4Addr::new(10, 1, 1, 1), Ipv4Addr::new(10, 1, 1, 11), proto::ICMP, 64, 8, 1);
        assert_eq!(b[..20], [0x45, 0, 0, 28, 0, 1, 0, 0, 64, 1, 0x64, 0xd3, 10, 1, 1, 1, 10, 1, 1, 11]);
        assert!(Ipv4Packet::new_checked(&b[..]).unwrap().verify_checksum());
    }
}
