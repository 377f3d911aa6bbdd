//! The guest's physical memory map, built once from the VM's memory layout and
//! handed to the guest in whichever form its boot protocol wants: PVH
//! `hvm_memmap_table_entry`s or the Linux boot protocol's `boot_e820_entry`s.
//! Both are E820 maps, so both protocols describe the same memory.

use linux_loader::loader::bootparam::boot_e820_entry;
use linux_loader::loader::elf::start_info::hvm_memmap_table_entry;
use serde::Serialize;
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryRegion};

use crate::memory::{GuestMemory, HIMEM_START, LEGACY_HOLE_START};

/// E820 type of usable RAM.
pub const E820_RAM: u32 = 1;
/// E820 type of reserved memory.
pub const E820_RESERVED: u32 = 2;

/// One range of the memory map.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct E820Entry {
    /// First byte.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// [`E820_RAM`] or [`E820_RESERVED`].
    #[serde(rename = "type")]
    pub kind: u32,
}

impl E820Entry {
    /// The range as Linux prints it at boot: `[mem 0x...-0x...] usable`.
    pub fn linux_line(&self) -> String {
        let kind = match self.kind {
            E820_RAM => "usable",
            E820_RESERVED => "reserved",
            _ => "unknown",
        };
        format!(
            "[mem {:#018x}-{:#018x}] {kind}",
            self.addr,
            self.addr + self.size - 1
        )
    }
}

/// Low RAM, the legacy hole (reserved: ACPI tables live there), then every RAM
/// region from 1 MiB up (one, or two around the MMIO gap).
pub fn memory_map(mem: &GuestMemory) -> Vec<E820Entry> {
    let mut map = vec![
        E820Entry {
            addr: 0,
            size: LEGACY_HOLE_START.raw_value(),
            kind: E820_RAM,
        },
        E820Entry {
            addr: LEGACY_HOLE_START.raw_value(),
            size: HIMEM_START.raw_value() - LEGACY_HOLE_START.raw_value(),
            kind: E820_RESERVED,
        },
    ];
    for region in mem.iter() {
        let start = region.start_addr().raw_value().max(HIMEM_START.raw_value());
        let end = region.start_addr().raw_value() + region.len();
        if end > start {
            map.push(E820Entry {
                addr: start,
                size: end - start,
                kind: E820_RAM,
            });
        }
    }
    map
}

impl From<E820Entry> for hvm_memmap_table_entry {
    fn from(e: E820Entry) -> Self {
        hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind,
            reserved: 0,
        }
    }
}

impl From<E820Entry> for boot_e820_entry {
    fn from(e: E820Entry) -> Self {
        boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::{create_guest_memory, MMIO_GAP_END, MMIO_GAP_START};

    #[test]
    fn map_covers_ram_and_skips_the_hole_and_the_gap() {
        let mem = create_guest_memory(64 << 20).unwrap();
        let map = memory_map(&mem);
        let ranges: Vec<_> = map.iter().map(|e| (e.addr, e.size, e.kind)).collect();
        assert_eq!(
            ranges,
            vec![
                (0, 0xa_0000, E820_RAM),
                (0xa_0000, 0x6_0000, E820_RESERVED),
                (0x10_0000, (64 << 20) - 0x10_0000, E820_RAM),
            ]
        );
        assert_eq!(
            map[2].linux_line(),
            "[mem 0x0000000000100000-0x0000000003ffffff] usable"
        );

        let big = create_guest_memory(MMIO_GAP_START + (1 << 30)).unwrap();
        let map = memory_map(&big);
        assert_eq!(map.len(), 4);
        assert_eq!(map[2].addr + map[2].size, MMIO_GAP_START);
        assert_eq!((map[3].addr, map[3].size), (MMIO_GAP_END, 1 << 30));
    }
}
