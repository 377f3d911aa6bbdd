//! Booting the built-in test guest: what `nightshift run` must show (issue: VM core).
//!
//! Each test starts the real binary on /dev/kvm and checks what the guest
//! printed and how the VMM exited. Nothing here depends on timing. The VM
//! tests run under both irqchips (`name::kernel`, `name::user`).

mod common;

use common::{nightshift, nightshift_on, result_lines, Run};

on_both_irqchips!(
    default_run_prints_banner_and_a_result_per_vcpu,
    one_vcpu_boots,
    guest_exit_status_becomes_the_vmm_exit_status,
    timer_interrupts_wake_the_guest_from_hlt,
    a_bad_instruction_ends_the_vm_with_a_named_cause,
    a_triple_fault_ends_the_vm_with_a_named_cause,
    a_json_config_file_sets_the_vm_up,
);

fn default_run_prints_banner_and_a_result_per_vcpu(irqchip: &str) {
    let run = nightshift_on(irqchip, &[]);
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

fn one_vcpu_boots(irqchip: &str) {
    let run = nightshift_on(
        irqchip,
        &["--vcpus", "1", "--cmdline", "workload=compute ms=10"],
    );
    run.assert_code(0);
    let results = result_lines(&run.stdout);
    assert_eq!(results.len(), 1, "{}", run.stdout);
    assert_eq!(results[0]["cpu"], "0");
}

fn guest_exit_status_becomes_the_vmm_exit_status(irqchip: &str) {
    let run = nightshift_on(irqchip, &["--cmdline", "workload=exit status=3"]);
    run.assert_code(3);
    assert!(run.stdout.contains("nightshift-testguest"));
}

fn timer_interrupts_wake_the_guest_from_hlt(irqchip: &str) {
    let run = nightshift_on(irqchip, &["--cmdline", "workload=idle ms=20 tick_us=1000"]);
    run.assert_code(0);
    let results = result_lines(&run.stdout);
    assert_eq!(results.len(), 2, "{}", run.stdout);
    for r in &results {
        let ticks: u64 = r["ticks"].parse().unwrap();
        assert!(ticks > 0, "no timer ticks while idle: {r:?}");
    }
    // The vCPUs really halted: KVM (kernel) or the vCPU threads (user)
    // counted halts for each, and under the user irqchip every tick was an
    // interrupt the VMM injected.
    let report = run.report();
    assert_eq!(report["irqchip"], irqchip);
    for v in report["vcpus"].as_array().unwrap() {
        assert!(v["halt_exits"].as_u64().unwrap() > 0, "{v}");
        if irqchip == "user" {
            assert!(v["hlt_exits"].as_u64().unwrap() > 0, "{v}");
            assert!(v["timer_irqs"].as_u64().unwrap() > 0, "{v}");
            assert!(
                v["injected"].as_u64().unwrap() >= v["timer_irqs"].as_u64().unwrap(),
                "{v}"
            );
        }
    }
}

fn a_bad_instruction_ends_the_vm_with_a_named_cause(irqchip: &str) {
    let run = nightshift_on(irqchip, &["--cmdline", "workload=ud"]);
    assert_failed_with_cause(&run);
}

fn a_triple_fault_ends_the_vm_with_a_named_cause(irqchip: &str) {
    let run = nightshift_on(irqchip, &["--cmdline", "workload=triplefault"]);
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

fn a_json_config_file_sets_the_vm_up(irqchip: &str) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("vm.json");
    let serial = dir.path().join("serial.log");
    let json = serde_json::json!({
        "vcpus": 1,
        "mem_mib": 64,
        "cmdline": "workload=exit status=5",
        "serial_file": serial,
        "irqchip": irqchip,
    });
    std::fs::write(&config, json.to_string()).unwrap();
    let run = nightshift(&["--config", config.to_str().unwrap()]);
    run.assert_code(5);
    let copy = std::fs::read_to_string(&serial).unwrap();
    assert!(copy.contains("nightshift-testguest"), "serial file: {copy}");
    assert_eq!(run.report()["irqchip"], irqchip);
}
