//! Starting a scenario's VMs under a variant, watching their threads, and
//! collecting what each guest and VMM reported.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nightshift::netns::{Netns, TAP};
use serde::Serialize;

use super::netload::{self, NetOutcome};
use super::scenario::{NetLoad, Params, Variant, VmSpec};
use super::threads::{HostCpu, ProcessCpu, Sampler};

/// The guest's MAC under both VMMs (nightshift's default for its first net device), so
/// the tap's neighbour entry is right whichever VMM ran last.
const GUEST_MAC: &str = "52:54:00:12:34:56";

/// What one VM of one run produced.
#[derive(Clone, Debug, Serialize)]
pub struct VmOutcome {
    /// The VM's role in the scenario.
    pub role: &'static str,
    /// The guest's `result` lines as key → value maps.
    pub results: Vec<HashMap<String, String>>,
    /// nightshift's run report (None for QEMU).
    pub report: Option<serde_json::Value>,
    /// CPU use of the VMM process by thread class.
    pub cpu: ProcessCpu,
    /// What the host measured of its network traffic (the VM with a net device).
    pub net: Option<NetOutcome>,
    /// Cores the rest of the host (not the bench, not this run's VMMs) used on
    /// average during the run: the background load it ran under.
    pub background_cores: Option<f64>,
}

/// Disk images for a scenario run, made once per bench run.
pub struct Images {
    dir: tempfile::TempDir,
    mib: u64,
}

const LUKS_SECRET: &str = "nightshift-bench";

impl Images {
    /// A directory for images of `mib` MiB.
    pub fn new(mib: u64) -> anyhow::Result<Self> {
        Ok(Images {
            dir: tempfile::tempdir()?,
            mib,
        })
    }

    /// A raw image (nightshift encrypts in its backend when asked).
    fn raw(&self, name: &str) -> anyhow::Result<PathBuf> {
        let path = self.dir.path().join(format!("{name}.img"));
        if !path.exists() {
            let f = std::fs::File::create(&path)?;
            f.set_len(self.mib << 20)?;
        }
        Ok(path)
    }

    /// A LUKS image with AES-256-XTS, QEMU's nearest equivalent of nightshift's xts backend.
    pub fn luks(&self, name: &str) -> anyhow::Result<PathBuf> {
        let path = self.dir.path().join(format!("{name}.luks"));
        // qemu-img times its key derivation and fails now and then on a busy
        // host ("Unable to get accurate CPU usage"): try a few times.
        let mut last_err = String::new();
        for _ in 0..20 {
            if path.exists() {
                return Ok(path);
            }
            let out = Command::new("qemu-img")
                .args(["create", "-q", "-f", "luks", "--object"])
                .arg(format!("secret,id=sec0,data={LUKS_SECRET}"))
                .args([
                    "-o",
                    "key-secret=sec0,cipher-alg=aes-256,cipher-mode=xts,iter-time=50",
                ])
                .arg(&path)
                .arg(format!("{}M", self.mib))
                .output()
                .context("running qemu-img")?;
            if out.status.success() {
                return Ok(path);
            }
            last_err = String::from_utf8_lossy(&out.stderr).trim().to_string();
            let _ = std::fs::remove_file(&path);
        }
        bail!("qemu-img could not create a LUKS image: {last_err}")
    }
}

/// A started VM process; its output is read by two threads so it never
/// blocks on a full pipe (stdout also line by line, for the network driver).
struct Launched {
    role: &'static str,
    child: Child,
    started: Instant,
    stdout: JoinHandle<String>,
    console: Option<mpsc::Receiver<String>>,
    stderr: JoinHandle<String>,
    report: Option<PathBuf>,
    pin_qemu: Option<Vec<usize>>,
}

/// A network scenario's namespace and the host's side of its traffic.
#[derive(Clone, Copy)]
pub struct NetRun<'a> {
    pub ns: &'a Netns,
    pub load: NetLoad,
}

/// Runs `vms` together under `variant` (driving `net`'s traffic to the VM with a net
/// device) and returns each VM's outcome.
pub fn run_vms(
    exe: &Path,
    variant: &Variant,
    vms: &[VmSpec],
    params: &Params,
    images: &Images,
    net: Option<NetRun<'_>>,
) -> anyhow::Result<Vec<VmOutcome>> {
    let tmp = tempfile::tempdir()?;
    let ns = net.map(|n| n.ns);
    if let Some(ns) = ns {
        ns.flush_neighbours()?;
    }
    let mut launched = Vec::new();
    for (i, vm) in vms.iter().enumerate() {
        let ns = if vm.net {
            Some(ns.context("a VM with a net device needs the bench's namespace")?)
        } else {
            None
        };
        let l = match variant {
            Variant::Nightshift { .. } => {
                let report = tmp.path().join(format!("report{i}.json"));
                launch_nightshift(exe, variant, vm, params, images, report, ns)?
            }
            Variant::Qemu { iothread } => launch_qemu(*iothread, vm, params, images, ns)?,
        };
        launched.push(l);
        // Pin QEMU's vCPUs as soon as they exist (nightshift pins its own),
        // before the next VM starts.
        let l = launched.last_mut().expect("just pushed");
        if let Some(pins) = &l.pin_qemu {
            if let Err(e) = pin_qemu_vcpus(l.child.id(), pins) {
                kill_all(&mut launched);
                return Err(e);
            }
        }
    }
    let pids: Vec<u32> = launched.iter().map(|l| l.child.id()).collect();
    let host0 = HostCpu::now();
    let sampler = Sampler::start(&pids, Duration::from_millis(2));
    let mut net_outcome = None;
    if let Some(n) = net {
        match drive_net(n, &mut launched, vms, params) {
            Ok(o) => net_outcome = Some(o),
            Err(e) => {
                kill_all(&mut launched);
                let _ = sampler.finish();
                let out: Vec<String> = launched
                    .into_iter()
                    .map(|l| {
                        let out = l.stdout.join().unwrap_or_default();
                        let err = l.stderr.join().unwrap_or_default();
                        format!("{} VM:\n{out}{err}", l.role)
                    })
                    .collect();
                return Err(e.context(format!(
                    "network traffic under {} failed; output:\n{}",
                    variant.label(),
                    out.join("\n")
                )));
            }
        }
    }
    let deadline = Instant::now() + Duration::from_millis(params.ms * 4 + 30_000);
    let mut statuses = Vec::new();
    for l in &mut launched {
        statuses.push(wait_until(&mut l.child, deadline)?);
    }
    let mut cpu = sampler.finish();
    let vmm_cpu_s: f64 = cpu.values().flat_map(|c| c.cpu_s.values()).sum();
    let background_cores = host0.and_then(|h| h.others_since(vmm_cpu_s));
    launched
        .into_iter()
        .zip(statuses)
        .zip(vms)
        .map(|((l, ok), vm)| {
            let pid = l.child.id();
            let mut out = l.stdout.join().unwrap_or_default();
            if !ok {
                out.push_str(&l.stderr.join().unwrap_or_default());
            }
            let results = super::parse::records(&out, "result ");
            if !ok || results.is_empty() {
                bail!(
                    "{} VM of variant {} failed; its output:\n{out}",
                    l.role,
                    variant.label()
                );
            }
            let report = match &l.report {
                Some(p) => Some(serde_json::from_str(&std::fs::read_to_string(p)?)?),
                None => None,
            };
            Ok(VmOutcome {
                role: l.role,
                results,
                report,
                cpu: cpu.remove(&pid).unwrap_or_default(),
                net: if vm.net { net_outcome.take() } else { None },
                background_cores,
            })
        })
        .collect()
}

/// Drives the traffic of `net` to the (one) VM with a net device.
fn drive_net(
    net: NetRun<'_>,
    launched: &mut [Launched],
    vms: &[VmSpec],
    params: &Params,
) -> anyhow::Result<NetOutcome> {
    let (l, vm) = launched
        .iter_mut()
        .zip(vms)
        .find(|(_, vm)| vm.net)
        .context("a network scenario without a VM with a net device")?;
    let console = l.console.take().context("the console was taken")?;
    let computing = vm.cmdline.contains("workload=compute");
    netload::drive(net.ns, &net.load, console, l.started, params.ms, computing)
}

fn kill_all(launched: &mut [Launched]) {
    for l in launched {
        let _ = l.child.kill();
        let _ = l.child.wait();
    }
}

fn launch_nightshift(
    exe: &Path,
    variant: &Variant,
    vm: &VmSpec,
    params: &Params,
    images: &Images,
    report: PathBuf,
    ns: Option<&Netns>,
) -> anyhow::Result<Launched> {
    let Variant::Nightshift {
        policy,
        halt_poll_ns,
        cpu_cap,
        irqchip,
        io_wait,
    } = variant
    else {
        unreachable!("called for nightshift variants only");
    };
    let mut cmd = match ns {
        Some(ns) => ns.command(exe),
        None => Command::new(exe),
    };
    cmd.arg("run")
        .args([
            "--vcpus",
            &vm.vcpus.to_string(),
            "--mem",
            "256",
            "--policy",
            policy,
            "--irqchip",
            irqchip,
        ])
        .args(["--cmdline", &vm.cmdline])
        .arg("--report")
        .arg(&report);
    for (v, cpu) in vm.pins.iter().enumerate() {
        cmd.args(["--pin", &format!("{v}={cpu}")]);
    }
    for d in 0..vm.disks {
        let mut disk = images
            .raw(&format!("{}{d}", vm.role))?
            .display()
            .to_string();
        if params.xts_passes > 0 {
            disk.push_str(&format!(",xts={}", params.xts_passes * vm.xts_factor));
        }
        if let Some(n) = vm.scrub_passes {
            disk.push_str(&format!(",scrub={n}"));
        }
        cmd.arg("--disk").arg(disk);
    }
    if ns.is_some() {
        cmd.args(["--net", &format!("tap={TAP},mac={GUEST_MAC}")]);
    }
    if let Some(ns) = halt_poll_ns {
        cmd.args(["--halt-poll-ns", &ns.to_string()]);
    }
    if let Some(c) = cpu_cap {
        cmd.args(["--cpu-cap", &c.to_string()]);
    }
    if !io_wait {
        cmd.args(["--io-wait-us", "0"]);
    }
    spawn(cmd, vm.role, Some(report), None)
}

fn launch_qemu(
    iothread: bool,
    vm: &VmSpec,
    params: &Params,
    images: &Images,
    ns: Option<&Netns>,
) -> anyhow::Result<Launched> {
    const QEMU: &str = "qemu-system-x86_64";
    let mut cmd = match ns {
        Some(ns) => ns.command(QEMU),
        None => Command::new(QEMU),
    };
    cmd.args([
        "-M",
        "microvm",
        "-enable-kvm",
        "-cpu",
        "host,-arch-capabilities,+invtsc",
    ])
    .args(["-smp", &vm.vcpus.to_string(), "-m", "256M"])
    .args([
        "-nodefaults",
        "-no-user-config",
        "-nographic",
        "-serial",
        "stdio",
    ])
    .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=4"])
    // Named threads ("CPU 0/KVM", "IO io0", "worker") for pinning and accounting.
    .args(["-name", "peer,debug-threads=on"])
    .args(["-global", "virtio-mmio.force-legacy=false"])
    .arg("-kernel")
    .arg(env!("NIGHTSHIFT_TESTGUEST_ELF"))
    .args(["-append", &vm.cmdline]);
    if vm.disks > 0 && params.xts_passes > 0 {
        cmd.args(["-object", &format!("secret,id=sec0,data={LUKS_SECRET}")]);
    }
    if vm.disks > 0 && iothread {
        cmd.args(["-object", "iothread,id=io0"]);
    }
    for d in 0..vm.disks {
        let name = format!("{}{d}", vm.role);
        let drive = if params.xts_passes > 0 {
            let img = images.luks(&name)?;
            format!(
                "id=d{d},if=none,driver=luks,key-secret=sec0,file.filename={}",
                img.display()
            )
        } else {
            format!(
                "id=d{d},if=none,format=raw,file={}",
                images.raw(&name)?.display()
            )
        };
        cmd.args(["-drive", &drive]);
        let iothread = if iothread { ",iothread=io0" } else { "" };
        cmd.args([
            "-device",
            &format!("virtio-blk-device,drive=d{d}{iothread}"),
        ]);
    }
    if ns.is_some() {
        // The same device as nightshift's: virtio-net on the tap (no vhost here).
        cmd.arg("-netdev")
            .arg(format!("tap,id=n0,ifname={TAP},script=no,downscript=no"))
            .args([
                "-device",
                &format!("virtio-net-device,netdev=n0,mac={GUEST_MAC}"),
            ]);
    }
    spawn(cmd, vm.role, None, Some(vm.pins.clone()))
}

fn spawn(
    mut cmd: Command,
    role: &'static str,
    report: Option<PathBuf>,
    pin_qemu: Option<Vec<usize>>,
) -> anyhow::Result<Launched> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {:?}", cmd.get_program()))?;
    let started = Instant::now();
    let mut err = child.stderr.take().expect("piped");
    let stderr = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let out = child.stdout.take().expect("piped");
    let (tx, console) = mpsc::channel();
    let stdout = std::thread::spawn(move || {
        let mut s = String::new();
        let mut out = BufReader::new(out);
        let mut raw = Vec::new();
        // Bytes, not `lines()`: one bad UTF-8 byte must not stop the draining.
        while out.read_until(b'\n', &mut raw).is_ok_and(|n| n > 0) {
            let line = String::from_utf8_lossy(&raw)
                .trim_end_matches('\n')
                .to_string();
            raw.clear();
            s.push_str(&line);
            s.push('\n');
            // Nobody listens once the network driver is done (or for other VMs).
            let _ = tx.send(line);
        }
        s
    });
    Ok(Launched {
        role,
        child,
        started,
        stdout,
        console: Some(console),
        stderr,
        report,
        pin_qemu,
    })
}

/// Pins QEMU's vCPU threads ("CPU n/KVM") as nightshift pins its own.
fn pin_qemu_vcpus(pid: u32, pins: &[usize]) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut pinned = vec![false; pins.len()];
    while pinned.iter().any(|p| !p) {
        if Instant::now() > deadline {
            bail!("QEMU's vCPU threads did not appear");
        }
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            bail!("QEMU exited before its vCPU threads could be pinned");
        };
        for task in tasks.flatten() {
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            let Some(n) = comm
                .trim()
                .strip_prefix("CPU ")
                .and_then(|s| s.strip_suffix("/KVM"))
                .and_then(|s| s.parse::<usize>().ok())
            else {
                continue;
            };
            if n < pins.len() && !pinned[n] {
                let tid: i32 = task.file_name().to_string_lossy().parse()?;
                set_affinity(tid, pins[n])?;
                pinned[n] = true;
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

fn set_affinity(tid: i32, cpu: usize) -> anyhow::Result<()> {
    let list: vmm::config::CpuList = cpu.to_string().parse()?;
    // Reuse the VMM's pinning for another thread: sched_setaffinity(tid).
    vmm::vcpu::pin_thread(tid, &list).with_context(|| format!("pinning thread {tid}"))
}

/// Waits for a child (killing it at `deadline`); returns whether it exited as expected.
fn wait_until(child: &mut Child, deadline: Instant) -> anyhow::Result<bool> {
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    // nightshift exits 0; QEMU's isa-debug-exit turns status 0 into 1.
    Ok(status.is_some_and(|s| matches!(s.code(), Some(0) | Some(1))))
}
