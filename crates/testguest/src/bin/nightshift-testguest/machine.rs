//! Hostile console output (`serialflood`), and ending the machine the way an
//! operating system does: ACPI power-off (the
//! hardware-reduced sleep control register, sleep type S5) and the i8042
//! reset line. The VMM turns each into an exit status (docs/guest-abi.md).
//!
//! The register address and sleep type are nightshift's (its FADT and `\_S5_`
//! announce them); a guest that parsed the FADT would find the same values.

use crate::service;

/// nightshift's sleep control register (FADT `SLEEP_CONTROL_REG`).
const SLEEP_CONTROL_PORT: u16 = 0x3c0;
/// `\_S5_` sleep type in nightshift's DSDT.
const S5_SLEEP_TYPE: u8 = 5;
const SLP_EN: u8 = 1 << 5;
/// i8042 command port and its "pulse reset line" command.
const I8042_COMMAND_PORT: u16 = 0x64;
const I8042_PULSE_RESET: u8 = 0xfe;

/// Writes SLP_TYP=S5 | SLP_EN; if the VMM ignores it, halts for good.
pub fn power_off() -> ! {
    service::write_bytes(SLEEP_CONTROL_PORT, &[(S5_SLEEP_TYPE << 2) | SLP_EN]);
    service::stop()
}

/// Pulses the reset line; if the VMM ignores it, halts for good.
pub fn reset() -> ! {
    service::write_bytes(I8042_COMMAND_PORT, &[I8042_PULSE_RESET]);
    service::stop()
}

/// COM1's transmit register.
const COM1_THR: u16 = 0x3f8;
/// What `serialflood` writes: 64 lines of 4 KiB.
const FLOOD_LINES: usize = 64;

/// Writes [`FLOOD_LINES`] 4 KiB lines to COM1 without waiting for the
/// transmitter (a guest that ignores LSR), then exits with status 0.
pub fn serial_flood() -> ! {
    let mut line = [b'#'; 4096];
    line[4095] = b'\n';
    for _ in 0..FLOOD_LINES {
        service::write_bytes(COM1_THR, &line);
    }
    service::exit(0)
}
