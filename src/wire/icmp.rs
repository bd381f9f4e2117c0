//! ICMPv4 messages: the types and codes the router generates or translates, and a view of the
//! fixed 8-byte header (type, code, checksum, and for echo the identifier and sequence).
//!
//! Invariant: an [`IcmpPacket`] made by [`IcmpPacket::new_checked`] holds the 8-byte header.

use super::be16;
use super::{Result, WireError};

pub const HEADER_LEN: usize = 8;

pub mod field {
    use core::ops::Range;
    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: Range<usize> = 2..4;
    /// Echo request and reply: the identifier (what NAT maps like a port) and sequence.
    pub const IDENT: Range<usize> = 4..6;
    pub const SEQ: Range<usize> = 6..8;
}

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
#[derive(Debug, Clone)]
pub struct IcmpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> IcmpPacket<T> {
    /// Checks that the 8-byte header fits `buffer`.
    pub fn new_checked(buffer: T) -> Result<Self> {
        if buffer.as_ref().len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        Ok(IcmpPacket { buffer })
    }
    fn b(&self) -> &[u8] {
        self.buffer.as_ref()
    }
    #[inline]
    pub fn msg_type(&self) -> u8 {
        self.b()[field::TYPE]
    }
    #[inline]
    pub fn code(&self) -> u8 {
        self.b()[field::CODE]
    }
    #[inline]
    pub fn checksum(&self) -> u16 {
        be16(self.b(), field::CHECKSUM.start)
    }
    #[inline]
    pub fn ident(&self) -> u16 {
        be16(self.b(), field::IDENT.start)
    }
    #[inline]
    pub fn seq(&self) -> u16 {
        be16(self.b(), field::SEQ.start)
    }
    /// What follows the header: echo data, or the quoted packet of an error.
    pub fn payload(&self) -> &[u8] {
        &self.b()[HEADER_LEN..]
    }
}

/// The fields the datapath acts on: type, code, and the echo identifier (0 for other types).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IcmpRepr {
    pub msg_type: u8,
    pub code: u8,
    pub ident: u16,
}

impl IcmpRepr {
    #[inline]
    pub fn parse<T: AsRef<[u8]>>(p: &IcmpPacket<T>) -> Self {
        let echo = matches!(p.msg_type(), ECHO_REQUEST | ECHO_REPLY);
        IcmpRepr { msg_type: p.msg_type(), code: p.code(), ident: if echo { p.ident() } else { 0 } }
    }
    #[inline]
    pub fn is_echo(&self) -> bool {
        matches!(self.msg_type, ECHO_REQUEST | ECHO_REPLY)
    }
    /// Writes the header with `rest` as its last four bytes (echo: identifier and sequence;
    /// fragmentation needed: the next-hop MTU in the low half), checksum zero.
    pub fn emit(&self, b: &mut [u8], rest: [u8; 4]) {
        b[field::TYPE] = self.msg_type;
        b[field::CODE] = self.code;
        b[field::CHECKSUM].copy_from_slice(&[0, 0]);
        b[4..8].copy_from_slice(&rest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // An echo request as ping sends it: id 0x1234, seq 1, checksum 0xe5ca over 8 bytes.
    const ECHO: [u8; 8] = [8, 0, 0xe5, 0xca, 0x12, 0x34, 0x00, 0x01];

    #[test]
    fn checked_view_and_repr() {
        let p = IcmpPacket::new_checked(&ECHO[..]).unwrap();
        assert_eq!((p.msg_type(), p.code(), p.ident(), p.seq()), (ECHO_REQUEST, 0, 0x1234, 1));
        assert_eq!(super::super::checksum::checksum(&ECHO), 0, "golden checksum");
        let r = IcmpRepr::parse(&p);
        assert_eq!(r, IcmpRepr { msg_type: 8, code: 0, ident: 0x1234 });
        assert!(r.is_echo() && !is_error(r.msg_type));
        let mut out = [0xffu8; 8];
        r.emit(&mut out, [0x12, 0x34, 0, 1]);
        assert_eq!(out, [8, 0, 0, 0, 0x12, 0x34, 0, 1]);
        // An error's identifier is not a flow's.
        let unreach = [3, 4, 0, 0, 0, 0, 0x05, 0xdc];
        assert_eq!(IcmpRepr::parse(&IcmpPacket::new_checked(&unreach[..]).unwrap()), IcmpRepr { msg_type: 3, code: 4, ident: 0 });
        assert_eq!(IcmpPacket::new_checked(&ECHO[..7]).unwrap_err(), WireError::Truncated);
    }
}
