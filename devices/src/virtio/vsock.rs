//! virtio-vsock served by the host kernel's vhost-vsock: rvmspawn only sets the device up (guest
//! memory table, rings, kick and call eventfds, CID) and the kernel moves the packets. The
//! kick eventfds are the transport's ioeventfds and the call eventfds the MSI vectors' irqfds,
//! so a packet never passes through rvmspawn.

use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use vhost::vhost_kern::VhostKernBackend;
use vhost::vhost_kern::vhost_binding::{VHOST_VSOCK_SET_GUEST_CID, VHOST_VSOCK_SET_RUNNING};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_queue::QueueT;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::ioctl::ioctl_with_ref;

use super::{Activation, GuestMemoryMmap, QueueWorker, VirtioDevice, VirtioError};

/// Queue size of the rx, tx and event queues.
pub const QUEUE_SIZE: u16 = 128;
const VIRTIO_ID_VSOCK: u16 = 19;
/// The queues vhost serves (rx and tx); the third, the event queue, stays with us.
const VHOST_QUEUES: usize = 2;
/// VIRTIO_VSOCK_F_SEQPACKET.
const F_SEQPACKET: u64 = 1 << 1;

/// Errors from setting up vhost-vsock.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// A vhost ioctl failed.
    #[error("vhost-vsock {0}: {1}")]
    Vhost(&'static str, String),
}

impl VsockError {
    /// The errno for the process exit code.
    pub fn errno(&self) -> i32 {
        match self {
            VsockError::Vhost(..) => libc::EIO,
        }
    }
}

/// Give the guest behind the vhost-vsock device `file` the CID `cid` (before any machine uses
/// it: the CID belongs to the open device for the whole run). EADDRINUSE means another VM has it.
pub fn set_guest_cid(file: &File, cid: u64) -> std::io::Result<()> {
    // SAFETY: the ioctl reads one u64 from `cid`, which lives for the call; `file` is an open
    // vhost-vsock device (anything else rejects the request).
    let r = unsafe { ioctl_with_ref(file, VHOST_VSOCK_SET_GUEST_CID(), &cid) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// An open vhost-vsock device (`/dev/vhost-vsock` or the fd passed in as `vhost-vsock`).
pub struct VhostHandle {
    fd: File,
    mem: Arc<GuestMemoryMmap>,
}

impl AsRawFd for VhostHandle {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl VhostKernBackend for VhostHandle {
    type AS = Arc<GuestMemoryMmap>;
    fn mem(&self) -> &Self::AS {
        &self.mem
    }
}

fn vhost_err(what: &'static str) -> impl Fn(vhost::Error) -> VsockError {
    move |e| VsockError::Vhost(what, e.to_string())
}

impl VhostHandle {
    /// Take over an open vhost-vsock file and claim it for this process. vhost-vsock has no
    /// VHOST_RESET_OWNER, so one device (one open file) serves the whole run: after a guest
    /// reboot the next machine finds it already owned by us (EBUSY) and simply programs it
    /// again with the new memory and rings.
    pub fn new(fd: File, mem: GuestMemoryMmap) -> Result<VhostHandle, VsockError> {
        let h = VhostHandle {
            fd,
            mem: Arc::new(mem),
        };
        match h.set_owner() {
            Ok(()) => {}
            Err(vhost::Error::IoctlError(e)) if e.raw_os_error() == Some(libc::EBUSY) => {}
            Err(e) => return Err(VsockError::Vhost("VHOST_SET_OWNER", e.to_string())),
        }
        Ok(h)
    }

    fn set_running(&self, on: bool) -> Result<(), VsockError> {
        let v: libc::c_int = on.into();
        // SAFETY: the ioctl reads one int from `v`, which lives for the call.
        let r = unsafe { ioctl_with_ref(&self.fd, VHOST_VSOCK_SET_RUNNING(), &v) };
        if r < 0 {
            return Err(VsockError::Vhost(
                "VHOST_VSOCK_SET_RUNNING",
                std::io::Error::last_os_error().to_string(),
            ));
        }
        Ok(())
    }

    /// The guest memory table: every RAM region at its host address.
    fn memory_table(&self) -> Vec<VhostUserMemoryRegionInfo> {
        self.mem
            .iter()
            .map(|r| VhostUserMemoryRegionInfo {
                guest_phys_addr: r.start_addr().0,
                memory_size: r.len(),
                userspace_addr: r.as_ptr() as u64,
                mmap_offset: 0,
                mmap_handle: -1,
            })
            .collect()
    }
}

/// A virtio-vsock device backed by vhost-vsock.
pub struct Vsock {
    handle: VhostHandle,
    cid: u64,
    features: u64,
    running: bool,
    // Forwards the event queue's notifications (nothing to do with them but drain).
    event_worker: Option<QueueWorker>,
}

impl std::fmt::Debug for Vsock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vsock").field("cid", &self.cid).finish()
    }
}

impl Vsock {
    /// A device for the guest with `cid` (already set on `handle`).
    pub fn new(handle: VhostHandle, cid: u64) -> Result<Vsock, VsockError> {
        let features = handle
            .get_features()
            .map_err(vhost_err("VHOST_GET_FEATURES"))?;
        Ok(Vsock {
            handle,
            cid,
            features,
            running: false,
            event_worker: None,
        })
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u16 {
        VIRTIO_ID_VSOCK
    }

    fn pci_class(&self) -> u32 {
        // "Other" communication controller.
        0x07_80_00
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; 3]
    }

    fn features(&self) -> u64 {
        // The device feature vhost may offer beyond what the transport adds (VERSION_1 and the
        // ring features, which vhost implements): SEQPACKET sockets.
        self.features & F_SEQPACKET
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_bytes(&self.cid.to_le_bytes(), offset, data);
    }

    fn activate(&mut self, a: Activation) -> Result<(), VirtioError> {
        self.reset();
        let fail = |what: &'static str| {
            move |e: vhost::Error| VirtioError::Backend(format!("{what}: {e}"))
        };
        let h = &self.handle;
        // Only what vhost knows may reach it (the transport's own bits are fine: vhost
        // implements VERSION_1 and the ring features itself).
        h.set_features(a.features & self.features)
            .map_err(fail("VHOST_SET_FEATURES"))?;
        h.set_mem_table(&h.memory_table())
            .map_err(fail("VHOST_SET_MEM_TABLE"))?;
        for q in &a.queues {
            let i = usize::from(q.index);
            if i >= VHOST_QUEUES {
                continue;
            }
            let config = VringConfigData {
                queue_max_size: QUEUE_SIZE,
                queue_size: q.queue.size(),
                flags: 0,
                desc_table_addr: q.queue.desc_table(),
                used_ring_addr: q.queue.used_ring(),
                avail_ring_addr: q.queue.avail_ring(),
                log_addr: None,
            };
            h.set_vring_num(i, q.queue.size())
                .map_err(fail("VHOST_SET_VRING_NUM"))?;
            h.set_vring_addr(i, &config)
                .map_err(fail("VHOST_SET_VRING_ADDR"))?;
            h.set_vring_base(i, 0)
                .map_err(fail("VHOST_SET_VRING_BASE"))?;
            let call = a
                .interrupt
                .queue_irqfd(q.index)
                .ok_or_else(|| VirtioError::Backend(format!("queue {i} has no MSI-X vector")))?;
            h.set_vring_call(i, &call)
                .map_err(fail("VHOST_SET_VRING_CALL"))?;
            h.set_vring_kick(i, &q.notify)
                .map_err(fail("VHOST_SET_VRING_KICK"))?;
        }
        if let Some(event) = a
            .queues
            .into_iter()
            .find(|q| usize::from(q.index) == VHOST_QUEUES)
        {
            // The event queue carries only transport-reset events from device to driver,
            // which rvmspawn never has to send (a VM is never migrated); drain its kicks.
            self.event_worker = Some(
                QueueWorker::spawn("vsock-event".into(), event.notify, || true)
                    .map_err(VirtioError::Thread)?,
            );
        }
        h.set_running(true)
            .map_err(|e| VirtioError::Backend(e.to_string()))?;
        self.running = true;
        Ok(())
    }

    fn reset(&mut self) {
        self.event_worker = None;
        if self.running {
            // Stopped, the rings can be set again; the next activation programs them afresh.
            let _ = self.handle.set_running(false);
            self.running = false;
        }
    }
}

impl Drop for Vsock {
    fn drop(&mut self) {
        // Stop the kernel's worker before this machine's memory goes away; the device (and its
        // CID) stays with the run for the next machine after a guest reboot.
        self.event_worker = None;
        let _ = self.handle.set_running(false);
    }
}
