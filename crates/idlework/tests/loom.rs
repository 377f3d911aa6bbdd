//! loom model checks of the engine's concurrent core.
//!
//! Run with (seconds on two cores):
//!
//! ```text
//! RUSTFLAGS="--cfg loom" cargo test -p idlework --release --test loom
//! ```
//!
//! The preemption bound defaults to 2; `LOOM_MAX_PREEMPTIONS=3` explores
//! deeper (about 45 s on an otherwise idle two-core machine). Under loom the engine's queue is a mutex-guarded deque (the lock-free
//! queue is not loom-aware), so what is checked is the protocol around it:
//! sleeping and waking, kicks, deadlines, budgets and shutdown.
#![cfg(loom)]

use idlework::{
    Config, Engine, IdleHooks, Item, ManualClock, Place, Policy, Priority, Shutdown, Step,
};
use loom::sync::atomic::{AtomicBool, Ordering};
use loom::sync::{Arc, Condvar, Mutex};
use loom::thread;
use std::time::Duration;

const HOUR: Duration = Duration::from_secs(3600);

fn check(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(2);
    }
    builder.check(f);
}

fn config(policy: Policy) -> Config {
    Config {
        policy,
        max_workers: 1,
        items_per_worker: 1,
        normal_deadline: HOUR,
        idle_deadline: HOUR,
        ..Config::default()
    }
}

/// Counts runs per item and lets a thread block until a number of items
/// finished. If an item is never run, that thread blocks for ever and loom
/// reports the deadlock: a lost wake-up fails the check.
#[derive(Clone, Default)]
struct Done(Arc<(Mutex<Vec<usize>>, Condvar)>);

impl Done {
    fn item(&self, id: usize) -> Item {
        let done = self.clone();
        Item::from_fn(move || done.record(id))
    }

    fn record(&self, id: usize) {
        let (runs, cv) = &*self.0;
        runs.lock().unwrap().push(id);
        cv.notify_all();
    }

    fn wait_for(&self, n: usize) {
        let (runs, cv) = &*self.0;
        let mut r = runs.lock().unwrap();
        while r.len() < n {
            r = cv.wait(r).unwrap();
        }
    }

    fn runs(&self) -> Vec<usize> {
        let mut r = self.in_order();
        r.sort_unstable();
        r
    }

    /// Ids in the order they finished.
    fn in_order(&self) -> Vec<usize> {
        self.0 .0.lock().unwrap().clone()
    }
}

/// A vCPU whose kick wakes the test's executor thread.
#[derive(Clone)]
struct Vcpu {
    idle: bool,
    kicked: Arc<(Mutex<bool>, Condvar)>,
}

impl Vcpu {
    fn new(idle: bool) -> Self {
        Vcpu {
            idle,
            kicked: Arc::new((Mutex::new(false), Condvar::new())),
        }
    }

    /// Blocks until kicked or `stop` is set; returns whether kicked.
    fn wait_kick(&self, stop: &AtomicBool) -> bool {
        let (k, cv) = &*self.kicked;
        let mut k = k.lock().unwrap();
        while !*k && !stop.load(Ordering::SeqCst) {
            k = cv.wait(k).unwrap();
        }
        std::mem::take(&mut *k)
    }

    fn release(&self, stop: &AtomicBool) {
        stop.store(true, Ordering::SeqCst);
        let (k, cv) = &*self.kicked;
        let _g = k.lock().unwrap();
        cv.notify_all();
    }
}

impl IdleHooks for Vcpu {
    fn probe_idle(&self) -> bool {
        self.idle
    }

    fn probes(&self) -> bool {
        true
    }

    fn kick(&self) {
        let (k, cv) = &*self.kicked;
        *k.lock().unwrap() = true;
        cv.notify_all();
    }
}

#[test]
fn an_item_submitted_while_the_worker_falls_asleep_runs_once() {
    check(|| {
        let engine = Engine::new(config(Policy::Workers)).unwrap();
        let done = Done::default();
        engine.submit(done.item(0)).unwrap();
        done.wait_for(1);
        assert!(engine.shutdown(Shutdown::Drain).is_empty());
        assert_eq!(done.runs(), vec![0]);
    });
}

#[test]
fn two_submitters_each_item_runs_exactly_once() {
    check(|| {
        let engine = Engine::new(config(Policy::Workers)).unwrap();
        let done = Done::default();
        let (sub, d) = (engine.submitter(), done.clone());
        let t = thread::spawn(move || sub.submit(d.item(1)).map(|_| ()).unwrap());
        engine.submit(done.item(0)).unwrap();
        t.join().unwrap();
        done.wait_for(2);
        assert!(engine.shutdown(Shutdown::Drain).is_empty());
        assert_eq!(done.runs(), vec![0, 1]);
    });
}

#[test]
fn a_kicked_executor_or_a_worker_runs_the_item_once() {
    check(|| {
        let engine = Engine::new(config(Policy::Idle)).unwrap();
        let vcpu = Vcpu::new(true);
        let mut exec = engine.register_executor("vcpu0", vcpu.clone());
        let stop = Arc::new(AtomicBool::new(false));
        let (v, s) = (vcpu.clone(), Arc::clone(&stop));
        let vcpu_thread = thread::spawn(move || {
            if v.wait_kick(&s) {
                exec.run_idle(HOUR);
            }
            exec
        });
        let done = Done::default();
        engine.submit(done.item(0)).unwrap();
        done.wait_for(1);
        vcpu.release(&stop);
        let exec = vcpu_thread.join().unwrap();
        let stats = engine.stats();
        drop(exec);
        assert!(engine.shutdown(Shutdown::Drain).is_empty());
        assert_eq!(done.runs(), vec![0]);
        let (sent, useful) = stats.kicks();
        assert!(sent <= 1 && useful <= sent);
    });
}

#[test]
fn the_deadline_fallback_runs_idle_work_when_no_executor_is_ever_idle() {
    check(|| {
        let clock = ManualClock::new();
        let config = Config {
            idle_deadline: Duration::from_millis(10),
            normal_deadline: Duration::from_millis(1),
            ..config(Policy::Idle)
        };
        let engine = Engine::with_clock(config, clock.clock()).unwrap();
        let _exec = engine.register_executor("vcpu0", Vcpu::new(false));
        let done = Done::default();
        engine
            .submit(done.item(0).with_priority(Priority::Idle))
            .unwrap();
        clock.advance(Duration::from_millis(10));
        engine.check_deadlines();
        done.wait_for(1);
        let stats = engine.stats();
        drop(_exec);
        assert!(engine.shutdown(Shutdown::Drain).is_empty());
        assert_eq!(done.runs(), vec![0]);
        assert_eq!(stats.kicks(), (0, 0));
        let _ = stats.ran(Place::Worker, Priority::Idle);
    });
}

#[test]
fn an_executor_budget_is_respected_within_one_item() {
    check(|| {
        let clock = ManualClock::new();
        let config = Config {
            items_per_worker: 100,
            ..config(Policy::Idle)
        };
        let engine = Engine::with_clock(config, clock.clock()).unwrap();
        let mut exec = engine.register_executor("vcpu0", Vcpu::new(false));
        let sub = engine.submitter();
        let c = clock.clone();
        let submitter = thread::spawn(move || {
            for _ in 0..3 {
                let c = c.clone();
                // Idle work: only the executor may take it (the worker waits
                // for a deadline that never comes), so only it moves the clock.
                let it = Item::new(move |_: &idlework::Context| {
                    c.advance(Duration::from_micros(10));
                    Step::Done
                })
                .with_priority(Priority::Idle);
                sub.submit(it).unwrap();
            }
        });
        let report = exec.run_idle(Duration::from_micros(15));
        assert!(report.items <= 2, "{report:?}");
        assert!(report.busy <= Duration::from_micros(25), "{report:?}");
        submitter.join().unwrap();
        drop(exec);
        assert!(engine.shutdown(Shutdown::Drain).is_empty());
    });
}

#[test]
fn shutdown_return_accounts_for_every_item() {
    check(|| {
        let engine = Engine::new(config(Policy::Idle)).unwrap();
        let done = Done::default();
        let (sub, d) = (engine.submitter(), done.clone());
        let t = thread::spawn(move || {
            (0..2)
                .filter_map(|id| {
                    let it = d.item(id).with_priority(Priority::Idle);
                    sub.submit(it).err().map(|e| e.into_item())
                })
                .count()
        });
        let returned = engine.shutdown(Shutdown::Return);
        let rejected = t.join().unwrap();
        // Young idle work never ran; every item is either back or refused.
        assert!(done.runs().is_empty());
        assert_eq!(returned.len() + rejected, 2);
    });
}

#[test]
fn shutdown_drain_runs_or_refuses_every_item() {
    check(|| {
        let engine = Engine::new(config(Policy::Idle)).unwrap();
        let done = Done::default();
        let (sub, d) = (engine.submitter(), done.clone());
        let t = thread::spawn(move || (0..2).filter(|&id| sub.submit(d.item(id)).is_err()).count());
        assert!(engine.shutdown(Shutdown::Drain).is_empty());
        let refused = t.join().unwrap();
        assert_eq!(done.runs().len() + refused, 2);
        let runs = done.runs();
        let mut dedup = runs.clone();
        dedup.dedup();
        assert_eq!(runs, dedup, "an item ran twice");
    });
}

#[test]
fn an_item_submitted_as_an_executor_finishes_is_not_stranded() {
    // The submitter may see the executor still running and add no hand;
    // the executor must then see the item when it finishes and find it one.
    check(|| {
        let engine = Engine::new(config(Policy::Idle)).unwrap();
        let mut exec = engine.register_executor("vcpu0", Vcpu::new(false));
        let vcpu_thread = thread::spawn(move || {
            exec.run_idle(HOUR);
            exec
        });
        let done = Done::default();
        engine.submit(done.item(0)).unwrap();
        done.wait_for(1);
        drop(vcpu_thread.join().unwrap());
        assert!(engine.shutdown(Shutdown::Drain).is_empty());
        assert_eq!(done.runs(), vec![0]);
    });
}

#[test]
fn a_yielding_item_finishes_exactly_once() {
    check(|| {
        let engine = Engine::new(config(Policy::Idle)).unwrap();
        let mut exec = engine.register_executor("vcpu0", Vcpu::new(false));
        let vcpu_thread = thread::spawn(move || {
            exec.run_idle(HOUR);
            exec
        });
        let done = Done::default();
        let d = done.clone();
        let mut steps = 0;
        let it = Item::new(move |_: &idlework::Context| {
            steps += 1;
            if steps < 2 {
                return Step::Yield;
            }
            d.record(steps);
            Step::Done
        });
        engine.submit(it).unwrap();
        done.wait_for(1);
        drop(vcpu_thread.join().unwrap());
        assert!(engine.shutdown(Shutdown::Drain).is_empty());
        assert_eq!(done.runs(), vec![2]);
    });
}

/// Only executors may run work (a CPU cap of 0), so an item reaches a hand
/// only through the announce/claim protocol: a lost wake-up deadlocks.
fn executors_only() -> Config {
    Config {
        cpu_cap: Some(0),
        ..config(Policy::Idle)
    }
}

#[test]
fn an_item_submitted_while_an_executor_announces_idle_is_picked_up() {
    check(|| {
        let engine = Engine::new(executors_only()).unwrap();
        let vcpu = Vcpu::new(false);
        let mut exec = engine.register_executor("vcpu0", vcpu.clone());
        let stop = Arc::new(AtomicBool::new(false));
        let (v, s) = (vcpu.clone(), Arc::clone(&stop));
        let vcpu_thread = thread::spawn(move || {
            // The protocol: announce, re-check, wait.
            exec.announce_idle();
            if exec.work_queued() || v.wait_kick(&s) {
                exec.run_idle(HOUR);
            }
            exec
        });
        let done = Done::default();
        engine.submit(done.item(0)).unwrap();
        done.wait_for(1);
        vcpu.release(&stop);
        drop(vcpu_thread.join().unwrap());
        assert!(engine.shutdown(Shutdown::Drain).is_empty());
        assert_eq!(done.runs(), vec![0]);
    });
}

#[test]
fn an_executor_that_withdraws_its_announcement_loses_no_claim() {
    check(|| {
        let engine = Engine::new(executors_only()).unwrap();
        let vcpu = Vcpu::new(false);
        let mut exec = engine.register_executor("vcpu0", vcpu.clone());
        let stop = Arc::new(AtomicBool::new(false));
        let (v, s) = (vcpu.clone(), Arc::clone(&stop));
        let vcpu_thread = thread::spawn(move || {
            exec.announce_idle();
            // An interrupt ends the wait: back to the guest unless claimed.
            if exec.announce_busy() {
                exec.run_idle(HOUR);
            }
            // The guest halts again.
            exec.announce_idle();
            if exec.work_queued() || v.wait_kick(&s) {
                exec.run_idle(HOUR);
            }
            exec
        });
        let done = Done::default();
        engine.submit(done.item(0)).unwrap();
        done.wait_for(1);
        vcpu.release(&stop);
        drop(vcpu_thread.join().unwrap());
        assert!(engine.shutdown(Shutdown::Drain).is_empty());
        assert_eq!(done.runs(), vec![0]);
    });
}

#[test]
fn lane_items_run_one_at_a_time_in_order_on_whichever_hand() {
    // A worker and an executor race for a lane's two items.
    check(|| {
        let engine = Engine::new(config(Policy::Idle)).unwrap();
        let mut exec = engine.register_executor("vcpu0", Vcpu::new(false));
        let vcpu_thread = thread::spawn(move || {
            exec.run_idle(HOUR);
            exec
        });
        let lane = engine.lane();
        let done = Done::default();
        let running = Arc::new(AtomicBool::new(false));
        for id in 0..2 {
            let (d, r) = (done.clone(), Arc::clone(&running));
            lane.submit(Item::from_fn(move || {
                assert!(!r.swap(true, Ordering::SeqCst), "two lane items at once");
                d.record(id);
                r.store(false, Ordering::SeqCst);
            }))
            .unwrap();
        }
        done.wait_for(2);
        drop(vcpu_thread.join().unwrap());
        assert!(engine.shutdown(Shutdown::Drain).is_empty());
        assert_eq!(done.in_order(), vec![0, 1]);
    });
}

#[test]
fn a_lane_item_submitted_as_the_active_one_finishes_is_not_stranded() {
    // The submitter may find the lane busy and leave its item in the
    // backlog; the hand finishing the active item must then queue it.
    check(|| {
        let engine = Engine::new(config(Policy::Workers)).unwrap();
        let lane = engine.lane();
        let done = Done::default();
        lane.submit(done.item(0)).unwrap();
        let (l, d) = (lane.clone(), done.clone());
        let t = thread::spawn(move || l.submit(d.item(1)).map(|_| ()).unwrap());
        t.join().unwrap();
        done.wait_for(2);
        assert!(engine.shutdown(Shutdown::Drain).is_empty());
        assert_eq!(done.in_order(), vec![0, 1]);
    });
}

/// Lets an executor take its items in batches (one hand absorbs them all).
fn batching(policy: Policy) -> Config {
    Config {
        items_per_worker: 100,
        ..config(policy)
    }
}

#[test]
fn the_rest_of_a_batch_goes_back_and_is_run_once_when_the_budget_runs_out() {
    // The executor takes item 0 alone (its pace is unknown), then 1 and 2
    // together; item 1 spends the budget, so item 2 goes back to the queue
    // and must find a hand (the worker): a lost wake-up deadlocks.
    check(|| {
        let clock = ManualClock::new();
        let engine = Engine::with_clock(batching(Policy::Idle), clock.clock()).unwrap();
        let mut exec = engine.register_executor("vcpu0", Vcpu::new(false));
        let done = Done::default();
        for id in 0..3 {
            let (d, c) = (done.clone(), clock.clone());
            engine
                .submit(Item::new(move |_: &idlework::Context| {
                    if id == 1 {
                        c.advance(Duration::from_micros(20));
                    }
                    d.record(id);
                    Step::Done
                }))
                .unwrap();
        }
        let vcpu_thread = thread::spawn(move || {
            let report = exec.run_idle(Duration::from_micros(15));
            assert!(report.items <= 2, "{report:?}");
            exec
        });
        done.wait_for(3);
        drop(vcpu_thread.join().unwrap());
        assert!(engine.shutdown(Shutdown::Drain).is_empty());
        assert_eq!(done.runs(), vec![0, 1, 2], "each item runs exactly once");
    });
}

#[test]
fn shutdown_return_takes_back_a_batch_an_executor_holds() {
    // Idle work: only the executor takes it. Whatever it has taken and not
    // started when shutdown stops it comes back with the rest.
    check(|| {
        let engine = Engine::new(batching(Policy::Idle)).unwrap();
        let mut exec = engine.register_executor("vcpu0", Vcpu::new(false));
        let done = Done::default();
        for id in 0..3 {
            let it = done.item(id).with_priority(Priority::Idle);
            engine.submit(it).unwrap();
        }
        let vcpu_thread = thread::spawn(move || {
            exec.run_idle(HOUR);
            exec
        });
        let returned = engine.shutdown(Shutdown::Return);
        drop(vcpu_thread.join().unwrap());
        // Running what came back must complete the set, with no item twice.
        returned.into_iter().for_each(Item::run_to_completion);
        assert_eq!(done.in_order().len(), 3, "an item ran twice or was lost");
        assert_eq!(done.runs(), vec![0, 1, 2]);
    });
}
