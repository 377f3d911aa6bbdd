//! Placement: where a submitted item runs, and whom to wake for it.
//!
//! | policy  | `urgent`                         | `normal`                                       | `idle`                                   |
//! |---------|----------------------------------|------------------------------------------------|------------------------------------------|
//! | workers | wake a worker at once            | wake a worker when depth asks for a hand, or after `normal_deadline` | as `normal`          |
//! | inline  | run on the submitting thread     | run on the submitting thread                   | run on the submitting thread             |
//! | idle    | wake a worker (else claim an idle executor) | claim an idle executor, else wake a worker, when depth asks; a worker after `normal_deadline` | claim an idle executor; a worker only after `idle_deadline` |
//!
//! Under every policy but `inline`, an item whose cost hint is below the
//! inline threshold first runs one step on the submitting thread.
//!
//! "Claim an idle executor" on the submit path means one that *announced*
//! itself idle ([`Executor::announce_idle`](crate::Executor::announce_idle)):
//! a count and a bitmap, O(1), no lock and no call into the VMM but the
//! kick. When none has, and work waits for an idle executor (`idle_poll`),
//! the timekeeper is made to look: it claims announced executors too, and
//! *probes* the others ([`IdleHooks::probe_idle`](crate::IdleHooks::probe_idle),
//! e.g. KVM's `blocking` statistic under an in-kernel irqchip).

use crate::clock::Nanos;
use crate::config::Policy;
use crate::error::SubmitError;
use crate::item::{Context, Item, Place};
use crate::priority::Priority;
use crate::run::{account, finish, step};
use crate::shared::Shared;
use crate::sleep::Watch;
use crate::stats::Tally;
use crate::sync::{fence, Ordering};
use std::time::Duration;

/// Where a submission went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Submitted {
    /// It already ran, to completion, on the submitting thread.
    Inline,
    /// It was queued (possibly after an inline step that yielded).
    Queued,
}

impl Shared {
    /// Submits `item`. `capped` says whether an inline run on this thread
    /// counts against the CPU cap (it does not on an executor's thread).
    #[inline]
    pub(crate) fn submit(&self, mut item: Item, capped: bool) -> Result<Submitted, SubmitError> {
        if item.lane.is_none() && !self.runs_inline_first(&item) {
            return self.submit_queued(item);
        }
        // Running on this thread, or a lane's backlog: shutdown must wait
        // for this call to finish, so it passes the gate.
        let Some(_pass) = self.gate.enter() else {
            return Err(SubmitError::ShutDown(item));
        };
        if let Some(lane) = item.lane.clone() {
            if lane.engine != self.id {
                return Err(SubmitError::ForeignLane(item));
            }
            item.stamp = self.clock.now();
            match lane.admit(item) {
                Some(active) => item = active,
                None => return Ok(Submitted::Queued), // behind the lane's active item
            }
        }
        if self.config.policy == Policy::Inline {
            self.run_inline(item, true);
            return Ok(Submitted::Inline);
        }
        if self.below_threshold(&item) && (!capped || self.cap.try_acquire()) {
            let rest = self.run_inline(item, false);
            if capped {
                self.release_cap();
            }
            match rest {
                None => return Ok(Submitted::Inline),
                Some(yielded) => item = yielded,
            }
        }
        self.enqueue(item, self.clock.now());
        Ok(Submitted::Queued)
    }

    /// The common path: queue `item` and find it a hand. The queue's lock
    /// refuses it once shutdown has closed the queues, so this path needs
    /// no gate (see `queue.rs`).
    #[inline]
    fn submit_queued(&self, mut item: Item) -> Result<Submitted, SubmitError> {
        let now = self.clock.now();
        item.stamp = now;
        let p = item.priority();
        self.queues.submit(item).map_err(SubmitError::ShutDown)?;
        fence(Ordering::SeqCst);
        self.place(p, now);
        Ok(Submitted::Queued)
    }

    /// Whether `item` runs (a step) on the submitting thread before it is
    /// queued, if at all.
    #[inline]
    fn runs_inline_first(&self, item: &Item) -> bool {
        self.config.policy == Policy::Inline || self.below_threshold(item)
    }

    #[inline]
    fn below_threshold(&self, item: &Item) -> bool {
        item.cost_hint()
            .is_some_and(|c| c < self.config.inline_threshold)
    }

    /// Runs `item` to completion on this thread, counted as inline.
    pub(crate) fn run_to_completion(&self, item: Item) {
        self.run_inline(item, true);
    }

    /// Runs `item` on this thread: one step, or to completion. Returns the
    /// item if it yielded and must be queued.
    fn run_inline(&self, mut item: Item, to_completion: bool) -> Option<Item> {
        let start = self.clock.now();
        let cx = Context {
            place: Place::Inline,
            slice: if to_completion {
                Duration::MAX
            } else {
                self.config.inline_threshold
            },
        };
        let mut tally = Tally::default();
        let rest = loop {
            let p = item.priority();
            let outcome = step(&mut item, &cx);
            if account(&mut tally, p, outcome) {
                if to_completion {
                    continue;
                }
                break Some(item);
            }
            match finish(item) {
                // Running to completion here: its lane's next item too.
                Some(next) if to_completion => item = next,
                Some(next) => {
                    self.enqueue_next_in_lane(next, self.clock.now());
                    break None;
                }
                None => break None,
            }
        };
        tally.busy_ns = self.clock.now().saturating_sub(start);
        self.inline.flush(&mut tally);
        rest
    }

    /// Finds a hand for a just-queued item of class `p`. Unless a worker
    /// was woken for it (a worker, once awake, runs until the queue is
    /// empty), the timekeeper is made to watch its age: a kicked vCPU may
    /// never come, and hands already at work may be stuck in long items.
    /// The caller has fenced after queueing it, at `now`.
    #[inline]
    pub(crate) fn place(&self, p: Priority, now: Nanos) {
        let woke_worker = match (self.config.policy, p) {
            (Policy::Idle, Priority::Urgent) => {
                self.wake_worker() || {
                    self.executors.claim_announced(now);
                    false
                }
            }
            (Policy::Idle, Priority::Idle) => {
                let hands = self.executors.busy();
                if self.queues.len(p) > hands.saturating_mul(self.config.items_per_worker) {
                    self.executors.claim_announced(now);
                }
                false
            }
            (_, Priority::Urgent) => self.wake_worker(),
            _ => self.grow(now),
        };
        // Claimed by the submitting thread's own executor, which runs it on
        // return (`Executor::announce_serving`): nobody else need watch it.
        if !woke_worker && !crate::executor::take_claimed_here() {
            self.sleep.arm_timer();
            // Nobody is on it yet (an executor at work places what is left
            // when it finishes): make sure the timekeeper looks for one.
            if p != Priority::Urgent
                && self.executors.busy() == 0
                && self.waits_for_idle()
                && self.timekeeper_looks()
            {
                self.look_for_idle_soon();
            }
        }
    }

    /// Adds one hand if the queue depth asks for more than are at work:
    /// an idle executor first (idle policy), else a worker. Returns whether
    /// a worker was woken.
    #[inline]
    pub(crate) fn grow(&self, now: Nanos) -> bool {
        if !self.needs_hand() || (self.idle_policy() && self.executors.claim_announced(now)) {
            return false;
        }
        // Waiting for an idle executor: the timekeeper looks for one, and a
        // worker comes only for depth (or, later, for the deadline).
        if self.waits_for_idle() && !self.depth_exceeds(self.executors.busy()) {
            return false;
        }
        self.wake_worker()
    }

    /// Whether the queue depth (`urgent` + `normal`, and `idle` unless idle
    /// work waits for executors) exceeds what the hands at work (awake
    /// workers, kicked or running executors) absorb.
    #[inline]
    fn needs_hand(&self) -> bool {
        // A worker awake while the CPU cap is full cannot take the item: it
        // is no hand (with a cap of 0, workers never are).
        let awake = if self.cap.available() {
            self.workers.len().saturating_sub(self.sleep.sleeping())
        } else {
            0
        };
        let hands = awake + self.executors.busy();
        let absorbed = hands.saturating_mul(self.config.items_per_worker);
        // Nobody at work: any queued item needs a hand (skip the count).
        absorbed == 0 || self.queues.depth(!self.idle_policy()) > absorbed
    }

    /// Wakes one sleeping worker if the CPU cap leaves room for it.
    pub(crate) fn wake_worker(&self) -> bool {
        self.cap.available() && self.sleep.wake_one()
    }

    /// Returns a CPU-cap slot; if the cap was full, a worker refused a
    /// slot may be waiting for it.
    pub(crate) fn release_cap(&self) {
        if self.cap.release() {
            fence(Ordering::SeqCst);
            if !self.queues.all_empty() {
                self.wake_worker();
            }
        }
    }

    /// Queues the next item of a lane whose active item just finished,
    /// keeping its stamp (when it was submitted to the lane), and finds it
    /// a hand.
    pub(crate) fn enqueue_next_in_lane(&self, item: Item, now: Nanos) {
        let p = item.priority();
        self.queues.push(item);
        fence(Ordering::SeqCst);
        self.place(p, now);
    }

    /// Finds hands again for whatever is still queued (an executor ran out
    /// of budget). The caller has fenced.
    pub(crate) fn place_remaining(&self) {
        let now = self.clock.now();
        for p in Priority::ALL {
            if !self.queues.is_empty(p) {
                self.place(p, now);
            }
        }
    }

    /// Wakes a worker if some queued item is past its deadline. Returns
    /// whether one was woken.
    pub(crate) fn check_deadlines(&self) -> bool {
        fence(Ordering::SeqCst);
        let now = self.clock.now();
        self.next_deadline().is_some_and(|t| t <= now) && self.wake_worker()
    }
}
