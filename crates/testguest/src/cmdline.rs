//! The guest command line: space-separated `key=value` words (see docs/guest-abi.md).
//!
//! Unknown words are ignored, so a VMM may add its own. A known key with an invalid value
//! keeps its default and produces a [`Warning`]; parsing never fails.

use core::fmt;

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
}

impl Workload {
    const ALL: [Workload; 6] = [
        Workload::Compute,
        Workload::Idle,
        Workload::Exit,
        Workload::Ud,
        Workload::TripleFault,
        Workload::Cpl0,
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
        }
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

/// The parsed command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// `workload=`.
    pub workload: Workload,
    /// `ms=`: run time of the workload in milliseconds, `1..=MAX_MS`.
    pub ms: u64,
    /// `tick_us=`: LAPIC timer period of the `idle` workload, `1..=MAX_TICK_US`.
    pub tick_us: u64,
    /// `status=`: exit status requested at the end.
    pub status: u32,
    /// `cpus=`: start at most this many CPUs (`1..=MAX_CPUS`); `None` means all in the MADT.
    pub cpus: Option<usize>,
    /// `virtio_mmio.device=` entries, in command-line order.
    pub virtio_mmio: [Option<VirtioMmioDevice>; MAX_VIRTIO_MMIO_DEVICES],
}

impl Default for Config {
    fn default() -> Self {
        Self {
            workload: Workload::Compute,
            ms: 100,
            tick_us: 1000,
            status: 0,
            cpus: None,
            virtio_mmio: [None; MAX_VIRTIO_MMIO_DEVICES],
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

impl Config {
    /// Parses `line`, calling `warn` for every known key whose value is not used.
    pub fn parse<'a>(line: &'a str, mut warn: impl FnMut(Warning<'a>)) -> Self {
        let mut config = Config::default();
        let mut devices = 0;
        for word in line.split_ascii_whitespace() {
            let Some((key, value)) = word.split_once('=') else {
                continue;
            };
            let mut bad = |reason| warn(Warning { key, value, reason });
            match key {
                "workload" => match Workload::from_name(value) {
                    Some(w) => config.workload = w,
                    None => {
                        bad("expected compute, idle, cpl0, exit, ud or triplefault; using compute")
                    }
                },
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
                "virtio_mmio.device" => match parse_virtio_mmio(value) {
                    Some(dev) if devices < MAX_VIRTIO_MMIO_DEVICES => {
                        config.virtio_mmio[devices] = Some(dev);
                        devices += 1;
                    }
                    Some(_) => bad("too many virtio_mmio.device entries"),
                    None => bad("expected <size>@<base>:<irq>"),
                },
                _ => {}
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
fn parse_size(s: &str) -> Option<u64> {
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
        assert_eq!(c.workload, Workload::Compute);
        assert_eq!((c.ms, c.tick_us, c.status, c.cpus), (100, 1000, 0, None));
    }

    #[test]
    fn all_keys() {
        let (c, w) = parse("console=ttyS0 workload=idle ms=250 tick_us=0x64 status=3 cpus=2 quiet");
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(c.workload, Workload::Idle);
        assert_eq!((c.ms, c.tick_us, c.status, c.cpus), (250, 100, 3, Some(2)));
    }

    #[test]
    fn every_workload_name_round_trips() {
        for w in Workload::ALL {
            let (c, warn) = parse(&std::format!("workload={}", w.name()));
            assert!(warn.is_empty());
            assert_eq!(c.workload, w);
        }
    }

    #[test]
    fn invalid_values_keep_defaults_and_warn() {
        let (c, w) = parse(
            "workload=dance ms=0 ms=abc tick_us=-1 status=4294967296 cpus=0 cpus=17 ms= =x ms=+5",
        );
        assert_eq!(c, Config::default());
        assert_eq!(w.len(), 9, "{w:?}");
        assert!(w[0].contains("workload=\"dance\""), "{}", w[0]);
    }

    #[test]
    fn last_value_wins() {
        let (c, _) = parse("ms=5 ms=7 workload=exit workload=idle");
        assert_eq!(c.ms, 7);
        assert_eq!(c.workload, Workload::Idle);
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
