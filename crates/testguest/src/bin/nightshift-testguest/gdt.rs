//! Global descriptor table and task-state segments.
//!
//! One GDT for all CPUs: flat kernel and user segments, a 32-bit code segment for the
//! protected-mode legs of the BSP entry and the AP trampoline, then one 16-byte TSS
//! descriptor per CPU. The TSS descriptors are filled in by `boot::cpu_start` on each CPU
//! (CPL0) before `ltr`; everything else is static.

use core::cell::UnsafeCell;
use core::mem::offset_of;

use crate::cpu::MAX_CPUS;

/// Kernel 64-bit code.
pub const KERNEL_CS: u16 = 0x08;
/// Kernel data (flat 4 GiB, also valid in 32-bit protected mode).
pub const KERNEL_DS: u16 = 0x10;
/// Flat 32-bit code for the protected-mode legs of the boot paths.
pub const CODE32: u16 = 0x18;
/// User data, RPL 3.
pub const USER_DS: u16 = 0x20 | 3;
/// User 64-bit code, RPL 3.
pub const USER_CS: u16 = 0x28 | 3;
/// Selector of CPU 0's TSS; CPU `n` uses `TSS_BASE + 16 * n`.
pub const TSS_BASE: u16 = 0x30;
/// Size of the GDT in bytes: six segment descriptors, then a TSS descriptor per CPU.
pub const GDT_SIZE: usize = TSS_BASE as usize + 16 * MAX_CPUS;

const CODE64_DESC: u64 = 0x00af_9a00_0000_ffff; // P, DPL0, code exec/read, L, G
const DATA_DESC: u64 = 0x00cf_9200_0000_ffff; // P, DPL0, data read/write, D/B, G
const CODE32_DESC: u64 = 0x00cf_9a00_0000_ffff; // P, DPL0, code exec/read, D/B, G
const USER_DATA_DESC: u64 = 0x00cf_f200_0000_ffff; // as DATA_DESC with DPL3
const USER_CODE64_DESC: u64 = 0x00af_fa00_0000_ffff; // as CODE64_DESC with DPL3

/// Low quadword of an available 64-bit TSS descriptor with base 0 (type 9, P, limit 103);
/// `cpu_start` ORs the base in.
pub const TSS_DESC_TEMPLATE: u64 = (0x89 << 40) | (TSS_LIMIT as u64);
const TSS_LIMIT: usize = core::mem::size_of::<Tss>() - 1;

/// The 64-bit task-state segment: only the ring-0 stack pointer is used.
#[repr(C, packed(4))]
pub struct Tss {
    _reserved0: u32,
    /// Stack for interrupts that arrive at CPL3.
    rsp0: u64,
    _rsp12: [u64; 2],
    _reserved1: u64,
    _ist: [u64; 7],
    _reserved2: u64,
    _reserved3: u16,
    /// Beyond the limit: no I/O bitmap (CPL3 has IOPL 3 anyway).
    iomap_base: u16,
}

const _: () = assert!(core::mem::size_of::<Tss>() == 104);

/// Offset of `rsp0` in [`Tss`].
pub const TSS_RSP0: usize = offset_of!(Tss, rsp0);

/// A TSS padded to a power-of-two stride (`cpu_start` indexes with a shift).
#[repr(C, align(128))]
pub struct TssSlot(UnsafeCell<Tss>);

/// log2 of the [`TssSlot`] stride.
pub const TSS_SLOT_SHIFT: u32 = 7;
const _: () = assert!(core::mem::size_of::<TssSlot>() == 1 << TSS_SLOT_SHIFT);

// SAFETY: a CPU's TSS is written only by that CPU's CPL0 code (`cpu_start`) and read by
// the processor; Rust code never accesses it.
unsafe impl Sync for TssSlot {}

/// The TSSs, indexed by CPU index. Placed in `.data`: `cpu_start` writes the BSP's before
/// the BSP zeroes `.bss`.
#[link_section = ".data.tss"]
pub static TSS: [TssSlot; MAX_CPUS] = [const {
    TssSlot(UnsafeCell::new(Tss {
        _reserved0: 0,
        rsp0: 0,
        _rsp12: [0; 2],
        _reserved1: 0,
        _ist: [0; 7],
        _reserved2: 0,
        _reserved3: 0,
        iomap_base: core::mem::size_of::<Tss>() as u16,
    }))
}; MAX_CPUS];

// The GDT itself and its pseudo-descriptor `gdtr` (limit, 64-bit base; the first six bytes
// are also what a 32-bit `lgdt` reads).
core::arch::global_asm!(
    ".pushsection .data.gdt, \"aw\"",
    ".balign 16",
    ".globl gdt",
    "gdt:",
    ".quad 0",
    ".quad {code64}",
    ".quad {data}",
    ".quad {code32}",
    ".quad {user_data}",
    ".quad {user_code64}",
    ".fill {tss_quads}, 8, 0",
    ".balign 8",
    ".globl gdtr",
    "gdtr:",
    ".word {limit}",
    ".quad gdt",
    ".popsection",
    code64 = const CODE64_DESC,
    data = const DATA_DESC,
    code32 = const CODE32_DESC,
    user_data = const USER_DATA_DESC,
    user_code64 = const USER_CODE64_DESC,
    tss_quads = const 2 * MAX_CPUS,
    limit = const GDT_SIZE - 1,
);

const _: () = assert!(TSS_BASE as usize == 6 * 8);
const _: () = assert!(KERNEL_CS == 0x08 && KERNEL_DS == 0x10 && CODE32 == 0x18);
