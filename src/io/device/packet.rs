//! A `netdev` port: an existing interface through an AF_PACKET socket, with virtio_net_hdr
//! when the kernel offers it; a run of frames leaves in one sendmmsg.

use super::{hdr_bytes, Port, Rx};
use crate::buf::PacketBuf;
use crate::switch::stats::DropReason;
use crate::sys::packet::PacketSocket;
use crate::wire::vnet::{self, VnetHdr};
use std::io;
use std::os::fd::AsRawFd;

impl Port for PacketSocket {
    /// With a vnet header: what the kernel parses from it (USO from Linux 6.2); without: none.
    fn offload(&self) -> vnet::Offloads {
        if self.vnet {
            vnet::Offloads { uso: crate::sys::kernel_at_least(6, 2), ..vnet::Offloads::TSO }
        } else {
            vnet::Offloads::NONE
        }
    }

    fn recv(&self, buf: &mut PacketBuf) -> io::Result<Rx> {
        let r = PacketSocket::recv(self, buf.recv_area(self.vnet))?;
        if r.outgoing {
            return Ok(Rx::Ignored);
        }
        if r.truncated {
            return Ok(Rx::Dropped(DropReason::Truncated));
        }
        if !buf.set_received(r.len, self.vnet) {
            return Ok(Rx::Dropped(DropReason::BadVnetHdr));
        }
        if let Some((tpid, tci)) = r.vlan {
            if !buf.push_tag(tpid, tci) {
                return Ok(Rx::Dropped(DropReason::Malformed));
            }
        }
        Ok(Rx::Frame)
    }

    fn hdr_len(&self) -> usize {
        if self.vnet {
            vnet::HDR_LEN
        } else {
            0
        }
    }

    fn send_many(&self, frames: &[&[u8]]) -> io::Result<usize> {
        crate::sys::packet::send_many(self.as_raw_fd(), frames)
    }

    fn send(&self, v: Option<&VnetHdr>, frame: &[u8]) -> io::Result<()> {
        let hdr = hdr_bytes(v);
        PacketSocket::send(self, self.vnet.then_some(&hdr), frame)
    }
}
