//! x86_64 boot: memory layout, kernel loading (bzImage and ELF/PVH), ACPI tables and the
//! table-loader script that hands them to firmware.

pub mod acpi;
pub mod extract;
pub mod layout;
pub mod loader;
pub mod table_loader;
