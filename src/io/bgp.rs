//! The BGP speaker's I/O edge: a thread of its own with the TCP connections to the
//! neighbours (kernel sockets on the underlay, from `[vxlan] local`), the clock, and the
//! speaker's sans-IO core (`crate::bgp`). The datapath loop is never blocked by BGP.
//!
//! Between the thread and the loop: the loop sends the local MACs when they change
//! ([`BgpHandle::set_local`]); the thread publishes the learned [`EvpnView`] with a
//! generation number (the loop syncs its FDB when it moves) and a snapshot for `ctl show bgp`.
//! VTEPs appearing or leaving become VXLAN peer ports through the same staged apply as a
//! config change (`control::reload::Applier::set_learned`), so ports, counters and flood lists
//! are the ones a `[[vxlan.peer]]` gets.
//!
//! Invariants: the thread only ever blocks in epoll (connects are non-blocking, writes are
//! queued up to `OUT_MAX` per neighbour: a neighbour that stops reading loses its session, not
//! the thread); on stop every session ends with a Cease NOTIFICATION.

use crate::bgp::{BgpSnapshot, EvpnView, Io, LocalMac, Speaker, SpeakerConfig};
use crate::control::reload::Applier;
use crate::control::Envelope;
use crate::time::Instant;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const WAKE: Token = Token(usize::MAX);
/// Bytes queued to one neighbour before its session is given up on.
const OUT_MAX: usize = 16 << 20;
/// How often the snapshot for `show bgp` is refreshed at most.
const PUBLISH_EVERY: Duration = Duration::from_millis(50);

enum ToBgp {
    Local(BTreeSet<LocalMac>),
    Reconfigure(SpeakerConfig, BTreeMap<Ipv4Addr, String>),
    Stop,
}

/// What the thread shares with the loop.
#[derive(Default)]
pub struct Shared {
    pub view: Mutex<Arc<EvpnView>>,
    /// Bumped after `view` is replaced.
    pub generation: AtomicU64,
    pub snapshot: Mutex<Option<Arc<BgpSnapshot>>>,
}

/// The loop's handle on the BGP thread.
pub struct BgpHandle {
    tx: crossbeam_channel::Sender<ToBgp>,
    waker: Arc<Waker>,
    thread: Option<std::thread::JoinHandle<()>>,
    pub shared: Arc<Shared>,
    /// The last local set sent.
    sent: Option<BTreeSet<LocalMac>>,
    /// The view generation the FDB was last synced to.
    pub synced: u64,
}

impl BgpHandle {
    /// Starts the thread. `loop_tx` and `loop_wake` reach the datapath loop (new VTEP ports
    /// go through `applier`; a new view wakes the loop).
    pub fn start(
        cfg: SpeakerConfig,
        passwords: BTreeMap<Ipv4Addr, String>,
        origin: std::time::Instant,
        applier: Arc<Applier>,
        loop_tx: crossbeam_channel::Sender<Envelope>,
        loop_wake: Arc<Waker>,
    ) -> std::io::Result<BgpHandle> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKE)?);
        let (tx, rx) = crossbeam_channel::unbounded();
        let shared = Arc::new(Shared::default());
        let sh = shared.clone();
        let thread = std::thread::Builder::new().name("bgp".into()).spawn(move || {
            let mut t = Thread { poll, conns: HashMap::new(), next_token: 0, origin, passwords, shared: sh, applier, loop_tx, loop_wake, learned: BTreeMap::new() };
            t.run(Speaker::new(cfg), rx);
        })?;
        Ok(BgpHandle { tx, waker, thread: Some(thread), shared, sent: None, synced: 0 })
    }

    /// The local MACs now; sent only when they changed.
    pub fn set_local(&mut self, macs: BTreeSet<LocalMac>) {
        if self.sent.as_ref() == Some(&macs) {
            return;
        }
        self.sent = Some(macs.clone());
        if self.tx.send(ToBgp::Local(macs)).is_ok() {
            let _ = self.waker.wake();
        }
    }

    pub fn reconfigure(&mut self, cfg: SpeakerConfig, passwords: BTreeMap<Ipv4Addr, String>) {
        if self.tx.send(ToBgp::Reconfigure(cfg, passwords)).is_ok() {
            let _ = self.waker.wake();
        }
    }

    /// Asks the thread to end every session (Cease) and stop; the caller joins it.
    pub fn stop_begin(mut self) -> std::thread::JoinHandle<()> {
        let _ = self.tx.send(ToBgp::Stop);
        let _ = self.waker.wake();
        self.thread.take().expect("started")
    }
}

struct Conn {
    stream: TcpStream,
    token: Token,
    connecting: bool,
    out: Vec<u8>,
    /// Close once `out` is written.
    closing: bool,
}

struct Thread {
    poll: Poll,
    conns: HashMap<Ipv4Addr, Conn>,
    next_token: usize,
    origin: std::time::Instant,
    passwords: BTreeMap<Ipv4Addr, String>,
    shared: Arc<Shared>,
    applier: Arc<Applier>,
    loop_tx: crossbeam_channel::Sender<Envelope>,
    loop_wake: Arc<Waker>,
    /// The VTEPs (and their VNIs) the running config has as learned peers.
    learned: BTreeMap<Ipv4Addr, crate::bgp::VtepVnis>,
}

impl Thread {
    fn now(&self) -> Instant {
        Instant::from_millis(self.origin.elapsed().as_millis() as u64)
    }

    fn run(&mut self, mut sp: Speaker, rx: crossbeam_channel::Receiver<ToBgp>) {
        let mut events = Events::with_capacity(64);
        let mut buf = vec![0u8; 65536];
        let mut published_gen = u64::MAX;
        let mut next_publish = std::time::Instant::now();
        let mut stopping = false;
        // The VTEPs the view wants as ports, and when to try again after a refused apply.
        let mut wanted: BTreeMap<Ipv4Addr, crate::bgp::VtepVnis> = BTreeMap::new();
        let mut retry_at = std::time::Instant::now();
        loop {
            let now = self.now();
            sp.poll(now);
            self.carry_out(&mut sp);
            if sp.generation() != published_gen {
                published_gen = sp.generation();
                let view = Arc::new(sp.view().clone());
                wanted = view.vteps();
                if let Ok(mut v) = self.shared.view.lock() {
                    *v = view;
                }
                self.shared.generation.fetch_add(1, Ordering::Release);
                let _ = self.loop_wake.wake();
            }
            if wanted != self.learned && !stopping && std::time::Instant::now() >= retry_at {
                // New or gone VTEPs: VXLAN peer ports, through the reload path.
                let r = self.applier.set_learned(wanted.clone(), &self.loop_tx, &|| {
                    let _ = self.loop_wake.wake();
                });
                if r.ok {
                    self.learned = wanted.clone();
                } else {
                    tracing::warn!("EVPN VTEPs not applied (retried in 1 s): {}", r.error.as_deref().unwrap_or("?"));
                    retry_at = std::time::Instant::now() + Duration::from_secs(1);
                }
            }
            if std::time::Instant::now() >= next_publish {
                next_publish = std::time::Instant::now() + PUBLISH_EVERY;
                if let Ok(mut s) = self.shared.snapshot.lock() {
                    *s = Some(Arc::new(sp.snapshot(self.now())));
                }
            }
            if stopping {
                return;
            }
            let wait = Duration::from_millis(sp.poll_at().millis().saturating_sub(self.now().millis()).clamp(1, 1000));
            let wait = wait.min(PUBLISH_EVERY);
            if let Err(e) = self.poll.poll(&mut events, Some(wait)) {
                if e.kind() != std::io::ErrorKind::Interrupted {
                    tracing::error!("BGP poll: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                }
                continue;
            }
            let now = self.now();
            for ev in events.iter() {
                if ev.token() == WAKE {
                    continue;
                }
                let Some((&peer, _)) = self.conns.iter().find(|(_, c)| c.token == ev.token()) else { continue };
                self.ready(&mut sp, now, peer, &mut buf);
            }
            while let Ok(m) = rx.try_recv() {
                match m {
                    ToBgp::Local(macs) => sp.set_local(self.now(), macs),
                    ToBgp::Reconfigure(cfg, pw) => {
                        self.passwords = pw;
                        sp.reconfigure(self.now(), cfg);
                    }
                    ToBgp::Stop => {
                        sp.shutdown();
                        self.carry_out(&mut sp);
                        self.flush_all(Duration::from_millis(500));
                        stopping = true;
                    }
                }
            }
        }
    }

    /// A connection is readable or writable.
    fn ready(&mut self, sp: &mut Speaker, now: Instant, peer: Ipv4Addr, buf: &mut [u8]) {
        let Some(c) = self.conns.get_mut(&peer) else { return };
        if c.connecting {
            match c.stream.take_error() {
                Ok(None) if c.stream.peer_addr().is_ok() => {
                    c.connecting = false;
                    tracing::info!(%peer, "BGP connection up");
                    sp.connected(now, peer);
                    self.carry_out(sp);
                }
                Ok(None) => return,
                Ok(Some(e)) | Err(e) => {
                    self.drop_conn(peer);
                    sp.connect_failed(now, peer, e.to_string());
                    self.carry_out(sp);
                    return;
                }
            }
        }
        let Some(c) = self.conns.get_mut(&peer) else { return };
        let mut closed = None;
        loop {
            match c.stream.read(buf) {
                Ok(0) => {
                    closed = Some("closed by the neighbour".to_string());
                    break;
                }
                Ok(n) => {
                    sp.received(now, peer, &buf[..n]);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    closed = Some(e.to_string());
                    break;
                }
            }
        }
        if let Some(why) = closed {
            self.drop_conn(peer);
            sp.closed(now, peer, &why);
        }
        self.carry_out(sp);
        self.flush(peer);
    }

    fn carry_out(&mut self, sp: &mut Speaker) {
        for io in sp.take_io() {
            match io {
                Io::Connect { peer, local, to } => {
                    self.drop_conn(peer);
                    match self.connect(local, to) {
                        Ok(stream) => {
                            let token = Token(self.next_token);
                            self.next_token = self.next_token.wrapping_add(1) % (usize::MAX - 1);
                            let mut c = Conn { stream, token, connecting: true, out: Vec::new(), closing: false };
                            if let Err(e) = self.poll.registry().register(&mut c.stream, token, Interest::READABLE | Interest::WRITABLE) {
                                sp.connect_failed(self.now(), peer, e.to_string());
                                continue;
                            }
                            self.conns.insert(peer, c);
                        }
                        Err(e) => sp.connect_failed(self.now(), peer, e.to_string()),
                    }
                }
                Io::Send(peer, bytes) => {
                    let over = self.conns.get_mut(&peer).map(|c| {
                        c.out.extend_from_slice(&bytes);
                        c.out.len() > OUT_MAX
                    });
                    if over == Some(true) {
                        tracing::warn!(%peer, "BGP neighbour does not read: session closed");
                        self.drop_conn(peer);
                        sp.closed(self.now(), peer, "the neighbour stopped reading (send queue full)");
                    } else {
                        self.flush(peer);
                    }
                }
                Io::Close(peer) => {
                    if let Some(c) = self.conns.get_mut(&peer) {
                        c.closing = true;
                    }
                    self.flush(peer);
                }
            }
        }
    }

    /// Writes what is queued for `peer`; a closing connection goes once it is all out.
    fn flush(&mut self, peer: Ipv4Addr) {
        let Some(c) = self.conns.get_mut(&peer) else { return };
        if c.connecting {
            return;
        }
        while !c.out.is_empty() {
            match c.stream.write(&c.out) {
                Ok(0) => break,
                Ok(n) => {
                    c.out.drain(..n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    c.out.clear();
                    break;
                }
            }
        }
        if c.closing && c.out.is_empty() {
            self.drop_conn(peer);
        }
    }

    /// At stop: the NOTIFICATIONs get a little time to leave.
    fn flush_all(&mut self, within: Duration) {
        let end = std::time::Instant::now() + within;
        while std::time::Instant::now() < end && self.conns.values().any(|c| !c.out.is_empty() && !c.connecting) {
            let peers: Vec<Ipv4Addr> = self.conns.keys().copied().collect();
            for p in peers {
                self.flush(p);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let peers: Vec<Ipv4Addr> = self.conns.keys().copied().collect();
        for p in peers {
            self.drop_conn(p);
        }
    }

    fn drop_conn(&mut self, peer: Ipv4Addr) {
        if let Some(mut c) = self.conns.remove(&peer) {
            let _ = self.poll.registry().deregister(&mut c.stream);
            let _ = c.stream.shutdown(std::net::Shutdown::Both);
        }
    }

    /// A non-blocking TCP connection from `local` (the VTEP address) to `to`, signed with
    /// the neighbour's TCP MD5 key if it has one.
    fn connect(&self, local: Ipv4Addr, to: SocketAddrV4) -> std::io::Result<TcpStream> {
        // SAFETY: socket() has no memory arguments; the result is checked before use.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd is a socket just created and owned by nobody else.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let sa = |a: SocketAddrV4| libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: a.port().to_be(),
            sin_addr: libc::in_addr { s_addr: u32::from(*a.ip()).to_be() },
            sin_zero: [0; 8],
        };
        let one: libc::c_int = 1;
        // SAFETY: the option value is a c_int on this stack frame, with its size.
        unsafe { libc::setsockopt(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, &one as *const _ as *const libc::c_void, std::mem::size_of::<libc::c_int>() as u32) };
        if let Some(pw) = self.passwords.get(to.ip()) {
            crate::sys::tcp_md5::set_key(fd, *to.ip(), pw.as_bytes())?;
        }
        let l = sa(SocketAddrV4::new(local, 0));
        // SAFETY: l is a sockaddr_in on this stack frame, passed with its size.
        if unsafe { libc::bind(fd, &l as *const _ as *const libc::sockaddr, std::mem::size_of::<libc::sockaddr_in>() as u32) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let r = sa(to);
        // SAFETY: as for bind.
        if unsafe { libc::connect(fd, &r as *const _ as *const libc::sockaddr, std::mem::size_of::<libc::sockaddr_in>() as u32) } < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINPROGRESS) {
                return Err(e);
            }
        }
        Ok(TcpStream::from_std(std::net::TcpStream::from(owned)))
    }
}
