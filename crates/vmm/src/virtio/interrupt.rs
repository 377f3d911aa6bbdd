//! A virtio-mmio device's interrupt: the InterruptStatus bits and the line
//! that raises the device's IOAPIC pin, whichever irqchip the VM has (an
//! irqfd into KVM's IOAPIC, or a pin of the userspace one: see
//! [`IrqLine`]). It also carries the device's "I need
//! a reset" flag (DEVICE_NEEDS_RESET), which the transport shows in Status:
//! it is the one piece of state the device and its transport share.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use virtio_bindings::virtio_mmio::{VIRTIO_MMIO_INT_CONFIG, VIRTIO_MMIO_INT_VRING};
use vmm_sys_util::eventfd::EventFd;

use crate::irqchip::IrqLine;

/// Interrupt status shared by the transport (guest reads and acks) and the
/// device's completion path (sets bits, raises the line).
#[derive(Debug)]
pub struct VirtioInterrupt {
    status: AtomicU32,
    line: IrqLine,
    needs_reset: AtomicBool,
}

impl VirtioInterrupt {
    /// An interrupt that fires `irqfd` (registered with KVM for the device's GSI).
    pub fn new(irqfd: EventFd) -> Self {
        Self::on_line(IrqLine::Irqfd(irqfd))
    }

    /// An interrupt raised on `line`.
    pub fn on_line(line: IrqLine) -> Self {
        VirtioInterrupt {
            status: AtomicU32::new(0),
            line,
            needs_reset: AtomicBool::new(false),
        }
    }

    /// The device used buffers.
    pub fn signal_used_queue(&self) {
        self.signal(VIRTIO_MMIO_INT_VRING);
    }

    /// The device's config (or status: e.g. NEEDS_RESET) changed.
    pub fn signal_config_change(&self) {
        self.signal(VIRTIO_MMIO_INT_CONFIG);
    }

    /// The device cannot go on until the driver resets it (virtio 1.x 2.1.2):
    /// Status gets DEVICE_NEEDS_RESET and the driver a configuration interrupt.
    pub fn signal_needs_reset(&self) {
        if !self.needs_reset.swap(true, Ordering::AcqRel) {
            self.signal_config_change();
        }
    }

    /// Whether the device asked for a reset since the last one.
    pub fn needs_reset(&self) -> bool {
        self.needs_reset.load(Ordering::Acquire)
    }

    fn signal(&self, bit: u32) {
        self.status.fetch_or(bit, Ordering::AcqRel);
        if let Err(e) = self.line.trigger() {
            tracing::warn!("virtio: raising interrupt: {e}");
        }
    }

    /// InterruptStatus as the guest reads it.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::Acquire)
    }

    /// InterruptACK: the guest clears `bits`.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::AcqRel);
    }

    /// Clears everything (device reset).
    pub fn reset(&self) {
        self.status.store(0, Ordering::Release);
        self.needs_reset.store(false, Ordering::Release);
    }

    /// The irqfd, if the line is one (tests read it to see interrupts).
    pub fn irqfd(&self) -> Option<&EventFd> {
        match &self.line {
            IrqLine::Irqfd(fd) => Some(fd),
            IrqLine::Pin { .. } => None,
        }
    }
}
