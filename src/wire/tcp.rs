//! TCP headers: the fixed 20 bytes the router, conntrack and NAT read (ports, sequence
//! numbers, flags, checksum). Options and payload are the endpoints' business.
//!
//! Invariant: a [`TcpPacket`] made by [`TcpPacket::new_checked`] holds at least the fixed
//! header, so every accessor indexes in bounds. The data offset is not trusted here: offload
//! checks it where it matters (a checksum or segmentation the receiver will finish).

use super::be16;
use super::{Result, WireError};

pub const HEADER_LEN: usize = 20;

pub mod field {
    use core::ops::Range;
    pub const SRC_PORT: Range<usize> = 0..2;
    pub const DST_PORT: Range<usize> = 2..4;
    pub const SEQ: Range<usize> = 4..8;
    pub const ACK: Range<usize> = 8..12;
    pub const DATA_OFF: usize = 12;
    pub const FLAGS: usize = 13;
    pub const WINDOW: Range<usize> = 14..16;
    pub const CHECKSUM: Range<usize> = 16..18;
    pub const URGENT: Range<usize> = 18..20;
}

/// The flag bits of byte 13.
pub mod flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
}

/// A view of a TCP segment (header and payload, as the IP packet bounds it).
#[derive(Debug, Clone)]
pub struct TcpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

impl<T: AsRef<[u8]>> TcpPacket<T> {
    /// Checks that the fixed header fits `buffer`.
    pub fn new_checked(buffer: T) -> Result<Self> {
        if buffer.as_ref().len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        Ok(TcpPacket { buffer })
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
    #[inline]
    pub fn seq(&self) -> u32 {
        be32(self.b(), field::SEQ.start)
    }
    #[inline]
    pub fn ack(&self) -> u32 {
        be32(self.b(), field::ACK.start)
    }
    /// Header length in bytes as the segment states it (not checked against the buffer).
    #[inline]
    pub fn header_len(&self) -> usize {
        (self.b()[field::DATA_OFF] >> 4) as usize * 4
    }
    #[inline]
    pub fn flags(&self) -> u8 {
        self.b()[field::FLAGS]
    }
    #[inline]
    pub fn window(&self) -> u16 {
        be16(self.b(), field::WINDOW.start)
    }
    #[inline]
    pub fn checksum(&self) -> u16 {
        be16(self.b(), field::CHECKSUM.start)
    }
}

/// The header fields the datapath acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TcpRepr {
    pub src_port: u16,
    pub dst_port: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub window: u16,
}

impl TcpRepr {
    #[inline]
    pub fn parse<T: AsRef<[u8]>>(p: &TcpPacket<T>) -> Self {
        TcpRepr { src_port: p.src_port(), dst_port: p.dst_port(), seq: p.seq(), ack: p.ack(), flags: p.flags(), window: p.window() }
    }
    /// Writes a 20-byte header (no options) with a zero checksum: the caller fills it over the
    /// pseudo-header once the payload is in place.
    pub fn emit(&self, b: &mut [u8]) {
        b[field::SRC_PORT].copy_from_slice(&self.src_port.to_be_bytes());
        b[field::DST_PORT].copy_from_slice(&self.dst_port.to_be_bytes());
        b[field::SEQ].copy_from_slice(&self.seq.to_be_bytes());
        b[field::ACK].copy_from_slice(&self.ack.to_be_bytes());
        b[field::DATA_OFF] = (HEADER_LEN as u8 / 4) << 4;
        b[field::FLAGS] = self.flags;
        b[field::WINDOW].copy_from_slice(&self.window.to_be_bytes());
        b[field::CHECKSUM].copy_from_slice(&[0, 0]);
        b[field::URGENT].copy_from_slice(&[0, 0]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // 10.1.1.11:40000 -> 198.51.100.5:5201, seq 1, ack 1, ACK|PSH, window 65000, no options
    // (checksum over the pseudo-header: 0xcc0b).
    const SEG: [u8; 20] = [0x9c, 0x40, 0x14, 0x51, 0, 0, 0, 1, 0, 0, 0, 1, 0x50, 0x18, 0xfd, 0xe8, 0xcc, 0x0b, 0, 0];

    #[test]
    fn checked_view_and_repr() {
        let p = TcpPacket::new_checked(&SEG[..]).unwrap();
        assert_eq!((p.src_port(), p.dst_port(), p.seq(), p.ack(), p.header_len()), (40000, 5201, 1, 1, 20));
        assert_eq!(p.flags(), flags::ACK | flags::PSH);
        assert_eq!(p.checksum(), 0xcc0b);
        let pseudo = [10, 1, 1, 11, 198, 51, 100, 5, 0, 6, 0, 20];
        assert_eq!(super::super::checksum::fold(super::super::checksum::add(super::super::checksum::add(0, &pseudo), &SEG)), 0xffff);
        let r = TcpRepr::parse(&p);
        assert_eq!(r, TcpRepr { src_port: 40000, dst_port: 5201, seq: 1, ack: 1, flags: 0x18, window: 65000 });
        let mut out = [0xffu8; 20];
        r.emit(&mut out);
        let mut want = SEG;
        want[16..18].copy_from_slice(&[0, 0]);
        assert_eq!(out, want);
        assert_eq!(TcpPacket::new_checked(&SEG[..19]).unwrap_err(), WireError::Truncated);
    }
}
