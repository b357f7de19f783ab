//! The ACPI sleep control, sleep status and reset registers of a hardware-reduced platform,
//! as the FADT built in `boot` describes them.

use crate::{BusDevice, GuestRequest, RequestSink};

/// First port: sleep control; +1 sleep status; +2 reset.
pub const ACPI_POWER_PORT: u64 = 0x600;
/// Ports covered.
pub const ACPI_POWER_PORTS: u64 = 3;
const SLEEP_CONTROL: u64 = 0;
const RESET: u64 = 2;
const SLP_EN: u8 = 1 << 5;

/// Sleep control and reset registers.
pub struct AcpiPower {
    s5_sleep_type: u8,
    reset_value: u8,
    sink: RequestSink,
}

impl std::fmt::Debug for AcpiPower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcpiPower").finish_non_exhaustive()
    }
}

impl AcpiPower {
    /// Registers that report S5 (`SLP_TYP` = `s5_sleep_type` with `SLP_EN`) and resets (a
    /// write of `reset_value`) to `sink`.
    pub fn new(s5_sleep_type: u8, reset_value: u8, sink: RequestSink) -> Self {
        AcpiPower {
            s5_sleep_type,
            reset_value,
            sink,
        }
    }
}

impl BusDevice for AcpiPower {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Sleep status: never asleep, nothing pending.
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let [value] = data else { return };
        match offset {
            SLEEP_CONTROL if value & SLP_EN != 0 && (value >> 2) & 0x7 == self.s5_sleep_type => {
                (self.sink)(GuestRequest::PowerOff)
            }
            RESET if *value == self.reset_value => (self.sink)(GuestRequest::Reset),
            // Other sleep states are not offered in the DSDT; writes of them are ignored.
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn s5_powers_off_and_the_reset_value_resets() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let mut dev = AcpiPower::new(5, 1, Arc::new(move |r| s.lock().unwrap().push(r)));
        dev.write(SLEEP_CONTROL, &[5 << 2]); // no SLP_EN
        dev.write(SLEEP_CONTROL, &[(3 << 2) | SLP_EN]); // S3: not offered
        dev.write(RESET, &[2]);
        dev.write(SLEEP_CONTROL, &[(5 << 2) | SLP_EN, 0]); // wrong width
        assert!(seen.lock().unwrap().is_empty());
        dev.write(SLEEP_CONTROL, &[(5 << 2) | SLP_EN]);
        dev.write(RESET, &[1]);
        assert_eq!(
            *seen.lock().unwrap(),
            vec![GuestRequest::PowerOff, GuestRequest::Reset]
        );
    }
}
