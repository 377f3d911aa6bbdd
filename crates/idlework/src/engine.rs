//! The engine: one per VM. Owns the workers; hands out submitters and
//! executors; reports statistics; shuts down without losing items.

use crate::clock::Clock;
use crate::config::Config;
use crate::error::{Error, SubmitError};
use crate::executor::{Executor, IdleHooks};
use crate::item::Item;
use crate::lane::Lane;
use crate::placement::Submitted;
use crate::priority::Priority;
use crate::shared::{Mode, Shared};
use crate::stats::{new_histogram, Stats, WaitSummary};
use crate::sync::{thread, Arc};
use crate::thread_start::StartFailure;
use crate::worker;
use std::sync::mpsc::Receiver;

/// What [`Engine::shutdown`] does with queued items.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shutdown {
    /// Run everything queued (including `idle` work and the rest of
    /// yielding items) before returning.
    Drain,
    /// Stop after the items running now and hand every queued item back.
    Return,
}

/// A cheap, cloneable handle for submitting work from any thread (an
/// ioeventfd thread, a vCPU thread on an MMIO exit, a timer).
///
/// ```
/// use idlework::{Config, Engine, Item, Policy, Submitted};
///
/// let engine = Engine::new(Config { policy: Policy::Workers, ..Config::default() })?;
/// let submitter = engine.submitter();
/// let (tx, rx) = std::sync::mpsc::channel();
/// let handle = submitter.clone();
/// std::thread::spawn(move || handle.submit(Item::from_fn(move || tx.send(7).unwrap())))
///     .join()
///     .unwrap()?;
/// assert_eq!(rx.recv()?, 7);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Submitter {
    shared: Arc<Shared>,
}

impl Submitter {
    /// Submits an item: runs it here if it is cheap enough (or the policy
    /// is `inline`), else queues it and finds it a hand. After shutdown the
    /// item comes back in the error.
    #[inline]
    pub fn submit(&self, item: Item) -> Result<Submitted, SubmitError> {
        self.shared.submit(item, true)
    }

    /// Submits a one-shot closure at priority `p`.
    pub fn submit_fn(
        &self,
        p: Priority,
        f: impl FnOnce() + Send + 'static,
    ) -> Result<Submitted, SubmitError> {
        self.submit(Item::from_fn(f).with_priority(p))
    }
}

impl std::fmt::Debug for Submitter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Submitter").finish_non_exhaustive()
    }
}

/// The work engine of one VM.
///
/// Dropping it without [`Engine::shutdown`] drains: every queued item runs.
pub struct Engine {
    shared: Arc<Shared>,
    workers: Vec<thread::JoinHandle<()>>,
    done: bool,
}

impl Engine {
    /// Creates an engine and its workers, on the monotonic clock.
    pub fn new(config: Config) -> Result<Self, Error> {
        Self::with_clock(config, Clock::default())
    }

    /// Creates an engine reading time from `clock` (tests use a
    /// [`ManualClock`](crate::ManualClock)).
    pub fn with_clock(config: Config, clock: Clock) -> Result<Self, Error> {
        config.validate()?;
        let shared = Arc::new(Shared::new(config, clock));
        let mut engine = Engine {
            workers: Vec::with_capacity(shared.workers.len()),
            shared,
            done: false,
        };
        let hooked = engine.shared.config.on_thread_start.is_some();
        let (report, reports) = std::sync::mpsc::channel();
        for me in 0..engine.shared.workers.len() {
            let report = hooked.then(|| report.clone());
            // On error, dropping `engine` stops the workers already started.
            engine
                .workers
                .push(worker::spawn(&engine.shared, me, report)?);
        }
        drop(report);
        if hooked {
            engine.check_starts(&reports)?;
        }
        engine.wait_for_workers_asleep();
        Ok(engine)
    }

    /// Waits for every worker's thread-start hook; the first failure is
    /// the engine's (dropping it then stops the workers that did start).
    fn check_starts(
        &self,
        reports: &Receiver<(usize, Result<(), StartFailure>)>,
    ) -> Result<(), Error> {
        let mut first = None;
        for _ in 0..self.workers.len() {
            let Ok((me, outcome)) = reports.recv() else {
                break; // a worker died before reporting: counted below
            };
            let thread = self.shared.workers[me].name.clone();
            match (outcome, &first) {
                (Ok(()), _) | (Err(_), Some(_)) => {}
                (Err(StartFailure::Failed(source)), None) => {
                    first = Some(Error::ThreadStart { thread, source })
                }
                (Err(StartFailure::Panicked), None) => {
                    first = Some(Error::ThreadStartPanicked { thread })
                }
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Lets new workers reach their first sleep, so the first submissions
    /// are placed by the rules rather than grabbed by a starting worker.
    fn wait_for_workers_asleep(&self) {
        if cfg!(loom) {
            return;
        }
        while self.shared.sleep.sleeping() < self.workers.len() {
            thread::yield_now();
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// A handle for submitting work.
    pub fn submitter(&self) -> Submitter {
        Submitter {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Submits an item; see [`Submitter::submit`].
    #[inline]
    pub fn submit(&self, item: Item) -> Result<Submitted, SubmitError> {
        self.shared.submit(item, true)
    }

    /// A new ordered lane: items submitted to it run one at a time, in
    /// submission order, on whichever hand takes them (see [`Lane`]).
    pub fn lane(&self) -> Lane {
        Lane::new(self.submitter(), self.shared.id)
    }

    /// Registers a vCPU as an idle executor. Keep the returned handle on
    /// the vCPU thread.
    pub fn register_executor(&self, name: impl Into<String>, hooks: impl IdleHooks) -> Executor {
        Executor::new(Arc::clone(&self.shared), name.into(), Box::new(hooks))
    }

    /// Wakes a worker if some queued item is past its deadline. The
    /// engine's timekeeping worker does this by itself; this is for a
    /// [`ManualClock`](crate::ManualClock) in tests, or an extra periodic
    /// check. Returns whether a worker was woken.
    pub fn check_deadlines(&self) -> bool {
        self.shared.check_deadlines()
    }

    /// A snapshot of the statistics.
    pub fn stats(&self) -> Stats {
        let shared = &*self.shared;
        let executors = shared.executors.summaries();
        let workers: Vec<_> = shared.workers.iter().map(|w| w.summary()).collect();
        let mut wait = new_histogram();
        shared.executors.merge_waits(&mut wait);
        shared.workers.iter().for_each(|w| w.merge_wait(&mut wait));
        Stats {
            policy: shared.config.policy,
            pending: shared.queues.lens(),
            inline: shared.inline.summary(),
            executors,
            workers,
            wait: WaitSummary::of(&wait),
            pickup: WaitSummary::of(&self.pickup_histogram()),
        }
    }

    /// The pickup latencies of all executors, in ns (see
    /// [`ExecutorStats::pickup`](crate::ExecutorStats::pickup)): the whole
    /// distribution, for a benchmark to print or plot.
    pub fn pickup_histogram(&self) -> hdrhistogram::Histogram<u64> {
        let mut h = new_histogram();
        self.shared.executors.merge_pickups(&mut h);
        h
    }

    /// Shuts down: no more submissions (they get their item back in
    /// [`SubmitError::ShutDown`]) or executor runs; then either runs every
    /// queued item or returns them. Nothing is dropped silently.
    ///
    /// ```
    /// use idlework::{Config, Engine, Item, Priority, Shutdown};
    ///
    /// let engine = Engine::new(Config::default())?;
    /// // Idle work waits for an idle vCPU; there is none, and the idle
    /// // deadline (100 ms by default) has not passed.
    /// engine.submit(Item::from_fn(|| ()).with_priority(Priority::Idle))?;
    /// let left = engine.shutdown(Shutdown::Return);
    /// assert_eq!(left.len(), 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn shutdown(mut self, how: Shutdown) -> Vec<Item> {
        self.stop(how)
    }

    fn stop(&mut self, how: Shutdown) -> Vec<Item> {
        if std::mem::replace(&mut self.done, true) {
            return Vec::new();
        }
        let shared = &*self.shared;
        match how {
            Shutdown::Return => {
                shared.set_mode(Mode::Stopping);
                shared.gate.close();
                shared.queues.close();
            }
            Shutdown::Drain => {
                shared.gate.close();
                shared.queues.close();
                shared.set_mode(Mode::Draining);
            }
        }
        shared.sleep.stop();
        for handle in self.workers.drain(..) {
            if handle.join().is_err() {
                tracing::error!("an idlework worker panicked");
            }
        }
        let left = with_lane_backlogs(shared.queues.drain());
        tracing::debug!(left = left.len(), ?how, "engine shut down");
        match how {
            Shutdown::Return => left,
            Shutdown::Drain => {
                left.into_iter()
                    .for_each(|item| shared.run_to_completion(item));
                Vec::new()
            }
        }
    }
}

/// Shutdown's queued items, each lane's active item followed by that lane's
/// backlog in order. No item is running now (workers are joined, the gate
/// is closed), so every lane with a backlog has its active item here.
fn with_lane_backlogs(left: Vec<Item>) -> Vec<Item> {
    let mut out = Vec::with_capacity(left.len());
    for item in left {
        let lane = item.lane.clone();
        out.push(item);
        if let Some(lane) = lane {
            out.extend(lane.take_backlog());
        }
    }
    out
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop(Shutdown::Drain);
    }
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("config", &self.shared.config)
            .field("workers", &self.workers.len())
            .finish_non_exhaustive()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn handles_can_be_shared_across_threads() {
        fn send_sync<T: Send + Sync>() {}
        fn send<T: Send>() {}
        send_sync::<Engine>();
        send_sync::<Submitter>();
        send::<Executor>();
        send::<Item>();
    }
}
