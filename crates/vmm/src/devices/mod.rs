//! Legacy devices on the port I/O bus, and the console they talk to.

pub mod console;
pub mod console_input;
pub mod debug_port;
pub mod power;
pub mod serial;
pub mod terminal;

pub use console::{Console, ConsoleStats};
pub use console_input::ConsoleInput;
pub use debug_port::{BootMilestones, DebugPort, DEBUG_PORT_BASE, DEBUG_PORT_LEN};
pub use power::{AcpiPower, I8042};
pub use serial::{Serial, COM1_BASE, COM1_GSI, COM1_LEN};
