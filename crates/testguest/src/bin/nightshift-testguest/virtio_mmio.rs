//! The virtio-mmio register window (virtio 1.x "modern" layout, version 2), accessed from
//! CPL3: the window is identity mapped and user accessible, and every access is an MMIO
//! exit to the VMM (nothing at CPL0).

/// Register offsets.
pub mod reg {
    pub const MAGIC: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_AVAIL_LOW: u64 = 0x090;
    pub const QUEUE_AVAIL_HIGH: u64 = 0x094;
    pub const QUEUE_USED_LOW: u64 = 0x0a0;
    pub const QUEUE_USED_HIGH: u64 = 0x0a4;
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    pub const CONFIG: u64 = 0x100;
}

/// "virt".
pub const MAGIC: u32 = 0x7472_6976;

/// Device status bits.
pub mod status {
    pub const ACKNOWLEDGE: u32 = 1;
    pub const DRIVER: u32 = 2;
    pub const DRIVER_OK: u32 = 4;
    pub const FEATURES_OK: u32 = 8;
    pub const NEEDS_RESET: u32 = 64;
    pub const FAILED: u32 = 128;
}

/// InterruptStatus bit: configuration change (e.g. DEVICE_NEEDS_RESET).
pub const INT_CONFIG: u32 = 2;

/// One device's register window.
#[derive(Clone, Copy, Debug)]
pub struct Mmio {
    base: u64,
}

impl Mmio {
    /// The window at `base` (below 4 GiB, at least 0x200 bytes: checked by the caller).
    pub fn new(base: u64) -> Self {
        Self { base }
    }

    /// 32-bit read of register `off`.
    pub fn read(&self, off: u64) -> u32 {
        // SAFETY: `base + off` lies in the device's register window from the command line
        // (identity mapped, user accessible, below 4 GiB, not RAM); a read is an MMIO exit.
        unsafe { ((self.base + off) as *const u32).read_volatile() }
    }

    /// 32-bit write of `value` to register `off`.
    pub fn write(&self, off: u64, value: u32) {
        // SAFETY: as `read`; the write goes to the VMM's device model, not to memory.
        unsafe { ((self.base + off) as *mut u32).write_volatile(value) }
    }

    /// 8-bit write of `value` at offset `off` (config space allows any width).
    pub fn write8(&self, off: u64, value: u8) {
        // SAFETY: as `write`.
        unsafe { ((self.base + off) as *mut u8).write_volatile(value) }
    }

    /// Reads a 64-bit config field at config offset `off` as two 32-bit reads, retried
    /// until ConfigGeneration is stable (virtio 1.x, 4.2.2.2).
    pub fn config_u64(&self, off: u64) -> u64 {
        let mut value = 0;
        for _ in 0..8 {
            let gen = self.read(reg::CONFIG_GENERATION);
            let lo = self.read(reg::CONFIG + off);
            let hi = self.read(reg::CONFIG + off + 4);
            value = u64::from(lo) | u64::from(hi) << 32;
            if self.read(reg::CONFIG_GENERATION) == gen {
                break;
            }
        }
        value
    }
}
