//! State shared by the engine's handles, workers and executors, and the
//! rules for which items a worker or executor may take.

use crate::cap::Cap;
use crate::clock::{nanos, Clock, Nanos};
use crate::config::{Config, Policy};
use crate::executor::Registry;
use crate::gate::Gate;
use crate::item::Item;
use crate::priority::Priority;
use crate::queue::Queues;
use crate::sleep::{Sleep, Watch};
use crate::stats::RunnerStats;
use crate::sync::{AtomicU8, Ordering};
// A heuristic, not part of any synchronisation protocol: plain std atomics.
use crate::worker::WorkerSlot;
use std::sync::atomic::AtomicU32;

/// Doublings of the idle poll interval while no executor is found idle.
const MAX_POLL_BACKOFF: u32 = 4;
/// Doublings to start from when only `idle`-priority work waits.
const IDLE_ONLY_POLL_SHIFT: u32 = 2;

/// The engine's life cycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Normal operation.
    Running,
    /// Shutting down: workers run everything that is queued, then exit.
    Draining,
    /// Shutting down: nobody takes new items; queued ones go back to the
    /// caller.
    Stopping,
}

/// What a worker may take of a class.
enum Take {
    Nothing,
    Any,
    /// Only an item past its class's deadline.
    IfAged,
}

/// Everything the engine's threads share.
pub(crate) struct Shared {
    /// Tells engines apart (lanes check they feed their own).
    pub(crate) id: u64,
    pub(crate) config: Config,
    pub(crate) clock: Clock,
    pub(crate) queues: Queues,
    pub(crate) sleep: Sleep,
    pub(crate) cap: Cap,
    pub(crate) gate: Gate,
    pub(crate) executors: Registry,
    /// Inline runs, from any submitting thread.
    pub(crate) inline: RunnerStats,
    pub(crate) workers: Box<[WorkerSlot]>,
    mode: AtomicU8,
    /// Doublings of the idle poll interval now (reset when a poll finds an
    /// idle executor).
    poll_backoff: AtomicU32,
    normal_deadline: Nanos,
    idle_deadline: Nanos,
}

impl Shared {
    /// Shared state for a validated `config`.
    pub(crate) fn new(config: Config, clock: Clock) -> Self {
        let workers = (0..config.max_workers)
            .map(|i| WorkerSlot::new(format!("{}{i}", config.thread_name)))
            .collect();
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        Shared {
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            clock,
            queues: Queues::default(),
            sleep: Sleep::new(config.max_workers),
            cap: Cap::new(config.cpu_cap),
            gate: Gate::default(),
            executors: Registry::default(),
            inline: RunnerStats::new(),
            workers,
            mode: AtomicU8::new(Mode::Running as u8),
            poll_backoff: AtomicU32::new(0),
            normal_deadline: nanos(config.normal_deadline),
            idle_deadline: nanos(config.idle_deadline),
            config,
        }
    }

    pub(crate) fn mode(&self) -> Mode {
        match self.mode.load(Ordering::SeqCst) {
            0 => Mode::Running,
            1 => Mode::Draining,
            _ => Mode::Stopping,
        }
    }

    pub(crate) fn set_mode(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::SeqCst);
    }

    /// Whether the full idle model (deadlines, executors) is in force.
    pub(crate) fn idle_policy(&self) -> bool {
        self.config.policy == Policy::Idle
    }

    /// Whether `normal` work waits (up to its deadline) for an executor to
    /// go idle rather than waking a worker at once: the idle policy with
    /// polling on, executors registered, and real time (the timekeeper
    /// cannot poll on a manual clock).
    pub(crate) fn waits_for_idle(&self) -> bool {
        self.idle_policy()
            && self.config.idle_poll.is_some()
            && !self.clock.is_manual()
            && self.executors.count() > 0
    }

    /// When the oldest queued item of any class reaches its deadline.
    fn oldest_deadline(&self) -> Option<Nanos> {
        Priority::ALL
            .into_iter()
            .filter_map(|p| {
                let oldest = self.queues.oldest(p)?;
                Some(oldest.saturating_add(self.deadline(p)))
            })
            .min()
    }

    /// Whether some queued item is past its class's deadline.
    fn overdue(&self) -> bool {
        let now = self.clock.now();
        Priority::ALL.into_iter().any(|p| self.aged(p, now))
    }

    /// Whether work that an executor may take is queued (any class).
    fn executor_work_queued(&self) -> bool {
        !self.queues.all_empty()
    }

    /// Whether the `urgent` + `normal` depth exceeds what `hands` absorb,
    /// counting at least one hand (the executor being waited for).
    pub(crate) fn depth_exceeds(&self, hands: usize) -> bool {
        self.queues.depth(false) > hands.max(1).saturating_mul(self.config.items_per_worker)
    }

    /// How long an item of class `p` may wait before the timekeeper wakes
    /// a worker for it: `idle_deadline` for `idle` work under the idle
    /// policy (it waits for idle executors), `normal_deadline` otherwise
    /// (an item queued behind busy hands).
    fn deadline(&self, p: Priority) -> Nanos {
        if p == Priority::Idle && self.idle_policy() {
            self.idle_deadline
        } else {
            self.normal_deadline
        }
    }

    /// Whether class `p`'s oldest item has waited past its deadline.
    fn aged(&self, p: Priority, now: Nanos) -> bool {
        let deadline = self.deadline(p);
        self.queues
            .oldest(p)
            .is_some_and(|t| now.saturating_sub(t) >= deadline)
    }

    /// What a worker may take of class `p` in `mode`.
    fn worker_take(&self, mode: Mode, p: Priority) -> Take {
        match mode {
            Mode::Stopping => Take::Nothing,
            Mode::Draining => Take::Any,
            Mode::Running if p == Priority::Idle && self.idle_policy() => Take::IfAged,
            // Waiting for an idle executor: a worker takes `normal` work only
            // past its deadline, or when the depth asks for more hands.
            Mode::Running if p == Priority::Normal && self.waits_for_idle() => {
                if self.depth_exceeds(self.executors.busy()) {
                    Take::Any
                } else {
                    Take::IfAged
                }
            }
            Mode::Running => Take::Any,
        }
    }

    /// The next item for a worker: `urgent`, then `normal`, then `idle`
    /// (under the idle policy only once it is past its deadline).
    pub(crate) fn pop_for_worker(&self, now: Nanos) -> Option<Item> {
        let mode = self.mode();
        Priority::ALL
            .into_iter()
            .find_map(|p| match self.worker_take(mode, p) {
                Take::Nothing => None,
                Take::Any => self.queues.pop(p),
                Take::IfAged => {
                    let deadline = self.deadline(p);
                    self.queues
                        .pop_if(p, |stamp| now.saturating_sub(stamp) >= deadline)
                }
            })
    }

    /// Queues `item` as of `now` and finds it a hand.
    pub(crate) fn enqueue(&self, mut item: Item, now: Nanos) {
        item.stamp = now;
        let p = item.priority();
        self.queues.push(item);
        crate::sync::fence(Ordering::SeqCst);
        self.place(p, now);
    }

    /// Work waits for an idle executor and none has announced itself: has
    /// the timekeeper look (claim announced ones, probe the others) at the
    /// base poll interval. New work is a reason to look again soon.
    pub(crate) fn look_for_idle_soon(&self) {
        if self.poll_backoff.load(std::sync::atomic::Ordering::Relaxed) != 0 {
            // Its current sleep may be a backed-off one: look now.
            self.poll_backoff
                .store(0, std::sync::atomic::Ordering::Relaxed);
            self.sleep.nudge_timekeeper();
        } else {
            self.sleep.ensure_polling();
        }
    }
}

impl Shared {
    /// With the CPU cap full, the next deadline is the timekeeper's to
    /// notice (no worker keeps time for it): how long until it, if any.
    fn cap_deadline_wait(&self) -> Option<std::time::Duration> {
        if self.cap.available() {
            return None;
        }
        let due = self.oldest_deadline()?;
        let left = due.saturating_sub(self.clock.now()).max(1);
        Some(std::time::Duration::from_nanos(left))
    }

    /// Whether a just-queued item needs the timekeeper to look for an idle
    /// executor: some executor can only be found by probing, or the CPU
    /// cap leaves the item's deadline to the timekeeper.
    pub(crate) fn timekeeper_looks(&self) -> bool {
        self.executors.any_probing() || !self.cap.available()
    }
}

impl Watch for Shared {
    fn has_work(&self) -> bool {
        if !self.cap.available() {
            return false;
        }
        let (mode, now) = (self.mode(), self.clock.now());
        Priority::ALL
            .into_iter()
            .any(|p| match self.worker_take(mode, p) {
                Take::Nothing => false,
                Take::Any => !self.queues.is_empty(p),
                Take::IfAged => self.aged(p, now),
            })
    }

    fn next_deadline(&self) -> Option<Nanos> {
        if !self.cap.available() {
            return None;
        }
        self.oldest_deadline()
    }

    fn now(&self) -> Nanos {
        self.clock.now()
    }

    fn manual_time(&self) -> bool {
        self.clock.is_manual()
    }

    fn poll_idle(&self) -> Option<std::time::Duration> {
        let interval = self.config.idle_poll.filter(|_| self.idle_policy())?;
        // An executor at work places what is left when it finishes (and
        // then asks for polling again): no need to look meanwhile.
        if self.mode() != Mode::Running || !self.executor_work_queued() || self.executors.busy() > 0
        {
            return None;
        }
        let now = self.clock.now();
        if self.executors.claim_idle(now) {
            self.poll_backoff
                .store(0, std::sync::atomic::Ordering::Relaxed);
            return None;
        }
        // The cap leaves no worker for work past its deadline: a vCPU takes
        // it on its own thread, guest idle or not (the fallback that keeps a
        // never-idle guest's I/O going without adding a thread).
        if !self.cap.available() && self.overdue() && self.executors.force_one(now) {
            return None;
        }
        if !self.executors.any_probing() {
            // Every executor announces itself when its guest halts: looking
            // again finds nothing new. Only a deadline the cap leaves to us
            // needs a wake-up.
            return self.cap_deadline_wait();
        }
        // Nobody idle: look again, less often each time nobody is (every
        // look wakes a thread, and on a host whose CPUs all run vCPUs that
        // thread pre-empts one), up to MAX_POLL_BACKOFF doublings; `idle`
        // work alone starts slower.
        let shift = self.poll_backoff.load(std::sync::atomic::Ordering::Relaxed);
        self.poll_backoff.store(
            (shift + 1).min(MAX_POLL_BACKOFF),
            std::sync::atomic::Ordering::Relaxed,
        );
        let shift = if self.queues.is_empty(Priority::Normal) {
            shift.max(IDLE_ONLY_POLL_SHIFT)
        } else {
            shift
        };
        let next = interval.saturating_mul(1 << shift);
        Some(self.cap_deadline_wait().map_or(next, |left| next.min(left)))
    }
}
