//! Just enough ACPI to find the CPUs and I/O APICs: RSDP → RSDT/XSDT → MADT local APIC,
//! x2APIC and I/O APIC entries.

use core::fmt;

use crate::cmdline::VirtioMmioDevice;
use crate::physmem::PhysMem;
use crate::MAX_CPUS;

/// Where the RSDP is searched for when the start info has none (the BIOS read-only area,
/// as QEMU's PVH option ROM does).
pub const RSDP_SCAN_START: u64 = 0xE_0000;
/// End (exclusive) of the RSDP scan.
pub const RSDP_SCAN_END: u64 = 0x10_0000;

const RSDP_SIGNATURE: &[u8; 8] = b"RSD PTR ";
const RSDP_V1_LEN: u64 = 20;
const RSDP_V2_LEN: u64 = 36;
const SDT_HEADER_LEN: u64 = 36;
/// Largest table the guest reads (the guest trusts its VMM, but bounds the walk anyway).
const MAX_TABLE_LEN: u32 = 64 * 1024;

const MADT_ENTRIES: u64 = 44;
const MADT_LOCAL_APIC: u8 = 0;
const MADT_LOCAL_X2APIC: u8 = 9;
const MADT_ENABLED: u32 = 1;

/// Why the CPU list could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// No valid RSDP was found.
    NoRsdp,
    /// A table is unreadable, too short/long or fails its checksum.
    BadTable([u8; 4]),
    /// The RSDT/XSDT lists no MADT ("APIC").
    NoMadt,
    /// The RSDT/XSDT lists no table with this signature.
    NoTable([u8; 4]),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NoRsdp => write!(f, "no RSDP"),
            Error::BadTable(sig) => write!(f, "bad table {:?}", Sig(*sig)),
            Error::NoMadt => write!(f, "no MADT"),
            Error::NoTable(sig) => write!(f, "no {:?} table", Sig(*sig)),
        }
    }
}

struct Sig([u8; 4]);

impl fmt::Debug for Sig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for &b in &self.0 {
            let c = if b.is_ascii_graphic() { b as char } else { '?' };
            write!(f, "{c}")?;
        }
        Ok(())
    }
}

/// The enabled local APIC IDs of the MADT, in table order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuList {
    ids: [u32; MAX_CPUS],
    len: usize,
    /// Enabled CPUs left out: beyond `MAX_CPUS`, or x2APIC IDs an xAPIC cannot address.
    pub ignored: usize,
}

impl CpuList {
    /// An empty list.
    pub const fn new() -> Self {
        Self {
            ids: [0; MAX_CPUS],
            len: 0,
            ignored: 0,
        }
    }

    /// The APIC IDs.
    pub fn apic_ids(&self) -> &[u32] {
        &self.ids[..self.len]
    }

    fn push(&mut self, id: u32) {
        if self.apic_ids().contains(&id) {
            return;
        }
        match self.ids.get_mut(self.len) {
            Some(slot) => {
                *slot = id;
                self.len += 1;
            }
            None => self.ignored += 1,
        }
    }
}

impl Default for CpuList {
    fn default() -> Self {
        Self::new()
    }
}

fn checksum_ok(mem: &impl PhysMem, paddr: u64, len: u64) -> bool {
    let mut sum = 0u8;
    for off in 0..len {
        match mem.read_u8(paddr + off) {
            Some(b) => sum = sum.wrapping_add(b),
            None => return false,
        }
    }
    sum == 0
}

fn valid_rsdp(mem: &impl PhysMem, paddr: u64) -> bool {
    let mut sig = [0u8; 8];
    if !mem.read(paddr, &mut sig) || &sig != RSDP_SIGNATURE {
        return false;
    }
    if !checksum_ok(mem, paddr, RSDP_V1_LEN) {
        return false;
    }
    match mem.read_u8(paddr + 15) {
        Some(rev) if rev >= 2 => checksum_ok(mem, paddr, RSDP_V2_LEN),
        Some(_) => true,
        None => false,
    }
}

/// Returns the RSDP: `hint` (from the start info) if it is valid, else the first valid one
/// in the BIOS area scan.
pub fn find_rsdp(mem: &impl PhysMem, hint: u64) -> Option<u64> {
    if hint != 0 && valid_rsdp(mem, hint) {
        return Some(hint);
    }
    (RSDP_SCAN_START..RSDP_SCAN_END)
        .step_by(16)
        .find(|&p| valid_rsdp(mem, p))
}

/// Checks the table at `paddr` (signature, length, checksum) and returns its length.
fn table(mem: &impl PhysMem, paddr: u64, sig: &[u8; 4]) -> Result<u32, Error> {
    let bad = Error::BadTable(*sig);
    let mut found = [0u8; 4];
    if paddr == 0 || !mem.read(paddr, &mut found) || &found != sig {
        return Err(bad);
    }
    let len = mem.read_u32(paddr + 4).ok_or(bad)?;
    if u64::from(len) < SDT_HEADER_LEN || len > MAX_TABLE_LEN {
        return Err(bad);
    }
    if !checksum_ok(mem, paddr, u64::from(len)) {
        return Err(bad);
    }
    Ok(len)
}

/// Finds the MADT through the RSDP's XSDT (revision 2+) or RSDT.
fn find_madt(mem: &impl PhysMem, rsdp: u64) -> Result<u64, Error> {
    find_table(mem, rsdp, b"APIC").map_err(|e| match e {
        Error::NoTable(_) => Error::NoMadt,
        e => e,
    })
}

/// Finds the table with signature `want` through the RSDP's XSDT (revision 2+) or RSDT.
fn find_table(mem: &impl PhysMem, rsdp: u64, want: &[u8; 4]) -> Result<u64, Error> {
    let rev = mem.read_u8(rsdp + 15).ok_or(Error::NoRsdp)?;
    let xsdt = if rev >= 2 {
        mem.read_u64(rsdp + 24).unwrap_or(0)
    } else {
        0
    };
    let (root, entry_size) = if xsdt != 0 {
        (xsdt, 8)
    } else {
        (u64::from(mem.read_u32(rsdp + 16).ok_or(Error::NoRsdp)?), 4)
    };
    let sig = if entry_size == 8 { b"XSDT" } else { b"RSDT" };
    let len = u64::from(table(mem, root, sig)?);
    let mut at = root + SDT_HEADER_LEN;
    while at + entry_size <= root + len {
        let entry = if entry_size == 8 {
            mem.read_u64(at)
        } else {
            mem.read_u32(at).map(u64::from)
        };
        let mut esig = [0u8; 4];
        if let Some(paddr) = entry {
            if paddr != 0 && mem.read(paddr, &mut esig) && &esig == want {
                return Ok(paddr);
            }
        }
        at += entry_size;
    }
    Err(Error::NoTable(*want))
}

/// Calls `entry(kind, paddr, len)` for every entry of the MADT reached from `rsdp`.
fn walk_madt<M: PhysMem>(
    mem: &M,
    rsdp: u64,
    mut entry: impl FnMut(&M, u8, u64, u64) -> Result<(), Error>,
) -> Result<(), Error> {
    let madt = find_madt(mem, rsdp)?;
    let end = madt + u64::from(table(mem, madt, b"APIC")?);
    let bad = Error::BadTable(*b"APIC");
    let mut at = madt + MADT_ENTRIES;
    while at + 2 <= end {
        let kind = mem.read_u8(at).ok_or(bad)?;
        let len = u64::from(mem.read_u8(at + 1).ok_or(bad)?);
        if len < 2 || at + len > end {
            return Err(bad);
        }
        entry(mem, kind, at, len)?;
        at += len;
    }
    Ok(())
}

/// Lists the enabled CPUs of the MADT reached from `rsdp`.
pub fn madt_cpus(mem: &impl PhysMem, rsdp: u64) -> Result<CpuList, Error> {
    let bad = Error::BadTable(*b"APIC");
    let mut cpus = CpuList::new();
    walk_madt(mem, rsdp, |mem, kind, at, len| {
        match (kind, len) {
            (MADT_LOCAL_APIC, 8..) => {
                let id = mem.read_u8(at + 3).ok_or(bad)?;
                let flags = mem.read_u32(at + 4).ok_or(bad)?;
                if flags & MADT_ENABLED != 0 {
                    cpus.push(u32::from(id));
                }
            }
            (MADT_LOCAL_X2APIC, 16..) => {
                let id = mem.read_u32(at + 4).ok_or(bad)?;
                let flags = mem.read_u32(at + 8).ok_or(bad)?;
                if flags & MADT_ENABLED != 0 {
                    if id < 0xff {
                        cpus.push(id);
                    } else {
                        cpus.ignored += 1;
                    }
                }
            }
            _ => {}
        }
        Ok(())
    })?;
    Ok(cpus)
}

/// Most I/O APICs kept from the MADT.
pub const MAX_IOAPICS: usize = 4;

/// An I/O APIC of the MADT (entry type 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoApic {
    /// Register base (IOREGSEL at +0x00, IOWIN at +0x10).
    pub base: u64,
    /// First GSI it serves.
    pub gsi_base: u32,
}

/// The MADT's I/O APICs, in table order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct IoApicList {
    list: [Option<IoApic>; MAX_IOAPICS],
}

impl IoApicList {
    /// The I/O APICs.
    pub fn iter(&self) -> impl Iterator<Item = &IoApic> {
        self.list.iter().flatten()
    }

    /// Adds one; returns false if the list is full.
    pub fn push(&mut self, ioapic: IoApic) -> bool {
        match self.list.iter_mut().find(|s| s.is_none()) {
            Some(slot) => {
                *slot = Some(ioapic);
                true
            }
            None => false,
        }
    }

    /// The I/O APIC whose GSI range (`gsi_base` up to the next one's base, if any)
    /// contains `gsi`: the one with the largest `gsi_base <= gsi`.
    pub fn for_gsi(&self, gsi: u32) -> Option<IoApic> {
        self.iter()
            .filter(|a| a.gsi_base <= gsi)
            .max_by_key(|a| a.gsi_base)
            .copied()
    }
}

const MADT_IOAPIC: u8 = 1;

/// Lists the I/O APICs of the MADT reached from `rsdp` (at most [`MAX_IOAPICS`]).
pub fn madt_ioapics(mem: &impl PhysMem, rsdp: u64) -> Result<IoApicList, Error> {
    let bad = Error::BadTable(*b"APIC");
    let mut list = IoApicList::default();
    walk_madt(mem, rsdp, |mem, kind, at, len| {
        if kind == MADT_IOAPIC && len >= 12 {
            let base = mem.read_u32(at + 4).ok_or(bad)?;
            let gsi_base = mem.read_u32(at + 8).ok_or(bad)?;
            list.push(IoApic {
                base: u64::from(base),
                gsi_base,
            });
        }
        Ok(())
    })?;
    Ok(list)
}

/// `_HID` of a virtio-mmio transport in the DSDT (what QEMU's microvm and Linux use).
const VIRTIO_MMIO_HID: &[u8; 8] = b"LNRO0005";
/// Resource descriptor tags (ACPI 6.x, 6.4.3): Memory32Fixed and Extended Interrupt.
const MEMORY32_FIXED: [u8; 3] = [0x86, 0x09, 0x00];
const EXTENDED_IRQ: u8 = 0x89;

/// The DSDT reached from `rsdp` (FADT `X_DSDT`, else `DSDT`): (address, length).
fn find_dsdt(mem: &impl PhysMem, rsdp: u64) -> Result<(u64, u64), Error> {
    let fadt = find_table(mem, rsdp, b"FACP")?;
    let fadt_len = u64::from(table(mem, fadt, b"FACP")?);
    let x_dsdt = if fadt_len >= 148 {
        mem.read_u64(fadt + 140).unwrap_or(0)
    } else {
        0
    };
    let dsdt = if x_dsdt != 0 {
        x_dsdt
    } else {
        u64::from(mem.read_u32(fadt + 40).ok_or(Error::BadTable(*b"FACP"))?)
    };
    let len = u64::from(table(mem, dsdt, b"DSDT")?);
    Ok((dsdt, len))
}

/// Finds `needle` in `[from, end)`.
fn find_bytes(mem: &impl PhysMem, from: u64, end: u64, needle: &[u8]) -> Option<u64> {
    let last = end.checked_sub(needle.len() as u64)?;
    (from..=last).find(|&at| {
        needle
            .iter()
            .enumerate()
            .all(|(i, &b)| mem.read_u8(at + i as u64) == Some(b))
    })
}

/// The virtio-mmio transports the DSDT describes, in table order, into `out`; returns how
/// many were stored. Without AML evaluation: each `LNRO0005` string starts a device, whose
/// first Memory32Fixed descriptor gives the window and first Extended Interrupt descriptor
/// the GSI (the `_CRS` QEMU's microvm emits). Used when the command line names no device
/// (QEMU's microvm puts `virtio_mmio.device=` on the command line only without ACPI).
pub fn dsdt_virtio_mmio(
    mem: &impl PhysMem,
    rsdp: u64,
    out: &mut [Option<VirtioMmioDevice>],
) -> Result<usize, Error> {
    let (dsdt, len) = find_dsdt(mem, rsdp)?;
    let end = dsdt + len;
    let mut n = 0;
    let mut at = dsdt + SDT_HEADER_LEN;
    while n < out.len() {
        let Some(hid) = find_bytes(mem, at, end, VIRTIO_MMIO_HID) else {
            break;
        };
        let body = hid + VIRTIO_MMIO_HID.len() as u64;
        let next = find_bytes(mem, body, end, VIRTIO_MMIO_HID).unwrap_or(end);
        let window = find_bytes(mem, body, next, &MEMORY32_FIXED)
            .and_then(|d| Some((mem.read_u32(d + 4)?, mem.read_u32(d + 8)?)));
        let irq = find_bytes(mem, body, next, &[EXTENDED_IRQ]).and_then(|d| {
            let count = mem.read_u8(d + 4)?;
            let gsi = mem.read_u32(d + 5)?;
            (count >= 1 && d + 9 <= next).then_some(gsi)
        });
        if let (Some((base, size)), Some(irq)) = (window, irq) {
            if size != 0 {
                out[n] = Some(VirtioMmioDevice {
                    base: u64::from(base),
                    size: u64::from(size),
                    irq,
                });
                n += 1;
            }
        }
        at = next;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::physmem::TestMem;
    use std::vec::Vec;

    fn fix_checksum(mem: &mut TestMem, paddr: u64, len: usize, at: u64) {
        mem.write(paddr + at, &[0]);
        let off = (paddr - mem.base) as usize;
        let sum = mem.bytes[off..off + len]
            .iter()
            .fold(0u8, |s, b| s.wrapping_add(*b));
        mem.write(paddr + at, &[0u8.wrapping_sub(sum)]);
    }

    fn sdt(mem: &mut TestMem, paddr: u64, sig: &[u8; 4], body: &[u8]) {
        let len = 36 + body.len();
        mem.write(paddr, sig);
        mem.write(paddr + 4, &(len as u32).to_le_bytes());
        mem.write(paddr + 8, &[1]);
        mem.write(paddr + 36, body);
        fix_checksum(mem, paddr, len, 9);
    }

    fn madt_body(entries: &[&[u8]]) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&0xfee0_0000u32.to_le_bytes());
        body.extend_from_slice(&1u32.to_le_bytes());
        for e in entries {
            body.extend_from_slice(e);
        }
        body
    }

    fn lapic(id: u8, flags: u32) -> Vec<u8> {
        let mut e = std::vec![0u8, 8, id, id];
        e.extend_from_slice(&flags.to_le_bytes());
        e
    }

    fn x2apic(id: u32, flags: u32) -> Vec<u8> {
        let mut e = std::vec![9u8, 16, 0, 0];
        e.extend_from_slice(&id.to_le_bytes());
        e.extend_from_slice(&flags.to_le_bytes());
        e.extend_from_slice(&id.to_le_bytes());
        e
    }

    /// RSDP at 0xf0000 (rev 0 → RSDT at 0x1000, or rev 2 → XSDT at 0x1000), MADT at 0x2000.
    fn machine(rev: u8, madt_entries: &[&[u8]]) -> TestMem {
        let mut mem = TestMem::new(0, 0x10_0000);
        let rsdp = 0xf_0000;
        mem.write(rsdp, RSDP_SIGNATURE);
        mem.write(rsdp + 15, &[rev]);
        if rev >= 2 {
            mem.write(rsdp + 20, &36u32.to_le_bytes());
            mem.write(rsdp + 24, &0x1000u64.to_le_bytes());
            sdt(
                &mut mem,
                0x1000,
                b"XSDT",
                &[0x3000u64.to_le_bytes(), 0x2000u64.to_le_bytes()].concat(),
            );
        } else {
            mem.write(rsdp + 16, &0x1000u32.to_le_bytes());
            sdt(
                &mut mem,
                0x1000,
                b"RSDT",
                &[0x3000u32.to_le_bytes(), 0x2000u32.to_le_bytes()].concat(),
            );
        }
        fix_checksum(&mut mem, rsdp, 20, 8);
        if rev >= 2 {
            fix_checksum(&mut mem, rsdp, 36, 32);
        }
        sdt(&mut mem, 0x3000, b"FACP", &[0; 8]);
        sdt(&mut mem, 0x2000, b"APIC", &madt_body(madt_entries));
        mem
    }

    #[test]
    fn rsdt_and_xsdt() {
        for rev in [0, 2] {
            let mem = machine(
                rev,
                &[&lapic(0, 1), &lapic(1, 1), &lapic(2, 0), &lapic(1, 1)],
            );
            let rsdp = find_rsdp(&mem, 0).unwrap();
            assert_eq!(rsdp, 0xf_0000);
            let cpus = madt_cpus(&mem, rsdp).unwrap();
            assert_eq!(cpus.apic_ids(), &[0, 1]);
            assert_eq!(cpus.ignored, 0);
        }
    }

    #[test]
    fn hint_is_used_and_checked() {
        let mem = machine(2, &[&lapic(0, 1)]);
        assert_eq!(find_rsdp(&mem, 0xf_0000), Some(0xf_0000));
        // A bad hint falls back to the scan.
        assert_eq!(find_rsdp(&mem, 0x5000), Some(0xf_0000));
        assert_eq!(find_rsdp(&mem, u64::MAX - 3), Some(0xf_0000));
    }

    #[test]
    fn x2apic_and_overflow() {
        let mut entries: Vec<Vec<u8>> = (0..20).map(|i| lapic(i, 1)).collect();
        entries.push(x2apic(300, 1));
        let refs: Vec<&[u8]> = entries.iter().map(|e| e.as_slice()).collect();
        let mem = machine(2, &refs);
        let cpus = madt_cpus(&mem, 0xf_0000).unwrap();
        assert_eq!(cpus.apic_ids().len(), MAX_CPUS);
        assert_eq!(cpus.ignored, 20 - MAX_CPUS + 1);
    }

    fn ioapic(id: u8, base: u32, gsi_base: u32) -> Vec<u8> {
        let mut e = std::vec![1u8, 12, id, 0];
        e.extend_from_slice(&base.to_le_bytes());
        e.extend_from_slice(&gsi_base.to_le_bytes());
        e
    }

    #[test]
    fn ioapics() {
        let mem = machine(
            2,
            &[
                &lapic(0, 1),
                &ioapic(0, 0xfec0_0000, 0),
                &ioapic(1, 0xfec1_0000, 24),
                &[1u8, 4, 0, 0], // too short: skipped
            ],
        );
        let list = madt_ioapics(&mem, 0xf_0000).unwrap();
        assert_eq!(list.iter().count(), 2);
        assert_eq!(list.for_gsi(5).unwrap().base, 0xfec0_0000);
        assert_eq!(list.for_gsi(24).unwrap().base, 0xfec1_0000);
        assert_eq!(list.for_gsi(30).unwrap().gsi_base, 24);
        assert_eq!(madt_cpus(&mem, 0xf_0000).unwrap().apic_ids(), &[0]);

        let mem = machine(0, &[&lapic(0, 1)]);
        let list = madt_ioapics(&mem, 0xf_0000).unwrap();
        assert_eq!(list.for_gsi(5), None);
        let mut full = IoApicList::default();
        for i in 0..MAX_IOAPICS as u32 {
            assert!(full.push(IoApic {
                base: 0,
                gsi_base: i * 24
            }));
        }
        assert!(!full.push(IoApic {
            base: 0,
            gsi_base: 0
        }));
    }

    /// A DSDT with two virtio-mmio devices as QEMU's microvm writes them (AML around the
    /// resource templates abbreviated), reached through a FADT with X_DSDT.
    #[test]
    fn dsdt_virtio_devices() {
        let mut mem = machine(2, &[&lapic(0, 1)]);
        let mut fadt = std::vec![0u8; 276 - 36];
        fadt[140 - 36..148 - 36].copy_from_slice(&0x4000u64.to_le_bytes());
        sdt(&mut mem, 0x3000, b"FACP", &fadt);
        let mut body = std::vec![0x10, 0x20, b'_', b'S', b'B', b'_'];
        for (i, (base, gsi)) in [(0xfeb0_0000u32, 5u32), (0xfeb0_0200, 31)]
            .iter()
            .enumerate()
        {
            body.extend_from_slice(&[0x5b, 0x82, 0x30, b'V', b'R', b'0', b'0' + i as u8]);
            body.extend_from_slice(&[0x08, b'_', b'H', b'I', b'D', 0x0d]);
            body.extend_from_slice(b"LNRO0005\0");
            body.extend_from_slice(&[0x08, b'_', b'C', b'R', b'S', 0x11, 0x1a, 0x0a, 0x17]);
            body.extend_from_slice(&[0x86, 0x09, 0x00, 0x01]);
            body.extend_from_slice(&base.to_le_bytes());
            body.extend_from_slice(&0x200u32.to_le_bytes());
            body.extend_from_slice(&[0x89, 0x06, 0x00, 0x03, 0x01]);
            body.extend_from_slice(&gsi.to_le_bytes());
            body.extend_from_slice(&[0x79, 0x00]);
        }
        sdt(&mut mem, 0x4000, b"DSDT", &body);
        let mut out = [None; 4];
        assert_eq!(dsdt_virtio_mmio(&mem, 0xf_0000, &mut out), Ok(2));
        assert_eq!(
            out[1],
            Some(VirtioMmioDevice {
                base: 0xfeb0_0200,
                size: 0x200,
                irq: 31
            })
        );
        let mut one = [None; 1];
        assert_eq!(dsdt_virtio_mmio(&mem, 0xf_0000, &mut one), Ok(1));
        assert_eq!(one[0].unwrap().irq, 5);

        // No FADT in the RSDT: an error, no devices.
        let mem = machine(0, &[&lapic(0, 1)]);
        let mut out = [None; 4];
        assert!(dsdt_virtio_mmio(&mem, 0xf_0000, &mut out).is_err());
    }

    #[test]
    fn broken_tables() {
        let mem = TestMem::new(0, 0x10_0000);
        assert_eq!(find_rsdp(&mem, 0), None);

        // Bad MADT checksum.
        let mut mem = machine(0, &[&lapic(0, 1)]);
        mem.write(0x2000 + 44, &[0x55]);
        assert_eq!(madt_cpus(&mem, 0xf_0000), Err(Error::BadTable(*b"APIC")));

        // Zero-length entry must not loop forever.
        let mem = machine(0, &[&[0u8, 0, 0, 0, 0, 0, 0, 0]]);
        assert_eq!(madt_cpus(&mem, 0xf_0000), Err(Error::BadTable(*b"APIC")));

        // Entry running past the table end.
        let mem = machine(0, &[&[0u8, 200, 0, 0, 1, 0, 0, 0]]);
        assert_eq!(madt_cpus(&mem, 0xf_0000), Err(Error::BadTable(*b"APIC")));

        // RSDT pointing nowhere.
        let mut mem = machine(0, &[&lapic(0, 1)]);
        mem.write(0xf_0000 + 16, &0x9_0000u32.to_le_bytes());
        fix_checksum(&mut mem, 0xf_0000, 20, 8);
        assert_eq!(madt_cpus(&mem, 0xf_0000), Err(Error::BadTable(*b"RSDT")));
    }
}
