//! Interrupt and exception entry stubs (CPL0) and what CPL3 sees of them.
//!
//! Device interrupts (vectors `idt::IRQ_VECTOR_BASE..+16`) only count: the stub increments
//! the CPU's `KernelCpu::irq_count[slot]` and `irq_total`, sends the LAPIC EOI (or, when
//! the hypervisor offers it, clears the PV EOI bit instead: no exit) and returns — eleven
//! instructions. CPL3 code waits for a count to change with `wait::wait_irq`.
//!
//! CPU exceptions are recorded in the CPU's `KernelCpu::fault`. One raised at CPL3 is
//! turned into a call of [`fault_report`] at CPL3, which prints a `fault` line and exits
//! with [`FAULT_STATUS`]. One raised at CPL0 (or while reporting) is unrecoverable and ends
//! in a triple fault (`guest_shutdown`), i.e. a shutdown the VMM sees.

use core::mem::offset_of;
use core::sync::atomic::Ordering;

use crate::cpu::{self, FaultRecord, KernelCpu, IRQ_SLOTS};
use crate::{apic, println, serial, service};

/// Exit status after a CPL3 exception.
pub const FAULT_STATUS: u32 = 0xF1;

core::arch::global_asm!(
    ".pushsection .text.cpl0, \"ax\"",
    // Exceptions: push a 0 error code where the CPU pushes none, then the vector.
    ".macro EXCEPTION_STUB vector, error_code",
    "exception_\\vector:",
    ".if \\error_code == 0",
    "    pushq $0",
    ".endif",
    "    pushq $\\vector",
    "    jmp fault_entry",
    ".endm",
    ".irp v, 0,1,2,3,4,5,6,7,9,15,16,18,19,20,22,23,24,25,26,27,28,31",
    "    EXCEPTION_STUB \\v, 0",
    ".endr",
    ".irp v, 8,10,11,12,13,14,17,21,29,30",
    "    EXCEPTION_STUB \\v, 1",
    ".endr",
    "",
    // Device interrupts: count, EOI, return. The KernelCpu is at the base of the
    // (size-aligned) kernel stack.
    ".macro IRQ_STUB slot",
    "irq_\\slot:",
    "    push %rax",
    "    mov %rsp, %rax",
    "    and ${kstack_mask}, %rax",
    "    incq ({irq_count} + 8 * \\slot)(%rax)",
    "    incq {irq_total}(%rax)",
    // PV EOI: if the hypervisor set bit 0, clearing it is the EOI.
    "    btrl $0, {pv_eoi}(%rax)",
    "    jc 1f",
    "    mov ${lapic_eoi}, %eax",
    "    movl $0, (%rax)",
    "1:  pop %rax",
    "    iretq",
    ".endm",
    ".irp s, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15",
    "    IRQ_STUB \\s",
    ".endr",
    "",
    // Spurious LAPIC interrupts need no EOI.
    ".globl spurious_entry",
    "spurious_entry:",
    "    iretq",
    "",
    // Stack: rdx, rax, vector, error, rip, cs, rflags, rsp, ss.
    "fault_entry:",
    "    push %rax",
    "    push %rdx",
    "    mov %rsp, %rdx",
    "    and ${kstack_mask}, %rdx",
    "    incq {f_count}(%rdx)",
    "    mov 16(%rsp), %rax",
    "    mov %rax, {f_vector}(%rdx)",
    "    mov 24(%rsp), %rax",
    "    mov %rax, {f_error}(%rdx)",
    "    mov 32(%rsp), %rax",
    "    mov %rax, {f_rip}(%rdx)",
    "    mov 40(%rsp), %rax",
    "    mov %rax, {f_cs}(%rdx)",
    "    mov 48(%rsp), %rax",
    "    mov %rax, {f_rflags}(%rdx)",
    "    mov 56(%rsp), %rax",
    "    mov %rax, {f_rsp}(%rdx)",
    "    mov %cr2, %rax",
    "    mov %rax, {f_cr2}(%rdx)",
    "    testb $3, 40(%rsp)",
    "    jz guest_shutdown",          // raised at CPL0: unrecoverable
    "    cmpq $1, {f_count}(%rdx)",
    "    jne guest_shutdown",         // raised while reporting an earlier one
    // Resume CPL3 in fault_report(kcpu) on the faulting stack, below the red zone.
    "    lea {report}(%rip), %rax",
    "    mov %rax, 32(%rsp)",
    "    andq $~0x400, 48(%rsp)",     // DF clear, as the ABI requires at a call
    "    mov 56(%rsp), %rax",
    "    sub $512, %rax",
    "    and $-16, %rax",
    "    sub $8, %rax",
    "    mov %rax, 56(%rsp)",
    "    mov %rdx, %rdi",
    "    pop %rdx",
    "    pop %rax",
    "    add $16, %rsp",
    "    iretq",
    "",
    // Triple fault: no IDT, then an exception. The VMM sees a shutdown.
    ".globl guest_shutdown",
    "guest_shutdown:",
    "    cli",
    "    lidt null_idtr(%rip)",
    "    ud2",
    "    jmp guest_shutdown",
    ".popsection",
    "",
    ".pushsection .rodata.stub_tables, \"a\"",
    ".balign 8",
    "exception_stub_table:",
    ".irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31",
    "    .quad exception_\\v",
    ".endr",
    "irq_stub_table:",
    ".irp s, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15",
    "    .quad irq_\\s",
    ".endr",
    ".popsection",
    kstack_mask = const -(cpu::KERNEL_STACK_SIZE as i64),
    irq_count = const offset_of!(KernelCpu, irq_count),
    irq_total = const offset_of!(KernelCpu, irq_total),
    pv_eoi = const offset_of!(KernelCpu, pv_eoi),
    lapic_eoi = const apic::EOI_ADDRESS,
    f_count = const offset_of!(KernelCpu, fault) + offset_of!(FaultRecord, count),
    f_vector = const offset_of!(KernelCpu, fault) + offset_of!(FaultRecord, vector),
    f_error = const offset_of!(KernelCpu, fault) + offset_of!(FaultRecord, error),
    f_rip = const offset_of!(KernelCpu, fault) + offset_of!(FaultRecord, rip),
    f_cs = const offset_of!(KernelCpu, fault) + offset_of!(FaultRecord, cs),
    f_rflags = const offset_of!(KernelCpu, fault) + offset_of!(FaultRecord, rflags),
    f_rsp = const offset_of!(KernelCpu, fault) + offset_of!(FaultRecord, rsp),
    f_cr2 = const offset_of!(KernelCpu, fault) + offset_of!(FaultRecord, cr2),
    report = sym fault_report,
    options(att_syntax),
);

const _: () = assert!(IRQ_SLOTS == 16);

extern "C" {
    static exception_stub_table: [u64; 32];
    static irq_stub_table: [u64; IRQ_SLOTS];
    fn spurious_entry();
}

/// Addresses of the exception stubs, by vector.
pub fn exception_stubs() -> &'static [u64; 32] {
    // SAFETY: a read-only table defined in the assembly above.
    unsafe { &*core::ptr::addr_of!(exception_stub_table) }
}

/// Addresses of the device-interrupt stubs, by slot.
pub fn irq_stubs() -> &'static [u64; IRQ_SLOTS] {
    // SAFETY: a read-only table defined in the assembly above.
    unsafe { &*core::ptr::addr_of!(irq_stub_table) }
}

/// Address of the spurious-interrupt stub.
pub fn spurious_entry_address() -> u64 {
    spurious_entry as *const () as u64
}

/// Entered at CPL3 (from `fault_entry`) after an exception raised at CPL3. `kcpu` is the
/// address of the faulting CPU's `KernelCpu`.
extern "C" fn fault_report(kcpu: usize) -> ! {
    let base = cpu::KERNEL_STACKS.as_ptr() as usize;
    let index = kcpu.wrapping_sub(base) / cpu::KERNEL_STACK_SIZE;
    let f = &cpu::kernel(index).fault;
    let get = |v: &core::sync::atomic::AtomicU64| v.load(Ordering::Relaxed);
    serial::break_lock(index);
    println!(
        "fault cpu={} vector={} error={:#x} rip={:#x} rsp={:#x} cr2={:#x} cs={:#x} rflags={:#x}",
        index,
        get(&f.vector),
        get(&f.error),
        get(&f.rip),
        get(&f.rsp),
        get(&f.cr2),
        get(&f.cs),
        get(&f.rflags),
    );
    service::exit(FAULT_STATUS)
}
