//! Opening a disk image the way an operator expects a VMM to: only a regular
//! file or a block device, its size from the right place, and locked so that
//! two VMMs never write one image.
//!
//! Why each rule:
//! - A directory, FIFO, socket or character device is not a disk: reads of a
//!   FIFO consume someone else's data, `/dev/zero` "works" with size 0. Each
//!   is refused with an error that says what the path is.
//! - `metadata().len()` of a block device is 0; its size comes from the
//!   device (`BLKGETSIZE64`).
//! - A writable image gets an exclusive lock, a read-only one a shared lock.
//!   The lock is an open-file-description (OFD) lock over the whole file, as
//!   Cloud Hypervisor takes: it conflicts with QEMU's byte-range image locks
//!   too (`flock` would not), it belongs to the open file (not the process,
//!   so two disks of one VM on the same image conflict as two VMMs do), and
//!   it goes away with the file descriptor, so a killed VMM leaves no stale
//!   lock behind.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use vmm_sys_util::ioctl::ioctl_with_mut_ref;

mod blk {
    #![allow(missing_docs)]
    use vmm_sys_util::ioctl_ior_nr;
    // include/uapi/linux/fs.h: _IOR(0x12, 114, size_t)
    ioctl_ior_nr!(BLKGETSIZE64, 0x12, 114, u64);
}
use blk::BLKGETSIZE64;

/// Why an image could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The path could not be opened or examined.
    #[error("{}: {source}", path.display())]
    Open {
        /// The image.
        path: PathBuf,
        /// What the kernel said.
        source: std::io::Error,
    },
    /// Neither a regular file nor a block device.
    #[error("{}: is a {kind}, not a regular file or block device", path.display())]
    NotADisk {
        /// The path.
        path: PathBuf,
        /// What it is instead.
        kind: &'static str,
    },
    /// Another open of the image (another VMM, or another disk of this VM) holds a conflicting lock.
    #[error(
        "{}: in use by another process or another disk of this VM (it holds a {} lock); \
         an image may be shared only read-only (`,ro`) by every user",
        path.display(),
        if *read_only { "write" } else { "read or write" }
    )]
    Locked {
        /// The image.
        path: PathBuf,
        /// Whether we asked for a shared (read-only) lock.
        read_only: bool,
    },
    /// Taking the lock failed for another reason.
    #[error("{}: locking the image: {source}", path.display())]
    Lock {
        /// The image.
        path: PathBuf,
        /// What the kernel said.
        source: std::io::Error,
    },
}

impl From<ImageError> for std::io::Error {
    fn from(e: ImageError) -> Self {
        let kind = match &e {
            ImageError::Open { source, .. } | ImageError::Lock { source, .. } => source.kind(),
            ImageError::NotADisk { .. } => std::io::ErrorKind::InvalidInput,
            ImageError::Locked { .. } => std::io::ErrorKind::WouldBlock,
        };
        std::io::Error::new(kind, e)
    }
}

/// An open, locked disk image. The lock lasts as long as the file.
#[derive(Debug)]
pub struct DiskImage {
    /// The open image (read-write unless read-only).
    pub file: File,
    /// Its size in bytes, as the file or the block device says.
    pub size: u64,
}

impl DiskImage {
    /// Opens `path` (read-write unless `read_only`), checks it is a regular
    /// file or a block device, and locks it.
    pub fn open(path: &Path, read_only: bool) -> Result<DiskImage, ImageError> {
        let open_err = |source| ImageError::Open {
            path: path.to_owned(),
            source,
        };
        // Look before opening: opening a FIFO for reading blocks until a writer comes.
        let kind = std::fs::metadata(path).map_err(open_err)?.file_type();
        if !(kind.is_file() || kind.is_block_device()) {
            return Err(ImageError::NotADisk {
                path: path.to_owned(),
                kind: describe(&kind),
            });
        }
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(open_err)?;
        let meta = file.metadata().map_err(open_err)?;
        let size = if meta.file_type().is_block_device() {
            block_device_size(&file).map_err(open_err)?
        } else if meta.file_type().is_file() {
            meta.len()
        } else {
            // Replaced between the look and the open.
            return Err(ImageError::NotADisk {
                path: path.to_owned(),
                kind: describe(&meta.file_type()),
            });
        };
        lock(&file, read_only).map_err(|source| {
            if matches!(source.raw_os_error(), Some(libc::EAGAIN | libc::EACCES)) {
                ImageError::Locked {
                    path: path.to_owned(),
                    read_only,
                }
            } else {
                ImageError::Lock {
                    path: path.to_owned(),
                    source,
                }
            }
        })?;
        Ok(DiskImage { file, size })
    }
}

fn describe(kind: &std::fs::FileType) -> &'static str {
    if kind.is_dir() {
        "directory"
    } else if kind.is_fifo() {
        "FIFO"
    } else if kind.is_socket() {
        "socket"
    } else if kind.is_char_device() {
        "character device"
    } else if kind.is_symlink() {
        "symbolic link"
    } else {
        "special file"
    }
}

fn block_device_size(file: &File) -> std::io::Result<u64> {
    let mut size = 0u64;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which is a
    // valid, exclusive reference for the call; the fd is a block device.
    let ret = unsafe { ioctl_with_mut_ref(file, BLKGETSIZE64(), &mut size) };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(size)
}

/// A whole-file OFD lock: shared for read-only, exclusive otherwise; never waits.
fn lock(file: &File, read_only: bool) -> std::io::Result<()> {
    // SAFETY: flock is plain data; all-zero is a valid start (whole file from 0).
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = if read_only {
        libc::F_RDLCK
    } else {
        libc::F_WRLCK
    } as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    // SAFETY: `fl` is a valid flock for the call; the fd is open.
    let ret = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &fl) };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A file's identity (device and inode), to tell whether two paths are one file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileId {
    dev: u64,
    ino: u64,
}

impl FileId {
    /// The identity of what `path` names (following symlinks), if it exists.
    pub fn of_path(path: &Path) -> Option<FileId> {
        std::fs::metadata(path).ok().map(|m| FileId::of(&m))
    }

    /// The identity in `meta`.
    pub fn of(meta: &std::fs::Metadata) -> FileId {
        FileId {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_regular_file_opens_with_its_size() {
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(8192).unwrap();
        let img = DiskImage::open(f.path(), false).unwrap();
        assert_eq!(img.size, 8192);
    }

    #[test]
    fn what_is_not_a_disk_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let err = DiskImage::open(dir.path(), true).unwrap_err();
        assert!(err.to_string().contains("is a directory"), "{err}");
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // Refused without blocking on the FIFO.
        let err = DiskImage::open(&fifo, false).unwrap_err();
        assert!(err.to_string().contains("is a FIFO"), "{err}");
        let err = DiskImage::open(Path::new("/dev/null"), true).unwrap_err();
        assert!(err.to_string().contains("character device"), "{err}");
        let err = DiskImage::open(&dir.path().join("missing"), true).unwrap_err();
        assert!(matches!(err, ImageError::Open { .. }), "{err}");
    }

    #[test]
    fn writers_exclude_everyone_and_readers_share() {
        let f = tempfile::NamedTempFile::new().unwrap();
        let rw = DiskImage::open(f.path(), false).unwrap();
        for ro in [false, true] {
            let err = DiskImage::open(f.path(), ro).unwrap_err();
            assert!(matches!(err, ImageError::Locked { .. }), "{err}");
            assert!(err.to_string().contains("in use"), "{err}");
        }
        drop(rw);
        let a = DiskImage::open(f.path(), true).unwrap();
        let _b = DiskImage::open(f.path(), true).unwrap();
        assert!(DiskImage::open(f.path(), false).is_err());
        drop(a);
    }

    #[test]
    fn file_ids_tell_one_file_from_another() {
        let a = tempfile::NamedTempFile::new().unwrap();
        let b = tempfile::NamedTempFile::new().unwrap();
        let link = a.path().with_extension("link");
        std::os::unix::fs::symlink(a.path(), &link).unwrap();
        assert_eq!(FileId::of_path(a.path()), FileId::of_path(&link));
        assert_ne!(FileId::of_path(a.path()), FileId::of_path(b.path()));
        std::fs::remove_file(link).unwrap();
    }
}
