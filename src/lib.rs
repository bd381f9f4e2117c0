//! vrouter: a userspace virtual switch/router appliance, one process per cloud account.
//!
//! Layout (DESIGN.md, "Architecture"): `wire` (bytes only), `switch` (L2 stages), `router`
//! (ARP, routing, ICMP), `conntrack`, `nat`, `filter` (firewall and egress classifiers),
//! `offload` (software GSO/checksum), `datapath` (the pure pipeline), `build` (config ->
//! datapath tables, pure), `io` + `sys` (fds, poll loop, ioctls), `control` (socket API),
//! `config` (schema and validation).

pub mod buf;
pub mod build;
pub mod config;
pub mod conntrack;
pub mod control;
pub mod datapath;
pub mod dhcp;
pub mod dns;
pub mod entropy;
pub mod filter;
pub mod gro;
pub mod fuzzing;
pub mod io;
pub mod lb;
pub mod nat;
pub mod offload;
pub mod router;
pub mod switch;
pub mod sys;
pub mod time;
pub mod wire;
