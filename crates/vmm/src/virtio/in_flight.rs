//! The requests of one virtqueue between its available ring and its used
//! ring: which heads are in flight, which requests wait for an executor, which
//! are running, and the completion that returns a chain and interrupts.
//!
//! It is device-neutral (block uses it; net and rng are meant to) because the
//! rules it enforces are the transport's promises, not a device's:
//!
//! - **Bounded.** A head the driver makes available while it is still in
//!   flight is a protocol error (virtio 1.x 2.7.13.1: the driver must not
//!   reuse a descriptor before the device returned it): the device asks for a
//!   reset and pops nothing more. So at most `queue size` requests per queue
//!   exist, and at most that many engine items wait for them, however often the
//!   guest resets and re-posts: an engine item ([`Runner`]) is not tied to one
//!   request but takes the oldest pending one when it starts, and a new runner
//!   is submitted only while pending requests outnumber queued runners.
//! - **Reset never waits for a vCPU.** Under `--policy idle --cpu-cap 0` a
//!   queued item may be runnable only on the very vCPU that is resetting the
//!   device. [`InFlight::reset`] therefore drops the pending requests (a queued
//!   runner that starts later finds nothing, or a request of the next
//!   activation) and waits only for requests already *running*: those are on
//!   some other thread, doing bounded host I/O.
//! - **Survives panics.** "Running" is a guard ([`Running`]); its `Drop`
//!   decrements the count, so a request that panics (idlework catches item
//!   panics) cannot make a later reset wait forever. A request that never
//!   completed leaves the driver waiting, so the guard then asks for a reset.
//! - **Nothing lands after a reset.** A reset bumps the epoch first; a
//!   completion from an earlier epoch is dropped, never written to the used
//!   ring, and the ring itself is gone until the next activation.
//! - **Indirect descriptors are refused.** No device here offers
//!   `VIRTIO_F_INDIRECT_DESC`; virtio-queue would follow them anyway, so the
//!   chain is returned unanswered (used length 0) and counted.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};

use super::VirtioInterrupt;
use crate::memory::GuestMemory;

/// A descriptor chain popped from the available ring.
pub type Chain = DescriptorChain<Arc<GuestMemory>>;

/// Why the device gave up on the queue (it then needs a reset).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QueueError {
    /// virtio-queue refused the ring (e.g. avail.idx moved by more than the size).
    #[error("available ring unusable: {0}")]
    Ring(String),
    /// An avail entry names a descriptor beyond the table.
    #[error("head {head} is beyond the queue (size {size})")]
    HeadOutOfRange {
        /// The head index.
        head: u16,
        /// The queue size.
        size: u16,
    },
    /// An avail entry names a chain the device has not returned yet.
    #[error("head {0} made available again while in flight")]
    HeadInFlight(u16),
    /// The used ring could not take an entry.
    #[error("returning chain {head}: {why}")]
    Used {
        /// The head index.
        head: u16,
        /// virtio-queue's error.
        why: String,
    },
}

/// Counters of what the accounting refused; read by tests and the report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct InFlightStats {
    /// Protocol errors that made the device ask for a reset.
    pub protocol_errors: u64,
    /// Chains refused because they use indirect descriptors.
    pub indirect: u64,
    /// Pending requests dropped by a reset before they started.
    pub dropped_by_reset: u64,
    /// Completions dropped because a reset came first.
    pub stale_completions: u64,
    /// Requests that ended without completing (a panic).
    pub abandoned: u64,
}

/// The queue while the device is active.
struct Ring {
    queue: Queue,
    mem: Arc<GuestMemory>,
    interrupt: Arc<VirtioInterrupt>,
}

struct State<R> {
    ring: Option<Ring>,
    /// Bumped by every reset; requests and completions carry theirs.
    epoch: u64,
    /// Heads popped and not yet returned, this epoch (indexed by head).
    heads: Vec<bool>,
    in_flight: usize,
    /// Set on a protocol error: nothing more is popped until a reset.
    broken: bool,
    /// Parsed requests waiting for a runner, oldest first.
    pending: VecDeque<(u16, R)>,
    /// Runners handed out and not yet started or dropped.
    runners: usize,
    /// Requests between [`Runner::take`] and the end of their [`Running`].
    running: usize,
    stats: InFlightStats,
}

/// One queue's in-flight accounting. Persists across resets (runners of an
/// earlier activation may still be queued in the engine).
pub struct InFlight<R> {
    state: Mutex<State<R>>,
    /// Signalled when `running` drops to zero.
    idle: Condvar,
}

impl<R> std::fmt::Debug for InFlight<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.lock();
        f.debug_struct("InFlight")
            .field("epoch", &s.epoch)
            .field("in_flight", &s.in_flight)
            .field("pending", &s.pending.len())
            .field("runners", &s.runners)
            .field("running", &s.running)
            .field("stats", &s.stats)
            .finish()
    }
}

impl<R> Default for InFlight<R> {
    fn default() -> Self {
        InFlight {
            state: Mutex::new(State {
                ring: None,
                epoch: 0,
                heads: Vec::new(),
                in_flight: 0,
                broken: false,
                pending: VecDeque::new(),
                runners: 0,
                running: 0,
                stats: InFlightStats::default(),
            }),
            idle: Condvar::new(),
        }
    }
}

impl<R> InFlight<R> {
    fn lock(&self) -> MutexGuard<'_, State<R>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts serving `queue` (at DRIVER_OK).
    pub fn activate(&self, queue: Queue, mem: Arc<GuestMemory>, interrupt: Arc<VirtioInterrupt>) {
        let mut s = self.lock();
        s.heads = vec![false; usize::from(queue.size())];
        s.in_flight = 0;
        s.broken = false;
        s.ring = Some(Ring {
            queue,
            mem,
            interrupt,
        });
    }

    /// Whether the queue is being served.
    pub fn active(&self) -> bool {
        self.lock().ring.is_some()
    }

    /// Stops serving the queue: pending requests are dropped, completions of
    /// running ones will be; returns once no request is running. Never waits
    /// for a request that has not started.
    pub fn reset(&self) {
        let mut s = self.lock();
        s.epoch = s.epoch.wrapping_add(1);
        s.ring = None;
        let dropped = s.pending.len() as u64;
        s.stats.dropped_by_reset += dropped;
        s.pending.clear();
        s.heads.clear();
        s.in_flight = 0;
        s.broken = false;
        while s.running > 0 {
            s = self.idle.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// The next available chain, recorded as in flight. `None` when the ring
    /// is empty, the queue is not active, or the driver broke the protocol
    /// (the device has then asked for a reset). Chains using indirect
    /// descriptors are returned unanswered here and skipped.
    pub fn pop(&self) -> Option<Chain> {
        let mut guard = self.lock();
        let s = &mut *guard;
        loop {
            if s.broken {
                return None;
            }
            let ring = s.ring.as_mut()?;
            let size = ring.queue.size();
            let next = match ring.queue.iter(ring.mem.clone()) {
                Ok(mut avail) => avail.next(),
                Err(e) => return s.protocol_error(QueueError::Ring(e.to_string())),
            };
            let chain = next?;
            let head = chain.head_index();
            if head >= size {
                return s.protocol_error(QueueError::HeadOutOfRange { head, size });
            }
            let indirect = uses_indirect(&chain, ring);
            let slot = &mut s.heads[usize::from(head)];
            if *slot {
                return s.protocol_error(QueueError::HeadInFlight(head));
            }
            *slot = true;
            s.in_flight += 1;
            if indirect {
                s.stats.indirect += 1;
                tracing::debug!("virtio: chain {head} uses indirect descriptors, not offered");
                let epoch = s.epoch;
                if let Some(interrupt) = s.finish(epoch, head, 0) {
                    interrupt.signal_used_queue();
                }
                continue;
            }
            return Some(chain);
        }
    }

    /// Queues the parsed request of chain `head` (from [`pop`](Self::pop)) for
    /// a runner. Returns a runner the caller must hand to the engine, or
    /// `None` if an already queued runner will take the request. (A runner's
    /// cost hint is that of the request that made it, not necessarily of the
    /// one it runs.)
    pub fn enqueue(self: &Arc<Self>, head: u16, request: R) -> Option<Runner<R>> {
        let mut s = self.lock();
        s.pending.push_back((head, request));
        (s.runners < s.pending.len()).then(|| {
            s.runners += 1;
            Runner {
                owner: Some(self.clone()),
            }
        })
    }

    /// Returns chain `head` (from [`pop`](Self::pop)) at once, without running
    /// anything: for chains the device answers while it pops them (malformed
    /// requests). Only call from the device's notify, which a reset cannot
    /// interleave with.
    pub fn complete_now(&self, head: u16, used_len: u32) {
        let mut s = self.lock();
        let epoch = s.epoch;
        if let Some(interrupt) = s.finish(epoch, head, used_len) {
            drop(s);
            interrupt.signal_used_queue();
        }
    }

    /// Heads popped and not yet returned.
    pub fn in_flight(&self) -> usize {
        self.lock().in_flight
    }

    /// Runners handed out and not yet started (engine items this queue has queued).
    pub fn queued_runners(&self) -> usize {
        self.lock().runners
    }

    /// What the accounting refused so far.
    pub fn stats(&self) -> InFlightStats {
        self.lock().stats
    }
}

impl<R> State<R> {
    /// Breaks the queue: the device asks for a reset.
    fn protocol_error<T>(&mut self, e: QueueError) -> Option<T> {
        self.broken = true;
        self.stats.protocol_errors += 1;
        tracing::warn!("virtio: guest protocol error, device needs a reset: {e}");
        if let Some(ring) = &self.ring {
            ring.interrupt.signal_needs_reset();
        }
        None
    }

    /// Puts `head` in the used ring if `epoch` is current; returns the
    /// interrupt to signal (outside the lock) if the driver wants one.
    fn finish(&mut self, epoch: u64, head: u16, used_len: u32) -> Option<Arc<VirtioInterrupt>> {
        if epoch != self.epoch || self.ring.is_none() {
            self.stats.stale_completions += 1;
            return None;
        }
        if let Some(slot) = self.heads.get_mut(usize::from(head)) {
            if std::mem::take(slot) {
                self.in_flight -= 1;
            }
        }
        let ring = self.ring.as_mut()?;
        match ring.queue.add_used(ring.mem.as_ref(), head, used_len) {
            Ok(()) => {
                let notify = ring
                    .queue
                    .needs_notification(ring.mem.as_ref())
                    .unwrap_or(true);
                notify.then(|| ring.interrupt.clone())
            }
            Err(e) => self.protocol_error(QueueError::Used {
                head,
                why: e.to_string(),
            }),
        }
    }
}

/// Whether `chain` has a descriptor with VIRTQ_DESC_F_INDIRECT (see
/// [`super::chain::uses_indirect`]); only a conformance check: virtio-queue bounds
/// indirect tables on its own.
fn uses_indirect(chain: &Chain, ring: &Ring) -> bool {
    super::chain::uses_indirect(
        &*ring.mem,
        ring.queue.desc_table(),
        ring.queue.size(),
        chain.head_index(),
    )
}

/// The right to run one pending request: what an engine item carries. It
/// takes the oldest pending request when it starts, whichever activation
/// queued it; dropping it unstarted gives the right back.
pub struct Runner<R> {
    owner: Option<Arc<InFlight<R>>>,
}

impl<R> Runner<R> {
    /// Takes the oldest pending request, now running; `None` if a reset
    /// dropped it (the item is then a no-op).
    pub fn take(mut self) -> Option<Running<R>> {
        let owner = self.owner.take()?;
        let mut s = owner.lock();
        s.runners -= 1;
        let mem = s.ring.as_ref().map(|r| r.mem.clone())?;
        let (head, request) = s.pending.pop_front()?;
        s.running += 1;
        let epoch = s.epoch;
        drop(s);
        Some(Running {
            owner,
            epoch,
            head,
            mem,
            request,
            done: false,
        })
    }
}

impl<R> Drop for Runner<R> {
    fn drop(&mut self) {
        if let Some(owner) = self.owner.take() {
            owner.lock().runners -= 1;
        }
    }
}

/// A request being run. Counts as running until dropped, on every path
/// (unwinding included), so a reset waits for it and only for it.
pub struct Running<R> {
    owner: Arc<InFlight<R>>,
    epoch: u64,
    head: u16,
    mem: Arc<GuestMemory>,
    request: R,
    done: bool,
}

impl<R> Running<R> {
    /// The request.
    pub fn request(&self) -> &R {
        &self.request
    }

    /// Guest memory of the activation that queued it.
    pub fn mem(&self) -> &Arc<GuestMemory> {
        &self.mem
    }

    /// Returns the chain with `used_len` bytes written and interrupts if the
    /// driver wants it; dropped if the device was reset meanwhile.
    pub fn complete(mut self, used_len: u32) {
        self.done = true;
        let interrupt = self.owner.lock().finish(self.epoch, self.head, used_len);
        if let Some(interrupt) = interrupt {
            interrupt.signal_used_queue();
        }
    }
}

impl<R> Drop for Running<R> {
    fn drop(&mut self) {
        let mut s = self.owner.lock();
        if !self.done && self.epoch == s.epoch {
            // The chain will never be returned: the driver would wait for it
            // forever. A reset clears it.
            s.stats.abandoned += 1;
            let head = self.head;
            s.protocol_error::<()>(QueueError::Used {
                head,
                why: "the request ended without completing".into(),
            });
        }
        s.running -= 1;
        if s.running == 0 {
            self.owner.idle.notify_all();
        }
    }
}
