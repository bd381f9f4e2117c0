//! Per-port counters and the closed set of reasons a frame is dropped. Each reason is one
//! counter; nothing is dropped without incrementing exactly one of them.

use serde::Serialize;

macro_rules! drop_reasons {
    ($($(#[doc = $d:literal])* $v:ident => $s:literal,)*) => {
        /// Why a frame was dropped.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum DropReason { $($(#[doc = $d])* $v,)* }
        impl DropReason {
            pub const ALL: &'static [DropReason] = &[$(DropReason::$v,)*];
            pub const COUNT: usize = Self::ALL.len();
            /// Stable snake_case name (metrics label, `ctl show stats`).
            pub fn name(self) -> &'static str { match self { $(DropReason::$v => $s,)* } }
        }
    };
}

drop_reasons! {
    /// Shorter than an Ethernet header, or a header that does not parse.
    Malformed => "malformed",
    /// The virtio_net_hdr in front of the frame is invalid or inconsistent.
    BadVnetHdr => "bad_vnet_hdr",
    /// A VLAN-tagged frame arrived on a guest port (VLAN hopping attempt).
    TaggedOnAccess => "tagged_on_access",
    /// An untagged frame arrived on a trunk.
    UntaggedOnTrunk => "untagged_on_trunk",
    /// A trunk frame's VLAN id belongs to no network carried by that trunk.
    UnknownVlan => "unknown_vlan",
    /// Two stacked tags (QinQ, double-tagging attack).
    DoubleTagged => "double_tagged",
    /// Source MAC is multicast, broadcast or zero.
    BadSrcMac => "bad_src_mac",
    /// A guest speaking as its network's gateway (ARP sender or IPv4 source): it would poison
    /// the other guests' caches.
    SpoofedGateway => "spoofed_gateway",
    /// An IPv6 router advertisement from a guest.
    RogueRa => "rogue_ra",
    /// A DHCPv6 server message (UDP from port 547) from a guest.
    RogueDhcpv6 => "rogue_dhcpv6",
    /// Source MAC differs from the port's configured MAC (port security).
    SpoofedMac => "spoofed_mac",
    /// Source IPv4 (or ARP sender) differs from the port's configured IP (port security).
    SpoofedIp => "spoofed_ip",
    /// The port already has as many learned MACs as it may.
    PortMacLimit => "port_mac_limit",
    /// The destination was learned on the ingress port itself.
    Hairpin => "hairpin",
    /// IEEE 802.1D link-local group address (STP BPDUs, LLDP, pause, 802.1X): never bridged.
    LinkLocal => "link_local",
    /// Addressed to one of the router's own addresses on a port it serves nothing on.
    NoL3 => "no_l3_service",
    /// Offload metadata does not match the headers, so software segmentation was impossible.
    OffloadFailed => "offload_failed",
    /// The egress interface is down or gone (EIO, ENETDOWN, ENXIO, EBADFD).
    PortDown => "port_down",
    /// The egress queue was full (EAGAIN, ENOBUFS).
    TxFull => "tx_full",
    /// The egress device refused the frame for another reason (e.g. EINVAL, EMSGSIZE).
    TxError => "tx_error",
    /// An 802.1Q tag could not be pushed for a trunk (no headroom, offsets out of range).
    TagPushFailed => "tag_push_failed",
    /// Larger than a receive buffer; the tail was cut by the kernel.
    Truncated => "truncated",
    /// An IPv4 header that does not parse (version, IHL, lengths) or whose checksum is wrong.
    BadIp => "bad_ip",
    /// TTL ran out here (time exceeded sent back, rate permitting).
    TtlExceeded => "ttl_exceeded",
    /// No network or public route leads to the destination (or it is a broadcast).
    NoRoute => "no_route",
    /// A new inbound flow to a public IP matched none of that IP's `[[firewall]]` rules.
    Firewall => "firewall",
    /// A new flow leaving a network was refused by its `[[egress]]` rules or `egress_default`.
    EgressDenied => "egress_denied",
    /// Public traffic matching no static NAT, port forward or tracked flow (a guest's private
    /// address aimed at directly, an unsolicited reply, an unknown ICMP error).
    NotForwarded => "not_forwarded",
    /// A source that cannot be genuine: from the public side one of ours, a guest network's or
    /// a martian; from a guest one outside its own network.
    SpoofedSource => "spoofed_source",
    /// The connection table is full of established flows.
    ConntrackFull => "conntrack_full",
    /// No free NAT port (or ICMP id) for a new flow.
    NatExhausted => "nat_exhausted",
    /// The next hop did not answer ARP.
    NeighUnresolved => "neigh_unresolved",
    /// Too many frames already wait for ARP resolution.
    NeighQueueFull => "neigh_queue_full",
    /// A non-first fragment whose first fragment was not seen.
    FragNoFlow => "frag_no_flow",
    /// Larger than the egress MTU with DF set (fragmentation needed sent back).
    FragNeeded => "frag_needed",
    /// A protocol the router does not handle (IPv6, unknown EtherType) addressed to its MAC.
    UnsupportedL3 => "unsupported_l3",
    /// A TCP/UDP/ICMP header cut short, or offload metadata the router cannot honour.
    BadL4 => "bad_l4",
    /// A DHCP server message (OFFER, ACK, NAK: UDP from port 67) from a guest on a network
    /// vrouter serves: a rogue DHCP server.
    RogueDhcp => "rogue_dhcp",
    /// A DHCP client over its per-port rate (or outstanding-offer) limit.
    DhcpRateLimited => "dhcp_rate_limited",
    /// A DHCP message the server did not answer (malformed, pool exhausted, not for us...;
    /// `ctl show leases` counts them by reason).
    DhcpIgnored => "dhcp_ignored",
    /// Too many DNS queries waiting for upstream answers.
    DnsBusy => "dns_busy",
    /// A new connection to a load balancer none of whose backends is up (refused with a TCP
    /// RST or ICMP port unreachable).
    LbNoBackend => "lb_no_backend",
    /// A VXLAN datagram with a bad header (short, I flag clear) from a configured peer.
    BadVxlan => "bad_vxlan",
    /// A VXLAN datagram for a VNI this peer does not carry here.
    UnknownVni => "unknown_vni",
    /// Larger than the overlay's MTU (underlay MTU minus VXLAN's 50 bytes): never sent out
    /// to be lost silently on the underlay.
    VxlanTooBig => "vxlan_too_big",
    /// A VXLAN datagram longer than the receive buffer: a local sender's GSO super-datagram
    /// past 64 KiB, cut short by the socket, so its inner frame is incomplete.
    VxlanTruncated => "vxlan_truncated",
    /// A port's security groups allow neither this packet's flow nor a reply to one.
    SecurityGroup => "security_group",
    /// A DNS message the server could not answer at all (unreadable header).
    DnsIgnored => "dns_ignored",
    /// A tagged frame whose 802.1Q tag could not be removed (too short for a tag and an
    /// EtherType, or offload offsets that would point before the frame without it).
    TagPopFailed => "tag_pop_failed",
    /// A new flow whose tuple (either direction) belongs to a live flow already: a packet that
    /// would make two flows answer to one reply.
    ConntrackCollision => "conntrack_collision",
    /// A local sender's tunnelled super-datagram that cannot be cut back into its datagrams
    /// (not UDP, a checksum state that is not known, inconsistent lengths): delivered whole it
    /// would merge datagrams.
    VxlanBadSuperframe => "vxlan_bad_superframe",
    /// A segment for the metadata or password service that is not the port's own (its source is
    /// not the port's address), or a connection over the guest's share.
    MetadataRefused => "metadata_refused",
    /// A packet of a flow decided under rules a reload replaced, which the new rules decide
    /// differently (its forward, backend, network or permission is gone): the flow ends.
    ReloadRevoked => "reload_revoked",
    /// A WireGuard datagram from no configured peer: a handshake from an unknown key, or a
    /// message for a session index no peer holds (strangers, stale sessions).
    VpnStranger => "vpn_stranger",
    /// A datagram to the WireGuard port that is not a WireGuard message (type, length, MAC).
    VpnMalformed => "vpn_malformed",
    /// A WireGuard data message replayed or outside the replay window.
    VpnReplay => "vpn_replay",
    /// A WireGuard message failing authentication (AEAD tag, handshake decryption, an old
    /// handshake timestamp replayed).
    VpnBadAuth => "vpn_bad_auth",
    /// A handshake refused under load (a cookie reply went back instead, within a global
    /// budget of replies per second).
    VpnUnderLoad => "vpn_under_load",
    /// A handshake message over its source address's rate (20/s, burst 40), dropped before
    /// any cryptography.
    VpnRateLimited => "vpn_rate_limited",
    /// A packet routed to a VPN peer whose endpoint is not known yet (a road warrior that has
    /// not connected).
    VpnNoEndpoint => "vpn_no_endpoint",
    /// A decrypted packet whose source lies outside its peer's `allowed_ips` (cryptokey
    /// routing).
    VpnSourceNotAllowed => "vpn_source_not_allowed",
}

/// Counters of one port. Owned by the datapath thread; snapshots are copied out.
#[derive(Debug, Clone, Serialize)]
pub struct PortStats {
    pub rx_frames: u64,
    pub rx_bytes: u64,
    /// Frames that arrived as GSO super-frames (offloads at work on the sending side).
    pub rx_gso_frames: u64,
    pub tx_frames: u64,
    pub tx_bytes: u64,
    /// GSO super-frames that had to be segmented in software for this port.
    pub tx_sw_segmented: u64,
    /// Super-frames built for this port by coalescing received TCP segments (GRO).
    pub tx_coalesced: u64,
    /// MAC moves onto this port.
    pub mac_moves: u64,
    /// Frames forwarded without learning their source because the network's table was full
    /// (like a Linux bridge: the frame still goes, the address is not remembered).
    pub learn_table_full: u64,
    #[serde(skip)]
    pub drops: [u64; DropReason::COUNT],
}

impl Default for PortStats {
    fn default() -> Self {
        PortStats {
            rx_frames: 0,
            rx_bytes: 0,
            rx_gso_frames: 0,
            tx_frames: 0,
            tx_bytes: 0,
            tx_sw_segmented: 0,
            tx_coalesced: 0,
            mac_moves: 0,
            learn_table_full: 0,
            drops: [0; DropReason::COUNT],
        }
    }
}

impl PortStats {
    /// Adds another port's counters (a removed port's, kept in the totals).
    pub fn absorb(&mut self, o: &PortStats) {
        self.rx_frames += o.rx_frames;
        self.rx_bytes += o.rx_bytes;
        self.rx_gso_frames += o.rx_gso_frames;
        self.tx_frames += o.tx_frames;
        self.tx_bytes += o.tx_bytes;
        self.tx_sw_segmented += o.tx_sw_segmented;
        self.tx_coalesced += o.tx_coalesced;
        self.mac_moves += o.mac_moves;
        self.learn_table_full += o.learn_table_full;
        for (a, b) in self.drops.iter_mut().zip(o.drops.iter()) {
            *a += b;
        }
    }

    pub fn drop(&mut self, r: DropReason) {
        self.drops[r as usize] += 1;
    }
    /// `n` frames lost for one reason (a batch or a super-frame's segments).
    pub fn drop_n(&mut self, r: DropReason, n: u64) {
        self.drops[r as usize] += n;
    }
    pub fn dropped(&self, r: DropReason) -> u64 {
        self.drops[r as usize]
    }
    pub fn total_drops(&self) -> u64 {
        self.drops.iter().sum()
    }
    /// Non-zero drop counters by name.
    pub fn drop_map(&self) -> std::collections::BTreeMap<&'static str, u64> {
        DropReason::ALL.iter().filter(|r| self.dropped(**r) > 0).map(|r| (r.name(), self.dropped(*r))).collect()
    }
}
