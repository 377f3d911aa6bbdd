//! Guest-physical memory as CPL3 sees it: the identity map of the first 4 GiB.

use testguest::physmem::PhysMem;

/// End of the identity map (`boot`'s page tables).
pub const MAPPED_END: u64 = 1 << 32;

/// Reads guest-physical memory through the identity map.
pub struct Identity;

impl PhysMem for Identity {
    fn read(&self, paddr: u64, buf: &mut [u8]) -> bool {
        match paddr.checked_add(buf.len() as u64) {
            Some(end) if end <= MAPPED_END => {
                for (i, b) in buf.iter_mut().enumerate() {
                    // SAFETY: the address is below 4 GiB, hence mapped; a read of RAM or
                    // of unbacked space (an MMIO exit to the VMM) has no side effects on
                    // the ROM/RAM ranges the callers point at.
                    *b = unsafe { ((paddr as usize + i) as *const u8).read_volatile() };
                }
                true
            }
            _ => false,
        }
    }
}
