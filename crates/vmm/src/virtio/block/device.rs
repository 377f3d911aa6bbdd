//! The virtio-blk device: one request queue whose requests run as idlework
//! items, wherever the engine's policy places them.
//!
//! On a queue notify the notifying thread pops every available chain, parses
//! it ([`request::parse`]) and queues the request in the queue's
//! [`InFlight`] accounting, submitting an engine item whenever pending
//! requests outnumber queued items. An item takes the oldest pending request,
//! does the I/O ([`Disk`]), writes the status byte, puts the chain in the used
//! ring and raises the interrupt. A chain that is not a request is answered at
//! once: IOERR if its status byte is usable, otherwise it is returned with
//! nothing written; either way a log line says why. Reset, re-posted heads and
//! panics are [`InFlight`]'s business (see there): the completion path net
//! and rng share. Unlike theirs, block's requests are independent, so they
//! are not put in a lane: they run in parallel wherever the engine puts them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use idlework::{Item, Submitter};
use serde::Serialize;
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_queue::QueueT;
use vm_memory::GuestAddress;

use super::backend::{write_guest, Disk, DiskError};
use super::request::{self, Request, RequestKind, ID_BYTES, SECTOR_SIZE};
use crate::memory::GuestMemory;
use crate::virtio::in_flight::{InFlight, InFlightStats, Runner, Running};
use crate::virtio::{ActivateContext, VirtioDevice};

/// Queue size offered to the driver.
pub const QUEUE_SIZE: u16 = 256;
/// Cost hint given to the engine per KiB of request data when the disk does no
/// transform: a page-cache copy, about 0.3 µs per KiB on the machines we measured.
const COST_PER_KIB: Duration = Duration::from_nanos(300);

/// Counters of what the device did; read by tests and the bench.
#[derive(Debug, Default)]
pub struct BlockCounters {
    reads: AtomicU64,
    writes: AtomicU64,
    flushes: AtomicU64,
    get_ids: AtomicU64,
    errors: AtomicU64,
    malformed: AtomicU64,
    bytes: AtomicU64,
    /// The request queue's accounting (its refusals are reported with the counters).
    requests: Arc<InFlight<Request>>,
}

/// A snapshot of [`BlockCounters`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct BlockStats {
    /// IN requests completed OK.
    pub reads: u64,
    /// OUT requests completed OK.
    pub writes: u64,
    /// FLUSH requests completed OK.
    pub flushes: u64,
    /// GET_ID requests completed OK.
    pub get_ids: u64,
    /// Requests answered with IOERR or UNSUPP.
    pub errors: u64,
    /// Chains that were not requests (those answered with IOERR are also in `errors`).
    pub malformed: u64,
    /// Data bytes moved.
    pub bytes: u64,
    /// What the request queue's in-flight accounting refused or dropped.
    pub queue: InFlightStats,
}

impl BlockCounters {
    /// The current values.
    pub fn snapshot(&self) -> BlockStats {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        BlockStats {
            reads: g(&self.reads),
            writes: g(&self.writes),
            flushes: g(&self.flushes),
            get_ids: g(&self.get_ids),
            errors: g(&self.errors),
            malformed: g(&self.malformed),
            bytes: g(&self.bytes),
            queue: self.requests.stats(),
        }
    }
}

/// Why a well-formed request failed.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("request type not supported")]
    Unsupported,
    #[error("write to a read-only disk")]
    ReadOnly,
    #[error(transparent)]
    Disk(#[from] DiskError),
}

/// What the device's requests need, whichever activation queued them.
struct Shared {
    disk: Arc<Disk>,
    counters: Arc<BlockCounters>,
    id: [u8; ID_BYTES as usize],
}

/// virtio-blk.
pub struct Block {
    shared: Arc<Shared>,
    work: Submitter,
    /// The request queue's accounting; lives as long as the device, so
    /// runners queued before a reset stay counted.
    requests: Arc<InFlight<Request>>,
    /// Guest memory while active (for answering malformed chains).
    mem: Option<Arc<GuestMemory>>,
    config: [u8; 8],
}

impl Block {
    /// A device serving `disk`, whose requests run through `work`. `id` is
    /// the GET_ID answer (truncated to 20 bytes).
    pub fn new(disk: Disk, id: &str, work: Submitter) -> Self {
        let mut id_bytes = [0u8; ID_BYTES as usize];
        let n = id.len().min(id_bytes.len());
        id_bytes[..n].copy_from_slice(&id.as_bytes()[..n]);
        // Config space: capacity in 512-byte sectors (the only field we offer).
        let config = (disk.size() / SECTOR_SIZE).to_le_bytes();
        let counters = Arc::new(BlockCounters::default());
        Block {
            requests: counters.requests.clone(),
            shared: Arc::new(Shared {
                disk: Arc::new(disk),
                counters,
                id: id_bytes,
            }),
            work,
            mem: None,
            config,
        }
    }

    /// The device's counters.
    pub fn counters(&self) -> Arc<BlockCounters> {
        self.shared.counters.clone()
    }

    /// The backing disk.
    pub fn disk(&self) -> &Arc<Disk> {
        &self.shared.disk
    }

    /// The request queue's in-flight accounting (tests, fuzzers, the report).
    pub fn requests(&self) -> &Arc<InFlight<Request>> {
        &self.requests
    }
}

impl VirtioDevice for Block {
    fn driver_waits(&self) -> bool {
        true
    }

    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn features(&self) -> u64 {
        let mut f = (1u64 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_BLK_F_FLUSH);
        if self.shared.disk.read_only() {
            f |= 1 << VIRTIO_BLK_F_RO;
        }
        f
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let src = usize::try_from(offset)
            .ok()
            .and_then(|o| self.config.get(o..o.checked_add(data.len())?));
        match src {
            Some(src) => data.copy_from_slice(src),
            None => data.fill(0),
        }
    }

    fn activate(&mut self, mut ctx: ActivateContext) -> Result<(), String> {
        let queue = ctx
            .queues
            .pop()
            .filter(|q| q.ready())
            .ok_or("request queue not ready")?;
        self.requests
            .activate(queue, ctx.mem.clone(), ctx.interrupt);
        self.mem = Some(ctx.mem);
        Ok(())
    }

    fn queue_notify(&mut self, _queue: u16) {
        let Some(mem) = self.mem.clone() else {
            return;
        };
        // pop() stops at the ring's end or at a protocol error (the device
        // then asked for a reset).
        while let Some(chain) = self.requests.pop() {
            let head = chain.head_index();
            match request::parse(chain) {
                Ok(req) => {
                    let cost = cost_hint(&req);
                    if let Some(runner) = self.requests.enqueue(head, req) {
                        submit(&self.shared, &self.work, runner, cost);
                    }
                }
                Err((err, status)) => {
                    let c = &self.shared.counters;
                    c.malformed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!("virtio-blk: bad request (head {head}): {err}");
                    // Answer IOERR where the status byte is usable (it is then
                    // the one byte written); otherwise return the chain untouched.
                    let used = match status {
                        Some(addr) => {
                            c.errors.fetch_add(1, Ordering::Relaxed);
                            write_status(&mem, addr, VIRTIO_BLK_S_IOERR as u8);
                            1
                        }
                        None => 0,
                    };
                    self.requests.complete_now(head, used);
                }
            }
        }
    }

    fn reset(&mut self) {
        // Requests not started are dropped; running ones still write guest
        // memory, which the driver may reuse once reset returns: wait for those.
        self.requests.reset();
        self.mem = None;
    }
}

fn cost_hint(req: &Request) -> Duration {
    let kib = u64::from(req.data_len).div_ceil(1024).max(1) as u32;
    COST_PER_KIB * kib
}

/// Hands one runner to the engine: it runs the oldest pending request.
fn submit(shared: &Arc<Shared>, work: &Submitter, runner: Runner<Request>, cost: Duration) {
    let shared = shared.clone();
    let item = Item::from_fn(move || {
        if let Some(running) = runner.take() {
            shared.execute(running);
        }
    })
    .with_cost_hint(cost);
    if let Err(e) = work.submit(item) {
        // The engine is shutting down with the VM: run the request here
        // rather than leave the guest waiting for it.
        e.into_item().run_to_completion();
    }
}

fn write_status(mem: &GuestMemory, addr: GuestAddress, status: u8) {
    if let Err(e) = write_guest(mem, addr, &[status]) {
        tracing::warn!("virtio-blk: writing status: {e}");
    }
}

impl Shared {
    /// Runs one request to completion (on whatever thread the engine chose).
    fn execute(&self, running: Running<Request>) {
        let req = running.request();
        let mem = running.mem();
        let (status, written) = match self.perform(mem, req) {
            Ok(written) => {
                self.count_ok(req.kind, req.data_len);
                (VIRTIO_BLK_S_OK, written)
            }
            Err(failure) => {
                self.counters.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    "virtio-blk: {:?} at sector {}: {failure}",
                    req.kind,
                    req.sector
                );
                let status = match failure {
                    Failure::Unsupported => VIRTIO_BLK_S_UNSUPP,
                    Failure::ReadOnly | Failure::Disk(_) => VIRTIO_BLK_S_IOERR,
                };
                (status, 0)
            }
        };
        write_status(mem, req.status, status as u8);
        running.complete(written + 1);
    }

    /// Does the request's I/O; returns the bytes written into guest buffers.
    fn perform(&self, mem: &GuestMemory, req: &Request) -> Result<u32, Failure> {
        match req.kind {
            RequestKind::In => {
                self.disk.read(mem, req.sector, &req.data, req.data_len)?;
                Ok(req.data_len)
            }
            RequestKind::Out if self.disk.read_only() => Err(Failure::ReadOnly),
            RequestKind::Out => {
                self.disk.write(mem, req.sector, &req.data, req.data_len)?;
                Ok(0)
            }
            RequestKind::Flush => {
                self.disk.flush()?;
                Ok(0)
            }
            RequestKind::GetId => {
                // parse() checked the buffers hold at least ID_BYTES and lie in memory.
                let mut written = 0;
                let mut id = &self.id[..];
                for seg in &req.data {
                    let (now, rest) = id.split_at((seg.len as usize).min(id.len()));
                    write_guest(mem, seg.addr, now)?;
                    written += now.len() as u32;
                    id = rest;
                }
                Ok(written)
            }
            RequestKind::Unsupported(_) => Err(Failure::Unsupported),
        }
    }

    fn count_ok(&self, kind: RequestKind, bytes: u32) {
        let c = &self.counters;
        let counter = match kind {
            RequestKind::In => &c.reads,
            RequestKind::Out => &c.writes,
            RequestKind::Flush => &c.flushes,
            RequestKind::GetId => &c.get_ids,
            RequestKind::Unsupported(_) => return,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        c.bytes.fetch_add(bytes.into(), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::block::backend::Storage;
    use crate::virtio::block::request::tests::{TestQueue, AVAIL, QSIZE, USED};
    use crate::virtio::test_engines::{inline_engine, vcpu_only_engine};
    use crate::virtio::VirtioInterrupt;
    use std::sync::Mutex;
    use virtio_bindings::virtio_blk::VIRTIO_BLK_T_GET_ID;
    use virtio_bindings::virtio_ring::{
        VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
    };
    use virtio_queue::Queue;
    use vm_memory::Bytes;
    use vmm_sys_util::eventfd::EventFd;

    const N: u16 = VRING_DESC_F_NEXT as u16;
    const W: u16 = VRING_DESC_F_WRITE as u16;

    fn image() -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        file.as_file().set_len(1 << 20).unwrap();
        file
    }

    /// Activates `block` on `q`'s queue.
    fn activate(block: &mut Block, q: &TestQueue) -> Arc<VirtioInterrupt> {
        let interrupt = Arc::new(VirtioInterrupt::new(
            EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        ));
        block
            .activate(ActivateContext {
                mem: q.mem.clone(),
                queues: vec![Queue::try_from(q.queue.state()).unwrap()],
                interrupt: interrupt.clone(),
                features: 1 << VIRTIO_F_VERSION_1,
            })
            .unwrap();
        interrupt
    }

    /// An active device on `q`'s queue whose requests run inline.
    fn active_block(q: &TestQueue) -> (Block, Arc<VirtioInterrupt>, tempfile::NamedTempFile) {
        let file = image();
        let disk = Disk::open(file.path(), false, Default::default()).unwrap();
        let engine = inline_engine();
        let mut block = Block::new(disk, "test", engine.submitter());
        let interrupt = activate(&mut block, q);
        (block, interrupt, file)
    }

    /// Runs `f` on another thread; fails the test if it has not returned in 10 s.
    fn returns<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(f()).unwrap());
        rx.recv_timeout(std::time::Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("{what} hung"))
    }

    fn used_idx(q: &TestQueue) -> u16 {
        q.mem.read_obj(GuestAddress(USED + 2)).unwrap()
    }

    /// A GET_ID chain at descriptors head..head+3 (own buffers per head).
    fn get_id_at(q: &mut TestQueue, head: u16) {
        let off = u64::from(head) * 0x100;
        q.header(0x10_0000 + off, VIRTIO_BLK_T_GET_ID, 0);
        q.offer(
            &[
                (head, 0x10_0000 + off, 16, N, head + 1),
                (head + 1, 0x20_0000 + off, 20, N | W, head + 2),
                (head + 2, 0x30_0000 + off, 1, W, 0),
            ],
            head,
        );
    }

    /// A 512-byte read of `sector` at descriptors 0..3.
    fn read_at(q: &mut TestQueue, sector: u64) {
        q.header(
            0x10_0000,
            virtio_bindings::virtio_blk::VIRTIO_BLK_T_IN,
            sector,
        );
        q.offer(
            &[
                (0, 0x10_0000, 16, N, 1),
                (1, 0x20_0000, 512, N | W, 2),
                (2, 0x30_0000, 1, W, 0),
            ],
            0,
        );
    }

    /// Storage whose reads block until the test releases them.
    struct GatedStorage {
        entered: std::sync::mpsc::Sender<()>,
        release: Mutex<std::sync::mpsc::Receiver<()>>,
    }

    struct Gate {
        entered: std::sync::mpsc::Receiver<()>,
        release: std::sync::mpsc::Sender<()>,
    }

    impl GatedStorage {
        fn disk() -> (Gate, Disk) {
            let (entered_tx, entered) = std::sync::mpsc::channel();
            let (release, release_rx) = std::sync::mpsc::channel();
            let storage = GatedStorage {
                entered: entered_tx,
                release: Mutex::new(release_rx),
            };
            let disk = Disk::with_storage(Box::new(storage), 1 << 20, false, Default::default());
            (Gate { entered, release }, disk)
        }
    }

    impl Storage for GatedStorage {
        fn read_at(&self, buf: &mut [u8], _offset: u64) -> std::io::Result<usize> {
            self.entered.send(()).unwrap();
            self.release.lock().unwrap().recv().unwrap();
            buf.fill(0);
            Ok(buf.len())
        }
        fn write_at(&self, buf: &[u8], _offset: u64) -> std::io::Result<usize> {
            Ok(buf.len())
        }
        fn sync_data(&self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Storage that panics on every read (a bug in a request's path).
    struct PanickingStorage;

    impl Storage for PanickingStorage {
        fn read_at(&self, _buf: &mut [u8], _offset: u64) -> std::io::Result<usize> {
            panic!("injected panic in a request");
        }
        fn write_at(&self, buf: &[u8], _offset: u64) -> std::io::Result<usize> {
            Ok(buf.len())
        }
        fn sync_data(&self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A GET_ID chain at descriptors 0..3.
    fn get_id(q: &mut TestQueue, head: u16) {
        q.header(0x10_0000, VIRTIO_BLK_T_GET_ID, 0);
        q.offer(
            &[
                (0, 0x10_0000, 16, N, 1),
                (1, 0x20_0000, 20, N | W, 2),
                (2, 0x30_0000, 1, W, 0),
            ],
            head,
        );
    }

    #[test]
    fn a_head_index_beyond_the_queue_asks_for_a_reset() {
        let mut q = TestQueue::new();
        let (mut block, irq, _file) = active_block(&q);
        get_id(&mut q, 0);
        block.queue_notify(0);
        assert!(!irq.needs_reset());
        // The used ring cannot name head QSIZE: the driver must be told.
        get_id(&mut q, QSIZE);
        block.queue_notify(0);
        assert!(irq.needs_reset());
        assert_ne!(
            irq.status() & virtio_bindings::virtio_mmio::VIRTIO_MMIO_INT_CONFIG,
            0
        );
        block.reset();
    }

    #[test]
    fn a_reset_does_not_wait_for_a_request_only_the_resetting_vcpu_could_run() {
        // Issue 9: under --policy idle --cpu-cap 0 with one vCPU, the queued
        // request can run only on the vCPU that is now resetting the device.
        let mut q = TestQueue::new();
        let (engine, mut vcpu) = vcpu_only_engine();
        let file = image();
        let disk = Disk::open(file.path(), false, Default::default()).unwrap();
        let mut block = Block::new(disk, "test", engine.submitter());
        activate(&mut block, &q);
        get_id(&mut q, 0);
        q.mem.write_obj(0xffu8, GuestAddress(0x30_0000)).unwrap();
        block.queue_notify(0);
        assert_eq!(block.requests().queued_runners(), 1);
        let requests = block.requests().clone();
        let block = returns("reset with a queued request", move || {
            block.reset();
            block
        });
        assert_eq!(requests.stats().dropped_by_reset, 1);
        // The vCPU runs the queued item later: a no-op, nothing lands.
        vcpu.run_idle(std::time::Duration::from_secs(1));
        assert_eq!(requests.queued_runners(), 0);
        assert_eq!(used_idx(&q), 0);
        assert_eq!(q.mem.read_obj::<u8>(GuestAddress(0x30_0000)).unwrap(), 0xff);
        assert_eq!(block.counters().snapshot().get_ids, 0);
    }

    #[test]
    fn queued_items_stay_bounded_however_often_the_guest_resets() {
        let (engine, mut vcpu) = vcpu_only_engine();
        let file = image();
        let disk = Disk::open(file.path(), false, Default::default()).unwrap();
        let mut block = Block::new(disk, "test", engine.submitter());
        for _ in 0..100 {
            let mut q = TestQueue::new();
            activate(&mut block, &q);
            for head in [0, 3, 6, 9] {
                get_id_at(&mut q, head);
            }
            block.queue_notify(0);
            block.reset();
        }
        // One runner per request the last activation queued, not 400.
        assert_eq!(block.requests().queued_runners(), 4);
        // Requests of a new activation are taken by the runners still queued.
        let mut q = TestQueue::new();
        activate(&mut block, &q);
        get_id_at(&mut q, 0);
        block.queue_notify(0);
        assert_eq!(block.requests().queued_runners(), 4);
        vcpu.run_idle(std::time::Duration::from_secs(1));
        assert_eq!(block.counters().snapshot().get_ids, 1);
        assert_eq!(used_idx(&q), 1);
        block.reset();
    }

    #[test]
    fn a_head_made_available_again_while_in_flight_asks_for_a_reset() {
        let mut q = TestQueue::new();
        let (engine, _vcpu) = vcpu_only_engine();
        let file = image();
        let disk = Disk::open(file.path(), false, Default::default()).unwrap();
        let mut block = Block::new(disk, "test", engine.submitter());
        let irq = activate(&mut block, &q);
        get_id(&mut q, 0);
        block.queue_notify(0);
        assert!(!irq.needs_reset());
        for _ in 0..10 {
            get_id(&mut q, 0);
        }
        block.queue_notify(0);
        assert!(irq.needs_reset());
        // Nothing was queued for the re-posted copies.
        assert_eq!(block.requests().in_flight(), 1);
        assert_eq!(block.requests().queued_runners(), 1);
        assert_eq!(block.requests().stats().protocol_errors, 1);
        block.reset();
    }

    #[test]
    fn a_reset_waits_for_a_running_request_and_drops_its_completion() {
        let mut q = TestQueue::new();
        let (gate, disk) = GatedStorage::disk();
        let engine = idlework::Engine::new(idlework::Config {
            policy: idlework::Policy::Workers,
            max_workers: 1,
            ..Default::default()
        })
        .unwrap();
        let mut block = Block::new(disk, "test", engine.submitter());
        activate(&mut block, &q);
        read_at(&mut q, 0);
        block.queue_notify(0);
        gate.entered.recv().unwrap(); // the worker is inside pread
        let requests = block.requests().clone();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let resetter = std::thread::spawn(move || {
            block.reset();
            done_tx.send(()).unwrap();
            block
        });
        // The reset cannot return while the read runs: release the read, then it does.
        while requests.stats().dropped_by_reset == 0 && requests.active() {
            std::thread::yield_now();
        }
        assert!(
            done_rx.try_recv().is_err(),
            "reset returned during the read"
        );
        gate.release.send(()).unwrap();
        done_rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("reset hung");
        let _block = resetter.join().unwrap();
        // The completion came after the reset began: dropped.
        assert_eq!(used_idx(&q), 0);
        assert_eq!(requests.stats().stale_completions, 1);
    }

    #[test]
    fn a_panicking_request_neither_leaks_its_count_nor_hangs_reset() {
        let mut q = TestQueue::new();
        let disk = Disk::with_storage(
            Box::new(PanickingStorage),
            1 << 20,
            false,
            Default::default(),
        );
        let engine = inline_engine();
        let mut block = Block::new(disk, "test", engine.submitter());
        let irq = activate(&mut block, &q);
        read_at(&mut q, 0);
        block.queue_notify(0);
        assert_eq!(engine.stats().panics(), 1);
        // The request will never complete: the driver is told to reset.
        assert!(irq.needs_reset());
        assert_eq!(block.requests().stats().abandoned, 1);
        returns("reset after a panicking request", move || block.reset());
    }

    #[test]
    fn indirect_descriptors_are_refused() {
        let mut q = TestQueue::new();
        let (mut block, irq, _file) = active_block(&q);
        q.header(0x10_0000, VIRTIO_BLK_T_GET_ID, 0);
        // An indirect table at 0x40_0000 holding a GET_ID chain.
        for (i, (addr, len, flags, next)) in [
            (0x10_0000u64, 16u32, N, 1u16),
            (0x20_0000, 20, N | W, 2),
            (0x30_0000, 1, W, 0),
        ]
        .into_iter()
        .enumerate()
        {
            let d = virtio_queue::desc::split::Descriptor::new(addr, len, flags, next);
            q.mem
                .write_obj(d, GuestAddress(0x40_0000 + 16 * i as u64))
                .unwrap();
        }
        q.offer(&[(0, 0x40_0000, 48, VRING_DESC_F_INDIRECT as u16, 0)], 0);
        block.queue_notify(0);
        assert_eq!(used_idx(&q), 1, "the chain is returned");
        assert_eq!(block.counters().snapshot().get_ids, 0, "but not run");
        assert_eq!(block.requests().stats().indirect, 1);
        assert!(!irq.needs_reset());
        block.reset();
    }

    #[test]
    fn an_avail_index_beyond_the_queue_asks_for_a_reset() {
        let mut q = TestQueue::new();
        let (mut block, irq, _file) = active_block(&q);
        get_id(&mut q, 0);
        // The driver claims QSIZE + 1 new chains at once.
        q.mem.write_obj(QSIZE + 1, GuestAddress(AVAIL + 2)).unwrap();
        block.queue_notify(0);
        assert!(irq.needs_reset());
        assert_eq!(block.counters().snapshot().get_ids, 0);
        block.reset();
    }
}
