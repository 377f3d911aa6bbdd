//! The guest's exit and boot-milestone ports (see docs/guest-abi.md).
//!
//! Port 0xF4 (32-bit write): end the VM with that status, like QEMU's
//! `isa-debug-exit` at the same address. Port 0xF8 (32-bit write): a boot
//! milestone id, timestamped for the boot benchmark.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::bus::BusDevice;
use crate::exit::{ExitReason, ExitSignal};

/// First port of the debug-port window.
pub const DEBUG_PORT_BASE: u64 = 0xf4;
/// The window: exit port (4 bytes) then milestone port (4 bytes).
pub const DEBUG_PORT_LEN: u64 = 8;

const EXIT_OFFSET: u64 = 0;
const MILESTONE_OFFSET: u64 = 4;

/// Milestone ids the guest reports.
pub const MILESTONE_FIRST_INSTRUCTION: u32 = 1;
/// The guest printed its banner.
pub const MILESTONE_BANNER: u32 = 2;

/// When each boot milestone was first reached, in ns since the VMM started.
#[derive(Debug)]
pub struct BootMilestones {
    start: Instant,
    first_instruction_ns: AtomicU64,
    banner_ns: AtomicU64,
}

impl BootMilestones {
    /// Milestones measured from `start` (the VMM process's start).
    pub fn new(start: Instant) -> Self {
        BootMilestones {
            start,
            first_instruction_ns: AtomicU64::new(0),
            banner_ns: AtomicU64::new(0),
        }
    }

    fn record(&self, id: u32) {
        let slot = match id {
            MILESTONE_FIRST_INSTRUCTION => &self.first_instruction_ns,
            MILESTONE_BANNER => &self.banner_ns,
            other => {
                tracing::debug!("guest reported unknown boot milestone {other}");
                return;
            }
        };
        let ns = self.start.elapsed().as_nanos() as u64;
        let _ = slot.compare_exchange(0, ns, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// When the VMM started (what the milestones are measured from).
    pub fn start(&self) -> Instant {
        self.start
    }

    /// VMM start → the guest's first instruction, if reported.
    pub fn first_instruction_ns(&self) -> Option<u64> {
        Some(self.first_instruction_ns.load(Ordering::Relaxed)).filter(|&n| n != 0)
    }

    /// VMM start → the guest's banner, if reported.
    pub fn banner_ns(&self) -> Option<u64> {
        Some(self.banner_ns.load(Ordering::Relaxed)).filter(|&n| n != 0)
    }
}

/// The exit and milestone ports.
pub struct DebugPort {
    exit: Arc<ExitSignal>,
    milestones: Arc<BootMilestones>,
}

impl DebugPort {
    /// Ports that report to `exit` and `milestones`.
    pub fn new(exit: Arc<ExitSignal>, milestones: Arc<BootMilestones>) -> Self {
        DebugPort { exit, milestones }
    }
}

fn le_u32(data: &[u8]) -> Option<u32> {
    Some(u32::from_le_bytes(data.try_into().ok()?))
}

impl BusDevice for DebugPort {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match (offset, le_u32(data)) {
            (EXIT_OFFSET, Some(status)) => {
                self.exit.report(ExitReason::Guest(status));
            }
            // A one-byte `out` to the exit port still means "exit": QEMU accepts it too.
            (EXIT_OFFSET, None) if data.len() == 1 => {
                self.exit.report(ExitReason::Guest(data[0].into()));
            }
            (MILESTONE_OFFSET, Some(id)) => self.milestones.record(id),
            _ => tracing::debug!(
                "debug port: ignoring {}-byte write at +{offset}",
                data.len()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_port_reports_the_status_and_milestones_are_kept() {
        let exit = Arc::new(ExitSignal::new().expect("eventfd for the exit signal"));
        let ms = Arc::new(BootMilestones::new(Instant::now()));
        let mut port = DebugPort::new(exit.clone(), ms.clone());
        port.write(MILESTONE_OFFSET, &MILESTONE_FIRST_INSTRUCTION.to_le_bytes());
        port.write(MILESTONE_OFFSET, &99u32.to_le_bytes());
        assert!(ms.first_instruction_ns().is_some());
        assert!(ms.banner_ns().is_none());
        port.write(2, &[1, 2]);
        assert!(!exit.is_reported());
        port.write(EXIT_OFFSET, &3u32.to_le_bytes());
        assert_eq!(exit.wait(), ExitReason::Guest(3));
    }
}
