//! Wire formats: bytes in, typed views out, and nothing else.
//!
//! The headers with views follow the smoltcp pattern: a `Packet<T: AsRef<[u8]>>`-style view
//! whose `new_checked` constructor is the only way untrusted bytes become a view, and a `field`
//! module with the byte ranges. That is Ethernet (`EthernetFrame`), 802.1Q (`VlanFrame`), ARP
//! (`ArpPacket`, with an `ArpRepr` to `parse` / `emit`), IPv4 (`Ipv4Packet`, `Ipv4Repr`), TCP
//! (`TcpPacket`, `TcpRepr`), UDP (`UdpPacket`, `UdpRepr`), ICMPv4 (`IcmpPacket`, `IcmpRepr`)
//! and VXLAN (`VxlanPacket`). virtio_net_hdr is a plain `VnetHdr` with `parse` / `emit`. What a
//! frame's headers say is read once per frame into a `crate::frame::FrameCtx` built from these
//! views; NAT's in-place rewrites still address fields by offset (`field` ranges) since they
//! change bytes a view was made over. Nothing in this module knows about ports, networks,
//! time or I/O.

pub mod arp;
pub mod bgp;
pub mod checksum;
pub mod ethernet;
pub mod icmp;
pub mod ipv4;
pub mod tcp;
pub mod udp;
pub mod vlan;
pub mod vnet;
pub mod vxlan;

/// A big-endian 16-bit field at `at`; the caller has checked that `b` holds it.
pub fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Why a byte buffer could not be viewed as the header it was asked to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The buffer is shorter than the fixed part of the header.
    #[error("truncated header")]
    Truncated,
    /// A field holds a value the format does not allow.
    #[error("malformed header")]
    Malformed,
}

pub type Result<T> = core::result::Result<T, WireError>;
