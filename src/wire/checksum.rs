//! Internet checksum (RFC 1071) and incremental update (RFC 1624).
//!
//! Sums are accumulated in a `u32`/`u64` and folded at the end; all functions are total (no
//! panics on any length, odd lengths are padded with a zero byte as the RFC says).

/// Adds `data` as big-endian 16-bit words to `sum`.
pub fn add(mut sum: u64, data: &[u8]) -> u64 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u16::from_be_bytes([c[0], c[1]]) as u64;
    }
    if let [last] = chunks.remainder() {
        sum += (*last as u64) << 8;
    }
    sum
}

/// Folds a running sum to 16 bits (not complemented).
pub fn fold(mut sum: u64) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
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
pub fn update16(hc: u16, old: u16, new: u16) -> u16 {
    !fold(!hc as u64 + !old as u64 + new as u64)
}

/// RFC 1624 for a 32-bit field (e.g. an IPv4 address or a TCP sequence number).
pub fn update32(hc: u16, old: u32, new: u32) -> u16 {
    let hc = update16(hc, (old >> 16) as u16, (new >> 16) as u16);
    update16(hc, old as u16, new as u16)
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
}
