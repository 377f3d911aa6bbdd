//! `nightshift run`: build a VM from flags and/or a JSON config and run it.

use std::fs;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use vmm::boot::KernelImage;
use vmm::config::{parse_pin, CpuList, DiskConfig, NetConfig};
use vmm::output_file::open_output;
use vmm::{Vm, VmConfig};

/// The built-in test guest (crates/testguest), built by build.rs.
pub const TESTGUEST_ELF: &[u8] = include_bytes!(env!("NIGHTSHIFT_TESTGUEST_ELF"));

/// Flags of `nightshift run`. Flags override the config file's fields.
#[derive(Args, Debug, Default)]
pub struct RunArgs {
    /// JSON file with the VM's configuration (same fields as the flags).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Kernel to boot: a PVH ELF or a bzImage [default: the built-in test guest].
    #[arg(long)]
    pub kernel: Option<PathBuf>,
    /// Initial ramdisk for the kernel.
    #[arg(long)]
    pub initrd: Option<PathBuf>,
    /// Hide CPU features from the guest: xsave, cx16 (comma-separated or
    /// repeated). PVM hosts cannot emulate them in guest kernel mode.
    #[arg(long = "hide-cpu-feature", value_delimiter = ',')]
    pub hide_cpu_features: Vec<vmm::config::CpuFeature>,
    /// Serial console input: stdin (raw mode on a terminal; Ctrl-A x quits)
    /// or none [default: stdin, or the config file's].
    #[arg(long)]
    pub console_in: Option<vmm::config::ConsoleIn>,
    /// Most console output copied to --serial-file, MiB [default: 64].
    #[arg(long)]
    pub serial_file_limit_mib: Option<u64>,
    /// Kernel command line.
    #[arg(long)]
    pub cmdline: Option<String>,
    /// Number of vCPUs [default: 2].
    #[arg(long)]
    pub vcpus: Option<u8>,
    /// Guest memory in MiB [default: 256].
    #[arg(long = "mem")]
    pub mem_mib: Option<u64>,
    /// Pin a vCPU's thread to host CPUs: VCPU=CPULIST, e.g. 0=0 or 1=2-3. Repeatable.
    #[arg(long, value_parser = parse_pin)]
    pub pin: Vec<(u8, CpuList)>,
    /// Also write the serial console to this file. Never a disk image or
    /// kernel of this VM; an existing non-empty file needs --overwrite.
    #[arg(long)]
    pub serial_file: Option<PathBuf>,
    /// Let --serial-file and --report replace an existing non-empty file.
    #[arg(long)]
    pub overwrite: bool,
    /// Per-thread seccomp filters: enforce (a forbidden system call ends the
    /// VM, named), log (allowed and logged by the kernel) or off [default: enforce].
    #[arg(long)]
    pub seccomp: Option<vmm::seccomp::SeccompMode>,
    /// Show MONITOR/MWAIT in the guest's CPUID (hidden by default).
    #[arg(long)]
    pub expose_mwait: bool,
    /// A virtio-blk disk: `PATH[,ro][,xts=PASSES][,scrub=PASSES]`. Repeatable.
    #[arg(long)]
    pub disk: Vec<DiskConfig>,
    /// A virtio-net device on a host tap: `tap=NAME[,mac=MAC]`. Repeatable.
    #[arg(long)]
    pub net: Vec<NetConfig>,
    /// A virtio-rng device fed by the host's getrandom.
    #[arg(long)]
    pub rng: bool,
    /// Where device work runs: workers (device threads only, as today's VMMs),
    /// inline (on the vCPU thread at the notify exit) or idle (idle vCPUs first)
    /// [default: idle].
    #[arg(long)]
    pub policy: Option<idlework::Policy>,
    /// Device-work threads [default: 2].
    #[arg(long)]
    pub workers: Option<usize>,
    /// Time an idle vCPU may spend on device work per exit, µs [default: 200].
    #[arg(long)]
    pub budget_us: Option<u64>,
    /// Age after which work goes to a worker even if a vCPU was kicked, µs [default: 1000].
    #[arg(long)]
    pub deadline_us: Option<u64>,
    /// At most this many non-vCPU threads run device work at once.
    #[arg(long)]
    pub cpu_cap: Option<usize>,
    /// While work waits for an idle vCPU, look for one this often, µs (0: never) [default: 50].
    #[arg(long)]
    pub idle_poll_us: Option<u64>,
    /// Under idle: a vCPU that queued work on an exit checks its own guest for a
    /// halt this soon after, µs (0: off) [default: 0].
    #[arg(long)]
    pub self_kick_us: Option<u64>,
    /// How queue notifications arrive: ioeventfd (notifier thread) or exit
    /// (the vCPU thread) [default: ioeventfd under workers, exit otherwise].
    #[arg(long)]
    pub notify: Option<vmm::config::NotifyPath>,
    /// KVM halt polling per halt, ns (0 = off) [default: the host's].
    #[arg(long)]
    pub halt_poll_ns: Option<u32>,
    /// Who emulates the interrupt controllers: kernel (KVM's in-kernel
    /// irqchip) or user (nightshift's; guest HLTs exit to the vCPU thread,
    /// which then runs device work at once) [default: kernel].
    #[arg(long)]
    pub irqchip: Option<vmm::irqchip::IrqChipKind>,
    /// Write a JSON report (exit reason, boot timings, memory, exit counters)
    /// here. Same rules as --serial-file.
    #[arg(long)]
    pub report: Option<PathBuf>,
}

impl RunArgs {
    /// The VM configuration: the config file's, with the flags given on top.
    pub fn vm_config(&self) -> anyhow::Result<VmConfig> {
        let mut c = match &self.config {
            Some(path) => {
                let text = fs::read_to_string(path)
                    .with_context(|| format!("reading config {}", path.display()))?;
                serde_json::from_str(&text)
                    .with_context(|| format!("parsing config {}", path.display()))?
            }
            None => VmConfig::default(),
        };
        if self.kernel.is_some() {
            c.kernel = self.kernel.clone();
        }
        if self.initrd.is_some() {
            c.initrd = self.initrd.clone();
        }
        c.hide_cpu_features
            .extend(self.hide_cpu_features.iter().copied());
        match (self.console_in, &self.config) {
            (Some(v), _) => c.console_input = v,
            (None, None) => c.console_input = vmm::config::ConsoleIn::Stdin,
            (None, Some(_)) => {}
        }
        c.serial_file_limit_mib = self
            .serial_file_limit_mib
            .unwrap_or(c.serial_file_limit_mib);
        if let Some(v) = &self.cmdline {
            c.cmdline = v.clone();
        }
        if let Some(v) = self.vcpus {
            c.vcpus = v;
        }
        if let Some(v) = self.mem_mib {
            c.mem_mib = v;
        }
        c.pin.extend(self.pin.iter().cloned());
        if self.serial_file.is_some() {
            c.serial_file = self.serial_file.clone();
        }
        c.overwrite |= self.overwrite;
        c.seccomp = self.seccomp.unwrap_or(c.seccomp);
        c.expose_mwait |= self.expose_mwait;
        c.disks.extend(self.disk.iter().cloned());
        c.nets.extend(self.net.iter().cloned());
        c.rng |= self.rng;
        let w = &mut c.work;
        w.policy = self.policy.unwrap_or(w.policy);
        w.workers = self.workers.unwrap_or(w.workers);
        w.budget_us = self.budget_us.unwrap_or(w.budget_us);
        w.deadline_us = self.deadline_us.unwrap_or(w.deadline_us);
        w.cpu_cap = self.cpu_cap.or(w.cpu_cap);
        w.idle_poll_us = self.idle_poll_us.unwrap_or(w.idle_poll_us);
        w.self_kick_us = self.self_kick_us.unwrap_or(w.self_kick_us);
        w.notify = self.notify.or(w.notify);
        c.halt_poll_ns = self.halt_poll_ns.or(c.halt_poll_ns);
        c.irqchip = self.irqchip.unwrap_or(c.irqchip);
        Ok(c)
    }
}

/// Runs the VM; returns the process exit status (the guest's, or non-zero on failure).
pub fn run(args: RunArgs, started: Instant) -> anyhow::Result<u8> {
    let config = args.vm_config()?;
    config.validate()?;
    // Opened now: a refused report path fails before the guest runs, and the
    // main thread may not open files once it is confined.
    let mut report_file = args
        .report
        .as_deref()
        .map(|path| {
            open_output(
                path,
                "the report",
                &config.protected_files(),
                config.overwrite,
            )
        })
        .transpose()?;
    let kernel_path = config.kernel.clone();
    let kernel = match &kernel_path {
        Some(path) => KernelImage::File(path),
        None => KernelImage::Bytes {
            name: "built-in test guest",
            image: TESTGUEST_ELF,
        },
    };
    let vm = Vm::new(config, kernel, started)?;
    let running = vm.start()?;
    let _main = running.confine_main_thread()?;
    let report = running.wait();
    if let (Some(file), Some(path)) = (report_file.as_mut(), &args.report) {
        let json = serde_json::to_string_pretty(&report)?;
        file.write_all(json.as_bytes())
            .with_context(|| format!("writing report {}", path.display()))?;
    }
    if report.exit_code != 0 {
        eprintln!("nightshift: {}", report.exit);
    }
    Ok(report.exit_code as u8)
}
