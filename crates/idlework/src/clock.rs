//! Time source: the monotonic clock, or a manual one tests drive by hand.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Nanoseconds since the clock's origin.
pub(crate) type Nanos = u64;

/// Converts a duration to [`Nanos`], saturating.
pub(crate) fn nanos(d: Duration) -> Nanos {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The engine's time source: queue ages, deadlines, budgets and busy time
/// are all read from it.
///
/// [`Clock::monotonic`] is the default. A [`ManualClock`] makes deadline and
/// budget behaviour deterministic in tests:
///
/// ```
/// use idlework::{Clock, ManualClock};
/// use std::time::Duration;
///
/// let manual = ManualClock::new();
/// let clock: Clock = manual.clock();
/// manual.advance(Duration::from_millis(5));
/// assert_eq!(manual.now(), Duration::from_millis(5));
/// # let _ = clock;
/// ```
#[derive(Clone)]
pub struct Clock(Source);

#[derive(Clone)]
enum Source {
    /// A TSC-based clock and its reading at the origin.
    Monotonic(quanta::Clock, u64),
    Manual(Arc<AtomicU64>),
}

impl Clock {
    /// The monotonic clock: the CPU's time-stamp counter where it is
    /// invariant (calibrated against the OS clock by `quanta`), else the
    /// OS monotonic clock.
    pub fn monotonic() -> Self {
        let clock = quanta::Clock::new();
        let origin = clock.raw();
        Clock(Source::Monotonic(clock, origin))
    }

    /// The current time.
    #[inline]
    pub(crate) fn now(&self) -> Nanos {
        match &self.0 {
            Source::Monotonic(clock, origin) => clock.delta_as_nanos(*origin, clock.raw()),
            Source::Manual(t) => t.load(Ordering::Acquire),
        }
    }

    /// Whether this clock only moves when a [`ManualClock`] moves it.
    pub(crate) fn is_manual(&self) -> bool {
        matches!(self.0, Source::Manual(_))
    }
}

impl Default for Clock {
    /// The monotonic clock (a frozen manual clock under loom, whose model
    /// checker needs deterministic executions).
    fn default() -> Self {
        if cfg!(loom) {
            ManualClock::new().clock()
        } else {
            Clock::monotonic()
        }
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Source::Monotonic(..) => f.write_str("Clock::Monotonic"),
            Source::Manual(t) => write!(f, "Clock::Manual({}ns)", t.load(Ordering::Relaxed)),
        }
    }
}

/// A clock that stands still until it is advanced; for tests.
#[derive(Clone, Debug, Default)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    /// A manual clock at time zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// A [`Clock`] that reads this manual clock.
    pub fn clock(&self) -> Clock {
        Clock(Source::Manual(Arc::clone(&self.0)))
    }

    /// Moves time forward by `d`.
    pub fn advance(&self, d: Duration) {
        self.0.fetch_add(nanos(d), Ordering::AcqRel);
    }

    /// The current time since the clock's origin.
    pub fn now(&self) -> Duration {
        Duration::from_nanos(self.0.load(Ordering::Acquire))
    }
}
