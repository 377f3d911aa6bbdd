//! One local APIC (xAPIC, the register page at 0xFEE0_0000), as a plain state
//! machine: no KVM, no threads, no clock of its own.
//!
//! Under `--irqchip user` every interrupt a vCPU takes passes through here:
//! the IOAPIC and other CPUs' ICRs [`accept`](LocalApic::accept) vectors into
//! IRR, the vCPU thread asks for the [`deliverable`](LocalApic::deliverable)
//! one and [`acknowledges`](LocalApic::acknowledge) it when it injects it
//! (IRR → ISR), and the guest's EOI retires the highest in-service vector.
//! Register accesses that have effects outside this APIC (an ICR write sends
//! an IPI, an EOI of a level-triggered vector reaches the IOAPIC) are returned
//! as an [`Effect`] for the caller to carry out after it has let go of this
//! APIC's lock, so that no lock is ever held while another CPU's is taken.
//!
//! Time is passed in (ns on the VM's clock): the timer counts at
//! [`APIC_BUS_KHZ`](crate::cpuid::APIC_BUS_KHZ), 1 ns per bus cycle, as the
//! guest's CPUID timing leaf says and as KVM's in-kernel APIC does.
//!
//! Not emulated (and not announced in CPUID): x2APIC, the TSC-deadline timer
//! mode, the thermal/performance/CMCI sources (their LVT entries are plain
//! storage), SMI delivery, and the lowest-priority arbitration beyond "the
//! matching CPU with the lowest processor priority".

use super::{DeliveryMode, DestMode, Interrupt, Shorthand, Trigger};

/// Size of the register page.
pub const LAPIC_SIZE: u64 = 0x1000;

const REG_ID: u64 = 0x20;
const REG_VERSION: u64 = 0x30;
const REG_TPR: u64 = 0x80;
const REG_APR: u64 = 0x90;
const REG_PPR: u64 = 0xA0;
pub(crate) const REG_EOI: u64 = 0xB0;
const REG_LDR: u64 = 0xD0;
const REG_DFR: u64 = 0xE0;
pub(crate) const REG_SVR: u64 = 0xF0;
const REG_ISR: u64 = 0x100;
const REG_TMR: u64 = 0x180;
const REG_IRR: u64 = 0x200;
const REG_ESR: u64 = 0x280;
const REG_ICR_LOW: u64 = 0x300;
const REG_ICR_HIGH: u64 = 0x310;
const REG_LVT_TIMER: u64 = 0x320;
const REG_LVT_THERMAL: u64 = 0x330;
const REG_LVT_PERF: u64 = 0x340;
const REG_LVT_LINT0: u64 = 0x350;
const REG_LVT_LINT1: u64 = 0x360;
const REG_LVT_ERROR: u64 = 0x370;
const REG_TIMER_INITIAL: u64 = 0x380;
const REG_TIMER_CURRENT: u64 = 0x390;
const REG_TIMER_DIVIDE: u64 = 0x3E0;

/// Version 0x14 (integrated xAPIC), six LVT entries (max LVT index 5).
const VERSION: u32 = 0x0005_0014;
const SVR_ENABLED: u32 = 1 << 8;
const LVT_MASKED: u32 = 1 << 16;
const LVT_TIMER_PERIODIC: u32 = 1 << 17;
/// Timer LVT bits a guest may set: vector, mask, one-shot/periodic (bit 18,
/// TSC-deadline, is not offered).
const LVT_TIMER_WRITABLE: u32 = 0xff | LVT_MASKED | LVT_TIMER_PERIODIC;
/// LINT0/1 bits: vector, delivery mode, polarity, trigger, mask.
const LVT_LINT_WRITABLE: u32 = 0xff | 0x700 | (1 << 13) | (1 << 15) | LVT_MASKED;
const LVT_ERROR_WRITABLE: u32 = 0xff | LVT_MASKED;
const LVT_OTHER_WRITABLE: u32 = 0xff | 0x700 | LVT_MASKED;
/// ESR bits: send/receive illegal vector, illegal register address.
const ESR_SEND_ILLEGAL: u32 = 1 << 5;
const ESR_RECEIVE_ILLEGAL: u32 = 1 << 6;
const ESR_ILLEGAL_REGISTER: u32 = 1 << 7;
/// ICR low bits a guest may set (delivery status, bit 12, reads 0: IPIs are
/// delivered when the write completes).
const ICR_LOW_WRITABLE: u32 = 0x000c_cfff;

/// What a register access asks of the rest of the interrupt system.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Nothing beyond this APIC.
    None,
    /// Send this IPI (an ICR write).
    Ipi(Interrupt),
    /// A level-triggered vector was retired: the IOAPIC clears its remote IRR.
    Eoi(u8),
}

/// 256 bits, one per vector, stored as the eight 32-bit registers the guest sees.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct VectorSet([u32; 8]);

impl VectorSet {
    fn set(&mut self, v: u8) {
        self.0[usize::from(v >> 5)] |= 1 << (v & 31);
    }
    fn clear(&mut self, v: u8) {
        self.0[usize::from(v >> 5)] &= !(1 << (v & 31));
    }
    fn contains(&self, v: u8) -> bool {
        self.0[usize::from(v >> 5)] & (1 << (v & 31)) != 0
    }
    fn highest(&self) -> Option<u8> {
        (0..8).rev().find_map(|i| {
            let w = self.0[i];
            (w != 0).then(|| (i as u32 * 32 + 31 - w.leading_zeros()) as u8)
        })
    }
}

/// The timer's running state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Timer {
    /// When the current count reaches zero (ns); None: stopped.
    deadline: Option<u64>,
    initial: u32,
    divide: u32,
}

impl Timer {
    /// Bus cycles per count: divide configuration bits 0, 1, 3 (0b1011 = 1).
    fn divisor(&self) -> u64 {
        let code = (self.divide & 3) | ((self.divide & 8) >> 1);
        1 << ((code + 1) & 7)
    }

    /// One full count, ns.
    fn period(&self) -> u64 {
        u64::from(self.initial) * self.divisor()
    }
}

/// One CPU's local APIC.
#[derive(Clone, Debug)]
pub struct LocalApic {
    id: u8,
    tpr: u32,
    ldr: u32,
    dfr: u32,
    svr: u32,
    isr: VectorSet,
    tmr: VectorSet,
    irr: VectorSet,
    /// Errors since the last ESR write, and what the ESR shows.
    esr_pending: u32,
    esr: u32,
    icr_low: u32,
    icr_high: u32,
    lvt_timer: u32,
    lvt_thermal: u32,
    lvt_perf: u32,
    lvt_lint0: u32,
    lvt_lint1: u32,
    lvt_error: u32,
    timer: Timer,
}

impl LocalApic {
    /// The APIC of the CPU with APIC ID `id`, in its reset state, with LINT0
    /// wired to ExtINT and LINT1 to NMI (both masked) as PC firmware leaves
    /// them (the same as `regs::setup_lint` does for KVM's APIC).
    pub fn new(id: u8) -> Self {
        LocalApic {
            id,
            tpr: 0,
            ldr: 0,
            dfr: 0xffff_ffff,
            svr: 0xff,
            isr: VectorSet::default(),
            tmr: VectorSet::default(),
            irr: VectorSet::default(),
            esr_pending: 0,
            esr: 0,
            icr_low: 0,
            icr_high: 0,
            lvt_timer: LVT_MASKED,
            lvt_thermal: LVT_MASKED,
            lvt_perf: LVT_MASKED,
            lvt_lint0: LVT_MASKED | 0x700,
            lvt_lint1: LVT_MASKED | 0x400,
            lvt_error: LVT_MASKED,
            timer: Timer::default(),
        }
    }

    /// The reset state an INIT leaves behind (the APIC ID survives).
    pub fn reset(&mut self) {
        *self = LocalApic::new(self.id);
    }

    /// This APIC's ID.
    pub fn id(&self) -> u8 {
        self.id
    }

    fn enabled(&self) -> bool {
        self.svr & SVR_ENABLED != 0
    }

    /// Task priority (the low 8 bits of TPR; CR8 is its high nibble).
    pub fn tpr(&self) -> u8 {
        self.tpr as u8
    }

    /// Sets the task priority (a guest CR8 write: `tpr = cr8 << 4`).
    pub fn set_tpr(&mut self, tpr: u8) {
        self.tpr = u32::from(tpr);
    }

    /// Processor priority: the higher of TPR and the in-service class.
    pub fn ppr(&self) -> u8 {
        let isrv = self.isr.highest().unwrap_or(0);
        let tpr = self.tpr as u8;
        if tpr >> 4 >= isrv >> 4 {
            tpr
        } else {
            isrv & 0xf0
        }
    }

    /// Whether this APIC is a destination of `(dest, mode)`.
    pub fn matches(&self, dest: u8, mode: DestMode) -> bool {
        match mode {
            DestMode::Physical => dest == 0xff || dest == self.id,
            DestMode::Logical => {
                if dest == 0xff {
                    return true;
                }
                let ldr = (self.ldr >> 24) as u8;
                if self.dfr >> 28 == 0xf {
                    // Flat model: one bit per CPU.
                    ldr & dest != 0
                } else {
                    // Cluster model: cluster in the high nibble, CPUs in the low.
                    ldr >> 4 == dest >> 4 && ldr & dest & 0xf != 0
                }
            }
        }
    }

    /// Accepts a fixed (or lowest-priority) interrupt into IRR. Returns
    /// whether it was taken (an illegal vector or a software-disabled APIC
    /// drops it).
    pub fn accept(&mut self, vector: u8, trigger: Trigger) -> bool {
        if vector < 16 {
            self.error(ESR_RECEIVE_ILLEGAL);
            return false;
        }
        if !self.enabled() {
            return false;
        }
        self.irr.set(vector);
        match trigger {
            Trigger::Level => self.tmr.set(vector),
            Trigger::Edge => self.tmr.clear(vector),
        }
        true
    }

    /// The vector that would be injected now: the highest requested one whose
    /// priority class is above the processor priority.
    pub fn deliverable(&self) -> Option<u8> {
        let v = self.irr.highest()?;
        (self.enabled() && v >> 4 > self.ppr() >> 4).then_some(v)
    }

    /// Takes the deliverable vector for injection: IRR → ISR.
    pub fn acknowledge(&mut self) -> Option<u8> {
        let v = self.deliverable()?;
        self.irr.clear(v);
        self.isr.set(v);
        Some(v)
    }

    /// Undoes [`acknowledge`](Self::acknowledge) of `vector` (its injection failed).
    pub fn unacknowledge(&mut self, vector: u8) {
        self.isr.clear(vector);
        self.irr.set(vector);
    }

    /// Whether any interrupt is requested at all (deliverable or not).
    pub fn has_requests(&self) -> bool {
        self.irr.highest().is_some()
    }

    /// The vector the guest may retire without writing the EOI register
    /// (KVM's PV EOI; see [`super::pv_eoi`]), if any: the one vector in
    /// service, if it is edge-triggered (no IOAPIC needs to hear of its EOI)
    /// and nothing is requested that the EOI could make deliverable, since a
    /// PV EOI does not exit.
    pub fn pv_eoi_vector(&self) -> Option<u8> {
        let one_in_service = self.isr.0.iter().map(|w| w.count_ones()).sum::<u32>() == 1;
        let v = self.isr.highest()?;
        (one_in_service && !self.tmr.contains(v) && !self.has_requests()).then_some(v)
    }

    /// The guest retired `vector`, offered by [`pv_eoi_vector`](Self::pv_eoi_vector),
    /// through PV EOI. It was edge-triggered when offered, so nothing goes to
    /// the IOAPIC, even if the same vector has been accepted level-triggered
    /// since (its TMR bit then belongs to that new request).
    pub fn eoi_from_guest_memory(&mut self, vector: u8) {
        self.isr.clear(vector);
    }

    fn eoi(&mut self) -> Effect {
        let Some(v) = self.isr.highest() else {
            return Effect::None;
        };
        self.isr.clear(v);
        if self.tmr.contains(v) {
            self.tmr.clear(v);
            Effect::Eoi(v)
        } else {
            Effect::None
        }
    }

    fn error(&mut self, bits: u32) {
        self.esr_pending |= bits;
        let lvt = self.lvt_error;
        if lvt & LVT_MASKED == 0 {
            self.accept(lvt as u8, Trigger::Edge);
        }
    }

    /// The guest reads the 32-bit register at `offset`.
    pub fn read(&mut self, offset: u64, now: u64) -> u32 {
        match offset {
            REG_ID => u32::from(self.id) << 24,
            REG_VERSION => VERSION,
            REG_TPR => self.tpr,
            REG_APR => 0,
            REG_PPR => u32::from(self.ppr()),
            REG_LDR => self.ldr,
            REG_DFR => self.dfr,
            REG_SVR => self.svr,
            o @ REG_ISR..0x180 if o % 16 == 0 => self.isr.0[((o - REG_ISR) / 16) as usize],
            o @ REG_TMR..0x200 if o % 16 == 0 => self.tmr.0[((o - REG_TMR) / 16) as usize],
            o @ REG_IRR..0x280 if o % 16 == 0 => self.irr.0[((o - REG_IRR) / 16) as usize],
            REG_ESR => self.esr,
            REG_ICR_LOW => self.icr_low,
            REG_ICR_HIGH => self.icr_high,
            REG_LVT_TIMER => self.lvt_timer,
            REG_LVT_THERMAL => self.lvt_thermal,
            REG_LVT_PERF => self.lvt_perf,
            REG_LVT_LINT0 => self.lvt_lint0,
            REG_LVT_LINT1 => self.lvt_lint1,
            REG_LVT_ERROR => self.lvt_error,
            REG_TIMER_INITIAL => self.timer.initial,
            REG_TIMER_CURRENT => self.timer_current(now),
            REG_TIMER_DIVIDE => self.timer.divide,
            // EOI is write-only; reserved registers read as 0.
            REG_EOI => 0,
            _ => 0,
        }
    }

    /// The guest writes `value` to the 32-bit register at `offset`.
    pub fn write(&mut self, offset: u64, value: u32, now: u64) -> Effect {
        let masked_if_disabled = |lvt: u32, enabled: bool| {
            if enabled {
                lvt
            } else {
                lvt | LVT_MASKED
            }
        };
        let enabled = self.enabled();
        match offset {
            REG_ID => self.id = (value >> 24) as u8,
            REG_TPR => self.tpr = value & 0xff,
            REG_EOI => return self.eoi(),
            REG_LDR => self.ldr = value & 0xff00_0000,
            REG_DFR => self.dfr = value | 0x0fff_ffff,
            REG_SVR => {
                self.svr = value & 0x3ff;
                if !self.enabled() {
                    self.mask_all_lvts();
                }
            }
            REG_ESR => {
                self.esr = self.esr_pending;
                self.esr_pending = 0;
            }
            REG_ICR_HIGH => self.icr_high = value & 0xff00_0000,
            REG_ICR_LOW => {
                self.icr_low = value & ICR_LOW_WRITABLE;
                return self.send_ipi();
            }
            REG_LVT_TIMER => {
                let new = masked_if_disabled(value & LVT_TIMER_WRITABLE, enabled);
                if (new ^ self.lvt_timer) & LVT_TIMER_PERIODIC != 0 {
                    // A mode change stops the timer (as KVM's APIC does).
                    self.timer.deadline = None;
                }
                self.lvt_timer = new;
            }
            REG_LVT_THERMAL => {
                self.lvt_thermal = masked_if_disabled(value & LVT_OTHER_WRITABLE, enabled)
            }
            REG_LVT_PERF => self.lvt_perf = masked_if_disabled(value & LVT_OTHER_WRITABLE, enabled),
            REG_LVT_LINT0 => {
                self.lvt_lint0 = masked_if_disabled(value & LVT_LINT_WRITABLE, enabled)
            }
            REG_LVT_LINT1 => {
                self.lvt_lint1 = masked_if_disabled(value & LVT_LINT_WRITABLE, enabled)
            }
            REG_LVT_ERROR => {
                self.lvt_error = masked_if_disabled(value & LVT_ERROR_WRITABLE, enabled)
            }
            REG_TIMER_INITIAL => self.start_timer(value, now),
            REG_TIMER_DIVIDE => self.set_divide(value & 0xb, now),
            // Read-only registers and reserved offsets.
            REG_VERSION | REG_APR | REG_PPR | REG_TIMER_CURRENT => {}
            o if (REG_ISR..0x280).contains(&o) => {}
            _ => self.error(ESR_ILLEGAL_REGISTER),
        }
        Effect::None
    }

    fn mask_all_lvts(&mut self) {
        for lvt in [
            &mut self.lvt_timer,
            &mut self.lvt_thermal,
            &mut self.lvt_perf,
            &mut self.lvt_lint0,
            &mut self.lvt_lint1,
            &mut self.lvt_error,
        ] {
            *lvt |= LVT_MASKED;
        }
    }

    /// The ICR was written: the IPI it describes.
    fn send_ipi(&mut self) -> Effect {
        let low = self.icr_low;
        let mode = DeliveryMode::from_bits(low >> 8);
        let vector = low as u8;
        let trigger = if low & (1 << 15) != 0 {
            Trigger::Level
        } else {
            Trigger::Edge
        };
        let assert = low & (1 << 14) != 0;
        // INIT level de-assert (old SMP protocol): a no-op on xAPICs.
        if mode == DeliveryMode::Init && trigger == Trigger::Level && !assert {
            return Effect::None;
        }
        if matches!(mode, DeliveryMode::Fixed | DeliveryMode::LowestPriority) && vector < 16 {
            self.error(ESR_SEND_ILLEGAL);
            return Effect::None;
        }
        Effect::Ipi(Interrupt {
            vector,
            mode,
            dest_mode: if low & (1 << 11) != 0 {
                DestMode::Logical
            } else {
                DestMode::Physical
            },
            dest: (self.icr_high >> 24) as u8,
            trigger,
            shorthand: Shorthand::from_bits(low >> 18),
        })
    }

    fn start_timer(&mut self, initial: u32, now: u64) {
        self.timer.initial = initial;
        self.timer.deadline = (initial != 0).then(|| now.saturating_add(self.timer.period()));
    }

    /// A new divide value: the rest of the current count runs at the new rate.
    fn set_divide(&mut self, divide: u32, now: u64) {
        let counts_left = self.timer_current(now);
        self.timer.divide = divide;
        if self.timer.deadline.is_some() {
            let left = u64::from(counts_left) * self.timer.divisor();
            self.timer.deadline = Some(now.saturating_add(left));
        }
    }

    fn timer_current(&self, now: u64) -> u32 {
        let Some(deadline) = self.timer.deadline else {
            return 0;
        };
        let left = deadline.saturating_sub(now);
        (left / self.timer.divisor()).min(u64::from(self.timer.initial)) as u32
    }

    /// When the timer next fires and would interrupt (None: stopped or masked).
    pub fn timer_deadline(&self) -> Option<u64> {
        if self.lvt_timer & LVT_MASKED != 0 {
            return None;
        }
        self.timer.deadline
    }

    /// Advances the timer to `now`: an expired one-shot stops, a periodic one
    /// reloads (periods missed meanwhile are coalesced into one interrupt), and
    /// an unmasked expiry requests the timer vector. Returns the deadline of
    /// the interrupt it requested, if it did.
    pub fn advance_timer(&mut self, now: u64) -> Option<u64> {
        let deadline = self.timer.deadline.filter(|&d| d <= now)?;
        let period = self.timer.period();
        self.timer.deadline = if self.lvt_timer & LVT_TIMER_PERIODIC != 0 && period > 0 {
            let missed = (now - deadline) / period;
            Some(deadline + (missed + 1) * period)
        } else {
            None
        };
        if self.lvt_timer & LVT_MASKED != 0 {
            return None;
        }
        self.accept(self.lvt_timer as u8, Trigger::Edge);
        Some(deadline)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enabled(id: u8) -> LocalApic {
        let mut a = LocalApic::new(id);
        a.write(REG_SVR, SVR_ENABLED | 0xff, 0);
        a
    }

    #[test]
    fn reset_state_reads_like_hardware() {
        let mut a = LocalApic::new(3);
        assert_eq!(a.read(REG_ID, 0), 3 << 24);
        assert_eq!(a.read(REG_VERSION, 0) & 0xff, 0x14);
        assert_eq!((a.read(REG_VERSION, 0) >> 16) & 0xff, 5);
        assert_eq!(a.read(REG_DFR, 0), 0xffff_ffff);
        assert_eq!(a.read(REG_SVR, 0), 0xff);
        assert_ne!(a.read(REG_LVT_TIMER, 0) & LVT_MASKED, 0);
        // A disabled APIC takes no fixed interrupts.
        assert!(!a.accept(0x40, Trigger::Edge));
    }

    #[test]
    fn the_highest_class_above_ppr_is_delivered_and_isr_nests() {
        let mut a = enabled(0);
        assert!(a.accept(0x31, Trigger::Edge));
        assert!(a.accept(0x52, Trigger::Edge));
        assert_eq!(a.acknowledge(), Some(0x52));
        assert_eq!(a.ppr(), 0x50);
        // 0x31 is below the in-service class: it waits.
        assert_eq!(a.deliverable(), None);
        // A higher class nests on top of 0x52.
        a.accept(0x61, Trigger::Edge);
        assert_eq!(a.acknowledge(), Some(0x61));
        assert_eq!(a.read(REG_ISR + 0x20, 0), 1 << 18);
        assert_eq!(a.read(REG_ISR + 0x30, 0), 1 << 1);
        // EOI retires the highest in-service vector first.
        a.write(REG_EOI, 0, 0);
        assert_eq!(a.ppr(), 0x50);
        a.write(REG_EOI, 0, 0);
        assert_eq!(a.ppr(), 0);
        assert_eq!(a.acknowledge(), Some(0x31));
    }

    #[test]
    fn tpr_holds_back_lower_classes() {
        let mut a = enabled(0);
        a.write(REG_TPR, 0x40, 0);
        a.accept(0x45, Trigger::Edge);
        assert_eq!(a.deliverable(), None, "same class as TPR is masked");
        a.accept(0x50, Trigger::Edge);
        assert_eq!(a.deliverable(), Some(0x50));
        a.set_tpr(0x60);
        assert_eq!(a.deliverable(), None);
        assert_eq!(a.read(REG_PPR, 0), 0x60);
    }

    #[test]
    fn a_level_vector_reports_its_eoi_and_an_edge_one_does_not() {
        let mut a = enabled(0);
        a.accept(0x40, Trigger::Level);
        a.acknowledge();
        assert_eq!(a.read(REG_TMR + 0x20, 0), 1);
        assert_eq!(a.write(REG_EOI, 0, 0), Effect::Eoi(0x40));
        a.accept(0x41, Trigger::Edge);
        a.acknowledge();
        assert_eq!(a.write(REG_EOI, 0, 0), Effect::None);
        // An EOI with nothing in service does nothing.
        assert_eq!(a.write(REG_EOI, 0, 0), Effect::None);
    }

    #[test]
    fn illegal_vectors_set_esr_and_raise_the_error_lvt() {
        let mut a = enabled(0);
        a.write(REG_LVT_ERROR, 0xfe, 0);
        assert!(!a.accept(7, Trigger::Edge));
        a.write(REG_ICR_LOW, 0x0000_4003, 0);
        a.write(REG_ESR, 0, 0);
        assert_eq!(a.read(REG_ESR, 0), ESR_RECEIVE_ILLEGAL | ESR_SEND_ILLEGAL);
        assert_eq!(a.deliverable(), Some(0xfe));
        a.write(REG_ESR, 0, 0);
        assert_eq!(a.read(REG_ESR, 0), 0);
    }

    #[test]
    fn logical_destinations_flat_and_cluster() {
        let mut a = enabled(1);
        a.write(REG_LDR, 0x0200_0000, 0);
        assert!(a.matches(0x02, DestMode::Logical));
        assert!(a.matches(0x03, DestMode::Logical));
        assert!(!a.matches(0x01, DestMode::Logical));
        assert!(a.matches(0xff, DestMode::Logical));
        // Cluster model: cluster 3, member bit 1.
        a.write(REG_DFR, 0x0fff_ffff, 0);
        a.write(REG_LDR, 0x3200_0000, 0);
        assert!(a.matches(0x32, DestMode::Logical));
        assert!(a.matches(0x36, DestMode::Logical));
        assert!(!a.matches(0x22, DestMode::Logical));
        assert!(!a.matches(0x31, DestMode::Logical));
        assert!(a.matches(1, DestMode::Physical));
        assert!(!a.matches(2, DestMode::Physical));
        assert!(a.matches(0xff, DestMode::Physical));
    }

    #[test]
    fn icr_writes_describe_ipis() {
        let mut a = enabled(0);
        a.write(REG_ICR_HIGH, 2 << 24, 0);
        let Effect::Ipi(ipi) = a.write(REG_ICR_LOW, 0x0000_4031, 0) else {
            panic!("no IPI");
        };
        assert_eq!(
            (ipi.vector, ipi.mode, ipi.dest, ipi.dest_mode, ipi.shorthand),
            (
                0x31,
                DeliveryMode::Fixed,
                2,
                DestMode::Physical,
                Shorthand::None
            )
        );
        let Effect::Ipi(sipi) = a.write(REG_ICR_LOW, 0x000c_4608, 0) else {
            panic!("no SIPI");
        };
        assert_eq!(
            (sipi.mode, sipi.vector, sipi.shorthand),
            (DeliveryMode::Startup, 8, Shorthand::AllButSelf)
        );
        // INIT level de-assert is ignored.
        assert_eq!(a.write(REG_ICR_LOW, 0x0000_8500, 0), Effect::None);
    }

    #[test]
    fn one_shot_timer_counts_down_with_the_divider_and_fires_once() {
        let mut a = enabled(0);
        a.write(REG_TIMER_DIVIDE, 0b0001, 0); // divide by 4
        a.write(REG_LVT_TIMER, 0x30, 0);
        a.write(REG_TIMER_INITIAL, 1000, 100);
        assert_eq!(a.timer_deadline(), Some(100 + 4000));
        assert_eq!(a.read(REG_TIMER_CURRENT, 2100), 500);
        assert_eq!(a.advance_timer(4099), None);
        assert_eq!(a.advance_timer(4100), Some(4100));
        assert_eq!(a.read(REG_TIMER_CURRENT, 4100), 0);
        assert_eq!(a.timer_deadline(), None);
        assert_eq!(a.acknowledge(), Some(0x30));
        assert_eq!(a.advance_timer(1_000_000), None);
    }

    #[test]
    fn periodic_timer_reloads_and_coalesces_missed_periods() {
        let mut a = enabled(0);
        a.write(REG_TIMER_DIVIDE, 0b1011, 0); // divide by 1
        a.write(REG_LVT_TIMER, LVT_TIMER_PERIODIC | 0x30, 0);
        a.write(REG_TIMER_INITIAL, 100, 0);
        assert_eq!(a.advance_timer(100), Some(100));
        assert_eq!(a.timer_deadline(), Some(200));
        // Three periods late: one interrupt, the next deadline on the grid.
        assert_eq!(a.advance_timer(430), Some(200));
        assert_eq!(a.timer_deadline(), Some(500));
        assert_eq!(a.read(REG_TIMER_CURRENT, 450), 50);
        // Changing the mode stops it; initial count 0 stops it too.
        a.write(REG_LVT_TIMER, 0x30, 0);
        assert_eq!(a.timer_deadline(), None);
        a.write(REG_TIMER_INITIAL, 10, 1000);
        a.write(REG_TIMER_INITIAL, 0, 1001);
        assert_eq!(a.timer_deadline(), None);
    }

    #[test]
    fn a_masked_timer_counts_without_interrupting() {
        let mut a = enabled(0);
        a.write(REG_TIMER_DIVIDE, 0b1011, 0);
        a.write(REG_LVT_TIMER, LVT_MASKED | 0x32, 0);
        a.write(REG_TIMER_INITIAL, u32::MAX, 0);
        assert_eq!(a.timer_deadline(), None);
        assert_eq!(a.read(REG_TIMER_CURRENT, 1000), u32::MAX - 1000);
        a.advance_timer(u64::from(u32::MAX) + 1);
        assert!(!a.has_requests());
    }

    #[test]
    fn divide_change_mid_period_keeps_the_count() {
        let mut a = enabled(0);
        a.write(REG_TIMER_DIVIDE, 0b1011, 0);
        a.write(REG_LVT_TIMER, 0x30, 0);
        a.write(REG_TIMER_INITIAL, 1000, 0);
        a.write(REG_TIMER_DIVIDE, 0b0000, 400); // divide by 2
        assert_eq!(a.read(REG_TIMER_CURRENT, 400), 600);
        assert_eq!(a.timer_deadline(), Some(400 + 1200));
    }

    #[test]
    fn software_disable_masks_every_lvt() {
        let mut a = enabled(0);
        a.write(REG_LVT_TIMER, 0x30, 0);
        a.write(REG_SVR, 0xff, 0);
        assert_ne!(a.read(REG_LVT_TIMER, 0) & LVT_MASKED, 0);
        a.write(REG_LVT_LINT0, 0x700, 0);
        assert_ne!(a.read(REG_LVT_LINT0, 0) & LVT_MASKED, 0);
    }

    #[test]
    fn pv_eoi_only_for_one_edge_vector_in_service_and_none_requested() {
        let mut a = enabled(0);
        assert_eq!(a.pv_eoi_vector(), None, "nothing in service");
        a.accept(0x40, Trigger::Edge);
        a.acknowledge();
        assert_eq!(a.pv_eoi_vector(), Some(0x40));
        // Another request: retiring 0x40 without an exit could strand it.
        a.accept(0x30, Trigger::Edge);
        assert_eq!(a.pv_eoi_vector(), None);
        // Two in service (0x50 nested in 0x40).
        let mut b = enabled(0);
        for v in [0x40, 0x50] {
            b.accept(v, Trigger::Edge);
            b.acknowledge();
        }
        assert_eq!(b.pv_eoi_vector(), None);
        // Level-triggered: the IOAPIC must see the EOI.
        let mut c = enabled(0);
        c.accept(0x40, Trigger::Level);
        c.acknowledge();
        assert_eq!(c.pv_eoi_vector(), None);
    }

    #[test]
    fn a_pv_eoi_retires_the_vector_in_service() {
        let mut a = enabled(0);
        a.accept(0x40, Trigger::Edge);
        a.acknowledge();
        a.eoi_from_guest_memory(0x40);
        assert_eq!(a.read(REG_ISR + 0x20, 0), 0, "ISR bits 64-95");
        assert_eq!(a.ppr(), 0);
        // The same vector accepted level-triggered while the offer was out
        // keeps its TMR bit: the EOI was for the edge one.
        let mut b = enabled(0);
        b.accept(0x40, Trigger::Edge);
        b.acknowledge();
        b.accept(0x40, Trigger::Level);
        b.eoi_from_guest_memory(0x40);
        assert_eq!(b.read(REG_TMR + 0x20, 0), 1, "TMR bit 64");
        assert_eq!(b.deliverable(), Some(0x40));
    }
}
