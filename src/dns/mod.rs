//! The DNS server: authoritative for the account's own names, a caching forwarder for the rest.
//!
//! Local names (the configured domains, the host table, the reverse zones of the guest networks)
//! are answered from [`zone`] with AA set and never forwarded. Other names are answered from
//! the [`cache`] while fresh (TTLs decremented by age), otherwise forwarded to the upstreams.
//! Identical concurrent questions (same name, type and class, case-insensitive) share one
//! upstream query; every waiting client gets the answer with its own id, its own spelling of
//! the question and its own size limit.
//!
//! Sans-IO: [`DnsServer::query`] takes a client's message, [`DnsServer::upstream_answer`] an
//! upstream's, [`DnsServer::poll`] the timers; each appends [`Action`]s for the caller to carry
//! out (answer a client, send a datagram to an upstream). Time comes in as [`Instant`]; nothing
//! here reads the clock, touches a socket or logs. Reply payloads are bare DNS messages: the
//! caller adds the two-byte length prefix on TCP.
//!
//! The upstream leg is UDP only, with an EDNS0 payload size of 1232. A truncated (TC) upstream
//! answer is relayed as it is and not cached: a client that then retries over TCP is forwarded
//! again over UDP, so it gets only what fits in 1232 bytes. An answer too big for a UDP client
//! (512 bytes, or its EDNS0 size capped at 1232) is cached whole and sent truncated (question
//! and OPT only, TC set); its TCP retry is then a cache hit, untruncated.
//!
//! Spoofing defense: an upstream answer is accepted only from an address a pending query was
//! sent to, with that attempt's random id and the same question; anything else is ignored
//! and counted. A cache entry answers only the question it was stored under.
//!
//! Invariants and limits (each refusal counted in [`DnsCounters`]):
//! - at most [`MAX_PENDING`] upstream queries in flight; a new one beyond is answered SERVFAIL;
//! - at most [`MAX_WAITERS`] clients wait on one pending query; more are dropped unanswered
//!   (`Err(Ignored::Refused)`), as is a retransmission (same client and id) of a waiting query;
//! - at most `cache_entries` cached answers; when full the entry expiring soonest is evicted;
//! - every pending query has exactly one timer; its ids are in the id index until it finishes;
//! - at most [`MAX_ATTEMPTS`] upstreams are tried per query, starting with the one that last
//!   answered, each for `upstream_timeout_ms`; an upstream SERVFAIL/REFUSED/NOTIMP/FORMERR also
//!   moves on to the next; when all have failed every waiter gets SERVFAIL (or the last
//!   upstream's error);
//! - nothing panics on any input; a message that cannot be encoded becomes SERVFAIL.
//!
//! Caching (RFC 2308): a NOERROR answer with records lives for the minimum TTL of its answer
//! section (capped at [`MAX_TTL`]); NXDOMAIN and NOERROR/no-data for min(SOA TTL, SOA MINIMUM),
//! capped at [`MAX_NEGATIVE_TTL`], and not at all without an SOA; SERVFAIL, other errors and
//! truncated answers are never cached. DNSSEC is not done: the DO bit is not forwarded and AD
//! is never set.

mod cache;
mod zone;

#[cfg(test)]
mod tests;

use crate::config::types::Ipv4Net;
use crate::time::Instant;
use cache::{Cache, Sections};
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, RecordType};
use serde::Serialize;
use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;
use zone::Zones;

/// Upstream queries in flight at most.
pub const MAX_PENDING: usize = 1024;
/// Clients waiting on one upstream query at most.
pub const MAX_WAITERS: usize = 64;
/// Upstreams tried per query at most.
pub const MAX_ATTEMPTS: usize = 16;
/// Positive answers are cached at most this long (seconds).
pub const MAX_TTL: u32 = 86_400;
/// Negative answers are cached at most this long (seconds).
pub const MAX_NEGATIVE_TTL: u32 = 3_600;
/// Largest UDP reply, and the EDNS0 payload size we advertise (the DNS flag day 2020 value).
pub const MAX_UDP: usize = 1232;
/// Largest UDP reply to a client without EDNS0.
pub const PLAIN_UDP: usize = 512;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsConfig {
    /// Authoritative zones: domains like "acct42.internal"; the reverse zones are derived from
    /// `nets`.
    pub domains: Vec<String>,
    /// Guest network prefixes (for PTR authority: in-addr.arpa names inside these are ours).
    pub nets: Vec<Ipv4Net>,
    pub upstreams: Vec<SocketAddr>,
    /// Hard cap on cached answers.
    pub cache_entries: usize,
    /// How long one upstream has to answer before the next is tried.
    pub upstream_timeout_ms: u64,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig { domains: Vec::new(), nets: Vec::new(), upstreams: Vec::new(), cache_entries: 10_000, upstream_timeout_ms: 2_000 }
    }
}

/// Who asked (so the answer goes back the same way): opaque to the DNS core.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Client {
    pub id: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Answer the client (a complete DNS message, no TCP length prefix). For UDP, already
    /// truncated to the client's limit (512, or its EDNS0 payload size, capped at 1232) with TC
    /// set if it did not fit.
    Reply { client: Client, payload: Vec<u8> },
    /// Send this query to `upstream` over UDP; its answer comes back through
    /// [`DnsServer::upstream_answer`]. `payload` has a fresh random 16-bit id.
    Upstream { upstream: SocketAddr, payload: Vec<u8> },
}

/// Why a client's message got no reply at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ignored {
    /// Shorter than a DNS header.
    Malformed,
    /// A response (QR set), not a query: never answered, so two servers cannot ping-pong.
    NotQuery,
    /// Not served, by policy: too many clients already wait on the same question, or this is
    /// a retransmission (same client, same id) of a query already waiting (the first copy gets
    /// the one answer).
    Refused,
}

/// Counters (monotonic, except the `cache_entries` and `pending` gauges).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DnsCounters {
    /// Calls to `query`.
    pub queries: u64,
    /// Replies from the local authority.
    pub local_answers: u64,
    /// NXDOMAIN replies sent (local or relayed).
    pub nxdomain: u64,
    pub cache_hits: u64,
    /// Queries sent upstream (retries included).
    pub forwarded: u64,
    /// Upstream answers accepted (matched a pending query).
    pub upstream_answers: u64,
    /// Upstream datagrams ignored (no matching pending query, wrong source or question).
    pub upstream_ignored: u64,
    /// Upstream attempts that timed out.
    pub upstream_timeouts: u64,
    /// SERVFAIL replies sent.
    pub servfail: u64,
    /// FORMERR replies sent.
    pub formerr: u64,
    /// NOTIMP replies sent (opcode other than QUERY).
    pub notimp: u64,
    /// REFUSED replies sent (zone transfers, non-IN classes on local names).
    pub refused: u64,
    /// UDP replies cut to fit (TC set by us).
    pub truncated: u64,
    /// Messages without a readable header (`Err(Malformed)`).
    pub malformed: u64,
    /// Retransmissions (same client and id) of a pending query, dropped.
    pub duplicates: u64,
    /// New upstream queries refused (SERVFAIL) because `MAX_PENDING` were in flight.
    pub pending_full: u64,
    /// Clients dropped because `MAX_WAITERS` already waited on the question.
    pub waiters_full: u64,
    /// Unexpired cache entries evicted to make room.
    pub cache_evictions: u64,
    /// Gauge: cached answers now.
    pub cache_entries: u64,
    /// Gauge: upstream queries in flight now.
    pub pending: u64,
    /// Upstream answers by how long they took: counts per bucket of [`LATENCY_BUCKETS_MS`]
    /// (each counts answers up to its bound and above the previous one; slower ones are only in
    /// `upstream_answers`), and the sum of all answers' times in milliseconds.
    pub upstream_latency: [u64; LATENCY_BUCKETS_MS.len()],
    pub upstream_latency_sum_ms: u64,
}

/// Upper bounds (ms) of the upstream latency buckets.
pub const LATENCY_BUCKETS_MS: [u64; 10] = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000];

/// A question as the cache and the pending table key it: lower-case fqdn, type, class.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct QKey {
    name: Name,
    qtype: RecordType,
    qclass: DNSClass,
}

impl QKey {
    fn of(q: &Query) -> QKey {
        QKey { name: zone::canonical(&q.name), qtype: q.query_type, qclass: q.query_class }
    }
}

/// A client waiting for an answer, with everything needed to shape it.
#[derive(Debug, Clone)]
struct Waiter {
    client: Client,
    transport: Transport,
    id: u16,
    /// The question as the client spelled it.
    question: Query,
    rd: bool,
    cd: bool,
    /// The client's EDNS0 payload size, if it sent an OPT.
    edns: Option<u16>,
}

impl Waiter {
    fn limit(&self) -> usize {
        match self.transport {
            Transport::Tcp => usize::from(u16::MAX),
            Transport::Udp => match self.edns {
                Some(p) => usize::from(p).clamp(PLAIN_UDP, MAX_UDP),
                None => PLAIN_UDP,
            },
        }
    }
}

#[derive(Debug)]
struct Pending {
    waiters: Vec<Waiter>,
    /// (index into `upstreams`, id) of each attempt so far, oldest first. A late answer to an
    /// earlier attempt is still accepted.
    attempts: Vec<(usize, u16, Instant)>,
    timer: (Instant, u64),
}

/// The fields of a DNS header the server needs before (or without) a full parse.
#[derive(Debug, Clone, Copy)]
struct RawHeader {
    id: u16,
    qr: bool,
    opcode: u8,
    rd: bool,
    qdcount: u16,
}

impl RawHeader {
    fn parse(p: &[u8]) -> Option<RawHeader> {
        let h = p.get(..12)?;
        Some(RawHeader {
            id: u16::from_be_bytes([h[0], h[1]]),
            qr: h[2] & 0x80 != 0,
            opcode: (h[2] >> 3) & 0x0f,
            rd: h[2] & 0x01 != 0,
            qdcount: u16::from_be_bytes([h[4], h[5]]),
        })
    }

    /// A reply made of this header alone (no sections), with `rcode`.
    fn reply(&self, rcode: ResponseCode) -> Vec<u8> {
        let mut v = vec![0u8; 12];
        v[..2].copy_from_slice(&self.id.to_be_bytes());
        v[2] = 0x80 | (self.opcode << 3) | u8::from(self.rd);
        v[3] = 0x80 | (rcode.low() & 0x0f);
        v
    }
}

fn our_edns() -> Edns {
    let mut e = Edns::new();
    e.set_max_payload(MAX_UDP as u16);
    e.set_version(0);
    e
}

pub struct DnsServer {
    cfg: DnsConfig,
    zones: Zones,
    cache: Cache,
    pending: HashMap<QKey, Pending>,
    /// Upstream query id -> the pending query it belongs to.
    ids: HashMap<u16, QKey>,
    timers: BTreeMap<(Instant, u64), QKey>,
    seq: u64,
    /// The upstream that answered last: new queries start there.
    preferred: usize,
    /// Query ids: unpredictable (an off-path forger must guess them), keyed by `reseed`.
    rng: crate::entropy::Csprng,
    counters: DnsCounters,
    /// When an upstream last answered, and when an attempt last timed out (health).
    last_answer: Option<Instant>,
    last_timeout: Option<Instant>,
}

impl DnsServer {
    pub fn new(cfg: DnsConfig) -> Self {
        let zones = Zones::new(&cfg.domains, &cfg.nets);
        let cache = Cache::new(cfg.cache_entries);
        // Per-process random keys from the standard library until the owner reseeds it.
        let mut seed = [0u8; 32];
        for (i, c) in seed.chunks_mut(8).enumerate() {
            c.copy_from_slice(&RandomState::new().hash_one(i).to_le_bytes());
        }
        let rng = crate::entropy::Csprng::new(seed);
        DnsServer {
            cfg,
            zones,
            cache,
            pending: HashMap::new(),
            ids: HashMap::new(),
            timers: BTreeMap::new(),
            seq: 0,
            preferred: 0,
            rng,
            counters: DnsCounters::default(),
            last_answer: None,
            last_timeout: None,
        }
    }

    /// Applies a reload's settings. The cache stays (unless its size changed), queries in
    /// flight carry on (their next attempt goes to the new upstreams); new domains or networks
    /// rebuild the zones, whose host table the owner then gives again.
    pub fn reconfigure(&mut self, cfg: DnsConfig) {
        if cfg.domains != self.cfg.domains || cfg.nets != self.cfg.nets {
            self.zones = Zones::new(&cfg.domains, &cfg.nets);
        }
        if cfg.cache_entries != self.cfg.cache_entries {
            self.cache = Cache::new(cfg.cache_entries);
        }
        if cfg.upstreams != self.cfg.upstreams {
            self.preferred = 0;
        }
        self.cfg = cfg;
    }

    /// Replaces the local host table: (fully-qualified name without trailing dot, address),
    /// e.g. ("web1.acct42.internal", 10.1.1.11). Several addresses per name and several names per
    /// address are allowed; a name that does not parse is skipped.
    pub fn set_hosts(&mut self, hosts: Vec<(String, Ipv4Addr)>) {
        self.zones.set_hosts(hosts);
    }

    pub fn counters(&self) -> DnsCounters {
        let mut c = self.counters;
        c.cache_entries = self.cache.entries() as u64;
        c.cache_evictions = self.cache.evictions;
        c.pending = self.pending.len() as u64;
        c
    }

    /// A query from a guest. Local names are answered authoritatively (AA): A for known hosts,
    /// NXDOMAIN (with SOA in authority, negative TTL 60) for unknown names inside our domains,
    /// NOERROR/no data for other types of known names, PTR for addresses in `nets`; never
    /// forwarded. Other names: from the cache if fresh, else forwarded upstream (identical
    /// concurrent questions share one upstream query). Malformed -> FORMERR if the header is
    /// readable, else `Err(Malformed)`. Opcode other than QUERY -> NOTIMP. EDNS version > 0 ->
    /// BADVERS. Zone transfers -> REFUSED.
    ///
    /// `Ok(())` means exactly one [`Action::Reply`] for `client` is pushed, by this call or a
    /// later `upstream_answer`/`poll`; `Err` means none will be, for this call.
    pub fn query(
        &mut self,
        now: Instant,
        client: Client,
        transport: Transport,
        payload: &[u8],
        out: &mut Vec<Action>,
    ) -> Result<(), Ignored> {
        self.counters.queries += 1;
        let Some(h) = RawHeader::parse(payload) else {
            self.counters.malformed += 1;
            return Err(Ignored::Malformed);
        };
        if h.qr {
            return Err(Ignored::NotQuery);
        }
        if h.opcode != 0 {
            self.counters.notimp += 1;
            out.push(Action::Reply { client, payload: h.reply(ResponseCode::NotImp) });
            return Ok(());
        }
        // Checked before decoding: the decoder reserves room for QDCOUNT questions.
        let msg = if h.qdcount == 1 { Message::from_vec(payload).ok() } else { None };
        let Some(mut msg) = msg.filter(|m| m.queries.len() == 1) else {
            self.counters.formerr += 1;
            out.push(Action::Reply { client, payload: h.reply(ResponseCode::FormErr) });
            return Ok(());
        };
        let question = msg.queries.swap_remove(0);
        let w = Waiter {
            client,
            transport,
            id: h.id,
            rd: h.rd,
            cd: msg.metadata.checking_disabled,
            edns: msg.edns.as_ref().map(|e| e.max_payload()),
            question,
        };
        if msg.edns.as_ref().is_some_and(|e| e.version() > 0) {
            self.respond(&w, ResponseCode::BADVERS, false, false, Sections::empty(ResponseCode::BADVERS), out);
            return Ok(());
        }
        match w.question.query_type {
            RecordType::OPT => {
                self.counters.formerr += 1;
                self.respond_empty(&w, ResponseCode::FormErr, out);
                return Ok(());
            }
            RecordType::AXFR | RecordType::IXFR => {
                self.respond_empty(&w, ResponseCode::Refused, out);
                return Ok(());
            }
            _ => {}
        }
        if let Some(a) = self.zones.lookup(&w.question) {
            self.counters.local_answers += 1;
            let s = Sections { rcode: a.rcode, answers: a.answers, authorities: a.authorities, additionals: Vec::new() };
            self.respond(&w, a.rcode, true, false, s, out);
            return Ok(());
        }
        let key = QKey::of(&w.question);
        if let Some(hit) = self.cache.get(now, &key) {
            self.counters.cache_hits += 1;
            self.respond(&w, hit.rcode, false, false, hit, out);
            return Ok(());
        }
        self.forward(now, key, w, out)
    }

    fn forward(&mut self, now: Instant, key: QKey, w: Waiter, out: &mut Vec<Action>) -> Result<(), Ignored> {
        if let Some(p) = self.pending.get_mut(&key) {
            if p.waiters.iter().any(|x| x.client == w.client && x.id == w.id) {
                self.counters.duplicates += 1;
                return Err(Ignored::Refused);
            }
            if p.waiters.len() >= MAX_WAITERS {
                self.counters.waiters_full += 1;
                return Err(Ignored::Refused);
            }
            p.waiters.push(w);
            return Ok(());
        }
        if self.pending.len() >= MAX_PENDING {
            self.counters.pending_full += 1;
            self.respond_empty(&w, ResponseCode::ServFail, out);
            return Ok(());
        }
        self.pending.insert(key.clone(), Pending { waiters: vec![w], attempts: Vec::new(), timer: (Instant(u64::MAX), 0) });
        if !self.send_attempt(now, &key, out) {
            self.finish_failed(&key, out);
        }
        Ok(())
    }

    /// Sends the pending query for `key` to its next upstream and arms its timer. False when
    /// there is no upstream left to try (or none at all).
    fn send_attempt(&mut self, now: Instant, key: &QKey, out: &mut Vec<Action>) -> bool {
        let n = self.cfg.upstreams.len();
        let Some(tried) = self.pending.get(key).map(|p| p.attempts.len()) else { return false };
        if n == 0 || tried >= n.min(MAX_ATTEMPTS) {
            return false;
        }
        let idx = (self.preferred + tried) % n;
        let Some(id) = self.fresh_id() else { return false };
        let mut m = Message::new(id, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        let mut q = Query::query(key.name.clone(), key.qtype);
        q.query_class = key.qclass;
        m.queries.push(q);
        m.edns = Some(our_edns());
        let Ok(payload) = m.to_vec() else { return false };
        self.seq += 1;
        let timer = (now + Duration::from_millis(self.cfg.upstream_timeout_ms), self.seq);
        let Some(p) = self.pending.get_mut(key) else { return false };
        self.timers.remove(&p.timer);
        p.timer = timer;
        p.attempts.push((idx, id, now));
        self.timers.insert(timer, key.clone());
        self.ids.insert(id, key.clone());
        self.counters.forwarded += 1;
        out.push(Action::Upstream { upstream: self.cfg.upstreams[idx], payload });
        true
    }

    /// A fresh upstream id, not used by any query in flight.
    fn fresh_id(&mut self) -> Option<u16> {
        for _ in 0..64 {
            let id = self.next_random() as u16;
            if !self.ids.contains_key(&id) {
                return Some(id);
            }
        }
        let start = self.next_random() as u16;
        (0..=u16::MAX).map(|i| start.wrapping_add(i)).find(|id| !self.ids.contains_key(id))
    }

    fn next_random(&mut self) -> u64 {
        self.rng.u64()
    }

    pub fn has_upstreams(&self) -> bool {
        !self.cfg.upstreams.is_empty()
    }

    /// When an upstream last answered and when an attempt last timed out (`None`: never).
    pub fn upstream_health(&self) -> (Option<Instant>, Option<Instant>) {
        (self.last_answer, self.last_timeout)
    }

    /// Keys the query ids with `seed` (from the router's seed, itself from the kernel).
    pub fn reseed(&mut self, seed: crate::entropy::Seed) {
        self.rng = crate::entropy::Csprng::new(seed);
    }

    /// Removes the pending query for `key`, its ids and timer.
    fn take_pending(&mut self, key: &QKey) -> Option<Pending> {
        let p = self.pending.remove(key)?;
        self.timers.remove(&p.timer);
        for (_, id, _) in &p.attempts {
            self.ids.remove(id);
        }
        Some(p)
    }

    /// Every upstream failed: SERVFAIL to all waiters.
    fn finish_failed(&mut self, key: &QKey, out: &mut Vec<Action>) {
        if let Some(p) = self.take_pending(key) {
            for w in &p.waiters {
                self.respond_empty(w, ResponseCode::ServFail, out);
            }
        }
    }

    /// An upstream's answer (UDP payload from `from`). Matched by source, id and question to a
    /// pending query; anything else is ignored. Cached per the module's rules, then relayed to
    /// every waiting client. A truncated answer is relayed as it is (TC set), not cached.
    pub fn upstream_answer(&mut self, now: Instant, from: SocketAddr, payload: &[u8], out: &mut Vec<Action>) {
        // We advertise MAX_UDP upstream: anything bigger is not an answer to us, and would let
        // one datagram grow the cache out of proportion.
        if payload.len() > MAX_UDP {
            self.counters.upstream_ignored += 1;
            return;
        }
        let Some((key, msg)) = self.match_answer(from, payload) else {
            self.counters.upstream_ignored += 1;
            return;
        };
        self.counters.upstream_answers += 1;
        self.last_answer = Some(now);
        let id = msg.metadata.id;
        let sent = self.pending.get(&key).and_then(|p| p.attempts.iter().find(|a| a.1 == id).map(|a| a.2));
        if let Some(sent) = sent {
            let ms = now.since(sent).as_millis() as u64;
            self.counters.upstream_latency_sum_ms += ms;
            if let Some(b) = LATENCY_BUCKETS_MS.iter().position(|&b| ms <= b) {
                self.counters.upstream_latency[b] += 1;
            }
        }
        let rcode = msg.metadata.response_code;
        if matches!(rcode, ResponseCode::ServFail | ResponseCode::Refused | ResponseCode::NotImp | ResponseCode::FormErr)
            && self.send_attempt(now, &key, out)
        {
            return;
        }
        if matches!(rcode, ResponseCode::NoError | ResponseCode::NXDomain) {
            if let Some(i) = self.cfg.upstreams.iter().position(|u| *u == from) {
                self.preferred = i;
            }
        }
        let Some(p) = self.take_pending(&key) else { return };
        let tc = msg.metadata.truncation;
        let s = Sections { rcode, answers: msg.answers, authorities: msg.authorities, additionals: msg.additionals };
        if let Some(ttl) = cache_ttl(&s, tc) {
            self.cache.insert(now, key, ttl, s.clone());
        }
        for w in &p.waiters {
            self.respond(w, rcode, false, tc, s.clone(), out);
        }
    }

    /// The pending query an upstream datagram answers, if it is a well-formed answer from the
    /// right upstream with a live id and the same question.
    fn match_answer(&self, from: SocketAddr, payload: &[u8]) -> Option<(QKey, Message)> {
        let h = RawHeader::parse(payload)?;
        if !h.qr || h.opcode != 0 || h.qdcount != 1 {
            return None;
        }
        let key = self.ids.get(&h.id)?;
        let p = self.pending.get(key)?;
        if !p.attempts.iter().any(|&(i, id, _)| id == h.id && self.cfg.upstreams.get(i) == Some(&from)) {
            return None;
        }
        let msg = Message::from_vec(payload).ok()?;
        (msg.queries.len() == 1 && QKey::of(&msg.queries[0]) == *key).then(|| (key.clone(), msg))
    }

    /// Timers: upstream timeouts (retry the next upstream, then SERVFAIL to all waiters) and
    /// cache expiry.
    pub fn poll(&mut self, now: Instant, out: &mut Vec<Action>) {
        while let Some((&t, _)) = self.timers.first_key_value() {
            if t.0 > now {
                break;
            }
            let Some(key) = self.timers.remove(&t) else { break };
            self.counters.upstream_timeouts += 1;
            self.last_timeout = Some(now);
            if !self.send_attempt(now, &key, out) {
                self.finish_failed(&key, out);
            }
        }
        self.cache.expire(now);
    }

    /// When `poll` next has work (`Instant(u64::MAX)`: never).
    pub fn poll_at(&self) -> Instant {
        let t = self.timers.first_key_value().map_or(Instant(u64::MAX), |(&(t, _), _)| t);
        t.min(self.cache.next_expiry().unwrap_or(Instant(u64::MAX)))
    }

    fn respond_empty(&mut self, w: &Waiter, rcode: ResponseCode, out: &mut Vec<Action>) {
        self.respond(w, rcode, false, false, Sections::empty(rcode), out);
    }

    /// Sends `w` its answer: its id and question spelling, its EDNS, cut to its size limit.
    fn respond(&mut self, w: &Waiter, rcode: ResponseCode, aa: bool, tc: bool, mut s: Sections, out: &mut Vec<Action>) {
        // Owner names that spell the question are given the client's spelling (0x20 clients).
        for r in &mut s.answers {
            if r.name == w.question.name {
                r.name = w.question.name.clone();
            }
        }
        let mut m = Message::response(w.id, OpCode::Query);
        m.metadata.authoritative = aa;
        m.metadata.truncation = tc;
        m.metadata.recursion_desired = w.rd;
        m.metadata.recursion_available = true;
        m.metadata.checking_disabled = w.cd;
        m.metadata.response_code = rcode;
        m.queries.push(w.question.clone());
        m.answers = s.answers;
        m.authorities = s.authorities;
        m.additionals = s.additionals;
        if w.edns.is_some() {
            m.edns = Some(our_edns());
        }
        let limit = w.limit();
        let payload = match m.to_vec() {
            Ok(v) if v.len() <= limit => Some(v),
            Ok(_) => {
                self.counters.truncated += 1;
                m.metadata.truncation = true;
                None
            }
            Err(_) => {
                m.metadata.response_code = ResponseCode::ServFail;
                None
            }
        };
        let payload = payload.unwrap_or_else(|| {
            m.answers.clear();
            m.authorities.clear();
            m.additionals.clear();
            m.to_vec().ok().filter(|v| v.len() <= limit).unwrap_or_else(|| {
                m.metadata.response_code = ResponseCode::ServFail;
                header_bytes(&m)
            })
        });
        match m.metadata.response_code {
            ResponseCode::ServFail => self.counters.servfail += 1,
            ResponseCode::NXDomain => self.counters.nxdomain += 1,
            ResponseCode::Refused => self.counters.refused += 1,
            _ => {}
        }
        out.push(Action::Reply { client: w.client, payload });
    }
}

/// The 12-byte header of `m` with no sections (last resort when nothing else encodes).
fn header_bytes(m: &Message) -> Vec<u8> {
    let h = RawHeader { id: m.metadata.id, qr: true, opcode: 0, rd: m.metadata.recursion_desired, qdcount: 0 };
    let mut v = h.reply(m.metadata.response_code);
    if m.metadata.truncation {
        v[2] |= 0x02;
    }
    v
}

impl Sections {
    fn empty(rcode: ResponseCode) -> Sections {
        Sections { rcode, answers: Vec::new(), authorities: Vec::new(), additionals: Vec::new() }
    }
}

/// How long an upstream answer may be cached (seconds), or `None` for not at all.
fn cache_ttl(s: &Sections, truncated: bool) -> Option<u32> {
    if truncated {
        return None;
    }
    let min_answer = s.answers.iter().map(|r| r.ttl).min();
    let ttl = match s.rcode {
        ResponseCode::NoError if !s.answers.is_empty() => min_answer?.min(MAX_TTL),
        ResponseCode::NoError | ResponseCode::NXDomain => {
            let soa = s.authorities.iter().find_map(|r| match &r.data {
                RData::SOA(soa) => Some(r.ttl.min(soa.minimum)),
                _ => None,
            })?;
            soa.min(min_answer.unwrap_or(u32::MAX)).min(MAX_NEGATIVE_TTL)
        }
        _ => return None,
    };
    (ttl > 0).then_some(ttl)
}
