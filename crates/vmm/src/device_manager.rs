//! The device manager: where virtio devices live and how the guest and the
//! host reach them.
//!
//! Each device gets a slot — a 4 KiB virtio-mmio window and its own GSI
//! (IOAPIC line), handed out in the order devices are added — a transport on
//! the MMIO bus with an irqfd for the GSI, and one ioeventfd per queue,
//! matched on the queue index the guest writes to QueueNotify (or none, with
//! `--notify exit`, when notifies exit to the vCPU thread). Devices that wait
//! on the host (a tap) register fds on the notifier's epoll through
//! [`DeviceManager::host_events`]. The manager keeps what the guest must be
//! told (the `virtio_mmio.device=` command-line entries, and the slot list
//! from which ACPI DSDT entries are made) and each device's counters for the
//! run report.
//!
//! Adding a kind of device is a folder under `virtio/` and one `add` call
//! where the VM is built.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use kvm_ioctls::VmFd;
use serde::Serialize;

use crate::bus::Bus;
use crate::config::{NotifyPath, NotifyPaths};
use crate::irqchip::{IrqLine, UserIrqChip};
use crate::memory::{GuestMemory, VIRTIO_MMIO_SIZE, VIRTIO_MMIO_START};
use crate::virtio::block::BlockCounters;
use crate::virtio::mmio::{MmioTransport, QUEUE_NOTIFY_OFFSET};
use crate::virtio::net::NetCounters;
use crate::virtio::notifier::{HostEvents, NotifierBuilder};
use crate::virtio::rng::RngCounters;
use crate::virtio::{VirtioDevice, VirtioInterrupt};

/// First GSI for virtio devices (after the ISA ones the guest may expect).
pub const FIRST_VIRTIO_GSI: u32 = 5;
/// Last GSI: the in-kernel IOAPIC has 24 lines.
pub const LAST_VIRTIO_GSI: u32 = 23;

/// Where one virtio-mmio device lives (what ACPI and the command line announce).
pub use crate::boot::dsdt::MmioSlot as Slot;

impl Slot {
    /// Slot `i`, if there is a GSI for it.
    pub fn nth(i: usize) -> Option<Slot> {
        let gsi = FIRST_VIRTIO_GSI.checked_add(u32::try_from(i).ok()?)?;
        (gsi <= LAST_VIRTIO_GSI).then_some(Slot {
            base: VIRTIO_MMIO_START + i as u64 * VIRTIO_MMIO_SIZE,
            size: VIRTIO_MMIO_SIZE,
            gsi,
        })
    }

    /// Whether a guest write to `addr` is a QueueNotify of some slot's
    /// device (the write that may queue device work).
    pub fn is_queue_notify(addr: u64) -> bool {
        let Some(off) = addr.checked_sub(VIRTIO_MMIO_START) else {
            return false;
        };
        let slots = u64::from(LAST_VIRTIO_GSI - FIRST_VIRTIO_GSI + 1);
        off < slots * VIRTIO_MMIO_SIZE && off % VIRTIO_MMIO_SIZE == QUEUE_NOTIFY_OFFSET
    }

    /// How Linux (and the test guest) learn of the device from the command line.
    pub fn cmdline(&self) -> String {
        format!(
            "virtio_mmio.device={}K@{:#x}:{}",
            self.size >> 10,
            self.base,
            self.gsi
        )
    }
}

/// A device's counters, by name, for the run report.
pub trait DeviceCounters: Send + Sync {
    /// The current values.
    fn snapshot(&self) -> Vec<(&'static str, u64)>;
}

impl DeviceCounters for BlockCounters {
    fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let s = BlockCounters::snapshot(self);
        vec![
            ("reads", s.reads),
            ("writes", s.writes),
            ("flushes", s.flushes),
            ("get_ids", s.get_ids),
            ("errors", s.errors),
            ("malformed", s.malformed),
            ("bytes", s.bytes),
        ]
    }
}

impl DeviceCounters for NetCounters {
    fn snapshot(&self) -> Vec<(&'static str, u64)> {
        NetCounters::snapshot(self)
    }
}

impl DeviceCounters for RngCounters {
    fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let g = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        vec![
            ("requests", g(&self.requests)),
            ("bytes", g(&self.bytes)),
            ("malformed", g(&self.malformed)),
            ("host_errors", g(&self.host_errors)),
        ]
    }
}

/// Adding a device failed.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// Every GSI is taken.
    #[error("no slot left for device {0}: at most {n} virtio devices", n = LAST_VIRTIO_GSI - FIRST_VIRTIO_GSI + 1)]
    NoSlot(String),
    /// A KVM ioctl failed.
    #[error("{what} for device {name}: {err}")]
    Kvm {
        /// What we were doing.
        what: &'static str,
        /// The device.
        name: String,
        /// The ioctl's error.
        #[source]
        err: kvm_ioctls::Error,
    },
    /// A host resource (eventfd, ioeventfd, bus range) could not be had.
    #[error("{what} for device {name}: {err}")]
    Host {
        /// What we were doing.
        what: &'static str,
        /// The device.
        name: String,
        /// The error.
        #[source]
        err: std::io::Error,
    },
}

/// One device as the report shows it.
#[derive(Clone, Debug, Serialize)]
pub struct DeviceReport {
    /// The device's name (`disk0`, `net0`, `rng`).
    pub name: String,
    /// Virtio device ID (1 net, 2 block, 4 rng).
    pub device_type: u32,
    /// Where it lives.
    pub slot: Slot,
    /// Its counters when the VM ended.
    pub counters: BTreeMap<&'static str, u64>,
}

struct Entry {
    name: String,
    device_type: u32,
    slot: Slot,
    counters: Arc<dyn DeviceCounters>,
}

/// The devices of a built VM: their slots and counters.
pub struct Devices {
    entries: Vec<Entry>,
}

impl Devices {
    /// Every slot in use, in order (for the DSDT).
    pub fn slots(&self) -> Vec<Slot> {
        self.entries.iter().map(|e| e.slot).collect()
    }

    /// The command-line entries announcing every device (each with a leading space).
    pub fn cmdline(&self) -> String {
        self.entries
            .iter()
            .map(|e| format!(" {}", e.slot.cmdline()))
            .collect()
    }

    /// Each device with its counters now.
    pub fn report(&self) -> Vec<DeviceReport> {
        self.entries
            .iter()
            .map(|e| DeviceReport {
                name: e.name.clone(),
                device_type: e.device_type,
                slot: e.slot,
                counters: e.counters.snapshot().into_iter().collect(),
            })
            .collect()
    }
}

/// Builds the VM's virtio devices.
pub struct DeviceManager<'a> {
    vm_fd: &'a VmFd,
    mem: Arc<GuestMemory>,
    notify: NotifyPaths,
    /// The VM's own interrupt controllers, under `--irqchip user`.
    irqchip: Option<Arc<UserIrqChip>>,
    mmio: Bus,
    notifier: NotifierBuilder,
    entries: Vec<Entry>,
}

impl<'a> DeviceManager<'a> {
    /// A manager placing devices in `vm_fd`, notified by `notify`, on a new
    /// MMIO bus `mmio` (which may already hold other devices), interrupting
    /// through `irqchip` if the VM has its own.
    pub fn new(
        vm_fd: &'a VmFd,
        mem: Arc<GuestMemory>,
        notify: NotifyPaths,
        irqchip: Option<Arc<UserIrqChip>>,
        mmio: Bus,
    ) -> std::io::Result<Self> {
        Ok(DeviceManager {
            vm_fd,
            mem,
            notify,
            irqchip,
            mmio,
            notifier: NotifierBuilder::new()?,
            entries: Vec::new(),
        })
    }

    /// Where devices register their host event sources.
    pub fn host_events(&mut self) -> &mut dyn HostEvents {
        &mut self.notifier
    }

    /// Puts `device` in the next slot: transport on the MMIO bus, its
    /// interrupt on the slot's GSI (an irqfd, or a pin of the userspace
    /// IOAPIC), one ioeventfd per queue.
    pub fn add(
        &mut self,
        name: String,
        counters: Arc<dyn DeviceCounters>,
        device: Box<dyn VirtioDevice>,
    ) -> Result<Slot, DeviceError> {
        let slot =
            Slot::nth(self.entries.len()).ok_or_else(|| DeviceError::NoSlot(name.clone()))?;
        let host = |what, name: &str| {
            let name = name.to_string();
            move |err| DeviceError::Host { what, name, err }
        };
        let line = IrqLine::for_gsi(self.vm_fd, self.irqchip.as_ref(), slot.gsi)
            .map_err(host("setting up the interrupt line", &name))?;
        let device_type = device.device_type();
        let queues = device.queue_max_sizes().len() as u32;
        let notify = self.notify.for_device(device.driver_waits());
        let interrupt = Arc::new(VirtioInterrupt::on_line(line));
        let transport = Arc::new(Mutex::new(MmioTransport::new(
            device,
            self.mem.clone(),
            interrupt,
        )));
        self.mmio
            .insert(transport.clone(), slot.base, slot.size)
            .map_err(|e| host("placing the device", &name)(std::io::Error::other(e)))?;
        if notify == NotifyPath::Ioeventfd {
            for queue in 0..queues {
                self.notifier
                    .add_queue(
                        self.vm_fd,
                        slot.base + QUEUE_NOTIFY_OFFSET,
                        queue,
                        transport.clone(),
                    )
                    .map_err(host("registering an ioeventfd", &name))?;
            }
        }
        self.entries.push(Entry {
            name,
            device_type,
            slot,
            counters,
        });
        Ok(slot)
    }

    /// The MMIO bus, the notifier to start, and the devices.
    pub fn finish(self) -> (Bus, NotifierBuilder, Devices) {
        (
            self.mmio,
            self.notifier,
            Devices {
                entries: self.entries,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_windows_and_gsis_in_order_until_the_ioapic_ends() {
        let s = Slot::nth(0).unwrap();
        assert_eq!((s.base, s.size, s.gsi), (0xd000_0000, 0x1000, 5));
        assert_eq!(s.cmdline(), "virtio_mmio.device=4K@0xd0000000:5");
        let last = Slot::nth(18).unwrap();
        assert_eq!((last.base, last.gsi), (0xd001_2000, 23));
        assert_eq!(Slot::nth(19), None);
    }

    #[test]
    fn only_a_slots_queue_notify_register_is_a_queue_notify() {
        for i in [0, 18] {
            let s = Slot::nth(i).unwrap();
            assert!(Slot::is_queue_notify(s.base + QUEUE_NOTIFY_OFFSET));
            assert!(!Slot::is_queue_notify(s.base + QUEUE_NOTIFY_OFFSET + 4));
            assert!(!Slot::is_queue_notify(s.base));
        }
        let past = Slot::nth(18).unwrap().base + VIRTIO_MMIO_SIZE;
        assert!(!Slot::is_queue_notify(past + QUEUE_NOTIFY_OFFSET));
        assert!(!Slot::is_queue_notify(QUEUE_NOTIFY_OFFSET));
    }
}
