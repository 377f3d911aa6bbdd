//! Service calls: the only way from CPL3 into CPL0.
//!
//! A service call is `int3` (vector 3, #BP, through a DPL 3 interrupt gate, so IF is
//! clear inside) with the call number in `rax` and the arguments in `rdi`, `rsi`, `rdx`;
//! the dispatcher is a bounds check and an indirect jump through a table (3 CPL0
//! instructions before the call's own) and returns with `iretq`.
//!
//! Why `int3` and not `int 0x80` or `syscall`: on PVM, `int n` at CPL3 raises #UD (for
//! every n tried: 0x20, 0x80, 0x81, 0xF0) and `syscall` raises #GP, while the #BP trap of
//! `int3` reaches the guest's IDT like any exception. On hardware KVM all of them work;
//! `int3` is used everywhere so that there is one path. (At CPL0, `int3` would end the VM
//! with an emulation failure on PVM; CPL0 never executes it.) The round trip costs ~30 µs
//! on PVM (measure it with `workload=cpl0`), so CPL3 makes as few calls as it can.
//!
//! Port I/O is here too: PVM does not honour RFLAGS.IOPL at CPL3 (an `in`/`out` there
//! raises #GP, and RFLAGS reads back with IOPL 0), so CPL3 cannot reach the ports itself.

use core::arch::asm;

/// Exit port (see docs/guest-abi.md): a 32-bit `out` of the status.
pub const EXIT_PORT: u16 = 0xF4;

/// Service-call numbers (`rax`), indexing `service_table`.
#[repr(u64)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
    /// `sti; hlt` unless an interrupt was taken since the caller read the epoch `rdi`
    /// (`KernelCpu::irq_total`): return after the next interrupt has been handled, or at
    /// once. The gate clears IF, so the comparison and the HLT (in STI's shadow) cannot
    /// miss an interrupt in between.
    Idle = 0,
    /// Write `rdi` to the exit port, then halt for good.
    Exit = 1,
    /// Halt for good with interrupts disabled (a CPU that has finished).
    Stop = 2,
    /// Execute `ud2` at CPL0.
    Ud = 3,
    /// Triple fault: load an empty IDT and raise an exception.
    TripleFault = 4,
    /// Write the `rdx` (>= 1) bytes at `rsi` to port `rdi`, one `out` each.
    WriteBytes = 5,
    /// 32-bit `out` of `rsi` to port `rdi`.
    Out32 = 6,
    /// Return at once (measures the cost of a service call).
    Nop = 7,
    /// Run a two-instruction loop `rdi` (>= 1) times at CPL0 (measures the cost of a CPL0
    /// instruction).
    Spin = 8,
    /// CPUID leaf `rdi`, subleaf `rsi`, executed at CPL0: returns eax, ebx, ecx, edx in
    /// rax, rsi, rcx, rdx (what the guest kernel sees, which a VMM's CPUID table decides;
    /// CPL3's own CPUID may be answered differently by the platform).
    Cpuid = 9,
    /// Enable KVM's PV EOI on this CPU: write `MSR_KVM_PV_EOI_EN` with the physical address
    /// of its `KernelCpu::pv_eoi`, enabled.
    PvEoi = 10,
}

impl Call {
    /// Number of calls (size of the dispatch table).
    const COUNT: u64 = 11;
}

core::arch::global_asm!(
    ".pushsection .text.cpl0, \"ax\"",
    ".globl service_entry",
    "service_entry:",
    "    cmp ${calls}, %rax",
    "    jae 2f",
    "    jmp *service_table(, %rax, 8)",
    "2:  mov $-1, %rax",
    "    iretq",
    "",
    "service_idle:",
    "    mov %rsp, %rax",
    "    and ${kstack_mask}, %rax",
    "    cmp {irq_total}(%rax), %rdi",
    "    jne 4f",
    "    sti",
    "    hlt",
    "4:  iretq",
    "",
    "service_exit:",
    "    mov %edi, %eax",
    "    mov ${exit_port}, %dx",
    "    out %eax, %dx",
    ".globl halt_forever",
    "halt_forever:",
    "    cli",
    "    hlt",
    "    jmp halt_forever",
    "",
    "service_ud:",
    "    ud2",
    "",
    // A loop rather than `rep outsb`: PVM emulates the string instruction 3-6x slower
    // (measured: ~30-60 µs against ~9.5 µs per byte under QEMU).
    "service_write_bytes:",
    "    mov %rdx, %rcx",
    "    mov %edi, %edx",
    "3:  lodsb",
    "    out %al, %dx",
    "    dec %rcx",
    "    jnz 3b",
    "    iretq",
    "",
    "service_out32:",
    "    mov %esi, %eax",
    "    mov %edi, %edx",
    "    out %eax, %dx",
    "    iretq",
    "",
    "service_nop:",
    "    iretq",
    "",
    "service_spin:",
    "    dec %rdi",
    "    jnz service_spin",
    "    iretq",
    "",
    "service_cpuid:",
    "    mov %edi, %eax",
    "    mov %esi, %ecx",
    "    push %rbx",
    "    cpuid",
    "    mov %ebx, %esi",
    "    pop %rbx",
    "    iretq",
    "",
    // The identity map makes the field's virtual address its physical one.
    "service_pv_eoi:",
    "    mov %rsp, %rax",
    "    and ${kstack_mask}, %rax",
    "    lea ({pv_eoi} + 1)(%rax), %rax", // + 1: the enable bit (the field is 4-aligned)
    "    mov %rax, %rdx",
    "    shr $32, %rdx",
    "    mov ${pv_eoi_msr}, %ecx",
    "    wrmsr",
    "    iretq",
    ".popsection",
    "",
    // Indexed by `Call`.
    ".pushsection .rodata.service_table, \"a\"",
    ".balign 8",
    "service_table:",
    "    .quad service_idle",
    "    .quad service_exit",
    "    .quad halt_forever",
    "    .quad service_ud",
    "    .quad guest_shutdown",
    "    .quad service_write_bytes",
    "    .quad service_out32",
    "    .quad service_nop",
    "    .quad service_spin",
    "    .quad service_cpuid",
    "    .quad service_pv_eoi",
    ".popsection",
    calls = const Call::COUNT,
    exit_port = const EXIT_PORT,
    kstack_mask = const -(crate::cpu::KERNEL_STACK_SIZE as i64),
    irq_total = const core::mem::offset_of!(crate::cpu::KernelCpu, irq_total),
    pv_eoi = const core::mem::offset_of!(crate::cpu::KernelCpu, pv_eoi),
    pv_eoi_msr = const crate::pv_eoi::MSR_KVM_PV_EOI_EN,
    options(att_syntax),
);

extern "C" {
    fn service_entry();
}

/// Address of the dispatcher, for the IDT.
pub fn entry() -> u64 {
    service_entry as *const () as u64
}

/// Halts until the next interrupt has been handled on this CPU, unless one was handled
/// since the caller read `epoch` (this CPU's `KernelCpu::irq_total`); then returns at once.
pub fn idle(epoch: u64) {
    // SAFETY: the service-call gate switches to this CPU's kernel stack (the user stack is
    // untouched) and returns with all registers but rax preserved. Interrupt handlers
    // write memory (counters) that the caller may read afterwards, so no `nomem`.
    unsafe {
        asm!("int3", inlateout("rax") Call::Idle as u64 => _, in("rdi") epoch, options(nostack))
    };
}

/// Requests exit with `status` through the exit port; does not return (if the VMM ignores
/// the port, the CPU halts for good).
pub fn exit(status: u32) -> ! {
    // SAFETY: the call never returns.
    unsafe {
        asm!("int3", in("rax") Call::Exit as u64, in("rdi") u64::from(status), options(noreturn, nostack))
    }
}

/// Halts the calling CPU for good.
pub fn stop() -> ! {
    // SAFETY: the call never returns.
    unsafe { asm!("int3", in("rax") Call::Stop as u64, options(noreturn, nostack)) }
}

/// Executes `ud2` at CPL0; the #UD handler cannot recover and shuts the guest down.
pub fn ud() -> ! {
    // SAFETY: the call never returns.
    unsafe { asm!("int3", in("rax") Call::Ud as u64, options(noreturn, nostack)) }
}

/// Triple-faults the guest.
pub fn triple_fault() -> ! {
    // SAFETY: the call never returns.
    unsafe { asm!("int3", in("rax") Call::TripleFault as u64, options(noreturn, nostack)) }
}

/// Writes `bytes` to I/O port `port`, one byte at a time, in one service call.
pub fn write_bytes(port: u16, bytes: &[u8]) {
    if bytes.is_empty() {
        return;
    }
    // SAFETY: the CPL0 code reads `bytes.len()` (> 0) bytes at `bytes.as_ptr()`
    // (user-mapped, valid for the call) and writes them to the port; it clobbers rax, rcx,
    // rdx and rsi.
    unsafe {
        asm!("int3", inlateout("rax") Call::WriteBytes as u64 => _, in("rdi") u64::from(port),
             inlateout("rsi") bytes.as_ptr() => _, inlateout("rdx") bytes.len() => _,
             lateout("rcx") _, options(nostack, readonly));
    }
}

/// 32-bit `out` of `value` to I/O port `port`.
pub fn out32(port: u16, value: u32) {
    // SAFETY: a port write; the caller picks a port of the guest ABI.
    unsafe {
        asm!("int3", inlateout("rax") Call::Out32 as u64 => _, in("rdi") u64::from(port),
             in("rsi") u64::from(value), lateout("rdx") _, options(nostack, nomem));
    }
}

/// CPUID `leaf`/`subleaf` as CPL0 sees it: (eax, ebx, ecx, edx).
pub fn cpuid_cpl0(leaf: u32, subleaf: u32) -> (u32, u32, u32, u32) {
    let (a, b, c, d): (u64, u64, u64, u64);
    // SAFETY: the service call runs CPUID at CPL0 and returns its four results in rax,
    // rsi, rcx and rdx, preserving every other register; it touches no memory.
    unsafe {
        asm!(
            "int3",
            inlateout("rax") Call::Cpuid as u64 => a,
            in("rdi") u64::from(leaf),
            inlateout("rsi") u64::from(subleaf) => b,
            lateout("rcx") c,
            lateout("rdx") d,
            options(nostack, nomem),
        )
    };
    (a as u32, b as u32, c as u32, d as u32)
}

/// Enables KVM's PV EOI on the calling CPU (the caller has checked CPUID).
pub fn enable_pv_eoi() {
    // SAFETY: the CPL0 code writes MSR_KVM_PV_EOI_EN with the address of this CPU's
    // `KernelCpu::pv_eoi`, which lives as long as the CPU; it clobbers rax, rcx and rdx.
    unsafe {
        asm!("int3", inlateout("rax") Call::PvEoi as u64 => _, lateout("rcx") _, lateout("rdx") _,
             options(nostack, nomem));
    }
}

/// A service call that does nothing.
pub fn nop() {
    // SAFETY: the call only returns.
    unsafe { asm!("int3", inlateout("rax") Call::Nop as u64 => _, options(nostack, nomem)) };
}

/// Executes `2 * iterations` instructions at CPL0 (`iterations` is at least 1).
pub fn spin(iterations: u64) {
    // SAFETY: the call only counts rdi down and returns.
    unsafe {
        asm!("int3", inlateout("rax") Call::Spin as u64 => _, inlateout("rdi") iterations.max(1) => _,
             options(nostack, nomem));
    }
}
