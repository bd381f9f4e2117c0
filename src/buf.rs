//! Frame buffers with headroom, and the pool they come from.
//!
//! A [`PacketBuf`] holds one frame at `data[start..end]` with free space in front of it, so a
//! VLAN tag (and later a VXLAN header) is pushed by moving the 12 MAC bytes, never the payload.
//! The frame's offload metadata travels with it and is kept consistent by `push_vlan` /
//! `pop_vlan`. Invariant: `start <= end <= data.len()` and `start >= 0`; every mutator checks.

use crate::wire::vlan::{self, TAG_LEN};
use crate::wire::vnet::{self, VnetHdr};

/// Bytes kept free in front of a received frame.
pub const HEADROOM: usize = 128;
/// The largest frame a port hands us: a 64 KiB GSO super-frame plus L2 headers.
pub const MAX_FRAME: usize = 65_535 + 64;
/// Total buffer size.
pub const BUF_SIZE: usize = HEADROOM + MAX_FRAME;

pub struct PacketBuf {
    data: Box<[u8]>,
    start: usize,
    end: usize,
    /// Offload metadata (all-zero when the port has no vnet header).
    pub vnet: VnetHdr,
    /// The priority bits of the tag popped at ingress: PCP (3 bits) and DEI (1 bit), i.e. the
    /// top four bits of the TCI (0 for untagged frames), so a frame keeps its 802.1p priority
    /// and drop eligibility from one trunk to another.
    pub prio: u8,
}

impl Default for PacketBuf {
    fn default() -> Self {
        Self::new()
    }
}

impl PacketBuf {
    pub fn new() -> Self {
        PacketBuf { data: vec![0u8; BUF_SIZE].into_boxed_slice(), start: HEADROOM, end: HEADROOM, vnet: VnetHdr::default(), prio: 0 }
    }

    /// A buffer holding a copy of `frame` (tests, benchmarks, fuzzing).
    pub fn from_frame(frame: &[u8], vnet: VnetHdr) -> Self {
        let mut b = Self::new();
        b.load(frame, vnet);
        b
    }

    /// Replaces the contents with a copy of `frame` (cut at [`MAX_FRAME`]).
    pub fn load(&mut self, frame: &[u8], vnet: VnetHdr) {
        let n = frame.len().min(MAX_FRAME);
        self.data[HEADROOM..HEADROOM + n].copy_from_slice(&frame[..n]);
        self.start = HEADROOM;
        self.end = HEADROOM + n;
        self.vnet = vnet;
        self.prio = 0;
    }

    /// Makes the buffer hold a zeroed frame of `len` bytes (cut at [`MAX_FRAME`]) without
    /// offload metadata, and returns it for the caller to fill (frames the router makes).
    pub fn init(&mut self, len: usize) -> &mut [u8] {
        let n = len.min(MAX_FRAME);
        self.start = HEADROOM;
        self.end = HEADROOM + n;
        self.vnet = VnetHdr::default();
        self.prio = 0;
        let f = &mut self.data[HEADROOM..HEADROOM + n];
        f.fill(0);
        f
    }

    /// The area a read fills: a vnet header (if `with_vnet`) ends exactly at HEADROOM, where the
    /// frame begins.
    pub fn recv_area(&mut self, with_vnet: bool) -> &mut [u8] {
        let off = if with_vnet { HEADROOM - vnet::HDR_LEN } else { HEADROOM };
        &mut self.data[off..]
    }

    /// Completes a read of `n` bytes into [`recv_area`]. Returns false if the vnet header is
    /// missing or invalid (the frame must then be dropped).
    pub fn set_received(&mut self, n: usize, with_vnet: bool) -> bool {
        self.start = HEADROOM;
        self.prio = 0;
        if with_vnet {
            if n < vnet::HDR_LEN {
                self.end = HEADROOM;
                return false;
            }
            self.end = (HEADROOM + n - vnet::HDR_LEN).min(self.data.len());
            match VnetHdr::parse(&self.data[HEADROOM - vnet::HDR_LEN..HEADROOM]) {
                Ok(h) => {
                    self.vnet = h;
                    true
                }
                Err(_) => false,
            }
        } else {
            self.end = (HEADROOM + n).min(self.data.len());
            self.vnet = VnetHdr::default();
            true
        }
    }

    #[inline]
    pub fn frame(&self) -> &[u8] {
        &self.data[self.start..self.end]
    }
    #[inline]
    pub fn frame_mut(&mut self) -> &mut [u8] {
        &mut self.data[self.start..self.end]
    }
    #[inline]
    pub fn len(&self) -> usize {
        self.end - self.start
    }
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }

    /// Shortens the frame to `len` bytes (no-op if it is not longer).
    pub fn truncate(&mut self, len: usize) {
        if len < self.len() {
            self.end = self.start + len;
        }
    }

    /// Prepends `hdr` (an encapsulation header) in the headroom. False without room.
    pub fn push_front(&mut self, hdr: &[u8]) -> bool {
        if self.start < hdr.len() {
            return false;
        }
        self.start -= hdr.len();
        self.data[self.start..self.start + hdr.len()].copy_from_slice(hdr);
        true
    }

    /// Removes `n` bytes from the front (an encapsulation header). False if shorter.
    pub fn pull(&mut self, n: usize) -> bool {
        if self.len() < n {
            return false;
        }
        self.start += n;
        true
    }

    /// Inserts an 802.1Q tag after the MACs. False if there is no headroom or no Ethernet header.
    /// `prio`: PCP and DEI as the top four bits of the TCI.
    pub fn push_vlan(&mut self, vid: u16, prio: u8) -> bool {
        let t = vlan::tag_bytes(vid, prio);
        self.push_tag(u16::from_be_bytes([t[0], t[1]]), u16::from_be_bytes([t[2], t[3]]))
    }

    /// Inserts a tag with any TPID and TCI (a tag the kernel stripped on receive).
    pub fn push_tag(&mut self, tpid: u16, tci: u16) -> bool {
        if self.start < TAG_LEN || self.len() < 12 {
            return false;
        }
        let mut v = self.vnet;
        if !v.shift(TAG_LEN as i32) {
            return false;
        }
        let s = self.start;
        self.data.copy_within(s..s + 12, s - TAG_LEN);
        self.start -= TAG_LEN;
        self.data[self.start + 12..self.start + 14].copy_from_slice(&tpid.to_be_bytes());
        self.data[self.start + 14..self.start + 16].copy_from_slice(&tci.to_be_bytes());
        self.vnet = v;
        true
    }

    /// Removes the tag after the MACs (the caller has checked there is one), remembering its
    /// priority bits (PCP and DEI) in `prio`.
    pub fn pop_vlan(&mut self) -> bool {
        if self.len() < 12 + TAG_LEN + 2 {
            return false;
        }
        let prio = self.data[self.start + 14] >> 4;
        let mut v = self.vnet;
        if !v.shift(-(TAG_LEN as i32)) {
            return false;
        }
        let s = self.start;
        self.data.copy_within(s..s + 12, s + TAG_LEN);
        self.start += TAG_LEN;
        self.vnet = v;
        self.prio = prio;
        true
    }
}

/// A free list of buffers, filled up front so the datapath never allocates per frame.
pub struct BufPool {
    free: Vec<PacketBuf>,
}

impl BufPool {
    pub fn new(n: usize) -> Self {
        BufPool { free: (0..n).map(|_| PacketBuf::new()).collect() }
    }
    /// A buffer, or a fresh one if the pool ran dry (only when callers hold more than `n`).
    pub fn get(&mut self) -> PacketBuf {
        self.free.pop().unwrap_or_default()
    }
    pub fn put(&mut self, b: PacketBuf) {
        self.free.push(b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::vnet::Gso;

    #[test]
    fn push_pop_vlan_golden_with_offload_meta() {
        let frame: Vec<u8> = (0u8..12).chain([0x08, 0x00, 0x45, 0x00]).collect();
        let v = VnetHdr { needs_csum: true, gso: Gso::TcpV4, gso_size: 1448, hdr_len: 66, csum_start: 34, csum_offset: 16, ..Default::default() };
        let mut b = PacketBuf::from_frame(&frame, v);
        assert!(b.push_vlan(101, 0));
        assert_eq!(b.frame(), &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 0x81, 0x00, 0x00, 0x65, 0x08, 0x00, 0x45, 0x00]);
        assert_eq!((b.vnet.csum_start, b.vnet.hdr_len), (38, 70));
        assert!(b.pop_vlan());
        assert_eq!(b.frame(), &frame[..]);
        assert_eq!((b.vnet.csum_start, b.vnet.hdr_len), (34, 66));
    }

    #[test]
    fn received_vnet_header_is_parsed() {
        let mut b = PacketBuf::new();
        let area = b.recv_area(true);
        area[..10].copy_from_slice(&[1, 0, 0, 0, 0, 0, 34, 0, 16, 0]);
        area[10..24].copy_from_slice(&[0xff; 14]);
        assert!(b.set_received(24, true));
        assert_eq!(b.len(), 14);
        assert!(b.vnet.needs_csum);
        assert!(!b.set_received(5, true));
    }
}
