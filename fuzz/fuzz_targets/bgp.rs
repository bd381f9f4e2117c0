//! The BGP codec and a speaker's established session fed arbitrary bytes as a neighbour's
//! stream (`vrouter::fuzzing::bgp`, which `cargo test`'s `bgp_fuzz` also runs on mutated
//! FRR messages).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| vrouter::fuzzing::bgp(data));
