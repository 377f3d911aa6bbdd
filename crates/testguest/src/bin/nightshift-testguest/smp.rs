//! Application processors: INIT/SIPI/SIPI into a real-mode trampoline, then the shared
//! protected-mode → long-mode path (`boot::ap_entry32`).
//!
//! Everything the BSP does here runs at CPL3: the trampoline is copied with ordinary
//! stores (low memory is user-mapped) and the IPIs are LAPIC MMIO writes. The APs' own
//! CPL0 path is the 9-instruction trampoline plus the shared long-mode entry. Waiting on
//! either side halts the CPU (`wait`) rather than spinning.
//!
//! APs are started one at a time; each learns its CPU index from [`AP_BOOT_CPU`].

use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use testguest::acpi::CpuList;
use testguest::start_info::StartInfo;

use crate::cpu::MAX_CPUS;
use crate::physmem::Identity;
use crate::{apic, gdt, time, wait, warn, x86};

/// Where the trampoline is copied (SIPI vector 0x08).
pub const TRAMPOLINE_ADDR: u64 = 0x8000;
const TRAMPOLINE_PAGE: u8 = (TRAMPOLINE_ADDR >> 12) as u8;
/// How long an AP may take to reach the real-mode trampoline after the first SIPI before
/// the second SIPI is sent.
const SIPI_RETRY_US: u64 = 10_000;
/// How long an AP may take from the SIPI to CPL3 (real mode and CPL0 are emulated on PVM).
const AP_TIMEOUT_US: u64 = 2_000_000;
/// `AP_BOOT_CPU` value that parks a late AP (`ap_entry64` halts it).
const PARK: u64 = u64::MAX;

/// CPU index for the AP being started, read by `ap_entry64` (CPL0).
pub static AP_BOOT_CPU: AtomicU64 = AtomicU64::new(PARK);

/// Per CPU: reached CPL3.
static ONLINE: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];
/// Per CPU: TSC when it reached CPL3.
static ONLINE_TSC: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
/// Per CPU: APIC ID.
static APIC_IDS: [AtomicU32; MAX_CPUS] = [const { AtomicU32::new(0) }; MAX_CPUS];
/// Set by the BSP when the APs may start their workload.
static GO: AtomicBool = AtomicBool::new(false);
/// CPUs (APs) that have finished their workload.
static DONE: AtomicUsize = AtomicUsize::new(0);

core::arch::global_asm!(
    ".pushsection .rodata.trampoline, \"a\"",
    ".code16",
    ".globl ap_trampoline_start",
    "ap_trampoline_start:",
    "    cli",
    "    xor %ax, %ax",
    "    mov %ax, %ds",
    "    movw $1, {base} + (ap_trampoline_arrived - ap_trampoline_start)",
    "    lgdtl {base} + (ap_trampoline_gdtr - ap_trampoline_start)",
    "    mov %cr0, %eax",
    "    or $1, %eax",
    "    mov %eax, %cr0",
    "    ljmpl ${code32}, $ap_entry32",
    ".balign 8",
    "ap_trampoline_gdtr:",
    "    .word {gdt_limit}",
    "    .long gdt",
    ".globl ap_trampoline_arrived",
    "ap_trampoline_arrived:",
    "    .word 0",
    ".globl ap_trampoline_end",
    "ap_trampoline_end:",
    ".code64",
    ".popsection",
    base = const TRAMPOLINE_ADDR,
    code32 = const gdt::CODE32,
    gdt_limit = const gdt::GDT_SIZE - 1,
    options(att_syntax),
);

extern "C" {
    static ap_trampoline_start: [u8; 0];
    static ap_trampoline_arrived: [u8; 0];
    static ap_trampoline_end: [u8; 0];
}

/// What happened to one AP.
pub struct ApStart {
    pub apic_id: u32,
    /// SIPI to CPL3, µs; `None` if it did not come up.
    pub us: Option<u64>,
    /// Whether it reached the real-mode trampoline.
    pub reached_trampoline: bool,
}

/// Volatile access to the trampoline's "arrived" flag at its copied location.
fn arrived_flag() -> *mut u16 {
    let start = (&raw const ap_trampoline_start) as u64;
    let arrived = (&raw const ap_trampoline_arrived) as u64;
    (TRAMPOLINE_ADDR + (arrived - start)) as *mut u16
}

fn copy_trampoline(info: Option<&StartInfo>) -> bool {
    let start = (&raw const ap_trampoline_start).cast::<u8>();
    let end = (&raw const ap_trampoline_end).cast::<u8>();
    let len = end as usize - start as usize;
    let dest_end = TRAMPOLINE_ADDR + len as u64;
    if let Some(false) = info.and_then(|i| i.is_ram(&Identity, TRAMPOLINE_ADDR, dest_end)) {
        warn!("smp: {TRAMPOLINE_ADDR:#x}..{dest_end:#x} is not RAM; not starting APs");
        return false;
    }
    // SAFETY: the destination is RAM below 1 MiB that the guest ABI reserves for the
    // trampoline (nothing else of ours lives there), identity mapped and user writable;
    // source and destination do not overlap (the image is above 1 MiB).
    unsafe { core::ptr::copy_nonoverlapping(start, TRAMPOLINE_ADDR as *mut u8, len) };
    true
}

/// Starts the APs of `cpus` (all but `bsp_apic_id`) until `limit` CPUs are online in
/// total, calling `report` for each attempt. Stops at the first AP that does not come up
/// (a late AP is parked). Returns the number of CPUs online, BSP included.
pub fn start_aps(
    info: Option<&StartInfo>,
    cpus: &CpuList,
    limit: usize,
    bsp_apic_id: u32,
    mut report: impl FnMut(&ApStart),
) -> usize {
    APIC_IDS[0].store(bsp_apic_id, Ordering::Relaxed);
    ONLINE[0].store(true, Ordering::Relaxed);
    let limit = limit.min(MAX_CPUS);
    let mut online = 1;
    let mut aps = cpus
        .apic_ids()
        .iter()
        .copied()
        .filter(|&id| id != bsp_apic_id);
    if limit <= 1 || cpus.apic_ids().len() <= 1 || !copy_trampoline(info) {
        return online;
    }
    let flag = arrived_flag();
    while online < limit {
        let Some(apic_id) = aps.next() else { break };
        let index = online;
        AP_BOOT_CPU.store(index as u64, Ordering::Release);
        // SAFETY: the flag lies in the trampoline copy made above; no AP is running it.
        unsafe { flag.write_volatile(0) };
        // SAFETY: as above; the AP writes it in real mode.
        let reached = || unsafe { flag.read_volatile() } != 0;

        let online_flag = || ONLINE[index].load(Ordering::Acquire);
        let t0 = x86::rdtsc();
        apic::send_init(apic_id);
        apic::send_startup(apic_id, TRAMPOLINE_PAGE);
        // The AP wakes the BSP when it is online; it cannot tell when it reaches real mode.
        if !wait::halt_until(Some(t0 + time::us_to_tsc(SIPI_RETRY_US)), || {
            reached() || online_flag()
        }) {
            apic::send_startup(apic_id, TRAMPOLINE_PAGE);
        }
        let up = wait::halt_until(Some(t0 + time::us_to_tsc(AP_TIMEOUT_US)), online_flag);
        let start = ApStart {
            apic_id,
            us: up.then(|| time::tsc_to_us(ONLINE_TSC[index].load(Ordering::Relaxed) - t0)),
            reached_trampoline: reached(),
        };
        report(&start);
        if !up {
            AP_BOOT_CPU.store(PARK, Ordering::Release);
            break;
        }
        APIC_IDS[index].store(apic_id, Ordering::Relaxed);
        online += 1;
    }
    online
}

/// First thing an AP does at CPL3: bring up its LAPIC and tell the BSP it is online.
pub fn ap_online(cpu: usize) {
    apic::init();
    ONLINE_TSC[cpu].store(x86::rdtsc(), Ordering::Relaxed);
    ONLINE[cpu].store(true, Ordering::Release);
    wait::wake(bsp_apic_id());
}

fn bsp_apic_id() -> u32 {
    apic_id(0)
}

/// The APIC ID of online CPU `cpu`.
pub fn apic_id(cpu: usize) -> u32 {
    APIC_IDS[cpu.min(MAX_CPUS - 1)].load(Ordering::Relaxed)
}

/// Lets the `online` CPUs' APs start their workload.
pub fn release_aps(online: usize) {
    GO.store(true, Ordering::Release);
    for cpu in 1..online {
        wait::wake(apic_id(cpu));
    }
}

/// Halts until the BSP calls [`release_aps`].
pub fn wait_for_release() {
    wait::halt_until(None, || GO.load(Ordering::Acquire));
}

/// An AP has finished its workload.
pub fn ap_done() {
    DONE.fetch_add(1, Ordering::Release);
    wait::wake(bsp_apic_id());
}

/// Halts until `aps` APs have called [`ap_done`].
pub fn wait_for_aps(aps: usize) {
    wait::halt_until(None, || DONE.load(Ordering::Acquire) >= aps);
}
