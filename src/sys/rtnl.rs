//! Link notifications from rtnetlink (RTMGRP_LINK): the poll loop learns that an interface
//! appeared, changed or disappeared without polling for it. Only "something happened to a
//! link" is reported; the loop then checks the interfaces it cares about by name, which keeps
//! this free of attribute parsing and robust against missed messages (ENOBUFS on overrun).

use super::cvt;
use std::io;
use std::mem::{size_of, zeroed};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

pub struct LinkWatch {
    fd: OwnedFd,
}

impl LinkWatch {
    /// A non-blocking NETLINK_ROUTE socket subscribed to link events.
    pub fn open() -> io::Result<LinkWatch> {
        // SAFETY: socket() has no memory-safety preconditions.
        let fd = cvt(unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, libc::NETLINK_ROUTE) })?;
        // SAFETY: fd is fresh and owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_nl is plain old data; all-zero is valid.
        let mut sa: libc::sockaddr_nl = unsafe { zeroed() };
        sa.nl_family = libc::AF_NETLINK as u16;
        sa.nl_groups = libc::RTMGRP_LINK as u32;
        // SAFETY: sa is a valid sockaddr_nl and its exact size is passed.
        cvt(unsafe { libc::bind(fd.as_raw_fd(), (&sa as *const libc::sockaddr_nl).cast(), size_of::<libc::sockaddr_nl>() as u32) })?;
        Ok(LinkWatch { fd })
    }

    /// Reads every pending message; true if any was a link message (or messages were lost, in
    /// which case the caller must assume something changed).
    pub fn drain(&self) -> bool {
        let mut buf = [0u8; 8192];
        let mut seen = false;
        loop {
            // SAFETY: buf is valid for writes of its length for the duration of the call.
            let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EINTR) => continue,
                    Some(libc::ENOBUFS) => {
                        seen = true;
                        continue;
                    }
                    _ => return seen,
                }
            }
            if n == 0 {
                return seen;
            }
            seen |= has_link_message(&buf[..n as usize]);
        }
    }
}

/// Walks the netlink messages in `b` (each starts with an `nlmsghdr`).
fn has_link_message(b: &[u8]) -> bool {
    let hl = size_of::<libc::nlmsghdr>();
    let mut off = 0;
    while off + hl <= b.len() {
        let len = u32::from_ne_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]]) as usize;
        let ty = u16::from_ne_bytes([b[off + 4], b[off + 5]]);
        if ty == libc::RTM_NEWLINK || ty == libc::RTM_DELLINK {
            return true;
        }
        if len < hl {
            break;
        }
        off += (len + 3) & !3;
    }
    false
}

impl AsRawFd for LinkWatch {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_link_messages() {
        // Two messages: RTM_NEWADDR (20), then RTM_DELLINK (17).
        let mut b = Vec::new();
        for ty in [20u16, 17] {
            b.extend_from_slice(&20u32.to_ne_bytes());
            b.extend_from_slice(&ty.to_ne_bytes());
            b.extend_from_slice(&[0; 10]);
            b.extend_from_slice(&[0; 4]);
        }
        assert!(has_link_message(&b));
        assert!(!has_link_message(&b[..20]));
        assert!(!has_link_message(&[0xff; 7]));
        // A zero length must not loop forever.
        assert!(!has_link_message(&[0u8; 40]));
    }
}
