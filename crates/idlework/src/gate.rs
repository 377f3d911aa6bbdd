//! The gate that executor runs, inline runs and lane submissions pass
//! through, so shutdown knows when none is still in flight. A plain queued
//! submission does not pass it: the queue's own lock refuses it after
//! shutdown (`Queues::close`), which costs the hot path nothing extra.

use crate::sync::{thread, AtomicUsize, Ordering};

/// Low bit: closed. The rest: threads inside, times two.
const CLOSED: usize = 1;
const ONE: usize = 2;

/// Counts threads inside the engine and can be closed to new ones.
#[derive(Default)]
pub(crate) struct Gate {
    state: AtomicUsize,
}

/// Proof of being inside the gate; leaving is dropping it.
pub(crate) struct Pass<'a>(&'a Gate);

impl Gate {
    /// Enters, unless the gate is closed.
    pub(crate) fn enter(&self) -> Option<Pass<'_>> {
        let prev = self.state.fetch_add(ONE, Ordering::SeqCst);
        if prev & CLOSED != 0 {
            self.state.fetch_sub(ONE, Ordering::SeqCst);
            return None;
        }
        Some(Pass(self))
    }

    /// Closes the gate and waits until every thread inside has left. After
    /// this returns nobody is or will be inside.
    pub(crate) fn close(&self) {
        self.state.fetch_or(CLOSED, Ordering::SeqCst);
        while self.state.load(Ordering::SeqCst) >= ONE {
            thread::yield_now();
        }
    }
}

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        self.0.state.fetch_sub(ONE, Ordering::SeqCst);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::Gate;

    #[test]
    fn a_closed_gate_refuses_and_close_waits_for_nobody_inside() {
        let gate = Gate::default();
        let pass = gate.enter();
        assert!(pass.is_some());
        drop(pass);
        gate.close();
        assert!(gate.enter().is_none());
    }
}
