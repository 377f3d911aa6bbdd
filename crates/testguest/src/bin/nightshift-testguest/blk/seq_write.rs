//! `blk_mode=seq-write`: blocks of `blk_size` bytes written in order from disk offset 0,
//! `blk_qd` at a time, each sector self-describing (`testguest::blk::seq_sector`: block
//! number, run nonce = `blk_seed`, checksum). After every `blk_burst` blocks (default 8)
//! whose writes all completed, a FLUSH; each FLUSH that completes OK prints
//! `flushed seq=<n>`: blocks 0..n are durable. A kill -9 test checks exactly that
//! (crates/nightshift/tests/durability.rs).

use testguest::blk::seq_sector;

use super::{buffer, Driver, F_FLUSH, REQUEST_TIMEOUT_US, S_OK, T_FLUSH, T_OUT};
use crate::{println, time, x86};
use testguest::cmdline::{Config, SECTOR};

/// Flush interval when `blk_burst` is 0.
const DEFAULT_FLUSH_EVERY: u64 = 8;

pub(super) fn run(cpu: usize, config: &Config, dev: usize, drv: &mut Driver) {
    let blk = &config.blk;
    let size = blk.size;
    let sectors = size / SECTOR as u32;
    let capacity = drv.capacity * SECTOR;
    let span = blk.span.unwrap_or(capacity).min(capacity);
    let blocks = span / u64::from(size);
    let limit = if blk.ops > 0 {
        blk.ops.min(blocks)
    } else {
        blocks
    };
    let qd = usize::from(blk.qd).clamp(1, usize::from(drv.ring.size / 3).max(1));
    let flush_every = if blk.burst == 0 {
        DEFAULT_FLUSH_EVERY
    } else {
        blk.burst
    };
    let nonce = blk.seed;
    if drv.features & F_FLUSH == 0 {
        println!("result cpu={cpu} workload=blk mode=seq-write dev={dev} error=no-flush");
        return;
    }
    let (mut written, mut since_flush, mut flushes) = (0u64, 0u64, 0u64);
    let mut failure = "";
    while written < limit && failure.is_empty() {
        let n = qd.min((limit - written) as usize);
        for s in 0..n {
            let seq = written + s as u64;
            for (i, sector) in buffer(drv.data(s), size).chunks_exact_mut(512).enumerate() {
                seq_sector(sector, nonce, seq, i as u32, sectors);
            }
            drv.post(s, T_OUT, seq * u64::from(sectors), size);
        }
        drv.notify();
        if !reap(drv, n) {
            failure = "timeout";
            break;
        }
        if (0..n).any(|s| super::r8(drv.status_addr(s)) != S_OK) {
            failure = "write-error";
            break;
        }
        written += n as u64;
        since_flush += n as u64;
        if since_flush >= flush_every || written == limit {
            since_flush = 0;
            match drv.sync_request(T_FLUSH, 0, 0) {
                Some(S_OK) => {
                    flushes += 1;
                    println!("flushed seq={written}");
                }
                _ => failure = "flush-error",
            }
        }
    }
    println!(
        "result cpu={cpu} workload=blk mode=seq-write blocks={written} flushes={flushes} errors={} dev={dev} size={size} qd={qd}{}{}",
        u8::from(!failure.is_empty()),
        if failure.is_empty() { "" } else { " error=" },
        failure,
    );
}

/// Waits until `n` used entries have been reaped; false on timeout or a device reset.
fn reap(drv: &mut Driver, n: usize) -> bool {
    let mut done = 0;
    while done < n {
        let deadline = x86::rdtsc() + time::us_to_tsc(REQUEST_TIMEOUT_US);
        if drv.wait(deadline).is_none() {
            return false;
        }
        while drv.next_used().is_some() {
            done += 1;
        }
    }
    true
}
