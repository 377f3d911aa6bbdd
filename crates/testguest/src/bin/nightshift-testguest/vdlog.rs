//! `virtio-drivers` reports problems through the `log` facade: its warnings and errors
//! become `warning: virtio-drivers: ...` console lines (its info/debug chatter is
//! dropped: every console byte is an exit).

use log::{Level, LevelFilter, Log, Metadata, Record};

use crate::warn;

struct Console;

impl Log for Console {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= Level::Warn
    }

    fn log(&self, record: &Record<'_>) {
        if self.enabled(record.metadata()) {
            warn!("virtio-drivers: {}", record.args());
        }
    }

    fn flush(&self) {}
}

static CONSOLE: Console = Console;

/// Installs the console logger (once; later calls do nothing).
pub fn init() {
    if log::set_logger(&CONSOLE).is_ok() {
        log::set_max_level(LevelFilter::Warn);
    }
}
