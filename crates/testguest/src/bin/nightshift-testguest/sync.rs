//! A value published once by the BSP and read by the APs.

use core::cell::UnsafeCell;
use core::mem::MaybeUninit;
use core::sync::atomic::{AtomicU8, Ordering};

const EMPTY: u8 = 0;
const WRITING: u8 = 1;
const READY: u8 = 2;

/// Set at most once; readable from any CPU afterwards.
pub struct Published<T> {
    state: AtomicU8,
    value: UnsafeCell<MaybeUninit<T>>,
}

// SAFETY: the value is written once, before `state` becomes READY (Release), and only read
// after observing READY (Acquire); it is shared by reference afterwards, hence `T: Sync`.
unsafe impl<T: Sync + Send> Sync for Published<T> {}

impl<T> Published<T> {
    /// Nothing published yet.
    pub const fn new() -> Self {
        Self {
            state: AtomicU8::new(EMPTY),
            value: UnsafeCell::new(MaybeUninit::uninit()),
        }
    }

    /// Publishes `value` and returns a reference to it; returns it back if something was
    /// published already.
    pub fn publish(&self, value: T) -> Result<&T, T> {
        if self
            .state
            .compare_exchange(EMPTY, WRITING, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return Err(value);
        }
        // SAFETY: the EMPTY → WRITING transition makes this the only writer, and readers
        // only look at the value once the state is READY.
        let value = unsafe { (*self.value.get()).write(value) };
        self.state.store(READY, Ordering::Release);
        Ok(value)
    }

    /// The published value, if any.
    pub fn get(&self) -> Option<&T> {
        if self.state.load(Ordering::Acquire) == READY {
            // SAFETY: READY is set only after the value was fully written, and it is never
            // written again.
            Some(unsafe { (*self.value.get()).assume_init_ref() })
        } else {
            None
        }
    }
}
