//! `vmm::virtio::mmio::MmioTransport` under an arbitrary sequence of guest
//! register accesses, through its `BusDevice` interface (what the vCPU MMIO
//! exit path calls).
//!
//! Input layout:
//!
//! | bytes     | meaning                                                        |
//! |-----------|----------------------------------------------------------------|
//! | 0         | bit 0: device is a dummy (2 queues, checks the transport's contract) instead of virtio-blk; bit 1: read-only disk; bit 2: AES-XTS encrypted disk |
//! | 1         | number of accesses N                                           |
//! | 2..2+8N   | accesses, 8 bytes each (below)                                 |
//! | rest      | copied to guest memory at 0x1000 (queues, requests), ≤ 64 KiB   |
//!
//! An access is `[ctl, a, b, v0, v1, v2, v3, v4]`:
//! - `ctl & 1`: write (else read);
//! - `(ctl >> 1) & 7`: width, from `[4, 4, 4, 4, 1, 2, 8, 0]`;
//! - `(ctl >> 4) & 3`: offset: 0 and 1 pick a defined register `reg::ALL[a % 26]`
//!   (plus `b & 3` when `ctl & 0x80`, for misaligned accesses); 2 is any offset
//!   in the 4 KiB window (`a | b << 8`, masked); 3 is any 64-bit offset
//!   (the `BusDevice` contract says offsets are guest-controlled);
//! - `v0..v3` (LE) is the value written; an 8-byte write adds `v4`.
//!
//! Checked: no panic (also none caught inside idlework); the magic and
//! version registers read right; the dummy device is only notified while
//! active, only activated once per reset, and only given queues that are valid
//! in guest memory; a final device reset returns and clears the status.

#![no_main]

use std::sync::{Arc, Mutex};

use libfuzzer_sys::fuzz_target;
use nightshift_fuzz::*;
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
    VIRTIO_F_VERSION_1,
};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm::bus::BusDevice;
use vmm::memory::GuestMemory;
use vmm::virtio::block::request;
use vmm::virtio::mmio::MmioTransport;
use vmm::virtio::{ActivateContext, VirtioDevice};

const WIDTHS: [usize; 8] = [4, 4, 4, 4, 1, 2, 8, 0];
const DUMMY_QUEUES: [u16; 2] = [16, 256];

#[derive(Default)]
struct DummyState {
    active: Option<(Arc<GuestMemory>, Vec<Queue>)>,
}

/// A two-queue device that checks what the transport hands it, and parses
/// the chains of a notified queue as block requests (without answering).
struct Dummy(Arc<Mutex<DummyState>>);

impl VirtioDevice for Dummy {
    fn device_type(&self) -> u32 {
        42
    }
    fn features(&self) -> u64 {
        (1 << VIRTIO_F_VERSION_1) | (1 << 33) | 0b101
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &DUMMY_QUEUES
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        data.fill(offset as u8);
    }
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), String> {
        let mut s = self.0.lock().unwrap();
        assert!(s.active.is_none(), "activated twice without a reset");
        assert_eq!(
            ctx.queues.len(),
            DUMMY_QUEUES.len(),
            "transport dropped a queue"
        );
        assert_ne!(
            ctx.features & (1 << VIRTIO_F_VERSION_1),
            0,
            "activated without VERSION_1"
        );
        assert_eq!(
            ctx.features & !self.features(),
            0,
            "activated with unoffered features"
        );
        for (i, q) in ctx.queues.iter().enumerate() {
            assert!(q.size() <= DUMMY_QUEUES[i]);
            if q.ready() {
                assert!(
                    q.is_valid(ctx.mem.as_ref()),
                    "queue {i} handed over invalid"
                );
            }
        }
        s.active = Some((ctx.mem, ctx.queues));
        Ok(())
    }
    fn queue_notify(&mut self, queue: u16) {
        let mut s = self.0.lock().unwrap();
        let Some((mem, queues)) = s.active.as_mut() else {
            panic!("queue {queue} notified while the device is not active");
        };
        let q = queues
            .get_mut(usize::from(queue))
            .expect("notify of a queue that does not exist");
        let mut n = 0;
        while let Some(chain) = q.pop_descriptor_chain(mem.as_ref()) {
            let _ = request::parse(chain);
            n += 1;
            assert!(n <= 256, "more chains than the queue holds");
        }
    }
    fn reset(&mut self) {
        self.0.lock().unwrap().active = None;
    }
}

/// Device-status invariants after every access. `dummy_active`: whether the
/// dummy device is active (None for virtio-blk, whose state is private).
fn check_status(t: &MmioTransport, dummy_active: Option<bool>) {
    let s = t.status();
    if let Some(active) = dummy_active {
        if active {
            assert_ne!(
                s & VIRTIO_CONFIG_S_DRIVER_OK,
                0,
                "device active without DRIVER_OK ({s:#x})"
            );
        } else {
            assert!(
                s & VIRTIO_CONFIG_S_DRIVER_OK == 0 || s & VIRTIO_CONFIG_S_NEEDS_RESET != 0,
                "DRIVER_OK ({s:#x}) but the device was not activated"
            );
        }
    }
    {
        // Each step of the handshake needs the one before (virtio 1.2 §3.1.1).
        for (bit, needs) in [
            (VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_ACKNOWLEDGE),
            (VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_DRIVER),
            (VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_CONFIG_S_FEATURES_OK),
        ] {
            assert!(
                s & bit == 0 || s & needs != 0,
                "status {s:#x} has {bit:#x} without {needs:#x}"
            );
        }
        let defined = VIRTIO_CONFIG_S_ACKNOWLEDGE
            | VIRTIO_CONFIG_S_DRIVER
            | VIRTIO_CONFIG_S_FEATURES_OK
            | VIRTIO_CONFIG_S_DRIVER_OK
            | VIRTIO_CONFIG_S_NEEDS_RESET
            | VIRTIO_CONFIG_S_FAILED;
        assert_eq!(s & !defined, 0, "status {s:#x} has undefined bits");
    }
}

fuzz_target!(|data: &[u8]| {
    let byte = |i: usize| data.get(i).copied().unwrap_or(0);
    let mode = byte(0);
    let n = usize::from(byte(1));
    let ops_end = (2 + 8 * n).min(data.len());
    let ops = data.get(2..ops_end).unwrap_or(&[]);

    let mem = guest_memory();
    let blob = data.get(ops_end..).unwrap_or(&[]);
    let blob = &blob[..blob.len().min(DATA_MAX)];
    mem.write_slice(blob, GuestAddress(DESC)).unwrap();

    let dummy = Arc::new(Mutex::new(DummyState::default()));
    let mut counters = None;
    let device: Box<dyn VirtioDevice> = if mode & 1 != 0 {
        Box::new(Dummy(dummy.clone()))
    } else {
        let block = block_device(mode & 2 != 0, mode & 4 != 0);
        counters = Some(block.counters());
        Box::new(block)
    };
    let mut t = MmioTransport::new(device, mem.clone(), interrupt());

    for op in ops.chunks_exact(8) {
        let [ctl, a, b, v0, v1, v2, v3, v4] = op.try_into().unwrap();
        let write = ctl & 1 != 0;
        let width = WIDTHS[usize::from((ctl >> 1) & 7)];
        let offset = match (ctl >> 4) & 3 {
            0 | 1 => {
                let r = reg::ALL[usize::from(a) % reg::ALL.len()];
                if ctl & 0x80 != 0 {
                    r + u64::from(b & 3)
                } else {
                    r
                }
            }
            2 => u64::from(u16::from_le_bytes([a, b])) & 0xfff,
            _ => u64::from_le_bytes([a, b, v0, v1, v2, v3, v4, ctl]),
        };
        let value = [v0, v1, v2, v3, v4, 0, 0, 0];
        if write {
            if debug() {
                eprintln!("write {width} bytes at {offset:#x}: {:x?}", &value[..width]);
            }
            t.write(offset, &value[..width]);
        } else {
            let mut buf = [0u8; 8];
            t.read(offset, &mut buf[..width]);
            if debug() {
                eprintln!("read {width} bytes at {offset:#x}: {:x?}", &buf[..width]);
            }
            if width == 4 {
                let v = u32::from_le_bytes(buf[..4].try_into().unwrap());
                match offset {
                    reg::MAGIC => assert_eq!(v, 0x7472_6976, "magic"),
                    reg::VERSION => assert_eq!(v, 2, "version"),
                    _ => {}
                }
            }
        }
        check_status(
            &t,
            (mode & 1 != 0).then(|| dummy.lock().unwrap().active.is_some()),
        );
    }

    if debug() {
        let stats = counters.as_ref().map(|c| c.snapshot());
        eprintln!(
            "status {:#x}, {} protocol errors, {stats:?}",
            t.status(),
            t.protocol_errors()
        );
    }
    write_reg(&mut t, reg::STATUS, 0);
    assert_eq!(t.status(), 0, "reset did not clear the status");
    if mode & 1 != 0 {
        assert!(
            dummy.lock().unwrap().active.is_none(),
            "reset left the device active"
        );
    }
    assert_no_item_panicked();
});
