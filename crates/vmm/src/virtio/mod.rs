//! Virtio devices and their MMIO transport.
//!
//! A request's path, guest notify to completion interrupt:
//! 1. the guest writes QueueNotify in the device's MMIO window — caught by an
//!    ioeventfd ([`notifier`]) or, when work runs inline, by the vCPU's MMIO
//!    exit ([`mmio::MmioTransport`]);
//! 2. the device pops the descriptor chains and turns each into a request
//!    ([`block::request`]), validated against guest memory;
//! 3. each request is recorded in its queue's [`in_flight`] accounting and
//!    run by an idlework item where the policy puts it (inline, an idle vCPU,
//!    a worker) ([`block::device`]);
//! 4. the item does the I/O ([`block::backend`]), writes the status, puts the
//!    chain in the used ring and raises the interrupt ([`interrupt`]).
//!
//! Net and rng take a different step 2–3: the notify kicks the queue's
//! ordered lane ([`queue_lane`]), and a lane item pops, checks ([`chain`]),
//! serves and returns chains in ring order through a batch of the same
//! [`in_flight`] accounting, whose end raises the interrupt. Net's tap is a
//! host event source on the notifier's epoll ([`notifier::HostEvents`]) that
//! kicks the RX lane. Where devices live is the [`crate::device_manager`]'s
//! business.

pub mod block;
pub mod chain;
pub mod in_flight;
pub mod interrupt;
pub mod mmio;
pub mod net;
pub mod notifier;
pub mod queue_lane;
pub mod rng;
#[cfg(test)]
mod test_engines;

use std::sync::Arc;

use virtio_queue::Queue;

use crate::memory::GuestMemory;
pub use interrupt::VirtioInterrupt;

/// What a device gets when the driver sets DRIVER_OK.
pub struct ActivateContext {
    /// Guest memory.
    pub mem: Arc<GuestMemory>,
    /// The queues as the driver set them up, validated against guest memory.
    pub queues: Vec<Queue>,
    /// The device's interrupt.
    pub interrupt: Arc<VirtioInterrupt>,
    /// Features the driver accepted.
    pub features: u64,
}

/// A virtio device behind a transport.
///
/// Config-space offsets and sizes come from the guest: implementations check
/// them and ignore what does not fit.
pub trait VirtioDevice: Send {
    /// Virtio device ID (1 = net, 2 = block, 4 = rng).
    fn device_type(&self) -> u32;
    /// Features the device offers.
    fn features(&self) -> u64;
    /// Largest size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Reads device config space.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes device config space (most devices have nothing writable).
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        tracing::debug!(
            "virtio: ignoring {}-byte config write at {offset:#x}",
            data.len()
        );
    }
    /// Whether the driver usually waits for the requests it notifies to
    /// complete (a disk read, a read of entropy), rather than going on (a
    /// network transmit). Under idle such a device's notifications exit to
    /// the notifying vCPU, which serves them at once when its guest is seen
    /// to wait (`vcpu::io_wait`); the others go through an ioeventfd.
    fn driver_waits(&self) -> bool {
        false
    }
    /// Starts the device with the driver's queues.
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), String>;
    /// The driver notified queue `queue`.
    fn queue_notify(&mut self, queue: u16);
    /// Stops the device; it gives up its queues. Requests not yet started
    /// become no-ops; returns when no request of the device is running any
    /// more (so the driver may reuse its memory). Must not wait for a request
    /// that has not started: only the calling vCPU might be able to run it.
    fn reset(&mut self);
}
