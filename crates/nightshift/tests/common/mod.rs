//! Running the nightshift binary from tests, and reading what the guest printed.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;

/// One finished `nightshift run`.
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    report: PathBuf,
    _dir: tempfile::TempDir,
}

impl Run {
    /// Asserts the exit status, showing the output when it is not.
    pub fn assert_code(&self, code: i32) {
        assert_eq!(
            self.code,
            Some(code),
            "stdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
    }

    /// The run's JSON report.
    pub fn report(&self) -> serde_json::Value {
        let text = std::fs::read_to_string(&self.report).expect("run wrote no report");
        serde_json::from_str(&text).expect("report is JSON")
    }
}

/// Runs `nightshift run ARGS --report <tmp>`.
pub fn nightshift(args: &[&str]) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.json");
    let out = Command::new(env!("CARGO_BIN_EXE_nightshift"))
        .arg("run")
        .args(args)
        .arg("--report")
        .arg(&report)
        .output()
        .expect("starting nightshift");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        report,
        _dir: dir,
    }
}

/// The `key=value` words of every line starting with `prefix`.
pub fn records(stdout: &str, prefix: &str) -> Vec<HashMap<String, String>> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix(prefix))
        .map(|rest| {
            rest.split_whitespace()
                .filter_map(|w| w.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
        .collect()
}

/// The guest's `result ...` lines.
pub fn result_lines(stdout: &str) -> Vec<HashMap<String, String>> {
    records(stdout, "result ")
}

/// The built-in test guest's ELF, for running it under another VMM.
pub fn testguest_elf() -> PathBuf {
    PathBuf::from(env!("NIGHTSHIFT_TESTGUEST_ELF"))
}

/// The interrupt-controller choices every VM test runs under.
pub const IRQCHIPS: [&str; 2] = ["kernel", "user"];

/// Runs `nightshift run --irqchip IRQCHIP ARGS --report <tmp>`.
pub fn nightshift_on(irqchip: &str, args: &[&str]) -> Run {
    let mut all = vec!["--irqchip", irqchip];
    all.extend_from_slice(args);
    nightshift(&all)
}

/// Makes each `fn name(irqchip: &str)` two tests, `name::kernel` and
/// `name::user`, one per irqchip (separate tests: each failure says which).
#[macro_export]
macro_rules! on_both_irqchips {
    ($($name:ident),+ $(,)?) => {
        $(
            mod $name {
                #[test]
                fn kernel() {
                    super::$name("kernel")
                }
                #[test]
                fn user() {
                    super::$name("user")
                }
            }
        )+
    };
}
