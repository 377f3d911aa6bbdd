//! Where the guest's serial output goes: a bounded buffer that a writer
//! thread (`ns-console`) drains to stdout and, if asked, a file.
//!
//! The UART runs on the vCPU thread that executed the guest's `out`. Writing
//! straight to stdout or a file there would let a slow pipe (a reader that
//! stopped reading) stall that vCPU forever, and a guest printing in a loop
//! grow a file without bound. So the vCPU only appends to an in-memory buffer
//! of [`BUFFER_BYTES`]; when the buffer is full, bytes are dropped and counted
//! (the report's `console.dropped_bytes`), never waited for. The writer thread
//! may block on the pipe as long as it likes. The file copy stops at
//! `file_limit` bytes (counted in `console.file_capped_bytes`), so a flood
//! cannot fill the host's disk.

use crate::seccomp::ThreadClass;
use crate::vmm_thread::ThreadPolicy;
use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;

/// Bytes the guest may have in flight to the console before output is dropped.
pub const BUFFER_BYTES: usize = 1 << 20;
/// Default cap of the `--serial-file` copy.
pub const DEFAULT_FILE_LIMIT: u64 = 64 << 20;
/// How long the writer waits for more output before writing a partial line
/// (a shell prompt has no newline).
const PARTIAL_LINE_DELAY: Duration = Duration::from_millis(20);
/// How long the VM's end waits for the writer to finish before leaving it.
const DRAIN_ON_CLOSE: Duration = Duration::from_secs(2);

/// What happened to the guest's console output.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ConsoleStats {
    /// Bytes the guest wrote.
    pub bytes: u64,
    /// Bytes not delivered: the buffer was full (the writer fell behind),
    /// or stdout refused them (a closed pipe).
    pub dropped_bytes: u64,
    /// Bytes written to stdout.
    pub written_bytes: u64,
    /// Bytes not copied to the serial file because it reached its limit.
    pub file_capped_bytes: u64,
    /// From the VMM's start to the guest's first output byte, ns (for a
    /// kernel's boot time to its first line).
    pub first_output_ns: Option<u64>,
}

#[derive(Default)]
struct Counters {
    bytes: AtomicU64,
    dropped: AtomicU64,
    written: AtomicU64,
    file_capped: AtomicU64,
    first_output_ns: AtomicU64,
}

struct Buffer {
    data: VecDeque<u8>,
    closed: bool,
}

struct Shared {
    buffer: Mutex<Buffer>,
    ready: Condvar,
    counters: Counters,
    capacity: usize,
    started: Instant,
}

/// The sinks the writer thread copies output to.
pub struct Sinks {
    /// Usually stdout.
    pub primary: Box<dyn Write + Send>,
    /// The `--serial-file` copy.
    pub file: Option<File>,
    /// Most bytes copied to `file`.
    pub file_limit: u64,
}

/// The serial port's output: cheap, bounded, never blocks the caller on I/O.
pub struct Console {
    shared: Arc<Shared>,
    writer: Option<(JoinHandle<()>, mpsc::Receiver<()>)>,
}

impl Console {
    /// A console on stdout, copied to `file` (capped at `file_limit` bytes);
    /// `started` is when the VMM started.
    /// `threads`, if given, binds and confines the writer thread.
    pub fn stdout(
        file: Option<File>,
        file_limit: u64,
        started: Instant,
        threads: Option<ThreadPolicy>,
    ) -> io::Result<Self> {
        let sinks = Sinks {
            primary: Box::new(io::stdout()),
            file,
            file_limit,
        };
        Console::with_sinks(sinks, BUFFER_BYTES, started, threads)
    }

    /// A console writing to `sinks` through a buffer of `capacity` bytes.
    pub fn with_sinks(
        sinks: Sinks,
        capacity: usize,
        started: Instant,
        threads: Option<ThreadPolicy>,
    ) -> io::Result<Self> {
        let shared = Arc::new(Shared {
            buffer: Mutex::new(Buffer {
                data: VecDeque::new(),
                closed: false,
            }),
            ready: Condvar::new(),
            counters: Counters::default(),
            capacity,
            started,
        });
        let (done_tx, done_rx) = mpsc::channel();
        let thread_shared = shared.clone();
        let handle = std::thread::Builder::new()
            .name("ns-console".into())
            .spawn(move || {
                let _bound = threads.as_ref().map(|t| t.bind("ns-console"));
                if let Some(t) = &threads {
                    if let Err(e) = t.confine(ThreadClass::Console, "ns-console") {
                        t.report(crate::ExitReason::Host(format!("ns-console: {e}")));
                    }
                }
                writer_main(&thread_shared, sinks);
                let _ = done_tx.send(());
            })?;
        Ok(Console {
            shared,
            writer: Some((handle, done_rx)),
        })
    }

    /// The counters so far.
    pub fn stats(&self) -> ConsoleStats {
        self.shared.stats()
    }

    /// A handle that reads the counters after the console has moved into the UART.
    pub fn stats_handle(&self) -> ConsoleStatsHandle {
        ConsoleStatsHandle(self.shared.clone())
    }
}

/// Reads a console's counters from elsewhere.
#[derive(Clone)]
pub struct ConsoleStatsHandle(Arc<Shared>);

impl ConsoleStatsHandle {
    /// The counters so far.
    pub fn stats(&self) -> ConsoleStats {
        self.0.stats()
    }
}

impl Shared {
    fn stats(&self) -> ConsoleStats {
        let c = &self.counters;
        ConsoleStats {
            bytes: c.bytes.load(Ordering::Relaxed),
            dropped_bytes: c.dropped.load(Ordering::Relaxed),
            written_bytes: c.written.load(Ordering::Relaxed),
            file_capped_bytes: c.file_capped.load(Ordering::Relaxed),
            first_output_ns: Some(c.first_output_ns.load(Ordering::Relaxed)).filter(|&n| n != 0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Buffer> {
        self.buffer.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Write for Console {
    /// Takes what fits in the buffer and drops (and counts) the rest: the
    /// guest's write always succeeds at once.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let c = &self.shared.counters;
        if c.bytes.fetch_add(buf.len() as u64, Ordering::Relaxed) == 0 && !buf.is_empty() {
            let ns = (self.shared.started.elapsed().as_nanos() as u64).max(1);
            c.first_output_ns.store(ns, Ordering::Relaxed);
        }
        let mut b = self.shared.lock();
        let room = self.shared.capacity.saturating_sub(b.data.len());
        let take = room.min(buf.len());
        b.data.extend(&buf[..take]);
        drop(b);
        if take < buf.len() {
            c.dropped
                .fetch_add((buf.len() - take) as u64, Ordering::Relaxed);
        }
        Ok(buf.len())
    }

    /// Wakes the writer; does not wait for it.
    fn flush(&mut self) -> io::Result<()> {
        self.shared.ready.notify_one();
        Ok(())
    }
}

impl Drop for Console {
    /// Lets the writer finish what is buffered, for a bounded time: a writer
    /// stuck on a pipe nobody reads is left behind rather than waited for.
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.ready.notify_one();
        if let Some((handle, done)) = self.writer.take() {
            if done.recv_timeout(DRAIN_ON_CLOSE).is_ok() {
                let _ = handle.join();
            } else {
                tracing::warn!("console output did not drain in {DRAIN_ON_CLOSE:?}; left behind");
            }
        }
    }
}

fn writer_main(shared: &Shared, mut sinks: Sinks) {
    let mut file_written = 0u64;
    let mut chunk = Vec::new();
    loop {
        let closed = {
            let mut b = shared.lock();
            if b.data.is_empty() && !b.closed {
                b = shared
                    .ready
                    .wait_timeout(b, PARTIAL_LINE_DELAY)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            chunk.clear();
            chunk.extend(b.data.drain(..));
            b.closed
        };
        if !chunk.is_empty() {
            write_chunk(shared, &mut sinks, &chunk, &mut file_written);
        }
        if closed && chunk.is_empty() {
            return;
        }
    }
}

fn write_chunk(shared: &Shared, sinks: &mut Sinks, chunk: &[u8], file_written: &mut u64) {
    let c = &shared.counters;
    match sinks
        .primary
        .write_all(chunk)
        .and_then(|_| sinks.primary.flush())
    {
        Ok(()) => c.written.fetch_add(chunk.len() as u64, Ordering::Relaxed),
        Err(e) => {
            tracing::debug!("console: writing output: {e}");
            c.dropped.fetch_add(chunk.len() as u64, Ordering::Relaxed)
        }
    };
    if let Some(file) = sinks.file.as_mut() {
        let room = sinks.file_limit.saturating_sub(*file_written);
        let take = room.min(chunk.len() as u64) as usize;
        if take > 0 {
            match file.write_all(&chunk[..take]) {
                Ok(()) => *file_written += take as u64,
                Err(e) => tracing::debug!("console: writing the serial file: {e}"),
            }
        }
        if take < chunk.len() {
            if *file_written >= sinks.file_limit && room > 0 {
                tracing::warn!(
                    "serial file reached its limit of {} bytes; further output is not copied",
                    sinks.file_limit
                );
            }
            c.file_capped
                .fetch_add((chunk.len() - take) as u64, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    /// A sink that collects what it gets.
    #[derive(Clone, Default)]
    struct Collect(Arc<Mutex<Vec<u8>>>);

    impl Write for Collect {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn output_reaches_the_sink_and_the_file_is_capped() {
        let out = Collect::default();
        let path = std::env::temp_dir().join(format!("nightshift-console-{}", std::process::id()));
        let sinks = Sinks {
            primary: Box::new(out.clone()),
            file: Some(File::create(&path).unwrap()),
            file_limit: 10,
        };
        let mut console = Console::with_sinks(sinks, 1024, Instant::now(), None).unwrap();
        console.write_all(b"hello, world\n").unwrap();
        console.flush().unwrap();
        let handle = console.stats_handle();
        drop(console); // drains
        assert_eq!(&*out.0.lock().unwrap(), b"hello, world\n");
        assert_eq!(std::fs::read(&path).unwrap(), b"hello, wor");
        std::fs::remove_file(&path).unwrap();
        let stats = handle.stats();
        assert_eq!((stats.bytes, stats.dropped_bytes), (13, 0));
        assert_eq!((stats.written_bytes, stats.file_capped_bytes), (13, 3));
        assert!(stats.first_output_ns.is_some());
    }

    /// The guest floods a console whose reader never reads: every write
    /// returns at once, memory stays within the buffer, the excess is counted.
    #[test]
    fn a_stalled_pipe_never_blocks_the_writer_and_drops_are_counted() {
        let (stalled, reader_that_never_reads) = UnixStream::pair().unwrap();
        let sinks = Sinks {
            primary: Box::new(stalled),
            file: None,
            file_limit: 0,
        };
        let mut console = Console::with_sinks(sinks, 4096, Instant::now(), None).unwrap();
        let line = [b'x'; 1024];
        for _ in 0..8192 {
            // 8 MiB into a socket buffer of a few hundred KiB and a 4 KiB console buffer.
            assert_eq!(console.write(&line).unwrap(), line.len());
            console.flush().unwrap();
        }
        let stats = console.stats();
        assert_eq!(stats.bytes, 8 << 20);
        assert!(stats.dropped_bytes > 0, "{stats:?}");
        // Accepted bytes are written, buffered (<= 4 KiB) or in the writer's hands (<= 4 KiB).
        assert!(stats.bytes - stats.dropped_bytes <= stats.written_bytes + 2 * 4096);
        assert!(console.shared.lock().data.len() <= 4096);
        // The reader goes away: the writer gets EPIPE and the console closes promptly.
        drop(reader_that_never_reads);
        drop(console);
    }
}
