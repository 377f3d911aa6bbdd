//! Booting a guest the PVH way: load the ELF kernel, write the command line,
//! the memory map, the ACPI tables and `hvm_start_info`, and report the entry
//! point. The vCPU side of the PVH entry state is in `vcpu::regs`.

pub mod acpi;

use std::fs::File;
use std::io::Cursor;
use std::path::Path;

use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::elf::start_info::{hvm_memmap_table_entry, hvm_start_info};
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::{load_cmdline, Cmdline, KernelLoader};
use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::memory::{
    GuestMemory, CMDLINE_MAX_SIZE, CMDLINE_START, HIMEM_START, LEGACY_HOLE_START, MEMMAP_START,
    PVH_INFO_START,
};

const XEN_HVM_START_MAGIC_VALUE: u32 = 0x336e_c578;
const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;

/// Why a guest could not be set up to boot.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The kernel file could not be opened.
    #[error("cannot open kernel {path}: {err}")]
    OpenKernel {
        /// The path given.
        path: String,
        /// Why.
        err: std::io::Error,
    },
    /// The kernel is not a loadable ELF.
    #[error("kernel {path} is not a loadable x86-64 ELF: {err}")]
    LoadKernel {
        /// The path given.
        path: String,
        /// linux-loader's reason.
        err: linux_loader::loader::Error,
    },
    /// The ELF has no PVH entry note.
    #[error(
        "kernel {0} has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY); build it with CONFIG_PVH"
    )]
    NoPvhEntry(String),
    /// The command line is too long or has bad characters.
    #[error("bad kernel command line: {0}")]
    Cmdline(String),
    /// Writing the boot structures failed.
    #[error("writing boot structures: {0}")]
    Setup(String),
    /// The ACPI tables could not be written.
    #[error(transparent)]
    Acpi(#[from] acpi::AcpiError),
}

/// A kernel to boot: a file, or an image the VMM carries (the built-in test guest).
#[derive(Clone, Copy, Debug)]
pub enum KernelImage<'a> {
    /// A PVH ELF file.
    File(&'a Path),
    /// A PVH ELF image in memory, with a name for messages.
    Bytes {
        /// Shown in errors.
        name: &'a str,
        /// The ELF.
        image: &'a [u8],
    },
}

impl KernelImage<'_> {
    fn name(&self) -> String {
        match self {
            KernelImage::File(p) => p.display().to_string(),
            KernelImage::Bytes { name, .. } => name.to_string(),
        }
    }
}

/// Loads a PVH ELF kernel into `mem`; returns its 32-bit entry point.
pub fn load_kernel(mem: &GuestMemory, kernel: KernelImage<'_>) -> Result<GuestAddress, BootError> {
    let path = kernel.name();
    let loaded = match kernel {
        KernelImage::File(p) => {
            let mut file = File::open(p).map_err(|err| BootError::OpenKernel {
                path: path.clone(),
                err,
            })?;
            Elf::load(mem, None, &mut file, Some(HIMEM_START))
        }
        KernelImage::Bytes { image, .. } => {
            Elf::load(mem, None, &mut Cursor::new(image), Some(HIMEM_START))
        }
    };
    let loaded = loaded.map_err(|err| BootError::LoadKernel {
        path: path.clone(),
        err,
    })?;
    match loaded.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(entry) => Ok(entry),
        _ => Err(BootError::NoPvhEntry(path)),
    }
}

/// Writes the command line, memory map, ACPI tables and `hvm_start_info`;
/// returns the address of `hvm_start_info` (the guest's `ebx` at entry).
pub fn write_boot_info(
    mem: &GuestMemory,
    cmdline: &str,
    vcpus: u8,
) -> Result<GuestAddress, BootError> {
    let mut cl = Cmdline::new(CMDLINE_MAX_SIZE).map_err(|e| BootError::Cmdline(e.to_string()))?;
    if !cmdline.is_empty() {
        cl.insert_str(cmdline)
            .map_err(|e| BootError::Cmdline(e.to_string()))?;
    }
    load_cmdline(mem, CMDLINE_START, &cl).map_err(|e| BootError::Cmdline(e.to_string()))?;

    let rsdp = acpi::create_acpi_tables(mem, vcpus)?;
    let memmap = memory_map(mem);
    let start_info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: 1,
        cmdline_paddr: CMDLINE_START.raw_value(),
        rsdp_paddr: rsdp.raw_value(),
        memmap_paddr: MEMMAP_START.raw_value(),
        memmap_entries: memmap.len() as u32,
        ..Default::default()
    };
    let mut params = BootParams::new::<hvm_start_info>(&start_info, PVH_INFO_START);
    params.set_sections::<hvm_memmap_table_entry>(&memmap, MEMMAP_START);
    PvhBootConfigurator::write_bootparams::<GuestMemory>(&params, mem)
        .map_err(|e| BootError::Setup(e.to_string()))?;
    Ok(PVH_INFO_START)
}

/// The E820-style map: low RAM, the legacy hole (reserved: ACPI tables live
/// there), then every RAM region from 1 MiB up.
fn memory_map(mem: &GuestMemory) -> Vec<hvm_memmap_table_entry> {
    let entry = |addr: u64, size: u64, type_| hvm_memmap_table_entry {
        addr,
        size,
        type_,
        reserved: 0,
    };
    let mut map = vec![
        entry(0, LEGACY_HOLE_START.raw_value(), E820_RAM),
        entry(
            LEGACY_HOLE_START.raw_value(),
            HIMEM_START.raw_value() - LEGACY_HOLE_START.raw_value(),
            E820_RESERVED,
        ),
    ];
    for region in mem.iter() {
        let start = region.start_addr().raw_value().max(HIMEM_START.raw_value());
        let end = region.start_addr().raw_value() + region.len();
        if end > start {
            map.push(entry(start, end - start, E820_RAM));
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::create_guest_memory;
    use vm_memory::Bytes;

    #[test]
    fn start_info_points_at_cmdline_memmap_and_rsdp() {
        let mem = create_guest_memory(64 << 20).unwrap();
        let at = write_boot_info(&mem, "workload=idle ms=5", 2).unwrap();
        let info: hvm_start_info = mem.read_obj(at).unwrap();
        assert_eq!(info.magic, XEN_HVM_START_MAGIC_VALUE);
        let mut cmd = [0u8; 19];
        mem.read_slice(&mut cmd, GuestAddress(info.cmdline_paddr))
            .unwrap();
        assert_eq!(&cmd, b"workload=idle ms=5\0");
        assert_eq!(info.memmap_entries, 3);
        let last: hvm_memmap_table_entry = mem
            .read_obj(GuestAddress(info.memmap_paddr + 2 * 24))
            .unwrap();
        assert_eq!(
            (last.addr, last.size, last.type_),
            (1 << 20, 63 << 20, E820_RAM)
        );
        let mut sig = [0u8; 8];
        mem.read_slice(&mut sig, GuestAddress(info.rsdp_paddr))
            .unwrap();
        assert_eq!(&sig, b"RSD PTR ");
    }

    #[test]
    fn non_elf_and_missing_kernels_are_clear_errors() {
        let mem = create_guest_memory(16 << 20).unwrap();
        let err =
            load_kernel(&mem, KernelImage::File(Path::new("/nonexistent/kernel"))).unwrap_err();
        assert!(err
            .to_string()
            .starts_with("cannot open kernel /nonexistent/kernel"));
        let not_elf =
            std::env::temp_dir().join(format!("nightshift-not-elf-{}", std::process::id()));
        std::fs::write(&not_elf, b"#!/bin/sh\necho not a kernel\n").unwrap();
        let err = load_kernel(&mem, KernelImage::File(&not_elf)).unwrap_err();
        std::fs::remove_file(&not_elf).unwrap();
        assert!(matches!(err, BootError::LoadKernel { .. }), "{err}");
    }
}
