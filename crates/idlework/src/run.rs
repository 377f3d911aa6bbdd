//! Running items: one step under `catch_unwind`, and the run session that
//! executors and workers share.

use crate::clock::Nanos;
use crate::item::{Context, Item, Place, Step};
use crate::lane::LaneQueue;
use crate::shared::Shared;
use crate::stats::{RunnerStats, Tally};
use crate::sync::{bump, FairGuard};
use hdrhistogram::Histogram;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;

/// How a step ended.
pub(crate) enum Outcome {
    /// Finished: returned [`Step::Done`].
    Done,
    /// Wants to continue later; here it is back.
    Yielded(Item),
    /// Panicked; the panic was caught and the item dropped.
    Panicked,
}

/// Runs one step of `item`, catching a panic so a bad item cannot take
/// down a worker or a vCPU thread. Also returns its lane if it finished
/// (done or panicked): the caller hands the lane on ([`next_in_lane`]).
#[inline]
pub(crate) fn step(mut item: Item, cx: &Context) -> (Outcome, Option<Arc<LaneQueue>>) {
    let lane = item.lane.take();
    let outcome = match catch_unwind(AssertUnwindSafe(|| item.step(cx))) {
        Ok(Step::Done) => Outcome::Done,
        Ok(Step::Yield) => {
            // It keeps its place: its lane stays behind it.
            item.lane = lane;
            return (Outcome::Yielded(item), None);
        }
        Err(_) => {
            tracing::warn!(priority = ?item.priority(), place = ?cx.place, "work item panicked");
            Outcome::Panicked
        }
    };
    (outcome, lane)
}

/// The item of `lane` to queue or run next, now that its active one
/// finished.
#[inline]
pub(crate) fn next_in_lane(lane: Option<Arc<LaneQueue>>) -> Option<Item> {
    lane.and_then(|l| l.finish())
}

/// Records a step's outcome in `tally`; returns the item if it yielded.
#[inline]
pub(crate) fn account(tally: &mut Tally, p: crate::Priority, outcome: Outcome) -> Option<Item> {
    match outcome {
        Outcome::Done => tally.finished(p),
        Outcome::Panicked => {
            tally.finished(p);
            tally.panics += 1;
        }
        Outcome::Yielded(item) => {
            tally.yields += 1;
            return Some(item);
        }
    }
    None
}

/// A stretch of items run back to back by one executor or worker. Holds
/// the runner's histogram for its duration and publishes counters when
/// dropped, so per-item bookkeeping stays thread-local.
///
/// It reads the clock once at its start and once after every item: that
/// reading is the item's busy time, the next item's start (its queue wait)
/// and the budget check before the next item starts, which holds a run to
/// within one item of its budget (`tests/interleavings.rs` checks it).
/// Reading it only every few quick items would save most of one `rdtsc`
/// per item (about 20 ns on the PVM test host), but a run could
/// then start items past its budget.
pub(crate) struct Session<'a> {
    shared: &'a Shared,
    stats: &'a RunnerStats,
    place: Place,
    wait: FairGuard<'a, Histogram<u64>>,
    tally: Tally,
    start: Nanos,
    now: Nanos,
}

impl<'a> Session<'a> {
    pub(crate) fn new(shared: &'a Shared, stats: &'a RunnerStats, place: Place) -> Self {
        let now = shared.clock.now();
        Session {
            shared,
            stats,
            place,
            wait: stats.wait.lock(),
            tally: Tally::default(),
            start: now,
            now,
        }
    }

    /// The time as of the last item.
    pub(crate) fn now(&self) -> Nanos {
        self.now
    }

    /// Time since the session started, as of the last item.
    pub(crate) fn elapsed(&self) -> Nanos {
        self.now.saturating_sub(self.start)
    }

    /// Runs one step of `item`, offering it `slice`; a yielding item is
    /// queued again. Returns whether the item finished.
    #[inline]
    pub(crate) fn run(&mut self, item: Item, slice: Duration) -> bool {
        self.wait
            .saturating_record(self.now.saturating_sub(item.stamp));
        let p = item.priority();
        let cx = Context {
            place: self.place,
            slice,
        };
        let (outcome, lane) = step(item, &cx);
        let end = self.shared.clock.now();
        self.tally.busy_ns += end.saturating_sub(self.now);
        self.now = end;
        if let Some(next) = next_in_lane(lane) {
            self.shared.enqueue_next_in_lane(next, end);
        }
        match account(&mut self.tally, p, outcome) {
            Some(item) => {
                self.shared.enqueue(item, end);
                false
            }
            None => true,
        }
    }

    /// Publishes the counters gathered so far and lets a snapshot at the
    /// histogram.
    pub(crate) fn flush(&mut self) {
        self.stats.flush(&mut self.tally);
        bump(&mut self.wait);
    }
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        self.stats.flush(&mut self.tally);
    }
}
