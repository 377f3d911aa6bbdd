//! The PVH boot protocol's `struct hvm_start_info` (Xen `arch-x86/hvm/start_info.h`),
//! whose physical address the VMM passes in `ebx` at the 32-bit entry.

use crate::physmem::PhysMem;

/// `hvm_start_info.magic`.
pub const MAGIC: u32 = 0x336e_c578;

/// `XEN_HVM_MEMMAP_TYPE_RAM`.
pub const MEMMAP_TYPE_RAM: u32 = 1;

const OFF_MAGIC: u64 = 0;
const OFF_VERSION: u64 = 4;
const OFF_CMDLINE_PADDR: u64 = 24;
const OFF_RSDP_PADDR: u64 = 32;
const OFF_MEMMAP_PADDR: u64 = 40;
const OFF_MEMMAP_ENTRIES: u64 = 48;
const MEMMAP_ENTRY_SIZE: u64 = 24;
/// Memory-map entries looked at (the table is VMM-provided; bound the walk).
const MAX_MEMMAP_ENTRIES: u32 = 128;

/// Why the start info could not be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// `ebx` was 0 or the structure is not readable.
    Unreadable,
    /// The magic number did not match.
    BadMagic(u32),
}

/// One `hvm_memmap_table_entry`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemmapEntry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

/// The fields of `hvm_start_info` the guest uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StartInfo {
    pub version: u32,
    pub cmdline_paddr: u64,
    pub rsdp_paddr: u64,
    /// 0 if the VMM gave no memory map (version 0).
    pub memmap_paddr: u64,
    pub memmap_entries: u32,
}

impl StartInfo {
    /// Reads and checks the structure at `paddr`.
    pub fn read(mem: &impl PhysMem, paddr: u64) -> Result<Self, Error> {
        if paddr == 0 {
            return Err(Error::Unreadable);
        }
        let field32 = |off| mem.read_u32(paddr + off).ok_or(Error::Unreadable);
        let field64 = |off| mem.read_u64(paddr + off).ok_or(Error::Unreadable);
        let magic = field32(OFF_MAGIC)?;
        if magic != MAGIC {
            return Err(Error::BadMagic(magic));
        }
        let version = field32(OFF_VERSION)?;
        let (memmap_paddr, memmap_entries) = if version >= 1 {
            (field64(OFF_MEMMAP_PADDR)?, field32(OFF_MEMMAP_ENTRIES)?)
        } else {
            (0, 0)
        };
        Ok(Self {
            version,
            cmdline_paddr: field64(OFF_CMDLINE_PADDR)?,
            rsdp_paddr: field64(OFF_RSDP_PADDR)?,
            memmap_paddr,
            memmap_entries: if memmap_paddr == 0 { 0 } else { memmap_entries },
        })
    }

    /// Copies the NUL-terminated command line into `buf` and returns its longest valid
    /// UTF-8 prefix, and whether it was cut short (longer than `buf`, or not valid UTF-8).
    /// No command line gives "".
    pub fn cmdline<'b>(&self, mem: &impl PhysMem, buf: &'b mut [u8]) -> (&'b str, bool) {
        let mut len = 0;
        let mut terminated = self.cmdline_paddr == 0;
        while !terminated && len < buf.len() {
            match mem.read_u8(self.cmdline_paddr + len as u64) {
                Some(0) | None => terminated = true,
                Some(b) => {
                    buf[len] = b;
                    len += 1;
                }
            }
        }
        if !terminated {
            // Exactly `buf.len()` bytes fit if the NUL comes next.
            terminated = mem.read_u8(self.cmdline_paddr + len as u64) == Some(0);
        }
        let bytes = &buf[..len];
        match core::str::from_utf8(bytes) {
            Ok(s) => (s, !terminated),
            // The prefix up to the first invalid byte is valid UTF-8.
            Err(e) => (
                core::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or(""),
                true,
            ),
        }
    }

    /// The memory-map entries (at most `MAX_MEMMAP_ENTRIES`; unreadable ones are skipped).
    pub fn memmap<'m, M: PhysMem>(&self, mem: &'m M) -> impl Iterator<Item = MemmapEntry> + 'm {
        let base = self.memmap_paddr;
        (0..self.memmap_entries.min(MAX_MEMMAP_ENTRIES)).filter_map(move |i| {
            let at = base.checked_add(u64::from(i) * MEMMAP_ENTRY_SIZE)?;
            Some(MemmapEntry {
                addr: mem.read_u64(at)?,
                size: mem.read_u64(at + 8)?,
                kind: mem.read_u32(at + 16)?,
            })
        })
    }

    /// Whether `[start, end)` lies inside one RAM entry of the memory map; `None` if the
    /// VMM gave no memory map.
    pub fn is_ram(&self, mem: &impl PhysMem, start: u64, end: u64) -> Option<bool> {
        if self.memmap_entries == 0 {
            return None;
        }
        Some(self.memmap(mem).any(|e| {
            e.kind == MEMMAP_TYPE_RAM && e.addr <= start && e.addr.saturating_add(e.size) >= end
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::physmem::TestMem;

    const BASE: u64 = 0x6000;

    fn start_info(mem: &mut TestMem, version: u32, cmdline: &[u8]) {
        mem.write(BASE, &MAGIC.to_le_bytes());
        mem.write(BASE + 4, &version.to_le_bytes());
        mem.write(BASE + 24, &0x7000u64.to_le_bytes());
        mem.write(BASE + 32, &0xf_5000u64.to_le_bytes());
        mem.write(BASE + 40, &0x6800u64.to_le_bytes());
        mem.write(BASE + 48, &2u32.to_le_bytes());
        mem.write(0x7000, cmdline);
        for (i, (addr, size, kind)) in [(0u64, 0x9fc00u64, 1u32), (0x10_0000, 0x1000_0000, 1)]
            .into_iter()
            .enumerate()
        {
            let at = 0x6800 + 24 * i as u64;
            mem.write(at, &addr.to_le_bytes());
            mem.write(at + 8, &size.to_le_bytes());
            mem.write(at + 16, &kind.to_le_bytes());
        }
    }

    #[test]
    fn reads_v1() {
        let mut mem = TestMem::new(0, 0x10000);
        start_info(&mut mem, 1, b"workload=idle ms=5\0junk");
        let si = StartInfo::read(&mem, BASE).unwrap();
        assert_eq!(si.rsdp_paddr, 0xf_5000);
        let mut buf = [0u8; 64];
        assert_eq!(si.cmdline(&mem, &mut buf), ("workload=idle ms=5", false));
        let mut exact = [0u8; 18];
        assert_eq!(si.cmdline(&mem, &mut exact), ("workload=idle ms=5", false));
        assert_eq!(si.memmap(&mem).count(), 2);
        assert_eq!(si.is_ram(&mem, 0x8000, 0x9000), Some(true));
        assert_eq!(si.is_ram(&mem, 0x9f000, 0xa0000), Some(false));
    }

    #[test]
    fn v0_has_no_memmap() {
        let mut mem = TestMem::new(0, 0x10000);
        start_info(&mut mem, 0, b"\0");
        let si = StartInfo::read(&mem, BASE).unwrap();
        assert_eq!(si.memmap(&mem).count(), 0);
        assert_eq!(si.is_ram(&mem, 0x8000, 0x9000), None);
    }

    #[test]
    fn bad_input() {
        let mut mem = TestMem::new(0, 0x10000);
        assert_eq!(StartInfo::read(&mem, 0), Err(Error::Unreadable));
        assert_eq!(StartInfo::read(&mem, 0xfffe), Err(Error::Unreadable));
        assert_eq!(StartInfo::read(&mem, BASE), Err(Error::BadMagic(0)));
        start_info(&mut mem, 1, b"ms=1 \xff\xfe rest\0");
        let si = StartInfo::read(&mem, BASE).unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(si.cmdline(&mem, &mut buf), ("ms=1 ", true));
        let mut small = [0u8; 3];
        assert_eq!(si.cmdline(&mem, &mut small), ("ms=", true));
    }
}
