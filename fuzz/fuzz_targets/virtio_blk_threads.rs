//! The virtio-blk device with its requests on worker threads, while the
//! "vCPU" (this thread) interleaves notifies, resets, re-activations,
//! re-posted heads and interrupt acks: the races of issue 9's containment
//! rules, which the inline targets cannot reach.
//!
//! Input: byte 0 = number of op bytes `n` (at most 64), then the `n` op
//! bytes, then a `nightshift_fuzz::QueueImage` (the queue; its size is forced
//! to at least 8 entries). Each op byte is `op = b & 7`, `arg = b >> 3`:
//!
//! | op | action |
//! |----|--------|
//! | 0  | QUEUE_NOTIFY |
//! | 1  | driver reset (STATUS = 0); checks no completion lands afterwards |
//! | 2  | bring the device up again (after a reset) |
//! | 3  | move avail.idx forward by `arg % 8 + 1` (re-posts whatever heads the ring holds) |
//! | 4  | INTERRUPT_ACK |
//! | 5  | busy-wait `arg * SPIN_UNIT` spins, then yield if `arg` is odd (lets workers run) |
//! | 6  | point avail slot `arg % size` at head `arg` |
//! | 7  | next fdatasync fails (sticky from then on) |
//!
//! Checked, besides no panic and no hang (libFuzzer's timeout): queued
//! engine items and in-flight heads never exceed the queue size; a reset
//! returns while items are queued; after a reset returned, the used ring does
//! not move until the device is brought up again (no completion lands after
//! its reset), even once every queued item has run; after a failed flush, no
//! flush or write reports success; the final reset leaves nothing running.

#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use nightshift_fuzz::*;
use vm_memory::{Bytes, GuestAddress};
use vmm::virtio::mmio::MmioTransport;

const MAX_OPS: usize = 64;
/// Requests that may have passed the sticky-failure check before the failure
/// was recorded and count their success afterwards: one per worker.
const SLACK: u64 = 2;
/// Spins per unit of op 5's argument. A spin (`pause`) is ~25 ns here, so op
/// 5 waits up to ~120 µs: longer than a worker takes to wake and run a few
/// requests, so every interleaving stays reachable. (It was 500, up to
/// ~0.4 ms per op: a third of the target's time went into spinning.)
const SPIN_UNIT: u32 = 150;

fn engine() -> &'static idlework::Engine {
    static ENGINE: OnceLock<idlework::Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        idlework::Engine::new(idlework::Config {
            policy: idlework::Policy::Workers,
            max_workers: 2,
            items_per_worker: 1,
            thread_name: "fuzz-worker".into(),
            ..Default::default()
        })
        .expect("worker engine")
    })
}

fn used_idx(mem: &vmm::memory::GuestMemory) -> u16 {
    mem.read_obj(GuestAddress(USED + 2)).unwrap_or(0)
}

/// Waits (bounded) until no runner of the queue is waiting in the engine.
fn drain(
    block: &std::sync::Arc<vmm::virtio::in_flight::InFlight<vmm::virtio::block::request::Request>>,
) {
    let until = Instant::now() + Duration::from_secs(5);
    while block.queued_runners() > 0 {
        assert!(Instant::now() < until, "queued items never ran");
        std::thread::yield_now();
    }
}

fuzz_target!(|data: &[u8]| {
    let mem = guest_memory();
    let n = usize::from(data.first().copied().unwrap_or(0)).min(MAX_OPS);
    let ops = data.get(1..).unwrap_or(&[]);
    let (ops, image) = ops.split_at(n.min(ops.len()));
    let mut input = image.to_vec();
    if let Some(b) = input.first_mut() {
        *b = (*b % 9).max(3);
    }
    let img = QueueImage::load(&mem, &input);
    let size = img.size;
    let (disk, faults) = faulty_scratch_disk();
    let block = vmm::virtio::block::Block::new(disk, DISK_ID, engine().submitter());
    let requests = block.requests().clone();
    let counters = block.counters();
    let irq = interrupt();
    let mut t = MmioTransport::new(Box::new(block), mem.clone(), irq.clone());
    bring_up(&mut t, size);
    let mut active = true;
    let mut failed_at: Option<vmm::virtio::block::BlockStats> = None;
    for &b in ops {
        let (op, arg) = (b & 7, b >> 3);
        let started = Instant::now();
        match op {
            0 => write_reg(&mut t, reg::QUEUE_NOTIFY, 0),
            1 => {
                write_reg(&mut t, reg::STATUS, 0);
                assert_eq!(t.status(), 0);
                active = false;
                // Every item still queued runs now; none may complete into the old ring.
                let frozen = used_idx(&mem);
                drain(&requests);
                assert_eq!(
                    used_idx(&mem),
                    frozen,
                    "a completion landed after its reset"
                );
            }
            2 if !active => {
                mem.write_obj(0u16, GuestAddress(USED + 2)).unwrap();
                mem.write_obj(0u16, GuestAddress(AVAIL + 2)).unwrap();
                bring_up(&mut t, size);
                active = true;
            }
            3 => {
                let idx: u16 = mem.read_obj(GuestAddress(AVAIL + 2)).unwrap_or(0);
                let step = u16::from(arg % 8) + 1;
                mem.write_obj(idx.wrapping_add(step), GuestAddress(AVAIL + 2))
                    .unwrap();
            }
            4 => write_reg(&mut t, reg::INTERRUPT_ACK, irq.status()),
            5 => {
                // A short busy wait (workers run on the other CPUs meanwhile); a
                // yield only when asked, since on a loaded host one costs a timeslice.
                (0..u32::from(arg) * SPIN_UNIT).for_each(|_| std::hint::spin_loop());
                if arg & 1 != 0 {
                    std::thread::yield_now();
                }
            }
            6 => {
                let slot = u64::from(u16::from(arg) % size);
                mem.write_obj(u16::from(arg), GuestAddress(AVAIL + 4 + 2 * slot))
                    .unwrap();
            }
            7 => faults.fail_next_sync(),
            _ => {}
        }
        if debug() {
            eprintln!("op {op} arg {arg}: {:?}, {:?}", started.elapsed(), requests);
        }
        assert!(
            requests.queued_runners() <= usize::from(size),
            "unbounded queued items"
        );
        assert!(
            requests.in_flight() <= usize::from(size),
            "unbounded in-flight heads"
        );
        let now = counters.snapshot();
        if faults.sync_failed() {
            // Successes counted after the failure was seen must not grow.
            let base = *failed_at.get_or_insert(now);
            assert!(
                now.flushes <= base.flushes + SLACK && now.writes <= base.writes + SLACK,
                "writes or flushes succeeded after a failed fdatasync"
            );
        }
    }
    if debug() {
        eprintln!("{img:?}: {:?} {:?}", counters.snapshot(), requests.stats());
    }
    write_reg(&mut t, reg::STATUS, 0);
    drain(&requests);
    assert_eq!(requests.in_flight(), 0);
    assert_no_item_panicked_in(engine());
});
