//! `workload=net net_mode=hostile`: the virtio-net device driven through the guest's own
//! split virtqueues (the `RingLayout` the block driver uses; not `virtio-drivers`, not
//! smoltcp), with descriptor chains no sound driver makes, receive buffers too small for
//! the host's frames, frames above 64 KiB, and a window with no receive buffers while the
//! host floods the tap. Each case prints a `hostile case=` line; at the end a normal
//! exchange (the host's echo request, echoed back) must still work. See docs/guest-abi.md,
//! "Hostile network mode", for the cases and the lines, and docs/containment.md for what
//! the VMM promises.
//!
//! The host takes part: when a case needs its frames the guest prints `nethostile
//! want=<what>` and waits for them (bounded). Everything is CPL3; the device interrupt is
//! the generic counting stub's.

use core::sync::atomic::{compiler_fence, fence, Ordering};

use testguest::blk::RingLayout;
use testguest::net_hostile::{self as proto, Tag};

use crate::dma::{r16, r32, w16, w32, w64};
use crate::idt::IrqSlot;
use crate::vdevices::{Assignment, DEVICE_ID_NET};
use crate::virtio_mmio::{reg, status, Mmio, INT_CONFIG, MAGIC};
use crate::{apic, dma, println, time, wait, x86};

/// Entries per queue (nightshift and QEMU offer 256).
const QSIZE: u16 = 256;
const RX: u16 = 0;
const TX: u16 = 1;

const F_MAC: u64 = 1 << 5;
const F_VERSION_1: u64 = 1 << 32;
/// What the driver accepts when offered: no offloads, no EVENT_IDX, no indirect tables.
const ACCEPTED: u64 = F_VERSION_1 | F_MAC;

const DESC_F_NEXT: u16 = 1;
const DESC_F_WRITE: u16 = 2;
const DESC_F_INDIRECT: u16 = 4;

/// The virtio-net header (`virtio_net_hdr_v1`) before every frame.
const VNET_HDR: u64 = 12;
/// An EtherType from the IEEE's local experimental range: the host's stack ignores it.
const ETHERTYPE_LOCAL: [u8; 2] = [0x88, 0xB5];

/// The DMA area: RX ring, TX ring, scratch (small frames, an indirect table, small
/// buffers), the large TX buffer, the RX buffers.
const RX_RING: u64 = 0;
const TX_RING: u64 = 0x3000;
const FRAME: u64 = 0x6000;
const TABLE: u64 = 0x6100;
const SMALL_BUFS: u64 = 0x7000;
const ECHO_TX: u64 = 0x8000;
const BIG: u64 = 0x1_0000;
const RX_BUFS: u64 = 0x2_1000;
const RX_BUF: u64 = 2048;
/// Normal RX buffers posted at once.
const RX_POSTED: u16 = 128;
const AREA: u64 = RX_BUFS + RX_BUF * RX_POSTED as u64;
const _: () = assert!(BIG + VNET_HDR + 65_539 <= RX_BUFS && ECHO_TX + 2048 <= BIG);
/// Small RX buffers of `rx-too-small`: room for the marker frame only.
const SMALL: u32 = 64;
const SMALL_COUNT: u16 = 4;
const _: () = assert!(SMALL as usize == VNET_HDR as usize + proto::MARKER_FRAME);

/// A guest address far outside any RAM.
const OUTSIDE_RAM: u64 = 0x7000_0000_0000;
/// Bytes of each descriptor of `rx-len-sum-overflow` (256 of them exceed 4 GiB).
const SUM_OVERFLOW_LEN: u32 = 17 << 20;

/// How long a case waits for the device's answer.
const CASE_TIMEOUT_US: u64 = 1_000_000;
/// How long a case waits for the host's frames.
const HOST_TIMEOUT_US: u64 = 10_000_000;
/// How long the guest posts no RX buffers while the host floods.
const FLOOD_WINDOW_US: u64 = 1_500_000;
/// Flood frames the guest checks once it posts buffers again (fewer than the tap's queue
/// holds, so every one of them waited there).
const FLOOD_CHECK: u64 = 256;
/// Watchdog: a halted CPU wakes at least this often.
const WATCHDOG_US: u64 = 1_000_000;

// ---- memory of the DMA area ----------------------------------------------------------

/// `len` bytes of the DMA area at `addr` as a slice.
///
/// The caller must own the bytes: the device does not hold a buffer that covers them.
fn bytes<'a>(addr: u64, len: u64) -> &'a mut [u8] {
    // SAFETY: the range lies in this CPU's DMA area (see `w16`) and the device holds no
    // buffer over it (the caller's promise), so nothing writes it while the slice lives.
    unsafe { core::slice::from_raw_parts_mut(addr as *mut u8, len as usize) }
}

/// One split virtqueue laid out as [`RingLayout`] from `base`.
struct Ring {
    base: u64,
    size: u16,
    avail_idx: u16,
    last_used: u16,
}

impl Ring {
    fn layout(&self) -> RingLayout {
        RingLayout { size: self.size }
    }

    fn clear(&mut self) {
        for off in (0..RingLayout::BYTES).step_by(8) {
            w64(self.base + off, 0);
        }
        self.avail_idx = 0;
        self.last_used = 0;
    }

    fn desc(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = self.base + RingLayout::desc(i % self.size);
        w64(at, addr);
        w32(at + 8, len);
        w16(at + 12, flags);
        w16(at + 14, next);
    }

    /// Makes `head` available (the index store last).
    fn offer(&mut self, head: u16) {
        w16(self.base + self.layout().avail_slot(self.avail_idx), head);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        compiler_fence(Ordering::Release);
        w16(self.base + RingLayout::AVAIL + 2, self.avail_idx);
    }

    fn used_idx(&self) -> u16 {
        r16(self.base + RingLayout::USED + 2)
    }

    fn next_used(&mut self) -> Option<(u32, u32)> {
        if self.used_idx() == self.last_used {
            return None;
        }
        compiler_fence(Ordering::Acquire);
        let at = self.base + self.layout().used_elem(self.last_used);
        self.last_used = self.last_used.wrapping_add(1);
        Some((r32(at), r32(at + 4)))
    }
}

/// How a wait for the device ended.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Waited {
    Used,
    NeedsReset,
    Timeout,
}

/// What one case saw.
struct Outcome {
    used: bool,
    /// The used length of the entry that answered (the marker's in `rx-too-small`).
    len: u32,
    details: [(&'static str, u64); 5],
    n: usize,
}

impl Outcome {
    fn new(used: bool, len: u32) -> Self {
        Self {
            used,
            len,
            details: [("", 0); 5],
            n: 0,
        }
    }

    fn with(mut self, key: &'static str, value: u64) -> Self {
        if let Some(d) = self.details.get_mut(self.n) {
            *d = (key, value);
            self.n += 1;
        }
        self
    }
}

/// A case's details as ` key=value` words.
struct Details<'a>(&'a [(&'static str, u64)]);

impl core::fmt::Display for Details<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        for (k, v) in self.0 {
            write!(f, " {k}={v}")?;
        }
        Ok(())
    }
}

/// The device and the driver's state.
struct Net {
    mmio: Mmio,
    area: u64,
    rx: Ring,
    tx: Ring,
    mac: [u8; 6],
    slot: IrqSlot,
    seen_irqs: u64,
    timer_at: Option<u64>,
    seen_timer: u64,
    /// An InterruptStatus read showed a configuration change (e.g. DEVICE_NEEDS_RESET).
    config_changed: bool,
    /// RX buffers the device holds (posted and not yet used).
    rx_held: u32,
    /// Well-formed TX frames handed to the device.
    tx_valid: u64,
}

impl Net {
    fn new(a: &Assignment, area: u64) -> Self {
        let ring = |off| Ring {
            base: area + off,
            size: QSIZE,
            avail_idx: 0,
            last_used: 0,
        };
        Self {
            mmio: Mmio::new(a.dev.base),
            area,
            rx: ring(RX_RING),
            tx: ring(TX_RING),
            mac: [0; 6],
            slot: a.slot(),
            seen_irqs: wait::irq_count(a.slot()),
            timer_at: None,
            seen_timer: 0,
            config_changed: false,
            rx_held: 0,
            tx_valid: 0,
        }
    }

    fn status(&self) -> u32 {
        self.mmio.read(reg::STATUS)
    }

    fn ring(&mut self, q: u16) -> &mut Ring {
        if q == RX {
            &mut self.rx
        } else {
            &mut self.tx
        }
    }

    /// Status = 0, read back.
    fn reset(&mut self) -> bool {
        self.mmio.write(reg::STATUS, 0);
        self.rx_held = 0;
        (0..1000).any(|_| self.mmio.read(reg::STATUS) == 0)
    }

    /// virtio 1.x initialisation (3.1.1, 4.2.3.1) with both queues.
    fn init(&mut self) -> Result<(), &'static str> {
        let m = self.mmio;
        if m.read(reg::MAGIC) != MAGIC || m.read(reg::VERSION) != 2 {
            return Err("bad-device");
        }
        if m.read(reg::DEVICE_ID) != DEVICE_ID_NET {
            return Err("not-net");
        }
        if !self.reset() {
            return Err("reset-failed");
        }
        self.rx.clear();
        self.tx.clear();
        let mut s = status::ACKNOWLEDGE;
        m.write(reg::STATUS, s);
        s |= status::DRIVER;
        m.write(reg::STATUS, s);
        m.write(reg::DEVICE_FEATURES_SEL, 0);
        let lo = m.read(reg::DEVICE_FEATURES);
        m.write(reg::DEVICE_FEATURES_SEL, 1);
        let offered = u64::from(lo) | u64::from(m.read(reg::DEVICE_FEATURES)) << 32;
        if offered & F_VERSION_1 == 0 {
            return Err("no-version-1");
        }
        let accepted = offered & ACCEPTED;
        m.write(reg::DRIVER_FEATURES_SEL, 0);
        m.write(reg::DRIVER_FEATURES, accepted as u32);
        m.write(reg::DRIVER_FEATURES_SEL, 1);
        m.write(reg::DRIVER_FEATURES, (accepted >> 32) as u32);
        s |= status::FEATURES_OK;
        m.write(reg::STATUS, s);
        if m.read(reg::STATUS) & status::FEATURES_OK == 0 {
            return Err("features-refused");
        }
        for (q, base) in [(RX, self.rx.base), (TX, self.tx.base)] {
            m.write(reg::QUEUE_SEL, u32::from(q));
            if m.read(reg::QUEUE_READY) != 0 {
                return Err("queue-busy");
            }
            if m.read(reg::QUEUE_NUM_MAX) < u32::from(QSIZE) {
                return Err("queue-too-small");
            }
            m.write(reg::QUEUE_NUM, u32::from(QSIZE));
            for (lo_reg, hi_reg, addr) in [
                (
                    reg::QUEUE_DESC_LOW,
                    reg::QUEUE_DESC_HIGH,
                    base + RingLayout::DESC,
                ),
                (
                    reg::QUEUE_AVAIL_LOW,
                    reg::QUEUE_AVAIL_HIGH,
                    base + RingLayout::AVAIL,
                ),
                (
                    reg::QUEUE_USED_LOW,
                    reg::QUEUE_USED_HIGH,
                    base + RingLayout::USED,
                ),
            ] {
                m.write(lo_reg, addr as u32);
                m.write(hi_reg, (addr >> 32) as u32);
            }
            m.write(reg::QUEUE_READY, 1);
        }
        s |= status::DRIVER_OK;
        m.write(reg::STATUS, s);
        if m.read(reg::STATUS) & status::NEEDS_RESET != 0 {
            return Err("needs-reset");
        }
        if accepted & F_MAC != 0 {
            let a = m.read(reg::CONFIG).to_le_bytes();
            let b = m.read(reg::CONFIG + 4).to_le_bytes();
            self.mac = [a[0], a[1], a[2], a[3], b[0], b[1]];
        }
        Ok(())
    }

    fn notify(&self, q: u16) {
        // The avail index store before the notify.
        fence(Ordering::SeqCst);
        self.mmio.write(reg::QUEUE_NOTIFY, u32::from(q));
    }

    /// Reads InterruptStatus and acknowledges it (two MMIO exits).
    fn ack(&mut self) {
        let isr = self.mmio.read(reg::INTERRUPT_STATUS);
        if isr != 0 {
            self.mmio.write(reg::INTERRUPT_ACK, isr);
        }
        self.config_changed |= isr & INT_CONFIG != 0;
    }

    /// Waits until queue `q` has a new used entry, the device asks for a reset, or the TSC
    /// passes `deadline`. Halts between interrupts; acknowledges each before it looks at
    /// the ring, so a completion racing the acknowledgement is not lost.
    fn wait_used(&mut self, q: u16, deadline: u64) -> Waited {
        loop {
            let epoch = wait::irq_epoch();
            let irqs = wait::irq_count(self.slot);
            let interrupted = irqs != self.seen_irqs;
            self.seen_irqs = irqs;
            if interrupted {
                self.ack();
            }
            let ring = self.ring(q);
            if ring.used_idx() != ring.last_used {
                return Waited::Used;
            }
            if self.config_changed && self.status() & status::NEEDS_RESET != 0 {
                return Waited::NeedsReset;
            }
            if interrupted {
                continue;
            }
            let now = x86::rdtsc();
            if now >= deadline {
                return Waited::Timeout;
            }
            self.arm_watchdog(now, deadline);
            wait::halt_since(epoch);
        }
    }

    fn arm_watchdog(&mut self, now: u64, deadline: u64) {
        let fired = wait::irq_count(IrqSlot::TIMEOUT) != self.seen_timer;
        let want = deadline.min(now + time::us_to_tsc(WATCHDOG_US));
        match self.timer_at {
            Some(at) if !fired && at <= want && at > now => {}
            _ => {
                self.seen_timer = wait::irq_count(IrqSlot::TIMEOUT);
                apic::arm_timer(time::tsc_to_apic(want.saturating_sub(now)));
                self.timer_at = Some(want);
            }
        }
    }

    /// Forgets the watchdog (before someone else uses the timer).
    fn disarm(&mut self) {
        if self.timer_at.take().is_some() {
            apic::arm_timer(0);
        }
    }

    /// Writes `descs` (index, addr, len, flags, next) into queue `q`, offers `head`,
    /// notifies, and waits for the answer.
    fn submit(&mut self, q: u16, descs: &[(u16, u64, u32, u16, u16)], head: u16) -> Outcome {
        let ring = self.ring(q);
        for &(i, addr, len, flags, next) in descs {
            ring.desc(i, addr, len, flags, next);
        }
        ring.offer(head);
        self.notify(q);
        self.answer(q)
    }

    /// The first used entry of `q` within `CASE_TIMEOUT_US` (others are drained).
    fn answer(&mut self, q: u16) -> Outcome {
        let deadline = x86::rdtsc() + time::us_to_tsc(CASE_TIMEOUT_US);
        if self.wait_used(q, deadline) != Waited::Used {
            return Outcome::new(false, 0);
        }
        let ring = self.ring(q);
        let first = ring.next_used();
        while ring.next_used().is_some() {}
        Outcome::new(true, first.map_or(0, |(_, len)| len))
    }

    /// An Ethernet frame of `len` bytes behind a zero vnet header at `at`: broadcast, from
    /// the device's MAC, a local-experimental EtherType, zero payload.
    fn tx_frame(&self, at: u64, len: u64) {
        let b = bytes(at, VNET_HDR + len);
        b[..VNET_HDR as usize + 6].fill(0);
        b[VNET_HDR as usize..VNET_HDR as usize + 6].fill(0xFF);
        b[VNET_HDR as usize + 6..VNET_HDR as usize + 12].copy_from_slice(&self.mac);
        b[VNET_HDR as usize + 12..VNET_HDR as usize + 14].copy_from_slice(&ETHERTYPE_LOCAL);
    }

    fn rx_buf(&self, i: u16) -> u64 {
        self.area + RX_BUFS + RX_BUF * u64::from(i)
    }

    /// Posts normal RX buffer `i` (one 2 KiB descriptor, index `i`).
    fn post_rx(&mut self, i: u16) {
        let addr = self.rx_buf(i);
        self.rx.desc(i, addr, RX_BUF as u32, DESC_F_WRITE, 0);
        self.rx.offer(i);
        self.rx_held += 1;
    }

    /// The frame in normal RX buffer `id` after a used length of `len`, if `id` names one.
    fn rx_frame<'a>(&self, id: u32, len: u32) -> Option<&'a mut [u8]> {
        let i = u16::try_from(id).ok().filter(|&i| i < RX_POSTED)?;
        let len = u64::from(len).clamp(VNET_HDR, RX_BUF);
        Some(bytes(self.rx_buf(i) + VNET_HDR, len - VNET_HDR))
    }

    /// Runs case `name`; `Err(reason)` if it cannot run here.
    fn case(&mut self, name: &str) -> Result<Outcome, &'static str> {
        const N: u16 = DESC_F_NEXT;
        const W: u16 = DESC_F_WRITE;
        let q = QSIZE;
        let frame = self.area + FRAME;
        let big = self.area + BIG;
        let rxb = self.rx_buf(0);
        let ram_end = dma::end().max(4096);
        self.tx_frame(frame, 60);
        let small = (VNET_HDR + 60) as u32;
        let table = self.area + TABLE;
        Ok(match name {
            "tx-desc-loop" => {
                self.submit(TX, &[(0, frame, 36, N, 1), (1, frame + 36, 36, N, 0)], 0)
            }
            "tx-next-out-of-range" => self.submit(TX, &[(0, frame, small, N, q + 5)], 0),
            "tx-outside-ram" => self.submit(TX, &[(0, OUTSIDE_RAM, small, 0, 0)], 0),
            "tx-len-overflow" => self.submit(TX, &[(0, ram_end - 4096, 0xFFFF_FFF0, 0, 0)], 0),
            "tx-addr-wraps" => self.submit(TX, &[(0, u64::MAX - 0xFFF, 0x2000, 0, 0)], 0),
            "tx-write-only" => self.submit(TX, &[(0, frame, small, W, 0)], 0),
            "tx-short-header" => self.submit(TX, &[(0, frame, 8, 0, 0)], 0),
            "tx-runt" => self.submit(TX, &[(0, frame, VNET_HDR as u32 + 10, 0, 0)], 0),
            "tx-above-64k" => {
                // 12 + 65 539 = 65 551 bytes: three more than a 64 KiB frame and its header.
                self.tx_frame(big, 65_539);
                let d = [
                    (0, big, VNET_HDR as u32, N, 1),
                    (1, big + VNET_HDR, 32_768, N, 2),
                    (2, big + VNET_HDR + 32_768, 32_771, 0, 0),
                ];
                self.submit(TX, &d, 0)
            }
            "tx-64k" => {
                // The largest frame the device takes: well formed, handed on.
                self.tx_frame(big, 65_536);
                self.tx_valid += 1;
                let d = [
                    (0, big, VNET_HDR as u32, N, 1),
                    (1, big + VNET_HDR, 65_536, 0, 0),
                ];
                self.submit(TX, &d, 0)
            }
            "tx-split-header" => {
                // The vnet header across two descriptors: any layout is valid (2.7.4).
                self.tx_valid += 1;
                let d = [
                    (0, frame, 5, N, 1),
                    (1, frame + 5, 7, N, 2),
                    (2, frame + VNET_HDR, 60, 0, 0),
                ];
                self.submit(TX, &d, 0)
            }
            "tx-indirect" => {
                indirect(table, frame, small, 0);
                self.submit(TX, &[(0, table, 16, DESC_F_INDIRECT, 0)], 0)
            }
            "tx-head-out-of-range" => self.head_out_of_range(TX),
            "tx-avail-idx-jump" => self.avail_idx_jump(TX, frame, small, 0),
            "rx-desc-loop" => self.submit(
                RX,
                &[(0, rxb, 1024, W | N, 1), (1, rxb + 1024, 1024, W | N, 0)],
                0,
            ),
            "rx-next-out-of-range" => self.submit(RX, &[(0, rxb, 2048, W | N, q + 5)], 0),
            "rx-outside-ram" => self.submit(RX, &[(0, OUTSIDE_RAM, 2048, W, 0)], 0),
            "rx-len-overflow" => self.submit(RX, &[(0, ram_end - 4096, 0xFFFF_FFF0, W, 0)], 0),
            "rx-len-sum-overflow" => {
                // 256 descriptors of 17 MiB each, all over the same RAM: 4.25 GiB in all.
                let start = self.area;
                if start + u64::from(SUM_OVERFLOW_LEN) > ram_end {
                    return Err("no-room");
                }
                for i in 0..q {
                    let last = i == q - 1;
                    let flags = W | if last { 0 } else { N };
                    self.rx
                        .desc(i, start, SUM_OVERFLOW_LEN, flags, i.wrapping_add(1));
                }
                self.submit(RX, &[], 0)
            }
            "rx-read-only" => self.submit(RX, &[(0, rxb, 2048, 0, 0)], 0),
            "rx-short-header" => self.submit(RX, &[(0, rxb, 8, W, 0)], 0),
            "rx-indirect" => {
                indirect(table, rxb, 2048, W);
                self.submit(RX, &[(0, table, 16, DESC_F_INDIRECT, 0)], 0)
            }
            "rx-head-out-of-range" => self.head_out_of_range(RX),
            "rx-avail-idx-jump" => self.avail_idx_jump(RX, rxb, 2048, W),
            "rx-too-small" => self.rx_too_small(),
            "rx-no-buffers-flood" => self.rx_no_buffers_flood(),
            _ => return Err("unknown-case"),
        })
    }

    fn head_out_of_range(&mut self, q: u16) -> Outcome {
        self.ring(q).offer(QSIZE);
        self.notify(q);
        self.answer(q)
    }

    /// A good chain at 0, the avail index moved by one more than the queue size.
    fn avail_idx_jump(&mut self, q: u16, addr: u64, len: u32, flags: u16) -> Outcome {
        let ring = self.ring(q);
        ring.desc(0, addr, len, flags, 0);
        for i in 0..QSIZE {
            w16(ring.base + ring.layout().avail_slot(i), 0);
        }
        ring.avail_idx = ring.avail_idx.wrapping_add(QSIZE + 1);
        compiler_fence(Ordering::Release);
        w16(ring.base + RingLayout::AVAIL + 2, ring.avail_idx);
        self.notify(q);
        self.answer(q)
    }

    /// Small buffers, then the host's large frames and a marker that fits: the large ones
    /// are dropped (and counted by the device), the marker lands in the first buffer.
    fn rx_too_small(&mut self) -> Outcome {
        let base = self.area + SMALL_BUFS;
        for i in 0..SMALL_COUNT {
            self.rx.desc(
                i,
                base + u64::from(SMALL) * u64::from(i),
                SMALL,
                DESC_F_WRITE,
                0,
            );
            self.rx.offer(i);
            self.rx_held += 1;
        }
        self.notify(RX);
        println!("nethostile want=big-frames");
        let deadline = x86::rdtsc() + time::us_to_tsc(HOST_TIMEOUT_US);
        let (mut marker_len, mut foreign, mut used) = (None, 0u64, false);
        while marker_len.is_none() && self.wait_used(RX, deadline) == Waited::Used {
            while let Some((id, len)) = self.rx.next_used() {
                used = true;
                self.rx_held = self.rx_held.saturating_sub(1);
                let i = u16::try_from(id).ok().filter(|&i| i < SMALL_COUNT);
                let Some(i) = i else {
                    foreign += 1;
                    continue;
                };
                let at = base + u64::from(SMALL) * u64::from(i);
                let n = u64::from(len.min(SMALL)).saturating_sub(VNET_HDR);
                if proto::tag(bytes(at + VNET_HDR, n)) == Some(Tag::Marker) {
                    marker_len = Some(len);
                } else {
                    foreign += 1;
                    self.rx.offer(i);
                    self.rx_held += 1;
                    self.notify(RX);
                }
            }
        }
        Outcome::new(used, marker_len.unwrap_or(0))
            .with("marker", u64::from(marker_len.is_some()))
            .with("foreign", foreign)
    }

    /// No RX buffers for `FLOOD_WINDOW_US` while the host floods the tap; then buffers,
    /// and the first `FLOOD_CHECK` flood frames must be the host's first ones, in order:
    /// the device did not read (and drop) any while it had nowhere to put them.
    fn rx_no_buffers_flood(&mut self) -> Outcome {
        println!("nethostile want=flood");
        self.disarm();
        let t0 = x86::rdtsc();
        wait::halt_until(Some(t0 + time::us_to_tsc(FLOOD_WINDOW_US)), || false);
        let waited_ms = time::tsc_to_us(x86::rdtsc() - t0) / 1000;
        for i in 0..RX_POSTED {
            self.post_rx(i);
        }
        self.notify(RX);
        let deadline = x86::rdtsc() + time::us_to_tsc(HOST_TIMEOUT_US);
        let (mut frames, mut first, mut next, mut in_order, mut foreign) = (0, None, 0, true, 0);
        while frames < FLOOD_CHECK && self.wait_used(RX, deadline) == Waited::Used {
            while let Some((id, len)) = self.rx.next_used() {
                self.rx_held = self.rx_held.saturating_sub(1);
                let Some(frame) = self.rx_frame(id, len) else {
                    foreign += 1;
                    continue;
                };
                match proto::tag(frame) {
                    Some(Tag::Flood(seq)) if frames < FLOOD_CHECK => {
                        first.get_or_insert(seq);
                        in_order &= seq == next;
                        next = seq.wrapping_add(1);
                        frames += 1;
                    }
                    Some(Tag::Flood(_)) => {}
                    _ => foreign += 1,
                }
                self.post_rx(id as u16);
            }
            self.notify(RX);
        }
        Outcome::new(frames > 0, 0)
            .with("flood_frames", frames)
            .with("first_seq", first.map_or(u64::MAX, u64::from))
            .with("in_order", u64::from(in_order && frames > 0))
            .with("foreign", foreign)
            .with("waited_ms", waited_ms)
    }

    /// After the cases: buffers posted, the host's echo request answered (addresses
    /// swapped) through the TX queue. Returns (echoed, frames skipped before it).
    fn echo(&mut self) -> (bool, u64) {
        for i in 0..RX_POSTED {
            self.post_rx(i);
        }
        self.notify(RX);
        println!("nethostile want=echo");
        let deadline = x86::rdtsc() + time::us_to_tsc(HOST_TIMEOUT_US);
        let mut skipped = 0;
        while self.wait_used(RX, deadline) == Waited::Used {
            while let Some((id, len)) = self.rx.next_used() {
                self.rx_held = self.rx_held.saturating_sub(1);
                let Some(frame) = self.rx_frame(id, len) else {
                    skipped += 1;
                    continue;
                };
                if !matches!(proto::tag(frame), Some(Tag::Echo(_))) {
                    skipped += 1;
                    self.post_rx(id as u16);
                    continue;
                }
                let n = frame.len() as u64;
                let out = bytes(self.area + ECHO_TX, VNET_HDR + n);
                out[..VNET_HDR as usize].fill(0);
                out[VNET_HDR as usize..].copy_from_slice(frame);
                proto::echo_in_place(&mut out[VNET_HDR as usize..]);
                self.tx_valid += 1;
                let at = self.area + ECHO_TX;
                let sent = self.submit(TX, &[(0, at, (VNET_HDR + n) as u32, 0, 0)], 0);
                return (sent.used, skipped);
            }
            self.notify(RX);
        }
        (false, skipped)
    }
}

/// A one-entry indirect table at `table`: `len` bytes at `addr` with `flags`.
fn indirect(table: u64, addr: u64, len: u32, flags: u16) {
    w64(table, addr);
    w32(table + 8, len);
    w16(table + 12, flags);
    w16(table + 14, 0);
}

/// Runs the hostile mode on CPU `cpu` with device `a`.
pub fn run(cpu: usize, a: &Assignment) -> Result<(), &'static str> {
    let area = dma::alloc_pages(AREA.div_ceil(4096) as usize).ok_or("no-dma-memory")?;
    let mut net = Net::new(a, area);
    net.init()?;
    let m = net.mac;
    println!(
        "net dev={} mode=hostile mac={:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x} base={:#x} irq={} qsize={QSIZE}",
        a.nth, m[0], m[1], m[2], m[3], m[4], m[5], a.dev.base, a.dev.irq
    );
    let (mut cases, mut answered) = (0, 0);
    for name in proto::CASES {
        net.config_changed = false;
        let outcome = net.case(name);
        let device_status = net.status();
        net.disarm();
        let o = match outcome {
            Ok(o) => o,
            Err(why) => {
                println!("hostile case={name} skipped={why}");
                continue;
            }
        };
        cases += 1;
        answered += u32::from(o.used);
        // A case the device did not answer, that broke it, or that left buffers with it
        // leaves the queues in an unknown state: reset and initialise again.
        let needs_reset = device_status & status::NEEDS_RESET != 0;
        let reset =
            !o.used || needs_reset || device_status & status::DRIVER_OK == 0 || net.rx_held > 0;
        let reinit = if reset {
            match net.init() {
                Ok(()) => "ok",
                Err(e) => e,
            }
        } else {
            "-"
        };
        net.disarm();
        println!(
            "hostile case={name} used={} len={} device_status={device_status:#x} needs_reset={} config_irq={} reset={} reinit={reinit}{}",
            u8::from(o.used),
            o.len,
            u8::from(needs_reset),
            u8::from(net.config_changed),
            u8::from(reset),
            Details(&o.details[..o.n]),
        );
    }
    let (echoed, skipped) = net.echo();
    net.disarm();
    let _ = net.reset();
    println!(
        "result cpu={cpu} workload=net mode=hostile dev={} cases={cases} answered={answered} after_ok={} skipped_frames={skipped} tx_valid={}",
        a.nth,
        u8::from(echoed),
        net.tx_valid,
    );
    Ok(())
}
