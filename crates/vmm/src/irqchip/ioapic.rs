//! The IOAPIC (82093AA, version 0x11, 24 pins), as a plain state machine.
//!
//! It sits where the MADT says ([`IOAPIC_START`](crate::memory::IOAPIC_START),
//! GSI base 0: `boot::acpi` announces exactly this one) and turns pin
//! changes into [`Interrupt`] messages by its redirection table. Edge entries
//! deliver on a rising edge (an edge while masked is latched and delivered
//! on unmask, as KVM's IOAPIC does); level entries deliver while the pin is
//! high and remote IRR is clear, and set remote IRR until the CPU's EOI for
//! the vector comes back ([`IoApic::eoi`]). Messages are returned, not sent:
//! the caller delivers them after letting go of this IOAPIC's state only if
//! it needs to; see [`super::delivery`] for the lock order.

use super::{DeliveryMode, DestMode, Interrupt, Shorthand, Trigger};

/// Pins (redirection entries).
pub const IOAPIC_PINS: usize = 24;
/// Size of the register window.
pub const IOAPIC_SIZE: u64 = 0x1000;

// Every line the VM hands out (COM1, then one per disk) is a pin here.
const _: () = assert!(
    crate::vm::FIRST_VIRTIO_GSI + crate::config::MAX_DISKS as u32 <= IOAPIC_PINS as u32
        && crate::devices::COM1_GSI < IOAPIC_PINS as u32
);

const IOREGSEL: u64 = 0x00;
const IOWIN: u64 = 0x10;
/// The EOI register of version 0x20 IOAPICs; harmless to offer on 0x11.
const IOEOI: u64 = 0x40;
const REG_ID: u32 = 0x00;
const REG_VERSION: u32 = 0x01;
const REG_ARBITRATION: u32 = 0x02;
const REG_REDIRECTION: u32 = 0x10;
const VERSION: u32 = 0x11 | ((IOAPIC_PINS as u32 - 1) << 16);

const MASKED: u64 = 1 << 16;
const LEVEL: u64 = 1 << 15;
const REMOTE_IRR: u64 = 1 << 14;
const DELIVERY_STATUS: u64 = 1 << 12;
/// Bits the guest may write: vector, mode, destination mode, polarity,
/// trigger, mask, destination.
const WRITABLE: u64 = 0xff00_0000_0001_afff;

/// The IOAPIC's registers and pin states.
#[derive(Clone, Debug)]
pub struct IoApic {
    id: u32,
    select: u32,
    entries: [u64; IOAPIC_PINS],
    /// Pins high now.
    lines: u32,
    /// Pins that want delivery: high (level) or with a latched edge.
    irr: u32,
}

impl Default for IoApic {
    fn default() -> Self {
        IoApic {
            id: 0,
            select: 0,
            entries: [MASKED; IOAPIC_PINS],
            lines: 0,
            irr: 0,
        }
    }
}

impl IoApic {
    /// A guest read of `data.len()` bytes at `offset` in the window; 32-bit
    /// accesses to IOREGSEL and IOWIN are the only meaningful ones.
    pub fn read(&self, offset: u64) -> u32 {
        match offset {
            IOREGSEL => self.select,
            IOWIN => self.read_register(self.select),
            _ => 0,
        }
    }

    /// A guest write at `offset`; returns the interrupts it releases (an
    /// unmasked entry with a pending pin).
    pub fn write(&mut self, offset: u64, value: u32) -> Vec<Interrupt> {
        match offset {
            IOREGSEL => {
                self.select = value & 0xff;
                Vec::new()
            }
            IOWIN => self.write_register(self.select, value),
            IOEOI => self.eoi(value as u8),
            _ => Vec::new(),
        }
    }

    fn read_register(&self, reg: u32) -> u32 {
        match reg {
            REG_ID => self.id,
            REG_VERSION => VERSION,
            REG_ARBITRATION => self.id,
            r if r >= REG_REDIRECTION => match self.entry_of(r) {
                Some((pin, high)) => {
                    let e = self.entries[pin];
                    if high {
                        (e >> 32) as u32
                    } else {
                        e as u32
                    }
                }
                None => 0,
            },
            _ => 0,
        }
    }

    fn write_register(&mut self, reg: u32, value: u32) -> Vec<Interrupt> {
        match reg {
            REG_ID => self.id = value & 0x0f00_0000,
            r if r >= REG_REDIRECTION => {
                let Some((pin, high)) = self.entry_of(r) else {
                    return Vec::new();
                };
                let e = &mut self.entries[pin];
                let kept = *e & !WRITABLE;
                let new = if high {
                    (*e & 0xffff_ffff) | (u64::from(value) << 32)
                } else {
                    (*e & 0xffff_ffff_0000_0000) | u64::from(value)
                };
                *e = kept | (new & WRITABLE);
                let bit = 1 << pin;
                if *e & LEVEL != 0 {
                    // A level entry wants delivery exactly while its pin is high.
                    self.irr = (self.irr & !bit) | (self.lines & bit);
                } else {
                    *e &= !REMOTE_IRR;
                }
                return self.service(pin).into_iter().collect();
            }
            _ => {}
        }
        Vec::new()
    }

    /// Register `reg` → (pin, high word), if it is a redirection entry.
    fn entry_of(&self, reg: u32) -> Option<(usize, bool)> {
        let index = (reg - REG_REDIRECTION) as usize;
        (index / 2 < IOAPIC_PINS).then_some((index / 2, index % 2 == 1))
    }

    /// Pin `pin` goes to `level`. Returns the interrupt to deliver, if any.
    pub fn set_pin(&mut self, pin: usize, level: bool) -> Option<Interrupt> {
        if pin >= IOAPIC_PINS {
            return None;
        }
        let bit = 1 << pin;
        let was = self.lines & bit != 0;
        if level {
            self.lines |= bit;
        } else {
            self.lines &= !bit;
        }
        if self.entries[pin] & LEVEL != 0 {
            if level {
                self.irr |= bit;
            } else {
                self.irr &= !bit;
            }
        } else if level && !was {
            // A rising edge: latched until delivered.
            self.irr |= bit;
        } else {
            return None;
        }
        self.service(pin)
    }

    /// Delivers `pin` if it is pending, unmasked and (for level) not in service.
    fn service(&mut self, pin: usize) -> Option<Interrupt> {
        let e = self.entries[pin];
        let bit = 1 << pin;
        if self.irr & bit == 0 || e & MASKED != 0 || e & REMOTE_IRR != 0 {
            return None;
        }
        let trigger = if e & LEVEL != 0 {
            self.entries[pin] |= REMOTE_IRR;
            Trigger::Level
        } else {
            // The edge is consumed.
            self.irr &= !bit;
            Trigger::Edge
        };
        Some(Interrupt {
            vector: e as u8,
            mode: DeliveryMode::from_bits((e >> 8) as u32),
            dest_mode: if e & (1 << 11) != 0 {
                DestMode::Logical
            } else {
                DestMode::Physical
            },
            dest: (e >> 56) as u8,
            trigger,
            shorthand: Shorthand::None,
        })
    }

    /// A CPU retired level-triggered `vector`: clear remote IRR of the entries
    /// that use it, and deliver again those whose pin is still high.
    pub fn eoi(&mut self, vector: u8) -> Vec<Interrupt> {
        let mut again = Vec::new();
        for pin in 0..IOAPIC_PINS {
            let e = self.entries[pin];
            if e as u8 == vector && e & LEVEL != 0 && e & REMOTE_IRR != 0 {
                self.entries[pin] &= !REMOTE_IRR;
                again.extend(self.service(pin));
            }
        }
        again
    }

    /// The raw redirection entry of `pin` (for tests and reports).
    pub fn entry(&self, pin: usize) -> Option<u64> {
        self.entries.get(pin).map(|e| e & !DELIVERY_STATUS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn program(io: &mut IoApic, pin: u32, low: u32, dest: u8) -> Vec<Interrupt> {
        io.write(IOREGSEL, REG_REDIRECTION + 2 * pin + 1);
        io.write(IOWIN, u32::from(dest) << 24);
        io.write(IOREGSEL, REG_REDIRECTION + 2 * pin);
        io.write(IOWIN, low)
    }

    #[test]
    fn version_says_24_pins_and_entries_start_masked() {
        let mut io = IoApic::default();
        io.write(IOREGSEL, REG_VERSION);
        assert_eq!(io.read(IOWIN), 0x0017_0011);
        assert_ne!(io.entry(5).unwrap() & MASKED, 0);
        assert_eq!(io.set_pin(5, true), None);
    }

    #[test]
    fn edge_pins_deliver_once_per_rising_edge_and_latch_while_masked() {
        let mut io = IoApic::default();
        assert!(program(&mut io, 5, 0x33, 1).is_empty());
        let m = io.set_pin(5, true).unwrap();
        assert_eq!((m.vector, m.dest, m.trigger), (0x33, 1, Trigger::Edge));
        assert_eq!(io.set_pin(5, true), None, "no edge while high");
        io.set_pin(5, false);
        assert!(io.set_pin(5, true).is_some());
        io.set_pin(5, false);
        // Masked: the edge waits for the unmask.
        program(&mut io, 5, 0x33 | MASKED as u32, 1);
        assert_eq!(io.set_pin(5, true), None);
        io.set_pin(5, false);
        assert_eq!(program(&mut io, 5, 0x33, 1).len(), 1);
    }

    #[test]
    fn level_pins_hold_remote_irr_until_eoi() {
        let mut io = IoApic::default();
        program(&mut io, 9, 0x41 | LEVEL as u32, 0);
        let m = io.set_pin(9, true).unwrap();
        assert_eq!(m.trigger, Trigger::Level);
        assert_ne!(io.entry(9).unwrap() & REMOTE_IRR, 0);
        // Still high: nothing more until the EOI, then it comes again.
        assert_eq!(io.set_pin(9, true), None);
        assert_eq!(io.eoi(0x41).len(), 1);
        // Low at EOI time: remote IRR clears and nothing is re-sent.
        io.set_pin(9, false);
        assert!(io.eoi(0x41).is_empty());
        assert_eq!(io.entry(9).unwrap() & REMOTE_IRR, 0);
        // An EOI for another vector leaves it alone.
        io.set_pin(9, true);
        assert!(io.eoi(0x42).is_empty());
        assert_ne!(io.entry(9).unwrap() & REMOTE_IRR, 0);
        // The EOI register does the same as a LAPIC broadcast.
        io.set_pin(9, false);
        assert!(io.write(IOEOI, 0x41).is_empty());
        assert_eq!(io.entry(9).unwrap() & REMOTE_IRR, 0);
    }

    #[test]
    fn logical_and_lowest_priority_entries_decode() {
        let mut io = IoApic::default();
        program(&mut io, 4, 0x35 | (1 << 8) | (1 << 11), 0x03);
        let m = io.set_pin(4, true).unwrap();
        assert_eq!(
            (m.mode, m.dest_mode, m.dest),
            (DeliveryMode::LowestPriority, DestMode::Logical, 3)
        );
    }

    #[test]
    fn guest_garbage_is_ignored() {
        let mut io = IoApic::default();
        io.write(IOREGSEL, 0xff);
        assert_eq!(io.read(IOWIN), 0);
        assert!(io.write(IOWIN, 0xffff_ffff).is_empty());
        assert_eq!(io.set_pin(99, true), None);
        assert!(io.write(0x800, 1).is_empty());
        // Read-only bits stay clear.
        program(&mut io, 1, 0xffff_ffff, 0xff);
        assert_eq!(io.entry(1).unwrap() & (REMOTE_IRR | DELIVERY_STATUS), 0);
    }
}
