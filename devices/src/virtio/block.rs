//! virtio-blk backed by a raw image file or a block device.
//!
//! Each queue has its own thread with its own scratch buffers, so requests never allocate and
//! queues never contend. Data moves between the file and guest memory with `preadv`/`pwritev`
//! straight into the guest's buffers, and a flush request is acknowledged only after
//! `fdatasync` returns.
//!
//! One I/O mode per image, for reads and writes alike (open(2) warns against mixing direct and
//! buffered I/O on one file):
//!
//! - **Direct** where the file system supports it for every request the guest may send: the
//!   kernel reports (statx `STATX_DIOALIGN`, Linux 6.1+) a file-offset alignment no larger than
//!   the logical block the guest is told (512 bytes for image files) and a memory alignment no
//!   larger than a page. Every guest read and write then goes through a second descriptor of
//!   the file opened with `O_DIRECT`, between the guest's pages and the device, as QEMU's
//!   `cache=none` does: the guest has its own page cache, and caching its I/O again in the
//!   host's costs a copy and double the memory. A request whose guest buffers are not aligned
//!   as direct I/O needs is copied through the queue's bounce buffer (1 MiB, page-aligned,
//!   allocated on first use and reused), piece by piece.
//! - **Buffered** everywhere else (tmpfs before Linux 6.6, kernels that do not report the
//!   alignment, 4 KiB-sector storage under an image file): reads and writes both go through
//!   the host page cache, like QEMU's default `cache=writeback`.
//!
//! The descriptor the image was opened with keeps the lock and serves `fstat`, `fallocate`,
//! `fdatasync` and the host's own read of the partition table before the guest starts. A flush
//! is `fdatasync` in both modes: a direct write is in the device, but one into a hole (a sparse
//! image) changes metadata that only `fdatasync` commits, and `fdatasync` also empties the
//! device's volatile write cache.
//!
//! Long requests never hold a worker for long: data moves in pieces of at most 4 MiB, discard
//! and write-zeroes run in pieces of 16 MiB (1 MiB where zeroes have to be written), and
//! between pieces the worker checks whether the device is being reset or dropped; if so the
//! request fails at once and so do the ones still in the ring.
//!
//! Every request comes from the guest and is checked before it touches the file: header size,
//! descriptor directions, data length (a multiple of 512), sector range, segment counts. A bad
//! request completes with `VIRTIO_BLK_S_IOERR` (or `UNSUPP` for unknown types) and the device
//! carries on.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use virtio_bindings::virtio_blk::*;
use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::{Activation, GuestMemoryMmap, QueueWorker, VirtioDevice, VirtioError, serve_queue};

/// Sector size of the virtio-blk protocol.
pub const SECTOR_SIZE: u64 = 512;
/// Queue size offered to the driver.
pub const QUEUE_SIZE: u16 = 256;
/// Most queues a disk gets, whatever the vCPU count.
pub const MAX_QUEUES: usize = 16;
/// Length of the serial returned by GET_ID.
pub const ID_BYTES: usize = VIRTIO_BLK_ID_BYTES as usize;
/// Data segments per request the driver may use (queue size minus header and status).
const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// Largest single data segment the driver may use.
const SIZE_MAX: u32 = 1 << 20;
/// Most discard / write-zeroes ranges per request.
const MAX_RANGES: u32 = 32;
/// Most sectors in one discard / write-zeroes range (2 GiB).
const MAX_RANGE_SECTORS: u32 = 1 << 22;
/// Descriptors of one request we look at; a longer chain is failed.
const MAX_DESCRIPTORS: usize = 1024;
const HEADER_LEN: u64 = 16;
const RANGE_LEN: u64 = 16;
/// Bytes of the config space we expose (up to and including write_zeroes_may_unmap).
const CONFIG_LEN: usize = 60;

/// Errors from opening a disk image.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// The file cannot be opened or examined.
    #[error("Failed to open disk image {path}: {source}")]
    Open {
        /// The image.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// Another process holds the image's lock.
    #[error("Disk image {0} is in use by another process (it is locked); refusing to share it")]
    Locked(PathBuf),
    /// Neither a regular file nor a block device.
    #[error("Disk image {0} is neither a regular file nor a block device")]
    NotAnImage(PathBuf),
}

impl DiskError {
    /// The errno the process should exit with.
    pub fn errno(&self) -> i32 {
        match self {
            DiskError::Open { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            DiskError::Locked(_) => libc::EBUSY,
            DiskError::NotAnImage(_) => libc::EINVAL,
        }
    }
}

/// How to open an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskOptions {
    /// Open read-only even when the file is writable.
    pub read_only: bool,
    /// Pass the guest's discards on to the file.
    pub discard: bool,
    /// Never write the image: the guest's writes go to a copy-on-write overlay that vanishes
    /// with the run ([`overlay`]); the image is opened read-only.
    pub ephemeral: bool,
}

/// An open, locked disk image and what it supports.
#[derive(Debug)]
pub struct DiskImage {
    /// The descriptor the image was opened with: lock, metadata, fallocate, fdatasync.
    file: File,
    /// The descriptor every guest read and write goes through: a second open of the file with
    /// O_DIRECT in direct mode, a duplicate of `file` in buffered mode.
    data: File,
    /// What direct I/O needs, in direct mode; None in buffered mode.
    direct: Option<DirectAlign>,
    path: PathBuf,
    size: u64,
    read_only: bool,
    discard: bool,
    logical_block: u32,
    physical_block: u32,
    /// An ephemeral disk's copy-on-write layer; every guest read and write goes through it.
    overlay: Option<overlay::Overlay>,
}

const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
const BLKROGET: libc::c_ulong = 0x125e;
const BLKSSZGET: libc::c_ulong = 0x1268;
const BLKPBSZGET: libc::c_ulong = 0x127b;

fn ioctl_int<T: Default>(file: &File, request: libc::c_ulong) -> io::Result<T> {
    let mut v = T::default();
    // SAFETY: the request numbers used with this helper write exactly one T (u64 for
    // BLKGETSIZE64, c_int/c_uint for the others) into `v`, which lives for the call.
    let r = unsafe { libc::ioctl(file.as_raw_fd(), request as _, &mut v as *mut T) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(v)
    }
}

fn fallocate(file: &File, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
    let (Ok(off), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    };
    loop {
        // SAFETY: fallocate only reads its scalar arguments.
        let r = unsafe { libc::fallocate(file.as_raw_fd(), mode, off, len) };
        if r == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

impl DiskImage {
    /// Open and lock `path`: exclusively when writable, shared when read-only, so two VMs
    /// never write one image (the same BSD lock systemd takes on images it uses).
    pub fn open(path: &Path, opts: DiskOptions) -> Result<DiskImage, DiskError> {
        let open_err = |source| DiskError::Open {
            path: path.to_owned(),
            source,
        };
        let open = |write: bool| {
            OpenOptions::new()
                .read(true)
                .write(write)
                .custom_flags(libc::O_CLOEXEC | libc::O_NOCTTY)
                .open(path)
        };
        let (file, read_only) = if opts.read_only || opts.ephemeral {
            (open(false).map_err(open_err)?, true)
        } else {
            match open(true) {
                Ok(f) => (f, false),
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EACCES | libc::EROFS | libc::EPERM)
                    ) =>
                {
                    (open(false).map_err(open_err)?, true)
                }
                Err(e) => return Err(open_err(e)),
            }
        };
        let lock = if read_only {
            libc::LOCK_SH
        } else {
            libc::LOCK_EX
        };
        // SAFETY: flock only takes the descriptor and flags.
        if unsafe { libc::flock(file.as_raw_fd(), lock | libc::LOCK_NB) } < 0 {
            let e = io::Error::last_os_error();
            return Err(if e.kind() == io::ErrorKind::WouldBlock {
                DiskError::Locked(path.to_owned())
            } else {
                open_err(e)
            });
        }
        let mut image = Self::from_file(file, path, read_only, opts.discard)?;
        if opts.ephemeral {
            image.make_ephemeral(opts.discard).map_err(open_err)?;
        }
        Ok(image)
    }

    /// Put a fresh copy-on-write overlay in front of the (read-only) image: the guest may
    /// write, the image never changes. Buffered I/O (the overlay's reads and writes are pieces
    /// of the bounce buffer); discard punches holes in the overlay.
    pub fn make_ephemeral(&mut self, discard: bool) -> io::Result<()> {
        let top = overlay::temporary_file()?;
        self.overlay = Some(overlay::Overlay::new(top, self.size)?);
        self.read_only = false;
        self.discard = discard;
        self.direct = None;
        self.data = self.file.try_clone()?;
        Ok(())
    }

    /// Whether the guest's writes go to a throw-away overlay.
    pub fn ephemeral(&self) -> bool {
        self.overlay.is_some()
    }

    /// Read a piece of the disk, through the overlay when there is one.
    fn read_piece(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        match &self.overlay {
            Some(o) => o.read(&self.data, buf, offset),
            None => self.data.read_exact_at(buf, offset),
        }
    }

    /// Write a piece of the disk, into the overlay when there is one.
    fn write_piece(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        match &self.overlay {
            Some(o) => o.write(&self.data, buf, offset),
            None => self.data.write_all_at(buf, offset),
        }
    }

    /// Use an already open file (tests and fuzzing use a memfd).
    pub fn from_file(
        file: File,
        path: &Path,
        read_only: bool,
        discard: bool,
    ) -> Result<DiskImage, DiskError> {
        let open_err = |source| DiskError::Open {
            path: path.to_owned(),
            source,
        };
        let meta = file.metadata().map_err(open_err)?;
        let ft = meta.file_type();
        let mut image = DiskImage {
            path: path.to_owned(),
            size: 0,
            read_only,
            discard: false,
            logical_block: SECTOR_SIZE as u32,
            physical_block: SECTOR_SIZE as u32,
            direct: None,
            data: file.try_clone().map_err(open_err)?,
            file,
            overlay: None,
        };
        if ft.is_block_device() {
            image.size = ioctl_int::<u64>(&image.file, BLKGETSIZE64).map_err(open_err)?;
            let ro: libc::c_int = ioctl_int(&image.file, BLKROGET).map_err(open_err)?;
            image.read_only |= ro != 0;
            let logical: libc::c_int = ioctl_int(&image.file, BLKSSZGET).map_err(open_err)?;
            let physical: libc::c_uint = ioctl_int(&image.file, BLKPBSZGET).map_err(open_err)?;
            image.logical_block = u32::try_from(logical).unwrap_or(512).max(512);
            image.physical_block = physical.max(image.logical_block);
            image.discard = discard && !image.read_only && block_device_discards(&meta);
        } else if ft.is_file() {
            image.size = meta.len();
            // Holes are punched in whole file-system blocks; tell the guest so.
            let blksize = u32::try_from(meta.blksize()).unwrap_or(4096);
            if blksize.is_power_of_two() && (512..=65536).contains(&blksize) {
                image.physical_block = blksize;
            }
            // Punching past the end of the file changes nothing, but tells whether the file
            // system can punch at all.
            image.discard = discard
                && !image.read_only
                && fallocate(
                    &image.file,
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    image.size,
                    1,
                )
                .is_ok();
        } else {
            return Err(DiskError::NotAnImage(path.to_owned()));
        }
        let align = match dio_alignment(&image.file) {
            Dio::Aligned(a) => Some(a),
            Dio::Unsupported => None,
            // Kernels before 6.11 do not report it for block devices: their logical block.
            Dio::Unknown if ft.is_block_device() => Some(DirectAlign {
                memory: u64::from(image.logical_block),
                offset: u64::from(image.logical_block),
            }),
            Dio::Unknown => None,
        };
        // Direct only where every request the guest may send can go direct: file offsets and
        // lengths are multiples of the logical block it is told, and the bounce buffer is
        // page-aligned.
        let fits = |a: &DirectAlign| {
            a.offset.is_power_of_two()
                && a.memory.is_power_of_two()
                && a.offset <= u64::from(image.logical_block)
                && a.memory <= BOUNCE_ALIGN as u64
        };
        if let Some(align) = align.filter(fits)
            && let Some(direct) = reopen_direct(&image.file, !image.read_only)
        {
            image.data = direct;
            image.direct = Some(align);
        }
        Ok(image)
    }

    /// Whether the guest's reads and writes bypass the host page cache (O_DIRECT); see the
    /// module documentation for when they do.
    pub fn direct(&self) -> bool {
        self.direct.is_some()
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether the guest gets the disk read-only.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// Whether discard reaches the file.
    pub fn discard(&self) -> bool {
        self.discard
    }

    /// The path it was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The descriptor the image was opened with, buffered: for the host's own reads before
    /// the guest runs (the guest's I/O goes through another descriptor, see [`Self::direct`]).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Zero `len` bytes at `offset` (deallocating them first when `first` is
    /// [`Zeroing::Deallocate`]), in pieces, giving up with `ECANCELED` once `stop` is set.
    fn clear(&self, offset: u64, len: u64, first: Zeroing, stop: &AtomicBool) -> io::Result<()> {
        if let Some(o) = &self.overlay {
            let mut done = 0u64;
            while done < len {
                if stop.load(Ordering::Relaxed) {
                    return Err(cancelled());
                }
                let n = (len - done).min(FALLOCATE_PIECE);
                o.zero(&self.data, offset + done, n)?;
                done += n;
            }
            return Ok(());
        }
        let mut how = first;
        let mut done = 0u64;
        while done < len {
            if stop.load(Ordering::Relaxed) {
                return Err(cancelled());
            }
            let at = offset + done;
            let n = (len - done).min(match how {
                Zeroing::Write => ZERO_WRITE_PIECE,
                _ => FALLOCATE_PIECE,
            });
            let result = match how {
                Zeroing::Deallocate | Zeroing::PunchInstead => self.punch(at, n),
                Zeroing::ZeroRange => fallocate(
                    &self.file,
                    libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
                    at,
                    n,
                ),
                Zeroing::Write => self.write_zero_piece(at, n),
            };
            match (result, how) {
                (Ok(()), _) => done += n,
                (Err(e), Zeroing::Deallocate | Zeroing::Write) => return Err(e),
                // Not here (e.g. a file system without these fallocate modes): the next way,
                // for the same piece and the rest.
                (Err(_), Zeroing::ZeroRange) if self.discard => how = Zeroing::PunchInstead,
                (Err(_), Zeroing::ZeroRange | Zeroing::PunchInstead) => how = Zeroing::Write,
            }
        }
        Ok(())
    }

    /// Write `len` (at most [`ZERO_WRITE_PIECE`]) zero bytes at `offset`, through the data
    /// descriptor: one pwritev whose buffers all point at the same aligned zeroes.
    fn write_zero_piece(&self, offset: u64, len: u64) -> io::Result<()> {
        let zero = libc::iovec {
            // The kernel only reads the buffers of a write.
            iov_base: ZEROES.0.as_ptr().cast_mut().cast(),
            iov_len: ZEROES.0.len(),
        };
        let mut iovs = [zero; (ZERO_WRITE_PIECE / ZEROES_LEN as u64) as usize];
        let mut n = 0;
        let mut left = len as usize;
        while left > 0 {
            iovs[n].iov_len = left.min(ZEROES_LEN);
            left -= iovs[n].iov_len;
            n += 1;
        }
        vectored_all(&self.data, &mut iovs[..n], offset, true)
    }

    fn punch(&self, offset: u64, len: u64) -> io::Result<()> {
        fallocate(
            &self.file,
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        )
    }
}

/// How a range is zeroed; on failure each way falls back to the next, except where noted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Zeroing {
    /// Punch a hole, because the guest asked to deallocate (discard, or write-zeroes with the
    /// unmap flag where discard works); its failure is the request's.
    Deallocate,
    /// `FALLOC_FL_ZERO_RANGE`: the file system zeroes the range, mostly in its metadata.
    ZeroRange,
    /// A hole reads as zeroes too, where discard works.
    PunchInstead,
    /// Write the zeroes; its failure is the request's.
    Write,
}

/// Bytes one fallocate call of a discard or write-zeroes covers, between two looks at the stop
/// flag: metadata work for most file systems, but a block device may write the zeroes (16 MiB
/// is 160 ms at 100 MB/s).
const FALLOCATE_PIECE: u64 = 16 << 20;
/// Bytes of zeroes one write covers when they have to be written.
const ZERO_WRITE_PIECE: u64 = 1 << 20;
const ZEROES_LEN: usize = 64 << 10;

/// Zeroes to write from, aligned for direct I/O.
#[repr(C, align(4096))]
struct Zeroes([u8; ZEROES_LEN]);
static ZEROES: Zeroes = Zeroes([0; ZEROES_LEN]);

/// What the error of a request cut short by a stop looks like.
fn cancelled() -> io::Error {
    io::Error::from_raw_os_error(libc::ECANCELED)
}

/// The alignment direct I/O on a file needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DirectAlign {
    /// Of the address and the length of every memory buffer (the kernel checks lengths
    /// against the logical block size, which is `offset`; see [`DirectAlign::buffer_fits`]).
    memory: u64,
    /// Of file offsets and transfer lengths.
    offset: u64,
}

impl DirectAlign {
    /// Whether a buffer can be handed to direct I/O as it is.
    fn buffer_fits(&self, addr: usize, len: usize) -> bool {
        (addr as u64).is_multiple_of(self.memory) && (len as u64).is_multiple_of(self.offset)
    }
}

/// What the kernel says about direct I/O on a file.
#[derive(Debug)]
enum Dio {
    /// Supported, with these alignments.
    Aligned(DirectAlign),
    /// The file system has no direct I/O for it.
    Unsupported,
    /// The kernel does not say (before 6.1; block devices before 6.11).
    Unknown,
}

/// statx `STATX_DIOALIGN` of `file`.
fn dio_alignment(file: &File) -> Dio {
    // SAFETY: statx is plain old data, for which all zeroes is a valid value.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: an empty path with AT_EMPTY_PATH names the descriptor itself; `stx` is a valid,
    // writable statx for the whole call.
    let r = unsafe {
        libc::statx(
            file.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_DIOALIGN,
            &mut stx,
        )
    };
    if r != 0 || stx.stx_mask & libc::STATX_DIOALIGN == 0 {
        Dio::Unknown
    } else if stx.stx_dio_offset_align == 0 || stx.stx_dio_mem_align == 0 {
        Dio::Unsupported
    } else {
        Dio::Aligned(DirectAlign {
            memory: u64::from(stx.stx_dio_mem_align),
            offset: u64::from(stx.stx_dio_offset_align),
        })
    }
}

/// A second, independent open of `file` with O_DIRECT, through /proc/self/fd (the path may
/// have changed since; the descriptor has not). None where the file system refuses O_DIRECT
/// (tmpfs before Linux 6.6, for one).
fn reopen_direct(file: &File, write: bool) -> Option<File> {
    OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(libc::O_DIRECT | libc::O_CLOEXEC | libc::O_NOCTTY)
        .open(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .ok()
}

/// Whether the kernel says this block device can discard.
fn block_device_discards(meta: &std::fs::Metadata) -> bool {
    let rdev = meta.rdev();
    let (major, minor) = (libc::major(rdev), libc::minor(rdev));
    std::fs::read_to_string(format!(
        "/sys/dev/block/{major}:{minor}/queue/discard_max_bytes"
    ))
    .ok()
    .and_then(|s| s.trim().parse::<u64>().ok())
    .is_some_and(|v| v > 0)
}

/// The serial number systemd-vmspawn gives a disk: the image's file name when it fits in the
/// 20 bytes of a virtio-blk ID, otherwise the first 20 hex digits of its SHA-256.
pub fn serial_for(file_name: &str, sha256_hex: impl FnOnce(&[u8]) -> String) -> [u8; ID_BYTES] {
    let mut id = [0u8; ID_BYTES];
    let s = if file_name.len() <= ID_BYTES {
        file_name.to_owned()
    } else {
        sha256_hex(file_name.as_bytes())
    };
    let n = s.len().min(ID_BYTES);
    id[..n].copy_from_slice(&s.as_bytes()[..n]);
    id
}

/// A virtio-blk device.
pub struct Block {
    disk: Arc<DiskImage>,
    serial: [u8; ID_BYTES],
    queue_sizes: Vec<u16>,
    config: [u8; CONFIG_LEN],
    features: u64,
    workers: Vec<QueueWorker>,
    /// Set before the workers are joined, so that they drop long requests.
    stop: Arc<AtomicBool>,
}

impl std::fmt::Debug for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Block")
            .field("disk", &self.disk.path)
            .field("queues", &self.queue_sizes.len())
            .finish_non_exhaustive()
    }
}

impl Block {
    /// A disk with `queues` request queues (clamped to 1..=[`MAX_QUEUES`]).
    pub fn new(disk: Arc<DiskImage>, serial: [u8; ID_BYTES], queues: usize) -> Block {
        let queues = queues.clamp(1, MAX_QUEUES);
        let bit = |b: u32| 1u64 << b;
        let mut features = bit(VIRTIO_BLK_F_SIZE_MAX)
            | bit(VIRTIO_BLK_F_SEG_MAX)
            | bit(VIRTIO_BLK_F_BLK_SIZE)
            | bit(VIRTIO_BLK_F_FLUSH)
            | bit(VIRTIO_BLK_F_TOPOLOGY);
        if queues > 1 {
            features |= bit(VIRTIO_BLK_F_MQ);
        }
        if disk.read_only {
            features |= bit(VIRTIO_BLK_F_RO);
        } else {
            features |= bit(VIRTIO_BLK_F_WRITE_ZEROES);
            if disk.discard {
                features |= bit(VIRTIO_BLK_F_DISCARD);
            }
        }
        let mut c = [0u8; CONFIG_LEN];
        let put32 = |c: &mut [u8; CONFIG_LEN], at: usize, v: u32| {
            c[at..at + 4].copy_from_slice(&v.to_le_bytes())
        };
        c[0..8].copy_from_slice(&(disk.size / SECTOR_SIZE).to_le_bytes());
        put32(&mut c, 8, SIZE_MAX);
        put32(&mut c, 12, SEG_MAX);
        put32(&mut c, 20, disk.logical_block);
        let per_physical = disk.physical_block / disk.logical_block;
        c[24] = per_physical.trailing_zeros() as u8;
        c[26..28].copy_from_slice(&(per_physical as u16).to_le_bytes());
        c[34..36].copy_from_slice(&(queues as u16).to_le_bytes());
        let granularity = disk.physical_block / SECTOR_SIZE as u32;
        put32(&mut c, 36, MAX_RANGE_SECTORS);
        put32(&mut c, 40, MAX_RANGES);
        put32(&mut c, 44, granularity);
        put32(&mut c, 48, MAX_RANGE_SECTORS);
        put32(&mut c, 52, MAX_RANGES);
        c[56] = u8::from(disk.discard);
        Block {
            disk,
            serial,
            queue_sizes: vec![QUEUE_SIZE; queues],
            config: c,
            features,
            workers: Vec::new(),
            stop: Arc::new(AtomicBool::new(false)),
        }
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u16 {
        virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK as u16
    }

    fn pci_class(&self) -> u32 {
        // Mass storage, "SCSI" subclass: what guests expect of a virtio disk.
        0x01_00_00
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, a: Activation) -> Result<(), VirtioError> {
        self.reset();
        self.stop = Arc::new(AtomicBool::new(false));
        for q in a.queues {
            let mut handler = RequestHandler::new(self.disk.clone(), self.serial, a.features)
                .stopped_by(self.stop.clone());
            let mem = a.mem.clone();
            let interrupt = a.interrupt.clone();
            let mut queue = q.queue;
            let index = q.index;
            let worker = QueueWorker::spawn(format!("virtio-blk-q{index}"), q.notify, move || {
                serve_queue(&mut queue, &mem, interrupt.as_ref(), index, |mem, chain| {
                    handler.process(mem, chain)
                })
            })
            .map_err(VirtioError::Thread)?;
            self.workers.push(worker);
        }
        Ok(())
    }

    fn reset(&mut self) {
        // A worker in a long request sees this between two pieces and fails the request;
        // then dropping the worker stops and joins its thread.
        self.stop.store(true, Ordering::Relaxed);
        self.workers.clear();
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        self.reset();
    }
}

#[derive(Debug, Clone, Copy)]
struct Desc {
    addr: u64,
    len: u32,
    write: bool,
}

/// Per-queue request state: scratch buffers reused across requests.
pub struct RequestHandler {
    disk: Arc<DiskImage>,
    serial: [u8; ID_BYTES],
    sectors: u64,
    discard: bool,
    write_zeroes: bool,
    descs: Vec<Desc>,
    data: Vec<Desc>,
    /// For requests direct I/O cannot take from guest memory as they are; allocated on the
    /// first such request.
    bounce: Option<Bounce>,
    /// Set when the device is reset or dropped: requests in hand and in the ring then fail.
    stop: Arc<AtomicBool>,
}

impl std::fmt::Debug for RequestHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestHandler").finish_non_exhaustive()
    }
}

/// Outcome of a request: status byte, plus how many data bytes were written for the driver.
type Outcome = (u8, u32);

const S_OK: u8 = VIRTIO_BLK_S_OK as u8;
const S_IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
const S_UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;

impl RequestHandler {
    /// A handler for a device whose driver accepted `features`.
    pub fn new(disk: Arc<DiskImage>, serial: [u8; ID_BYTES], features: u64) -> Self {
        RequestHandler {
            sectors: disk.size / SECTOR_SIZE,
            discard: features & (1 << VIRTIO_BLK_F_DISCARD) != 0 && disk.discard,
            write_zeroes: features & (1 << VIRTIO_BLK_F_WRITE_ZEROES) != 0 && !disk.read_only,
            disk,
            serial,
            descs: Vec::with_capacity(QUEUE_SIZE as usize),
            data: Vec::with_capacity(QUEUE_SIZE as usize),
            bounce: None,
            stop: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Give up on requests once `stop` is set: the one in hand fails at its next piece, the
    /// ones after it fail without touching the disk.
    pub fn stopped_by(mut self, stop: Arc<AtomicBool>) -> Self {
        self.stop = stop;
        self
    }

    /// Serve one request; returns the number of bytes written into the chain's
    /// device-writable buffers (data plus the status byte), for the used ring.
    pub fn process(
        &mut self,
        mem: &GuestMemoryMmap,
        chain: DescriptorChain<&GuestMemoryMmap>,
    ) -> u32 {
        self.descs.clear();
        let mut too_long = false;
        for d in chain {
            if self.descs.len() == MAX_DESCRIPTORS {
                too_long = true;
            }
            let desc = Desc {
                addr: d.addr().0,
                len: d.len(),
                write: d.is_write_only(),
            };
            if too_long {
                // Keep only the last descriptor: the status byte lives there.
                if let Some(last) = self.descs.last_mut() {
                    *last = desc;
                }
            } else {
                self.descs.push(desc);
            }
        }
        // The status is the last byte of the last descriptor, which must be device-writable.
        let Some(last) = self.descs.last().copied().filter(|d| d.write && d.len > 0) else {
            return 0;
        };
        let status_addr = GuestAddress(last.addr.wrapping_add(u64::from(last.len) - 1));
        let (status, written) = if too_long || self.stop.load(Ordering::Relaxed) {
            (S_IOERR, 0)
        } else {
            self.execute(mem)
        };
        if mem.write_obj(status, status_addr).is_err() {
            return written;
        }
        written.saturating_add(1)
    }

    /// Collect into `self.data` the bytes of the chain from `skip` bytes into the readable
    /// part (`write == false`) or the writable part minus its final status byte.
    fn collect(&mut self, write: bool, skip: u64) -> Option<u64> {
        self.data.clear();
        let mut total = 0u64;
        let mut to_skip = skip;
        let n = self.descs.len();
        for (i, d) in self.descs.iter().enumerate() {
            if d.write != write {
                continue;
            }
            let mut len = u64::from(d.len);
            if write && i == n - 1 {
                len -= 1;
            }
            let s = to_skip.min(len);
            to_skip -= s;
            let (addr, len) = (d.addr.checked_add(s)?, len - s);
            if len > 0 {
                self.data.push(Desc {
                    addr,
                    len: len as u32,
                    write,
                });
                total += len;
            }
        }
        (to_skip == 0).then_some(total)
    }

    fn execute(&mut self, mem: &GuestMemoryMmap) -> Outcome {
        // Readable descriptors first, then writable ones, as the spec lays a request out.
        let first_write = self
            .descs
            .iter()
            .position(|d| d.write)
            .unwrap_or(self.descs.len());
        if self.descs[first_write..].iter().any(|d| !d.write) {
            return (S_IOERR, 0);
        }
        let mut header = [0u8; HEADER_LEN as usize];
        if self.collect(false, 0).is_none_or(|n| n < HEADER_LEN)
            || self.gather(mem, 0, &mut header).is_err()
        {
            return (S_IOERR, 0);
        }
        let kind = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let mut sector = [0u8; 8];
        sector.copy_from_slice(&header[8..16]);
        let sector = u64::from_le_bytes(sector);
        match kind {
            VIRTIO_BLK_T_IN => match self.collect(true, 0) {
                Some(len) => match self.transfer(mem, sector, len, false) {
                    Ok(()) => (S_OK, u32::try_from(len).unwrap_or(u32::MAX)),
                    Err(_) => (S_IOERR, 0),
                },
                None => (S_IOERR, 0),
            },
            VIRTIO_BLK_T_OUT => match self.collect(false, HEADER_LEN) {
                Some(_) if self.disk.read_only => (S_IOERR, 0),
                Some(len) => match self.transfer(mem, sector, len, true) {
                    Ok(()) => (S_OK, 0),
                    Err(_) => (S_IOERR, 0),
                },
                None => (S_IOERR, 0),
            },
            VIRTIO_BLK_T_FLUSH => {
                // An ephemeral disk's writes are meant to vanish: nothing to make durable.
                if self.disk.read_only
                    || self.disk.overlay.is_some()
                    || self.disk.file.sync_data().is_ok()
                {
                    (S_OK, 0)
                } else {
                    (S_IOERR, 0)
                }
            }
            VIRTIO_BLK_T_GET_ID => {
                let Some(len) = self.collect(true, 0) else {
                    return (S_IOERR, 0);
                };
                let n = len.min(ID_BYTES as u64) as usize;
                match self.scatter(mem, 0, &self.serial[..n]) {
                    Ok(()) => (S_OK, n as u32),
                    Err(_) => (S_IOERR, 0),
                }
            }
            VIRTIO_BLK_T_DISCARD if self.discard => self.ranges(mem, false),
            VIRTIO_BLK_T_WRITE_ZEROES if self.write_zeroes => self.ranges(mem, true),
            _ => (S_UNSUPP, 0),
        }
    }

    /// Copy `out.len()` bytes starting `offset` bytes into `self.data` out of guest memory.
    fn gather(&self, mem: &GuestMemoryMmap, offset: u64, out: &mut [u8]) -> io::Result<()> {
        let mut skip = offset;
        let mut done = 0usize;
        for d in &self.data {
            if done == out.len() {
                break;
            }
            let len = u64::from(d.len);
            if skip >= len {
                skip -= len;
                continue;
            }
            let n = ((len - skip) as usize).min(out.len() - done);
            mem.read_slice(&mut out[done..done + n], GuestAddress(d.addr + skip))
                .map_err(|_| efault())?;
            done += n;
            skip = 0;
        }
        if done == out.len() {
            Ok(())
        } else {
            Err(efault())
        }
    }

    /// Copy `bytes` into `self.data`, starting `offset` bytes into it.
    fn scatter(&self, mem: &GuestMemoryMmap, offset: u64, bytes: &[u8]) -> io::Result<()> {
        let mut skip = offset;
        let mut done = 0usize;
        for d in &self.data {
            if done == bytes.len() {
                break;
            }
            let len = u64::from(d.len);
            if skip >= len {
                skip -= len;
                continue;
            }
            let n = ((len - skip) as usize).min(bytes.len() - done);
            mem.write_slice(&bytes[done..done + n], GuestAddress(d.addr + skip))
                .map_err(|_| efault())?;
            done += n;
            skip = 0;
        }
        if done == bytes.len() {
            Ok(())
        } else {
            Err(efault())
        }
    }

    /// Whether `len` bytes at `sector` lie inside the disk, and the byte offset if so.
    fn range(&self, sector: u64, len: u64) -> Option<u64> {
        let end = sector.checked_add(len.div_ceil(SECTOR_SIZE))?;
        (end <= self.sectors).then(|| sector * SECTOR_SIZE)
    }

    /// Move `len` bytes (those of `self.data`) between guest memory and the disk at `sector`.
    fn transfer(
        &mut self,
        mem: &GuestMemoryMmap,
        sector: u64,
        len: u64,
        write: bool,
    ) -> io::Result<()> {
        let einval = || io::Error::from_raw_os_error(libc::EINVAL);
        if !len.is_multiple_of(SECTOR_SIZE) {
            return Err(einval());
        }
        let offset = self.range(sector, len).ok_or_else(einval)?;
        if self.disk.overlay.is_some() {
            return self.bounced(mem, offset, len, write);
        }
        let Some(align) = self.disk.direct else {
            return move_data(&self.disk.data, mem, &self.data, offset, write, &self.stop);
        };
        // Only a guest that ignores the logical block size it was told gets here (a block
        // device of larger sectors than 512 bytes): like such a disk, fail.
        if !offset.is_multiple_of(align.offset) || !len.is_multiple_of(align.offset) {
            return Err(einval());
        }
        if buffers_fit(mem, &self.data, align) {
            match move_data(&self.disk.data, mem, &self.data, offset, write, &self.stop) {
                // The file system wants more than it said: the bounce buffer meets any need
                // up to a page.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
                r => return r,
            }
        }
        self.bounced(mem, offset, len, write)
    }

    /// [`Self::transfer`] through the bounce buffer, a piece at a time.
    fn bounced(
        &mut self,
        mem: &GuestMemoryMmap,
        offset: u64,
        len: u64,
        write: bool,
    ) -> io::Result<()> {
        let mut bounce = self.bounce.take().unwrap_or_else(Bounce::new);
        let buf = bounce.bytes();
        let mut done = 0u64;
        let result = loop {
            if done == len {
                break Ok(());
            }
            if self.stop.load(Ordering::Relaxed) {
                break Err(cancelled());
            }
            let n = (len - done).min(BOUNCE_LEN as u64);
            let piece = &mut buf[..n as usize];
            let r = if write {
                self.gather(mem, done, piece)
                    .and_then(|()| self.disk.write_piece(piece, offset + done))
            } else {
                self.disk
                    .read_piece(piece, offset + done)
                    .and_then(|()| self.scatter(mem, done, piece))
            };
            if let Err(e) = r {
                break Err(e);
            }
            done += n;
        };
        self.bounce = Some(bounce);
        result
    }

    fn ranges(&mut self, mem: &GuestMemoryMmap, zeroes: bool) -> Outcome {
        if self.disk.read_only {
            return (S_IOERR, 0);
        }
        let Some(len) = self.collect(false, HEADER_LEN) else {
            return (S_IOERR, 0);
        };
        if len == 0 || len % RANGE_LEN != 0 || len / RANGE_LEN > u64::from(MAX_RANGES) {
            return (S_IOERR, 0);
        }
        for i in 0..len / RANGE_LEN {
            let mut r = [0u8; RANGE_LEN as usize];
            if self.gather(mem, i * RANGE_LEN, &mut r).is_err() {
                return (S_IOERR, 0);
            }
            let mut s = [0u8; 8];
            s.copy_from_slice(&r[0..8]);
            let sector = u64::from_le_bytes(s);
            let count = u32::from_le_bytes([r[8], r[9], r[10], r[11]]);
            let flags = u32::from_le_bytes([r[12], r[13], r[14], r[15]]);
            let unmap = flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0;
            if flags & !VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0 || (!zeroes && unmap) {
                return (S_UNSUPP, 0);
            }
            if count > MAX_RANGE_SECTORS {
                return (S_IOERR, 0);
            }
            let bytes = u64::from(count) * SECTOR_SIZE;
            let Some(offset) = self.range(sector, bytes) else {
                return (S_IOERR, 0);
            };
            let first = if !zeroes || (unmap && self.disk.discard) {
                Zeroing::Deallocate
            } else {
                Zeroing::ZeroRange
            };
            let r = self.disk.clear(offset, bytes, first, &self.stop);
            if bytes > 0 && r.is_err() {
                return (S_IOERR, 0);
            }
        }
        (S_OK, 0)
    }
}

/// How many buffers one preadv/pwritev call takes from us: more than [`SEG_MAX`], so a request
/// within the limits we advertise is one system call (and one direct I/O, not several).
const IOV_BATCH: usize = 256;

/// Most bytes one preadv/pwritev call moves, between two looks at the stop flag. Larger than
/// the requests Linux sends (1280 KiB by default), so those stay one call; a page multiple, so
/// pieces of an aligned buffer stay aligned.
const IO_PIECE: usize = 4 << 20;

/// Size of a queue's bounce buffer: the piece of an unaligned request moved per system call.
const BOUNCE_LEN: usize = 1 << 20;
/// Alignment of the bounce buffer, the most direct I/O may ask of memory for us to use it.
const BOUNCE_ALIGN: usize = 4096;

/// A page of the bounce buffer.
#[derive(Clone, Copy)]
#[repr(C, align(4096))]
struct Page([u8; BOUNCE_ALIGN]);

/// A buffer aligned for direct I/O.
struct Bounce(Vec<Page>);

impl Bounce {
    fn new() -> Bounce {
        Bounce(vec![Page([0; BOUNCE_ALIGN]); BOUNCE_LEN / BOUNCE_ALIGN])
    }

    fn bytes(&mut self) -> &mut [u8] {
        let len = self.0.len() * size_of::<Page>();
        // SAFETY: the pages lie back to back (a Vec of a type whose size is a multiple of its
        // alignment has no gaps), are initialised, and stay mutably borrowed as long as the
        // slice lives.
        unsafe { std::slice::from_raw_parts_mut(self.0.as_mut_ptr().cast::<u8>(), len) }
    }
}

fn efault() -> io::Error {
    io::Error::from_raw_os_error(libc::EFAULT)
}

/// Whether every host buffer behind `segments` can go to direct I/O as it is.
fn buffers_fit(mem: &GuestMemoryMmap, segments: &[Desc], align: DirectAlign) -> bool {
    segments.iter().all(|seg| {
        GuestMemoryBackend::get_slices(mem, GuestAddress(seg.addr), seg.len as usize)
            .all(|s| s.is_ok_and(|s| align.buffer_fits(s.ptr_guard().as_ptr() as usize, s.len())))
    })
}

/// Move the bytes of `segments` between guest memory and the file at `offset`, with vectored
/// I/O straight on guest pages, [`IO_PIECE`] bytes at most per call; gives up with
/// `ECANCELED` between calls once `stop` is set.
fn move_data(
    file: &File,
    mem: &GuestMemoryMmap,
    segments: &[Desc],
    mut offset: u64,
    write: bool,
    stop: &AtomicBool,
) -> io::Result<()> {
    let empty = libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    };
    let mut iovs = [empty; IOV_BATCH];
    let mut n = 0usize;
    let mut pending = 0usize;
    for seg in segments {
        for slice in GuestMemoryBackend::get_slices(mem, GuestAddress(seg.addr), seg.len as usize) {
            let slice = slice.map_err(|_| efault())?;
            let mut ptr = slice.ptr_guard_mut().as_ptr();
            let mut left = slice.len();
            while left > 0 {
                let take = left.min(IO_PIECE - pending);
                iovs[n] = libc::iovec {
                    iov_base: ptr.cast(),
                    iov_len: take,
                };
                ptr = ptr.wrapping_add(take);
                left -= take;
                pending += take;
                n += 1;
                if n == IOV_BATCH || pending == IO_PIECE {
                    vectored_all(file, &mut iovs[..n], offset, write)?;
                    offset += pending as u64;
                    (n, pending) = (0, 0);
                    if stop.load(Ordering::Relaxed) {
                        return Err(cancelled());
                    }
                }
            }
        }
    }
    if n > 0 {
        vectored_all(file, &mut iovs[..n], offset, write)?;
    }
    Ok(())
}

/// preadv/pwritev until every buffer is done; a short transfer continues where it stopped.
fn vectored_all(
    file: &File,
    mut iovs: &mut [libc::iovec],
    mut offset: u64,
    write: bool,
) -> io::Result<()> {
    while !iovs.is_empty() {
        let off = libc::off_t::try_from(offset)
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: every iovec points into guest memory that `mem` (borrowed by our caller for
        // the whole call) keeps mapped, with a length inside its region, or (for a write) into
        // the static `ZEROES`; the kernel reads or writes only those bytes. The guest may race
        // on its bytes, which can only garble its own data.
        let r = unsafe {
            if write {
                libc::pwritev(file.as_raw_fd(), iovs.as_ptr(), iovs.len() as i32, off)
            } else {
                libc::preadv(file.as_raw_fd(), iovs.as_ptr(), iovs.len() as i32, off)
            }
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if r == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let mut done = r as usize;
        offset += done as u64;
        while let Some(first) = iovs.first_mut() {
            if done < first.iov_len {
                // SAFETY: advancing inside the same buffer, by less than its length.
                first.iov_base = unsafe { first.iov_base.cast::<u8>().add(done) }.cast();
                first.iov_len -= done;
                break;
            }
            done -= first.iov_len;
            iovs = &mut iovs[1..];
        }
    }
    Ok(())
}

pub mod overlay;

#[cfg(test)]
mod tests;
