//! Ethernet II frames and MAC addresses.
//!
//! Invariant: an [`EthernetFrame`] built with [`EthernetFrame::new_checked`] is at least
//! [`HEADER_LEN`] bytes long, so the accessors never index out of bounds.

use super::{Result, WireError};
use core::fmt;
use core::str::FromStr;

/// Length of the destination + source MAC + EtherType header.
pub const HEADER_LEN: usize = 14;

pub mod field {
    use core::ops::Range;
    pub const DST: Range<usize> = 0..6;
    pub const SRC: Range<usize> = 6..12;
    pub const ETHERTYPE: Range<usize> = 12..14;
    pub const PAYLOAD: usize = 14;
}

pub mod ethertype {
    pub const IPV4: u16 = 0x0800;
    pub const ARP: u16 = 0x0806;
    pub const VLAN: u16 = 0x8100;
    pub const QINQ: u16 = 0x88a8;
    /// Pre-802.1ad QinQ TPID some switches still read as a tag.
    pub const QINQ_LEGACY: u16 = 0x9100;
    pub const IPV6: u16 = 0x86dd;
}

/// A 48-bit IEEE 802 MAC address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);
    pub const ZERO: MacAddr = MacAddr([0; 6]);

    /// Reads a MAC from the first six bytes of `b`; `None` if `b` is shorter.
    #[inline]
    pub fn from_bytes(b: &[u8]) -> Option<MacAddr> {
        let a: [u8; 6] = b.get(..6)?.try_into().ok()?;
        Some(MacAddr(a))
    }
    /// The six bytes as the low 48 bits of a word (first byte lowest), read as a 4-byte and a
    /// 2-byte load: the shape a MAC copied into a struct is stored in, so a read right after
    /// the copy is forwarded from the store instead of stalling on it.
    #[inline]
    pub fn to_bits(self) -> u64 {
        let m = self.0;
        u64::from(u32::from_le_bytes([m[0], m[1], m[2], m[3]])) | u64::from(u16::from_le_bytes([m[4], m[5]])) << 32
    }
    /// [`Self::to_bits`] back (bits above 48 ignored).
    #[inline]
    pub fn from_bits(b: u64) -> MacAddr {
        let l = b.to_le_bytes();
        MacAddr([l[0], l[1], l[2], l[3], l[4], l[5]])
    }
    /// Group (multicast or broadcast) addresses have the I/G bit set.
    #[inline]
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 != 0
    }
    #[inline]
    pub fn is_broadcast(&self) -> bool {
        self.to_bits() == 0xffff_ffff_ffff
    }
    /// 01:80:c2:00:00:00..0f, reserved by IEEE 802.1D for link-local protocols (STP, LACP,
    /// LLDP, 802.1X, pause) that a bridge must not forward.
    #[inline]
    pub fn is_link_local(&self) -> bool {
        self.to_bits() & !(0x0f << 40) == 0x0000_00c2_8001
    }
    /// A valid station address: not group, not all-zero.
    #[inline]
    pub fn is_unicast(&self) -> bool {
        let b = self.to_bits();
        b & 1 == 0 && b != 0
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(f, "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5])
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Error for a MAC address string that is not six colon-separated hex octets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid MAC address {0:?}: expected six hex octets like 52:54:00:12:34:56")]
pub struct MacParseError(pub String);

impl FromStr for MacAddr {
    type Err = MacParseError;
    fn from_str(s: &str) -> core::result::Result<Self, Self::Err> {
        let err = || MacParseError(s.to_string());
        let mut out = [0u8; 6];
        let mut parts = s.split([':', '-']);
        for o in out.iter_mut() {
            let p = parts.next().ok_or_else(err)?;
            if p.len() != 2 {
                return Err(err());
            }
            *o = u8::from_str_radix(p, 16).map_err(|_| err())?;
        }
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(MacAddr(out))
    }
}

impl serde::Serialize for MacAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> core::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for MacAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> core::result::Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A read (and, for `AsMut` buffers, write) view of an Ethernet II frame.
#[derive(Debug, Clone, Copy)]
pub struct EthernetFrame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> EthernetFrame<T> {
    /// Wraps `buffer` after checking it holds a whole header.
    pub fn new_checked(buffer: T) -> Result<Self> {
        if buffer.as_ref().len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        Ok(EthernetFrame { buffer })
    }
    #[inline]
    pub fn dst(&self) -> MacAddr {
        let b = self.buffer.as_ref();
        MacAddr([b[0], b[1], b[2], b[3], b[4], b[5]])
    }
    #[inline]
    pub fn src(&self) -> MacAddr {
        let b = self.buffer.as_ref();
        MacAddr([b[6], b[7], b[8], b[9], b[10], b[11]])
    }
    #[inline]
    pub fn ethertype(&self) -> u16 {
        let b = self.buffer.as_ref();
        u16::from_be_bytes([b[12], b[13]])
    }
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PAYLOAD..]
    }
    pub fn into_inner(self) -> T {
        self.buffer
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> EthernetFrame<T> {
    pub fn set_dst(&mut self, m: MacAddr) {
        self.buffer.as_mut()[field::DST].copy_from_slice(&m.0);
    }
    pub fn set_src(&mut self, m: MacAddr) {
        self.buffer.as_mut()[field::SRC].copy_from_slice(&m.0);
    }
    pub fn set_ethertype(&mut self, t: u16) {
        self.buffer.as_mut()[field::ETHERTYPE].copy_from_slice(&t.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRAME: [u8; 16] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 0x08, 0x06, 0xaa,
        0xbb,
    ];

    #[test]
    fn parse_golden() {
        let f = EthernetFrame::new_checked(&FRAME[..]).unwrap();
        assert!(f.dst().is_broadcast());
        assert_eq!(f.src().to_string(), "52:54:00:12:34:56");
        assert_eq!(f.ethertype(), ethertype::ARP);
        assert_eq!(f.payload(), &[0xaa, 0xbb]);
    }

    #[test]
    fn truncated_is_rejected() {
        assert_eq!(EthernetFrame::new_checked(&FRAME[..13]).unwrap_err(), WireError::Truncated);
    }

    #[test]
    fn emit_golden() {
        let mut b = [0u8; 14];
        let mut f = EthernetFrame::new_checked(&mut b[..]).unwrap();
        f.set_dst(MacAddr::BROADCAST);
        f.set_src("52:54:00:12:34:56".parse().unwrap());
        f.set_ethertype(ethertype::ARP);
        assert_eq!(b, FRAME[..14]);
    }

    #[test]
    fn mac_classes_from_bits() {
        let m = |s: &str| s.parse::<MacAddr>().unwrap();
        assert_eq!(m("52:54:00:12:34:56").to_bits(), 0x5634_1200_5452);
        assert_eq!(MacAddr::from_bits(0xffff_5634_1200_5452), m("52:54:00:12:34:56"));
        assert!(m("52:54:00:12:34:56").is_unicast());
        assert!(!MacAddr::ZERO.is_unicast() && !m("01:00:5e:00:00:01").is_unicast() && !MacAddr::BROADCAST.is_unicast());
        assert!(m("00:00:00:00:00:01").is_unicast() && m("00:00:00:00:01:00").is_unicast());
        assert!(MacAddr::BROADCAST.is_broadcast() && !m("ff:ff:ff:ff:ff:fe").is_broadcast() && !m("7f:ff:ff:ff:ff:ff").is_broadcast());
        for last in 0..=0x0f {
            assert!(MacAddr([0x01, 0x80, 0xc2, 0, 0, last]).is_link_local());
        }
        for other in ["01:80:c2:00:00:10", "01:80:c2:00:00:f0", "01:80:c2:00:01:00", "01:80:c3:00:00:00", "03:80:c2:00:00:00", "01:00:c2:00:00:00"] {
            assert!(!m(other).is_link_local(), "{other}");
        }
    }

    #[test]
    fn mac_parse() {
        assert!("52:54:00:12:34".parse::<MacAddr>().is_err());
        assert!("52:54:00:12:34:56:78".parse::<MacAddr>().is_err());
        assert!("52:54:00:12:34:zz".parse::<MacAddr>().is_err());
        assert!("01:00:5e:00:00:01".parse::<MacAddr>().unwrap().is_multicast());
        assert!(!MacAddr::ZERO.is_unicast());
    }
}
