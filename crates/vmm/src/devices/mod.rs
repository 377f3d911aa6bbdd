//! Legacy devices on the port I/O bus.

pub mod debug_port;
pub mod serial;

pub use debug_port::{BootMilestones, DebugPort, DEBUG_PORT_BASE, DEBUG_PORT_LEN};
pub use serial::{Console, Serial, COM1_BASE, COM1_GSI, COM1_LEN};
