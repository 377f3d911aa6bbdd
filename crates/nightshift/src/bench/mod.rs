//! `nightshift bench`: whole-system measurements that print their method.
//!
//! With no subcommand it runs the scenario set ([`scenario::all`]) under every
//! variant ([`scenario::Variant::defaults`]) and prints a table; `--json` and
//! `--plots` keep the results. `bench boot` measures start-up.

mod boot;
mod netload;
mod parse;
mod plot;
mod report;
mod runner;
mod scenario;
mod threads;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::Command;

use anyhow::Context;
use clap::{Args, Subcommand};

use nightshift::netns::Netns;
use report::{RunMetrics, Summary};
use runner::NetRun;
use scenario::{Params, Variant};

/// Flags of `nightshift bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    command: Option<BenchCommand>,
    /// About a minute: short runs, one repetition, fewer variants (CI smoke use).
    #[arg(long)]
    quick: bool,
    /// Repetitions of every (scenario, variant) [default: 3, 1 with --quick].
    #[arg(long)]
    reps: Option<usize>,
    /// Guest run time per VM, ms [default: 1500, 300 with --quick].
    #[arg(long)]
    ms: Option<u64>,
    /// Scenarios to run (comma-separated) [default: all].
    #[arg(long, value_delimiter = ',')]
    scenarios: Vec<String>,
    /// Block request size, bytes.
    #[arg(long, default_value_t = 4096)]
    req_size: u32,
    /// Requests the guest keeps in flight.
    #[arg(long, default_value_t = 1)]
    qd: u32,
    /// AES-XTS passes per sector in the disk backend (0 = plain); QEMU runs use LUKS when > 0.
    #[arg(long, default_value_t = 1)]
    xts: u32,
    /// Leave QEMU out even if it is installed.
    #[arg(long)]
    no_qemu: bool,
    /// Write every run's metrics and the summary as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write PNG plots into this directory.
    #[arg(long)]
    plots: Option<PathBuf>,
}

/// Benchmarks other than the scenario set.
#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// VMM start → first guest instruction → guest banner, and the VMM's peak RSS
    /// apart from guest memory, over repeated boots of the built-in test guest.
    Boot(boot::BootArgs),
}

/// Runs a benchmark.
pub fn bench(args: BenchArgs) -> anyhow::Result<()> {
    match args.command {
        Some(BenchCommand::Boot(b)) => boot::run(b),
        None => scenarios(args),
    }
}

fn qemu_installed() -> bool {
    Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn scenarios(args: BenchArgs) -> anyhow::Result<()> {
    let reps = args.reps.unwrap_or(if args.quick { 1 } else { 3 }).max(1);
    let params = Params {
        ms: args.ms.unwrap_or(if args.quick { 300 } else { 1500 }),
        req_size: args.req_size,
        qd: args.qd,
        xts_passes: args.xts,
        disk_mib: 64,
    };
    let with_qemu = !args.no_qemu && qemu_installed();
    let mut variants = Variant::defaults(with_qemu);
    if args.quick {
        variants.retain(|v| {
            matches!(
                v,
                Variant::Nightshift {
                    halt_poll_ns: None,
                    cpu_cap: None,
                    io_wait: true,
                    ..
                }
            ) || *v == Variant::Qemu { iothread: false }
        });
    }
    let mut scenarios: Vec<_> = scenario::all(&params)
        .into_iter()
        .filter(|s| args.scenarios.is_empty() || args.scenarios.iter().any(|n| n == s.name))
        .collect();
    anyhow::ensure!(
        !scenarios.is_empty(),
        "no scenario matches {:?}",
        args.scenarios
    );
    // The network scenarios' traffic stays in a namespace of the bench's own.
    let mut net_skipped = None;
    let netns = if scenarios.iter().any(|s| s.net.is_some()) {
        match Netns::create("nightshift-bench") {
            Ok(ns) => Some(ns),
            Err(e) => {
                let why = format!(
                    "network scenarios skipped: cannot make a network namespace with a tap: {e}"
                );
                eprintln!("nightshift bench: {why}");
                scenarios.retain(|s| s.net.is_none());
                net_skipped = Some(why);
                None
            }
        }
    } else {
        None
    };
    anyhow::ensure!(
        !scenarios.is_empty(),
        "{}",
        net_skipped.as_deref().unwrap_or("no scenario left")
    );

    let exe = std::env::current_exe().context("finding the nightshift binary")?;
    let images = runner::Images::new(params.disk_mib)?;
    if with_qemu && params.xts_passes > 0 {
        // Made up front, on a quiet host: qemu-img times its key derivation.
        let comparable = scenarios.iter().filter(|s| s.peer_comparable());
        for vm in comparable.flat_map(|s| &s.vms) {
            for d in 0..vm.disks {
                images.luks(&format!("{}{d}", vm.role))?;
            }
        }
    }
    print_method(&params, reps, &variants, &scenarios, with_qemu);
    if let Some(why) = &net_skipped {
        println!("{why}\n");
    }

    let per_rep: usize = scenarios
        .iter()
        .map(|s| {
            usize::from(s.solo.is_some()) + variants.iter().filter(|v| s.runs_under(v)).count()
        })
        .sum();
    let total = reps * per_rep;
    let mut done = 0;
    let mut runs: Vec<RunMetrics> = Vec::new();
    // Repetitions outermost and variants innermost, so variants alternate and
    // slow drifts of the host spread over all of them.
    for rep in 0..reps {
        for sc in &scenarios {
            let solo = match &sc.solo {
                Some(solo) => {
                    done += 1;
                    progress(done, total, sc.name, "solo", rep);
                    let solo = runner::run_vms(
                        &exe,
                        &Variant::nightshift("idle"),
                        std::slice::from_ref(solo),
                        &params,
                        &images,
                        None,
                    )?;
                    Some(report::Solo::of(&solo).context("solo run reported no compute rate")?)
                }
                None => None,
            };
            let net = match (sc.net, &netns) {
                (Some(load), Some(ns)) => Some(NetRun { ns, load }),
                _ => None,
            };
            for v in variants.iter().filter(|v| sc.runs_under(v)) {
                done += 1;
                progress(done, total, sc.name, &v.label(), rep);
                let vms = runner::run_vms(&exe, v, &sc.vms, &params, &images, net)?;
                runs.push(RunMetrics::from_run(sc.name, v, rep, &vms, solo.as_ref()));
            }
        }
    }
    eprintln!();

    let summary = Summary::of(&runs);
    report::print_table(&summary);
    if let Some(path) = &args.json {
        let doc = serde_json::json!({
            "host": host_facts(),
            "params": params,
            "reps": reps,
            "scenarios": scenarios,
            "variants": variants.iter().map(|v| v.label()).collect::<Vec<_>>(),
            "summary": summary,
            "runs": runs,
        });
        std::fs::write(path, serde_json::to_string_pretty(&doc)?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("\nJSON: {}", path.display());
    }
    if let Some(dir) = &args.plots {
        std::fs::create_dir_all(dir)?;
        for p in plot::all(&summary, dir)? {
            println!("plot: {}", p.display());
        }
    }
    Ok(())
}

fn progress(done: usize, total: usize, scenario: &str, variant: &str, rep: usize) {
    progress_line(&format!(
        "[{done}/{total}] {scenario} × {variant} (rep {})",
        rep + 1
    ));
}

/// A progress line: rewritten in place on a terminal, a plain line each
/// otherwise (a CI log, a file).
pub(crate) fn progress_line(line: &str) {
    if std::io::stderr().is_terminal() {
        eprint!("\r\x1b[K{line}");
    } else {
        eprintln!("{line}");
    }
    let _ = std::io::stderr().flush();
}

fn print_method(
    p: &Params,
    reps: usize,
    variants: &[Variant],
    scenarios: &[scenario::Scenario],
    qemu: bool,
) {
    println!("# nightshift bench");
    for (k, v) in host_facts().as_object().into_iter().flatten() {
        println!("host.{k}: {}", v.as_str().unwrap_or(&v.to_string()));
    }
    println!(
        "params: guest run {} ms per VM, {} B requests, queue depth {}, AES-XTS passes {}, {} MiB image",
        p.ms, p.req_size, p.qd, p.xts_passes, p.disk_mib
    );
    println!(
        "method: {reps} repetition(s); variants alternate within each repetition; medians [min-max] over repetitions; \
         compute rate relative to a solo run (same VM, no I/O) in the same repetition; latency and IOPS as measured \
         in the guest; CPU by thread class from /proc/PID/task/*/schedstat sampled every 2 ms; threads running at once \
         = threads on a CPU for over half of a 2 ms window (sampled estimate)"
    );
    if scenarios.iter().any(|s| s.net.is_some()) {
        println!(
            "method (network): the guest's virtio-net device on a tap in a network namespace the bench makes \
             (host {} <-> guest {} only; nightshift --net tap=, QEMU -netdev tap, no vhost); the host side runs \
             in this process on a thread in that namespace, unpinned, from the guest's `net dev=` line: RR = one \
             {} B UDP datagram to the echo port at a time, round trip on the host clock into an HDR histogram, \
             1 s timeout = lost; stream = TCP sessions alternating host->guest (sink, CRC-checked) and \
             guest->host (source, every byte checked), each about a sixth of the window, Mbit/s = bytes / session \
             time (connection set-up included); window = {} ms, or with a computing vCPU until its result line \
             (it starts computing at boot, so the guest's net bring-up is computed without traffic: see net up ms); \
             ops for per-op counts = round trips (RR) or MiB moved (stream); exits = the vCPUs' KVM_RUN returns; \
             wait s = VMM threads runnable but not on a CPU (schedstat), host wait ms = the same for the traffic \
             thread; bg cores = cores the rest of the host used meanwhile (/proc/stat minus the bench and its VMMs: on a saturated host, the complement of what the run took; \
             solo bg cores: during the solo run the compute rate is compared with); VMM s from compute vCPU = CPU time \
             of the VMM's other threads on the computing vCPU's host CPU (each thread's 2 ms sample put on the CPU \
             it was last on) plus device work run on that vCPU's own thread",
            nightshift::netns::HOST_IP,
            nightshift::netns::GUEST_IP,
            netload::RR_PAYLOAD,
            p.ms
        );
    }
    if qemu {
        println!(
            "peer: QEMU microvm runs the same guest only in scenarios where it does the same device work \
             (one LUKS cipher pass per sector, no background scrub): {}",
            scenarios
                .iter()
                .filter(|s| s.peer_comparable())
                .map(|s| s.name)
                .collect::<Vec<_>>()
                .join(", ")
        );
    } else {
        println!("peer: QEMU not installed or --no-qemu: no QEMU rows");
    }
    println!(
        "variants: {}",
        variants
            .iter()
            .map(|v| v.label())
            .collect::<Vec<_>>()
            .join(", ")
    );
    if let Some(net) = scenarios.iter().find(|s| s.net.is_some()) {
        println!(
            "variants (network scenarios): {}",
            variants
                .iter()
                .filter(|v| net.runs_under(v))
                .map(|v| v.label())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    for s in scenarios {
        println!("scenario {}: {}", s.name, s.about);
        for vm in &s.vms {
            if vm.net {
                println!(
                    "  {} ({} vCPU, pinned {:?}, virtio-net on the tap): {}",
                    vm.role, vm.vcpus, vm.pins, vm.cmdline
                );
                continue;
            }
            println!(
                "  {} ({} vCPU, pinned {:?}, {} disk(s), cipher passes x{}): {}",
                vm.role, vm.vcpus, vm.pins, vm.disks, vm.xts_factor, vm.cmdline
            );
        }
    }
    println!();
}

/// What the results depend on: CPU, kernel, KVM flavour.
fn host_facts() -> serde_json::Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        cpuinfo
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default()
    };
    let flags = field("flags");
    let kvm = if flags.split(' ').any(|f| f == "vmx" || f == "svm") {
        "hardware (VMX/SVM)"
    } else if std::path::Path::new("/sys/module/kvm_pvm").exists() {
        "PVM (software, kvm_pvm)"
    } else {
        "no VMX/SVM flag (software virtualization, e.g. PVM)"
    };
    let uname = Command::new("uname")
        .arg("-r")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    serde_json::json!({
        "cpu": field("model name"),
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "kernel": uname,
        "kvm": kvm,
    })
}
