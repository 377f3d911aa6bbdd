//! Portable parts of `net_mode=hostile` (docs/guest-abi.md, "Hostile network mode"): the
//! frames the host sends the guest and how the guest tells them apart, and the echo that
//! ends the run.
//!
//! The host sends UDP datagrams to the guest's address whose payload starts with a 4-byte
//! tag: `NSBG` (a frame too big for the guest's small buffers), `NSMK` (the marker after
//! them, small enough to fit), `NSFL` + a little-endian `u32` sequence number (the flood
//! while the guest posts no buffers), `NSEC` + a `u32` (an echo request). Anything else on
//! the link is "foreign" and ignored.

/// The cases, in the order the guest runs them (docs/guest-abi.md lists what each
/// does; docs/containment.md, "virtio-net", the answers nightshift gives).
pub const CASES: [&str; 26] = [
    "tx-desc-loop",
    "tx-next-out-of-range",
    "tx-outside-ram",
    "tx-len-overflow",
    "tx-addr-wraps",
    "tx-write-only",
    "tx-short-header",
    "tx-runt",
    "tx-above-64k",
    "tx-64k",
    "tx-split-header",
    "tx-indirect",
    "tx-head-out-of-range",
    "tx-avail-idx-jump",
    "rx-desc-loop",
    "rx-next-out-of-range",
    "rx-outside-ram",
    "rx-len-overflow",
    "rx-len-sum-overflow",
    "rx-read-only",
    "rx-short-header",
    "rx-indirect",
    "rx-head-out-of-range",
    "rx-avail-idx-jump",
    "rx-too-small",
    "rx-no-buffers-flood",
];

/// UDP port the host sends the `NSBG`, `NSMK` and `NSFL` frames to.
pub const FLOOD_PORT: u16 = 9999;
/// UDP port of the echo requests (the guest sends them back with addresses swapped).
pub const ECHO_PORT: u16 = 7;
/// Payload tags.
pub const BIG: &[u8; 4] = b"NSBG";
pub const MARKER: &[u8; 4] = b"NSMK";
pub const FLOOD: &[u8; 4] = b"NSFL";
pub const ECHO: &[u8; 4] = b"NSEC";
/// Bytes of the marker's payload: with Ethernet, IPv4 and UDP headers a 52-byte frame,
/// 64 bytes behind the 12-byte virtio-net header.
pub const MARKER_PAYLOAD: usize = 10;
/// Bytes of a frame carrying a `MARKER_PAYLOAD` payload.
pub const MARKER_FRAME: usize = ETH_HDR + 20 + UDP_HDR + MARKER_PAYLOAD;

const ETH_HDR: usize = 14;
const UDP_HDR: usize = 8;
const ETHERTYPE_IPV4: u16 = 0x0800;
const PROTO_UDP: u8 = 17;

/// What a received frame is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tag {
    Big,
    Marker,
    Flood(u32),
    Echo(u32),
}

/// The offsets of an IPv4/UDP frame: (IPv4 header, UDP header, payload), checked to lie
/// in `frame`.
fn udp_offsets(frame: &[u8]) -> Option<(usize, usize, usize)> {
    if frame.len() < ETH_HDR + 20 + UDP_HDR {
        return None;
    }
    if u16::from_be_bytes([frame[12], frame[13]]) != ETHERTYPE_IPV4 {
        return None;
    }
    let ip = ETH_HDR;
    let ihl = usize::from(frame[ip] & 0x0f) * 4;
    if frame[ip] >> 4 != 4 || ihl < 20 || frame[ip + 9] != PROTO_UDP {
        return None;
    }
    let udp = ip + ihl;
    let payload = udp + UDP_HDR;
    (payload <= frame.len()).then_some((ip, udp, payload))
}

/// The UDP destination port and payload of an Ethernet frame, if it is IPv4/UDP (the
/// payload is cut to the UDP length when that is shorter than the frame).
pub fn udp_payload(frame: &[u8]) -> Option<(u16, &[u8])> {
    let (_, udp, payload) = udp_offsets(frame)?;
    let port = u16::from_be_bytes([frame[udp + 2], frame[udp + 3]]);
    let len = usize::from(u16::from_be_bytes([frame[udp + 4], frame[udp + 5]]));
    let end = (udp + len).clamp(payload, frame.len());
    Some((port, &frame[payload..end]))
}

/// What `frame` is, if it is one of the host's.
pub fn tag(frame: &[u8]) -> Option<Tag> {
    let (port, p) = udp_payload(frame)?;
    let word = |at: usize| {
        p.get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let t = p.get(..4)?;
    match (port, t) {
        (FLOOD_PORT, t) if t == BIG => Some(Tag::Big),
        (FLOOD_PORT, t) if t == MARKER => Some(Tag::Marker),
        (FLOOD_PORT, t) if t == FLOOD => word(4).map(Tag::Flood),
        (ECHO_PORT, t) if t == ECHO => word(4).map(Tag::Echo),
        _ => None,
    }
}

/// Turns a received IPv4/UDP frame into its answer in place: Ethernet addresses, IPv4
/// addresses and UDP ports swapped. Both checksums stay valid (a swap keeps the sums).
/// Returns false (and leaves the frame alone) if it is not IPv4/UDP.
pub fn echo_in_place(frame: &mut [u8]) -> bool {
    let Some((ip, udp, _)) = udp_offsets(frame) else {
        return false;
    };
    for (a, b) in [(0, 6), (ip + 12, ip + 16), (udp, udp + 2)] {
        let n = b - a;
        for i in 0..n.min(6) {
            frame.swap(a + i, b + i);
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    /// An IPv4/UDP frame from 10.99.0.1:4000 to 10.99.0.2:`port` carrying `payload`.
    fn frame(port: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&[0x52, 0x54, 0, 0x12, 0x34, 0x56, 2, 0, 0, 0, 0, 1, 8, 0]);
        let total = (20 + UDP_HDR + payload.len()) as u16;
        f.extend_from_slice(&[0x45, 0]);
        f.extend_from_slice(&total.to_be_bytes());
        f.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0xab, 0xcd]);
        f.extend_from_slice(&[10, 99, 0, 1, 10, 99, 0, 2]);
        f.extend_from_slice(&4000u16.to_be_bytes());
        f.extend_from_slice(&port.to_be_bytes());
        f.extend_from_slice(&((UDP_HDR + payload.len()) as u16).to_be_bytes());
        f.extend_from_slice(&[0x12, 0x34]);
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn tags() {
        let mut p = FLOOD.to_vec();
        p.extend_from_slice(&7u32.to_le_bytes());
        assert_eq!(tag(&frame(FLOOD_PORT, &p)), Some(Tag::Flood(7)));
        assert_eq!(tag(&frame(ECHO_PORT, &p)), None);
        assert_eq!(
            tag(&frame(FLOOD_PORT, b"NSMK\0\0\0\0\0\0")),
            Some(Tag::Marker)
        );
        assert_eq!(frame(FLOOD_PORT, b"NSMK\0\0\0\0\0\0").len(), MARKER_FRAME);
        assert_eq!(tag(&frame(FLOOD_PORT, &[b'N'; 900])), None);
        assert_eq!(tag(&frame(FLOOD_PORT, b"NSBG....")), Some(Tag::Big));
        assert_eq!(
            tag(&frame(ECHO_PORT, b"NSEC\x01\0\0\0")),
            Some(Tag::Echo(1))
        );
        // Too short for its sequence number, not IPv4, cut off.
        assert_eq!(tag(&frame(FLOOD_PORT, b"NSFL\x01")), None);
        let mut arp = frame(FLOOD_PORT, &p);
        arp[12..14].copy_from_slice(&[8, 6]);
        assert_eq!(tag(&arp), None);
        assert_eq!(tag(&frame(FLOOD_PORT, &p)[..30]), None);
    }

    #[test]
    fn echo_swaps_addresses_and_ports_only() {
        let f = frame(ECHO_PORT, b"NSEC\x05\0\0\0");
        let mut e = f.clone();
        assert!(echo_in_place(&mut e));
        assert_eq!(&e[0..6], &f[6..12]);
        assert_eq!(&e[6..12], &f[0..6]);
        assert_eq!(&e[26..30], &f[30..34]);
        assert_eq!(&e[30..34], &f[26..30]);
        assert_eq!(&e[34..36], &f[36..38]);
        assert_eq!(&e[36..38], &f[34..36]);
        assert_eq!(&e[38..], &f[38..]);
        assert_eq!(udp_payload(&e), Some((4000, &b"NSEC\x05\0\0\0"[..])));
        assert!(!echo_in_place(&mut [0u8; 20]));
    }
}
