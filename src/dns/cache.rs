//! The answer cache: one entry per question (name, type, class), holding the sections of the
//! upstream's answer and the time it was stored.
//!
//! Invariants: at most `cap` entries; every entry has exactly one timer, keyed by its expiry
//! time, and the entry is never served at or after it; an entry only ever answers the very
//! question it was stored under (so a record in an answer cannot poison another name).
//! When full, the entry expiring soonest is evicted (expired ones first, naturally).

use super::QKey;
use crate::time::Instant;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::Record;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

#[derive(Debug)]
struct Entry {
    rcode: ResponseCode,
    answers: Vec<Record>,
    authorities: Vec<Record>,
    additionals: Vec<Record>,
    stored: Instant,
    ttl: u32,
    timer: (Instant, u64),
}

/// An answer's sections: what is stored, and what a hit returns (TTLs decremented by age).
#[derive(Debug, Clone)]
pub struct Sections {
    pub rcode: ResponseCode,
    pub answers: Vec<Record>,
    pub authorities: Vec<Record>,
    pub additionals: Vec<Record>,
}

#[derive(Debug)]
pub struct Cache {
    map: HashMap<QKey, Entry>,
    timers: BTreeMap<(Instant, u64), QKey>,
    cap: usize,
    seq: u64,
    pub evictions: u64,
}

impl Cache {
    pub fn new(cap: usize) -> Cache {
        Cache { map: HashMap::new(), timers: BTreeMap::new(), cap, seq: 0, evictions: 0 }
    }

    pub fn entries(&self) -> usize {
        self.map.len()
    }

    pub fn next_expiry(&self) -> Option<Instant> {
        self.timers.first_key_value().map(|(&(t, _), _)| t)
    }

    fn remove(&mut self, key: &QKey) {
        if let Some(e) = self.map.remove(key) {
            self.timers.remove(&e.timer);
        }
    }

    /// Drops every entry whose expiry is at or before `now`.
    pub fn expire(&mut self, now: Instant) {
        while let Some((&(t, s), _)) = self.timers.first_key_value() {
            if t > now {
                break;
            }
            if let Some(key) = self.timers.remove(&(t, s)) {
                self.map.remove(&key);
            }
        }
    }

    pub fn get(&mut self, now: Instant, key: &QKey) -> Option<Sections> {
        let e = self.map.get(key)?;
        if e.timer.0 <= now {
            self.remove(key);
            return None;
        }
        let age = u32::try_from(now.since(e.stored).as_secs()).unwrap_or(u32::MAX);
        let fix = |rs: &[Record]| -> Vec<Record> {
            rs.iter()
                .map(|r| {
                    let mut r = r.clone();
                    r.ttl = r.ttl.min(e.ttl).saturating_sub(age);
                    r
                })
                .collect()
        };
        Some(Sections {
            rcode: e.rcode,
            answers: fix(&e.answers),
            authorities: fix(&e.authorities),
            additionals: fix(&e.additionals),
        })
    }

    /// Stores an answer for `ttl` seconds (> 0), replacing any entry for the same question.
    pub fn insert(
        &mut self,
        now: Instant,
        key: QKey,
        ttl: u32,
        data: Sections,
    ) {
        if self.cap == 0 || ttl == 0 {
            return;
        }
        self.remove(&key);
        while self.map.len() >= self.cap {
            let Some((&t, _)) = self.timers.first_key_value() else { break };
            if let Some(k) = self.timers.remove(&t) {
                self.map.remove(&k);
                if t.0 > now {
                    self.evictions += 1;
                }
            }
        }
        self.seq += 1;
        let timer = (now + Duration::from_secs(u64::from(ttl)), self.seq);
        self.timers.insert(timer, key.clone());
        self.map.insert(
            key,
            Entry {
                rcode: data.rcode,
                answers: data.answers,
                authorities: data.authorities,
                additionals: data.additionals,
                stored: now,
                ttl,
                timer,
            },
        );
    }
}
