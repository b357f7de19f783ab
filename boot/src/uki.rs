//! Reading a Unified Kernel Image: a PE/COFF EFI executable (normally systemd-stub) that carries
//! the kernel, its initrd and its command line as extra PE sections.
//!
//! rvmspawn does not run the stub: it boots the `.linux` payload directly, with the initrd and
//! command line the stub would have passed. This module finds those payloads in the file and
//! reports them as byte ranges; it reads nothing else of the payloads but the `.cmdline` text.
//!
//! # What is read, and how sections are chosen
//!
//! The image is untrusted input. Only these parts of it are looked at:
//!
//! - the DOS header's `MZ` magic and `e_lfanew` (at 0x3c), the offset of the PE header, which must
//!   lie past the 64-byte DOS header;
//! - the `PE\0\0` signature and the COFF header: the machine type (reported, not checked: the
//!   payload is what the loader boots), the number of sections (1 to [`MAX_SECTIONS`]) and the
//!   size of the optional header;
//! - the optional header's magic (PE32 or PE32+), and nothing else of it;
//! - the section table, right after the optional header: 40-byte entries whose 8-byte names are
//!   NUL-padded. Names compare up to the first NUL (systemd's `pe_section_name_equal()`).
//!
//! Sections are picked as systemd-stub picks them for the default profile: the first section of a
//! name among those before the first `.profile` section (the base), replaced by the first of that
//! name in profile 0 (from the first `.profile` section to the next). Sections of other profiles
//! are ignored. The sections reported are `.linux` (required), `.initrd`, `.ucode`, `.cmdline`,
//! `.osrel`, `.uname` and `.profile`; all others (`.sbat`, `.splash`, `.dtb`, `.pcrsig`, the
//! stub's own code, ...) are passed over unread and unchecked.
//!
//! A section's payload is `min(VirtualSize, SizeOfRawData)` bytes from `PointerToRawData`. The
//! firmware loads `SizeOfRawData` bytes (the file data, rounded up to `FileAlignment`) and
//! zero-fills the section up to `VirtualSize`; systemd-stub then hands the kernel `VirtualSize`
//! bytes, which is the exact payload size ukify and objcopy write. Read from the file, the data
//! that exists is the smaller of the two, as systemd's own file-based reader
//! (`PeSectionVector.file_size`) computes it: when `VirtualSize` is the larger, the stub's extra
//! bytes are zeros that no payload needs. A section whose payload is empty counts as absent, as
//! for the stub (`PE_SECTION_VECTOR_IS_SET`), except `.linux`, whose emptiness is an error.
//!
//! # What is refused
//!
//! - A file that is not a PE (no `MZ`, or no `PE\0\0` at `e_lfanew`) and a PE without a `.linux`
//!   section are [`UkiError::NotUki`]: not errors for the caller, which boots such a file as a
//!   bzImage or ELF. Every EFI-stub bzImage is a PE (it starts with `MZ` and has `HdrS` at
//!   0x202) with sections such as `.setup` and `.text` but no `.linux`; since only the sections
//!   named above are checked, a bzImage's own sections can never make it unbootable.
//! - Everything else that is wrong is [`UkiError::Malformed`], with a text that says what: a PE
//!   header truncated or overlapping the DOS header, no sections or more than [`MAX_SECTIONS`], a
//!   section table past the end of the file, a reported payload past the end of the file or
//!   overlapping the headers or another reported payload, an empty `.linux`, a `.linux` only in a
//!   non-default profile, a `.cmdline` with no end within [`MAX_TEXT`] bytes.
//!
//! Every offset is checked against the file size before it is used, in `u64` (PE fields are 32
//! bits wide, so no sum here can overflow). At most [`MAX_SECTIONS`] section headers and
//! [`MAX_TEXT`] bytes of text are read into memory, whatever the file says; the payloads stay in
//! the file, so a UKI of any size costs nothing here and the loader can `pread` `.linux` and
//! `.initrd` straight into guest memory. The parser is fuzzed: `fuzz/fuzz_targets/uki.rs`.
//!
//! # Why this is hand-written
//!
//! We only need `e_lfanew`, three fields of the COFF header, the optional header's magic and the
//! section table: about a hundred lines. The `object` crate (0.40) has a good read-only PE reader,
//! but even with only its `read_core`, `pe` and `std` features it brings some ten thousand lines
//! of PE/COFF reading (and `memchr`) to the surface that reads an untrusted file, it parses more
//! than we use (data directories, the COFF symbol table), and it would leave all of the above
//! to write anyway: the stub's name matching, profiles, first-match rule, payload sizes and the
//! checks on the payloads. `goblin` (0.10) parses a PE eagerly and in full by default (imports,
//! exports, debug data, exception tables, certificates), wants the whole file in memory and adds
//! `scroll`, `plain` and `log`. The same reasoning kept the GPT reader (`crate::gpt`) our own.
//!
//! # Use
//!
//! [`is_pe`] tells whether a file is a PE at all; [`parse_uki`] returns the [`Uki`] or says why
//! not. Both read through [`ReadAt`], so a [`std::fs::File`] and a `&[u8]` both work. A loader
//! detecting the kernel format by content tries [`parse_uki`] first and falls back to the bzImage
//! and ELF checks on [`UkiError::NotUki`].

use std::io;
use std::ops::Range;

pub use crate::gpt::ReadAt;

/// The most sections a PE image may have: the limit the PE/COFF specification states for the
/// Windows loader. A UKI has about ten, a multi-profile UKI a few more per profile.
pub const MAX_SECTIONS: usize = 96;

/// The most bytes of a text section (`.cmdline`, or any section given to [`read_text`]) that are
/// read to find its end (its first NUL or its end). A command line is at most a few KiB.
pub const MAX_TEXT: u64 = 1 << 20;

/// PE machine type of x86-64 images.
pub const MACHINE_X86_64: u16 = 0x8664;

/// The size of the DOS header; `e_lfanew` is its last field.
const DOS_HEADER_LEN: usize = 64;

/// Where the DOS header holds the offset of the PE header.
const E_LFANEW: usize = 0x3c;

/// The PE signature at `e_lfanew`.
const PE_SIGNATURE: &[u8; 4] = b"PE\0\0";

/// The signature, the COFF header and the optional header's magic.
const PE_HEADER_LEN: usize = 4 + 20 + 2;

/// The size of one section table entry.
const SECTION_HEADER_LEN: usize = 40;

/// Optional header magic of PE32 and PE32+ images.
const PE32_MAGIC: u16 = 0x10b;
const PE32_PLUS_MAGIC: u16 = 0x20b;

/// The section that starts each profile of a multi-profile UKI.
const PROFILE: &str = ".profile";

/// Errors from reading a UKI.
#[derive(Debug, thiserror::Error)]
pub enum UkiError {
    /// Reading the file failed.
    #[error("Failed to read the kernel image: {0}")]
    Io(#[from] io::Error),
    /// The file is not a PE, or a PE without a `.linux` section (such as an EFI-stub bzImage):
    /// boot it as something else.
    #[error("The kernel image is not a Unified Kernel Image (a PE file with a .linux section)")]
    NotUki,
    /// The file is a PE but its headers, or the UKI sections in it, are broken; the text says how.
    #[error("The kernel image is a malformed PE/UKI file: {0}")]
    Malformed(String),
}

impl UkiError {
    /// The errno that describes this error (the process exit code).
    pub fn errno(&self) -> i32 {
        match self {
            UkiError::Io(e) => e.raw_os_error().unwrap_or(libc::EIO),
            UkiError::NotUki | UkiError::Malformed(_) => libc::ENOEXEC,
        }
    }
}

fn malformed(what: impl Into<String>) -> UkiError {
    UkiError::Malformed(what.into())
}

/// A range of bytes of the file: a section's payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Section {
    /// Where it starts in the file.
    pub offset: u64,
    /// Its length in bytes; never 0 in a [`Uki`].
    pub size: u64,
}

impl Section {
    /// The offset just past its end.
    pub fn end(&self) -> u64 {
        self.offset.saturating_add(self.size)
    }

    /// Its bytes as a range of file offsets.
    pub fn range(&self) -> Range<u64> {
        self.offset..self.end()
    }

    /// Its bytes in `file`, a whole file in memory; `None` if they are not all in it.
    pub fn slice<'a>(&self, file: &'a [u8]) -> Option<&'a [u8]> {
        let start = usize::try_from(self.offset).ok()?;
        let len = usize::try_from(self.size).ok()?;
        file.get(start..start.checked_add(len)?)
    }

    fn overlaps(&self, other: &Section) -> bool {
        self.offset < other.end() && other.offset < self.end()
    }
}

impl std::fmt::Display for Section {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#x} bytes at offset {:#x}", self.size, self.offset)
    }
}

/// The parts of a Unified Kernel Image that a direct boot needs, as systemd-stub would pass them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uki {
    /// The COFF header's machine type (the stub's architecture; [`MACHINE_X86_64`] for x86-64).
    pub machine: u16,
    /// `.linux`: the kernel (a bzImage on x86).
    pub linux: Section,
    /// `.initrd`: the initrd.
    pub initrd: Option<Section>,
    /// `.ucode`: a microcode initrd, which goes before `.initrd` (see [`Uki::initrds`]).
    pub ucode: Option<Section>,
    /// `.cmdline`: the embedded kernel command line (its text is [`Uki::cmdline_text`]).
    pub cmdline: Option<Section>,
    /// `.osrel`: the os-release file of the OS the UKI belongs to.
    pub osrel: Option<Section>,
    /// `.uname`: the kernel release (`uname -r`).
    pub uname: Option<Section>,
    /// `.profile`: the metadata of the profile booted (profile 0) in a multi-profile UKI.
    pub profile: Option<Section>,
    /// The embedded command line as systemd-stub gives it to the kernel: the `.cmdline` text up
    /// to its first NUL, without the invalid UTF-8 and the characters beyond U+FFFF that the
    /// stub's conversion to UCS-2 drops, without leading and trailing white space and control
    /// characters, and with each one inside turned into a space (`mangle_stub_cmdline()`).
    /// Empty when there is no `.cmdline`, as the stub treats an empty one.
    pub cmdline_text: String,
}

impl Uki {
    /// The initrd parts in the order the stub concatenates them: `.ucode`, then `.initrd`
    /// (the kernel takes the first microcode it finds).
    pub fn initrds(&self) -> impl Iterator<Item = Section> + '_ {
        self.ucode.iter().chain(self.initrd.iter()).copied()
    }

    /// Every section present, with its name, in the order of the fields above.
    pub fn sections(&self) -> impl Iterator<Item = (&'static str, Section)> + '_ {
        [
            (".linux", Some(self.linux)),
            (".initrd", self.initrd),
            (".ucode", self.ucode),
            (".cmdline", self.cmdline),
            (".osrel", self.osrel),
            (".uname", self.uname),
            (PROFILE, self.profile),
        ]
        .into_iter()
        .filter_map(|(name, section)| Some((name, section?)))
    }
}

fn le_u16(bytes: &[u8], offset: usize) -> u16 {
    u16::from_le_bytes([bytes[offset], bytes[offset + 1]])
}

fn le_u32(bytes: &[u8], offset: usize) -> u32 {
    let mut field = [0; 4];
    field.copy_from_slice(&bytes[offset..offset + 4]);
    u32::from_le_bytes(field)
}

/// Whether `image` is a PE file: `MZ` at 0 and `PE\0\0` at the offset the DOS header gives. A file
/// that cannot be read counts as no PE (the loader's own read then reports the error).
pub fn is_pe<R: ReadAt + ?Sized>(image: &R) -> bool {
    image
        .size_bytes()
        .and_then(|size| pe_header_offset(image, size))
        .is_ok_and(|at| at.is_some())
}

/// The offset of the PE signature, if `image` is a PE.
fn pe_header_offset<R: ReadAt + ?Sized>(image: &R, size: u64) -> io::Result<Option<u64>> {
    if size < DOS_HEADER_LEN as u64 {
        return Ok(None);
    }
    let mut dos = [0; DOS_HEADER_LEN];
    image.read_exact_at(&mut dos, 0)?;
    if dos[..2] != *b"MZ" {
        return Ok(None);
    }
    let at = u64::from(le_u32(&dos, E_LFANEW));
    if at + PE_SIGNATURE.len() as u64 > size {
        return Ok(None);
    }
    let mut signature = [0; 4];
    image.read_exact_at(&mut signature, at)?;
    Ok((signature == *PE_SIGNATURE).then_some(at))
}

/// A section table entry, the fields used.
#[derive(Clone, Copy)]
pub(crate) struct SectionHeader {
    name: [u8; 8],
    pub(crate) virtual_size: u32,
    pub(crate) raw_size: u32,
    pub(crate) raw_offset: u32,
}

impl SectionHeader {
    fn parse(entry: &[u8]) -> SectionHeader {
        let mut name = [0; 8];
        name.copy_from_slice(&entry[..8]);
        SectionHeader {
            name,
            virtual_size: le_u32(entry, 8),
            raw_size: le_u32(entry, 16),
            raw_offset: le_u32(entry, 20),
        }
    }

    /// Whether its name is `name`: the 8 bytes up to the first NUL.
    fn is(&self, name: &str) -> bool {
        let len = self.name.iter().position(|&b| b == 0).unwrap_or(8);
        self.name[..len] == *name.as_bytes()
    }

    /// The payload: `min(VirtualSize, SizeOfRawData)` bytes from `PointerToRawData`.
    fn payload(&self) -> Section {
        Section {
            offset: self.raw_offset.into(),
            size: self.virtual_size.min(self.raw_size).into(),
        }
    }
}

/// Reads a Unified Kernel Image: finds its payload sections as systemd-stub does for the default
/// profile and checks them (see the module documentation for every rule). Returns
/// [`UkiError::NotUki`] for anything that is not a PE with a `.linux` section.
pub fn parse_uki<R: ReadAt + ?Sized>(image: &R) -> Result<Uki, UkiError> {
    let table = read_section_table(image)?;
    let (size, headers_end, machine) = (table.size, table.headers_end, table.machine);
    let sections = &table.sections;
    let pick = |name: &str| table.pick(name);

    let Some(linux) = pick(".linux") else {
        if sections.iter().any(|s| s.is(".linux")) {
            return Err(malformed(
                "there is a .linux section only in a profile other than the default one",
            ));
        }
        return Err(UkiError::NotUki);
    };
    let linux = linux.payload();
    if linux.size == 0 {
        return Err(malformed("the .linux section is empty"));
    }
    // A section with an empty payload counts as absent; any other must be within the file.
    let optional = |name: &str| pick(name).map(|s| s.payload()).filter(|p| p.size > 0);
    let mut uki = Uki {
        machine,
        linux,
        initrd: optional(".initrd"),
        ucode: optional(".ucode"),
        cmdline: optional(".cmdline"),
        osrel: optional(".osrel"),
        uname: optional(".uname"),
        profile: optional(PROFILE),
        cmdline_text: String::new(),
    };

    let reported: Vec<(&str, Section)> = uki.sections().collect();
    for (i, &(name, section)) in reported.iter().enumerate() {
        if section.end() > size {
            return Err(malformed(format!(
                "the {name} section ({section}) extends past the end of the file ({size:#x} bytes)"
            )));
        }
        if section.offset < headers_end {
            return Err(malformed(format!(
                "the {name} section ({section}) overlaps the PE headers (the first \
                 {headers_end:#x} bytes)"
            )));
        }
        if let Some((other, _)) = reported[..i].iter().find(|(_, s)| s.overlaps(&section)) {
            return Err(malformed(format!(
                "the {name} section ({section}) overlaps the {other} section"
            )));
        }
    }

    if let Some(cmdline) = uki.cmdline {
        let text = read_text(image, cmdline).map_err(|e| match e {
            UkiError::Malformed(what) => malformed(format!("the .cmdline section: {what}")),
            e => e,
        })?;
        uki.cmdline_text = stub_cmdline(&text);
    }
    Ok(uki)
}

/// A PE file's section table, with the default profile's sections marked.
pub(crate) struct SectionTable {
    /// The file's size.
    pub(crate) size: u64,
    /// Where the headers (and the section table) end.
    headers_end: u64,
    /// The COFF machine type.
    machine: u16,
    sections: Vec<SectionHeader>,
    /// The base sections (before the first `.profile`), as indices into `sections`.
    base: Range<usize>,
    /// Profile 0's sections (from the first `.profile` to the next).
    profile0: Range<usize>,
}

impl SectionTable {
    /// The section named `name` that systemd-stub uses for the default profile: the first in
    /// profile 0, else the first in the base.
    pub(crate) fn pick(&self, name: &str) -> Option<SectionHeader> {
        let first = |group: &Range<usize>| {
            self.sections
                .get(group.clone())?
                .iter()
                .find(|s| s.is(name))
                .copied()
        };
        first(&self.profile0).or_else(|| first(&self.base))
    }
}

/// Reads the section table of PE file `image` and checks the headers (see the module
/// documentation); [`UkiError::NotUki`] if it is not a PE.
pub(crate) fn read_section_table<R: ReadAt + ?Sized>(image: &R) -> Result<SectionTable, UkiError> {
    let size = image.size_bytes()?;
    let Some(pe) = pe_header_offset(image, size)? else {
        return Err(UkiError::NotUki);
    };
    if pe < DOS_HEADER_LEN as u64 {
        return Err(malformed(format!(
            "the PE header (e_lfanew {pe:#x}) is inside the {DOS_HEADER_LEN}-byte DOS header"
        )));
    }
    // pe < 2³², so no sum below overflows.
    if pe + PE_HEADER_LEN as u64 > size {
        return Err(malformed(format!(
            "the PE headers at {pe:#x} are cut off by the end of the file ({size:#x} bytes)"
        )));
    }
    let mut header = [0; PE_HEADER_LEN];
    image.read_exact_at(&mut header, pe)?;
    let machine = le_u16(&header, 4);
    let count = usize::from(le_u16(&header, 6));
    let optional_len = le_u16(&header, 20);
    let magic = le_u16(&header, 24);
    if count == 0 {
        return Err(malformed("the PE file has no sections"));
    }
    if count > MAX_SECTIONS {
        return Err(malformed(format!(
            "the PE file claims {count} sections, more than the {MAX_SECTIONS} allowed"
        )));
    }
    if optional_len < 2 || !matches!(magic, PE32_MAGIC | PE32_PLUS_MAGIC) {
        return Err(malformed(format!(
            "the optional header ({optional_len} bytes, magic {magic:#06x}) is neither PE32 \
             ({PE32_MAGIC:#x}) nor PE32+ ({PE32_PLUS_MAGIC:#x})"
        )));
    }
    let table_at = pe + 24 + u64::from(optional_len);
    let headers_end = table_at + (count * SECTION_HEADER_LEN) as u64;
    if headers_end > size {
        return Err(malformed(format!(
            "the section table ({count} entries at {table_at:#x}) extends past the end of the \
             file ({size:#x} bytes)"
        )));
    }
    let mut table = [0; MAX_SECTIONS * SECTION_HEADER_LEN];
    let table = &mut table[..count * SECTION_HEADER_LEN];
    image.read_exact_at(table, table_at)?;
    let sections: Vec<SectionHeader> = table
        .chunks_exact(SECTION_HEADER_LEN)
        .map(SectionHeader::parse)
        .collect();
    // The base: everything before the first .profile; profile 0: from there to the next one.
    let first_profile = sections.iter().position(|s| s.is(PROFILE));
    let base = 0..first_profile.unwrap_or(count);
    let profile0 = first_profile.map_or(0..0, |start| {
        let end = sections[start + 1..]
            .iter()
            .position(|s| s.is(PROFILE))
            .map_or(count, |n| start + 1 + n);
        start..end
    });
    Ok(SectionTable {
        size,
        headers_end,
        machine,
        sections,
        base,
        profile0,
    })
}

/// Reads a text section (such as [`Uki::osrel`] or [`Uki::uname`]): its bytes up to the first
/// NUL, as UTF-8 with invalid sequences dropped. At most [`MAX_TEXT`] bytes are read; a section
/// longer than that without a NUL in them is an error.
pub fn read_text<R: ReadAt + ?Sized>(image: &R, section: Section) -> Result<String, UkiError> {
    // At most MAX_TEXT bytes, whatever the section says.
    let mut bytes = vec![0; section.size.min(MAX_TEXT) as usize];
    image.read_exact_at(&mut bytes, section.offset)?;
    let end = match bytes.iter().position(|&b| b == 0) {
        Some(end) => end,
        None if section.size > MAX_TEXT => {
            return Err(malformed(format!(
                "its text ({section}) has no end within the first {MAX_TEXT} bytes"
            )));
        }
        None => bytes.len(),
    };
    Ok(bytes[..end]
        .utf8_chunks()
        .map(|chunk| chunk.valid())
        .collect())
}

/// What systemd-stub makes of an embedded command line: the characters it can represent in UCS-2
/// (up to U+FFFF), with leading and trailing white space and control characters (U+0000-U+0020
/// and U+007F) removed and each one inside replaced by a space.
fn stub_cmdline(text: &str) -> String {
    let blank = |c: char| c <= ' ' || c == '\x7f';
    let line: String = text
        .chars()
        .filter(|&c| u32::from(c) <= 0xffff)
        .map(|c| if blank(c) { ' ' } else { c })
        .collect();
    line.trim_matches(' ').to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::io::Write;
    use std::process::Command;

    /// FileAlignment and SectionAlignment of the images built here (objcopy's and ukify's).
    const FILE_ALIGNMENT: usize = 0x200;
    const SECTION_ALIGNMENT: u32 = 0x1000;

    /// A section of a test image: its data, and header fields to write instead of the right ones.
    #[derive(Clone)]
    struct Sec {
        name: &'static [u8],
        data: Vec<u8>,
        virtual_size: Option<u32>,
        raw_size: Option<u32>,
        raw_offset: Option<u32>,
    }

    fn sec(name: &'static str, data: impl AsRef<[u8]>) -> Sec {
        Sec {
            name: name.as_bytes(),
            data: data.as_ref().to_vec(),
            virtual_size: None,
            raw_size: None,
            raw_offset: None,
        }
    }

    /// A PE32+ EFI application laid out as objcopy and ukify lay out a UKI: the DOS header, the
    /// PE headers with a full optional header (16 data directories), the section table, then
    /// each section's data at the next FileAlignment boundary, its raw size rounded up to it and
    /// its virtual size exact.
    struct Pe {
        e_lfanew: u32,
        magic: u16,
        optional_len: u16,
        sections: Vec<Sec>,
    }

    impl Pe {
        fn new(sections: Vec<Sec>) -> Pe {
            Pe {
                e_lfanew: 0x80,
                magic: PE32_PLUS_MAGIC,
                optional_len: 240,
                sections,
            }
        }

        fn table_at(&self) -> usize {
            self.e_lfanew as usize + 24 + usize::from(self.optional_len)
        }

        /// Where the section table entry of section `i` is.
        fn entry_at(&self, i: usize) -> usize {
            self.table_at() + SECTION_HEADER_LEN * i
        }

        fn headers_end(&self) -> usize {
            self.entry_at(self.sections.len())
        }

        fn build(&self) -> Vec<u8> {
            let headers_len = self.headers_end().next_multiple_of(FILE_ALIGNMENT);
            let mut img = vec![0; headers_len];
            img[..2].copy_from_slice(b"MZ");
            put(&mut img, E_LFANEW, &self.e_lfanew.to_le_bytes());
            let pe = self.e_lfanew as usize;
            img[pe..pe + 4].copy_from_slice(PE_SIGNATURE);
            put(&mut img, pe + 4, &MACHINE_X86_64.to_le_bytes());
            put(
                &mut img,
                pe + 6,
                &(self.sections.len() as u16).to_le_bytes(),
            );
            put(&mut img, pe + 20, &self.optional_len.to_le_bytes());
            put(&mut img, pe + 22, &0x0206u16.to_le_bytes()); // executable, no line numbers

            let mut va = SECTION_ALIGNMENT;
            let mut entries = Vec::new();
            for s in &self.sections {
                let raw_offset = img.len();
                let raw_size = s.data.len().next_multiple_of(FILE_ALIGNMENT);
                img.extend_from_slice(&s.data);
                img.resize(raw_offset + raw_size, 0);
                let mut entry = [0; SECTION_HEADER_LEN];
                entry[..s.name.len()].copy_from_slice(s.name);
                let virtual_size = s.virtual_size.unwrap_or(s.data.len() as u32);
                put(&mut entry, 8, &virtual_size.to_le_bytes());
                put(&mut entry, 12, &va.to_le_bytes());
                let raw_size = s.raw_size.unwrap_or(raw_size as u32);
                put(&mut entry, 16, &raw_size.to_le_bytes());
                let raw_offset = s.raw_offset.unwrap_or(raw_offset as u32);
                put(&mut entry, 20, &raw_offset.to_le_bytes());
                put(&mut entry, 36, &0x4000_0040u32.to_le_bytes()); // initialized data, read
                entries.push(entry);
                // Wraps for absurd virtual sizes, which is all right for a test image.
                let span = u64::from(virtual_size).next_multiple_of(SECTION_ALIGNMENT.into());
                va = (u64::from(va) + span.max(SECTION_ALIGNMENT.into())) as u32;
            }
            for (i, entry) in entries.iter().enumerate() {
                put(&mut img, self.entry_at(i), entry);
            }

            // The optional header, cut to optional_len (the section table follows it).
            let mut optional = [0; 240];
            put(&mut optional, 0, &self.magic.to_le_bytes());
            put(&mut optional, 16, &SECTION_ALIGNMENT.to_le_bytes()); // entry point
            put(&mut optional, 32, &SECTION_ALIGNMENT.to_le_bytes());
            put(&mut optional, 36, &(FILE_ALIGNMENT as u32).to_le_bytes());
            put(&mut optional, 56, &va.to_le_bytes()); // SizeOfImage
            put(&mut optional, 60, &(headers_len as u32).to_le_bytes());
            put(&mut optional, 68, &10u16.to_le_bytes()); // EFI application
            put(&mut optional, 108, &16u32.to_le_bytes()); // data directories
            let len = usize::from(self.optional_len).min(optional.len());
            let at = pe + 24;
            if at + len <= img.len() {
                img[at..at + len].copy_from_slice(&optional[..len]);
            }
            img
        }
    }

    fn put(bytes: &mut [u8], at: usize, value: &[u8]) {
        bytes[at..at + value.len()].copy_from_slice(value);
    }

    fn image(sections: Vec<Sec>) -> Vec<u8> {
        Pe::new(sections).build()
    }

    fn parse(img: &[u8]) -> Result<Uki, UkiError> {
        parse_uki(img)
    }

    /// The error text of a malformed image, checking its variant and errno.
    fn malformed_text(img: &[u8]) -> String {
        match parse(img) {
            Err(e @ UkiError::Malformed(_)) => {
                assert_eq!(e.errno(), libc::ENOEXEC);
                e.to_string()
            }
            other => panic!("expected a malformed image, got {other:?}"),
        }
    }

    fn assert_malformed(img: &[u8], expect: &str) {
        let text = malformed_text(img);
        assert!(text.contains(expect), "{text:?} does not say {expect:?}");
        assert!(text.starts_with("The kernel image is a malformed PE/UKI file: "));
    }

    fn assert_not_uki(img: &[u8]) {
        match parse(img) {
            Err(e @ UkiError::NotUki) => assert_eq!(e.errno(), libc::ENOEXEC),
            other => panic!("expected NotUki, got {other:?}"),
        }
    }

    fn kernel() -> Vec<u8> {
        (0..5000u32).map(|i| (i * 7) as u8).collect()
    }

    #[test]
    fn finds_every_section() {
        let linux = kernel();
        let initrd = vec![0x42; 3000];
        let img = image(vec![
            sec(".text", [0xc3; 100]),
            sec(".osrel", "ID=debian\nVERSION_ID=12\n"),
            sec(".cmdline", "console=ttyS0 quiet\n"),
            sec(".uname", "6.1.0-28-cloud-amd64"),
            sec(".sbat", "sbat,1,SBAT Version\n"),
            sec(".splash", [1; 10]),
            sec(".dtb", [2; 10]),
            sec(".ucode", [0x55; 700]),
            sec(".linux", &linux),
            sec(".initrd", &initrd),
        ]);
        assert!(is_pe(&img[..]));
        let uki = parse(&img).unwrap();
        assert_eq!(uki.machine, MACHINE_X86_64);
        let bytes = |s: Option<Section>| s.unwrap().slice(&img).unwrap();
        assert_eq!(bytes(Some(uki.linux)), linux);
        assert_eq!(bytes(uki.initrd), initrd);
        assert_eq!(bytes(uki.ucode), [0x55; 700]);
        assert_eq!(bytes(uki.cmdline), b"console=ttyS0 quiet\n");
        assert_eq!(bytes(uki.osrel), b"ID=debian\nVERSION_ID=12\n");
        assert_eq!(bytes(uki.uname), b"6.1.0-28-cloud-amd64");
        assert_eq!(uki.profile, None);
        assert_eq!(uki.cmdline_text, "console=ttyS0 quiet");
        assert_eq!(
            read_text(&img[..], uki.uname.unwrap()).unwrap(),
            "6.1.0-28-cloud-amd64"
        );
        // The data sits where the builder put it: the 8th section's data is at 0x400 + 7 × 0x200.
        assert_eq!(
            uki.ucode,
            Some(Section {
                offset: 0x1200,
                size: 700
            })
        );
        // .ucode comes before .initrd.
        assert_eq!(
            uki.initrds().collect::<Vec<_>>(),
            [uki.ucode.unwrap(), uki.initrd.unwrap()]
        );
        let names: Vec<_> = uki.sections().map(|(name, _)| name).collect();
        assert_eq!(
            names,
            [
                ".linux", ".initrd", ".ucode", ".cmdline", ".osrel", ".uname"
            ]
        );
    }

    #[test]
    fn only_linux_is_required() {
        let img = image(vec![sec(".linux", kernel())]);
        let uki = parse(&img).unwrap();
        assert_eq!(uki.linux.slice(&img).unwrap(), kernel());
        assert_eq!(
            (uki.initrd, uki.ucode, uki.cmdline, uki.osrel, uki.uname),
            (None, None, None, None, None)
        );
        assert_eq!(uki.cmdline_text, "");
        assert_eq!(uki.initrds().count(), 0);
        // Also as PE32 (the optional header's magic is the only field of it that is read).
        let img = Pe {
            magic: PE32_MAGIC,
            ..Pe::new(vec![sec(".linux", kernel())])
        }
        .build();
        assert_eq!(parse(&img).unwrap().linux.size, 5000);
    }

    #[test]
    fn payload_is_the_smaller_of_virtual_and_raw_size() {
        // VirtualSize below SizeOfRawData (the usual case: raw data is padded to 0x200).
        let img = image(vec![sec(".linux", [9; 0x300])]);
        assert_eq!(parse(&img).unwrap().linux.size, 0x300);
        // VirtualSize above SizeOfRawData (zero-filled in memory): only the raw data.
        let img = image(vec![Sec {
            virtual_size: Some(0x5000),
            ..sec(".linux", [9; 0x300])
        }]);
        assert_eq!(parse(&img).unwrap().linux.size, 0x400);
        let img = image(vec![Sec {
            raw_size: Some(0x100),
            ..sec(".linux", [9; 0x300])
        }]);
        assert_eq!(parse(&img).unwrap().linux.size, 0x100);
    }

    #[test]
    fn cmdline_is_mangled_as_by_the_stub() {
        let cases: [(&[u8], &str); 11] = [
            (b"quiet console=ttyS0\n", "quiet console=ttyS0"),
            (b"quiet\n\0\0\0\0", "quiet"),
            (b"  \t\r\n a\tb\r\nc \x7f \n", "a b  c"),
            (b"a b\0c d", "a b"),
            (b"\0quiet", ""),
            (b" \n\t ", ""),
            (b"x\x01y\x1fz", "x y z"),
            (b"root=/dev/vda1 \xff\xfe rw", "root=/dev/vda1  rw"),
            ("name=caf\u{e9}".as_bytes(), "name=caf\u{e9}"),
            ("a\u{1f600}b".as_bytes(), "ab"),
            (b"tail \xe2\x82", "tail"),
        ];
        for (raw, expect) in cases {
            let img = image(vec![sec(".linux", kernel()), sec(".cmdline", raw)]);
            let uki = parse(&img).unwrap();
            assert_eq!(uki.cmdline_text, expect, "{raw:?}");
            assert_eq!(uki.cmdline.unwrap().size, raw.len() as u64);
        }
    }

    #[test]
    fn empty_sections_are_absent() {
        let img = image(vec![
            sec(".linux", kernel()),
            sec(".cmdline", ""),
            Sec {
                raw_size: Some(0),
                ..sec(".initrd", [1; 100])
            },
            Sec {
                virtual_size: Some(0),
                ..sec(".osrel", "ID=x\n")
            },
        ]);
        let uki = parse(&img).unwrap();
        assert_eq!((uki.cmdline, uki.initrd, uki.osrel), (None, None, None));
        assert_eq!(uki.cmdline_text, "");
        // An empty section is absent even with nonsense where its data would be.
        let img = image(vec![
            sec(".linux", kernel()),
            Sec {
                raw_offset: Some(u32::MAX),
                virtual_size: Some(0),
                ..sec(".initrd", [1; 100])
            },
        ]);
        assert_eq!(parse(&img).unwrap().initrd, None);
    }

    #[test]
    fn the_first_section_of_a_name_wins_and_names_end_at_nul() {
        let img = image(vec![
            sec(".linuxA", [1; 10]),
            sec("linux", [2; 10]),
            sec(".cmdline", "first"),
            sec(".linux\0X", kernel()),
            sec(".cmdline", "second"),
            sec(".linux", [3; 10]),
        ]);
        let uki = parse(&img).unwrap();
        assert_eq!(uki.linux.slice(&img).unwrap(), kernel());
        assert_eq!(uki.cmdline_text, "first");
    }

    #[test]
    fn profile_zero_overrides_the_base() {
        let img = image(vec![
            sec(".osrel", "ID=base\n"),
            sec(".cmdline", "base"),
            sec(".linux", kernel()),
            sec(".initrd", [1; 100]),
            sec(".profile", "ID=default\n"),
            sec(".cmdline", "profile0"),
            sec(".uname", "6.1"),
            sec(".profile", "ID=other\n"),
            sec(".cmdline", "profile1"),
            sec(".initrd", [2; 100]),
            // Sections of other profiles are not looked at at all.
            Sec {
                raw_offset: Some(u32::MAX),
                ..sec(".ucode", [3; 10])
            },
        ]);
        let uki = parse(&img).unwrap();
        assert_eq!(uki.cmdline_text, "profile0");
        assert_eq!(uki.initrd.unwrap().slice(&img).unwrap(), [1; 100]);
        assert_eq!(uki.osrel.unwrap().slice(&img).unwrap(), b"ID=base\n");
        assert_eq!(uki.uname.unwrap().slice(&img).unwrap(), b"6.1");
        assert_eq!(uki.profile.unwrap().slice(&img).unwrap(), b"ID=default\n");
        assert_eq!(uki.ucode, None);

        // An empty section in profile 0 hides the base's, as in the stub.
        let img = image(vec![
            sec(".linux", kernel()),
            sec(".cmdline", "base"),
            sec(".profile", "ID=default\n"),
            sec(".cmdline", ""),
        ]);
        assert_eq!(parse(&img).unwrap().cmdline, None);

        // .linux may come from profile 0, but not only from another profile.
        let img = image(vec![sec(".profile", "ID=0\n"), sec(".linux", kernel())]);
        assert_eq!(parse(&img).unwrap().linux.size, 5000);
        let img = image(vec![
            sec(".profile", "ID=0\n"),
            sec(".profile", "ID=1\n"),
            sec(".linux", kernel()),
        ]);
        assert_malformed(&img, "only in a profile other than the default one");
    }

    #[test]
    fn files_that_are_no_pe_are_not_ukis() {
        let mut elf = vec![0; 4096];
        elf[..4].copy_from_slice(b"\x7fELF");
        let mut far = image(vec![sec(".linux", kernel())]);
        put(&mut far, E_LFANEW, &u32::MAX.to_le_bytes());
        let mut past_end = image(vec![sec(".linux", kernel())]);
        let len = past_end.len() as u32;
        put(&mut past_end, E_LFANEW, &(len - 3).to_le_bytes());
        let mut no_signature = image(vec![sec(".linux", kernel())]);
        no_signature[0x80 + 2] = b'X';
        let inputs: [&[u8]; 8] = [
            b"",
            b"MZ",
            &[0; 4096],
            &elf,
            b"#!/bin/sh\necho not a kernel\n",
            &far,
            &past_end,
            &no_signature,
        ];
        for img in inputs {
            assert!(!is_pe(img));
            assert_not_uki(img);
        }
        // A bzImage without the EFI stub: the boot sector, "HdrS" at 0x202, no "MZ".
        let mut bzimage = vec![0; 0x1000];
        bzimage[0x1fe..0x200].copy_from_slice(&[0x55, 0xaa]);
        bzimage[0x202..0x206].copy_from_slice(b"HdrS");
        assert!(!is_pe(&bzimage[..]));
        assert_not_uki(&bzimage);
    }

    #[test]
    fn a_pe_without_linux_is_not_a_uki() {
        let img = image(vec![
            sec(".text", [0xc3; 10]),
            sec(".data", [1; 10]),
            sec(".cmdline", "quiet"),
            sec(".initrd", [2; 10]),
        ]);
        assert!(is_pe(&img[..]));
        assert_not_uki(&img);
        assert_eq!(
            UkiError::NotUki.to_string(),
            "The kernel image is not a Unified Kernel Image (a PE file with a .linux section)"
        );
    }

    #[test]
    fn an_efi_stub_bzimage_is_not_a_uki() {
        // Laid out as Linux's arch/x86/boot/header.S: PE header at 0x40, an optional header with
        // 6 data directories, the setup header ("HdrS" at 0x202) in the first section, whose
        // data starts at 0x200.
        let mut setup = vec![0; 0x400];
        setup[..2].copy_from_slice(&[0xeb, 0x66]);
        setup[2..6].copy_from_slice(b"HdrS");
        let sections = vec![
            sec(".setup", &setup),
            sec(".reloc", [0; 12]),
            sec(".compat", [1, 8, 0x4c, 0x01, 0, 0, 0, 0]),
            sec(".text", [0x90; 0x2000]),
            // A broken section of its own does not matter: only UKI sections are checked.
            Sec {
                raw_offset: Some(0x7fff_0000),
                ..sec(".data", [0; 16])
            },
        ];
        let pe = Pe {
            e_lfanew: 0x40,
            optional_len: 0xa0,
            ..Pe::new(sections)
        };
        assert!(pe.headers_end() <= 0x200);
        let img = pe.build();
        assert_eq!(&img[0x202..0x206], b"HdrS");
        assert!(is_pe(&img[..]));
        assert_not_uki(&img);
    }

    #[test]
    fn truncated_and_broken_headers() {
        let pe = Pe::new(vec![sec(".linux", kernel())]);
        let img = pe.build();
        // The file ends inside the COFF header (the PE signature is there) or before the
        // optional header's magic.
        assert_malformed(
            &img[..0x80 + 10],
            "the PE headers at 0x80 are cut off by the end of the file (0x8a bytes)",
        );
        assert_malformed(&img[..0x80 + 25], "are cut off by the end of the file");
        // ... or inside the optional header or the section table.
        assert_malformed(&img[..0x80 + 100], "section table (1 entries at 0x188)");
        assert_malformed(
            &img[..pe.headers_end() - 1],
            "extends past the end of the file",
        );

        let mut inside_dos = img.clone();
        put(&mut inside_dos, E_LFANEW, &0x10u32.to_le_bytes());
        put(&mut inside_dos, 0x10, PE_SIGNATURE);
        assert_malformed(
            &inside_dos,
            "e_lfanew 0x10) is inside the 64-byte DOS header",
        );
        // (offset, new value, what the error says)
        let cases: [(usize, u16, &str); 6] = [
            (0x80 + 6, 0, "the PE file has no sections"),
            (0x80 + 6, 97, "claims 97 sections, more than the 96 allowed"),
            (0x80 + 6, u16::MAX, "claims 65535 sections"),
            (0x80 + 24, 0x107, "magic 0x0107) is neither PE32"),
            (0x80 + 20, 1, "optional header (1 bytes"),
            // A huge optional header puts the section table past the end.
            (
                0x80 + 20,
                u16::MAX,
                "the section table (1 entries at 0x10097) extends past the end of the file",
            ),
        ];
        for (at, value, expect) in cases {
            let mut img = img.clone();
            put(&mut img, at, &value.to_le_bytes());
            assert_malformed(&img, expect);
        }
        // 96 sections are fine.
        let mut many: Vec<Sec> = (0..95).map(|_| sec(".pad", [1])).collect();
        many.push(sec(".linux", kernel()));
        assert_eq!(parse(&image(many)).unwrap().linux.size, 5000);
    }

    #[test]
    fn sections_outside_the_file() {
        let img = image(vec![sec(".linux", kernel()), sec(".initrd", [1; 100])]);
        let len = img.len() as u32;
        let cases = [
            (Some(len), None, "the .initrd section (0x64 bytes at offset"),
            (Some(len - 99), None, "extends past the end of the file"),
            (Some(u32::MAX), None, "0x64 bytes at offset 0xffffffff"),
            (None, Some(u32::MAX), "extends past the end of the file"),
        ];
        for (raw_offset, sizes, expect) in cases {
            let img = image(vec![
                sec(".linux", kernel()),
                Sec {
                    raw_offset,
                    raw_size: sizes,
                    virtual_size: sizes,
                    ..sec(".initrd", [1; 100])
                },
            ]);
            assert_malformed(&img, expect);
        }
        // A truncated file: .linux's data is cut.
        let img = image(vec![sec(".initrd", [1; 100]), sec(".linux", kernel())]);
        assert_malformed(
            &img[..img.len() - 0x200],
            "the .linux section (0x1388 bytes at offset 0x400) extends past the end of the file \
             (0x1600 bytes)",
        );
        // Padding past the end of the file does not matter, only the payload.
        let cut = img.len() - (0x1400 - 5000);
        assert_eq!(parse(&img[..cut]).unwrap().linux.size, 5000);
    }

    #[test]
    fn overlapping_sections() {
        // .initrd's data inside .linux's.
        let img = image(vec![
            sec(".linux", kernel()),
            Sec {
                raw_offset: Some(0x600),
                ..sec(".initrd", [1; 100])
            },
        ]);
        assert_malformed(
            &img,
            "the .initrd section (0x64 bytes at offset 0x600) overlaps the .linux section",
        );
        // The same data for two sections.
        let img = image(vec![
            sec(".linux", kernel()),
            Sec {
                raw_offset: Some(0x200),
                ..sec(".uname", "6.1")
            },
        ]);
        assert_malformed(
            &img,
            "the .uname section (0x3 bytes at offset 0x200) overlaps the .linux section",
        );
        // Over the headers, or the DOS header.
        for offset in [0, 0x80, 0x1d7] {
            let img = image(vec![
                sec(".linux", kernel()),
                Sec {
                    raw_offset: Some(offset),
                    ..sec(".cmdline", "quiet")
                },
            ]);
            assert_malformed(&img, "overlaps the PE headers (the first 0x1d8 bytes)");
        }
        let img = image(vec![Sec {
            raw_offset: Some(0),
            ..sec(".linux", kernel())
        }]);
        assert_malformed(
            &img,
            "the .linux section (0x1388 bytes at offset 0x0) overlaps",
        );
        // Touching is not overlapping.
        let img = image(vec![
            sec(".linux", [1; 0x200]),
            sec(".initrd", [2; 0x200]),
            sec(".cmdline", [b'x'; 0x200]),
        ]);
        let uki = parse(&img).unwrap();
        assert_eq!(uki.linux.end(), uki.initrd.unwrap().offset);
        assert_eq!(uki.initrd.unwrap().end(), uki.cmdline.unwrap().offset);
    }

    #[test]
    fn an_empty_linux_is_an_error() {
        for linux in [
            sec(".linux", ""),
            Sec {
                virtual_size: Some(0),
                ..sec(".linux", kernel())
            },
            Sec {
                raw_size: Some(0),
                ..sec(".linux", kernel())
            },
        ] {
            let img = image(vec![linux, sec(".initrd", [1; 10])]);
            assert_malformed(&img, "the .linux section is empty");
        }
    }

    #[test]
    fn text_is_read_up_to_a_limit() {
        let long = MAX_TEXT as usize + 1;
        // A NUL within the limit ends the text wherever the section ends.
        let mut text = vec![b'a'; long];
        text[10] = 0;
        let img = image(vec![sec(".linux", kernel()), sec(".cmdline", &text)]);
        assert_eq!(parse(&img).unwrap().cmdline_text, "a".repeat(10));
        // Exactly MAX_TEXT bytes without a NUL are fine; one more is not.
        let img = image(vec![
            sec(".linux", kernel()),
            sec(".cmdline", vec![b'a'; MAX_TEXT as usize]),
        ]);
        assert_eq!(parse(&img).unwrap().cmdline_text.len(), MAX_TEXT as usize);
        let img = image(vec![
            sec(".linux", kernel()),
            sec(".cmdline", vec![b'a'; long]),
        ]);
        assert_malformed(
            &img,
            "the .cmdline section: its text (0x100001 bytes at offset 0x1600) has no end within \
             the first 1048576 bytes",
        );
        // read_text() reads no more than that whatever the section says, and no text past the
        // file's end.
        let huge = Section {
            offset: 0x1600,
            size: u64::MAX,
        };
        assert!(matches!(
            read_text(&img[..], huge),
            Err(UkiError::Malformed(_))
        ));
        let past = Section {
            offset: img.len() as u64 - 2,
            size: 3,
        };
        assert!(matches!(read_text(&img[..], past), Err(UkiError::Io(_))));
    }

    #[test]
    fn section_slices() {
        let bytes = [1, 2, 3, 4];
        let s = |offset, size| Section { offset, size };
        assert_eq!(s(1, 2).slice(&bytes), Some(&bytes[1..3]));
        assert_eq!(s(4, 0).slice(&bytes), Some(&bytes[4..]));
        assert_eq!(s(3, 2).slice(&bytes), None);
        assert_eq!(s(u64::MAX, 2).slice(&bytes), None);
        assert_eq!(s(2, u64::MAX).slice(&bytes), None);
        assert_eq!(s(u64::MAX, 2).end(), u64::MAX);
        assert_eq!(s(8, 2).range(), 8..10);
        assert_eq!(s(0x10, 0x20).to_string(), "0x20 bytes at offset 0x10");
    }

    /// An image whose reads fail.
    struct Unreadable;

    impl ReadAt for Unreadable {
        fn size_bytes(&self) -> io::Result<u64> {
            Ok(1 << 20)
        }

        fn read_exact_at(&self, _: &mut [u8], _: u64) -> io::Result<()> {
            Err(io::Error::from_raw_os_error(libc::EACCES))
        }
    }

    #[test]
    fn io_errors_keep_their_errno() {
        let err = parse_uki(&Unreadable).unwrap_err();
        assert!(matches!(err, UkiError::Io(_)), "{err:?}");
        assert_eq!(err.errno(), libc::EACCES);
        assert!(
            err.to_string()
                .starts_with("Failed to read the kernel image: ")
        );
        assert!(!is_pe(&Unreadable));
        assert_eq!(
            UkiError::Io(io::ErrorKind::UnexpectedEof.into()).errno(),
            libc::EIO
        );
    }

    fn temp_path(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("rvmspawn-uki-{}-{name}", std::process::id()))
    }

    #[test]
    fn reads_a_file() {
        let path = temp_path("file.efi");
        let img = image(vec![sec(".linux", kernel()), sec(".cmdline", "quiet\n")]);
        File::create(&path).unwrap().write_all(&img).unwrap();
        let file = File::open(&path).unwrap();
        let found = (is_pe(&file), parse_uki(&file));
        std::fs::remove_file(&path).unwrap();
        let (pe, uki) = found;
        assert!(pe);
        let uki = uki.unwrap();
        assert_eq!(uki.linux.slice(&img).unwrap(), kernel());
        assert_eq!(uki.cmdline_text, "quiet");
    }

    /// A UKI made the way systemd's documentation made them before ukify: objcopy adds the
    /// sections to the stub. The stub here is a minimal PE with one `.text` section.
    #[test]
    fn reads_a_uki_made_by_objcopy() {
        let dir = temp_path("objcopy");
        std::fs::create_dir_all(&dir).unwrap();
        let file = |name: &str, data: &[u8]| {
            let path = dir.join(name);
            std::fs::write(&path, data).unwrap();
            path
        };
        let linux = kernel();
        let initrd: Vec<u8> = (0..7000u32).map(|i| (i % 251) as u8).collect();
        let stub = file("stub.efi", &image(vec![sec(".text", [0xc3; 16])]));
        let mut args = Vec::new();
        let parts: [(&str, &[u8], &str); 5] = [
            (".osrel", b"ID=test\n", "0x20000"),
            (".cmdline", b"console=ttyS0 rw\n", "0x30000"),
            (".uname", b"6.1.0-test", "0x40000"),
            (".linux", &linux, "0x2000000"),
            (".initrd", &initrd, "0x3000000"),
        ];
        for (name, data, vma) in parts {
            let path = file(&name[1..], data);
            args.push(format!("--add-section={name}={}", path.display()));
            args.push(format!("--change-section-vma={name}={vma}"));
        }
        let out = dir.join("uki.efi");
        let run = Command::new("objcopy")
            .args(&args)
            .arg(&stub)
            .arg(&out)
            .output();
        let result = run.as_ref().ok().map(|_| std::fs::read(&out));
        std::fs::remove_dir_all(&dir).unwrap();
        let output = match run {
            Ok(output) => output,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                println!("objcopy (binutils) is not installed: skipping this test");
                return;
            }
            Err(e) => panic!("objcopy: {e}"),
        };
        assert!(
            output.status.success(),
            "objcopy failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let img = result.unwrap().unwrap();
        let uki = parse(&img).unwrap();
        let bytes = |s: Option<Section>| s.unwrap().slice(&img).unwrap();
        assert_eq!(bytes(Some(uki.linux)), linux);
        assert_eq!(bytes(uki.initrd), initrd);
        assert_eq!(bytes(uki.osrel), b"ID=test\n");
        assert_eq!(bytes(uki.uname), b"6.1.0-test");
        assert_eq!(uki.cmdline_text, "console=ttyS0 rw");
        assert_eq!(uki.ucode, None);
        assert_eq!(uki.machine, MACHINE_X86_64);
    }

    #[test]
    fn errnos() {
        assert_eq!(UkiError::NotUki.errno(), libc::ENOEXEC);
        assert_eq!(malformed("x").errno(), libc::ENOEXEC);
    }
}
