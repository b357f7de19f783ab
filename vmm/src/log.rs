//! The one writer for rvmspawn's own lines on standard error (status, warnings, debug), and
//! debug messages, shown when `$SYSTEMD_LOG_LEVEL` is `debug` (or `7`), as in systemd's tools.
//!
//! While the user's terminal is in raw mode a line must end in `\r\n`, or the next one starts
//! where this one ended (staircase output); in cooked mode, or into a file or pipe, it ends in
//! `\n` as usual. [`crate::console::Terminal`] says which through [`set_raw`], and every line
//! rvmspawn prints while a VM runs goes through [`line`] (the [`status!`] and [`debug!`] macros,
//! and device reports, see `devices::report`).
//!
//! Debug messages are for what a user debugging a guest wants to see and a normal run must not
//! print: guest messages that were dropped, best-effort steps that failed. Errors go through
//! `Error`.

use std::io::Write;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

/// Whether debug messages are shown; read once.
pub fn debug_enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("SYSTEMD_LOG_LEVEL").is_ok_and(|v| v == "debug" || v == "7"))
}

/// Whether the terminal is in raw mode now.
static RAW: AtomicBool = AtomicBool::new(false);

/// Say whether the terminal is in raw mode (set by the code that switches it).
pub fn set_raw(raw: bool) {
    RAW.store(raw, Ordering::SeqCst);
}

/// The end of a line for the terminal's current mode.
fn line_end() -> &'static str {
    if RAW.load(Ordering::SeqCst) {
        "\r\n"
    } else {
        "\n"
    }
}

/// Format one line, without its end: every `\n` inside it becomes the mode's line end too.
fn format_line(text: &str, end: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    for (i, part) in text.split('\n').enumerate() {
        if i > 0 {
            out.push_str(end);
        }
        out.push_str(part.strip_suffix('\r').unwrap_or(part));
    }
    out.push_str(end);
    out
}

/// Whether the guest's console output, last time it was written, stopped in the middle of a
/// line, on the file standard error also goes to.
static GUEST_MID_LINE: AtomicBool = AtomicBool::new(false);

/// Whether standard output and standard error are the same file (a terminal, or `>f 2>&1`):
/// only then do the guest's lines and ours share lines. Read once.
fn shared_with_stdout() -> bool {
    static SAME: OnceLock<bool> = OnceLock::new();
    *SAME.get_or_init(|| {
        let stat = |fd| {
            // SAFETY: an all-zero stat is a valid value of this plain C struct.
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            // SAFETY: fstat fills in `st`, a valid stat, for a descriptor number.
            (unsafe { libc::fstat(fd, &mut st) } == 0).then_some((st.st_dev, st.st_ino))
        };
        matches!((stat(libc::STDOUT_FILENO), stat(libc::STDERR_FILENO)), (Some(a), Some(b)) if a == b)
    })
}

/// Read what [`line`] needs once, on the main thread before any filter is installed: other
/// threads may not make the system calls it takes (see `seccomp`).
pub fn prepare() {
    let _ = shared_with_stdout();
    let _ = debug_enabled();
}

/// Record the last byte of guest output written to standard output (by the console thread).
pub fn guest_wrote(last: u8) {
    GUEST_MID_LINE.store(last != b'\n', Ordering::SeqCst);
}

/// Write `text` as one line (or several, split at its `\n`s) on standard error, with the line
/// ends the terminal's mode needs, in one write. If the guest's output stopped mid-line on the
/// same file, ours starts on a line of its own.
pub fn line(text: &str) {
    let end = line_end();
    let mut out = String::new();
    if GUEST_MID_LINE.swap(false, Ordering::SeqCst) && shared_with_stdout() {
        out.push_str(end);
    }
    out.push_str(&format_line(text, end));
    let _ = std::io::stderr().lock().write_all(out.as_bytes());
}

/// At debug level, say that the run reached phase `what`, with the time on `CLOCK_MONOTONIC` (in
/// seconds, to the microsecond), so a benchmark can place the VMM's phases against its own clock
/// (`scripts/bench-tiny.sh`). Costs one check of a flag when debug messages are off.
pub fn phase(what: &str) {
    if !debug_enabled() {
        return;
    }
    // SAFETY: an all-zero timespec is a valid value of this plain C struct.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: clock_gettime fills in `ts`, a valid timespec (through the vDSO: no system call).
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    line(&format!(
        "Phase: {what} at {}.{:06}",
        ts.tv_sec,
        ts.tv_nsec / 1000
    ));
}

/// Print a status line on stderr through [`line`].
macro_rules! status {
    ($($arg:tt)*) => {
        $crate::log::line(&format!($($arg)*))
    };
}

/// Print a debug line on stderr through [`line`].
macro_rules! debug {
    ($($arg:tt)*) => {
        if $crate::log::debug_enabled() {
            $crate::log::line(&format!($($arg)*));
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_lines_end_in_cr_lf_everywhere() {
        assert_eq!(format_line("one", "\r\n"), "one\r\n");
        assert_eq!(format_line("one\ntwo", "\r\n"), "one\r\ntwo\r\n");
        // A line already written for a raw terminal does not get a second \r.
        assert_eq!(format_line("one\r\ntwo", "\r\n"), "one\r\ntwo\r\n");
        assert_eq!(format_line("one\r\ntwo", "\n"), "one\ntwo\n");
        assert_eq!(format_line("one", "\n"), "one\n");
    }
}
