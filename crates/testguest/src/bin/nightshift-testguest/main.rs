//! nightshift-testguest: a tiny PVH guest whose CPL0 code is a few hundred instructions of
//! assembly and whose work runs at CPL3. See docs/guest-abi.md for the contract with the
//! VMM and crates/testguest/README.md for the layout.
//!
//! Flow: `boot` (CPL0: PVH entry, long mode, per-CPU TSS/stacks) → [`user_entry`] at CPL3
//! on every CPU. The BSP then fills the IDT, reads the command line and ACPI tables, starts
//! the APs (`smp`), prints the banner and runs the workload on all CPUs; it prints `done`
//! when every CPU has reported and exits through the exit port.

#![no_std]
#![no_main]

mod apic;
mod blk;
mod boot;
mod cpu;
mod dma;
mod gdt;
mod idt;
mod interrupts;
mod ioapic;
mod machine;
mod mem;
mod net_hostile;
mod net_phy;
mod net_services;
mod net_workload;
mod physmem;
mod pv_eoi;
mod rng;
mod serial;
mod service;
mod smp;
mod stack;
mod sync;
mod time;
mod vdblk;
mod vdevices;
mod vdlog;
mod virtio_mmio;
mod wait;
mod workloads;
mod x86;

use testguest::acpi::{self, CpuList, IoApicList};
use testguest::cmdline::{Config, Workload};
use testguest::start_info::StartInfo;

use core::sync::atomic::Ordering;

use crate::physmem::Identity;
use crate::sync::Published;

/// Exit status after a Rust panic.
const PANIC_STATUS: u32 = 0xF0;
/// Longest command line read.
const CMDLINE_MAX: usize = 2048;

/// The configuration, published by the BSP before it releases the APs.
static CONFIG: Published<Config> = Published::new();

/// First Rust code on every CPU, entered at CPL3 by `boot::cpu_start` with the CPU index
/// and (BSP only) the physical address of `hvm_start_info`.
extern "C" fn user_entry(cpu: usize, start_info: u64) -> ! {
    if cpu == 0 {
        bsp_main(start_info)
    } else {
        ap_main(cpu)
    }
}

fn bsp_main(start_info_paddr: u64) -> ! {
    // SAFETY: first code on the BSP at CPL3; the APs are not started and nothing in .bss
    // has been used yet.
    unsafe { mem::zero_bss() };
    idt::init();
    apic::init();

    let info = StartInfo::read(&Identity, start_info_paddr)
        .map_err(|e| warn!("start info at {start_info_paddr:#x}: {e:?}"))
        .ok();
    let mut cmdline_buf = [0u8; CMDLINE_MAX];
    let (cmdline, cut) = info.map_or(("", false), |i| i.cmdline(&Identity, &mut cmdline_buf));
    if cut {
        warn!(
            "cmdline: using only the first {} bytes (too long or not UTF-8)",
            cmdline.len()
        );
    }
    let config = Config::parse(cmdline, |w| warn!("{w}"));
    let pv_eoi = pv_eoi::enable(config.pv_eoi);

    let (tsc_khz, tsc_source) = time::init();
    let rsdp = acpi::find_rsdp(&Identity, info.as_ref().map_or(0, |i| i.rsdp_paddr));
    let (cpus, ioapics) = find_cpus(rsdp);
    let smp_start = x86::rdtsc();
    let online = smp::start_aps(
        info.as_ref(),
        &cpus,
        config.cpus.unwrap_or(cpu::MAX_CPUS),
        apic::id(),
        |ap| {
            if ap.us.is_none() {
                warn!(
                    "smp: CPU with APIC ID {} did not start (reached the real-mode trampoline: {})",
                    ap.apic_id,
                    if ap.reached_trampoline { "yes" } else { "no" }
                );
            }
        },
    );
    let smp_us = time::tsc_to_us(x86::rdtsc() - smp_start);

    let Ok(config) = CONFIG.publish(config) else {
        panic!("configuration published twice");
    };
    let boot_us = time::tsc_to_us(x86::rdtsc() - boot::ENTRY_TSC.load(Ordering::Relaxed));
    println!(
        "nightshift-testguest {} cpus={online} tsc_khz={tsc_khz} tsc_source={tsc_source} boot_us={boot_us} smp_us={smp_us} pv_eoi={}",
        env!("CARGO_PKG_VERSION"),
        u8::from(pv_eoi)
    );
    boot::milestone(boot::MILESTONE_BANNER);

    match config.workloads.for_cpu(0) {
        Workload::Exit => {}
        Workload::Ud => service::ud(),
        Workload::TripleFault => service::triple_fault(),
        Workload::PowerOff => machine::power_off(),
        Workload::Reset => machine::reset(),
        Workload::SerialFlood => machine::serial_flood(),
        Workload::Compute
        | Workload::Idle
        | Workload::Cpl0
        | Workload::Blk
        | Workload::Net
        | Workload::Rng => {
            blk::setup(config, online, &ioapics, info.as_ref(), rsdp);
            vdevices::setup(config, online, &ioapics, info.as_ref(), rsdp);
            smp::release_aps(online);
            workloads::run(0, config);
            smp::wait_for_aps(online - 1);
        }
    }
    println!("done status={}", config.status);
    service::exit(config.status)
}

fn ap_main(cpu: usize) -> ! {
    smp::ap_online(cpu);
    smp::wait_for_release();
    // Published before the release.
    if let Some(config) = CONFIG.get() {
        pv_eoi::enable(config.pv_eoi);
        workloads::run(cpu, config);
    }
    smp::ap_done();
    service::stop()
}

/// The CPUs listed in the MADT (an empty list, i.e. one CPU, if there is none) and the
/// I/O APICs (empty if none: the default one is assumed).
fn find_cpus(rsdp: Option<u64>) -> (CpuList, IoApicList) {
    let Some(rsdp) = rsdp else {
        warn!("acpi: no RSDP; running on the BSP only");
        return (CpuList::new(), IoApicList::default());
    };
    let ioapics = acpi::madt_ioapics(&Identity, rsdp).unwrap_or_default();
    let cpus = match acpi::madt_cpus(&Identity, rsdp) {
        Ok(cpus) => {
            if cpus.ignored > 0 {
                warn!(
                    "acpi: ignoring {} CPUs beyond {}",
                    cpus.ignored,
                    cpu::MAX_CPUS
                );
            }
            cpus
        }
        Err(e) => {
            warn!("acpi: {e}; running on the BSP only");
            CpuList::new()
        }
    };
    (cpus, ioapics)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    let cpu = cpu::current();
    serial::break_lock(cpu);
    match info.location() {
        Some(at) => println!("panic cpu={cpu} at {at}: {}", info.message()),
        None => println!("panic cpu={cpu}: {}", info.message()),
    }
    service::exit(PANIC_STATUS)
}
