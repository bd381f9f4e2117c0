//! Load balancing: which backend a new connection to a virtual IP:port goes to, and the state
//! behind that choice (backend health, active connections, totals).
//!
//! The router asks [`Balancer::pick`] on a flow's first packet only; conntrack then keeps the
//! connection on its backend for its whole life (the flow carries the backend's tag, and the
//! tag comes back through [`Balancer::release`] when the connection closes or expires, which is
//! what `leastconn` counts).
//!
//! Algorithms:
//! - `roundrobin`: smooth weighted round robin (nginx's): over any window, each healthy backend
//!   gets its weight's share within one pick, spread evenly rather than in runs;
//! - `leastconn`: fewest active connections per unit of weight, ties in turn;
//! - `source`: Maglev hashing of the client address (Eisenbud et al., NSDI 2016): a lookup table
//!   of prime size filled from per-backend permutations, so a backend leaving or returning moves
//!   only about its own share of clients.
//!
//! Health comes from [`health`] (active checks, sans-IO) and from passive failures the router
//! reports (a backend answering a new connection with RST). A backend with no check configured
//! is always up. Invariants: `pick` never returns a backend that is down; active counts never
//! underflow (a tag is released at most once per connection, see conntrack).
//!
//! Sans-IO, no clock: time comes in from the router.

pub mod health;

use crate::config::schema::Algorithm;
use crate::switch::NetId;
use serde::Serialize;
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::time::Duration;


pub use crate::conntrack::NO_TAG;

/// A connection's backend, as stored on its conntrack flow: load balancer and backend index.
pub fn tag(lb: usize, backend: usize) -> u32 {
    (lb as u32) << 16 | backend as u32
}

/// A tag's load balancer and backend indices.
pub fn untag(t: u32) -> (usize, usize) {
    ((t >> 16) as usize, (t & 0xffff) as usize)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckKind {
    /// A TCP connect succeeds.
    Tcp,
    /// `GET path` answers with status `expect`.
    Http { path: String, expect: u16 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckSpec {
    pub kind: CheckKind,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive successes that bring a down backend back.
    pub rise: u32,
    /// Consecutive failures that take an up backend out.
    pub fall: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendSpec {
    pub ip: Ipv4Addr,
    pub port: u16,
    pub weight: u32,
    /// The guest network the backend is on (where health checks leave from its gateway).
    pub net: NetId,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LbSpec {
    pub name: String,
    pub vip: Ipv4Addr,
    /// IP protocol number (TCP or UDP).
    pub proto: u8,
    pub port: u16,
    pub algorithm: Algorithm,
    pub backends: Vec<BackendSpec>,
    pub check: Option<CheckSpec>,
}

#[derive(Debug, Clone)]
struct Backend {
    spec: BackendSpec,
    up: bool,
    active: u32,
    total: u64,
    /// Consecutive check successes (while down) or failures (while up).
    streak: u32,
    checks_ok: u64,
    checks_failed: u64,
    passive_failures: u64,
    last_failure: Option<&'static str>,
    /// Smooth weighted round robin's running weight.
    current: i64,
    /// Still in the pool (a reload that removes a backend keeps its slot, so the tags of its
    /// connections still name it, until they end).
    member: bool,
}

impl Backend {
    fn new(spec: BackendSpec) -> Self {
        Backend {
            spec,
            up: true,
            active: 0,
            total: 0,
            streak: 0,
            checks_ok: 0,
            checks_failed: 0,
            passive_failures: 0,
            last_failure: None,
            current: 0,
            member: true,
        }
    }

    /// Takes new connections.
    fn serving(&self) -> bool {
        self.up && self.member
    }
}

struct Lb {
    spec: LbSpec,
    backends: Vec<Backend>,
    /// Maglev lookup table (backend indices); empty when no backend is up or the algorithm is
    /// not `source`.
    maglev: Vec<u16>,
    /// Where leastconn's tie-break starts.
    turn: usize,
    refused: u64,
    /// Still configured (a removed load balancer keeps its slot, as a backend does).
    live: bool,
}

/// The backend chosen for a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pick {
    pub tag: u32,
    pub ip: Ipv4Addr,
    pub port: u16,
    pub net: NetId,
}

/// A row of `ctl show lb` (typed; JSON is made on the control side).
#[derive(Debug, Clone, Serialize)]
pub struct LbRow {
    pub name: String,
    pub vip: Ipv4Addr,
    pub protocol: &'static str,
    pub port: u16,
    pub algorithm: &'static str,
    pub health_check: Option<&'static str>,
    /// New connections refused because no backend was up.
    pub refused: u64,
    pub backends: Vec<BackendRow>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BackendRow {
    pub ip: Ipv4Addr,
    pub port: u16,
    pub weight: u32,
    pub state: &'static str,
    pub active: u32,
    pub total: u64,
    pub checks_ok: u64,
    pub checks_failed: u64,
    pub passive_failures: u64,
    pub last_failure: Option<&'static str>,
}

/// Every load balancer of the account.
#[derive(Default)]
pub struct Balancer {
    lbs: Vec<Lb>,
    by_vip: HashMap<(Ipv4Addr, u8, u16), usize>,
}

/// A 64-bit mixer (splitmix64's finalizer): stable across runs and builds, so `source`
/// affinity survives a restart.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Maglev table sizes: primes, the smallest at least 100 × the backend count is used (the
/// paper's bound for about 1% imbalance).
const MAGLEV_SIZES: [usize; 9] = [251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521];

/// Fills a Maglev table for the backends marked `up` (weights as turns per round).
fn maglev(backends: &[Backend]) -> Vec<u16> {
    let up: Vec<(usize, u64, u64, u32)> = backends
        .iter()
        .enumerate()
        .filter(|(_, b)| b.serving())
        .map(|(i, b)| {
            let id = (u32::from(b.spec.ip) as u64) << 16 | b.spec.port as u64;
            (i, mix(id ^ 0x5851_f42d_4c95_7f2d), mix(id ^ 0x1405_7b7e_f767_814f), b.spec.weight.max(1))
        })
        .collect();
    if up.is_empty() {
        return Vec::new();
    }
    let m = MAGLEV_SIZES.iter().copied().find(|&s| s >= 100 * backends.len()).unwrap_or(65521);
    let mut table = vec![u16::MAX; m];
    let mut next = vec![0u64; up.len()];
    let mut filled = 0;
    'fill: loop {
        for (k, &(i, h1, h2, w)) in up.iter().enumerate() {
            let (offset, skip) = (h1 % m as u64, h2 % (m as u64 - 1) + 1);
            for _ in 0..w {
                let mut c = ((offset + next[k] * skip) % m as u64) as usize;
                while table[c] != u16::MAX {
                    next[k] += 1;
                    c = ((offset + next[k] * skip) % m as u64) as usize;
                }
                table[c] = i as u16;
                next[k] += 1;
                filled += 1;
                if filled == m {
                    break 'fill;
                }
            }
        }
    }
    table
}

impl Balancer {
    pub fn new(specs: Vec<LbSpec>) -> Self {
        let mut b = Balancer::default();
        for (i, spec) in specs.into_iter().enumerate() {
            b.by_vip.insert((spec.vip, spec.proto, spec.port), i);
            let backends = spec.backends.iter().cloned().map(Backend::new).collect();
            let mut lb = Lb { spec, backends, maglev: Vec::new(), turn: 0, refused: 0, live: true };
            if lb.spec.algorithm == Algorithm::Source {
                lb.maglev = maglev(&lb.backends);
            }
            b.lbs.push(lb);
        }
        b
    }

    pub fn is_empty(&self) -> bool {
        self.by_vip.is_empty()
    }

    /// Applies a reload's load balancers, known by name; their backends by address and port.
    /// What stays keeps its slot, its counters, its health and its connections (also when its
    /// weight changes); what goes keeps its slot as no longer serving, so the tags its
    /// connections carry still name it (`is_member` says it is gone); new ones are added.
    pub fn reconfigure(&mut self, specs: Vec<LbSpec>) {
        for l in &mut self.lbs {
            l.live = false;
        }
        for spec in specs {
            let i = match self.lbs.iter().position(|l| l.spec.name == spec.name) {
                Some(i) => i,
                None => {
                    self.lbs.push(Lb { spec: spec.clone(), backends: Vec::new(), maglev: Vec::new(), turn: 0, refused: 0, live: true });
                    self.lbs.len() - 1
                }
            };
            let l = &mut self.lbs[i];
            l.live = true;
            for b in &mut l.backends {
                b.member = false;
            }
            for bs in &spec.backends {
                match l.backends.iter_mut().find(|b| b.spec.ip == bs.ip && b.spec.port == bs.port) {
                    Some(b) => {
                        b.spec = bs.clone();
                        b.member = true;
                    }
                    None => l.backends.push(Backend::new(bs.clone())),
                }
            }
            if spec.check.is_none() {
                // No check: every backend counts as up, as when it started without one.
                for b in &mut l.backends {
                    b.up = true;
                    b.streak = 0;
                }
            }
            for b in &mut l.backends {
                b.current = 0;
            }
            l.spec = spec;
            l.turn = 0;
            l.maglev = if l.spec.algorithm == Algorithm::Source { maglev(&l.backends) } else { Vec::new() };
        }
        for l in self.lbs.iter_mut().filter(|l| !l.live) {
            for b in &mut l.backends {
                b.member = false;
            }
            l.maglev.clear();
        }
        self.by_vip = self.lbs.iter().enumerate().filter(|(_, l)| l.live).map(|(i, l)| ((l.spec.vip, l.spec.proto, l.spec.port), i)).collect();
    }

    /// Whether load balancer `lb` has `ip:port` in its pool.
    pub fn holds(&self, lb: usize, ip: Ipv4Addr, port: u16) -> bool {
        self.lbs.get(lb).filter(|l| l.live).is_some_and(|l| l.backends.iter().any(|b| b.member && b.spec.ip == ip && b.spec.port == port))
    }

    /// The address and port of the backend a tag names.
    pub fn backend_addr(&self, t: u32) -> Option<(Ipv4Addr, u16)> {
        let (l, b) = untag(t);
        self.lbs.get(l)?.backends.get(b).map(|b| (b.spec.ip, b.spec.port))
    }

    /// Whether the backend a tag names is still in its (still configured) load balancer's pool.
    pub fn is_member(&self, t: u32) -> bool {
        let (l, b) = untag(t);
        self.lbs.get(l).filter(|l| l.live).and_then(|l| l.backends.get(b)).is_some_and(|b| b.member)
    }

    /// The load balancer serving a virtual IP, protocol and port.
    pub fn find(&self, vip: Ipv4Addr, proto: u8, port: u16) -> Option<usize> {
        if self.by_vip.is_empty() {
            return None;
        }
        self.by_vip.get(&(vip, proto, port)).copied()
    }

    /// Chooses the backend for a new connection from `client` (not yet counted: the router
    /// calls [`Balancer::opened`] once the flow exists). `None`: no backend is up.
    pub fn pick(&mut self, lb: usize, client: Ipv4Addr) -> Option<Pick> {
        let l = self.lbs.get_mut(lb)?;
        let i = match l.spec.algorithm {
            Algorithm::Roundrobin => {
                let (mut total, mut best) = (0i64, None::<(usize, i64)>);
                for (i, b) in l.backends.iter_mut().enumerate().filter(|(_, b)| b.serving()) {
                    b.current += b.spec.weight as i64;
                    total += b.spec.weight as i64;
                    if best.is_none_or(|(_, c)| b.current > c) {
                        best = Some((i, b.current));
                    }
                }
                let (best, _) = best?;
                l.backends[best].current -= total;
                best
            }
            Algorithm::Leastconn => {
                let n = l.backends.len();
                let mut best: Option<usize> = None;
                for k in 0..n {
                    let i = (l.turn + k) % n;
                    let b = &l.backends[i];
                    if !b.serving() {
                        continue;
                    }
                    // active/weight < best.active/best.weight, without division.
                    let better = best.is_none_or(|j| {
                        let c = &l.backends[j];
                        (b.active as u64) * (c.spec.weight as u64) < (c.active as u64) * (b.spec.weight as u64)
                    });
                    if better {
                        best = Some(i);
                    }
                }
                let best = best?;
                l.turn = (best + 1) % n;
                best
            }
            Algorithm::Source => {
                if l.maglev.is_empty() {
                    return None;
                }
                let h = mix(u32::from(client) as u64 ^ 0x9e37_79b9_7f4a_7c15);
                l.maglev[(h % l.maglev.len() as u64) as usize] as usize
            }
        };
        let b = &l.backends[i].spec;
        Some(Pick { tag: tag(lb, i), ip: b.ip, port: b.port, net: b.net })
    }

    /// A connection was opened on the picked backend.
    pub fn opened(&mut self, t: u32) {
        if let Some(b) = self.backend_mut(t) {
            b.active += 1;
            b.total += 1;
        }
    }

    /// A connection on that backend closed or expired.
    pub fn release(&mut self, t: u32) {
        if let Some(b) = self.backend_mut(t) {
            b.active = b.active.saturating_sub(1);
        }
    }

    /// A new connection found no backend up.
    pub fn refused(&mut self, lb: usize) {
        if let Some(l) = self.lbs.get_mut(lb) {
            l.refused += 1;
        }
    }

    fn backend_mut(&mut self, t: u32) -> Option<&mut Backend> {
        let (l, b) = untag(t);
        self.lbs.get_mut(l)?.backends.get_mut(b)
    }

    /// The result of one check of a backend (active, or a passive failure when `passive`).
    /// Returns true if the backend changed state.
    pub fn check_result(&mut self, t: u32, ok: Result<(), &'static str>, passive: bool) -> bool {
        let (li, _) = untag(t);
        let Some(l) = self.lbs.get(li) else { return false };
        let Some((rise, fall)) = l.spec.check.as_ref().map(|c| (c.rise, c.fall)) else { return false };
        let Some(b) = self.backend_mut(t) else { return false };
        match ok {
            Ok(()) => b.checks_ok += 1,
            Err(why) => {
                if passive {
                    b.passive_failures += 1;
                } else {
                    b.checks_failed += 1;
                }
                b.last_failure = Some(why);
            }
        }
        let changed = match (b.up, ok.is_ok()) {
            (true, true) | (false, false) => {
                b.streak = 0;
                false
            }
            (true, false) => {
                b.streak += 1;
                b.streak >= fall
            }
            (false, true) => {
                b.streak += 1;
                b.streak >= rise
            }
        };
        if changed {
            b.up = !b.up;
            b.streak = 0;
            b.current = 0;
            let l = &mut self.lbs[li];
            if l.spec.algorithm == Algorithm::Source {
                l.maglev = maglev(&l.backends);
            }
        }
        changed
    }

    pub fn is_up(&self, t: u32) -> bool {
        let (l, b) = untag(t);
        self.lbs.get(l).and_then(|l| l.backends.get(b)).is_some_and(|b| b.serving())
    }

    /// Every backend that has a health check: its tag, address, network and check.
    pub fn check_targets(&self) -> Vec<(u32, BackendSpec, CheckSpec)> {
        let mut v = Vec::new();
        for (li, l) in self.lbs.iter().enumerate().filter(|(_, l)| l.live) {
            if let Some(c) = &l.spec.check {
                for (bi, b) in l.backends.iter().enumerate().filter(|(_, b)| b.member) {
                    v.push((tag(li, bi), b.spec.clone(), c.clone()));
                }
            }
        }
        v
    }

    pub fn rows(&self) -> Vec<LbRow> {
        self.lbs
            .iter()
            .filter(|l| l.live)
            .map(|l| LbRow {
                name: l.spec.name.clone(),
                vip: l.spec.vip,
                protocol: if l.spec.proto == crate::wire::ipv4::proto::UDP { "udp" } else { "tcp" },
                port: l.spec.port,
                algorithm: match l.spec.algorithm {
                    Algorithm::Roundrobin => "roundrobin",
                    Algorithm::Leastconn => "leastconn",
                    Algorithm::Source => "source",
                },
                health_check: l.spec.check.as_ref().map(|c| match c.kind {
                    CheckKind::Tcp => "tcp",
                    CheckKind::Http { .. } => "http",
                }),
                refused: l.refused,
                backends: l
                    .backends
                    .iter()
                    .filter(|b| b.member)
                    .map(|b| BackendRow {
                        ip: b.spec.ip,
                        port: b.spec.port,
                        weight: b.spec.weight,
                        state: if b.up { "up" } else { "down" },
                        active: b.active,
                        total: b.total,
                        checks_ok: b.checks_ok,
                        checks_failed: b.checks_failed,
                        passive_failures: b.passive_failures,
                        last_failure: b.last_failure,
                    })
                    .collect(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
