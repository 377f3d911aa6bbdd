//! KVM's paravirtual EOI: with it, ending an interrupt is a bit cleared in this CPU's
//! memory instead of a write to the LAPIC's EOI register, which exits to the hypervisor
//! (under a userspace irqchip, to the VMM process) on every interrupt.
//!
//! The hypervisor offers it in CPUID leaf 0x4000_0001 (`KVM_FEATURE_PV_EOI`, behind the
//! "KVMKVMKVM" signature); each CPU then writes `MSR_KVM_PV_EOI_EN` with the physical address
//! of its area (`KernelCpu::pv_eoi`). When the hypervisor sets bit 0 there, the interrupt
//! stubs clear it and skip the register write (`interrupts.rs`). Linux does the same
//! (`kvm_guest_apic_eoi_write`); `pv_eoi=0` on the command line keeps the register writes,
//! for comparisons.

use crate::service;

/// `MSR_KVM_PV_EOI_EN`.
pub const MSR_KVM_PV_EOI_EN: u32 = 0x4b56_4d04;
const KVM_SIGNATURE_LEAF: u32 = 0x4000_0000;
const KVM_FEATURES_LEAF: u32 = 0x4000_0001;
const KVM_FEATURE_PV_EOI: u32 = 1 << 6;

/// Whether the hypervisor offers PV EOI, as CPL0 sees CPUID (the leaves a VMM sets).
pub fn offered() -> bool {
    let (max, b, c, d) = service::cpuid_cpl0(KVM_SIGNATURE_LEAF, 0);
    let kvm = [b, c, d] == [0x4b4d_564b, 0x564b_4d56, 0x0000_004d]; // "KVMKVMKVM\0\0\0"
    kvm && max >= KVM_FEATURES_LEAF
        && service::cpuid_cpl0(KVM_FEATURES_LEAF, 0).0 & KVM_FEATURE_PV_EOI != 0
}

/// Enables PV EOI on the calling CPU if `wanted` and offered; returns whether it did.
pub fn enable(wanted: bool) -> bool {
    let on = wanted && offered();
    if on {
        service::enable_pv_eoi();
    }
    on
}
