//! A tap port: vrouter's end of `/dev/net/tun`, always with virtio_net_hdr.

use super::{hdr_bytes, Port, Rx};
use crate::buf::PacketBuf;
use crate::switch::stats::DropReason;
use crate::sys::tap::Tap;
use crate::wire::vnet::{self, VnetHdr};
use std::io;

impl Port for Tap {
    /// What TUNSETOFFLOAD accepted (USO only where the kernel has it).
    fn offload(&self) -> vnet::Offloads {
        vnet::Offloads { uso: self.uso, ..vnet::Offloads::TSO }
    }

    fn attached(&self) -> bool {
        Tap::attached(self)
    }

    fn recv(&self, buf: &mut PacketBuf) -> io::Result<Rx> {
        let n = Tap::recv(self, buf.recv_area(true))?;
        if !buf.set_received(n, true) {
            return Ok(Rx::Dropped(DropReason::BadVnetHdr));
        }
        Ok(Rx::Frame)
    }

    fn hdr_len(&self) -> usize {
        vnet::HDR_LEN
    }

    fn send(&self, v: Option<&VnetHdr>, frame: &[u8]) -> io::Result<()> {
        Tap::send(self, &hdr_bytes(v), frame)
    }

    fn writes_never_wait(&self) -> bool {
        true
    }

    fn as_tap(&self) -> Option<&Tap> {
        Some(self)
    }
}
