//! nightshift's virtual machine: a KVM VM with guest memory, vCPUs and their
//! run loop, port and MMIO buses, legacy devices, and PVH boot.
//!
//! Start at [`vm::Vm`]: [`Vm::new`](vm::Vm::new) builds a VM from a
//! [`config::VmConfig`], [`Vm::run`](vm::Vm::run) runs it to the end.
//! The vCPU run loop is in [`vcpu`]; guest memory's address map in [`memory`].

#![deny(missing_docs)]

pub mod boot;
pub mod bus;
pub mod config;
pub mod cpuid;
pub mod device_manager;
pub mod devices;
pub mod exit;
pub mod guest_log;
pub mod idle;
pub mod image;
pub mod irqchip;
pub mod memory;
pub mod output_file;
pub mod page_walk;
pub mod rss;
pub mod seccomp;
pub mod vcpu;
pub mod virtio;
pub mod vm;
pub mod vmm_thread;

pub use config::VmConfig;
pub use exit::ExitReason;
pub use vm::{RunReport, RunningVm, Vm, VmError};
