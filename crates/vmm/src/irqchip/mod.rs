//! Interrupt controllers: KVM's in-kernel ones, or nightshift's own in userspace.
//!
//! With `--irqchip kernel` (the default) KVM emulates the local APICs, the
//! IOAPIC and the 8259s; devices raise lines through irqfds and a guest HLT
//! sleeps inside `KVM_RUN`, where the VMM can only see it through KVM's
//! `blocking` statistic (see [`crate::idle`]).
//!
//! With `--irqchip user` nightshift owns them (as OpenVMM, and QEMU with
//! `kernel_irqchip=off`, do): [`lapic`] per vCPU, [`ioapic`], a masked
//! [`pic`] pair, and [`delivery`] between them, with KVM's paravirtual EOI
//! ([`pv_eoi`]) so that a guest's EOI needs no exit. A guest HLT then exits to
//! userspace at once (`KVM_EXIT_HLT`), so the halted vCPU's thread itself
//! becomes an idle executor (see [`crate::vcpu::halt`]), and every interrupt
//! is injected by the vCPU thread with `KVM_INTERRUPT`.
//!
//! [`IrqLine`] is what a device holds to raise its interrupt, whichever
//! irqchip the VM has.

pub mod delivery;
pub mod ioapic;
pub mod lapic;
pub mod pic;
pub mod pv_eoi;

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use vmm_sys_util::eventfd::EventFd;

pub use delivery::{CpuIrq, UserIrqChip, VcpuWaker};

/// Who emulates the interrupt controllers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IrqChipKind {
    /// KVM's in-kernel LAPICs, IOAPIC and PICs (`KVM_CREATE_IRQCHIP`).
    #[default]
    Kernel,
    /// nightshift's own, in the VMM; guest HLTs exit to userspace.
    User,
}

impl IrqChipKind {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            IrqChipKind::Kernel => "kernel",
            IrqChipKind::User => "user",
        }
    }
}

impl fmt::Display for IrqChipKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for IrqChipKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "kernel" => Ok(IrqChipKind::Kernel),
            "user" => Ok(IrqChipKind::User),
            _ => Err(format!("unknown irqchip {s:?} (expected kernel or user)")),
        }
    }
}

/// How an interrupt message is delivered (ICR and redirection entry bits 8..11).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryMode {
    /// The vector, to every destination.
    Fixed,
    /// The vector, to the destination with the lowest processor priority.
    LowestPriority,
    /// System management interrupt (not emulated: dropped and logged).
    Smi,
    /// Non-maskable interrupt.
    Nmi,
    /// INIT: the destination waits for a STARTUP.
    Init,
    /// STARTUP: a waiting destination starts in real mode at `vector << 12`.
    Startup,
    /// External (8259) interrupt (not driven here: the 8259s stay masked).
    ExtInt,
    /// A reserved encoding (dropped).
    Reserved,
}

impl DeliveryMode {
    /// Decodes the three mode bits (the low three bits of `bits`).
    pub fn from_bits(bits: u32) -> Self {
        match bits & 7 {
            0 => DeliveryMode::Fixed,
            1 => DeliveryMode::LowestPriority,
            2 => DeliveryMode::Smi,
            4 => DeliveryMode::Nmi,
            5 => DeliveryMode::Init,
            6 => DeliveryMode::Startup,
            7 => DeliveryMode::ExtInt,
            _ => DeliveryMode::Reserved,
        }
    }
}

/// How the destination field is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DestMode {
    /// An APIC ID (0xFF: all).
    Physical,
    /// A logical mask, matched against each APIC's LDR (flat or cluster).
    Logical,
}

/// Edge or level triggered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// Delivered once per rising edge.
    Edge,
    /// Held until the CPU's EOI reaches the IOAPIC.
    Level,
}

/// ICR destination shorthand (bits 18..20).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shorthand {
    /// Use the destination field.
    None,
    /// The sending CPU.
    SelfOnly,
    /// Every CPU.
    All,
    /// Every CPU but the sender.
    AllButSelf,
}

impl Shorthand {
    /// Decodes the two shorthand bits.
    pub fn from_bits(bits: u32) -> Self {
        match bits & 3 {
            0 => Shorthand::None,
            1 => Shorthand::SelfOnly,
            2 => Shorthand::All,
            _ => Shorthand::AllButSelf,
        }
    }
}

/// One interrupt message, from an ICR write or an IOAPIC redirection entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Interrupt {
    /// The vector (for STARTUP: the start page).
    pub vector: u8,
    /// How it is delivered.
    pub mode: DeliveryMode,
    /// How `dest` is read.
    pub dest_mode: DestMode,
    /// APIC ID or logical mask.
    pub dest: u8,
    /// Edge or level (level vectors get their TMR bit and an EOI to the IOAPIC).
    pub trigger: Trigger,
    /// ICR shorthand (`None` for IOAPIC messages).
    pub shorthand: Shorthand,
}

/// A device's interrupt line, transport-neutral.
pub enum IrqLine {
    /// An irqfd KVM has bound to a GSI of its in-kernel IOAPIC.
    Irqfd(EventFd),
    /// A pin of nightshift's own IOAPIC.
    Pin {
        /// The VM's interrupt controllers.
        chip: Arc<UserIrqChip>,
        /// The IOAPIC pin (GSI).
        gsi: u32,
    },
}

impl IrqLine {
    /// The line for `gsi`: a pin of `chip` when the VM has its own
    /// irqchip, else an irqfd bound to KVM's IOAPIC.
    pub fn for_gsi(
        vm_fd: &kvm_ioctls::VmFd,
        chip: Option<&Arc<UserIrqChip>>,
        gsi: u32,
    ) -> std::io::Result<IrqLine> {
        if let Some(chip) = chip {
            return Ok(IrqLine::Pin {
                chip: chip.clone(),
                gsi,
            });
        }
        let irqfd = EventFd::new(libc::EFD_NONBLOCK)?;
        vm_fd
            .register_irqfd(&irqfd, gsi)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))?;
        Ok(IrqLine::Irqfd(irqfd))
    }

    /// Raises the interrupt once (an edge, as an irqfd write does: a level
    /// redirection entry holds it in remote IRR until the guest's EOI).
    pub fn trigger(&self) -> std::io::Result<()> {
        match self {
            IrqLine::Irqfd(fd) => fd.write(1),
            IrqLine::Pin { chip, gsi } => {
                chip.pulse(*gsi);
                Ok(())
            }
        }
    }
}

impl fmt::Debug for IrqLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IrqLine::Irqfd(_) => f.write_str("IrqLine::Irqfd"),
            IrqLine::Pin { gsi, .. } => write!(f, "IrqLine::Pin({gsi})"),
        }
    }
}
