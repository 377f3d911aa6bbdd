//! Smoke test of `nightshift bench --quick`: the run completes and its table,
//! JSON and plots are complete and well-formed, network scenarios included. The numbers are not checked
//! (they belong to the machine, not to the code).

mod common;

use common::{nightshift_bin, require, run_bounded};

#[test]
fn bench_quick_output_is_complete_and_well_formed() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let plots = dir.path().join("plots");
    let mut cmd = nightshift_bin();
    cmd.args(["bench", "--quick", "--ms", "200", "--json"])
        .arg(&json)
        .arg("--plots")
        .arg(&plots);
    let out = run_bounded(cmd);
    let (stdout, stderr) = (&out.stdout, &out.stderr);
    assert_eq!(out.code, Some(0), "{stdout}\n{stderr}");

    // The method and host facts come before the results.
    for needle in [
        "# nightshift bench",
        "host.kvm:",
        "params:",
        "method:",
        "scenario mixed:",
    ] {
        assert!(stdout.contains(needle), "{needle:?} missing:\n{stdout}");
    }
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let variants: Vec<&str> = doc["variants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        [
            "workers",
            "inline",
            "idle",
            "workers/user",
            "inline/user",
            "idle/user"
        ]
        .iter()
        .all(|v| variants.contains(v)),
        "{variants:?}"
    );
    let rows = doc["summary"]["rows"].as_array().unwrap();
    for scenario in [
        "mixed",
        "bursty",
        "saturated",
        "async",
        "maintenance",
        "neighbour",
        "neighbour-1x",
    ] {
        // The peer runs only where it does the same device work (one cipher
        // pass, no scrub); `inline` has no thread for a scrub.
        let peer_comparable = !matches!(scenario, "async" | "maintenance" | "neighbour");
        for variant in &variants {
            let skipped = (variant.starts_with("qemu") && !peer_comparable)
                || (scenario == "maintenance" && variant.starts_with("inline"));
            let row = rows
                .iter()
                .find(|r| r["scenario"] == scenario && r["variant"] == *variant);
            assert_eq!(row.is_none(), skipped, "{scenario} × {variant}");
            let Some(row) = row else { continue };
            let m = &row["metrics"];
            for metric in [
                "cpu_vcpu_s",
                "cpu_device_s",
                "cpu_other_s",
                "peak_threads",
                "ctx_switches",
            ] {
                assert!(
                    m[metric]["median"].is_number(),
                    "{scenario} × {variant}: no {metric}"
                );
            }
            if scenario != "maintenance" {
                for metric in ["iops", "lat_p50_us", "lat_p99_us", "lat_p999_us"] {
                    assert!(
                        m[metric]["median"].is_number(),
                        "{scenario} × {variant}: no {metric}"
                    );
                }
            }
            if scenario != "bursty" {
                assert!(
                    m["compute_pct"]["median"].is_number(),
                    "{scenario} × {variant}: no compute rate"
                );
            }
            // Every table line names its scenario and variant.
            assert!(
                stdout
                    .lines()
                    .any(|l| l.starts_with(scenario) && l.contains(&format!("| {variant} "))),
                "{stdout}"
            );
        }
    }
    for png in ["interference.png", "latency-mixed.png"] {
        let bytes = std::fs::read(plots.join(png)).unwrap();
        assert!(bytes.starts_with(b"\x89PNG"), "{png} is not a PNG");
    }
    check_net_rows(stdout, rows, &variants, &plots);
}

/// The network scenarios: every policy on both irqchips and QEMU (not QEMU's
/// iothread), each with its host-measured numbers, and their plots.
fn check_net_rows(
    stdout: &str,
    rows: &[serde_json::Value],
    variants: &[&str],
    plots: &std::path::Path,
) {
    if stdout.contains("network scenarios skipped") {
        // Says why (no root, no tun, no `ip`); CI must run them.
        require(
            false,
            "a network namespace with a tap (root, /dev/net/tun, ip)",
        );
        return;
    }
    for scenario in [
        "net-rr",
        "net-rr+compute",
        "net-stream",
        "net-stream+compute",
    ] {
        for variant in variants {
            let runs = !variant.contains("/nopoll")
                && !variant.contains("/cap")
                && *variant != "qemu/iothread";
            let row = rows
                .iter()
                .find(|r| r["scenario"] == scenario && r["variant"] == *variant);
            assert_eq!(row.is_some(), runs, "{scenario} × {variant}");
            let Some(row) = row else { continue };
            let m = &row["metrics"];
            let mut wanted = if scenario.starts_with("net-rr") {
                vec!["rr_per_s", "rtt_p50_us", "rtt_p99_us", "rtt_p999_us"]
            } else {
                vec!["to_guest_mbit_s", "from_guest_mbit_s"]
            };
            if scenario.ends_with("+compute") {
                wanted.push("compute_pct");
            }
            for metric in wanted {
                assert!(
                    m[metric]["median"].as_f64().is_some_and(|v| v > 0.0),
                    "{scenario} × {variant}: no {metric}"
                );
            }
            assert!(
                stdout
                    .lines()
                    .any(|l| l.starts_with(scenario) && l.contains(&format!("| {variant} "))),
                "{stdout}"
            );
        }
    }
    for png in [
        "latency-net-rr.png",
        "latency-net-rr-compute.png",
        "net-throughput.png",
        "net-compute.png",
    ] {
        let bytes = std::fs::read(plots.join(png)).unwrap();
        assert!(bytes.starts_with(b"\x89PNG"), "{png} is not a PNG");
    }
}
