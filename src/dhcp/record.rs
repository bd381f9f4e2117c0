//! The lease log's line format. One record per line, space-separated words, ending with a
//! checksum of the rest of the line so that a torn write (kill -9 in the middle of a line) or
//! a corrupt line is recognised and skipped instead of being half-believed:
//!
//! ```text
//! bind <net> <ip> <mac> <expires> <state> <client-id hex or -> <hostname or -> *<fnv1a32 hex>
//! free <net> <ip> *<fnv1a32 hex>
//! decline <net> <ip> <until> *<fnv1a32 hex>
//! ```
//!
//! Hostnames are written as they are when they only hold `[A-Za-z0-9._-]`; any other byte (and
//! a name that is exactly `-`) is written as `%XX`, so a line never holds a space or a newline.

use super::{Lease, LeaseRecord, LeaseState};
use crate::wire::ethernet::MacAddr;
use std::fmt::Write;
use std::net::Ipv4Addr;

impl LeaseRecord {
    /// One line of text, without the trailing newline.
    pub fn encode(&self) -> String {
        let mut s = String::new();
        // Writing to a String cannot fail.
        let _ = match self {
            LeaseRecord::Bind(l) => write!(
                s,
                "bind {} {} {} {} {} {} {}",
                l.net,
                l.ip,
                l.mac,
                l.expires,
                state_name(l.state),
                l.client_id.as_deref().map(hex).unwrap_or_else(|| "-".into()),
                l.hostname.as_deref().map(escape).unwrap_or_else(|| "-".into()),
            ),
            LeaseRecord::Free { net, ip } => write!(s, "free {net} {ip}"),
            LeaseRecord::Decline { net, ip, until } => write!(s, "decline {net} {ip} {until}"),
        };
        let sum = fnv1a(s.as_bytes());
        let _ = write!(s, " *{sum:08x}");
        s
    }

    /// Parses one line (a trailing `\r`/`\n` is tolerated). `None` for anything that is not a
    /// complete, intact record.
    pub fn decode(line: &str) -> Option<LeaseRecord> {
        let line = line.trim_end_matches(['\n', '\r']);
        let (body, sum) = line.rsplit_once(" *")?;
        if sum.len() != 8 || u32::from_str_radix(sum, 16).ok()? != fnv1a(body.as_bytes()) {
            return None;
        }
        let w: Vec<&str> = body.split(' ').collect();
        match w.as_slice() {
            ["bind", net, ip, mac, expires, state, cid, host] => Some(LeaseRecord::Bind(Lease {
                net: net.parse().ok()?,
                ip: ip.parse::<Ipv4Addr>().ok()?,
                mac: mac.parse::<MacAddr>().ok()?,
                expires: expires.parse().ok()?,
                state: parse_state(state)?,
                client_id: if *cid == "-" { None } else { Some(unhex(cid)?) },
                hostname: if *host == "-" { None } else { Some(unescape(host)?) },
            })),
            ["free", net, ip] => Some(LeaseRecord::Free { net: net.parse().ok()?, ip: ip.parse().ok()? }),
            ["decline", net, ip, until] => {
                Some(LeaseRecord::Decline { net: net.parse().ok()?, ip: ip.parse().ok()?, until: until.parse().ok()? })
            }
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
