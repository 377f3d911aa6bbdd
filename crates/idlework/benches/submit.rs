//! Microbenchmarks of the hot paths: submit→run overhead per item, and the
//! cost of an idle executor picking work up.
//!
//! `cargo bench -p idlework --bench submit`. Items are empty closures, so
//! what is measured is the engine: the item, queueing, placement, timestamps,
//! pickup, accounting and statistics. Times are per item.
//!
//! `executor_uncontended` is the uncontended submit → pickup path: one
//! thread submits 32 items (the first claims the announced executor), then
//! runs them as that executor (which takes the first alone, its pace being
//! unknown, and the other 31 as one batch: see `src/batch.rs`). Its items capture nothing, so building one
//! allocates nothing; `executor_uncontended_capturing`, the same loop with
//! items that capture a reference (as a VMM's capture their device), adds
//! the allocation such an item needs.
//!
//! Benchmarks that run on the bench thread alone (`executor_uncontended`,
//! `inline`, `executor_pickup/*`) report that thread's CPU time
//! (`CLOCK_THREAD_CPUTIME_ID`), so other load on a shared machine does not
//! inflate them; the multi-threaded ones report wall time until every item
//! has run.

use cpu_time::ThreadTime;
use criterion::{criterion_group, criterion_main, Criterion};
use idlework::{Config, Engine, Executor, IdleHooks, Item, Policy};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const HOUR: Duration = Duration::from_secs(3600);
const BATCH: u64 = 32;

static RAN: AtomicU64 = AtomicU64::new(0);

fn item() -> Item {
    Item::from_fn(|| {
        RAN.fetch_add(1, Ordering::Relaxed);
    })
}

/// An item whose closure captures a reference: not zero-sized, so it is
/// allocated.
fn capturing_item() -> Item {
    let ran: &'static AtomicU64 = black_box(&RAN);
    Item::from_fn(move || {
        ran.fetch_add(1, Ordering::Relaxed);
    })
}

struct AlwaysIdle;

impl IdleHooks for AlwaysIdle {
    fn kick(&self) {}
}

fn config(policy: Policy) -> Config {
    Config {
        policy,
        max_workers: 1,
        // One hand absorbs any depth: the executor is not helped by workers.
        items_per_worker: usize::MAX / 2,
        normal_deadline: HOUR,
        idle_deadline: HOUR,
        ..Config::default()
    }
}

/// This thread's CPU time for `iters` calls of `f`.
fn cpu_time(iters: u64, mut f: impl FnMut()) -> Duration {
    let start = ThreadTime::now();
    for _ in 0..iters {
        f();
    }
    start.elapsed()
}

/// Runs everything queued on `exec`.
fn drain(exec: &mut Executor) {
    while exec.run_idle(HOUR).items > 0 {}
}

/// Waits until `target` items have run in total.
fn wait_ran(target: u64) {
    while RAN.load(Ordering::Relaxed) < target {
        std::hint::spin_loop();
    }
}

fn submit_run(c: &mut Criterion) {
    println!(
        "submit_run/*: per item; executor_uncontended*, inline: this thread's CPU time \
         (submit + executor run on one thread, batches of {BATCH}); others: wall time until all \
         ran. executor_pickup/*: this thread's CPU time per iteration."
    );
    let mut g = c.benchmark_group("submit_run");

    for (name, make) in [
        ("executor_uncontended", item as fn() -> Item),
        ("executor_uncontended_capturing", capturing_item),
    ] {
        g.bench_function(name, |b| {
            let engine = Engine::new(config(Policy::Idle)).unwrap();
            let mut exec = engine.register_executor("vcpu0", AlwaysIdle);
            b.iter_custom(|iters| {
                let start = ThreadTime::now();
                let mut left = iters;
                while left > 0 {
                    let n = left.min(BATCH);
                    // Its thread goes back to waiting: the first item claims it.
                    exec.announce_idle();
                    for _ in 0..n {
                        black_box(engine.submit(make()).unwrap());
                    }
                    drain(&mut exec);
                    left -= n;
                }
                start.elapsed()
            });
        });
    }

    g.bench_function("inline", |b| {
        let engine = Engine::new(config(Policy::Inline)).unwrap();
        b.iter_custom(|iters| {
            cpu_time(iters, || {
                black_box(engine.submit(item()).unwrap());
            })
        });
    });

    g.bench_function("worker_1_submitter", |b| {
        let engine = Engine::new(config(Policy::Workers)).unwrap();
        b.iter_custom(|iters| {
            let target = RAN.load(Ordering::Relaxed) + iters;
            let start = Instant::now();
            for _ in 0..iters {
                black_box(engine.submit(item()).unwrap());
            }
            wait_ran(target);
            start.elapsed()
        });
    });

    g.bench_function("worker_2_submitters", |b| {
        let engine = Engine::new(config(Policy::Workers)).unwrap();
        b.iter_custom(|iters| {
            let target = RAN.load(Ordering::Relaxed) + iters;
            let start = Instant::now();
            std::thread::scope(|s| {
                for share in [iters / 2, iters - iters / 2] {
                    let sub = engine.submitter();
                    s.spawn(move || {
                        for _ in 0..share {
                            black_box(sub.submit(item()).unwrap());
                        }
                    });
                }
            });
            wait_ran(target);
            start.elapsed()
        });
    });

    g.bench_function("executor_2_submitters", |b| {
        // Two threads submit while the executor thread drains.
        let engine = Engine::new(config(Policy::Idle)).unwrap();
        let mut exec = engine.register_executor("vcpu0", AlwaysIdle);
        b.iter_custom(|iters| {
            let target = RAN.load(Ordering::Relaxed) + iters;
            let start = Instant::now();
            std::thread::scope(|s| {
                for share in [iters / 2, iters - iters / 2] {
                    let sub = engine.submitter();
                    s.spawn(move || {
                        for _ in 0..share {
                            black_box(sub.submit(item()).unwrap());
                        }
                    });
                }
                while RAN.load(Ordering::Relaxed) < target {
                    exec.run_idle(HOUR);
                }
            });
            start.elapsed()
        });
    });
    g.finish();
}

fn pickup(c: &mut Criterion) {
    let mut g = c.benchmark_group("executor_pickup");
    g.bench_function("run_idle_empty", |b| {
        let engine = Engine::new(config(Policy::Idle)).unwrap();
        let mut exec = engine.register_executor("vcpu0", AlwaysIdle);
        b.iter_custom(|iters| {
            cpu_time(iters, || {
                black_box(exec.run_idle(HOUR));
            })
        });
    });
    g.bench_function("kick_then_run_idle_one_item", |b| {
        // The executor announces itself idle, one item is submitted (and
        // claims it), then the executor's call that answers the kick runs it.
        let engine = Engine::new(config(Policy::Idle)).unwrap();
        let mut exec = engine.register_executor("vcpu0", AlwaysIdle);
        b.iter_custom(|iters| {
            cpu_time(iters, || {
                exec.announce_idle();
                engine.submit(item()).unwrap();
                black_box(exec.run_idle(HOUR));
            })
        });
    });
    g.finish();
}

fn fast() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20)
}

criterion_group! {
    name = benches;
    config = fast();
    targets = submit_run, pickup
}
criterion_main!(benches);
