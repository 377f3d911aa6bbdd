//! Idle executors: vCPU threads that run queued work while their guest is
//! idle, within a time budget, after the engine kicks them.

use crate::clock::nanos;
use crate::error::SubmitError;
use crate::item::{Item, Place};
use crate::placement::Submitted;
use crate::run::Session;
use crate::shared::Shared;
use crate::stats::{ExecutorStats, RunnerStats, WaitSummary};
use crate::sync::{fence, stat::Counter, unpoison, Arc, AtomicU8, AtomicUsize, Ordering, RwLock};
use std::time::Duration;

/// The two hooks a VMM provides per vCPU. Both may be called from any
/// thread, at any time, concurrently; both must be cheap and must not
/// block or call back into the engine.
///
/// ```
/// use idlework::IdleHooks;
/// use std::sync::atomic::{AtomicBool, Ordering};
///
/// /// A vCPU whose run loop publishes whether the guest is halted.
/// struct Vcpu { halted: AtomicBool, kicked: AtomicBool }
///
/// impl IdleHooks for Vcpu {
///     fn is_idle(&self) -> bool { self.halted.load(Ordering::Relaxed) }
///     fn kick(&self) { self.kicked.store(true, Ordering::Release) } // e.g. pthread_kill
/// }
/// ```
pub trait IdleHooks: Send + Sync + 'static {
    /// Whether the vCPU's guest is idle right now (e.g. KVM's per-vCPU
    /// `blocking` statistic). A stale answer only costs a useless kick.
    fn is_idle(&self) -> bool;

    /// Makes the vCPU thread leave the guest and call
    /// [`Executor::run_idle`] soon (e.g. a signal, or `immediate_exit`).
    fn kick(&self);
}

/// A VMM usually shares its per-vCPU state between the vCPU thread and the
/// engine.
impl<T: IdleHooks> IdleHooks for std::sync::Arc<T> {
    fn is_idle(&self) -> bool {
        (**self).is_idle()
    }

    fn kick(&self) {
        (**self).kick()
    }
}

/// Neither kicked nor running: may be kicked.
const FREE: u8 = 0;
/// Kicked; `run_idle` not called yet.
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
    state: AtomicU8,
    stats: RunnerStats,
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
        }
    }
}

/// All executors ever registered, and how many are at work.
#[derive(Default)]
pub(crate) struct Registry {
    slots: RwLock<Vec<Arc<ExecSlot>>>,
    /// Executors kicked or running: hands at work.
    busy: AtomicUsize,
    /// Where the next kick search starts, to spread kicks (a hint).
    next: std::sync::atomic::AtomicUsize,
    /// Executors registered and not dropped (read on the submit path).
    live: std::sync::atomic::AtomicUsize,
}

impl Registry {
    fn register(&self, name: String, hooks: Box<dyn IdleHooks>) -> Arc<ExecSlot> {
        let slot = Arc::new(ExecSlot {
            name,
            hooks,
            state: AtomicU8::new(FREE),
            stats: RunnerStats::new(),
            calls: Counter::default(),
            kicks_sent: Counter::default(),
            kicks_useful: Counter::default(),
        });
        unpoison(self.slots.write()).push(Arc::clone(&slot));
        self.live.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        slot
    }

    /// Registered executors (not yet dropped).
    pub(crate) fn count(&self) -> usize {
        self.live.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Executors kicked or running now.
    pub(crate) fn busy(&self) -> usize {
        self.busy.load(Ordering::SeqCst)
    }

    /// Kicks one idle executor that is not already kicked or running.
    /// Returns whether one was kicked.
    pub(crate) fn kick_one(&self) -> bool {
        let slots = unpoison(self.slots.read());
        let n = slots.len();
        let start = self.next.load(std::sync::atomic::Ordering::Relaxed);
        for i in 0..n {
            let idx = (start + i) % n;
            if self.try_kick(&slots[idx]) {
                self.next
                    .store(idx + 1, std::sync::atomic::Ordering::Relaxed);
                return true;
            }
        }
        false
    }

    /// Kicks one executor that is not already kicked or running, idle or
    /// not, to run overdue work on its thread. Returns whether one was kicked.
    pub(crate) fn force_one(&self) -> bool {
        let slots = unpoison(self.slots.read());
        slots.iter().any(|slot| self.try_claim(slot, FORCED))
    }

    fn try_kick(&self, slot: &ExecSlot) -> bool {
        if slot.state.load(Ordering::SeqCst) != FREE || !slot.hooks.is_idle() {
            return false;
        }
        self.try_claim(slot, KICKED)
    }

    /// Claims a free executor for `state` (KICKED or FORCED) and kicks it.
    fn try_claim(&self, slot: &ExecSlot, state: u8) -> bool {
        if slot.state.load(Ordering::SeqCst) != FREE {
            return false;
        }
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
        slot.kicks_sent.add(1);
        slot.hooks.kick();
        true
    }

    /// Adds every executor's queue waits into `into`.
    pub(crate) fn merge_waits(&self, into: &mut hdrhistogram::Histogram<u64>) {
        unpoison(self.slots.read())
            .iter()
            .for_each(|s| s.stats.merge_wait(into));
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
/// ```
/// use idlework::{Config, Engine, IdleHooks, Item, Place, Priority};
/// use std::time::Duration;
///
/// struct AlwaysIdle;
/// impl IdleHooks for AlwaysIdle {
///     fn is_idle(&self) -> bool { true }
///     fn kick(&self) {}
/// }
///
/// let engine = Engine::new(Config::default())?;
/// let mut vcpu0 = engine.register_executor("vcpu0", AlwaysIdle);
/// engine.submit(Item::from_fn(|| ()))?; // kicks vcpu0
/// // On the vCPU thread, after KVM_RUN returned EINTR:
/// let report = vcpu0.run_idle(vcpu0.budget());
/// assert!(report.kicked);
/// assert_eq!(report.items, 1);
/// assert_eq!(engine.stats().ran(Place::Executor, Priority::Normal), 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Executor {
    shared: Arc<Shared>,
    slot: Arc<ExecSlot>,
}

impl Executor {
    pub(crate) fn new(shared: Arc<Shared>, name: String, hooks: Box<dyn IdleHooks>) -> Self {
        let slot = shared.executors.register(name, hooks);
        Executor { shared, slot }
    }

    /// The configured default budget,
    /// [`Config::executor_budget`](crate::Config::executor_budget).
    pub fn budget(&self) -> Duration {
        self.shared.config.executor_budget
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
    /// it once its guest halts. Always false under the `workers` and
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
    /// after a kick, then re-enter the guest. Safe to call at any time: a
    /// call that finds nothing returns at once. Under the `workers` and
    /// `inline` policies executors take no work.
    pub fn run_idle(&mut self, budget: Duration) -> IdleReport {
        let shared = &*self.shared;
        let Some(_pass) = shared.gate.enter() else {
            return IdleReport::default();
        };
        let prev = self.slot.state.swap(RUNNING, Ordering::SeqCst);
        if prev == FREE {
            shared.executors.busy.fetch_add(1, Ordering::SeqCst);
        }
        self.slot.calls.add(1);
        let kicked = prev == KICKED || prev == FORCED;
        let (items, busy) = if shared.idle_policy() {
            self.run_items(budget)
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

    /// Runs items until the budget is spent or nothing is left. Returns
    /// items finished and time spent.
    fn run_items(&self, budget: Duration) -> (u64, u64) {
        let budget = nanos(budget);
        let mut session = Session::new(&self.shared, &self.slot.stats, Place::Executor);
        let mut items = 0;
        while session.elapsed() < budget {
            let Some(item) = self.shared.pop_for_executor() else {
                break;
            };
            let left = Duration::from_nanos(budget - session.elapsed());
            items += u64::from(session.run(item, left));
        }
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
