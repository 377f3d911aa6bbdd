//! Engine configuration and its validation.

use crate::error::ConfigError;
use crate::thread_start::ThreadStartHook;
use serde::Serialize;
use std::time::Duration;

/// Where the engine runs work. One engine API, three strategies, so the
/// same VMM code can be compared under each.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// Device threads only, as today's VMMs do: every queued item goes to
    /// the worker pool and executors are never kicked. Priorities only
    /// order the queue.
    Workers,
    /// Every item runs to completion on the thread that submits it.
    Inline,
    /// The full model: idle executors first, workers by depth and age,
    /// `idle` work only in guest idle time or after a long deadline.
    #[default]
    Idle,
}

impl Policy {
    /// All policies, in the order benchmarks print them.
    pub const ALL: [Policy; 3] = [Policy::Workers, Policy::Inline, Policy::Idle];

    /// The policy's lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Policy::Workers => "workers",
            Policy::Inline => "inline",
            Policy::Idle => "idle",
        }
    }
}

impl std::str::FromStr for Policy {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Policy::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| ConfigError::UnknownPolicy(s.to_owned()))
    }
}

/// How an [`Engine`](crate::Engine) places and runs work.
///
/// Build one from [`Config::default`] and change what you need; the engine
/// checks it with [`Config::validate`].
///
/// ```
/// use idlework::{Config, Policy};
/// use std::time::Duration;
///
/// let config = Config {
///     policy: Policy::Idle,
///     max_workers: 2,
///     normal_deadline: Duration::from_millis(2),
///     ..Config::default()
/// };
/// assert!(config.validate().is_ok());
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Config {
    /// Where work runs.
    pub policy: Policy,
    /// Worker threads in the pool (at least 1 unless the policy is
    /// [`Policy::Inline`]). They are created up front and sleep when there
    /// is nothing for them.
    pub max_workers: usize,
    /// Queue depth one hand (awake worker or busy executor) is expected to
    /// absorb; past it another hand is added, one at a time.
    pub items_per_worker: usize,
    /// A queued item older than this gets a worker woken for it, even if
    /// an idle executor was kicked for it or the queue is shallow enough
    /// for the hands already at work (which may be stuck in long items).
    /// Under [`Policy::Idle`], `idle` work uses `idle_deadline` instead.
    pub normal_deadline: Duration,
    /// Under [`Policy::Idle`], an `idle` item older than this runs on a
    /// worker; before that only executors run it. At least
    /// `normal_deadline`.
    pub idle_deadline: Duration,
    /// Items whose cost hint is below this run at once on the submitting
    /// thread. [`Duration::ZERO`] disables the inline fast path.
    pub inline_threshold: Duration,
    /// The default time budget of one [`Executor::run_idle`](crate::Executor::run_idle)
    /// call, and the time slice offered to items on workers.
    pub executor_budget: Duration,
    /// Opt-in footprint cap: at most this many threads other than
    /// executors' (vCPU) threads run engine work at once (workers and
    /// inline runs through a [`Submitter`](crate::Submitter)).
    pub cpu_cap: Option<usize>,
    /// Worker thread names are this prefix followed by the worker's index.
    /// Linux keeps 15 bytes of a thread name.
    pub thread_name: String,
    /// Under [`Policy::Idle`]: while work waits for an idle executor, look
    /// for one this often (the timekeeping worker claims executors that
    /// announced themselves idle and asks the others'
    /// [`IdleHooks::probe_idle`](crate::IdleHooks::probe_idle)). A vCPU that goes
    /// idle after work was submitted is then used, and `normal` work waits
    /// for one up to `normal_deadline` unless the queue depth asks for a
    /// worker. `None`: only executors idle at submit time are kicked, and
    /// `normal` work goes to a worker when none is.
    pub idle_poll: Option<Duration>,
    /// Called at the start of every thread the engine spawns (its
    /// workers), on that thread, before it takes any item: where a VMM
    /// installs the thread's seccomp filter and CPU affinity. If it fails
    /// or panics, [`Engine::new`](crate::Engine::new) fails; see
    /// [`ThreadStartHook`].
    #[serde(skip)]
    pub on_thread_start: Option<ThreadStartHook>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            policy: Policy::Idle,
            max_workers: 2,
            items_per_worker: 4,
            normal_deadline: Duration::from_millis(1),
            idle_deadline: Duration::from_millis(100),
            inline_threshold: Duration::ZERO,
            executor_budget: Duration::from_micros(200),
            cpu_cap: None,
            thread_name: "idlework-".to_owned(),
            idle_poll: Some(Duration::from_micros(50)),
            on_thread_start: None,
        }
    }
}

impl Config {
    /// Checks that the configuration is usable.
    ///
    /// ```
    /// use idlework::{Config, ConfigError};
    ///
    /// let bad = Config { items_per_worker: 0, ..Config::default() };
    /// assert_eq!(bad.validate(), Err(ConfigError::ZeroItemsPerWorker));
    /// ```
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_workers == 0 && self.policy != Policy::Inline {
            return Err(ConfigError::NoWorkers(self.policy));
        }
        if self.items_per_worker == 0 {
            return Err(ConfigError::ZeroItemsPerWorker);
        }
        if self.idle_deadline < self.normal_deadline {
            return Err(ConfigError::DeadlineOrder {
                normal: self.normal_deadline,
                idle: self.idle_deadline,
            });
        }
        if self.executor_budget.is_zero() {
            return Err(ConfigError::ZeroBudget);
        }
        if self.cpu_cap == Some(0) && self.policy != Policy::Idle {
            return Err(ConfigError::ZeroCpuCap);
        }
        if self.idle_poll.is_some_and(|p| p.is_zero()) {
            return Err(ConfigError::ZeroIdlePoll);
        }
        if self.thread_name.contains('\0') {
            return Err(ConfigError::ThreadName);
        }
        Ok(())
    }
}
