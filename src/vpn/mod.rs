//! WireGuard in the router's own pipeline: the tunnel endpoint of site-to-site and
//! remote-access VPN peers.
//!
//! This module is the protocol side: one boringtun [`Tunn`] (the sans-IO Noise core) per peer,
//! the dispatch of a received datagram to its peer (handshake initiations by the sender's
//! static key, everything else by the receiver index boringtun gave the peer), cryptokey
//! routing (a destination's peer is the one whose `allowed_ips` hold it most specifically; a
//! decrypted packet is only accepted from the peer its source routes back to), the handshake
//! rate limiter with cookies under load, and the timers (rekeying, keepalives, handshake
//! retries) driven from the pipeline's `poll`. It builds no frames: datagrams to send come out
//! as (endpoint, bytes) and the router wraps them in UDP from the `listen` address.
//!
//! Invariants: a packet reaches the router from a peer only after authenticated decryption
//! and only with a source inside that peer's `allowed_ips`; keys never leave this module (no
//! `Debug`, no snapshot field holds one). boringtun keeps its own monotonic clock for the
//! protocol's timestamps and timers (it has no way to be handed one); everything this module
//! schedules (the 250 ms timer tick, the rate limiter's reset) runs on the `now` it is given.

use crate::config::types::{Ipv4Iface, Ipv4Net};
use crate::switch::stats::DropReason;
use crate::switch::NetId;
use crate::time::Instant;
use boringtun::noise::errors::WireGuardError;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use serde::Serialize;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

/// How often boringtun's timers are looked at (its own device does the same).
const TICK: Duration = Duration::from_millis(250);
/// Handshake initiations per second across all peers before cookies are demanded (what
/// boringtun's device uses).
const HANDSHAKES_PER_SEC: u64 = 100;
/// WireGuard's overhead on an IPv4 underlay is 60 bytes (20 IP + 8 UDP + 32); the default
/// inner MTU leaves 80, as wg-quick does, so the same MTU works over an IPv6 underlay.
pub const OVERHEAD_DEFAULT: u16 = 80;
/// Room a data message needs beyond its plaintext: header and tag (32) plus padding to 16.
pub const SEAL_OVERHEAD: usize = 32 + 15;
/// The largest handshake message (an initiation).
const HANDSHAKE_MAX: usize = 148;
/// Handshake messages one source address may send per second (and its burst), checked before
/// any cryptography: a peer needs one every two minutes, retries every five seconds, and even
/// many road warriors behind one NAT stay far below; a flood from one address costs a lookup.
const HS_PER_SOURCE: u32 = 20;
const HS_BURST: u32 = 40;
/// Sources tracked; when full the table starts over (a flood of spoofed sources cannot lock a
/// real peer out, and the global bounds below still hold).
const HS_SOURCES: usize = 16_384;
/// Cookie replies per second in all: past the limiter's threshold every handshake costs a
/// reply, and a spoofed flood must not buy the datapath's whole time with them.
const COOKIES_PER_SEC: u32 = 5_000;

/// A 32-byte key that never prints.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Key(pub [u8; 32]);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

impl Key {
    /// A key as `wg genkey` / `wg pubkey` write it: base64 of 32 bytes.
    pub fn from_base64(s: &str) -> Result<Key, String> {
        use base64::Engine;
        let b = base64::engine::general_purpose::STANDARD.decode(s.trim()).map_err(|_| "is not base64".to_string())?;
        let k: [u8; 32] = b.try_into().map_err(|_| "is not a 32-byte key".to_string())?;
        Ok(Key(k))
    }

    pub fn to_base64(self) -> String {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(self.0)
    }

    /// The public key of this private key.
    pub fn public(self) -> Key {
        Key(PublicKey::from(&StaticSecret::from(self.0)).to_bytes())
    }
}

/// One peer as configured.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerSpec {
    pub name: String,
    pub public_key: Key,
    pub preshared_key: Option<Key>,
    /// Where to send before the peer has spoken (road warriors have none: their endpoint is
    /// learned from their first authenticated datagram, and follows them when they roam).
    pub endpoint: Option<SocketAddrV4>,
    pub allowed_ips: Vec<Ipv4Net>,
    /// The account networks the peer may reach and be reached from (`None`: all).
    pub nets: Option<Vec<NetId>>,
    pub keepalive: Option<u16>,
}

/// The `[wireguard]` section, validated and resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct VpnSpec {
    pub listen: SocketAddrV4,
    pub private_key: Key,
    /// The router's address inside the VPN (answers ping and DNS; road warriors' prefix).
    pub address: Ipv4Iface,
    /// The tunnel's inner MTU.
    pub mtu: u16,
    pub peers: Vec<PeerSpec>,
}

/// Per-peer counters.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct PeerCounters {
    pub rx_packets: u64,
    pub tx_packets: u64,
    /// Handshakes completed (either side initiating).
    pub handshakes: u64,
    /// Decrypted packets whose source lies outside the peer's `allowed_ips`.
    pub source_not_allowed: u64,
    /// Datagrams for this peer that failed (replays, bad tags, stale sessions).
    pub rejected: u64,
    /// Packets for the peer that could not be sent (no endpoint known yet).
    pub no_endpoint: u64,
}

/// Datagrams dropped before a peer was known, by reason.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct VpnCounters {
    /// Handshakes from keys no peer has, or datagrams for indices no peer holds.
    pub strangers: u64,
    /// Datagrams that are not WireGuard messages (bad type, length or MAC).
    pub malformed: u64,
    /// Replayed or out-of-window data messages.
    pub replays: u64,
    /// Failed authentication (AEAD tag, handshake decryption, stale timestamp).
    pub bad_auth: u64,
    /// Handshakes refused under load (a cookie reply sent, or no address to send it to).
    pub under_load: u64,
    /// Handshake messages over their source's rate, dropped before any cryptography.
    pub rate_limited: u64,
    pub cookies_sent: u64,
    pub handshakes_started: u64,
}

struct Peer {
    spec: PeerSpec,
    /// The slot boringtun numbers this peer's sessions for (bits 8.. of its receiver index).
    slot: usize,
    tunn: Tunn,
    /// Where datagrams to the peer go: configured, then wherever it last spoke from.
    endpoint: Option<SocketAddrV4>,
    counters: PeerCounters,
    /// boringtun's "time since last handshake" at the last look: a smaller value means a new
    /// handshake completed.
    last_seen_hs: Option<Duration>,
    /// When the last handshake completed, in pipeline time.
    last_handshake: Option<Instant>,
}

/// What a received datagram became.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rx {
    /// A packet from `peer` is in [`Vpn::inner`] at `off..off + len`.
    Inner { peer: u16, off: usize, len: usize },
    /// Protocol traffic (a handshake, a keepalive, a cookie): absorbed.
    Done,
}

/// A peer's state for `show vpn`.
#[derive(Debug, Clone, Serialize)]
pub struct PeerRow {
    pub name: String,
    /// The public key (public by definition; private and preshared keys never appear).
    pub public_key: String,
    pub endpoint: Option<String>,
    pub allowed_ips: Vec<String>,
    /// Seconds since the last handshake completed (none yet: `None`).
    pub last_handshake_secs: Option<u64>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rtt_ms: Option<u32>,
    #[serde(flatten)]
    pub counters: PeerCounters,
}

/// The whole VPN for `show vpn`.
#[derive(Debug, Clone, Serialize)]
pub struct VpnRow {
    pub listen: String,
    pub public_key: String,
    pub address: String,
    pub mtu: u16,
    pub peers: Vec<PeerRow>,
    #[serde(flatten)]
    pub counters: VpnCounters,
}

pub struct Vpn {
    spec: VpnSpec,
    secret: StaticSecret,
    public: PublicKey,
    limiter: Arc<RateLimiter>,
    peers: Vec<Peer>,
    by_key: HashMap<[u8; 32], u16>,
    /// (prefix, peer), most specific first.
    routes: Vec<(Ipv4Net, u16)>,
    next_tick: Instant,
    next_reset: Instant,
    /// Handshake messages per source this second: (second, count).
    hs_sources: HashMap<Ipv4Addr, (u64, u32), foldhash::fast::RandomState>,
    /// Cookie replies left this second.
    cookies_left: u32,
    pub counters: VpnCounters,
    /// Decrypted packets land here (a super-frame never comes out of a tunnel: 64 KiB is
    /// WireGuard's own bound).
    scratch: Vec<u8>,
    /// Queued packets are sealed here (a decrypted one may still be in `scratch`).
    flush_buf: Vec<u8>,
}

impl Peer {
    /// A peer with no session yet, numbered for slot `slot`.
    fn new(secret: &StaticSecret, spec: &PeerSpec, slot: usize) -> Peer {
        Peer {
            tunn: Tunn::new(secret.clone(), PublicKey::from(spec.public_key.0), spec.preshared_key.map(|k| k.0), spec.keepalive, slot as u32, None),
            slot,
            spec: spec.clone(),
            endpoint: spec.endpoint,
            counters: PeerCounters::default(),
            last_seen_hs: None,
            last_handshake: None,
        }
    }
}

/// Where a failed datagram is counted.
fn reason(e: &WireGuardError) -> DropReason {
    use WireGuardError as E;
    match e {
        E::DuplicateCounter | E::InvalidCounter => DropReason::VpnReplay,
        E::InvalidAeadTag | E::WrongKey | E::InvalidTai64nTimestamp | E::WrongTai64nTimestamp => DropReason::VpnBadAuth,
        E::UnderLoad => DropReason::VpnUnderLoad,
        E::WrongIndex | E::NoCurrentSession | E::UnexpectedPacket | E::ConnectionExpired => DropReason::VpnStranger,
        _ => DropReason::VpnMalformed,
    }
}

impl Vpn {
    pub fn new(spec: VpnSpec) -> Vpn {
        let secret = StaticSecret::from(spec.private_key.0);
        let public = PublicKey::from(&secret);
        let peers = spec.peers.iter().enumerate().map(|(i, p)| Peer::new(&secret, p, i)).collect();
        let mut v = Vpn {
            limiter: Arc::new(RateLimiter::new(&public, HANDSHAKES_PER_SEC)),
            secret,
            public,
            peers,
            by_key: HashMap::new(),
            routes: Vec::new(),
            next_tick: Instant::ZERO,
            next_reset: Instant::ZERO,
            hs_sources: HashMap::with_capacity_and_hasher(64, Default::default()),
            cookies_left: COOKIES_PER_SEC,
            counters: VpnCounters::default(),
            scratch: vec![0u8; 65_536 + 64],
            flush_buf: vec![0u8; 65_536 + 64],
            spec,
        };
        v.index();
        v
    }

    fn index(&mut self) {
        self.by_key = self.peers.iter().enumerate().map(|(i, p)| (p.spec.public_key.0, i as u16)).collect();
        self.routes = self.peers.iter().enumerate().flat_map(|(i, p)| p.spec.allowed_ips.iter().map(move |n| (*n, i as u16))).collect();
        self.routes.sort_by_key(|(n, _)| std::cmp::Reverse(n.prefix));
    }

    /// A reload: peers whose keys are unchanged keep their sessions, counters and learned
    /// endpoint (a configured endpoint that changed wins); the rest start afresh. A new
    /// private key starts every peer afresh.
    pub fn reconfigure(&mut self, spec: VpnSpec) {
        let same_key = spec.private_key == self.spec.private_key;
        if !same_key {
            *self = Vpn::new(spec);
            return;
        }
        let mut old: HashMap<[u8; 32], Peer> = self.peers.drain(..).map(|p| (p.spec.public_key.0, p)).collect();
        for (i, p) in spec.peers.iter().enumerate() {
            let kept = old.remove(&p.public_key.0).filter(|o| o.spec.preshared_key == p.preshared_key && o.spec.keepalive == p.keepalive);
            let peer = match kept {
                // The session index names the peer slot: a peer that moved slot starts afresh.
                Some(mut o) if o.slot == i => {
                    if p.endpoint.is_some() && p.endpoint != o.spec.endpoint {
                        o.endpoint = p.endpoint;
                    }
                    o.spec = p.clone();
                    o
                }
                _ => Peer::new(&self.secret, p, i),
            };
            self.peers.push(peer);
        }
        self.spec = spec;
        self.index();
    }

    pub fn spec(&self) -> &VpnSpec {
        &self.spec
    }

    pub fn listen(&self) -> SocketAddrV4 {
        self.spec.listen
    }

    pub fn address(&self) -> Ipv4Addr {
        self.spec.address.addr
    }

    pub fn mtu(&self) -> usize {
        self.spec.mtu as usize
    }

    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    /// The peer a destination is routed to (cryptokey routing).
    pub fn route(&self, dst: Ipv4Addr) -> Option<u16> {
        self.routes.iter().find(|(n, _)| n.contains(dst)).map(|&(_, p)| p)
    }

    /// Whether `src` may come from `peer`: its own `allowed_ips` are where that address routes.
    pub fn allowed(&self, peer: u16, src: Ipv4Addr) -> bool {
        self.route(src) == Some(peer)
    }

    /// Whether `peer` may reach (and be reached from) account network `n`.
    pub fn may_reach(&self, peer: u16, n: NetId) -> bool {
        self.peers.get(peer as usize).is_some_and(|p| p.spec.nets.as_ref().is_none_or(|v| v.contains(&n)))
    }

    /// The peer's configured name (a network of its own as the rest of the router sees it).
    pub fn peer_name(&self, peer: u16) -> Option<&str> {
        self.peers.get(peer as usize).map(|p| p.spec.name.as_str())
    }

    /// A decrypted packet handed out by [`Vpn::receive`].
    pub fn inner(&self, off: usize, len: usize) -> &[u8] {
        &self.scratch[off..off + len]
    }

    /// Counts a decrypted packet refused by cryptokey routing.
    pub fn source_refused(&mut self, peer: u16) {
        if let Some(p) = self.peers.get_mut(peer as usize) {
            p.counters.source_not_allowed += 1;
        }
    }

    fn count(&mut self, r: DropReason) {
        let c = &mut self.counters;
        match r {
            DropReason::VpnReplay => c.replays += 1,
            DropReason::VpnBadAuth => c.bad_auth += 1,
            DropReason::VpnUnderLoad => c.under_load += 1,
            DropReason::VpnStranger => c.strangers += 1,
            DropReason::VpnRateLimited => c.rate_limited += 1,
            _ => c.malformed += 1,
        }
    }

    /// A UDP datagram that arrived at the `listen` address from `from`. Datagrams to send
    /// (handshake answers, cookies, packets that waited for a session) are appended to `out`.
    pub fn receive(&mut self, now: Instant, from: SocketAddrV4, datagram: &[u8], out: &mut Vec<(SocketAddrV4, Vec<u8>)>) -> Result<Rx, DropReason> {
        let r = self.receive_inner(now, from, datagram, out);
        if let Err(e) = r {
            self.count(e);
        }
        r
    }

    /// Whether `src` may send another handshake message now (a token per 1/HS_PER_SOURCE s,
    /// kept as "the second and how many in it", with the burst as the allowance).
    fn handshake_allowed(&mut self, now: Instant, src: Ipv4Addr) -> bool {
        let sec = now.millis() / 1000;
        if self.hs_sources.len() >= HS_SOURCES && !self.hs_sources.contains_key(&src) {
            self.hs_sources.clear();
        }
        let e = self.hs_sources.entry(src).or_insert((sec, 0));
        // Unused allowance carries over one second (the burst), never more.
        let elapsed = sec.saturating_sub(e.0);
        if elapsed > 0 {
            e.1 = if elapsed == 1 { e.1.saturating_sub(HS_PER_SOURCE) } else { 0 };
            e.0 = sec;
        }
        if e.1 >= HS_BURST {
            return false;
        }
        e.1 += 1;
        true
    }

    fn receive_inner(&mut self, now: Instant, from: SocketAddrV4, datagram: &[u8], out: &mut Vec<(SocketAddrV4, Vec<u8>)>) -> Result<Rx, DropReason> {
        // Handshakes are rate-limited per source before any work, then MACs (cheap), then
        // cookies under load, before any Diffie-Hellman.
        if matches!(datagram.first(), Some(1 | 2)) && !self.handshake_allowed(now, *from.ip()) {
            return Err(DropReason::VpnRateLimited);
        }
        let mut cookie = [0u8; 64];
        let peer = match self.limiter.verify_packet(Some(IpAddr::V4(*from.ip())), datagram, &mut cookie) {
            Ok(Packet::HandshakeInit(p)) => {
                let half = parse_handshake_anon(&self.secret, &self.public, &p).map_err(|_| DropReason::VpnStranger)?;
                *self.by_key.get(&half.peer_static_public).ok_or(DropReason::VpnStranger)?
            }
            Ok(Packet::HandshakeResponse(p)) => self.by_index(p.receiver_idx)?,
            Ok(Packet::PacketCookieReply(p)) => self.by_index(p.receiver_idx)?,
            Ok(Packet::PacketData(p)) => self.by_index(p.receiver_idx)?,
            Err(TunnResult::WriteToNetwork(c)) => {
                if self.cookies_left > 0 {
                    self.cookies_left -= 1;
                    out.push((from, c.to_vec()));
                    self.counters.cookies_sent += 1;
                }
                return Err(DropReason::VpnUnderLoad);
            }
            Err(TunnResult::Err(e)) => return Err(reason(&e)),
            Err(_) => return Err(DropReason::VpnMalformed),
        };
        let p = &mut self.peers[peer as usize];
        let base = self.scratch.as_ptr() as usize;
        let (res, _) = match p.tunn.decapsulate(Some(IpAddr::V4(*from.ip())), datagram, &mut self.scratch) {
            TunnResult::Done => (Ok(Rx::Done), false),
            TunnResult::Err(e) => {
                p.counters.rejected += 1;
                return Err(reason(&e));
            }
            TunnResult::WriteToNetwork(d) => {
                out.push((from, d.to_vec()));
                (Ok(Rx::Done), true)
            }
            TunnResult::WriteToTunnelV4(d, _) => {
                let off = d.as_ptr() as usize - base;
                p.counters.rx_packets += 1;
                (Ok(Rx::Inner { peer, off, len: d.len() }), false)
            }
            // No IPv6 inside the account (yet): authenticated, but not routable.
            TunnResult::WriteToTunnelV6(..) => (Err(DropReason::UnsupportedL3), false),
        };
        // It authenticated: the peer is where it spoke from (roaming).
        p.endpoint = Some(from);
        // Packets that waited for a session go as soon as there is one: after the handshake
        // response when we initiated, after the initiator's first message when it did (a
        // responder may not send first). The queue is empty almost always: one check.
        while let TunnResult::WriteToNetwork(d) = p.tunn.decapsulate(None, &[], &mut self.flush_buf) {
            p.counters.tx_packets += 1;
            out.push((from, d.to_vec()));
        }
        self.note_handshake(now, peer);
        res
    }

    fn by_index(&self, receiver_idx: u32) -> Result<u16, DropReason> {
        let i = receiver_idx >> 8;
        if (i as usize) < self.peers.len() {
            Ok(i as u16)
        } else {
            Err(DropReason::VpnStranger)
        }
    }

    fn note_handshake(&mut self, now: Instant, peer: u16) {
        let p = &mut self.peers[peer as usize];
        let t = p.tunn.time_since_last_handshake();
        let newer = match (t, p.last_seen_hs) {
            (Some(t), Some(l)) => t < l,
            (Some(_), None) => true,
            _ => false,
        };
        if newer {
            p.counters.handshakes += 1;
            p.last_handshake = Some(now);
        }
        p.last_seen_hs = t;
    }

    /// Seals `packet` (an IPv4 packet routed to `peer`) into `dst`, which needs
    /// `packet.len() + SEAL_OVERHEAD` and at least 148 bytes. Returns where to send the
    /// datagram and its length; without a session boringtun keeps the packet and a handshake
    /// initiation is what goes out.
    pub fn seal(&mut self, peer: u16, packet: &[u8], dst: &mut [u8]) -> Result<(SocketAddrV4, usize), DropReason> {
        let Some(p) = self.peers.get_mut(peer as usize) else { return Err(DropReason::NoRoute) };
        let Some(ep) = p.endpoint else {
            p.counters.no_endpoint += 1;
            return Err(DropReason::VpnNoEndpoint);
        };
        if dst.len() < (packet.len() + SEAL_OVERHEAD).max(HANDSHAKE_MAX) {
            return Err(DropReason::FragNeeded);
        }
        match p.tunn.encapsulate(packet, dst) {
            TunnResult::WriteToNetwork(d) => {
                if d.first() == Some(&4) {
                    p.counters.tx_packets += 1;
                } else {
                    self.counters.handshakes_started += 1;
                }
                Ok((ep, d.len()))
            }
            TunnResult::Err(e) => Err(reason(&e)),
            _ => Err(DropReason::VpnNoEndpoint),
        }
    }

    /// When [`Vpn::poll`] next has work.
    pub fn poll_at(&self) -> Instant {
        self.next_tick.min(self.next_reset)
    }

    /// The protocol's timers: handshake retries, rekeying, keepalives (persistent ones
    /// included), session expiry; the rate limiter's window.
    pub fn poll(&mut self, now: Instant, out: &mut Vec<(SocketAddrV4, Vec<u8>)>) {
        if now >= self.next_reset {
            self.limiter.reset_count();
            self.cookies_left = COOKIES_PER_SEC;
            self.next_reset = now + Duration::from_secs(1);
        }
        if now < self.next_tick {
            return;
        }
        self.next_tick = now + TICK;
        for i in 0..self.peers.len() {
            let p = &mut self.peers[i];
            if let TunnResult::WriteToNetwork(d) = p.tunn.update_timers(&mut self.scratch) {
                if let Some(ep) = p.endpoint {
                    if d.first() == Some(&1) {
                        self.counters.handshakes_started += 1;
                    }
                    out.push((ep, d.to_vec()));
                }
            }
            self.note_handshake(now, i as u16);
        }
    }

    /// A snapshot for `show vpn` (no key but the public ones).
    pub fn row(&self, now: Instant) -> VpnRow {
        let peers = self
            .peers
            .iter()
            .map(|p| {
                let (_, tx, rx, _, rtt) = p.tunn.stats();
                PeerRow {
                    name: p.spec.name.clone(),
                    public_key: p.spec.public_key.to_base64(),
                    endpoint: p.endpoint.map(|e| e.to_string()),
                    allowed_ips: p.spec.allowed_ips.iter().map(|n| n.to_string()).collect(),
                    last_handshake_secs: p.last_handshake.map(|t| now.millis().saturating_sub(t.millis()) / 1000),
                    rx_bytes: rx as u64,
                    tx_bytes: tx as u64,
                    rtt_ms: rtt,
                    counters: p.counters,
                }
            })
            .collect();
        VpnRow {
            listen: self.spec.listen.to_string(),
            public_key: Key(self.public.to_bytes()).to_base64(),
            address: self.spec.address.to_string(),
            mtu: self.spec.mtu,
            peers,
            counters: self.counters,
        }
    }
}

#[cfg(test)]
mod tests;
