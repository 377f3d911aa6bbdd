//! The thread-start hook: the embedder's code, run first on every thread
//! the engine spawns.
//!
//! A VMM confines its threads itself: a seccomp filter per thread class,
//! CPU affinity. Both are per-thread properties that must be set *on* the
//! thread, before it runs anything untrusted-adjacent, and an engine that
//! spawns its own threads would otherwise leave them with whatever they
//! inherited from the thread that happened to create the engine. So the
//! engine calls [`Config::on_thread_start`](crate::Config::on_thread_start)
//! at the start of each of its threads, before that thread takes any item,
//! and [`Engine::new`](crate::Engine::new) returns only once every hook has
//! returned: if one fails or panics, the engine is stopped again and `new`
//! returns [`Error::ThreadStart`](crate::Error::ThreadStart) or
//! [`Error::ThreadStartPanicked`](crate::Error::ThreadStartPanicked). There
//! is no half-started engine.

use std::fmt;
use std::sync::Arc;

/// What a thread-start hook may fail with.
pub type HookError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The hook's signature.
pub type ThreadStartFn = dyn Fn(&ThreadInfo) -> Result<(), HookError> + Send + Sync;

/// The kind of thread the engine spawned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ThreadRole {
    /// A worker of the pool. Any sleeping worker may also become the
    /// *timekeeper*, which waits with timeouts, reads the clock, calls
    /// [`IdleHooks::probe_idle`](crate::IdleHooks::probe_idle) and
    /// [`IdleHooks::kick`](crate::IdleHooks::kick) of any executor: a
    /// seccomp filter for workers must allow what those hooks and the
    /// items run on workers do (besides `futex`).
    Worker,
}

/// The thread a hook runs on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThreadInfo {
    /// What the thread is for.
    pub role: ThreadRole,
    /// Its index among the engine's threads of that role.
    pub index: usize,
    /// Its name (as set on the OS thread).
    pub name: String,
}

/// A hook run at the start of every thread the engine spawns; see the
/// [module docs](self).
///
/// ```
/// use idlework::{Config, Engine, ThreadStartHook, ThreadRole};
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use std::sync::Arc;
///
/// let started = Arc::new(AtomicUsize::new(0));
/// let seen = Arc::clone(&started);
/// let config = Config {
///     max_workers: 2,
///     on_thread_start: Some(ThreadStartHook::new(move |t| {
///         assert_eq!(t.role, ThreadRole::Worker);
///         // A VMM installs the thread's seccomp filter and affinity here.
///         seen.fetch_add(1, Ordering::SeqCst);
///         Ok(())
///     })),
///     ..Config::default()
/// };
/// let engine = Engine::new(config)?;
/// assert_eq!(started.load(Ordering::SeqCst), 2);
/// # drop(engine);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct ThreadStartHook(Arc<ThreadStartFn>);

impl ThreadStartHook {
    /// Wraps `f`.
    pub fn new(f: impl Fn(&ThreadInfo) -> Result<(), HookError> + Send + Sync + 'static) -> Self {
        ThreadStartHook(Arc::new(f))
    }

    /// Runs the hook for `info`.
    pub(crate) fn call(&self, info: &ThreadInfo) -> Result<(), HookError> {
        (self.0)(info)
    }
}

impl From<Arc<ThreadStartFn>> for ThreadStartHook {
    fn from(f: Arc<ThreadStartFn>) -> Self {
        ThreadStartHook(f)
    }
}

impl fmt::Debug for ThreadStartHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ThreadStartHook(..)")
    }
}

/// Two hooks are equal if they are the same closure.
impl PartialEq for ThreadStartHook {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for ThreadStartHook {}

/// How a thread's start went, as its spawner learns it.
pub(crate) enum StartFailure {
    Failed(HookError),
    Panicked,
}

/// Runs `hook` (if any) for `info`, catching a panic.
pub(crate) fn run_hook(
    hook: Option<&ThreadStartHook>,
    info: &ThreadInfo,
) -> Result<(), StartFailure> {
    let Some(hook) = hook else {
        return Ok(());
    };
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| hook.call(info))) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(StartFailure::Failed(e)),
        Err(_) => Err(StartFailure::Panicked),
    }
}
