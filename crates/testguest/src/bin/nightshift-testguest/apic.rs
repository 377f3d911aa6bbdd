//! Local APIC (xAPIC, MMIO at 0xFEE0_0000), programmed from CPL3.
//!
//! The identity map is user accessible, so CPL3 code reaches the LAPIC registers directly;
//! each access is an MMIO exit handled by the in-kernel LAPIC, and no CPL0 code (emulated
//! on PVM) is involved. Only the EOI is sent at CPL0, by the interrupt stubs.
//!
//! The LAPIC is virtual (in-kernel): IPIs are delivered when the ICR write completes, so
//! the guest does not poll the delivery status.

use crate::idt::{IrqSlot, SPURIOUS_VECTOR};

/// Physical (= virtual) base of the local APIC.
pub const BASE: usize = 0xFEE0_0000;
const ID: usize = 0x20;
const EOI: usize = 0xB0;
const SVR: usize = 0xF0;
const ICR_LOW: usize = 0x300;
const ICR_HIGH: usize = 0x310;
const LVT_TIMER: usize = 0x320;
const LVT_LINT0: usize = 0x350;
const TIMER_INITIAL: usize = 0x380;
const TIMER_CURRENT: usize = 0x390;
const TIMER_DIVIDE: usize = 0x3E0;

/// Address the interrupt stubs write to signal end of interrupt.
pub const EOI_ADDRESS: usize = BASE + EOI;

const SVR_ENABLE: u32 = 1 << 8;
const LVT_MASKED: u32 = 1 << 16;
/// Divide configuration "divide by 1".
const DIVIDE_BY_1: u32 = 0b1011;

const ICR_FIXED: u32 = 0b000 << 8;
const ICR_INIT: u32 = 0b101 << 8;
const ICR_STARTUP: u32 = 0b110 << 8;
const ICR_LEVEL_ASSERT: u32 = 1 << 14;

fn read(reg: usize) -> u32 {
    // SAFETY: BASE + reg is a LAPIC register, identity mapped and user accessible; reading
    // it has no side effects on the registers used here.
    unsafe { ((BASE + reg) as *const u32).read_volatile() }
}

fn write(reg: usize, value: u32) {
    // SAFETY: BASE + reg is a LAPIC register, identity mapped and user accessible; the
    // callers below give each write its architectural meaning.
    unsafe { ((BASE + reg) as *mut u32).write_volatile(value) }
}

/// Enables the calling CPU's LAPIC: spurious vector, LINT0 masked, timer one-shot (divide
/// by 1) on the `IrqSlot::TIMEOUT` vector, not running.
///
/// LINT0 is masked because VMMs wire it as ExtINT to the 8259 PIC on the BSP, and the PIC
/// (which the guest never programs) comes out of reset unmasked with vector base 0: a
/// device line below 16 (nightshift's virtio GSIs start at 5) would otherwise arrive as
/// an exception vector (IRQ 5 → #BR) while the CPU halts at CPL0 — a shutdown.
pub fn init() {
    write(SVR, SVR_ENABLE | u32::from(SPURIOUS_VECTOR));
    write(LVT_LINT0, LVT_MASKED);
    write(TIMER_DIVIDE, DIVIDE_BY_1);
    set_timer_slot(IrqSlot::TIMEOUT);
}

/// The calling CPU's APIC ID.
pub fn id() -> u32 {
    read(ID) >> 24
}

/// Makes the timer interrupt on `slot`'s vector (one-shot, unmasked).
pub fn set_timer_slot(slot: IrqSlot) {
    write(LVT_TIMER, u32::from(slot.vector()));
}

/// Starts the one-shot timer: an interrupt after `ticks` APIC-bus cycles. 0 stops it.
pub fn arm_timer(ticks: u32) {
    write(TIMER_INITIAL, ticks);
}

/// Runs the timer masked from `u32::MAX` for calibration; read with [`timer_current`].
pub fn start_free_running_timer() {
    write(LVT_TIMER, LVT_MASKED | u32::from(IrqSlot::TIMEOUT.vector()));
    write(TIMER_INITIAL, u32::MAX);
}

/// Stops a timer started with [`start_free_running_timer`] and unmasks the LVT entry.
pub fn stop_free_running_timer() {
    write(TIMER_INITIAL, 0);
    set_timer_slot(IrqSlot::TIMEOUT);
}

/// The timer's current count.
pub fn timer_current() -> u32 {
    read(TIMER_CURRENT)
}

fn send_ipi(apic_id: u32, low: u32) {
    write(ICR_HIGH, apic_id << 24);
    write(ICR_LOW, low);
}

/// Sends an interrupt on `slot`'s vector to `apic_id`.
pub fn send_irq(apic_id: u32, slot: IrqSlot) {
    send_ipi(
        apic_id,
        ICR_FIXED | ICR_LEVEL_ASSERT | u32::from(slot.vector()),
    );
}

/// Sends INIT (assert) to `apic_id`.
pub fn send_init(apic_id: u32) {
    send_ipi(apic_id, ICR_INIT | ICR_LEVEL_ASSERT);
}

/// Sends a STARTUP IPI: `apic_id` starts in real mode at `page << 12`.
pub fn send_startup(apic_id: u32, page: u8) {
    send_ipi(apic_id, ICR_STARTUP | ICR_LEVEL_ASSERT | u32::from(page));
}
