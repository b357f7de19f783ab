//! The firmware path: UEFI firmware (the distribution's stock OVMF) starts at the reset vector
//! on a Q35 platform as vmspawn's QEMU `-M q35` presents it, and boots the disk (or a kernel
//! handed over through fw_cfg, as QEMU's `-kernel`).
//!
//! What the firmware finds:
//! - CODE flash read-only at the top of 4 GiB, the variable store (VARS) right below it as a
//!   CFI01 flash whose contents are the state file itself (a shared mapping: what the guest
//!   programs is in the file at once). In read-array mode both are read-only KVM memory slots,
//!   so reads never exit; the first flash command removes the VARS slot until the firmware
//!   returns to read-array mode.
//! - The MCH and ICH9 LPC bridge, the ICH9 PM block at 0x600, reset at 0xCF9 and port 0x92
//!   (`devices::chipset`), COM1, the RTC, a reset-only keyboard controller.
//! - fw_cfg with the CPU count, the e820 map, the boot order (the first disk), ACPI tables with
//!   their table-loader script, SMBIOS (a 3.0 entry point, so long credentials survive), and the
//!   kernel items when a kernel is booted through the firmware.
//! - virtio-pci devices whose BARs the firmware assigns; the 32-bit hole below the IOAPIC
//!   dispatches to ECAM (where PCIEXBAR puts it) and to whichever BAR decodes the address.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use boot::x86_64::layout::{FLASH_REGION_START, HIGH_RAM_START, IOAPIC_START};
use devices::Bus;
use devices::chipset::{
    self, Apm, ConfigAndReset, Ich9Pm, Ich9PowerButton, PM_BASE, PM_PORTS, Port92, Q35Hole,
};
use devices::flash::{Cfi01Flash, FlashBacking, RomMode};
use devices::fw_cfg::{FW_CFG_PORT, FW_CFG_PORTS, FwCfg};
use devices::legacy::I8042;
use devices::legacy::i8042::{I8042_PORT, I8042_PORTS};
use devices::virtio::VirtioDevice;
use kvm_bindings::{KVM_MEM_READONLY, kvm_userspace_memory_region};
use kvm_ioctls::VmFd;

use crate::Error;
use crate::machine::attach;
use crate::platform::{Context, Platform};

/// Flash sector size (OVMF's block size).
const FLASH_BLOCK: u64 = 4096;
/// KVM memory slots of the two flash devices (RAM takes the first few).
const CODE_SLOT: u32 = 8;
const VARS_SLOT: u32 = 9;
/// SCI interrupt (ICH9 ACPI_CNTL select 0).
const SCI_IRQ: u8 = 9;
/// The reset register value the FADT advertises.
const RESET_VALUE: u8 = 0x06;
/// The I/O window OVMF assigns PCI I/O BARs from on Q35.
const PCI_IO_WINDOW: (u16, u16) = (0x6000, 0xffff);
/// TSEG's size with SMM: QEMU's default extended TSEG for `-M q35` (16 MiB).
pub const TSEG_MBYTES: u16 = 16;
/// The same in bytes.
pub const TSEG_BYTES: u64 = (TSEG_MBYTES as u64) << 20;
/// An MSI that delivers an SMI: delivery mode 010 in bits 10:8 of the data; the address
/// names the APIC ID in bits 19:12.
const MSI_ADDRESS_BASE: u32 = 0xfee0_0000;
const MSI_DATA_SMI: u32 = 0x200;

/// fw_cfg item keys (QEMU's numbering, which OVMF reads).
mod key {
    pub const NB_CPUS: u16 = 0x05;
    pub const MAX_CPUS: u16 = 0x0f;
    pub const KERNEL_SIZE: u16 = 0x08;
    pub const INITRD_SIZE: u16 = 0x0b;
    pub const KERNEL_DATA: u16 = 0x11;
    pub const INITRD_DATA: u16 = 0x12;
    pub const CMDLINE_SIZE: u16 = 0x14;
    pub const CMDLINE_DATA: u16 = 0x15;
    pub const SETUP_SIZE: u16 = 0x17;
    pub const SETUP_DATA: u16 = 0x18;
}

/// A firmware boot, as kept for the whole run.
#[derive(Debug, Clone)]
pub struct Firmware {
    /// The firmware code (the descriptor's executable), opened once.
    pub code: Arc<File>,
    /// The variable store for this run (the state file, or a private copy), read-write.
    pub vars: Arc<File>,
    /// A kernel booted through the firmware (`--linux` with `--firmware=uefi|PATH`).
    pub kernel: Option<Arc<FirmwareKernel>>,
    /// The firmware needs SMM (its descriptor's `requires-smm`: every Secure Boot build of
    /// OVMF): SMRAM in TSEG, SMIs from the APM port, a variable store only SMM can program.
    pub smm: bool,
}

/// A kernel for the firmware to boot, read once at start (a guest reboot boots the same one).
#[derive(Debug)]
pub struct FirmwareKernel {
    /// The whole kernel file: an EFI-stub bzImage or a UKI (shared with each boot's fw_cfg,
    /// not copied).
    pub kernel: Arc<[u8]>,
    /// The initrds, concatenated.
    pub initrd: Arc<[u8]>,
    /// The command line; `None` for a UKI, whose own `.cmdline` applies (extra arguments reach
    /// its stub as SMBIOS strings, as with vmspawn).
    pub cmdline: Option<String>,
}

/// A file mapped into our address space for a memory slot; unmapped on drop.
struct Mapping {
    addr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is plain memory; every access goes through bounds-checked copies, and
// the guest's own concurrent access is what guest memory always is.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Map `len` bytes of `file`: shared and writable (the variable store), or private and
    /// read-only (the code).
    fn new(file: &File, len: usize, shared_rw: bool) -> Result<Self, Error> {
        let (prot, flags) = if shared_rw {
            (libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED)
        } else {
            (libc::PROT_READ, libc::MAP_PRIVATE)
        };
        // SAFETY: a new mapping of a file we hold open; the result is checked.
        let p = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, flags, file.as_raw_fd(), 0) };
        if p == libc::MAP_FAILED {
            return Err(Error::Host(
                "mapping the firmware flash",
                std::io::Error::last_os_error(),
            ));
        }
        Ok(Mapping {
            addr: p.cast(),
            len,
        })
    }

    /// The slot in the normal address space and, with SMM, the same in SMM's.
    fn regions(&self, slot: u32, gpa: u64, smm: bool) -> Vec<kvm_userspace_memory_region> {
        let mut v = vec![self.region(slot, gpa)];
        if smm {
            v.push(self.region(crate::memory::SMM_ADDRESS_SPACE | slot, gpa));
        }
        v
    }

    fn region(&self, slot: u32, gpa: u64) -> kvm_userspace_memory_region {
        kvm_userspace_memory_region {
            slot,
            flags: KVM_MEM_READONLY,
            guest_phys_addr: gpa,
            memory_size: self.len as u64,
            userspace_addr: self.addr as u64,
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: our own mapping, unmapped once; KVM's slot is gone with the VM, which the
        // machine drops first.
        unsafe { libc::munmap(self.addr.cast(), self.len) };
    }
}

/// The variable store's bytes, for the flash device.
struct VarsBacking(Arc<Mapping>);

impl FlashBacking for VarsBacking {
    fn len(&self) -> u64 {
        self.0.len as u64
    }

    fn read(&self, offset: u64, buf: &mut [u8]) {
        buf.fill(0xff);
        let Some(range) = checked_range(offset, buf.len(), self.0.len) else {
            return;
        };
        // SAFETY: `range` lies inside the live mapping (checked above); `buf` is ours.
        unsafe {
            std::ptr::copy_nonoverlapping(self.0.addr.add(range.start), buf.as_mut_ptr(), buf.len())
        };
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(range) = checked_range(offset, data.len(), self.0.len) else {
            return;
        };
        // SAFETY: `range` lies inside the live, writable mapping (checked above).
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.0.addr.add(range.start), data.len())
        };
    }
}

fn checked_range(offset: u64, len: usize, size: usize) -> Option<std::ops::Range<usize>> {
    let start = usize::try_from(offset).ok()?;
    let end = start.checked_add(len)?;
    (end <= size).then_some(start..end)
}

/// Maps and unmaps the variable store's read-only memory slot as the flash enters and leaves
/// read-array mode.
struct VarsSlot {
    vm: Arc<VmFd>,
    mapping: Arc<Mapping>,
    gpa: u64,
    /// The slot is in SMM's address space too.
    smm: bool,
}

impl RomMode for VarsSlot {
    fn set_read_array(&mut self, read_array: bool) {
        for mut region in self.mapping.regions(VARS_SLOT, self.gpa, self.smm) {
            if !read_array {
                region.memory_size = 0;
            }
            // SAFETY: the region describes our live mapping (kept alive by `self.mapping`,
            // which the device and so this hook hold for as long as the VM); size 0 deletes
            // the slot.
            if let Err(e) = unsafe { self.vm.set_user_memory_region(region) } {
                // The guest then reads the flash through the device (slot still there) or the
                // device answers every read (slot gone): slower, never wrong.
                debug!("Failed to switch the variable store's memory slot: {e}");
            }
        }
    }
}

/// Where the two flash devices go: CODE ends at 4 GiB, VARS right below it.
fn flash_layout(code_len: u64, vars_len: u64) -> Result<(u64, u64), Error> {
    let bad = |why: String| Error::Firmware(why, libc::EINVAL);
    for (what, len) in [("code", code_len), ("variable store", vars_len)] {
        if len == 0 || len % FLASH_BLOCK != 0 {
            return Err(bad(format!(
                "The firmware {what} is {len} bytes, not a whole number of 4 KiB blocks"
            )));
        }
    }
    let total = code_len + vars_len;
    if total > HIGH_RAM_START - FLASH_REGION_START {
        return Err(bad(format!(
            "The firmware code and variable store take {total} bytes; at most 16 MiB fit below 4 GiB"
        )));
    }
    let code = HIGH_RAM_START - code_len;
    Ok((code, code - vars_len))
}

fn file_len(f: &File) -> Result<u64, Error> {
    f.metadata()
        .map(|m| m.len())
        .map_err(|e| Error::Host("reading the firmware's size", e))
}

/// The e820 map fw_cfg gives the firmware: RAM only, as QEMU's `etc/e820`.
fn e820(layout: &boot::MemoryLayout) -> Vec<u8> {
    let mut out = Vec::new();
    for r in &layout.ram {
        out.extend_from_slice(&r.start.0.to_le_bytes());
        out.extend_from_slice(&r.size.to_le_bytes());
        out.extend_from_slice(&1u32.to_le_bytes());
    }
    out
}

/// OVMF's boot order file: the Open Firmware path of the virtio disk at `slot`, as QEMU
/// writes it for a virtio-blk device on the root bus.
fn bootorder(slot: u8) -> Vec<u8> {
    format!("/pci@i0cf8/scsi@{slot:x}/disk@0,0\0").into_bytes()
}

fn fw_cfg_err(e: impl std::fmt::Display) -> Error {
    Error::Device("fw_cfg", e.to_string())
}

/// Build the Q35 platform for `boot`: flash, chipset, fw_cfg and PCI.
pub fn build(
    ctx: &Context,
    boot: &Firmware,
    virtio: Vec<Box<dyn VirtioDevice>>,
    io: &mut Bus,
    mmio: &mut Bus,
) -> Result<Platform, Error> {
    let (code_len, vars_len) = (file_len(&boot.code)?, file_len(&boot.vars)?);
    let (code_gpa, vars_gpa) = flash_layout(code_len, vars_len)?;
    let code = Arc::new(Mapping::new(&boot.code, code_len as usize, false)?);
    let vars = Arc::new(Mapping::new(&boot.vars, vars_len as usize, true)?);
    let smm = ctx.tseg.is_some();
    for (m, slot, gpa) in [(&code, CODE_SLOT, code_gpa), (&vars, VARS_SLOT, vars_gpa)] {
        for region in m.regions(slot, gpa, smm) {
            // SAFETY: the region describes a live mapping that `Platform::resources` keeps
            // until after the VM is gone; the flash range lies above RAM and the hole's
            // devices.
            unsafe { ctx.vm.set_user_memory_region(region) }
                .map_err(|e| Error::Kvm("KVM_SET_USER_MEMORY_REGION (flash)", e.errno()))?;
        }
    }
    let mut flash = Cfi01Flash::new(
        Box::new(VarsBacking(vars.clone())),
        Box::new(VarsSlot {
            vm: ctx.vm.clone(),
            mapping: vars.clone(),
            gpa: vars_gpa,
            smm,
        }),
        FLASH_BLOCK,
    );
    if smm {
        // As QEMU's `-drive if=pflash` with `secure=on`, which vmspawn asks for with SMM.
        flash = flash.secure();
    }
    attach(
        mmio,
        "flash",
        vars_gpa,
        vars_len,
        Arc::new(Mutex::new(flash)),
    )?;

    let tseg = ctx.tseg.map(|region| chipset::Tseg {
        mbytes: TSEG_MBYTES,
        control: Box::new(crate::memory::TsegSlot {
            vm: ctx.vm.clone(),
            region,
        }),
    });
    let (mut bus, pciexbar, smi_lock) = chipset::q35_bus_with(tseg);
    let slots = crate::pci::add_virtio(&mut bus, ctx.vm, ctx.mem, virtio, true)?;
    let pci = Arc::new(bus);
    let sink = &ctx.sink;
    attach(
        io,
        "pci-config+reset",
        devices::pci::CONFIG_IO_PORT,
        devices::pci::CONFIG_IO_PORTS,
        Arc::new(Mutex::new(ConfigAndReset::new(pci.clone(), sink.clone()))),
    )?;
    // The SCI is level-triggered (the MADT's override): driven with KVM_IRQ_LINE.
    let vm = ctx.vm.clone();
    let sci: devices::IrqLevel = Box::new(move |level| {
        let _ = vm.set_irq_line(u32::from(SCI_IRQ), level);
    });
    let pm = Arc::new(Mutex::new(Ich9Pm::with_smi_lock(
        sink.clone(),
        Some(sci),
        smi_lock,
    )));
    attach(io, "ich9-pm", PM_BASE, PM_PORTS, pm.clone())?;
    // SMIs: broadcast once the firmware negotiates it through fw_cfg (below).
    let smi_broadcast = Arc::new(AtomicBool::new(false));
    if smm {
        attach(
            io,
            "apm",
            chipset::APM_PORT,
            chipset::APM_PORTS,
            Arc::new(Mutex::new(Apm::new(
                pm.clone(),
                smi_broadcast.clone(),
                smi_trigger(ctx.vm.clone(), ctx.vcpus),
            ))),
        )?;
    }
    attach(
        io,
        "port92",
        chipset::PORT_92,
        1,
        Arc::new(Mutex::new(Port92::new(sink.clone()))),
    )?;
    attach(
        io,
        "i8042",
        I8042_PORT,
        I8042_PORTS,
        Arc::new(Mutex::new(I8042::reset_only(sink.clone()))),
    )?;
    let hole_start = ctx.layout.low_ram_end();
    attach(
        mmio,
        "pci-hole",
        hole_start,
        IOAPIC_START - hole_start,
        Arc::new(Mutex::new(Q35Hole::new(hole_start, pciexbar, pci.clone()))),
    )?;

    let mut fw_cfg = FwCfg::new(ctx.mem.clone());
    if smm {
        // Broadcast only: QEMU also offers SMIs on CPU hotplug and unplug, which need its CPU
        // hotplug controller; a machine without CPU hotplug offers neither.
        fw_cfg
            .add_smi_negotiation(devices::fw_cfg::SMI_F_BROADCAST, smi_broadcast)
            .map_err(fw_cfg_err)?;
    }
    let cpus = u16::from(ctx.vcpus).to_le_bytes().to_vec();
    fw_cfg.add_item(key::NB_CPUS, cpus.clone());
    fw_cfg.add_item(key::MAX_CPUS, cpus);
    fw_cfg
        .add_file("etc/e820", e820(ctx.layout))
        .map_err(fw_cfg_err)?;
    // The boot disk is the first virtio device (the disks come first).
    if let Some(&first) = slots.first().filter(|_| boot.kernel.is_none()) {
        fw_cfg
            .add_file("bootorder", bootorder(first))
            .map_err(fw_cfg_err)?;
    }
    let acpi = boot::build_firmware_acpi(&boot::FirmwareAcpiInfo {
        vcpus: ctx.vcpus,
        pm_base: PM_BASE as u16,
        sci_irq: SCI_IRQ,
        reset: (chipset::RESET_CONTROL_PORT as u16, RESET_VALUE),
        ecam: (chipset::ECAM_BASE, chipset::ECAM_SIZE, 255),
        pci_io: PCI_IO_WINDOW,
        pci_mmio32: mmio32_windows(hole_start),
        pci_mmio64: None,
        devices_aml: ctx.contributions.aml.clone(),
        extra_tables: ctx.contributions.tables.clone(),
    })
    .map_err(|e| Error::Firmware(format!("Failed to build the ACPI tables: {e}"), e.errno()))?;
    fw_cfg
        .add_file("etc/acpi/tables", acpi.tables)
        .map_err(fw_cfg_err)?;
    fw_cfg
        .add_file("etc/acpi/rsdp", acpi.rsdp)
        .map_err(fw_cfg_err)?;
    fw_cfg
        .add_file("etc/table-loader", acpi.loader)
        .map_err(fw_cfg_err)?;
    let (anchor, tables) = boot::smbios_fw_cfg(ctx.smbios)?;
    fw_cfg
        .add_file("etc/smbios/smbios-anchor", anchor)
        .map_err(fw_cfg_err)?;
    fw_cfg
        .add_file("etc/smbios/smbios-tables", tables)
        .map_err(fw_cfg_err)?;
    for (name, content) in &ctx.contributions.fw_cfg_files {
        fw_cfg.add_file(name, content.clone()).map_err(fw_cfg_err)?;
    }
    if let Some(k) = &boot.kernel {
        add_kernel(&mut fw_cfg, k)?;
    }
    attach(
        io,
        "fw_cfg",
        FW_CFG_PORT,
        FW_CFG_PORTS,
        Arc::new(Mutex::new(fw_cfg)),
    )?;

    Ok(Platform {
        pci,
        entry: None,
        resources: Box::new((code, vars)),
        power_button: Arc::new(Ich9PowerButton(pm)),
    })
}

/// Raise SMIs with KVM_SIGNAL_MSI (delivery mode SMI): the in-kernel local APIC makes the
/// target vCPU enter SMM before its next instruction, from any thread, without taking the vCPU
/// out of KVM_RUN first (what KVM_SMI, a vCPU ioctl, would need). Without broadcast only the
/// vCPU whose port write this is gets it, as on QEMU.
fn smi_trigger(vm: Arc<VmFd>, vcpus: u8) -> chipset::SmiTrigger {
    Box::new(move |broadcast| {
        let targets = if broadcast {
            0..u32::from(vcpus)
        } else {
            match crate::vcpu::current() {
                Some(id) => id..id + 1,
                None => return,
            }
        };
        for id in targets {
            let msi = kvm_bindings::kvm_msi {
                address_lo: MSI_ADDRESS_BASE | (id << 12),
                data: MSI_DATA_SMI,
                ..Default::default()
            };
            if let Err(e) = vm.signal_msi(msi) {
                debug!("Failed to raise an SMI on vCPU {id}: {e}");
            }
        }
    })
}

/// The 32-bit PCI windows the DSDT announces: from the end of low RAM to the ECAM window, and
/// from above it to the IOAPIC. OVMF assigns BARs inside these; Linux keeps its assignment.
fn mmio32_windows(low_ram_end: u64) -> Vec<(u64, u64)> {
    let mut w = Vec::with_capacity(2);
    if low_ram_end < chipset::ECAM_BASE {
        w.push((low_ram_end, chipset::ECAM_BASE - low_ram_end));
    }
    let above = chipset::ECAM_BASE + chipset::ECAM_SIZE;
    w.push((above, IOAPIC_START - above));
    w
}

/// QEMU's `-kernel` items, as OVMF's kernel loader reads them: the whole kernel file as the
/// kernel with an empty setup part (OVMF joins setup and kernel back into one file and hands
/// it to LoadImage), the initrd, and the command line with its NUL.
fn add_kernel(fw_cfg: &mut FwCfg, k: &FirmwareKernel) -> Result<(), Error> {
    let size = |len: usize| {
        u32::try_from(len)
            .map(|l| l.to_le_bytes().to_vec())
            .map_err(|_| Error::Firmware("The kernel or initrd is over 4 GiB".into(), libc::EFBIG))
    };
    fw_cfg.add_item(key::SETUP_SIZE, size(0)?);
    fw_cfg.add_item(key::SETUP_DATA, Vec::<u8>::new());
    fw_cfg.add_item(key::KERNEL_SIZE, size(k.kernel.len())?);
    fw_cfg.add_item(key::KERNEL_DATA, k.kernel.clone());
    if !k.initrd.is_empty() {
        fw_cfg.add_item(key::INITRD_SIZE, size(k.initrd.len())?);
        fw_cfg.add_item(key::INITRD_DATA, k.initrd.clone());
    }
    if let Some(cmdline) = &k.cmdline {
        let mut c = cmdline.clone().into_bytes();
        c.push(0);
        fw_cfg.add_item(key::CMDLINE_SIZE, size(c.len())?);
        fw_cfg.add_item(key::CMDLINE_DATA, c);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debian_ovmf_flash_lands_where_ovmf_expects_it() {
        // OVMF_CODE_4M.fd + OVMF_VARS_4M.fd: VARS at 0xFFC00000, CODE above it to 4 GiB.
        let (code, vars) = flash_layout(0x37_c000, 0x8_4000).unwrap();
        assert_eq!(vars, 0xffc0_0000);
        assert_eq!(code, 0xffc8_4000);
        assert!(flash_layout(0x37_c001, 0x8_4000).is_err());
        assert!(flash_layout(16 << 20, 4096).is_err());
        assert!(flash_layout(0, 4096).is_err());
    }

    #[test]
    fn fw_cfg_content_is_in_qemus_formats() {
        let layout = boot::MemoryLayout::q35(3 << 30);
        let map = e820(&layout);
        assert_eq!(map.len(), 40);
        assert_eq!(&map[8..16], &0x8000_0000u64.to_le_bytes());
        assert_eq!(&map[20..28], &HIGH_RAM_START.to_le_bytes());
        assert_eq!(bootorder(3), b"/pci@i0cf8/scsi@3/disk@0,0\0");
        assert_eq!(bootorder(0x1e), b"/pci@i0cf8/scsi@1e/disk@0,0\0");
        let w = mmio32_windows(512 << 20);
        assert_eq!(w[0], (512 << 20, 0xb000_0000 - (512 << 20)));
        assert_eq!(w[1], (0xc000_0000, IOAPIC_START - 0xc000_0000));
    }
}
