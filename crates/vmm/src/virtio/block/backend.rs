//! The disk behind virtio-blk: a raw image file, optionally encrypted per
//! sector with AES-256-XTS (as dm-crypt does, [`super::xts`]), so the device's work costs real
//! CPU. `passes` repeats the cipher to scale that cost for benchmarks.
//!
//! I/O goes through a bounce buffer: positional reads and writes on the file
//! (safe to run from several threads at once), then guest memory is copied
//! with vm-memory's checked accessors.
//!
//! Durability rules (docs/containment.md):
//! - Every host call is retried on EINTR and continued after a short read or
//!   write ([`Storage`] is the one place the file is touched, so the loops
//!   here cover every path, whatever signals the vCPU threads get).
//! - A failed `fdatasync` is **sticky**: Linux reports a writeback error to
//!   one fsync caller and then forgets it, so a second FLUSH would succeed
//!   over data the kernel already dropped. After the first failure every
//!   later FLUSH and write fails (IOERR) until the VMM restarts; a device
//!   reset does not clear it (the lost data stays lost). Reads still work.
//! - Flushes are serialised: a FLUSH's `fdatasync` starts after it was
//!   submitted, so it covers every write completed before it, and two
//!   flushes cannot split one writeback error between them.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use vm_memory::{Bytes, GuestAddress};

use super::request::{Segment, SECTOR_SIZE};
use super::xts::{Direction, Xts};
use crate::image::DiskImage;
use crate::memory::GuestMemory;

/// How the image's sectors are transformed on their way to and from the file.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum Transform {
    /// Stored as the guest wrote it.
    #[default]
    None,
    /// AES-256-XTS per 512-byte sector, the cipher run `passes` times.
    Xts {
        /// 64 key bytes (two AES-256 keys).
        key: [u8; 64],
        /// Cipher passes per sector (≥ 1): a cost knob for benchmarks.
        passes: u32,
    },
}

/// An I/O error, or a request beyond the disk's end.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// Sector range beyond the end of the disk.
    #[error("sectors {0}..+{1} bytes are beyond the disk's end")]
    OutOfRange(u64, u32),
    /// The host file failed.
    #[error("host I/O: {0}")]
    Io(#[from] std::io::Error),
    /// Guest memory could not be accessed (checked at parse; a race with the guest).
    #[error("guest memory: {0}")]
    Memory(String),
    /// An earlier fdatasync failed: writes may have been lost, so no later
    /// write or flush is acknowledged.
    #[error("an earlier flush failed; the disk accepts no more writes")]
    FlushFailed,
}

/// Where a disk image lives: positional I/O and a data sync, each one system
/// call that may return early (EINTR, a short count). [`File`] is the real
/// one; tests inject faults through others.
pub trait Storage: Send + Sync {
    /// One `pread`.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    /// One `pwrite`.
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<usize>;
    /// One `fdatasync`.
    fn sync_data(&self) -> io::Result<()>;
}

impl Storage for File {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        FileExt::read_at(self, buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<usize> {
        FileExt::write_at(self, buf, offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        File::sync_data(self)
    }
}

/// Shared storage (a test keeps a handle to its fault injector).
impl<T: Storage + ?Sized> Storage for std::sync::Arc<T> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        (**self).read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<usize> {
        (**self).write_at(buf, offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        (**self).sync_data()
    }
}

/// Reads all of `buf` at `offset`: retries EINTR, continues short reads.
fn read_full(s: &dyn Storage, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
    while !buf.is_empty() {
        match s.read_at(buf, offset) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes all of `buf` at `offset`: retries EINTR, continues short writes.
fn write_full(s: &dyn Storage, mut buf: &[u8], mut offset: u64) -> io::Result<()> {
    while !buf.is_empty() {
        match s.write_at(buf, offset) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                buf = &buf[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// fdatasync, retried on EINTR (an interrupted sync reported nothing yet).
fn sync_full(s: &dyn Storage) -> io::Result<()> {
    loop {
        match s.sync_data() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            r => return r,
        }
    }
}

/// A raw disk image.
pub struct Disk {
    file: Box<dyn Storage>,
    size: u64,
    read_only: bool,
    cipher: Option<(Xts, u32)>,
    flushes: AtomicU64,
    /// Held across each fdatasync (flushes are serialised).
    flush_lock: Mutex<()>,
    /// Set for good when an fdatasync failed.
    flush_failed: AtomicBool,
}

impl Disk {
    /// Opens `path` (read-write unless `read_only`): a regular file or a
    /// block device, locked against other writers (see [`crate::image`]).
    pub fn open(path: &Path, read_only: bool, transform: Transform) -> std::io::Result<Disk> {
        let DiskImage { file, size } = DiskImage::open(path, read_only)?;
        Ok(Disk::with_storage(
            Box::new(file),
            size,
            read_only,
            transform,
        ))
    }

    /// A disk on `storage` of `size` bytes (rounded down to whole sectors).
    pub fn with_storage(
        storage: Box<dyn Storage>,
        size: u64,
        read_only: bool,
        transform: Transform,
    ) -> Disk {
        let size = size / SECTOR_SIZE * SECTOR_SIZE;
        let cipher = match transform {
            Transform::None => None,
            Transform::Xts { key, passes } => Some((Xts::new(&key), passes.max(1))),
        };
        Disk {
            file: storage,
            size,
            read_only,
            cipher,
            flushes: AtomicU64::new(0),
            flush_lock: Mutex::new(()),
            flush_failed: AtomicBool::new(false),
        }
    }

    /// Capacity in bytes (whole sectors).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether writes are refused.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// Flushes done so far (each an fdatasync that succeeded).
    pub fn flushes(&self) -> u64 {
        self.flushes.load(Ordering::Relaxed)
    }

    /// Whether an fdatasync failed (the disk then refuses writes and flushes).
    pub fn flush_failed(&self) -> bool {
        self.flush_failed.load(Ordering::Acquire)
    }

    /// Runs the configured cipher over `buf`, whose first sector is `first_sector`.
    fn transform(&self, dir: Direction, buf: &mut [u8], first_sector: u128) {
        if let Some((xts, passes)) = &self.cipher {
            xts.apply(dir, buf, first_sector, *passes);
        }
    }

    fn check_range(&self, sector: u64, len: u32) -> Result<u64, DiskError> {
        let offset = sector.checked_mul(SECTOR_SIZE).filter(|o| {
            o.checked_add(u64::from(len))
                .is_some_and(|end| end <= self.size)
        });
        offset.ok_or(DiskError::OutOfRange(sector, len))
    }

    /// Reads `len` bytes at `sector` into the guest buffers `data`.
    pub fn read(
        &self,
        mem: &GuestMemory,
        sector: u64,
        data: &[Segment],
        len: u32,
    ) -> Result<(), DiskError> {
        let offset = self.check_range(sector, len)?;
        let mut buf = vec![0u8; len as usize];
        read_full(self.file.as_ref(), &mut buf, offset)?;
        self.transform(Direction::Decrypt, &mut buf, sector.into());
        scatter(mem, &buf, data)
    }

    /// Writes `len` bytes from the guest buffers `data` at `sector`.
    pub fn write(
        &self,
        mem: &GuestMemory,
        sector: u64,
        data: &[Segment],
        len: u32,
    ) -> Result<(), DiskError> {
        let offset = self.check_range(sector, len)?;
        if self.flush_failed() {
            return Err(DiskError::FlushFailed);
        }
        let mut buf = gather(mem, data, len)?;
        self.transform(Direction::Encrypt, &mut buf, sector.into());
        write_full(self.file.as_ref(), &buf, offset)?;
        Ok(())
    }

    /// Reads `buf.len()` bytes at byte `offset` as the guest would see them
    /// (decrypted), for maintenance jobs; `offset` and the length are whole sectors.
    pub fn read_plain(&self, offset: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        let len = u32::try_from(buf.len()).map_err(|_| DiskError::OutOfRange(offset, u32::MAX))?;
        self.check_range(offset / SECTOR_SIZE, len)?;
        read_full(self.file.as_ref(), buf, offset)?;
        self.transform(Direction::Decrypt, buf, (offset / SECTOR_SIZE).into());
        Ok(())
    }

    /// Makes every write completed before the call durable (fdatasync), or
    /// fails, now and for every later call, once an fdatasync failed.
    pub fn flush(&self) -> Result<(), DiskError> {
        let _serial = self.flush_lock.lock().unwrap_or_else(|p| p.into_inner());
        if self.flush_failed() {
            return Err(DiskError::FlushFailed);
        }
        if let Err(e) = sync_full(self.file.as_ref()) {
            self.flush_failed.store(true, Ordering::Release);
            return Err(e.into());
        }
        self.flushes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

fn scatter(mem: &GuestMemory, mut buf: &[u8], data: &[Segment]) -> Result<(), DiskError> {
    for seg in data {
        let (now, rest) = buf.split_at((seg.len as usize).min(buf.len()));
        mem.write_slice(now, seg.addr)
            .map_err(|e| DiskError::Memory(e.to_string()))?;
        buf = rest;
    }
    Ok(())
}

fn gather(mem: &GuestMemory, data: &[Segment], len: u32) -> Result<Vec<u8>, DiskError> {
    let mut buf = vec![0u8; len as usize];
    let mut at = 0usize;
    for seg in data {
        let end = at + seg.len as usize;
        mem.read_slice(&mut buf[at..end], seg.addr)
            .map_err(|e| DiskError::Memory(e.to_string()))?;
        at = end;
    }
    Ok(buf)
}

/// Writes `bytes` at `addr` (GET_ID answers, status bytes).
pub fn write_guest(mem: &GuestMemory, addr: GuestAddress, bytes: &[u8]) -> Result<(), DiskError> {
    mem.write_slice(bytes, addr)
        .map_err(|e| DiskError::Memory(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::create_guest_memory;

    fn image(bytes: &[u8]) -> tempfile::TempPath {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut f, bytes).unwrap();
        f.into_temp_path()
    }

    #[test]
    fn plain_reads_and_writes_go_to_the_file() {
        let img = image(&[7u8; 4096]);
        let mem = create_guest_memory(16 << 20).unwrap();
        let disk = Disk::open(&img, false, Transform::None).unwrap();
        let seg = [Segment {
            addr: GuestAddress(0x1000),
            len: 512,
        }];
        disk.read(&mem, 1, &seg, 512).unwrap();
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x1000)).unwrap(), 7);
        mem.write_slice(&[9u8; 512], GuestAddress(0x1000)).unwrap();
        disk.write(&mem, 2, &seg, 512).unwrap();
        disk.flush().unwrap();
        let on_disk = std::fs::read(&img).unwrap();
        assert!(on_disk[1024..1536].iter().all(|&b| b == 9));
        assert_eq!(disk.flushes(), 1);
        assert!(matches!(
            disk.read(&mem, 8, &seg, 512),
            Err(DiskError::OutOfRange(8, 512))
        ));
        assert!(matches!(
            disk.read(&mem, u64::MAX, &seg, 512),
            Err(DiskError::OutOfRange(..))
        ));
    }

    #[test]
    fn encrypted_disks_round_trip_and_store_ciphertext() {
        let img = image(&[0u8; 4096]);
        let mem = create_guest_memory(16 << 20).unwrap();
        let disk = Disk::open(
            &img,
            false,
            Transform::Xts {
                key: [3; 64],
                passes: 2,
            },
        )
        .unwrap();
        let segs = [
            Segment {
                addr: GuestAddress(0x1000),
                len: 256,
            },
            Segment {
                addr: GuestAddress(0x5000),
                len: 768,
            },
        ];
        let pattern: Vec<u8> = (0..1024u32).map(|i| (i * 7) as u8).collect();
        mem.write_slice(&pattern[..256], GuestAddress(0x1000))
            .unwrap();
        mem.write_slice(&pattern[256..], GuestAddress(0x5000))
            .unwrap();
        disk.write(&mem, 3, &segs, 1024).unwrap();
        assert_ne!(&std::fs::read(&img).unwrap()[1536..2560], &pattern[..]);
        let out = [Segment {
            addr: GuestAddress(0x9000),
            len: 1024,
        }];
        disk.read(&mem, 3, &out, 1024).unwrap();
        let mut back = vec![0u8; 1024];
        mem.read_slice(&mut back, GuestAddress(0x9000)).unwrap();
        assert_eq!(back, pattern);
    }

    /// Storage in memory that interrupts every other call, moves at most
    /// `chunk` bytes per call, fails the syncs it is told to, and logs calls.
    struct Flaky {
        data: Mutex<Vec<u8>>,
        calls: AtomicU64,
        chunk: usize,
        failing_syncs: AtomicU64,
        log: Mutex<Vec<&'static str>>,
    }

    impl Flaky {
        fn new(chunk: usize) -> std::sync::Arc<Flaky> {
            std::sync::Arc::new(Flaky {
                data: Mutex::new(vec![0; 4096]),
                calls: AtomicU64::new(0),
                chunk,
                failing_syncs: AtomicU64::new(0),
                log: Mutex::new(Vec::new()),
            })
        }

        fn eintr(&self) -> io::Result<()> {
            if self.calls.fetch_add(1, Ordering::Relaxed) % 2 == 0 {
                return Err(io::ErrorKind::Interrupted.into());
            }
            Ok(())
        }
    }

    impl Storage for Flaky {
        fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
            self.eintr()?;
            let n = buf.len().min(self.chunk);
            let o = offset as usize;
            buf[..n].copy_from_slice(&self.data.lock().unwrap()[o..o + n]);
            Ok(n)
        }
        fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<usize> {
            self.eintr()?;
            let n = buf.len().min(self.chunk);
            let o = offset as usize;
            self.data.lock().unwrap()[o..o + n].copy_from_slice(&buf[..n]);
            self.log.lock().unwrap().push("write");
            Ok(n)
        }
        fn sync_data(&self) -> io::Result<()> {
            self.eintr()?;
            self.log.lock().unwrap().push("sync");
            let failing = self.failing_syncs.load(Ordering::SeqCst);
            if failing > 0 {
                self.failing_syncs.store(failing - 1, Ordering::SeqCst);
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
            Ok(())
        }
    }

    #[test]
    fn eintr_and_short_transfers_are_retried_on_every_path() {
        let storage = Flaky::new(100);
        let disk = Disk::with_storage(Box::new(storage.clone()), 4096, false, Transform::None);
        let mem = create_guest_memory(16 << 20).unwrap();
        let seg = [Segment {
            addr: GuestAddress(0x1000),
            len: 1024,
        }];
        let pattern: Vec<u8> = (0..1024u32).map(|i| (i * 13) as u8).collect();
        mem.write_slice(&pattern, GuestAddress(0x1000)).unwrap();
        disk.write(&mem, 2, &seg, 1024).unwrap();
        disk.flush().unwrap();
        mem.write_slice(&[0u8; 1024], GuestAddress(0x1000)).unwrap();
        disk.read(&mem, 2, &seg, 1024).unwrap();
        let mut back = vec![0u8; 1024];
        mem.read_slice(&mut back, GuestAddress(0x1000)).unwrap();
        assert_eq!(back, pattern);
        let mut plain = vec![0u8; 512];
        disk.read_plain(1024, &mut plain).unwrap();
        assert_eq!(plain, pattern[..512]);
        // 11 short writes, then the sync; every call was interrupted once first.
        let log = storage.log.lock().unwrap().clone();
        assert_eq!(log.iter().filter(|&&c| c == "write").count(), 11);
        assert_eq!(log.last(), Some(&"sync"));
    }

    #[test]
    fn a_failed_fdatasync_is_sticky_for_flushes_and_writes() {
        let storage = Flaky::new(4096);
        let disk = Disk::with_storage(Box::new(storage.clone()), 4096, false, Transform::None);
        let mem = create_guest_memory(16 << 20).unwrap();
        let seg = [Segment {
            addr: GuestAddress(0x1000),
            len: 512,
        }];
        disk.write(&mem, 0, &seg, 512).unwrap();
        storage.failing_syncs.store(1, Ordering::SeqCst);
        assert!(
            matches!(disk.flush(), Err(DiskError::Io(e)) if e.raw_os_error() == Some(libc::EIO))
        );
        assert!(disk.flush_failed());
        // The host would now report success (the error was consumed): we do not.
        assert!(matches!(disk.flush(), Err(DiskError::FlushFailed)));
        assert!(matches!(
            disk.write(&mem, 1, &seg, 512),
            Err(DiskError::FlushFailed)
        ));
        // The second flush and the write never reached the host.
        let log = storage.log.lock().unwrap().clone();
        assert_eq!(log, ["write", "sync"]);
        // Reads still work.
        disk.read(&mem, 0, &seg, 512).unwrap();
        assert_eq!(disk.flushes(), 0);
    }

    #[test]
    fn concurrent_flushes_never_overlap() {
        struct Overlap {
            inside: AtomicBool,
            overlapped: AtomicBool,
        }
        impl Storage for Overlap {
            fn read_at(&self, buf: &mut [u8], _: u64) -> io::Result<usize> {
                Ok(buf.len())
            }
            fn write_at(&self, buf: &[u8], _: u64) -> io::Result<usize> {
                Ok(buf.len())
            }
            fn sync_data(&self) -> io::Result<()> {
                if self.inside.swap(true, Ordering::SeqCst) {
                    self.overlapped.store(true, Ordering::SeqCst);
                }
                std::thread::yield_now();
                self.inside.store(false, Ordering::SeqCst);
                Ok(())
            }
        }
        let storage = std::sync::Arc::new(Overlap {
            inside: AtomicBool::new(false),
            overlapped: AtomicBool::new(false),
        });
        let disk = Disk::with_storage(Box::new(storage.clone()), 4096, false, Transform::None);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| (0..200).for_each(|_| disk.flush().unwrap()));
            }
        });
        assert_eq!(disk.flushes(), 800);
        assert!(!storage.overlapped.load(Ordering::SeqCst));
    }
}
