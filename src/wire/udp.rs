//! UDP headers: ports, length and checksum.
//!
//! Invariant: a [`UdpPacket`] made by [`UdpPacket::new_checked`] holds the 8-byte header. Its
//! length field is not trusted: the IP packet bounds the datagram.

use super::be16;
use super::{Result, WireError};

pub const HEADER_LEN: usize = 8;

pub mod field {
    use core::ops::Range;
    pub const SRC_PORT: Range<usize> = 0..2;
    pub const DST_PORT: Range<usize> = 2..4;
    pub const LENGTH: Range<usize> = 4..6;
    pub const CHECKSUM: Range<usize> = 6..8;
}

#[derive(Debug, Clone)]
pub struct UdpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> UdpPacket<T> {
    /// Checks that the header fits `buffer`.
    pub fn new_checked(buffer: T) -> Result<Self> {
        if buffer.as_ref().len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        Ok(UdpPacket { buffer })
    }
    fn b(&self) -> &[u8] {
        self.buffer.as_ref()
    }
    #[inline]
    pub fn src_port(&self) -> u16 {
        be16(self.b(), field::SRC_PORT.start)
    }
    #[inline]
    pub fn dst_port(&self) -> u16 {
        be16(self.b(), field::DST_PORT.start)
    }
    /// The length field (header and payload), as the sender wrote it.
    #[inline]
    pub fn length(&self) -> u16 {
        be16(self.b(), field::LENGTH.start)
    }
    #[inline]
    pub fn checksum(&self) -> u16 {
        be16(self.b(), field::CHECKSUM.start)
    }
    pub fn payload(&self) -> &[u8] {
        &self.b()[HEADER_LEN..]
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UdpRepr {
    pub src_port: u16,
    pub dst_port: u16,
}

impl UdpRepr {
    #[inline]
    pub fn parse<T: AsRef<[u8]>>(p: &UdpPacket<T>) -> Self {
        UdpRepr { src_port: p.src_port(), dst_port: p.dst_port() }
    }
    /// Writes the header for `payload_len` bytes after it, checksum zero (none, for IPv4).
    pub fn emit(&self, b: &mut [u8], payload_len: usize) {
        b[field::SRC_PORT].copy_from_slice(&self.src_port.to_be_bytes());
        b[field::DST_PORT].copy_from_slice(&self.dst_port.to_be_bytes());
        b[field::LENGTH].copy_from_slice(&((HEADER_LEN + payload_len) as u16).to_be_bytes());
        b[field::CHECKSUM].copy_from_slice(&[0, 0]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A DHCP DISCOVER's UDP header: 68 -> 67, 308 bytes, checksum 0x1e4b.
    const H: [u8; 8] = [0x00, 0x44, 0x00, 0x43, 0x01, 0x34, 0x1e, 0x4b];

    #[test]
    fn checked_view_and_repr() {
        let p = UdpPacket::new_checked(&H[..]).unwrap();
        assert_eq!((p.src_port(), p.dst_port(), p.length(), p.checksum()), (68, 67, 308, 0x1e4b));
        let r = UdpRepr::parse(&p);
        assert_eq!(r, UdpRepr { src_port: 68, dst_port: 67 });
        let mut out = [0xffu8; 8];
        r.emit(&mut out, 300);
        assert_eq!(out, [0x00, 0x44, 0x00, 0x43, 0x01, 0x34, 0, 0]);
        assert_eq!(UdpPacket::new_checked(&H[..7]).unwrap_err(), WireError::Truncated);
    }
}
