//! The receive path: one frame at a time is read from the back end into a per-queue buffer,
//! then written over one descriptor chain, or over as many as it needs with MRG_RXBUF
//! (`num_buffers` in the header says how many). All chains of a frame are published to the used
//! ring at once, so the driver never sees half a frame, and a burst raises one interrupt.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{Ordering, fence};

use virtio_bindings::virtio_net::VIRTIO_NET_F_MRG_RXBUF;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use super::{HDR_LEN, NetBackend, NetStats, RX_BUF_LEN, bit};
use crate::virtio::QueueWorker;
use crate::virtio::{GuestMemoryMmap, Interrupt};

/// Device-writable descriptors of one receive chain we use; further ones are ignored.
const MAX_RX_DESCRIPTORS: usize = 64;
/// How long the thread waits before looking again at a back end that reported an error or
/// hang-up (a detached TAP queue polls as an error; it may be attached again).
const BACKEND_RETRY_MS: i32 = 100;

/// What the receive queue waits for after a burst.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxState {
    /// The back end has nothing more: wait for it to become readable.
    Idle,
    /// A frame is waiting for the guest to post buffers: wait for the queue's notification.
    WaitBuffers,
    /// The driver broke the ring; the device asked for a reset.
    Broken,
    /// Reading the back end failed (not for want of frames): look again only after a pause,
    /// so a back end that stays readable but keeps failing cannot make the thread spin.
    BackendFailed,
}

enum Placed {
    Delivered,
    Dropped,
    NoRoom,
}

#[derive(Debug, Clone, Copy)]
struct Chain {
    head: u16,
    descs: (usize, usize),
    cap: usize,
}

/// Serves one receive queue.
pub struct RxHandler {
    backend: Arc<dyn NetBackend>,
    mem: GuestMemoryMmap,
    queue: Queue,
    index: u16,
    interrupt: Arc<dyn Interrupt>,
    mrg: bool,
    stats: Arc<NetStats>,
    frame: Vec<u8>,
    pending: Option<usize>,
    descs: Vec<(u64, u32)>,
    chains: Vec<Chain>,
}

impl std::fmt::Debug for RxHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RxHandler")
            .field("index", &self.index)
            .field("pending", &self.pending)
            .finish_non_exhaustive()
    }
}

impl RxHandler {
    /// A handler filling `queue` (index `index`) from `backend`, for a driver that accepted
    /// `features`.
    pub fn new(
        backend: Arc<dyn NetBackend>,
        mem: GuestMemoryMmap,
        queue: Queue,
        index: u16,
        interrupt: Arc<dyn Interrupt>,
        features: u64,
        stats: Arc<NetStats>,
    ) -> RxHandler {
        let size = usize::from(queue.size());
        RxHandler {
            backend,
            mem,
            queue,
            index,
            interrupt,
            mrg: features & bit(VIRTIO_NET_F_MRG_RXBUF) != 0,
            stats,
            frame: vec![0; RX_BUF_LEN],
            pending: None,
            descs: Vec::with_capacity(MAX_RX_DESCRIPTORS * size),
            chains: Vec::with_capacity(size),
        }
    }

    /// The queue (tests look at its indices).
    pub fn queue(&self) -> &Queue {
        &self.queue
    }

    /// Move frames from the back end into the guest until one of them runs out; interrupt
    /// the driver once if anything was delivered.
    pub fn burst(&mut self) -> RxState {
        let start = self.queue.next_used();
        let state = self.fill().unwrap_or_else(|_| {
            self.interrupt.needs_reset();
            RxState::Broken
        });
        let end = self.queue.next_used();
        if state != RxState::Broken && end != start && self.needs_interrupt(start, end) {
            self.interrupt.queue(self.index);
        }
        state
    }

    fn fill(&mut self) -> Result<RxState, virtio_queue::Error> {
        self.queue.disable_notification(&self.mem)?;
        loop {
            let len = match self.pending {
                Some(len) => len,
                None => match self.backend.read_frame(&mut self.frame) {
                    Ok(n) if n > HDR_LEN => n.min(self.frame.len()),
                    Ok(0) => return Ok(RxState::Idle),
                    Ok(_) => {
                        NetStats::inc(&self.stats.rx_dropped);
                        continue;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(RxState::Idle),
                    Err(_) => return Ok(RxState::BackendFailed),
                },
            };
            self.pending = Some(len);
            match self.place(len)? {
                Placed::Delivered => {
                    self.pending = None;
                    NetStats::inc(&self.stats.rx_frames);
                }
                Placed::Dropped => {
                    self.pending = None;
                    NetStats::inc(&self.stats.rx_dropped);
                }
                Placed::NoRoom => {
                    // Ask to be told about buffers past those already looked at, give those
                    // back, and look once more if more arrived in between.
                    let more = self.queue.enable_notification(&self.mem)?;
                    for _ in 0..self.chains.len() {
                        self.queue.go_to_previous_position();
                    }
                    if more {
                        self.queue.disable_notification(&self.mem)?;
                        continue;
                    }
                    return Ok(RxState::WaitBuffers);
                }
            }
        }
    }

    /// Collect chains for a frame of `len` bytes and write it.
    fn place(&mut self, len: usize) -> Result<Placed, virtio_queue::Error> {
        self.descs.clear();
        self.chains.clear();
        let mut cap_total = 0usize;
        while cap_total < len && (self.mrg || self.chains.is_empty()) {
            let Some(chain) = self.queue.iter(&self.mem)?.next() else {
                break;
            };
            let head = chain.head_index();
            let first = self.descs.len();
            let mut cap = 0usize;
            for d in chain.writable().take(MAX_RX_DESCRIPTORS) {
                self.descs.push((d.addr().0, d.len()));
                cap = cap.saturating_add(d.len() as usize);
            }
            if self.chains.is_empty() && cap < HDR_LEN {
                // Not even room for the header: give it back empty.
                self.descs.truncate(first);
                NetStats::inc(&self.stats.rx_bad_chains);
                self.queue.add_used(&self.mem, head, 0)?;
                continue;
            }
            self.chains.push(Chain {
                head,
                descs: (first, self.descs.len()),
                cap,
            });
            cap_total = cap_total.saturating_add(cap);
        }
        if self.chains.is_empty() {
            return Ok(Placed::NoRoom);
        }
        if cap_total < len {
            // Without MRG_RXBUF the frame had one chain; with it, the whole ring could not hold
            // it: it never fits, and the chains stay for the next frame. Otherwise wait for the
            // guest to post more buffers (the caller gives these back).
            if !self.mrg || self.chains.len() >= usize::from(self.queue.size()) {
                for _ in 0..self.chains.len() {
                    self.queue.go_to_previous_position();
                }
                return Ok(Placed::Dropped);
            }
            return Ok(Placed::NoRoom);
        }
        let num_buffers = if self.mrg {
            self.chains.len() as u16
        } else {
            1
        };
        self.frame[10..12].copy_from_slice(&num_buffers.to_le_bytes());
        let mut off = 0usize;
        let mut ok = true;
        for i in 0..self.chains.len() {
            let c = self.chains[i];
            let take = c.cap.min(len - off);
            ok &= write_descs(
                &self.mem,
                &self.descs[c.descs.0..c.descs.1],
                &self.frame[off..off + take],
            );
            off += take;
            self.chains[i].cap = take;
        }
        if !ok {
            NetStats::inc(&self.stats.rx_bad_chains);
            for c in &mut self.chains {
                c.cap = 0;
            }
        }
        self.publish()?;
        Ok(if ok {
            Placed::Delivered
        } else {
            Placed::Dropped
        })
    }

    /// Put every collected chain (with its `cap` as length) in the used ring, then make them
    /// visible with a single index update.
    fn publish(&mut self) -> Result<(), virtio_queue::Error> {
        let size = self.queue.size();
        let used = self.queue.used_ring();
        let mut idx = self.queue.next_used();
        for c in &self.chains {
            let slot = used + 4 + 8 * u64::from(idx % size);
            let elem = (u32::from(c.head).to_le(), (c.cap as u32).to_le());
            self.mem
                .write_obj(elem.0, GuestAddress(slot))
                .and_then(|()| self.mem.write_obj(elem.1, GuestAddress(slot + 4)))
                .map_err(virtio_queue::Error::GuestMemory)?;
            idx = idx.wrapping_add(1);
        }
        self.mem
            .store(idx.to_le(), GuestAddress(used + 2), Ordering::Release)
            .map_err(virtio_queue::Error::GuestMemory)?;
        self.queue.set_next_used(idx);
        Ok(())
    }

    /// Whether the driver wants an interrupt for used entries `old..new` (VIRTIO_F_EVENT_IDX's
    /// `used_event`, or the NO_INTERRUPT flag without it).
    fn needs_interrupt(&self, old: u16, new: u16) -> bool {
        fence(Ordering::SeqCst);
        let avail = self.queue.avail_ring();
        if self.queue.event_idx_enabled() {
            let at = avail + 4 + 2 * u64::from(self.queue.size());
            let Ok(event) = self.mem.read_obj::<u16>(GuestAddress(at)) else {
                return true;
            };
            let event = u16::from_le(event);
            new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
        } else {
            let flags = self.mem.read_obj::<u16>(GuestAddress(avail)).unwrap_or(0);
            u16::from_le(flags) & 1 == 0
        }
    }
}

/// Write `bytes` over the descriptors, in order.
fn write_descs(mem: &GuestMemoryMmap, descs: &[(u64, u32)], bytes: &[u8]) -> bool {
    let mut done = 0usize;
    for &(addr, len) in descs {
        if done == bytes.len() {
            break;
        }
        let n = (len as usize).min(bytes.len() - done);
        if mem
            .write_slice(&bytes[done..done + n], GuestAddress(addr))
            .is_err()
        {
            return false;
        }
        done += n;
    }
    done == bytes.len()
}

/// The receive queue's thread: waits on the queue's notification and the back end's
/// descriptor; dropping the worker stops and joins it.
pub(super) fn spawn_rx_thread(
    name: String,
    mut h: RxHandler,
    notify: EventFd,
) -> io::Result<QueueWorker> {
    QueueWorker::spawn_loop(name, move |thread_kill| {
        let mut state = h.burst();
        let mut backend_error = false;
        loop {
            let backend = state == RxState::Idle && !backend_error;
            let mut fds = [
                libc::pollfd {
                    fd: thread_kill.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: notify.as_raw_fd(),
                    events: if state == RxState::Broken {
                        0
                    } else {
                        libc::POLLIN
                    },
                    revents: 0,
                },
                libc::pollfd {
                    fd: h.backend.readable_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            let (n, timeout) = if backend {
                (3, -1)
            } else if backend_error {
                (2, BACKEND_RETRY_MS)
            } else {
                (2, -1)
            };
            // SAFETY: `fds` is a valid array of at least `n` pollfd structs for the call.
            let r = unsafe { libc::poll(fds.as_mut_ptr(), n, timeout) };
            if r < 0 {
                if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return;
            }
            if fds[0].revents != 0 {
                return;
            }
            if state == RxState::Broken {
                continue;
            }
            if fds[1].revents & libc::POLLIN != 0 {
                let _ = notify.read();
            }
            let hung_up =
                backend && fds[2].revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0;
            state = h.burst();
            backend_error = hung_up || state == RxState::BackendFailed;
        }
    })
}
