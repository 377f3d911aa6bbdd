//! How workers fall asleep and are woken: one at a time, without lost
//! wake-ups, with one sleeper keeping time for deadlines.
//!
//! The protocol follows rayon-core's `sleep` module:
//!
//! * A worker that finds nothing announces itself as sleeping (under the
//!   sleep lock, `sleeping += 1`, SeqCst fence) and *then* looks at the
//!   queues once more before it waits. A submitter pushes its item, issues
//!   a SeqCst fence and *then* reads `sleeping`. Either the submitter sees
//!   the sleeper and wakes it, or the sleeper's second look sees the item.
//! * A waker takes one sleeper off the list and signals that worker's own
//!   condition variable: no herd.
//! * The first worker to sleep while none keeps time becomes the
//!   *timekeeper*: it sleeps until the oldest queued item's deadline
//!   ([`Watch::next_deadline`]), or without a timeout when nothing is
//!   queued (`timer_armed` false). A submitter that queues an item while
//!   the timer is disarmed arms it and wakes the timekeeper to recompute.

use crate::clock::Nanos;
use crate::sync::{fence, lock, unpoison, AtomicBool, AtomicUsize, Condvar, Mutex, Ordering};
use std::time::Duration;

/// What a sleeping worker consults.
pub(crate) trait Watch {
    /// Whether there is work a worker may take now.
    fn has_work(&self) -> bool;
    /// When queued work becomes due for a worker, if any is queued.
    fn next_deadline(&self) -> Option<Nanos>;
    /// The current time.
    fn now(&self) -> Nanos;
    /// Whether timed waits are meaningless (a manual clock): wait for a
    /// notification instead.
    fn manual_time(&self) -> bool;
    /// Looks for an idle executor for work that waits for one (kicking it),
    /// and returns when to look again, if work still waits.
    fn poll_idle(&self) -> Option<Duration>;
}

/// Why a worker's sleep ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Wake {
    /// Woken by a waker, or work was found before falling asleep.
    Work,
    /// The timekeeper's deadline passed.
    Deadline,
    /// The engine is shutting down.
    Stop,
}

struct State {
    /// Sleeping workers, most recent last.
    idle: Vec<usize>,
    /// Set by a waker that took the worker off `idle`.
    woken: Vec<bool>,
    timekeeper: Option<usize>,
    stopping: bool,
}

/// The sleep state of a pool of workers.
pub(crate) struct Sleep {
    state: Mutex<State>,
    cvars: Box<[Condvar]>,
    /// `state.idle.len()`, readable without the lock.
    sleeping: AtomicUsize,
    /// False only while the timekeeper sleeps with no deadline.
    timer_armed: AtomicBool,
    /// True while the timekeeper's sleep is bounded by the idle poll.
    polling: AtomicBool,
}

impl Sleep {
    pub(crate) fn new(workers: usize) -> Self {
        Sleep {
            state: Mutex::new(State {
                idle: Vec::with_capacity(workers),
                woken: vec![false; workers],
                timekeeper: None,
                stopping: false,
            }),
            cvars: (0..workers).map(|_| Condvar::new()).collect(),
            sleeping: AtomicUsize::new(0),
            timer_armed: AtomicBool::new(true),
            polling: AtomicBool::new(false),
        }
    }

    /// Workers asleep now.
    #[inline]
    pub(crate) fn sleeping(&self) -> usize {
        self.sleeping.load(Ordering::SeqCst)
    }

    /// Wakes one sleeping worker, preferring one that is not keeping time.
    /// The caller must have published its work and issued a SeqCst fence.
    pub(crate) fn wake_one(&self) -> bool {
        if self.sleeping() == 0 {
            return false;
        }
        let mut st = lock(&self.state);
        let keeper = st.timekeeper;
        let Some(pos) = st
            .idle
            .iter()
            .rposition(|&w| Some(w) != keeper)
            .or_else(|| st.idle.len().checked_sub(1))
        else {
            return false;
        };
        let w = st.idle.remove(pos);
        st.woken[w] = true;
        self.sleeping.fetch_sub(1, Ordering::SeqCst);
        self.cvars[w].notify_one();
        true
    }

    /// Makes sure the timekeeper, if it sleeps without a deadline, looks
    /// again. The caller must have queued work and fenced.
    #[inline]
    pub(crate) fn arm_timer(&self) {
        if self.timer_armed.load(Ordering::SeqCst) || self.timer_armed.swap(true, Ordering::SeqCst)
        {
            return;
        }
        let st = lock(&self.state);
        if let Some(k) = st.timekeeper {
            self.cvars[k].notify_one();
        }
    }

    /// Makes sure the timekeeper looks for idle executors soon: wakes it if
    /// its current sleep is not bounded by the idle poll. The caller must
    /// have queued work and fenced.
    pub(crate) fn ensure_polling(&self) {
        if !self.polling.load(Ordering::SeqCst) {
            self.nudge_timekeeper();
        }
    }

    /// Makes the timekeeper, if one sleeps, recompute its sleep (and look
    /// for idle executors) now.
    pub(crate) fn nudge_timekeeper(&self) {
        let st = lock(&self.state);
        if let Some(k) = st.timekeeper {
            self.cvars[k].notify_one();
        }
    }

    /// Wakes every sleeper for good: later sleeps return [`Wake::Stop`].
    pub(crate) fn stop(&self) {
        let mut st = lock(&self.state);
        st.stopping = true;
        for cv in self.cvars.iter() {
            cv.notify_all();
        }
    }

    /// Puts worker `me` to sleep until there is work, its deadline passes
    /// (if it keeps time) or the pool stops.
    pub(crate) fn sleep(&self, me: usize, watch: &impl Watch) -> Wake {
        let mut st = lock(&self.state);
        if st.stopping {
            return Wake::Stop;
        }
        st.idle.push(me);
        self.sleeping.fetch_add(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        if watch.has_work() {
            self.unlist(&mut st, me);
            return Wake::Work;
        }
        let keeper = st.timekeeper.is_none();
        if keeper {
            st.timekeeper = Some(me);
        }
        let wake = loop {
            if std::mem::take(&mut st.woken[me]) {
                break Wake::Work;
            }
            if st.stopping {
                self.unlist(&mut st, me);
                break Wake::Stop;
            }
            if !keeper {
                st = unpoison(self.cvars[me].wait(st));
                continue;
            }
            match self.timeout(watch) {
                Some(Duration::ZERO) => {
                    self.unlist(&mut st, me);
                    break Wake::Deadline;
                }
                Some(t) => st = unpoison(self.cvars[me].wait_timeout(st, t)).0,
                None => st = unpoison(self.cvars[me].wait(st)),
            }
        };
        if keeper {
            st.timekeeper = None;
            self.timer_armed.store(true, Ordering::SeqCst);
            self.polling.store(false, Ordering::SeqCst);
        }
        wake
    }

    /// How long the timekeeper may sleep: `None` for no limit (disarming
    /// the timer when nothing is queued), zero when a deadline passed. While
    /// work waits for an idle executor it looks for one first, and sleeps at
    /// most until the next look.
    fn timeout(&self, watch: &impl Watch) -> Option<Duration> {
        let poll = if watch.manual_time() {
            None
        } else {
            watch.poll_idle()
        };
        self.polling.store(poll.is_some(), Ordering::SeqCst);
        let until_deadline = self.until_deadline(watch);
        match (poll, until_deadline) {
            (Some(p), Some(d)) => Some(p.min(d)),
            (p, d) => p.or(d),
        }
    }

    fn until_deadline(&self, watch: &impl Watch) -> Option<Duration> {
        let mut deadline = watch.next_deadline();
        if deadline.is_none() {
            self.timer_armed.store(false, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            deadline = watch.next_deadline();
            if deadline.is_some() {
                self.timer_armed.store(true, Ordering::SeqCst);
            }
        }
        let left = deadline?.saturating_sub(watch.now());
        if left == 0 {
            Some(Duration::ZERO)
        } else if watch.manual_time() {
            None
        } else {
            Some(Duration::from_nanos(left))
        }
    }

    fn unlist(&self, st: &mut State, me: usize) {
        if let Some(pos) = st.idle.iter().position(|&w| w == me) {
            st.idle.remove(pos);
            self.sleeping.fetch_sub(1, Ordering::SeqCst);
        }
    }
}
