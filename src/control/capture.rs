//! `ctl capture`: frames of chosen ports, as they arrive (ingress hook), as they leave (the
//! egress seam) and, with `--drops`, as the pipeline dropped them (with the reason), streamed
//! as pcapng over the control socket.
//!
//! Invariants: with no session a port costs one branch per frame; a session's frames go
//! through a bounded queue with `try_send`, so a slow reader never stalls forwarding: what does
//! not fit is counted (`lost`) and reported at the end, in the pcapng statistics block and the
//! summary line. A session ends when its count is reached or its client goes away; the loop
//! forgets it at the next prune.
//!
//! Wire format after the JSON response line: chunks of `u32` big-endian length + pcapng bytes,
//! then a zero length and one JSON summary line.

use super::pcapng::{self, Dir};
use crate::datapath::DroppedFrame;
use crate::switch::PortId;
use crate::wire::vnet::{Gso, VnetHdr};
use crossbeam_channel::{Receiver, Sender};
use serde::{Deserialize, Serialize};
use std::io::{self, BufRead, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Frames queued for one session before new ones are counted as lost...
pub const QUEUE: usize = 4096;
/// ... and bytes (super-frames are up to 64 KiB each).
pub const QUEUE_BYTES: usize = 16 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    In,
    Out,
    #[default]
    Both,
}

/// One captured frame on its way to the session's writer.
#[derive(Debug, Clone)]
pub struct Captured {
    /// Index of the port in the session's list (its pcapng interface id).
    pub iface: u32,
    pub ts_us: u64,
    pub dir: Dir,
    pub frame: Vec<u8>,
    pub comment: Option<String>,
}

/// What the control thread and the loop share about a session.
#[derive(Debug, Clone)]
pub struct Link {
    pub tx: Sender<Captured>,
    pub lost: Arc<AtomicU64>,
    pub closed: Arc<AtomicBool>,
    /// Bytes queued and not written yet.
    pub queued: Arc<AtomicU64>,
}

impl Link {
    pub fn new() -> (Link, Receiver<Captured>) {
        let (tx, rx) = crossbeam_channel::bounded(QUEUE);
        let z = || Arc::new(AtomicU64::new(0));
        (Link { tx, lost: z(), closed: Arc::new(AtomicBool::new(false)), queued: z() }, rx)
    }
}

struct Session {
    ports: Vec<PortId>,
    dir: Direction,
    drops: bool,
    link: Link,
}

const IN: u8 = 1;
const OUT: u8 = 2;
const DROPS: u8 = 4;

/// The loop's sessions, and per port what any of them wants.
#[derive(Default)]
pub struct Hub {
    sessions: Vec<Session>,
    mask: Vec<u8>,
}

fn now_us() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

/// A super-frame's (or partial-checksum frame's) offload metadata, for the pcapng comment.
pub fn vnet_comment(v: &VnetHdr) -> Option<String> {
    if v.is_plain() {
        return None;
    }
    let gso = match v.gso {
        Gso::None => "none",
        Gso::TcpV4 => "tcpv4",
        Gso::TcpV6 => "tcpv6",
        Gso::UdpL4 => "udp_l4",
    };
    Some(format!(
        "vnet: gso={gso} gso_size={} hdr_len={} csum_start={} csum_offset={}{}",
        v.gso_size,
        v.hdr_len,
        v.csum_start,
        v.csum_offset,
        if v.needs_csum { " needs_csum" } else { "" }
    ))
}

impl Hub {
    /// Whether any session runs (the hot path's one branch).
    #[inline]
    pub fn any(&self) -> bool {
        !self.sessions.is_empty()
    }

    pub fn add(&mut self, ports: Vec<PortId>, dir: Direction, drops: bool, link: Link) {
        self.sessions.push(Session { ports, dir, drops, link });
        self.remask();
    }

    /// Ends the sessions on ports `gone` says are not what they were (a reload removed them or
    /// gave their slot to another port): a capture never shows another VM's frames under the
    /// name it was started with. The writer sees the session closed and finishes the file.
    pub fn end_ports(&mut self, gone: impl Fn(PortId) -> bool) {
        for s in self.sessions.iter().filter(|s| s.ports.iter().any(|p| gone(*p))) {
            s.link.closed.store(true, Ordering::Relaxed);
        }
        self.prune();
    }

    /// Forgets sessions whose client is gone; true if any was.
    pub fn prune(&mut self) -> bool {
        let n = self.sessions.len();
        self.sessions.retain(|s| !s.link.closed.load(Ordering::Relaxed));
        let changed = self.sessions.len() != n;
        if changed {
            self.remask();
        }
        changed
    }

    fn remask(&mut self) {
        self.mask.clear();
        for s in &self.sessions {
            for p in &s.ports {
                let i = p.0 as usize;
                if self.mask.len() <= i {
                    self.mask.resize(i + 1, 0);
                }
                self.mask[i] |= match s.dir {
                    Direction::In => IN,
                    Direction::Out => OUT,
                    Direction::Both => IN | OUT,
                } | if s.drops { DROPS } else { 0 };
            }
        }
    }

    /// The ports whose drops some session wants.
    pub fn drop_ports(&self) -> Vec<PortId> {
        self.mask.iter().enumerate().filter(|(_, m)| **m & DROPS != 0).map(|(i, _)| PortId(i as u16)).collect()
    }

    fn wants(&self, port: PortId, bit: u8) -> bool {
        self.mask.get(port.0 as usize).is_some_and(|m| m & bit != 0)
    }

    fn deliver(&self, port: PortId, dir: Option<Dir>, make: &dyn Fn(u32) -> Captured) {
        for s in &self.sessions {
            let ok_dir = match (dir, s.dir) {
                (None, _) => s.drops,
                (Some(_), Direction::Both) => true,
                (Some(Dir::In), Direction::In) | (Some(Dir::Out), Direction::Out) => true,
                _ => false,
            };
            if !ok_dir {
                continue;
            }
            let Some(i) = s.ports.iter().position(|p| *p == port) else { continue };
            let c = make(i as u32);
            let n = c.frame.len() as u64;
            if s.link.queued.load(Ordering::Relaxed) + n > QUEUE_BYTES as u64 || s.link.tx.try_send(c).is_err() {
                s.link.lost.fetch_add(1, Ordering::Relaxed);
            } else {
                s.link.queued.fetch_add(n, Ordering::Relaxed);
            }
        }
    }

    /// A frame crossing `port` (the vnet header, if the port carries one, goes in a comment).
    pub fn record(&self, port: PortId, dir: Dir, vnet: Option<&VnetHdr>, frame: &[u8]) {
        if !self.wants(port, if dir == Dir::In { IN } else { OUT }) {
            return;
        }
        let ts = now_us();
        let comment = vnet.and_then(vnet_comment);
        self.deliver(port, Some(dir), &|iface| Captured { iface, ts_us: ts, dir, frame: frame.to_vec(), comment: comment.clone() });
    }

    /// Dropped frames the datapath could not keep for capture: lost to every drops session.
    pub fn missed_drops(&self, n: u64) {
        if n > 0 {
            for s in self.sessions.iter().filter(|s| s.drops) {
                s.link.lost.fetch_add(n, Ordering::Relaxed);
            }
        }
    }

    /// A frame the pipeline dropped on a watched port.
    pub fn record_drop(&self, d: &DroppedFrame) {
        if !self.wants(d.port, DROPS) {
            return;
        }
        let ts = now_us();
        let comment = match vnet_comment(&d.vnet) {
            Some(v) => format!("dropped: {} ({v})", d.reason.name()),
            None => format!("dropped: {}", d.reason.name()),
        };
        self.deliver(d.port, None, &|iface| Captured { iface, ts_us: ts, dir: Dir::In, frame: d.frame.clone(), comment: Some(comment.clone()) });
    }
}

/// Summary at the end of a capture.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Summary {
    pub captured: u64,
    pub lost: u64,
}

fn chunk(s: &mut impl Write, b: &[u8]) -> io::Result<()> {
    s.write_all(&(b.len() as u32).to_be_bytes())?;
    s.write_all(b)
}

/// The control thread's side: streams the session's frames to the client until `count` frames
/// are written or the client goes away, then the statistics and the summary.
pub fn stream(mut s: impl super::Conn, ports: &[String], count: Option<u64>, rx: Receiver<Captured>, link: &Link) -> io::Result<Summary> {
    let mut head = pcapng::section_header();
    for p in ports {
        head.extend(pcapng::interface(p));
    }
    let r = (|| {
        chunk(&mut s, &head)?;
        let mut n = 0u64;
        while count.is_none_or(|c| n < c) {
            match rx.recv_timeout(Duration::from_millis(500)) {
                Ok(c) => {
                    link.queued.fetch_sub(c.frame.len() as u64, Ordering::Relaxed);
                    chunk(&mut s, &pcapng::packet(c.iface, c.ts_us, &c.frame, c.dir, c.comment.as_deref()))?;
                    n += 1;
                }
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                    // The loop ended the session (its port was removed or given to another VM).
                    if link.closed.load(Ordering::Relaxed) {
                        break;
                    }
                    if s.hung_up() {
                        return Err(io::Error::from(io::ErrorKind::BrokenPipe));
                    }
                }
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
            }
        }
        Ok(n)
    })();
    // The loop stops feeding the session either way.
    link.closed.store(true, Ordering::Relaxed);
    let n = r?;
    let lost = link.lost.load(Ordering::Relaxed);
    let mut tail = Vec::new();
    // Losses are the session's, not per port: all on the first interface.
    for i in 0..ports.len() {
        tail.extend(pcapng::statistics(i as u32, now_us(), if i == 0 { lost } else { 0 }));
    }
    chunk(&mut s, &tail)?;
    s.write_all(&0u32.to_be_bytes())?;
    let sum = Summary { captured: n, lost };
    let mut line = serde_json::to_string(&sum).unwrap_or_default();
    line.push('\n');
    s.write_all(line.as_bytes())?;
    Ok(sum)
}

/// The client's side, after the response line: writes the pcapng bytes to `out` (flushing each
/// chunk, so `| tcpdump -r -` sees frames as they come) and returns the summary.
pub fn receive(r: &mut impl BufRead, out: &mut impl Write) -> io::Result<Summary> {
    let mut buf = Vec::new();
    loop {
        let mut len = [0u8; 4];
        r.read_exact(&mut len)?;
        let len = u32::from_be_bytes(len) as usize;
        if len == 0 {
            break;
        }
        if len > 1 << 20 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "capture chunk too large"));
        }
        buf.resize(len, 0);
        r.read_exact(&mut buf)?;
        out.write_all(&buf)?;
        out.flush()?;
    }
    let mut line = String::new();
    r.read_line(&mut line)?;
    serde_json::from_str(line.trim()).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    #[test]
    fn a_full_queue_counts_losses_and_never_blocks() {
        let mut hub = Hub::default();
        assert!(!hub.any());
        let (link, rx) = Link::new();
        hub.add(vec![PortId(3)], Direction::In, true, link.clone());
        assert_eq!(hub.drop_ports(), vec![PortId(3)]);
        for _ in 0..QUEUE + 10 {
            hub.record(PortId(3), Dir::In, None, &[1, 2, 3]);
        }
        // Other ports and the other direction are not captured.
        hub.record(PortId(2), Dir::In, None, &[1]);
        hub.record(PortId(3), Dir::Out, None, &[1]);
        assert_eq!(rx.len(), QUEUE);
        assert_eq!(link.lost.load(Ordering::Relaxed), 10);
        link.closed.store(true, Ordering::Relaxed);
        assert!(hub.prune());
        assert!(!hub.any() && hub.drop_ports().is_empty());
    }

    #[test]
    fn stream_and_receive_round_trip() {
        let (a, b) = UnixStream::pair().unwrap();
        let (link, rx) = Link::new();
        link.tx.send(Captured { iface: 0, ts_us: 1, dir: Dir::In, frame: vec![9; 60], comment: Some("dropped: spoofed_mac".into()) }).unwrap();
        link.tx.send(Captured { iface: 0, ts_us: 2, dir: Dir::Out, frame: vec![8; 60], comment: None }).unwrap();
        let l2 = link.clone();
        let t = std::thread::spawn(move || stream(a, &["g1".into()], Some(2), rx, &l2).unwrap());
        let mut out = Vec::new();
        let sum = receive(&mut std::io::BufReader::new(b), &mut out).unwrap();
        assert_eq!((sum.captured, sum.lost), (2, 0));
        assert_eq!(t.join().unwrap().captured, 2);
        assert_eq!(&out[..4], &[0x0a, 0x0d, 0x0d, 0x0a]);
        assert!(out.windows(20).any(|w| w == b"dropped: spoofed_mac"));
        assert!(link.closed.load(Ordering::Relaxed));
    }
}
