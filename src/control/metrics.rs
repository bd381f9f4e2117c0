//! The Prometheus endpoint (`[router] metrics_listen`): a thread of its own serving
//! `GET /metrics` over HTTP/1.1 from the snapshot the datapath thread last published. A scrape
//! never reaches the datapath thread. One client at a time, each with short timeouts, so a
//! client that connects and says nothing holds the endpoint for at most a few seconds.

use super::telemetry::{registry, render, Published};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(3);
const MAX_HEAD: usize = 8 * 1024;

/// Binds `addr` and serves it from a background thread; the bound address comes back (port 0
/// picks one).
pub fn serve(addr: SocketAddr, published: Published) -> io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let local = listener.local_addr()?;
    let reg = registry(published);
    std::thread::Builder::new().name("metrics".into()).spawn(move || {
        for s in listener.incoming() {
            match s {
                Ok(s) => {
                    if let Err(e) = answer(s, &|| render(&reg)) {
                        tracing::debug!("metrics client: {e}");
                    }
                }
                Err(e) => tracing::warn!("metrics accept: {e}"),
            }
        }
    })?;
    Ok(local)
}

/// Reads one request head and answers it.
fn answer(mut s: TcpStream, body: &dyn Fn() -> String) -> io::Result<()> {
    // One deadline for the whole head: a client trickling bytes cannot hold the endpoint.
    let deadline = std::time::Instant::now() + TIMEOUT;
    s.set_write_timeout(Some(TIMEOUT))?;
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        s.set_read_timeout(Some(left))?;
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > MAX_HEAD {
            return respond(&mut s, "431 Request Header Fields Too Large", "text/plain", "request head too large\n");
        }
    }
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut w = line.split(' ');
    let (method, path) = (w.next().unwrap_or(""), w.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET", "/metrics") => respond(&mut s, "200 OK", "text/plain; version=0.0.4; charset=utf-8", &body()),
        ("GET", "/") => respond(&mut s, "200 OK", "text/plain; charset=utf-8", "vrouter: metrics at /metrics\n"),
        ("GET", _) => respond(&mut s, "404 Not Found", "text/plain", "not found\n"),
        _ => respond(&mut s, "405 Method Not Allowed", "text/plain", "only GET\n"),
    }
}

fn respond(s: &mut TcpStream, status: &str, ctype: &str, body: &str) -> io::Result<()> {
    let head = format!("HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
    s.write_all(head.as_bytes())?;
    s.write_all(body.as_bytes())?;
    s.flush()
}

#[cfg(test)]
mod tests {
    use super::super::telemetry::Telemetry;
    use super::*;
    use std::sync::{Arc, Mutex};

    fn get(addr: SocketAddr, req: &str) -> String {
        let mut c = TcpStream::connect(addr).unwrap();
        c.write_all(req.as_bytes()).unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn serves_the_published_snapshot_over_http() {
        let published: Published = Arc::new(Mutex::new(Arc::new(Telemetry { router: "r1".into(), ..Default::default() })));
        let addr = serve("127.0.0.1:0".parse().unwrap(), published.clone()).unwrap();
        let r = get(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(r.contains("vrouter_build_info{version=\"") && r.contains("router=\"r1\""), "{r}");
        // A newer snapshot is what the next scrape sees.
        *published.lock().unwrap() = Arc::new(Telemetry { router: "r2".into(), ..Default::default() });
        assert!(get(addr, "GET /metrics HTTP/1.0\r\n\r\n").contains("router=\"r2\""));
        assert!(get(addr, "GET /nope HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
        assert!(get(addr, "POST /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405"));
        // A client that sends garbage and goes away does not take the endpoint with it.
        drop(TcpStream::connect(addr).unwrap());
        assert!(get(addr, "GET /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 200"));
    }
}
