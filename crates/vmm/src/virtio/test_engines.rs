//! Engines the device tests run their work on (test code only).

/// An inline engine: requests run inside the notify that queued them.
pub fn inline_engine() -> idlework::Engine {
    idlework::Engine::new(idlework::Config {
        policy: idlework::Policy::Inline,
        max_workers: 0,
        ..Default::default()
    })
    .unwrap()
}

/// `--policy idle --cpu-cap 0` with one vCPU: only the returned executor may
/// run work, and it runs nothing until the test calls `run_idle` on it.
pub fn vcpu_only_engine() -> (idlework::Engine, idlework::Executor) {
    struct Busy;
    impl idlework::IdleHooks for Busy {
        fn kick(&self) {}
    }
    let engine = idlework::Engine::new(idlework::Config {
        policy: idlework::Policy::Idle,
        max_workers: 1,
        cpu_cap: Some(0),
        idle_poll: None,
        ..Default::default()
    })
    .unwrap();
    let vcpu = engine.register_executor("vcpu0", Busy);
    (engine, vcpu)
}
