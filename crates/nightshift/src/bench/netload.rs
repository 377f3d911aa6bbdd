//! The host's side of a network scenario: once the guest's `net` workload is up, drive
//! its services from a thread inside the bench's namespace for the measured window,
//! then end it with `quit`.
//!
//! - `rr` (UDP request/response): one 64-byte datagram at a time to the echo port, the
//!   next sent when the answer is back; every round trip (send → the same bytes back, host
//!   clock) goes into an HDR histogram. An answer missing for 1 s counts as lost.
//! - `stream` (TCP): sessions alternate between the guest's sink (host → guest: the host
//!   writes for one slice, then FIN, and the guest's byte count and CRC32 must match) and
//!   its source (guest → host: a byte count sized from the last session's rate to take
//!   about one slice, every byte checked). Throughput per direction = bytes / session time
//!   (connect to last byte checked), so connection set-up is in it, for every VMM alike.
//!
//! The window: `ms` from the first request, or, when a vCPU computes beside the traffic,
//! until the guest prints its `compute` result (so the traffic covers the whole computing
//! window but for the guest's net bring-up before it). Everything is bounded in count and
//! time: at most [`MAX_ROUND_TRIPS`] / [`MAX_SESSIONS`], socket timeouts on every wait,
//! and a window cap of `2 * ms + 5 s`.

use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use serde::Serialize;

use super::scenario::NetLoad;
use nightshift::guest_net::{
    quit, tcp_from_guest, tcp_to_guest_until, udp_round_trip, udp_to, Transfer, ECHO_PORT,
};
use nightshift::netns::Netns;

/// Round trips at most per run.
pub const MAX_ROUND_TRIPS: u64 = 1_000_000;
/// TCP sessions at most per run.
pub const MAX_SESSIONS: u64 = 400;
/// Lost round trips after which the run fails (each costs the 1 s timeout).
const MAX_LOST: u64 = 20;
/// The request/response payload.
pub const RR_PAYLOAD: usize = 64;
/// How long the guest may take from VMM start to `net dev=`.
const UP_TIMEOUT: Duration = Duration::from_secs(30);

/// What the host measured in one run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct NetOutcome {
    /// VMM start → the guest's `net dev=` line, ms.
    pub up_ms: f64,
    /// The traffic window, s.
    pub window_s: f64,
    /// Request/response: round trips answered, and lost.
    pub round_trips: u64,
    pub lost: u64,
    /// Round-trip percentiles, µs: p10, p25, p50, p75, p90, p99, p99.9.
    pub rtt_us: Vec<f64>,
    /// The percentiles `rtt_us` holds.
    pub rtt_quantiles: Vec<f64>,
    /// Stream: host → guest and guest → host, summed over sessions.
    pub to_guest_bytes: u64,
    pub to_guest_s: f64,
    pub from_guest_bytes: u64,
    pub from_guest_s: f64,
    pub sessions: u64,
    /// The host's traffic thread over the window: time on a CPU and time runnable
    /// but waiting for one (its schedstat), ms.
    pub host_cpu_ms: f64,
    pub host_wait_ms: f64,
}

/// The calling thread's (time on CPU, time waiting on a run queue), ns.
fn thread_schedstat() -> Option<(u64, u64)> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let mut f = s.split_whitespace().map(|v| v.parse::<u64>().ok());
    Some((f.next()??, f.next()??))
}

/// The percentiles reported (and plotted) for round trips.
pub const QUANTILES: [f64; 7] = [0.10, 0.25, 0.50, 0.75, 0.90, 0.99, 0.999];

/// When the traffic window ends.
struct Window {
    start: Instant,
    end: Instant,
    cap: Instant,
    /// The VM's console while a vCPU computes: the window ends at its result.
    compute: Option<Receiver<String>>,
    computed: bool,
}

impl Window {
    fn new(ms: u64, compute: Option<Receiver<String>>) -> Self {
        let start = Instant::now();
        Self {
            start,
            end: start + Duration::from_millis(ms),
            cap: start + Duration::from_millis(2 * ms) + Duration::from_secs(5),
            compute,
            computed: false,
        }
    }

    fn over(&mut self) -> bool {
        let now = Instant::now();
        if now >= self.cap {
            return true;
        }
        let Some(console) = &self.compute else {
            return now >= self.end;
        };
        loop {
            match console.try_recv() {
                Ok(line) if is_compute_result(&line) => self.computed = true,
                Ok(_) => {}
                Err(TryRecvError::Empty) => break,
                // The VM has gone; the caller's next request fails and says so.
                Err(TryRecvError::Disconnected) => return true,
            }
        }
        self.computed
    }
}

fn is_compute_result(line: &str) -> bool {
    line.starts_with("result ") && line.split_whitespace().any(|w| w == "workload=compute")
}

/// Waits for the guest's `net dev=` line on `console` (the VM's stdout, line by line),
/// then drives `load` for the window and sends `quit`. `computing`: a vCPU computes, so
/// the window ends at its result line.
pub fn drive(
    ns: &Netns,
    load: &NetLoad,
    console: Receiver<String>,
    started: Instant,
    ms: u64,
    computing: bool,
) -> anyhow::Result<NetOutcome> {
    let up_by = started + UP_TIMEOUT;
    loop {
        let left = up_by.saturating_duration_since(Instant::now());
        match console.recv_timeout(left) {
            Ok(line) if line.starts_with("net dev=") => break,
            Ok(line) if is_compute_result(&line) && computing => {
                bail!("the guest computed for its whole run before its network was up")
            }
            Ok(_) => {}
            Err(RecvTimeoutError::Timeout) => bail!("no `net dev=` line within {UP_TIMEOUT:?}"),
            Err(RecvTimeoutError::Disconnected) => bail!("the VM ended before its network was up"),
        }
    }
    let up_ms = started.elapsed().as_secs_f64() * 1e3;
    let load = *load;
    let outcome = ns.run(move || -> anyhow::Result<NetOutcome> {
        let sched0 = thread_schedstat();
        let mut window = Window::new(ms, computing.then_some(console));
        let mut out = match load {
            NetLoad::Rr => round_trips(&mut window)?,
            NetLoad::Stream => stream(&mut window, ms)?,
        };
        out.window_s = window.start.elapsed().as_secs_f64();
        if let (Some((cpu0, wait0)), Some((cpu1, wait1))) = (sched0, thread_schedstat()) {
            out.host_cpu_ms = cpu1.saturating_sub(cpu0) as f64 / 1e6;
            out.host_wait_ms = wait1.saturating_sub(wait0) as f64 / 1e6;
        }
        quit().context("ending the guest's net workload")?;
        Ok(out)
    })??;
    Ok(NetOutcome { up_ms, ..outcome })
}

fn round_trips(window: &mut Window) -> anyhow::Result<NetOutcome> {
    let sock = udp_to(ECHO_PORT, Duration::from_secs(1))?;
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    let mut payload = [0u8; RR_PAYLOAD];
    for (i, b) in payload.iter_mut().enumerate().skip(8) {
        *b = (i * 37) as u8;
    }
    let mut reply = [0u8; 2048];
    let (mut answered, mut lost) = (0u64, 0u64);
    for seq in 0..MAX_ROUND_TRIPS {
        if seq > 0 && window.over() {
            break;
        }
        payload[..8].copy_from_slice(&seq.to_le_bytes());
        match udp_round_trip(&sock, &payload, &mut reply)? {
            Some(rtt) => {
                hist.saturating_record(rtt.as_nanos() as u64);
                answered += 1;
            }
            None => {
                lost += 1;
                if lost > MAX_LOST {
                    bail!("more than {MAX_LOST} requests unanswered for 1 s ({answered} answered)");
                }
            }
        }
    }
    if answered == 0 {
        bail!("no request was answered");
    }
    Ok(NetOutcome {
        round_trips: answered,
        lost,
        rtt_us: QUANTILES
            .iter()
            .map(|q| hist.value_at_quantile(*q) as f64 / 1e3)
            .collect(),
        rtt_quantiles: QUANTILES.to_vec(),
        ..NetOutcome::default()
    })
}

fn add(sum: &mut Transfer, t: Transfer) {
    sum.bytes += t.bytes;
    sum.secs += t.secs;
}

fn stream(window: &mut Window, ms: u64) -> anyhow::Result<NetOutcome> {
    // Six slices in a default 1.5 s window; never shorter than 50 ms.
    let slice = Duration::from_millis((ms / 6).clamp(50, 500));
    let (mut to, mut from) = (Transfer::default(), Transfer::default());
    let mut from_next = 0u64;
    let mut sessions = 0u64;
    while sessions < MAX_SESSIONS {
        // At least one session each way.
        if sessions >= 2 && window.over() {
            break;
        }
        let seed = 0x6e73_0000 + sessions;
        if sessions % 2 == 0 {
            let t = tcp_to_guest_until(Instant::now() + slice, 64 << 10, seed)
                .with_context(|| format!("TCP session {sessions}, host to guest"))?;
            if from_next == 0 {
                from_next = sized(t, slice);
            }
            add(&mut to, t);
        } else {
            let t = tcp_from_guest(from_next, seed)
                .with_context(|| format!("TCP session {sessions}, guest to host"))?;
            from_next = sized(t, slice);
            add(&mut from, t);
        }
        sessions += 1;
    }
    Ok(NetOutcome {
        to_guest_bytes: to.bytes,
        to_guest_s: to.secs,
        from_guest_bytes: from.bytes,
        from_guest_s: from.secs,
        sessions,
        ..NetOutcome::default()
    })
}

/// The byte count that takes about `slice` at `t`'s rate (64 KiB .. 256 MiB).
fn sized(t: Transfer, slice: Duration) -> u64 {
    let rate = t.bytes as f64 / t.secs.max(1e-6);
    ((rate * slice.as_secs_f64()) as u64).clamp(64 << 10, 256 << 20)
}

impl NetOutcome {
    /// Round trips per second over the window.
    pub fn rr_per_s(&self) -> Option<f64> {
        (self.round_trips > 0).then(|| self.round_trips as f64 / self.window_s.max(1e-9))
    }

    /// The round-trip percentile `q` (one of [`QUANTILES`]), µs.
    pub fn rtt(&self, q: f64) -> Option<f64> {
        let i = self.rtt_quantiles.iter().position(|x| *x == q)?;
        self.rtt_us.get(i).copied()
    }

    pub fn mbit_s_to_guest(&self) -> Option<f64> {
        (self.to_guest_bytes > 0).then(|| self.to_guest_bytes as f64 * 8.0 / self.to_guest_s / 1e6)
    }

    pub fn mbit_s_from_guest(&self) -> Option<f64> {
        (self.from_guest_bytes > 0)
            .then(|| self.from_guest_bytes as f64 * 8.0 / self.from_guest_s / 1e6)
    }

    /// Operations for per-operation counts: round trips, or MiB moved.
    pub fn ops(&self) -> f64 {
        if self.round_trips > 0 {
            self.round_trips as f64
        } else {
            (self.to_guest_bytes + self.from_guest_bytes) as f64 / (1 << 20) as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_ends_at_the_compute_result_line_only() {
        assert!(is_compute_result(
            "result cpu=0 workload=compute ms=1500 iters=1 iters_per_ms=1"
        ));
        assert!(!is_compute_result(
            "result cpu=1 workload=net ms=3 end=quit"
        ));
        assert!(!is_compute_result("warning: workload=compute"));
    }

    #[test]
    fn source_sessions_are_sized_to_a_slice_within_bounds() {
        let slice = Duration::from_millis(250);
        let t = |bytes, secs| Transfer { bytes, secs };
        // 40 MB/s for a quarter second.
        assert_eq!(sized(t(40_000_000, 1.0), slice), 10_000_000);
        assert_eq!(sized(t(1, 1.0), slice), 64 << 10);
        assert_eq!(sized(t(u64::MAX / 2, 1e-9), slice), 256 << 20);
    }
}
