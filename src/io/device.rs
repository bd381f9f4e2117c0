//! A port's file descriptor, whichever kind it is, reduced to "receive a frame into a
//! PacketBuf" and "send a frame". No protocol logic lives here.

use crate::buf::PacketBuf;
use crate::switch::stats::DropReason;
use crate::sys::packet::PacketSocket;
use crate::sys::tap::Tap;
use crate::wire::vnet::{self, VnetHdr};
use std::io;
use std::os::fd::{AsRawFd, RawFd};

pub enum Device {
    Tap(Tap),
    Packet(PacketSocket),
}

/// Outcome of one successful read.
pub enum Rx {
    /// A frame is in the buffer.
    Frame,
    /// A frame arrived but cannot enter the pipeline.
    Dropped(DropReason),
    /// Our own (or the host's) transmission, looped back by an old kernel: not a frame.
    Ignored,
}

impl Device {
    /// What the device's egress takes in virtio_net_hdr metadata: a tap what TUNSETOFFLOAD
    /// accepted (USO only where the kernel has it), a packet socket with a vnet header what the
    /// kernel parses from it (the same USO condition), one without nothing.
    pub fn offload(&self) -> vnet::Offloads {
        match self {
            Device::Tap(t) => vnet::Offloads { uso: t.uso, ..vnet::Offloads::TSO },
            Device::Packet(p) if p.vnet => vnet::Offloads { uso: crate::sys::kernel_at_least(6, 2), ..vnet::Offloads::TSO },
            Device::Packet(_) => vnet::Offloads::NONE,
        }
    }

    /// False once the device behind the fd is gone (a deleted tap).
    pub fn attached(&self) -> bool {
        match self {
            Device::Tap(t) => t.attached(),
            Device::Packet(_) => true,
        }
    }

    pub fn recv(&self, buf: &mut PacketBuf) -> io::Result<Rx> {
        match self {
            Device::Tap(t) => {
                let n = t.recv(buf.recv_area(true))?;
                if !buf.set_received(n, true) {
                    return Ok(Rx::Dropped(DropReason::BadVnetHdr));
                }
            }
            Device::Packet(p) => {
                let r = p.recv(buf.recv_area(p.vnet))?;
                if r.outgoing {
                    return Ok(Rx::Ignored);
                }
                if r.truncated {
                    return Ok(Rx::Dropped(DropReason::Truncated));
                }
                if !buf.set_received(r.len, p.vnet) {
                    return Ok(Rx::Dropped(DropReason::BadVnetHdr));
                }
                if let Some((tpid, tci)) = r.vlan {
                    if !buf.push_tag(tpid, tci) {
                        return Ok(Rx::Dropped(DropReason::Malformed));
                    }
                }
            }
        }
        Ok(Rx::Frame)
    }

    /// Bytes of virtio_net_hdr in front of every frame written to the fd.
    pub fn hdr_len(&self) -> usize {
        match self {
            Device::Tap(_) => vnet::HDR_LEN,
            Device::Packet(p) if p.vnet => vnet::HDR_LEN,
            Device::Packet(_) => 0,
        }
    }

    /// Writes one frame already behind its header ([`Device::hdr_len`] bytes of it).
    pub fn send_raw(&self, bytes: &[u8]) -> io::Result<()> {
        crate::sys::packet::write1(self.as_raw_fd(), bytes)
    }

    /// Writes frames already behind their headers, as many as one call takes (a packet socket:
    /// one sendmmsg; a tap: one write); returns how many left. An error is the first one's.
    pub fn send_many(&self, frames: &[&[u8]]) -> io::Result<usize> {
        match self {
            Device::Packet(p) => crate::sys::packet::send_many(p.as_raw_fd(), frames),
            Device::Tap(_) => match frames.first() {
                Some(f) => self.send_raw(f).map(|()| 1),
                None => Ok(0),
            },
        }
    }

    pub fn send(&self, v: Option<&VnetHdr>, frame: &[u8]) -> io::Result<()> {
        let mut hdr = [0u8; vnet::HDR_LEN];
        if let Some(v) = v {
            v.emit(&mut hdr);
        }
        match self {
            Device::Tap(t) => t.send(&hdr, frame),
            Device::Packet(p) => p.send(p.vnet.then_some(&hdr), frame),
        }
    }
}

impl AsRawFd for Device {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            Device::Tap(t) => t.as_raw_fd(),
            Device::Packet(p) => p.as_raw_fd(),
        }
    }
}
