//! The workloads, run at CPL3 on every CPU; each prints its own `result` line.

use testguest::cmdline::{Config, Workload};
use testguest::stats::Histogram;

use crate::idt::IrqSlot;
use crate::{apic, blk, net_workload, println, rng, service, time, wait, x86};

/// Loop iterations between two TSC reads in `compute`.
pub const COMPUTE_CHUNK: u64 = 1024;
/// Iterations of the two-instruction CPL0 loop per `service::spin` call in `cpl0`.
const SPIN_ITERATIONS: u64 = 500;

/// Runs CPU `cpu`'s workload and prints its `result` line. The workloads that
/// do not run on every CPU (`exit`, `ud`, `triplefault`) are the BSP's alone (`bsp_main`).
pub fn run(cpu: usize, config: &Config) {
    match config.workloads.for_cpu(cpu) {
        Workload::Compute => compute(cpu, config.ms),
        Workload::Idle => idle(cpu, config.ms, config.tick_us),
        Workload::Cpl0 => cpl0(cpu, config.ms),
        Workload::Blk => blk::run(cpu, config),
        Workload::Net => net_workload::run(cpu, config),
        Workload::Rng => rng::run(cpu, config),
        Workload::Exit
        | Workload::Ud
        | Workload::TripleFault
        | Workload::PowerOff
        | Workload::Reset
        | Workload::SerialFlood => {}
    }
}

/// One xorshift64 step: a dependent chain of cheap integer operations.
#[inline(always)]
fn xorshift(mut x: u64) -> u64 {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}

/// One chunk of the compute loop: `COMPUTE_CHUNK` dependent xorshift steps.
#[inline(always)]
pub fn compute_chunk(mut x: u64) -> u64 {
    for _ in 0..COMPUTE_CHUNK {
        x = xorshift(x);
    }
    x
}

/// Counts loop iterations for `ms` milliseconds of TSC time.
fn compute(cpu: usize, ms: u64) {
    let end = x86::rdtsc() + time::us_to_tsc(ms * 1000);
    let mut x = 0x9e37_79b9_7f4a_7c15 ^ cpu as u64;
    let mut iters = 0u64;
    loop {
        x = compute_chunk(x);
        iters += COMPUTE_CHUNK;
        if x86::rdtsc() >= end {
            break;
        }
    }
    core::hint::black_box(x);
    println!(
        "result cpu={cpu} workload=compute ms={ms} iters={iters} iters_per_ms={}",
        iters / ms
    );
}

/// Sleeps in `tick_us` steps, `ms * 1000 / tick_us` times: arms the one-shot LAPIC timer
/// for `tick_us` from now, halts until its interrupt and records how late the wake-up was
/// against the programmed deadline.
fn idle(cpu: usize, ms: u64, tick_us: u64) {
    let expected = ms * 1000 / tick_us;
    let period = time::us_to_tsc(tick_us);
    let mut lateness = Histogram::new();
    apic::set_timer_slot(IrqSlot::TICK);
    let first = wait::irq_count(IrqSlot::TICK);
    let wakeups0 = wait::wakeups();
    let mut seen = first;
    for _ in 0..expected {
        let deadline = x86::rdtsc() + period;
        apic::arm_timer(time::tsc_to_apic(period));
        seen = wait::wait_irq(IrqSlot::TICK, seen);
        lateness.record(time::tsc_to_us(x86::rdtsc().saturating_sub(deadline)));
    }
    let wakeups = wait::wakeups() - wakeups0;
    apic::set_timer_slot(IrqSlot::TIMEOUT);
    println!(
        "result cpu={cpu} workload=idle ms={ms} ticks={} expected={expected} wake_us_p50={} wake_us_p99={} wake_us_max={} wakeups={wakeups}",
        seen - first,
        lateness.percentile(50),
        lateness.percentile(99),
        lateness.max(),
    );
}

/// Measures, for `ms` milliseconds, the round trip of a service call that does nothing
/// (CPL3 → CPL0 → CPL3, 4 CPL0 instructions) and, from calls that also run a CPL0 loop,
/// the cost of one CPL0 instruction.
fn cpl0(cpu: usize, ms: u64) {
    let half = time::us_to_tsc(ms * 500);
    let t0 = x86::rdtsc();
    let mut calls = 0u64;
    while x86::rdtsc() - t0 < half || calls == 0 {
        service::nop();
        calls += 1;
    }
    let t1 = x86::rdtsc();
    let mut spins = 0u64;
    while x86::rdtsc() - t1 < half || spins == 0 {
        service::spin(SPIN_ITERATIONS);
        spins += 1;
    }
    let t2 = x86::rdtsc();
    let call_ns = time::tsc_to_ns((t1 - t0) / calls);
    let spin_ns = time::tsc_to_ns((t2 - t1) / spins);
    let insn_ns = spin_ns.saturating_sub(call_ns) / (2 * SPIN_ITERATIONS);
    // What each privilege level is told of XSAVE (leaf 1 ECX bit 26) and AVX2/AVX-512F
    // (leaf 7 EBX bits 5 and 16): a VMM's CPUID table answers CPL0; a platform may answer
    // CPL3 itself.
    let (_, _, ecx0, _) = service::cpuid_cpl0(1, 0);
    let (_, ebx0, _, _) = service::cpuid_cpl0(7, 0);
    let ecx3 = x86::cpuid(1, 0).ecx;
    let ebx3 = x86::cpuid(7, 0).ebx;
    println!(
        "result cpu={cpu} workload=cpl0 ms={ms} calls={calls} call_ns={call_ns} insn_ns={insn_ns} \
         cpuid1_ecx_cpl0={ecx0:#x} cpuid1_ecx_cpl3={ecx3:#x} cpuid7_ebx_cpl0={ebx0:#x} cpuid7_ebx_cpl3={ebx3:#x}"
    );
}
