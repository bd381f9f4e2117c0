//! IPv4 headers, the ICMPv4 messages the router speaks, and the TCP/UDP fields NAT touches.
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
    pub fn header_len(&self) -> usize {
        (self.b()[0] & 0x0f) as usize * 4
    }
    pub fn total_len(&self) -> usize {
        be16(self.b(), 2) as usize
    }
    pub fn ident(&self) -> u16 {
        be16(self.b(), 4)
    }
    pub fn dont_frag(&self) -> bool {
        self.b()[6] & 0x40 != 0
    }
    pub fn more_frags(&self) -> bool {
        self.b()[6] & 0x20 != 0
    }
    /// Fragment offset in bytes.
    pub fn frag_offset(&self) -> usize {
        ((be16(self.b(), 6) & 0x1fff) as usize) * 8
    }
    pub fn is_fragment(&self) -> bool {
        self.more_frags() || self.frag_offset() != 0
    }
    pub fn ttl(&self) -> u8 {
        self.b()[field::TTL]
    }
    pub fn protocol(&self) -> u8 {
        self.b()[field::PROTOCOL]
    }
    pub fn checksum(&self) -> u16 {
        be16(self.b(), 10)
    }
    pub fn src(&self) -> Ipv4Addr {
        let b = self.b();
        Ipv4Addr::new(b[12], b[13], b[14], b[15])
    }
    pub fn dst(&self) -> Ipv4Addr {
        let b = self.b();
        Ipv4Addr::new(b[16], b[17], b[18], b[19])
    }
    /// The header checksum verifies.
    pub fn verify_checksum(&self) -> bool {
        checksum::fold(checksum::add(0, &self.b()[..self.header_len()])) == 0xffff
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

/// ICMPv4 types and codes the router generates or translates.
pub mod icmp {
    pub const ECHO_REPLY: u8 = 0;
    pub const DEST_UNREACH: u8 = 3;
    pub const ECHO_REQUEST: u8 = 8;
    pub const TIME_EXCEEDED: u8 = 11;
    pub const PARAM_PROBLEM: u8 = 12;
    pub const CODE_NET_UNREACH: u8 = 0;
    pub const CODE_HOST_UNREACH: u8 = 1;
    pub const CODE_PORT_UNREACH: u8 = 3;
    pub const CODE_FRAG_NEEDED: u8 = 4;
    pub const CODE_ADMIN_PROHIBITED: u8 = 13;
    /// An error message (it quotes the packet that caused it).
    pub fn is_error(t: u8) -> bool {
        matches!(t, DEST_UNREACH | TIME_EXCEEDED | PARAM_PROBLEM)
    }
}

/// The flow identity of an L4 payload: (source port, destination port), with ICMP echo's
/// identifier standing for both. `None` when the header is cut short.
pub fn l4_ports(protocol: u8, l4: &[u8]) -> Option<(u16, u16)> {
    match protocol {
        proto::TCP | proto::UDP => (l4.len() >= 4).then(|| (be16(l4, 0), be16(l4, 2))),
        proto::ICMP => {
            if l4.len() < 8 {
                return None;
            }
            match l4[0] {
                icmp::ECHO_REQUEST | icmp::ECHO_REPLY => Some((be16(l4, 4), be16(l4, 4))),
                _ => Some((0, 0)),
            }
        }
        _ => Some((0, 0)),
    }
}

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
    fn emitted_header_golden() {
        let mut b = [0u8; 28];
        emit_header(&mut b, Ipv4Addr::new(10, 1, 1, 1), Ipv4Addr::new(10, 1, 1, 11), proto::ICMP, 64, 8, 1);
        assert_eq!(b[..20], [0x45, 0, 0, 28, 0, 1, 0, 0, 64, 1, 0x64, 0xd3, 10, 1, 1, 1, 10, 1, 1, 11]);
        assert!(Ipv4Packet::new_checked(&b[..]).unwrap().verify_checksum());
    }
}
