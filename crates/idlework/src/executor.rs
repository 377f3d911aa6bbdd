//! Idle executors: vCPU threads that run queued work while their guest is
//! idle, within a time budget.
//!
//! An executor becomes a hand in one of two ways:
//!
//! * it **announces** itself idle ([`Executor::announce_idle`]) when its
//!   thread knows its guest is idle and is about to wait in userspace (a
//!   userspace irqchip sees the HLT). A submitter claims it from the
//!   [announcement set](crate::announce) in O(1) and wakes it with
//!   [`IdleHooks::kick`]: no syscall per vCPU, no signal;
//! * the timekeeper **probes** it ([`IdleHooks::probe_idle`], e.g. KVM's
//!   `blocking` statistic under an in-kernel irqchip, where the guest's HLT
//!   never reaches the thread) while work waits for an idle executor, and
//!   kicks it out of the guest. The submit path never probes.
//!
//! Either way the *claim* (the moment the engine knows the executor idle and
//! work queued for it) is stamped, and the first item its thread starts
//! gives one sample of the **pickup latency** in the statistics.

use crate::announce::Seat;
use crate::batch::{batch_size, Batch};
use crate::clock::{nanos, Nanos};
use crate::error::SubmitError;
use crate::item::{Item, Place};
use crate::placement::Submitted;
use crate::run::Session;
use crate::shared::Shared;
use crate::stats::{new_histogram, ExecutorStats, RunnerStats, WaitSummary};
use crate::sync::{fence, stat::Counter, unpoison, Arc, AtomicU8, AtomicUsize, FairMutex};
use crate::sync::{Ordering, RwLock};
use hdrhistogram::Histogram;
use std::cell::Cell;
use std::time::{Duration, Instant};

std::thread_local! {
    /// The executor (its slot's address) whose thread offered to run, on
    /// return, what that thread is about to submit
    /// ([`Executor::announce_serving`]); 0: none.
    static SERVING: Cell<usize> = const { Cell::new(0) };
    /// Whether a submission on this thread just claimed that executor (for
    /// the placement, which then arms no deadline watch).
    static CLAIMED_HERE: Cell<bool> = const { Cell::new(false) };
    /// The same, for the executor's next run (which then counts no kick).
    static SERVES_CLAIM: Cell<bool> = const { Cell::new(false) };
}

/// Whether the submission just made on this thread claimed the executor
/// this thread runs, which has offered to run it on return (so no
/// deadline watch is needed for it). Clears the answer.
pub(crate) fn take_claimed_here() -> bool {
    CLAIMED_HERE.with(|c| c.replace(false))
}

fn slot_id(slot: &ExecSlot) -> usize {
    std::ptr::from_ref(slot) as usize
}

/// The hooks a VMM provides per vCPU. Both may be called from any thread,
/// at any time, concurrently; both must be cheap and must not block or call
/// back into the engine.
///
/// ```
/// use idlework::IdleHooks;
/// use std::sync::atomic::{AtomicBool, Ordering};
///
/// /// A vCPU whose run loop waits in userspace while its guest is halted.
/// struct Vcpu { woken: AtomicBool }
///
/// impl IdleHooks for Vcpu {
///     // Sticky: a kick that comes before the thread waits ends its wait at once.
///     fn kick(&self) { self.woken.store(true, Ordering::Release) } // + futex wake
/// }
/// ```
pub trait IdleHooks: Send + Sync + 'static {
    /// Makes the vCPU thread call [`Executor::run_idle`] soon. For a thread
    /// that announced itself idle ([`Executor::announce_idle`]) this is a
    /// plain wake of its wait, and it must be *sticky*: a kick that arrives
    /// before the thread waits makes the wait return at once. For a thread
    /// inside the guest (a probe found it idle, or the kick is
    /// [forced](Executor::forced)) it makes the guest exit (e.g. a signal
    /// so `KVM_RUN` returns `EINTR`, or `immediate_exit`).
    fn kick(&self);

    /// Whether the vCPU's guest is idle right now although its thread has
    /// not announced it (e.g. KVM's per-vCPU `blocking` statistic under an
    /// in-kernel irqchip). Only the engine's timekeeper calls it, while work
    /// waits for an idle executor and none has announced itself; never the
    /// submit path. A stale answer only costs a useless kick. The default,
    /// `false`, is for VMMs whose executors announce themselves.
    fn probe_idle(&self) -> bool {
        false
    }

    /// Whether [`probe_idle`](Self::probe_idle) can find this executor
    /// idle: true for a vCPU whose halts only the kernel sees (it must then
    /// override `probe_idle` too); false, the default, for one whose thread
    /// learns of its guest's halt itself and announces it. While no
    /// registered executor probes, the timekeeper never polls for idle ones
    /// (there is nothing to ask: each announces itself the moment it halts).
    fn probes(&self) -> bool {
        false
    }
}

/// A VMM usually shares its per-vCPU state between the vCPU thread and the
/// engine.
impl<T: IdleHooks> IdleHooks for std::sync::Arc<T> {
    fn kick(&self) {
        (**self).kick()
    }

    fn probe_idle(&self) -> bool {
        (**self).probe_idle()
    }

    fn probes(&self) -> bool {
        (**self).probes()
    }
}

/// Neither kicked nor running: may be claimed.
const FREE: u8 = 0;
/// Claimed and kicked; `run_idle` not called yet.
const KICKED: u8 = 1;
/// Inside `run_idle`.
const RUNNING: u8 = 2;
/// Unregistered.
const RETIRED: u8 = 3;
/// Kicked to run work past its deadline although its guest is not idle
/// (the CPU cap leaves no worker to run it).
const FORCED: u8 = 4;

/// The engine's side of one executor.
pub(crate) struct ExecSlot {
    name: String,
    hooks: Box<dyn IdleHooks>,
    /// `hooks.probes()`, asked once at registration.
    probes: bool,
    state: AtomicU8,
    /// When the last claim found it idle with work queued (engine clock).
    /// Written before the claim's state change, read by the thread after
    /// its own; statistics only.
    claimed_at: std::sync::atomic::AtomicU64,
    stats: RunnerStats,
    /// From the claim (or the halt, see [`Executor::run_idle_since`]) to
    /// the start of the first item, in ns.
    pickup: FairMutex<Histogram<u64>>,
    calls: Counter,
    kicks_sent: Counter,
    kicks_useful: Counter,
}

impl ExecSlot {
    fn summary(&self) -> ExecutorStats {
        ExecutorStats {
            name: self.name.clone(),
            run: self.stats.summary(),
            calls: self.calls.get(),
            kicks_sent: self.kicks_sent.get(),
            kicks_useful: self.kicks_useful.get(),
            wait: WaitSummary::of(&self.stats.wait.lock()),
            pickup: WaitSummary::of(&self.pickup.lock()),
        }
    }
}

/// All executors ever registered, those announced idle, and how many are
/// at work.
#[derive(Default)]
pub(crate) struct Registry {
    slots: RwLock<Vec<Arc<ExecSlot>>>,
    announced: crate::announce::Announcements<Arc<ExecSlot>>,
    /// Executors kicked or running: hands at work.
    busy: AtomicUsize,
    /// Where the next probe starts, to spread kicks (a hint).
    next: std::sync::atomic::AtomicUsize,
    /// Executors registered and not dropped (read on the submit path).
    live: std::sync::atomic::AtomicUsize,
    /// Executors registered whose hooks probe ([`IdleHooks::probes`]).
    probing: std::sync::atomic::AtomicUsize,
}

impl Registry {
    fn register(&self, name: String, hooks: Box<dyn IdleHooks>) -> (Arc<ExecSlot>, Option<Seat>) {
        let probes = hooks.probes();
        if probes {
            self.probing
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let slot = Arc::new(ExecSlot {
            name,
            hooks,
            probes,
            state: AtomicU8::new(FREE),
            claimed_at: Default::default(),
            stats: RunnerStats::new(),
            pickup: FairMutex::new(new_histogram()),
            calls: Counter::default(),
            kicks_sent: Counter::default(),
            kicks_useful: Counter::default(),
        });
        let mut slots = unpoison(self.slots.write());
        let seat = self.announced.seat(slots.len(), Arc::clone(&slot));
        slots.push(Arc::clone(&slot));
        drop(slots);
        self.live.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        (slot, seat)
    }

    /// Registered executors (not yet dropped).
    pub(crate) fn count(&self) -> usize {
        self.live.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether any executor ever registered can be probed for idle (a
    /// retired one still counts: a hint, only ever an extra poll).
    pub(crate) fn any_probing(&self) -> bool {
        self.probing.load(std::sync::atomic::Ordering::Relaxed) > 0
    }

    /// Executors kicked or running now.
    #[inline]
    pub(crate) fn busy(&self) -> usize {
        self.busy.load(Ordering::SeqCst)
    }

    /// The submit path's hand: claims one executor that announced itself
    /// idle, and kicks it unless it is already on its way. Returns whether
    /// one is now on the queued work. O(1), no lock, no hook but the kick.
    /// The caller has queued its work and fenced.
    pub(crate) fn claim_announced(&self, now: Nanos) -> bool {
        self.announced.claim(|slot| self.take(slot, now))
    }

    /// The timekeeper's hand: an announced executor, else one whose probe
    /// says its guest is idle. Returns whether one was claimed.
    pub(crate) fn claim_idle(&self, now: Nanos) -> bool {
        self.claim_announced(now) || self.probe_one(now)
    }

    /// Kicks one free executor that probes and whose
    /// [`IdleHooks::probe_idle`] says idle.
    fn probe_one(&self, now: Nanos) -> bool {
        let slots = unpoison(self.slots.read());
        let n = slots.len();
        let start = self.next.load(std::sync::atomic::Ordering::Relaxed);
        for i in 0..n {
            let idx = (start + i) % n;
            let slot = &slots[idx];
            if slot.probes
                && slot.state.load(Ordering::SeqCst) == FREE
                && slot.hooks.probe_idle()
                && self.try_claim(slot, KICKED, now)
            {
                self.next
                    .store(idx + 1, std::sync::atomic::Ordering::Relaxed);
                return true;
            }
        }
        false
    }

    /// Kicks one executor that is not already kicked or running, idle or
    /// not, to run overdue work on its thread. Returns whether one was kicked.
    pub(crate) fn force_one(&self, now: Nanos) -> bool {
        let slots = unpoison(self.slots.read());
        slots.iter().any(|slot| self.try_claim(slot, FORCED, now))
    }

    /// An executor whose announcement this thread just claimed: kick it,
    /// unless a hand is already on it (kicked, or running, which looks at
    /// the queues again when it finishes). False only if it is retiring.
    fn take(&self, slot: &ExecSlot, now: Nanos) -> bool {
        self.try_claim(slot, KICKED, now) || slot.state.load(Ordering::SeqCst) != RETIRED
    }

    /// Claims a free executor for `state` (KICKED or FORCED) and kicks it.
    fn try_claim(&self, slot: &ExecSlot, state: u8, now: Nanos) -> bool {
        if slot.state.load(Ordering::SeqCst) != FREE {
            return false;
        }
        slot.claimed_at
            .store(now, std::sync::atomic::Ordering::Relaxed);
        // Count the hand before claiming it so `busy` never underflows.
        self.busy.fetch_add(1, Ordering::SeqCst);
        let claimed = slot
            .state
            .compare_exchange(FREE, state, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok();
        if !claimed {
            self.busy.fetch_sub(1, Ordering::SeqCst);
            return false;
        }
        if SERVING.with(|s| s.get()) == slot_id(slot) {
            // This thread's own executor, serving on return: no kick.
            CLAIMED_HERE.with(|c| c.set(true));
            SERVES_CLAIM.with(|c| c.set(true));
        } else {
            slot.kicks_sent.add(1);
            slot.hooks.kick();
        }
        true
    }

    /// Adds every executor's queue waits into `into`.
    pub(crate) fn merge_waits(&self, into: &mut Histogram<u64>) {
        unpoison(self.slots.read())
            .iter()
            .for_each(|s| s.stats.merge_wait(into));
    }

    /// Adds every executor's pickup latencies into `into`.
    pub(crate) fn merge_pickups(&self, into: &mut Histogram<u64>) {
        for s in unpoison(self.slots.read()).iter() {
            // Same bounds everywhere: adding cannot fail.
            let _ = into.add(&*s.pickup.lock());
        }
    }

    pub(crate) fn summaries(&self) -> Vec<ExecutorStats> {
        unpoison(self.slots.read())
            .iter()
            .map(|s| s.summary())
            .collect()
    }
}

/// What one [`Executor::run_idle`] call did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IdleReport {
    /// Items finished.
    pub items: u64,
    /// Time spent in the call.
    pub busy: Duration,
    /// Whether work is still queued (the budget ran out, or more arrived).
    /// The engine has already found it other hands.
    pub work_remains: bool,
    /// Whether this call answered a kick.
    pub kicked: bool,
}

/// A registered idle executor: the handle a vCPU thread keeps.
///
/// Created by [`Engine::register_executor`](crate::Engine::register_executor);
/// dropping it unregisters the executor.
///
/// # Announcing idle: the protocol
///
/// A vCPU thread that sees its guest go idle (a userspace irqchip gets the
/// HLT) and is about to wait for an interrupt or for work:
///
/// ```text
/// executor.announce_idle();            // from now on a submitter may claim us
/// if !executor.work_queued() {         // re-check AFTER announcing
///     wait();                          // returns on kick() (sticky), interrupt, timer
/// }
/// if interrupt_pending && !executor.announce_busy() {
///     inject(); continue;              // not claimed: back to the guest
/// }
/// executor.run_idle_since(budget, halted_at);  // claimed, or work was queued
/// ```
///
/// No wake-up is lost: [`announce_idle`](Self::announce_idle) publishes the
/// announcement and fences before the thread's re-check; a submitter queues
/// its item and fences before it looks for announcements. Either the
/// submitter sees the announcement (and claims and kicks the thread, whose
/// sticky wait then returns), or the thread's re-check sees the item, or
/// both. A claim clears the announcement; [`announce_busy`](Self::announce_busy)
/// and `run_idle` withdraw it, and exactly one of claim and withdrawal wins.
///
/// ```
/// use idlework::{Config, Engine, IdleHooks, Item, Place, Priority};
/// use std::sync::atomic::{AtomicBool, Ordering};
/// use std::sync::Arc;
///
/// #[derive(Default)]
/// struct Wake(AtomicBool);
/// impl IdleHooks for Wake {
///     fn kick(&self) { self.0.store(true, Ordering::Release) } // + futex wake
/// }
///
/// let engine = Engine::new(Config::default())?;
/// let wake = Arc::new(Wake::default());
/// let mut vcpu0 = engine.register_executor("vcpu0", Arc::clone(&wake));
/// // The vCPU thread saw its guest halt and is about to wait:
/// vcpu0.announce_idle();
/// assert!(!vcpu0.work_queued());
/// engine.submit(Item::from_fn(|| ()))?; // claims vcpu0 and wakes it
/// assert!(wake.0.load(Ordering::Acquire));
/// // The woken thread runs the work.
/// let report = vcpu0.run_idle(vcpu0.budget());
/// assert!(report.kicked);
/// assert_eq!(report.items, 1);
/// assert_eq!(engine.stats().ran(Place::Executor, Priority::Normal), 1);
/// assert_eq!(engine.stats().pickup.count, 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Executor {
    shared: Arc<Shared>,
    slot: Arc<ExecSlot>,
    seat: Option<Seat>,
    /// Whether this thread's announcement may still stand.
    announced: Cell<bool>,
    /// Items taken and not yet started, during a run only (kept to reuse
    /// its buffer).
    batch: Batch,
}

impl Executor {
    pub(crate) fn new(shared: Arc<Shared>, name: String, hooks: Box<dyn IdleHooks>) -> Self {
        let (slot, seat) = shared.executors.register(name, hooks);
        Executor {
            shared,
            slot,
            seat,
            announced: Cell::new(false),
            batch: Batch::default(),
        }
    }

    /// The configured default budget,
    /// [`Config::executor_budget`](crate::Config::executor_budget).
    pub fn budget(&self) -> Duration {
        self.shared.config.executor_budget
    }

    /// Says, on the vCPU thread, that its guest is idle and the thread is
    /// about to wait (in userspace) for an interrupt or for work. From now
    /// on a submitter may claim this executor and [kick](IdleHooks::kick)
    /// it; after this call the thread must check [`work_queued`](Self::work_queued)
    /// before it waits (see [the protocol](Self#announcing-idle-the-protocol)).
    /// A claim ends the announcement; announce again each time the thread
    /// goes back to waiting. Announcing twice is announcing once.
    ///
    /// Does nothing for executors past the 4096th registered (they are
    /// found by [`IdleHooks::probe_idle`] only) and under the `workers` and
    /// `inline` policies.
    pub fn announce_idle(&self) {
        let Some(seat) = self.seat.filter(|_| self.shared.idle_policy()) else {
            return;
        };
        self.shared.executors.announced.announce(seat);
        self.announced.set(true);
    }

    /// [`announce_idle`](Self::announce_idle) by a thread that is about to
    /// submit work (a device notify it handles itself) and will run what it
    /// is given right after, on this thread, before anything else: a
    /// submission on this thread that claims it needs no deadline watch
    /// (the engine's timekeeper is not woken for it). End it with
    /// [`announce_busy`](Self::announce_busy) and then call
    /// [`run_idle`](Self::run_idle) or
    /// [`run_idle_since`](Self::run_idle_since).
    pub fn announce_serving(&self) {
        self.announce_idle();
        if self.announced.get() {
            SERVING.with(|s| s.set(slot_id(&self.slot)));
            CLAIMED_HERE.with(|c| c.set(false));
        }
    }

    /// Withdraws the announcement: the thread stopped waiting for another
    /// reason (an interrupt to inject) before anyone claimed it. Returns
    /// whether it **had been claimed** meanwhile: then a kick is on its way
    /// or has arrived, work was queued for this thread, and it should call
    /// [`run_idle`](Self::run_idle) (with a zero budget if the guest cannot
    /// wait: the engine then finds the work other hands). False if it was
    /// not claimed, or had not announced.
    pub fn announce_busy(&self) -> bool {
        SERVING.with(|s| s.set(0));
        if !self.announced.replace(false) {
            return false;
        }
        let Some(seat) = self.seat else {
            return false;
        };
        !self.shared.executors.announced.withdraw(seat)
    }

    /// Whether the pending kick asks this thread to run overdue work even
    /// though its guest is not idle: the CPU cap leaves no worker for it, so
    /// the VM's own vCPU takes it rather than another thread being added.
    /// A VMM that declines kicks when its guest is running (a zero budget)
    /// must not decline these.
    pub fn forced(&self) -> bool {
        self.slot.state.load(Ordering::SeqCst) == FORCED
    }

    /// Whether work an executor could take is queued: a vCPU thread that
    /// submitted work on an exit uses this to decide whether to come back for
    /// it once its guest halts, and a thread that announced itself idle
    /// re-checks it before it waits. Always false under the `workers` and
    /// `inline` policies.
    pub fn work_queued(&self) -> bool {
        self.shared.idle_policy() && !self.shared.queues.all_empty()
    }

    /// The name given at registration.
    pub fn name(&self) -> &str {
        &self.slot.name
    }

    /// Runs queued items on this thread for up to `budget` (overrunning by
    /// at most the last item), then reports. Call it on the vCPU thread
    /// after a kick or a claim, then re-enter the guest. Safe to call at any
    /// time: a call that finds nothing returns at once. It withdraws a
    /// standing announcement. Under the `workers` and `inline` policies
    /// executors take no work.
    pub fn run_idle(&mut self, budget: Duration) -> IdleReport {
        self.run(budget, None)
    }

    /// [`run_idle`](Self::run_idle) for a thread that learnt on its own
    /// that its guest halted, at `halted_at`, with work already queued (it
    /// saw the HLT exit and [`work_queued`](Self::work_queued)): the pickup
    /// latency of its first item is counted from the later of `halted_at`
    /// and the item's queueing, not from a claim. (On a
    /// [`ManualClock`](crate::ManualClock) the halt counts as now.)
    pub fn run_idle_since(&mut self, budget: Duration, halted_at: Instant) -> IdleReport {
        let now = self.shared.clock.now();
        let ago = if self.shared.clock.is_manual() {
            0
        } else {
            nanos(halted_at.elapsed())
        };
        self.run(budget, Some(now.saturating_sub(ago)))
    }

    /// `run_idle`, the guest known idle since `idle_since` if the caller
    /// knows it.
    fn run(&mut self, budget: Duration, idle_since: Option<Nanos>) -> IdleReport {
        let shared = &*self.shared;
        let Some(_pass) = shared.gate.enter() else {
            return IdleReport::default();
        };
        self.announce_busy();
        let prev = self.slot.state.swap(RUNNING, Ordering::SeqCst);
        if prev == FREE {
            shared.executors.busy.fetch_add(1, Ordering::SeqCst);
        }
        self.slot.calls.add(1);
        let served_claim = SERVES_CLAIM.with(|c| c.replace(false));
        let kicked = (prev == KICKED && !served_claim) || prev == FORCED;
        // A claim says when the guest was known idle with work queued (or
        // the caller's halt, if earlier); a forced kick is not idle time.
        let since = match prev {
            KICKED => {
                let claimed = self
                    .slot
                    .claimed_at
                    .load(std::sync::atomic::Ordering::Relaxed);
                Some(idle_since.map_or(claimed, |t| t.min(claimed)))
            }
            _ => idle_since,
        };
        let (items, busy) = if shared.idle_policy() {
            Self::run_items(shared, &self.slot, &mut self.batch, budget, since)
        } else {
            (0, 0)
        };
        self.slot.state.store(FREE, Ordering::SeqCst);
        shared.executors.busy.fetch_sub(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        if kicked && items > 0 {
            self.slot.kicks_useful.add(1);
        }
        let work_remains = shared.idle_policy() && !shared.queues.all_empty();
        if work_remains {
            shared.place_remaining();
        }
        IdleReport {
            items,
            busy: Duration::from_nanos(busy),
            work_remains,
            kicked,
        }
    }

    /// Runs items until the budget is spent or nothing is left, taking them
    /// in batches (see `batch.rs`) and giving back what it did not start;
    /// the first one's start is a pickup sample if the guest is known idle
    /// `since`. Returns items finished and time spent.
    fn run_items(
        shared: &Shared,
        slot: &ExecSlot,
        batch: &mut Batch,
        budget: Duration,
        since: Option<Nanos>,
    ) -> (u64, u64) {
        if shared.queues.all_empty() {
            // Nothing to run: no session, so no clock reading.
            return (0, 0);
        }
        let budget = nanos(budget);
        let per_hand = shared.config.items_per_worker;
        let mut session = Session::new(shared, &slot.stats, Place::Executor);
        let mut items = 0;
        let mut since = since;
        while session.elapsed() < budget {
            let spent = session.elapsed();
            let max = || batch_size(per_hand, items, spent, budget - spent);
            let Some(item) = batch.next(shared, max) else {
                break;
            };
            if let Some(t) = since.take() {
                let start = session.now();
                let known = t.max(item.stamp);
                slot.pickup
                    .lock()
                    .saturating_record(start.saturating_sub(known));
            }
            let left = Duration::from_nanos(budget - session.elapsed());
            items += u64::from(session.run(item, left));
        }
        batch.give_back(shared);
        (items, session.elapsed())
    }

    /// Submits from this executor's own (vCPU) thread, e.g. on an MMIO
    /// exit. Same as [`Submitter::submit`](crate::Submitter::submit),
    /// except that an inline run here does not count against the CPU cap:
    /// this thread already belongs to the VM's footprint.
    pub fn submit(&self, item: Item) -> Result<Submitted, SubmitError> {
        self.shared.submit(item, false)
    }
}

impl Drop for Executor {
    fn drop(&mut self) {
        // Leave the announcement set first: a claimer that wins it now
        // finds the executor retiring and looks further.
        self.announce_busy();
        self.shared
            .executors
            .live
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        if matches!(
            self.slot.state.swap(RETIRED, Ordering::SeqCst),
            KICKED | FORCED
        ) {
            // Work may have been left for this kick: find it other hands.
            self.shared.executors.busy.fetch_sub(1, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            self.shared.place_remaining();
        }
    }
}

impl std::fmt::Debug for Executor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Executor")
            .field("name", &self.slot.name)
            .finish_non_exhaustive()
    }
}
