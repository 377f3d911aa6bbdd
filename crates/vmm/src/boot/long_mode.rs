//! The boot CPU's state for the Linux boot protocol's 64-bit entry
//! (Documentation/arch/x86/boot.rst, "64-bit Boot Protocol"): long mode with
//! paging, an identity map covering the kernel, `boot_params`, the command
//! line and the initrd; a GDT with flat `__BOOT_CS` (0x10) and `__BOOT_DS`
//! (0x18); interrupts off; `rsi` = the address of `boot_params`.
//!
//! The identity map covers the low 4 GiB with 2 MiB pages, so everything the
//! VMM places below the MMIO gap is reachable whatever the guest's size.

use kvm_bindings::{kvm_regs, kvm_sregs};
use vm_memory::{Bytes, GuestAddress};

use crate::memory::{GuestMemory, BOOT_GDT_START, PML4_START};
use crate::vcpu::regs::{descriptor_segment, gdt_entry};

const X86_CR0_PE: u64 = 1 << 0;
const X86_CR0_ET: u64 = 1 << 4;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const RFLAGS_RESERVED: u64 = 1 << 1;

const PAGE_PRESENT_RW: u64 = 0b11;
const PAGE_PS: u64 = 1 << 7;
const PAGE: u64 = 0x1000;
/// Page directories after the PDPT: one per GiB of the identity map.
const IDENTITY_GIB: u64 = 4;

// __BOOT_CS = 0x10 and __BOOT_DS = 0x18, as the protocol requires; a TSS after them.
const GDT_CODE: usize = 2;
const GDT_DATA: usize = 3;
const GDT_TSS: usize = 4;
const BOOT_GDT: [u64; 5] = [
    0,
    0,
    gdt_entry(0xa09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x008b, 0, 0x67),
];

/// Writes the GDT and page tables, and sets `sregs` to 64-bit mode with them.
pub fn setup_sregs(mem: &GuestMemory, sregs: &mut kvm_sregs) -> vm_memory::GuestMemoryResult<()> {
    for (i, entry) in BOOT_GDT.iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(BOOT_GDT_START.0 + 8 * i as u64))?;
    }
    write_identity_map(mem)?;
    sregs.gdt.base = BOOT_GDT_START.0;
    sregs.gdt.limit = (std::mem::size_of_val(&BOOT_GDT) - 1) as u16;
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    let data = descriptor_segment(BOOT_GDT[GDT_DATA], GDT_DATA);
    sregs.cs = descriptor_segment(BOOT_GDT[GDT_CODE], GDT_CODE);
    (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss) = (data, data, data, data, data);
    sregs.tr = descriptor_segment(BOOT_GDT[GDT_TSS], GDT_TSS);
    sregs.cr3 = PML4_START.0;
    sregs.cr4 = X86_CR4_PAE;
    sregs.cr0 = X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
    sregs.efer = EFER_LME | EFER_LMA;
    Ok(())
}

/// PML4[0] → PDPT; PDPT[i] → page directory i; each maps 1 GiB in 2 MiB pages.
fn write_identity_map(mem: &GuestMemory) -> vm_memory::GuestMemoryResult<()> {
    let pdpt = PML4_START.0 + PAGE;
    mem.write_obj(pdpt | PAGE_PRESENT_RW, PML4_START)?;
    for gib in 0..IDENTITY_GIB {
        let pd = pdpt + PAGE * (1 + gib);
        mem.write_obj(pd | PAGE_PRESENT_RW, GuestAddress(pdpt + 8 * gib))?;
        for i in 0..512u64 {
            let frame = (gib << 30) | (i << 21);
            mem.write_obj(frame | PAGE_PRESENT_RW | PAGE_PS, GuestAddress(pd + 8 * i))?;
        }
    }
    Ok(())
}

/// General registers at the 64-bit entry.
pub fn entry_regs(entry: GuestAddress, boot_params: GuestAddress) -> kvm_regs {
    kvm_regs {
        rflags: RFLAGS_RESERVED,
        rip: entry.0,
        rsi: boot_params.0,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::create_guest_memory;
    use crate::page_walk::Paging;

    #[test]
    fn long_mode_state_identity_maps_low_4g() {
        let mem = create_guest_memory(64 << 20).unwrap();
        let mut sregs = kvm_sregs::default();
        setup_sregs(&mem, &mut sregs).unwrap();
        assert_eq!((sregs.cs.selector, sregs.cs.l, sregs.cs.db), (0x10, 1, 0));
        assert_eq!((sregs.ds.selector, sregs.ss.selector), (0x18, 0x18));
        assert_eq!(sregs.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_ne!(sregs.cr0 & X86_CR0_PG, 0);
        let paging = Paging {
            cr0: sregs.cr0,
            cr3: sregs.cr3,
            cr4: sregs.cr4,
            efer: sregs.efer,
        };
        for va in [0, 0x7000, 0x10_0000, 0x3fff_ffff, 0xbfff_f123, 0xffff_ffff] {
            assert_eq!(paging.translate(&mem, va), Ok(va), "{va:#x}");
        }
        assert!(paging.translate(&mem, 1 << 32).is_err());
        let regs = entry_regs(GuestAddress(0x10_0200), GuestAddress(0x7000));
        assert_eq!((regs.rip, regs.rsi), (0x10_0200, 0x7000));
    }
}
