//! A virtqueue served in ring order by items on one idlework ordered lane:
//! how net (RX and TX) and rng hand their queues to the engine.
//!
//! A kick (a queue notify, a readable tap) submits an item to the queue's
//! [`Lane`] unless one is already waiting there unstarted: that one will see
//! the kick's chains, because an item forgets the kicks before it looks at the
//! ring. A kick that comes while an item runs therefore queues one more item,
//! which the lane starts only after the running one ends. So:
//!
//! - the queue's chains are served one batch at a time, in ring order (a TX
//!   queue's frames leave in the order the guest posted them), on whichever
//!   hand — idle vCPU, worker, inline — the policy gives each item;
//! - no kick is lost, and at most two items per queue exist (one running or
//!   yielded, one waiting), however often the guest notifies;
//! - an item serves at most one batch per step and yields between batches
//!   ([`Served::More`]), keeping its place in the lane.
//!
//! Each step opens a [`Batch`] of the queue's [`InFlight`] accounting, which
//! is where the rest happens: in-flight heads, the used ring, the interrupt,
//! reset (an item that starts after a reset finds no queue, or the next
//! activation's) and panics (see there).
//!
//! Why a lane and not one item per request, as block does: TX frames must
//! leave in order, and RX must pop a guest buffer and read the tap as one
//! step. Why one item per kick rather than per chain: the work a kick stands
//! for is "whatever the ring holds now", known only when the item runs.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use idlework::{Context, Item, Lane, Step, Work};
use virtio_queue::Queue;

use super::in_flight::{Batch, InFlight};
use super::VirtioInterrupt;
use crate::memory::GuestMemory;

/// What one batch left behind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Served {
    /// Nothing more to do until the next kick.
    All,
    /// The batch ended with work left: continue in a later slice.
    More,
}

/// A device's work on one queue: called one batch at a time, never
/// concurrently, in kick order.
pub trait QueueWork: Send + Sync + 'static {
    /// Serves one batch of the queue's chains through `batch`.
    fn serve(&self, batch: &mut Batch) -> Served;
}

/// One queue of a device: its accounting, its lane and its work. Lives as
/// long as the device (items queued before a reset may still run).
pub struct QueueLane {
    requests: Arc<InFlight>,
    lane: Lane,
    /// An item is in the lane and has not started: a kick now is covered.
    waiting: AtomicBool,
    work: Arc<dyn QueueWork>,
}

impl QueueLane {
    /// A queue whose items run in `lane`, accounted in `requests`.
    pub fn new(lane: Lane, requests: Arc<InFlight>, work: Arc<dyn QueueWork>) -> Arc<Self> {
        Arc::new(QueueLane {
            requests,
            lane,
            waiting: AtomicBool::new(false),
            work,
        })
    }

    /// Starts serving `queue` (at DRIVER_OK).
    pub fn activate(&self, queue: Queue, mem: Arc<GuestMemory>, interrupt: Arc<VirtioInterrupt>) {
        self.requests.activate(queue, mem, interrupt);
    }

    /// Stops serving the queue; returns once no batch runs (never waits for
    /// an item that has not started). See [`InFlight::reset`].
    pub fn reset(&self) {
        self.requests.reset();
    }

    /// The queue's accounting.
    pub fn requests(&self) -> &Arc<InFlight> {
        &self.requests
    }

    /// There may be work: make sure an item that has not yet looked at the
    /// ring is in the lane.
    pub fn kick(self: &Arc<Self>) {
        if self.waiting.swap(true, Ordering::AcqRel) {
            return; // the waiting item will see this kick's chains
        }
        let item = Item::new(LaneItem {
            queue: self.clone(),
            started: false,
        });
        if let Err(e) = self.lane.submit(item) {
            // The engine is shutting down with the VM: serve here rather
            // than leave the guest waiting.
            e.into_item().run_to_completion();
        }
    }
}

/// Locks a queue work's own state, ignoring poisoning (a batch that
/// panicked must not wedge the queue; the device has asked for a reset).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One kick's item.
struct LaneItem {
    queue: Arc<QueueLane>,
    started: bool,
}

impl Work for LaneItem {
    fn run(&mut self, _cx: &Context) -> Step {
        let q = &self.queue;
        if !self.started {
            self.started = true;
            // From here on a kick queues a new item (behind this one): the
            // ring is read after this, so nothing posted before it is missed.
            q.waiting.swap(false, Ordering::AcqRel);
        }
        let Some(mut batch) = q.requests.begin() else {
            return Step::Done; // reset: no queue to serve
        };
        match q.work.serve(&mut batch) {
            Served::All => Step::Done,
            Served::More => Step::Yield,
        }
    }
}

impl Drop for LaneItem {
    fn drop(&mut self) {
        if !self.started {
            // Dropped unrun (the engine handed it back at shutdown): later
            // kicks must not count on it.
            self.queue.waiting.store(false, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::chain::tests::{Driver, W};
    use crate::virtio::test_engines::vcpu_only_engine;
    use std::sync::atomic::AtomicU32;
    use vmm_sys_util::eventfd::EventFd;

    /// Completes each chain with its batch number, `per_batch` chains a batch.
    struct Numbered {
        batches: AtomicU32,
        per_batch: usize,
        panic_once: AtomicBool,
    }

    impl QueueWork for Numbered {
        fn serve(&self, batch: &mut Batch) -> Served {
            let n = self.batches.fetch_add(1, Ordering::Relaxed);
            for _ in 0..self.per_batch {
                let Some(chain) = batch.pop() else {
                    return Served::All;
                };
                if self.panic_once.swap(false, Ordering::Relaxed) {
                    panic!("a bad batch");
                }
                batch.complete(chain.head_index(), n);
            }
            Served::More
        }
    }

    struct Rig {
        d: Driver,
        q: Arc<QueueLane>,
        work: Arc<Numbered>,
        irq: Arc<VirtioInterrupt>,
    }

    fn rig(engine: &idlework::Engine, per_batch: usize, panic_once: bool) -> Rig {
        let d = Driver::new(Driver::memory(), 0, 16);
        let work = Arc::new(Numbered {
            batches: AtomicU32::new(0),
            per_batch,
            panic_once: AtomicBool::new(panic_once),
        });
        let q = QueueLane::new(engine.lane(), Arc::default(), work.clone());
        let irq = Arc::new(VirtioInterrupt::new(
            EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        ));
        q.activate(d.queue(), d.mem.clone(), irq.clone());
        Rig { d, q, work, irq }
    }

    fn engine(policy: idlework::Policy) -> idlework::Engine {
        idlework::Engine::new(idlework::Config {
            policy,
            max_workers: 1,
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn a_kick_serves_the_ring_in_batches_in_order_with_one_interrupt_per_batch() {
        let e = engine(idlework::Policy::Inline);
        let mut r = rig(&e, 2, false);
        let heads: Vec<u16> = (0..5)
            .map(|i| r.d.offer(&[(0x10_0000 + i * 64, 8)], W))
            .collect();
        r.q.kick();
        let used = r.d.used_entries();
        assert_eq!(used.iter().map(|u| u.0).collect::<Vec<_>>(), heads);
        assert_eq!(
            used.iter().map(|u| u.1).collect::<Vec<_>>(),
            [0, 0, 1, 1, 2]
        );
        assert_eq!(r.irq.irqfd().unwrap().read().unwrap(), 3);
        assert_eq!(r.q.requests().in_flight(), 0);
    }

    #[test]
    fn kicks_while_an_item_waits_queue_nothing_more_and_none_is_lost() {
        let (e, mut vcpu) = vcpu_only_engine();
        let mut r = rig(&e, 64, false);
        let a = r.d.offer(&[(0x10_0000, 8)], W);
        for _ in 0..100 {
            r.q.kick();
        }
        assert_eq!(e.stats().total_ran(), 0);
        let b = r.d.offer(&[(0x20_0000, 8)], W);
        r.q.kick();
        vcpu.run_idle(std::time::Duration::from_secs(10));
        // One item ran (one batch), and it saw the chain posted after the kicks.
        assert_eq!(r.work.batches.load(Ordering::Relaxed), 1);
        assert_eq!(r.d.used_entries(), vec![(a, 0), (b, 0)]);
        // The next kick queues a new item.
        let c = r.d.offer(&[(0x30_0000, 8)], W);
        r.q.kick();
        vcpu.run_idle(std::time::Duration::from_secs(10));
        assert_eq!(r.d.used_entries(), vec![(c, 1)]);
        r.q.reset();
    }

    #[test]
    fn reset_does_not_wait_for_a_queued_item_which_then_completes_nothing() {
        let (e, mut vcpu) = vcpu_only_engine();
        let mut r = rig(&e, 64, false);
        r.d.offer(&[(0x10_0000, 8)], W);
        r.q.kick();
        // Only this thread's vCPU could run the item: reset must return anyway.
        r.q.reset();
        vcpu.run_idle(std::time::Duration::from_secs(10));
        assert!(r.d.used_entries().is_empty(), "a completion after reset");
        assert_eq!(r.work.batches.load(Ordering::Relaxed), 0);
        // A new activation is served by the next kick.
        let mut d = Driver::new(r.d.mem.clone(), 0, 16);
        r.q.activate(d.queue(), d.mem.clone(), r.irq.clone());
        let h = d.offer(&[(0x10_0000, 8)], W);
        r.q.kick();
        vcpu.run_idle(std::time::Duration::from_secs(10));
        assert_eq!(d.used_entries(), vec![(h, 0)]);
        r.q.reset();
    }

    #[test]
    fn a_batch_that_panics_holding_a_chain_asks_for_a_reset_and_reset_returns() {
        let e = engine(idlework::Policy::Inline);
        let mut r = rig(&e, 64, true);
        r.d.offer(&[(0x10_0000, 8)], W);
        r.q.kick();
        assert!(r.irq.needs_reset());
        assert_eq!(r.q.requests().stats().abandoned, 1);
        assert_eq!(e.stats().panics(), 1);
        // The queue is broken until the reset; the reset does not hang.
        r.d.offer(&[(0x20_0000, 8)], W);
        r.q.kick();
        assert!(r.d.used_entries().is_empty());
        r.q.reset();
    }

    #[test]
    fn under_workers_every_chain_kicked_while_items_run_is_served_in_ring_order() {
        let e = idlework::Engine::new(idlework::Config {
            policy: idlework::Policy::Workers,
            max_workers: 2,
            ..Default::default()
        })
        .unwrap();
        // Small batches: items yield often, kicks land while they run.
        let mut r = rig(&e, 3, false);
        let mut heads = Vec::new();
        let mut used = Vec::new();
        for i in 0..400u64 {
            if i % 16 == 0 {
                // Let the device catch up: the ring holds 16 chains.
                used.extend(wait_for_used(&mut r.d, heads.len() - used.len()));
            }
            heads.push(r.d.offer(&[(0x10_0000 + (i % 16) * 64, 8)], W));
            r.q.kick();
        }
        used.extend(wait_for_used(&mut r.d, heads.len() - used.len()));
        assert_eq!(used.iter().map(|u| u.0).collect::<Vec<_>>(), heads);
        // Batch numbers only grow along the ring: one batch at a time, in order.
        assert!(used.windows(2).all(|w| w[0].1 <= w[1].1));
        assert_eq!(r.q.requests().in_flight(), 0);
        r.q.reset();
    }

    /// Waits (bounded: a failure, not a pass) for `n` more used entries.
    fn wait_for_used(d: &mut Driver, n: usize) -> Vec<(u16, u32)> {
        let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let mut used = Vec::new();
        while used.len() < n {
            assert!(std::time::Instant::now() < until, "a kick was lost");
            used.extend(d.used_entries());
            std::thread::yield_now();
        }
        used
    }

    #[test]
    fn a_head_made_available_twice_while_in_flight_is_a_protocol_error() {
        let e = engine(idlework::Policy::Inline);
        let mut r = rig(&e, 64, false);
        // The same head twice in the available ring, nothing returned between:
        // a batch that holds the first cannot pop the second.
        let h = r.d.offer(&[(0x10_0000, 8)], W);
        r.d.offer_raw(&[], h);
        let mut batch = r.q.requests().begin().unwrap();
        assert_eq!(batch.pop().map(|c| c.head_index()), Some(h));
        assert!(batch.pop().is_none());
        assert!(r.irq.needs_reset());
        assert_eq!(r.q.requests().stats().protocol_errors, 1);
        assert!(batch.complete(h, 0));
        drop(batch);
        r.q.reset();
    }
}
