//! KVM's binary statistics for one vCPU (`KVM_GET_STATS_FD`), read by name.
//!
//! The stats fd starts with a header giving where the descriptors and the
//! data live; each descriptor names a statistic and gives its byte offset in
//! the data block. We parse the descriptors once and then read single values
//! with `pread`, which is safe from any thread and does not take the vCPU
//! mutex (unlike `KVM_GET_MP_STATE`, which blocks while the vCPU is in
//! `KVM_RUN`).
//!
//! The statistic that matters here is `blocking`: 1 while the vCPU sleeps in
//! the kernel on a guest HLT (set around the real sleep, not during halt
//! polling). That is how nightshift sees guest idle on today's kernels.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::FileExt;

use kvm_bindings::KVMIO;
use vmm_sys_util::{ioctl::ioctl, ioctl_io_nr};

mod ioctls {
    #![allow(missing_docs)]
    use super::*;
    // Not wrapped by kvm-ioctls 0.25: _IO(KVMIO, 0xce) from linux/kvm.h.
    ioctl_io_nr!(KVM_GET_STATS_FD, KVMIO, 0xce);
}
use ioctls::KVM_GET_STATS_FD;

const HEADER_SIZE: usize = 24;
const DESC_FIXED_SIZE: usize = 16;

/// A statistic's place in the data block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Field {
    /// Byte offset from the start of the data block.
    offset: u64,
    /// Number of u64 values (1 for counters and instants).
    size: u16,
}

/// A vCPU's statistics fd with its descriptors parsed.
#[derive(Debug)]
pub struct KvmStats {
    file: File,
    data_offset: u64,
    fields: HashMap<String, Field>,
}

/// Reading the statistics failed.
#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    /// The ioctl or a read failed.
    #[error("KVM stats fd: {0}")]
    Io(#[from] std::io::Error),
    /// The layout is not what the KVM API documents.
    #[error("KVM stats fd: malformed {0}")]
    Malformed(&'static str),
    /// No statistic has that name.
    #[error("KVM stats fd: no statistic named {0:?}")]
    Missing(String),
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

impl KvmStats {
    /// Opens the statistics of the vCPU (or VM) behind `fd`.
    pub fn open(fd: &impl AsRawFd) -> Result<Self, StatsError> {
        // SAFETY: KVM_GET_STATS_FD takes no argument and returns a new fd or -1;
        // `fd` is a valid KVM vCPU/VM fd for the duration of the call.
        let ret = unsafe { ioctl(fd, KVM_GET_STATS_FD()) };
        if ret < 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        // SAFETY: `ret` is a fresh fd that nothing else owns.
        let file = unsafe { File::from_raw_fd(ret) };
        Self::from_file(file)
    }

    fn from_file(file: File) -> Result<Self, StatsError> {
        let mut header = [0u8; HEADER_SIZE];
        file.read_exact_at(&mut header, 0)?;
        let field = |i: usize| u32_at(&header, 4 * i).ok_or(StatsError::Malformed("header"));
        let (name_size, num_desc) = (field(1)? as usize, field(2)? as usize);
        let (desc_offset, data_offset) = (field(4)?, field(5)?);
        if num_desc > 4096 || name_size > 4096 {
            return Err(StatsError::Malformed("header sizes"));
        }
        let desc_size = DESC_FIXED_SIZE + name_size;
        let mut descs = vec![0u8; desc_size * num_desc];
        file.read_exact_at(&mut descs, desc_offset.into())?;
        let fields = descs
            .chunks_exact(desc_size)
            .map(|d| {
                let size = u16::from_le_bytes([d[6], d[7]]);
                let offset = u32_at(d, 8).ok_or(StatsError::Malformed("descriptor"))?;
                let name = &d[DESC_FIXED_SIZE..];
                let name = &name[..name.iter().position(|&c| c == 0).unwrap_or(name.len())];
                let name = String::from_utf8_lossy(name).into_owned();
                Ok((
                    name,
                    Field {
                        offset: offset.into(),
                        size,
                    },
                ))
            })
            .collect::<Result<_, StatsError>>()?;
        Ok(KvmStats {
            file,
            data_offset: data_offset.into(),
            fields,
        })
    }

    /// A reader for one statistic, for hot paths that read it often.
    pub fn reader(&self, name: &str) -> Result<StatReader, StatsError> {
        let field = self
            .fields
            .get(name)
            .filter(|f| f.size >= 1)
            .ok_or_else(|| StatsError::Missing(name.to_string()))?;
        Ok(StatReader {
            file: self.file.try_clone()?,
            at: self.data_offset + field.offset,
        })
    }

    /// Reads a statistic's (first) value.
    pub fn read(&self, name: &str) -> Result<u64, StatsError> {
        self.reader(name)?.read()
    }

    /// Names of all statistics.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.fields.keys().map(String::as_str)
    }
}

/// Reads one statistic with a single `pread`; cheap to call from any thread.
#[derive(Debug)]
pub struct StatReader {
    file: File,
    at: u64,
}

impl StatReader {
    /// The current value.
    pub fn read(&self) -> Result<u64, StatsError> {
        let mut v = [0u8; 8];
        self.file.read_exact_at(&mut v, self.at)?;
        Ok(u64::from_le_bytes(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A stats file laid out as the KVM API documents it.
    fn fake_stats(names: &[&str], values: &[u64]) -> File {
        let name_size = 48usize;
        let desc_offset = 64u32;
        let data_offset = desc_offset + ((DESC_FIXED_SIZE + name_size) * names.len()) as u32;
        let mut b = Vec::new();
        for v in [
            0u32,
            name_size as u32,
            names.len() as u32,
            24,
            desc_offset,
            data_offset,
        ] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.resize(desc_offset as usize, 0);
        for (i, n) in names.iter().enumerate() {
            b.extend_from_slice(&0u32.to_le_bytes()); // flags
            b.extend_from_slice(&0i16.to_le_bytes()); // exponent
            b.extend_from_slice(&1u16.to_le_bytes()); // size
            b.extend_from_slice(&(8 * i as u32).to_le_bytes()); // offset
            b.extend_from_slice(&0u32.to_le_bytes()); // bucket size
            let mut name = n.as_bytes().to_vec();
            name.resize(name_size, 0);
            b.extend_from_slice(&name);
        }
        for v in values {
            b.extend_from_slice(&v.to_le_bytes());
        }
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&b).unwrap();
        f
    }

    #[test]
    fn statistics_are_found_by_name() {
        let stats = KvmStats::from_file(fake_stats(&["halt_exits", "blocking"], &[17, 1])).unwrap();
        assert_eq!(stats.read("halt_exits").unwrap(), 17);
        assert_eq!(stats.reader("blocking").unwrap().read().unwrap(), 1);
        assert!(matches!(stats.read("nope"), Err(StatsError::Missing(_))));
    }

    #[test]
    fn a_real_vcpu_has_a_blocking_statistic() {
        let Ok(kvm) = kvm_ioctls::Kvm::new() else {
            eprintln!("no /dev/kvm: skipped");
            return;
        };
        let vm = kvm.create_vm().unwrap();
        let vcpu = vm.create_vcpu(0).unwrap();
        let stats = KvmStats::open(&vcpu).unwrap();
        assert_eq!(stats.read("blocking").unwrap(), 0);
        assert!(stats.names().any(|n| n == "halt_exits"));
    }
}
