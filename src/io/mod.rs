//! The I/O edge: opens the ports, runs the mio poll loop, reads frames into pooled buffers,
//! hands them to the pure datapath with the current time, writes what it returns, and answers
//! control requests between batches. Every fd is drained until WouldBlock (edge-triggered),
//! with a per-fd budget per round so one busy port cannot starve the others.

pub mod device;
pub mod latency;

use crate::buf::BufPool;
use crate::config::schema::{Config, IfKind};
use crate::config::Validated;
use crate::control::{self, Envelope, Request, Response, Table};
use crate::build;
use crate::datapath::{Datapath, DatapathConfig, Transmit};
use crate::switch::stats::DropReason;
use crate::switch::PortId;
use crate::sys::{netif, packet::PacketSocket, tap::Tap};
use crate::time::Instant;
use crate::wire::ethernet::MacAddr;
use crate::wire::vnet::VnetHdr;
use device::{Device, Rx};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

/// Conntrack rows per control request.
const CONNTRACK_PAGE: usize = 4096;
/// Frames read from one fd before the loop looks at the others.
const BUDGET: usize = 256;
const SIGNAL: Token = Token(usize::MAX - 1);
const WAKE: Token = Token(usize::MAX - 2);

/// Why the daemon could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A port's device could not be opened or attached.
    #[error("port {name} ({ifname})")]
    Port { name: String, ifname: String, source: io::Error },
    /// The control socket could not be served.
    #[error(transparent)]
    Control(#[from] control::ControlError),
    /// The poll loop failed (epoll, signal pipe).
    #[error("poll loop: {0}")]
    Poll(#[from] io::Error),
}

pub use crate::build::router_mac;

/// Opens every port and builds the datapath's view of them (`build::datapath_config`, plus
/// each device's offload capability). Ports, then uplinks, then the public port.
pub fn open_ports(c: &Config) -> Result<(Vec<Device>, DatapathConfig), RunError> {
    let mut dcfg = build::datapath_config(c);
    let open = |kind: IfKind, name: &str, ifname: &str, mac: Option<MacAddr>| -> Result<Device, RunError> {
        let err = |source| RunError::Port { name: name.into(), ifname: ifname.into(), source };
        match kind {
            IfKind::Tap => {
                // The tap's kernel side is the guest NIC: it gets the guest's MAC.
                Ok(Device::Tap(Tap::open(ifname, mac).map_err(err)?))
            }
            IfKind::Netdev => {
                // An interface nobody had brought up (a fresh QEMU tap) becomes a pure L2 port:
                // no IPv6 link-local address, no host traffic. One already up is the
                // operator's: its host configuration is left alone.
                if !netif::is_up(ifname).map_err(err)? {
                    netif::disable_ipv6(ifname);
                }
                Ok(Device::Packet(PacketSocket::open(ifname, true).map_err(err)?))
            }
        }
    };
    let mut devs = Vec::new();
    for p in &c.ports {
        if !c.networks.iter().any(|n| n.name == p.network) {
            continue;
        }
        let dev = open(p.kind, &p.name, &p.ifname, p.mac)?;
        tracing::info!(port = %p.name, ifname = %p.ifname, network = %p.network, offload = dev.offload(), "guest port attached");
        devs.push(dev);
    }
    for u in &c.uplinks {
        let dev = open(u.kind, &u.name, &u.ifname, None)?;
        tracing::info!(uplink = %u.name, ifname = %u.ifname, offload = dev.offload(), "trunk attached");
        devs.push(dev);
    }
    if let Some(pb) = &c.public {
        let dev = open(pb.kind, build::PUBLIC_PORT, &pb.ifname, None)?;
        tracing::info!(ifname = %pb.ifname, ips = ?pb.ips.iter().map(|i| i.to_string()).collect::<Vec<_>>(), offload = dev.offload(), "public port attached");
        devs.push(dev);
    }
    for (spec, dev) in dcfg.ports.iter_mut().zip(&devs) {
        spec.offload = dev.offload();
    }
    Ok((devs, dcfg))
}

struct IoTx<'a> {
    devs: &'a [Device],
    write_ns: &'a mut hdrhistogram::Histogram<u64>,
}

impl Transmit for IoTx<'_> {
    fn transmit(&mut self, port: PortId, vnet: Option<&VnetHdr>, frame: &[u8]) -> Result<(), DropReason> {
        let d = self.devs.get(port.0 as usize).ok_or(DropReason::TxError)?;
        let t = std::time::Instant::now();
        let r = d.send(vnet, frame).map_err(|e| match e.raw_os_error() {
            Some(libc::EIO | libc::ENETDOWN | libc::ENXIO | libc::EBADFD | libc::ENODEV) => DropReason::PortDown,
            Some(libc::EAGAIN | libc::ENOBUFS) => DropReason::TxFull,
            _ => DropReason::TxError,
        });
        self.write_ns.saturating_record(t.elapsed().as_nanos() as u64);
        r
    }
}

/// Runs the account until SIGINT or SIGTERM.
pub fn run(v: &Validated) -> Result<(), RunError> {
    let c = &v.config;
    let (devs, dcfg) = open_ports(c)?;
    let mut dp = Datapath::new(dcfg);
    let mut poll = Poll::new()?;
    for (i, d) in devs.iter().enumerate() {
        poll.registry().register(&mut SourceFd(&d.as_raw_fd()), Token(i), Interest::READABLE)?;
    }
    // Signals arrive as bytes on a socketpair, so the loop sees them as an ordinary event.
    let (sig_rx, sig_tx) = std::os::unix::net::UnixStream::pair()?;
    sig_rx.set_nonblocking(true)?;
    for s in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::low_level::pipe::register(s, sig_tx.try_clone()?)?;
    }
    poll.registry().register(&mut SourceFd(&sig_rx.as_raw_fd()), SIGNAL, Interest::READABLE)?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKE)?);
    let (ctl_tx, inbox) = crossbeam_channel::bounded::<Envelope>(64);
    let sock = c.control_socket();
    let w = waker.clone();
    control::serve(&sock, ctl_tx, move || {
        let _ = w.wake();
    })?;
    tracing::info!(router = %c.router.name, ports = devs.len(), socket = %sock.display(), "vrouter running");

    let origin = std::time::Instant::now();
    let clock = || Instant::from_millis(origin.elapsed().as_millis() as u64);
    let mut events = Events::with_capacity(256);
    let mut ready = vec![false; devs.len()];
    let mut last_err: Vec<Option<i32>> = vec![None; devs.len()];
    let mut lat = latency::Latency::default();
    let mut pool = BufPool::new(4);
    let mut shutdown = false;
    // Sleeping in epoll costs a wakeup (an IPI, a hypervisor exit on a VM) per batch; spinning
    // a little after traffic keeps the pipeline full. Idle ports still cost nothing.
    let busy_poll = Duration::from_micros(c.router.busy_poll_us);
    let mut last_frame = std::time::Instant::now();
    while !shutdown {
        let now = clock();
        let spinning = busy_poll > Duration::ZERO && last_frame.elapsed() < busy_poll;
        let timeout = if spinning || ready.iter().any(|r| *r) {
            Duration::ZERO
        } else {
            Duration::from_millis(dp.poll_at().millis().saturating_sub(now.millis()).clamp(1, 1000))
        };
        if let Err(e) = poll.poll(&mut events, Some(timeout)) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e.into());
        }
        for ev in events.iter() {
            match ev.token() {
                SIGNAL => {
                    let mut b = [0u8; 16];
                    while (&sig_rx).read(&mut b).map(|n| n > 0).unwrap_or(false) {}
                    shutdown = true;
                }
                WAKE => {}
                Token(i) if i < ready.len() => ready[i] = true,
                _ => {}
            }
        }
        let now = clock();
        let mut buf = pool.get();
        let mut got = false;
        for (i, dev) in devs.iter().enumerate() {
            if !ready[i] {
                continue;
            }
            let port = PortId(i as u16);
            let mut tx = IoTx { devs: &devs, write_ns: &mut lat.write };
            ready[i] = false;
            let mut n = 0;
            loop {
                if n == BUDGET {
                    // Not drained yet: come back after the other fds had their turn.
                    ready[i] = true;
                    break;
                }
                n += 1;
                match dev.recv(&mut buf) {
                    Ok(Rx::Frame) => {
                        let t = std::time::Instant::now();
                        dp.process(now, port, &mut buf, &mut tx);
                        lat.frame.saturating_record(t.elapsed().as_nanos() as u64);
                        got = true;
                        last_err[i] = None;
                    }
                    Ok(Rx::Dropped(r)) => dp.count_drop(port, r),
                    Ok(Rx::Ignored) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    // Per-frame or one-shot errors (a packet socket reports ENETDOWN once, ahead
                    // of frames still queued): keep draining within the budget, or those frames
                    // would wait for a new edge. Anything else (EBADFD, ENODEV: the device is
                    // gone) stops this fd, so a dead device cannot keep the loop busy.
                    Err(e) if matches!(e.raw_os_error(), Some(libc::ENETDOWN | libc::ENOBUFS | libc::EFAULT | libc::EMSGSIZE)) => {
                        if last_err[i] != e.raw_os_error() {
                            last_err[i] = e.raw_os_error();
                            tracing::warn!(port = %dp.port_name(port), "receive: {e}");
                        }
                        // Link down or interface deleted: what was learned behind it is gone,
                        // as a physical switch flushes its table on link loss.
                        if e.raw_os_error() == Some(libc::ENETDOWN) {
                            dp.port_lost(port);
                        }
                        continue;
                    }
                    Err(e) => {
                        // Edge-triggered: a dead device wakes us once, so this cannot spin.
                        // Say it once per error kind, not per frame.
                        if last_err[i] != e.raw_os_error() {
                            last_err[i] = e.raw_os_error();
                            tracing::warn!(port = %dp.port_name(port), "receive failed: {e} (device down or removed?)");
                            // Its learned addresses point at a dead end now: flood instead.
                            dp.port_lost(port);
                        }
                        break;
                    }
                }
            }
        }
        pool.put(buf);
        if got {
            last_frame = std::time::Instant::now();
        }
        {
            let mut tx = IoTx { devs: &devs, write_ns: &mut lat.write };
            dp.poll(now, &mut tx);
        }
        while let Ok(env) = inbox.try_recv() {
            let resp = answer(&dp, &lat, &env.request, now, origin.elapsed());
            let _ = env.reply.send(resp);
        }
    }
    tracing::info!("shutting down");
    let _ = std::fs::remove_file(&sock);
    Ok(())
}

use std::io::Read;

fn answer(dp: &Datapath, lat: &latency::Latency, req: &Request, now: Instant, uptime: Duration) -> Response {
    match req {
        Request::Show { table: Table::Ports, .. } => Response::ok(dp.show_ports()),
        Request::Show { table: Table::Conntrack, offset } => {
            // One bounded page per request: a full table never stalls forwarding.
            let r = dp.router();
            let (flows, next) = r.conntrack_page(now, offset.unwrap_or(0), CONNTRACK_PAGE);
            Response::ok(serde_json::json!({"count": r.ct.len(), "max": r.ct.max(), "flows": flows, "next": next}))
        }
        Request::Show { table: Table::Fdb, .. } => Response::ok(dp.show_fdb(now)),
        Request::Show { table: Table::Stats, .. } => {
            let mut s = dp.show_stats();
            if let serde_json::Value::Object(m) = &mut s {
                m.insert("uptime_secs".into(), uptime.as_secs().into());
                m.insert("latency".into(), lat.json());
            }
            Response::ok(s)
        }
        Request::Show { table, .. } => Response::err(format!(
            "table {:?} is not built in this version (ports, fdb, conntrack and stats are)",
            serde_json::to_value(table).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
        )),
        Request::Reload => Response::err("reload is not built in this version; restart vrouter to apply a new config"),
        Request::Capture { .. } => Response::err("capture is not built in this version"),
    }
}
