//! Cross-checks over a deserialized config: references resolve, names and addresses are
//! unique, addresses lie in their networks, ranges are well-formed. Keys whose feature is not
//! built yet are reported as warnings, never silently ignored.

use super::locate::KeyPath;
use super::schema::*;
use crate::kp;
use crate::wire::vlan::VID_MAX;
use std::collections::HashMap;
use std::hash::Hash;
use std::net::Ipv4Addr;

const MAX_PORTS: usize = 4096;
const MAX_NETWORKS: usize = 4094;

#[derive(Default)]
pub struct Report {
    pub errors: Vec<(KeyPath, String)>,
    pub warnings: Vec<(KeyPath, String)>,
}

impl Report {
    fn err(&mut self, p: KeyPath, m: impl Into<String>) {
        self.errors.push((p, m.into()));
    }
}

/// Remembers the first place each value was seen and reports later duplicates.
struct Unique<K> {
    what: &'static str,
    seen: HashMap<K, KeyPath>,
}

impl<K: Hash + Eq + std::fmt::Display + Clone> Unique<K> {
    fn new(what: &'static str) -> Self {
        Unique { what, seen: HashMap::new() }
    }
    fn add(&mut self, r: &mut Report, k: K, p: KeyPath) {
        if let Some(first) = self.seen.get(&k) {
            r.err(p, format!("duplicate {} {} (first used at {first})", self.what, k));
        } else {
            self.seen.insert(k, p);
        }
    }
}

/// The interface of a port, uplink or public side: `ifname`, or for a `netdev` its
/// `match_mac` instead (exactly one). `at` is the item's key path.
fn check_iface(r: &mut Report, at: &KeyPath, kind: IfKind, ifname: &str, match_mac: Option<crate::wire::ethernet::MacAddr>, ifnames: &mut Unique<String>, matched: &mut Unique<crate::wire::ethernet::MacAddr>) {
    match match_mac {
        Some(m) => {
            if kind != IfKind::Netdev {
                r.err(at.clone().key("match_mac"), "match_mac finds an existing interface: it needs kind = \"netdev\" (a tap is created by its ifname)");
            }
            if !ifname.is_empty() {
                r.err(at.clone().key("ifname"), "give `ifname` or `match_mac`, not both");
            }
            if !m.is_unicast() {
                r.err(at.clone().key("match_mac"), format!("{m} is not a unicast MAC address"));
            }
            matched.add(r, m, at.clone().key("match_mac"));
        }
        None => {
            if ifname.is_empty() {
                r.err(at.clone().key("ifname"), "missing: give `ifname` (or, for a netdev, `match_mac`)");
            } else {
                if let Err(m) = valid_ifname(ifname) {
                    r.err(at.clone().key("ifname"), m);
                }
                ifnames.add(r, ifname.to_string(), at.clone().key("ifname"));
            }
        }
    }
}

/// A VM behind an uplink or VXLAN peer: known by its MAC, behind something that carries its
/// network; it has no interface, and nothing that needs a port of its own.
fn check_remote(r: &mut Report, c: &Config, at: &KeyPath, pt: &Port) {
    if !pt.ifname.is_empty() || pt.match_mac.is_some() {
        r.err(at.clone().key("ifname"), "a remote port has no interface of its own (it is `via` an uplink)");
    }
    if pt.mac.is_none() {
        r.err(at.clone().key("mac"), "a remote port is known by its MAC: give `mac`");
    }
    if !pt.security_groups.is_empty() {
        r.err(at.clone().key("security_groups"), "security groups need a port of the VM's own (not a remote port)");
    }
    let Some(via) = &pt.via else {
        r.err(at.clone().key("via"), "missing: the uplink (or vxlan-ADDRESS peer) the VM is behind");
        return;
    };
    let net = c.networks.iter().find(|n| n.name == pt.network);
    let carries = if let Some(u) = c.uplinks.iter().find(|u| &u.name == via) {
        u.networks.contains(&pt.network) || u.untagged.as_ref() == Some(&pt.network)
    } else if let Some(peer) = c.vxlan.iter().flat_map(|v| v.peer.iter()).find(|p| &crate::build::vtep_name(p.remote) == via) {
        net.and_then(|n| n.vni).is_some_and(|vni| peer.vnis.as_ref().is_none_or(|v| v.contains(&vni)))
    } else {
        r.err(at.clone().key("via"), format!("no [[uplink]] or VXLAN peer is named {via:?}"));
        return;
    };
    if !carries {
        r.err(at.clone().key("via"), format!("{via} does not carry network {:?}", pt.network));
    }
}

fn valid_ifname(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 15 {
        return Err(format!("interface name {s:?} must be 1 to 15 bytes"));
    }
    if s == "." || s == ".." || s.chars().any(|c| c == '/' || c == ':' || c.is_whitespace()) {
        return Err(format!("interface name {s:?} contains '/', ':' or whitespace"));
    }
    Ok(())
}

fn valid_name(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 63 {
        return Err(format!("name {s:?} must be 1 to 63 characters"));
    }
    if !s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.') {
        return Err(format!("name {s:?} may only contain letters, digits, '-', '_' and '.'"));
    }
    Ok(())
}

/// A port's or uplink's name: a name, and not one of those vrouter gives its own ports (the
/// public port, VXLAN peers), which share the ports' namespace (`ctl show ports`, slots).
fn valid_port_name(s: &str) -> Result<(), String> {
    valid_name(s)?;
    if s == crate::build::PUBLIC_PORT || s.starts_with("vxlan-") {
        return Err(format!("name {s:?} is reserved (\"public\" and \"vxlan-*\" name vrouter's own ports)"));
    }
    Ok(())
}

fn valid_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

pub fn check(c: &Config, r: &mut Report) {
    // [router]
    if let Err(m) = valid_name(&c.router.name) {
        r.err(kp!("router", "name"), m);
    }
    if let Some(mac) = c.router.mac {
        if !mac.is_unicast() {
            r.err(kp!("router", "mac"), format!("{mac} is not a unicast MAC address"));
        }
    }
    if c.router.mac_aging_secs == 0 || c.router.mac_aging_secs > 86_400 * 7 {
        r.err(kp!("router", "mac_aging_secs"), "must be between 1 and 604800 seconds");
    }
    if c.router.mac_table_size == 0 || c.router.mac_table_size > 1 << 20 {
        r.err(kp!("router", "mac_table_size"), "must be between 1 and 1048576");
    }
    if c.router.mac_limit_per_port == 0 || c.router.mac_limit_per_port > c.router.mac_table_size {
        r.err(kp!("router", "mac_limit_per_port"), "must be between 1 and mac_table_size");
    }
    if c.router.busy_poll_us > 100_000 {
        r.err(kp!("router", "busy_poll_us"), "must be at most 100000 (0.1 s)");
    }
    // A tap holds 500 frames (tun's queue): at 500k frames/s that is 1 ms.
    if c.router.coalesce_us > 1000 {
        r.err(kp!("router", "coalesce_us"), "must be at most 1000 (1 ms; a tap's queue holds about that much of a flood)");
    }
    // Every answer of the metadata service must fit its connection's send buffer.
    if c.router.user_data_max > 60 * 1024 {
        r.err(kp!("router", "user_data_max"), "at most 61440 bytes (one answer must fit the service's send buffer)");
    }
    if !(1..=100).contains(&c.router.health_full_percent) {
        r.err(kp!("router", "health_full_percent"), "must be 1 to 100");
    }

    // Port and network ids are 16-bit in the datapath; keep far below that.
    if c.ports.len() + c.uplinks.len() > MAX_PORTS {
        r.err(kp!("port"), format!("at most {MAX_PORTS} ports and uplinks per instance"));
    }
    if c.networks.len() > MAX_NETWORKS {
        r.err(kp!("network"), format!("at most {MAX_NETWORKS} networks per instance"));
    }

    // [[network]]
    let mut net_names = Unique::new("network name");
    let mut vlans = Unique::new("VLAN id");
    let mut vnis = Unique::new("VNI");
    let mut nets: HashMap<&str, &Network> = HashMap::new();
    let mut ips = Unique::<Ipv4Addr>::new("IP address");
    for (i, n) in c.networks.iter().enumerate() {
        let p = || kp!("network", i);
        if let Err(m) = valid_name(&n.name) {
            r.err(p().key("name"), m);
        }
        net_names.add(r, n.name.clone(), p().key("name"));
        nets.insert(&n.name, n);
        if n.cidr.prefix > 30 || n.cidr.prefix < 8 {
            r.err(p().key("cidr"), format!("{} must be between /8 and /30", n.cidr));
        }
        for (j, o) in c.networks.iter().enumerate().take(i) {
            if n.cidr.overlaps(&o.cidr) {
                r.err(p().key("cidr"), format!("{} overlaps network[{j}] {} ({})", n.cidr, o.name, o.cidr));
            }
        }
        let host = |ip: Ipv4Addr| ip != n.cidr.addr && ip != n.cidr.broadcast() && n.cidr.contains(ip);
        if let Some(g) = n.gateway {
            if !host(g) {
                r.err(p().key("gateway"), format!("{g} is not a host address of {}", n.cidr));
            } else {
                ips.add(r, g, p().key("gateway"));
            }
        }
        if let Some(v) = n.vlan {
            if v == 0 || v > VID_MAX {
                r.err(p().key("vlan"), format!("VLAN id {v} is outside 1..{VID_MAX}"));
            }
            vlans.add(r, v, p().key("vlan"));
        }
        if let Some(v) = n.vni {
            if v == 0 || v >= 1 << 24 {
                r.err(p().key("vni"), format!("VNI {v} is outside 1..16777215"));
            }
            vnis.add(r, v, p().key("vni"));
            if c.vxlan.is_none() {
                r.warnings.push((p().key("vni"), "has no effect without a [vxlan] section".into()));
            }
            if let (Some(m), Some(vx)) = (n.mtu, &c.vxlan) {
                let under = vx.mtu.unwrap_or(1500);
                if m as u32 + 50 > under as u32 {
                    r.err(p().key("mtu"), format!("{m} does not fit the VXLAN underlay: at most {} (vxlan.mtu {under} minus 50)", under.saturating_sub(50)));
                }
            }
        }
        if let Some(m) = n.mtu {
            if !(576..=9000).contains(&m) {
                r.err(p().key("mtu"), format!("MTU {m} is outside 576..9000"));
            }
        }
        if let Some(d) = &n.domain {
            let ok = d.len() <= 253 && d.trim_end_matches('.').split('.').all(valid_dns_label);
            if !ok {
                r.err(p().key("domain"), format!("{d:?} is not a valid DNS domain"));
            }
        }
        if n.dhcp_range.is_some() && n.gateway.is_none() {
            r.err(p().key("dhcp_range"), "a DHCP pool needs the network's `gateway` (the server's address)");
        }
        if let Some([a, b]) = n.dhcp_range {
            if !host(a) || !host(b) {
                r.err(p().key("dhcp_range"), format!("{a}-{b} must lie inside {}", n.cidr));
            } else if u32::from(a) > u32::from(b) {
                r.err(p().key("dhcp_range"), format!("range {a}-{b} runs backwards"));
            } else if let Some(g) = n.gateway.filter(|g| (u32::from(a)..=u32::from(b)).contains(&u32::from(*g))) {
                r.err(p().key("dhcp_range"), format!("range {a}-{b} contains the gateway {g}"));
            }
        }
        if let Some(l) = n.lease_secs {
            if l < 60 {
                r.err(p().key("lease_secs"), "a lease must last at least 60 seconds");
            }
        }
    }

    // [[port]], [[uplink]], [public]: interface names and MACs are unique across all of them.
    let mut ifnames = Unique::new("interface name");
    let mut port_names = Unique::new("port name");
    let mut macs = Unique::new("MAC address");
    let mut matched = Unique::new("match_mac");
    let sgs: HashMap<&str, usize> =
        c.security_group.iter().enumerate().map(|(i, g)| (g.name.as_str(), i)).collect();
    for (i, pt) in c.ports.iter().enumerate() {
        let p = || kp!("port", i);
        if let Err(m) = valid_port_name(&pt.name) {
            r.err(p().key("name"), m);
        }
        port_names.add(r, pt.name.clone(), p().key("name"));
        if pt.kind == IfKind::Remote {
            check_remote(r, c, &p(), pt);
        } else {
            check_iface(r, &p(), pt.kind, &pt.ifname, pt.match_mac, &mut ifnames, &mut matched);
            if pt.via.is_some() {
                r.err(p().key("via"), "only a kind = \"remote\" port is behind an uplink");
            }
        }
        let net = nets.get(pt.network.as_str());
        if net.is_none() {
            r.err(p().key("network"), format!("no [[network]] is named {:?}", pt.network));
        }
        if let Some(mac) = pt.mac {
            if !mac.is_unicast() {
                r.err(p().key("mac"), format!("{mac} is not a unicast MAC address"));
            }
            if Some(mac) == c.router.mac {
                r.err(p().key("mac"), format!("{mac} is the router's own MAC"));
            }
            macs.add(r, mac, p().key("mac"));
        } else if pt.port_security {
            r.err(p().key("mac"), "port_security = true needs the guest's `mac` (or set port_security = false)");
        }
        if pt.ip.is_some() && pt.mac.is_none() {
            r.warnings.push((p().key("ip"), "without `mac` the address is neither reserved by DHCP nor enforced".into()));
        }
        if let Some(ip) = pt.ip {
            if let Some(n) = net {
                if !n.cidr.contains(ip) || ip == n.cidr.addr || ip == n.cidr.broadcast() {
                    r.err(p().key("ip"), format!("{ip} is not a host address of network {} ({})", n.name, n.cidr));
                }
            }
            ips.add(r, ip, p().key("ip"));
        }
        if pt.allowed_addresses.len() > crate::switch::Allowed::MAX {
            r.err(p().key("allowed_addresses"), format!("at most {} extra addresses per port", crate::switch::Allowed::MAX));
        }
        for (j, a) in pt.allowed_addresses.iter().enumerate() {
            if let Some(n) = net {
                if !n.cidr.contains(*a) || *a == n.cidr.addr || *a == n.cidr.broadcast() || n.gateway == Some(*a) {
                    r.err(p().key("allowed_addresses").idx(j), format!("{a} is not a guest address of network {} ({})", n.name, n.cidr));
                }
            }
        }
        if !pt.allowed_addresses.is_empty() && !pt.port_security {
            r.warnings.push((p().key("allowed_addresses"), "has no effect without port_security (every address is allowed)".into()));
        }
        if let Some(h) = &pt.hostname {
            if !valid_dns_label(h) {
                r.err(p().key("hostname"), format!("{h:?} is not a valid DNS label"));
            }
        }
        if pt.user_data.is_some() && pt.user_data_file.is_some() {
            r.err(p().key("user_data_file"), "give `user_data` or `user_data_file`, not both");
        }
        if let Some(u) = &pt.user_data {
            if u.len() > c.router.user_data_max {
                r.err(p().key("user_data"), format!("{} bytes is over [router] user_data_max ({})", u.len(), c.router.user_data_max));
            }
        }
        if let Some(id) = &pt.instance_id {
            if id.is_empty() || id.len() > 128 || id.chars().any(|ch| ch.is_whitespace() || ch.is_control()) {
                r.err(p().key("instance_id"), "must be 1 to 128 characters without spaces");
            }
        }
        for (j, k) in pt.public_keys.iter().enumerate() {
            if k.trim().is_empty() || k.contains(['\n', '\r']) || k.len() > 16 * 1024 {
                r.err(p().key("public_keys").idx(j), "must be one non-empty line (an OpenSSH public key)");
            }
        }
        if pt.public_keys.iter().map(String::len).sum::<usize>() > 32 * 1024 {
            r.err(p().key("public_keys"), "at most 32 KiB of keys in all");
        }
        if pt.metadata.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>() > 16 * 1024 {
            r.err(p().key("metadata"), "at most 16 KiB of metadata in all");
        }
        for (k, v) in &pt.metadata {
            if k.is_empty() || !k.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_') {
                r.err(p().key("metadata").key(k), "metadata keys are letters, digits, - and _");
            }
            if v.len() > 4096 || v.contains(['\n', '\r']) {
                r.err(p().key("metadata").key(k), "must be one line of at most 4096 bytes");
            }
        }
        for (j, g) in pt.security_groups.iter().enumerate() {
            if !sgs.contains_key(g.as_str()) {
                r.err(p().key("security_groups").idx(j), format!("no [[security_group]] is named {g:?}"));
            }
        }
    }
    for (i, u) in c.uplinks.iter().enumerate() {
        let p = || kp!("uplink", i);
        if let Err(m) = valid_port_name(&u.name) {
            r.err(p().key("name"), m);
        }
        port_names.add(r, u.name.clone(), p().key("name"));
        check_iface(r, &p(), u.kind, &u.ifname, u.match_mac, &mut ifnames, &mut matched);
        if u.networks.is_empty() && u.untagged.is_none() {
            r.err(p().key("networks"), "an uplink must carry at least one network (tagged in `networks`, or `untagged`)");
        }
        let mut carried = Unique::new("network");
        if let Some(name) = &u.untagged {
            if !nets.contains_key(name.as_str()) {
                r.err(p().key("untagged"), format!("no [[network]] is named {name:?}"));
            }
            carried.add(r, name.clone(), p().key("untagged"));
        }
        for (j, name) in u.networks.iter().enumerate() {
            carried.add(r, name.clone(), p().key("networks").idx(j));
            match nets.get(name.as_str()) {
                None => r.err(p().key("networks").idx(j), format!("no [[network]] is named {name:?}")),
                Some(n) if n.vlan.is_none() => r.err(
                    p().key("networks").idx(j),
                    format!("network {name:?} has no `vlan`, so a trunk cannot carry it"),
                ),
                Some(_) => {}
            }
        }
    }

    // [vxlan]
    if let Some(v) = &c.vxlan {
        if v.port == Some(0) {
            r.err(kp!("vxlan", "port"), "UDP port 0 is not usable");
        }
        if v.mtu.is_some_and(|m| !(626..=9216).contains(&m)) {
            r.err(kp!("vxlan", "mtu"), "the underlay MTU must be 626..9216 (the overlay gets 50 bytes less)");
        }
        if v.ttl == Some(0) {
            r.err(kp!("vxlan", "ttl"), "TTL 0 would never leave this host");
        }
        if v.peer.is_empty() {
            r.warnings.push((kp!("vxlan"), "no [[vxlan.peer]]: VXLAN networks stay on this host".into()));
        }
        let mut remotes = Unique::new("VXLAN peer");
        for (i, peer) in v.peer.iter().enumerate() {
            remotes.add(r, peer.remote, kp!("vxlan", "peer", i, "remote"));
            if peer.remote == v.local {
                r.err(kp!("vxlan", "peer", i, "remote"), "a peer cannot be the local address");
            }
            for (j, vni) in peer.vnis.iter().flatten().enumerate() {
                if !vnis.seen.contains_key(vni) {
                    r.err(kp!("vxlan", "peer", i, "vnis", j), format!("no [[network]] has vni {vni}"));
                }
            }
        }
    }

    // [public] and the rules that name public IPs.
    let mut public_ips: Vec<Ipv4Addr> = Vec::new();
    if let Some(pb) = &c.public {
        check_iface(r, &kp!("public"), pb.kind, &pb.ifname, pb.match_mac, &mut ifnames, &mut matched);
        if pb.ips.is_empty() {
            r.err(kp!("public", "ips"), "at least one public address is needed");
        }
        let mut uniq = Unique::new("public IP");
        for (i, a) in pb.ips.iter().enumerate() {
            uniq.add(r, a.addr, kp!("public", "ips", i));
            if c.networks.iter().any(|n| n.cidr.contains(a.addr)) {
                r.err(kp!("public", "ips", i), format!("{} lies inside a guest network", a.addr));
            }
            public_ips.push(a.addr);
        }
        if !pb.ips.iter().any(|a| a.network().contains(pb.gateway)) {
            r.err(kp!("public", "gateway"), format!("{} is not on any public subnet", pb.gateway));
        }
        if let Some(s) = pb.source_nat_ip {
            if !public_ips.contains(&s) {
                r.err(kp!("public", "source_nat_ip"), format!("{s} is not one of public.ips"));
            }
        }
        if let Some(m) = pb.mtu {
            if !(576..=9000).contains(&m) {
                r.err(kp!("public", "mtu"), format!("MTU {m} is outside 576..9000"));
            }
        }
        if pb.ips.iter().any(|a| a.addr == pb.gateway) {
            r.err(kp!("public", "gateway"), format!("{} is one of public.ips", pb.gateway));
        }
    }
    let in_guest_net = |ip: Ipv4Addr| c.networks.iter().any(|n| n.cidr.contains(ip));
    // NAT targets are reached by routing: their network needs a gateway.
    let routed = |r: &mut Report, p: KeyPath, ip: Ipv4Addr| {
        if let Some(n) = c.networks.iter().find(|n| n.cidr.contains(ip)) {
            if n.gateway.is_none() {
                r.err(p, format!("{ip} is in network {:?}, which has no gateway to route through", n.name));
            }
        }
    };
    let check_public = |r: &mut Report, p: KeyPath, ip: Ipv4Addr| {
        if c.public.is_none() {
            r.err(p, "needs a [public] section");
        } else if !public_ips.contains(&ip) {
            r.err(p, format!("{ip} is not one of public.ips"));
        }
    };
    let mut snat_public = Unique::new("static NAT public IP");
    let mut snat_private = Unique::new("static NAT private IP");
    for (i, s) in c.static_nat.iter().enumerate() {
        check_public(r, kp!("static_nat", i, "public_ip"), s.public_ip);
        snat_public.add(r, s.public_ip, kp!("static_nat", i, "public_ip"));
        snat_private.add(r, s.private_ip, kp!("static_nat", i, "private_ip"));
        if !in_guest_net(s.private_ip) {
            r.err(kp!("static_nat", i, "private_ip"), format!("{} is in no guest network", s.private_ip));
        }
        routed(r, kp!("static_nat", i, "private_ip"), s.private_ip);
        if c.public.as_ref().and_then(|p| p.source_nat_ip.or(p.ips.first().map(|a| a.addr))) == Some(s.public_ip) {
            r.err(kp!("static_nat", i, "public_ip"), "the source NAT address cannot also be a static NAT");
        }
    }
    for (i, f) in c.port_forward.iter().enumerate() {
        check_public(r, kp!("port_forward", i, "public_ip"), f.public_ip);
        if !in_guest_net(f.private_ip) {
            r.err(kp!("port_forward", i, "private_ip"), format!("{} is in no guest network", f.private_ip));
        }
        routed(r, kp!("port_forward", i, "private_ip"), f.private_ip);
        if f.private_port.count() != 1 && f.private_port.count() != f.public_port.count() {
            r.err(
                kp!("port_forward", i, "private_port"),
                format!("range {} must be one port or as long as public_port {}", f.private_port, f.public_port),
            );
        }
    }
    // A connection's backend is a 16-bit load balancer and backend index on its flow.
    if c.load_balancer.len() > u16::MAX as usize {
        r.err(kp!("load_balancer"), format!("at most {} load balancers", u16::MAX));
    }
    let mut lb_names = Unique::new("load balancer name");
    let mut lb_vips = Unique::new("load balancer address, protocol and port");
    for (i, lb) in c.load_balancer.iter().enumerate() {
        lb_names.add(r, lb.name.clone(), kp!("load_balancer", i, "name"));
        lb_vips.add(r, format!("{}:{} ({:?})", lb.public_ip, lb.port, lb.protocol).to_lowercase(), kp!("load_balancer", i, "port"));
        for f in &c.port_forward {
            if f.public_ip == lb.public_ip && f.protocol == lb.protocol && (f.public_port.lo..=f.public_port.hi).contains(&lb.port) {
                r.err(kp!("load_balancer", i, "port"), format!("{}:{} is already a [[port_forward]]", lb.public_ip, lb.port));
            }
        }
        check_public(r, kp!("load_balancer", i, "public_ip"), lb.public_ip);
        if lb.port == 0 {
            r.err(kp!("load_balancer", i, "port"), "port 0 is not usable");
        }
        if lb.backends.is_empty() {
            r.err(kp!("load_balancer", i, "backends"), "a load balancer needs at least one backend");
        }
        for (j, b) in lb.backends.iter().enumerate() {
            if !in_guest_net(b.ip) {
                r.err(kp!("load_balancer", i, "backends", j, "ip"), format!("{} is in no guest network", b.ip));
            }
            if b.port == 0 {
                r.err(kp!("load_balancer", i, "backends", j, "port"), "port 0 is not usable");
            }
            if b.weight == Some(0) || b.weight.is_some_and(|w| w > 256) {
                r.err(kp!("load_balancer", i, "backends", j, "weight"), "weight must be 1..256");
            }
        }
        if let Some(h) = &lb.health_check {
            let hp = || kp!("load_balancer", i, "health_check");
            if h.interval_ms.is_some_and(|v| !(100..=3_600_000).contains(&v)) {
                r.err(hp().key("interval_ms"), "must be 100..3600000 ms");
            }
            if h.timeout_ms.is_some_and(|t| t == 0 || t > h.interval_ms.unwrap_or(2000)) {
                r.err(hp().key("timeout_ms"), "must be at least 1 ms and no longer than interval_ms");
            }
            if h.rise == Some(0) || h.fall == Some(0) {
                r.err(hp(), "rise and fall must be at least 1");
            }
            use crate::config::schema::CheckKind;
            if h.kind != CheckKind::Http && (h.path.is_some() || h.expect.is_some()) {
                r.err(hp(), "path and expect only apply to kind = \"http\"");
            }
            if let Some(path) = &h.path {
                if !path.starts_with('/') || path.len() > 1024 || path.bytes().any(|b| b <= b' ' || b == 0x7f) {
                    r.err(hp().key("path"), "must start with / and hold no spaces or control characters (at most 1024 bytes)");
                }
            }
            if h.expect.is_some_and(|e| !(100..=599).contains(&e)) {
                r.err(hp().key("expect"), "must be an HTTP status, 100..599");
            }
            if h.kind != CheckKind::None {
                for (j, b) in lb.backends.iter().enumerate() {
                    if !c.networks.iter().any(|n| n.cidr.contains(b.ip) && n.gateway.is_some()) {
                        r.err(kp!("load_balancer", i, "backends", j, "ip"), "health checks leave from the backend network's gateway: give that network a gateway");
                    }
                }
            }
        }
        if lb.backends.len() > 1024 {
            r.err(kp!("load_balancer", i, "backends"), "at most 1024 backends");
        }
    }
    for (i, f) in c.firewall.iter().enumerate() {
        check_public(r, kp!("firewall", i, "public_ip"), f.public_ip);
        if f.ports.is_some() && !f.protocol.has_ports() {
            r.err(kp!("firewall", i, "ports"), "ports only apply to tcp or udp");
        }
        if f.sources.is_empty() {
            r.err(kp!("firewall", i, "sources"), "list at least one source CIDR (0.0.0.0/0 for any)");
        }
    }
    for (i, e) in c.egress.iter().enumerate() {
        if !nets.contains_key(e.network.as_str()) {
            r.err(kp!("egress", i, "network"), format!("no [[network]] is named {:?}", e.network));
        }
        if e.ports.is_some() && !e.protocol.has_ports() {
            r.err(kp!("egress", i, "ports"), "ports only apply to tcp or udp");
        }
        if e.destinations.is_empty() {
            r.err(kp!("egress", i, "destinations"), "list at least one destination CIDR");
        }
    }
    let mut sg_names = Unique::new("security group name");
    for (i, g) in c.security_group.iter().enumerate() {
        if let Err(m) = valid_name(&g.name) {
            r.err(kp!("security_group", i, "name"), m);
        }
        sg_names.add(r, g.name.clone(), kp!("security_group", i, "name"));
        for (j, rule) in g.rules.iter().enumerate() {
            let p = || kp!("security_group", i, "rules", j);
            if rule.ports.is_some() && !rule.protocol.has_ports() {
                r.err(p().key("ports"), "ports only apply to tcp or udp");
            }
            match (&rule.cidr, &rule.remote_group) {
                (Some(_), Some(_)) => r.err(p(), "give either cidr or remote_group, not both"),
                (None, None) => r.err(p(), "give cidr or remote_group"),
                (None, Some(rg)) if !sgs.contains_key(rg.as_str()) => {
                    r.err(p().key("remote_group"), format!("no [[security_group]] is named {rg:?}"))
                }
                _ => {}
            }
        }
    }
    if let Some(ct) = &c.conntrack {
        if ct.max_flows.is_some_and(|m| m == 0 || m > 16_777_216) {
            r.err(kp!("conntrack", "max_flows"), "must be between 1 and 16777216");
        }
        let secs = [
            ("tcp_established_secs", ct.tcp_established_secs),
            ("tcp_syn_secs", ct.tcp_syn_secs),
            ("tcp_close_secs", ct.tcp_close_secs),
            ("udp_secs", ct.udp_secs),
            ("udp_stream_secs", ct.udp_stream_secs),
            ("icmp_secs", ct.icmp_secs),
        ];
        for (k, v) in secs {
            if v.is_some_and(|v| v == 0 || v > 30 * 86_400) {
                r.err(kp!("conntrack", k), "must be between 1 and 2592000 seconds (30 days)");
            }
        }
    }
    if let Some(d) = &c.dns {
        if d.cache_entries.is_some_and(|n| n > 1_000_000) {
            r.err(kp!("dns", "cache_entries"), "at most 1000000 entries");
        }
    }
    if let Some(wg) = &c.wireguard {
        check_wireguard(c, wg, &public_ips, r);
    }
    check_bgp(c, r);
}

/// An EVPN route target as written: `ASN:N` (N below 65536 when the AS needs 4 octets).
pub fn parse_route_target(s: &str) -> Result<crate::wire::bgp::RouteTarget, String> {
    let bad = || format!("{s:?} is not a route target (ASN:N, e.g. \"65000:5001\")");
    let (a, v) = s.split_once(':').ok_or_else(bad)?;
    let asn: u32 = a.trim().parse().map_err(|_| bad())?;
    let value: u32 = v.trim().parse().map_err(|_| bad())?;
    if asn > u16::MAX as u32 && value > u16::MAX as u32 {
        return Err(format!("{s:?}: with a 4-octet AS the number must be below 65536"));
    }
    Ok(crate::wire::bgp::RouteTarget { asn, value })
}

fn valid_asn(asn: u32) -> bool {
    asn != 0 && asn != crate::wire::bgp::AS_TRANS as u32 && asn != u32::MAX
}

fn check_bgp(c: &Config, r: &mut Report) {
    for (i, n) in c.networks.iter().enumerate() {
        for (j, rt) in n.route_targets.iter().flatten().enumerate() {
            if let Err(e) = parse_route_target(rt) {
                r.err(kp!("network", i, "route_targets", j), e);
            }
        }
        if n.route_targets.is_some() && (n.vni.is_none() || c.bgp.is_none()) {
            r.warnings.push((kp!("network", i, "route_targets"), "has no effect without a vni and a [bgp] section".into()));
        }
    }
    let Some(b) = &c.bgp else { return };
    let Some(vx) = &c.vxlan else {
        r.err(kp!("bgp"), "needs a [vxlan] section: EVPN routes name this host's VTEP ([vxlan] local)");
        return;
    };
    if !valid_asn(b.asn) {
        r.err(kp!("bgp", "asn"), format!("{} is not a usable AS number (0, 23456 and 4294967295 are reserved)", b.asn));
    }
    if b.router_id.is_some_and(|id| id.is_unspecified() || id.is_broadcast() || id.is_multicast()) {
        r.err(kp!("bgp", "router_id"), "must be a unicast IPv4 address");
    }
    if b.max_routes == Some(0) {
        r.err(kp!("bgp", "max_routes"), "must be at least 1");
    }
    if b.neighbor.is_empty() {
        r.warnings.push((kp!("bgp"), "no [[bgp.neighbor]]: nothing is advertised or learned".into()));
    }
    let mut seen = Unique::new("BGP neighbor");
    for (i, n) in b.neighbor.iter().enumerate() {
        seen.add(r, n.address, kp!("bgp", "neighbor", i, "address"));
        if n.address == vx.local || n.address.is_unspecified() || n.address.is_multicast() || n.address.is_broadcast() {
            r.err(kp!("bgp", "neighbor", i, "address"), format!("{} cannot be a neighbour (the local VTEP address, or not unicast)", n.address));
        }
        if !valid_asn(n.remote_as) {
            r.err(kp!("bgp", "neighbor", i, "remote_as"), format!("{} is not a usable AS number", n.remote_as));
        }
        let hold = n.hold_secs.unwrap_or(9);
        if hold == 1 || hold == 2 {
            r.err(kp!("bgp", "neighbor", i, "hold_secs"), "must be 0 (no hold timer) or at least 3 seconds");
        }
        let ka = n.keepalive_secs.unwrap_or(3);
        if ka == 0 || (hold > 0 && ka > hold) {
            r.err(kp!("bgp", "neighbor", i, "keepalive_secs"), format!("must be at least 1 and at most hold_secs ({hold})"));
        }
        if n.max_routes == Some(0) {
            r.err(kp!("bgp", "neighbor", i, "max_routes"), "must be at least 1");
        }
        if let Some(p) = &n.password {
            if p.is_empty() || p.len() > libc::TCP_MD5SIG_MAXKEYLEN {
                r.err(kp!("bgp", "neighbor", i, "password"), format!("must be 1..{} bytes (a TCP MD5 key)", libc::TCP_MD5SIG_MAXKEYLEN));
            }
        }
    }
    if c.vxlan.as_ref().is_some_and(|v| v.peer.is_empty()) {
        // The [vxlan] warning about no peers does not apply: peers come from BGP.
        let k = kp!("vxlan");
        r.warnings.retain(|(p, _)| *p != k);
    }
}

/// Peers are 16-bit in the datapath and each one's sessions take a 24-bit index range.
const MAX_WG_PEERS: usize = 4096;

fn check_wireguard(c: &Config, wg: &WireGuard, public_ips: &[Ipv4Addr], r: &mut Report) {
    let net_overlap = |n: &crate::config::types::Ipv4Net| c.networks.iter().find(|m| m.cidr.overlaps(n)).map(|m| m.name.clone());
    if c.public.is_none() {
        r.err(kp!("wireguard", "listen"), "needs a [public] section (the tunnel endpoint is a public address)");
    } else if !public_ips.contains(wg.listen.ip()) {
        r.err(kp!("wireguard", "listen"), format!("{} is not one of public.ips", wg.listen.ip()));
    }
    if wg.listen.port() == 0 {
        r.err(kp!("wireguard", "listen"), "needs a port (51820 is WireGuard's usual one)");
    }
    let clash = c.port_forward.iter().any(|f| f.protocol == L4Proto::Udp && f.public_ip == *wg.listen.ip() && (f.public_port.lo..=f.public_port.hi).contains(&wg.listen.port()))
        || c.load_balancer.iter().any(|l| l.protocol == L4Proto::Udp && l.public_ip == *wg.listen.ip() && l.port == wg.listen.port())
        || c.static_nat.iter().any(|s| s.public_ip == *wg.listen.ip());
    if clash {
        r.err(kp!("wireguard", "listen"), format!("{} is also a port forward's, load balancer's or static NAT's", wg.listen));
    }
    let addr_net = wg.address.network();
    if !(8..=30).contains(&wg.address.prefix) || wg.address.addr == addr_net.addr || wg.address.addr == addr_net.broadcast() {
        r.err(kp!("wireguard", "address"), format!("{} must be a host address of a /8../30 prefix", wg.address));
    }
    if let Some(n) = net_overlap(&addr_net) {
        r.err(kp!("wireguard", "address"), format!("{addr_net} overlaps network {n:?}"));
    }
    if public_ips.iter().any(|a| addr_net.contains(*a)) {
        r.err(kp!("wireguard", "address"), format!("{addr_net} holds a public address"));
    }
    let public_mtu = c.public.as_ref().and_then(|p| p.mtu).unwrap_or(1500);
    if let Some(m) = wg.mtu {
        if m < 576 || u32::from(m) + 60 > u32::from(public_mtu) {
            r.err(kp!("wireguard", "mtu"), format!("MTU {m} must be at least 576 and leave 60 bytes of the public MTU ({public_mtu})"));
        }
    }
    if wg.peer.len() > MAX_WG_PEERS {
        r.err(kp!("wireguard", "peer"), format!("at most {MAX_WG_PEERS} peers"));
    }
    let mut names = Unique::new("peer name");
    let mut keys = Unique::new("peer public key");
    let mut routes: Vec<(crate::config::types::Ipv4Net, usize)> = Vec::new();
    for (i, p) in wg.peer.iter().enumerate() {
        let at = || kp!("wireguard", "peer", i);
        if let Err(m) = valid_name(&p.name) {
            r.err(at().key("name"), m);
        }
        if c.networks.iter().any(|n| n.name == p.name) {
            r.err(at().key("name"), format!("{:?} is also a network's name (a peer is a network of its own to the router)", p.name));
        }
        names.add(r, p.name.clone(), at().key("name"));
        match crate::vpn::Key::from_base64(&p.public_key) {
            Ok(k) => keys.add(r, k.to_base64(), at().key("public_key")),
            Err(m) => r.err(at().key("public_key"), m),
        }
        if let Some(e) = p.endpoint {
            if e.port() == 0 || e.ip().is_unspecified() || e.ip().is_multicast() || e.ip().is_broadcast() {
                r.err(at().key("endpoint"), format!("{e} is not a unicast address and port"));
            }
        }
        if p.allowed_ips.is_empty() {
            r.err(at().key("allowed_ips"), "at least one prefix (a road warrior's /32 inside wireguard.address, or a site's networks)");
        }
        for (j, a) in p.allowed_ips.iter().enumerate() {
            if a.prefix < 8 {
                r.err(at().key("allowed_ips").idx(j), format!("{a} is wider than /8 (a default route through a peer is not supported)"));
            }
            if let Some(n) = net_overlap(a) {
                r.err(at().key("allowed_ips").idx(j), format!("{a} overlaps network {n:?}"));
            }
            if public_ips.iter().any(|ip| a.contains(*ip)) || a.contains(wg.address.addr) {
                r.err(at().key("allowed_ips").idx(j), format!("{a} holds one of the router's own addresses"));
            }
            if let Some((o, k)) = routes.iter().find(|(o, _)| o.overlaps(a)) {
                r.err(at().key("allowed_ips").idx(j), format!("{a} overlaps {o} of peer {:?}", wg.peer[*k].name));
            }
            routes.push((*a, i));
        }
        if let Some(nets) = &p.networks {
            for (j, n) in nets.iter().enumerate() {
                if !c.networks.iter().any(|m| &m.name == n) {
                    r.err(at().key("networks").idx(j), format!("no [[network]] is named {n:?}"));
                }
            }
        }
    }
}
