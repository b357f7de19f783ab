//! Test helpers: the driver's side of a split queue in test memory, and an interrupt sink
//! that counts.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress};

use vmm_sys_util::eventfd::EventFd;

use super::{Activation, ActiveQueue, GuestMemoryMmap, Interrupt, VirtioDevice};

/// Queue size of the test rings.
pub const QSIZE: u16 = 16;
/// VIRTQ_DESC_F_NEXT.
pub const F_NEXT: u16 = 1;
/// VIRTQ_DESC_F_WRITE.
pub const F_WRITE: u16 = 2;

/// Counts interrupts.
#[derive(Default)]
pub struct Counts {
    /// Queue interrupts per queue index.
    pub queue: [AtomicU32; 2],
    /// Config-change interrupts.
    pub config: AtomicU32,
    /// needs_reset() calls.
    pub reset: AtomicU32,
}
impl Interrupt for Counts {
    fn queue(&self, index: u16) {
        self.queue[usize::from(index)].fetch_add(1, Ordering::SeqCst);
    }
    fn config(&self) {
        self.config.fetch_add(1, Ordering::SeqCst);
    }
    fn needs_reset(&self) {
        self.reset.fetch_add(1, Ordering::SeqCst);
    }
}

/// The driver's side of one split queue.
pub struct Ring {
    at: [u64; 3],
    next_desc: u16,
    avail_idx: u16,
}

impl Ring {
    pub fn new(at: [u64; 3]) -> Ring {
        Ring {
            at,
            next_desc: 0,
            avail_idx: 0,
        }
    }

    pub fn queue(&self, mem: &GuestMemoryMmap) -> Queue {
        let mut q = Queue::new(QSIZE).unwrap();
        q.set_desc_table_address(Some(self.at[0] as u32), Some(0));
        q.set_avail_ring_address(Some(self.at[1] as u32), Some(0));
        q.set_used_ring_address(Some(self.at[2] as u32), Some(0));
        q.set_ready(true);
        assert!(q.is_valid(mem));
        q
    }

    /// Put a chain of (addr, len, flags) descriptors on the avail ring; returns its head.
    pub fn chain(&mut self, mem: &GuestMemoryMmap, descs: &[(u64, u32, u16)]) -> u16 {
        let head = self.next_desc;
        for (i, (addr, len, flags)) in descs.iter().enumerate() {
            let idx = self.next_desc;
            let last = i + 1 == descs.len();
            let next = if last { 0 } else { (idx + 1) % QSIZE };
            let flags = if last { *flags } else { flags | F_NEXT };
            let at = GuestAddress(self.at[0] + 16 * u64::from(idx));
            mem.write_obj(*addr, at).unwrap();
            mem.write_obj(*len, at.unchecked_add(8)).unwrap();
            mem.write_obj(flags, at.unchecked_add(12)).unwrap();
            mem.write_obj(next, at.unchecked_add(14)).unwrap();
            self.next_desc = (self.next_desc + 1) % QSIZE;
        }
        let slot = self.at[1] + 4 + 2 * u64::from(self.avail_idx % QSIZE);
        mem.write_obj(head, GuestAddress(slot)).unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        mem.write_obj(self.avail_idx, GuestAddress(self.at[1] + 2))
            .unwrap();
        head
    }

    /// The used ring's entries so far: (head, len).
    pub fn used(&self, mem: &GuestMemoryMmap) -> Vec<(u32, u32)> {
        let idx: u16 = mem.read_obj(GuestAddress(self.at[2] + 2)).unwrap();
        (0..idx)
            .map(|i| {
                let e = self.at[2] + 4 + 8 * u64::from(i % QSIZE);
                (
                    mem.read_obj(GuestAddress(e)).unwrap(),
                    mem.read_obj(GuestAddress(e + 4)).unwrap(),
                )
            })
            .collect()
    }
}

/// Activate `dev` with queues 0 and 1 on `rings`; returns the interrupt counts and each
/// queue's notify eventfd.
pub fn activate_two(
    dev: &mut dyn VirtioDevice,
    mem: &GuestMemoryMmap,
    rings: [&Ring; 2],
    features: u64,
) -> (Arc<Counts>, [EventFd; 2]) {
    let irq = Arc::new(Counts::default());
    let notify = [
        EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        EventFd::new(libc::EFD_NONBLOCK).unwrap(),
    ];
    let queues = rings
        .iter()
        .zip(&notify)
        .enumerate()
        .map(|(i, (ring, n))| ActiveQueue {
            index: i as u16,
            queue: ring.queue(mem),
            notify: n.try_clone().unwrap(),
        })
        .collect();
    dev.activate(Activation {
        mem: mem.clone(),
        features,
        queues,
        interrupt: irq.clone(),
    })
    .unwrap();
    (irq, notify)
}

/// Poll `what` until it holds, for at most ten seconds; whether it did.
pub fn wait(what: &dyn Fn() -> bool) -> bool {
    let t = std::time::Instant::now();
    loop {
        if what() {
            return true;
        }
        if t.elapsed() > std::time::Duration::from_secs(10) {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}
