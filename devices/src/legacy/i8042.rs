//! The i8042 keyboard controller's one job in a VM: the CPU reset line, from `vm-superio`.
//!
//! Linux's `reboot=k` (and its fallback chain) writes 0xFE to port 0x64 after waiting for the
//! controller's input buffer to be empty; `vm-superio`'s controller reads as "empty" and turns
//! that command into a trigger, which here becomes a [`GuestRequest::Reset`].

use vm_superio::{I8042Device, Trigger};

use crate::{BusDevice, GuestRequest, RequestSink};

/// First port (data); the command/status port is at +4.
pub const I8042_PORT: u64 = 0x60;
/// Ports covered: 0x60 to 0x64.
pub const I8042_PORTS: u64 = 5;
#[cfg(test)]
const COMMAND_OFFSET: u64 = 4;
#[cfg(test)]
const CMD_RESET_CPU: u8 = 0xfe;

/// Turns the controller's reset trigger into a reset request.
struct ResetLine(RequestSink);

impl Trigger for ResetLine {
    type E = std::convert::Infallible;
    fn trigger(&self) -> Result<(), Self::E> {
        (self.0)(GuestRequest::Reset);
        Ok(())
    }
}

/// The keyboard controller's reset line.
pub struct I8042 {
    dev: I8042Device<ResetLine>,
    /// Reads of every port return all ones: "no controller" to firmware, whose PS/2 driver
    /// would otherwise spend seconds on keyboard self-test timeouts.
    reads_absent: bool,
}

impl std::fmt::Debug for I8042 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("I8042").finish_non_exhaustive()
    }
}

impl I8042 {
    /// A controller that reports a reset request to `sink`.
    pub fn new(sink: RequestSink) -> Self {
        I8042 {
            dev: I8042Device::new(ResetLine(sink)),
            reads_absent: false,
        }
    }

    /// A controller that reads as absent (status 0xFF, which OVMF's PS/2 keyboard driver takes
    /// as "no keyboard") but still resets the machine on command 0xFE.
    pub fn reset_only(sink: RequestSink) -> Self {
        I8042 {
            dev: I8042Device::new(ResetLine(sink)),
            reads_absent: true,
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if self.reads_absent {
            data.fill(0xff);
            return;
        }
        match (u8::try_from(offset), data) {
            (Ok(reg), [byte]) => *byte = self.dev.read(reg),
            (_, data) => data.fill(0),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(reg), [byte]) = (u8::try_from(offset), data) {
            let Ok(()) = self.dev.write(reg, *byte);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn only_the_reset_command_resets() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let mut dev = I8042::new(Arc::new(move |r| s.lock().unwrap().push(r)));
        let mut status = [0xffu8];
        dev.read(COMMAND_OFFSET, &mut status);
        assert_eq!(status, [0]);
        dev.write(COMMAND_OFFSET, &[0xad]);
        dev.write(0, &[CMD_RESET_CPU]);
        dev.write(COMMAND_OFFSET, &[CMD_RESET_CPU, 0]);
        assert!(seen.lock().unwrap().is_empty());
        dev.write(COMMAND_OFFSET, &[CMD_RESET_CPU]);
        assert_eq!(*seen.lock().unwrap(), vec![GuestRequest::Reset]);
    }

    #[test]
    fn reset_only_controller_reads_absent_and_still_resets() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let mut dev = I8042::reset_only(Arc::new(move |r| s.lock().unwrap().push(r)));
        let mut status = [0u8; 1];
        dev.read(COMMAND_OFFSET, &mut status);
        assert_eq!(status, [0xff]);
        dev.write(COMMAND_OFFSET, &[CMD_RESET_CPU]);
        assert_eq!(*seen.lock().unwrap(), vec![GuestRequest::Reset]);
    }
}
