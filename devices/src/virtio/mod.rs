//! virtio devices and their one transport, virtio-pci (modern, virtio 1.x).
//!
//! A device implements [`VirtioDevice`]: its feature bits, its config space and what to do with
//! its queues once the driver has set them up. The transport in [`pci`] does everything else
//! (feature negotiation, queue registers, notifications, MSI-X), so adding a device never touches
//! PCI code.

pub mod block;
pub mod console;
pub mod fs;
pub mod gpu;
pub mod input;
pub mod net;
pub mod pci;
pub mod rng;
#[cfg(test)]
pub(crate) mod testing;
pub mod vhost_kern;
pub mod vsock;
pub mod vsock_user;
mod worker;

use std::sync::Arc;

use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

pub use worker::{QueueWorker, serve_queue, wait_ready};

/// Guest memory as devices see it.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;

/// VIRTIO_F_VERSION_1.
pub const F_VERSION_1: u64 = 1 << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
/// VIRTIO_RING_F_INDIRECT_DESC.
pub const F_INDIRECT_DESC: u64 = 1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_INDIRECT_DESC;
/// VIRTIO_RING_F_EVENT_IDX.
pub const F_EVENT_IDX: u64 = 1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;

/// Errors a device can report when the driver starts it.
#[derive(Debug, thiserror::Error)]
pub enum VirtioError {
    /// The driver set up a queue the device cannot use.
    #[error("queue {0} is not usable")]
    BadQueue(u16),
    /// A worker thread could not be started.
    #[error("cannot start a device thread: {0}")]
    Thread(std::io::Error),
    /// The device's back end (e.g. vhost) refused the set-up.
    #[error("device back end: {0}")]
    Backend(String),
}

/// How a device raises interrupts; the transport decides which vector that means.
pub trait Interrupt: Send + Sync {
    /// The device put buffers in the used ring of queue `index`.
    fn queue(&self, index: u16);
    /// The device's config space changed.
    fn config(&self);
    /// The driver broke the device's rules (e.g. an impossible ring index): the device stops
    /// and asks for a reset.
    fn needs_reset(&self);
    /// An eventfd that raises queue `index`'s interrupt directly (the MSI vector's irqfd),
    /// for a back end in another context (vhost) to signal; `None` when the queue has none.
    fn queue_irqfd(&self, _index: u16) -> Option<EventFd> {
        None
    }
}

/// A queue the driver has enabled, handed to the device when the driver is ready.
pub struct ActiveQueue {
    /// Queue index.
    pub index: u16,
    /// The queue, validated against guest memory.
    pub queue: Queue,
    /// Signalled (by KVM's ioeventfd) when the driver notifies this queue.
    pub notify: EventFd,
}

/// What a device gets when the driver sets DRIVER_OK.
pub struct Activation {
    /// Guest memory.
    pub mem: GuestMemoryMmap,
    /// Features the driver accepted.
    pub features: u64,
    /// The queues the driver enabled.
    pub queues: Vec<ActiveQueue>,
    /// Interrupts back to the driver.
    pub interrupt: Arc<dyn Interrupt>,
}

/// A virtio device, independent of its transport.
pub trait VirtioDevice: Send {
    /// virtio device ID (2 = block, 4 = entropy, ...).
    fn device_type(&self) -> u16;
    /// PCI class code for this kind of device.
    fn pci_class(&self) -> u32;
    /// Maximum size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Device-specific feature bits (the transport adds VERSION_1 and the ring features).
    fn features(&self) -> u64;
    /// Read the device config space; out-of-range bytes read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Write the device config space (most devices ignore this).
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// Start processing the queues.
    fn activate(&mut self, activation: Activation) -> Result<(), VirtioError>;
    /// Stop processing and forget the queues; returns once no thread of ours touches guest
    /// memory. A device whose back end is another process may return before the back end has
    /// stopped (it must not keep a vCPU waiting for it): it then says so in
    /// [`VirtioDevice::reset_pending`].
    fn reset(&mut self);
    /// Whether a reset is still being carried out by the back end. Meanwhile the transport
    /// shows the driver a non-zero device status: the virtio specification has the driver
    /// wait for a status of 0 after writing 0 (Linux polls it).
    fn reset_pending(&self) -> bool {
        false
    }
}

/// Copy `data.len()` bytes of `config` at `offset`, zero past its end: the common way to serve
/// a config-space read.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b = usize::try_from(offset)
            .ok()
            .and_then(|o| o.checked_add(i))
            .and_then(|o| config.get(o))
            .copied()
            .unwrap_or(0);
    }
}
