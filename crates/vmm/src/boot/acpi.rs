//! ACPI tables, so a guest finds its CPUs, interrupt controllers and devices
//! the standard way: RSDP → XSDT → MADT (one local APIC per vCPU, the IOAPIC),
//! FADT (hardware-reduced: no legacy PM blocks; the sleep control/status and
//! reset registers of `devices::power`) → DSDT (COM1, the virtio-mmio devices,
//! `\_S5_`; see [`super::dsdt`]).

use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT,
};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use vm_memory::{Address, Bytes, GuestAddress};

use crate::devices::power::{RESET_PORT, RESET_VALUE, SLEEP_CONTROL_PORT};
use crate::memory::{GuestMemory, ACPI_START, HIMEM_START, IOAPIC_START, LAPIC_START};

use super::dsdt::{self, MmioSlot};

pub(crate) const OEM_ID: [u8; 6] = *b"NSHIFT";
pub(crate) const OEM_TABLE_ID: [u8; 8] = *b"NSHIFTVM";
pub(crate) const OEM_REVISION: u32 = 1;

/// The IOAPIC as the MADT describes it (ID, address, first GSI).
pub const IOAPIC_ID: u8 = 0;
/// First GSI of the IOAPIC.
pub const IOAPIC_GSI_BASE: u32 = 0;

/// Why the ACPI tables could not be written.
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    /// The tables did not fit between [`ACPI_START`] and [`HIMEM_START`].
    #[error("ACPI tables overflow the BIOS area")]
    Overflow,
    /// Guest memory refused the write.
    #[error("writing ACPI tables to guest memory")]
    Write(#[source] vm_memory::GuestMemoryError),
    /// A device slot the guest could not use.
    #[error("device slot {slot:x?}: {why}")]
    BadSlot {
        /// The slot.
        slot: MmioSlot,
        /// What is wrong with it.
        why: &'static str,
    },
}

/// A one-byte register in port I/O space.
fn io_register(port: u64) -> GAS {
    GAS::new(AddressSpace::SystemIo, 8, 0, AccessSize::ByteAccess, port)
}

/// Writes the tables for `vcpus` CPUs and the memory-mapped `devices`;
/// returns the RSDP's address.
pub fn create_acpi_tables(
    mem: &GuestMemory,
    vcpus: u8,
    devices: &[MmioSlot],
) -> Result<GuestAddress, AcpiError> {
    let mut writer = TableWriter {
        mem,
        next: ACPI_START,
    };

    // The RSDP comes first (at a 16-byte boundary in the BIOS area, where guests
    // without a start-info pointer scan for it); it points at the XSDT we write last.
    let rsdp_addr = writer.reserve(Rsdp::len() as u64)?;

    let dsdt_addr = writer.write(&dsdt::dsdt(devices)?)?;

    let mut fadt = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton)
        .flag(Flags::ResetRegSup)
        .dsdt_64(dsdt_addr.raw_value());
    fadt.sleep_control_reg = io_register(SLEEP_CONTROL_PORT);
    fadt.sleep_status_reg = io_register(SLEEP_CONTROL_PORT);
    fadt.reset_reg = io_register(RESET_PORT);
    fadt.reset_value = RESET_VALUE;
    let fadt = fadt.finalize();
    let fadt_addr = writer.write(&aml_bytes(&fadt))?;

    let mut madt = MADT::new(
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
        LocalInterruptController::Address(LAPIC_START as u32),
    );
    for id in 0..vcpus {
        madt.add_structure(ProcessorLocalApic::new(id, id, EnabledStatus::Enabled));
    }
    madt.add_structure(IoApic::new(IOAPIC_ID, IOAPIC_START as u32, IOAPIC_GSI_BASE));
    let madt_addr = writer.write(&aml_bytes(&madt))?;

    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(fadt_addr.raw_value());
    xsdt.add_entry(madt_addr.raw_value());
    let xsdt_addr = writer.write(&aml_bytes(&xsdt))?;

    let rsdp = Rsdp::new(OEM_ID, xsdt_addr.raw_value());
    writer.write_at(rsdp_addr, &aml_bytes(&rsdp))?;
    Ok(rsdp_addr)
}

fn aml_bytes(table: &dyn Aml) -> Vec<u8> {
    let mut bytes = Vec::new();
    table.to_aml_bytes(&mut bytes);
    bytes
}

/// Places tables one after another, 16-byte aligned, below high memory.
struct TableWriter<'a> {
    mem: &'a GuestMemory,
    next: GuestAddress,
}

impl TableWriter<'_> {
    fn reserve(&mut self, len: u64) -> Result<GuestAddress, AcpiError> {
        let addr = self.next;
        let end = addr.checked_add(len).filter(|e| *e <= HIMEM_START);
        let end = end.ok_or(AcpiError::Overflow)?;
        self.next = end.unchecked_align_up(16);
        Ok(addr)
    }

    fn write(&mut self, bytes: &[u8]) -> Result<GuestAddress, AcpiError> {
        let addr = self.reserve(bytes.len() as u64)?;
        self.write_at(addr, bytes)?;
        Ok(addr)
    }

    fn write_at(&self, addr: GuestAddress, bytes: &[u8]) -> Result<(), AcpiError> {
        self.mem.write_slice(bytes, addr).map_err(AcpiError::Write)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::create_guest_memory;

    fn read(mem: &GuestMemory, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    fn checksum_ok(bytes: &[u8]) -> bool {
        bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)) == 0
    }

    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
    }

    #[test]
    fn madt_lists_every_vcpu_and_checksums_hold() {
        let mem = create_guest_memory(16 << 20).unwrap();
        let rsdp_addr = create_acpi_tables(&mem, 3, &[]).unwrap();
        let rsdp = read(&mem, rsdp_addr.0, 36);
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        assert!(checksum_ok(&rsdp[..20]) && checksum_ok(&rsdp));
        let xsdt_addr = u64::from_le_bytes(rsdp[24..32].try_into().unwrap());
        let xsdt_len = u32_at(&read(&mem, xsdt_addr, 8), 4) as usize;
        let xsdt = read(&mem, xsdt_addr, xsdt_len);
        assert!(checksum_ok(&xsdt));
        let madt_addr = u64::from_le_bytes(xsdt[44..52].try_into().unwrap());
        let madt_len = u32_at(&read(&mem, madt_addr, 8), 4) as usize;
        let madt = read(&mem, madt_addr, madt_len);
        assert_eq!(&madt[..4], b"APIC");
        assert!(checksum_ok(&madt));
        // Walk the interrupt controller structures after the 44-byte header.
        let (mut off, mut apic_ids, mut ioapics) = (44, vec![], 0);
        while off < madt.len() {
            match madt[off] {
                0 => apic_ids.push(madt[off + 3]),
                1 => ioapics += 1,
                t => panic!("unexpected MADT structure {t}"),
            }
            off += madt[off + 1] as usize;
        }
        assert_eq!(apic_ids, vec![0, 1, 2]);
        assert_eq!(ioapics, 1);
    }

    #[test]
    fn fadt_announces_sleep_and_reset_registers_and_the_dsdt() {
        let mem = create_guest_memory(16 << 20).unwrap();
        let slot = MmioSlot {
            base: 0xd000_0000,
            size: 0x1000,
            gsi: 5,
        };
        let rsdp_addr = create_acpi_tables(&mem, 1, &[slot]).unwrap();
        let rsdp = read(&mem, rsdp_addr.0, 36);
        let xsdt_addr = u64::from_le_bytes(rsdp[24..32].try_into().unwrap());
        let xsdt = read(&mem, xsdt_addr, 52);
        let fadt_addr = u64::from_le_bytes(xsdt[36..44].try_into().unwrap());
        let len = u32_at(&read(&mem, fadt_addr, 8), 4) as usize;
        let fadt = read(&mem, fadt_addr, len);
        assert_eq!(&fadt[..4], b"FACP");
        assert!(checksum_ok(&fadt));
        let flags = u32_at(&fadt, 112);
        assert_ne!(flags & (1 << 20), 0, "HW_REDUCED_ACPI");
        assert_ne!(flags & (1 << 10), 0, "RESET_REG_SUP");
        // Reset register (offset 116) and value (128); sleep control/status (244, 256).
        let gas = |off: usize| {
            (
                fadt[off],
                fadt[off + 1],
                u64::from_le_bytes(fadt[off + 4..off + 12].try_into().unwrap()),
            )
        };
        assert_eq!(gas(116), (1, 8, RESET_PORT));
        assert_eq!(fadt[128], RESET_VALUE);
        assert_eq!(gas(244), (1, 8, SLEEP_CONTROL_PORT));
        assert_eq!(gas(256), (1, 8, SLEEP_CONTROL_PORT));
        let dsdt_addr = u64::from_le_bytes(fadt[140..148].try_into().unwrap());
        let dsdt_len = u32_at(&read(&mem, dsdt_addr, 8), 4) as usize;
        let table = read(&mem, dsdt_addr, dsdt_len);
        assert_eq!(table, dsdt::dsdt(&[slot]).unwrap());
        assert!(checksum_ok(&table));
    }
}
