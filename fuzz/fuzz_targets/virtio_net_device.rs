//! virtio-net on arbitrary split queues: a `vmm::virtio::net::Net` behind the
//! MMIO transport, on a datagram socket pair standing in for the tap (one
//! vnet header + frame per datagram, as `crates/vmm`'s net tests use it),
//! brought up by a well-behaved driver (with or without EVENT_IDX), then
//! QUEUE_NOTIFY on RX and TX. idlework `Policy::Inline` runs each queue's
//! drain inside its notify; the tap's readiness watch is registered but no
//! notifier thread runs, so RX runs only when the driver notifies it and every
//! input is deterministic.
//!
//! Input layout (missing bytes are zero):
//!
//! | bytes            | meaning                                                      |
//! |------------------|--------------------------------------------------------------|
//! | 0                | RX queue size: `1 << (b % 9)`                                |
//! | 1                | TX queue size: `1 << (b % 9)`                                |
//! | 2                | flags: 0 = negotiate EVENT_IDX, 1 = a second round (ack, move both avail indices, notify again), 2 = skip the final reset, 3 = notify TX before RX, 4 = the first host frame is one byte over the largest frame |
//! | 3                | host frames waiting on the tap before the first notify: `b % 9` |
//! | 4..6, 6..8       | RX, TX avail `idx` (LE)                                      |
//! | 8..10, 10..12    | RX, TX `used_event` (LE; read only with EVENT_IDX)           |
//! | 12, 13           | second round: how far RX, TX avail `idx` move                |
//! | 14..14+2n        | each host frame's datagram length (LE; vnet header included) |
//! | then 16·rx, 2·rx | RX descriptor table, RX avail ring entries                   |
//! | then 16·tx, 2·tx | TX descriptor table, TX avail ring entries                   |
//! | rest             | copied to [`DATA`] (at most `DATA_MAX` bytes)                |
//!
//! Descriptor addresses below [`DATA`] are moved up by [`DATA`], so no buffer
//! overlaps the rings (the checks read the used rings back); anything else,
//! in memory or not, is left as the fuzzer wrote it.
//!
//! Checked, beyond no panic and no hang:
//! - every TX chain the device returned is on the tap (`tx_frames`, each a
//!   datagram on the host end with an all-zero vnet header and a frame of
//!   14..=64 KiB), refused by the tap (`tx_dropped`) or counted bad
//!   (`tx_bad_chains`, or `tx_queue_indirect` by the queue's accounting),
//!   and returned with used length 0;
//! - every host frame is in a guest buffer (`rx_frames`), dropped and counted
//!   (`rx_dropped_too_small`, `rx_tap_errors`) or still on the tap;
//! - every RX used entry names a head inside the queue, and its length is 0
//!   (a bad chain, counted in `rx_bad_chains` or `rx_queue_indirect`) or a vnet header plus a host
//!   frame that fits the chain's device-writable bytes; `rx_bytes` adds up;
//! - a returned chain raises the used-buffer interrupt (with EVENT_IDX: when
//!   the used index passed the driver's `used_event`);
//! - a reset leaves nothing in flight: afterwards notifies and host frames
//!   move neither used ring and send nothing;
//! - no idlework item panicked.

#![no_main]

use std::os::unix::net::UnixDatagram;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use nightshift_fuzz::*;
use virtio_bindings::virtio_config::{VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_CONFIG_S_NEEDS_RESET};
use virtio_bindings::virtio_mmio::VIRTIO_MMIO_INT_VRING;
use virtio_bindings::virtio_ring::{
    VIRTIO_RING_F_EVENT_IDX, VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};
use vm_memory::{Bytes, GuestAddress};
use vmm::virtio::mmio::MmioTransport;
use vmm::virtio::net::{Net, NetCounters, Tap, MAX_FRAME};
use vmm::virtio::notifier::NotifierBuilder;
use vmm::virtio::VirtioInterrupt;

/// The vnet header (virtio_net_hdr_v1) in front of every frame.
const HDR: usize = 12;
/// Shortest frame the device sends: an Ethernet header.
const MIN_FRAME: usize = 14;
/// Rings: RX at 0x1000.., TX at 0x4000.. (one page each part).
const RX: Rings = Rings {
    desc: 0x1000,
    avail: 0x2000,
    used: 0x3000,
};
const TX: Rings = Rings {
    desc: 0x4000,
    avail: 0x5000,
    used: 0x6000,
};
/// Where the rest of the input lands; buffers the fuzzer puts below move up by this.
const DATA: u64 = 0x8000;

#[derive(Clone, Copy)]
struct Rings {
    desc: u64,
    avail: u64,
    used: u64,
}

/// The header bytes of an input.
struct Input<'a> {
    rx_size: u16,
    tx_size: u16,
    flags: u8,
    frames: Vec<usize>,
    avail_idx: [u16; 2],
    used_event: [u16; 2],
    bump: [u16; 2],
    rest: &'a [u8],
}

const HEADER: usize = 14;

impl<'a> Input<'a> {
    fn parse(data: &'a [u8]) -> Input<'a> {
        let b = |i: usize| data.get(i).copied().unwrap_or(0);
        let w = |i: usize| u16::from_le_bytes([b(i), b(i + 1)]);
        let n = usize::from(b(3) % 9);
        let mut frames: Vec<usize> = (0..n).map(|k| usize::from(w(HEADER + 2 * k))).collect();
        if b(2) & 0x10 != 0 {
            if let Some(f) = frames.first_mut() {
                *f = HDR + MAX_FRAME + 1;
            }
        }
        Input {
            rx_size: 1 << (b(0) % 9),
            tx_size: 1 << (b(1) % 9),
            flags: b(2),
            frames,
            avail_idx: [w(4), w(6)],
            used_event: [w(8), w(10)],
            bump: [u16::from(b(12)), u16::from(b(13))],
            rest: data.get(HEADER + 2 * n..).unwrap_or(&[]),
        }
    }

    fn event_idx(&self) -> bool {
        self.flags & 1 != 0
    }
}

/// Writes the rings of one queue from `rest` (consumed as it goes).
fn load_queue(mem: &vmm::memory::GuestMemory, r: Rings, size: u16, rest: &mut &[u8]) {
    let size = usize::from(size);
    let mut table = vec![0u8; 16 * size];
    let n = table.len().min(rest.len());
    table[..n].copy_from_slice(&rest[..n]);
    *rest = &rest[n..];
    for d in table.chunks_exact_mut(16) {
        let addr = u64::from_le_bytes(d[..8].try_into().unwrap());
        if addr < DATA {
            d[..8].copy_from_slice(&(addr + DATA).to_le_bytes());
        }
    }
    mem.write_slice(&table, GuestAddress(r.desc)).unwrap();
    let n = (2 * size).min(rest.len());
    mem.write_slice(&rest[..n], GuestAddress(r.avail + 4))
        .unwrap();
    *rest = &rest[n..];
}

fn used_event_addr(r: Rings, size: u16) -> u64 {
    r.avail + 4 + 2 * u64::from(size)
}

fn used_idx(mem: &vmm::memory::GuestMemory, r: Rings) -> u16 {
    mem.read_obj(GuestAddress(r.used + 2)).unwrap()
}

/// Used entries `(id, len)` from index `from` to `to`.
fn used_entries(
    mem: &vmm::memory::GuestMemory,
    r: Rings,
    size: u16,
    from: u16,
    to: u16,
) -> Vec<(u32, u32)> {
    let mut out = Vec::new();
    let mut i = from;
    while i != to {
        let at = r.used + 4 + 8 * u64::from(i % size);
        let id: u32 = mem.read_obj(GuestAddress(at)).unwrap();
        let len: u32 = mem.read_obj(GuestAddress(at + 4)).unwrap();
        out.push((id, len));
        i = i.wrapping_add(1);
    }
    out
}

/// Device-writable bytes of the direct chain at `head` (following NEXT at
/// most `size` times); an indirect descriptor ends the walk.
fn writable_len(mem: &vmm::memory::GuestMemory, r: Rings, size: u16, head: u16) -> u64 {
    let mut total = 0u64;
    let mut i = head;
    for _ in 0..size {
        if i >= size {
            break;
        }
        let at = r.desc + 16 * u64::from(i);
        let len: u32 = mem.read_obj(GuestAddress(at + 8)).unwrap();
        let flags: u16 = mem.read_obj(GuestAddress(at + 12)).unwrap();
        let next: u16 = mem.read_obj(GuestAddress(at + 14)).unwrap();
        if flags & VRING_DESC_F_INDIRECT as u16 != 0 {
            break;
        }
        if flags & VRING_DESC_F_WRITE as u16 != 0 {
            total += u64::from(len);
        }
        if flags & VRING_DESC_F_NEXT as u16 == 0 {
            break;
        }
        i = next;
    }
    total
}

/// vring_need_event: whether moving the used index `old` → `new` passed `event`.
fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

/// Every datagram waiting on `sock`, drained.
fn recv_all(sock: &UnixDatagram) -> Vec<Vec<u8>> {
    let mut buf = vec![0u8; HDR + MAX_FRAME + 64];
    let mut out = Vec::new();
    while let Ok(n) = sock.recv(&mut buf) {
        out.push(buf[..n].to_vec());
    }
    out
}

fn count(c: &NetCounters, name: &str) -> u64 {
    c.snapshot()
        .into_iter()
        .find(|(n, _)| *n == name)
        .map_or(0, |(_, v)| v)
}

/// Host frame `k` of `len` bytes: a zero vnet header's place, then a pattern.
fn host_frame(k: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8) ^ (k as u8).wrapping_mul(37))
        .collect()
}

/// Brings both queues up at the fixed layout; EVENT_IDX only if `event_idx`.
fn bring_up_net(t: &mut MmioTransport, rx: u16, tx: u16, event_idx: bool) {
    use virtio_bindings::virtio_config::{
        VIRTIO_CONFIG_S_ACKNOWLEDGE as ACK, VIRTIO_CONFIG_S_DRIVER as DRIVER,
        VIRTIO_CONFIG_S_FEATURES_OK as FEATURES_OK,
    };
    write_reg(t, reg::STATUS, ACK);
    write_reg(t, reg::STATUS, ACK | DRIVER);
    for sel in 0..2u32 {
        write_reg(t, reg::DEVICE_FEATURES_SEL, sel);
        let mut offered = read_reg(t, reg::DEVICE_FEATURES);
        if sel == 0 && !event_idx {
            offered &= !(1 << VIRTIO_RING_F_EVENT_IDX);
        }
        write_reg(t, reg::DRIVER_FEATURES_SEL, sel);
        write_reg(t, reg::DRIVER_FEATURES, offered);
    }
    write_reg(t, reg::STATUS, ACK | DRIVER | FEATURES_OK);
    for (q, r, size) in [(0u32, RX, rx), (1, TX, tx)] {
        write_reg(t, reg::QUEUE_SEL, q);
        write_reg(t, reg::QUEUE_NUM, u32::from(size));
        write_reg(t, reg::QUEUE_DESC_LOW, r.desc as u32);
        write_reg(t, reg::QUEUE_DESC_HIGH, 0);
        write_reg(t, reg::QUEUE_AVAIL_LOW, r.avail as u32);
        write_reg(t, reg::QUEUE_AVAIL_HIGH, 0);
        write_reg(t, reg::QUEUE_USED_LOW, r.used as u32);
        write_reg(t, reg::QUEUE_USED_HIGH, 0);
        write_reg(t, reg::QUEUE_READY, 1);
    }
    write_reg(
        t,
        reg::STATUS,
        ACK | DRIVER | FEATURES_OK | VIRTIO_CONFIG_S_DRIVER_OK,
    );
}

/// What the checks keep between rounds.
struct Seen {
    used: [u16; 2],
    tx_datagrams: u64,
    rx_delivered: Vec<usize>,
}

fuzz_target!(|data: &[u8]| {
    let mem = guest_memory();
    let input = Input::parse(data);
    let mut rest = input.rest;
    load_queue(&mem, RX, input.rx_size, &mut rest);
    load_queue(&mem, TX, input.tx_size, &mut rest);
    let n = rest.len().min(64 << 10);
    mem.write_slice(&rest[..n], GuestAddress(DATA)).unwrap();
    for (r, size, i) in [(RX, input.rx_size, 0), (TX, input.tx_size, 1)] {
        mem.write_obj(input.avail_idx[i], GuestAddress(r.avail + 2))
            .unwrap();
        mem.write_obj(input.used_event[i], GuestAddress(used_event_addr(r, size)))
            .unwrap();
    }

    let (dev, host) = UnixDatagram::pair().expect("socket pair");
    dev.set_nonblocking(true).unwrap();
    host.set_nonblocking(true).unwrap();
    // The tap's receive queue, read after the run to count what is left.
    let tap_queue = dev.try_clone().expect("dup the tap stand-in");
    let mut host_events = NotifierBuilder::new().expect("epoll");
    let net = Net::new(
        Tap::from_fd(dev.into(), "fuzz"),
        [0x52, 0x54, 0, 0x12, 0x34, 0x56],
        engine(),
        &mut host_events,
    )
    .expect("net device");
    let counters = net.counters();
    let irq = interrupt();
    let mut t = MmioTransport::new(Box::new(net), mem.clone(), irq.clone());
    bring_up_net(&mut t, input.rx_size, input.tx_size, input.event_idx());
    assert_eq!(
        t.status() & (VIRTIO_CONFIG_S_DRIVER_OK | VIRTIO_CONFIG_S_NEEDS_RESET),
        VIRTIO_CONFIG_S_DRIVER_OK,
        "valid queues failed to activate"
    );

    // The lengths of the host frames the tap stand-in took, in order.
    let sent: Vec<usize> = (input.frames.iter().enumerate())
        .filter(|&(k, &len)| host.send(&host_frame(k, len)).is_ok())
        .map(|(_, &len)| len)
        .collect();

    let mut seen = Seen {
        used: [0, 0],
        tx_datagrams: 0,
        rx_delivered: Vec::new(),
    };
    round(&mut t, &mem, &input, &irq, &counters, &host, &mut seen);
    if input.flags & 2 != 0 {
        write_reg(&mut t, reg::INTERRUPT_ACK, VIRTIO_MMIO_INT_VRING);
        for (r, i) in [(RX, 0), (TX, 1)] {
            let idx: u16 = mem.read_obj(GuestAddress(r.avail + 2)).unwrap();
            mem.write_obj(idx.wrapping_add(input.bump[i]), GuestAddress(r.avail + 2))
                .unwrap();
        }
        round(&mut t, &mem, &input, &irq, &counters, &host, &mut seen);
    }

    // Every host frame sent is delivered, dropped and counted, or still waiting.
    let left = recv_all(&tap_queue).len();
    let rx_accounted = count(&counters, "rx_frames")
        + count(&counters, "rx_dropped_too_small")
        + count(&counters, "rx_tap_errors");
    assert_eq!(
        rx_accounted + left as u64,
        sent.len() as u64,
        "host frames lost: {:?}",
        counters.snapshot()
    );
    // The frames delivered are the host frames in order, less the dropped ones.
    let mut expected = sent.iter();
    for &got in &seen.rx_delivered {
        assert!(
            expected.any(|&len| len == got),
            "a delivered frame of {got} bytes matches no host frame"
        );
    }

    if debug() {
        eprintln!(
            "rx {} tx {} flags {:#x} frames {:?}: {:?}, used {:?}, irq {:#x}",
            input.rx_size,
            input.tx_size,
            input.flags,
            input.frames,
            counters.snapshot(),
            seen.used,
            irq.status()
        );
    }
    if input.flags & 4 == 0 {
        write_reg(&mut t, reg::STATUS, 0);
        assert_eq!(t.status(), 0, "reset did not clear the status");
        // Nothing in flight: notifies and a waiting frame move nothing now.
        let before = counters.snapshot();
        let _ = host.send(&host_frame(99, HDR + 60));
        write_reg(&mut t, reg::QUEUE_NOTIFY, 0);
        write_reg(&mut t, reg::QUEUE_NOTIFY, 1);
        assert_eq!(used_idx(&mem, RX), seen.used[0], "RX used after reset");
        assert_eq!(used_idx(&mem, TX), seen.used[1], "TX used after reset");
        assert_eq!(counters.snapshot(), before, "the device worked after reset");
        assert!(recv_all(&host).is_empty(), "a frame was sent after reset");
    }
    assert_no_item_panicked();
});

/// Notifies both queues and checks what came back since the last round.
fn round(
    t: &mut MmioTransport,
    mem: &vmm::memory::GuestMemory,
    input: &Input,
    irq: &VirtioInterrupt,
    counters: &Arc<NetCounters>,
    host: &UnixDatagram,
    seen: &mut Seen,
) {
    let before = t.protocol_errors();
    let order: [u32; 2] = if input.flags & 8 != 0 { [1, 0] } else { [0, 1] };
    for q in order {
        write_reg(t, reg::QUEUE_NOTIFY, q);
    }
    assert_eq!(
        t.protocol_errors(),
        before,
        "notify of a live queue refused"
    );
    let needs_reset = irq.needs_reset();

    // TX: each returned chain is on the tap, refused by it, or counted bad.
    let tx_now = used_idx(mem, TX);
    let tx_used = used_entries(mem, TX, input.tx_size, seen.used[1], tx_now);
    for &(id, len) in &tx_used {
        assert!(
            id < u32::from(input.tx_size),
            "TX used id {id} outside the queue"
        );
        assert_eq!(len, 0, "TX used length");
    }
    let datagrams = recv_all(host);
    for d in &datagrams {
        assert!(
            (HDR + MIN_FRAME..=HDR + MAX_FRAME).contains(&d.len()),
            "a {}-byte datagram on the tap",
            d.len()
        );
        assert_eq!(
            &d[..HDR],
            &[0; HDR],
            "the guest's vnet header reached the tap"
        );
    }
    seen.tx_datagrams += datagrams.len() as u64;
    assert_eq!(seen.tx_datagrams, count(counters, "tx_frames"));
    let tx_accounted = count(counters, "tx_frames")
        + count(counters, "tx_dropped")
        + count(counters, "tx_bad_chains")
        + count(counters, "tx_queue_indirect");
    let tx_total = u64::from(tx_now);
    // A chain whose head the used ring cannot name is counted but not returned
    // (the device then asks for a reset); that happens at most once per round.
    let slack = if needs_reset { 2 } else { 0 };
    assert!(
        (tx_total..=tx_total + slack).contains(&tx_accounted),
        "TX chains {tx_total} returned, {tx_accounted} accounted: {:?}",
        counters.snapshot()
    );

    // RX: each entry is a bad chain (0) or a header and frame that fit.
    let rx_now = used_idx(mem, RX);
    let rx_used = used_entries(mem, RX, input.rx_size, seen.used[0], rx_now);
    for &(id, len) in &rx_used {
        assert!(
            id < u32::from(input.rx_size),
            "RX used id {id} outside the queue"
        );
        if len == 0 {
            continue;
        }
        let room = writable_len(mem, RX, input.rx_size, id as u16);
        assert!(
            u64::from(len) <= room && len as usize >= HDR,
            "RX used length {len}, chain holds {room}"
        );
        seen.rx_delivered.push(len as usize);
    }
    let delivered = seen.rx_delivered.len() as u64;
    assert_eq!(delivered, count(counters, "rx_frames"));
    let bytes: u64 = seen.rx_delivered.iter().map(|&l| (l - HDR) as u64).sum();
    assert_eq!(bytes, count(counters, "rx_bytes"));
    let rx_accounted =
        delivered + count(counters, "rx_bad_chains") + count(counters, "rx_queue_indirect");
    let rx_total = u64::from(rx_now);
    assert!(
        (rx_total..=rx_total + slack).contains(&rx_accounted),
        "RX chains {rx_total} returned, {rx_accounted} accounted: {:?}",
        counters.snapshot()
    );

    // A returned chain interrupts (with EVENT_IDX: once past used_event).
    let wanted = if input.event_idx() {
        need_event(input.used_event[0], rx_now, seen.used[0])
            || need_event(input.used_event[1], tx_now, seen.used[1])
    } else {
        rx_now != seen.used[0] || tx_now != seen.used[1]
    };
    if wanted {
        assert_ne!(
            irq.status() & VIRTIO_MMIO_INT_VRING,
            0,
            "used entries without an interrupt"
        );
    }
    seen.used = [rx_now, tx_now];
}
