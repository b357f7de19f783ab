//! Input devices through evdev (`/dev/input/eventN`, found by the name in
//! `/sys/class/input/eventN/device/name`), and `input`: the guest side of the graphical
//! console's keyboard and pointer tests, which reports the keys pressed on the virtio keyboard
//! and where the virtio tablet clicked.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::line;
use crate::sys;

pub const EV_SYN: u16 = 0;
pub const EV_KEY: u16 = 1;
pub const EV_ABS: u16 = 3;
pub const SYN_REPORT: u16 = 0;
pub const ABS_X: u16 = 0;
pub const ABS_Y: u16 = 1;
pub const BTN_LEFT: u16 = 0x110;

/// The names rvmspawn's virtio-input devices give (`VIRTIO_INPUT_CFG_ID_NAME`).
pub const KEYBOARD_NAME: &str = "rvmspawn Virtio Keyboard";
pub const TABLET_NAME: &str = "rvmspawn Virtio Tablet";
/// How long to wait for the devices to appear.
pub const DEVICE_WAIT: Duration = Duration::from_secs(20);
/// Default for `--timeout`: how long to wait for the keys and the click.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// `struct input_event` on x86_64: a 16-byte `struct timeval`, then type, code and value.
pub const EVENT_SIZE: usize = 24;

/// One evdev event, without its time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    pub kind: u16,
    pub code: u16,
    pub value: i32,
}

impl Event {
    pub fn parse(raw: &[u8]) -> Event {
        Event {
            kind: u16::from_ne_bytes([raw[16], raw[17]]),
            code: u16::from_ne_bytes([raw[18], raw[19]]),
            value: i32::from_ne_bytes([raw[20], raw[21], raw[22], raw[23]]),
        }
    }

    /// A key (or button) going down: not its release (0) or autorepeat (2).
    pub fn is_press(&self) -> bool {
        self.kind == EV_KEY && self.value == 1
    }
}

/// Every evdev device: (`eventN`, its name), sorted.
pub fn devices() -> Vec<(String, String)> {
    crate::class_devices("/sys/class/input", "device/name", |entry| {
        entry.starts_with("event")
    })
}

/// The node (`eventN`) of the evdev device named `name`, once its `/dev/input` node is there.
pub fn find(name: &str) -> Option<String> {
    devices()
        .into_iter()
        .find(|(node, n)| n == name && dev_path(node).exists())
        .map(|(node, _)| node)
}

pub fn dev_path(node: &str) -> PathBuf {
    PathBuf::from("/dev/input").join(node)
}

/// What `input` has seen so far.
#[derive(Debug, Default)]
pub struct Collector {
    /// How many key presses to collect.
    pub want_keys: usize,
    pub keys: Vec<u16>,
    keys_reported: bool,
    /// The tablet's latest absolute position.
    pub x: i32,
    pub y: i32,
    /// A left-button press waits for the end of its packet (SYN_REPORT), whose position may
    /// come after it.
    click_pending: bool,
    pub clicks: usize,
}

impl Collector {
    pub fn new(want_keys: usize) -> Collector {
        Collector {
            want_keys,
            ..Default::default()
        }
    }

    /// The keyboard's event; the line to print, if any.
    pub fn keyboard(&mut self, e: Event) -> Option<String> {
        if e.is_press() && self.keys.len() < self.want_keys {
            self.keys.push(e.code);
        }
        self.report_keys()
    }

    /// `RVMSPAWN-KEYS=` once all the keys are there (at once when none are wanted).
    pub fn report_keys(&mut self) -> Option<String> {
        if self.keys_reported || self.keys.len() < self.want_keys {
            return None;
        }
        self.keys_reported = true;
        Some(self.keys_line())
    }

    pub fn keys_line(&self) -> String {
        let codes: Vec<String> = self.keys.iter().map(u16::to_string).collect();
        format!("RVMSPAWN-KEYS={}", codes.join(","))
    }

    /// The tablet's event; the line to print, if any.
    pub fn tablet(&mut self, e: Event) -> Option<String> {
        match (e.kind, e.code) {
            (EV_ABS, ABS_X) => self.x = e.value,
            (EV_ABS, ABS_Y) => self.y = e.value,
            (EV_KEY, BTN_LEFT) if e.value == 1 => self.click_pending = true,
            (EV_SYN, SYN_REPORT) if self.click_pending => {
                self.click_pending = false;
                self.clicks += 1;
                return Some(format!("RVMSPAWN-CLICK={},{}", self.x, self.y));
            }
            _ => {}
        }
        None
    }

    pub fn done(&self) -> bool {
        self.keys_reported && self.clicks > 0
    }
}

/// Read what `dev` has (it is non-blocking) and hand each event to `handle`, printing the lines
/// it returns. `Ok(false)` when there was nothing to read.
fn drain(dev: &mut File, mut handle: impl FnMut(Event) -> Option<String>) -> std::io::Result<bool> {
    let mut buf = [0u8; EVENT_SIZE * 64];
    let n = match dev.read(&mut buf) {
        Ok(n) => n,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(false),
        Err(e) => return Err(e),
    };
    // evdev returns whole events only.
    for raw in buf[..n].chunks_exact(EVENT_SIZE) {
        if let Some(text) = handle(Event::parse(raw)) {
            line(&text);
        }
    }
    Ok(n > 0)
}

fn open(node: &str) -> Result<File, String> {
    let path = dev_path(node);
    OpenOptions::new()
        .read(true)
        .custom_flags(sys::O_NONBLOCK)
        .open(&path)
        .map_err(|e| format!("open {}: {e}", path.display()))
}

/// `input --keys N`: find the keyboard and the tablet (waiting up to `DEVICE_WAIT`), print
/// `RVMSPAWN-INPUT-DEVICES=keyboard:eventX,tablet:eventY` and `RVMSPAWN-INPUT-READY=1`, then
/// `RVMSPAWN-KEYS=C1,C2,...` (the codes of the first N key presses) and
/// `RVMSPAWN-CLICK=X,Y` for each left-button press of the tablet (its absolute position);
/// done after the keys and a click, or after `timeout`: `RVMSPAWN-INPUT-TIMEOUT=1` and
/// `RVMSPAWN-KEYS=` with the keys so far (when not printed yet). A failure:
/// `RVMSPAWN-INPUT-ERROR=WHAT: ERROR`. True when the keys and a click came.
pub fn run(want_keys: usize, keyboard: &str, tablet: &str, timeout: Duration) -> bool {
    match collect(want_keys, keyboard, tablet, timeout) {
        Ok(done) => done,
        Err(e) => {
            line(&format!("RVMSPAWN-INPUT-ERROR={e}"));
            false
        }
    }
}

fn collect(
    want_keys: usize,
    keyboard: &str,
    tablet: &str,
    timeout: Duration,
) -> Result<bool, String> {
    let found = crate::wait_for(DEVICE_WAIT, Duration::from_millis(10), || {
        Some((find(keyboard)?, find(tablet)?))
    });
    let Some((kbd_node, tab_node)) = found else {
        return Err(format!(
            "no input devices named \"{keyboard}\" and \"{tablet}\" after {} s; devices: {}",
            DEVICE_WAIT.as_secs(),
            crate::listing(&devices())
        ));
    };
    let mut kbd = open(&kbd_node)?;
    let mut tab = open(&tab_node)?;
    let mut seen = Collector::new(want_keys);
    // Where the pointer is already: a click before any motion reports it.
    for (axis, at) in [(ABS_X, &mut seen.x), (ABS_Y, &mut seen.y)] {
        match sys::evdev_abs(&tab, axis as u8) {
            Ok(info) => *at = info.value,
            Err(e) => line(&format!(
                "RVMSPAWN-INPUT-ERROR=ioctl EVIOCGABS({axis}) on {}: {e}",
                dev_path(&tab_node).display()
            )),
        }
    }
    line(&format!(
        "RVMSPAWN-INPUT-DEVICES=keyboard:{kbd_node},tablet:{tab_node}"
    ));
    line("RVMSPAWN-INPUT-READY=1");
    if let Some(text) = seen.report_keys() {
        line(&text);
    }
    let deadline = Instant::now() + timeout;
    while !seen.done() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            line("RVMSPAWN-INPUT-TIMEOUT=1");
            if !seen.keys_reported {
                line(&seen.keys_line());
            }
            return Ok(false);
        }
        let ready = sys::poll_readable(&[kbd.as_fd(), tab.as_fd()], left)
            .map_err(|e| format!("poll: {e}"))?;
        if ready[0] {
            drain(&mut kbd, |e| seen.keyboard(e))
                .map_err(|e| format!("read {}: {e}", dev_path(&kbd_node).display()))?;
        }
        if ready[1] {
            drain(&mut tab, |e| seen.tablet(e))
                .map_err(|e| format!("read {}: {e}", dev_path(&tab_node).display()))?;
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(kind: u16, code: u16, value: i32) -> [u8; EVENT_SIZE] {
        let mut b = [0u8; EVENT_SIZE];
        b[..8].copy_from_slice(&1234u64.to_ne_bytes());
        b[16..18].copy_from_slice(&kind.to_ne_bytes());
        b[18..20].copy_from_slice(&code.to_ne_bytes());
        b[20..24].copy_from_slice(&value.to_ne_bytes());
        b
    }

    fn ev(kind: u16, code: u16, value: i32) -> Event {
        Event::parse(&raw(kind, code, value))
    }

    #[test]
    fn parse() {
        assert_eq!(
            ev(EV_ABS, ABS_Y, -5),
            Event {
                kind: 3,
                code: 1,
                value: -5
            }
        );
    }

    #[test]
    fn keys_are_presses_only_up_to_n() {
        let mut c = Collector::new(3);
        let mut out = Vec::new();
        for (code, value) in [
            (30, 1),
            (30, 2),
            (30, 0),
            (48, 1),
            (48, 0),
            (46, 1),
            (18, 1),
        ] {
            out.extend(c.keyboard(ev(EV_KEY, code, value)));
            out.extend(c.keyboard(ev(EV_SYN, SYN_REPORT, 0)));
        }
        assert_eq!(out, ["RVMSPAWN-KEYS=30,48,46"]);
        assert_eq!(c.keys_line(), "RVMSPAWN-KEYS=30,48,46");
        assert!(!c.done());
        let mut none = Collector::new(0);
        assert_eq!(none.report_keys().as_deref(), Some("RVMSPAWN-KEYS="));
        assert_eq!(none.report_keys(), None);
    }

    #[test]
    fn a_click_reports_the_position_of_its_packet() {
        let mut c = Collector::new(0);
        c.report_keys();
        let mut out = Vec::new();
        // Motion, then a press whose position comes after the button in the same packet.
        for e in [
            ev(EV_ABS, ABS_X, 100),
            ev(EV_ABS, ABS_Y, 200),
            ev(EV_SYN, SYN_REPORT, 0),
            ev(EV_KEY, BTN_LEFT, 1),
            ev(EV_ABS, ABS_X, 16383),
            ev(EV_ABS, ABS_Y, 8191),
            ev(EV_SYN, SYN_REPORT, 0),
            ev(EV_KEY, BTN_LEFT, 0),
            ev(EV_SYN, SYN_REPORT, 0),
        ] {
            out.extend(c.tablet(e));
        }
        assert_eq!(out, ["RVMSPAWN-CLICK=16383,8191"]);
        assert!(c.done());
    }
}
