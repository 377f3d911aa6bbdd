//! COM1 console (16550 at I/O port 0x3F8): output only.
//!
//! Output is line based: a line is formatted into a buffer at CPL3, then written whole
//! under a lock, so lines from different CPUs never interleave. Lines end in `\n` only.
//!
//! A line is one `service::write_bytes` call: one service call, then one `out` (an I/O
//! exit) per byte, ~10 µs per byte on PVM. There is no LSR polling and no UART set-up:
//! the VMM's UART is emulated and takes every byte written to THR at once (QEMU,
//! vm-superio).
//!
//! A CPU that finds the lock taken halts until the holder wakes it, rather than spinning:
//! writing a line takes a while (an exit per byte), and a spinning vCPU can keep the
//! holder's vCPU off its host CPU.

use core::fmt;
use core::sync::atomic::{AtomicUsize, Ordering};

use testguest::linebuf::LineBuf;

use crate::{cpu, service, smp, wait};

/// COM1's transmit holding register.
const COM1_THR: u16 = 0x3F8;

/// Longest line; longer ones are truncated.
pub const LINE_MAX: usize = 512;

/// 0 = free, else owner CPU index + 1.
static LOCK: AtomicUsize = AtomicUsize::new(0);
/// Bit `n`: CPU `n` is waiting for the lock.
static WAITERS: AtomicUsize = AtomicUsize::new(0);

const _: () = assert!(cpu::MAX_CPUS <= usize::BITS as usize);

fn try_lock(me: usize) -> bool {
    LOCK.compare_exchange(0, me + 1, Ordering::Acquire, Ordering::Relaxed)
        .is_ok()
}

fn lock(me: usize) {
    while !try_lock(me) {
        // SeqCst pairs with `unlock`: either the holder sees our bit and wakes us, or we
        // see the lock free and do not halt.
        WAITERS.fetch_or(1 << me, Ordering::SeqCst);
        wait::halt_until(None, || LOCK.load(Ordering::SeqCst) == 0);
        WAITERS.fetch_and(!(1 << me), Ordering::SeqCst);
    }
}

fn unlock() {
    LOCK.store(0, Ordering::SeqCst);
    let waiters = WAITERS.load(Ordering::SeqCst);
    for cpu in (0..cpu::MAX_CPUS).filter(|&cpu| waiters & (1 << cpu) != 0) {
        wait::wake(smp::apic_id(cpu));
    }
}

/// Releases the console lock if CPU `cpu` holds it (it faulted while printing).
pub fn break_lock(cpu: usize) {
    let _ = LOCK.compare_exchange(cpu + 1, 0, Ordering::Release, Ordering::Relaxed);
}

/// Formats `args` and writes it as one line.
pub fn print_line(args: fmt::Arguments<'_>) {
    let mut line = LineBuf::<LINE_MAX>::new();
    let _ = fmt::write(&mut line, args);
    line.finish_line();
    let me = cpu::current();
    lock(me);
    service::write_bytes(COM1_THR, line.as_bytes());
    unlock();
}

/// Prints one line on the console (`format!` syntax).
#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => {
        $crate::serial::print_line(format_args!($($arg)*))
    };
}

/// Prints a `warning: ...` line.
#[macro_export]
macro_rules! warn {
    ($($arg:tt)*) => {
        $crate::serial::print_line(format_args!("warning: {}", format_args!($($arg)*)))
    };
}
