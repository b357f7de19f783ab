//! ACPI tables for a boot through UEFI firmware (OVMF) on a Q35-like PC, handed over as fw_cfg
//! files: the tables in one blob (`etc/acpi/tables`), the RSDP in another (`etc/acpi/rsdp`)
//! and the [table-loader](crate::x86_64::table_loader) script (`etc/table-loader`) that tells
//! the firmware where the pointers between them are and which checksums to fix.
//!
//! Unlike the direct-boot tables this is a full (not hardware-reduced) ACPI PC: the ICH9 power
//! management block (PM1 event and control, PM timer, GPE0) at the PMBASE the firmware
//! programs, an SCI, the 0xCF9 reset register, legacy devices with an 8042, and the PICs
//! beside the IOAPIC.
//!
//! How OVMF consumes them: it runs the script, then installs (copies) every table an
//! ADD_POINTER points at that is a FACS or carries a valid checksum, except the RSDT/XSDT and
//! the RSDP, which it builds itself, linking the FADT to its copies of the FACS and DSDT. So
//! the FADT points at the FACS and DSDT, and the XSDT at every other table, the devices' own
//! tables included.
//!
//! Pointers: the XSDT (64-bit entries), the FADT's X_FIRMWARE_CTRL and X_DSDT and the RSDP's
//! XSDT address are all 8-byte ADD_POINTERs, and the 32-bit RSDT address, FIRMWARE_CTRL and
//! DSDT fields stay 0. With no pointer narrower than 8 bytes OVMF may put the blobs anywhere;
//! the tables Linux sees are the firmware's copies anyway.

use acpi_tables::Aml;
use acpi_tables::aml::{Method, Path};
use acpi_tables::facs::FACS;
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::xsdt::XSDT;

use super::{
    HostBridge, MPS_ACTIVE_HIGH_LEVEL, OEM_ID, OEM_REVISION, OEM_TABLE_ID, check_extra_table,
    dsdt_table, io_register, madt, mcfg, pci_host_bridge_aml, s5_aml, table_bytes,
};
use crate::x86_64::table_loader::{TableLoader, TableLoaderError};

/// The fw_cfg file holding the tables.
pub const ACPI_TABLES_FILE: &str = "etc/acpi/tables";
/// The fw_cfg file holding the RSDP.
pub const ACPI_RSDP_FILE: &str = "etc/acpi/rsdp";
/// The fw_cfg file holding the table-loader script.
pub const TABLE_LOADER_FILE: &str = "etc/table-loader";

/// `SLP_TYP` of `\_S5`: QEMU's ICH9 (and PIIX4) power off on sleep type 0 with SLP_EN, and
/// OVMF's own shutdown writes 0, so the VMM's PM1 control register treats 0 as soft-off.
pub const S5_SLEEP_TYPE: u8 = 0;
/// Most PCI MMIO windows below 4 GiB the tables describe.
pub const MAX_MMIO32_WINDOWS: usize = 16;
/// Most bytes of AML and tables the devices may contribute, together.
pub const MAX_DEVICES_BYTES: usize = 16 << 20;

/// Where the registers of the ICH9 power-management block lie relative to PMBASE.
const PM1_CNT_OFFSET: u16 = 0x04;
const PM_TMR_OFFSET: u16 = 0x08;
const GPE0_OFFSET: u16 = 0x20;
const PM1_EVT_LEN: u8 = 4;
const PM1_CNT_LEN: u8 = 2;
const PM_TMR_LEN: u8 = 4;
const GPE0_LEN: u8 = 0x10;
/// A C2/C3 latency above 100/1000 µs: the state is not supported.
const NO_C_STATE_LATENCY: u16 = 0x0fff;
/// IAPC_BOOT_ARCH: LEGACY_DEVICES (ISA devices the OS cannot enumerate) and 8042.
const IAPC_LEGACY_DEVICES_8042: u16 = 0b11;
/// ISA IRQ 0 (the PIT) arrives at IOAPIC pin 2, as on every PC.
const PIT_IRQ: u8 = 0;
const PIT_GSI: u32 = 2;

/// The PC the firmware-path tables describe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirmwareAcpiInfo {
    /// Number of vCPUs, at least 1 (one local APIC each, APIC IDs 0..n).
    pub vcpus: u8,
    /// PMBASE: the ICH9 power-management I/O block (PM1a event at +0, PM1a control at +4, PM
    /// timer at +8, GPE0 at +0x20, 16 bytes). OVMF programs 0x600.
    pub pm_base: u16,
    /// The SCI's ISA IRQ (9 on ICH9), level-triggered and active-high through the IOAPIC.
    pub sci_irq: u8,
    /// Reset register: I/O port and value (0xCF9, 0x06).
    pub reset: (u16, u8),
    /// ECAM: base (below 4 GiB), size in bytes and last bus (0xB0000000, 256 MiB, 255). The
    /// size must cover the buses, 1 MiB each.
    pub ecam: (u64, u64, u8),
    /// The PCI I/O window, first and last port inclusive (0x6000, 0xFFFF); it starts above the
    /// config ports, at 0xD00 or higher.
    pub pci_io: (u16, u16),
    /// PCI memory windows below 4 GiB: (start, length), at most [`MAX_MMIO32_WINDOWS`].
    pub pci_mmio32: Vec<(u64, u64)>,
    /// The 64-bit PCI memory window, (start, length), if any.
    pub pci_mmio64: Option<(u64, u64)>,
    /// The devices' AML (their `Device` objects under `\_SB`), placed first in the DSDT.
    pub devices_aml: Vec<u8>,
    /// The devices' own ACPI tables, each with its header: placed after the platform's,
    /// pointed at by the XSDT, their checksums left to the firmware like every other table's.
    pub extra_tables: Vec<Vec<u8>>,
}

impl FirmwareAcpiInfo {
    /// The values OVMF programs on Q35 (ICH9 PMBASE 0x600, SCI 9, reset 0xCF9/0x06, ECAM at
    /// 0xB0000000 for 256 buses, I/O window 0x6000-0xFFFF) and the 32-bit MMIO window OVMF uses
    /// when low RAM reaches above 2 GiB (0xC0000000-0xFBFFFFFF); no 64-bit window, and no
    /// devices' AML or tables.
    pub fn q35(vcpus: u8) -> Self {
        FirmwareAcpiInfo {
            vcpus,
            pm_base: 0x600,
            sci_irq: 9,
            reset: (0xcf9, 0x06),
            ecam: (0xb000_0000, 256 << 20, 255),
            pci_io: (0x6000, 0xffff),
            pci_mmio32: vec![(0xc000_0000, 0xfc00_0000 - 0xc000_0000)],
            pci_mmio64: None,
            devices_aml: Vec::new(),
            extra_tables: Vec::new(),
        }
    }
}

/// The fw_cfg files of the firmware-path ACPI tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirmwareAcpi {
    /// `etc/acpi/tables`: FACS, DSDT, FADT, MADT, MCFG, the devices' tables and XSDT, pointers
    /// as blob offsets.
    pub tables: Vec<u8>,
    /// `etc/acpi/rsdp`: the RSDP (revision 2), its XSDT address a blob offset.
    pub rsdp: Vec<u8>,
    /// `etc/table-loader`: the commands that place and link the two blobs.
    pub loader: Vec<u8>,
}

/// Errors from building the firmware-path ACPI tables.
#[derive(Debug, thiserror::Error)]
pub enum FirmwareAcpiError {
    /// The machine description cannot be put in the tables.
    #[error("Cannot build the ACPI tables for the firmware: {0}")]
    Invalid(&'static str),
    /// The table-loader script could not be encoded.
    #[error(transparent)]
    Loader(#[from] TableLoaderError),
}

impl FirmwareAcpiError {
    /// The errno that describes this error (the process exit code).
    pub fn errno(&self) -> i32 {
        libc::EINVAL
    }
}

const FOUR_GIB: u64 = 1 << 32;

/// Check the description; every bound the tables rely on is checked here.
fn validate(info: &FirmwareAcpiInfo) -> Result<(), FirmwareAcpiError> {
    let invalid = |what| Err(FirmwareAcpiError::Invalid(what));
    if info.vcpus == 0 {
        return invalid("no vCPUs");
    }
    if info
        .pm_base
        .checked_add(u16::from(GPE0_LEN) + GPE0_OFFSET)
        .is_none()
    {
        return invalid("the PM block does not fit in I/O space");
    }
    // An ISA IRQ; the SCI's override must not collide with the PIT's (IRQ 0 on GSI 2).
    if !(1..16).contains(&info.sci_irq) || info.sci_irq == 2 {
        return invalid("the SCI must use an ISA IRQ other than the PIT's");
    }
    let (ecam, ecam_len, end_bus) = info.ecam;
    if ecam_len < (u64::from(end_bus) + 1) << 20 || ecam.saturating_add(ecam_len) > FOUR_GIB {
        return invalid("ECAM must cover its buses and lie below 4 GiB");
    }
    let (io_first, io_last) = info.pci_io;
    if io_first < 0xd00 || io_first > io_last {
        return invalid("the PCI I/O window must be a range above 0xCFF");
    }
    if info.pci_mmio32.len() > MAX_MMIO32_WINDOWS {
        return invalid("too many 32-bit PCI memory windows");
    }
    for &(start, len) in &info.pci_mmio32 {
        if len == 0 || start.saturating_add(len) > FOUR_GIB {
            return invalid("a 32-bit PCI memory window is empty or reaches above 4 GiB");
        }
    }
    if let Some((start, len)) = info.pci_mmio64
        && (len == 0 || start.checked_add(len - 1).is_none())
    {
        return invalid("the 64-bit PCI memory window is empty or wraps around");
    }
    let devices_bytes = info
        .extra_tables
        .iter()
        .fold(info.devices_aml.len(), |n, t| n.saturating_add(t.len()));
    if devices_bytes > MAX_DEVICES_BYTES {
        return invalid("the devices' AML and tables are too large");
    }
    for table in &info.extra_tables {
        check_extra_table(table).map_err(FirmwareAcpiError::Invalid)?;
    }
    Ok(())
}

/// The I/O ranges the host bridge forwards: everything but the config ports, with the PCI
/// window as a range of its own.
fn io_ranges(info: &FirmwareAcpiInfo) -> Vec<(u16, u16)> {
    let (first, last) = info.pci_io;
    let mut io = vec![(0, 0xcf7)];
    if first > 0xd00 {
        io.push((0xd00, first - 1));
    }
    io.push((first, last));
    if last < 0xffff {
        io.push((last + 1, 0xffff));
    }
    io
}

fn dsdt(info: &FirmwareAcpiInfo) -> Vec<u8> {
    // The devices first (COM1 and the RTC, as the DSDT always held them), then the platform.
    let mut aml = info.devices_aml.clone();
    let (ecam, ecam_len, end_bus) = info.ecam;
    pci_host_bridge_aml(
        &HostBridge {
            end_bus,
            io: &io_ranges(info),
            mmio32: &info.pci_mmio32,
            mmio64: info.pci_mmio64,
            ecam: (ecam, ecam_len),
        },
        &mut aml,
    );
    s5_aml(S5_SLEEP_TYPE, &mut aml);
    // The OS reports the interrupt model (PIC or APIC) through \_PIC; nothing depends on it
    // here, as there is no _PRT to switch.
    Method::new(Path::new("_PIC"), 1, false, vec![]).to_aml_bytes(&mut aml);
    dsdt_table(&aml)
}

/// A register block of the PM block in I/O space, as the X_ fields of the FADT give it.
fn pm_block(port: u16, len: u8) -> GAS {
    GAS::new(
        AddressSpace::SystemIo,
        len * 8,
        0,
        AccessSize::Undefined,
        u64::from(port),
    )
}

/// The FADT of a PC: fixed-feature hardware in the PM block, the SCI, the reset register, no
/// SMI command port (ACPI mode is always on: the firmware sets SCI_EN), a fixed power button
/// and no sleep button. `facs` and `dsdt` are blob offsets for ADD_POINTER.
fn fadt(info: &FirmwareAcpiInfo, facs: u64, dsdt: u64) -> Vec<u8> {
    let pm = info.pm_base;
    let mut b = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .firmware_ctrl_64(facs)
        .dsdt_64(dsdt)
        .flag(Flags::Wbinvd)
        .flag(Flags::ProcC1)
        .flag(Flags::SlpButton)
        .flag(Flags::ResetRegSup);
    b.sci_int = u16::from(info.sci_irq).into();
    b.smi_cmd = 0.into();
    b.pm1a_evt_blk = u32::from(pm).into();
    b.pm1_evt_len = PM1_EVT_LEN;
    b.pm1a_cnt_blk = u32::from(pm + PM1_CNT_OFFSET).into();
    b.pm1_cnt_len = PM1_CNT_LEN;
    b.pm_tmr_blk = u32::from(pm + PM_TMR_OFFSET).into();
    b.pm_tmr_len = PM_TMR_LEN;
    b.gpe0_blk = u32::from(pm + GPE0_OFFSET).into();
    b.gpe0_blk_len = GPE0_LEN;
    b.p_lvl2_lat = NO_C_STATE_LATENCY.into();
    b.p_lvl3_lat = NO_C_STATE_LATENCY.into();
    b.iapc_boot_arch = IAPC_LEGACY_DEVICES_8042.into();
    b.reset_reg = io_register(info.reset.0);
    b.reset_value = info.reset.1;
    b.x_pm1a_evt_blk = pm_block(pm, PM1_EVT_LEN);
    b.x_pm1a_cnt_blk = pm_block(pm + PM1_CNT_OFFSET, PM1_CNT_LEN);
    b.x_pm_tmr_blk = pm_block(pm + PM_TMR_OFFSET, PM_TMR_LEN);
    b.x_gpe0_blk = pm_block(pm + GPE0_OFFSET, GPE0_LEN);
    table_bytes(&b.finalize())
}

/// Offsets in an ACPI table header and in the tables that point.
const HEADER_CHECKSUM: u32 = 9;
const FADT_X_FIRMWARE_CTRL: u32 = 132;
const FADT_X_DSDT: u32 = 140;
const XSDT_ENTRIES: u32 = 36;
const RSDP_CHECKSUM: u32 = 8;
const RSDP_V1_LEN: u32 = 20;
const RSDP_XSDT_ADDRESS: u32 = 24;
const RSDP_EXTENDED_CHECKSUM: u32 = 32;

/// A table in the blob.
#[derive(Clone, Copy)]
struct Table {
    offset: u32,
    len: u32,
}

/// The tables blob under construction. [`validate`] bounds every table's size (at most 255
/// vCPUs, 16 windows and [`MAX_DEVICES_BYTES`] from the devices), so offsets and lengths fit
/// in 32 bits.
#[derive(Default)]
struct Blob {
    bytes: Vec<u8>,
}

impl Blob {
    /// Append a table at the next multiple of `align`. A table with an ACPI header gets its
    /// checksum byte zeroed: ADD_CHECKSUM computes it in the guest, over a sum that includes
    /// the byte's value.
    fn push(&mut self, mut table: Vec<u8>, align: usize, has_header: bool) -> Table {
        let offset = self.bytes.len().next_multiple_of(align);
        self.bytes.resize(offset, 0);
        if has_header {
            table[HEADER_CHECKSUM as usize] = 0;
        }
        self.bytes.extend_from_slice(&table);
        Table {
            offset: offset as u32,
            len: table.len() as u32,
        }
    }
}

/// The ADD_CHECKSUM of a whole table in the tables blob.
fn add_table_checksum(l: &mut TableLoader, t: Table) -> Result<(), TableLoaderError> {
    l.add_checksum(
        ACPI_TABLES_FILE,
        t.offset + HEADER_CHECKSUM,
        t.offset,
        t.len,
    )
}

/// An 8-byte ADD_POINTER from the tables blob into itself.
fn add_table_pointer(l: &mut TableLoader, at: u32) -> Result<(), TableLoaderError> {
    l.add_pointer(ACPI_TABLES_FILE, ACPI_TABLES_FILE, at, 8)
}

/// Build the firmware-path ACPI tables and the table-loader script that links them.
pub fn build_firmware_acpi(info: &FirmwareAcpiInfo) -> Result<FirmwareAcpi, FirmwareAcpiError> {
    validate(info)?;
    let mut blob = Blob::default();
    // The FACS first, on the 64-byte boundary it needs (the blob is allocated 64-aligned).
    let facs = blob.push(table_bytes(&FACS::new()), 64, false);
    let dsdt = blob.push(dsdt(info), 16, true);
    let fadt_table = fadt(info, u64::from(facs.offset), u64::from(dsdt.offset));
    let fadt = blob.push(fadt_table, 16, true);
    let overrides = [
        (PIT_IRQ, PIT_GSI, 0),
        (info.sci_irq, u32::from(info.sci_irq), MPS_ACTIVE_HIGH_LEVEL),
    ];
    let madt = blob.push(madt(info.vcpus, Some(&overrides)), 16, true);
    let mcfg = blob.push(mcfg(info.ecam.0, info.ecam.2), 16, true);
    let extras: Vec<Table> = info
        .extra_tables
        .iter()
        .map(|t| blob.push(t.clone(), 16, true))
        .collect();
    let entries: Vec<Table> = [fadt, madt, mcfg]
        .into_iter()
        .chain(extras.clone())
        .collect();
    let mut xsdt_table = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    for t in &entries {
        xsdt_table.add_entry(u64::from(t.offset));
    }
    let xsdt = blob.push(table_bytes(&xsdt_table), 16, true);
    let mut rsdp = table_bytes(&Rsdp::new(OEM_ID, u64::from(xsdt.offset)));
    rsdp[RSDP_CHECKSUM as usize] = 0;
    rsdp[RSDP_EXTENDED_CHECKSUM as usize] = 0;

    let mut l = TableLoader::new();
    l.allocate(ACPI_RSDP_FILE, 16, true)?;
    l.allocate(ACPI_TABLES_FILE, 64, false)?;
    // Tables that point nowhere: their checksums.
    for t in [dsdt, madt, mcfg].into_iter().chain(extras) {
        add_table_checksum(&mut l, t)?;
    }
    // The FADT points at the FACS and the DSDT, then gets its checksum.
    add_table_pointer(&mut l, fadt.offset + FADT_X_FIRMWARE_CTRL)?;
    add_table_pointer(&mut l, fadt.offset + FADT_X_DSDT)?;
    add_table_checksum(&mut l, fadt)?;
    // The XSDT points at every other table.
    for (i, _) in (0u32..).zip(&entries) {
        add_table_pointer(&mut l, xsdt.offset + XSDT_ENTRIES + 8 * i)?;
    }
    add_table_checksum(&mut l, xsdt)?;
    // The RSDP points at the XSDT; then its two checksums, the first 20 bytes' first.
    l.add_pointer(ACPI_RSDP_FILE, ACPI_TABLES_FILE, RSDP_XSDT_ADDRESS, 8)?;
    l.add_checksum(ACPI_RSDP_FILE, RSDP_CHECKSUM, 0, RSDP_V1_LEN)?;
    l.add_checksum(ACPI_RSDP_FILE, RSDP_EXTENDED_CHECKSUM, 0, rsdp.len() as u32)?;
    Ok(FirmwareAcpi {
        tables: blob.bytes,
        rsdp,
        loader: l.to_bytes(),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::x86_64::acpi::{test_device_aml, test_table};
    use crate::x86_64::table_loader::{Placed, apply};

    /// Where the tests' "firmware" puts the blobs: the RSDP in the F segment, the tables in
    /// high low memory, both below 4 GiB.
    const RSDP_AT: u64 = 0xf_5a40;
    const TABLES_AT: u64 = 0x7ffd_c000;

    fn files(acpi: &FirmwareAcpi) -> BTreeMap<String, Vec<u8>> {
        BTreeMap::from([
            (ACPI_TABLES_FILE.to_string(), acpi.tables.clone()),
            (ACPI_RSDP_FILE.to_string(), acpi.rsdp.clone()),
        ])
    }

    /// The guest's memory after OVMF ran the script: the two blobs where it put them.
    struct Guest(BTreeMap<String, Placed>);

    impl Guest {
        fn load(acpi: &FirmwareAcpi, tables_at: u64) -> Guest {
            let placed = apply(&acpi.loader, &files(acpi), |name| match name {
                ACPI_RSDP_FILE => RSDP_AT,
                _ => tables_at,
            })
            .unwrap();
            assert_eq!(placed.len(), 2, "both blobs allocated");
            Guest(placed)
        }

        /// `len` bytes at guest address `addr`, which must lie inside one blob.
        fn read(&self, addr: u64, len: usize) -> &[u8] {
            for p in self.0.values() {
                if addr >= p.addr && addr + len as u64 <= p.addr + p.bytes.len() as u64 {
                    let at = (addr - p.addr) as usize;
                    return &p.bytes[at..at + len];
                }
            }
            panic!("nothing at {addr:#x}");
        }

        /// The table at `addr`, by the length in its header.
        fn table(&self, addr: u64) -> &[u8] {
            let len = u32::from_le_bytes(self.read(addr + 4, 4).try_into().unwrap());
            self.read(addr, len as usize)
        }

        fn rsdp(&self) -> &[u8] {
            &self.0[ACPI_RSDP_FILE].bytes
        }
    }

    fn checksum_ok(t: &[u8]) -> bool {
        t.iter().fold(0u8, |a, b| a.wrapping_add(*b)) == 0
    }

    fn u16_at(t: &[u8], at: usize) -> u16 {
        u16::from_le_bytes(t[at..at + 2].try_into().unwrap())
    }

    fn u32_at(t: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(t[at..at + 4].try_into().unwrap())
    }

    fn u64_at(t: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(t[at..at + 8].try_into().unwrap())
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    fn info() -> FirmwareAcpiInfo {
        FirmwareAcpiInfo {
            pci_mmio32: vec![(0x8000_0000, 0x3000_0000), (0xc000_0000, 0x3c00_0000)],
            pci_mmio64: Some((0x3800_0000_0000, 0x800_0000_0000)),
            devices_aml: test_device_aml(),
            ..FirmwareAcpiInfo::q35(3)
        }
    }

    /// The XSDT's entries, after checking the RSDP that leads to it.
    fn xsdt_entries(guest: &Guest) -> Vec<u64> {
        let rsdp = guest.rsdp();
        assert_eq!(rsdp.len(), 36);
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        assert_eq!(rsdp[15], 2, "revision 2");
        assert!(checksum_ok(&rsdp[..20]), "RSDP checksum");
        assert!(checksum_ok(rsdp), "RSDP extended checksum");
        assert_eq!(u32_at(rsdp, 16), 0, "no RSDT");
        let xsdt = guest.table(u64_at(rsdp, 24));
        assert_eq!(&xsdt[..4], b"XSDT");
        assert!(checksum_ok(xsdt));
        xsdt[36..].chunks(8).map(|c| u64_at(c, 0)).collect()
    }

    /// The table the XSDT lists with this signature, checksum checked.
    fn find<'g>(guest: &'g Guest, signature: &[u8; 4]) -> &'g [u8] {
        let tables: Vec<&[u8]> = xsdt_entries(guest)
            .into_iter()
            .map(|a| guest.table(a))
            .filter(|t| &t[..4] == signature)
            .collect();
        assert_eq!(tables.len(), 1, "{}", String::from_utf8_lossy(signature));
        assert!(checksum_ok(tables[0]));
        tables[0]
    }

    #[test]
    fn every_table_is_reachable_with_valid_checksums() {
        let guest = Guest::load(&build_firmware_acpi(&info()).unwrap(), TABLES_AT);
        let entries = xsdt_entries(&guest);
        let signatures: Vec<&[u8]> = entries.iter().map(|&a| &guest.table(a)[..4]).collect();
        assert_eq!(signatures, [b"FACP", b"APIC", b"MCFG"]);
        for &a in &entries {
            assert!(checksum_ok(guest.table(a)));
            assert!((TABLES_AT..1 << 32).contains(&a));
        }
        // The FADT points at the DSDT and the FACS through the 64-bit fields only.
        let fadt = find(&guest, b"FACP");
        assert_eq!((u32_at(fadt, 36), u32_at(fadt, 40)), (0, 0));
        let facs_addr = u64_at(fadt, 132);
        assert_eq!(facs_addr % 64, 0, "FACS 64-byte aligned");
        let facs = guest.read(facs_addr, 64);
        assert_eq!(&facs[..4], b"FACS");
        assert_eq!(u32_at(facs, 4), 64);
        let dsdt = guest.table(u64_at(fadt, 140));
        assert_eq!(&dsdt[..4], b"DSDT");
        assert!(checksum_ok(dsdt));
    }

    /// What OVMF's second pass installs: for each ADD_POINTER, the FACS or checksum-valid
    /// table the patched pointer leads to, once per address, except the RSDT and XSDT.
    fn installed_by_ovmf(acpi: &FirmwareAcpi) -> Vec<[u8; 4]> {
        let guest = Guest::load(acpi, TABLES_AT);
        let name = |field: &[u8]| {
            let end = field.iter().position(|&b| b == 0).unwrap();
            String::from_utf8(field[..end].to_vec()).unwrap()
        };
        let mut seen = Vec::new();
        let mut installed = Vec::new();
        for e in acpi.loader.chunks(128).filter(|e| e[0] == 2) {
            let pointer = &guest.0[&name(&e[4..60])];
            let offset = u32_at(e, 116) as usize;
            let size = usize::from(e[120]);
            let mut value = [0u8; 8];
            value[..size].copy_from_slice(&pointer.bytes[offset..offset + size]);
            let target = u64::from_le_bytes(value);
            if seen.contains(&target) {
                continue;
            }
            seen.push(target);
            let header = guest.read(target, 8);
            let signature: [u8; 4] = header[..4].try_into().unwrap();
            if &signature == b"FACS" {
                assert!(u32_at(header, 4) >= 64);
            } else {
                assert!(checksum_ok(guest.table(target)), "{target:#x}");
                if &signature == b"XSDT" || &signature == b"RSDT" {
                    continue;
                }
            }
            installed.push(signature);
        }
        installed
    }

    #[test]
    fn ovmf_second_pass_installs_every_table_once() {
        let acpi = build_firmware_acpi(&info()).unwrap();
        assert_eq!(
            installed_by_ovmf(&acpi),
            [*b"FACS", *b"DSDT", *b"FACP", *b"APIC", *b"MCFG"]
        );
    }

    #[test]
    fn devices_tables_are_linked_from_the_xsdt_and_checksummed() {
        let test = test_table(b"TEST", b"payload");
        let with_tables = FirmwareAcpiInfo {
            extra_tables: vec![test.clone(), test_table(b"TST2", &[7; 100])],
            ..info()
        };
        let acpi = build_firmware_acpi(&with_tables).unwrap();
        let guest = Guest::load(&acpi, TABLES_AT);
        let signatures: Vec<&[u8]> = xsdt_entries(&guest)
            .iter()
            .map(|&a| &guest.table(a)[..4])
            .collect();
        assert_eq!(signatures, [b"FACP", b"APIC", b"MCFG", b"TEST", b"TST2"]);
        // After the loader ran: whole, checksums valid (find checks them) though the device's
        // was wrong.
        assert!(!checksum_ok(&test));
        let t = find(&guest, b"TEST");
        assert_eq!((&t[..9], &t[10..]), (&test[..9], &test[10..]));
        assert_eq!(&find(&guest, b"TST2")[36..], &[7; 100]);
        // OVMF installs both; the script has a checksum and an XSDT pointer more per table.
        assert_eq!(
            installed_by_ovmf(&acpi),
            [
                *b"FACS", *b"DSDT", *b"FACP", *b"APIC", *b"MCFG", *b"TEST", *b"TST2"
            ]
        );
        assert_eq!(acpi.loader.len(), (15 + 2 * 2) * 128);
    }

    #[test]
    fn the_blobs_may_also_go_above_4_gib() {
        // All pointers are 8 bytes wide, so OVMF need not keep the tables below 4 GiB.
        let acpi = build_firmware_acpi(&info()).unwrap();
        let guest = Guest::load(&acpi, 0x1_2345_6000);
        let fadt = find(&guest, b"FACP");
        assert!(u64_at(fadt, 140) > 1 << 32);
        assert_eq!(&guest.table(u64_at(fadt, 140))[..4], b"DSDT");
        // And no ADD_POINTER of the script is narrower than that.
        for e in acpi.loader.chunks(128) {
            if e[0] == 2 {
                assert_eq!(e[120], 8);
            }
        }
    }

    #[test]
    fn fadt_describes_the_ich9_pm_block() {
        let guest = Guest::load(&build_firmware_acpi(&info()).unwrap(), TABLES_AT);
        let f = find(&guest, b"FACP");
        assert_eq!(f.len(), 276);
        assert_eq!(f[8], 6, "FADT revision 6");
        assert_eq!(u16_at(f, 46), 9, "SCI_INT");
        assert_eq!(u32_at(f, 48), 0, "no SMI_CMD");
        assert_eq!((f[52], f[53]), (0, 0), "ACPI_ENABLE/DISABLE");
        assert_eq!(u32_at(f, 56), 0x600, "PM1a_EVT_BLK");
        assert_eq!(u32_at(f, 60), 0, "PM1b_EVT_BLK");
        assert_eq!(u32_at(f, 64), 0x604, "PM1a_CNT_BLK");
        assert_eq!(u32_at(f, 68), 0, "PM1b_CNT_BLK");
        assert_eq!(u32_at(f, 72), 0, "PM2_CNT_BLK");
        assert_eq!(u32_at(f, 76), 0x608, "PM_TMR_BLK");
        assert_eq!(u32_at(f, 80), 0x620, "GPE0_BLK");
        assert_eq!(u32_at(f, 84), 0, "GPE1_BLK");
        assert_eq!(&f[88..94], &[4, 2, 0, 4, 0x10, 0], "block lengths");
        assert!(u16_at(f, 96) > 100 && u16_at(f, 98) > 1000, "no C2/C3");
        assert_eq!(u16_at(f, 109), 0b11, "IAPC_BOOT_ARCH: legacy devices, 8042");
        let flags = u32_at(f, 112);
        assert_eq!(flags & (1 << 20), 0, "not hardware-reduced");
        assert_ne!(flags & (1 << 10), 0, "RESET_REG_SUP");
        assert_eq!(flags & (1 << 4), 0, "fixed power button");
        // Reset register: system I/O, 8 bits, byte access, port 0xCF9; value 6.
        assert_eq!(&f[116..120], &[1, 8, 0, 1]);
        assert_eq!(u64_at(f, 120), 0xcf9);
        assert_eq!(f[128], 0x06);
        // X_PM1a_EVT, X_PM1a_CNT, X_PM_TMR, X_GPE0: system I/O with the legacy lengths; the
        // PM1b, PM2 and GPE1 blocks absent.
        for (at, width, port) in [
            (148, 32, 0x600),
            (172, 16, 0x604),
            (208, 32, 0x608),
            (220, 128, 0x620),
        ] {
            assert_eq!((f[at], f[at + 1], f[at + 2]), (1, width, 0), "GAS at {at}");
            assert_eq!(u64_at(f, at + 4), port, "GAS at {at}");
        }
        for at in [160, 184, 196, 232] {
            assert_eq!(&f[at..at + 12], &[0; 12], "GAS at {at}");
        }
        // Another PMBASE moves every block with it.
        let moved = FirmwareAcpiInfo {
            pm_base: 0xb000,
            ..info()
        };
        let guest = Guest::load(&build_firmware_acpi(&moved).unwrap(), TABLES_AT);
        let f = find(&guest, b"FACP");
        assert_eq!(
            [u32_at(f, 56), u32_at(f, 64), u32_at(f, 76), u32_at(f, 80)],
            [0xb000, 0xb004, 0xb008, 0xb020]
        );
        assert_eq!(u64_at(f, 208 + 4), 0xb008);
    }

    #[test]
    fn madt_is_a_pc_with_a_local_apic_per_vcpu() {
        for vcpus in [1u8, 3, 255] {
            let i = FirmwareAcpiInfo { vcpus, ..info() };
            let guest = Guest::load(&build_firmware_acpi(&i).unwrap(), TABLES_AT);
            let m = find(&guest, b"APIC");
            assert_eq!(u32_at(m, 36), 0xfee0_0000);
            assert_eq!(u32_at(m, 40), 1, "PCAT_COMPAT");
            let (mut lapic_ids, mut ioapics, mut overrides) = (Vec::new(), Vec::new(), Vec::new());
            let mut at = 44;
            while at < m.len() {
                let s = &m[at..at + usize::from(m[at + 1])];
                match s[0] {
                    0 => {
                        assert_eq!(u32_at(s, 4), 1, "enabled");
                        lapic_ids.push(s[3]);
                    }
                    1 => ioapics.push((u32_at(s, 4), u32_at(s, 8))),
                    2 => overrides.push((s[2], s[3], u32_at(s, 4), u16_at(s, 8))),
                    other => panic!("unexpected MADT structure {other}"),
                }
                at += s.len();
            }
            assert_eq!(at, m.len());
            assert_eq!(lapic_ids, (0..vcpus).collect::<Vec<u8>>());
            assert_eq!(ioapics, [(0xfec0_0000, 0)]);
            // (bus ISA, IRQ, GSI, flags): the PIT on pin 2, the SCI level/active-high.
            assert_eq!(overrides, [(0, 0, 2, 0), (0, 9, 9, 0b1101)]);
        }
    }

    #[test]
    fn mcfg_covers_every_bus() {
        let guest = Guest::load(&build_firmware_acpi(&info()).unwrap(), TABLES_AT);
        let m = find(&guest, b"MCFG");
        assert_eq!(m.len(), 44 + 16, "one allocation");
        assert_eq!(u64_at(m, 44), 0xb000_0000);
        assert_eq!(u16_at(m, 52), 0, "segment 0");
        assert_eq!((m[54], m[55]), (0, 255));
    }

    /// The values of `Name(_S5_, Package () {...})`: ZeroOp, OneOp or a BytePrefix byte each.
    fn s5_values(dsdt: &[u8]) -> Vec<u8> {
        let at = dsdt.windows(4).position(|w| w == b"_S5_").unwrap() + 4;
        assert_eq!(dsdt[at], 0x12, "PackageOp");
        let count = dsdt[at + 2];
        let mut values = Vec::new();
        let mut p = at + 3;
        for _ in 0..count {
            match dsdt[p] {
                0x00 | 0x01 => {
                    values.push(dsdt[p]);
                    p += 1;
                }
                0x0a => {
                    values.push(dsdt[p + 1]);
                    p += 2;
                }
                other => panic!("unexpected package element {other:#x}"),
            }
        }
        values
    }

    #[test]
    fn dsdt_describes_the_host_bridge_devices_and_s5() {
        let guest = Guest::load(&build_firmware_acpi(&info()).unwrap(), TABLES_AT);
        let fadt = find(&guest, b"FACP");
        let d = guest.table(u64_at(fadt, 140));
        assert!(checksum_ok(d));
        assert!(contains(d, b"PCI0"));
        // The devices' AML, unchanged, is the start of the DSDT's body.
        let devices = test_device_aml();
        assert_eq!(&d[36..36 + devices.len()], &devices[..]);
        // PNP0A08 and PNP0A03 (EISA ids).
        for eisa in [[0x41, 0xd0, 0x0a, 0x08], [0x41, 0xd0, 0x0a, 0x03]] {
            assert!(contains(d, &eisa), "{eisa:x?}");
        }
        // \_S5 is sleep type 0, and \_PIC is a method of one argument.
        assert_eq!(s5_values(d), [0, 0, 0, 0]);
        assert!(contains(d, b"_PIC\x01"));
        // _CRS: WordBusNumber 0-255 (granularity, min, max), the config ports, the I/O window
        // as a WordIO, every 32-bit window as a DWordMemory and the 64-bit one as a
        // QWordMemory (min, max).
        assert!(contains(
            d,
            &[0x88, 0x0d, 0x00, 0x02, 0x0c, 0, 0, 0, 0, 0, 0xff, 0]
        ));
        assert!(contains(
            d,
            &[0x47, 0x01, 0xf8, 0x0c, 0xf8, 0x0c, 0x01, 0x08]
        ));
        assert!(contains(
            d,
            &[
                0x88, 0x0d, 0x00, 0x01, 0x0c, 0x03, 0, 0, 0x00, 0x60, 0xff, 0xff
            ]
        ));
        for (min, max) in [(0x8000_0000u32, 0xafff_ffffu32), (0xc000_0000, 0xfbff_ffff)] {
            let mut want = vec![0x87, 0x17, 0x00, 0x00];
            want.extend_from_slice(&[0x0c, 0x01]);
            want.extend_from_slice(&0u32.to_le_bytes());
            want.extend_from_slice(&min.to_le_bytes());
            want.extend_from_slice(&max.to_le_bytes());
            assert!(contains(d, &want), "{min:#x}-{max:#x}");
        }
        let mut qword = vec![0x8a, 0x2b, 0x00, 0x00, 0x0c, 0x01];
        qword.extend_from_slice(&0u64.to_le_bytes());
        qword.extend_from_slice(&0x3800_0000_0000u64.to_le_bytes());
        qword.extend_from_slice(&0x3fff_ffff_ffffu64.to_le_bytes());
        assert!(contains(d, &qword));
        // The ECAM reservation (PNP0C02): Memory32Fixed at 0xB0000000, 256 MiB.
        let mut ecam = vec![0x86, 0x09, 0x00, 0x00];
        ecam.extend_from_slice(&0xb000_0000u32.to_le_bytes());
        ecam.extend_from_slice(&0x1000_0000u32.to_le_bytes());
        assert!(contains(d, &ecam));
        // Without a 64-bit window there is no QWordMemory.
        let no64 = FirmwareAcpiInfo {
            pci_mmio64: None,
            ..info()
        };
        let guest = Guest::load(&build_firmware_acpi(&no64).unwrap(), TABLES_AT);
        let d = guest.table(u64_at(find(&guest, b"FACP"), 140));
        assert!(!contains(d, &[0x8a, 0x2b, 0x00, 0x00]));
    }

    #[test]
    fn io_ranges_cover_all_but_the_config_ports() {
        let mut i = info();
        assert_eq!(
            io_ranges(&i),
            [(0, 0xcf7), (0xd00, 0x5fff), (0x6000, 0xffff)]
        );
        i.pci_io = (0xd00, 0x7fff);
        assert_eq!(
            io_ranges(&i),
            [(0, 0xcf7), (0xd00, 0x7fff), (0x8000, 0xffff)]
        );
    }

    #[test]
    fn checksums_are_left_to_the_firmware() {
        // In the blob every checksum byte is 0, as ADD_CHECKSUM needs; the script fixes them.
        let acpi = build_firmware_acpi(&info()).unwrap();
        assert_eq!((acpi.rsdp[8], acpi.rsdp[32]), (0, 0));
        let guest = Guest::load(&acpi, TABLES_AT);
        for a in xsdt_entries(&guest) {
            let off = (a - TABLES_AT) as usize;
            assert_eq!(acpi.tables[off + 9], 0);
        }
        // The script: 2 allocations, 5 table checksums (DSDT, MADT, MCFG, FADT, XSDT),
        // 6 pointers (FADT 2, XSDT 3, RSDP 1) and the RSDP's 2 checksums.
        assert_eq!(acpi.loader.len(), 15 * 128);
    }

    #[test]
    fn descriptions_the_tables_cannot_hold_are_refused() {
        let bad = [
            FirmwareAcpiInfo { vcpus: 0, ..info() },
            FirmwareAcpiInfo {
                pm_base: 0xffe0,
                ..info()
            },
            FirmwareAcpiInfo {
                sci_irq: 0,
                ..info()
            },
            FirmwareAcpiInfo {
                sci_irq: 16,
                ..info()
            },
            FirmwareAcpiInfo {
                extra_tables: vec![vec![0; 35]],
                ..info()
            },
            FirmwareAcpiInfo {
                extra_tables: vec![test_table(b"MCFG", &[])],
                ..info()
            },
            FirmwareAcpiInfo {
                devices_aml: vec![0; MAX_DEVICES_BYTES - 35],
                extra_tables: vec![test_table(b"TEST", &[])],
                ..info()
            },
            FirmwareAcpiInfo {
                ecam: (0xb000_0000, 1 << 20, 1),
                ..info()
            },
            FirmwareAcpiInfo {
                ecam: (0xf800_0000, 256 << 20, 255),
                ..info()
            },
            FirmwareAcpiInfo {
                pci_io: (0x800, 0xffff),
                ..info()
            },
            FirmwareAcpiInfo {
                pci_io: (0x7000, 0x6fff),
                ..info()
            },
            FirmwareAcpiInfo {
                pci_mmio32: vec![(0xc000_0000, 0)],
                ..info()
            },
            FirmwareAcpiInfo {
                pci_mmio32: vec![(0xf000_0000, 0x1000_0001)],
                ..info()
            },
            FirmwareAcpiInfo {
                pci_mmio32: vec![(0xc000_0000, 0x1000); MAX_MMIO32_WINDOWS + 1],
                ..info()
            },
            FirmwareAcpiInfo {
                pci_mmio64: Some((u64::MAX - 10, 100)),
                ..info()
            },
        ];
        for i in bad {
            let err = build_firmware_acpi(&i).unwrap_err();
            assert!(matches!(err, FirmwareAcpiError::Invalid(_)), "{i:?}");
            assert_eq!(err.errno(), libc::EINVAL);
        }
        // The limits themselves are fine.
        let edge = FirmwareAcpiInfo {
            pm_base: 0xffff - 0x30,
            sci_irq: 15,
            devices_aml: vec![0; MAX_DEVICES_BYTES - 36],
            extra_tables: vec![test_table(b"TEST", &[])],
            ecam: (0xf000_0000, 256 << 20, 255),
            pci_mmio32: vec![(0xf000_0000, 0x1000_0000); MAX_MMIO32_WINDOWS],
            pci_mmio64: Some((u64::MAX - 100, 101)),
            ..info()
        };
        build_firmware_acpi(&edge).unwrap();
    }
}
