//! Booting a bzImage through the Linux x86 boot protocol's 64-bit entry
//! (Documentation/arch/x86/boot.rst): linux-loader copies the protected-mode
//! kernel to `code32_start` and hands back the image's setup header; we fill
//! `boot_params` (the "zero page") around it with the E820 map, command line,
//! initrd and RSDP, and the boot CPU enters at `code32_start + 0x200` in long
//! mode with `rsi` pointing at it (see [`super::long_mode`]).

use std::fs::File;

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_params, setup_header};
use linux_loader::loader::bzimage::BzImage;
use linux_loader::loader::KernelLoader;
use vm_memory::{Address, GuestAddress};

use crate::memory::{GuestMemory, BOOT_PARAMS_START, CMDLINE_START, HIMEM_START};

use super::e820::E820Entry;
use super::initrd::InitrdPlacement;
use super::BootError;

/// `type_of_loader`: "undefined" loader (boot.rst assigns no ID to us).
const LOADER_TYPE_UNDEFINED: u8 = 0xff;
/// `xloadflags`: the kernel has a 64-bit entry at `code32_start + 0x200`.
const XLF_KERNEL_64: u16 = 1 << 0;
/// The 64-bit entry's offset from the start of the protected-mode kernel.
const ENTRY_64_OFFSET: u64 = 0x200;
/// Oldest boot protocol we speak: 2.12 has `xloadflags` and 64-bit addresses
/// (and `acpi_rsdp_addr` needs 2.14, but older kernels simply ignore it).
const MIN_PROTOCOL: u16 = 0x020c;
/// `boot_params.e820_table` has room for this many entries.
const E820_MAX_ZEROPAGE: usize = 128;

/// A bzImage in guest memory.
#[derive(Clone, Copy, Debug)]
pub struct LoadedBzImage {
    /// The image's setup header (`code32_start` set to where it was loaded).
    pub header: setup_header,
    /// The 64-bit entry point.
    pub entry: GuestAddress,
    /// The lowest address the initrd may start at: above the kernel and the
    /// buffer it decompresses itself into (`init_size` from where it runs).
    pub initrd_lowest: u64,
}

/// Loads the bzImage in `file` at its preferred `code32_start`.
pub fn load(mem: &GuestMemory, file: &mut File, path: &str) -> Result<LoadedBzImage, BootError> {
    let loaded =
        BzImage::load(mem, None, file, Some(HIMEM_START)).map_err(|err| BootError::LoadKernel {
            path: path.to_string(),
            err,
        })?;
    let bad = |why: &'static str| BootError::UnsupportedBzImage {
        path: path.to_string(),
        why,
    };
    let header = loaded.setup_header.ok_or(bad("no setup header"))?;
    if header.version < MIN_PROTOCOL {
        return Err(bad("boot protocol older than 2.12"));
    }
    if header.xloadflags & XLF_KERNEL_64 == 0 {
        return Err(bad("no 64-bit entry point (XLF_KERNEL_64)"));
    }
    let load = loaded.kernel_load.raw_value();
    // head_64.S runs from code32_start rounded up to kernel_alignment, or from
    // pref_address if that is higher, and needs init_size bytes from there.
    let align = u64::from(header.kernel_alignment).max(1);
    let runs_at = load.next_multiple_of(align).max(header.pref_address);
    let initrd_lowest = (runs_at + u64::from(header.init_size)).max(loaded.kernel_end);
    Ok(LoadedBzImage {
        header,
        entry: GuestAddress(load + ENTRY_64_OFFSET),
        initrd_lowest,
    })
}

/// The zero page for `image`: its header, our loader's fields, the memory
/// map, the command line (already at [`CMDLINE_START`]), the initrd, the RSDP.
pub fn boot_params(
    image: &LoadedBzImage,
    cmdline_len: usize,
    e820: &[E820Entry],
    initrd: Option<InitrdPlacement>,
    rsdp: GuestAddress,
) -> Result<boot_params, BootError> {
    let mut params = boot_params {
        hdr: image.header,
        ..Default::default()
    };
    let cmdline_max = { params.hdr.cmdline_size } as usize;
    if cmdline_len > cmdline_max {
        return Err(BootError::Cmdline(format!(
            "{cmdline_len} bytes; this kernel takes at most {cmdline_max}"
        )));
    }
    if e820.len() > E820_MAX_ZEROPAGE {
        return Err(BootError::Setup(format!(
            "{} memory map entries do not fit the zero page",
            e820.len()
        )));
    }
    params.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    params.hdr.cmd_line_ptr = CMDLINE_START.raw_value() as u32;
    if let Some(initrd) = initrd {
        params.hdr.ramdisk_image = initrd.addr as u32;
        params.hdr.ramdisk_size = initrd.size as u32;
        params.ext_ramdisk_image = (initrd.addr >> 32) as u32;
        params.ext_ramdisk_size = (initrd.size >> 32) as u32;
    }
    params.acpi_rsdp_addr = rsdp.raw_value();
    for (slot, entry) in params.e820_table.iter_mut().zip(e820) {
        *slot = (*entry).into();
    }
    params.e820_entries = e820.len() as u8;
    Ok(params)
}

/// Writes `params` to the zero page; returns its address (the guest's `rsi`).
pub fn write_boot_params(
    mem: &GuestMemory,
    params: &boot_params,
) -> Result<GuestAddress, BootError> {
    let bp = BootParams::new::<boot_params>(params, BOOT_PARAMS_START);
    LinuxBootConfigurator::write_bootparams::<GuestMemory>(&bp, mem)
        .map_err(|e| BootError::Setup(e.to_string()))?;
    Ok(BOOT_PARAMS_START)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::e820::{memory_map, E820_RAM};
    use crate::memory::create_guest_memory;
    use vm_memory::Bytes;

    fn image() -> LoadedBzImage {
        LoadedBzImage {
            header: setup_header {
                header: 0x5372_6448,
                version: 0x020f,
                code32_start: 0x10_0000,
                cmdline_size: 2047,
                xloadflags: XLF_KERNEL_64,
                ..Default::default()
            },
            entry: GuestAddress(0x10_0200),
            initrd_lowest: 0x400_0000,
        }
    }

    #[test]
    fn zero_page_carries_e820_cmdline_initrd_and_rsdp() {
        let mem = create_guest_memory(512 << 20).unwrap();
        let e820 = memory_map(&mem);
        let initrd = InitrdPlacement {
            addr: 0x1f00_0000,
            size: 0x12_3456,
        };
        let params =
            boot_params(&image(), 40, &e820, Some(initrd), GuestAddress(0xe_0000)).unwrap();
        let at = write_boot_params(&mem, &params).unwrap();

        // Read it back at the offsets boot.rst documents ("zero page" layout).
        let u32_at = |off: u64| mem.read_obj::<u32>(at.unchecked_add(off)).unwrap();
        let u64_at = |off: u64| mem.read_obj::<u64>(at.unchecked_add(off)).unwrap();
        assert_eq!(mem.read_obj::<u8>(at.unchecked_add(0x1e8)).unwrap(), 3);
        assert_eq!(u32_at(0x202), 0x5372_6448); // "HdrS"
        assert_eq!(mem.read_obj::<u8>(at.unchecked_add(0x210)).unwrap(), 0xff);
        assert_eq!(u32_at(0x218), 0x1f00_0000); // ramdisk_image
        assert_eq!(u32_at(0x21c), 0x12_3456); // ramdisk_size
        assert_eq!(u32_at(0x228), CMDLINE_START.0 as u32); // cmd_line_ptr
        assert_eq!(u64_at(0x070), 0xe_0000); // acpi_rsdp_addr
        for (i, want) in e820.iter().enumerate() {
            let off = 0x2d0 + 20 * i as u64;
            let got = (u64_at(off), u64_at(off + 8), u32_at(off + 16));
            assert_eq!(got, (want.addr, want.size, want.kind));
        }
        assert_eq!(u32_at(0x2d0 + 20 * 2 + 16), E820_RAM);
    }

    #[test]
    fn too_long_a_command_line_is_refused() {
        let err = boot_params(&image(), 4096, &[], None, GuestAddress(0)).unwrap_err();
        assert!(matches!(err, BootError::Cmdline(_)), "{err}");
    }
}
