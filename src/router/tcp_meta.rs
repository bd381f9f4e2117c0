//! The metadata and password services' TCP endpoint: smoltcp's TCP stack (one `Interface` per
//! guest network holding its gateway address and 169.254.169.254), with a fixed pool of
//! listening sockets on port 80 and on 8080. Requests are read off each connection and handed
//! to the router, which answers them ([`crate::metadata`]); keep-alive connections take the
//! next request after the answer.
//!
//! Each connection belongs to the port its SYN came through (and that port's MAC): its later
//! segments must come through the same port, and its answers leave through that port to that
//! MAC directly, never by ARP or the MAC table (which a guest without port security could
//! poison).
//!
//! Bounded: [`SOCKETS_80`] + [`SOCKETS_8080`] connections per network (a SYN with none free
//! gets smoltcp's RST), at most [`PER_CLIENT`] (port 80) or one (8080) at once from one
//! address (further SYNs are refused before they reach the stack), request heads of at most
//! `MAX_HEAD` bytes that must arrive within [`HEAD_DEADLINE`] of the connection or of the
//! previous answer, and idle connections closed after [`IDLE`].

use super::tcp_dns::{ts, Queue};
use crate::metadata::{METADATA_IP, PASSWORD_PORT};
use crate::switch::{NetId, PortId};
use crate::time::Instant;
use crate::wire::ethernet::MacAddr;
use smoltcp::iface::{Interface, SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::wire::IpCidr;
use std::collections::HashMap;
use std::net::Ipv4Addr;

pub const SOCKETS_80: usize = 16;
pub const SOCKETS_8080: usize = 8;
/// Connections one guest address may hold at once on port 80 (on 8080: one).
pub const PER_CLIENT: usize = 4;
/// A request head must be complete this long after the connection (or the last answer).
pub const HEAD_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);
const RX_BUF: usize = 16 * 1024;
/// Room for the largest answer (user data up to 32 KiB by default, plus the head).
const TX_BUF: usize = 72 * 1024;
const IDLE: smoltcp::time::Duration = smoltcp::time::Duration::from_secs(10);

/// Who a connection belongs to: the port its SYN came through and where answers go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Owner {
    pub port: PortId,
    pub mac: MacAddr,
}

/// A complete request waiting for its answer.
pub(super) struct MetaRequest {
    pub net: NetId,
    pub handle: SocketHandle,
    pub remote: Ipv4Addr,
    pub owner: Option<Owner>,
    pub local_port: u16,
    pub head: Vec<u8>,
}

/// A segment the stack sends: to `owner`'s port and MAC only.
pub(super) struct MetaPacket {
    pub net: NetId,
    pub owner: Option<Owner>,
    pub packet: Vec<u8>,
}

#[derive(Default)]
struct Conn {
    buf: Vec<u8>,
    /// A request was handed out and not answered yet.
    busy: bool,
    /// Close once the answer is written.
    closing: bool,
    /// Since when the next request head is awaited.
    since: Option<Instant>,
}

struct NetTcp {
    iface: Interface,
    sockets: SocketSet<'static>,
    conns: HashMap<SocketHandle, (u16, Conn)>,
    dev: Queue,
    /// Connections by remote endpoint: whose they are.
    owners: HashMap<(Ipv4Addr, u16), Owner>,
}

fn endpoint_of(s: &tcp::Socket) -> Option<(Ipv4Addr, u16)> {
    match s.remote_endpoint() {
        Some(smoltcp::wire::IpEndpoint { addr: smoltcp::wire::IpAddress::Ipv4(a), port }) => Some((a, port)),
        _ => None,
    }
}

/// The destination address and TCP port of an IPv4/TCP packet the stack made.
fn tcp_dst(p: &[u8]) -> Option<(Ipv4Addr, u16)> {
    let ip = crate::wire::ipv4::Ipv4Packet::new_checked(p).ok()?;
    let hl = ip.header_len();
    let port = p.get(hl + 2..hl + 4).map(|b| u16::from_be_bytes([b[0], b[1]]))?;
    Some((ip.dst(), port))
}

pub(super) struct TcpMeta {
    nets: HashMap<NetId, NetTcp>,
    next_at: Instant,
    rng: crate::entropy::Csprng,
}

/// Listens on `port` of every address the interface has (the gateway and 169.254.169.254).
fn listen(s: &mut tcp::Socket, port: u16) {
    let _ = s.listen(port);
}

impl TcpMeta {
    /// Drops the endpoints (and their connections) of networks `keep` rejects: removed or
    /// readdressed by a reload (an endpoint is made again, with the new address, when needed).
    pub(super) fn forget(&mut self, keep: impl Fn(NetId) -> bool) {
        self.nets.retain(|n, _| keep(*n));
    }

    pub(super) fn new(seed: crate::entropy::Seed) -> Self {
        TcpMeta { nets: HashMap::new(), next_at: Instant(u64::MAX), rng: crate::entropy::Csprng::new(seed) }
    }

    pub(super) fn poll_at(&self) -> Instant {
        self.next_at
    }

    /// A TCP segment (IPv4 packet, checksums complete) for the services on network `net`.
    /// False if refused: a new connection from an address that already holds [`PER_CLIENT`].
    /// `link`: the network's gateway address, prefix length and MTU.
    /// `from`: the segment's source port and the port and MAC it came through. A segment for
    /// a connection another port owns is refused.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn input(&mut self, now: Instant, net: NetId, link: (Ipv4Addr, u8, usize), src: (Ipv4Addr, u16), local_port: u16, syn: bool, owner: Owner, packet: Vec<u8>) -> bool {
        let (gateway, prefix, mtu) = link;
        let rng = &mut self.rng;
        let t = self.nets.entry(net).or_insert_with(|| {
            let addrs = [IpCidr::new(gateway.into(), prefix), IpCidr::new(METADATA_IP.into(), 32)];
            let (iface, dev) = super::tcp_dns::stack(now, mtu, rng.u64(), &addrs);
            let mut sockets = SocketSet::new(Vec::new());
            let mut conns = HashMap::new();
            for (port, n) in [(80u16, SOCKETS_80), (PASSWORD_PORT, SOCKETS_8080)] {
                for _ in 0..n {
                    let mut s = tcp::Socket::new(tcp::SocketBuffer::new(vec![0; RX_BUF]), tcp::SocketBuffer::new(vec![0; TX_BUF]));
                    s.set_timeout(Some(IDLE));
                    listen(&mut s, port);
                    conns.insert(sockets.add(s), (port, Conn::default()));
                }
            }
            NetTcp { iface, sockets, conns, dev, owners: HashMap::new() }
        });
        match t.owners.get(&src) {
            Some(o) if *o != owner => return false,
            Some(_) => {}
            None if syn => {
                let share = if local_port == PASSWORD_PORT { 1 } else { PER_CLIENT };
                let held = t.conns.iter().filter(|(h, (p, _))| {
                    let s = t.sockets.get::<tcp::Socket>(**h);
                    *p == local_port && s.is_open() && s.state() != tcp::State::Listen && endpoint_of(s).is_some_and(|e| e.0 == src.0)
                });
                if held.count() >= share || t.owners.len() >= 4 * (SOCKETS_80 + SOCKETS_8080) {
                    return false;
                }
                t.owners.insert(src, owner);
            }
            // Not a SYN and no connection: let the stack answer it (an RST to its owner only).
            None => {}
        }
        if t.dev.rx.len() >= 256 {
            return false;
        }
        t.dev.rx.push_back(packet);
        true
    }

    /// Runs the stacks that have work: complete request heads out (one per connection at a
    /// time), IP packets to send out.
    pub(super) fn run(&mut self, now: Instant, reqs: &mut Vec<MetaRequest>, bad: &mut u64, out: &mut Vec<MetaPacket>) {
        for (net, t) in self.nets.iter_mut() {
            let due = t.iface.poll_at(ts(now), &t.sockets).is_some_and(|at| at <= ts(now));
            if t.dev.rx.is_empty() && !due && t.dev.tx.is_empty() {
                continue;
            }
            t.iface.poll(ts(now), &mut t.dev, &mut t.sockets);
            for (h, (port, c)) in t.conns.iter_mut() {
                let s = t.sockets.get_mut::<tcp::Socket>(*h);
                if s.is_open() && s.state() != tcp::State::Listen && !c.busy {
                    let since = *c.since.get_or_insert(now);
                    if now.since(since) > HEAD_DEADLINE && !c.closing {
                        // A head that trickles in (or never comes) does not hold the socket.
                        *bad += 1;
                        s.abort();
                        *c = Conn::default();
                        continue;
                    }
                }
                let mut chunk = [0u8; 2048];
                while s.can_recv() && c.buf.len() <= crate::metadata::MAX_HEAD {
                    match s.recv_slice(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => c.buf.extend_from_slice(&chunk[..n]),
                    }
                }
                // The next request only once the last answer has left (pipelined requests
                // wait in the buffer; an answer never has to share the send buffer).
                if !c.busy && !c.closing && !c.buf.is_empty() && s.send_queue() == 0 {
                    let ep = endpoint_of(s);
                    let remote = ep.map_or(Ipv4Addr::UNSPECIFIED, |e| e.0);
                    let owner = ep.and_then(|e| t.owners.get(&e).copied());
                    match crate::metadata::Request::parse(&c.buf) {
                        Ok((_, n)) => {
                            let head: Vec<u8> = c.buf.drain(..n).collect();
                            c.busy = true;
                            reqs.push(MetaRequest { net: *net, handle: *h, remote, owner, local_port: *port, head });
                        }
                        Err(crate::metadata::HeadError::Incomplete) => {}
                        Err(e) => {
                            *bad += 1;
                            let status = if e == crate::metadata::HeadError::TooLarge { 431 } else { 400 };
                            let _ = s.send_slice(&crate::metadata::error(status).encode(false, false));
                            c.buf.clear();
                            c.closing = true;
                            s.close();
                        }
                    }
                }
                if s.state() == tcp::State::CloseWait && !c.busy {
                    s.close();
                }
                if !s.is_open() {
                    *c = Conn::default();
                    listen(s, *port);
                }
            }
            t.iface.poll(ts(now), &mut t.dev, &mut t.sockets);
            let owners = &t.owners;
            out.extend(t.dev.tx.drain(..).map(|p| MetaPacket { net: *net, owner: tcp_dst(&p).and_then(|d| owners.get(&d).copied()), packet: p }));
            // Forget the owners of connections that are gone.
            let live: std::collections::HashSet<(Ipv4Addr, u16)> =
                t.conns.keys().filter_map(|h| endpoint_of(t.sockets.get::<tcp::Socket>(*h))).collect();
            t.owners.retain(|e, _| live.contains(e));
        }
        let mut next = Instant(u64::MAX);
        for t in self.nets.values_mut() {
            if let Some(p) = t.iface.poll_at(ts(now), &t.sockets) {
                next = next.min(Instant(p.total_millis().max(0) as u64));
            }
        }
        self.next_at = next;
    }

    /// Writes an answer on a connection; closes it after unless `keep_alive`.
    pub(super) fn respond(&mut self, net: NetId, h: SocketHandle, bytes: &[u8], keep_alive: bool) {
        let Some(t) = self.nets.get_mut(&net) else { return };
        let Some((_, c)) = t.conns.get_mut(&h) else { return };
        c.busy = false;
        c.since = None;
        let s = t.sockets.get_mut::<tcp::Socket>(h);
        // Reset (and listening again) since the request was read: nothing to answer.
        if !s.may_send() {
            return;
        }
        if s.send_capacity() - s.send_queue() < bytes.len() || s.send_slice(bytes).is_err() {
            s.abort();
            return;
        }
        if !keep_alive {
            c.closing = true;
            s.close();
        }
    }

    /// Open connections (for `show metadata` and metrics).
    pub(super) fn open(&self) -> usize {
        self.nets
            .values()
            .map(|t| {
                t.conns
                    .keys()
                    .filter(|h| {
                        let s = t.sockets.get::<tcp::Socket>(**h);
                        s.is_open() && s.state() != tcp::State::Listen
                    })
                    .count()
            })
            .sum()
    }
}
