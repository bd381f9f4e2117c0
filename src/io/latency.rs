//! Where the time goes, measured at the I/O edge (the pure datapath never reads a clock):
//! per-frame time from "frame read" to "all its copies written or queued for the turn's burst",
//! and per-write syscall time.
//! hdrhistogram keeps both in fixed memory with 3 significant digits from 10 ns to 10 s. Beside
//! them, how many frames each burst of small-frame writes held, and how taps are written.

use hdrhistogram::Histogram;
use serde_json::{json, Value};

pub struct Latency {
    /// Pipeline decision plus every write of one received frame.
    pub frame: Histogram<u64>,
    /// One write (or writev) syscall to a port; a burst's time divided among its frames.
    pub write: Histogram<u64>,
    /// Frames per burst of queued small frames (see io::txq).
    pub burst: Histogram<u64>,
    /// "io_uring" or "write": how bursts reach taps.
    pub tap_io: &'static str,
    /// Bursts written so far (one in SAMPLE_EVERY is timed).
    pub bursts: u32,
    /// Receive coalescing (see io::coalesce): pauses taken, and 1 ms windows of continuous
    /// input.
    pub rx_pauses: u64,
    pub rx_busy_windows: u64,
}

fn hist() -> Histogram<u64> {
    // Constant bounds within hdrhistogram's documented limits: creation cannot fail.
    Histogram::new_with_bounds(10, 10_000_000_000, 3).expect("valid constant histogram bounds")
}

impl Default for Latency {
    fn default() -> Self {
        // Up to 512 frames a burst, exactly.
        let burst = Histogram::new_with_bounds(1, 1024, 3).expect("valid constant histogram bounds");
        Latency { frame: hist(), write: hist(), burst, tap_io: "write", bursts: 0, rx_pauses: 0, rx_busy_windows: 0 }
    }
}

fn summary(h: &Histogram<u64>) -> Value {
    let q = |x: f64| h.value_at_quantile(x);
    json!({"count": h.len(), "p50_ns": q(0.5), "p90_ns": q(0.9), "p99_ns": q(0.99), "p999_ns": q(0.999), "max_ns": h.max()})
}

impl Latency {
    pub fn json(&self) -> Value {
        let b = &self.burst;
        let burst = json!({"count": b.len(), "frames": (b.len() as f64 * b.mean()).round() as u64, "p50": b.value_at_quantile(0.5), "p99": b.value_at_quantile(0.99), "max": b.max()});
        let rx = json!({"pauses": self.rx_pauses, "busy_windows": self.rx_busy_windows});
        json!({"frame": summary(&self.frame), "write": summary(&self.write), "tx_burst": burst, "tap_io": self.tap_io, "rx_coalesce": rx})
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn summary_has_quantiles() {
        let mut l = super::Latency::default();
        for v in [100u64, 200, 300, 10_000] {
            l.frame.saturating_record(v);
        }
        let j = l.json();
        assert_eq!(j["frame"]["count"], 4);
        assert!(j["frame"]["max_ns"].as_u64().unwrap() >= 10_000);
        assert_eq!(j["write"]["count"], 0);
        assert_eq!(j["rx_coalesce"]["pauses"], 0);
    }
}
