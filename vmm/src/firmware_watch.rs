//! Noticing that UEFI firmware gave up.
//!
//! When OVMF has tried every boot option and none started (nothing bootable, or Secure Boot
//! refused every image), its boot manager prints [`MARKER`] on the console and waits for a key
//! before it shows its menu. Where the console takes no input (read-only, headless) or standard
//! input is no terminal (CI runs, services), nobody can press that key and the VM would sit
//! there for ever, as it does under vmspawn's QEMU. rvmspawn watches the firmware's serial
//! output for the line and ends the run with [`GAVE_UP`] and ENOEXEC instead. On an interactive
//! terminal the firmware is left waiting for the user, who may want that menu.

use std::io::Write;
use std::sync::Arc;

use crate::vcpu::{EventSlot, MachineEvent};

/// What OVMF's `PlatformBootManagerUnableToBoot` prints (after `BdsDxe: `), in every edk2
/// release since 2019.
pub const MARKER: &[u8] = b"No bootable option or device was found.";

/// The run's error message.
pub const GAVE_UP: &str = "The firmware found nothing it could boot (with Secure Boot on, it \
                           refuses every image not signed by a key in its db); stopping the VM.";

/// Passes console output through, reporting [`MachineEvent::NothingToBoot`] once when the
/// output contains [`MARKER`], however the writes split it.
pub struct BootFailureWatch {
    inner: Box<dyn Write + Send>,
    events: Arc<EventSlot>,
    /// How many bytes of the marker the output has matched so far.
    matched: usize,
    reported: bool,
}

impl BootFailureWatch {
    /// Watch what goes to `inner`; report to `events`.
    pub fn new(inner: Box<dyn Write + Send>, events: Arc<EventSlot>) -> Self {
        BootFailureWatch {
            inner,
            events,
            matched: 0,
            reported: false,
        }
    }

    fn scan(&mut self, buf: &[u8]) {
        for &b in buf {
            if self.reported {
                return;
            }
            // The marker's first byte occurs nowhere else in it, so a mismatch can only
            // restart a match at this byte.
            self.matched = if b == MARKER[self.matched] {
                self.matched + 1
            } else {
                usize::from(b == MARKER[0])
            };
            if self.matched == MARKER.len() {
                self.reported = true;
                self.events.report(MachineEvent::NothingToBoot);
            }
        }
    }
}

impl Write for BootFailureWatch {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.scan(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_marker_is_found_however_the_output_is_split() {
        assert!(!MARKER[1..].contains(&MARKER[0]));
        let text = b"BdsDxe: failed to load Boot0001: Access Denied\r\nBdsDxe: NoNo bootable option or device was found.\r\nBdsDxe: Press any key";
        for chunk in [1, 3, 7, text.len()] {
            let events = Arc::new(EventSlot::new().unwrap());
            let mut w = BootFailureWatch::new(Box::new(Vec::new()), events.clone());
            for part in text.chunks(chunk) {
                w.write_all(part).unwrap();
            }
            assert!(
                matches!(events.take(), Some(MachineEvent::NothingToBoot)),
                "chunks of {chunk}"
            );
        }
        // Anything else is passed through and never reported.
        let events = Arc::new(EventSlot::new().unwrap());
        let mut w = BootFailureWatch::new(Box::new(Vec::new()), events.clone());
        w.write_all(b"No bootable option or device was foun\r\nBdsDxe: loading Boot0001")
            .unwrap();
        assert!(events.take().is_none());
    }
}
