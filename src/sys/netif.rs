//! Interface ioctls: index lookup, link up, promiscuous mode, MAC address, IPv6 off.

use super::{cvt, ifreq};
use crate::wire::ethernet::MacAddr;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

fn ctl_socket() -> io::Result<OwnedFd> {
    // SAFETY: socket() has no memory-safety preconditions; the fd is owned right away.
    let fd = cvt(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: fd is a freshly created, valid descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The interface's index, or `None` if no interface has that name in this namespace.
pub fn index(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    // SAFETY: c is a valid NUL-terminated string that outlives the call.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

fn flags(name: &str) -> io::Result<(OwnedFd, libc::ifreq)> {
    let s = ctl_socket()?;
    let mut req = ifreq(name)?;
    // SAFETY: SIOCGIFFLAGS reads into the ifreq we own, which is properly sized.
    cvt(unsafe { libc::ioctl(s.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) })?;
    Ok((s, req))
}

/// Whether the interface is administratively up.
pub fn is_up(name: &str) -> io::Result<bool> {
    let (_s, req) = flags(name)?;
    // SAFETY: ifru_flags is the union member SIOCGIFFLAGS filled in.
    Ok(unsafe { req.ifr_ifru.ifru_flags } & libc::IFF_UP as libc::c_short != 0)
}

/// Sets IFF_UP (and IFF_PROMISC if `promisc`).
pub fn set_up(name: &str, promisc: bool) -> io::Result<()> {
    let (s, mut req) = flags(name)?;
    // SAFETY: the union member ifru_flags is the one SIOCGIFFLAGS filled in.
    unsafe {
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if promisc {
            req.ifr_ifru.ifru_flags |= libc::IFF_PROMISC as libc::c_short;
        }
    }
    // SAFETY: SIOCSIFFLAGS reads the ifreq we own.
    cvt(unsafe { libc::ioctl(s.as_raw_fd(), libc::SIOCSIFFLAGS, &req) })?;
    Ok(())
}

/// Sets the interface's hardware address.
pub fn set_mac(name: &str, mac: MacAddr) -> io::Result<()> {
    let s = ctl_socket()?;
    let mut req = ifreq(name)?;
    // SAFETY: writing the sockaddr member of the union we own; ARPHRD_ETHER tells the kernel the
    // first six bytes of sa_data are the MAC.
    unsafe {
        req.ifr_ifru.ifru_hwaddr.sa_family = libc::ARPHRD_ETHER;
        for (d, s) in req.ifr_ifru.ifru_hwaddr.sa_data.iter_mut().zip(mac.0) {
            *d = s as libc::c_char;
        }
    }
    // SAFETY: SIOCSIFHWADDR reads the ifreq we own.
    cvt(unsafe { libc::ioctl(s.as_raw_fd(), libc::SIOCSIFHWADDR, &req) })?;
    Ok(())
}

/// Reads the interface's hardware address.
pub fn mac(name: &str) -> io::Result<MacAddr> {
    let s = ctl_socket()?;
    let mut req = ifreq(name)?;
    // SAFETY: SIOCGIFHWADDR fills the ifreq we own.
    cvt(unsafe { libc::ioctl(s.as_raw_fd(), libc::SIOCGIFHWADDR, &mut req) })?;
    // SAFETY: the kernel filled ifru_hwaddr.
    let d = unsafe { req.ifr_ifru.ifru_hwaddr.sa_data };
    Ok(MacAddr([d[0] as u8, d[1] as u8, d[2] as u8, d[3] as u8, d[4] as u8, d[5] as u8]))
}

/// The interface of this namespace that has MAC `want` (the first, in index order), if any.
pub fn name_by_mac(want: MacAddr) -> Option<String> {
    let mut found = None;
    // SAFETY: if_nameindex returns a heap array ending with a zero entry (or null on failure);
    // it is read up to that entry and freed once with if_freenameindex.
    unsafe {
        let list = libc::if_nameindex();
        if list.is_null() {
            return None;
        }
        let mut p = list;
        while (*p).if_index != 0 && !(*p).if_name.is_null() {
            let name = std::ffi::CStr::from_ptr((*p).if_name).to_string_lossy().into_owned();
            if mac(&name).is_ok_and(|m| m == want) {
                found = Some(name);
                break;
            }
            p = p.add(1);
        }
        libc::if_freenameindex(list);
    }
    found
}

/// Turns IPv6 off on an interface vrouter uses as a pure L2 port, so the host stack neither
/// autoconfigures an address on it nor sends its own traffic out of it. Best effort.
pub fn disable_ipv6(name: &str) {
    let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), "1");
}
