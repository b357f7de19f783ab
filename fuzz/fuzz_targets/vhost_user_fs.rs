//! The vhost-user front end of the virtio-fs device, against a back end that says whatever the
//! fuzzer wants: the input is the byte stream the back end sends (replies to GET_FEATURES,
//! GET_PROTOCOL_FEATURES, GET_QUEUE_NUM, GET_VRING_BASE, acknowledgements, or garbage), written
//! into the socket up front and then ended. The device does its handshake, is activated on a
//! small memfd-backed guest memory, reset, activated again through a shared handle (a guest
//! reboot) and reset. Whatever the replies, nothing may panic or wait for the watchdog: the
//! stream always ends, so every read returns. Run with `-timeout=3` to catch a wait.

#![no_main]

use std::fs::File;
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::fd::FromRawFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use devices::virtio::fs::{QUEUE_SIZE, VhostUserFs};
use devices::virtio::{Activation, ActiveQueue, GuestMemoryMmap, Interrupt, VirtioDevice};
use libfuzzer_sys::fuzz_target;
use virtio_queue::{Queue, QueueT};
use vm_memory::{FileOffset, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

const MEM_SIZE: u64 = 128 * 1024;
/// More than any sequence of replies the front end reads in one input.
const MAX_INPUT: usize = 64 * 1024;
const RING: u16 = 16;

struct Irq(EventFd);
impl Interrupt for Irq {
    fn queue(&self, _: u16) {}
    fn config(&self) {}
    fn needs_reset(&self) {}
    fn queue_irqfd(&self, _: u16) -> Option<EventFd> {
        self.0.try_clone().ok()
    }
}

fn shared_mem() -> GuestMemoryMmap {
    // SAFETY: a valid NUL-terminated name and flags; the call touches no memory of ours.
    let fd = unsafe { libc::memfd_create(c"fuzz-ram".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create");
    // SAFETY: `fd` was just created and is owned by nobody else.
    let f = unsafe { File::from_raw_fd(fd) };
    f.set_len(MEM_SIZE).unwrap();
    GuestMemoryMmap::from_ranges_with_files([(
        GuestAddress(0),
        MEM_SIZE as usize,
        Some(FileOffset::new(f, 0)),
    )])
    .unwrap()
}

/// Every queue the device has, 16 entries each, rings packed at 0x400 per queue.
fn activation(mem: &GuestMemoryMmap, features: u64, queues: usize) -> Activation {
    let mut active = Vec::new();
    for i in 0..queues {
        let base = 0x400 * i as u32;
        let mut q = Queue::new(QUEUE_SIZE).unwrap();
        q.set_size(RING);
        q.set_desc_table_address(Some(base), Some(0));
        q.set_avail_ring_address(Some(base + 0x100), Some(0));
        q.set_used_ring_address(Some(base + 0x200), Some(0));
        q.set_ready(true);
        assert!(q.is_valid(mem));
        active.push(ActiveQueue {
            index: i as u16,
            queue: q,
            notify: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        });
    }
    Activation {
        mem: mem.clone(),
        features,
        queues: active,
        interrupt: Arc::new(Irq(EventFd::new(libc::EFD_NONBLOCK).unwrap())),
    }
}

fuzz_target!(|data: &[u8]| {
    let input = data[..data.len().min(MAX_INPUT)].to_vec();
    let (ours, mut theirs) = UnixStream::pair().unwrap();
    // The back end: its whole answer up front, then end-of-stream, and it keeps reading (and
    // discarding) what the front end sends until the front end closes the socket.
    let backend = std::thread::spawn(move || {
        let _ = theirs.write_all(&input);
        let _ = theirs.shutdown(Shutdown::Write);
        let mut sink = [0u8; 4096];
        while matches!(theirs.read(&mut sink), Ok(n) if n > 0) {}
    });
    if let Ok(mut dev) = VhostUserFs::new(ours, "fuzz", 16) {
        let queues = dev.queue_max_sizes().len();
        assert!((2..=17).contains(&queues));
        let mut cfg = [0u8; 40];
        dev.read_config(0, &mut cfg);
        assert_eq!(&cfg[..4], b"fuzz");
        let mem = shared_mem();
        let features = dev.features();
        let _ = dev.activate(activation(&mem, features, queues));
        dev.reset();
        let mut next = dev.share();
        drop(dev);
        let _ = next.activate(activation(&mem, features, queues));
        next.reset();
    }
    backend.join().unwrap();
});
