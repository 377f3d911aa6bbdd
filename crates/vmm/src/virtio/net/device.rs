//! The virtio-net device: features, config space, activation and reset.
//!
//! Each queue is a [`QueueLane`]: a notify (or, for RX, the tap turning
//! readable) kicks it, its batches run in the queue's ordered lane (`rx.rs`,
//! `tx.rs`) and return chains through the queue's in-flight accounting
//! ([`InFlight`]), which raises the interrupt.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use idlework::Engine;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_bindings::virtio_net::{VIRTIO_NET_F_MAC, VIRTIO_NET_F_STATUS, VIRTIO_NET_S_LINK_UP};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::QueueT;

use super::rx::RxQueue;
use super::tap::{Tap, TapError, VNET_HDR_LEN};
use super::tx::TxQueue;
use crate::config::NetConfig;
use crate::virtio::in_flight::InFlight;
use crate::virtio::notifier::{HostEvents, HostWatch};
use crate::virtio::queue_lane::QueueLane;
use crate::virtio::{ActivateContext, VirtioDevice};

/// Queue size offered for RX and TX.
pub const QUEUE_SIZE: u16 = 256;
/// Largest frame (without the vnet header) the device moves either way.
pub const MAX_FRAME: usize = 64 << 10;
/// Index of the receive queue.
pub const RX_QUEUE: u16 = 0;
/// Index of the transmit queue.
pub const TX_QUEUE: u16 = 1;

/// What the device did. Every frame not delivered is in one of the drop counters.
#[derive(Debug, Default)]
pub struct NetCounters {
    /// Frames put into guest RX buffers.
    pub rx_frames: AtomicU64,
    /// Their bytes (without the vnet header).
    pub rx_bytes: AtomicU64,
    /// Frames read from the tap and dropped: larger than the guest's RX buffer.
    pub rx_dropped_too_small: AtomicU64,
    /// Reads from the tap that failed (not WouldBlock), or were shorter than a
    /// vnet header or longer than [`MAX_FRAME`] (dropped).
    pub rx_tap_errors: AtomicU64,
    /// RX chains that were not usable buffers (returned with nothing written).
    pub rx_bad_chains: AtomicU64,
    /// Times RX stopped reading the tap because the guest had posted no buffers.
    pub rx_no_buffers: AtomicU64,
    /// Frames sent to the tap.
    pub tx_frames: AtomicU64,
    /// Their bytes (without the vnet header).
    pub tx_bytes: AtomicU64,
    /// TX chains that were not a frame (bad buffers, too short, above [`MAX_FRAME`]).
    pub tx_bad_chains: AtomicU64,
    /// Frames the tap refused (link down, host out of memory).
    pub tx_dropped: AtomicU64,
    /// The RX queue's in-flight accounting (its refusals are reported here).
    pub(super) rx_queue: Arc<InFlight>,
    /// The TX queue's.
    pub(super) tx_queue: Arc<InFlight>,
}

impl NetCounters {
    pub(super) fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts one more and returns the new count.
    pub(super) fn bump(c: &AtomicU64) -> u64 {
        c.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// The counters by name.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut all = vec![
            ("rx_frames", g(&self.rx_frames)),
            ("rx_bytes", g(&self.rx_bytes)),
            ("rx_dropped_too_small", g(&self.rx_dropped_too_small)),
            ("rx_tap_errors", g(&self.rx_tap_errors)),
            ("rx_bad_chains", g(&self.rx_bad_chains)),
            ("rx_no_buffers", g(&self.rx_no_buffers)),
            ("tx_frames", g(&self.tx_frames)),
            ("tx_bytes", g(&self.tx_bytes)),
            ("tx_bad_chains", g(&self.tx_bad_chains)),
            ("tx_dropped", g(&self.tx_dropped)),
        ];
        // What each queue's in-flight accounting refused.
        let (rx, tx) = (self.rx_queue.stats(), self.tx_queue.stats());
        all.extend([
            ("rx_queue_protocol_errors", rx.protocol_errors),
            ("rx_queue_indirect", rx.indirect),
            ("rx_queue_stale_completions", rx.stale_completions),
            ("rx_queue_abandoned", rx.abandoned),
            ("tx_queue_protocol_errors", tx.protocol_errors),
            ("tx_queue_indirect", tx.indirect),
            ("tx_queue_stale_completions", tx.stale_completions),
            ("tx_queue_abandoned", tx.abandoned),
        ]);
        all
    }
}

/// The device's two queues; the tap's event callback shares them.
struct Queues {
    rx: Arc<QueueLane>,
    tx: Arc<QueueLane>,
}

impl Queues {
    fn get(&self, queue: u16) -> Option<&Arc<QueueLane>> {
        match queue {
            RX_QUEUE => Some(&self.rx),
            TX_QUEUE => Some(&self.tx),
            _ => None,
        }
    }
}

/// Setting up a net device failed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The tap could not be opened.
    #[error(transparent)]
    Tap(#[from] TapError),
    /// The tap could not be watched.
    #[error("watching tap {0}: {1}")]
    Watch(String, #[source] std::io::Error),
}

/// The MAC address net device `index` gets when none is configured.
pub fn default_mac(index: usize) -> [u8; 6] {
    [
        0x52,
        0x54,
        0x00,
        0x12,
        0x34,
        0x56u8.wrapping_add(index as u8),
    ]
}

/// virtio-net on a tap.
pub struct Net {
    tap: Arc<Tap>,
    watch: Arc<HostWatch>,
    queues: Arc<Queues>,
    counters: Arc<NetCounters>,
    config: [u8; 10],
}

impl Net {
    /// A device on `tap` with address `mac`, whose work runs in two ordered
    /// lanes of `engine` (one per queue); the tap is watched through `host`.
    pub fn new(
        tap: Tap,
        mac: [u8; 6],
        engine: &Engine,
        host: &mut dyn HostEvents,
    ) -> std::io::Result<Net> {
        let tap = Arc::new(tap);
        let counters = Arc::new(NetCounters::default());
        // The tap's callback needs the RX queue, which needs the tap's watch.
        let rx_slot: Arc<std::sync::OnceLock<Arc<QueueLane>>> = Arc::default();
        let on_readable = rx_slot.clone();
        let watch = host.watch(
            tap.clone(),
            Box::new(move || {
                if let Some(rx) = on_readable.get() {
                    rx.kick();
                }
            }),
        )?;
        let watch = Arc::new(watch);
        let rx = RxQueue::new(tap.clone(), watch.clone(), counters.clone());
        let tx = TxQueue::new(tap.clone(), counters.clone());
        let queues = Arc::new(Queues {
            rx: QueueLane::new(engine.lane(), counters.rx_queue.clone(), Arc::new(rx)),
            tx: QueueLane::new(engine.lane(), counters.tx_queue.clone(), Arc::new(tx)),
        });
        let _ = rx_slot.set(queues.rx.clone());
        // Config space: mac[6], status (link up), max_virtqueue_pairs (1).
        let mut config = [0u8; 10];
        config[..6].copy_from_slice(&mac);
        config[6..8].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        config[8..10].copy_from_slice(&1u16.to_le_bytes());
        Ok(Net {
            tap,
            watch,
            queues,
            counters,
            config,
        })
    }

    /// Opens the tap `config` names for net device `index`.
    pub fn open(
        config: &NetConfig,
        index: usize,
        engine: &Engine,
        host: &mut dyn HostEvents,
    ) -> Result<Net, NetError> {
        let tap = Tap::open(&config.tap)?;
        let mac = config.mac.map_or_else(|| default_mac(index), |m| m.0);
        Net::new(tap, mac, engine, host).map_err(|e| NetError::Watch(config.tap.clone(), e))
    }

    /// The device's counters.
    pub fn counters(&self) -> Arc<NetCounters> {
        self.counters.clone()
    }

    /// The tap's interface name.
    pub fn tap_name(&self) -> &str {
        self.tap.name()
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    /// EVENT_IDX is offered: the driver then says when it wants interrupts
    /// (`used_event`) and the device asks for a notify only once it has
    /// emptied a ring (`avail_event`, see `drain::next_chain`).
    fn features(&self) -> u64 {
        (1 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_NET_F_MAC)
            | (1 << VIRTIO_NET_F_STATUS)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let src = usize::try_from(offset)
            .ok()
            .and_then(|o| self.config.get(o..o.checked_add(data.len())?));
        match src {
            Some(src) => data.copy_from_slice(src),
            None => data.fill(0),
        }
    }

    fn activate(&mut self, mut ctx: ActivateContext) -> Result<(), String> {
        if ctx.queues.len() != 2 || !ctx.queues.iter().all(|q| q.ready()) {
            return Err("virtio-net needs its RX and TX queues ready".into());
        }
        // With EVENT_IDX the driver says when it wants interrupts, and we when notifies.
        let event_idx = ctx.features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        for q in &mut ctx.queues {
            q.set_event_idx(event_idx);
        }
        let tx_queue = ctx.queues.pop().ok_or("no TX queue")?;
        let rx_queue = ctx.queues.pop().ok_or("no RX queue")?;
        let q = &self.queues;
        q.rx.activate(rx_queue, ctx.mem.clone(), ctx.interrupt.clone());
        q.tx.activate(tx_queue, ctx.mem, ctx.interrupt);
        // Frames already waiting on the tap are reported at once.
        self.watch.arm();
        Ok(())
    }

    fn queue_notify(&mut self, queue: u16) {
        // An RX notify means new buffers: reading the tap resumes.
        if let Some(q) = self.queues.get(queue) {
            q.kick();
        }
    }

    fn reset(&mut self) {
        // Batches not started find no queue; running ones are waited for.
        self.queues.rx.reset();
        self.queues.tx.reset();
        // No batch runs any more, so nothing re-arms the tap after this.
        self.watch.disarm();
    }
}

/// The vnet header the device writes before each received frame: no
/// offloads, one buffer.
pub(super) fn rx_header() -> [u8; VNET_HDR_LEN] {
    let mut h = [0u8; VNET_HDR_LEN];
    h[10..12].copy_from_slice(&1u16.to_le_bytes()); // num_buffers
    h
}
