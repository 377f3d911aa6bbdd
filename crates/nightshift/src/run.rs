//! `nightshift run`: build a VM from flags and/or a JSON config and run it.

use std::fs;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use vmm::boot::KernelImage;
use vmm::config::flags::VmFlags;
use vmm::output_file::open_output;
use vmm::{Vm, VmConfig};

/// The built-in test guest (crates/testguest), built by build.rs.
pub const TESTGUEST_ELF: &[u8] = include_bytes!(env!("NIGHTSHIFT_TESTGUEST_ELF"));

/// Flags of `nightshift run`: the VM's (declared once, on `VmConfig`'s fields;
/// see `vmm::config::flags` for how they combine with --config) and the run's own.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// JSON file with the VM's configuration: the flags' fields, by their JSON
    /// names (e.g. "mem_mib", "disks", "work": {"policy": ...}). A flag given
    /// replaces the file's value; --disk, --net, --pin and --hide-cpu-feature
    /// add to the file's lists.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub vm: VmFlags,
    /// Write a JSON report (exit reason, boot timings, memory, exit counters)
    /// here. Same rules as --serial-file.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
}

impl RunArgs {
    /// The VM configuration: the config file's, with the flags given on top.
    pub fn vm_config(&self) -> anyhow::Result<VmConfig> {
        let file = match &self.config {
            Some(path) => {
                let text = fs::read_to_string(path)
                    .with_context(|| format!("reading config {}", path.display()))?;
                Some(
                    serde_json::from_str(&text)
                        .with_context(|| format!("parsing config {}", path.display()))?,
                )
            }
            None => None,
        };
        Ok(self.vm.over(file)?)
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
