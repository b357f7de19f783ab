//! What the virtio fuzz targets share: an interrupt sink and split queues laid out in a small
//! guest memory from the fuzzer's bytes.

use devices::virtio::{GuestMemoryMmap, Interrupt};
use virtio_queue::{Queue, QueueT};

/// Interrupts that go nowhere.
pub struct Quiet;

impl Interrupt for Quiet {
    fn queue(&self, _: u16) {}
    fn config(&self) {}
    fn needs_reset(&self) {}
}

/// A ready split queue of `size` entries whose descriptor table, avail and used rings are at
/// `at`, or `None` if the driver's layout is not valid in `mem` (a device never sees those).
pub fn queue(mem: &GuestMemoryMmap, size: u16, event_idx: bool, at: [u32; 3]) -> Option<Queue> {
    let mut q = Queue::new(256).unwrap();
    q.set_size(size);
    q.set_desc_table_address(Some(at[0]), Some(0));
    q.set_avail_ring_address(Some(at[1]), Some(0));
    q.set_used_ring_address(Some(at[2]), Some(0));
    q.set_event_idx(event_idx);
    q.set_ready(true);
    q.is_valid(mem).then_some(q)
}
