//! The scenarios `nightshift bench` measures, and the VMM variants it compares.
//!
//! A scenario is one or more VMs (test-guest workloads on the command line +
//! VMM settings) started together; a variant is the VMM that runs them:
//! nightshift under a device-work policy, or QEMU microvm as a peer.

use serde::Serialize;

/// Parameters shared by every scenario of a bench run.
#[derive(Clone, Debug, Serialize)]
pub struct Params {
    /// Guest run time per VM, ms.
    pub ms: u64,
    /// Block request size, bytes.
    pub req_size: u32,
    /// Requests kept in flight by the guest.
    pub qd: u32,
    /// AES-XTS passes per sector in the disk backend (device CPU cost).
    pub xts_passes: u32,
    /// Disk image size, MiB.
    pub disk_mib: u64,
}

/// One VM of a scenario.
#[derive(Clone, Debug, Serialize)]
pub struct VmSpec {
    /// Name in the results ("vm", "A", "B").
    pub role: &'static str,
    /// vCPUs.
    pub vcpus: u8,
    /// Host CPU of each vCPU (vCPU i → `pins[i]`).
    pub pins: Vec<usize>,
    /// Guest command line.
    pub cmdline: String,
    /// Disks it has (the guest's k-th I/O CPU uses disk k).
    pub disks: usize,
    /// Whether it has a virtio-net device on the bench namespace's tap.
    pub net: bool,
    /// Background scrub passes over the disk (maintenance work).
    pub scrub_passes: Option<u64>,
    /// The disk backend's cipher passes are the run's `xts_passes` times this
    /// (heavier device work; QEMU's LUKS runs one pass whatever it is).
    pub xts_factor: u32,
}

/// A scenario: VMs that run at the same time, and the solo run each compute
/// rate is compared with.
#[derive(Clone, Debug, Serialize)]
pub struct Scenario {
    /// Short name.
    pub name: &'static str,
    /// What it shows.
    pub about: &'static str,
    /// The VMs.
    pub vms: Vec<VmSpec>,
    /// The baseline: the same compute without the I/O (run once per
    /// repetition on nightshift, whose compute path does not depend on policy);
    /// None where no vCPU computes.
    pub solo: Option<VmSpec>,
    /// The host's side of the traffic, for the VM with a net device.
    pub net: Option<NetLoad>,
}

/// What the host does with a network scenario's guest (see `netload`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NetLoad {
    /// UDP request/response: one small datagram at a time to the echo port.
    Rr,
    /// TCP bulk transfer, alternating host → guest and guest → host sessions.
    Stream,
}

/// The scenarios, in the order they run.
pub fn all(p: &Params) -> Vec<Scenario> {
    let blk = |mode: &str, extra: &str| {
        format!(
            "blk_mode={mode} blk_size={} blk_qd={} blk_ops=0 ms={}{extra}",
            p.req_size, p.qd, p.ms
        )
    };
    let vm = |vcpus: u8, cmdline: String| VmSpec {
        role: "vm",
        vcpus,
        pins: (0..vcpus as usize).collect(),
        cmdline,
        disks: 1,
        net: false,
        scrub_passes: None,
        xts_factor: 1,
    };
    let solo = |vcpus: u8, cmdline: String| {
        Some(VmSpec {
            disks: 0,
            ..vm(vcpus, cmdline)
        })
    };
    let idle_ms = |ms: u64| format!("ms={ms} tick_us=100000");
    let mut v = vec![
        Scenario {
            name: "mixed",
            about: "vCPU0 computes; vCPU1 does closed-loop block I/O and idles while it waits",
            vms: vec![vm(
                2,
                format!("workload=compute,blk {}", blk("randread", "")),
            )],
            solo: solo(2, format!("workload=compute,idle {}", idle_ms(p.ms))),
            net: None,
        },
        Scenario {
            name: "bursty",
            about: "guest mostly idle; both vCPUs issue bursts of I/O",
            // Each I/O vCPU has its own disk.
            vms: vec![VmSpec {
                disks: 2,
                ..vm(
                    2,
                    format!(
                        "workload=blk {}",
                        blk("randread", " blk_burst=16 blk_think_us=5000")
                    ),
                )
            }],
            solo: solo(2, format!("workload=compute,idle {}", idle_ms(p.ms))),
            net: None,
        },
        Scenario {
            name: "saturated",
            about: "both vCPUs busy (vCPU1 polls for completions); I/O must use the fallback",
            vms: vec![vm(
                2,
                format!("workload=compute,blk {}", blk("randread", " blk_wait=poll")),
            )],
            solo: solo(2, format!("workload=compute,idle {}", idle_ms(p.ms))),
            net: None,
        },
        Scenario {
            name: "async",
            about: "vCPU0 computes; vCPU1 computes too and issues a request every 200 us \
                    without waiting idle (4x the cipher passes): where does device work cost?",
            vms: vec![VmSpec {
                xts_factor: 4,
                ..vm(
                    2,
                    format!(
                        "workload=compute,blk {}",
                        blk("randread", " blk_wait=poll blk_burst=1 blk_think_us=200")
                    ),
                )
            }],
            solo: solo(2, format!("workload=compute,idle {}", idle_ms(p.ms))),
            net: None,
        },
        Scenario {
            name: "maintenance",
            about: "idle-priority scrub of the image while vCPU0 computes and vCPU1 idles",
            vms: vec![VmSpec {
                scrub_passes: Some(1000),
                ..vm(2, format!("workload=compute,idle {}", idle_ms(p.ms)))
            }],
            solo: solo(2, format!("workload=compute,idle {}", idle_ms(p.ms))),
            net: None,
        },
        neighbour("neighbour", 8, &blk("randread", ""), p.ms),
        // The same at one cipher pass, the work QEMU's LUKS does: the row
        // where the peer stands beside nightshift.
        neighbour("neighbour-1x", 1, &blk("randread", ""), p.ms),
    ];
    v.extend(net_scenarios(p.ms));
    v
}

/// The network scenarios: vCPU1 serves the host's traffic (`net` workload, the
/// virtio-drivers + smoltcp stack) while vCPU0 idles (long timer ticks) or computes.
fn net_scenarios(ms: u64) -> Vec<Scenario> {
    // The guest's own bound, well past the host's window (the host ends it with `quit`).
    let net_ms = (ms * 4 + 20_000).min(3_600_000);
    let vm = |first: &str| VmSpec {
        role: "vm",
        vcpus: 2,
        pins: vec![0, 1],
        cmdline: format!(
            "workload={first},net ms={ms} tick_us=100000 net_ms={net_ms} {}",
            nightshift::guest_net::guest_net_args()
        ),
        disks: 0,
        net: true,
        scrub_passes: None,
        xts_factor: 1,
    };
    let solo = VmSpec {
        net: false,
        cmdline: format!("workload=compute,idle ms={ms} tick_us=100000"),
        ..vm("compute")
    };
    let net = |name, about, load, computing: bool| Scenario {
        name,
        about,
        vms: vec![vm(if computing { "compute" } else { "idle" })],
        solo: computing.then(|| solo.clone()),
        net: Some(load),
    };
    vec![
        net(
            "net-rr",
            "UDP request/response (64 B, one at a time) from the host to vCPU1; vCPU0 idles",
            NetLoad::Rr,
            false,
        ),
        net(
            "net-rr+compute",
            "as net-rr while vCPU0 computes",
            NetLoad::Rr,
            true,
        ),
        net(
            "net-stream",
            "TCP bulk transfer host -> guest and guest -> host (alternating sessions) with vCPU1; vCPU0 idles",
            NetLoad::Stream,
            false,
        ),
        net(
            "net-stream+compute",
            "as net-stream while vCPU0 computes",
            NetLoad::Stream,
            true,
        ),
    ]
}

/// VM A (1 vCPU on CPU0) does I/O at `factor` times the cipher passes while
/// VM B (1 vCPU on CPU1) computes.
fn neighbour(name: &'static str, factor: u32, blk: &str, ms: u64) -> Scenario {
    let vm = |role, pin, disks, cmdline: String| VmSpec {
        role,
        vcpus: 1,
        pins: vec![pin],
        cmdline,
        disks,
        net: false,
        scrub_passes: None,
        xts_factor: factor,
    };
    Scenario {
        name,
        about: if factor == 1 {
            "as neighbour, at one cipher pass per sector (what QEMU's LUKS does)"
        } else {
            "VM A (1 vCPU on CPU0) does heavy I/O (8x the cipher passes); VM B (1 vCPU on CPU1) computes"
        },
        vms: vec![
            vm("A", 0, 1, format!("workload=blk {blk}")),
            vm("B", 1, 0, format!("workload=compute ms={ms}")),
        ],
        solo: Some(vm("B", 1, 0, format!("workload=compute ms={ms}"))),
        net: None,
    }
}

impl Scenario {
    /// Whether the QEMU peer does the same device work as nightshift here:
    /// its LUKS runs one cipher pass per sector, and it has no background
    /// scrub. Peer rows are only set beside nightshift where this holds.
    pub fn peer_comparable(&self) -> bool {
        self.vms
            .iter()
            .all(|vm| vm.xts_factor == 1 && vm.scrub_passes.is_none())
    }

    /// Whether this scenario runs under `v`: the peer only where it does the same
    /// device work; no scrub under `inline` (no thread to run it); the network
    /// scenarios under the three policies on both irqchips (host halt polling and the
    /// footprint cap are block-bench knobs) and QEMU without an iothread (QEMU's
    /// virtio-net has none).
    pub fn runs_under(&self, v: &Variant) -> bool {
        let scrubs = self.vms.iter().any(|vm| vm.scrub_passes.is_some());
        match v {
            Variant::Qemu { iothread } => {
                self.peer_comparable() && !(self.net.is_some() && *iothread)
            }
            Variant::Nightshift {
                policy,
                halt_poll_ns,
                cpu_cap,
                io_wait,
                ..
            } => {
                // Net notifies through ioeventfds either way (io_wait serves
                // block notifies): the halt-only variants would repeat idle.
                let net_alike = halt_poll_ns.is_some() || cpu_cap.is_some() || !io_wait;
                let inline_scrub = scrubs && policy == "inline";
                let net_repeat = self.net.is_some() && net_alike;
                !(inline_scrub || net_repeat)
            }
        }
    }
}

/// The VMM running a scenario.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "vmm", rename_all = "lowercase")]
pub enum Variant {
    /// nightshift with a device-work policy.
    Nightshift {
        /// workers | inline | idle.
        policy: String,
        /// KVM halt polling, ns (None: the host's default).
        halt_poll_ns: Option<u32>,
        /// The footprint cap on non-vCPU device-work threads.
        cpu_cap: Option<usize>,
        /// Who owns the interrupt controllers: `kernel` (KVM; guest idle
        /// seen through the `blocking` statistic) or `user` (nightshift;
        /// a guest HLT exits to the vCPU thread at once).
        irqchip: &'static str,
        /// Under idle, a vCPU whose guest waits for its I/O serves its block
        /// notifies at the exit (the default); false: `--io-wait-us 0`, the
        /// work waits for a halt (labelled `/halt`).
        io_wait: bool,
    },
    /// QEMU microvm with virtio-blk (LUKS when the disk is encrypted).
    Qemu {
        /// Device work on a dedicated iothread instead of QEMU's main loop.
        iothread: bool,
    },
}

impl Variant {
    /// The name in tables.
    pub fn label(&self) -> String {
        match self {
            Variant::Nightshift {
                policy,
                halt_poll_ns,
                cpu_cap,
                irqchip,
                io_wait,
            } => {
                let mut s = policy.clone();
                if *irqchip == "user" {
                    s.push_str("/user");
                }
                if !io_wait {
                    s.push_str("/halt");
                }
                if *halt_poll_ns == Some(0) {
                    s.push_str("/nopoll");
                }
                if let Some(c) = cpu_cap {
                    s.push_str(&format!("/cap{c}"));
                }
                s
            }
            Variant::Qemu { iothread: false } => "qemu".into(),
            Variant::Qemu { iothread: true } => "qemu/iothread".into(),
        }
    }

    /// nightshift under `policy` with the in-kernel irqchip and the host's
    /// halt polling.
    pub fn nightshift(policy: &str) -> Self {
        Variant::with("kernel", policy, None, None)
    }

    fn with(
        irqchip: &'static str,
        policy: &str,
        halt_poll_ns: Option<u32>,
        cpu_cap: Option<usize>,
    ) -> Self {
        Variant::Nightshift {
            policy: policy.into(),
            halt_poll_ns,
            cpu_cap,
            irqchip,
            io_wait: true,
        }
    }

    /// The default set: the three policies under both irqchips, idle
    /// without halt polling, with the footprint cap and with its work
    /// waiting for halts (not served at the notify) under both irqchips, and
    /// QEMU with and without an iothread.
    pub fn defaults(with_qemu: bool) -> Vec<Variant> {
        let mut v = Vec::new();
        for irqchip in ["kernel", "user"] {
            for policy in ["workers", "inline", "idle"] {
                v.push(Variant::with(irqchip, policy, None, None));
            }
        }
        v.push(Variant::with("kernel", "idle", Some(0), None));
        v.push(Variant::with("kernel", "idle", None, Some(0)));
        v.push(Variant::with("user", "idle", None, Some(0)));
        for irqchip in ["kernel", "user"] {
            let mut halt = Variant::with(irqchip, "idle", None, None);
            if let Variant::Nightshift { io_wait, .. } = &mut halt {
                *io_wait = false;
            }
            v.push(halt);
        }
        if with_qemu {
            v.push(Variant::Qemu { iothread: false });
            v.push(Variant::Qemu { iothread: true });
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> Params {
        Params {
            ms: 1500,
            req_size: 4096,
            qd: 1,
            xts_passes: 1,
            disk_mib: 64,
        }
    }

    #[test]
    fn network_scenarios_run_under_the_policies_and_qemu_without_iothread() {
        let all = all(&params());
        let net: Vec<&Scenario> = all.iter().filter(|s| s.net.is_some()).collect();
        assert_eq!(net.len(), 4);
        let labels = |s: &Scenario| -> Vec<String> {
            Variant::defaults(true)
                .iter()
                .filter(|v| s.runs_under(v))
                .map(|v| v.label())
                .collect()
        };
        for s in net {
            assert!(s.vms.iter().any(|vm| vm.net), "{}", s.name);
            assert_eq!(s.solo.is_some(), s.name.ends_with("+compute"), "{}", s.name);
            assert_eq!(
                labels(s),
                [
                    "workers",
                    "inline",
                    "idle",
                    "workers/user",
                    "inline/user",
                    "idle/user",
                    "qemu"
                ],
                "{}",
                s.name
            );
        }
        // The block scenarios keep their variants (the peer where comparable).
        let mixed = all.iter().find(|s| s.name == "mixed").unwrap();
        assert_eq!(labels(mixed).len(), Variant::defaults(true).len());
    }
}
