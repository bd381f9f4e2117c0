//! The config file schema (DESIGN.md is the contract). Every struct rejects unknown keys; value
//! types check their own syntax. Cross-references and uniqueness are checked in `validate`.

use super::types::{Ipv4Iface, Ipv4Net, PortRange};
use crate::wire::ethernet::MacAddr;
use serde::Deserialize;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub router: Router,
    #[serde(default, rename = "network")]
    pub networks: Vec<Network>,
    #[serde(default, rename = "port")]
    pub ports: Vec<Port>,
    #[serde(default, rename = "uplink")]
    pub uplinks: Vec<Uplink>,
    pub vxlan: Option<Vxlan>,
    pub public: Option<Public>,
    #[serde(default)]
    pub static_nat: Vec<StaticNat>,
    #[serde(default)]
    pub port_forward: Vec<PortForward>,
    #[serde(default)]
    pub load_balancer: Vec<LoadBalancer>,
    #[serde(default)]
    pub firewall: Vec<Firewall>,
    #[serde(default)]
    pub egress: Vec<Egress>,
    #[serde(default)]
    pub security_group: Vec<SecurityGroup>,
    pub dns: Option<Dns>,
    pub conntrack: Option<ConntrackCfg>,
    pub wireguard: Option<WireGuard>,
    pub bgp: Option<Bgp>,
}

/// `[bgp]`: a BGP speaker for L2VPN EVPN on the VXLAN underlay (VTEPs and MACs learned from
/// the fabric's route reflectors instead of `[[vxlan.peer]]` lists).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Bgp {
    pub asn: u32,
    /// Default: `[vxlan] local`.
    pub router_id: Option<Ipv4Addr>,
    /// Routes one neighbour may hold here (default 100000); past it they are refused.
    pub max_routes: Option<usize>,
    #[serde(default)]
    pub neighbor: Vec<BgpNeighbor>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BgpNeighbor {
    pub address: Ipv4Addr,
    pub remote_as: u32,
    /// Default 9 (FRR's datacenter profile); 0: no hold timer.
    pub hold_secs: Option<u16>,
    /// Default 3.
    pub keepalive_secs: Option<u16>,
    /// TCP MD5 signature key (RFC 2385).
    pub password: Option<String>,
    /// Overrides `[bgp] max_routes` for this neighbour.
    pub max_routes: Option<usize>,
}

/// `[wireguard]`: the VPN endpoint on one of the public addresses.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireGuard {
    /// `IP:PORT`, the IP one of `[public] ips`.
    pub listen: std::net::SocketAddrV4,
    /// The private key as `wg genkey` writes it (base64), in a file only its owner may read;
    /// relative to the config file's directory.
    pub private_key_file: PathBuf,
    /// The router inside the VPN; remote-access clients take /32s of this prefix.
    pub address: Ipv4Iface,
    /// The tunnel's inner MTU (default: the public MTU minus 80).
    pub mtu: Option<u16>,
    #[serde(default)]
    pub peer: Vec<WgPeer>,
    /// The key as loaded from `private_key_file`.
    #[serde(skip)]
    pub private_key: Option<crate::vpn::Key>,
}

/// `[[wireguard.peer]]`: a site (a gateway with networks behind it) or a remote-access client.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WgPeer {
    pub name: String,
    /// The peer's public key (base64, as `wg pubkey` writes it).
    pub public_key: String,
    /// Optional preshared key file (`wg genpsk`), same rules as the private key's.
    pub preshared_key_file: Option<PathBuf>,
    /// Where the peer listens; road warriors have none (their endpoint is learned).
    pub endpoint: Option<std::net::SocketAddrV4>,
    /// What may come from the peer and is routed to it.
    pub allowed_ips: Vec<Ipv4Net>,
    /// Account networks the peer may reach (default: all).
    pub networks: Option<Vec<String>>,
    /// Seconds between keepalives when idle (0 or absent: none).
    pub persistent_keepalive: Option<u16>,
    #[serde(skip)]
    pub preshared_key: Option<crate::vpn::Key>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Router {
    pub name: String,
    pub mac: Option<MacAddr>,
    pub state_dir: Option<PathBuf>,
    pub control_socket: Option<PathBuf>,
    pub metrics_listen: Option<SocketAddr>,
    /// Seconds a learned MAC stays in the table without traffic (default 300).
    #[serde(default = "defaults::mac_aging_secs")]
    pub mac_aging_secs: u64,
    /// Hard cap on learned MACs per network (default 8192).
    #[serde(default = "defaults::mac_table_size")]
    pub mac_table_size: usize,
    /// Hard cap on MACs learned from one `[[port]]` (default 16); uplinks are bounded by
    /// `mac_table_size` only.
    #[serde(default = "defaults::mac_limit_per_port")]
    pub mac_limit_per_port: usize,
    /// After traffic, keep polling the ports without sleeping for this long (microseconds,
    /// default 2000; 0 = always sleep in epoll). Trades idle-CPU for latency and throughput.
    #[serde(default = "defaults::busy_poll_us")]
    pub busy_poll_us: u64,
    /// Receive coalescing: when small UDP input (not DNS or DHCP) is continuous (64k frames/s or more with the ports
    /// never found empty), pause this long (microseconds, default 50; 0 = never) after
    /// draining the ports, so frames are taken in bursts and the CPU is free meanwhile.
    /// Request/response traffic, TCP and ping never make it pause.
    #[serde(default = "defaults::coalesce_us")]
    pub coalesce_us: u64,
    /// Forward established flows' packets by the flow cache: the router's last decision for
    /// the flow direction replayed, checked against everything it depends on (default true;
    /// false: every packet takes the router's full path, as a way to rule the cache out).
    #[serde(default = "defaults::yes")]
    pub flow_cache: bool,
    /// Write bursts of small frames to taps through io_uring (default true; false, or a kernel
    /// that refuses io_uring: one write per frame).
    #[serde(default = "defaults::yes")]
    pub io_uring: bool,
    /// `ctl health` calls a DHCP pool or the flow table degraded at this percentage of its
    /// size (default 90).
    #[serde(default = "defaults::health_full_percent")]
    pub health_full_percent: u8,
    /// Serve metadata, user data and passwords to guests (gateway:80 and :8080,
    /// 169.254.169.254:80); default true.
    #[serde(default = "defaults::yes")]
    pub metadata: bool,
    /// Largest user data accepted, in bytes (default 32768).
    #[serde(default = "defaults::user_data_max")]
    pub user_data_max: usize,
}

pub mod defaults {
    pub fn mac_aging_secs() -> u64 {
        300
    }
    pub fn mac_table_size() -> usize {
        8192
    }
    pub fn mac_limit_per_port() -> usize {
        16
    }
    pub fn user_data_max() -> usize {
        32 * 1024
    }
    pub fn health_full_percent() -> u8 {
        90
    }
    pub fn busy_poll_us() -> u64 {
        2000
    }
    pub fn coalesce_us() -> u64 {
        50
    }
    pub fn yes() -> bool {
        true
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Allow,
    Deny,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    pub name: String,
    pub cidr: Ipv4Net,
    pub gateway: Option<Ipv4Addr>,
    pub vlan: Option<u16>,
    pub vni: Option<u32>,
    pub mtu: Option<u16>,
    pub domain: Option<String>,
    pub dhcp_range: Option<[Ipv4Addr; 2]>,
    pub lease_secs: Option<u32>,
    pub egress_default: Option<Action>,
    /// EVPN route targets (`ASN:N`) exported and imported (default `[bgp] asn`:`vni`).
    pub route_targets: Option<Vec<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IfKind {
    /// vrouter creates (or opens) a tap; its kernel side is the guest's NIC.
    Tap,
    /// An existing interface (e.g. QEMU's tap) attached by AF_PACKET.
    Netdev,
    /// A VM that is not on a port of its own but behind an uplink or VXLAN peer (`via`), as on
    /// every host of a zone when vrouter is the account's system VM: it gets its reservation,
    /// hostname and DNS name; with port security its MAC is bound to that uplink.
    Remote,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Port {
    pub name: String,
    pub network: String,
    pub kind: IfKind,
    /// The interface (a tap vrouter creates, or the existing one a `netdev` port attaches to);
    /// a `netdev` port may name it by `match_mac` instead.
    #[serde(default)]
    pub ifname: String,
    /// A `netdev` port's interface by its MAC address rather than its name (a VM's NICs come up
    /// in whatever order; like netplan's `match: macaddress`).
    pub match_mac: Option<MacAddr>,
    /// A `remote` port's uplink (or `vxlan-<address>` peer): where its VM's frames come from.
    pub via: Option<String>,
    pub mac: Option<MacAddr>,
    pub ip: Option<Ipv4Addr>,
    pub hostname: Option<String>,
    #[serde(default)]
    pub security_groups: Vec<String>,
    #[serde(default = "defaults::yes")]
    pub port_security: bool,
    /// Extra source addresses the guest may use (a VRRP VIP inside guests); at most 8.
    #[serde(default)]
    pub allowed_addresses: Vec<Ipv4Addr>,
    /// Metadata: the VM's instance id (default: the port's name).
    pub instance_id: Option<String>,
    /// Metadata: SSH public keys (`public-keys`).
    #[serde(default)]
    pub public_keys: Vec<String>,
    /// Metadata: user data, inline...
    pub user_data: Option<String>,
    /// ... or read from this file at load (relative to the config file's directory).
    pub user_data_file: Option<std::path::PathBuf>,
    /// Metadata: further string keys (`service-offering`, `availability-zone`, ...).
    #[serde(default)]
    pub metadata: std::collections::BTreeMap<String, String>,
    /// The user data as loaded (inline or from `user_data_file`).
    #[serde(skip)]
    pub user_data_bytes: Option<Vec<u8>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Uplink {
    pub name: String,
    pub kind: IfKind,
    #[serde(default)]
    pub ifname: String,
    /// The interface by MAC address instead of `ifname` (`kind = "netdev"`).
    pub match_mac: Option<MacAddr>,
    /// Networks carried tagged, each with its `vlan`.
    #[serde(default)]
    pub networks: Vec<String>,
    /// The network carried untagged (the native VLAN): its frames leave without a tag, and
    /// untagged frames arriving belong to it.
    pub untagged: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vxlan {
    pub local: Ipv4Addr,
    pub port: Option<u16>,
    /// The underlay's MTU (default 1500): networks with a `vni` default to 50 bytes less.
    pub mtu: Option<u16>,
    /// Outer TTL (default 64).
    pub ttl: Option<u8>,
    /// Set DF on outer packets (default false: the underlay may fragment them).
    pub df: Option<bool>,
    #[serde(default)]
    pub peer: Vec<VxlanPeer>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VxlanPeer {
    pub remote: Ipv4Addr,
    pub vnis: Option<Vec<u32>>,
    /// Learned over BGP EVPN (never in a file).
    #[serde(skip)]
    pub evpn: bool,
    /// EVPN: VNIs carried for unicast only (MAC routes, no type-3 route: not in the flood list).
    #[serde(skip)]
    pub unicast_only: Vec<u32>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Public {
    pub kind: IfKind,
    #[serde(default)]
    pub ifname: String,
    /// The interface by MAC address instead of `ifname` (`kind = "netdev"`).
    pub match_mac: Option<MacAddr>,
    pub ips: Vec<Ipv4Iface>,
    pub gateway: Ipv4Addr,
    /// Guests' outbound traffic leaves with this address (default: the first of `ips`).
    pub source_nat_ip: Option<Ipv4Addr>,
    /// MTU of the public link (default 1500): larger DF packets get "fragmentation needed".
    pub mtu: Option<u16>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticNat {
    pub public_ip: Ipv4Addr,
    pub private_ip: Ipv4Addr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum L4Proto {
    Tcp,
    Udp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
    Icmp,
    All,
}

impl Proto {
    pub fn has_ports(self) -> bool {
        matches!(self, Proto::Tcp | Proto::Udp)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortForward {
    pub public_ip: Ipv4Addr,
    pub protocol: L4Proto,
    pub public_port: PortRange,
    pub private_ip: Ipv4Addr,
    pub private_port: PortRange,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    Roundrobin,
    Leastconn,
    Source,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadBalancer {
    pub name: String,
    pub public_ip: Ipv4Addr,
    pub protocol: L4Proto,
    pub port: u16,
    #[serde(default = "default_algorithm")]
    pub algorithm: Algorithm,
    pub backends: Vec<Backend>,
    pub health_check: Option<HealthCheck>,
}

fn default_algorithm() -> Algorithm {
    Algorithm::Roundrobin
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backend {
    pub ip: Ipv4Addr,
    pub port: u16,
    pub weight: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    /// A TCP connect to the backend's port succeeds.
    Tcp,
    /// `GET path` answers with status `expect`.
    Http,
    /// No check: the backend is always considered up.
    None,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    pub kind: CheckKind,
    /// HTTP checks: the path to GET (default "/").
    pub path: Option<String>,
    /// HTTP checks: the status that means healthy (default 200).
    pub expect: Option<u16>,
    pub interval_ms: Option<u64>,
    pub timeout_ms: Option<u64>,
    pub rise: Option<u32>,
    pub fall: Option<u32>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Firewall {
    pub public_ip: Ipv4Addr,
    pub protocol: Proto,
    pub ports: Option<PortRange>,
    pub sources: Vec<Ipv4Net>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Egress {
    pub network: String,
    pub protocol: Proto,
    pub ports: Option<PortRange>,
    pub destinations: Vec<Ipv4Net>,
    pub action: Action,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecurityGroup {
    pub name: String,
    #[serde(default)]
    pub rules: Vec<SgRule>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Ingress,
    Egress,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SgRule {
    pub direction: Direction,
    pub protocol: Proto,
    pub ports: Option<PortRange>,
    pub cidr: Option<Ipv4Net>,
    pub remote_group: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dns {
    #[serde(default)]
    pub upstreams: Vec<SocketAddr>,
    pub cache_entries: Option<usize>,
}

/// Connection tracking limits and timeouts (defaults follow Linux's nf_conntrack).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConntrackCfg {
    /// Hard cap on tracked flows (default 262144).
    pub max_flows: Option<usize>,
    pub tcp_established_secs: Option<u64>,
    pub tcp_syn_secs: Option<u64>,
    /// FIN_WAIT, CLOSE_WAIT, LAST_ACK and TIME_WAIT.
    pub tcp_close_secs: Option<u64>,
    /// UDP flows not answered yet.
    pub udp_secs: Option<u64>,
    /// UDP flows that were answered.
    pub udp_stream_secs: Option<u64>,
    pub icmp_secs: Option<u64>,
}
