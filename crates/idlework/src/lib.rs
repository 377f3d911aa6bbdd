//! # idlework — idle vCPUs and depth-scaled workers share a VMM's work
//!
//! A VMM has deferred work to do for its guest: virtqueue requests,
//! backends, checksums, maintenance. `idlework` runs it in three places:
//!
//! * **inline**, on the thread that finds it, when it is "fairly much
//!   instantaneous" (cost hint below [`Config::inline_threshold`]);
//! * on **idle executors**: vCPU threads whose guest is idle. A vCPU thread
//!   that sees its guest halt *announces* it ([`Executor::announce_idle`]);
//!   a submitter claims *one* announced executor in O(1) and wakes it, and
//!   its thread calls [`Executor::run_idle`], runs items within a budget and
//!   re-enters the guest. Where the halt stays inside the kernel (an
//!   in-kernel irqchip), the timekeeper *probes* executors
//!   ([`IdleHooks::probe_idle`]) while work waits, and kicks one;
//! * on **workers**, a pool that owns the queue and whose awake count
//!   follows queue depth and the age of the oldest item, so nothing waits
//!   without bound when the guest never idles.
//!
//! Items have a [`Priority`]: `idle` work runs only in guest idle time (or
//! after a long deadline), `normal` work prefers idle executors, `urgent`
//! work starts at once. Items can do part of their work and
//! [`Step::Yield`]. The [`Policy`] in the [`Config`] selects the strategy
//! (`workers`, `inline`, `idle`) on one code path, so they can be compared.
//! Items that must stay in order (a network TX queue) go through a [`Lane`]:
//! one at a time, in submission order, on whichever hand takes them. The
//! embedder confines the engine's own threads (seccomp, affinity) with
//! [`Config::on_thread_start`]. Where each item goes is tabled in the
//! `placement` module's docs (and the README).
//!
//! ```
//! use idlework::{Config, Engine, IdleHooks, Item, Place, Priority, Shutdown};
//! use std::sync::atomic::{AtomicBool, Ordering};
//! use std::sync::Arc;
//!
//! /// What a VMM knows about one vCPU.
//! #[derive(Default)]
//! struct Vcpu {
//!     woken: AtomicBool,
//! }
//!
//! impl IdleHooks for Vcpu {
//!     // Sticky: ends the thread's wait even if it has not started yet.
//!     fn kick(&self) { self.woken.store(true, Ordering::Release) } // + futex wake in a VMM
//! }
//!
//! let engine = Engine::new(Config::default())?;
//! let vcpu = Arc::new(Vcpu::default());
//! let mut executor = engine.register_executor("vcpu0", Arc::clone(&vcpu));
//!
//! // The vCPU thread saw its guest halt: it announces it, re-checks for
//! // work, and would wait now.
//! executor.announce_idle();
//! assert!(!executor.work_queued());
//!
//! // A device's notify path submits a request: it claims the idle vCPU.
//! let submitter = engine.submitter();
//! submitter.submit(Item::from_fn(|| { /* process a virtio request */ }))?;
//!
//! // The woken vCPU thread runs the work, then re-enters the guest.
//! assert!(vcpu.woken.load(Ordering::Acquire));
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

mod announce;
mod batch;
mod cap;
mod clock;
mod config;
mod engine;
mod error;
mod executor;
mod gate;
mod item;
mod lane;
mod placement;
mod priority;
mod queue;
mod run;
mod shared;
mod sleep;
mod stats;
mod sync;
mod thread_start;
mod worker;

pub use clock::{Clock, ManualClock};
pub use config::{Config, Policy};
pub use engine::{Engine, Shutdown, Submitter};
pub use error::{ConfigError, Error, SubmitError};
pub use executor::{Executor, IdleHooks, IdleReport};
pub use item::{Context, Item, Place, Step, Work};
pub use lane::Lane;
pub use placement::Submitted;
pub use priority::{ByPriority, Priority};
pub use stats::{ExecutorStats, RunnerSummary, Stats, WaitSummary, WorkerStats};
pub use thread_start::{HookError, ThreadInfo, ThreadRole, ThreadStartFn, ThreadStartHook};
