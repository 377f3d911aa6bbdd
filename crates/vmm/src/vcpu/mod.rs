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
//! is kicked out of `KVM_RUN` (see [`kick`]) or woken from a userspace wait;
//! the thread looks at requests every time `KVM_RUN` returns. Port and MMIO
//! exits go to the buses. A shutdown or KVM internal error ends this vCPU and
//! reports the VM's [`ExitReason`]; the VM's owner then stops the other vCPUs.
//!
//! Under the userspace irqchip ([`crate::irqchip`]) the Running state has two
//! more places the thread can be: waiting for its STARTUP IPI (APs, and any
//! CPU after INIT), and halted in userspace after a guest HLT, where it is an
//! idle executor ([`halt`]). Before each entry it injects what its local APIC
//! has for it ([`user_irq`]). [`VcpuControl`] publishes which of these the
//! thread is in, so that whoever has news for it picks the cheapest way to
//! tell it: nothing (its own thread), a plain wake (waiting in userspace), or
//! a signal kick (inside `KVM_RUN`).

pub mod halt;
mod halt_poll;
pub mod idle_timer;
mod io_wait;
pub mod kick;
pub mod kvm_stats;
pub mod regs;
pub mod user_irq;

use std::cell::Cell;
use std::sync::atomic::{fence, AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::{
    kvm_regs, kvm_sregs, KVM_INTERNAL_ERROR_EMULATION, KVM_MP_STATE_HALTED, KVM_SYSTEM_EVENT_CRASH,
    KVM_SYSTEM_EVENT_RESET,
};
use kvm_ioctls::{VcpuExit, VcpuFd};
use serde::Serialize;

use crate::bus::Bus;
use crate::config::CpuList;
use crate::device_manager::Slot;
use crate::exit::{EmulationFailure, ExitReason, ExitSignal};
use crate::idle::{BlockingStat, KernelIdleHooks, UserIdleHooks, VcpuSignals};
use crate::irqchip::{UserIrqChip, VcpuWaker};
use crate::memory::{GuestMemory, LAPIC_START};
use crate::seccomp::ThreadClass;
use crate::vmm_thread::ThreadPolicy;
use halt_poll::HaltPoll;
use idle_timer::IdleTimer;
use io_wait::IoWaitGuess;
use kick::{Kicker, ThreadBinding};
use kvm_stats::{KvmStats, StatReader};
use user_irq::{Entry, MsrError, UserIrq};

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

/// Where the vCPU thread is, for those who have news for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Place {
    /// Handling an exit, or anything else outside the guest: it looks at
    /// its requests and interrupts before it enters again.
    Outside = 0,
    /// About to enter or inside `KVM_RUN`: only a signal reaches it.
    InGuest = 1,
    /// Waiting in userspace after a guest HLT (an idle executor).
    Halted = 2,
    /// Waiting in userspace for a STARTUP IPI (not idle: no guest yet).
    Parked = 3,
}

thread_local! {
    /// The [`VcpuControl`] of the vCPU this thread runs (its address), or 0.
    static OWN_CONTROL: Cell<usize> = const { Cell::new(0) };
}

/// The longest a vCPU waits between looks at its own guest for queued work.
const MAX_SELF_KICK_DELAY: Duration = Duration::from_millis(1);

/// The mailbox between a vCPU thread and the rest of the VMM.
#[derive(Debug)]
pub struct VcpuControl {
    request: AtomicU8,
    /// The thread's current [`VcpuState`], published at each transition.
    state: AtomicU8,
    /// Where the thread is ([`Place`]).
    place: AtomicU8,
    /// The engine asked this executor to run work (user irqchip).
    work_offered: AtomicBool,
    /// Wakes a thread waiting in userspace (paused, halted, parked): a
    /// generation count, bumped by every wake, so none is lost.
    wake: (Mutex<u64>, Condvar),
    /// The generation as of the last bump, for a thread that polls for a
    /// wake without the lock ([`halt_poll`]).
    wake_polled: AtomicU64,
    kicker: Kicker,
    /// Signals sent to this thread (kicks out of `KVM_RUN`).
    signal_kicks: AtomicU64,
    /// Plain wakes of this thread from a userspace wait.
    plain_wakes: AtomicU64,
    /// Of those, to hand it engine work (user irqchip).
    work_wakes: AtomicU64,
    /// Signals sent to hand it engine work (user irqchip, forced work only).
    work_kicks: AtomicU64,
    /// Wakes and signals for interrupts and IPIs (user irqchip).
    irq_wakes: AtomicU64,
    irq_kicks: AtomicU64,
}

/// How [`VcpuControl::tell`] reached the thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Told {
    /// It looks by itself before it enters or waits.
    Nothing,
    /// A plain wake of its userspace wait.
    Woken,
    /// A signal out of `KVM_RUN`.
    Kicked,
}

impl VcpuControl {
    fn new(kicker: Kicker) -> Self {
        VcpuControl {
            request: AtomicU8::new(NO_REQUEST),
            state: AtomicU8::new(VcpuState::Running as u8),
            place: AtomicU8::new(Place::Outside as u8),
            work_offered: AtomicBool::new(false),
            wake: (Mutex::new(0), Condvar::new()),
            wake_polled: AtomicU64::new(0),
            kicker,
            signal_kicks: AtomicU64::new(0),
            plain_wakes: AtomicU64::new(0),
            work_wakes: AtomicU64::new(0),
            work_kicks: AtomicU64::new(0),
            irq_wakes: AtomicU64::new(0),
            irq_kicks: AtomicU64::new(0),
        }
    }

    /// Posts `request` and makes the vCPU see it promptly (a wake if it
    /// waits in userspace, else a kick). A pending Stop is never replaced.
    pub fn post(&self, request: Request) {
        let _ = self
            .request
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |cur| {
                (cur != Request::Stop as u8).then_some(request as u8)
            });
        self.bump();
        fence(Ordering::SeqCst);
        if !matches!(self.place(), Place::Halted | Place::Parked) {
            self.kick();
        }
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
        let sent = self.kicker.kick();
        if sent {
            self.signal_kicks.fetch_add(1, Ordering::Relaxed);
        }
        sent
    }

    fn place(&self) -> Place {
        match self.place.load(Ordering::SeqCst) {
            1 => Place::InGuest,
            2 => Place::Halted,
            3 => Place::Parked,
            _ => Place::Outside,
        }
    }

    /// Publishes where the thread is; it looks at its news only after this
    /// (the fence orders the store before those loads, as `tell` orders the
    /// news before its load of `place`).
    fn set_place(&self, place: Place) {
        self.place.store(place as u8, Ordering::SeqCst);
        fence(Ordering::SeqCst);
    }

    fn on_own_thread(&self) -> bool {
        OWN_CONTROL.with(Cell::get) == self as *const Self as usize
    }

    /// Something is pending for this vCPU (an interrupt, work): tell its
    /// thread the cheapest way that reaches it where it is; a thread in the
    /// guest only if `may_signal`.
    fn tell(&self, may_signal: bool) -> Told {
        if self.on_own_thread() {
            // It looks before its next entry or wait.
            return Told::Nothing;
        }
        // The caller's news (under its own lock) before the load of `place`;
        // the thread stores `place` before it looks at the news.
        fence(Ordering::SeqCst);
        match self.place() {
            Place::Halted | Place::Parked => {
                self.bump();
                self.plain_wakes.fetch_add(1, Ordering::Relaxed);
                Told::Woken
            }
            Place::InGuest if may_signal && self.kick() => Told::Kicked,
            Place::InGuest | Place::Outside => Told::Nothing,
        }
    }

    fn bump(&self) {
        let mut generation = self.wake.0.lock().unwrap_or_else(|p| p.into_inner());
        *generation += 1;
        self.wake_polled.store(*generation, Ordering::Release);
        self.wake.1.notify_all();
    }

    /// Spins until a wake newer than `seen` or `end`; returns whether the
    /// wake came (then there is no need to wait for it).
    ///
    /// Between looks it yields its CPU: the thread that will wake it (a
    /// worker, the notifier) may be waiting for this very CPU, and KVM's own
    /// halt polling likewise stops while another task is runnable there. A
    /// yield with nothing else runnable returns at once.
    fn poll_for_wake(&self, seen: u64, end: Instant) -> bool {
        loop {
            for _ in 0..32 {
                if self.wake_polled.load(Ordering::Acquire) != seen {
                    return true;
                }
                std::hint::spin_loop();
            }
            if Instant::now() >= end {
                return false;
            }
            std::thread::yield_now();
        }
    }

    /// The wake generation; pass it to [`Self::wait_for_wake`] after looking
    /// at everything that could end the wait.
    fn generation(&self) -> u64 {
        *self.wake.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until a wake newer than `seen`, or `until`.
    fn wait_for_wake(&self, seen: u64, until: Option<Instant>) {
        let mut generation = self.wake.0.lock().unwrap_or_else(|p| p.into_inner());
        while *generation == seen {
            match until {
                None => {
                    generation = self
                        .wake
                        .1
                        .wait(generation)
                        .unwrap_or_else(|p| p.into_inner())
                }
                Some(t) => {
                    let Some(left) = t.checked_duration_since(Instant::now()) else {
                        return;
                    };
                    generation = self
                        .wake
                        .1
                        .wait_timeout(generation, left)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
            }
        }
    }

    /// Whether a request is posted (without taking it).
    fn has_request(&self) -> bool {
        self.request.load(Ordering::Acquire) != NO_REQUEST
    }

    fn take_work_offer(&self) -> bool {
        self.work_offered.load(Ordering::SeqCst) && self.work_offered.swap(false, Ordering::SeqCst)
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
        loop {
            let seen = self.generation();
            if let Some(r) = self.take() {
                return r;
            }
            self.wait_for_wake(seen, None);
        }
    }
}

impl VcpuSignals for VcpuControl {
    fn kick(&self) -> bool {
        VcpuControl::kick(self)
    }

    fn offer_work(&self, preempt: bool) {
        self.work_offered.store(true, Ordering::SeqCst);
        match self.tell(preempt) {
            Told::Woken => self.work_wakes.fetch_add(1, Ordering::Relaxed),
            Told::Kicked => self.work_kicks.fetch_add(1, Ordering::Relaxed),
            Told::Nothing => 0,
        };
    }
}

impl VcpuWaker for VcpuControl {
    fn wake(&self) {
        match self.tell(true) {
            Told::Woken => self.irq_wakes.fetch_add(1, Ordering::Relaxed),
            Told::Kicked => self.irq_kicks.fetch_add(1, Ordering::Relaxed),
            Told::Nothing => 0,
        };
    }
}

impl BlockingStat for StatReader {
    fn blocking(&self) -> bool {
        self.read().is_ok_and(|v| v != 0)
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
    /// Time the vCPU slept in HLT, ns (KVM's `halt_wait_ns`; under the user
    /// irqchip, the same as `halted_ns`).
    pub halt_wait_ns: u64,
    /// Signals sent to this thread (kicks out of `KVM_RUN`: engine kicks
    /// under the kernel irqchip, interrupts for a vCPU in the guest, requests).
    pub signal_kicks: u64,
    /// Plain wakes of this thread waiting in userspace (user irqchip).
    pub plain_wakes: u64,
    /// User irqchip: of `plain_wakes`, those that handed it engine work.
    pub work_wakes: u64,
    /// User irqchip: of `signal_kicks`, those that handed it engine work
    /// (only overdue work forced on a busy vCPU under `cpu_cap` 0).
    pub work_kicks: u64,
    /// User irqchip: of `plain_wakes`, those for an interrupt or IPI (one
    /// made on this vCPU's own thread needs none).
    pub irq_wakes: u64,
    /// User irqchip: of `signal_kicks`, those for an interrupt or IPI while
    /// the guest ran.
    pub irq_kicks: u64,
    /// User irqchip: guest HLTs that exited to this thread.
    pub hlt_exits: u64,
    /// User irqchip: time spent halted in userspace (working or waiting), ns.
    pub halted_ns: u64,
    /// User irqchip: interrupts injected with `KVM_INTERRUPT`.
    pub injected: u64,
    /// User irqchip: EOIs the guest made through KVM's PV EOI, without an
    /// exit (the others are EOI register writes, counted in `mmio_exits`).
    pub pv_eois: u64,
    /// User irqchip: NMIs injected.
    pub nmis: u64,
    /// User irqchip: `KVM_EXIT_IRQ_WINDOW_OPEN` exits.
    pub irq_window_exits: u64,
    /// User irqchip: LAPIC timer interrupts raised.
    pub timer_irqs: u64,
    /// User irqchip: the latest a timer interrupt was raised after its
    /// deadline (the VMM noticed it late), ns.
    pub timer_late_max_ns: u64,
    /// User irqchip: halts whose wake came while the thread polled for it
    /// (no sleep; see `halt_poll`).
    pub halt_polls_ok: u64,
    /// User irqchip: time spent polling in halts, ns.
    pub halt_poll_ns: u64,
    /// User irqchip: work runs in a guest halt that found work (a subset of
    /// `idle_runs`).
    pub halt_runs: u64,
    /// User irqchip: items those runs finished.
    pub halt_items: u64,
    /// User irqchip: work runs in a halt whose budget was cut short so that
    /// they end by the LAPIC timer's deadline.
    pub idle_runs_clamped: u64,
    /// User irqchip: the furthest a work run in a halt ended past the timer
    /// deadline (the last item's overrun), ns.
    pub timer_overrun_max_ns: u64,
    /// Work runs at a notify exit, for a guest guessed to wait for its I/O
    /// (see `io_wait`; a subset of `idle_runs`).
    pub notify_runs: u64,
    /// Items those runs finished.
    pub notify_items: u64,
}

impl VcpuStats {
    /// Counts one run of engine work on this thread that found some;
    /// `clamped` if its budget was cut to the APIC timer's deadline, `late`
    /// how far past that deadline it ended (ns), if there was one.
    fn count_idle_run(&mut self, report: &idlework::IdleReport, clamped: bool, late: Option<u64>) {
        self.idle_runs += 1;
        self.idle_items += report.items;
        self.idle_busy_ns += report.busy.as_nanos() as u64;
        if clamped {
            self.idle_runs_clamped += 1;
        }
        if let Some(late) = late {
            self.timer_overrun_max_ns = self.timer_overrun_max_ns.max(late);
        }
    }
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
    /// The VM's userspace irqchip, if it has one (`--irqchip user`).
    pub irqchip: Option<Arc<UserIrqChip>>,
    /// Guest memory (the userspace irqchip's PV EOI areas are there).
    pub mem: Arc<GuestMemory>,
    /// Under idle, serve a notify's work at its exit when the guest halted or
    /// notified again this soon after its previous one (zero: never; see
    /// `io_wait`).
    pub io_wait: Duration,
    /// `--halt-poll-ns`: the most a halt polls (user irqchip; KVM's
    /// parameter otherwise), or None for the host's.
    pub halt_poll_ns: Option<u32>,
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
    /// This vCPU's part of the userspace irqchip.
    irq: Option<UserIrq>,
    /// The guest is in a HLT the thread left for a request (user irqchip):
    /// whether it halted with interrupts enabled.
    halted: Option<bool>,
    /// How long a halt polls before the thread sleeps (user irqchip).
    halt_poll: HaltPoll,
    /// Whether the guest waits for the I/O it notifies.
    io_wait: IoWaitGuess,
}

enum Outcome {
    Continue,
    /// An MMIO write was handled: it may have queued device work.
    Wrote,
    /// A QueueNotify write was handled: it may have queued device work. With
    /// the instant it exited if this thread offered to serve that work
    /// itself (`io_wait`).
    Notified(Option<Instant>),
    Interrupted,
    /// The guest executed HLT (user irqchip only).
    Halted,
    End(ExitReason),
}

impl Vcpu {
    /// A vCPU around a configured KVM vCPU fd.
    pub fn new(index: u8, fd: VcpuFd, ctx: VcpuContext) -> Self {
        let stats = VcpuStats {
            vcpu: index,
            ..Default::default()
        };
        let irq = ctx
            .irqchip
            .as_ref()
            .and_then(|chip| UserIrq::new(chip.clone(), index, ctx.mem.clone()));
        let halt_poll = HaltPoll::from_host(ctx.halt_poll_ns);
        let io_wait = IoWaitGuess::new(ctx.io_wait);
        Vcpu {
            index,
            fd,
            ctx,
            stats,
            executor: None,
            idle_timer: None,
            self_kick_delay: Duration::ZERO,
            irq,
            halted: None,
            halt_poll,
            io_wait,
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
        OWN_CONTROL.with(|c| c.set(Arc::as_ptr(&control) as usize));
        let kvm_stats = KvmStats::open(&self.fd)
            .inspect_err(|e| tracing::warn!("vcpu{}: no KVM statistics: {e}", self.index))
            .ok();
        if let Some(irq) = self.irq.as_mut() {
            irq.start_on_thread(control.clone());
        }
        self.executor = self.register_executor(kvm_stats.as_ref(), &control);
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
        if self.irq.is_some() {
            // KVM never sees these HLTs: ours are the halts.
            self.stats.halt_exits = self.stats.hlt_exits;
            self.stats.halt_wait_ns = self.stats.halted_ns;
        } else if let Some(s) = &kvm_stats {
            self.stats.halt_exits = s.read("halt_exits").unwrap_or(0);
            self.stats.halt_wait_ns = s.read("halt_wait_ns").unwrap_or(0);
        }
        self.stats.signal_kicks = control.signal_kicks.load(Ordering::Relaxed);
        self.stats.plain_wakes = control.plain_wakes.load(Ordering::Relaxed);
        self.stats.work_wakes = control.work_wakes.load(Ordering::Relaxed);
        self.stats.work_kicks = control.work_kicks.load(Ordering::Relaxed);
        self.stats.irq_wakes = control.irq_wakes.load(Ordering::Relaxed);
        self.stats.irq_kicks = control.irq_kicks.load(Ordering::Relaxed);
        control.kicker.thread_exiting();
        OWN_CONTROL.with(|c| c.set(0));
        drop(binding);
        self.stats
    }

    /// Becomes an idle executor of the VM's engine, if there is one: seen
    /// idle through KVM's `blocking` statistic (kernel irqchip) or its own
    /// userspace halt (user irqchip).
    fn register_executor(
        &self,
        stats: Option<&KvmStats>,
        control: &Arc<VcpuControl>,
    ) -> Option<idlework::Executor> {
        let engine = self.ctx.engine.as_ref()?;
        let name = format!("vcpu{}", self.index);
        if self.irq.is_some() {
            let config = engine.config();
            let may_force = config.cpu_cap == Some(0);
            let hooks = UserIdleHooks::new(control.clone(), may_force);
            return Some(engine.register_executor(name, hooks));
        }
        let blocking = stats
            .ok_or_else(|| "no KVM statistics".to_string())
            .and_then(|s| s.reader("blocking").map_err(|e| e.to_string()));
        match blocking {
            Ok(blocking) => {
                let hooks = KernelIdleHooks::new(blocking, control.clone());
                Some(engine.register_executor(name, hooks))
            }
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
        // Under the user irqchip a halted guest never is in KVM_RUN: one that
        // was interrupted there is running.
        let halted = self.irq.is_none()
            && self
                .fd
                .get_mp_state()
                .is_ok_and(|s| s.mp_state == KVM_MP_STATE_HALTED);
        if halted {
            self.io_wait.halted(Instant::now());
        }
        // A forced kick brings overdue work the CPU cap leaves no worker for.
        let take = halted || executor.forced();
        let budget = if take {
            executor.budget()
        } else {
            Duration::ZERO
        };
        let report = executor.run_idle(budget);
        if !take && report.kicked {
            self.stats.declined_kicks += 1;
        }
        if report.items > 0 {
            self.stats.count_idle_run(&report, false, None);
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
            if self.irq.is_some() {
                // From here on, news for this vCPU comes with a kick; what
                // came before is looked at below (requests, work, interrupts).
                self.fd.set_kvm_immediate_exit(0);
                control.set_place(Place::InGuest);
            }
            match control.take() {
                Some(Request::Pause) => return self.leave(control, VcpuState::Paused),
                Some(Request::Stop) => return self.leave(control, VcpuState::Exited),
                Some(Request::Resume) | None => {}
            }
            if self.halted.is_some() {
                self.idle_in_userspace(control);
                continue;
            }
            if let Some(irq) = self.irq.as_mut() {
                if control.take_work_offer() {
                    control.set_place(Place::Outside);
                    self.run_idle_work();
                    continue;
                }
                if irq.before_entry(&mut self.fd, &mut self.stats) == Entry::WaitForSipi {
                    self.wait_for_sipi(control);
                    continue;
                }
            }
            let outcome = self.run_once();
            control.set_place(Place::Outside);
            match outcome {
                Outcome::Continue => {}
                Outcome::Wrote => self.come_back_for_work(None),
                Outcome::Notified(offered) => {
                    if !self.serve_own_notify(control, offered) {
                        self.come_back_for_work(None);
                    }
                }
                Outcome::Interrupted => {
                    self.stats.interrupted += 1;
                    self.fd.set_kvm_immediate_exit(0);
                    if self.irq.is_none() {
                        self.run_idle_work();
                    }
                }
                Outcome::Halted => self.idle_in_userspace(control),
                Outcome::End(reason) => {
                    self.ctx.exit.report(reason);
                    return VcpuState::Exited;
                }
            }
        }
    }

    fn leave(&self, control: &VcpuControl, next: VcpuState) -> VcpuState {
        control.set_place(Place::Outside);
        next
    }

    /// One `KVM_RUN` and the handling of its exit.
    fn run_once(&mut self) -> Outcome {
        self.stats.exits += 1;
        let index = self.index;
        let exit = self.fd.run();
        if let Some(irq) = self.irq.as_mut() {
            irq.after_exit(&mut self.stats);
        }
        match exit {
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
                match &self.irq {
                    Some(irq) if in_lapic_page(addr) => irq.lapic_read(addr - LAPIC_START, data),
                    _ => {
                        self.ctx.mmio.read(addr, data);
                    }
                }
                Outcome::Continue
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                self.stats.mmio_exits += 1;
                match &self.irq {
                    Some(irq) if in_lapic_page(addr) => {
                        irq.lapic_write(addr - LAPIC_START, data);
                        Outcome::Continue
                    }
                    _ if Slot::is_queue_notify(addr) => {
                        let offered = Self::offer_to_serve(&self.io_wait, self.executor.as_ref());
                        self.ctx.mmio.write(addr, data);
                        Outcome::Notified(offered)
                    }
                    _ => {
                        self.ctx.mmio.write(addr, data);
                        Outcome::Wrote
                    }
                }
            }
            Ok(VcpuExit::Intr) => Outcome::Interrupted,
            Ok(VcpuExit::Hlt) if self.irq.is_some() => Outcome::Halted,
            Ok(VcpuExit::IrqWindowOpen) if self.irq.is_some() => {
                self.stats.irq_window_exits += 1;
                Outcome::Continue
            }
            // The TPR is read back from kvm_run.cr8 before every entry.
            Ok(VcpuExit::SetTpr) if self.irq.is_some() => Outcome::Continue,
            // Only the MSRs the VM routed here (PV EOI, user irqchip) exit.
            Ok(VcpuExit::X86Wrmsr(msr)) => {
                let done = match self.irq.as_mut() {
                    Some(irq) => irq.write_msr(msr.index, msr.data),
                    None => Err(MsrError::Unknown(msr.index)),
                };
                if let Err(e) = done {
                    // Guest-chosen: debug level only, so it cannot flood the log.
                    tracing::debug!(
                        "vcpu{index}: WRMSR {:#x} = {:#x}: {e}; #GP",
                        msr.index,
                        msr.data
                    );
                    *msr.error = 1;
                }
                Outcome::Continue
            }
            Ok(VcpuExit::X86Rdmsr(msr)) => {
                let value = match self.irq.as_ref() {
                    Some(irq) => irq.read_msr(msr.index),
                    None => Err(MsrError::Unknown(msr.index)),
                };
                match value {
                    Ok(v) => *msr.data = v,
                    Err(e) => {
                        tracing::debug!("vcpu{index}: RDMSR {:#x}: {e}; #GP", msr.index);
                        *msr.error = 1;
                    }
                }
                Outcome::Continue
            }
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
                if internal.suberror == KVM_INTERNAL_ERROR_EMULATION {
                    let regs = self.fd.get_regs().unwrap_or_default();
                    let sregs = self.fd.get_sregs().unwrap_or_default();
                    let failure = EmulationFailure::new(
                        index,
                        &regs,
                        &sregs,
                        &internal.data[..n],
                        self.describe_registers(),
                    );
                    return Outcome::End(ExitReason::EmulationFailure(Box::new(failure)));
                }
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

/// Whether `addr` is in the local APIC page (each vCPU sees its own there).
fn in_lapic_page(addr: u64) -> bool {
    (LAPIC_START..LAPIC_START + crate::irqchip::lapic::LAPIC_SIZE).contains(&addr)
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

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_run;
    use std::sync::mpsc;

    /// A helper thread stands in for the vCPU thread: it publishes where it
    /// is when asked and reports whether a kick reached it.
    #[test]
    fn news_reaches_a_thread_the_cheapest_way_for_where_it_is() {
        kick::install_handler().unwrap();
        let (tx, rx) = mpsc::channel();
        let (go_tx, go_rx) = mpsc::channel::<Place>();
        let (done_tx, done_rx) = mpsc::channel::<u8>();
        let t = std::thread::spawn(move || {
            let mut run = Box::new(kvm_run::default());
            // SAFETY: `run` outlives the binding, dropped on this thread first.
            let _binding = unsafe { ThreadBinding::bind(&mut *run) };
            let control = Arc::new(VcpuControl::new(Kicker::for_current_thread()));
            OWN_CONTROL.with(|c| c.set(Arc::as_ptr(&control) as usize));
            tx.send(control.clone()).unwrap();
            while let Ok(place) = go_rx.recv() {
                control.set_place(place);
                // News from the thread itself needs no wake.
                assert_eq!(control.tell(true), Told::Nothing);
                // SAFETY: plain read of our own struct, written by the handler.
                let kicked = unsafe { std::ptr::addr_of!(run.immediate_exit).read_volatile() };
                done_tx.send(kicked).unwrap();
            }
            control.kicker.thread_exiting();
        });
        let control = rx.recv().unwrap();
        let at = |place| {
            go_tx.send(place).unwrap();
            done_rx.recv().unwrap()
        };

        at(Place::Halted);
        assert_eq!(control.tell(true), Told::Woken);
        control.offer_work(false);
        assert_eq!(control.work_wakes.load(Ordering::Relaxed), 1);
        assert_eq!(control.plain_wakes.load(Ordering::Relaxed), 2);
        assert!(control.take_work_offer());
        assert!(!control.take_work_offer());

        at(Place::Outside);
        assert_eq!(
            control.tell(true),
            Told::Nothing,
            "it looks before entering"
        );

        at(Place::InGuest);
        // Work is never handed over by a signal unless the engine may force it.
        control.offer_work(false);
        assert_eq!(control.work_kicks.load(Ordering::Relaxed), 0);
        assert_eq!(control.signal_kicks.load(Ordering::Relaxed), 0);
        assert_eq!(control.tell(true), Told::Kicked);
        assert_eq!(control.signal_kicks.load(Ordering::Relaxed), 1);
        // The signal landed on the vCPU thread: its next KVM_RUN returns at once.
        assert_eq!(at(Place::InGuest), 1);
        drop(go_tx);
        t.join().unwrap();
    }

    #[test]
    fn a_wait_ends_at_a_wake_newer_than_the_one_it_saw_or_its_deadline() {
        let control = VcpuControl::new(Kicker::for_current_thread());
        let seen = control.generation();
        control.bump();
        // Already woken since `seen`: returns at once.
        control.wait_for_wake(seen, None);
        let seen = control.generation();
        control.wait_for_wake(seen, Some(Instant::now() + Duration::from_millis(1)));
        control.kicker.thread_exiting();
    }
}
