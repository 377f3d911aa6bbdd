//! Command-line keys of the workloads that run on the second driver stack
//! (virtio-drivers + smoltcp): `net_*`, `rng_*` and `blk_driver`. See docs/guest-abi.md,
//! "Network", "Entropy" and "Block device".
//!
//! Kept apart from [`cmdline`](crate::cmdline), which hands every key it does not know to
//! [`DriversConfig::parse_word`].

use core::net::Ipv4Addr;

use crate::cmdline::{parse_size, parse_u64, MAX_MS, MAX_VIRTIO_MMIO_DEVICES};

/// Which driver the `blk` workload uses (`blk_driver=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlkDriver {
    /// The project's own virtio-blk driver (the bench's control).
    Own,
    /// The `virtio-drivers` crate's `VirtIOBlk`.
    VirtioDrivers,
}

impl BlkDriver {
    /// The command-line spelling.
    pub fn name(self) -> &'static str {
        match self {
            BlkDriver::Own => "own",
            BlkDriver::VirtioDrivers => "virtio-drivers",
        }
    }
}

/// How the `net` workload waits for the device (`net_wait=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetWait {
    /// Halt until the device interrupt or smoltcp's next timer.
    Irq,
    /// Spin at CPL3 on the rings; the device is asked not to interrupt.
    Poll,
}

impl NetWait {
    /// The command-line spelling.
    pub fn name(self) -> &'static str {
        match self {
            NetWait::Irq => "irq",
            NetWait::Poll => "poll",
        }
    }
}

/// What the `net` workload does (`net_mode=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetMode {
    /// smoltcp's services on `virtio-drivers` (the default).
    Serve,
    /// The hostile cases on the guest's own raw virtqueues (docs/guest-abi.md).
    Hostile,
}

impl NetMode {
    /// The command-line spelling.
    pub fn name(self) -> &'static str {
        match self {
            NetMode::Serve => "serve",
            NetMode::Hostile => "hostile",
        }
    }
}

/// The `net_*` keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// `net_ip=A.B.C.D/LEN`: the guest's address (required).
    pub ip: Option<(Ipv4Addr, u8)>,
    /// `net_peer=A.B.C.D`: the only host the guest talks to (required).
    pub peer: Option<Ipv4Addr>,
    /// `net_sessions=`: end after this many completed TCP sessions (0: no limit).
    pub sessions: u64,
    /// `net_ms=`: the longest the workload runs, ms.
    pub ms: u64,
    /// `net_wait=`.
    pub wait: NetWait,
    /// `net_dev=`: index among the network devices of the first one used.
    pub dev: usize,
    /// `net_mode=`.
    pub mode: NetMode,
}

/// Default `net_ms`: one minute.
pub const NET_MS_DEFAULT: u64 = 60_000;

impl Default for NetConfig {
    fn default() -> Self {
        Self {
            ip: None,
            peer: None,
            sessions: 0,
            ms: NET_MS_DEFAULT,
            wait: NetWait::Irq,
            dev: 0,
            mode: NetMode::Serve,
        }
    }
}

/// Default `rng_bytes`: 1 MiB.
pub const RNG_BYTES_DEFAULT: u64 = 1 << 20;
/// Largest `rng_bytes`: 256 MiB.
pub const RNG_BYTES_MAX: u64 = 256 << 20;

/// The `rng_*` keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RngConfig {
    /// `rng_bytes=`: bytes to read.
    pub bytes: u64,
    /// `rng_dev=`: index among the entropy devices of the first one used.
    pub dev: usize,
}

impl Default for RngConfig {
    fn default() -> Self {
        Self {
            bytes: RNG_BYTES_DEFAULT,
            dev: 0,
        }
    }
}

/// Everything the second driver stack reads from the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DriversConfig {
    pub net: NetConfig,
    pub rng: RngConfig,
    /// `blk_driver=`.
    pub blk_driver: BlkDriver,
}

impl Default for DriversConfig {
    fn default() -> Self {
        Self {
            net: NetConfig::default(),
            rng: RngConfig::default(),
            blk_driver: BlkDriver::Own,
        }
    }
}

fn device_index(value: &str) -> Option<usize> {
    parse_u64(value)
        .and_then(|v| usize::try_from(v).ok())
        .filter(|v| *v < MAX_VIRTIO_MMIO_DEVICES)
}

impl DriversConfig {
    /// Takes one `key=value` word. `Err(reason)` for a key of its own with a value it
    /// cannot use (the default stays); unknown keys are ignored.
    pub fn parse_word(&mut self, key: &str, value: &str) -> Result<(), &'static str> {
        let net = &mut self.net;
        match key {
            "net_ip" => {
                net.ip =
                    Some(crate::net::parse_cidr(value).ok_or("expected A.B.C.D/LEN (LEN 1..=32)")?)
            }
            "net_peer" => net.peer = Some(value.parse().map_err(|_| "expected A.B.C.D")?),
            "net_sessions" => {
                net.sessions = parse_u64(value).ok_or("expected a number; using 0")?
            }
            "net_ms" => {
                net.ms = parse_u64(value)
                    .filter(|v| (1..=MAX_MS).contains(v))
                    .ok_or("expected 1..=3600000; using 60000")?
            }
            "net_wait" => {
                net.wait = match value {
                    "irq" => NetWait::Irq,
                    "poll" => NetWait::Poll,
                    _ => return Err("expected irq or poll; using irq"),
                }
            }
            "net_dev" => net.dev = device_index(value).ok_or("expected 0..=7; using 0")?,
            "net_mode" => {
                net.mode = match value {
                    "serve" => NetMode::Serve,
                    "hostile" => NetMode::Hostile,
                    _ => return Err("expected serve or hostile; using serve"),
                }
            }
            "rng_bytes" => {
                self.rng.bytes = parse_size(value)
                    .filter(|v| (1..=RNG_BYTES_MAX).contains(v))
                    .ok_or("expected 1..=256M (K/M suffix allowed); using 1M")?
            }
            "rng_dev" => self.rng.dev = device_index(value).ok_or("expected 0..=7; using 0")?,
            "blk_driver" => {
                self.blk_driver = match value {
                    "own" => BlkDriver::Own,
                    "virtio-drivers" => BlkDriver::VirtioDrivers,
                    _ => return Err("expected own or virtio-drivers; using own"),
                }
            }
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmdline::Config;
    use std::string::{String, ToString};
    use std::vec::Vec;

    fn parse(line: &str) -> (DriversConfig, Vec<String>) {
        let mut warnings = Vec::new();
        let c = Config::parse(line, |w| warnings.push(w.to_string()));
        (c.drivers, warnings)
    }

    #[test]
    fn defaults() {
        let (c, w) = parse("workload=net");
        assert!(w.is_empty());
        assert_eq!(c, DriversConfig::default());
    }

    #[test]
    fn all_keys() {
        let (c, w) = parse(
            "net_ip=10.99.0.2/24 net_peer=10.99.0.1 net_sessions=2 net_ms=5000 net_wait=poll \
             net_dev=1 net_mode=hostile rng_bytes=64K rng_dev=2 blk_driver=virtio-drivers",
        );
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(
            c,
            DriversConfig {
                net: NetConfig {
                    ip: Some((Ipv4Addr::new(10, 99, 0, 2), 24)),
                    peer: Some(Ipv4Addr::new(10, 99, 0, 1)),
                    sessions: 2,
                    ms: 5000,
                    wait: NetWait::Poll,
                    dev: 1,
                    mode: NetMode::Hostile,
                },
                rng: RngConfig {
                    bytes: 64 << 10,
                    dev: 2
                },
                blk_driver: BlkDriver::VirtioDrivers,
            }
        );
    }

    #[test]
    fn invalid_values_keep_defaults_and_warn() {
        let (c, w) = parse(
            "net_ip=10.99.0.2 net_peer=10.99.0 net_sessions=x net_ms=0 net_wait=spin net_dev=8 \
             net_mode=x rng_bytes=0 rng_bytes=257M rng_dev=9 blk_driver=linux",
        );
        assert_eq!(c, DriversConfig::default());
        assert_eq!(w.len(), 11, "{w:?}");
        assert!(w[0].contains("net_ip"), "{}", w[0]);
    }
}
