//! Wire formats: bytes in, typed views out, and nothing else.
//!
//! Every type here follows the smoltcp pattern: a `Packet<T: AsRef<[u8]>>`-style view whose
//! `new_checked` constructor is the only way untrusted bytes become a view, a `field` module with
//! the byte ranges, and (where the header has more than one field worth naming) a `Repr` with
//! `parse` / `emit`. Nothing in this module knows about ports, networks, time or I/O.

pub mod arp;
pub mod checksum;
pub mod ethernet;
pub mod ipv4;
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
