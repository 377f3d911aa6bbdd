//! The device manager through the CLI: `--disk`, `--net` (twice) and `--rng`
//! take consecutive slots and GSIs, and the report lists each with its
//! counters. The taps live in a network namespace the test makes; nothing is
//! sent. Needs root and `ip`; without them the test says so, or fails under `CI`.

use std::process::Command;

const LIMIT: &str = "120"; // seconds before `timeout` kills the VMM

fn cannot_run(why: &str) {
    assert!(std::env::var_os("CI").is_none(), "cannot run: {why}");
    eprintln!("SKIPPED: {why}");
}

#[test]
fn disks_nets_and_rng_get_slots_in_order_and_report_their_counters() {
    let name = format!("nightshift-devices-{}", std::process::id());
    match Command::new("ip").args(["netns", "add", &name]).output() {
        Ok(o) if o.status.success() => {}
        Ok(o) => return cannot_run(&String::from_utf8_lossy(&o.stderr)),
        Err(e) => return cannot_run(&format!("running ip: {e}")),
    }
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let report = dir.path().join("report.json");
    let out = Command::new("ip")
        .args(["netns", "exec", &name, "timeout", LIMIT])
        .arg(env!("CARGO_BIN_EXE_nightshift"))
        .args(["run", "--vcpus", "1", "--disk"])
        .arg(&disk)
        .args([
            "--net",
            "tap=nstap0",
            "--net",
            "tap=nstap1,mac=52:54:00:00:00:09",
        ])
        .args(["--rng", "--cmdline", "workload=exit status=0", "--report"])
        .arg(&report)
        .output()
        .unwrap();
    let _ = Command::new("ip").args(["netns", "del", &name]).status();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let devices = r["devices"].as_array().unwrap();
    let got: Vec<(&str, u64, u64, u64)> = devices
        .iter()
        .map(|d| {
            (
                d["name"].as_str().unwrap(),
                d["device_type"].as_u64().unwrap(),
                d["slot"]["base"].as_u64().unwrap(),
                d["slot"]["gsi"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("disk0", 2, 0xd000_0000, 5),
            ("net0", 1, 0xd000_1000, 6),
            ("net1", 1, 0xd000_2000, 7),
            ("rng", 4, 0xd000_3000, 8),
        ]
    );
    assert_eq!(devices[1]["counters"]["tx_frames"], 0);
    assert_eq!(devices[3]["counters"]["bytes"], 0);
    // The disk still reports where it always did.
    assert_eq!(r["disks"].as_array().unwrap().len(), 1);
}
