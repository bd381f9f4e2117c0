//! ARP for IPv4 over Ethernet (RFC 826): the only hardware/protocol pair the router answers.
//!
//! Invariant: an [`ArpPacket`] made by [`ArpPacket::new_checked`] is at least 28 bytes and
//! describes Ethernet (htype 1, hlen 6) and IPv4 (ptype 0x0800, plen 4).

use super::ethernet::MacAddr;
use super::{Result, WireError};
use std::net::Ipv4Addr;

pub const LEN: usize = 28;
pub const OP_REQUEST: u16 = 1;
pub const OP_REPLY: u16 = 2;

pub mod field {
    use core::ops::Range;
    pub const HTYPE: Range<usize> = 0..2;
    pub const PTYPE: Range<usize> = 2..4;
    pub const HLEN: usize = 4;
    pub const PLEN: usize = 5;
    pub const OPER: Range<usize> = 6..8;
    pub const SHA: Range<usize> = 8..14;
    pub const SPA: Range<usize> = 14..18;
    pub const THA: Range<usize> = 18..24;
    pub const TPA: Range<usize> = 24..28;
}

pub struct ArpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> ArpPacket<T> {
    pub fn new_checked(buffer: T) -> Result<Self> {
        let b = buffer.as_ref();
        if b.len() < LEN {
            return Err(WireError::Truncated);
        }
        if b[field::HTYPE] != [0, 1] || b[field::PTYPE] != [8, 0] || b[field::HLEN] != 6 || b[field::PLEN] != 4 {
            return Err(WireError::Malformed);
        }
        Ok(ArpPacket { buffer })
    }
    fn b(&self) -> &[u8] {
        self.buffer.as_ref()
    }
    pub fn operation(&self) -> u16 {
        u16::from_be_bytes([self.b()[6], self.b()[7]])
    }
    pub fn sender_mac(&self) -> MacAddr {
        MacAddr::from_bytes(&self.b()[field::SHA]).unwrap_or_default()
    }
    pub fn sender_ip(&self) -> Ipv4Addr {
        let b = &self.b()[field::SPA];
        Ipv4Addr::new(b[0], b[1], b[2], b[3])
    }
    pub fn target_ip(&self) -> Ipv4Addr {
        let b = &self.b()[field::TPA];
        Ipv4Addr::new(b[0], b[1], b[2], b[3])
    }
    pub fn target_mac(&self) -> MacAddr {
        MacAddr::from_bytes(&self.b()[field::THA]).unwrap_or_default()
    }
}

/// The ARP message fields, read from a checked view or written into a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArpRepr {
    pub operation: u16,
    pub sender_mac: MacAddr,
    pub sender_ip: Ipv4Addr,
    pub target_mac: MacAddr,
    pub target_ip: Ipv4Addr,
}

impl ArpRepr {
    #[inline]
    pub fn parse<T: AsRef<[u8]>>(p: &ArpPacket<T>) -> Self {
        ArpRepr { operation: p.operation(), sender_mac: p.sender_mac(), sender_ip: p.sender_ip(), target_mac: p.target_mac(), target_ip: p.target_ip() }
    }
    /// Writes the 28-byte message into `b` (at least [`LEN`] bytes).
    pub fn emit(&self, b: &mut [u8]) {
        b[field::HTYPE].copy_from_slice(&[0, 1]);
        b[field::PTYPE].copy_from_slice(&[8, 0]);
        b[field::HLEN] = 6;
        b[field::PLEN] = 4;
        b[field::OPER].copy_from_slice(&self.operation.to_be_bytes());
        b[field::SHA].copy_from_slice(&self.sender_mac.0);
        b[field::SPA].copy_from_slice(&self.sender_ip.octets());
        b[field::THA].copy_from_slice(&self.target_mac.0);
        b[field::TPA].copy_from_slice(&self.target_ip.octets());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_request_round_trip() {
        // who-has 10.1.1.1 tell 10.1.1.11, from 52:54:00:00:00:01
        let g = [
            0, 1, 8, 0, 6, 4, 0, 1, 0x52, 0x54, 0, 0, 0, 1, 10, 1, 1, 11, 0, 0, 0, 0, 0, 0, 10, 1, 1, 1,
        ];
        let p = ArpPacket::new_checked(&g[..]).unwrap();
        assert_eq!(p.operation(), OP_REQUEST);
        assert_eq!(p.sender_ip(), Ipv4Addr::new(10, 1, 1, 11));
        assert_eq!(p.target_ip(), Ipv4Addr::new(10, 1, 1, 1));
        let r = ArpRepr {
            operation: OP_REQUEST,
            sender_mac: p.sender_mac(),
            sender_ip: p.sender_ip(),
            target_mac: MacAddr::ZERO,
            target_ip: p.target_ip(),
        };
        assert_eq!(ArpRepr::parse(&p), r);
        let mut out = [0u8; LEN];
        r.emit(&mut out);
        assert_eq!(out, g);
        let mut bad = g;
        bad[5] = 16;
        assert!(ArpPacket::new_checked(&bad[..]).is_err());
        assert!(ArpPacket::new_checked(&g[..27]).is_err());
    }
}
