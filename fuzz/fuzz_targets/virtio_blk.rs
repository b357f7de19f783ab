//! The virtio-blk request path, from whatever the guest put in memory: descriptor table,
//! available ring, request headers, data and discard ranges are all fuzzer bytes.
//! The device must complete or fail every request without panicking, hanging or touching
//! anything outside guest memory and the disk. A third disk is ephemeral (`-x`): its requests
//! go through the copy-on-write overlay, which must never write the image.

#![no_main]

use std::fs::File;
use std::os::fd::FromRawFd;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use devices::virtio::block::{Block, DiskImage, RequestHandler, SECTOR_SIZE};
use devices::virtio::{GuestMemoryMmap, VirtioDevice, serve_queue};
use libfuzzer_sys::fuzz_target;
use rvmspawn_fuzz::Quiet;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

const MEM_SIZE: usize = 64 * 1024;
// A compact layout, so that a short input covers the rings and the first buffers: the input is
// copied to guest address 0, the rest of memory is zero.
const DESC_TABLE: u32 = 0x0; // 16 descriptors at most
const AVAIL: u32 = 0x100;
const USED: u32 = 0x200;

/// 0: writable, 1: read-only, 2: ephemeral (its image, 128 sectors of 0xa5, is
/// checked after every input).
fn disk(which: usize) -> Arc<DiskImage> {
    static DISKS: OnceLock<[Arc<DiskImage>; 3]> = OnceLock::new();
    let disks = DISKS.get_or_init(|| {
        let make = |ro, ephemeral: bool| {
            // SAFETY: a new anonymous file with a valid name.
            let fd = unsafe { libc::memfd_create(c"fuzz-disk".as_ptr(), libc::MFD_CLOEXEC) };
            assert!(fd >= 0);
            // SAFETY: `fd` is new and owned by nobody else.
            let f = unsafe { File::from_raw_fd(fd) };
            f.set_len(128 * SECTOR_SIZE).unwrap();
            if ephemeral {
                use std::os::unix::fs::FileExt;
                f.write_all_at(&IMAGE, 0).unwrap();
            }
            let mut d = DiskImage::from_file(f, Path::new("fuzz.raw"), ro, true).unwrap();
            if ephemeral {
                d.make_ephemeral(true).unwrap();
            }
            Arc::new(d)
        };
        [make(false, false), make(true, false), make(true, true)]
    });
    disks[which].clone()
}

/// The ephemeral disk's image content.
static IMAGE: [u8; 128 * SECTOR_SIZE as usize] = [0xa5; 128 * SECTOR_SIZE as usize];

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let (params, body) = data.split_at(4);
    let size = 1u16 << (params[0] % 5); // 1..=16
    let which = usize::from(params[1] & 1) + usize::from(params[1] & 4 != 0) * 2;
    let which = which.min(2);
    let event_idx = params[1] & 2 != 0;
    let features = u64::from(params[2]) << 8 | u64::from(params[3]);

    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
    let body = &body[..body.len().min(MEM_SIZE)];
    mem.write_slice(body, GuestAddress(0)).unwrap();

    let mut queue = Queue::new(256).unwrap();
    queue.set_size(size);
    queue.set_desc_table_address(Some(DESC_TABLE), Some(0));
    queue.set_avail_ring_address(Some(AVAIL), Some(0));
    queue.set_used_ring_address(Some(USED), Some(0));
    queue.set_event_idx(event_idx);
    queue.set_ready(true);
    if !queue.is_valid(&mem) {
        return;
    }
    let image = disk(which);
    let offered = Block::new(image.clone(), *b"fuzz-serial-01234567", 1).features();
    let mut handler = RequestHandler::new(image, *b"fuzz-serial-01234567", offered & !features);
    // Twice: the second pass sees the ring as the first left it.
    for _ in 0..2 {
        if !serve_queue(&mut queue, &mem, &Quiet, 0, |m, c| handler.process(m, c)) {
            break;
        }
    }
    if which == 2 {
        use std::os::unix::fs::FileExt;
        let mut image = vec![0u8; IMAGE.len()];
        disk(2).file().read_exact_at(&mut image, 0).unwrap();
        assert!(image[..] == IMAGE[..], "an ephemeral disk wrote its image");
    }
});
