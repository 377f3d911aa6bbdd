//! Work items: what runs, at which priority, and how it yields.

use crate::clock::Nanos;
use crate::lane::{Lane, LaneQueue};
use crate::priority::Priority;
use serde::Serialize;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// What a step of work asks for next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// The item is finished and is dropped.
    Done,
    /// The item did part of its work; queue it again to continue later
    /// (time slicing in user space).
    Yield,
}

/// The kind of thread an item runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Place {
    /// The thread that submitted it.
    Inline,
    /// An idle executor's (vCPU's) thread.
    Executor,
    /// A worker thread of the pool.
    Worker,
}

impl Place {
    /// All places.
    pub const ALL: [Place; 3] = [Place::Inline, Place::Executor, Place::Worker];

    /// The place's lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Place::Inline => "inline",
            Place::Executor => "executor",
            Place::Worker => "worker",
        }
    }
}

/// What a running item may know about where and for how long it runs.
#[derive(Clone, Copy, Debug)]
pub struct Context {
    pub(crate) place: Place,
    pub(crate) slice: Duration,
}

impl Context {
    /// Where this step runs.
    pub fn place(&self) -> Place {
        self.place
    }

    /// How long this step may take before it should [`Step::Yield`]: an
    /// executor's remaining budget, or the configured executor budget on a
    /// worker. [`Duration::MAX`] when nothing else waits for the thread.
    pub fn slice(&self) -> Duration {
        self.slice
    }
}

/// A unit of deferred work.
///
/// `run` is called until it returns [`Step::Done`]; each call is one slice.
/// Closures `FnMut(&Context) -> Step` are work too.
///
/// ```
/// use idlework::{Context, Step, Work};
///
/// /// Scrubs 1000 blocks, 100 per slice.
/// struct Scrub { next: u32 }
///
/// impl Work for Scrub {
///     fn run(&mut self, _cx: &Context) -> Step {
///         self.next += 100;
///         if self.next < 1000 { Step::Yield } else { Step::Done }
///     }
/// }
/// ```
pub trait Work: Send + 'static {
    /// Does (part of) the work.
    fn run(&mut self, cx: &Context) -> Step;
}

impl<F> Work for F
where
    F: FnMut(&Context) -> Step + Send + 'static,
{
    fn run(&mut self, cx: &Context) -> Step {
        self(cx)
    }
}

/// What an item runs. A one-shot closure is boxed as `dyn FnOnce` rather
/// than adapted to [`Work`] (an `Option` around it to call it through
/// `&mut`): a closure that captures nothing is then zero-sized and boxing
/// it allocates nothing, which was a malloc and a free on the submit →
/// pickup path (a sixth of it in `examples/hot_path.rs`, on the PVM test
/// host). Capturing closures allocate once, as any boxed work does.
enum Body {
    Once(Box<dyn FnOnce() + Send>),
    Work(Box<dyn Work>),
    /// A one-shot closure that has run.
    Spent,
}

/// A boxed unit of work with its priority and cost hint, ready to submit.
///
/// Building an item is its only allocation, and none for a closure that
/// captures nothing.
///
/// ```
/// use idlework::{Item, Priority};
/// use std::time::Duration;
///
/// let item = Item::from_fn(|| println!("done"))
///     .with_priority(Priority::Urgent)
///     .with_cost_hint(Duration::from_nanos(300));
/// assert_eq!(item.priority(), Priority::Urgent);
/// ```
pub struct Item {
    body: Body,
    priority: Priority,
    cost_hint: Option<Duration>,
    /// When the item was last queued (engine clock).
    pub(crate) stamp: Nanos,
    /// The ordered lane it belongs to, if any.
    pub(crate) lane: Option<Arc<LaneQueue>>,
}

impl Item {
    /// A `normal` item running `work`.
    pub fn new(work: impl Work) -> Self {
        Self::with_body(Body::Work(Box::new(work)))
    }

    fn with_body(body: Body) -> Self {
        Item {
            body,
            priority: Priority::Normal,
            cost_hint: None,
            stamp: 0,
            lane: None,
        }
    }

    /// A `normal` item that calls `f` once.
    pub fn from_fn(f: impl FnOnce() + Send + 'static) -> Self {
        Self::with_body(Body::Once(Box::new(f)))
    }

    /// Sets the priority.
    pub fn with_priority(mut self, priority: Priority) -> Self {
        self.priority = priority;
        self
    }

    /// Sets the cost hint: the expected duration of one step. Items hinted
    /// below [`Config::inline_threshold`](crate::Config::inline_threshold)
    /// run on the submitting thread.
    pub fn with_cost_hint(mut self, cost: Duration) -> Self {
        self.cost_hint = Some(cost);
        self
    }

    /// Puts the item in `lane`: submitted (through any submitter of the
    /// lane's engine), it runs only after every item submitted to the lane
    /// before it has finished. Same as [`Lane::submit`].
    pub fn in_lane(mut self, lane: &Lane) -> Self {
        self.lane = Some(Arc::clone(&lane.queue));
        self
    }

    /// The item's priority.
    pub fn priority(&self) -> Priority {
        self.priority
    }

    /// The item's cost hint, if any.
    pub fn cost_hint(&self) -> Option<Duration> {
        self.cost_hint
    }

    /// Runs the item to completion on this thread, e.g. an item handed
    /// back by [`Engine::shutdown`](crate::Engine::shutdown).
    pub fn run_to_completion(mut self) {
        let cx = Context {
            place: Place::Inline,
            slice: Duration::MAX,
        };
        while self.step(&cx) == Step::Yield {}
    }

    /// Runs one step.
    #[inline]
    pub(crate) fn step(&mut self, cx: &Context) -> Step {
        match &mut self.body {
            Body::Work(work) => work.run(cx),
            Body::Once(_) => {
                if let Body::Once(f) = std::mem::replace(&mut self.body, Body::Spent) {
                    f();
                }
                Step::Done
            }
            Body::Spent => Step::Done,
        }
    }
}

impl fmt::Debug for Item {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Item")
            .field("priority", &self.priority)
            .field("cost_hint", &self.cost_hint)
            .field("in_lane", &self.lane.is_some())
            .finish_non_exhaustive()
    }
}
