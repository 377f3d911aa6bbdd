//! Guest idle made visible to the VMM, with an in-kernel irqchip.
//!
//! A guest HLT blocks inside `KVM_RUN`. KVM's per-vCPU `blocking` statistic
//! says which vCPUs are asleep there (it is set around the real sleep, ~30-40
//! µs after the HLT here, not during halt polling). A vCPU thread inside
//! `KVM_RUN` cannot announce itself idle, so when device work waits for an
//! idle executor, idlework's timekeeper probes [`VcpuIdleHooks`]
//! (`probe_idle`, one stat read per vCPU, never on the submit path) and
//! kicks one idle vCPU; its thread leaves `KVM_RUN` with `EINTR`, runs work
//! within its budget, and
//! calls `KVM_RUN` again. KVM keeps the vCPU halted across that exit, so the
//! guest sleeps on until its next interrupt; a timer that fires meanwhile is
//! delivered when the thread re-enters, late by at most the budget.
//!
//! This seam is narrow on purpose: a vCPU thread that sees its guest's HLT
//! itself (a userspace irqchip, or a future "exit to userspace on HLT/MWAIT"
//! KVM ABI) announces itself with `Executor::announce_idle` instead, and
//! needs no probe.

use std::sync::Arc;

use crate::vcpu::kvm_stats::{KvmStats, StatReader, StatsError};
use crate::vcpu::VcpuControl;

/// The idle hooks of one vCPU: its `blocking` statistic and its kick.
pub struct VcpuIdleHooks {
    blocking: StatReader,
    control: Arc<VcpuControl>,
}

impl VcpuIdleHooks {
    /// Hooks for the vCPU whose statistics are `stats` and mailbox `control`.
    pub fn new(stats: &KvmStats, control: Arc<VcpuControl>) -> Result<Self, StatsError> {
        Ok(VcpuIdleHooks {
            blocking: stats.reader("blocking")?,
            control,
        })
    }
}

impl idlework::IdleHooks for VcpuIdleHooks {
    fn kick(&self) {
        self.control.kick();
    }

    fn probe_idle(&self) -> bool {
        self.blocking.read().is_ok_and(|v| v != 0)
    }
}
