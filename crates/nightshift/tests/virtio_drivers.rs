//! The devices checked by a driver nobody here wrote: the test guest's block workload
//! through `virtio-drivers`' `VirtIOBlk` (`blk_driver=virtio-drivers`) with the same
//! byte-for-byte checks as the project's own driver, and its `rng` workload through
//! `VirtIORng`, under nightshift (every policy) and QEMU microvm.
//!
//! The data pattern (docs/guest-abi.md): the 8-byte little-endian word at disk offset `o`
//! is `o.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ seed`.

mod netkit;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use netkit::{check_rng, kvm_prerequisite, qemu, Finished, Vmm};

const POLICIES: [&str; 3] = ["workers", "inline", "idle"];
const SPAN: u64 = 1 << 20;
const VMM_LIMIT: Duration = Duration::from_secs(60);

fn pattern(len: u64, seed: u64) -> Vec<u8> {
    (0..len)
        .step_by(8)
        .flat_map(|o| (o.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ seed).to_le_bytes())
        .collect()
}

fn image(dir: &Path, bytes: &[u8], size: u64) -> PathBuf {
    let path = dir.join("disk.img");
    let mut data = bytes.to_vec();
    data.resize(size as usize, 0);
    std::fs::write(&path, data).unwrap();
    path
}

/// `nightshift run ARGS` with one vCPU, under the test timeout.
fn nightshift(args: &[&str]) -> Finished {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_nightshift"));
    cmd.args(["run", "--vcpus", "1"]).args(args);
    Vmm::start(cmd, VMM_LIMIT).finish()
}

/// QEMU microvm with `extra` devices, one vCPU, under the test timeout.
fn qemu_run(bin: &str, cmdline: &str, extra: &[&str]) -> Finished {
    let mut cmd = Command::new(bin);
    cmd.args([
        "-M",
        "microvm",
        "-enable-kvm",
        "-cpu",
        "host,-arch-capabilities,+invtsc",
    ])
    .args(["-smp", "1", "-m", "256M", "-nodefaults", "-no-user-config"])
    .args(["-nographic", "-serial", "stdio", "-no-reboot"])
    .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=4"])
    .args(["-global", "virtio-mmio.force-legacy=false"])
    .args(extra)
    .arg("-kernel")
    .arg(env!("NIGHTSHIFT_TESTGUEST_ELF"))
    .args(["-append", cmdline]);
    Vmm::start(cmd, VMM_LIMIT).finish()
}

/// The block result line, which must come from virtio-drivers.
fn blk_result(fin: &Finished, who: &str) -> HashMap<String, String> {
    let r = fin.result("blk");
    assert_eq!(
        r.get("driver").map(String::as_str),
        Some("virtio-drivers"),
        "{who}: {r:?}\n{}",
        fin.stderr
    );
    assert!(!r.contains_key("timed_out"), "{who}: {r:?}");
    r
}

fn write_verify_cmdline(seed: u64) -> String {
    format!(
        "workload=blk blk_driver=virtio-drivers blk_mode=write-verify blk_span={SPAN} blk_seed={seed} blk_qd=4"
    )
}

fn check_written(img: &Path, seed: u64, who: &str) {
    let on_disk = std::fs::read(img).unwrap();
    assert!(
        on_disk[..SPAN as usize] == pattern(SPAN, seed)[..],
        "{who}: image differs from what the guest wrote"
    );
    assert!(
        on_disk[SPAN as usize..].iter().all(|&b| b == 0),
        "{who}: wrote past the span"
    );
}

#[test]
fn blk_through_virtio_drivers_reaches_the_image_byte_for_byte_under_every_policy() {
    if !kvm_prerequisite() {
        return;
    }
    for policy in POLICIES {
        for wait in ["irq", "poll"] {
            let dir = tempfile::tempdir().unwrap();
            let img = image(dir.path(), &[], 4 << 20);
            let cmdline = format!("{} blk_wait={wait}", write_verify_cmdline(7));
            let fin = nightshift(&[
                "--policy",
                policy,
                "--disk",
                img.to_str().unwrap(),
                "--cmdline",
                &cmdline,
            ]);
            let who = format!("{policy}/{wait}");
            assert_eq!(fin.code(), Some(0), "{who}: {}\n{}", fin.stdout, fin.stderr);
            let r = blk_result(&fin, &who);
            assert_eq!(
                (r["errors"].as_str(), r["verify_errors"].as_str()),
                ("0", "0"),
                "{who}: {r:?}"
            );
            // Written once, read back once, plus the FLUSH.
            assert_eq!(r["bytes"], (2 * SPAN).to_string(), "{who}: {r:?}");
            check_written(&img, 7, &who);
        }
    }
}

#[test]
fn blk_through_virtio_drivers_reads_a_host_prepared_image_under_every_policy() {
    if !kvm_prerequisite() {
        return;
    }
    for policy in POLICIES {
        let dir = tempfile::tempdir().unwrap();
        let img = image(dir.path(), &pattern(SPAN, 3), SPAN);
        let disk = img.to_str().unwrap();
        let read = |seed: u64| {
            let cmdline = format!(
                "workload=blk blk_driver=virtio-drivers blk_mode=read-verify blk_span={SPAN} blk_seed={seed} blk_qd=5"
            );
            nightshift(&["--policy", policy, "--disk", disk, "--cmdline", &cmdline])
        };
        let fin = read(3);
        assert_eq!(
            fin.code(),
            Some(0),
            "{policy}: {}\n{}",
            fin.stdout,
            fin.stderr
        );
        let r = blk_result(&fin, policy);
        assert_eq!(r["verify_errors"], "0", "{policy}: {r:?}");
        assert_eq!(r["bytes"], SPAN.to_string(), "{policy}: {r:?}");
        // A wrong seed is caught: the check can fail.
        let r = blk_result(&read(4), policy);
        assert_eq!(
            r["verify_errors"],
            (SPAN / 4096).to_string(),
            "{policy}: {r:?}"
        );
    }
}

#[test]
fn blk_through_virtio_drivers_under_qemu_microvm() {
    if !kvm_prerequisite() {
        return;
    }
    let Some(bin) = qemu() else { return };
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), &[], 4 << 20);
    let drive = format!("id=d0,file={},format=raw,if=none", img.display());
    let fin = qemu_run(
        bin,
        &write_verify_cmdline(9),
        &["-drive", &drive, "-device", "virtio-blk-device,drive=d0"],
    );
    // isa-debug-exit: status 0 comes out as (0 << 1) | 1.
    assert_eq!(fin.code(), Some(1), "{}\n{}", fin.stdout, fin.stderr);
    let r = blk_result(&fin, "qemu");
    assert_eq!(
        (r["errors"].as_str(), r["verify_errors"].as_str()),
        ("0", "0"),
        "{r:?}"
    );
    check_written(&img, 9, "qemu");
}

#[test]
fn rng_under_qemu_microvm() {
    if !kvm_prerequisite() {
        return;
    }
    let Some(bin) = qemu() else { return };
    let fin = qemu_run(
        bin,
        "workload=rng rng_bytes=1M",
        &[
            "-object",
            "rng-random,id=rng0,filename=/dev/urandom",
            "-device",
            "virtio-rng-device,rng=rng0",
        ],
    );
    assert_eq!(fin.code(), Some(1), "{}\n{}", fin.stdout, fin.stderr);
    check_rng(&fin.result("rng"), 1 << 20);
}

#[test]
fn rng_under_nightshift_every_policy() {
    if !kvm_prerequisite() {
        return;
    }
    for policy in POLICIES {
        for bytes in [1u64, 4096 + 1, 1 << 20] {
            let cmdline = format!("workload=rng rng_bytes={bytes}");
            let fin = nightshift(&["--policy", policy, "--rng", "--cmdline", &cmdline]);
            assert_eq!(
                fin.code(),
                Some(0),
                "{policy}: {}\n{}",
                fin.stdout,
                fin.stderr
            );
            check_rng(&fin.result("rng"), bytes);
        }
    }
}

#[test]
fn without_a_device_the_workloads_say_so() {
    if !kvm_prerequisite() {
        return;
    }
    let fin = nightshift(&["--cmdline", "workload=rng"]);
    assert_eq!(fin.code(), Some(0), "{}\n{}", fin.stdout, fin.stderr);
    assert_eq!(fin.result("rng")["error"], "no-device", "{}", fin.stdout);
    let fin = nightshift(&[
        "--cmdline",
        "workload=net net_ip=10.99.0.2/24 net_peer=10.99.0.1",
    ]);
    assert_eq!(fin.result("net")["error"], "no-device", "{}", fin.stdout);
}
