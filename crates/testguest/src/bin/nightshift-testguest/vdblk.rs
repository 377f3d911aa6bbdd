//! The `blk` workload's verify modes through `virtio-drivers`' `VirtIOBlk`
//! (`blk_driver=virtio-drivers`): the same device, data pattern, checks and result line as
//! the project's own driver (`blk`), so a VMM's block device is checked by a driver nobody
//! here wrote. The own driver stays the default and the bench's control.
//!
//! The crate's queue has 16 entries and, without a heap, no indirect descriptors, so a
//! request takes three: at most 5 are kept in flight (`blk_qd` is capped there). Waiting is
//! as in `blk`: halt until the device interrupt (`blk_wait=irq`), or spin on the used ring
//! with interrupts off (`blk_wait=poll`); a request not back after 10 s ends the run with
//! `timed_out=1`.

use testguest::blk::{check_pattern, fill_pattern, id_string};
use testguest::cmdline::{BlkConfig, BlkMode, BlkWait, Config, SECTOR};
use testguest::stats::Histogram;
use virtio_drivers::device::blk::{BlkReq, BlkResp, VirtIOBlk};
use virtio_drivers::transport::mmio::MmioTransport;
use zerocopy::{FromBytes, FromZeros};

use crate::blk::Assignment;
use crate::dma::{self, GuestHal};
use crate::idt::IrqSlot;
use crate::vdevices::Resetting;
use crate::{apic, println, stack, time, vdevices, wait, warn, x86};

/// Requests in flight at most (16 descriptors, 3 per request).
const MAX_QD: usize = 5;
/// Longest a request may take.
const REQUEST_TIMEOUT_US: u64 = 10_000_000;
/// A halted CPU wakes at least this often to check its deadline.
const WATCHDOG_US: u64 = 1_000_000;
/// Default span of the verify modes, as the own driver's.
const VERIFY_SPAN_DEFAULT: u64 = 64 << 20;
/// Status byte the device has not written.
const STATUS_UNTOUCHED: u8 = 0xFF;
/// Mismatches reported in `warning:` lines per run.
const MISMATCH_LINES: u64 = 3;

type Disk = Resetting<VirtIOBlk<GuestHal, MmioTransport<'static>>>;

/// One request slot: its request header, status and data buffer stay put while in flight.
struct Slot {
    req: BlkReq,
    resp: BlkResp,
    data: &'static mut [u8],
    /// (token, write?, disk offset, TSC at submission) while in flight.
    flight: Option<(u16, bool, u64, u64)>,
}

struct Totals {
    ops: u64,
    bytes: u64,
    errors: u64,
    verify_errors: u64,
    latency: Histogram,
    timed_out: bool,
}

fn untouched() -> BlkResp {
    BlkResp::read_from_bytes(&[STATUS_UNTOUCHED][..]).unwrap_or_else(|_| BlkResp::new_zeroed())
}

/// Runs the verify modes on CPU `cpu` with the device `blk::setup` assigned it.
pub fn run(cpu: usize, config: &Config, a: &Assignment) {
    let blk = &config.blk;
    let mode = blk.mode.name();
    let dev = a.index;
    if !blk.mode.is_verify() {
        println!(
            "result cpu={cpu} workload=blk mode={mode} dev={dev} error=unsupported-mode driver=virtio-drivers"
        );
        return;
    }
    let disk = vdevices::transport(&a.dev).and_then(|t| {
        let disk = VirtIOBlk::new(t).map_err(|e| {
            warn!("blk dev={dev}: virtio-drivers: {e}");
            "init-failed"
        })?;
        Ok(Resetting::new(a.dev, disk))
    });
    let mut disk = match disk {
        Ok(d) => d,
        Err(e) => {
            println!("result cpu={cpu} workload=blk mode={mode} dev={dev} error={e} driver=virtio-drivers");
            return;
        }
    };
    let mut id = [0u8; 20];
    if disk.device_id(&mut id).is_err() {
        id = [0; 20];
    }
    let mut id_buf = [0u8; 20];
    println!(
        "blk dev={dev} capacity={} ro={} id={} base={:#x} irq={} qsize={} driver=virtio-drivers",
        disk.capacity(),
        u8::from(disk.readonly()),
        id_string(&id, &mut id_buf),
        a.dev.base,
        a.dev.irq,
        disk.virt_queue_size(),
    );
    let poll = blk.wait == BlkWait::Poll;
    if poll {
        disk.disable_interrupts();
    }
    if let Err(e) = verify(cpu, blk, dev, &mut disk, poll, IrqSlot::device(a.index)) {
        println!(
            "result cpu={cpu} workload=blk mode={mode} dev={dev} error={e} driver=virtio-drivers"
        );
    }
}

fn verify(
    cpu: usize,
    blk: &BlkConfig,
    dev: usize,
    disk: &mut Disk,
    poll: bool,
    slot: IrqSlot,
) -> Result<(), &'static str> {
    let mark = stack::paint();
    let size = u64::from(blk.size);
    let capacity = disk.capacity() * SECTOR;
    let mut span = blk.span.unwrap_or(capacity.min(VERIFY_SPAN_DEFAULT));
    if span > capacity {
        warn!("blk: blk_span={span} is beyond the capacity ({capacity} bytes); using the capacity");
        span = capacity;
    }
    span -= span % size;
    if span == 0 {
        return Err("span-too-small");
    }
    let mut qd = usize::from(blk.qd);
    if qd > MAX_QD {
        warn!("blk: blk_qd={qd}: virtio-drivers' 16-entry queue holds {MAX_QD}; using {MAX_QD}");
        qd = MAX_QD;
    }
    let mem = dma::alloc_bytes(qd * blk.size as usize).ok_or("no-dma-memory")?;
    let mut buffers = mem.chunks_exact_mut(blk.size as usize);
    let mut slots: [Slot; MAX_QD] = core::array::from_fn(|_| Slot {
        req: BlkReq::default(),
        resp: untouched(),
        data: buffers.next().unwrap_or_default(),
        flight: None,
    });
    let slots = &mut slots[..qd];
    let mut totals = Totals {
        ops: 0,
        bytes: 0,
        errors: 0,
        verify_errors: 0,
        latency: Histogram::new(),
        timed_out: false,
    };
    let mut waiter = Waiter::new(slot, poll);
    let wakeups0 = wait::wakeups();
    let t0 = x86::rdtsc();
    if blk.mode == BlkMode::WriteVerify {
        pass(
            disk,
            slots,
            &mut waiter,
            &mut totals,
            span,
            size,
            blk.seed,
            true,
        );
        if !totals.timed_out {
            totals.ops += 1;
            if disk.flush().is_err() {
                totals.errors += 1;
            }
        }
    }
    if !totals.timed_out {
        pass(
            disk,
            slots,
            &mut waiter,
            &mut totals,
            span,
            size,
            blk.seed,
            false,
        );
    }
    waiter.disarm();
    let elapsed_us = time::tsc_to_us(x86::rdtsc() - t0).max(1);
    let h = &totals.latency;
    println!(
        "result cpu={cpu} workload=blk mode={} ops={} bytes={} errors={} verify_errors={} ms={} iops={} lat_us_p50={} lat_us_p99={} lat_us_p999={} lat_us_max={} wakeups={} dev={dev} size={size} qd={qd} wait={} span={span} lat_us_p10={} lat_us_p25={} lat_us_p75={} lat_us_p90={} poll_iters_per_ms=0 driver=virtio-drivers stack_used={}{}",
        blk.mode.name(),
        totals.ops,
        totals.bytes,
        totals.errors,
        totals.verify_errors,
        elapsed_us / 1000,
        totals.ops * 1_000_000 / elapsed_us,
        h.percentile(50),
        h.percentile(99),
        h.permille(999),
        h.max(),
        wait::wakeups() - wakeups0,
        blk.wait.name(),
        h.percentile(10),
        h.percentile(25),
        h.percentile(75),
        h.percentile(90),
        mark.used(),
        if totals.timed_out { " timed_out=1" } else { "" },
    );
    Ok(())
}

/// Writes (or reads and checks) [0, span) in `size` requests, sequentially, keeping every
/// slot busy.
#[allow(clippy::too_many_arguments)]
fn pass(
    disk: &mut Disk,
    slots: &mut [Slot],
    waiter: &mut Waiter,
    totals: &mut Totals,
    span: u64,
    size: u64,
    seed: u64,
    write: bool,
) {
    let mut at = 0;
    loop {
        for s in slots.iter_mut().filter(|s| s.flight.is_none()) {
            if at >= span {
                break;
            }
            if write {
                fill_pattern(s.data, at, seed);
            }
            s.resp = untouched();
            let block = (at / SECTOR) as usize;
            // SAFETY: the slot's header, buffer and status stay untouched until the
            // request is completed below with the same three.
            let token = unsafe {
                if write {
                    disk.write_blocks_nb(block, &mut s.req, s.data, &mut s.resp)
                } else {
                    disk.read_blocks_nb(block, &mut s.req, s.data, &mut s.resp)
                }
            };
            match token {
                Ok(t) => s.flight = Some((t, write, at, x86::rdtsc())),
                Err(e) => {
                    warn!("blk: virtio-drivers refused a request: {e}");
                    totals.timed_out = true;
                    return;
                }
            }
            at += size;
        }
        if slots.iter().all(|s| s.flight.is_none()) {
            return;
        }
        let deadline = x86::rdtsc() + time::us_to_tsc(REQUEST_TIMEOUT_US);
        let Some(seen) = waiter.wait_used(disk, deadline) else {
            warn!("blk: a request was not completed after {REQUEST_TIMEOUT_US} us; giving up");
            totals.timed_out = true;
            return;
        };
        while let Some(token) = disk.peek_used() {
            let Some(s) = slots
                .iter_mut()
                .find(|s| s.flight.is_some_and(|f| f.0 == token))
            else {
                warn!("blk: the used ring names token {token}, not in flight; giving up");
                totals.timed_out = true;
                return;
            };
            let Some((_, was_write, offset, t_submit)) = s.flight.take() else {
                return;
            };
            // SAFETY: the same header, buffer and status the request was submitted with.
            let status = unsafe {
                if was_write {
                    disk.complete_write_blocks(token, &s.req, s.data, &mut s.resp)
                } else {
                    disk.complete_read_blocks(token, &s.req, s.data, &mut s.resp)
                }
            };
            totals.ops += 1;
            totals
                .latency
                .record(time::tsc_to_us(seen.saturating_sub(t_submit)));
            if status.is_err() {
                totals.errors += 1;
                continue;
            }
            totals.bytes += size;
            if !was_write {
                if let Some(m) = check_pattern(s.data, offset, seed) {
                    totals.verify_errors += 1;
                    if totals.verify_errors <= MISMATCH_LINES {
                        waiter.disarm();
                        warn!(
                            "blk: verify: disk offset {:#x} holds {:#018x}, expected {:#018x}",
                            m.offset, m.found, m.expected
                        );
                    }
                }
            }
        }
    }
}

/// Waits for the used ring (halting on the device interrupt, or spinning).
struct Waiter {
    slot: IrqSlot,
    poll: bool,
    seen_irqs: u64,
    timer_at: Option<u64>,
    seen_timer: u64,
}

impl Waiter {
    fn new(slot: IrqSlot, poll: bool) -> Self {
        Self {
            slot,
            poll,
            seen_irqs: wait::irq_count(slot),
            timer_at: None,
            seen_timer: 0,
        }
    }

    /// The TSC at which the used ring was seen to have something, or `None` at
    /// `deadline`.
    fn wait_used(&mut self, disk: &mut Disk, deadline: u64) -> Option<u64> {
        loop {
            let epoch = wait::irq_epoch();
            let irqs = wait::irq_count(self.slot);
            let interrupted = irqs != self.seen_irqs;
            self.seen_irqs = irqs;
            if disk.peek_used().is_some() {
                let seen = x86::rdtsc();
                if interrupted {
                    let _ = disk.ack_interrupt();
                }
                return Some(seen);
            }
            if interrupted {
                let _ = disk.ack_interrupt();
                continue;
            }
            let now = x86::rdtsc();
            if now >= deadline {
                return None;
            }
            if self.poll {
                core::hint::spin_loop();
                continue;
            }
            let want = deadline.min(now + time::us_to_tsc(WATCHDOG_US));
            let fired = wait::irq_count(IrqSlot::TIMEOUT) != self.seen_timer;
            if fired || self.timer_at.is_none_or(|at| at > want) {
                self.seen_timer = wait::irq_count(IrqSlot::TIMEOUT);
                apic::arm_timer(time::tsc_to_apic(want - now));
                self.timer_at = Some(want);
            }
            wait::halt_since(epoch);
        }
    }

    fn disarm(&mut self) {
        if self.timer_at.take().is_some() {
            apic::arm_timer(0);
        }
    }
}
