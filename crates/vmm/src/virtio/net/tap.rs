//! The host side of virtio-net: a tap device opened from /dev/net/tun.
//!
//! The tap is opened non-blocking with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`
//! and a 12-byte vnet header (`virtio_net_hdr_v1`): each read returns one
//! frame behind a header, each write sends one. No offloads are enabled
//! (`TUNSETOFFLOAD 0`), so the kernel hands us only whole, checksummed frames
//! no larger than the tap's MTU plus headers, and we write the same.
//!
//! The tap must exist or be creatable by this process (root, or a persistent
//! tap owned by the user: `ip tuntap add NAME mode tap user USER`).

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use vmm_sys_util::ioctl::{ioctl_with_mut_ref, ioctl_with_ref};

/// Bytes of the vnet header before every frame (`virtio_net_hdr_v1`).
pub const VNET_HDR_LEN: usize = 12;
/// Longest interface name, with its NUL (IFNAMSIZ).
const IFNAMSIZ: usize = 16;

/// `struct ifreq` as TUNSETIFF reads it: the name and the flags.
#[repr(C)]
struct IfReq {
    name: [u8; IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Opening the tap failed.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// The name is empty, too long or has a NUL.
    #[error("bad tap name {0:?} (1 to 15 bytes, no NUL)")]
    Name(String),
    /// /dev/net/tun could not be opened.
    #[error("opening /dev/net/tun: {0}")]
    Open(#[source] std::io::Error),
    /// An ioctl on the tap failed.
    #[error("{what} on tap {name}: {err}")]
    Ioctl {
        /// Which ioctl.
        what: &'static str,
        /// The tap.
        name: String,
        /// Its error.
        #[source]
        err: std::io::Error,
    },
}

/// An open tap (or, in tests, any fd that carries one vnet-header frame per
/// read and write, such as a datagram socket).
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Opens (or creates) the tap `name`.
    pub fn open(name: &str) -> Result<Tap, TapError> {
        if name.is_empty() || name.len() >= IFNAMSIZ || name.contains('\0') {
            return Err(TapError::Name(name.into()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(TapError::Open)?;
        let mut req = IfReq {
            name: [0; IFNAMSIZ],
            flags: (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        let err = |what| {
            let err = std::io::Error::last_os_error();
            move || TapError::Ioctl {
                what,
                name: name.into(),
                err,
            }
        };
        // SAFETY: `file` is an open /dev/net/tun; TUNSETIFF reads and writes a
        // `struct ifreq`, which `req` is (40 bytes, name then flags), and the
        // kernel does not keep the pointer.
        if unsafe { ioctl_with_mut_ref(&file, libc::TUNSETIFF as _, &mut req) } < 0 {
            return Err(err("TUNSETIFF")());
        }
        let hdr_len = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer.
        if unsafe { ioctl_with_ref(&file, libc::TUNSETVNETHDRSZ as _, &hdr_len) } < 0 {
            return Err(err("TUNSETVNETHDRSZ")());
        }
        // SAFETY: TUNSETOFFLOAD takes its flags by value (0: no offloads);
        // the fd is the tap's.
        if unsafe { vmm_sys_util::ioctl::ioctl_with_val(&file, libc::TUNSETOFFLOAD as _, 0) } < 0 {
            return Err(err("TUNSETOFFLOAD")());
        }
        Ok(Tap {
            file,
            name: name.into(),
        })
    }

    /// A tap stand-in on `fd` (non-blocking, one frame per read and write).
    pub fn from_fd(fd: OwnedFd, name: &str) -> Tap {
        Tap {
            file: File::from(fd),
            name: name.into(),
        }
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Reads one vnet header and frame into `buf`; `WouldBlock` when none waits.
    pub fn read_frame(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        (&self.file).read(buf)
    }

    /// Writes one vnet header and frame.
    pub fn write_frame(&self, buf: &[u8]) -> std::io::Result<usize> {
        (&self.file).write(buf)
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}
