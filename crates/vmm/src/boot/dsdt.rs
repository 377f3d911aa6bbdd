//! The DSDT: the devices a guest cannot discover by probing, in AML.
//!
//! Stock distribution kernels build virtio-mmio as a module without
//! `CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES`, so the `virtio_mmio.device=` command
//! line never reaches them: they find virtio-mmio devices only as ACPI devices
//! with `_HID "LNRO0005"` (the ID `virtio_mmio`'s ACPI match table names) and
//! a `_CRS` giving the register window and the interrupt. Each interrupt is an
//! IOAPIC GSI, edge triggered and active high: the MADT's single IOAPIC at GSI
//! base 0 routes pin N to GSI N, as KVM's default routing does, and an irqfd
//! delivers an edge. With hardware-reduced ACPI Linux has no legacy PIC, so
//! there is no ISA remapping and the MADT needs no interrupt source override.
//!
//! COM1 is described too (`PNP0501`), so its interrupt is registered as a GSI
//! the same way; and `\_S5_` gives the sleep type the guest writes to the
//! sleep control register to power off (see `devices::power`).
//!
//! The builder takes a plain list of [`MmioSlot`]s, so whatever owns device
//! placement (today `vm.rs`) hands it over without the DSDT knowing the devices.

use acpi_tables::aml::{
    Device, EISAName, Interrupt, Memory32Fixed, Name, Package, Path, ResourceTemplate, Scope, IO,
};
use acpi_tables::sdt::Sdt;
use acpi_tables::Aml;

use crate::devices::power::S5_SLEEP_TYPE;
use crate::devices::{COM1_BASE, COM1_GSI, COM1_LEN};

use super::acpi::{AcpiError, OEM_ID, OEM_REVISION, OEM_TABLE_ID};

/// `_HID` of a virtio-mmio device (Linux's `virtio_mmio_acpi_match`).
pub const VIRTIO_MMIO_HID: &str = "LNRO0005";
/// Pins of the one IOAPIC (KVM's in-kernel IOAPIC has 24).
pub const IOAPIC_PINS: u32 = 24;

/// Where one memory-mapped device lives: its register window and interrupt
/// line (the device manager hands these out; the DSDT and the command line
/// announce them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct MmioSlot {
    /// First byte of the register window.
    pub base: u64,
    /// Size of the window.
    pub size: u64,
    /// IOAPIC GSI the device interrupts on.
    pub gsi: u32,
}

/// The whole DSDT (header and AML) for `devices`.
pub fn dsdt(devices: &[MmioSlot]) -> Result<Vec<u8>, AcpiError> {
    let mut table = Sdt::new(*b"DSDT", 36, 6, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    table.append_slice(&aml(devices)?);
    table.update_checksum();
    Ok(table.as_slice().to_vec())
}

/// The table's body: `\_SB_` with COM1 and every device, then `\_S5_`.
fn aml(devices: &[MmioSlot]) -> Result<Vec<u8>, AcpiError> {
    let mut entries = Vec::with_capacity(devices.len());
    for (i, slot) in devices.iter().enumerate() {
        entries.push(virtio_device(i, slot)?);
    }
    let com1 = Com1Aml;
    let mut children: Vec<&dyn Aml> = vec![&com1];
    children.extend(entries.iter().map(|d| d as &dyn Aml));
    let sb = Scope::new(Path::new("\\_SB_"), children);
    let s5_type = S5_SLEEP_TYPE;
    let s5 = Name::new(Path::new("_S5_"), &Package::new(vec![&s5_type]));
    let mut bytes = Vec::new();
    sb.to_aml_bytes(&mut bytes);
    s5.to_aml_bytes(&mut bytes);
    Ok(bytes)
}

/// One virtio-mmio device as AML, named `VRnn` (`nn`: its index in hex).
struct VirtioDeviceAml {
    name: String,
    uid: u32,
    base: u32,
    size: u32,
    gsi: u32,
}

impl Aml for VirtioDeviceAml {
    fn to_aml_bytes(&self, sink: &mut dyn acpi_tables::AmlSink) {
        let hid: &'static str = VIRTIO_MMIO_HID;
        let window = Memory32Fixed::new(true, self.base, self.size);
        let irq = Interrupt::new(true, true, false, false, self.gsi);
        let crs = ResourceTemplate::new(vec![&window, &irq]);
        Device::new(
            Path::new(&self.name),
            vec![
                &Name::new(Path::new("_HID"), &hid),
                &Name::new(Path::new("_UID"), &self.uid),
                &Name::new(Path::new("_CRS"), &crs),
            ],
        )
        .to_aml_bytes(sink);
    }
}

fn virtio_device(index: usize, slot: &MmioSlot) -> Result<VirtioDeviceAml, AcpiError> {
    let bad = |why| AcpiError::BadSlot { slot: *slot, why };
    let end = slot
        .base
        .checked_add(slot.size)
        .ok_or(bad("window wraps"))?;
    if end > 1 << 32 || slot.size == 0 {
        return Err(bad("window must be non-empty and below 4 GiB"));
    }
    if slot.gsi >= IOAPIC_PINS {
        return Err(bad("GSI beyond the IOAPIC's pins"));
    }
    if index > 0xff {
        return Err(bad("more than 256 devices"));
    }
    Ok(VirtioDeviceAml {
        name: format!("VR{index:02X}"),
        uid: index as u32,
        base: slot.base as u32,
        size: slot.size as u32,
        gsi: slot.gsi,
    })
}

/// COM1: its eight ports and its interrupt, as PC firmware describes it.
struct Com1Aml;

impl Aml for Com1Aml {
    fn to_aml_bytes(&self, sink: &mut dyn acpi_tables::AmlSink) {
        let ports = IO::new(COM1_BASE as u16, COM1_BASE as u16, 1, COM1_LEN as u8);
        let irq = Interrupt::new(true, true, false, false, COM1_GSI);
        let crs = ResourceTemplate::new(vec![&ports, &irq]);
        let uid = 0u8;
        Device::new(
            Path::new("COM1"),
            vec![
                &Name::new(Path::new("_HID"), &EISAName::new("PNP0501")),
                &Name::new(Path::new("_UID"), &uid),
                &Name::new(Path::new("_CRS"), &crs),
            ],
        )
        .to_aml_bytes(sink);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(i: u64) -> MmioSlot {
        MmioSlot {
            base: 0xd000_0000 + i * 0x1000,
            size: 0x1000,
            gsi: 5 + i as u32,
        }
    }

    fn bytes(aml: &dyn Aml) -> Vec<u8> {
        let mut v = Vec::new();
        aml.to_aml_bytes(&mut v);
        v
    }

    /// The encoding of
    /// ```text
    /// Device (VR00) {
    ///     Name (_HID, "LNRO0005")
    ///     Name (_UID, Zero)
    ///     Name (_CRS, ResourceTemplate () {
    ///         Memory32Fixed (ReadWrite, 0xD0000000, 0x00001000)
    ///         Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive) { 5 }
    ///     })
    /// }
    /// ```
    /// written out by hand from the ACPI 6.5 spec (20.2 AML grammar, 6.4
    /// resource descriptors), not from the builder.
    #[rustfmt::skip]
    const VR00: &[u8] = &[
        0x5b, 0x82, 0x3a, b'V', b'R', b'0', b'0',         // DeviceOp, PkgLength 58, NameSeg
        0x08, b'_', b'H', b'I', b'D',                       // NameOp _HID
        0x0d, b'L', b'N', b'R', b'O', b'0', b'0', b'0', b'5', 0x00, // String
        0x08, b'_', b'U', b'I', b'D', 0x00,                 // NameOp _UID ZeroOp
        0x08, b'_', b'C', b'R', b'S',                       // NameOp _CRS
        0x11, 0x1a, 0x0a, 0x17,                             // BufferOp, PkgLength 26, size 23
        0x86, 0x09, 0x00, 0x01,                             // Memory32Fixed, len 9, RW
        0x00, 0x00, 0x00, 0xd0, 0x00, 0x10, 0x00, 0x00,     //   base, length
        0x89, 0x06, 0x00, 0x03, 0x01,                       // Extended IRQ, len 6, consumer|edge, 1 irq
        0x05, 0x00, 0x00, 0x00,                             //   GSI 5
        0x79, 0x00,                                         // End tag
    ];

    #[test]
    fn virtio_device_matches_the_spec_encoding() {
        assert_eq!(bytes(&virtio_device(0, &slot(0)).unwrap()), VR00);
    }

    /// A small AML reader: enough of the grammar to walk what we emit and pull
    /// each device's name, `_HID`, `_UID`, window and interrupt back out.
    struct Found {
        name: String,
        hid: String,
        uid: u64,
        window: Option<(u32, u32)>,
        irq: Option<(u8, u32)>,
    }

    fn pkg_length(b: &[u8]) -> (usize, usize) {
        let lead = b[0] as usize;
        let extra = lead >> 6;
        if extra == 0 {
            return (lead & 0x3f, 1);
        }
        let mut len = lead & 0x0f;
        for i in 0..extra {
            len |= (b[1 + i] as usize) << (4 + 8 * i);
        }
        (len, 1 + extra)
    }

    fn integer(b: &[u8]) -> (u64, usize) {
        match b[0] {
            0x00 => (0, 1),
            0x01 => (1, 1),
            0x0a => (b[1].into(), 2),
            0x0b => (u16::from_le_bytes([b[1], b[2]]).into(), 3),
            0x0c => (u32::from_le_bytes(b[1..5].try_into().unwrap()).into(), 5),
            op => panic!("not an integer: {op:#x}"),
        }
    }

    fn eisa_id(v: u32) -> String {
        let v = v.swap_bytes();
        let c = |s: u32| (b'@' + ((v >> s) & 0x1f) as u8) as char;
        format!("{}{}{}{:04X}", c(26), c(21), c(16), v & 0xffff)
    }

    fn resources(mut r: &[u8], found: &mut Found) {
        while !r.is_empty() {
            match r[0] {
                0x86 => {
                    let u = |o: usize| u32::from_le_bytes(r[o..o + 4].try_into().unwrap());
                    found.window = Some((u(4), u(8)));
                    r = &r[12..];
                }
                0x89 => {
                    assert_eq!(r[4], 1, "one interrupt per descriptor");
                    found.irq = Some((r[3], u32::from_le_bytes(r[5..9].try_into().unwrap())));
                    r = &r[9..];
                }
                0x47 => r = &r[8..], // IO port descriptor
                0x79 => return,
                t => panic!("unexpected resource descriptor {t:#x}"),
            }
        }
        panic!("resource template without an end tag");
    }

    fn device(body: &[u8]) -> Found {
        let mut f = Found {
            name: String::from_utf8(body[..4].to_vec()).unwrap(),
            hid: String::new(),
            uid: u64::MAX,
            window: None,
            irq: None,
        };
        let mut b = &body[4..];
        while !b.is_empty() {
            assert_eq!(b[0], 0x08, "device holds only Name objects");
            let name = &b[1..5];
            let v = &b[5..];
            let used = match (name, v[0]) {
                (b"_HID", 0x0d) => {
                    let end = v.iter().position(|&c| c == 0).unwrap();
                    f.hid = String::from_utf8(v[1..end].to_vec()).unwrap();
                    end + 1
                }
                (b"_HID", _) => {
                    let (id, n) = integer(v);
                    f.hid = eisa_id(id as u32);
                    n
                }
                (b"_UID", _) => {
                    let (uid, n) = integer(v);
                    f.uid = uid;
                    n
                }
                (b"_CRS", 0x11) => {
                    let (len, n) = pkg_length(&v[1..]);
                    let (_size, m) = integer(&v[1 + n..]);
                    resources(&v[1 + n + m..1 + len], &mut f);
                    1 + len
                }
                (n, op) => panic!("unexpected {} = {op:#x}", String::from_utf8_lossy(n)),
            };
            b = &v[used..];
        }
        f
    }

    /// Walks `\_SB_` and returns its devices; also returns what follows the scope.
    fn walk(aml: &[u8]) -> (Vec<Found>, &[u8]) {
        assert_eq!(aml[0], 0x10, "ScopeOp");
        let (len, n) = pkg_length(&aml[1..]);
        let scope = &aml[1 + n..1 + len];
        assert_eq!(&scope[..5], b"\\_SB_");
        let mut b = &scope[5..];
        let mut devices = Vec::new();
        while !b.is_empty() {
            assert_eq!(&b[..2], &[0x5b, 0x82], "DeviceOp");
            let (len, n) = pkg_length(&b[2..]);
            devices.push(device(&b[2 + n..2 + len]));
            b = &b[2 + len..];
        }
        (devices, &aml[1 + len..])
    }

    #[test]
    fn dsdt_lists_com1_then_every_slot_and_s5() {
        let slots: Vec<_> = (0..19).map(slot).collect();
        let table = dsdt(&slots).unwrap();
        assert_eq!(&table[..4], b"DSDT");
        assert_eq!(
            u32::from_le_bytes(table[4..8].try_into().unwrap()) as usize,
            table.len()
        );
        assert_eq!(table.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        let (devices, rest) = walk(&table[36..]);
        assert_eq!(devices.len(), 20);
        let com1 = &devices[0];
        assert_eq!((com1.name.as_str(), com1.hid.as_str()), ("COM1", "PNP0501"));
        assert_eq!(com1.irq, Some((0x03, COM1_GSI)));
        for (i, (d, s)) in devices[1..].iter().zip(&slots).enumerate() {
            assert_eq!(d.name, format!("VR{i:02X}"));
            assert_eq!((d.hid.as_str(), d.uid), (VIRTIO_MMIO_HID, i as u64));
            assert_eq!(d.window, Some((s.base as u32, s.size as u32)));
            // Consumer, edge triggered, active high, exclusive.
            assert_eq!(d.irq, Some((0x03, s.gsi)));
        }
        // Name (_S5_, Package () { 5 }): NameOp, name, PackageOp, PkgLength, 1 element, BytePrefix 5.
        assert_eq!(
            rest,
            &[0x08, b'_', b'S', b'5', b'_', 0x12, 0x04, 0x01, 0x0a, 0x05]
        );
    }

    #[test]
    fn slots_the_guest_could_not_use_are_refused() {
        let bad = [
            MmioSlot {
                gsi: IOAPIC_PINS,
                ..slot(0)
            },
            MmioSlot {
                base: 0xffff_f000,
                size: 0x2000,
                gsi: 5,
            },
            MmioSlot { size: 0, ..slot(0) },
        ];
        for s in bad {
            assert!(
                matches!(dsdt(&[s]), Err(AcpiError::BadSlot { .. })),
                "{s:?}"
            );
        }
    }
}
