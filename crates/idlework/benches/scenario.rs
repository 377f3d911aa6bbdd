//! Synthetic scenario benchmark: no KVM, host threads play vCPUs.
//!
//! `cargo bench -p idlework --bench scenario [-- --quick]`
//!
//! Each vCPU thread loops: *busy* for X µs (spinning, counting progress
//! units: the guest's useful work), then submits K items of cost C µs (as a
//! virtio notify exit would, on the vCPU thread), then *idle* for Y µs
//! (blocked, like a halted vCPU; an idle vCPU can be kicked, runs
//! `run_idle` within its budget, and blocks again until its idle time is
//! over). The same loop with no items is the *solo* baseline.
//!
//! Every scenario runs under the three policies on the same engine API:
//! `workers` (device threads only, today's VMMs), `inline` (work on the
//! submitting vCPU thread), `idle` (this engine). Nothing is tuned per
//! policy: one engine configuration, printed below, is used for all.
//!
//! Reported per run:
//! * progress: busy-phase progress units relative to the solo run;
//! * item latency submit→done, p50 / p99 / p99.9 (items still queued at the
//!   end are drained and counted);
//! * CPU time by thread class from /proc (10 ms ticks): vCPU threads (of
//!   which engine work, from the engine's own accounting) and worker
//!   threads;
//! * peak number of this VM's threads running at once (vCPUs not blocked
//!   in idle, plus workers running an item);
//! * where items ran, and kicks sent/useful;
//! * pickup latency (claim of an announced-idle vCPU → first item start).

use hdrhistogram::Histogram;
use idlework::{
    Config, Context, Engine, Executor, IdleHooks, Item, Place, Policy, Shutdown, Stats, Step,
};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// A workload.
#[derive(Clone, Copy)]
struct Scenario {
    name: &'static str,
    vcpus: usize,
    busy: Duration,
    idle: Duration,
    items_per_cycle: usize,
    item_cost: Duration,
}

const SCENARIOS: [Scenario; 3] = [
    Scenario {
        name: "mostly-idle",
        vcpus: 2,
        busy: Duration::from_micros(200),
        idle: Duration::from_micros(800),
        items_per_cycle: 4,
        item_cost: Duration::from_micros(20),
    },
    Scenario {
        name: "half-busy",
        vcpus: 2,
        busy: Duration::from_micros(500),
        idle: Duration::from_micros(500),
        items_per_cycle: 4,
        item_cost: Duration::from_micros(20),
    },
    Scenario {
        name: "never-idle",
        vcpus: 2,
        busy: Duration::from_micros(1000),
        idle: Duration::ZERO,
        items_per_cycle: 4,
        item_cost: Duration::from_micros(20),
    },
];

fn engine_config(policy: Policy) -> Config {
    Config {
        policy,
        max_workers: 2,
        items_per_worker: 4,
        normal_deadline: Duration::from_millis(2),
        idle_deadline: Duration::from_millis(100),
        inline_threshold: Duration::ZERO,
        executor_budget: Duration::from_micros(200),
        cpu_cap: None,
        thread_name: "iw-".into(),
        idle_poll: Some(Duration::from_micros(50)),
        on_thread_start: None,
    }
}

/// Counts this VM's running threads and remembers the peak.
#[derive(Default)]
struct Running {
    now: AtomicUsize,
    peak: AtomicUsize,
}

impl Running {
    fn enter(&self) {
        let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(n, Ordering::SeqCst);
    }

    fn leave(&self) {
        self.now.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A host thread playing a vCPU: it announces its idle phases itself (as a
/// vCPU thread does under a userspace irqchip) and waits for kicks.
#[derive(Default)]
struct Vcpu {
    kicked: Mutex<bool>,
    cv: Condvar,
}

#[derive(Clone)]
struct Hooks(Arc<Vcpu>);

impl IdleHooks for Hooks {
    fn kick(&self) {
        *self.0.kicked.lock().unwrap() = true;
        self.0.cv.notify_one();
    }
}

/// Spins for `d`; returns progress units (loop iterations).
fn spin(d: Duration) -> u64 {
    let end = Instant::now() + d;
    let mut units = 0u64;
    let mut x = 1u64;
    while Instant::now() < end {
        for _ in 0..64 {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
        units += 1;
    }
    units
}

/// This thread's CPU time (user + system), from /proc.
fn thread_cpu(path: &str) -> Duration {
    let Ok(stat) = std::fs::read_to_string(path) else {
        return Duration::ZERO;
    };
    // Fields after the parenthesised name start at field 3 (state); utime
    // and stime are fields 14 and 15, in clock ticks (100 Hz on Linux).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| {
        f.get(n - 3)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Duration::from_millis((field(14) + field(15)) * 10)
}

/// CPU time of this process's threads whose name starts with `prefix`.
fn threads_cpu(prefix: &str) -> Duration {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Duration::ZERO;
    };
    tasks
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.starts_with(prefix))
        })
        .map(|t| thread_cpu(&t.path().join("stat").to_string_lossy()))
        .sum()
}

struct Shared {
    running: Running,
    latency: Mutex<Histogram<u64>>,
    done: AtomicU64,
}

fn work_item(shared: &Arc<Shared>, cost: Duration) -> Item {
    let shared = Arc::clone(shared);
    let submitted = Instant::now();
    Item::new(move |cx: &Context| {
        let on_worker = cx.place() == Place::Worker;
        if on_worker {
            shared.running.enter();
        }
        spin(cost);
        if on_worker {
            shared.running.leave();
        }
        let lat = u64::try_from(submitted.elapsed().as_nanos()).unwrap_or(u64::MAX);
        shared.latency.lock().unwrap().saturating_record(lat);
        shared.done.fetch_add(1, Ordering::Relaxed);
        Step::Done
    })
    .with_cost_hint(cost)
}

/// Blocks as an idle vCPU until `until`, running work whenever claimed:
/// announce, re-check, wait (the protocol of `Executor::announce_idle`).
fn idle_phase(vcpu: &Vcpu, exec: &mut Executor, running: &Running, until: Instant) {
    loop {
        exec.announce_idle();
        let mut kicked = vcpu.kicked.lock().unwrap();
        let claimed = loop {
            if *kicked || exec.work_queued() {
                break true;
            }
            let now = Instant::now();
            if now >= until {
                break false;
            }
            kicked = vcpu.cv.wait_timeout(kicked, until - now).unwrap().0;
        };
        *kicked = false;
        drop(kicked);
        // The guest's idle phase ended ("an interrupt"): back to it unless a
        // submitter claimed this thread meanwhile.
        if !claimed && !exec.announce_busy() {
            return;
        }
        running.enter();
        exec.run_idle(exec.budget());
        running.leave();
    }
}

/// Deterministic per-vCPU jitter: durations drawn uniformly from
/// [0.5, 1.5] x their mean, so vCPUs do not run in lockstep.
struct Jitter(u64);

impl Jitter {
    fn draw(&mut self, mean: Duration) -> Duration {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        let frac = 0.5 + (self.0 % 1000) as f64 / 1000.0;
        mean.mul_f64(frac)
    }
}

/// One vCPU thread's loop; returns its progress and CPU time.
fn vcpu_loop(
    sc: Scenario,
    id: usize,
    vcpu: &Vcpu,
    mut exec: Executor,
    shared: &Arc<Shared>,
    items: usize,
    end: Instant,
) -> (u64, Duration) {
    let mut jitter = Jitter(0x9E37_79B9_7F4A_7C15 ^ (id as u64 + 1));
    let mut progress = 0;
    while Instant::now() < end {
        shared.running.enter();
        progress += spin(jitter.draw(sc.busy));
        for _ in 0..items {
            // A notify exit: submitted on the vCPU thread.
            exec.submit(work_item(shared, sc.item_cost)).unwrap();
        }
        shared.running.leave();
        if kick_pending(vcpu) {
            // A kick that arrived while busy still makes the vCPU exit once.
            shared.running.enter();
            exec.run_idle(exec.budget());
            shared.running.leave();
        }
        if !sc.idle.is_zero() {
            let idle = jitter.draw(sc.idle);
            idle_phase(vcpu, &mut exec, &shared.running, Instant::now() + idle);
        }
    }
    (progress, thread_cpu("/proc/thread-self/stat"))
}

fn kick_pending(vcpu: &Vcpu) -> bool {
    std::mem::take(&mut *vcpu.kicked.lock().unwrap())
}

struct Outcome {
    progress: u64,
    done: u64,
    latency: Histogram<u64>,
    vcpu_cpu: Duration,
    worker_cpu: Duration,
    stats: Stats,
    /// Claim (or halt) → first item start, over the run's executors.
    pickup: Histogram<u64>,
    peak: usize,
}

fn run(sc: Scenario, policy: Policy, items: usize, secs: Duration) -> Outcome {
    let engine = Engine::new(engine_config(policy)).unwrap();
    let shared = Arc::new(Shared {
        running: Running::default(),
        latency: Mutex::new(Histogram::new_with_bounds(1, 60_000_000_000, 3).unwrap()),
        done: AtomicU64::new(0),
    });
    let end = Instant::now() + secs;
    let results: Vec<(u64, Duration)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..sc.vcpus)
            .map(|i| {
                let vcpu = Arc::new(Vcpu::default());
                let exec = engine.register_executor(format!("vcpu{i}"), Hooks(Arc::clone(&vcpu)));
                let shared = &shared;
                std::thread::Builder::new()
                    .name(format!("vcpu{i}"))
                    .spawn_scoped(s, move || vcpu_loop(sc, i, &vcpu, exec, shared, items, end))
                    .unwrap()
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let worker_cpu = threads_cpu("iw-");
    let stats = engine.stats();
    let pickup = engine.pickup_histogram();
    let left = engine.shutdown(Shutdown::Drain);
    assert!(left.is_empty());
    let latency = shared.latency.lock().unwrap().clone();
    Outcome {
        progress: results.iter().map(|r| r.0).sum(),
        vcpu_cpu: results.iter().map(|r| r.1).sum(),
        done: shared.done.load(Ordering::Relaxed),
        latency,
        worker_cpu,
        stats,
        pickup,
        peak: shared.running.peak.load(Ordering::SeqCst),
    }
}

fn us(ns: u64) -> String {
    format!("{:.0}", ns as f64 / 1000.0)
}

/// Per-policy results over all rounds of a scenario.
struct Summary {
    ratios: Vec<f64>,
    done: u64,
    latency: Histogram<u64>,
    vcpu_cpu: Duration,
    work: Duration,
    worker_cpu: Duration,
    peak: usize,
    ran: [u64; 3],
    kicks: (u64, u64),
    pickup: Histogram<u64>,
}

impl Summary {
    fn new() -> Self {
        Summary {
            ratios: Vec::new(),
            done: 0,
            latency: Histogram::new_with_bounds(1, 60_000_000_000, 3).unwrap(),
            vcpu_cpu: Duration::ZERO,
            work: Duration::ZERO,
            worker_cpu: Duration::ZERO,
            peak: 0,
            ran: [0; 3],
            kicks: (0, 0),
            pickup: Histogram::new_with_bounds(1, 60_000_000_000, 3).unwrap(),
        }
    }

    fn add(&mut self, o: &Outcome, solo_progress: u64) {
        let s = &o.stats;
        self.ratios
            .push(o.progress as f64 / solo_progress.max(1) as f64);
        self.done += o.done;
        self.latency.add(&o.latency).unwrap();
        self.pickup.add(&o.pickup).unwrap();
        self.vcpu_cpu += o.vcpu_cpu;
        let work_ns = s.inline.busy_ns + s.executors.iter().map(|e| e.run.busy_ns).sum::<u64>();
        self.work += Duration::from_nanos(work_ns);
        self.worker_cpu += o.worker_cpu;
        self.peak = self.peak.max(o.peak);
        for (i, place) in Place::ALL.into_iter().enumerate() {
            self.ran[i] += s.ran_at(place).total();
        }
        let (sent, useful) = s.kicks();
        self.kicks.0 += sent;
        self.kicks.1 += useful;
    }

    fn median_ratio(&mut self) -> f64 {
        self.ratios.sort_by(f64::total_cmp);
        self.ratios
            .get(self.ratios.len() / 2)
            .copied()
            .unwrap_or(0.0)
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (secs, rounds) = if quick {
        (Duration::from_millis(500), 1u32)
    } else {
        (Duration::from_secs(2), 3u32)
    };
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "# idlework scenario benchmark{}",
        if quick { " (--quick)" } else { "" }
    );
    println!(
        "method: host threads play vCPUs: busy X us (spin, progress units), then submit K items"
    );
    println!(
        "  of cost C us on the vCPU thread, then idle Y us (blocked; kickable). X and Y are drawn"
    );
    println!(
        "  per cycle from [0.5, 1.5] x mean (fixed seeds), so vCPUs drift out of phase. Solo = the"
    );
    println!(
        "  same loop with no items. Each run lasts {secs:?}; items left at the end are drained and"
    );
    println!("  counted. {rounds} round(s) of solo/workers/inline/idle, interleaved; progress = median over");
    println!(
        "  rounds of (run progress / same round's solo); other columns are per-run means (latency:"
    );
    println!(
        "  all rounds pooled; peak: max). CPU from /proc (10 ms ticks); '(work)' = time running"
    );
    println!("  items on vCPU threads (engine stats). Peak threads = vCPUs not blocked in idle +");
    println!("  workers running an item.");
    println!("machine: {cores} CPUs available (shared with whatever else runs: compare within a row group)");
    let c = engine_config(Policy::Idle);
    println!(
        "engine: max_workers={} items_per_worker={} normal_deadline={:?} idle_deadline={:?} \
         executor_budget={:?} inline_threshold={:?} cpu_cap={:?} (same for every policy)",
        c.max_workers,
        c.items_per_worker,
        c.normal_deadline,
        c.idle_deadline,
        c.executor_budget,
        c.inline_threshold,
        c.cpu_cap
    );
    println!();
    println!(
        "| scenario | policy | progress vs solo | items/run | lat p50 us | p99 us | p99.9 us | \
         vCPU CPU ms (work) | worker CPU ms | peak threads | ran inline/exec/worker | kicks sent/useful | \
         pickup p50/p99 us |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for sc in SCENARIOS {
        let mut solo = Summary::new();
        let mut per_policy: Vec<Summary> = Policy::ALL.iter().map(|_| Summary::new()).collect();
        for _ in 0..rounds {
            let base = run(sc, Policy::Workers, 0, secs);
            solo.add(&base, base.progress);
            for (policy, sum) in Policy::ALL.into_iter().zip(&mut per_policy) {
                sum.add(&run(sc, policy, sc.items_per_cycle, secs), base.progress);
            }
        }
        let r = u64::from(rounds);
        let per = |d: Duration| (d / rounds).as_millis();
        println!(
            "| {} (V={} X={}us Y={}us K={} C={}us) | solo | 1.00 | 0 | - | - | - | {} (0) | {} | {} | - | - | - |",
            sc.name,
            sc.vcpus,
            sc.busy.as_micros(),
            sc.idle.as_micros(),
            sc.items_per_cycle,
            sc.item_cost.as_micros(),
            per(solo.vcpu_cpu),
            per(solo.worker_cpu),
            solo.peak
        );
        for (policy, mut o) in Policy::ALL.into_iter().zip(per_policy) {
            let pickup = if o.pickup.is_empty() {
                "-".to_owned()
            } else {
                format!(
                    "{}/{}",
                    us(o.pickup.value_at_quantile(0.5)),
                    us(o.pickup.value_at_quantile(0.99))
                )
            };
            println!(
                "| {} | {} | {:.2} | {} | {} | {} | {} | {} ({}) | {} | {} | {}/{}/{} | {}/{} | {} |",
                sc.name,
                policy.name(),
                o.median_ratio(),
                o.done / r,
                us(o.latency.value_at_quantile(0.5)),
                us(o.latency.value_at_quantile(0.99)),
                us(o.latency.value_at_quantile(0.999)),
                per(o.vcpu_cpu),
                per(o.work),
                per(o.worker_cpu),
                o.peak,
                o.ran[0] / r,
                o.ran[1] / r,
                o.ran[2] / r,
                o.kicks.0 / r,
                o.kicks.1 / r,
                pickup
            );
        }
    }
}
