//! Guest virtual → guest physical translation by walking the guest's page
//! tables, for reports that must show guest memory at a virtual address (the
//! instruction KVM could not emulate).
//!
//! Everything here is guest-controlled: CR3 and every table entry. A walk
//! reads at most five entries, each through `GuestMemory` (which refuses
//! addresses outside RAM), and fails with an error instead of guessing.

use vm_memory::{Bytes, GuestAddress};

use crate::memory::GuestMemory;

const CR0_PG: u64 = 1 << 31;
const CR4_PSE: u64 = 1 << 4;
const CR4_PAE: u64 = 1 << 5;
const CR4_LA57: u64 = 1 << 12;
const EFER_LMA: u64 = 1 << 10;
const PRESENT: u64 = 1;
const PAGE_SIZE_BIT: u64 = 1 << 7;
/// Physical address bits of a table entry (bits 12..52).
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// The registers that decide how the guest translates addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Paging {
    /// CR0 (PG).
    pub cr0: u64,
    /// CR3: the top-level table.
    pub cr3: u64,
    /// CR4 (PSE, PAE, LA57).
    pub cr4: u64,
    /// EFER (LMA).
    pub efer: u64,
}

/// Why an address could not be translated.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WalkError {
    /// An entry on the way is not present.
    #[error("{va:#x} is not mapped (level {level} entry not present)")]
    NotPresent {
        /// The address.
        va: u64,
        /// Paging level of the entry (1 = page table).
        level: u8,
    },
    /// A table or the page lies outside guest RAM.
    #[error("page table or page at {gpa:#x} is outside guest RAM")]
    OutsideRam {
        /// The guest physical address.
        gpa: u64,
    },
}

impl Paging {
    /// The guest physical address `va` maps to.
    pub fn translate(&self, mem: &GuestMemory, va: u64) -> Result<u64, WalkError> {
        if self.cr0 & CR0_PG == 0 {
            return Ok(va);
        }
        if self.cr4 & CR4_PAE == 0 {
            return self.walk_32bit(mem, va);
        }
        let levels: u8 = match (self.efer & EFER_LMA != 0, self.cr4 & CR4_LA57 != 0) {
            (false, _) => 3,
            (true, false) => 4,
            (true, true) => 5,
        };
        let mut table = if levels == 3 {
            self.cr3 & 0xffff_ffe0
        } else {
            self.cr3 & ADDR_MASK
        };
        for level in (1..=levels).rev() {
            let shift = 12 + 9 * (u32::from(level) - 1);
            let index = if levels == 3 && level == 3 {
                (va >> 30) & 0x3
            } else {
                (va >> shift) & 0x1ff
            };
            let entry: u64 = read(mem, table + 8 * index)?;
            if entry & PRESENT == 0 {
                return Err(WalkError::NotPresent { va, level });
            }
            // 2 MiB pages in page directories; 1 GiB pages in a long-mode PDPT.
            let large = (level == 2 || (level == 3 && levels >= 4)) && entry & PAGE_SIZE_BIT != 0;
            if level == 1 || large {
                let offset_mask = (1u64 << shift) - 1;
                return Ok((entry & ADDR_MASK & !offset_mask) | (va & offset_mask));
            }
            table = entry & ADDR_MASK;
        }
        unreachable!("the level-1 entry always returns")
    }

    /// Two-level 32-bit paging, with 4 MiB pages under CR4.PSE.
    fn walk_32bit(&self, mem: &GuestMemory, va: u64) -> Result<u64, WalkError> {
        let va = va & 0xffff_ffff;
        let pde = u64::from(read::<u32>(mem, (self.cr3 & 0xffff_f000) + 4 * (va >> 22))?);
        if pde & PRESENT == 0 {
            return Err(WalkError::NotPresent { va, level: 2 });
        }
        if self.cr4 & CR4_PSE != 0 && pde & PAGE_SIZE_BIT != 0 {
            return Ok((pde & 0xffc0_0000) | (va & 0x3f_ffff));
        }
        let pte = u64::from(read::<u32>(
            mem,
            (pde & 0xffff_f000) + 4 * ((va >> 12) & 0x3ff),
        )?);
        if pte & PRESENT == 0 {
            return Err(WalkError::NotPresent { va, level: 1 });
        }
        Ok((pte & 0xffff_f000) | (va & 0xfff))
    }

    /// Up to `len` bytes at `va`, translating each page on the way; stops at
    /// the first byte that cannot be read (and fails if that is the first).
    pub fn read_virt(&self, mem: &GuestMemory, va: u64, len: usize) -> Result<Vec<u8>, WalkError> {
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            let at = va.wrapping_add(out.len() as u64);
            let gpa = match self.translate(mem, at) {
                Ok(gpa) => gpa,
                Err(e) if out.is_empty() => return Err(e),
                Err(_) => break,
            };
            let in_page = (0x1000 - (at & 0xfff)) as usize;
            let mut chunk = vec![0u8; in_page.min(len - out.len())];
            match mem.read_slice(&mut chunk, GuestAddress(gpa)) {
                Ok(()) => out.extend_from_slice(&chunk),
                Err(_) if out.is_empty() => return Err(WalkError::OutsideRam { gpa }),
                Err(_) => break,
            }
        }
        Ok(out)
    }
}

fn read<T: vm_memory::ByteValued>(mem: &GuestMemory, gpa: u64) -> Result<T, WalkError> {
    mem.read_obj(GuestAddress(gpa))
        .map_err(|_| WalkError::OutsideRam { gpa })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::create_guest_memory;

    const LONG: Paging = Paging {
        cr0: CR0_PG | 1,
        cr3: 0x1000,
        cr4: CR4_PAE,
        efer: EFER_LMA | (1 << 8),
    };

    /// A kernel-style mapping: 0xffff_ffff_8100_0000 → 0x20_0000 (4 KiB pages),
    /// and a 2 MiB page at 0xffff_ffff_8120_0000 → 0x40_0000.
    fn tables(mem: &GuestMemory) {
        let va: u64 = 0xffff_ffff_8100_0000;
        let w = |gpa: u64, v: u64| mem.write_obj(v, GuestAddress(gpa)).unwrap();
        w(0x1000 + 8 * ((va >> 39) & 0x1ff), 0x2000 | 3);
        w(0x2000 + 8 * ((va >> 30) & 0x1ff), 0x3000 | 3);
        w(0x3000 + 8 * ((va >> 21) & 0x1ff), 0x4000 | 3);
        w(0x4000, 0x20_0000 | 3);
        w(0x4008, 0x20_1000 | 3);
        w(0x3000 + 8 * (((va >> 21) & 0x1ff) + 1), 0x40_0000 | 0x83);
    }

    #[test]
    fn four_level_walk_with_small_and_large_pages() {
        let mem = create_guest_memory(16 << 20).unwrap();
        tables(&mem);
        let base = 0xffff_ffff_8100_0000u64;
        assert_eq!(LONG.translate(&mem, base + 0x123), Ok(0x20_0123));
        assert_eq!(LONG.translate(&mem, base + 0x1ff0), Ok(0x20_1ff0));
        assert_eq!(LONG.translate(&mem, base + 0x20_0042), Ok(0x40_0042));
        assert_eq!(
            LONG.translate(&mem, base + 0x2000),
            Err(WalkError::NotPresent {
                va: base + 0x2000,
                level: 1
            })
        );
        assert!(matches!(
            LONG.translate(&mem, 0x1234),
            Err(WalkError::NotPresent { level: 4, .. })
        ));
    }

    #[test]
    fn reads_cross_pages_and_stop_at_the_unmapped_one() {
        let mem = create_guest_memory(16 << 20).unwrap();
        tables(&mem);
        mem.write_slice(&[0xcc; 8], GuestAddress(0x20_0ffc))
            .unwrap();
        mem.write_slice(&[0x90; 4], GuestAddress(0x20_1000))
            .unwrap();
        let va = 0xffff_ffff_8100_0ffc;
        let bytes = LONG.read_virt(&mem, va, 8).unwrap();
        assert_eq!(bytes, [0xcc, 0xcc, 0xcc, 0xcc, 0x90, 0x90, 0x90, 0x90]);
        // The page after the second is not mapped: a short read, not an error.
        assert_eq!(LONG.read_virt(&mem, va + 0x1000, 15).unwrap().len(), 4);
    }

    #[test]
    fn hostile_tables_fail_cleanly() {
        let mem = create_guest_memory(16 << 20).unwrap();
        // CR3 outside RAM, and an entry pointing outside RAM.
        let outside = Paging {
            cr3: 0xff_0000_0000,
            ..LONG
        };
        assert!(matches!(
            outside.translate(&mem, 0),
            Err(WalkError::OutsideRam { .. })
        ));
        mem.write_obj(0x7f_ffff_f000u64 | 3, GuestAddress(0x1000))
            .unwrap();
        assert!(matches!(
            LONG.translate(&mem, 0),
            Err(WalkError::OutsideRam { .. })
        ));
        // Paging off: identity.
        let off = Paging { cr0: 1, ..LONG };
        assert_eq!(off.translate(&mem, 0x1234), Ok(0x1234));
    }

    #[test]
    fn legacy_32_bit_and_pae_walks() {
        let mem = create_guest_memory(16 << 20).unwrap();
        let w = |gpa: u64, v: u32| mem.write_obj(v, GuestAddress(gpa)).unwrap();
        // 32-bit: PD at 0x5000, 4 MiB page for 0xc000_0000 → 0x80_0000.
        w(0x5000 + 4 * (0xc000_0000u64 >> 22), 0x80_0000 | 0x83);
        let p32 = Paging {
            cr0: CR0_PG | 1,
            cr3: 0x5000,
            cr4: CR4_PSE,
            efer: 0,
        };
        assert_eq!(p32.translate(&mem, 0xc012_3456), Ok(0x92_3456));
        // PAE: PDPT at 0x6000 → PD at 0x7000 → 2 MiB page 0xa0_0000.
        mem.write_obj(0x7000u64 | 1, GuestAddress(0x6000)).unwrap();
        mem.write_obj(0xa0_0000u64 | 0x83, GuestAddress(0x7000))
            .unwrap();
        let pae = Paging {
            cr0: CR0_PG | 1,
            cr3: 0x6000,
            cr4: CR4_PAE,
            efer: 0,
        };
        assert_eq!(pae.translate(&mem, 0x1_2345), Ok(0xa1_2345));
    }
}
