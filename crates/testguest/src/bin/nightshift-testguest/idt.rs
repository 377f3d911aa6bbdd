//! Interrupt descriptor table: one table shared by all CPUs.
//!
//! The IDT is plain memory that the processor reads only when it delivers an interrupt, so
//! the BSP fills it in at CPL3 ([`init`]), natively, before anything can raise one; CPL0
//! only loads IDTR (`boot::cpu_start`). An exception before [`init`] ends in a triple
//! fault, which is what the guest would do anyway.

use core::cell::UnsafeCell;

use crate::{gdt, interrupts, service};

/// First device-interrupt vector; slot `n` of `KernelCpu::irq_count` counts `BASE + n`.
pub const IRQ_VECTOR_BASE: u8 = 0x30;

/// A device-interrupt slot: vector `IRQ_VECTOR_BASE + slot`, counted per CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IrqSlot(usize);

impl IrqSlot {
    /// LAPIC timer, as the `idle` workload's tick.
    pub const TICK: IrqSlot = IrqSlot(0);
    /// Wake-up IPI between CPUs.
    pub const WAKE: IrqSlot = IrqSlot(1);
    /// LAPIC timer, as the timeout of `wait::halt_until`.
    pub const TIMEOUT: IrqSlot = IrqSlot(2);

    /// Device interrupts: virtio-mmio device `n` (`n < DEVICE_SLOTS`), vectors 0x33 and up.
    pub const fn device(n: usize) -> IrqSlot {
        IrqSlot(3 + n)
    }

    /// How many [`device`](Self::device) slots there are.
    pub const DEVICE_SLOTS: usize = crate::cpu::IRQ_SLOTS - 3;

    /// Index into `KernelCpu::irq_count`.
    pub const fn index(self) -> usize {
        self.0
    }

    /// The interrupt vector.
    pub const fn vector(self) -> u8 {
        IRQ_VECTOR_BASE + self.0 as u8
    }
}
/// The service-call vector (`int3`, DPL 3).
pub const SERVICE_VECTOR: u8 = 3;
/// The LAPIC spurious-interrupt vector.
pub const SPURIOUS_VECTOR: u8 = 0xFF;

/// 64-bit interrupt gate, present, DPL 0 (IF cleared on entry).
const GATE_KERNEL: u64 = 0x8E;
/// As [`GATE_KERNEL`] but callable from CPL3 with `int`.
const GATE_USER: u64 = 0xEE;

/// 256 gates of two quadwords each.
#[repr(C, align(4096))]
pub struct Idt(UnsafeCell<[u64; 512]>);

// SAFETY: written once by the BSP in `init` before any CPU can take an interrupt, then
// only read by the processors.
unsafe impl Sync for Idt {}

/// The IDT (referenced by `idtr`).
pub static IDT: Idt = Idt(UnsafeCell::new([0; 512]));

// IDTR for `lidt`, and an empty one used to force a triple fault (`interrupts::shutdown`).
core::arch::global_asm!(
    ".pushsection .data.idtr, \"aw\"",
    ".balign 8",
    ".globl idtr",
    "idtr:",
    ".word 4095",
    ".quad {idt}",
    ".balign 8",
    ".globl null_idtr",
    "null_idtr:",
    ".word 0",
    ".quad 0",
    ".popsection",
    idt = sym IDT,
);

fn set_gate(vector: u8, handler: u64, kind: u64) {
    let lo = (handler & 0xffff)
        | (u64::from(gdt::KERNEL_CS) << 16)
        | (kind << 40)
        | ((handler >> 16) & 0xffff) << 48;
    let hi = handler >> 32;
    let idt = IDT.0.get().cast::<u64>();
    let i = usize::from(vector) * 2;
    // SAFETY: `i + 1 < 512`; see `Idt`'s Sync impl for why there is no concurrent access.
    unsafe {
        idt.add(i).write_volatile(lo);
        idt.add(i + 1).write_volatile(hi);
    }
}

/// Fills in the IDT: exceptions, device vectors, the service call and the spurious
/// vector. Other vectors stay not-present (#GP if raised). BSP, CPL3, before any
/// interrupt can be raised.
pub fn init() {
    for (vector, &stub) in interrupts::exception_stubs().iter().enumerate() {
        set_gate(vector as u8, stub, GATE_KERNEL);
    }
    for (slot, &stub) in interrupts::irq_stubs().iter().enumerate() {
        set_gate(IRQ_VECTOR_BASE + slot as u8, stub, GATE_KERNEL);
    }
    set_gate(SERVICE_VECTOR, service::entry(), GATE_USER);
    set_gate(
        SPURIOUS_VECTOR,
        interrupts::spurious_entry_address(),
        GATE_KERNEL,
    );
}
