//! The opt-in CPU footprint cap: a counting semaphore over the threads that
//! run engine work outside executors.

use crate::sync::{AtomicUsize, Ordering};

/// At most `limit` holders at once; no limit costs no atomics.
pub(crate) struct Cap {
    limit: Option<usize>,
    running: AtomicUsize,
}

impl Cap {
    pub(crate) fn new(limit: Option<usize>) -> Self {
        Cap {
            limit,
            running: AtomicUsize::new(0),
        }
    }

    /// Takes a slot if one is free (always, without a limit).
    pub(crate) fn try_acquire(&self) -> bool {
        let Some(limit) = self.limit else {
            return true;
        };
        let mut cur = self.running.load(Ordering::SeqCst);
        while cur < limit {
            match self.running.compare_exchange_weak(
                cur,
                cur + 1,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => return true,
                Err(now) => cur = now,
            }
        }
        false
    }

    /// Gives a slot back. Returns whether the cap was full before, i.e.
    /// whether someone may have been refused a slot and should be woken.
    pub(crate) fn release(&self) -> bool {
        match self.limit {
            Some(limit) => self.running.fetch_sub(1, Ordering::SeqCst) == limit,
            None => false,
        }
    }

    /// Whether a slot is free right now.
    #[inline]
    pub(crate) fn available(&self) -> bool {
        match self.limit {
            Some(limit) => self.running.load(Ordering::SeqCst) < limit,
            None => true,
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::Cap;

    #[test]
    fn a_cap_admits_at_most_its_limit() {
        let cap = Cap::new(Some(2));
        assert!(cap.try_acquire() && cap.try_acquire());
        assert!(!cap.try_acquire());
        assert!(!cap.available());
        assert!(cap.release(), "releasing from full must say so");
        assert!(!cap.release());
        assert!(cap.available());
    }

    #[test]
    fn no_cap_admits_everyone() {
        let cap = Cap::new(None);
        assert!((0..100).all(|_| cap.try_acquire()));
        assert!(!cap.release());
    }
}
