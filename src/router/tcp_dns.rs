//! DNS over TCP on the router's own addresses: the router's TCP endpoint is smoltcp's TCP
//! stack (one `Interface` per guest network, IP medium, holding that network's gateway address),
//! fed the TCP segments the router receives for port 53 and emitting its segments back through
//! the router's egress. No kernel socket ever sits in a guest network.
//!
//! Each network gets a few listening sockets the first time a guest speaks TCP to its DNS (so
//! an account with thousands of networks costs nothing until used); a socket that finished a
//! connection listens again. A connection carries length-prefixed DNS messages (RFC 1035 4.2.2,
//! RFC 7766): each complete one is handed to the DNS core, its answer written back; the client
//! closes when done, and idle connections time out.
//!
//! Sans-IO: time comes in, frames go out through the router's outbox.

use crate::switch::NetId;
use crate::time::Instant;
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::socket::tcp;
use smoltcp::wire::{HardwareAddress, IpCidr};
use std::collections::{HashMap, VecDeque};
use std::net::Ipv4Addr;

/// Listening sockets per network.
const SOCKETS: usize = 4;
const RX_BUF: usize = 4096;
/// A DNS message over TCP is at most 64 KiB plus its length prefix.
const TX_BUF: usize = 65_537;
/// Queries buffered per connection before it is cut.
const MAX_PENDING_BYTES: usize = 16_384;
/// An idle connection is closed after this long (RFC 7766 suggests seconds).
const IDLE: smoltcp::time::Duration = smoltcp::time::Duration::from_secs(10);

/// Packets between the router and a smoltcp interface (IP medium): also the health checker's.
#[derive(Default)]
pub(crate) struct Queue {
    pub(crate) rx: VecDeque<Vec<u8>>,
    pub(crate) tx: Vec<Vec<u8>>,
    pub(crate) mtu: usize,
}

pub(crate) struct Rx(Vec<u8>);
pub(crate) struct Tx<'a>(&'a mut Vec<Vec<u8>>);

impl RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut b = vec![0u8; len];
        let r = f(&mut b);
        self.0.push(b);
        r
    }
}

impl Device for Queue {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx<'a>;
    fn receive(&mut self, _: smoltcp::time::Instant) -> Option<(Rx, Tx<'_>)> {
        let p = self.rx.pop_front()?;
        Some((Rx(p), Tx(&mut self.tx)))
    }
    fn transmit(&mut self, _: smoltcp::time::Instant) -> Option<Tx<'_>> {
        Some(Tx(&mut self.tx))
    }
    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ip;
        c.max_transmission_unit = self.mtu;
        c
    }
}

#[derive(Default)]
struct Conn {
    buf: Vec<u8>,
    /// The DNS client id of the query being answered (one at a time, in order).
    waiting: Option<u64>,
}

struct NetTcp {
    iface: Interface,
    sockets: SocketSet<'static>,
    conns: HashMap<SocketHandle, Conn>,
    dev: Queue,
}

/// A complete query taken off a connection.
pub(super) struct Query {
    pub net: NetId,
    pub handle: SocketHandle,
    pub payload: Vec<u8>,
}

pub(super) struct TcpDns {
    nets: HashMap<NetId, NetTcp>,
    /// The earliest TCP timer over all networks, as of the last `run`.
    next_at: Instant,
    /// Keys each network's TCP stack (initial sequence numbers: an off-path attacker must not
    /// guess them to inject into a guest's DNS connection).
    rng: crate::entropy::Csprng,
}

impl TcpDns {
    /// Drops the endpoints (and their connections) of networks `keep` rejects: removed or
    /// readdressed by a reload (an endpoint is made again, with the new address, when needed).
    pub(super) fn forget(&mut self, keep: impl Fn(NetId) -> bool) {
        self.nets.retain(|n, _| keep(*n));
    }

    pub(super) fn new(seed: crate::entropy::Seed) -> Self {
        TcpDns { nets: HashMap::new(), next_at: Instant(u64::MAX), rng: crate::entropy::Csprng::new(seed) }
    }
}

pub(crate) fn ts(now: Instant) -> smoltcp::time::Instant {
    smoltcp::time::Instant::from_millis(now.millis() as i64)
}

/// One of the router's own TCP stacks: a smoltcp interface (IP medium, `mtu`) holding
/// `addrs`, keyed by `seed` (initial sequence numbers, ephemeral ports), and its device queue.
pub(crate) fn stack(now: Instant, mtu: usize, seed: u64, addrs: &[IpCidr]) -> (Interface, Queue) {
    let mut dev = Queue { mtu, ..Default::default() };
    let mut cfg = Config::new(HardwareAddress::Ip);
    cfg.random_seed = seed;
    let mut iface = Interface::new(cfg, &mut dev, ts(now));
    iface.update_ip_addrs(|a| {
        for c in addrs {
            let _ = a.push(*c);
        }
    });
    (iface, dev)
}

impl TcpDns {
    /// A TCP segment (the IPv4 packet, checksums complete) for `gateway`:53 on network `net`.
    pub(super) fn input(&mut self, now: Instant, net: NetId, gateway: Ipv4Addr, prefix: u8, mtu: usize, packet: Vec<u8>) {
        let rng = &mut self.rng;
        let t = self.nets.entry(net).or_insert_with(|| {
            let (iface, dev) = stack(now, mtu, rng.u64(), &[IpCidr::new(gateway.into(), prefix)]);
            let mut sockets = SocketSet::new(Vec::new());
            let mut conns = HashMap::new();
            for _ in 0..SOCKETS {
                let mut s = tcp::Socket::new(tcp::SocketBuffer::new(vec![0; RX_BUF]), tcp::SocketBuffer::new(vec![0; TX_BUF]));
                s.set_timeout(Some(IDLE));
                let _ = s.listen(53);
                conns.insert(sockets.add(s), Conn::default());
            }
            NetTcp { iface, sockets, conns, dev }
        });
        if t.dev.rx.len() < 256 {
            t.dev.rx.push_back(packet);
        }
    }

    /// Runs every network's TCP stack that has work (or all, after answers were written):
    /// returns complete queries to answer and the IP packets to send, per network.
    pub(super) fn run(&mut self, now: Instant, queries: &mut Vec<Query>, out: &mut Vec<(NetId, Vec<u8>)>) {
        let mut next = Instant(u64::MAX);
        for (net, t) in self.nets.iter_mut() {
            let due = t.iface.poll_at(ts(now), &t.sockets).is_some_and(|at| at <= ts(now));
            if t.dev.rx.is_empty() && !due && t.dev.tx.is_empty() {
                continue;
            }
            t.iface.poll(ts(now), &mut t.dev, &mut t.sockets);
            for (h, c) in t.conns.iter_mut() {
                let s = t.sockets.get_mut::<tcp::Socket>(*h);
                let mut chunk = [0u8; 2048];
                while s.can_recv() {
                    match s.recv_slice(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => c.buf.extend_from_slice(&chunk[..n]),
                    }
                }
                if c.buf.len() > MAX_PENDING_BYTES {
                    // Cut; it listens again on the next run, once the RST has gone out.
                    s.abort();
                    c.buf.clear();
                    c.waiting = None;
                    continue;
                }
                if c.waiting.is_none() && c.buf.len() >= 2 {
                    let len = u16::from_be_bytes([c.buf[0], c.buf[1]]) as usize;
                    if c.buf.len() >= 2 + len {
                        let payload = c.buf[2..2 + len].to_vec();
                        c.buf.drain(..2 + len);
                        c.waiting = Some(0);
                        queries.push(Query { net: *net, handle: *h, payload });
                    }
                }
                // The peer finished: close our side once nothing is left to answer.
                if s.state() == tcp::State::CloseWait && c.waiting.is_none() {
                    s.close();
                }
                if !s.is_open() {
                    c.buf.clear();
                    c.waiting = None;
                    let _ = s.listen(53);
                }
            }
            t.iface.poll(ts(now), &mut t.dev, &mut t.sockets);
            out.extend(t.dev.tx.drain(..).map(|p| (*net, p)));
        }
        // Every network's next timer, the skipped ones' included.
        for t in self.nets.values_mut() {
            if let Some(p) = t.iface.poll_at(ts(now), &t.sockets) {
                next = next.min(Instant(p.total_millis().max(0) as u64));
            }
        }
        self.next_at = next;
    }



    /// Marks which DNS client a connection's current query became.
    pub(super) fn waiting(&mut self, net: NetId, h: SocketHandle, client: u64) {
        if let Some(c) = self.nets.get_mut(&net).and_then(|t| t.conns.get_mut(&h)) {
            c.waiting = Some(client);
        }
    }

    /// The connection's query was dropped without an answer: it may take the next one.
    pub(super) fn unanswered(&mut self, net: NetId, h: SocketHandle) {
        if let Some(c) = self.nets.get_mut(&net).and_then(|t| t.conns.get_mut(&h)) {
            c.waiting = None;
        }
    }

    /// Writes an answer (length-prefixed) on a connection; the next query may follow.
    pub(super) fn answer(&mut self, net: NetId, h: SocketHandle, client: u64, payload: &[u8]) {
        let Some(t) = self.nets.get_mut(&net) else { return };
        let Some(c) = t.conns.get_mut(&h) else { return };
        if c.waiting != Some(client) {
            return;
        }
        c.waiting = None;
        let s = t.sockets.get_mut::<tcp::Socket>(h);
        let mut msg = Vec::with_capacity(2 + payload.len());
        msg.extend_from_slice(&(payload.len().min(65_535) as u16).to_be_bytes());
        msg.extend_from_slice(&payload[..payload.len().min(65_535)]);
        if s.send_capacity() - s.send_queue() < msg.len() || s.send_slice(&msg).is_err() {
            s.abort();
        }
    }

    pub(super) fn poll_at(&self) -> Instant {
        self.next_at
    }
}
