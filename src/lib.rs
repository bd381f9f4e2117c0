//! vrouter: a userspace virtual switch/router appliance, one process per cloud account.
//!
//! Layout (DESIGN.md, "Architecture"): `wire` (bytes only), `switch` (L2 stages), `offload`
//! (software GSO/checksum), `datapath` (the pure pipeline), `io` + `sys` (fds, poll loop,
//! ioctls), `control` (socket API), `config` (schema and validation).

pub mod buf;
pub mod config;
pub mod control;
pub mod datapath;
pub mod fuzzing;
pub mod io;
pub mod offload;
pub mod switch;
pub mod sys;
pub mod time;
pub mod wire;
