//! How a guest turns the machine off or resets it, and what that does to the VM.
//!
//! - ACPI power-off: the FADT (hardware-reduced) announces a sleep control
//!   register at [`SLEEP_CONTROL_PORT`]; the guest writes `SLP_TYP << 2 |
//!   SLP_EN` with the `\_S5_` sleep type from the DSDT ([`S5_SLEEP_TYPE`]).
//!   The VM ends with [`ExitReason::PowerOff`] (status 0). The same port is the
//!   sleep status register; it reads 0, and writing the wake-status bit (what
//!   Linux does before sleeping) is not a sleep request.
//! - ACPI reset: the FADT's reset register at [`RESET_PORT`], value
//!   [`RESET_VALUE`]. The VM ends with [`ExitReason::Reset`]: nightshift does
//!   not reboot guests, it reports that the guest asked for it.
//! - i8042 reset: command `0xFE` (pulse the reset line) on port 0x64, the PC's
//!   oldest reset path (Linux's `reboot=k`, and its fallback). Also
//!   [`ExitReason::Reset`]. The rest of the controller is absent: status and
//!   data read 0 (nothing to read, ready for input), and the DSDT lists no
//!   PS/2 device, so Linux's i8042 driver does not probe it.

use std::sync::Arc;

use crate::bus::BusDevice;
use crate::exit::{ExitReason, ExitSignal};

/// The hardware-reduced ACPI sleep control and status register (one byte).
pub const SLEEP_CONTROL_PORT: u64 = 0x3c0;
/// The ACPI reset register (one byte).
pub const RESET_PORT: u64 = 0x3c1;
/// Both registers' window.
pub const ACPI_PORTS_LEN: u64 = 2;
/// What the guest writes to [`RESET_PORT`] to reset.
pub const RESET_VALUE: u8 = 0x1;
/// `\_S5_`'s sleep type (the value is ours to choose; the guest echoes it).
pub const S5_SLEEP_TYPE: u8 = 5;

const SLP_EN: u8 = 1 << 5;
const SLP_TYP_SHIFT: u8 = 2;
const SLP_TYP_MASK: u8 = 0x7;

/// The i8042 data port and command/status port.
pub const I8042_BASE: u64 = 0x60;
/// Ports 0x60..=0x64.
pub const I8042_LEN: u64 = 5;
const I8042_COMMAND_OFFSET: u64 = 4;
const I8042_PULSE_RESET: u8 = 0xfe;

/// The ACPI sleep control/status and reset registers.
pub struct AcpiPower {
    exit: Arc<ExitSignal>,
}

impl AcpiPower {
    /// Registers that end the VM through `exit`.
    pub fn new(exit: Arc<ExitSignal>) -> Self {
        AcpiPower { exit }
    }
}

impl BusDevice for AcpiPower {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Sleep status: no wake event pending. The reset register reads 0.
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let [value] = data else {
            tracing::debug!("acpi power: ignoring {}-byte write", data.len());
            return;
        };
        match offset + SLEEP_CONTROL_PORT {
            SLEEP_CONTROL_PORT if value & SLP_EN != 0 => {
                let sleep_type = (value >> SLP_TYP_SHIFT) & SLP_TYP_MASK;
                if sleep_type == S5_SLEEP_TYPE {
                    self.exit.report(ExitReason::PowerOff);
                } else {
                    tracing::debug!("acpi power: sleep type {sleep_type} is not supported");
                }
            }
            RESET_PORT if *value == RESET_VALUE => {
                self.exit.report(ExitReason::Reset("ACPI reset register"));
            }
            _ => {}
        }
    }
}

/// Just enough of an i8042 for its reset line.
pub struct I8042 {
    exit: Arc<ExitSignal>,
}

impl I8042 {
    /// A controller whose reset command ends the VM through `exit`.
    pub fn new(exit: Arc<ExitSignal>) -> Self {
        I8042 { exit }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == I8042_COMMAND_OFFSET && data == [I8042_PULSE_RESET] {
            self.exit.report(ExitReason::Reset("i8042 reset command"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s5_sleep_powers_off_and_wake_status_writes_do_not() {
        let exit = Arc::new(ExitSignal::new().unwrap());
        let mut dev = AcpiPower::new(exit.clone());
        dev.write(0, &[0x80]); // clear wake status
        dev.write(0, &[(3 << SLP_TYP_SHIFT) | SLP_EN]); // S3: not supported
        dev.write(0, &[S5_SLEEP_TYPE << SLP_TYP_SHIFT]); // no SLP_EN
        dev.write(1, &[0x2]); // not the reset value
        dev.write(0, &[1, 2]);
        assert!(!exit.is_reported());
        let mut status = [0xffu8];
        dev.read(0, &mut status);
        assert_eq!(status, [0]);
        dev.write(0, &[(S5_SLEEP_TYPE << SLP_TYP_SHIFT) | SLP_EN]);
        assert_eq!(exit.wait(), ExitReason::PowerOff);
        assert_eq!(exit.wait().exit_code(), 0);
    }

    #[test]
    fn reset_register_and_i8042_reset() {
        let exit = Arc::new(ExitSignal::new().unwrap());
        AcpiPower::new(exit.clone()).write(1, &[RESET_VALUE]);
        assert_eq!(exit.wait(), ExitReason::Reset("ACPI reset register"));

        let exit = Arc::new(ExitSignal::new().unwrap());
        let mut kbd = I8042::new(exit.clone());
        kbd.write(0, &[I8042_PULSE_RESET]); // data port, not a command
        kbd.write(4, &[0xaa]); // self test: ignored
        assert!(!exit.is_reported());
        kbd.write(4, &[I8042_PULSE_RESET]);
        let reason = exit.wait();
        assert_eq!(reason, ExitReason::Reset("i8042 reset command"));
        assert_eq!(reason.exit_code(), crate::exit::RESET_EXIT_CODE);
    }
}
