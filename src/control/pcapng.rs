//! pcapng (draft-ietf-opsawg-pcapng) blocks for `ctl capture`: a section header, one interface
//! description per captured port, enhanced packet blocks carrying the direction (`epb_flags`)
//! and a comment (offload metadata of a super-frame, the reason a frame was dropped), and an
//! interface statistics block with the frames the capture lost (`isb_ifdrop`). tcpdump,
//! tshark and Wireshark read it. Little-endian, microsecond timestamps (the default
//! resolution). Bytes only: the caller owns time and I/O.
//!
//! Written here rather than with a crate: these four blocks are the whole of what is needed,
//! and a writer that streams block by block onto a socket is simpler than adapting one that
//! owns the output.

/// Frames are captured whole up to this length (a 64 KiB super-frame plus headers).
pub const SNAPLEN: u32 = 262_144;
pub const LINKTYPE_ETHERNET: u16 = 1;

/// Which way a frame went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    In,
    Out,
}

fn option(b: &mut Vec<u8>, code: u16, value: &[u8]) {
    b.extend_from_slice(&code.to_le_bytes());
    b.extend_from_slice(&(value.len() as u16).to_le_bytes());
    b.extend_from_slice(value);
    b.resize(b.len().next_multiple_of(4), 0);
}

/// Wraps a block body: type, total length, body, total length.
fn block(kind: u32, body: &[u8]) -> Vec<u8> {
    let len = (12 + body.len()) as u32;
    let mut b = Vec::with_capacity(len as usize);
    b.extend_from_slice(&kind.to_le_bytes());
    b.extend_from_slice(&len.to_le_bytes());
    b.extend_from_slice(body);
    b.extend_from_slice(&len.to_le_bytes());
    b
}

/// Section Header Block.
pub fn section_header() -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&0x1A2B_3C4Du32.to_le_bytes());
    body.extend_from_slice(&1u16.to_le_bytes());
    body.extend_from_slice(&0u16.to_le_bytes());
    body.extend_from_slice(&(-1i64).to_le_bytes());
    block(0x0A0D_0D0A, &body)
}

/// Interface Description Block for an Ethernet port named `name`.
pub fn interface(name: &str) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&LINKTYPE_ETHERNET.to_le_bytes());
    body.extend_from_slice(&0u16.to_le_bytes());
    body.extend_from_slice(&SNAPLEN.to_le_bytes());
    option(&mut body, 2, name.as_bytes());
    option(&mut body, 0, &[]);
    block(1, &body)
}

/// Enhanced Packet Block: `frame` on interface `iface` at `ts_us` (unix microseconds), its
/// direction and an optional comment.
pub fn packet(iface: u32, ts_us: u64, frame: &[u8], dir: Dir, comment: Option<&str>) -> Vec<u8> {
    let cap = frame.len().min(SNAPLEN as usize);
    let mut body = Vec::with_capacity(32 + cap + comment.map_or(0, str::len));
    body.extend_from_slice(&iface.to_le_bytes());
    body.extend_from_slice(&((ts_us >> 32) as u32).to_le_bytes());
    body.extend_from_slice(&(ts_us as u32).to_le_bytes());
    body.extend_from_slice(&(cap as u32).to_le_bytes());
    body.extend_from_slice(&(frame.len() as u32).to_le_bytes());
    body.extend_from_slice(&frame[..cap]);
    body.resize(body.len().next_multiple_of(4), 0);
    let flags: u32 = match dir {
        Dir::In => 0b01,
        Dir::Out => 0b10,
    };
    option(&mut body, 2, &flags.to_le_bytes());
    if let Some(c) = comment {
        option(&mut body, 1, c.as_bytes());
    }
    option(&mut body, 0, &[]);
    block(6, &body)
}

/// Interface Statistics Block: frames the capture lost on `iface` (queue full).
pub fn statistics(iface: u32, ts_us: u64, lost: u64) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&iface.to_le_bytes());
    body.extend_from_slice(&((ts_us >> 32) as u32).to_le_bytes());
    body.extend_from_slice(&(ts_us as u32).to_le_bytes());
    option(&mut body, 5, &lost.to_le_bytes());
    option(&mut body, 0, &[]);
    block(5, &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_blocks() {
        let shb = section_header();
        assert_eq!(shb, [
            0x0a, 0x0d, 0x0d, 0x0a, 28, 0, 0, 0, 0x4d, 0x3c, 0x2b, 0x1a, 1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 28, 0, 0, 0,
        ]);
        let idb = interface("g1");
        assert_eq!(idb, [1, 0, 0, 0, 32, 0, 0, 0, 1, 0, 0, 0, 0, 0, 4, 0, 2, 0, 2, 0, b'g', b'1', 0, 0, 0, 0, 0, 0, 32, 0, 0, 0]);
        let epb = packet(0, 0x1_0000_0002, &[0xaa; 5], Dir::Out, Some("x"));
        let want: Vec<u8> = [
            &[6, 0, 0, 0, 60, 0, 0, 0][..],
            &[0, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 5, 0, 0, 0, 5, 0, 0, 0],
            &[0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0, 0, 0],
            &[2, 0, 4, 0, 2, 0, 0, 0],
            &[1, 0, 1, 0, b'x', 0, 0, 0],
            &[0, 0, 0, 0],
            &[60, 0, 0, 0],
        ]
        .concat();
        assert_eq!(epb, want);
        let isb = statistics(0, 0, 7);
        assert_eq!(isb.len() % 4, 0);
        assert_eq!(&isb[24..32], &7u64.to_le_bytes());
    }
}
