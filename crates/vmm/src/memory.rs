//! Guest physical memory: the address map and the RAM regions backing it.
//!
//! ```text
//! 0x0000_0000  RAM (low)         boot GDT, hvm_start_info or boot_params, memory map,
//!                                 long-mode page tables, command line
//! 0x000A_0000  reserved          legacy hole; ACPI tables live at 0xE_0000
//! 0x0010_0000  RAM               kernel image (PVH ELF p_paddr, bzImage code32_start),
//!                                 the rest of RAM, the initrd at its top (below the gap)
//! 0xC000_0000  MMIO gap          virtio-mmio devices, IOAPIC, LAPIC
//! 0x1_0000_0000 RAM (high)       whatever did not fit below the gap
//! ```

use std::sync::Arc;

use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

/// Guest memory as the rest of the VMM shares it.
pub type GuestMemory = GuestMemoryMmap<()>;

/// Where the boot GDT for the PVH entry state lives.
pub const BOOT_GDT_START: GuestAddress = GuestAddress(0x500);
/// `struct hvm_start_info`.
pub const PVH_INFO_START: GuestAddress = GuestAddress(0x6000);
/// The PVH memory map (`hvm_memmap_table_entry` array).
pub const MEMMAP_START: GuestAddress = GuestAddress(0x7000);
/// The PVH module list (`hvm_modlist_entry` array: the initrd).
pub const PVH_MODLIST_START: GuestAddress = GuestAddress(0x6800);
/// The Linux boot protocol's `boot_params` ("zero page"). A VM boots one
/// protocol, so it shares the page with the PVH memory map, which it does not use.
pub const BOOT_PARAMS_START: GuestAddress = GuestAddress(0x7000);
/// Long-mode page tables for the bzImage 64-bit entry: PML4, PDPT, then four
/// page directories identity-mapping the low 4 GiB with 2 MiB pages.
pub const PML4_START: GuestAddress = GuestAddress(0x9000);
/// Kernel command line.
pub const CMDLINE_START: GuestAddress = GuestAddress(0x2_0000);
/// Largest command line we place (it must fit below the legacy hole).
pub const CMDLINE_MAX_SIZE: usize = 0x1_0000;
/// Start of the legacy hole (VGA, option ROMs, BIOS): not RAM to the guest.
pub const LEGACY_HOLE_START: GuestAddress = GuestAddress(0xA_0000);
/// ACPI tables, in the BIOS area where a scanning guest also finds the RSDP.
pub const ACPI_START: GuestAddress = GuestAddress(0xE_0000);
/// Where high memory (and the kernel) starts.
pub const HIMEM_START: GuestAddress = GuestAddress(0x10_0000);
/// Start of the 32-bit MMIO gap; RAM above this goes to [`RAM_ABOVE_GAP_START`].
pub const MMIO_GAP_START: u64 = 0xC000_0000;
/// End of the 32-bit MMIO gap.
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// First virtio-mmio device window; each device takes [`VIRTIO_MMIO_SIZE`].
pub const VIRTIO_MMIO_START: u64 = 0xD000_0000;
/// Size of one virtio-mmio device window.
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// IOAPIC registers (fixed by the in-kernel irqchip).
pub const IOAPIC_START: u64 = 0xFEC0_0000;
/// Local APIC registers (fixed by the in-kernel irqchip).
pub const LAPIC_START: u64 = 0xFEE0_0000;
/// KVM's TSS area for real-mode emulation on Intel: three pages in the MMIO gap.
pub const KVM_TSS_ADDRESS: usize = 0xFFFB_D000;
/// KVM's identity-map page, just below the TSS.
pub const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xFFFB_C000;
/// RAM placed above the MMIO gap.
pub const RAM_ABOVE_GAP_START: GuestAddress = GuestAddress(MMIO_GAP_END);

/// Smallest guest we accept: the fixed boot structures and a small kernel must fit.
pub const MIN_MEM_SIZE: u64 = 8 << 20;

/// The RAM ranges for a guest of `mem_size` bytes: one range, or two when RAM
/// would overlap the MMIO gap.
pub fn ram_ranges(mem_size: u64) -> Vec<(GuestAddress, usize)> {
    if mem_size <= MMIO_GAP_START {
        vec![(GuestAddress(0), mem_size as usize)]
    } else {
        vec![
            (GuestAddress(0), MMIO_GAP_START as usize),
            (RAM_ABOVE_GAP_START, (mem_size - MMIO_GAP_START) as usize),
        ]
    }
}

/// Allocates anonymous, private guest RAM of `mem_size` bytes.
pub fn create_guest_memory(
    mem_size: u64,
) -> Result<Arc<GuestMemory>, vm_memory::mmap::FromRangesError> {
    GuestMemoryMmap::from_ranges(&ram_ranges(mem_size)).map(Arc::new)
}

/// Host virtual address ranges `[start, end)` of guest RAM, to tell guest memory
/// apart from the VMM's own memory when measuring RSS.
pub fn host_ranges(mem: &GuestMemory) -> Vec<(usize, usize)> {
    mem.iter()
        .filter_map(|region| {
            let host = mem.get_host_address(region.start_addr()).ok()? as usize;
            Some((host, host + region.len() as usize))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_guest_is_one_range() {
        assert_eq!(ram_ranges(256 << 20), vec![(GuestAddress(0), 256 << 20)]);
    }

    #[test]
    fn large_guest_skips_the_mmio_gap() {
        let ranges = ram_ranges(4 << 30);
        assert_eq!(ranges.len(), 2);
        assert_eq!(ranges[0], (GuestAddress(0), MMIO_GAP_START as usize));
        assert_eq!(ranges[1], (GuestAddress(MMIO_GAP_END), (1 << 30) as usize));
    }

    // The fixed addresses do not overlap (checked at compile time).
    const _: () = {
        assert!(CMDLINE_START.0 + CMDLINE_MAX_SIZE as u64 <= LEGACY_HOLE_START.0);
        assert!(MEMMAP_START.0 > PVH_INFO_START.0);
        assert!(PVH_MODLIST_START.0 > PVH_INFO_START.0 && PVH_MODLIST_START.0 < MEMMAP_START.0);
        // PML4, PDPT and four page directories end below the command line.
        assert!(PML4_START.0 >= BOOT_PARAMS_START.0 + 0x1000);
        assert!(PML4_START.0 + 6 * 0x1000 <= CMDLINE_START.0);
        assert!(VIRTIO_MMIO_START >= MMIO_GAP_START && VIRTIO_MMIO_START < IOAPIC_START);
        assert!((KVM_IDENTITY_MAP_ADDRESS as usize) < KVM_TSS_ADDRESS);
    };
}
