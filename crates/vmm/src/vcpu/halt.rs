//! A guest HLT under the userspace irqchip: the vCPU thread is an idle
//! executor from the instant the guest halts.
//!
//! `KVM_EXIT_HLT` returns to this thread at once (there is no in-kernel APIC
//! to sleep on). Until the halt ends, the thread loops:
//!
//! 1. If a request (pause, stop) is posted, or its APIC has an interrupt
//!    the guest can take, an NMI or an INIT, the halt ends: the run loop
//!    injects it and re-enters the guest.
//! 2. If the engine has work (or offered it), it runs it, for at most its
//!    budget **and never past its APIC timer's deadline**: a tick is late by
//!    at most the last item's overrun, never by a whole budget.
//! 3. Otherwise it announces itself idle to the engine
//!    (`Executor::announce_idle`: a submit now finds it in O(1) and claims
//!    it), looks at the queue once more, polls for a wake while the halt is
//!    within its polling window (KVM's adaptive halt polling, done here
//!    because KVM does not see this halt: [`super::halt_poll`]), and then
//!    waits (a condvar, no signal) until a wake or the timer deadline. Whoever has news for it (a device
//!    completion, an IPI, the engine with work) wakes it
//!    (`VcpuControl::tell`); news made on this very thread (a completion of
//!    work it ran in step 2) needs no wake.
//!
//! The halt is published (`Place::Halted`) before the first look at the
//! queue and the APIC, and every waker makes its news visible before it reads
//! that, so no wake is lost between a look and the wait. When the halt ends
//! for another reason, the announcement is withdrawn; if the engine claimed
//! this vCPU meanwhile, the claim is answered with a zero budget so the
//! engine finds the work other hands.

use std::time::{Duration, Instant};

use super::{Place, Vcpu, VcpuControl};

/// `budget`, cut to end by the APIC timer's `deadline` (VM clock ns) when
/// that comes first, `now` being the VM clock: the budget, and whether it
/// was cut. A tick is late by at most the last item's overrun.
pub(super) fn budget_until(budget: Duration, now: u64, deadline: Option<u64>) -> (Duration, bool) {
    match deadline.map(|d| Duration::from_nanos(d.saturating_sub(now))) {
        Some(left) if left < budget => (left, true),
        _ => (budget, false),
    }
}

impl Vcpu {
    /// Handles a guest HLT (user irqchip): works or waits until the halt
    /// ends. A request (pause, stop) interrupts the halt without ending it:
    /// [`Vcpu::halted`] stays set and the run loop comes back here instead of
    /// entering the guest, which would wake it without an interrupt.
    pub(super) fn idle_in_userspace(&mut self, control: &VcpuControl) {
        let interruptible = match self.halted {
            Some(interruptible) => interruptible,
            None => {
                self.stats.hlt_exits += 1;
                self.fd.get_kvm_run().if_flag != 0
            }
        };
        let started = Instant::now();
        if self.halted.is_none() {
            self.io_wait.halted(started);
        }
        self.halted = Some(interruptible);
        control.set_place(Place::Halted);
        // The first run of this halt counts its pickup from the HLT exit.
        let mut halted_at = Some(started);
        let ended = loop {
            let seen = control.generation();
            if control.has_request() {
                break false;
            }
            let Some(irq) = self.irq.as_mut() else {
                break true;
            };
            let status = irq.halt_status(interruptible, &mut self.stats);
            if status.wake {
                break true;
            }
            let until = status.deadline.map(|d| irq.instant(d));
            if self.work_while_halted(control, status.deadline, halted_at.take()) {
                continue;
            }
            if self.announce_idle() {
                continue;
            }
            if !self.poll(control, seen, started, until) {
                control.wait_for_wake(seen, until);
            }
        };
        self.withdraw_idle(control);
        let halted = started.elapsed();
        if ended {
            self.halted = None;
            self.halt_poll.update(halted);
        }
        control.set_place(Place::Outside);
        self.stats.halted_ns += halted.as_nanos() as u64;
    }

    /// Polls for a wake while this halt (which began at `started`) is within
    /// its polling window and before `until`; returns whether one came.
    fn poll(
        &mut self,
        control: &VcpuControl,
        seen: u64,
        started: Instant,
        until: Option<Instant>,
    ) -> bool {
        let window_end = started + self.halt_poll.window();
        let end = until.map_or(window_end, |u| u.min(window_end));
        let now = Instant::now();
        if now >= end {
            return false;
        }
        let woken = control.poll_for_wake(seen, end);
        self.stats.halt_poll_ns += now.elapsed().as_nanos() as u64;
        if woken {
            self.stats.halt_polls_ok += 1;
        }
        woken
    }

    /// Announces this executor idle before a wait; returns whether work was
    /// queued meanwhile (then look again instead of waiting).
    fn announce_idle(&self) -> bool {
        let Some(executor) = self.executor.as_ref() else {
            return false;
        };
        executor.announce_idle();
        executor.work_queued()
    }

    /// Withdraws the announcement as the halt ends (or pauses); a claim that
    /// came first is answered at once with a zero budget: the guest is
    /// about to run, so the engine finds the work other hands.
    fn withdraw_idle(&mut self, control: &VcpuControl) {
        let Some(executor) = self.executor.as_mut() else {
            return;
        };
        if executor.announce_busy() || control.take_work_offer() {
            executor.run_idle(Duration::ZERO);
        }
    }

    /// Runs queued engine work within the budget, cut to end by `deadline`
    /// (the APIC timer's, VM clock ns); `halted_at` is when this halt began,
    /// for the first look of a halt. Returns whether any item ran.
    fn work_while_halted(
        &mut self,
        control: &VcpuControl,
        deadline: Option<u64>,
        halted_at: Option<Instant>,
    ) -> bool {
        let (Some(executor), Some(irq)) = (self.executor.as_mut(), self.irq.as_ref()) else {
            return false;
        };
        // An offer (a kick, in idlework's terms) must be answered by a
        // run_idle call even if someone else took the work meanwhile.
        let offered = control.take_work_offer();
        if !offered && !executor.work_queued() {
            return false;
        }
        let (budget, clamped) = budget_until(executor.budget(), irq.now_ns(), deadline);
        let report = match halted_at {
            // Work was queued when the guest halted: the VMM knew at the
            // HLT exit, not at a claim.
            Some(t) if !offered => executor.run_idle_since(budget, t),
            _ => executor.run_idle(budget),
        };
        if report.items == 0 {
            return false;
        }
        let late = deadline.map(|d| irq.now_ns().saturating_sub(d));
        let s = &mut self.stats;
        s.count_idle_run(&report, clamped, late);
        s.halt_runs += 1;
        s.halt_items += report.items;
        true
    }

    /// Waits in userspace for this CPU's STARTUP IPI (or a request), then
    /// sets it up to start at the SIPI vector.
    pub(super) fn wait_for_sipi(&mut self, control: &VcpuControl) {
        control.set_place(Place::Parked);
        loop {
            let seen = control.generation();
            if control.has_request() {
                break;
            }
            let Some(irq) = self.irq.as_mut() else { break };
            if irq.take_sipi(&self.fd) {
                break;
            }
            control.wait_for_wake(seen, None);
        }
        control.set_place(Place::Outside);
    }
}
