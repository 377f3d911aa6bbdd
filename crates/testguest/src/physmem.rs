//! Reading guest-physical memory through an accessor, so that table parsers can be tested on
//! the host with a byte buffer.

/// Read access to guest-physical memory.
pub trait PhysMem {
    /// Fills `buf` from guest-physical address `paddr`. Returns `false` (and leaves `buf`
    /// unspecified) if the range is not readable.
    fn read(&self, paddr: u64, buf: &mut [u8]) -> bool;

    /// Reads a `u8` at `paddr`.
    fn read_u8(&self, paddr: u64) -> Option<u8> {
        let mut b = [0u8; 1];
        self.read(paddr, &mut b).then_some(b[0])
    }

    /// Reads a little-endian `u16` at `paddr`.
    fn read_u16(&self, paddr: u64) -> Option<u16> {
        let mut b = [0u8; 2];
        self.read(paddr, &mut b).then(|| u16::from_le_bytes(b))
    }

    /// Reads a little-endian `u32` at `paddr`.
    fn read_u32(&self, paddr: u64) -> Option<u32> {
        let mut b = [0u8; 4];
        self.read(paddr, &mut b).then(|| u32::from_le_bytes(b))
    }

    /// Reads a little-endian `u64` at `paddr`.
    fn read_u64(&self, paddr: u64) -> Option<u64> {
        let mut b = [0u8; 8];
        self.read(paddr, &mut b).then(|| u64::from_le_bytes(b))
    }
}

/// A byte buffer standing in for guest memory at `base` (host tests).
#[cfg(test)]
pub struct TestMem {
    pub base: u64,
    pub bytes: std::vec::Vec<u8>,
}

#[cfg(test)]
impl TestMem {
    pub fn new(base: u64, size: usize) -> Self {
        Self {
            base,
            bytes: std::vec![0; size],
        }
    }

    pub fn write(&mut self, paddr: u64, data: &[u8]) {
        let off = (paddr - self.base) as usize;
        self.bytes[off..off + data.len()].copy_from_slice(data);
    }
}

#[cfg(test)]
impl PhysMem for TestMem {
    fn read(&self, paddr: u64, buf: &mut [u8]) -> bool {
        let range = paddr
            .checked_sub(self.base)
            .and_then(|off| usize::try_from(off).ok())
            .and_then(|off| Some(off..off.checked_add(buf.len())?));
        match range.and_then(|r| self.bytes.get(r)) {
            Some(src) => {
                buf.copy_from_slice(src);
                true
            }
            None => false,
        }
    }
}
