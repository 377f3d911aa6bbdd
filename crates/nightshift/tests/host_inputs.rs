//! What the operator gives the VMM (issue 9 item 5): disk images, output
//! files and options are checked the same way from flags and JSON, and no
//! mistake destroys data.

mod common;

use std::path::{Path, PathBuf};

use common::{nightshift, Run, Spawned};

fn image(dir: &Path, name: &str, byte: u8, size: usize) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, vec![byte; size]).unwrap();
    path
}

/// A one-line error naming `needle`, exit status 1, and the guest never ran.
fn assert_refused(run: &Run, needle: &str) {
    run.assert_code(1);
    assert!(run.stderr.contains(needle), "{}", run.stderr);
    assert_eq!(run.stderr.trim().lines().count(), 1, "{}", run.stderr);
    assert!(
        !run.stdout.contains("nightshift-testguest"),
        "{}",
        run.stdout
    );
}

#[test]
fn a_serial_file_that_is_the_disk_image_is_refused_and_the_image_kept() {
    // Before the fix this truncated the 4 MiB image to the console output.
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), "disk.img", 0xa5, 4 << 20);
    let link = dir.path().join("other-name.img");
    std::os::unix::fs::symlink(&img, &link).unwrap();
    for serial in [&img, &link] {
        for extra in [&[][..], &["--overwrite"][..]] {
            let mut args = vec!["--vcpus", "1", "--disk", img.to_str().unwrap()];
            args.extend(["--serial-file", serial.to_str().unwrap()]);
            args.extend(extra);
            let run = nightshift(&args);
            assert_refused(&run, "is a disk image of this VM");
        }
    }
    assert_eq!(std::fs::read(&img).unwrap(), vec![0xa5; 4 << 20]);
}

#[test]
fn a_report_that_is_the_disk_image_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), "disk.img", 0x11, 1 << 20);
    let mut cmd = common::nightshift_bin();
    cmd.args(["run", "--vcpus", "1", "--overwrite", "--disk"])
        .arg(&img)
        .arg("--report")
        .arg(&img);
    let out = common::run_bounded(cmd);
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains("is a disk image of this VM"),
        "{}",
        out.stderr
    );
    assert_eq!(std::fs::read(&img).unwrap(), vec![0x11; 1 << 20]);
}

#[test]
fn an_existing_serial_file_is_replaced_only_with_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let serial = dir.path().join("serial.log");
    std::fs::write(&serial, b"yesterday's console\n").unwrap();
    let args = [
        "--vcpus",
        "1",
        "--cmdline",
        "workload=exit status=0",
        "--serial-file",
        serial.to_str().unwrap(),
    ];
    assert_refused(&nightshift(&args), "--overwrite");
    assert_eq!(std::fs::read(&serial).unwrap(), b"yesterday's console\n");
    let mut with = args.to_vec();
    with.push("--overwrite");
    nightshift(&with).assert_code(0);
    let text = std::fs::read_to_string(&serial).unwrap();
    assert!(text.starts_with("nightshift-testguest"), "{text}");
}

#[test]
fn a_disk_that_is_not_a_file_or_block_device_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let run = nightshift(&["--vcpus", "1", "--disk", dir.path().to_str().unwrap()]);
    assert_refused(&run, "is a directory, not a regular file or block device");
    let run = nightshift(&["--vcpus", "1", "--disk", "/dev/null"]);
    assert_refused(&run, "is a character device");
}

#[test]
fn one_image_cannot_be_two_writable_disks() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), "disk.img", 0, 1 << 20);
    let p = img.to_str().unwrap();
    let ro = format!("{p},ro");
    let run = nightshift(&["--vcpus", "1", "--disk", p, "--disk", &ro]);
    assert_refused(&run, "in use by another process or another disk of this VM");
    // Read-only users share it.
    let run = nightshift(&[
        "--vcpus",
        "1",
        "--disk",
        &ro,
        "--disk",
        &ro,
        "--cmdline",
        "workload=exit status=0",
    ]);
    run.assert_code(0);
}

#[test]
fn a_second_vmm_on_a_writable_image_gets_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), "disk.img", 0, 1 << 20);
    let p = img.to_str().unwrap();
    // The first VMM idles until it is killed; its banner says it runs.
    let mut first = Spawned::nightshift(
        &[
            "--vcpus",
            "1",
            "--disk",
            p,
            "--cmdline",
            "workload=idle ms=3600000 tick_us=100000",
        ],
        &[],
    );
    first.wait_for_line("nightshift-testguest");
    for disk in [p.to_string(), format!("{p},ro")] {
        let run = nightshift(&["--vcpus", "1", "--disk", &disk]);
        assert_refused(&run, "in use by another process");
    }
    first.kill();
    first.wait();
    // Its lock went with it.
    let run = nightshift(&[
        "--vcpus",
        "1",
        "--disk",
        p,
        "--cmdline",
        "workload=exit status=0",
    ]);
    run.assert_code(0);
}

/// With --config, a flag given replaces the file's value, and one not given
/// (a bool flag too) leaves it: the wiring of `vmm::config::flags`, whose unit
/// tests hold the rule's cases.
#[test]
fn flags_given_replace_the_config_files_values_and_only_those() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("vm.json");
    let json = serde_json::json!({
        "vcpus": 1,
        "irqchip": "user",
        "rng": true,
        "cmdline": "workload=exit status=5",
    });
    std::fs::write(&config, json.to_string()).unwrap();
    let run = nightshift(&[
        "--config",
        config.to_str().unwrap(),
        "--cmdline",
        "workload=exit status=7",
        "--policy",
        "workers",
    ]);
    run.assert_code(7);
    let report = run.report();
    assert_eq!(report["vcpus"].as_array().unwrap().len(), 1, "{report}");
    assert_eq!(report["irqchip"], "user");
    assert_eq!(report["work"]["policy"], "workers");
    assert_eq!(report["devices"][0]["name"], "rng", "{report}");
}

#[test]
fn json_and_flags_are_validated_alike() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), "disk.img", 0, 1 << 20);
    let flag = format!("{},xts=0", img.display());
    assert_refused(
        &nightshift(&["--disk", &flag]),
        "xts passes must be 1..=1000, not 0",
    );
    let config = dir.path().join("vm.json");
    let json = serde_json::json!({"disks": [{"path": img, "xts_passes": 0}]});
    std::fs::write(&config, json.to_string()).unwrap();
    assert_refused(
        &nightshift(&["--config", config.to_str().unwrap()]),
        "xts passes must be 1..=1000, not 0",
    );
    // Silently accepted before: no workers, a pin to a CPU this host lacks.
    assert_refused(&nightshift(&["--workers", "0"]), "workers must be");
    std::fs::write(&config, r#"{"work":{"workers":0}}"#).unwrap();
    assert_refused(
        &nightshift(&["--config", config.to_str().unwrap()]),
        "workers must be",
    );
    assert_refused(
        &nightshift(&["--cpu-cap", "0", "--pin", "0=1023"]),
        "host CPU 1023 is not one this process may run on",
    );
}
