//! Finding the partition a directly booted kernel should mount as its root file system.
//!
//! When systemd-vmspawn boots a kernel directly (not a UKI) from `--image=` and none of the
//! user's kernel arguments starts with `root=` or `mount.usr=`, it dissects the image and appends
//! `root=PARTUUID=…` for the root partition, else `mount.usr=PARTUUID=…` for the `/usr`
//! partition, else refuses to boot. This module does that for x86-64 images: it reads the GUID
//! partition table and picks partitions by the type GUIDs of the Discoverable Partitions
//! Specification, with the rules of systemd's dissection (see [`discover_root_in`]).
//!
//! The image is untrusted input. Every offset and size taken from it is checked against the
//! image size before it is used, sums and products are checked or done in `u64` where they
//! cannot overflow, and no allocation is sized by the image beyond [`MAX_ENTRY_ARRAY`] bytes.
//! The parser is fuzzed: `fuzz/fuzz_targets/gpt.rs`.

use std::cmp::Ordering;
use std::fmt;
use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt};

/// The largest partition entry array read, in bytes. The usual array is 128 entries of 128
/// bytes (16 KiB); a table claiming more than this is treated as corrupt rather than allocated.
pub const MAX_ENTRY_ARRAY: u64 = 4 << 20;

/// The largest partition entry accepted. The UEFI spec allows 128 × 2ⁿ bytes and every tool
/// writes 128; an entry larger than a 4 KiB sector is nonsense.
const MAX_ENTRY_SIZE: u32 = 4096;

/// The sector sizes an image may be made for, smallest first (as systemd probes them).
const SECTOR_SIZES: [u64; 4] = [512, 1024, 2048, 4096];

/// The GPT header's signature.
const SIGNATURE: &[u8; 8] = b"EFI PART";

/// GPT revision 1.0, the only one there is.
const REVISION_1_0: u32 = 0x0001_0000;

/// The size of the GPT header's defined fields; `header_size` may be larger (padding).
const HEADER_LEN: usize = 92;

/// The defined part of a partition entry; larger entries are padded.
const ENTRY_LEN: u32 = 128;

/// Partition attribute bit 63 of the Discoverable Partitions Specification: "do not mount this
/// automatically". systemd's dissection passes over root, `/usr` and generic partitions with it.
const FLAG_NO_AUTO: u64 = 1 << 63;

/// Discoverable Partitions Specification: root partition (x86-64).
const ROOT_X86_64: Guid = Guid::new(
    0x4f68_bce3,
    0xe8cd,
    0x4db1,
    [0x96, 0xe7, 0xfb, 0xca, 0xf9, 0x84, 0xb7, 0x09],
);

/// Discoverable Partitions Specification: `/usr` partition (x86-64).
const USR_X86_64: Guid = Guid::new(
    0x8484_680c,
    0x9521,
    0x48c6,
    [0x9c, 0x11, 0xb0, 0x72, 0x06, 0x56, 0xf6, 0x9e],
);

/// "Linux filesystem data": a partition of no particular role.
const LINUX_GENERIC: Guid = Guid::new(
    0x0fc6_3daf,
    0x8483,
    0x4772,
    [0x8e, 0x79, 0x3d, 0x69, 0xd8, 0x47, 0x7d, 0xe4],
);

/// Errors from looking for the root partition of a disk image.
#[derive(Debug, thiserror::Error)]
pub enum GptError {
    /// Reading the image failed.
    #[error("Failed to read the disk image: {0}")]
    Io(#[from] io::Error),
    /// The image has no GPT at all (it may have an MBR or be a bare file system).
    #[error(
        "The disk image has no GPT partition table, so no root partition can be found in it; \
         pass root= (or mount.usr=) in the kernel arguments"
    )]
    NoPartitionTable,
    /// The image has a GPT that cannot be trusted; the text says what is wrong with it.
    #[error("The disk image's GPT partition table is invalid: {0}")]
    InvalidPartitionTable(String),
    /// The partition table has neither a root nor a `/usr` partition (nor a single generic one).
    #[error("Cannot perform a direct kernel boot without a root or usr partition, refusing")]
    NoRootPartition,
}

impl GptError {
    /// The errno that describes this error (the process exit code).
    pub fn errno(&self) -> i32 {
        match self {
            GptError::Io(e) => e.raw_os_error().unwrap_or(libc::EIO),
            // vmspawn's dissection fails with ENOPKG when it finds no partition table.
            GptError::NoPartitionTable => libc::ENOPKG,
            GptError::NoRootPartition => libc::ENOENT,
            GptError::InvalidPartitionTable(_) => libc::EBADMSG,
        }
    }
}

fn invalid(what: impl Into<String>) -> GptError {
    GptError::InvalidPartitionTable(what.into())
}

/// What to tell the kernel to mount: the partition UUID (lowercase, 8-4-4-4-12) of the root or
/// the `/usr` partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootArg {
    /// `root=PARTUUID=…`
    Root(String),
    /// `mount.usr=PARTUUID=…`
    Usr(String),
}

impl RootArg {
    /// The partition UUID.
    pub fn uuid(&self) -> &str {
        match self {
            RootArg::Root(uuid) | RootArg::Usr(uuid) => uuid,
        }
    }

    /// The kernel argument: `root=PARTUUID=<uuid>` or `mount.usr=PARTUUID=<uuid>`.
    pub fn kernel_arg(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for RootArg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RootArg::Root(uuid) => write!(f, "root=PARTUUID={uuid}"),
            RootArg::Usr(uuid) => write!(f, "mount.usr=PARTUUID={uuid}"),
        }
    }
}

/// Whether the user's kernel arguments already say what to mount as root: one of them starts
/// with `root=` or `mount.usr=`. systemd-vmspawn looks for a root partition only when none does;
/// like it, this looks at each argument as given.
pub fn cmdline_selects_root<S: AsRef<str>>(args: &[S]) -> bool {
    args.iter().any(|arg| {
        let arg = arg.as_ref();
        arg.starts_with("root=") || arg.starts_with("mount.usr=")
    })
}

/// Random access to a disk image: a file or block device, or bytes in memory (tests, fuzzing).
pub trait ReadAt {
    /// The size of the image in bytes.
    fn size_bytes(&self) -> io::Result<u64>;
    /// Fills `buf` from byte `offset` of the image; an error if the image ends first.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
}

impl ReadAt for [u8] {
    fn size_bytes(&self) -> io::Result<u64> {
        Ok(self.len() as u64)
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let src = usize::try_from(offset)
            .ok()
            .and_then(|start| self.get(start..start.checked_add(buf.len())?))
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

impl ReadAt for File {
    /// The length of a regular file; for a block device (whose `st_size` is 0) where a seek to
    /// the end lands. The file position is put back afterwards.
    fn size_bytes(&self) -> io::Result<u64> {
        let meta = self.metadata()?;
        if !meta.file_type().is_block_device() {
            return Ok(meta.len());
        }
        let mut file = self;
        let position = file.stream_position()?;
        let size = file.seek(SeekFrom::End(0))?;
        file.seek(SeekFrom::Start(position))?;
        Ok(size)
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(self, buf, offset)
    }
}

/// Finds the root (or `/usr`) partition of the disk image `file` for a direct kernel boot; see
/// [`discover_root_in`]. Reads with `pread`, so a regular file and a block device both work.
pub fn discover_root(file: &File) -> Result<RootArg, GptError> {
    discover_root_in(file)
}

/// Finds the root (or `/usr`) partition of a disk image for a direct kernel boot, as
/// systemd-vmspawn does through systemd's image dissection:
///
/// - The sector size is the one (512, 1024, 2048 or 4096 bytes) at which a GPT header sits in
///   the second sector, 512 if none does; an image with headers for two sizes is refused.
/// - The table needs a protective MBR, a GPT header whose size, checksum and own position are
///   right, and a partition entry array of sane size, inside the image, with the right checksum.
///   When the primary header (sector 1) is missing or damaged the backup (last sector) is used,
///   as libblkid does.
/// - Unused entries and entries outside the usable sectors are passed over (libblkid's rule),
///   and so are root, `/usr` and generic partitions with the "no-auto" attribute (bit 63).
/// - Of several x86-64 root partitions, the one whose label has the highest version wins (the
///   first of equals), as it does for `/usr` partitions; see [`version_cmp`].
/// - The answer is the root partition, else the `/usr` partition, else the only "Linux
///   filesystem data" partition if there is exactly one (systemd's fallback for images with a
///   single generic partition), else [`GptError::NoRootPartition`].
pub fn discover_root_in<R: ReadAt + ?Sized>(image: &R) -> Result<RootArg, GptError> {
    let size = image.size_bytes()?;
    let sector = probe_sector_size(image, size)?;
    let partitions = read_partitions(image, size, sector)?;
    choose(&partitions)
}

/// CRC-32 (IEEE 802.3, reflected, as zlib computes it): the checksum of GPT headers and
/// partition entry arrays.
///
/// Written here rather than taken from `crc32fast`: it is a dozen lines with a table built at
/// compile time, it checks at most a few MiB once per boot (so SIMD speed buys nothing), and the
/// boot crate stays free of a dependency for it. Public so that tests and the fuzz target can
/// make tables with correct checksums.
pub fn crc32(data: &[u8]) -> u32 {
    !data.iter().fold(!0u32, |crc, &byte| {
        CRC32_TABLE[usize::from((crc as u8) ^ byte)] ^ (crc >> 8)
    })
}

const CRC32_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 != 0 {
                0xedb8_8320 ^ (crc >> 1)
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

/// A GUID as stored on disk: the first three fields little-endian, the last eight bytes in order.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Guid([u8; 16]);

impl Guid {
    /// From the fields of its text form `d1-d2-d3-d4[0..2]-d4[2..8]`.
    const fn new(d1: u32, d2: u16, d3: u16, d4: [u8; 8]) -> Guid {
        let [a0, a1, a2, a3] = d1.to_le_bytes();
        let [b0, b1] = d2.to_le_bytes();
        let [c0, c1] = d3.to_le_bytes();
        let [e0, e1, e2, e3, e4, e5, e6, e7] = d4;
        Guid([
            a0, a1, a2, a3, b0, b1, c0, c1, e0, e1, e2, e3, e4, e5, e6, e7,
        ])
    }

    fn at(bytes: &[u8], offset: usize) -> Guid {
        let mut guid = [0; 16];
        guid.copy_from_slice(&bytes[offset..offset + 16]);
        Guid(guid)
    }
}

impl fmt::Display for Guid {
    /// Lowercase 8-4-4-4-12, as `PARTUUID=` and `blkid` print it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let g = &self.0;
        let d1 = u32::from_le_bytes([g[0], g[1], g[2], g[3]]);
        let d2 = u16::from_le_bytes([g[4], g[5]]);
        let d3 = u16::from_le_bytes([g[6], g[7]]);
        write!(f, "{d1:08x}-{d2:04x}-{d3:04x}-{:02x}{:02x}-", g[8], g[9])?;
        g[10..].iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

fn le_u32(bytes: &[u8], offset: usize) -> u32 {
    let mut field = [0; 4];
    field.copy_from_slice(&bytes[offset..offset + 4]);
    u32::from_le_bytes(field)
}

fn le_u64(bytes: &[u8], offset: usize) -> u64 {
    let mut field = [0; 8];
    field.copy_from_slice(&bytes[offset..offset + 8]);
    u64::from_le_bytes(field)
}

/// Finds the sector size the image was made for, as systemd's `probe_sector_size()` does: the
/// size at which the second sector holds a GPT header that claims to be in sector 1.
fn probe_sector_size<R: ReadAt + ?Sized>(image: &R, size: u64) -> Result<u64, GptError> {
    let mut found: Option<u64> = None;
    for sector in SECTOR_SIZES {
        if sector + HEADER_LEN as u64 > size {
            break;
        }
        let mut header = [0; HEADER_LEN];
        image.read_exact_at(&mut header, sector)?;
        let plausible = header[..8] == *SIGNATURE
            && le_u32(&header, 8) == REVISION_1_0
            && (HEADER_LEN as u32..=4096).contains(&le_u32(&header, 12))
            && le_u64(&header, 24) == 1;
        if !plausible {
            continue;
        }
        if let Some(other) = found {
            return Err(invalid(format!(
                "there are GPT headers for both {other}-byte and {sector}-byte sectors"
            )));
        }
        found = Some(sector);
    }
    Ok(found.unwrap_or(512))
}

/// A GPT header that passed the checks, with its partition entry array.
struct Table {
    first_usable: u64,
    last_usable: u64,
    entry_size: usize,
    entries: Vec<u8>,
}

/// A used partition entry.
#[derive(Debug)]
struct Partition {
    type_guid: Guid,
    uuid: Guid,
    attributes: u64,
    label: String,
}

/// Reads the partition table of an image with `sector`-byte sectors.
fn read_partitions<R: ReadAt + ?Sized>(
    image: &R,
    size: u64,
    sector: u64,
) -> Result<Vec<Partition>, GptError> {
    let sectors = size / sector;
    if sectors < 2 {
        return Err(GptError::NoPartitionTable);
    }
    let table = match read_table(image, sector, sectors, 1) {
        Ok(table) => table,
        Err(GptError::Io(e)) => return Err(GptError::Io(e)),
        Err(primary) => {
            // The primary header is missing or damaged: like libblkid, try the backup in the
            // last sector, and report what is wrong with the primary if that fails too.
            match read_table(image, sector, sectors, sectors - 1) {
                Ok(table) => table,
                Err(GptError::Io(e)) => return Err(GptError::Io(e)),
                _ => return Err(primary),
            }
        }
    };
    check_protective_mbr(image)?;
    Ok(table
        .entries
        .chunks_exact(table.entry_size)
        .filter_map(|entry| {
            let type_guid = Guid::at(entry, 0);
            if type_guid.0 == [0; 16] {
                return None; // unused
            }
            let first = le_u64(entry, 32);
            let last = le_u64(entry, 40);
            if first > last || first < table.first_usable || last > table.last_usable {
                return None; // libblkid ignores entries outside the usable area
            }
            let name = entry[56..ENTRY_LEN as usize]
                .chunks_exact(2)
                .map(|unit| u16::from_le_bytes([unit[0], unit[1]]))
                .take_while(|&unit| unit != 0);
            Some(Partition {
                type_guid,
                uuid: Guid::at(entry, 16),
                attributes: le_u64(entry, 48),
                label: char::decode_utf16(name)
                    .map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER))
                    .collect(),
            })
        })
        .collect())
}

/// Reads and checks the GPT header in sector `lba` and its partition entry array.
fn read_table<R: ReadAt + ?Sized>(
    image: &R,
    sector: u64,
    sectors: u64,
    lba: u64,
) -> Result<Table, GptError> {
    // lba < sectors, so neither this nor any offset of a sector below `sectors` overflows.
    let offset = lba * sector;
    let mut fixed = [0; HEADER_LEN];
    image.read_exact_at(&mut fixed, offset)?;
    if fixed[..8] != *SIGNATURE {
        return Err(GptError::NoPartitionTable);
    }

    let header_size = le_u32(&fixed, 12);
    if header_size < HEADER_LEN as u32 || u64::from(header_size) > sector {
        return Err(invalid(format!(
            "the header size {header_size} is not between {HEADER_LEN} and the sector size {sector}"
        )));
    }
    let mut header = vec![0; header_size as usize];
    image.read_exact_at(&mut header, offset)?;
    let stored = le_u32(&header, 16);
    header[16..20].fill(0);
    let computed = crc32(&header);
    if stored != computed {
        return Err(invalid(format!(
            "the header in sector {lba} has checksum {stored:#010x}, its content {computed:#010x}"
        )));
    }

    let my_lba = le_u64(&header, 24);
    if my_lba != lba {
        return Err(invalid(format!(
            "the header in sector {lba} says it is in sector {my_lba}"
        )));
    }
    let first_usable = le_u64(&header, 40);
    let last_usable = le_u64(&header, 48);
    if first_usable > last_usable || last_usable >= sectors {
        return Err(invalid(format!(
            "the usable sectors {first_usable}..={last_usable} are not within the image's \
             {sectors} sectors"
        )));
    }
    if first_usable < lba && lba < last_usable {
        return Err(invalid(format!(
            "the header in sector {lba} is inside the usable sectors \
             {first_usable}..={last_usable}"
        )));
    }

    let entries_lba = le_u64(&header, 72);
    let count = le_u32(&header, 80);
    let entry_size = le_u32(&header, 84);
    if entry_size < ENTRY_LEN || !entry_size.is_multiple_of(8) || entry_size > MAX_ENTRY_SIZE {
        return Err(invalid(format!(
            "the partition entry size {entry_size} is not a multiple of 8 between {ENTRY_LEN} \
             and {MAX_ENTRY_SIZE}"
        )));
    }
    // At most 2³² × 2¹² bytes: no overflow in u64.
    let array_len = u64::from(count) * u64::from(entry_size);
    if array_len > MAX_ENTRY_ARRAY {
        return Err(invalid(format!(
            "the partition entry array ({count} entries of {entry_size} bytes) is larger than \
             {MAX_ENTRY_ARRAY} bytes"
        )));
    }
    let array_end = match entries_lba.checked_add(array_len.div_ceil(sector)) {
        Some(end) if entries_lba > 0 && end <= sectors => end,
        _ => {
            return Err(invalid(format!(
                "the partition entry array ({array_len} bytes from sector {entries_lba}) is not \
                 within the image's {sectors} sectors"
            )));
        }
    };
    if (entries_lba..array_end).contains(&lba) {
        return Err(invalid(format!(
            "the partition entry array (from sector {entries_lba}) overlaps its header"
        )));
    }
    // Within the image (checked above) and at most MAX_ENTRY_ARRAY bytes.
    let mut entries = vec![0; array_len as usize];
    image.read_exact_at(&mut entries, entries_lba * sector)?;
    let stored = le_u32(&header, 88);
    let computed = crc32(&entries);
    if stored != computed {
        return Err(invalid(format!(
            "the partition entry array has checksum {stored:#010x}, its content {computed:#010x}"
        )));
    }

    Ok(Table {
        first_usable,
        last_usable,
        entry_size: entry_size as usize,
        entries,
    })
}

/// A GPT disk starts with an MBR whose partition entries include one of type 0xEE covering the
/// disk (a "hybrid" MBR has others too); libblkid, and so systemd, see no GPT without it.
fn check_protective_mbr<R: ReadAt + ?Sized>(image: &R) -> Result<(), GptError> {
    let mut mbr = [0; 512];
    image.read_exact_at(&mut mbr, 0)?;
    let protective = mbr[510..] == [0x55, 0xaa] && (0..4).any(|i| mbr[446 + 16 * i + 4] == 0xee);
    if protective {
        Ok(())
    } else {
        Err(invalid(
            "there is a GPT header but no protective MBR (an MBR partition of type 0xEE)",
        ))
    }
}

/// Picks the partition to boot from, as systemd's dissection and vmspawn's `discover_root()` do.
fn choose(partitions: &[Partition]) -> Result<RootArg, GptError> {
    let candidates = |type_guid: Guid| {
        partitions
            .iter()
            .filter(move |p| p.type_guid == type_guid && p.attributes & FLAG_NO_AUTO == 0)
    };
    // The newest by label; of equals, the first in the table.
    let newest = |type_guid: Guid| {
        candidates(type_guid).reduce(|best, p| {
            if version_cmp(&p.label, &best.label) == Ordering::Greater {
                p
            } else {
                best
            }
        })
    };
    if let Some(root) = newest(ROOT_X86_64) {
        return Ok(RootArg::Root(root.uuid.to_string()));
    }
    if let Some(usr) = newest(USR_X86_64) {
        return Ok(RootArg::Usr(usr.uuid.to_string()));
    }
    let mut generic = candidates(LINUX_GENERIC);
    match (generic.next(), generic.next()) {
        (Some(only), None) => Ok(RootArg::Root(only.uuid.to_string())),
        _ => Err(GptError::NoRootPartition),
    }
}

/// Orders version strings the way systemd's `strverscmp_improved()` orders partition labels
/// (so that `root-1.10` is newer than `root-1.9`). Characters other than ASCII letters, digits
/// and `~-^.` are dropped; the rest splits into segments of digits or of letters, each maybe
/// after one of the separators. A numeric segment is newer than a letter segment or none;
/// numbers compare by value, letters by ASCII. A segment after `~` (pre-release) is older than
/// anything, even the end of the string; otherwise the string with segments left over is newer.
/// After equal segments, one that goes on with `-` (release) is older than one that goes on with
/// `^` (patch), which is older than one that goes on with `.`, older than one that goes on with
/// a segment and no separator: 123-1 < 123^p1 < 123.1 < 123a.
pub fn version_cmp(a: &str, b: &str) -> Ordering {
    fn valid(c: &u8) -> bool {
        c.is_ascii_alphanumeric() || b"~-^.".contains(c)
    }
    fn skip_invalid(s: &[u8]) -> &[u8] {
        let start = s.iter().position(valid).unwrap_or(s.len());
        &s[start..]
    }
    /// If exactly one of `a` and `b` starts with `sep`, that one is older; if both do, both
    /// lose it.
    fn separator(a: &mut &[u8], b: &mut &[u8], sep: u8) -> Option<Ordering> {
        match (a.first() == Some(&sep), b.first() == Some(&sep)) {
            (true, true) => {
                *a = &a[1..];
                *b = &b[1..];
                None
            }
            (true, false) => Some(Ordering::Less),
            (false, true) => Some(Ordering::Greater),
            (false, false) => None,
        }
    }
    fn split(s: &[u8], pred: fn(&u8) -> bool) -> (&[u8], &[u8]) {
        s.split_at(s.iter().position(|c| !pred(c)).unwrap_or(s.len()))
    }

    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    // Each round either decides or consumes a separator or a segment on both sides.
    loop {
        a = skip_invalid(a);
        b = skip_invalid(b);
        if let Some(order) = separator(&mut a, &mut b, b'~') {
            return order;
        }
        if a.is_empty() || b.is_empty() {
            return a.len().cmp(&b.len());
        }
        for sep in [b'-', b'^', b'.'] {
            if let Some(order) = separator(&mut a, &mut b, sep) {
                return order;
            }
        }
        let order;
        if a.first().is_some_and(u8::is_ascii_digit) || b.first().is_some_and(u8::is_ascii_digit) {
            let (a_num, a_rest) = split(a, u8::is_ascii_digit);
            let (b_num, b_rest) = split(b, u8::is_ascii_digit);
            if a_num.is_empty() || b_num.is_empty() {
                return (!a_num.is_empty()).cmp(&!b_num.is_empty());
            }
            let a_num = skip_zeros(a_num);
            let b_num = skip_zeros(b_num);
            order = a_num.len().cmp(&b_num.len()).then(a_num.cmp(b_num));
            (a, b) = (a_rest, b_rest);
        } else {
            let (a_word, a_rest) = split(a, u8::is_ascii_alphabetic);
            let (b_word, b_rest) = split(b, u8::is_ascii_alphabetic);
            order = a_word.cmp(b_word);
            (a, b) = (a_rest, b_rest);
        }
        if order != Ordering::Equal {
            return order;
        }
    }
}

fn skip_zeros(digits: &[u8]) -> &[u8] {
    let start = digits
        .iter()
        .position(|&c| c != b'0')
        .unwrap_or(digits.len());
    &digits[start..]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const ESP: Guid = Guid::new(
        0xc12a_7328,
        0xf81f,
        0x11d2,
        [0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e, 0xc9, 0x3b],
    );

    fn parse_guid(text: &str) -> Guid {
        let hex: String = text.chars().filter(|&c| c != '-').collect();
        assert_eq!(hex.len(), 32, "{text}");
        let field = |range: std::ops::Range<usize>| u64::from_str_radix(&hex[range], 16).unwrap();
        let mut d4 = [0; 8];
        for (i, byte) in d4.iter_mut().enumerate() {
            *byte = field(16 + 2 * i..18 + 2 * i) as u8;
        }
        Guid::new(
            field(0..8) as u32,
            field(8..12) as u16,
            field(12..16) as u16,
            d4,
        )
    }

    /// A partition for [`Image`]; placed after the previous one unless `first` is set.
    struct Part {
        type_guid: Guid,
        uuid: &'static str,
        label: &'static str,
        attributes: u64,
        first: Option<u64>,
    }

    fn part(type_guid: Guid, uuid: &'static str, label: &'static str) -> Part {
        Part {
            type_guid,
            uuid,
            label,
            attributes: 0,
            first: None,
        }
    }

    const PART_SECTORS: u64 = 8;

    /// Builds a GPT disk image in memory: protective MBR, primary header and entries at LBA 1
    /// and 2, partitions of 8 sectors, backup entries and header at the end.
    struct Image {
        sector: u64,
        entry_count: u32,
        entry_size: u32,
        parts: Vec<Part>,
        protective_mbr: bool,
        backup: bool,
    }

    impl Image {
        fn new(parts: Vec<Part>) -> Image {
            Image {
                sector: 512,
                entry_count: 128,
                entry_size: 128,
                parts,
                protective_mbr: true,
                backup: true,
            }
        }

        fn array_sectors(&self) -> u64 {
            (u64::from(self.entry_count) * u64::from(self.entry_size)).div_ceil(self.sector)
        }

        fn build(&self) -> Vec<u8> {
            let ss = self.sector as usize;
            let array_sectors = self.array_sectors();
            let first_usable = 2 + array_sectors;
            let sectors = first_usable + PART_SECTORS * self.parts.len() as u64 + array_sectors + 2;
            let last = sectors - 1;
            let last_usable = last - array_sectors - 1;
            let mut img = vec![0u8; sectors as usize * ss];

            if self.protective_mbr {
                let entry = &mut img[446..462];
                entry[4] = 0xee;
                entry[8..12].copy_from_slice(&1u32.to_le_bytes());
                let count = u32::try_from(sectors - 1).unwrap_or(u32::MAX);
                entry[12..16].copy_from_slice(&count.to_le_bytes());
                img[510] = 0x55;
                img[511] = 0xaa;
            }

            let mut array = vec![0u8; (self.entry_count * self.entry_size) as usize];
            let mut next = first_usable;
            for (i, p) in self.parts.iter().enumerate() {
                let first = p.first.unwrap_or(next);
                if p.first.is_none() {
                    next += PART_SECTORS;
                }
                let e = &mut array[i * self.entry_size as usize..][..128];
                e[..16].copy_from_slice(&p.type_guid.0);
                e[16..32].copy_from_slice(&parse_guid(p.uuid).0);
                e[32..40].copy_from_slice(&first.to_le_bytes());
                e[40..48].copy_from_slice(&(first + PART_SECTORS - 1).to_le_bytes());
                e[48..56].copy_from_slice(&p.attributes.to_le_bytes());
                for (j, unit) in p.label.encode_utf16().take(36).enumerate() {
                    e[56 + 2 * j..58 + 2 * j].copy_from_slice(&unit.to_le_bytes());
                }
            }

            let mut place = |header_lba: u64, alternate: u64, entries_lba: u64| {
                let at = entries_lba as usize * ss;
                img[at..at + array.len()].copy_from_slice(&array);
                let h = &mut img[header_lba as usize * ss..][..HEADER_LEN];
                h[..8].copy_from_slice(SIGNATURE);
                h[8..12].copy_from_slice(&REVISION_1_0.to_le_bytes());
                h[12..16].copy_from_slice(&(HEADER_LEN as u32).to_le_bytes());
                h[24..32].copy_from_slice(&header_lba.to_le_bytes());
                h[32..40].copy_from_slice(&alternate.to_le_bytes());
                h[40..48].copy_from_slice(&first_usable.to_le_bytes());
                h[48..56].copy_from_slice(&last_usable.to_le_bytes());
                h[56..72].copy_from_slice(&[0x42; 16]);
                h[72..80].copy_from_slice(&entries_lba.to_le_bytes());
                h[80..84].copy_from_slice(&self.entry_count.to_le_bytes());
                h[84..88].copy_from_slice(&self.entry_size.to_le_bytes());
                h[88..92].copy_from_slice(&crc32(&array).to_le_bytes());
                let crc = crc32(h);
                h[16..20].copy_from_slice(&crc.to_le_bytes());
            };
            place(1, last, 2);
            if self.backup {
                place(last, 1, last - array_sectors);
            }
            img
        }
    }

    /// Changes the header in sector `lba` and fixes its checksum.
    fn patch_header(img: &mut [u8], sector: u64, lba: u64, change: impl FnOnce(&mut [u8])) {
        let h = &mut img[(lba * sector) as usize..][..HEADER_LEN];
        change(h);
        h[16..20].fill(0);
        let crc = crc32(h);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
    }

    fn discover(img: &[u8]) -> Result<RootArg, GptError> {
        discover_root_in(img)
    }

    fn found(parts: Vec<Part>) -> RootArg {
        discover(&Image::new(parts).build()).unwrap()
    }

    fn refused(parts: Vec<Part>) -> GptError {
        discover(&Image::new(parts).build()).unwrap_err()
    }

    fn invalid_text(result: Result<RootArg, GptError>) -> String {
        match result {
            Err(e @ GptError::InvalidPartitionTable(_)) => {
                assert_eq!(e.errno(), libc::EBADMSG);
                e.to_string()
            }
            other => panic!("expected an invalid table, got {other:?}"),
        }
    }

    const UUID_A: &str = "11111111-2222-3333-4444-555555555555";
    const UUID_B: &str = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee";
    const UUID_C: &str = "01234567-89ab-cdef-0123-456789abcdef";

    #[test]
    fn crc32_check_value() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn guids_print_mixed_endian_as_lowercase_text() {
        assert_eq!(
            ROOT_X86_64.to_string(),
            "4f68bce3-e8cd-4db1-96e7-fbcaf984b709"
        );
        assert_eq!(
            USR_X86_64.to_string(),
            "8484680c-9521-48c6-9c11-b0720656f69e"
        );
        assert_eq!(
            LINUX_GENERIC.to_string(),
            "0fc63daf-8483-4772-8e79-3d69d8477de4"
        );
        // On disk the first three fields are little-endian.
        assert_eq!(ROOT_X86_64.0[..4], [0xe3, 0xbc, 0x68, 0x4f]);
        assert_eq!(
            ROOT_X86_64.0[8..],
            [0x96, 0xe7, 0xfb, 0xca, 0xf9, 0x84, 0xb7, 0x09]
        );
        assert_eq!(parse_guid(UUID_C).to_string(), UUID_C);
    }

    #[test]
    fn finds_the_root_partition() {
        let root = found(vec![
            part(ESP, UUID_C, "esp"),
            part(USR_X86_64, UUID_B, "usr"),
            part(ROOT_X86_64, UUID_A, "root"),
        ]);
        assert_eq!(root, RootArg::Root(UUID_A.into()));
        assert_eq!(root.uuid(), UUID_A);
        assert_eq!(root.kernel_arg(), format!("root=PARTUUID={UUID_A}"));
    }

    #[test]
    fn finds_usr_when_there_is_no_root() {
        let usr = found(vec![
            part(ESP, UUID_C, "esp"),
            part(USR_X86_64, UUID_B, "usr"),
        ]);
        assert_eq!(usr, RootArg::Usr(UUID_B.into()));
        assert_eq!(usr.kernel_arg(), format!("mount.usr=PARTUUID={UUID_B}"));
    }

    #[test]
    fn skips_no_auto_partitions() {
        let no_auto = |type_guid, uuid, label| Part {
            attributes: FLAG_NO_AUTO,
            ..part(type_guid, uuid, label)
        };
        assert_eq!(
            found(vec![
                no_auto(ROOT_X86_64, UUID_A, "root-9"),
                part(ROOT_X86_64, UUID_B, "root-1"),
            ]),
            RootArg::Root(UUID_B.into())
        );
        assert_eq!(
            found(vec![
                no_auto(ROOT_X86_64, UUID_A, "root"),
                part(USR_X86_64, UUID_B, "usr"),
            ]),
            RootArg::Usr(UUID_B.into())
        );
        assert!(matches!(
            refused(vec![
                no_auto(ROOT_X86_64, UUID_A, "root"),
                no_auto(LINUX_GENERIC, UUID_B, "data"),
            ]),
            GptError::NoRootPartition
        ));
    }

    #[test]
    fn of_several_roots_the_highest_version_wins() {
        assert_eq!(
            found(vec![
                part(ROOT_X86_64, UUID_A, "os_1.9"),
                part(ROOT_X86_64, UUID_B, "os_1.10"),
                part(ROOT_X86_64, UUID_C, "os_1.10~rc1"),
            ]),
            RootArg::Root(UUID_B.into())
        );
        // Equal versions: the first one stays.
        assert_eq!(
            found(vec![
                part(ROOT_X86_64, UUID_C, "root"),
                part(ROOT_X86_64, UUID_A, "root"),
            ]),
            RootArg::Root(UUID_C.into())
        );
        // The same for /usr.
        assert_eq!(
            found(vec![
                part(USR_X86_64, UUID_A, "usr-2"),
                part(USR_X86_64, UUID_B, "usr-10"),
            ]),
            RootArg::Usr(UUID_B.into())
        );
    }

    #[test]
    fn a_single_generic_partition_is_the_root() {
        assert_eq!(
            found(vec![
                part(ESP, UUID_C, "esp"),
                part(LINUX_GENERIC, UUID_A, "data"),
            ]),
            RootArg::Root(UUID_A.into())
        );
        // Not when there are two.
        let err = refused(vec![
            part(LINUX_GENERIC, UUID_A, "data"),
            part(LINUX_GENERIC, UUID_B, "data"),
        ]);
        assert!(matches!(err, GptError::NoRootPartition));
        // A /usr partition comes first.
        assert_eq!(
            found(vec![
                part(LINUX_GENERIC, UUID_A, "data"),
                part(USR_X86_64, UUID_B, "usr"),
            ]),
            RootArg::Usr(UUID_B.into())
        );
    }

    #[test]
    fn no_root_partition() {
        for parts in [vec![part(ESP, UUID_C, "esp")], vec![]] {
            let err = refused(parts);
            assert!(matches!(err, GptError::NoRootPartition));
            assert_eq!(
                err.to_string(),
                "Cannot perform a direct kernel boot without a root or usr partition, refusing"
            );
            assert_eq!(err.errno(), libc::ENOENT);
        }
    }

    #[test]
    fn no_gpt() {
        for img in [&[][..], &[0; 100][..], &[0; 64 << 10][..]] {
            let err = discover(img).unwrap_err();
            assert!(matches!(err, GptError::NoPartitionTable), "{err:?}");
            assert_eq!(err.errno(), libc::ENOPKG);
            assert!(err.to_string().contains("no GPT partition table"));
            assert!(err.to_string().contains("root="));
        }
        // An MBR-partitioned image.
        let mut img = vec![0; 64 << 10];
        img[446 + 4] = 0x83;
        img[510..512].copy_from_slice(&[0x55, 0xaa]);
        assert!(matches!(discover(&img), Err(GptError::NoPartitionTable)));
    }

    #[test]
    fn gpt_without_protective_mbr_is_invalid() {
        let img = Image {
            protective_mbr: false,
            ..Image::new(vec![part(ROOT_X86_64, UUID_A, "root")])
        }
        .build();
        assert!(invalid_text(discover(&img)).contains("protective MBR"));
    }

    #[test]
    fn bad_checksums() {
        let image = Image {
            backup: false,
            ..Image::new(vec![part(ROOT_X86_64, UUID_A, "root")])
        };
        let mut img = image.build();
        img[512 + 40] ^= 1; // first usable LBA
        assert!(invalid_text(discover(&img)).contains("header in sector 1 has checksum"));

        let mut img = image.build();
        img[2 * 512 + 20] ^= 1; // the partition's UUID
        assert!(invalid_text(discover(&img)).contains("entry array has checksum"));
    }

    #[test]
    fn a_damaged_primary_header_falls_back_to_the_backup() {
        let mut img = Image::new(vec![part(ROOT_X86_64, UUID_A, "root")]).build();
        img[512 + 40] ^= 1;
        assert_eq!(discover(&img).unwrap(), RootArg::Root(UUID_A.into()));
        // Also with the primary header gone entirely.
        img[512..1024].fill(0);
        assert_eq!(discover(&img).unwrap(), RootArg::Root(UUID_A.into()));
        // Both damaged: the primary's fault is reported.
        let backup = img.len() - 512;
        img[backup + 40] ^= 1;
        assert!(matches!(discover(&img), Err(GptError::NoPartitionTable)));
    }

    #[test]
    fn entry_array_out_of_bounds_or_absurd() {
        let image = Image {
            backup: false,
            ..Image::new(vec![part(ROOT_X86_64, UUID_A, "root")])
        };
        let sectors = image.build().len() as u64 / 512;
        let le32 = |v: u32| v.to_le_bytes().to_vec();
        let le64 = |v: u64| v.to_le_bytes().to_vec();
        // (header offset, new value, what the error says)
        let cases = [
            // The array past the end of the image, wrapping around, or over the header.
            (72, le64(sectors - 1), "not within"),
            (72, le64(u64::MAX), "not within"),
            (72, le64(0), "not within"),
            (72, le64(1), "overlaps its header"),
            // Absurd entry counts and sizes: refused before anything is allocated.
            (80, le32(u32::MAX), "larger than"),
            (80, le32(100_000), "larger than"),
            (80, le32(4096), "not within"),
            (84, le32(0), "entry size"),
            (84, le32(120), "entry size"),
            (84, le32(132), "entry size"),
            (84, le32(8192), "entry size"),
            (84, le32(u32::MAX), "entry size"),
            // Other header fields.
            (12, le32(600), "header size"),
            (12, le32(91), "header size"),
            (24, le64(7), "says it is in sector 7"),
            (48, le64(sectors), "usable sectors"),
            (40, le64(u64::MAX), "usable sectors"),
            (40, le64(0), "inside the usable sectors"),
        ];
        for (offset, value, expect) in cases {
            let mut img = image.build();
            patch_header(&mut img, 512, 1, |h| {
                h[offset..offset + value.len()].copy_from_slice(&value)
            });
            let text = invalid_text(discover(&img));
            assert!(text.contains(expect), "{text}");
        }
    }

    #[test]
    fn larger_entries_and_a_short_array_work() {
        let img = Image {
            entry_count: 4,
            entry_size: 256,
            ..Image::new(vec![
                part(ESP, UUID_C, "esp"),
                part(ROOT_X86_64, UUID_A, "root"),
            ])
        }
        .build();
        assert_eq!(discover(&img).unwrap(), RootArg::Root(UUID_A.into()));
    }

    #[test]
    fn entries_outside_the_usable_area_are_ignored() {
        let outside = Part {
            first: Some(1),
            ..part(ROOT_X86_64, UUID_A, "root-2")
        };
        assert_eq!(
            found(vec![outside, part(ROOT_X86_64, UUID_B, "root-1")]),
            RootArg::Root(UUID_B.into())
        );
    }

    #[test]
    fn sector_size_4096() {
        let image = Image {
            sector: 4096,
            ..Image::new(vec![
                part(ESP, UUID_C, "esp"),
                part(ROOT_X86_64, UUID_A, "root"),
            ])
        };
        let img = image.build();
        assert_eq!(probe_sector_size(&img[..], img.len() as u64).unwrap(), 4096);
        assert_eq!(discover(&img).unwrap(), RootArg::Root(UUID_A.into()));

        // Read as 512-byte sectors the same image has no table.
        assert!(matches!(
            read_partitions(&img[..], img.len() as u64, 512),
            Err(GptError::NoPartitionTable)
        ));

        // Headers for two sector sizes: refused.
        let mut both = img.clone();
        both[512..1024].copy_from_slice(&img[4096..4608]);
        assert!(invalid_text(discover(&both)).contains("both 512-byte and 4096-byte"));
    }

    #[test]
    fn io_errors_keep_their_errno() {
        assert_eq!(
            GptError::Io(io::Error::from_raw_os_error(libc::EACCES)).errno(),
            libc::EACCES
        );
        assert_eq!(
            GptError::Io(io::ErrorKind::UnexpectedEof.into()).errno(),
            libc::EIO
        );
    }

    #[test]
    fn version_order() {
        // From the documentation of systemd's strverscmp_improved(), oldest first.
        let ordered = [
            "122.1",
            "123~rc1-1",
            "123",
            "123-a",
            "123-a.1",
            "123-1",
            "123-1.1",
            "123^post1",
            "123.a-1",
            "123.1-1",
            "123a-1",
            "124-1",
        ];
        for (i, a) in ordered.iter().enumerate() {
            for (j, b) in ordered.iter().enumerate() {
                assert_eq!(version_cmp(a, b), i.cmp(&j), "{a} vs {b}");
            }
        }
        assert_eq!(version_cmp("root-1.10", "root-1.9"), Ordering::Greater);
        assert_eq!(version_cmp("00123", "123"), Ordering::Equal);
        assert_eq!(version_cmp("1_2", "12"), Ordering::Less);
        assert_eq!(version_cmp("1_a", "1a"), Ordering::Equal);
        assert_eq!(version_cmp("", "a"), Ordering::Less);
        assert_eq!(version_cmp("", ""), Ordering::Equal);
        assert_eq!(version_cmp("é", ""), Ordering::Equal);
        assert_eq!(version_cmp("..", ".-"), Ordering::Greater);
    }

    #[test]
    fn cmdline_root_choices() {
        assert!(cmdline_selects_root(&["quiet", "root=/dev/vda1"]));
        assert!(cmdline_selects_root(&["mount.usr=PARTUUID=x"]));
        assert!(!cmdline_selects_root(&[
            "quiet",
            "rootfstype=ext4",
            "x.root=1"
        ]));
        assert!(!cmdline_selects_root::<&str>(&[]));
        // As the VMM holds them.
        let args: Vec<String> = vec!["quiet".into(), "mount.usr=/dev/vda2".into()];
        assert!(cmdline_selects_root(&args));
    }

    fn temp_path(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("rvmspawn-gpt-{}-{name}", std::process::id()))
    }

    #[test]
    fn reads_a_file() {
        let path = temp_path("file.img");
        let img = Image::new(vec![part(USR_X86_64, UUID_B, "usr")]).build();
        File::create(&path).unwrap().write_all(&img).unwrap();
        let file = File::open(&path).unwrap();
        let found = discover_root(&file);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(found.unwrap(), RootArg::Usr(UUID_B.into()));
    }

    #[test]
    fn reads_an_image_made_by_sfdisk() {
        let path = temp_path("sfdisk.img");
        File::create(&path).unwrap().set_len(4 << 20).unwrap();
        let script = format!(
            "label: gpt\n\
             size=1024, type={LINUX_GENERIC}, uuid={UUID_C}, name=\"data\"\n\
             size=1024, type={ROOT_X86_64}, uuid={UUID_A}, name=\"root-2\", attrs=\"GUID:63\"\n\
             size=1024, type={ROOT_X86_64}, uuid={}, name=\"root-1\"\n",
            UUID_B.to_uppercase()
        );
        let run = std::process::Command::new("sfdisk")
            .args(["--no-reread", "--no-tell-kernel", "--quiet"])
            .arg(&path)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .and_then(|mut child| {
                child.stdin.take().unwrap().write_all(script.as_bytes())?;
                child.wait()
            });
        let status = match run {
            Ok(status) => status,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let _ = std::fs::remove_file(&path);
                println!("sfdisk (util-linux) is not installed: skipping this test");
                return;
            }
            Err(e) => panic!("sfdisk: {e}"),
        };
        let found = File::open(&path).map(|file| discover_root(&file));
        std::fs::remove_file(&path).unwrap();
        assert!(status.success(), "sfdisk failed: {status}");
        assert_eq!(found.unwrap().unwrap(), RootArg::Root(UUID_B.into()));
    }
}
