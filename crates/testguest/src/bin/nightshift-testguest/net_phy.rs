//! smoltcp's view of a virtio-net device: `virtio-drivers`' raw driver (`VirtIONetRaw`)
//! under smoltcp's `phy::Device`, with the packet buffers, the peer filter and the frame
//! counters of the `net` workload.
//!
//! Buffers: every receive-queue entry holds one 2 KiB buffer (virtio-net header + one
//! Ethernet frame, no merged buffers), all posted at start and re-posted as soon as smoltcp
//! has consumed the frame in it; a transmit buffer is taken per frame and returned when the
//! device has used it. So the guest never runs out of receive buffers for longer than one
//! frame's processing, and smoltcp is told "not now" (no token) only while every transmit
//! descriptor is in flight.
//!
//! EVENT_IDX: `virtio-drivers` 0.13 writes `used_event` when it pops a used entry but has
//! no full barrier between that store and its next load of the used index (Linux has
//! `virtio_mb()` there), so on x86 the load may pass the store while the device, having
//! written the used index, reads the old `used_event` and suppresses the interrupt: a
//! halt that waits for it for nothing. [`used_event_fence`] is that barrier, put after
//! the pops (transmit reclaim here, receive pops before the serve loop's last look).
//!
//! Filter: only ARP from the peer and IPv4 from the peer reach smoltcp; everything else
//! is counted (`rx_ignored`) and dropped, so the guest answers no other host.

use core::net::Ipv4Addr;

use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::time::Instant;
use smoltcp::wire::Icmpv4Message;
use testguest::net::Frame;
use virtio_drivers::device::net::VirtIONetRaw;
use virtio_drivers::transport::mmio::MmioTransport;

use crate::dma::{self, GuestHal};
use crate::vdevices::Resetting;

/// The full barrier `virtio-drivers` lacks between writing `used_event` (in a pop) and
/// reading the used index again (see the module docs).
pub fn used_event_fence() {
    core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
}

/// Bytes per packet buffer: the 12-byte virtio-net header and a 1514-byte frame fit.
const BUF: usize = 2048;
/// Largest Ethernet frame (without FCS) for an IP MTU of 1500.
pub const FRAME_MAX: usize = 1514;

/// The driver, over the MMIO transport, with `N` entries per queue.
pub type Driver<const N: usize> = VirtIONetRaw<GuestHal, MmioTransport<'static>, N>;

/// Frame counters (both directions), reported on the result line.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counters {
    pub rx_frames: u64,
    pub rx_bytes: u64,
    pub tx_frames: u64,
    pub tx_bytes: u64,
    /// Frames dropped by the peer filter (other hosts, IPv6, other EtherTypes).
    pub rx_ignored: u64,
    pub arp_rx: u64,
    pub arp_tx: u64,
    pub icmp_echo_rx: u64,
    pub icmp_echo_tx: u64,
    /// Receive completions the driver refused (wrong token, too short) and transmits the
    /// queue refused.
    pub rx_errors: u64,
    pub tx_errors: u64,
}

/// Packet buffers of one queue: `N` buffers of `BUF` bytes in one allocation, and which
/// buffer each in-flight descriptor chain (token) carries.
struct Pool<const N: usize> {
    mem: &'static mut [u8],
    by_token: [Option<u16>; N],
    /// Transmit only: free buffers (a stack) and the length each in-flight one was given.
    free: [u16; N],
    nfree: usize,
    len: [u16; N],
}

impl<const N: usize> Pool<N> {
    fn new() -> Option<Self> {
        let mut free = [0u16; N];
        for (i, f) in free.iter_mut().enumerate() {
            *f = i as u16;
        }
        Some(Self {
            mem: dma::alloc_bytes(N * BUF)?,
            by_token: [None; N],
            free,
            nfree: N,
            len: [0; N],
        })
    }

    fn buf(&mut self, i: usize) -> &mut [u8] {
        &mut self.mem[i * BUF..(i + 1) * BUF]
    }
}

/// A virtio-net device as smoltcp sees it.
pub struct Phy<const N: usize> {
    net: Resetting<Driver<N>>,
    rx: Pool<N>,
    tx: Pool<N>,
    /// The receive buffer whose frame smoltcp was last handed, to re-post.
    consumed: Option<u16>,
    peer: Ipv4Addr,
    pub counters: Counters,
}

/// Why the device could not be set up.
pub type PhyError = &'static str;

impl<const N: usize> Phy<N> {
    /// Takes over an initialised driver and posts every receive buffer.
    pub fn new(net: Resetting<Driver<N>>, peer: Ipv4Addr) -> Result<Self, PhyError> {
        let mut phy = Self {
            net,
            rx: Pool::new().ok_or("no-dma-memory")?,
            tx: Pool::new().ok_or("no-dma-memory")?,
            consumed: None,
            peer,
            counters: Counters::default(),
        };
        for i in 0..N {
            phy.post_rx(i as u16).map_err(|_| "rx-post-failed")?;
        }
        Ok(phy)
    }

    pub fn mac(&self) -> [u8; 6] {
        self.net.mac_address()
    }

    /// Reads InterruptStatus and acknowledges it (two MMIO exits).
    pub fn ack_interrupt(&mut self) {
        let _ = self.net.ack_interrupt();
    }

    /// Asks the device for no interrupts (poll mode).
    pub fn disable_interrupts(&mut self) {
        self.net.disable_interrupts();
    }

    /// Whether a received frame is waiting in the used ring.
    pub fn rx_ready(&self) -> bool {
        self.net.poll_receive().is_some()
    }

    /// Whether a transmit buffer is free (after taking back the ones the device used).
    pub fn can_transmit(&mut self) -> bool {
        self.reclaim_tx();
        self.tx.nfree > 0
    }

    /// Whether the device has used every transmit buffer it was given, so each frame
    /// smoltcp handed over is on the wire (an answer queued just before the workload
    /// ends must not be lost with the VM).
    pub fn transmits_done(&mut self) -> bool {
        self.reclaim_tx();
        self.tx.nfree == N
    }

    fn post_rx(&mut self, i: u16) -> Result<(), virtio_drivers::Error> {
        let buf = self.rx.buf(usize::from(i));
        // SAFETY: the buffer belongs to the receive pool alone and is not touched again
        // until the device has returned it (`next_rx` completes it before reading).
        let token = unsafe { self.net.receive_begin(buf)? };
        self.rx.by_token[usize::from(token) % N] = Some(i);
        Ok(())
    }

    /// Gives the buffer of the frame smoltcp consumed last back to the device.
    pub fn repost_consumed(&mut self) {
        if let Some(i) = self.consumed.take() {
            if self.post_rx(i).is_err() {
                self.counters.rx_errors += 1;
            }
        }
    }

    /// Takes back the transmit buffers the device has used.
    fn reclaim_tx(&mut self) {
        while let Some(token) = self.net.poll_transmit() {
            let Some(i) = self.tx.by_token[usize::from(token) % N].take() else {
                // A used entry for nothing in flight: the queue is broken.
                self.counters.tx_errors += 1;
                break;
            };
            let len = usize::from(self.tx.len[usize::from(i)]);
            let buf = &self.tx.buf(usize::from(i))[..len];
            // SAFETY: `buf` is the slice `transmit` passed to `transmit_begin` for this
            // token (same buffer, same length).
            if unsafe { self.net.transmit_complete(token, buf) }.is_err() {
                self.counters.tx_errors += 1;
            }
            self.tx.free[self.tx.nfree] = i;
            self.tx.nfree += 1;
            used_event_fence();
        }
    }

    /// The next received frame from the peer: (receive buffer, frame offset, length).
    fn next_rx(&mut self) -> Option<(u16, usize, usize)> {
        self.repost_consumed();
        loop {
            let token = self.net.poll_receive()?;
            let Some(i) = self.rx.by_token[usize::from(token) % N].take() else {
                self.counters.rx_errors += 1;
                return None;
            };
            let buf = self.rx.buf(usize::from(i));
            // SAFETY: `buf` is the buffer `post_rx` gave the device with this token.
            let done = unsafe { self.net.receive_complete(token, buf) };
            let Ok((hdr, len)) = done else {
                self.counters.rx_errors += 1;
                let _ = self.post_rx(i);
                continue;
            };
            let len = len.min(BUF - hdr);
            let frame = Frame::classify(&self.rx.buf(usize::from(i))[hdr..hdr + len]);
            if !frame.is_from(self.peer) {
                self.counters.rx_ignored += 1;
                let _ = self.post_rx(i);
                continue;
            }
            let c = &mut self.counters;
            c.rx_frames += 1;
            c.rx_bytes += len as u64;
            match frame {
                Frame::Arp { .. } => c.arp_rx += 1,
                Frame::Ipv4 {
                    icmp: Some(Icmpv4Message::EchoRequest),
                    ..
                } => c.icmp_echo_rx += 1,
                _ => {}
            }
            self.consumed = Some(i);
            return Some((i, hdr, len));
        }
    }
}

/// A received frame, in its receive buffer (re-posted at the next `receive`).
pub struct RxToken<'a> {
    frame: &'a [u8],
}

impl phy::RxToken for RxToken<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.frame)
    }
}

/// Room for one frame in a free transmit buffer (checked when the token was made).
pub struct TxToken<'a, const N: usize> {
    net: &'a mut Driver<N>,
    pool: &'a mut Pool<N>,
    counters: &'a mut Counters,
}

impl<const N: usize> phy::TxToken for TxToken<'_, N> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let Self {
            net,
            pool,
            counters,
        } = self;
        pool.nfree -= 1;
        let i = pool.free[pool.nfree];
        let at = usize::from(i) * BUF;
        let buf = &mut pool.mem[at..at + BUF];
        // The header is 12 bytes; the buffer has room for it and a full frame.
        let hdr = net.fill_buffer_header(buf).unwrap_or(0);
        debug_assert!(len <= BUF - hdr);
        let len = len.min(BUF - hdr);
        let result = f(&mut buf[hdr..hdr + len]);
        match Frame::classify(&buf[hdr..hdr + len]) {
            Frame::Arp { .. } => counters.arp_tx += 1,
            Frame::Ipv4 {
                icmp: Some(Icmpv4Message::EchoReply),
                ..
            } => counters.icmp_echo_tx += 1,
            _ => {}
        }
        let total = hdr + len;
        pool.len[usize::from(i)] = total as u16;
        // SAFETY: the buffer stays out of the free list, untouched, until `reclaim_tx`
        // has taken it back from the device with the same slice.
        match unsafe { net.transmit_begin(&pool.mem[at..at + total]) } {
            Ok(token) => {
                pool.by_token[usize::from(token) % N] = Some(i);
                counters.tx_frames += 1;
                counters.tx_bytes += len as u64;
            }
            Err(_) => {
                counters.tx_errors += 1;
                pool.free[pool.nfree] = i;
                pool.nfree += 1;
            }
        }
        result
    }
}

impl<const N: usize> phy::Device for Phy<N> {
    type RxToken<'a>
        = RxToken<'a>
    where
        Self: 'a;
    type TxToken<'a>
        = TxToken<'a, N>
    where
        Self: 'a;

    fn receive(&mut self, _now: Instant) -> Option<(RxToken<'_>, TxToken<'_, N>)> {
        // A reply may be due for the frame: only hand one out with a transmit buffer free.
        if !self.can_transmit() {
            return None;
        }
        let (i, hdr, len) = self.next_rx()?;
        let at = usize::from(i) * BUF + hdr;
        let Self {
            net,
            rx,
            tx,
            counters,
            ..
        } = self;
        Some((
            RxToken {
                frame: &rx.mem[at..at + len],
            },
            TxToken {
                net: &mut **net,
                pool: tx,
                counters,
            },
        ))
    }

    fn transmit(&mut self, _now: Instant) -> Option<TxToken<'_, N>> {
        if !self.can_transmit() {
            return None;
        }
        Some(TxToken {
            net: &mut *self.net,
            pool: &mut self.tx,
            counters: &mut self.counters,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = FRAME_MAX;
        caps
    }
}
