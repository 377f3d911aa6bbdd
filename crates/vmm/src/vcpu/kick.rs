//! Kicking a vCPU out of `KVM_RUN`: a real-time signal to its thread.
//!
//! The signal handler sets `kvm_run.immediate_exit` for the thread it lands
//! on. That closes the race a bare signal has: a kick that arrives after the
//! vCPU thread last looked for requests but before it entered `KVM_RUN` would
//! otherwise be lost, and the vCPU could sleep in a guest HLT with work
//! pending. With `immediate_exit` set, that `KVM_RUN` returns `EINTR` at once.
//! KVM keeps a halted vCPU halted across such an exit (x86.c `vcpu_block`), so
//! kicking costs the guest nothing but the delay.
//!
//! The handler is installed with `SA_RESTART`. Device work runs on vCPU
//! threads between guest runs, and a kick may land while an item is inside a
//! system call: with `SA_RESTART` a restartable call (a futex wait, a blocking
//! read, fdatasync on a file system that can be interrupted) is resumed by
//! the kernel instead of failing with `EINTR` into code that may not retry.
//! `KVM_RUN` still returns `EINTR` on a kick: KVM ends the run with `-EINTR`
//! itself when a signal is pending (`kvm_handle_signal_exit`), never with
//! `-ERESTARTSYS`, so `SA_RESTART` cannot restart it; and `immediate_exit`
//! makes the next `KVM_RUN` return `EINTR` at once for a kick that landed
//! outside it. Calls that are never restarted (epoll_wait, nanosleep) still
//! see `EINTR` and retry.

use std::cell::Cell;
use std::ptr;
use std::sync::{Mutex, OnceLock};

use kvm_bindings::kvm_run;
use vmm_sys_util::signal::SIGRTMIN;

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
        // SAFETY: `run` was set by `ThreadBinding::bind` on this thread, whose
        // contract keeps it valid until the binding clears it.
        // A volatile byte store is async-signal-safe.
        unsafe { ptr::addr_of_mut!((*run).immediate_exit).write_volatile(1) };
    }
}

/// Installs the kick handler (once per process). Every call returns the
/// first call's result: a failed installation is never reported as success.
pub fn install_handler() -> Result<(), vmm_sys_util::errno::Error> {
    static RESULT: OnceLock<Result<(), i32>> = OnceLock::new();
    let result = RESULT.get_or_init(|| {
        // SAFETY: sigaction is plain data; all-zero is a valid start.
        let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
        act.sa_sigaction = handle_kick as *const () as usize;
        act.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
        // SAFETY: a valid action for a real-time signal; the handler only
        // does a volatile byte store (async-signal-safe).
        let ret = unsafe { libc::sigaction(kick_signal(), &act, ptr::null_mut()) };
        if ret == 0 {
            Ok(())
        } else {
            Err(vmm_sys_util::errno::Error::last().errno())
        }
    });
    result.map_err(vmm_sys_util::errno::Error::new)
}

/// While alive, kicks that land on this thread set `immediate_exit` in `run`.
pub struct ThreadBinding(std::marker::PhantomData<*mut kvm_run>);

impl ThreadBinding {
    /// Binds the calling thread to `run`: until the binding is dropped, the
    /// kick handler writes `run.immediate_exit` when a kick lands here.
    ///
    /// # Safety
    /// `run` must point to a `kvm_run` (the vCPU's mmap'd run area, or any
    /// live `kvm_run`) that stays valid and mapped until the returned binding
    /// is dropped, and the binding must be dropped on the thread that made it
    /// (it is `!Send` for that reason).
    pub unsafe fn bind(run: *mut kvm_run) -> Self {
        KVM_RUN.with(|c| c.set(run));
        ThreadBinding(std::marker::PhantomData)
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
            // SAFETY: `run` outlives the binding, dropped on this thread first.
            let _binding = unsafe { ThreadBinding::bind(&mut *run) };
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

    #[test]
    fn the_handler_restarts_interrupted_calls_and_install_is_idempotent() {
        install_handler().unwrap();
        install_handler().unwrap();
        // SAFETY: reads the current action of the kick signal into `act`.
        let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: a null new action only queries.
        assert_eq!(
            unsafe { libc::sigaction(kick_signal(), ptr::null(), &mut act) },
            0
        );
        assert_ne!(act.sa_flags & libc::SA_RESTART, 0);
        assert_eq!(act.sa_sigaction, handle_kick as *const () as usize);
    }
}
