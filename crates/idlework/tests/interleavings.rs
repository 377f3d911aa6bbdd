//! proptest: random interleavings of submit / idle / kick / budget / clock
//! events against the real (non-loom) engine, checking the invariants the
//! loom models check: every item finishes exactly once (run, or handed
//! back at shutdown and run by the caller), executors keep their budget to
//! within one item, `idle` work reaches a worker only after its deadline,
//! policies put work only where they may, and the statistics agree.

mod common;

use common::FakeVcpu;
use idlework::{
    Config, Context, Engine, Executor, Item, ManualClock, Place, Policy, Priority, Shutdown, Step,
};
use proptest::prelude::*;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const IDLE_DEADLINE: Duration = Duration::from_millis(50);

#[derive(Clone, Debug)]
enum Op {
    Submit {
        prio: Priority,
        yields: u8,
        cost_us: u64,
        cheap: bool,
        from_exec: Option<usize>,
    },
    SetIdle {
        exec: usize,
        idle: bool,
    },
    RunIdle {
        exec: usize,
        budget_us: u64,
    },
    Advance {
        ms: u64,
    },
}

#[derive(Clone, Debug)]
struct Setup {
    policy: Policy,
    max_workers: usize,
    items_per_worker: usize,
    cpu_cap: Option<usize>,
    inline: bool,
    drain: bool,
}

fn setup() -> impl Strategy<Value = Setup> {
    (
        prop::sample::select(Policy::ALL.to_vec()),
        1..=3usize,
        1..=4usize,
        prop::option::of(1..=2usize),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(policy, max_workers, items_per_worker, cpu_cap, inline, drain)| Setup {
                policy,
                max_workers,
                items_per_worker,
                cpu_cap,
                inline,
                drain,
            },
        )
}

fn op() -> impl Strategy<Value = Op> {
    let prio = prop::sample::select(Priority::ALL.to_vec());
    prop_oneof![
        4 => (prio, 0..3u8, 0..60u64, any::<bool>(), prop::option::of(0..2usize)).prop_map(
            |(prio, yields, cost_us, cheap, from_exec)| Op::Submit { prio, yields, cost_us, cheap, from_exec }
        ),
        2 => (0..2usize, any::<bool>()).prop_map(|(exec, idle)| Op::SetIdle { exec, idle }),
        2 => (0..2usize, 1..200u64).prop_map(|(exec, budget_us)| Op::RunIdle { exec, budget_us }),
        1 => (0..60u64).prop_map(|ms| Op::Advance { ms }),
    ]
}

/// One finished item, as it saw itself.
#[derive(Clone, Debug)]
struct Record {
    id: usize,
    prio: Priority,
    place: Place,
    /// Clock when its last step ran, and when it was (at the latest) queued.
    ran_at: Duration,
    queued_by: Duration,
    after_shutdown: bool,
}

#[derive(Default)]
struct Log {
    records: Vec<Record>,
    /// Costs of the steps executors ran since the last `RunIdle`.
    executor_steps: Vec<Duration>,
    shutting_down: bool,
}

type SharedLog = Arc<Mutex<Log>>;

/// An item that yields `yields` times; on an executor each step moves the
/// manual clock by its cost (only the test thread runs executors, so only
/// it moves the clock while one runs).
fn make_item(
    id: usize,
    prio: Priority,
    yields: u8,
    cost: Duration,
    clock: &ManualClock,
    log: &SharedLog,
) -> Item {
    let (clock, log) = (clock.clone(), Arc::clone(log));
    let mut left = yields;
    let mut queued_by = clock.now();
    Item::new(move |cx: &Context| {
        if cx.place() == Place::Executor {
            clock.advance(cost);
            log.lock().unwrap().executor_steps.push(cost);
        }
        if left > 0 {
            left -= 1;
            queued_by = clock.now();
            return Step::Yield;
        }
        let mut log = log.lock().unwrap();
        let after_shutdown = log.shutting_down;
        log.records.push(Record {
            id,
            prio,
            place: cx.place(),
            ran_at: clock.now(),
            queued_by,
            after_shutdown,
        });
        Step::Done
    })
    .with_priority(prio)
}

fn run_case(s: Setup, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let clock = ManualClock::new();
    let config = Config {
        policy: s.policy,
        max_workers: s.max_workers,
        items_per_worker: s.items_per_worker,
        cpu_cap: s.cpu_cap,
        normal_deadline: Duration::from_millis(5),
        idle_deadline: IDLE_DEADLINE,
        inline_threshold: if s.inline {
            Duration::from_micros(10)
        } else {
            Duration::ZERO
        },
        ..Config::default()
    };
    let engine = Engine::with_clock(config, clock.clock()).unwrap();
    let vcpus = [FakeVcpu::busy(), FakeVcpu::busy()];
    let mut execs: Vec<Executor> = vcpus
        .iter()
        .enumerate()
        .map(|(i, v)| engine.register_executor(format!("vcpu{i}"), v.clone()))
        .collect();
    let log: SharedLog = Arc::default();
    let mut submitted = 0;
    for op in ops {
        match op {
            Op::Submit {
                prio,
                yields,
                cost_us,
                cheap,
                from_exec,
            } => {
                let cost = Duration::from_micros(cost_us);
                let mut item = make_item(submitted, prio, yields, cost, &clock, &log);
                if cheap {
                    item = item.with_cost_hint(Duration::from_micros(1));
                }
                submitted += 1;
                match from_exec {
                    Some(e) => execs[e].submit(item),
                    None => engine.submit(item),
                }
                .unwrap();
            }
            Op::SetIdle { exec, idle } => vcpus[exec].idle.store(idle, Ordering::SeqCst),
            Op::RunIdle { exec, budget_us } => {
                log.lock().unwrap().executor_steps.clear();
                let budget = Duration::from_micros(budget_us);
                let report = execs[exec].run_idle(budget);
                let steps = std::mem::take(&mut log.lock().unwrap().executor_steps);
                let spent: Duration = steps.iter().sum();
                prop_assert_eq!(report.busy, spent);
                prop_assert!(report.items as usize <= steps.len());
                if let Some(last) = steps.last() {
                    // It started its last step while still within budget.
                    prop_assert!(spent - *last < budget, "{:?} {:?}", steps, budget);
                }
            }
            Op::Advance { ms } => {
                clock.advance(Duration::from_millis(ms));
                engine.check_deadlines();
            }
        }
    }
    // Executors run only on this thread, so their counts are exact now.
    let stats = engine.stats();
    let on_executors = log
        .lock()
        .unwrap()
        .records
        .iter()
        .filter(|r| r.place == Place::Executor)
        .count();
    prop_assert_eq!(stats.ran_at(Place::Executor).total(), on_executors as u64);
    // Workers may kick too, so sent and the hooks' count can differ by a
    // kick in flight; useful kicks are a subset of sent ones.
    let (sent, useful) = stats.kicks();
    prop_assert!(useful <= sent);

    drop(execs);
    log.lock().unwrap().shutting_down = true;
    let how = if s.drain {
        Shutdown::Drain
    } else {
        Shutdown::Return
    };
    let returned = engine.shutdown(how);
    if s.drain {
        prop_assert!(returned.is_empty());
    }
    returned.into_iter().for_each(Item::run_to_completion);

    let records = log.lock().unwrap().records.clone();
    let mut seen = vec![0u32; submitted];
    for r in &records {
        seen[r.id] += 1;
    }
    prop_assert!(seen.iter().all(|&n| n == 1), "runs per item: {:?}", seen);
    for r in &records {
        match s.policy {
            Policy::Workers => prop_assert_ne!(r.place, Place::Executor),
            Policy::Inline => prop_assert_eq!(r.place, Place::Inline),
            Policy::Idle => {}
        }
        let early_idle_on_worker = s.policy == Policy::Idle
            && r.prio == Priority::Idle
            && r.place == Place::Worker
            && !r.after_shutdown
            && r.ran_at.saturating_sub(r.queued_by) < IDLE_DEADLINE;
        prop_assert!(
            !early_idle_on_worker,
            "idle work ran early on a worker: {:?}",
            r
        );
    }
    Ok(())
}

proptest! {
    // 200 cases by default; PROPTEST_CASES overrides.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(200),
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_interleavings_keep_the_invariants(s in setup(), ops in prop::collection::vec(op(), 1..40)) {
        run_case(s, ops)?;
    }
}
