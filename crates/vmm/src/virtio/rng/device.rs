//! The virtio-rng device: one request queue, served in its ordered lane
//! ([`QueueLane`]) one batch at a time; each chain is filled with bytes from
//! getrandom(2) and returned through the queue's in-flight accounting
//! ([`Batch`]), whose end raises the interrupt.
//!
//! A chain must be device-writable buffers in guest memory; one that is not
//! is returned with nothing written (and counted). A chain is filled up to
//! [`MAX_FILL`] bytes, which the spec allows (the used length says how many).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use idlework::Engine;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_RNG;
use virtio_queue::QueueT;

use crate::memory::GuestMemory;
use crate::virtio::chain::{self, Direction};
use crate::virtio::in_flight::{Batch, InFlight};
use crate::virtio::queue_lane::{QueueLane, QueueWork, Served};
use crate::virtio::{ActivateContext, VirtioDevice};

/// Queue size offered to the driver.
pub const QUEUE_SIZE: u16 = 64;
/// Most bytes given per chain (bounds the work of one request).
pub const MAX_FILL: u32 = 64 << 10;
/// Chains handled per work-item step before yielding.
const BATCH: usize = 16;

/// What the device did.
#[derive(Debug, Default)]
pub struct RngCounters {
    /// Chains filled.
    pub requests: AtomicU64,
    /// Random bytes given to the guest.
    pub bytes: AtomicU64,
    /// Chains that were not writable buffers in guest memory.
    pub malformed: AtomicU64,
    /// getrandom failures (the chain is returned with what was filled).
    pub host_errors: AtomicU64,
    /// The request queue's in-flight accounting (indirect chains, protocol errors).
    pub queue: Arc<InFlight>,
}

/// virtio-rng.
pub struct Rng {
    counters: Arc<RngCounters>,
    queue: Arc<QueueLane>,
}

impl Rng {
    /// An rng whose requests run in an ordered lane of `engine`.
    pub fn new(engine: &Engine) -> Self {
        let counters = Arc::new(RngCounters::default());
        let work = Arc::new(RequestQueue {
            counters: counters.clone(),
        });
        Rng {
            queue: QueueLane::new(engine.lane(), counters.queue.clone(), work),
            counters,
        }
    }

    /// The device's counters.
    pub fn counters(&self) -> Arc<RngCounters> {
        self.counters.clone()
    }
}

/// The request queue's work.
struct RequestQueue {
    counters: Arc<RngCounters>,
}

impl VirtioDevice for Rng {
    fn driver_waits(&self) -> bool {
        true
    }

    fn device_type(&self) -> u32 {
        VIRTIO_ID_RNG
    }

    fn features(&self) -> u64 {
        1 << VIRTIO_F_VERSION_1
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0); // virtio-rng has no config space
    }

    fn activate(&mut self, mut ctx: ActivateContext) -> Result<(), String> {
        let queue = ctx
            .queues
            .pop()
            .filter(|q| q.ready())
            .ok_or("request queue not ready")?;
        self.queue.activate(queue, ctx.mem, ctx.interrupt);
        Ok(())
    }

    fn queue_notify(&mut self, _queue: u16) {
        self.queue.kick();
    }

    fn reset(&mut self) {
        // Batches not started find no queue; a running one is waited for.
        self.queue.reset();
    }
}

impl QueueWork for RequestQueue {
    fn serve(&self, batch: &mut Batch) -> Served {
        for _ in 0..BATCH {
            let Some(chain) = batch.pop() else {
                return Served::All;
            };
            let head = chain.head_index();
            let len = match chain::buffers(chain, Direction::DeviceWrites, u64::MAX) {
                Ok(bufs) => self.fill(batch.mem(), &bufs),
                Err(e) => {
                    let n = self.counters.malformed.fetch_add(1, Ordering::Relaxed) + 1;
                    if chain::worth_logging(n) {
                        tracing::warn!("virtio-rng: bad chain (head {head}, {n} so far): {e}");
                    }
                    0
                }
            };
            if !batch.complete(head, len) {
                return Served::All;
            }
        }
        Served::More
    }
}

impl RequestQueue {
    /// Fills up to [`MAX_FILL`] bytes of the chain; returns how many.
    fn fill(&self, mem: &GuestMemory, bufs: &chain::Buffers) -> u32 {
        let mut chunk = [0u8; 4096];
        let mut written = 0u32;
        for seg in &bufs.segments {
            let mut off = 0u32;
            while off < seg.len && written < MAX_FILL {
                let n = (seg.len - off)
                    .min(chunk.len() as u32)
                    .min(MAX_FILL - written);
                let buf = &mut chunk[..n as usize];
                if let Err(e) = getrandom::fill(buf) {
                    self.counters.host_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!("virtio-rng: getrandom: {e}");
                    return written;
                }
                let addr = vm_memory::GuestAddress(seg.addr.0 + u64::from(off));
                if let Err(e) = vm_memory::Bytes::write_slice(mem, buf, addr) {
                    // chain::buffers checked the range; memory cannot shrink.
                    tracing::warn!("virtio-rng: writing guest memory: {e}");
                    return written;
                }
                off += n;
                written += n;
            }
        }
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        self.counters
            .bytes
            .fetch_add(written.into(), Ordering::Relaxed);
        written
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::chain::tests::{Driver, W};
    use crate::virtio::test_engines::inline_engine;
    use crate::virtio::VirtioInterrupt;
    use vmm_sys_util::eventfd::EventFd;

    fn active(d: &Driver, engine: &idlework::Engine) -> (Rng, Arc<VirtioInterrupt>) {
        let mut rng = Rng::new(engine);
        let irq = Arc::new(VirtioInterrupt::new(
            EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        ));
        rng.activate(ActivateContext {
            mem: d.mem.clone(),
            queues: vec![d.queue()],
            interrupt: irq.clone(),
            features: 1 << VIRTIO_F_VERSION_1,
        })
        .unwrap();
        (rng, irq)
    }

    #[test]
    fn buffers_are_filled_with_bytes_that_are_not_constant() {
        let e = inline_engine();
        let mut d = Driver::new(Driver::memory(), 0, QUEUE_SIZE);
        let (mut rng, irq) = active(&d, &e);
        let a = d.offer(&[(0x10_0000, 64), (0x10_1000, 64)], W);
        let b = d.offer(&[(0x20_0000, 256)], W);
        rng.queue_notify(0);
        assert_eq!(d.used_entries(), vec![(a, 128), (b, 256)]);
        let bytes = d.read(0x20_0000, 256);
        assert!(bytes.iter().any(|&x| x != bytes[0]), "constant bytes");
        assert_ne!(d.read(0x10_0000, 64), d.read(0x10_1000, 64));
        assert_eq!(
            irq.irqfd()
                .expect("the test line is an irqfd")
                .read()
                .unwrap(),
            1
        );
        let c = rng.counters();
        assert_eq!(c.bytes.load(Ordering::Relaxed), 384);
        rng.reset();
    }

    #[test]
    fn hostile_chains_are_returned_empty_and_big_ones_capped() {
        let e = inline_engine();
        let mut d = Driver::new(Driver::memory(), 0, QUEUE_SIZE);
        let (mut rng, irq) = active(&d, &e);
        let readable = d.offer(&[(0x10_0000, 64)], 0);
        let outside = d.offer(&[(0xdead_0000_0000, 64)], W);
        let huge = d.offer(&[(0x20_0000, 1 << 20)], W);
        // An indirect table (not offered) holding a good buffer: not filled.
        let desc = virtio_queue::desc::split::Descriptor::new(0x41_0000, 64, W, 0);
        vm_memory::Bytes::write_obj(d.mem.as_ref(), desc, vm_memory::GuestAddress(0x40_0000))
            .unwrap();
        let indirect = virtio_bindings::virtio_ring::VRING_DESC_F_INDIRECT as u16;
        d.offer_raw(&[(50, 0x40_0000, 16, indirect, 0)], 50);
        rng.queue_notify(0);
        assert_eq!(
            d.used_entries(),
            vec![(readable, 0), (outside, 0), (huge, MAX_FILL), (50, 0)]
        );
        assert_eq!(
            d.read(0x41_0000, 8),
            vec![0; 8],
            "the indirect buffer was filled"
        );
        // The indirect chain is refused by the queue's accounting, as block's are.
        assert_eq!(rng.counters().malformed.load(Ordering::Relaxed), 2);
        assert_eq!(rng.counters().queue.stats().indirect, 1);
        assert!(!irq.needs_reset());
        // More chains than one batch: all are served, in order.
        let heads: Vec<u16> = (0..40)
            .map(|i| d.offer(&[(0x30_0000 + i * 64, 8)], W))
            .collect();
        rng.queue_notify(0);
        let used: Vec<u16> = d.used_entries().into_iter().map(|(h, _)| h).collect();
        assert_eq!(used, heads);
        rng.reset();
    }
}
