//! Behaviour of the engine in the real (non-loom) build. Every assertion is
//! about counts and places, never about time.

mod common;

use common::*;
use idlework::{
    Config, ConfigError, Engine, Error, Item, ManualClock, Place, Policy, Priority, Shutdown, Step,
    Submitted,
};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const HOUR: Duration = Duration::from_secs(3600);

/// Deadlines that never fire during a test.
fn patient(policy: Policy) -> Config {
    Config {
        policy,
        normal_deadline: HOUR,
        idle_deadline: HOUR,
        ..Config::default()
    }
}

#[test]
fn invalid_config_is_an_error_not_a_panic() {
    let bad = Config {
        max_workers: 0,
        ..Config::default()
    };
    assert!(matches!(
        Engine::new(bad),
        Err(Error::Config(ConfigError::NoWorkers(Policy::Idle)))
    ));
    let bad = Config {
        normal_deadline: Duration::from_secs(2),
        idle_deadline: Duration::from_secs(1),
        ..Config::default()
    };
    assert!(matches!(
        bad.validate(),
        Err(ConfigError::DeadlineOrder { .. })
    ));
    assert_eq!(
        Config {
            cpu_cap: Some(0),
            policy: Policy::Workers,
            ..Config::default()
        }
        .validate(),
        Err(ConfigError::ZeroCpuCap)
    );
    assert_eq!(
        Config {
            executor_budget: Duration::ZERO,
            ..Config::default()
        }
        .validate(),
        Err(ConfigError::ZeroBudget)
    );
    assert_eq!(
        Config {
            thread_name: "a\0b".into(),
            ..Config::default()
        }
        .validate(),
        Err(ConfigError::ThreadName)
    );
    assert_eq!("idle".parse::<Policy>(), Ok(Policy::Idle));
    assert!("fast".parse::<Policy>().is_err());
    let inline_without_workers = Config {
        policy: Policy::Inline,
        max_workers: 0,
        ..Config::default()
    };
    assert!(Engine::new(inline_without_workers).is_ok());
}

#[test]
fn inline_policy_runs_everything_on_the_submitter() {
    let engine = Engine::new(patient(Policy::Inline)).unwrap();
    let (tx, rx) = reporting();
    for id in 0..10 {
        let prio = Priority::ALL[id % 3];
        assert_eq!(
            engine.submit(item(&tx, id).with_priority(prio)).unwrap(),
            Submitted::Inline
        );
    }
    assert_eq!(
        engine.submit(yielding(&tx, 10, 3)).unwrap(),
        Submitted::Inline
    );
    expect_each_once(&rx, 11);
    let stats = engine.stats();
    assert_eq!(stats.ran_at(Place::Inline).total(), 11);
    assert_eq!(stats.inline.yields, 3);
    assert_eq!(stats.total_ran(), 11);
}

#[test]
fn cheap_items_run_inline_under_every_queueing_policy() {
    for policy in [Policy::Workers, Policy::Idle] {
        let engine = Engine::new(Config {
            inline_threshold: Duration::from_micros(5),
            ..patient(policy)
        })
        .unwrap();
        let (tx, rx) = reporting();
        let cheap = item(&tx, 0).with_cost_hint(Duration::from_nanos(200));
        assert_eq!(engine.submit(cheap).unwrap(), Submitted::Inline);
        let dear = item(&tx, 1).with_cost_hint(Duration::from_micros(50));
        assert_eq!(engine.submit(dear).unwrap(), Submitted::Queued);
        expect_each_once(&rx, 2);
        engine.shutdown(Shutdown::Drain);
    }
}

#[test]
fn a_cheap_item_that_yields_continues_in_the_queue() {
    let engine = Engine::new(Config {
        inline_threshold: Duration::from_micros(5),
        ..patient(Policy::Workers)
    })
    .unwrap();
    let (tx, rx) = reporting();
    let it = yielding(&tx, 0, 2).with_cost_hint(Duration::from_nanos(1));
    assert_eq!(engine.submit(it).unwrap(), Submitted::Queued);
    expect_each_once(&rx, 1);
    assert!(engine.shutdown(Shutdown::Drain).is_empty());
}

#[test]
fn workers_policy_never_uses_executors() {
    let engine = Engine::new(patient(Policy::Workers)).unwrap();
    let vcpu = FakeVcpu::idle();
    let mut exec = engine.register_executor("vcpu0", vcpu.clone());
    let (tx, rx) = reporting();
    for id in 0..500 {
        engine
            .submit(item(&tx, id).with_priority(Priority::ALL[id % 3]))
            .unwrap();
    }
    expect_each_once(&rx, 500);
    assert_eq!(exec.run_idle(Duration::from_secs(1)).items, 0);
    assert_eq!(vcpu.kicks(), 0);
    let stats = settled(&engine, 500);
    assert_eq!(stats.ran_at(Place::Worker).total(), 500);
    assert_eq!(stats.kicks(), (0, 0));
}

#[test]
fn idle_policy_kicks_exactly_one_idle_executor() {
    let engine = Engine::new(patient(Policy::Idle)).unwrap();
    let vcpus = [FakeVcpu::idle(), FakeVcpu::idle(), FakeVcpu::busy()];
    let mut execs: Vec<_> = vcpus
        .iter()
        .enumerate()
        .map(|(i, v)| engine.register_executor(format!("vcpu{i}"), v.clone()))
        .collect();
    // The two idle vCPUs' threads announce it.
    execs[0].announce_idle();
    execs[1].announce_idle();
    let (tx, rx) = reporting();
    engine.submit(item(&tx, 0)).unwrap();
    let kicked: Vec<usize> = vcpus.iter().map(FakeVcpu::kicks).collect();
    assert_eq!(kicked.iter().sum::<usize>(), 1, "kicks: {kicked:?}");
    assert_eq!(kicked[2], 0, "a busy vCPU was kicked");
    let who = kicked.iter().position(|&k| k == 1).unwrap();
    let report = execs[who].run_idle(Duration::from_secs(1));
    assert_eq!(report.items, 1);
    assert!(report.kicked);
    assert!(!report.work_remains);
    expect_each_once(&rx, 1);
    let stats = engine.stats();
    assert_eq!(stats.ran(Place::Executor, Priority::Normal), 1);
    assert_eq!(stats.ran_at(Place::Worker).total(), 0);
    assert_eq!(stats.kicks(), (1, 1));
    assert_eq!(stats.executors[who].calls, 1);
}

#[test]
fn a_kick_that_finds_nothing_is_counted_useless() {
    let engine = Engine::new(patient(Policy::Idle)).unwrap();
    let (a, b) = (FakeVcpu::idle(), FakeVcpu::busy());
    let mut exec_a = engine.register_executor("a", a.clone());
    let mut exec_b = engine.register_executor("b", b.clone());
    exec_a.announce_idle();
    let (tx, rx) = reporting();
    engine.submit(item(&tx, 0)).unwrap();
    assert_eq!((a.kicks(), b.kicks()), (1, 0));
    // b's thread happens to pass by first and takes the item.
    assert_eq!(exec_b.run_idle(Duration::from_secs(1)).items, 1);
    let late = exec_a.run_idle(Duration::from_secs(1));
    assert!(late.kicked);
    assert_eq!(late.items, 0);
    expect_each_once(&rx, 1);
    let stats = engine.stats();
    assert_eq!(stats.kicks(), (1, 0));
    assert_eq!(stats.executors[0].kicks_useful, 0);
}

#[test]
fn without_polling_normal_work_goes_to_a_worker_when_no_executor_is_idle() {
    let engine = Engine::new(Config {
        idle_poll: None,
        ..patient(Policy::Idle)
    })
    .unwrap();
    let vcpu = FakeVcpu::busy();
    let _exec = engine.register_executor("vcpu0", vcpu.clone());
    let (tx, rx) = reporting();
    for id in 0..100 {
        engine.submit(item(&tx, id)).unwrap();
    }
    expect_each_once(&rx, 100);
    assert_eq!(vcpu.kicks(), 0);
    assert_eq!(
        settled(&engine, 100).ran(Place::Worker, Priority::Normal),
        100
    );
}

#[test]
fn with_polling_normal_work_waits_for_a_vcpu_that_goes_idle_later() {
    let engine = Engine::new(patient(Policy::Idle)).unwrap();
    let vcpu = FakeVcpu::busy();
    let mut exec = engine.register_executor("vcpu0", vcpu.clone());
    let (tx, rx) = reporting();
    engine.submit(item(&tx, 0)).unwrap();
    // Nobody was idle at submit time, and one item asks for no worker: it waits.
    assert!(rx
        .recv_timeout(std::time::Duration::from_millis(50))
        .is_err());
    assert_eq!(vcpu.kicks(), 0);
    // The guest halts: the timekeeper's poll finds the vCPU and kicks it.
    vcpu.idle.store(true, std::sync::atomic::Ordering::SeqCst);
    let start = std::time::Instant::now();
    while vcpu.kicks() == 0 {
        assert!(
            start.elapsed() < common::PATIENCE,
            "the idle vCPU was never kicked"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let report = exec.run_idle(exec.budget());
    assert!(report.kicked);
    expect_each_once(&rx, 1);
    assert_eq!(
        settled(&engine, 1).ran(Place::Executor, Priority::Normal),
        1
    );
}

#[test]
fn with_polling_depth_still_wakes_workers() {
    let engine = Engine::new(patient(Policy::Idle)).unwrap();
    let _exec = engine.register_executor("vcpu0", FakeVcpu::busy());
    let (tx, rx) = reporting();
    for id in 0..100 {
        engine.submit(item(&tx, id)).unwrap();
    }
    // No executor ever idles and the deadline is an hour away: only the
    // depth can have brought workers, and they ran (nearly) everything.
    let mut got = 0;
    while rx
        .recv_timeout(std::time::Duration::from_millis(200))
        .is_ok()
    {
        got += 1;
    }
    assert!(
        got >= 100 - Config::default().items_per_worker,
        "only {got} ran"
    );
}

#[test]
fn work_a_serving_executors_own_thread_submits_is_claimed_without_a_kick() {
    let engine = Engine::new(patient(Policy::Idle)).unwrap();
    let vcpu = FakeVcpu::idle();
    let mut exec = engine.register_executor("vcpu0", vcpu.clone());
    // The vCPU thread offers to serve the notify it is about to dispatch.
    exec.announce_serving();
    let (tx, rx) = reporting();
    engine.submit(item(&tx, 0)).unwrap();
    assert!(
        exec.announce_busy(),
        "the submission did not claim the executor"
    );
    assert_eq!(exec.run_idle(Duration::from_secs(1)).items, 1);
    expect_each_once(&rx, 1);
    let stats = settled(&engine, 1);
    assert_eq!(vcpu.kicks(), 0);
    assert_eq!(stats.kicks(), (0, 0));
    assert_eq!(stats.ran(Place::Executor, Priority::Normal), 1);

    // Submitted from another thread, the same claim is a kick.
    exec.announce_serving();
    let engine = std::sync::Arc::new(engine);
    let other = engine.clone();
    let tx2 = tx.clone();
    std::thread::spawn(move || other.submit(item(&tx2, 0)).unwrap())
        .join()
        .unwrap();
    assert!(exec.announce_busy());
    assert_eq!(vcpu.kicks(), 1);
    assert_eq!(exec.run_idle(Duration::from_secs(1)).items, 1);
    expect_each_once(&rx, 1);
}

#[test]
fn urgent_work_wakes_a_worker_even_with_an_idle_executor() {
    let engine = Engine::new(patient(Policy::Idle)).unwrap();
    let vcpu = FakeVcpu::idle();
    let exec = engine.register_executor("vcpu0", vcpu.clone());
    exec.announce_idle();
    let (tx, rx) = reporting();
    engine
        .submit(item(&tx, 0).with_priority(Priority::Urgent))
        .unwrap();
    expect_each_once(&rx, 1);
    assert_eq!(vcpu.kicks(), 0);
    assert_eq!(settled(&engine, 1).ran(Place::Worker, Priority::Urgent), 1);
}

#[test]
fn normal_deadline_hands_work_to_a_worker_when_the_kicked_vcpu_never_comes() {
    // The vCPU announces itself idle, is kicked, but never calls run_idle.
    let engine = Engine::new(Config {
        normal_deadline: Duration::from_millis(20),
        ..patient(Policy::Idle)
    })
    .unwrap();
    let vcpu = FakeVcpu::idle();
    let exec = engine.register_executor("vcpu0", vcpu.clone());
    exec.announce_idle();
    let (tx, rx) = reporting();
    engine.submit(item(&tx, 0)).unwrap();
    expect_each_once(&rx, 1);
    let stats = settled(&engine, 1);
    assert_eq!(vcpu.kicks(), 1);
    assert_eq!(stats.ran(Place::Worker, Priority::Normal), 1);
    assert_eq!(stats.kicks(), (1, 0));
    assert!(
        stats
            .workers
            .iter()
            .map(|w| w.deadline_wakeups)
            .sum::<u64>()
            >= 1
    );
}

#[test]
fn idle_work_runs_on_a_worker_after_the_idle_deadline_when_the_guest_never_idles() {
    let engine = Engine::new(Config {
        normal_deadline: Duration::from_millis(5),
        idle_deadline: Duration::from_millis(30),
        ..patient(Policy::Idle)
    })
    .unwrap();
    let vcpu = FakeVcpu::busy();
    let _exec = engine.register_executor("vcpu0", vcpu.clone());
    let (tx, rx) = reporting();
    engine
        .submit(item(&tx, 0).with_priority(Priority::Idle))
        .unwrap();
    expect_each_once(&rx, 1);
    assert_eq!(vcpu.kicks(), 0);
    assert_eq!(settled(&engine, 1).ran(Place::Worker, Priority::Idle), 1);
}

#[test]
fn idle_work_waits_for_its_deadline_on_a_manual_clock() {
    let clock = ManualClock::new();
    let config = Config {
        normal_deadline: Duration::from_millis(1),
        idle_deadline: Duration::from_millis(100),
        ..patient(Policy::Idle)
    };
    let engine = Engine::with_clock(config, clock.clock()).unwrap();
    let (tx, rx) = reporting();
    engine
        .submit(item(&tx, 0).with_priority(Priority::Idle))
        .unwrap();
    clock.advance(Duration::from_millis(99));
    assert!(!engine.check_deadlines());
    assert_eq!(engine.stats().pending.idle, 1);
    clock.advance(Duration::from_millis(1));
    assert!(engine.check_deadlines());
    expect_each_once(&rx, 1);
    assert_eq!(settled(&engine, 1).ran(Place::Worker, Priority::Idle), 1);
}

#[test]
fn idle_work_goes_to_an_idle_executor() {
    let engine = Engine::new(patient(Policy::Idle)).unwrap();
    let vcpu = FakeVcpu::idle();
    let mut exec = engine.register_executor("vcpu0", vcpu.clone());
    exec.announce_idle();
    let (tx, rx) = reporting();
    engine
        .submit(yielding(&tx, 0, 4).with_priority(Priority::Idle))
        .unwrap();
    assert_eq!(vcpu.kicks(), 1);
    let report = exec.run_idle(Duration::from_secs(1));
    assert_eq!(report.items, 1);
    expect_each_once(&rx, 1);
    let stats = engine.stats();
    assert_eq!(stats.ran(Place::Executor, Priority::Idle), 1);
    assert_eq!(stats.executors[0].run.yields, 4);
}

#[test]
fn an_executor_respects_its_budget_to_within_one_item() {
    let clock = ManualClock::new();
    let config = Config {
        items_per_worker: 1000,
        ..patient(Policy::Idle)
    };
    let engine = Engine::with_clock(config, clock.clock()).unwrap();
    let mut exec = engine.register_executor("vcpu0", FakeVcpu::idle());
    // Announced idle: the first submit claims it, and with it at work the
    // depth asks for no worker (which would otherwise share the items).
    exec.announce_idle();
    let ran = Arc::new(AtomicUsize::new(0));
    for _ in 0..10 {
        let (clock, ran) = (clock.clone(), Arc::clone(&ran));
        engine
            .submit(Item::from_fn(move || {
                clock.advance(Duration::from_micros(100));
                ran.fetch_add(1, Ordering::SeqCst);
            }))
            .unwrap();
    }
    let budget = Duration::from_micros(250);
    let report = exec.run_idle(budget);
    assert_eq!(report.items, 3);
    assert_eq!(report.busy, Duration::from_micros(300));
    assert!(report.busy < budget + Duration::from_micros(100));
    assert!(report.work_remains);
    assert!(engine.shutdown(Shutdown::Drain).is_empty());
    assert_eq!(ran.load(Ordering::SeqCst), 10);
}

#[test]
fn yielding_items_are_time_sliced_on_workers() {
    let engine = Engine::new(patient(Policy::Workers)).unwrap();
    let (tx, rx) = reporting();
    for id in 0..20 {
        engine.submit(yielding(&tx, id, 5)).unwrap();
    }
    expect_each_once(&rx, 20);
    let stats = settled(&engine, 20);
    let yields: u64 = stats.workers.iter().map(|w| w.run.yields).sum();
    assert_eq!(yields, 100);
    assert_eq!(stats.ran_at(Place::Worker).total(), 20);
}

#[test]
fn a_panicking_item_is_counted_and_kills_nothing() {
    let engine = Engine::new(patient(Policy::Idle)).unwrap();
    let mut exec = engine.register_executor("vcpu0", FakeVcpu::idle());
    exec.announce_idle();
    engine
        .submit(Item::from_fn(|| panic!("bad item on an executor")))
        .unwrap();
    assert_eq!(exec.run_idle(Duration::from_secs(1)).items, 1);
    let (tx, rx) = reporting();
    let worker_only = Priority::Urgent;
    engine
        .submit(Item::from_fn(|| panic!("bad item on a worker")).with_priority(worker_only))
        .unwrap();
    engine
        .submit(item(&tx, 0).with_priority(worker_only))
        .unwrap();
    expect_each_once(&rx, 1);
    engine.shutdown(Shutdown::Drain);
}

#[test]
fn panics_are_in_the_stats() {
    let engine = Engine::new(patient(Policy::Inline)).unwrap();
    engine
        .submit(Item::from_fn(|| panic!("bad inline item")))
        .unwrap();
    let stats = engine.stats();
    assert_eq!(stats.panics(), 1);
    assert_eq!(stats.inline.items, 1);
}

#[test]
fn shutdown_return_hands_back_queued_items() {
    let engine = Engine::new(patient(Policy::Idle)).unwrap();
    let (tx, rx) = reporting();
    for id in 0..5 {
        engine
            .submit(item(&tx, id).with_priority(Priority::Idle))
            .unwrap();
    }
    let left = engine.shutdown(Shutdown::Return);
    assert_eq!(left.len(), 5);
    assert!(rx.try_recv().is_err());
    left.into_iter().for_each(Item::run_to_completion);
    expect_each_once(&rx, 5);
}

#[test]
fn shutdown_drain_runs_queued_items_and_later_submits_come_back() {
    let engine = Engine::new(patient(Policy::Idle)).unwrap();
    let submitter = engine.submitter();
    let (tx, rx) = reporting();
    for id in 0..5 {
        submitter
            .submit(yielding(&tx, id, 2).with_priority(Priority::Idle))
            .unwrap();
    }
    assert!(engine.shutdown(Shutdown::Drain).is_empty());
    expect_each_once(&rx, 5);
    let err = submitter.submit(item(&tx, 9)).unwrap_err();
    err.into_item().run_to_completion();
    assert_eq!(rx.recv_timeout(PATIENCE).unwrap(), 9);
}

#[test]
fn dropping_the_engine_drains() {
    let (tx, rx) = reporting();
    {
        let engine = Engine::new(patient(Policy::Idle)).unwrap();
        for id in 0..3 {
            engine
                .submit(item(&tx, id).with_priority(Priority::Idle))
                .unwrap();
        }
    }
    expect_each_once(&rx, 3);
}

#[test]
fn an_executor_run_after_shutdown_does_nothing() {
    let engine = Engine::new(patient(Policy::Idle)).unwrap();
    let mut exec = engine.register_executor("vcpu0", FakeVcpu::idle());
    engine.shutdown(Shutdown::Drain);
    assert_eq!(exec.run_idle(Duration::from_secs(1)), Default::default());
}

#[test]
fn one_item_wakes_exactly_one_worker() {
    let engine = Engine::new(Config {
        max_workers: 4,
        items_per_worker: 1000,
        ..patient(Policy::Workers)
    })
    .unwrap();
    let (tx, rx) = reporting();
    engine.submit(item(&tx, 0)).unwrap();
    expect_each_once(&rx, 1);
    let woken: u64 = settled(&engine, 1).workers.iter().map(|w| w.wakeups).sum();
    assert_eq!(woken, 1);
}

#[test]
fn depth_wakes_more_workers() {
    // Items that only finish once four run at once: they need four awake
    // workers. With items_per_worker = 1 a hand is added whenever the queue
    // holds more items than there are hands at work, so eight such items
    // must bring up all four workers.
    let engine = Engine::new(Config {
        max_workers: 4,
        items_per_worker: 1,
        ..patient(Policy::Workers)
    })
    .unwrap();
    let started = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = reporting();
    for id in 0..8 {
        let (started, tx) = (Arc::clone(&started), tx.clone());
        engine
            .submit(Item::from_fn(move || {
                started.fetch_add(1, Ordering::SeqCst);
                let t = Instant::now();
                while started.load(Ordering::SeqCst) < 4 && t.elapsed() < PATIENCE {
                    // Bounded by PATIENCE only so a bug fails instead of hanging.
                    std::thread::yield_now();
                }
                let _ = tx.send(id);
            }))
            .unwrap();
    }
    expect_each_once(&rx, 8);
    assert!(started.load(Ordering::SeqCst) == 8);
    let busy_workers = settled(&engine, 8)
        .workers
        .iter()
        .filter(|w| w.run.items > 0)
        .count();
    assert_eq!(busy_workers, 4);
}

#[test]
fn an_item_stuck_behind_a_busy_worker_gets_another_after_the_deadline() {
    // One worker is busy in a long item; the queue is shallow (1 item <
    // items_per_worker), so depth alone adds no hand: age must.
    let engine = Engine::new(Config {
        max_workers: 2,
        items_per_worker: 4,
        normal_deadline: Duration::from_millis(10),
        ..patient(Policy::Workers)
    })
    .unwrap();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let (tx, rx) = reporting();
    let tx0 = tx.clone();
    engine
        .submit(Item::from_fn(move || {
            let _ = release_rx.recv_timeout(PATIENCE);
            let _ = tx0.send(0);
        }))
        .unwrap();
    engine.submit(item(&tx, 1)).unwrap();
    assert_eq!(
        rx.recv_timeout(PATIENCE),
        Ok(1),
        "the second item waited for the first"
    );
    release_tx.send(()).unwrap();
    assert_eq!(rx.recv_timeout(PATIENCE), Ok(0));
    let stats = settled(&engine, 2);
    assert!(
        stats
            .workers
            .iter()
            .map(|w| w.deadline_wakeups)
            .sum::<u64>()
            >= 1
    );
}

#[test]
fn the_cpu_cap_bounds_threads_running_work() {
    for cap in [1, 2] {
        let engine = Engine::new(Config {
            max_workers: 4,
            items_per_worker: 1,
            cpu_cap: Some(cap),
            ..patient(Policy::Workers)
        })
        .unwrap();
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = reporting();
        for id in 0..200 {
            let (running, peak, tx) = (Arc::clone(&running), Arc::clone(&peak), tx.clone());
            engine
                .submit(Item::from_fn(move || {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    std::thread::yield_now();
                    running.fetch_sub(1, Ordering::SeqCst);
                    let _ = tx.send(id);
                }))
                .unwrap();
        }
        expect_each_once(&rx, 200);
        assert!(peak.load(Ordering::SeqCst) <= cap);
    }
}

#[test]
fn the_cpu_cap_does_not_apply_to_executors() {
    let engine = Engine::new(Config {
        cpu_cap: Some(1),
        inline_threshold: Duration::from_micros(1),
        ..patient(Policy::Idle)
    })
    .unwrap();
    let mut exec = engine.register_executor("vcpu0", FakeVcpu::idle());
    let (tx, rx) = reporting();
    let cheap = item(&tx, 0).with_cost_hint(Duration::ZERO);
    assert_eq!(exec.submit(cheap).unwrap(), Submitted::Inline);
    engine.submit(item(&tx, 1)).unwrap();
    assert_eq!(exec.run_idle(Duration::from_secs(1)).items, 1);
    expect_each_once(&rx, 2);
}

#[test]
fn dropping_a_kicked_executor_finds_the_work_another_hand() {
    let engine = Engine::new(patient(Policy::Idle)).unwrap();
    let vcpu = FakeVcpu::idle();
    let exec = engine.register_executor("vcpu0", vcpu.clone());
    exec.announce_idle();
    let (tx, rx) = reporting();
    engine.submit(item(&tx, 0)).unwrap();
    assert_eq!(vcpu.kicks(), 1);
    drop(exec);
    expect_each_once(&rx, 1);
    assert_eq!(settled(&engine, 1).ran(Place::Worker, Priority::Normal), 1);
}

#[test]
fn no_lost_wakeups_under_repeated_sleep_and_submit() {
    let engine = Engine::new(Config {
        max_workers: 1,
        ..patient(Policy::Workers)
    })
    .unwrap();
    let (tx, rx) = reporting();
    for id in 0..3000 {
        engine.submit(item(&tx, id)).unwrap();
        assert_eq!(rx.recv_timeout(PATIENCE), Ok(id), "item {id} was lost");
    }
}

#[test]
fn many_submitters_every_item_runs_once() {
    for policy in Policy::ALL {
        let engine = Engine::new(Config {
            max_workers: 2,
            normal_deadline: Duration::from_micros(200),
            idle_deadline: Duration::from_millis(2),
            ..Config {
                policy,
                ..Config::default()
            }
        })
        .unwrap();
        let vcpu = FakeVcpu::idle();
        let mut exec = engine.register_executor("vcpu0", vcpu.clone());
        let (tx, rx) = reporting();
        let per = 2000;
        std::thread::scope(|s| {
            for t in 0..2 {
                let (sub, tx) = (engine.submitter(), tx.clone());
                s.spawn(move || {
                    for i in 0..per {
                        let id = t * per + i;
                        let it = match id % 5 {
                            0 => yielding(&tx, id, 2),
                            _ => item(&tx, id),
                        };
                        sub.submit(it.with_priority(Priority::ALL[id % 3])).unwrap();
                    }
                });
            }
            s.spawn(|| {
                for _ in 0..200 {
                    exec.run_idle(Duration::from_micros(50));
                    std::thread::yield_now();
                }
            });
        });
        assert!(engine.shutdown(Shutdown::Drain).is_empty());
        expect_each_once(&rx, 2 * per);
    }
}

#[test]
fn stats_serialise_to_json() {
    let engine = Engine::new(Config {
        idle_poll: None,
        ..patient(Policy::Idle)
    })
    .unwrap();
    let _exec = engine.register_executor("vcpu0", FakeVcpu::busy());
    let (tx, rx) = reporting();
    engine.submit(item(&tx, 0)).unwrap();
    expect_each_once(&rx, 1);
    let json = serde_json::to_value(settled(&engine, 1)).unwrap();
    assert_eq!(json["policy"], "idle");
    assert_eq!(json["executors"][0]["name"], "vcpu0");
    assert!(json["workers"][0]["wait"]["p99_ns"].is_u64());
    assert!(json["wait"]["count"].as_u64().unwrap() >= 1);
}

#[test]
fn closures_can_be_work() {
    let engine = Engine::new(patient(Policy::Workers)).unwrap();
    let (tx, rx) = reporting();
    let mut chunks = 0;
    let tx2 = tx.clone();
    engine
        .submit(Item::new(move |cx: &idlework::Context| {
            assert_eq!(cx.place(), Place::Worker);
            chunks += 1;
            if chunks < 3 {
                return Step::Yield;
            }
            let _ = tx2.send(0);
            Step::Done
        }))
        .unwrap();
    expect_each_once(&rx, 1);
    drop(tx);
}

#[test]
fn with_a_zero_cap_overdue_work_is_forced_onto_a_busy_vcpu() {
    let engine = Engine::new(Config {
        cpu_cap: Some(0),
        normal_deadline: std::time::Duration::from_millis(5),
        ..Config::default()
    })
    .unwrap();
    // The guest never idles, and no worker may run: only a forced kick helps.
    let vcpu = FakeVcpu::busy();
    let mut exec = engine.register_executor("vcpu0", vcpu.clone());
    let (tx, rx) = reporting();
    engine.submit(item(&tx, 0)).unwrap();
    let start = std::time::Instant::now();
    while vcpu.kicks() == 0 {
        assert!(
            start.elapsed() < common::PATIENCE,
            "overdue work was never forced"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert!(exec.forced(), "the kick must say it is forced");
    let report = exec.run_idle(exec.budget());
    assert_eq!(report.items, 1);
    expect_each_once(&rx, 1);
    let stats = settled(&engine, 1);
    assert_eq!(stats.ran(Place::Executor, Priority::Normal), 1);
    assert_eq!(stats.ran_at(Place::Worker).total(), 0);
}

#[test]
fn a_zero_cap_needs_the_idle_policy() {
    for policy in [Policy::Workers, Policy::Inline] {
        let config = Config {
            cpu_cap: Some(0),
            policy,
            ..Config::default()
        };
        assert!(config.validate().is_err(), "{policy:?}");
    }
}

#[test]
fn an_announced_executor_is_claimed_without_any_probe() {
    let engine = Engine::new(patient(Policy::Idle)).unwrap();
    let (a, b) = (FakeVcpu::busy(), FakeVcpu::busy());
    let mut exec_a = engine.register_executor("a", a.clone());
    let exec_b = engine.register_executor("b", b.clone());
    exec_b.announce_idle();
    let (tx, rx) = reporting();
    engine.submit(item(&tx, 0)).unwrap();
    assert_eq!(
        (a.kicks(), b.kicks()),
        (0, 1),
        "the announced one is claimed"
    );
    // A second item finds nobody announced (the claim cleared it) and b on it.
    engine.submit(item(&tx, 1)).unwrap();
    assert_eq!(b.kicks(), 1);
    assert_eq!(
        a.probes.load(Ordering::SeqCst) + b.probes.load(Ordering::SeqCst),
        0
    );
    drop(exec_b); // retires while kicked: its work must stay findable
    exec_a.announce_idle();
    assert!(
        exec_a.work_queued(),
        "the re-check after announcing sees it"
    );
    assert_eq!(exec_a.run_idle(Duration::from_secs(1)).items, 2);
    expect_each_once(&rx, 2);
}

#[test]
fn announce_busy_says_whether_a_claim_came_first() {
    let engine = Engine::new(patient(Policy::Idle)).unwrap();
    let vcpu = FakeVcpu::busy();
    let mut exec = engine.register_executor("vcpu0", vcpu.clone());
    assert!(!exec.announce_busy(), "never announced");
    exec.announce_idle();
    assert!(!exec.announce_busy(), "withdrawn before any claim");
    let (tx, rx) = reporting();
    engine.submit(item(&tx, 0)).unwrap();
    assert_eq!(vcpu.kicks(), 0, "a withdrawn executor is not claimed");
    exec.announce_idle();
    assert!(
        exec.work_queued(),
        "the re-check after announcing sees the item"
    );
    engine.submit(item(&tx, 1)).unwrap();
    assert_eq!(vcpu.kicks(), 1);
    assert!(
        exec.announce_busy(),
        "claimed: the thread must run the work"
    );
    assert_eq!(exec.run_idle(Duration::from_secs(1)).items, 2);
    expect_each_once(&rx, 2);
}

#[test]
fn pickup_latency_is_counted_for_claims_and_for_halts_seen_by_the_thread() {
    let engine = Engine::new(patient(Policy::Idle)).unwrap();
    let mut exec = engine.register_executor("vcpu0", FakeVcpu::busy());
    let (tx, rx) = reporting();
    // A claim: announced, then work arrives.
    exec.announce_idle();
    engine.submit(item(&tx, 0)).unwrap();
    assert!(exec.run_idle(Duration::from_secs(1)).kicked);
    // The thread's own halt: work was queued, the thread saw the HLT.
    engine.submit(item(&tx, 1)).unwrap();
    let halted_at = Instant::now();
    assert!(exec.work_queued());
    assert_eq!(
        exec.run_idle_since(Duration::from_secs(1), halted_at).items,
        1
    );
    // A run that nobody asked for and no halt is not a pickup.
    engine.submit(item(&tx, 2)).unwrap();
    assert_eq!(exec.run_idle(Duration::from_secs(1)).items, 1);
    expect_each_once(&rx, 3);
    let stats = engine.stats();
    assert_eq!(stats.executors[0].pickup.count, 2);
    assert_eq!(stats.pickup.count, 2);
    assert_eq!(engine.pickup_histogram().len(), 2);
}

#[test]
fn the_submit_path_never_probes_the_timekeeper_does() {
    // In-kernel irqchip: the guest is idle but the thread cannot say so.
    let engine = Engine::new(patient(Policy::Idle)).unwrap();
    let vcpu = FakeVcpu::idle();
    let mut exec = engine.register_executor("vcpu0", vcpu.clone());
    let (tx, rx) = reporting();
    engine.submit(item(&tx, 0)).unwrap();
    let start = Instant::now();
    while vcpu.kicks() == 0 {
        assert!(
            start.elapsed() < PATIENCE,
            "the probe never found the idle vCPU"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(exec.run_idle(exec.budget()).kicked);
    expect_each_once(&rx, 1);
    assert!(vcpu.probes.load(Ordering::SeqCst) >= 1);
    assert_eq!(
        vcpu.foreign_probes.load(Ordering::SeqCst),
        0,
        "a probe ran outside the engine's workers"
    );
    assert_eq!(
        engine.stats().pickup.count,
        1,
        "the probe's claim is a pickup"
    );
}

#[test]
fn an_executor_that_announces_itself_is_never_probed() {
    // Under a userspace irqchip the vCPU thread sees its guest's HLT: there
    // is nothing to ask it. Its probe would even say idle (if the engine
    // asked, it would kick); the item waits for its deadline and a worker.
    let engine = Engine::new(Config {
        normal_deadline: Duration::from_millis(20),
        ..patient(Policy::Idle)
    })
    .unwrap();
    let vcpu = FakeVcpu {
        announces_itself: true,
        ..FakeVcpu::idle()
    };
    let _exec = engine.register_executor("vcpu0", vcpu.clone());
    let (tx, rx) = reporting();
    engine.submit(item(&tx, 0)).unwrap();
    expect_each_once(&rx, 1);
    assert_eq!(vcpu.probes.load(Ordering::SeqCst), 0, "probed");
    assert_eq!(vcpu.kicks(), 0, "kicked without announcing");
    // The worker publishes its counts after the item reported.
    assert_eq!(settled(&engine, 1).ran(Place::Worker, Priority::Normal), 1);
}

#[test]
fn an_urgent_item_queued_while_an_executor_holds_a_batch_runs_before_the_batch() {
    // Only the executor runs work (a CPU cap of 0). It takes item 0 alone
    // (its pace is unknown), then items 1 and 2 as one batch; item 1
    // submits an urgent item, which must run before item 2.
    let engine = Engine::new(Config {
        cpu_cap: Some(0),
        items_per_worker: 100,
        ..patient(Policy::Idle)
    })
    .unwrap();
    let mut exec = engine.register_executor("vcpu0", FakeVcpu::busy());
    let order = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = |id: &'static str| {
        let order = Arc::clone(&order);
        move || order.lock().unwrap().push(id)
    };
    let sub = engine.submitter();
    let urgent = log("urgent");
    engine.submit(Item::from_fn(log("0"))).unwrap();
    let first = log("1");
    engine
        .submit(Item::from_fn(move || {
            first();
            let it = Item::from_fn(urgent).with_priority(Priority::Urgent);
            sub.submit(it).unwrap();
        }))
        .unwrap();
    engine.submit(Item::from_fn(log("2"))).unwrap();
    assert_eq!(exec.run_idle(HOUR).items, 4);
    assert_eq!(*order.lock().unwrap(), ["0", "1", "urgent", "2"]);
}
