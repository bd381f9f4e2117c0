//! The router's own services on guest networks: the DHCP server and the DNS server, fed by the
//! datapath and answering through the router's normal egress. Like the rest of the router this
//! is sans-IO: lease records to make durable and DNS queries for upstream servers wait in
//! queues ([`Router::take_persist`], [`Router::take_upstream`]) for the I/O edge, whose answers
//! come back as events ([`Router::dhcp_committed`], [`Router::dns_upstream`]).
//!
//! Invariants: DHCP and DNS answer only on guest networks (never the public side); a DHCP ACK
//! leaves only after the lease record it depends on was reported durable; server messages
//! (sport 67) from guests on a network vrouter serves are dropped (rogue DHCP).

use super::{Iface, Router};
use crate::dhcp::{self, DhcpServer};
use crate::dns::{self, DnsServer};
use crate::switch::stats::DropReason;
use crate::switch::NetId;
use crate::time::Instant;
use crate::wire::checksum;
use crate::wire::ethernet::{ethertype, MacAddr};
use crate::wire::ipv4::{self, proto};
use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};

/// DNS clients waiting for an answer, at most...
const DNS_CLIENTS: usize = 4096;
/// ... and from one guest address: a guest asking for many slow names cannot take the
/// resolver (nor the DNS core's `MAX_PENDING` upstream questions) from the others.
pub(super) const DNS_PER_SOURCE: u32 = 128;

/// Where a DNS answer goes back to.
#[derive(Clone, Copy)]
pub(super) enum DnsClient {
    /// A datagram from `ip:port` (at `mac`) to the router address `server`, with its DNS id.
    Udp { iface: Iface, mac: MacAddr, ip: Ipv4Addr, port: u16, server: Ipv4Addr, dns_id: u16 },
    /// A query on one of the router's TCP connections.
    Tcp { net: NetId, handle: smoltcp::iface::SocketHandle },
}

/// A UDP query in flight, as its client would retransmit it.
type UdpQuery = (Iface, Ipv4Addr, u16, u16);

/// The services' state inside the router.
pub struct Services {
    pub dhcp: Option<DhcpServer>,
    pub(super) dhcp_nets: Vec<bool>,
    pub dns: Option<DnsServer>,
    pub(super) dns_clients: HashMap<u64, DnsClient>,
    /// UDP queries waiting for an answer: a retransmission of one of them is absorbed (it
    /// gets the one answer) rather than queued again.
    udp_pending: HashSet<UdpQuery>,
    pub(super) next_client: u64,
    /// Lease log lines to make durable, with their sequence numbers.
    pub(super) persist: Vec<dhcp::LogLine>,
    /// DNS queries for upstream servers.
    pub(super) upstream: Vec<(SocketAddr, Vec<u8>)>,
    /// Unix time (seconds) at `Instant::ZERO`: leases live on the wall clock.
    pub(super) wall_base: u64,
    /// The host table last given to DNS (to skip redundant updates).
    pub(super) hosts_sig: u64,
    pub(super) tcp: super::tcp_dns::TcpDns,
    /// When lease expiry next runs (it walks the whole lease table, so once a second).
    next_expire: Instant,
    /// Keys the DNS server's query ids (handed over in `set_services`).
    dns_seed: crate::entropy::Seed,
    /// Why the lease log cannot be written (the writer says), if it cannot.
    store_error: Option<String>,
    /// UDP DNS clients waiting, by guest address.
    dns_by_src: HashMap<Ipv4Addr, u32>,
}

impl Services {
    pub(super) fn new(seed: crate::entropy::Seed) -> Self {
        let mut rng = crate::entropy::Csprng::new(seed);
        Services {
            dhcp: None,
            dhcp_nets: Vec::new(),
            dns: None,
            dns_clients: HashMap::new(),
            udp_pending: HashSet::new(),
            next_client: 0,
            persist: Vec::new(),
            upstream: Vec::new(),
            wall_base: 0,
            hosts_sig: 0,
            tcp: super::tcp_dns::TcpDns::new(rng.child()),
            next_expire: Instant::ZERO,
            dns_seed: rng.child(),
            store_error: None,
            dns_by_src: HashMap::new(),
        }
    }
}

impl Router {
    /// Sets the wall clock: unix seconds at the datapath clock's origin.
    pub fn set_wall_base(&mut self, unix_secs: u64) {
        self.svc.wall_base = unix_secs;
    }

    /// Unix seconds at `now`.
    pub fn wall_now(&self, now: Instant) -> u64 {
        self.wall(now)
    }

    fn wall(&self, now: Instant) -> u64 {
        self.svc.wall_base + now.millis() / 1000
    }

    /// Installs the DHCP and DNS servers (built from the config by `build::services`);
    /// `dhcp_nets[n]` says whether network `n` is served.
    pub fn set_services(&mut self, dhcp: Option<DhcpServer>, dhcp_nets: Vec<bool>, dns: Option<DnsServer>) {
        self.svc.dhcp = dhcp;
        self.svc.dhcp_nets = dhcp_nets;
        self.svc.dns = dns.map(|mut d| {
            d.reseed(self.svc.dns_seed);
            d
        });
        self.refresh_hosts();
    }

    /// Applies a reload's service settings (`same[n]`: slot n is still the network it was).
    /// Leases the new settings still allow stay, others are released (and logged as freed);
    /// the DNS cache and queries in flight stay.
    pub(super) fn reconfigure_services(&mut self, spec: crate::build::ServiceSpec, same: &[bool]) {
        let same_net = |i: usize| same.get(i).copied().unwrap_or(false);
        let mut out = Vec::new();
        match (self.svc.dhcp.as_mut(), spec.dhcp) {
            (Some(d), Some((nets, res))) => d.reconfigure(nets, res, same_net, &mut out),
            (Some(d), None) => d.reconfigure(Vec::new(), Vec::new(), |_| false, &mut out),
            (None, Some((nets, res))) => self.svc.dhcp = Some(DhcpServer::new(nets, res)),
            (None, None) => {}
        }
        // Log lines are made while the server still knows the networks' names.
        self.run_dhcp(out);
        if spec.served.iter().all(|s| !s) {
            self.svc.dhcp = None;
        }
        self.svc.dhcp_nets = spec.served;
        match (self.svc.dns.as_mut(), spec.dns) {
            (Some(d), Some(c)) => d.reconfigure(c),
            (None, Some(c)) => {
                let mut d = DnsServer::new(c);
                d.reseed(self.svc.dns_seed);
                self.svc.dns = Some(d);
            }
            (Some(_), None) => {
                self.svc.dns = None;
                self.svc.dns_clients.clear();
                self.svc.udp_pending.clear();
                self.svc.dns_by_src.clear();
            }
            (None, None) => {}
        }
        self.svc.hosts_sig = 0;
        self.refresh_hosts();
    }

    /// Whether vrouter serves DHCP on network `n`.
    pub fn serves_dhcp(&self, n: NetId) -> bool {
        self.svc.dhcp.is_some() && self.svc.dhcp_nets.get(n.0 as usize).copied().unwrap_or(false)
    }

    /// Whether vrouter answers DNS on its gateway addresses.
    pub fn serves_dns(&self) -> bool {
        self.svc.dns.is_some()
    }

    /// The address port security allows for a guest without a fixed address: its lease.
    pub fn lease_of(&self, n: NetId, mac: MacAddr) -> Option<Ipv4Addr> {
        self.svc.dhcp.as_ref()?.lease_of(n.0 as usize, mac)
    }

    /// Who DHCP currently leases `ip` to: its network and the client's MAC.
    pub fn lease_holder(&self, ip: Ipv4Addr) -> Option<(NetId, MacAddr)> {
        let n = self.net_of(ip)?;
        Some((n, self.svc.dhcp.as_ref()?.holder_of(n.0 as usize, ip)?))
    }

    /// Runs `f` on the DHCP server and carries out what it asks for.
    fn with_dhcp<R>(&mut self, f: impl FnOnce(&mut DhcpServer, &mut Vec<dhcp::Action>) -> R) -> Option<R> {
        let d = self.svc.dhcp.as_mut()?;
        let mut out = Vec::new();
        let r = f(d, &mut out);
        self.run_dhcp(out);
        Some(r)
    }

    /// Runs `f` on the DNS server and carries out what it asks for; also whether an answer was
    /// written on a TCP connection (which then needs a turn of the TCP stack).
    fn with_dns<R>(&mut self, f: impl FnOnce(&mut DnsServer, &mut Vec<dns::Action>) -> R) -> Option<(R, bool)> {
        let d = self.svc.dns.as_mut()?;
        let mut out = Vec::new();
        let r = f(d, &mut out);
        let tcp = self.run_dns(out);
        Some((r, tcp))
    }

    /// Replays the lease log at start (lines as read from disk).
    pub fn restore_leases(&mut self, now: Instant, lines: &[String]) -> usize {
        let wall = self.wall(now);
        let Some(d) = self.svc.dhcp.as_mut() else { return 0 };
        let recs: Vec<dhcp::LeaseRecord> = lines.iter().filter_map(|l| d.decode(l)).collect();
        let n = recs.len();
        d.restore(recs, wall);
        self.refresh_hosts();
        n
    }

    /// The live lease records, for compacting the log at start: bound leases, and declined
    /// addresses still in quarantine.
    pub fn lease_records(&self) -> Vec<dhcp::LogLine> {
        let Some(d) = self.svc.dhcp.as_ref() else { return Vec::new() };
        d.leases()
            .into_iter()
            .filter_map(|l| match l.state {
                dhcp::LeaseState::Bound => Some(dhcp::LeaseRecord::Bind(l)),
                dhcp::LeaseState::Declined => Some(dhcp::LeaseRecord::Decline { net: l.net, ip: l.ip, until: l.expires }),
                _ => None,
            })
            .map(|r| d.log_line(0, &r))
            .collect()
    }

    /// A DHCP client message (UDP to port 67) from a guest on `net`. `ip` is the IPv4 packet.
    pub fn dhcp_in(&mut self, now: Instant, net: NetId, port: u16, src_mac: MacAddr, ip: &[u8]) -> Result<(), DropReason> {
        let wall = self.wall(now);
        let Ok(p) = ipv4::Ipv4Packet::new_checked(ip) else { return Err(DropReason::BadIp) };
        let Some(payload) = p.payload().get(8..) else { return Err(DropReason::BadL4) };
        let r = self.with_dhcp(|d, out| d.handle(wall, now.millis(), net.0 as usize, port, src_mac, payload, out)).ok_or(DropReason::NoL3)?;
        r.map_err(|e| match e {
            dhcp::Ignored::ServerMessage => DropReason::RogueDhcp,
            dhcp::Ignored::RateLimited => DropReason::DhcpRateLimited,
            _ => DropReason::DhcpIgnored,
        })
    }

    /// Lease records up to `seq` are on disk: the ACKs they held go out.
    pub fn dhcp_committed(&mut self, first: u64, last: u64) {
        self.with_dhcp(|d, out| d.committed(first, last, out));
    }

    /// The lease log's writer failed (`Some(why)`) or writes again (`None`): while it fails,
    /// nothing new is acknowledged.
    pub fn set_lease_store_error(&mut self, err: Option<String>) {
        if let Some(d) = self.svc.dhcp.as_mut() {
            d.set_store_ok(err.is_none());
        }
        self.svc.store_error = err;
    }

    /// Why the lease log cannot be written, if it cannot; and the ACKs waiting for the disk.
    pub fn lease_store(&self) -> (Option<&str>, usize) {
        (self.svc.store_error.as_deref(), self.svc.dhcp.as_ref().map_or(0, |d| d.held()))
    }

    fn run_dhcp(&mut self, out: Vec<dhcp::Action>) {
        let mut changed = false;
        for a in out {
            match a {
                dhcp::Action::Send { net, dst_ip, dst_mac, payload } => {
                    let n = NetId(net as u16);
                    let Some(gw) = self.gateway(n) else { continue };
                    self.emit_udp(Iface::Net(n), dst_mac, gw, dst_ip, 67, 68, &payload);
                }
                dhcp::Action::Persist { seq, record } => {
                    let Some(d) = self.svc.dhcp.as_ref() else { continue };
                    self.svc.persist.push(d.log_line(seq, &record));
                    changed = true;
                }
            }
        }
        if changed {
            self.refresh_hosts();
        }
    }

    /// Gives DNS the current host table (reservations and leases with a hostname).
    fn refresh_hosts(&mut self) {
        let (Some(d), Some(dns)) = (self.svc.dhcp.as_ref(), self.svc.dns.as_mut()) else { return };
        let hosts: Vec<(String, Ipv4Addr)> = d
            .hosts()
            .into_iter()
            .filter_map(|(net, name, ip)| {
                let domain = self.cfg.nets.get(net)?.domain.as_ref()?;
                Some((format!("{name}.{}", domain.trim_end_matches('.')), ip))
            })
            .collect();
        let sig = hosts.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, (n, ip)| {
            n.bytes().chain(ip.octets()).fold(h, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3))
        });
        if sig != self.svc.hosts_sig {
            self.svc.hosts_sig = sig;
            dns.set_hosts(hosts);
        }
    }

    /// DHCP counters; `None` without DHCP service.
    pub fn dhcp_counters(&self) -> Option<dhcp::DhcpCounters> {
        self.svc.dhcp.as_ref().map(|d| d.counters())
    }

    /// IPv4 addresses known for guests' MACs on their networks: bound DHCP leases and
    /// resolved neighbours (EVPN advertises them with the MAC).
    pub fn guest_addresses(&self) -> Vec<(NetId, MacAddr, Ipv4Addr)> {
        let mut v: Vec<(NetId, MacAddr, Ipv4Addr)> = self
            .svc
            .dhcp
            .as_ref()
            .map(|d| d.leases().into_iter().filter(|l| l.state == dhcp::LeaseState::Bound).map(|l| (NetId(l.net as u16), l.mac, l.ip)).collect())
            .unwrap_or_default();
        v.extend(self.neigh.resolved().filter_map(|(i, ip, mac)| match i {
            super::Iface::Net(n) => Some((n, mac, ip)),
            _ => None,
        }));
        v.sort();
        v.dedup();
        v
    }

    /// Lease use per served network.
    pub fn dhcp_pools(&self) -> Vec<dhcp::PoolUsage> {
        self.svc.dhcp.as_ref().map(|d| d.pool_usage()).unwrap_or_default()
    }

    /// Whether any network is served by DHCP (so there is a lease log).
    pub fn serves_any_dhcp(&self) -> bool {
        self.svc.dhcp.is_some()
    }

    /// DNS forwarding's health: whether upstreams are configured, when one last answered and
    /// when an attempt last timed out. `None` without DNS service.
    pub fn dns_upstream_health(&self) -> Option<(bool, Option<Instant>, Option<Instant>)> {
        let d = self.svc.dns.as_ref()?;
        let (a, t) = d.upstream_health();
        Some((d.has_upstreams(), a, t))
    }

    /// Leases and DHCP counters for `ctl show leases`; `None` without DHCP service.
    pub fn leases(&self) -> Option<(Vec<dhcp::Lease>, dhcp::DhcpCounters)> {
        let d = self.svc.dhcp.as_ref()?;
        Some((d.leases(), d.counters()))
    }

    /// DNS counters for `ctl show stats`.
    pub fn dns_counters(&self) -> Option<dns::DnsCounters> {
        self.svc.dns.as_ref().map(|d| d.counters())
    }

    /// Lease records waiting to be made durable.
    pub fn take_persist(&mut self) -> Vec<dhcp::LogLine> {
        std::mem::take(&mut self.svc.persist)
    }

    /// DNS queries waiting to be sent to upstream servers.
    pub fn take_upstream(&mut self) -> Vec<(SocketAddr, Vec<u8>)> {
        std::mem::take(&mut self.svc.upstream)
    }

    /// A DNS query over UDP from a guest on `net` to the router address `server`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn dns_in(&mut self, now: Instant, iface: Iface, mac: MacAddr, ip: Ipv4Addr, port: u16, server: Ipv4Addr, payload: &[u8]) -> Result<(), DropReason> {
        if self.svc.dns.is_none() {
            return Err(DropReason::NoL3);
        }
        let dns_id = payload.get(..2).map_or(0, |b| u16::from_be_bytes([b[0], b[1]]));
        // The client asking again before the answer came: it gets that one answer.
        if self.svc.udp_pending.contains(&(iface, ip, port, dns_id)) {
            return Ok(());
        }
        if self.svc.dns_clients.len() >= DNS_CLIENTS || self.svc.dns_by_src.get(&ip).is_some_and(|n| *n >= DNS_PER_SOURCE) {
            return Err(DropReason::DnsBusy);
        }
        self.svc.next_client += 1;
        let id = self.svc.next_client;
        // Registered first: the answer may come at once (local names, the cache).
        self.svc.dns_clients.insert(id, DnsClient::Udp { iface, mac, ip, port, server, dns_id });
        *self.svc.dns_by_src.entry(ip).or_insert(0) += 1;
        self.svc.udp_pending.insert((iface, ip, port, dns_id));
        let (r, tcp) = self.with_dns(|d, out| d.query(now, dns::Client { id }, dns::Transport::Udp, payload, out)).ok_or(DropReason::NoL3)?;
        if r.is_err() {
            self.forget_client(id);
        }
        if tcp {
            self.tcp_dns_pump(now);
        }
        r.map_err(|_| DropReason::DnsIgnored)
    }

    fn forget_client(&mut self, id: u64) -> Option<DnsClient> {
        let c = self.svc.dns_clients.remove(&id)?;
        if let DnsClient::Udp { iface, ip, port, dns_id, .. } = c {
            self.svc.udp_pending.remove(&(iface, ip, port, dns_id));
            if let Some(n) = self.svc.dns_by_src.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    self.svc.dns_by_src.remove(&ip);
                }
            }
        }
        Some(c)
    }

    /// An upstream DNS server's answer (the I/O edge's UDP socket).
    pub fn dns_upstream(&mut self, now: Instant, from: SocketAddr, payload: &[u8]) {
        if let Some(((), true)) = self.with_dns(|d, out| d.upstream_answer(now, from, payload, out)) {
            self.tcp_dns_pump(now);
        }
    }

    pub(super) fn services_poll(&mut self, now: Instant) {
        if now >= self.svc.next_expire {
            self.svc.next_expire = now + std::time::Duration::from_secs(1);
            let wall = self.wall(now);
            self.with_dhcp(|d, out| d.expire(wall, out));
        }
        if self.svc.dns.as_ref().is_some_and(|d| d.poll_at() <= now) {
            self.with_dns(|d, out| d.poll(now, out));
        }
        if self.svc.tcp.poll_at() <= now {
            self.tcp_dns_pump(now);
        }
    }

    pub(super) fn services_poll_at(&self) -> Instant {
        let expire = if self.svc.dhcp.is_some() { self.svc.next_expire } else { Instant(u64::MAX) };
        self.svc.dns.as_ref().map_or(Instant(u64::MAX), |d| d.poll_at()).min(self.svc.tcp.poll_at()).min(expire)
    }

    /// A TCP segment for the DNS port on network `n`'s gateway: to the router's TCP stack.
    pub(super) fn dns_tcp_in(&mut self, now: Instant, n: NetId, packet: Vec<u8>) {
        let Some(net) = self.cfg.nets.get(n.0 as usize) else { return };
        let (Some(gw), prefix, mtu) = (net.gateway, net.cidr.prefix, net.mtu as usize) else { return };
        self.svc.tcp.input(now, n, gw, prefix, mtu, packet);
        self.tcp_dns_pump(now);
    }

    /// Runs the TCP stacks: complete queries go to the DNS core, answers written back, and the
    /// segments they produce leave through the egress (a few rounds: an answer from the cache
    /// is written at once and must be flushed).
    fn tcp_dns_pump(&mut self, now: Instant) {
        for _ in 0..4 {
            let mut queries = Vec::new();
            let mut packets = Vec::new();
            self.svc.tcp.run(now, &mut queries, &mut packets);
            for (n, p) in packets {
                self.emit_ip(now, n, &p);
            }
            if queries.is_empty() {
                break;
            }
            for q in queries {
                self.svc.next_client += 1;
                let id = self.svc.next_client;
                self.svc.dns_clients.insert(id, DnsClient::Tcp { net: q.net, handle: q.handle });
                self.svc.tcp.waiting(q.net, q.handle, id);
                let r = self.with_dns(|d, out| d.query(now, dns::Client { id }, dns::Transport::Tcp, &q.payload, out));
                if !matches!(r, Some((Ok(()), _))) {
                    self.forget_client(id);
                    self.svc.tcp.unanswered(q.net, q.handle);
                }
            }
        }
    }

    /// An IP packet for exactly port `port` (MAC `mac`) on network `n`, not switched by the MAC
    /// table nor addressed by ARP.
    pub(super) fn emit_to_port(&mut self, n: NetId, port: crate::switch::PortId, mac: MacAddr, packet: &[u8]) {
        self.new_frame(Iface::Net(n), mac, ethertype::IPV4, packet.len()).copy_from_slice(packet);
        if let Some(o) = self.outbox.last_mut() {
            o.port = Some(port);
        }
    }

    /// An IP packet from the router's TCP stacks (DNS, health checks) to a guest on `n`: to its
    /// MAC, or queued while ARP resolves it.
    pub(super) fn emit_ip(&mut self, now: Instant, n: NetId, packet: &[u8]) {
        let Ok(ip) = ipv4::Ipv4Packet::new_checked(packet) else { return };
        match self.resolve(now, Iface::Net(n), ip.dst()) {
            super::neigh::Resolve::Mac(mac) => self.new_frame(Iface::Net(n), mac, ethertype::IPV4, packet.len()).copy_from_slice(packet),
            // Waits for ARP like a routed frame (a health check's first SYN to a backend).
            super::neigh::Resolve::Pending => {
                let mut frame = vec![0u8; 14 + packet.len()];
                frame[6..12].copy_from_slice(&self.mac.0);
                frame[12..14].copy_from_slice(&ethertype::IPV4.to_be_bytes());
                frame[14..].copy_from_slice(packet);
                let q = super::neigh::Queued { frame, vnet: Default::default(), origin: None };
                let _ = self.neigh.enqueue(Iface::Net(n), ip.dst(), q);
            }
            super::neigh::Resolve::Failed => {}
        }
    }

    /// Carries out the DNS server's actions; true if an answer went onto a TCP connection.
    fn run_dns(&mut self, out: Vec<dns::Action>) -> bool {
        let mut tcp = false;
        for a in out {
            match a {
                dns::Action::Reply { client, payload } => match self.forget_client(client.id) {
                    Some(DnsClient::Tcp { net, handle }) => {
                        self.svc.tcp.answer(net, handle, client.id, &payload);
                        tcp = true;
                    }
                    Some(DnsClient::Udp { iface, mac, ip, port, server, .. }) => {
                        self.emit_udp(iface, mac, server, ip, 53, port, &payload)
                    }
                    None => {}
                },
                dns::Action::Upstream { upstream, payload } => self.svc.upstream.push((upstream, payload)),
            }
        }
        tcp
    }

    /// Builds an IPv4/UDP packet from the router (checksums complete) in a frame for the outbox.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn emit_udp(&mut self, iface: Iface, dst_mac: MacAddr, src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, payload: &[u8]) {
        let udp_len = 8 + payload.len();
        if 14 + 20 + udp_len > crate::buf::MAX_FRAME {
            return;
        }
        self.ident = self.ident.wrapping_add(1);
        let ident = self.ident;
        let f = self.new_frame(iface, dst_mac, ethertype::IPV4, 20 + udp_len);
        ipv4::emit_header(&mut f[..20], src, dst, proto::UDP, 64, udp_len, ident);
        let u = &mut f[20..];
        u[0..2].copy_from_slice(&sport.to_be_bytes());
        u[2..4].copy_from_slice(&dport.to_be_bytes());
        u[4..6].copy_from_slice(&(udp_len as u16).to_be_bytes());
        u[8..].copy_from_slice(payload);
        let sum = checksum::add(checksum::pseudo_v4(src.octets(), dst.octets(), proto::UDP, udp_len as u32), u);
        let c = match !checksum::fold(sum) {
            0 => 0xffff,
            c => c,
        };
        u[6..8].copy_from_slice(&c.to_be_bytes());
    }
}
