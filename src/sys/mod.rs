//! Thin, checked wrappers over the Linux interfaces vrouter needs: tap devices, AF_PACKET
//! sockets and interface ioctls. Every `unsafe` block states why it is sound.

pub mod netif;
pub mod notify;
pub mod packet;
pub mod rtnl;
pub mod tap;
pub mod tcp_md5;
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

/// Whether the running kernel's release is at least `major.minor` (uname(2)).
pub fn kernel_at_least(major: u32, minor: u32) -> bool {
    // SAFETY: utsname is plain data; all-zero is valid, and uname fills it.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: the pointer is to a live utsname.
    if unsafe { libc::uname(&mut u) } != 0 {
        return false;
    }
    let release: String = u.release.iter().take_while(|&&c| c != 0).map(|&c| c as u8 as char).collect();
    release_at_least(&release, major, minor)
}

fn release_at_least(release: &str, major: u32, minor: u32) -> bool {
    let mut parts = release.split(|c: char| !c.is_ascii_digit()).filter(|p| !p.is_empty()).map(|p| p.parse::<u32>().unwrap_or(0));
    let (a, b) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (a, b) >= (major, minor)
}

#[cfg(test)]
mod tests {
    #[test]
    fn kernel_releases_compare_by_major_and_minor() {
        use super::release_at_least as at;
        assert!(at("6.18.44-fc-v1147", 6, 2));
        assert!(at("6.2.0", 6, 2));
        assert!(!at("6.1.0-18-amd64", 6, 2));
        assert!(!at("5.19.1", 6, 2));
        assert!(!at("", 6, 2));
    }
}
