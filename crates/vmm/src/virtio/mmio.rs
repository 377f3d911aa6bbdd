//! The virtio-mmio transport (virtio 1.x, "modern" register layout, version 2).
//!
//! Every register access is guest-controlled. The transport enforces the
//! device-status protocol (features before FEATURES_OK, queues before
//! DRIVER_OK), refuses queue sizes that are zero, too large or not powers of
//! two, checks queue addresses against guest memory before activating, and
//! logs and ignores accesses to undefined registers. A driver that breaks the
//! protocol after DRIVER_OK gets DEVICE_NEEDS_RESET, as the spec allows.

use std::sync::Arc;

use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
    VIRTIO_F_VERSION_1,
};
use virtio_bindings::virtio_mmio::*;
use virtio_queue::{Queue, QueueT};

use super::{ActivateContext, VirtioDevice, VirtioInterrupt};
use crate::bus::BusDevice;
use crate::guest_log::GuestLog;
use crate::memory::GuestMemory;

const MMIO_MAGIC: u32 = 0x7472_6976; // "virt"
const MMIO_VERSION: u32 = 2;
const VENDOR_ID: u32 = 0x4e53_4846; // "NSHF"

/// Register offsets as u64, for matching (and for drivers in tests and fuzzers).
#[allow(missing_docs)]
pub mod reg {
    use super::*;
    pub const MAGIC: u64 = VIRTIO_MMIO_MAGIC_VALUE as u64;
    pub const VERSION: u64 = VIRTIO_MMIO_VERSION as u64;
    pub const DEVICE_ID: u64 = VIRTIO_MMIO_DEVICE_ID as u64;
    pub const VENDOR_ID: u64 = VIRTIO_MMIO_VENDOR_ID as u64;
    pub const DEVICE_FEATURES: u64 = VIRTIO_MMIO_DEVICE_FEATURES as u64;
    pub const DEVICE_FEATURES_SEL: u64 = VIRTIO_MMIO_DEVICE_FEATURES_SEL as u64;
    pub const DRIVER_FEATURES: u64 = VIRTIO_MMIO_DRIVER_FEATURES as u64;
    pub const DRIVER_FEATURES_SEL: u64 = VIRTIO_MMIO_DRIVER_FEATURES_SEL as u64;
    pub const QUEUE_SEL: u64 = VIRTIO_MMIO_QUEUE_SEL as u64;
    pub const QUEUE_NUM_MAX: u64 = VIRTIO_MMIO_QUEUE_NUM_MAX as u64;
    pub const QUEUE_NUM: u64 = VIRTIO_MMIO_QUEUE_NUM as u64;
    pub const QUEUE_READY: u64 = VIRTIO_MMIO_QUEUE_READY as u64;
    pub const QUEUE_NOTIFY: u64 = VIRTIO_MMIO_QUEUE_NOTIFY as u64;
    pub const INTERRUPT_STATUS: u64 = VIRTIO_MMIO_INTERRUPT_STATUS as u64;
    pub const INTERRUPT_ACK: u64 = VIRTIO_MMIO_INTERRUPT_ACK as u64;
    pub const STATUS: u64 = VIRTIO_MMIO_STATUS as u64;
    pub const QUEUE_DESC_LOW: u64 = VIRTIO_MMIO_QUEUE_DESC_LOW as u64;
    pub const QUEUE_DESC_HIGH: u64 = VIRTIO_MMIO_QUEUE_DESC_HIGH as u64;
    pub const QUEUE_AVAIL_LOW: u64 = VIRTIO_MMIO_QUEUE_AVAIL_LOW as u64;
    pub const QUEUE_AVAIL_HIGH: u64 = VIRTIO_MMIO_QUEUE_AVAIL_HIGH as u64;
    pub const QUEUE_USED_LOW: u64 = VIRTIO_MMIO_QUEUE_USED_LOW as u64;
    pub const QUEUE_USED_HIGH: u64 = VIRTIO_MMIO_QUEUE_USED_HIGH as u64;
    pub const CONFIG_GENERATION: u64 = VIRTIO_MMIO_CONFIG_GENERATION as u64;
    pub const CONFIG: u64 = VIRTIO_MMIO_CONFIG as u64;
}

/// The device-status bits a driver writes (NEEDS_RESET is the device's).
const DRIVER_STATUS_BITS: u32 = VIRTIO_CONFIG_S_ACKNOWLEDGE
    | VIRTIO_CONFIG_S_DRIVER
    | VIRTIO_CONFIG_S_FEATURES_OK
    | VIRTIO_CONFIG_S_DRIVER_OK
    | VIRTIO_CONFIG_S_FAILED;

/// Offset of QueueNotify in the window (where the ioeventfd goes).
pub const QUEUE_NOTIFY_OFFSET: u64 = reg::QUEUE_NOTIFY;

/// One virtio device behind the MMIO transport.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: Arc<GuestMemory>,
    interrupt: Arc<VirtioInterrupt>,
    queues: Vec<Queue>,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    config_generation: u32,
    /// Guest protocol errors so far (each is logged once, as it happens).
    protocol_errors: u64,
}

impl MmioTransport {
    /// A transport for `device`, interrupting through `interrupt`.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: Arc<GuestMemory>,
        interrupt: Arc<VirtioInterrupt>,
    ) -> Self {
        let queues = device
            .queue_max_sizes()
            .iter()
            .filter_map(|&max| Queue::new(max).ok())
            .collect();
        MmioTransport {
            device,
            mem,
            interrupt,
            queues,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            config_generation: 0,
            protocol_errors: 0,
        }
    }

    /// The device status register (with DEVICE_NEEDS_RESET if the device asked for it).
    pub fn status(&self) -> u32 {
        if self.interrupt.needs_reset() {
            self.status | VIRTIO_CONFIG_S_NEEDS_RESET
        } else {
            self.status
        }
    }

    /// Guest protocol errors seen (bad register use, bad queue setup).
    pub fn protocol_errors(&self) -> u64 {
        self.protocol_errors
    }

    /// Delivers a queue notification (from the ioeventfd path or an MMIO exit).
    pub fn notify(&mut self, queue: u32) {
        if self.interrupt.needs_reset() {
            // The device gave up on this queue; a driver may notify before it has
            // seen DEVICE_NEEDS_RESET, which is no protocol error.
            tracing::debug!("virtio-mmio: notify ignored: the device needs a reset");
            return;
        }
        if self.status & VIRTIO_CONFIG_S_DRIVER_OK == 0
            || self.status & VIRTIO_CONFIG_S_NEEDS_RESET != 0
        {
            self.protocol_error(format_args!("queue {queue} notified before DRIVER_OK"));
            return;
        }
        match u16::try_from(queue) {
            Ok(q) if (q as usize) < self.queues.len() => self.device.queue_notify(q),
            _ => self.protocol_error(format_args!(
                "notify of queue {queue}, which does not exist"
            )),
        }
    }

    /// Delivers a notification that came through a queue's ioeventfd. KVM signals the
    /// eventfd without ordering it against the guest's later register accesses, so a
    /// notify written just before a reset (Status = 0) may arrive here after it. Before
    /// DRIVER_OK such a notify names queues that no longer exist: it is dropped quietly,
    /// not counted as the guest's protocol error (the MMIO-exit path, which is ordered,
    /// still counts one).
    pub fn notify_async(&mut self, queue: u32) {
        if self.status & VIRTIO_CONFIG_S_DRIVER_OK == 0 {
            tracing::debug!("virtio-mmio: a notify of queue {queue} arrived after a reset");
            return;
        }
        self.notify(queue);
    }

    fn protocol_error(&mut self, what: std::fmt::Arguments<'_>) {
        static PROTOCOL_ERROR: GuestLog = GuestLog::new("virtio-mmio protocol error");
        self.protocol_errors += 1;
        crate::guest_warn!(
            PROTOCOL_ERROR,
            "virtio-mmio {}: guest error: {what}",
            self.device.device_type()
        );
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// Queue registers may change only while the driver sets up (before DRIVER_OK).
    fn queue_config_allowed(&self) -> bool {
        self.status & (VIRTIO_CONFIG_S_FEATURES_OK | VIRTIO_CONFIG_S_DRIVER_OK)
            == VIRTIO_CONFIG_S_FEATURES_OK
    }

    fn read_register(&self, offset: u64) -> Option<u32> {
        let queue = self.queues.get(self.queue_sel as usize);
        Some(match offset {
            reg::MAGIC => MMIO_MAGIC,
            reg::VERSION => MMIO_VERSION,
            reg::DEVICE_ID => self.device.device_type(),
            reg::VENDOR_ID => VENDOR_ID,
            reg::DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device.features() as u32,
                1 => (self.device.features() >> 32) as u32,
                _ => 0,
            },
            reg::QUEUE_NUM_MAX => queue.map_or(0, |q| q.max_size().into()),
            reg::QUEUE_READY => queue.map_or(0, |q| q.ready().into()),
            reg::INTERRUPT_STATUS => self.interrupt.status(),
            reg::STATUS => self.status(),
            reg::CONFIG_GENERATION => self.config_generation,
            _ => return None,
        })
    }

    fn write_register(&mut self, offset: u64, v: u32) {
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_sel = v,
            reg::DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            reg::DRIVER_FEATURES => self.write_driver_features(v),
            reg::QUEUE_SEL => self.queue_sel = v,
            reg::QUEUE_NOTIFY => self.notify(v),
            reg::INTERRUPT_ACK => self.interrupt.ack(v),
            reg::STATUS => self.write_status(v),
            reg::QUEUE_NUM
            | reg::QUEUE_READY
            | reg::QUEUE_DESC_LOW
            | reg::QUEUE_DESC_HIGH
            | reg::QUEUE_AVAIL_LOW
            | reg::QUEUE_AVAIL_HIGH
            | reg::QUEUE_USED_LOW
            | reg::QUEUE_USED_HIGH => self.write_queue_register(offset, v),
            _ => self.protocol_error(format_args!(
                "write of {v:#x} to undefined register {offset:#x}"
            )),
        }
    }

    fn write_driver_features(&mut self, v: u32) {
        if self.status & VIRTIO_CONFIG_S_DRIVER == 0
            || self.status & VIRTIO_CONFIG_S_FEATURES_OK != 0
        {
            self.protocol_error(format_args!(
                "driver features written outside feature negotiation"
            ));
            return;
        }
        let offered = self.device.features();
        let shift = match self.driver_features_sel {
            0 => 0,
            1 => 32,
            sel => {
                self.protocol_error(format_args!("driver features select {sel}"));
                return;
            }
        };
        let word = (u64::from(v) << shift) & (0xffff_ffffu64 << shift);
        if word & !offered != 0 {
            // The spec says a driver must not accept what was not offered; we drop those bits.
            self.protocol_error(format_args!(
                "driver accepted unoffered features {:#x}",
                word & !offered
            ));
        }
        self.driver_features =
            (self.driver_features & !(0xffff_ffffu64 << shift)) | (word & offered);
    }

    fn write_queue_register(&mut self, offset: u64, v: u32) {
        if !self.queue_config_allowed() {
            let status = self.status;
            self.protocol_error(format_args!(
                "queue register {offset:#x} written in status {status:#x}"
            ));
            return;
        }
        let sel = self.queue_sel;
        let Some(q) = self.selected_queue() else {
            self.protocol_error(format_args!(
                "queue register {offset:#x} written for missing queue {sel}"
            ));
            return;
        };
        match offset {
            reg::QUEUE_NUM => {
                let ok = u16::try_from(v)
                    .ok()
                    .filter(|&n| n != 0 && n.is_power_of_two() && n <= q.max_size());
                match ok {
                    Some(n) => q.set_size(n),
                    None => self.protocol_error(format_args!("queue {sel}: bad size {v}")),
                }
            }
            reg::QUEUE_READY => q.set_ready(v == 1),
            reg::QUEUE_DESC_LOW => q.set_desc_table_address(Some(v), None),
            reg::QUEUE_DESC_HIGH => q.set_desc_table_address(None, Some(v)),
            reg::QUEUE_AVAIL_LOW => q.set_avail_ring_address(Some(v), None),
            reg::QUEUE_AVAIL_HIGH => q.set_avail_ring_address(None, Some(v)),
            reg::QUEUE_USED_LOW => q.set_used_ring_address(Some(v), None),
            reg::QUEUE_USED_HIGH => q.set_used_ring_address(None, Some(v)),
            _ => unreachable!("only queue registers are routed here"),
        }
    }

    fn write_status(&mut self, v: u32) {
        if v == 0 {
            self.reset();
            return;
        }
        // Only the driver's bits are the driver's to write; NEEDS_RESET and
        // the undefined bits are ignored (and reported).
        if v & !DRIVER_STATUS_BITS != 0 {
            self.protocol_error(format_args!(
                "status write sets bits {:#x} that are not the driver's",
                v & !DRIVER_STATUS_BITS
            ));
        }
        let v = v & DRIVER_STATUS_BITS;
        let current = self.status & DRIVER_STATUS_BITS;
        // Bits may only be added, each after the one it depends on.
        if v & current != current {
            self.protocol_error(format_args!("status {v:#x} clears bits of {current:#x}"));
            return;
        }
        let new = v & !current;
        let required = |bit| match bit {
            VIRTIO_CONFIG_S_DRIVER => VIRTIO_CONFIG_S_ACKNOWLEDGE,
            VIRTIO_CONFIG_S_FEATURES_OK => VIRTIO_CONFIG_S_DRIVER,
            VIRTIO_CONFIG_S_DRIVER_OK => VIRTIO_CONFIG_S_FEATURES_OK,
            _ => 0,
        };
        for bit in [
            VIRTIO_CONFIG_S_DRIVER,
            VIRTIO_CONFIG_S_FEATURES_OK,
            VIRTIO_CONFIG_S_DRIVER_OK,
        ] {
            if new & bit != 0 && v & required(bit) == 0 {
                self.protocol_error(format_args!(
                    "status bit {bit:#x} set before {:#x}",
                    required(bit)
                ));
                return;
            }
        }
        if new & VIRTIO_CONFIG_S_FAILED != 0 {
            tracing::info!(
                "virtio-mmio {}: driver gave up on the device",
                self.device.device_type()
            );
        }
        let mut v = v;
        if new & VIRTIO_CONFIG_S_FEATURES_OK != 0
            && self.driver_features & (1 << VIRTIO_F_VERSION_1) == 0
        {
            // Legacy drivers are not supported: FEATURES_OK does not stick.
            self.protocol_error(format_args!("driver did not accept VIRTIO_F_VERSION_1"));
            v &= !(VIRTIO_CONFIG_S_FEATURES_OK | VIRTIO_CONFIG_S_DRIVER_OK);
        }
        self.status = (self.status & !DRIVER_STATUS_BITS) | v;
        if v & !current & VIRTIO_CONFIG_S_DRIVER_OK != 0 {
            self.activate();
        }
    }

    fn activate(&mut self) {
        let bad = self
            .queues
            .iter()
            .position(|q| q.ready() && !q.is_valid(self.mem.as_ref()));
        if let Some(i) = bad {
            self.fail(format_args!("queue {i} does not fit in guest memory"));
            return;
        }
        let ctx = ActivateContext {
            mem: self.mem.clone(),
            // The device gets its own copies; ours keep answering register reads.
            queues: self
                .queues
                .iter()
                .filter_map(|q| Queue::try_from(q.state()).ok())
                .collect(),
            interrupt: self.interrupt.clone(),
            features: self.driver_features,
        };
        if let Err(e) = self.device.activate(ctx) {
            self.fail(format_args!("activation failed: {e}"));
        }
    }

    /// Marks the device broken: the driver must reset it.
    fn fail(&mut self, why: std::fmt::Arguments<'_>) {
        self.protocol_error(why);
        self.status |= VIRTIO_CONFIG_S_NEEDS_RESET;
        self.interrupt.signal_config_change();
    }

    fn reset(&mut self) {
        self.device.reset();
        for q in &mut self.queues {
            q.reset();
        }
        self.interrupt.reset();
        self.status = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.queue_sel = 0;
        self.config_generation = self.config_generation.wrapping_add(1);
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= reg::CONFIG {
            self.device.read_config(offset - reg::CONFIG, data);
            return;
        }
        let value = match data.len() {
            4 if offset % 4 == 0 => self.read_register(offset),
            _ => None,
        };
        match value {
            Some(v) => data.copy_from_slice(&v.to_le_bytes()),
            None => {
                data.fill(0);
                self.protocol_error(format_args!(
                    "{}-byte read of register {offset:#x}",
                    data.len()
                ));
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= reg::CONFIG {
            self.device.write_config(offset - reg::CONFIG, data);
            return;
        }
        match <[u8; 4]>::try_from(data) {
            Ok(bytes) if offset % 4 == 0 => self.write_register(offset, u32::from_le_bytes(bytes)),
            _ => self.protocol_error(format_args!(
                "{}-byte write to register {offset:#x}",
                data.len()
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::create_guest_memory;
    use std::sync::Mutex;
    use vmm_sys_util::eventfd::EventFd;

    #[derive(Default)]
    struct Log {
        activated: Option<(usize, u64)>,
        notified: Vec<u16>,
        resets: usize,
    }

    struct Dummy(Arc<Mutex<Log>>);

    impl VirtioDevice for Dummy {
        fn device_type(&self) -> u32 {
            42
        }
        fn features(&self) -> u64 {
            (1 << VIRTIO_F_VERSION_1) | 1
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16]
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn activate(&mut self, ctx: ActivateContext) -> Result<(), String> {
            self.0.lock().unwrap().activated = Some((ctx.queues.len(), ctx.features));
            Ok(())
        }
        fn queue_notify(&mut self, queue: u16) {
            self.0.lock().unwrap().notified.push(queue);
        }
        fn reset(&mut self) {
            self.0.lock().unwrap().resets += 1;
        }
    }

    fn transport() -> (MmioTransport, Arc<Mutex<Log>>) {
        let log = Arc::new(Mutex::new(Log::default()));
        let mem = create_guest_memory(16 << 20).unwrap();
        let irq = Arc::new(VirtioInterrupt::new(EventFd::new(0).unwrap()));
        (
            MmioTransport::new(Box::new(Dummy(log.clone())), mem, irq),
            log,
        )
    }

    fn w(t: &mut MmioTransport, off: u64, v: u32) {
        t.write(off, &v.to_le_bytes());
    }

    fn r(t: &mut MmioTransport, off: u64) -> u32 {
        let mut b = [0; 4];
        t.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    fn negotiate(t: &mut MmioTransport) {
        w(t, reg::STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
        w(
            t,
            reg::STATUS,
            VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER,
        );
        w(t, reg::DRIVER_FEATURES_SEL, 1);
        w(t, reg::DRIVER_FEATURES, 1);
        w(t, reg::STATUS, 0xb);
    }

    fn setup_queue(t: &mut MmioTransport) {
        w(t, reg::QUEUE_SEL, 0);
        w(t, reg::QUEUE_NUM, 16);
        w(t, reg::QUEUE_DESC_LOW, 0x10_0000);
        w(t, reg::QUEUE_AVAIL_LOW, 0x10_1000);
        w(t, reg::QUEUE_USED_LOW, 0x10_2000);
        w(t, reg::QUEUE_READY, 1);
    }

    #[test]
    fn an_ioeventfd_notify_that_arrives_after_a_reset_is_no_guest_error() {
        let (mut t, log) = transport();
        negotiate(&mut t);
        setup_queue(&mut t);
        w(&mut t, reg::STATUS, 0xf);
        t.notify_async(0);
        w(&mut t, reg::STATUS, 0);
        t.notify_async(0);
        assert_eq!(
            (log.lock().unwrap().notified.len(), t.protocol_errors()),
            (1, 0)
        );
        // Through the (ordered) MMIO exit it is one.
        w(&mut t, reg::QUEUE_NOTIFY, 0);
        assert_eq!(t.protocol_errors(), 1);
    }

    #[test]
    fn identity_registers() {
        let (mut t, _) = transport();
        assert_eq!(r(&mut t, reg::MAGIC), MMIO_MAGIC);
        assert_eq!(r(&mut t, reg::VERSION), 2);
        assert_eq!(r(&mut t, reg::DEVICE_ID), 42);
        w(&mut t, reg::DEVICE_FEATURES_SEL, 1);
        assert_eq!(r(&mut t, reg::DEVICE_FEATURES), 1);
        assert_eq!(r(&mut t, reg::QUEUE_NUM_MAX), 16);
    }

    #[test]
    fn full_handshake_activates_and_notifies() {
        let (mut t, log) = transport();
        negotiate(&mut t);
        setup_queue(&mut t);
        w(&mut t, reg::STATUS, 0xf);
        assert_eq!(t.status(), 0xf);
        assert_eq!(
            log.lock().unwrap().activated,
            Some((1, 1 << VIRTIO_F_VERSION_1))
        );
        w(&mut t, reg::QUEUE_NOTIFY, 0);
        w(&mut t, reg::QUEUE_NOTIFY, 7); // no such queue: logged, dropped
        assert_eq!(log.lock().unwrap().notified, vec![0]);
        assert_eq!(t.protocol_errors(), 1);
        w(&mut t, reg::STATUS, 0);
        assert_eq!((t.status(), log.lock().unwrap().resets), (0, 1));
    }

    #[test]
    fn hostile_register_use_is_refused_and_counted() {
        let (mut t, log) = transport();
        // Notify and queue setup before negotiation.
        w(&mut t, reg::QUEUE_NOTIFY, 0);
        w(&mut t, reg::QUEUE_NUM, 8);
        // DRIVER_OK straight away.
        w(&mut t, reg::STATUS, VIRTIO_CONFIG_S_DRIVER_OK);
        assert_eq!(t.status(), 0);
        negotiate(&mut t);
        // Bad queue sizes: not a power of two, too big, zero.
        for n in [3, 32, 0, 0x1_0000] {
            w(&mut t, reg::QUEUE_NUM, n);
        }
        // Undefined register, unaligned and narrow accesses.
        w(&mut t, 0x0f0, 1);
        t.write(reg::STATUS + 1, &[1]);
        assert_eq!(r(&mut t, 0x0f0), 0);
        assert_eq!(t.protocol_errors(), 10);
        assert!(log.lock().unwrap().activated.is_none());
    }

    #[test]
    fn queues_outside_guest_memory_mark_the_device_broken() {
        let (mut t, log) = transport();
        negotiate(&mut t);
        setup_queue(&mut t);
        w(&mut t, reg::QUEUE_USED_HIGH, 0xffff_ffff);
        w(&mut t, reg::STATUS, 0xf);
        assert_ne!(t.status() & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
        assert!(log.lock().unwrap().activated.is_none());
        assert_eq!(r(&mut t, reg::INTERRUPT_STATUS), VIRTIO_MMIO_INT_CONFIG);
        w(&mut t, reg::INTERRUPT_ACK, VIRTIO_MMIO_INT_CONFIG);
        assert_eq!(r(&mut t, reg::INTERRUPT_STATUS), 0);
    }

    #[test]
    fn a_device_that_needs_a_reset_says_so_until_reset() {
        let (mut t, log) = transport();
        negotiate(&mut t);
        setup_queue(&mut t);
        w(&mut t, reg::STATUS, 0xf);
        t.interrupt.signal_needs_reset();
        t.interrupt.signal_needs_reset(); // once is enough: one config interrupt
        assert_eq!(r(&mut t, reg::STATUS), 0xf | VIRTIO_CONFIG_S_NEEDS_RESET);
        assert_eq!(r(&mut t, reg::INTERRUPT_STATUS), VIRTIO_MMIO_INT_CONFIG);
        assert_eq!(t.interrupt.irqfd().unwrap().read().unwrap(), 1);
        // Notifies are dropped (not a protocol error: the driver may not know yet).
        w(&mut t, reg::QUEUE_NOTIFY, 0);
        assert!(log.lock().unwrap().notified.is_empty());
        assert_eq!(t.protocol_errors(), 0);
        w(&mut t, reg::STATUS, 0);
        assert_eq!(r(&mut t, reg::STATUS), 0);
        negotiate(&mut t);
        setup_queue(&mut t);
        w(&mut t, reg::STATUS, 0xf);
        w(&mut t, reg::QUEUE_NOTIFY, 0);
        assert_eq!(log.lock().unwrap().notified, vec![0]);
    }

    #[test]
    fn status_writes_keep_the_handshake_order_and_the_drivers_bits() {
        // Found by the fuzzer: DRIVER used to stick without ACKNOWLEDGE.
        let (mut t, _) = transport();
        w(&mut t, reg::STATUS, 0xfeea);
        assert_eq!(t.status(), 0);
        w(
            &mut t,
            reg::STATUS,
            VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_NEEDS_RESET,
        );
        assert_eq!(t.status(), VIRTIO_CONFIG_S_ACKNOWLEDGE);
    }

    #[test]
    fn legacy_drivers_do_not_get_features_ok() {
        let (mut t, _) = transport();
        w(&mut t, reg::STATUS, 1);
        w(&mut t, reg::STATUS, 3);
        w(&mut t, reg::STATUS, 0xb);
        assert_eq!(t.status() & VIRTIO_CONFIG_S_FEATURES_OK, 0);
    }
}
