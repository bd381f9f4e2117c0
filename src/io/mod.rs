//! The I/O edge: opens the ports, runs the mio poll loop, reads frames into pooled buffers,
//! hands them to the pure datapath with the current time, writes what it returns, and answers
//! control requests between batches. Every fd is drained until WouldBlock (edge-triggered),
//! with a per-fd budget per round so one busy port cannot starve the others.

pub mod device;
pub mod latency;
mod observe;
pub mod reload;
pub mod bgp;
mod coalesce;
pub mod store;
pub mod txq;

use crate::buf::BufPool;
use crate::config::schema::{Config, IfKind};
use crate::config::Validated;
use crate::control::pcapng::Dir;
use crate::control::telemetry::Published;
use crate::control::{self, Envelope, Request, Response, Table};
use crate::build;
use crate::datapath::{Datapath, DatapathConfig, Partial, Transmit};
use crate::switch::stats::DropReason;
use crate::switch::PortId;
use crate::sys::{netif, packet::PacketSocket, rtnl, tap::Tap};
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
/// How long one round over the ready ports may take before the loop looks at signals, timers
/// and control requests again.
const ROUND_TIME: Duration = Duration::from_millis(5);
/// How often the loop stamps its heartbeat (the health check calls it stalled after 3 s).
const HEARTBEAT_EVERY: Duration = Duration::from_millis(100);
const SIGNAL: Token = Token(usize::MAX - 1);
const WAKE: Token = Token(usize::MAX - 2);
const LINKS: Token = Token(usize::MAX - 3);
const VXLAN: Token = Token(usize::MAX - 4);
/// Messages (each up to 64 KiB of GRO-merged datagrams) read per `recvmmsg`.
const VXLAN_RECV_BATCH: usize = 8;
/// Outer source ports (sockets) VXLAN traffic leaves from, chosen by inner-flow hash.
const VXLAN_SEND_SOCKETS: usize = 8;
/// Upstream DNS sockets take the tokens below this one.
const DNS_UPSTREAM: usize = usize::MAX - 16;
/// Upstream DNS questions leave from this many sockets, each on its own kernel-chosen
/// (randomized) port, a different one per question: with the random DNS id, an off-path
/// spoofer must guess both (RFC 5452).
const DNS_SOCKETS: usize = 16;

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
    /// `[router] metrics_listen` could not be bound.
    #[error("metrics_listen {addr}")]
    Metrics { addr: std::net::SocketAddr, source: io::Error },
    /// The VXLAN sockets could not be opened (is `[vxlan] local` an address of this host?).
    #[error("vxlan: cannot bind {addr}")]
    Vxlan { addr: std::net::SocketAddrV4, source: io::Error },
    /// The state directory (DHCP leases) could not be used.
    #[error(transparent)]
    Store(#[from] store::StoreError),
}

pub use crate::build::router_mac;

/// How to (re)open one port's device: enough to attach it again after its interface came back.
#[derive(Debug, Clone, PartialEq)]
pub struct PortOpen {
    pub kind: IfKind,
    pub name: String,
    pub ifname: String,
    /// The guest's MAC, given to a tap vrouter creates.
    pub mac: Option<MacAddr>,
    /// The interface is the one with this MAC (`match_mac`), whatever its name.
    pub match_mac: Option<MacAddr>,
}

impl PortOpen {
    /// The interface's name now: `ifname`, or the one that has `match_mac` (`None`: no
    /// interface has it at the moment).
    pub fn current_ifname(&self) -> Option<String> {
        match self.match_mac {
            Some(m) => netif::name_by_mac(m),
            None => Some(self.ifname.clone()),
        }
    }
}

/// The device of each port slot (`None`: a vacant slot or a VXLAN peer, which has none).
pub fn port_opens(c: &Config, ids: &build::Numbering) -> Vec<Option<PortOpen>> {
    let mut v: Vec<Option<PortOpen>> = vec![None; ids.ports.len()];
    let mut put = |o: PortOpen| {
        if let Some(p) = ids.port(&o.name) {
            v[p.0 as usize] = Some(o);
        }
    };
    for p in c.ports.iter().filter(|p| p.kind != IfKind::Remote && c.networks.iter().any(|n| n.name == p.network)) {
        put(PortOpen { kind: p.kind, name: p.name.clone(), ifname: p.ifname.clone(), mac: p.mac, match_mac: p.match_mac });
    }
    for u in &c.uplinks {
        put(PortOpen { kind: u.kind, name: u.name.clone(), ifname: u.ifname.clone(), mac: None, match_mac: u.match_mac });
    }
    if let Some(pb) = &c.public {
        put(PortOpen { kind: pb.kind, name: build::PUBLIC_PORT.into(), ifname: pb.ifname.clone(), mac: None, match_mac: pb.match_mac });
    }
    v
}

/// Opens one port's device.
pub fn open_device(o: &PortOpen) -> Result<Device, RunError> {
    let shown = o.match_mac.map_or_else(|| o.ifname.clone(), |m| format!("match_mac {m}"));
    let err = |source| RunError::Port { name: o.name.clone(), ifname: shown.clone(), source };
    let ifname = o.current_ifname().ok_or_else(|| err(io::Error::new(io::ErrorKind::NotFound, "no interface has this MAC address")))?;
    match o.kind {
        // The tap's kernel side is the guest NIC: it gets the guest's MAC.
        IfKind::Tap => Ok(Box::new(Tap::open(&ifname, o.mac).map_err(err)?)),
        IfKind::Remote => Err(err(io::Error::new(io::ErrorKind::InvalidInput, "a remote port has no device"))),
        IfKind::Netdev => {
            // An interface nobody had brought up (a fresh QEMU tap) becomes a pure L2 port: no
            // IPv6 link-local address, no host traffic. One already up is the operator's: its
            // host configuration is left alone.
            if !netif::is_up(&ifname).map_err(err)? {
                netif::disable_ipv6(&ifname);
            }
            Ok(Box::new(PacketSocket::open(&ifname, true).map_err(err)?))
        }
    }
}

/// Opens every port and builds the datapath's view of them (`build::datapath_config`, plus
/// each device's offload capability), by slot.
pub fn open_ports(c: &Config, ids: &build::Numbering) -> Result<(Vec<Option<Device>>, DatapathConfig), RunError> {
    let mut dcfg = build::datapath_config(c, ids);
    let mut devs = Vec::new();
    for o in port_opens(c, ids) {
        let Some(o) = o else {
            devs.push(None);
            continue;
        };
        let dev = open_device(&o)?;
        let ifname = o.current_ifname().unwrap_or_default();
        tracing::info!(port = %o.name, %ifname, mac = ?o.match_mac, kind = build::kind_name(o.kind), offload = ?dev.offload().names(), "port attached");
        devs.push(Some(dev));
    }
    for (spec, dev) in dcfg.ports.iter_mut().zip(&devs) {
        if let Some(d) = dev {
            spec.offload = d.offload();
        }
    }
    Ok((devs, dcfg))
}

/// One port at the I/O edge: its device while attached, and how to attach it again.
struct Slot {
    /// `None`: a vacant slot or a VXLAN peer (no device).
    open: Option<PortOpen>,
    dev: Option<Device>,
    /// Interface index the device is bound to (a new index under the same name is a new
    /// interface: the old one was deleted).
    ifindex: Option<u32>,
    /// When the interface went away (for the log and `show ports`).
    lost_at: Option<std::time::Instant>,
    last_err: Option<i32>,
    /// The device cannot be reopened with offloads matching the datapath's port (it was
    /// offload-capable before): kept waiting rather than attached inconsistently.
    offload: crate::wire::vnet::Offloads,
}

impl Slot {
    fn state(&self) -> &'static str {
        if self.dev.is_some() {
            "up"
        } else {
            "waiting"
        }
    }
}

/// One frame in this many has its latency measured (and counted this many times).
const SAMPLE_EVERY: u32 = 16;

struct IoTx<'a> {
    slots: &'a [Slot],
    lat: &'a mut latency::Latency,
    /// Time this frame's writes (one frame in SAMPLE_EVERY, each sample counted that many
    /// times): the clock costs as much as a small frame's pipeline stage, so not every frame.
    sample: bool,
    vx: Option<&'a VxIo>,
    /// Capture sessions: the egress seam records what left.
    hub: &'a crate::control::capture::Hub,
    /// Small frames wait here for the end of the port's turn when `batch`; otherwise (and for
    /// super-frames) what waits is written first, then the frame.
    q: &'a mut txq::TxQueue,
    batch: bool,
}

impl IoTx<'_> {
    fn flush(&mut self) {
        write_queued(self.slots, self.q, self.lat);
    }
}

/// VXLAN at the I/O edge: the socket datagrams arrive on (the configured port), the sockets
/// they leave from, and each peer port's address.
struct VxIo {
    rx: crate::sys::udp::Udp,
    tx: Vec<crate::sys::udp::Udp>,
    /// Each port slot's peer address (`None`: not a VXLAN peer).
    peers: Vec<Option<std::net::SocketAddrV4>>,
    /// What the sockets were opened with (a reload that changes it opens new ones).
    opened: (std::net::Ipv4Addr, u16, u8, bool),
}

impl VxIo {
    fn key(v: &crate::config::schema::Vxlan) -> (std::net::Ipv4Addr, u16, u8, bool) {
        (v.local, v.port.unwrap_or(crate::wire::vxlan::PORT), v.ttl.unwrap_or(64), v.df.unwrap_or(false))
    }

    fn set_peers(&mut self, v: &crate::config::schema::Vxlan, ids: &build::Numbering) {
        let port = v.port.unwrap_or(crate::wire::vxlan::PORT);
        self.peers = vec![None; ids.ports.len()];
        for p in &v.peer {
            if let Some(id) = ids.port(&build::vtep_name(p.remote)) {
                self.peers[id.0 as usize] = Some(std::net::SocketAddrV4::new(p.remote, port));
            }
        }
    }

    /// The slot of the peer at `ip`.
    fn peer_port(&self, ip: &std::net::Ipv4Addr) -> Option<PortId> {
        self.peers.iter().position(|p| p.is_some_and(|p| p.ip() == ip)).map(|i| PortId(i as u16))
    }

    fn open(v: &crate::config::schema::Vxlan, ids: &build::Numbering) -> Result<VxIo, RunError> {
        use std::net::SocketAddrV4;
        let port = v.port.unwrap_or(crate::wire::vxlan::PORT);
        let (ttl, df) = (v.ttl.unwrap_or(64), v.df.unwrap_or(false));
        let bind = |addr: SocketAddrV4, gro| crate::sys::udp::Udp::bind(addr, ttl, df, gro).map_err(|source| RunError::Vxlan { addr, source });
        let rx = bind(SocketAddrV4::new(v.local, port), true)?;
        let tx = (0..VXLAN_SEND_SOCKETS).map(|_| bind(SocketAddrV4::new(v.local, 0), false)).collect::<Result<Vec<_>, _>>()?;
        let mut vx = VxIo { rx, tx, peers: Vec::new(), opened: Self::key(v) };
        vx.set_peers(v, ids);
        Ok(vx)
    }
}

impl Transmit for IoTx<'_> {
    fn transmit(&mut self, port: PortId, vnet: Option<&VnetHdr>, frame: &[u8]) -> Result<(), DropReason> {
        let d = self.slots.get(port.0 as usize).ok_or(DropReason::TxError)?.dev.as_ref().ok_or(DropReason::PortDown)?;
        if self.hub.any() {
            self.hub.record(port, Dir::Out, vnet, frame);
        }
        if self.batch && self.q.push(port, d, vnet, frame) {
            return Ok(());
        }
        self.flush();
        if self.batch && self.q.push(port, d, vnet, frame) {
            return Ok(());
        }
        let t = self.sample.then(std::time::Instant::now);
        let r = d.send(vnet, frame).map_err(|e| txq::reason(&e));
        if let Some(t) = t {
            self.lat.write.saturating_record_n(t.elapsed().as_nanos() as u64, SAMPLE_EVERY as u64);
        }
        r
    }

    fn transmit_udp(&mut self, port: PortId, entropy: u16, payload: &[u8], seg: Option<usize>) -> Result<(), Partial> {
        let none = Partial { reason: DropReason::TxError, sent: 0 };
        let vx = self.vx.ok_or(none)?;
        let to = vx.peers.get(port.0 as usize).copied().flatten().ok_or(none)?;
        let sock = &vx.tx[entropy as usize % vx.tx.len()];
        if self.hub.any() {
            // The peer's port shows the inner frames.
            for d in payload.chunks(seg.unwrap_or(payload.len()).max(1)) {
                self.hub.record(port, Dir::Out, None, d.get(crate::wire::vxlan::HEADER_LEN..).unwrap_or_default());
            }
        }
        let t = std::time::Instant::now();
        let r = match seg {
            Some(seg) => sock.send_batch(payload, seg, to),
            None => sock.send_to(payload, to).map_err(|e| (e, 0)),
        };
        self.lat.write.saturating_record(t.elapsed().as_nanos() as u64);
        r.map_err(|(e, sent)| Partial {
            reason: match e.raw_os_error() {
                Some(libc::EAGAIN | libc::ENOBUFS) => DropReason::TxFull,
                Some(libc::ENETUNREACH | libc::EHOSTUNREACH | libc::ENETDOWN) => DropReason::PortDown,
                _ => DropReason::TxError,
            },
            sent,
        })
    }
}

/// The queue of small frames, writing to taps through io_uring when `uring` and the kernel
/// lets it (which `lat` reports).
fn tx_queue(uring: bool, lat: &mut latency::Latency) -> txq::TxQueue {
    let (q, refused) = txq::TxQueue::new(uring);
    match refused {
        Some(e) => tracing::warn!("io_uring refused ({e}): taps are written one frame per write"),
        None => tracing::info!(io_uring = q.uring(), "tap writes"),
    }
    lat.tap_io = if q.uring() { "io_uring" } else { "write" };
    q
}

/// Writes what the port's turn queued and moves the frames whose write failed (then or
/// earlier in the turn) from sent to dropped.
fn flush_tx(slots: &[Slot], q: &mut txq::TxQueue, lat: &mut latency::Latency, dp: &mut Datapath) {
    write_queued(slots, q, lat);
    for (p, r, bytes) in q.failed.drain(..) {
        dp.tx_failed(p, r, bytes);
    }
}

/// Writes what is queued; the time per frame goes to the write histogram.
fn write_queued(slots: &[Slot], q: &mut txq::TxQueue, lat: &mut latency::Latency) {
    if q.is_empty() {
        return;
    }
    // One burst in SAMPLE_EVERY is timed (two clock reads), counted for all of them.
    let t = lat.bursts.is_multiple_of(SAMPLE_EVERY).then(std::time::Instant::now);
    lat.bursts = lat.bursts.wrapping_add(1);
    let n = q.flush(|p| slots.get(p.0 as usize).and_then(|s| s.dev.as_ref()));
    if n > 0 {
        if let Some(t) = t {
            lat.write.saturating_record_n(t.elapsed().as_nanos() as u64 / n as u64, n as u64 * SAMPLE_EVERY as u64);
        }
        lat.burst.saturating_record(n as u64);
    }
}

/// Errors after which a device's fd is useless: the interface was deleted.
fn gone(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EBADFD | libc::ENODEV | libc::ENXIO))
}

/// Detaches a port whose interface disappeared; forwarding for everyone else goes on.
fn detach(poll: &Poll, slots: &mut [Slot], i: usize, dp: &mut Datapath, why: &str) {
    let s = &mut slots[i];
    if let Some(d) = s.dev.take() {
        let _ = poll.registry().deregister(&mut SourceFd(&d.as_raw_fd()));
        s.lost_at = Some(std::time::Instant::now());
        s.ifindex = None;
        dp.port_lost(PortId(i as u16));
        if let Some(o) = &s.open {
            tracing::warn!(port = %o.name, ifname = %o.ifname, "{why}; waiting for the interface to come back");
        }
    }
}

/// Compares every port with the interfaces present now: detaches ports whose interface is gone
/// (or was replaced under the same name) and reattaches waiting ports whose interface is back.
/// A `tap` port is recreated by vrouter itself. Returns true if a port is still waiting.
fn check_links(poll: &Poll, slots: &mut [Slot], dp: &mut Datapath) -> bool {
    let mut waiting = false;
    for i in 0..slots.len() {
        let Some(open) = slots[i].open.clone() else { continue };
        let now_index = open.current_ifname().and_then(|n| netif::index(&n));
        if slots[i].dev.is_some() {
            // A tap's kernel side usually lives in the guest's namespace, where its name is not
            // visible from here: a deleted tap shows itself by failing reads (EBADFD) instead.
            let deleted = match open.kind {
                IfKind::Netdev => now_index != slots[i].ifindex,
                IfKind::Tap | IfKind::Remote => !slots[i].dev.as_ref().is_some_and(|d| d.attached()),
            };
            if deleted {
                detach(poll, slots, i, dp, "interface deleted");
            } else {
                continue;
            }
        }
        let s = &mut slots[i];
        if open.kind == IfKind::Netdev && now_index.is_none() {
            waiting = true;
            continue;
        }
        match open_device(&open) {
            Ok(d) if d.offload() == s.offload => {
                if let Err(e) = poll.registry().register(&mut SourceFd(&d.as_raw_fd()), Token(i), Interest::READABLE) {
                    tracing::warn!(port = %open.name, "cannot watch the reattached device: {e}");
                    waiting = true;
                    continue;
                }
                let after = s.lost_at.take().map(|t| t.elapsed().as_millis()).unwrap_or(0);
                s.ifindex = now_index;
                s.last_err = None;
                s.dev = Some(d);
                let how = if open.kind == IfKind::Tap { "tap recreated" } else { "interface back" };
                tracing::info!(port = %open.name, ifname = %open.ifname, waited_ms = after as u64, "{how}; port reattached");
            }
            Ok(_) => {
                if s.last_err != Some(-1) {
                    s.last_err = Some(-1);
                    tracing::warn!(port = %open.name, "the new interface offers different offloads; not reattached");
                }
                waiting = true;
            }
            Err(e) => {
                tracing::debug!(port = %open.name, "reattach failed: {e}");
                waiting = true;
            }
        }
    }
    waiting
}

/// The lease log's writer: where records go, and its reports.
type LeaseWriter = (store::Batches, crossbeam_channel::Receiver<store::StoreEvent>);

/// Opens the lease log in the state directory, replays it into the router, compacts it and
/// starts its writer (at start, or when a reload turns DHCP on).
fn start_leases(c: &Config, dp: &mut Datapath, now: Instant, waker: &Arc<Waker>) -> Result<LeaseWriter, RunError> {
    let dir = c.state_dir();
    let log = store::LeaseLog::new(&dir)?;
    let lines = log.read()?;
    let n = dp.router_mut().restore_leases(now, &lines);
    // Compact: only the live leases, written atomically (and by network name).
    let live = dp.router().lease_records();
    // A full or failing disk must not keep the router from starting: the old log stays
    // (replayed above) and the writer reports the failure when it first cannot append.
    if let Err(e) = log.rewrite(live.iter().map(|l| l.line.as_str())) {
        tracing::error!("lease log compaction at start failed, keeping the log as it is: {e}");
    }
    tracing::info!(path = %log.path().display(), records = n, "DHCP leases restored");
    let w = waker.clone();
    Ok(log.spawn_writer(live, store::WriterOpts::default(), move || {
        let _ = w.wake();
    })?)
}

/// Opens the sockets upstream DNS questions leave from.
fn open_dns_sockets(poll: &Poll) -> io::Result<Vec<mio::net::UdpSocket>> {
    let mut socks = Vec::new();
    for i in 0..DNS_SOCKETS {
        let mut s = mio::net::UdpSocket::bind("0.0.0.0:0".parse().expect("socket address"))?;
        poll.registry().register(&mut s, Token(DNS_UPSTREAM - i), Interest::READABLE)?;
        socks.push(s);
    }
    Ok(socks)
}

/// Runs the account until SIGINT or SIGTERM.
/// `control_serial`: a virtio-serial port to serve the control protocol on too.
pub fn run(v: &Validated, control_serial: Option<&std::path::Path>) -> Result<(), RunError> {
    let applier = Arc::new(control::reload::Applier::new(v.config.clone(), v.hash.clone(), v.path.clone()));
    let ids = applier.ids();
    let mut config = v.config.clone();
    let c = &config;
    let (devs, mut dcfg) = open_ports(c, &ids)?;
    // One seed from the kernel keys every random choice (NAT ports, DNS ids, TCP ISNs).
    let mut rng = crate::entropy::Csprng::new(crate::entropy::os_seed()?);
    dcfg.l3.seed = rng.child();
    let offloads: Vec<crate::wire::vnet::Offloads> = dcfg.ports.iter().map(|p| p.offload).collect();
    let mut dp = Datapath::new(dcfg);
    dp.set_flow_cache(c.router.flow_cache);
    let origin = std::time::Instant::now();
    let clock = || Instant::from_millis(origin.elapsed().as_millis() as u64);
    // Services: DHCP (leases on the wall clock, persisted in state_dir) and DNS.
    let (dhcp, dhcp_nets, dns) = build::services(c, &ids).servers();
    let has_dhcp = dhcp.is_some();
    let has_dns = dns.is_some();
    let unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    dp.router_mut().set_wall_base(unix);
    dp.router_mut().set_services(dhcp, dhcp_nets, dns);
    dp.router_mut().set_metadata(crate::router::meta::MetaSvc::new(c.router.metadata, build::metadata(c, &ids), rng.child()));
    let mut poll = Poll::new()?;
    let mut slots: Vec<Slot> = port_opens(c, &ids)
        .into_iter()
        .zip(devs)
        .zip(offloads)
        .map(|((open, dev), offload)| Slot { ifindex: open.as_ref().and_then(|o| netif::index(&o.current_ifname()?)), open, dev, lost_at: None, last_err: None, offload })
        .collect();
    for (i, s) in slots.iter().enumerate() {
        if let Some(d) = &s.dev {
            poll.registry().register(&mut SourceFd(&d.as_raw_fd()), Token(i), Interest::READABLE)?;
        }
    }
    let mut vx = match &c.vxlan {
        Some(v) => {
            let vx = VxIo::open(v, &ids)?;
            poll.registry().register(&mut SourceFd(&vx.rx.as_raw_fd()), VXLAN, Interest::READABLE)?;
            tracing::info!(local = %v.local, port = v.port.unwrap_or(crate::wire::vxlan::PORT), peers = v.peer.len(), gro = vx.rx.gro, "VXLAN up");
            Some(vx)
        }
        None => None,
    };
    let mut vx_ready = false;
    let mut vx_batch = crate::sys::udp::RecvBatch::new(VXLAN_RECV_BATCH);
    // Interfaces that vanish (a VM powered off, its tap deleted) and return are noticed through
    // rtnetlink; a periodic check backs it up.
    let links = match rtnl::LinkWatch::open() {
        Ok(l) => {
            poll.registry().register(&mut SourceFd(&l.as_raw_fd()), LINKS, Interest::READABLE)?;
            Some(l)
        }
        Err(e) => {
            tracing::warn!("no rtnetlink link notifications ({e}); checking interfaces every second");
            None
        }
    };
    // Signals arrive as bytes on a socketpair, so the loop sees them as an ordinary event.
    let (sig_rx, sig_tx) = std::os::unix::net::UnixStream::pair()?;
    sig_rx.set_nonblocking(true)?;
    for s in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::low_level::pipe::register(s, sig_tx.try_clone()?)?;
    }
    poll.registry().register(&mut SourceFd(&sig_rx.as_raw_fd()), SIGNAL, Interest::READABLE)?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKE)?);
    let (ctl_tx, inbox) = crossbeam_channel::bounded::<Envelope>(64);
    // BGP EVPN: a thread of its own; VTEPs it learns come back as staged changes.
    let bgp_tx = ctl_tx.clone();
    let mut bgp = start_bgp(c, origin, &applier, &bgp_tx, &waker)?;
    let mut bgp_spec = build::bgp_spec(c);
    let mut evpn = EvpnNets::of(c, &dp);
    let mut next_evpn = std::time::Instant::now();
    let sock = c.control_socket();
    let w = waker.clone();
    let heartbeat: observe::Heartbeat = Arc::new(std::sync::atomic::AtomicU64::new(observe::unix_ms()));
    let w2 = waker.clone();
    control::reload::on_sighup(applier.clone(), ctl_tx.clone(), move || {
        let _ = w2.wake();
    })?;
    if let Some(port) = control_serial {
        let w3 = waker.clone();
        control::serve_serial(
            port,
            ctl_tx.clone(),
            move || {
                let _ = w3.wake();
            },
            heartbeat.clone(),
            applier.clone(),
        )?;
    }
    control::serve(
        &sock,
        ctl_tx,
        move || {
            let _ = w.wake();
        },
        heartbeat.clone(),
        applier.clone(),
    )?;
    let mut cfg_state = observe::ConfigState {
        path: v.path.clone(),
        hash: v.hash.clone(),
        loaded_unix: unix,
        reloads: 0,
        full_percent: c.router.health_full_percent,
        seen: std::cell::Cell::new(None),
    };
    // The metrics endpoint reads what the loop publishes once a second.
    let metrics_at = c.router.metrics_listen;
    let state_dir_at = c.state_dir();
    let published: Option<Published> = match c.router.metrics_listen {
        Some(addr) => {
            let p: Published = Arc::new(std::sync::Mutex::new(Arc::new(crate::control::telemetry::Telemetry::default())));
            let bound = crate::control::metrics::serve(addr, p.clone()).map_err(|source| RunError::Metrics { addr, source })?;
            tracing::info!(%bound, "metrics endpoint up");
            Some(p)
        }
        None => None,
    };
    let mut next_publish = std::time::Instant::now();
    let mut hub = crate::control::capture::Hub::default();
    // The lease writer thread: group commit, then a wake-up with the highest durable seq.
    let mut leases = if has_dhcp { Some(start_leases(c, &mut dp, clock(), &waker)?) } else { None };
    // DNS questions for upstream servers leave from UDP sockets of vrouter's own.
    let mut dns_socks = if has_dns { open_dns_sockets(&poll)? } else { Vec::new() };
    let mut dns_ready = vec![false; dns_socks.len()];
    tracing::info!(router = %c.router.name, ports = slots.len(), socket = %sock.display(), dhcp = has_dhcp, dns = has_dns, "vrouter running");
    // Under systemd (Type=notify): ready now; the watchdog is fed from the loop, so a stalled
    // loop gets the service restarted.
    let notifier = crate::sys::notify::Notifier::from_env();
    notifier.notify(&format!("READY=1\nSTATUS=forwarding for {} ports\nMAINPID={}", slots.len(), std::process::id()));
    let mut next_watchdog = std::time::Instant::now();

    let mut events = Events::with_capacity(256);
    let mut ready = vec![false; slots.len()];
    let mut lat = latency::Latency::default();
    let mut pool = BufPool::new(4);
    let mut shutdown = false;
    let mut check = false;
    let mut waiting = false;
    let mut last_check = std::time::Instant::now();
    let mut dns_buf = vec![0u8; 65_536];
    // Sleeping in epoll costs a wakeup (an IPI, a hypervisor exit on a VM) per batch; spinning
    // a little after traffic keeps the pipeline full. Idle ports still cost nothing.
    let mut busy_poll = Duration::from_micros(c.router.busy_poll_us);
    let mut last_frame = std::time::Instant::now();
    // Frames received from ports, for sampling their latency.
    let mut frames: u32 = 0;
    let mut next_port = 0usize;
    let mut txq = tx_queue(c.router.io_uring, &mut lat);
    // The clock is read once a turn, after the poll (`wall`); the timers of the turn's start
    // use that reading, a few microseconds old. Read where each needed it, it was half a dozen
    // vDSO calls a turn, a frame or two under load (4% of the loop's time in a 64-byte flood).
    let mut wall = std::time::Instant::now();
    let at = |w: std::time::Instant| Instant::from_millis(w.duration_since(origin).as_millis() as u64);
    let mut next_beat = wall;
    // Frames taken in the last turn, and whether input has been continuous (io::coalesce).
    let mut taken: u32 = 0;
    let mut coalesce = coalesce::Coalesce::new(Duration::from_micros(c.router.coalesce_us), wall);
    while !shutdown {
        let now = at(wall);
        if wall >= next_beat {
            next_beat = wall + HEARTBEAT_EVERY;
            heartbeat.store(observe::unix_ms(), std::sync::atomic::Ordering::Relaxed);
        }
        if let Some(every) = notifier.watchdog_every() {
            if wall >= next_watchdog {
                notifier.notify("WATCHDOG=1");
                next_watchdog = wall + every;
            }
        }
        if let Some(p) = &published {
            if wall >= next_publish {
                next_publish = wall + Duration::from_secs(1);
                let mut t = observe::telemetry(&mut dp, &slots, now, &cfg_state, &heartbeat, &lat, &config.router.name, unix, config.router.mac_table_size);
                t.bgp = bgp.as_ref().and_then(|b| b.shared.snapshot.lock().ok().and_then(|s| s.clone()));
                if let Ok(mut g) = p.lock() {
                    *g = Arc::new(t);
                }
            }
        }
        // Continuous small-UDP input, every port drained: let the next frames gather, then take
        // them as one burst.
        if let Some(p) = coalesce.pause(taken).filter(|_| !vx_ready && !ready.iter().any(|r| *r)) {
            lat.rx_pauses += 1;
            std::thread::sleep(p);
        }
        let spinning = busy_poll > Duration::ZERO && wall.duration_since(last_frame) < busy_poll;
        let timeout = if spinning || ready.iter().any(|r| *r) {
            Duration::ZERO
        } else {
            // About to sleep: the deadline from a fresh reading.
            Duration::from_millis(dp.poll_at().millis().saturating_sub(clock().millis()).clamp(1, 1000))
        };
        if let Err(e) = poll.poll(&mut events, Some(timeout)) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e.into());
        }
        wall = std::time::Instant::now();
        for ev in events.iter() {
            match ev.token() {
                SIGNAL => {
                    let mut b = [0u8; 16];
                    while (&sig_rx).read(&mut b).map(|n| n > 0).unwrap_or(false) {}
                    shutdown = true;
                }
                WAKE => {}
                Token(t) if t <= DNS_UPSTREAM && DNS_UPSTREAM - t < dns_ready.len() => dns_ready[DNS_UPSTREAM - t] = true,
                LINKS => check |= links.as_ref().is_some_and(|l| l.drain()),
                VXLAN => vx_ready = true,
                Token(i) if i < ready.len() => ready[i] = true,
                _ => {}
            }
        }
        if check || ((waiting || links.is_none()) && last_check.elapsed() >= Duration::from_secs(1)) {
            check = false;
            last_check = std::time::Instant::now();
            waiting = check_links(&poll, &mut slots, &mut dp);
        }
        let now = at(wall);
        let mut buf = pool.get();
        let mut got = false;
        taken = 0;
        // A round ends after ROUND_TIME even with ports still ready (they keep their turn for
        // the next one, which starts where this one stopped): signals, timers and control
        // requests are seen within a bounded time however much traffic (or flooding to many
        // ports) a round holds.
        let round = wall;
        let n_slots = slots.len();
        for k in 0..n_slots {
            let i = (next_port + k) % n_slots;
            if !ready[i] {
                continue;
            }
            if k > 0 && round.elapsed() > ROUND_TIME {
                next_port = i;
                break;
            }
            ready[i] = false;
            let port = PortId(i as u16);
            let mut n = 0;
            let mut lost = None;
            while let Some(dev) = slots[i].dev.as_ref() {
                if n == BUDGET {
                    // Not drained yet: come back after the other fds had their turn.
                    ready[i] = true;
                    break;
                }
                n += 1;
                match dev.recv(&mut buf) {
                    Ok(Rx::Frame) => {
                        if hub.any() {
                            hub.record(port, Dir::In, slots[i].offload.vnet.then_some(&buf.vnet), buf.frame());
                        }
                        frames = frames.wrapping_add(1);
                        // Read before the pipeline rewrites the frame (a tag popped or pushed).
                        let udp = coalesce::counts(buf.frame());
                        let sample = frames.is_multiple_of(SAMPLE_EVERY);
                        let t = sample.then(std::time::Instant::now);
                        let mut tx = IoTx { slots: &slots, lat: &mut lat, sample, vx: vx.as_ref(), hub: &hub, q: &mut txq, batch: true };
                        dp.process(now, port, &mut buf, &mut tx);
                        if let Some(t) = t {
                            lat.frame.saturating_record_n(t.elapsed().as_nanos() as u64, SAMPLE_EVERY as u64);
                        }
                        got = true;
                        taken = taken.saturating_add(u32::from(udp));
                        slots[i].last_err = None;
                    }
                    Ok(Rx::Dropped(r)) => dp.count_drop(port, r),
                    Ok(Rx::Ignored) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) if gone(&e) => {
                        lost = Some(e);
                        break;
                    }
                    // Per-frame or one-shot errors (a packet socket reports ENETDOWN once, ahead
                    // of frames still queued): keep draining within the budget, or those frames
                    // would wait for a new edge.
                    Err(e) if matches!(e.raw_os_error(), Some(libc::ENETDOWN | libc::ENOBUFS | libc::EFAULT | libc::EMSGSIZE)) => {
                        if slots[i].last_err != e.raw_os_error() {
                            slots[i].last_err = e.raw_os_error();
                            tracing::warn!(port = %dp.port_name(port), "receive: {e}");
                        }
                        // Link down or interface deleted: what was learned behind it is gone,
                        // as a physical switch flushes its table on link loss; a deletion
                        // also shows up as a link event, which detaches the port.
                        if e.raw_os_error() == Some(libc::ENETDOWN) {
                            dp.port_lost(port);
                            check = true;
                        }
                        continue;
                    }
                    Err(e) => {
                        // Edge-triggered: a dead device wakes us once, so this cannot spin.
                        if slots[i].last_err != e.raw_os_error() {
                            slots[i].last_err = e.raw_os_error();
                            tracing::warn!(port = %dp.port_name(port), "receive failed: {e} (device down or removed?)");
                            dp.port_lost(port);
                        }
                        check = true;
                        break;
                    }
                }
            }
            flush_tx(&slots, &mut txq, &mut lat, &mut dp);
            if let Some(e) = lost {
                detach(&poll, &mut slots, i, &mut dp, &format!("receive failed: {e}"));
                check = true;
            }
        }
        if let (Some(v), true) = (&vx, vx_ready) {
            vx_ready = false;
            let mut n = 0;
            loop {
                if n >= BUDGET {
                    vx_ready = true;
                    break;
                }
                // Every call counts against the budget, failed ones too: an error that keeps
                // coming back cannot hold the loop.
                n += 1;
                match v.rx.recv_many(&mut vx_batch) {
                    Ok(k) => {
                        n += k.saturating_sub(1);
                        got = true;
                        for (r, _) in vx_batch.iter().filter(|(r, _)| r.truncated) {
                            dp.vxlan_truncated(*r.from.ip());
                        }
                        // With GRO one message may hold several datagrams of `seg` bytes;
                        // segments are coalesced across the whole call.
                        let d: usize = vx_batch.iter().filter(|(r, _)| !r.truncated).map(|(r, _)| r.len.div_ceil(r.seg.unwrap_or(r.len).max(1)).max(1)).sum();
                        if hub.any() {
                            for (r, b) in vx_batch.iter().filter(|(r, _)| !r.truncated) {
                                let Some(port) = v.peer_port(r.from.ip()) else { continue };
                                for d in b.chunks(r.seg.unwrap_or(r.len).max(1)) {
                                    hub.record(port, Dir::In, None, d.get(crate::wire::vxlan::HEADER_LEN..).unwrap_or_default());
                                }
                            }
                        }
                        let msgs = vx_batch.iter().filter(|(r, _)| !r.truncated);
                        let t = std::time::Instant::now();
                        let mut tx = IoTx { slots: &slots, lat: &mut lat, sample: true, vx: vx.as_ref(), hub: &hub, q: &mut txq, batch: true };
                        dp.vxlan_messages(now, msgs.map(|(r, b)| (*r.from.ip(), b, r.seg.unwrap_or(r.len))), &mut buf, &mut tx);
                        let d = d.max(1) as u64;
                        lat.frame.saturating_record_n(t.elapsed().as_nanos() as u64 / d, d);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    // ICMP errors for earlier sends (a peer not listening): nothing to do.
                    Err(_) => continue,
                }
            }
            flush_tx(&slots, &mut txq, &mut lat, &mut dp);
        }
        pool.put(buf);
        if got {
            last_frame = wall;
        }
        coalesce.turn(wall, taken);
        lat.rx_busy_windows = coalesce.windows_active;
        {
            let mut tx = IoTx { slots: &slots, lat: &mut lat, sample: true, vx: vx.as_ref(), hub: &hub, q: &mut txq, batch: false };
            for (sock, ready) in dns_socks.iter().zip(dns_ready.iter_mut()).filter(|(_, r)| **r) {
                *ready = false;
                for _ in 0..BUDGET {
                    match sock.recv_from(&mut dns_buf) {
                        Ok((n, from)) => dp.dns_upstream(now, from, &dns_buf[..n], &mut tx),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        // An ICMP error for an earlier query (port unreachable): the core times
                        // the query out and tries the next upstream.
                        Err(_) => continue,
                    }
                }
            }
            if let Some((_, events)) = &leases {
                while let Ok(ev) = events.try_recv() {
                    match ev {
                        store::StoreEvent::Durable { first, last } => dp.dhcp_committed(now, first, last, &mut tx),
                        store::StoreEvent::Failing(why) => dp.router_mut().set_lease_store_error(Some(why)),
                        store::StoreEvent::Healthy => dp.router_mut().set_lease_store_error(None),
                        store::StoreEvent::Compacted(_) => {}
                    }
                }
            }
            dp.poll(now, &mut tx);
        }
        if let Some(b) = bgp.as_mut() {
            // The fabric's MACs into the FDB when the view moved; ours out, at most 10 times
            // a second.
            let g = b.shared.generation.load(std::sync::atomic::Ordering::Acquire);
            if g != b.synced {
                b.synced = g;
                let view = b.shared.view.lock().map(|v| v.clone()).unwrap_or_default();
                let refused = dp.evpn_sync(clock(), &evpn.fdb(&dp, &view));
                if refused > 0 {
                    tracing::debug!(refused, "EVPN MACs not installed (configured here, or table full)");
                }
            }
            if std::time::Instant::now() >= next_evpn {
                next_evpn = std::time::Instant::now() + Duration::from_millis(100);
                b.set_local(evpn.local(&dp, clock()));
            }
        }
        if hub.any() {
            let (dropped, missed) = dp.take_dropped();
            for d in &dropped {
                hub.record_drop(d);
            }
            hub.missed_drops(missed);
            if hub.prune() {
                dp.watch_drops(hub.drop_ports());
            }
        }
        let persist = dp.router_mut().take_persist();
        if !persist.is_empty() {
            if let Some((to_disk, _)) = &leases {
                let _ = to_disk.send(persist);
            }
        }
        for (to, q) in dp.router_mut().take_upstream() {
            // Each query leaves from a socket (source port) an off-path forger cannot predict.
            let Some(sock) = dns_socks.get(rng.u32() as usize % dns_socks.len().max(1)) else { break };
            if let Err(e) = sock.send_to(&q, to) {
                tracing::debug!(upstream = %to, "DNS upstream send: {e}");
            }
        }
        while let Ok(env) = inbox.try_recv() {
            if let Some(st) = env.staged {
                if !st.take() {
                    // The control side gave up on it (and said so): never applied.
                    continue;
                }
                // systemd (Type=notify) hears of the reload, and of being ready again after it.
                let mut mono = libc::timespec { tv_sec: 0, tv_nsec: 0 };
                // SAFETY: clock_gettime writes one timespec, which lives on this stack frame.
                unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut mono) };
                notifier.notify(&format!("RELOADING=1\nMONOTONIC_USEC={}", mono.tv_sec as u64 * 1_000_000 + mono.tv_nsec as u64 / 1000));
                let resp = match reload::apply(*st, clock(), &poll, &mut slots, &mut vx, &mut dp) {
                    Ok(a) => {
                        if hub.any() {
                            hub.end_ports(|p| a.changed_ports.contains(&p));
                            dp.watch_drops(hub.drop_ports());
                        }
                        config = a.config;
                        cfg_state.hash = a.hash;
                        // EVPN follows: the speaker's new config, and the FDB against the new ports.
                        evpn = EvpnNets::of(&config, &dp);
                        let spec = build::bgp_spec(&config);
                        if spec != bgp_spec {
                            match (bgp.take(), &spec) {
                                (Some(mut b), Some(s)) => {
                                    b.reconfigure(s.clone(), bgp_passwords(&config));
                                    bgp = Some(b);
                                }
                                (Some(b), None) => stop_bgp(b, &inbox),
                                (None, Some(_)) => match start_bgp(&config, origin, &applier, &bgp_tx, &waker) {
                                    Ok(b) => bgp = b,
                                    Err(e) => tracing::error!("BGP: {e}"),
                                },
                                (None, None) => {}
                            }
                            bgp_spec = spec;
                        }
                        if let Some(b) = bgp.as_mut() {
                            b.synced = u64::MAX;
                        }
                        cfg_state.reloads += 1;
                        cfg_state.seen.set(None);
                        cfg_state.full_percent = config.router.health_full_percent;
                        ready.resize(slots.len(), false);
                        busy_poll = Duration::from_micros(config.router.busy_poll_us);
                        coalesce.set_pause(Duration::from_micros(config.router.coalesce_us));
                        dp.set_flow_cache(config.router.flow_cache);
                        if config.router.io_uring != txq.uring() {
                            flush_tx(&slots, &mut txq, &mut lat, &mut dp);
                            txq = tx_queue(config.router.io_uring, &mut lat);
                        }
                        let mut reply = a.reply;
                        // Services a change turns on get what they need from the host.
                        if dp.router().serves_any_dhcp() && leases.is_none() {
                            match start_leases(&config, &mut dp, clock(), &waker) {
                                Ok(l) => leases = Some(l),
                                Err(e) => {
                                    tracing::error!("lease log: {e}");
                                    dp.router_mut().set_lease_store_error(Some(e.to_string()));
                                    reply["warning"] = format!("DHCP cannot persist leases: {e}").into();
                                }
                            }
                        }
                        if dp.router().serves_dns() && dns_socks.is_empty() {
                            match open_dns_sockets(&poll) {
                                Ok(s) => {
                                    dns_ready = vec![false; s.len()];
                                    dns_socks = s;
                                }
                                Err(e) => tracing::error!("DNS upstream sockets: {e}"),
                            }
                        }
                        let restart: Vec<&str> = [
                            ("control_socket", config.control_socket() != sock),
                            ("metrics_listen", config.router.metrics_listen != metrics_at),
                            ("state_dir", leases.is_some() && config.state_dir() != state_dir_at),
                        ]
                        .into_iter()
                        .filter_map(|(k, d)| d.then_some(k))
                        .collect();
                        if !restart.is_empty() {
                            reply["restart_needed"] = restart.into();
                        }
                        tracing::info!(changes = %reply["changes"], pause_ms = %reply["pause_ms"], ports = slots.iter().filter(|s| s.open.is_some()).count(), "config applied");
                        Response::ok(reply)
                    }
                    Err(e) => {
                        tracing::warn!("config change refused: {e}");
                        Response::err(e)
                    }
                };
                notifier.notify(&format!("READY=1\nSTATUS=forwarding for {} ports", slots.iter().filter(|s| s.open.is_some()).count()));
                let _ = env.reply.send(resp);
                continue;
            }
            let resp = if let (Request::Capture { port, direction, drops, .. }, Some(link)) = (&env.request, &env.capture) {
                let ids: Result<Vec<PortId>, String> = port.split(',').map(|n| dp.port_id(n).ok_or_else(|| format!("no port named {n:?}"))).collect();
                match ids {
                    Ok(ids) => {
                        hub.add(ids.clone(), *direction, *drops, link.clone());
                        dp.watch_drops(hub.drop_ports());
                        Response::ok(serde_json::json!({"ports": ids.iter().map(|p| dp.port_name(*p)).collect::<Vec<_>>()}))
                    }
                    Err(e) => Response::err(e),
                }
            } else if let Request::SetPassword { port, password } = &env.request {
                match dp.router().vm_named(port) {
                    Some(p) if dp.router_mut().set_password(p, password.clone()) => Response::ok(serde_json::json!({"port": port})),
                    _ => Response::err(format!("no guest port named {port:?}")),
                }
            } else if env.request == Request::Health {
                let checks = control::health::evaluate(&observe::health_input(&mut dp, &slots, now, &cfg_state, &heartbeat));
                Response::ok(serde_json::json!({"status": control::health::overall(&checks), "checks": checks}))
            } else {
                answer(&dp, &slots, &lat, &env.request, now, origin.elapsed(), bgp.as_ref())
            };
            let _ = env.reply.send(resp);
        }
    }
    notifier.notify("STOPPING=1");
    tracing::info!("shutting down");
    if let Some(b) = bgp.take() {
        stop_bgp(b, &inbox);
    }
    let _ = std::fs::remove_file(&sock);
    Ok(())
}

use std::io::Read;

/// Starts the BGP thread if the config has `[bgp]`.
fn start_bgp(c: &Config, origin: std::time::Instant, applier: &Arc<control::reload::Applier>, tx: &crossbeam_channel::Sender<Envelope>, waker: &Arc<Waker>) -> Result<Option<bgp::BgpHandle>, RunError> {
    let Some(spec) = build::bgp_spec(c) else { return Ok(None) };
    tracing::info!(asn = spec.asn, router_id = %spec.router_id, neighbors = spec.neighbors.len(), vnis = spec.nets.len(), "BGP EVPN speaker up");
    Ok(Some(bgp::BgpHandle::start(spec, bgp_passwords(c), origin, applier.clone(), tx.clone(), waker.clone())?))
}

/// Stops the BGP thread; changes it stages meanwhile are refused (the loop is stopping).
fn stop_bgp(b: bgp::BgpHandle, inbox: &crossbeam_channel::Receiver<Envelope>) {
    let done = b.stop_begin();
    while !done.is_finished() {
        while let Ok(env) = inbox.try_recv() {
            if let Some(st) = &env.staged {
                st.take();
            }
            let _ = env.reply.send(Response::err("vrouter is stopping"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = done.join();
}

fn bgp_passwords(c: &Config) -> std::collections::BTreeMap<std::net::Ipv4Addr, String> {
    c.bgp.iter().flat_map(|b| b.neighbor.iter()).filter_map(|n| Some((n.address, n.password.clone()?))).collect()
}

/// Which network is which VNI, for EVPN.
#[derive(Default)]
struct EvpnNets {
    by_net: std::collections::HashMap<crate::switch::NetId, u32>,
    by_vni: std::collections::HashMap<u32, crate::switch::NetId>,
}

impl EvpnNets {
    fn of(c: &Config, dp: &Datapath) -> Self {
        let mut e = EvpnNets::default();
        for n in &c.networks {
            if let (Some(vni), Some(id)) = (n.vni, dp.net_named(&n.name)) {
                e.by_net.insert(id, vni);
                e.by_vni.insert(vni, id);
            }
        }
        e
    }

    /// This host's guest MACs in VXLAN networks, each with its known addresses.
    fn local(&self, dp: &Datapath, now: Instant) -> std::collections::BTreeSet<crate::bgp::LocalMac> {
        let mut set = std::collections::BTreeSet::new();
        for (n, m) in dp.local_macs(now) {
            if let Some(vni) = self.by_net.get(&n) {
                set.insert((*vni, m.0, None));
            }
        }
        for (n, m, ip) in dp.router().guest_addresses().into_iter().chain(dp.configured_addresses()) {
            if let Some(vni) = self.by_net.get(&n) {
                if set.contains(&(*vni, m.0, None)) {
                    set.insert((*vni, m.0, Some(ip)));
                }
            }
        }
        set
    }

    /// The FDB entries the view asks for: MACs behind VTEPs that have a port.
    fn fdb(&self, dp: &Datapath, view: &crate::bgp::EvpnView) -> Vec<(crate::switch::NetId, crate::wire::ethernet::MacAddr, PortId)> {
        let mut v = Vec::new();
        for (vni, vv) in &view.vnis {
            let Some(n) = self.by_vni.get(vni) else { continue };
            for (mac, r) in &vv.macs {
                if let Some(p) = dp.port_id(&build::vtep_name(r.vtep)) {
                    v.push((*n, crate::wire::ethernet::MacAddr(mac.0), p));
                }
            }
        }
        v
    }
}

fn answer(dp: &Datapath, slots: &[Slot], lat: &latency::Latency, req: &Request, now: Instant, uptime: Duration, bgp: Option<&bgp::BgpHandle>) -> Response {
    match req {
        Request::Show { table: Table::Bgp | Table::Evpn, .. } => match bgp.and_then(|b| b.shared.snapshot.lock().ok().and_then(|s| s.clone())) {
            Some(s) => Response::ok(serde_json::to_value(&*s).unwrap_or_default()),
            None if bgp.is_some() => Response::err("the BGP speaker is starting; try again"),
            None => Response::err("no [bgp] configured"),
        },
        Request::Show { table: Table::Ports, .. } => {
            let mut v = serde_json::to_value(dp.show_ports(now)).unwrap_or_default();
            if let serde_json::Value::Array(rows) = &mut v {
                let by_name: std::collections::HashMap<&str, &Slot> = slots.iter().filter_map(|s| Some((s.open.as_ref()?.name.as_str(), s))).collect();
                for row in rows.iter_mut() {
                    // VXLAN peers have no device of their own: their state is the datapath's.
                    let Some(s) = row["name"].as_str().and_then(|n| by_name.get(n)) else { continue };
                    row["state"] = s.state().into();
                    row["waiting_secs"] = s.lost_at.filter(|_| s.dev.is_none()).map(|t| t.elapsed().as_secs()).into();
                }
            }
            Response::ok(v)
        }
        Request::Show { table: Table::Conntrack, offset } => {
            // One bounded page per request: a full table never stalls forwarding.
            let r = dp.router();
            let (flows, next) = r.conntrack_page(now, offset.unwrap_or(0), CONNTRACK_PAGE);
            Response::ok(serde_json::json!({"count": r.ct.len(), "max": r.ct.max(), "flows": flows, "next": next}))
        }
        Request::Show { table: Table::Leases, .. } => match dp.router().leases() {
            Some((leases, counters)) => {
                let wall = dp.router().wall_now(now);
                let mut rows = serde_json::to_value(&leases).unwrap_or_default();
                if let serde_json::Value::Array(rows) = &mut rows {
                    for (row, l) in rows.iter_mut().zip(&leases) {
                        row["network"] = dp.net_name(crate::switch::NetId(l.net as u16)).into();
                        row["expires_in_secs"] = l.expires.saturating_sub(wall).into();
                    }
                }
                let (error, held) = dp.router().lease_store();
                let store = serde_json::json!({"ok": error.is_none(), "error": error, "acks_waiting": held});
                Response::ok(serde_json::json!({"leases": rows, "counters": counters, "store": store}))
            }
            None => Response::err("no network is served by DHCP (give one a gateway and a dhcp_range or reservations)"),
        },
        Request::Show { table: Table::Vpn, .. } => match dp.router().vpn_row(now) {
            Some(row) => Response::ok(serde_json::to_value(row).unwrap_or_default()),
            None => Response::err("no [wireguard] configured"),
        },
        Request::Show { table: Table::Lb, .. } => {
            let mut rows = serde_json::to_value(dp.router().lb_rows()).unwrap_or_default();
            // A ready-made address column for the table view.
            if let serde_json::Value::Array(rows) = &mut rows {
                for lb in rows.iter_mut() {
                    if let Some(bs) = lb["backends"].as_array_mut() {
                        for b in bs {
                            b["address"] = format!("{}:{}", b["ip"].as_str().unwrap_or("?"), b["port"]).into();
                        }
                    }
                }
            }
            Response::ok(rows)
        }
        Request::Show { table: Table::Fdb, .. } => Response::ok(serde_json::to_value(dp.show_fdb(now)).unwrap_or_default()),
        Request::Show { table: Table::Stats, .. } => {
            let mut s = serde_json::to_value(dp.show_stats()).unwrap_or_default();
            if let serde_json::Value::Object(m) = &mut s {
                m.insert("uptime_secs".into(), uptime.as_secs().into());
                m.insert("latency".into(), lat.json());
                if let Some(d) = dp.router().dns_counters() {
                    m.insert("dns".into(), serde_json::to_value(d).unwrap_or_default());
                }
            }
            Response::ok(s)
        }
        Request::Reload | Request::Apply { .. } | Request::Diff { .. } => Response::err("answered by the control side"),
        // Answered by the loop itself (it registers the session).
        Request::Capture { .. } => Response::err("capture is answered by the loop"),
        // Answered by the loop itself (it probes the gateway, it sets state).
        Request::Health | Request::SetPassword { .. } => Response::err("answered by the loop"),
        Request::Show { table: Table::Metadata, .. } => match dp.router().metadata_counters() {
            Some((counters, open)) => {
                Response::ok(serde_json::json!({"vms": dp.router().metadata_rows(), "counters": counters, "connections": open}))
            }
            None => Response::err("metadata is not served ([router] metadata = false)"),
        },
    }
}
