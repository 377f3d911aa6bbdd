//! The disk behind virtio-blk: a raw image file, optionally encrypted per
//! sector with AES-256-XTS (as dm-crypt does), so the device's work costs real
//! CPU. `passes` repeats the cipher to scale that cost for benchmarks.
//!
//! I/O goes through a bounce buffer: positional reads and writes on the file
//! (safe to run from several threads at once), then guest memory is copied
//! with vm-memory's checked accessors.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use aes::cipher::{Array, KeyInit};
use aes::Aes256;
use vm_memory::{Bytes, GuestAddress};
use xts_mode::{get_tweak_default, Xts128};

use super::request::{Segment, SECTOR_SIZE};
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
}

/// Which way the cipher runs.
#[derive(Clone, Copy)]
enum Direction {
    Encrypt,
    Decrypt,
}

/// A raw disk image.
pub struct Disk {
    file: File,
    size: u64,
    read_only: bool,
    cipher: Option<(Xts128<Aes256>, u32)>,
    flushes: AtomicU64,
}

impl Disk {
    /// Opens `path` (read-write unless `read_only`): a regular file or a
    /// block device, locked against other writers (see [`crate::image`]).
    pub fn open(path: &Path, read_only: bool, transform: Transform) -> std::io::Result<Disk> {
        let DiskImage { file, size } = DiskImage::open(path, read_only)?;
        let size = size / SECTOR_SIZE * SECTOR_SIZE;
        let cipher = match transform {
            Transform::None => None,
            Transform::Xts { key, passes } => {
                let (k1, k2) = key.split_at(32);
                let c1 = Aes256::new(&Array::try_from(k1).expect("32-byte half"));
                let c2 = Aes256::new(&Array::try_from(k2).expect("32-byte half"));
                Some((Xts128::new(c1, c2), passes.max(1)))
            }
        };
        Ok(Disk {
            file,
            size,
            read_only,
            cipher,
            flushes: AtomicU64::new(0),
        })
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

    /// Runs the configured cipher over `buf`, whose first sector is `first_sector`.
    fn transform(&self, dir: Direction, buf: &mut [u8], first_sector: u128) {
        let Some((xts, passes)) = &self.cipher else {
            return;
        };
        for _ in 0..*passes {
            match dir {
                Direction::Encrypt => {
                    xts.encrypt_area(buf, SECTOR_SIZE as usize, first_sector, get_tweak_default)
                }
                Direction::Decrypt => {
                    xts.decrypt_area(buf, SECTOR_SIZE as usize, first_sector, get_tweak_default)
                }
            }
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
        self.file.read_exact_at(&mut buf, offset)?;
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
        let mut buf = gather(mem, data, len)?;
        self.transform(Direction::Encrypt, &mut buf, sector.into());
        self.file.write_all_at(&buf, offset)?;
        Ok(())
    }

    /// Reads `buf.len()` bytes at byte `offset` as the guest would see them
    /// (decrypted), for maintenance jobs; `offset` and the length are whole sectors.
    pub fn read_plain(&self, offset: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        let len = u32::try_from(buf.len()).map_err(|_| DiskError::OutOfRange(offset, u32::MAX))?;
        self.check_range(offset / SECTOR_SIZE, len)?;
        self.file.read_exact_at(buf, offset)?;
        self.transform(Direction::Decrypt, buf, (offset / SECTOR_SIZE).into());
        Ok(())
    }

    /// Makes every completed write durable (fdatasync).
    pub fn flush(&self) -> Result<(), DiskError> {
        self.file.sync_data()?;
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
}
