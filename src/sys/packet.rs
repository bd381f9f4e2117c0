//! AF_PACKET sockets bound to one existing interface (how a QEMU tap or a trunk NIC is attached).
//!
//! The socket is created with protocol 0 and only then bound with ETH_P_ALL, so it never sees
//! frames of other interfaces. libc::PACKET_VNET_HDR is used when the kernel offers it; libc::PACKET_AUXDATA
//! gives back the VLAN tag the kernel strips on receive (skb_vlan_untag), which is reinserted so
//! trunks see the frame as it was on the wire; our own transmissions are not looped back
//! (libc::PACKET_IGNORE_OUTGOING).

use super::{cvt, netif};
use crate::wire::vnet;
use std::io;
use std::mem::{size_of, zeroed};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// What one receive produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    /// Bytes written into the buffer (vnet header included when enabled).
    pub len: usize,
    /// The frame was longer than the buffer and was cut.
    pub truncated: bool,
    /// (TPID, TCI) of a tag the kernel stripped.
    pub vlan: Option<(u16, u16)>,
    /// A frame this host sent out of the interface (seen when libc::PACKET_IGNORE_OUTGOING is
    /// unavailable, before Linux 4.20); it must not be switched again.
    pub outgoing: bool,
}

pub struct PacketSocket {
    fd: OwnedFd,
    pub ifindex: u32,
    /// Frames carry a virtio_net_hdr in both directions.
    pub vnet: bool,
}

fn setsockopt_int(fd: RawFd, level: libc::c_int, opt: libc::c_int, v: libc::c_int) -> io::Result<()> {
    // SAFETY: the option value is an int that lives across the call; its size is passed.
    cvt(unsafe { libc::setsockopt(fd, level, opt, (&v as *const libc::c_int).cast(), size_of::<libc::c_int>() as u32) })?;
    Ok(())
}

impl PacketSocket {
    /// Attaches to the existing interface `name`: promiscuous, up, non-blocking.
    pub fn open(name: &str, want_vnet: bool) -> io::Result<PacketSocket> {
        let ifindex = netif::index(name)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no interface named {name}")))?;
        // SAFETY: socket() has no memory-safety preconditions.
        let fd = cvt(unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0) })?;
        // SAFETY: fd is fresh and owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let raw = fd.as_raw_fd();
        let vnet = want_vnet && setsockopt_int(raw, libc::SOL_PACKET, libc::PACKET_VNET_HDR, 1).is_ok();
        setsockopt_int(raw, libc::SOL_PACKET, libc::PACKET_AUXDATA, 1)?;
        let _ = setsockopt_int(raw, libc::SOL_PACKET, libc::PACKET_IGNORE_OUTGOING, 1);
        // Room for a burst of 64 KiB super-frames each way: past net.core.[rw]mem_max (212 KiB
        // by default, three super-frames) with CAP_NET_ADMIN, which vrouter has; capped by it
        // otherwise.
        for (force, plain) in [(libc::SO_RCVBUFFORCE, libc::SO_RCVBUF), (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF)] {
            if setsockopt_int(raw, libc::SOL_SOCKET, force, 4 << 20).is_err() {
                let _ = setsockopt_int(raw, libc::SOL_SOCKET, plain, 4 << 20);
            }
        }
        // SAFETY: sockaddr_ll is plain old data.
        let mut sll: libc::sockaddr_ll = unsafe { zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        sll.sll_ifindex = ifindex as i32;
        // SAFETY: sll is a valid sockaddr_ll and its exact size is passed.
        cvt(unsafe { libc::bind(raw, (&sll as *const libc::sockaddr_ll).cast(), size_of::<libc::sockaddr_ll>() as u32) })?;
        let mreq = libc::packet_mreq { mr_ifindex: ifindex as i32, mr_type: libc::PACKET_MR_PROMISC as u16, mr_alen: 0, mr_address: [0; 8] };
        // SAFETY: mreq is a valid packet_mreq and its size is passed.
        cvt(unsafe { libc::setsockopt(raw, libc::SOL_PACKET, libc::PACKET_ADD_MEMBERSHIP, (&mreq as *const libc::packet_mreq).cast(), size_of::<libc::packet_mreq>() as u32) })?;
        netif::set_up(name, false)?;
        Ok(PacketSocket { fd, ifindex, vnet })
    }

    /// Receives one frame into `buf`, with the stripped VLAN tag if there was one.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<Received> {
        let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
        // u64 alignment covers cmsghdr; 64 bytes fit one auxdata cmsg.
        let mut cbuf = [0u64; 8];
        // SAFETY: msghdr and sockaddr_ll are plain old data.
        let mut msg: libc::msghdr = unsafe { zeroed() };
        // SAFETY: as above.
        let mut from: libc::sockaddr_ll = unsafe { zeroed() };
        msg.msg_name = (&mut from as *mut libc::sockaddr_ll).cast();
        msg.msg_namelen = size_of::<libc::sockaddr_ll>() as u32;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = size_of::<[u64; 8]>();
        // SAFETY: msg points at from/iov/cbuf, all valid and writable for their stated lengths.
        let n = unsafe { libc::recvmsg(self.fd.as_raw_fd(), &mut msg, libc::MSG_TRUNC) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        let mut vlan = None;
        // SAFETY: the CMSG_* macros walk the control buffer the kernel filled, bounded by
        // msg_controllen; the auxdata payload is read unaligned into a local copy.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_PACKET && (*c).cmsg_type == libc::PACKET_AUXDATA
                    && (*c).cmsg_len as usize >= libc::CMSG_LEN(size_of::<libc::tpacket_auxdata>() as u32) as usize
                {
                    let a: libc::tpacket_auxdata = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                    if a.tp_status & libc::TP_STATUS_VLAN_VALID != 0 {
                        let tpid = if a.tp_status & libc::TP_STATUS_VLAN_TPID_VALID != 0 { a.tp_vlan_tpid } else { 0x8100 };
                        vlan = Some((tpid, a.tp_vlan_tci));
                    }
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
        let outgoing = from.sll_pkttype == libc::PACKET_OUTGOING;
        Ok(Received { len: n.min(buf.len()), truncated: n > buf.len(), vlan, outgoing })
    }

    /// Sends one frame (behind its vnet header when the socket has them).
    pub fn send(&self, hdr: Option<&[u8; vnet::HDR_LEN]>, frame: &[u8]) -> io::Result<()> {
        match hdr {
            Some(h) => writev2(self.fd.as_raw_fd(), h, frame),
            None => write1(self.fd.as_raw_fd(), frame),
        }
    }
}

/// Most frames one [`send_many`] call takes.
pub const SEND_MANY: usize = 64;

/// Sends up to [`SEND_MANY`] frames (each one packet, with its vnet header in front when the
/// socket has them) with one sendmmsg; returns how many left, in order. An error means the
/// first one failed; the caller goes on after it.
pub(crate) fn send_many(fd: RawFd, frames: &[&[u8]]) -> io::Result<usize> {
    let n = frames.len().min(SEND_MANY);
    // SAFETY: iovec and mmsghdr are plain old data; zero is a valid value for both.
    let mut iov: [libc::iovec; SEND_MANY] = unsafe { zeroed() };
    // SAFETY: as above.
    let mut msgs: [libc::mmsghdr; SEND_MANY] = unsafe { zeroed() };
    for (k, f) in frames[..n].iter().enumerate() {
        iov[k] = libc::iovec { iov_base: f.as_ptr() as *mut _, iov_len: f.len() };
        msgs[k].msg_hdr.msg_iov = &mut iov[k];
        msgs[k].msg_hdr.msg_iovlen = 1;
    }
    // SAFETY: each header points at one iovec above, each iovec at a live frame; sendmmsg
    // only reads them (and writes msg_len into the headers, which are ours).
    let r = unsafe { libc::sendmmsg(fd, msgs.as_mut_ptr(), n as u32, 0) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

/// One write of a frame (one packet on taps and packet sockets).
pub(crate) fn write1(fd: RawFd, frame: &[u8]) -> io::Result<()> {
    // SAFETY: frame is valid for reads of frame.len() bytes.
    let n = unsafe { libc::write(fd, frame.as_ptr().cast(), frame.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// One writev of a header and a frame (one packet on taps and packet sockets).
pub(crate) fn writev2(fd: RawFd, hdr: &[u8], frame: &[u8]) -> io::Result<()> {
    let iov = [
        libc::iovec { iov_base: hdr.as_ptr() as *mut _, iov_len: hdr.len() },
        libc::iovec { iov_base: frame.as_ptr() as *mut _, iov_len: frame.len() },
    ];
    // SAFETY: both iovecs point at live slices; writev only reads them.
    let n = unsafe { libc::writev(fd, iov.as_ptr(), 2) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl AsRawFd for PacketSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}
