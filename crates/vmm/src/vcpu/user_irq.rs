//! A vCPU's side of the userspace irqchip: what its thread does before each
//! `KVM_RUN` to deliver what its local APIC holds, its APIC page, its timer.
//!
//! Before each entry the thread advances its APIC timer, injects the highest
//! deliverable vector with `KVM_INTERRUPT` if `kvm_run` says the guest can
//! take one now (else it sets `request_interrupt_window` and KVM exits as
//! soon as it can), injects a pending NMI with `KVM_NMI`, and keeps the
//! guest's CR8 and the APIC's TPR the same (`kvm_run.cr8` both ways). The
//! timer's deadline is armed on a per-thread host timer that kicks this
//! thread only (the same kind as the self-kick, [`super::idle_timer`]), so a
//! guest running at its deadline is taken out to get its tick.
//!
//! It also serves KVM's PV EOI ([`crate::irqchip::pv_eoi`]): when what is in
//! service allows it, the entry offers the guest an EOI without an exit, and
//! [`UserIrq::after_exit`], first thing after every `KVM_RUN`, retires the
//! vector the guest EOI'd that way before anything looks at the APIC.

use std::sync::Arc;
use std::time::Duration;

use kvm_bindings::kvm_interrupt;
use kvm_ioctls::VcpuFd;
use vmm_sys_util::ioctl::ioctl_with_ref;

use super::idle_timer::IdleTimer;
use super::{regs, VcpuStats};
use crate::irqchip::delivery::CpuState;
use crate::irqchip::pv_eoi::{PvEoi, PvEoiError, Taken, MSR_KVM_PV_EOI_EN};
use crate::irqchip::{CpuIrq, UserIrqChip, VcpuWaker};
use crate::memory::GuestMemory;

/// KVM_INTERRUPT, which kvm-ioctls does not wrap.
mod ioctls {
    use kvm_bindings::{kvm_interrupt, KVMIO};
    vmm_sys_util::ioctl_iow_nr!(KVM_INTERRUPT, KVMIO, 0x86, kvm_interrupt);
}
use ioctls::KVM_INTERRUPT;

/// What the thread does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entry {
    /// Enter the guest.
    Run,
    /// The CPU waits for a STARTUP IPI (not started yet, or INIT).
    WaitForSipi,
}

/// What a halted vCPU's look at its APIC found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HaltStatus {
    /// Something ends the halt: an interrupt it can take, an NMI, an INIT.
    pub wake: bool,
    /// When its timer will interrupt next (VM clock, ns).
    pub deadline: Option<u64>,
}

/// One vCPU's APIC, timer and injection state.
pub struct UserIrq {
    chip: Arc<UserIrqChip>,
    cpu: Arc<CpuIrq>,
    index: u8,
    /// Kicks this thread at the APIC timer's deadline (made on the thread).
    timer: Option<IdleTimer>,
    /// The deadline `timer` is armed for.
    armed: Option<u64>,
    /// The CR8 value last written to `kvm_run` (to see guest CR8 writes).
    cr8_written: u64,
    /// The guest's PV EOI area and whether an offer is out.
    pv_eoi: PvEoi,
    /// Guest memory, where the PV EOI area is.
    mem: Arc<GuestMemory>,
}

/// A guest MSR access that exited to the vCPU thread failed: the guest gets
/// a #GP, as from KVM.
#[derive(Debug, thiserror::Error)]
pub enum MsrError {
    /// Not an MSR this thread serves (the VM routes only PV EOI's here).
    #[error("MSR {0:#x} is not served in userspace")]
    Unknown(u32),
    /// A refused PV EOI area.
    #[error(transparent)]
    PvEoi(#[from] PvEoiError),
}

impl UserIrq {
    /// vCPU `index`'s part of `chip` (None if the chip has no such CPU).
    pub fn new(chip: Arc<UserIrqChip>, index: u8, mem: Arc<GuestMemory>) -> Option<Self> {
        let cpu = chip.cpu(index)?.clone();
        Some(UserIrq {
            chip,
            cpu,
            index,
            timer: None,
            armed: None,
            cr8_written: 0,
            pv_eoi: PvEoi::default(),
            mem,
        })
    }

    /// First thing after every `KVM_RUN`: if the guest EOI'd through its PV
    /// EOI area meanwhile, retire that vector now (an HLT, an APIC read or
    /// the next injection must see it gone).
    pub fn after_exit(&mut self, stats: &mut VcpuStats) {
        if let Taken::Eoi(vector) = self.pv_eoi.after_exit(&*self.mem) {
            self.chip.eoi_from_guest_memory(self.index, vector);
            stats.pv_eois += 1;
        }
    }

    /// The guest writes an MSR the VM routed to this thread.
    pub fn write_msr(&mut self, index: u32, value: u64) -> Result<(), MsrError> {
        match index {
            MSR_KVM_PV_EOI_EN if self.chip.serves_pv_eoi() => {
                Ok(self.pv_eoi.write_msr(&*self.mem, value)?)
            }
            _ => Err(MsrError::Unknown(index)),
        }
    }

    /// The guest reads an MSR the VM routed to this thread.
    pub fn read_msr(&self, index: u32) -> Result<u64, MsrError> {
        match index {
            MSR_KVM_PV_EOI_EN if self.chip.serves_pv_eoi() => Ok(self.pv_eoi.msr()),
            _ => Err(MsrError::Unknown(index)),
        }
    }

    /// On the vCPU thread, before the first entry: the host timer (it
    /// signals the thread that creates it) and the waker the irqchip uses.
    pub fn start_on_thread(&mut self, waker: Arc<dyn VcpuWaker>) {
        self.cpu.set_waker(waker);
        match IdleTimer::for_current_thread() {
            Ok(t) => self.timer = Some(t),
            Err(e) => tracing::warn!(
                "vcpu{}: no host timer for the APIC timer ({e}); ticks wait for other exits",
                self.index
            ),
        }
    }

    /// Now on the APIC clock, ns.
    pub fn now_ns(&self) -> u64 {
        self.chip.now_ns()
    }

    /// `ns` on the APIC clock as an instant.
    pub fn instant(&self, ns: u64) -> std::time::Instant {
        self.chip.instant(ns)
    }

    /// A guest read of this vCPU's APIC page.
    pub fn lapic_read(&self, offset: u64, data: &mut [u8]) {
        self.chip.lapic_read(self.index, offset, data);
    }

    /// A guest write to this vCPU's APIC page.
    pub fn lapic_write(&self, offset: u64, data: &[u8]) {
        self.chip.lapic_write(self.index, offset, data);
    }

    /// Everything due before entering the guest; see the module docs.
    pub fn before_entry(&mut self, fd: &mut VcpuFd, stats: &mut VcpuStats) -> Entry {
        let now = self.chip.now_ns();
        let run = fd.get_kvm_run();
        let (cr8, ready) = (run.cr8, run.ready_for_interrupt_injection != 0);
        let mut st = self.cpu.lock();
        if cr8 != self.cr8_written {
            // The guest wrote CR8 (its TPR) since the last entry.
            st.lapic.set_tpr(((cr8 & 0xf) << 4) as u8);
        }
        if take_init(&mut st) {
            self.pv_eoi.reset();
            return Entry::WaitForSipi;
        }
        if st.waiting_for_sipi {
            return Entry::WaitForSipi;
        }
        note_timer(&mut st, now, stats);
        let nmi = std::mem::take(&mut st.nmi);
        let vector = if ready { st.lapic.acknowledge() } else { None };
        let more = st.lapic.deliverable().is_some();
        let cr8 = u64::from(st.lapic.tpr() >> 4);
        let deadline = st.lapic.timer_deadline();
        // Read under the same lock as the injection: an interrupt accepted
        // after this kicks the guest out, and the exit withdraws the offer.
        let pv_eoi = st.lapic.pv_eoi_vector();
        drop(st);

        run.cr8 = cr8;
        self.cr8_written = cr8;
        // Exit as soon as the guest can take the next one.
        run.request_interrupt_window = u8::from(more);
        if nmi {
            match fd.nmi() {
                Ok(()) => stats.nmis += 1,
                Err(e) => tracing::warn!("vcpu{}: KVM_NMI: {e}", self.index),
            }
        }
        let mut injected = true;
        if let Some(v) = vector {
            match inject(fd, v) {
                Ok(()) => stats.injected += 1,
                Err(e) => {
                    tracing::warn!("vcpu{}: KVM_INTERRUPT {v:#x}: {e}", self.index);
                    self.cpu.lock().lapic.unacknowledge(v);
                    fd.get_kvm_run().request_interrupt_window = 1;
                    injected = false;
                }
            }
        }
        if let Some(v) = pv_eoi.filter(|_| injected) {
            self.pv_eoi.offer(&*self.mem, v);
        }
        self.arm_timer(deadline, now);
        Entry::Run
    }

    /// The LAPIC timer's next deadline (APIC clock ns), if it is armed.
    pub fn timer_deadline(&self) -> Option<u64> {
        self.cpu.lock().lapic.timer_deadline()
    }

    /// While halted: whether the halt ends, and the next timer deadline.
    /// `interruptible` is the guest's IF at its HLT: with IF clear only an
    /// NMI or INIT ends the halt, as on hardware.
    pub fn halt_status(&mut self, interruptible: bool, stats: &mut VcpuStats) -> HaltStatus {
        let now = self.chip.now_ns();
        let mut st = self.cpu.lock();
        note_timer(&mut st, now, stats);
        let wake = (interruptible && st.lapic.deliverable().is_some()) || st.nmi || st.init;
        HaltStatus {
            wake,
            deadline: st.lapic.timer_deadline(),
        }
    }

    /// If a STARTUP has arrived, sets the registers it asks for and returns
    /// true: the CPU starts in real mode at `vector << 12`.
    pub fn take_sipi(&mut self, fd: &VcpuFd) -> bool {
        let vector = {
            let mut st = self.cpu.lock();
            if take_init(&mut st) {
                self.pv_eoi.reset();
            }
            let Some(v) = st.sipi.take() else {
                return false;
            };
            st.waiting_for_sipi = false;
            v
        };
        let started = fd
            .get_sregs()
            .and_then(|mut sregs| {
                regs::setup_sipi_sregs(&mut sregs, vector);
                fd.set_sregs(&sregs)
            })
            .and_then(|()| fd.set_regs(&regs::sipi_regs()));
        if let Err(e) = started {
            tracing::warn!(
                "vcpu{}: starting at SIPI vector {vector:#x}: {e}",
                self.index
            );
        }
        self.cr8_written = 0;
        true
    }

    fn arm_timer(&mut self, deadline: Option<u64>, now: u64) {
        let Some(timer) = &self.timer else { return };
        match deadline {
            Some(d) if self.armed != Some(d) => {
                timer.arm(Duration::from_nanos(d.saturating_sub(now)));
                self.armed = Some(d);
            }
            None if self.armed.is_some() => {
                timer.disarm();
                self.armed = None;
            }
            _ => {}
        }
    }
}

/// Whether an INIT arrived since the thread last looked (the irqchip has
/// already reset the APIC and made the CPU wait for STARTUP).
fn take_init(st: &mut CpuState) -> bool {
    std::mem::take(&mut st.init)
}

/// Advances the APIC timer and counts an interrupt it raised.
fn note_timer(st: &mut CpuState, now: u64, stats: &mut VcpuStats) {
    if let Some(deadline) = st.lapic.advance_timer(now) {
        stats.timer_irqs += 1;
        stats.timer_late_max_ns = stats.timer_late_max_ns.max(now - deadline);
    }
}

/// `KVM_INTERRUPT`: queue `vector` for injection at the next entry.
fn inject(fd: &VcpuFd, vector: u8) -> std::io::Result<()> {
    let irq = kvm_interrupt {
        irq: u32::from(vector),
    };
    // SAFETY: KVM_INTERRUPT reads one `kvm_interrupt` from the pointer, which
    // is valid for the call; `fd` is a vCPU fd of a VM without an in-kernel
    // irqchip (the only kind that accepts this ioctl).
    let ret = unsafe { ioctl_with_ref(fd, KVM_INTERRUPT(), &irq) };
    if ret == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
