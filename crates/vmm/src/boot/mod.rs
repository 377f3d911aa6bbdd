//! Booting a guest: load the kernel (a PVH ELF or a bzImage, told apart by
//! their headers), the initrd, the command line, the memory map and the ACPI
//! tables, and set the boot CPU's entry state for the kernel's protocol.
//!
//! - PVH ELF ([`pvh`]): 32-bit protected-mode entry at the ELF note,
//!   `hvm_start_info` in `ebx`, the initrd as its one module. The built-in
//!   test guest boots this way.
//! - bzImage ([`bzimage`]): the Linux boot protocol's 64-bit entry with
//!   `boot_params` in `rsi` ([`long_mode`]). Distribution kernels ship this.
//!
//! Both get the same memory map ([`e820`]) and the same ACPI tables
//! ([`acpi`], [`dsdt`]), so a kernel sees the same machine either way.

pub mod acpi;
pub mod bzimage;
pub mod dsdt;
pub mod e820;
pub mod initrd;
pub mod long_mode;
pub mod pvh;

use std::fs::File;
use std::io::{Cursor, Read, Seek, SeekFrom};
use std::path::Path;

use kvm_ioctls::VcpuFd;
use linux_loader::loader::{load_cmdline, Cmdline};
use serde::Serialize;
use vm_memory::GuestAddress;

use crate::memory::{GuestMemory, CMDLINE_MAX_SIZE, CMDLINE_START, MMIO_GAP_START};
use crate::vcpu::regs;

pub use dsdt::MmioSlot;
pub use e820::E820Entry;
pub use initrd::InitrdPlacement;

/// Why a guest could not be set up to boot.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The kernel file could not be opened or read.
    #[error("cannot open kernel {path}: {err}")]
    OpenKernel {
        /// The path given.
        path: String,
        /// Why.
        err: std::io::Error,
    },
    /// The kernel is neither an ELF nor a bzImage.
    #[error("kernel {0} is neither an ELF (PVH) nor a bzImage (no ELF magic, no \"HdrS\")")]
    UnknownFormat(String),
    /// The kernel is not loadable.
    #[error("kernel {path} cannot be loaded: {err}")]
    LoadKernel {
        /// The path given.
        path: String,
        /// linux-loader's reason.
        err: linux_loader::loader::Error,
    },
    /// A bzImage this VMM cannot boot.
    #[error("bzImage {path}: {why}")]
    UnsupportedBzImage {
        /// The path given.
        path: String,
        /// What it lacks.
        why: &'static str,
    },
    /// The ELF has no PVH entry note.
    #[error(
        "kernel {0} has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY); build it with CONFIG_PVH"
    )]
    NoPvhEntry(String),
    /// The initrd could not be read.
    #[error("cannot read initrd {path}: {err}")]
    Initrd {
        /// The path given.
        path: String,
        /// Why.
        err: std::io::Error,
    },
    /// The initrd does not fit between the kernel and the top of low RAM.
    #[error("initrd {path} ({size} bytes) does not fit in guest RAM above the kernel; give the VM more memory")]
    InitrdTooLarge {
        /// The path given.
        path: String,
        /// Its size.
        size: u64,
    },
    /// The command line is too long or has bad characters.
    #[error("bad kernel command line: {0}")]
    Cmdline(String),
    /// Writing the boot structures failed.
    #[error("writing boot structures: {0}")]
    Setup(String),
    /// Setting the boot CPU's registers failed.
    #[error("setting the boot CPU's entry state: {0}")]
    EntryState(#[source] kvm_ioctls::Error),
    /// The ACPI tables could not be written.
    #[error(transparent)]
    Acpi(#[from] acpi::AcpiError),
}

/// A kernel to boot: a file, or an image the VMM carries (the built-in test guest).
#[derive(Clone, Copy, Debug)]
pub enum KernelImage<'a> {
    /// A PVH ELF or bzImage file.
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

/// What the guest is booted with besides its kernel.
#[derive(Clone, Copy, Debug)]
pub struct BootConfig<'a> {
    /// The kernel command line.
    pub cmdline: &'a str,
    /// The initial ramdisk, if any.
    pub initrd: Option<&'a Path>,
    /// vCPUs (the MADT lists one local APIC each).
    pub vcpus: u8,
    /// Memory-mapped devices to describe in the DSDT.
    pub devices: &'a [MmioSlot],
}

/// How the boot CPU enters the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryState {
    /// PVH: 32-bit protected mode at `entry`, `ebx` = `start_info`.
    Pvh {
        /// The PVH entry point.
        entry: GuestAddress,
        /// `hvm_start_info`.
        start_info: GuestAddress,
    },
    /// Linux boot protocol: 64-bit mode at `entry`, `rsi` = `boot_params`.
    Linux64 {
        /// `code32_start + 0x200`.
        entry: GuestAddress,
        /// The zero page.
        boot_params: GuestAddress,
    },
}

/// What the VMM set up, for the run report (and for tests that compare it
/// with what the guest says it found).
#[derive(Clone, Debug, Serialize)]
pub struct BootSummary {
    /// `pvh` or `bzimage`.
    pub protocol: &'static str,
    /// The memory map given to the guest.
    pub e820: Vec<E820Entry>,
    /// Where the initrd went.
    pub initrd: Option<InitrdPlacement>,
}

/// The two kernel formats, from the first bytes of the file.
enum Format {
    Elf,
    BzImage,
}

fn detect(header: &[u8]) -> Option<Format> {
    if header.starts_with(b"\x7fELF") {
        Some(Format::Elf)
    } else if header.get(0x202..0x206) == Some(b"HdrS") {
        Some(Format::BzImage)
    } else {
        None
    }
}

/// Loads the kernel and writes everything it boots with; returns how the boot
/// CPU enters it and what was set up.
pub fn prepare(
    mem: &GuestMemory,
    kernel: KernelImage<'_>,
    config: &BootConfig<'_>,
) -> Result<(EntryState, BootSummary), BootError> {
    let path = kernel.name();
    let e820 = e820::memory_map(mem);
    let cmdline_len = write_cmdline(mem, config.cmdline)?;
    let rsdp = acpi::create_acpi_tables(mem, config.vcpus, config.devices)?;
    let load_initrd = |lowest: u64, addr_max: u64| {
        config
            .initrd
            .map(|p| initrd::load_initrd(mem, p, lowest, addr_max))
            .transpose()
    };
    let (entry, protocol, initrd) = match kernel {
        KernelImage::Bytes { image, .. } => {
            let loaded = pvh::load(mem, &mut Cursor::new(image), &path)?;
            boot_pvh(mem, loaded, load_initrd, &e820, rsdp)?
        }
        KernelImage::File(p) => {
            let open_err = |err| BootError::OpenKernel {
                path: path.clone(),
                err,
            };
            let mut file = File::open(p).map_err(open_err)?;
            let mut header = Vec::with_capacity(0x206);
            (&mut file)
                .take(0x206)
                .read_to_end(&mut header)
                .and_then(|_| file.seek(SeekFrom::Start(0)))
                .map_err(open_err)?;
            match detect(&header) {
                Some(Format::Elf) => {
                    let loaded = pvh::load(mem, &mut file, &path)?;
                    boot_pvh(mem, loaded, load_initrd, &e820, rsdp)?
                }
                Some(Format::BzImage) => {
                    let image = bzimage::load(mem, &mut file, &path)?;
                    let addr_max = u64::from(image.header.initrd_addr_max);
                    let initrd = load_initrd(image.initrd_lowest, addr_max)?;
                    let params = bzimage::boot_params(&image, cmdline_len, &e820, initrd, rsdp)?;
                    let entry = EntryState::Linux64 {
                        entry: image.entry,
                        boot_params: bzimage::write_boot_params(mem, &params)?,
                    };
                    (entry, "bzimage", initrd)
                }
                None => return Err(BootError::UnknownFormat(path)),
            }
        }
    };
    let summary = BootSummary {
        protocol,
        e820,
        initrd,
    };
    Ok((entry, summary))
}

type Booted = (EntryState, &'static str, Option<InitrdPlacement>);

/// The rest of a PVH boot once the ELF is loaded: the initrd above it, then
/// `hvm_start_info`.
fn boot_pvh(
    mem: &GuestMemory,
    loaded: pvh::LoadedPvh,
    load_initrd: impl Fn(u64, u64) -> Result<Option<InitrdPlacement>, BootError>,
    e820: &[E820Entry],
    rsdp: GuestAddress,
) -> Result<Booted, BootError> {
    let initrd = load_initrd(loaded.end, MMIO_GAP_START - 1)?;
    let start_info = pvh::write_start_info(mem, e820, initrd, rsdp)?;
    let entry = EntryState::Pvh {
        entry: loaded.entry,
        start_info,
    };
    Ok((entry, "pvh", initrd))
}

/// `cmdline` with the VMM's own kernel parameters `extra` (each with a
/// leading space) added: before ` -- ` if there is one, since Linux passes
/// everything after it to init as arguments.
pub fn with_kernel_args(cmdline: &str, extra: &str) -> String {
    let joined = if cmdline.starts_with("-- ") {
        format!("{extra} {cmdline}")
    } else if let Some(at) = cmdline.find(" -- ") {
        format!("{}{extra}{}", &cmdline[..at], &cmdline[at..])
    } else {
        format!("{cmdline}{extra}")
    };
    joined.trim_start().to_string()
}

/// Writes the NUL-terminated command line at [`CMDLINE_START`]; returns its length.
fn write_cmdline(mem: &GuestMemory, cmdline: &str) -> Result<usize, BootError> {
    let mut cl = Cmdline::new(CMDLINE_MAX_SIZE).map_err(|e| BootError::Cmdline(e.to_string()))?;
    if !cmdline.is_empty() {
        cl.insert_str(cmdline)
            .map_err(|e| BootError::Cmdline(e.to_string()))?;
    }
    load_cmdline(mem, CMDLINE_START, &cl).map_err(|e| BootError::Cmdline(e.to_string()))?;
    Ok(cmdline.len())
}

/// Puts the boot CPU (`fd`) in `entry`'s state.
pub fn set_entry_state(
    fd: &VcpuFd,
    mem: &GuestMemory,
    entry: &EntryState,
) -> Result<(), BootError> {
    let mut sregs = fd.get_sregs().map_err(BootError::EntryState)?;
    let setup = match entry {
        EntryState::Pvh { .. } => regs::setup_pvh_sregs(mem, &mut sregs),
        EntryState::Linux64 { .. } => long_mode::setup_sregs(mem, &mut sregs),
    };
    setup.map_err(|e| BootError::Setup(e.to_string()))?;
    fd.set_sregs(&sregs).map_err(BootError::EntryState)?;
    let regs = match *entry {
        EntryState::Pvh { entry, start_info } => regs::pvh_regs(entry, start_info),
        EntryState::Linux64 { entry, boot_params } => long_mode::entry_regs(entry, boot_params),
    };
    fd.set_regs(&regs).map_err(BootError::EntryState)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::create_guest_memory;
    use vm_memory::Bytes;

    #[test]
    fn command_line_lands_nul_terminated() {
        let mem = create_guest_memory(16 << 20).unwrap();
        assert_eq!(write_cmdline(&mem, "workload=idle ms=5").unwrap(), 18);
        let mut cmd = [0u8; 19];
        mem.read_slice(&mut cmd, CMDLINE_START).unwrap();
        assert_eq!(&cmd, b"workload=idle ms=5\0");
    }

    #[test]
    fn vmm_parameters_go_before_the_init_arguments() {
        let extra = " virtio_mmio.device=4K@0xd0000000:5";
        assert_eq!(
            with_kernel_args("console=ttyS0 -- echo hi", extra),
            "console=ttyS0 virtio_mmio.device=4K@0xd0000000:5 -- echo hi"
        );
        assert_eq!(
            with_kernel_args("workload=idle", extra),
            "workload=idle virtio_mmio.device=4K@0xd0000000:5"
        );
        assert_eq!(
            with_kernel_args("", extra),
            "virtio_mmio.device=4K@0xd0000000:5"
        );
        assert_eq!(
            with_kernel_args("-- sh", extra),
            "virtio_mmio.device=4K@0xd0000000:5 -- sh"
        );
    }

    #[test]
    fn formats_are_told_apart_by_their_headers() {
        let mut bz = vec![0u8; 0x206];
        bz[0x202..].copy_from_slice(b"HdrS");
        assert!(matches!(detect(&bz), Some(Format::BzImage)));
        assert!(matches!(detect(b"\x7fELF\x02\x01"), Some(Format::Elf)));
        assert!(detect(b"#!/bin/sh\n").is_none());
    }

    #[test]
    fn non_kernels_and_missing_kernels_are_clear_errors() {
        let mem = create_guest_memory(16 << 20).unwrap();
        let config = BootConfig {
            cmdline: "",
            initrd: None,
            vcpus: 1,
            devices: &[],
        };
        let err = prepare(
            &mem,
            KernelImage::File(Path::new("/nonexistent/kernel")),
            &config,
        )
        .unwrap_err();
        assert!(err
            .to_string()
            .starts_with("cannot open kernel /nonexistent/kernel"));
        let not_kernel =
            std::env::temp_dir().join(format!("nightshift-not-elf-{}", std::process::id()));
        std::fs::write(&not_kernel, b"#!/bin/sh\necho not a kernel\n").unwrap();
        let err = prepare(&mem, KernelImage::File(&not_kernel), &config).unwrap_err();
        assert!(matches!(err, BootError::UnknownFormat(_)), "{err}");
        let mut fake_bz = vec![0u8; 0x1000];
        fake_bz[0x202..0x206].copy_from_slice(b"HdrS");
        std::fs::write(&not_kernel, &fake_bz).unwrap();
        let err = prepare(&mem, KernelImage::File(&not_kernel), &config).unwrap_err();
        std::fs::remove_file(&not_kernel).unwrap();
        assert!(matches!(err, BootError::LoadKernel { .. }), "{err}");
    }
}
