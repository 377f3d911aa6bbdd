//! A descriptor chain's buffers, checked before a device touches them.
//!
//! Net and rng chains are plain lists of buffers all going one way (the
//! device reads a TX frame, writes an RX frame or random bytes). A chain is
//! usable if it ends (no loop, not longer than the queue), every buffer lies
//! in guest memory, every buffer has the expected direction and the total
//! stays within the device's bound. Copies in and out go through guest
//! memory's checked accessors only.

use std::ops::Deref;

use virtio_queue::desc::split::Descriptor;
use virtio_queue::{DescriptorChain, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemory, Permissions};

use crate::memory::GuestMemory as Mem;

/// A guest buffer, checked to lie in guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Guest physical address.
    pub addr: GuestAddress,
    /// Length in bytes.
    pub len: u32,
}

/// The buffers of one chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Buffers {
    /// The chain's head (for the used ring).
    pub head: u16,
    /// The buffers, in order.
    pub segments: Vec<Segment>,
    /// Their total length.
    pub len: u32,
}

/// Which way the buffers go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// The device reads them (the driver's data).
    DeviceReads,
    /// The device writes them.
    DeviceWrites,
}

/// Why a chain is unusable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChainError {
    /// No descriptors (bad head index or unreadable table).
    #[error("empty or unreadable descriptor chain")]
    Empty,
    /// The chain loops or is longer than the queue.
    #[error("descriptor chain does not end (loop or longer than the queue)")]
    Unterminated,
    /// A buffer goes the wrong way.
    #[error("a buffer has the wrong direction (expected {0:?})")]
    WrongDirection(Direction),
    /// A buffer lies outside guest memory.
    #[error("buffer {0:#x}+{1:#x} is outside guest memory")]
    OutsideMemory(u64, u32),
    /// The buffers add up to more than the device takes.
    #[error("chain holds {0} bytes, more than {1}")]
    TooLong(u64, u64),
    /// A descriptor refers to an indirect table, a feature the device did not offer.
    #[error("indirect descriptor (VIRTIO_F_INDIRECT_DESC was not offered)")]
    Indirect,
}

/// Checks `chain`'s buffers; `max` bounds their total length, and so does
/// `u32::MAX` whatever `max` says (a used length is a u32: a longer chain
/// is refused, never counted short).
pub fn buffers<M>(
    mut chain: DescriptorChain<M>,
    direction: Direction,
    max: u64,
) -> Result<Buffers, ChainError>
where
    M: Deref,
    M::Target: GuestMemory,
{
    let max = max.min(u64::from(u32::MAX));
    let head = chain.head_index();
    let descs: Vec<Descriptor> = chain.by_ref().collect();
    let mem = chain.memory();
    let last = descs.last().ok_or(ChainError::Empty)?;
    if last.has_next() {
        // The iterator stopped before the chain's end.
        return Err(ChainError::Unterminated);
    }
    let mut segments = Vec::with_capacity(descs.len());
    let mut total = 0u64;
    for d in &descs {
        if d.is_write_only() != (direction == Direction::DeviceWrites) {
            return Err(ChainError::WrongDirection(direction));
        }
        if d.len() > 0 && !mem.check_range(d.addr(), d.len() as usize, Permissions::ReadWrite) {
            return Err(ChainError::OutsideMemory(d.addr().0, d.len()));
        }
        total += u64::from(d.len());
        if total > max {
            return Err(ChainError::TooLong(total, max));
        }
        segments.push(Segment {
            addr: d.addr(),
            len: d.len(),
        });
    }
    Ok(Buffers {
        head,
        segments,
        len: total as u32,
    })
}

/// [`buffers`] of a chain popped from `queue`, refusing indirect descriptors
/// first: virtio-queue would follow them even though the device does not
/// offer `VIRTIO_F_INDIRECT_DESC`, so a driver could make the device read a
/// table it never agreed to.
pub fn checked_buffers<M>(
    queue: &impl QueueT,
    chain: DescriptorChain<M>,
    direction: Direction,
    max: u64,
) -> Result<Buffers, ChainError>
where
    M: Deref,
    M::Target: GuestMemory,
{
    if uses_indirect(
        chain.memory(),
        queue.desc_table(),
        queue.size(),
        chain.head_index(),
    ) {
        return Err(ChainError::Indirect);
    }
    buffers(chain, direction, max)
}

/// Whether the chain at `head` of the table at `table` (`size` entries) has a
/// descriptor with VIRTQ_DESC_F_INDIRECT. Walks at most `size` descriptors,
/// as virtio-queue does; an unreadable descriptor ends the walk (the chain
/// check then refuses the chain for its own reason).
pub fn uses_indirect<G: GuestMemory + ?Sized>(mem: &G, table: u64, size: u16, head: u16) -> bool {
    let mut index = head;
    for _ in 0..size {
        let at = u64::from(index)
            .checked_mul(16)
            .and_then(|o| table.checked_add(o));
        let Some(desc) = at.and_then(|a| mem.read_obj::<Descriptor>(GuestAddress(a)).ok()) else {
            return false;
        };
        if desc.refers_to_indirect_table() {
            return true;
        }
        if !desc.has_next() || desc.next() >= size {
            return false;
        }
        index = desc.next();
    }
    false
}

/// Whether the `n`th guest error of a kind is logged: the first few, then
/// at powers of two, so a guest cannot flood the log (its counter says all).
pub fn worth_logging(n: u64) -> bool {
    n <= 8 || n.is_power_of_two()
}

impl Buffers {
    /// Copies the buffers' bytes into `out` (which holds at least `self.len`).
    pub fn read_into(&self, mem: &Mem, out: &mut [u8]) -> Result<(), vm_memory::GuestMemoryError> {
        let mut at = 0;
        for s in &self.segments {
            let n = s.len as usize;
            mem.read_slice(&mut out[at..at + n], s.addr)?;
            at += n;
        }
        Ok(())
    }

    /// Writes `data` across the buffers (it must fit); returns the bytes written.
    pub fn write_from(&self, mem: &Mem, data: &[u8]) -> Result<u32, vm_memory::GuestMemoryError> {
        let mut rest = data;
        for s in &self.segments {
            if rest.is_empty() {
                break;
            }
            let (now, later) = rest.split_at((s.len as usize).min(rest.len()));
            mem.write_slice(now, s.addr)?;
            rest = later;
        }
        Ok((data.len() - rest.len()) as u32)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    //! A synthetic driver: a split queue laid out in test guest memory.

    use super::*;
    use crate::memory::create_guest_memory;
    use std::sync::Arc;
    use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::{Queue, QueueOwnedT, QueueT};
    use vm_memory::Address;

    pub const N: u16 = VRING_DESC_F_NEXT as u16;
    pub const W: u16 = VRING_DESC_F_WRITE as u16;

    /// The guest side of one split queue: its rings at `base`, buffers anywhere.
    pub struct Driver {
        pub mem: Arc<Mem>,
        base: u64,
        size: u16,
        avail_idx: u16,
        used_seen: u16,
        next_desc: u16,
        /// The ring index the queue starts at (0 unless [`Driver::starting_at`]).
        start: u16,
    }

    impl Driver {
        /// A queue of `size` whose descriptor table is at `base`.
        pub fn new(mem: Arc<Mem>, base: u64, size: u16) -> Self {
            Driver {
                mem,
                base,
                size,
                avail_idx: 0,
                used_seen: 0,
                next_desc: 0,
                start: 0,
            }
        }

        /// The same queue as if `idx` chains had already gone round it: the
        /// avail and used indices (the driver's, the rings' and the device's)
        /// all start at `idx`, so a test can cross the u16 wrap quickly.
        pub fn starting_at(mem: Arc<Mem>, base: u64, size: u16, idx: u16) -> Self {
            let mut d = Driver::new(mem, base, size);
            d.avail_idx = idx;
            d.used_seen = idx;
            d.start = idx;
            d.mem.write_obj(idx, GuestAddress(d.avail() + 2)).unwrap();
            d.mem.write_obj(idx, GuestAddress(d.used() + 2)).unwrap();
            // EVENT_IDX fields as a device and driver that stopped there left them.
            d.set_used_event(idx);
            let at = d.used() + 4 + 8 * u64::from(size);
            d.mem.write_obj(idx, GuestAddress(at)).unwrap();
            d
        }

        /// The driver's avail index (chains offered so far, wrapping).
        pub fn avail_idx(&self) -> u16 {
            self.avail_idx
        }

        /// EVENT_IDX: the device's `avail_event` (after the used ring's entries).
        pub fn avail_event(&self) -> u16 {
            let at = self.used() + 4 + 8 * u64::from(self.size);
            self.mem.read_obj(GuestAddress(at)).unwrap()
        }

        /// EVENT_IDX: asks for an interrupt once the device writes used entry
        /// `idx` (`used_event`, after the avail ring's entries).
        pub fn set_used_event(&self, idx: u16) {
            let at = self.avail() + 4 + 2 * u64::from(self.size);
            self.mem.write_obj(idx, GuestAddress(at)).unwrap();
        }

        /// Used entries seen so far (the driver's last_used_idx).
        pub fn used_seen(&self) -> u16 {
            self.used_seen
        }

        /// Test guest memory big enough for a few queues and frames.
        pub fn memory() -> Arc<Mem> {
            create_guest_memory(16 << 20).unwrap()
        }

        fn desc(&self) -> u64 {
            self.base
        }
        fn avail(&self) -> u64 {
            self.base + 16 * u64::from(self.size)
        }
        fn used(&self) -> u64 {
            (self.avail() + 6 + 2 * u64::from(self.size)).next_multiple_of(4)
        }

        /// The device's view of the queue, as the transport would hand it over.
        pub fn queue(&self) -> Queue {
            let mut q = Queue::new(self.size).unwrap();
            q.set_desc_table_address(Some(self.desc() as u32), Some(0));
            q.set_avail_ring_address(Some(self.avail() as u32), Some(0));
            q.set_used_ring_address(Some(self.used() as u32), Some(0));
            q.set_next_avail(self.start);
            q.set_next_used(self.start);
            q.set_ready(true);
            assert!(q.is_valid(self.mem.as_ref()));
            q
        }

        /// Writes raw descriptors `(index, addr, len, flags, next)` and offers `head`.
        pub fn offer_raw(&mut self, descs: &[(u16, u64, u32, u16, u16)], head: u16) {
            for &(i, addr, len, flags, next) in descs {
                let d = Descriptor::new(addr, len, flags, next);
                self.mem
                    .write_obj(d, GuestAddress(self.desc() + 16 * u64::from(i)))
                    .unwrap();
            }
            let slot = self.avail() + 4 + 2 * u64::from(self.avail_idx % self.size);
            self.mem.write_obj(head, GuestAddress(slot)).unwrap();
            self.avail_idx = self.avail_idx.wrapping_add(1);
            self.mem
                .write_obj(self.avail_idx, GuestAddress(self.avail() + 2))
                .unwrap();
        }

        /// Offers one chain of buffers `(addr, len)` in direction `flags`
        /// (0 or [`W`]), using the next free descriptors; returns the head.
        pub fn offer(&mut self, bufs: &[(u64, u32)], flags: u16) -> u16 {
            let head = self.next_desc;
            let n = bufs.len() as u16;
            let descs: Vec<_> = bufs
                .iter()
                .enumerate()
                .map(|(k, &(addr, len))| {
                    let i = (head + k as u16) % self.size;
                    let last = k as u16 + 1 == n;
                    let f = flags | if last { 0 } else { N };
                    (i, addr, len, f, (i + 1) % self.size)
                })
                .collect();
            self.next_desc = (head + n) % self.size;
            self.offer_raw(&descs, head);
            head
        }

        /// Used entries `(head, len)` the device added since the last call.
        pub fn used_entries(&mut self) -> Vec<(u16, u32)> {
            let idx: u16 = self.mem.read_obj(GuestAddress(self.used() + 2)).unwrap();
            let mut out = Vec::new();
            while self.used_seen != idx {
                let at = self.used() + 4 + 8 * u64::from(self.used_seen % self.size);
                let id: u32 = self.mem.read_obj(GuestAddress(at)).unwrap();
                let len: u32 = self
                    .mem
                    .read_obj(GuestAddress(at).unchecked_add(4))
                    .unwrap();
                out.push((id as u16, len));
                self.used_seen = self.used_seen.wrapping_add(1);
            }
            out
        }

        /// Reads `len` bytes of guest memory.
        pub fn read(&self, addr: u64, len: usize) -> Vec<u8> {
            let mut v = vec![0; len];
            self.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
            v
        }

        /// Writes guest memory.
        pub fn write(&self, addr: u64, data: &[u8]) {
            self.mem.write_slice(data, GuestAddress(addr)).unwrap();
        }
    }

    fn check(d: &mut Driver, dir: Direction, max: u64) -> Result<Buffers, ChainError> {
        let mut q = d.queue();
        let chain = q.iter(d.mem.as_ref()).unwrap().next().unwrap();
        buffers(chain, dir, max)
    }

    #[test]
    fn hostile_chains_are_refused() {
        let mem = Driver::memory();
        type Desc = (u16, u64, u32, u16, u16);
        let cases: Vec<(Vec<Desc>, ChainError)> = vec![
            (
                vec![(0, 0x10_0000, 16, N, 1), (1, 0x11_0000, 16, N, 0)],
                ChainError::Unterminated,
            ),
            (
                vec![(0, 0xdead_0000_0000, 16, W, 0)],
                ChainError::OutsideMemory(0xdead_0000_0000, 16),
            ),
            (
                vec![(0, 0xff_f000, 0x10_0000, W, 0)],
                ChainError::OutsideMemory(0xff_f000, 0x10_0000),
            ),
            (
                vec![(0, 0x10_0000, 16, W | N, 1), (1, 0x11_0000, 16, 0, 0)],
                ChainError::WrongDirection(Direction::DeviceWrites),
            ),
            (
                vec![(0, 0x10_0000, 0x800, W | N, 1), (1, 0x11_0000, 0x801, W, 0)],
                ChainError::TooLong(0x1001, 0x1000),
            ),
        ];
        for (descs, want) in cases {
            let mut d = Driver::new(mem.clone(), 0, 16);
            d.offer_raw(&descs, 0);
            assert_eq!(check(&mut d, Direction::DeviceWrites, 0x1000), Err(want));
        }
        let mut d = Driver::new(mem, 0, 16);
        d.offer(&[(0x10_0000, 100), (0x20_0000, 28)], W);
        let b = check(&mut d, Direction::DeviceWrites, 0x1000).unwrap();
        assert_eq!((b.head, b.len, b.segments.len()), (0, 128, 2));
        let n = b.write_from(&d.mem, &[7; 101]).unwrap();
        assert_eq!((n, d.read(0x20_0000, 2)), (101, vec![7, 0]));
    }
}
