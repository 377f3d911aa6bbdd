//! Waiting without spinning: halt the CPU (`service::idle`, `sti; hlt` at CPL0) until an
//! interrupt has been counted, a condition holds or a deadline passes.
//!
//! CPL3 runs with IF clear, so an interrupt that arrives between a check and the halt
//! stays pending and ends the halt at once: there is no lost wake-up. Spinning instead
//! would be worse than wasteful here: with as many vCPUs as host CPUs, a vCPU spinning at
//! CPL3 can keep the vCPU it waits for off the host CPU for a whole scheduler slice.

use core::sync::atomic::{AtomicU64, Ordering};

use crate::idt::IrqSlot;
use crate::{apic, cpu, service, time, x86};

/// Per CPU: returns from HLT (`service::idle`) so far.
static WAKEUPS: [AtomicU64; cpu::MAX_CPUS] = [const { AtomicU64::new(0) }; cpu::MAX_CPUS];

/// This CPU's interrupt epoch: read it *before* looking at whatever a halt waits for, and
/// pass it to [`halt_since`].
pub fn irq_epoch() -> u64 {
    cpu::kernel(cpu::current())
        .irq_total
        .load(Ordering::Acquire)
}

/// Halts until the next interrupt has been handled on this CPU, counting the wake-up;
/// returns at once if one was handled since `epoch` was read ([`irq_epoch`]), so an
/// interrupt that arrives after the caller's last look and before its HLT is not slept
/// through (it would be until the next interrupt: a lost wake-up). Every halt of the
/// guest's CPL3 code goes through here.
pub fn halt_since(epoch: u64) {
    service::idle(epoch);
    WAKEUPS[cpu::current()].fetch_add(1, Ordering::Relaxed);
}

/// Returns from HLT on the calling CPU so far (see [`halt`]).
pub fn wakeups() -> u64 {
    WAKEUPS[cpu::current()].load(Ordering::Relaxed)
}

/// Interrupts counted so far on the calling CPU in `slot`.
pub fn irq_count(slot: IrqSlot) -> u64 {
    cpu::kernel(cpu::current()).irq_count[slot.index()].load(Ordering::Acquire)
}

/// Halts until `slot` has counted more than `seen` interrupts on the calling CPU; returns
/// the new count. The guest's "HLT until my interrupt arrives" primitive.
pub fn wait_irq(slot: IrqSlot, seen: u64) -> u64 {
    loop {
        let epoch = irq_epoch();
        let now = irq_count(slot);
        if now != seen {
            return now;
        }
        halt_since(epoch);
    }
}

/// Halts until `cond()` holds (checked after every interrupt) or the TSC passes
/// `deadline`, if any; returns whether `cond()` held. Uses the LAPIC timer on the
/// `IrqSlot::TIMEOUT` vector for the deadline (re-armed after every wake-up, as one timer
/// run may be shorter than the wait); other CPUs make `cond()` true and then call
/// [`wake`].
pub fn halt_until(deadline: Option<u64>, cond: impl Fn() -> bool) -> bool {
    if cond() {
        return true;
    }
    let met = loop {
        let epoch = irq_epoch();
        if cond() {
            break true;
        }
        if let Some(deadline) = deadline {
            let now = x86::rdtsc();
            if now >= deadline {
                break false;
            }
            apic::arm_timer(time::tsc_to_apic(deadline - now));
        }
        halt_since(epoch);
    };
    if deadline.is_some() {
        apic::arm_timer(0);
    }
    met
}

/// Ends a [`halt_until`] or [`wait_irq`] on the CPU with APIC ID `apic_id`.
pub fn wake(apic_id: u32) {
    apic::send_irq(apic_id, IrqSlot::WAKE);
}
