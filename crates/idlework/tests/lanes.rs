//! Ordered lanes: one at a time, in submission order, on any hand; lanes
//! independent of each other; yields keep their place; panics don't wedge
//! a lane; shutdown drains or returns lanes in order.

mod common;

use common::*;
use idlework::{
    Config, Context, Engine, Executor, Item, Lane, Place, Policy, Priority, Shutdown, Step,
    SubmitError,
};
use proptest::prelude::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Completions per lane, and whether an item of the lane is running now.
#[derive(Default)]
struct Order {
    done: Mutex<Vec<Vec<usize>>>,
    running: Vec<AtomicBool>,
    overlaps: std::sync::atomic::AtomicUsize,
}

impl Order {
    fn new(lanes: usize) -> Arc<Self> {
        Arc::new(Order {
            done: Mutex::new(vec![Vec::new(); lanes]),
            running: (0..lanes).map(|_| AtomicBool::new(false)).collect(),
            overlaps: Default::default(),
        })
    }

    /// An item of `lane` numbered `seq` that yields `yields` times and
    /// panics at the end if `panics`.
    fn item(self: &Arc<Self>, lane: usize, seq: usize, yields: usize, panics: bool) -> Item {
        let order = Arc::clone(self);
        let mut left = yields;
        Item::new(move |_: &Context| {
            if order.running[lane].swap(true, Ordering::SeqCst) {
                order.overlaps.fetch_add(1, Ordering::SeqCst);
            }
            std::thread::yield_now();
            let step = if left > 0 {
                left -= 1;
                Step::Yield
            } else {
                order.done.lock().unwrap()[lane].push(seq);
                Step::Done
            };
            order.running[lane].store(false, Ordering::SeqCst);
            if step == Step::Done && panics {
                panic!("lane item {lane}/{seq} panics (on purpose)");
            }
            step
        })
    }

    fn total(&self) -> usize {
        self.done.lock().unwrap().iter().map(Vec::len).sum()
    }

    fn wait_for(&self, n: usize) {
        let start = Instant::now();
        while self.total() < n {
            assert!(
                start.elapsed() < PATIENCE,
                "only {} of {n} ran",
                self.total()
            );
            std::thread::yield_now();
        }
    }

    fn assert_in_order(&self, per_lane: usize) {
        for (lane, seqs) in self.done.lock().unwrap().iter().enumerate() {
            assert_eq!(*seqs, (0..per_lane).collect::<Vec<_>>(), "lane {lane}");
        }
        assert_eq!(
            self.overlaps.load(Ordering::SeqCst),
            0,
            "lane items overlapped"
        );
    }
}

#[test]
fn lane_items_run_in_order_on_any_mix_of_hands() {
    for policy in Policy::ALL {
        let engine = Engine::new(Config {
            policy,
            max_workers: 3,
            items_per_worker: 1,
            inline_threshold: Duration::from_micros(5),
            normal_deadline: Duration::from_micros(100),
            ..Config::default()
        })
        .unwrap();
        let lanes: Vec<Lane> = (0..3).map(|_| engine.lane()).collect();
        let order = Order::new(lanes.len());
        let per_lane = 300;
        let mut exec = engine.register_executor("vcpu0", FakeVcpu::busy());
        std::thread::scope(|s| {
            // Two submitters share the lanes; each lane's items come from
            // one of them so "submission order" is that thread's order.
            for t in 0..2 {
                let (lanes, order) = (&lanes, &order);
                s.spawn(move || {
                    for seq in 0..per_lane {
                        for (l, lane) in lanes.iter().enumerate().filter(|(l, _)| l % 2 == t) {
                            let mut it = order.item(l, seq, seq % 3, seq % 7 == 3);
                            if seq % 5 == 0 {
                                it = it.with_cost_hint(Duration::from_nanos(1));
                            }
                            if seq % 11 == 0 {
                                it = it.with_priority(Priority::Urgent);
                            }
                            lane.submit(it).unwrap();
                        }
                    }
                });
            }
            let order = &order;
            s.spawn(move || drive(&mut exec, order, lanes_len() * per_lane));
        });
        order.wait_for(3 * per_lane);
        assert!(engine.shutdown(Shutdown::Drain).is_empty());
        order.assert_in_order(per_lane);
    }
}

fn lanes_len() -> usize {
    3
}

/// Plays an idle vCPU until `n` lane items finished.
fn drive(exec: &mut Executor, order: &Order, n: usize) {
    let start = Instant::now();
    while order.total() < n && start.elapsed() < PATIENCE {
        exec.announce_idle();
        exec.run_idle(Duration::from_micros(50));
        std::thread::yield_now();
    }
}

#[test]
fn independent_lanes_run_in_parallel() {
    let engine = Engine::new(Config {
        policy: Policy::Workers,
        max_workers: 2,
        items_per_worker: 1,
        ..Config::default()
    })
    .unwrap();
    let (a, b) = (engine.lane(), engine.lane());
    let met = Arc::new(AtomicBool::new(false));
    let (tx, rx) = reporting();
    // Lane a's item finishes only once lane b's has started.
    let (m, t) = (Arc::clone(&met), tx.clone());
    a.submit(Item::from_fn(move || {
        let start = Instant::now();
        while !m.load(Ordering::SeqCst) && start.elapsed() < PATIENCE {
            std::thread::yield_now();
        }
        let _ = t.send(usize::from(m.load(Ordering::SeqCst)));
    }))
    .unwrap();
    b.submit(Item::from_fn(move || met.store(true, Ordering::SeqCst)))
        .unwrap();
    assert_eq!(rx.recv_timeout(PATIENCE), Ok(1), "lane b waited for lane a");
}

#[test]
fn shutdown_return_hands_lanes_back_in_order() {
    // Idle work waits for an idle vCPU, and there is none: nothing runs.
    let engine = Engine::new(Config {
        normal_deadline: Duration::from_secs(3600),
        idle_deadline: Duration::from_secs(3600),
        ..Config::default()
    })
    .unwrap();
    let lane = engine.lane();
    let (tx, rx) = reporting();
    for id in 0..5 {
        lane.submit(item(&tx, id).with_priority(Priority::Idle))
            .unwrap();
    }
    let left = engine.shutdown(Shutdown::Return);
    assert_eq!(left.len(), 5);
    left.into_iter().for_each(Item::run_to_completion);
    let got: Vec<usize> = rx.try_iter().collect();
    assert_eq!(got, [0, 1, 2, 3, 4]);
}

#[test]
fn a_lane_of_another_engine_is_refused() {
    let (e1, e2) = (
        Engine::new(Config::default()).unwrap(),
        Engine::new(Config::default()).unwrap(),
    );
    let lane = e1.lane();
    let err = e2.submit(Item::from_fn(|| ()).in_lane(&lane)).unwrap_err();
    assert!(matches!(err, SubmitError::ForeignLane(_)));
}

#[test]
fn inline_policy_runs_a_busy_lanes_next_item_on_the_running_thread() {
    let engine = Engine::new(Config {
        policy: Policy::Inline,
        ..Config::default()
    })
    .unwrap();
    let lane = engine.lane();
    let order = Order::new(1);
    lane.submit(order.item(0, 0, 2, false)).unwrap();
    lane.submit(order.item(0, 1, 0, true)).unwrap();
    lane.submit(order.item(0, 2, 0, false)).unwrap();
    order.assert_in_order(3);
    let stats = engine.stats();
    assert_eq!(stats.ran(Place::Inline, Priority::Normal), 3);
    assert_eq!(stats.panics(), 1);
}

#[derive(Clone, Debug)]
enum Op {
    Submit {
        lane: usize,
        yields: usize,
        panics: bool,
        cheap: bool,
        from_exec: bool,
    },
    RunIdle,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..3usize, 0..3usize, prop::bool::weighted(0.1), any::<bool>(), any::<bool>())
            .prop_map(|(lane, yields, panics, cheap, from_exec)| Op::Submit { lane, yields, panics, cheap, from_exec }),
        1 => Just(Op::RunIdle),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64),
        ..ProptestConfig::default()
    })]

    /// Whatever the policy, hands and interleaving: each lane's items finish
    /// in submission order, never overlapping, each exactly once.
    #[test]
    fn lanes_keep_submission_order(
        policy in prop::sample::select(Policy::ALL.to_vec()),
        workers in 1..=3usize,
        drain in any::<bool>(),
        ops in prop::collection::vec(op(), 1..60),
    ) {
        let engine = Engine::new(Config {
            policy,
            max_workers: workers,
            items_per_worker: 1,
            inline_threshold: Duration::from_micros(5),
            normal_deadline: Duration::from_micros(200),
            ..Config::default()
        }).unwrap();
        let lanes: Vec<Lane> = (0..3).map(|_| engine.lane()).collect();
        let order = Order::new(3);
        let mut exec = engine.register_executor("vcpu0", FakeVcpu::busy());
        let mut next = [0usize; 3];
        for op in ops {
            match op {
                Op::Submit { lane, yields, panics, cheap, from_exec } => {
                    let mut it = order.item(lane, next[lane], yields, panics).in_lane(&lanes[lane]);
                    next[lane] += 1;
                    if cheap {
                        it = it.with_cost_hint(Duration::from_nanos(1));
                    }
                    if from_exec { exec.submit(it) } else { engine.submit(it) }.unwrap();
                }
                Op::RunIdle => {
                    exec.announce_idle();
                    exec.run_idle(Duration::from_micros(100));
                }
            }
        }
        drop(exec);
        let how = if drain { Shutdown::Drain } else { Shutdown::Return };
        // Returned items are the caller's to run (and their panics too).
        for item in engine.shutdown(how) {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| item.run_to_completion()));
        }
        let done = order.done.lock().unwrap().clone();
        for (lane, seqs) in done.iter().enumerate() {
            prop_assert_eq!(seqs.clone(), (0..next[lane]).collect::<Vec<_>>(), "lane {}", lane);
        }
        prop_assert_eq!(order.overlaps.load(Ordering::SeqCst), 0);
    }
}
