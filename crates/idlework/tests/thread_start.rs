//! The thread-start hook: runs on every engine thread before any item, and
//! a failing or panicking hook fails the engine's start.

mod common;

use common::*;
use idlework::{Config, Engine, Error, Item, Place, Policy, ThreadRole, ThreadStartHook};
use std::cell::Cell;
use std::sync::{Arc, Mutex};

thread_local! {
    static HOOKED: Cell<bool> = const { Cell::new(false) };
}

fn workers(n: usize, hook: ThreadStartHook) -> Config {
    Config {
        policy: Policy::Workers,
        max_workers: n,
        on_thread_start: Some(hook),
        ..Config::default()
    }
}

#[test]
fn the_hook_runs_on_every_worker_before_it_takes_an_item() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    let hook = ThreadStartHook::new(move |t| {
        assert_eq!(std::thread::current().name(), Some(t.name.as_str()));
        log.lock().unwrap().push((t.role, t.index));
        HOOKED.with(|h| h.set(true));
        Ok(())
    });
    let engine = Engine::new(workers(3, hook)).unwrap();
    let mut started = seen.lock().unwrap().clone();
    started.sort_unstable_by_key(|&(_, i)| i);
    assert_eq!(
        started,
        (0..3).map(|i| (ThreadRole::Worker, i)).collect::<Vec<_>>()
    );
    let (tx, rx) = reporting();
    for id in 0..50 {
        let tx = tx.clone();
        engine
            .submit(Item::from_fn(move || {
                if HOOKED.with(Cell::get) {
                    let _ = tx.send(id);
                }
            }))
            .unwrap();
    }
    expect_each_once(&rx, 50);
    assert_eq!(settled(&engine, 50).ran_at(Place::Worker).total(), 50);
}

#[test]
fn a_failing_hook_fails_the_start_with_its_error() {
    let hook = ThreadStartHook::new(|t| {
        if t.index == 1 {
            return Err(std::io::Error::other("no seccomp here").into());
        }
        Ok(())
    });
    match Engine::new(workers(2, hook)) {
        Err(Error::ThreadStart { thread, source }) => {
            assert_eq!(thread, "idlework-1");
            assert_eq!(source.to_string(), "no seccomp here");
        }
        other => panic!("expected a thread-start error, got {other:?}"),
    }
}

#[test]
fn a_panicking_hook_fails_the_start() {
    let hook = ThreadStartHook::new(|_| panic!("hook bug"));
    assert!(matches!(
        Engine::new(workers(2, hook)),
        Err(Error::ThreadStartPanicked { .. })
    ));
}
