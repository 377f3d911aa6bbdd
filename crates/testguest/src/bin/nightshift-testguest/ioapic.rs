//! I/O APIC (in-kernel under nightshift and QEMU/KVM), programmed from CPL3.
//!
//! Its registers are two MMIO words (IOREGSEL at +0x00 selects, IOWIN at +0x10 reads or
//! writes the selected register), identity mapped and user accessible like the LAPIC. The
//! BSP routes every device line before it releases the APs, so there is no concurrent
//! IOREGSEL/IOWIN use.

use testguest::acpi::{IoApic, IoApicList};

/// Where the I/O APIC is when the MADT does not say (KVM's in-kernel I/O APIC).
pub const DEFAULT_BASE: u64 = 0xFEC0_0000;

const IOREGSEL: u64 = 0x00;
const IOWIN: u64 = 0x10;
const REG_VERSION: u32 = 0x01;
const REG_REDIRECTION: u32 = 0x10;

/// Redirection entry low word: fixed delivery, physical destination, active high, edge,
/// unmasked; the vector in bits 0..8.
const REDIR_FIXED_EDGE: u32 = 0;

/// Why a line could not be routed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteError {
    /// No I/O APIC serves the GSI (or its redirection table is too short).
    NoIoApic,
}

fn select(ioapic: &IoApic, reg: u32) {
    // SAFETY: IOREGSEL of an I/O APIC the MADT (or KVM's fixed layout) names, identity
    // mapped, user accessible and uncached (top GiB); selecting a register has no other
    // effect.
    unsafe { ((ioapic.base + IOREGSEL) as *mut u32).write_volatile(reg) }
}

fn read(ioapic: &IoApic, reg: u32) -> u32 {
    select(ioapic, reg);
    // SAFETY: IOWIN of the same I/O APIC; reading the selected register has no side effect.
    unsafe { ((ioapic.base + IOWIN) as *const u32).read_volatile() }
}

fn write(ioapic: &IoApic, reg: u32, value: u32) {
    select(ioapic, reg);
    // SAFETY: IOWIN of the same I/O APIC; the callers write redirection entries only.
    unsafe { ((ioapic.base + IOWIN) as *mut u32).write_volatile(value) }
}

/// The I/O APIC serving `gsi`: from the MADT's list, else KVM's at [`DEFAULT_BASE`] with
/// GSI base 0.
pub fn for_gsi(list: &IoApicList, gsi: u32) -> IoApic {
    list.for_gsi(gsi).unwrap_or(IoApic {
        base: DEFAULT_BASE,
        gsi_base: 0,
    })
}

/// Routes `gsi` to `vector` on the CPU with APIC ID `apic_id`: fixed delivery, edge
/// triggered, active high, physical destination. The destination is written first and the
/// entry unmasked last.
pub fn route(ioapic: IoApic, gsi: u32, vector: u8, apic_id: u32) -> Result<(), RouteError> {
    let index = gsi
        .checked_sub(ioapic.gsi_base)
        .ok_or(RouteError::NoIoApic)?;
    let max_entry = (read(&ioapic, REG_VERSION) >> 16) & 0xff;
    if index > max_entry {
        return Err(RouteError::NoIoApic);
    }
    let reg = REG_REDIRECTION + 2 * index;
    write(&ioapic, reg + 1, apic_id << 24);
    write(&ioapic, reg, REDIR_FIXED_EDGE | u32::from(vector));
    Ok(())
}
