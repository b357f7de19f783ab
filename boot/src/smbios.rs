//! SMBIOS 3.0 tables: what the guest reads under `/sys/firmware/dmi/` and `/sys/class/dmi/id/`,
//! and above all the OEM strings (type 11) through which systemd in the guest receives its
//! credentials and the kernel command-line extras, as from systemd-vmspawn.
//!
//! [`build_table`] makes the structure table alone, as bytes that hold no guest address, so
//! the same table can be handed to firmware on a UEFI boot. [`write_smbios`] puts it, with a
//! 64-bit (`_SM3_`) entry point, in the BIOS area at [`SMBIOS_START`]: on a boot without EFI,
//! Linux looks for the entry point on the 16-byte boundaries of 0xF0000-0xFFFFF, and this one
//! is the first it meets, ahead of any bytes of the table (which holds strings the user chose).
//! [`smbios_fw_cfg`] makes the same table and entry point as the two fw_cfg files through which
//! OVMF takes them (it then publishes them itself).
//!
//! The table holds these structures, with handles numbered from 0 in this order:
//!
//! - type 0, BIOS: vendor "rvmspawn", this build's version and release, "BIOS characteristics
//!   not supported", ACPI supported, "the system is a virtual machine";
//! - type 1, system: manufacturer and product "rvmspawn", version, the machine name as serial
//!   number, the UUID, woken by the power switch, no SKU, family "Virtual Machine";
//! - type 3, chassis: manufacturer "rvmspawn", type "other", no lock, every state "safe", no
//!   security;
//! - type 4, processor: one socket "CPU 0", a central processor of family "other", populated
//!   and enabled, with one core per vCPU and one thread per core: the topology the vCPUs report
//!   through CPUID (one type 4 structure stands for one socket);
//! - type 11, OEM strings: the caller's strings byte for byte, 255 to a structure (its count is
//!   a byte) in as many structures as needed (systemd reads them all);
//! - type 127, end of table.
//!
//! Layouts and values follow DMTF DSP0134 (SMBIOS) 3.0; the tables claim version 3.0.0.

use sha2::{Digest, Sha256};
use vm_memory::{Bytes, GuestAddress};

use crate::GuestMemoryMmap;
use crate::x86_64::layout::{SMBIOS_START, SMBIOS_TABLE_MAX_SIZE, SMBIOS_TABLE_START};

/// Length of the SMBIOS 3.0 entry point.
pub const ENTRY_POINT_LEN: usize = 24;
/// How many strings one OEM strings structure (type 11) holds: its count is a byte.
pub const OEM_STRINGS_PER_STRUCTURE: usize = 255;
/// Most OEM strings a table holds: handles 0xFF00 and up are reserved, and five structures are
/// not OEM strings.
pub const MAX_OEM_STRINGS: usize = (0xff00 - 5) * OEM_STRINGS_PER_STRUCTURE;
/// Most vCPUs the processor structure can count (0xFFFF is reserved).
pub const MAX_VCPUS: u32 = 0xfffe;
/// The fw_cfg file holding the entry point for firmware.
pub const SMBIOS_ANCHOR_FILE: &str = "etc/smbios/smbios-anchor";
/// The fw_cfg file holding the structure table for firmware.
pub const SMBIOS_TABLES_FILE: &str = "etc/smbios/smbios-tables";

/// The SMBIOS version the tables follow (major, minor, docrev).
const VERSION: [u8; 3] = [3, 0, 0];
/// Vendor, manufacturer and product name.
const NAME: &str = "rvmspawn";
/// rvmspawn's version, as the BIOS and system version.
const RVMSPAWN_VERSION: &str = env!("CARGO_PKG_VERSION");
/// The "BIOS" release date, mm/dd/yyyy as the specification wants. Linux reads the year for
/// some quirks, so it is a real date: when this table layout was written.
const BIOS_RELEASE_DATE: &str = "11/29/2026";
/// The system family (type 1).
const FAMILY: &str = "Virtual Machine";

const TYPE_BIOS: u8 = 0;
const TYPE_SYSTEM: u8 = 1;
const TYPE_CHASSIS: u8 = 3;
const TYPE_PROCESSOR: u8 = 4;
const TYPE_OEM_STRINGS: u8 = 11;
const TYPE_END: u8 = 127;

/// The namespace of [`uuid_from_name`]: a random UUID chosen once for rvmspawn, so that no
/// other name-based scheme gives the same UUIDs for the same names.
const NAME_UUID_NAMESPACE: [u8; 16] = [
    0xb6, 0x8e, 0x2b, 0xd7, 0x3f, 0x49, 0x42, 0x0e, 0xae, 0xf6, 0xfd, 0x99, 0xbb, 0x60, 0x3b, 0x75,
];

/// What the tables describe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SmbiosInfo<'a> {
    /// The system UUID (type 1), in the byte order of its text form (RFC 9562 order, as
    /// [`parse_uuid`] and [`uuid_from_name`] return it). The table stores its first three
    /// fields little-endian, as SMBIOS 2.6 and later do, so the guest's
    /// `/sys/class/dmi/id/product_uuid` shows the same text.
    pub uuid: [u8; 16],
    /// Number of vCPUs (1 to [`MAX_VCPUS`]): the cores of the one processor socket.
    pub vcpus: u32,
    /// The system serial number (type 1): rvmspawn passes the machine name. `None` or an empty
    /// string leaves the serial number unset.
    pub system_serial: Option<&'a str>,
    /// The OEM strings (type 11), in order and byte for byte: credentials
    /// (`io.systemd.credential.binary:ID=BASE64`), `--smbios11=` strings and the kernel
    /// command-line extras. None may be empty or contain a NUL byte.
    pub oem_strings: &'a [String],
}

/// Errors from building or writing the SMBIOS tables, and from parsing a UUID.
#[derive(Debug, thiserror::Error)]
pub enum SmbiosError {
    /// A string for the tables contains a NUL byte, which would end it early.
    #[error("The SMBIOS {what} contains a NUL byte")]
    Nul {
        /// Which string: "system serial number" or "OEM string N" (counted from 1).
        what: String,
    },
    /// An OEM string is empty: a string set cannot hold an empty string.
    #[error("SMBIOS OEM string {number} is empty")]
    EmptyOemString {
        /// Which one, counted from 1.
        number: usize,
    },
    /// More OEM strings than a table can hold.
    #[error("Too many SMBIOS OEM strings ({count}, at most {MAX_OEM_STRINGS})")]
    TooManyOemStrings {
        /// How many were given.
        count: usize,
    },
    /// A vCPU count the processor structure cannot hold.
    #[error("SMBIOS cannot describe {0} vCPUs (1 to {MAX_VCPUS})")]
    Vcpus(u32),
    /// The table does not fit where it goes.
    #[error(
        "The SMBIOS table needs {size} bytes, more than the {max} bytes of room for it: its {count} OEM strings (credentials, --smbios11= strings, kernel command-line extras) take {oem_bytes} bytes"
    )]
    TooLarge {
        /// Size of the table.
        size: usize,
        /// The room there is.
        max: u64,
        /// Number of OEM strings.
        count: usize,
        /// Bytes the OEM strings take in the table (with their NUL terminators).
        oem_bytes: usize,
    },
    /// Not a UUID in either of the forms `sd_id128_from_string` accepts.
    #[error("Invalid UUID: {0}")]
    InvalidUuid(String),
    /// The all-zero UUID, which means "no UUID" (Linux then shows none).
    #[error("Machine UUID may not be all zeroes.")]
    NullUuid,
    /// Writing the tables into guest memory failed.
    #[error("Failed to write the SMBIOS tables into guest memory")]
    Memory(#[source] vm_memory::GuestMemoryError),
}

impl SmbiosError {
    /// The errno that describes this error (the process exit code).
    pub fn errno(&self) -> i32 {
        match self {
            SmbiosError::Nul { .. }
            | SmbiosError::EmptyOemString { .. }
            | SmbiosError::InvalidUuid(_)
            | SmbiosError::NullUuid => libc::EINVAL,
            SmbiosError::TooManyOemStrings { .. } | SmbiosError::TooLarge { .. } => libc::E2BIG,
            SmbiosError::Vcpus(_) => libc::ERANGE,
            SmbiosError::Memory(_) => libc::EFAULT,
        }
    }
}

/// One structure being built: its type, its formatted area after the 4-byte header, and its
/// strings in the order of their numbers.
struct Structure<'s> {
    kind: u8,
    formatted: Vec<u8>,
    strings: Vec<&'s [u8]>,
}

impl<'s> Structure<'s> {
    fn new(kind: u8) -> Self {
        Structure {
            kind,
            formatted: Vec::new(),
            strings: Vec::new(),
        }
    }

    fn byte(&mut self, v: u8) -> &mut Self {
        self.formatted.push(v);
        self
    }

    fn word(&mut self, v: u16) -> &mut Self {
        self.formatted.extend_from_slice(&v.to_le_bytes());
        self
    }

    fn dword(&mut self, v: u32) -> &mut Self {
        self.formatted.extend_from_slice(&v.to_le_bytes());
        self
    }

    fn qword(&mut self, v: u64) -> &mut Self {
        self.formatted.extend_from_slice(&v.to_le_bytes());
        self
    }

    fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.formatted.extend_from_slice(v);
        self
    }

    /// A string field: the string's number in the set, or 0 ("no string") for an empty one.
    /// Structures other than type 11 have a handful of strings, far below 255.
    fn string(&mut self, s: &'s str) -> &mut Self {
        let number = if s.is_empty() {
            0
        } else {
            self.strings.push(s.as_bytes());
            self.strings.len() as u8
        };
        self.byte(number)
    }

    /// Append the structure: header, formatted area, then the string set, each string
    /// NUL-terminated and the set ended by one more NUL (two NULs when there are no strings).
    fn encode(&self, handle: u16, out: &mut Vec<u8>) {
        debug_assert!(self.formatted.len() <= 0xff - 4);
        out.push(self.kind);
        out.push(4 + self.formatted.len() as u8);
        out.extend_from_slice(&handle.to_le_bytes());
        out.extend_from_slice(&self.formatted);
        if self.strings.is_empty() {
            out.push(0);
        }
        for s in &self.strings {
            out.extend_from_slice(s);
            out.push(0);
        }
        out.push(0);
    }
}

/// Type 0, BIOS information (length 0x18).
fn bios() -> Structure<'static> {
    let release = |v: &str| v.parse::<u8>().unwrap_or(0xff);
    let mut s = Structure::new(TYPE_BIOS);
    s.string(NAME) // 0x04 vendor
        .string(RVMSPAWN_VERSION) // 0x05 BIOS version
        .word(0) // 0x06 starting address segment: no BIOS image
        .string(BIOS_RELEASE_DATE) // 0x08 release date
        .byte(0) // 0x09 ROM size: none to speak of
        .qword(1 << 3) // 0x0a characteristics: "BIOS characteristics not supported"
        .byte(1 << 0) // 0x12 extension byte 1: ACPI supported
        .byte(1 << 4) // 0x13 extension byte 2: the system is a virtual machine
        .byte(release(env!("CARGO_PKG_VERSION_MAJOR"))) // 0x14 BIOS major release
        .byte(release(env!("CARGO_PKG_VERSION_MINOR"))) // 0x15 BIOS minor release
        .byte(0xff) // 0x16 embedded controller major release: none
        .byte(0xff); // 0x17 embedded controller minor release: none
    s
}

/// The UUID as SMBIOS 2.6 and later store it: time-low, time-mid and time-high little-endian,
/// the last eight bytes as they are.
fn smbios_uuid(uuid: &[u8; 16]) -> [u8; 16] {
    let mut u = *uuid;
    u[0..4].reverse();
    u[4..6].reverse();
    u[6..8].reverse();
    u
}

/// Type 1, system information (length 0x1b).
fn system<'s>(info: &SmbiosInfo<'s>) -> Structure<'s> {
    let mut s = Structure::new(TYPE_SYSTEM);
    s.string(NAME) // 0x04 manufacturer
        .string(NAME) // 0x05 product name
        .string(RVMSPAWN_VERSION) // 0x06 version
        .string(info.system_serial.unwrap_or("")) // 0x07 serial number
        .bytes(&smbios_uuid(&info.uuid)) // 0x08 UUID
        .byte(0x06) // 0x18 wake-up type: power switch
        .string("") // 0x19 SKU number: none
        .string(FAMILY); // 0x1a family
    s
}

/// Type 3, system enclosure or chassis (length 0x16).
fn chassis() -> Structure<'static> {
    const SAFE: u8 = 0x03;
    let mut s = Structure::new(TYPE_CHASSIS);
    s.string(NAME) // 0x04 manufacturer
        .byte(0x01) // 0x05 type "other", bit 7 clear: no chassis lock
        .string("") // 0x06 version
        .string("") // 0x07 serial number
        .string("") // 0x08 asset tag
        .byte(SAFE) // 0x09 boot-up state
        .byte(SAFE) // 0x0a power supply state
        .byte(SAFE) // 0x0b thermal state
        .byte(0x03) // 0x0c security status: none
        .dword(0) // 0x0d OEM-defined
        .byte(0) // 0x11 height: unspecified
        .byte(0) // 0x12 number of power cords: unspecified
        .byte(0) // 0x13 contained elements: none
        .byte(3) // 0x14 contained element record length (as specified)
        .string(""); // 0x15 SKU number
    s
}

/// Type 4, processor information (length 0x30): the one socket, with one core per vCPU.
fn processor(vcpus: u16) -> Structure<'static> {
    // Counts of 256 or more go in the 16-bit fields, with 0xff in the byte ones.
    let count8 = u8::try_from(vcpus).unwrap_or(0xff);
    let mut s = Structure::new(TYPE_PROCESSOR);
    s.string("CPU 0") // 0x04 socket designation
        .byte(0x03) // 0x05 processor type: central processor
        .byte(0x01) // 0x06 processor family: other
        .string("") // 0x07 processor manufacturer
        .qword(0) // 0x08 processor ID
        .string("") // 0x10 processor version
        .byte(0) // 0x11 voltage: unknown
        .word(0) // 0x12 external clock: unknown
        .word(0) // 0x14 max speed: unknown
        .word(0) // 0x16 current speed: unknown
        .byte(0x41) // 0x18 status: socket populated, CPU enabled
        .byte(0x01) // 0x19 processor upgrade: other
        .word(0xffff) // 0x1a L1 cache handle: none
        .word(0xffff) // 0x1c L2 cache handle: none
        .word(0xffff) // 0x1e L3 cache handle: none
        .string("") // 0x20 serial number
        .string("") // 0x21 asset tag
        .string("") // 0x22 part number
        .byte(count8) // 0x23 core count
        .byte(count8) // 0x24 cores enabled
        .byte(count8) // 0x25 thread count
        .word(1 << 2) // 0x26 characteristics: 64-bit capable
        .word(0x0001) // 0x28 processor family 2: other
        .word(vcpus) // 0x2a core count 2
        .word(vcpus) // 0x2c cores enabled 2
        .word(vcpus); // 0x2e thread count 2
    s
}

/// Type 11, OEM strings (length 5): up to 255 non-empty strings.
fn oem_strings(strings: &[String]) -> Structure<'_> {
    debug_assert!(strings.len() <= OEM_STRINGS_PER_STRUCTURE);
    let mut s = Structure::new(TYPE_OEM_STRINGS);
    s.byte(strings.len() as u8); // 0x04 count
    s.strings = strings.iter().map(|s| s.as_bytes()).collect();
    s
}

/// Check the caller's strings and counts.
fn validate(info: &SmbiosInfo) -> Result<u16, SmbiosError> {
    if info.system_serial.is_some_and(|s| s.contains('\0')) {
        return Err(SmbiosError::Nul {
            what: "system serial number".into(),
        });
    }
    if info.oem_strings.len() > MAX_OEM_STRINGS {
        return Err(SmbiosError::TooManyOemStrings {
            count: info.oem_strings.len(),
        });
    }
    for (i, s) in info.oem_strings.iter().enumerate() {
        if s.is_empty() {
            return Err(SmbiosError::EmptyOemString { number: i + 1 });
        }
        if s.contains('\0') {
            return Err(SmbiosError::Nul {
                what: format!("OEM string {}", i + 1),
            });
        }
    }
    match u16::try_from(info.vcpus) {
        Ok(v) if (1..=MAX_VCPUS).contains(&info.vcpus) => Ok(v),
        _ => Err(SmbiosError::Vcpus(info.vcpus)),
    }
}

/// Build the SMBIOS structure table (types 0, 1, 3, 4, 11 and 127), without an entry point.
///
/// The bytes name no guest address, so the table can go anywhere; the caller checks its size
/// against the room where it puts it ([`write_smbios`] does for the BIOS area).
pub fn build_table(info: &SmbiosInfo) -> Result<Vec<u8>, SmbiosError> {
    let vcpus = validate(info)?;
    let mut structures = vec![bios(), system(info), chassis(), processor(vcpus)];
    structures.extend(
        info.oem_strings
            .chunks(OEM_STRINGS_PER_STRUCTURE)
            .map(oem_strings),
    );
    structures.push(Structure::new(TYPE_END));
    let mut table = Vec::new();
    for (handle, s) in (0u16..).zip(&structures) {
        s.encode(handle, &mut table);
    }
    Ok(table)
}

/// The SMBIOS 3.0 64-bit entry point (`_SM3_`) for a table of `table_len` bytes at
/// `table_addr`, with its checksum.
pub fn entry_point(table_addr: u64, table_len: u32) -> [u8; ENTRY_POINT_LEN] {
    let mut ep = [0u8; ENTRY_POINT_LEN];
    ep[0..5].copy_from_slice(b"_SM3_"); // anchor; 0x05 checksum below
    ep[6] = ENTRY_POINT_LEN as u8; // entry point length
    ep[7..10].copy_from_slice(&VERSION); // major, minor, docrev
    ep[10] = 0x01; // entry point revision: SMBIOS 3.0
    // 0x0b reserved
    ep[12..16].copy_from_slice(&table_len.to_le_bytes()); // structure table maximum size
    ep[16..24].copy_from_slice(&table_addr.to_le_bytes()); // structure table address
    ep[5] = ep.iter().fold(0u8, |sum, b| sum.wrapping_sub(*b));
    ep
}

/// Build the table and write it at [`SMBIOS_TABLE_START`], with its entry point at
/// [`SMBIOS_START`], where Linux finds it without EFI. A table that would reach the
/// reset-vector stub is refused with [`SmbiosError::TooLarge`] before anything is written.
pub fn write_smbios(mem: &GuestMemoryMmap, info: &SmbiosInfo) -> Result<(), SmbiosError> {
    let table = build_table(info)?;
    let len = u32::try_from(table.len())
        .ok()
        .filter(|&len| u64::from(len) <= SMBIOS_TABLE_MAX_SIZE)
        .ok_or_else(|| SmbiosError::TooLarge {
            size: table.len(),
            max: SMBIOS_TABLE_MAX_SIZE,
            count: info.oem_strings.len(),
            oem_bytes: info.oem_strings.iter().map(|s| s.len() + 1).sum(),
        })?;
    mem.write_slice(&table, GuestAddress(SMBIOS_TABLE_START))
        .map_err(SmbiosError::Memory)?;
    mem.write_slice(
        &entry_point(SMBIOS_TABLE_START, len),
        GuestAddress(SMBIOS_START),
    )
    .map_err(SmbiosError::Memory)
}

/// The SMBIOS tables for UEFI firmware: the contents of the fw_cfg files
/// [`SMBIOS_ANCHOR_FILE`] (a 24-byte 3.0 entry point) and [`SMBIOS_TABLES_FILE`] (the same
/// structure table as [`write_smbios`] writes, ending with the type 127 structure).
///
/// OVMF accepts a 3.0 entry point only if its anchor is `_SM3_`, its major version 3 and its
/// structure table maximum size exactly the table's length (it ignores the address, left 0,
/// and the checksum, which is valid). Unlike 2.x, a 3.0 entry point lets strings exceed 64
/// bytes (credentials do) and the table exceed 64 KiB. The table has its own type 0, so OVMF
/// adds none.
pub fn smbios_fw_cfg(info: &SmbiosInfo) -> Result<(Vec<u8>, Vec<u8>), SmbiosError> {
    let table = build_table(info)?;
    let len = u32::try_from(table.len()).map_err(|_| SmbiosError::TooLarge {
        size: table.len(),
        max: u64::from(u32::MAX),
        count: info.oem_strings.len(),
        oem_bytes: info.oem_strings.iter().map(|s| s.len() + 1).sum(),
    })?;
    Ok((entry_point(0, len).to_vec(), table))
}

/// A UUID that stays the same for the same machine name: the first 16 bytes of
/// SHA-256(rvmspawn's namespace UUID ‖ the name's UTF-8 bytes), marked as an RFC 9562
/// version 8 (custom, here name-based with SHA-256) UUID of the RFC 4122 variant. In the byte
/// order of its text form, like [`parse_uuid`]'s result.
pub fn uuid_from_name(name: &str) -> [u8; 16] {
    let digest = Sha256::new()
        .chain_update(NAME_UUID_NAMESPACE)
        .chain_update(name.as_bytes())
        .finalize();
    let mut uuid = [0u8; 16];
    uuid.copy_from_slice(&digest[..16]);
    uuid[6] = (uuid[6] & 0x0f) | 0x80; // version 8
    uuid[8] = (uuid[8] & 0x3f) | 0x80; // variant 0b10
    uuid
}

/// Parse a UUID as systemd's `sd_id128_from_string` does: 32 hex digits, or the 8-4-4-4-12
/// form with its four dashes; either case, nothing around it. The all-zero UUID is refused, as
/// systemd-vmspawn's `--uuid=` refuses it.
pub fn parse_uuid(s: &str) -> Result<[u8; 16], SmbiosError> {
    const DASHES: [usize; 4] = [8, 13, 18, 23];
    let invalid = || SmbiosError::InvalidUuid(s.to_string());
    let text = s.as_bytes();
    let digits: Vec<u8> = match text.len() {
        32 => text.to_vec(),
        36 if DASHES.iter().all(|&i| text[i] == b'-') => text
            .iter()
            .enumerate()
            .filter(|(i, _)| !DASHES.contains(i))
            .map(|(_, &c)| c)
            .collect(),
        _ => return Err(invalid()),
    };
    let mut uuid = [0u8; 16];
    for (byte, pair) in uuid.iter_mut().zip(digits.chunks(2)) {
        let hex = |c: u8| char::from(c).to_digit(16).ok_or_else(invalid);
        *byte = ((hex(pair[0])? << 4) | hex(pair[1])?) as u8;
    }
    if uuid == [0; 16] {
        return Err(SmbiosError::NullUuid);
    }
    Ok(uuid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::x86_64::layout::{RESET_VECTOR, SMBIOS_END};

    /// One structure as a reader sees it.
    #[derive(Debug)]
    struct Parsed {
        kind: u8,
        handle: u16,
        formatted: Vec<u8>,
        strings: Vec<Vec<u8>>,
    }

    impl Parsed {
        /// The string a string field names (number 0 is "none").
        fn string(&self, offset: usize) -> Option<&[u8]> {
            match self.formatted[offset] {
                0 => None,
                n => Some(&self.strings[usize::from(n) - 1]),
            }
        }

        fn word(&self, offset: usize) -> u16 {
            u16::from_le_bytes([self.formatted[offset], self.formatted[offset + 1]])
        }
    }

    /// Walk a table as Linux does: structure by structure up to type 127, never past `len`.
    fn parse(table: &[u8]) -> Vec<Parsed> {
        let mut out = Vec::new();
        let mut at = 0;
        loop {
            assert!(at + 4 <= table.len(), "ran off the table");
            let len = usize::from(table[at + 1]);
            assert!(len >= 4);
            let formatted = table[at..at + len].to_vec();
            // The string set ends at the first double NUL after the formatted area.
            let mut end = at + len;
            while table[end] != 0 || table[end + 1] != 0 {
                end += 1;
            }
            let set = &table[at + len..end];
            let strings = if set.is_empty() {
                Vec::new()
            } else {
                set.split(|&b| b == 0).map(<[u8]>::to_vec).collect()
            };
            let p = Parsed {
                kind: table[at],
                handle: u16::from_le_bytes([table[at + 2], table[at + 3]]),
                formatted,
                strings,
            };
            at = end + 2;
            let last = p.kind == TYPE_END;
            out.push(p);
            if last {
                assert_eq!(at, table.len(), "bytes after the end-of-table structure");
                return out;
            }
        }
    }

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn info<'a>(oem: &'a [String]) -> SmbiosInfo<'a> {
        SmbiosInfo {
            uuid: parse_uuid("01234567-89ab-cdef-0123-456789abcdef").unwrap(),
            vcpus: 2,
            system_serial: Some("image"),
            oem_strings: oem,
        }
    }

    /// The UUID as Linux prints `product_uuid` for SMBIOS 2.6 and later (`%pUl`).
    fn linux_uuid_text(raw: &[u8]) -> String {
        let mut u: [u8; 16] = raw.try_into().unwrap();
        u[0..4].reverse();
        u[4..6].reverse();
        u[6..8].reverse();
        let h: String = u.iter().map(|b| format!("{b:02x}")).collect();
        format!(
            "{}-{}-{}-{}-{}",
            &h[..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..]
        )
    }

    fn checksum_ok(bytes: &[u8]) -> bool {
        bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)) == 0
    }

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap()
    }

    #[test]
    fn entry_point_fields_and_checksum() {
        let ep = entry_point(0xf_0020, 0x1234);
        assert_eq!(ep.len(), 24);
        assert_eq!(&ep[..5], b"_SM3_");
        assert!(checksum_ok(&ep));
        assert_eq!(ep[6], 24);
        assert_eq!((ep[7], ep[8], ep[9]), (3, 0, 0));
        assert_eq!(ep[10], 1);
        assert_eq!(ep[11], 0);
        assert_eq!(u32::from_le_bytes(ep[12..16].try_into().unwrap()), 0x1234);
        assert_eq!(u64::from_le_bytes(ep[16..24].try_into().unwrap()), 0xf_0020);
        // The checksum depends on every field.
        assert_ne!(entry_point(0xf_0020, 0x1235)[5], ep[5]);
    }

    #[test]
    fn structures_in_order_with_lengths_and_handles() {
        let oem = strings(&["a=1", "b=2"]);
        let s = parse(&build_table(&info(&oem)).unwrap());
        let kinds: Vec<u8> = s.iter().map(|p| p.kind).collect();
        assert_eq!(kinds, [0, 1, 3, 4, 11, 127]);
        let lengths: Vec<usize> = s.iter().map(|p| p.formatted.len()).collect();
        assert_eq!(lengths, [0x18, 0x1b, 0x16, 0x30, 5, 4]);
        let handles: Vec<u16> = s.iter().map(|p| p.handle).collect();
        assert_eq!(handles, [0, 1, 2, 3, 4, 5]);
    }

    #[test]
    fn no_oem_strings_means_no_type_11() {
        let s = parse(&build_table(&info(&[])).unwrap());
        let kinds: Vec<u8> = s.iter().map(|p| p.kind).collect();
        assert_eq!(kinds, [0, 1, 3, 4, 127]);
        assert_eq!(s.last().unwrap().handle, 4);
    }

    #[test]
    fn string_sets_end_in_a_double_nul() {
        let table = build_table(&info(&[])).unwrap();
        // The end-of-table structure has no strings: header then two NULs, and nothing after.
        assert_eq!(&table[table.len() - 6..], [127, 4, 4, 0, 0, 0]);
        // Type 0 is followed by exactly its three strings and one more NUL.
        let len = usize::from(table[1]);
        let set = format!("rvmspawn\0{RVMSPAWN_VERSION}\0{BIOS_RELEASE_DATE}\0\0");
        assert_eq!(&table[len..len + set.len()], set.as_bytes());
        assert_eq!(table[len + set.len()], TYPE_SYSTEM);
        let s = parse(&table);
        assert_eq!(s[0].string(0x04), Some(&b"rvmspawn"[..]));
        assert_eq!(s[0].string(0x05), Some(RVMSPAWN_VERSION.as_bytes()));
        assert_eq!(s[0].string(0x08), Some(BIOS_RELEASE_DATE.as_bytes()));
        // Empty strings are string number 0, not an empty entry in the set.
        assert_eq!(s[2].strings, [b"rvmspawn".to_vec()]);
        for offset in [0x06, 0x07, 0x08, 0x15] {
            assert_eq!(s[2].string(offset), None);
        }
        assert_eq!(s[3].strings, [b"CPU 0".to_vec()]);
    }

    #[test]
    fn bios_characteristics_say_virtual_machine() {
        let s = parse(&build_table(&info(&[])).unwrap());
        let bios = &s[0];
        let chars = u64::from_le_bytes(bios.formatted[0x0a..0x12].try_into().unwrap());
        assert_eq!(chars, 1 << 3, "only 'characteristics not supported'");
        assert_eq!(bios.formatted[0x12], 0x01, "ACPI supported");
        assert_eq!(bios.formatted[0x13] & (1 << 4), 1 << 4, "virtual machine");
        assert_eq!(bios.word(0x06), 0);
        let major: u8 = env!("CARGO_PKG_VERSION_MAJOR").parse().unwrap();
        let minor: u8 = env!("CARGO_PKG_VERSION_MINOR").parse().unwrap();
        assert_eq!((bios.formatted[0x14], bios.formatted[0x15]), (major, minor));
        assert_eq!((bios.formatted[0x16], bios.formatted[0x17]), (0xff, 0xff));
        // mm/dd/yyyy
        let date = std::str::from_utf8(bios.string(0x08).unwrap()).unwrap();
        let parts: Vec<&str> = date.split('/').collect();
        assert_eq!(parts.iter().map(|p| p.len()).collect::<Vec<_>>(), [2, 2, 4]);
    }

    #[test]
    fn system_information() {
        let s = parse(&build_table(&info(&[])).unwrap());
        let sys = &s[1];
        assert_eq!(sys.string(0x04), Some(&b"rvmspawn"[..]));
        assert_eq!(sys.string(0x05), Some(&b"rvmspawn"[..]));
        assert_eq!(sys.string(0x06), Some(RVMSPAWN_VERSION.as_bytes()));
        assert_eq!(sys.string(0x07), Some(&b"image"[..]));
        assert_eq!(sys.formatted[0x18], 0x06, "power switch");
        assert_eq!(sys.string(0x19), None);
        assert_eq!(sys.string(0x1a), Some(FAMILY.as_bytes()));
        // Without a serial number, or with an empty one, the field names no string.
        for serial in [None, Some("")] {
            let i = SmbiosInfo {
                system_serial: serial,
                ..info(&[])
            };
            let s = parse(&build_table(&i).unwrap());
            assert_eq!(s[1].string(0x07), None);
            assert_eq!(s[1].strings.len(), 4);
        }
    }

    #[test]
    fn uuid_is_stored_in_smbios_byte_order() {
        let s = parse(&build_table(&info(&[])).unwrap());
        let raw = &s[1].formatted[0x08..0x18];
        assert_eq!(
            raw,
            [
                0x67, 0x45, 0x23, 0x01, 0xab, 0x89, 0xef, 0xcd, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab,
                0xcd, 0xef
            ]
        );
        // What the guest's /sys/class/dmi/id/product_uuid then shows.
        assert_eq!(linux_uuid_text(raw), "01234567-89ab-cdef-0123-456789abcdef");
    }

    #[test]
    fn chassis_is_other_and_safe() {
        let s = parse(&build_table(&info(&[])).unwrap());
        let c = &s[2];
        assert_eq!(c.string(0x04), Some(&b"rvmspawn"[..]));
        assert_eq!(c.formatted[0x05], 0x01, "type other, no lock");
        assert_eq!(&c.formatted[0x09..0x0d], [3, 3, 3, 3]);
        assert_eq!((c.formatted[0x13], c.formatted[0x14]), (0, 3));
    }

    #[test]
    fn one_processor_socket_with_a_core_per_vcpu() {
        for (vcpus, count8) in [(1u32, 1u8), (8, 8), (255, 255), (256, 0xff), (4096, 0xff)] {
            let i = SmbiosInfo { vcpus, ..info(&[]) };
            let s = parse(&build_table(&i).unwrap());
            let cpus: Vec<&Parsed> = s.iter().filter(|p| p.kind == TYPE_PROCESSOR).collect();
            assert_eq!(cpus.len(), 1);
            let p = cpus[0];
            assert_eq!(p.string(0x04), Some(&b"CPU 0"[..]));
            assert_eq!(p.formatted[0x05], 0x03, "central processor");
            assert_eq!(p.formatted[0x06], 0x01, "family other");
            assert_eq!(p.word(0x28), 0x0001, "family 2 other");
            assert_eq!(p.formatted[0x18], 0x41, "populated, enabled");
            assert_eq!(&p.formatted[0x23..0x26], [count8; 3]);
            for offset in [0x2a, 0x2c, 0x2e] {
                assert_eq!(u32::from(p.word(offset)), vcpus);
            }
            for offset in [0x1a, 0x1c, 0x1e] {
                assert_eq!(p.word(offset), 0xffff);
            }
        }
        for vcpus in [0, MAX_VCPUS + 1, u32::MAX] {
            let i = SmbiosInfo { vcpus, ..info(&[]) };
            let err = build_table(&i).unwrap_err();
            assert!(matches!(err, SmbiosError::Vcpus(v) if v == vcpus));
            assert_eq!(err.errno(), libc::ERANGE);
        }
    }

    #[test]
    fn oem_strings_arrive_exactly_as_given() {
        let oem = strings(&[
            "io.systemd.credential.binary:foo=aGVsbG8K",
            "io.systemd.stub.kernel-cmdline-extra=quiet x=\"a b\"",
            "line one\nline two\ttab\r\x01\x7f",
            "ünïcödé ✓ 🦀 \u{10ffff}",
            "=",
            " ",
        ]);
        let s = parse(&build_table(&info(&oem)).unwrap());
        let t11 = &s[4];
        assert_eq!(t11.kind, TYPE_OEM_STRINGS);
        assert_eq!(usize::from(t11.formatted[0x04]), oem.len());
        let got: Vec<&[u8]> = t11.strings.iter().map(Vec::as_slice).collect();
        let want: Vec<&[u8]> = oem.iter().map(|s| s.as_bytes()).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn more_than_255_oem_strings_take_several_structures() {
        let oem: Vec<String> = (0..600).map(|i| format!("s{i}")).collect();
        let s = parse(&build_table(&info(&oem)).unwrap());
        let t11: Vec<&Parsed> = s.iter().filter(|p| p.kind == TYPE_OEM_STRINGS).collect();
        let counts: Vec<u8> = t11.iter().map(|p| p.formatted[0x04]).collect();
        assert_eq!(counts, [255, 255, 90]);
        let all: Vec<Vec<u8>> = t11.iter().flat_map(|p| p.strings.clone()).collect();
        let want: Vec<Vec<u8>> = oem.iter().map(|s| s.as_bytes().to_vec()).collect();
        assert_eq!(all, want);
        let handles: Vec<u16> = s.iter().map(|p| p.handle).collect();
        assert_eq!(handles, (0..8).collect::<Vec<u16>>());
        assert_eq!(s.last().unwrap().kind, TYPE_END);
    }

    #[test]
    fn bad_strings_are_refused_by_name() {
        let oem = strings(&["ok", "bad\0string"]);
        let err = build_table(&info(&oem)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "The SMBIOS OEM string 2 contains a NUL byte"
        );
        assert_eq!(err.errno(), libc::EINVAL);

        let oem = strings(&["ok", "also ok", ""]);
        let err = build_table(&info(&oem)).unwrap_err();
        assert_eq!(err.to_string(), "SMBIOS OEM string 3 is empty");
        assert_eq!(err.errno(), libc::EINVAL);

        let i = SmbiosInfo {
            system_serial: Some("na\0me"),
            ..info(&[])
        };
        let err = build_table(&i).unwrap_err();
        assert_eq!(
            err.to_string(),
            "The SMBIOS system serial number contains a NUL byte"
        );
    }

    #[test]
    fn a_table_too_large_for_the_bios_area_is_refused() {
        let mem = memory();
        // One string that makes the table one byte too large, then one that fits exactly.
        let base = build_table(&info(&strings(&["x"]))).unwrap().len();
        let room = SMBIOS_TABLE_MAX_SIZE as usize;
        let too_large = vec!["x".repeat(room - base + 2)];
        let err = write_smbios(&mem, &info(&too_large)).unwrap_err();
        assert_eq!(err.errno(), libc::E2BIG);
        let SmbiosError::TooLarge {
            size,
            max,
            count,
            oem_bytes,
        } = &err
        else {
            panic!("{err}");
        };
        assert_eq!((*size, *max, *count), (room + 1, SMBIOS_TABLE_MAX_SIZE, 1));
        assert_eq!(*oem_bytes, room - base + 3);
        assert!(err.to_string().contains("OEM strings"), "{err}");
        // Nothing was written.
        let mut ep = [0u8; 5];
        mem.read_slice(&mut ep, GuestAddress(SMBIOS_START)).unwrap();
        assert_eq!(ep, [0; 5]);

        let fits = vec!["x".repeat(room - base + 1)];
        write_smbios(&mem, &info(&fits)).unwrap();
        let mut ep = [0u8; ENTRY_POINT_LEN];
        mem.read_slice(&mut ep, GuestAddress(SMBIOS_START)).unwrap();
        let len = u64::from(u32::from_le_bytes(ep[12..16].try_into().unwrap()));
        assert_eq!(SMBIOS_TABLE_START + len, SMBIOS_END);
        assert_eq!(SMBIOS_END, RESET_VECTOR);
    }

    /// Find the entry point as Linux's non-EFI DMI scan does: `_SM3_` on a 16-byte boundary of
    /// 0xF0000-0xFFFFF, a length of 24 to 32 bytes and a zero checksum.
    fn linux_scan(mem: &GuestMemoryMmap) -> Option<(u64, [u8; 32])> {
        let mut area = vec![0u8; 0x1_0000];
        mem.read_slice(&mut area, GuestAddress(0xf_0000)).unwrap();
        (0..=0x1_0000 - 32).step_by(16).find_map(|off| {
            let buf: [u8; 32] = area[off..off + 32].try_into().unwrap();
            let len = usize::from(buf[6]);
            (&buf[..5] == b"_SM3_" && (24..=32).contains(&len) && checksum_ok(&buf[..len]))
                .then_some((0xf_0000 + off as u64, buf))
        })
    }

    #[test]
    fn linux_finds_the_tables_in_guest_memory() {
        let mem = memory();
        let oem = strings(&["io.systemd.credential:a=b"]);
        write_smbios(&mem, &info(&oem)).unwrap();
        let (addr, ep) = linux_scan(&mem).expect("no SMBIOS 3.0 entry point found");
        assert_eq!(addr, SMBIOS_START);
        assert_eq!(addr % 16, 0);
        let base = u64::from_le_bytes(ep[16..24].try_into().unwrap());
        let len = u64::from(u32::from_le_bytes(ep[12..16].try_into().unwrap()));
        assert_eq!(base, SMBIOS_TABLE_START);
        assert!(base >= addr + ENTRY_POINT_LEN as u64);
        assert!(base + len <= RESET_VECTOR);
        let mut table = vec![0u8; len as usize];
        mem.read_slice(&mut table, GuestAddress(base)).unwrap();
        assert_eq!(table, build_table(&info(&oem)).unwrap());
        let s = parse(&table);
        assert_eq!(s[4].strings, [b"io.systemd.credential:a=b".to_vec()]);
    }

    #[test]
    fn acpi_and_smbios_tables_share_the_bios_area() {
        use crate::x86_64::acpi::{build_acpi_tables, test_info};
        use crate::x86_64::layout::ACPI_START;
        let mem = memory();
        build_acpi_tables(&mem, &test_info(255)).unwrap();
        let mut before = vec![0u8; (SMBIOS_START - ACPI_START) as usize];
        mem.read_slice(&mut before, GuestAddress(ACPI_START))
            .unwrap();
        write_smbios(&mem, &info(&strings(&["x=y"]))).unwrap();
        let mut after = vec![0u8; before.len()];
        mem.read_slice(&mut after, GuestAddress(ACPI_START))
            .unwrap();
        assert_eq!(before, after, "SMBIOS wrote into the ACPI tables");
        assert_eq!(&after[..8], b"RSD PTR ");
        assert!(linux_scan(&mem).is_some());
    }

    /// What OVMF's `DetectSmbiosVersion` requires of a 3.0 anchor from fw_cfg.
    fn ovmf_accepts(anchor: &[u8], tables: &[u8]) -> bool {
        anchor.len() == 24
            && &anchor[..5] == b"_SM3_"
            && anchor[7] == 3
            && u64::from(u32::from_le_bytes(anchor[12..16].try_into().unwrap()))
                == tables.len() as u64
    }

    #[test]
    fn fw_cfg_files_carry_the_direct_boot_table_and_a_3_0_anchor() {
        let credential = format!("io.systemd.credential.binary:secret={}", "QUJD".repeat(66));
        assert!(credential.len() >= 300);
        let oem = strings(&["x=y", &credential]);
        let (anchor, tables) = smbios_fw_cfg(&info(&oem)).unwrap();
        assert!(ovmf_accepts(&anchor, &tables));
        assert_eq!(anchor[6], 24, "entry point length");
        assert!(checksum_ok(&anchor));
        assert_eq!(u64::from_le_bytes(anchor[16..24].try_into().unwrap()), 0);
        // The very table the direct boot writes: type 0 included, so OVMF adds none.
        assert_eq!(tables, build_table(&info(&oem)).unwrap());
        let s = parse(&tables);
        let kinds: Vec<u8> = s.iter().map(|p| p.kind).collect();
        assert_eq!(kinds, [0, 1, 3, 4, 11, 127]);
        assert_eq!(&tables[tables.len() - 6..], [127, 4, 5, 0, 0, 0]);
        // The long credential arrives whole, byte for byte.
        assert_eq!(s[4].strings, [b"x=y".to_vec(), credential.into_bytes()]);
        // Refusals are those of the direct path.
        let bad = strings(&["a\0b"]);
        assert_eq!(
            smbios_fw_cfg(&info(&bad)).unwrap_err().errno(),
            libc::EINVAL
        );
    }

    #[test]
    fn fw_cfg_tables_may_exceed_the_bios_area() {
        // No 64 KiB limit: only the entry point's 32-bit size bounds the table.
        let oem: Vec<String> = (0..40)
            .map(|i| format!("s{i}={}", "x".repeat(4000)))
            .collect();
        let (anchor, tables) = smbios_fw_cfg(&info(&oem)).unwrap();
        assert!(tables.len() as u64 > SMBIOS_TABLE_MAX_SIZE);
        assert!(ovmf_accepts(&anchor, &tables));
        assert!(write_smbios(&memory(), &info(&oem)).is_err());
    }

    #[test]
    fn parse_uuid_accepts_what_systemd_accepts() {
        let want = [
            0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab,
            0xcd, 0xef,
        ];
        for s in [
            "01234567-89ab-cdef-0123-456789abcdef",
            "0123456789abcdef0123456789abcdef",
            "01234567-89AB-CDEF-0123-456789ABCDEF",
            "0123456789ABCDEF0123456789abcdef",
        ] {
            assert_eq!(parse_uuid(s).unwrap(), want, "{s}");
        }
        for s in [
            "",
            "0123456789abcdef0123456789abcde",
            "0123456789abcdef0123456789abcdef0",
            "01234567-89ab-cdef-0123-456789abcde",
            "01234567-89ab-cdef-0123-456789abcdef0",
            "0123456-789ab-cdef-0123-456789abcdef",
            "01234567-89ab-cdef-0123456789abcdef",
            "01234567089ab-cdef-0123-456789abcdef",
            "{01234567-89ab-cdef-0123-456789abcdef}",
            " 0123456789abcdef0123456789abcdef",
            "0123456789abcdef0123456789abcdeg",
            "+123456789abcdef0123456789abcdef",
            "01234567-89ab-cdef-0123-456789abcdéf",
        ] {
            let err = parse_uuid(s).unwrap_err();
            assert_eq!(err.to_string(), format!("Invalid UUID: {s}"));
            assert_eq!(err.errno(), libc::EINVAL);
        }
        for s in [
            "00000000-0000-0000-0000-000000000000",
            "00000000000000000000000000000000",
        ] {
            let err = parse_uuid(s).unwrap_err();
            assert!(matches!(err, SmbiosError::NullUuid));
            assert_eq!(err.to_string(), "Machine UUID may not be all zeroes.");
        }
    }

    #[test]
    fn uuid_from_name_is_stable_and_marked_version_8() {
        // Golden values: changing the derivation would change guests' machine IDs.
        assert_eq!(
            uuid_from_name("image"),
            parse_uuid("7fdf72d2-bcff-8f32-bccf-a846878051c5").unwrap()
        );
        assert_eq!(
            uuid_from_name("debian-13"),
            parse_uuid("0c2b14d3-99c2-8ed2-b2b4-269cf241968d").unwrap()
        );
        assert_eq!(uuid_from_name("image"), uuid_from_name("image"));
        assert_ne!(uuid_from_name("image"), uuid_from_name("image2"));
        for name in ["", "a", "machine", "ünïcödé"] {
            let u = uuid_from_name(name);
            assert_eq!(u[6] >> 4, 8, "version");
            assert_eq!(u[8] >> 6, 0b10, "variant");
        }
        // As the system UUID, the guest reads back the same text.
        let i = SmbiosInfo {
            uuid: uuid_from_name("image"),
            ..info(&[])
        };
        let s = parse(&build_table(&i).unwrap());
        assert_eq!(
            linux_uuid_text(&s[1].formatted[0x08..0x18]),
            "7fdf72d2-bcff-8f32-bccf-a846878051c5"
        );
    }
}
