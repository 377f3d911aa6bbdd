//! The `rng` workload: reads `rng_bytes` from a virtio-rng device with `virtio-drivers`'
//! `VirtIORng`, in 4 KiB requests, and reports what it got and whether it looks random
//! enough to rule out a constant or stuck source (distinct byte values, share of one
//! bits, longest run of one byte value, requests identical to the one before).
//!
//! The crate's `request_entropy` waits by spinning on the used ring (at CPL3, device
//! interrupts off), with no deadline of its own: a device that never answers leaves the
//! guest spinning until the VMM's timeout. See docs/guest-abi.md, "Entropy".

use testguest::cmdline::{Config, Workload};
use virtio_drivers::device::rng::VirtIORng;

use crate::dma::{self, GuestHal};
use crate::vdevices::{self, Assignment, Resetting};
use crate::{println, stack, time, warn, x86};

/// Bytes asked for per request.
const CHUNK: usize = 4096;
/// Consecutive empty answers after which the workload gives up.
const MAX_EMPTY: u32 = 1000;

/// What the bytes looked like.
struct Tally {
    bytes: u64,
    requests: u64,
    /// Answers shorter than asked for.
    short: u64,
    counts: [u64; 256],
    ones: u64,
    last: Option<u8>,
    run: u64,
    max_run: u64,
    /// Requests whose bytes equal the previous request's (compared by CRC32 and length).
    repeats: u64,
    prev: Option<(usize, u32)>,
}

impl Tally {
    fn new() -> Self {
        Self {
            bytes: 0,
            requests: 0,
            short: 0,
            counts: [0; 256],
            ones: 0,
            last: None,
            run: 0,
            max_run: 0,
            repeats: 0,
            prev: None,
        }
    }

    fn add(&mut self, data: &[u8], asked: usize) {
        self.requests += 1;
        self.bytes += data.len() as u64;
        self.short += u64::from(data.len() < asked);
        for &b in data {
            self.counts[usize::from(b)] += 1;
            self.ones += u64::from(b.count_ones());
            if self.last == Some(b) {
                self.run += 1;
            } else {
                self.run = 1;
                self.last = Some(b);
            }
            self.max_run = self.max_run.max(self.run);
        }
        let this = (data.len(), crc32fast::hash(data));
        self.repeats += u64::from(self.prev == Some(this));
        self.prev = Some(this);
    }

    fn distinct(&self) -> usize {
        self.counts.iter().filter(|&&c| c > 0).count()
    }
}

/// Runs the `rng` workload on CPU `cpu`.
pub fn run(cpu: usize, config: &Config) {
    let want = config.drivers.rng.bytes;
    let (nth, result) = match vdevices::assignment(cpu, Workload::Rng) {
        Some(Ok(a)) => (a.nth, read(cpu, want, &a)),
        Some(Err((nth, e))) => (nth, Err(e)),
        None => (config.drivers.rng.dev, Err("not-set-up")),
    };
    if let Err(e) = result {
        println!("result cpu={cpu} workload=rng dev={nth} error={e}");
    }
}

fn read(cpu: usize, want: u64, a: &Assignment) -> Result<(), &'static str> {
    let mark = stack::paint();
    let rng = VirtIORng::<GuestHal, _>::new(a.transport()?).map_err(|e| {
        warn!("rng: virtio-drivers: {e}");
        "init-failed"
    })?;
    let mut rng = Resetting::new(a.dev, rng);
    rng.disable_interrupts();
    let buf = dma::alloc_bytes(CHUNK).ok_or("no-dma-memory")?;
    println!("rng dev={} base={:#x} irq={}", a.nth, a.dev.base, a.dev.irq);
    let mut tally = Tally::new();
    let mut empty = 0;
    let mut error = None;
    let t0 = x86::rdtsc();
    while tally.bytes < want {
        let asked = (want - tally.bytes).min(CHUNK as u64) as usize;
        match rng.request_entropy(&mut buf[..asked]) {
            Ok(0) => {
                empty += 1;
                if empty >= MAX_EMPTY {
                    error = Some("no-progress");
                    break;
                }
            }
            Ok(n) => {
                empty = 0;
                tally.add(&buf[..n.min(asked)], asked);
            }
            Err(e) => {
                warn!("rng: request {}: {e}", tally.requests);
                error = Some("request-failed");
                break;
            }
        }
    }
    let us = time::tsc_to_us(x86::rdtsc() - t0).max(1);
    let distinct = tally.distinct();
    let ok =
        error.is_none() && tally.bytes == want && (distinct > 1 || want == 1) && tally.repeats == 0;
    println!(
        "result cpu={cpu} workload=rng ms={} dev={} bytes={} requests={} short={} distinct={distinct} ones_permille={} max_run={} repeats={} kib_s={} ok={}{}{} stack_used={}",
        us / 1000,
        a.nth,
        tally.bytes,
        tally.requests,
        tally.short,
        tally.ones * 1000 / (tally.bytes * 8).max(1),
        tally.max_run,
        tally.repeats,
        tally.bytes * 1_000_000 / 1024 / us,
        u8::from(ok),
        if error.is_some() { " error=" } else { "" },
        error.unwrap_or(""),
        mark.used(),
    );
    Ok(())
}
