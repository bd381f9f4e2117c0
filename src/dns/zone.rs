//! The local authority: the account's forward domains (host names from reservations and leases)
//! and the reverse (`in-addr.arpa`) zones of its guest networks.
//!
//! A name is *local* when it lies in a configured domain, in the reverse zone of a guest network,
//! or is itself in the host table. Local names are answered from here and never forwarded:
//! an unknown name inside a zone is NXDOMAIN; a name that exists (a host, the zone apex, an
//! empty non-terminal above a host) but has no data of the asked type is NOERROR with no answer.
//! Negative answers carry the zone's SOA in the authority section (RFC 2308), whose TTL and
//! MINIMUM are [`NEGATIVE_TTL`].
//!
//! Reverse zones are octet-aligned: a /20 network owns the sixteen /24 zones it covers, so the
//! server never claims a reverse name outside its networks.

use crate::config::types::Ipv4Net;
use hickory_proto::op::{Query, ResponseCode};
use hickory_proto::rr::rdata::{A, PTR, SOA};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;

/// TTL of local A and PTR records. Short: leases move.
pub const LOCAL_TTL: u32 = 60;
/// TTL and MINIMUM of the local zones' SOA, hence the negative TTL of local NXDOMAIN/NODATA.
pub const NEGATIVE_TTL: u32 = 60;

/// An answer from the local authority (always authoritative).
#[derive(Debug)]
pub struct LocalAnswer {
    pub rcode: ResponseCode,
    pub answers: Vec<Record>,
    pub authorities: Vec<Record>,
}

#[derive(Debug, Default)]
pub struct Zones {
    /// Lower-case, fully-qualified, longest first (so the innermost zone wins).
    domains: Vec<Name>,
    nets: Vec<Ipv4Net>,
    /// Host name (lower-case fqdn) -> addresses, in insertion order, no duplicates.
    hosts: HashMap<Name, Vec<Ipv4Addr>>,
    /// Names strictly between a domain apex and a host in it (empty non-terminals).
    ents: HashSet<Name>,
    /// Address -> host names (as given), for PTR.
    ptrs: HashMap<Ipv4Addr, Vec<Name>>,
    /// SOA serial: bumped on every host table change.
    serial: u32,
}

/// `name` made lower-case and fully qualified: the form every map here is keyed by.
pub fn canonical(name: &Name) -> Name {
    let mut n = name.to_lowercase();
    n.set_fqdn(true);
    n
}

fn parse_name(s: &str) -> Option<Name> {
    let n = Name::from_ascii(s.trim_end_matches('.')).ok()?;
    Some(canonical(&n))
}

impl Zones {
    pub fn new(domains: &[String], nets: &[Ipv4Net]) -> Zones {
        let mut ds: Vec<Name> = domains
            .iter()
            .filter_map(|d| parse_name(d))
            // The root would swallow every name and stop all forwarding.
            .filter(|d| d.num_labels() > 0)
            .collect();
        ds.sort_by_key(|d| std::cmp::Reverse(d.num_labels()));
        ds.dedup();
        Zones { domains: ds, nets: nets.to_vec(), serial: 1, ..Default::default() }
    }

    pub fn set_hosts(&mut self, hosts: Vec<(String, Ipv4Addr)>) {
        self.hosts.clear();
        self.ents.clear();
        self.ptrs.clear();
        for (s, ip) in hosts {
            let Some(key) = parse_name(&s).filter(|k| k.num_labels() > 0) else { continue };
            let addrs = self.hosts.entry(key.clone()).or_default();
            if !addrs.contains(&ip) {
                addrs.push(ip);
            }
            let names = self.ptrs.entry(ip).or_default();
            if !names.contains(&key) {
                names.push(key.clone());
            }
            if let Some(d) = self.domain_of(&key).cloned() {
                let mut up = key.base_name();
                while up.num_labels() > d.num_labels() {
                    let next = up.base_name();
                    self.ents.insert(canonical(&up));
                    up = next;
                }
            }
        }
        self.serial = self.serial.wrapping_add(1).max(1);
    }

    fn domain_of(&self, name: &Name) -> Option<&Name> {
        self.domains.iter().find(|d| d.zone_of(name))
    }

    fn soa(&self, apex: &Name) -> Record {
        let rname = apex.prepend_label("hostmaster").unwrap_or_else(|_| apex.clone());
        let soa = SOA::new(apex.clone(), rname, self.serial, 3600, 600, 86400, NEGATIVE_TTL);
        Record::from_rdata(apex.clone(), NEGATIVE_TTL, RData::SOA(soa))
    }

    /// The local answer to `q`, or `None` when the name is not ours (forward it).
    pub fn lookup(&self, q: &Query) -> Option<LocalAnswer> {
        let name = &q.name;
        if let Some(rev) = self.reverse(name) {
            return Some(self.answer(q, rev));
        }
        let key = canonical(name);
        let apex = self.domain_of(&key).cloned();
        let found = if let Some(addrs) = self.hosts.get(&key) {
            Found::Host(addrs.iter().map(|&a| RData::A(A(a))).collect())
        } else if apex.as_ref().is_some_and(|a| *a == key) || self.ents.contains(&key) {
            Found::Empty
        } else if apex.is_some() {
            Found::NxDomain
        } else {
            return None;
        };
        Some(self.answer(q, Local { apex, apex_is_name: false, found }))
    }

    fn answer(&self, q: &Query, l: Local) -> LocalAnswer {
        let mut a = LocalAnswer { rcode: ResponseCode::NoError, answers: Vec::new(), authorities: Vec::new() };
        if !matches!(q.query_class, DNSClass::IN | DNSClass::ANY) {
            a.rcode = ResponseCode::Refused;
            return a;
        }
        let apex_here = l.apex_is_name || l.apex.as_ref().is_some_and(|ap| *ap == canonical(&q.name));
        match l.found {
            Found::NxDomain => a.rcode = ResponseCode::NXDomain,
            Found::Host(data) => {
                for d in data {
                    if q.query_type == d.record_type() || q.query_type == RecordType::ANY {
                        a.answers.push(Record::from_rdata(q.name.clone(), LOCAL_TTL, d));
                    }
                }
            }
            Found::Empty => {}
        }
        if a.rcode == ResponseCode::NoError
            && apex_here
            && matches!(q.query_type, RecordType::SOA | RecordType::ANY)
        {
            if let Some(ap) = &l.apex {
                let mut soa = self.soa(ap);
                soa.name = q.name.clone();
                a.answers.push(soa);
            }
        }
        if a.answers.is_empty() {
            if let Some(ap) = &l.apex {
                a.authorities.push(self.soa(ap));
            }
        }
        a
    }

    /// Classifies a name under `in-addr.arpa` against the guest networks' reverse zones.
    fn reverse(&self, name: &Name) -> Option<Local> {
        let labels: Vec<&[u8]> = name.iter().collect();
        let n = labels.len();
        if n < 2 || !labels[n - 1].eq_ignore_ascii_case(b"arpa") || !labels[n - 2].eq_ignore_ascii_case(b"in-addr") {
            return None;
        }
        // Most significant octet first.
        let octets: Vec<&[u8]> = labels[..n - 2].iter().rev().copied().collect();
        for net in &self.nets {
            let m = (net.prefix as usize).div_ceil(8).min(4);
            if octets.len() < m {
                continue;
            }
            let mut prefix = [0u8; 4];
            let mut ok = true;
            for (i, o) in octets[..m].iter().enumerate() {
                match octet(o) {
                    Some(v) => prefix[i] = v,
                    None => ok = false,
                }
            }
            if !ok || u32::from(Ipv4Addr::from(prefix)) & net.mask() != u32::from(net.addr) {
                continue;
            }
            // Ours: the apex is the m-octet name.
            let apex = Name::from_labels(labels[n - 2 - m..].iter().copied()).ok().map(|a| canonical(&a));
            let apex_is_name = octets.len() == m;
            let parsed: Option<Vec<u8>> = octets.iter().map(|o| octet(o)).collect();
            let found = match parsed {
                Some(v) if v.len() == 4 => {
                    let ip = Ipv4Addr::new(v[0], v[1], v[2], v[3]);
                    match self.ptrs.get(&ip) {
                        Some(names) => Found::Host(names.iter().map(|h| RData::PTR(PTR(h.clone()))).collect()),
                        None => Found::NxDomain,
                    }
                }
                // The apex or a name between it and the host names.
                Some(v) if v.len() < 4 => Found::Empty,
                _ => Found::NxDomain,
            };
            return Some(Local { apex, apex_is_name, found });
        }
        None
    }
}

struct Local {
    apex: Option<Name>,
    apex_is_name: bool,
    found: Found,
}

enum Found {
    NxDomain,
    /// The name exists with no records.
    Empty,
    /// The name's records (A or PTR).
    Host(Vec<RData>),
}

/// A canonical decimal octet label: 1-3 digits, no leading zero, at most 255.
fn octet(l: &[u8]) -> Option<u8> {
    if l.is_empty() || l.len() > 3 || !l.iter().all(u8::is_ascii_digit) || (l.len() > 1 && l[0] == b'0') {
        return None;
    }
    let v = l.iter().fold(0u32, |acc, d| acc * 10 + u32::from(d - b'0'));
    u8::try_from(v).ok()
}
