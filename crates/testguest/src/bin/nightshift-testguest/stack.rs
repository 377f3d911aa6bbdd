//! High-water mark of a CPU's user stack, for the workloads whose driver stacks keep large
//! state (virtqueues with their descriptor shadows, smoltcp's interface and sockets): the
//! stacks are 64 KiB without guard pages, so these workloads report how much they used
//! (`stack_used=`) instead of leaving an overflow to corrupt memory silently.

use crate::cpu::{self, USER_STACKS, USER_STACK_SIZE};

const PAINT: u8 = 0xA5;
/// Kept clear below the stack pointer: the System V red zone and a margin.
const BELOW_SP: usize = 512;

/// The calling CPU's user stack, painted below the current frame.
pub struct Mark {
    bottom: usize,
    top: usize,
}

fn stack_pointer() -> usize {
    let sp: usize;
    // SAFETY: reads the stack pointer; no memory access, no side effects.
    unsafe {
        core::arch::asm!("mov {}, rsp", out(reg) sp, options(nomem, nostack, preserves_flags))
    };
    sp
}

/// Paints the unused part of the calling CPU's user stack.
pub fn paint() -> Mark {
    let bottom = USER_STACKS.as_ptr() as usize + cpu::current() * USER_STACK_SIZE;
    let top = bottom + USER_STACK_SIZE;
    let end = stack_pointer().saturating_sub(BELOW_SP).clamp(bottom, top);
    for addr in bottom..end {
        // SAFETY: the bytes below the stack pointer (past the red zone) of this CPU's own
        // user stack belong to no live frame; interrupts run on the kernel stack.
        unsafe { (addr as *mut u8).write_volatile(PAINT) };
    }
    Mark { bottom, top }
}

impl Mark {
    /// Bytes of the stack used since [`paint`] (deepest write seen).
    pub fn used(&self) -> usize {
        let first = (self.bottom..self.top)
            // SAFETY: reads of this CPU's own user stack, below the live frames or
            // inside them; plain bytes.
            .find(|&a| unsafe { (a as *const u8).read_volatile() } != PAINT)
            .unwrap_or(self.top);
        self.top - first
    }
}
