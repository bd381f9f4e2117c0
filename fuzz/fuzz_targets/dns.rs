//! The dns server on arbitrary bytes (`vrouter::fuzzing::dns`, also run by the smoke test).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| vrouter::fuzzing::dns(data));
