//! Decompressing a bzImage's payload on the host, so that the ELF vmlinux inside it boots
//! through its PVH entry (as a vmlinux handed to us does) instead of the guest decompressing
//! and relocating itself.
//!
//! The setup header says where the compressed kernel is (Documentation/arch/x86/boot.rst):
//! `setup_sects` at 0x1f1 (0 means 4), and, from boot protocol 2.08 on, `payload_offset` at
//! 0x248 and `payload_length` at 0x24c, relative to the protected-mode code that starts at
//! `(setup_sects + 1) * 512`. The compression is recognised by its magic. Kbuild appends the
//! decompressed size (u32 LE) to every format but gzip, whose own trailer carries it; that
//! size bounds the output, which must match it exactly.
//!
//! Everything here reads a file the user handed us: every offset and size is checked against
//! the file, the output is bounded ([`MAX_EXTRACTED`]), a decoder's memory is bounded, and a
//! corrupt or truncated payload is an error, never a panic (fuzzed: `fuzz/fuzz_targets/bzimage.rs`).
//! The output is streamed into a file, never held whole in memory.
//!
//! The extracted ELF is cached, content-addressed by the SHA-256 of the bzImage, in a directory
//! the caller names; a cache that cannot be written only costs speed (the ELF goes into a memfd).

use std::ffi::CString;
use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// The largest ELF we extract: far above any real kernel (Debian's generic one is 63 MiB).
pub const MAX_EXTRACTED: u64 = 1 << 30;

/// The cache file's name format; bump it when what is cached changes.
const CACHE_FORMAT: &str = "v1";

/// Most memory an XZ or LZMA decoder may take (its dictionary): Linux uses 32 MiB for XZ.
const DECODER_MEM_LIMIT_KIB: u32 = 128 * 1024;

/// Xen's ELF note type that carries the 32-bit PVH entry point.
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

/// Why a bzImage's payload was not extracted. Each is a reason to fall back to the bzImage's
/// own decompressor (the 64-bit boot protocol), not a failure of the boot.
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    /// The setup header is missing, too old or points outside the file.
    #[error("bad setup header: {0}")]
    Header(&'static str),
    /// The payload's magic is not one we know.
    #[error("unknown payload compression (magic {0})")]
    UnknownCompression(String),
    /// A compression we know but do not decompress.
    #[error("{0} payloads are not decompressed by rvmspawn (no maintained pure-Rust decoder)")]
    Unsupported(Compression),
    /// The size trailer is over [`MAX_EXTRACTED`].
    #[error("the payload claims {0} bytes decompressed, over the limit of {MAX_EXTRACTED}")]
    TooLarge(u64),
    /// The compressed data is corrupt or truncated, or decompresses to another size than the
    /// trailer says.
    #[error("corrupt {compression} payload: {reason}")]
    Corrupt {
        /// The payload's compression.
        compression: Compression,
        /// What went wrong.
        reason: String,
    },
    /// The decompressed payload is not an ELF64 with a PVH entry note.
    #[error("the decompressed payload {0}")]
    NotPvh(&'static str),
    /// Reading the kernel or writing the extracted ELF failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: std::io::Error,
    },
}

impl ExtractError {
    fn corrupt(compression: Compression, reason: impl std::fmt::Display) -> ExtractError {
        ExtractError::Corrupt {
            compression,
            reason: reason.to_string(),
        }
    }

    fn io(what: impl Into<String>, source: std::io::Error) -> ExtractError {
        ExtractError::Io {
            what: what.into(),
            source,
        }
    }
}

/// A kernel payload's compression, as Kbuild writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// gzip (`CONFIG_KERNEL_GZIP`).
    Gzip,
    /// bzip2.
    Bzip2,
    /// LZMA ("lzma_alone" header).
    Lzma,
    /// XZ with the x86 BCJ filter and CRC32.
    Xz,
    /// LZO (lzop's format): recognised, not decompressed.
    Lzo,
    /// LZ4, legacy frame format.
    Lz4,
    /// zstd.
    Zstd,
}

impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Compression::Gzip => "gzip",
            Compression::Bzip2 => "bzip2",
            Compression::Lzma => "lzma",
            Compression::Xz => "xz",
            Compression::Lzo => "lzo",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        })
    }
}

impl Compression {
    /// Recognise a payload by its first bytes.
    pub fn from_magic(head: &[u8]) -> Option<Compression> {
        const MAGICS: [(&[u8], Compression); 8] = [
            (b"\x1f\x8b", Compression::Gzip),
            (b"\x1f\x9e", Compression::Gzip),
            (b"\xfd7zXZ\x00", Compression::Xz),
            (b"\x28\xb5\x2f\xfd", Compression::Zstd),
            (b"\x5d\x00\x00", Compression::Lzma),
            (b"\x02\x21\x4c\x18", Compression::Lz4),
            (b"BZh", Compression::Bzip2),
            (b"\x89LZO", Compression::Lzo),
        ];
        MAGICS
            .iter()
            .find(|(magic, _)| head.starts_with(magic))
            .map(|&(_, c)| c)
    }
}

/// Where a bzImage's compressed kernel is, and what it decompresses to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Payload {
    /// Its compression.
    pub compression: Compression,
    /// Offset of the compressed data in the image.
    pub offset: u64,
    /// Length of the compressed data, without Kbuild's size trailer.
    pub len: u64,
    /// The decompressed size (from the trailer), at most [`MAX_EXTRACTED`].
    pub size: u64,
    /// The kernel's command-line limit (`cmdline_size`), without the NUL.
    pub cmdline_size: u32,
}

/// Read exactly `buf.len()` bytes at `offset` of `image`.
fn read_at<R: Read + Seek>(image: &mut R, offset: u64, buf: &mut [u8]) -> Result<(), ExtractError> {
    image
        .seek(SeekFrom::Start(offset))
        .and_then(|_| image.read_exact(buf))
        .map_err(|e| ExtractError::io("Failed to read the kernel", e))
}

fn le32(b: &[u8], at: usize) -> u32 {
    let mut v = [0u8; 4];
    v.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(v)
}

/// Find the payload of the bzImage `image` (`image_len` bytes long) from its setup header,
/// its magic and its size trailer.
pub fn find_payload<R: Read + Seek>(
    image: &mut R,
    image_len: u64,
) -> Result<Payload, ExtractError> {
    // The header fields we read end at 0x250.
    let mut head = [0u8; 0x250];
    if image_len < head.len() as u64 {
        return Err(ExtractError::Header("the file is too short"));
    }
    read_at(image, 0, &mut head)?;
    if head[0x202..0x206] != *b"HdrS" {
        return Err(ExtractError::Header("no HdrS signature"));
    }
    let version = u16::from_le_bytes([head[0x206], head[0x207]]);
    // payload_offset and payload_length exist from 2.08 on; cmdline_size from 2.06.
    if version < 0x0208 {
        return Err(ExtractError::Header(
            "boot protocol older than 2.08 (no payload fields)",
        ));
    }
    let setup_sects = match head[0x1f1] {
        0 => 4,
        n => u64::from(n),
    };
    let protected_mode = (setup_sects + 1) * 512;
    let offset = protected_mode + u64::from(le32(&head, 0x248));
    let length = u64::from(le32(&head, 0x24c));
    let cmdline_size = le32(&head, 0x238);
    if length < 8 || offset.checked_add(length).is_none_or(|end| end > image_len) {
        return Err(ExtractError::Header("the payload lies outside the file"));
    }
    let mut magic = [0u8; 6];
    read_at(image, offset, &mut magic)?;
    let compression = Compression::from_magic(&magic)
        .ok_or_else(|| ExtractError::UnknownCompression(hex(&magic)))?;
    let mut trailer = [0u8; 4];
    read_at(image, offset + length - 4, &mut trailer)?;
    let size = u64::from(u32::from_le_bytes(trailer));
    // gzip's own trailer ends in the size (ISIZE); the others carry Kbuild's after the data.
    let len = match compression {
        Compression::Gzip => length,
        _ => length - 4,
    };
    if size > MAX_EXTRACTED {
        return Err(ExtractError::TooLarge(size));
    }
    if size == 0 {
        return Err(ExtractError::corrupt(compression, "the size trailer is 0"));
    }
    Ok(Payload {
        compression,
        offset,
        len,
        size,
        cmdline_size,
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A writer that refuses to write more than `left` bytes: the decompressed size is bounded by
/// the trailer whatever the compressed stream says.
struct Bounded<W> {
    inner: W,
    left: u64,
}

impl<W: Write> Write for Bounded<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if buf.len() as u64 > self.left {
            return Err(std::io::Error::new(
                std::io::ErrorKind::FileTooLarge,
                "the payload decompresses to more than its size trailer says",
            ));
        }
        let n = self.inner.write(buf)?;
        self.left -= n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Decompress `payload` (its compressed bytes are `input`) into `out`. The output must be
/// exactly `payload.size` bytes.
pub fn decompress<R: Read, W: Write>(
    payload: &Payload,
    input: R,
    out: W,
) -> Result<(), ExtractError> {
    let c = payload.compression;
    let mut out = Bounded {
        inner: BufWriter::with_capacity(1 << 20, out),
        left: payload.size,
    };
    let corrupt = |e: std::io::Error| ExtractError::corrupt(c, e);
    let mut input = input.take(payload.len);
    match c {
        Compression::Gzip => {
            std::io::copy(&mut flate2::read::GzDecoder::new(input), &mut out).map_err(corrupt)?;
        }
        Compression::Bzip2 => {
            std::io::copy(&mut bzip2::read::BzDecoder::new(input), &mut out).map_err(corrupt)?;
        }
        Compression::Xz => {
            let mut xz = lzma_rust2::XzReader::new_mem_limit(input, false, DECODER_MEM_LIMIT_KIB);
            std::io::copy(&mut xz, &mut out).map_err(corrupt)?;
        }
        Compression::Lzma => {
            let mut header = [0u8; 13];
            input.read_exact(&mut header).map_err(corrupt)?;
            let props = header[0];
            let declared = u64::from_le_bytes(header[5..13].try_into().unwrap_or_default());
            if declared != u64::MAX && declared != payload.size {
                return Err(ExtractError::corrupt(
                    c,
                    "the LZMA header and the size trailer disagree",
                ));
            }
            // No match reaches further back than the output is long: a dictionary larger than
            // the output would only cost memory.
            let dict = u64::from(le32(&header, 1))
                .min(payload.size.max(4096))
                .min(u64::from(DECODER_MEM_LIMIT_KIB) * 1024) as u32;
            let mut lzma =
                lzma_rust2::LzmaReader::new_with_props(input, declared, props, dict, None)
                    .map_err(corrupt)?;
            std::io::copy(&mut lzma, &mut out).map_err(corrupt)?;
        }
        Compression::Zstd => {
            let mut zstd = ruzstd::decoding::StreamingDecoder::new(input)
                .map_err(|e| ExtractError::corrupt(c, e))?;
            std::io::copy(&mut zstd, &mut out).map_err(corrupt)?;
        }
        Compression::Lz4 => lz4_legacy(&mut input, &mut out, payload.size).map_err(corrupt)?,
        Compression::Lzo => return Err(ExtractError::Unsupported(c)),
    }
    out.flush().map_err(corrupt)?;
    if out.left != 0 {
        return Err(ExtractError::corrupt(
            c,
            format!(
                "{} bytes decompressed, the size trailer says {}",
                payload.size - out.left,
                payload.size
            ),
        ));
    }
    Ok(())
}

/// LZ4's legacy frame format, which Linux compresses its kernel with (`lz4 -l`): the magic
/// 0x184C2102, then blocks, each a little-endian u32 compressed size and that many bytes,
/// each decompressing to at most 8 MiB; a repeated magic starts another frame.
///
/// Hand-written because lz4_flex (the maintained pure-Rust LZ4) decodes blocks and the modern
/// frame format only, not this legacy framing; the block decoding is lz4_flex's.
fn lz4_legacy<R: Read, W: Write>(input: &mut R, out: &mut W, size: u64) -> std::io::Result<()> {
    const MAGIC: u32 = 0x184C_2102;
    const BLOCK_MAX: usize = 8 << 20;
    let bad = |why: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, why.to_owned());
    let mut word = [0u8; 4];
    input.read_exact(&mut word)?;
    if u32::from_le_bytes(word) != MAGIC {
        return Err(bad("no LZ4 legacy magic"));
    }
    let block_max = BLOCK_MAX.min(usize::try_from(size).unwrap_or(BLOCK_MAX));
    let compressed_max = lz4_flex::block::get_maximum_output_size(BLOCK_MAX);
    let mut compressed = Vec::new();
    let mut block = vec![0u8; block_max];
    loop {
        // The end of the input ends the stream (the size trailer was cut off by the caller).
        let mut got = 0;
        while got < 4 {
            match input.read(&mut word[got..])? {
                0 if got == 0 => return Ok(()),
                0 => return Err(bad("truncated LZ4 block size")),
                n => got += n,
            }
        }
        let len = u32::from_le_bytes(word);
        if len == MAGIC {
            continue;
        }
        let len = len as usize;
        if len > compressed_max {
            return Err(bad("LZ4 block larger than an 8 MiB block can compress to"));
        }
        compressed.resize(len, 0);
        input.read_exact(&mut compressed)?;
        let n = lz4_flex::block::decompress_into(&compressed, &mut block)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        out.write_all(&block[..n])?;
    }
}

/// Find the PVH entry point (the Xen `XEN_ELFNOTE_PHYS32_ENTRY` note) of the ELF64 `elf`,
/// `len` bytes long, reading only its headers and notes.
///
/// Hand-written because linux-loader finds the note only while loading the whole ELF into
/// guest memory; this cheap check decides whether an extracted (or cached) ELF is usable
/// before anything is loaded.
pub fn pvh_entry<R: Read + Seek>(elf: &mut R, len: u64) -> Result<u32, ExtractError> {
    const PT_NOTE: u32 = 4;
    const PHDR_SIZE: usize = 56;
    const NOTES_MAX: u64 = 1 << 20;
    let mut ehdr = [0u8; 64];
    if len < ehdr.len() as u64 {
        return Err(ExtractError::NotPvh("is too short for an ELF64"));
    }
    read_at(elf, 0, &mut ehdr)?;
    // Little-endian ELF64.
    if ehdr[..4] != *b"\x7fELF" || ehdr[4] != 2 || ehdr[5] != 1 {
        return Err(ExtractError::NotPvh("is not a little-endian ELF64"));
    }
    let phoff = u64::from_le_bytes(ehdr[0x20..0x28].try_into().unwrap_or_default());
    let phentsize = usize::from(u16::from_le_bytes([ehdr[0x36], ehdr[0x37]]));
    let phnum = u64::from(u16::from_le_bytes([ehdr[0x38], ehdr[0x39]]));
    if phentsize < PHDR_SIZE
        || phoff
            .checked_add(phnum * phentsize as u64)
            .is_none_or(|end| end > len)
    {
        return Err(ExtractError::NotPvh(
            "has its program headers outside the file",
        ));
    }
    let mut phdr = [0u8; PHDR_SIZE];
    for i in 0..phnum {
        read_at(elf, phoff + i * phentsize as u64, &mut phdr)?;
        if le32(&phdr, 0) != PT_NOTE {
            continue;
        }
        let offset = u64::from_le_bytes(phdr[0x08..0x10].try_into().unwrap_or_default());
        let size = u64::from_le_bytes(phdr[0x20..0x28].try_into().unwrap_or_default());
        if size > NOTES_MAX || offset.checked_add(size).is_none_or(|end| end > len) {
            return Err(ExtractError::NotPvh("has a note segment outside the file"));
        }
        let mut notes = vec![0u8; size as usize];
        read_at(elf, offset, &mut notes)?;
        if let Some(entry) = find_pvh_note(&notes) {
            return Ok(entry);
        }
    }
    Err(ExtractError::NotPvh("has no PVH entry note"))
}

/// The PVH entry in one note segment's notes, if there.
fn find_pvh_note(mut notes: &[u8]) -> Option<u32> {
    let align4 = |n: u32| (n as usize).checked_add(3).map(|n| n & !3);
    while notes.len() >= 12 {
        let namesz = le32(notes, 0);
        let descsz = le32(notes, 4);
        let kind = le32(notes, 8);
        let name_end = 12usize.checked_add(align4(namesz)?)?;
        let desc_end = name_end.checked_add(align4(descsz)?)?;
        let name = notes.get(12..12 + namesz as usize)?;
        let desc = notes.get(name_end..name_end + descsz as usize)?;
        if name == b"Xen\0" && kind == XEN_ELFNOTE_PHYS32_ENTRY && desc.len() >= 4 {
            return Some(le32(desc, 0));
        }
        notes = notes.get(desc_end..)?;
    }
    None
}

/// A window of a file (a UKI's `.linux` section, or a whole bzImage) read with `pread`, so
/// that several readers can share the file.
pub struct Window<'a> {
    file: &'a File,
    start: u64,
    len: u64,
    pos: u64,
}

impl<'a> Window<'a> {
    /// The `len` bytes at `start` of `file`.
    pub fn new(file: &'a File, start: u64, len: u64) -> Window<'a> {
        Window {
            file,
            start,
            len,
            pos: 0,
        }
    }
}

impl Read for Window<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.len.saturating_sub(self.pos);
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.start + self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for Window<'_> {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        let to = match pos {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
        };
        self.pos = to.ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "seek before the start")
        })?;
        Ok(self.pos)
    }
}

/// What became of the cache for one extraction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheUse {
    /// The cached ELF was valid and used.
    Hit(PathBuf),
    /// Extracted and stored in the cache.
    Stored(PathBuf),
    /// A cached ELF was invalid; extracted again and replaced.
    Replaced(PathBuf),
    /// No cache was usable (none given, or it could not be written: the reason): extracted
    /// into a memfd.
    Memory(String),
}

impl std::fmt::Display for CacheUse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CacheUse::Hit(p) => write!(f, "{} (cache hit)", p.display()),
            CacheUse::Stored(p) => write!(f, "{} (cache miss, stored)", p.display()),
            CacheUse::Replaced(p) => write!(f, "{} (invalid cache entry replaced)", p.display()),
            CacheUse::Memory(why) => write!(f, "memory (not cached: {why})"),
        }
    }
}

/// An extracted ELF vmlinux, ready to load.
#[derive(Debug)]
pub struct Extracted {
    /// The ELF, open for reading.
    pub elf: File,
    /// Its size.
    pub size: u64,
    /// Its PVH entry point.
    pub entry: u32,
    /// Where it came from.
    pub payload: Payload,
    /// How the cache was used.
    pub cache: CacheUse,
}

/// Extract the ELF vmlinux of the bzImage `image` (its bytes are the window of a file),
/// through the cache in `cache_dir` when one is given.
pub fn extract(
    image: &mut Window<'_>,
    cache_dir: Option<&Path>,
) -> Result<Extracted, ExtractError> {
    let payload = find_payload(image, image.len)?;
    if payload.compression == Compression::Lzo {
        return Err(ExtractError::Unsupported(Compression::Lzo));
    }
    let Some(dir) = cache_dir else {
        return to_memfd(image, payload, "no cache directory".into());
    };
    if let Err(why) = cache_dir_usable(dir) {
        return to_memfd(image, payload, why);
    }
    let digest = digest(image, dir, SETTLED)?;
    let path = dir.join(format!("vmlinux-{CACHE_FORMAT}-{digest}.elf"));
    let mut replacing = false;
    match File::open(&path) {
        Ok(mut f) => match validate(&mut f, payload.size) {
            Ok(entry) => {
                // Used now: the pruning below keeps the most recently used entries. Best
                // effort: an entry whose time cannot be set is only pruned sooner.
                let _ = f.set_modified(std::time::SystemTime::now());
                return Ok(Extracted {
                    elf: f,
                    size: payload.size,
                    entry,
                    payload,
                    cache: CacheUse::Hit(path),
                });
            }
            Err(_) => replacing = true,
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return to_memfd(image, payload, format!("{}: {e}", path.display())),
    }
    match store(image, &payload, dir, &path) {
        Ok((elf, entry)) => {
            prune(dir, std::time::SystemTime::now());
            Ok(Extracted {
                elf,
                size: payload.size,
                entry,
                payload,
                cache: if replacing {
                    CacheUse::Replaced(path)
                } else {
                    CacheUse::Stored(path)
                },
            })
        }
        // A payload that cannot be extracted fails the same way in memory.
        Err(e @ (ExtractError::Corrupt { .. } | ExtractError::NotPvh(_))) => Err(e),
        Err(e) => to_memfd(image, payload, e.to_string()),
    }
}

/// How many extracted kernels the cache keeps (53-66 MiB each for Debian's): the most recently
/// used, by the mtime a hit renews.
pub const CACHE_KEEP: usize = 8;

/// How many digest index entries (`stat-…`, a few bytes each, one per kernel file seen) the
/// cache keeps, the most recently written.
const INDEX_KEEP: usize = 64;

/// How old a temporary file of an extraction must be to be taken for one a killed run left
/// behind (an extraction takes seconds; the name's PID could have been reused).
const STALE_TMP: std::time::Duration = std::time::Duration::from_secs(3600);

/// Keep the cache bounded, after an entry was added: the [`CACHE_KEEP`] most recently used
/// kernels and the [`INDEX_KEEP`] newest digest index entries stay, the rest go, and so do
/// temporary files older than [`STALE_TMP`]. Best effort: whatever cannot be listed or removed
/// (another run may be pruning too) stays. A run that still boots a removed kernel keeps it
/// open, which unlinking does not disturb.
fn prune(dir: &Path, now: std::time::SystemTime) {
    let Ok(list) = std::fs::read_dir(dir) else {
        return;
    };
    let kernel_prefix = format!("vmlinux-{CACHE_FORMAT}-");
    let index_prefix = format!("stat-{CACHE_FORMAT}-");
    let mut kernels = Vec::new();
    let mut index = Vec::new();
    for e in list.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        let Ok(meta) = e.metadata() else { continue };
        if !meta.is_file() {
            continue;
        }
        let mtime = meta.modified().unwrap_or(std::time::UNIX_EPOCH);
        if name.starts_with(&kernel_prefix) && name.ends_with(".elf") {
            kernels.push((mtime, e.path()));
        } else if name.starts_with(&index_prefix) {
            index.push((mtime, e.path()));
        } else if name.starts_with('.')
            && name.ends_with(".tmp")
            && now.duration_since(mtime).is_ok_and(|age| age >= STALE_TMP)
        {
            let _ = std::fs::remove_file(e.path());
        }
    }
    for (mut list, keep) in [(kernels, CACHE_KEEP), (index, INDEX_KEEP)] {
        list.sort_by_key(|e| std::cmp::Reverse(e.0)); // newest first
        for (_, path) in list.iter().skip(keep) {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Create the cache directory (0700) if missing, and check that nobody else can put files in
/// it: a cache entry is booted as found, so the directory must be ours and closed to others.
fn cache_dir_usable(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("Failed to create {}: {e}", dir.display()))?;
    let meta = std::fs::metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    // SAFETY: geteuid() has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    if meta.uid() != uid {
        return Err(format!(
            "{} is owned by uid {}, not {uid}",
            dir.display(),
            meta.uid()
        ));
    }
    if meta.mode() & (libc::S_IWGRP | libc::S_IWOTH) != 0 {
        return Err(format!("{} is writable by group or others", dir.display()));
    }
    Ok(())
}

/// A cached ELF is used when it has the size the trailer promises and a PVH note.
fn validate(f: &mut File, size: u64) -> Result<u32, ExtractError> {
    let len = f
        .metadata()
        .map_err(|e| ExtractError::io("Failed to stat the cached kernel", e))?
        .len();
    if len != size {
        return Err(ExtractError::NotPvh("has the wrong size"));
    }
    pvh_entry(f, len)
}

/// How long ago a kernel file must have last changed for its digest to be remembered by its
/// metadata ([`digest`]). File timestamps come from a coarse clock (a jiffy, up to 10 ms), so
/// a file rewritten within the same tick as it was hashed could keep its timestamps; one that
/// has been left alone for this long cannot change again without new ones.
const SETTLED: std::time::Duration = std::time::Duration::from_secs(2);

/// The SHA-256 of the bzImage in `image`, remembered by the file's metadata.
///
/// Hashing the whole bzImage on every boot is the one cost a cache hit would still pay (10 ms
/// for Debian's 14 MiB cloud kernel natively, about 260 ms in the emulated test host). So, as
/// git's index does for its work tree, the digest is kept in the cache directory under the
/// file's device, inode and window, with its size, mtime and ctime: a file whose metadata are
/// unchanged is taken to be unchanged. Any write to the file moves its ctime, which nobody can
/// set back (short of the clock). A digest is remembered only for a file that had settled
/// (last changed [`SETTLED`] before it was hashed); everything here is best effort: an entry
/// that cannot be read or written only costs the hash.
fn digest(
    image: &mut Window<'_>,
    dir: &Path,
    settled: std::time::Duration,
) -> Result<String, ExtractError> {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = image.file.metadata() else {
        return sha256(image);
    };
    let key = dir.join(format!(
        "stat-{CACHE_FORMAT}-{:x}-{}-{}-{}",
        meta.dev(),
        meta.ino(),
        image.start,
        image.len
    ));
    let stamp = format!(
        "{} {}.{:09} {}.{:09}",
        meta.size(),
        meta.mtime(),
        meta.mtime_nsec(),
        meta.ctime(),
        meta.ctime_nsec()
    );
    if let Ok(text) = std::fs::read_to_string(&key)
        && let Some((s, d)) = text.trim_end().rsplit_once(' ')
        && s == stamp
        && d.len() == 64
        && d.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return Ok(d.to_owned());
    }
    let hashed_at = std::time::SystemTime::now();
    let d = sha256(image)?;
    // The later of mtime and ctime (ctime moves with every write, so it is normally that one).
    let time = |secs: i64, nsecs: i64| {
        std::time::Duration::new(
            u64::try_from(secs).unwrap_or(0),
            u32::try_from(nsecs).unwrap_or(0),
        )
    };
    let changed = std::time::UNIX_EPOCH
        + time(meta.mtime(), meta.mtime_nsec()).max(time(meta.ctime(), meta.ctime_nsec()));
    if hashed_at
        .duration_since(changed)
        .is_ok_and(|age| age >= settled)
    {
        let tmp = dir.join(format!(".stat.{}.tmp", std::process::id()));
        if std::fs::write(&tmp, format!("{stamp} {d}\n"))
            .and_then(|_| std::fs::rename(&tmp, &key))
            .is_err()
        {
            let _ = std::fs::remove_file(&tmp);
        }
    }
    Ok(d)
}

fn sha256<R: Read + Seek>(image: &mut R) -> Result<String, ExtractError> {
    let read_err = |e| ExtractError::io("Failed to read the kernel", e);
    image.seek(SeekFrom::Start(0)).map_err(read_err)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = image.read(&mut buf).map_err(read_err)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

/// Decompress into `out` and check the result.
fn extract_into<R: Read + Seek>(
    image: &mut R,
    payload: &Payload,
    out: &mut File,
) -> Result<u32, ExtractError> {
    image
        .seek(SeekFrom::Start(payload.offset))
        .map_err(|e| ExtractError::io("Failed to read the kernel", e))?;
    decompress(payload, &mut *image, &mut *out)?;
    pvh_entry(out, payload.size)
}

/// Extract into a temporary file in the cache directory and rename it into place, so that a
/// reader never sees a partial file.
fn store<R: Read + Seek>(
    image: &mut R,
    payload: &Payload,
    dir: &Path,
    path: &Path,
) -> Result<(File, u32), ExtractError> {
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("vmlinux"),
        std::process::id()
    ));
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| ExtractError::io(format!("Failed to create {}", tmp.display()), e))?;
    let result = extract_into(image, payload, &mut f).and_then(|entry| {
        f.sync_all()
            .and_then(|_| std::fs::rename(&tmp, path))
            .map_err(|e| ExtractError::io(format!("Failed to write {}", path.display()), e))?;
        Ok(entry)
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    Ok((f, result?))
}

/// Extract into an anonymous memory file: the ELF is then read from it like from a file.
fn to_memfd<R: Read + Seek>(
    image: &mut R,
    payload: Payload,
    why: String,
) -> Result<Extracted, ExtractError> {
    let name = CString::new("rvmspawn-vmlinux").unwrap_or_default();
    // SAFETY: memfd_create reads the NUL-terminated name and returns a new fd or -1.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(ExtractError::io(
            "Failed to create a memfd for the kernel",
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: fd was just created and is owned by nothing else.
    let mut elf = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    let entry = extract_into(image, &payload, &mut elf)?;
    Ok(Extracted {
        elf,
        size: payload.size,
        entry,
        payload,
        cache: CacheUse::Memory(why),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Cursor;

    /// Where the fixture ELF's PVH note says to enter.
    pub const FIXTURE_ENTRY: u32 = 0x0100_0040;

    /// A small ELF64 vmlinux: one loadable segment at 16 MiB and a PVH note (or another note
    /// when `pvh` is false). Its body is compressible but not trivially so.
    pub fn fixture_elf(pvh: bool) -> Vec<u8> {
        let body: Vec<u8> = (0..192 * 1024u32)
            .flat_map(|i| format!("{:08x} ", i.wrapping_mul(2_654_435_761) >> 20).into_bytes())
            .take(300 * 1024)
            .collect();
        let mut elf = vec![0u8; 0x1000];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2; // ELFCLASS64
        elf[5] = 1; // little-endian
        elf[6] = 1; // EV_CURRENT
        elf[0x10..0x12].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        elf[0x12..0x14].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
        elf[0x14..0x18].copy_from_slice(&1u32.to_le_bytes());
        elf[0x18..0x20].copy_from_slice(&0x0100_0000u64.to_le_bytes()); // e_entry
        elf[0x20..0x28].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
        elf[0x34..0x36].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
        elf[0x36..0x38].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
        elf[0x38..0x3a].copy_from_slice(&2u16.to_le_bytes()); // e_phnum
        let phdr = |kind: u32, offset: u64, addr: u64, size: u64| {
            let mut p = Vec::with_capacity(56);
            p.extend_from_slice(&kind.to_le_bytes());
            p.extend_from_slice(&5u32.to_le_bytes()); // R+X
            p.extend_from_slice(&offset.to_le_bytes());
            p.extend_from_slice(&addr.to_le_bytes()); // p_vaddr
            p.extend_from_slice(&addr.to_le_bytes()); // p_paddr
            p.extend_from_slice(&size.to_le_bytes()); // p_filesz
            p.extend_from_slice(&size.to_le_bytes()); // p_memsz
            p.extend_from_slice(&4u64.to_le_bytes()); // p_align
            p
        };
        let load = phdr(1, 0x1000, 0x0100_0000, body.len() as u64);
        let note = phdr(4, 0x200, 0, 40);
        elf[64..120].copy_from_slice(&load);
        elf[120..176].copy_from_slice(&note);
        // Another note first, then Xen's: the search walks past the first.
        let mut notes = Vec::new();
        notes.extend_from_slice(&4u32.to_le_bytes());
        notes.extend_from_slice(&4u32.to_le_bytes());
        notes.extend_from_slice(&3u32.to_le_bytes());
        notes.extend_from_slice(b"GNU\0");
        notes.extend_from_slice(&[1, 2, 3, 4]);
        notes.extend_from_slice(&4u32.to_le_bytes());
        notes.extend_from_slice(&4u32.to_le_bytes());
        let kind = if pvh { XEN_ELFNOTE_PHYS32_ENTRY } else { 17 };
        notes.extend_from_slice(&kind.to_le_bytes());
        notes.extend_from_slice(b"Xen\0");
        notes.extend_from_slice(&FIXTURE_ENTRY.to_le_bytes());
        elf[0x200..0x200 + notes.len()].copy_from_slice(&notes);
        elf.extend_from_slice(&body);
        elf
    }

    /// `data` compressed as Kbuild would (without the size trailer).
    pub fn compress(c: Compression, data: &[u8]) -> Vec<u8> {
        match c {
            Compression::Gzip => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            Compression::Bzip2 => {
                let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::best());
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            Compression::Xz => {
                // As Linux: the x86 BCJ filter before LZMA2, and CRC32.
                let mut o = lzma_rust2::XzOptions::with_preset(6);
                o.set_check_sum_type(lzma_rust2::CheckType::Crc32);
                o.prepend_pre_filter(lzma_rust2::FilterType::BcjX86, 0);
                let mut e = lzma_rust2::XzWriter::new(Vec::new(), o).unwrap();
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            Compression::Lzma => {
                // As `lzma -9` reading a pipe: the size unknown, an end marker.
                let o = lzma_rust2::LzmaOptions::with_preset(6);
                let mut e = lzma_rust2::LzmaWriter::new_use_header(Vec::new(), &o, None).unwrap();
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            Compression::Zstd => {
                ruzstd::encoding::compress_to_vec(data, ruzstd::encoding::CompressionLevel::Fastest)
            }
            Compression::Lz4 => {
                // Small blocks, so that the fixture has several.
                let mut out = 0x184C_2102u32.to_le_bytes().to_vec();
                for block in data.chunks(64 * 1024) {
                    let c = lz4_flex::block::compress(block);
                    out.extend_from_slice(&(c.len() as u32).to_le_bytes());
                    out.extend_from_slice(&c);
                }
                out
            }
            Compression::Lzo => {
                let mut out = b"\x89LZO\x00\r\n\x1a\n".to_vec();
                out.extend_from_slice(data);
                out
            }
        }
    }

    /// A bzImage around `payload` (already with its trailer): setup header, protocol 2.15.
    pub fn bzimage(payload: &[u8]) -> Vec<u8> {
        let setup_sects = 1u8;
        let pm = (usize::from(setup_sects) + 1) * 512;
        let payload_offset = 0x100;
        let mut img = vec![0u8; pm + payload_offset];
        img[0x1f1] = setup_sects;
        img[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
        img[0x202..0x206].copy_from_slice(b"HdrS");
        img[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
        img[0x211] = 1; // LOADED_HIGH
        img[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes()); // code32_start
        img[0x238..0x23c].copy_from_slice(&2047u32.to_le_bytes());
        img[0x248..0x24c].copy_from_slice(&(payload_offset as u32).to_le_bytes());
        img[0x24c..0x250].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        img.extend_from_slice(payload);
        // Something after the payload, as a real image has.
        img.extend_from_slice(&[0xcc; 64]);
        img
    }

    /// The payload with Kbuild's trailer: gzip carries its size itself.
    pub fn with_trailer(c: Compression, mut compressed: Vec<u8>, size: u32) -> Vec<u8> {
        if c != Compression::Gzip {
            compressed.extend_from_slice(&size.to_le_bytes());
        }
        compressed
    }

    pub const ALL: [Compression; 6] = [
        Compression::Gzip,
        Compression::Bzip2,
        Compression::Xz,
        Compression::Lzma,
        Compression::Zstd,
        Compression::Lz4,
    ];

    /// A bzImage around `elf` compressed with `c`, as Kbuild builds one.
    pub fn bzimage_of(c: Compression, elf: &[u8]) -> Vec<u8> {
        bzimage(&with_trailer(c, compress(c, elf), elf.len() as u32))
    }

    /// A bzImage around the fixture ELF, and that ELF.
    pub fn fixture(c: Compression) -> (Vec<u8>, Vec<u8>) {
        let elf = fixture_elf(true);
        (bzimage_of(c, &elf), elf)
    }

    /// A file holding `bytes`, in a directory of the test's own.
    pub fn file_with(dir: &Path, name: &str, bytes: &[u8]) -> File {
        std::fs::create_dir_all(dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        File::open(path).unwrap()
    }

    /// A new directory of its own for each call (tests run in parallel).
    pub fn test_dir(name: &str) -> PathBuf {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "rvmspawn-extract-{name}-{}-{n}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn run(img: &[u8], cache: Option<&Path>) -> Result<Extracted, ExtractError> {
        let dir = test_dir("run");
        let f = file_with(&dir, "bzImage", img);
        let r = extract(&mut Window::new(&f, 0, img.len() as u64), cache);
        std::fs::remove_dir_all(&dir).unwrap();
        r
    }

    fn contents(f: &mut File) -> Vec<u8> {
        let mut v = Vec::new();
        f.seek(SeekFrom::Start(0)).unwrap();
        f.read_to_end(&mut v).unwrap();
        v
    }

    #[test]
    fn every_format_extracts_to_the_elf() {
        for c in ALL {
            let (img, elf) = fixture(c);
            let mut x = run(&img, None).unwrap_or_else(|e| panic!("{c}: {e}"));
            assert_eq!(x.payload.compression, c);
            assert_eq!(x.entry, FIXTURE_ENTRY, "{c}");
            assert_eq!(x.payload.cmdline_size, 2047);
            assert!(matches!(x.cache, CacheUse::Memory(_)), "{c}");
            assert!(
                contents(&mut x.elf) == elf,
                "{c}: the extracted ELF differs"
            );
        }
    }

    #[test]
    fn lzo_is_recognised_and_refused() {
        let img = bzimage_of(Compression::Lzo, &fixture_elf(true));
        let e = run(&img, None).unwrap_err();
        assert!(
            matches!(e, ExtractError::Unsupported(Compression::Lzo)),
            "{e}"
        );
    }

    #[test]
    fn corrupt_payloads_are_refused() {
        for c in ALL {
            let (img, _) = fixture(c);
            let start = 1024 + 0x100;
            let len = img.len() - 64 - start;
            // Garbage after the magic, the trailer kept.
            let mut bad = img.clone();
            for b in &mut bad[start + 8..start + len - 8] {
                *b = 0xa5;
            }
            assert!(run(&bad, None).is_err(), "{c}: garbage accepted");
            // Cut in the middle (the header's length too).
            let mut cut = img[..start + len / 2].to_vec();
            cut[0x24c..0x250].copy_from_slice(&((len / 2) as u32).to_le_bytes());
            assert!(run(&cut, None).is_err(), "{c}: truncation accepted");
            // Every prefix length of the payload's start, with the header pointing past the
            // end of the file.
            for keep in [0, 3, 7, 100] {
                let short = img[..start + keep].to_vec();
                let e = run(&short, None).unwrap_err();
                assert!(matches!(e, ExtractError::Header(_)), "{c}: {e}");
            }
        }
    }

    #[test]
    fn the_size_trailer_bounds_the_output() {
        for c in ALL {
            let elf = fixture_elf(true);
            let compressed = compress(c, &elf);
            // A trailer over the limit is refused before decompressing.
            if c != Compression::Gzip {
                let img = bzimage(&with_trailer(c, compressed.clone(), u32::MAX));
                let e = run(&img, None).unwrap_err();
                assert!(matches!(e, ExtractError::TooLarge(_)), "{c}: {e}");
            }
            // A trailer smaller than the output: no more is written than it says.
            let mut payload = with_trailer(c, compressed, elf.len() as u32 - 1);
            if c == Compression::Gzip {
                let n = payload.len();
                payload[n - 4..].copy_from_slice(&(elf.len() as u32 - 1).to_le_bytes());
            }
            let e = run(&bzimage(&payload), None).unwrap_err();
            assert!(matches!(e, ExtractError::Corrupt { .. }), "{c}: {e}");
        }
    }

    #[test]
    fn an_elf_without_a_pvh_note_is_refused() {
        let img = bzimage_of(Compression::Lz4, &fixture_elf(false));
        let e = run(&img, None).unwrap_err();
        assert!(matches!(e, ExtractError::NotPvh(_)), "{e}");
    }

    #[test]
    fn headers_that_lie_are_refused() {
        let (img, _) = fixture(Compression::Lz4);
        let mut old = img.clone();
        old[0x206..0x208].copy_from_slice(&0x0207u16.to_le_bytes());
        assert!(matches!(run(&old, None), Err(ExtractError::Header(_))));
        let mut far = img.clone();
        far[0x248..0x24c].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(run(&far, None), Err(ExtractError::Header(_))));
        let mut unknown = img;
        unknown[1024 + 0x100] = 0x42;
        assert!(matches!(
            run(&unknown, None),
            Err(ExtractError::UnknownCompression(_))
        ));
        assert!(matches!(
            find_payload(&mut Cursor::new(vec![0u8; 100]), 100),
            Err(ExtractError::Header(_))
        ));
    }

    #[test]
    fn the_cache_is_used_checked_and_optional() {
        let dir = test_dir("cache");
        let cache = dir.join("cache/rvmspawn");
        let (img, elf) = fixture(Compression::Zstd);
        // Miss: extracted and stored, the directory created 0700.
        let mut x = run(&img, Some(&cache)).unwrap();
        let CacheUse::Stored(path) = x.cache.clone() else {
            panic!("not stored: {:?}", x.cache)
        };
        assert!(contents(&mut x.elf) == elf);
        assert_eq!(std::fs::read(&path).unwrap(), elf);
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        assert!(
            name.starts_with("vmlinux-v1-") && name.ends_with(".elf"),
            "{name}"
        );
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&cache).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o700);
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 1);
        // Hit: the same file, untouched.
        let x = run(&img, Some(&cache)).unwrap();
        assert_eq!(x.cache, CacheUse::Hit(path.clone()));
        // Another kernel gets another entry.
        let (other, _) = fixture(Compression::Gzip);
        let x = run(&other, Some(&cache)).unwrap();
        assert!(matches!(x.cache, CacheUse::Stored(ref p) if *p != path));
        // A corrupt entry (wrong size, or no PVH note) is replaced.
        std::fs::write(&path, &elf[..elf.len() - 1]).unwrap();
        let mut x = run(&img, Some(&cache)).unwrap();
        assert_eq!(x.cache, CacheUse::Replaced(path.clone()));
        assert!(contents(&mut x.elf) == elf);
        std::fs::write(&path, &fixture_elf(false)[..elf.len()]).unwrap();
        let x = run(&img, Some(&cache)).unwrap();
        assert_eq!(x.cache, CacheUse::Replaced(path.clone()));
        assert_eq!(std::fs::read(&path).unwrap(), elf);
        // A cache that cannot be created (a file is in the way): extracted into memory.
        let blocked = dir.join("file");
        std::fs::write(&blocked, b"").unwrap();
        let mut x = run(&img, Some(&blocked.join("rvmspawn"))).unwrap();
        assert!(
            matches!(x.cache, CacheUse::Memory(ref why) if why.contains("file")),
            "{:?}",
            x.cache
        );
        assert!(contents(&mut x.elf) == elf);
        // A directory others can write to is not trusted.
        let open = dir.join("open");
        std::fs::DirBuilder::new()
            .mode(0o777)
            .create(&open)
            .unwrap();
        std::fs::set_permissions(&open, std::os::unix::fs::PermissionsExt::from_mode(0o777))
            .unwrap();
        let x = run(&img, Some(&open)).unwrap();
        assert!(
            matches!(x.cache, CacheUse::Memory(ref why) if why.ends_with("is writable by group or others")),
            "{:?}",
            x.cache
        );
        assert_eq!(std::fs::read_dir(&open).unwrap().count(), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_cache_keeps_the_most_recently_used_kernels_and_clears_stale_temporary_files() {
        use std::time::{Duration, SystemTime};
        let dir = test_dir("prune");
        let cache = dir.join("cache");
        let ago = |secs| SystemTime::now() - Duration::from_secs(secs);
        let set_mtime = |path: &Path, t: SystemTime| {
            File::options()
                .write(true)
                .open(path)
                .unwrap()
                .set_modified(t)
                .unwrap()
        };
        // Kernel A, stored long ago.
        let (a, _) = fixture(Compression::Lz4);
        let CacheUse::Stored(a_path) = run(&a, Some(&cache)).unwrap().cache else {
            panic!("A not stored")
        };
        set_mtime(&a_path, ago(10_000));
        // Entries of CACHE_KEEP other kernels, all used after A, F0 the least recently.
        let others: Vec<PathBuf> = (0..CACHE_KEEP)
            .map(|i| {
                let p = cache.join(format!("vmlinux-v1-{:064x}.elf", i));
                std::fs::write(&p, b"an older kernel").unwrap();
                set_mtime(&p, ago(5_000 - 10 * i as u64));
                p
            })
            .collect();
        // Temporary files of extractions: one a killed run left two hours ago, one running now.
        let stale = cache.join(".vmlinux-v1-0.elf.1.tmp");
        let running = cache.join(".vmlinux-v1-1.elf.2.tmp");
        std::fs::write(&stale, b"").unwrap();
        std::fs::write(&running, b"").unwrap();
        set_mtime(&stale, ago(7_200));
        // A hit makes A the most recently used.
        assert!(matches!(
            run(&a, Some(&cache)).unwrap().cache,
            CacheUse::Hit(_)
        ));
        // Kernel B is stored: CACHE_KEEP + 2 entries, so the two least recently used go.
        let (b, _) = fixture(Compression::Gzip);
        let CacheUse::Stored(b_path) = run(&b, Some(&cache)).unwrap().cache else {
            panic!("B not stored")
        };
        assert!(a_path.exists(), "the kernel just used was pruned");
        assert!(b_path.exists());
        assert!(
            !others[0].exists() && !others[1].exists(),
            "nothing was pruned"
        );
        assert!(others[2..].iter().all(|p| p.exists()));
        assert!(!stale.exists(), "a stale temporary file is left");
        assert!(running.exists(), "a running extraction's file was removed");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_digest_is_remembered_by_the_files_metadata_and_forgotten_when_it_changes() {
        let dir = test_dir("digest");
        let cache = dir.join("cache");
        std::fs::create_dir_all(&cache).unwrap();
        let (img, _) = fixture(Compression::Zstd);
        let path = dir.join("bzImage");
        std::fs::write(&path, &img).unwrap();
        let real = sha256(&mut Cursor::new(&img)).unwrap();
        let entries = |d: &Path| {
            std::fs::read_dir(d)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect::<Vec<_>>()
        };
        // A file changed just now is hashed, and not remembered.
        let f = File::open(&path).unwrap();
        let mut w = Window::new(&f, 0, img.len() as u64);
        assert_eq!(digest(&mut w, &cache, SETTLED).unwrap(), real);
        assert!(entries(&cache).is_empty());
        // A settled one is remembered (here: settled at once), and the entry is what a later
        // run takes instead of hashing: a planted digest shows it.
        assert_eq!(
            digest(&mut w, &cache, std::time::Duration::ZERO).unwrap(),
            real
        );
        let index = entries(&cache);
        assert_eq!(index.len(), 1, "{index:?}");
        let text = std::fs::read_to_string(&index[0]).unwrap();
        assert!(text.ends_with(&format!(" {real}\n")), "{text}");
        let planted = "f".repeat(64);
        let (stamp, _) = text.trim_end().rsplit_once(' ').unwrap();
        std::fs::write(&index[0], format!("{stamp} {planted}\n")).unwrap();
        assert_eq!(digest(&mut w, &cache, SETTLED).unwrap(), planted);
        // A malformed entry is not believed.
        std::fs::write(&index[0], format!("{stamp} nothex\n")).unwrap();
        assert_eq!(digest(&mut w, &cache, SETTLED).unwrap(), real);
        std::fs::write(&index[0], format!("{stamp} {planted}\n")).unwrap();
        // Once the file changes (its size and ctime), the entry no longer matches: hashed again.
        let mut changed = img.clone();
        changed.push(0);
        std::fs::write(&path, &changed).unwrap();
        let f = File::open(&path).unwrap();
        let mut w = Window::new(&f, 0, changed.len() as u64);
        assert_eq!(
            digest(&mut w, &cache, SETTLED).unwrap(),
            sha256(&mut Cursor::new(&changed)).unwrap()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_window_reads_only_its_part() {
        let dir = test_dir("window");
        let f = file_with(&dir, "f", b"0123456789");
        let mut w = Window::new(&f, 2, 5);
        let mut s = String::new();
        w.read_to_string(&mut s).unwrap();
        assert_eq!(s, "23456");
        w.seek(SeekFrom::End(-2)).unwrap();
        s.clear();
        w.read_to_string(&mut s).unwrap();
        assert_eq!(s, "56");
        assert!(w.seek(SeekFrom::Current(-10)).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The real kernels (`.cache/assets`, from scripts/testhost.sh's assets): extraction gives
    /// exactly the vmlinux the assets extracted with the command-line tools, and prints how
    /// long it took. Run with `--ignored` where the assets are.
    #[test]
    #[ignore = "needs .cache/assets/{guest,testhost}/vmlinu[xz]"]
    fn real_kernels_extract_to_their_vmlinux() {
        let assets = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cache/assets");
        for which in ["guest", "testhost"] {
            let f = File::open(assets.join(which).join("vmlinuz")).unwrap();
            let len = f.metadata().unwrap().len();
            let start = std::time::Instant::now();
            let mut x = extract(&mut Window::new(&f, 0, len), None).unwrap();
            let took = start.elapsed();
            let expected = std::fs::read(assets.join(which).join("vmlinux")).unwrap();
            assert!(contents(&mut x.elf) == expected, "{which}");
            // Through a cache: the miss stores, the hit costs the bzImage's SHA-256 and the
            // check of the cached ELF.
            let cache = test_dir("real").join("cache");
            let start = std::time::Instant::now();
            let miss = extract(&mut Window::new(&f, 0, len), Some(&cache)).unwrap();
            let stored = start.elapsed();
            assert!(
                matches!(miss.cache, CacheUse::Stored(_)),
                "{:?}",
                miss.cache
            );
            let start = std::time::Instant::now();
            let hit = extract(&mut Window::new(&f, 0, len), Some(&cache)).unwrap();
            let hit_took = start.elapsed();
            assert!(matches!(hit.cache, CacheUse::Hit(_)), "{:?}", hit.cache);
            std::fs::remove_dir_all(cache.parent().unwrap()).unwrap();
            eprintln!(
                "{which}: {} payload, {len} -> {} bytes: into memory {took:?}, into the cache \
                 {stored:?}, cache hit {hit_took:?}",
                x.payload.compression, x.size
            );
        }
    }
}
