//! virtio-vsock served by the host kernel's vhost-vsock: rvmspawn only sets the device up (guest
//! memory table, rings, kick and call eventfds, CID) and the kernel moves the packets. The
//! kick eventfds are the transport's ioeventfds and the call eventfds the MSI vectors' irqfds,
//! so a packet never passes through rvmspawn.

use std::fs::File;

use vhost::VhostBackend;
use vhost::vhost_kern::vhost_binding::{VHOST_VSOCK_SET_GUEST_CID, VHOST_VSOCK_SET_RUNNING};
use vmm_sys_util::ioctl::ioctl_with_ref;

use super::vhost_kern::{KernelVhost, fail};
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
pub struct VhostHandle(KernelVhost);

fn vhost_err(what: &'static str) -> impl Fn(vhost::Error) -> VsockError {
    move |e| VsockError::Vhost(what, e.to_string())
}

impl VhostHandle {
    /// Take over an open vhost-vsock file and claim it for this process. vhost-vsock has no
    /// VHOST_RESET_OWNER, so one device (one open file) serves the whole run: after a guest
    /// reboot the next machine finds it already owned by us (EBUSY) and simply programs it
    /// again with the new memory and rings.
    pub fn new(fd: File, mem: GuestMemoryMmap) -> Result<VhostHandle, VsockError> {
        KernelVhost::claim(fd, mem)
            .map(VhostHandle)
            .map_err(vhost_err("VHOST_SET_OWNER"))
    }

    fn set_running(&self, on: bool) -> Result<(), VsockError> {
        let v: libc::c_int = on.into();
        // SAFETY: the ioctl reads one int from `v`, which lives for the call.
        let r = unsafe { ioctl_with_ref(self.0.file(), VHOST_VSOCK_SET_RUNNING(), &v) };
        if r < 0 {
            return Err(VsockError::Vhost(
                "VHOST_VSOCK_SET_RUNNING",
                std::io::Error::last_os_error().to_string(),
            ));
        }
        Ok(())
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
            .0
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
        let h = &self.handle.0;
        // Only what vhost knows may reach it (the transport's own bits are fine: vhost
        // implements VERSION_1 and the ring features itself).
        h.set_features(a.features & self.features)
            .map_err(fail("VHOST_SET_FEATURES"))?;
        h.set_memory()?;
        for q in a
            .queues
            .iter()
            .filter(|q| usize::from(q.index) < VHOST_QUEUES)
        {
            h.setup_vring(q, a.interrupt.as_ref(), QUEUE_SIZE)?;
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
        self.handle
            .set_running(true)
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
