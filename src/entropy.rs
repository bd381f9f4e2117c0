//! Randomness an off-path attacker cannot predict: NAT source ports (RFC 6056), DNS query ids,
//! the router's own TCP initial sequence numbers, the choice of upstream DNS socket.
//!
//! The sans-IO core never asks the OS: it is handed a 32-byte seed ([`Seed`]) and draws from a
//! ChaCha12 stream keyed by it ([`Csprng`], rand's `StdRng`), so tests and fuzz targets run
//! with a fixed seed and replay exactly, while the I/O edge seeds from the kernel
//! ([`os_seed`], getrandom(2)). A part of the core that needs its own stream takes a child
//! seed drawn from its parent ([`Csprng::child`]), so one seed at start keys everything and no
//! stream's outputs reveal another's.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng, TryRng};

/// 256 bits of key material.
pub type Seed = [u8; 32];

/// A cryptographically secure generator (ChaCha12) keyed by a [`Seed`].
#[derive(Debug)]
pub struct Csprng(StdRng);

impl Csprng {
    pub fn new(seed: Seed) -> Self {
        Csprng(StdRng::from_seed(seed))
    }

    pub fn u32(&mut self) -> u32 {
        self.0.next_u32()
    }

    pub fn u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// A seed for an independent stream.
    pub fn child(&mut self) -> Seed {
        let mut s = [0u8; 32];
        self.0.fill_bytes(&mut s);
        s
    }
}

/// A fresh seed from the kernel (getrandom(2)); the I/O edge calls this once at start.
pub fn os_seed() -> std::io::Result<Seed> {
    let mut s = [0u8; 32];
    rand::rngs::SysRng.try_fill_bytes(&mut s).map_err(|e| std::io::Error::other(format!("getrandom: {e}")))?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_streams_replay_and_differ() {
        let a: Vec<u32> = (0..4).scan(Csprng::new([1; 32]), |r, _| Some(r.u32())).collect();
        let b: Vec<u32> = (0..4).scan(Csprng::new([1; 32]), |r, _| Some(r.u32())).collect();
        let c: Vec<u32> = (0..4).scan(Csprng::new([2; 32]), |r, _| Some(r.u32())).collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
        let mut p = Csprng::new([1; 32]);
        assert_ne!(p.child(), p.child());
    }

    #[test]
    fn os_seeds_are_fresh() {
        assert_ne!(os_seed().unwrap(), os_seed().unwrap());
    }
}
