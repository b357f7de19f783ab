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
        Terminal { saved: Some(saved) }
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        if let Some(saved) = &self.saved {
            // SAFETY: `saved` is the termios read from this fd at start.
            unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, saved) };
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
