//! Devices for the second driver stack (`virtio-drivers`): which CPU drives which
//! virtio-mmio device, its interrupt route, and the crate's transport over its window.
//!
//! The device list is the one the own block driver uses (`virtio_mmio.device=` entries, or
//! the DSDT's transports with a device behind them), so device `n` has interrupt vector
//! `0x33 + n` whichever driver runs it. The k-th CPU whose workload is `net` takes the
//! (`net_dev` + k)-th device whose DeviceID is 1 (network), an `rng` CPU likewise the
//! (`rng_dev` + k)-th with DeviceID 4 (entropy). The `blk` workload keeps its own
//! assignment (`blk::setup`) with either driver. The BSP does all of it, with the I/O APIC
//! routing, before it releases the APs.

use core::ptr::NonNull;

use testguest::acpi::IoApicList;
use testguest::cmdline::{Config, VirtioMmioDevice, Workload, MAX_VIRTIO_MMIO_DEVICES};
use testguest::drivers_config::BlkDriver;
use testguest::start_info::StartInfo;
use virtio_drivers::transport::mmio::{MmioError, MmioTransport, VirtIOHeader};

use crate::idt::IrqSlot;
use crate::physmem::MAPPED_END;
use crate::sync::Published;
use crate::virtio_mmio::{reg, Mmio, MAGIC};
use crate::{blk, cpu, dma, ioapic, smp, warn};

/// virtio DeviceIDs.
pub const DEVICE_ID_NET: u32 = 1;
pub const DEVICE_ID_RNG: u32 = 4;

/// Why a CPU has no usable device: the `error=` value of its result line.
pub type DeviceError = &'static str;

/// What the BSP set up for one CPU.
#[derive(Clone, Copy, Debug)]
pub struct Assignment {
    /// Index in the device list (the interrupt slot's device number).
    pub index: usize,
    /// Index among the devices of its kind (what `net_dev`/`rng_dev` count).
    pub nth: usize,
    pub dev: VirtioMmioDevice,
}

impl Assignment {
    /// The interrupt slot the device's line is routed to on its CPU.
    pub fn slot(&self) -> IrqSlot {
        IrqSlot::device(self.index)
    }

    /// The crate's MMIO transport over the device's window.
    pub fn transport(&self) -> Result<MmioTransport<'static>, DeviceError> {
        transport(&self.dev)
    }
}

/// The crate's MMIO transport over the window of `dev`, which must have been checked by
/// [`setup`] or `blk::setup` (size, below 4 GiB).
pub fn transport(dev: &VirtioMmioDevice) -> Result<MmioTransport<'static>, DeviceError> {
    if !window_ok(dev) {
        return Err("bad-window");
    }
    let header = NonNull::new(dev.base as *mut VirtIOHeader).ok_or("bad-window")?;
    // SAFETY: the window is at least 0x200 bytes and below 4 GiB (identity mapped, user
    // accessible), and the VMM announced a virtio-mmio device there: it is a register
    // window, not RAM, used by this CPU's driver alone (`MmioTransport::new` checks the
    // magic and version before anything else).
    let transport = unsafe { MmioTransport::new(header, dev.size as usize) };
    transport.map_err(|e| match e {
        MmioError::BadMagic(_) => "bad-magic",
        MmioError::UnsupportedVersion(_) => "bad-version",
        MmioError::InvalidDeviceID(_) => "no-device",
        MmioError::MmioRegionTooSmall => "bad-window",
    })
}

/// A `virtio-drivers` driver that resets its device (Status = 0, read back) when it goes
/// out of scope, on every path, instead of running the crate's `Drop`. That `Drop` disables
/// each queue of the running device (QueueReady = 0 and zeroed queue registers) and spins
/// until QueueReady reads 0: a VMM may refuse queue-register writes outside initialisation
/// (nightshift does, and logs each), and then the guest would spin forever. A reset stops
/// the device just as well; the driver's DMA pages are never reused anyway (`dma`).
pub struct Resetting<D> {
    dev: VirtioMmioDevice,
    driver: core::mem::ManuallyDrop<D>,
}

impl<D> Resetting<D> {
    pub fn new(dev: VirtioMmioDevice, driver: D) -> Self {
        Self {
            dev,
            driver: core::mem::ManuallyDrop::new(driver),
        }
    }
}

impl<D> core::ops::Deref for Resetting<D> {
    type Target = D;
    fn deref(&self) -> &D {
        &self.driver
    }
}

impl<D> core::ops::DerefMut for Resetting<D> {
    fn deref_mut(&mut self) -> &mut D {
        &mut self.driver
    }
}

impl<D> Drop for Resetting<D> {
    fn drop(&mut self) {
        let m = Mmio::new(self.dev.base);
        m.write(reg::STATUS, 0);
        let _ = (0..1000).any(|_| m.read(reg::STATUS) == 0);
    }
}

type Slot = Published<Result<Assignment, (usize, DeviceError)>>;

static NET: [Slot; cpu::MAX_CPUS] = [const { Published::new() }; cpu::MAX_CPUS];
static RNG: [Slot; cpu::MAX_CPUS] = [const { Published::new() }; cpu::MAX_CPUS];

/// The assignment of CPU `cpu` for `workload` (`net` or `rng`): the device, or the device
/// number it would have used and why it cannot.
pub fn assignment(
    cpu: usize,
    workload: Workload,
) -> Option<Result<Assignment, (usize, DeviceError)>> {
    let table = match workload {
        Workload::Net => &NET,
        Workload::Rng => &RNG,
        _ => return None,
    };
    table.get(cpu)?.get().copied()
}

/// Whether a window can be a device's: big enough and inside the identity map.
fn window_ok(d: &VirtioMmioDevice) -> bool {
    d.size >= 0x200 && d.base.checked_add(d.size).is_some_and(|e| e <= MAPPED_END)
}

fn device_id(d: &VirtioMmioDevice) -> u32 {
    let m = Mmio::new(d.base);
    if m.read(reg::MAGIC) == MAGIC {
        m.read(reg::DEVICE_ID)
    } else {
        0
    }
}

/// BSP, before the APs are released: the DMA allocator (when any CPU uses this stack),
/// the assignments and interrupt routes of the `net` and `rng` CPUs.
pub fn setup(
    config: &Config,
    online: usize,
    ioapics: &IoApicList,
    info: Option<&StartInfo>,
    rsdp: Option<u64>,
) {
    let w = &config.workloads;
    let vd_blk =
        config.drivers.blk_driver == BlkDriver::VirtioDrivers && w.any(online, Workload::Blk);
    if !(vd_blk || w.any(online, Workload::Net) || w.any(online, Workload::Rng)) {
        return;
    }
    crate::vdlog::init();
    if dma::init(info) == 0 {
        warn!("dma: no RAM past the block areas for virtio-drivers' rings and buffers");
    }
    let devices = blk::devices(config, rsdp);
    let mut ids = [0u32; MAX_VIRTIO_MMIO_DEVICES];
    for (id, d) in ids.iter_mut().zip(&devices) {
        *id = d.filter(window_ok).map_or(0, |d| device_id(&d));
    }
    for (workload, want, first, table) in [
        (Workload::Net, DEVICE_ID_NET, config.drivers.net.dev, &NET),
        (Workload::Rng, DEVICE_ID_RNG, config.drivers.rng.dev, &RNG),
    ] {
        let cpus = (0..online).filter(|&c| w.for_cpu(c) == workload);
        for (k, cpu) in cpus.enumerate() {
            let nth = first + k;
            let result = assign(&devices, &ids, want, nth, cpu, ioapics);
            if let Err(e) = result {
                warn!("{}: cpu {cpu} (device {nth}): {e}", workload.name());
            }
            let _ = table[cpu].publish(result.map_err(|e| (nth, e)));
        }
    }
}

fn assign(
    devices: &[Option<VirtioMmioDevice>],
    ids: &[u32],
    want: u32,
    nth: usize,
    cpu: usize,
    ioapics: &IoApicList,
) -> Result<Assignment, DeviceError> {
    let (index, dev) = devices
        .iter()
        .zip(ids)
        .enumerate()
        .filter_map(|(i, (d, &id))| d.filter(|_| id == want).map(|d| (i, d)))
        .nth(nth)
        .ok_or("no-device")?;
    if index >= IrqSlot::DEVICE_SLOTS {
        return Err("no-device");
    }
    let a = Assignment { index, nth, dev };
    ioapic::route(
        ioapic::for_gsi(ioapics, dev.irq),
        dev.irq,
        a.slot().vector(),
        smp::apic_id(cpu),
    )
    .map_err(|_| "no-ioapic")?;
    Ok(a)
}
