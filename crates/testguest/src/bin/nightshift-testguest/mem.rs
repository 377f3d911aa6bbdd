//! The memory functions the compiler expects (`memcpy`, `memmove`, `memset`, `memcmp`,
//! `bcmp`), which a freestanding build has to provide, and `.bss` zeroing.
//!
//! The copies and fills use `rep movsb`/`rep stosb` (fast on every CPU with ERMS, and
//! immune to the compiler turning a byte loop back into a call to the very function it is
//! in). They run at CPL3 only: CPL0 code is assembly and never calls them.

use core::arch::asm;

/// # Safety
/// `dest` and `src` must be valid for `n` bytes and must not overlap.
#[no_mangle]
pub unsafe extern "C" fn memcpy(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees both ranges; DF is clear (ABI).
    unsafe {
        asm!("rep movsb", inout("rcx") n => _, inout("rdi") dest => _, inout("rsi") src => _,
             options(nostack, preserves_flags));
    }
    dest
}

/// # Safety
/// `dest` and `src` must be valid for `n` bytes; they may overlap.
#[no_mangle]
pub unsafe extern "C" fn memmove(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dest as usize).wrapping_sub(src as usize) >= n {
        // No overlap, or dest below src: a forward copy is correct.
        // SAFETY: as `memcpy` (a forward copy tolerates dest < src overlap).
        unsafe {
            asm!("rep movsb", inout("rcx") n => _, inout("rdi") dest => _, inout("rsi") src => _,
                 options(nostack, preserves_flags));
        }
    } else {
        // dest overlaps the tail of src: copy backwards, from the last byte.
        // SAFETY: the caller guarantees both ranges; n > 0 here, so the last-byte pointers
        // are in range. DF is restored before returning.
        unsafe {
            asm!("std", "rep movsb", "cld",
                 inout("rcx") n => _, inout("rdi") dest.add(n - 1) => _,
                 inout("rsi") src.add(n - 1) => _, options(nostack));
        }
    }
    dest
}

/// # Safety
/// `dest` must be valid for `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn memset(dest: *mut u8, c: i32, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees the range; DF is clear (ABI).
    unsafe {
        asm!("rep stosb", inout("rcx") n => _, inout("rdi") dest => _, in("al") c as u8,
             options(nostack, preserves_flags));
    }
    dest
}

/// # Safety
/// `a` and `b` must be valid for `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    for i in 0..n {
        // SAFETY: i < n; the caller guarantees both ranges. Volatile keeps the compiler
        // from recognising the loop as memcmp.
        let (x, y) = unsafe { (a.add(i).read_volatile(), b.add(i).read_volatile()) };
        if x != y {
            return i32::from(x) - i32::from(y);
        }
    }
    0
}

/// # Safety
/// As [`memcmp`].
#[no_mangle]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: same contract.
    unsafe { memcmp(a, b, n) }
}

// The precompiled `core` carries unwind tables that name the personality routine. With
// panic=abort nothing unwinds, so it is never called; this stub only satisfies the link.
core::arch::global_asm!(
    ".pushsection .text.rust_eh_personality, \"ax\"",
    ".globl rust_eh_personality",
    "rust_eh_personality:",
    "    ud2",
    ".popsection",
);

extern "C" {
    static __bss_start: u8;
    static __bss_end: u8;
}

/// Zeroes `.bss` (the ELF loader should have; this makes the guest independent of it).
///
/// # Safety
/// Must run on the BSP before anything in `.bss` is used, with no other CPU running.
/// Stacks are outside `.bss` (linker.ld).
pub unsafe fn zero_bss() {
    // SAFETY: the linker script defines both symbols, 16-byte aligned, start <= end.
    unsafe {
        let start = core::ptr::addr_of!(__bss_start) as *mut u8;
        let end = core::ptr::addr_of!(__bss_end) as *mut u8;
        asm!("rep stosb", inout("rcx") end as usize - start as usize => _,
             inout("rdi") start => _, in("al") 0u8, options(nostack, preserves_flags));
    }
}
