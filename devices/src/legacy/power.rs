//! The ACPI sleep control, sleep status and reset registers of a hardware-reduced platform,
//! as the FADT built in `boot` describes them, and its power button.

use acpi_tables::Aml;
use acpi_tables::aml::{Device, EISAName, Interrupt, Method, Name, Notify, Path, ResourceTemplate};
use vmm_sys_util::eventfd::EventFd;

use crate::{AcpiDevice, BusDevice, GuestRequest, PowerButton, RequestSink};

/// The interrupt (an IOAPIC pin, edge-triggered, active high) of the power button's generic
/// event device on the hardware-reduced platform.
pub const POWER_BUTTON_GSI: u32 = 5;
/// The ACPI notification a power button sends when it is pressed.
const NOTIFY_BUTTON_PRESSED: u8 = 0x80;

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

/// The power button of the hardware-reduced platform, which has no fixed-feature button: a
/// control-method power button (`PNP0C0C`) and a generic event device (`ACPI0013`) whose
/// interrupt runs its `_EVT` method, which notifies the button. Linux's `evged` and `button`
/// drivers turn a press into a `KEY_POWER` input event (which systemd-logind acts on). The
/// press is an edge on [`POWER_BUTTON_GSI`] through an irqfd the VMM registered; the guest
/// cannot do anything to this device (it has no registers).
pub struct GedPowerButton {
    irq: EventFd,
}

impl std::fmt::Debug for GedPowerButton {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GedPowerButton").finish_non_exhaustive()
    }
}

impl GedPowerButton {
    /// A button that signals `irq`, an irqfd on [`POWER_BUTTON_GSI`].
    pub fn new(irq: EventFd) -> Self {
        GedPowerButton { irq }
    }
}

impl PowerButton for GedPowerButton {
    fn press(&self) {
        // An eventfd write fails only when its counter would overflow: presses are pending
        // then anyway.
        let _ = self.irq.write(1);
    }
}

impl AcpiDevice for GedPowerButton {
    /// `\_SB.PWRB` (the button) and `\_SB.GED0` (its event device, with `_EVT`).
    fn dsdt_aml(&self, aml: &mut Vec<u8>) {
        Device::new(
            Path::new("_SB_.PWRB"),
            vec![
                &Name::new(Path::new("_HID"), &EISAName::new("PNP0C0C")),
                &Name::new(Path::new("_UID"), &0u8),
            ],
        )
        .to_aml_bytes(aml);
        let interrupt = Interrupt::new(true, true, false, false, POWER_BUTTON_GSI);
        let resources = ResourceTemplate::new(vec![&interrupt]);
        let button = Path::new("\\_SB_.PWRB");
        let notify = Notify::new(&button, &NOTIFY_BUTTON_PRESSED);
        Device::new(
            Path::new("_SB_.GED0"),
            vec![
                &Name::new(Path::new("_HID"), &"ACPI0013"),
                &Name::new(Path::new("_UID"), &0u8),
                &Name::new(Path::new("_CRS"), &resources),
                // One event source: every interrupt is a press.
                &Method::new(Path::new("_EVT"), 1, true, vec![&notify]),
            ],
        )
        .to_aml_bytes(aml);
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

    #[test]
    fn a_press_is_one_edge_and_the_aml_names_button_and_event_device() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let button = GedPowerButton::new(irq.try_clone().unwrap());
        assert!(irq.read().is_err(), "nothing before a press");
        button.press();
        assert_eq!(irq.read().unwrap(), 1);
        let mut aml = Vec::new();
        button.dsdt_aml(&mut aml);
        let has = |needle: &[u8]| aml.windows(needle.len()).any(|w| w == needle);
        assert!(has(b"PWRB") && has(b"GED0") && has(b"_EVT") && has(b"ACPI0013\0"));
        // EISA ID of PNP0C0C, compressed: 0x41d00c0c.
        assert!(has(&[0x41, 0xd0, 0x0c, 0x0c]));
        // Notify (NotifyOp 0x86) of \_SB_.PWRB with 0x80.
        let notify = [&[0x86u8, b'\\', 0x2e][..], b"_SB_PWRB", &[0x0a, 0x80]].concat();
        assert!(has(&notify), "{aml:02x?}");
    }
}
