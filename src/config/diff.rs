//! What differs between two validated configs, by identity rather than position: ports,
//! networks, uplinks, load balancers and security groups by name, VXLAN peers by address,
//! static NATs by public IP, forwards by (protocol, public IP, public port), backends by
//! (load balancer, address, port), public IPs and DNS upstreams by value, firewall and egress
//! rules by their whole definition (a rule changed is one removed and one added). Moving an
//! item in the file changes nothing.
//!
//! Pure: `ctl diff -f FILE` shows it; live reconfiguration will apply it.

use super::schema::Config;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Debug;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Add,
    Change,
    Remove,
}

/// One difference: what kind of thing, which one, and how.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    pub kind: &'static str,
    pub id: String,
    pub op: Op,
}

/// Items of one kind, keyed by identity; the value's Debug text stands for its content
/// (deterministic for these plain structs).
fn keyed<T: Debug>(items: impl IntoIterator<Item = T>, key: impl Fn(&T) -> String) -> BTreeMap<String, String> {
    items.into_iter().map(|i| (key(&i), format!("{i:?}"))).collect()
}

fn compare(kind: &'static str, old: BTreeMap<String, String>, new: BTreeMap<String, String>, out: &mut Vec<Change>) {
    for (id, v) in &new {
        match old.get(id) {
            None => out.push(Change { kind, id: id.clone(), op: Op::Add }),
            Some(o) if o != v => out.push(Change { kind, id: id.clone(), op: Op::Change }),
            Some(_) => {}
        }
    }
    for id in old.keys().filter(|k| !new.contains_key(*k)) {
        out.push(Change { kind, id: id.clone(), op: Op::Remove });
    }
}

/// Every difference from `old` to `new`, in a stable order (kind, then identity).
pub fn diff(old: &Config, new: &Config) -> Vec<Change> {
    let mut out = Vec::new();
    // [router]: one entry per key that differs.
    let fields = |c: &Config| -> BTreeMap<String, String> {
        // Exhaustive: a key added to [router] must be added here too (or it would not diff).
        let super::schema::Router {
            name,
            mac,
            state_dir,
            control_socket,
            metrics_listen,
            mac_aging_secs,
            mac_table_size,
            mac_limit_per_port,
            busy_poll_us,
            coalesce_us,
            flow_cache,
            io_uring,
            health_full_percent,
            metadata,
            user_data_max,
        } = &c.router;
        [
            ("name", format!("{name:?}")),
            ("mac", format!("{mac:?}")),
            ("state_dir", format!("{state_dir:?}")),
            ("control_socket", format!("{control_socket:?}")),
            ("metrics_listen", format!("{metrics_listen:?}")),
            ("mac_aging_secs", format!("{mac_aging_secs:?}")),
            ("mac_table_size", format!("{mac_table_size:?}")),
            ("mac_limit_per_port", format!("{mac_limit_per_port:?}")),
            ("busy_poll_us", format!("{busy_poll_us:?}")),
            ("coalesce_us", format!("{coalesce_us:?}")),
            ("flow_cache", format!("{flow_cache:?}")),
            ("io_uring", format!("{io_uring:?}")),
            ("health_full_percent", format!("{health_full_percent:?}")),
            ("metadata", format!("{metadata:?}")),
            ("user_data_max", format!("{user_data_max:?}")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    };
    compare("router", fields(old), fields(new), &mut out);
    compare("network", keyed(&old.networks, |n| n.name.clone()), keyed(&new.networks, |n| n.name.clone()), &mut out);
    compare("port", keyed(&old.ports, |p| p.name.clone()), keyed(&new.ports, |p| p.name.clone()), &mut out);
    compare("uplink", keyed(&old.uplinks, |u| u.name.clone()), keyed(&new.uplinks, |u| u.name.clone()), &mut out);
    let vx = |c: &Config| c.vxlan.as_ref().map(|v| format!("{:?} {:?} {:?} {:?} {:?}", v.local, v.port, v.mtu, v.ttl, v.df));
    compare("vxlan", keyed(vx(old), |_| "vxlan".into()), keyed(vx(new), |_| "vxlan".into()), &mut out);
    let peers = |c: &Config| c.vxlan.iter().flat_map(|v| v.peer.clone()).collect::<Vec<_>>();
    compare("vxlan_peer", keyed(peers(old), |p| p.remote.to_string()), keyed(peers(new), |p| p.remote.to_string()), &mut out);
    let public = |c: &Config| c.public.as_ref().map(|p| format!("{:?} {} {:?} {} {:?} {:?}", p.kind, p.ifname, p.match_mac, p.gateway, p.source_nat_ip, p.mtu));
    compare("public", keyed(public(old), |_| "public".into()), keyed(public(new), |_| "public".into()), &mut out);
    let ips = |c: &Config| c.public.iter().flat_map(|p| p.ips.clone()).collect::<Vec<_>>();
    compare("public_ip", keyed(ips(old), |i| i.addr.to_string()), keyed(ips(new), |i| i.addr.to_string()), &mut out);
    compare("static_nat", keyed(&old.static_nat, |s| s.public_ip.to_string()), keyed(&new.static_nat, |s| s.public_ip.to_string()), &mut out);
    let fwd = |f: &&super::schema::PortForward| format!("{:?} {}:{}", f.protocol, f.public_ip, f.public_port).to_lowercase();
    compare("port_forward", keyed(&old.port_forward, fwd), keyed(&new.port_forward, fwd), &mut out);
    // A load balancer's own settings, then its backends one by one.
    let lbs = |c: &Config| c.load_balancer.iter().map(|l| (l.name.clone(), format!("{} {:?} {} {:?} {:?}", l.public_ip, l.protocol, l.port, l.algorithm, l.health_check))).collect::<BTreeMap<_, _>>();
    compare("load_balancer", lbs(old), lbs(new), &mut out);
    let backends = |c: &Config| {
        c.load_balancer.iter().flat_map(|l| l.backends.iter().map(move |b| (format!("{}/{}:{}", l.name, b.ip, b.port), format!("{:?}", b.weight)))).collect::<BTreeMap<_, _>>()
    };
    compare("backend", backends(old), backends(new), &mut out);
    compare("firewall", keyed(&old.firewall, |f| format!("{f:?}")), keyed(&new.firewall, |f| format!("{f:?}")), &mut out);
    compare("egress", keyed(&old.egress, |e| format!("{e:?}")), keyed(&new.egress, |e| format!("{e:?}")), &mut out);
    compare("security_group", keyed(&old.security_group, |g| g.name.clone()), keyed(&new.security_group, |g| g.name.clone()), &mut out);
    let ups = |c: &Config| c.dns.iter().flat_map(|d| d.upstreams.clone()).collect::<Vec<_>>();
    compare("dns_upstream", keyed(ups(old), |u| u.to_string()), keyed(ups(new), |u| u.to_string()), &mut out);
    let dns = |c: &Config| c.dns.as_ref().map(|d| format!("{:?}", d.cache_entries));
    compare("dns", keyed(dns(old), |_| "dns".into()), keyed(dns(new), |_| "dns".into()), &mut out);
    // Keys compare by value (Debug of a key prints nothing of it, so the loaded ones are
    // compared explicitly).
    let wg = |c: &Config| c.wireguard.as_ref().map(|w| format!("{} {:?} {} {:?} {:?}", w.listen, w.private_key_file, w.address, w.mtu, w.private_key.map(|k| k.public())));
    compare("wireguard", keyed(wg(old), |_| "wireguard".into()), keyed(wg(new), |_| "wireguard".into()), &mut out);
    let wgp = |c: &Config| {
        c.wireguard
            .iter()
            .flat_map(|w| w.peer.iter().map(|p| (p.name.clone(), format!("{p:?} {:?}", p.preshared_key.map(|k| k.public())))))
            .collect::<BTreeMap<_, _>>()
    };
    compare("wireguard_peer", wgp(old), wgp(new), &mut out);
    let bgp = |c: &Config| c.bgp.as_ref().map(|b| format!("{} {:?} {:?}", b.asn, b.router_id, b.max_routes));
    compare("bgp", keyed(bgp(old), |_| "bgp".into()), keyed(bgp(new), |_| "bgp".into()), &mut out);
    let nbrs = |c: &Config| c.bgp.iter().flat_map(|b| b.neighbor.clone()).collect::<Vec<_>>();
    compare("bgp_neighbor", keyed(nbrs(old), |n| n.address.to_string()), keyed(nbrs(new), |n| n.address.to_string()), &mut out);
    let ct = |c: &Config| c.conntrack.as_ref().map(|t| format!("{t:?}"));
    compare("conntrack", keyed(ct(old), |_| "conntrack".into()), keyed(ct(new), |_| "conntrack".into()), &mut out);
    out
}

/// Counts per kind and operation (`{"port": {"add": 1}}`), for replies and summaries.
pub fn counts(changes: &[Change]) -> BTreeMap<&'static str, BTreeMap<Op, usize>> {
    let mut m: BTreeMap<&'static str, BTreeMap<Op, usize>> = BTreeMap::new();
    for c in changes {
        *m.entry(c.kind).or_default().entry(c.op).or_default() += 1;
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const BASE: &str = r#"
[router]
name = "t"
[[network]]
name = "web"
cidr = "10.1.1.0/24"
gateway = "10.1.1.1"
[[network]]
name = "db"
cidr = "10.1.2.0/24"
gateway = "10.1.2.1"
[[port]]
name = "a"
network = "web"
kind = "tap"
ifname = "t-a"
mac = "52:54:00:00:00:01"
[[port]]
name = "b"
network = "db"
kind = "tap"
ifname = "t-b"
mac = "52:54:00:00:00:02"
[public]
kind = "tap"
ifname = "t-pub"
ips = ["203.0.113.10/24", "203.0.113.11/24"]
gateway = "203.0.113.1"
[[port_forward]]
public_ip = "203.0.113.10"
protocol = "tcp"
public_port = "2222"
private_ip = "10.1.1.5"
private_port = "22"
[[firewall]]
public_ip = "203.0.113.10"
protocol = "tcp"
ports = "2222"
sources = ["0.0.0.0/0"]
[dns]
upstreams = ["192.0.2.53:53"]
"#;

    fn parse(s: &str) -> Config {
        crate::config::parse(s, Path::new("t.toml")).map_err(|e| format!("{e:?}")).unwrap().config
    }

    #[test]
    fn by_identity_not_by_position() {
        let old = parse(BASE);
        assert!(diff(&old, &old).is_empty());
        // The two networks and the two ports swapped in the file: nothing changed.
        let swapped = BASE.replacen("[[network]]\nname = \"web\"\ncidr = \"10.1.1.0/24\"\ngateway = \"10.1.1.1\"\n", "", 1).replacen(
            "[[port]]\nname = \"a\"",
            "[[network]]\nname = \"web\"\ncidr = \"10.1.1.0/24\"\ngateway = \"10.1.1.1\"\n[[port]]\nname = \"a\"",
            1,
        );
        assert!(diff(&old, &parse(&swapped)).is_empty(), "{:?}", diff(&old, &parse(&swapped)));
        // Real changes, each named once.
        let new = BASE
            .replace("cidr = \"10.1.2.0/24\"\ngateway = \"10.1.2.1\"", "cidr = \"10.1.2.0/24\"\ngateway = \"10.1.2.1\"\nmtu = 1400")
            .replace("ips = [\"203.0.113.10/24\", \"203.0.113.11/24\"]", "ips = [\"203.0.113.10/24\", \"203.0.113.12/24\"]")
            .replace("private_ip = \"10.1.1.5\"", "private_ip = \"10.1.1.6\"")
            .replace("sources = [\"0.0.0.0/0\"]", "sources = [\"198.51.100.0/24\"]")
            .replace("upstreams = [\"192.0.2.53:53\"]", "upstreams = [\"192.0.2.53:53\", \"192.0.2.54:53\"]")
            + "[[port]]\nname = \"c\"\nnetwork = \"web\"\nkind = \"tap\"\nifname = \"t-c\"\nmac = \"52:54:00:00:00:03\"\n";
        let d = diff(&old, &parse(&new));
        let got: Vec<(&str, &str, Op)> = d.iter().map(|c| (c.kind, c.id.as_str(), c.op)).collect();
        assert_eq!(
            got,
            vec![
                ("network", "db", Op::Change),
                ("port", "c", Op::Add),
                ("public_ip", "203.0.113.12", Op::Add),
                ("public_ip", "203.0.113.11", Op::Remove),
                ("port_forward", "tcp 203.0.113.10:2222", Op::Change),
                ("firewall", got[5].1, Op::Add),
                ("firewall", got[6].1, Op::Remove),
                ("dns_upstream", "192.0.2.54:53", Op::Add),
            ]
        );
        let n = counts(&d);
        assert_eq!(n["public_ip"][&Op::Add], 1);
        assert_eq!(n["firewall"][&Op::Remove], 1);
        // A [router] key.
        let d = diff(&old, &parse(&BASE.replace("name = \"t\"", "name = \"t\"\nmac_aging_secs = 60\nmetrics_listen = \"127.0.0.1:9464\"")));
        let ids: Vec<&str> = d.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["mac_aging_secs", "metrics_listen"], "{d:?}");
    }

    #[test]
    fn bgp_neighbours_by_address() {
        let with = |n: &str| format!("{BASE}[vxlan]\nlocal = \"192.0.2.10\"\n[bgp]\nasn = 65000\n{n}");
        let one = "[[bgp.neighbor]]\naddress = \"192.0.2.1\"\nremote_as = 65000\n";
        let two = "[[bgp.neighbor]]\naddress = \"192.0.2.2\"\nremote_as = 65000\n";
        let old = parse(&with(one));
        let new = parse(&with(&format!("{two}{}", one.replace("remote_as = 65000", "remote_as = 65000\nhold_secs = 30"))));
        let got: Vec<(&str, String, Op)> = diff(&old, &new).into_iter().map(|c| (c.kind, c.id, c.op)).collect();
        assert_eq!(got, vec![("bgp_neighbor", "192.0.2.1".to_string(), Op::Change), ("bgp_neighbor", "192.0.2.2".to_string(), Op::Add)]);
        let got: Vec<(&str, Op)> = diff(&old, &parse(BASE)).into_iter().map(|c| (c.kind, c.op)).collect();
        assert!(got.contains(&("bgp", Op::Remove)) && got.contains(&("bgp_neighbor", Op::Remove)), "{got:?}");
    }
}
