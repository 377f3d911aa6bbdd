//! Portable parts of the nightshift test guest.
//!
//! Everything here is plain `core` code with no privileged instructions, so it runs in the
//! guest (at CPL3) and in host unit tests alike: command-line parsing, the PVH start-info
//! and ACPI table readers (over a [`PhysMem`](physmem::PhysMem) accessor), and latency
//! statistics.
//!
//! The machine-specific parts (boot assembly, descriptor tables, interrupt stubs, devices)
//! are in the `nightshift-testguest` binary.

#![no_std]

#[cfg(test)]
extern crate std;

pub mod acpi;
pub mod blk;
pub mod cmdline;
pub mod drivers_config;
pub mod linebuf;
pub mod net;
pub mod net_hostile;
pub mod physmem;
pub mod start_info;
pub mod stats;

/// Most CPUs the guest brings up (BSP included). Per-CPU stacks are sized from this.
pub const MAX_CPUS: usize = 16;
