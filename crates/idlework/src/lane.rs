//! Ordered lanes: items that must run one at a time, in submission order
//! (a virtio-net TX queue), on whichever hand takes them.
//!
//! A lane admits at most one of its items into the engine at a time: the
//! *active* one, queued, running or yielded and queued again like any
//! item. Later items wait in the lane's backlog, in the order their
//! submitters took the lane's lock (that order *is* the submission order).
//! When the active item finishes — returns [`Step::Done`](crate::Step::Done)
//! or panics — the hand that ran it takes the backlog's front and queues it
//! (or, running inline to completion, runs it next). So:
//!
//! * items of one lane never overlap and finish in submission order, on any
//!   mix of idle executors, workers and inline runs;
//! * independent lanes, and items outside lanes, run in parallel;
//! * a yielding item keeps its place (its lane stays behind it);
//! * a panicking item is counted and ends like a finished one: the lane goes
//!   on with the next;
//! * [`Shutdown::Drain`](crate::Shutdown::Drain) runs every lane to its end,
//!   in order; [`Shutdown::Return`](crate::Shutdown::Return) hands each
//!   lane's active item back followed by its backlog, in order.

use crate::engine::Submitter;
use crate::error::SubmitError;
use crate::item::Item;
use crate::placement::Submitted;
use crate::sync::{lock, Mutex};
use std::collections::VecDeque;
use std::sync::Arc;

/// The lane's state, shared by its handles and its items.
pub(crate) struct LaneQueue {
    /// The engine whose queues the lane feeds.
    pub(crate) engine: u64,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// One of the lane's items is in the engine (queued or running).
    active: bool,
    backlog: VecDeque<Item>,
}

impl LaneQueue {
    /// Admits `item` (whose lane this is): returns it if it may enter the
    /// engine now (it became the active item), or keeps it in the backlog.
    pub(crate) fn admit(&self, item: Item) -> Option<Item> {
        let mut st = lock(&self.state);
        if st.active {
            st.backlog.push_back(item);
            return None;
        }
        st.active = true;
        Some(item)
    }

    /// The active item finished: returns the next one (now active), if any.
    pub(crate) fn finish(&self) -> Option<Item> {
        let mut st = lock(&self.state);
        let next = st.backlog.pop_front();
        st.active = next.is_some();
        next
    }

    /// Shutdown: the backlog, in order; the lane is left empty and idle.
    pub(crate) fn take_backlog(&self) -> VecDeque<Item> {
        let mut st = lock(&self.state);
        st.active = false;
        std::mem::take(&mut st.backlog)
    }
}

/// An ordered lane of an [`Engine`](crate::Engine): its items run one at a
/// time, in submission order, on whichever hand takes them; see
/// [`Engine::lane`](crate::Engine::lane). Cheap to clone; clones are the
/// same lane.
///
/// ```
/// use idlework::{Config, Engine, Item, Policy, Shutdown};
/// use std::sync::{Arc, Mutex};
///
/// let engine = Engine::new(Config { policy: Policy::Workers, max_workers: 2, ..Config::default() })?;
/// let tx_queue = engine.lane();
/// let sent = Arc::new(Mutex::new(Vec::new()));
/// for frame in 0..100 {
///     let sent = Arc::clone(&sent);
///     tx_queue.submit(Item::from_fn(move || sent.lock().unwrap().push(frame)))?;
/// }
/// assert!(engine.shutdown(Shutdown::Drain).is_empty());
/// assert_eq!(*sent.lock().unwrap(), (0..100).collect::<Vec<_>>());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Lane {
    submitter: Submitter,
    pub(crate) queue: Arc<LaneQueue>,
}

impl Lane {
    pub(crate) fn new(submitter: Submitter, engine: u64) -> Self {
        Lane {
            submitter,
            queue: Arc::new(LaneQueue {
                engine,
                state: Mutex::new(State::default()),
            }),
        }
    }

    /// Submits `item` to this lane (see [`Submitter::submit`]): it runs
    /// after every item submitted to the lane before it has finished.
    pub fn submit(&self, item: Item) -> Result<Submitted, SubmitError> {
        self.submitter.submit(item.in_lane(self))
    }
}

impl std::fmt::Debug for Lane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lane").finish_non_exhaustive()
    }
}
