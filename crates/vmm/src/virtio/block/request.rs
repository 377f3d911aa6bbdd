//! Turning a descriptor chain into a block request, trusting nothing in it.
//!
//! A well-formed chain is: a 16-byte header the device reads (type, reserved,
//! sector), data buffers (device-writable for IN and GET_ID, device-readable
//! for OUT), and a last, device-writable status byte. Every buffer must lie in
//! guest memory; the chain must end (no loop, no truncation); sizes must add up
//! without overflow and be whole sectors for IN and OUT.

use std::ops::Deref;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::DescriptorChain;
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemory};

/// Bytes per virtio-blk sector.
pub const SECTOR_SIZE: u64 = 512;
/// Largest data a request may carry (a bound on bounce buffers): 1 MiB.
pub const MAX_REQUEST_BYTES: u32 = 1 << 20;
/// Bytes of the GET_ID answer.
pub const ID_BYTES: u32 = 20;

/// The 16-byte request header (`struct virtio_blk_outhdr`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct RequestHeader {
    request_type: u32,
    _reserved: u32,
    sector: u64,
}

// SAFETY: plain old data of fixed layout; any bit pattern is valid.
unsafe impl ByteValued for RequestHeader {}

/// What a request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestKind {
    /// Read sectors into the guest.
    In,
    /// Write sectors from the guest.
    Out,
    /// Make written data durable.
    Flush,
    /// Return the device ID string.
    GetId,
    /// A type we do not implement (answered UNSUPP).
    Unsupported(u32),
}

/// A guest buffer: address and length, checked to lie in guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Guest physical address.
    pub addr: GuestAddress,
    /// Length in bytes.
    pub len: u32,
}

/// A parsed request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// Descriptor index of the chain head (for the used ring).
    pub head: u16,
    /// What is asked.
    pub kind: RequestKind,
    /// First sector.
    pub sector: u64,
    /// Data buffers, in order.
    pub data: Vec<Segment>,
    /// Total data bytes.
    pub data_len: u32,
    /// Where the status byte goes.
    pub status: GuestAddress,
}

/// Why a chain is not a request. If the status byte is usable the device
/// answers IOERR there; otherwise it returns the chain with nothing written.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    /// No descriptors at all (bad head index or unreadable table).
    #[error("empty or unreadable descriptor chain")]
    Empty,
    /// The chain loops or is longer than the queue.
    #[error("descriptor chain does not end (loop or longer than the queue)")]
    Unterminated,
    /// The header descriptor is too short, writable, or outside memory.
    #[error("bad request header descriptor")]
    BadHeader,
    /// The last descriptor is not a writable status byte in guest memory.
    #[error("bad status descriptor")]
    BadStatus,
    /// A data buffer lies outside guest memory.
    #[error("data buffer {0:#x}+{1:#x} is outside guest memory")]
    BadBuffer(u64, u32),
    /// Data buffers have the wrong direction for the request type.
    #[error("data buffer direction does not match the request type")]
    WrongDirection,
    /// The data length is not whole sectors, or too large.
    #[error("bad data length {0}")]
    BadLength(u64),
}

impl RequestError {
    /// Whether the status byte can still carry an error to the guest.
    pub fn status_usable(&self) -> bool {
        !matches!(
            self,
            RequestError::Empty | RequestError::Unterminated | RequestError::BadStatus
        )
    }
}

/// Parses the chain; on error also returns the status address when usable.
pub fn parse<M>(
    mut chain: DescriptorChain<M>,
) -> Result<Request, (RequestError, Option<GuestAddress>)>
where
    M: Deref,
    M::Target: GuestMemory,
{
    let head = chain.head_index();
    let descs: Vec<Descriptor> = chain.by_ref().collect();
    let mem = chain.memory();

    let (status_desc, rest) = descs.split_last().ok_or((RequestError::Empty, None))?;
    if status_desc.has_next() {
        // The iterator stopped before the chain's end: it loops or is too long.
        return Err((RequestError::Unterminated, None));
    }
    let status = status_desc.addr();
    if !status_desc.is_write_only() || status_desc.len() < 1 || !in_memory(mem, status, 1) {
        return Err((RequestError::BadStatus, None));
    }
    let fail = |e| Err((e, Some(status)));

    let Some((header_desc, data_descs)) = rest.split_first() else {
        return fail(RequestError::BadHeader);
    };
    if header_desc.is_write_only()
        || (header_desc.len() as usize) < std::mem::size_of::<RequestHeader>()
    {
        return fail(RequestError::BadHeader);
    }
    let Ok(header) = mem.read_obj::<RequestHeader>(header_desc.addr()) else {
        return fail(RequestError::BadHeader);
    };
    let kind = match header.request_type {
        VIRTIO_BLK_T_IN => RequestKind::In,
        VIRTIO_BLK_T_OUT => RequestKind::Out,
        VIRTIO_BLK_T_FLUSH => RequestKind::Flush,
        VIRTIO_BLK_T_GET_ID => RequestKind::GetId,
        other => RequestKind::Unsupported(other),
    };

    let device_writes = matches!(kind, RequestKind::In | RequestKind::GetId);
    let mut data = Vec::with_capacity(data_descs.len());
    let mut total: u64 = 0;
    for d in data_descs {
        if !in_memory(mem, d.addr(), d.len()) {
            return fail(RequestError::BadBuffer(d.addr().0, d.len()));
        }
        if matches!(
            kind,
            RequestKind::In | RequestKind::Out | RequestKind::GetId
        ) && d.is_write_only() != device_writes
        {
            return fail(RequestError::WrongDirection);
        }
        total += u64::from(d.len());
        data.push(Segment {
            addr: d.addr(),
            len: d.len(),
        });
    }
    let bad_len = match kind {
        RequestKind::In | RequestKind::Out => total % SECTOR_SIZE != 0,
        RequestKind::GetId => total < u64::from(ID_BYTES),
        _ => false,
    };
    if bad_len || total > u64::from(MAX_REQUEST_BYTES) {
        return fail(RequestError::BadLength(total));
    }
    Ok(Request {
        head,
        kind,
        sector: header.sector,
        data,
        data_len: total as u32,
        status,
    })
}

fn in_memory<M: GuestMemory + ?Sized>(mem: &M, addr: GuestAddress, len: u32) -> bool {
    len == 0 || mem.check_range(addr, len as usize, vm_memory::Permissions::ReadWrite)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::memory::{create_guest_memory, GuestMemory as Mem};
    use std::sync::Arc;
    use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::{Queue, QueueOwnedT, QueueT};

    pub const DESC: u64 = 0x1000;
    pub const AVAIL: u64 = 0x2000;
    pub const USED: u64 = 0x3000;
    pub const QSIZE: u16 = 16;

    /// A guest-side view of a split queue, for building chains in tests.
    pub struct TestQueue {
        pub mem: Arc<Mem>,
        pub queue: Queue,
        avail_idx: u16,
    }

    impl TestQueue {
        pub fn new() -> Self {
            let mem = create_guest_memory(16 << 20).unwrap();
            let mut queue = Queue::new(QSIZE).unwrap();
            queue.set_desc_table_address(Some(DESC as u32), Some(0));
            queue.set_avail_ring_address(Some(AVAIL as u32), Some(0));
            queue.set_used_ring_address(Some(USED as u32), Some(0));
            queue.set_ready(true);
            TestQueue {
                mem,
                queue,
                avail_idx: 0,
            }
        }

        /// Writes descriptors `(index, addr, len, flags, next)` and offers `head`.
        pub fn offer(&mut self, descs: &[(u16, u64, u32, u16, u16)], head: u16) {
            for &(i, addr, len, flags, next) in descs {
                let d = Descriptor::new(addr, len, flags, next);
                self.mem
                    .write_obj(d, GuestAddress(DESC + 16 * u64::from(i)))
                    .unwrap();
            }
            let slot = AVAIL + 4 + 2 * u64::from(self.avail_idx % QSIZE);
            self.mem.write_obj(head, GuestAddress(slot)).unwrap();
            self.avail_idx = self.avail_idx.wrapping_add(1);
            self.mem
                .write_obj(self.avail_idx, GuestAddress(AVAIL + 2))
                .unwrap();
        }

        pub fn header(&self, at: u64, request_type: u32, sector: u64) {
            let h = RequestHeader {
                request_type,
                _reserved: 0,
                sector,
            };
            self.mem.write_obj(h, GuestAddress(at)).unwrap();
        }

        pub fn pop(&mut self) -> DescriptorChain<&Mem> {
            self.queue.iter(self.mem.as_ref()).unwrap().next().unwrap()
        }
    }

    const N: u16 = VRING_DESC_F_NEXT as u16;
    const W: u16 = VRING_DESC_F_WRITE as u16;

    #[test]
    fn a_read_request_parses() {
        let mut q = TestQueue::new();
        q.header(0x10_0000, VIRTIO_BLK_T_IN, 8);
        q.offer(
            &[
                (0, 0x10_0000, 16, N, 1),
                (1, 0x20_0000, 4096, N | W, 2),
                (2, 0x30_0000, 1, W, 0),
            ],
            0,
        );
        let r = parse(q.pop()).unwrap();
        assert_eq!(
            (r.kind, r.sector, r.data_len, r.status),
            (RequestKind::In, 8, 4096, GuestAddress(0x30_0000))
        );
    }

    #[test]
    fn hostile_chains_are_refused() {
        type Case = (Vec<(u16, u64, u32, u16, u16)>, u32, RequestError);
        let cases: Vec<Case> = vec![
            // Data buffer outside guest memory.
            (
                vec![
                    (0, 0x10_0000, 16, N, 1),
                    (1, 0xdead_0000_0000, 512, N | W, 2),
                    (2, 0x30_0000, 1, W, 0),
                ],
                VIRTIO_BLK_T_IN,
                RequestError::BadBuffer(0xdead_0000_0000, 512),
            ),
            // Length that runs off the end of memory.
            (
                vec![
                    (0, 0x10_0000, 16, N, 1),
                    (1, 0xf0_0000, 0x7fff_ffff, N | W, 2),
                    (2, 0x30_0000, 1, W, 0),
                ],
                VIRTIO_BLK_T_IN,
                RequestError::BadBuffer(0xf0_0000, 0x7fff_ffff),
            ),
            // A loop: 0 -> 1 -> 0.
            (
                vec![(0, 0x10_0000, 16, N, 1), (1, 0x20_0000, 512, N | W, 0)],
                VIRTIO_BLK_T_IN,
                RequestError::Unterminated,
            ),
            // Header too short.
            (
                vec![(0, 0x10_0000, 8, N, 2), (2, 0x30_0000, 1, W, 0)],
                VIRTIO_BLK_T_IN,
                RequestError::BadHeader,
            ),
            // Status not writable.
            (
                vec![(0, 0x10_0000, 16, N, 2), (2, 0x30_0000, 1, 0, 0)],
                VIRTIO_BLK_T_FLUSH,
                RequestError::BadStatus,
            ),
            // Device-readable buffer for a read.
            (
                vec![
                    (0, 0x10_0000, 16, N, 1),
                    (1, 0x20_0000, 512, N, 2),
                    (2, 0x30_0000, 1, W, 0),
                ],
                VIRTIO_BLK_T_IN,
                RequestError::WrongDirection,
            ),
            // Not whole sectors.
            (
                vec![
                    (0, 0x10_0000, 16, N, 1),
                    (1, 0x20_0000, 100, N, 2),
                    (2, 0x30_0000, 1, W, 0),
                ],
                VIRTIO_BLK_T_OUT,
                RequestError::BadLength(100),
            ),
            // Next index beyond the queue.
            (
                vec![(0, 0x10_0000, 16, N, 99)],
                VIRTIO_BLK_T_IN,
                RequestError::Unterminated,
            ),
        ];
        for (descs, t, want) in cases {
            let mut q = TestQueue::new();
            q.header(0x10_0000, t, 0);
            q.offer(&descs, 0);
            let (err, status) = parse(q.pop()).unwrap_err();
            assert_eq!(err, want, "{descs:x?}");
            assert_eq!(status.is_some(), want.status_usable());
        }
    }
}
