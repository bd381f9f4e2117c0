//! vrouter: a userspace virtual switch/router appliance, one process per cloud account.
//!
//! Layout (DESIGN.md, "Architecture"): `wire` (bytes only), `frame` (what a frame's headers
//! say, read once at ingress and shared by every stage), `switch` (L2 stages), `router`
//! (ARP, routing, ICMP, NAT decisions, the services' glue), `conntrack`, `nat`, `filter`
//! (firewall and egress classifiers, security groups), `lb` (load balancer and health checks),
//! `dhcp` and `dns` (the sans-IO servers), `metadata` (what cloud-init is told), `vpn` (WireGuard
//! peers: boringtun sessions, cryptokey routing, handshake limits), `bgp` (the EVPN speaker:
//! sessions, RIBs, MAC mobility; its thread is `io::bgp`), `offload` (software GSO/checksum), `gro` (receive
//! coalescing), `entropy` (the seeded CSPRNG), `datapath` (the pure pipeline), `build` (config
//! -> datapath tables, pure), `buf` (packet buffers with headroom), `time` (the core's clock
//! type), `io` + `sys` (fds, poll loop, lease log, ioctls), `control` (socket API), `config`
//! (schema and validation), `fuzzing` (the fuzz targets' entry points, also smoke-run in tests).

pub mod buf;
pub mod bgp;
pub mod build;
pub mod config;
pub mod conntrack;
pub mod control;
pub mod datapath;
pub mod dhcp;
pub mod dns;
pub mod entropy;
pub mod filter;
pub mod frame;
pub mod gro;
pub mod fuzzing;
pub mod io;
pub mod lb;
pub mod metadata;
pub mod nat;
pub mod offload;
pub mod router;
pub mod switch;
pub mod sys;
pub mod time;
pub mod vpn;
pub mod wire;
