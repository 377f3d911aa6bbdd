//! virtio-blk end to end: the test guest's driver against nightshift's device,
//! under every device-work policy and both irqchips (issue: virtio-blk over
//! virtio-mmio; issue 8 for the `--irqchip user` idle-executor tests at the end).
//!
//! The guest and these tests share one data pattern (docs/guest-abi.md): the
//! 8-byte little-endian word at disk offset `o` is
//! `o.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ seed`.

mod common;

use std::path::Path;

use common::{
    have, nightshift_bin, nightshift_on, records, require, result_lines, run_bounded, Run,
};

on_both_irqchips!(
    guest_writes_reach_the_image_byte_for_byte_under_every_policy,
    a_host_prepared_image_reads_back_in_the_guest_under_every_policy,
    flush_calls_fdatasync_on_the_backing_file,
    a_read_only_disk_refuses_writes_with_ioerr,
    a_hostile_guest_gets_errors_not_a_dead_vmm,
    under_idle_requests_run_on_idle_vcpus,
    under_idle_a_guest_that_never_idles_still_gets_its_io_through_workers,
);

const POLICIES: [&str; 3] = ["workers", "inline", "idle"];
const SPAN: u64 = 1 << 20;

fn pattern(len: u64, seed: u64) -> Vec<u8> {
    (0..len)
        .step_by(8)
        .flat_map(|o| (o.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ seed).to_le_bytes())
        .collect()
}

fn image(dir: &Path, name: &str, bytes: &[u8], size: u64) -> std::path::PathBuf {
    let path = dir.join(name);
    let mut data = bytes.to_vec();
    data.resize(size as usize, 0);
    std::fs::write(&path, data).unwrap();
    path
}

fn blk_result(run: &Run) -> std::collections::HashMap<String, String> {
    let results: Vec<_> = result_lines(&run.stdout)
        .into_iter()
        .filter(|r| r.get("workload").is_some_and(|w| w == "blk"))
        .collect();
    assert_eq!(results.len(), 1, "{}\n{}", run.stdout, run.stderr);
    results.into_iter().next().unwrap()
}

fn guest_writes_reach_the_image_byte_for_byte_under_every_policy(irqchip: &str) {
    for policy in POLICIES {
        let dir = tempfile::tempdir().unwrap();
        let img = image(dir.path(), "disk.img", &[], 4 << 20);
        let disk = img.to_str().unwrap();
        let cmdline =
            format!("workload=blk blk_mode=write-verify blk_span={SPAN} blk_seed=7 blk_qd=4");
        let run = nightshift_on(
            irqchip,
            &[
                "--vcpus",
                "1",
                "--policy",
                policy,
                "--disk",
                disk,
                "--cmdline",
                &cmdline,
            ],
        );
        run.assert_code(0);
        let r = blk_result(&run);
        assert_eq!(
            (r["errors"].as_str(), r["verify_errors"].as_str()),
            ("0", "0"),
            "{policy}: {r:?}"
        );
        let on_disk = std::fs::read(&img).unwrap();
        assert!(
            on_disk[..SPAN as usize] == pattern(SPAN, 7)[..],
            "{policy}: image differs from what the guest wrote"
        );
        assert!(
            on_disk[SPAN as usize..].iter().all(|&b| b == 0),
            "{policy}: wrote past the span"
        );
        // The guest's FLUSH reached the backend (fdatasync returned).
        let report = run.report();
        assert!(
            report["disks"][0]["flushes"].as_u64().unwrap() >= 1,
            "{policy}: {}",
            report["disks"]
        );
    }
}

fn a_host_prepared_image_reads_back_in_the_guest_under_every_policy(irqchip: &str) {
    for policy in POLICIES {
        let dir = tempfile::tempdir().unwrap();
        let img = image(dir.path(), "disk.img", &pattern(SPAN, 3), SPAN);
        let cmdline =
            format!("workload=blk blk_mode=read-verify blk_span={SPAN} blk_seed=3 blk_qd=2");
        let run = nightshift_on(
            irqchip,
            &[
                "--vcpus",
                "1",
                "--policy",
                policy,
                "--disk",
                img.to_str().unwrap(),
                "--cmdline",
                &cmdline,
            ],
        );
        run.assert_code(0);
        let r = blk_result(&run);
        assert_eq!(r["verify_errors"], "0", "{policy}: {r:?}");
        assert_eq!(r["bytes"], SPAN.to_string(), "{policy}: {r:?}");
        // And a wrong seed is caught: the check can fail.
        let wrong = "workload=blk blk_mode=read-verify blk_span=65536 blk_seed=4";
        let run = nightshift_on(
            irqchip,
            &[
                "--vcpus",
                "1",
                "--policy",
                policy,
                "--disk",
                img.to_str().unwrap(),
                "--cmdline",
                wrong,
            ],
        );
        assert_ne!(blk_result(&run)["verify_errors"], "0", "{policy}");
    }
}

fn flush_calls_fdatasync_on_the_backing_file(irqchip: &str) {
    if !require(have("strace", "-V"), "strace") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), "disk.img", &[], 1 << 20);
    let trace = dir.path().join("trace");
    let mut cmd = std::process::Command::new("strace");
    cmd.args(["-f", "-qq", "-e", "trace=fdatasync,fsync", "-o"])
        .arg(&trace)
        .arg(nightshift_bin().get_program())
        .args(["run", "--irqchip", irqchip, "--vcpus", "1"])
        .args(["--disk", img.to_str().unwrap()])
        .args([
            "--cmdline",
            "workload=blk blk_mode=write-verify blk_span=65536",
        ]);
    let out = run_bounded(cmd);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let trace = std::fs::read_to_string(&trace).unwrap();
    assert!(
        trace
            .lines()
            .any(|l| l.contains("fdatasync(") && l.contains("= 0")),
        "{trace}"
    );
}

fn a_read_only_disk_refuses_writes_with_ioerr(irqchip: &str) {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), "ro.img", &pattern(SPAN, 1), SPAN);
    let disk = format!("{},ro", img.display());
    let run = nightshift_on(
        irqchip,
        &[
            "--vcpus",
            "1",
            "--disk",
            &disk,
            "--cmdline",
            "workload=blk blk_mode=randwrite blk_ops=8",
        ],
    );
    run.assert_code(0);
    let r = blk_result(&run);
    assert_eq!(r["errors"], "8", "{r:?}");
    assert!(
        std::fs::read(&img).unwrap() == pattern(SPAN, 1),
        "a read-only image changed"
    );
    assert!(run.stderr.contains("read-only"), "{}", run.stderr);
}

fn a_hostile_guest_gets_errors_not_a_dead_vmm(irqchip: &str) {
    for ro in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let img = image(dir.path(), "h.img", &[], 16 << 20);
        let disk = format!("{}{}", img.display(), if ro { ",ro" } else { "" });
        let run = nightshift_on(
            irqchip,
            &[
                "--vcpus",
                "1",
                "--disk",
                &disk,
                "--cmdline",
                "workload=blk blk_mode=hostile",
            ],
        );
        run.assert_code(0);
        assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
        let cases: Vec<_> = records(&run.stdout, "hostile ")
            .into_iter()
            .filter(|c| !c.contains_key("skipped"))
            .collect();
        assert!(cases.len() >= 15, "{}", run.stdout);
        for c in &cases {
            // Every bad request was answered, or the device said it needs a reset.
            assert!(
                c["used"] == "1" || c["needs_reset"] == "1",
                "unanswered: {c:?}"
            );
            // An answered bad request never reports success, except the
            // register-abuse case whose final good request must succeed.
            if c["used"] == "1" && c["case"] != "bad-registers" && c["status"] != "none" {
                assert_ne!(c["status"], "0", "{c:?}");
            }
        }
        let r = blk_result(&run);
        assert_eq!(r["after_ok"], "1", "the device stopped working: {r:?}");
        // A log line for each bad request or protocol error.
        let warnings = run.stderr.lines().filter(|l| l.contains("WARN")).count();
        assert!(
            warnings >= cases.len() - 1,
            "{warnings} warnings for {} cases:\n{}",
            cases.len(),
            run.stderr
        );
        // Nothing outside guest memory was touched: the image is unchanged
        // apart from what the good requests wrote (nothing, they only read).
        assert!(std::fs::read(&img).unwrap().iter().all(|&b| b == 0));
    }
}

fn work_places(run: &Run) -> (u64, u64) {
    let report = run.report();
    let sum = |key: &str| -> u64 {
        report["work"][key]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["run"]["items"].as_u64().unwrap())
            .sum()
    };
    (sum("executors"), sum("workers"))
}

fn under_idle_requests_run_on_idle_vcpus(irqchip: &str) {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), "d.img", &[], 4 << 20);
    let run = nightshift_on(
        irqchip,
        &[
            "--vcpus",
            "1",
            "--policy",
            "idle",
            // A generous deadline: with the other tests' VMs on the same 2 CPUs,
            // the fallback to workers must not be what this test sees.
            "--deadline-us",
            "50000",
            "--disk",
            img.to_str().unwrap(),
            "--cmdline",
            "workload=blk blk_mode=randread blk_ops=200 blk_qd=1",
        ],
    );
    run.assert_code(0);
    assert_eq!(blk_result(&run)["errors"], "0");
    let (executor, worker) = work_places(&run);
    // The guest halts while it waits: its own vCPU thread runs the requests.
    assert!(
        executor > 0 && executor >= worker,
        "executor {executor}, worker {worker}"
    );
}

fn under_idle_a_guest_that_never_idles_still_gets_its_io_through_workers(irqchip: &str) {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), "d.img", &[], 4 << 20);
    // vCPU0 computes, vCPU1 polls for completions: neither ever halts.
    let run = nightshift_on(
        irqchip,
        &[
            "--policy",
            "idle",
            "--disk",
            img.to_str().unwrap(),
            "--cmdline",
            "workload=compute,blk blk_mode=randread blk_ops=50 blk_wait=poll ms=300",
        ],
    );
    run.assert_code(0);
    let r = blk_result(&run);
    assert_eq!(
        (r["ops"].as_str(), r["errors"].as_str()),
        ("50", "0"),
        "{r:?}"
    );
    let (_, worker) = work_places(&run);
    assert!(
        worker > 0,
        "no request reached a worker through the deadline fallback"
    );
}

/// Per-vCPU counters from the report, by vCPU index.
fn vcpu_counter(report: &serde_json::Value, vcpu: usize, key: &str) -> u64 {
    report["vcpus"][vcpu][key]
        .as_u64()
        .unwrap_or_else(|| panic!("no {key} for vcpu{vcpu}: {}", report["vcpus"]))
}

/// Items each executor (by name) and all workers ran.
fn items_by_executor(report: &serde_json::Value) -> (std::collections::HashMap<String, u64>, u64) {
    let executors = report["work"]["executors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let name = e["name"].as_str().unwrap().to_string();
            (name, e["run"]["items"].as_u64().unwrap())
        })
        .collect();
    let workers = report["work"]["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["run"]["items"].as_u64().unwrap())
        .sum();
    (executors, workers)
}

#[test]
fn under_user_irqchip_requests_run_in_the_halts_of_the_vcpu_that_waits_without_signals() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), "d.img", &[], 4 << 20);
    // vCPU0 computes (never halts while it does: 2 s, far longer than the
    // reads take even on a loaded host); vCPU1 does closed-loop reads and
    // halts for each completion.
    let run = nightshift_on(
        "user",
        &[
            "--policy",
            "idle",
            // Far beyond any halt: the fallback to workers is not what this sees.
            "--deadline-us",
            "500000",
            "--disk",
            img.to_str().unwrap(),
            "--cmdline",
            "workload=compute,blk blk_mode=randread blk_ops=200 blk_qd=1 ms=2000",
        ],
    );
    run.assert_code(0);
    let r = blk_result(&run);
    assert_eq!(
        (r["ops"].as_str(), r["errors"].as_str()),
        ("200", "0"),
        "{r:?}"
    );
    let report = run.report();
    let (executors, workers) = items_by_executor(&report);
    assert_eq!(workers, 0, "{}", report["work"]);
    // Every request ran on a vCPU thread inside a guest HLT, most on vCPU1's.
    let in_halts: u64 = (0..2).map(|v| vcpu_counter(&report, v, "halt_items")).sum();
    let on_executors: u64 = executors.values().sum();
    assert!(on_executors >= 200, "{executors:?}");
    assert_eq!(in_halts, on_executors, "{}", report["vcpus"]);
    assert!(
        executors["vcpu1"] > executors["vcpu0"],
        "the waiting vCPU should run its own requests: {executors:?}"
    );
    assert_eq!(
        vcpu_counter(&report, 1, "halt_items"),
        executors["vcpu1"],
        "{}",
        report["vcpus"]
    );
    // Work was handed over by plain wakes (or found at the halt), never a signal.
    for v in 0..2 {
        assert_eq!(
            vcpu_counter(&report, v, "work_kicks"),
            0,
            "{}",
            report["vcpus"]
        );
    }
    assert!(vcpu_counter(&report, 1, "hlt_exits") > 0);
    // The completions vCPU1 made on its own thread were injected on its next
    // entry without a wake: it was told (woken or kicked) only of those made
    // elsewhere, and of a few IPIs (INIT, STARTUP, the BSP's release).
    let told = vcpu_counter(&report, 1, "irq_wakes") + vcpu_counter(&report, 1, "irq_kicks");
    let elsewhere = on_executors - executors["vcpu1"];
    assert!(
        told <= elsewhere + 8,
        "vCPU1 was told {told} times for {elsewhere} completions made elsewhere: {}",
        report["vcpus"]
    );
}

#[test]
fn under_user_irqchip_work_in_a_halt_never_runs_past_the_vcpus_timer_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), "d.img", &[], 4 << 20);
    let disk = format!("{},xts=4", img.display());
    // vCPU0 sleeps in 1 ms timer ticks, vCPU1 reads; vCPU0 runs much of
    // vCPU1's (costly) work in its halts. Its budget (5 ms) is longer than
    // a tick, so each such run must be cut to end by vCPU0's next tick.
    let run = nightshift_on(
        "user",
        &[
            "--policy",
            "idle",
            "--budget-us",
            "5000",
            "--deadline-us",
            "500000",
            "--disk",
            &disk,
            "--cmdline",
            "workload=idle,blk blk_mode=randread blk_qd=1 ms=200 tick_us=1000",
        ],
    );
    run.assert_code(0);
    let idle = result_lines(&run.stdout)
        .into_iter()
        .find(|r| r["workload"] == "idle")
        .expect("no idle result");
    assert_eq!(idle["ticks"], idle["expected"], "{idle:?}");
    assert_eq!(blk_result(&run)["errors"], "0");
    let report = run.report();
    let runs = vcpu_counter(&report, 0, "halt_runs");
    assert!(
        runs > 0,
        "vCPU0 ran no work in its halts: {}",
        report["vcpus"]
    );
    assert_eq!(
        vcpu_counter(&report, 0, "idle_runs_clamped"),
        runs,
        "a run in a ticking vCPU's halt was given more than the time to its tick: {}",
        report["vcpus"]
    );
    // Each tick the guest counted is one the VMM's APIC timer raised.
    let ticks: u64 = idle["ticks"].parse().unwrap();
    assert!(vcpu_counter(&report, 0, "timer_irqs") >= ticks);
}
