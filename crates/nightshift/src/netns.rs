//! A network namespace of its own with one tap in it: where the network tests and
//! `nightshift bench`'s network scenarios put a guest's virtio-net device, so that all
//! their traffic stays between the tap's address ([`HOST_IP`]) and the guest's
//! ([`GUEST_IP`]) and reaches no other network.
//!
//! The namespace is made with `ip netns add` and deleted on drop. A VMM is started in
//! it with [`Netns::command`] (`ip netns exec`, which execs the program in place, so its
//! pid is the VMM's); the host side of the traffic runs on a thread moved into it with
//! `setns` ([`Netns::run`]), so the calling process never leaves its own namespace.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The tap's side and the guest's side of the link.
pub const HOST_IP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
pub const GUEST_IP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);
/// The tap's name inside the namespace (every namespace has its own).
pub const TAP: &str = "tap0";

/// Why a namespace could not be made or entered.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// Namespaces and taps need root.
    #[error("network namespaces need root")]
    NotRoot,
    /// No tun/tap driver.
    #[error("/dev/net/tun is missing")]
    NoTun,
    /// `ip` could not be run (iproute2 missing).
    #[error("running `ip` (iproute2; ./dev setup installs it)")]
    NoIp(#[source] std::io::Error),
    /// An `ip` command failed.
    #[error("ip {args}: {stderr}")]
    Ip { args: String, stderr: String },
    /// The namespace's handle could not be opened or entered.
    #[error("entering namespace {name}")]
    Enter {
        name: String,
        #[source]
        source: std::io::Error,
    },
    /// The thread running in the namespace panicked.
    #[error("the thread in namespace {0} panicked")]
    Panicked(String),
}

fn ip(args: &[&str]) -> Result<(), NetnsError> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(NetnsError::NoIp)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NetnsError::Ip {
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// A network namespace holding one tap ([`TAP`]) with [`HOST_IP`]/24; deleted on drop.
pub struct Netns {
    name: String,
}

static SERIAL: AtomicUsize = AtomicUsize::new(0);

impl Netns {
    /// Makes `<prefix>-<pid>-<n>` with its tap up, or says why it cannot.
    pub fn create(prefix: &str) -> Result<Self, NetnsError> {
        if !rustix::process::geteuid().is_root() {
            return Err(NetnsError::NotRoot);
        }
        if !Path::new("/dev/net/tun").exists() {
            return Err(NetnsError::NoTun);
        }
        let name = format!(
            "{prefix}-{}-{}",
            std::process::id(),
            SERIAL.fetch_add(1, Ordering::Relaxed)
        );
        ip(&["netns", "add", &name])?;
        // From here on, drop deletes it whatever fails next.
        let ns = Self { name };
        let n = ns.name.as_str();
        ip(&["-n", n, "link", "set", "lo", "up"])?;
        ip(&["-n", n, "tuntap", "add", "dev", TAP, "mode", "tap"])?;
        ip(&["-n", n, "addr", "add", &format!("{HOST_IP}/24"), "dev", TAP])?;
        ip(&["-n", n, "link", "set", TAP, "up"])?;
        Ok(ns)
    }

    /// The namespace's name (`ip netns` list).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A command that runs `program` inside the namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Forgets the tap's neighbours (the guest's MAC), so a run starts with ARP as the
    /// first one did, whichever VMM ran before it.
    pub fn flush_neighbours(&self) -> Result<(), NetnsError> {
        ip(&["-n", &self.name, "neigh", "flush", "dev", TAP])
    }

    /// Runs `f` on a thread that has moved into the namespace (sockets it opens live
    /// there) and returns its result.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
        let path = format!("/run/netns/{}", self.name);
        let enter_err = |source| NetnsError::Enter {
            name: self.name.clone(),
            source,
        };
        std::thread::scope(|s| {
            s.spawn(|| {
                let ns = std::fs::File::open(&path).map_err(enter_err)?;
                rustix::thread::move_into_link_name_space(
                    std::os::fd::AsFd::as_fd(&ns),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )
                .map_err(|e| enter_err(e.into()))?;
                Ok(f())
            })
            .join()
            .map_err(|_| NetnsError::Panicked(self.name.clone()))?
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
    }
}
