//! A vCPU thread's own wake-up call: a POSIX timer that sends the kick signal
//! to this thread only.
//!
//! When a guest notifies a queue on an MMIO exit, it will usually halt soon
//! to wait for the answer. Rather than have another thread poll for that (a
//! thread that, on a host whose CPUs all run vCPUs, pre-empts one), the vCPU
//! thread arms this timer and re-enters the guest. When it fires, `KVM_RUN`
//! returns `EINTR` on this thread: if the guest has halted meanwhile, the
//! thread runs the work; if not, it re-arms and goes back in.
//!
//! Under the userspace irqchip the same kind of timer carries each vCPU's
//! local APIC timer deadline (`user_irq`): it takes a running guest out of
//! `KVM_RUN` to be given its tick.

use std::io;
use std::time::Duration;

use super::kick::kick_signal;

/// A one-shot timer that kicks the thread that created it.
#[derive(Debug)]
pub struct IdleTimer {
    timer: libc::timer_t,
}

// SAFETY: a timer_t is a process-wide kernel timer id, valid on any thread;
// the timer keeps signalling the thread named at creation wherever it is used.
unsafe impl Send for IdleTimer {}

impl IdleTimer {
    /// A timer for the calling thread.
    pub fn for_current_thread() -> io::Result<Self> {
        // SAFETY: sigevent is plain data; all-zero is a valid starting value.
        let mut sev: libc::sigevent = unsafe { std::mem::zeroed() };
        sev.sigev_notify = libc::SIGEV_THREAD_ID;
        sev.sigev_signo = kick_signal();
        // SAFETY: gettid has no preconditions.
        sev.sigev_notify_thread_id = unsafe { libc::gettid() };
        let mut timer: libc::timer_t = std::ptr::null_mut();
        // SAFETY: `sev` and `timer` are valid for the call; the kernel checks
        // the thread id (this thread) and the signal (handled, see `kick`).
        let ret = unsafe { libc::timer_create(libc::CLOCK_MONOTONIC, &mut sev, &mut timer) };
        if ret != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(IdleTimer { timer })
    }

    /// Fires once, `after` from now (re-arming replaces a pending expiry).
    /// A zero `after` would disarm the timer, so it is raised to 1 ns.
    pub fn arm(&self, after: Duration) {
        self.set(after.max(Duration::from_nanos(1)));
    }

    /// Stops a pending expiry.
    pub fn disarm(&self) {
        self.set(Duration::ZERO);
    }

    fn set(&self, after: Duration) {
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: after.as_secs() as libc::time_t,
                tv_nsec: after.subsec_nanos().into(),
            },
        };
        // SAFETY: `self.timer` is a live timer of this process; `spec` is valid.
        let ret = unsafe { libc::timer_settime(self.timer, 0, &spec, std::ptr::null_mut()) };
        if ret != 0 {
            tracing::warn!("idle timer: {}", io::Error::last_os_error());
        }
    }
}

impl Drop for IdleTimer {
    fn drop(&mut self) {
        // SAFETY: the timer was created by `for_current_thread` and is deleted once.
        unsafe { libc::timer_delete(self.timer) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vcpu::kick::{install_handler, ThreadBinding};
    use kvm_bindings::kvm_run;

    #[test]
    fn the_timer_kicks_its_own_thread() {
        install_handler().unwrap();
        let mut run = Box::new(kvm_run::default());
        // SAFETY: `run` outlives the binding, dropped on this thread first.
        let _binding = unsafe { ThreadBinding::bind(&mut *run) };
        let timer = IdleTimer::for_current_thread().unwrap();
        timer.arm(Duration::from_millis(1));
        let start = std::time::Instant::now();
        // SAFETY: plain reads of our own struct, written by the signal handler.
        while unsafe { std::ptr::addr_of!(run.immediate_exit).read_volatile() } == 0 {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "the timer never fired"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}
