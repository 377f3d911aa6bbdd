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
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Finished: returned [`Step::Done`].
    Done,
    /// Wants to continue later.
    Yielded,
    /// Panicked; the panic was caught.
    Panicked,
}

/// Runs one step of `item`, catching a panic so a bad item cannot take
/// down a worker or a vCPU thread. The item (64 bytes) stays with the
/// caller rather than being moved in and back out, which queues it again
/// if it yielded and otherwise hands it to [`finish`].
#[inline]
pub(crate) fn step(item: &mut Item, cx: &Context) -> Outcome {
    match catch_unwind(AssertUnwindSafe(|| item.step(cx))) {
        Ok(Step::Done) => Outcome::Done,
        Ok(Step::Yield) => Outcome::Yielded,
        Err(_) => {
            tracing::warn!(priority = ?item.priority(), place = ?cx.place, "work item panicked");
            Outcome::Panicked
        }
    }
}

/// Drops an item that finished (done or panicked) and returns the item of
/// its lane to queue or run next, if any. A yielding item keeps its lane
/// (it keeps its place: the lane stays behind it).
#[inline]
pub(crate) fn finish(mut item: Item) -> Option<Item> {
    let lane: Option<Arc<LaneQueue>> = item.lane.take();
    drop(item);
    lane.and_then(|l| l.finish())
}

/// Records a step's outcome in `tally`; returns whether the item yielded.
#[inline]
pub(crate) fn account(tally: &mut Tally, p: crate::Priority, outcome: Outcome) -> bool {
    match outcome {
        Outcome::Done => tally.finished(p),
        Outcome::Panicked => {
            tally.finished(p);
            tally.panics += 1;
        }
        Outcome::Yielded => {
            tally.yields += 1;
            return true;
        }
    }
    false
}

/// A stretch of items run back to back by one executor or worker. Holds
/// the runner's histogram for its duration and publishes counters when
/// dropped, so per-item bookkeeping stays thread-local.
///
/// It reads the clock once at its start and once after every item: that
/// reading is the item's busy time, the next item's start (its queue wait)
/// and the budget check before the next item starts, which holds a run to
/// within one item of its budget (`tests/interleavings.rs` checks it).
/// With the submitter's stamp that is two clock reads per item, and no
/// third one: placement reuses the stamp's reading, and an executor's
/// pickup sample the session's. On the PVM test host an `rdtsc` costs
/// 25-30 ns (the guest traps it), so these two reads are about 50 ns of
/// the uncontended submit → pickup path (`examples/hot_path.rs` on a
/// [`ManualClock`](crate::ManualClock) runs that much faster). Reading it
/// only every few quick items would save most of one read per item, but a
/// run could then start items past its budget.
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
    pub(crate) fn run(&mut self, mut item: Item, slice: Duration) -> bool {
        self.wait
            .saturating_record(self.now.saturating_sub(item.stamp));
        let p = item.priority();
        let cx = Context {
            place: self.place,
            slice,
        };
        let outcome = step(&mut item, &cx);
        let end = self.shared.clock.now();
        self.tally.busy_ns += end.saturating_sub(self.now);
        self.now = end;
        if account(&mut self.tally, p, outcome) {
            self.shared.enqueue(item, end);
            return false;
        }
        if let Some(next) = finish(item) {
            self.shared.enqueue_next_in_lane(next, end);
        }
        true
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
