//! Config -> datapath tables, as a pure function: names resolve to ids, rules become
//! classifiers, defaults are filled in. Opening devices is the I/O edge's business (`io`), which
//! only adds what the devices can do (offload capability) to what this builds.
//!
//! Ports and networks are numbered by [`Numbering`]: each name keeps its slot for as long as it
//! is configured, across reloads, so state keyed by a slot (learned MACs, flows, leases in
//! memory, counters) still means the same port or network after a change that does not name it.
//! A slot freed by a removal is vacant (a port in no network, a network with no address) and
//! taken again only by a later addition, with its generation bumped. At start the order is the
//! config's: guest ports, uplinks, the public port, VXLAN peers; networks in file order.

use crate::config::schema::{Action, Config, IfKind, L4Proto};
use crate::conntrack::Timeouts;
use crate::datapath::{DatapathConfig, NetSpec, PortSpec};
use crate::filter::{Classifier, Rule};
use crate::router::{Forward, L3Config, NetL3, PublicL3};
use crate::switch::{NetId, PortId, Role, Security};
use crate::wire::ethernet::MacAddr;
use crate::wire::ipv4::proto;
use std::collections::HashMap;
use std::time::Duration;

/// The slots of ports and networks (see the module doc). Index = `PortId` / `NetId`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Numbering {
    /// Each port slot's name (`None`: vacant) and generation (bumped each time it is taken).
    pub ports: Vec<(Option<String>, u32)>,
    pub nets: Vec<(Option<String>, u32)>,
    /// Slot by name (lookups are per port and rule when a config is built).
    by_port: HashMap<String, u16>,
    by_net: HashMap<String, u16>,
}

/// Every port a config defines, by name, in the start-up order.
pub fn port_names(c: &Config) -> Vec<String> {
    // A remote port is a VM behind an uplink: no port of its own.
    let mut v: Vec<String> =
        c.ports.iter().filter(|p| p.kind != IfKind::Remote && c.networks.iter().any(|n| n.name == p.network)).map(|p| p.name.clone()).collect();
    v.extend(c.uplinks.iter().map(|u| u.name.clone()));
    if c.public.is_some() {
        v.push(PUBLIC_PORT.into());
    }
    if let Some(vx) = &c.vxlan {
        v.extend(vx.peer.iter().map(|p| vtep_name(p.remote)));
    }
    v
}

fn assign(prev: &[(Option<String>, u32)], names: &[String]) -> Vec<(Option<String>, u32)> {
    let want: std::collections::HashSet<&str> = names.iter().map(|s| s.as_str()).collect();
    let mut slots: Vec<(Option<String>, u32)> =
        prev.iter().map(|(n, g)| (n.clone().filter(|n| want.contains(n.as_str())), *g)).collect();
    let have: std::collections::HashSet<String> = slots.iter().filter_map(|(n, _)| n.clone()).collect();
    let mut free = slots.iter().enumerate().filter(|(_, (n, _))| n.is_none()).map(|(i, _)| i).collect::<Vec<_>>().into_iter();
    for n in names.iter().filter(|n| !have.contains(*n)) {
        match free.next() {
            Some(i) => slots[i] = (Some(n.clone()), slots[i].1 + 1),
            None => slots.push((Some(n.clone()), 0)),
        }
    }
    slots
}

fn same_occupant(a: &[(Option<String>, u32)], b: &[(Option<String>, u32)], i: usize) -> bool {
    matches!((a.get(i), b.get(i)), (Some(x), Some(y)) if x.0.is_some() && x == y)
}

impl Numbering {
    /// The slots for `c`: names in `prev` keep theirs, new names take free slots (or new ones).
    pub fn assign(prev: Option<&Numbering>, c: &Config) -> Numbering {
        let empty = Numbering::default();
        let prev = prev.unwrap_or(&empty);
        let nets: Vec<String> = c.networks.iter().map(|n| n.name.clone()).collect();
        let (ports, nets) = (assign(&prev.ports, &port_names(c)), assign(&prev.nets, &nets));
        let index = |v: &[(Option<String>, u32)]| v.iter().enumerate().filter_map(|(i, (n, _))| Some((n.clone()?, i as u16))).collect();
        Numbering { by_port: index(&ports), by_net: index(&nets), ports, nets }
    }

    /// Whether slot `i` holds the same port in `next` as here (same name, same generation).
    pub fn keeps_port(&self, next: &Numbering, i: usize) -> bool {
        same_occupant(&self.ports, &next.ports, i)
    }

    /// Whether slot `i` holds the same network in `next` as here.
    pub fn keeps_net(&self, next: &Numbering, i: usize) -> bool {
        same_occupant(&self.nets, &next.nets, i)
    }

    pub fn port(&self, name: &str) -> Option<crate::switch::PortId> {
        self.by_port.get(name).map(|&i| crate::switch::PortId(i))
    }

    pub fn net(&self, name: &str) -> Option<NetId> {
        self.by_net.get(name).map(|&i| NetId(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(nets: &[&str], ports: &[(&str, &str)]) -> Config {
        let mut t = String::from("[router]\nname = \"t\"\n");
        for (i, n) in nets.iter().enumerate() {
            t += &format!("[[network]]\nname = \"{n}\"\ncidr = \"10.{i}.0.0/24\"\n");
        }
        for (p, n) in ports {
            t += &format!("[[port]]\nname = \"{p}\"\nnetwork = \"{n}\"\nkind = \"tap\"\nifname = \"t{p}\"\nport_security = false\n");
        }
        crate::config::parse(&t, std::path::Path::new("t.toml")).unwrap().config
    }

    #[test]
    fn names_keep_their_slots_and_freed_slots_get_a_new_generation() {
        let a = Numbering::assign(None, &cfg(&["web", "db"], &[("p1", "web"), ("p2", "db"), ("p3", "web")]));
        assert_eq!((a.port("p1"), a.port("p2"), a.port("p3")), (Some(crate::switch::PortId(0)), Some(crate::switch::PortId(1)), Some(crate::switch::PortId(2))));
        // A network inserted first and a port removed: the others keep their slots.
        let b = Numbering::assign(Some(&a), &cfg(&["first", "web", "db"], &[("p1", "web"), ("p3", "web")]));
        assert_eq!(b.net("web"), a.net("web"));
        assert_eq!(b.net("db"), a.net("db"));
        assert_eq!(b.net("first"), Some(NetId(2)));
        assert_eq!(b.port("p3"), a.port("p3"));
        assert_eq!(b.port("p2"), None);
        assert_eq!(b.ports[1], (None, 0), "p2's slot is vacant");
        // A new port takes the freed slot, with the next generation.
        let c = Numbering::assign(Some(&b), &cfg(&["first", "web", "db"], &[("p1", "web"), ("p3", "web"), ("p4", "db")]));
        assert_eq!(c.port("p4"), Some(crate::switch::PortId(1)));
        assert_eq!(c.ports[1], (Some("p4".into()), 1));
        assert_ne!(c.ports[1], a.ports[1], "never the same slot identity as p2's");
        // The same config again: nothing moves.
        assert_eq!(Numbering::assign(Some(&c), &cfg(&["first", "web", "db"], &[("p1", "web"), ("p3", "web"), ("p4", "db")])), c);
    }
}

/// The name the public port has in `ctl show ports` and stats.
pub const PUBLIC_PORT: &str = "public";

/// The router's MAC on guest networks: configured, or a locally administered address derived
/// from the instance name (stable across restarts).
pub fn router_mac(c: &Config) -> MacAddr {
    c.router.mac.unwrap_or_else(|| {
        let h = c.router.name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
        let b = h.to_be_bytes();
        MacAddr([0x02, b[1], b[2], b[3], b[4], b[5]])
    })
}

/// A VXLAN peer's port name (`ctl show ports`, fdb, stats).
pub fn vtep_name(remote: std::net::Ipv4Addr) -> String {
    format!("vxlan-{remote}")
}

/// A network's MTU: configured, else 50 bytes under the underlay's for a VXLAN network (so its
/// frames fit once encapsulated), else 1500.
pub fn net_mtu(c: &Config, n: &crate::config::schema::Network) -> u16 {
    n.mtu.unwrap_or(match (&c.vxlan, n.vni) {
        (Some(v), Some(_)) => v.mtu.unwrap_or(1500).saturating_sub(50),
        _ => 1500,
    })
}

/// How a port's interface is shown: its name, or `mac:<MAC>` for one matched by MAC.
fn shown_ifname(ifname: &str, match_mac: Option<MacAddr>) -> String {
    match match_mac {
        Some(m) => format!("mac:{m}"),
        None => ifname.to_string(),
    }
}

pub fn kind_name(k: IfKind) -> &'static str {
    match k {
        IfKind::Tap => "tap",
        IfKind::Netdev => "netdev",
        IfKind::Remote => "remote",
    }
}

/// Builds the datapath's tables from a validated config, in `ids`' slots (vacant slots get
/// vacant entries). Every port starts without offload capability; the I/O edge sets it from
/// the opened device.
pub fn datapath_config(c: &Config, ids: &Numbering) -> DatapathConfig {
    let net_id = |name: &str| ids.net(name);
    let mut ports: Vec<PortSpec> = ids.ports.iter().map(|_| PortSpec::vacant()).collect();
    let mut put = |name: &str, spec: PortSpec| {
        if let Some(p) = ids.port(name) {
            ports[p.0 as usize] = spec;
        }
    };
    let mut pins = Vec::new();
    for p in &c.ports {
        let Some(net) = net_id(&p.network) else { continue };
        if p.kind == IfKind::Remote {
            // Its MAC is bound to the uplink it is behind: the same MAC elsewhere is dropped.
            if let (true, Some(mac), Some(via)) = (p.port_security, p.mac, p.via.as_deref().and_then(|v| ids.port(v))) {
                pins.push((net, mac, via));
            }
            continue;
        }
        let security = match (p.port_security, p.mac) {
            (true, Some(mac)) => Some(Security { mac, ip: p.ip, allowed: crate::switch::Allowed::new(&p.allowed_addresses) }),
            _ => None,
        };
        put(
            &p.name,
            PortSpec {
                name: p.name.clone(),
                ifname: shown_ifname(&p.ifname, p.match_mac),
                kind: kind_name(p.kind).into(),
                role: Role::Access { net, security },
                offload: crate::wire::vnet::Offloads::NONE,
                mac_limit: Some(if security.is_some() { 1 } else { c.router.mac_limit_per_port }),
            },
        );
    }
    let net_of = |name: &String| c.networks.iter().find(|n| &n.name == name);
    for u in &c.uplinks {
        let pairs: Vec<(u16, NetId)> = u.networks.iter().filter_map(|n| Some((net_of(n)?.vlan?, net_id(n)?))).collect();
        put(
            &u.name,
            PortSpec {
                name: u.name.clone(),
                ifname: shown_ifname(&u.ifname, u.match_mac),
                kind: kind_name(u.kind).into(),
                role: Role::trunk_native(&pairs, u.untagged.as_deref().and_then(net_id)),
                offload: crate::wire::vnet::Offloads::NONE,
                mac_limit: None,
            },
        );
    }
    if let Some(pb) = &c.public {
        put(
            PUBLIC_PORT,
            PortSpec {
                name: PUBLIC_PORT.into(),
                ifname: shown_ifname(&pb.ifname, pb.match_mac),
                kind: kind_name(pb.kind).into(),
                role: Role::Public,
                offload: crate::wire::vnet::Offloads::NONE,
                mac_limit: Some(0),
            },
        );
    }
    // One port per VXLAN peer, carrying its VNIs (all networks with a vni if unsaid).
    if let Some(vx) = &c.vxlan {
        for peer in &vx.peer {
            // Sets: an EVPN peer may carry thousands of VNIs, and a reload builds every peer.
            let wanted: Option<std::collections::HashSet<u32>> = peer.vnis.as_ref().map(|v| v.iter().copied().collect());
            let quiet: std::collections::HashSet<u32> = peer.unicast_only.iter().copied().collect();
            let vnis: Vec<(u32, NetId)> = c
                .networks
                .iter()
                .filter_map(|n| Some((n.vni?, net_id(&n.name)?)))
                .filter(|(vni, _)| wanted.as_ref().is_none_or(|v| v.contains(vni)))
                .collect();
            put(
                &vtep_name(peer.remote),
                PortSpec {
                    name: vtep_name(peer.remote),
                    ifname: peer.remote.to_string(),
                    kind: "vxlan".into(),
                    role: Role::Vtep {
                        remote: peer.remote,
                        unicast_only: vnis.iter().filter(|(v, _)| quiet.contains(v)).map(|(_, n)| *n).collect(),
                        vnis: crate::switch::VniMap::new(vnis),
                        evpn: peer.evpn,
                    },
                    offload: crate::wire::vnet::Offloads::NONE,
                    mac_limit: None,
                },
            );
        }
    }
    let nets = ids
        .nets
        .iter()
        .map(|(name, _)| match name.as_deref().and_then(|name| c.networks.iter().find(|n| n.name == name)) {
            Some(n) => NetSpec { name: n.name.clone(), vlan: n.vlan },
            None => NetSpec { name: String::new(), vlan: None },
        })
        .collect();
    DatapathConfig {
        router_mac: router_mac(c),
        nets,
        ports,
        mac_aging: Duration::from_secs(c.router.mac_aging_secs),
        mac_table_size: c.router.mac_table_size,
        security: security_groups(c, ids),
        vxlan_mtu: c.vxlan.as_ref().map_or(1450, |v| v.mtu.unwrap_or(1500) as usize - 50),
        pins,
        l3: l3_config(c, ids),
    }
}

/// Each guest port's security groups: their rules merged by direction (a rule's value is the
/// `remote_group` it names, as a group index), and what makes the port a member of its groups.
/// Port ids are `ids`' slots.
pub fn security_groups(c: &Config, ids: &Numbering) -> crate::filter::sg::SgConfig {
    use crate::config::schema::Direction;
    use crate::filter::sg::{PortGroups, SgConfig};
    let gid = |name: &str| c.security_group.iter().position(|g| g.name == name).map(|i| i as u16);
    let mut ports = Vec::new();
    for p in &c.ports {
        let (Some(net), Some(port)) = (ids.net(&p.network), ids.port(&p.name)) else { continue };
        if p.security_groups.is_empty() {
            continue;
        }
        let groups: Vec<u16> = p.security_groups.iter().filter_map(|g| gid(g)).collect();
        let (mut ingress, mut egress) = (Vec::new(), Vec::new());
        for &g in &groups {
            for r in &c.security_group[g as usize].rules {
                let rule = Rule { protocol: r.protocol, ports: r.ports, nets: r.cidr.into_iter().collect(), value: r.remote_group.as_deref().and_then(gid) };
                match r.direction {
                    Direction::Ingress => ingress.push(rule),
                    Direction::Egress => egress.push(rule),
                }
            }
        }
        let addrs = p.ip.into_iter().chain(p.allowed_addresses.iter().copied()).collect();
        ports.push(PortGroups { port, net, mac: p.mac, addrs, groups, ingress, egress });
    }
    SgConfig { ports, timeouts: timeouts(c) }
}

fn l4(p: L4Proto) -> u8 {
    match p {
        L4Proto::Tcp => proto::TCP,
        L4Proto::Udp => proto::UDP,
    }
}

/// The router's tables: networks with their egress classifiers, the public side, NAT rules,
/// the firewall per public IP, conntrack limits.
pub fn l3_config(c: &Config, ids: &Numbering) -> L3Config {
    let nets = ids
        .nets
        .iter()
        .map(|(name, _)| {
            let Some(n) = name.as_deref().and_then(|name| c.networks.iter().find(|n| n.name == name)) else { return NetL3::vacant() };
            let rules = c
                .egress
                .iter()
                .filter(|e| e.network == n.name)
                .map(|e| Rule { protocol: e.protocol, ports: e.ports, nets: e.destinations.clone(), value: e.action })
                .collect();
            NetL3 {
                cidr: n.cidr,
                domain: n.domain.clone(),
                gateway: n.gateway,
                mtu: net_mtu(c, n),
                egress: Classifier::new(rules),
                egress_default: n.egress_default.unwrap_or(Action::Allow),
            }
        })
        .collect();
    let public = c.public.as_ref().and_then(|p| {
        Some(PublicL3 {
            ips: p.ips.clone(),
            gateway: p.gateway,
            source_nat_ip: p.source_nat_ip.or(p.ips.first().map(|a| a.addr))?,
            mtu: p.mtu.unwrap_or(1500),
        })
    });
    let mut fw: HashMap<_, Vec<Rule<()>>> = HashMap::new();
    for f in &c.firewall {
        fw.entry(f.public_ip).or_default().push(Rule { protocol: f.protocol, ports: f.ports, nets: f.sources.clone(), value: () });
    }
    let ct = c.conntrack.clone();
    let timeouts = timeouts(c);
    L3Config {
        nets,
        public,
        static_nat: c.static_nat.iter().map(|s| (s.public_ip, s.private_ip)).collect(),
        forwards: c
            .port_forward
            .iter()
            .map(|f| Forward {
                protocol: l4(f.protocol),
                public_ip: f.public_ip,
                public_port: f.public_port,
                private_ip: f.private_ip,
                private_port: f.private_port,
            })
            .collect(),
        firewall: fw.into_iter().map(|(ip, rules)| (ip, Classifier::new(rules))).collect(),
        conntrack_max: ct.and_then(|t| t.max_flows).unwrap_or(262_144),
        timeouts,
        neigh_cap: 4096,
        lbs: load_balancers(c, ids),
        vpn: vpn_spec(c, ids),
        // The I/O edge keys it from the kernel before the router is built.
        seed: [0; 32],
    }
}

/// The BGP EVPN speaker's config: every network with a `vni` is advertised with RD
/// `router_id:N` (N its place among the networks, from 1) and its route targets (default
/// `asn:vni`, FRR's auto-derivation).
pub fn bgp_spec(c: &Config) -> Option<crate::bgp::SpeakerConfig> {
    let (b, vx) = (c.bgp.as_ref()?, c.vxlan.as_ref()?);
    let router_id = b.router_id.unwrap_or(vx.local);
    let nets = c
        .networks
        .iter()
        .enumerate()
        .filter_map(|(i, n)| {
            let vni = n.vni?;
            let rts = match &n.route_targets {
                Some(v) => v.iter().filter_map(|s| crate::config::parse_route_target(s).ok()).collect(),
                None => vec![crate::wire::bgp::RouteTarget { asn: b.asn, value: if b.asn > u16::MAX as u32 { vni & 0xffff } else { vni } }],
            };
            Some(crate::bgp::EvpnNet { name: n.name.clone(), vni, rd: crate::wire::bgp::Rd::ip(router_id, (i + 1) as u16), route_targets: rts })
        })
        .collect();
    let neighbors = b
        .neighbor
        .iter()
        .map(|n| crate::bgp::NeighborSpec {
            addr: n.address,
            remote_as: n.remote_as,
            hold_secs: n.hold_secs.unwrap_or(9),
            keepalive_secs: n.keepalive_secs.unwrap_or(3),
            max_routes: n.max_routes.or(b.max_routes).unwrap_or(crate::bgp::MAX_ROUTES_DEFAULT),
        })
        .collect();
    Some(crate::bgp::SpeakerConfig { asn: b.asn, router_id, local: vx.local, nets, neighbors })
}

/// The config as it runs: the file's, with the VTEPs EVPN learned added as VXLAN peers
/// (`learned`: VTEP -> VNIs, and those flooded to it). A VTEP the file names already keeps the
/// file's entry.
pub fn with_learned(mut c: Config, learned: &std::collections::BTreeMap<std::net::Ipv4Addr, crate::bgp::VtepVnis>) -> Config {
    if c.bgp.is_none() {
        return c;
    }
    let vnis: std::collections::HashSet<u32> = c.networks.iter().filter_map(|n| n.vni).collect();
    if let Some(vx) = c.vxlan.as_mut() {
        for (ip, v) in learned {
            if *ip == vx.local || vx.peer.iter().any(|p| p.remote == *ip) {
                continue;
            }
            let all: Vec<u32> = v.all.iter().copied().filter(|x| vnis.contains(x)).collect();
            let unicast_only = all.iter().copied().filter(|x| !v.flood.contains(x)).collect();
            if !all.is_empty() {
                vx.peer.push(crate::config::schema::VxlanPeer { remote: *ip, vnis: Some(all), evpn: true, unicast_only });
            }
        }
    }
    c
}

/// The WireGuard endpoint: keys as loaded with the config, peers' networks by id, the inner
/// MTU defaulting to the public one less 80.
pub fn vpn_spec(c: &Config, ids: &Numbering) -> Option<crate::vpn::VpnSpec> {
    let wg = c.wireguard.as_ref()?;
    let public_mtu = c.public.as_ref().and_then(|p| p.mtu).unwrap_or(1500);
    Some(crate::vpn::VpnSpec {
        listen: wg.listen,
        private_key: wg.private_key?,
        address: wg.address,
        mtu: wg.mtu.unwrap_or(public_mtu.saturating_sub(crate::vpn::OVERHEAD_DEFAULT)),
        peers: wg
            .peer
            .iter()
            .filter_map(|p| {
                Some(crate::vpn::PeerSpec {
                    name: p.name.clone(),
                    public_key: crate::vpn::Key::from_base64(&p.public_key).ok()?,
                    preshared_key: p.preshared_key,
                    endpoint: p.endpoint,
                    allowed_ips: p.allowed_ips.clone(),
                    nets: p.networks.as_ref().map(|v| v.iter().filter_map(|n| ids.net(n)).collect()),
                    keepalive: p.persistent_keepalive.filter(|k| *k > 0),
                })
            })
            .collect(),
    })
}

/// Load balancers: backends placed on their networks, health checks with their defaults
/// (haproxy's: every 2 s, rise 2, fall 3; a timeout of half the interval).
pub fn load_balancers(c: &Config, ids: &Numbering) -> Vec<crate::lb::LbSpec> {
    use crate::config::schema::CheckKind as K;
    use crate::lb::{BackendSpec, CheckKind, CheckSpec, LbSpec};
    c.load_balancer
        .iter()
        .map(|lb| LbSpec {
            name: lb.name.clone(),
            vip: lb.public_ip,
            proto: l4(lb.protocol),
            port: lb.port,
            algorithm: lb.algorithm,
            backends: lb
                .backends
                .iter()
                .filter_map(|b| {
                    let net = ids.net(&c.networks.iter().find(|n| n.cidr.contains(b.ip))?.name)?;
                    Some(BackendSpec { ip: b.ip, port: b.port, weight: b.weight.unwrap_or(1), net })
                })
                .collect(),
            check: lb.health_check.as_ref().and_then(|h| {
                let kind = match h.kind {
                    K::None => return None,
                    K::Tcp => CheckKind::Tcp,
                    K::Http => CheckKind::Http { path: h.path.clone().unwrap_or_else(|| "/".into()), expect: h.expect.unwrap_or(200) },
                };
                let interval = Duration::from_millis(h.interval_ms.unwrap_or(2000));
                Some(CheckSpec {
                    kind,
                    interval,
                    timeout: h.timeout_ms.map_or(interval / 2, Duration::from_millis),
                    rise: h.rise.unwrap_or(2),
                    fall: h.fall.unwrap_or(3),
                })
            }),
        })
        .collect()
}

/// Conntrack timeouts: `[conntrack]`'s, else Linux's defaults (the router's table and the
/// security groups' per-port tables alike).
pub fn timeouts(c: &Config) -> Timeouts {
    let d = Timeouts::default();
    let secs = |v: Option<u64>, dflt: Duration| v.map_or(dflt, Duration::from_secs);
    match &c.conntrack {
        Some(t) => Timeouts {
            tcp_established: secs(t.tcp_established_secs, d.tcp_established),
            tcp_syn: secs(t.tcp_syn_secs, d.tcp_syn),
            tcp_close: secs(t.tcp_close_secs, d.tcp_close),
            udp: secs(t.udp_secs, d.udp),
            udp_stream: secs(t.udp_stream_secs, d.udp_stream),
            icmp: secs(t.icmp_secs, d.icmp),
        },
        None => d,
    }
}

/// Default lease time when a network does not say (a day, as dnsmasq's default is an hour and
/// CloudStack's VR a day).
pub const DEFAULT_LEASE_SECS: u32 = 86_400;

/// What the account's DHCP and DNS servers are to serve (the servers are made from it at
/// start, and reconfigured with it on a reload).
#[derive(Debug, Clone)]
pub struct ServiceSpec {
    /// DHCP settings by network slot (`None`: not served), and the reservations; `None` when
    /// no network is served.
    pub dhcp: Option<(Vec<Option<crate::dhcp::DhcpNet>>, Vec<crate::dhcp::Reservation>)>,
    /// Whether each network slot is served by DHCP.
    pub served: Vec<bool>,
    pub dns: Option<crate::dns::DnsConfig>,
}

impl ServiceSpec {
    /// The servers, new.
    pub fn servers(&self) -> (Option<crate::dhcp::DhcpServer>, Vec<bool>, Option<crate::dns::DnsServer>) {
        let dhcp = self.dhcp.clone().map(|(n, r)| crate::dhcp::DhcpServer::new(n, r));
        (dhcp, self.served.clone(), self.dns.clone().map(crate::dns::DnsServer::new))
    }
}

/// The DHCP and DNS servers for the account, and which networks DHCP serves. DHCP serves a
/// network that has a gateway and either a `dhcp_range` or reservations (ports with `mac` and
/// `ip`); DNS runs when any network has a gateway and the account has a `[dns]` section or a
/// network `domain`.
pub fn services(c: &Config, ids: &Numbering) -> ServiceSpec {
    use crate::dhcp::{DhcpNet, Reservation};
    let routed: Vec<&crate::config::schema::Network> = c.networks.iter().filter(|n| n.gateway.is_some()).collect();
    let reservations: Vec<Reservation> = c
        .ports
        .iter()
        .filter_map(|p| {
            let net = ids.net(&p.network)?.0 as usize;
            Some(Reservation { net, mac: p.mac?, ip: p.ip?, hostname: p.hostname.clone() })
        })
        .collect();
    let mut served = vec![false; ids.nets.len()];
    let nets: Vec<Option<DhcpNet>> = ids
        .nets
        .iter()
        .enumerate()
        .map(|(i, (name, _))| {
            let n = name.as_deref().and_then(|name| c.networks.iter().find(|n| n.name == name))?;
            let gateway = n.gateway?;
            if n.dhcp_range.is_none() && !reservations.iter().any(|r| r.net == i) {
                return None;
            }
            served[i] = true;
            // More than one network: classless routes (RFC 3442), the default route included,
            // since a client that takes option 121 ignores option 3.
            let routes = if routed.len() > 1 {
                let mut r: Vec<(crate::config::types::Ipv4Net, std::net::Ipv4Addr)> =
                    routed.iter().filter(|o| o.name != n.name).map(|o| (o.cidr, gateway)).collect();
                r.push((crate::config::types::Ipv4Net { addr: std::net::Ipv4Addr::UNSPECIFIED, prefix: 0 }, gateway));
                r
            } else {
                Vec::new()
            };
            Some(DhcpNet {
                name: n.name.clone(),
                cidr: n.cidr,
                gateway,
                range: n.dhcp_range.map(|[a, b]| (a, b)),
                lease_secs: n.lease_secs.unwrap_or(DEFAULT_LEASE_SECS),
                mtu: net_mtu(c, n),
                domain: n.domain.clone(),
                routes,
            })
        })
        .collect();
    let dhcp = served.iter().any(|s| *s).then_some((nets, reservations));
    let want_dns = !routed.is_empty() && (c.dns.is_some() || c.networks.iter().any(|n| n.domain.is_some()));
    let dns = want_dns.then(|| crate::dns::DnsConfig {
        domains: c.networks.iter().filter_map(|n| n.domain.clone()).collect(),
        nets: c.networks.iter().map(|n| n.cidr).collect(),
        upstreams: c.dns.as_ref().map(|d| d.upstreams.clone()).unwrap_or_default(),
        cache_entries: c.dns.as_ref().and_then(|d| d.cache_entries).unwrap_or(10_000),
        upstream_timeout_ms: 2000,
    });
    ServiceSpec { dhcp, served, dns }
}

/// Every guest port's metadata (what cloud-init is told), keyed by its port slot.
pub fn metadata(c: &Config, ids: &Numbering) -> Vec<crate::router::meta::VmSpec> {
    let mut remote = crate::router::meta::REMOTE_BASE;
    c.ports
        .iter()
        .filter_map(|p| {
            // A remote VM has no datapath port: the metadata service numbers it on its own.
            let port = if p.kind == IfKind::Remote {
                remote += 1;
                PortId(remote - 1)
            } else {
                ids.port(&p.name)?
            };
            Some(crate::router::meta::VmSpec {
                port,
                via: p.via.as_deref().and_then(|v| ids.port(v)),
                net: ids.net(&p.network)?,
                mac: p.mac,
                fixed_ip: p.ip,
                vm: crate::metadata::Vm {
                    port: p.name.clone(),
                    network: p.network.clone(),
                    instance_id: p.instance_id.clone().unwrap_or_else(|| p.name.clone()),
                    hostname: p.hostname.clone(),
                    public_keys: p.public_keys.clone(),
                    user_data: p.user_data_bytes.clone(),
                    extra: p.metadata.clone(),
                    account: c.router.name.clone(),
                    ..Default::default()
                },
            })
        })
        .collect()
}
