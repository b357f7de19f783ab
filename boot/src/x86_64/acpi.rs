//! ACPI tables: RSDP, XSDT, FADT, DSDT, MADT and MCFG, built with the `acpi_tables` crate.
//!
//! For a direct kernel boot ([`build_acpi_tables`]) the platform is "hardware-reduced" ACPI: no
//! fixed-feature PM1 blocks or SCI, just the sleep control/status registers and a reset
//! register, all in I/O space and served by one small device in the VMM. That is all Linux
//! needs to power off (S5) and reset. The tables go at fixed addresses in the BIOS area.
//!
//! For a boot through UEFI firmware ([`build_firmware_acpi`], in [`firmware`]) the platform is a
//! full ACPI PC (ICH9 power management, SCI, 8042, PICs) and the tables go to the firmware as
//! fw_cfg blobs with a table-loader script. Both paths share the builders here for the DSDT's
//! host bridge, the MADT and the MCFG.
//!
//! The devices describe themselves: the VMM gathers their AML and whole tables (the `devices`
//! crate's `AcpiDevice`) and hands them to either builder as plain bytes, the AML as the start
//! of the DSDT's body and the tables after the platform's, listed in the XSDT. This crate knows
//! only the platform: the PCI host bridge, `\_S5`, FADT, MADT and MCFG.

use acpi_tables::Aml;
use acpi_tables::aml::{
    AddressSpace as AmlAddressSpace, AddressSpaceCacheable, Device, EISAName, IO, Memory32Fixed,
    Name, Package, Path, ResourceTemplate,
};
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, MADT, ProcessorLocalApic,
};
use acpi_tables::mcfg::MCFG;
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use vm_memory::{Bytes, GuestAddress};

use super::layout::{ACPI_START, APIC_START, IOAPIC_START, SMBIOS_START};
use super::loader::BootError;
use crate::GuestMemoryMmap;

pub mod firmware;
pub use firmware::{
    ACPI_RSDP_FILE, ACPI_TABLES_FILE, FirmwareAcpi, FirmwareAcpiError, FirmwareAcpiInfo,
    TABLE_LOADER_FILE, build_firmware_acpi,
};

const OEM_ID: [u8; 6] = *b"RVMSPN";
const OEM_TABLE_ID: [u8; 8] = *b"RVMSPAWN";
const OEM_REVISION: u32 = 1;

/// The value of `SLP_TYP` that `\_S5` names; writing it with `SLP_EN` powers the machine off.
pub const S5_SLEEP_TYPE: u8 = 5;
/// The value written to the reset register to reset the machine.
pub const RESET_VALUE: u8 = 1;

/// What the tables tell the guest, and so what the VMM's devices must implement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcpiInfo {
    /// Number of vCPUs (one local APIC each, APIC IDs 0..n).
    pub vcpus: u8,
    /// I/O port of the sleep control register (byte).
    pub sleep_control_port: u16,
    /// I/O port of the sleep status register (byte).
    pub sleep_status_port: u16,
    /// I/O port of the reset register (byte).
    pub reset_port: u16,
    /// PCI bus 0's ECAM window (base, size).
    pub pci_ecam: (u64, u64),
    /// PCI memory window for BARs (base, size), below 4 GiB.
    pub pci_mmio: (u64, u64),
    /// The devices' AML (their `Device` objects under `\_SB`), placed first in the DSDT.
    pub devices_aml: Vec<u8>,
    /// The devices' own ACPI tables, each with its header; written after the platform's
    /// tables and listed in the XSDT, their checksums set here.
    pub extra_tables: Vec<Vec<u8>>,
}

/// A register block of `bytes` bytes in I/O space at `port`.
fn io_block(port: u16, bytes: u8, access: AccessSize) -> GAS {
    GAS::new(
        AddressSpace::SystemIo,
        bytes * 8,
        0,
        access,
        u64::from(port),
    )
}

/// A byte register in I/O space.
fn io_register(port: u16) -> GAS {
    io_block(port, 1, AccessSize::ByteAccess)
}

/// A whole table's bytes.
fn table_bytes(table: &dyn Aml) -> Vec<u8> {
    let mut bytes = Vec::new();
    table.to_aml_bytes(&mut bytes);
    bytes
}

/// The DSDT holding `aml`.
fn dsdt_table(aml: &[u8]) -> Vec<u8> {
    let mut sdt = Sdt::new(*b"DSDT", 36, 6, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    sdt.append_slice(aml);
    sdt.as_slice().to_vec()
}

/// `\_S5`: the sleep type for soft-off, which the guest writes with SLP_EN to power off.
fn s5_aml(sleep_type: u8, aml: &mut Vec<u8>) {
    Name::new(
        Path::new("_S5_"),
        &Package::new(vec![&sleep_type, &0u8, &0u8, &0u8]),
    )
    .to_aml_bytes(aml);
}

/// What the host bridge of PCI segment 0 decodes.
struct HostBridge<'a> {
    /// Buses 0 to this.
    end_bus: u8,
    /// I/O ranges forwarded to PCI, inclusive (the config ports 0xCF8-0xCFF are added).
    io: &'a [(u16, u16)],
    /// Memory windows below 4 GiB, (start, length).
    mmio32: &'a [(u64, u64)],
    /// The memory window above 4 GiB, (start, length).
    mmio64: Option<(u64, u64)>,
    /// ECAM (start, length), below 4 GiB.
    ecam: (u64, u64),
}

/// The host bridge of PCI segment 0: its buses, the legacy config ports, the I/O space and
/// memory windows it forwards; plus a motherboard-resource device claiming ECAM, which Linux
/// checks before it trusts the MCFG table. The caller has checked every window's bounds.
fn pci_host_bridge_aml(bridge: &HostBridge, aml: &mut Vec<u8>) {
    let bus = AmlAddressSpace::<u16>::new_bus_number(0, u16::from(bridge.end_bus));
    let config_ports = IO::new(0xcf8, 0xcf8, 1, 8);
    let io: Vec<AmlAddressSpace<u16>> = bridge
        .io
        .iter()
        .map(|&(first, last)| AmlAddressSpace::<u16>::new_io(first, last, None))
        .collect();
    let mmio32: Vec<AmlAddressSpace<u32>> = bridge
        .mmio32
        .iter()
        .map(|&(start, len)| {
            AmlAddressSpace::<u32>::new_memory(
                AddressSpaceCacheable::NotCacheable,
                true,
                start as u32,
                (start + len - 1) as u32,
                None,
            )
        })
        .collect();
    let mmio64 = bridge.mmio64.map(|(start, len)| {
        AmlAddressSpace::<u64>::new_memory(
            AddressSpaceCacheable::NotCacheable,
            true,
            start,
            start + (len - 1),
            None,
        )
    });
    let mut resources: Vec<&dyn Aml> = vec![&bus, &config_ports];
    resources.extend(io.iter().map(|r| r as &dyn Aml));
    resources.extend(mmio32.iter().map(|r| r as &dyn Aml));
    resources.extend(mmio64.iter().map(|r| r as &dyn Aml));
    let resources = ResourceTemplate::new(resources);
    Device::new(
        Path::new("_SB_.PCI0"),
        vec![
            &Name::new(Path::new("_HID"), &EISAName::new("PNP0A08")),
            &Name::new(Path::new("_CID"), &EISAName::new("PNP0A03")),
            &Name::new(Path::new("_UID"), &0u8),
            &Name::new(Path::new("_SEG"), &0u8),
            &Name::new(Path::new("_BBN"), &0u8),
            &Name::new(Path::new("_CRS"), &resources),
        ],
    )
    .to_aml_bytes(aml);
    let (ecam, ecam_len) = bridge.ecam;
    let ecam_range = Memory32Fixed::new(false, ecam as u32, ecam_len as u32);
    let ecam_resources = ResourceTemplate::new(vec![&ecam_range]);
    Device::new(
        Path::new("_SB_.MRES"),
        vec![
            &Name::new(Path::new("_HID"), &EISAName::new("PNP0C02")),
            &Name::new(Path::new("_UID"), &1u8),
            &Name::new(Path::new("_CRS"), &ecam_resources),
        ],
    )
    .to_aml_bytes(aml);
}

fn dsdt(info: &AcpiInfo) -> Vec<u8> {
    // The devices first (COM1 and the RTC, as the DSDT always held them), then the platform.
    let mut aml = info.devices_aml.clone();
    pci_host_bridge_aml(
        &HostBridge {
            end_bus: 0,
            io: &[(0, 0xcf7), (0xd00, 0xffff)],
            mmio32: &[info.pci_mmio],
            mmio64: None,
            ecam: info.pci_ecam,
        },
        &mut aml,
    );
    s5_aml(S5_SLEEP_TYPE, &mut aml);
    dsdt_table(&aml)
}

/// MCFG: one ECAM allocation for segment 0, buses 0 to `end_bus`.
fn mcfg(base: u64, end_bus: u8) -> Vec<u8> {
    let mut mcfg = MCFG::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    mcfg.add_ecam(base, 0, 0, end_bus);
    table_bytes(&mcfg)
}

fn fadt(info: &AcpiInfo, dsdt_addr: u64) -> Vec<u8> {
    let mut b = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        // No fixed-feature power or sleep buttons.
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton);
    b.reset_reg = io_register(info.reset_port);
    b.reset_value = RESET_VALUE;
    b.sleep_control_reg = io_register(info.sleep_control_port);
    b.sleep_status_reg = io_register(info.sleep_status_port);
    table_bytes(&b.finalize())
}

/// MADT flag: the machine also has the dual 8259 PICs (which the OS must mask).
const MADT_PCAT_COMPAT: u32 = 1;
/// MADT structure type of an interrupt source override.
const MADT_INTERRUPT_SOURCE_OVERRIDE: u8 = 2;
/// Interrupt flags of an override: active high (polarity 01), level-triggered (trigger 11).
const MPS_ACTIVE_HIGH_LEVEL: u16 = 0b1101;

/// MADT: one local APIC per vCPU (IDs 0..vcpus) and the IOAPIC with GSI base 0.
///
/// With `overrides`, the MADT describes a PC: the PCAT_COMPAT flag and, for ISA interrupts not
/// wired one-to-one, (ISA IRQ, GSI, MPS INTI flags) overrides.
fn madt(vcpus: u8, overrides: Option<&[(u8, u32, u16)]>) -> Vec<u8> {
    let mut madt = MADT::new(
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
        LocalInterruptController::Address(APIC_START as u32),
    );
    for id in 0..vcpus {
        madt.add_structure(ProcessorLocalApic::new(id, id, EnabledStatus::Enabled));
    }
    madt.add_structure(IoApic::new(0, IOAPIC_START as u32, 0));
    let mut bytes = table_bytes(&madt);
    if let Some(overrides) = overrides {
        // The crate's MADT has neither the flag nor overrides: add them, then fix the header.
        bytes[40..44].copy_from_slice(&MADT_PCAT_COMPAT.to_le_bytes());
        for &(irq, gsi, flags) in overrides {
            bytes.extend_from_slice(&[MADT_INTERRUPT_SOURCE_OVERRIDE, 10, 0, irq]);
            bytes.extend_from_slice(&gsi.to_le_bytes());
            bytes.extend_from_slice(&flags.to_le_bytes());
        }
        let len = bytes.len() as u32;
        bytes[4..8].copy_from_slice(&len.to_le_bytes());
        set_checksum(&mut bytes);
    }
    bytes
}

/// Length of an ACPI table header.
const HEADER_LEN: usize = 36;
/// Signatures of the tables the builders make themselves (and the RSDP's "RSD PTR "): a
/// device's table must not duplicate one of them.
const PLATFORM_SIGNATURES: [&[u8; 4]; 8] = [
    b"RSD ", b"XSDT", b"RSDT", b"FACP", b"FACS", b"DSDT", b"APIC", b"MCFG",
];

/// Check a device's table: a whole header whose length is the table's, and a signature the
/// platform's tables do not use.
fn check_extra_table(table: &[u8]) -> Result<(), &'static str> {
    if table.len() < HEADER_LEN
        || u32::from_le_bytes([table[4], table[5], table[6], table[7]]) as usize != table.len()
    {
        return Err("a device's ACPI table has no header or a wrong length");
    }
    if PLATFORM_SIGNATURES.iter().any(|s| table[..4] == s[..]) {
        return Err("a device's ACPI table has the signature of a platform table");
    }
    Ok(())
}

/// Set a table's checksum byte (offset 9) so that the table sums to zero.
fn set_checksum(table: &mut [u8]) {
    table[9] = 0;
    let sum = table.iter().fold(0u8, |a, b| a.wrapping_add(*b));
    table[9] = 0u8.wrapping_sub(sum);
}

fn align16(v: u64) -> u64 {
    (v + 15) & !15
}

/// Write one table at `*at` and move `*at` to the next 16-byte boundary after it. A table that
/// would reach `end` is refused before anything is written: the ACPI tables never grow into the
/// SMBIOS area that follows them.
fn place_table(
    mem: &GuestMemoryMmap,
    at: &mut u64,
    end: u64,
    bytes: &[u8],
) -> Result<u64, BootError> {
    let addr = *at;
    if addr + bytes.len() as u64 > end {
        return Err(BootError::Memory("the ACPI tables (too large)"));
    }
    mem.write_slice(bytes, GuestAddress(addr))
        .map_err(|_| BootError::Memory("the ACPI tables"))?;
    *at = align16(addr + bytes.len() as u64);
    Ok(addr)
}

/// Write RSDP, XSDT, FADT, DSDT, MADT, MCFG and the devices' tables into the BIOS area from
/// [`ACPI_START`] up to [`SMBIOS_START`], where Linux scans for the RSDP and which the e820 map
/// reserves.
pub fn build_acpi_tables(mem: &GuestMemoryMmap, info: &AcpiInfo) -> Result<(), BootError> {
    for table in &info.extra_tables {
        check_extra_table(table).map_err(|_| BootError::Memory("a device's ACPI table"))?;
    }
    let mut at = ACPI_START + align16(Rsdp::len() as u64);
    let mut place = |bytes: &[u8]| place_table(mem, &mut at, SMBIOS_START, bytes);
    let dsdt_addr = place(&dsdt(info))?;
    let fadt_addr = place(&fadt(info, dsdt_addr))?;
    let madt_addr = place(&madt(info.vcpus, None))?;
    let mcfg_addr = place(&mcfg(info.pci_ecam.0, 0))?;
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    xsdt.add_entry(mcfg_addr);
    for table in &info.extra_tables {
        let mut table = table.clone();
        set_checksum(&mut table);
        xsdt.add_entry(place(&table)?);
    }
    let xsdt_addr = place(&table_bytes(&xsdt))?;
    let rsdp = table_bytes(&Rsdp::new(OEM_ID, xsdt_addr));
    mem.write_slice(&rsdp, GuestAddress(ACPI_START))
        .map_err(|_| BootError::Memory("the RSDP"))
}

/// A machine like the VMM's, for tests here and of the tables that share the BIOS area.
#[cfg(test)]
pub(crate) fn test_info(vcpus: u8) -> AcpiInfo {
    AcpiInfo {
        vcpus,
        sleep_control_port: 0x600,
        sleep_status_port: 0x601,
        reset_port: 0x602,
        pci_ecam: (0xe000_0000, 1 << 20),
        pci_mmio: (0xc000_0000, 0x2000_0000),
        devices_aml: Vec::new(),
        extra_tables: Vec::new(),
    }
}

/// A device's table for tests: `signature`, a header whose length is right, `payload` after
/// it, and a wrong checksum (the builders set it).
#[cfg(test)]
pub(crate) fn test_table(signature: &[u8; 4], payload: &[u8]) -> Vec<u8> {
    let mut t = vec![0u8; HEADER_LEN];
    t[..4].copy_from_slice(signature);
    t[4..8].copy_from_slice(&((HEADER_LEN + payload.len()) as u32).to_le_bytes());
    t[8] = 1;
    t.extend_from_slice(payload);
    set_checksum(&mut t);
    t[9] = t[9].wrapping_add(1);
    t
}

/// A device's AML for tests: `\_SB.TSTD` with a `_UID` of 5.
#[cfg(test)]
pub(crate) fn test_device_aml() -> Vec<u8> {
    let mut aml = Vec::new();
    Device::new(
        Path::new("_SB_.TSTD"),
        vec![&Name::new(Path::new("_UID"), &5u8)],
    )
    .to_aml_bytes(&mut aml);
    aml
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checksum_ok(t: &[u8]) -> bool {
        t.iter().fold(0u8, |a, b| a.wrapping_add(*b)) == 0
    }

    fn table_at(mem: &GuestMemoryMmap, addr: u64) -> Vec<u8> {
        let len: u32 = mem.read_obj(GuestAddress(addr + 4)).unwrap();
        let mut t = vec![0u8; len as usize];
        mem.read_slice(&mut t, GuestAddress(addr)).unwrap();
        t
    }

    #[test]
    fn tables_chain_from_the_rsdp_with_valid_checksums() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap();
        let info = AcpiInfo {
            devices_aml: test_device_aml(),
            ..test_info(3)
        };
        build_acpi_tables(&mem, &info).unwrap();
        let mut rsdp = [0u8; 36];
        mem.read_slice(&mut rsdp, GuestAddress(ACPI_START)).unwrap();
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        assert!(checksum_ok(&rsdp[..20]) && checksum_ok(&rsdp));
        let xsdt_addr = u64::from_le_bytes(rsdp[24..32].try_into().unwrap());
        let xsdt = table_at(&mem, xsdt_addr);
        assert_eq!(&xsdt[..4], b"XSDT");
        assert!(checksum_ok(&xsdt));
        let entries: Vec<u64> = xsdt[36..]
            .chunks(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(entries.len(), 3, "no devices' tables, no entries for them");
        let fadt = table_at(&mem, entries[0]);
        let madt = table_at(&mem, entries[1]);
        assert_eq!(&fadt[..4], b"FACP");
        assert!(checksum_ok(&fadt));
        assert_eq!(&madt[..4], b"APIC");
        assert!(checksum_ok(&madt));
        // One local APIC entry (type 0) per vCPU and one IOAPIC (type 1).
        let mut off = 44;
        let (mut lapics, mut ioapics) = (0, 0);
        while off < madt.len() {
            match madt[off] {
                0 => lapics += 1,
                1 => ioapics += 1,
                _ => {}
            }
            off += madt[off + 1] as usize;
        }
        assert_eq!((lapics, ioapics), (3, 1));
        // FADT: X_DSDT at offset 140 points to a valid DSDT naming \_S5.
        let dsdt_addr = u64::from_le_bytes(fadt[140..148].try_into().unwrap());
        let dsdt = table_at(&mem, dsdt_addr);
        assert_eq!(&dsdt[..4], b"DSDT");
        assert!(checksum_ok(&dsdt));
        assert!(dsdt.windows(4).any(|w| w == b"_S5_"));
        // The devices' AML, unchanged, is the start of the DSDT's body.
        assert_eq!(
            &dsdt[36..36 + info.devices_aml.len()],
            &info.devices_aml[..]
        );
        // The host bridge (PNP0A08, EISA id 0x080ad041) and the ECAM reservation (PNP0C02).
        assert!(dsdt.windows(4).any(|w| w == b"PCI0"));
        assert!(dsdt.windows(4).any(|w| w == [0x41, 0xd0, 0x0a, 0x08]));
        assert!(dsdt.windows(4).any(|w| w == [0x41, 0xd0, 0x0c, 0x02]));
        // MCFG: one allocation, ECAM base at offset 44, buses 0-0.
        let mcfg = table_at(&mem, entries[2]);
        assert_eq!(&mcfg[..4], b"MCFG");
        assert!(checksum_ok(&mcfg));
        assert_eq!(mcfg.len(), 44 + 16);
        assert_eq!(
            u64::from_le_bytes(mcfg[44..52].try_into().unwrap()),
            0xe000_0000
        );
        assert_eq!((mcfg[54], mcfg[55]), (0, 0));
        // Sleep control register (offset 244) is in I/O space at our port.
        assert_eq!(fadt[244], 1);
        assert_eq!(
            u64::from_le_bytes(fadt[248..256].try_into().unwrap()),
            0x600
        );
        // Hardware-reduced flag.
        let flags = u32::from_le_bytes(fadt[112..116].try_into().unwrap());
        assert_ne!(flags & (1 << 20), 0);
        // Every table ends below the SMBIOS area.
        for addr in [xsdt_addr, entries[0], entries[1], entries[2], dsdt_addr] {
            assert!(addr + table_at(&mem, addr).len() as u64 <= SMBIOS_START);
        }
    }

    fn xsdt_entries(mem: &GuestMemoryMmap) -> Vec<u64> {
        let xsdt_addr: u64 = mem.read_obj(GuestAddress(ACPI_START + 24)).unwrap();
        let xsdt = table_at(mem, xsdt_addr);
        assert!(checksum_ok(&xsdt));
        xsdt[36..]
            .chunks(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }

    #[test]
    fn devices_tables_follow_the_platforms_in_the_xsdt() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap();
        let test = test_table(b"TEST", b"payload");
        let info = AcpiInfo {
            extra_tables: vec![test.clone(), test_table(b"TST2", &[7; 100])],
            ..test_info(2)
        };
        build_acpi_tables(&mem, &info).unwrap();
        let entries = xsdt_entries(&mem);
        let tables: Vec<Vec<u8>> = entries.iter().map(|&a| table_at(&mem, a)).collect();
        let signatures: Vec<&[u8]> = tables.iter().map(|t| &t[..4]).collect();
        assert_eq!(signatures, [b"FACP", b"APIC", b"MCFG", b"TEST", b"TST2"]);
        // Written whole, after the MCFG, below the SMBIOS area, with their checksums set.
        assert!(entries[3] > entries[2] && entries[4] > entries[3]);
        assert!(entries[4] + tables[4].len() as u64 <= SMBIOS_START);
        for t in &tables {
            assert!(checksum_ok(t), "{}", String::from_utf8_lossy(&t[..4]));
        }
        assert!(
            !checksum_ok(&test),
            "the test table starts with a wrong checksum"
        );
        assert_eq!(tables[3][..9], test[..9]);
        assert_eq!(tables[3][10..], test[10..]);
        assert_eq!(&tables[4][36..], &[7; 100]);
    }

    #[test]
    fn malformed_device_tables_are_refused_before_anything_is_written() {
        let mut short_length = test_table(b"TEST", b"abc");
        short_length[4] -= 1;
        for bad in [
            vec![0u8; 35],
            short_length,
            test_table(b"FACP", &[]),
            test_table(b"DSDT", &[]),
            test_table(b"RSD ", &[]),
        ] {
            let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap();
            let info = AcpiInfo {
                extra_tables: vec![test_table(b"TEST", &[]), bad],
                ..test_info(1)
            };
            let err = build_acpi_tables(&mem, &info).unwrap_err();
            assert!(matches!(err, BootError::Memory(_)), "{err}");
            let mut area = vec![0u8; (SMBIOS_START - ACPI_START) as usize];
            mem.read_slice(&mut area, GuestAddress(ACPI_START)).unwrap();
            assert!(area.iter().all(|&b| b == 0));
        }
    }

    #[test]
    fn tables_never_reach_the_smbios_area() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap();
        mem.write_slice(&[0xaa; 16], GuestAddress(SMBIOS_START))
            .unwrap();
        // A table that ends exactly at the SMBIOS area fits.
        let mut at = SMBIOS_START - 0x100;
        let fits = vec![1u8; 0x100];
        assert_eq!(
            place_table(&mem, &mut at, SMBIOS_START, &fits).unwrap(),
            SMBIOS_START - 0x100
        );
        assert_eq!(at, SMBIOS_START);
        // One byte more is refused, and nothing is written.
        let mut at = SMBIOS_START - 0x100;
        let too_large = vec![2u8; 0x101];
        let err = place_table(&mem, &mut at, SMBIOS_START, &too_large).unwrap_err();
        assert!(matches!(err, BootError::Memory(_)), "{err}");
        assert_eq!(at, SMBIOS_START - 0x100);
        let mut smbios = [0u8; 16];
        mem.read_slice(&mut smbios, GuestAddress(SMBIOS_START))
            .unwrap();
        assert_eq!(smbios, [0xaa; 16]);
        let mut before = [0u8; 1];
        mem.read_slice(&mut before, GuestAddress(SMBIOS_START - 1))
            .unwrap();
        assert_eq!(before, [1]);
    }
}
