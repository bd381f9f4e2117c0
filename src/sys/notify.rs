//! systemd's notification protocol (sd_notify(3)) without libsystemd: datagrams such as
//! `READY=1`, `STOPPING=1` and `WATCHDOG=1` to the socket named in `$NOTIFY_SOCKET` (a path,
//! or an abstract name after `@`). Without the variable every call is a no-op, so vrouter runs
//! the same under systemd, another supervisor or a shell.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
    /// Half of `$WATCHDOG_USEC` when the watchdog is for this process.
    watchdog: Option<Duration>,
}

impl Notifier {
    /// From the environment (`NOTIFY_SOCKET`, `WATCHDOG_USEC`, `WATCHDOG_PID`).
    pub fn from_env() -> Notifier {
        let target = std::env::var_os("NOTIFY_SOCKET").and_then(|p| {
            let p = p.to_string_lossy().into_owned();
            let addr = match p.strip_prefix('@') {
                Some(abs) => SocketAddr::from_abstract_name(abs.as_bytes()).ok()?,
                None => SocketAddr::from_pathname(&p).ok()?,
            };
            Some((UnixDatagram::unbound().ok()?, addr))
        });
        let ours = std::env::var("WATCHDOG_PID").ok().is_none_or(|p| p.trim() == std::process::id().to_string());
        let watchdog = std::env::var("WATCHDOG_USEC").ok().and_then(|u| u.trim().parse::<u64>().ok()).filter(|u| *u > 0 && ours).map(|u| Duration::from_micros(u / 2));
        Notifier { target, watchdog }
    }

    /// Sends `msg` (newline-separated assignments); errors are logged, never fatal.
    pub fn notify(&self, msg: &str) {
        if let Some((s, addr)) = &self.target {
            if let Err(e) = s.send_to_addr(msg.as_bytes(), addr) {
                tracing::debug!("sd_notify {msg:?}: {e}");
            }
        }
    }

    /// How often to send `WATCHDOG=1`, if systemd watches this process.
    pub fn watchdog_every(&self) -> Option<Duration> {
        self.watchdog
    }
}
