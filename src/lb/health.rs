//! Active health checks of load-balancer backends, from the router's own address on each
//! backend's network (its gateway), over smoltcp's TCP stack: no kernel socket sits in a guest
//! network, and the checks leave through the same egress as everything the router sends.
//!
//! Each backend with a check gets one TCP socket. Every `interval` it connects from a fresh
//! local port in [`PORTS`] (a range the router keeps out of its own NAT choices): a `tcp` check
//! succeeds once the connection is established; an `http` check then sends `GET path` and
//! succeeds if the status line carries the expected code. A refusal (RST), a wrong status, a
//! close before the status line, or no success within `timeout` is a failure. Either way the
//! connection is then reset, so a check leaves nothing behind on the backend.
//!
//! Sans-IO: segments come in through [`Checker::input`], time through [`Checker::run`], which
//! returns the IP packets to send and the results; [`Checker::poll_at`] says when next.

use super::{BackendSpec, CheckKind, CheckSpec};
use crate::router::tcp_dns::{ts, Queue};
use crate::switch::NetId;
use crate::time::Instant;
use smoltcp::iface::{Interface, SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::wire::IpCidr;
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::ops::RangeInclusive;

/// Local ports of health-check connections on the gateway addresses.
pub const PORTS: RangeInclusive<u16> = 64512..=65535;
/// Bytes of an HTTP answer read while looking for its status line.
const STATUS_MAX: usize = 512;
/// Segments queued per network between runs.
const RX_QUEUE: usize = 256;

/// A check's outcome: `Err` says why it failed.
pub type Outcome = Result<(), &'static str>;

struct NetStack {
    iface: Interface,
    sockets: SocketSet<'static>,
    dev: Queue,
}

struct Target {
    tag: u32,
    net: NetId,
    ip: Ipv4Addr,
    port: u16,
    check: CheckSpec,
    handle: SocketHandle,
    next: Instant,
    /// The running check: its deadline, whether the request went out, the answer so far.
    running: Option<(Instant, bool, Vec<u8>)>,
}

pub struct Checker {
    nets: HashMap<NetId, NetStack>,
    targets: Vec<Target>,
    next_port: u16,
    next_at: Instant,
}

impl Checker {
    /// `targets`: (tag, backend, check); `gateway(net)` gives the router's address and prefix
    /// on the backend's network (no gateway: that backend is not checked). First checks are
    /// spread over the first interval, so many backends do not all connect at once.
    pub fn new(now: Instant, seed: u64, targets: Vec<(u32, BackendSpec, CheckSpec)>, gateway: impl Fn(NetId) -> Option<(Ipv4Addr, u8, usize)>) -> Self {
        let mut nets: HashMap<NetId, NetStack> = HashMap::new();
        let mut out = Vec::new();
        let n = targets.len().max(1) as u64;
        for (i, (tag, b, check)) in targets.into_iter().enumerate() {
            let Some((gw, prefix, mtu)) = gateway(b.net) else { continue };
            let st = nets.entry(b.net).or_insert_with(|| {
                // smoltcp draws initial sequence numbers and ephemeral ports from this seed.
                let (iface, dev) = crate::router::tcp_dns::stack(now, mtu, seed ^ u64::from(u32::from(gw)), &[IpCidr::new(gw.into(), prefix)]);
                NetStack { iface, sockets: SocketSet::new(Vec::new()), dev }
            });
            // The send buffer holds a whole request (a path is at most 1024 bytes), so it is
            // written in one go and never half-sent then repeated.
            let s = tcp::Socket::new(tcp::SocketBuffer::new(vec![0; 1024]), tcp::SocketBuffer::new(vec![0; 2048]));
            let handle = st.sockets.add(s);
            let stagger = check.interval.as_millis() as u64 * i as u64 / n;
            out.push(Target { tag, net: b.net, ip: b.ip, port: b.port, check, handle, next: now + std::time::Duration::from_millis(stagger), running: None });
        }
        let next_at = out.iter().map(|t| t.next).min().unwrap_or(Instant(u64::MAX));
        Checker { nets, targets: out, next_port: *PORTS.start(), next_at }
    }

    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    /// Whether a TCP segment to local port `port` on network `net` is a health check's.
    pub fn owns(&self, net: NetId, port: u16) -> bool {
        PORTS.contains(&port) && self.nets.contains_key(&net)
    }

    /// A TCP segment (IPv4 packet, checksums complete) for a check connection on `net`.
    pub fn input(&mut self, net: NetId, packet: Vec<u8>) {
        if let Some(st) = self.nets.get_mut(&net) {
            if st.dev.rx.len() < RX_QUEUE {
                st.dev.rx.push_back(packet);
            }
        }
    }

    pub fn poll_at(&self) -> Instant {
        self.next_at
    }

    /// Starts due checks, runs the TCP stacks, and reports finished checks as (tag, outcome);
    /// IP packets to send go to `out` with their network.
    pub fn run(&mut self, now: Instant, out: &mut Vec<(NetId, Vec<u8>)>, results: &mut Vec<(u32, Outcome)>) {
        for t in &mut self.targets {
            if t.running.is_some() || now < t.next {
                continue;
            }
            let Some(st) = self.nets.get_mut(&t.net) else { continue };
            let port = self.next_port;
            self.next_port = if port == *PORTS.end() { *PORTS.start() } else { port + 1 };
            let s = st.sockets.get_mut::<tcp::Socket>(t.handle);
            s.abort();
            t.next = now + t.check.interval;
            match s.connect(st.iface.context(), (smoltcp::wire::IpAddress::from(t.ip), t.port), port) {
                Ok(()) => t.running = Some((now + t.check.timeout, false, Vec::new())),
                Err(_) => results.push((t.tag, Err("connect"))),
            }
        }
        for st in self.nets.values_mut() {
            st.iface.poll(ts(now), &mut st.dev, &mut st.sockets);
        }
        for t in &mut self.targets {
            let Some((deadline, sent, answer)) = &mut t.running else { continue };
            let Some(st) = self.nets.get_mut(&t.net) else { continue };
            let s = st.sockets.get_mut::<tcp::Socket>(t.handle);
            let outcome = match (&t.check.kind, s.state()) {
                (_, tcp::State::Closed) => Some(Err("refused")),
                (CheckKind::Tcp, tcp::State::Established) => Some(Ok(())),
                (CheckKind::Http { path, expect }, st) => {
                    if !*sent && s.may_send() {
                        let req = format!("GET {path} HTTP/1.0\r\nHost: {}\r\nUser-Agent: vrouter-health-check\r\nConnection: close\r\n\r\n", t.ip);
                        *sent = s.send_slice(req.as_bytes()).is_ok_and(|n| n == req.len());
                    }
                    let mut chunk = [0u8; 256];
                    while s.can_recv() && answer.len() < STATUS_MAX {
                        match s.recv_slice(&mut chunk) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => answer.extend_from_slice(&chunk[..n.min(STATUS_MAX - answer.len())]),
                        }
                    }
                    match http_status(answer) {
                        Some(code) if code == *expect => Some(Ok(())),
                        Some(_) => Some(Err("http status")),
                        None if answer.len() >= STATUS_MAX || !matches!(st, tcp::State::SynSent | tcp::State::SynReceived | tcp::State::Established) => {
                            Some(Err("no http status"))
                        }
                        None => None,
                    }
                }
                _ => None,
            };
            let outcome = outcome.or_else(|| (now >= *deadline).then_some(Err("timeout")));
            if let Some(o) = outcome {
                s.abort();
                t.running = None;
                results.push((t.tag, o));
            }
        }
        // Requests and resets written above go out now.
        let mut next = Instant(u64::MAX);
        for (net, st) in self.nets.iter_mut() {
            st.iface.poll(ts(now), &mut st.dev, &mut st.sockets);
            out.extend(st.dev.tx.drain(..).map(|p| (*net, p)));
            if let Some(p) = st.iface.poll_at(ts(now), &st.sockets) {
                next = next.min(Instant(p.total_millis().max(0) as u64));
            }
        }
        for t in &self.targets {
            next = next.min(match &t.running {
                Some((deadline, ..)) => *deadline,
                None => t.next,
            });
        }
        self.next_at = next;
    }
}

/// The status code of an HTTP/1.x status line, once the line is complete.
fn http_status(b: &[u8]) -> Option<u16> {
    let end = b.windows(2).position(|w| w == b"\r\n").or_else(|| b.iter().position(|&c| c == b'\n'))?;
    let line = std::str::from_utf8(&b[..end]).ok()?;
    let mut parts = line.split_ascii_whitespace();
    let v = parts.next()?;
    if !v.starts_with("HTTP/1.") {
        return Some(0);
    }
    Some(parts.next().and_then(|c| c.parse().ok()).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn status_lines() {
        assert_eq!(http_status(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(http_status(b"HTTP/1.0 503 Service Unavailable\r\nX: y"), Some(503));
        assert_eq!(http_status(b"HTTP/1.1 20"), None);
        assert_eq!(http_status(b"SSH-2.0-OpenSSH\r\n"), Some(0));
        assert_eq!(http_status(b"HTTP/1.1 abc\r\n"), Some(0));
    }

    fn backend() -> (u32, BackendSpec, CheckSpec) {
        let b = BackendSpec { ip: Ipv4Addr::new(10, 1, 1, 11), port: 8080, weight: 1, net: NetId(0) };
        let c = CheckSpec { kind: CheckKind::Tcp, interval: Duration::from_millis(1000), timeout: Duration::from_millis(300), rise: 1, fall: 1 };
        (7, b, c)
    }

    fn syn_of(out: &[(NetId, Vec<u8>)]) -> &[u8] {
        let (n, p) = out.last().expect("a segment");
        assert_eq!(*n, NetId(0));
        p
    }

    #[test]
    fn silent_backend_times_out_and_refusal_fails_at_once() {
        let gw = |_| Some((Ipv4Addr::new(10, 1, 1, 1), 24, 1500));
        let mut c = Checker::new(Instant::ZERO, 7, vec![backend()], gw);
        let (mut out, mut res) = (Vec::new(), Vec::new());
        c.run(Instant::ZERO, &mut out, &mut res);
        let syn = syn_of(&out).to_vec();
        // From the gateway, to the backend's port, from a check port, SYN set.
        assert_eq!(&syn[12..16], &[10, 1, 1, 1]);
        assert_eq!(&syn[16..20], &[10, 1, 1, 11]);
        let sport = u16::from_be_bytes([syn[20], syn[21]]);
        assert!(PORTS.contains(&sport) && c.owns(NetId(0), sport));
        assert_eq!(u16::from_be_bytes([syn[22], syn[23]]), 8080);
        assert_eq!(syn[20 + 13] & 0x02, 0x02);
        assert!(res.is_empty());
        assert_eq!(c.poll_at(), Instant::ZERO + Duration::from_millis(300));
        c.run(Instant::ZERO + Duration::from_millis(300), &mut out, &mut res);
        assert_eq!(res, vec![(7, Err("timeout"))]);
        // Next round: the backend answers RST.
        out.clear();
        res.clear();
        let t1 = Instant::ZERO + Duration::from_millis(1000);
        c.run(t1, &mut out, &mut res);
        let syn = syn_of(&out).to_vec();
        let mut rst = vec![0u8; 40];
        crate::wire::ipv4::emit_header(&mut rst[..20], Ipv4Addr::new(10, 1, 1, 11), Ipv4Addr::new(10, 1, 1, 1), 6, 64, 20, 1);
        rst[20..22].copy_from_slice(&8080u16.to_be_bytes());
        rst[22..24].copy_from_slice(&syn[20..22]);
        let seq = u32::from_be_bytes([syn[24], syn[25], syn[26], syn[27]]);
        rst[28..32].copy_from_slice(&(seq + 1).to_be_bytes());
        rst[32] = 5 << 4;
        rst[33] = 0x14; // RST|ACK
        let sum = crate::wire::checksum::add(crate::wire::checksum::pseudo_v4([10, 1, 1, 11], [10, 1, 1, 1], 6, 20), &rst[20..]);
        let ck = !crate::wire::checksum::fold(sum);
        rst[36..38].copy_from_slice(&ck.to_be_bytes());
        c.input(NetId(0), rst);
        c.run(t1 + Duration::from_millis(1), &mut out, &mut res);
        assert_eq!(res, vec![(7, Err("refused"))]);
    }
}
