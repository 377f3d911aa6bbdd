//! The host's side of the test guest's `net` services (docs/guest-abi.md, "Network"):
//! UDP echo, the control port, the TCP sink and the TCP source, as the network tests and
//! `nightshift bench` use them. Call these on a thread inside the guest's namespace
//! ([`crate::netns::Netns::run`]): they talk only to [`GUEST_IP`] from [`HOST_IP`], and
//! every wait is bounded by a socket timeout.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

pub use crate::netns::{GUEST_IP, HOST_IP};

/// The guest's fixed ports (testguest::net).
pub const ECHO_PORT: u16 = 7;
pub const CONTROL_PORT: u16 = 9;
pub const SINK_PORT: u16 = 5001;
pub const SOURCE_PORT: u16 = 5002;
/// Largest UDP payload at a 1500-byte MTU.
pub const UDP_MAX: usize = 1472;

/// The `net_*` command-line words for the link.
pub fn guest_net_args() -> String {
    format!("net_ip={GUEST_IP}/24 net_peer={HOST_IP}")
}

/// Why an exchange with the guest failed.
#[derive(Debug, thiserror::Error)]
pub enum GuestNetError {
    /// A socket call failed (`what` says which, and where in the exchange).
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// The guest answered, but not what it should have.
    #[error("{0}")]
    Wrong(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> GuestNetError {
    let what = what.into();
    move |source| GuestNetError::Io { what, source }
}

/// Byte `o` of the guest's TCP source stream: byte `o % 8` of the little-endian word
/// `(o & !7) * 0x9E37_79B9_7F4A_7C15 ^ seed` (the block workloads' pattern as a stream).
pub fn fill_stream(buf: &mut [u8], offset: u64, seed: u64) {
    for (i, b) in buf.iter_mut().enumerate() {
        let o = offset + i as u64;
        let word = (o & !7).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ seed;
        *b = word.to_le_bytes()[(o & 7) as usize];
    }
}

const IO_TIMEOUT: Duration = Duration::from_secs(10);
const CHUNK: usize = 1 << 20;

fn guest(port: u16) -> SocketAddr {
    SocketAddr::from((GUEST_IP, port))
}

/// A UDP socket on the tap's address connected to the guest's `port`.
pub fn udp_to(port: u16, timeout: Duration) -> Result<UdpSocket, GuestNetError> {
    let sock = UdpSocket::bind((HOST_IP, 0)).map_err(io("udp: bind"))?;
    sock.set_read_timeout(Some(timeout))
        .map_err(io("udp: timeout"))?;
    sock.connect(guest(port)).map_err(io("udp: connect"))?;
    Ok(sock)
}

/// UDP echo: one datagram of every size in `sizes`, each answered within 2 s with the same
/// bytes. Returns how many were echoed.
pub fn udp_sweep(sizes: std::ops::RangeInclusive<usize>) -> Result<usize, GuestNetError> {
    let sock = udp_to(ECHO_PORT, Duration::from_secs(2))?;
    let mut reply = vec![0u8; 2048];
    let mut echoed = 0;
    for size in sizes {
        let payload: Vec<u8> = (0..size).map(|i| (i * 31 + size * 7) as u8).collect();
        sock.send(&payload)
            .map_err(io(format!("size {size}: send")))?;
        let n = sock
            .recv(&mut reply)
            .map_err(io(format!("size {size}: no echo")))?;
        if reply[..n] != payload[..] {
            return Err(GuestNetError::Wrong(format!(
                "size {size}: echo of {n} bytes differs"
            )));
        }
        echoed += 1;
    }
    Ok(echoed)
}

/// The control datagram: `quit`, answered `bye` (sent up to three times).
pub fn quit() -> Result<(), GuestNetError> {
    let sock = udp_to(CONTROL_PORT, Duration::from_secs(2))?;
    let mut reply = [0u8; 16];
    for _ in 0..3 {
        sock.send(b"quit").map_err(io("quit: send"))?;
        if let Ok(n) = sock.recv(&mut reply) {
            return if &reply[..n] == b"bye" {
                Ok(())
            } else {
                Err(GuestNetError::Wrong(format!(
                    "control answered {:?}",
                    &reply[..n]
                )))
            };
        }
    }
    Err(GuestNetError::Wrong("no answer to quit".into()))
}

/// How long a refused connection is retried: the guest prints `net dev=` before its
/// first poll, and its TCP services start listening at that poll.
const LISTEN_GRACE: Duration = Duration::from_secs(2);

fn connect(port: u16) -> Result<TcpStream, GuestNetError> {
    let what = format!("tcp: connect to port {port}");
    let give_up = Instant::now() + LISTEN_GRACE;
    let s = loop {
        match TcpStream::connect_timeout(&guest(port), IO_TIMEOUT) {
            Err(e)
                if e.kind() == std::io::ErrorKind::ConnectionRefused
                    && Instant::now() < give_up =>
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            r => break r.map_err(io(what))?,
        }
    };
    s.set_read_timeout(Some(IO_TIMEOUT))
        .map_err(io("tcp: timeout"))?;
    s.set_write_timeout(Some(IO_TIMEOUT))
        .map_err(io("tcp: timeout"))?;
    Ok(s)
}

/// A finished bulk transfer: bytes and seconds (connection to the last byte checked).
#[derive(Clone, Copy, Debug, Default)]
pub struct Transfer {
    pub bytes: u64,
    pub secs: f64,
}

impl Transfer {
    pub fn mbit_s(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.secs / 1e6
    }
}

/// To the guest's sink: `bytes` of the stream for `seed`, then FIN; the guest's answer
/// must give the same count and CRC32.
pub fn tcp_to_guest(bytes: u64, seed: u64) -> Result<Transfer, GuestNetError> {
    to_sink(seed, |sent| (bytes - sent).min(CHUNK as u64) as usize)
}

/// To the guest's sink as [`tcp_to_guest`], sending until `until` (at least one
/// `chunk`-byte write), checked the same way.
pub fn tcp_to_guest_until(
    until: Instant,
    chunk: usize,
    seed: u64,
) -> Result<Transfer, GuestNetError> {
    let mut first = true;
    to_sink(seed, move |_| {
        let more = first || Instant::now() < until;
        first = false;
        if more {
            chunk
        } else {
            0
        }
    })
}

/// Sends `next(sent)` bytes at a time until it says 0, then FIN, and checks the reply.
fn to_sink(seed: u64, mut next: impl FnMut(u64) -> usize) -> Result<Transfer, GuestNetError> {
    let mut s = connect(SINK_PORT)?;
    let t0 = Instant::now();
    let mut crc = crc32fast::Hasher::new();
    let mut buf = Vec::new();
    let mut sent = 0u64;
    loop {
        let n = next(sent);
        if n == 0 {
            break;
        }
        buf.resize(n, 0);
        fill_stream(&mut buf, sent, seed);
        crc.update(&buf);
        s.write_all(&buf)
            .map_err(io(format!("sink: write at {sent}")))?;
        sent += n as u64;
    }
    s.shutdown(std::net::Shutdown::Write)
        .map_err(io("sink: shutdown"))?;
    let mut reply = String::new();
    s.read_to_string(&mut reply).map_err(io("sink: reply"))?;
    let secs = t0.elapsed().as_secs_f64();
    let want = format!("bytes={sent} crc32={:08x}\n", crc.finalize());
    if reply != want {
        return Err(GuestNetError::Wrong(format!(
            "sink answered {reply:?}, expected {want:?}"
        )));
    }
    Ok(Transfer { bytes: sent, secs })
}

/// From the guest's source: asks for `bytes` of the stream for `seed` and checks every
/// byte and the count.
pub fn tcp_from_guest(bytes: u64, seed: u64) -> Result<Transfer, GuestNetError> {
    let mut s = connect(SOURCE_PORT)?;
    let t0 = Instant::now();
    s.write_all(format!("{bytes} {seed}\n").as_bytes())
        .map_err(io("source: request"))?;
    let mut buf = vec![0u8; CHUNK];
    let mut want = vec![0u8; CHUNK];
    let mut got = 0u64;
    loop {
        let n = s
            .read(&mut buf)
            .map_err(io(format!("source: read at {got}")))?;
        if n == 0 {
            break;
        }
        if got + n as u64 > bytes {
            return Err(GuestNetError::Wrong(format!(
                "source sent more than {bytes} bytes"
            )));
        }
        fill_stream(&mut want[..n], got, seed);
        if let Some(i) = (0..n).find(|&i| buf[i] != want[i]) {
            return Err(GuestNetError::Wrong(format!(
                "source: byte {} is {:#04x}, expected {:#04x}",
                got + i as u64,
                buf[i],
                want[i]
            )));
        }
        got += n as u64;
    }
    let secs = t0.elapsed().as_secs_f64();
    if got != bytes {
        return Err(GuestNetError::Wrong(format!(
            "source sent {got} bytes, expected {bytes}"
        )));
    }
    Ok(Transfer { bytes, secs })
}

/// One UDP request/response with the echo service on a socket from [`udp_to`]: sends
/// `payload` (whose first 8 bytes the caller makes unique) and waits for the same bytes
/// back. Returns the round trip, or None if no answer came within the socket's timeout.
/// A stale answer (to an earlier request that had timed out) is skipped.
pub fn udp_round_trip(
    sock: &UdpSocket,
    payload: &[u8],
    reply: &mut [u8],
) -> Result<Option<Duration>, GuestNetError> {
    let t0 = Instant::now();
    sock.send(payload).map_err(io("rr: send"))?;
    loop {
        match sock.recv(reply) {
            Ok(n) if reply[..n] == *payload => return Ok(Some(t0.elapsed())),
            Ok(n) if n >= 8 && n == payload.len() && reply[8..n] == payload[8..] => continue,
            Ok(n) => {
                return Err(GuestNetError::Wrong(format!(
                    "rr: echo of {n} bytes differs from the {} sent",
                    payload.len()
                )))
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(None)
            }
            Err(e) => return Err(io("rr: recv")(e)),
        }
    }
}
