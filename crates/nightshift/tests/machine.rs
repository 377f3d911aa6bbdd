//! The guest ends the machine (ACPI power-off, i8042 reset) and floods the
//! console; stdin reaches the guest's serial port. All with the built-in test
//! guest, each run under a deadline.

mod common;

use std::process::Stdio;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(120);

#[test]
fn acpi_power_off_exits_0_and_i8042_reset_exits_123() {
    let off = common::nightshift_io(
        &["--vcpus", "1", "--cmdline", "workload=poweroff"],
        LIMIT,
        Stdio::null(),
        None,
    );
    assert_eq!(off.code, Some(0), "{}\n{}", off.stdout, off.stderr);
    let report = off.try_report().unwrap();
    assert_eq!(report["exit"], "guest powered off (ACPI S5)");

    let reset = common::nightshift_io(
        &["--vcpus", "1", "--cmdline", "workload=reset"],
        LIMIT,
        Stdio::null(),
        None,
    );
    assert_eq!(reset.code, Some(123), "{}\n{}", reset.stdout, reset.stderr);
    assert!(
        reset
            .stderr
            .contains("guest asked for a reset (i8042 reset command)"),
        "{}",
        reset.stderr
    );
}

/// A guest writes 256 KiB to COM1 while nobody reads the VMM's stdout (a pipe
/// whose buffer holds 64 KiB): the vCPU must not block on the pipe, so the VM
/// ends on its own; the report accounts for every byte.
#[test]
fn serial_flood_into_a_stalled_pipe_neither_stalls_nor_grows() {
    let (reader, writer) = std::io::pipe().unwrap();
    let run = common::nightshift_io(
        &["--vcpus", "1", "--cmdline", "workload=serialflood"],
        LIMIT,
        Stdio::null(),
        Some(writer.into()),
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let report = run.try_report().unwrap();
    let console = &report["console"];
    let bytes = console["bytes"].as_u64().unwrap();
    let written = console["written_bytes"].as_u64().unwrap();
    let dropped = console["dropped_bytes"].as_u64().unwrap();
    assert!(bytes > 256 << 10, "{console}");
    // Nobody read the pipe: at most its buffer (and one chunk in the writer's
    // hands) went out; everything else is buffered (<= 1 MiB) or dropped.
    assert!(written <= bytes && dropped <= bytes, "{console}");
    assert!(
        bytes - dropped <= written + (1 << 20) + (64 << 10),
        "{console}"
    );
    // VMM memory stays bounded (guest RAM excluded): the 1 MiB buffer, not the flood.
    let vmm_kib = report["rss"]["vmm_peak_kib"].as_u64().unwrap();
    assert!(vmm_kib < 64 << 10, "VMM peak RSS {vmm_kib} KiB");
    // The reader stayed open (unread) for the whole run, so writes could not fail fast.
    drop(reader);
}

/// Bytes on stdin (a pipe here) reach the guest's receive FIFO, and Ctrl-A x quits.
#[test]
fn stdin_escape_quits_the_vm() {
    let (reader, mut writer) = std::io::pipe().unwrap();
    use std::io::Write;
    // The idle guest runs far longer than the test; only the escape can end it in time.
    writer.write_all(b"hello guest\x01x").unwrap();
    drop(writer);
    let run = common::nightshift_io(
        &[
            "--vcpus",
            "1",
            "--console-in",
            "stdin",
            "--cmdline",
            "workload=idle ms=3600000",
        ],
        LIMIT,
        reader.into(),
        None,
    );
    assert_eq!(run.code, Some(0), "{}\n{}", run.stdout, run.stderr);
    assert_eq!(
        run.try_report().unwrap()["exit"],
        "quit from the console (Ctrl-A x)"
    );
}
