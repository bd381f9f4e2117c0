//! What cloud-init asks the virtual router: instance metadata, user data and a one-time
//! password, over HTTP on each guest network's gateway (port 80, CloudStack's paths; port
//! 8080, CloudStack's password server) and on 169.254.169.254:80 (EC2 and OpenStack paths).
//!
//! Sans-IO and pure: [`Request::parse`] reads a request head, [`answer`] turns it and the
//! asking VM's [`Vm`] view into a response. The router's smoltcp glue (`router/tcp_meta.rs`)
//! owns the connections, and decides who is asking: the port the frames arrive on, whose own
//! address (its reservation or current lease) must be the source; never what a request claims.
//!
//! Invariants: a request head is at most [`MAX_HEAD`] bytes (else 431 and close); only GET and
//! HEAD are served (405); unknown paths are 404; every response has a correct Content-Length.

use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::net::Ipv4Addr;

/// The EC2/OpenStack metadata address, answered on every guest network.
pub const METADATA_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
/// CloudStack's password server port on the gateway.
pub const PASSWORD_PORT: u16 = 8080;
/// Largest request head accepted.
pub const MAX_HEAD: usize = 8 * 1024;

/// What one VM (port) is told. Built from the config; `ip` and `public_ip` are filled at
/// request time (the port's address, its static NAT or the source NAT address).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Vm {
    pub port: String,
    pub network: String,
    pub instance_id: String,
    pub hostname: Option<String>,
    pub public_keys: Vec<String>,
    #[serde(skip)]
    pub user_data: Option<Vec<u8>>,
    /// `[port.metadata]`: free-form keys (service-offering, availability-zone, ...).
    pub extra: BTreeMap<String, String>,
    pub ip: Option<Ipv4Addr>,
    pub public_ip: Option<Ipv4Addr>,
    /// The account (cloud-identifier).
    pub account: String,
}

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// HTTP/1.1 without `Connection: close`, or 1.0 with `Connection: keep-alive`.
    pub keep_alive: bool,
    /// The `DomU_Request` header (CloudStack's password protocol).
    pub domu: Option<String>,
}

/// Why a head could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadError {
    /// Not yet complete: more bytes needed.
    Incomplete,
    /// Longer than [`MAX_HEAD`].
    TooLarge,
    /// Not an HTTP/1.x request line.
    Malformed,
}

impl Request {
    /// The head at the start of `b` (up to the blank line) and its length.
    pub fn parse(b: &[u8]) -> Result<(Request, usize), HeadError> {
        // A request line starts with a method token and a space: anything else is refused
        // before the search for the head's end.
        let method = b.iter().take(17).take_while(|c| c.is_ascii_uppercase()).count();
        match b.get(method) {
            None if method < 17 => return Err(HeadError::Incomplete),
            Some(b' ') if method > 0 => {}
            _ => return Err(HeadError::Malformed),
        }
        let Some(end) = b.windows(4).take(MAX_HEAD + 1).position(|w| w == b"\r\n\r\n") else {
            return Err(if b.len() > MAX_HEAD { HeadError::TooLarge } else { HeadError::Incomplete });
        };
        if end + 4 > MAX_HEAD {
            return Err(HeadError::TooLarge);
        }
        let head = std::str::from_utf8(&b[..end]).map_err(|_| HeadError::Malformed)?;
        let mut lines = head.split("\r\n");
        let mut first = lines.next().unwrap_or("").split(' ');
        let (method, target, version) = match (first.next(), first.next(), first.next(), first.next()) {
            (Some(m), Some(t), Some(v), None) if !m.is_empty() && t.starts_with('/') && v.starts_with("HTTP/1.") => (m, t, v),
            _ => return Err(HeadError::Malformed),
        };
        let mut keep_alive = version == "HTTP/1.1";
        let mut domu = None;
        for l in lines {
            let Some((k, v)) = l.split_once(':') else { return Err(HeadError::Malformed) };
            let v = v.trim();
            if k.eq_ignore_ascii_case("connection") {
                keep_alive = if v.eq_ignore_ascii_case("close") { false } else { v.eq_ignore_ascii_case("keep-alive") || keep_alive };
            } else if k.eq_ignore_ascii_case("domu_request") {
                domu = Some(v.to_string());
            }
        }
        let path = target.split(['?', '#']).next().unwrap_or("/").to_string();
        Ok((Request { method: method.to_string(), path, keep_alive, domu }, end + 4))
    }
}

/// A response: status line, content type and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
    pub content_type: &'static str,
}

impl Response {
    fn text(status: u16, body: impl Into<Vec<u8>>) -> Response {
        Response { status, body: body.into(), content_type: "text/plain; charset=utf-8" }
    }

    /// The bytes on the wire (HEAD: the head alone, with the body's length).
    pub fn encode(&self, head_only: bool, keep_alive: bool) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            400 => "Bad Request",
            404 => "Not Found",
            405 => "Method Not Allowed",
            431 => "Request Header Fields Too Large",
            _ => "Error",
        };
        let mut s = String::new();
        let _ = write!(
            s,
            "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: {}\r\n",
            self.status,
            self.content_type,
            self.body.len(),
            if keep_alive { "keep-alive" } else { "close" }
        );
        if self.status == 405 {
            s.push_str("Allow: GET, HEAD\r\n");
        }
        s.push_str("\r\n");
        let mut out = s.into_bytes();
        if !head_only {
            out.extend_from_slice(&self.body);
        }
        out
    }
}

/// A plain error response (bad head, too large, refused).
pub fn error(status: u16) -> Response {
    Response::text(status, format!("{status}\n"))
}

/// The meta-data keys in the CloudStack index, and each one's value for `vm`.
fn meta_items(vm: &Vm) -> Vec<(String, String)> {
    let ip = vm.ip.map(|i| i.to_string()).unwrap_or_default();
    let public = vm.public_ip.map(|i| i.to_string()).unwrap_or_default();
    let mut v = vec![
        ("availability-zone".to_string(), vm.extra.get("availability-zone").cloned().unwrap_or_default()),
        ("cloud-identifier".to_string(), format!("CloudStack-{{{}}}", vm.account)),
        ("instance-id".to_string(), vm.instance_id.clone()),
        ("local-hostname".to_string(), vm.hostname.clone().unwrap_or_else(|| vm.port.clone())),
        ("local-ipv4".to_string(), ip),
        ("public-hostname".to_string(), public.clone()),
        ("public-ipv4".to_string(), public),
        ("public-keys".to_string(), vm.public_keys.join("\n")),
        ("service-offering".to_string(), vm.extra.get("service-offering").cloned().unwrap_or_default()),
        ("vm-id".to_string(), vm.instance_id.clone()),
    ];
    for (k, val) in &vm.extra {
        if !v.iter().any(|(n, _)| n == k) {
            v.push((k.clone(), val.clone()));
        }
    }
    v
}

/// The OpenStack `meta_data.json`.
fn openstack_json(vm: &Vm) -> Vec<u8> {
    let keys: BTreeMap<String, String> = vm.public_keys.iter().enumerate().map(|(i, k)| (format!("key-{i}"), k.clone())).collect();
    let j = serde_json::json!({
        "uuid": vm.instance_id,
        "name": vm.hostname.clone().unwrap_or_else(|| vm.port.clone()),
        "hostname": vm.hostname.clone().unwrap_or_else(|| vm.port.clone()),
        "availability_zone": vm.extra.get("availability-zone").cloned().unwrap_or_default(),
        "public_keys": keys,
        "meta": vm.extra,
        "launch_index": 0,
    });
    serde_json::to_vec_pretty(&j).unwrap_or_default()
}

/// The answer to `req` on the metadata service (port 80) for `vm` (`None`: the asking
/// address belongs to no VM of this network: nothing of anyone's).
pub fn answer(req: &Request, vm: Option<&Vm>) -> Response {
    if req.method != "GET" && req.method != "HEAD" {
        return error(405);
    }
    let Some(vm) = vm else { return error(404) };
    let p = req.path.as_str();
    match p {
        "/" => return Response::text(200, "latest\n"),
        "/latest" | "/latest/" => return Response::text(200, "meta-data/\nuser-data\n"),
        "/latest/meta-data" | "/latest/meta-data/" => {
            let mut s = String::new();
            for (k, _) in meta_items(vm) {
                s.push_str(&k);
                s.push('\n');
            }
            return Response::text(200, s);
        }
        "/latest/user-data" | "/openstack/latest/user_data" => {
            return match &vm.user_data {
                Some(u) => Response { status: 200, body: u.clone(), content_type: "application/octet-stream" },
                None => error(404),
            };
        }
        "/openstack" | "/openstack/" => return Response::text(200, "latest\n"),
        "/openstack/latest" | "/openstack/latest/" => {
            let mut s = String::from("meta_data.json\n");
            if vm.user_data.is_some() {
                s.push_str("user_data\n");
            }
            return Response::text(200, s);
        }
        "/openstack/latest/meta_data.json" => return Response { status: 200, body: openstack_json(vm), content_type: "application/json" },
        _ => {}
    }
    if let Some(key) = p.strip_prefix("/latest/meta-data/") {
        let key = key.trim_end_matches('/');
        // EC2's layout of the keys: public-keys/0=key-0, public-keys/0/openssh-key.
        if let Some(rest) = key.strip_prefix("public-keys/") {
            let mut it = rest.splitn(2, '/');
            let idx = it.next().and_then(|i| i.split('=').next()).and_then(|i| i.parse::<usize>().ok());
            return match (idx.and_then(|i| vm.public_keys.get(i)), it.next()) {
                (Some(_), None) => Response::text(200, "openssh-key\n"),
                (Some(k), Some("openssh-key")) => Response::text(200, format!("{k}\n")),
                _ => error(404),
            };
        }
        if key == "public-keys" && p.ends_with('/') {
            let s: String = (0..vm.public_keys.len()).map(|i| format!("{i}=key-{i}\n")).collect();
            return Response::text(200, s);
        }
        if let Some((_, v)) = meta_items(vm).into_iter().find(|(k, _)| k == key) {
            return Response::text(200, v);
        }
    }
    error(404)
}

/// CloudStack's password server (port 8080): `DomU_Request: send_my_password` gets the pending
/// password (taken out of `pending` only when acknowledged), else `saved_password`;
/// `DomU_Request: saved_password` acknowledges (forgets it). Anything else: `bad_request`.
pub fn password(req: &Request, pending: &mut Option<String>) -> Response {
    if req.method != "GET" && req.method != "HEAD" {
        return error(405);
    }
    match req.domu.as_deref() {
        Some("send_my_password") => match pending {
            Some(p) => Response::text(200, p.clone()),
            None => Response::text(200, "saved_password"),
        },
        Some("saved_password") => {
            *pending = None;
            Response::text(200, "saved_password")
        }
        _ => Response::text(400, "bad_request"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm() -> Vm {
        Vm {
            port: "web1".into(),
            network: "web".into(),
            instance_id: "i-42".into(),
            hostname: Some("web1".into()),
            public_keys: vec!["ssh-ed25519 AAAA one".into(), "ssh-rsa BBBB two".into()],
            user_data: Some(b"#cloud-config\nruncmd: [true]\n".to_vec()),
            extra: [("service-offering".to_string(), "small".to_string())].into(),
            ip: Some("10.1.1.11".parse().unwrap()),
            public_ip: Some("203.0.113.10".parse().unwrap()),
            account: "acct".into(),
        }
    }

    fn get(path: &str) -> Request {
        Request::parse(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).unwrap().0
    }

    #[test]
    fn heads_parse_and_refuse() {
        let (r, n) = Request::parse(b"GET /latest/meta-data/?x=1 HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET").unwrap();
        assert_eq!((r.path.as_str(), r.keep_alive, n), ("/latest/meta-data/", true, 63));
        let (r, _) = Request::parse(b"GET / HTTP/1.1\r\nconnection: close\r\nDomU_Request: send_my_password\r\n\r\n").unwrap();
        assert_eq!((r.keep_alive, r.domu.as_deref()), (false, Some("send_my_password")));
        assert_eq!(Request::parse(b"GET / HTTP/1.1\r\n"), Err(HeadError::Incomplete));
        assert_eq!(Request::parse(&[&b"GET /"[..], &vec![b'a'; MAX_HEAD]].concat()), Err(HeadError::TooLarge));
        for bad in [&b"GET\r\n\r\n"[..], b"GET x HTTP/1.1\r\n\r\n", b"GET / SPDY\r\n\r\n", b"GET / HTTP/1.1\r\nnocolon\r\n\r\n", b"\xff / HTTP/1.1\r\n\r\n"] {
            assert_eq!(Request::parse(bad), Err(HeadError::Malformed), "{bad:?}");
        }
    }

    #[test]
    fn cloudstack_ec2_and_openstack_paths() {
        let v = vm();
        let body = |p: &str| String::from_utf8(answer(&get(p), Some(&v)).body).unwrap();
        assert!(body("/latest/meta-data/").contains("local-ipv4\n"));
        assert_eq!(body("/latest/meta-data/local-ipv4"), "10.1.1.11");
        assert_eq!(body("/latest/meta-data/public-ipv4"), "203.0.113.10");
        assert_eq!(body("/latest/meta-data/instance-id"), "i-42");
        assert_eq!(body("/latest/meta-data/service-offering"), "small");
        assert_eq!(body("/latest/meta-data/public-keys"), "ssh-ed25519 AAAA one\nssh-rsa BBBB two");
        assert_eq!(body("/latest/meta-data/public-keys/"), "0=key-0\n1=key-1\n");
        assert_eq!(body("/latest/meta-data/public-keys/1/openssh-key"), "ssh-rsa BBBB two\n");
        assert_eq!(body("/latest/user-data"), "#cloud-config\nruncmd: [true]\n");
        let j: serde_json::Value = serde_json::from_str(&body("/openstack/latest/meta_data.json")).unwrap();
        assert_eq!((j["uuid"].as_str(), j["public_keys"]["key-0"].as_str()), (Some("i-42"), Some("ssh-ed25519 AAAA one")));
        assert_eq!(answer(&get("/latest/meta-data/nope"), Some(&v)).status, 404);
        assert_eq!(answer(&get("/latest/meta-data/"), None).status, 404);
        let post = Request { method: "POST".into(), ..get("/") };
        assert_eq!(answer(&post, Some(&v)).status, 405);
        let r = answer(&get("/latest/meta-data/local-ipv4"), Some(&v));
        let wire = String::from_utf8(r.encode(false, true)).unwrap();
        assert!(wire.starts_with("HTTP/1.1 200 OK\r\n") && wire.contains("Content-Length: 9\r\n") && wire.ends_with("\r\n\r\n10.1.1.11"), "{wire}");
        assert!(String::from_utf8(r.encode(true, false)).unwrap().ends_with("Connection: close\r\n\r\n"));
    }

    /// Every one-byte change and every cut of valid requests: an answer or a refusal, never a
    /// panic (the fuzz target runs the same on arbitrary bytes).
    #[test]
    fn mutated_requests_never_panic() {
        let v = vm();
        for base in [&b"GET /latest/meta-data/public-keys/0/openssh-key HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\n\r\n"[..], b"HEAD /openstack/latest/meta_data.json HTTP/1.0\r\nDomU_Request: saved_password\r\n\r\n"] {
            for i in 0..base.len() {
                for b in [0u8, b' ', b'/', b':', b'\r', b'\n', 0xff, b'%'] {
                    let mut m = base.to_vec();
                    m[i] = b;
                    if let Ok((r, _)) = Request::parse(&m) {
                        let _ = answer(&r, Some(&v)).encode(false, r.keep_alive);
                        let _ = password(&r, &mut Some("x".into()));
                    }
                    let _ = Request::parse(&m[..i]);
                }
            }
        }
    }

    #[test]
    fn the_password_is_given_until_acknowledged_then_saved() {
        let ask = |h: &str| Request::parse(format!("GET / HTTP/1.0\r\nDomU_Request: {h}\r\n\r\n").as_bytes()).unwrap().0;
        let mut pending = Some("s3cret".to_string());
        assert_eq!(password(&ask("send_my_password"), &mut pending).body, b"s3cret");
        assert_eq!(password(&ask("saved_password"), &mut pending).body, b"saved_password");
        assert_eq!(password(&ask("send_my_password"), &mut pending).body, b"saved_password");
        assert_eq!(password(&ask("nonsense"), &mut pending).body, b"bad_request");
    }
}
