//! Per-thread seccomp filters: each class of VMM thread may make only the
//! system calls it needs once the guest runs.
//!
//! A guest that finds a bug in a device still runs in a thread that cannot
//! open files, create sockets, exec, ptrace or map new executable code. The
//! filters are compiled with seccompiler (as Firecracker and Cloud
//! Hypervisor do) from [`ALLOWED`], one table for every class, so a branch
//! that adds a thread or a system call adds a row or a class there.
//!
//! When each class is confined (always before its thread runs guest code or
//! guest-driven work):
//! - `vcpu`: on its thread, after setup (stats fd, pinning, self-kick timer),
//!   just before its first `KVM_RUN`.
//! - `notifier`: at the start of its thread.
//! - `worker` (the engine's threads): in idlework's thread-start hook, first
//!   thing on each worker, before it takes any item. The engine's timekeeper
//!   is a role of one worker, not a thread of its own, so it has the worker
//!   filter.
//! - `main`: by the embedder (the CLI) once the VM runs, after it has opened
//!   every file it will write (see [`crate::vm::RunningVm::confine_main_thread`]).
//!
//! Device I/O runs on vCPU threads (`inline` and `idle` policies), on the
//! notifier (`inline` with ioeventfds) and on main (draining at the end), so
//! those classes may `pread64`/`pwrite64`/`fdatasync` the open images.
//! Firecracker keeps device emulation and I/O out of its vCPU threads, whose
//! filter then needs little beyond `KVM_RUN` and the exit port; nightshift's
//! model gives that up on purpose: a guest that compromises its vCPU thread
//! can read and write the VM's open disk images from it (it could not open
//! another file, nor reach a file descriptor's data that is not a disk).
//! That is the price of running device work on idle vCPUs.
//!
//! A forbidden call, under `enforce`, raises SIGSYS on the offending thread
//! (`SeccompAction::Trap`); [`handle_sigsys`] records the thread and the call
//! number in the VM's [`ExitSignal`], which ends the VM with
//! [`ExitReason::Seccomp`](crate::ExitReason::Seccomp), and parks the thread
//! for good (it never returns into code whose call did not happen). This is
//! sound because the handler only stores atomics and calls write(2) and
//! pause(2) (async-signal-safe). The main thread (the VM's waiter), and a
//! thread not bound to a VM (today: the engine's workers, until the engine's
//! start hook binds them), exit the process at once with status 159 after
//! printing the same facts: there is no one else to end the VM. `log`
//! allows the call and has the kernel log it (`SECCOMP_RET_LOG`: audit log /
//! dmesg), to find what a filter misses; `off` installs nothing.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::convert::TryInto;
use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use serde::{Deserialize, Serialize};

use crate::exit::ExitSignal;

/// What the filters do with a call they do not allow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SeccompMode {
    /// Refuse it: the VM ends with a named exit (SIGSYS, see the module docs).
    #[default]
    Enforce,
    /// Allow it and have the kernel log it.
    Log,
    /// No filters.
    Off,
}

impl fmt::Display for SeccompMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SeccompMode::Enforce => "enforce",
            SeccompMode::Log => "log",
            SeccompMode::Off => "off",
        })
    }
}

impl FromStr for SeccompMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "enforce" => Ok(SeccompMode::Enforce),
            "log" => Ok(SeccompMode::Log),
            "off" => Ok(SeccompMode::Off),
            _ => Err(format!(
                "unknown seccomp mode {s:?} (expected enforce, log or off)"
            )),
        }
    }
}

/// The kinds of VMM thread, each with its own filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ThreadClass {
    /// A vCPU thread: KVM_RUN, exits, device work when idle.
    Vcpu,
    /// The engine's worker threads (and the thread that spawns them).
    Worker,
    /// The ioeventfd notifier thread.
    Notifier,
    /// The thread that started the VM and waits for its end.
    Main,
    /// The console's writer (`ns-console`) and stdin reader (`ns-stdin`).
    Console,
}

impl fmt::Display for ThreadClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ThreadClass::Vcpu => "vcpu",
            ThreadClass::Worker => "worker",
            ThreadClass::Notifier => "notifier",
            ThreadClass::Main => "main",
            ThreadClass::Console => "console",
        })
    }
}

use ThreadClass::{Console, Main, Notifier, Vcpu, Worker};
const ALL: &[ThreadClass] = &[Vcpu, Worker, Notifier, Main, Console];

/// One row of the allow-list: a reason, the classes, the calls.
struct Allow {
    #[allow(dead_code, reason = "for the reader of the table: why the row exists")]
    why: &'static str,
    classes: &'static [ThreadClass],
    syscalls: &'static [libc::c_long],
}

/// Every system call any VMM thread may make once confined, by class.
/// Add a row (or a class to a row) for a new need, with its reason;
/// calls that take a request or command go in [`ALLOWED_ARGS`].
const ALLOWED: &[Allow] = &[
    Allow {
        why: "memory allocation (glibc malloc grows arenas with mprotect)",
        classes: ALL,
        syscalls: &[
            libc::SYS_brk,
            libc::SYS_mmap,
            libc::SYS_munmap,
            libc::SYS_mremap,
            libc::SYS_madvise,
            libc::SYS_mprotect,
        ],
    },
    Allow {
        why: "locks, condition variables, parking, sleeping, yielding",
        classes: ALL,
        syscalls: &[
            libc::SYS_futex,
            libc::SYS_sched_yield,
            libc::SYS_nanosleep,
            libc::SYS_clock_nanosleep,
            libc::SYS_clock_gettime,
            libc::SYS_getrandom,
        ],
    },
    Allow {
        why: "signals: kicks (tgkill), their handlers' return, the SIGSYS handler (pause)",
        classes: ALL,
        syscalls: &[
            libc::SYS_rt_sigreturn,
            libc::SYS_rt_sigprocmask,
            libc::SYS_sigaltstack,
            libc::SYS_tgkill,
            libc::SYS_getpid,
            libc::SYS_gettid,
            libc::SYS_pause,
        ],
    },
    Allow {
        why: "logs and console (stderr/stdout), eventfds (irqfd, wake-ups), closing fds",
        classes: ALL,
        syscalls: &[
            libc::SYS_write,
            libc::SYS_writev,
            libc::SYS_read,
            libc::SYS_close,
        ],
    },
    Allow {
        why: "device work on open images and KVM stats reads (items run on every class)",
        classes: ALL,
        syscalls: &[
            libc::SYS_pread64,
            libc::SYS_pwrite64,
            libc::SYS_preadv,
            libc::SYS_pwritev,
            libc::SYS_fdatasync,
            libc::SYS_fsync,
        ],
    },
    Allow {
        why: "re-arming a host event source (a tap) from whichever thread ran the device's item",
        classes: ALL,
        syscalls: &[libc::SYS_epoll_ctl],
    },
    Allow {
        why: "passed on to the refusing filter (see `REFUSED`): never opens anything",
        classes: ALL,
        syscalls: &[libc::SYS_open, libc::SYS_openat],
    },
    Allow {
        why: "a thread's own end",
        classes: ALL,
        syscalls: &[libc::SYS_exit, libc::SYS_exit_group],
    },
    Allow {
        why: "the vCPU's self-kick timer (armed per exit, deleted at the thread's end)",
        classes: &[Vcpu],
        syscalls: &[libc::SYS_timer_settime, libc::SYS_timer_delete],
    },
    Allow {
        why: "waiting for ioeventfds (notifier) and for stdin (the console's reader)",
        classes: &[Notifier, Console],
        syscalls: &[libc::SYS_epoll_wait, libc::SYS_epoll_pwait],
    },
    Allow {
        why: "re-reading /proc/self files opened before confinement (memory report)",
        classes: &[Main],
        syscalls: &[libc::SYS_lseek],
    },
];

/// System calls allowed only with given values of one argument.
struct AllowArgs {
    #[allow(dead_code, reason = "for the reader of the table: why the row exists")]
    why: &'static str,
    classes: &'static [ThreadClass],
    syscall: libc::c_long,
    /// Which argument (0-based) is compared.
    arg: u8,
    /// The values it may have.
    values: &'static [u64],
}

/// ioctls are refused except as listed here, and so is anything else that
/// takes a request or command argument.
const ALLOWED_ARGS: &[AllowArgs] = &[
    AllowArgs {
        why: "running the guest, and the state that names why a guest died",
        classes: &[Vcpu],
        syscall: libc::SYS_ioctl,
        arg: 1,
        values: &[
            kvm_ioctl::KVM_RUN,
            kvm_ioctl::KVM_GET_MP_STATE,
            kvm_ioctl::KVM_GET_REGS,
            kvm_ioctl::KVM_GET_SREGS,
        ],
    },
    AllowArgs {
        why: "the userspace irqchip: injecting interrupts and NMIs, starting an AP at its SIPI",
        classes: &[Vcpu],
        syscall: libc::SYS_ioctl,
        arg: 1,
        values: &[
            kvm_ioctl::KVM_INTERRUPT,
            kvm_ioctl::KVM_NMI,
            kvm_ioctl::KVM_SET_REGS,
            kvm_ioctl::KVM_SET_SREGS,
        ],
    },
    AllowArgs {
        why: "reading a KVM statistic opens a reader on a duplicate of the stats fd",
        classes: &[Vcpu],
        syscall: libc::SYS_fcntl,
        arg: 1,
        values: &[libc::F_DUPFD_CLOEXEC as u64],
    },
    AllowArgs {
        why: "in builds with debug assertions Rust's std checks that an fd it closes is open",
        classes: ALL,
        syscall: libc::SYS_fcntl,
        arg: 1,
        values: &[libc::F_GETFD as u64],
    },
];

/// KVM ioctl request numbers (include/uapi/linux/kvm.h, `_IO`/`_IOR` on 0xAE).
mod kvm_ioctl {
    const fn ior(nr: u64, size: usize) -> u64 {
        (2 << 30) | ((size as u64) << 16) | (0xAE << 8) | nr
    }
    const fn iow(nr: u64, size: usize) -> u64 {
        (1 << 30) | ((size as u64) << 16) | (0xAE << 8) | nr
    }
    pub const KVM_INTERRUPT: u64 = iow(0x86, std::mem::size_of::<kvm_bindings::kvm_interrupt>());
    pub const KVM_NMI: u64 = (0xAE << 8) | 0x9a;
    pub const KVM_SET_REGS: u64 = iow(0x82, std::mem::size_of::<kvm_bindings::kvm_regs>());
    pub const KVM_SET_SREGS: u64 = iow(0x84, std::mem::size_of::<kvm_bindings::kvm_sregs>());
    pub const KVM_RUN: u64 = (0xAE << 8) | 0x80;
    pub const KVM_GET_REGS: u64 = ior(0x81, std::mem::size_of::<kvm_bindings::kvm_regs>());
    pub const KVM_GET_SREGS: u64 = ior(0x83, std::mem::size_of::<kvm_bindings::kvm_sregs>());
    pub const KVM_GET_MP_STATE: u64 = ior(0x98, std::mem::size_of::<kvm_bindings::kvm_mp_state>());
}

/// A filter could not be built or installed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// seccompiler refused the rules (a bug in [`ALLOWED`]).
    #[error("building the {class} seccomp filter: {source}")]
    Build {
        /// The class.
        class: ThreadClass,
        /// seccompiler's error.
        source: seccompiler::BackendError,
    },
    /// The kernel refused the filter.
    #[error("installing the {class} seccomp filter: {source}")]
    Install {
        /// The class.
        class: ThreadClass,
        /// seccompiler's error.
        source: seccompiler::Error,
    },
    /// The SIGSYS handler could not be installed.
    #[error("installing the SIGSYS handler: {0}")]
    Handler(std::io::Error),
}

/// The system calls `class` may make, with argument rules where it has them.
fn rules(class: ThreadClass) -> Result<BTreeMap<i64, Vec<SeccompRule>>, seccompiler::BackendError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = ALLOWED
        .iter()
        .filter(|a| a.classes.contains(&class))
        .flat_map(|a| a.syscalls.iter())
        .map(|&nr| (nr, Vec::new()))
        .collect();
    for a in ALLOWED_ARGS.iter().filter(|a| a.classes.contains(&class)) {
        let chain = rules.entry(a.syscall).or_default();
        for &value in a.values {
            let cond =
                SeccompCondition::new(a.arg, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, value)?;
            chain.push(SeccompRule::new(vec![cond])?);
        }
    }
    Ok(rules)
}

/// The compiled filter for `class` under `mode` (None under `off`).
pub fn filter(class: ThreadClass, mode: SeccompMode) -> Result<Option<BpfProgram>, SeccompError> {
    let mismatch = match mode {
        SeccompMode::Off => return Ok(None),
        SeccompMode::Enforce => SeccompAction::Trap,
        SeccompMode::Log => SeccompAction::Log,
    };
    let build = |source| SeccompError::Build { class, source };
    let rules = rules(class).map_err(build)?;
    let filter = SeccompFilter::new(rules, mismatch, SeccompAction::Allow, TargetArch::x86_64)
        .map_err(build)?;
    Ok(Some(filter.try_into().map_err(build)?))
}

/// Calls that fail with `EACCES` instead of trapping: glibc opens
/// `/proc/sys/vm/overcommit_memory` the first time it shrinks a malloc heap
/// (at no predictable point, on any thread) and copes with the open failing;
/// and no confined thread may open anything.
const REFUSED: &[libc::c_long] = &[libc::SYS_open, libc::SYS_openat];

/// A filter that refuses [`REFUSED`] with `EACCES` and allows the rest. It
/// is stacked under the class filter (which allows these calls), and the
/// kernel applies the stricter verdict: an `open` fails, never traps.
fn refusing_filter() -> Result<BpfProgram, seccompiler::BackendError> {
    let rules = REFUSED.iter().map(|&nr| (nr, Vec::new())).collect();
    let refuse = SeccompAction::Errno(libc::EACCES as u32);
    SeccompFilter::new(rules, SeccompAction::Allow, refuse, TargetArch::x86_64)?.try_into()
}

/// Confines the calling thread to `class`'s filter under `mode`.
pub fn confine_current_thread(class: ThreadClass, mode: SeccompMode) -> Result<(), SeccompError> {
    let Some(program) = filter(class, mode)? else {
        return Ok(());
    };
    install_sigsys_handler().map_err(SeccompError::Handler)?;
    let install = |source| SeccompError::Install { class, source };
    let refusing = refusing_filter().map_err(|source| SeccompError::Build { class, source })?;
    seccompiler::apply_filter(&refusing).map_err(install)?;
    seccompiler::apply_filter(&program).map_err(install)
}

thread_local! {
    /// The VM the calling thread belongs to and its name, for the SIGSYS
    /// handler; set by [`TrapTarget::bind`].
    static TRAP_TARGET: Cell<(*const ExitSignal, [u8; 16], OnTrap)> =
        const { Cell::new((std::ptr::null(), [0; 16], OnTrap::Report)) };
}

/// What a trapped thread does after naming itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OnTrap {
    /// Report to its VM and park: the VM's waiter ends the VM.
    Report,
    /// Exit the process: this thread is the waiter, nobody else would act.
    ExitProcess,
}

/// While alive, a forbidden call on this thread is reported to `exit`.
pub(crate) struct TrapTarget {
    _exit: std::sync::Arc<ExitSignal>,
}

impl TrapTarget {
    /// Binds the calling thread (named `name`) to `exit`.
    pub(crate) fn bind(exit: &std::sync::Arc<ExitSignal>, name: &str, on_trap: OnTrap) -> Self {
        let mut short = [0u8; 16];
        let n = name.len().min(15);
        short[..n].copy_from_slice(&name.as_bytes()[..n]);
        TRAP_TARGET.with(|t| t.set((std::sync::Arc::as_ptr(exit), short, on_trap)));
        TrapTarget {
            _exit: exit.clone(),
        }
    }
}

impl Drop for TrapTarget {
    fn drop(&mut self) {
        TRAP_TARGET.with(|t| t.set((std::ptr::null(), [0; 16], OnTrap::Report)));
    }
}

/// `si_code` of a SIGSYS raised by a seccomp filter.
const SYS_SECCOMP: libc::c_int = 1;

fn install_sigsys_handler() -> std::io::Result<()> {
    static RESULT: OnceLock<Result<(), i32>> = OnceLock::new();
    let result = RESULT.get_or_init(|| {
        // SAFETY: sigaction is plain data; all-zero is a valid start.
        let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
        act.sa_sigaction = handle_sigsys as *const () as usize;
        act.sa_flags = libc::SA_SIGINFO;
        // SAFETY: `act.sa_mask` is a valid sigset; every signal is blocked
        // while the handler runs, so a kick cannot interrupt it.
        unsafe { libc::sigfillset(&mut act.sa_mask) };
        // SAFETY: a valid action for a catchable signal; the handler only
        // does async-signal-safe work (see `handle_sigsys`).
        let ret = unsafe { libc::sigaction(libc::SIGSYS, &act, std::ptr::null_mut()) };
        if ret == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
        }
    });
    result.map_err(std::io::Error::from_raw_os_error)
}

/// The SIGSYS handler: names the thread and the call, ends the VM, parks
/// the thread. Async-signal-safe: atomics, write(2), pause(2), _exit(2).
extern "C" fn handle_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t to an SA_SIGINFO handler.
    let code = unsafe { (*info).si_code };
    // SAFETY: for SIGSYS from seccomp, the union holds `_sigsys`: a pointer
    // (call address) at offset 16, then `int _syscall` at 24 (x86-64
    // siginfo layout, include/uapi/asm-generic/siginfo.h).
    let syscall = unsafe { *(info as *const u8).add(24).cast::<libc::c_int>() };
    if code != SYS_SECCOMP {
        return;
    }
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    let (exit, name, on_trap) = TRAP_TARGET.with(Cell::get);
    let mut msg = Message::new();
    msg.push(b"nightshift: seccomp: thread ");
    let len = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    msg.push(if len == 0 { b"(unbound)" } else { &name[..len] });
    msg.push(b" tid ");
    msg.push_num(tid as i64);
    msg.push(b" made forbidden system call ");
    msg.push_num(syscall.into());
    msg.push(b"\n");
    msg.write_to_stderr();
    if exit.is_null() || on_trap == OnTrap::ExitProcess {
        // No VM to report to, or no one else to end it: end the process, as
        // KillProcess would, but named.
        // SAFETY: _exit is async-signal-safe and never returns.
        unsafe { libc::_exit(128 + libc::SIGSYS) };
    }
    // SAFETY: the pointer was set by `TrapTarget::bind` on this thread and the
    // binding (which holds a reference) is alive while it is set.
    unsafe { (*exit).report_trap(syscall.into(), tid, name) };
    loop {
        // Every signal is blocked in this handler: this thread never runs on.
        // SAFETY: pause has no preconditions.
        unsafe { libc::pause() };
    }
}

/// A message built without allocating (for the signal handler).
struct Message {
    buf: [u8; 160],
    len: usize,
}

impl Message {
    fn new() -> Self {
        Message {
            buf: [0; 160],
            len: 0,
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        let n = bytes.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&bytes[..n]);
        self.len += n;
    }

    fn push_num(&mut self, n: i64) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        let mut v = n.unsigned_abs();
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        if n < 0 {
            self.push(b"-");
        }
        self.push(&digits[i..]);
    }

    fn write_to_stderr(&self) {
        // SAFETY: writes initialised bytes of our own buffer; write(2) is async-signal-safe.
        unsafe { libc::write(libc::STDERR_FILENO, self.buf.as_ptr().cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_class_compiles_in_every_mode() {
        for &class in ALL {
            for mode in [SeccompMode::Enforce, SeccompMode::Log] {
                let program = filter(class, mode).unwrap().unwrap();
                assert!(!program.is_empty());
            }
            assert!(filter(class, SeccompMode::Off).unwrap().is_none());
        }
    }

    #[test]
    fn only_vcpus_may_run_kvm_and_only_workers_may_spawn() {
        let vcpu = rules(Vcpu).unwrap();
        // Four to run and describe the guest, four for the userspace irqchip.
        assert_eq!(vcpu[&libc::SYS_ioctl].len(), 8);
        for class in [Worker, Notifier, Main, Console] {
            assert!(
                !rules(class).unwrap().contains_key(&libc::SYS_ioctl),
                "{class}"
            );
        }
        for class in [Vcpu, Notifier, Main] {
            let r = rules(class).unwrap();
            assert!(!r.contains_key(&libc::SYS_clone3) && !r.contains_key(&libc::SYS_clone));
        }
        for &class in ALL {
            let r = rules(class).unwrap();
            for forbidden in [libc::SYS_execve, libc::SYS_socket, libc::SYS_ptrace] {
                assert!(!r.contains_key(&forbidden), "{class} allows {forbidden}");
            }
        }
        // Opens pass the class filter only to be refused by the stacked one.
        assert!(REFUSED.contains(&libc::SYS_openat) && REFUSED.contains(&libc::SYS_open));
        refusing_filter().unwrap();
    }

    #[test]
    fn ioctl_numbers_match_the_kernel_headers() {
        assert_eq!(kvm_ioctl::KVM_RUN, 0xae80);
        assert_eq!(kvm_ioctl::KVM_GET_REGS, 0x8090_ae81);
        assert_eq!(kvm_ioctl::KVM_GET_SREGS, 0x8138_ae83);
        assert_eq!(kvm_ioctl::KVM_GET_MP_STATE, 0x8004_ae98);
    }

    #[test]
    fn modes_parse() {
        assert_eq!("log".parse::<SeccompMode>(), Ok(SeccompMode::Log));
        assert!("strict".parse::<SeccompMode>().is_err());
    }

    #[test]
    fn a_confined_thread_that_breaks_its_filter_is_reported_and_parked() {
        let exit = std::sync::Arc::new(ExitSignal::new().unwrap());
        let e = exit.clone();
        // The thread parks in the handler for good; it is left behind.
        let _ = std::thread::Builder::new()
            .name("test-trap".into())
            .spawn(move || {
                let _bound = TrapTarget::bind(&e, "test-trap", OnTrap::Report);
                confine_current_thread(Notifier, SeccompMode::Enforce).unwrap();
                // SAFETY: syslog(SYSLOG_ACTION_SIZE_BUFFER) only queries; the filter refuses it.
                unsafe { libc::syscall(libc::SYS_syslog, 10, std::ptr::null_mut::<u8>(), 0) };
                unreachable!("the forbidden call returned");
            })
            .unwrap();
        match exit.wait() {
            crate::ExitReason::Seccomp {
                thread, syscall, ..
            } => {
                assert_eq!((thread.as_str(), syscall), ("test-trap", libc::SYS_syslog));
            }
            other => panic!("{other}"),
        }
    }
}
