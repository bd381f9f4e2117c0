//! What one frame's headers say, read once.
//!
//! Ingress builds a [`FrameCtx`] from the checked wire views after any VLAN tag is popped (so
//! L3 starts at byte 14), and every later stage (the guest guard, port security, offload
//! checks, security groups, DHCP interception, the router, conntrack, NAT) reads it instead of
//! parsing the headers again. A header that fails its checks is recorded as such (`BadIpv4`,
//! `BadArp`, `L4::Truncated`) and each stage turns that into its own drop reason.
//!
//! Invariant: a context describes the bytes of its frame as they were when it was built. The
//! stage that rewrites headers in place (the router: NAT and the TTL step) is the last to read
//! it; a frame that goes on after a rewrite, and only to a stage that needs its headers (a
//! security group on the egress port), is read afresh with [`FrameCtx::parse`].

use crate::wire::arp::{ArpPacket, ArpRepr};
use crate::wire::ethernet::{ethertype, EthernetFrame, MacAddr};
use crate::wire::icmp::{IcmpPacket, IcmpRepr};
use crate::wire::ipv4::{proto, Ipv4Packet, Ipv4Repr};
use crate::wire::tcp::{TcpPacket, TcpRepr};
use crate::wire::udp::{UdpPacket, UdpRepr};
use crate::wire::WireError;

/// Where L3 starts: ingress pops tags before the context is built.
pub const L3_OFFSET: usize = 14;

/// A frame's Ethernet addresses and what its L3 and L4 headers say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameCtx {
    pub dst: MacAddr,
    pub src: MacAddr,
    pub ethertype: u16,
    pub l3: L3,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L3 {
    Ipv4(Ipv4Ctx),
    /// EtherType IPv4 with a header that fails the view's checks (version, IHL, lengths).
    BadIpv4,
    Arp(ArpRepr),
    /// EtherType ARP that is not Ethernet/IPv4 ARP, or is cut short.
    BadArp,
    /// Any other EtherType (IPv6 is read by the few stages that look at it, off the fast path).
    Other,
}

/// An IPv4 packet's header and its transport header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Ctx {
    pub ip: Ipv4Repr,
    pub l4: L4,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L4 {
    Tcp(TcpRepr),
    Udp(UdpRepr),
    Icmp(IcmpRepr),
    /// A non-first fragment (no transport header), or a protocol without ports.
    Opaque,
    /// TCP, UDP or ICMP whose fixed header the packet cuts short.
    Truncated,
}

impl FrameCtx {
    /// Reads an untagged frame's headers. Fails only when the Ethernet header is incomplete.
    pub fn parse(frame: &[u8]) -> Result<FrameCtx, WireError> {
        let eth = EthernetFrame::new_checked(frame)?;
        let (dst, src, et) = (eth.dst(), eth.src(), eth.ethertype());
        let l3 = &frame[L3_OFFSET..];
        let l3 = match et {
            ethertype::IPV4 => match Ipv4Packet::new_checked(l3) {
                Ok(p) => L3::Ipv4(Ipv4Ctx::parse(&p)),
                Err(_) => L3::BadIpv4,
            },
            ethertype::ARP => match ArpPacket::new_checked(l3) {
                Ok(a) => L3::Arp(ArpRepr::parse(&a)),
                Err(_) => L3::BadArp,
            },
            _ => L3::Other,
        };
        Ok(FrameCtx { dst, src, ethertype: et, l3 })
    }

    pub fn ipv4(&self) -> Option<&Ipv4Ctx> {
        match &self.l3 {
            L3::Ipv4(c) => Some(c),
            _ => None,
        }
    }
}

impl Ipv4Ctx {
    pub fn parse<T: AsRef<[u8]>>(p: &Ipv4Packet<T>) -> Ipv4Ctx {
        let ip = Ipv4Repr::parse(p);
        let l4 = if ip.frag_offset != 0 {
            L4::Opaque
        } else {
            let b = p.payload();
            match ip.protocol {
                proto::TCP => TcpPacket::new_checked(b).map_or(L4::Truncated, |t| L4::Tcp(TcpRepr::parse(&t))),
                proto::UDP => UdpPacket::new_checked(b).map_or(L4::Truncated, |u| L4::Udp(UdpRepr::parse(&u))),
                proto::ICMP => IcmpPacket::new_checked(b).map_or(L4::Truncated, |i| L4::Icmp(IcmpRepr::parse(&i))),
                _ => L4::Opaque,
            }
        };
        Ipv4Ctx { ip, l4 }
    }

    /// Where the transport header starts in the frame.
    pub fn l4_offset(&self) -> usize {
        L3_OFFSET + self.ip.header_len
    }

    /// Where the IP packet ends in the frame (Ethernet padding follows).
    pub fn end(&self) -> usize {
        L3_OFFSET + self.ip.total_len
    }

    /// The flow identity's ports: (source, destination), an echo's identifier for both, zero
    /// for other ICMP and for protocols without ports. `None` when the header is cut short (or
    /// for a non-first fragment of a protocol that has ports: the fragment does not carry them).
    pub fn ports(&self) -> Option<(u16, u16)> {
        match self.l4 {
            L4::Tcp(t) => Some((t.src_port, t.dst_port)),
            L4::Udp(u) => Some((u.src_port, u.dst_port)),
            L4::Icmp(i) => Some((i.ident, i.ident)),
            L4::Opaque if self.ip.frag_offset != 0 && matches!(self.ip.protocol, proto::TCP | proto::UDP | proto::ICMP) => None,
            L4::Opaque => Some((0, 0)),
            L4::Truncated => None,
        }
    }

    /// TCP flags (0 for anything else).
    pub fn tcp_flags(&self) -> u8 {
        match self.l4 {
            L4::Tcp(t) => t.flags,
            _ => 0,
        }
    }

    /// The ICMP header, when this is ICMP with one.
    pub fn icmp(&self) -> Option<IcmpRepr> {
        match self.l4 {
            L4::Icmp(i) => Some(i),
            _ => None,
        }
    }

    /// UDP ports, when this is UDP with a header.
    pub fn udp(&self) -> Option<UdpRepr> {
        match self.l4 {
            L4::Udp(u) => Some(u),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const G: [u8; 6] = [0x52, 0x54, 0, 0, 0, 1];
    const R: [u8; 6] = [2, 0, 0, 0, 0, 1];

    fn eth(et: u16, l3: &[u8]) -> Vec<u8> {
        let mut f = R.to_vec();
        f.extend_from_slice(&G);
        f.extend_from_slice(&et.to_be_bytes());
        f.extend_from_slice(l3);
        f
    }

    // 10.1.1.11 -> 198.51.100.5, TCP 40000 -> 5201 ACK|PSH, no payload (golden bytes, header
    // checksum 0xf357).
    const TCP_PKT: [u8; 40] = [
        0x45, 0, 0, 40, 0x12, 0x34, 0x40, 0, 64, 6, 0xf3, 0x57, 10, 1, 1, 11, 198, 51, 100, 5, // IPv4
        0x9c, 0x40, 0x14, 0x51, 0, 0, 0, 1, 0, 0, 0, 1, 0x50, 0x18, 0xfd, 0xe8, 0xcc, 0x0b, 0, 0, // TCP
    ];

    #[test]
    fn tcp_frame_read_once() {
        assert_eq!(crate::wire::checksum::checksum(&TCP_PKT[..20]), 0, "golden IPv4 checksum");
        let mut f = eth(0x0800, &TCP_PKT);
        f.extend_from_slice(&[0; 6]); // Ethernet padding: not part of the packet
        let c = FrameCtx::parse(&f).unwrap();
        assert_eq!((c.dst.0, c.src.0, c.ethertype), (R, G, 0x0800));
        let ip = c.ipv4().unwrap();
        assert_eq!((ip.ip.src, ip.ip.dst, ip.ip.ttl, ip.ip.ident), (Ipv4Addr::new(10, 1, 1, 11), Ipv4Addr::new(198, 51, 100, 5), 64, 0x1234));
        assert_eq!((ip.l4_offset(), ip.end()), (34, 54));
        assert_eq!(ip.ports(), Some((40000, 5201)));
        assert_eq!(ip.tcp_flags(), 0x18);
        assert!(matches!(ip.l4, L4::Tcp(TcpRepr { seq: 1, ack: 1, window: 65000, .. })));
    }

    #[test]
    fn cut_and_bad_headers_are_recorded() {
        // TCP cut to 19 bytes by the IP length: no ports.
        let mut p = TCP_PKT;
        p[3] = 39;
        let f = eth(0x0800, &p);
        let c = FrameCtx::parse(&f).unwrap();
        assert_eq!(c.ipv4().unwrap().l4, L4::Truncated);
        assert_eq!(c.ipv4().unwrap().ports(), None);
        // IHL 3: the IPv4 view refuses it.
        let mut p = TCP_PKT;
        p[0] = 0x43;
        assert_eq!(FrameCtx::parse(&eth(0x0800, &p)).unwrap().l3, L3::BadIpv4);
        // A non-first fragment has no transport header to read.
        let mut p = TCP_PKT;
        p[6..8].copy_from_slice(&185u16.to_be_bytes());
        let c = FrameCtx::parse(&eth(0x0800, &p)).unwrap();
        assert_eq!((c.ipv4().unwrap().l4, c.ipv4().unwrap().ports()), (L4::Opaque, None));
        // An ARP for IPv6 (plen 16) is not ours to read.
        let mut arp = [0u8; 28];
        arp[..6].copy_from_slice(&[0, 1, 8, 0, 6, 16]);
        assert_eq!(FrameCtx::parse(&eth(0x0806, &arp)).unwrap().l3, L3::BadArp);
        assert_eq!(FrameCtx::parse(&eth(0x86dd, &[0x60; 40])).unwrap().l3, L3::Other);
        assert!(FrameCtx::parse(&R).is_err());
    }

    #[test]
    fn icmp_and_udp() {
        let mut p = TCP_PKT[..20].to_vec();
        p[9] = proto::ICMP;
        p[3] = 28;
        p.extend_from_slice(&[8, 0, 0xe5, 0xca, 0x12, 0x34, 0, 1]);
        let c = FrameCtx::parse(&eth(0x0800, &p)).unwrap();
        let ip = *c.ipv4().unwrap();
        assert_eq!(ip.ports(), Some((0x1234, 0x1234)), "an echo's identifier stands for both ports");
        assert_eq!(ip.icmp().unwrap().msg_type, 8);
        p[9] = proto::UDP;
        p[20..28].copy_from_slice(&[0, 68, 0, 67, 0, 8, 0, 0]);
        let c = FrameCtx::parse(&eth(0x0800, &p)).unwrap();
        assert_eq!(c.ipv4().unwrap().udp(), Some(UdpRepr { src_port: 68, dst_port: 67 }));
        p[9] = 47; // GRE: no ports
        assert_eq!(FrameCtx::parse(&eth(0x0800, &p)).unwrap().ipv4().unwrap().ports(), Some((0, 0)));
    }
}
