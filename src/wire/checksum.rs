//! Internet checksum (RFC 1071) and incremental update (RFC 1624).
//!
//! Sums are accumulated in a `u32`/`u64` and folded at the end; all functions are total (no
//! panics on any length, odd lengths are padded with a zero byte as the RFC says).

/// Adds `data` as big-endian 16-bit words to `sum` (an odd last byte is padded with zero).
///
/// The sum is taken over native-endian 32-bit words in four independent lanes (no overflow
/// below 2^32 words, and the lanes let the CPU add in parallel), folded, and byte-swapped to
/// network order at the end: the ones'-complement sum does not depend on byte order (RFC 1071
/// section 2(B)). The result is congruent, modulo 0xffff, to adding the big-endian words one by
/// one, which is all `fold` and the callers rely on.
pub fn add(sum: u64, data: &[u8]) -> u64 {
    let mut lanes = [0u64; 4];
    let mut chunks = data.chunks_exact(16);
    for c in &mut chunks {
        add_lanes(&mut lanes, c);
    }
    sum + to_network(lanes.iter().sum::<u64>()) + add_tail(chunks.remainder())
}

// Always inlined: called out of line (as an unrelated change once made the compiler do), the
// loops over it lose their vector code and software segmentation took 2.75x as long.
#[inline(always)]
fn add_lanes(lanes: &mut [u64; 4], c: &[u8]) {
    for (lane, w) in lanes.iter_mut().zip(c.chunks_exact(4)) {
        *lane += u32::from_ne_bytes([w[0], w[1], w[2], w[3]]) as u64;
    }
}

/// A native-endian word sum, folded and put in network order.
fn to_network(native: u64) -> u64 {
    u16::from_be_bytes(fold(native).to_ne_bytes()) as u64
}

/// Fewer than 16 bytes, one big-endian word at a time.
fn add_tail(data: &[u8]) -> u64 {
    let mut sum = 0;
    let mut words = data.chunks_exact(2);
    for w in &mut words {
        sum += u16::from_be_bytes([w[0], w[1]]) as u64;
    }
    if let [last] = words.remainder() {
        sum += (*last as u64) << 8;
    }
    sum
}

/// Copies `src` into `dst` (the shorter length of the two) and adds the copied bytes to `sum`
/// as [`add`] would, in one pass over the data: software segmentation reads each payload byte
/// once instead of twice.
pub fn copy_add(sum: u64, dst: &mut [u8], src: &[u8]) -> u64 {
    let n = dst.len().min(src.len());
    let (dst, src) = (&mut dst[..n], &src[..n]);
    let mut lanes = [0u64; 4];
    let mut d = dst.chunks_exact_mut(16);
    let mut s = src.chunks_exact(16);
    for (dc, sc) in (&mut d).zip(&mut s) {
        dc.copy_from_slice(sc);
        add_lanes(&mut lanes, sc);
    }
    let (dr, sr) = (d.into_remainder(), s.remainder());
    dr.copy_from_slice(sr);
    sum + to_network(lanes.iter().sum::<u64>()) + add_tail(sr)
}

/// Folds a running sum to 16 bits (not complemented): the value in 1..=0xffff congruent to
/// `sum` modulo 0xffff, or 0 for 0. Four steps, no loop (every packet's incremental updates
/// end here): < 2^33, <= 0x2fffe, <= 0x10001, <= 0xffff.
#[inline]
pub fn fold(sum: u64) -> u16 {
    let s = (sum & 0xffff_ffff) + (sum >> 32);
    let s = (s & 0xffff) + (s >> 16);
    let s = (s & 0xffff) + (s >> 16);
    ((s & 0xffff) + (s >> 16)) as u16
}

/// The checksum field value for `data`: the complement of the folded sum.
pub fn checksum(data: &[u8]) -> u16 {
    !fold(add(0, data))
}

/// The pseudo-header sum for TCP/UDP over IPv4.
pub fn pseudo_v4(src: [u8; 4], dst: [u8; 4], proto: u8, l4_len: u32) -> u64 {
    add(add(0, &src), &dst) + proto as u64 + l4_len as u64
}

/// The pseudo-header sum for TCP/UDP over IPv6.
pub fn pseudo_v6(src: [u8; 16], dst: [u8; 16], proto: u8, l4_len: u32) -> u64 {
    add(add(0, &src), &dst) + proto as u64 + (l4_len >> 16) as u64 + (l4_len & 0xffff) as u64
}

/// RFC 1624 eqn. 3: the new checksum after a 16-bit field changed from `old` to `new`.
#[inline]
pub fn update16(hc: u16, old: u16, new: u16) -> u16 {
    !fold(!hc as u64 + !old as u64 + new as u64)
}

/// RFC 1624 for a 32-bit field (e.g. an IPv4 address or a TCP sequence number): both words
/// in one sum (the same result as two [`update16`] in a row, without the chain between them).
#[inline]
pub fn update32(hc: u16, old: u32, new: u32) -> u16 {
    !fold(!hc as u64 + delta32(old, new))
}

/// What a 32-bit field changing from `old` to `new` adds to a complemented checksum's sum
/// (RFC 1624 eqn. 3's `~m + m'`, both words): for several changes summed before one [`fold`].
#[inline]
pub fn delta32(old: u32, new: u32) -> u64 {
    let old = !old;
    (old >> 16) as u64 + (old & 0xffff) as u64 + (new >> 16) as u64 + (new & 0xffff) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 1071 section 3 example bytes.
    #[test]
    fn rfc1071_example() {
        let d = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(add(0, &d)), 0xddf2);
        assert_eq!(checksum(&d), !0xddf2);
    }

    // A real IPv4 header (checksum field 0xb861) verifies to zero.
    #[test]
    fn ipv4_header_golden() {
        let h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(checksum(&h), 0);
        let mut z = h;
        z[10] = 0;
        z[11] = 0;
        assert_eq!(checksum(&z), 0xb861);
    }

    /// The word-at-a-time sum agrees with the plain big-endian 16-bit sum for every length and
    /// alignment, including odd tails and sums that fold to 0xffff.
    #[test]
    fn fast_sum_matches_plain_sum() {
        fn plain(data: &[u8]) -> u64 {
            let mut s = 0u64;
            for c in data.chunks(2) {
                s += if c.len() == 2 { u16::from_be_bytes([c[0], c[1]]) as u64 } else { (c[0] as u64) << 8 };
            }
            s
        }
        let mut x: u32 = 0x1234_5678;
        let data: Vec<u8> = (0..3000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        for start in 0..8 {
            for len in (0..200).chain([1499, 1500, 1501, 2991]) {
                let d = &data[start..start + len];
                assert_eq!(fold(add(7, d)) % 0xffff, fold(plain(d) + 7) % 0xffff, "start {start} len {len}");
                assert_eq!(checksum(d) == 0, !fold(plain(d)) == 0, "start {start} len {len}");
            }
        }
        let mut copy = vec![0u8; 3000];
        for len in [0, 1, 15, 16, 17, 1448, 2999] {
            copy.fill(0);
            let sum = copy_add(3, &mut copy, &data[1..1 + len]);
            assert_eq!(&copy[..len], &data[1..1 + len]);
            assert_eq!(fold(sum) % 0xffff, fold(plain(&data[1..1 + len]) + 3) % 0xffff, "copy_add len {len}");
        }
        let ones = [0xffu8; 64];
        assert_eq!(fold(add(0, &ones)), 0xffff);
        assert_eq!(fold(add(0, &[0u8; 33])), 0);
    }

    #[test]
    fn incremental_matches_full() {
        let mut h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        let c = checksum(&h);
        // TTL 0x40 -> 0x3f changes word 4 (ttl|proto).
        let new = update16(c, 0x4011, 0x3f11);
        h[8] = 0x3f;
        assert_eq!(new, checksum(&h));
        let new2 = update32(new, 0xc0a800c7, 0x0a010102);
        h[16..20].copy_from_slice(&[10, 1, 1, 2]);
        assert_eq!(new2, checksum(&h));
    }

    #[test]
    fn fold_without_loop_agrees_with_folding_until_done() {
        fn looped(mut s: u64) -> u16 {
            while s >> 16 != 0 {
                s = (s & 0xffff) + (s >> 16);
            }
            s as u16
        }
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let edges = [0, 1, 0xffff, 0x1_0000, 0x1_fffe, 0x1_ffff, 0x2_fffe, 0xffff_ffff, 0x1_0000_0000, 0x1_ffff_fffe, u64::MAX, u64::MAX - 1, 0xffff_0000_ffff_0000];
        for &e in &edges {
            assert_eq!(fold(e), looped(e), "{e:#x}");
        }
        for _ in 0..100_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            for v in [x, x >> 20, x >> 40, x & 0x3_ffff] {
                assert_eq!(fold(v), looped(v), "{v:#x}");
            }
        }
    }

    #[test]
    fn update32_is_two_update16_in_a_row() {
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..100_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let (hc, old, new) = (x as u16, (x >> 16) as u32, (x >> 32) as u32);
            let two = update16(update16(hc, (old >> 16) as u16, (new >> 16) as u16), old as u16, new as u16);
            assert_eq!(update32(hc, old, new), two);
        }
        for hc in [0, 0xffff] {
            for (old, new) in [(0, 0), (u32::MAX, 0), (0, u32::MAX), (u32::MAX, u32::MAX)] {
                let two = update16(update16(hc, (old >> 16) as u16, (new >> 16) as u16), old as u16, new as u16);
                assert_eq!(update32(hc, old, new), two, "{hc:#x} {old:#x} {new:#x}");
            }
        }
    }
}
