//! DHCP messages on the wire: what the server reads from a guest's request and how it builds
//! its replies. dhcproto does the decoding and encoding; this file only decides which bytes
//! reach its decoder and which options go into a reply.

use super::NetState;
use crate::wire::ethernet::MacAddr;
use dhcproto::v4::{DhcpOption, DhcpOptions, Flags, HType, Message, MessageType, Opcode, OptionCode, UnknownOption};
use dhcproto::{Decodable, Decoder, Encodable, Name};
use std::net::Ipv4Addr;

/// BOOTP's fixed header (op .. file) is 236 bytes, then the magic cookie.
const FIXED: usize = 236;
const OPTIONS: usize = FIXED + 4;
/// The smallest BOOTP message (RFC 1542 2.1); replies are zero-padded up to it.
pub(super) const MIN_LEN: usize = 300;
/// Without option 57 a client must accept 576-byte IP datagrams (RFC 2131 2).
const DEFAULT_MAX_IP: usize = 576;
/// IPv4 + UDP headers.
const IP_UDP: usize = 28;

/// The options the server reads, in the order they are handed to dhcproto: message type first,
/// the free-text hostname last, so that a bad option cannot hide the ones after it (dhcproto
/// stops decoding options at the first one it cannot decode).
const KEEP: [u8; 6] = [53, 54, 50, 61, 57, 12];

/// Returns a copy of `payload` holding only the options the server reads, each once (the
/// instances of a code concatenated, RFC 3396) and of a length dhcproto's decoder accepts;
/// `None` if the payload is not a DHCP message (too short, no magic cookie).
///
/// Why not hand dhcproto the guest's bytes as they are: its option decoders assert on some
/// lengths (options 80, 81, 94, 152-155 panic in debug builds on a bad length) and run
/// third-party name parsers (81, 88, 119) — code the server has no use for that a guest could
/// reach. Dropping the options first makes "any byte slice is Ok or Err" hold by construction.
pub(super) fn sanitize(payload: &[u8]) -> Option<Vec<u8>> {
    if payload.len() < OPTIONS || payload.get(FIXED..OPTIONS)? != dhcproto::v4::MAGIC {
        return None;
    }
    let mut vals: [Option<Vec<u8>>; KEEP.len()] = Default::default();
    let mut i = OPTIONS;
    while let Some(&code) = payload.get(i) {
        match code {
            0 => i += 1,
            255 => break,
            _ => {
                // A truncated option ends the list, as in dhcproto's own decoder.
                let Some(&len) = payload.get(i + 1) else { break };
                let Some(v) = payload.get(i + 2..i + 2 + len as usize) else { break };
                if let Some(k) = KEEP.iter().position(|&c| c == code) {
                    vals[k].get_or_insert_with(Vec::new).extend_from_slice(v);
                }
                i += 2 + len as usize;
            }
        }
    }
    let mut out = Vec::with_capacity(MIN_LEN);
    out.extend_from_slice(payload.get(..OPTIONS)?);
    for (k, v) in vals.iter().enumerate() {
        let (code, Some(v)) = (KEEP[k], v) else { continue };
        let ok = match code {
            53 => v.len() == 1,
            50 | 54 => v.len() == 4,
            57 => v.len() == 2,
            61 => !v.is_empty() && v.len() <= 255,
            12 => !v.is_empty() && v.len() <= 255 && std::str::from_utf8(v).is_ok(),
            _ => false,
        };
        if ok {
            out.push(code);
            out.push(v.len() as u8);
            out.extend_from_slice(v);
        }
    }
    out.push(255);
    Some(out)
}

/// What the server uses from a client's message.
pub(super) struct Request {
    pub msg: Message,
    pub mtype: MessageType,
    pub server_id: Option<Ipv4Addr>,
    pub requested: Option<Ipv4Addr>,
    pub client_id: Option<Vec<u8>>,
    pub hostname: Option<String>,
    pub max_size: Option<u16>,
}

/// Why a payload is not a request the server serves, before any lease logic.
pub(super) enum Reject {
    Malformed,
    ServerMessage,
    NotRequest,
}

pub(super) fn parse(payload: &[u8]) -> Result<Request, Reject> {
    let clean = sanitize(payload).ok_or(Reject::Malformed)?;
    let msg = Message::decode(&mut Decoder::new(&clean)).map_err(|_| Reject::Malformed)?;
    let mtype = msg.opts().msg_type();
    // Rogue servers first: a BOOTREPLY or a server message type from a guest.
    if msg.opcode() == Opcode::BootReply
        || matches!(mtype, Some(MessageType::Offer | MessageType::Ack | MessageType::Nak))
    {
        return Err(Reject::ServerMessage);
    }
    // Plain BOOTP (no message type) is not served.
    let mtype = mtype.ok_or(Reject::Malformed)?;
    if msg.opcode() != Opcode::BootRequest {
        return Err(Reject::NotRequest);
    }
    let opts = msg.opts();
    let ip = |code| match opts.get(code) {
        Some(DhcpOption::ServerIdentifier(a)) | Some(DhcpOption::RequestedIpAddress(a)) => Some(*a),
        _ => None,
    };
    let server_id = ip(OptionCode::ServerIdentifier);
    let requested = ip(OptionCode::RequestedIpAddress);
    let client_id = match opts.get(OptionCode::ClientIdentifier) {
        Some(DhcpOption::ClientIdentifier(c)) => Some(c.clone()),
        _ => None,
    };
    let hostname = match opts.get(OptionCode::Hostname) {
        Some(DhcpOption::Hostname(h)) => Some(h.clone()),
        _ => None,
    };
    let max_size = match opts.get(OptionCode::MaxMessageSize) {
        Some(DhcpOption::MaxMessageSize(n)) => Some(*n),
        _ => None,
    };
    Ok(Request { msg, mtype, server_id, requested, client_id, hostname, max_size })
}

/// The client's hardware address if chaddr is a plain Ethernet address.
pub(super) fn chaddr_mac(m: &Message) -> Option<MacAddr> {
    if m.htype() != HType::Eth || m.hlen() != 6 {
        return None;
    }
    // hlen is 6 here, so chaddr() cannot slice past its 16 bytes.
    MacAddr::from_bytes(m.chaddr())
}

/// A guest-supplied hostname (option 12) as the server keeps it: one valid DNS label
/// (letters, digits, inner hyphens, 1-63 bytes), lowercased. Anything else is ignored.
pub(super) fn sanitize_hostname(h: &str) -> Option<String> {
    let b = h.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 63
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        && b.first() != Some(&b'-')
        && b.last() != Some(&b'-');
    ok.then(|| h.to_ascii_lowercase())
}

/// RFC 3442 option 121 payload: per route the prefix length, the significant octets of the
/// destination, then the router.
pub(super) fn classless_routes(routes: &[(crate::config::types::Ipv4Net, Ipv4Addr)]) -> Vec<u8> {
    let mut v = Vec::new();
    for (dst, via) in routes {
        let len = dst.prefix.min(32);
        let sig = (len as usize).div_ceil(8);
        v.push(len);
        let masked = u32::from(dst.addr) & dst.mask();
        v.extend_from_slice(&masked.to_be_bytes()[..sig]);
        v.extend_from_slice(&via.octets());
    }
    v
}

/// What kind of reply to build.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Offer,
    Ack,
    /// ACK to an INFORM: configuration only, no address, no lease times.
    InformAck,
    Nak,
}

/// Builds a reply to `req`: header fields per RFC 2131 table 3, the network's options, padded
/// to [`MIN_LEN`]. `None` only if encoding fails (it does not for the values used here).
/// `lease_secs` overrides the network's lease time (a renewal answered while the lease log
/// cannot be written is told only what is on disk).
pub(super) fn reply(ns: &NetState, req: &Request, kind: Kind, yiaddr: Ipv4Addr, hostname: Option<&str>, lease_secs: Option<u32>) -> Option<Vec<u8>> {
    let cfg = &ns.cfg;
    let q = &req.msg;
    // Built from the request (xid, chaddr, magic) rather than Message::default(), which
    // draws a random xid: the server uses no randomness.
    let mut m = q.clone();
    m.set_opcode(Opcode::BootReply)
        .set_htype(HType::Eth)
        .set_hops(0)
        .set_secs(0)
        .set_flags(Flags::new(u16::from(q.flags()) & 0x8000))
        .clear_addrs()
        .set_chaddr(q.chaddr().get(..6).unwrap_or(&[0; 6]));
    m.clear_sname();
    m.clear_fname();
    let mtype = match kind {
        Kind::Offer => MessageType::Offer,
        Kind::Ack | Kind::InformAck => MessageType::Ack,
        Kind::Nak => MessageType::Nak,
    };
    let mut o = DhcpOptions::new();
    o.insert(DhcpOption::MessageType(mtype));
    o.insert(DhcpOption::ServerIdentifier(cfg.gateway));
    if kind == Kind::Nak {
        o.insert(DhcpOption::Message("requested address not available".into()));
    } else {
        if matches!(kind, Kind::Ack | Kind::InformAck) {
            m.set_ciaddr(q.ciaddr());
        }
        if kind != Kind::InformAck {
            m.set_yiaddr(yiaddr);
            let l = lease_secs.unwrap_or(cfg.lease_secs);
            o.insert(DhcpOption::AddressLeaseTime(l));
            o.insert(DhcpOption::Renewal((l as u64 / 2) as u32));
            o.insert(DhcpOption::Rebinding((l as u64 * 7 / 8) as u32));
        }
        o.insert(DhcpOption::SubnetMask(Ipv4Addr::from(cfg.cidr.mask())));
        o.insert(DhcpOption::Router(vec![cfg.gateway]));
        o.insert(DhcpOption::DomainNameServer(vec![cfg.gateway]));
        o.insert(DhcpOption::InterfaceMtu(cfg.mtu));
        o.insert(DhcpOption::BroadcastAddr(cfg.cidr.broadcast()));
        if let Some(d) = cfg.domain.as_deref().filter(|d| !d.is_empty()) {
            o.insert(DhcpOption::DomainName(d.to_string()));
            if let Ok(n) = Name::from_ascii(d) {
                o.insert(DhcpOption::DomainSearch(vec![n]));
            }
        }
        if !cfg.routes.is_empty() {
            let data = classless_routes(&cfg.routes);
            o.insert(DhcpOption::Unknown(UnknownOption::new(OptionCode::ClasslessStaticRoute, data)));
        }
        if let Some(h) = hostname {
            o.insert(DhcpOption::Hostname(h.to_string()));
        }
    }
    m.set_opts(o);
    // The largest reply the client takes (and the network carries); over it, give up the
    // search list, then the domain name, rather than the addresses and routes.
    let max_ip = req.max_size.map_or(DEFAULT_MAX_IP, |n| n as usize).max(DEFAULT_MAX_IP).min(cfg.mtu.max(576) as usize);
    let limit = max_ip - IP_UDP;
    let mut bytes = m.to_vec().ok()?;
    for code in [OptionCode::DomainSearch, OptionCode::DomainName] {
        if bytes.len() <= limit {
            break;
        }
        m.opts_mut().remove(code);
        bytes = m.to_vec().ok()?;
    }
    if bytes.len() < MIN_LEN {
        bytes.resize(MIN_LEN, 0);
    }
    Some(bytes)
}
