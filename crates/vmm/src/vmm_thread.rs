//! Every thread a VM runs on is bound to that VM: a panic on it ends the VM
//! with [`ExitReason::Panic`] naming the thread, a forbidden system call ends
//! it with [`ExitReason::Seccomp`] (see [`crate::seccomp`]), and the VM's
//! owner then stops the rest within a bounded time. A dead thread is never
//! left behind a VM that waits for it. The model is Cloud Hypervisor's
//! `thread_helper`, where a thread's panic becomes an exit event.
//!
//! Binding is a thread-local set when a VMM thread starts ([`ThreadPolicy::bind`]).
//! The engine's workers bind themselves in idlework's thread-start hook, for
//! the rest of their life ([`ThreadPolicy::bind_for_thread_life`]), so every
//! thread knows its own VM even when one process runs several.
//!
//! This also hosts the test-only fault seam, [`Fault`]: read once when a VM
//! is built, fired once when the thread it names is confined, never looked at
//! on a hot path.

use std::cell::RefCell;
use std::panic::PanicHookInfo;
use std::str::FromStr;
use std::sync::{Arc, Once};

use crate::exit::{ExitReason, ExitSignal};
use crate::seccomp::{self, OnTrap, SeccompError, SeccompMode, ThreadClass, TrapTarget};

/// The environment variable that injects a [`Fault`] (tests only).
pub const FAULT_ENV: &str = "NIGHTSHIFT_TEST_FAULT";

/// A fault injected for tests, `KIND@THREAD`: `panic@vcpu0`,
/// `syscall@ns-notify`, `panic@worker`, `syscall@main`. `KIND` is `panic` (the
/// thread panics) or `syscall` (it makes a system call no filter allows:
/// `syslog(SYSLOG_ACTION_SIZE_BUFFER)`, a harmless query). `THREAD` is a
/// thread name, or `worker` for whichever engine thread runs the VM's first
/// work item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fault {
    /// What happens.
    pub kind: FaultKind,
    /// Where.
    pub thread: String,
}

/// What an injected fault does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// `panic!`.
    Panic,
    /// A forbidden system call.
    Syscall,
}

impl FromStr for Fault {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (kind, thread) = s
            .split_once('@')
            .ok_or_else(|| format!("bad {FAULT_ENV} {s:?}: expected KIND@THREAD"))?;
        let kind = match kind {
            "panic" => FaultKind::Panic,
            "syscall" => FaultKind::Syscall,
            _ => return Err(format!("bad {FAULT_ENV} kind {kind:?}: panic or syscall")),
        };
        Ok(Fault {
            kind,
            thread: thread.to_owned(),
        })
    }
}

impl Fault {
    /// The fault the environment asks for, if any (read once per VM).
    pub fn from_env() -> Result<Option<Fault>, String> {
        match std::env::var(FAULT_ENV) {
            Ok(s) if !s.is_empty() => s.parse().map(Some),
            _ => Ok(None),
        }
    }

    /// Fires the fault on the calling thread.
    pub fn fire(&self) {
        match self.kind {
            FaultKind::Panic => panic!("injected fault ({FAULT_ENV}={}@{})", "panic", self.thread),
            FaultKind::Syscall => {
                // SAFETY: syslog(SYSLOG_ACTION_SIZE_BUFFER, NULL, 0) only
                // returns the kernel log's size; every filter refuses it.
                let ret =
                    unsafe { libc::syscall(libc::SYS_syslog, 10, std::ptr::null_mut::<u8>(), 0) };
                tracing::warn!("injected forbidden system call returned {ret} (not confined?)");
            }
        }
    }
}

/// How one VM's threads are bound and confined: shared by all of them.
#[derive(Clone)]
pub struct ThreadPolicy {
    exit: Arc<ExitSignal>,
    seccomp: SeccompMode,
    fault: Option<Arc<Fault>>,
}

impl ThreadPolicy {
    /// Threads that report to `exit`, filtered under `seccomp`, with an
    /// optional injected `fault`.
    pub fn new(exit: Arc<ExitSignal>, seccomp: SeccompMode, fault: Option<Fault>) -> Self {
        install_panic_hook();
        ThreadPolicy {
            exit,
            seccomp,
            fault: fault.map(Arc::new),
        }
    }

    /// The seccomp mode in force.
    pub fn seccomp(&self) -> SeccompMode {
        self.seccomp
    }

    /// Ends the VM with `reason` (unless it has ended already).
    pub fn report(&self, reason: ExitReason) {
        self.exit.report(reason);
    }

    /// The injected fault, if any.
    pub fn fault(&self) -> Option<&Fault> {
        self.fault.as_deref()
    }

    /// Binds the calling thread, named `name`, to the VM until the guard drops.
    pub fn bind(&self, name: &str) -> Binding {
        self.bind_as(name, OnTrap::Report)
    }

    /// Binds the thread that waits for the VM's end: a seccomp trap on it
    /// exits the process (nobody else would end the VM).
    pub fn bind_waiter(&self, name: &str) -> Binding {
        self.bind_as(name, OnTrap::ExitProcess)
    }

    /// Binds the calling thread until it exits, for threads whose code is
    /// not ours to wrap (the engine's workers, from its thread-start hook).
    /// A seccomp trap on such a thread exits the process, named: the thread
    /// cannot park as a vCPU does, since the engine's shutdown joins it.
    pub fn bind_for_thread_life(&self, name: &str) {
        let binding = self.bind_as(name, OnTrap::ExitProcess);
        LIFE_BINDING.with(|b| *b.borrow_mut() = Some(binding));
    }

    fn bind_as(&self, name: &str, on_trap: OnTrap) -> Binding {
        BOUND.with(|b| {
            *b.borrow_mut() = Some(Bound {
                exit: self.exit.clone(),
                name: name.to_owned(),
                confined: self.seccomp != SeccompMode::Off,
            })
        });
        Binding {
            _trap: TrapTarget::bind(&self.exit, name, on_trap),
        }
    }

    /// Confines the calling thread, named `name`, to `class`'s filter, then
    /// fires the injected fault if it names this thread.
    pub fn confine(&self, class: ThreadClass, name: &str) -> Result<(), SeccompError> {
        seccomp::confine_current_thread(class, self.seccomp)?;
        if let Some(f) = self.fault.as_deref().filter(|f| f.thread == name) {
            f.fire();
        }
        Ok(())
    }
}

/// While alive, the calling thread belongs to a VM.
pub struct Binding {
    _trap: TrapTarget,
}

impl Drop for Binding {
    fn drop(&mut self) {
        // `try_with`: the thread-local may already be gone at thread exit.
        let _ = BOUND.try_with(|b| b.borrow_mut().take());
    }
}

struct Bound {
    exit: Arc<ExitSignal>,
    name: String,
    /// Filtered: the default hook's backtrace (getcwd, open) would trap.
    confined: bool,
}

thread_local! {
    static BOUND: RefCell<Option<Bound>> = const { RefCell::new(None) };
    /// The binding of a thread bound for its whole life; dropped at its exit.
    static LIFE_BINDING: RefCell<Option<Binding>> = const { RefCell::new(None) };
}

/// Installs (once per process) a panic hook that ends the VM the panicking
/// thread belongs to. On a confined VMM thread it prints the panic itself
/// (no backtrace: the default hook's symbolizer opens files, which the filter
/// forbids; `--seccomp off` brings backtraces back); elsewhere the default
/// hook runs as usual.
fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| match report_panic(info) {
            Some((thread, true)) => eprintln!(
                "thread '{thread}' panicked: {} (no backtrace under seccomp)",
                panic_message(info)
            ),
            _ => previous(info),
        }));
    });
}

/// Reports the panic to the thread's VM; returns the thread's name and
/// whether it is confined, if it belongs to a VM.
fn report_panic(info: &PanicHookInfo<'_>) -> Option<(String, bool)> {
    let message = panic_message(info);
    let bound = BOUND
        .try_with(|b| {
            b.borrow().as_ref().map(|b| {
                b.exit.report(ExitReason::Panic {
                    thread: b.name.clone(),
                    message: message.clone(),
                });
                (b.name.clone(), b.confined)
            })
        })
        .ok()
        .flatten();
    bound
}

/// The panic's message and location.
pub fn panic_message(info: &PanicHookInfo<'_>) -> String {
    let payload = info.payload();
    let text = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(non-string payload)".into());
    match info.location() {
        Some(l) => format!("{text} at {}:{}", l.file(), l.line()),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_parse() {
        let f: Fault = "panic@vcpu0".parse().unwrap();
        assert_eq!((f.kind, f.thread.as_str()), (FaultKind::Panic, "vcpu0"));
        assert!("explode@vcpu0".parse::<Fault>().is_err());
        assert!("panic".parse::<Fault>().is_err());
    }

    #[test]
    fn a_panic_on_a_bound_thread_ends_its_vm_with_the_thread_named() {
        let exit = Arc::new(ExitSignal::new().unwrap());
        let policy = ThreadPolicy::new(exit.clone(), SeccompMode::Off, None);
        let t = std::thread::spawn(move || {
            let _b = policy.bind("vcpu7");
            panic!("boom");
        });
        assert!(t.join().is_err());
        match exit.wait() {
            ExitReason::Panic { thread, message } => {
                assert_eq!(thread, "vcpu7");
                assert!(message.starts_with("boom at "), "{message}");
            }
            other => panic!("{other}"),
        }
    }

    #[test]
    fn an_engine_worker_binds_itself_for_life_in_the_start_hook() {
        let exit = Arc::new(ExitSignal::new().unwrap());
        let policy = ThreadPolicy::new(exit.clone(), SeccompMode::Off, None);
        let engine = idlework::Engine::new(idlework::Config {
            policy: idlework::Policy::Workers,
            max_workers: 1,
            thread_name: "unit-work".into(),
            on_thread_start: Some(idlework::ThreadStartHook::new(move |t| {
                policy.bind_for_thread_life(&t.name);
                Ok(())
            })),
            ..idlework::Config::default()
        })
        .unwrap();
        // idlework catches the item's panic, but the panic hook runs first.
        engine
            .submit(idlework::Item::from_fn(|| panic!("in an item")))
            .unwrap();
        assert!(matches!(exit.wait(), ExitReason::Panic { thread, .. } if thread == "unit-work0"));
    }
}
