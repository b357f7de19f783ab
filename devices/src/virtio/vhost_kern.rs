//! What the devices served by a host kernel vhost driver (vhost-vsock, vhost-net) share: the
//! open vhost file claimed for this process, the guest memory table, and programming one ring
//! (size, addresses, base, the MSI vector's irqfd as call fd, the queue's ioeventfd as kick fd).

use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use vhost::vhost_kern::VhostKernBackend;
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_queue::QueueT;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use super::{ActiveQueue, GuestMemoryMmap, Interrupt, VirtioError};

/// An open vhost device (`/dev/vhost-*` or a passed-in fd) with the guest memory it maps.
pub struct KernelVhost {
    fd: File,
    mem: Arc<GuestMemoryMmap>,
}

impl AsRawFd for KernelVhost {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl VhostKernBackend for KernelVhost {
    type AS = Arc<GuestMemoryMmap>;
    fn mem(&self) -> &Self::AS {
        &self.mem
    }
}

impl KernelVhost {
    /// Take over the open vhost file `fd` for guest memory `mem` and claim it for this process
    /// (`VHOST_SET_OWNER`). A file already ours is fine: one open device may serve the whole
    /// run, and after a guest reboot the next machine programs it again.
    pub fn claim(fd: File, mem: GuestMemoryMmap) -> Result<KernelVhost, vhost::Error> {
        let h = KernelVhost {
            fd,
            mem: Arc::new(mem),
        };
        match h.set_owner() {
            Err(vhost::Error::IoctlError(e)) if e.raw_os_error() == Some(libc::EBUSY) => Ok(h),
            r => r.map(|()| h),
        }
    }

    /// The open vhost file, for the driver's own ioctls.
    pub fn file(&self) -> &File {
        &self.fd
    }

    /// Hand the driver the guest memory table: every RAM region at its host address.
    pub fn set_memory(&self) -> Result<(), VirtioError> {
        let table: Vec<VhostUserMemoryRegionInfo> = self
            .mem
            .iter()
            .map(|r| VhostUserMemoryRegionInfo {
                guest_phys_addr: r.start_addr().0,
                memory_size: r.len(),
                userspace_addr: r.as_ptr() as u64,
                mmap_offset: 0,
                mmap_handle: -1,
            })
            .collect();
        self.set_mem_table(&table)
            .map(drop)
            .map_err(fail("VHOST_SET_MEM_TABLE"))
    }

    /// Program ring `q` (of at most `max_size` entries): its size, addresses and base, the
    /// MSI vector's irqfd from `interrupt` as call fd and the queue's ioeventfd as kick fd.
    pub fn setup_vring(
        &self,
        q: &ActiveQueue,
        interrupt: &dyn Interrupt,
        max_size: u16,
    ) -> Result<(), VirtioError> {
        let i = usize::from(q.index);
        let config = VringConfigData {
            queue_max_size: max_size,
            queue_size: q.queue.size(),
            flags: 0,
            desc_table_addr: q.queue.desc_table(),
            used_ring_addr: q.queue.used_ring(),
            avail_ring_addr: q.queue.avail_ring(),
            log_addr: None,
        };
        self.set_vring_num(i, q.queue.size())
            .map_err(fail("VHOST_SET_VRING_NUM"))?;
        self.set_vring_addr(i, &config)
            .map_err(fail("VHOST_SET_VRING_ADDR"))?;
        self.set_vring_base(i, 0)
            .map_err(fail("VHOST_SET_VRING_BASE"))?;
        let call = interrupt
            .queue_irqfd(q.index)
            .ok_or_else(|| VirtioError::Backend(format!("queue {i} has no MSI-X vector")))?;
        self.set_vring_call(i, &call)
            .map_err(fail("VHOST_SET_VRING_CALL"))?;
        self.set_vring_kick(i, &q.notify)
            .map_err(fail("VHOST_SET_VRING_KICK"))
    }
}

/// A vhost error as a device error naming the ioctl.
pub fn fail(what: &'static str) -> impl Fn(vhost::Error) -> VirtioError {
    move |e| VirtioError::Backend(format!("vhost {what}: {e}"))
}
