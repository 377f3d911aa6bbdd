//! Portable parts of the `net` workload: its fixed ports, the byte stream the TCP source
//! sends (and the host checks), the source's request line, the sink's reply line, and the
//! classification of Ethernet frames behind the workload's counters and its peer filter.
//!
//! The workload itself (virtio-drivers' net driver under smoltcp) is in the guest binary;
//! what is here has no device behind it, so the host unit tests cover it.

use core::fmt::Write;
use core::net::Ipv4Addr;

use smoltcp::wire::{
    ArpPacket, EthernetFrame, EthernetProtocol, Icmpv4Message, Icmpv4Packet, IpProtocol, Ipv4Packet,
};

use crate::blk::pattern_word;
use crate::linebuf::LineBuf;

/// UDP: every datagram is sent back to its sender unchanged (RFC 862's port).
pub const ECHO_PORT: u16 = 7;
/// UDP: a datagram `quit` ends the workload (answered with `bye`).
pub const CONTROL_PORT: u16 = 9;
/// TCP: reads until the peer's FIN, answers one line with the byte count and CRC32.
pub const SINK_PORT: u16 = 5001;
/// TCP: reads one request line `<bytes>[ <seed>]`, sends that many bytes of the stream
/// pattern and closes.
pub const SOURCE_PORT: u16 = 5002;

/// The control datagram that ends the workload, and its answer.
pub const QUIT: &[u8] = b"quit";
pub const BYE: &[u8] = b"bye";

/// Longest source request line, newline included.
pub const REQUEST_MAX: usize = 64;
/// Most bytes one source session sends (16 GiB).
pub const SOURCE_MAX: u64 = 16 << 30;

/// Byte `offset` of the TCP source's stream for `seed`: byte `offset % 8` of the
/// little-endian [`pattern_word`] at `offset` rounded down to a multiple of 8 (the block
/// workloads' pattern, read as a byte stream).
#[inline]
pub fn stream_byte(offset: u64, seed: u64) -> u8 {
    pattern_word(offset & !7, seed).to_le_bytes()[(offset & 7) as usize]
}

/// Fills `buf` with the stream bytes from `offset` on (any alignment).
pub fn fill_stream(buf: &mut [u8], offset: u64, seed: u64) {
    // Unaligned head byte by byte, then whole words, then the tail byte by byte.
    let head = (offset.wrapping_neg() & 7).min(buf.len() as u64) as usize;
    let (first, rest) = buf.split_at_mut(head);
    for (i, b) in first.iter_mut().enumerate() {
        *b = stream_byte(offset + i as u64, seed);
    }
    let aligned = offset + head as u64;
    let whole = rest.len() & !7;
    let (words, tail) = rest.split_at_mut(whole);
    for (i, w) in words.chunks_exact_mut(8).enumerate() {
        w.copy_from_slice(&pattern_word(aligned + 8 * i as u64, seed).to_le_bytes());
    }
    let tail_at = aligned + whole as u64;
    for (i, b) in tail.iter_mut().enumerate() {
        *b = stream_byte(tail_at + i as u64, seed);
    }
}

/// A parsed source request: how many bytes to send and the pattern seed (default 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SourceRequest {
    pub bytes: u64,
    pub seed: u64,
}

/// Parses a request line `<bytes>[ <seed>]` (decimal or `0x` hex, newline excluded);
/// `bytes` at most [`SOURCE_MAX`].
pub fn parse_source_request(line: &[u8]) -> Option<SourceRequest> {
    let text = core::str::from_utf8(line).ok()?.trim();
    let mut words = text.split_ascii_whitespace();
    let bytes = crate::cmdline::parse_u64(words.next()?)?;
    let seed = match words.next() {
        Some(w) => crate::cmdline::parse_u64(w)?,
        None => 1,
    };
    (words.next().is_none() && bytes <= SOURCE_MAX).then_some(SourceRequest { bytes, seed })
}

/// The sink's answer once the peer has closed its side: `bytes=<n> crc32=<8 hex digits>\n`.
pub fn sink_reply(bytes: u64, crc32: u32) -> LineBuf<64> {
    let mut line = LineBuf::new();
    let _ = writeln!(line, "bytes={bytes} crc32={crc32:08x}");
    line
}

/// Parses `A.B.C.D/LEN` (LEN 1..=32).
pub fn parse_cidr(s: &str) -> Option<(Ipv4Addr, u8)> {
    let (addr, len) = s.split_once('/')?;
    let len: u8 = len.parse().ok().filter(|l| (1..=32).contains(l))?;
    Some((addr.parse().ok()?, len))
}

/// What an Ethernet frame is, as far as the workload's counters and filter care.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frame {
    /// ARP from `sender` (IPv4 over Ethernet).
    Arp { sender: Ipv4Addr },
    /// IPv4 from `src` to `dst`; `icmp_type` for ICMP.
    Ipv4 {
        src: Ipv4Addr,
        dst: Ipv4Addr,
        protocol: IpProtocol,
        icmp: Option<Icmpv4Message>,
    },
    /// Anything else (other EtherTypes, truncated or malformed frames).
    Other,
}

impl Frame {
    /// Classifies an Ethernet frame (without FCS).
    pub fn classify(bytes: &[u8]) -> Frame {
        let Ok(eth) = EthernetFrame::new_checked(bytes) else {
            return Frame::Other;
        };
        match eth.ethertype() {
            EthernetProtocol::Arp => match ArpPacket::new_checked(eth.payload()) {
                Ok(arp) if arp.protocol_len() == 4 => {
                    match <[u8; 4]>::try_from(arp.source_protocol_addr()) {
                        Ok(a) => Frame::Arp {
                            sender: Ipv4Addr::from(a),
                        },
                        Err(_) => Frame::Other,
                    }
                }
                _ => Frame::Other,
            },
            EthernetProtocol::Ipv4 => match Ipv4Packet::new_checked(eth.payload()) {
                Ok(ip) => {
                    let protocol = ip.next_header();
                    let icmp = (protocol == IpProtocol::Icmp)
                        .then(|| Icmpv4Packet::new_checked(ip.payload()).ok())
                        .flatten()
                        .map(|p| p.msg_type());
                    Frame::Ipv4 {
                        src: ip.src_addr(),
                        dst: ip.dst_addr(),
                        protocol,
                        icmp,
                    }
                }
                Err(_) => Frame::Other,
            },
            _ => Frame::Other,
        }
    }

    /// Whether the frame comes from `peer` (ARP sender or IPv4 source).
    pub fn is_from(&self, peer: Ipv4Addr) -> bool {
        match *self {
            Frame::Arp { sender } => sender == peer,
            Frame::Ipv4 { src, .. } => src == peer,
            Frame::Other => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blk::fill_pattern;
    use std::vec;

    #[test]
    fn the_stream_is_the_block_pattern_read_as_bytes() {
        let mut words = vec![0u8; 4096];
        fill_pattern(&mut words, 0, 9);
        for (o, &b) in words.iter().enumerate() {
            assert_eq!(stream_byte(o as u64, 9), b);
        }
        // Every alignment and length, against the byte-by-byte definition.
        for start in 0..24u64 {
            for len in 0..40usize {
                let mut buf = vec![0u8; len];
                fill_stream(&mut buf, start, 9);
                assert_eq!(
                    &buf[..],
                    &words[start as usize..start as usize + len],
                    "{start} {len}"
                );
            }
        }
    }

    #[test]
    fn source_requests() {
        assert_eq!(
            parse_source_request(b"67108864"),
            Some(SourceRequest {
                bytes: 64 << 20,
                seed: 1
            })
        );
        assert_eq!(
            parse_source_request(b"  10 0x7 \r"),
            Some(SourceRequest { bytes: 10, seed: 7 })
        );
        for bad in [
            &b""[..],
            b"x",
            b"1 2 3",
            b"-1",
            b"17179869185",
            b"\xff",
            b"1 y",
        ] {
            assert_eq!(parse_source_request(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn sink_reply_line() {
        assert_eq!(sink_reply(5, 0xabc).as_bytes(), b"bytes=5 crc32=00000abc\n");
    }

    #[test]
    fn cidr() {
        assert_eq!(
            parse_cidr("10.99.0.2/24"),
            Some((Ipv4Addr::new(10, 99, 0, 2), 24))
        );
        for bad in [
            "10.99.0.2",
            "10.99.0.2/0",
            "10.99.0.2/33",
            "10.99.0/24",
            "x/8",
        ] {
            assert_eq!(parse_cidr(bad), None, "{bad}");
        }
    }

    #[test]
    fn frames() {
        // ARP request from 10.99.0.1.
        let mut arp = vec![0u8; 42];
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        arp[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
        arp[28..32].copy_from_slice(&[10, 99, 0, 1]);
        let f = Frame::classify(&arp);
        assert_eq!(
            f,
            Frame::Arp {
                sender: Ipv4Addr::new(10, 99, 0, 1)
            }
        );
        assert!(f.is_from(Ipv4Addr::new(10, 99, 0, 1)));
        assert!(!f.is_from(Ipv4Addr::new(10, 99, 0, 3)));

        // ICMP echo request 10.99.0.1 -> 10.99.0.2.
        let mut ping = vec![0u8; 14 + 20 + 8];
        ping[12..14].copy_from_slice(&[0x08, 0x00]);
        ping[14] = 0x45;
        ping[16..18].copy_from_slice(&28u16.to_be_bytes());
        ping[22] = 64;
        ping[23] = 1;
        ping[26..30].copy_from_slice(&[10, 99, 0, 1]);
        ping[30..34].copy_from_slice(&[10, 99, 0, 2]);
        ping[34] = 8;
        assert_eq!(
            Frame::classify(&ping),
            Frame::Ipv4 {
                src: Ipv4Addr::new(10, 99, 0, 1),
                dst: Ipv4Addr::new(10, 99, 0, 2),
                protocol: IpProtocol::Icmp,
                icmp: Some(Icmpv4Message::EchoRequest),
            }
        );
        for junk in [&[][..], &[0u8; 13][..], &ping[..20], &arp[..20]] {
            assert_eq!(Frame::classify(junk), Frame::Other);
        }
        assert!(!Frame::Other.is_from(Ipv4Addr::new(10, 99, 0, 1)));
    }
}
