//! The `net` workload's services on smoltcp sockets: UDP echo, the UDP control port, the
//! TCP sink and the TCP source (ports and line formats in `testguest::net` and
//! docs/guest-abi.md, "Network").
//!
//! Each TCP service serves one connection at a time and listens again when it is over; a
//! session counts once its data is through (sink: the peer closed and the reply line is
//! queued; source: every byte sent and acknowledged). Each service is a small state
//! machine advanced by [`Services::step`] after every `Interface::poll`.

use smoltcp::iface::{SocketHandle, SocketSet};
use smoltcp::socket::{tcp, udp};
use smoltcp::time::Duration;
use testguest::net::{
    fill_stream, parse_source_request, sink_reply, SourceRequest, BYE, CONTROL_PORT, ECHO_PORT,
    QUIT, REQUEST_MAX, SINK_PORT, SOURCE_PORT,
};

use crate::{dma, println, time, x86};

/// Socket buffer sizes. 256 KiB of TCP window (smoltcp scales the window above 64 KiB).
const TCP_BULK: usize = 256 << 10;
const TCP_SMALL: usize = 4 << 10;
const UDP_PAYLOAD: usize = 64 << 10;
const UDP_PACKETS: usize = 64;
const CONTROL_PAYLOAD: usize = 4 << 10;
const CONTROL_PACKETS: usize = 4;
/// A TCP connection that shows no sign of life for this long is dropped.
const TCP_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest UDP payload echoed (a 1500-byte IP MTU).
const UDP_MAX: usize = 1472;

/// What the services did, for the result line.
#[derive(Clone, Copy, Debug, Default)]
pub struct ServiceStats {
    pub udp_echoed: u64,
    pub udp_echo_bytes: u64,
    /// Datagrams not echoed (the transmit buffer had no room, or larger than the MTU).
    pub udp_dropped: u64,
    pub sink_sessions: u64,
    pub sink_bytes: u64,
    pub source_sessions: u64,
    pub source_bytes: u64,
    /// TCP connections that ended before their session was through (reset, timeout, bad
    /// request line).
    pub tcp_aborted: u64,
    /// Control datagrams other than `quit`.
    pub control_other: u64,
}

enum Sink {
    Idle,
    Receiving {
        bytes: u64,
        crc: crc32fast::Hasher,
        t0: u64,
    },
    Closing,
}

enum Source {
    Idle,
    Request {
        line: [u8; REQUEST_MAX],
        len: usize,
    },
    Sending {
        sent: u64,
        req: SourceRequest,
        t0: u64,
    },
    /// Everything queued and the FIN sent; counted once the peer acknowledged it all.
    Closing {
        req: SourceRequest,
        t0: u64,
        counted: bool,
    },
}

/// The four sockets and their state.
pub struct Services {
    echo: SocketHandle,
    control: SocketHandle,
    sink: SocketHandle,
    source: SocketHandle,
    sink_state: Sink,
    source_state: Source,
    pub stats: ServiceStats,
    /// A `quit` datagram arrived.
    pub quit: bool,
}

/// Why the services could not be set up.
pub type ServiceError = &'static str;

fn buffer(len: usize) -> Result<&'static mut [u8], ServiceError> {
    dma::alloc_bytes(len).ok_or("no-dma-memory")
}

fn udp_socket(
    meta: &'static mut [udp::PacketMetadata],
    payload: usize,
) -> Result<udp::Socket<'static>, ServiceError> {
    let half = meta.len() / 2;
    let (rx_meta, tx_meta) = meta.split_at_mut(half);
    Ok(udp::Socket::new(
        udp::PacketBuffer::new(rx_meta, buffer(payload)?),
        udp::PacketBuffer::new(tx_meta, buffer(payload)?),
    ))
}

fn tcp_socket(rx: usize, tx: usize) -> Result<tcp::Socket<'static>, ServiceError> {
    let mut s = tcp::Socket::new(
        tcp::SocketBuffer::new(buffer(rx)?),
        tcp::SocketBuffer::new(buffer(tx)?),
    );
    s.set_timeout(Some(TCP_TIMEOUT));
    s.set_nagle_enabled(false);
    Ok(s)
}

fn metadata(n: usize) -> Result<&'static mut [udp::PacketMetadata], ServiceError> {
    let bytes = buffer(n * core::mem::size_of::<udp::PacketMetadata>())?;
    let at = bytes.as_mut_ptr().cast::<udp::PacketMetadata>();
    for i in 0..n {
        // SAFETY: `bytes` is page-aligned memory of the right size owned by this caller
        // alone for the rest of the run; each element is initialised before the slice is
        // made.
        unsafe { at.add(i).write(udp::PacketMetadata::EMPTY) };
    }
    // SAFETY: as above: `n` initialised elements, unique and `'static`.
    Ok(unsafe { core::slice::from_raw_parts_mut(at, n) })
}

/// Microseconds between two TSC values, at least 1.
fn us_since(t0: u64) -> u64 {
    time::tsc_to_us(x86::rdtsc().saturating_sub(t0)).max(1)
}

fn mbit_s(bytes: u64, us: u64) -> u64 {
    bytes * 8 / us.max(1)
}

impl Services {
    /// Creates and binds the sockets (their buffers come from the DMA allocator).
    pub fn new(sockets: &mut SocketSet<'_>) -> Result<Self, ServiceError> {
        let mut echo = udp_socket(metadata(2 * UDP_PACKETS)?, UDP_PAYLOAD)?;
        echo.bind(ECHO_PORT).map_err(|_| "bind-failed")?;
        let mut control = udp_socket(metadata(2 * CONTROL_PACKETS)?, CONTROL_PAYLOAD)?;
        control.bind(CONTROL_PORT).map_err(|_| "bind-failed")?;
        let sink = tcp_socket(TCP_BULK, TCP_SMALL)?;
        let source = tcp_socket(TCP_SMALL, TCP_BULK)?;
        Ok(Self {
            echo: sockets.add(echo),
            control: sockets.add(control),
            sink: sockets.add(sink),
            source: sockets.add(source),
            sink_state: Sink::Idle,
            source_state: Source::Idle,
            stats: ServiceStats::default(),
            quit: false,
        })
    }

    /// TCP sessions completed so far.
    pub fn sessions(&self) -> u64 {
        self.stats.sink_sessions + self.stats.source_sessions
    }

    /// Advances every service after an `Interface::poll`.
    pub fn step(&mut self, sockets: &mut SocketSet<'_>) {
        self.echo(sockets.get_mut::<udp::Socket>(self.echo));
        self.control(sockets.get_mut::<udp::Socket>(self.control));
        self.sink(sockets.get_mut::<tcp::Socket>(self.sink));
        self.source(sockets.get_mut::<tcp::Socket>(self.source));
    }

    /// Whether nothing is left to send: the UDP answers are out and no TCP session is
    /// open (the workload may end).
    pub fn settled(&self, sockets: &SocketSet<'_>) -> bool {
        let udp_out = |h| sockets.get::<udp::Socket>(h).send_queue() == 0;
        let tcp_done = |h| !sockets.get::<tcp::Socket>(h).is_active();
        udp_out(self.echo) && udp_out(self.control) && tcp_done(self.sink) && tcp_done(self.source)
    }

    fn echo(&mut self, s: &mut udp::Socket<'_>) {
        let mut data = [0u8; UDP_MAX];
        while let Ok((payload, meta)) = s.peek() {
            let (n, endpoint) = (payload.len(), meta.endpoint);
            if n > UDP_MAX {
                let _ = s.recv();
                self.stats.udp_dropped += 1;
                continue;
            }
            data[..n].copy_from_slice(payload);
            match s.send_slice(&data[..n], endpoint) {
                Ok(()) => {
                    let _ = s.recv();
                    self.stats.udp_echoed += 1;
                    self.stats.udp_echo_bytes += n as u64;
                }
                // No room to answer now: leave it queued until the answers drain.
                Err(udp::SendError::BufferFull) => break,
                Err(_) => {
                    let _ = s.recv();
                    self.stats.udp_dropped += 1;
                }
            }
        }
    }

    fn control(&mut self, s: &mut udp::Socket<'_>) {
        let mut data = [0u8; 64];
        while let Ok((n, meta)) = s.recv_slice(&mut data) {
            if &data[..n] == QUIT {
                self.quit = true;
                let _ = s.send_slice(BYE, meta.endpoint);
            } else {
                self.stats.control_other += 1;
            }
        }
    }

    fn sink(&mut self, s: &mut tcp::Socket<'_>) {
        loop {
            match &mut self.sink_state {
                Sink::Idle => {
                    if !s.is_open() && s.listen(SINK_PORT).is_err() {
                        return;
                    }
                    if !s.is_active() {
                        return;
                    }
                    self.sink_state = Sink::Receiving {
                        bytes: 0,
                        crc: crc32fast::Hasher::new(),
                        t0: x86::rdtsc(),
                    };
                }
                Sink::Receiving { bytes, crc, t0 } => {
                    while s.can_recv() {
                        let got = s.recv(|b| {
                            crc.update(b);
                            (b.len(), b.len())
                        });
                        *bytes += got.unwrap_or(0) as u64;
                        if got.is_err() {
                            break;
                        }
                    }
                    match s.state() {
                        // The peer closed its side and every byte has been read.
                        tcp::State::CloseWait if !s.can_recv() => {
                            let (bytes, t0) = (*bytes, *t0);
                            let sum = core::mem::take(crc).finalize();
                            let reply = sink_reply(bytes, sum);
                            let _ = s.send_slice(reply.as_bytes());
                            s.close();
                            let us = us_since(t0);
                            self.stats.sink_sessions += 1;
                            self.stats.sink_bytes += bytes;
                            println!(
                                "net tcp service=sink bytes={bytes} crc32={sum:08x} us={us} mbit_s={}",
                                mbit_s(bytes, us)
                            );
                            self.sink_state = Sink::Closing;
                        }
                        tcp::State::Closed | tcp::State::TimeWait | tcp::State::Listen => {
                            self.stats.tcp_aborted += 1;
                            println!("net tcp service=sink aborted=1 bytes={bytes}");
                            self.sink_state = Sink::Idle;
                        }
                        _ => return,
                    }
                }
                Sink::Closing => {
                    if s.is_active() {
                        return;
                    }
                    self.sink_state = Sink::Idle;
                }
            }
        }
    }

    fn source(&mut self, s: &mut tcp::Socket<'_>) {
        loop {
            match &mut self.source_state {
                Source::Idle => {
                    if !s.is_open() && s.listen(SOURCE_PORT).is_err() {
                        return;
                    }
                    if !s.is_active() {
                        return;
                    }
                    self.source_state = Source::Request {
                        line: [0; REQUEST_MAX],
                        len: 0,
                    };
                }
                Source::Request { line, len } => {
                    // Take bytes up to and including the newline, no further.
                    while s.can_recv() && !line[..*len].contains(&b'\n') && *len < REQUEST_MAX {
                        let room = &mut line[*len..];
                        let took = s.recv(|b| {
                            let n = b
                                .iter()
                                .position(|&c| c == b'\n')
                                .map_or(b.len(), |p| p + 1)
                                .min(room.len());
                            room[..n].copy_from_slice(&b[..n]);
                            (n, n)
                        });
                        *len += took.unwrap_or(0);
                        if took.is_err() {
                            break;
                        }
                    }
                    let complete = line[..*len].last() == Some(&b'\n');
                    if complete {
                        match parse_source_request(&line[..*len - 1]) {
                            Some(req) => {
                                self.source_state = Source::Sending {
                                    sent: 0,
                                    req,
                                    t0: x86::rdtsc(),
                                };
                                continue;
                            }
                            None => {
                                println!("net tcp service=source aborted=1 bad-request=1");
                                s.abort();
                                self.stats.tcp_aborted += 1;
                                self.source_state = Source::Idle;
                                return;
                            }
                        }
                    }
                    let gone = !s.may_recv() && s.state() != tcp::State::SynReceived;
                    if *len == REQUEST_MAX || gone {
                        // No request line: too long, or the peer closed or reset first.
                        println!("net tcp service=source aborted=1 request_bytes={len}");
                        s.abort();
                        self.stats.tcp_aborted += 1;
                        self.source_state = Source::Idle;
                    }
                    return;
                }
                Source::Sending { sent, req, t0 } => {
                    while s.can_send() && *sent < req.bytes {
                        let at = *sent;
                        let left = req.bytes - at;
                        let seed = req.seed;
                        let n = s.send(|b| {
                            let n = (b.len() as u64).min(left) as usize;
                            fill_stream(&mut b[..n], at, seed);
                            (n, n)
                        });
                        match n {
                            Ok(n) if n > 0 => *sent += n as u64,
                            _ => break,
                        }
                    }
                    if !s.may_send() {
                        println!("net tcp service=source aborted=1 bytes={sent}");
                        self.stats.tcp_aborted += 1;
                        self.source_state = Source::Idle;
                        return;
                    }
                    if *sent < req.bytes {
                        return;
                    }
                    s.close();
                    self.source_state = Source::Closing {
                        req: *req,
                        t0: *t0,
                        counted: false,
                    };
                }
                Source::Closing { req, t0, counted } => {
                    if !*counted && s.send_queue() == 0 {
                        *counted = true;
                        let us = us_since(*t0);
                        self.stats.source_sessions += 1;
                        self.stats.source_bytes += req.bytes;
                        println!(
                            "net tcp service=source bytes={} seed={} us={us} mbit_s={}",
                            req.bytes,
                            req.seed,
                            mbit_s(req.bytes, us)
                        );
                    }
                    if s.is_active() {
                        return;
                    }
                    if !*counted {
                        println!(
                            "net tcp service=source aborted=1 unacked={}",
                            s.send_queue()
                        );
                        self.stats.tcp_aborted += 1;
                    }
                    self.source_state = Source::Idle;
                }
            }
        }
    }
}
