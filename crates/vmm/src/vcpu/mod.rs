//! A vCPU: its KVM fd, its thread, and the run loop as an explicit state machine.
//!
//! ```text
//!            start                 Pause            
//!   Created ──────► Running ◄────────────────► Paused
//!                      │          Resume          │
//!                      │ Stop, guest exit,        │ Stop
//!                      │ shutdown, error          │
//!                      ▼                          ▼
//!                   Exited ◄──────────────────────┘
//! ```
//!
//! Requests (pause, resume, stop) are posted to [`VcpuControl`] and the thread
//! is kicked out of `KVM_RUN` (see [`kick`]); the thread looks at requests
//! every time `KVM_RUN` returns. Port and MMIO exits go to the buses. A
//! shutdown or KVM internal error ends this vCPU and reports the VM's
//! [`ExitReason`]; the VM's owner then stops the other vCPUs.

pub mod idle_timer;
pub mod kick;
pub mod kvm_stats;
pub mod regs;

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::{
    kvm_regs, kvm_sregs, KVM_MP_STATE_HALTED, KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET,
};
use kvm_ioctls::{VcpuExit, VcpuFd};
use serde::Serialize;

use crate::bus::Bus;
use crate::config::CpuList;
use crate::exit::{ExitReason, ExitSignal};
use crate::idle::VcpuIdleHooks;
use crate::seccomp::ThreadClass;
use crate::vmm_thread::ThreadPolicy;
use idle_timer::IdleTimer;
use kick::{Kicker, ThreadBinding};
use kvm_stats::KvmStats;

/// The states of the run loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum VcpuState {
    /// Entering the guest and handling its exits.
    Running = 0,
    /// Out of the guest, waiting for Resume or Stop.
    Paused = 1,
    /// Done; the thread returns.
    Exited = 2,
}

/// What the VMM asks of a vCPU thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Request {
    /// Leave the guest and wait.
    Pause = 1,
    /// Go back into the guest.
    Resume = 2,
    /// Leave the guest for good.
    Stop = 3,
}

const NO_REQUEST: u8 = 0;

/// The longest a vCPU waits between looks at its own guest for queued work.
const MAX_SELF_KICK_DELAY: Duration = Duration::from_millis(1);

/// The mailbox between a vCPU thread and the rest of the VMM.
#[derive(Debug)]
pub struct VcpuControl {
    request: AtomicU8,
    /// The thread's current [`VcpuState`], published at each transition.
    state: AtomicU8,
    /// Wakes a paused vCPU; the mutex holds nothing, the request is the state.
    wake: (Mutex<()>, Condvar),
    kicker: Kicker,
}

impl VcpuControl {
    fn new(kicker: Kicker) -> Self {
        VcpuControl {
            request: AtomicU8::new(NO_REQUEST),
            state: AtomicU8::new(VcpuState::Running as u8),
            wake: (Mutex::new(()), Condvar::new()),
            kicker,
        }
    }

    /// Posts `request` and kicks the vCPU so it sees it promptly. A pending
    /// Stop is never replaced.
    pub fn post(&self, request: Request) {
        let _ = self
            .request
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |cur| {
                (cur != Request::Stop as u8).then_some(request as u8)
            });
        let _guard = self.wake.0.lock().unwrap_or_else(|p| p.into_inner());
        self.wake.1.notify_all();
        drop(_guard);
        self.kicker.kick();
    }

    /// The state the vCPU thread is in (as of its last transition).
    pub fn state(&self) -> VcpuState {
        match self.state.load(Ordering::Acquire) {
            0 => VcpuState::Running,
            1 => VcpuState::Paused,
            _ => VcpuState::Exited,
        }
    }

    /// Kicks the vCPU out of `KVM_RUN` without a request.
    pub fn kick(&self) -> bool {
        self.kicker.kick()
    }

    fn take(&self) -> Option<Request> {
        match self.request.swap(NO_REQUEST, Ordering::AcqRel) {
            1 => Some(Request::Pause),
            2 => Some(Request::Resume),
            3 => {
                // Stop stays posted so every later look sees it too.
                self.request.store(Request::Stop as u8, Ordering::Release);
                Some(Request::Stop)
            }
            _ => None,
        }
    }

    fn wait_for_request(&self) -> Request {
        let mut guard = self.wake.0.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(r) = self.take() {
                return r;
            }
            guard = self.wake.1.wait(guard).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// Counters a vCPU thread keeps about its exits.
#[derive(Clone, Debug, Default, Serialize)]
pub struct VcpuStats {
    /// vCPU index.
    pub vcpu: u8,
    /// Returns from `KVM_RUN` of any kind.
    pub exits: u64,
    /// Port I/O exits.
    pub io_exits: u64,
    /// MMIO exits.
    pub mmio_exits: u64,
    /// Returns caused by a signal (kicks) or `immediate_exit`.
    pub interrupted: u64,
    /// Times this vCPU ran device work between two guest runs, and found some.
    pub idle_runs: u64,
    /// Device work items it ran there.
    pub idle_items: u64,
    /// Time it spent on them, ns.
    pub idle_busy_ns: u64,
    /// Kicks that found the guest running, so no work was taken.
    pub declined_kicks: u64,
    /// Guest HLTs KVM handled (KVM's `halt_exits`).
    pub halt_exits: u64,
    /// Time the vCPU slept in HLT, ns (KVM's `halt_wait_ns`).
    pub halt_wait_ns: u64,
}

/// Everything a vCPU thread needs besides its fd.
pub struct VcpuContext {
    /// Port I/O bus.
    pub pio: Arc<Bus>,
    /// MMIO bus.
    pub mmio: Arc<Bus>,
    /// Where to report why the VM must end.
    pub exit: Arc<ExitSignal>,
    /// Host CPUs to run on, if pinned.
    pub pin: Option<CpuList>,
    /// The engine this vCPU serves as an idle executor, if any.
    pub engine: Option<Arc<idlework::Engine>>,
    /// After an exit that queued work, come back for it this soon (a timer
    /// kicks this thread; if the guest has halted by then, the thread runs
    /// the work). `None`: rely on the engine noticing the halt.
    pub self_kick: Option<Duration>,
    /// Binds the thread to its VM (panics and forbidden calls end the VM)
    /// and confines it before it first enters the guest.
    pub threads: ThreadPolicy,
}

/// A vCPU thread as the VM sees it.
pub struct VcpuHandle {
    control: Arc<VcpuControl>,
    thread: JoinHandle<VcpuStats>,
}

impl VcpuHandle {
    /// The vCPU's mailbox (requests and kicks), shareable with other threads.
    pub fn control(&self) -> &Arc<VcpuControl> {
        &self.control
    }

    /// Waits for the thread to finish and returns its counters.
    pub fn join(self) -> VcpuStats {
        self.thread.join().unwrap_or_else(|_| VcpuStats::default())
    }

    /// Waits until `deadline` for the thread to finish; returns its counters
    /// (defaults if it panicked), or gives the thread up (detached) if it has
    /// not finished by then, e.g. parked by a seccomp trap.
    pub fn join_until(self, deadline: Instant) -> Option<VcpuStats> {
        while !self.thread.is_finished() {
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Some(self.join())
    }
}

/// One vCPU, owned by its thread once started.
pub struct Vcpu {
    index: u8,
    fd: VcpuFd,
    ctx: VcpuContext,
    stats: VcpuStats,
    executor: Option<idlework::Executor>,
    /// Set while this thread waits for its guest to halt to run work it queued.
    idle_timer: Option<IdleTimer>,
    /// The current self-kick delay (doubles while the guest keeps running).
    self_kick_delay: Duration,
}

enum Outcome {
    Continue,
    /// An MMIO write was handled: it may have queued device work.
    Wrote,
    Interrupted,
    End(ExitReason),
}

impl Vcpu {
    /// A vCPU around a configured KVM vCPU fd.
    pub fn new(index: u8, fd: VcpuFd, ctx: VcpuContext) -> Self {
        let stats = VcpuStats {
            vcpu: index,
            ..Default::default()
        };
        Vcpu {
            index,
            fd,
            ctx,
            stats,
            executor: None,
            idle_timer: None,
            self_kick_delay: Duration::ZERO,
        }
    }

    /// Starts the vCPU's thread, which enters the guest at once.
    pub fn start(self) -> std::io::Result<VcpuHandle> {
        kick::install_handler().map_err(|e| std::io::Error::from_raw_os_error(e.errno()))?;
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name(format!("vcpu{}", self.index))
            .spawn(move || {
                let _bound = self.ctx.threads.bind(&format!("vcpu{}", self.index));
                let control = Arc::new(VcpuControl::new(Kicker::for_current_thread()));
                // The receiver is waiting in `start`; it cannot have gone.
                let _ = tx.send(control.clone());
                self.thread_main(control)
            })?;
        let control = rx
            .recv()
            .map_err(|_| std::io::Error::other("vCPU thread died at start"))?;
        Ok(VcpuHandle { control, thread })
    }

    fn thread_main(mut self, control: Arc<VcpuControl>) -> VcpuStats {
        if let Some(cpus) = &self.ctx.pin {
            if let Err(e) = pin_current_thread(cpus) {
                tracing::warn!("vcpu{}: cannot pin to CPUs {cpus}: {e}", self.index);
            }
        }
        let kvm_stats = KvmStats::open(&self.fd)
            .inspect_err(|e| tracing::warn!("vcpu{}: no KVM statistics: {e}", self.index))
            .ok();
        self.executor = kvm_stats
            .as_ref()
            .and_then(|s| self.register_executor(s, &control));
        if self.executor.is_some() && self.ctx.self_kick.is_some() {
            self.idle_timer = IdleTimer::for_current_thread()
                .inspect_err(|e| tracing::warn!("vcpu{}: no idle timer: {e}", self.index))
                .ok();
        }
        let control = &*control;
        // SAFETY: the run area is the vCPU fd's mmap, which lives as long as
        // `self.fd`; the binding is dropped below, on this thread, before
        // `self` (and the fd) is.
        let binding = unsafe { ThreadBinding::bind(self.fd.get_kvm_run()) };
        let name = format!("vcpu{}", self.index);
        let mut state = match self.ctx.threads.confine(ThreadClass::Vcpu, &name) {
            Ok(()) => VcpuState::Running,
            Err(e) => {
                self.ctx
                    .exit
                    .report(ExitReason::Host(format!("{name}: {e}")));
                VcpuState::Exited
            }
        };
        while state != VcpuState::Exited {
            control.state.store(state as u8, Ordering::Release);
            state = match state {
                VcpuState::Running => self.run_until_request(control),
                VcpuState::Paused => match control.wait_for_request() {
                    Request::Resume => VcpuState::Running,
                    Request::Pause => VcpuState::Paused,
                    Request::Stop => VcpuState::Exited,
                },
                VcpuState::Exited => VcpuState::Exited,
            };
        }
        control
            .state
            .store(VcpuState::Exited as u8, Ordering::Release);
        // Unregister first: the engine must not kick a thread that is leaving.
        drop(self.executor.take());
        if let Some(s) = &kvm_stats {
            self.stats.halt_exits = s.read("halt_exits").unwrap_or(0);
            self.stats.halt_wait_ns = s.read("halt_wait_ns").unwrap_or(0);
        }
        control.kicker.thread_exiting();
        drop(binding);
        self.stats
    }

    /// Becomes an idle executor of the VM's engine, if there is one.
    fn register_executor(
        &self,
        stats: &KvmStats,
        control: &Arc<VcpuControl>,
    ) -> Option<idlework::Executor> {
        let engine = self.ctx.engine.as_ref()?;
        match VcpuIdleHooks::new(stats, control.clone()) {
            Ok(hooks) => Some(engine.register_executor(format!("vcpu{}", self.index), hooks)),
            Err(e) => {
                tracing::warn!(
                    "vcpu{}: guest idle is invisible ({e}); device work goes to workers",
                    self.index
                );
                None
            }
        }
    }

    /// After a kick: if the guest is halted, run device work within the
    /// budget, then go back to the guest (KVM keeps it halted until its next
    /// interrupt). A guest that woke up meanwhile is not delayed: the engine
    /// gets a zero budget and finds the work other hands.
    fn run_idle_work(&mut self) {
        let Some(executor) = self.executor.as_mut() else {
            return;
        };
        // On our own thread KVM_GET_MP_STATE does not wait for the vCPU mutex.
        let halted = self
            .fd
            .get_mp_state()
            .is_ok_and(|s| s.mp_state == KVM_MP_STATE_HALTED);
        // A forced kick brings overdue work the CPU cap leaves no worker for.
        let take = halted || executor.forced();
        let budget = if take {
            executor.budget()
        } else {
            Duration::ZERO
        };
        if !take {
            self.stats.declined_kicks += 1;
        }
        let report = executor.run_idle(budget);
        if report.items > 0 {
            self.stats.idle_runs += 1;
            self.stats.idle_items += report.items;
            self.stats.idle_busy_ns += report.busy.as_nanos() as u64;
        }
        self.come_back_for_work(Some(take));
    }

    /// If work is queued, arms this thread's idle timer to look again soon:
    /// right after an exit that may have queued it (`ran` None), after a run
    /// in guest idle time (`Some(true)`: the guest is probably still idle),
    /// or later and later while the guest keeps running (`Some(false)`).
    fn come_back_for_work(&mut self, ran: Option<bool>) {
        let (Some(timer), Some(executor), Some(base)) =
            (&self.idle_timer, &self.executor, self.ctx.self_kick)
        else {
            return;
        };
        if !executor.work_queued() {
            return;
        }
        self.self_kick_delay = match ran {
            None | Some(true) => base,
            Some(false) => (self.self_kick_delay * 2).clamp(base, MAX_SELF_KICK_DELAY),
        };
        timer.arm(self.self_kick_delay);
    }

    /// Runs the guest until a request arrives or the vCPU must end.
    fn run_until_request(&mut self, control: &VcpuControl) -> VcpuState {
        loop {
            match control.take() {
                Some(Request::Pause) => return VcpuState::Paused,
                Some(Request::Stop) => return VcpuState::Exited,
                Some(Request::Resume) | None => {}
            }
            match self.run_once() {
                Outcome::Continue => {}
                Outcome::Wrote => self.come_back_for_work(None),
                Outcome::Interrupted => {
                    self.stats.interrupted += 1;
                    self.fd.set_kvm_immediate_exit(0);
                    self.run_idle_work();
                }
                Outcome::End(reason) => {
                    self.ctx.exit.report(reason);
                    return VcpuState::Exited;
                }
            }
        }
    }

    /// One `KVM_RUN` and the handling of its exit.
    fn run_once(&mut self) -> Outcome {
        self.stats.exits += 1;
        let index = self.index;
        match self.fd.run() {
            Ok(VcpuExit::IoIn(port, data)) => {
                self.stats.io_exits += 1;
                self.ctx.pio.read(port.into(), data);
                Outcome::Continue
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                self.stats.io_exits += 1;
                self.ctx.pio.write(port.into(), data);
                Outcome::Continue
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                self.stats.mmio_exits += 1;
                self.ctx.mmio.read(addr, data);
                Outcome::Continue
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                self.stats.mmio_exits += 1;
                self.ctx.mmio.write(addr, data);
                Outcome::Wrote
            }
            Ok(VcpuExit::Intr) => Outcome::Interrupted,
            Ok(VcpuExit::Shutdown) => Outcome::End(ExitReason::Shutdown {
                vcpu: index,
                regs: self.describe_registers(),
            }),
            Ok(VcpuExit::SystemEvent(kind, _)) if kind != KVM_SYSTEM_EVENT_CRASH => {
                if kind == KVM_SYSTEM_EVENT_RESET {
                    tracing::info!("vcpu{index}: guest asked for a reset; nightshift ends the VM");
                }
                Outcome::End(ExitReason::Shutdown {
                    vcpu: index,
                    regs: self.describe_registers(),
                })
            }
            Ok(VcpuExit::InternalError) => {
                let internal = {
                    let run = self.fd.get_kvm_run();
                    // SAFETY: exit_reason is KVM_EXIT_INTERNAL_ERROR, so KVM filled
                    // the `internal` member of the exit union.
                    unsafe { run.__bindgen_anon_1.internal }
                };
                let n = (internal.ndata as usize).min(internal.data.len());
                let detail = format!(
                    "suberror {} ({}), data {:x?}; {}",
                    internal.suberror,
                    internal_error_name(internal.suberror),
                    &internal.data[..n],
                    self.describe_registers()
                );
                Outcome::End(ExitReason::InternalError {
                    vcpu: index,
                    detail,
                })
            }
            Ok(VcpuExit::FailEntry(reason, cpu)) => Outcome::End(ExitReason::InternalError {
                vcpu: index,
                detail: format!("VM entry failed: reason {reason:#x} on host CPU {cpu}"),
            }),
            Ok(other) => Outcome::End(ExitReason::Host(format!(
                "vcpu{index}: unexpected exit {other:?}"
            ))),
            // A kick (signal) or immediate_exit: check errno, not exit_reason
            // (KVM leaves the previous exit_reason in place).
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => Outcome::Interrupted,
            Err(e) => Outcome::End(ExitReason::Host(format!(
                "vcpu{index}: KVM_RUN failed: {e}"
            ))),
        }
    }

    /// The registers that say where a guest died, for error reports.
    fn describe_registers(&self) -> String {
        let regs = self.fd.get_regs().unwrap_or_else(|_| kvm_regs::default());
        let sregs = self.fd.get_sregs().unwrap_or_else(|_| kvm_sregs::default());
        format!(
            "rip={:#x} rsp={:#x} rflags={:#x} cs={:#x} cpl={} cr0={:#x} cr2={:#x} cr3={:#x} cr4={:#x} efer={:#x}",
            regs.rip,
            regs.rsp,
            regs.rflags,
            sregs.cs.selector,
            sregs.cs.dpl,
            sregs.cr0,
            sregs.cr2,
            sregs.cr3,
            sregs.cr4,
            sregs.efer
        )
    }
}

fn internal_error_name(suberror: u32) -> &'static str {
    match suberror {
        1 => "emulation failure",
        2 => "simultaneous exception",
        3 => "delivery event",
        4 => "unexpected exit reason",
        _ => "unknown",
    }
}

/// Restricts the calling thread to `cpus`.
pub fn pin_current_thread(cpus: &CpuList) -> std::io::Result<()> {
    pin_thread(0, cpus)
}

/// Restricts thread `tid` (0: the calling thread) to `cpus`.
pub fn pin_thread(tid: libc::pid_t, cpus: &CpuList) -> std::io::Result<()> {
    // SAFETY: cpu_set_t is plain data; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus.cpus() {
        // SAFETY: CpuList holds CPUs below 1024 = CPU_SETSIZE, in bounds of `set`.
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    // SAFETY: `set` is a valid cpu_set_t of the size passed; the kernel checks `tid`.
    let ret = unsafe { libc::sched_setaffinity(tid, std::mem::size_of_val(&set), &set) };
    if ret == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
