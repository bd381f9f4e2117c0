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
    /// Addressed to the router, whose L3 services are not built yet.
    NoL3 => "no_l3_service",
    /// Offload metadata does not match the headers, so software segmentation was impossible.
    OffloadFailed => "offload_failed",
    /// The egress interface is down or gone (EIO, ENETDOWN, ENXIO, EBADFD).
    PortDown => "port_down",
    /// The egress queue was full (EAGAIN, ENOBUFS).
    TxFull => "tx_full",
    /// The egress device refused the frame for another reason (e.g. EINVAL, EMSGSIZE).
    TxError => "tx_error",
    /// Larger than a receive buffer; the tail was cut by the kernel.
    Truncated => "truncated",
}

/// Counters of one port. Owned by the datapath thread; snapshots are copied out.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PortStats {
    pub rx_frames: u64,
    pub rx_bytes: u64,
    /// Frames that arrived as GSO super-frames (offloads at work on the sending side).
    pub rx_gso_frames: u64,
    pub tx_frames: u64,
    pub tx_bytes: u64,
    /// GSO super-frames that had to be segmented in software for this port.
    pub tx_sw_segmented: u64,
    /// MAC moves onto this port.
    pub mac_moves: u64,
    /// Frames forwarded without learning their source because the network's table was full
    /// (like a Linux bridge: the frame still goes, the address is not remembered).
    pub learn_table_full: u64,
    #[serde(skip)]
    pub drops: [u64; DropReason::COUNT],
}

impl PortStats {
    pub fn drop(&mut self, r: DropReason) {
        self.drops[r as usize] += 1;
    }
    pub fn dropped(&self, r: DropReason) -> u64 {
        self.drops[r as usize]
    }
    pub fn total_drops(&self) -> u64 {
        self.drops.iter().sum()
    }
    /// Non-zero drop counters by name.
    pub fn drop_map(&self) -> serde_json::Map<String, serde_json::Value> {
        DropReason::ALL
            .iter()
            .filter(|r| self.dropped(**r) > 0)
            .map(|r| (r.name().to_string(), self.dropped(*r).into()))
            .collect()
    }
}
