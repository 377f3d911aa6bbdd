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
use crate::worker::WorkerSlot;

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
    normal_deadline: Nanos,
    idle_deadline: Nanos,
}

impl Shared {
    /// Shared state for a validated `config`.
    pub(crate) fn new(config: Config, clock: Clock) -> Self {
        let workers = (0..config.max_workers)
            .map(|i| WorkerSlot::new(format!("{}{i}", config.thread_name)))
            .collect();
        Shared {
            clock,
            queues: Queues::default(),
            sleep: Sleep::new(config.max_workers),
            cap: Cap::new(config.cpu_cap),
            gate: Gate::default(),
            executors: Registry::default(),
            inline: RunnerStats::new(),
            workers,
            mode: AtomicU8::new(Mode::Running as u8),
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

    /// The next item for an executor: anything, most urgent first.
    pub(crate) fn pop_for_executor(&self) -> Option<Item> {
        if self.mode() == Mode::Stopping {
            return None;
        }
        Priority::ALL.into_iter().find_map(|p| self.queues.pop(p))
    }

    /// Queues `item` as of `now` and finds it a hand.
    pub(crate) fn enqueue(&self, mut item: Item, now: Nanos) {
        item.stamp = now;
        let p = item.priority();
        self.queues.push(item);
        crate::sync::fence(Ordering::SeqCst);
        self.place(p);
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
        Priority::ALL
            .into_iter()
            .filter_map(|p| {
                let oldest = self.queues.oldest(p)?;
                Some(oldest.saturating_add(self.deadline(p)))
            })
            .min()
    }

    fn now(&self) -> Nanos {
        self.clock.now()
    }

    fn manual_time(&self) -> bool {
        self.clock.is_manual()
    }
}
