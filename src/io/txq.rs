//! Small frames leaving during one port's turn, written together at its end.
//!
//! Why: a 64-byte frame costs a syscall to write whatever its size, and every write to a tap
//! wakes whoever reads the other side (the guest's socket). Written one by one between reads,
//! each frame pays a wakeup of the receiver and often a preemption of the loop (the profile of
//! a 64-byte UDP flood: a third of the loop's time in the scheduler on return from `writev`).
//! Written back to back, the first frame of a burst wakes the reader and the rest find it awake.
//!
//! How they are written: on taps through io_uring (one `io_uring_enter` for the whole burst,
//! so the loop meets one preemption point per burst instead of one per frame: on this kernel,
//! `PREEMPT_NONE`, the receiver a write wakes takes the CPU at the write's return), else, and
//! where the kernel refuses io_uring, one `write` per frame. On packet sockets (how QEMU's taps
//! are attached) a port's run of frames leaves in one `sendmmsg` (non-blocking: a full socket
//! ends the run with EAGAIN, counted, instead of waiting).
//!
//! Invariants: frames to one port leave in the order the pipeline sent them (a frame that is
//! not queued, a super-frame or one sent outside a port's turn, first writes everything
//! queued); nothing stays queued past the turn that queued it ([`TxQueue::flush`] is called at
//! its end); a write that fails is reported back so the port's counters move it from sent to
//! dropped. The queue is one arena allocated once: no allocation per frame.

use super::device::Device;
use crate::sys::packet::SEND_MANY;
use io_uring::{opcode, types, IoUring};
use crate::switch::stats::DropReason;
use crate::switch::PortId;
use crate::wire::vnet::VnetHdr;

/// Frames up to this size (vnet header included) are queued; larger ones (super-frames) are
/// written at once: one write already carries many segments, and copying them would cost more
/// than the syscall saved.
pub const SMALL: usize = 2048;
/// The arena: 128 frames of the largest queued size.
const ARENA: usize = 128 * SMALL;
/// At most this many frames wait (a turn reads at most the loop's budget; a flood multiplies).
const MAX_FRAMES: usize = 512;

#[derive(Clone, Copy)]
struct Item {
    port: PortId,
    off: u32,
    len: u32,
    hdr: u8,
}

pub struct TxQueue {
    data: Vec<u8>,
    items: Vec<Item>,
    /// Writes that failed since the loop last looked: (port, why, bytes of the frame).
    pub failed: Vec<(PortId, DropReason, u64)>,
    ring: Option<Ring>,
}

/// The io_uring that writes to taps, and what it still holds.
struct Ring {
    ring: IoUring,
    /// Writes submitted whose completion has not been seen (only when a burst outlived the
    /// wait below; a tap write does not wait, so this stays 0 in practice).
    inflight: usize,
    /// Arenas such writes still read from: kept until their completions arrive.
    parked: Vec<Vec<u8>>,
    /// Which flush a completion belongs to: the high half of its user_data.
    gen: u32,
}

/// What a failed write means for the frame.
pub fn reason(e: &std::io::Error) -> DropReason {
    match e.raw_os_error() {
        Some(libc::EIO | libc::ENETDOWN | libc::ENXIO | libc::EBADFD | libc::ENODEV) => DropReason::PortDown,
        Some(libc::EAGAIN | libc::ENOBUFS) => DropReason::TxFull,
        _ => DropReason::TxError,
    }
}

/// How long a flush waits for its writes before it parks them and goes on.
const WAIT: types::Timespec = types::Timespec::new().sec(1);

impl TxQueue {
    /// A queue that writes to taps through io_uring when `uring` and the kernel allows it.
    /// Why it could not is returned with the queue (for the log).
    pub fn new(uring: bool) -> (TxQueue, Option<std::io::Error>) {
        let (ring, err) = if uring {
            let built = IoUring::builder().setup_single_issuer().setup_coop_taskrun().build(MAX_FRAMES as u32).or_else(|_| IoUring::new(MAX_FRAMES as u32));
            match built {
                Ok(ring) => (Some(Ring { ring, inflight: 0, parked: Vec::new(), gen: 0 }), None),
                Err(e) => (None, Some(e)),
            }
        } else {
            (None, None)
        };
        let q = TxQueue { data: Vec::with_capacity(ARENA), items: Vec::with_capacity(MAX_FRAMES), failed: Vec::with_capacity(MAX_FRAMES), ring };
        (q, err)
    }

    /// Taps are written through io_uring.
    pub fn uring(&self) -> bool {
        self.ring.is_some()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Queues `frame` for `port` (written by `dev`) if it is small and there is room; false if
    /// the caller must write it itself (after [`TxQueue::flush`]).
    pub fn push(&mut self, port: PortId, dev: &Device, v: Option<&VnetHdr>, frame: &[u8]) -> bool {
        let hdr = dev.hdr_len();
        let len = hdr + frame.len();
        if len > SMALL || self.items.len() == MAX_FRAMES || self.data.len() + len > ARENA {
            return false;
        }
        let off = self.data.len();
        if hdr > 0 {
            self.data.extend_from_slice(&super::device::hdr_bytes(v)[..hdr]);
        }
        self.data.extend_from_slice(frame);
        self.items.push(Item { port, off: off as u32, len: len as u32, hdr: hdr as u8 });
        true
    }

    /// Writes every queued frame to its port's device (`dev(port)`; `None`: the port went away
    /// meanwhile), in order; returns how many were written. Failures land in `failed`.
    pub fn flush<'d>(&mut self, dev: impl Fn(PortId) -> Option<&'d Device>) -> usize {
        let mut sent = 0;
        let mut ring = self.ring.take();
        let mut submitted = 0;
        let gen = ring.as_mut().map_or(0, |r| {
            r.gen = r.gen.wrapping_add(1);
            r.gen
        });
        let mut i = 0;
        while i < self.items.len() {
            let it = self.items[i];
            let bytes = &self.data[it.off as usize..(it.off + it.len) as usize];
            let d = match (dev(it.port), ring.as_mut()) {
                (Some(d), Some(r)) if d.writes_never_wait() => {
                    let e = opcode::Write::new(types::Fd(d.as_raw_fd()), bytes.as_ptr(), bytes.len() as u32).build().user_data((gen as u64) << 32 | i as u64);
                    // SAFETY: the entry points into `self.data`, which is neither written nor
                    // freed until its completion is seen below (or, past the wait, it is parked
                    // with its writes until their completions arrive).
                    if unsafe { r.ring.submission().push(&e) }.is_ok() {
                        submitted += 1;
                        i += 1;
                        continue;
                    }
                    d
                }
                (Some(d), _) => d,
                (None, _) => {
                    self.failed.push((it.port, DropReason::PortDown, (it.len - it.hdr as u32) as u64));
                    i += 1;
                    continue;
                }
            };
            // The run of frames to this port from here: one sendmmsg on a packet socket.
            let mut run: [&[u8]; SEND_MANY] = [&[]; SEND_MANY];
            let mut k = 0;
            for next in self.items[i..].iter().take(SEND_MANY).take_while(|n| n.port == it.port) {
                run[k] = &self.data[next.off as usize..(next.off + next.len) as usize];
                k += 1;
            }
            match d.send_many(&run[..k]) {
                Ok(n) if n > 0 => {
                    sent += n;
                    i += n;
                }
                r => {
                    let why = r.err().map_or(DropReason::TxError, |e| reason(&e));
                    self.failed.push((it.port, why, (it.len - it.hdr as u32) as u64));
                    i += 1;
                }
            }
        }
        if let Some(r) = ring.as_mut() {
            if submitted > 0 || r.inflight > 0 {
                sent += self.reap(r, submitted);
            }
        }
        self.ring = ring;
        self.items.clear();
        self.data.clear();
        sent
    }

    /// One `io_uring_enter` submits the burst and waits for its completions.
    fn reap(&mut self, r: &mut Ring, submitted: usize) -> usize {
        let args = types::SubmitArgs::new().timespec(&WAIT);
        // ETIME (the wait ran out) or a refusal: whatever did not complete is parked below.
        while let Err(e) = r.ring.submitter().submit_with_args(submitted, &args) {
            if e.raw_os_error() != Some(libc::EINTR) {
                break;
            }
        }
        let mut sent = 0;
        let mut left = submitted;
        for cqe in r.ring.completion() {
            let ud = cqe.user_data();
            let Some(it) = self.items.get(ud as u32 as usize).filter(|_| (ud >> 32) as u32 == r.gen) else {
                // A parked write from an earlier flush.
                r.inflight = r.inflight.saturating_sub(1);
                continue;
            };
            left = left.saturating_sub(1);
            if cqe.result() >= 0 {
                sent += 1;
            } else {
                let e = std::io::Error::from_raw_os_error(-cqe.result());
                self.failed.push((it.port, reason(&e), (it.len - it.hdr as u32) as u64));
            }
        }
        if r.inflight == 0 {
            r.parked.clear();
        }
        if left > 0 {
            // The writes not yet complete still read this arena: it stays alive with them
            // (their frames counted as sent), and a new arena takes its place.
            sent += left;
            r.inflight += left;
            r.parked.push(std::mem::replace(&mut self.data, Vec::with_capacity(ARENA)));
        }
        sent
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buf::PacketBuf;
    use crate::io::device::{Port, Rx};
    use std::os::fd::{AsRawFd, RawFd};
    use std::os::unix::net::UnixDatagram;
    use std::time::Duration;

    /// A port whose writes are datagrams on a socket pair (each write one message).
    struct Sock {
        s: UnixDatagram,
        hdr: usize,
        never_waits: bool,
    }
    impl AsRawFd for Sock {
        fn as_raw_fd(&self) -> RawFd {
            self.s.as_raw_fd()
        }
    }
    impl Port for Sock {
        fn offload(&self) -> crate::wire::vnet::Offloads {
            crate::wire::vnet::Offloads::NONE
        }
        fn recv(&self, _: &mut PacketBuf) -> std::io::Result<Rx> {
            Err(std::io::ErrorKind::Unsupported.into())
        }
        fn hdr_len(&self) -> usize {
            self.hdr
        }
        fn send(&self, _: Option<&VnetHdr>, frame: &[u8]) -> std::io::Result<()> {
            self.send_raw(frame)
        }
        fn writes_never_wait(&self) -> bool {
            self.never_waits
        }
    }

    fn port(hdr: usize, never_waits: bool) -> (Device, UnixDatagram) {
        let (a, b) = UnixDatagram::pair().unwrap();
        b.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        (Box::new(Sock { s: a, hdr, never_waits }), b)
    }

    fn read(peer: &UnixDatagram) -> Vec<u8> {
        let mut b = [0u8; 4096];
        let n = peer.recv(&mut b).unwrap();
        b[..n].to_vec()
    }

    #[test]
    fn frames_leave_in_order_behind_their_headers_through_io_uring_and_write() {
        for uring in [true, false] {
            let (mut q, refused) = TxQueue::new(uring);
            assert!(refused.is_none(), "{refused:?}");
            assert_eq!(q.uring(), uring);
            // Port 0 takes io_uring's path when there is a ring; port 1 (a "packet socket")
            // takes vnet headers and the run path.
            let (d0, p0) = port(0, true);
            let (d1, p1) = port(crate::wire::vnet::HDR_LEN, false);
            let devs = [d0, d1];
            let v = VnetHdr { gso_size: 0x1234, ..VnetHdr::default() };
            for i in 0..20u8 {
                let p = PortId(u16::from(i % 2));
                assert!(q.push(p, &devs[p.0 as usize], Some(&v), &[i; 60]));
            }
            // Too big to queue: the caller writes it itself.
            assert!(!q.push(PortId(0), &devs[0], None, &[0u8; SMALL + 1]));
            assert_eq!(q.flush(|p| devs.get(p.0 as usize)), 20);
            assert!(q.is_empty() && q.failed.is_empty());
            let mut hdr = [0u8; crate::wire::vnet::HDR_LEN];
            v.emit(&mut hdr);
            for i in (0..20u8).step_by(2) {
                assert_eq!(read(&p0), vec![i; 60], "uring {uring}");
                assert_eq!(read(&p1), [&hdr[..], &[i + 1; 60][..]].concat(), "uring {uring}");
            }
        }
    }

    #[test]
    fn failed_writes_and_vanished_ports_are_reported_with_their_frame_bytes() {
        for uring in [true, false] {
            let (mut q, _) = TxQueue::new(uring);
            let (d0, p0) = port(0, true);
            let (d1, p1) = port(crate::wire::vnet::HDR_LEN, false);
            drop((p0, p1));
            let devs = [d0, d1];
            assert!(q.push(PortId(0), &devs[0], None, &[1; 100]));
            assert!(q.push(PortId(1), &devs[1], None, &[2; 70]));
            assert!(q.push(PortId(2), &devs[1], None, &[3; 50]));
            // Port 2 is gone by the time the burst leaves.
            assert_eq!(q.flush(|p| devs.get(p.0 as usize)), 0);
            let mut f = q.failed.clone();
            f.sort_by_key(|x| x.0 .0);
            assert_eq!(f, vec![(PortId(0), DropReason::TxError, 100), (PortId(1), DropReason::TxError, 70), (PortId(2), DropReason::PortDown, 50)], "uring {uring}");
        }
    }

    /// A write that outlives the flush's wait keeps its arena: the frame arrives intact after
    /// the next burst has been queued into a new arena.
    #[test]
    fn a_write_that_waits_keeps_its_arena_until_it_completes() {
        let (mut q, _) = TxQueue::new(true);
        let (a, peer) = UnixDatagram::pair().unwrap();
        peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        // Fill the peer's queue (blocking writer: io_uring then waits for room).
        a.set_nonblocking(true).unwrap();
        let mut filled = 0;
        while a.send(&[0xee; 10]).is_ok() {
            filled += 1;
        }
        a.set_nonblocking(false).unwrap();
        let devs: [Device; 1] = [Box::new(Sock { s: a, hdr: 0, never_waits: true })];
        assert!(q.push(PortId(0), &devs[0], None, &[0xaa; 300]));
        // Counted as sent (parked), not failed.
        assert_eq!(q.flush(|p| devs.get(p.0 as usize)), 1);
        assert!(q.failed.is_empty());
        assert_eq!(q.ring.as_ref().unwrap().inflight, 1);
        // The next burst reuses nothing of the parked arena.
        assert!(q.push(PortId(0), &devs[0], None, &[0x55; 300]));
        for _ in 0..filled {
            assert_eq!(read(&peer), vec![0xee; 10]);
        }
        // Our own reads let the parked write run (its task work runs on our syscalls).
        assert_eq!(read(&peer), vec![0xaa; 300]);
        assert_eq!(q.flush(|p| devs.get(p.0 as usize)), 1);
        assert_eq!(read(&peer), vec![0x55; 300]);
        let r = q.ring.as_ref().unwrap();
        assert_eq!((r.inflight, r.parked.len()), (0, 0));
    }
}
