//! Guest idle made visible to the VMM: the two idle sources idlework sees
//! through its [`IdleHooks`](idlework::IdleHooks).
//!
//! **Kernel irqchip** ([`KernelIdleHooks`]): a guest HLT blocks inside
//! `KVM_RUN`. KVM's per-vCPU `blocking` statistic says which vCPUs are asleep
//! there (it is set around the real sleep, ~30-40 µs after the HLT here, not
//! during halt polling). A thread inside `KVM_RUN` cannot announce itself
//! idle, so when device work waits for an idle executor, idlework's
//! timekeeper (never the submit path) probes `probe_idle` (one stats read
//! per vCPU) and kicks one idle vCPU with a signal; its thread leaves
//! `KVM_RUN` with `EINTR`, runs work within its budget, and calls `KVM_RUN`
//! again. KVM keeps the vCPU halted across that exit, so the guest sleeps on
//! until its next interrupt; a timer that fires meanwhile is delivered when
//! the thread re-enters, late by at most the budget.
//!
//! **User irqchip** ([`UserIdleHooks`]): a guest HLT exits to userspace at
//! once and the vCPU thread waits there itself (`vcpu::halt`), running work
//! as it comes. Before it waits it announces itself idle
//! (`Executor::announce_idle`), so a submit finds it in O(1) with no probe,
//! and handing it work is a plain wake, never a signal.
//!
//! This module knows nothing of the vCPU types: the run loop implements
//! [`VcpuSignals`] and [`BlockingStat`] for them. An idle source built on a
//! future "exit to userspace on HLT/MWAIT" KVM ABI would be a third pair of
//! the same hooks.

use std::sync::Arc;

/// KVM's `blocking` statistic of one vCPU.
pub trait BlockingStat: Send + Sync + 'static {
    /// Whether the vCPU is blocked in a guest HLT inside `KVM_RUN` right now.
    fn blocking(&self) -> bool;
}

/// What an idle source needs of a vCPU thread.
pub trait VcpuSignals: Send + Sync + 'static {
    /// Signals the thread out of `KVM_RUN`; returns whether a signal was sent.
    fn kick(&self) -> bool;
    /// Asks the thread to run engine work soon: a plain wake if it waits
    /// halted; if it is in the guest, a kick only if `preempt` (else it
    /// takes the work at its next halt or exit).
    fn offer_work(&self, preempt: bool);
}

/// The kernel source: the `blocking` statistic and a signal kick.
pub struct KernelIdleHooks<S, V> {
    blocking: S,
    vcpu: Arc<V>,
}

impl<S: BlockingStat, V: VcpuSignals> KernelIdleHooks<S, V> {
    /// Hooks for the vCPU whose statistic is `blocking` and thread `vcpu`.
    pub fn new(blocking: S, vcpu: Arc<V>) -> Self {
        KernelIdleHooks { blocking, vcpu }
    }
}

impl<S: BlockingStat, V: VcpuSignals> idlework::IdleHooks for KernelIdleHooks<S, V> {
    fn probe_idle(&self) -> bool {
        self.blocking.blocking()
    }

    fn probes(&self) -> bool {
        true
    }

    fn kick(&self) {
        self.vcpu.kick();
    }
}

/// The user source: the halt loop announces the executor idle itself, so
/// all that is left here is the kick, which for a thread waiting halted in
/// userspace is a plain wake (sticky: an offer made before the thread waits
/// ends its wait at once).
pub struct UserIdleHooks<V> {
    vcpu: Arc<V>,
    preempt: bool,
}

impl<V: VcpuSignals> UserIdleHooks<V> {
    /// Hooks for vCPU thread `vcpu`. With `preempt` (the engine may force
    /// overdue work on a busy vCPU: `cpu_cap` 0), a kick that finds the
    /// guest running signals it; otherwise work is only ever handed over by
    /// a wake, and one the guest outran waits for its next halt or exit
    /// (or the engine's deadline).
    pub fn new(vcpu: Arc<V>, preempt: bool) -> Self {
        UserIdleHooks { vcpu, preempt }
    }
}

impl<V: VcpuSignals> idlework::IdleHooks for UserIdleHooks<V> {
    fn kick(&self) {
        self.vcpu.offer_work(self.preempt);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use idlework::IdleHooks;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[derive(Default)]
    struct Fake {
        kicks: AtomicU32,
        offers: AtomicU32,
    }

    impl VcpuSignals for Fake {
        fn kick(&self) -> bool {
            self.kicks.fetch_add(1, Ordering::SeqCst);
            true
        }
        fn offer_work(&self, _preempt: bool) {
            self.offers.fetch_add(1, Ordering::SeqCst);
        }
    }

    struct Blocking(bool);
    impl BlockingStat for Blocking {
        fn blocking(&self) -> bool {
            self.0
        }
    }

    #[test]
    fn the_kernel_source_reads_the_stat_and_signals() {
        let v = Arc::new(Fake::default());
        let h = KernelIdleHooks::new(Blocking(true), v.clone());
        assert!(h.probe_idle());
        h.kick();
        assert_eq!(v.kicks.load(Ordering::SeqCst), 1);
        assert_eq!(v.offers.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn the_user_source_needs_no_probe_and_offers_work_without_a_signal() {
        let v = Arc::new(Fake::default());
        let h = UserIdleHooks::new(v.clone(), false);
        assert!(
            !h.probe_idle(),
            "a thread that announces itself is never probed"
        );
        h.kick();
        assert_eq!(v.offers.load(Ordering::SeqCst), 1);
        assert_eq!(v.kicks.load(Ordering::SeqCst), 0);
    }
}
