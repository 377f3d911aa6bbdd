//! The net device driven by a synthetic driver on test guest memory, with a
//! datagram socket pair standing in for the tap (one vnet-header frame per
//! datagram, as a tap with IFF_VNET_HDR reads and writes them).

use std::os::unix::net::UnixDatagram;
use std::sync::Arc;
use std::time::{Duration, Instant};

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::device::{NetCounters, QUEUE_SIZE, RX_QUEUE, TX_QUEUE};
use super::tap::VNET_HDR_LEN;
use super::{Net, Tap, MAX_FRAME};
use crate::virtio::chain::tests::{Driver, W};
use crate::virtio::test_engines::vcpu_only_engine;
use crate::vmm_thread::ThreadPolicy;

/// Threads of a test VM: no seccomp, no fault injection.
fn test_threads() -> ThreadPolicy {
    let exit = Arc::new(crate::exit::ExitSignal::new().unwrap());
    ThreadPolicy::new(exit, crate::seccomp::SeccompMode::Off, None)
}
use crate::virtio::notifier::{Notifier, NotifierBuilder};
use crate::virtio::{ActivateContext, VirtioDevice, VirtioInterrupt};

pub(super) const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
const RX_BASE: u64 = 0;
const TX_BASE: u64 = 0x8000;
/// A test's bound on waiting for the device (a failure, not a pass, when hit).
const PATIENCE: Duration = Duration::from_secs(20);

/// A net device on an active pair of queues.
pub(super) struct Rig {
    pub rx: Driver,
    pub tx: Driver,
    pub net: Net,
    pub irq: Arc<VirtioInterrupt>,
    pub counters: Arc<NetCounters>,
    _notifier: Notifier,
    pub engine: idlework::Engine,
}

impl Rig {
    /// A device on `tap`, activated, its work run by `policy`.
    pub fn new(tap: Tap, policy: idlework::Policy) -> Rig {
        Rig::with_features(tap, policy, 1 << VIRTIO_F_VERSION_1)
    }

    /// The same, the driver accepting `features` (of those offered).
    pub fn with_features(tap: Tap, policy: idlework::Policy, features: u64) -> Rig {
        Rig::starting_at(tap, policy, features, 0)
    }

    /// The same, both queues' indices starting at `idx` (see [`Driver::starting_at`]).
    pub fn starting_at(tap: Tap, policy: idlework::Policy, features: u64, idx: u16) -> Rig {
        let engine = idlework::Engine::new(idlework::Config {
            policy,
            max_workers: 1,
            ..Default::default()
        })
        .unwrap();
        Rig::on_engine(tap, engine, features, idx)
    }

    /// The same on a given engine.
    pub fn on_engine(tap: Tap, engine: idlework::Engine, features: u64, idx: u16) -> Rig {
        let mem = Driver::memory();
        let rx = Driver::starting_at(mem.clone(), RX_BASE, QUEUE_SIZE, idx);
        let tx = Driver::starting_at(mem.clone(), TX_BASE, QUEUE_SIZE, idx);
        let mut host = NotifierBuilder::new().unwrap();
        let mut net = Net::new(tap, MAC, &engine, &mut host).unwrap();
        let notifier = host.start(test_threads()).unwrap();
        let irq = Arc::new(VirtioInterrupt::new(
            EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        ));
        net.activate(ActivateContext {
            mem,
            queues: vec![rx.queue(), tx.queue()],
            interrupt: irq.clone(),
            // As negotiated; a test may pass a feature the device supports
            // but does not offer (EVENT_IDX).
            features,
        })
        .unwrap();
        Rig {
            rx,
            tx,
            counters: net.counters(),
            net,
            irq,
            _notifier: notifier,
            engine,
        }
    }

    /// Offers one TX chain: a zero header and `frame`, split at `split`; notifies.
    pub fn send(&mut self, frame: &[u8], at: u64, split: usize) -> u16 {
        let head = self.offer_tx(frame, at, split);
        self.net.queue_notify(TX_QUEUE);
        head
    }

    /// Offers one TX chain as [`send`](Self::send) does, without notifying.
    pub fn offer_tx(&mut self, frame: &[u8], at: u64, split: usize) -> u16 {
        let mut bytes = vec![0u8; VNET_HDR_LEN];
        bytes.extend_from_slice(frame);
        self.tx.write(at, &bytes);
        let split = split.min(bytes.len());
        let mut bufs = vec![(at, split as u32)];
        if split < bytes.len() {
            bufs.push((at + split as u64, (bytes.len() - split) as u32));
        }
        self.tx.offer(&bufs, 0)
    }

    /// Posts `n` RX buffers of `len` bytes from `at` and notifies.
    pub fn post_rx(&mut self, n: usize, at: u64, len: u32) -> Vec<u16> {
        let heads = (0..n)
            .map(|i| {
                self.rx.offer(
                    &[(at + i as u64 * u64::from(len.next_multiple_of(64)), len)],
                    W,
                )
            })
            .collect();
        self.net.queue_notify(RX_QUEUE);
        heads
    }

    /// Posts one RX buffer of `len` bytes at `at` without notifying.
    pub fn post_rx_quietly(&mut self, at: u64, len: u32) -> u16 {
        self.rx.offer(&[(at, len)], W)
    }

    /// Waits (on the interrupt, bounded by [`PATIENCE`]) for `n` RX used entries.
    pub fn wait_rx(&mut self, n: usize) -> Vec<(u16, u32)> {
        wait_used(&mut self.rx, &self.irq, n, &self.counters)
    }

    /// Waits for `n` TX used entries.
    pub fn wait_tx(&mut self, n: usize) -> Vec<(u16, u32)> {
        wait_used(&mut self.tx, &self.irq, n, &self.counters)
    }

    /// Activates the device again (after a reset) on new, empty queues.
    pub fn activate_fresh_queues(&mut self) {
        let mem = self.rx.mem.clone();
        self.rx = Driver::new(mem.clone(), RX_BASE, QUEUE_SIZE);
        self.tx = Driver::new(mem.clone(), TX_BASE, QUEUE_SIZE);
        self.net
            .activate(ActivateContext {
                mem,
                queues: vec![self.rx.queue(), self.tx.queue()],
                interrupt: self.irq.clone(),
                features: 1 << VIRTIO_F_VERSION_1,
            })
            .unwrap();
    }

    pub fn count(&self, name: &str) -> u64 {
        let all = self.counters.snapshot();
        all.iter().find(|(n, _)| *n == name).unwrap().1
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.net.reset();
    }
}

/// Waits (on the interrupt, bounded by [`PATIENCE`]) for `n` used entries of `queue`.
fn wait_used(
    queue: &mut Driver,
    irq: &VirtioInterrupt,
    n: usize,
    counters: &NetCounters,
) -> Vec<(u16, u32)> {
    let epoll = Epoll::new().unwrap();
    let irqfd = std::os::fd::AsRawFd::as_raw_fd(irq.irqfd().expect("the test line is an irqfd"));
    epoll
        .ctl(
            ControlOperation::Add,
            irqfd,
            EpollEvent::new(EventSet::IN, 0),
        )
        .unwrap();
    let start = Instant::now();
    let mut used = Vec::new();
    loop {
        used.extend(queue.used_entries());
        if used.len() >= n {
            return used;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "only {} of {n} used entries arrived; counters {:?}",
            used.len(),
            counters.snapshot()
        );
        let mut ev = [EpollEvent::default()];
        let _ = epoll.wait(100, &mut ev);
        let _ = irq.irqfd().expect("the test line is an irqfd").read();
    }
}

/// A tap stand-in and the host's end of it.
fn pair() -> (Tap, UnixDatagram) {
    let (dev, host) = UnixDatagram::pair().unwrap();
    dev.set_nonblocking(true).unwrap();
    host.set_nonblocking(true).unwrap();
    (Tap::from_fd(dev.into(), "pair"), host)
}

/// VIRTQ_DESC_F_INDIRECT.
const INDIRECT: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_INDIRECT as u16;

/// Writes a one-entry indirect table at `table`: a buffer at `buf` of `len`
/// bytes with `flags`.
fn indirect_table(d: &Driver, table: u64, buf: u64, len: u32, flags: u16) {
    use vm_memory::{Bytes, GuestAddress};
    let desc = virtio_queue::desc::split::Descriptor::new(buf, len, flags, 0);
    d.mem.write_obj(desc, GuestAddress(table)).unwrap();
}

fn frame(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn host_recv(host: &UnixDatagram) -> Vec<u8> {
    let mut buf = vec![0; VNET_HDR_LEN + MAX_FRAME + 16];
    let n = host.recv(&mut buf).expect("a frame on the tap");
    buf.truncate(n);
    buf
}

fn host_send(host: &UnixDatagram, frame: &[u8]) -> std::io::Result<usize> {
    let mut bytes = vec![0u8; VNET_HDR_LEN];
    bytes[0] = 0x2; // DATA_VALID from the host: the device must not pass it on
    bytes.extend_from_slice(frame);
    host.send(&bytes)
}

#[test]
fn tx_frames_reach_the_tap_in_order_with_an_empty_header() {
    let (tap, host) = pair();
    let mut rig = Rig::new(tap, idlework::Policy::Inline);
    let frames: Vec<Vec<u8>> = [14, 60, 1514, MAX_FRAME]
        .iter()
        .map(|&n| frame(n, n as u8))
        .collect();
    let mut heads = Vec::new();
    for (i, f) in frames.iter().enumerate() {
        heads.push(rig.send(f, 0x10_0000 + i as u64 * 0x2_0000, 5 + i * 7));
    }
    for f in &frames {
        let got = host_recv(&host);
        assert_eq!(&got[..VNET_HDR_LEN], &[0; VNET_HDR_LEN]);
        assert_eq!(&got[VNET_HDR_LEN..], &f[..]);
    }
    let used: Vec<u16> = rig.tx.used_entries().into_iter().map(|(h, _)| h).collect();
    assert_eq!(used, heads);
    assert_eq!(rig.count("tx_frames"), 4);
    assert_eq!(
        rig.count("tx_bytes"),
        frames.iter().map(|f| f.len() as u64).sum::<u64>()
    );
}

#[test]
fn hostile_tx_chains_are_returned_unsent_and_counted() {
    let (tap, host) = pair();
    let mut rig = Rig::new(tap, idlework::Policy::Inline);
    // Above 64 KiB; a runt; a device-writable buffer; outside memory; a loop.
    rig.send(&frame(MAX_FRAME + 1, 1), 0x10_0000, 4096);
    rig.send(&frame(13, 2), 0x40_0000, 100);
    rig.tx.offer(&[(0x50_0000, 100)], W);
    rig.tx.offer(&[(0xdead_0000_0000, 100)], 0);
    rig.tx.offer_raw(
        &[(200, 0x50_0000, 64, 1, 201), (201, 0x50_1000, 64, 1, 200)],
        200,
    );
    // An indirect table holding a good frame: the feature was not offered.
    rig.tx.write(0x71_0000, &[0; VNET_HDR_LEN + 60]);
    indirect_table(&rig.tx, 0x70_0000, 0x71_0000, (VNET_HDR_LEN + 60) as u32, 0);
    rig.tx.offer_raw(&[(210, 0x70_0000, 16, INDIRECT, 0)], 210);
    rig.net.queue_notify(TX_QUEUE);
    let good = frame(100, 9);
    rig.send(&good, 0x60_0000, 50);
    assert_eq!(&host_recv(&host)[VNET_HDR_LEN..], &good[..]);
    assert!(
        host.recv(&mut [0; 16]).is_err(),
        "a bad chain reached the tap"
    );
    let used = rig.tx.used_entries();
    assert_eq!(used.len(), 7);
    assert!(used.iter().all(|&(_, len)| len == 0));
    // The indirect chain is refused by the queue's accounting, as block's are.
    assert_eq!((rig.count("tx_bad_chains"), rig.count("tx_frames")), (5, 1));
    assert_eq!(rig.count("tx_queue_indirect"), 1);
    assert!(!rig.irq.needs_reset());
}

#[test]
fn rx_frames_fill_guest_buffers() {
    for policy in [idlework::Policy::Inline, idlework::Policy::Workers] {
        let (tap, host) = pair();
        let mut rig = Rig::new(tap, policy);
        // One buffer split in two descriptors, one whole.
        let a = rig.rx.offer(&[(0x10_0000, 20), (0x11_0000, 1506)], W);
        let heads = rig.post_rx(1, 0x20_0000, 1526);
        let (f1, f2) = (frame(60, 1), frame(1514, 2));
        host_send(&host, &f1).unwrap();
        host_send(&host, &f2).unwrap();
        let used = rig.wait_rx(2);
        assert_eq!(
            used,
            vec![
                (a, (VNET_HDR_LEN + 60) as u32),
                (heads[0], (VNET_HDR_LEN + 1514) as u32)
            ]
        );
        let mut got = rig.rx.read(0x10_0000, 20);
        got.extend(rig.rx.read(0x11_0000, 52));
        let mut want = super::device::rx_header().to_vec();
        want.extend_from_slice(&f1);
        assert_eq!(got, want);
        assert_eq!(&rig.rx.read(0x20_0000 + 12, 1514), &f2);
        assert_eq!(rig.count("rx_frames"), 2);
    }
}

#[test]
fn a_frame_too_big_for_the_buffer_is_dropped_and_counted_and_the_buffer_kept() {
    let (tap, host) = pair();
    let mut rig = Rig::new(tap, idlework::Policy::Inline);
    let heads = rig.post_rx(1, 0x10_0000, 100);
    host_send(&host, &frame(1514, 1)).unwrap();
    let small = frame(60, 2);
    host_send(&host, &small).unwrap();
    assert_eq!(rig.wait_rx(1), vec![(heads[0], (VNET_HDR_LEN + 60) as u32)]);
    assert_eq!(&rig.rx.read(0x10_0000 + 12, 60), &small);
    assert_eq!(rig.count("rx_dropped_too_small"), 1);
}

#[test]
fn bad_rx_chains_are_returned_empty() {
    let (tap, host) = pair();
    let mut rig = Rig::new(tap, idlework::Policy::Inline);
    let readable = rig.rx.offer(&[(0x10_0000, 1526)], 0);
    let tiny = rig.rx.offer(&[(0x10_0000, 8)], W);
    let outside = rig.rx.offer(&[(0xdead_0000_0000, 1526)], W);
    indirect_table(&rig.rx, 0x30_0000, 0x31_0000, 1526, W);
    rig.rx.offer_raw(&[(100, 0x30_0000, 16, INDIRECT, 0)], 100);
    let good = rig.post_rx(1, 0x20_0000, 1526);
    host_send(&host, &frame(100, 3)).unwrap();
    let used = rig.wait_rx(5);
    assert_eq!(
        used,
        vec![
            (readable, 0),
            (tiny, 0),
            (outside, 0),
            (100, 0),
            (good[0], 112)
        ]
    );
    assert_eq!(rig.count("rx_bad_chains"), 3);
    assert_eq!(rig.count("rx_queue_indirect"), 1);
    assert_eq!(
        rig.rx.read(0x31_0000, 4),
        vec![0; 4],
        "the indirect buffer was written"
    );
    assert!(!rig.irq.needs_reset());
}

#[test]
fn without_rx_buffers_the_tap_is_not_read_until_the_guest_posts_some() {
    let (tap, host) = pair();
    let mut rig = Rig::new(tap, idlework::Policy::Workers);
    // The host floods until the tap's queue is full (bounded: it refuses more).
    let mut sent = Vec::new();
    for i in 0..10_000u32 {
        let f = frame(64, i as u8);
        match host_send(&host, &f) {
            Ok(_) => sent.push(f),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(!sent.is_empty() && sent.len() < 10_000);
    // Every frame is still there: posting buffers delivers all of them, in order.
    let n = sent.len().min(usize::from(QUEUE_SIZE));
    let heads = rig.post_rx(n, 0x10_0000, 1526);
    let used = rig.wait_rx(n);
    assert_eq!(used.iter().map(|u| u.0).collect::<Vec<_>>(), heads);
    for (i, f) in sent.iter().take(n).enumerate() {
        assert_eq!(&rig.rx.read(0x10_0000 + i as u64 * 1536 + 12, 64), f);
    }
    assert_eq!(
        rig.count("rx_dropped_too_small") + rig.count("rx_tap_errors"),
        0
    );
}

#[test]
fn reset_stops_rx_and_a_new_activation_resumes() {
    let (tap, host) = pair();
    let mut rig = Rig::new(tap, idlework::Policy::Workers);
    rig.net.reset();
    let f = frame(80, 5);
    host_send(&host, &f).unwrap();
    // Activate again on fresh queues; the waiting frame is delivered.
    rig.activate_fresh_queues();
    let heads = rig.post_rx(1, 0x10_0000, 1526);
    assert_eq!(rig.wait_rx(1), vec![(heads[0], 92)]);
    assert_eq!(rig.rx.read(0x10_0000 + 12, 80), f);
}

#[test]
fn with_event_idx_the_device_asks_for_the_next_notify_where_it_stopped() {
    let (tap, host) = pair();
    let engine = idlework::Engine::new(idlework::Config::default()).unwrap();
    let mut events = NotifierBuilder::new().unwrap();
    let offered = Net::new(pair().0, MAC, &engine, &mut events)
        .unwrap()
        .features();
    assert_ne!(offered & (1 << VIRTIO_RING_F_EVENT_IDX), 0);
    let mut rig = Rig::with_features(tap, idlework::Policy::Inline, EVENT_IDX);
    for i in 0..3u64 {
        rig.send(&frame(60, i as u8), 0x10_0000 + i * 0x1000, 20);
        host_recv(&host);
    }
    assert_eq!(rig.tx.avail_event(), 3);
    assert_eq!(rig.tx.used_entries().len(), 3);
}

#[test]
fn a_protocol_error_stops_the_queue_until_a_reset_as_on_block() {
    let (tap, host) = pair();
    let mut rig = Rig::new(tap, idlework::Policy::Inline);
    // An avail entry naming a head beyond the queue: the driver broke the protocol.
    rig.tx.offer_raw(&[], QUEUE_SIZE + 3);
    rig.net.queue_notify(TX_QUEUE);
    assert!(rig.irq.needs_reset());
    assert_eq!(rig.count("tx_queue_protocol_errors"), 1);
    // Until the reset the queue pops nothing more (run inline: the notify
    // returns after the work). Before the shared path, this frame was sent.
    rig.send(&frame(60, 1), 0x10_0000, 20);
    assert!(host.recv(&mut [0; 16]).is_err(), "sent on a broken queue");
    assert!(rig.tx.used_entries().is_empty());
    // After the reset a new activation is served.
    rig.net.reset();
    rig.irq.reset();
    rig.activate_fresh_queues();
    let good = frame(60, 2);
    let head = rig.send(&good, 0x10_0000, 20);
    assert_eq!(&host_recv(&host)[VNET_HDR_LEN..], &good[..]);
    assert_eq!(rig.tx.used_entries(), vec![(head, 0)]);
    assert!(!rig.irq.needs_reset());
}

/// The features a spec driver with EVENT_IDX accepts.
const EVENT_IDX: u64 = (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_RING_F_EVENT_IDX);
/// Ring index a wrap test starts at: 24 chains before the u16 wraps.
const NEAR_WRAP: u16 = u16::MAX - 23;

/// vring_need_event (virtio 1.x, 2.7.10; Linux's `virtio_ring.h`): whether
/// moving an index from `old` to `new` passed `event`, in wrapping arithmetic.
fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

/// virtio-drivers 0.13's `VirtQueue::should_notify` with EVENT_IDX (the test
/// guest's driver): a plain `>=`, not wrap-safe.
fn virtio_drivers_should_notify(avail_idx: u16, avail_event: u16) -> bool {
    avail_idx >= avail_event.wrapping_add(1)
}

/// Interrupts raised since the last call (the irqfd's count), without waiting.
fn interrupts(irq: &VirtioInterrupt) -> u64 {
    irq.irqfd()
        .expect("the test line is an irqfd")
        .read()
        .unwrap_or(0)
}

/// Waits (bounded by [`PATIENCE`]) for the device's interrupt; only it wakes this.
fn wait_interrupt(irq: &VirtioInterrupt) -> u64 {
    let fd = irq.irqfd().expect("the test line is an irqfd");
    let epoll = Epoll::new().unwrap();
    let raw = std::os::fd::AsRawFd::as_raw_fd(fd);
    epoll
        .ctl(ControlOperation::Add, raw, EpollEvent::new(EventSet::IN, 0))
        .unwrap();
    let mut ev = [EpollEvent::default()];
    let n = epoll.wait(PATIENCE.as_millis() as i32, &mut ev).unwrap();
    assert_eq!(n, 1, "no interrupt within {PATIENCE:?}");
    fd.read().unwrap()
}

/// Waits (bounded by [`PATIENCE`]) until counter `name` reaches `n`.
fn wait_count(rig: &Rig, name: &str, n: u64) {
    let start = Instant::now();
    while rig.count(name) < n {
        assert!(start.elapsed() < PATIENCE, "{name} stayed below {n}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn with_event_idx_a_spec_driver_gets_every_tx_kick_and_interrupt_across_the_wrap() {
    let (tap, host) = pair();
    let mut rig = Rig::starting_at(tap, idlework::Policy::Inline, EVENT_IDX, NEAR_WRAP);
    // Inline: each notify drains the ring, so before each frame the device is
    // idle and must want the next notify; the driver has seen every used entry
    // and asks for an interrupt at the next one.
    for i in 0..48u16 {
        rig.tx.set_used_event(rig.tx.used_seen());
        let f = frame(60 + usize::from(i), i as u8);
        let old = rig.tx.avail_idx();
        let head = rig.offer_tx(&f, 0x10_0000, 30);
        let new = rig.tx.avail_idx();
        let event = rig.tx.avail_event();
        assert!(
            need_event(event, new, old),
            "the idle device asked for no kick: avail_event {event}, avail {old} -> {new}"
        );
        // The test guest's rule agrees whenever the device idles where it stopped.
        assert!(virtio_drivers_should_notify(new, event));
        rig.net.queue_notify(TX_QUEUE);
        assert_eq!(&host_recv(&host)[VNET_HDR_LEN..], &f[..]);
        assert_eq!(rig.tx.used_entries(), vec![(head, 0)]);
        assert_eq!(interrupts(&rig.irq), 1, "frame {i}: no interrupt");
    }
    assert_eq!(rig.tx.avail_idx(), NEAR_WRAP.wrapping_add(48));
    // A driver that has not caught up gets one interrupt, not one per entry.
    rig.tx.set_used_event(rig.tx.used_seen());
    for i in 0..3u64 {
        rig.send(&frame(60, 7), 0x10_0000 + i * 0x1000, 30);
        host_recv(&host);
    }
    assert_eq!(rig.tx.used_entries().len(), 3);
    assert_eq!(interrupts(&rig.irq), 1);
    assert!(!rig.irq.needs_reset());
}

#[test]
fn reset_does_not_wait_for_queued_work_and_nothing_lands_after_it() {
    // `--policy idle --cpu-cap 0`: only this thread's vCPU could run the work.
    let (engine, mut vcpu) = vcpu_only_engine();
    let (tap, host) = pair();
    let mut rig = Rig::on_engine(tap, engine, 1 << VIRTIO_F_VERSION_1, 0);
    rig.tx.write(0x10_0000, &[0; VNET_HDR_LEN + 60]);
    rig.tx.offer(&[(0x10_0000, (VNET_HDR_LEN + 60) as u32)], 0);
    rig.net.queue_notify(TX_QUEUE);
    rig.net.reset(); // returns: the queued item has not started
    vcpu.run_idle(Duration::from_secs(10));
    assert!(
        rig.tx.used_entries().is_empty(),
        "a completion after the reset"
    );
    assert!(
        host.recv(&mut [0; 16]).is_err(),
        "a frame sent after the reset"
    );
    assert!(
        rig.engine.stats().total_ran() >= 1,
        "the queued item never ran"
    );
}

#[test]
fn with_event_idx_an_rx_ring_run_dry_asks_for_the_kick_that_refills_it_across_the_wrap() {
    let (tap, host) = pair();
    let mut rig = Rig::starting_at(tap, idlework::Policy::Inline, EVENT_IDX, NEAR_WRAP);
    for i in 0..48u16 {
        // A frame with no buffer posted: the device finds the ring empty,
        // asks for a notify and leaves the frame on the tap.
        let f = frame(60 + usize::from(i), i as u8);
        host_send(&host, &f).unwrap();
        wait_count(&rig, "rx_no_buffers", u64::from(i) + 1);
        rig.rx.set_used_event(rig.rx.used_seen());
        let old = rig.rx.avail_idx();
        let head = rig.post_rx_quietly(0x10_0000, 1526);
        let (new, event) = (rig.rx.avail_idx(), rig.rx.avail_event());
        assert!(
            need_event(event, new, old),
            "the starved device asked for no kick: avail_event {event}, avail {old} -> {new}"
        );
        rig.net.queue_notify(RX_QUEUE);
        wait_interrupt(&rig.irq);
        let len = (VNET_HDR_LEN + f.len()) as u32;
        assert_eq!(rig.rx.used_entries(), vec![(head, len)]);
        assert_eq!(rig.rx.read(0x10_0000 + VNET_HDR_LEN as u64, f.len()), f);
    }
    assert_eq!(rig.count("rx_frames"), 48);
}
