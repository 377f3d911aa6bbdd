//! The uncontended submit → pickup path, timed, and for instruction counts
//! under valgrind (independent of machine load, unlike times):
//!
//! ```text
//! cargo run --release -p idlework --example hot_path [items]
//! cargo build --release -p idlework --example hot_path
//! valgrind --tool=cachegrind --cache-sim=no target/release/examples/hot_path 100000
//! valgrind --tool=cachegrind --cache-sim=no target/release/examples/hot_path 200000
//! ```
//!
//! It prints this thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`, so time the
//! thread spends pre-empted on a shared machine is not counted) and wall
//! time, divided by the items, for the whole loop: submitting an empty
//! closure (placement, queueing, timestamp) and the executor's run of it
//! (pickup, accounting, queue-wait and pickup statistics). Under valgrind,
//! the difference of the two totals divided by 100 000 is the instructions
//! of one item, without start-up. The loop is `benches/submit.rs`'s
//! `executor_uncontended`: the executor announces itself idle, 32 items are
//! submitted (the first claims it), then it runs them.

use cpu_time::ThreadTime;
use idlework::{Config, Engine, IdleHooks, Item, Policy};
use std::hint::black_box;
use std::time::{Duration, Instant};

const HOUR: Duration = Duration::from_secs(3600);
const BATCH: u64 = 32;

struct AlwaysIdle;

impl IdleHooks for AlwaysIdle {
    fn kick(&self) {}
}

fn main() {
    let items: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    let engine = Engine::new(Config {
        policy: Policy::Idle,
        max_workers: 1,
        items_per_worker: usize::MAX / 2,
        normal_deadline: HOUR,
        idle_deadline: HOUR,
        ..Config::default()
    })
    .expect("valid config");
    let mut exec = engine.register_executor("vcpu0", AlwaysIdle);
    let (cpu, wall) = (ThreadTime::now(), Instant::now());
    let mut left = items;
    while left > 0 {
        let n = left.min(BATCH);
        // The vCPU thread goes back to waiting: the first item claims it.
        exec.announce_idle();
        for _ in 0..n {
            black_box(engine.submit(Item::from_fn(|| ())).expect("running engine"));
        }
        while exec.run_idle(HOUR).items > 0 {}
        left -= n;
    }
    let (cpu, wall) = (cpu.elapsed(), wall.elapsed());
    let per = |d: Duration| d.as_nanos() as f64 / items.max(1) as f64;
    println!(
        "hot_path: {items} items, submit of an empty closure + executor run, batches of {BATCH}: \
         {:.1} ns/item thread CPU time, {:.1} ns/item wall",
        per(cpu),
        per(wall)
    );
}
