//! Kicking a vCPU out of `KVM_RUN`: a real-time signal to its thread.
//!
//! The signal handler sets `kvm_run.immediate_exit` for the thread it lands
//! on. That closes the race a bare signal has: a kick that arrives after the
//! vCPU thread last looked for requests but before it entered `KVM_RUN` would
//! otherwise be lost, and the vCPU could sleep in a guest HLT with work
//! pending. With `immediate_exit` set, that `KVM_RUN` returns `EINTR` at once.
//! KVM keeps a halted vCPU halted across such an exit (x86.c `vcpu_block`), so
//! kicking costs the guest nothing but the delay.

use std::cell::Cell;
use std::ptr;
use std::sync::{Mutex, Once};

use kvm_bindings::kvm_run;
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

thread_local! {
    /// The `kvm_run` area of the vCPU this thread runs, or null.
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(ptr::null_mut()) };
}

/// The signal used for kicks.
pub fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

extern "C" fn handle_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let run = KVM_RUN.with(Cell::get);
    if !run.is_null() {
        // SAFETY: `run` was set by `bind_thread` on this thread to the vCPU's
        // mmap'd `kvm_run`, which outlives the binding (see `ThreadBinding`).
        // A volatile byte store is async-signal-safe.
        unsafe { ptr::addr_of_mut!((*run).immediate_exit).write_volatile(1) };
    }
}

/// Installs the kick handler (once per process).
pub fn install_handler() -> Result<(), vmm_sys_util::errno::Error> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| result = register_signal_handler(kick_signal(), handle_kick));
    result
}

/// While alive, kicks that land on this thread set `immediate_exit` in `run`.
pub struct ThreadBinding(());

impl ThreadBinding {
    /// Binds the calling thread to `run`, which must stay mapped until the
    /// binding is dropped (the binding is made and dropped by the thread that
    /// owns the vCPU fd).
    pub fn bind(run: *mut kvm_run) -> Self {
        KVM_RUN.with(|c| c.set(run));
        ThreadBinding(())
    }
}

impl Drop for ThreadBinding {
    fn drop(&mut self) {
        KVM_RUN.with(|c| c.set(ptr::null_mut()));
    }
}

/// Sends kicks to one vCPU thread, safely from any thread, for as long as the
/// thread lives; kicks after it has finished are no-ops.
#[derive(Debug)]
pub struct Kicker {
    /// The thread, or None once it has finished. The lock is held while
    /// signalling so the thread cannot finish (making the handle dangle) meanwhile.
    thread: Mutex<Option<libc::pthread_t>>,
}

impl Kicker {
    /// A kicker for the calling thread.
    pub fn for_current_thread() -> Self {
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        Kicker {
            thread: Mutex::new(Some(me)),
        }
    }

    /// Signals the thread; returns whether a signal was sent.
    pub fn kick(&self) -> bool {
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner());
        let Some(handle) = *thread else {
            return false;
        };
        // SAFETY: `handle` names a live thread: it clears the slot (under this
        // lock) before it finishes. The signal has a handler installed.
        let ret = unsafe { libc::pthread_kill(handle, kick_signal()) };
        ret == 0
    }

    /// Called by the thread itself before it finishes.
    pub fn thread_exiting(&self) {
        *self.thread.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn kick_sets_immediate_exit_on_the_bound_thread_only() {
        install_handler().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            let mut run = Box::new(kvm_run::default());
            let _binding = ThreadBinding::bind(&mut *run);
            let kicker = Arc::new(Kicker::for_current_thread());
            tx.send(kicker.clone()).unwrap();
            done_rx.recv().unwrap();
            kicker.thread_exiting();
            // SAFETY: plain read of our own struct.
            unsafe { ptr::addr_of!(run.immediate_exit).read_volatile() }
        });
        let kicker = rx.recv().unwrap();
        assert!(kicker.kick());
        done_tx.send(()).unwrap();
        assert_eq!(t.join().unwrap(), 1);
        assert!(!kicker.kick(), "a finished thread must not be signalled");
    }
}
