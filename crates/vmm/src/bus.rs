//! Buses route the guest's port and MMIO accesses to devices.
//!
//! A bus maps non-overlapping address ranges to devices. Accesses that hit no
//! device are guest behaviour, not VMM errors: reads return all ones (as on
//! real hardware with nothing decoding the address) and writes are dropped,
//! both counted and logged at debug level.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// A device on a bus. `offset` is relative to the start of the device's range.
///
/// Every value in `data` on a write, and the offset and size of every access,
/// are guest-controlled: implementations validate them and never panic.
pub trait BusDevice: Send {
    /// The guest reads `data.len()` bytes at `offset`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// The guest writes `data` at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// A device shared between the bus and whoever else drives it.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// Adding a device whose range overlaps another's, or is empty.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
#[error("bus range {base:#x}+{len:#x} is empty or overlaps another device")]
pub struct BusConflict {
    base: u64,
    len: u64,
}

#[derive(Clone)]
struct Range {
    len: u64,
    device: SharedDevice,
}

/// One address space (port I/O or MMIO) and the devices on it.
#[derive(Default)]
pub struct Bus {
    ranges: BTreeMap<u64, Range>,
    unhandled: AtomicU64,
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Puts `device` at `[base, base + len)`.
    pub fn insert(&mut self, device: SharedDevice, base: u64, len: u64) -> Result<(), BusConflict> {
        let conflict = BusConflict { base, len };
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(conflict.clone())?;
        let overlaps_prev = self
            .ranges
            .range(..=base)
            .next_back()
            .is_some_and(|(b, r)| b + r.len > base);
        let overlaps_next = self.ranges.range(base..end).next().is_some();
        if overlaps_prev || overlaps_next {
            return Err(conflict);
        }
        self.ranges.insert(base, Range { len, device });
        Ok(())
    }

    fn find(&self, addr: u64, size: usize) -> Option<(u64, &SharedDevice)> {
        let (base, range) = self.ranges.range(..=addr).next_back()?;
        let offset = addr - base;
        // The whole access must fall inside the device's range.
        (offset.checked_add(size as u64)? <= range.len).then_some((offset, &range.device))
    }

    /// Dispatches a read; returns false if no device claimed it (`data` is then all ones).
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((offset, device)) => {
                lock(device).read(offset, data);
                true
            }
            None => {
                data.fill(0xff);
                self.note_unhandled("read", addr, data.len());
                false
            }
        }
    }

    /// Dispatches a write; returns false if no device claimed it (it is dropped).
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((offset, device)) => {
                lock(device).write(offset, data);
                true
            }
            None => {
                self.note_unhandled("write", addr, data.len());
                false
            }
        }
    }

    /// Accesses that hit no device so far.
    pub fn unhandled_accesses(&self) -> u64 {
        self.unhandled.load(Ordering::Relaxed)
    }

    fn note_unhandled(&self, what: &str, addr: u64, len: usize) {
        self.unhandled.fetch_add(1, Ordering::Relaxed);
        tracing::debug!("guest {what} of {len} bytes at {addr:#x} hit no device");
    }
}

/// Locks a device. A device whose lock was poisoned by a panic elsewhere is
/// still used: its state is plain data, and stopping the guest's I/O would be worse.
fn lock(device: &SharedDevice) -> std::sync::MutexGuard<'_, dyn BusDevice + 'static> {
    device
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        writes: Vec<(u64, Vec<u8>)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.writes.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn accesses_reach_the_device_at_their_offset() {
        let dev = Arc::new(Mutex::new(Recorder::default()));
        let mut bus = Bus::new();
        bus.insert(dev.clone(), 0x3f8, 8).unwrap();
        let mut buf = [0u8; 1];
        assert!(bus.read(0x3fd, &mut buf));
        assert_eq!(buf, [5]);
        assert!(bus.write(0x3f8, b"x"));
        assert_eq!(dev.lock().unwrap().writes, vec![(0, vec![b'x'])]);
    }

    #[test]
    fn misses_read_all_ones_and_are_counted() {
        let dev = Arc::new(Mutex::new(Recorder::default()));
        let mut bus = Bus::new();
        bus.insert(dev, 0x10, 4).unwrap();
        let mut buf = [0u8; 4];
        assert!(!bus.read(0x0, &mut buf));
        assert_eq!(buf, [0xff; 4]);
        // Straddling the end of a range is a miss, not a partial access.
        assert!(!bus.write(0x12, &[0; 4]));
        assert!(!bus.write(u64::MAX, &[0; 4]));
        assert_eq!(bus.unhandled_accesses(), 3);
    }

    #[test]
    fn overlapping_ranges_are_refused() {
        let dev: SharedDevice = Arc::new(Mutex::new(Recorder::default()));
        let mut bus = Bus::new();
        bus.insert(dev.clone(), 0x100, 0x10).unwrap();
        assert!(bus.insert(dev.clone(), 0x108, 0x10).is_err());
        assert!(bus.insert(dev.clone(), 0xf8, 0x10).is_err());
        assert!(bus.insert(dev.clone(), 0x100, 0).is_err());
        assert!(bus.insert(dev.clone(), u64::MAX, 2).is_err());
        bus.insert(dev, 0x110, 0x10).unwrap();
    }
}
