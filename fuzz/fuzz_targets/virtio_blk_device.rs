//! The whole virtio-blk request path on arbitrary descriptor chains: a
//! `vmm::virtio::block::Block` on a scratch disk, behind the MMIO transport,
//! brought up by a well-behaved driver, then QUEUE_NOTIFY. Requests run
//! inline (idlework `Policy::Inline`), so parse, disk I/O, status write, used
//! ring and interrupt all happen inside the notify.
//!
//! Same input layout as `virtio_blk_request` (`nightshift_fuzz::QueueImage`);
//! the device always starts at next_avail 0, so bytes 4..6 are unused. Flag
//! bits: 0 = read-only disk, 1 = notify a second time, 2 = ack the interrupt
//! and notify again after moving the avail index by the input's next_avail
//! bytes, 3 = skip the final reset, 4 = AES-XTS encrypted disk.
//!
//! Checked: no panic (also none caught inside idlework), activation of a valid
//! queue succeeds, completions raise the used-buffer interrupt, and reset
//! returns (a request left in flight would hang it: libFuzzer reports the
//! timeout).

#![no_main]

use libfuzzer_sys::fuzz_target;
use nightshift_fuzz::*;
use virtio_bindings::virtio_config::{VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_CONFIG_S_NEEDS_RESET};
use virtio_bindings::virtio_mmio::VIRTIO_MMIO_INT_VRING;
use vm_memory::{Bytes, GuestAddress};
use vmm::virtio::mmio::MmioTransport;

fuzz_target!(|data: &[u8]| {
    let mem = guest_memory();
    let img = QueueImage::load(&mem, data);
    let read_only = img.flags & 1 != 0;
    let encrypted = img.flags & 0x10 != 0;

    let block = block_device(read_only, encrypted);
    let counters = block.counters();
    let irq = interrupt();
    let mut t = MmioTransport::new(Box::new(block), mem.clone(), irq.clone());
    bring_up(&mut t, img.size);
    assert_eq!(
        t.status() & (VIRTIO_CONFIG_S_DRIVER_OK | VIRTIO_CONFIG_S_NEEDS_RESET),
        VIRTIO_CONFIG_S_DRIVER_OK,
        "a valid queue failed to activate"
    );

    let before = t.protocol_errors();
    write_reg(&mut t, reg::QUEUE_NOTIFY, 0);
    if img.flags & 2 != 0 {
        write_reg(&mut t, reg::QUEUE_NOTIFY, 0);
    }
    assert_eq!(
        t.protocol_errors(),
        before,
        "notify of a live queue was refused"
    );
    check_interrupt(&counters.snapshot(), irq.status());

    if img.flags & 4 != 0 {
        // The driver acks, offers more chains (the avail index moves by the
        // input's next_avail bytes) and notifies again.
        write_reg(&mut t, reg::INTERRUPT_ACK, VIRTIO_MMIO_INT_VRING);
        let done = counters.snapshot();
        let idx: u16 = mem.read_obj(GuestAddress(AVAIL + 2)).unwrap_or(0);
        mem.write_obj(idx.wrapping_add(img.next_avail), GuestAddress(AVAIL + 2))
            .unwrap();
        write_reg(&mut t, reg::QUEUE_NOTIFY, 0);
        let now = counters.snapshot();
        if served(&now) > served(&done) {
            assert_ne!(
                irq.status() & VIRTIO_MMIO_INT_VRING,
                0,
                "completion without interrupt"
            );
        }
    }

    if debug() {
        eprintln!(
            "{img:?}: {:?}, interrupt status {:#x}",
            counters.snapshot(),
            irq.status()
        );
    }
    if img.flags & 8 == 0 {
        // Device reset must return: nothing may stay in flight.
        write_reg(&mut t, reg::STATUS, 0);
        assert_eq!(t.status(), 0);
    }
    assert_no_item_panicked();
});

/// Well-formed requests answered (OK, IOERR or UNSUPP). Malformed chains are
/// left out: one whose head is out of range cannot be returned, so it
/// neither counts here nor interrupts.
fn served(s: &vmm::virtio::block::BlockStats) -> u64 {
    s.reads + s.writes + s.flushes + s.get_ids + s.errors
}

fn check_interrupt(s: &vmm::virtio::block::BlockStats, status: u32) {
    // Without EVENT_IDX every returned chain interrupts.
    if served(s) > 0 {
        assert_ne!(
            status & VIRTIO_MMIO_INT_VRING,
            0,
            "completion without interrupt"
        );
    }
}
