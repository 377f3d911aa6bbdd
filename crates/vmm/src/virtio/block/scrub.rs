//! Background scrub: a maintenance job that reads the whole image, decrypting
//! it when it is encrypted, and checksums it — the kind of `idle`-priority
//! work that should only use guest idle time.
//!
//! It is one idlework item that does a chunk at a time and yields when its
//! time slice is spent, so it never holds a vCPU thread past its budget.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use idlework::{Context, Item, Priority, Step, Work};
use serde::Serialize;

use super::backend::Disk;

/// Bytes checked per step.
const CHUNK: usize = 16 << 10;

/// What the scrub has done so far.
#[derive(Debug, Default)]
pub struct ScrubCounters {
    bytes: AtomicU64,
    passes: AtomicU64,
    errors: AtomicU64,
    checksum: AtomicU64,
}

/// A snapshot of [`ScrubCounters`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ScrubStats {
    /// Bytes read and checked.
    pub bytes: u64,
    /// Whole passes over the image.
    pub passes: u64,
    /// Chunks that could not be read.
    pub errors: u64,
    /// CRC32 of the last whole pass.
    pub checksum: u64,
}

impl ScrubCounters {
    /// The current values.
    pub fn snapshot(&self) -> ScrubStats {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ScrubStats {
            bytes: g(&self.bytes),
            passes: g(&self.passes),
            errors: g(&self.errors),
            checksum: g(&self.checksum),
        }
    }
}

/// The scrub job.
pub struct Scrub {
    disk: Arc<Disk>,
    offset: u64,
    passes_left: u64,
    hasher: crc32fast::Hasher,
    buf: Vec<u8>,
    stop: Arc<AtomicBool>,
    counters: Arc<ScrubCounters>,
}

impl Scrub {
    /// An `idle`-priority item scrubbing `disk` `passes` times, ending early
    /// when `stop` is set. Progress goes to `counters`.
    pub fn item(
        disk: Arc<Disk>,
        passes: u64,
        stop: Arc<AtomicBool>,
        counters: Arc<ScrubCounters>,
    ) -> Item {
        let scrub = Scrub {
            disk,
            offset: 0,
            passes_left: passes,
            hasher: crc32fast::Hasher::new(),
            buf: vec![0; CHUNK],
            stop,
            counters,
        };
        Item::new(scrub).with_priority(Priority::Idle)
    }

    /// Checks one chunk; returns false when all passes are done.
    fn step(&mut self) -> bool {
        let len = (self.disk.size() - self.offset).min(CHUNK as u64) as usize;
        match self.disk.read_plain(self.offset, &mut self.buf[..len]) {
            Ok(()) => self.hasher.update(&self.buf[..len]),
            Err(e) => {
                self.counters.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("scrub: reading at {}: {e}", self.offset);
            }
        }
        self.counters.bytes.fetch_add(len as u64, Ordering::Relaxed);
        self.offset += len as u64;
        if self.offset >= self.disk.size() {
            let crc = std::mem::take(&mut self.hasher).finalize();
            self.counters.checksum.store(crc.into(), Ordering::Relaxed);
            self.counters.passes.fetch_add(1, Ordering::Relaxed);
            self.offset = 0;
            self.passes_left -= 1;
        }
        self.passes_left > 0
    }
}

impl Work for Scrub {
    fn run(&mut self, cx: &Context) -> Step {
        let start = Instant::now();
        while !self.stop.load(Ordering::Relaxed) && self.disk.size() > 0 {
            if !self.step() {
                return Step::Done;
            }
            if start.elapsed() >= cx.slice() {
                return Step::Yield;
            }
        }
        Step::Done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::block::Transform;
    use idlework::{Config, Engine, Policy, Shutdown};

    #[test]
    fn a_scrub_reads_every_byte_and_yields_between_slices() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut f, &vec![1u8; 300 << 10]).unwrap();
        let disk = Arc::new(Disk::open(f.path(), true, Transform::None).unwrap());
        let engine = Engine::new(Config {
            policy: Policy::Workers,
            ..Config::default()
        })
        .unwrap();
        let counters = Arc::new(ScrubCounters::default());
        let stop = Arc::new(AtomicBool::new(false));
        engine
            .submit(Scrub::item(disk, 2, stop, counters.clone()))
            .unwrap();
        assert!(engine.shutdown(Shutdown::Drain).is_empty());
        let s = counters.snapshot();
        assert_eq!((s.bytes, s.passes, s.errors), (2 * (300 << 10), 2, 0));
        assert_eq!(
            s.checksum,
            u64::from(crc32fast::hash(&vec![1u8; 300 << 10]))
        );
    }
}
