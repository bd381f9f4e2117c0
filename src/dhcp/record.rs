//! The lease log's line format. One record per line, space-separated words, ending with a
//! checksum of the rest of the line so that a torn write (kill -9 in the middle of a line) or
//! a corrupt line is recognised and skipped instead of being half-believed:
//!
//! ```text
//! lease <net> <ip> <mac> <expires> <state> <client-id hex or -> <hostname or -> *<fnv1a32 hex>
//! release <net> <ip> *<fnv1a32 hex>
//! quarantine <net> <ip> <until> *<fnv1a32 hex>
//! ```
//!
//! `<net>` is the network's name, so a config that adds, removes or reorders networks keeps
//! every lease with its network. Logs written before names were used (`bind`, `free`,
//! `decline`, keyed by the network's position in the config) are still read, against the
//! config's order at that start, and the start-up compaction rewrites them by name.
//!
//! Hostnames are written as they are when they only hold `[A-Za-z0-9._-]`; any other byte (and
//! a name that is exactly `-`) is written as `%XX`, so a line never holds a space or a newline.

use super::{Lease, LeaseRecord, LeaseState};
use crate::wire::ethernet::MacAddr;
use std::fmt::Write;
use std::net::Ipv4Addr;

impl LeaseRecord {
    /// One line of text, without the trailing newline; `net` is the record's network's name.
    pub fn encode(&self, net: &str) -> String {
        let mut s = String::new();
        // Writing to a String cannot fail.
        let _ = match self {
            LeaseRecord::Bind(l) => write!(
                s,
                "lease {} {} {} {} {} {} {}",
                net,
                l.ip,
                l.mac,
                l.expires,
                state_name(l.state),
                l.client_id.as_deref().map(hex).unwrap_or_else(|| "-".into()),
                l.hostname.as_deref().map(escape).unwrap_or_else(|| "-".into()),
            ),
            LeaseRecord::Free { ip, .. } => write!(s, "release {net} {ip}"),
            LeaseRecord::Decline { ip, until, .. } => write!(s, "quarantine {net} {ip} {until}"),
        };
        let sum = fnv1a(s.as_bytes());
        let _ = write!(s, " *{sum:08x}");
        s
    }

    /// Parses one line (a trailing `\r`/`\n` is tolerated); `net` gives a network name's
    /// index in the running config. `None` for anything that is not a complete, intact record,
    /// or names a network that is not there.
    pub fn decode(line: &str, net: impl Fn(&str) -> Option<usize>) -> Option<LeaseRecord> {
        let line = line.trim_end_matches(['\n', '\r']);
        let (body, sum) = line.rsplit_once(" *")?;
        if sum.len() != 8 || u32::from_str_radix(sum, 16).ok()? != fnv1a(body.as_bytes()) {
            return None;
        }
        let w: Vec<&str> = body.split(' ').collect();
        let (kind, rest) = w.split_first()?;
        let (name, rest) = rest.split_first()?;
        let net = match *kind {
            "lease" | "release" | "quarantine" => net(name)?,
            // The format before names: the network's position in the config.
            "bind" | "free" | "decline" => name.parse().ok()?,
            _ => return None,
        };
        match (*kind, rest) {
            ("lease" | "bind", [ip, mac, expires, state, cid, host]) => Some(LeaseRecord::Bind(Lease {
                net,
                ip: ip.parse::<Ipv4Addr>().ok()?,
                mac: mac.parse::<MacAddr>().ok()?,
                expires: expires.parse().ok()?,
                state: parse_state(state)?,
                client_id: if *cid == "-" { None } else { Some(unhex(cid)?) },
                hostname: if *host == "-" { None } else { Some(unescape(host)?) },
            })),
            ("release" | "free", [ip]) => Some(LeaseRecord::Free { net, ip: ip.parse().ok()? }),
            ("quarantine" | "decline", [ip, until]) => Some(LeaseRecord::Decline { net, ip: ip.parse().ok()?, until: until.parse().ok()? }),
            _ => None,
        }
    }
}

fn state_name(s: LeaseState) -> &'static str {
    match s {
        LeaseState::Offered => "offered",
        LeaseState::Bound => "bound",
        LeaseState::Released => "released",
        LeaseState::Declined => "declined",
    }
}

fn parse_state(s: &str) -> Option<LeaseState> {
    Some(match s {
        "offered" => LeaseState::Offered,
        "bound" => LeaseState::Bound,
        "released" => LeaseState::Released,
        "declined" => LeaseState::Declined,
        _ => return None,
    })
}

/// 32-bit FNV-1a: enough to tell a torn or bit-flipped line from an intact one.
fn fnv1a(b: &[u8]) -> u32 {
    b.iter().fold(0x811c_9dc5u32, |h, &x| (h ^ x as u32).wrapping_mul(0x0100_0193))
}

fn hex(b: &[u8]) -> String {
    if b.is_empty() {
        // An empty client id is not "none": keep the two apart.
        return "%".into();
    }
    b.iter().fold(String::with_capacity(b.len() * 2), |mut s, x| {
        let _ = write!(s, "{x:02x}");
        s
    })
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s == "%" {
        return Some(Vec::new());
    }
    if !s.len().is_multiple_of(2) || !s.is_ascii() {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

fn escape(h: &str) -> String {
    let plain = |c: u8| c.is_ascii_alphanumeric() || c == b'.' || c == b'_' || c == b'-';
    let mut s = String::with_capacity(h.len());
    for &c in h.as_bytes() {
        if plain(c) && h != "-" {
            s.push(c as char);
        } else {
            let _ = write!(s, "%{c:02x}");
        }
    }
    if s.is_empty() {
        // An empty hostname: a lone '%' escape marker that decodes to "".
        s.push('%');
    }
    s
}

fn unescape(s: &str) -> Option<String> {
    if s == "%" {
        return Some(String::new());
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let h = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(h, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}
