//! Wire parsers (Ethernet, 802.1Q, virtio_net_hdr, IPv4, ARP, quoted ICMP errors), the NAT
//! rewrites and the software offload path on arbitrary bytes (`vrouter::fuzzing::wire`, which
//! the smoke test in `cargo test` also runs).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| vrouter::fuzzing::wire(data));
