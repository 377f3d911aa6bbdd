//! The engine's queues: one FIFO per priority class, each knowing the age
//! of its oldest item.
//!
//! `urgent` and `normal`, the hot classes, use a lock-free queue; their
//! oldest-item age is a cheap conservative estimate (it may read older,
//! never younger, so a deadline fires early rather than late, and only a
//! worker that would help anyway is woken). `idle` work (maintenance, low
//! rate) sits in a locked deque whose front can be inspected, so an `idle`
//! item goes to a worker only once *it* is past its deadline.

use crate::clock::Nanos;
use crate::item::Item;
use crate::priority::{ByPriority, Priority};
use crate::sync::{lock, AtomicUsize, Mutex, Ordering::SeqCst};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};

/// A lock-free FIFO whose oldest stamp is estimated.
#[derive(Default)]
struct Fast {
    #[cfg(not(loom))]
    items: crossbeam_queue::SegQueue<Item>,
    /// Under loom, a deque under a loom mutex: the lock-free queue is not
    /// loom-aware, so the protocol around it is what gets checked.
    #[cfg(loom)]
    items: Mutex<VecDeque<Item>>,
    /// A lower bound of the oldest queued item's stamp: the stamp of the
    /// last item popped, or of an item pushed into an empty queue. Races
    /// only lower it. Not part of any synchronisation protocol, hence a
    /// `std` atomic even under loom.
    oldest: AtomicU64,
}

impl Fast {
    #[cfg(not(loom))]
    fn raw_push(&self, item: Item) {
        self.items.push(item);
    }

    #[cfg(not(loom))]
    fn raw_pop(&self) -> Option<Item> {
        self.items.pop()
    }

    #[cfg(not(loom))]
    fn len(&self) -> usize {
        self.items.len()
    }

    #[cfg(not(loom))]
    fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    #[cfg(loom)]
    fn raw_push(&self, item: Item) {
        lock(&self.items).push_back(item);
    }

    #[cfg(loom)]
    fn raw_pop(&self) -> Option<Item> {
        lock(&self.items).pop_front()
    }

    #[cfg(loom)]
    fn len(&self) -> usize {
        lock(&self.items).len()
    }

    #[cfg(loom)]
    fn is_empty(&self) -> bool {
        lock(&self.items).is_empty()
    }

    fn push(&self, item: Item) {
        if self.is_empty() {
            self.raise_oldest(item.stamp);
        }
        self.raw_push(item);
    }

    fn pop(&self) -> Option<Item> {
        let item = self.raw_pop()?;
        self.raise_oldest(item.stamp);
        Some(item)
    }

    /// Non-atomic max: a lost race leaves a lower (conservative) value.
    fn raise_oldest(&self, stamp: Nanos) {
        if stamp > self.oldest.load(Ordering::Relaxed) {
            self.oldest.store(stamp, Ordering::Relaxed);
        }
    }

    fn oldest(&self) -> Option<Nanos> {
        (!self.is_empty()).then(|| self.oldest.load(Ordering::Relaxed))
    }
}

/// A locked FIFO whose front can be inspected.
#[derive(Default)]
struct Exact {
    items: Mutex<VecDeque<Item>>,
    /// `items.len()`, readable without the lock (written under it).
    len: AtomicUsize,
}

impl Exact {
    fn push(&self, item: Item) {
        let mut q = lock(&self.items);
        q.push_back(item);
        self.len.store(q.len(), SeqCst);
    }

    fn pop_if(&self, due: impl FnOnce(Nanos) -> bool) -> Option<Item> {
        if self.len() == 0 {
            return None;
        }
        let mut q = lock(&self.items);
        let item = due(q.front()?.stamp).then(|| q.pop_front()).flatten();
        self.len.store(q.len(), SeqCst);
        item
    }

    fn len(&self) -> usize {
        self.len.load(SeqCst)
    }

    fn oldest(&self) -> Option<Nanos> {
        lock(&self.items).front().map(|i| i.stamp)
    }
}

/// The queues of all three classes.
#[derive(Default)]
pub(crate) struct Queues {
    urgent: Fast,
    normal: Fast,
    idle: Exact,
}

impl Queues {
    fn fast(&self, p: Priority) -> &Fast {
        match p {
            Priority::Urgent => &self.urgent,
            _ => &self.normal,
        }
    }

    /// Queues `item` at the back of its class; its stamp must be set.
    pub(crate) fn push(&self, item: Item) {
        match item.priority() {
            Priority::Idle => self.idle.push(item),
            p => self.fast(p).push(item),
        }
    }

    /// Takes the oldest item of class `p`.
    pub(crate) fn pop(&self, p: Priority) -> Option<Item> {
        self.pop_if(p, |_| true)
    }

    /// Takes the oldest item of class `p` if `due(its stamp)` holds (for
    /// the hot classes, the estimated stamp).
    pub(crate) fn pop_if(&self, p: Priority, due: impl FnOnce(Nanos) -> bool) -> Option<Item> {
        match p {
            Priority::Idle => self.idle.pop_if(due),
            p => {
                let fifo = self.fast(p);
                due(fifo.oldest()?).then(|| fifo.pop()).flatten()
            }
        }
    }

    /// Whether class `p` has nothing queued.
    pub(crate) fn is_empty(&self, p: Priority) -> bool {
        match p {
            Priority::Idle => self.idle.len() == 0,
            p => self.fast(p).is_empty(),
        }
    }

    /// Whether no class has anything queued.
    pub(crate) fn all_empty(&self) -> bool {
        Priority::ALL.into_iter().all(|p| self.is_empty(p))
    }

    /// The stamp of class `p`'s oldest item, if any (an estimate that may
    /// read older for the hot classes).
    pub(crate) fn oldest(&self, p: Priority) -> Option<Nanos> {
        match p {
            Priority::Idle => self.idle.oldest(),
            p => self.fast(p).oldest(),
        }
    }

    /// Items queued in class `p`.
    pub(crate) fn len(&self, p: Priority) -> usize {
        match p {
            Priority::Idle => self.idle.len(),
            p => self.fast(p).len(),
        }
    }

    /// Items queued in each class.
    pub(crate) fn lens(&self) -> ByPriority<usize> {
        ByPriority::from_fn(|p| self.len(p))
    }

    /// Items that want hands now: `urgent` plus `normal`, plus `idle` if
    /// `with_idle`.
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
    fn hot_ages_never_read_younger_than_the_truth() {
        let q = Queues::default();
        assert_eq!(q.oldest(Priority::Normal), None);
        q.push(stamped(Priority::Normal, 10));
        q.push(stamped(Priority::Normal, 20));
        assert_eq!(q.oldest(Priority::Normal), Some(10));
        q.pop(Priority::Normal);
        // The estimate may lag (10) but never exceeds the truth (20).
        assert!(q.oldest(Priority::Normal).unwrap() <= 20);
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
