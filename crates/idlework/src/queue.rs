//! The engine's queues: one FIFO per priority class, each knowing its
//! length and the stamp of its oldest item without taking its lock.
//!
//! Each class is a `VecDeque` under a mutex. An uncontended push or pop is
//! two atomic read-modify-writes (lock and unlock), as many as a lock-free
//! segment queue needs, but the deque keeps its buffer (a segment queue
//! allocates and frees a block every 31 items, which was a quarter of the
//! submit → pickup path's instructions), its length and oldest stamp are
//! exact (plain stores made under the lock, read without it), and the loom
//! build model-checks the very same queue. The lock is held only to move
//! items in or out; items are dropped and run outside it. Workers pop one
//! item per acquisition; an executor takes a bounded batch per acquisition
//! ([`Queues::pop_batch`], see `batch.rs`) and gives back what it did not
//! start ([`Queues::unpop`]), so on the uncontended submit → pickup path
//! the pickup's lock is paid once per batch rather than once per item.
//!
//! The lock also decides shutdown for queued submissions: [`Queues::close`]
//! marks every class closed under its lock, and a submission
//! ([`Queues::submit`]) checks that mark under the same lock, so it is
//! either queued before the close (and drained or handed back by shutdown)
//! or refused. That costs the submit path nothing beyond the push it makes
//! anyway, where a separate shutdown gate costs two more read-modify-writes.

use crate::clock::Nanos;
use crate::item::Item;
use crate::priority::{ByPriority, Priority};
use crate::sync::{AtomicUsize, FairMutex, Ordering::Release, Ordering::SeqCst};
use std::collections::VecDeque;
// The oldest stamp decides only when a deadline fires, never whether a
// wake-up happens: a plain std atomic even under loom.
use std::sync::atomic::{AtomicU64, Ordering};

/// What a class's lock guards: its items, and whether it still takes
/// submissions.
#[derive(Default)]
struct Locked {
    items: VecDeque<Item>,
    closed: bool,
}

/// A locked FIFO whose length and oldest stamp are readable without the lock.
struct Fifo {
    /// parking_lot's mutex (no poisoning to check; a loom mutex under loom).
    items: FairMutex<Locked>,
    /// `items.len()`, written under the lock. Part of the sleep/wake
    /// protocol: every push is followed by the pusher's SeqCst fence (see
    /// `Shared::enqueue`), and every reader that must not miss a push looks
    /// after its own SeqCst fence, so a release store is enough (on x86 a
    /// plain move, where a SeqCst store is an `xchg`).
    len: AtomicUsize,
    /// The front item's stamp while `len > 0`, written under the lock.
    front: AtomicU64,
}

impl Default for Fifo {
    fn default() -> Self {
        Fifo {
            items: FairMutex::new(Locked::default()),
            len: AtomicUsize::new(0),
            front: AtomicU64::new(0),
        }
    }
}

impl Fifo {
    /// Queues `item`, work already inside the engine (a yielding item, a
    /// lane's next one): taken even while shutting down.
    fn push(&self, item: Item) {
        self.append(&mut self.items.lock(), item);
    }

    /// Queues a submitted `item` while the class is open, else hands it back.
    #[inline]
    fn submit(&self, item: Item) -> Result<(), Item> {
        let mut locked = self.items.lock();
        if locked.closed {
            return Err(item);
        }
        self.append(&mut locked, item);
        Ok(())
    }

    #[inline]
    fn append(&self, locked: &mut Locked, item: Item) {
        let q = &mut locked.items;
        if q.is_empty() {
            self.front.store(item.stamp, Ordering::Relaxed);
        }
        q.push_back(item);
        self.len.store(q.len(), Release);
    }

    fn close(&self) {
        self.items.lock().closed = true;
    }

    fn pop_if(&self, due: impl FnOnce(Nanos) -> bool) -> Option<Item> {
        if self.len() == 0 {
            return None;
        }
        let mut locked = self.items.lock();
        let q = &mut locked.items;
        if !due(q.front()?.stamp) {
            return None;
        }
        let item = q.pop_front();
        if let Some(next) = q.front() {
            self.front.store(next.stamp, Ordering::Relaxed);
        }
        // A pop only ever makes a reader look for work that is gone.
        self.len.store(q.len(), Release);
        item
    }

    /// Moves up to `max` items from the front into `into` under one lock
    /// acquisition; returns how many.
    fn pop_batch(&self, max: usize, into: &mut VecDeque<Item>) -> usize {
        if self.len() == 0 {
            return 0;
        }
        let mut locked = self.items.lock();
        let q = &mut locked.items;
        let n = max.min(q.len());
        if n == q.len() && into.is_empty() {
            // All of it: trade buffers (the queue keeps `into`'s capacity)
            // rather than move the items one by one.
            std::mem::swap(q, into);
        } else {
            into.extend(q.drain(..n));
        }
        if let Some(next) = q.front() {
            self.front.store(next.stamp, Ordering::Relaxed);
        }
        self.len.store(q.len(), Release);
        n
    }

    /// Puts `items` (taken from the front earlier, oldest first) back at
    /// the front, in order: they are older than anything queued since.
    /// Taken even while shutting down (work already inside the engine).
    fn unpop(&self, items: &mut VecDeque<Item>) {
        let mut locked = self.items.lock();
        let q = &mut locked.items;
        while let Some(item) = items.pop_back() {
            q.push_front(item);
        }
        if let Some(first) = q.front() {
            self.front.store(first.stamp, Ordering::Relaxed);
        }
        self.len.store(q.len(), Release);
    }

    #[inline]
    fn len(&self) -> usize {
        self.len.load(SeqCst)
    }

    fn oldest(&self) -> Option<Nanos> {
        (self.len() > 0).then(|| self.front.load(Ordering::Relaxed))
    }
}

/// The queues of all three classes.
#[derive(Default)]
pub(crate) struct Queues {
    by_class: [Fifo; 3],
}

impl Queues {
    fn fifo(&self, p: Priority) -> &Fifo {
        &self.by_class[p.index()]
    }

    /// Queues `item` at the back of its class; its stamp must be set. For
    /// work already inside the engine (a yielding item, a lane's next one),
    /// which is taken even while shutting down.
    pub(crate) fn push(&self, item: Item) {
        self.fifo(item.priority()).push(item);
    }

    /// Queues a submitted `item` (stamp set) unless the queues are closed;
    /// then it comes back.
    #[inline]
    pub(crate) fn submit(&self, item: Item) -> Result<(), Item> {
        self.fifo(item.priority()).submit(item)
    }

    /// Refuses submissions from now on. Every submission queued before is
    /// visible to a later [`drain`](Self::drain) or pop.
    pub(crate) fn close(&self) {
        Priority::ALL.into_iter().for_each(|p| self.fifo(p).close());
    }

    /// Takes the oldest item of class `p`.
    #[inline]
    pub(crate) fn pop(&self, p: Priority) -> Option<Item> {
        self.pop_if(p, |_| true)
    }

    /// Moves up to `max` of class `p`'s oldest items into `into`, under one
    /// lock acquisition (an executor's batch, see `batch.rs`). Returns how
    /// many.
    pub(crate) fn pop_batch(&self, p: Priority, max: usize, into: &mut VecDeque<Item>) -> usize {
        self.fifo(p).pop_batch(max, into)
    }

    /// Returns the untaken rest of a batch of class `p` to the front of its
    /// queue, in order, even while shutting down. The caller fences after
    /// it and finds the items a hand, like after any push.
    pub(crate) fn unpop(&self, p: Priority, items: &mut VecDeque<Item>) {
        if !items.is_empty() {
            self.fifo(p).unpop(items);
        }
    }

    /// Takes the oldest item of class `p` if `due(its stamp)` holds.
    #[inline]
    pub(crate) fn pop_if(&self, p: Priority, due: impl FnOnce(Nanos) -> bool) -> Option<Item> {
        self.fifo(p).pop_if(due)
    }

    /// Whether class `p` has nothing queued.
    #[inline]
    pub(crate) fn is_empty(&self, p: Priority) -> bool {
        self.fifo(p).len() == 0
    }

    /// Whether no class has anything queued.
    pub(crate) fn all_empty(&self) -> bool {
        Priority::ALL.into_iter().all(|p| self.is_empty(p))
    }

    /// The stamp of class `p`'s oldest item, if any.
    pub(crate) fn oldest(&self, p: Priority) -> Option<Nanos> {
        self.fifo(p).oldest()
    }

    /// Items queued in class `p`.
    #[inline]
    pub(crate) fn len(&self, p: Priority) -> usize {
        self.fifo(p).len()
    }

    /// Items queued in each class.
    pub(crate) fn lens(&self) -> ByPriority<usize> {
        ByPriority::from_fn(|p| self.len(p))
    }

    /// Items that want hands now: `urgent` plus `normal`, plus `idle` if
    /// `with_idle`.
    #[inline]
    pub(crate) fn depth(&self, with_idle: bool) -> usize {
        let idle = if with_idle {
            self.len(Priority::Idle)
        } else {
            0
        };
        self.len(Priority::Urgent) + self.len(Priority::Normal) + idle
    }

    /// Empties every class, most urgent first.
    pub(crate) fn drain(&self) -> Vec<Item> {
        let mut out = Vec::new();
        for p in Priority::ALL {
            while let Some(item) = self.pop(p) {
                out.push(item);
            }
        }
        out
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::Queues;
    use crate::item::Item;
    use crate::priority::Priority;

    fn stamped(p: Priority, stamp: u64) -> Item {
        let mut item = Item::from_fn(|| ()).with_priority(p);
        item.stamp = stamp;
        item
    }

    #[test]
    fn idle_ages_are_exact() {
        let q = Queues::default();
        q.push(stamped(Priority::Idle, 10));
        q.push(stamped(Priority::Idle, 20));
        assert_eq!(q.oldest(Priority::Idle), Some(10));
        assert!(q.pop_if(Priority::Idle, |s| s >= 15).is_none());
        assert!(q.pop_if(Priority::Idle, |s| s == 10).is_some());
        assert_eq!(q.oldest(Priority::Idle), Some(20));
    }

    #[test]
    fn hot_ages_are_exact_too() {
        let q = Queues::default();
        assert_eq!(q.oldest(Priority::Normal), None);
        q.push(stamped(Priority::Normal, 10));
        q.push(stamped(Priority::Normal, 20));
        assert_eq!(q.oldest(Priority::Normal), Some(10));
        q.pop(Priority::Normal);
        assert_eq!(q.oldest(Priority::Normal), Some(20));
        q.pop(Priority::Normal);
        assert_eq!(q.oldest(Priority::Normal), None);
        q.push(stamped(Priority::Normal, 30));
        assert_eq!(q.oldest(Priority::Normal), Some(30));
    }

    #[test]
    fn depth_counts_classes_and_drain_empties_most_urgent_first() {
        let q = Queues::default();
        for p in [Priority::Idle, Priority::Normal, Priority::Urgent] {
            q.push(stamped(p, 0));
        }
        assert_eq!(q.depth(false), 2);
        assert_eq!(q.depth(true), 3);
        let order: Vec<_> = q.drain().iter().map(Item::priority).collect();
        assert_eq!(order, Priority::ALL);
        assert!(q.all_empty());
    }
}
