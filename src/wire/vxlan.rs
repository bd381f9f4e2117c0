//! The VXLAN header (RFC 7348 section 5): 8 bytes in front of the inner Ethernet frame, inside
//! a UDP datagram (port 4789).
//!
//! ```text
//!  0                   1                   2                   3
//! |R|R|R|R|I|R|R|R|            Reserved                           |
//! |                VXLAN Network Identifier (VNI) |   Reserved    |
//! ```
//! The I flag says the VNI is valid and must be set; reserved bits are sent as zero and ignored
//! on receipt, as the RFC asks.

use super::WireError;

pub const HEADER_LEN: usize = 8;
/// The IANA port.
pub const PORT: u16 = 4789;
/// Outer IPv4 + UDP + VXLAN + inner Ethernet: what the underlay MTU must leave room for.
pub const OVERHEAD: usize = 20 + 8 + HEADER_LEN + 14;
/// Largest VNI (24 bits).
pub const VNI_MAX: u32 = 0x00ff_ffff;

mod field {
    pub const FLAGS: usize = 0;
    pub const VNI: core::ops::Range<usize> = 4..7;
}
/// The "VNI valid" flag.
pub const FLAG_I: u8 = 0x08;

/// A checked view of a VXLAN header and the frame behind it.
pub struct VxlanPacket<T: AsRef<[u8]>>(T);

impl<T: AsRef<[u8]>> VxlanPacket<T> {
    /// Untrusted bytes: at least a header, the I flag set.
    pub fn new_checked(b: T) -> Result<Self, WireError> {
        let s = b.as_ref();
        if s.len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        if s[field::FLAGS] & FLAG_I == 0 {
            return Err(WireError::Malformed);
        }
        Ok(VxlanPacket(b))
    }
    pub fn vni(&self) -> u32 {
        let b = &self.0.as_ref()[field::VNI];
        u32::from_be_bytes([0, b[0], b[1], b[2]])
    }
    /// The inner Ethernet frame.
    pub fn payload(&self) -> &[u8] {
        &self.0.as_ref()[HEADER_LEN..]
    }
}

/// Writes a header for `vni` into `b[..8]`.
pub fn emit(b: &mut [u8], vni: u32) -> [u8; HEADER_LEN] {
    let v = (vni & VNI_MAX).to_be_bytes();
    let h = [FLAG_I, 0, 0, 0, v[1], v[2], v[3], 0];
    b[..HEADER_LEN].copy_from_slice(&h);
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_header() {
        let mut b = [0xffu8; 8];
        emit(&mut b, 5001);
        assert_eq!(b, [0x08, 0, 0, 0, 0x00, 0x13, 0x89, 0]);
        let p = VxlanPacket::new_checked(&[0x08, 0, 0, 0, 0x12, 0x34, 0x56, 0xaa, 1, 2][..]).unwrap();
        assert_eq!(p.vni(), 0x123456);
        assert_eq!(p.payload(), &[1, 2]);
        assert!(matches!(VxlanPacket::new_checked(&[0x08, 0, 0][..]), Err(WireError::Truncated)));
        assert!(matches!(VxlanPacket::new_checked(&[0u8; 8][..]), Err(WireError::Malformed)));
        // Reserved bits are ignored on receipt.
        assert_eq!(VxlanPacket::new_checked(&[0xff; 8][..]).unwrap().vni(), 0xffffff);
    }
}
