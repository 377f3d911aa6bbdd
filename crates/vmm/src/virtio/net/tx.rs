//! Transmit: guest frames to the tap, in ring order.
//!
//! A TX chain is device-readable buffers holding a vnet header and one frame
//! of at least an Ethernet header and at most [`MAX_FRAME`] bytes. Anything
//! else is returned unsent and counted. No offloads were negotiated, so the
//! guest's header is replaced by an empty one: the tap never sees a GSO or
//! checksum request the guest had no right to make.
//!
//! The queue's work runs in its ordered lane ([`crate::virtio::queue_lane`]),
//! one batch at a time, so frames reach the tap in ring order; each chain is
//! returned through the batch ([`crate::virtio::in_flight::Batch`]) before the
//! next is popped, and the batch's end raises the interrupt.

use std::sync::{Arc, Mutex};

use super::device::{NetCounters, MAX_FRAME};
use super::tap::{Tap, VNET_HDR_LEN};
use crate::memory::GuestMemory;
use crate::virtio::chain::{self, Direction};
use crate::virtio::in_flight::Batch;
use crate::virtio::queue_lane::{lock, QueueWork, Served};

/// Frames per step before yielding.
const BATCH: usize = 64;
/// Shortest frame: an Ethernet header.
const MIN_FRAME: usize = 14;

/// The TX queue's work (for the device's lifetime).
pub(super) struct TxQueue {
    tap: Arc<Tap>,
    counters: Arc<NetCounters>,
    /// One frame being sent (header + frame); only one batch runs at a time.
    frame: Mutex<Vec<u8>>,
}

impl TxQueue {
    pub(super) fn new(tap: Arc<Tap>, counters: Arc<NetCounters>) -> Self {
        TxQueue {
            tap,
            counters,
            frame: Mutex::new(vec![0; VNET_HDR_LEN + MAX_FRAME]),
        }
    }

    /// Sends the frame in `bufs` (checked by the caller); counts the outcome.
    fn send(&self, mem: &GuestMemory, bufs: &chain::Buffers, frame: &mut [u8]) {
        let len = bufs.len as usize;
        if let Err(e) = bufs.read_into(mem, &mut frame[..len]) {
            tracing::warn!("virtio-net: reading a TX frame: {e}");
            NetCounters::add(&self.counters.tx_bad_chains, 1);
            return;
        }
        frame[..VNET_HDR_LEN].fill(0);
        match self.tap.write_frame(&frame[..len]) {
            Ok(_) => {
                NetCounters::add(&self.counters.tx_frames, 1);
                NetCounters::add(&self.counters.tx_bytes, (len - VNET_HDR_LEN) as u64);
            }
            Err(e) => {
                tracing::debug!("virtio-net: writing to tap {}: {e}", self.tap.name());
                NetCounters::add(&self.counters.tx_dropped, 1);
            }
        }
    }
}

impl QueueWork for TxQueue {
    fn serve(&self, batch: &mut Batch) -> Served {
        let mut frame = lock(&self.frame);
        for _ in 0..BATCH {
            let Some(chain) = batch.pop() else {
                return Served::All;
            };
            let head = chain.head_index();
            let max = (VNET_HDR_LEN + MAX_FRAME) as u64;
            match chain::buffers(chain, Direction::DeviceReads, max) {
                Ok(b) if b.len as usize >= VNET_HDR_LEN + MIN_FRAME => {
                    self.send(batch.mem(), &b, &mut frame)
                }
                bad => {
                    let why = bad
                        .err()
                        .map_or("shorter than an Ethernet frame".into(), |e| e.to_string());
                    let n = NetCounters::bump(&self.counters.tx_bad_chains);
                    if chain::worth_logging(n) {
                        tracing::warn!("virtio-net: bad TX chain (head {head}, {n} so far): {why}");
                    }
                }
            }
            if !batch.complete(head, 0) {
                return Served::All;
            }
        }
        Served::More
    }
}
