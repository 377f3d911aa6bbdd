//! The guest command line: space-separated `key=value` words (see docs/guest-abi.md).
//!
//! Unknown words are ignored, so a VMM may add its own. A known key with an invalid value
//! keeps its default and produces a [`Warning`]; parsing never fails.

use core::fmt;

use crate::drivers_config::DriversConfig;
use crate::MAX_CPUS;

/// Most `virtio_mmio.device=` entries kept; further ones produce a warning.
pub const MAX_VIRTIO_MMIO_DEVICES: usize = 8;

/// Longest accepted `ms` (one hour).
pub const MAX_MS: u64 = 3_600_000;
/// Longest accepted `tick_us` (4 s: the LAPIC timer's 32-bit count at KVM's 1 GHz bus).
pub const MAX_TICK_US: u64 = 4_000_000;

/// What the guest runs once it is up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// Each CPU counts loop iterations for `ms` milliseconds (CPL3).
    Compute,
    /// Each CPU sleeps in `tick_us` steps on the LAPIC timer for `ms` milliseconds.
    Idle,
    /// Print the banner and exit with `status`.
    Exit,
    /// Execute `ud2` in CPL0: ends in a shutdown.
    Ud,
    /// Load an empty IDT and raise an exception: ends in a shutdown.
    TripleFault,
    /// Each CPU measures the cost of a service call and of a CPL0 instruction.
    Cpl0,
    /// Block I/O on a virtio-mmio block device (see [`BlkConfig`]).
    Blk,
    /// Power off through the ACPI sleep control register (S5).
    PowerOff,
    /// Reset through the i8042 (command 0xFE).
    Reset,
    /// Write 256 KiB of text to the serial port as fast as it goes, then exit 0.
    SerialFlood,
    /// ARP, ICMP echo, UDP echo and TCP services on a virtio-net device (virtio-drivers
    /// and smoltcp; see [`NetConfig`](crate::drivers_config::NetConfig)).
    Net,
    /// Reads a virtio-rng device (virtio-drivers).
    Rng,
}

impl Workload {
    const ALL: [Workload; 12] = [
        Workload::Compute,
        Workload::Idle,
        Workload::Exit,
        Workload::Ud,
        Workload::TripleFault,
        Workload::Cpl0,
        Workload::Blk,
        Workload::PowerOff,
        Workload::Reset,
        Workload::SerialFlood,
        Workload::Net,
        Workload::Rng,
    ];

    /// The command-line spelling.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Compute => "compute",
            Workload::Idle => "idle",
            Workload::Exit => "exit",
            Workload::Ud => "ud",
            Workload::TripleFault => "triplefault",
            Workload::Cpl0 => "cpl0",
            Workload::Blk => "blk",
            Workload::PowerOff => "poweroff",
            Workload::Reset => "reset",
            Workload::SerialFlood => "serialflood",
            Workload::Net => "net",
            Workload::Rng => "rng",
        }
    }

    /// Whether the workload is the BSP's alone (it ends the run instead of running on
    /// every CPU): `exit`, `ud`, `triplefault`, `poweroff`, `reset`.
    pub fn bsp_only(self) -> bool {
        matches!(
            self,
            Workload::Exit
                | Workload::Ud
                | Workload::TripleFault
                | Workload::PowerOff
                | Workload::Reset
                | Workload::SerialFlood
        )
    }

    fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|w| w.name() == name)
    }
}

/// A virtio-mmio device announced as `virtio_mmio.device=<size>@<base>:<irq>[:<id>]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtioMmioDevice {
    /// Guest-physical base of the register window.
    pub base: u64,
    /// Size of the register window in bytes.
    pub size: u64,
    /// Interrupt line (GSI).
    pub irq: u32,
}

/// `workload=`: one workload per CPU, CPU 0 first; CPUs beyond the list run its last entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Workloads {
    list: [Workload; MAX_CPUS],
    len: usize,
}

impl Workloads {
    /// Every CPU runs `w`.
    pub const fn single(w: Workload) -> Self {
        Self {
            list: [w; MAX_CPUS],
            len: 1,
        }
    }

    /// The workload of CPU `cpu` (0 = BSP).
    pub fn for_cpu(&self, cpu: usize) -> Workload {
        self.list[cpu.min(self.len - 1).min(MAX_CPUS - 1)]
    }

    /// The entries as given (at least one).
    pub fn as_slice(&self) -> &[Workload] {
        &self.list[..self.len]
    }

    /// Whether any of the first `cpus` CPUs runs `w`.
    pub fn any(&self, cpus: usize, w: Workload) -> bool {
        (0..cpus.max(1)).any(|cpu| self.for_cpu(cpu) == w)
    }
}

/// What a `blk` CPU does (`blk_mode=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlkMode {
    /// Random `blk_size`-aligned reads in the span.
    RandRead,
    /// Random `blk_size`-aligned writes of the data pattern in the span.
    RandWrite,
    /// Write the pattern over the span, flush, read it back and check it.
    WriteVerify,
    /// Read the span and check it holds the pattern.
    ReadVerify,
    /// Broken requests and register use, one case at a time; then a check that the device
    /// still works.
    Hostile,
    /// Sequence-numbered blocks written in order, a FLUSH after every `blk_burst` of them,
    /// each completed FLUSH reported (for kill -9 durability tests).
    SeqWrite,
}

impl BlkMode {
    const ALL: [BlkMode; 6] = [
        BlkMode::RandRead,
        BlkMode::RandWrite,
        BlkMode::WriteVerify,
        BlkMode::ReadVerify,
        BlkMode::Hostile,
        BlkMode::SeqWrite,
    ];

    /// The command-line spelling.
    pub fn name(self) -> &'static str {
        match self {
            BlkMode::RandRead => "randread",
            BlkMode::RandWrite => "randwrite",
            BlkMode::WriteVerify => "write-verify",
            BlkMode::ReadVerify => "read-verify",
            BlkMode::Hostile => "hostile",
            BlkMode::SeqWrite => "seq-write",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.name() == name)
    }

    /// Whether the mode covers the span once and checks the data (rather than running
    /// random requests for `blk_ops` or `ms`).
    pub fn is_verify(self) -> bool {
        matches!(self, BlkMode::WriteVerify | BlkMode::ReadVerify)
    }
}

/// How a `blk` CPU waits for completions (`blk_wait=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlkWait {
    /// Halt until the device interrupt (the default).
    Irq,
    /// Spin at CPL3 on the used ring; the device is asked not to interrupt.
    Poll,
}

impl BlkWait {
    /// The command-line spelling.
    pub fn name(self) -> &'static str {
        match self {
            BlkWait::Irq => "irq",
            BlkWait::Poll => "poll",
        }
    }
}

/// Largest `blk_size`.
pub const MAX_BLK_SIZE: u32 = 64 * 1024;
/// Largest `blk_qd`.
pub const MAX_BLK_QD: u16 = 32;
/// Largest `blk_qsize` (and the default queue size when the device allows it).
pub const MAX_BLK_QSIZE: u16 = 256;
/// Smallest `blk_qsize`: one request takes three descriptors, the hostile cases four.
pub const MIN_BLK_QSIZE: u16 = 4;
/// Bytes per virtio-blk sector.
pub const SECTOR: u64 = 512;

/// The `blk_*` keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlkConfig {
    /// `blk_mode=`.
    pub mode: BlkMode,
    /// `blk_ops=`: requests to complete; 0 = run for `ms` (random modes only).
    pub ops: u64,
    /// `blk_size=`: bytes per request, a multiple of 512, `512..=MAX_BLK_SIZE`.
    pub size: u32,
    /// `blk_qd=`: requests kept in flight, `1..=MAX_BLK_QD`.
    pub qd: u16,
    /// `blk_span=`: bytes of the disk used from offset 0; `None` = the default for the mode.
    pub span: Option<u64>,
    /// `blk_seed=`: data-pattern seed and random-offset seed.
    pub seed: u64,
    /// `blk_dev=`: index of the first virtio-mmio block device used.
    pub dev: usize,
    /// `blk_wait=`.
    pub wait: BlkWait,
    /// `blk_qsize=`: queue size (a power of two, `MIN_BLK_QSIZE..=MAX_BLK_QSIZE`); `None`
    /// = `min(QueueNumMax, MAX_BLK_QSIZE)`.
    pub qsize: Option<u16>,
    /// `blk_verify=1`: `randread` also checks the data pattern.
    pub verify: bool,
    /// `blk_burst=`: in the random modes, pause after every this many requests
    /// (0: never pause).
    pub burst: u64,
    /// `blk_think_us=`: how long each pause lasts (the CPU halts), µs.
    pub think_us: u64,
}

impl Default for BlkConfig {
    fn default() -> Self {
        Self {
            mode: BlkMode::RandRead,
            ops: 0,
            size: 4096,
            qd: 1,
            span: None,
            seed: 1,
            dev: 0,
            wait: BlkWait::Irq,
            qsize: None,
            verify: false,
            burst: 0,
            think_us: 0,
        }
    }
}

/// The parsed command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// `workload=`.
    pub workloads: Workloads,
    /// `ms=`: run time of the workload in milliseconds, `1..=MAX_MS`.
    pub ms: u64,
    /// `tick_us=`: LAPIC timer period of the `idle` workload, `1..=MAX_TICK_US`.
    pub tick_us: u64,
    /// `status=`: exit status requested at the end.
    pub status: u32,
    /// `cpus=`: start at most this many CPUs (`1..=MAX_CPUS`); `None` means all in the MADT.
    pub cpus: Option<usize>,
    /// `pv_eoi=0|1`: use KVM's paravirtual EOI where CPUID offers it (default 1).
    pub pv_eoi: bool,
    /// `virtio_mmio.device=` entries, in command-line order.
    pub virtio_mmio: [Option<VirtioMmioDevice>; MAX_VIRTIO_MMIO_DEVICES],
    /// The `blk_*` keys.
    pub blk: BlkConfig,
    /// The `net_*`, `rng_*` and `blk_driver` keys.
    pub drivers: DriversConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            workloads: Workloads::single(Workload::Compute),
            ms: 100,
            tick_us: 1000,
            status: 0,
            cpus: None,
            pv_eoi: true,
            virtio_mmio: [None; MAX_VIRTIO_MMIO_DEVICES],
            blk: BlkConfig::default(),
            drivers: DriversConfig::default(),
        }
    }
}

/// A command-line word that was not used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Warning<'a> {
    /// The key as written.
    pub key: &'a str,
    /// The value as written.
    pub value: &'a str,
    /// Why it was not used.
    pub reason: &'static str,
}

impl fmt::Display for Warning<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cmdline: ignoring {}={:?}: {}",
            self.key, self.value, self.reason
        )
    }
}

/// Parses a `workload=` list; bad entries become `compute` (with a warning naming them).
fn parse_workloads<'a>(
    key: &'a str,
    value: &'a str,
    warn: &mut impl FnMut(Warning<'a>),
) -> Workloads {
    let mut w = Workloads::single(Workload::Compute);
    w.len = 0;
    for (i, entry) in value.split(',').enumerate() {
        if i >= MAX_CPUS {
            warn(Warning {
                key,
                value: entry,
                reason: "more workload entries than CPUs (16); ignoring the rest",
            });
            break;
        }
        let parsed = match Workload::from_name(entry) {
            Some(wl) if i > 0 && wl.bsp_only() => {
                warn(Warning {
                    key,
                    value: entry,
                    reason: "exit, ud and triplefault only apply to CPU 0; using compute",
                });
                Workload::Compute
            }
            Some(wl) => wl,
            None => {
                warn(Warning {
                    key,
                    value: entry,
                    reason:
                        "expected compute, idle, cpl0, blk, net, rng, exit, ud or triplefault; using compute",
                });
                Workload::Compute
            }
        };
        w.list[i] = parsed;
        w.len = i + 1;
    }
    // Entries beyond the list repeat the last one.
    let last = w.list[w.len.max(1) - 1];
    for slot in &mut w.list[w.len..] {
        *slot = last;
    }
    w.len = w.len.max(1);
    w
}

impl Config {
    /// Parses `line`, calling `warn` for every known key whose value is not used.
    pub fn parse<'a>(line: &'a str, mut warn: impl FnMut(Warning<'a>)) -> Self {
        let mut config = Config::default();
        let mut devices = 0;
        for word in line.split_ascii_whitespace() {
            let Some((key, value)) = word.split_once('=') else {
                continue;
            };
            if key == "workload" {
                config.workloads = parse_workloads(key, value, &mut warn);
                continue;
            }
            let mut bad = |reason| warn(Warning { key, value, reason });
            let blk = &mut config.blk;
            match key {
                "ms" => match parse_u64(value).filter(|v| (1..=MAX_MS).contains(v)) {
                    Some(v) => config.ms = v,
                    None => bad("expected 1..=3600000; using 100"),
                },
                "tick_us" => match parse_u64(value).filter(|v| (1..=MAX_TICK_US).contains(v)) {
                    Some(v) => config.tick_us = v,
                    None => bad("expected 1..=4000000; using 1000"),
                },
                "status" => match parse_u64(value).and_then(|v| u32::try_from(v).ok()) {
                    Some(v) => config.status = v,
                    None => bad("expected a 32-bit number; using 0"),
                },
                "cpus" => match parse_u64(value)
                    .and_then(|v| usize::try_from(v).ok())
                    .filter(|v| (1..=MAX_CPUS).contains(v))
                {
                    Some(v) => config.cpus = Some(v),
                    None => bad("expected 1..=16; starting every CPU in the MADT"),
                },
                "pv_eoi" => match value {
                    "0" => config.pv_eoi = false,
                    "1" => config.pv_eoi = true,
                    _ => bad("expected 0 or 1; using 1"),
                },
                "virtio_mmio.device" => match parse_virtio_mmio(value) {
                    Some(dev) if devices < MAX_VIRTIO_MMIO_DEVICES => {
                        config.virtio_mmio[devices] = Some(dev);
                        devices += 1;
                    }
                    Some(_) => bad("too many virtio_mmio.device entries"),
                    None => bad("expected <size>@<base>:<irq>"),
                },
                "blk_mode" => match BlkMode::from_name(value) {
                    Some(m) => blk.mode = m,
                    None => bad(
                        "expected randread, randwrite, write-verify, read-verify, hostile or seq-write; using randread",
                    ),
                },
                "blk_ops" => match parse_u64(value) {
                    Some(v) => blk.ops = v,
                    None => bad("expected a number; using 0 (run for ms)"),
                },
                "blk_size" => match parse_size(value)
                    .filter(|v| *v % SECTOR == 0 && (SECTOR..=u64::from(MAX_BLK_SIZE)).contains(v))
                {
                    Some(v) => blk.size = v as u32,
                    None => bad("expected a multiple of 512 in 512..=65536; using 4096"),
                },
                "blk_qd" => match parse_u64(value).filter(|v| (1..=u64::from(MAX_BLK_QD)).contains(v)) {
                    Some(v) => blk.qd = v as u16,
                    None => bad("expected 1..=32; using 1"),
                },
                "blk_span" => match parse_size(value).filter(|v| *v >= SECTOR && *v % SECTOR == 0) {
                    Some(v) => blk.span = Some(v),
                    None => bad("expected a multiple of 512 (K/M/G suffix allowed); using the default"),
                },
                "blk_seed" => match parse_u64(value) {
                    Some(v) => blk.seed = v,
                    None => bad("expected a 64-bit number; using 1"),
                },
                "blk_dev" => match parse_u64(value)
                    .and_then(|v| usize::try_from(v).ok())
                    .filter(|v| *v < MAX_VIRTIO_MMIO_DEVICES)
                {
                    Some(v) => blk.dev = v,
                    None => bad("expected 0..=7; using 0"),
                },
                "blk_wait" => match value {
                    "irq" => blk.wait = BlkWait::Irq,
                    "poll" => blk.wait = BlkWait::Poll,
                    _ => bad("expected irq or poll; using irq"),
                },
                "blk_qsize" => match parse_u64(value).filter(|v| {
                    v.is_power_of_two()
                        && (u64::from(MIN_BLK_QSIZE)..=u64::from(MAX_BLK_QSIZE)).contains(v)
                }) {
                    Some(v) => blk.qsize = Some(v as u16),
                    None => bad("expected a power of two in 4..=256; using min(QueueNumMax, 256)"),
                },
                "blk_verify" => match value {
                    "0" => blk.verify = false,
                    "1" => blk.verify = true,
                    _ => bad("expected 0 or 1; using 0"),
                },
                "blk_burst" => match parse_u64(value) {
                    Some(v) => blk.burst = v,
                    None => bad("expected a number; using 0 (no pauses)"),
                },
                "blk_think_us" => match parse_u64(value).filter(|v| *v <= MAX_TICK_US) {
                    Some(v) => blk.think_us = v,
                    None => bad("expected microseconds up to 4 s; using 0"),
                },
                _ => {
                    if let Err(reason) = config.drivers.parse_word(key, value) {
                        bad(reason);
                    }
                }
            }
        }
        config
    }

    /// The `virtio_mmio.device=` entries.
    pub fn virtio_mmio_devices(&self) -> impl Iterator<Item = &VirtioMmioDevice> {
        self.virtio_mmio.iter().flatten()
    }
}

/// Parses a decimal or `0x`-prefixed hexadecimal number.
pub fn parse_u64(s: &str) -> Option<u64> {
    let (digits, radix) = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => (hex, 16),
        None => (s, 10),
    };
    // from_str_radix accepts a leading '+'; the command line does not.
    if digits.starts_with('+') {
        return None;
    }
    u64::from_str_radix(digits, radix).ok()
}

/// Parses a size with an optional K/M/G suffix (binary units, as Linux `memparse`).
pub fn parse_size(s: &str) -> Option<u64> {
    let (digits, shift) = match s.as_bytes().last()? {
        b'k' | b'K' => (&s[..s.len() - 1], 10),
        b'm' | b'M' => (&s[..s.len() - 1], 20),
        b'g' | b'G' => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    parse_u64(digits)?.checked_mul(1 << shift)
}

/// Parses `<size>@<base>:<irq>[:<id>]`.
fn parse_virtio_mmio(value: &str) -> Option<VirtioMmioDevice> {
    let (size, rest) = value.split_once('@')?;
    let (base, rest) = rest.split_once(':')?;
    let irq = rest.split_once(':').map_or(rest, |(irq, _id)| irq);
    let dev = VirtioMmioDevice {
        size: parse_size(size)?,
        base: parse_u64(base)?,
        irq: u32::try_from(parse_u64(irq)?).ok()?,
    };
    (dev.size != 0 && dev.base.checked_add(dev.size).is_some()).then_some(dev)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::{String, ToString};
    use std::vec::Vec;

    fn parse(line: &str) -> (Config, Vec<String>) {
        let mut warnings = Vec::new();
        let config = Config::parse(line, |w| warnings.push(w.to_string()));
        (config, warnings)
    }

    #[test]
    fn defaults() {
        let (c, w) = parse("");
        assert_eq!(c, Config::default());
        assert!(w.is_empty());
        assert_eq!(c.workloads.for_cpu(0), Workload::Compute);
        assert_eq!(c.workloads.for_cpu(15), Workload::Compute);
        assert_eq!((c.ms, c.tick_us, c.status, c.cpus), (100, 1000, 0, None));
        assert!(c.pv_eoi);
        assert_eq!(c.blk, BlkConfig::default());
    }

    #[test]
    fn all_keys() {
        let (c, w) =
            parse("console=ttyS0 workload=idle ms=250 tick_us=0x64 status=3 cpus=2 pv_eoi=0 quiet");
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(c.workloads.as_slice(), &[Workload::Idle]);
        assert_eq!((c.ms, c.tick_us, c.status, c.cpus), (250, 100, 3, Some(2)));
        assert!(!c.pv_eoi);
    }

    #[test]
    fn every_workload_name_round_trips() {
        for w in Workload::ALL {
            let (c, warn) = parse(&std::format!("workload={}", w.name()));
            assert!(warn.is_empty());
            assert_eq!(c.workloads.for_cpu(0), w);
        }
    }

    #[test]
    fn invalid_values_keep_defaults_and_warn() {
        let (c, w) = parse(
            "workload=dance ms=0 ms=abc tick_us=-1 status=4294967296 cpus=0 cpus=17 ms= =x ms=+5 \
             pv_eoi=yes",
        );
        assert_eq!(c, Config::default());
        assert_eq!(w.len(), 10, "{w:?}");
        assert!(w[0].contains("workload=\"dance\""), "{}", w[0]);
        let (c, w) = parse(
            "blk_mode=x blk_ops=-1 blk_size=100 blk_size=128K blk_qd=0 blk_qd=33 blk_span=1000 \
             blk_span=0 blk_seed=x blk_dev=8 blk_wait=spin blk_qsize=3 blk_qsize=512 blk_qsize=2 \
             blk_verify=yes",
        );
        assert_eq!(c, Config::default());
        assert_eq!(w.len(), 15, "{w:?}");
    }

    #[test]
    fn last_value_wins() {
        let (c, _) = parse("ms=5 ms=7 workload=exit workload=idle");
        assert_eq!(c.ms, 7);
        assert_eq!(c.workloads.for_cpu(3), Workload::Idle);
    }

    #[test]
    fn per_cpu_workloads() {
        let (c, w) = parse("workload=compute,blk");
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(c.workloads.as_slice(), &[Workload::Compute, Workload::Blk]);
        assert_eq!(c.workloads.for_cpu(0), Workload::Compute);
        assert_eq!(c.workloads.for_cpu(1), Workload::Blk);
        assert_eq!(c.workloads.for_cpu(7), Workload::Blk);
        assert_eq!(c.workloads.for_cpu(usize::MAX), Workload::Blk);
        assert!(c.workloads.any(2, Workload::Blk));
        assert!(!c.workloads.any(1, Workload::Blk));

        // Bad entries become compute; exit/ud/triplefault only as CPU 0's.
        let (c, w) = parse("workload=idle,bogus,,exit,blk");
        assert_eq!(w.len(), 3, "{w:?}");
        assert_eq!(
            c.workloads.as_slice(),
            &[
                Workload::Idle,
                Workload::Compute,
                Workload::Compute,
                Workload::Compute,
                Workload::Blk
            ]
        );
        let (c, w) = parse("workload=");
        assert_eq!(w.len(), 1);
        assert_eq!(c.workloads.as_slice(), &[Workload::Compute]);
        let (c, w) = parse("workload=exit,idle");
        assert!(w.is_empty());
        assert_eq!(c.workloads.for_cpu(0), Workload::Exit);
        assert_eq!(c.workloads.for_cpu(1), Workload::Idle);

        let long: String = std::iter::repeat_n("idle", 20)
            .collect::<Vec<_>>()
            .join(",");
        let (c, w) = parse(&std::format!("workload={long}"));
        assert_eq!(w.len(), 1);
        assert_eq!(c.workloads.as_slice().len(), MAX_CPUS);
    }

    #[test]
    fn blk_keys() {
        let (c, w) = parse(
            "blk_mode=write-verify blk_ops=10 blk_size=64K blk_qd=32 blk_span=16M blk_seed=0x5 \
             blk_dev=1 blk_wait=poll blk_qsize=64 blk_verify=1 blk_burst=16 blk_think_us=5000",
        );
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(
            c.blk,
            BlkConfig {
                mode: BlkMode::WriteVerify,
                ops: 10,
                size: 65536,
                qd: 32,
                span: Some(16 << 20),
                seed: 5,
                dev: 1,
                wait: BlkWait::Poll,
                qsize: Some(64),
                verify: true,
                burst: 16,
                think_us: 5000,
            }
        );
        for m in BlkMode::ALL {
            let (c, w) = parse(&std::format!("blk_mode={}", m.name()));
            assert!(w.is_empty());
            assert_eq!(c.blk.mode, m);
        }
        assert!(BlkMode::ReadVerify.is_verify() && !BlkMode::Hostile.is_verify());
    }

    #[test]
    fn tolerates_odd_input() {
        for line in [
            "=",
            "==",
            "ms==5",
            "\t\n",
            "workload",
            "ms=99999999999999999999999",
            "ms=0x",
            "virtio_mmio.device=",
            "virtio_mmio.device=@:",
            "virtio_mmio.device=4K@0x1000:",
            "virtio_mmio.device=0@0x1000:5",
            "virtio_mmio.device=16G@0xffffffffffffffff:5",
            "\u{e9}=\u{e9}",
            "workload=,,,",
            "workload=blk,\u{e9}",
            "blk_size=0xffffffffffffffffK",
            "blk_span=16Q",
        ] {
            let _ = parse(line);
        }
    }

    #[test]
    fn virtio_mmio_devices() {
        let (c, w) =
            parse("virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=0x200@0xd0001000:6:3");
        assert!(w.is_empty(), "{w:?}");
        let devs: Vec<_> = c.virtio_mmio_devices().copied().collect();
        assert_eq!(
            devs,
            [
                VirtioMmioDevice {
                    base: 0xd000_0000,
                    size: 4096,
                    irq: 5
                },
                VirtioMmioDevice {
                    base: 0xd000_1000,
                    size: 0x200,
                    irq: 6
                },
            ]
        );
    }

    #[test]
    fn too_many_virtio_mmio_devices() {
        let line: String = (0..10)
            .map(|i| {
                std::format!(
                    "virtio_mmio.device=1M@{}:{} ",
                    0x1000_0000 + i * 0x10_0000,
                    i
                )
            })
            .collect();
        let (c, w) = parse(&line);
        assert_eq!(c.virtio_mmio_devices().count(), MAX_VIRTIO_MMIO_DEVICES);
        assert_eq!(w.len(), 2);
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_u64("0"), Some(0));
        assert_eq!(parse_u64("0x10"), Some(16));
        assert_eq!(parse_u64("0XfF"), Some(255));
        assert_eq!(parse_u64(""), None);
        assert_eq!(parse_u64("0x"), None);
        assert_eq!(parse_u64("+1"), None);
        assert_eq!(parse_u64("0x+1"), None);
        assert_eq!(parse_u64("18446744073709551616"), None);
        assert_eq!(parse_size("2M"), Some(2 << 20));
        assert_eq!(parse_size("1g"), Some(1 << 30));
        assert_eq!(parse_size("K"), None);
        assert_eq!(parse_size("0xffffffffffffffffK"), None);
    }
}
