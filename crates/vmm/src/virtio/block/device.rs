//! The virtio-blk device: one request queue whose requests run as idlework
//! items, wherever the engine's policy places them.
//!
//! On a queue notify the notifying thread pops every available chain, parses
//! it ([`request::parse`]) and submits one item per request. The item does
//! the I/O ([`Disk`]), writes the status byte, puts the chain in the used ring
//! and raises the interrupt. A chain that is not a request is answered at
//! once: IOERR if its status byte is usable, otherwise it is returned with
//! nothing written; either way a log line says why.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use idlework::{Item, Submitter};
use serde::Serialize;
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::GuestAddress;

use super::backend::{write_guest, Disk, DiskError};
use super::request::{self, Request, RequestKind, ID_BYTES, SECTOR_SIZE};
use crate::memory::GuestMemory;
use crate::virtio::{ActivateContext, VirtioDevice, VirtioInterrupt};

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

/// State shared by the device and its in-flight requests while active.
struct Active {
    mem: Arc<GuestMemory>,
    queue: Mutex<Queue>,
    interrupt: Arc<VirtioInterrupt>,
    disk: Arc<Disk>,
    counters: Arc<BlockCounters>,
    id: [u8; ID_BYTES as usize],
    /// Requests submitted and not yet completed; reset waits for zero.
    in_flight: Mutex<usize>,
    drained: Condvar,
}

/// virtio-blk.
pub struct Block {
    disk: Arc<Disk>,
    id: [u8; ID_BYTES as usize],
    work: Submitter,
    counters: Arc<BlockCounters>,
    active: Option<Arc<Active>>,
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
        Block {
            disk: Arc::new(disk),
            id: id_bytes,
            work,
            counters: Arc::default(),
            active: None,
            config,
        }
    }

    /// The device's counters.
    pub fn counters(&self) -> Arc<BlockCounters> {
        self.counters.clone()
    }

    /// The backing disk.
    pub fn disk(&self) -> &Arc<Disk> {
        &self.disk
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn features(&self) -> u64 {
        let mut f = (1u64 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_BLK_F_FLUSH);
        if self.disk.read_only() {
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
        self.active = Some(Arc::new(Active {
            mem: ctx.mem,
            queue: Mutex::new(queue),
            interrupt: ctx.interrupt,
            disk: self.disk.clone(),
            counters: self.counters.clone(),
            id: self.id,
            in_flight: Mutex::new(0),
            drained: Condvar::new(),
        }));
        Ok(())
    }

    fn queue_notify(&mut self, _queue: u16) {
        let Some(active) = &self.active else {
            return;
        };
        loop {
            let chain = {
                let mut q = lock(&active.queue);
                match q.iter(active.mem.as_ref()) {
                    Ok(mut avail) => avail.next(),
                    Err(e) => {
                        // E.g. the avail index moved by more than the queue size:
                        // nothing on the ring can be trusted until a reset.
                        tracing::warn!("virtio-blk: available ring unusable: {e}");
                        active.interrupt.signal_needs_reset();
                        None
                    }
                }
            };
            let Some(chain) = chain else { break };
            let head = chain.head_index();
            match request::parse(chain) {
                Ok(req) => submit(active, &self.work, req),
                Err((err, status)) => {
                    active.counters.malformed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!("virtio-blk: bad request (head {head}): {err}");
                    // Answer IOERR where the status byte is usable (it is then
                    // the one byte written); otherwise return the chain untouched.
                    let status = status.map(|addr| (addr, VIRTIO_BLK_S_IOERR as u8));
                    if status.is_some() {
                        active.counters.errors.fetch_add(1, Ordering::Relaxed);
                    }
                    active.complete(head, status, u32::from(status.is_some()));
                }
            }
        }
    }

    fn reset(&mut self) {
        if let Some(active) = self.active.take() {
            // Requests in flight still write guest memory; the driver may reuse
            // it once reset returns, so wait for them.
            let mut n = lock(&active.in_flight);
            while *n > 0 {
                n = active.drained.wait(n).unwrap_or_else(|p| p.into_inner());
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Hands one request to the engine.
fn submit(active: &Arc<Active>, work: &Submitter, req: Request) {
    *lock(&active.in_flight) += 1;
    let kib = u64::from(req.data_len).div_ceil(1024).max(1) as u32;
    let cost = COST_PER_KIB * kib;
    let item_active = active.clone();
    let item = Item::from_fn(move || item_active.execute(req)).with_cost_hint(cost);
    if let Err(e) = work.submit(item) {
        // The engine is shutting down with the VM: run the request here
        // rather than leave the guest waiting for it.
        e.into_item().run_to_completion();
    }
}

impl Active {
    /// Runs one request to completion (on whatever thread the engine chose).
    fn execute(&self, req: Request) {
        let (status, written) = match self.perform(&req) {
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
        self.complete(req.head, Some((req.status, status as u8)), written + 1);
        let mut n = lock(&self.in_flight);
        *n -= 1;
        if *n == 0 {
            self.drained.notify_all();
        }
    }

    /// Does the request's I/O; returns the bytes written into guest buffers.
    fn perform(&self, req: &Request) -> Result<u32, Failure> {
        match req.kind {
            RequestKind::In => {
                self.disk
                    .read(&self.mem, req.sector, &req.data, req.data_len)?;
                Ok(req.data_len)
            }
            RequestKind::Out if self.disk.read_only() => Err(Failure::ReadOnly),
            RequestKind::Out => {
                self.disk
                    .write(&self.mem, req.sector, &req.data, req.data_len)?;
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
                    write_guest(&self.mem, seg.addr, now)?;
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

    /// Writes the status byte (if any), returns the chain and interrupts.
    fn complete(&self, head: u16, status: Option<(GuestAddress, u8)>, used_len: u32) {
        if let Some((addr, status)) = status {
            if let Err(e) = write_guest(&self.mem, addr, &[status]) {
                tracing::warn!("virtio-blk: writing status: {e}");
            }
        }
        let notify = {
            let mut q = lock(&self.queue);
            if let Err(e) = q.add_used(self.mem.as_ref(), head, used_len) {
                // A head the used ring cannot name (index >= queue size): the
                // driver would wait for it forever. Tell it to reset.
                tracing::warn!("virtio-blk: returning chain {head}: {e}");
                drop(q);
                self.interrupt.signal_needs_reset();
                return;
            }
            q.needs_notification(self.mem.as_ref()).unwrap_or(true)
        };
        if notify {
            self.interrupt.signal_used_queue();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::block::request::tests::{TestQueue, AVAIL, QSIZE};
    use virtio_bindings::virtio_blk::VIRTIO_BLK_T_GET_ID;
    use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use vm_memory::Bytes;
    use vmm_sys_util::eventfd::EventFd;

    const N: u16 = VRING_DESC_F_NEXT as u16;
    const W: u16 = VRING_DESC_F_WRITE as u16;

    /// An active device on `q`'s queue whose requests run inline.
    fn active_block(q: &TestQueue) -> (Block, Arc<VirtioInterrupt>, tempfile::NamedTempFile) {
        let file = tempfile::NamedTempFile::new().unwrap();
        file.as_file().set_len(1 << 20).unwrap();
        let disk = Disk::open(file.path(), false, Default::default()).unwrap();
        let engine = idlework::Engine::new(idlework::Config {
            policy: idlework::Policy::Inline,
            max_workers: 0,
            ..Default::default()
        })
        .unwrap();
        let mut block = Block::new(disk, "test", engine.submitter());
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
        (block, interrupt, file)
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
