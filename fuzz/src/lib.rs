//! Shared setup for nightshift's fuzz targets: guest memory laid out from the
//! fuzzer's bytes, a scratch disk, an inline idlework engine, and a driver for
//! the virtio-mmio register protocol.
//!
//! Everything here is deterministic for a given input: every run starts from
//! zeroed guest memory, the disk's fixed pattern and a new device, so a crash
//! reproduces from its artifact alone. What is expensive to create (the guest
//! memory mapping, the scratch file, the engine) is created once per process
//! and put back to that state per input instead.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FEATURES_OK,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};
use vmm::bus::BusDevice;
use vmm::memory::GuestMemory;
use vmm::virtio::block::backend::Storage;
use vmm::virtio::block::{Block, Disk, Transform};
use vmm::virtio::mmio::MmioTransport;
use vmm::virtio::VirtioInterrupt;
use vmm_sys_util::eventfd::EventFd;

/// Guest RAM of every target: 16 MiB at guest physical 0.
pub const MEM_SIZE: u64 = 16 << 20;
/// Descriptor table of the fixed queue layout.
pub const DESC: u64 = 0x1000;
/// Available ring of the fixed queue layout.
pub const AVAIL: u64 = 0x2000;
/// Used ring of the fixed queue layout.
pub const USED: u64 = 0x3000;
/// Where the rest of the input (request headers, data) lands.
pub const DATA: u64 = 0x4000;
/// Most input bytes copied to [`DATA`].
pub const DATA_MAX: usize = 64 << 10;
/// Scratch disk size: 32 sectors, small enough to rewrite on every run.
pub const DISK_BYTES: usize = 16 << 10;
/// The device's GET_ID answer.
pub const DISK_ID: &str = "nightshift-fuzz-disk0";

/// Guest memory for one input: 16 MiB at 0, every byte zero.
///
/// One mapping serves every input of the process: mapping and unmapping
/// 16 MiB per input cost more than most inputs' own work. `MADV_DONTNEED`
/// hands the private anonymous pages back to the kernel, so every page reads
/// as zero again, exactly as in a fresh mapping, at the cost of only the pages
/// the last input touched. Call it once per input, before building a device.
pub fn guest_memory() -> Arc<GuestMemory> {
    static MEM: OnceLock<Arc<GuestMemory>> = OnceLock::new();
    let mem = MEM.get_or_init(|| {
        vmm::memory::create_guest_memory(MEM_SIZE).expect("16 MiB of guest memory")
    });
    let host = mem.get_host_address(GuestAddress(0)).expect("RAM at 0");
    // SAFETY: `host..host + MEM_SIZE` is the one region of `mem`, a private
    // anonymous mapping that lives as long as the process (`MEM` is static).
    // MADV_DONTNEED only replaces its pages with zero-fill-on-demand ones: the
    // mapping stays valid. Nothing uses guest memory meanwhile: the previous
    // input's device was reset (or, inline, has no request left) and dropped,
    // and vm-memory copies in and out, so no reference into it is alive.
    let rc = unsafe { libc::madvise(host.cast(), MEM_SIZE as usize, libc::MADV_DONTNEED) };
    assert_eq!(
        rc,
        0,
        "madvise(MADV_DONTNEED): {}",
        std::io::Error::last_os_error()
    );
    mem.clone()
}

/// A split queue as the fuzzer's bytes describe it, written into guest memory
/// at the fixed addresses [`DESC`], [`AVAIL`], [`USED`] and [`DATA`].
///
/// Input layout (missing bytes are zero):
///
/// | bytes          | meaning                                                  |
/// |----------------|----------------------------------------------------------|
/// | 0              | queue size: `1 << (b % 9)`, i.e. a power of two ≤ 256    |
/// | 1              | flags, target-specific (see [`QueueImage::flags`])       |
/// | 2..4           | avail ring `idx` (LE)                                    |
/// | 4..6           | the device's `next_avail` (where only the target can set it) |
/// | 6..6+16·size   | descriptor table                                         |
/// | then 2·size    | avail ring entries (heads)                               |
/// | rest           | copied to [`DATA`] (at most [`DATA_MAX`] bytes)          |
#[derive(Clone, Copy, Debug)]
pub struct QueueImage {
    /// Queue size (power of two, 1..=256).
    pub size: u16,
    /// Target-specific flag bits.
    pub flags: u8,
    /// The driver's avail index.
    pub avail_idx: u16,
    /// Where the device starts popping.
    pub next_avail: u16,
}

impl QueueImage {
    /// Bytes before the descriptor table.
    pub const HEADER: usize = 6;

    /// Lays `input` out in `mem` and returns its header.
    pub fn load(mem: &GuestMemory, input: &[u8]) -> QueueImage {
        let byte = |i: usize| input.get(i).copied().unwrap_or(0);
        let img = QueueImage {
            size: 1u16 << (byte(0) % 9),
            flags: byte(1),
            avail_idx: u16::from_le_bytes([byte(2), byte(3)]),
            next_avail: u16::from_le_bytes([byte(4), byte(5)]),
        };
        let mut rest = input.get(Self::HEADER..).unwrap_or(&[]);
        let mut put = |addr: u64, max: usize| {
            let (now, later) = rest.split_at(max.min(rest.len()));
            mem.write_slice(now, GuestAddress(addr))
                .expect("fixed layout is in memory");
            rest = later;
        };
        let size = usize::from(img.size);
        put(DESC, 16 * size);
        put(AVAIL + 4, 2 * size);
        put(DATA, DATA_MAX);
        // flags = 0 (interrupts wanted), then the index.
        mem.write_obj(img.avail_idx, GuestAddress(AVAIL + 2))
            .unwrap();
        img
    }
}

/// The scratch disk: one unlinked file on tmpfs per process (so flushes cost
/// nothing and nothing is left behind), back to its fixed pattern at the start
/// of every input. `encrypted`: AES-256-XTS, one pass.
///
/// The file is opened once and shared (no open, lock or stat per input), and
/// the pattern is rewritten only when the last input wrote to the disk.
pub fn scratch_disk(read_only: bool, encrypted: bool) -> Disk {
    let transform = if encrypted {
        Transform::Xts {
            key: [0x5a; 64],
            passes: 1,
        }
    } else {
        Transform::None
    };
    Disk::with_storage(
        Box::new(Scratch::reset()),
        DISK_BYTES as u64,
        read_only,
        transform,
    )
}

/// The scratch file as a [`Storage`]; notes every write so the next input
/// knows whether the pattern needs rewriting.
pub struct Scratch(&'static File);

/// Whether the scratch file may differ from its pattern.
static SCRATCH_DIRTY: AtomicBool = AtomicBool::new(true);

impl Scratch {
    /// The scratch file, back to its pattern (each sector holds its own
    /// number XOR the byte offset, so misdirected I/O is visible) and size.
    pub fn reset() -> Scratch {
        static PATTERN: OnceLock<Vec<u8>> = OnceLock::new();
        let file = scratch_file();
        if SCRATCH_DIRTY.swap(false, Ordering::SeqCst) {
            let pattern = PATTERN.get_or_init(|| {
                (0..DISK_BYTES)
                    .map(|i| (i / 512) as u8 ^ (i as u8))
                    .collect()
            });
            file.write_all_at(pattern, 0).expect("reset scratch disk");
            file.set_len(DISK_BYTES as u64).expect("size scratch disk");
        }
        Scratch(file)
    }
}

impl Storage for Scratch {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        FileExt::read_at(self.0, buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<usize> {
        SCRATCH_DIRTY.store(true, Ordering::SeqCst);
        FileExt::write_at(self.0, buf, offset)
    }
    fn sync_data(&self) -> std::io::Result<()> {
        self.0.sync_data()
    }
}

fn scratch_file() -> &'static File {
    static FILE: OnceLock<File> = OnceLock::new();
    FILE.get_or_init(|| {
        let dir = ["/dev/shm", "/tmp"]
            .into_iter()
            .map(PathBuf::from)
            .find(|d| d.is_dir())
            .unwrap_or_else(std::env::temp_dir);
        let name = dir.join(format!("nightshift-fuzz-disk-{}", std::process::id()));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&name)
            .expect("create scratch disk");
        let _ = std::fs::remove_file(&name);
        file
    })
}

/// A [`Storage`] over the scratch file that injects faults: every host call
/// first returns EINTR once and reads/writes come back short (one sector at a
/// time), so the backend's retry loops run on every request; and
/// [`Faults::fail_next_sync`] makes the next fdatasync fail with EIO.
pub struct Faults {
    file: Scratch,
    fail_sync: AtomicBool,
    sync_failed: AtomicBool,
    calls: AtomicU64,
}

impl Faults {
    /// The next fdatasync fails (EIO).
    pub fn fail_next_sync(&self) {
        self.fail_sync.store(true, Ordering::SeqCst);
    }

    /// Whether an injected fdatasync failure happened.
    pub fn sync_failed(&self) -> bool {
        self.sync_failed.load(Ordering::SeqCst)
    }

    fn interrupt(&self) -> std::io::Result<()> {
        if self.calls.fetch_add(1, Ordering::Relaxed) % 2 == 0 {
            return Err(std::io::ErrorKind::Interrupted.into());
        }
        Ok(())
    }
}

impl Storage for Faults {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        self.interrupt()?;
        let n = buf.len().min(512);
        self.file.read_at(&mut buf[..n], offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<usize> {
        self.interrupt()?;
        let n = buf.len().min(512);
        self.file.write_at(&buf[..n], offset)
    }
    fn sync_data(&self) -> std::io::Result<()> {
        self.interrupt()?;
        if self.fail_sync.swap(false, Ordering::SeqCst) {
            self.sync_failed.store(true, Ordering::SeqCst);
            return Err(std::io::Error::from_raw_os_error(libc::EIO));
        }
        self.file.sync_data()
    }
}

/// The scratch disk (reset to its pattern) behind a fault-injecting [`Faults`].
pub fn faulty_scratch_disk() -> (Disk, Arc<Faults>) {
    let faults = Arc::new(Faults {
        file: Scratch::reset(),
        fail_sync: AtomicBool::new(false),
        sync_failed: AtomicBool::new(false),
        calls: AtomicU64::new(0),
    });
    let disk = Disk::with_storage(
        Box::new(faults.clone()),
        DISK_BYTES as u64,
        false,
        Transform::None,
    );
    (disk, faults)
}

/// The idlework engine every target submits to: inline, no worker threads,
/// so requests run to completion inside `queue_notify` and every run is
/// single-threaded and deterministic.
pub fn engine() -> &'static idlework::Engine {
    static ENGINE: OnceLock<idlework::Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        idlework::Engine::new(idlework::Config {
            policy: idlework::Policy::Inline,
            max_workers: 0,
            ..Default::default()
        })
        .expect("inline engine")
    })
}

/// Panics (an item that panicked was caught by idlework, which would
/// otherwise hide it) if any engine item panicked so far.
pub fn assert_no_item_panicked() {
    assert_no_item_panicked_in(engine());
}

/// How often [`assert_no_item_panicked_in`] reads the engine's statistics.
pub const PANIC_CHECK_EVERY: u64 = 1024;

/// [`assert_no_item_panicked`] for another engine.
///
/// The per-input guarantee is libfuzzer-sys's panic hook: it aborts the
/// process inside the panicking item, before idlework's `catch_unwind`
/// returns, so the input that made an item panic is the crash artifact. This
/// is the backstop in case that hook is ever replaced: `Engine::stats` builds
/// the percentiles of every wait histogram (about 0.4 ms, more than a whole
/// device input), so it runs on the first input of the process (a replayed
/// artifact is checked) and every [`PANIC_CHECK_EVERY`] inputs after.
pub fn assert_no_item_panicked_in(engine: &idlework::Engine) {
    static CALLS: AtomicU64 = AtomicU64::new(0);
    if CALLS.fetch_add(1, Ordering::Relaxed) % PANIC_CHECK_EVERY != 0 {
        return;
    }
    let panics = engine.stats().panics();
    assert_eq!(panics, 0, "an idlework item (a block request) panicked");
}

/// A virtio-blk device on the scratch disk.
pub fn block_device(read_only: bool, encrypted: bool) -> Block {
    Block::new(
        scratch_disk(read_only, encrypted),
        DISK_ID,
        engine().submitter(),
    )
}

/// The interrupt a transport raises (an eventfd nobody reads; non-blocking so
/// a saturated counter cannot block the device).
pub fn interrupt() -> Arc<VirtioInterrupt> {
    Arc::new(VirtioInterrupt::new(
        EventFd::new(libc::EFD_NONBLOCK).expect("eventfd"),
    ))
}

/// virtio-mmio register offsets: the transport's own, and a table of them.
pub mod reg {
    pub use vmm::virtio::mmio::reg::*;

    /// Every defined register (and two config-space offsets), for targets
    /// that pick offsets from a table rather than at random.
    pub const ALL: [u64; 26] = [
        MAGIC,
        VERSION,
        DEVICE_ID,
        VENDOR_ID,
        DEVICE_FEATURES,
        DEVICE_FEATURES_SEL,
        DRIVER_FEATURES,
        DRIVER_FEATURES_SEL,
        QUEUE_SEL,
        QUEUE_NUM_MAX,
        QUEUE_NUM,
        QUEUE_READY,
        QUEUE_NOTIFY,
        INTERRUPT_STATUS,
        INTERRUPT_ACK,
        STATUS,
        QUEUE_DESC_LOW,
        QUEUE_DESC_HIGH,
        QUEUE_AVAIL_LOW,
        QUEUE_AVAIL_HIGH,
        QUEUE_USED_LOW,
        QUEUE_USED_HIGH,
        CONFIG_GENERATION,
        CONFIG,
        CONFIG + 4,
        CONFIG + 8,
    ];
}

/// A 4-byte register write, as a driver does it.
pub fn write_reg(t: &mut MmioTransport, offset: u64, value: u32) {
    t.write(offset, &value.to_le_bytes());
}

/// A 4-byte register read.
pub fn read_reg(t: &mut MmioTransport, offset: u64) -> u32 {
    let mut b = [0; 4];
    t.read(offset, &mut b);
    u32::from_le_bytes(b)
}

/// Drives a well-behaved virtio 1 handshake: features (VERSION_1 plus
/// whatever else the device offers), queue 0 of `size` at the fixed layout,
/// DRIVER_OK.
pub fn bring_up(t: &mut MmioTransport, size: u16) {
    write_reg(t, reg::STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
    write_reg(
        t,
        reg::STATUS,
        VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER,
    );
    for sel in 0..2 {
        write_reg(t, reg::DEVICE_FEATURES_SEL, sel);
        let offered = read_reg(t, reg::DEVICE_FEATURES);
        write_reg(t, reg::DRIVER_FEATURES_SEL, sel);
        write_reg(t, reg::DRIVER_FEATURES, offered);
    }
    let features_ok =
        VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK;
    write_reg(t, reg::STATUS, features_ok);
    assert_ne!(
        t.status() & VIRTIO_CONFIG_S_FEATURES_OK,
        0,
        "device refused VERSION_1 features"
    );
    write_reg(t, reg::QUEUE_SEL, 0);
    write_reg(t, reg::QUEUE_NUM, u32::from(size));
    write_reg(t, reg::QUEUE_DESC_LOW, DESC as u32);
    write_reg(t, reg::QUEUE_DESC_HIGH, 0);
    write_reg(t, reg::QUEUE_AVAIL_LOW, AVAIL as u32);
    write_reg(t, reg::QUEUE_AVAIL_HIGH, 0);
    write_reg(t, reg::QUEUE_USED_LOW, USED as u32);
    write_reg(t, reg::QUEUE_USED_HIGH, 0);
    write_reg(t, reg::QUEUE_READY, 1);
    write_reg(t, reg::STATUS, features_ok | VIRTIO_CONFIG_S_DRIVER_OK);
}

/// Whether `NIGHTSHIFT_FUZZ_DEBUG` is set: targets then print what each input
/// did (use with a single input, e.g. `cargo fuzz run TARGET FILE`).
pub fn debug() -> bool {
    static DEBUG: OnceLock<bool> = OnceLock::new();
    *DEBUG.get_or_init(|| std::env::var_os("NIGHTSHIFT_FUZZ_DEBUG").is_some())
}
