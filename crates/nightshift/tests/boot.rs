//! Booting the built-in test guest: what `nightshift run` must show (issue: VM core).
//!
//! Each test starts the real binary on /dev/kvm and checks what the guest
//! printed and how the VMM exited. Nothing here depends on timing.

mod common;

use common::{nightshift, result_lines, Run};

#[test]
fn default_run_prints_banner_and_a_result_per_vcpu() {
    let run = nightshift(&[]);
    run.assert_code(0);
    assert!(
        run.stdout.contains("nightshift-testguest"),
        "no banner:\n{}",
        run.stdout
    );
    let results = result_lines(&run.stdout);
    let mut cpus: Vec<&str> = results.iter().map(|r| r["cpu"].as_str()).collect();
    cpus.sort_unstable();
    assert_eq!(cpus, ["0", "1"], "{}", run.stdout);
    assert!(results.iter().all(|r| r["workload"] == "compute"));
    assert!(results
        .iter()
        .all(|r| r["iters"].parse::<u64>().unwrap() > 0));
    assert!(run.stdout.contains("done status=0"));
}

#[test]
fn one_vcpu_boots() {
    let run = nightshift(&["--vcpus", "1", "--cmdline", "workload=compute ms=10"]);
    run.assert_code(0);
    let results = result_lines(&run.stdout);
    assert_eq!(results.len(), 1, "{}", run.stdout);
    assert_eq!(results[0]["cpu"], "0");
}

#[test]
fn guest_exit_status_becomes_the_vmm_exit_status() {
    let run = nightshift(&["--cmdline", "workload=exit status=3"]);
    run.assert_code(3);
    assert!(run.stdout.contains("nightshift-testguest"));
}

#[test]
fn timer_interrupts_wake_the_guest_from_hlt() {
    let run = nightshift(&["--cmdline", "workload=idle ms=20 tick_us=1000"]);
    run.assert_code(0);
    let results = result_lines(&run.stdout);
    assert_eq!(results.len(), 2, "{}", run.stdout);
    for r in &results {
        let ticks: u64 = r["ticks"].parse().unwrap();
        assert!(ticks > 0, "no timer ticks while idle: {r:?}");
    }
    // The vCPUs really slept in the kernel: KVM counted halts for each.
    let report = run.report();
    for v in report["vcpus"].as_array().unwrap() {
        assert!(v["halt_exits"].as_u64().unwrap() > 0, "{v}");
    }
}

#[test]
fn a_bad_instruction_ends_the_vm_with_a_named_cause() {
    let run = nightshift(&["--cmdline", "workload=ud"]);
    assert_failed_with_cause(&run);
}

#[test]
fn a_triple_fault_ends_the_vm_with_a_named_cause() {
    let run = nightshift(&["--cmdline", "workload=triplefault"]);
    assert_failed_with_cause(&run);
    assert!(run.stderr.contains("triple fault"), "{}", run.stderr);
}

fn assert_failed_with_cause(run: &Run) {
    assert_ne!(run.code, Some(0), "{}", run.stderr);
    assert!(
        run.code.is_some(),
        "VMM was killed by a signal:\n{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("shut down") || run.stderr.contains("internal error"),
        "no cause named:\n{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("rip="),
        "no registers in the report:\n{}",
        run.stderr
    );
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
}

#[test]
fn a_missing_kernel_is_a_one_line_error() {
    let run = nightshift(&["--kernel", "/nonexistent/vmlinux"]);
    assert_eq!(run.code, Some(1));
    assert_eq!(run.stderr.trim().lines().count(), 1, "{}", run.stderr);
    assert!(run
        .stderr
        .contains("cannot open kernel /nonexistent/vmlinux"));
}

#[test]
fn a_non_elf_kernel_is_a_one_line_error() {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), b"this is not an ELF file\n").unwrap();
    let run = nightshift(&["--kernel", file.path().to_str().unwrap()]);
    assert_eq!(run.code, Some(1));
    assert_eq!(run.stderr.trim().lines().count(), 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("is neither an ELF (PVH) nor a bzImage"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_json_config_file_sets_the_vm_up() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("vm.json");
    let serial = dir.path().join("serial.log");
    let json = serde_json::json!({
        "vcpus": 1,
        "mem_mib": 64,
        "cmdline": "workload=exit status=5",
        "serial_file": serial,
    });
    std::fs::write(&config, json.to_string()).unwrap();
    let run = nightshift(&["--config", config.to_str().unwrap()]);
    run.assert_code(5);
    let copy = std::fs::read_to_string(&serial).unwrap();
    assert!(copy.contains("nightshift-testguest"), "serial file: {copy}");
}
