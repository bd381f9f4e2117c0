//! Thin, checked wrappers over the Linux interfaces vrouter needs: tap devices, AF_PACKET
//! sockets and interface ioctls. Every `unsafe` block states why it is sound.

pub mod netif;
pub mod packet;
pub mod rtnl;
pub mod tap;
pub mod udp;

use std::io;

/// Turns a libc return value into an `io::Result`.
pub(crate) fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// A zeroed `ifreq` carrying `name`; fails if the name does not fit IFNAMSIZ.
pub(crate) fn ifreq(name: &str) -> io::Result<libc::ifreq> {
    let b = name.as_bytes();
    if b.is_empty() || b.len() >= libc::IFNAMSIZ || b.contains(&0) {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("bad interface name {name:?}")));
    }
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(b) {
        *d = *s as libc::c_char;
    }
    Ok(req)
}
