//! The completion path of every virtio device here (block, net, rng): a
//! queue's chains between its available ring and its used ring — which heads
//! are in flight, the used-ring entry and the interrupt that return them.
//!
//! Two ways in, one set of rules:
//!
//! - **Requests** (block): the notifying thread pops chains ([`InFlight::pop`])
//!   and queues each parsed request ([`InFlight::enqueue`]); engine items
//!   ([`Runner`]) run them, in any order and in parallel, and each completes
//!   its own chain ([`Running::complete`]).
//! - **Batches** (net RX and TX, rng): one engine item at a time, in the
//!   queue's ordered lane ([`super::queue_lane`]), opens a [`Batch`]
//!   ([`InFlight::begin`]), pops and completes chains in ring order, and the
//!   batch's end raises one interrupt for all of them.
//!
//! It is device-neutral because the rules it enforces are the transport's
//! promises, not a device's:
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
//!   runner or batch item that starts later finds nothing, or the work of the
//!   next activation) and waits only for requests and batches already
//!   *running*: those are on some other thread, doing bounded host I/O.
//! - **Survives panics.** "Running" is a guard ([`Running`], [`Batch`]); its
//!   `Drop` decrements the count, so work that panics (idlework catches item
//!   panics) cannot make a later reset wait forever. A chain that was never
//!   returned leaves the driver waiting, so the guard then asks for a reset.
//! - **Nothing lands after a reset.** A reset bumps the epoch first; a
//!   completion from an earlier epoch is dropped, never written to the used
//!   ring, and the ring itself is gone until the next activation.
//! - **Indirect descriptors are refused.** No device here offers
//!   `VIRTIO_F_INDIRECT_DESC`; virtio-queue would follow them anyway, so the
//!   chain is returned unanswered (used length 0) and counted.
//!
//! Which chain comes next, and when the driver is asked to notify again
//! (EVENT_IDX's `avail_event`), is decided in one place: `Ring::next_available`.

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
    /// Work ended (a panic) holding a chain it never returned.
    #[error("a chain's work ended without returning it")]
    Abandoned,
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

/// One queue's in-flight accounting. Persists across resets (runners and
/// batch items of an earlier activation may still be queued in the engine).
/// `R` is the parsed request of the [`enqueue`](Self::enqueue) path; batch
/// users leave it `()`.
pub struct InFlight<R = ()> {
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
    /// descriptors are returned unanswered here and skipped. Only call from
    /// the device's notify, which a reset cannot interleave with; work items
    /// pop through their [`Batch`].
    pub fn pop(&self) -> Option<Chain> {
        self.lock().next_chain()
    }

    /// Opens a batch on the active queue: until it is dropped it counts as
    /// running (a reset waits for it). `None` if the queue is not active.
    /// For work items that pop and complete chains themselves, one batch at
    /// a time (a lane's items).
    pub fn begin(self: &Arc<Self>) -> Option<Batch<R>> {
        let mut s = self.lock();
        let mem = s.ring.as_ref()?.mem.clone();
        s.running += 1;
        let epoch = s.epoch;
        drop(s);
        Some(Batch {
            owner: self.clone(),
            epoch,
            mem,
            open: 0,
            used: 0,
        })
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

    /// The next available chain, recorded as in flight (see [`InFlight::pop`]).
    fn next_chain(&mut self) -> Option<Chain> {
        loop {
            if self.broken {
                return None;
            }
            let ring = self.ring.as_mut()?;
            let size = ring.queue.size();
            let chain = match ring.next_available() {
                Ok(next) => next?,
                Err(e) => return self.protocol_error(QueueError::Ring(e.to_string())),
            };
            let head = chain.head_index();
            if head >= size {
                return self.protocol_error(QueueError::HeadOutOfRange { head, size });
            }
            let indirect = uses_indirect(&chain, ring);
            let slot = &mut self.heads[usize::from(head)];
            if *slot {
                return self.protocol_error(QueueError::HeadInFlight(head));
            }
            *slot = true;
            self.in_flight += 1;
            if indirect {
                self.stats.indirect += 1;
                tracing::debug!("virtio: chain {head} uses indirect descriptors, not offered");
                let epoch = self.epoch;
                if let Some(interrupt) = self.finish(epoch, head, 0) {
                    interrupt.signal_used_queue();
                }
                continue;
            }
            return Some(chain);
        }
    }

    /// Puts `head` in the used ring if `epoch` is current; returns the
    /// interrupt to signal (outside the lock) if the driver wants one.
    fn finish(&mut self, epoch: u64, head: u16, used_len: u32) -> Option<Arc<VirtioInterrupt>> {
        if self.put_used(epoch, head, used_len) {
            self.wants_interrupt()
        } else {
            None
        }
    }

    /// Puts `head` in the used ring if `epoch` is current (no interrupt yet).
    /// Returns false if the completion was dropped or the queue broke.
    fn put_used(&mut self, epoch: u64, head: u16, used_len: u32) -> bool {
        if epoch != self.epoch || self.ring.is_none() {
            self.stats.stale_completions += 1;
            return false;
        }
        if let Some(slot) = self.heads.get_mut(usize::from(head)) {
            if std::mem::take(slot) {
                self.in_flight -= 1;
            }
        }
        let Some(ring) = self.ring.as_mut() else {
            return false;
        };
        match ring.queue.add_used(ring.mem.as_ref(), head, used_len) {
            Ok(()) => true,
            Err(e) => {
                self.protocol_error::<()>(QueueError::Used {
                    head,
                    why: e.to_string(),
                });
                false
            }
        }
    }

    /// The interrupt to signal (outside the lock) if the driver wants to
    /// hear about the used entries put so far.
    fn wants_interrupt(&mut self) -> Option<Arc<VirtioInterrupt>> {
        let ring = self.ring.as_mut()?;
        let notify = ring
            .queue
            .needs_notification(ring.mem.as_ref())
            .unwrap_or(true);
        notify.then(|| ring.interrupt.clone())
    }

    /// Ends a guard ([`Running`], [`Batch`]) of `epoch` that still held
    /// `open` chains: the driver would wait for them forever, so the device
    /// asks for a reset (a reset clears them). Then no longer running.
    fn end_running(&mut self, epoch: u64, open: bool, idle: &Condvar) {
        if open && epoch == self.epoch {
            self.stats.abandoned += 1;
            self.protocol_error::<()>(QueueError::Abandoned);
        }
        self.running -= 1;
        if self.running == 0 {
            idle.notify_all();
        }
    }
}

impl Ring {
    /// The next available chain. When the ring is empty the driver is asked
    /// to notify again (with EVENT_IDX: `avail_event` is set to where we
    /// are), and a chain that slipped in meanwhile is taken.
    fn next_available(&mut self) -> Result<Option<Chain>, virtio_queue::Error> {
        for _ in 0..2 {
            if let Some(chain) = self.queue.iter(self.mem.clone())?.next() {
                return Ok(Some(chain));
            }
            if !self
                .queue
                .enable_notification(self.mem.as_ref())
                .unwrap_or(false)
            {
                return Ok(None);
            }
        }
        Ok(None)
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
        let open = !self.done;
        self.owner
            .lock()
            .end_running(self.epoch, open, &self.owner.idle);
    }
}

/// A lane item's turn on the queue (from [`InFlight::begin`]): it pops
/// chains in ring order and returns each before the next. Counts as running
/// until dropped, on every path (unwinding included); its drop raises one
/// interrupt for the chains it returned, if the driver wants one.
pub struct Batch<R = ()> {
    owner: Arc<InFlight<R>>,
    epoch: u64,
    mem: Arc<GuestMemory>,
    /// Chains popped and neither completed nor put back.
    open: usize,
    /// Chains put in the used ring.
    used: usize,
}

impl<R> Batch<R> {
    /// Guest memory of the activation the batch serves.
    pub fn mem(&self) -> &Arc<GuestMemory> {
        &self.mem
    }

    /// The next available chain, recorded as in flight (see
    /// [`InFlight::pop`]); `None` also once a reset came.
    pub fn pop(&mut self) -> Option<Chain> {
        let mut s = self.owner.lock();
        if s.epoch != self.epoch {
            return None;
        }
        let chain = s.next_chain()?;
        self.open += 1;
        Some(chain)
    }

    /// Puts chain `head` in the used ring with `used_len` bytes written (the
    /// interrupt comes when the batch ends). Returns false if the queue is
    /// gone (a reset came) or broken: stop the batch.
    pub fn complete(&mut self, head: u16, used_len: u32) -> bool {
        self.open = self.open.saturating_sub(1);
        let ok = self.owner.lock().put_used(self.epoch, head, used_len);
        self.used += usize::from(ok);
        ok
    }

    /// Makes chain `head`, the one popped last, available again: the device
    /// could not use it now (no frame to put in it) and will take it next.
    pub fn put_back(&mut self, head: u16) {
        self.open = self.open.saturating_sub(1);
        let mut guard = self.owner.lock();
        let s = &mut *guard;
        if s.epoch != self.epoch {
            return;
        }
        if let Some(slot) = s.heads.get_mut(usize::from(head)) {
            if std::mem::take(slot) {
                s.in_flight -= 1;
            }
        }
        if let Some(ring) = s.ring.as_mut() {
            ring.queue.go_to_previous_position();
        }
    }
}

impl<R> Drop for Batch<R> {
    fn drop(&mut self) {
        let mut s = self.owner.lock();
        // A panic mid-batch may have left the device's own state (a tap
        // watch, a half-sent frame) behind: ask for a reset as for a lost chain.
        let open = self.open > 0 || std::thread::panicking();
        let interrupt = (self.used > 0 && self.epoch == s.epoch)
            .then(|| s.wants_interrupt())
            .flatten();
        s.end_running(self.epoch, open, &self.owner.idle);
        drop(s);
        if let Some(interrupt) = interrupt {
            interrupt.signal_used_queue();
        }
    }
}
