//! The "table-loader" command script through which QEMU-style firmware (OVMF, SeaBIOS) learns
//! how to place and link the ACPI tables it reads from fw_cfg (`etc/table-loader`).
//!
//! The VMM cannot know where the firmware will put the tables, so it hands over blobs whose
//! pointer fields hold offsets into the blob they point into, plus a script of three commands:
//!
//! - ALLOCATE: read a fw_cfg file into firmware memory, at an address aligned as asked;
//! - ADD_POINTER: add the base address of one allocated file (the pointee) to the
//!   little-endian value of 1, 2, 4 or 8 bytes at an offset in another (or the same) file;
//! - ADD_CHECKSUM: store at an offset the byte that makes a range sum to zero. As in OVMF, the
//!   range's sum includes the byte's current value, so the blob must hold 0 there.
//!
//! Each command is a 128-byte little-endian entry: a 32-bit command type, then the command's
//! fields; file names are NUL-padded to 56 bytes, so a name has at most 55 bytes.
//!
//! [`apply`] runs a script as OVMF does; it exists so that tests can check the tables as the
//! guest will see them.

use std::collections::BTreeMap;

/// Size of one command.
pub const ENTRY_LEN: usize = 128;
/// Size of a file name field, its terminating NUL included.
pub const FILE_NAME_LEN: usize = 56;
/// The largest alignment OVMF accepts (it allocates whole pages).
pub const MAX_ALIGNMENT: u32 = 4096;

const CMD_ALLOCATE: u32 = 1;
const CMD_ADD_POINTER: u32 = 2;
const CMD_ADD_CHECKSUM: u32 = 3;
const CMD_WRITE_POINTER: u32 = 4;

/// ALLOCATE zone: anywhere.
const ZONE_HIGH: u8 = 1;
/// ALLOCATE zone: the legacy BIOS F segment (0xF0000-0xFFFFF), where a BIOS puts the RSDP.
const ZONE_FSEG: u8 = 2;

// Offsets of the fields inside an entry (after the 4-byte command type).
const NAME1: usize = 4;
const NAME2: usize = NAME1 + FILE_NAME_LEN;
const ALLOCATE_ALIGN: usize = NAME2;
const ALLOCATE_ZONE: usize = ALLOCATE_ALIGN + 4;
const POINTER_OFFSET: usize = NAME2 + FILE_NAME_LEN;
const POINTER_SIZE: usize = POINTER_OFFSET + 4;
const CHECKSUM_RESULT: usize = NAME2;
const CHECKSUM_START: usize = CHECKSUM_RESULT + 4;
const CHECKSUM_LEN: usize = CHECKSUM_START + 4;

/// Errors from building or running a table-loader script.
#[derive(Debug, thiserror::Error)]
pub enum TableLoaderError {
    /// A fw_cfg file name that does not fit the 56-byte field with its NUL, or holds a NUL.
    #[error("Invalid fw_cfg file name '{0}' for the table loader (1 to 55 bytes, no NUL)")]
    Name(String),
    /// An ALLOCATE alignment that is not a power of two up to [`MAX_ALIGNMENT`].
    #[error("Invalid table-loader alignment {0} (a power of two up to 4096)")]
    Alignment(u32),
    /// An ADD_POINTER size other than 1, 2, 4 or 8.
    #[error("Invalid table-loader pointer size {0} (1, 2, 4 or 8)")]
    PointerSize(u8),
    /// A script whose length is not a whole number of commands.
    #[error("Table-loader script of {0} bytes is not a whole number of 128-byte commands")]
    ScriptLength(usize),
    /// A command of the script that the firmware would refuse.
    #[error("Table-loader command {index} is invalid: {reason}")]
    Command {
        /// Which command, counted from 0.
        index: usize,
        /// What is wrong with it.
        reason: &'static str,
    },
}

impl TableLoaderError {
    /// The errno that describes this error (the process exit code).
    pub fn errno(&self) -> i32 {
        libc::EINVAL
    }
}

/// Encodes a table-loader script, command by command.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableLoader {
    entries: Vec<[u8; ENTRY_LEN]>,
}

fn put_name(entry: &mut [u8; ENTRY_LEN], at: usize, name: &str) -> Result<(), TableLoaderError> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= FILE_NAME_LEN || bytes.contains(&0) {
        return Err(TableLoaderError::Name(name.to_string()));
    }
    entry[at..at + bytes.len()].copy_from_slice(bytes);
    Ok(())
}

fn put_u32(entry: &mut [u8; ENTRY_LEN], at: usize, v: u32) {
    entry[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn new_entry(command: u32) -> [u8; ENTRY_LEN] {
    let mut entry = [0u8; ENTRY_LEN];
    put_u32(&mut entry, 0, command);
    entry
}

impl TableLoader {
    /// An empty script.
    pub fn new() -> Self {
        Self::default()
    }

    /// ALLOCATE: the firmware reads fw_cfg file `file` into memory aligned to `align` bytes (a
    /// power of two up to 4096), in the BIOS F segment if `zone_fseg` (a hint OVMF ignores).
    pub fn allocate(
        &mut self,
        file: &str,
        align: u32,
        zone_fseg: bool,
    ) -> Result<(), TableLoaderError> {
        if !align.is_power_of_two() || align > MAX_ALIGNMENT {
            return Err(TableLoaderError::Alignment(align));
        }
        let mut e = new_entry(CMD_ALLOCATE);
        put_name(&mut e, NAME1, file)?;
        put_u32(&mut e, ALLOCATE_ALIGN, align);
        e[ALLOCATE_ZONE] = if zone_fseg { ZONE_FSEG } else { ZONE_HIGH };
        self.entries.push(e);
        Ok(())
    }

    /// ADD_POINTER: the `size`-byte (1, 2, 4 or 8) little-endian field at `offset` in
    /// `pointer_file` holds an offset into `pointee_file`; the firmware adds the address where it
    /// put `pointee_file`. Both files must have been allocated by earlier commands.
    pub fn add_pointer(
        &mut self,
        pointer_file: &str,
        pointee_file: &str,
        offset: u32,
        size: u8,
    ) -> Result<(), TableLoaderError> {
        if !matches!(size, 1 | 2 | 4 | 8) {
            return Err(TableLoaderError::PointerSize(size));
        }
        let mut e = new_entry(CMD_ADD_POINTER);
        put_name(&mut e, NAME1, pointer_file)?;
        put_name(&mut e, NAME2, pointee_file)?;
        put_u32(&mut e, POINTER_OFFSET, offset);
        e[POINTER_SIZE] = size;
        self.entries.push(e);
        Ok(())
    }

    /// ADD_CHECKSUM: the firmware stores at `result_offset` in `file` the byte that makes the
    /// `len` bytes from `start` sum to zero. The range must include `result_offset`, and the blob
    /// must hold 0 there (the firmware's sum includes the byte's current value).
    pub fn add_checksum(
        &mut self,
        file: &str,
        result_offset: u32,
        start: u32,
        len: u32,
    ) -> Result<(), TableLoaderError> {
        let mut e = new_entry(CMD_ADD_CHECKSUM);
        put_name(&mut e, NAME1, file)?;
        put_u32(&mut e, CHECKSUM_RESULT, result_offset);
        put_u32(&mut e, CHECKSUM_START, start);
        put_u32(&mut e, CHECKSUM_LEN, len);
        self.entries.push(e);
        Ok(())
    }

    /// The script as the fw_cfg file `etc/table-loader` holds it.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.entries.concat()
    }
}

/// One file after [`apply`]: where it was put and its bytes with every pointer and checksum
/// patched, as they are in guest memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    /// Guest physical address of the file's first byte.
    pub addr: u64,
    /// The patched contents.
    pub bytes: Vec<u8>,
}

/// The file name in a 56-byte field: it must end in a NUL within the field.
fn get_name(entry: &[u8], at: usize) -> Option<&str> {
    let field = &entry[at..at + FILE_NAME_LEN];
    let len = field.iter().position(|&b| b == 0)?;
    std::str::from_utf8(&field[..len]).ok()
}

fn get_u32(entry: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([entry[at], entry[at + 1], entry[at + 2], entry[at + 3]])
}

/// Run a table-loader script as OVMF does, for tests: a test aid, not used to boot.
///
/// `files` holds the fw_cfg files by name, `place` gives the address at which the firmware
/// puts each allocated file. ALLOCATE copies the file there (the address must be aligned as
/// asked); ADD_POINTER adds the pointee's address to the pointer field, whose value must be
/// below the pointee's size and whose result must fit the field; ADD_CHECKSUM stores the byte
/// that makes the range sum to zero, the byte's current value included. Commands of an unknown
/// type are skipped as OVMF skips them; WRITE_POINTER (fw_cfg writes, which rvmspawn never asks
/// for) is refused. Every check OVMF makes is made here, plus the alignment ones.
///
/// Returns every allocated file, patched.
pub fn apply(
    loader: &[u8],
    files: &BTreeMap<String, Vec<u8>>,
    place: impl Fn(&str) -> u64,
) -> Result<BTreeMap<String, Placed>, TableLoaderError> {
    if !loader.len().is_multiple_of(ENTRY_LEN) {
        return Err(TableLoaderError::ScriptLength(loader.len()));
    }
    let mut placed: BTreeMap<String, Placed> = BTreeMap::new();
    for (index, entry) in loader.chunks_exact(ENTRY_LEN).enumerate() {
        let bad = |reason| TableLoaderError::Command { index, reason };
        match get_u32(entry, 0) {
            CMD_ALLOCATE => {
                let name = get_name(entry, NAME1).ok_or(bad("malformed file name"))?;
                let align = get_u32(entry, ALLOCATE_ALIGN);
                if !align.is_power_of_two() || align > MAX_ALIGNMENT {
                    return Err(bad("unsupported alignment"));
                }
                let bytes = files.get(name).ok_or(bad("no such fw_cfg file"))?.clone();
                if placed.contains_key(name) {
                    return Err(bad("file allocated twice"));
                }
                let addr = place(name);
                if !addr.is_multiple_of(u64::from(align)) {
                    return Err(bad("file placed at a misaligned address"));
                }
                if addr.checked_add(bytes.len() as u64).is_none() {
                    return Err(bad("file placed past the end of the address space"));
                }
                placed.insert(name.to_string(), Placed { addr, bytes });
            }
            CMD_ADD_POINTER => {
                let pointer = get_name(entry, NAME1).ok_or(bad("malformed file name"))?;
                let pointee = get_name(entry, NAME2).ok_or(bad("malformed file name"))?;
                let (pointee_addr, pointee_len) = match placed.get(pointee) {
                    Some(p) => (p.addr, p.bytes.len() as u64),
                    None => return Err(bad("pointee file not allocated")),
                };
                let blob = match placed.get_mut(pointer) {
                    Some(p) => &mut p.bytes,
                    None => return Err(bad("pointer file not allocated")),
                };
                let size = usize::from(entry[POINTER_SIZE]);
                if !matches!(size, 1 | 2 | 4 | 8) {
                    return Err(bad("invalid pointer size"));
                }
                let offset = get_u32(entry, POINTER_OFFSET) as usize;
                let field = offset
                    .checked_add(size)
                    .and_then(|end| blob.get_mut(offset..end))
                    .ok_or(bad("pointer outside its file"))?;
                let mut value = [0u8; 8];
                value[..size].copy_from_slice(field);
                let value = u64::from_le_bytes(value);
                if value >= pointee_len {
                    return Err(bad("pointer value not inside the pointee file"));
                }
                let patched = value + pointee_addr;
                if size < 8 && patched >> (size * 8) != 0 {
                    return Err(bad("relocated pointer does not fit its field"));
                }
                field.copy_from_slice(&patched.to_le_bytes()[..size]);
            }
            CMD_ADD_CHECKSUM => {
                let name = get_name(entry, NAME1).ok_or(bad("malformed file name"))?;
                let blob = match placed.get_mut(name) {
                    Some(p) => &mut p.bytes,
                    None => return Err(bad("file not allocated")),
                };
                let result = get_u32(entry, CHECKSUM_RESULT) as usize;
                let start = get_u32(entry, CHECKSUM_START) as usize;
                let len = get_u32(entry, CHECKSUM_LEN) as usize;
                if result >= blob.len() {
                    return Err(bad("checksum result outside its file"));
                }
                let range = start
                    .checked_add(len)
                    .and_then(|end| blob.get(start..end))
                    .ok_or(bad("checksum range outside its file"))?;
                let sum = range.iter().fold(0u8, |a, b| a.wrapping_add(*b));
                blob[result] = 0u8.wrapping_sub(sum);
            }
            CMD_WRITE_POINTER => return Err(bad("WRITE_POINTER is not supported")),
            _ => {}
        }
    }
    Ok(placed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(list: &[(&str, Vec<u8>)]) -> BTreeMap<String, Vec<u8>> {
        list.iter()
            .map(|(n, b)| (n.to_string(), b.clone()))
            .collect()
    }

    #[test]
    fn commands_are_128_byte_little_endian_entries() {
        let mut l = TableLoader::new();
        l.allocate("etc/acpi/rsdp", 16, true).unwrap();
        l.allocate("etc/acpi/tables", 64, false).unwrap();
        l.add_pointer("etc/acpi/rsdp", "etc/acpi/tables", 0x18, 8)
            .unwrap();
        l.add_checksum("etc/acpi/tables", 0x109, 0x100, 0x24)
            .unwrap();
        let b = l.to_bytes();
        assert_eq!(b.len(), 4 * ENTRY_LEN);
        let e: Vec<&[u8]> = b.chunks(ENTRY_LEN).collect();
        // ALLOCATE: type 1, name NUL-padded to 56 bytes, alignment, zone FSEG = 2.
        assert_eq!(&e[0][0..4], &[1, 0, 0, 0]);
        assert_eq!(&e[0][4..17], b"etc/acpi/rsdp");
        assert!(e[0][17..60].iter().all(|&b| b == 0));
        assert_eq!(&e[0][60..64], &16u32.to_le_bytes());
        assert_eq!(e[0][64], 2);
        assert_eq!(e[1][64], 1, "zone HIGH");
        assert_eq!(&e[1][60..64], &64u32.to_le_bytes());
        // ADD_POINTER: type 2, pointer file, pointee file, offset, size.
        assert_eq!(&e[2][0..4], &[2, 0, 0, 0]);
        assert_eq!(get_name(e[2], 4), Some("etc/acpi/rsdp"));
        assert_eq!(get_name(e[2], 60), Some("etc/acpi/tables"));
        assert_eq!(&e[2][116..120], &0x18u32.to_le_bytes());
        assert_eq!(e[2][120], 8);
        // ADD_CHECKSUM: type 3, file, result offset, start, length.
        assert_eq!(&e[3][0..4], &[3, 0, 0, 0]);
        assert_eq!(&e[3][60..64], &0x109u32.to_le_bytes());
        assert_eq!(&e[3][64..68], &0x100u32.to_le_bytes());
        assert_eq!(&e[3][68..72], &0x24u32.to_le_bytes());
        // Nothing past the fields.
        assert!(e[2][121..].iter().all(|&b| b == 0));
        assert!(e[3][72..].iter().all(|&b| b == 0));
    }

    #[test]
    fn bad_names_alignments_and_sizes_are_refused() {
        let mut l = TableLoader::new();
        let longest = "x".repeat(55);
        l.allocate(&longest, 1, false).unwrap();
        let b = l.to_bytes();
        assert_eq!(b[4 + 55], 0, "the name keeps its NUL");
        for name in ["x".repeat(56), String::new(), "a\0b".to_string()] {
            let err = l.allocate(&name, 1, false).unwrap_err();
            assert!(matches!(err, TableLoaderError::Name(_)), "{err}");
            assert!(l.add_pointer(&name, "a", 0, 8).is_err());
            assert!(l.add_pointer("a", &name, 0, 8).is_err());
            assert!(l.add_checksum(&name, 0, 0, 1).is_err());
        }
        for align in [0, 3, 8192] {
            assert!(matches!(
                l.allocate("a", align, false),
                Err(TableLoaderError::Alignment(a)) if a == align
            ));
        }
        for size in [0, 3, 16] {
            assert!(matches!(
                l.add_pointer("a", "b", 0, size),
                Err(TableLoaderError::PointerSize(s)) if s == size
            ));
        }
        // Refused commands were not added.
        assert_eq!(l.to_bytes().len(), ENTRY_LEN);
    }

    #[test]
    fn apply_relocates_pointers_and_fixes_checksums() {
        let mut l = TableLoader::new();
        l.allocate("a", 16, false).unwrap();
        l.allocate("b", 64, false).unwrap();
        // A 4-byte pointer in "a" to offset 8 of "b", and a 2-byte one to offset 3.
        l.add_pointer("a", "b", 0, 4).unwrap();
        l.add_pointer("a", "b", 4, 2).unwrap();
        l.add_checksum("a", 6, 0, 8).unwrap();
        let f = files(&[("a", vec![8, 0, 0, 0, 3, 0, 0, 0x55]), ("b", vec![7; 16])]);
        let out = apply(
            &l.to_bytes(),
            &f,
            |n| if n == "a" { 0x1000 } else { 0x2040 },
        )
        .unwrap();
        let a = &out["a"];
        assert_eq!(a.addr, 0x1000);
        assert_eq!(
            u32::from_le_bytes(a.bytes[0..4].try_into().unwrap()),
            0x2048
        );
        assert_eq!(
            u16::from_le_bytes(a.bytes[4..6].try_into().unwrap()),
            0x2043
        );
        assert_eq!(a.bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b)), 0);
        assert_eq!(out["b"].bytes, vec![7; 16]);
    }

    #[test]
    fn apply_is_as_strict_as_the_firmware() {
        let run = |l: &TableLoader, a: Vec<u8>, place: u64| {
            let f = files(&[("a", a), ("b", vec![0; 16])]);
            apply(&l.to_bytes(), &f, |n| if n == "a" { 0x1000 } else { place })
        };
        let reason = |r: Result<_, TableLoaderError>| match r {
            Err(TableLoaderError::Command { reason, .. }) => reason,
            other => panic!("{other:?}"),
        };
        let mut l = TableLoader::new();
        l.allocate("a", 16, false).unwrap();
        l.allocate("b", 16, false).unwrap();
        l.add_pointer("a", "b", 0, 8).unwrap();
        // The pointer's current value must be inside the pointee: 15 is, 16 is not.
        let ok = run(&l, 15u64.to_le_bytes().to_vec(), 0x2000).unwrap();
        assert_eq!(ok["a"].bytes, 0x200fu64.to_le_bytes());
        assert_eq!(
            reason(run(&l, 16u64.to_le_bytes().to_vec(), 0x2000)),
            "pointer value not inside the pointee file"
        );
        // The pointer field must lie inside its file.
        assert_eq!(
            reason(run(&l, vec![0; 7], 0x2000)),
            "pointer outside its file"
        );
        // A misaligned placement is refused.
        assert_eq!(
            reason(run(&l, vec![0; 8], 0x2008)),
            "file placed at a misaligned address"
        );
        // A 4-byte pointer to a file above 4 GiB does not fit.
        let mut l4 = TableLoader::new();
        l4.allocate("a", 16, false).unwrap();
        l4.allocate("b", 16, false).unwrap();
        l4.add_pointer("a", "b", 0, 4).unwrap();
        assert_eq!(
            reason(run(&l4, vec![0; 4], 1 << 32)),
            "relocated pointer does not fit its field"
        );
        // A pointer into a file that is not allocated (yet).
        let mut early = TableLoader::new();
        early.allocate("a", 16, false).unwrap();
        early.add_pointer("a", "b", 0, 8).unwrap();
        assert_eq!(
            reason(run(&early, vec![0; 8], 0x2000)),
            "pointee file not allocated"
        );
        // A checksum range past the end of its file.
        let mut c = TableLoader::new();
        c.allocate("a", 16, false).unwrap();
        c.add_checksum("a", 0, 4, 5).unwrap();
        assert_eq!(
            reason(run(&c, vec![0; 8], 0x2000)),
            "checksum range outside its file"
        );
        // A file the script names but fw_cfg does not have, and a duplicate.
        let mut m = TableLoader::new();
        m.allocate("missing", 16, false).unwrap();
        assert_eq!(reason(run(&m, vec![], 0)), "no such fw_cfg file");
        let mut d = TableLoader::new();
        d.allocate("a", 16, false).unwrap();
        d.allocate("a", 16, false).unwrap();
        assert_eq!(reason(run(&d, vec![], 0)), "file allocated twice");
        // A script cut in the middle of a command.
        let cut = l.to_bytes()[..ENTRY_LEN + 1].to_vec();
        assert!(matches!(
            apply(&cut, &files(&[]), |_| 0),
            Err(TableLoaderError::ScriptLength(129))
        ));
    }

    #[test]
    fn apply_checksums_count_the_current_byte_as_ovmf_does() {
        // A table whose checksum byte was left non-zero ends up with a wrong checksum, as it
        // would in the guest: the builder must zero it.
        let mut l = TableLoader::new();
        l.allocate("a", 1, false).unwrap();
        l.add_checksum("a", 1, 0, 4).unwrap();
        let out = apply(&l.to_bytes(), &files(&[("a", vec![1, 0, 2, 3])]), |_| 0).unwrap();
        assert_eq!(out["a"].bytes, vec![1, 0xfa, 2, 3]);
        let out = apply(&l.to_bytes(), &files(&[("a", vec![1, 0xfa, 2, 3])]), |_| 0).unwrap();
        assert_ne!(
            out["a"].bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b)),
            0
        );
    }
}
