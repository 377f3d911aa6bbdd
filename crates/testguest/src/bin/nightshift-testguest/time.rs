//! Timekeeping: TSC frequency and the LAPIC timer's tick rate.
//!
//! TSC frequency, first that applies: hypervisor CPUID leaf 0x4000_0010 (EAX = TSC kHz,
//! EBX = APIC bus kHz; QEMU and KVM-based VMMs may provide it), CPUID leaf 0x15 (crystal ×
//! ratio), else calibration of the TSC against the LAPIC timer. The LAPIC timer runs at
//! the APIC bus rate, 1 GHz on KVM unless leaf 0x4000_0010 says otherwise.

use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};

use crate::{apic, x86};

/// KVM's default APIC bus frequency (1 ns per cycle).
const KVM_APIC_KHZ: u64 = 1_000_000;
/// Calibration window.
const CALIBRATION_US: u64 = 2000;
/// Upper bound on LAPIC reads during calibration (a timer that does not count).
const CALIBRATION_MAX_READS: u32 = 1_000_000;
/// Assumed TSC rate if nothing else works.
const FALLBACK_TSC_KHZ: u64 = 1_000_000;

/// Where the TSC frequency came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TscSource {
    /// CPUID 0x4000_0010.
    Hypervisor,
    /// CPUID 0x15.
    Cpuid15,
    /// Measured against the LAPIC timer.
    Calibrated,
    /// Nothing worked; a guess.
    Assumed,
}

impl fmt::Display for TscSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TscSource::Hypervisor => "cpuid-40000010",
            TscSource::Cpuid15 => "cpuid-15",
            TscSource::Calibrated => "lapic",
            TscSource::Assumed => "assumed",
        })
    }
}

static TSC_KHZ: AtomicU64 = AtomicU64::new(FALLBACK_TSC_KHZ);
static APIC_KHZ: AtomicU64 = AtomicU64::new(KVM_APIC_KHZ);

/// Hypervisor timing leaf: (TSC kHz, APIC bus kHz), zeros if absent.
fn hypervisor_leaf() -> (u64, u64) {
    if x86::cpuid(0x4000_0000, 0).eax < 0x4000_0010 {
        return (0, 0);
    }
    let r = x86::cpuid(0x4000_0010, 0);
    (u64::from(r.eax), u64::from(r.ebx))
}

fn cpuid_15_khz() -> u64 {
    if x86::cpuid(0, 0).eax < 0x15 {
        return 0;
    }
    let r = x86::cpuid(0x15, 0);
    if r.eax == 0 || r.ebx == 0 || r.ecx == 0 {
        return 0;
    }
    u64::from(r.ecx) * u64::from(r.ebx) / u64::from(r.eax) / 1000
}

/// Reads per calibration sample; the one with the shortest MMIO read wins.
const SAMPLE_TRIES: u32 = 3;

/// (TSC, LAPIC current count) at one instant: the TSC is the midpoint of the MMIO read
/// (an exit), and of a few reads the quickest is used, so that a vCPU preempted during
/// one read does not skew the result.
fn sample() -> (u64, u32) {
    let mut best = (u64::MAX, 0, 0);
    for _ in 0..SAMPLE_TRIES {
        let before = x86::rdtsc();
        let count = apic::timer_current();
        let after = x86::rdtsc();
        if after - before < best.0 {
            best = (after - before, before + (after - before) / 2, count);
        }
    }
    (best.1, best.2)
}

fn calibrate(apic_khz: u64) -> Option<u64> {
    apic::start_free_running_timer();
    let (t0, c0) = sample();
    let window = apic_khz * CALIBRATION_US / 1000;
    let mut result = None;
    for _ in 0..CALIBRATION_MAX_READS {
        let (t1, c1) = sample();
        let elapsed = u64::from(c0.wrapping_sub(c1));
        if elapsed >= window {
            result = Some((t1 - t0) * apic_khz / elapsed);
            break;
        }
    }
    apic::stop_free_running_timer();
    result.filter(|&khz| khz > 0)
}

/// Determines the TSC and APIC bus rates (BSP, with its LAPIC initialised) and publishes
/// them for all CPUs.
pub fn init() -> (u64, TscSource) {
    let (hv_tsc, hv_apic) = hypervisor_leaf();
    let apic_khz = if hv_apic != 0 { hv_apic } else { KVM_APIC_KHZ };
    let (khz, source) = if hv_tsc != 0 {
        (hv_tsc, TscSource::Hypervisor)
    } else if let khz @ 1.. = cpuid_15_khz() {
        (khz, TscSource::Cpuid15)
    } else if let Some(khz) = calibrate(apic_khz) {
        (khz, TscSource::Calibrated)
    } else {
        (FALLBACK_TSC_KHZ, TscSource::Assumed)
    };
    TSC_KHZ.store(khz, Ordering::Relaxed);
    APIC_KHZ.store(apic_khz, Ordering::Relaxed);
    (khz, source)
}

/// TSC ticks per millisecond.
pub fn tsc_khz() -> u64 {
    TSC_KHZ.load(Ordering::Relaxed)
}

/// TSC ticks in `us` microseconds.
pub fn us_to_tsc(us: u64) -> u64 {
    us.saturating_mul(tsc_khz()) / 1000
}

/// Microseconds in `ticks` TSC ticks.
pub fn tsc_to_us(ticks: u64) -> u64 {
    (u128::from(ticks) * 1000 / u128::from(tsc_khz().max(1))) as u64
}

/// Nanoseconds in `ticks` TSC ticks.
pub fn tsc_to_ns(ticks: u64) -> u64 {
    (u128::from(ticks) * 1_000_000 / u128::from(tsc_khz().max(1))) as u64
}

/// LAPIC timer ticks in `ticks` TSC ticks, clamped to `1..=u32::MAX`.
pub fn tsc_to_apic(ticks: u64) -> u32 {
    let apic = u128::from(ticks) * u128::from(APIC_KHZ.load(Ordering::Relaxed))
        / u128::from(tsc_khz().max(1));
    apic.clamp(1, u128::from(u32::MAX)) as u32
}
