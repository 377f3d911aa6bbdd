//! Receive: frames from the tap into the guest's RX buffers.
//!
//! A step pops a guest buffer *before* reading the tap, so with no buffers
//! posted nothing is read: the tap stays unwatched and its frames wait in the
//! kernel's queue (bounded by the tap's txqueuelen; the kernel counts what it
//! drops there) until the guest's RX notify kicks this queue again. When the
//! tap has nothing more, the buffer is put back and the tap re-armed.
//!
//! Without mergeable buffers one frame takes one chain: a frame larger than
//! the chain is dropped and counted, and the chain is kept for the next one.
//!
//! The queue's work runs in its ordered lane ([`crate::virtio::queue_lane`]),
//! kicked by the guest's RX notify and by the tap turning readable; a chain
//! is popped, filled and returned through the batch
//! ([`crate::virtio::in_flight::Batch`]), whose end raises the interrupt.

use std::io::ErrorKind;
use std::sync::{Arc, Mutex};

use super::device::{rx_header, NetCounters, MAX_FRAME};
use super::tap::{Tap, VNET_HDR_LEN};
use crate::virtio::chain::{self, Direction};
use crate::virtio::in_flight::Batch;
use crate::virtio::notifier::HostWatch;
use crate::virtio::queue_lane::{lock, QueueWork, Served};

/// Frames per step before yielding.
const BATCH: usize = 64;

/// The RX queue's work (for the device's lifetime).
pub(super) struct RxQueue {
    tap: Arc<Tap>,
    watch: Arc<HostWatch>,
    counters: Arc<NetCounters>,
    /// One frame read from the tap (header + frame); only one batch runs at a time.
    frame: Mutex<Vec<u8>>,
}

/// How one buffer went.
enum Outcome {
    /// A frame was delivered, or a bad chain returned.
    Used,
    /// The chain stays available; try the next frame.
    Retry,
    /// Stop this step.
    Stop,
}

impl RxQueue {
    pub(super) fn new(tap: Arc<Tap>, watch: Arc<HostWatch>, counters: Arc<NetCounters>) -> Self {
        RxQueue {
            tap,
            watch,
            counters,
            // One byte more than the largest frame: a longer one (the tap's MTU
            // set above 64 KiB) shows as a full read and is dropped, not cut.
            frame: Mutex::new(vec![0; VNET_HDR_LEN + MAX_FRAME + 1]),
        }
    }

    /// Fills the next guest buffer with the next frame, if both exist.
    fn one(&self, batch: &mut Batch, frame: &mut [u8]) -> Outcome {
        let Some(chain) = batch.pop() else {
            // No buffers: the tap is left unwatched until the guest posts some.
            NetCounters::add(&self.counters.rx_no_buffers, 1);
            return Outcome::Stop;
        };
        let head = chain.head_index();
        // No bound but a used length's (chain::buffers applies it).
        let bufs = match chain::buffers(chain, Direction::DeviceWrites, u64::MAX) {
            Ok(b) if b.len as usize >= VNET_HDR_LEN => b,
            bad => {
                let why = bad
                    .err()
                    .map_or("shorter than a vnet header".into(), |e| e.to_string());
                let n = NetCounters::bump(&self.counters.rx_bad_chains);
                if chain::worth_logging(n) {
                    tracing::warn!("virtio-net: bad RX chain (head {head}, {n} so far): {why}");
                }
                return Self::used(batch, head, 0);
            }
        };
        let n = match self.tap.read_frame(frame) {
            Ok(n) if (VNET_HDR_LEN..=VNET_HDR_LEN + MAX_FRAME).contains(&n) => n,
            Ok(n) => {
                tracing::debug!(
                    "virtio-net: {n}-byte read from tap {}: dropped",
                    self.tap.name()
                );
                NetCounters::add(&self.counters.rx_tap_errors, 1);
                batch.put_back(head);
                return Outcome::Retry;
            }
            Err(e) => {
                if e.kind() != ErrorKind::WouldBlock {
                    tracing::debug!("virtio-net: reading tap {}: {e}", self.tap.name());
                    NetCounters::add(&self.counters.rx_tap_errors, 1);
                }
                // Nothing to read: keep the buffer, watch the tap again.
                batch.put_back(head);
                self.watch.arm();
                return Outcome::Stop;
            }
        };
        if n > bufs.len as usize {
            NetCounters::add(&self.counters.rx_dropped_too_small, 1);
            batch.put_back(head);
            return Outcome::Retry;
        }
        // No offloads were negotiated: our own header, not the tap's.
        frame[..VNET_HDR_LEN].copy_from_slice(&rx_header());
        match bufs.write_from(batch.mem(), &frame[..n]) {
            Ok(written) => {
                NetCounters::add(&self.counters.rx_frames, 1);
                NetCounters::add(&self.counters.rx_bytes, (n - VNET_HDR_LEN) as u64);
                Self::used(batch, head, written)
            }
            Err(e) => {
                // chain::buffers checked the ranges; memory does not shrink.
                tracing::warn!("virtio-net: writing an RX frame: {e}");
                NetCounters::add(&self.counters.rx_bad_chains, 1);
                Self::used(batch, head, 0)
            }
        }
    }

    fn used(batch: &mut Batch, head: u16, len: u32) -> Outcome {
        if batch.complete(head, len) {
            Outcome::Used
        } else {
            Outcome::Stop
        }
    }
}

impl QueueWork for RxQueue {
    fn serve(&self, batch: &mut Batch) -> Served {
        let mut frame = lock(&self.frame);
        for _ in 0..BATCH {
            match self.one(batch, &mut frame) {
                Outcome::Used | Outcome::Retry => {}
                Outcome::Stop => return Served::All,
            }
        }
        Served::More
    }
}
