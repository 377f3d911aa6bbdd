//! A kicked vCPU leaves KVM_RUN and re-enters it without waking its guest:
//! KVM keeps a halted vCPU halted across the signal exit. This is what lets an
//! idle vCPU's thread run device work "for free". Under the user irqchip a
//! halted vCPU waits in userspace: a kick then only makes its next entry
//! return at once, and the guest still sleeps until its own interrupt.

mod common;

use std::time::{Duration, Instant};

use common::{result_lines, testguest_elf, within};
use vmm::boot::KernelImage;
use vmm::{Vm, VmConfig};

on_both_irqchips!(
    kicking_a_halted_vcpu_does_not_wake_its_guest,
    paused_vcpus_do_not_run_until_resumed,
    pausing_a_halted_vcpu_does_not_wake_its_guest,
);

fn irqchip_kind(name: &str) -> vmm::irqchip::IrqChipKind {
    name.parse().unwrap()
}

fn kicking_a_halted_vcpu_does_not_wake_its_guest(irqchip: &str) {
    let dir = tempfile::tempdir().unwrap();
    let serial = dir.path().join("serial.log");
    let config = VmConfig {
        // One vCPU: with two, one CPU finishing first wakes the other with an
        // IPI, a genuine extra wake-up this test must not count.
        vcpus: 1,
        // Long timer steps: the guest halts for 20 ms at a time.
        cmdline: "workload=idle ms=200 tick_us=20000".into(),
        serial_file: Some(serial.clone()),
        irqchip: irqchip_kind(irqchip),
        ..VmConfig::default()
    };
    let elf = testguest_elf();
    let vm = Vm::new(config, KernelImage::File(&elf), Instant::now()).unwrap();
    let running = vm.start().unwrap();

    // Kick the vCPU every 500 µs while the guest sleeps (bounded: the guest
    // ends itself after 200 ms of its own time).
    let mut kicks = 0u64;
    let deadline = Instant::now() + common::timeout();
    while !running.has_ended() {
        assert!(Instant::now() < deadline, "the guest never ended");
        for v in running.vcpus() {
            kicks += u64::from(v.kick());
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    let report = within("the kicked VM", move || running.wait());
    assert_eq!(report.exit_code, 0, "{}", report.exit);
    assert!(kicks > 0);

    let out = std::fs::read_to_string(&serial).unwrap();
    let results = result_lines(&out);
    assert_eq!(results.len(), 1, "{out}");
    for r in &results {
        // Each HLT returned once per timer tick: no kick woke the guest.
        assert_eq!(r["wakeups"], r["ticks"], "{r:?}");
    }
    for v in &report.vcpus {
        assert!(v.halt_exits > 0, "{v:?}");
        assert!(v.signal_kicks >= kicks, "{v:?}");
        if irqchip == "kernel" {
            // And the kicks did take the vCPU thread out of KVM_RUN (under
            // the user irqchip a halted guest is not in KVM_RUN to be kicked
            // out of: its thread waits in userspace and the kick is moot).
            assert!(v.interrupted > 0, "{v:?}");
        }
    }
}

fn paused_vcpus_do_not_run_until_resumed(irqchip: &str) {
    use vmm::vcpu::{Request, VcpuState};

    let config = VmConfig {
        vcpus: 2,
        cmdline: "workload=compute ms=50".into(),
        irqchip: irqchip_kind(irqchip),
        ..VmConfig::default()
    };
    let elf = testguest_elf();
    let vm = Vm::new(config, KernelImage::File(&elf), Instant::now()).unwrap();
    let running = vm.start().unwrap();
    for v in running.vcpus() {
        v.post(Request::Pause);
    }
    let wait_for = |want: VcpuState| {
        let start = Instant::now();
        while running.vcpus().any(|v| v.state() != want) {
            assert!(
                start.elapsed() < common::timeout(),
                "vCPUs never reached {want:?}"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    wait_for(VcpuState::Paused);
    // Every vCPU thread has published Paused: it is out of KVM_RUN, waiting
    // for a request (the state is stored only there). The guest needs 50 ms
    // of its own time, so it cannot have finished before the pause landed.
    assert!(!running.has_ended(), "the guest ended before it was paused");
    for v in running.vcpus() {
        v.post(Request::Resume);
    }
    let report = within("the resumed VM", move || running.wait());
    assert_eq!(report.exit_code, 0, "{}", report.exit);
}

fn pausing_a_halted_vcpu_does_not_wake_its_guest(irqchip: &str) {
    use vmm::vcpu::{Request, VcpuState};

    let dir = tempfile::tempdir().unwrap();
    let serial = dir.path().join("serial.log");
    let config = VmConfig {
        vcpus: 1,
        cmdline: "workload=idle ms=200 tick_us=20000".into(),
        serial_file: Some(serial.clone()),
        irqchip: irqchip_kind(irqchip),
        ..VmConfig::default()
    };
    let elf = testguest_elf();
    let vm = Vm::new(config, KernelImage::File(&elf), Instant::now()).unwrap();
    let running = vm.start().unwrap();
    // Pause and resume the vCPU while its guest sleeps between ticks.
    let mut pauses = 0;
    while !running.has_ended() {
        for v in running.vcpus() {
            v.post(Request::Pause);
            let start = Instant::now();
            while v.state() != VcpuState::Paused && !running.has_ended() {
                assert!(start.elapsed() < Duration::from_secs(20), "never paused");
                std::thread::sleep(Duration::from_micros(200));
            }
            pauses += 1;
            v.post(Request::Resume);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let report = running.wait();
    assert_eq!(report.exit_code, 0, "{}", report.exit);
    assert!(pauses > 0);
    let out = std::fs::read_to_string(&serial).unwrap();
    let results = result_lines(&out);
    assert_eq!(results.len(), 1, "{out}");
    // Each HLT returned once per timer tick: no pause woke the guest.
    assert_eq!(
        results[0]["wakeups"], results[0]["ticks"],
        "{:?}",
        results[0]
    );
}
