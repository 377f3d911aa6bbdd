//! Console input: a thread (`ns-stdin`) reads the VMM's stdin and feeds the
//! bytes to COM1's receive FIFO, so a person can use a guest shell.
//!
//! Ctrl-A is the escape (as in QEMU and screen): Ctrl-A x ends the VM
//! ([`ExitReason::ConsoleQuit`], status 0), Ctrl-A Ctrl-A sends one Ctrl-A,
//! Ctrl-A followed by anything else sends both bytes. On a terminal, stdin is
//! in raw mode while the thread runs ([`super::terminal`]).
//!
//! The guest reads the FIFO (64 bytes) at its own pace; when it is full the
//! thread waits for the guest to drain it (the UART's "input buffer empty"
//! event) instead of dropping keys. It stops at end of input or when the VM
//! ends (an eventfd wakes its poll).
//!
//! Syscalls it makes (for a seccomp filter): epoll_wait (and epoll_create1 /
//! epoll_ctl once at start), read (stdin, the stop eventfd), write (the
//! serial irqfd), futex (the serial's lock, the FIFO wait), and the thread's
//! own exit (madvise, munmap, exit).

use crate::seccomp::ThreadClass;
use crate::vmm_thread::ThreadPolicy;
use std::io;
use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::serial::{InputSpace, Serial};
use super::terminal::RawMode;
use crate::exit::{ExitReason, ExitSignal};
#[cfg(test)]
use crate::irqchip::IrqLine;

/// The escape byte: Ctrl-A.
pub const ESCAPE: u8 = 0x01;
/// After [`ESCAPE`]: quit.
pub const QUIT: u8 = b'x';
/// How often a thread waiting for FIFO room looks at the stop flag.
const STOP_CHECK: Duration = Duration::from_millis(100);

const INPUT: u64 = 0;
const STOP: u64 = 1;

/// What the escape parser makes of input.
#[derive(Debug, Default)]
pub struct Escape {
    pending: bool,
}

impl Escape {
    /// Bytes for the guest from `input`; `true` if the quit escape was typed
    /// (bytes after it are not sent).
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> bool {
        for &b in input {
            if self.pending {
                self.pending = false;
                match b {
                    QUIT => return true,
                    ESCAPE => out.push(ESCAPE),
                    other => out.extend_from_slice(&[ESCAPE, other]),
                }
            } else if b == ESCAPE {
                self.pending = true;
            } else {
                out.push(b);
            }
        }
        false
    }
}

/// The running input thread; dropping it stops the thread and restores the terminal.
pub struct ConsoleInput {
    stop: Arc<AtomicBool>,
    wake: EventFd,
    thread: Option<JoinHandle<()>>,
    _raw: Option<RawMode>,
}

impl ConsoleInput {
    /// Reads the process's stdin (raw mode if a terminal) into `serial`.
    pub fn stdin<W: io::Write + Send + 'static>(
        serial: Arc<Mutex<Serial<W>>>,
        exit: Arc<ExitSignal>,
        threads: Option<ThreadPolicy>,
    ) -> io::Result<Self> {
        let raw = RawMode::enable()?;
        if raw.is_some() {
            eprintln!("nightshift: console on this terminal; Ctrl-A x quits");
        }
        let mut input = ConsoleInput::start(libc::STDIN_FILENO, serial, exit, threads)?;
        input._raw = raw;
        Ok(input)
    }

    /// Reads `fd` (which must stay open while the thread runs) into `serial`.
    pub fn start<W: io::Write + Send + 'static>(
        fd: RawFd,
        serial: Arc<Mutex<Serial<W>>>,
        exit: Arc<ExitSignal>,
        threads: Option<ThreadPolicy>,
    ) -> io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let wake = EventFd::new(libc::EFD_NONBLOCK)?;
        let epoll = Epoll::new()?;
        // Regular files and /dev/null cannot be polled (EPERM): they never
        // block either, so the reader reads them straight to their end.
        let pollable = match epoll.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(EventSet::IN | EventSet::HANG_UP, INPUT),
        ) {
            Ok(()) => true,
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => false,
            Err(e) => return Err(e),
        };
        epoll.ctl(
            ControlOperation::Add,
            wake.as_raw_fd(),
            EpollEvent::new(EventSet::IN, STOP),
        )?;
        let reader = Reader {
            fd,
            pollable,
            epoll,
            serial,
            exit,
            stop: stop.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("ns-stdin".into())
            .spawn(move || {
                let _bound = threads.as_ref().map(|t| t.bind("ns-stdin"));
                if let Some(t) = &threads {
                    if let Err(e) = t.confine(ThreadClass::Console, "ns-stdin") {
                        t.report(crate::ExitReason::Host(format!("ns-stdin: {e}")));
                        return;
                    }
                }
                reader.run()
            })?;
        Ok(ConsoleInput {
            stop,
            wake,
            thread: Some(thread),
            _raw: None,
        })
    }
}

impl Drop for ConsoleInput {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.wake.write(1);
        if let Some(t) = self.thread.take() {
            // The thread waits only in epoll (woken above) or for FIFO room
            // (it looks at `stop` every STOP_CHECK): the join is bounded.
            let _ = t.join();
        }
    }
}

struct Reader<W: io::Write + Send> {
    fd: RawFd,
    pollable: bool,
    epoll: Epoll,
    serial: Arc<Mutex<Serial<W>>>,
    exit: Arc<ExitSignal>,
    stop: Arc<AtomicBool>,
}

impl<W: io::Write + Send> Reader<W> {
    fn run(self) {
        let mut escape = Escape::default();
        let mut buf = [0u8; 256];
        let mut out = Vec::with_capacity(512);
        let space = self.lock().input_space();
        let mut events = [EpollEvent::default(); 2];
        while !self.stop.load(Ordering::SeqCst) {
            if self.pollable {
                let n = match self.epoll.wait(-1, &mut events) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return tracing::warn!("console input: epoll: {e}"),
                };
                if events[..n].iter().any(|e| e.data() == STOP) {
                    return;
                }
            }
            let got = match read_fd(self.fd, &mut buf) {
                Ok(0) => return, // end of input: the guest keeps running
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return tracing::warn!("console input: reading stdin: {e}"),
            };
            out.clear();
            let quit = escape.feed(&buf[..got], &mut out);
            self.deliver(&out, &space);
            if quit {
                self.exit.report(ExitReason::ConsoleQuit);
                return;
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Serial<W>> {
        self.serial.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Feeds `bytes` to the FIFO, waiting for the guest to drain it as needed.
    fn deliver(&self, mut bytes: &[u8], space: &InputSpace) {
        while !bytes.is_empty() && !self.stop.load(Ordering::SeqCst) {
            let drains = space.drains();
            let took = self.lock().enqueue_input(bytes);
            bytes = &bytes[took..];
            if took == 0 {
                space.wait(drains, STOP_CHECK);
            }
        }
    }
}

fn read_fd(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is a valid, writable buffer of `buf.len()` bytes, and the
    // kernel checks `fd`.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::net::UnixStream;

    #[test]
    fn escape_sequences() {
        let mut e = Escape::default();
        let mut out = Vec::new();
        assert!(!e.feed(b"ls\r\x01\x01a\x01b", &mut out));
        assert_eq!(out, b"ls\r\x01a\x01b");
        // The escape may be split across reads.
        out.clear();
        assert!(!e.feed(b"q\x01", &mut out));
        assert!(e.feed(b"xignored", &mut out));
        assert_eq!(out, b"q");
    }

    fn serial() -> (Arc<Mutex<Serial<Vec<u8>>>>, EventFd) {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let s = Serial::new(IrqLine::Irqfd(irq.try_clone().unwrap()), Vec::new());
        (Arc::new(Mutex::new(s)), irq)
    }

    /// Reads what the guest would, byte by byte, until `n` bytes arrived.
    fn guest_reads(serial: &Mutex<Serial<Vec<u8>>>, n: usize) -> Vec<u8> {
        use crate::bus::BusDevice;
        let mut got = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while got.len() < n {
            assert!(std::time::Instant::now() < deadline, "got only {got:?}");
            let mut s = serial.lock().unwrap();
            let mut lsr = [0u8];
            s.read(5, &mut lsr);
            if lsr[0] & 1 == 1 {
                let mut b = [0u8];
                s.read(0, &mut b);
                got.push(b[0]);
            } else {
                drop(s);
                std::thread::yield_now();
            }
        }
        got
    }

    #[test]
    fn piped_input_reaches_the_guest_beyond_the_fifo_and_quit_ends_the_vm() {
        let (serial, _irq) = serial();
        let exit = Arc::new(ExitSignal::new().unwrap());
        let (mut tx, rx) = UnixStream::pair().unwrap();
        let input =
            ConsoleInput::start(rx.as_raw_fd(), serial.clone(), exit.clone(), None).unwrap();
        // More than the 64-byte FIFO: the reader waits for the guest to drain it.
        let text: Vec<u8> = (0..300).map(|i| b'a' + (i % 26) as u8).collect();
        tx.write_all(&text).unwrap();
        assert_eq!(guest_reads(&serial, text.len()), text);
        tx.write_all(b"\x01x").unwrap();
        assert_eq!(exit.wait(), ExitReason::ConsoleQuit);
        drop(input);
        drop(rx);
    }

    #[test]
    fn unpollable_input_is_read_to_its_end() {
        let (serial, _irq) = serial();
        let exit = Arc::new(ExitSignal::new().unwrap());
        let null = std::fs::File::open("/dev/null").unwrap();
        drop(ConsoleInput::start(null.as_raw_fd(), serial.clone(), exit.clone(), None).unwrap());
        let path = std::env::temp_dir().join(format!("nightshift-input-{}", std::process::id()));
        std::fs::write(&path, b"ab").unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let input =
            ConsoleInput::start(file.as_raw_fd(), serial.clone(), exit.clone(), None).unwrap();
        assert_eq!(guest_reads(&serial, 2), b"ab");
        drop(input);
        std::fs::remove_file(&path).unwrap();
        assert!(!exit.is_reported());
    }

    #[test]
    fn the_reader_stops_when_the_vm_ends_even_with_input_open() {
        let (serial, _irq) = serial();
        let exit = Arc::new(ExitSignal::new().unwrap());
        let (_tx, rx) = UnixStream::pair().unwrap();
        let input = ConsoleInput::start(rx.as_raw_fd(), serial, exit.clone(), None).unwrap();
        drop(input); // joins: the stop eventfd woke the reader
        assert!(!exit.is_reported());
    }
}
