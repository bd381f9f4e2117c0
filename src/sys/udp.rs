//! UDP sockets for VXLAN: batched sends with UDP generic segmentation offload (UDP_SEGMENT:
//! one `sendmsg` carries a whole super-frame's datagrams, the kernel cuts them) and batched
//! receives with UDP GRO (one `recvmsg` returns several datagrams of one size back to back).
//! Both degrade to one datagram per call where the kernel refuses them.

use super::cvt;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;

use libc::{UDP_GRO, UDP_SEGMENT};

/// The most one UDP_SEGMENT send carries: the UDP length field's limit, less headers.
const GSO_MAX_BYTES: usize = 65_000;
/// UDP_MAX_SEGMENTS of older kernels (newer ones take 128).
const GSO_MAX_SEGMENTS: usize = 64;

/// Socket buffer size asked for, each way.
const SOCKET_BUFFER: libc::c_int = 8 << 20;

pub struct Udp {
    sock: UdpSocket,
    /// The kernel takes UDP_SEGMENT (cleared after the first refusal).
    gso: std::cell::Cell<bool>,
    /// GRO was switched on: received buffers may hold several datagrams.
    pub gro: bool,
}

fn setsockopt(fd: i32, level: libc::c_int, name: libc::c_int, v: libc::c_int) -> io::Result<()> {
    // SAFETY: `v` outlives the call and its size is passed; the kernel only reads it.
    cvt(unsafe { libc::setsockopt(fd, level, name, (&v as *const libc::c_int).cast(), std::mem::size_of::<libc::c_int>() as u32) })?;
    Ok(())
}

fn sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from(*a.ip()).to_be() },
        sin_zero: [0; 8],
    }
}

impl Udp {
    /// A non-blocking socket bound to `addr` (port 0: the kernel picks), with outer `ttl` and
    /// DF (`df`), and GRO if `gro`.
    pub fn bind(addr: SocketAddrV4, ttl: u8, df: bool, gro: bool) -> io::Result<Udp> {
        let sock = UdpSocket::bind(addr)?;
        sock.set_nonblocking(true)?;
        let fd = sock.as_raw_fd();
        setsockopt(fd, libc::IPPROTO_IP, libc::IP_TTL, ttl as libc::c_int)?;
        let pmtu = if df { libc::IP_PMTUDISC_DO } else { libc::IP_PMTUDISC_DONT };
        setsockopt(fd, libc::IPPROTO_IP, libc::IP_MTU_DISCOVER, pmtu)?;
        let gro = gro && setsockopt(fd, libc::SOL_UDP, UDP_GRO, 1).is_ok();
        // Room for bursts (a super-frame is some 45 datagrams at once): as root past rmem_max.
        for (force, plain) in [(libc::SO_RCVBUFFORCE, libc::SO_RCVBUF), (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF)] {
            if setsockopt(fd, libc::SOL_SOCKET, force, SOCKET_BUFFER).is_err() {
                let _ = setsockopt(fd, libc::SOL_SOCKET, plain, SOCKET_BUFFER);
            }
        }
        Ok(Udp { sock, gso: std::cell::Cell::new(true), gro })
    }

    pub fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.sock.local_addr()
    }

    /// One datagram.
    pub fn send_to(&self, payload: &[u8], to: SocketAddrV4) -> io::Result<()> {
        self.sock.send_to(payload, to).map(|_| ())
    }

    /// Datagrams of `seg` bytes back to back (the last may be shorter): one call with
    /// UDP_SEGMENT, else one call each.
    pub fn send_batch(&self, payload: &[u8], seg: usize, to: SocketAddrV4) -> io::Result<()> {
        // One send is one UDP datagram to the kernel before it cuts it: at most 64 KiB, and
        // at most UDP_MAX_SEGMENTS (64 on older kernels) pieces.
        let per_send = (GSO_MAX_BYTES / seg.max(1)).min(GSO_MAX_SEGMENTS) * seg;
        if self.gso.get() && seg > 0 && per_send > 0 {
            let mut sent = 0;
            for chunk in payload.chunks(per_send) {
                match self.send_gso(chunk, seg as u16, to) {
                    Ok(()) => sent += chunk.len(),
                    Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EIO | libc::ENOPROTOOPT | libc::EOPNOTSUPP)) => {
                        tracing::warn!("UDP_SEGMENT refused ({e}); VXLAN sends one datagram per call from now on");
                        self.gso.set(false);
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
            if sent == payload.len() {
                return Ok(());
            }
            return self.send_each(&payload[sent..], seg, to);
        }
        self.send_each(payload, seg, to)
    }

    fn send_each(&self, payload: &[u8], seg: usize, to: SocketAddrV4) -> io::Result<()> {
        for chunk in payload.chunks(seg.max(1)) {
            self.send_to(chunk, to)?;
        }
        Ok(())
    }

    fn send_gso(&self, payload: &[u8], seg: u16, to: SocketAddrV4) -> io::Result<()> {
        let mut addr = sockaddr(to);
        let mut iov = libc::iovec { iov_base: payload.as_ptr() as *mut libc::c_void, iov_len: payload.len() };
        // SAFETY: CMSG_SPACE is a pure size computation.
        let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<u16>() as u32) } as usize;
        let mut cbuf = [0u64; 4];
        debug_assert!(space <= std::mem::size_of_val(&cbuf));
        // SAFETY: msghdr is plain data; zero is a valid initial state.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = (&mut addr as *mut libc::sockaddr_in).cast();
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: msg_control points at `cbuf`, large enough for one cmsg of a u16 (checked
        // above), so CMSG_FIRSTHDR is non-null and CMSG_DATA lies inside it.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_UDP;
            (*c).cmsg_type = UDP_SEGMENT;
            (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<u16>() as u32) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), seg);
        }
        // SAFETY: every pointer in `msg` refers to live locals or `payload` for the call.
        let n = unsafe { libc::sendmsg(self.sock.as_raw_fd(), &msg, 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Reads into `buf`: what arrived, and from whom.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<Received> {
        // SAFETY: sockaddr_in is plain data.
        let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
        let mut cbuf = [0u64; 8];
        // SAFETY: as in send_gso.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = (&mut addr as *mut libc::sockaddr_in).cast();
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&cbuf) as _;
        // SAFETY: every pointer in `msg` refers to live locals or `buf` for the call.
        let n = unsafe { libc::recvmsg(self.sock.as_raw_fd(), &mut msg, 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut seg = None;
        // SAFETY: the kernel filled msg_control up to msg_controllen; the CMSG_* macros walk
        // inside it and CMSG_DATA of a UDP_GRO message holds an int.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_UDP && (*c).cmsg_type == UDP_GRO {
                    seg = Some(std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>()) as usize);
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
        let from = SocketAddrV4::new(Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr)), u16::from_be(addr.sin_port));
        Ok(Received { len: n as usize, from, seg: seg.filter(|&s| s > 0 && s < n as usize), truncated: msg.msg_flags & libc::MSG_TRUNC != 0 })
    }
}

/// One read's worth.
#[derive(Debug, Clone, Copy)]
pub struct Received {
    /// Bytes in the buffer.
    pub len: usize,
    pub from: SocketAddrV4,
    /// With GRO: the size of each datagram, back to back in the buffer (the last may be
    /// shorter). `None`: one datagram.
    pub seg: Option<usize>,
    /// The datagram was longer than the buffer and was cut.
    pub truncated: bool,
}

impl AsRawFd for Udp {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.sock.as_raw_fd()
    }
}
