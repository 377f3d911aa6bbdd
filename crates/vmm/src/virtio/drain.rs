//! One in-flight work item per queue that drains the queue: how net (RX and
//! TX) and rng hand their queues to the engine.
//!
//! A kick (a queue notify, a readable tap) submits an item only if none is
//! queued or running; the item drains the queue, yielding between batches,
//! and finishes only once no kick came while it ran. So a queue's requests
//! are handled one at a time, in ring order, on whichever thread the engine
//! picks — the order a net TX queue needs. (When idlework's ordered lanes land
//! this becomes one item per kick in the queue's lane.)
//!
//! The accounting survives resets and panics: a reset stops the drainer and
//! waits only for a step that is running now (a queued item that starts after
//! the stop does nothing), and an item that panics or is dropped unrun clears
//! its state and asks the driver for a reset instead of leaving the queue
//! unserved for ever.
//!
//! [`complete`] is the used-ring half shared by these devices until the
//! device-neutral completion path replaces it.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use idlework::{Context, Item, Step, Submitter};
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};

use super::VirtioInterrupt;
use crate::memory::GuestMemory;

/// What one drain step left behind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drained {
    /// Nothing more to do until the next kick.
    All,
    /// The batch ended with work left: continue in a later slice.
    More,
}

/// The work of one queue: called one step at a time, never concurrently.
pub trait QueueWork: Send + Sync + 'static {
    /// Does one batch of the queue's work.
    fn drain(&self, cx: &Context) -> Drained;
}

#[derive(Default)]
struct RunState {
    stopped: bool,
    running: u32,
}

/// A queue's drain item bookkeeping, for one activation of its device.
pub struct Drainer {
    /// Kicks not yet seen by a drain step; non-zero while an item is queued or running.
    kicks: AtomicU32,
    state: Mutex<RunState>,
    idle: Condvar,
    interrupt: Arc<VirtioInterrupt>,
    work: Arc<dyn QueueWork>,
}

impl Drainer {
    /// A drainer running `work`; `interrupt` is told if an item dies.
    pub fn new(work: Arc<dyn QueueWork>, interrupt: Arc<VirtioInterrupt>) -> Arc<Self> {
        Arc::new(Drainer {
            kicks: AtomicU32::new(0),
            state: Mutex::default(),
            idle: Condvar::new(),
            interrupt,
            work,
        })
    }

    /// There may be work: make sure a drain item is queued or running.
    pub fn kick(self: &Arc<Self>, submitter: &Submitter) {
        if self.kicks.fetch_add(1, Ordering::AcqRel) != 0 {
            return; // the queued or running item will see this kick
        }
        let mut guard = ItemGuard {
            drainer: self.clone(),
            finished: false,
            in_step: false,
        };
        let item = Item::new(move |cx: &Context| guard.step(cx));
        if let Err(e) = submitter.submit(item) {
            // The engine is shutting down with the VM: drain here rather
            // than leave the guest waiting.
            e.into_item().run_to_completion();
        }
    }

    /// Stops the drainer: no step starts from now on. Returns once no step runs.
    pub fn stop(&self) {
        let mut s = lock(&self.state);
        s.stopped = true;
        while s.running > 0 {
            s = self.idle.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn begin(&self) -> bool {
        let mut s = lock(&self.state);
        if s.stopped {
            return false;
        }
        s.running += 1;
        true
    }

    fn end(&self) {
        let mut s = lock(&self.state);
        s.running -= 1;
        if s.running == 0 {
            self.idle.notify_all();
        }
    }
}

/// The drain item's state; clears the drainer if the item dies unfinished.
struct ItemGuard {
    drainer: Arc<Drainer>,
    finished: bool,
    /// Inside a step (still set after a step panicked).
    in_step: bool,
}

impl ItemGuard {
    fn step(&mut self, cx: &Context) -> Step {
        let d = &self.drainer;
        if !d.begin() {
            self.finished = true;
            return Step::Done;
        }
        self.in_step = true;
        let mut seen = d.kicks.load(Ordering::Acquire);
        let step = loop {
            if d.work.drain(cx) == Drained::More {
                break Step::Yield;
            }
            match d
                .kicks
                .compare_exchange(seen, 0, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    self.finished = true;
                    break Step::Done;
                }
                // Kicked while draining: go round again.
                Err(now) => seen = now,
            }
        };
        self.in_step = false;
        d.end();
        step
    }
}

impl Drop for ItemGuard {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        // The step panicked (idlework caught it) or the item was dropped unrun.
        let d = &self.drainer;
        if self.in_step {
            d.end();
        }
        d.kicks.store(0, Ordering::Release);
        tracing::warn!("virtio: a queue's work item died; the device needs a reset");
        d.interrupt.signal_needs_reset();
    }
}

/// Locks, ignoring poisoning (a panicked item must not wedge the device).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Puts chain `head` in the used ring with `len` bytes written. A head the
/// used ring cannot name makes the device ask for a reset (the driver would
/// otherwise wait for it for ever). Returns false if the device is now broken.
pub fn complete(
    queue: &mut Queue,
    mem: &GuestMemory,
    interrupt: &VirtioInterrupt,
    head: u16,
    len: u32,
) -> bool {
    match queue.add_used(mem, head, len) {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!("virtio: returning chain {head}: {e}");
            interrupt.signal_needs_reset();
            false
        }
    }
}

/// The next available chain. When the ring is empty the driver is asked to
/// notify again (with EVENT_IDX: `avail_event` is set to where we are), and a
/// chain that slipped in meanwhile is taken. An unusable ring makes the device
/// ask for a reset. `device` names the device in the log.
pub fn next_chain<'m>(
    queue: &mut Queue,
    mem: &'m GuestMemory,
    interrupt: &VirtioInterrupt,
    device: &str,
) -> Option<DescriptorChain<&'m GuestMemory>> {
    for _ in 0..2 {
        match queue.iter(mem) {
            Ok(mut avail) => {
                if let Some(chain) = avail.next() {
                    return Some(chain);
                }
            }
            Err(e) => {
                // E.g. the avail index moved by more than the queue size.
                tracing::warn!("{device}: available ring unusable: {e}");
                interrupt.signal_needs_reset();
                return None;
            }
        }
        if !queue.enable_notification(mem).unwrap_or(false) {
            return None;
        }
    }
    None
}

/// Interrupts the driver if it wants to hear about used buffers.
pub fn notify_used(queue: &mut Queue, mem: &GuestMemory, interrupt: &VirtioInterrupt) {
    if queue.needs_notification(mem).unwrap_or(true) {
        interrupt.signal_used_queue();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use vmm_sys_util::eventfd::EventFd;

    struct Counting {
        steps: AtomicU32,
        more: AtomicU32,
        panic: AtomicBool,
    }

    impl QueueWork for Counting {
        fn drain(&self, _cx: &Context) -> Drained {
            self.steps.fetch_add(1, Ordering::Relaxed);
            if self.panic.swap(false, Ordering::Relaxed) {
                panic!("a bad step");
            }
            match self
                .more
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |m| m.checked_sub(1))
            {
                Ok(_) => Drained::More,
                Err(_) => Drained::All,
            }
        }
    }

    fn setup(more: u32, panic: bool) -> (Arc<Counting>, Arc<Drainer>, Arc<VirtioInterrupt>) {
        let work = Arc::new(Counting {
            steps: AtomicU32::new(0),
            more: AtomicU32::new(more),
            panic: AtomicBool::new(panic),
        });
        let irq = Arc::new(VirtioInterrupt::new(
            EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        ));
        let d = Drainer::new(work.clone(), irq.clone());
        (work, d, irq)
    }

    fn engine(policy: idlework::Policy) -> idlework::Engine {
        idlework::Engine::new(idlework::Config {
            policy,
            max_workers: 1,
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn a_drain_yields_and_continues_until_done() {
        let (work, d, irq) = setup(3, false);
        let e = engine(idlework::Policy::Inline);
        d.kick(&e.submitter());
        assert_eq!(work.steps.load(Ordering::Relaxed), 4);
        d.kick(&e.submitter());
        assert_eq!(work.steps.load(Ordering::Relaxed), 5);
        assert!(!irq.needs_reset());
    }

    #[test]
    fn a_panicking_step_asks_for_a_reset_and_the_next_kick_runs_again() {
        let (work, d, irq) = setup(0, true);
        let e = engine(idlework::Policy::Inline);
        d.kick(&e.submitter());
        assert!(irq.needs_reset());
        d.kick(&e.submitter());
        assert_eq!(work.steps.load(Ordering::Relaxed), 2);
        d.stop(); // nothing running: returns
    }

    #[test]
    fn a_stopped_drainer_runs_no_more_steps() {
        let (work, d, _) = setup(0, false);
        d.stop();
        let e = engine(idlework::Policy::Inline);
        d.kick(&e.submitter());
        assert_eq!(work.steps.load(Ordering::Relaxed), 0);
    }
}
