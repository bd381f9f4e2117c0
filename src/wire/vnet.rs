//! `struct virtio_net_hdr`: the offload metadata that taps (IFF_VNET_HDR) and packet sockets
//! (PACKET_VNET_HDR) put in front of every frame.
//!
//! Layout (10 bytes, little-endian as the kernel uses for tap/packet sockets on x86 and for
//! modern virtio): flags u8, gso_type u8, hdr_len u16, gso_size u16, csum_start u16,
//! csum_offset u16. `csum_start` and `hdr_len` count from the first byte of the Ethernet header,
//! so pushing or popping a VLAN tag shifts them by 4.

use super::{Result, WireError};

pub const HDR_LEN: usize = 10;

pub mod field {
    pub const FLAGS: usize = 0;
    pub const GSO_TYPE: usize = 1;
    pub const HDR_LEN: core::ops::Range<usize> = 2..4;
    pub const GSO_SIZE: core::ops::Range<usize> = 4..6;
    pub const CSUM_START: core::ops::Range<usize> = 6..8;
    pub const CSUM_OFFSET: core::ops::Range<usize> = 8..10;
}

pub const F_NEEDS_CSUM: u8 = 1;
pub const F_DATA_VALID: u8 = 2;

pub const GSO_NONE: u8 = 0;
pub const GSO_TCPV4: u8 = 1;
pub const GSO_UDP: u8 = 3;
pub const GSO_TCPV6: u8 = 4;
pub const GSO_UDP_L4: u8 = 5;
pub const GSO_ECN: u8 = 0x80;

/// What segmentation the frame still needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Gso {
    #[default]
    None,
    TcpV4,
    TcpV6,
    /// USO: one UDP datagram per `gso_size` of payload.
    UdpL4,
}

/// What a port's egress takes in the virtio_net_hdr of the frames written to it: whether it
/// has a header at all, and which work it leaves to the receiver (a partial checksum, TCP
/// segmentation over IPv4 or IPv6, UDP segmentation). A tap has what TUNSETOFFLOAD accepted;
/// a packet socket with PACKET_VNET_HDR what the kernel's `virtio_net_hdr_to_skb` parses
/// (USO from Linux 6.2, the same release as the tap's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Offloads {
    pub vnet: bool,
    pub csum: bool,
    pub tso4: bool,
    pub tso6: bool,
    pub uso: bool,
}

impl Offloads {
    /// No header: frames must be complete and wire-sized.
    pub const NONE: Offloads = Offloads { vnet: false, csum: false, tso4: false, tso6: false, uso: false };
    /// Checksum and TCP segmentation, no USO (a kernel before 6.2).
    pub const TSO: Offloads = Offloads { vnet: true, csum: true, tso4: true, tso6: true, uso: false };
    pub const ALL: Offloads = Offloads { uso: true, ..Offloads::TSO };

    /// Whether a frame with this metadata may be written as it is.
    pub fn takes(&self, v: &VnetHdr) -> bool {
        if v.is_plain() {
            return true;
        }
        self.vnet
            && (!v.needs_csum || self.csum)
            && (v.gso == Gso::None || self.csum)
            && match v.gso {
                Gso::None => true,
                Gso::TcpV4 => self.tso4,
                Gso::TcpV6 => self.tso6,
                Gso::UdpL4 => self.uso,
            }
    }

    /// For `show ports`: what the port takes, e.g. `csum,tso4,tso6`.
    pub fn names(&self) -> Vec<&'static str> {
        [(self.csum, "csum"), (self.tso4, "tso4"), (self.tso6, "tso6"), (self.uso, "uso")].into_iter().filter(|(on, _)| *on).map(|(_, n)| n).collect()
    }
}

impl From<bool> for Offloads {
    /// Every offload, or none (tests and benchmarks).
    fn from(all: bool) -> Self {
        if all {
            Offloads::ALL
        } else {
            Offloads::NONE
        }
    }
}

/// Parsed offload metadata of one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VnetHdr {
    /// The L4 checksum is partial: fold the sum from `csum_start` into `csum_start + csum_offset`.
    pub needs_csum: bool,
    /// The checksum was already verified (receive side hint).
    pub data_valid: bool,
    pub gso: Gso,
    /// ECN (CWR) must be kept on the first segment only.
    pub ecn: bool,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl VnetHdr {
    /// Parses the first [`HDR_LEN`] bytes. Unknown GSO types (legacy UFO) are `Malformed`.
    pub fn parse(b: &[u8]) -> Result<VnetHdr> {
        let b = b.get(..HDR_LEN).ok_or(WireError::Truncated)?;
        let le = |r: core::ops::Range<usize>| u16::from_le_bytes([b[r.start], b[r.start + 1]]);
        let flags = b[field::FLAGS];
        let gt = b[field::GSO_TYPE];
        let gso = match gt & !GSO_ECN {
            GSO_NONE => Gso::None,
            GSO_TCPV4 => Gso::TcpV4,
            GSO_TCPV6 => Gso::TcpV6,
            GSO_UDP_L4 => Gso::UdpL4,
            _ => return Err(WireError::Malformed),
        };
        let h = VnetHdr {
            needs_csum: flags & F_NEEDS_CSUM != 0,
            data_valid: flags & F_DATA_VALID != 0,
            gso,
            ecn: gt & GSO_ECN != 0,
            hdr_len: le(field::HDR_LEN),
            gso_size: le(field::GSO_SIZE),
            csum_start: le(field::CSUM_START),
            csum_offset: le(field::CSUM_OFFSET),
        };
        if h.gso != Gso::None && h.gso_size == 0 {
            return Err(WireError::Malformed);
        }
        Ok(h)
    }

    /// Writes the header into the first [`HDR_LEN`] bytes of `b` (which must be that long).
    pub fn emit(&self, b: &mut [u8]) {
        let mut flags = 0;
        if self.needs_csum {
            flags |= F_NEEDS_CSUM;
        }
        if self.data_valid {
            flags |= F_DATA_VALID;
        }
        let mut gt = match self.gso {
            Gso::None => GSO_NONE,
            Gso::TcpV4 => GSO_TCPV4,
            Gso::TcpV6 => GSO_TCPV6,
            Gso::UdpL4 => GSO_UDP_L4,
        };
        if self.ecn {
            gt |= GSO_ECN;
        }
        b[field::FLAGS] = flags;
        b[field::GSO_TYPE] = gt;
        b[field::HDR_LEN].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[field::GSO_SIZE].copy_from_slice(&self.gso_size.to_le_bytes());
        b[field::CSUM_START].copy_from_slice(&self.csum_start.to_le_bytes());
        b[field::CSUM_OFFSET].copy_from_slice(&self.csum_offset.to_le_bytes());
    }

    /// Adjusts the Ethernet-relative offsets after `delta` bytes were inserted (positive) or
    /// removed (negative) before the L3 header, e.g. a VLAN tag. Returns false (and leaves the
    /// header untouched) if an offset would leave its range.
    pub fn shift(&mut self, delta: i32) -> bool {
        let mv = |v: u16| -> Option<u16> {
            if v == 0 {
                return Some(0);
            }
            u16::try_from(v as i32 + delta).ok()
        };
        let (Some(cs), Some(hl)) = (
            if self.needs_csum { mv(self.csum_start) } else { Some(self.csum_start) },
            mv(self.hdr_len),
        ) else {
            return false;
        };
        self.csum_start = cs;
        self.hdr_len = hl;
        true
    }

    /// True when the frame needs no work from a receiver that cannot take offloads.
    pub fn is_plain(&self) -> bool {
        !self.needs_csum && self.gso == Gso::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // NEEDS_CSUM, TCPV4, hdr_len 66, gso_size 1448, csum_start 34, csum_offset 16
    const GOLDEN: [u8; 10] = [0x01, 0x01, 66, 0, 0xa8, 0x05, 34, 0, 16, 0];

    #[test]
    fn parse_emit_golden() {
        let h = VnetHdr::parse(&GOLDEN).unwrap();
        assert!(h.needs_csum);
        assert_eq!(h.gso, Gso::TcpV4);
        assert_eq!((h.hdr_len, h.gso_size, h.csum_start, h.csum_offset), (66, 1448, 34, 16));
        let mut out = [0u8; 10];
        h.emit(&mut out);
        assert_eq!(out, GOLDEN);
    }

    #[test]
    fn vlan_shift_moves_offsets() {
        let mut h = VnetHdr::parse(&GOLDEN).unwrap();
        assert!(h.shift(4));
        assert_eq!((h.csum_start, h.hdr_len), (38, 70));
        assert!(h.shift(-4));
        assert_eq!((h.csum_start, h.hdr_len), (34, 66));
    }

    #[test]
    fn bad_headers_rejected() {
        let mut b = GOLDEN;
        b[1] = 3; // legacy UFO
        assert_eq!(VnetHdr::parse(&b).unwrap_err(), WireError::Malformed);
        let mut b = GOLDEN;
        b[4] = 0;
        b[5] = 0; // GSO without a segment size
        assert_eq!(VnetHdr::parse(&b).unwrap_err(), WireError::Malformed);
        assert_eq!(VnetHdr::parse(&GOLDEN[..9]).unwrap_err(), WireError::Truncated);
    }
}
