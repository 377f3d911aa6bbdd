//! # idlework — idle vCPUs and depth-scaled workers share a VMM's work
//!
//! A VMM has deferred work to do for its guest: virtqueue requests,
//! backends, checksums, maintenance. `idlework` runs it in three places:
//!
//! * **inline**, on the thread that finds it, when it is "fairly much
//!   instantaneous" (cost hint below [`Config::inline_threshold`]);
//! * on **idle executors**: vCPU threads whose guest is idle. The engine
//!   kicks *one* idle vCPU out of the guest; its thread calls
//!   [`Executor::run_idle`], runs items within a budget and re-enters the
//!   guest;
//! * on **workers**, a pool that owns the queue and whose awake count
//!   follows queue depth and the age of the oldest item, so nothing waits
//!   without bound when the guest never idles.
//!
//! Items have a [`Priority`]: `idle` work runs only in guest idle time (or
//! after a long deadline), `normal` work prefers idle executors, `urgent`
//! work starts at once. Items can do part of their work and
//! [`Step::Yield`]. The [`Policy`] in the [`Config`] selects the strategy
//! (`workers`, `inline`, `idle`) on one code path, so they can be compared.
//!
//! ```
//! use idlework::{Config, Engine, IdleHooks, Item, Place, Priority, Shutdown};
//! use std::sync::atomic::{AtomicBool, Ordering};
//! use std::sync::Arc;
//!
//! /// What a VMM knows about one vCPU.
//! struct Vcpu {
//!     halted: AtomicBool,
//!     kicked: AtomicBool,
//! }
//!
//! impl IdleHooks for Vcpu {
//!     fn is_idle(&self) -> bool { self.halted.load(Ordering::Relaxed) }
//!     fn kick(&self) { self.kicked.store(true, Ordering::Release) } // pthread_kill in a VMM
//! }
//!
//! let engine = Engine::new(Config::default())?;
//! let vcpu = Arc::new(Vcpu { halted: AtomicBool::new(true), kicked: AtomicBool::new(false) });
//! let mut executor = engine.register_executor("vcpu0", Arc::clone(&vcpu));
//!
//! // A device's notify path submits a request.
//! let submitter = engine.submitter();
//! submitter.submit(Item::from_fn(|| { /* process a virtio request */ }))?;
//!
//! // The halted vCPU was kicked; its thread runs the work, then re-enters the guest.
//! assert!(vcpu.kicked.load(Ordering::Acquire));
//! let report = executor.run_idle(executor.budget());
//! assert_eq!(report.items, 1);
//! assert_eq!(engine.stats().ran(Place::Executor, Priority::Normal), 1);
//! assert!(engine.shutdown(Shutdown::Drain).is_empty());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The crate has no KVM or device code and no `unsafe`. Its concurrent core
//! is model-checked with loom: `RUSTFLAGS="--cfg loom" cargo test -p
//! idlework --release --test loom`.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

// The README's example is compiled and run as a doc test.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

mod cap;
mod clock;
mod config;
mod engine;
mod error;
mod executor;
mod gate;
mod item;
mod placement;
mod priority;
mod queue;
mod run;
mod shared;
mod sleep;
mod stats;
mod sync;
mod worker;

pub use clock::{Clock, ManualClock};
pub use config::{Config, Policy};
pub use engine::{Engine, Shutdown, Submitter};
pub use error::{ConfigError, Error, SubmitError};
pub use executor::{Executor, IdleHooks, IdleReport};
pub use item::{Context, Item, Place, Step, Work};
pub use placement::Submitted;
pub use priority::{ByPriority, Priority};
pub use stats::{ExecutorStats, RunnerSummary, Stats, WaitSummary, WorkerStats};
