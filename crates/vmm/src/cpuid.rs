//! The CPUID a vCPU sees: KVM's supported set, with our topology, a timing
//! leaf, and MONITOR/MWAIT hidden unless asked for.
//!
//! MWAIT is hidden by default ("take away MWAIT completely", as the kvm-list
//! thread puts it): KVM here cannot pass MWAIT through (KVM_CAP_X86_DISABLE_EXITS
//! offers no MWAIT bit on these hosts), so a guest that used it would spin in
//! an emulated no-op loop instead of halting, and its idle time would be
//! invisible to the VMM. With `expose_mwait` the guest may choose MWAIT idle;
//! its cost is then exactly that: an idle vCPU that MWAITs keeps its host CPU
//! busy (KVM emulates MWAIT as a NOP here, so the guest's idle loop spins), no
//! HLT reaches KVM, the `blocking` statistic never reads 1, and nightshift
//! never finds that vCPU idle for device work.
//!
//! KVM's own paravirtual leaves (0x4000_0000 "KVMKVMKVM" and 0x4000_0001:
//! kvm-clock, async PF, PV EOI, steal time...) pass through as KVM reports
//! them; we only raise the leaf range to add the timing leaf.
//!
//! [`CpuFeature`]s can be hidden by option (`--hide-cpu-feature`). On PVM
//! hosts guest kernel mode is emulated and the emulator lacks `xsave`/`xrstor`
//! and `cmpxchg16b`: a stock kernel that sees XSAVE or CX16 dies on them early
//! (../shared/PLATFORM.md). Hiding them makes the kernel use FXSAVE and skip
//! CX16 users; Linux also drops what depends on XSAVE (AVX and the rest).
//! Measured on this project's PVM hosts (2026-12-01): KVM's supported leaf 1
//! ECX is a minimal set (0x81202000, no XSAVE or AVX), but `KVM_SET_CPUID2`
//! then stores a fuller leaf 1 (0xf7f81203 when XSAVE, AVX and CX16 were
//! cleared): PVM sets XSAVE and AVX again (guest user mode runs natively, with
//! the host's XCR0), while CX16 stays cleared. The guest sees exactly what
//! `KVM_GET_CPUID2` returns, at CPL0 and CPL3 alike (the test guest's `cpl0`
//! workload prints both). So on PVM hiding XSAVE takes a guest-side switch too
//! (Linux's `noxsave`); [`hidden_but_visible`] finds such features after the
//! table is set, and the VM warns about them. On hardware KVM the table holds.
//!
//! Under the userspace irqchip the guest sees only what `irqchip` emulates:
//! an xAPIC (no x2APIC, no TSC-deadline timer mode) and none of KVM's
//! paravirtual features that need KVM's own local APIC (PV unhalt, PV IPIs
//! and sched-yield, async page faults by interrupt, poll control, the
//! IOAPIC's extended destination ID) but PV EOI, which the userspace irqchip
//! serves itself where the host lets it see the MSR ([`crate::irqchip::pv_eoi`]).

use std::str::FromStr;

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

use crate::irqchip::pv_eoi::KVM_FEATURE_PV_EOI;
use serde::{Deserialize, Serialize};

/// Hypervisor timing leaf (as VMware and QEMU define it): EAX = TSC kHz,
/// EBX = local APIC bus kHz.
pub const TIMING_LEAF: u32 = 0x4000_0010;
/// KVM's local APIC timer counts at 1 GHz (APIC bus cycle of 1 ns).
pub const APIC_BUS_KHZ: u32 = 1_000_000;

const LEAF1_ECX_MONITOR: u32 = 1 << 3;
const LEAF1_ECX_X2APIC: u32 = 1 << 21;
const LEAF1_ECX_TSC_DEADLINE: u32 = 1 << 24;
/// KVM_CPUID_FEATURES.
const KVM_FEATURES_LEAF: u32 = 0x4000_0001;
/// KVM PV features that need the in-kernel local APIC (or, for PV_EOI, the
/// userspace irqchip's own): PV_EOI (6),
/// PV_UNHALT (7), PV_SEND_IPI (11), POLL_CONTROL (12), PV_SCHED_YIELD (13),
/// ASYNC_PF_INT (14), MSI_EXT_DEST_ID (15).
const KVM_FEATURES_NEED_KERNEL_APIC: u32 =
    (1 << 6) | (1 << 7) | (1 << 11) | (1 << 12) | (1 << 13) | (1 << 14) | (1 << 15);
const LEAF1_ECX_CX16: u32 = 1 << 13;
const LEAF1_ECX_XSAVE: u32 = 1 << 26;
const LEAF1_ECX_OSXSAVE: u32 = 1 << 27;
const LEAF1_ECX_AVX: u32 = 1 << 28;
const XSAVE_LEAF: u32 = 0xd;
const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
const LEAF1_EDX_HTT: u32 = 1 << 28;
const MWAIT_LEAF: u32 = 0x5;
const CACHE_LEAF: u32 = 0x4;
const TOPOLOGY_LEAF: u32 = 0xb;
const TOPOLOGY_V2_LEAF: u32 = 0x1f;
const HYPERVISOR_BASE_LEAF: u32 = 0x4000_0000;

/// What shapes one vCPU's CPUID.
#[derive(Clone, Copy, Debug)]
pub struct CpuidParams {
    /// This vCPU's index, also its APIC ID.
    pub vcpu: u8,
    /// vCPUs in the VM (all cores of one socket, one thread each).
    pub vcpus: u8,
    /// TSC frequency to advertise, if known.
    pub tsc_khz: Option<u32>,
    /// Leave MONITOR/MWAIT visible.
    pub expose_mwait: bool,
    /// The VMM emulates the APICs (`--irqchip user`): show only what it does.
    pub user_irqchip: bool,
    /// Under the userspace irqchip: it serves KVM's PV EOI (the host passes
    /// the MSR to it), so the feature stays visible.
    pub user_pv_eoi: bool,
    /// Features to hide.
    pub hidden: HiddenFeatures,
}

/// A CPU feature that can be hidden from the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CpuFeature {
    /// XSAVE (and OSXSAVE, AVX, leaf 0xD): the guest uses FXSAVE instead.
    Xsave,
    /// CMPXCHG16B.
    Cx16,
}

impl FromStr for CpuFeature {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "xsave" => Ok(CpuFeature::Xsave),
            "cx16" => Ok(CpuFeature::Cx16),
            _ => Err(format!(
                "unknown CPU feature {s:?} (expected xsave or cx16)"
            )),
        }
    }
}

/// Which [`CpuFeature`]s are hidden.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HiddenFeatures {
    /// Hide XSAVE.
    pub xsave: bool,
    /// Hide CMPXCHG16B.
    pub cx16: bool,
}

impl HiddenFeatures {
    /// The set named by `features`.
    pub fn from_list(features: &[CpuFeature]) -> Self {
        HiddenFeatures {
            xsave: features.contains(&CpuFeature::Xsave),
            cx16: features.contains(&CpuFeature::Cx16),
        }
    }
}

/// The features `hidden` asked to hide that `cpuid` (as KVM stored it, read
/// back with `KVM_GET_CPUID2`) still shows in leaf 1.
pub fn hidden_but_visible(cpuid: &CpuId, hidden: HiddenFeatures) -> Vec<CpuFeature> {
    let Some(leaf1) = cpuid
        .as_slice()
        .iter()
        .find(|e| e.function == 1 && e.index == 0)
    else {
        return Vec::new();
    };
    let mut visible = Vec::new();
    if hidden.xsave && leaf1.ecx & LEAF1_ECX_XSAVE != 0 {
        visible.push(CpuFeature::Xsave);
    }
    if hidden.cx16 && leaf1.ecx & LEAF1_ECX_CX16 != 0 {
        visible.push(CpuFeature::Cx16);
    }
    visible
}

/// Adjusts KVM's supported CPUID for one vCPU.
pub fn filter_cpuid(cpuid: &mut CpuId, p: &CpuidParams) {
    let apic_id = u32::from(p.vcpu);
    let vcpus = u32::from(p.vcpus);
    // Bits of APIC ID that number the cores.
    let core_bits = 32 - (vcpus.max(1) - 1).leading_zeros();

    for e in cpuid.as_mut_slice() {
        match e.function {
            1 => {
                e.ebx = (e.ebx & 0x0000_ffff) | (apic_id << 24) | (vcpus.min(255) << 16);
                e.ecx |= LEAF1_ECX_HYPERVISOR;
                if !p.expose_mwait {
                    e.ecx &= !LEAF1_ECX_MONITOR;
                }
                if vcpus > 1 {
                    e.edx |= LEAF1_EDX_HTT;
                }
                if p.user_irqchip {
                    e.ecx &= !(LEAF1_ECX_X2APIC | LEAF1_ECX_TSC_DEADLINE);
                }
                if p.hidden.xsave {
                    e.ecx &= !(LEAF1_ECX_XSAVE | LEAF1_ECX_OSXSAVE | LEAF1_ECX_AVX);
                }
                if p.hidden.cx16 {
                    e.ecx &= !LEAF1_ECX_CX16;
                }
            }
            XSAVE_LEAF if p.hidden.xsave => {
                (e.eax, e.ebx, e.ecx, e.edx) = (0, 0, 0, 0);
            }
            KVM_FEATURES_LEAF if p.user_irqchip => {
                let served = if p.user_pv_eoi { KVM_FEATURE_PV_EOI } else { 0 };
                e.eax &= !(KVM_FEATURES_NEED_KERNEL_APIC & !served);
            }
            MWAIT_LEAF if !p.expose_mwait => {
                (e.eax, e.ebx, e.ecx, e.edx) = (0, 0, 0, 0);
            }
            CACHE_LEAF if e.eax & 0x1f != 0 => {
                // Cores per package - 1; one thread shares each cache level per core.
                e.eax = (e.eax & 0x03ff_ffff) | ((vcpus - 1) << 26);
                e.eax &= !(0xfff << 14);
            }
            TOPOLOGY_LEAF | TOPOLOGY_V2_LEAF => {
                let (eax, ebx, ecx) = match e.index {
                    // SMT level: one thread per core.
                    0 => (0, 1, 1 << 8),
                    // Core level: all vCPUs in one package.
                    1 => (core_bits, vcpus, 2 << 8 | 1),
                    n => (0, 0, n),
                };
                (e.eax, e.ebx, e.ecx, e.edx) = (eax, ebx, ecx, apic_id);
            }
            HYPERVISOR_BASE_LEAF if p.tsc_khz.is_some() => e.eax = e.eax.max(TIMING_LEAF),
            _ => {}
        }
    }

    if let Some(tsc_khz) = p.tsc_khz {
        let timing = kvm_cpuid_entry2 {
            function: TIMING_LEAF,
            eax: tsc_khz,
            ebx: APIC_BUS_KHZ,
            ..Default::default()
        };
        // A full table keeps KVM's entries; the guest then calibrates instead.
        if cpuid.push(timing).is_err() {
            tracing::warn!("CPUID table full; guest will not see the timing leaf");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(cpuid: &CpuId, function: u32, index: u32) -> kvm_cpuid_entry2 {
        *cpuid
            .as_slice()
            .iter()
            .find(|e| e.function == function && e.index == index)
            .unwrap()
    }

    fn sample() -> CpuId {
        let entry = |function, index, eax, ecx| kvm_cpuid_entry2 {
            function,
            index,
            eax,
            ecx,
            ..Default::default()
        };
        CpuId::from_entries(&[
            entry(1, 0, 0x906ea, LEAF1_ECX_MONITOR | 1),
            entry(5, 0, 0x40, 0x3),
            entry(0xb, 0, 0, 0),
            entry(0xb, 1, 0, 0),
            entry(HYPERVISOR_BASE_LEAF, 0, 0x4000_0001, 0),
        ])
        .unwrap()
    }

    #[test]
    fn mwait_is_hidden_by_default_and_topology_is_ours() {
        let mut c = sample();
        let p = CpuidParams {
            vcpu: 2,
            vcpus: 4,
            tsc_khz: Some(2_000_000),
            expose_mwait: false,
            user_irqchip: false,
            user_pv_eoi: false,
            hidden: HiddenFeatures::default(),
        };
        filter_cpuid(&mut c, &p);
        let l1 = leaf(&c, 1, 0);
        assert_eq!(l1.ecx & LEAF1_ECX_MONITOR, 0);
        assert_ne!(l1.ecx & LEAF1_ECX_HYPERVISOR, 0);
        assert_eq!(l1.ebx >> 24, 2);
        assert_eq!(leaf(&c, 5, 0).eax, 0);
        let core = leaf(&c, 0xb, 1);
        assert_eq!((core.eax, core.ebx, core.edx), (2, 4, 2));
        assert_eq!(leaf(&c, HYPERVISOR_BASE_LEAF, 0).eax, TIMING_LEAF);
        assert_eq!(leaf(&c, TIMING_LEAF, 0).eax, 2_000_000);
    }

    #[test]
    fn the_user_irqchip_hides_what_it_does_not_emulate() {
        let x2apic_and_deadline = LEAF1_ECX_X2APIC | LEAF1_ECX_TSC_DEADLINE;
        let pv = (1 << 3) | KVM_FEATURES_NEED_KERNEL_APIC; // 3: PV_TLB_FLUSH stays
        let entries = |ecx, eax| {
            CpuId::from_entries(&[
                kvm_cpuid_entry2 {
                    function: 1,
                    ecx,
                    edx: 1 << 9,
                    ..Default::default()
                },
                kvm_cpuid_entry2 {
                    function: KVM_FEATURES_LEAF,
                    eax,
                    ..Default::default()
                },
            ])
            .unwrap()
        };
        for (user, pv_eoi) in [(false, false), (true, false), (true, true)] {
            let mut c = entries(x2apic_and_deadline, pv);
            let p = CpuidParams {
                vcpu: 0,
                vcpus: 1,
                tsc_khz: None,
                expose_mwait: false,
                user_irqchip: user,
                user_pv_eoi: pv_eoi,
                hidden: HiddenFeatures::default(),
            };
            filter_cpuid(&mut c, &p);
            let l1 = leaf(&c, 1, 0);
            assert_eq!(l1.edx & (1 << 9), 1 << 9, "the xAPIC stays");
            let kvm = leaf(&c, KVM_FEATURES_LEAF, 0).eax;
            if user {
                assert_eq!(l1.ecx & x2apic_and_deadline, 0);
                let served = if pv_eoi { KVM_FEATURE_PV_EOI } else { 0 };
                assert_eq!(kvm, (1 << 3) | served);
            } else {
                assert_eq!(l1.ecx & x2apic_and_deadline, x2apic_and_deadline);
                assert_eq!(kvm, pv);
            }
        }
    }

    #[test]
    fn mwait_can_be_exposed() {
        let mut c = sample();
        let p = CpuidParams {
            vcpu: 0,
            vcpus: 1,
            tsc_khz: None,
            expose_mwait: true,
            user_irqchip: false,
            user_pv_eoi: false,
            hidden: HiddenFeatures::default(),
        };
        filter_cpuid(&mut c, &p);
        assert_ne!(leaf(&c, 1, 0).ecx & LEAF1_ECX_MONITOR, 0);
        assert_eq!(leaf(&c, 5, 0).eax, 0x40);
        assert!(c.as_slice().iter().all(|e| e.function != TIMING_LEAF));
    }

    #[test]
    fn xsave_and_cx16_hide_on_request_and_kvm_leaves_pass_through() {
        let entry = |function, index, ebx, ecx, edx| kvm_cpuid_entry2 {
            function,
            index,
            ebx,
            ecx,
            edx,
            ..Default::default()
        };
        let kvm_sig = u32::from_le_bytes(*b"KVMK");
        let features = (1 << 3) | (1 << 24); // CLOCKSOURCE2, CLOCKSOURCE_STABLE_BIT
        let all = LEAF1_ECX_CX16 | LEAF1_ECX_XSAVE | LEAF1_ECX_OSXSAVE | LEAF1_ECX_AVX | 1;
        let table = || {
            CpuId::from_entries(&[
                entry(1, 0, 0, all, 0),
                entry(XSAVE_LEAF, 0, 0x240, 0x340, 0),
                entry(HYPERVISOR_BASE_LEAF, 0, kvm_sig, 0, 0),
                entry(HYPERVISOR_BASE_LEAF + 1, 0, 0, 0, 0),
            ])
            .unwrap()
        };
        let mut c = table();
        c.as_mut_slice()[3].eax = features;
        let mut p = CpuidParams {
            vcpu: 0,
            vcpus: 2,
            tsc_khz: None,
            expose_mwait: false,
            user_irqchip: false,
            user_pv_eoi: false,
            hidden: HiddenFeatures::default(),
        };
        filter_cpuid(&mut c, &p);
        assert_eq!(leaf(&c, 1, 0).ecx, all | LEAF1_ECX_HYPERVISOR);
        assert_eq!(leaf(&c, HYPERVISOR_BASE_LEAF, 0).ebx, kvm_sig);
        assert_eq!(leaf(&c, HYPERVISOR_BASE_LEAF + 1, 0).eax, features);

        let list: Vec<CpuFeature> = ["xsave", "cx16"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        p.hidden = HiddenFeatures::from_list(&list);
        let mut c = table();
        filter_cpuid(&mut c, &p);
        assert_eq!(leaf(&c, 1, 0).ecx, 1 | LEAF1_ECX_HYPERVISOR);
        assert_eq!(leaf(&c, XSAVE_LEAF, 0).ecx, 0);
        assert!("avx".parse::<CpuFeature>().is_err());
    }

    #[test]
    fn a_hidden_feature_the_stored_table_still_shows_is_found() {
        let stored = |ecx| {
            let leaf1 = kvm_cpuid_entry2 {
                function: 1,
                ecx,
                ..Default::default()
            };
            CpuId::from_entries(&[leaf1]).unwrap()
        };
        let both = HiddenFeatures {
            xsave: true,
            cx16: true,
        };
        // What PVM stores after XSAVE, AVX and CX16 were cleared.
        assert_eq!(
            hidden_but_visible(&stored(0xf7f8_1203), both),
            vec![CpuFeature::Xsave]
        );
        assert!(hidden_but_visible(&stored(0x8120_0000), both).is_empty());
        assert!(hidden_but_visible(&stored(0xf7f8_3203), HiddenFeatures::default()).is_empty());
    }
}
