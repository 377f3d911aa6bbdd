//! Placing the initial ramdisk: at the top of low RAM (below the MMIO gap and
//! below the highest address the kernel accepts), page aligned, and above
//! everything the kernel needs while it unpacks itself. That is where
//! firmware loaders put it too: as far from the kernel as RAM allows.

use std::fs::File;
use std::path::Path;

use serde::Serialize;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::memory::{GuestMemory, MMIO_GAP_START};

use super::BootError;

const PAGE: u64 = 0x1000;

/// Where the initrd went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct InitrdPlacement {
    /// Guest physical address of its first byte.
    pub addr: u64,
    /// Its size in bytes.
    pub size: u64,
}

/// Loads the file at `path` into `mem` at the highest page-aligned address
/// that ends at or below `addr_max + 1` (and below the MMIO gap) and starts
/// at or above `lowest` (the end of what the kernel occupies).
pub fn load_initrd(
    mem: &GuestMemory,
    path: &Path,
    lowest: u64,
    addr_max: u64,
) -> Result<InitrdPlacement, BootError> {
    let io_err = |err| BootError::Initrd {
        path: path.display().to_string(),
        err,
    };
    let mut file = File::open(path).map_err(io_err)?;
    let size = file.metadata().map_err(io_err)?.len();
    let addr = place(mem, size, lowest, addr_max).ok_or(BootError::InitrdTooLarge {
        path: path.display().to_string(),
        size,
    })?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, size as usize)
        .map_err(|e| io_err(std::io::Error::other(e)))?;
    Ok(InitrdPlacement { addr, size })
}

/// The address for `size` bytes, or None if they do not fit.
fn place(mem: &GuestMemory, size: u64, lowest: u64, addr_max: u64) -> Option<u64> {
    // The first RAM region holds all of low RAM (see memory::ram_ranges).
    let low = mem.iter().next()?;
    let ram_end = low.start_addr().raw_value() + low.len();
    let end = ram_end.min(MMIO_GAP_START).min(addr_max.saturating_add(1));
    let addr = end.checked_sub(size)? & !(PAGE - 1);
    (addr >= lowest.next_multiple_of(PAGE)).then_some(addr)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::create_guest_memory;
    use vm_memory::Bytes;

    #[test]
    fn initrd_goes_to_the_top_of_ram_page_aligned() {
        let mem = create_guest_memory(64 << 20).unwrap();
        assert_eq!(place(&mem, 0x1800, 0, u64::MAX), Some((64 << 20) - 0x2000));
        // The kernel's limit wins over the end of RAM.
        assert_eq!(place(&mem, 0x1000, 0, 0x0fff_ffff >> 4), Some(0x00ff_f000));
        // Too big to fit above the kernel.
        assert_eq!(place(&mem, 60 << 20, 8 << 20, u64::MAX), None);
        assert_eq!(place(&mem, 128 << 20, 0, u64::MAX), None);
    }

    #[test]
    fn initrd_bytes_land_where_placed() {
        let mem = create_guest_memory(16 << 20).unwrap();
        let path =
            std::env::temp_dir().join(format!("nightshift-initrd-test-{}", std::process::id()));
        std::fs::write(&path, b"070701initrd").unwrap();
        let at = load_initrd(&mem, &path, 2 << 20, u64::MAX).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(
            at,
            InitrdPlacement {
                addr: (16 << 20) - 0x1000,
                size: 12
            }
        );
        let mut back = [0u8; 12];
        mem.read_slice(&mut back, GuestAddress(at.addr)).unwrap();
        assert_eq!(&back, b"070701initrd");
        let err = load_initrd(&mem, Path::new("/nonexistent/initrd"), 0, u64::MAX).unwrap_err();
        assert!(matches!(err, BootError::Initrd { .. }), "{err}");
    }
}
