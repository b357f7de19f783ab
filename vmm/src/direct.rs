//! The direct-boot path: rvmspawn loads the kernel and initrds itself and starts the kernel at
//! its entry point, on a minimal hardware-reduced ACPI platform (sleep and reset registers, no
//! chipset), with ACPI and SMBIOS tables written straight into guest memory. No firmware runs:
//! this is the fast path for `--linux=`.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use boot::AcpiInfo;
use boot::x86_64::acpi::{RESET_VALUE, S5_SLEEP_TYPE};
use boot::x86_64::layout::{PCI_ECAM_SIZE, PCI_ECAM_START, PCI_MMIO_SIZE, PCI_MMIO_START};
use devices::Bus;
use devices::legacy::i8042::{I8042_PORT, I8042_PORTS};
use devices::legacy::power::{ACPI_POWER_PORT, ACPI_POWER_PORTS, GedPowerButton, POWER_BUTTON_GSI};
use devices::legacy::{AcpiPower, I8042};
use devices::virtio::VirtioDevice;

use crate::Error;
use crate::machine::attach;
use crate::platform::{Context, Platform};

/// A kernel booted directly.
#[derive(Debug, Clone)]
pub struct DirectBoot {
    /// Kernel image.
    pub kernel: PathBuf,
    /// Initrds.
    pub initrds: Vec<PathBuf>,
    /// Full kernel command line.
    pub cmdline: String,
    /// The kernel, its bzImage payload extracted when it could be ([`boot::prepare_kernel`]).
    pub prepared: Arc<boot::PreparedKernel>,
}

/// Load the kernel, write the boot tables and attach the platform devices.
pub fn build(
    ctx: &Context,
    boot: &DirectBoot,
    virtio: Vec<Box<dyn VirtioDevice>>,
    io: &mut Bus,
    mmio: &mut Bus,
) -> Result<Platform, Error> {
    let mem = ctx.mem;
    let loaded = boot::load_kernel(
        mem,
        ctx.layout,
        &boot.kernel,
        &boot.initrds,
        &boot.cmdline,
        &boot.prepared,
    )?;
    crate::log::phase("kernel loaded");
    // Which way a bzImage went (tests/tests/kernel_extract.rs reads these lines).
    match &loaded.path {
        boot::KernelPath::AsIs => {}
        boot::KernelPath::Extracted { compression, cache } => debug!(
            "Kernel: bzImage payload ({compression}) extracted to {cache}, booting through PVH"
        ),
        boot::KernelPath::Fallback(why) => {
            debug!("Kernel: booting the bzImage through the 64-bit boot protocol: {why}")
        }
    }
    // Which entry the kernel gets, for debugging (and for the test that a vmlinux with a PVH
    // note really boots through PVH, tests/tests/boot.rs).
    match loaded.entry {
        boot::BootEntry::Pvh { rip, .. } => {
            debug!(
                "Booting {} through its PVH entry at {rip:#x}",
                boot.kernel.display()
            )
        }
        boot::BootEntry::Linux64 { rip, .. } => debug!(
            "Booting {} through its 64-bit Linux entry at {rip:#x}",
            boot.kernel.display()
        ),
    }
    boot::x86_64::loader::write_boot_cpu_tables(mem)?;
    boot::x86_64::loader::write_reset_vector(mem)?;
    // The power button belongs to this platform (the firmware path's is the PM block's).
    let button_irq = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)
        .map_err(|e| Error::Host("eventfd", e))?;
    ctx.vm
        .register_irqfd(&button_irq, POWER_BUTTON_GSI)
        .map_err(|e| Error::Kvm("KVM_IRQFD", e.errno()))?;
    let button = GedPowerButton::new(button_irq);
    let mut devices_aml = ctx.contributions.aml.clone();
    devices::AcpiDevice::dsdt_aml(&button, &mut devices_aml);
    boot::build_acpi_tables(
        mem,
        &AcpiInfo {
            vcpus: ctx.vcpus,
            sleep_control_port: ACPI_POWER_PORT as u16,
            sleep_status_port: ACPI_POWER_PORT as u16 + 1,
            reset_port: ACPI_POWER_PORT as u16 + 2,
            pci_ecam: (PCI_ECAM_START, PCI_ECAM_SIZE),
            pci_mmio: (PCI_MMIO_START, PCI_MMIO_SIZE),
            devices_aml,
            extra_tables: ctx.contributions.tables.clone(),
        },
    )?;
    boot::write_smbios(mem, ctx.smbios)?;
    attach(
        io,
        "i8042",
        I8042_PORT,
        I8042_PORTS,
        Arc::new(Mutex::new(I8042::new(ctx.sink.clone()))),
    )?;
    attach(
        io,
        "acpi-power",
        ACPI_POWER_PORT,
        ACPI_POWER_PORTS,
        Arc::new(Mutex::new(AcpiPower::new(
            S5_SLEEP_TYPE,
            RESET_VALUE,
            ctx.sink.clone(),
        ))),
    )?;
    let pci = crate::pci::build(ctx.vm, mem, virtio, io, mmio)?;
    Ok(Platform {
        pci,
        entry: Some(loaded.entry),
        resources: Box::new(()),
        power_button: Arc::new(button),
    })
}
