//! x86_64 boot: memory layout, kernel loading (bzImage and ELF/PVH) and ACPI tables.

pub mod acpi;
pub mod layout;
pub mod loader;
