//! Queue notifications through ioeventfds: KVM completes the guest's
//! QueueNotify write in the kernel (no exit to userspace) and signals an
//! eventfd; one notifier thread waits on all of them and hands each
//! notification to its transport, whose device submits the requests.
//!
//! This thread does only that: popping chains and submitting items costs a
//! few µs per notify; the requests' work runs wherever idlework puts it.

use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::mmio::MmioTransport;
use crate::seccomp::ThreadClass;
use crate::vmm_thread::ThreadPolicy;

/// The notifier thread's name.
const NAME: &str = "ns-notify";

/// One queue's notification source.
struct Source {
    eventfd: EventFd,
    transport: Arc<Mutex<MmioTransport>>,
    queue: u32,
}

/// Collects ioeventfds, then runs the notifier thread.
#[derive(Default)]
pub struct NotifierBuilder {
    sources: Vec<Source>,
}

impl NotifierBuilder {
    /// Registers an ioeventfd for writes of `queue` to the QueueNotify register at `addr`.
    pub fn add(
        &mut self,
        vm: &VmFd,
        addr: u64,
        queue: u32,
        transport: Arc<Mutex<MmioTransport>>,
    ) -> std::io::Result<()> {
        let eventfd = EventFd::new(libc::EFD_NONBLOCK)?;
        vm.register_ioevent(&eventfd, &IoEventAddress::Mmio(addr), NoDatamatch)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))?;
        self.sources.push(Source {
            eventfd,
            transport,
            queue,
        });
        Ok(())
    }

    /// Whether any source was added.
    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }

    /// Starts the thread, bound to its VM and confined by `threads`.
    pub fn start(self, threads: ThreadPolicy) -> std::io::Result<Notifier> {
        let epoll = Epoll::new()?;
        let stop = EventFd::new(libc::EFD_NONBLOCK)?;
        let stop_token = self.sources.len() as u64;
        for (i, s) in self.sources.iter().enumerate() {
            epoll.ctl(
                ControlOperation::Add,
                s.eventfd.as_raw_fd(),
                EpollEvent::new(EventSet::IN, i as u64),
            )?;
        }
        epoll.ctl(
            ControlOperation::Add,
            stop.as_raw_fd(),
            EpollEvent::new(EventSet::IN, stop_token),
        )?;
        let stop_thread = stop.try_clone()?;
        let thread = std::thread::Builder::new()
            .name(NAME.into())
            .spawn(move || {
                let _bound = threads.bind(NAME);
                if let Err(e) = threads.confine(ThreadClass::Notifier, NAME) {
                    threads.report(crate::ExitReason::Host(format!("{NAME}: {e}")));
                    return;
                }
                run(epoll, self.sources, stop_token, stop_thread)
            })?;
        Ok(Notifier {
            stop,
            thread: Some(thread),
        })
    }
}

fn run(epoll: Epoll, sources: Vec<Source>, stop_token: u64, _stop: EventFd) {
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
            let Some(s) = sources.get(ev.data() as usize) else {
                continue;
            };
            // Reading resets the counter; several notifies coalesce into one pass.
            if s.eventfd.read().is_ok() {
                s.transport
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .notify(s.queue);
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
