//! The router's side of the metadata service: who is asking (the ingress port, whose own
//! address must be the source), what that VM is told, and the pump between the TCP endpoint
//! (`tcp_meta`) and the pure answers (`crate::metadata`).

use super::tcp_meta::{MetaPacket, MetaRequest, Owner, TcpMeta};
use super::{Iface, Router};
use crate::metadata::{self, Vm};
use crate::switch::stats::DropReason;
use crate::switch::{NetId, PortId};
use crate::time::Instant;
use crate::wire::ethernet::MacAddr;
use serde::Serialize;
use std::collections::HashMap;
use std::net::Ipv4Addr;

/// Where the metadata identities of remote VMs start: a remote VM has no datapath port, so the
/// service numbers them from here (datapath ports stay far below: at most 4096).
pub const REMOTE_BASE: u16 = 0x8000;

/// One VM's metadata and how to know its address.
#[derive(Debug, Clone)]
pub struct VmSpec {
    pub port: PortId,
    /// A remote VM's uplink (or VXLAN peer): where its frames arrive and its answers leave;
    /// it is known there by its MAC. `None`: the VM is on `port` itself.
    pub via: Option<PortId>,
    pub net: NetId,
    pub mac: Option<MacAddr>,
    pub fixed_ip: Option<Ipv4Addr>,
    pub vm: Vm,
}

/// Counters of the metadata and password services.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct MetaCounters {
    pub requests: u64,
    pub not_found: u64,
    pub passwords_sent: u64,
    /// Segments from a port whose source is not that port's own address (spoofing).
    pub refused_spoofed: u64,
    /// New connections refused: the address already held its share, or the stack was full.
    pub refused_busy: u64,
    /// Malformed or oversized request heads (400, 431).
    pub bad_requests: u64,
}

pub struct MetaSvc {
    pub(super) enabled: bool,
    vms: HashMap<PortId, VmSpec>,
    /// Passwords set with `ctl set-password`, until the VM acknowledges one: memory only.
    passwords: HashMap<PortId, String>,
    pub(super) tcp: TcpMeta,
    pub counters: MetaCounters,
}

impl MetaSvc {
    /// A reload's VMs. A password waiting for a port that is still the same VM stays; one for a
    /// port that is gone (or whose slot another VM took) is forgotten.
    pub(super) fn reconfigure(&mut self, enabled: bool, vms: Vec<VmSpec>, same: impl Fn(PortId) -> bool) {
        self.enabled = enabled;
        let old: HashMap<PortId, String> = self.vms.iter().map(|(p, v)| (*p, v.vm.port.clone())).collect();
        self.vms = vms.into_iter().map(|v| (v.port, v)).collect();
        let vms = &self.vms;
        // A remote VM's identity is its place among the remote VMs: the same only if the name
        // there is the same.
        let kept = |p: &PortId| match vms.get(p) {
            Some(v) if p.0 >= REMOTE_BASE => old.get(p) == Some(&v.vm.port),
            Some(_) => same(*p),
            None => false,
        };
        self.passwords.retain(|p, _| kept(p));
    }

    /// Each VM's port, network, MAC and fixed address.
    pub(super) fn addresses(&self) -> Vec<(PortId, NetId, Option<MacAddr>, Option<Ipv4Addr>)> {
        self.vms.values().map(|v| (v.port, v.net, v.mac, v.fixed_ip)).collect()
    }

    pub fn new(enabled: bool, vms: Vec<VmSpec>, seed: crate::entropy::Seed) -> Self {
        MetaSvc { enabled, vms: vms.into_iter().map(|v| (v.port, v)).collect(), passwords: HashMap::new(), tcp: TcpMeta::new(seed), counters: MetaCounters::default() }
    }
}

/// A row of `ctl show metadata` (no passwords, only whether one waits).
#[derive(Debug, Clone, Serialize)]
pub struct MetaRow {
    #[serde(flatten)]
    pub vm: Vm,
    pub user_data_bytes: usize,
    pub password_pending: bool,
}

impl Router {
    /// Installs the VMs' metadata (the I/O edge, at start).
    pub fn set_metadata(&mut self, m: MetaSvc) {
        self.meta = m;
    }

    /// Whether TCP to `dst:port` on a guest network is for the metadata services.
    pub(super) fn is_meta(&self, n: NetId, dst: Ipv4Addr, port: u16) -> bool {
        self.meta.enabled && ((port == 80 && (dst == metadata::METADATA_IP || self.gateway(n) == Some(dst))) || (port == metadata::PASSWORD_PORT && self.gateway(n) == Some(dst)))
    }

    /// The address port `p` on network `n` may speak from: its fixed one, else its lease.
    fn own_address(&self, n: NetId, p: PortId) -> Option<Ipv4Addr> {
        let v = self.meta.vms.get(&p).filter(|v| v.net == n)?;
        v.fixed_ip.or_else(|| self.lease_of(n, v.mac?))
    }

    /// What port `p` on network `n` is told, if `ip` is still its own address.
    fn vm_for(&self, n: NetId, p: PortId, ip: Ipv4Addr) -> Option<Vm> {
        let spec = self.meta.vms.get(&p).filter(|v| v.net == n)?;
        if self.own_address(n, p) != Some(ip) {
            return None;
        }
        let mut vm = spec.vm.clone();
        vm.ip = Some(ip);
        vm.public_ip = self.static_by_private.get(&ip).copied().or(self.cfg.public.as_ref().map(|p| p.source_nat_ip));
        Some(vm)
    }

    /// Which VM a segment that arrived on port `ingress` from `eth_src` is: the port's own VM,
    /// or a remote VM behind it (an uplink's) known by that MAC.
    pub(super) fn meta_port(&self, n: NetId, ingress: Option<PortId>, eth_src: MacAddr) -> Option<PortId> {
        let p = ingress?;
        if self.meta.vms.get(&p).is_some_and(|v| v.via.is_none()) {
            return Some(p);
        }
        self.meta.vms.values().find(|v| v.via == Some(p) && v.net == n && v.mac == Some(eth_src)).map(|v| v.port)
    }

    /// Whether a metadata segment from VM port `p` with source `src` may be taken (before any
    /// copy or allocation): the source must be that port's own address.
    pub(super) fn meta_allowed(&mut self, n: NetId, p: Option<PortId>, src: Ipv4Addr) -> bool {
        let ok = p.and_then(|p| self.own_address(n, p)) == Some(src);
        if !ok {
            self.meta.counters.refused_spoofed += 1;
        }
        ok
    }

    /// A TCP segment for the metadata services from port `p` (the ingress, already checked by
    /// `meta_allowed`) on network `n`, sent from `eth_src`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn meta_in(&mut self, now: Instant, n: NetId, p: PortId, eth_src: MacAddr, src: (Ipv4Addr, u16), local_port: u16, syn: bool, packet: Vec<u8>) -> Result<(), DropReason> {
        let Some(net) = self.cfg.nets.get(n.0 as usize) else { return Err(DropReason::NoL3) };
        let (Some(gw), prefix, mtu) = (net.gateway, net.cidr.prefix, net.mtu as usize) else { return Err(DropReason::NoL3) };
        // Answers go to the port's own MAC (the configured one; else the one the SYN came from).
        let mac = self.meta.vms.get(&p).and_then(|v| v.mac).unwrap_or(eth_src);
        if !self.meta.tcp.input(now, n, (gw, prefix, mtu), src, local_port, syn, Owner { port: p, mac }, packet) {
            self.meta.counters.refused_busy += 1;
            return Err(DropReason::MetadataRefused);
        }
        self.meta_pump(now);
        Ok(())
    }

    /// Runs the TCP stacks, answers complete requests, sends what they produce (a few rounds:
    /// an answer written must be flushed, and a keep-alive connection may hold the next one).
    pub(super) fn meta_pump(&mut self, now: Instant) {
        for _ in 0..4 {
            let mut reqs: Vec<MetaRequest> = Vec::new();
            let mut packets: Vec<MetaPacket> = Vec::new();
            self.meta.tcp.run(now, &mut reqs, &mut self.meta.counters.bad_requests, &mut packets);
            for pk in packets {
                // Straight to the asking port's MAC through that port; a segment without an
                // owner (an RST for a refused address) goes nowhere.
                if let Some(o) = pk.owner {
                    let out = self.meta.vms.get(&o.port).and_then(|v| v.via).unwrap_or(o.port);
                    self.emit_to_port(pk.net, out, o.mac, &pk.packet);
                }
            }
            if reqs.is_empty() {
                break;
            }
            for r in reqs {
                let (resp, keep, head_only) = match metadata::Request::parse(&r.head) {
                    Ok((req, _)) => {
                        self.meta.counters.requests += 1;
                        let vm = r.owner.and_then(|o| self.vm_for(r.net, o.port, r.remote).map(|v| (o.port, v)));
                        let resp = if r.local_port == metadata::PASSWORD_PORT {
                            match vm.as_ref() {
                                Some((p, _)) => {
                                    let mut pending = self.meta.passwords.get(p).cloned();
                                    let had = pending.is_some();
                                    let resp = metadata::password(&req, &mut pending);
                                    if had && req.domu.as_deref() == Some("send_my_password") {
                                        self.meta.counters.passwords_sent += 1;
                                    }
                                    if pending.is_none() {
                                        self.meta.passwords.remove(p);
                                    }
                                    resp
                                }
                                None => metadata::error(404),
                            }
                        } else {
                            metadata::answer(&req, vm.as_ref().map(|(_, v)| v))
                        };
                        if resp.status == 404 {
                            self.meta.counters.not_found += 1;
                        }
                        (resp, req.keep_alive, req.method == "HEAD")
                    }
                    Err(_) => (metadata::error(400), false, false),
                };
                self.meta.tcp.respond(r.net, r.handle, &resp.encode(head_only, keep), keep);
            }
        }
    }

    /// The metadata identity of the VM named `name` (a port's, or a remote VM's).
    pub fn vm_named(&self, name: &str) -> Option<PortId> {
        self.meta.vms.values().find(|v| v.vm.port == name).map(|v| v.port)
    }

    /// `ctl set-password PORT`: false if the port has no metadata (no such port).
    pub fn set_password(&mut self, port: PortId, password: String) -> bool {
        if !self.meta.vms.contains_key(&port) {
            return false;
        }
        self.meta.passwords.insert(port, password);
        true
    }

    /// `ctl show metadata`: what each VM would be told now.
    pub fn metadata_rows(&self) -> Vec<MetaRow> {
        let mut rows: Vec<MetaRow> = self
            .meta
            .vms
            .values()
            .map(|s| {
                let vm = self.own_address(s.net, s.port).and_then(|ip| self.vm_for(s.net, s.port, ip)).unwrap_or_else(|| s.vm.clone());
                MetaRow { user_data_bytes: vm.user_data.as_ref().map_or(0, Vec::len), password_pending: self.meta.passwords.contains_key(&s.port), vm }
            })
            .collect();
        rows.sort_by(|a, b| a.vm.port.cmp(&b.vm.port));
        rows
    }

    pub fn metadata_counters(&self) -> Option<(MetaCounters, usize)> {
        self.meta.enabled.then(|| (self.meta.counters, self.meta.tcp.open()))
    }
}

/// Metadata is local on guest networks: 169.254.169.254 is the router's there.
pub(super) fn is_metadata_ip(from: Iface, dst: Ipv4Addr) -> bool {
    matches!(from, Iface::Net(_)) && dst == metadata::METADATA_IP
}
