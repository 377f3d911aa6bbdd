//! Per-CPU storage: kernel stacks (with the state CPL0 keeps for each CPU at their base) and
//! user stacks.
//!
//! A CPU is identified by its index (0 = BSP, then APs in start order), not its APIC ID.
//! Neither privilege level needs a per-CPU register: CPL0 stubs find their CPU's
//! [`KernelCpu`] by rounding the stack pointer down to the kernel-stack alignment, and
//! CPL3 code finds its index from the user stack pointer ([`current`]).

use core::cell::UnsafeCell;
use core::mem::size_of;
use core::sync::atomic::{AtomicU32, AtomicU64};

pub use testguest::MAX_CPUS;

/// Size and alignment of each kernel stack (a power of two; CPL0 masks `rsp` with it).
pub const KERNEL_STACK_SIZE: usize = 16 * 1024;
/// Size of each user (CPL3) stack.
pub const USER_STACK_SIZE: usize = 64 * 1024;

/// Device interrupt vectors counted per CPU: `idt::IRQ_VECTOR_BASE..+IRQ_SLOTS`.
pub const IRQ_SLOTS: usize = 16;

/// What the last CPU exception looked like (written by the CPL0 fault stub).
#[repr(C)]
pub struct FaultRecord {
    /// Exceptions taken on this CPU so far.
    pub count: AtomicU64,
    pub vector: AtomicU64,
    pub error: AtomicU64,
    pub rip: AtomicU64,
    pub cs: AtomicU64,
    pub rflags: AtomicU64,
    pub rsp: AtomicU64,
    pub cr2: AtomicU64,
}

/// Per-CPU state shared between CPL0 stubs (writers) and CPL3 code on the same CPU
/// (readers). Lives at the base of the CPU's kernel stack.
#[repr(C)]
pub struct KernelCpu {
    /// Interrupts taken per device vector slot (slot 0 is the LAPIC timer).
    pub irq_count: [AtomicU64; IRQ_SLOTS],
    /// Interrupts taken in all slots: the epoch a halt compares with (see
    /// `wait::halt_since`), so one that arrives between CPL3's last look and
    /// its HLT is not slept through.
    pub irq_total: AtomicU64,
    /// KVM's PV EOI area ([`crate::pv_eoi`]): bit 0 set by the hypervisor means the
    /// next EOI may be skipped; the interrupt stubs clear it instead of writing the
    /// LAPIC's EOI register.
    pub pv_eoi: AtomicU32,
    pub fault: FaultRecord,
}

/// One CPU's kernel stack; the stack grows down towards `cpu`.
#[repr(C, align(16384))]
pub struct KernelStack {
    pub cpu: KernelCpu,
    _stack: UnsafeCell<[u8; KERNEL_STACK_SIZE - size_of::<KernelCpu>()]>,
}

const _: () = assert!(size_of::<KernelStack>() == KERNEL_STACK_SIZE);
const _: () = assert!(core::mem::align_of::<KernelStack>() == KERNEL_STACK_SIZE);

// SAFETY: the stack bytes are only used by CPL0 code on the owning CPU, never through Rust
// references; the shared fields are atomics.
unsafe impl Sync for KernelStack {}

impl KernelStack {
    #[allow(clippy::declare_interior_mutable_const)]
    const NEW: Self = Self {
        cpu: KernelCpu {
            irq_count: [const { AtomicU64::new(0) }; IRQ_SLOTS],
            irq_total: AtomicU64::new(0),
            pv_eoi: AtomicU32::new(0),
            fault: FaultRecord {
                count: AtomicU64::new(0),
                vector: AtomicU64::new(0),
                error: AtomicU64::new(0),
                rip: AtomicU64::new(0),
                cs: AtomicU64::new(0),
                rflags: AtomicU64::new(0),
                rsp: AtomicU64::new(0),
                cr2: AtomicU64::new(0),
            },
        },
        _stack: UnsafeCell::new([0; KERNEL_STACK_SIZE - size_of::<KernelCpu>()]),
    };
}

/// Kernel stacks, indexed by CPU index (referenced by `boot::cpu_start`).
pub static KERNEL_STACKS: [KernelStack; MAX_CPUS] = [KernelStack::NEW; MAX_CPUS];

/// One CPU's user stack.
#[repr(C, align(4096))]
pub struct UserStack(UnsafeCell<[u8; USER_STACK_SIZE]>);

// SAFETY: each stack is used only as the stack of its own CPU's CPL3 code.
unsafe impl Sync for UserStack {}

/// User stacks, indexed by CPU index. Not in `.bss` proper: the BSP zeroes `.bss` while
/// running on its user stack (see linker.ld).
#[link_section = ".bss.user_stacks"]
pub static USER_STACKS: [UserStack; MAX_CPUS] =
    [const { UserStack(UnsafeCell::new([0; USER_STACK_SIZE])) }; MAX_CPUS];

/// The calling CPU's index, from the user stack it runs on. CPL3 only.
pub fn current() -> usize {
    let sp: usize;
    // SAFETY: reads the stack pointer; no memory access, no side effects.
    unsafe {
        core::arch::asm!("mov {}, rsp", out(reg) sp, options(nomem, nostack, preserves_flags))
    };
    let base = USER_STACKS.as_ptr() as usize;
    (sp.wrapping_sub(base) / USER_STACK_SIZE).min(MAX_CPUS - 1)
}

/// CPU `cpu`'s kernel-side state.
pub fn kernel(cpu: usize) -> &'static KernelCpu {
    &KERNEL_STACKS[cpu.min(MAX_CPUS - 1)].cpu
}
