//! The metadata and password services' TCP endpoint: smoltcp's TCP stack (one `Interface` per
//! guest network holding its gateway address and 169.254.169.254), with a fixed pool of
//! listening sockets on port 80 and on 8080. Requests are read off each connection and handed
//! to the router, which answers them ([`crate::metadata`]); keep-alive connections take the
//! next request after the answer.
//!
//! Bounded: [`SOCKETS_80`] + [`SOCKETS_8080`] connections per network (a SYN with none free
//! gets smoltcp's RST), at most [`PER_CLIENT`] at once from one address (further SYNs are
//! refused before they reach the stack), request heads of at most `MAX_HEAD` bytes, and idle
//! connections closed after [`IDLE`].

use super::tcp_dns::{ts, Queue};
use crate::metadata::{METADATA_IP, PASSWORD_PORT};
use crate::switch::NetId;
use crate::time::Instant;
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::wire::{HardwareAddress, IpCidr};
use std::collections::HashMap;
use std::net::Ipv4Addr;

pub const SOCKETS_80: usize = 16;
pub const SOCKETS_8080: usize = 4;
/// Connections one guest address may hold at once.
pub const PER_CLIENT: usize = 4;
const RX_BUF: usize = 16 * 1024;
/// Room for the largest answer (user data up to 32 KiB by default, plus the head).
const TX_BUF: usize = 72 * 1024;
const IDLE: smoltcp::time::Duration = smoltcp::time::Duration::from_secs(10);

/// A complete request waiting for its answer.
pub(super) struct MetaRequest {
    pub net: NetId,
    pub handle: SocketHandle,
    pub remote: Ipv4Addr,
    pub local_port: u16,
    pub head: Vec<u8>,
}

#[derive(Default)]
struct Conn {
    buf: Vec<u8>,
    /// A request was handed out and not answered yet.
    busy: bool,
    /// Close once the answer is written.
    closing: bool,
}

struct NetTcp {
    iface: Interface,
    sockets: SocketSet<'static>,
    conns: HashMap<SocketHandle, (u16, Conn)>,
    dev: Queue,
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
    pub(super) fn new(seed: crate::entropy::Seed) -> Self {
        TcpMeta { nets: HashMap::new(), next_at: Instant(u64::MAX), rng: crate::entropy::Csprng::new(seed) }
    }

    pub(super) fn poll_at(&self) -> Instant {
        self.next_at
    }

    /// A TCP segment (IPv4 packet, checksums complete) for the services on network `net`.
    /// False if refused: a new connection from an address that already holds [`PER_CLIENT`].
    /// `link`: the network's gateway address, prefix length and MTU.
    pub(super) fn input(&mut self, now: Instant, net: NetId, link: (Ipv4Addr, u8, usize), src: Ipv4Addr, syn: bool, packet: Vec<u8>) -> bool {
        let (gateway, prefix, mtu) = link;
        let rng = &mut self.rng;
        let t = self.nets.entry(net).or_insert_with(|| {
            let mut dev = Queue { mtu, ..Default::default() };
            let mut cfg = Config::new(HardwareAddress::Ip);
            cfg.random_seed = rng.u64();
            let mut iface = Interface::new(cfg, &mut dev, ts(now));
            iface.update_ip_addrs(|a| {
                let _ = a.push(IpCidr::new(gateway.into(), prefix));
                let _ = a.push(IpCidr::new(METADATA_IP.into(), 32));
            });
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
            NetTcp { iface, sockets, conns, dev }
        });
        if syn {
            let held = t.conns.keys().filter(|h| {
                let s = t.sockets.get::<tcp::Socket>(**h);
                s.is_open() && s.remote_endpoint().is_some_and(|e| e.addr == smoltcp::wire::IpAddress::Ipv4(src))
            });
            if held.count() >= PER_CLIENT {
                return false;
            }
        }
        if t.dev.rx.len() >= 256 {
            return false;
        }
        t.dev.rx.push_back(packet);
        true
    }

    /// Runs the stacks that have work: complete request heads out (one per connection at a
    /// time), IP packets to send out.
    pub(super) fn run(&mut self, now: Instant, reqs: &mut Vec<MetaRequest>, bad: &mut u64, out: &mut Vec<(NetId, Vec<u8>)>) {
        for (net, t) in self.nets.iter_mut() {
            let due = t.iface.poll_at(ts(now), &t.sockets).is_some_and(|at| at <= ts(now));
            if t.dev.rx.is_empty() && !due && t.dev.tx.is_empty() {
                continue;
            }
            t.iface.poll(ts(now), &mut t.dev, &mut t.sockets);
            for (h, (port, c)) in t.conns.iter_mut() {
                let s = t.sockets.get_mut::<tcp::Socket>(*h);
                let mut chunk = [0u8; 2048];
                while s.can_recv() && c.buf.len() <= crate::metadata::MAX_HEAD {
                    match s.recv_slice(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => c.buf.extend_from_slice(&chunk[..n]),
                    }
                }
                if !c.busy && !c.closing && !c.buf.is_empty() {
                    let remote = match s.remote_endpoint().map(|e| e.addr) {
                        Some(smoltcp::wire::IpAddress::Ipv4(a)) => a,
                        _ => Ipv4Addr::UNSPECIFIED,
                    };
                    match crate::metadata::Request::parse(&c.buf) {
                        Ok((_, n)) => {
                            let head: Vec<u8> = c.buf.drain(..n).collect();
                            c.busy = true;
                            reqs.push(MetaRequest { net: *net, handle: *h, remote, local_port: *port, head });
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
            out.extend(t.dev.tx.drain(..).map(|p| (*net, p)));
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
        let s = t.sockets.get_mut::<tcp::Socket>(h);
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
        self.nets.values().map(|t| t.conns.keys().filter(|h| t.sockets.get::<tcp::Socket>(**h).is_open()).count()).sum()
    }
}
