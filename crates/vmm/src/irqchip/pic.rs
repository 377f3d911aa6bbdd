//! The 8259A pair on ports 0x20/0x21 and 0xA0/0xA1, and the ELCR at 0x4D0/0x4D1,
//! present so that guests probing for them find them, and otherwise inert.
//!
//! Under `--irqchip user` no device line goes to the 8259s: every GSI is
//! an IOAPIC pin (the MADT says so: no interrupt source overrides, and the
//! guest is expected to use the IOAPIC, as Linux does once it has parsed
//! the MADT). What a guest may do with them still works as on hardware:
//! the initialisation sequence (ICW1–ICW4), the mask register (Linux's
//! probe writes 0xFF to the master's IMR and reads it back), OCW2/OCW3
//! (EOIs, reading IRR/ISR, which stay zero), and the ELCR. Nothing here
//! ever raises an interrupt, so LINT0's ExtINT wiring never fires.

use crate::bus::BusDevice;

/// Master command port.
pub const PIC_MASTER: u64 = 0x20;
/// Slave command port.
pub const PIC_SLAVE: u64 = 0xA0;
/// Each 8259's port window.
pub const PIC_LEN: u64 = 2;
/// The edge/level control registers (one byte per 8259).
pub const ELCR_BASE: u64 = 0x4D0;
/// ELCR window.
pub const ELCR_LEN: u64 = 2;

/// Where the initialisation sequence is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Init {
    /// Not initialising: data-port writes set the mask.
    Ready,
    /// After ICW1: the next data write is ICW2 (vector base).
    Icw2 { icw4: bool, single: bool },
    /// ICW3 (cascade wiring) next.
    Icw3 { icw4: bool },
    /// ICW4 (mode) next.
    Icw4,
}

/// One 8259A.
#[derive(Clone, Debug)]
pub struct Pic8259 {
    init: Init,
    imr: u8,
    vector_base: u8,
    /// OCW3: a command-port read returns ISR (true) or IRR (false).
    read_isr: bool,
}

impl Default for Pic8259 {
    fn default() -> Self {
        Pic8259 {
            init: Init::Ready,
            // Masked until the guest initialises it: no line is wired anyway.
            imr: 0xff,
            vector_base: 0,
            read_isr: false,
        }
    }
}

impl Pic8259 {
    fn write_command(&mut self, value: u8) {
        if value & 0x10 != 0 {
            // ICW1: start initialising; the mask and state are cleared.
            self.init = Init::Icw2 {
                icw4: value & 1 != 0,
                single: value & 2 != 0,
            };
            self.imr = 0;
            self.read_isr = false;
        } else if value & 0x18 == 0x08 {
            // OCW3: register read select (bit 1 valid, bit 0 ISR).
            if value & 2 != 0 {
                self.read_isr = value & 1 != 0;
            }
        }
        // OCW2 (EOIs, rotation): nothing is ever in service.
    }

    fn write_data(&mut self, value: u8) {
        self.init = match self.init {
            Init::Ready => {
                self.imr = value;
                Init::Ready
            }
            Init::Icw2 { icw4, single } => {
                self.vector_base = value & 0xf8;
                match (single, icw4) {
                    (false, _) => Init::Icw3 { icw4 },
                    (true, true) => Init::Icw4,
                    (true, false) => Init::Ready,
                }
            }
            Init::Icw3 { icw4: true } => Init::Icw4,
            Init::Icw3 { icw4: false } | Init::Icw4 => Init::Ready,
        };
    }

    /// The vector base the guest programmed (ICW2).
    pub fn vector_base(&self) -> u8 {
        self.vector_base
    }
}

impl BusDevice for Pic8259 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = match offset {
            // IRR or ISR, as OCW3 selected: both empty.
            0 => 0,
            _ => self.imr,
        };
        data.fill(0);
        if let Some(b) = data.first_mut() {
            *b = value;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else { return };
        match offset {
            0 => self.write_command(value),
            _ => self.write_data(value),
        }
    }
}

/// The two edge/level control registers (guest storage: no line uses them).
#[derive(Clone, Debug, Default)]
pub struct Elcr([u8; 2]);

impl BusDevice for Elcr {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = self.0.get(offset as usize + i).copied().unwrap_or(0);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        for (i, b) in data.iter().enumerate() {
            if let Some(r) = self.0.get_mut(offset as usize + i) {
                // IRQs 0, 1, 2, 8 and 13 are always edge.
                *r = b & if offset as usize + i == 0 { 0xf8 } else { 0xde };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(p: &mut Pic8259, port: u64, v: u8) {
        p.write(port, &[v]);
    }

    fn inb(p: &mut Pic8259, port: u64) -> u8 {
        let mut b = [0];
        p.read(port, &mut b);
        b[0]
    }

    #[test]
    fn linux_probe_reads_the_mask_back() {
        let mut p = Pic8259::default();
        out(&mut p, 1, 0xff);
        assert_eq!(inb(&mut p, 1), 0xff);
        out(&mut p, 1, 0xa5);
        assert_eq!(inb(&mut p, 1), 0xa5);
    }

    #[test]
    fn the_init_sequence_sets_the_base_then_data_writes_are_masks() {
        let mut p = Pic8259::default();
        out(&mut p, 0, 0x11); // ICW1: cascade, ICW4 follows
        out(&mut p, 1, 0x20); // ICW2: base 0x20
        out(&mut p, 1, 0x04); // ICW3
        out(&mut p, 1, 0x01); // ICW4: 8086 mode
        assert_eq!(p.vector_base(), 0x20);
        assert_eq!(inb(&mut p, 1), 0, "ICW1 clears the mask");
        out(&mut p, 1, 0xfb);
        assert_eq!(inb(&mut p, 1), 0xfb);
        out(&mut p, 0, 0x0b); // OCW3: read ISR
        assert_eq!(inb(&mut p, 0), 0);
        out(&mut p, 0, 0x20); // OCW2: non-specific EOI
        assert_eq!(inb(&mut p, 1), 0xfb);
    }

    #[test]
    fn elcr_keeps_the_always_edge_irqs_edge() {
        let mut e = Elcr::default();
        e.write(0, &[0xff, 0xff]);
        let mut b = [0; 2];
        e.read(0, &mut b);
        assert_eq!(b, [0xf8, 0xde]);
    }
}
