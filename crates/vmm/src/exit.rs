//! Why a VM stopped, and the one-shot signal that carries it to whoever waits.
//!
//! Exit statuses: a guest exit-port status as given; ACPI power-off 0; the
//! console's quit escape 0; reset (ACPI reset register or i8042) 123; shutdown
//! (triple fault) 125; emulation failure and other KVM internal errors 126;
//! host failures 127.
//!
//! The signal is an eventfd, not a condition variable, because one reporter
//! is a signal handler: a thread that makes a system call its seccomp filter
//! forbids gets SIGSYS, and its handler may only store atomics and write(2)
//! (see [`crate::seccomp`]). [`ExitSignal::report_trap`] is that path.

use std::fmt;
use std::sync::atomic::{AtomicI32, AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;

use vmm_sys_util::eventfd::EventFd;

use crate::memory::GuestMemory;
use kvm_bindings::{kvm_regs, kvm_sregs};

use crate::page_walk::Paging;

/// Process exit status of a guest-requested reset.
pub const RESET_EXIT_CODE: i32 = 123;
/// Longest x86 instruction.
pub const MAX_INSN_LEN: usize = 15;

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
    /// The guest powered off through ACPI (sleep state S5).
    PowerOff,
    /// The guest asked for a reset; the device it used is named.
    Reset(&'static str),
    /// KVM could not emulate a guest instruction (on PVM: some instructions
    /// in guest kernel mode, e.g. `int3`, `xrstor64`, `cmpxchg16b`).
    EmulationFailure(Box<EmulationFailure>),
    /// The operator typed the console's quit escape (Ctrl-A x).
    ConsoleQuit,
}

/// Where an emulation failure happened and which instruction it was.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EmulationFailure {
    /// Which vCPU.
    pub vcpu: u8,
    /// The faulting instruction's RIP.
    pub rip: u64,
    /// Its linear address (CS base + RIP outside 64-bit mode).
    pub linear: u64,
    /// The CPL it ran at.
    pub cpl: u8,
    /// How the guest translated addresses then.
    pub paging: Paging,
    /// The instruction bytes: from KVM's exit if it gave them, else read from
    /// guest memory through the guest's page tables (see [`Self::read_instruction`]).
    pub insn: Option<Vec<u8>>,
    /// Why the bytes could not be read, if they could not.
    pub insn_error: Option<String>,
    /// The registers, for the report.
    pub regs: String,
}

impl EmulationFailure {
    /// Reads the instruction bytes from guest memory if KVM did not give them.
    /// Called by the VM's owner once the vCPUs have stopped; every value it
    /// uses (RIP, CR3, table entries) is guest-controlled and checked.
    pub fn read_instruction(&mut self, mem: &GuestMemory) {
        if self.insn.is_some() {
            return;
        }
        match self.paging.read_virt(mem, self.linear, MAX_INSN_LEN) {
            Ok(bytes) => self.insn = Some(bytes),
            Err(e) => self.insn_error = Some(e.to_string()),
        }
    }

    /// The failure KVM reported on `vcpu` with these registers. `data` is the
    /// exit's `internal.data[..ndata]`: with
    /// `KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES` set in `data[0]`,
    /// `data[1..3]` hold the instruction's length and bytes.
    pub fn new(
        vcpu: u8,
        regs: &kvm_regs,
        sregs: &kvm_sregs,
        data: &[u64],
        described: String,
    ) -> Self {
        let linear = if sregs.cs.l == 1 {
            regs.rip
        } else {
            sregs.cs.base.wrapping_add(regs.rip) & 0xffff_ffff
        };
        EmulationFailure {
            vcpu,
            rip: regs.rip,
            linear,
            cpl: sregs.cs.dpl,
            paging: Paging {
                cr0: sregs.cr0,
                cr3: sregs.cr3,
                cr4: sregs.cr4,
                efer: sregs.efer,
            },
            insn: kvm_insn_bytes(data),
            insn_error: None,
            regs: described,
        }
    }
}

/// The instruction bytes KVM put in an emulation-failure exit, if it did.
fn kvm_insn_bytes(data: &[u64]) -> Option<Vec<u8>> {
    const FLAG_INSTRUCTION_BYTES: u64 = 1;
    let (flags, rest) = data.split_first()?;
    if flags & FLAG_INSTRUCTION_BYTES == 0 || rest.len() < 2 {
        return None;
    }
    let raw: Vec<u8> = rest[..2].iter().flat_map(|w| w.to_le_bytes()).collect();
    let len = usize::from(raw[0]).min(MAX_INSN_LEN);
    (len > 0).then(|| raw[1..1 + len].to_vec())
}

impl fmt::Display for EmulationFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "emulation failure on vCPU {} at rip={:#x} (cpl {}), instruction bytes ",
            self.vcpu, self.rip, self.cpl
        )?;
        match (&self.insn, &self.insn_error) {
            (Some(b), _) => {
                let hex: Vec<String> = b.iter().map(|b| format!("{b:02x}")).collect();
                write!(f, "[{}]", hex.join(" "))?;
            }
            (None, Some(e)) => write!(f, "unreadable ({e})")?,
            (None, None) => write!(f, "not read")?,
        }
        write!(f, "; {}", self.regs)
    }
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
            ExitReason::PowerOff | ExitReason::ConsoleQuit => 0,
            ExitReason::Reset(_) => RESET_EXIT_CODE,
            ExitReason::EmulationFailure(_) => 126,
            ExitReason::Panic { .. } => 124,
            // As a shell shows a process killed by SIGSYS.
            ExitReason::Seccomp { .. } => 128 + libc::SIGSYS,
        }
    }

    /// Fills in what only guest memory can tell (the bytes of an instruction
    /// KVM could not emulate).
    pub fn with_guest_memory(mut self, mem: &GuestMemory) -> Self {
        if let ExitReason::EmulationFailure(e) = &mut self {
            e.read_instruction(mem);
        }
        self
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
            ExitReason::PowerOff => write!(f, "guest powered off (ACPI S5)"),
            ExitReason::Reset(how) => write!(f, "guest asked for a reset ({how})"),
            ExitReason::EmulationFailure(e) => write!(f, "{e}"),
            ExitReason::ConsoleQuit => write!(f, "quit from the console (Ctrl-A x)"),
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
    fn emulation_failure_names_rip_and_reads_the_bytes_through_paging() {
        use vm_memory::{Bytes, GuestAddress};
        let mem = crate::memory::create_guest_memory(16 << 20).unwrap();
        mem.write_slice(&[0xcc, 0x90], GuestAddress(0x20_0010))
            .unwrap();
        let mut e = EmulationFailure {
            vcpu: 0,
            rip: 0x20_0010,
            linear: 0x20_0010,
            cpl: 0,
            paging: Paging {
                cr0: 1,
                cr3: 0,
                cr4: 0,
                efer: 0,
            },
            insn: None,
            insn_error: None,
            regs: "rip=0x200010".into(),
        };
        let reason = ExitReason::EmulationFailure(Box::new(e.clone())).with_guest_memory(&mem);
        let text = reason.to_string();
        assert!(
            text.starts_with(
                "emulation failure on vCPU 0 at rip=0x200010 (cpl 0), instruction bytes [cc 90 00"
            ),
            "{text}"
        );
        assert_eq!(reason.exit_code(), 126);
        // A RIP outside RAM: the report says so instead of failing.
        e.linear = 0xff_0000_0000;
        e.read_instruction(&mem);
        assert!(e.insn.is_none() && e.insn_error.is_some());
        assert!(e.to_string().contains("unreadable"));
    }

    #[test]
    fn kvm_supplied_instruction_bytes_are_used_and_bounded() {
        // flags = 1, insn_size = 1, bytes = cc.
        assert_eq!(kvm_insn_bytes(&[1, 0xcc01, 0]), Some(vec![0xcc]));
        assert_eq!(kvm_insn_bytes(&[0, 0xcc01, 0]), None);
        assert_eq!(kvm_insn_bytes(&[1]), None);
        // A size beyond 15 is clamped, not trusted.
        assert_eq!(kvm_insn_bytes(&[1, 0xff, 0]).unwrap().len(), MAX_INSN_LEN);
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
