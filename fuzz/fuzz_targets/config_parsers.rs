//! The command-line parsers in `vmm::config`: `CpuList` (`--pin` CPU lists),
//! `parse_pin` and `DiskConfig` (`--disk PATH[,ro][,xts=N]`). Host input, not
//! guest input, but cheap to cover.
//!
//! Checked: no panic; a parsed CPU list is sorted, deduplicated, below 1024
//! and survives Display -> parse unchanged; a parsed disk has a path, and
//! once validated an xts pass count in 1..=1000 and no zero scrub count.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vmm::config::{parse_pin, CpuList, DiskConfig, MAX_XTS_PASSES};
use vmm::VmConfig;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };

    if let Ok(list) = s.parse::<CpuList>() {
        let cpus = list.cpus();
        assert!(!cpus.is_empty(), "empty CPU list from {s:?}");
        assert!(
            cpus.windows(2).all(|w| w[0] < w[1]),
            "not sorted/deduplicated: {cpus:?}"
        );
        assert!(cpus.iter().all(|&c| c < 1024), "CPU out of range: {cpus:?}");
        let shown = list.to_string();
        let again: CpuList = shown
            .parse()
            .unwrap_or_else(|e| panic!("{shown:?} does not parse back: {e}"));
        assert_eq!(again, list, "Display/parse round trip");
    }

    if let Ok((_vcpu, list)) = parse_pin(s) {
        assert!(list.cpus().iter().all(|&c| c < 1024));
    }

    if let Ok(disk) = s.parse::<DiskConfig>() {
        assert!(
            !disk.path.as_os_str().is_empty(),
            "empty disk path from {s:?}"
        );
        // Ranges are VmConfig::validate's job (one check for flags and JSON).
        let config = VmConfig {
            disks: vec![disk.clone()],
            ..VmConfig::default()
        };
        if config.validate().is_ok() {
            if let Some(n) = disk.xts_passes {
                assert!((1..=MAX_XTS_PASSES).contains(&n));
            }
            assert_ne!(disk.scrub_passes, Some(0));
        }
    }
});
