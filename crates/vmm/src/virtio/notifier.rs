//! The notifier thread: one epoll over every queue's ioeventfd and every
//! host event source a device watches (a tap fd, a timer).
//!
//! Queue notifications: KVM completes the guest's QueueNotify write in the
//! kernel (no exit to userspace) and signals the ioeventfd registered for that
//! queue — one per queue, matched on the queue index the guest writes — and
//! this thread hands the notification to the queue's transport.
//!
//! Host event sources are watched one shot at a time (`EPOLLONESHOT`): when
//! the fd becomes readable its callback runs once and the fd stays unwatched
//! until the device re-arms it ([`HostWatch::arm`]). That is how a device
//! stops reading a source it has no room for (a tap while the guest posts no
//! receive buffers) without a busy loop, and re-arming a source that is
//! already readable reports it again at once, so no event is lost.
//!
//! This thread does only that: popping chains and submitting items costs a
//! few µs; the work runs wherever idlework puts it.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use kvm_ioctls::{IoEventAddress, VmFd};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::mmio::MmioTransport;
use crate::seccomp::ThreadClass;
use crate::vmm_thread::ThreadPolicy;

/// The notifier thread's name.
const NAME: &str = "ns-notify";

/// What a host event source runs when its fd is ready.
pub type HostCallback = Box<dyn FnMut() + Send>;

/// One thing the thread waits on.
enum Source {
    /// A queue's ioeventfd.
    Queue {
        eventfd: EventFd,
        transport: Arc<Mutex<MmioTransport>>,
        queue: u32,
    },
    /// A device's host fd.
    Host(HostCallback),
}

/// Collects ioeventfds and host event sources, then runs the notifier thread.
pub struct NotifierBuilder {
    epoll: Arc<Epoll>,
    sources: Vec<Source>,
}

/// Where a device registers the host fds it wants watched.
pub trait HostEvents {
    /// Watches `fd` (readable) and runs `callback` on the notifier thread when
    /// it is, once per [`HostWatch::arm`]. The watch starts disarmed.
    fn watch(
        &mut self,
        fd: Arc<dyn AsRawFd + Send + Sync>,
        callback: HostCallback,
    ) -> std::io::Result<HostWatch>;
}

/// A device's handle on one watched host fd.
pub struct HostWatch {
    epoll: Arc<Epoll>,
    fd: Arc<dyn AsRawFd + Send + Sync>,
    token: u64,
}

impl HostWatch {
    /// Watches the fd for one readiness event (reported at once if it is
    /// readable now).
    pub fn arm(&self) {
        self.set(EventSet::IN | EventSet::ONE_SHOT);
    }

    /// Stops watching the fd.
    pub fn disarm(&self) {
        self.set(EventSet::ONE_SHOT);
    }

    fn set(&self, events: EventSet) {
        let ev = EpollEvent::new(events, self.token);
        if let Err(e) = self
            .epoll
            .ctl(ControlOperation::Modify, self.fd.as_raw_fd(), ev)
        {
            tracing::error!("notifier: re-arming a host event source: {e}");
        }
    }
}

impl NotifierBuilder {
    /// A builder with its epoll instance (host watches are handed out before
    /// the thread starts).
    pub fn new() -> std::io::Result<Self> {
        Ok(NotifierBuilder {
            epoll: Arc::new(Epoll::new()?),
            sources: Vec::new(),
        })
    }

    /// Registers an ioeventfd for guest writes of the value `queue` to the
    /// QueueNotify register at `addr`.
    pub fn add_queue(
        &mut self,
        vm: &VmFd,
        addr: u64,
        queue: u32,
        transport: Arc<Mutex<MmioTransport>>,
    ) -> std::io::Result<()> {
        let eventfd = EventFd::new(libc::EFD_NONBLOCK)?;
        // A u32 datamatch: KVM signals this eventfd only for 4-byte writes of
        // exactly `queue`; other values still exit to the transport.
        vm.register_ioevent(&eventfd, &IoEventAddress::Mmio(addr), queue)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))?;
        self.add(eventfd.as_raw_fd(), EventSet::IN, |_| Source::Queue {
            eventfd,
            transport,
            queue,
        })?;
        Ok(())
    }

    fn add(
        &mut self,
        fd: RawFd,
        events: EventSet,
        source: impl FnOnce(u64) -> Source,
    ) -> std::io::Result<u64> {
        let token = self.sources.len() as u64;
        self.epoll
            .ctl(ControlOperation::Add, fd, EpollEvent::new(events, token))?;
        self.sources.push(source(token));
        Ok(token)
    }

    /// Whether any source was added.
    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }

    /// Starts the thread, bound to its VM and confined by `threads`.
    pub fn start(self, threads: ThreadPolicy) -> std::io::Result<Notifier> {
        let stop = EventFd::new(libc::EFD_NONBLOCK)?;
        let stop_token = self.sources.len() as u64;
        self.epoll.ctl(
            ControlOperation::Add,
            stop.as_raw_fd(),
            EpollEvent::new(EventSet::IN, stop_token),
        )?;
        let stop_thread = stop.try_clone()?;
        let NotifierBuilder { epoll, sources } = self;
        let thread = std::thread::Builder::new()
            .name(NAME.into())
            .spawn(move || {
                let _bound = threads.bind(NAME);
                if let Err(e) = threads.confine(ThreadClass::Notifier, NAME) {
                    threads.report(crate::ExitReason::Host(format!("{NAME}: {e}")));
                    return;
                }
                run(&epoll, sources, stop_token, stop_thread)
            })?;
        Ok(Notifier {
            stop,
            thread: Some(thread),
        })
    }
}

impl HostEvents for NotifierBuilder {
    fn watch(
        &mut self,
        fd: Arc<dyn AsRawFd + Send + Sync>,
        callback: HostCallback,
    ) -> std::io::Result<HostWatch> {
        let token = self.add(fd.as_raw_fd(), EventSet::ONE_SHOT, |_| {
            Source::Host(callback)
        })?;
        Ok(HostWatch {
            epoll: self.epoll.clone(),
            fd,
            token,
        })
    }
}

fn run(epoll: &Epoll, mut sources: Vec<Source>, stop_token: u64, _stop: EventFd) {
    let mut events = vec![EpollEvent::default(); sources.len() + 1];
    loop {
        let n = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::error!("notifier: epoll_wait: {e}; queue notifications stop");
                return;
            }
        };
        for ev in &events[..n] {
            if ev.data() == stop_token {
                return;
            }
            match sources.get_mut(ev.data() as usize) {
                // Reading resets the counter; several notifies coalesce into one pass.
                Some(Source::Queue {
                    eventfd,
                    transport,
                    queue,
                }) if eventfd.read().is_ok() => {
                    transport
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .notify_async(*queue);
                }
                Some(Source::Host(callback)) => callback(),
                _ => {}
            }
        }
    }
}

/// The running notifier thread; stopped on drop.
pub struct Notifier {
    stop: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Notifier {
    fn drop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn a_host_source_fires_once_per_arm() {
        let mut b = NotifierBuilder::new().unwrap();
        let fd = Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let (tx, rx) = mpsc::channel();
        let watch = b
            .watch(fd.clone(), Box::new(move || tx.send(()).unwrap()))
            .unwrap();
        let exit = Arc::new(crate::exit::ExitSignal::new().unwrap());
        let threads = ThreadPolicy::new(exit, crate::seccomp::SeccompMode::Off, None);
        let _n = b.start(threads).unwrap();
        fd.write(1).unwrap();
        // Disarmed at first: arming reports the fd that is already readable.
        watch.arm();
        rx.recv().unwrap();
        // One shot: still readable, but not reported until armed again.
        watch.arm();
        rx.recv().unwrap();
        watch.disarm();
        fd.read().unwrap();
        watch.arm();
        fd.write(1).unwrap();
        rx.recv().unwrap();
    }
}
