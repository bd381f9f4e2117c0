//! Any sequence of (port, vnet header, frame) records through the whole L2 pipeline.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut dp = vrouter::fuzzing::fuzz_datapath();
    vrouter::fuzzing::datapath(&mut dp, data);
});
