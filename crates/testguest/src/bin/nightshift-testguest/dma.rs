//! Guest-physical page allocator and the `virtio-drivers` HAL over it.
//!
//! The guest runs on an identity map of the first 4 GiB, so a buffer's address *is* its
//! guest-physical address: sharing a buffer with a device is the identity, and DMA memory
//! is just zeroed pages. The allocator hands out pages from one RAM range past the image
//! and past every `blk` CPU's DMA area (the project's own block driver keeps its fixed
//! layout), bump style and lock free, from any CPU. Nothing is ever freed: each device is
//! set up once per run, so a free list would only add code (`dma_dealloc` says so).

use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};

use testguest::start_info::{StartInfo, MEMMAP_TYPE_RAM};
use virtio_drivers::{BufferDirection, Hal, PhysAddr, PAGE_SIZE};

use crate::cpu;
use crate::physmem::{Identity, MAPPED_END};

/// Bytes set aside past the image for the own block driver's per-CPU DMA areas
/// (`blk::DMA_AREA` for each possible CPU).
const BLK_AREAS: u64 = cpu::MAX_CPUS as u64 * (4 << 20);
/// Bytes assumed to be RAM past the allocator's start when the VMM gives no memory map.
const ASSUMED_WITHOUT_MEMMAP: u64 = 64 << 20;

const PAGE: u64 = PAGE_SIZE as u64;

/// Next free byte (page aligned) and end of the allocator's range; 0..0 until [`init`].
static NEXT: AtomicU64 = AtomicU64::new(0);
static END: AtomicU64 = AtomicU64::new(0);

extern "C" {
    static __image_end: u8;
}

/// BSP, before the APs are released: the range is from past the block areas to the end of
/// the RAM region that holds its start (below 4 GiB). Returns its size in bytes (0 when
/// there is no RAM there).
pub fn init(info: Option<&StartInfo>) -> u64 {
    let image_end = (&raw const __image_end) as u64;
    let start = image_end.next_multiple_of(2 << 20) + BLK_AREAS;
    let end = match info {
        Some(i) if i.memmap_entries > 0 => i
            .memmap(&Identity)
            .filter(|e| e.kind == MEMMAP_TYPE_RAM)
            .find(|e| e.addr <= start && e.addr.saturating_add(e.size) > start)
            .map_or(start, |e| e.addr + e.size),
        _ => start + ASSUMED_WITHOUT_MEMMAP,
    }
    .min(MAPPED_END)
        & !(PAGE - 1);
    END.store(end, Ordering::Relaxed);
    NEXT.store(start, Ordering::Release);
    end - start
}

/// End of the allocator's range: the end of the RAM region it hands pages out of (0
/// before [`init`]).
pub fn end() -> u64 {
    END.load(Ordering::Relaxed)
}

/// `pages` zeroed, contiguous pages; `None` when the range is exhausted.
pub fn alloc_pages(pages: usize) -> Option<u64> {
    let len = (pages as u64).checked_mul(PAGE)?;
    let end = END.load(Ordering::Relaxed);
    let mut at = NEXT.load(Ordering::Acquire);
    loop {
        let next = at.checked_add(len).filter(|&n| at != 0 && n <= end)?;
        match NEXT.compare_exchange_weak(at, next, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => break,
            Err(now) => at = now,
        }
    }
    // SAFETY: [at, at + len) is RAM below 4 GiB (identity mapped, user writable) that the
    // compare-exchange above gave to this caller alone; nothing else refers to it.
    unsafe { core::ptr::write_bytes(at as *mut u8, 0, len as usize) };
    Some(at)
}

/// A zeroed byte buffer of `len` bytes (rounded up to whole pages) that lives for the
/// rest of the run: socket buffers, packet buffers.
pub fn alloc_bytes(len: usize) -> Option<&'static mut [u8]> {
    let at = alloc_pages(len.div_ceil(PAGE_SIZE))?;
    // SAFETY: `alloc_pages` returned zeroed RAM of at least `len` bytes owned by the
    // caller alone and never freed, so a unique `'static` slice over it is sound.
    Some(unsafe { core::slice::from_raw_parts_mut(at as *mut u8, len) })
}

/// A value moved into allocator memory: large driver state that would crowd the 64 KiB
/// user stack. Dropped in place like a `Box` (its pages are not reused).
pub struct Owned<T: 'static>(&'static mut T);

impl<T> Owned<T> {
    /// Moves `value` into fresh pages; `None` when the range is exhausted.
    pub fn new(value: T) -> Option<Self> {
        const { assert!(core::mem::align_of::<T>() <= PAGE_SIZE) };
        let pages = core::mem::size_of::<T>().div_ceil(PAGE_SIZE).max(1);
        let at = alloc_pages(pages)? as *mut T;
        // SAFETY: page-aligned (hence aligned for T), large enough, owned by this handle
        // alone and never handed out again; `write` does not drop the zeroes there.
        unsafe {
            at.write(value);
            Some(Self(&mut *at))
        }
    }
}

impl<T> core::ops::Deref for Owned<T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.0
    }
}

impl<T> core::ops::DerefMut for Owned<T> {
    fn deref_mut(&mut self) -> &mut T {
        self.0
    }
}

impl<T> Drop for Owned<T> {
    fn drop(&mut self) {
        // SAFETY: the value was written in `new`, is owned by this handle alone and is
        // dropped exactly once, here.
        unsafe { core::ptr::drop_in_place(&raw mut *self.0) }
    }
}

/// The HAL `virtio-drivers` runs on.
pub struct GuestHal;

// SAFETY: `dma_alloc` returns zeroed, page-aligned RAM that nothing else uses (the bump
// allocator never hands a page out twice); `mmio_phys_to_virt` and `share` return the
// identity, which is the guest's mapping of all memory below 4 GiB.
unsafe impl Hal for GuestHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        match alloc_pages(pages) {
            Some(at) => (
                at,
                NonNull::new(at as *mut u8).unwrap_or(NonNull::dangling()),
            ),
            // virtio-drivers reads physical address 0 as failure (Error::DmaError).
            None => (0, NonNull::dangling()),
        }
    }

    unsafe fn dma_dealloc(_paddr: PhysAddr, _vaddr: NonNull<u8>, _pages: usize) -> i32 {
        // Never reused (see the module docs); 0 = success, as the trait wants.
        0
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, _size: usize) -> NonNull<u8> {
        NonNull::new(paddr as *mut u8).unwrap_or(NonNull::dangling())
    }

    unsafe fn share(buffer: NonNull<[u8]>, _direction: BufferDirection) -> PhysAddr {
        buffer.as_ptr() as *mut u8 as PhysAddr
    }

    unsafe fn unshare(_paddr: PhysAddr, _buffer: NonNull<[u8]>, _direction: BufferDirection) {}
}

// ---- volatile access to DMA memory -------------------------------------------------------
//
// The guest's own drivers (blk, the hostile net cases) lay out their rings and buffers in
// DMA memory they own: RAM below 4 GiB, identity mapped and user writable, used only by the
// calling CPU and its device. Every caller passes such an address, aligned to the access
// size.

pub fn w8(addr: u64, v: u8) {
    // SAFETY: `addr` is in DMA memory the calling CPU owns (see above).
    unsafe { (addr as *mut u8).write_volatile(v) }
}
pub fn r8(addr: u64) -> u8 {
    // SAFETY: as `w8`.
    unsafe { (addr as *const u8).read_volatile() }
}
pub fn w16(addr: u64, v: u16) {
    // SAFETY: as `w8`; the address is 2-byte aligned.
    unsafe { (addr as *mut u16).write_volatile(v) }
}
pub fn r16(addr: u64) -> u16 {
    // SAFETY: as `w16`.
    unsafe { (addr as *const u16).read_volatile() }
}
pub fn w32(addr: u64, v: u32) {
    // SAFETY: as `w8`; the address is 4-byte aligned.
    unsafe { (addr as *mut u32).write_volatile(v) }
}
pub fn r32(addr: u64) -> u32 {
    // SAFETY: as `w32`.
    unsafe { (addr as *const u32).read_volatile() }
}
pub fn w64(addr: u64, v: u64) {
    // SAFETY: as `w8`; the address is 8-byte aligned.
    unsafe { (addr as *mut u64).write_volatile(v) }
}
