//! Halt polling for the userspace irqchip: a halted vCPU's thread spins for a
//! while before it sleeps, as KVM's own halt does, so that an interrupt that
//! comes soon after the HLT finds the thread awake.
//!
//! Under the in-kernel irqchip, KVM polls in `KVM_RUN` before it blocks a
//! halted vCPU (`halt_poll_ns`, adaptive per vCPU). Under the userspace irqchip
//! the HLT comes to this process and KVM never polls, so without this a
//! completion that arrives 20 µs after the halt pays a full sleep and wake of
//! the vCPU thread (a futex wake, and on a virtualized host an IPI to an idle
//! CPU), where KVM's variants pay nothing. That would make the two irqchips
//! differ in more than where the APIC is.
//!
//! The window adapts the way KVM's does (`virt/kvm/kvm_main.c`,
//! `kvm_vcpu_halt`): it starts at 0, a halt that ends within the maximum but
//! after the window grows it (×`grow`, at least `grow_start`), a halt longer
//! than the maximum shrinks it (÷`shrink`, to 0 below `grow_start`), and a
//! halt the window covered leaves it. The maximum and the factors are the
//! host's KVM module parameters unless `--halt-poll-ns` sets the maximum, so
//! `--halt-poll-ns 0` turns polling off for both irqchips alike.

use std::time::Duration;

/// KVM's defaults, for hosts whose module parameters cannot be read.
const DEFAULT_MAX_NS: u64 = 200_000;
const DEFAULT_GROW: u64 = 2;
const DEFAULT_GROW_START_NS: u64 = 10_000;
const DEFAULT_SHRINK: u64 = 2;

/// How long one vCPU polls before its halted thread sleeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HaltPoll {
    max_ns: u64,
    grow: u64,
    grow_start_ns: u64,
    shrink: u64,
    window_ns: u64,
}

impl HaltPoll {
    /// KVM's algorithm with the host's parameters, and `max_ns` as the
    /// maximum if given (else the host's `halt_poll_ns`).
    pub fn from_host(max_ns: Option<u32>) -> Self {
        let param = |name: &str, default: u64| {
            std::fs::read_to_string(format!("/sys/module/kvm/parameters/{name}"))
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(default)
        };
        HaltPoll::new(
            max_ns.map_or_else(|| param("halt_poll_ns", DEFAULT_MAX_NS), u64::from),
            param("halt_poll_ns_grow", DEFAULT_GROW),
            param("halt_poll_ns_grow_start", DEFAULT_GROW_START_NS),
            param("halt_poll_ns_shrink", DEFAULT_SHRINK),
        )
    }

    /// Polling up to `max_ns` with KVM's growth and shrink factors.
    pub fn new(max_ns: u64, grow: u64, grow_start_ns: u64, shrink: u64) -> Self {
        HaltPoll {
            max_ns,
            grow,
            grow_start_ns,
            shrink,
            window_ns: 0,
        }
    }

    /// How long the next halt polls.
    pub fn window(&self) -> Duration {
        Duration::from_nanos(self.window_ns)
    }

    /// The halt that just ended lasted `halted`: adapt the window.
    pub fn update(&mut self, halted: Duration) {
        let halted = u64::try_from(halted.as_nanos()).unwrap_or(u64::MAX);
        if self.max_ns == 0 {
            self.window_ns = 0;
        } else if halted <= self.window_ns {
            // Covered: keep it.
        } else if self.window_ns > 0 && halted > self.max_ns {
            self.shrink();
        } else if self.window_ns < self.max_ns && halted < self.max_ns {
            self.grow();
        }
    }

    fn grow(&mut self) {
        let grown = self
            .window_ns
            .saturating_mul(self.grow)
            .max(self.grow_start_ns);
        self.window_ns = grown.min(self.max_ns);
    }

    fn shrink(&mut self) {
        let shrunk = self.window_ns.checked_div(self.shrink).unwrap_or(0);
        self.window_ns = if shrunk < self.grow_start_ns {
            0
        } else {
            shrunk
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    #[test]
    fn short_halts_grow_the_window_up_to_the_maximum() {
        let mut p = HaltPoll::new(200_000, 2, 10_000, 2);
        assert_eq!(p.window(), Duration::ZERO);
        p.update(us(30));
        assert_eq!(p.window(), us(10), "grow_start");
        p.update(us(30));
        assert_eq!(p.window(), us(20));
        p.update(us(30));
        assert_eq!(p.window(), us(40));
        // Covered by the window: unchanged.
        p.update(us(30));
        assert_eq!(p.window(), us(40));
        for _ in 0..10 {
            p.update(us(190));
        }
        assert_eq!(p.window(), us(200), "capped at the maximum");
    }

    #[test]
    fn long_halts_shrink_it_to_zero() {
        let mut p = HaltPoll::new(200_000, 2, 10_000, 2);
        for _ in 0..5 {
            p.update(us(100));
        }
        assert_eq!(p.window(), us(160));
        p.update(us(5_000));
        assert_eq!(p.window(), us(80));
        p.update(us(5_000));
        p.update(us(5_000));
        p.update(us(5_000));
        assert_eq!(p.window(), us(10));
        p.update(us(5_000));
        assert_eq!(p.window(), Duration::ZERO, "below grow_start");
        p.update(us(5_000));
        assert_eq!(
            p.window(),
            Duration::ZERO,
            "a long halt with no window leaves it"
        );
    }

    #[test]
    fn a_zero_maximum_never_polls_and_shrink_zero_resets() {
        let mut off = HaltPoll::new(0, 2, 10_000, 2);
        off.update(us(5));
        assert_eq!(off.window(), Duration::ZERO);
        let mut reset = HaltPoll::new(200_000, 2, 10_000, 0);
        reset.update(us(50));
        reset.update(us(50));
        assert_eq!(reset.window(), us(20));
        reset.update(us(1_000));
        assert_eq!(reset.window(), Duration::ZERO);
    }
}
