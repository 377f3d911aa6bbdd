//! Initial vCPU state: the PVH entry state for the boot CPU, and the local
//! APIC's LINT pins for every CPU.
//!
//! PVH entry (xen/include/public/arch-x86/hvm/start_info.h): 32-bit protected
//! mode, paging off, flat 4 GiB code and data segments, a valid task register,
//! `ebx` = physical address of `hvm_start_info`, `eip` = the ELF note's entry.

use kvm_bindings::{kvm_lapic_state, kvm_regs, kvm_segment, kvm_sregs};
use vm_memory::{Bytes, GuestAddress};

use crate::memory::{GuestMemory, BOOT_GDT_START};

const X86_CR0_PE: u64 = 1 << 0;
const X86_CR0_ET: u64 = 1 << 4;
const RFLAGS_RESERVED: u64 = 1 << 1;

// Boot GDT: null, flat 32-bit code, flat 32-bit data, a 32-bit TSS.
const GDT_CODE: usize = 1;
const GDT_DATA: usize = 2;
const GDT_TSS: usize = 3;
const BOOT_GDT: [u64; 4] = [
    0,
    gdt_entry(0xc09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x008b, 0, 0x67),
];

/// A GDT descriptor from its flags (access byte in bits 0..8, flags in 12..16),
/// base and 20-bit limit.
pub(crate) const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << 32)
        | ((flags as u64 & 0xf0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << 32)
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// The hidden-part view of a GDT descriptor, as KVM wants it in `kvm_sregs`.
fn segment(index: usize) -> kvm_segment {
    descriptor_segment(BOOT_GDT[index], index)
}

/// The `kvm_segment` for GDT descriptor `entry` at GDT slot `index`.
pub(crate) fn descriptor_segment(entry: u64, index: usize) -> kvm_segment {
    let flags = |shift: u32| ((entry >> shift) & 1) as u8;
    let limit = ((entry & 0xffff) | ((entry >> 32) & 0xf_0000)) as u32;
    let granular = flags(55) == 1;
    kvm_segment {
        base: ((entry >> 16) & 0xff_ffff) | ((entry >> 32) & 0xff00_0000),
        limit: if granular {
            (limit << 12) | 0xfff
        } else {
            limit
        },
        selector: (index * 8) as u16,
        type_: ((entry >> 40) & 0xf) as u8,
        present: flags(47),
        dpl: ((entry >> 45) & 3) as u8,
        db: flags(54),
        s: flags(44),
        l: flags(53),
        g: flags(55),
        avl: flags(52),
        unusable: 0,
        padding: 0,
    }
}

/// Writes the boot GDT and sets `sregs` to the PVH entry state.
pub fn setup_pvh_sregs(
    mem: &GuestMemory,
    sregs: &mut kvm_sregs,
) -> vm_memory::GuestMemoryResult<()> {
    for (i, entry) in BOOT_GDT.iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(BOOT_GDT_START.0 + 8 * i as u64))?;
    }
    sregs.gdt.base = BOOT_GDT_START.0;
    sregs.gdt.limit = (std::mem::size_of_val(&BOOT_GDT) - 1) as u16;
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    let data = segment(GDT_DATA);
    sregs.cs = segment(GDT_CODE);
    (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss) = (data, data, data, data, data);
    sregs.tr = segment(GDT_TSS);
    sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
    sregs.cr4 = 0;
    sregs.efer = 0;
    Ok(())
}

/// General registers at the PVH entry.
pub fn pvh_regs(entry: GuestAddress, start_info: GuestAddress) -> kvm_regs {
    kvm_regs {
        rflags: RFLAGS_RESERVED,
        rip: entry.0,
        rbx: start_info.0,
        ..Default::default()
    }
}

/// A real-mode segment with `selector` and `base` (limit 64 KiB).
fn real_mode_segment(selector: u16, base: u64, type_: u8) -> kvm_segment {
    kvm_segment {
        base,
        limit: 0xffff,
        selector,
        type_,
        present: 1,
        s: 1,
        ..Default::default()
    }
}

/// The state a STARTUP IPI with `vector` gives a CPU waiting after INIT
/// (SDM vol. 3, 9.1.1 and 10.4.4.1): real mode, CS = `vector << 8` with base
/// `vector << 12`, IP 0, everything else as after reset. Under the user
/// irqchip the VMM does this itself; KVM's in-kernel APIC does it otherwise.
pub fn setup_sipi_sregs(sregs: &mut kvm_sregs, vector: u8) {
    let page = u16::from(vector) << 8;
    sregs.cs = real_mode_segment(page, u64::from(page) << 4, 0xb);
    let data = real_mode_segment(0, 0, 0x3);
    (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss) = (data, data, data, data, data);
    sregs.tr = kvm_segment {
        s: 0,
        ..real_mode_segment(0, 0, 0xb)
    };
    sregs.ldt = kvm_segment {
        s: 0,
        ..real_mode_segment(0, 0, 0x2)
    };
    sregs.gdt.base = 0;
    sregs.gdt.limit = 0xffff;
    sregs.idt.base = 0;
    sregs.idt.limit = 0xffff;
    sregs.cr0 = 0x6000_0010;
    sregs.cr2 = 0;
    sregs.cr3 = 0;
    sregs.cr4 = 0;
    sregs.efer = 0;
}

/// General registers after INIT/STARTUP: all zero but the reserved flag.
pub fn sipi_regs() -> kvm_regs {
    kvm_regs {
        rflags: RFLAGS_RESERVED,
        ..Default::default()
    }
}

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn lapic_reg(lapic: &kvm_lapic_state, offset: usize) -> u32 {
    let bytes: [u8; 4] = std::array::from_fn(|i| lapic.regs[offset + i] as u8);
    u32::from_le_bytes(bytes)
}

fn set_lapic_reg(lapic: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (i, b) in value.to_le_bytes().iter().enumerate() {
        lapic.regs[offset + i] = *b as _;
    }
}

/// Wires LINT0 to ExtINT and LINT1 to NMI, as PC firmware leaves them.
pub fn setup_lint(lapic: &mut kvm_lapic_state) {
    let with_mode = |v: u32, mode: u32| (v & !0x700) | (mode << 8);
    let lvt0 = lapic_reg(lapic, APIC_LVT0);
    set_lapic_reg(lapic, APIC_LVT0, with_mode(lvt0, APIC_MODE_EXTINT));
    let lvt1 = lapic_reg(lapic, APIC_LVT1);
    set_lapic_reg(lapic, APIC_LVT1, with_mode(lvt1, APIC_MODE_NMI));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::create_guest_memory;

    #[test]
    fn pvh_segments_are_flat_32_bit() {
        let mem = create_guest_memory(16 << 20).unwrap();
        let mut sregs = kvm_sregs::default();
        setup_pvh_sregs(&mem, &mut sregs).unwrap();
        let cs = sregs.cs;
        assert_eq!(
            (cs.base, cs.limit, cs.selector, cs.type_),
            (0, 0xffff_ffff, 8, 0xb)
        );
        assert_eq!((cs.db, cs.l, cs.g, cs.s, cs.present), (1, 0, 1, 1, 1));
        assert_eq!((sregs.ss.selector, sregs.ss.type_), (0x10, 0x3));
        assert_eq!((sregs.tr.type_, sregs.tr.s, sregs.tr.limit), (0xb, 0, 0x67));
        assert_eq!(sregs.cr0 & X86_CR0_PE, 1);
        let gdt1: u64 = mem.read_obj(GuestAddress(BOOT_GDT_START.0 + 8)).unwrap();
        assert_eq!(gdt1, 0x00cf_9b00_0000_ffff);
    }

    #[test]
    fn a_sipi_starts_real_mode_at_its_page() {
        let mut sregs = kvm_sregs {
            cr0: 0x8000_0011,
            efer: 0x500,
            ..Default::default()
        };
        setup_sipi_sregs(&mut sregs, 0x08);
        assert_eq!((sregs.cs.selector, sregs.cs.base), (0x800, 0x8000));
        assert_eq!((sregs.cr0 & 1, sregs.efer), (0, 0));
        assert_eq!(sipi_regs().rip, 0);
    }

    #[test]
    fn lint_pins_get_extint_and_nmi() {
        let mut lapic = kvm_lapic_state::default();
        set_lapic_reg(&mut lapic, APIC_LVT0, 0x1_0000);
        setup_lint(&mut lapic);
        assert_eq!(lapic_reg(&lapic, APIC_LVT0), 0x1_0700);
        assert_eq!(lapic_reg(&lapic, APIC_LVT1), 0x400);
    }
}
