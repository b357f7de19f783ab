//! Guest-visible devices. Nothing here knows about KVM or the command line: devices see port or
//! MMIO accesses through [`BusDevice`], raise interrupts through `EventFd`s that the VMM wires to
//! irqfds, and report guest power requests through a callback.

pub mod acpi;
pub mod bus;
pub mod chipset;
pub mod flash;
pub mod fw_cfg;
pub mod legacy;
pub mod pci;
pub mod smm;
pub mod thread;
pub mod tpm;
pub mod virtio;

pub use acpi::{AcpiDevice, Contributions};
pub use bus::{Bus, BusDevice};

/// A request from the guest to change the machine's power state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestRequest {
    /// Power off (ACPI S5).
    PowerOff,
    /// Reset the machine (ACPI reset register or the keyboard controller's reset line).
    Reset,
}

/// How a device tells the VMM about a [`GuestRequest`].
pub type RequestSink = std::sync::Arc<dyn Fn(GuestRequest) + Send + Sync>;

/// The machine's ACPI power button, as the VMM presses it to ask the guest to power off.
pub trait PowerButton: Send + Sync {
    /// Press (and release) the button: the guest's ACPI code sees one power-button event.
    fn press(&self);
}

/// How a device drives a level-triggered interrupt line (the SCI): `true` asserts it.
pub type IrqLevel = Box<dyn Fn(bool) + Send>;

/// Where devices report what the user must know and no caller can be told (a queue thread
/// that did not stop in time). The VMM installs its status writer, which knows the terminal's
/// mode; until then a report is a line on standard error.
static REPORTER: std::sync::OnceLock<fn(&str)> = std::sync::OnceLock::new();

/// Send every [`report`] to `writer` (the first call wins).
pub fn set_reporter(writer: fn(&str)) {
    let _ = REPORTER.set(writer);
}

/// Report `line` to the user.
pub fn report(line: &str) {
    match REPORTER.get() {
        Some(writer) => writer(line),
        None => eprintln!("{line}"),
    }
}
