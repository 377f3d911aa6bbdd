//! The 8250/16550 UART on COM1, from vm-superio. Output goes to a writer
//! (the bounded [`super::console::Console`]); input comes from whoever calls
//! [`Serial::enqueue_input`] (the stdin reader, [`super::console_input`]),
//! which waits on [`InputSpace`] when the guest has not read the FIFO yet.

use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use vm_superio::serial::SerialEvents;
use vm_superio::Trigger;

use crate::bus::BusDevice;
use crate::irqchip::IrqLine;

/// COM1's I/O port base.
pub const COM1_BASE: u64 = 0x3f8;
/// COM1's register window.
pub const COM1_LEN: u64 = 8;
/// COM1's interrupt line (ISA IRQ 4 → IOAPIC GSI 4).
pub const COM1_GSI: u32 = 4;

/// Raises the UART's interrupt on its line (an irqfd or a userspace IOAPIC pin).
pub struct IrqTrigger(pub IrqLine);

impl Trigger for IrqTrigger {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.trigger()
    }
}

/// Wakes whoever feeds the UART input when the guest has drained its FIFO.
#[derive(Default)]
pub struct InputSpace {
    drained: Mutex<u64>,
    changed: Condvar,
}

impl InputSpace {
    /// Waits until the guest drains the FIFO after `seen` drains, or `timeout`
    /// passes; returns the current drain count.
    pub fn wait(&self, seen: u64, timeout: Duration) -> u64 {
        let guard = self.drained.lock().unwrap_or_else(|p| p.into_inner());
        let (guard, _) = self
            .changed
            .wait_timeout_while(guard, timeout, |n| *n == seen)
            .unwrap_or_else(|p| p.into_inner());
        *guard
    }

    /// Drains so far.
    pub fn drains(&self) -> u64 {
        *self.drained.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The UART's events: only "input FIFO empty" matters to us.
pub struct InputEvents(Arc<InputSpace>);

impl SerialEvents for InputEvents {
    fn buffer_read(&self) {}
    fn out_byte(&self) {}
    fn tx_lost_byte(&self) {}
    fn in_buffer_empty(&self) {
        *self.0.drained.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        self.0.changed.notify_all();
    }
}

/// COM1 as a bus device.
pub struct Serial<W: Write + Send> {
    uart: vm_superio::Serial<IrqTrigger, InputEvents, W>,
    space: Arc<InputSpace>,
}

impl<W: Write + Send> Serial<W> {
    /// A UART that writes to `out` and interrupts through `irq`.
    pub fn new(irq: IrqLine, out: W) -> Self {
        let space = Arc::new(InputSpace::default());
        Serial {
            uart: vm_superio::Serial::with_events(IrqTrigger(irq), InputEvents(space.clone()), out),
            space,
        }
    }

    /// Puts as much of `bytes` in the receive FIFO as fits and interrupts
    /// the guest; returns how many it took (0 when the FIFO is full).
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        match self.uart.enqueue_raw_bytes(bytes) {
            Ok(n) => n,
            Err(vm_superio::serial::Error::FullFifo) => 0,
            Err(e) => {
                tracing::debug!("serial: raising the input interrupt: {e:?}");
                0
            }
        }
    }

    /// Signalled when the guest has read the whole FIFO.
    pub fn input_space(&self) -> Arc<InputSpace> {
        self.space.clone()
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
        let irq = IrqLine::Irqfd(vmm_sys_util::eventfd::EventFd::new(0).unwrap());
        let mut s = Serial::new(irq, Vec::new());
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

    #[test]
    fn input_fills_the_fifo_and_draining_it_is_signalled() {
        let irq = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut s = Serial::new(IrqLine::Irqfd(irq.try_clone().unwrap()), Vec::new());
        s.write(1, &[0x01]); // IER: received-data interrupt on
        let space = s.input_space();
        let flood = [b'a'; 100];
        let took = s.enqueue_input(&flood);
        assert_eq!(took, 64, "the 16550 FIFO holds 64 bytes");
        assert_eq!(s.enqueue_input(&flood), 0);
        assert_eq!(irq.read().unwrap(), 1);
        let mut byte = [0u8];
        for _ in 0..took {
            s.read(0, &mut byte);
            assert_eq!(byte, [b'a']);
        }
        assert_eq!(space.drains(), 1);
        assert_eq!(space.wait(0, Duration::from_secs(5)), 1);
        assert_eq!(s.enqueue_input(b"b"), 1);
    }
}
