//! Time as the pure core sees it: milliseconds on a monotonic clock that the I/O edge reads and
//! passes in. Tests drive it by hand (virtual time).

use core::ops::{Add, Sub};
use std::time::Duration;

/// A point on the monotonic clock, in milliseconds since an arbitrary origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Instant(pub u64);

impl Instant {
    pub const ZERO: Instant = Instant(0);
    pub fn from_millis(ms: u64) -> Self {
        Instant(ms)
    }
    pub fn from_secs(s: u64) -> Self {
        Instant(s.saturating_mul(1000))
    }
    pub fn millis(self) -> u64 {
        self.0
    }
    /// Time from `earlier` to `self`, zero if `earlier` is later.
    pub fn since(self, earlier: Instant) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

impl Add<Duration> for Instant {
    type Output = Instant;
    fn add(self, d: Duration) -> Instant {
        Instant(self.0.saturating_add(d.as_millis().min(u64::MAX as u128) as u64))
    }
}

impl Sub<Duration> for Instant {
    type Output = Instant;
    fn sub(self, d: Duration) -> Instant {
        Instant(self.0.saturating_sub(d.as_millis().min(u64::MAX as u128) as u64))
    }
}
