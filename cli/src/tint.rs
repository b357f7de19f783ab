//! The interactive console's default background tint, as systemd-vmspawn makes it when
//! `--background=` is not given: the terminal's own background colour, asked for with an OSC 11
//! query, turned green (hue 130) with a saturation that suits a light or a dark background.
//! `$SYSTEMD_TINT_BACKGROUND=0` turns it off, as in systemd; a terminal that does not answer
//! within a third of a second gets no tint.

use std::os::fd::RawFd;
use std::time::{Duration, Instant};

/// vmspawn's hue for a VM's console.
pub const HUE: f64 = 130.0;

/// How long the terminal has to answer the query.
const ANSWER_WITHIN: Duration = Duration::from_millis(333);

/// Whether the default tint applies: `$SYSTEMD_TINT_BACKGROUND` unset or true.
pub fn wanted(setting: Option<&std::ffi::OsStr>) -> bool {
    match setting.and_then(|s| s.to_str()) {
        None => true,
        Some(v) => !matches!(
            v.to_ascii_lowercase().as_str(),
            "0" | "no" | "n" | "false" | "f" | "off"
        ),
    }
}

/// The SGR parameters of the tint for a background of `rgb` (each 0.0 to 1.0).
pub fn tint_for(rgb: (f64, f64, f64), hue: f64) -> String {
    let (r, g, b) = rgb;
    let v = r.max(g).max(b) * 100.0;
    // A light background gets a pale tint, a dark one a strong one; never pure black.
    let s = if v > 50.0 { 25.0 } else { 75.0 };
    let v = v.max(20.0);
    let (r, g, b) = hsv_to_rgb(hue, s, v);
    format!("48;2;{r};{g};{b}")
}

/// HSV (hue in degrees, saturation and value in percent) to 8-bit RGB.
fn hsv_to_rgb(h: f64, s: f64, v: f64) -> (u8, u8, u8) {
    let (s, v) = (s / 100.0, v / 100.0);
    let c = v * s;
    let h = h.rem_euclid(360.0) / 60.0;
    let x = c * (1.0 - ((h % 2.0) - 1.0).abs());
    let (r, g, b) = match h as u32 {
        0 => (c, x, 0.0),
        1 => (x, c, 0.0),
        2 => (0.0, c, x),
        3 => (0.0, x, c),
        4 => (x, 0.0, c),
        _ => (c, 0.0, x),
    };
    let m = v - c;
    // Truncated, as systemd does (its own example, 48;2;12;51;19, is black's tint); the
    // epsilon keeps 0.2 * 255 at 51.
    let byte = |f: f64| ((f + m) * 255.0 + 1e-9).floor().clamp(0.0, 255.0) as u8;
    (byte(r), byte(g), byte(b))
}

/// Reads an answer `ESC ] 11 ; rgb:R/G/B` ended by BEL or `ESC \` (each component 1 to 4 hex
/// digits), whatever comes before it. `Some` once a whole answer has been seen.
#[derive(Debug, Default)]
pub struct AnswerScanner {
    buf: Vec<u8>,
}

impl AnswerScanner {
    /// Take more bytes of the terminal's input; the colour (each 0.0 to 1.0) once complete.
    pub fn feed(&mut self, bytes: &[u8]) -> Option<(f64, f64, f64)> {
        const START: &[u8] = b"\x1b]11;rgb:";
        self.buf.extend_from_slice(bytes);
        // Bounded: a terminal that sends something else for long gets no tint, not our memory.
        if self.buf.len() > 256 {
            let cut = self.buf.len() - 64;
            self.buf.drain(..cut);
        }
        let at = self.buf.windows(START.len()).position(|w| w == START)?;
        let rest = &self.buf[at + START.len()..];
        let end = rest
            .iter()
            .position(|b| *b == 0x07)
            .or_else(|| rest.windows(2).position(|w| w == b"\x1b\\"))?;
        let text = std::str::from_utf8(&rest[..end]).ok()?;
        let mut parts = text.split('/');
        let mut component = || -> Option<f64> {
            let p = parts.next()?;
            if p.is_empty() || p.len() > 4 {
                return None;
            }
            let value = u32::from_str_radix(p, 16).ok()?;
            Some(f64::from(value) / f64::from((1u32 << (4 * p.len())) - 1))
        };
        let colour = (component()?, component()?, component()?);
        parts.next().is_none().then_some(colour)
    }
}

/// Ask the terminal on `input`/`output` (both the same terminal) for its background colour:
/// echo and line editing off while waiting, restored after. `None` without an answer in time.
pub fn query_background(input: RawFd, output: RawFd) -> Option<(f64, f64, f64)> {
    // SAFETY: termios is plain data, filled by tcgetattr.
    let mut saved: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: a descriptor and a termios to write into.
    if unsafe { libc::tcgetattr(input, &mut saved) } != 0 {
        return None;
    }
    let mut quiet = saved;
    quiet.c_lflag &= !(libc::ICANON | libc::ECHO);
    quiet.c_cc[libc::VMIN] = 1;
    quiet.c_cc[libc::VTIME] = 0;
    // SAFETY: as above, with a valid termios.
    if unsafe { libc::tcsetattr(input, libc::TCSADRAIN, &quiet) } != 0 {
        return None;
    }
    let answer = (|| {
        let query = b"\x1b]11;?\x1b\\";
        // SAFETY: writing a buffer that lives for the call.
        let n = unsafe { libc::write(output, query.as_ptr().cast(), query.len()) };
        if n != query.len() as isize {
            return None;
        }
        let deadline = Instant::now() + ANSWER_WITHIN;
        let mut scanner = AnswerScanner::default();
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let mut p = libc::pollfd {
                fd: input,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd for the duration of the call.
            let ready = unsafe { libc::poll(&mut p, 1, left.as_millis().max(1) as i32) };
            if ready <= 0 {
                return None;
            }
            // One byte at a time: what the user types after the answer stays for the guest.
            let mut byte = 0u8;
            // SAFETY: reading one byte into a local.
            if unsafe { libc::read(input, (&mut byte as *mut u8).cast(), 1) } != 1 {
                return None;
            }
            if let Some(c) = scanner.feed(&[byte]) {
                return Some(c);
            }
        }
    })();
    // SAFETY: restoring the settings read above.
    unsafe { libc::tcsetattr(input, libc::TCSADRAIN, &saved) };
    answer
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_read_with_either_terminator_and_any_width() {
        let mut s = AnswerScanner::default();
        assert_eq!(s.feed(b"typed\x1b]11;rgb:ffff/ffff/ffff"), None);
        assert_eq!(s.feed(b"\x1b\\"), Some((1.0, 1.0, 1.0)));
        let mut s = AnswerScanner::default();
        assert_eq!(
            s.feed(b"\x1b]11;rgb:00/80/ff\x07"),
            Some((0.0, 128.0 / 255.0, 1.0))
        );
        let mut s = AnswerScanner::default();
        assert_eq!(s.feed(b"\x1b]11;rgb:0/0/0\x07"), Some((0.0, 0.0, 0.0)));
        for bad in [
            &b"\x1b]11;rgb:fffff/0/0\x07"[..],
            b"\x1b]11;rgb:g/0/0\x07",
            b"\x1b]11;rgb:0/0\x07",
            b"\x1b]11;rgb:0/0/0/0\x07",
            b"\x1b]11;rgb://\x07",
        ] {
            assert_eq!(AnswerScanner::default().feed(bad), None, "{bad:?}");
        }
        // Endless noise stays bounded.
        let mut s = AnswerScanner::default();
        for _ in 0..1000 {
            assert_eq!(s.feed(b"noise noise noise"), None);
        }
        assert!(s.buf.len() <= 256 + 17);
    }

    #[test]
    fn the_tint_is_green_pale_on_light_and_strong_on_dark() {
        // White: value 100, saturation 25.
        assert_eq!(tint_for((1.0, 1.0, 1.0), HUE), "48;2;191;255;201");
        // Black: value raised to 20, saturation 75.
        assert_eq!(tint_for((0.0, 0.0, 0.0), HUE), "48;2;12;51;19");
        // Hue 0 is red, 240 blue.
        assert_eq!(tint_for((1.0, 1.0, 1.0), 0.0), "48;2;255;191;191");
        assert_eq!(tint_for((1.0, 1.0, 1.0), 240.0), "48;2;191;191;255");
    }

    #[test]
    fn the_environment_can_turn_it_off() {
        assert!(wanted(None));
        assert!(wanted(Some("1".as_ref())));
        assert!(wanted(Some("yes".as_ref())));
        for off in ["0", "no", "false", "off", "NO"] {
            assert!(!wanted(Some(off.as_ref())), "{off}");
        }
    }
}
