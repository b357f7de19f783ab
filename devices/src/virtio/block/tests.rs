use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::FromRawFd;
use std::time::{Duration, Instant};

use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress};

use super::*;
use crate::virtio::{ActiveQueue, GuestMemoryMmap, Interrupt};

const DESC_TABLE: u64 = 0x1000;
const AVAIL: u64 = 0x2000;
const USED: u64 = 0x3000;
const QSIZE: u16 = 16;
const DISK_SECTORS: u64 = 64;

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;

fn memfd(len: u64) -> File {
    // SAFETY: a new anonymous file; the name is a valid C string.
    let fd = unsafe { libc::memfd_create(c"rvmspawn-test-disk".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0);
    // SAFETY: `fd` was just created and is owned by nobody else.
    let f = unsafe { File::from_raw_fd(fd) };
    f.set_len(len).unwrap();
    f
}

struct Rig {
    mem: GuestMemoryMmap,
    queue: Queue,
    handler: RequestHandler,
    disk: Arc<DiskImage>,
    next_desc: u16,
    avail_idx: u16,
}

#[derive(Default)]
struct NoInterrupt;
impl Interrupt for NoInterrupt {
    fn queue(&self, _: u16) {}
    fn config(&self) {}
    fn needs_reset(&self) {}
}

impl Rig {
    fn new(read_only: bool) -> Rig {
        Rig::with_file(memfd(DISK_SECTORS * SECTOR_SIZE), read_only)
    }

    fn with_file(file: File, read_only: bool) -> Rig {
        Rig::with_sectors(file, DISK_SECTORS, read_only)
    }

    /// A disk of `sectors` sectors, sector N filled with the byte N % 256.
    fn with_sectors(file: File, sectors: u64, read_only: bool) -> Rig {
        file.set_len(sectors * SECTOR_SIZE).unwrap();
        let mut pattern = Vec::new();
        for s in 0..sectors {
            pattern.extend(std::iter::repeat_n(s as u8, SECTOR_SIZE as usize));
        }
        (&file).write_all(&pattern).unwrap();
        let disk =
            Arc::new(DiskImage::from_file(file, Path::new("test.raw"), read_only, true).unwrap());
        Rig::with_disk(disk)
    }

    fn with_disk(disk: Arc<DiskImage>) -> Rig {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RIG_MEM)]).unwrap();
        let mut queue = Queue::new(QSIZE).unwrap();
        queue.set_desc_table_address(Some(DESC_TABLE as u32), Some(0));
        queue.set_avail_ring_address(Some(AVAIL as u32), Some(0));
        queue.set_used_ring_address(Some(USED as u32), Some(0));
        queue.set_ready(true);
        assert!(queue.is_valid(&mem));
        let features = Block::new(disk.clone(), *b"serial-of-the-disk!!", 1).features;
        Rig {
            handler: RequestHandler::new(disk.clone(), *b"serial-of-the-disk!!", features),
            mem,
            queue,
            disk,
            next_desc: 0,
            avail_idx: 0,
        }
    }

    /// Put a chain of (addr, len, flags) descriptors on the avail ring; returns its head.
    fn chain(&mut self, descs: &[(u64, u32, u16)]) -> u16 {
        // Every earlier chain has been served by now, so the table can be reused.
        self.next_desc = 0;
        let head = self.next_desc;
        for (i, (addr, len, flags)) in descs.iter().enumerate() {
            let idx = self.next_desc;
            let next = if i + 1 < descs.len() { idx + 1 } else { 0 };
            let flags = if i + 1 < descs.len() {
                flags | F_NEXT
            } else {
                *flags
            };
            self.raw_desc(idx, *addr, *len, flags, next);
            self.next_desc += 1;
        }
        self.push(head);
        head
    }

    fn raw_desc(&self, idx: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = GuestAddress(DESC_TABLE + 16 * u64::from(idx));
        self.mem.write_obj(addr, at).unwrap();
        self.mem.write_obj(len, at.unchecked_add(8)).unwrap();
        self.mem.write_obj(flags, at.unchecked_add(12)).unwrap();
        self.mem.write_obj(next, at.unchecked_add(14)).unwrap();
    }

    fn push(&mut self, head: u16) {
        let slot = AVAIL + 4 + 2 * u64::from(self.avail_idx % QSIZE);
        self.mem.write_obj(head, GuestAddress(slot)).unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.mem
            .write_obj(self.avail_idx, GuestAddress(AVAIL + 2))
            .unwrap();
    }

    /// A discard / write-zeroes range (sector, count, flags) at guest address `at`.
    fn range(&self, at: u64, sector: u64, count: u32, flags: u32) {
        self.mem.write_obj(sector, GuestAddress(at)).unwrap();
        self.mem.write_obj(count, GuestAddress(at + 8)).unwrap();
        self.mem.write_obj(flags, GuestAddress(at + 12)).unwrap();
    }

    fn header(&self, at: u64, kind: u32, sector: u64) {
        self.mem.write_obj(kind, GuestAddress(at)).unwrap();
        self.mem.write_obj(0u32, GuestAddress(at + 4)).unwrap();
        self.mem.write_obj(sector, GuestAddress(at + 8)).unwrap();
    }

    /// Serve the queue; returns (used length, status byte at `status_at`) of the last request.
    fn run(&mut self, status_at: u64) -> (u32, u8) {
        self.mem.write_obj(0xeeu8, GuestAddress(status_at)).unwrap();
        let handler = &mut self.handler;
        assert!(serve_queue(
            &mut self.queue,
            &self.mem,
            &NoInterrupt,
            0,
            |m, c| { handler.process(m, c) }
        ));
        let used_idx: u16 = self.mem.read_obj(GuestAddress(USED + 2)).unwrap();
        let elem = USED + 4 + 8 * u64::from(used_idx.wrapping_sub(1) % QSIZE);
        let len: u32 = self.mem.read_obj(GuestAddress(elem + 4)).unwrap();
        (len, self.mem.read_obj(GuestAddress(status_at)).unwrap())
    }

    fn disk_bytes(&self) -> Vec<u8> {
        let mut f = self.disk.file();
        f.seek(SeekFrom::Start(0)).unwrap();
        let mut v = Vec::new();
        f.read_to_end(&mut v).unwrap();
        v
    }
}

/// Guest memory of the rig.
const RIG_MEM: usize = 8 << 20;
const HDR: u64 = 0x10000;
const DATA: u64 = 0x20000;
const STATUS: u64 = 0x30000;

#[test]
fn reads_into_scattered_buffers() {
    let mut r = Rig::new(false);
    r.header(HDR, VIRTIO_BLK_T_IN, 3);
    r.chain(&[
        (HDR, 16, 0),
        (DATA, 512, F_WRITE),
        (DATA + 0x1000, 1024, F_WRITE),
        (STATUS, 1, F_WRITE),
    ]);
    assert_eq!(r.run(STATUS), (1536 + 1, S_OK));
    let mut buf = vec![0u8; 1024];
    r.mem
        .read_slice(&mut buf[..512], GuestAddress(DATA))
        .unwrap();
    assert!(buf[..512].iter().all(|b| *b == 3));
    r.mem
        .read_slice(&mut buf, GuestAddress(DATA + 0x1000))
        .unwrap();
    assert!(buf[..512].iter().all(|b| *b == 4) && buf[512..].iter().all(|b| *b == 5));
}

#[test]
fn writes_reach_the_file_and_flush_succeeds() {
    let mut r = Rig::new(false);
    r.header(HDR, VIRTIO_BLK_T_OUT, 10);
    r.mem
        .write_slice(&[0xab; 1024], GuestAddress(DATA))
        .unwrap();
    // Header and data in one descriptor: framing is the driver's choice.
    r.mem
        .write_slice(&[0xab; 1024], GuestAddress(HDR + 16))
        .unwrap();
    r.chain(&[(HDR, 16 + 1024, 0), (STATUS, 1, F_WRITE)]);
    assert_eq!(r.run(STATUS), (1, S_OK));
    let disk = r.disk_bytes();
    assert!(disk[10 * 512..12 * 512].iter().all(|b| *b == 0xab));
    assert!(disk[12 * 512..13 * 512].iter().all(|b| *b == 12));
    r.header(HDR, VIRTIO_BLK_T_FLUSH, 0);
    r.chain(&[(HDR, 16, 0), (STATUS, 1, F_WRITE)]);
    assert_eq!(r.run(STATUS), (1, S_OK));
}

#[test]
fn an_ephemeral_disk_takes_writes_and_zeroes_without_changing_the_image() {
    // A read-only image file (as an ephemeral run opens it) with the overlay in front.
    let file = memfd(DISK_SECTORS * SECTOR_SIZE);
    let mut pattern = Vec::new();
    for s in 0..DISK_SECTORS {
        pattern.extend(std::iter::repeat_n(s as u8, SECTOR_SIZE as usize));
    }
    (&file).write_all(&pattern).unwrap();
    let mut disk = DiskImage::from_file(file, Path::new("base.raw"), true, true).unwrap();
    disk.make_ephemeral(true).unwrap();
    assert!(disk.ephemeral() && !disk.read_only() && disk.discard());
    let mut r = Rig::with_disk(Arc::new(disk));
    assert_eq!(r.handler.disk.read_only as u8, 0);
    assert_eq!(r.disk.read_only as u8, 0);
    // Write 3 sectors from sector 7 (a partial cluster at each end), then read 16 back.
    r.header(HDR, VIRTIO_BLK_T_OUT, 7);
    r.mem
        .write_slice(&[0xab; 3 * 512], GuestAddress(DATA))
        .unwrap();
    r.chain(&[(HDR, 16, 0), (DATA, 3 * 512, 0), (STATUS, 1, F_WRITE)]);
    assert_eq!(r.run(STATUS), (1, S_OK));
    // Write-zeroes of a whole cluster (sectors 16..24) and a discard of sector 30.
    r.header(HDR, VIRTIO_BLK_T_WRITE_ZEROES, 0);
    r.range(DATA, 16, 8, 1);
    r.chain(&[(HDR, 16, 0), (DATA, 16, 0), (STATUS, 1, F_WRITE)]);
    assert_eq!(r.run(STATUS), (1, S_OK));
    r.header(HDR, VIRTIO_BLK_T_DISCARD, 0);
    r.range(DATA, 30, 1, 0);
    r.chain(&[(HDR, 16, 0), (DATA, 16, 0), (STATUS, 1, F_WRITE)]);
    assert_eq!(r.run(STATUS), (1, S_OK));
    r.header(HDR, VIRTIO_BLK_T_IN, 0);
    r.chain(&[
        (HDR, 16, 0),
        (DATA, 32 * 512, F_WRITE),
        (STATUS, 1, F_WRITE),
    ]);
    assert_eq!(r.run(STATUS), (32 * 512 + 1, S_OK));
    let mut got = vec![0u8; 32 * 512];
    r.mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
    for s in 0..32usize {
        let want = match s {
            7..=9 => 0xab,
            16..=23 | 30 => 0,
            _ => s as u8,
        };
        assert!(
            got[s * 512..(s + 1) * 512].iter().all(|b| *b == want),
            "sector {s}"
        );
    }
    // A flush succeeds; the image itself is untouched.
    r.header(HDR, VIRTIO_BLK_T_FLUSH, 0);
    r.chain(&[(HDR, 16, 0), (STATUS, 1, F_WRITE)]);
    assert_eq!(r.run(STATUS), (1, S_OK));
    assert!(r.disk_bytes() == pattern, "the image changed");
}

#[test]
fn read_only_disks_refuse_writes() {
    let mut r = Rig::new(true);
    assert_ne!(r.handler.disk.read_only as u8, 0);
    r.header(HDR, VIRTIO_BLK_T_OUT, 0);
    r.chain(&[(HDR, 16, 0), (DATA, 512, 0), (STATUS, 1, F_WRITE)]);
    assert_eq!(r.run(STATUS), (1, S_IOERR));
    assert!(r.disk_bytes()[..512].iter().all(|b| *b == 0));
    // Discard is not offered, so it is unsupported.
    r.header(HDR, VIRTIO_BLK_T_DISCARD, 0);
    r.chain(&[(HDR, 16, 0), (DATA, 16, 0), (STATUS, 1, F_WRITE)]);
    assert_eq!(r.run(STATUS), (1, S_UNSUPP));
}

#[test]
fn get_id_returns_the_serial() {
    let mut r = Rig::new(false);
    r.header(HDR, VIRTIO_BLK_T_GET_ID, 0);
    r.chain(&[(HDR, 16, 0), (DATA, 20, F_WRITE), (STATUS, 1, F_WRITE)]);
    assert_eq!(r.run(STATUS), (21, S_OK));
    let mut id = [0u8; 20];
    r.mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    assert_eq!(&id, b"serial-of-the-disk!!");
}

#[test]
fn discard_and_write_zeroes() {
    let mut r = Rig::new(false);
    assert!(r.disk.discard(), "memfds can punch holes");
    r.header(HDR, VIRTIO_BLK_T_DISCARD, 0);
    r.range(DATA, 2, 2, 0);
    r.range(DATA + 16, 8, 1, 0);
    r.chain(&[(HDR, 16, 0), (DATA, 32, 0), (STATUS, 1, F_WRITE)]);
    assert_eq!(r.run(STATUS), (1, S_OK));
    let disk = r.disk_bytes();
    assert!(disk[2 * 512..4 * 512].iter().all(|b| *b == 0));
    assert!(disk[4 * 512..5 * 512].iter().all(|b| *b == 4));
    assert!(disk[8 * 512..9 * 512].iter().all(|b| *b == 0));
    // The unmap flag is for write-zeroes only.
    r.range(DATA, 2, 2, 1);
    r.chain(&[(HDR, 16, 0), (DATA, 16, 0), (STATUS, 1, F_WRITE)]);
    assert_eq!(r.run(STATUS), (1, S_UNSUPP));
    r.header(HDR, VIRTIO_BLK_T_WRITE_ZEROES, 0);
    r.range(DATA, 20, 3, 0);
    r.range(DATA + 16, 30, 1, 1);
    r.chain(&[(HDR, 16, 0), (DATA, 32, 0), (STATUS, 1, F_WRITE)]);
    assert_eq!(r.run(STATUS), (1, S_OK));
    let disk = r.disk_bytes();
    assert!(disk[20 * 512..23 * 512].iter().all(|b| *b == 0));
    assert!(disk[23 * 512..24 * 512].iter().all(|b| *b == 23));
    assert!(disk[30 * 512..31 * 512].iter().all(|b| *b == 0));
    // A range past the end, a ragged range list, too many ranges.
    r.range(DATA, DISK_SECTORS - 1, 2, 0);
    r.chain(&[(HDR, 16, 0), (DATA, 16, 0), (STATUS, 1, F_WRITE)]);
    assert_eq!(r.run(STATUS), (1, S_IOERR));
    r.chain(&[(HDR, 16, 0), (DATA, 15, 0), (STATUS, 1, F_WRITE)]);
    assert_eq!(r.run(STATUS), (1, S_IOERR));
    r.chain(&[(HDR, 16, 0), (DATA, 16 * 33, 0), (STATUS, 1, F_WRITE)]);
    assert_eq!(r.run(STATUS), (1, S_IOERR));
}

#[test]
fn write_zeroes_are_written_where_the_file_cannot_make_them() {
    // A memfd without discard: no FALLOC_FL_ZERO_RANGE, no hole punching; the device writes.
    let file = memfd(DISK_SECTORS * SECTOR_SIZE);
    (&file)
        .write_all(&[0x5a; (DISK_SECTORS * SECTOR_SIZE) as usize])
        .unwrap();
    let disk = Arc::new(DiskImage::from_file(file, Path::new("z.raw"), false, false).unwrap());
    let mut r = Rig::with_disk(disk);
    r.header(HDR, VIRTIO_BLK_T_WRITE_ZEROES, 0);
    r.mem.write_obj(7u64, GuestAddress(DATA)).unwrap();
    r.mem.write_obj(5u32, GuestAddress(DATA + 8)).unwrap();
    r.mem.write_obj(0u32, GuestAddress(DATA + 12)).unwrap();
    r.chain(&[(HDR, 16, 0), (DATA, 16, 0), (STATUS, 1, F_WRITE)]);
    assert_eq!(r.run(STATUS), (1, S_OK));
    let disk = r.disk_bytes();
    assert!(disk[..7 * 512].iter().all(|b| *b == 0x5a));
    assert!(disk[7 * 512..12 * 512].iter().all(|b| *b == 0));
    assert!(disk[12 * 512..].iter().all(|b| *b == 0x5a));
}

#[test]
fn malformed_requests_fail_cleanly() {
    let mut r = Rig::new(false);
    // Past the end, and a sector number that would overflow.
    for sector in [DISK_SECTORS, DISK_SECTORS - 1, u64::MAX] {
        r.header(HDR, VIRTIO_BLK_T_IN, sector);
        r.chain(&[(HDR, 16, 0), (DATA, 1024, F_WRITE), (STATUS, 1, F_WRITE)]);
        assert_eq!(r.run(STATUS), (1, S_IOERR), "sector {sector}");
    }
    // Not a whole number of sectors.
    r.header(HDR, VIRTIO_BLK_T_IN, 0);
    r.chain(&[(HDR, 16, 0), (DATA, 100, F_WRITE), (STATUS, 1, F_WRITE)]);
    assert_eq!(r.run(STATUS), (1, S_IOERR));
    // A short header.
    r.chain(&[(HDR, 8, 0), (STATUS, 1, F_WRITE)]);
    assert_eq!(r.run(STATUS), (1, S_IOERR));
    // A readable buffer after a writable one.
    r.header(HDR, VIRTIO_BLK_T_IN, 0);
    r.chain(&[
        (HDR, 16, 0),
        (DATA, 512, F_WRITE),
        (DATA, 512, 0),
        (STATUS, 1, F_WRITE),
    ]);
    assert_eq!(r.run(STATUS), (1, S_IOERR));
    // Data outside guest memory.
    r.chain(&[(HDR, 16, 0), (1 << 30, 512, F_WRITE), (STATUS, 1, F_WRITE)]);
    assert_eq!(r.run(STATUS), (1, S_IOERR));
    // A write with its "data" in a device-writable buffer has no data at all: a zero-length
    // write is fine, but the buffer must not be read as data.
    r.header(HDR, VIRTIO_BLK_T_OUT, 0);
    r.chain(&[(HDR, 16, 0), (STATUS, 1, F_WRITE)]);
    assert_eq!(r.run(STATUS), (1, S_OK));
    // An unknown request type.
    r.header(HDR, 0x1234, 0);
    r.chain(&[(HDR, 16, 0), (STATUS, 1, F_WRITE)]);
    assert_eq!(r.run(STATUS), (1, S_UNSUPP));
    // No writable byte for the status at all: nothing is written, used length 0.
    r.header(HDR, VIRTIO_BLK_T_IN, 0);
    r.chain(&[(HDR, 16, 0), (DATA, 512, 0)]);
    assert_eq!(r.run(STATUS), (0, 0xee));
    assert!(r.disk_bytes()[..512].iter().all(|b| *b == 0));
}

#[test]
fn a_descriptor_loop_ends() {
    let mut r = Rig::new(false);
    r.header(HDR, VIRTIO_BLK_T_IN, 0);
    // Descriptor 0 chains to itself forever.
    r.raw_desc(0, HDR, 16, F_NEXT, 0);
    r.push(0);
    r.next_desc = 1;
    let (len, status) = r.run(STATUS);
    assert_eq!((len, status), (0, 0xee));
}

#[test]
fn config_space_describes_the_disk() {
    let file = memfd(10 << 20);
    let disk = Arc::new(DiskImage::from_file(file, Path::new("d"), false, true).unwrap());
    let b = Block::new(disk, [0; ID_BYTES], 4);
    let mut c = [0u8; CONFIG_LEN];
    b.read_config(0, &mut c);
    assert_eq!(u64::from_le_bytes(c[0..8].try_into().unwrap()), 20480);
    assert_eq!(u32::from_le_bytes(c[12..16].try_into().unwrap()), SEG_MAX);
    assert_eq!(u16::from_le_bytes(c[34..36].try_into().unwrap()), 4);
    assert_eq!(c[56], 1);
    assert_ne!(b.features() & (1 << VIRTIO_BLK_F_MQ), 0);
    assert_ne!(b.features() & (1 << VIRTIO_BLK_F_DISCARD), 0);
    assert_eq!(b.features() & (1 << VIRTIO_BLK_F_RO), 0);
    assert_eq!(b.queue_max_sizes().len(), 4);
    let mut past = [0xffu8; 8];
    b.read_config(u64::MAX - 2, &mut past);
    assert_eq!(past, [0; 8]);
}

#[test]
fn image_files_are_locked_and_errors_have_errnos() {
    let dir = std::env::temp_dir().join(format!("rvmspawn-blk-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("disk.raw");
    std::fs::write(&path, vec![0u8; 4096]).unwrap();
    let opts = DiskOptions {
        read_only: false,
        discard: true,
        ephemeral: false,
    };
    let first = DiskImage::open(&path, opts).unwrap();
    assert_eq!(first.size(), 4096);
    let second = DiskImage::open(&path, opts).unwrap_err();
    assert!(matches!(second, DiskError::Locked(_)));
    assert_eq!(second.errno(), libc::EBUSY);
    assert!(second.to_string().contains("disk.raw"));
    drop(first);
    drop(DiskImage::open(&path, opts).unwrap());
    let missing = DiskImage::open(&dir.join("nope.raw"), opts).unwrap_err();
    assert_eq!(missing.errno(), libc::ENOENT);
    let not_image = DiskImage::open(&dir, opts).unwrap_err();
    assert!(not_image.errno() == libc::EISDIR || not_image.errno() == libc::EINVAL);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn serial_is_the_name_or_a_hash() {
    assert_eq!(
        &serial_for("disk.raw", |_| unreachable!())[..9],
        b"disk.raw\0"
    );
    let long = serial_for("a-name-longer-than-twenty.raw", |_| {
        "0123456789abcdef0123456789".into()
    });
    assert_eq!(&long, b"0123456789abcdef0123");
}

/// A file for a disk image on a file system that takes O_DIRECT for 512-byte sectors: in the
/// temporary directory, /var/tmp or the build's target directory, the first that does. Panics
/// when none does: the direct path's tests must not quietly run the buffered one.
fn direct_capable_file() -> (File, PathBuf) {
    let candidates = [
        std::env::temp_dir(),
        PathBuf::from("/var/tmp"),
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"),
    ];
    let mut tried = Vec::new();
    for dir in candidates {
        let path = dir.join(format!("rvmspawn-direct-{}.raw", std::process::id()));
        let Ok(file) = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
        else {
            tried.push(format!("{}: cannot create a file", dir.display()));
            continue;
        };
        let _ = std::fs::remove_file(&path);
        match dio_alignment(&file) {
            Dio::Aligned(a) if a.offset <= SECTOR_SIZE && reopen_direct(&file, true).is_some() => {
                return (file, path);
            }
            other => tried.push(format!("{}: {other:?}", dir.display())),
        }
    }
    panic!(
        "no file system here takes O_DIRECT for 512-byte sectors, so the direct path cannot be tested: {tried:?}"
    );
}

/// F_GETFL of a descriptor.
fn status_flags(file: &File) -> libc::c_int {
    // SAFETY: F_GETFL only reads the descriptor's flags.
    unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) }
}

#[test]
fn direct_reads_and_writes_with_bounce_buffers_where_unaligned() {
    let (file, path) = direct_capable_file();
    // 4 MiB: room for a request of several bounce-buffer pieces.
    let sectors = 8192;
    let mut r = Rig::with_sectors(file, sectors, false);
    assert!(r.disk.direct(), "{} takes O_DIRECT", path.display());
    assert_ne!(status_flags(&r.disk.data) & libc::O_DIRECT, 0);
    assert_eq!(status_flags(r.disk.file()) & libc::O_DIRECT, 0);
    // Aligned buffers go straight to the file: no bounce buffer is made.
    r.header(HDR, VIRTIO_BLK_T_OUT, 4);
    r.mem
        .write_slice(&[0x11; 1024], GuestAddress(DATA))
        .unwrap();
    r.chain(&[(HDR, 16, 0), (DATA, 1024, 0), (STATUS, 1, F_WRITE)]);
    assert_eq!(r.run(STATUS), (1, S_OK));
    assert!(r.handler.bounce.is_none(), "an aligned write went direct");
    // An odd address: through the bounce buffer.
    r.header(HDR, VIRTIO_BLK_T_OUT, 6);
    r.mem
        .write_slice(&[0x22; 512], GuestAddress(DATA + 3))
        .unwrap();
    r.chain(&[(HDR, 16, 0), (DATA + 3, 512, 0), (STATUS, 1, F_WRITE)]);
    assert_eq!(r.run(STATUS), (1, S_OK));
    assert!(r.handler.bounce.is_some(), "an unaligned write bounced");
    let disk = r.disk_bytes();
    assert!(disk[4 * 512..6 * 512].iter().all(|b| *b == 0x11));
    assert!(disk[6 * 512..7 * 512].iter().all(|b| *b == 0x22));
    assert!(disk[7 * 512..8 * 512].iter().all(|b| *b == 7));
    // Reads, aligned and not, into scattered buffers, each see both writes.
    for (base, odd) in [(DATA + 0x1000, 0), (DATA + 0x4000, 0x201)] {
        r.header(HDR, VIRTIO_BLK_T_IN, 3);
        r.chain(&[
            (HDR, 16, 0),
            (base + odd, 1536, F_WRITE),
            (base + 0x1000 + odd, 1024, F_WRITE),
            (STATUS, 1, F_WRITE),
        ]);
        assert_eq!(r.run(STATUS), (2561, S_OK));
        let mut got = vec![0u8; 2560];
        r.mem
            .read_slice(&mut got[..1536], GuestAddress(base + odd))
            .unwrap();
        r.mem
            .read_slice(&mut got[1536..], GuestAddress(base + 0x1000 + odd))
            .unwrap();
        let want: Vec<u8> = [3, 0x11, 0x11, 0x22, 7]
            .iter()
            .flat_map(|b| [*b; 512])
            .collect();
        assert_eq!(got, want, "read into buffers at +{odd:#x}");
    }
    // A request larger than the bounce buffer, from an odd address, then read back direct.
    let len = 0x18_0000u64;
    let pattern: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    let (src, dst) = (0x10_0001u64, 0x40_0000u64);
    r.mem.write_slice(&pattern, GuestAddress(src)).unwrap();
    r.header(HDR, VIRTIO_BLK_T_OUT, 1000);
    r.chain(&[(HDR, 16, 0), (src, len as u32, 0), (STATUS, 1, F_WRITE)]);
    assert_eq!(r.run(STATUS), (1, S_OK));
    r.header(HDR, VIRTIO_BLK_T_IN, 1000);
    r.chain(&[
        (HDR, 16, 0),
        (dst, len as u32, F_WRITE),
        (STATUS, 1, F_WRITE),
    ]);
    assert_eq!(r.run(STATUS), (len as u32 + 1, S_OK));
    let mut got = vec![0u8; len as usize];
    r.mem.read_slice(&mut got, GuestAddress(dst)).unwrap();
    assert!(got == pattern, "a multi-piece bounced write reads back");
    let disk = r.disk_bytes();
    assert!(disk[1000 * 512..1000 * 512 + len as usize] == pattern[..]);
    r.header(HDR, VIRTIO_BLK_T_FLUSH, 0);
    r.chain(&[(HDR, 16, 0), (STATUS, 1, F_WRITE)]);
    assert_eq!(r.run(STATUS), (1, S_OK));
}

#[test]
fn tmpfs_like_files_are_buffered_both_ways() {
    // A memfd is tmpfs: it either refuses O_DIRECT or does not report its alignment.
    let r = Rig::new(false);
    assert!(!r.disk.direct());
    assert_eq!(status_flags(&r.disk.data) & libc::O_DIRECT, 0);
}

#[test]
fn a_reset_ends_a_long_write_zeroes_fallback_quickly() {
    // 1 GiB, sparse. memfds have no FALLOC_FL_ZERO_RANGE, and without discard nothing else
    // makes zeroes: the device writes them.
    let size = 1u64 << 30;
    let file = memfd(size);
    assert!(
        fallocate(
            &file,
            libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
            0,
            4096
        )
        .is_err(),
        "the test needs a file that makes the device write its zeroes"
    );
    let disk = Arc::new(DiskImage::from_file(file, Path::new("big.raw"), false, false).unwrap());
    let mut r = Rig::with_disk(disk.clone());
    // 32 ranges of the whole disk: 32 GiB of zeroes to write, many seconds of work.
    r.header(HDR, VIRTIO_BLK_T_WRITE_ZEROES, 0);
    for i in 0..u64::from(MAX_RANGES) {
        let at = DATA + i * RANGE_LEN;
        r.mem.write_obj(0u64, GuestAddress(at)).unwrap();
        r.mem
            .write_obj((size / SECTOR_SIZE) as u32, GuestAddress(at + 8))
            .unwrap();
        r.mem.write_obj(0u32, GuestAddress(at + 12)).unwrap();
    }
    r.chain(&[
        (HDR, 16, 0),
        (DATA, MAX_RANGES * RANGE_LEN as u32, 0),
        (STATUS, 1, F_WRITE),
    ]);
    r.mem.write_obj(0xeeu8, GuestAddress(STATUS)).unwrap();
    let Rig { mem, queue, .. } = r;
    let mut block = Block::new(disk.clone(), *b"serial-of-the-disk!!", 1);
    let features = block.features();
    block
        .activate(Activation {
            mem: mem.clone(),
            features,
            queues: vec![ActiveQueue {
                index: 0,
                queue,
                notify: vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            }],
            interrupt: Arc::new(NoInterrupt),
        })
        .unwrap();
    // The worker serves the queue when it starts; wait until zeroes reach the file.
    let started = Instant::now();
    while disk.file().metadata().unwrap().blocks() == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the write-zeroes never started"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    let t = Instant::now();
    block.reset();
    let took = t.elapsed();
    eprintln!("reset during a 32 GiB write-zeroes fallback took {took:?}");
    assert!(took < Duration::from_secs(1), "reset took {took:?}");
    // The request was failed, not reported done, and the worker wrote nothing more.
    let status: u8 = mem.read_obj(GuestAddress(STATUS)).unwrap();
    assert_eq!(status, S_IOERR);
    let used: u16 = mem.read_obj(GuestAddress(USED + 2)).unwrap();
    assert_eq!(used, 1);
}

/// A 5 MiB write and read from one descriptor each: more than one system call's piece.
fn large_request_round_trip(file: File) {
    let mut r = Rig::with_sectors(file, 12288, false);
    let len = 5u64 << 20;
    assert!(len > IO_PIECE as u64);
    let pattern: Vec<u8> = (0..len).map(|i| (i % 253) as u8).collect();
    let buf = 0x10_0000u64;
    r.mem.write_slice(&pattern, GuestAddress(buf)).unwrap();
    r.header(HDR, VIRTIO_BLK_T_OUT, 1000);
    r.chain(&[(HDR, 16, 0), (buf, len as u32, 0), (STATUS, 1, F_WRITE)]);
    assert_eq!(r.run(STATUS), (1, S_OK));
    assert!(r.disk_bytes()[1000 * 512..1000 * 512 + len as usize] == pattern[..]);
    assert!(r.handler.bounce.is_none());
    r.mem
        .write_slice(&vec![0u8; len as usize], GuestAddress(buf))
        .unwrap();
    r.header(HDR, VIRTIO_BLK_T_IN, 1000);
    r.chain(&[
        (HDR, 16, 0),
        (buf, len as u32, F_WRITE),
        (STATUS, 1, F_WRITE),
    ]);
    assert_eq!(r.run(STATUS), (len as u32 + 1, S_OK));
    let mut got = vec![0u8; len as usize];
    r.mem.read_slice(&mut got, GuestAddress(buf)).unwrap();
    assert!(got == pattern);
}

#[test]
fn large_requests_move_in_pieces_buffered() {
    large_request_round_trip(memfd(0));
}

#[test]
fn large_requests_move_in_pieces_direct() {
    large_request_round_trip(direct_capable_file().0);
}
