//! Everything the guest needs in memory before its first instruction: the kernel, initrd and
//! command line, the boot protocol structures and the firmware tables (ACPI, SMBIOS), written
//! into guest memory for a direct boot or built as fw_cfg files for UEFI firmware.
//!
//! These are pure functions over guest memory and bytes: nothing here touches KVM, so all of it
//! can be unit-tested (and fuzzed) without a hypervisor.

pub mod bls;
pub mod gpt;
pub mod measure;
pub mod smbios;
pub mod uki;
pub mod x86_64;

pub use bls::{BlsError, find_boot_entry};
pub use gpt::{GptError, RootArg, discover_root};
pub use smbios::{
    SMBIOS_ANCHOR_FILE, SMBIOS_TABLES_FILE, SmbiosError, SmbiosInfo, parse_uuid, smbios_fw_cfg,
    uuid_from_name, write_smbios,
};
pub use uki::{Uki, UkiError, parse_uki};
pub use x86_64::acpi::{
    AcpiInfo, FirmwareAcpi, FirmwareAcpiError, FirmwareAcpiInfo, build_acpi_tables,
    build_firmware_acpi,
};
pub use x86_64::layout::{MemoryLayout, RamRange};
pub use x86_64::loader::{
    BootEntry, BootError, Extraction, KernelFormat, KernelPath, LoadedKernel, PreparedKernel,
    load_kernel, prepare_kernel,
};
pub use x86_64::table_loader::{TableLoader, TableLoaderError};

/// The guest physical memory type used by the whole VMM.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;
