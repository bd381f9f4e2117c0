//! Any text as a config file: diagnostics or a config, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| vrouter::fuzzing::config(data));
