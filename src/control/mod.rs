//! The control plane's socket API: a Unix socket (mode 0600) speaking one JSON request per
//! connection, one JSON response back. A listener thread parses requests and forwards them over
//! a crossbeam channel to the datapath thread, which answers between batches. Bad requests get
//! an error response; nothing a client sends can stop the datapath.

pub mod capture;
pub mod health;
pub mod pcapng;
pub mod reload;
pub mod metrics;
pub mod telemetry;
pub mod top;

use crossbeam_channel::{Receiver, Sender};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

/// The tables `ctl show` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Table {
    Ports,
    Fdb,
    Leases,
    Conntrack,
    Lb,
    Stats,
    Metadata,
    Vpn,
    Bgp,
    Evpn,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase", deny_unknown_fields)]
pub enum Request {
    Show {
        table: Table,
        /// Where a paged table (conntrack) continues; the answer's `next` gives the next one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        offset: Option<usize>,
    },
    Reload,
    /// Stream a pcapng capture of `port` (several: comma-separated) until `count` frames.
    Capture {
        port: String,
        count: Option<u64>,
        #[serde(default)]
        direction: capture::Direction,
        /// Also frames the pipeline dropped on the port, with the reason.
        #[serde(default)]
        drops: bool,
    },
    /// The health checks (`ctl health`).
    Health,
    /// A one-time password for a VM (`ctl set-password`); held in memory, never logged.
    SetPassword { port: String, password: String },
    /// What applying this config text (from `path`, for messages) would change (`ctl diff`).
    Diff { config: String, path: String },
    /// Validate this config text (from `path`, for messages), apply it and make it the config
    /// file (`ctl apply`).
    Apply { config: String, path: String },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Response {
    pub fn ok(data: Value) -> Self {
        Response { ok: true, data: Some(data), error: None }
    }
    pub fn err(msg: impl Into<String>) -> Self {
        Response { ok: false, data: None, error: Some(msg.into()) }
    }
}

/// A request on its way to the datapath, with where to send the answer (and for a capture,
/// where to send the frames).
pub struct Envelope {
    pub request: Request,
    pub reply: Sender<Response>,
    pub capture: Option<capture::Link>,
    /// A change built by the control side (`reload`, `apply`), for the loop to put in place.
    pub staged: Option<Box<reload::Staged>>,
}

/// Errors of the control socket, server or client side.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Something that is not a socket sits where the socket should go; it is not removed.
    #[error("{0}: exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    /// Another process already serves this socket.
    #[error("{0}: another vrouter is already listening here")]
    InUse(PathBuf),
    /// The socket could not be created or reached.
    #[error("{}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    /// The daemon answered something that is not a response.
    #[error("bad response from {path}: {msg}")]
    Protocol { path: PathBuf, msg: String },
    /// The daemon refused the request.
    #[error("{0}")]
    Refused(String),
}

/// A request is one line: a whole config (`ctl diff`, `ctl apply`) may come in it.
const MAX_REQUEST: u64 = 16 * 1024 * 1024;
const MAX_CLIENTS: usize = 16;
const TIMEOUT: Duration = Duration::from_secs(10);

/// Binds the socket and serves it from a background thread. `wake` is called after each
/// forwarded request so the poll loop notices.
/// `heartbeat` holds the unix time (ms) of the datapath loop's last turn: a health request the
/// loop does not answer in time is answered here, as failing, with how long the loop stalled.
/// `applier` stages `reload` and `apply` on the connection's thread.
pub fn serve(
    path: &Path,
    tx: Sender<Envelope>,
    wake: impl Fn() + Send + Sync + 'static,
    heartbeat: std::sync::Arc<std::sync::atomic::AtomicU64>,
    applier: std::sync::Arc<reload::Applier>,
) -> Result<(), ControlError> {
    let io = |source| ControlError::Io { path: path.to_path_buf(), source };
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(ControlError::NotASocket(path.to_path_buf()));
        }
        if UnixStream::connect(path).is_ok() {
            return Err(ControlError::InUse(path.to_path_buf()));
        }
        // A stale socket of a vrouter that died (kill -9): take its place.
        std::fs::remove_file(path).map_err(io)?;
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    // The socket is created 0600 (no window where others could connect); umask is
    // process-wide, and no other thread exists yet while the daemon starts.
    // SAFETY: umask only swaps the process's file-creation mask.
    let old = unsafe { libc::umask(0o177) };
    let bound = UnixListener::bind(path);
    // SAFETY: as above, restoring the previous mask.
    unsafe { libc::umask(old) };
    let listener = bound.map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            // One thread per connection, at most MAX_CLIENTS at once, so a client that
            // connects and says nothing cannot block `ctl` for others.
            let wake = std::sync::Arc::new(wake);
            let busy = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
            for stream in listener.incoming() {
                let s = match stream {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!("control accept: {e}");
                        continue;
                    }
                };
                if busy.fetch_add(1, Ordering::SeqCst) >= MAX_CLIENTS {
                    busy.fetch_sub(1, Ordering::SeqCst);
                    let _ = (&s).write_all(b"{\"ok\":false,\"error\":\"too many control clients\"}\n");
                    continue;
                }
                let (tx, wake, done, beat, ap) = (tx.clone(), wake.clone(), busy.clone(), heartbeat.clone(), applier.clone());
                let spawned = std::thread::Builder::new().name("control-conn".into()).spawn(move || {
                    if let Err(e) = handle(s, &tx, &*wake, &beat, &ap) {
                        tracing::debug!("control connection: {e}");
                    }
                    done.fetch_sub(1, Ordering::SeqCst);
                });
                if spawned.is_err() {
                    busy.fetch_sub(1, Ordering::SeqCst);
                }
            }
        })
        .map_err(io)?;
    Ok(())
}

/// How long a health request waits for the datapath loop before calling it stalled.
const HEALTH_WAIT: Duration = Duration::from_secs(2);

/// The answer to a health request the loop did not give: failing, the loop stalled.
fn stalled(beat: &std::sync::atomic::AtomicU64) -> Response {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    let ms = now.saturating_sub(beat.load(Ordering::Relaxed));
    let c = health::Check { check: "datapath", status: health::Status::Failing, detail: format!("loop has not turned for {ms} ms (no answer)") };
    Response::ok(serde_json::json!({"status": health::Status::Failing, "checks": [c]}))
}

/// A control connection: a Unix socket, or the virtio-serial port a system VM's host talks
/// through. Either carries the same protocol: one request line, one response line (and for a
/// capture, the stream after it).
pub trait Conn: Read + Write {
    /// Whether the client went away (asked while a capture has nothing to send).
    fn hung_up(&self) -> bool;
}

impl Conn for UnixStream {
    fn hung_up(&self) -> bool {
        let mut b = [0u8; 1];
        // SAFETY: recv writes at most one byte into `b`, which lives for the call; MSG_PEEK
        // leaves the data queued and MSG_DONTWAIT keeps the call from blocking.
        let n = unsafe { libc::recv(self.as_raw_fd(), b.as_mut_ptr().cast(), 1, libc::MSG_PEEK | libc::MSG_DONTWAIT) };
        n == 0 || (n < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::WouldBlock)
    }
}

fn handle(s: UnixStream, tx: &Sender<Envelope>, wake: &dyn Fn(), beat: &std::sync::atomic::AtomicU64, applier: &reload::Applier) -> std::io::Result<()> {
    s.set_read_timeout(Some(TIMEOUT))?;
    s.set_write_timeout(Some(TIMEOUT))?;
    let mut line = Vec::new();
    BufReader::new((&s).take(MAX_REQUEST)).read_until(b'\n', &mut line)?;
    answer(s, &line, tx, wake, beat, applier)
}

/// Answers one request line on `s` (and streams a capture after the answer).
fn answer<C: Conn>(mut s: C, line: &[u8], tx: &Sender<Envelope>, wake: &dyn Fn(), beat: &std::sync::atomic::AtomicU64, applier: &reload::Applier) -> std::io::Result<()> {
    let mut cap = None;
    let resp = match serde_json::from_slice::<Request>(line.trim_ascii()) {
        Err(e) => Response::err(format!("bad request: {e}")),
        Ok(Request::Reload) => applier.reload(tx, wake),
        Ok(Request::Apply { config, path }) => applier.apply(&config, &path, tx, wake),
        Ok(Request::Diff { config, path }) => applier.diff(&config, &path),
        Ok(request) => {
            let health = request == Request::Health;
            if let Request::Capture { port, count, .. } = &request {
                cap = Some((port.split(',').map(String::from).collect::<Vec<_>>(), *count, capture::Link::new()));
            }
            let link = cap.as_ref().map(|(_, _, (l, _))| l.clone());
            let (rtx, rrx) = crossbeam_channel::bounded(1);
            // A full inbox is a stalled loop too: never block on it.
            if let Err(e) = tx.try_send(Envelope { request, reply: rtx, capture: link, staged: None }) {
                match e {
                    crossbeam_channel::TrySendError::Disconnected(_) => Response::err("vrouter is shutting down"),
                    crossbeam_channel::TrySendError::Full(_) if health => stalled(beat),
                    crossbeam_channel::TrySendError::Full(_) => Response::err("datapath busy: too many requests waiting"),
                }
            } else {
                wake();
                let wait = if health { HEALTH_WAIT } else { TIMEOUT };
                match rrx.recv_timeout(wait) {
                    Ok(r) => r,
                    Err(_) if health => stalled(beat),
                    Err(_) => Response::err("datapath did not answer in time"),
                }
            }
        }
    };
    let mut out = serde_json::to_string(&resp).unwrap_or_else(|_| r#"{"ok":false}"#.into());
    out.push('\n');
    s.write_all(out.as_bytes())?;
    match cap {
        Some((ports, count, (link, rx))) if resp.ok => {
            let sum = capture::stream(s, &ports, count, rx, &link)?;
            tracing::info!(ports = %ports.join(","), captured = sum.captured, lost = sum.lost, "capture ended");
        }
        Some((_, _, (link, _))) => link.closed.store(true, Ordering::Relaxed),
        None => {}
    }
    Ok(())
}

/// A virtio-serial port (`/dev/virtio-ports/NAME`): the guest's end of a line the host maps to
/// a Unix socket of its own. The host side connecting and going away is seen as POLLHUP
/// clearing and returning.
struct Serial<'a>(&'a std::fs::File);

impl Read for Serial<'_> {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        (&*self.0).read(b)
    }
}

impl Write for Serial<'_> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        (&*self.0).write(b)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Conn for Serial<'_> {
    fn hung_up(&self) -> bool {
        poll_port(self.0, 0) & libc::POLLHUP != 0
    }
}

/// poll(2) on one fd for input; the events seen (0 on timeout or error).
fn poll_port(f: &std::fs::File, timeout_ms: i32) -> i16 {
    let mut p = libc::pollfd { fd: f.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd that lives for the call; the fd is open (owned by `f`).
    let n = unsafe { libc::poll(&mut p, 1, timeout_ms) };
    if n > 0 {
        p.revents
    } else {
        0
    }
}

/// Serves the control protocol on a virtio-serial port as well (a system VM's line to its
/// host, where QEMU maps it to a Unix socket): requests are read line by line, each answered
/// in turn. While no host client is connected the port reads end-of-file (POLLHUP): a partial
/// request is thrown away, and the port is looked at again every 100 ms. A port that is not
/// there yet is waited for.
pub fn serve_serial(
    path: &Path,
    tx: Sender<Envelope>,
    wake: impl Fn() + Send + Sync + 'static,
    heartbeat: std::sync::Arc<std::sync::atomic::AtomicU64>,
    applier: std::sync::Arc<reload::Applier>,
) -> Result<(), ControlError> {
    let path = path.to_path_buf();
    let at = path.clone();
    let io = |source| ControlError::Io { path: at, source };
    std::thread::Builder::new()
        .name("control-serial".into())
        .spawn(move || {
            let mut warned = false;
            loop {
                let f = match std::fs::OpenOptions::new().read(true).write(true).open(&path) {
                    Ok(f) => f,
                    Err(e) => {
                        if !warned {
                            tracing::warn!(path = %path.display(), "control port not there yet: {e}");
                            warned = true;
                        }
                        std::thread::sleep(Duration::from_secs(1));
                        continue;
                    }
                };
                tracing::info!(path = %path.display(), "control on the serial port");
                warned = false;
                let mut pending: Vec<u8> = Vec::new();
                let mut chunk = vec![0u8; 64 * 1024];
                loop {
                    let ev = poll_port(&f, 500);
                    if ev & libc::POLLIN == 0 {
                        if ev & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0 {
                            // No host client: whatever half a request was there is gone.
                            pending.clear();
                            std::thread::sleep(Duration::from_millis(100));
                        }
                        continue;
                    }
                    let n = match (&f).read(&mut chunk) {
                        Ok(0) => {
                            pending.clear();
                            std::thread::sleep(Duration::from_millis(100));
                            continue;
                        }
                        Ok(n) => n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            tracing::warn!(path = %path.display(), "control port: {e}");
                            break;
                        }
                    };
                    pending.extend_from_slice(&chunk[..n]);
                    while let Some(i) = pending.iter().position(|b| *b == b'\n') {
                        let line: Vec<u8> = pending.drain(..=i).collect();
                        if let Err(e) = answer(Serial(&f), &line, &tx, &wake, &heartbeat, &applier) {
                            tracing::debug!("control port answer: {e}");
                        }
                    }
                    if pending.len() as u64 > MAX_REQUEST {
                        pending.clear();
                        let _ = (&f).write_all(b"{\"ok\":false,\"error\":\"request too long\"}\n");
                    }
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        })
        .map_err(io)?;
    Ok(())
}

/// Sends a streaming request (a capture) and returns the connection after its response line.
pub fn open_stream(path: &Path, req: &Request) -> Result<(BufReader<UnixStream>, Value), ControlError> {
    let io = |source| ControlError::Io { path: path.to_path_buf(), source };
    let s = UnixStream::connect(path).map_err(io)?;
    let mut line = serde_json::to_string(req).map_err(|e| ControlError::Protocol { path: path.into(), msg: e.to_string() })?;
    line.push('\n');
    (&s).write_all(line.as_bytes()).map_err(io)?;
    let mut r = BufReader::new(s);
    let mut resp = String::new();
    r.read_line(&mut resp).map_err(io)?;
    let resp: Response = serde_json::from_str(resp.trim()).map_err(|e| ControlError::Protocol { path: path.into(), msg: e.to_string() })?;
    if !resp.ok {
        return Err(ControlError::Refused(resp.error.unwrap_or_else(|| "request failed".into())));
    }
    Ok((r, resp.data.unwrap_or(Value::Null)))
}


/// Sends one request to the daemon at `path` and returns its data.
pub fn request(path: &Path, req: &Request) -> Result<Value, ControlError> {
    let io = |source| ControlError::Io { path: path.to_path_buf(), source };
    let s = UnixStream::connect(path).map_err(io)?;
    // A change is built and then waited for (up to 10 s for the loop to take it): more room.
    let wait = match req {
        Request::Reload | Request::Apply { .. } => Duration::from_secs(60),
        _ => TIMEOUT + Duration::from_secs(2),
    };
    s.set_read_timeout(Some(wait)).map_err(io)?;
    let mut line = serde_json::to_string(req).map_err(|e| ControlError::Protocol { path: path.into(), msg: e.to_string() })?;
    line.push('\n');
    (&s).write_all(line.as_bytes()).map_err(io)?;
    let mut resp = String::new();
    BufReader::new(&s).read_line(&mut resp).map_err(io)?;
    let r: Response = serde_json::from_str(resp.trim())
        .map_err(|e| ControlError::Protocol { path: path.into(), msg: e.to_string() })?;
    if r.ok {
        Ok(r.data.unwrap_or(Value::Null))
    } else {
        Err(ControlError::Refused(r.error.unwrap_or_else(|| "request failed".into())))
    }
}

/// The datapath thread's side: requests waiting to be answered.
pub type Inbox = Receiver<Envelope>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_wire_format() {
        let r = Request::Show { table: Table::Fdb, offset: None };
        assert_eq!(serde_json::to_string(&r).unwrap(), r#"{"cmd":"show","table":"fdb"}"#);
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"show","table":"nope"}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"show","table":"fdb","x":1}"#).is_err());
        assert!(serde_json::from_str::<Request>("\u{0}garbage").is_err());
    }
}
