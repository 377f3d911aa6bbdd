//! Running the nightshift binary from tests, and reading what the guest printed.
//!
//! The rules every integration test follows (and the helpers that make them easy):
//! - Every VMM (or peer VMM) a test starts is bounded: [`nightshift`],
//!   [`run_bounded`] and [`Spawned`] kill it and fail the test after
//!   [`TIMEOUT`] (`NIGHTSHIFT_TEST_TIMEOUT_S` overrides it), [`nightshift_io`]
//!   after the limit its caller gives, all through [`wait_within`]; an
//!   in-process VM is waited for with [`within`]. A hang fails the test instead of stalling CI.
//! - A test that cannot run its check (no strace, no QEMU, no /dev/kvm) calls
//!   [`require`]: it skips with a message on a developer's machine and fails
//!   when `CI` is set.
//! - Wait for an event ([`Spawned::wait_for_line`], the VM's end), never for
//!   "nothing happened within N ms".

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// How long one VMM run may take before the test fails as a hang.
pub fn timeout() -> Duration {
    let secs = std::env::var("NIGHTSHIFT_TEST_TIMEOUT_S")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(TIMEOUT.as_secs());
    Duration::from_secs(secs)
}

/// The default bound on one VMM run (generous: the CI machine is shared).
pub const TIMEOUT: Duration = Duration::from_secs(300);

/// Whether a test's prerequisite is there. If not: under `CI` the test
/// fails (CI must run every check); elsewhere it is skipped with a note.
/// Use as `if !require(found, "strace") { return; }`.
pub fn require(available: bool, what: &str) -> bool {
    if available {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{what} is missing, and CI must run this check (./dev setup installs it)"
    );
    eprintln!("{what} is missing: test skipped (./dev setup installs it)");
    false
}

/// Whether `program --version` (or `arg`) runs.
pub fn have(program: &str, arg: &str) -> bool {
    Command::new(program)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

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

    /// The run's JSON report, if it wrote a readable one.
    pub fn try_report(&self) -> Option<serde_json::Value> {
        let text = std::fs::read_to_string(&self.report).ok()?;
        serde_json::from_str(&text).ok()
    }
}

/// Runs `nightshift run ARGS --report <tmp>` with the caller's stdin and,
/// if given, stdout (else stdout is collected); kills it and fails the test
/// after `limit` (tests whose VMM runs longer or shorter than [`timeout`]).
pub fn nightshift_io(args: &[&str], limit: Duration, stdin: Stdio, stdout: Option<Stdio>) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.json");
    let (out_path, err_path) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let collect = stdout.is_none();
    let stdout = stdout.unwrap_or_else(|| std::fs::File::create(&out_path).unwrap().into());
    let mut child = nightshift_bin()
        .arg("run")
        .args(args)
        .arg("--report")
        .arg(&report)
        .stdin(stdin)
        .stdout(stdout)
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .expect("starting nightshift");
    let status = wait_within(&mut child, limit);
    let read =
        |p: &PathBuf| String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).into_owned();
    let stdout = if collect {
        read(&out_path)
    } else {
        String::new()
    };
    let stderr = read(&err_path);
    let Ok(status) = status else {
        panic!(
            "nightshift did not end within {limit:?} (killed)\nstdout (tail):\n{}\nstderr:\n{stderr}",
            tail(&stdout, 4000)
        );
    };
    Run {
        code: status.code(),
        stdout,
        stderr,
        report,
        _dir: dir,
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

/// The workspace root (for scripts).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The nightshift binary.
pub fn nightshift_bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_nightshift"))
}

/// Runs `nightshift run ARGS --report <tmp>`, bounded by [`timeout`].
pub fn nightshift(args: &[&str]) -> Run {
    nightshift_env(args, &[])
}

/// [`nightshift`] with extra environment variables.
pub fn nightshift_env(args: &[&str], env: &[(&str, &str)]) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.json");
    let mut cmd = nightshift_bin();
    cmd.arg("run").args(args).arg("--report").arg(&report);
    cmd.envs(env.iter().copied());
    let out = run_bounded(cmd);
    Run {
        code: out.code,
        stdout: out.stdout,
        stderr: out.stderr,
        report,
        _dir: dir,
    }
}

/// What a bounded command printed and how it ended.
pub struct Output {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `cmd` (stdin closed, output captured); fails the test if it has not
/// finished within [`timeout`], after killing it.
pub fn run_bounded(mut cmd: Command) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
    let mut spawned = Spawned::new(child);
    let code = spawned.wait();
    let (stdout, stderr) = spawned.output();
    Output {
        code,
        stdout,
        stderr,
    }
}

/// A running child whose output is collected as it comes, killed on drop.
pub struct Spawned {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    stdout: Option<std::thread::JoinHandle<()>>,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl Spawned {
    /// Starts `nightshift run ARGS` with `env`, output piped.
    pub fn nightshift(args: &[&str], env: &[(&str, &str)]) -> Spawned {
        let child = nightshift_bin()
            .arg("run")
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting nightshift");
        Spawned::new(child)
    }

    /// Takes over `child`, whose stdout and stderr are piped.
    pub fn new(mut child: Child) -> Spawned {
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().expect("stdout piped");
        let stdout = std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut err = child.stderr.take().expect("stderr piped");
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        Spawned {
            child,
            lines,
            seen: Vec::new(),
            stdout: Some(stdout),
            stderr: Some(stderr),
        }
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits (within [`timeout`]) for a stdout line containing `needle`;
    /// fails the test if the child ends or the time runs out first.
    pub fn wait_for_line(&mut self, needle: &str) -> String {
        let deadline = std::time::Instant::now() + timeout();
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => {
                    self.kill();
                    let (out, err) = self.output();
                    panic!("no line with {needle:?} (ended or timed out):\n{out}\n{err}");
                }
            }
        }
    }

    /// Waits for the child to end within [`timeout`]; kills it and fails the
    /// test if it does not. Returns its exit code (None if killed by a signal).
    pub fn wait(&mut self) -> Option<i32> {
        match wait_within(&mut self.child, timeout()) {
            Ok(status) => status.code(),
            Err(_) => {
                let (out, err) = self.output();
                panic!(
                    "nightshift did not finish within {:?} (killed):\nstdout:\n{out}\nstderr:\n{err}",
                    timeout()
                );
            }
        }
    }

    /// Kills the child (if still running).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
    }

    /// Everything printed so far (the child must have ended or been killed).
    pub fn output(&mut self) -> (String, String) {
        if let Some(t) = self.stdout.take() {
            let _ = t.join();
        }
        self.seen.extend(self.lines.try_iter());
        let err = self
            .stderr
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default();
        let mut out = self.seen.join("\n");
        out.push('\n');
        (out, err)
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits for `child` to end within `limit`. If it has not, kills it and
/// returns `Err` with the status of the killed child. The one bound every
/// VMM a test starts goes through.
pub fn wait_within(child: &mut Child, limit: Duration) -> Result<ExitStatus, ExitStatus> {
    let pid = child.id();
    let (stop, stopped) = mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        let expired = matches!(
            stopped.recv_timeout(limit),
            Err(mpsc::RecvTimeoutError::Timeout)
        );
        if expired {
            // SAFETY: kill(2) on our own child, which is not reaped yet
            // (`wait_exited` does not reap), so its pid is still its own.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
        expired
    });
    wait_exited(pid);
    let _ = stop.send(());
    let timed_out = watchdog.join().unwrap_or(false);
    let status = child.wait().expect("reaping the child");
    if timed_out {
        Err(status)
    } else {
        Ok(status)
    }
}

/// Blocks until child `pid` has exited, without reaping it (WNOWAIT).
fn wait_exited(pid: u32) {
    loop {
        // SAFETY: siginfo_t is plain data; waitid fills it.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waits for our own child; `info` is valid for the call.
        let ret =
            unsafe { libc::waitid(libc::P_PID, pid, &mut info, libc::WEXITED | libc::WNOWAIT) };
        if ret == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return;
        }
    }
}

/// Runs `f` (e.g. waiting for an in-process VM) and fails the test if it has
/// not returned within [`timeout`].
pub fn within<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(timeout())
        .unwrap_or_else(|_| panic!("{what} did not finish within {:?}", timeout()))
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
