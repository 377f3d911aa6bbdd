//! KVM's paravirtual EOI, served by the userspace irqchip: a guest retires an
//! interrupt by clearing a bit in its own memory instead of writing the APIC's
//! EOI register, which under `--irqchip user` is an MMIO exit to this process
//! (about 8 µs on the PVM hosts, one per interrupt the guest takes).
//!
//! The protocol is KVM's (Documentation/virt/kvm/x86/msr.rst,
//! `MSR_KVM_PV_EOI_EN`), so Linux guests use it unchanged when CPUID leaf
//! 0x4000_0001 shows `KVM_FEATURE_PV_EOI`:
//! - The guest writes the MSR with the guest-physical address of a 4-byte
//!   area (4-byte aligned) and bit 0 set to enable, 0 to disable.
//! - When the VMM injects an interrupt whose EOI needs nothing from it (see
//!   [`LocalApic::pv_eoi_vector`](super::lapic::LocalApic::pv_eoi_vector)),
//!   it sets bit 0 of the area: an *offer*, for that vector.
//! - The guest's EOI clears the bit if it is set and then skips the register
//!   write; if the bit was clear it writes the register as usual.
//! - At its next exit the VMM reads the bit: clear means the guest took the
//!   offer, and the VMM retires the offered vector for it (by its number: the
//!   same vector may have been accepted again meanwhile, even level-triggered). Set means it has
//!   not EOI'd yet: the VMM clears the bit (the offer is withdrawn while the
//!   guest is out, and made again at the next entry if it still holds).
//!
//! The MSR reaches this process through KVM's MSR filter
//! (`KVM_CAP_X86_USER_SPACE_MSR`), so KVM keeps no state for it. Everything
//! here runs on the vCPU's own thread while the vCPU is outside `KVM_RUN`, so
//! the guest never runs while the bit is looked at. The area is guest memory:
//! an address outside RAM or unaligned is refused with a #GP, as KVM does, and
//! a later failure to reach it only withdraws the offer (the guest then
//! writes the EOI register).

use thiserror::Error;
use vm_memory::{Bytes, GuestAddress, GuestMemory};

/// `MSR_KVM_PV_EOI_EN`.
pub const MSR_KVM_PV_EOI_EN: u32 = 0x4b56_4d04;
/// `KVM_FEATURE_PV_EOI` in CPUID 0x4000_0001 EAX.
pub const KVM_FEATURE_PV_EOI: u32 = 1 << 6;
/// MSR bit 0: enabled.
const MSR_ENABLED: u64 = 1;
/// The area's first byte when an EOI may be skipped (bit 0), and when not.
/// Like KVM, the VMM writes that byte only; the guest uses bit 0 only.
const OFFERED: u8 = 1;
const NOT_OFFERED: u8 = 0;

/// Why a write of `MSR_KVM_PV_EOI_EN` is refused (the guest gets a #GP).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PvEoiError {
    /// The area's address is not 4-byte aligned.
    #[error("PV EOI area {0:#x} is not 4-byte aligned")]
    Unaligned(u64),
    /// The area is not in guest RAM.
    #[error("PV EOI area {0:#x} is not in guest RAM")]
    NotRam(u64),
}

/// One vCPU's PV EOI state.
#[derive(Debug, Default)]
pub struct PvEoi {
    /// The MSR as the guest last wrote it (and reads it back).
    msr: u64,
    /// The enabled area, if any.
    area: Option<GuestAddress>,
    /// The area's bit is set: the guest may EOI this vector without an exit.
    offered: Option<u8>,
}

/// What [`PvEoi::after_exit`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Taken {
    /// No offer was out.
    NoOffer,
    /// The guest cleared the bit: it has EOI'd the offered vector.
    Eoi(u8),
    /// The guest has not EOI'd yet; the offer is withdrawn.
    Withdrawn,
}

impl PvEoi {
    /// The MSR's value.
    pub fn msr(&self) -> u64 {
        self.msr
    }

    /// Whether the guest has enabled PV EOI.
    pub fn enabled(&self) -> bool {
        self.area.is_some()
    }

    /// The guest writes the MSR. An offer still out is dropped (the guest
    /// moves or disables its area only while it has nothing in service).
    pub fn write_msr<M: GuestMemory>(&mut self, mem: &M, value: u64) -> Result<(), PvEoiError> {
        let addr = value & !MSR_ENABLED;
        if addr % 4 != 0 {
            return Err(PvEoiError::Unaligned(addr));
        }
        let area = if value & MSR_ENABLED != 0 {
            let a = GuestAddress(addr);
            mem.read_obj::<u32>(a)
                .map_err(|_| PvEoiError::NotRam(addr))?;
            Some(a)
        } else {
            None
        };
        self.msr = value;
        self.area = area;
        self.offered = None;
        Ok(())
    }

    /// The CPU was reset (INIT): PV EOI is off until the guest enables it again.
    pub fn reset(&mut self) {
        *self = PvEoi::default();
    }

    /// Before entering the guest, with `vector` in service and allowing it
    /// ([`LocalApic::pv_eoi_vector`](super::lapic::LocalApic::pv_eoi_vector)):
    /// sets the bit, so the guest's EOI of it needs no exit. Returns whether
    /// the offer is out.
    pub fn offer<M: GuestMemory>(&mut self, mem: &M, vector: u8) -> bool {
        let Some(area) = self.area else {
            return false;
        };
        if self.offered.is_none() && mem.write_obj(OFFERED, area).is_ok() {
            self.offered = Some(vector);
        }
        self.offered.is_some()
    }

    /// After an exit, before anything looks at the APIC: whether the guest
    /// EOI'd through the area since the last entry. Leaves no offer out.
    pub fn after_exit<M: GuestMemory>(&mut self, mem: &M) -> Taken {
        let Some(vector) = self.offered.take() else {
            return Taken::NoOffer;
        };
        let Some(area) = self.area else {
            return Taken::NoOffer;
        };
        match mem.read_obj::<u8>(area) {
            Ok(byte) if byte & OFFERED == 0 => Taken::Eoi(vector),
            Ok(_) => {
                // Failing to clear it leaves an offer the VMM no longer
                // tracks: the guest would skip an EOI nobody retires. Turn
                // PV EOI off instead (its EOIs then go to the register).
                if mem.write_obj(NOT_OFFERED, area).is_err() {
                    self.area = None;
                }
                Taken::Withdrawn
            }
            Err(_) => {
                self.area = None;
                Taken::Withdrawn
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    fn mem() -> GuestMemoryMmap<()> {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap()
    }

    fn word(m: &GuestMemoryMmap<()>, at: u64) -> u32 {
        m.read_obj(GuestAddress(at)).unwrap()
    }

    #[test]
    fn the_msr_is_validated_like_kvm_does() {
        let m = mem();
        let mut p = PvEoi::default();
        assert_eq!(
            p.write_msr(&m, 0x1002 | 1),
            Err(PvEoiError::Unaligned(0x1002))
        );
        assert_eq!(
            p.write_msr(&m, 0x20_0000 | 1),
            Err(PvEoiError::NotRam(0x20_0000))
        );
        // The last four bytes of RAM are fine; one past is not.
        assert_eq!(p.write_msr(&m, 0xfffc | 1), Ok(()));
        assert_eq!(
            p.write_msr(&m, 0xfffe | 1),
            Err(PvEoiError::Unaligned(0xfffe))
        );
        assert!(p.enabled());
        assert_eq!(p.msr(), 0xfffc | 1);
        // Disabled: any aligned address is accepted and nothing is offered.
        assert_eq!(p.write_msr(&m, 0x20_0000), Ok(()));
        assert!(!p.enabled());
        assert!(!p.offer(&m, 0x40));
    }

    #[test]
    fn a_taken_offer_is_an_eoi_and_an_untaken_one_is_withdrawn() {
        let m = mem();
        let mut p = PvEoi::default();
        p.write_msr(&m, 0x1000 | 1).unwrap();
        assert!(p.offer(&m, 0x40));
        assert_eq!(word(&m, 0x1000), 1);
        // The guest's EOI: test-and-clear.
        m.write_obj(0u32, GuestAddress(0x1000)).unwrap();
        assert_eq!(p.after_exit(&m), Taken::Eoi(0x40));
        assert_eq!(p.after_exit(&m), Taken::NoOffer, "nothing is out any more");

        assert!(p.offer(&m, 0x41));
        assert_eq!(p.after_exit(&m), Taken::Withdrawn);
        assert_eq!(
            word(&m, 0x1000),
            0,
            "the bit is cleared while the guest is out"
        );
    }

    #[test]
    fn only_the_first_byte_is_written() {
        let m = mem();
        m.write_obj(0xabcd_ef00u32, GuestAddress(0x1000)).unwrap();
        let mut p = PvEoi::default();
        p.write_msr(&m, 0x1000 | 1).unwrap();
        p.offer(&m, 0x40);
        assert_eq!(word(&m, 0x1000), 0xabcd_ef01);
        assert_eq!(p.after_exit(&m), Taken::Withdrawn);
        assert_eq!(word(&m, 0x1000), 0xabcd_ef00);
    }

    #[test]
    fn reset_turns_it_off() {
        let m = mem();
        let mut p = PvEoi::default();
        p.write_msr(&m, 0x1000 | 1).unwrap();
        p.offer(&m, 0x40);
        p.reset();
        assert!(!p.enabled());
        assert_eq!(p.msr(), 0);
        assert_eq!(p.after_exit(&m), Taken::NoOffer);
    }

    mod against_register_eois {
        //! A guest that ends interrupts through PV EOI whenever offered ends up
        //! with the same APIC state, at every exit, and the same EOIs reaching
        //! the IOAPIC, as one that always writes the EOI register; and an EOI
        //! taken without an exit never holds back what the register write's
        //! exit would have delivered or told the IOAPIC at once.
        use super::*;
        use crate::irqchip::lapic::{Effect, LocalApic, REG_EOI, REG_SVR};
        use crate::irqchip::Trigger;
        use proptest::prelude::*;

        const AREA: u64 = 0x1000;

        #[derive(Clone, Debug)]
        enum Op {
            /// Another thread accepts a vector (while the guest runs).
            Raise(u8, bool),
            /// The guest's handler for its newest interrupt ends it.
            GuestEoi,
            /// An exit (the VMM syncs) and the next entry (it injects).
            ExitAndEnter,
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                (0x20u8..=0xff, any::<bool>()).prop_map(|(v, l)| Op::Raise(v, l)),
                Just(Op::GuestEoi),
                Just(Op::ExitAndEnter),
            ]
        }

        fn apic() -> LocalApic {
            let mut a = LocalApic::new(0);
            a.write(REG_SVR, 0x1ff, 0);
            a
        }

        fn registers(a: &mut LocalApic) -> Vec<u32> {
            (0x100..0x280).step_by(16).map(|o| a.read(o, 0)).collect()
        }

        fn note(effect: Effect, eois: &mut Vec<u8>) {
            if let Effect::Eoi(v) = effect {
                eois.push(v);
            }
        }

        proptest! {
            #[test]
            fn pv_eoi_is_an_eoi(ops in proptest::collection::vec(op(), 1..200)) {
                let m = mem();
                let (mut pv, mut reference) = (apic(), apic());
                let mut area = PvEoi::default();
                area.write_msr(&m, AREA | 1).unwrap();
                // The guest's stacks of interrupts in service (newest last).
                let (mut pv_stack, mut ref_stack) = (Vec::new(), Vec::new());
                let (mut pv_eois, mut ref_eois) = (Vec::new(), Vec::new());
                // A vector accepted while the guest runs kicks it out: the
                // exit comes whatever the guest does.
                let mut raised_in_guest = false;
                let mut offered = None;
                for op in ops {
                    match op {
                        // The one case a PV EOI cannot match: the offered (edge)
                        // vector accepted again level-triggered while the offer is
                        // out. A register EOI's trigger mode then depends on whether
                        // it came before or after that accept, which an EOI without
                        // an exit does not tell; the VMM retires the edge one it
                        // offered (`LocalApic::eoi_from_guest_memory`).
                        Op::Raise(v, true) if offered == Some(v) => {}
                        Op::Raise(v, level) => {
                            let t = if level { Trigger::Level } else { Trigger::Edge };
                            pv.accept(v, t);
                            reference.accept(v, t);
                            raised_in_guest = true;
                        }
                        Op::GuestEoi => {
                            let mut skipped = false;
                            if pv_stack.pop().is_some() {
                                // The guest's test-and-clear of bit 0.
                                let byte: u8 = m.read_obj(GuestAddress(AREA)).unwrap();
                                if byte & 1 != 0 {
                                    m.write_obj(byte & !1, GuestAddress(AREA)).unwrap();
                                    skipped = true;
                                } else {
                                    note(pv.write(REG_EOI, 0, 0), &mut pv_eois);
                                }
                            }
                            if ref_stack.pop().is_some() {
                                let effect = reference.write(REG_EOI, 0, 0);
                                if skipped && !raised_in_guest {
                                    prop_assert_eq!(effect, Effect::None, "a level EOI waited");
                                    prop_assert_eq!(reference.deliverable(), None, "an interrupt waited");
                                }
                                note(effect, &mut ref_eois);
                            }
                        }
                        Op::ExitAndEnter => {
                            if let Taken::Eoi(v) = area.after_exit(&m) {
                                pv.eoi_from_guest_memory(v);
                            }
                            prop_assert_eq!(registers(&mut pv), registers(&mut reference));
                            prop_assert_eq!(&pv_eois, &ref_eois);
                            if let Some(v) = pv.acknowledge() {
                                pv_stack.push(v);
                            }
                            if let Some(v) = reference.acknowledge() {
                                ref_stack.push(v);
                            }
                            offered = pv.pv_eoi_vector().filter(|&v| area.offer(&m, v));
                            raised_in_guest = false;
                        }
                    }
                }
            }
        }
    }
}
