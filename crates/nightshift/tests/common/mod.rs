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

/// Runs `nightshift run ARGS --report <tmp>`, killed (and the test failed) if it has not
/// exited within `timeout`: a hang must fail the test, not stall CI.
pub fn nightshift_within(args: &[&str], timeout: std::time::Duration) -> Run {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.json");
    let mut child = Command::new(env!("CARGO_BIN_EXE_nightshift"))
        .arg("run")
        .args(args)
        .arg("--report")
        .arg(&report)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("starting nightshift");
    let pipe = |p: Option<Box<dyn Read + Send>>| {
        let mut p = p.expect("piped");
        std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = p.read_to_end(&mut s);
            String::from_utf8_lossy(&s).into_owned()
        })
    };
    let out = pipe(child.stdout.take().map(|p| Box::new(p) as _));
    let err = pipe(child.stderr.take().map(|p| Box::new(p) as _));
    let deadline = std::time::Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for nightshift") {
            break Some(status);
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let (stdout, stderr) = (out.join().unwrap(), err.join().unwrap());
    let Some(status) = status else {
        let tail: String = stdout.lines().rev().take(5).collect::<Vec<_>>().join("\n");
        panic!("nightshift {args:?} hung (killed after {timeout:?}); last output:\n{tail}");
    };
    Run {
        code: status.code(),
        stdout,
        stderr,
        report,
        _dir: dir,
    }
}
