//! Address and port translation of one IPv4 packet, with checksums kept right.
//!
//! A rewrite turns a packet whose 5-tuple is `from` into one whose tuple is `to`. The IPv4
//! header checksum is always updated incrementally (RFC 1624). The TCP/UDP checksum depends on
//! the frame's offload state, as in the Linux kernel's `inet_proto_csum_replace4`:
//! - complete checksum: every changed address (pseudo-header) and port is folded in (RFC 1624);
//!   a UDP checksum of zero means "none" and stays zero;
//! - partial checksum (virtio `NEEDS_CSUM`, always the case for GSO super-frames): the field
//!   holds the uncomplemented pseudo-header sum, so only address changes are folded in, and
//!   ports are not (they are summed when the checksum is finished, by the receiver or by our
//!   software fallback). So NAT never forces software segmentation.
//!
//! ICMP echo identifiers are translated like ports; ICMP has no pseudo-header.
//!
//! Pure functions over byte slices; callers pass an IPv4 packet a checked view has accepted.

use crate::conntrack::Key;
use crate::wire::{be16, checksum};
use crate::wire::ipv4::{icmp, l4_checksum_offset, proto, Ipv4Packet};
use std::net::Ipv4Addr;

fn wr16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

/// How an L4 checksum field is updated for a changed pseudo-header word.
fn csum_update32(field: u16, partial: bool, old: u32, new: u32) -> u16 {
    if partial {
        !checksum::update32(!field, old, new)
    } else {
        checksum::update32(field, old, new)
    }
}

/// Rewrites addresses and ports of the IPv4 packet `ip` (header first) from `from` to `to`.
/// `partial`: the L4 checksum is pending (offload). A non-first fragment carries no L4 header:
/// only its addresses change.
pub fn rewrite(ip: &mut [u8], partial: bool, from: &Key, to: &Key) {
    rewrite_inner(ip, partial, from, to, false)
}

/// [`rewrite`] of a packet the router forwards: its TTL also goes down by one, in the same
/// header checksum update.
pub fn rewrite_forwarded(ip: &mut [u8], partial: bool, from: &Key, to: &Key) {
    rewrite_inner(ip, partial, from, to, true)
}

/// [`rewrite_forwarded`] of a packet whose tuple stays (routed): the TTL step alone, with its
/// header checksum update (RFC 1624), on a header of at least 20 bytes.
#[inline]
pub fn ttl_step(ip: &mut [u8]) {
    if ip.len() < 20 {
        return;
    }
    let old = be16(ip, 8);
    let new = old.wrapping_sub(0x0100);
    let c = checksum::update16(be16(ip, 10), old, new);
    ip[8] = (new >> 8) as u8;
    wr16(ip, 10, c);
}

#[inline]
fn rewrite_inner(ip: &mut [u8], partial: bool, from: &Key, to: &Key, ttl_step: bool) {
    let Ok(mut p) = Ipv4Packet::new_checked(&mut *ip) else { return };
    let has_l4 = p.frag_offset() == 0;
    p.rewrite_forwarded((from.src != to.src).then_some(to.src), (from.dst != to.dst).then_some(to.dst), ttl_step);
    // A routed packet keeps its tuple: its L4 header and checksum stay as they are.
    if !has_l4 || from == to {
        return;
    }
    let l4 = p.payload_mut();
    match from.proto {
        proto::TCP | proto::UDP => {
            let Some(co) = l4_checksum_offset(from.proto) else { return };
            let have_csum = l4.len() >= co + 2;
            let udp_none = from.proto == proto::UDP && have_csum && !partial && be16(l4, co) == 0;
            let mut c = if have_csum { be16(l4, co) } else { 0 };
            for (o, n) in [(from.src, to.src), (from.dst, to.dst)] {
                if o != n {
                    c = csum_update32(c, partial, u32::from(o), u32::from(n));
                }
            }
            if l4.len() >= 4 {
                for (at, o, n) in [(0, from.sport, to.sport), (2, from.dport, to.dport)] {
                    if o != n {
                        wr16(l4, at, n);
                        if !partial {
                            c = checksum::update16(c, o, n);
                        }
                    }
                }
            }
            if have_csum && !udp_none {
                if from.proto == proto::UDP && !partial && c == 0 {
                    c = 0xffff;
                }
                wr16(l4, co, c);
            }
        }
        proto::ICMP if l4.len() >= 8 && matches!(l4[0], icmp::ECHO_REQUEST | icmp::ECHO_REPLY) => {
            // Requests carry the originator's id in `sport`, replies in `dport` (same value).
            let (o, n) = (from.sport, to.sport);
            if o != n {
                let c = checksum::update16(be16(l4, 2), o, n);
                wr16(l4, 4, n);
                wr16(l4, 2, c);
            }
        }
        _ => {}
    }
}

/// Translates an ICMP error in place: the outer header's addresses become `outer_src` /
/// `outer_dst`, and the quoted packet's tuple becomes `quoted`. Every checksum involved is made
/// right: the quoted IP header's and (where the quote holds it) its L4 checksum, the ICMP
/// checksum over the whole message, the outer header's.
pub fn rewrite_icmp_error(ip: &mut [u8], outer_src: Ipv4Addr, outer_dst: Ipv4Addr, quoted_old: &Key, quoted: &Key) -> bool {
    let Ok(mut p) = Ipv4Packet::new_checked(&mut *ip) else { return false };
    let Some(ihl) = quoted_ihl(p.payload()) else { return false };
    p.set_src(outer_src);
    p.set_dst(outer_dst);
    let icmp_msg = p.payload_mut();
    let inner = &mut icmp_msg[8..];
    inner[12..16].copy_from_slice(&quoted.src.octets());
    inner[16..20].copy_from_slice(&quoted.dst.octets());
    // Quoted header checksum from scratch (it is short and may have been anything).
    inner[10] = 0;
    inner[11] = 0;
    let hc = checksum::checksum(&inner[..ihl]);
    wr16(inner, 10, hc);
    let l4 = &mut inner[ihl..];
    match quoted.proto {
        proto::TCP | proto::UDP => {
            wr16(l4, 0, quoted.sport);
            wr16(l4, 2, quoted.dport);
            let co = l4_checksum_offset(quoted.proto).unwrap_or(usize::MAX - 2);
            if l4.len() >= co + 2 {
                let mut c = be16(l4, co);
                if !(quoted.proto == proto::UDP && c == 0) {
                    for (o, n) in [(quoted_old.src, quoted.src), (quoted_old.dst, quoted.dst)] {
                        c = checksum::update32(c, u32::from(o), u32::from(n));
                    }
                    c = checksum::update16(c, quoted_old.sport, quoted.sport);
                    c = checksum::update16(c, quoted_old.dport, quoted.dport);
                    wr16(l4, co, c);
                }
            }
        }
        proto::ICMP => {
            let c = checksum::update16(be16(l4, 2), quoted_old.sport, quoted.sport);
            wr16(l4, 4, quoted.sport);
            wr16(l4, 2, c);
        }
        _ => {}
    }
    icmp_msg[2] = 0;
    icmp_msg[3] = 0;
    let c = checksum::checksum(icmp_msg);
    wr16(icmp_msg, 2, c);
    true
}

/// The header length of the IPv4 packet quoted in an ICMP error message, when the quote holds
/// that header and the first 8 bytes of its payload (what translation reads and rewrites).
fn quoted_ihl(icmp_msg: &[u8]) -> Option<usize> {
    let inner = icmp_msg.get(8..)?;
    let ihl = (*inner.first()? & 0x0f) as usize * 4;
    (inner[0] >> 4 == 4 && ihl >= 20 && inner.len() >= ihl + 8).then_some(ihl)
}

/// The tuple quoted in an ICMP error message (`icmp_msg` starts at the ICMP header), as it
/// was on the wire. `None` if the quote is too short or not IPv4.
pub fn quoted_key(icmp_msg: &[u8]) -> Option<Key> {
    let ihl = quoted_ihl(icmp_msg)?;
    let inner = &icmp_msg[8..];
    let a = |o: usize| Ipv4Addr::new(inner[o], inner[o + 1], inner[o + 2], inner[o + 3]);
    let protocol = inner[9];
    let l4 = &inner[ihl..];
    let (sport, dport) = match protocol {
        proto::TCP | proto::UDP => (be16(l4, 0), be16(l4, 2)),
        proto::ICMP if matches!(l4[0], icmp::ECHO_REQUEST | icmp::ECHO_REPLY) => (be16(l4, 4), be16(l4, 4)),
        _ => return None,
    };
    Some(Key { src: a(12), dst: a(16), sport, dport, proto: protocol })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A full IPv4/TCP or UDP packet with correct checksums, built independently by etherparse.
    fn packet(src: [u8; 4], dst: [u8; 4], sp: u16, dp: u16, udp: bool) -> Vec<u8> {
        let b = etherparse::PacketBuilder::ipv4(src, dst, 64);
        let payload = b"hello through the NAT";
        let mut out = Vec::new();
        if udp {
            b.udp(sp, dp).write(&mut out, payload).unwrap();
        } else {
            b.tcp(sp, dp, 1000, 64000).ack(5).write(&mut out, payload).unwrap();
        }
        out
    }

    fn key(p: &[u8], udp: bool) -> Key {
        let v = Ipv4Packet::new_checked(p).unwrap();
        let l4 = v.payload();
        Key { src: v.src(), dst: v.dst(), sport: be16(l4, 0), dport: be16(l4, 2), proto: if udp { 17 } else { 6 } }
    }

    #[test]
    fn ttl_step_is_the_routed_rewrite_and_matches_a_packet_built_with_ttl_63() {
        for udp in [false, true] {
            let p = packet([10, 1, 1, 11], [10, 1, 2, 11], 40000, 80, udp);
            let want = etherparse::PacketBuilder::ipv4([10, 1, 1, 11], [10, 1, 2, 11], 63);
            let mut w = Vec::new();
            if udp {
                want.udp(40000, 80).write(&mut w, b"hello through the NAT").unwrap();
            } else {
                want.tcp(40000, 80, 1000, 64000).ack(5).write(&mut w, b"hello through the NAT").unwrap();
            }
            let (mut a, mut b) = (p.clone(), p.clone());
            ttl_step(&mut a);
            let k = key(&p, udp);
            rewrite_forwarded(&mut b, false, &k, &k);
            assert_eq!(a, w, "udp={udp}");
            assert_eq!(a, b, "udp={udp}");
        }
        // Golden bytes (checksums computed independently): TTL 1 -> 0, 0x5099 -> 0x5199.
        let mut h = [0x45, 0, 0, 20, 0x12, 0x34, 0x40, 0, 1, 6, 0x50, 0x99, 10, 1, 1, 11, 10, 1, 2, 11];
        assert!(crate::wire::ipv4::header_checksum_ok(&h));
        ttl_step(&mut h);
        assert_eq!(h[8..12], [0, 6, 0x51, 0x99]);
        assert!(crate::wire::ipv4::header_checksum_ok(&h));
        // Too short to be a header: left alone.
        let mut short = [0x45u8; 19];
        ttl_step(&mut short);
        assert_eq!(short, [0x45u8; 19]);
    }

    #[test]
    fn snat_rewrite_equals_independently_built_packet() {
        for udp in [false, true] {
            let mut p = packet([10, 1, 1, 11], [198, 51, 100, 5], 40000, 80, udp);
            let want = packet([203, 0, 113, 10], [198, 51, 100, 5], 1024, 80, udp);
            let from = key(&p, udp);
            let to = Key { src: Ipv4Addr::new(203, 0, 113, 10), sport: 1024, ..from };
            rewrite(&mut p, false, &from, &to);
            assert_eq!(p, want, "udp={udp}");
        }
    }

    #[test]
    fn partial_checksum_tracks_pseudo_header_only() {
        // A partial checksum is the folded pseudo-header sum; after NAT it must equal the
        // pseudo-header sum of the new addresses, whatever the ports became.
        let mut p = packet([10, 1, 1, 11], [198, 51, 100, 5], 40000, 80, false);
        let l4_len = p.len() - 20;
        let pseudo = |src: [u8; 4], dst: [u8; 4]| checksum::fold(checksum::pseudo_v4(src, dst, 6, l4_len as u32));
        let ps = pseudo([10, 1, 1, 11], [198, 51, 100, 5]);
        p[20 + 16..20 + 18].copy_from_slice(&ps.to_be_bytes());
        let from = key(&p, false);
        let to = Key { src: Ipv4Addr::new(203, 0, 113, 10), sport: 1024, ..from };
        rewrite(&mut p, true, &from, &to);
        assert_eq!(be16(&p, 36), pseudo([203, 0, 113, 10], [198, 51, 100, 5]));
        // Finishing it now gives the same packet as building it with the new tuple.
        p[36] = 0;
        p[37] = 0;
        let full = !checksum::fold(checksum::add(checksum::pseudo_v4([203, 0, 113, 10], [198, 51, 100, 5], 6, l4_len as u32), &p[20..]));
        p[36..38].copy_from_slice(&full.to_be_bytes());
        assert_eq!(p, packet([203, 0, 113, 10], [198, 51, 100, 5], 1024, 80, false));
    }

    #[test]
    fn udp_without_checksum_stays_without() {
        let mut p = packet([10, 1, 1, 11], [198, 51, 100, 5], 5000, 53, true);
        p[26] = 0;
        p[27] = 0;
        let from = key(&p, true);
        let to = Key { src: Ipv4Addr::new(203, 0, 113, 10), ..from };
        rewrite(&mut p, false, &from, &to);
        assert_eq!(&p[26..28], &[0, 0]);
        assert!(Ipv4Packet::new_checked(&p[..]).unwrap().verify_checksum());
    }

    #[test]
    fn icmp_error_translation_keeps_checksums() {
        // Port unreachable from 198.51.100.5 about a SNATed UDP datagram 203.0.113.10:1024 ->
        // 198.51.100.5:33434; translated back toward the guest 10.1.1.11:40000.
        let quoted = packet([203, 0, 113, 10], [198, 51, 100, 5], 1024, 33434, true);
        let mut icmp_msg = vec![3, 3, 0, 0, 0, 0, 0, 0];
        icmp_msg.extend_from_slice(&quoted);
        let c = checksum::checksum(&icmp_msg);
        icmp_msg[2..4].copy_from_slice(&c.to_be_bytes());
        let mut ip = vec![0u8; 20];
        crate::wire::ipv4::emit_header(&mut ip, [198, 51, 100, 5].into(), [203, 0, 113, 10].into(), 1, 64, icmp_msg.len(), 7);
        ip.extend_from_slice(&icmp_msg);
        let old = quoted_key(&icmp_msg).unwrap();
        let new = Key { src: Ipv4Addr::new(10, 1, 1, 11), sport: 40000, ..old };
        assert!(rewrite_icmp_error(&mut ip, [198, 51, 100, 5].into(), [10, 1, 1, 11].into(), &old, &new));
        let v = Ipv4Packet::new_checked(&ip[..]).unwrap();
        assert!(v.verify_checksum());
        assert_eq!(v.dst(), Ipv4Addr::new(10, 1, 1, 11));
        assert_eq!(checksum::checksum(v.payload()), 0, "ICMP checksum verifies");
        let want = packet([10, 1, 1, 11], [198, 51, 100, 5], 40000, 33434, true);
        assert_eq!(&v.payload()[8..], &want[..], "quoted packet as the guest sent it");
    }

    #[test]
    fn icmp_echo_id_translation() {
        let mut p = vec![0u8; 20];
        let mut echo = vec![8, 0, 0, 0, 0x12, 0x34, 0, 1, 1, 2, 3, 4];
        let c = checksum::checksum(&echo);
        echo[2..4].copy_from_slice(&c.to_be_bytes());
        crate::wire::ipv4::emit_header(&mut p, [10, 1, 1, 11].into(), [198, 51, 100, 5].into(), 1, 64, echo.len(), 1);
        p.extend_from_slice(&echo);
        let from = Key { src: [10, 1, 1, 11].into(), dst: [198, 51, 100, 5].into(), sport: 0x1234, dport: 0x1234, proto: 1 };
        let to = Key { src: [203, 0, 113, 10].into(), sport: 7, dport: 7, ..from };
        rewrite(&mut p, false, &from, &to);
        assert_eq!(&p[24..26], &[0, 7]);
        assert_eq!(checksum::checksum(&p[20..]), 0);
        assert!(Ipv4Packet::new_checked(&p[..]).unwrap().verify_checksum());
    }
}
