//! A guest that waits for the I/O it just asked for: its vCPU serves the
//! request at once, on the notify's own exit.
//!
//! Under the idle policy, work a guest queues with a notify waits for an idle
//! vCPU. When the notifying guest's next step is to halt until that very
//! request completes (a closed-loop reader, a request/response server), the
//! idle vCPU that takes it is this one, one halt later: the work waits for the
//! guest's whole path from its notify to its HLT (on PVM an emulated kernel
//! entry, ~40 µs), then runs on this thread anyway, then the guest is woken.
//! Running it at the notify instead takes nothing from the guest that it would
//! have used, and saves the walk to the halt and the wake back. It needs the
//! notify to exit to this thread: under idle that is the default for the
//! devices whose driver waits for what it asks (block, rng; see
//! `WorkConfig::notify_paths`). Net keeps its ioeventfds: a transmit is not
//! waited for, and serving each one at its exit costs a stream every
//! notification the ring would otherwise suppress (measured on PVM: 900
//! exits per MiB instead of 160, half the throughput).
//!
//! Measured on the bench's `mixed` scenario (PVM, 2 CPUs, 3 alternated runs,
//! `scripts/ab/io_wait.py`): the I/O vCPU's p50 went from 138 to 44 µs and
//! IOPS from 5.0k to 20.5k under the user irqchip, and from 195 to 60 µs
//! under KVM's, with the computing vCPU's rate unchanged.
//!
//! Whether the guest will wait is guessed from its recent past, as KVM's halt
//! polling guesses whether a wake comes soon: the guest *waits for its I/O*
//! if, after its previous notify that queued work, it halted or notified
//! again within the window (`--io-wait-us`) without halting first. A guest
//! that computes between its requests for longer than the window (it has
//! other work, and reaps later) is not served at its notify: its work waits
//! for an idle vCPU as before. A guest that spins on its used ring waits
//! too, busily: it is served, which frees it from spinning. A wrong guess
//! costs the guest at most one budget of work on its own vCPU, where the idle
//! policy would have run it at its next halt.
//!
//! Under the kernel irqchip the VMM does not see the HLT itself; the halt
//! counted is the one a kick found (`KVM_MP_STATE_HALTED`), which is later
//! than the HLT, never earlier: the guess errs toward not serving.

use std::time::{Duration, Instant};

use super::halt::budget_until;
use super::user_irq::UserIrq;
use super::{Vcpu, VcpuControl};

/// The guess for one vCPU (kept on its thread).
#[derive(Debug)]
pub struct IoWaitGuess {
    /// Zero: never serve at the notify.
    window: Duration,
    /// When the exit of the last notify that queued work ended.
    last_notify: Option<Instant>,
    /// Whether a halt was counted since that notify.
    halted_since: bool,
    /// The current guess.
    waits: bool,
}

impl IoWaitGuess {
    /// A guess over `window` (zero: off).
    pub fn new(window: Duration) -> Self {
        IoWaitGuess {
            window,
            last_notify: None,
            halted_since: false,
            waits: false,
        }
    }

    /// Whether the guess is ever made.
    pub fn enabled(&self) -> bool {
        !self.window.is_zero()
    }

    /// Whether `at` falls within the window after the last notify.
    fn soon_after_notify(&self, at: Instant) -> bool {
        self.last_notify
            .is_some_and(|n| at.saturating_duration_since(n) <= self.window)
    }

    /// The guest halted at `at`. Only the first halt after a notify counts:
    /// it says what the guest did with the time after its notify.
    pub fn halted(&mut self, at: Instant) {
        if self.halted_since || self.last_notify.is_none() {
            return;
        }
        self.halted_since = true;
        self.waits = self.soon_after_notify(at);
    }

    /// Whether the guest, writing to a device at `at`, waits for what that
    /// write may ask for: it halted soon after its last notify, or (not
    /// having halted since) it notifies again soon after it.
    pub fn waits(&self, at: Instant) -> bool {
        if !self.enabled() {
            return false;
        }
        if self.halted_since {
            self.waits
        } else {
            self.soon_after_notify(at)
        }
    }

    /// A write that exited at `at` was a notify (it queued work), and its
    /// exit ended at `done` (served or not): what the guest did until now
    /// is the new guess.
    pub fn notified(&mut self, at: Instant, done: Instant) {
        self.waits = self.waits(at);
        self.last_notify = Some(done);
        self.halted_since = false;
    }
}

impl Vcpu {
    /// Before a QueueNotify write is dispatched: if the guest is guessed to
    /// wait for what it asks, announces this vCPU's executor as serving on
    /// return, so that the write's submissions claim it (no kick, no worker,
    /// no timekeeper wake) and
    /// [`serve_own_notify`](Self::serve_own_notify) runs them. Returns when
    /// the write exited, if so.
    pub(super) fn offer_to_serve(
        guess: &IoWaitGuess,
        executor: Option<&idlework::Executor>,
    ) -> Option<Instant> {
        let executor = executor.filter(|_| guess.enabled())?;
        let at = Instant::now();
        if !guess.waits(at) {
            return None;
        }
        executor.announce_serving();
        Some(at)
    }

    /// After a QueueNotify write (`offered`: when it exited, if this thread
    /// offered to serve it): if the guest waits for its work, runs the work
    /// now, within the budget (cut to the APIC timer's deadline under the
    /// user irqchip). Returns whether work ran.
    pub(super) fn serve_own_notify(
        &mut self,
        control: &VcpuControl,
        offered: Option<Instant>,
    ) -> bool {
        let Some(executor) = self.executor.as_mut() else {
            return false;
        };
        let Some(at) = offered else {
            if self.io_wait.enabled() {
                let now = Instant::now();
                self.io_wait.notified(now, now);
            }
            return false;
        };
        // Withdraw the offer; what the write submitted has claimed it (or
        // gone to another idle hand). Work another thread offered meanwhile
        // runs here now too.
        executor.announce_busy();
        control.take_work_offer();
        // The APIC timer (user irqchip) bounds the run as in a halt.
        let irq = self.irq.as_ref();
        let apic_now = || irq.map_or(0, UserIrq::now_ns);
        let deadline = irq.and_then(UserIrq::timer_deadline);
        let (budget, clamped) = budget_until(executor.budget(), apic_now(), deadline);
        let report = executor.run_idle_since(budget, at);
        if report.items > 0 {
            let late = deadline.map(|d| apic_now().saturating_sub(d));
            self.stats.count_idle_run(&report, clamped, late);
            self.stats.notify_runs += 1;
            self.stats.notify_items += report.items;
        }
        self.io_wait.notified(at, Instant::now());
        report.items > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: Duration = Duration::from_micros(100);

    fn us(t0: Instant, n: u64) -> Instant {
        t0 + Duration::from_micros(n)
    }

    #[test]
    fn a_guest_that_halts_soon_after_its_notify_is_served_at_the_next() {
        let t0 = Instant::now();
        let mut g = IoWaitGuess::new(W);
        // No past: not served.
        assert!(!g.waits(t0));
        g.notified(t0, us(t0, 1));
        g.halted(us(t0, 50));
        // A later halt (the wait for a timer) does not change what the first said.
        g.halted(us(t0, 5_000));
        assert!(g.waits(us(t0, 6_000)));
        g.notified(us(t0, 6_000), us(t0, 6_010));
        // Served, the guest reaps and notifies again without halting.
        assert!(g.waits(us(t0, 6_030)));
    }

    #[test]
    fn a_guest_that_computes_after_its_notify_is_not_served() {
        let t0 = Instant::now();
        let mut g = IoWaitGuess::new(W);
        g.notified(t0, t0);
        // Polls for 200 µs, then notifies again: computing between requests.
        assert!(!g.waits(us(t0, 200)));
        g.notified(us(t0, 200), us(t0, 201));
        // Halts, but only long after its notify.
        g.halted(us(t0, 500));
        assert!(!g.waits(us(t0, 600)));
        g.notified(us(t0, 600), us(t0, 601));
        // Changes its ways: halts right after.
        g.halted(us(t0, 640));
        assert!(g.waits(us(t0, 900)));
        g.notified(us(t0, 900), us(t0, 910));
        // Served, then computes past the window before its next write.
        assert!(!g.waits(us(t0, 1_100)));
    }

    #[test]
    fn a_zero_window_never_serves() {
        let t0 = Instant::now();
        let mut g = IoWaitGuess::new(Duration::ZERO);
        g.notified(t0, t0);
        g.halted(t0);
        assert!(!g.waits(t0));
    }
}
