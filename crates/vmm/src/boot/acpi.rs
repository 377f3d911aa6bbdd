//! ACPI tables, so a guest finds its CPUs and interrupt controllers the standard
//! way: RSDP → XSDT → MADT (one local APIC per vCPU, the IOAPIC), FADT
//! (hardware-reduced: no legacy PM blocks) → DSDT (empty).

use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT,
};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use vm_memory::{Address, Bytes, GuestAddress};

use crate::memory::{GuestMemory, ACPI_START, HIMEM_START, IOAPIC_START, LAPIC_START};

const OEM_ID: [u8; 6] = *b"NSHIFT";
const OEM_TABLE_ID: [u8; 8] = *b"NSHIFTVM";
const OEM_REVISION: u32 = 1;

/// The tables did not fit between [`ACPI_START`] and [`HIMEM_START`].
#[derive(Debug, thiserror::Error)]
#[error("writing ACPI tables to guest memory: {0}")]
pub struct AcpiError(String);

/// Writes the tables for `vcpus` CPUs and returns the RSDP's address.
pub fn create_acpi_tables(mem: &GuestMemory, vcpus: u8) -> Result<GuestAddress, AcpiError> {
    let mut writer = TableWriter {
        mem,
        next: ACPI_START,
    };

    // The RSDP comes first (at a 16-byte boundary in the BIOS area, where guests
    // without a start-info pointer scan for it); it points at the XSDT we write last.
    let rsdp_addr = writer.reserve(Rsdp::len() as u64)?;

    let mut dsdt = Sdt::new(*b"DSDT", 36, 6, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    dsdt.update_checksum();
    let dsdt_addr = writer.write(dsdt.as_slice())?;

    let fadt = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton)
        .dsdt_64(dsdt_addr.raw_value())
        .finalize();
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
    madt.add_structure(IoApic::new(0, IOAPIC_START as u32, 0));
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
        let end = end.ok_or_else(|| AcpiError("tables overflow the BIOS area".into()))?;
        self.next = end.unchecked_align_up(16);
        Ok(addr)
    }

    fn write(&mut self, bytes: &[u8]) -> Result<GuestAddress, AcpiError> {
        let addr = self.reserve(bytes.len() as u64)?;
        self.write_at(addr, bytes)?;
        Ok(addr)
    }

    fn write_at(&self, addr: GuestAddress, bytes: &[u8]) -> Result<(), AcpiError> {
        self.mem
            .write_slice(bytes, addr)
            .map_err(|e| AcpiError(e.to_string()))
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
        let rsdp_addr = create_acpi_tables(&mem, 3).unwrap();
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
}
