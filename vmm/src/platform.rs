//! What the two boot paths share when they build their platform: the machine's resources
//! handed to the path, and what the path hands back.

use std::sync::Arc;

use boot::{BootEntry, MemoryLayout, SmbiosInfo};
use devices::pci::PciBus;
use devices::virtio::GuestMemoryMmap;
use devices::{Contributions, PowerButton, RequestSink};
use kvm_ioctls::VmFd;

/// The boot-independent parts of one machine, already built, that a boot path builds its
/// platform on.
pub struct Context<'a> {
    /// The VM.
    pub vm: &'a Arc<VmFd>,
    /// Guest RAM.
    pub mem: &'a GuestMemoryMmap,
    /// Where RAM is.
    pub layout: &'a MemoryLayout,
    /// vCPU count.
    pub vcpus: u8,
    /// The SMBIOS content (identity and type 11 strings).
    pub smbios: &'a SmbiosInfo<'a>,
    /// Where chipset devices report power-off and reset.
    pub sink: RequestSink,
    /// What the registered devices contribute to the ACPI tables and fw_cfg (see
    /// `Machine::build`).
    pub contributions: Contributions,
    /// With SMM: TSEG's slot in the normal address space, for the MCH to open and close.
    pub tseg: Option<kvm_bindings::kvm_userspace_memory_region>,
}

/// A built platform.
pub struct Platform {
    /// The PCI bus with the virtio devices on it.
    pub pci: Arc<PciBus>,
    /// Where the boot CPU starts: a kernel entry point, or `None` for the reset vector (KVM's
    /// power-on state, for firmware).
    pub entry: Option<BootEntry>,
    /// Whatever must live as long as the machine (memory mappings behind memory slots).
    pub resources: Box<dyn std::any::Any + Send>,
    /// The ACPI power button (a graceful stop presses it).
    pub power_button: Arc<dyn PowerButton>,
}
