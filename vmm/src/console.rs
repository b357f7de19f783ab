//! The user's terminal: raw mode while the VM runs, and the escape sequence that ends it.

use std::time::{Duration, Instant};

/// Restores the terminal's settings when dropped, on every way out of `run`.
pub struct Terminal {
    saved: Option<libc::termios>,
}

impl std::fmt::Debug for Terminal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Terminal")
            .field("raw", &self.saved.is_some())
            .finish()
    }
}

impl Terminal {
    /// The terminal left as it is (the modes that do not read it).
    pub fn untouched() -> Terminal {
        Terminal { saved: None }
    }

    /// Whether this put the terminal in raw mode.
    pub fn is_raw(&self) -> bool {
        self.saved.is_some()
    }

    /// Put standard input in raw mode if it is a terminal, so that every key (Ctrl-C too)
    /// reaches the guest.
    pub fn raw_if_tty() -> Terminal {
        // SAFETY: isatty only inspects the fd number.
        if unsafe { libc::isatty(libc::STDIN_FILENO) } != 1 {
            return Terminal { saved: None };
        }
        // SAFETY: termios is plain data; all-zero is a valid value to be overwritten.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: `saved` is a valid termios to write into.
        if unsafe { libc::tcgetattr(libc::STDIN_FILENO, &mut saved) } != 0 {
            return Terminal { saved: None };
        }
        let mut raw = saved;
        // SAFETY: `raw` is a valid termios; cfmakeraw only edits it.
        unsafe { libc::cfmakeraw(&mut raw) };
        // SAFETY: `raw` is a valid termios for fd 0.
        if unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &raw) } != 0 {
            return Terminal { saved: None };
        }
        // A panic or a second signal restores it from there (and lines end in \r\n now).
        crate::cleanup::set_saved_terminal(Some(saved));
        crate::seccomp::remember_terminal(&saved);
        Terminal { saved: Some(saved) }
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        if let Some(saved) = &self.saved {
            // SAFETY: `saved` is the termios read from this fd at start.
            unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, saved) };
            crate::cleanup::set_saved_terminal(None);
        }
    }
}

/// Ctrl-].
const ESCAPE: u8 = 0x1d;
/// How many escapes in a row end the VM, and within what time, as systemd-nspawn counts them.
const ESCAPE_COUNT: u32 = 3;
const ESCAPE_WINDOW: Duration = Duration::from_secs(1);

/// Watches typed input for Ctrl-] pressed three times within one second.
#[derive(Debug, Default)]
pub struct EscapeDetector {
    count: u32,
    first: Option<Instant>,
}

impl EscapeDetector {
    /// Feed typed bytes; true when the escape sequence is complete.
    pub fn feed(&mut self, bytes: &[u8], now: Instant) -> bool {
        for &b in bytes {
            if b != ESCAPE {
                self.count = 0;
                continue;
            }
            match self.first {
                Some(t) if self.count > 0 && now.duration_since(t) <= ESCAPE_WINDOW => {
                    self.count += 1
                }
                _ => {
                    self.first = Some(now);
                    self.count = 1;
                }
            }
            if self.count >= ESCAPE_COUNT {
                return true;
            }
        }
        false
    }
}

/// The size of the terminal on `fd` as (columns, rows), if it is a terminal that knows it.
pub fn window_size(fd: libc::c_int) -> Option<(u16, u16)> {
    // SAFETY: winsize is plain data; all-zero is valid.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ writes one winsize into `ws`, which outlives the call.
    let rc = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) };
    (rc == 0 && ws.ws_col > 0 && ws.ws_row > 0).then_some((ws.ws_col, ws.ws_row))
}

/// Ctrl-a, native mode's escape character (QEMU's, whose hint vmspawn prints).
const NATIVE_ESCAPE: u8 = 0x01;

/// Native mode's escape layer over typed input: Ctrl-a x ends the VM, Ctrl-a a (or Ctrl-a
/// Ctrl-a) sends one Ctrl-a; Ctrl-a followed by anything else sends both bytes. Every other
/// byte passes through unchanged.
#[derive(Debug, Default)]
pub struct NativeEscape {
    after_escape: bool,
}

impl NativeEscape {
    /// Feed typed bytes, appending what the guest is to get to `out`; true on Ctrl-a x (the
    /// bytes after it are not passed on).
    pub fn feed(&mut self, bytes: &[u8], out: &mut std::collections::VecDeque<u8>) -> bool {
        for &b in bytes {
            if self.after_escape {
                self.after_escape = false;
                match b {
                    b'x' => return true,
                    b'a' | NATIVE_ESCAPE => out.push_back(NATIVE_ESCAPE),
                    other => out.extend([NATIVE_ESCAPE, other]),
                }
            } else if b == NATIVE_ESCAPE {
                self.after_escape = true;
            } else {
                out.push_back(b);
            }
        }
        false
    }
}

/// How much guest output may wait for the terminal before the guest's UART writes wait too.
const OUTPUT_BUFFER: usize = 1 << 20;

#[derive(Debug, Default)]
struct OutputState {
    buf: std::collections::VecDeque<u8>,
    /// Set while a machine is being torn down: writers waiting for room give up, so a terminal
    /// that stopped reading cannot keep a vCPU thread from stopping.
    abandon: bool,
    /// No more output will come; the writer thread drains what is left and ends.
    closed: bool,
    /// The writer thread has ended.
    done: bool,
}

#[derive(Debug, Default)]
struct OutputShared {
    state: std::sync::Mutex<OutputState>,
    changed: std::sync::Condvar,
}

impl OutputShared {
    fn lock(&self) -> std::sync::MutexGuard<'_, OutputState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The guest console's output path: the UART (on a vCPU thread) appends to a buffer, and one
/// thread writes the buffer to stdout. A vCPU thread therefore never makes a system call per
/// byte and never waits for the terminal, unless a whole megabyte is already waiting for it
/// (then the guest is slowed to the terminal's pace, as by a real serial line; nothing is lost).
#[derive(Debug)]
pub struct ConsoleOutput {
    shared: std::sync::Arc<OutputShared>,
}

/// A writer into the console output, for a UART.
#[derive(Debug, Clone)]
pub struct ConsoleSink {
    shared: std::sync::Arc<OutputShared>,
}

impl ConsoleOutput {
    /// Start the thread that writes guest output to `out`.
    pub fn start(mut out: Box<dyn std::io::Write + Send>) -> std::io::Result<ConsoleOutput> {
        let shared = std::sync::Arc::new(OutputShared::default());
        let s = shared.clone();
        std::thread::Builder::new()
            .name("console-out".into())
            .spawn(move || {
                crate::seccomp::enter(crate::seccomp::Kind::ConsoleOutput);
                let mut chunk = Vec::new();
                loop {
                    let mut st = s.lock();
                    while st.buf.is_empty() && !st.closed {
                        st = s.changed.wait(st).unwrap_or_else(|p| p.into_inner());
                    }
                    if st.buf.is_empty() {
                        st.done = true;
                        s.changed.notify_all();
                        return;
                    }
                    chunk.clear();
                    chunk.extend(st.buf.drain(..));
                    s.changed.notify_all();
                    drop(st);
                    // A terminal that went away (EPIPE) just loses the output, as a serial
                    // line with nobody listening would.
                    let _ = out.write_all(&chunk).and_then(|()| out.flush());
                    if let Some(&last) = chunk.last() {
                        crate::log::guest_wrote(last);
                    }
                }
            })?;
        Ok(ConsoleOutput { shared })
    }

    /// A writer for a UART.
    pub fn sink(&self) -> ConsoleSink {
        ConsoleSink {
            shared: self.shared.clone(),
        }
    }

    /// Make writers that wait for room give up (while vCPUs are being stopped), or stop that.
    pub fn set_abandon(&self, abandon: bool) {
        self.shared.lock().abandon = abandon;
        self.shared.changed.notify_all();
    }
}

impl Drop for ConsoleOutput {
    /// Let the writer thread write out what is buffered, waiting at most a few seconds for a
    /// terminal that does not read (the thread is then left to the process's exit).
    fn drop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut st = self.shared.lock();
        st.closed = true;
        st.abandon = true;
        self.shared.changed.notify_all();
        while !st.done {
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            st = self
                .shared
                .changed
                .wait_timeout(st, deadline - now)
                .map_or_else(|p| p.into_inner().0, |(g, _)| g);
        }
    }
}

impl std::io::Write for ConsoleSink {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let mut st = self.shared.lock();
        while st.buf.len() + data.len() > OUTPUT_BUFFER && !st.abandon {
            st = self
                .shared
                .changed
                .wait(st)
                .unwrap_or_else(|p| p.into_inner());
        }
        if !st.abandon {
            st.buf.extend(data);
            self.shared.changed.notify_all();
        }
        Ok(data.len())
    }

    /// The writer thread flushes after every chunk; nothing to do per byte.
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod output_tests {
    use super::*;
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Collect(Arc<Mutex<Vec<u8>>>);
    impl Write for Collect {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn everything_written_reaches_the_terminal_in_order() {
        let out = Collect::default();
        let console = ConsoleOutput::start(Box::new(out.clone())).unwrap();
        let mut sink = console.sink();
        let data: Vec<u8> = (0..3 * OUTPUT_BUFFER).map(|i| (i % 251) as u8).collect();
        for b in data.chunks(1) {
            sink.write_all(b).unwrap();
        }
        drop(console);
        assert_eq!(*out.0.lock().unwrap(), data);
    }

    struct Stuck;
    impl Write for Stuck {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            std::thread::sleep(Duration::from_secs(3600));
            Ok(0)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_terminal_that_never_reads_cannot_hold_a_writer_once_abandoned() {
        let console = ConsoleOutput::start(Box::new(Stuck)).unwrap();
        let mut sink = console.sink();
        let shared = console.shared.clone();
        let writer = std::thread::spawn(move || {
            for _ in 0..3 * OUTPUT_BUFFER / 4096 {
                sink.write_all(&[b'x'; 4096]).unwrap();
            }
        });
        // The writer fills the buffer and waits for room that never comes...
        while shared.lock().buf.len() + 4096 <= OUTPUT_BUFFER {
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(50));
        assert!(!writer.is_finished());
        // ...until the machine stops, which lets it go.
        console.set_abandon(true);
        writer.join().unwrap();
        // Dropping would wait (5 s) for the stuck terminal; nothing more to check here.
        std::mem::forget(console);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_escapes_within_a_second_end_the_vm() {
        let t0 = Instant::now();
        let mut d = EscapeDetector::default();
        assert!(!d.feed(&[ESCAPE, ESCAPE], t0));
        assert!(d.feed(&[ESCAPE], t0 + Duration::from_millis(900)));
    }

    #[test]
    fn native_mode_passes_bytes_through_and_ends_on_ctrl_a_x() {
        let mut e = NativeEscape::default();
        let mut out = std::collections::VecDeque::new();
        // Ctrl-] is an ordinary byte here; Ctrl-a a and Ctrl-a Ctrl-a send one Ctrl-a; Ctrl-a
        // then anything else sends both.
        assert!(!e.feed(b"ls\x1d\x1d\x1d\x01a|\x01\x01|\x01b", &mut out));
        assert_eq!(out.make_contiguous(), b"ls\x1d\x1d\x1d\x01|\x01|\x01b");
        out.clear();
        // The escape may be split across reads.
        assert!(!e.feed(b"q\x01", &mut out));
        assert!(e.feed(b"xzz", &mut out));
        assert_eq!(out.make_contiguous(), b"q");
    }

    #[test]
    fn slow_or_interrupted_escapes_do_not() {
        let t0 = Instant::now();
        let mut d = EscapeDetector::default();
        assert!(!d.feed(&[ESCAPE, ESCAPE], t0));
        assert!(!d.feed(&[ESCAPE], t0 + Duration::from_millis(1500)));
        let mut d = EscapeDetector::default();
        assert!(!d.feed(&[ESCAPE, ESCAPE, b'a', ESCAPE], t0));
        assert!(!d.feed(b"hello", t0));
    }
}
