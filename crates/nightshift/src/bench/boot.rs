//! Boot benchmark: how long until the guest runs and prints, and what the VMM
//! itself costs in memory.
//!
//! Method: run `nightshift run --cmdline workload=exit` as a fresh process N
//! times (so every run pays process start, KVM setup and first-touch costs, as
//! a user's VMM launch does). Each run's JSON report gives the times from the
//! VMM's `main` to the guest's first-instruction and banner milestones (the
//! guest writes port 0xF8; the VMM timestamps the exit) and VmHWM minus the
//! resident guest RAM. Medians with min and max are printed.
//!
//! With `--kernel` (a Linux bzImage or vmlinux, e.g. from `./dev linux-guest`)
//! the guest is that kernel instead, and the time that matters is VMM start →
//! the kernel's first console line (with `earlycon`, the "Linux version"
//! banner), taken as the first byte on the VMM's stdout; the VMM is then
//! killed (such a kernel may run for minutes, and on PVM hosts it ends only at
//! its int3 self-test). A run that prints nothing in time fails.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use serde::Deserialize;

/// Flags of `nightshift bench boot`.
#[derive(Args, Debug)]
pub struct BootArgs {
    /// Number of boots.
    #[arg(long, default_value_t = 20)]
    runs: usize,
    /// vCPUs of the guest.
    #[arg(long, default_value_t = 2)]
    vcpus: u8,
    /// Guest memory, MiB.
    #[arg(long, default_value_t = 256)]
    mem: u64,
    /// Write the per-run samples as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Boot this kernel (bzImage or PVH ELF) instead of the test guest.
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Its initrd.
    #[arg(long, requires = "kernel")]
    initrd: Option<PathBuf>,
    /// Its command line.
    #[arg(
        long,
        requires = "kernel",
        default_value = "console=ttyS0 earlycon=uart8250,io,0x3f8"
    )]
    linux_cmdline: String,
    /// Stop each Linux boot after this many seconds (it may never end by itself).
    #[arg(long, default_value_t = 600)]
    linux_timeout_s: u64,
}

#[derive(Debug, Deserialize, serde::Serialize)]
struct Sample {
    exit_code: i32,
    first_instruction_ns: Option<u64>,
    banner_ns: Option<u64>,
    end_ns: u64,
    rss: Option<Rss>,
}

#[derive(Debug, Deserialize, serde::Serialize)]
struct Rss {
    peak_kib: u64,
    guest_kib: u64,
    vmm_peak_kib: u64,
}

pub fn run(args: BootArgs) -> anyhow::Result<()> {
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    if args.kernel.is_some() {
        return run_linux(&args);
    }
    let exe = std::env::current_exe().context("finding the nightshift binary")?;
    let report = std::env::temp_dir().join(format!("nightshift-boot-{}.json", std::process::id()));
    println!("# nightshift bench boot");
    println!(
        "method: {} fresh `nightshift run --cmdline workload=exit --vcpus {} --mem {}` processes; \
         times from the VMM's main(); RSS = VmHWM - resident guest RAM",
        args.runs, args.vcpus, args.mem
    );
    let mut samples = Vec::with_capacity(args.runs);
    for i in 0..args.runs {
        super::progress_line(&format!("boot {}/{}", i + 1, args.runs));
        let status = Command::new(&exe)
            .args(["run", "--cmdline", "workload=exit"])
            .args([
                "--vcpus",
                &args.vcpus.to_string(),
                "--mem",
                &args.mem.to_string(),
            ])
            .arg("--report")
            .arg(&report)
            .stdout(Stdio::null())
            .status()
            .context("starting nightshift run")?;
        let text = std::fs::read_to_string(&report).context("reading the run report")?;
        let sample: Sample = serde_json::from_str(&text).context("parsing the run report")?;
        if !status.success() || sample.exit_code != 0 {
            bail!("boot {} failed: exit code {:?}", i + 1, status.code());
        }
        samples.push(sample);
    }
    eprintln!();
    let _ = std::fs::remove_file(&report);

    let ms = |v: Vec<u64>| summary(v, 1e6);
    let rows = [
        (
            "start -> first guest instruction (ms)",
            ms(samples
                .iter()
                .filter_map(|s| s.first_instruction_ns)
                .collect()),
        ),
        (
            "start -> guest banner (ms)",
            ms(samples.iter().filter_map(|s| s.banner_ns).collect()),
        ),
        (
            "start -> VM ended (ms)",
            ms(samples.iter().map(|s| s.end_ns).collect()),
        ),
        (
            "VMM peak RSS apart from guest RAM (MiB)",
            summary(
                samples
                    .iter()
                    .filter_map(|s| s.rss.as_ref().map(|r| r.vmm_peak_kib))
                    .collect(),
                1024.0,
            ),
        ),
        (
            "guest RAM resident (MiB)",
            summary(
                samples
                    .iter()
                    .filter_map(|s| s.rss.as_ref().map(|r| r.guest_kib))
                    .collect(),
                1024.0,
            ),
        ),
    ];
    println!(
        "{:<42} {:>10} {:>10} {:>10} {:>5}",
        "metric", "median", "min", "max", "n"
    );
    for (name, s) in rows {
        match s {
            Some((med, min, max, n)) => {
                println!("{name:<42} {med:>10.2} {min:>10.2} {max:>10.2} {n:>5}")
            }
            None => println!("{name:<42} {:>10} {:>10} {:>10} {:>5}", "-", "-", "-", 0),
        }
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&samples)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Median, min, max (scaled by `div`) and count.
fn summary(mut v: Vec<u64>, div: f64) -> Option<(f64, f64, f64, usize)> {
    v.sort_unstable();
    let n = v.len();
    let med = *v.get(n / 2)?;
    Some((
        med as f64 / div,
        v[0] as f64 / div,
        v[n - 1] as f64 / div,
        n,
    ))
}

/// `bench boot --kernel`: VMM start → the kernel's first console byte.
fn run_linux(args: &BootArgs) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("finding the nightshift binary")?;
    let kernel = args.kernel.as_ref().expect("checked by the caller");
    let deadline = Duration::from_secs(args.linux_timeout_s);
    println!("# nightshift bench boot --kernel {}", kernel.display());
    println!(
        "method: {} fresh `nightshift run --kernel ... --vcpus {} --mem {} --hide-cpu-feature xsave,cx16` \
         processes; time from spawning the VMM to its first console byte on stdout (the kernel's \
         first line, with earlycon), then the VMM is killed",
        args.runs, args.vcpus, args.mem
    );
    let mut firsts = Vec::with_capacity(args.runs);
    for i in 0..args.runs {
        super::progress_line(&format!("boot {}/{}", i + 1, args.runs));
        let mut cmd = Command::new(&exe);
        cmd.args([
            "run",
            "--console-in",
            "none",
            "--hide-cpu-feature",
            "xsave,cx16",
        ])
        .arg("--kernel")
        .arg(kernel)
        .args([
            "--vcpus",
            &args.vcpus.to_string(),
            "--mem",
            &args.mem.to_string(),
        ])
        .args(["--cmdline", &args.linux_cmdline])
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
        if let Some(initrd) = &args.initrd {
            cmd.arg("--initrd").arg(initrd);
        }
        let started = Instant::now();
        let mut child = cmd.spawn().context("starting nightshift run")?;
        let mut stdout = child.stdout.take().context("no stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut byte = [0u8; 1];
            if matches!(stdout.read(&mut byte), Ok(1)) {
                let _ = tx.send(Instant::now());
            }
        });
        let first = rx.recv_timeout(deadline);
        let _ = child.kill();
        let _ = child.wait();
        match first {
            Ok(at) => firsts.push((at - started).as_nanos() as u64),
            Err(_) => bail!("boot {} printed nothing within {deadline:?}", i + 1),
        }
    }
    eprintln!();
    let (med, min, max, n) = summary(firsts, 1e6).context("no boots")?;
    println!(
        "{:<42} {:>10} {:>10} {:>10} {:>5}",
        "metric", "median", "min", "max", "n"
    );
    println!(
        "{:<42} {med:>10.2} {min:>10.2} {max:>10.2} {n:>5}",
        "start -> first kernel line (ms)"
    );
    Ok(())
}
