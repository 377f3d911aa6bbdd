//! `vmm::virtio::block::request::parse` on arbitrary descriptor chains.
//!
//! The input is a split queue image (see `nightshift_fuzz::QueueImage`): queue
//! size, avail index, the device's next_avail, the descriptor table, the avail
//! ring, and bytes for request headers and data. Every chain the queue offers
//! is popped and parsed. Checked: no panic, the queue never offers more chains
//! than the avail index allows, and what `parse` accepts honours its contract
//! (buffers and status byte in guest memory, lengths that add up, whole
//! sectors, the 1 MiB bound, directions that match the type).

#![no_main]

use libfuzzer_sys::fuzz_target;
use nightshift_fuzz::{guest_memory, QueueImage, AVAIL, DESC, USED};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemory, Permissions};
use vmm::virtio::block::request::{self, RequestKind, ID_BYTES, MAX_REQUEST_BYTES, SECTOR_SIZE};

fn in_memory(mem: &vmm::memory::GuestMemory, addr: GuestAddress, len: u32) -> bool {
    len == 0 || mem.check_range(addr, len as usize, Permissions::ReadWrite)
}

fuzz_target!(|data: &[u8]| {
    let mem = guest_memory();
    let img = QueueImage::load(&mem, data);

    let mut queue = Queue::new(256).unwrap();
    queue.set_size(img.size);
    assert_eq!(queue.size(), img.size);
    queue.set_desc_table_address(Some(DESC as u32), Some(0));
    queue.set_avail_ring_address(Some(AVAIL as u32), Some(0));
    queue.set_used_ring_address(Some(USED as u32), Some(0));
    queue.set_next_avail(img.next_avail);
    queue.set_ready(true);
    assert!(queue.is_valid(mem.as_ref()));

    // parse() only reads guest memory, so the avail index stays put and the
    // queue must stop after at most avail_idx - next_avail chains (and refuse
    // altogether when that exceeds the queue size).
    let offered = img.avail_idx.wrapping_sub(img.next_avail);
    let limit = if offered > img.size { 0 } else { offered };
    let mut popped: u16 = 0;
    while let Some(chain) = queue.pop_descriptor_chain(mem.as_ref()) {
        popped += 1;
        assert!(
            popped <= limit,
            "queue offered {popped} chains, driver made {limit} available"
        );
        let head = chain.head_index();
        match request::parse(chain) {
            Ok(req) => {
                assert_eq!(req.head, head);
                assert!(in_memory(&mem, req.status, 1), "status byte outside memory");
                let mut total: u64 = 0;
                for seg in &req.data {
                    assert!(
                        in_memory(&mem, seg.addr, seg.len),
                        "segment {seg:?} outside memory"
                    );
                    total += u64::from(seg.len);
                }
                assert_eq!(total, u64::from(req.data_len), "data_len does not add up");
                assert!(req.data_len <= MAX_REQUEST_BYTES);
                match req.kind {
                    RequestKind::In | RequestKind::Out => {
                        assert_eq!(u64::from(req.data_len) % SECTOR_SIZE, 0)
                    }
                    RequestKind::GetId => assert!(req.data_len >= ID_BYTES),
                    RequestKind::Flush | RequestKind::Unsupported(_) => {}
                }
            }
            Err((err, status)) => {
                assert_eq!(status.is_some(), err.status_usable(), "{err}");
                if let Some(status) = status {
                    assert!(
                        in_memory(&mem, status, 1),
                        "usable status byte outside memory"
                    );
                }
            }
        }
    }
    assert_eq!(popped, limit, "queue stopped early");
});
