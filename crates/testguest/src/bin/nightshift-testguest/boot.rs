//! CPL0 boot path: PVH 32-bit entry → long mode → per-CPU setup → CPL3.
//!
//! All of it is assembly. On PVM hosts every CPL0 instruction is emulated (0.25-1 µs each),
//! so the path is kept to a few dozen instructions: the page tables are built at link time,
//! the IDT is filled in later by CPL3 code (it is plain memory; see `idt`), and nothing
//! here loops.
//!
//! Entry state (PVH): 32-bit protected mode, paging off, flat CS/DS, `ebx` = physical
//! address of `hvm_start_info`. APs arrive at `ap_entry32` from the real-mode
//! trampoline (`smp`) in the same state minus `ebx`.

use core::sync::atomic::AtomicU64;

use crate::{cpu, gdt};

/// Boot milestone port (see docs/guest-abi.md); outside 0xF4..=0xF7, which QEMU's
/// `isa-debug-exit,iobase=0xf4,iosize=4` claims.
pub const MILESTONE_PORT: u16 = 0xF8;
/// Milestone: first instruction of the 32-bit entry.
pub const MILESTONE_ENTRY: u32 = 1;
/// Milestone: banner printed.
pub const MILESTONE_BANNER: u32 = 2;

/// RFLAGS for CPL3: IF clear, IOPL 0. Interrupts are taken only in the idle service call
/// (`sti; hlt`), so CPL3 code never races with an interrupt handler. (IOPL 3 would not
/// help: PVM does not honour it at CPL3, so port I/O goes through service calls.)
pub const USER_RFLAGS: u64 = 0x0002;

const CR0_PE: u32 = 1 << 0;
const CR0_MP: u32 = 1 << 1;
const CR0_ET: u32 = 1 << 4;
const CR0_NE: u32 = 1 << 5;
const CR0_WP: u32 = 1 << 16;
const CR0_PG: u32 = 1 << 31;
/// Protected mode + paging; EM clear and MP set so SSE works.
const CR0_LONG: u32 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG;
/// PAE; OSFXSR and OSXMMEXCPT so the (SSE-using) Rust code at CPL3 may run.
const CR4_LONG: u32 = (1 << 5) | (1 << 9) | (1 << 10);
const MSR_EFER: u32 = 0xC000_0080;
const EFER_LME: u32 = 1 << 8;

/// 2 MiB page-directory entry flags: present, writable, user, large page.
const PDE_RAM: u64 = 0x87;
/// As [`PDE_RAM`], uncached (PWT|PCD) for the top GiB, where MMIO lives.
const PDE_MMIO: u64 = PDE_RAM | 0x18;
/// Table-entry flags: present, writable, user.
const PTE_TABLE: u64 = 0x7;

// Identity map of the first 4 GiB with 2 MiB pages, user accessible, built at link time.
core::arch::global_asm!(
    ".pushsection .data.pagetables, \"aw\"",
    ".balign 4096",
    ".globl pml4",
    "pml4:",
    ".quad pdpt + {table}",
    ".fill 511, 8, 0",
    "pdpt:",
    ".quad pd + {table}",
    ".quad pd + 0x1000 + {table}",
    ".quad pd + 0x2000 + {table}",
    ".quad pd + 0x3000 + {table}",
    ".fill 508, 8, 0",
    "pd:",
    ".set pde, {ram}",
    ".rept 1536",
    ".quad pde",
    ".set pde, pde + 0x200000",
    ".endr",
    ".set pde, pde + ({mmio} - {ram})",
    ".rept 512",
    ".quad pde",
    ".set pde, pde + 0x200000",
    ".endr",
    ".popsection",
    table = const PTE_TABLE,
    ram = const PDE_RAM,
    mmio = const PDE_MMIO,
);

// The PVH ELF note: XEN_ELFNOTE_PHYS32_ENTRY (18) = 32-bit entry point.
core::arch::global_asm!(
    ".pushsection .note.Xen, \"a\", @note",
    ".balign 4",
    ".long 4",
    ".long 4",
    ".long 18",
    ".asciz \"Xen\"",
    ".balign 4",
    ".long pvh_entry32",
    ".popsection",
);

// 32-bit entry points and the switch to long mode.
core::arch::global_asm!(
    // Enter long mode from 32-bit protected mode and far-jump to `target` (64-bit code).
    // Clobbers eax, ecx, edx.
    ".macro ENTER_LONG_MODE target",
    "    mov ${cr4}, %eax",
    "    mov %eax, %cr4",
    "    mov $pml4, %eax",
    "    mov %eax, %cr3",
    "    mov ${efer}, %ecx",
    "    rdmsr",
    "    or ${lme}, %eax",
    "    wrmsr",
    "    mov ${cr0}, %eax",
    "    mov %eax, %cr0",
    "    ljmp ${kernel_cs}, $\\target",
    ".endm",
    "",
    ".pushsection .text.boot, \"ax\"",
    ".code32",
    // BSP: PVH entry. ebx = hvm_start_info.
    ".globl pvh_entry32",
    "pvh_entry32:",
    "    mov ${milestone_port}, %dx",
    "    mov ${milestone_entry}, %eax",
    "    out %eax, %dx",
    "    rdtsc",
    "    mov %eax, {entry_tsc}",
    "    mov %edx, {entry_tsc} + 4",
    "    mov %ebx, %esi",
    "    lgdt gdtr",
    "    ENTER_LONG_MODE bsp_entry64",
    "",
    // AP: from the real-mode trampoline, in protected mode on our GDT.
    ".globl ap_entry32",
    "ap_entry32:",
    "    ENTER_LONG_MODE ap_entry64",
    "",
    ".code64",
    "bsp_entry64:",
    "    mov ${kernel_ds}, %ax",
    "    mov %ax, %ds",
    "    mov %ax, %es",
    "    mov %ax, %ss",
    "    mov %esi, %esi", // start info (zero-extended) is the user argument
    "    xor %edi, %edi", // CPU 0
    "    jmp cpu_start",
    "",
    "ap_entry64:",
    "    mov ${kernel_ds}, %ax",
    "    mov %ax, %ds",
    "    mov %ax, %es",
    "    mov %ax, %ss",
    "    mov {ap_boot_cpu}(%rip), %rdi",
    "    cmp ${max_cpus}, %rdi",
    "    jae halt_forever", // parked: the BSP gave up on this AP
    "    xor %esi, %esi",
    "    jmp cpu_start",
    "",
    // Per-CPU setup, then CPL3. rdi = CPU index (< MAX_CPUS), rsi = user argument.
    // Kernel stack, TSS (descriptor, RSP0), TR, IDTR; then iretq to `user_entry(rdi, rsi)`.
    "cpu_start:",
    "    lea 1(%rdi), %rax",
    "    shl ${kstack_shift}, %rax",
    "    lea {kernel_stacks}(%rip), %rsp",
    "    add %rax, %rsp",
    // rax = &TSS[cpu]; its base is below 4 GiB (linker.ld), so the descriptor's high
    // quadword stays 0.
    "    mov %rdi, %rax",
    "    shl ${tss_shift}, %rax",
    "    lea {tss}(%rip), %rdx",
    "    add %rdx, %rax",
    "    mov %rsp, {tss_rsp0}(%rax)",
    // Descriptor low quadword: base[23:0] -> bits 16..40, base[31:24] -> bits 56..64.
    "    mov %eax, %edx",
    "    and $0xffffff, %edx",
    "    shl $16, %rdx",
    "    shr $24, %eax",
    "    shl $56, %rax",
    "    or %rax, %rdx",
    "    movabs ${tss_desc}, %rax",
    "    or %rax, %rdx",
    "    mov %rdi, %rcx",
    "    shl $4, %rcx",
    "    lea gdt + {tss_sel}(%rip), %rax",
    "    mov %rdx, (%rax, %rcx)",
    "    add ${tss_sel}, %ecx",
    "    ltr %cx",
    "    lidt idtr(%rip)",
    // User stack: top of USER_STACKS[cpu], minus 8 so that the entry sees the stack
    // alignment of a called function.
    "    lea 1(%rdi), %rax",
    "    imul ${ustack_size}, %rax",
    "    lea {user_stacks} - 8(%rip), %rdx",
    "    add %rdx, %rax",
    "    push ${user_ds}",
    "    push %rax",
    "    push ${user_rflags}",
    "    push ${user_cs}",
    "    lea {user_entry}(%rip), %rax",
    "    push %rax",
    "    iretq",
    ".popsection",
    cr4 = const CR4_LONG,
    cr0 = const CR0_LONG,
    efer = const MSR_EFER,
    lme = const EFER_LME,
    kernel_cs = const gdt::KERNEL_CS,
    kernel_ds = const gdt::KERNEL_DS,
    milestone_port = const MILESTONE_PORT,
    milestone_entry = const MILESTONE_ENTRY,
    entry_tsc = sym ENTRY_TSC,
    ap_boot_cpu = sym crate::smp::AP_BOOT_CPU,
    max_cpus = const cpu::MAX_CPUS,
    kstack_shift = const cpu::KERNEL_STACK_SIZE.trailing_zeros(),
    kernel_stacks = sym cpu::KERNEL_STACKS,
    tss_shift = const gdt::TSS_SLOT_SHIFT,
    tss = sym gdt::TSS,
    tss_rsp0 = const gdt::TSS_RSP0,
    tss_desc = const gdt::TSS_DESC_TEMPLATE,
    tss_sel = const gdt::TSS_BASE,
    ustack_size = const cpu::USER_STACK_SIZE,
    user_stacks = sym cpu::USER_STACKS,
    user_ds = const gdt::USER_DS,
    user_cs = const gdt::USER_CS,
    user_rflags = const USER_RFLAGS,
    user_entry = sym crate::user_entry,
    options(att_syntax),
);

/// TSC at the BSP's first instruction. In `.data`: written before `.bss` is zeroed.
#[link_section = ".data.entry_tsc"]
pub static ENTRY_TSC: AtomicU64 = AtomicU64::new(0);

/// Reports a boot milestone to the VMM (ignored by VMMs that do not listen).
pub fn milestone(id: u32) {
    crate::service::out32(MILESTONE_PORT, id);
}
