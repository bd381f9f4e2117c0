//! Receive coalescing under load: what a NIC's adaptive interrupt moderation (Linux's
//! `net_dim`, `ethtool -C adaptive-rx`) does for its driver, done for the poll loop.
//!
//! A loop that drains its ports and polls again at once chases single frames when input is
//! continuous: every frame pays a poll, a read that finds the tap empty and a write of its
//! own, and the loop holds a CPU that the guests sending and receiving those frames need (on
//! a host where they share cores, the receiver then drops at its socket what vrouter worked
//! to forward). When the loop sees continuous input, it lets frames gather for a short pause
//! after draining, and then takes them as a burst: one poll and one batched write for many,
//! and the CPU is free meanwhile. Input that is not continuous (request/response, ping, a
//! quiet network) never pauses, so its latency is the spinning loop's.
//!
//! Only small UDP frames count toward continuity ([`counts`]). TCP is closed-loop: each
//! connection waits for acknowledgements and answers, so a pause slows every one of them
//! down, and many connections at once (a load balancer's clients) look continuous to the
//! loop: counting TCP, the load balancer's new connections/s fell from 18.8k to 14.8k. So
//! are the request/response services vrouter answers itself: counting DNS and DHCP, dnsperf
//! with 200 queries outstanding got 8% fewer answers a second. Small-datagram floods
//! (VoIP, telemetry, attacks, the 64-byte benchmark) are open-loop: nobody waits for the
//! frames ahead. A feedback trial instead (pause for 10 ms, keep pausing if as many frames
//! came, as net_dim does) was tried and could not tell the two apart: with the sender,
//! vrouter and the receiver sharing cores, one epoch's count varies more than the effect.
//! Frames from VXLAN peers do not count either (their inner frames are mostly TCP).
//!
//! Invariants: pure (time is passed in, nothing is read or slept here); a window's verdict
//! holds for the next window only; a pause is only ever asked for right after a turn that
//! took frames, and never while a port still has frames waiting (the caller checks that).

use std::time::{Duration, Instant};

/// How long the loop watches before it decides (again) whether input is continuous.
pub const WINDOW: Duration = Duration::from_millis(1);
/// Input is continuous at this many frames in a window or more (64k frames/s)...
pub const MIN_FRAMES: u32 = 64;
/// ...when the loop found its ports empty on at most this many polls per frame. A
/// request/response exchange leaves the loop spinning on empty ports between each frame and
/// the next (tens of polls a frame); a flood, almost never.
pub const IDLE_PER_FRAME: u32 = 1;

/// Frames up to this size count: per-frame costs are what pausing saves, and bulk UDP
/// (QUIC, tunnels) is closed-loop like TCP.
pub const SMALL: usize = 256;

/// Whether a received frame counts toward continuous input: a small IPv4 or IPv6 UDP
/// datagram, untagged or with one 802.1Q tag, to or from no port of the request/response
/// services vrouter answers (DNS, DHCP). See the module doc for why.
#[inline]
pub fn counts(frame: &[u8]) -> bool {
    if frame.len() > SMALL {
        return false;
    }
    let (et, l3) = match frame.get(12..14) {
        Some([0x81, 0x00]) => (frame.get(16..18), 18),
        et => (et, 14),
    };
    let l4 = match et {
        Some([0x08, 0x00]) if frame.get(l3 + 9) == Some(&17) => frame.get(l3).map(|b| l3 + usize::from(b & 0x0f) * 4),
        Some([0x86, 0xdd]) if frame.get(l3 + 6) == Some(&17) => Some(l3 + 40),
        _ => None,
    };
    let Some(ports) = l4.and_then(|o| frame.get(o..o + 4)) else { return false };
    let service = |p: u16| matches!(p, 53 | 67 | 68);
    !service(u16::from_be_bytes([ports[0], ports[1]])) && !service(u16::from_be_bytes([ports[2], ports[3]]))
}

/// What the loop counted in the current window, and the last window's verdict.
#[derive(Debug)]
pub struct Coalesce {
    pause: Duration,
    start: Instant,
    frames: u32,
    idle: u32,
    active: bool,
    /// Windows judged continuous since start (`ctl show stats`: ms of continuous input).
    pub windows_active: u64,
}

impl Coalesce {
    /// `pause`: how long frames may gather after a drained burst (zero: never).
    pub fn new(pause: Duration, now: Instant) -> Coalesce {
        Coalesce { pause, start: now, frames: 0, idle: 0, active: false, windows_active: 0 }
    }

    /// A new pause (a reload); the current verdict stands.
    pub fn set_pause(&mut self, pause: Duration) {
        self.pause = pause;
    }

    /// Records one turn of the loop, which took `frames` frames from the ports (0: it found
    /// them all empty). `now`: when the turn started.
    pub fn turn(&mut self, now: Instant, frames: u32) {
        if frames == 0 {
            self.idle = self.idle.saturating_add(1);
        } else {
            self.frames = self.frames.saturating_add(frames);
        }
        if now.saturating_duration_since(self.start) >= WINDOW {
            self.active = self.frames >= MIN_FRAMES && self.idle <= self.frames.saturating_mul(IDLE_PER_FRAME);
            self.windows_active += u64::from(self.active);
            self.start = now;
            self.frames = 0;
            self.idle = 0;
        }
    }

    /// How long to let frames gather before the next poll, after a turn that took `frames`
    /// and left every port drained. `None`: poll as usual (spin or sleep in epoll).
    pub fn pause(&self, frames: u32) -> Option<Duration> {
        (self.active && frames > 0 && !self.pause.is_zero()).then_some(self.pause)
    }

    /// Whether the last window's input was continuous.
    #[cfg(test)]
    pub fn active(&self) -> bool {
        self.active
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: Duration = Duration::from_micros(50);

    /// Runs turns of `frames` each, `every` apart, for `total`; returns the pauses asked for.
    fn run(c: &mut Coalesce, t: &mut Instant, total: Duration, every: Duration, frames: impl Fn(u32) -> u32) -> u32 {
        let end = *t + total;
        let (mut i, mut pauses) = (0u32, 0u32);
        while *t < end {
            let f = frames(i);
            c.turn(*t, f);
            if c.pause(f).is_some() {
                pauses += 1;
            }
            *t += every;
            i += 1;
        }
        pauses
    }

    #[test]
    fn a_flood_pauses_after_its_first_window() {
        let mut t = Instant::now();
        let mut c = Coalesce::new(P, t);
        // One frame a turn every 3 us (a loop chasing ~330k frames/s), an empty poll in 5.
        let pauses = run(&mut c, &mut t, Duration::from_millis(5), Duration::from_micros(3), |i| u32::from(i % 5 != 0));
        assert!(c.active());
        assert!(pauses > 1000, "{pauses}");
        assert_eq!(c.windows_active, 4, "the first window only watches");
        // Pausing, each turn finds a burst: still continuous.
        let pauses = run(&mut c, &mut t, Duration::from_millis(5), Duration::from_micros(60), |_| 18);
        assert!(c.active() && pauses >= 80, "{pauses}");
    }

    #[test]
    fn request_response_never_pauses() {
        let mut t = Instant::now();
        let mut c = Coalesce::new(P, t);
        // 50k frames/s (25k transactions), the loop spinning on empty ports between frames
        // (a poll a microsecond): 19 empty polls a frame.
        let pauses = run(&mut c, &mut t, Duration::from_millis(20), Duration::from_micros(1), |i| u32::from(i % 20 == 0));
        assert_eq!((pauses, c.windows_active), (0, 0));
        // As fast as 200k frames/s it is still not continuous: empty polls between frames.
        let pauses = run(&mut c, &mut t, Duration::from_millis(20), Duration::from_micros(1), |i| u32::from(i % 5 == 0));
        assert_eq!((pauses, c.windows_active), (0, 0));
    }

    #[test]
    fn slow_input_never_pauses_even_without_empty_polls() {
        // busy_poll_us = 0: the loop sleeps in epoll, so every turn has frames; 30k frames/s
        // is under the threshold.
        let mut t = Instant::now();
        let mut c = Coalesce::new(P, t);
        let pauses = run(&mut c, &mut t, Duration::from_millis(20), Duration::from_micros(33), |_| 1);
        assert_eq!((pauses, c.windows_active), (0, 0));
    }

    #[test]
    fn the_verdict_ends_with_the_flood() {
        let mut t = Instant::now();
        let mut c = Coalesce::new(P, t);
        run(&mut c, &mut t, Duration::from_millis(3), Duration::from_micros(2), |_| 1);
        assert!(c.active());
        // A frame every 100 us from now on (each turn after a pause finds one): too few.
        run(&mut c, &mut t, Duration::from_millis(3), Duration::from_micros(100), |_| 1);
        assert!(!c.active());
        assert_eq!(c.pause(1), None);
    }

    #[test]
    fn no_pause_without_frames_or_when_off() {
        let mut t = Instant::now();
        let mut c = Coalesce::new(P, t);
        run(&mut c, &mut t, Duration::from_millis(3), Duration::from_micros(2), |_| 1);
        assert_eq!(c.pause(0), None, "a turn that found nothing");
        assert_eq!(c.pause(3), Some(P));
        c.set_pause(Duration::ZERO);
        assert_eq!(c.pause(3), None, "coalesce_us = 0");
    }

    #[test]
    fn only_udp_counts() {
        let eth = |et: [u8; 2], rest: &[u8]| [&[0u8; 12][..], &et, rest].concat();
        // Ports 40000 -> 9000 after the header.
        let l4 = [0x9c, 0x40, 0x23, 0x28, 0, 8, 0, 0];
        let v4 = |p: u8| [&[0x45u8, 0, 0, 28, 0, 0, 0, 0, 64][..], &[p], &[0; 10], &l4].concat();
        let v6 = |p: u8| [&[0x60u8, 0, 0, 0, 0, 8][..], &[p], &[64], &[0; 32], &l4].concat();
        assert!(counts(&eth([0x08, 0x00], &v4(17))));
        // The services vrouter answers, either way, and big datagrams: not counted.
        let udp = |sport: u16, dport: u16| [&[0x45u8, 0, 0, 28, 0, 0, 0, 0, 64, 17][..], &[0; 10], &sport.to_be_bytes(), &dport.to_be_bytes(), &[0, 8, 0, 0]].concat();
        assert!(counts(&eth([0x08, 0x00], &udp(40000, 9000))));
        for (s, d) in [(40000, 53), (53, 40000), (68, 67), (67, 68)] {
            assert!(!counts(&eth([0x08, 0x00], &udp(s, d))), "{s} -> {d}");
        }
        let mut big = eth([0x08, 0x00], &udp(40000, 9000));
        big.resize(SMALL + 1, 0);
        assert!(!counts(&big));
        big.truncate(SMALL);
        assert!(counts(&big));
        assert!(!counts(&eth([0x08, 0x00], &v4(6))), "TCP");
        assert!(!counts(&eth([0x08, 0x00], &v4(1))), "ICMP");
        assert!(counts(&eth([0x86, 0xdd], &v6(17))));
        assert!(!counts(&eth([0x86, 0xdd], &v6(6))));
        let tagged = |inner: [u8; 2], rest: &[u8]| [&[0u8; 12][..], &[0x81, 0x00, 0x00, 101], &inner, rest].concat();
        assert!(counts(&tagged([0x08, 0x00], &v4(17))));
        assert!(!counts(&tagged([0x08, 0x00], &v4(6))));
        assert!(!counts(&eth([0x08, 0x06], &[0; 28])), "ARP");
        // Cut short anywhere: not counted, no panic.
        let f = eth([0x08, 0x00], &v4(17));
        assert!((0..24).all(|n| !counts(&f[..n])));
        assert!(!counts(&tagged([0x08, 0x00], &[0x45; 9])));
    }

    #[test]
    fn a_clock_that_steps_back_is_harmless() {
        let t = Instant::now() + Duration::from_secs(1);
        let mut c = Coalesce::new(P, t);
        c.turn(t - Duration::from_millis(5), 100);
        c.turn(t, 100);
        assert!(!c.active());
    }
}
