//! UDP sockets for VXLAN: batched sends with UDP generic segmentation offload (UDP_SEGMENT:
//! one `sendmsg` carries a whole super-frame's datagrams, the kernel cuts them) and batched
//! receives with UDP GRO (one message holds several datagrams of one size back to back), several
//! messages per `recvmmsg`. Without UDP_SEGMENT, sends go out in `sendmmsg` batches; without
//! GRO, each message is one datagram.

use super::cvt;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;

use libc::{UDP_GRO, UDP_SEGMENT};

/// The most one UDP_SEGMENT send carries: the UDP length field's limit, less headers.
const GSO_MAX_BYTES: usize = 65_000;
/// UDP_MAX_SEGMENTS of older kernels (newer ones take 128).
const GSO_MAX_SEGMENTS: usize = 64;

/// Datagrams per `sendmmsg` when UDP_SEGMENT is refused.
const MMSG_BATCH: usize = 64;
/// Bytes per receive buffer: a whole GRO message (64 KiB) and more.
const RECV_BUF: usize = 65_536 + 1024;

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

    /// New outer TTL and DF on the bound socket (a reload that changes only these).
    pub fn set_ttl_df(&self, ttl: u8, df: bool) -> io::Result<()> {
        let fd = self.sock.as_raw_fd();
        setsockopt(fd, libc::IPPROTO_IP, libc::IP_TTL, ttl as libc::c_int)?;
        let pmtu = if df { libc::IP_PMTUDISC_DO } else { libc::IP_PMTUDISC_DONT };
        setsockopt(fd, libc::IPPROTO_IP, libc::IP_MTU_DISCOVER, pmtu)
    }

    pub fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.sock.local_addr()
    }

    /// One datagram.
    pub fn send_to(&self, payload: &[u8], to: SocketAddrV4) -> io::Result<()> {
        self.sock.send_to(payload, to).map(|_| ())
    }

    /// Datagrams of `seg` bytes back to back (the last may be shorter): one call per 64 KiB
    /// with UDP_SEGMENT, else `sendmmsg` batches.
    /// On failure, also how many datagrams had left before it (they are not sent again).
    pub fn send_batch(&self, payload: &[u8], seg: usize, to: SocketAddrV4) -> Result<(), (io::Error, usize)> {
        // One send is one UDP datagram to the kernel before it cuts it: at most 64 KiB, and
        // at most UDP_MAX_SEGMENTS (64 on older kernels) pieces.
        let per_send = (GSO_MAX_BYTES / seg.max(1)).min(GSO_MAX_SEGMENTS) * seg;
        if self.gso.get() && seg > 0 && per_send > 0 {
            let mut sent = 0;
            for chunk in payload.chunks(per_send) {
                match self.send_gso(chunk, seg as u16, to) {
                    Ok(()) => sent += chunk.len(),
                    // This batch only: the route's MTU under the segment size (a path MTU
                    // that just dropped) is EINVAL too, and may pass again.
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) => break,
                    Err(e) if matches!(e.raw_os_error(), Some(libc::EIO | libc::ENOPROTOOPT | libc::EOPNOTSUPP)) => {
                        tracing::warn!("UDP_SEGMENT refused ({e}); VXLAN sends with sendmmsg from now on");
                        self.gso.set(false);
                        break;
                    }
                    Err(e) => return Err((e, sent / seg)),
                }
            }
            if sent == payload.len() {
                return Ok(());
            }
            return self.send_each(&payload[sent..], seg, to).map_err(|(e, n)| (e, sent / seg + n));
        }
        self.send_each(payload, seg, to)
    }

    /// Without UDP_SEGMENT: the datagrams go in `sendmmsg` calls of up to [`MMSG_BATCH`].
    fn send_each(&self, payload: &[u8], seg: usize, to: SocketAddrV4) -> Result<(), (io::Error, usize)> {
        let mut addr = sockaddr(to);
        let seg = seg.max(1);
        let mut total = 0;
        for group in payload.chunks(seg * MMSG_BATCH) {
            // SAFETY: iovec and mmsghdr are plain data; zero is a valid initial state.
            let mut iovs: [libc::iovec; MMSG_BATCH] = unsafe { std::mem::zeroed() };
            let mut msgs: [libc::mmsghdr; MMSG_BATCH] = unsafe { std::mem::zeroed() };
            let mut k = 0;
            for (chunk, (iov, m)) in group.chunks(seg).zip(iovs.iter_mut().zip(msgs.iter_mut())) {
                *iov = libc::iovec { iov_base: chunk.as_ptr() as *mut libc::c_void, iov_len: chunk.len() };
                m.msg_hdr.msg_name = (&mut addr as *mut libc::sockaddr_in).cast();
                m.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
                m.msg_hdr.msg_iov = iov;
                m.msg_hdr.msg_iovlen = 1;
                k += 1;
            }
            let mut done = 0;
            while done < k {
                // SAFETY: msgs[done..k] point at live iovecs, `addr` and `payload` for the call.
                let n = unsafe { libc::sendmmsg(self.sock.as_raw_fd(), msgs[done..].as_mut_ptr(), (k - done) as u32, 0) };
                if n < 0 {
                    let e = io::Error::last_os_error();
                    if e.kind() == io::ErrorKind::Interrupted {
                        continue;
                    }
                    return Err((e, total + done));
                }
                done += n as usize;
            }
            total += done;
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

    /// Reads what is queued, up to one message per buffer of `b`, in one `recvmmsg`; with
    /// GRO each message may hold several datagrams. Returns how many messages arrived
    /// (`WouldBlock` when none).
    pub fn recv_many(&self, b: &mut RecvBatch) -> io::Result<usize> {
        let n = b.bufs.len();
        b.got.clear();
        b.iovs.clear();
        b.msgs.clear();
        for (buf, (addr, ctrl)) in b.bufs.iter_mut().zip(b.addrs.iter_mut().zip(b.ctrl.iter_mut())) {
            b.iovs.push(libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() });
            // SAFETY: mmsghdr is plain data; zero is a valid initial state.
            let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
            m.msg_hdr.msg_name = (addr as *mut libc::sockaddr_in).cast();
            m.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
            m.msg_hdr.msg_control = ctrl.as_mut_ptr().cast();
            m.msg_hdr.msg_controllen = std::mem::size_of_val(ctrl) as _;
            b.msgs.push(m);
        }
        for (m, iov) in b.msgs.iter_mut().zip(b.iovs.iter_mut()) {
            m.msg_hdr.msg_iov = iov;
            m.msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: every message points at its own live buffer, address and control area in
        // `b`, which is not touched until the call returns.
        let got = unsafe { libc::recvmmsg(self.sock.as_raw_fd(), b.msgs.as_mut_ptr(), n as u32, libc::MSG_DONTWAIT, std::ptr::null_mut()) };
        if got < 0 {
            return Err(io::Error::last_os_error());
        }
        for i in 0..got as usize {
            let m = &b.msgs[i];
            let len = m.msg_len as usize;
            let mut seg = None;
            // SAFETY: the kernel filled msg_control up to msg_controllen; the CMSG_* macros walk
            // inside it and CMSG_DATA of a UDP_GRO message holds an int.
            unsafe {
                let mut c = libc::CMSG_FIRSTHDR(&m.msg_hdr);
                while !c.is_null() {
                    let int_len = libc::CMSG_LEN(std::mem::size_of::<libc::c_int>() as u32) as usize;
                    if (*c).cmsg_level == libc::SOL_UDP && (*c).cmsg_type == UDP_GRO && (*c).cmsg_len as usize >= int_len {
                        seg = Some(std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>()) as usize);
                    }
                    c = libc::CMSG_NXTHDR(&m.msg_hdr, c);
                }
            }
            let a = &b.addrs[i];
            let from = SocketAddrV4::new(Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)), u16::from_be(a.sin_port));
            let truncated = m.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
            b.got.push(Received { len, from, seg: seg.filter(|&s| s > 0 && s < len), truncated });
        }
        Ok(got as usize)
    }
}

/// Buffers for [`Udp::recv_many`]: one per message, each room for a 64 KiB GRO message.
pub struct RecvBatch {
    bufs: Vec<Box<[u8]>>,
    addrs: Vec<libc::sockaddr_in>,
    ctrl: Vec<[u64; 8]>,
    iovs: Vec<libc::iovec>,
    msgs: Vec<libc::mmsghdr>,
    got: Vec<Received>,
}

impl RecvBatch {
    /// Room for `n` messages.
    pub fn new(n: usize) -> RecvBatch {
        let n = n.max(1);
        RecvBatch {
            bufs: (0..n).map(|_| vec![0u8; RECV_BUF].into_boxed_slice()).collect(),
            // SAFETY: sockaddr_in is plain data.
            addrs: vec![unsafe { std::mem::zeroed() }; n],
            ctrl: vec![[0u64; 8]; n],
            iovs: Vec::with_capacity(n),
            msgs: Vec::with_capacity(n),
            got: Vec::with_capacity(n),
        }
    }

    /// The messages of the last [`Udp::recv_many`]: what arrived, and its bytes.
    pub fn iter(&self) -> impl Iterator<Item = (Received, &[u8])> + '_ {
        self.got.iter().zip(&self.bufs).map(|(r, b)| (*r, &b[..r.len.min(b.len())]))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(gro: bool) -> (Udp, Udp, SocketAddrV4) {
        let lo = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0);
        let rx = Udp::bind(lo, 64, false, gro).unwrap();
        let tx = Udp::bind(lo, 64, false, false).unwrap();
        let to = match rx.local_addr().unwrap() {
            std::net::SocketAddr::V4(a) => a,
            _ => unreachable!(),
        };
        (rx, tx, to)
    }

    /// Everything that arrives, as datagrams, reading until nothing is left.
    fn drain(rx: &Udp, b: &mut RecvBatch) -> (Vec<Vec<u8>>, usize) {
        let mut dgs = Vec::new();
        let mut calls = 0;
        for _ in 0..200 {
            match rx.recv_many(b) {
                Ok(_) => {
                    calls += 1;
                    for (r, bytes) in b.iter() {
                        assert!(!r.truncated);
                        dgs.extend(bytes.chunks(r.seg.unwrap_or(r.len).max(1)).map(|c| c.to_vec()));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if !dgs.is_empty() {
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                Err(e) => panic!("recv: {e}"),
            }
        }
        (dgs, calls)
    }

    fn payload(n: usize, seg: usize) -> (Vec<u8>, Vec<Vec<u8>>) {
        let p: Vec<u8> = (0..n).map(|i| (i / seg) as u8 ^ (i as u8)).collect();
        let dgs = p.chunks(seg).map(|c| c.to_vec()).collect();
        (p, dgs)
    }

    /// A batch (more than one UDP_SEGMENT send's worth) arrives whole, datagram for datagram,
    /// through GRO receives.
    #[test]
    fn segmented_batch_arrives_datagram_for_datagram() {
        let (rx, tx, to) = pair(true);
        let (p, want) = payload(100 * 1000 + 321, 1000);
        tx.send_batch(&p, 1000, to).unwrap();
        let mut b = RecvBatch::new(8);
        let (got, _) = drain(&rx, &mut b);
        assert_eq!(got, want);
    }

    /// Without UDP_SEGMENT the datagrams go out in sendmmsg batches and come back in
    /// recvmmsg batches: fewer calls than datagrams.
    #[test]
    fn mmsg_fallback_batches_both_ways() {
        let (rx, tx, to) = pair(false);
        tx.gso.set(false);
        let (p, want) = payload(40 * 200, 200);
        tx.send_batch(&p, 200, to).unwrap();
        let mut b = RecvBatch::new(8);
        let (got, calls) = drain(&rx, &mut b);
        assert_eq!(got, want);
        assert!(calls < want.len(), "{calls} calls for {} datagrams", want.len());
    }
}
