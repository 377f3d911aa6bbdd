//! The same test guest under QEMU `-M microvm` (a peer VMM), when QEMU is installed.
//! `./dev test` installs it, so in CI these tests always run.

mod common;
// Every VMM here runs under common::timeout() (nightshift_on / run_bounded):
// a hang fails the test instead of stalling CI.

use std::process::Command;

use common::{have, require, result_lines, run_bounded, testguest_elf};

/// Boots the test guest under QEMU microvm; returns (exit code, serial
/// output), or None if QEMU is missing outside CI (under CI that fails).
pub fn run_qemu(cmdline: &str, extra: &[&str]) -> Option<(Option<i32>, String)> {
    let bin = "qemu-system-x86_64";
    if !require(have(bin, "--version"), bin) {
        return None;
    }
    let mut cmd = Command::new(bin);
    cmd.args([
        "-M",
        "microvm",
        "-enable-kvm",
        "-cpu",
        "host,-arch-capabilities",
    ])
    .args([
        "-smp",
        "2",
        "-m",
        "256M",
        "-nodefaults",
        "-no-user-config",
        "-nographic",
    ])
    .args([
        "-serial",
        "stdio",
        "-device",
        "isa-debug-exit,iobase=0xf4,iosize=4",
    ])
    .arg("-kernel")
    .arg(testguest_elf())
    .args(["-append", cmdline])
    .args(extra);
    let out = run_bounded(cmd);
    Some((out.code, out.stdout))
}

#[test]
fn the_test_guest_boots_under_qemu_microvm() {
    let Some((code, out)) = run_qemu("workload=compute ms=50", &[]) else {
        return;
    };
    assert!(
        out.contains("nightshift-testguest"),
        "no banner under QEMU:\n{out}"
    );
    assert_eq!(result_lines(&out).len(), 2, "{out}");
    // isa-debug-exit: status 0 comes out as (0 << 1) | 1.
    assert_eq!(code, Some(1), "{out}");
}

#[test]
fn the_block_workload_runs_the_same_under_qemu_microvm() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    let span = 1u64 << 20;
    let pattern: Vec<u8> = (0..span)
        .step_by(8)
        .flat_map(|o| (o.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 5).to_le_bytes())
        .collect();
    std::fs::write(&img, &pattern).unwrap();
    let drive = format!("id=d0,file={},format=raw,if=none", img.display());
    let extra = [
        "-global",
        "virtio-mmio.force-legacy=false",
        "-drive",
        &drive,
        "-device",
        "virtio-blk-device,drive=d0",
    ];
    let cmdline =
        format!("workload=idle,blk blk_mode=read-verify blk_span={span} blk_seed=5 ms=10");
    let Some((code, out)) = run_qemu(&cmdline, &extra) else {
        return;
    };
    assert_eq!(code, Some(1), "{out}");
    let blk: Vec<_> = result_lines(&out)
        .into_iter()
        .filter(|r| r.get("workload").is_some_and(|w| w == "blk"))
        .collect();
    assert_eq!(blk.len(), 1, "{out}");
    for key in [
        "ops",
        "iops",
        "lat_us_p50",
        "lat_us_p99",
        "lat_us_p999",
        "wakeups",
    ] {
        assert!(blk[0].contains_key(key), "{key} missing under QEMU: {out}");
    }
    assert_eq!(blk[0]["verify_errors"], "0", "{out}");
    assert_eq!(blk[0]["bytes"], span.to_string(), "{out}");
}
