//! Why a VM stopped, and the one-shot signal that carries it to whoever waits.

use std::fmt;
use std::sync::{Condvar, Mutex};

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
        }
    }
}

/// A one-shot, many-reporter signal: vCPUs and devices report, the VM's owner waits.
#[derive(Default)]
pub struct ExitSignal {
    reason: Mutex<Option<ExitReason>>,
    changed: Condvar,
}

impl ExitSignal {
    /// Records `reason` unless a reason was already recorded; returns whether it was.
    pub fn report(&self, reason: ExitReason) -> bool {
        let mut slot = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_some() {
            return false;
        }
        *slot = Some(reason);
        self.changed.notify_all();
        true
    }

    /// Whether a reason has been recorded.
    pub fn is_reported(&self) -> bool {
        self.reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// Blocks until a reason is recorded and returns it.
    pub fn wait(&self) -> ExitReason {
        let slot = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        let slot = self
            .changed
            .wait_while(slot, |r| r.is_none())
            .unwrap_or_else(|p| p.into_inner());
        slot.clone().expect("wait_while returned without a reason")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn first_reason_wins_and_wakes_the_waiter() {
        let sig = Arc::new(ExitSignal::default());
        let waiter = {
            let sig = sig.clone();
            std::thread::spawn(move || sig.wait())
        };
        assert!(sig.report(ExitReason::Guest(3)));
        assert!(!sig.report(ExitReason::Host("late".into())));
        assert_eq!(waiter.join().unwrap(), ExitReason::Guest(3));
        assert_eq!(ExitReason::Guest(0x103).exit_code(), 3);
    }
}
