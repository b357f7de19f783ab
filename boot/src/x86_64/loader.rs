//! Loading a kernel, its initrds and its command line into guest memory, and writing the boot
//! protocol structures (Linux zero page or PVH start info) that describe them.
//!
//! The image format is decided by content: an ELF file with a PVH note boots at its PVH entry
//! (32-bit, paging off); any other ELF vmlinux and every bzImage boot through the Linux 64-bit
//! boot protocol. Parsing and copying are `linux-loader`'s; this module only decides where
//! things go and fills the structures.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::{BzImage, Elf, KernelLoader, PvhBootCapability};
use vm_memory::{Bytes, GuestAddress};

use super::extract::{self, Window};
use super::layout::*;
use crate::GuestMemoryMmap;

/// Errors from loading the kernel and initrds.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// A kernel or initrd file could not be opened or read.
    #[error("Failed to open {what} '{path}': {source}")]
    Open {
        /// "kernel" or "initrd".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is neither a bzImage nor an ELF kernel.
    #[error("'{0}' is not a Linux kernel (neither a bzImage nor an ELF vmlinux)")]
    NotAKernel(PathBuf),
    /// linux-loader rejected the image.
    #[error("Failed to load kernel '{path}': {source}")]
    Load {
        /// The kernel file.
        path: PathBuf,
        /// Why.
        source: linux_loader::loader::Error,
    },
    /// The command line is longer than the kernel accepts.
    #[error("Kernel command line length ({len}) exceeds the kernel's COMMAND_LINE_SIZE ({max}).")]
    CmdlineTooLong {
        /// Length without the NUL.
        len: usize,
        /// The limit, including the NUL.
        max: usize,
    },
    /// The command line contains a NUL byte.
    #[error("Kernel command line contains a NUL byte")]
    CmdlineNul,
    /// The initrds do not fit in guest RAM between the kernel and the initrd ceiling.
    #[error(
        "Initrd of {size} bytes does not fit in guest memory below {ceiling:#x} (kernel ends at {kernel_end:#x})"
    )]
    InitrdTooLarge {
        /// Total initrd size.
        size: u64,
        /// Highest address the initrd may reach.
        ceiling: u64,
        /// Where the kernel ends.
        kernel_end: u64,
    },
    /// Writing boot structures into guest memory failed.
    #[error("Failed to write {0} into guest memory")]
    Memory(&'static str),
    /// The kernel is a PE file that claims to be a UKI but is broken.
    #[error("Failed to load unified kernel image '{path}': {source}")]
    Uki {
        /// The UKI.
        path: PathBuf,
        /// What is wrong with it.
        source: crate::uki::UkiError,
    },
}

impl BootError {
    /// The errno that describes this error (the process exit code).
    pub fn errno(&self) -> i32 {
        match self {
            BootError::Open { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            BootError::NotAKernel(_) | BootError::Load { .. } => libc::ENOEXEC,
            BootError::CmdlineTooLong { .. } => libc::E2BIG,
            BootError::CmdlineNul => libc::EINVAL,
            BootError::InitrdTooLarge { .. } => libc::EFBIG,
            BootError::Memory(_) => libc::EFAULT,
            BootError::Uki { source, .. } => source.errno(),
        }
    }
}

/// The kernel image format, as detected from its content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    /// A bzImage (Linux x86 boot protocol).
    BzImage,
    /// An ELF vmlinux.
    Elf,
}

/// How the boot CPU enters the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootEntry {
    /// 64-bit boot protocol: long mode, identity-mapped paging, RSI = zero page.
    Linux64 {
        /// Entry point.
        rip: u64,
        /// Address of `struct boot_params`.
        zero_page: u64,
    },
    /// PVH: 32-bit protected mode without paging, EBX = start info.
    Pvh {
        /// Entry point.
        rip: u64,
        /// Address of `hvm_start_info`.
        start_info: u64,
    },
}

/// Whether a bzImage's compressed payload is extracted on the host and booted through its
/// PVH entry (`RVMSPAWN_EXTRACT_KERNEL=`), and where extracted kernels are cached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Extraction {
    /// Every bzImage boots through the 64-bit boot protocol and decompresses itself.
    Off,
    /// Extract, caching in this directory (`None`: into memory, uncached).
    On {
        /// The cache directory, created (0700) when missing.
        cache: Option<PathBuf>,
    },
}

/// The default: extract, uncached (the front end names the cache directory).
impl Default for Extraction {
    fn default() -> Extraction {
        Extraction::On { cache: None }
    }
}

/// Which way a kernel went into guest memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelPath {
    /// Loaded as it is: an ELF, or a bzImage with extraction off.
    AsIs,
    /// A bzImage whose payload was extracted and loaded as an ELF.
    Extracted {
        /// The payload's compression.
        compression: super::extract::Compression,
        /// Where the ELF came from.
        cache: super::extract::CacheUse,
    },
    /// A bzImage loaded as it is because its payload could not be extracted (the reason).
    Fallback(String),
}

/// What was loaded and how to start it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedKernel {
    /// Detected format.
    pub format: KernelFormat,
    /// Entry and boot structure.
    pub entry: BootEntry,
    /// Where the initrd went and its size, if any.
    pub initrd: Option<(u64, u64)>,
    /// How the kernel was loaded.
    pub path: KernelPath,
}

fn open(what: &'static str, path: &Path) -> Result<File, BootError> {
    File::open(path).map_err(|source| BootError::Open {
        what,
        path: path.to_owned(),
        source,
    })
}

fn detect<R: Read + Seek>(file: &mut R, path: &Path) -> Result<KernelFormat, BootError> {
    let read_err = |source| BootError::Open {
        what: "kernel",
        path: path.to_owned(),
        source,
    };
    let mut head = [0u8; 0x206];
    let mut n = 0;
    while n < head.len() {
        match file.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(read_err(e)),
        }
    }
    file.seek(SeekFrom::Start(0)).map_err(read_err)?;
    if n >= 4 && head[..4] == *b"\x7fELF" {
        Ok(KernelFormat::Elf)
    } else if n >= 0x206 && head[0x202..0x206] == *b"HdrS" {
        Ok(KernelFormat::BzImage)
    } else {
        Err(BootError::NotAKernel(path.to_owned()))
    }
}

/// Build the command line bytes (with the terminating NUL), checking the kernel's limit.
pub fn build_cmdline(parts: &[&str], max_with_nul: usize) -> Result<Vec<u8>, BootError> {
    let line = parts
        .iter()
        .filter(|p| !p.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join(" ");
    if line.as_bytes().contains(&0) {
        return Err(BootError::CmdlineNul);
    }
    if line.len() >= max_with_nul {
        return Err(BootError::CmdlineTooLong {
            len: line.len(),
            max: max_with_nul,
        });
    }
    let mut bytes = line.into_bytes();
    bytes.push(0);
    Ok(bytes)
}

/// A kernel made ready for [`load_kernel`], once per run: a bzImage's payload extracted (or why
/// not). Done before the sandbox closes, as it may create the cache directory and files; every
/// boot of the run (a guest reboot too) then loads from the open file.
#[derive(Debug)]
pub struct PreparedKernel {
    /// The extracted ELF, if any.
    extracted: Option<extract::Extracted>,
    /// Which way the kernel goes in.
    path: KernelPath,
}

impl PreparedKernel {
    /// Which way the kernel goes in (a failing load of an extracted ELF still falls back).
    pub fn path(&self) -> &KernelPath {
        &self.path
    }
}

/// Check that `kernel` is a kernel rvmspawn can load (a bzImage or an ELF, or a UKI whose
/// `.linux` is one: a file that is none of them is refused from its headers, before any helper
/// starts), and extract its payload when it is a bzImage (or a UKI around one) and `extraction`
/// allows it. A payload that cannot be extracted is no error: the kernel then boots through
/// the 64-bit boot protocol, and the prepared kernel says why.
pub fn prepare_kernel(kernel: &Path, extraction: &Extraction) -> Result<PreparedKernel, BootError> {
    let file = open("kernel", kernel)?;
    let uki = inspect_uki(&file, kernel)?;
    let (start, len) = match &uki {
        Some(u) => (u.linux.offset, u.linux.size),
        None => (
            0,
            file.metadata()
                .map_err(|source| BootError::Open {
                    what: "kernel",
                    path: kernel.to_owned(),
                    source,
                })?
                .len(),
        ),
    };
    let format = detect(&mut Window::new(&file, start, len), kernel)?;
    let cache = match (format, extraction) {
        (KernelFormat::Elf, _) => {
            return Ok(PreparedKernel {
                extracted: None,
                path: KernelPath::AsIs,
            });
        }
        (KernelFormat::BzImage, Extraction::Off) => {
            return Ok(PreparedKernel {
                extracted: None,
                path: KernelPath::Fallback("extraction is off (RVMSPAWN_EXTRACT_KERNEL=no)".into()),
            });
        }
        (KernelFormat::BzImage, Extraction::On { cache }) => cache,
    };
    Ok(
        match extract::extract(&mut Window::new(&file, start, len), cache.as_deref()) {
            Ok(x) => PreparedKernel {
                path: KernelPath::Extracted {
                    compression: x.payload.compression,
                    cache: x.cache.clone(),
                },
                extracted: Some(x),
            },
            Err(e) => PreparedKernel {
                extracted: None,
                path: KernelPath::Fallback(e.to_string()),
            },
        },
    )
}

/// Load `kernel`, `initrds` (concatenated, each part 4-byte aligned) and `cmdline` into `mem`,
/// write the boot protocol structures, and say how to enter the kernel. A bzImage (or a UKI's)
/// whose payload [`prepare_kernel`] extracted boots as that ELF, through its PVH entry;
/// otherwise through the 64-bit boot protocol.
pub fn load_kernel(
    mem: &GuestMemoryMmap,
    layout: &MemoryLayout,
    kernel: &Path,
    initrds: &[PathBuf],
    cmdline: &str,
    prepared: &PreparedKernel,
) -> Result<LoadedKernel, BootError> {
    let file = open("kernel", kernel)?;
    let uki = inspect_uki(&file, kernel)?;
    let read_err = |source| BootError::Open {
        what: "kernel",
        path: kernel.to_owned(),
        source,
    };
    let (start, len) = match &uki {
        Some(u) => (u.linux.offset, u.linux.size),
        None => (0, file.metadata().map_err(read_err)?.len()),
    };
    let format = detect(&mut Window::new(&file, start, len), kernel)?;
    let load_err = |source| BootError::Load {
        path: kernel.to_owned(),
        source,
    };
    let himem = Some(GuestAddress(HIGH_MEMORY_START));
    let mut path = prepared.path.clone();
    let mut extracted = None;
    if let Some(x) = &prepared.extracted {
        let tried = x
            .elf
            .try_clone()
            .and_then(|mut f| f.seek(SeekFrom::Start(0)).map(|_| f))
            .map_err(|e| e.to_string())
            .and_then(|mut f| Elf::load(mem, None, &mut f, himem).map_err(|e| e.to_string()));
        match tried {
            Ok(loaded) => extracted = Some((loaded, x.payload.cmdline_size)),
            Err(e) => {
                path = KernelPath::Fallback(format!("Failed to load the extracted kernel: {e}"))
            }
        }
    }
    let (result, cmdline_size) = match extracted {
        Some(loaded) => loaded,
        None => {
            // A UKI's kernel is its .linux section: read into memory (a few MiB) and loaded
            // from there.
            let mut image = match &uki {
                Some(_) => {
                    let mut payload = vec![0u8; usize::try_from(len).unwrap_or(usize::MAX)];
                    std::os::unix::fs::FileExt::read_exact_at(&file, &mut payload, start)
                        .map_err(read_err)?;
                    KernelImage::Payload(std::io::Cursor::new(payload))
                }
                None => KernelImage::File(file_clone(&file, kernel)?),
            };
            let result = match (&mut image, format) {
                (KernelImage::File(f), KernelFormat::BzImage) => BzImage::load(mem, None, f, himem),
                (KernelImage::File(f), KernelFormat::Elf) => Elf::load(mem, None, f, himem),
                (KernelImage::Payload(c), KernelFormat::BzImage) => {
                    BzImage::load(mem, None, c, himem)
                }
                (KernelImage::Payload(c), KernelFormat::Elf) => Elf::load(mem, None, c, himem),
            }
            .map_err(load_err)?;
            let size = result.setup_header.map_or(0, |h| h.cmdline_size);
            (result, size)
        }
    };
    // An extracted ELF boots as an ELF.
    let format = match path {
        KernelPath::Extracted { .. } => KernelFormat::Elf,
        _ => format,
    };

    let header = result.setup_header;
    // The kernel's own limit wins when it is stricter than x86's COMMAND_LINE_SIZE.
    let max = Some(cmdline_size as usize + 1)
        .filter(|&m| m > 1)
        .map_or(CMDLINE_MAX_SIZE, |m| m.min(CMDLINE_MAX_SIZE));
    let cmdline = build_cmdline(&[cmdline], max)?;
    mem.write_slice(&cmdline, GuestAddress(CMDLINE_START))
        .map_err(|_| BootError::Memory("the command line"))?;

    let ceiling = header
        .map(|h| u64::from(h.initrd_addr_max).saturating_add(1))
        .filter(|&c| c > 1)
        .unwrap_or(u64::MAX)
        .min(layout.low_ram_end());
    // A UKI's own initrds (microcode first, as systemd-stub orders them), then the user's.
    let mut parts = Vec::with_capacity(initrds.len() + 2);
    if let Some(u) = &uki {
        for section in u.initrds() {
            parts.push(InitrdPart {
                file: file_clone(&file, kernel)?,
                offset: section.offset,
                len: section.size,
                path: kernel.to_owned(),
            });
        }
    }
    for path in initrds {
        let f = open("initrd", path)?;
        let len = f
            .metadata()
            .map_err(|source| BootError::Open {
                what: "initrd",
                path: path.clone(),
                source,
            })?
            .len();
        parts.push(InitrdPart {
            file: f,
            offset: 0,
            len,
            path: path.clone(),
        });
    }
    let initrd = load_initrds(mem, parts, result.kernel_end, ceiling)?;

    let entry = match result.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(addr) if format == KernelFormat::Elf => {
            write_pvh_start_info(mem, layout, initrd)?;
            BootEntry::Pvh {
                rip: addr.0,
                start_info: PVH_INFO_START,
            }
        }
        _ => {
            write_zero_page(mem, layout, header, initrd)?;
            BootEntry::Linux64 {
                // The 64-bit entry of a bzImage is 0x200 past the start of its
                // protected-mode code; an ELF vmlinux's entry is its e_entry.
                rip: match format {
                    KernelFormat::BzImage => result.kernel_load.0 + 0x200,
                    KernelFormat::Elf => result.kernel_load.0,
                },
                zero_page: ZERO_PAGE_START,
            }
        }
    };
    Ok(LoadedKernel {
        format,
        entry,
        initrd,
        path,
    })
}

fn align_up(v: u64, a: u64) -> Option<u64> {
    v.checked_add(a - 1).map(|x| x & !(a - 1))
}

/// The kernel image being loaded as it is.
enum KernelImage {
    /// A bzImage or ELF file.
    File(File),
    /// A UKI's `.linux` payload.
    Payload(std::io::Cursor<Vec<u8>>),
}

/// What a UKI brings besides its kernel: the embedded command line and initrds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UkiInfo {
    /// The embedded command line, as systemd-stub would pass it.
    pub cmdline: String,
    /// `.uname`, if present.
    pub uname: Option<String>,
}

/// Whether `kernel` is a unified kernel image, and what it embeds. A plain bzImage (even with
/// an EFI stub, which makes it a PE file too) or an ELF vmlinux gives `None`; a UKI that is
/// broken is an error that says how.
pub fn uki_info(kernel: &Path) -> Result<Option<UkiInfo>, BootError> {
    let file = open("kernel", kernel)?;
    Ok(inspect_uki(&file, kernel)?.map(|u| UkiInfo {
        uname: u
            .uname
            .and_then(|s| crate::uki::read_text(&file, s).ok())
            .filter(|s| !s.is_empty()),
        cmdline: u.cmdline_text,
    }))
}

fn inspect_uki(file: &File, path: &Path) -> Result<Option<crate::uki::Uki>, BootError> {
    match crate::uki::parse_uki(file) {
        Ok(u) => Ok(Some(u)),
        Err(crate::uki::UkiError::NotUki) => Ok(None),
        Err(source) => Err(BootError::Uki {
            path: path.to_owned(),
            source,
        }),
    }
}

fn file_clone(file: &File, path: &Path) -> Result<File, BootError> {
    file.try_clone().map_err(|source| BootError::Open {
        what: "kernel",
        path: path.to_owned(),
        source,
    })
}

/// One piece of the initrd: `len` bytes at `offset` in `file`.
struct InitrdPart {
    file: File,
    offset: u64,
    len: u64,
    path: PathBuf,
}

/// Put all initrd parts, back to back with 4-byte alignment between them, as high as possible
/// below `ceiling` (where the kernel will not overwrite them while decompressing itself).
fn load_initrds(
    mem: &GuestMemoryMmap,
    parts: Vec<InitrdPart>,
    kernel_end: u64,
    ceiling: u64,
) -> Result<Option<(u64, u64)>, BootError> {
    if parts.is_empty() {
        return Ok(None);
    }
    let mut total: u64 = 0;
    for part in &parts {
        total = align_up(total, 4)
            .and_then(|t| t.checked_add(part.len))
            .ok_or(BootError::InitrdTooLarge {
                size: u64::MAX,
                ceiling,
                kernel_end,
            })?;
    }
    let too_large = BootError::InitrdTooLarge {
        size: total,
        ceiling,
        kernel_end,
    };
    let start = ceiling.checked_sub(total).ok_or(too_large)? & !0xfff;
    if start < align_up(kernel_end, 0x1000).unwrap_or(u64::MAX) {
        return Err(BootError::InitrdTooLarge {
            size: total,
            ceiling,
            kernel_end,
        });
    }
    let mut at = start;
    for mut part in parts {
        at = align_up(at, 4).ok_or(BootError::Memory("the initrd"))?;
        let len_usize = usize::try_from(part.len).map_err(|_| BootError::Memory("the initrd"))?;
        let read_err = |source: std::io::Error| BootError::Open {
            what: "initrd",
            path: part.path.clone(),
            source,
        };
        part.file
            .seek(SeekFrom::Start(part.offset))
            .map_err(read_err)?;
        mem.read_exact_volatile_from(GuestAddress(at), &mut part.file, len_usize)
            .map_err(|e| read_err(std::io::Error::other(e.to_string())))?;
        at += part.len;
    }
    Ok(Some((start, total)))
}

fn write_zero_page(
    mem: &GuestMemoryMmap,
    layout: &MemoryLayout,
    header: Option<setup_header>,
    initrd: Option<(u64, u64)>,
) -> Result<(), BootError> {
    const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
    const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
    const KERNEL_LOADER_OTHER: u8 = 0xff;
    const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x100_0000;

    let mut params = boot_params::default();
    if let Some(h) = header {
        params.hdr = h;
    } else {
        // An ELF vmlinux has no setup header: describe ourselves as a boot loader would.
        params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
        params.hdr.header = KERNEL_HDR_MAGIC;
        params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    // cmdline_size is the kernel's limit, for the loader to read; it is left as the kernel set it.
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    if let Some((addr, size)) = initrd {
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = size as u32;
    }
    params.acpi_rsdp_addr = ACPI_START;
    let e820 = layout.e820();
    if e820.len() > params.e820_table.len() {
        return Err(BootError::Memory("the e820 map"));
    }
    for (slot, (addr, size, type_)) in params.e820_table.iter_mut().zip(&e820) {
        *slot = boot_e820_entry {
            addr: *addr,
            size: *size,
            r#type: *type_,
        };
    }
    params.e820_entries = e820.len() as u8;

    let bp = BootParams::new(&params, GuestAddress(ZERO_PAGE_START));
    LinuxBootConfigurator::write_bootparams::<GuestMemoryMmap>(&bp, mem)
        .map_err(|_| BootError::Memory("the zero page"))
}

fn write_pvh_start_info(
    mem: &GuestMemoryMmap,
    layout: &MemoryLayout,
    initrd: Option<(u64, u64)>,
) -> Result<(), BootError> {
    const XEN_HVM_START_MAGIC_VALUE: u32 = 0x336e_c578;
    let e820 = layout.e820();
    if e820.len() > PVH_MEMMAP_MAX {
        return Err(BootError::Memory("the PVH memory map"));
    }
    // hvm_start_info, version 1: see xen/include/public/arch-x86/hvm/start_info.h.
    let mut info = Vec::with_capacity(56);
    info.extend_from_slice(&XEN_HVM_START_MAGIC_VALUE.to_le_bytes());
    info.extend_from_slice(&1u32.to_le_bytes()); // version
    info.extend_from_slice(&0u32.to_le_bytes()); // flags
    info.extend_from_slice(&u32::from(initrd.is_some()).to_le_bytes()); // nr_modules
    info.extend_from_slice(&PVH_MODLIST_START.to_le_bytes());
    info.extend_from_slice(&CMDLINE_START.to_le_bytes());
    info.extend_from_slice(&ACPI_START.to_le_bytes()); // rsdp_paddr
    info.extend_from_slice(&PVH_MEMMAP_START.to_le_bytes());
    info.extend_from_slice(&(e820.len() as u32).to_le_bytes());
    info.extend_from_slice(&0u32.to_le_bytes()); // reserved

    let mut memmap = Vec::with_capacity(e820.len() * 24);
    for (addr, size, type_) in &e820 {
        memmap.extend_from_slice(&addr.to_le_bytes());
        memmap.extend_from_slice(&size.to_le_bytes());
        memmap.extend_from_slice(&type_.to_le_bytes());
        memmap.extend_from_slice(&0u32.to_le_bytes());
    }
    let modules = initrd.map(|(addr, size)| {
        let mut m = Vec::with_capacity(32);
        m.extend_from_slice(&addr.to_le_bytes());
        m.extend_from_slice(&size.to_le_bytes());
        m.extend_from_slice(&0u64.to_le_bytes()); // cmdline_paddr
        m.extend_from_slice(&0u64.to_le_bytes()); // reserved
        m
    });
    let bp = BootParams {
        header: info,
        header_start: GuestAddress(PVH_INFO_START),
        sections: Some(memmap),
        sections_start: Some(GuestAddress(PVH_MEMMAP_START)),
        modules_start: modules.as_ref().map(|_| GuestAddress(PVH_MODLIST_START)),
        modules,
    };
    PvhBootConfigurator::write_bootparams::<GuestMemoryMmap>(&bp, mem)
        .map_err(|_| BootError::Memory("the PVH start info"))
}

/// A flat segment descriptor as the boot CPU's registers must mirror it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Selector (index * 8).
    pub selector: u16,
    /// The raw 64-bit GDT entry.
    pub entry: u64,
}

/// 64-bit boot protocol: `__BOOT_CS` is 0x10 and `__BOOT_DS` is 0x18 (Documentation/x86/boot.rst).
pub const LONG_MODE_CODE: Segment = Segment {
    selector: 0x10,
    entry: gdt_entry(0xa09b, 0, 0xfffff),
};
/// Data segment for the 64-bit boot protocol.
pub const LONG_MODE_DATA: Segment = Segment {
    selector: 0x18,
    entry: gdt_entry(0xc093, 0, 0xfffff),
};
/// PVH: flat 32-bit code segment.
pub const PROTECTED_MODE_CODE: Segment = Segment {
    selector: 0x08,
    entry: gdt_entry(0xc09b, 0, 0xfffff),
};
/// A TSS descriptor: VMX requires a usable task register.
pub const BOOT_TSS: Segment = Segment {
    selector: 0x20,
    entry: gdt_entry(0x808b, 0, 0xfffff),
};

/// Encode a GDT entry from its flags (access byte in bits 0-7, flags in 12-15), base and limit.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// What sits at the reset vector: with no BIOS behind it, a jump there must still reset the
/// machine. Linux on a hardware-reduced ACPI platform reboots by default through "EFI", which
/// without EFI falls back to a real-mode jump to F000:FFF0; this stub then pulses the i8042's
/// reset line (`mov al, 0xfe; out 0x64, al; hlt` in a loop).
const RESET_VECTOR_STUB: [u8; 7] = [0xb0, 0xfe, 0xe6, 0x64, 0xf4, 0xeb, 0xfd];

/// Write the reset-vector stub.
pub fn write_reset_vector(mem: &GuestMemoryMmap) -> Result<(), BootError> {
    mem.write_slice(&RESET_VECTOR_STUB, GuestAddress(RESET_VECTOR))
        .map_err(|_| BootError::Memory("the reset vector"))
}

/// Write the GDT (null, PVH code, long-mode code, data, TSS), an empty IDT and identity-mapped
/// page tables for the first 4 GiB (2 MiB pages), which the 64-bit protocol needs.
pub fn write_boot_cpu_tables(mem: &GuestMemoryMmap) -> Result<(), BootError> {
    let gdt = [
        0,
        PROTECTED_MODE_CODE.entry,
        LONG_MODE_CODE.entry,
        LONG_MODE_DATA.entry,
        BOOT_TSS.entry,
    ];
    for (i, e) in gdt.iter().enumerate() {
        mem.write_obj(*e, GuestAddress(BOOT_GDT_START + 8 * i as u64))
            .map_err(|_| BootError::Memory("the GDT"))?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_START))
        .map_err(|_| BootError::Memory("the IDT"))?;

    const PRESENT_RW: u64 = 0x3;
    const HUGE: u64 = 0x80;
    mem.write_obj(PDPTE_START | PRESENT_RW, GuestAddress(PML4_START))
        .map_err(|_| BootError::Memory("the page tables"))?;
    for dir in 0..4u64 {
        let pd = PDE_START + dir * 0x1000;
        mem.write_obj(pd | PRESENT_RW, GuestAddress(PDPTE_START + dir * 8))
            .map_err(|_| BootError::Memory("the page tables"))?;
        let entries: Vec<u8> = (0..512u64)
            .flat_map(|i| (((dir << 30) + (i << 21)) | PRESENT_RW | HUGE).to_le_bytes())
            .collect();
        mem.write_slice(&entries, GuestAddress(pd))
            .map_err(|_| BootError::Memory("the page tables"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A kernel loaded as it is.
    fn unprepared() -> PreparedKernel {
        PreparedKernel {
            extracted: None,
            path: KernelPath::AsIs,
        }
    }

    #[test]
    fn gdt_entries_match_the_intel_encoding() {
        assert_eq!(gdt_entry(0xa09b, 0, 0xfffff), 0x00af_9b00_0000_ffff);
        assert_eq!(gdt_entry(0xc093, 0, 0xfffff), 0x00cf_9300_0000_ffff);
    }

    #[test]
    fn cmdline_is_joined_and_nul_terminated() {
        let c = build_cmdline(&["console=ttyS0", "", "quiet"], 2048).unwrap();
        assert_eq!(c, b"console=ttyS0 quiet\0");
    }

    #[test]
    fn cmdline_over_the_limit_is_refused_with_vmspawns_message() {
        let long = "x".repeat(2048);
        let e = build_cmdline(&[&long], 2048).unwrap_err();
        assert_eq!(
            e.to_string(),
            "Kernel command line length (2048) exceeds the kernel's COMMAND_LINE_SIZE (2048)."
        );
        assert!(build_cmdline(&[&"x".repeat(2047)], 2048).is_ok());
    }

    #[test]
    fn garbage_is_not_a_kernel() {
        let dir = std::env::temp_dir().join(format!("rvmspawn-boot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("not-a-kernel");
        std::fs::write(&path, b"hello, this is not a kernel").unwrap();
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap();
        let layout = MemoryLayout::new(64 << 20);
        let e = load_kernel(&mem, &layout, &path, &[], "", &unprepared()).unwrap_err();
        assert!(matches!(e, BootError::NotAKernel(_)), "{e}");
        assert_eq!(e.errno(), libc::ENOEXEC);
        // Preparing the kernel (done before any helper starts) says the same, from the headers.
        let prepare = |p: &Path| prepare_kernel(p, &Extraction::Off);
        let e = prepare(&path).unwrap_err();
        assert!(matches!(e, BootError::NotAKernel(_)), "{e}");
        let mut bz = vec![0u8; 0x300];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        std::fs::write(&path, &bz).unwrap();
        assert!(matches!(
            prepare(&path).map(|k| k.path),
            Ok(KernelPath::Fallback(_))
        ));
        std::fs::write(&path, b"\x7fELF\x02\x01\x01").unwrap();
        assert!(matches!(
            prepare(&path).map(|k| k.path),
            Ok(KernelPath::AsIs)
        ));
        assert_eq!(
            prepare(&dir.join("missing")).unwrap_err().errno(),
            libc::ENOENT
        );
        let e =
            load_kernel(&mem, &layout, &dir.join("missing"), &[], "", &unprepared()).unwrap_err();
        assert_eq!(e.errno(), libc::ENOENT);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_bzimage_with_a_pvh_payload_boots_through_pvh_and_falls_back_when_it_cannot() {
        use crate::x86_64::extract::tests::{
            FIXTURE_ENTRY, bzimage_of, fixture, fixture_elf, test_dir,
        };
        use crate::x86_64::extract::{CacheUse, Compression};
        let dir = test_dir("loader");
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap();
        let layout = MemoryLayout::new(64 << 20);
        let on = Extraction::On { cache: None };
        let load = |path: &Path, cmdline: &str, extraction: &Extraction| {
            let prepared = prepare_kernel(path, extraction)?;
            load_kernel(&mem, &layout, path, &[], cmdline, &prepared)
        };
        let (img, elf) = fixture(Compression::Lz4);
        let path = dir.join("bzImage");
        std::fs::write(&path, &img).unwrap();
        let k = load(&path, "console=ttyS0", &on).unwrap();
        assert_eq!(k.format, KernelFormat::Elf);
        assert!(
            matches!(
                k.path,
                KernelPath::Extracted {
                    compression: Compression::Lz4,
                    cache: CacheUse::Memory(_)
                }
            ),
            "{:?}",
            k.path
        );
        assert_eq!(
            k.entry,
            BootEntry::Pvh {
                rip: u64::from(FIXTURE_ENTRY),
                start_info: PVH_INFO_START
            }
        );
        // The ELF's segment is where its header says, not the compressed payload.
        let mut loaded = vec![0u8; 4096];
        mem.read_slice(&mut loaded, GuestAddress(0x0100_0000))
            .unwrap();
        assert_eq!(loaded, elf[0x1000..0x2000]);
        // Every boot of a run (a reboot) loads the prepared kernel again.
        let prepared = prepare_kernel(&path, &on).unwrap();
        for _ in 0..2 {
            let k = load_kernel(&mem, &layout, &path, &[], "", &prepared).unwrap();
            assert!(matches!(k.entry, BootEntry::Pvh { .. }));
        }
        // The bzImage's own command-line limit still applies.
        let e = load(&path, &"x".repeat(2048), &on).unwrap_err();
        assert!(
            matches!(e, BootError::CmdlineTooLong { max: 2048, .. }),
            "{e}"
        );

        // Off: the 64-bit boot protocol, as before.
        let k = load(&path, "", &Extraction::Off).unwrap();
        assert_eq!(k.format, KernelFormat::BzImage);
        assert!(matches!(k.path, KernelPath::Fallback(ref why) if why.contains("off")));
        assert!(matches!(k.entry, BootEntry::Linux64 { rip: 0x10_0200, .. }));

        // A payload without a PVH note, or a corrupt one: the same fallback, saying why.
        let mut corrupt = img.clone();
        let n = corrupt.len();
        corrupt[n - 64 - 4..n - 64].copy_from_slice(&7u32.to_le_bytes());
        let no_pvh = bzimage_of(Compression::Lz4, &fixture_elf(false));
        for (image, why) in [(no_pvh, "PVH"), (corrupt, "corrupt lz4")] {
            std::fs::write(&path, &image).unwrap();
            let k = load(&path, "", &on).unwrap();
            assert!(
                matches!(k.path, KernelPath::Fallback(ref reason) if reason.contains(why)),
                "{:?}",
                k.path
            );
            assert!(matches!(k.entry, BootEntry::Linux64 { .. }));
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn page_tables_identity_map_4_gib() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        write_boot_cpu_tables(&mem).unwrap();
        let pml4: u64 = mem.read_obj(GuestAddress(PML4_START)).unwrap();
        assert_eq!(pml4 & !0xfff, PDPTE_START);
        let last: u64 = mem
            .read_obj(GuestAddress(PDE_START + 3 * 0x1000 + 511 * 8))
            .unwrap();
        assert_eq!(last & !0xfff, (3 << 30) + (511 << 21));
    }
}
