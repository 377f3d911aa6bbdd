//! Faults in the VMM itself (issue 9 items 2 and 6): a panic in any VMM
//! thread, or a system call its seccomp filter forbids, ends the VM with a
//! named reason and a non-zero status, within the tests' timeout, never a
//! hang. Faults are injected through the test-only seam
//! `NIGHTSHIFT_TEST_FAULT=KIND@THREAD` (vmm::vmm_thread::Fault).

mod common;

use common::{nightshift_env, Run, Spawned};

/// A guest that runs long enough for any injected fault to land first, on
/// both vCPUs, with a disk so that the notifier and the workers have work.
fn run_with_fault(fault: &str, extra: &[&str]) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("d.img");
    std::fs::write(&img, vec![0u8; 1 << 20]).unwrap();
    let mut args = vec![
        "--disk",
        img.to_str().unwrap(),
        "--cmdline",
        "workload=idle,blk blk_mode=randread blk_ops=100000 ms=600000 tick_us=10000",
    ];
    args.extend(extra);
    nightshift_env(&args, &[("NIGHTSHIFT_TEST_FAULT", fault)])
}

fn assert_panic_exit(run: &Run, thread_prefix: &str) {
    run.assert_code(124);
    let named = format!("VMM thread {thread_prefix}");
    assert!(
        run.stderr.contains(&named) && run.stderr.contains("panicked: injected fault"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_panicking_vcpu_thread_ends_the_vm_with_a_named_reason() {
    let run = run_with_fault("panic@vcpu0", &[]);
    assert_panic_exit(&run, "vcpu0");
    let report = run.report();
    assert!(
        report["exit"].as_str().unwrap().contains("vcpu0 panicked"),
        "{report}"
    );
    assert_eq!(report["exit_code"], 124);
}

#[test]
fn a_panicking_notifier_ends_the_vm() {
    assert_panic_exit(&run_with_fault("panic@ns-notify", &[]), "ns-notify");
}

#[test]
fn a_panic_on_an_engine_worker_ends_the_vm() {
    let run = run_with_fault("panic@worker", &["--policy", "workers"]);
    assert_panic_exit(&run, "ns-work");
}

#[test]
fn a_panic_on_the_main_thread_is_named_too() {
    assert_panic_exit(&run_with_fault("panic@main", &[]), "main");
}

fn assert_seccomp_exit(run: &Run, thread: &str) {
    run.assert_code(159);
    // SYS_syslog is 103 on x86-64: the handler names the thread and the call.
    let line = format!("seccomp: thread {thread}");
    assert!(
        run.stderr.contains(&line) && run.stderr.contains("forbidden system call 103"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_forbidden_system_call_on_a_vcpu_ends_the_vm_named() {
    let run = run_with_fault("syscall@vcpu1", &[]);
    assert_seccomp_exit(&run, "vcpu1");
    let report = run.report();
    let exit = report["exit"].as_str().unwrap();
    assert!(
        exit.contains("vcpu1") && exit.contains("system call 103"),
        "{exit}"
    );
}

#[test]
fn forbidden_system_calls_on_every_other_thread_class_are_refused() {
    assert_seccomp_exit(&run_with_fault("syscall@ns-notify", &[]), "ns-notify");
    // An engine worker (bound in the engine's thread-start hook) cannot park
    // as a vCPU does, since shutdown joins it: the process ends at once,
    // the worker named, without a report.
    assert_seccomp_exit(
        &run_with_fault("syscall@worker", &["--policy", "workers"]),
        "ns-work",
    );
    assert_seccomp_exit(&run_with_fault("syscall@main", &[]), "main");
}

#[test]
fn under_seccomp_log_the_call_is_allowed_and_the_vm_goes_on() {
    let run = nightshift_env(
        &["--seccomp", "log", "--cmdline", "workload=exit status=0"],
        &[("NIGHTSHIFT_TEST_FAULT", "syscall@vcpu0")],
    );
    run.assert_code(0);
    assert!(
        run.stderr
            .contains("injected forbidden system call returned"),
        "{}",
        run.stderr
    );
}

/// `Seccomp:` of every thread of process `pid` (name, mode).
fn seccomp_modes(pid: u32) -> Vec<(String, String)> {
    let mut modes = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let status = std::fs::read_to_string(task.unwrap().path().join("status")).unwrap();
        let field = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .map(|v| v.trim().to_string())
                .unwrap_or_default()
        };
        modes.push((field("Name:"), field("Seccomp:")));
    }
    modes
}

#[test]
fn every_thread_of_a_running_vm_has_a_filter() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("d.img");
    std::fs::write(&img, vec![0u8; 1 << 20]).unwrap();
    for (mode, want) in [("enforce", "2"), ("off", "0")] {
        let mut vm = Spawned::nightshift(
            &[
                "--seccomp",
                mode,
                "--disk",
                img.to_str().unwrap(),
                "--cmdline",
                "workload=idle,blk blk_mode=randread blk_ops=1 ms=3600000 tick_us=100000",
            ],
            &[],
        );
        // The block result comes after the guest's I/O: every thread has
        // started. Main confines itself right after starting the vCPUs (it
        // handles no guest input before that), so look until it has.
        vm.wait_for_line("workload=blk");
        let deadline = std::time::Instant::now() + common::timeout();
        let mut modes = seccomp_modes(vm.pid());
        while modes.iter().any(|(_, m)| m != want) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
            modes = seccomp_modes(vm.pid());
        }
        vm.kill();
        vm.wait();
        let names: Vec<&str> = modes.iter().map(|(n, _)| n.as_str()).collect();
        for class in ["vcpu0", "vcpu1", "ns-notify", "ns-work0", "nightshift"] {
            assert!(names.contains(&class), "{class} missing: {modes:?}");
        }
        assert!(
            modes.iter().all(|(_, m)| m == want),
            "--seccomp {mode}: {modes:?}"
        );
    }
}
