//! A port's device, whichever kind it is: a type implementing [`Port`], reduced to "receive a
//! frame into a PacketBuf", "send frames", its readiness source (the fd the poll loop watches)
//! and its offload capabilities. No protocol logic lives here.
//!
//! A port kind is one file: `tap.rs` (a tap vrouter creates or attaches to: `/dev/net/tun`),
//! `packet.rs` (an existing interface through AF_PACKET: a QEMU tap, a veth, a trunk NIC). A
//! vhost-user or AF_XDP port would be one more, plus its arm in `io::open_device`; the
//! pipeline, the poll loop and the burst writer (io::txq) see only the trait.

mod packet;
mod tap;

use crate::buf::PacketBuf;
use crate::switch::stats::DropReason;
use crate::sys::tap::Tap;
use crate::wire::vnet::{self, VnetHdr};
use std::io;
use std::os::fd::AsRawFd;

/// An open port device. The fd (`AsRawFd`) is its readiness source: readable when frames wait.
pub trait Port: AsRawFd + Send {
    /// What the device's egress takes in virtio_net_hdr metadata.
    fn offload(&self) -> vnet::Offloads;

    /// False once the device behind the fd is gone (a deleted tap).
    fn attached(&self) -> bool {
        true
    }

    /// Receives one frame into `buf`.
    fn recv(&self, buf: &mut PacketBuf) -> io::Result<Rx>;

    /// Bytes of virtio_net_hdr in front of every frame written to the fd.
    fn hdr_len(&self) -> usize;

    /// Writes one frame already behind its header ([`Port::hdr_len`] bytes of it).
    fn send_raw(&self, bytes: &[u8]) -> io::Result<()> {
        crate::sys::packet::write1(self.as_raw_fd(), bytes)
    }

    /// Writes frames already behind their headers, as many as one call takes; returns how many
    /// left, in order. An error is the first one's (the caller goes on after it).
    fn send_many(&self, frames: &[&[u8]]) -> io::Result<usize> {
        match frames.first() {
            Some(f) => self.send_raw(f).map(|()| 1),
            None => Ok(0),
        }
    }

    /// Writes one frame behind `v` (or a zero header when the device takes headers).
    fn send(&self, v: Option<&VnetHdr>, frame: &[u8]) -> io::Result<()>;

    /// A write never waits for the reader (a tap: the kernel takes it or drops it), so a burst
    /// may go through the loop's io_uring and be waited for.
    fn writes_never_wait(&self) -> bool {
        false
    }

    /// The tap, for what only a tap vrouter made can do (take a new MAC).
    fn as_tap(&self) -> Option<&Tap> {
        None
    }
}

pub type Device = Box<dyn Port>;

/// Outcome of one successful read.
pub enum Rx {
    /// A frame is in the buffer.
    Frame,
    /// A frame arrived but cannot enter the pipeline.
    Dropped(DropReason),
    /// Our own (or the host's) transmission, looped back by an old kernel: not a frame.
    Ignored,
}

/// `hdr` as the 12 bytes on the wire (zeros without one).
pub(crate) fn hdr_bytes(v: Option<&VnetHdr>) -> [u8; vnet::HDR_LEN] {
    let mut hdr = [0u8; vnet::HDR_LEN];
    if let Some(v) = v {
        v.emit(&mut hdr);
    }
    hdr
}
