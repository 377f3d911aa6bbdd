//! Why a VM stopped, and the one-shot signal that carries it to whoever waits.
//!
//! The signal is an eventfd, not a condition variable, because one reporter
//! is a signal handler: a thread that makes a system call its seccomp filter
//! forbids gets SIGSYS, and its handler may only store atomics and write(2)
//! (see [`crate::seccomp`]). [`ExitSignal::report_trap`] is that path.

use std::fmt;
use std::sync::atomic::{AtomicI32, AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;

use vmm_sys_util::eventfd::EventFd;

/// The reason a VM ended. The first reason reported wins.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest wrote this status to the exit port.
    Guest(u32),
    /// A vCPU shut down (triple fault, or a shutdown request).
    Shutdown {
        /// Which vCPU.
        vcpu: u8,
        /// Its registers at the time, for the report.
        regs: String,
    },
    /// KVM could not run a vCPU on (emulation failure and the like).
    InternalError {
        /// Which vCPU.
        vcpu: u8,
        /// KVM's suberror and data, and the registers.
        detail: String,
    },
    /// The host side failed: an ioctl error, a thread that could not start.
    Host(String),
    /// A VMM thread panicked (a VMM bug): the VM is ended rather than left
    /// running with a dead thread.
    Panic {
        /// The thread's name (`vcpu0`, `ns-notify`, `ns-work1`, `main`).
        thread: String,
        /// The panic message and where it was raised.
        message: String,
    },
    /// A VMM thread made a system call its seccomp filter does not allow.
    Seccomp {
        /// The thread's name.
        thread: String,
        /// Its kernel thread id.
        tid: i32,
        /// The system call number (x86-64; `ausyscall NUMBER` names it).
        syscall: i64,
    },
}

impl ExitReason {
    /// The process exit status this reason maps to.
    ///
    /// A guest exit gives the guest's status (low 8 bits). Every failure gives a
    /// non-zero status distinct from the common guest ones.
    pub fn exit_code(&self) -> i32 {
        match self {
            ExitReason::Guest(status) => (*status & 0xff) as i32,
            ExitReason::Shutdown { .. } => 125,
            ExitReason::InternalError { .. } => 126,
            ExitReason::Host(_) => 127,
            ExitReason::Panic { .. } => 124,
            // As a shell shows a process killed by SIGSYS.
            ExitReason::Seccomp { .. } => 128 + libc::SIGSYS,
        }
    }
}

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitReason::Guest(s) => write!(f, "guest requested exit with status {s}"),
            ExitReason::Shutdown { vcpu, regs } => {
                write!(
                    f,
                    "vCPU {vcpu} shut down (triple fault or shutdown request); {regs}"
                )
            }
            ExitReason::InternalError { vcpu, detail } => {
                write!(f, "KVM internal error on vCPU {vcpu}: {detail}")
            }
            ExitReason::Host(e) => write!(f, "host error: {e}"),
            ExitReason::Panic { thread, message } => {
                write!(f, "VMM thread {thread} panicked: {message}")
            }
            ExitReason::Seccomp {
                thread,
                tid,
                syscall,
            } => write!(
                f,
                "VMM thread {thread} (tid {tid}) made system call {syscall}, which its \
                 seccomp filter forbids (`ausyscall {syscall}` names it)"
            ),
        }
    }
}

/// A one-shot, many-reporter signal: vCPUs and devices report, the VM's owner waits.
pub struct ExitSignal {
    reason: Mutex<Option<ExitReason>>,
    /// Written once per report; the waiter blocks reading it.
    wake: EventFd,
    trap: TrapRecord,
}

/// What a SIGSYS handler leaves for the waiter: plain atomics.
struct TrapRecord {
    /// The system call number, or -1.
    syscall: AtomicI64,
    tid: AtomicI32,
    /// The thread's name, NUL-padded, 16 bytes.
    name: [AtomicU64; 2],
}

impl ExitSignal {
    /// A signal with nothing reported.
    pub fn new() -> std::io::Result<Self> {
        Ok(ExitSignal {
            reason: Mutex::new(None),
            wake: EventFd::new(0)?,
            trap: TrapRecord {
                syscall: AtomicI64::new(-1),
                tid: AtomicI32::new(0),
                name: [AtomicU64::new(0), AtomicU64::new(0)],
            },
        })
    }

    /// Records `reason` unless a reason was already recorded; returns whether it was.
    pub fn report(&self, reason: ExitReason) -> bool {
        let mut slot = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_some() || self.take_trap(&mut slot) {
            return false;
        }
        *slot = Some(reason);
        drop(slot);
        self.wake_waiter();
        true
    }

    /// Records a forbidden system call, from a SIGSYS handler: only atomic
    /// stores and one write(2), both async-signal-safe. The first trap wins.
    pub(crate) fn report_trap(&self, syscall: i64, tid: i32, name: [u8; 16]) {
        let t = &self.trap;
        if t.syscall
            .compare_exchange(-1, syscall, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return;
        }
        t.tid.store(tid, Ordering::Release);
        for (slot, chunk) in t.name.iter().zip(name.chunks_exact(8)) {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            slot.store(u64::from_ne_bytes(word), Ordering::Release);
        }
        self.wake_waiter();
    }

    fn wake_waiter(&self) {
        // Fails only if the counter would overflow: a wake-up is pending anyway.
        let _ = self.wake.write(1);
    }

    /// Moves a recorded trap into `slot` if it is empty; returns whether it did.
    fn take_trap(&self, slot: &mut Option<ExitReason>) -> bool {
        let t = &self.trap;
        let syscall = t.syscall.load(Ordering::Acquire);
        if syscall < 0 || slot.is_some() {
            return false;
        }
        let mut name = Vec::with_capacity(16);
        for w in &t.name {
            name.extend_from_slice(&w.load(Ordering::Acquire).to_ne_bytes());
        }
        let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
        *slot = Some(ExitReason::Seccomp {
            thread: String::from_utf8_lossy(&name[..end]).into_owned(),
            tid: t.tid.load(Ordering::Acquire),
            syscall,
        });
        true
    }

    fn current(&self) -> Option<ExitReason> {
        let mut slot = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        self.take_trap(&mut slot);
        slot.clone()
    }

    /// Whether a reason has been recorded.
    pub fn is_reported(&self) -> bool {
        self.current().is_some()
    }

    /// Blocks until a reason is recorded and returns it. One thread waits.
    pub fn wait(&self) -> ExitReason {
        loop {
            if let Some(reason) = self.current() {
                return reason;
            }
            // Blocks until a report; EINTR and spurious wake-ups just look again.
            let _ = self.wake.read();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn first_reason_wins_and_wakes_the_waiter() {
        let sig = Arc::new(ExitSignal::new().unwrap());
        let waiter = {
            let sig = sig.clone();
            std::thread::spawn(move || sig.wait())
        };
        assert!(sig.report(ExitReason::Guest(3)));
        assert!(!sig.report(ExitReason::Host("late".into())));
        assert_eq!(waiter.join().unwrap(), ExitReason::Guest(3));
        assert_eq!(ExitReason::Guest(0x103).exit_code(), 3);
    }

    #[test]
    fn a_trap_wakes_the_waiter_with_the_thread_and_syscall() {
        let sig = Arc::new(ExitSignal::new().unwrap());
        let waiter = {
            let sig = sig.clone();
            std::thread::spawn(move || sig.wait())
        };
        let mut name = [0u8; 16];
        name[..5].copy_from_slice(b"vcpu1");
        sig.report_trap(103, 42, name);
        sig.report_trap(1, 1, [0; 16]);
        let want = ExitReason::Seccomp {
            thread: "vcpu1".into(),
            tid: 42,
            syscall: 103,
        };
        assert_eq!(waiter.join().unwrap(), want);
        assert!(!sig.report(ExitReason::Guest(0)), "the trap came first");
        assert_eq!(want.exit_code(), 159);
    }
}
