//! Helpers shared by the integration tests.
#![allow(dead_code)]

use idlework::{IdleHooks, Item, Step};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::time::Duration;

/// A safety net for waits on other threads; never a timing assertion.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// A fake vCPU: what its probe answers is set by the test (`idle`, as KVM's
/// `blocking` statistic would); kicks are counted, and probes made on a
/// thread that is not one of the engine's workers (the submit path must
/// never probe).
#[derive(Clone, Default)]
pub struct FakeVcpu {
    pub idle: Arc<AtomicBool>,
    pub kicks: Arc<AtomicUsize>,
    pub probes: Arc<AtomicUsize>,
    pub foreign_probes: Arc<AtomicUsize>,
    /// Like a vCPU under a userspace irqchip: its thread announces its
    /// halts itself, so the engine must never probe it.
    pub announces_itself: bool,
}

impl FakeVcpu {
    pub fn idle() -> Self {
        let v = FakeVcpu::default();
        v.idle.store(true, Ordering::SeqCst);
        v
    }

    pub fn busy() -> Self {
        FakeVcpu::default()
    }

    pub fn kicks(&self) -> usize {
        self.kicks.load(Ordering::SeqCst)
    }
}

/// The engine's worker threads' name prefix in `Config::default()`.
pub const WORKER_PREFIX: &str = "idlework-";

impl IdleHooks for FakeVcpu {
    fn kick(&self) {
        self.kicks.fetch_add(1, Ordering::SeqCst);
    }

    fn probe_idle(&self) -> bool {
        self.probes.fetch_add(1, Ordering::SeqCst);
        let on_worker = std::thread::current()
            .name()
            .is_some_and(|n| n.starts_with(WORKER_PREFIX));
        if !on_worker {
            self.foreign_probes.fetch_add(1, Ordering::SeqCst);
        }
        self.idle.load(Ordering::SeqCst)
    }
    fn probes(&self) -> bool {
        !self.announces_itself
    }
}

/// Items that report their id on a channel when done.
pub fn reporting() -> (Sender<usize>, Receiver<usize>) {
    channel()
}

/// An item that sends `id` when it runs.
pub fn item(tx: &Sender<usize>, id: usize) -> Item {
    let tx = tx.clone();
    Item::from_fn(move || {
        let _ = tx.send(id);
    })
}

/// An item that yields `yields` times, then sends `id`.
pub fn yielding(tx: &Sender<usize>, id: usize, yields: usize) -> Item {
    let tx = tx.clone();
    let mut left = yields;
    Item::new(move |_: &idlework::Context| {
        if left > 0 {
            left -= 1;
            return Step::Yield;
        }
        let _ = tx.send(id);
        Step::Done
    })
}

/// Receives `n` ids and checks each arrived exactly once.
pub fn expect_each_once(rx: &Receiver<usize>, n: usize) {
    let mut seen = vec![false; n];
    for _ in 0..n {
        let id = rx.recv_timeout(PATIENCE).expect("an item never ran");
        assert!(!seen[id], "item {id} ran twice");
        seen[id] = true;
    }
    assert!(rx.try_recv().is_err(), "an item ran more than once");
}

/// Statistics once `total` items have finished: runners publish their
/// counters when a run ends, shortly after the item itself reported.
pub fn settled(engine: &idlework::Engine, total: u64) -> idlework::Stats {
    let start = std::time::Instant::now();
    loop {
        let stats = engine.stats();
        if stats.total_ran() >= total || start.elapsed() > PATIENCE {
            assert_eq!(stats.total_ran(), total, "{stats:#?}");
            return stats;
        }
        std::thread::yield_now();
    }
}
