//! The 8250/16550 UART on COM1, from vm-superio, with the console it writes to.

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;

use vm_superio::serial::NoEvents;
use vm_superio::Trigger;
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;

/// COM1's I/O port base.
pub const COM1_BASE: u64 = 0x3f8;
/// COM1's register window.
pub const COM1_LEN: u64 = 8;
/// COM1's interrupt line (ISA IRQ 4 → IOAPIC GSI 4).
pub const COM1_GSI: u32 = 4;

/// Raises the UART's interrupt through an irqfd.
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// Where the guest's console output goes: stdout, and a file if asked.
pub struct Console {
    stdout: io::Stdout,
    file: Option<File>,
}

impl Console {
    /// A console on stdout, copied to `file` if given (appended to: this
    /// never truncates; the VM opens its serial file with
    /// [`crate::output_file::open_output`] and [`Console::with_file`]).
    pub fn new(file: Option<&Path>) -> io::Result<Self> {
        let open = |p| File::options().create(true).append(true).open(p);
        Ok(Console::with_file(file.map(open).transpose()?))
    }

    /// A console on stdout, copied to `file`, already open for writing.
    pub fn with_file(file: Option<File>) -> Self {
        Console {
            stdout: io::stdout(),
            file,
        }
    }
}

impl Write for Console {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.stdout.write_all(buf)?;
        if let Some(f) = self.file.as_mut() {
            f.write_all(buf)?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.stdout.flush()?;
        if let Some(f) = self.file.as_mut() {
            f.flush()?;
        }
        Ok(())
    }
}

/// COM1 as a bus device.
pub struct Serial<W: Write + Send> {
    uart: vm_superio::Serial<IrqTrigger, NoEvents, W>,
}

impl<W: Write + Send> Serial<W> {
    /// A UART that writes to `out` and interrupts through `irq`.
    pub fn new(irq: EventFd, out: W) -> Self {
        Serial {
            uart: vm_superio::Serial::new(IrqTrigger(irq), out),
        }
    }

    /// The output sink.
    pub fn output(&self) -> &W {
        self.uart.writer()
    }
}

impl<W: Write + Send> BusDevice for Serial<W> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (u8::try_from(offset), data) {
            (Ok(offset), [byte]) => *byte = self.uart.read(offset),
            (_, data) => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let (Ok(offset), [byte]) = (u8::try_from(offset), data) else {
            tracing::debug!(
                "serial: ignoring {}-byte write at offset {offset}",
                data.len()
            );
            return;
        };
        if let Err(e) = self.uart.write(offset, *byte) {
            tracing::warn!("serial: {e:?}");
        }
        // The guest console is line oriented; flush at line ends so output is
        // visible (and ordered with the VMM's own messages) as it happens.
        if offset == 0 && *byte == b'\n' {
            if let Err(e) = self.uart.writer_mut().flush() {
                tracing::warn!("serial: flushing console: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_written_to_thr_reach_the_output() {
        let mut s = Serial::new(EventFd::new(0).unwrap(), Vec::new());
        for b in b"hi\n" {
            s.write(0, &[*b]);
        }
        assert_eq!(s.output(), b"hi\n");
        // Wide accesses are not UART accesses: ignored, reads give all ones.
        s.write(0, b"xy");
        let mut wide = [0u8; 2];
        s.read(5, &mut wide);
        assert_eq!(wide, [0xff, 0xff]);
        assert_eq!(s.output(), b"hi\n");
        // Line status says the transmitter is empty.
        let mut lsr = [0u8];
        s.read(5, &mut lsr);
        assert_ne!(lsr[0] & 0x20, 0);
    }
}
