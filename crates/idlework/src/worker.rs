//! Worker threads: the pool that owns the queue.

use crate::item::Place;
use crate::run::Session;
use crate::shared::{Mode, Shared};
use crate::sleep::Wake;
use crate::stats::{RunnerStats, WaitSummary, WorkerStats};
use crate::sync::{stat::Counter, thread, Arc};
use crate::thread_start::{run_hook, StartFailure, ThreadInfo, ThreadRole};

/// Items a worker runs before publishing its counters.
const FLUSH_EVERY: u32 = 64;

/// The engine's side of one worker.
pub(crate) struct WorkerSlot {
    pub(crate) name: String,
    stats: RunnerStats,
    wakeups: Counter,
    deadline_wakeups: Counter,
}

impl WorkerSlot {
    pub(crate) fn new(name: String) -> Self {
        WorkerSlot {
            name,
            stats: RunnerStats::new(),
            wakeups: Counter::default(),
            deadline_wakeups: Counter::default(),
        }
    }

    /// Adds this worker's queue waits into `into`.
    pub(crate) fn merge_wait(&self, into: &mut hdrhistogram::Histogram<u64>) {
        self.stats.merge_wait(into);
    }

    pub(crate) fn summary(&self) -> WorkerStats {
        WorkerStats {
            name: self.name.clone(),
            run: self.stats.summary(),
            wakeups: self.wakeups.get(),
            deadline_wakeups: self.deadline_wakeups.get(),
            wait: WaitSummary::of(&self.stats.wait.lock()),
        }
    }
}

/// Where a starting worker reports how its thread-start hook went.
pub(crate) type StartReport = std::sync::mpsc::Sender<(usize, Result<(), StartFailure>)>;

/// Starts worker `me`. With a thread-start hook configured, the thread runs
/// it first and reports on `started`; it takes items only if it succeeded.
pub(crate) fn spawn(
    shared: &Arc<Shared>,
    me: usize,
    started: Option<StartReport>,
) -> std::io::Result<thread::JoinHandle<()>> {
    let name = shared.workers[me].name.clone();
    let shared = Arc::clone(shared);
    thread::Builder::new().name(name.clone()).spawn(move || {
        let info = ThreadInfo {
            role: ThreadRole::Worker,
            index: me,
            name,
        };
        let outcome = run_hook(shared.config.on_thread_start.as_ref(), &info);
        let ok = outcome.is_ok();
        if let Some(report) = started {
            // The engine is waiting in `Engine::new`; it cannot have gone.
            let _ = report.send((me, outcome));
        }
        if ok {
            run(&shared, me);
        }
    })
}

/// A worker's life: run what it may take, sleep, repeat; exit on shutdown.
fn run(shared: &Shared, me: usize) {
    tracing::debug!(worker = me, "worker started");
    loop {
        if shared.mode() == Mode::Stopping {
            break;
        }
        if shared.cap.try_acquire() {
            work(shared, me);
            shared.release_cap();
        } else if shared.mode() == Mode::Draining {
            // Shutting down: the cap no longer applies (there may be no
            // executor left to run what is queued).
            work(shared, me);
        }
        if shared.mode() != Mode::Running {
            break;
        }
        let slot = &shared.workers[me];
        match shared.sleep.sleep(me, shared) {
            Wake::Work => slot.wakeups.add(1),
            Wake::Deadline => slot.deadline_wakeups.add(1),
            Wake::Stop => {}
        }
    }
    tracing::debug!(worker = me, "worker stopped");
}

/// Runs items until none is left for a worker, holding a CPU-cap slot.
fn work(shared: &Shared, me: usize) {
    let slot = &shared.workers[me];
    let slice = shared.config.executor_budget;
    let mut session = Session::new(shared, &slot.stats, Place::Worker);
    let mut grown = false;
    let mut since_flush = 0;
    while let Some(item) = shared.pop_for_worker(session.now()) {
        if !grown {
            // Like rayon: a worker that found work wakes the next hand if
            // the depth asks for one, so hands are added one at a time.
            let _ = shared.grow(session.now());
            grown = true;
        }
        session.run(item, slice);
        since_flush += 1;
        if since_flush == FLUSH_EVERY {
            session.flush();
            since_flush = 0;
        }
    }
}
