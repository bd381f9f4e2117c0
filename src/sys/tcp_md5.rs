//! TCP MD5 signatures (RFC 2385) on a BGP session's socket: `setsockopt(TCP_MD5SIG)`.
//!
//! libc has the option and `TCP_MD5SIG_MAXKEYLEN` but not `struct tcp_md5sig` (checked in
//! libc 0.2.191), so its layout is written here from `include/uapi/linux/tcp.h`, built on
//! libc's `sockaddr_storage`; a unit test pins its size to the kernel's 216 bytes.

use std::net::Ipv4Addr;
use std::os::fd::RawFd;

#[repr(C)]
struct TcpMd5Sig {
    addr: libc::sockaddr_storage,
    flags: u8,
    prefixlen: u8,
    keylen: u16,
    ifindex: libc::c_int,
    key: [u8; libc::TCP_MD5SIG_MAXKEYLEN],
}

/// Signs the connection to `peer` on socket `fd` with `key` (set before `connect`).
pub fn set_key(fd: RawFd, peer: Ipv4Addr, key: &[u8]) -> std::io::Result<()> {
    if key.is_empty() || key.len() > libc::TCP_MD5SIG_MAXKEYLEN {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "TCP MD5 key must be 1..80 bytes"));
    }
    // SAFETY: an all-zero sockaddr_storage and byte arrays are valid values.
    let mut sig: TcpMd5Sig = unsafe { std::mem::zeroed() };
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr { s_addr: u32::from(peer).to_be() },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_storage is larger than sockaddr_in and suitably aligned for it.
    unsafe { std::ptr::write(&mut sig.addr as *mut _ as *mut libc::sockaddr_in, sin) };
    sig.keylen = key.len() as u16;
    sig.key[..key.len()].copy_from_slice(key);
    // SAFETY: sig lives on this stack frame and is passed with its size.
    let r = unsafe { libc::setsockopt(fd, libc::IPPROTO_TCP, libc::TCP_MD5SIG, &sig as *const _ as *const libc::c_void, std::mem::size_of::<TcpMd5Sig>() as u32) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn layout_is_the_kernels() {
        assert_eq!(std::mem::size_of::<super::TcpMd5Sig>(), 216);
    }

    /// The kernel takes the key (a wrong layout or size gets EINVAL), and refuses bad ones.
    #[test]
    fn the_kernel_takes_a_key() {
        use std::os::fd::AsRawFd;
        let s = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        super::set_key(s.as_raw_fd(), std::net::Ipv4Addr::new(192, 0, 2, 1), b"s3cret").unwrap();
        assert!(super::set_key(s.as_raw_fd(), std::net::Ipv4Addr::new(192, 0, 2, 1), &[b'x'; 81]).is_err());
    }
}
