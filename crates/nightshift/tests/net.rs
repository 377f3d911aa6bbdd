//! virtio-net end to end with a driver and a TCP/IP stack nobody here wrote: the test
//! guest's `net` workload (virtio-drivers + smoltcp) behind a tap in a network namespace
//! the test makes itself, and its `rng` workload on the other vCPU (issue: network and
//! entropy). The host pings the guest, sends a UDP datagram of every size from 1 byte to
//! the MTU and checks each echo, and moves `NIGHTSHIFT_NET_TCP_MIB` MiB (default 64) over
//! TCP each way, checked by CRC32 one way and byte for byte the other.
//!
//! Under QEMU microvm, and under nightshift (`--net tap=NAME --rng`) with every policy on
//! both irqchips.

mod netkit;

use std::process::Command;
use std::time::Duration;

use netkit::{
    check_guest, exercise, guest_net_args, namespace_prerequisites, qemu, tcp_bytes, Netns, Vmm,
    TAP,
};

const POLICIES: [&str; 3] = ["workers", "inline", "idle"];
/// The guest gives up after this long (`net_ms`) ...
const GUEST_MS: u64 = 150_000;
/// ... and the VMM is killed after this long.
const VMM_LIMIT: Duration = Duration::from_secs(180);
/// MiB per TCP direction when NIGHTSHIFT_NET_TCP_MIB is not set.
const DEFAULT_TCP_MIB: u64 = 64;

fn guest_cmdline(wait: &str) -> String {
    format!(
        "workload=net,rng {} net_ms={GUEST_MS} net_wait={wait} rng_bytes=1M",
        guest_net_args()
    )
}

/// Runs the host side against a started VMM (moving `bytes` each way over TCP) and checks
/// what both sides saw.
fn exercise_and_check(ns: &Netns, mut vmm: Vmm, who: &str, exit_code: i32, bytes: u64) {
    let up = vmm.wait_line("net dev=");
    let measured = up.and_then(|_| exercise(ns, bytes));
    let fin = vmm.finish();
    let m = measured.unwrap_or_else(|e| panic!("{who}: {e}\n{}\n{}", fin.stdout, fin.stderr));
    eprintln!(
        "{who}: udp sweep 1..=1472 {:?}; tcp to guest {} MiB {:.0} Mbit/s; from guest {} MiB {:.0} Mbit/s",
        m.udp_sweep,
        m.to_guest.bytes >> 20,
        m.to_guest.mbit_s(),
        m.from_guest.bytes >> 20,
        m.from_guest.mbit_s()
    );
    assert_eq!(
        fin.code(),
        Some(exit_code),
        "{who}: exit\n{}\n{}",
        fin.stdout,
        fin.stderr
    );
    check_guest(&fin, bytes);
}

/// QEMU microvm, two vCPUs, a virtio-net device on the namespace's tap and a virtio-rng
/// device; the guest's `net` waits with `net_wait=<wait>`.
fn qemu_cmd(ns: &Netns, bin: &str, wait: &str) -> Command {
    let mut cmd = ns.command(bin);
    cmd.args(["-M", "microvm", "-enable-kvm"])
        .args(["-cpu", "host,-arch-capabilities,+invtsc"])
        .args(["-smp", "2", "-m", "256M", "-nodefaults", "-no-user-config"])
        .args(["-nographic", "-serial", "stdio", "-no-reboot"])
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=4"])
        .args(["-global", "virtio-mmio.force-legacy=false"])
        .arg("-netdev")
        .arg(format!("tap,id=n0,ifname={TAP},script=no,downscript=no"))
        .args([
            "-device",
            "virtio-net-device,netdev=n0,mac=52:54:00:12:34:56",
        ])
        .args(["-object", "rng-random,id=rng0,filename=/dev/urandom"])
        .args(["-device", "virtio-rng-device,rng=rng0"])
        .arg("-kernel")
        .arg(env!("NIGHTSHIFT_TESTGUEST_ELF"))
        .args(["-append", &guest_cmdline(wait)]);
    cmd
}

#[test]
fn net_and_rng_under_qemu_microvm() {
    if !namespace_prerequisites() {
        return;
    }
    let Some(bin) = qemu() else { return };
    let ns = Netns::new();
    let vmm = Vmm::start(qemu_cmd(&ns, bin, "irq"), VMM_LIMIT);
    // isa-debug-exit: status 0 comes out as (0 << 1) | 1.
    exercise_and_check(&ns, vmm, "qemu", 1, tcp_bytes(DEFAULT_TCP_MIB));
}

/// The guest's polling mode (device interrupts off, no halts), with a short transfer.
#[test]
fn net_with_a_polling_guest_under_qemu_microvm() {
    if !namespace_prerequisites() {
        return;
    }
    let Some(bin) = qemu() else { return };
    let ns = Netns::new();
    let vmm = Vmm::start(qemu_cmd(&ns, bin, "poll"), VMM_LIMIT);
    exercise_and_check(&ns, vmm, "qemu/poll", 1, 1 << 20);
}

#[test]
fn net_and_rng_under_nightshift_every_policy_and_irqchip() {
    if !namespace_prerequisites() {
        return;
    }
    for irqchip in ["kernel", "user"] {
        for policy in POLICIES {
            let ns = Netns::new();
            let mut cmd = ns.command(env!("CARGO_BIN_EXE_nightshift"));
            cmd.args(["run", "--vcpus", "2", "--mem", "256", "--policy", policy])
                .args(["--irqchip", irqchip])
                .args(["--net", &format!("tap={TAP}"), "--rng"])
                .args(["--cmdline", &guest_cmdline("irq")]);
            let vmm = Vmm::start(cmd, VMM_LIMIT);
            let what = format!("{policy}/{irqchip}");
            exercise_and_check(&ns, vmm, &what, 0, tcp_bytes(DEFAULT_TCP_MIB));
        }
    }
}
