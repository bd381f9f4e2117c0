//! IEEE 802.1Q tags as they sit inside an Ethernet frame, after the two MAC addresses.
//!
//! A tagged frame is `dst(6) src(6) TPID(2) TCI(2) ethertype(2) payload`. The TCI holds the
//! priority (PCP, 3 bits), the drop-eligible bit (DEI) and the VLAN id (VID, 12 bits).
//! Invariant: a [`VlanFrame`] from `new_checked` has a TPID of 0x8100 or 0x88a8 and room for the
//! tag and the inner EtherType.

use super::ethernet::ethertype;
use super::{Result, WireError};

/// Bytes a tag adds to a frame.
pub const TAG_LEN: usize = 4;
/// Highest usable VLAN id (4095 is reserved, 0 means "priority tag only").
pub const VID_MAX: u16 = 4094;

pub mod field {
    use core::ops::Range;
    pub const TPID: Range<usize> = 12..14;
    pub const TCI: Range<usize> = 14..16;
    pub const INNER_ETHERTYPE: Range<usize> = 16..18;
}

/// A view of a frame that carries an 802.1Q (or 802.1ad) tag right after the MACs.
#[derive(Debug, Clone, Copy)]
pub struct VlanFrame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> VlanFrame<T> {
    pub fn new_checked(buffer: T) -> Result<Self> {
        let b = buffer.as_ref();
        if b.len() < field::INNER_ETHERTYPE.end {
            return Err(WireError::Truncated);
        }
        let tpid = u16::from_be_bytes([b[12], b[13]]);
        if tpid != ethertype::VLAN && tpid != ethertype::QINQ {
            return Err(WireError::Malformed);
        }
        Ok(VlanFrame { buffer })
    }
    pub fn tpid(&self) -> u16 {
        let b = self.buffer.as_ref();
        u16::from_be_bytes([b[12], b[13]])
    }
    pub fn tci(&self) -> u16 {
        let b = self.buffer.as_ref();
        u16::from_be_bytes([b[14], b[15]])
    }
    pub fn vid(&self) -> u16 {
        self.tci() & 0x0fff
    }
    pub fn pcp(&self) -> u8 {
        (self.tci() >> 13) as u8
    }
    pub fn inner_ethertype(&self) -> u16 {
        let b = self.buffer.as_ref();
        u16::from_be_bytes([b[16], b[17]])
    }
}

/// The 4 tag bytes for VLAN `vid` with priority bits `prio` (PCP << 1 | DEI: the TCI's top
/// four bits), 802.1Q TPID.
pub fn tag_bytes(vid: u16, prio: u8) -> [u8; TAG_LEN] {
    let tci = ((prio as u16 & 0xf) << 12) | (vid & 0x0fff);
    let t = ethertype::VLAN.to_be_bytes();
    let c = tci.to_be_bytes();
    [t[0], t[1], c[0], c[1]]
}

/// True if `ethertype` (the outer one) announces a VLAN tag of either kind.
pub fn is_tag_ethertype(et: u16) -> bool {
    et == ethertype::VLAN || et == ethertype::QINQ || et == ethertype::QINQ_LEGACY
}

#[cfg(test)]
mod tests {
    use super::*;

    // dst, src, 8100 tci=pcp 5 / vid 101, inner 0800
    const TAGGED: [u8; 18] = [
        1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 0x81, 0x00, 0xa0, 0x65, 0x08, 0x00,
    ];

    #[test]
    fn parse_golden() {
        let v = VlanFrame::new_checked(&TAGGED[..]).unwrap();
        assert_eq!(v.vid(), 101);
        assert_eq!(v.pcp(), 5);
        assert_eq!(v.inner_ethertype(), 0x0800);
        assert_eq!(tag_bytes(101, 5 << 1), [0x81, 0x00, 0xa0, 0x65], "PCP 5");
        assert_eq!(tag_bytes(101, 5 << 1 | 1), [0x81, 0x00, 0xb0, 0x65], "PCP 5 with DEI");
    }

    #[test]
    fn untagged_and_short_rejected() {
        let mut u = TAGGED;
        u[12] = 0x08;
        u[13] = 0x00;
        assert_eq!(VlanFrame::new_checked(&u[..]).unwrap_err(), WireError::Malformed);
        assert_eq!(VlanFrame::new_checked(&TAGGED[..17]).unwrap_err(), WireError::Truncated);
    }
}
