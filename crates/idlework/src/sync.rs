//! The synchronisation primitives the engine is built from.
//!
//! Normal builds use `std`; `--cfg loom` builds swap in loom's model-checked
//! versions so the same code is explored under every interleaving. Statistics
//! counters are not part of any synchronisation protocol and always use `std`
//! atomics (see [`stat`]).

#[cfg(loom)]
pub(crate) use loom::{
    sync::{
        atomic::{fence, AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering},
        Arc, Condvar, Mutex, MutexGuard, RwLock,
    },
    thread,
};

#[cfg(not(loom))]
pub(crate) use std::{
    sync::{
        atomic::{fence, AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering},
        Arc, Condvar, Mutex, MutexGuard, RwLock,
    },
    thread,
};

use std::sync::{LockResult, PoisonError};

/// Locks a mutex, ignoring poisoning.
///
/// The engine never panics while holding a lock (item panics are caught
/// before they reach engine code), so a poisoned lock still guards
/// consistent data.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    unpoison(m.lock())
}

/// Unwraps a lock result, ignoring poisoning (see [`lock`]).
pub(crate) fn unpoison<G>(r: LockResult<G>) -> G {
    r.unwrap_or_else(PoisonError::into_inner)
}

/// A mutex that a long-term holder can briefly hand to a waiter
/// ([`bump`]): a runner holds its histogram's lock across a run of items
/// and bumps it now and then, so a statistics snapshot never starves.
#[cfg(not(loom))]
pub(crate) use parking_lot::{Mutex as FairMutex, MutexGuard as FairGuard};

/// Lets a thread waiting for `guard`'s mutex have it, then takes it back.
#[cfg(not(loom))]
pub(crate) fn bump<T>(guard: &mut FairGuard<'_, T>) {
    FairGuard::bump(guard);
}

#[cfg(loom)]
pub(crate) use loom_fair::{bump, FairGuard, FairMutex};

/// Under loom: a plain loom mutex; bumping is a no-op.
#[cfg(loom)]
mod loom_fair {
    pub(crate) struct FairMutex<T>(loom::sync::Mutex<T>);
    pub(crate) type FairGuard<'a, T> = loom::sync::MutexGuard<'a, T>;

    impl<T> FairMutex<T> {
        pub(crate) fn new(t: T) -> Self {
            FairMutex(loom::sync::Mutex::new(t))
        }

        pub(crate) fn lock(&self) -> FairGuard<'_, T> {
            super::lock(&self.0)
        }
    }

    pub(crate) fn bump<T>(_guard: &mut FairGuard<'_, T>) {}
}

/// Relaxed counters for statistics: always `std` atomics, even under loom,
/// so they add no states to the model checker's search.
pub(crate) mod stat {
    use std::sync::atomic::{AtomicU64, Ordering};

    /// A statistics counter.
    #[derive(Debug, Default)]
    pub(crate) struct Counter(AtomicU64);

    impl Counter {
        /// Adds `n`.
        pub(crate) fn add(&self, n: u64) {
            if n != 0 {
                self.0.fetch_add(n, Ordering::Relaxed);
            }
        }

        /// Reads the current value.
        pub(crate) fn get(&self) -> u64 {
            self.0.load(Ordering::Relaxed)
        }
    }
}
