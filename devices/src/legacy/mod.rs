//! The PC legacy devices a Linux guest expects: the 8250 UART, the i8042 reset line, the CMOS
//! RTC, and the ACPI power-management registers of a hardware-reduced platform.

pub mod cmos;
pub mod i8042;
pub mod power;
pub mod serial;

pub use cmos::Cmos;
pub use i8042::I8042;
pub use power::AcpiPower;
pub use serial::SerialConsole;
