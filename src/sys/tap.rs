//! Tap devices opened with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR and offloads on.
//!
//! Why our own ioctls and not a crate: tun-tap has no IFF_VNET_HDR/libc::TUNSETOFFLOAD; tun-rs has
//! them but its offload path and GSO helpers are written for L3 TUN devices, while vrouter's
//! ports are L2 taps that must pass virtio_net_hdr through untouched. The whole interface is
//! four ioctls.
//!
//! A tap that did not exist before `open` is non-persistent: the kernel removes it when the fd
//! closes, so vrouter's taps disappear on exit (kill -9 included).

use super::{cvt, ifreq, netif};
use crate::wire::vnet;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

pub struct Tap {
    fd: OwnedFd,
    name: String,
    /// vrouter created the device (it goes away with the fd).
    pub created: bool,
    /// UDP segmentation offload was accepted by the kernel.
    pub uso: bool,
}

impl Tap {
    /// Creates the tap `name`, or attaches to an existing persistent one, non-blocking, with
    /// vnet headers and offloads, and brings it up. A tap vrouter creates gets `mac` (the
    /// guest's) before it goes up, so the kernel side never speaks with another address.
    pub fn open(name: &str, mac: Option<crate::wire::ethernet::MacAddr>) -> io::Result<Tap> {
        let created = netif::index(name).is_none();
        // SAFETY: the path is a valid C string literal; flags are plain ints.
        let fd = cvt(unsafe {
            libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC)
        })?;
        // SAFETY: fd was just returned by open() and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut req = ifreq(name)?;
        req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
        // SAFETY: libc::TUNSETIFF reads (and writes back the name into) the ifreq we own.
        cvt(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req) }).map_err(|e| {
            io::Error::new(e.kind(), format!("libc::TUNSETIFF {name}: {e} (is it in use, or not a tap?)"))
        })?;
        let sz: libc::c_int = vnet::HDR_LEN as libc::c_int;
        // SAFETY: libc::TUNSETVNETHDRSZ reads an int through the pointer, which is valid.
        cvt(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETVNETHDRSZ, &sz) })?;
        let base = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | libc::TUN_F_TSO_ECN;
        // USO needs Linux 6.2; fall back without it.
        // SAFETY: libc::TUNSETOFFLOAD takes the flags by value.
        let uso = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETOFFLOAD, (base | libc::TUN_F_USO4 | libc::TUN_F_USO6) as libc::c_ulong) } == 0;
        if !uso {
            // SAFETY: as above.
            cvt(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETOFFLOAD, base as libc::c_ulong) })?;
        }
        if let (Some(m), true) = (mac, created) {
            netif::set_mac(name, m)?;
        }
        netif::set_up(name, false)?;
        Ok(Tap { fd, name: name.to_string(), created, uso })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether vrouter created this tap (rather than attaching to an existing one).
    pub fn created(&self) -> bool {
        self.created
    }

    /// Gives the tap's kernel side (the guest's NIC) a new MAC, through the tap's own fd: this
    /// works wherever that side lives now (a guest's namespace), where its name is not visible.
    pub fn set_mac(&self, mac: crate::wire::ethernet::MacAddr) -> io::Result<()> {
        let mut req = ifreq(&self.name)?;
        // SAFETY: writing the sockaddr member of the union we own; ARPHRD_ETHER tells the kernel
        // the first six bytes of sa_data are the MAC.
        unsafe {
            req.ifr_ifru.ifru_hwaddr.sa_family = libc::ARPHRD_ETHER;
            for (d, s) in req.ifr_ifru.ifru_hwaddr.sa_data.iter_mut().zip(mac.0) {
                *d = s as libc::c_char;
            }
        }
        // SAFETY: the tun driver's SIOCSIFHWADDR reads the ifreq we own.
        cvt(unsafe { libc::ioctl(self.fd.as_raw_fd(), libc::SIOCSIFHWADDR, &req) })?;
        Ok(())
    }

    /// Whether the fd is still attached to a device: once the tap is deleted (`ip link del`,
    /// in whatever namespace its kernel side lives), the kernel answers EBADFD.
    pub fn attached(&self) -> bool {
        let Ok(mut req) = ifreq(&self.name) else { return true };
        // SAFETY: TUNGETIFF writes the device's name and flags into the ifreq we own.
        let r = unsafe { libc::ioctl(self.fd.as_raw_fd(), libc::TUNGETIFF, &mut req) };
        !(r < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EBADFD))
    }

    /// Reads one frame (with its vnet header) into `buf`.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: buf is valid for writes of buf.len() bytes for the duration of the call.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// Writes one frame behind its vnet header.
    pub fn send(&self, hdr: &[u8; vnet::HDR_LEN], frame: &[u8]) -> io::Result<()> {
        super::packet::writev2(self.fd.as_raw_fd(), hdr, frame)
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}
