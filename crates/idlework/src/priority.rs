//! Priority classes and per-class tables.

use serde::Serialize;

/// How urgently an item must run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// Maintenance: runs only in guest idle time (on executors), or on a
    /// worker after [`Config::idle_deadline`](crate::Config::idle_deadline).
    Idle,
    /// Device work (a virtio request): idle executors first, workers by
    /// depth and after [`Config::normal_deadline`](crate::Config::normal_deadline).
    #[default]
    Normal,
    /// Latency-critical: started at once, inline or on a worker woken for it.
    Urgent,
}

impl Priority {
    /// All classes, most urgent first: the order queues are served in.
    pub const ALL: [Priority; 3] = [Priority::Urgent, Priority::Normal, Priority::Idle];

    /// The class's lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Priority::Urgent => "urgent",
            Priority::Normal => "normal",
            Priority::Idle => "idle",
        }
    }

    /// Index into per-class arrays (urgent 0, normal 1, idle 2).
    pub(crate) fn index(self) -> usize {
        match self {
            Priority::Urgent => 0,
            Priority::Normal => 1,
            Priority::Idle => 2,
        }
    }
}

/// One value per [`Priority`].
///
/// ```
/// use idlework::{ByPriority, Priority};
///
/// let mut t = ByPriority::<u64>::default();
/// *t.get_mut(Priority::Idle) += 2;
/// assert_eq!(t[Priority::Idle], 2);
/// assert_eq!(t.total(), 2);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ByPriority<T> {
    /// The `urgent` class.
    pub urgent: T,
    /// The `normal` class.
    pub normal: T,
    /// The `idle` class.
    pub idle: T,
}

impl<T> ByPriority<T> {
    /// Builds a table by calling `f` for each class.
    pub fn from_fn(mut f: impl FnMut(Priority) -> T) -> Self {
        ByPriority {
            urgent: f(Priority::Urgent),
            normal: f(Priority::Normal),
            idle: f(Priority::Idle),
        }
    }

    /// The value for `p`.
    pub fn get(&self, p: Priority) -> &T {
        match p {
            Priority::Urgent => &self.urgent,
            Priority::Normal => &self.normal,
            Priority::Idle => &self.idle,
        }
    }

    /// The value for `p`, mutably.
    pub fn get_mut(&mut self, p: Priority) -> &mut T {
        match p {
            Priority::Urgent => &mut self.urgent,
            Priority::Normal => &mut self.normal,
            Priority::Idle => &mut self.idle,
        }
    }
}

impl<T: Copy + std::iter::Sum<T>> ByPriority<T> {
    /// The sum over all classes.
    pub fn total(&self) -> T {
        [self.urgent, self.normal, self.idle].into_iter().sum()
    }
}

impl<T> std::ops::Index<Priority> for ByPriority<T> {
    type Output = T;

    fn index(&self, p: Priority) -> &T {
        self.get(p)
    }
}
