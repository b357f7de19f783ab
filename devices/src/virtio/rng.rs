//! virtio-rng: the guest's buffers are filled from the host's `getrandom`, so a guest never
//! waits for entropy at boot.

use vm_memory::{Bytes, GuestAddress};

use super::{Activation, QueueWorker, VirtioDevice, VirtioError, serve_queue};

/// Queue size offered to the driver.
pub const QUEUE_SIZE: u16 = 256;
/// Most bytes given for one request, whatever buffers the guest offers.
const MAX_REQUEST: usize = 64 * 1024;

/// A virtio entropy device.
#[derive(Debug, Default)]
pub struct Rng {
    worker: Option<QueueWorker>,
}

impl Rng {
    /// A new device.
    pub fn new() -> Rng {
        Rng::default()
    }
}

fn getrandom(buf: &mut [u8]) -> bool {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: the kernel writes at most `rest.len()` bytes into `rest`.
        let r = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if r < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return false;
        }
        done += r as usize;
    }
    true
}

/// Fill the device-writable buffers of one chain; returns the bytes written.
fn fill<M>(
    mem: &super::GuestMemoryMmap,
    chain: virtio_queue::DescriptorChain<M>,
    buf: &mut [u8],
) -> u32
where
    M: std::ops::Deref<Target = super::GuestMemoryMmap>,
{
    let mut total = 0usize;
    for d in chain.writable() {
        let want = (d.len() as usize).min(MAX_REQUEST - total);
        let mut at = 0;
        while at < want {
            let n = (want - at).min(buf.len());
            if !getrandom(&mut buf[..n])
                || mem
                    .write_slice(&buf[..n], GuestAddress(d.addr().0.wrapping_add(at as u64)))
                    .is_err()
            {
                return total as u32;
            }
            at += n;
            total += n;
        }
        if total == MAX_REQUEST {
            break;
        }
    }
    total as u32
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u16 {
        virtio_bindings::virtio_ids::VIRTIO_ID_RNG as u16
    }

    fn pci_class(&self) -> u32 {
        // "Other" device class.
        0xff_00_00
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        0
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn activate(&mut self, a: Activation) -> Result<(), VirtioError> {
        self.reset();
        let Some(q) = a.queues.into_iter().next() else {
            return Ok(());
        };
        let (mem, interrupt, index, mut queue) = (a.mem, a.interrupt, q.index, q.queue);
        let mut buf = vec![0u8; 4096];
        let worker = QueueWorker::spawn("virtio-rng".into(), q.notify, move || {
            serve_queue(&mut queue, &mem, interrupt.as_ref(), index, |mem, chain| {
                fill(mem, chain, &mut buf)
            })
        })
        .map_err(VirtioError::Thread)?;
        self.worker = Some(worker);
        Ok(())
    }

    fn reset(&mut self) {
        self.worker = None;
    }
}
