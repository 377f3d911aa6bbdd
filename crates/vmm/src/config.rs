//! What a VM is made of, as the command line and JSON config files describe it.
//!
//! [`VmConfig`] is the one description of a VM's options: its fields are the
//! JSON config's, and (with the `cli` feature) `nightshift run`'s flags, which
//! [`flags`] lays over a config file. [`VmConfig::validate`] checks the result,
//! wherever it came from.

#[cfg(feature = "cli")]
pub mod flags;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use crate::cpuid::CpuFeature;
use crate::image::FileId;
use crate::memory::MIN_MEM_SIZE;
use crate::output_file::Protected;
use crate::seccomp::SeccompMode;

/// Most vCPUs we create; the MADT and APIC IDs are 8-bit.
pub const MAX_VCPUS: u8 = 254;
/// Most disks: one IOAPIC line each, GSIs 5 to 23.
pub const MAX_DISKS: usize = 19;
/// Most virtio devices of all kinds (disks, nets, rng): one IOAPIC line each.
pub const MAX_VIRTIO_DEVICES: usize = 19;
/// Most AES-XTS cipher passes per sector (a benchmark cost knob).
pub const MAX_XTS_PASSES: u32 = 1000;
/// Most device-work threads.
pub const MAX_WORKERS: usize = 256;

/// Everything needed to build and boot one VM.
///
/// This one declaration is both the JSON config's fields and `nightshift run`'s
/// flags (with the `cli` feature, see [`flags`]): a field's doc comment is its
/// flag's help, its `Default` value is the flag's default, and its `FromStr` is
/// the flag's parser. The flag's name is the field's, in kebab case, unless
/// `long = ...` says otherwise.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
#[serde(deny_unknown_fields, default)]
pub struct VmConfig {
    /// Kernel to boot: a PVH ELF or a bzImage [default: the built-in test guest].
    #[cfg_attr(feature = "cli", arg(long, value_name = "FILE"))]
    pub kernel: Option<PathBuf>,
    /// Kernel command line.
    #[cfg_attr(feature = "cli", arg(long, default_value_t, hide_default_value = true))]
    pub cmdline: String,
    /// Number of vCPUs.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = VmConfig::default().vcpus))]
    pub vcpus: u8,
    /// Guest memory in MiB.
    #[cfg_attr(
        feature = "cli",
        arg(long = "mem", value_name = "MIB", default_value_t = VmConfig::default().mem_mib)
    )]
    pub mem_mib: u64,
    /// Pin a vCPU's thread to host CPUs: VCPU=CPULIST, e.g. 0=0 or 1=2-3
    /// (JSON: {"0": "0", "1": "2-3"}). Repeatable; one entry per vCPU, the
    /// last one given wins.
    #[cfg_attr(feature = "cli", arg(long, value_name = "VCPU=CPULIST", value_parser = parse_pin))]
    #[serde(with = "pin_map")]
    pub pin: Vec<(u8, CpuList)>,
    /// Also write the serial console to this file. Never a disk image or
    /// kernel of this VM; an existing non-empty file needs --overwrite.
    #[cfg_attr(feature = "cli", arg(long, value_name = "FILE"))]
    pub serial_file: Option<PathBuf>,
    /// Let the serial file and the report replace an existing non-empty file
    /// (never a disk image or kernel of this VM).
    #[cfg_attr(feature = "cli", arg(long))]
    pub overwrite: bool,
    /// Per-thread seccomp filters: enforce (a forbidden system call ends the
    /// VM, named), log (allowed and logged by the kernel) or off.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = VmConfig::default().seccomp))]
    pub seccomp: SeccompMode,
    /// Show MONITOR/MWAIT in the guest's CPUID (hidden by default).
    #[cfg_attr(feature = "cli", arg(long))]
    pub expose_mwait: bool,
    /// A virtio-blk disk: `PATH[,ro][,xts=PASSES][,scrub=PASSES]` (JSON: {"path":
    /// ..., "read_only": ..., "xts_passes": ..., "scrub_passes": ...}).
    /// Repeatable; the guest sees them in this order.
    #[cfg_attr(
        feature = "cli",
        arg(long = "disk", value_name = "PATH[,ro][,xts=N][,scrub=N]")
    )]
    pub disks: Vec<DiskConfig>,
    /// A virtio-net device on a host tap, after the disks: tap=NAME[,mac=MAC]
    /// (JSON: {"tap": ..., "mac": ...}). Repeatable.
    #[cfg_attr(feature = "cli", arg(long = "net", value_name = "tap=NAME[,mac=MAC]"))]
    pub nets: Vec<NetConfig>,
    /// A virtio-rng device (after the nets), fed by the host's getrandom.
    #[cfg_attr(feature = "cli", arg(long))]
    pub rng: bool,
    /// Where device work runs.
    #[cfg_attr(feature = "cli", command(flatten))]
    pub work: WorkConfig,
    /// Halt polling per halt, at most this many ns (0: off): KVM's under the
    /// kernel irqchip, the vCPU thread's own (the same adaptive algorithm)
    /// under the user irqchip [default: the host's KVM parameter].
    #[cfg_attr(feature = "cli", arg(long, value_name = "NS"))]
    pub halt_poll_ns: Option<u32>,
    /// Who emulates the interrupt controllers: kernel (KVM's in-kernel
    /// irqchip) or user (nightshift's; guest HLTs exit to the vCPU thread,
    /// which then runs device work at once).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = VmConfig::default().irqchip))]
    pub irqchip: crate::irqchip::IrqChipKind,
    /// Initial ramdisk for the kernel (a PVH module, or the bzImage's ramdisk).
    #[cfg_attr(feature = "cli", arg(long, value_name = "FILE"))]
    pub initrd: Option<PathBuf>,
    /// Hide CPU features from the guest's CPUID: xsave, cx16 (comma-separated
    /// or repeated). PVM hosts cannot emulate them in guest kernel mode.
    #[cfg_attr(
        feature = "cli",
        arg(
            long = "hide-cpu-feature",
            value_name = "FEATURE",
            value_delimiter = ','
        )
    )]
    pub hide_cpu_features: Vec<CpuFeature>,
    /// Serial console input: stdin (raw mode on a terminal; Ctrl-A x quits)
    /// or none. The default is stdin on the command line without --config,
    /// none in a JSON config file.
    #[cfg_attr(
        feature = "cli",
        arg(long = "console-in", value_name = "INPUT", default_value_t = ConsoleIn::Stdin)
    )]
    pub console_input: ConsoleIn,
    /// Most console output copied to the serial file, MiB.
    #[cfg_attr(
        feature = "cli",
        arg(long, value_name = "MIB", default_value_t = VmConfig::default().serial_file_limit_mib)
    )]
    pub serial_file_limit_mib: u64,
}

/// Where the serial console's input comes from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConsoleIn {
    /// No input.
    #[default]
    None,
    /// The VMM's stdin (raw mode on a terminal; Ctrl-A x quits).
    Stdin,
}

impl fmt::Display for ConsoleIn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ConsoleIn::None => "none",
            ConsoleIn::Stdin => "stdin",
        })
    }
}

impl FromStr for ConsoleIn {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(ConsoleIn::None),
            "stdin" => Ok(ConsoleIn::Stdin),
            _ => Err(format!(
                "unknown console input {s:?} (expected stdin or none)"
            )),
        }
    }
}

/// One virtio-blk disk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    /// Raw image file.
    pub path: PathBuf,
    /// Refuse guest writes.
    #[serde(default)]
    pub read_only: bool,
    /// Encrypt sectors with AES-256-XTS, running the cipher this many times
    /// per sector (a cost knob for benchmarks); `None` stores plain data.
    #[serde(default)]
    pub xts_passes: Option<u32>,
    /// Run this many background scrub passes over the image (idle-priority
    /// maintenance work) while the VM runs.
    #[serde(default)]
    pub scrub_passes: Option<u64>,
}

impl FromStr for DiskConfig {
    type Err = String;

    /// `PATH[,ro][,xts=PASSES][,scrub=PASSES]`, e.g. `disk.img,ro` or `disk.img,xts=4`.
    fn from_str(s: &str) -> Result<Self, String> {
        let mut parts = s.split(',');
        let path = parts
            .next()
            .filter(|p| !p.is_empty())
            .ok_or("empty disk path")?;
        let mut disk = DiskConfig {
            path: path.into(),
            read_only: false,
            xts_passes: None,
            scrub_passes: None,
        };
        for opt in parts {
            match opt.split_once('=') {
                None if opt == "ro" => disk.read_only = true,
                Some(("xts", n)) => {
                    // The range is checked by `VmConfig::validate`, for flags and JSON alike.
                    let n: u32 = n.parse().map_err(|_| format!("bad xts passes {n:?}"))?;
                    disk.xts_passes = Some(n);
                }
                Some(("scrub", n)) => {
                    let n: u64 = n.parse().map_err(|_| format!("bad scrub passes {n:?}"))?;
                    disk.scrub_passes = Some(n);
                }
                _ => {
                    return Err(format!(
                        "unknown disk option {opt:?} (expected ro, xts=N or scrub=N)"
                    ))
                }
            }
        }
        Ok(disk)
    }
}

/// One virtio-net device on a host tap.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    /// The tap interface (opened, or created if this process may).
    pub tap: String,
    /// The guest's MAC address; `None`: 52:54:00:12:34:56 plus the device's index.
    #[serde(default)]
    pub mac: Option<MacAddr>,
}

impl FromStr for NetConfig {
    type Err = String;

    /// `tap=NAME[,mac=MAC]`, e.g. `tap=tap0,mac=52:54:00:00:00:01`.
    fn from_str(s: &str) -> Result<Self, String> {
        let mut tap = None;
        let mut mac = None;
        for opt in s.split(',') {
            match opt.split_once('=') {
                Some(("tap", name)) if !name.is_empty() => tap = Some(name.to_string()),
                Some(("mac", m)) => mac = Some(m.parse()?),
                _ => {
                    return Err(format!(
                        "unknown net option {opt:?} (expected tap=NAME or mac=MAC)"
                    ))
                }
            }
        }
        Ok(NetConfig {
            tap: tap.ok_or("a net device needs tap=NAME")?,
            mac,
        })
    }
}

/// A MAC address, written `52:54:00:12:34:56`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MacAddr(pub [u8; 6]);

impl FromStr for MacAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let err =
            || format!("bad MAC address {s:?}: expected six hex bytes, e.g. 52:54:00:12:34:56");
        let mut mac = [0u8; 6];
        let mut parts = s.split(':');
        for b in &mut mac {
            let p = parts.next().filter(|p| p.len() == 2).ok_or_else(err)?;
            *b = u8::from_str_radix(p, 16).map_err(|_| err())?;
        }
        if parts.next().is_some() {
            return Err(err());
        }
        if mac[0] & 1 != 0 {
            return Err(format!("MAC address {s:?} is a multicast address"));
        }
        Ok(MacAddr(mac))
    }
}

impl TryFrom<String> for MacAddr {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<MacAddr> for String {
    fn from(m: MacAddr) -> String {
        m.to_string()
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// Where and how device work runs (the idlework engine's settings). Flattened
/// into the flags of [`VmConfig`]; `work` in the JSON config.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
#[serde(deny_unknown_fields, default)]
pub struct WorkConfig {
    /// Where device work runs: workers (device threads only, as today's VMMs),
    /// inline (on the vCPU thread at the notify exit) or idle (idle vCPUs first).
    #[cfg_attr(feature = "cli", arg(long, default_value = WorkConfig::default().policy.name()))]
    #[serde(with = "policy_name")]
    pub policy: idlework::Policy,
    /// Device-work threads.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = WorkConfig::default().workers))]
    pub workers: usize,
    /// Time an idle vCPU may spend on device work before re-entering its guest, µs.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = WorkConfig::default().budget_us))]
    pub budget_us: u64,
    /// Age after which normal work goes to a worker even if a vCPU was kicked, µs.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = WorkConfig::default().deadline_us))]
    pub deadline_us: u64,
    /// At most this many non-vCPU threads run device work at once [default: no
    /// cap]. Under idle, 0 keeps the VM within its vCPUs: only vCPU threads run
    /// device work, idle ones first, and work past its deadline makes a busy
    /// vCPU take it (instead of a worker); with pinned vCPUs the VMM's other
    /// threads are kept on the vCPUs' CPUs as well.
    #[cfg_attr(feature = "cli", arg(long, value_name = "THREADS"))]
    pub cpu_cap: Option<usize>,
    /// While work waits for an idle vCPU, look for one this often, µs (0: only
    /// vCPUs idle at submit time are used).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = WorkConfig::default().idle_poll_us))]
    pub idle_poll_us: u64,
    /// Under idle, a vCPU that queued work on an exit looks at its own guest
    /// this soon after, and runs the work if the guest has halted, µs (0: off).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = WorkConfig::default().self_kick_us))]
    pub self_kick_us: u64,
    /// How queue notifications arrive: ioeventfd (KVM completes the guest's
    /// write in the kernel and a notifier thread submits the requests) or exit
    /// (the write exits to the vCPU thread, which submits them) [default: exit
    /// under inline (the work runs there); under idle with `--io-wait-us` on,
    /// exit for the devices whose driver waits for what it asks (block, rng:
    /// a vCPU that waits for its I/O serves it on that exit) and ioeventfd for
    /// the others (net); ioeventfd otherwise (measured on PVM hosts: lower
    /// latency than bare exits under idle, and for net streams far fewer
    /// notifications than serving each transmit at its exit, docs/results)].
    #[cfg_attr(feature = "cli", arg(long, value_name = "PATH"))]
    pub notify: Option<NotifyPath>,
    /// Under idle, for notifications that exit: a vCPU whose guest halted, or
    /// notified again, within this many µs of its previous notify is taken to
    /// wait for its I/O, and runs the work of its next notify at once, on that
    /// exit (0: never; work then waits for the guest's halt), µs.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = WorkConfig::default().io_wait_us))]
    pub io_wait_us: u64,
}

/// How a virtqueue notification reaches the VMM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NotifyPath {
    /// An ioeventfd and the notifier thread.
    Ioeventfd,
    /// The vCPU's MMIO exit.
    Exit,
}

impl FromStr for NotifyPath {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ioeventfd" => Ok(NotifyPath::Ioeventfd),
            "exit" => Ok(NotifyPath::Exit),
            _ => Err(format!(
                "unknown notify path {s:?} (expected ioeventfd or exit)"
            )),
        }
    }
}

impl WorkConfig {
    /// How soon after a notify the guest must halt or notify again to be
    /// served at its next notify (see `io_wait_us`): zero unless the policy
    /// is idle and some notifications exit to the vCPU thread.
    pub fn io_wait(&self) -> std::time::Duration {
        let paths = self.notify_paths();
        let exits = paths.driver_waits == NotifyPath::Exit || paths.other == NotifyPath::Exit;
        if self.policy == idlework::Policy::Idle && exits {
            std::time::Duration::from_micros(self.io_wait_us)
        } else {
            std::time::Duration::ZERO
        }
    }

    /// The notification paths in force.
    pub fn notify_paths(&self) -> NotifyPaths {
        let base = self.notify.unwrap_or(match self.policy {
            idlework::Policy::Workers | idlework::Policy::Idle => NotifyPath::Ioeventfd,
            idlework::Policy::Inline => NotifyPath::Exit,
        });
        let serve_at_exit =
            self.notify.is_none() && self.policy == idlework::Policy::Idle && self.io_wait_us > 0;
        NotifyPaths {
            driver_waits: if serve_at_exit {
                NotifyPath::Exit
            } else {
                base
            },
            other: base,
        }
    }
}

/// How each kind of device is notified (see [`WorkConfig::notify`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NotifyPaths {
    /// Devices whose driver waits for what it asks (block, rng).
    pub driver_waits: NotifyPath,
    /// The others (net: a transmit is not waited for).
    pub other: NotifyPath,
}

impl NotifyPaths {
    /// The path for a device, by whether its driver waits for its requests
    /// ([`VirtioDevice::driver_waits`](crate::virtio::VirtioDevice::driver_waits)).
    pub fn for_device(&self, driver_waits: bool) -> NotifyPath {
        if driver_waits {
            self.driver_waits
        } else {
            self.other
        }
    }
}

impl Default for WorkConfig {
    fn default() -> Self {
        WorkConfig {
            policy: idlework::Policy::Idle,
            workers: 2,
            budget_us: 200,
            deadline_us: 1000,
            cpu_cap: None,
            idle_poll_us: 50,
            self_kick_us: 0,
            notify: None,
            io_wait_us: 100,
        }
    }
}

/// `pin` in JSON: a map from vCPU index to CPU list, `{"0": "0", "1": "2-3"}`.
/// Read into a list sorted by vCPU, one entry each (a key given twice: the
/// last one).
mod pin_map {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serializer};

    use super::CpuList;

    pub fn serialize<S: Serializer>(pins: &[(u8, CpuList)], s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(pins.iter().map(|(vcpu, cpus)| (vcpu, cpus)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(u8, CpuList)>, D::Error> {
        Ok(BTreeMap::<u8, CpuList>::deserialize(d)?
            .into_iter()
            .collect())
    }
}

mod policy_name {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(p: &idlework::Policy, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(p.name())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<idlework::Policy, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl Default for VmConfig {
    fn default() -> Self {
        VmConfig {
            kernel: None,
            cmdline: String::new(),
            vcpus: 2,
            mem_mib: 256,
            pin: Vec::new(),
            serial_file: None,
            overwrite: false,
            seccomp: SeccompMode::default(),
            expose_mwait: false,
            disks: Vec::new(),
            nets: Vec::new(),
            rng: false,
            work: WorkConfig::default(),
            halt_poll_ns: None,
            irqchip: crate::irqchip::IrqChipKind::Kernel,
            initrd: None,
            hide_cpu_features: Vec::new(),
            console_input: ConsoleIn::None,
            serial_file_limit_mib: crate::devices::console::DEFAULT_FILE_LIMIT >> 20,
        }
    }
}

/// A configuration that cannot describe a VM.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// vCPU count out of range.
    #[error("vcpus must be between 1 and {MAX_VCPUS}, not {0}")]
    Vcpus(u8),
    /// Memory too small or too large for this host's address width.
    #[error("memory must be between {min} MiB and 1 TiB, not {0} MiB", min = MIN_MEM_SIZE >> 20)]
    Memory(u64),
    /// More disks than interrupt lines for them.
    #[error("at most {MAX_DISKS} disks, not {0}")]
    Disks(usize),
    /// More virtio devices than interrupt lines for them.
    #[error("at most {MAX_VIRTIO_DEVICES} virtio devices (disks, nets, rng), not {0}")]
    Devices(usize),
    /// Two pin entries for one vCPU.
    #[error("--pin names vCPU {0} twice")]
    PinTwice(u8),
    /// A pin entry names a vCPU the VM does not have.
    #[error("--pin names vCPU {0}, but the VM has only {1} vCPUs")]
    PinVcpu(u8, u8),
    /// A pin entry names a host CPU this process may not run on (offline,
    /// absent, or outside its cpuset).
    #[error("--pin {vcpu}={cpus}: host CPU {cpu} is not one this process may run on (allowed: {allowed})")]
    PinCpu {
        /// The vCPU.
        vcpu: u8,
        /// Its CPU list as given.
        cpus: CpuList,
        /// The first CPU that is not allowed.
        cpu: usize,
        /// The CPUs this process may use.
        allowed: CpuList,
    },
    /// A disk's cipher pass count out of range.
    #[error("disk {disk}: xts passes must be 1..={MAX_XTS_PASSES}, not {passes}")]
    XtsPasses {
        /// Disk index.
        disk: usize,
        /// The count given.
        passes: u32,
    },
    /// A disk's scrub pass count of 0 (omit it for no scrub).
    #[error("disk {0}: scrub passes must be at least 1 (omit scrub for none)")]
    ScrubPasses(usize),
    /// No worker threads where the policy needs them, or absurdly many.
    #[error("workers must be 1..={MAX_WORKERS} under the {policy} policy, not {workers}")]
    Workers {
        /// The count given.
        workers: usize,
        /// The policy.
        policy: &'static str,
    },
}

impl VmConfig {
    /// Guest RAM in bytes.
    pub fn mem_size(&self) -> u64 {
        self.mem_mib << 20
    }

    /// Checks everything that can be checked before building the VM, for the
    /// command line and JSON configs alike (the CLI builds a `VmConfig` and
    /// `Vm::new` calls this). The only host facts used are the CPUs this
    /// process may run on; files are checked when they are opened.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return Err(ConfigError::Vcpus(self.vcpus));
        }
        if self.mem_mib < MIN_MEM_SIZE >> 20 || self.mem_mib > 1 << 20 {
            return Err(ConfigError::Memory(self.mem_mib));
        }
        if let Some(&(vcpu, _)) = self.pin.iter().find(|(v, _)| *v >= self.vcpus) {
            return Err(ConfigError::PinVcpu(vcpu, self.vcpus));
        }
        for (i, (vcpu, _)) in self.pin.iter().enumerate() {
            if self.pin[..i].iter().any(|(v, _)| v == vcpu) {
                return Err(ConfigError::PinTwice(*vcpu));
            }
        }
        if self.disks.len() > MAX_DISKS {
            return Err(ConfigError::Disks(self.disks.len()));
        }
        let devices = self.disks.len() + self.nets.len() + usize::from(self.rng);
        if devices > MAX_VIRTIO_DEVICES {
            return Err(ConfigError::Devices(devices));
        }
        for (i, d) in self.disks.iter().enumerate() {
            if let Some(passes) = d.xts_passes.filter(|p| !(1..=MAX_XTS_PASSES).contains(p)) {
                return Err(ConfigError::XtsPasses { disk: i, passes });
            }
            if d.scrub_passes == Some(0) {
                return Err(ConfigError::ScrubPasses(i));
            }
        }
        self.work.validate()?;
        self.validate_pins(&allowed_cpus())
    }

    /// Every pinned CPU must be one this process may run on: pinning to an
    /// offline CPU would fail (or, under `cpu_cap` 0, silently confine the
    /// VMM's threads to fewer CPUs than asked).
    fn validate_pins(&self, allowed: &CpuList) -> Result<(), ConfigError> {
        for &(vcpu, ref cpus) in &self.pin {
            if let Some(&cpu) = cpus.cpus().iter().find(|c| !allowed.0.contains(c)) {
                return Err(ConfigError::PinCpu {
                    vcpu,
                    cpus: cpus.clone(),
                    cpu,
                    allowed: allowed.clone(),
                });
            }
        }
        Ok(())
    }

    /// The host CPUs vCPU `vcpu`'s thread is pinned to, if any.
    pub fn pin_of(&self, vcpu: u8) -> Option<&CpuList> {
        self.pin
            .iter()
            .find(|(v, _)| *v == vcpu)
            .map(|(_, cpus)| cpus)
    }

    /// The files this VM reads, which no output may be.
    pub fn protected_files(&self) -> Vec<Protected> {
        let disks = self.disks.iter().map(|d| ("a disk image", &d.path));
        let kernel = self.kernel.iter().map(|k| ("the kernel", k));
        disks
            .chain(kernel)
            .filter_map(|(what, path)| {
                Some(Protected {
                    what,
                    id: FileId::of_path(path)?,
                })
            })
            .collect()
    }
}

impl WorkConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let needs_workers = self.policy != idlework::Policy::Inline;
        if self.workers > MAX_WORKERS || (needs_workers && self.workers == 0) {
            return Err(ConfigError::Workers {
                workers: self.workers,
                policy: self.policy.name(),
            });
        }
        Ok(())
    }
}

/// The CPUs this process may run on (its affinity mask, which excludes
/// offline CPUs and those outside its cpuset).
pub fn allowed_cpus() -> CpuList {
    // SAFETY: cpu_set_t is plain data; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid, writable cpu_set_t of the size passed.
    let ret = unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) };
    if ret != 0 {
        // Cannot tell: do not refuse pins on a guess.
        return CpuList((0..1024).collect());
    }
    // SAFETY: CPU_ISSET reads `set` in bounds for CPUs below CPU_SETSIZE (1024).
    CpuList(
        (0..1024)
            .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
            .collect(),
    )
}

/// A set of host CPUs written the way `taskset -c` and cgroups write it: `0-3,6`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CpuList(Vec<usize>);

impl CpuList {
    /// The CPUs, ascending, without duplicates.
    pub fn cpus(&self) -> &[usize] {
        &self.0
    }
}

/// A CPU list that does not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("bad CPU list {0:?}: expected e.g. \"0-3,6\" with CPUs below 1024")]
pub struct CpuListError(String);

impl FromStr for CpuList {
    type Err = CpuListError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || CpuListError(s.to_string());
        let cpu = |t: &str| -> Result<usize, CpuListError> {
            let n: usize = t.trim().parse().map_err(|_| err())?;
            if n < 1024 {
                Ok(n)
            } else {
                Err(err())
            }
        };
        let mut cpus = Vec::new();
        for part in s.split(',') {
            match part.split_once('-') {
                Some((a, b)) => {
                    let (a, b) = (cpu(a)?, cpu(b)?);
                    if a > b {
                        return Err(err());
                    }
                    cpus.extend(a..=b);
                }
                None => cpus.push(cpu(part)?),
            }
        }
        cpus.sort_unstable();
        cpus.dedup();
        Ok(CpuList(cpus))
    }
}

impl TryFrom<String> for CpuList {
    type Error = CpuListError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<CpuList> for String {
    fn from(l: CpuList) -> String {
        l.to_string()
    }
}

impl fmt::Display for CpuList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|c| c.to_string()).collect();
        f.write_str(&parts.join(","))
    }
}

/// Parses one `--pin` argument: `VCPU=CPULIST`, e.g. `0=0` or `1=2-3`.
pub fn parse_pin(s: &str) -> Result<(u8, CpuList), String> {
    let (vcpu, cpus) = s
        .split_once('=')
        .ok_or_else(|| format!("bad --pin {s:?}: expected VCPU=CPULIST, e.g. 0=0 or 1=2-3"))?;
    let vcpu = vcpu
        .trim()
        .parse()
        .map_err(|_| format!("bad --pin {s:?}: {vcpu:?} is not a vCPU index"))?;
    Ok((vcpu, cpus.parse().map_err(|e: CpuListError| e.to_string())?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_parse_like_taskset() {
        assert_eq!("0".parse::<CpuList>().unwrap().cpus(), &[0]);
        assert_eq!("3,0-1,1".parse::<CpuList>().unwrap().cpus(), &[0, 1, 3]);
        for bad in ["", "a", "2-1", "1-", "5000", "-1"] {
            assert!(bad.parse::<CpuList>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn pin_flag_parses() {
        let (v, l) = parse_pin("1=0-1").unwrap();
        assert_eq!((v, l.cpus()), (1, &[0usize, 1][..]));
        assert!(parse_pin("1").is_err());
        assert!(parse_pin("x=1").is_err());
    }

    #[test]
    fn validation_rejects_impossible_vms() {
        let ok = VmConfig::default();
        assert_eq!(ok.validate(), Ok(()));
        let c = VmConfig {
            vcpus: 0,
            ..ok.clone()
        };
        assert_eq!(c.validate(), Err(ConfigError::Vcpus(0)));
        let c = VmConfig {
            mem_mib: 1,
            ..ok.clone()
        };
        assert_eq!(c.validate(), Err(ConfigError::Memory(1)));
        let mut c = ok;
        c.pin.push((2, "0".parse().unwrap()));
        assert_eq!(c.validate(), Err(ConfigError::PinVcpu(2, 2)));
        c.pin = vec![(1, "0".parse().unwrap()), (1, "1".parse().unwrap())];
        assert_eq!(c.validate(), Err(ConfigError::PinTwice(1)));
    }

    #[test]
    fn disk_flag_parses() {
        let d: DiskConfig = "a.img,ro,xts=4".parse().unwrap();
        assert_eq!(
            (d.path.to_str(), d.read_only, d.xts_passes),
            (Some("a.img"), true, Some(4))
        );
        for bad in ["", ",ro", "a.img,rw", "a.img,xts=x"] {
            assert!(bad.parse::<DiskConfig>().is_err(), "{bad:?} parsed");
        }
    }

    /// One validation for flags and JSON: what the flag parser lets through
    /// and what a JSON file says are refused by the same check.
    #[test]
    fn disk_and_worker_limits_hold_for_flags_and_json_alike() {
        let flag = VmConfig {
            disks: vec!["a.img,xts=0".parse().unwrap()],
            ..VmConfig::default()
        };
        let json: VmConfig =
            serde_json::from_str(r#"{"disks":[{"path":"a.img","xts_passes":0}]}"#).unwrap();
        for c in [flag, json] {
            assert_eq!(
                c.validate(),
                Err(ConfigError::XtsPasses { disk: 0, passes: 0 })
            );
        }
        let json: VmConfig =
            serde_json::from_str(r#"{"disks":[{"path":"a.img","xts_passes":1001}]}"#).unwrap();
        assert!(json.validate().is_err());
        let json: VmConfig =
            serde_json::from_str(r#"{"disks":[{"path":"a.img","scrub_passes":0}]}"#).unwrap();
        assert_eq!(json.validate(), Err(ConfigError::ScrubPasses(0)));
        let json: VmConfig = serde_json::from_str(r#"{"work":{"workers":0}}"#).unwrap();
        assert!(matches!(json.validate(), Err(ConfigError::Workers { .. })));
        // Under inline no worker runs device work: 0 is fine.
        let json: VmConfig =
            serde_json::from_str(r#"{"work":{"workers":0,"policy":"inline"}}"#).unwrap();
        assert_eq!(json.validate(), Ok(()));
    }

    #[test]
    fn pins_to_cpus_the_process_cannot_use_are_refused() {
        let mut c = VmConfig::default();
        c.pin.push((0, "0".parse().unwrap()));
        let allowed: CpuList = "0-1".parse().unwrap();
        assert_eq!(c.validate_pins(&allowed), Ok(()));
        c.pin.push((1, "1-2".parse().unwrap()));
        let err = c.validate_pins(&allowed).unwrap_err();
        assert!(
            matches!(
                err,
                ConfigError::PinCpu {
                    vcpu: 1,
                    cpu: 2,
                    ..
                }
            ),
            "{err}"
        );
        // And the real host: CPU 1023 is not one this machine lets us use.
        c.pin[1] = (1, "1023".parse().unwrap());
        assert!(matches!(c.validate(), Err(ConfigError::PinCpu { .. })));
    }

    #[test]
    fn net_flag_parses() {
        let n: NetConfig = "tap=tap0,mac=52:54:00:0a:0B:0c".parse().unwrap();
        assert_eq!(n.tap, "tap0");
        assert_eq!(n.mac.unwrap().to_string(), "52:54:00:0a:0b:0c");
        assert_eq!("tap=t1".parse::<NetConfig>().unwrap().mac, None);
        for bad in [
            "",
            "tap=",
            "mac=52:54:00:00:00:01",
            "tap=t,mac=52:54:00:00:00",
            "tap=t,mac=01:00:00:00:00:00",
            "tap=t,x=1",
        ] {
            assert!(bad.parse::<NetConfig>().is_err(), "{bad:?} parsed");
        }
        let json =
            r#"{"nets":[{"tap":"tap0","mac":"52:54:00:00:00:07"},{"tap":"tap1"}],"rng":true}"#;
        let c: VmConfig = serde_json::from_str(json).unwrap();
        assert_eq!(
            (c.nets.len(), c.rng, c.nets[0].mac.unwrap().0[5]),
            (2, true, 7)
        );
        let mut c = c;
        c.disks = vec!["d.img".parse().unwrap(); 17];
        assert_eq!(c.validate(), Err(ConfigError::Devices(20)));
    }

    #[test]
    fn json_config_round_trips() {
        let json = r#"{"kernel":"k.elf","cmdline":"workload=idle","vcpus":1,"pin":{"0":"1"},
                       "disks":[{"path":"d.img","read_only":true}],"work":{"policy":"workers"},
                       "irqchip":"user"}"#;
        let c: VmConfig = serde_json::from_str(json).unwrap();
        assert_eq!(c.vcpus, 1);
        assert_eq!(c.mem_mib, 256);
        assert_eq!(c.pin_of(0).unwrap().cpus(), &[1]);
        assert_eq!(c.work.policy, idlework::Policy::Workers);
        assert!(c.disks[0].read_only);
        assert_eq!(c.irqchip, crate::irqchip::IrqChipKind::User);
        let back: VmConfig = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
        assert!(serde_json::from_str::<VmConfig>(r#"{"vcpu":1}"#).is_err());
        // Pins are read sorted by vCPU, one each.
        let c: VmConfig = serde_json::from_str(r#"{"vcpus":3,"pin":{"2":"0","0":"1"}}"#).unwrap();
        let vcpus: Vec<u8> = c.pin.iter().map(|(v, _)| *v).collect();
        assert_eq!(vcpus, [0, 2]);
    }
}
