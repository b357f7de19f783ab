//! virtio-console with one port: the guest's `hvc0`.
//!
//! Output: the driver puts whole buffers on the transmit queue and notifies once (KVM signals
//! the ioeventfd without leaving the guest); the device's thread copies them, through one
//! reusable buffer, into the VMM's console writer. That writer buffers up to a megabyte for the
//! terminal; beyond that the thread waits for the terminal, so the guest's output is slowed to
//! the terminal's pace and nothing is lost, while no vCPU ever waits.
//!
//! Input: the VMM queues what the user typed with [`ConsolePort::enqueue`], at most
//! [`INPUT_CAPACITY`] bytes at a time. The thread moves it into the buffers the driver posted
//! on the receive queue, and signals `drained` once everything queued has reached the guest, so
//! the VMM queues the rest: as with the UART, nothing typed is dropped and a guest that never
//! posts buffers only holds up its own input.
//!
//! The terminal's size is offered with `VIRTIO_CONSOLE_F_SIZE` when it is known at start, and a
//! change ([`ConsolePort::set_size`]) raises a config-change interrupt, after which Linux reads
//! it again and resizes `hvc0`. Linux reads the size only on such an interrupt, and ignores one
//! that comes before its console port exists; so the device raises one when the driver first
//! writes output (by then `hvc0` is a console), once per activation.

use std::collections::VecDeque;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex, MutexGuard};

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use super::{
    Activation, GuestMemoryMmap, Interrupt, QueueWorker, VirtioDevice, VirtioError,
    read_config_bytes, serve_queue,
};

/// Size of both queues.
pub const QUEUE_SIZE: u16 = 256;
/// VIRTIO_CONSOLE_F_SIZE: `cols` and `rows` in the config space are valid.
pub const F_SIZE: u64 = 1 << 0;
/// The receive queue (device to driver: typed input).
pub const RXQ: u16 = 0;
/// The transmit queue (driver to device: output).
pub const TXQ: u16 = 1;
/// Most typed input held by the device until the guest takes it.
pub const INPUT_CAPACITY: usize = 4096;
/// Output is copied through a buffer of this size.
const CHUNK: usize = 4096;

/// The port's state shared between the VMM (typed input, window size) and the device's thread.
#[derive(Debug)]
pub struct ConsolePort {
    state: Mutex<PortState>,
    /// Wakes the device's thread: input was queued.
    wake: EventFd,
    /// Signalled when the guest has taken all queued input.
    drained: EventFd,
}

#[derive(Default)]
struct PortState {
    input: VecDeque<u8>,
    /// (columns, rows); `None` when the terminal's size is unknown.
    size: Option<(u16, u16)>,
    /// The driver's interrupts while the device is active, for a size change.
    interrupt: Option<Arc<dyn Interrupt>>,
}

impl std::fmt::Debug for PortState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortState")
            .field("input", &self.input.len())
            .field("size", &self.size)
            .field("active", &self.interrupt.is_some())
            .finish()
    }
}

impl ConsolePort {
    /// A port; `drained` is signalled whenever the guest has taken all queued input, and
    /// `size` is the terminal's (columns, rows) if known.
    pub fn new(drained: EventFd, size: Option<(u16, u16)>) -> std::io::Result<ConsolePort> {
        Ok(ConsolePort {
            state: Mutex::new(PortState {
                size,
                ..PortState::default()
            }),
            wake: EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?,
            drained,
        })
    }

    fn lock(&self) -> MutexGuard<'_, PortState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queue typed input for the guest as far as there is room; returns how many bytes of
    /// `input` were taken (the caller keeps the rest until `drained` is signalled).
    pub fn enqueue(&self, input: &[u8]) -> usize {
        let mut st = self.lock();
        let n = input.len().min(INPUT_CAPACITY - st.input.len());
        st.input.extend(&input[..n]);
        drop(st);
        if n > 0 {
            let _ = self.wake.write(1);
        }
        n
    }

    /// The terminal's new size: the guest is told with a config-change interrupt.
    pub fn set_size(&self, cols: u16, rows: u16) {
        let mut st = self.lock();
        if st.size == Some((cols, rows)) {
            return;
        }
        st.size = Some((cols, rows));
        let interrupt = st.interrupt.clone();
        drop(st);
        if let Some(i) = interrupt {
            i.config();
        }
    }

    /// Queued input the guest has not taken yet.
    pub fn pending(&self) -> usize {
        self.lock().input.len()
    }
}

/// Where the guest's output goes: one writer, kept by the device across activations and used
/// by the thread of the current one (a thread left over from an earlier activation, still
/// finishing a write, holds the lock until it is done).
pub type ConsoleOut = Arc<Mutex<Box<dyn Write + Send>>>;

/// The virtio-console device.
pub struct Console {
    port: Arc<ConsolePort>,
    out: ConsoleOut,
    /// Whether F_SIZE is offered: the size was known when the device was made.
    offer_size: bool,
    worker: Option<QueueWorker>,
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console")
            .field("port", &self.port)
            .field("active", &self.worker.is_some())
            .finish()
    }
}

impl Console {
    /// A console whose output goes to `out` and whose input comes from `port`.
    pub fn new(port: Arc<ConsolePort>, out: Box<dyn Write + Send>) -> Console {
        let offer_size = port.lock().size.is_some();
        Console {
            port,
            out: Arc::new(Mutex::new(out)),
            offer_size,
            worker: None,
        }
    }
}

/// The queue work, apart from the thread that waits for it (so that tests and the fuzz target
/// drive it directly).
pub struct Engine {
    mem: GuestMemoryMmap,
    rx: Queue,
    tx: Queue,
    interrupt: Arc<dyn Interrupt>,
    port: Arc<ConsolePort>,
    out: ConsoleOut,
    buf: Vec<u8>,
    /// The size has been announced with a config interrupt since the first output.
    size_announced: bool,
}

impl Engine {
    /// The work of one activation.
    pub fn new(
        mem: GuestMemoryMmap,
        rx: Queue,
        tx: Queue,
        interrupt: Arc<dyn Interrupt>,
        port: Arc<ConsolePort>,
        out: ConsoleOut,
    ) -> Engine {
        Engine {
            mem,
            rx,
            tx,
            interrupt,
            port,
            out,
            buf: vec![0; CHUNK],
            size_announced: false,
        }
    }

    /// Write out every buffer on the transmit queue. False when the driver broke the ring.
    pub fn process_tx(&mut self) -> bool {
        let Engine {
            mem,
            tx,
            out,
            buf,
            interrupt,
            ..
        } = self;
        let mut out = out.lock().unwrap_or_else(|p| p.into_inner());
        let mut wrote = false;
        let served = serve_queue(tx, mem, interrupt.as_ref(), TXQ, |mem, chain| {
            wrote = true;
            for d in chain.readable() {
                let mut done = 0u64;
                let len = u64::from(d.len());
                while done < len {
                    let n = (len - done).min(CHUNK as u64) as usize;
                    let Some(at) = d.addr().0.checked_add(done) else {
                        return 0;
                    };
                    // A buffer outside guest memory ends the chain; what came before it is out.
                    if mem.read_slice(&mut buf[..n], GuestAddress(at)).is_err() {
                        return 0;
                    }
                    // The console writer never fails (a terminal that went away loses output).
                    let _ = out.write_all(&buf[..n]);
                    done += n as u64;
                }
            }
            0
        });
        drop(out);
        if wrote && !self.size_announced {
            self.size_announced = true;
            if self.port.lock().size.is_some() {
                self.interrupt.config();
            }
        }
        served
    }

    /// Move queued input into the driver's receive buffers. False when the driver broke the
    /// ring.
    pub fn fill_rx(&mut self) -> bool {
        let mut st = self.port.lock();
        let had_input = !st.input.is_empty();
        let mut used_any = false;
        let result = (|| -> Result<(), virtio_queue::Error> {
            while !st.input.is_empty() {
                let Some(chain) = self.rx.iter(&self.mem)?.next() else {
                    // No buffer: ask to be told of the next one; go on if it came meanwhile.
                    if self.rx.enable_notification(&self.mem)? {
                        continue;
                    }
                    return Ok(());
                };
                let head = chain.head_index();
                let mut written = 0u32;
                'chain: for d in chain.writable() {
                    let mut off = 0u32;
                    while off < d.len() && !st.input.is_empty() {
                        let (a, _) = st.input.as_slices();
                        let n = a.len().min((d.len() - off) as usize);
                        let Some(at) = d.addr().0.checked_add(u64::from(off)) else {
                            break 'chain;
                        };
                        // Bytes leave the queue only once they are in guest memory.
                        if self.mem.write_slice(&a[..n], GuestAddress(at)).is_err() {
                            break 'chain;
                        }
                        st.input.drain(..n);
                        off += n as u32;
                        written += n as u32;
                    }
                    if st.input.is_empty() {
                        break;
                    }
                }
                self.rx.add_used(&self.mem, head, written)?;
                used_any = true;
            }
            // Keep the driver's notifications of new buffers coming (EVENT_IDX).
            self.rx.enable_notification(&self.mem)?;
            Ok(())
        })();
        let drained = had_input && st.input.is_empty();
        drop(st);
        if result.is_err() {
            self.interrupt.needs_reset();
            return false;
        }
        if used_any && self.rx.needs_notification(&self.mem).unwrap_or(true) {
            self.interrupt.queue(RXQ);
        }
        if drained {
            let _ = self.port.drained.write(1);
        }
        true
    }
}

fn poll_in(fd: &EventFd, active: bool) -> libc::pollfd {
    libc::pollfd {
        fd: fd.as_raw_fd(),
        events: if active { libc::POLLIN } else { 0 },
        revents: 0,
    }
}

impl VirtioDevice for Console {
    fn device_type(&self) -> u16 {
        virtio_bindings::virtio_ids::VIRTIO_ID_CONSOLE as u16
    }

    fn pci_class(&self) -> u32 {
        // Communication controller, "other": what QEMU's virtio-serial-pci reports.
        0x07_80_00
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        if self.offer_size { F_SIZE } else { 0 }
    }

    /// `struct virtio_console_config`: cols, rows, max_nr_ports (only meaningful with
    /// MULTIPORT, which is not offered), emerg_wr (EMERG_WRITE is not offered).
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let (cols, rows) = self.port.lock().size.unwrap_or((0, 0));
        let mut config = [0u8; 12];
        config[0..2].copy_from_slice(&cols.to_le_bytes());
        config[2..4].copy_from_slice(&rows.to_le_bytes());
        config[4..8].copy_from_slice(&1u32.to_le_bytes());
        read_config_bytes(&config, offset, data);
    }

    fn activate(&mut self, a: Activation) -> Result<(), VirtioError> {
        self.reset();
        let mut rx = None;
        let mut tx = None;
        for q in a.queues {
            match q.index {
                RXQ => rx = Some((q.queue, q.notify)),
                TXQ => tx = Some((q.queue, q.notify)),
                _ => {}
            }
        }
        let (rx, rx_notify) = rx.ok_or(VirtioError::BadQueue(RXQ))?;
        let (tx, tx_notify) = tx.ok_or(VirtioError::BadQueue(TXQ))?;
        let wake = self.port.wake.try_clone().map_err(VirtioError::Thread)?;
        self.port.lock().interrupt = Some(a.interrupt.clone());
        let mut engine = Engine::new(
            a.mem,
            rx,
            tx,
            a.interrupt,
            self.port.clone(),
            self.out.clone(),
        );
        let worker = QueueWorker::spawn_loop("virtio-console".into(), move |kill| {
            let mut serving = engine.process_tx() && engine.fill_rx();
            loop {
                let mut fds = [
                    poll_in(&kill, true),
                    poll_in(&tx_notify, serving),
                    poll_in(&rx_notify, serving),
                    poll_in(&wake, serving),
                ];
                // SAFETY: `fds` is a valid array of pollfd structs for the whole call.
                let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
                if n < 0 {
                    if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                        continue;
                    }
                    return;
                }
                if fds[0].revents != 0 {
                    return;
                }
                if fds[1].revents & libc::POLLIN != 0 {
                    let _ = tx_notify.read();
                    serving = engine.process_tx();
                }
                if serving && fds[2].revents & libc::POLLIN != 0 {
                    let _ = rx_notify.read();
                    serving = engine.fill_rx();
                }
                if serving && fds[3].revents & libc::POLLIN != 0 {
                    let _ = wake.read();
                    serving = engine.fill_rx();
                }
            }
        })
        .map_err(VirtioError::Thread)?;
        self.worker = Some(worker);
        Ok(())
    }

    fn reset(&mut self) {
        self.worker = None;
        self.port.lock().interrupt = None;
    }
}

#[cfg(test)]
mod tests;
