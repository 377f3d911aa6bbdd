//! Statistics: per-runner counters and queue-wait histograms, and the
//! serialisable [`Stats`] snapshot built from them.

use crate::config::Policy;
use crate::item::Place;
use crate::priority::{ByPriority, Priority};
use crate::sync::{stat::Counter, FairMutex};
use hdrhistogram::Histogram;
use serde::Serialize;

/// Highest wait the histograms resolve (one minute); longer waits saturate.
const MAX_WAIT_NS: u64 = 60_000_000_000;

/// A fresh wait histogram (ns, two significant digits).
pub(crate) fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_WAIT_NS, 2).expect("constant histogram bounds are valid")
}

/// Counts kept on the running thread and added to [`RunnerStats`] in one
/// go, so the per-item path touches no shared cache line.
#[derive(Default)]
pub(crate) struct Tally {
    pub(crate) ran: [u64; 3],
    pub(crate) busy_ns: u64,
    pub(crate) panics: u64,
    pub(crate) yields: u64,
}

impl Tally {
    /// Records one finished (or panicked) item of class `p`.
    pub(crate) fn finished(&mut self, p: Priority) {
        self.ran[p.index()] += 1;
    }
}

/// Counters and wait histogram of one runner (a worker, an executor, or
/// all inline runs together).
pub(crate) struct RunnerStats {
    ran: [Counter; 3],
    busy_ns: Counter,
    panics: Counter,
    yields: Counter,
    /// Queue wait of the items this runner took, in ns.
    pub(crate) wait: FairMutex<Histogram<u64>>,
}

impl RunnerStats {
    pub(crate) fn new() -> Self {
        RunnerStats {
            ran: Default::default(),
            busy_ns: Counter::default(),
            panics: Counter::default(),
            yields: Counter::default(),
            wait: FairMutex::new(new_histogram()),
        }
    }

    /// Adds a tally and resets it.
    pub(crate) fn flush(&self, t: &mut Tally) {
        for (c, n) in self.ran.iter().zip(t.ran) {
            c.add(n);
        }
        self.busy_ns.add(t.busy_ns);
        self.panics.add(t.panics);
        self.yields.add(t.yields);
        *t = Tally::default();
    }

    pub(crate) fn summary(&self) -> RunnerSummary {
        let by_priority = ByPriority::from_fn(|p| self.ran[p.index()].get());
        RunnerSummary {
            items: by_priority.total(),
            by_priority,
            busy_ns: self.busy_ns.get(),
            panics: self.panics.get(),
            yields: self.yields.get(),
        }
    }

    /// Adds this runner's waits into `into`.
    pub(crate) fn merge_wait(&self, into: &mut Histogram<u64>) {
        // Both histograms share bounds, so adding cannot fail.
        let _ = into.add(&*self.wait.lock());
    }
}

/// Percentiles of a queue-wait histogram, in nanoseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct WaitSummary {
    /// Items measured.
    pub count: u64,
    /// Mean wait.
    pub mean_ns: f64,
    /// Median wait.
    pub p50_ns: u64,
    /// 99th percentile.
    pub p99_ns: u64,
    /// 99.9th percentile.
    pub p999_ns: u64,
    /// Longest wait.
    pub max_ns: u64,
}

impl WaitSummary {
    /// Summarises a histogram of nanoseconds.
    pub fn of(h: &Histogram<u64>) -> Self {
        WaitSummary {
            count: h.len(),
            mean_ns: h.mean(),
            p50_ns: h.value_at_quantile(0.5),
            p99_ns: h.value_at_quantile(0.99),
            p999_ns: h.value_at_quantile(0.999),
            max_ns: h.max(),
        }
    }
}

/// What one runner did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RunnerSummary {
    /// Items finished (returned [`Step::Done`](crate::Step::Done) or panicked).
    pub items: u64,
    /// Items finished, by class.
    pub by_priority: ByPriority<u64>,
    /// Time spent running items.
    pub busy_ns: u64,
    /// Items that panicked (caught; included in `items`).
    pub panics: u64,
    /// Steps that yielded and were queued again.
    pub yields: u64,
}

/// One executor's statistics.
#[derive(Clone, Debug, Serialize)]
pub struct ExecutorStats {
    /// The name given at registration.
    pub name: String,
    /// Items run.
    pub run: RunnerSummary,
    /// Calls to [`Executor::run_idle`](crate::Executor::run_idle).
    pub calls: u64,
    /// Kicks the engine sent to this executor.
    pub kicks_sent: u64,
    /// Kicks answered by a `run_idle` call that ran at least one item.
    pub kicks_useful: u64,
    /// Queue wait of the items it took.
    pub wait: WaitSummary,
    /// Pickup latency: from the moment the engine knew its guest idle with
    /// work queued for it (a claim: the submitter or timekeeper that found
    /// it idle; or the halt, for [`Executor::run_idle_since`](crate::Executor::run_idle_since))
    /// to the start of the first item of that run.
    pub pickup: WaitSummary,
}

/// One worker's statistics.
#[derive(Clone, Debug, Serialize)]
pub struct WorkerStats {
    /// The thread's name.
    pub name: String,
    /// Items run.
    pub run: RunnerSummary,
    /// Times it was woken for work.
    pub wakeups: u64,
    /// Times it woke as timekeeper because a deadline passed.
    pub deadline_wakeups: u64,
    /// Queue wait of the items it took.
    pub wait: WaitSummary,
}

/// A snapshot of an engine's statistics; serialise it with serde.
///
/// ```
/// use idlework::{Config, Engine, Item, Place, Policy, Priority};
///
/// let engine = Engine::new(Config { policy: Policy::Inline, ..Config::default() })?;
/// engine.submit(Item::from_fn(|| ()))?;
/// let stats = engine.stats();
/// assert_eq!(stats.ran(Place::Inline, Priority::Normal), 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, Serialize)]
pub struct Stats {
    /// The engine's policy.
    pub policy: Policy,
    /// Items queued now, by class.
    pub pending: ByPriority<usize>,
    /// Items run on their submitting thread.
    pub inline: RunnerSummary,
    /// Per executor, in registration order (unregistered ones included).
    pub executors: Vec<ExecutorStats>,
    /// Per worker.
    pub workers: Vec<WorkerStats>,
    /// Queue wait over all executors and workers.
    pub wait: WaitSummary,
    /// Pickup latency over all executors (see [`ExecutorStats::pickup`];
    /// the whole distribution is [`Engine::pickup_histogram`](crate::Engine::pickup_histogram)).
    pub pickup: WaitSummary,
}

impl Stats {
    /// Items of class `p` finished at `place`.
    pub fn ran(&self, place: Place, p: Priority) -> u64 {
        self.ran_at(place)[p]
    }

    /// Items finished at `place`, by class.
    pub fn ran_at(&self, place: Place) -> ByPriority<u64> {
        let sum = |runs: &mut dyn Iterator<Item = RunnerSummary>| {
            runs.fold(ByPriority::default(), |acc: ByPriority<u64>, r| {
                ByPriority::from_fn(|p| acc[p] + r.by_priority[p])
            })
        };
        match place {
            Place::Inline => self.inline.by_priority,
            Place::Executor => sum(&mut self.executors.iter().map(|e| e.run)),
            Place::Worker => sum(&mut self.workers.iter().map(|w| w.run)),
        }
    }

    /// Items finished anywhere.
    pub fn total_ran(&self) -> u64 {
        Place::ALL
            .into_iter()
            .map(|pl| self.ran_at(pl).total())
            .sum()
    }

    /// Items that panicked anywhere.
    pub fn panics(&self) -> u64 {
        let execs: u64 = self.executors.iter().map(|e| e.run.panics).sum();
        let workers: u64 = self.workers.iter().map(|w| w.run.panics).sum();
        self.inline.panics + execs + workers
    }

    /// Kicks sent and kicks that proved useful, over all executors.
    pub fn kicks(&self) -> (u64, u64) {
        self.executors
            .iter()
            .fold((0, 0), |(s, u), e| (s + e.kicks_sent, u + e.kicks_useful))
    }
}
