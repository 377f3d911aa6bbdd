//! Rate-limited log lines for what the guest causes.
//!
//! A guest controls how often it makes a bad MMIO access or sends a broken
//! request, so a log line per event lets it flood the host's logs (and spend
//! the VMM's time formatting them). Each call site is a [`GuestLog`]: it logs
//! the first [`BURST`] events of every [`WINDOW`], counts the rest, and says
//! how many it dropped on its next line. Every site's counts go to the run
//! report ([`counts`]), so nothing is lost but the repetition.
//!
//! ```
//! use vmm::guest_log::GuestLog;
//! static BAD_REQUEST: GuestLog = GuestLog::new("virtio-blk bad request");
//! vmm::guest_warn!(BAD_REQUEST, "virtio-blk: bad request (head {}): {}", 3, "too short");
//! ```
//!
//! Counts are per process (one VM per process in the CLI).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde::Serialize;

#[doc(hidden)]
pub use tracing as __tracing;

/// Lines a site may log per window.
pub const BURST: u64 = 10;
/// The window.
pub const WINDOW: Duration = Duration::from_secs(5);

/// One call site of guest-caused log lines.
pub struct GuestLog {
    site: &'static str,
    events: AtomicU64,
    suppressed: AtomicU64,
    /// Start of the current window, ms since the first event anywhere (+1; 0: none yet).
    window: AtomicU64,
    in_window: AtomicU64,
    /// Dropped since the last line logged.
    pending: AtomicU64,
}

/// Whether to log this event, and how many were dropped before it.
#[derive(Debug, PartialEq, Eq)]
pub enum Admit {
    /// Log it; `dropped` similar lines were not logged since the last one.
    Log {
        /// Lines dropped since the last logged one.
        dropped: u64,
    },
    /// Count it only.
    Drop,
}

impl GuestLog {
    /// A site named `site` (as the report shows it).
    pub const fn new(site: &'static str) -> Self {
        GuestLog {
            site,
            events: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
            window: AtomicU64::new(0),
            in_window: AtomicU64::new(0),
            pending: AtomicU64::new(0),
        }
    }

    /// Counts one event and says whether to log it.
    pub fn admit(&'static self) -> Admit {
        self.admit_at(now_ms())
    }

    fn admit_at(&'static self, now: u64) -> Admit {
        if self.events.fetch_add(1, Ordering::Relaxed) == 0 {
            register(self);
        }
        let start = self.window.load(Ordering::Acquire);
        let expired = start == 0 || now + 1 >= start + WINDOW.as_millis() as u64;
        if expired
            && self
                .window
                .compare_exchange(start, now + 1, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            self.in_window.store(0, Ordering::Release);
        }
        if self.in_window.fetch_add(1, Ordering::AcqRel) < BURST {
            Admit::Log {
                dropped: self.pending.swap(0, Ordering::AcqRel),
            }
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            self.pending.fetch_add(1, Ordering::AcqRel);
            Admit::Drop
        }
    }

    fn snapshot(&self) -> SiteCount {
        SiteCount {
            site: self.site,
            events: self.events.load(Ordering::Relaxed),
            suppressed: self.suppressed.load(Ordering::Relaxed),
        }
    }
}

/// Logs a guest-caused warning through a [`GuestLog`] site: at most
/// [`BURST`] lines per [`WINDOW`], then a count of what was dropped.
#[macro_export]
macro_rules! guest_warn {
    ($site:expr, $($arg:tt)+) => {
        if let $crate::guest_log::Admit::Log { dropped } = $site.admit() {
            if dropped > 0 {
                $crate::guest_log::__tracing::warn!(
                    "{} ({dropped} similar lines dropped)",
                    format_args!($($arg)+)
                );
            } else {
                $crate::guest_log::__tracing::warn!($($arg)+);
            }
        }
    };
}

/// One site's counts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SiteCount {
    /// The site's name.
    pub site: &'static str,
    /// Events (logged or not).
    pub events: u64,
    /// Events not logged.
    pub suppressed: u64,
}

static SITES: Mutex<Vec<&'static GuestLog>> = Mutex::new(Vec::new());

fn register(site: &'static GuestLog) {
    SITES.lock().unwrap_or_else(|p| p.into_inner()).push(site);
}

/// Every site that saw an event, with its counts.
pub fn counts() -> Vec<SiteCount> {
    let sites = SITES.lock().unwrap_or_else(|p| p.into_inner());
    let mut counts: Vec<SiteCount> = sites.iter().map(|s| s.snapshot()).collect();
    counts.sort_by_key(|c| c.site);
    counts
}

fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_logs_a_burst_per_window_and_counts_the_rest() {
        static SITE: GuestLog = GuestLog::new("test flood");
        let logged = (0..1000)
            .filter(|_| matches!(SITE.admit_at(1_000), Admit::Log { .. }))
            .count();
        assert_eq!(logged as u64, BURST);
        // The next window logs again and says how many were dropped.
        let later = 1_000 + WINDOW.as_millis() as u64;
        assert_eq!(SITE.admit_at(later), Admit::Log { dropped: 990 });
        assert_eq!(SITE.admit_at(later), Admit::Log { dropped: 0 });
        let c = counts()
            .into_iter()
            .find(|c| c.site == "test flood")
            .unwrap();
        assert_eq!((c.events, c.suppressed), (1002, 990));
    }

    #[test]
    fn the_macro_logs_through_a_site() {
        static SITE: GuestLog = GuestLog::new("test macro");
        for i in 0..3 {
            guest_warn!(SITE, "event {i}");
        }
        let c = counts()
            .into_iter()
            .find(|c| c.site == "test macro")
            .unwrap();
        assert_eq!((c.events, c.suppressed), (3, 0));
    }
}
