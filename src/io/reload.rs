//! Reload at the I/O edge: a staged change (built on the control thread, see
//! `control::reload`) is put in place between two batches.
//!
//! Order: first everything that can fail (devices of added or changed ports, VXLAN sockets if
//! their address changed), with nothing touched yet; if one fails, what was opened is closed
//! again (a tap vrouter created disappears with its fd) and the change is refused whole. Then
//! what cannot fail: the slots' devices are swapped (removed ports' devices closed, their taps
//! deleted), and the datapath takes its new tables. A port that stays keeps its device, its fd
//! and its place in the poll set.

use super::{open_device, port_opens, Slot, VxIo};

use crate::control::reload::Staged;
use crate::datapath::Datapath;
use crate::switch::{NetId, PortId};
use crate::sys::netif;
use crate::time::Instant;
use mio::unix::SourceFd;
use mio::{Interest, Poll, Token};
use std::os::fd::AsRawFd;

/// What the loop should do after an apply besides the datapath's own change.
pub(super) struct Applied {
    pub reply: serde_json::Value,
    /// Slots that no longer hold the port they held (removed, or another port's now).
    pub changed_ports: Vec<PortId>,
    pub config: crate::config::schema::Config,
    pub hash: String,
}

/// The reply for a change refused because a device or socket could not be opened.
fn refused(e: &super::RunError) -> String {
    let why = std::error::Error::source(e).map(|s| s.to_string()).unwrap_or_default();
    format!("{e}: {why}\nrefused: nothing applied, the running config keeps serving")
}

/// The devices of a change, settled before it reaches the loop: each new slot's device is the
/// one its slot already has (`kept`), one another slot had (`moved`: a renamed port, a new MAC,
/// an ifname handed to another port: a tap cannot be attached twice), or one opened for it
/// (`fresh`: a new tap created, a new interface attached).
pub struct DevicePlan {
    opens: Vec<Option<super::PortOpen>>,
    fresh: Vec<Option<super::Device>>,
    moved: Vec<Option<usize>>,
    kept: Vec<bool>,
}

/// Settles a change's devices, opening the new ones (off the datapath thread: a thousand taps
/// take a while to create). Dropping the plan closes what it opened, so a change refused later
/// leaves nothing behind.
pub fn plan(prev: &crate::config::schema::Config, prev_ids: &crate::build::Numbering, config: &crate::config::schema::Config, ids: &crate::build::Numbering) -> Result<DevicePlan, String> {
    let old = port_opens(prev, prev_ids);
    let same_port = |i: usize| prev_ids.keeps_port(ids, i);
    let opens = port_opens(config, ids);
    let mut fresh: Vec<Option<super::Device>> = (0..opens.len()).map(|_| None).collect();
    let mut moved: Vec<Option<usize>> = vec![None; opens.len()];
    let mut kept = vec![false; opens.len()];
    for (i, o) in opens.iter().enumerate() {
        if o.is_some() && same_port(i) && old.get(i) == Some(o) {
            kept[i] = true;
        }
    }
    for (i, o) in opens.iter().enumerate() {
        let Some(o) = o else { continue };
        if kept[i] {
            continue;
        }
        let from = old.iter().enumerate().position(|(j, p)| {
            !kept.get(j).copied().unwrap_or(false) && p.as_ref().is_some_and(|p| (p.kind, &p.ifname, p.match_mac) == (o.kind, &o.ifname, o.match_mac)) && !moved.contains(&Some(j))
        });
        if let Some(j) = from {
            moved[i] = Some(j);
            continue;
        }
        match open_device(o) {
            Ok(d) => fresh[i] = Some(d),
            Err(e) => return Err(refused(&e)),
        }
    }
    Ok(DevicePlan { opens, fresh, moved, kept })
}

pub(super) fn apply(st: Staged, now: Instant, poll: &Poll, slots: &mut Vec<Slot>, vx: &mut Option<VxIo>, dp: &mut Datapath) -> Result<Applied, String> {
    let t = std::time::Instant::now();
    let Staged { config, hash, ids, prev, dp: mut dcfg, services, vms, counts, changed, devices, .. } = st;
    let same_port = |p: PortId| prev.keeps_port(&ids, p.0 as usize);
    let same_net = |n: NetId| prev.keeps_net(&ids, n.0 as usize);
    // 1. What can fail, before anything changes: the devices were opened on the control
    // thread (`plan`); the VXLAN sockets, if their address changes, here.
    let Some(DevicePlan { opens, mut fresh, moved, kept }) = devices.lock().ok().and_then(|mut d| d.take()) else {
        return Err("the change's devices are gone (it was given up on); nothing applied".into());
    };
    let opens_none: Vec<bool> = opens.iter().map(|o| o.is_none()).collect();
    let new_vx = match (&config.vxlan, vx.as_ref()) {
        (Some(v), Some(cur)) if cur.opened == VxIo::key(v) => None,
        // The same address and port: the sockets stay, with the new TTL and DF.
        (Some(v), Some(cur)) if (cur.opened.0, cur.opened.1) == (VxIo::key(v).0, VxIo::key(v).1) => None,
        (Some(v), _) => Some(VxIo::open(v, &ids).map_err(|e| refused(&e))?),
        (None, _) => None,
    };
    // 2. What cannot fail.
    if let Some(nv) = new_vx {
        if let Some(old) = vx.take() {
            let _ = poll.registry().deregister(&mut SourceFd(&old.rx.as_raw_fd()));
        }
        if let Err(e) = poll.registry().register(&mut SourceFd(&nv.rx.as_raw_fd()), super::VXLAN, Interest::READABLE) {
            tracing::error!("cannot watch the new VXLAN socket: {e}");
        }
        *vx = Some(nv);
    }
    if config.vxlan.is_none() {
        if let Some(old) = vx.take() {
            let _ = poll.registry().deregister(&mut SourceFd(&old.rx.as_raw_fd()));
        }
    }
    if let (Some(v), Some(x)) = (&config.vxlan, vx.as_mut()) {
        x.set_peers(v, &ids);
        let key = VxIo::key(v);
        if x.opened != key {
            for sock in std::iter::once(&x.rx).chain(x.tx.iter()) {
                if let Err(e) = sock.set_ttl_df(key.2, key.3) {
                    tracing::warn!("VXLAN sockets: new TTL/DF not set: {e}");
                }
            }
            x.opened = key;
        }
    }
    let mut old: Vec<Option<Slot>> = std::mem::take(slots).into_iter().map(Some).collect();
    let (mut added, mut removed) = (0usize, 0usize);
    // Devices that move keep their fd and their place in the poll set, under the new slot.
    let mut carried: Vec<Option<Slot>> = (0..opens.len()).map(|_| None).collect();
    for (i, m) in moved.iter().enumerate() {
        if let Some(j) = *m {
            if let Some(mut s) = old.get_mut(j).and_then(|s| s.take()) {
                if let Some(d) = &s.dev {
                    let _ = poll.registry().reregister(&mut SourceFd(&d.as_raw_fd()), Token(i), Interest::READABLE);
                }
                // A tap vrouter made carries the guest's MAC: a new `mac` goes to the guest's NIC.
                if let (Some(t), Some(o)) = (s.dev.as_ref().and_then(|d| d.as_tap()), &opens[i]) {
                    let was = s.open.as_ref().and_then(|p| p.mac);
                    if let (true, Some(mac)) = (t.created() && o.mac != was, o.mac) {
                        if let Err(e) = t.set_mac(mac) {
                            tracing::warn!(port = %o.name, "the tap's new MAC {mac} was not set: {e}");
                        }
                    }
                }
                s.open = opens[i].clone();
                carried[i] = Some(s);
            }
        }
    }
    for (i, o) in old.iter_mut().enumerate() {
        if kept.get(i).copied().unwrap_or(false) {
            continue;
        }
        if let Some(d) = o.as_mut().and_then(|o| o.dev.take()) {
            let _ = poll.registry().deregister(&mut SourceFd(&d.as_raw_fd()));
            removed += 1;
            if let Some(op) = o.as_ref().and_then(|o| o.open.as_ref()) {
                tracing::info!(port = %op.name, ifname = %op.ifname, "port released");
            }
        }
    }
    for (i, o) in opens.into_iter().enumerate() {
        let slot = if kept[i] {
            old[i].take().expect("a kept slot existed")
        } else if let Some(s) = carried[i].take() {
            s
        } else {
            match (o, fresh[i].take()) {
                (Some(o), Some(d)) => {
                    let offload = d.offload();
                    let dev = match poll.registry().register(&mut SourceFd(&d.as_raw_fd()), Token(i), Interest::READABLE) {
                        Ok(()) => {
                            tracing::info!(port = %o.name, ifname = %o.ifname, offload = ?offload.names(), "port attached");
                            added += 1;
                            Some(d)
                        }
                        Err(e) => {
                            // Waits, and is attached again by the link check.
                            tracing::error!(port = %o.name, "cannot watch the new device: {e}");
                            None
                        }
                    };
                    let lost_at = dev.is_none().then(std::time::Instant::now);
                    Slot { ifindex: o.current_ifname().and_then(|n| netif::index(&n)), offload, open: Some(o), dev, lost_at, last_err: None }
                }
                (o, _) => Slot { ifindex: None, offload: crate::wire::vnet::Offloads::NONE, open: o, dev: None, lost_at: None, last_err: None },
            }
        };
        slots.push(slot);
    }
    for (spec, s) in dcfg.ports.iter_mut().zip(slots.iter()) {
        if s.open.is_some() {
            spec.offload = s.offload;
        }
    }
    // The same port is the same name and generation on the same device: one whose device
    // changed (ifnames swapped between two ports, an uplink on another interface) has another
    // guest or link behind it, and starts afresh (learned MACs, filter state, counters).
    let same_dev = |p: PortId| {
        let i = p.0 as usize;
        same_port(p) && (opens_none.get(i).copied().unwrap_or(true) || kept.get(i).copied().unwrap_or(false) || moved.get(i) == Some(&Some(i)))
    };
    let svc = crate::router::reload::Services { spec: services, metadata_enabled: config.router.metadata, vms };
    let t_swap = std::time::Instant::now();
    dp.reconfigure(now, dcfg, svc, &same_dev, &same_net);
    let swap = t_swap.elapsed();
    let ms = |d: std::time::Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
    let reply = serde_json::json!({
        "applied": true,
        "changes": counts,
        "changed": changed,
        "devices_opened": added,
        "devices_closed": removed,
        "swap_ms": ms(swap),
        "pause_ms": ms(t.elapsed()),
    });
    let changed_ports = (0..prev.ports.len()).map(|i| PortId(i as u16)).filter(|p| prev.ports[p.0 as usize].0.is_some() && !same_dev(*p)).collect();
    Ok(Applied { reply, changed_ports, config, hash })
}
