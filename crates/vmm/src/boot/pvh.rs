//! Booting a PVH ELF kernel (xen/include/public/arch-x86/hvm/start_info.h):
//! linux-loader loads the ELF and finds its `XEN_ELFNOTE_PHYS32_ENTRY`; we
//! write `hvm_start_info` with the command line, the memory map, the RSDP and
//! the initrd as the one module in its module list. The vCPU side of the PVH
//! entry state is in `vcpu::regs`.

use std::io::{Read, Seek};

use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::KernelLoader;
use vm_memory::{Address, GuestAddress, ReadVolatile};

use crate::memory::{
    GuestMemory, CMDLINE_START, HIMEM_START, MEMMAP_START, PVH_INFO_START, PVH_MODLIST_START,
};

use super::e820::E820Entry;
use super::initrd::InitrdPlacement;
use super::BootError;

const XEN_HVM_START_MAGIC_VALUE: u32 = 0x336e_c578;

/// A PVH kernel in guest memory.
#[derive(Clone, Copy, Debug)]
pub struct LoadedPvh {
    /// The 32-bit PVH entry point.
    pub entry: GuestAddress,
    /// The first byte after the kernel (the initrd goes above it).
    pub end: u64,
}

/// Loads a PVH ELF kernel into `mem`.
pub fn load<F: ReadVolatile + Read + Seek>(
    mem: &GuestMemory,
    image: &mut F,
    path: &str,
) -> Result<LoadedPvh, BootError> {
    let loaded =
        Elf::load(mem, None, image, Some(HIMEM_START)).map_err(|err| BootError::LoadKernel {
            path: path.to_string(),
            err,
        })?;
    match loaded.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(entry) => Ok(LoadedPvh {
            entry,
            end: loaded.kernel_end,
        }),
        _ => Err(BootError::NoPvhEntry(path.to_string())),
    }
}

/// Writes `hvm_start_info`, the memory map and the module list; returns the
/// address of `hvm_start_info` (the guest's `ebx` at entry).
pub fn write_start_info(
    mem: &GuestMemory,
    e820: &[E820Entry],
    initrd: Option<InitrdPlacement>,
    rsdp: GuestAddress,
) -> Result<GuestAddress, BootError> {
    let memmap: Vec<hvm_memmap_table_entry> = e820.iter().map(|&e| e.into()).collect();
    let modules: Vec<hvm_modlist_entry> = initrd
        .iter()
        .map(|i| hvm_modlist_entry {
            paddr: i.addr,
            size: i.size,
            ..Default::default()
        })
        .collect();
    let start_info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: 1,
        cmdline_paddr: CMDLINE_START.raw_value(),
        rsdp_paddr: rsdp.raw_value(),
        memmap_paddr: MEMMAP_START.raw_value(),
        memmap_entries: memmap.len() as u32,
        nr_modules: modules.len() as u32,
        modlist_paddr: if modules.is_empty() {
            0
        } else {
            PVH_MODLIST_START.raw_value()
        },
        ..Default::default()
    };
    let mut params = BootParams::new::<hvm_start_info>(&start_info, PVH_INFO_START);
    params.set_sections::<hvm_memmap_table_entry>(&memmap, MEMMAP_START);
    if !modules.is_empty() {
        params.set_modules::<hvm_modlist_entry>(&modules, PVH_MODLIST_START);
    }
    PvhBootConfigurator::write_bootparams::<GuestMemory>(&params, mem)
        .map_err(|e| BootError::Setup(e.to_string()))?;
    Ok(PVH_INFO_START)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::e820::{memory_map, E820_RAM};
    use crate::memory::create_guest_memory;
    use vm_memory::Bytes;

    #[test]
    fn start_info_points_at_memmap_rsdp_and_the_initrd_module() {
        let mem = create_guest_memory(64 << 20).unwrap();
        let e820 = memory_map(&mem);
        let initrd = InitrdPlacement {
            addr: 0x300_0000,
            size: 4321,
        };
        let at = write_start_info(&mem, &e820, Some(initrd), GuestAddress(0xe_0000)).unwrap();
        let info: hvm_start_info = mem.read_obj(at).unwrap();
        assert_eq!(info.magic, XEN_HVM_START_MAGIC_VALUE);
        assert_eq!(info.cmdline_paddr, CMDLINE_START.0);
        assert_eq!(info.rsdp_paddr, 0xe_0000);
        assert_eq!(info.memmap_entries, 3);
        let last: hvm_memmap_table_entry = mem
            .read_obj(GuestAddress(info.memmap_paddr + 2 * 24))
            .unwrap();
        assert_eq!(
            (last.addr, last.size, last.type_),
            (1 << 20, 63 << 20, E820_RAM)
        );
        assert_eq!(info.nr_modules, 1);
        let module: hvm_modlist_entry = mem.read_obj(GuestAddress(info.modlist_paddr)).unwrap();
        assert_eq!((module.paddr, module.size), (0x300_0000, 4321));

        let at = write_start_info(&mem, &e820, None, GuestAddress(0xe_0000)).unwrap();
        let info: hvm_start_info = mem.read_obj(at).unwrap();
        assert_eq!((info.nr_modules, info.modlist_paddr), (0, 0));
    }
}
