//! Raw mode on the controlling terminal while a guest console uses it, and
//! restoring it on every way out: normal return (the guard's drop), a panic
//! (a panic hook), and the signals that end the process (SIGTERM, SIGHUP,
//! SIGINT, SIGQUIT: restore, then die of the signal as before). SIGKILL cannot
//! be caught; after one, `stty sane` repairs the terminal.
//!
//! Raw mode clears `ICANON | ECHO | ISIG` (vmm-sys-util's `Terminal`): keys go
//! to the guest one by one, unechoed, and Ctrl-C is the guest's, not ours;
//! the console's escape (Ctrl-A x, [`super::console_input`]) quits.

use std::io;
use std::os::unix::io::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Once;

use vmm_sys_util::terminal::Terminal;

/// Standard input as a terminal.
struct Stdin;

// SAFETY: fd 0 is the process's standard input for its whole life; we never close it.
unsafe impl Terminal for Stdin {
    fn tty_fd(&self) -> RawFd {
        libc::STDIN_FILENO
    }
}

/// Whether raw mode is on (so restoring twice, or without raw mode, is a no-op).
static RAW: AtomicBool = AtomicBool::new(false);
static HOOKS: Once = Once::new();
const FATAL_SIGNALS: [libc::c_int; 4] = [libc::SIGTERM, libc::SIGHUP, libc::SIGINT, libc::SIGQUIT];

/// Raw mode on stdin until dropped.
pub struct RawMode(());

impl RawMode {
    /// Puts stdin in raw mode if it is a terminal; `None` if it is not.
    pub fn enable() -> io::Result<Option<RawMode>> {
        if !is_terminal() {
            return Ok(None);
        }
        HOOKS.call_once(install_hooks);
        Stdin.set_raw_mode().map_err(io::Error::from)?;
        RAW.store(true, Ordering::SeqCst);
        Ok(Some(RawMode(())))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        restore();
    }
}

fn is_terminal() -> bool {
    use std::io::IsTerminal;
    io::stdin().is_terminal()
}

/// Back to canonical mode with echo and signals. Async-signal-safe: an atomic
/// and tcgetattr/tcsetattr.
fn restore() {
    if RAW.swap(false, Ordering::SeqCst) {
        let _ = Stdin.set_canon_mode();
    }
}

fn install_hooks() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        restore();
        previous(info);
    }));
    for sig in FATAL_SIGNALS {
        let action = libc::sigaction {
            sa_sigaction: restore_and_die as *const () as libc::sighandler_t,
            sa_mask: empty_sigset(),
            // One-shot: the handler's own raise() then takes the default action.
            sa_flags: libc::SA_RESETHAND,
            sa_restorer: None,
        };
        // SAFETY: `action` is a valid sigaction whose handler only calls
        // async-signal-safe functions; the old action is not needed.
        if unsafe { libc::sigaction(sig, &action, std::ptr::null_mut()) } != 0 {
            tracing::warn!(
                "cannot restore the terminal on signal {sig}: {}",
                io::Error::last_os_error()
            );
        }
    }
}

fn empty_sigset() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t.
    unsafe { libc::sigemptyset(&mut set) };
    set
}

extern "C" fn restore_and_die(sig: libc::c_int) {
    restore();
    // SAFETY: raise is async-signal-safe; SA_RESETHAND made this signal's
    // action the default again, so the process ends as it would have.
    unsafe { libc::raise(sig) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_terminal_raw_mode_is_not_touched() {
        // Test harnesses run with stdin a pipe or /dev/null; on a terminal the
        // mode is set and restored by the guard, which this checks too.
        let guard = RawMode::enable().unwrap();
        assert_eq!(guard.is_some(), is_terminal());
        assert_eq!(RAW.load(Ordering::SeqCst), is_terminal());
        drop(guard);
        assert!(!RAW.load(Ordering::SeqCst));
    }
}
