//! A JSON VM config (`nightshift run --config FILE`) through parsing and
//! `VmConfig::validate`: host input, but the one place an operator's file
//! reaches the VMM, so every field and combination must be refused cleanly
//! or described exactly.
//!
//! Checked: no panic; a config that validates has vCPUs in 1..=MAX_VCPUS,
//! memory in range, at most MAX_DISKS disks, every pin naming one of its
//! vCPUs and a CPU this process may use, xts passes in 1..=MAX_XTS_PASSES,
//! no zero scrub count, workers within bounds (at least one unless inline);
//! and it survives serialize → parse → validate unchanged.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vmm::config::{allowed_cpus, MAX_DISKS, MAX_VCPUS, MAX_WORKERS, MAX_XTS_PASSES};
use vmm::VmConfig;

fuzz_target!(|data: &[u8]| {
    let Ok(config) = serde_json::from_slice::<VmConfig>(data) else {
        return;
    };
    if config.validate().is_err() {
        return;
    }
    assert!((1..=MAX_VCPUS).contains(&config.vcpus), "{config:?}");
    assert!(
        config.mem_mib >= 1 && config.mem_mib <= 1 << 20,
        "{config:?}"
    );
    assert!(config.disks.len() <= MAX_DISKS);
    let allowed = allowed_cpus();
    for &(vcpu, ref cpus) in &config.pin {
        assert!(vcpu < config.vcpus, "pin names vCPU {vcpu}: {config:?}");
        assert!(
            cpus.cpus().iter().all(|c| allowed.cpus().contains(c)),
            "{config:?}"
        );
    }
    for d in &config.disks {
        if let Some(n) = d.xts_passes {
            assert!((1..=MAX_XTS_PASSES).contains(&n), "{config:?}");
        }
        assert_ne!(d.scrub_passes, Some(0), "{config:?}");
    }
    let w = &config.work;
    assert!(w.workers <= MAX_WORKERS);
    assert!(
        w.workers > 0 || w.policy == idlework::Policy::Inline,
        "{config:?}"
    );
    let text = serde_json::to_string(&config).expect("a parsed config serializes");
    let back: VmConfig =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text} does not parse back: {e}"));
    assert_eq!(back, config, "round trip");
    assert!(back.validate().is_ok());
});
