#!/usr/bin/env python3
"""Writes the seed inputs in fuzz/seeds/<target>/ (checked in; rerun after
changing an input layout). Layouts are documented in each fuzz target."""

import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))

# Fixed layout of nightshift_fuzz::QueueImage.
DESC, AVAIL, USED, DATA = 0x1000, 0x2000, 0x3000, 0x4000
NEXT, WRITE, INDIRECT = 1, 2, 4
T_IN, T_OUT, T_FLUSH, T_GET_ID, T_DISCARD = 0, 1, 4, 8, 11


def desc(addr, length, flags, nxt=0):
    return struct.pack("<QIHH", addr, length, flags, nxt)


def hdr(kind, sector):
    return struct.pack("<IIQ", kind, 0, sector)


def queue_image(size, flags, descs, heads, data=b"", next_avail=0, avail_idx=None):
    """descs: {index: descriptor bytes}; heads: avail ring entries."""
    assert size & (size - 1) == 0 and size <= 256
    table = bytearray(16 * size)
    for i, d in descs.items():
        table[16 * i:16 * i + 16] = d
    ring = bytearray(2 * size)
    for slot, h in enumerate(heads):
        k = 2 * ((next_avail + slot) % size)
        ring[k:k + 2] = struct.pack("<H", h)
    idx = (next_avail + len(heads)) & 0xFFFF if avail_idx is None else avail_idx
    head = bytes([size.bit_length() - 1, flags]) + struct.pack("<HH", idx, next_avail)
    return head + bytes(table) + bytes(ring) + data


def requests(size=16, flags=0):
    """One chain of every kind, headers at DATA."""
    data = bytearray(0x400)
    data[0x00:0x10] = hdr(T_IN, 1)
    data[0x10:0x20] = hdr(T_OUT, 2)
    data[0x20:0x30] = hdr(T_FLUSH, 0)
    data[0x30:0x40] = hdr(T_GET_ID, 0)
    data[0x40:0x50] = hdr(T_DISCARD, 0)
    data[0x100:0x200] = bytes(range(256))  # OUT payload (first half)
    descs = {
        # IN: header, 1 KiB in two writable buffers, status.
        0: desc(DATA, 16, NEXT, 1),
        1: desc(0x10_0000, 512, NEXT | WRITE, 2),
        2: desc(0x10_0200, 512, NEXT | WRITE, 3),
        3: desc(0x20_0000, 1, WRITE),
        # OUT: header, 512 readable bytes, status.
        4: desc(DATA + 0x10, 16, NEXT, 5),
        5: desc(DATA + 0x100, 512, NEXT, 6),
        6: desc(0x20_0001, 1, WRITE),
        # FLUSH: header, status.
        7: desc(DATA + 0x20, 16, NEXT, 8),
        8: desc(0x20_0002, 1, WRITE),
        # GET_ID: header, 20 writable bytes, status.
        9: desc(DATA + 0x30, 16, NEXT, 10),
        10: desc(0x10_1000, 20, NEXT | WRITE, 11),
        11: desc(0x20_0003, 1, WRITE),
        # Unsupported type: header, status.
        12: desc(DATA + 0x40, 16, NEXT, 13),
        13: desc(0x20_0004, 1, WRITE),
    }
    return queue_image(size, flags, descs, [0, 4, 7, 9, 12], bytes(data))


def single(kind, flags=0):
    data = hdr(kind, 3)
    buf = {T_IN: (512, NEXT | WRITE), T_OUT: (512, NEXT), T_GET_ID: (20, NEXT | WRITE)}
    descs = {0: desc(DATA, 16, NEXT, 1)}
    if kind in buf:
        n, f = buf[kind]
        descs[1] = desc(0x10_0000, n, f, 2)
        descs[2] = desc(0x20_0000, 1, WRITE)
    else:
        descs[0] = desc(DATA, 16, NEXT, 2)
        descs[2] = desc(0x20_0000, 1, WRITE)
    return queue_image(4, flags, descs, [0], data)


def indirect(flags=0):
    """Head 0 points at an indirect table at DATA + 0x100 holding an IN request."""
    data = bytearray(0x200)
    data[0:16] = hdr(T_IN, 0)
    table = desc(DATA, 16, NEXT, 1) + desc(0x10_0000, 512, NEXT | WRITE, 2) + desc(0x20_0000, 1, WRITE)
    data[0x100:0x100 + len(table)] = table
    return queue_image(8, flags, {0: desc(DATA + 0x100, len(table), INDIRECT)}, [0], bytes(data))


def hostile(flags=0):
    """A loop, a buffer outside memory, a head out of range, a short header."""
    data = hdr(T_IN, 0)
    descs = {
        0: desc(DATA, 16, NEXT, 1),
        1: desc(0x10_0000, 512, NEXT | WRITE, 0),  # loop 0 -> 1 -> 0
        2: desc(DATA, 16, NEXT, 3),
        3: desc(0xdead_0000_0000, 512, NEXT | WRITE, 4),  # outside memory
        4: desc(0x20_0000, 1, WRITE),
        5: desc(DATA, 8, NEXT, 4),  # short header
    }
    return queue_image(8, flags, descs, [0, 2, 200, 5], data)


# virtio_mmio_transport: accesses [ctl, a, b, v0..v4].
REG = ["MAGIC", "VERSION", "DEVICE_ID", "VENDOR_ID", "DEVICE_FEATURES", "DEVICE_FEATURES_SEL",
       "DRIVER_FEATURES", "DRIVER_FEATURES_SEL", "QUEUE_SEL", "QUEUE_NUM_MAX", "QUEUE_NUM",
       "QUEUE_READY", "QUEUE_NOTIFY", "INTERRUPT_STATUS", "INTERRUPT_ACK", "STATUS",
       "QUEUE_DESC_LOW", "QUEUE_DESC_HIGH", "QUEUE_AVAIL_LOW", "QUEUE_AVAIL_HIGH",
       "QUEUE_USED_LOW", "QUEUE_USED_HIGH", "CONFIG_GENERATION", "CONFIG", "CONFIG4", "CONFIG8"]


def w(name, value):
    return bytes([0x01, REG.index(name), 0]) + struct.pack("<I", value) + b"\0"


def r(name, width_index=0):
    return bytes([width_index << 1, REG.index(name), 0]) + b"\0" * 5


def transport(mode, ops, blob=b""):
    assert len(ops) <= 255
    return bytes([mode, len(ops)]) + b"".join(ops) + blob


def mmio_blob():
    """Guest memory from 0x1000: desc table (16 entries) at 0x1000, avail ring
    at 0x1100, used ring at 0x1200, request headers at 0x1300."""
    blob = bytearray(0x340)
    d = lambda i, b: blob.__setitem__(slice(16 * i, 16 * i + 16), b)
    d(0, desc(0x1300, 16, NEXT, 1))
    d(1, desc(0x10_0000, 512, NEXT | WRITE, 2))
    d(2, desc(0x20_0000, 1, WRITE))
    d(3, desc(0x1310, 16, NEXT, 4))
    d(4, desc(0x20_0001, 1, WRITE))
    blob[0x100:0x108] = struct.pack("<HHHH", 0, 2, 0, 3)  # flags, idx 2, heads 0 and 3
    blob[0x300:0x310] = hdr(T_IN, 0)
    blob[0x310:0x320] = hdr(T_FLUSH, 0)
    return bytes(blob)


def handshake(queues=((0, 16),), features=((1, 1),)):
    ops = [r("MAGIC"), r("VERSION"), r("DEVICE_ID"), w("STATUS", 1), w("STATUS", 3)]
    for sel, value in features:
        ops += [w("DEVICE_FEATURES_SEL", sel), r("DEVICE_FEATURES"),
                w("DRIVER_FEATURES_SEL", sel), w("DRIVER_FEATURES", value)]
    ops.append(w("STATUS", 0xB))
    for sel, size in queues:
        ops += [w("QUEUE_SEL", sel), r("QUEUE_NUM_MAX"), w("QUEUE_NUM", size),
                w("QUEUE_DESC_LOW", 0x1000), w("QUEUE_DESC_HIGH", 0),
                w("QUEUE_AVAIL_LOW", 0x1100), w("QUEUE_AVAIL_HIGH", 0),
                w("QUEUE_USED_LOW", 0x1200), w("QUEUE_USED_HIGH", 0), w("QUEUE_READY", 1)]
    ops.append(w("STATUS", 0xF))
    return ops


def after_ok():
    return [r("STATUS"), w("QUEUE_NOTIFY", 0), r("INTERRUPT_STATUS"), w("INTERRUPT_ACK", 1),
            r("CONFIG"), r("CONFIG4"), r("CONFIG_GENERATION"), w("STATUS", 0), r("STATUS")]


def threads(ops, image):
    """virtio_blk_threads: [n][ops][queue image]; op = b & 7, arg = b >> 3."""
    return bytes([len(ops)]) + bytes(ops) + image


NOTIFY, RESET, UP, MOVE, ACK, YIELD, SLOT, FAILSYNC = range(8)


def op(o, arg=0):
    return o | (arg << 3)


def net(flags, frames, rx, tx, rx_idx=None, tx_idx=None, used_event=(0, 0), bump=(0, 0),
        rx_size=16, tx_size=16, data=b""):
    """virtio_net_device input: rx/tx = (descs {index: bytes}, heads)."""
    def rings(size, descs, heads):
        table = bytearray(16 * size)
        for i, d in descs.items():
            table[16 * i:16 * i + 16] = d
        ring = bytearray(2 * size)
        for slot, h in enumerate(heads):
            ring[2 * slot:2 * slot + 2] = struct.pack("<H", h)
        return bytes(table) + bytes(ring)
    rx_idx = len(rx[1]) if rx_idx is None else rx_idx
    tx_idx = len(tx[1]) if tx_idx is None else tx_idx
    head = bytes([rx_size.bit_length() - 1, tx_size.bit_length() - 1, flags, len(frames)])
    head += struct.pack("<HHHHBB", rx_idx, tx_idx, used_event[0], used_event[1], bump[0], bump[1])
    head += b"".join(struct.pack("<H", n) for n in frames)
    return head + rings(rx_size, *rx) + rings(tx_size, *tx) + data


NET_DATA = 0x8000


def net_rx_buffers(n, length=1526, flags=WRITE):
    return ({i: desc(0x10_0000 + i * 0x1000, length, flags) for i in range(n)}, list(range(n)))


def net_tx_frames():
    # A header and a 60-byte frame in two buffers; a 1526-byte one in one.
    return ({0: desc(NET_DATA, 12, NEXT, 1), 1: desc(NET_DATA + 0x100, 60, 0),
             2: desc(NET_DATA + 0x1000, 12 + 1514, 0)}, [0, 2])


def net_hostile():
    rx = ({0: desc(0x10_0000, 100, WRITE),            # too small for the 1514-byte frame
           1: desc(0x11_0000, 1526, 0),               # device-readable
           2: desc(0x12_0000, 8, WRITE),              # shorter than a vnet header
           3: desc(0xdead_0000_0000, 1526, WRITE),    # outside memory
           4: desc(0x13_0000, 64, NEXT | WRITE, 5), 5: desc(0x13_1000, 64, NEXT | WRITE, 4),  # loop
           6: desc(0x14_0000, 16, INDIRECT),          # indirect (not offered)
           7: desc(0x15_0000, 1526, WRITE)}, [0, 1, 2, 3, 4, 6, 7, 300])  # 300: beyond the queue
    tx = ({0: desc(NET_DATA, 20, 0),                  # runt
           1: desc(NET_DATA, 100, WRITE),             # device-writable
           2: desc(0xdead_0000_0000, 100, 0),         # outside memory
           3: desc(NET_DATA, 64, NEXT, 4), 4: desc(NET_DATA, 64, NEXT, 3),  # loop
           5: desc(NET_DATA, 12 + 65537, 0),          # above 64 KiB
           6: desc(NET_DATA, 12 + 60, 0)}, [0, 1, 2, 3, 5, 6])
    return net(0, [12 + 1514, 5, 12 + 60], rx, tx)


def main():
    seeds = {
        "virtio_blk_request": {
            "requests": requests(),
            "requests_q256": requests(256),
            "in": single(T_IN), "out": single(T_OUT), "flush": single(T_FLUSH),
            "get_id": single(T_GET_ID), "discard": single(T_DISCARD),
            "indirect": indirect(), "hostile": hostile(),
            "wrapped": queue_image(4, 0, {0: desc(DATA, 16, NEXT, 2), 2: desc(0x20_0000, 1, WRITE)},
                                   [0, 0], hdr(T_FLUSH, 0), next_avail=0xFFFF),
        },
        "virtio_blk_device": {
            "requests": requests(), "requests_ro": requests(flags=1),
            "requests_renotify": requests(flags=2 | 4),
            "requests_xts": requests(flags=0x10),
            "in": single(T_IN), "out": single(T_OUT), "out_ro": single(T_OUT, 1),
            "flush": single(T_FLUSH), "get_id": single(T_GET_ID), "discard": single(T_DISCARD),
            "indirect": indirect(), "hostile": hostile(),
        },
        "virtio_blk_threads": {
            # Notify, reset while queued/running, bring up, notify again.
            "reset_race": threads([NOTIFY, RESET, UP, NOTIFY, op(YIELD, 20), RESET], requests()),
            # The same heads made available again while in flight.
            "repost": threads([NOTIFY, op(MOVE, 4), NOTIFY, op(MOVE, 7), NOTIFY, ACK], requests()),
            # A failed fdatasync, then more writes and flushes.
            "flush_fail": threads([op(FAILSYNC), NOTIFY, op(YIELD, 30), RESET, UP, NOTIFY,
                                   op(YIELD, 30)], requests()),
            "indirect": threads([NOTIFY, op(YIELD, 5), RESET], indirect()),
            "hostile": threads([NOTIFY, op(SLOT, 9), op(MOVE, 0), NOTIFY, RESET, UP, NOTIFY],
                               hostile()),
        },
        "virtio_mmio_transport": {
            "blk_handshake": transport(0, handshake() + after_ok(), mmio_blob()),
            "blk_handshake_ro": transport(2, handshake() + after_ok(), mmio_blob()),
            "blk_handshake_xts": transport(4, handshake() + after_ok(), mmio_blob()),
            "dummy_handshake": transport(1, handshake(queues=((0, 16), (1, 16)), features=((0, 5), (1, 3)))
                                         + [w("QUEUE_NOTIFY", 1)] + after_ok(), mmio_blob()),
            "legacy": transport(0, [w("STATUS", 1), w("STATUS", 3), w("STATUS", 0xB), r("STATUS"),
                                    w("QUEUE_NUM", 3), w("STATUS", 0xF), w("QUEUE_NOTIFY", 0)]),
            "odd_accesses": transport(0, [bytes([0x09, 15, 0, 1, 0, 0, 0, 0]),   # 1-byte status write
                                          bytes([0x0C, 0, 0, 0, 0, 0, 0, 0]),    # 8-byte magic read
                                          bytes([0x21, 0xF0, 0, 7, 0, 0, 0, 0]),  # undefined register
                                          bytes([0x81, 15, 1, 1, 0, 0, 0, 0]),   # misaligned status
                                          bytes([0x30, 0, 0, 0, 0, 0, 0, 0xFF])]),  # huge offset read
        },
        "virtio_net_device": {
            "frames": net(0, [12 + 60, 12 + 1514], net_rx_buffers(4), net_tx_frames()),
            "frames_event_idx": net(1, [12 + 60, 12 + 1514, 12 + 100], net_rx_buffers(4),
                                    net_tx_frames(), used_event=(1, 0)),
            "hostile": net_hostile(),
            "no_rx_buffers_then_two": net(2, [12 + 60] * 4, net_rx_buffers(2), net_tx_frames(),
                                          rx_idx=0, bump=(2, 0)),
            "frame_too_big_event_idx_2nd_round": net(0x13, [0, 12 + 70], net_rx_buffers(2),
                                                     net_tx_frames(), used_event=(5, 5), bump=(1, 1)),
        },
        "config_parsers": {
            "cpus": b"0-3,6", "pin": b"1=2-3", "disk": b"disk.img,ro,xts=4",
            "one": b"0", "spaces": b" 1 - 2 , 7", "disk_plain": b"a.img",
        },
    }
    for target, files in seeds.items():
        d = os.path.join(HERE, target)
        os.makedirs(d, exist_ok=True)
        for name, data in files.items():
            with open(os.path.join(d, name), "wb") as f:
                f.write(data)


if __name__ == "__main__":
    main()
