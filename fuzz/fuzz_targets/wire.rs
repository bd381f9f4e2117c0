//! Wire parsers and the software offload path on arbitrary bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use vrouter::wire::{ethernet::EthernetFrame, vlan::VlanFrame, vnet::VnetHdr};

fuzz_target!(|data: &[u8]| {
    let _ = EthernetFrame::new_checked(data).map(|f| (f.dst(), f.src(), f.ethertype()));
    let _ = VlanFrame::new_checked(data).map(|v| (v.vid(), v.inner_ethertype()));
    if let Ok(h) = VnetHdr::parse(data) {
        let mut scratch = vec![0u8; vrouter::buf::BUF_SIZE];
        let _ = vrouter::offload::finish(data.get(10..).unwrap_or(&[]), &h, &mut scratch, &mut |_| {});
    }
});
