//! virtio-blk over virtio-mmio, driven entirely from CPL3, and the `blk` workload.
//!
//! The BSP assigns devices and routes their interrupt lines through the I/O APIC before it
//! releases the APs ([`setup`]); each `blk` CPU then initialises its device (registers,
//! one split queue, GET_ID) and runs its mode ([`run`]). Register accesses are MMIO exits
//! to the VMM; rings and buffers are plain RAM past the image (the identity map is user
//! accessible). The device interrupt is counted by the generic CPL0 interrupt stub
//! (count + EOI: nothing device specific at CPL0); CPL3 acknowledges InterruptStatus
//! itself. See docs/guest-abi.md, "Block device", for the contract and the output.

mod seq_write;

use core::sync::atomic::{compiler_fence, fence, Ordering};

use testguest::acpi::IoApicList;
use testguest::blk::{check_pattern, fill_pattern, id_string, Mismatch, RingLayout, Rng};
use testguest::cmdline::{BlkConfig, BlkMode, BlkWait, Config, VirtioMmioDevice, Workload, SECTOR};
use testguest::drivers_config::BlkDriver;
use testguest::start_info::StartInfo;
use testguest::stats::Histogram;

use crate::dma::{r16, r32, r8, w16, w32, w64, w8};
use crate::idt::IrqSlot;
use crate::physmem::{Identity, MAPPED_END};
use crate::sync::Published;
use crate::virtio_mmio::{reg, status, Mmio, INT_CONFIG, MAGIC};
use crate::{apic, cpu, ioapic, println, smp, time, wait, warn, x86};

/// Bytes of RAM each `blk` CPU uses for its rings and buffers (2 MiB aligned).
const DMA_AREA: u64 = 4 << 20;
/// Offsets in a DMA area: rings at 0 (`RingLayout`), then request headers (16 bytes per
/// slot), status bytes (one per slot), the GET_ID buffer, scratch for the hostile cases,
/// and from 64 KiB one 64 KiB data buffer per slot.
const HEADERS: u64 = 0x3000;
const STATUSES: u64 = 0x3200;
const ID_BUF: u64 = 0x3400;
const SCRATCH_HEADER: u64 = 0x3800;
const SCRATCH_STATUS: u64 = 0x3900;
const SCRATCH_DATA: u64 = 0x4000;
const DATA: u64 = 0x1_0000;
const DATA_STRIDE: u64 = 0x1_0000;
const _: () = assert!(DATA + DATA_STRIDE * MAX_QD as u64 <= DMA_AREA);
const _: () = assert!(RingLayout::BYTES <= HEADERS);

/// A status byte the device has not written.
const STATUS_UNTOUCHED: u8 = 0xFF;

const MAX_QD: usize = testguest::cmdline::MAX_BLK_QD as usize;

const DESC_F_NEXT: u16 = 1;
const DESC_F_WRITE: u16 = 2;
const DESC_F_INDIRECT: u16 = 4;
const AVAIL_F_NO_INTERRUPT: u16 = 1;
const USED_F_NO_NOTIFY: u16 = 1;

const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;
const S_OK: u8 = 0;

const F_RO: u64 = 1 << 5;
const F_FLUSH: u64 = 1 << 9;
const F_VERSION_1: u64 = 1 << 32;
/// What the driver accepts when offered.
const ACCEPTED: u64 = F_VERSION_1 | F_FLUSH | F_RO;

const DEVICE_ID_BLOCK: u32 = 2;
const ID_BYTES: u32 = 20;

/// Longest a request may take before the workload gives up.
const REQUEST_TIMEOUT_US: u64 = 10_000_000;
/// How long a hostile case waits for an answer.
const HOSTILE_TIMEOUT_US: u64 = 200_000;
/// Watchdog period: a CPU halted on a device wakes at least this often to check deadlines.
const WATCHDOG_US: u64 = 1_000_000;
/// Default span of the verify modes (they cover it once; bounds their run time).
const VERIFY_SPAN_DEFAULT: u64 = 64 << 20;
/// Mismatches reported in `warning:` lines per run.
const MISMATCH_LINES: u64 = 3;

/// Why a `blk` CPU has no usable device: the `error=` value of its result line.
pub type BlkError = &'static str;

/// What the BSP set up for one `blk` CPU.
#[derive(Clone, Copy, Debug)]
pub struct Assignment {
    /// Index among the `virtio_mmio.device=` entries.
    pub index: usize,
    pub dev: VirtioMmioDevice,
    /// Base of this CPU's DMA area.
    pub dma: u64,
    /// End of the RAM region holding it (for the "length overflows" hostile case).
    pub ram_top: u64,
}

/// Per CPU: its assignment, or the device index it would have used and why it cannot.
static ASSIGNMENTS: [Published<Result<Assignment, (usize, BlkError)>>; cpu::MAX_CPUS] =
    [const { Published::new() }; cpu::MAX_CPUS];

extern "C" {
    static __image_end: u8;
}

/// The virtio-mmio devices: the command line's `virtio_mmio.device=` entries, or if there
/// are none, the DSDT's transports that have a device behind them (QEMU's microvm with
/// ACPI describes its transports only there, all of them, most empty).
pub fn devices(config: &Config, rsdp: Option<u64>) -> [Option<VirtioMmioDevice>; MAX_DEVICES] {
    let mut list = config.virtio_mmio;
    if list.iter().any(Option::is_some) {
        return list;
    }
    let mut found = [None; 32];
    let n = rsdp.map_or(0, |r| {
        testguest::acpi::dsdt_virtio_mmio(&Identity, r, &mut found).unwrap_or(0)
    });
    let present = found[..n].iter().flatten().filter(|d| {
        let ok = d.size >= 0x200 && d.base.checked_add(d.size).is_some_and(|e| e <= MAPPED_END);
        ok && {
            let m = Mmio::new(d.base);
            m.read(reg::MAGIC) == MAGIC && m.read(reg::DEVICE_ID) != 0
        }
    });
    for (slot, d) in list.iter_mut().zip(present) {
        *slot = Some(*d);
    }
    list
}

const MAX_DEVICES: usize = testguest::cmdline::MAX_VIRTIO_MMIO_DEVICES;

/// BSP, before the APs are released: gives the k-th `blk` CPU (in CPU order) device
/// `blk_dev + k` and a DMA area, and routes the device's GSI to that CPU.
pub fn setup(
    config: &Config,
    online: usize,
    ioapics: &IoApicList,
    info: Option<&StartInfo>,
    rsdp: Option<u64>,
) {
    if !config.workloads.any(online, Workload::Blk) {
        return;
    }
    let devices = devices(config, rsdp);
    let image_end = (&raw const __image_end) as u64;
    let first = image_end.next_multiple_of(2 << 20);
    let mut k = 0;
    for (cpu, slot) in ASSIGNMENTS.iter().enumerate().take(online) {
        if config.workloads.for_cpu(cpu) != Workload::Blk {
            continue;
        }
        let dma = first + k as u64 * DMA_AREA;
        let result = assign(config, &devices, cpu, k, dma, ioapics, info);
        if let Err(e) = result {
            warn!("blk: cpu {cpu} (device {}): {e}", config.blk.dev + k);
        }
        let _ = slot.publish(result.map_err(|e| (config.blk.dev + k, e)));
        k += 1;
    }
}

fn assign(
    config: &Config,
    devices: &[Option<VirtioMmioDevice>],
    cpu: usize,
    k: usize,
    dma: u64,
    ioapics: &IoApicList,
    info: Option<&StartInfo>,
) -> Result<Assignment, BlkError> {
    let index = config.blk.dev + k;
    let dev = devices
        .iter()
        .flatten()
        .nth(index)
        .copied()
        .ok_or("no-device")?;
    if index >= IrqSlot::DEVICE_SLOTS {
        return Err("no-device");
    }
    if dev.size < 0x200
        || dev
            .base
            .checked_add(dev.size)
            .is_none_or(|e| e > MAPPED_END)
    {
        return Err("bad-window");
    }
    let end = dma + DMA_AREA;
    let ram_top = match info {
        Some(i) if i.memmap_entries > 0 => {
            let region = i
                .memmap(&Identity)
                .filter(|e| e.kind == testguest::start_info::MEMMAP_TYPE_RAM)
                .find(|e| e.addr <= dma && e.addr.saturating_add(e.size) >= end)
                .ok_or("no-dma-memory")?;
            region.addr + region.size
        }
        _ => end,
    };
    if end > MAPPED_END {
        return Err("no-dma-memory");
    }
    let slot = IrqSlot::device(index);
    ioapic::route(
        ioapic::for_gsi(ioapics, dev.irq),
        dev.irq,
        slot.vector(),
        smp::apic_id(cpu),
    )
    .map_err(|_| "no-ioapic")?;
    Ok(Assignment {
        index,
        dev,
        dma,
        ram_top,
    })
}

// ---- guest-memory access to the DMA area -------------------------------------------------

/// A data buffer of the DMA area as a slice.
///
/// The caller must own the buffer: no request using it is in flight.
fn buffer<'a>(addr: u64, len: u32) -> &'a mut [u8] {
    // SAFETY: the range lies in the calling CPU's DMA area (RAM, identity mapped, user
    // writable) and no request that uses it is in flight, so the device does not touch it
    // while the slice lives.
    unsafe { core::slice::from_raw_parts_mut(addr as *mut u8, len as usize) }
}

// ---- the driver --------------------------------------------------------------------------

/// Variations of the initialisation for the hostile cases.
#[derive(Clone, Copy, PartialEq, Eq)]
enum InitVariant {
    Normal,
    /// Writes to undefined registers and a bad QueueNum on the way.
    JunkRegisters,
    /// The descriptor table outside guest memory.
    QueueOutsideRam,
    /// DRIVER_OK without QueueReady.
    NoReadyQueue,
}

/// A bad-queue address: far outside any guest RAM.
const OUTSIDE_RAM: u64 = 0x7000_0000_0000;

struct Driver {
    mmio: Mmio,
    dma: u64,
    ring: RingLayout,
    qsize_req: Option<u16>,
    features: u64,
    capacity: u64,
    avail_idx: u16,
    last_used: u16,
    poll: bool,
    slot: IrqSlot,
    seen_irqs: u64,
    /// TSC at which the armed watchdog timer fires.
    timer_at: Option<u64>,
    seen_timer: u64,
    /// An InterruptStatus read showed a configuration change (e.g. DEVICE_NEEDS_RESET).
    config_changed: bool,
    /// Poll mode: iterations of the compute loop run while waiting for completions.
    poll_iters: u64,
    /// The compute loop's state (kept so the work cannot be optimised away).
    poll_state: u64,
}

impl Driver {
    fn new(a: &Assignment, blk: &BlkConfig) -> Self {
        let slot = IrqSlot::device(a.index);
        Self {
            mmio: Mmio::new(a.dev.base),
            dma: a.dma,
            ring: RingLayout { size: 0 },
            qsize_req: blk.qsize,
            features: 0,
            capacity: 0,
            avail_idx: 0,
            last_used: 0,
            poll: blk.wait == BlkWait::Poll,
            slot,
            seen_irqs: wait::irq_count(slot),
            timer_at: None,
            seen_timer: 0,
            poll_iters: 0,
            poll_state: 0x9e37_79b9_7f4a_7c15,
            config_changed: false,
        }
    }

    fn read_only(&self) -> bool {
        self.features & F_RO != 0
    }

    fn device_status(&self) -> u32 {
        self.mmio.read(reg::STATUS)
    }

    /// Writes 0 to Status and waits (briefly) for it to read back 0.
    fn reset(&mut self) -> bool {
        self.mmio.write(reg::STATUS, 0);
        self.avail_idx = 0;
        self.last_used = 0;
        (0..1000).any(|_| self.mmio.read(reg::STATUS) == 0)
    }

    /// Gives up on the device: Status |= FAILED.
    fn fail(&self, why: BlkError) -> BlkError {
        let s = self.device_status();
        self.mmio.write(reg::STATUS, s | status::FAILED);
        why
    }

    /// virtio 1.x driver initialisation (3.1.1, 4.2.3.1) with one split queue.
    fn init(&mut self, variant: InitVariant) -> Result<(), BlkError> {
        let m = self.mmio;
        if m.read(reg::MAGIC) != MAGIC {
            return Err("bad-magic");
        }
        match m.read(reg::VERSION) {
            2 => {}
            1 => return Err("legacy-device"),
            _ => return Err("bad-version"),
        }
        match m.read(reg::DEVICE_ID) {
            DEVICE_ID_BLOCK => {}
            0 => return Err("no-device"),
            _ => return Err("not-block"),
        }
        if !self.reset() {
            return Err("reset-failed");
        }
        // Fresh rings: zero the ring pages, headers and status bytes.
        for off in (0..ID_BUF).step_by(8) {
            w64(self.dma + off, 0);
        }
        let mut s = status::ACKNOWLEDGE;
        m.write(reg::STATUS, s);
        s |= status::DRIVER;
        m.write(reg::STATUS, s);

        m.write(reg::DEVICE_FEATURES_SEL, 0);
        let lo = m.read(reg::DEVICE_FEATURES);
        m.write(reg::DEVICE_FEATURES_SEL, 1);
        let hi = m.read(reg::DEVICE_FEATURES);
        let offered = u64::from(lo) | u64::from(hi) << 32;
        if offered & F_VERSION_1 == 0 {
            return Err(self.fail("no-version-1"));
        }
        self.features = offered & ACCEPTED;
        m.write(reg::DRIVER_FEATURES_SEL, 0);
        m.write(reg::DRIVER_FEATURES, self.features as u32);
        m.write(reg::DRIVER_FEATURES_SEL, 1);
        m.write(reg::DRIVER_FEATURES, (self.features >> 32) as u32);
        s |= status::FEATURES_OK;
        m.write(reg::STATUS, s);
        if m.read(reg::STATUS) & status::FEATURES_OK == 0 {
            return Err(self.fail("features-refused"));
        }

        m.write(reg::QUEUE_SEL, 0);
        if m.read(reg::QUEUE_READY) != 0 {
            return Err(self.fail("queue-busy"));
        }
        let max = m.read(reg::QUEUE_NUM_MAX).min(u32::from(u16::MAX)) as u16;
        if max == 0 {
            return Err(self.fail("no-queue"));
        }
        // Largest power of two both sides allow.
        let default = 1u16 << (max.min(testguest::cmdline::MAX_BLK_QSIZE)).ilog2();
        let size = match self.qsize_req {
            Some(q) if q <= max => q,
            _ => default,
        };
        if size < testguest::cmdline::MIN_BLK_QSIZE || !RingLayout::fits(size) {
            return Err(self.fail("queue-too-small"));
        }
        self.ring = RingLayout { size };
        if variant == InitVariant::JunkRegisters {
            m.write(0x0f0, 0xdead_beef);
            m.write(0x0a8, 0x1234_5678);
            let _ = m.read(0x0f0);
            m.write(reg::QUEUE_NUM, 3);
        }
        m.write(reg::QUEUE_NUM, u32::from(size));
        let desc = if variant == InitVariant::QueueOutsideRam {
            OUTSIDE_RAM
        } else {
            self.dma + RingLayout::DESC
        };
        let avail = self.dma + RingLayout::AVAIL;
        let used = self.dma + RingLayout::USED;
        for (lo_reg, hi_reg, addr) in [
            (reg::QUEUE_DESC_LOW, reg::QUEUE_DESC_HIGH, desc),
            (reg::QUEUE_AVAIL_LOW, reg::QUEUE_AVAIL_HIGH, avail),
            (reg::QUEUE_USED_LOW, reg::QUEUE_USED_HIGH, used),
        ] {
            m.write(lo_reg, addr as u32);
            m.write(hi_reg, (addr >> 32) as u32);
        }
        w16(avail, if self.poll { AVAIL_F_NO_INTERRUPT } else { 0 });
        if variant != InitVariant::NoReadyQueue {
            m.write(reg::QUEUE_READY, 1);
        }
        s |= status::DRIVER_OK;
        m.write(reg::STATUS, s);
        if m.read(reg::STATUS) & status::NEEDS_RESET != 0 {
            return Err("needs-reset");
        }
        self.capacity = m.config_u64(0);
        Ok(())
    }

    fn desc(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = self.dma + RingLayout::desc(i);
        w64(at, addr);
        w32(at + 8, len);
        w16(at + 12, flags);
        w16(at + 14, next);
    }

    /// Makes chain `head` available (the index store last).
    fn offer(&mut self, head: u16) {
        w16(self.dma + self.ring.avail_slot(self.avail_idx), head);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        compiler_fence(Ordering::Release);
        w16(self.dma + RingLayout::AVAIL + 2, self.avail_idx);
    }

    /// Notifies the device unless it asked not to be.
    fn notify(&self) {
        // The avail index store must be visible before the flags are read.
        fence(Ordering::SeqCst);
        if r16(self.dma + RingLayout::USED) & USED_F_NO_NOTIFY == 0 {
            self.mmio.write(reg::QUEUE_NOTIFY, 0);
        }
    }

    fn header(&self, s: usize) -> u64 {
        self.dma + HEADERS + 16 * s as u64
    }

    fn status_addr(&self, s: usize) -> u64 {
        self.dma + STATUSES + s as u64
    }

    fn data(&self, s: usize) -> u64 {
        self.dma + DATA + DATA_STRIDE * s as u64
    }

    /// Posts request slot `s` (descriptors 3s..3s+2): header, data (unless FLUSH), status.
    fn post(&mut self, s: usize, kind: u32, sector: u64, len: u32) {
        let (h, st) = (self.header(s), self.status_addr(s));
        w32(h, kind);
        w32(h + 4, 0);
        w64(h + 8, sector);
        w8(st, STATUS_UNTOUCHED);
        let d0 = 3 * s as u16;
        if kind == T_FLUSH {
            self.desc(d0, h, 16, DESC_F_NEXT, d0 + 2);
        } else {
            let (data, dflags) = match kind {
                T_IN => (self.data(s), DESC_F_WRITE),
                T_GET_ID => (self.dma + ID_BUF, DESC_F_WRITE),
                _ => (self.data(s), 0),
            };
            self.desc(d0, h, 16, DESC_F_NEXT, d0 + 1);
            self.desc(d0 + 1, data, len, dflags | DESC_F_NEXT, d0 + 2);
        }
        self.desc(d0 + 2, st, 1, DESC_F_WRITE, 0);
        self.offer(d0);
    }

    fn used_idx(&self) -> u16 {
        r16(self.dma + RingLayout::USED + 2)
    }

    /// The next used element (id, len), if any.
    fn next_used(&mut self) -> Option<(u32, u32)> {
        if self.used_idx() == self.last_used {
            return None;
        }
        // The element is read after the index that published it.
        compiler_fence(Ordering::Acquire);
        let at = self.dma + self.ring.used_elem(self.last_used);
        self.last_used = self.last_used.wrapping_add(1);
        Some((r32(at), r32(at + 4)))
    }

    /// Reads InterruptStatus and acknowledges what it shows (two MMIO exits).
    fn ack(&mut self) {
        let isr = self.mmio.read(reg::INTERRUPT_STATUS);
        if isr != 0 {
            self.mmio.write(reg::INTERRUPT_ACK, isr);
        }
        self.config_changed |= isr & INT_CONFIG != 0;
    }

    /// Keeps a LAPIC timer armed so that a halted CPU wakes by `deadline` (and at least
    /// every `WATCHDOG_US`); re-armed only when it fired or is too late, so a wait costs no
    /// timer programming in the common case.
    fn arm_watchdog(&mut self, now: u64, deadline: u64) {
        let fired = wait::irq_count(IrqSlot::TIMEOUT) != self.seen_timer;
        let want = deadline.min(now + time::us_to_tsc(WATCHDOG_US));
        match self.timer_at {
            Some(at) if !fired && at <= want => {}
            _ => {
                self.seen_timer = wait::irq_count(IrqSlot::TIMEOUT);
                apic::arm_timer(time::tsc_to_apic(want.saturating_sub(now)));
                self.timer_at = Some(want);
            }
        }
    }

    /// Forgets the watchdog (someone else used the timer, e.g. a console wait).
    fn disarm(&mut self) {
        if self.timer_at.take().is_some() {
            apic::arm_timer(0);
        }
    }

    /// Waits until the used ring has something new, the TSC passes `deadline` or the
    /// device signals DEVICE_NEEDS_RESET. Returns the TSC at which the completion was seen. `wait=irq`: halts until the device
    /// interrupt (acknowledged after the completion has been timestamped, and before the
    /// caller reaps, so a completion racing the acknowledgement is not lost); `wait=poll`:
    /// spins on the used index.
    fn wait(&mut self, deadline: u64) -> Option<u64> {
        loop {
            let epoch = wait::irq_epoch();
            let irqs = wait::irq_count(self.slot);
            let interrupted = irqs != self.seen_irqs;
            self.seen_irqs = irqs;
            if self.used_idx() != self.last_used {
                let seen = x86::rdtsc();
                if interrupted {
                    self.ack();
                }
                return Some(seen);
            }
            if interrupted {
                self.ack();
                if self.config_changed && self.device_status() & status::NEEDS_RESET != 0 {
                    // The device gave up on the queue: nothing more will complete.
                    return None;
                }
                continue;
            }
            let now = x86::rdtsc();
            if now >= deadline {
                return None;
            }
            if self.poll {
                // Waiting in poll mode is the guest's own computing: the same
                // loop, in the same chunks, as the `compute` workload, so its
                // rate compares with a computing vCPU's.
                self.poll_state = crate::workloads::compute_chunk(self.poll_state);
                self.poll_iters += crate::workloads::COMPUTE_CHUNK;
                continue;
            }
            self.arm_watchdog(now, deadline);
            wait::halt_since(epoch);
        }
    }

    /// Posts one request in slot 0, waits for it; returns its status byte.
    fn sync_request(&mut self, kind: u32, sector: u64, len: u32) -> Option<u8> {
        self.post(0, kind, sector, len);
        self.notify();
        let deadline = x86::rdtsc() + time::us_to_tsc(REQUEST_TIMEOUT_US);
        self.wait(deadline)?;
        let mut result = None;
        while let Some((id, _)) = self.next_used() {
            if id == 0 {
                result = Some(r8(self.status_addr(0)));
            }
        }
        result
    }

    /// GET_ID into the ID buffer; the status byte.
    fn get_id(&mut self) -> Option<u8> {
        for off in (0..24).step_by(8) {
            w64(self.dma + ID_BUF + off, 0);
        }
        self.sync_request(T_GET_ID, 0, ID_BYTES)
    }

    fn id_raw(&self) -> [u8; ID_BYTES as usize] {
        let mut id = [0u8; ID_BYTES as usize];
        for (i, b) in id.iter_mut().enumerate() {
            *b = r8(self.dma + ID_BUF + i as u64);
        }
        id
    }
}

// ---- the workload ------------------------------------------------------------------------

/// Runs the `blk` workload on CPU `cpu`.
pub fn run(cpu: usize, config: &Config) {
    let blk = &config.blk;
    let mode = blk.mode.name();
    let assignment = match ASSIGNMENTS[cpu].get() {
        Some(Ok(a)) => *a,
        Some(Err((dev, e))) => {
            println!("result cpu={cpu} workload=blk mode={mode} dev={dev} error={e}");
            return;
        }
        None => {
            println!(
                "result cpu={cpu} workload=blk mode={mode} dev={} error=not-set-up",
                blk.dev
            );
            return;
        }
    };
    if config.drivers.blk_driver == BlkDriver::VirtioDrivers {
        return crate::vdblk::run(cpu, config, &assignment);
    }
    let dev = assignment.index;
    let mut drv = Driver::new(&assignment, blk);
    let id = match bring_up(&mut drv) {
        Ok(id) => id,
        Err(e) => {
            warn!(
                "blk dev={dev}: initialisation failed: {e} (device status {:#x})",
                drv.device_status()
            );
            println!("result cpu={cpu} workload=blk mode={mode} dev={dev} error={e}");
            return;
        }
    };
    let mut id_buf = [0u8; 20];
    println!(
        "blk dev={dev} capacity={} ro={} id={} base={:#x} irq={} qsize={} features={:#x}",
        drv.capacity,
        u8::from(drv.read_only()),
        id_string(&id, &mut id_buf),
        assignment.dev.base,
        assignment.dev.irq,
        drv.ring.size,
        drv.features,
    );
    drv.disarm();
    if blk.mode == BlkMode::Hostile {
        hostile(cpu, &mut drv, &assignment, &id);
    } else if blk.mode == BlkMode::SeqWrite {
        seq_write::run(cpu, config, dev, &mut drv);
    } else {
        workload(cpu, config, dev, &mut drv);
    }
    drv.disarm();
}

/// Initialises the device and reads its ID.
fn bring_up(drv: &mut Driver) -> Result<[u8; ID_BYTES as usize], BlkError> {
    drv.init(InitVariant::Normal)?;
    match drv.get_id() {
        Some(S_OK) => Ok(drv.id_raw()),
        _ => Err("get-id-failed"),
    }
}

/// One request in flight.
#[derive(Clone, Copy, Default)]
struct Flight {
    busy: bool,
    kind: u32,
    offset: u64,
    len: u32,
    t_notify: u64,
}

/// What a run measured.
struct Totals {
    ops: u64,
    bytes: u64,
    errors: u64,
    verify_errors: u64,
    unknown: u64,
    latency: Histogram,
    timed_out: bool,
}

/// Next request of a run: (type, disk byte offset, length).
type Next = Option<(u32, u64, u32)>;

/// Keeps up to `qd` requests from `next` in flight until it runs dry; verifies reads
/// against the pattern if `verify`.
fn run_requests(
    drv: &mut Driver,
    qd: usize,
    seed: u64,
    verify: bool,
    totals: &mut Totals,
    mut next: impl FnMut() -> Next,
) {
    let mut flights = [Flight::default(); MAX_QD];
    let qd = qd.clamp(1, MAX_QD);
    let mut in_flight = 0;
    let mut exhausted = false;
    let mut batch = [0usize; MAX_QD];
    loop {
        let mut posted = 0;
        while in_flight < qd && !exhausted {
            let Some((kind, offset, len)) = next() else {
                exhausted = true;
                break;
            };
            let Some(s) = flights.iter().take(qd).position(|f| !f.busy) else {
                break;
            };
            if kind == T_OUT {
                fill_pattern(buffer(drv.data(s), len), offset, seed);
            }
            drv.post(s, kind, offset / SECTOR, len);
            flights[s] = Flight {
                busy: true,
                kind,
                offset,
                len,
                t_notify: 0,
            };
            batch[posted] = s;
            posted += 1;
            in_flight += 1;
        }
        if posted > 0 {
            let t = x86::rdtsc();
            for &s in &batch[..posted] {
                flights[s].t_notify = t;
            }
            drv.notify();
        }
        if in_flight == 0 {
            return;
        }
        let deadline = x86::rdtsc() + time::us_to_tsc(REQUEST_TIMEOUT_US);
        let Some(seen) = drv.wait(deadline) else {
            if drv.config_changed {
                warn!(
                    "blk: the device needs a reset (status {:#x}); giving up",
                    drv.device_status()
                );
            } else {
                warn!("blk: {in_flight} requests not completed after {REQUEST_TIMEOUT_US} us; giving up");
            }
            totals.timed_out = true;
            return;
        };
        while let Some((id, _len)) = drv.next_used() {
            let s = (id / 3) as usize;
            let valid = id % 3 == 0 && s < qd && flights[s].busy;
            if !valid {
                totals.unknown += 1;
                continue;
            }
            let f = flights[s];
            flights[s].busy = false;
            in_flight -= 1;
            totals.ops += 1;
            totals
                .latency
                .record(time::tsc_to_us(seen.saturating_sub(f.t_notify)));
            if r8(drv.status_addr(s)) != S_OK {
                totals.errors += 1;
                continue;
            }
            totals.bytes += u64::from(f.len);
            if verify && f.kind == T_IN {
                if let Some(m) = check_pattern(buffer(drv.data(s), f.len), f.offset, seed) {
                    totals.verify_errors += 1;
                    if totals.verify_errors <= MISMATCH_LINES {
                        report_mismatch(&m);
                        drv.disarm();
                    }
                }
            }
        }
    }
}

fn report_mismatch(m: &Mismatch) {
    warn!(
        "blk: verify: disk offset {:#x} holds {:#018x}, expected {:#018x}",
        m.offset, m.found, m.expected
    );
}

/// The non-hostile modes: prints the `result` line.
fn workload(cpu: usize, config: &Config, dev: usize, drv: &mut Driver) {
    let blk = &config.blk;
    let size = u64::from(blk.size);
    let capacity = drv.capacity * SECTOR;
    let default_span = if blk.mode.is_verify() {
        capacity.min(VERIFY_SPAN_DEFAULT)
    } else {
        capacity
    };
    let mut span = blk.span.unwrap_or(default_span);
    if span > capacity {
        warn!("blk: blk_span={span} is beyond the capacity ({capacity} bytes); using the capacity");
        span = capacity;
    }
    span -= span % size;
    let mut qd = usize::from(blk.qd);
    let max_qd = usize::from(drv.ring.size / 3);
    if qd > max_qd {
        warn!(
            "blk: blk_qd={qd} needs {} descriptors, the queue has {}; using {max_qd}",
            3 * qd,
            drv.ring.size
        );
        qd = max_qd;
    }
    let mode = blk.mode.name();
    if span == 0 {
        warn!("blk: span ({span} bytes) smaller than blk_size={size}");
        println!("result cpu={cpu} workload=blk mode={mode} dev={dev} error=span-too-small");
        return;
    }
    // Touch the buffers once so first-touch costs stay out of the measurement.
    for s in 0..qd {
        buffer(drv.data(s), blk.size).fill(0);
    }

    let mut totals = Totals {
        ops: 0,
        bytes: 0,
        errors: 0,
        verify_errors: 0,
        unknown: 0,
        latency: Histogram::new(),
        timed_out: false,
    };
    let wakeups0 = wait::wakeups();
    drv.poll_iters = 0;
    let t0 = x86::rdtsc();
    let blocks = span / size;
    let seed = blk.seed;
    match blk.mode {
        BlkMode::RandRead | BlkMode::RandWrite => {
            let kind = if blk.mode == BlkMode::RandRead {
                T_IN
            } else {
                T_OUT
            };
            let mut rng = Rng::new(seed, cpu as u64);
            let end = t0 + time::us_to_tsc(config.ms * 1000);
            let mut issued = 0u64;
            let ops = blk.ops;
            let verify = blk.verify && kind == T_IN;
            let (burst, think) = (blk.burst, time::us_to_tsc(blk.think_us));
            // Between bursts the CPU sleeps (halts on the timer) or, in poll
            // mode, computes: then the I/O rate is set by the think time and
            // what the CPU computes meanwhile is its own progress.
            let poll = blk.wait == BlkWait::Poll;
            let (mut think_iters, mut think_state) = (0u64, seed);
            run_requests(drv, qd, seed, verify, &mut totals, || {
                if burst > 0 && issued > 0 && issued.is_multiple_of(burst) {
                    let until = (x86::rdtsc() + think).min(end);
                    if poll {
                        while x86::rdtsc() < until {
                            think_state = crate::workloads::compute_chunk(think_state);
                            think_iters += crate::workloads::COMPUTE_CHUNK;
                        }
                    } else {
                        wait::halt_until(Some(until), || false);
                    }
                }
                let more = if ops > 0 {
                    issued < ops
                } else {
                    x86::rdtsc() < end
                };
                issued += 1;
                more.then(|| (kind, rng.below(blocks) * size, blk.size))
            });
            core::hint::black_box(think_state);
            drv.poll_iters += think_iters;
        }
        BlkMode::WriteVerify | BlkMode::ReadVerify => {
            if blk.mode == BlkMode::WriteVerify {
                let mut at = 0;
                run_requests(drv, qd, seed, false, &mut totals, || {
                    let r = (at < span).then_some((T_OUT, at, blk.size));
                    at += size;
                    r
                });
                if drv.features & F_FLUSH != 0 && !totals.timed_out {
                    let mut once = true;
                    run_requests(drv, 1, seed, false, &mut totals, || {
                        core::mem::take(&mut once).then_some((T_FLUSH, 0, 0))
                    });
                }
            }
            if !totals.timed_out {
                let mut at = 0;
                run_requests(drv, qd, seed, true, &mut totals, || {
                    let r = (at < span).then_some((T_IN, at, blk.size));
                    at += size;
                    r
                });
            }
        }
        BlkMode::Hostile | BlkMode::SeqWrite => {}
    }
    let elapsed_us = time::tsc_to_us(x86::rdtsc() - t0).max(1);
    let wakeups = wait::wakeups() - wakeups0;
    drv.disarm();
    if totals.unknown > 0 {
        warn!(
            "blk: {} used-ring entries named no request in flight",
            totals.unknown
        );
    }
    let h = &totals.latency;
    println!(
        "result cpu={cpu} workload=blk mode={mode} ops={} bytes={} errors={} verify_errors={} ms={} iops={} lat_us_p50={} lat_us_p99={} lat_us_p999={} lat_us_max={} wakeups={wakeups} dev={dev} size={size} qd={qd} wait={} span={span} lat_us_p10={} lat_us_p25={} lat_us_p75={} lat_us_p90={} poll_iters_per_ms={}{}",
        totals.ops,
        totals.bytes,
        totals.errors + totals.unknown,
        totals.verify_errors,
        elapsed_us / 1000,
        totals.ops * 1_000_000 / elapsed_us,
        h.percentile(50),
        h.percentile(99),
        h.permille(999),
        h.max(),
        blk.wait.name(),
        h.percentile(10),
        h.percentile(25),
        h.percentile(75),
        h.percentile(90),
        drv.poll_iters * 1000 / elapsed_us,
        if totals.timed_out { " timed_out=1" } else { "" },
    );
}

// ---- hostile mode ------------------------------------------------------------------------

/// What one hostile case saw.
struct Outcome {
    /// The status byte, if the device wrote it.
    status: Option<u8>,
    used: bool,
    /// A case-specific fact (`key=value`), printed as is.
    detail: Option<(&'static str, u64)>,
}

impl Outcome {
    /// Nothing came back (cases that are not one request).
    const NONE: Outcome = Outcome {
        status: None,
        used: false,
        detail: None,
    };

    fn with(mut self, key: &'static str, value: u64) -> Self {
        self.detail = Some((key, value));
        self
    }
}

/// Offers the chain `descs` (index, addr, len, flags, next) with avail entry `head`,
/// notifies, and waits up to `HOSTILE_TIMEOUT_US` for a used entry.
fn submit_raw(drv: &mut Driver, descs: &[(u16, u64, u32, u16, u16)], head: u16) -> Outcome {
    w8(drv.dma + SCRATCH_STATUS, STATUS_UNTOUCHED);
    for &(i, addr, len, flags, next) in descs {
        drv.desc(i, addr, len, flags, next);
    }
    drv.offer(head);
    drv.notify();
    wait_outcome(drv)
}

fn wait_outcome(drv: &mut Driver) -> Outcome {
    let deadline = x86::rdtsc() + time::us_to_tsc(HOSTILE_TIMEOUT_US);
    let used = drv.wait(deadline).is_some();
    while drv.next_used().is_some() {}
    let status = r8(drv.dma + SCRATCH_STATUS);
    Outcome {
        status: (status != STATUS_UNTOUCHED).then_some(status),
        used,
        detail: None,
    }
}

fn scratch_header(drv: &Driver, kind: u32, sector: u64) -> u64 {
    let h = drv.dma + SCRATCH_HEADER;
    w32(h, kind);
    w32(h + 4, 0);
    w64(h + 8, sector);
    h
}

/// The hostile cases, in order. A serial-console flood belongs here too once the console
/// is bounded (issue 9 item 3's console part): add a case that prints `MMIO_FLOOD` lines.
const CASES: [&str; 25] = [
    "buf-outside-ram",
    "len-overflow",
    "desc-loop",
    "next-out-of-range",
    "short-header",
    "writable-header",
    "status-readonly",
    "data-wrong-direction",
    "unsupported-type",
    "sector-beyond-capacity",
    "sector-overflow",
    "odd-length",
    "write-readonly",
    "head-out-of-range",
    "avail-idx-jump",
    "bad-registers",
    "queue-outside-ram",
    "zero-length-segment",
    "indirect",
    "config-write",
    "driver-ok-no-queue",
    "repost-head",
    "reset-queued",
    "reset-running",
    "mmio-flood",
];

/// Register accesses of `mmio-flood` (each a protocol error the VMM counts and logs).
const MMIO_FLOOD: u32 = 20_000;
/// Times `repost-head` makes the same head available again.
const REPOSTS: u32 = 2_000;
/// The marker `reset-running` leaves in its buffers after the reset.
const MARKER: u8 = 0xA5;

/// Runs case `name`; `Err(reason)` if it does not apply.
fn hostile_case(drv: &mut Driver, a: &Assignment, name: &str) -> Result<Outcome, &'static str> {
    const N: u16 = DESC_F_NEXT;
    const W: u16 = DESC_F_WRITE;
    let st = drv.dma + SCRATCH_STATUS;
    let data = drv.dma + SCRATCH_DATA;
    let q = drv.ring.size;
    // A well-formed read of `len` bytes at `sector` with the given data buffer and flags.
    let read = |drv: &mut Driver, kind: u32, sector: u64, buf: u64, len: u32, dflags: u16| {
        let h = scratch_header(drv, kind, sector);
        submit_raw(
            drv,
            &[
                (0, h, 16, N, 1),
                (1, buf, len, dflags | N, 2),
                (2, st, 1, W, 0),
            ],
            0,
        )
    };
    Ok(match name {
        "buf-outside-ram" => read(drv, T_IN, 0, OUTSIDE_RAM, 4096, W),
        "len-overflow" => read(drv, T_IN, 0, a.ram_top - 4096, 0xFFFF_FFF0, W),
        "desc-loop" => {
            let h = scratch_header(drv, T_IN, 0);
            submit_raw(drv, &[(0, h, 16, N, 1), (1, data, 512, W | N, 0)], 0)
        }
        "next-out-of-range" => {
            let h = scratch_header(drv, T_IN, 0);
            submit_raw(drv, &[(0, h, 16, N, q + 5)], 0)
        }
        "short-header" => {
            let h = scratch_header(drv, T_IN, 0);
            submit_raw(
                drv,
                &[(0, h, 8, N, 1), (1, data, 512, W | N, 2), (2, st, 1, W, 0)],
                0,
            )
        }
        "writable-header" => {
            let h = scratch_header(drv, T_IN, 0);
            submit_raw(
                drv,
                &[
                    (0, h, 16, W | N, 1),
                    (1, data, 512, W | N, 2),
                    (2, st, 1, W, 0),
                ],
                0,
            )
        }
        "status-readonly" => {
            let h = scratch_header(drv, T_IN, 0);
            submit_raw(
                drv,
                &[(0, h, 16, N, 1), (1, data, 512, W | N, 2), (2, st, 1, 0, 0)],
                0,
            )
        }
        "data-wrong-direction" => read(drv, T_IN, 0, data, 512, 0),
        "unsupported-type" => {
            let h = scratch_header(drv, 0xFF, 0);
            submit_raw(drv, &[(0, h, 16, N, 2), (2, st, 1, W, 0)], 0)
        }
        "sector-beyond-capacity" => read(drv, T_IN, drv.capacity, data, 512, W),
        "sector-overflow" => read(drv, T_IN, u64::MAX - 1, data, 512, W),
        "odd-length" => read(drv, T_IN, 0, data, 100, W),
        "write-readonly" => {
            if !drv.read_only() {
                return Err("not-read-only");
            }
            read(drv, T_OUT, 0, data, 512, 0)
        }
        "head-out-of-range" => {
            w8(st, STATUS_UNTOUCHED);
            drv.offer(q);
            drv.notify();
            wait_outcome(drv)
        }
        "avail-idx-jump" => {
            w8(st, STATUS_UNTOUCHED);
            let h = scratch_header(drv, T_IN, 0);
            drv.desc(0, h, 16, N, 1);
            drv.desc(1, data, 512, W | N, 2);
            drv.desc(2, st, 1, W, 0);
            for i in 0..q {
                w16(drv.dma + drv.ring.avail_slot(i), 0);
            }
            drv.avail_idx = drv.avail_idx.wrapping_add(q + 1);
            compiler_fence(Ordering::Release);
            w16(drv.dma + RingLayout::AVAIL + 2, drv.avail_idx);
            drv.notify();
            wait_outcome(drv)
        }
        "bad-registers" => {
            // A re-initialisation with junk on the way, then GET_ID must still work.
            let ok = drv.init(InitVariant::JunkRegisters).is_ok();
            if !ok {
                Outcome::NONE
            } else {
                w8(st, STATUS_UNTOUCHED);
                let h = scratch_header(drv, T_GET_ID, 0);
                submit_raw(
                    drv,
                    &[
                        (0, h, 16, N, 1),
                        (1, data, ID_BYTES, W | N, 2),
                        (2, st, 1, W, 0),
                    ],
                    0,
                )
            }
        }
        "queue-outside-ram" => {
            let _ = drv.init(InitVariant::QueueOutsideRam);
            // Let a configuration-change interrupt (NEEDS_RESET) arrive and acknowledge it.
            let deadline = x86::rdtsc() + time::us_to_tsc(HOSTILE_TIMEOUT_US / 4);
            let _ = drv.wait(deadline);
            Outcome::NONE
        }
        "zero-length-segment" => {
            // A valid read whose data is split by an empty descriptor.
            let h = scratch_header(drv, T_IN, 0);
            submit_raw(
                drv,
                &[
                    (0, h, 16, N, 1),
                    (1, data, 512, W | N, 3),
                    (3, data + 512, 0, W | N, 2),
                    (2, st, 1, W, 0),
                ],
                0,
            )
        }
        "indirect" => {
            // VIRTQ_DESC_F_INDIRECT, which the driver did not negotiate: a table at
            // SCRATCH_DATA + 0x1000 holding a valid read.
            let h = scratch_header(drv, T_IN, 0);
            let table = data + 0x1000;
            for (i, (addr, len, flags, next)) in
                [(h, 16, N, 1), (data, 512, W | N, 2), (st, 1, W, 0)]
                    .into_iter()
                    .enumerate()
            {
                let at = table + 16 * i as u64;
                w64(at, addr);
                w32(at + 8, len);
                w16(at + 12, flags);
                w16(at + 14, next);
            }
            submit_raw(drv, &[(0, table, 48, DESC_F_INDIRECT, 0)], 0)
        }
        "config-write" => {
            // The capacity is the device's: writes to it (any width) change nothing.
            let before = drv.mmio.config_u64(0);
            drv.mmio.write(reg::CONFIG, 0xFFFF_FFFF);
            drv.mmio.write(reg::CONFIG + 4, 0xFFFF_FFFF);
            drv.mmio.write8(reg::CONFIG + 1, 0x5A);
            drv.mmio.write(reg::CONFIG + 0xFC, 1);
            let kept = drv.mmio.config_u64(0) == before;
            Outcome::NONE.with("capacity_kept", u64::from(kept))
        }
        "driver-ok-no-queue" => {
            let _ = drv.init(InitVariant::NoReadyQueue);
            let deadline = x86::rdtsc() + time::us_to_tsc(HOSTILE_TIMEOUT_US / 4);
            let _ = drv.wait(deadline);
            Outcome::NONE
        }
        "repost-head" => {
            // The same chain made available again and again while it may be in
            // flight, each with a notify (a driver growing the VMM's queues).
            w8(st, STATUS_UNTOUCHED);
            let h = scratch_header(drv, T_IN, 0);
            drv.desc(0, h, 16, N, 1);
            drv.desc(1, data, 512, W | N, 2);
            drv.desc(2, st, 1, W, 0);
            for _ in 0..REPOSTS {
                drv.offer(0);
                drv.notify();
            }
            let o = wait_outcome(drv);
            o.with("reposts", u64::from(REPOSTS))
        }
        "reset-queued" => {
            // Requests notified, then a reset before any can have been waited for:
            // under --policy idle --cpu-cap 0 on one vCPU only this vCPU could run them.
            for s in 0..4 {
                drv.post(s, T_IN, 0, 4096);
            }
            drv.notify();
            let reset = drv.reset();
            Outcome::NONE.with("reset_returned", u64::from(reset))
        }
        "reset-running" => reset_running(drv),
        "mmio-flood" => {
            for i in 0..MMIO_FLOOD {
                if i % 2 == 0 {
                    drv.mmio.write(0x0f0, i);
                } else {
                    drv.mmio.write(reg::QUEUE_NOTIFY, 7);
                }
            }
            let alive = drv.device_status() & status::DRIVER_OK != 0;
            Outcome::NONE.with("accesses", u64::from(MMIO_FLOOD) * u64::from(alive))
        }
        _ => return Err("unknown-case"),
    })
}

/// Large reads posted, a reset once the first completes (so others are likely running
/// on other threads), then a check that nothing lands afterwards: the used index stays
/// and buffers marked after the reset keep their marker.
fn reset_running(drv: &mut Driver) -> Outcome {
    let slots = usize::from(drv.ring.size / 3).min(MAX_QD).min(8);
    for s in 0..slots {
        drv.post(s, T_IN, 0, 65536);
    }
    drv.notify();
    let deadline = x86::rdtsc() + time::us_to_tsc(HOSTILE_TIMEOUT_US);
    let used = drv.wait(deadline).is_some();
    let reset = drv.reset();
    let frozen = drv.used_idx();
    for s in 0..slots {
        buffer(drv.data(s), 65536).fill(MARKER);
    }
    // Give a late completion every chance to land (a check that can fail: the host
    // side proves the rule in its unit tests and the virtio_blk_threads fuzz target).
    wait::halt_until(Some(x86::rdtsc() + time::us_to_tsc(20_000)), || false);
    let late = (0..slots)
        .filter(|&s| buffer(drv.data(s), 65536).iter().any(|&b| b != MARKER))
        .count() as u64
        + u64::from(drv.used_idx() != frozen);
    let o = Outcome {
        status: None,
        used,
        detail: None,
    };
    if reset {
        o.with("late_writes", late)
    } else {
        o.with("reset_returned", 0)
    }
}

fn hostile(cpu: usize, drv: &mut Driver, a: &Assignment, id: &[u8; ID_BYTES as usize]) {
    let mut cases = 0;
    let mut answered = 0;
    for name in CASES {
        drv.config_changed = false;
        let outcome = hostile_case(drv, a, name);
        let device_status = drv.device_status();
        drv.disarm();
        let Ok(o) = outcome else {
            let why = outcome.err().unwrap_or("");
            println!("hostile case={name} skipped={why}");
            continue;
        };
        cases += 1;
        answered += u32::from(o.used);
        // A case the device did not answer, or that broke it, leaves the queue in an
        // unknown state: reset and initialise again before the next one.
        let needs_reset = device_status & status::NEEDS_RESET != 0;
        let reset = !o.used || needs_reset || device_status & status::DRIVER_OK == 0;
        let reinit = if reset {
            match drv.init(InitVariant::Normal) {
                Ok(()) => "ok",
                Err(e) => e,
            }
        } else {
            "-"
        };
        drv.disarm();
        let (key, value) = o.detail.unwrap_or(("", 0));
        println!(
            "hostile case={name} status={} used={} device_status={device_status:#x} needs_reset={} config_irq={} reset={}{}{}{}{}{}{}",
            StatusFmt(o.status),
            u8::from(o.used),
            u8::from(needs_reset),
            u8::from(drv.config_changed),
            u8::from(reset),
            if reset { " reinit=" } else { "" },
            if reset { reinit } else { "" },
            if key.is_empty() { "" } else { " " },
            key,
            if key.is_empty() { "" } else { "=" },
            DecFmt(o.detail.map(|_| value)),
        );
    }
    // The device must still work: a 4 KiB read and GET_ID (same answer as at start-up).
    let read_ok = drv.sync_request(T_IN, 0, 4096) == Some(S_OK);
    let id_ok = drv.get_id() == Some(S_OK) && drv.id_raw() == *id;
    drv.disarm();
    println!(
        "result cpu={cpu} workload=blk mode=hostile cases={cases} answered={answered} after_ok={} after_read={} after_get_id={}",
        u8::from(read_ok && id_ok),
        u8::from(read_ok),
        u8::from(id_ok),
    );
    // Ends with requests notified and never waited for: the VMM must shut down with
    // them queued (under --cpu-cap 0 on one vCPU only this vCPU could have run them).
    for s in 0..4 {
        drv.post(s, T_IN, 0, 4096);
    }
    drv.notify();
}

/// An optional number: decimal, or nothing.
struct DecFmt(Option<u64>);

impl core::fmt::Display for DecFmt {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.0 {
            Some(v) => write!(f, "{v}"),
            None => Ok(()),
        }
    }
}

/// A status byte as printed: decimal, or `none` if the device did not write it.
struct StatusFmt(Option<u8>);

impl core::fmt::Display for StatusFmt {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.0 {
            Some(s) => write!(f, "{s}"),
            None => f.write_str("none"),
        }
    }
}
