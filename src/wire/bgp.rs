//! BGP-4 messages (RFC 4271) with what L2VPN EVPN over VXLAN needs: the OPEN and its
//! capabilities (multiprotocol RFC 4760, route refresh RFC 2918, 4-octet AS RFC 6793), UPDATE
//! with MP_REACH / MP_UNREACH for AFI 25 / SAFI 70 carrying EVPN routes of type 2 (MAC/IP
//! advertisement) and 3 (inclusive multicast Ethernet tag), the extended communities
//! (route target, encapsulation RFC 9012, MAC mobility RFC 7432 §7.7), the PMSI tunnel
//! attribute (RFC 6514), NOTIFICATION, KEEPALIVE and ROUTE-REFRESH.
//!
//! Bytes from a neighbour enter only through [`frame`] (header checks) and [`parse`]; every
//! read is bounds-checked and a malformed message becomes the [`Error`] its NOTIFICATION
//! carries (code and subcode), never a panic. The VNI is the whole 3-octet label field
//! (RFC 8365 §5.1.3), as FRR encodes it. Nothing here knows about sessions or time.

use std::net::Ipv4Addr;

pub const MARKER: [u8; 16] = [0xff; 16];
pub const HEADER_LEN: usize = 19;
/// The largest message (RFC 4271 §4.1; no extended messages are negotiated).
pub const MAX_LEN: usize = 4096;
pub const AFI_L2VPN: u16 = 25;
pub const SAFI_EVPN: u8 = 70;
/// The 2-octet AS number a 4-octet AS speaker puts in its OPEN when its own does not fit.
pub const AS_TRANS: u16 = 23456;

pub mod kind {
    pub const OPEN: u8 = 1;
    pub const UPDATE: u8 = 2;
    pub const NOTIFICATION: u8 = 3;
    pub const KEEPALIVE: u8 = 4;
    pub const ROUTE_REFRESH: u8 = 5;
}

/// NOTIFICATION error codes and the subcodes this speaker sends.
pub mod code {
    pub const HEADER: u8 = 1;
    pub const HEADER_NOT_SYNC: u8 = 1;
    pub const HEADER_BAD_LENGTH: u8 = 2;
    pub const HEADER_BAD_TYPE: u8 = 3;
    pub const OPEN: u8 = 2;
    pub const OPEN_VERSION: u8 = 1;
    pub const OPEN_BAD_AS: u8 = 2;
    pub const OPEN_BAD_ID: u8 = 3;
    pub const OPEN_BAD_HOLD: u8 = 6;
    pub const UPDATE: u8 = 3;
    pub const UPDATE_MALFORMED_ATTRS: u8 = 1;
    pub const UPDATE_ATTR_LENGTH: u8 = 5;
    pub const UPDATE_BAD_NLRI: u8 = 10;
    pub const UPDATE_MALFORMED_AS_PATH: u8 = 11;
    pub const HOLD_EXPIRED: u8 = 4;
    pub const FSM: u8 = 5;
    pub const CEASE: u8 = 6;
    pub const CEASE_MAX_PREFIXES: u8 = 1;
    pub const CEASE_SHUTDOWN: u8 = 2;
    pub const CEASE_CONFIG_CHANGE: u8 = 6;
}

/// Path attribute type codes.
mod attr {
    pub const ORIGIN: u8 = 1;
    pub const AS_PATH: u8 = 2;
    pub const LOCAL_PREF: u8 = 5;
    pub const MP_REACH: u8 = 14;
    pub const MP_UNREACH: u8 = 15;
    pub const EXT_COMMUNITIES: u8 = 16;
    pub const PMSI_TUNNEL: u8 = 22;
    pub const OPTIONAL: u8 = 0x80;
    pub const TRANSITIVE: u8 = 0x40;
    pub const EXTENDED_LEN: u8 = 0x10;
}

/// What a NOTIFICATION would say about a message that could not be taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Error {
    pub code: u8,
    pub subcode: u8,
}

impl Error {
    const fn new(code: u8, subcode: u8) -> Self {
        Error { code, subcode }
    }
    fn update(subcode: u8) -> Self {
        Error::new(code::UPDATE, subcode)
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (code {} subcode {})", describe(self.code, self.subcode), self.code, self.subcode)
    }
}

/// A NOTIFICATION's code and subcode in words (`show bgp`, logs).
pub fn describe(code: u8, subcode: u8) -> &'static str {
    match (code, subcode) {
        (1, 1) => "connection not synchronized",
        (1, 2) => "bad message length",
        (1, 3) => "bad message type",
        (1, _) => "message header error",
        (2, 1) => "unsupported version number",
        (2, 2) => "bad peer AS",
        (2, 3) => "bad BGP identifier",
        (2, 6) => "unacceptable hold time",
        (2, _) => "OPEN message error",
        (3, 1) => "malformed attribute list",
        (3, 5) => "attribute length error",
        (3, 10) => "invalid network field",
        (3, 11) => "malformed AS_PATH",
        (3, _) => "UPDATE message error",
        (4, _) => "hold timer expired",
        (5, _) => "finite state machine error",
        (6, 1) => "cease: maximum number of prefixes reached",
        (6, 2) => "cease: administrative shutdown",
        (6, 3) => "cease: peer de-configured",
        (6, 4) => "cease: administrative reset",
        (6, 6) => "cease: other configuration change",
        (6, _) => "cease",
        _ => "unknown error",
    }
}

/// A received message's type and whole length, once `buf` holds its header: `Ok(None)` while
/// fewer than 19 bytes are there.
pub fn frame(buf: &[u8]) -> Result<Option<(u8, usize)>, Error> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    if buf[..16] != MARKER {
        return Err(Error::new(code::HEADER, code::HEADER_NOT_SYNC));
    }
    let len = u16::from_be_bytes([buf[16], buf[17]]) as usize;
    let t = buf[18];
    let min = match t {
        kind::OPEN => 29,
        kind::UPDATE => 23,
        kind::NOTIFICATION => 21,
        kind::KEEPALIVE => 19,
        kind::ROUTE_REFRESH => 23,
        _ => return Err(Error::new(code::HEADER, code::HEADER_BAD_TYPE)),
    };
    if len < min || len > MAX_LEN || (t == kind::KEEPALIVE && len != HEADER_LEN) {
        return Err(Error::new(code::HEADER, code::HEADER_BAD_LENGTH));
    }
    Ok(Some((t, len)))
}

/// A route distinguisher, as its 8 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Rd(pub [u8; 8]);

impl Rd {
    /// Type 1: an IPv4 address and a 2-octet number (`router_id:N`).
    pub fn ip(ip: Ipv4Addr, n: u16) -> Rd {
        let mut b = [0u8; 8];
        b[1] = 1;
        b[2..6].copy_from_slice(&ip.octets());
        b[6..].copy_from_slice(&n.to_be_bytes());
        Rd(b)
    }
}

impl std::fmt::Display for Rd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let b = &self.0;
        match u16::from_be_bytes([b[0], b[1]]) {
            0 => write!(f, "{}:{}", u16::from_be_bytes([b[2], b[3]]), u32::from_be_bytes([b[4], b[5], b[6], b[7]])),
            1 => write!(f, "{}:{}", Ipv4Addr::new(b[2], b[3], b[4], b[5]), u16::from_be_bytes([b[6], b[7]])),
            2 => write!(f, "{}:{}", u32::from_be_bytes([b[2], b[3], b[4], b[5]]), u16::from_be_bytes([b[6], b[7]])),
            t => write!(f, "type{t}:{:02x?}", &b[2..]),
        }
    }
}

/// An EVPN route (the NLRI), without its attributes. Routes of other types (1, 4, 5) and
/// MAC/IP routes with an IPv6 address are kept as `Other` so a withdrawal of them is no error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Route {
    /// Type 2: a MAC (and maybe its IPv4 address) behind the advertising VTEP.
    Mac { rd: Rd, tag: u32, mac: [u8; 6], ip: Option<Ipv4Addr>, vni: u32 },
    /// Type 3: the originating VTEP wants the VNI's broadcast, unknown unicast and multicast.
    Imet { rd: Rd, tag: u32, origin: Ipv4Addr },
    Other { kind: u8 },
}

impl Route {
    /// Bytes this route takes in an MP_REACH / MP_UNREACH attribute.
    pub fn encoded_len(&self) -> usize {
        match self {
            Route::Mac { ip, .. } => 2 + 33 + if ip.is_some() { 4 } else { 0 },
            Route::Imet { .. } => 2 + 17,
            Route::Other { .. } => 0,
        }
    }

    pub fn emit(&self, out: &mut Vec<u8>) {
        match *self {
            Route::Mac { rd, tag, mac, ip, vni } => {
                out.push(2);
                out.push(if ip.is_some() { 37 } else { 33 });
                out.extend_from_slice(&rd.0);
                out.extend_from_slice(&[0u8; 10]);
                out.extend_from_slice(&tag.to_be_bytes());
                out.push(48);
                out.extend_from_slice(&mac);
                match ip {
                    Some(ip) => {
                        out.push(32);
                        out.extend_from_slice(&ip.octets());
                    }
                    None => out.push(0),
                }
                out.extend_from_slice(&vni.to_be_bytes()[1..]);
            }
            Route::Imet { rd, tag, origin } => {
                out.push(3);
                out.push(17);
                out.extend_from_slice(&rd.0);
                out.extend_from_slice(&tag.to_be_bytes());
                out.push(32);
                out.extend_from_slice(&origin.octets());
            }
            Route::Other { .. } => {}
        }
    }

    /// The routes packed in an EVPN NLRI field.
    fn parse_all(mut b: &[u8], out: &mut Vec<Route>) -> Result<(), Error> {
        let bad = Error::update(code::UPDATE_BAD_NLRI);
        while !b.is_empty() {
            let (&t, rest) = b.split_first().ok_or(bad)?;
            let (&len, rest) = rest.split_first().ok_or(bad)?;
            let v = rest.get(..len as usize).ok_or(bad)?;
            b = &rest[len as usize..];
            out.push(Self::parse_one(t, v).ok_or(bad)?);
        }
        Ok(())
    }

    fn parse_one(t: u8, v: &[u8]) -> Option<Route> {
        let rd = |v: &[u8]| -> Option<Rd> { Some(Rd(v.get(..8)?.try_into().ok()?)) };
        let u32at = |v: &[u8], at: usize| -> Option<u32> { Some(u32::from_be_bytes(v.get(at..at + 4)?.try_into().ok()?)) };
        match t {
            2 => {
                // RD 8, ESI 10, tag 4, MAC length 1, MAC 6, IP length 1, IP, label 3, label 3?
                let rd = rd(v)?;
                let tag = u32at(v, 18)?;
                if *v.get(22)? != 48 {
                    return None;
                }
                let mac: [u8; 6] = v.get(23..29)?.try_into().ok()?;
                let iplen = *v.get(29)?;
                let (ip, at) = match iplen {
                    0 => (None, 30),
                    32 => (Some(Ipv4Addr::from(u32at(v, 30)?)), 34),
                    128 => return (v.len() == 46 + 3 || v.len() == 46 + 6).then_some(Route::Other { kind: 2 }),
                    _ => return None,
                };
                if v.len() != at + 3 && v.len() != at + 6 {
                    return None;
                }
                let vni = u32::from_be_bytes([0, v[at], v[at + 1], v[at + 2]]);
                Some(Route::Mac { rd, tag, mac, ip, vni })
            }
            3 => {
                let rd = rd(v)?;
                let tag = u32at(v, 8)?;
                match (*v.get(12)?, v.len()) {
                    (32, 17) => Some(Route::Imet { rd, tag, origin: Ipv4Addr::from(u32at(v, 13)?) }),
                    (128, 29) => Some(Route::Other { kind: 3 }),
                    _ => None,
                }
            }
            // Ethernet auto-discovery, segment, IP prefix routes and unknown types: kept so
            // their withdrawal is no error, never used.
            _ => Some(Route::Other { kind: t }),
        }
    }
}

/// A route target (`ASN:N`) in either AS-specific form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RouteTarget {
    pub asn: u32,
    pub value: u32,
}

impl RouteTarget {
    /// Its extended community: 2-octet-AS form when the AS fits (then the value has 4 octets),
    /// else 4-octet-AS form (the value has 2).
    pub fn community(&self) -> [u8; 8] {
        let mut c = [0u8; 8];
        if self.asn <= u16::MAX as u32 {
            c[0] = 0x00;
            c[1] = 0x02;
            c[2..4].copy_from_slice(&(self.asn as u16).to_be_bytes());
            c[4..].copy_from_slice(&self.value.to_be_bytes());
        } else {
            c[0] = 0x02;
            c[1] = 0x02;
            c[2..6].copy_from_slice(&self.asn.to_be_bytes());
            c[6..].copy_from_slice(&(self.value as u16).to_be_bytes());
        }
        c
    }

    fn from_community(c: &[u8; 8]) -> Option<RouteTarget> {
        // The transitive bit (0x40 clear) varies; the type's low bits and the subtype decide.
        match (c[0] & 0x3f, c[1]) {
            (0x00, 0x02) => Some(RouteTarget { asn: u16::from_be_bytes([c[2], c[3]]) as u32, value: u32::from_be_bytes([c[4], c[5], c[6], c[7]]) }),
            (0x02, 0x02) => Some(RouteTarget { asn: u32::from_be_bytes([c[2], c[3], c[4], c[5]]), value: u16::from_be_bytes([c[6], c[7]]) as u32 }),
            _ => None,
        }
    }
}

impl std::fmt::Display for RouteTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.asn, self.value)
    }
}

/// The encapsulation extended community naming VXLAN (RFC 9012 tunnel type 8).
pub const ENCAP_VXLAN: [u8; 8] = [0x03, 0x0c, 0, 0, 0, 0, 0, 8];

/// The MAC mobility extended community with sequence number `seq`.
pub fn mac_mobility(seq: u32) -> [u8; 8] {
    let s = seq.to_be_bytes();
    [0x06, 0x00, 0, 0, s[0], s[1], s[2], s[3]]
}

/// The attributes of an advertisement this speaker makes or takes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attrs {
    pub origin: u8,
    /// AS numbers of the AS_PATH, all segments flattened (4-octet: the session negotiated it).
    pub as_path: Vec<u32>,
    pub local_pref: Option<u32>,
    pub next_hop: Option<Ipv4Addr>,
    pub route_targets: Vec<RouteTarget>,
    /// MAC mobility sequence number (absent: 0).
    pub mac_seq: Option<u32>,
    /// PMSI tunnel: (tunnel type, label/VNI, endpoint).
    pub pmsi: Option<(u8, u32, Ipv4Addr)>,
    pub vxlan_encap: bool,
}

/// A parsed UPDATE: only the L2VPN EVPN parts are kept; IPv4 unicast and other families'
/// routes are counted by the caller as ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Update {
    pub attrs: Attrs,
    pub reach: Vec<Route>,
    pub unreach: Vec<Route>,
    /// Routes of other address families or an unusable next hop, ignored.
    pub ignored: usize,
    /// No attributes and no routes, or an empty MP_UNREACH for EVPN: End-of-RIB.
    pub end_of_rib: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Open {
    pub version: u8,
    /// The 4-octet AS when the neighbour sent the capability, else the 2-octet field.
    pub asn: u32,
    pub hold: u16,
    pub id: Ipv4Addr,
    pub evpn: bool,
    pub route_refresh: bool,
    pub as4: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Open(Open),
    Update(Update),
    Notification { code: u8, subcode: u8, data: Vec<u8> },
    Keepalive,
    RouteRefresh { afi: u16, safi: u8 },
}

/// A whole message (as [`frame`] delimited it).
pub fn parse(msg: &[u8]) -> Result<Message, Error> {
    let (t, len) = frame(msg)?.ok_or(Error::new(code::HEADER, code::HEADER_BAD_LENGTH))?;
    if len != msg.len() {
        return Err(Error::new(code::HEADER, code::HEADER_BAD_LENGTH));
    }
    let body = &msg[HEADER_LEN..];
    match t {
        kind::OPEN => parse_open(body).map(Message::Open),
        kind::UPDATE => parse_update(body).map(Message::Update),
        kind::NOTIFICATION => Ok(Message::Notification { code: body[0], subcode: body[1], data: body[2..].to_vec() }),
        kind::KEEPALIVE => Ok(Message::Keepalive),
        kind::ROUTE_REFRESH => Ok(Message::RouteRefresh { afi: u16::from_be_bytes([body[0], body[1]]), safi: body[3] }),
        _ => Err(Error::new(code::HEADER, code::HEADER_BAD_TYPE)),
    }
}

fn parse_open(b: &[u8]) -> Result<Open, Error> {
    let bad = Error::new(code::OPEN, 0);
    if b.len() < 10 {
        return Err(bad);
    }
    let version = b[0];
    if version != 4 {
        return Err(Error::new(code::OPEN, code::OPEN_VERSION));
    }
    let mut open = Open {
        version,
        asn: u16::from_be_bytes([b[1], b[2]]) as u32,
        hold: u16::from_be_bytes([b[3], b[4]]),
        id: Ipv4Addr::new(b[5], b[6], b[7], b[8]),
        evpn: false,
        route_refresh: false,
        as4: false,
    };
    let optlen = b[9] as usize;
    let mut p = b.get(10..10 + optlen).ok_or(bad)?;
    if b.len() != 10 + optlen {
        return Err(bad);
    }
    while !p.is_empty() {
        let (&pt, rest) = p.split_first().ok_or(bad)?;
        let (&pl, rest) = rest.split_first().ok_or(bad)?;
        let mut caps = rest.get(..pl as usize).ok_or(bad)?;
        p = &rest[pl as usize..];
        if pt != 2 {
            // Only capabilities are defined (authentication, type 1, is deprecated).
            return Err(Error::new(code::OPEN, 4));
        }
        while !caps.is_empty() {
            let (&c, rest) = caps.split_first().ok_or(bad)?;
            let (&cl, rest) = rest.split_first().ok_or(bad)?;
            let v = rest.get(..cl as usize).ok_or(bad)?;
            caps = &rest[cl as usize..];
            match (c, v.len()) {
                (1, 4) if u16::from_be_bytes([v[0], v[1]]) == AFI_L2VPN && v[3] == SAFI_EVPN => open.evpn = true,
                (2, 0) => open.route_refresh = true,
                (65, 4) => {
                    open.as4 = true;
                    open.asn = u32::from_be_bytes([v[0], v[1], v[2], v[3]]);
                }
                _ => {}
            }
        }
    }
    if open.hold == 1 || open.hold == 2 {
        return Err(Error::new(code::OPEN, code::OPEN_BAD_HOLD));
    }
    if open.id.is_unspecified() {
        return Err(Error::new(code::OPEN, code::OPEN_BAD_ID));
    }
    Ok(open)
}

fn parse_update(b: &[u8]) -> Result<Update, Error> {
    let bad = Error::update(code::UPDATE_MALFORMED_ATTRS);
    let wlen = u16::from_be_bytes([b[0], b[1]]) as usize;
    let rest = b.get(2 + wlen..).ok_or(bad)?;
    let alen = u16::from_be_bytes([*rest.first().ok_or(bad)?, *rest.get(1).ok_or(bad)?]) as usize;
    let mut attrs = rest.get(2..2 + alen).ok_or(bad)?;
    let nlri = &rest[2 + alen..];
    let mut u = Update::default();
    // IPv4 unicast withdrawals and routes: not ours.
    u.ignored += (wlen > 0) as usize + (!nlri.is_empty()) as usize;
    if wlen == 0 && alen == 0 && nlri.is_empty() {
        u.end_of_rib = true;
        return Ok(u);
    }
    let mut seen = [false; 256];
    while !attrs.is_empty() {
        let flags = attrs[0];
        let t = *attrs.get(1).ok_or(bad)?;
        let (len, hl) = if flags & attr::EXTENDED_LEN != 0 {
            (u16::from_be_bytes([*attrs.get(2).ok_or(bad)?, *attrs.get(3).ok_or(bad)?]) as usize, 4)
        } else {
            (*attrs.get(2).ok_or(bad)? as usize, 3)
        };
        let v = attrs.get(hl..hl + len).ok_or(Error::update(code::UPDATE_ATTR_LENGTH))?;
        attrs = &attrs[hl + len..];
        if std::mem::replace(&mut seen[t as usize], true) {
            // An attribute twice (RFC 4271 §6.3).
            return Err(bad);
        }
        let alen_err = Error::update(code::UPDATE_ATTR_LENGTH);
        match t {
            attr::ORIGIN => u.attrs.origin = *v.first().filter(|_| v.len() == 1).ok_or(alen_err)?,
            attr::AS_PATH => {
                let mut p = v;
                while !p.is_empty() {
                    let n = *p.get(1).ok_or(Error::update(code::UPDATE_MALFORMED_AS_PATH))? as usize;
                    let seg = p.get(2..2 + 4 * n).ok_or(Error::update(code::UPDATE_MALFORMED_AS_PATH))?;
                    u.attrs.as_path.extend(seg.chunks_exact(4).map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]])));
                    p = &p[2 + 4 * n..];
                }
            }
            attr::LOCAL_PREF => {
                let a: [u8; 4] = v.try_into().map_err(|_| alen_err)?;
                u.attrs.local_pref = Some(u32::from_be_bytes(a));
            }
            attr::EXT_COMMUNITIES => {
                if v.len() % 8 != 0 {
                    return Err(alen_err);
                }
                for c in v.chunks_exact(8) {
                    let c: [u8; 8] = c.try_into().map_err(|_| alen_err)?;
                    if let Some(rt) = RouteTarget::from_community(&c) {
                        u.attrs.route_targets.push(rt);
                    } else if c[0] == 0x06 && c[1] == 0x00 {
                        u.attrs.mac_seq = Some(u32::from_be_bytes([c[4], c[5], c[6], c[7]]));
                    } else if c[0] & 0x3f == 0x03 && c[1] == 0x0c && u16::from_be_bytes([c[6], c[7]]) == 8 {
                        u.attrs.vxlan_encap = true;
                    }
                }
            }
            attr::PMSI_TUNNEL => {
                if v.len() < 5 {
                    return Err(alen_err);
                }
                let label = u32::from_be_bytes([0, v[2], v[3], v[4]]);
                let ep = (v.len() == 9).then(|| Ipv4Addr::new(v[5], v[6], v[7], v[8]));
                if let Some(ep) = ep {
                    u.attrs.pmsi = Some((v[1], label, ep));
                }
            }
            attr::MP_REACH => {
                if v.len() < 5 {
                    return Err(alen_err);
                }
                let (afi, safi, nhl) = (u16::from_be_bytes([v[0], v[1]]), v[2], v[3] as usize);
                let nlri = v.get(4 + nhl + 1..).ok_or(alen_err)?;
                if (afi, safi) != (AFI_L2VPN, SAFI_EVPN) {
                    u.ignored += 1;
                    continue;
                }
                match nhl {
                    4 => u.attrs.next_hop = Some(Ipv4Addr::new(v[4], v[5], v[6], v[7])),
                    _ => {
                        // An IPv6 underlay: not one this VTEP can reach.
                        let mut r = Vec::new();
                        Route::parse_all(nlri, &mut r)?;
                        u.ignored += r.len();
                        continue;
                    }
                }
                Route::parse_all(nlri, &mut u.reach)?;
            }
            attr::MP_UNREACH => {
                if v.len() < 3 {
                    return Err(alen_err);
                }
                if (u16::from_be_bytes([v[0], v[1]]), v[2]) != (AFI_L2VPN, SAFI_EVPN) {
                    u.ignored += 1;
                    continue;
                }
                if v.len() == 3 {
                    u.end_of_rib = true;
                }
                Route::parse_all(&v[3..], &mut u.unreach)?;
            }
            _ => {}
        }
    }
    Ok(u)
}

fn header(out: &mut Vec<u8>, t: u8) {
    out.extend_from_slice(&MARKER);
    out.extend_from_slice(&[0, 0, t]);
}

/// Writes the message's length into its header.
fn finish(out: &mut [u8]) {
    let len = out.len() as u16;
    out[16..18].copy_from_slice(&len.to_be_bytes());
}

/// An OPEN offering L2VPN EVPN, route refresh and 4-octet AS numbers.
pub fn open(asn: u32, hold: u16, id: Ipv4Addr) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    header(&mut out, kind::OPEN);
    out.push(4);
    let my = if asn > u16::MAX as u32 { AS_TRANS } else { asn as u16 };
    out.extend_from_slice(&my.to_be_bytes());
    out.extend_from_slice(&hold.to_be_bytes());
    out.extend_from_slice(&id.octets());
    let caps: [&[u8]; 3] = [&[1, 4, 0, AFI_L2VPN as u8, 0, SAFI_EVPN], &[2, 0], &[65, 4]];
    let mut params = Vec::new();
    for c in caps {
        params.push(2);
        let extra = if c[0] == 65 { 4 } else { 0 };
        params.push((c.len() + extra) as u8);
        params.extend_from_slice(c);
        if c[0] == 65 {
            params.extend_from_slice(&asn.to_be_bytes());
        }
    }
    out.push(params.len() as u8);
    out.extend_from_slice(&params);
    finish(&mut out);
    out
}

pub fn keepalive() -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN);
    header(&mut out, kind::KEEPALIVE);
    finish(&mut out);
    out
}

pub fn notification(code: u8, subcode: u8, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + 2 + data.len());
    header(&mut out, kind::NOTIFICATION);
    out.push(code);
    out.push(subcode);
    out.extend_from_slice(&data[..data.len().min(MAX_LEN - HEADER_LEN - 2)]);
    finish(&mut out);
    out
}

pub fn route_refresh() -> Vec<u8> {
    let mut out = Vec::with_capacity(23);
    header(&mut out, kind::ROUTE_REFRESH);
    out.extend_from_slice(&AFI_L2VPN.to_be_bytes());
    out.push(0);
    out.push(SAFI_EVPN);
    finish(&mut out);
    out
}

/// End-of-RIB for L2VPN EVPN (RFC 4724 §2): an MP_UNREACH with no routes.
pub fn end_of_rib() -> Vec<u8> {
    update_unreach(&[])
}

fn push_attr(out: &mut Vec<u8>, flags: u8, t: u8, v: &[u8]) {
    if v.len() > 255 {
        out.extend_from_slice(&[flags | attr::EXTENDED_LEN, t]);
        out.extend_from_slice(&(v.len() as u16).to_be_bytes());
    } else {
        out.extend_from_slice(&[flags, t, v.len() as u8]);
    }
    out.extend_from_slice(v);
}

/// Bytes an UPDATE takes beyond its routes with attributes `a`, so a caller can pack routes
/// up to [`MAX_LEN`].
pub fn update_overhead(a: &Attrs) -> usize {
    let mut v = Vec::new();
    reach_into(&mut v, a, &[]);
    v.len()
}

/// An UPDATE advertising `routes` (all with attributes `a`; the caller keeps it within
/// [`MAX_LEN`] using [`update_overhead`] and [`Route::encoded_len`]).
pub fn update_reach(a: &Attrs, routes: &[Route]) -> Vec<u8> {
    let mut out = Vec::with_capacity(MAX_LEN);
    reach_into(&mut out, a, routes);
    out
}

fn reach_into(out: &mut Vec<u8>, a: &Attrs, routes: &[Route]) {
    header(out, kind::UPDATE);
    out.extend_from_slice(&[0, 0, 0, 0]);
    let attrs_at = out.len();
    let mut mp = Vec::with_capacity(MAX_LEN);
    mp.extend_from_slice(&AFI_L2VPN.to_be_bytes());
    mp.push(SAFI_EVPN);
    mp.push(4);
    mp.extend_from_slice(&a.next_hop.unwrap_or(Ipv4Addr::UNSPECIFIED).octets());
    mp.push(0);
    for r in routes {
        r.emit(&mut mp);
    }
    // RFC 4271 wants attributes in type order (FRR does not insist).
    push_attr(out, attr::TRANSITIVE, attr::ORIGIN, &[a.origin]);
    let mut path = Vec::new();
    if !a.as_path.is_empty() {
        path.push(2);
        path.push(a.as_path.len() as u8);
        a.as_path.iter().for_each(|x| path.extend_from_slice(&x.to_be_bytes()));
    }
    push_attr(out, attr::TRANSITIVE, attr::AS_PATH, &path);
    if let Some(lp) = a.local_pref {
        push_attr(out, attr::TRANSITIVE, attr::LOCAL_PREF, &lp.to_be_bytes());
    }
    push_attr(out, attr::OPTIONAL, attr::MP_REACH, &mp);
    let mut ext = Vec::new();
    for rt in &a.route_targets {
        ext.extend_from_slice(&rt.community());
    }
    if a.vxlan_encap {
        ext.extend_from_slice(&ENCAP_VXLAN);
    }
    if let Some(seq) = a.mac_seq {
        ext.extend_from_slice(&mac_mobility(seq));
    }
    if !ext.is_empty() {
        push_attr(out, attr::OPTIONAL | attr::TRANSITIVE, attr::EXT_COMMUNITIES, &ext);
    }
    if let Some((t, label, ep)) = a.pmsi {
        let mut v = vec![0, t];
        v.extend_from_slice(&label.to_be_bytes()[1..]);
        v.extend_from_slice(&ep.octets());
        push_attr(out, attr::OPTIONAL | attr::TRANSITIVE, attr::PMSI_TUNNEL, &v);
    }
    let alen = (out.len() - attrs_at) as u16;
    out[attrs_at - 2..attrs_at].copy_from_slice(&alen.to_be_bytes());
    finish(out);
}

/// An UPDATE withdrawing `routes` (the caller keeps it within [`MAX_LEN`]: 30 bytes beyond the
/// routes).
pub fn update_unreach(routes: &[Route]) -> Vec<u8> {
    let mut out = Vec::with_capacity(MAX_LEN);
    header(&mut out, kind::UPDATE);
    out.extend_from_slice(&[0, 0, 0, 0]);
    let mut mp = Vec::new();
    mp.extend_from_slice(&AFI_L2VPN.to_be_bytes());
    mp.push(SAFI_EVPN);
    for r in routes {
        r.emit(&mut mp);
    }
    push_attr(&mut out, attr::OPTIONAL, attr::MP_UNREACH, &mp);
    let alen = (out.len() - 23) as u16;
    out[21..23].copy_from_slice(&alen.to_be_bytes());
    finish(&mut out);
    out
}

/// Bytes an MP_UNREACH UPDATE takes beyond its routes (extended length assumed).
pub const UNREACH_OVERHEAD: usize = HEADER_LEN + 4 + 4 + 3;

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    // Captured from Debian's FRR 8.4.4 (bgpd with `advertise-all-vni`, router-id 192.0.2.12,
    // AS 65000, a VXLAN device for VNI 5001 in a bridge with a static MAC aa:bb:cc:dd:ee:ff)
    // by a Python peer; see the issue note.
    /// Its OPEN (capabilities this speaker ignores too: extended nexthop, graceful restart,
    /// hostname, ...).
    const FRR_OPEN: &str = "ffffffffffffffffffffffffffffffff005d0104fde80009c000020c400206010400190046020280000202020002024600020641040000fde802020600020645040019460102054903016b0002044002c0780209470700194680000000";
    /// Its type-2 routes: the bridge port's MAC and the static one, MAC only, one UPDATE.
    const FRR_MAC: &str = "ffffffffffffffffffffffffffffffff008c0200000075900e004f00194604c000020c0002210001c000020c000200000000000000000000000000003096d0813b39700000138902210001c000020c0002000000000000000000000000000030aabbccddeeff00001389400101005002000040050400000064c01010030c0000000000080002fde800001389";
    /// Its type-3 route with the PMSI tunnel attribute.
    const FRR_IMET: &str = "ffffffffffffffffffffffffffffffff0065020000004e900e001c00194604c000020c0003110001c000020c00020000000020c000020c400101005002000040050400000064c01010030c0000000000080002fde800001389c016090006001389c000020c";

    #[test]
    fn frr_open_parses() {
        let b = hex(FRR_OPEN);
        assert_eq!(frame(&b), Ok(Some((kind::OPEN, b.len()))));
        let Message::Open(o) = parse(&b).unwrap() else { panic!() };
        assert_eq!((o.asn, o.hold, o.id, o.evpn, o.route_refresh, o.as4), (65000, 9, Ipv4Addr::new(192, 0, 2, 12), true, true, true));
    }

    #[test]
    fn frr_routes_parse() {
        let k = Ipv4Addr::new(192, 0, 2, 12);
        let Message::Update(u) = parse(&hex(FRR_MAC)).unwrap() else { panic!() };
        assert_eq!(u.attrs.next_hop, Some(k));
        assert_eq!(u.attrs.local_pref, Some(100));
        assert_eq!(u.attrs.route_targets, vec![RouteTarget { asn: 65000, value: 5001 }]);
        assert!(u.attrs.vxlan_encap);
        let rd = Rd::ip(k, 2);
        assert_eq!(
            u.reach,
            vec![
                Route::Mac { rd, tag: 0, mac: [0x96, 0xd0, 0x81, 0x3b, 0x39, 0x70], ip: None, vni: 5001 },
                Route::Mac { rd, tag: 0, mac: [0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff], ip: None, vni: 5001 },
            ]
        );
        assert_eq!(rd.to_string(), "192.0.2.12:2");
        let Message::Update(u) = parse(&hex(FRR_IMET)).unwrap() else { panic!() };
        assert_eq!(u.reach, vec![Route::Imet { rd, tag: 0, origin: k }]);
        assert_eq!(u.attrs.pmsi, Some((6, 5001, k)));
        // What this speaker emits for the same route parses to the same thing.
        let ours = update_reach(&u.attrs, &u.reach);
        let Message::Update(back) = parse(&ours).unwrap() else { panic!() };
        assert_eq!((back.attrs, back.reach), (u.attrs, u.reach));
    }

    #[test]
    fn our_open_golden() {
        let b = open(65000, 9, Ipv4Addr::new(192, 0, 2, 2));
        let want = hex("ffffffffffffffffffffffffffffffff 0031 01 04 fde8 0009 c0000202 14
            02 06 01 04 0019 0046  02 02 02 00  02 06 41 04 0000fde8");
        assert_eq!(b, want);
        let Message::Open(o) = parse(&b).unwrap() else { panic!() };
        assert_eq!((o.asn, o.evpn, o.as4), (65000, true, true));
        // A 4-octet AS: AS_TRANS in the 2-octet field, the real one in the capability.
        let Message::Open(o) = parse(&open(4_200_000_001, 9, Ipv4Addr::new(192, 0, 2, 2))).unwrap() else { panic!() };
        assert_eq!(o.asn, 4_200_000_001);
    }

    /// A type-2 MAC+IP route built by hand from RFC 7432 §7.2 (RD 192.0.2.12:2, VNI 5001,
    /// RT 65000:5001, encapsulation VXLAN, local-pref 100, next hop 192.0.2.12), with the
    /// attribute flags FRR uses (its MAC+IP routes were not in the capture: no ARP yet).
    const MACIP: &str = "ffffffffffffffffffffffffffffffff 006c 02 0000 0055
        40 01 01 00  40 02 00  40 05 04 00000064
        90 0e 0030 0019 46 04 c000020c 00 02 25 0001c000020c0002 00000000000000000000 00000000 30 aabbccddeeff 20 0a01010e 001389
        c0 10 10 0002fde800001389 030c000000000008";

    #[test]
    fn mac_ip_route_parses() {
        let b = hex(MACIP);
        assert_eq!(b.len(), 0x6c);
        let Message::Update(u) = parse(&b).unwrap() else { panic!() };
        assert_eq!(u.attrs.next_hop, Some(Ipv4Addr::new(192, 0, 2, 12)));
        assert_eq!(u.attrs.local_pref, Some(100));
        assert_eq!(u.attrs.route_targets, vec![RouteTarget { asn: 65000, value: 5001 }]);
        assert!(u.attrs.vxlan_encap);
        assert_eq!(
            u.reach,
            vec![Route::Mac { rd: Rd::ip(Ipv4Addr::new(192, 0, 2, 12), 2), tag: 0, mac: [0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff], ip: Some(Ipv4Addr::new(10, 1, 1, 14)), vni: 5001 }]
        );
        assert_eq!(Rd::ip(Ipv4Addr::new(192, 0, 2, 12), 2).to_string(), "192.0.2.12:2");
    }

    #[test]
    fn update_round_trip_and_golden_imet() {
        let me = Ipv4Addr::new(192, 0, 2, 2);
        let a = Attrs {
            origin: 0,
            as_path: vec![],
            local_pref: Some(100),
            next_hop: Some(me),
            route_targets: vec![RouteTarget { asn: 65000, value: 5001 }],
            mac_seq: None,
            pmsi: Some((6, 5001, me)),
            vxlan_encap: true,
        };
        let r = Route::Imet { rd: Rd::ip(me, 1), tag: 0, origin: me };
        let b = update_reach(&a, &[r]);
        let want = hex("ffffffffffffffffffffffffffffffff 0063 02 0000 004c
            40 01 01 00  40 02 00  40 05 04 00000064
            80 0e 1c 0019 46 04 c0000202 00 03 11 0001c00002020001 00000000 20 c0000202
            c0 10 10 0002fde800001389 030c000000000008
            c0 16 09 00 06 001389 c0000202");
        assert_eq!(b, want);
        let Message::Update(u) = parse(&b).unwrap() else { panic!() };
        assert_eq!(u.attrs, a);
        assert_eq!(u.reach, vec![r]);
        assert_eq!(b.len(), update_overhead(&a) + r.encoded_len());
        // Withdrawal of a MAC route, and End-of-RIB.
        let m = Route::Mac { rd: Rd::ip(me, 1), tag: 0, mac: [2, 0, 0, 0, 0, 1], ip: None, vni: 5001 };
        let w = update_unreach(&[m]);
        assert!(w.len() <= UNREACH_OVERHEAD + m.encoded_len());
        let Message::Update(u) = parse(&w).unwrap() else { panic!() };
        assert_eq!((u.unreach, u.end_of_rib), (vec![m], false));
        let Message::Update(u) = parse(&end_of_rib()).unwrap() else { panic!() };
        assert!(u.end_of_rib && u.unreach.is_empty());
        // MAC mobility survives the trip.
        let b = update_reach(&Attrs { mac_seq: Some(7), ..a.clone() }, &[m]);
        let Message::Update(u) = parse(&b).unwrap() else { panic!() };
        assert_eq!(u.attrs.mac_seq, Some(7));
    }

    #[test]
    fn bad_messages_name_their_error() {
        let mut b = keepalive();
        assert_eq!(parse(&b), Ok(Message::Keepalive));
        b[3] = 0;
        assert_eq!(frame(&b), Err(Error { code: 1, subcode: 1 }));
        let mut b = keepalive();
        b[18] = 9;
        assert_eq!(frame(&b), Err(Error { code: 1, subcode: 3 }));
        let mut b = keepalive();
        b[17] = 20;
        assert_eq!(frame(&b), Err(Error { code: 1, subcode: 2 }));
        assert_eq!(frame(&b[..10]), Ok(None));
        // An attribute whose length runs past the message.
        let mut u = hex(FRR_MAC);
        u[23 + 2] = 0x7f;
        assert!(matches!(parse(&u), Err(Error { code: 3, .. })));
        // An NLRI cut short.
        let mut u = hex(FRR_MAC);
        let at = u.windows(2).position(|w| w == [0x02, 0x21]).unwrap();
        u[at + 1] = 0x60;
        assert!(matches!(parse(&u), Err(Error { code: 3, .. })));
        // An OPEN with hold time 1.
        let mut o = open(65000, 9, Ipv4Addr::new(1, 1, 1, 1));
        o[22] = 0;
        o[23] = 1;
        assert_eq!(parse(&o), Err(Error { code: 2, subcode: 6 }));
        // Every truncation of a valid UPDATE is an error or a shorter frame, never a panic.
        let u = hex(FRR_MAC);
        for n in 0..u.len() {
            let mut c = u[..n].to_vec();
            if c.len() >= 18 {
                c[16..18].copy_from_slice(&(n as u16).to_be_bytes());
            }
            let _ = parse(&c);
        }
    }
}
