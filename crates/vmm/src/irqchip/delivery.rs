//! Delivery: the userspace irqchip as a whole, and how an interrupt message
//! finds its CPUs.
//!
//! [`UserIrqChip`] holds one [`CpuIrq`] per vCPU (its [`LocalApic`] and the
//! NMI/INIT/STARTUP events waiting for its thread) and the [`IoApic`].
//! Messages come from IOAPIC pins ([`UserIrqChip::pulse`], any thread: a
//! device completion on a worker, a vCPU, the notifier) and from ICR writes
//! (the sending vCPU's thread). Each is resolved to its destinations
//! (shorthands, physical IDs, logical flat/cluster masks, lowest priority),
//! accepted into their APICs, and each destination's thread is told through
//! its [`VcpuWaker`]: a vCPU inside `KVM_RUN` is kicked out, a halted one is
//! woken, and one whose own thread made the interrupt is left alone (it looks
//! before its next entry).
//!
//! Locking: one mutex per CPU, one for the IOAPIC, never two at once. An
//! APIC register write that has effects elsewhere returns them
//! ([`Effect`]), and they are carried out after its lock is released.

use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Instant;

use super::ioapic::IoApic;
use super::lapic::{Effect, LocalApic};
use super::{DeliveryMode, Interrupt, Shorthand};
use crate::bus::BusDevice;

/// How the irqchip tells a vCPU thread that something is pending for it.
pub trait VcpuWaker: Send + Sync {
    /// Make the thread look at its [`CpuIrq`] soon: kick it out of
    /// `KVM_RUN`, wake it from a userspace halt, or nothing if it is the
    /// calling thread.
    fn wake(&self);
}

/// One CPU's interrupt state.
#[derive(Debug)]
pub struct CpuState {
    /// Its local APIC.
    pub lapic: LocalApic,
    /// An NMI waits to be injected.
    pub nmi: bool,
    /// An INIT arrived that the vCPU thread has not seen yet (the APIC is
    /// already reset and the CPU waits for STARTUP; the thread must leave the
    /// guest and reset its registers on the STARTUP).
    pub init: bool,
    /// The CPU waits for a STARTUP (APs from creation, any CPU after INIT).
    pub waiting_for_sipi: bool,
    /// A STARTUP arrived while waiting: the start page.
    pub sipi: Option<u8>,
}

/// One vCPU's side of the irqchip.
pub struct CpuIrq {
    state: Mutex<CpuState>,
    waker: OnceLock<Arc<dyn VcpuWaker>>,
}

impl CpuIrq {
    fn new(id: u8) -> Self {
        CpuIrq {
            state: Mutex::new(CpuState {
                lapic: LocalApic::new(id),
                nmi: false,
                init: false,
                // The BSP runs from the VMM's entry state; APs wait for SIPI.
                waiting_for_sipi: id != 0,
                sipi: None,
            }),
            waker: OnceLock::new(),
        }
    }

    /// The CPU's state, locked. Callers hold it briefly and take no other
    /// irqchip lock meanwhile.
    pub fn lock(&self) -> MutexGuard<'_, CpuState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Tells this CPU's thread about new events (set once, by the thread).
    pub fn set_waker(&self, waker: Arc<dyn VcpuWaker>) {
        if self.waker.set(waker).is_err() {
            tracing::warn!("irqchip: a vCPU's waker was set twice; keeping the first");
        }
    }

    fn wake(&self) {
        if let Some(w) = self.waker.get() {
            w.wake();
        }
    }
}

/// The VM's local APICs and IOAPIC.
pub struct UserIrqChip {
    cpus: Vec<Arc<CpuIrq>>,
    ioapic: Mutex<IoApic>,
    epoch: Instant,
    /// The host passes `MSR_KVM_PV_EOI_EN` to the vCPU threads, so the guest
    /// is offered PV EOI ([`super::pv_eoi`]).
    pv_eoi: bool,
}

impl UserIrqChip {
    /// An irqchip for `vcpus` CPUs with APIC IDs 0..vcpus (as the MADT says).
    pub fn new(vcpus: u8) -> Self {
        UserIrqChip {
            cpus: (0..vcpus).map(|id| Arc::new(CpuIrq::new(id))).collect(),
            ioapic: Mutex::new(IoApic::default()),
            epoch: Instant::now(),
            pv_eoi: false,
        }
    }

    /// The same chip, offering the guest PV EOI if `served` (the VM routed
    /// the MSR to its vCPU threads).
    pub fn with_pv_eoi(mut self, served: bool) -> Self {
        self.pv_eoi = served;
        self
    }

    /// Whether the guest is offered PV EOI.
    pub fn serves_pv_eoi(&self) -> bool {
        self.pv_eoi
    }

    /// vCPU `index`'s interrupt state.
    pub fn cpu(&self, index: u8) -> Option<&Arc<CpuIrq>> {
        self.cpus.get(usize::from(index))
    }

    /// Now on the clock the APIC timers count against, ns.
    pub fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// `ns` on that clock as an instant.
    pub fn instant(&self, ns: u64) -> Instant {
        self.epoch + std::time::Duration::from_nanos(ns)
    }

    fn ioapic(&self) -> MutexGuard<'_, IoApic> {
        self.ioapic.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A device raises IOAPIC pin `gsi` once (an edge; see [`super::IrqLine`]).
    pub fn pulse(&self, gsi: u32) {
        let messages: Vec<Interrupt> = {
            let mut io = self.ioapic();
            let pin = gsi as usize;
            let raised = io.set_pin(pin, true);
            io.set_pin(pin, false);
            raised.into_iter().collect()
        };
        for m in messages {
            self.deliver(m, None);
        }
    }

    /// The guest read `data` at `offset` of vCPU `cpu`'s APIC page.
    pub fn lapic_read(&self, cpu: u8, offset: u64, data: &mut [u8]) {
        let value = match (self.cpu(cpu), data.len(), offset % 16) {
            (Some(c), 4, 0) => c.lock().lapic.read(offset, self.now_ns()),
            _ => 0,
        };
        let bytes = value.to_le_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = bytes.get(i).copied().unwrap_or(0);
        }
    }

    /// The guest wrote `data` at `offset` of vCPU `cpu`'s APIC page. Only
    /// aligned 32-bit accesses reach registers (the xAPIC ignores others).
    pub fn lapic_write(&self, cpu: u8, offset: u64, data: &[u8]) {
        let (Some(c), Ok(bytes)) = (self.cpu(cpu), <[u8; 4]>::try_from(data)) else {
            tracing::debug!("lapic: ignoring a {}-byte write at {offset:#x}", data.len());
            return;
        };
        if offset % 16 != 0 {
            return;
        }
        let effect = c
            .lock()
            .lapic
            .write(offset, u32::from_le_bytes(bytes), self.now_ns());
        match effect {
            Effect::None => {}
            Effect::Ipi(ipi) => self.deliver(ipi, Some(cpu)),
            Effect::Eoi(vector) => self.ioapic_eoi(vector),
        }
    }

    /// vCPU `cpu`'s guest EOI'd `vector` through its PV EOI area
    /// ([`super::pv_eoi`]); an edge vector, so nothing else is told.
    pub fn eoi_from_guest_memory(&self, cpu: u8, vector: u8) {
        if let Some(c) = self.cpu(cpu) {
            c.lock().lapic.eoi_from_guest_memory(vector);
        }
    }

    /// A level-triggered vector was retired: the IOAPIC may deliver again.
    fn ioapic_eoi(&self, vector: u8) {
        let again = self.ioapic().eoi(vector);
        for m in again {
            self.deliver(m, None);
        }
    }

    /// Delivers `m` (sent by vCPU `source`, or by the IOAPIC if None).
    pub fn deliver(&self, m: Interrupt, source: Option<u8>) {
        let targets = self.destinations(&m, source);
        let targets: Vec<&Arc<CpuIrq>> = if m.mode == DeliveryMode::LowestPriority {
            self.lowest_priority(&targets).into_iter().collect()
        } else {
            targets
        };
        for cpu in targets {
            if self.accept(cpu, &m) {
                cpu.wake();
            }
        }
    }

    /// The CPUs `m` is addressed to.
    fn destinations(&self, m: &Interrupt, source: Option<u8>) -> Vec<&Arc<CpuIrq>> {
        let is_source = |i: usize| source.is_some_and(|s| usize::from(s) == i);
        self.cpus
            .iter()
            .enumerate()
            .filter(|(i, cpu)| match m.shorthand {
                Shorthand::SelfOnly => is_source(*i),
                Shorthand::All => true,
                Shorthand::AllButSelf => !is_source(*i),
                Shorthand::None => cpu.lock().lapic.matches(m.dest, m.dest_mode),
            })
            .map(|(_, cpu)| cpu)
            .collect()
    }

    /// Of `targets`, the one with the lowest processor priority (the first on a tie).
    fn lowest_priority<'a>(&self, targets: &[&'a Arc<CpuIrq>]) -> Option<&'a Arc<CpuIrq>> {
        targets.iter().min_by_key(|c| c.lock().lapic.ppr()).copied()
    }

    /// Records `m` in `cpu`'s state; returns whether its thread must look.
    fn accept(&self, cpu: &CpuIrq, m: &Interrupt) -> bool {
        let mut st = cpu.lock();
        match m.mode {
            DeliveryMode::Fixed | DeliveryMode::LowestPriority => {
                st.lapic.accept(m.vector, m.trigger)
            }
            DeliveryMode::Nmi => {
                st.nmi = true;
                true
            }
            DeliveryMode::Init => {
                // The CPU waits for STARTUP from now on, whether or not its
                // thread has seen the INIT yet: a STARTUP sent right after
                // (as every SMP boot does) must not be lost.
                st.lapic.reset();
                st.nmi = false;
                st.sipi = None;
                st.waiting_for_sipi = true;
                st.init = true;
                true
            }
            DeliveryMode::Startup => {
                // A STARTUP only starts a CPU that waits for one (the test
                // guest and Linux send a second one, which a started CPU ignores).
                if st.waiting_for_sipi && st.sipi.is_none() {
                    st.sipi = Some(m.vector);
                    true
                } else {
                    false
                }
            }
            DeliveryMode::Smi | DeliveryMode::ExtInt | DeliveryMode::Reserved => {
                drop(st);
                // Guest-chosen: logged at debug level only, so it cannot flood the log.
                tracing::debug!("irqchip: {:?} delivery is not emulated; dropped", m.mode);
                false
            }
        }
    }
}

/// The IOAPIC's register window on the MMIO bus.
pub struct IoApicMmio(pub Arc<UserIrqChip>);

impl BusDevice for IoApicMmio {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = if data.len() == 4 {
            self.0.ioapic().read(offset)
        } else {
            0
        };
        let bytes = value.to_le_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = bytes.get(i).copied().unwrap_or(0);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            tracing::debug!("ioapic: ignoring a {}-byte write", data.len());
            return;
        };
        let released = self.0.ioapic().write(offset, u32::from_le_bytes(bytes));
        for m in released {
            self.0.deliver(m, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    struct Count(AtomicU32);
    impl VcpuWaker for Count {
        fn wake(&self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn chip(n: u8) -> (UserIrqChip, Vec<Arc<Count>>) {
        let chip = UserIrqChip::new(n);
        let wakers: Vec<Arc<Count>> = (0..n).map(|_| Arc::new(Count(AtomicU32::new(0)))).collect();
        for (i, w) in wakers.iter().enumerate() {
            chip.cpu(i as u8).unwrap().set_waker(w.clone());
            // Enable each APIC (SVR) as a guest would.
            chip.lapic_write(i as u8, 0xf0, &0x1ffu32.to_le_bytes());
        }
        (chip, wakers)
    }

    fn write(chip: &UserIrqChip, cpu: u8, reg: u64, v: u32) {
        chip.lapic_write(cpu, reg, &v.to_le_bytes());
    }

    fn ipi(chip: &UserIrqChip, from: u8, dest: u8, low: u32) {
        write(chip, from, 0x310, u32::from(dest) << 24);
        write(chip, from, 0x300, low);
    }

    fn pending(chip: &UserIrqChip, cpu: u8) -> Option<u8> {
        chip.cpu(cpu).unwrap().lock().lapic.deliverable()
    }

    #[test]
    fn a_fixed_ipi_reaches_its_physical_destination_and_wakes_it() {
        let (chip, wakers) = chip(3);
        ipi(&chip, 0, 2, 0x4031);
        assert_eq!(pending(&chip, 2), Some(0x31));
        assert_eq!(pending(&chip, 1), None);
        assert_eq!(wakers[2].0.load(Ordering::SeqCst), 1);
        assert_eq!(wakers[1].0.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn shorthands_pick_self_all_and_all_but_self() {
        let (chip, _) = chip(3);
        ipi(&chip, 1, 0, 0x4_4040); // self
        assert_eq!((pending(&chip, 0), pending(&chip, 1)), (None, Some(0x40)));
        ipi(&chip, 1, 0, 0xc_4041); // all but self
        assert_eq!(pending(&chip, 0), Some(0x41));
        assert_eq!(pending(&chip, 2), Some(0x41));
        assert_eq!(pending(&chip, 1), Some(0x40));
        ipi(&chip, 1, 0, 0x8_4042); // all
        assert!((0..3).all(|c| pending(&chip, c) == Some(0x42)));
    }

    #[test]
    fn logical_flat_destinations_reach_every_cpu_in_the_mask() {
        let (chip, _) = chip(3);
        for cpu in 0..3u8 {
            write(&chip, cpu, 0xd0, 1 << (24 + cpu));
        }
        ipi(&chip, 0, 0b110, 0x4850); // logical, fixed, vector 0x50
        assert_eq!(pending(&chip, 0), None);
        assert_eq!(pending(&chip, 1), Some(0x50));
        assert_eq!(pending(&chip, 2), Some(0x50));
        let cpu1 = chip.cpu(1).unwrap().lock();
        assert!(cpu1.lapic.matches(0b010, crate::irqchip::DestMode::Logical));
    }

    #[test]
    fn lowest_priority_goes_to_the_least_busy_cpu() {
        let (chip, _) = chip(2);
        for cpu in 0..2u8 {
            write(&chip, cpu, 0xd0, 1 << (24 + cpu));
        }
        write(&chip, 0, 0x80, 0x70);
        ipi(&chip, 1, 0b11, 0x4960); // logical, lowest priority
        assert_eq!(pending(&chip, 1), Some(0x60));
        assert!(!chip.cpu(0).unwrap().lock().lapic.has_requests());
    }

    #[test]
    fn init_then_startup_starts_a_waiting_cpu_once() {
        let (chip, wakers) = chip(2);
        write(&chip, 1, 0x80, 0x20);
        ipi(&chip, 0, 1, 0x4500); // INIT
        {
            let st = chip.cpu(1).unwrap().lock();
            assert!(st.init && st.waiting_for_sipi);
            assert_eq!(st.lapic.tpr(), 0, "INIT resets the APIC");
        }
        // STARTUP right away, before the vCPU thread has seen the INIT.
        ipi(&chip, 0, 1, 0x4608);
        ipi(&chip, 0, 1, 0x4609);
        assert_eq!(chip.cpu(1).unwrap().lock().sipi, Some(8));
        assert_eq!(wakers[1].0.load(Ordering::SeqCst), 2);
        // A running CPU ignores STARTUP.
        ipi(&chip, 1, 0, 0x4608);
        assert_eq!(chip.cpu(0).unwrap().lock().sipi, None);
    }

    #[test]
    fn ioapic_level_pin_is_resent_only_after_the_cpus_eoi() {
        let (chip, _) = chip(2);
        let mut io = IoApicMmio(Arc::new(chip));
        let chip = io.0.clone();
        // Pin 5 → vector 0x35, level, CPU 1.
        io.write(0, &0x1bu32.to_le_bytes());
        io.write(0x10, &(1u32 << 24).to_le_bytes());
        io.write(0, &0x1au32.to_le_bytes());
        io.write(0x10, &(0x35u32 | 1 << 15).to_le_bytes());
        chip.pulse(5);
        let cpu1 = chip.cpu(1).unwrap();
        assert_eq!(cpu1.lock().lapic.acknowledge(), Some(0x35));
        // Remote IRR holds the next pulse back.
        chip.pulse(5);
        assert!(!cpu1.lock().lapic.has_requests());
        // The EOI clears remote IRR; the line is low, so nothing comes.
        write(&chip, 1, 0xb0, 0);
        assert!(!cpu1.lock().lapic.has_requests());
        chip.pulse(5);
        assert_eq!(cpu1.lock().lapic.deliverable(), Some(0x35));
        let tmr = cpu1.lock().lapic.read(0x180 + 0x10, 0);
        assert_eq!(tmr, 1 << (0x35 - 0x20), "TMR marks the level vector");
    }

    #[test]
    fn odd_sized_apic_accesses_are_ignored() {
        let (chip, _) = chip(1);
        chip.lapic_write(0, 0x300, &[1, 2]);
        chip.lapic_write(0, 0x302, &1u32.to_le_bytes());
        let mut b = [0xffu8; 2];
        chip.lapic_read(0, 0x20, &mut b);
        assert_eq!(b, [0, 0]);
        chip.lapic_write(7, 0x300, &1u32.to_le_bytes());
    }
}
