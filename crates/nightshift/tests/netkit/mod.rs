//! Test kit for the second guest driver stack (virtio-drivers + smoltcp): a network
//! namespace with a tap that the test makes itself, a VMM started inside it under a
//! timeout whose console is read as it comes, and the host's side of the guest's `net`
//! services (docs/guest-abi.md, "Network").
//!
//! Traffic: only between the tap's address (10.99.0.1) and the guest's (10.99.0.2), inside
//! a namespace created for one test and deleted after it; every loop is bounded in count
//! and time. The host side runs on a thread moved into the namespace (`setns` on that
//! thread only), so the test process itself never leaves its own namespace.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

// The shared implementation (nightshift's library, also the bench's), under the names the
// tests use; each test binary uses some of them.
#[allow(unused_imports)]
pub use nightshift::guest_net::{
    fill_stream, guest_net_args, quit, tcp_from_guest, tcp_to_guest, udp_sweep, Transfer,
    CONTROL_PORT, ECHO_PORT, GUEST_IP, HOST_IP, SINK_PORT, SOURCE_PORT, UDP_MAX,
};
#[allow(unused_imports)]
pub use nightshift::netns::TAP;

/// A check this environment cannot run: fails the test when `CI` is set (CI must run
/// everything), else says it was skipped. Returns false so the caller can return.
pub fn cannot_run(why: &str) -> bool {
    if std::env::var_os("CI").is_some_and(|v| !v.is_empty()) {
        panic!("cannot run this check here, and CI is set: {why}");
    }
    eprintln!("skipped: {why}");
    false
}

fn tool_works(bin: &str, arg: &str) -> bool {
    Command::new(bin)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// What a namespace test needs: root, `ip`, `ping`, /dev/net/tun, /dev/kvm.
pub fn namespace_prerequisites() -> bool {
    if !rustix::process::geteuid().is_root() {
        return cannot_run("network namespaces need root");
    }
    if !tool_works("ip", "-V") {
        return cannot_run("`ip` (iproute2) is not installed (./dev setup installs it)");
    }
    if !tool_works("ping", "-V") {
        return cannot_run("`ping` (iputils-ping) is not installed (./dev setup installs it)");
    }
    if !Path::new("/dev/net/tun").exists() {
        return cannot_run("/dev/net/tun is missing");
    }
    kvm_prerequisite()
}

/// /dev/kvm must be usable.
pub fn kvm_prerequisite() -> bool {
    let ok = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    ok || cannot_run("/dev/kvm is not usable")
}

/// QEMU's binary, if installed (else `cannot_run`).
pub fn qemu() -> Option<&'static str> {
    let bin = "qemu-system-x86_64";
    if tool_works(bin, "--version") {
        Some(bin)
    } else {
        cannot_run("qemu-system-x86_64 is not installed (./dev setup installs it)");
        None
    }
}

/// A network namespace holding one tap with [`HOST_IP`]/24 (nightshift's own
/// [`nightshift::netns::Netns`]); deleted on drop. A test that gets this far has checked
/// [`namespace_prerequisites`], so failing to make one fails the test.
pub struct Netns(nightshift::netns::Netns);

impl Netns {
    pub fn new() -> Self {
        Self(
            nightshift::netns::Netns::create("nightshift-test").expect("making the test namespace"),
        )
    }

    pub fn name(&self) -> &str {
        self.0.name()
    }

    /// A command that runs `program` inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        self.0.command(program)
    }

    /// Runs `f` on a thread that has moved into the namespace (sockets it opens live
    /// there) and returns its result.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        self.0.run(f).expect("running in the test namespace")
    }

    /// `ping` from the tap's side: `count` echoes of `size` payload bytes, all answered,
    /// none wrong or duplicated.
    pub fn ping(&self, count: u32, size: usize) -> Result<(), String> {
        let out = self
            .command("ping")
            .args([
                "-n",
                "-q",
                "-c",
                &count.to_string(),
                "-i",
                "0.05",
                "-W",
                "2",
            ])
            .args(["-w", "20", "-s", &size.to_string(), &GUEST_IP.to_string()])
            .output()
            .map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let all = format!("{count} packets transmitted, {count} received");
        if out.status.success() && text.contains(&all) && !text.contains("duplicates") {
            Ok(())
        } else {
            Err(format!(
                "ping -s {size}: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }
}

/// A VMM process inside a namespace, killed at its deadline, its console read as it
/// comes (so a test can wait for a line).
pub struct Vmm {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    line_rx: mpsc::Receiver<String>,
    readers: Vec<std::thread::JoinHandle<String>>,
    deadline: Instant,
}

/// A finished VMM.
pub struct Finished {
    /// None when it was killed at its deadline.
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    pub fn code(&self) -> Option<i32> {
        self.status.and_then(|s| s.code())
    }

    /// The `key=value` words of the guest's `result cpu=.. workload=<workload>` line.
    pub fn result(&self, workload: &str) -> HashMap<String, String> {
        let found: Vec<_> = records(&self.stdout, "result ")
            .into_iter()
            .filter(|r| r.get("workload").is_some_and(|w| w == workload))
            .collect();
        assert_eq!(found.len(), 1, "{}\n{}", self.stdout, self.stderr);
        found.into_iter().next().unwrap()
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

impl Vmm {
    /// Starts `cmd` (stdout = the guest console) with `limit` to live.
    pub fn start(mut cmd: Command, limit: Duration) -> Self {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting the VMM");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, line_rx) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        let sink = Arc::clone(&lines);
        let stdout_reader = std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
            String::new()
        });
        let err = child.stderr.take().unwrap();
        let stderr_reader = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = BufReader::new(err).read_to_string(&mut text);
            text
        });
        Self {
            child,
            lines,
            line_rx,
            readers: vec![stdout_reader, stderr_reader],
            deadline: Instant::now() + limit,
        }
    }

    /// Waits (until the VMM's deadline) for a console line starting with `prefix`.
    pub fn wait_line(&mut self, prefix: &str) -> Result<String, String> {
        loop {
            let left = self.deadline.saturating_duration_since(Instant::now());
            match self.line_rx.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => return Ok(line),
                Ok(_) => {}
                Err(_) => {
                    return Err(format!(
                        "no `{prefix}` line; console so far:\n{}",
                        self.lines.lock().unwrap().join("\n")
                    ))
                }
            }
        }
    }

    /// Waits for the VMM to exit (killing it at its deadline) and collects its output.
    pub fn finish(mut self) -> Finished {
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("waiting for the VMM") {
                break Some(s);
            }
            if Instant::now() >= self.deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        // The readers end at EOF, once the VMM (the pipes' only writer) is gone.
        let mut texts: Vec<String> = std::mem::take(&mut self.readers)
            .into_iter()
            .map(|r| r.join().unwrap_or_default())
            .collect();
        Finished {
            status,
            stdout: self.lines.lock().unwrap().join("\n"),
            stderr: texts.pop().unwrap_or_default(),
        }
    }
}

impl Drop for Vmm {
    fn drop(&mut self) {
        // A test that failed half way must not leave its VMM running.
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---- the guest's services, from the host side ----------------------------------------

/// Bytes per TCP direction: `NIGHTSHIFT_NET_TCP_MIB` MiB if set, else `default_mib`.
pub fn tcp_bytes(default_mib: u64) -> u64 {
    let mib = std::env::var("NIGHTSHIFT_NET_TCP_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default_mib);
    mib << 20
}

/// What the host measured in one run of [`exercise`].
#[derive(Clone, Copy, Debug)]
pub struct Measured {
    pub udp_sweep: Duration,
    pub to_guest: Transfer,
    pub from_guest: Transfer,
}

/// Pings per size in [`exercise`], and the sizes.
pub const PINGS: u32 = 5;
pub const PING_SIZES: [usize; 2] = [56, UDP_MAX];

/// The host's side of a `net` guest that is up (its `net dev=` line seen): ping (two
/// sizes), a UDP echo of every size 1..=1472, `tcp_bytes` to the sink and back from the
/// source, then `quit`.
pub fn exercise(ns: &Netns, tcp_bytes: u64) -> Result<Measured, String> {
    for size in PING_SIZES {
        ns.ping(PINGS, size)?;
    }
    ns.run(move || {
        let t0 = Instant::now();
        udp_sweep(1..=UDP_MAX)?;
        let udp_sweep = t0.elapsed();
        let to_guest = tcp_to_guest(tcp_bytes, 11)?;
        let from_guest = tcp_from_guest(tcp_bytes, 13)?;
        quit()?;
        Ok(Measured {
            udp_sweep,
            to_guest,
            from_guest,
        })
    })
    .map_err(|e: nightshift::guest_net::GuestNetError| e.to_string())
}

/// Checks the guest's own account of an [`exercise`]d run (`net` on one CPU, `rng` on
/// the other): every datagram echoed, both transfers whole, the pings answered, nothing
/// refused, and the entropy device's bytes not constant.
pub fn check_guest(fin: &Finished, tcp_bytes: u64) {
    let net = fin.result("net");
    let num = |k: &str| -> u64 {
        net.get(k)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("net result has no {k}: {net:?}"))
    };
    let ctx = format!("{net:?}\n{}", fin.stderr);
    assert_eq!(net["end"], "quit", "{ctx}");
    assert_eq!(num("udp_echoed"), UDP_MAX as u64, "{ctx}");
    assert_eq!(
        num("udp_echo_bytes"),
        (UDP_MAX * (UDP_MAX + 1) / 2) as u64,
        "{ctx}"
    );
    assert_eq!(num("sink_bytes"), tcp_bytes, "{ctx}");
    assert_eq!(num("source_bytes"), tcp_bytes, "{ctx}");
    assert_eq!(num("sessions"), 2, "{ctx}");
    for zero in ["udp_dropped", "tcp_aborted", "rx_errors", "tx_errors"] {
        assert_eq!(num(zero), 0, "{zero}: {ctx}");
    }
    let pings = u64::from(PINGS) * PING_SIZES.len() as u64;
    assert!(num("icmp_echo_rx") >= pings, "{ctx}");
    assert_eq!(num("icmp_echo_rx"), num("icmp_echo_tx"), "{ctx}");
    assert!(num("arp_rx") >= 1 && num("arp_tx") >= 1, "{ctx}");
    // The guest's 64 KiB user stacks have no guard page: keep a margin.
    assert!(num("stack_used") < 56 << 10, "{ctx}");
    // Interrupt driven unless told to poll (then no interrupt was asked for).
    let polled = net["wait"] == "poll";
    assert_eq!(num("irqs") == 0, polled, "{ctx}");
    check_rng(&fin.result("rng"), 1 << 20);
}

/// The `rng` result of a read of `bytes`: all there, and plainly not constant.
pub fn check_rng(r: &HashMap<String, String>, bytes: u64) {
    let num = |k: &str| -> u64 { r[k].parse().unwrap_or_else(|_| panic!("{k}: {r:?}")) };
    assert_eq!(r["ok"], "1", "{r:?}");
    assert_eq!(num("bytes"), bytes, "{r:?}");
    assert_eq!(num("repeats"), 0, "{r:?}");
    if bytes >= 64 << 10 {
        // 256 values, about half the bits set, no long runs: a stuck or constant device
        // fails all three; random bytes pass them with overwhelming probability.
        assert_eq!(num("distinct"), 256, "{r:?}");
        assert!((450..=550).contains(&num("ones_permille")), "{r:?}");
        assert!(num("max_run") < 16, "{r:?}");
    }
}
