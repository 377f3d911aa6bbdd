//! Errors the engine reports instead of panicking.

use crate::config::Policy;
use crate::item::Item;
use std::time::Duration;

/// A [`Config`](crate::Config) that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// Only the inline policy can do without workers: the others need them
    /// as the fallback that bounds every item's wait.
    #[error("policy {0:?} needs at least one worker")]
    NoWorkers(Policy),
    /// `items_per_worker` must be at least 1.
    #[error("items_per_worker must be at least 1")]
    ZeroItemsPerWorker,
    /// The idle deadline must not be shorter than the normal one.
    #[error("idle_deadline ({idle:?}) is shorter than normal_deadline ({normal:?})")]
    DeadlineOrder {
        /// The configured normal deadline.
        normal: Duration,
        /// The configured idle deadline.
        idle: Duration,
    },
    /// `executor_budget` must be positive.
    #[error("executor_budget must be positive")]
    ZeroBudget,
    /// A cap of zero would never run anything outside the idle policy.
    #[error("cpu_cap 0 needs the idle policy (executors then run everything)")]
    ZeroCpuCap,
    /// Thread names cannot contain NUL.
    #[error("thread_name contains a NUL byte")]
    ThreadName,
    /// `idle_poll` is zero.
    #[error("idle_poll must be positive (None disables polling)")]
    ZeroIdlePoll,
    /// Not one of `workers`, `inline`, `idle`.
    #[error("unknown policy {0:?} (expected workers, inline or idle)")]
    UnknownPolicy(String),
}

/// Why an [`Engine`](crate::Engine) could not be created.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration was rejected.
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    /// A worker thread could not be spawned.
    #[error("cannot spawn worker thread: {0}")]
    Spawn(#[from] std::io::Error),
    /// The [thread-start hook](crate::Config::on_thread_start) failed on a
    /// thread; the engine was stopped again.
    #[error("the thread-start hook failed on thread {thread}")]
    ThreadStart {
        /// The thread's name.
        thread: String,
        /// What the hook returned.
        #[source]
        source: crate::thread_start::HookError,
    },
    /// The thread-start hook panicked on a thread; the engine was stopped
    /// again.
    #[error("the thread-start hook panicked on thread {thread}")]
    ThreadStartPanicked {
        /// The thread's name.
        thread: String,
    },
}

/// A submission the engine did not accept. The item is handed back, never
/// dropped.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The engine is shutting down or shut down.
    #[error("the engine is shut down")]
    ShutDown(Item),
    /// The item is in a lane of another engine.
    #[error("the item's lane belongs to another engine")]
    ForeignLane(Item),
}

impl SubmitError {
    /// The rejected item.
    pub fn into_item(self) -> Item {
        match self {
            SubmitError::ShutDown(item) | SubmitError::ForeignLane(item) => item,
        }
    }
}
