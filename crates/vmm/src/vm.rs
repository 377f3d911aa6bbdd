//! A VM: build it from a [`VmConfig`], run it until it ends, report how it went.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use idlework::{Engine, Policy, Shutdown};
use kvm_bindings::{
    kvm_enable_cap, kvm_userspace_memory_region, KVM_CAP_HALT_POLL, KVM_CAP_X86_USER_SPACE_MSR,
    KVM_MAX_CPUID_ENTRIES,
};
use kvm_ioctls::{
    Kvm, MsrExitReason, MsrFilterDefaultAction, MsrFilterRange, MsrFilterRangeFlags, VcpuFd, VmFd,
};
use serde::Serialize;
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryRegion};

use crate::boot::{self, BootConfig, BootError, BootSummary, EntryState, KernelImage};
use crate::bus::Bus;
use crate::config::{ConfigError, ConsoleIn, DiskConfig, VmConfig, WorkConfig};
use crate::cpuid::{filter_cpuid, hidden_but_visible, CpuidParams, HiddenFeatures};
use crate::device_manager::{DeviceError, DeviceManager, DeviceReport, Devices, Slot};
use crate::devices::console::ConsoleStatsHandle;
use crate::devices::{
    power, AcpiPower, BootMilestones, Console, ConsoleInput, ConsoleStats, DebugPort, Serial,
    COM1_BASE, COM1_GSI, COM1_LEN, DEBUG_PORT_BASE, DEBUG_PORT_LEN, I8042,
};
use crate::exit::{ExitReason, ExitSignal};
use crate::irqchip::delivery::IoApicMmio;
use crate::irqchip::ioapic::IOAPIC_SIZE;
use crate::irqchip::pic::{Elcr, Pic8259, ELCR_BASE, ELCR_LEN, PIC_LEN, PIC_MASTER, PIC_SLAVE};
use crate::irqchip::pv_eoi::MSR_KVM_PV_EOI_EN;
use crate::irqchip::{IrqChipKind, IrqLine, UserIrqChip};
use crate::memory::{self, GuestMemory, IOAPIC_START, KVM_IDENTITY_MAP_ADDRESS, KVM_TSS_ADDRESS};
use crate::output_file::{open_output, OutputError};
use crate::rss::{ProcFiles, RssReport};
use crate::seccomp::{SeccompError, ThreadClass};
use crate::vcpu::{regs, Request, Vcpu, VcpuContext, VcpuControl, VcpuHandle, VcpuStats};
use crate::virtio::block::{
    Block, BlockCounters, BlockStats, Disk, Scrub, ScrubCounters, ScrubStats, Transform,
};
use crate::virtio::net::{Net, NetError};
use crate::virtio::notifier::{Notifier, NotifierBuilder};
use crate::virtio::rng::Rng;
use crate::vmm_thread::{Binding, Fault, ThreadPolicy};

pub use crate::device_manager::FIRST_VIRTIO_GSI;
/// Key of the benchmark disk transform: a cost model, not data protection.
const XTS_KEY: [u8; 64] = [0x5a; 64];
/// The engine's thread names start with this.
const WORKER_PREFIX: &str = "ns-work";
/// How long the VM's end waits for its vCPU threads to stop before it gives
/// them up (a thread parked by a seccomp trap, or stuck, never stops).
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Building a VM failed.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// The configuration cannot describe a VM.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A KVM ioctl failed.
    #[error("{what}: {err}")]
    Kvm {
        /// What we were doing.
        what: &'static str,
        /// The ioctl's error.
        err: kvm_ioctls::Error,
    },
    /// Guest memory could not be allocated.
    #[error("allocating {0} MiB of guest memory: {1}")]
    Memory(u64, String),
    /// The kernel or boot structures could not be set up.
    #[error(transparent)]
    Boot(#[from] BootError),
    /// A virtio device could not be placed.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// A net device could not be set up.
    #[error(transparent)]
    Net(#[from] NetError),
    /// A host resource (thread, eventfd, file) could not be had.
    #[error("{0}: {1}")]
    Host(&'static str, std::io::Error),
    /// An output file was refused or could not be opened.
    #[error(transparent)]
    Output(#[from] OutputError),
    /// A seccomp filter could not be set up.
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
    /// The test-only fault seam was given something it does not know.
    #[error("{0}")]
    Fault(String),
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |err| VmError::Kvm { what, err }
}

/// How a VM run went.
#[derive(Debug, Serialize)]
pub struct RunReport {
    /// Why it ended.
    #[serde(serialize_with = "display")]
    pub exit: ExitReason,
    /// Who emulated the interrupt controllers.
    pub irqchip: IrqChipKind,
    /// The process exit status that goes with it.
    pub exit_code: i32,
    /// VMM start → guest's first instruction (ns), if the guest reported it.
    pub first_instruction_ns: Option<u64>,
    /// VMM start → guest banner (ns), if the guest reported it.
    pub banner_ns: Option<u64>,
    /// VMM start → the VM ended (ns).
    pub end_ns: u64,
    /// The VMM's memory apart from guest RAM.
    pub rss: Option<RssReport>,
    /// Where device work ran (idlework's statistics).
    pub work: idlework::Stats,
    /// Per-disk request counters.
    pub disks: Vec<BlockStats>,
    /// Every virtio device: its slot and counters.
    pub devices: Vec<DeviceReport>,
    /// Per-disk background scrub progress when the guest ended (disks without
    /// a scrub report zeros).
    pub scrubs: Vec<ScrubStats>,
    /// Per-vCPU exit counters.
    pub vcpus: Vec<VcpuStats>,
    /// Guest accesses that hit no device.
    pub unhandled_io: u64,
    /// How the guest was booted: protocol, memory map, initrd placement.
    pub boot: BootSummary,
    /// What became of the guest's console output.
    pub console: ConsoleStats,
    /// Guest-caused log lines, per site: events, and how many were not
    /// logged (rate limit, see [`crate::guest_log`]).
    pub guest_logs: Vec<crate::guest_log::SiteCount>,
}

fn display<S: serde::Serializer>(v: &ExitReason, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// A built VM, ready to run.
pub struct Vm {
    config: VmConfig,
    started: Instant,
    vm_fd: VmFd,
    mem: Arc<GuestMemory>,
    vcpu_fds: Vec<VcpuFd>,
    /// The userspace irqchip (`--irqchip user`), or None for KVM's.
    irqchip: Option<Arc<UserIrqChip>>,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    exit: Arc<ExitSignal>,
    milestones: Arc<BootMilestones>,
    engine: Arc<Engine>,
    notifier: Option<NotifierBuilder>,
    devices: Devices,
    disks: Vec<Arc<BlockCounters>>,
    scrubs: Vec<PendingScrub>,
    scrub_stop: Arc<AtomicBool>,
    boot: BootSummary,
    console: LegacyConsole,
    threads: ThreadPolicy,
    proc_files: Option<ProcFiles>,
}

/// The serial console's two directions.
struct LegacyConsole {
    output: ConsoleStatsHandle,
    /// Dropped with the VM: stops the reader, restores the terminal.
    _input: Option<ConsoleInput>,
}

/// A scrub to start with the VM.
struct PendingScrub {
    disk: Arc<Disk>,
    passes: u64,
    counters: Arc<ScrubCounters>,
}

impl Vm {
    /// Builds the VM `config` describes: memory, irqchip, devices, vCPUs, and
    /// `kernel` loaded with its boot information. `started` is when the VMM
    /// started, for boot timings.
    pub fn new(config: VmConfig, kernel: KernelImage<'_>, started: Instant) -> Result<Vm, VmError> {
        config.validate()?;
        let fault = Fault::from_env().map_err(VmError::Fault)?;
        let kvm = Kvm::new().map_err(kvm_err("opening /dev/kvm"))?;
        let vm_fd = kvm.create_vm().map_err(kvm_err("creating the VM"))?;
        let mem = memory::create_guest_memory(config.mem_size())
            .map_err(|e| VmError::Memory(config.mem_mib, e.to_string()))?;
        register_memory(&vm_fd, &mem)?;

        vm_fd
            .set_identity_map_address(KVM_IDENTITY_MAP_ADDRESS)
            .map_err(kvm_err("setting the identity map address"))?;
        vm_fd
            .set_tss_address(KVM_TSS_ADDRESS)
            .map_err(kvm_err("setting the TSS address"))?;
        let irqchip = create_irqchip(&vm_fd, &config)?;
        if let Some(ns) = config.halt_poll_ns {
            let cap = kvm_enable_cap {
                cap: KVM_CAP_HALT_POLL,
                args: [ns.into(), 0, 0, 0],
                ..Default::default()
            };
            vm_fd
                .enable_cap(&cap)
                .map_err(kvm_err("setting halt polling"))?;
        }

        let exit =
            Arc::new(ExitSignal::new().map_err(|e| VmError::Host("creating the exit signal", e))?);
        let threads = ThreadPolicy::new(exit.clone(), config.seccomp, fault);
        let milestones = Arc::new(BootMilestones::new(started));
        let (pio, console) = legacy_devices(
            &vm_fd,
            &config,
            &exit,
            &milestones,
            irqchip.as_ref(),
            &threads,
        )?;
        let pio = Arc::new(pio);
        confine_helper_threads(&config);
        let engine = Arc::new(start_engine(&config.work, &threads)?);
        let mut mmio = Bus::new();
        if let Some(chip) = &irqchip {
            place_ioapic(&mut mmio, chip)?;
        }
        let mut devices = DeviceManager::new(
            &vm_fd,
            mem.clone(),
            config.work.notify_paths(),
            irqchip.clone(),
            mmio,
        )
        .map_err(|e| VmError::Host("creating the notifier", e))?;
        let mut disks = Vec::new();
        let mut scrubs = Vec::new();
        for (i, disk) in config.disks.iter().enumerate() {
            let block = open_disk(disk, i, &engine)?;
            disks.push(block.counters());
            scrubs.push(PendingScrub {
                disk: block.disk().clone(),
                passes: disk.scrub_passes.unwrap_or(0),
                counters: Arc::default(),
            });
            devices.add(format!("disk{i}"), block.counters(), Box::new(block))?;
        }
        for (i, net) in config.nets.iter().enumerate() {
            let net = Net::open(net, i, &engine, devices.host_events())?;
            devices.add(format!("net{i}"), net.counters(), Box::new(net))?;
        }
        if config.rng {
            let rng = Rng::new(&engine);
            devices.add("rng".into(), rng.counters(), Box::new(rng))?;
        }
        let (mmio, notifier, devices) = devices.finish();
        let mmio = Arc::new(mmio);

        let cmdline = boot::with_kernel_args(&config.cmdline, &devices.cmdline());
        let slots = devices.slots();
        let boot_config = BootConfig {
            cmdline: &cmdline,
            initrd: config.initrd.as_deref(),
            vcpus: config.vcpus,
            devices: &slots,
        };
        let (entry, boot) = boot::prepare(&mem, kernel, &boot_config)?;
        let vcpu_fds = create_vcpus(&kvm, &vm_fd, &mem, &config, irqchip.as_deref(), &entry)?;

        Ok(Vm {
            config,
            started,
            vm_fd,
            mem,
            vcpu_fds,
            irqchip,
            pio,
            mmio,
            exit,
            milestones,
            engine,
            notifier: Some(notifier),
            devices,
            disks,
            scrubs,
            scrub_stop: Arc::default(),
            boot,
            console,
            threads,
            proc_files: ProcFiles::open()
                .inspect_err(|e| tracing::warn!("no memory report: {e}"))
                .ok(),
        })
    }

    /// Guest memory.
    pub fn memory(&self) -> &Arc<GuestMemory> {
        &self.mem
    }

    /// Where every virtio device lives, in order (for ACPI DSDT entries).
    pub fn virtio_slots(&self) -> Vec<Slot> {
        self.devices.slots()
    }

    /// The KVM VM fd (for devices that need irqfds and ioeventfds).
    pub fn fd(&self) -> &VmFd {
        &self.vm_fd
    }

    /// Runs the guest until it ends and reports how it went.
    pub fn run(self) -> Result<RunReport, VmError> {
        Ok(self.start()?.wait())
    }

    /// Starts the vCPUs and the notifier; the VM runs until it ends.
    pub fn start(mut self) -> Result<RunningVm, VmError> {
        let notifier = self
            .notifier
            .take()
            .ok_or_else(|| {
                VmError::Host(
                    "starting the notifier thread",
                    std::io::ErrorKind::AlreadyExists.into(),
                )
            })?
            .start(self.threads.clone())
            .map_err(|e| VmError::Host("starting the notifier thread", e))?;
        let inline = self.config.work.policy == Policy::Inline;
        if inline && self.scrubs.iter().any(|s| s.passes > 0) {
            // Under `inline` every item runs to completion where it is
            // submitted: a scrub would hold this thread for its whole length.
            tracing::warn!("background scrub needs the workers or idle policy; not started");
        }
        for s in self.scrubs.iter().filter(|s| s.passes > 0 && !inline) {
            let item = Scrub::item(
                s.disk.clone(),
                s.passes,
                self.scrub_stop.clone(),
                s.counters.clone(),
            );
            // The engine is not shut down before the VM ends: this cannot fail.
            let _ = self.engine.submit(item);
        }
        let mut vcpus: Vec<VcpuHandle> = Vec::with_capacity(self.vcpu_fds.len());
        for (index, fd) in std::mem::take(&mut self.vcpu_fds).into_iter().enumerate() {
            let index = index as u8;
            let ctx = VcpuContext {
                pio: self.pio.clone(),
                mmio: self.mmio.clone(),
                exit: self.exit.clone(),
                pin: self.config.pin_of(index).cloned(),
                engine: Some(self.engine.clone()),
                // Under the user irqchip the halt itself reaches this thread.
                self_kick: Some(Duration::from_micros(self.config.work.self_kick_us)).filter(|d| {
                    !d.is_zero()
                        && self.config.work.policy == Policy::Idle
                        && self.irqchip.is_none()
                }),
                irqchip: self.irqchip.clone(),
                mem: self.mem.clone(),
                io_wait: self.config.work.io_wait(),
                halt_poll_ns: self.config.halt_poll_ns,
                threads: self.threads.clone(),
            };
            match Vcpu::new(index, fd, ctx).start() {
                Ok(h) => vcpus.push(h),
                Err(e) => {
                    self.exit
                        .report(ExitReason::Host(format!("starting vcpu{index}: {e}")));
                    break;
                }
            }
        }
        if let Some(fault) = self.threads.fault().filter(|f| f.thread == "worker") {
            // Not fired in the workers' start hook (a panic there fails the
            // engine's start, not a running VM): the VM's first work item
            // does (on a worker under the workers policy).
            let fault = fault.clone();
            let _ = self
                .engine
                .submit(idlework::Item::from_fn(move || fault.fire()));
        }
        Ok(RunningVm {
            vm: self,
            vcpus,
            notifier,
        })
    }
}

/// A VM whose vCPUs are running.
pub struct RunningVm {
    vm: Vm,
    vcpus: Vec<VcpuHandle>,
    notifier: Notifier,
}

impl RunningVm {
    /// The vCPUs' mailboxes: pause, resume, stop, kick.
    pub fn vcpus(&self) -> impl Iterator<Item = &Arc<VcpuControl>> {
        self.vcpus.iter().map(VcpuHandle::control)
    }

    /// Whether the VM has ended (the guest exited or a vCPU failed).
    pub fn has_ended(&self) -> bool {
        self.vm.exit.is_reported()
    }

    /// Binds and confines the calling thread (the one that will call
    /// [`wait`](Self::wait)) as the VM's `main` thread: after this it cannot
    /// open files, so open every output first. Keep the returned binding
    /// alive until `wait` returns. Embedders that do more on this thread
    /// afterwards should not call it (the VM's own threads are confined
    /// regardless).
    pub fn confine_main_thread(&self) -> Result<Binding, VmError> {
        let binding = self.vm.threads.bind_waiter("main");
        self.vm.threads.confine(ThreadClass::Main, "main")?;
        Ok(binding)
    }

    /// Waits for the VM to end, stops everything, and reports.
    ///
    /// Bounded: vCPU threads get [`STOP_TIMEOUT`] to stop. After a panic or
    /// a seccomp trap, a thread may never finish (a trapped thread is parked)
    /// or hold the engine, so the notifier and the engine are then left as
    /// they are (not joined, not drained): the process is expected to exit.
    pub fn wait(self) -> RunReport {
        let RunningVm {
            mut vm,
            vcpus,
            notifier,
        } = self;
        let exit = vm.exit.wait();
        let fatal = matches!(exit, ExitReason::Panic { .. } | ExitReason::Seccomp { .. });
        let scrubs = vm.scrubs.iter().map(|s| s.counters.snapshot()).collect();
        vm.scrub_stop.store(true, Ordering::Relaxed);
        for h in &vcpus {
            h.control().post(Request::Stop);
        }
        let deadline = std::time::Instant::now() + STOP_TIMEOUT;
        // A trapped thread is parked for good: do not wait for it.
        let trapped = match &exit {
            ExitReason::Seccomp { thread, .. } => Some(thread.as_str()),
            _ => None,
        };
        let vcpus: Vec<VcpuStats> = vcpus
            .into_iter()
            .enumerate()
            .map(|(i, h)| {
                let parked = trapped == Some(format!("vcpu{i}").as_str());
                let until = if parked {
                    std::time::Instant::now()
                } else {
                    deadline
                };
                h.join_until(until).unwrap_or_else(|| {
                    tracing::error!("vcpu{i} did not stop; left behind");
                    VcpuStats {
                        vcpu: i as u8,
                        ..VcpuStats::default()
                    }
                })
            })
            .collect();
        // With every vCPU stopped, guest memory says what a failed instruction was.
        let exit = exit.with_guest_memory(&vm.mem);
        let work = vm.engine.stats();
        if fatal {
            std::mem::forget(notifier);
            std::mem::forget(vm.engine.clone());
        } else {
            drop(notifier);
            if let Ok(engine) = Arc::try_unwrap(vm.engine.clone()) {
                // Finish what the guest submitted before it ended.
                let left = engine.shutdown(Shutdown::Drain);
                debug_assert!(left.is_empty());
            }
        }
        let guest = memory::host_ranges(&vm.mem);
        let rss = match vm.proc_files.as_mut() {
            Some(files) => RssReport::measure_with(files, &guest).ok(),
            None => None,
        };
        RunReport {
            exit_code: exit.exit_code(),
            irqchip: vm.config.irqchip,
            exit,
            first_instruction_ns: vm.milestones.first_instruction_ns(),
            banner_ns: vm.milestones.banner_ns(),
            end_ns: vm.started.elapsed().as_nanos() as u64,
            rss,
            work,
            disks: vm.disks.iter().map(|d| d.snapshot()).collect(),
            devices: vm.devices.report(),
            scrubs,
            vcpus,
            unhandled_io: vm.pio.unhandled_accesses() + vm.mmio.unhandled_accesses(),
            boot: vm.boot.clone(),
            console: vm.console.output.stats(),
            guest_logs: crate::guest_log::counts(),
        }
    }
}

/// With the footprint cap at 0 ("never more host CPUs than vCPUs") and pinned
/// vCPUs, the VMM's own threads (device workers, the notifier, this one) are
/// kept on the vCPUs' CPUs too: threads created from here on inherit it, and
/// each vCPU thread then narrows itself to its own CPUs.
fn confine_helper_threads(config: &VmConfig) {
    if config.work.cpu_cap != Some(0) || config.pin.is_empty() {
        return;
    }
    let union: Vec<String> = config
        .pin
        .iter()
        .flat_map(|(_, l)| l.cpus())
        .map(|c| c.to_string())
        .collect();
    match union.join(",").parse() {
        Ok(cpus) => {
            if let Err(e) = crate::vcpu::pin_current_thread(&cpus) {
                tracing::warn!("cannot keep VMM threads on the vCPUs' CPUs {cpus}: {e}");
            }
        }
        Err(e) => tracing::warn!("cannot keep VMM threads on the vCPUs' CPUs: {e}"),
    }
}

/// Warns if KVM stored a CPUID that still shows a feature `--hide-cpu-feature`
/// hid (PVM sets XSAVE again: see [`crate::cpuid`]).
fn warn_if_platform_shows_hidden(fd: &VcpuFd, hidden: HiddenFeatures) {
    let Ok(stored) = fd.get_cpuid2(KVM_MAX_CPUID_ENTRIES) else {
        return;
    };
    for feature in hidden_but_visible(&stored, hidden) {
        tracing::warn!(
            ?feature,
            "KVM kept this CPU feature visible to the guest although it was hidden \
             (PVM does so for XSAVE); tell the guest itself, e.g. Linux's `noxsave`"
        );
    }
}

/// Starts the engine; each of its worker threads binds itself to this VM
/// (a panic ends the VM naming the thread) and confines itself to the
/// worker filter before it takes any item. The workers inherit the
/// affinity [`confine_helper_threads`] set on this thread.
fn start_engine(w: &WorkConfig, threads: &ThreadPolicy) -> Result<Engine, VmError> {
    let threads = threads.clone();
    let config = idlework::Config {
        on_thread_start: Some(idlework::ThreadStartHook::new(move |t| {
            threads.bind_for_thread_life(&t.name);
            threads.confine(ThreadClass::Worker, &t.name)?;
            Ok(())
        })),
        ..engine_config(w)
    };
    Engine::new(config)
        .map_err(|e| VmError::Host("starting the device-work engine", std::io::Error::other(e)))
}

/// The engine settings for a VM's device work.
fn engine_config(w: &WorkConfig) -> idlework::Config {
    idlework::Config {
        policy: w.policy,
        max_workers: w.workers.max(1),
        normal_deadline: Duration::from_micros(w.deadline_us),
        idle_deadline: Duration::from_micros(w.deadline_us).max(Duration::from_millis(100)),
        executor_budget: Duration::from_micros(w.budget_us),
        cpu_cap: w.cpu_cap,
        idle_poll: Some(Duration::from_micros(w.idle_poll_us)).filter(|d| !d.is_zero()),
        thread_name: WORKER_PREFIX.into(),
        ..idlework::Config::default()
    }
}

fn open_disk(d: &DiskConfig, index: usize, engine: &Engine) -> Result<Block, VmError> {
    let transform = match d.xts_passes {
        Some(passes) => Transform::Xts {
            key: XTS_KEY,
            passes,
        },
        None => Transform::None,
    };
    let disk =
        Disk::open(&d.path, d.read_only, transform).map_err(|e| VmError::Host("disk image", e))?;
    Ok(Block::new(
        disk,
        &format!("nightshift-disk{index}"),
        engine.submitter(),
    ))
}

/// Tells KVM about every RAM region.
fn register_memory(vm_fd: &VmFd, mem: &GuestMemory) -> Result<(), VmError> {
    for (slot, region) in mem.iter().enumerate() {
        let host = mem
            .get_host_address(region.start_addr())
            .map_err(|e| VmError::Memory(region.len() >> 20, e.to_string()))?;
        let region = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().raw_value(),
            memory_size: region.len(),
            userspace_addr: host as u64,
        };
        // SAFETY: the region is a live mapping of exactly `memory_size` bytes
        // owned by `mem`, which the VM keeps (Arc) for as long as the VM fd and
        // its vCPUs exist; slots are distinct.
        unsafe { vm_fd.set_user_memory_region(region) }
            .map_err(kvm_err("registering guest memory"))?;
    }
    Ok(())
}

/// The in-kernel irqchip (`kernel`), or the VMM's own (`user`: no
/// `KVM_CREATE_IRQCHIP`, so guest HLTs exit to userspace).
fn create_irqchip(vm_fd: &VmFd, config: &VmConfig) -> Result<Option<Arc<UserIrqChip>>, VmError> {
    match config.irqchip {
        IrqChipKind::Kernel => {
            vm_fd
                .create_irq_chip()
                .map_err(kvm_err("creating the in-kernel irqchip"))?;
            Ok(None)
        }
        IrqChipKind::User => {
            let pv_eoi = route_pv_eoi_msr(vm_fd)
                .inspect_err(|e| {
                    tracing::info!("PV EOI not offered: the host cannot pass its MSR on ({e})")
                })
                .is_ok();
            let chip = UserIrqChip::new(config.vcpus).with_pv_eoi(pv_eoi);
            Ok(Some(Arc::new(chip)))
        }
    }
}

/// Makes the guest's accesses to `MSR_KVM_PV_EOI_EN` exit to its vCPU thread
/// (KVM's MSR filter, denying that one MSR, with filter exits to userspace),
/// where the userspace irqchip serves PV EOI; every other MSR stays KVM's.
fn route_pv_eoi_msr(vm_fd: &VmFd) -> Result<(), kvm_ioctls::Error> {
    let cap = kvm_enable_cap {
        cap: KVM_CAP_X86_USER_SPACE_MSR,
        args: [MsrExitReason::Filter.bits().into(), 0, 0, 0],
        ..Default::default()
    };
    vm_fd.enable_cap(&cap)?;
    // One MSR, its bit clear: denied to KVM, so the access exits.
    let deny = [0u8];
    let range = MsrFilterRange {
        flags: MsrFilterRangeFlags::READ | MsrFilterRangeFlags::WRITE,
        base: MSR_KVM_PV_EOI_EN,
        msr_count: 1,
        bitmap: &deny,
    };
    vm_fd.set_msr_filter(MsrFilterDefaultAction::ALLOW, &[range])
}

/// The userspace IOAPIC's registers, where the MADT announces them.
fn place_ioapic(mmio: &mut Bus, chip: &Arc<UserIrqChip>) -> Result<(), VmError> {
    let ioapic = Arc::new(Mutex::new(IoApicMmio(chip.clone())));
    mmio.insert(ioapic, IOAPIC_START, IOAPIC_SIZE)
        .map_err(|e| VmError::Host("placing the IOAPIC", std::io::Error::other(e)))
}

/// The 8259 pair and ELCR a guest may probe (user irqchip; KVM has its own).
fn place_pics(pio: &mut Bus) -> Result<(), VmError> {
    let master = Arc::new(Mutex::new(Pic8259::default()));
    let slave = Arc::new(Mutex::new(Pic8259::default()));
    let elcr = Arc::new(Mutex::new(Elcr::default()));
    pio.insert(master, PIC_MASTER, PIC_LEN)
        .and_then(|_| pio.insert(slave, PIC_SLAVE, PIC_LEN))
        .and_then(|_| pio.insert(elcr, ELCR_BASE, ELCR_LEN))
        .map_err(|e| VmError::Host("placing the 8259s", std::io::Error::other(e)))
}

/// COM1 (with its interrupt line and console), the debug ports, the
/// power-off and reset registers and, under the user irqchip, the 8259s,
/// on a new port I/O bus.
fn legacy_devices(
    vm_fd: &VmFd,
    config: &VmConfig,
    exit: &Arc<ExitSignal>,
    milestones: &Arc<BootMilestones>,
    irqchip: Option<&Arc<UserIrqChip>>,
    threads: &ThreadPolicy,
) -> Result<(Bus, LegacyConsole), VmError> {
    let mut pio = Bus::new();
    let irq = IrqLine::for_gsi(vm_fd, irqchip, COM1_GSI)
        .map_err(|e| VmError::Host("setting up the serial interrupt", e))?;
    if irqchip.is_some() {
        place_pics(&mut pio)?;
    }
    let file = config
        .serial_file
        .as_deref()
        .map(|path| {
            open_output(
                path,
                "the serial console",
                &config.protected_files(),
                config.overwrite,
            )
        })
        .transpose()?;
    let limit = config.serial_file_limit_mib << 20;
    let console = Console::stdout(file, limit, milestones.start(), Some(threads.clone()))
        .map_err(|e| VmError::Host("starting the console writer", e))?;
    let output = console.stats_handle();
    let serial = Arc::new(Mutex::new(Serial::new(irq, console)));
    let input = match config.console_input {
        ConsoleIn::None => None,
        ConsoleIn::Stdin => Some(
            ConsoleInput::stdin(serial.clone(), exit.clone(), Some(threads.clone()))
                .map_err(|e| VmError::Host("starting console input", e))?,
        ),
    };
    let debug = Arc::new(Mutex::new(DebugPort::new(exit.clone(), milestones.clone())));
    let acpi = Arc::new(Mutex::new(AcpiPower::new(exit.clone())));
    let i8042 = Arc::new(Mutex::new(I8042::new(exit.clone())));
    // The ranges are fixed and disjoint: insertion cannot conflict.
    pio.insert(serial, COM1_BASE, COM1_LEN)
        .and_then(|_| pio.insert(debug, DEBUG_PORT_BASE, DEBUG_PORT_LEN))
        .and_then(|_| pio.insert(acpi, power::SLEEP_CONTROL_PORT, power::ACPI_PORTS_LEN))
        .and_then(|_| pio.insert(i8042, power::I8042_BASE, power::I8042_LEN))
        .map_err(|e| VmError::Host("placing legacy devices", std::io::Error::other(e)))?;
    let console = LegacyConsole {
        output,
        _input: input,
    };
    Ok((pio, console))
}

/// Creates and configures every vCPU; vCPU 0 gets the kernel's entry state,
/// the others wait for INIT/SIPI (in the in-kernel local APIC, or in their
/// threads under the user irqchip).
fn create_vcpus(
    kvm: &Kvm,
    vm_fd: &VmFd,
    mem: &GuestMemory,
    config: &VmConfig,
    irqchip: Option<&UserIrqChip>,
    entry: &EntryState,
) -> Result<Vec<VcpuFd>, VmError> {
    let supported = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm_err("reading supported CPUID"))?;
    let mut fds = Vec::with_capacity(config.vcpus.into());
    for index in 0..config.vcpus {
        let fd = vm_fd
            .create_vcpu(index.into())
            .map_err(kvm_err("creating a vCPU"))?;
        let mut cpuid = supported.clone();
        let params = CpuidParams {
            vcpu: index,
            vcpus: config.vcpus,
            tsc_khz: fd.get_tsc_khz().ok(),
            expose_mwait: config.expose_mwait,
            user_irqchip: config.irqchip == IrqChipKind::User,
            user_pv_eoi: irqchip.is_some_and(|c| c.serves_pv_eoi()),
            hidden: HiddenFeatures::from_list(&config.hide_cpu_features),
        };
        filter_cpuid(&mut cpuid, &params);
        fd.set_cpuid2(&cpuid).map_err(kvm_err("setting CPUID"))?;
        if index == 0 {
            warn_if_platform_shows_hidden(&fd, params.hidden);
        }

        if config.irqchip == IrqChipKind::Kernel {
            let mut lapic = fd.get_lapic().map_err(kvm_err("reading the local APIC"))?;
            regs::setup_lint(&mut lapic);
            fd.set_lapic(&lapic)
                .map_err(kvm_err("setting the local APIC"))?;
        }

        if index == 0 {
            boot::set_entry_state(&fd, mem, entry)?;
        }
        fds.push(fd);
    }
    Ok(fds)
}
