//! Running `nightshift run` under a deadline (a hang fails the test instead of
//! stalling CI), with stdin and stdout set up by the caller.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// One finished (or killed) run.
pub struct Timed {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub report: Option<serde_json::Value>,
}

/// Runs `nightshift run ARGS --report <tmp>`; kills it and panics after `limit`.
/// `stdout`: `None` collects it in a file; `Some(stdio)` hands it over.
pub fn run(args: &[&str], limit: Duration, stdin: Stdio, stdout: Option<Stdio>) -> Timed {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.json");
    let out_path = dir.path().join("stdout");
    let err_path = dir.path().join("stderr");
    let collect = stdout.is_none();
    let stdout = stdout.unwrap_or_else(|| std::fs::File::create(&out_path).unwrap().into());
    let mut child = Command::new(env!("CARGO_BIN_EXE_nightshift"))
        .arg("run")
        .args(args)
        .arg("--report")
        .arg(&report)
        .stdin(stdin)
        .stdout(stdout)
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .expect("starting nightshift");
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let read =
        |p: &Path| String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).into_owned();
    let stdout = if collect {
        read(&out_path)
    } else {
        String::new()
    };
    let stderr = read(&err_path);
    let Some(status) = status else {
        panic!(
            "nightshift did not end within {limit:?}\nstdout (tail):\n{}\nstderr:\n{stderr}",
            tail(&stdout, 4000)
        );
    };
    let report = std::fs::read_to_string(&report)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    Timed {
        code: status.code(),
        stdout,
        stderr,
        report,
    }
}

/// The last `n` bytes of `s` (on a char boundary).
pub fn tail(s: &str, n: usize) -> &str {
    let mut at = s.len().saturating_sub(n);
    while !s.is_char_boundary(at) {
        at += 1;
    }
    &s[at..]
}

/// The built-in test guest needs no files; the workspace root is for scripts.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}
