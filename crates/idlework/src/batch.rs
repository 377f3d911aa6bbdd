//! An executor's batch: the items it took from a queue under one lock
//! acquisition, run one by one, the rest given back when it stops.
//!
//! Why: on the uncontended submit → pickup path each pop was a lock and an
//! unlock of the class's queue, two atomic read-modify-writes per item. An
//! executor that takes several items per acquisition pays them once per
//! batch. What it holds, other hands cannot see, so a batch is bounded:
//!
//! * by the depth one hand absorbs (`Config::items_per_worker`): placement
//!   counts a running executor as a hand for that many queued items, so a
//!   batch takes no more than the queue would have left to it anyway, and
//!   what is queued beyond that still wakes other hands;
//! * by what fits in the rest of the budget at the run's pace so far (the
//!   first take of a run is a single item, whose cost is unknown), so a run
//!   of slow items takes them one at a time as before;
//! * by [`MAX_BATCH`].
//!
//! A more urgent item queued after the batch was taken runs before the
//! batch's next. When the run stops (budget spent, shutdown returning
//! items), the untaken rest goes back to the *front* of its queue in order
//! ([`Queues::unpop`](crate::queue::Queues::unpop)) before the executor
//! marks itself free and looks at the queues again (and places what it
//! finds), so FIFO order, shutdown (whose gate waits for the run to end)
//! and the sleep/wake protocol see every item. While a batch is held, its
//! items are out of the queue's length and oldest stamp: the timekeeper's
//! deadline does not see them, which is bounded by one item's run time
//! except for an item that never returns (which stops its vCPU too).

use crate::item::Item;
use crate::priority::Priority;
use crate::shared::{Mode, Shared};
use std::collections::VecDeque;

/// The most items one take moves out of a queue.
pub(crate) const MAX_BATCH: usize = 32;

/// The items an executor's run has taken and not yet started.
#[derive(Default)]
pub(crate) struct Batch {
    items: VecDeque<Item>,
    /// The class they were taken from.
    class: Priority,
}

impl Batch {
    /// The next item to run: one of a more urgent class queued since the
    /// batch was taken, else the batch's next, else the first of a fresh
    /// batch of up to `max()` items from the most urgent class that has
    /// any. None once the engine stops (the caller gives the batch back).
    #[inline]
    pub(crate) fn next(&mut self, shared: &Shared, max: impl FnOnce() -> usize) -> Option<Item> {
        if shared.mode() == Mode::Stopping {
            return None;
        }
        if !self.items.is_empty() {
            return self.more_urgent(shared).or_else(|| self.items.pop_front());
        }
        let max = max();
        for p in Priority::ALL {
            if shared.queues.pop_batch(p, max, &mut self.items) > 0 {
                self.class = p;
                return self.items.pop_front();
            }
        }
        None
    }

    /// An item of a class more urgent than the batch's, if one is queued.
    #[inline]
    fn more_urgent(&self, shared: &Shared) -> Option<Item> {
        Priority::ALL
            .into_iter()
            .take_while(|&p| p != self.class)
            .filter(|&p| !shared.queues.is_empty(p))
            .find_map(|p| shared.queues.pop(p))
    }

    /// Returns the items not started to the front of their queue. The
    /// caller fences and places them (as after any push).
    pub(crate) fn give_back(&mut self, shared: &Shared) {
        shared.queues.unpop(self.class, &mut self.items);
    }
}

/// How many items a run may take at once: at most `per_hand` and
/// [`MAX_BATCH`], and no more than fit in `left` ns at the pace of the
/// `done` items that took `spent` ns; one while the pace is unknown.
pub(crate) fn batch_size(per_hand: usize, done: u64, spent: u64, left: u64) -> usize {
    // Unknown pace (nothing finished yet): one item.
    let fit = spent.checked_div(done).map_or(1, |pace| {
        usize::try_from(left / pace.max(1)).unwrap_or(usize::MAX)
    });
    fit.clamp(1, MAX_BATCH.min(per_hand.max(1)))
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::{batch_size, MAX_BATCH};

    #[test]
    fn a_batch_is_bounded_by_pace_depth_per_hand_and_the_maximum() {
        assert_eq!(batch_size(100, 0, 0, 1_000_000), 1, "pace unknown");
        assert_eq!(batch_size(100, 2, 20_000, 15_000), 1, "10 us each, 15 left");
        assert_eq!(batch_size(100, 2, 2_000, 5_000), 5);
        assert_eq!(batch_size(4, 10, 100, 1_000_000), 4, "depth per hand");
        assert_eq!(batch_size(1000, 10, 0, 1_000_000), MAX_BATCH);
        assert_eq!(batch_size(100, 3, 30_000, 0), 1, "always at least one");
    }
}
