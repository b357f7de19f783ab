//! virtio-net in userspace, over a frame back end ([`NetBackend`]): a TAP device opened with
//! `IFF_VNET_HDR` and `TUNSETVNETHDRSZ` 12, or anything else that moves whole Ethernet frames
//! with the 12-byte `virtio_net_hdr_v1` in front. The header passes through unchanged both ways
//! (only `num_buffers` is the device's to fill in on receive).
//!
//! Queues: rx0, tx0, rx1, tx1, ... and the control queue last (index 2 when the driver did not
//! accept MQ, `2 * pairs` when it did). Each queue pair has its own back end (one TAP queue each,
//! `IFF_MULTI_QUEUE`) and two threads: the tx thread sleeps on the tx queue's ioeventfd, the rx
//! thread on the rx queue's ioeventfd and the back end's descriptor. The control queue has its
//! own thread. No vCPU ever waits on the back end.
//!
//! Everything in guest memory is hostile. A transmit chain is gathered into a per-queue buffer
//! (so the header checked is the header sent), bounded to [`MAX_TX_DESCRIPTORS`] descriptors and
//! [`MAX_TX_BYTES`] bytes; a bad chain is returned with length 0 and counted in [`NetStats`]. A
//! received frame the guest has no room for is dropped and counted. Buffers are allocated once per
//! queue at activation, never per packet, and each burst raises at most one interrupt.
//!
//! Not offered: MTU (passt's 65520 must stay possible), UFO/USO, CTRL_RX, CTRL_MAC_ADDR, RSS.

mod ctrl;
mod rx;
pub mod stream;
pub mod tap;
mod tx;
pub mod vhost;

use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use virtio_bindings::virtio_net::*;

use super::{Activation, QueueWorker, VirtioDevice, VirtioError, serve_queue};

pub use ctrl::CtrlHandler;
pub use rx::{RxHandler, RxState};
pub use stream::StreamBackend;
pub use tap::TapBackend;
pub use tx::TxHandler;

/// Queue size offered for every queue.
pub const QUEUE_SIZE: u16 = 256;
/// Most queue pairs a device gets.
pub const MAX_QUEUE_PAIRS: usize = 16;
/// Length of `virtio_net_hdr_v1`, in front of every frame both ways.
pub const HDR_LEN: usize = 12;
/// Largest Ethernet frame (without header) accepted from the guest: a 64 KiB GSO frame plus its
/// Ethernet and VLAN headers, with room to spare.
pub const MAX_FRAME: usize = 65550;
/// Largest transmit chain accepted, header included.
pub const MAX_TX_BYTES: usize = HDR_LEN + MAX_FRAME;
/// Most descriptors in a transmit chain (Linux uses at most MAX_SKB_FRAGS + 2, 19 or 47).
pub const MAX_TX_DESCRIPTORS: usize = 64;
/// Smallest frame accepted from the guest (an Ethernet header).
pub const MIN_FRAME: usize = 14;
/// Size of the receive buffer: the largest frame a TAP hands over with GSO, and its header.
pub const RX_BUF_LEN: usize = HDR_LEN + 65536 + 4096;

const fn bit(b: u32) -> u64 {
    1 << b
}

/// The offload feature bits a back end may support; [`NetBackend::offload_features`] picks.
pub const OFFLOAD_FEATURES: u64 = bit(VIRTIO_NET_F_CSUM)
    | bit(VIRTIO_NET_F_GUEST_CSUM)
    | bit(VIRTIO_NET_F_HOST_TSO4)
    | bit(VIRTIO_NET_F_HOST_TSO6)
    | bit(VIRTIO_NET_F_GUEST_TSO4)
    | bit(VIRTIO_NET_F_GUEST_TSO6)
    | bit(VIRTIO_NET_F_GUEST_ECN);

/// The receive offloads the driver may switch with CTRL_GUEST_OFFLOADS_SET.
pub const GUEST_OFFLOADS: u64 = bit(VIRTIO_NET_F_GUEST_CSUM)
    | bit(VIRTIO_NET_F_GUEST_TSO4)
    | bit(VIRTIO_NET_F_GUEST_TSO6)
    | bit(VIRTIO_NET_F_GUEST_ECN)
    | bit(VIRTIO_NET_F_GUEST_UFO);

/// Feature bits always offered (VERSION_1 and the ring features come from the transport).
const BASE_FEATURES: u64 = bit(VIRTIO_NET_F_MAC)
    | bit(VIRTIO_NET_F_STATUS)
    | bit(VIRTIO_NET_F_MRG_RXBUF)
    | bit(VIRTIO_NET_F_CTRL_VQ)
    | bit(VIRTIO_NET_F_CTRL_GUEST_OFFLOADS);

/// Config space: mac[6], status u16, max_virtqueue_pairs u16.
const CONFIG_LEN: usize = 10;

/// Where frames go and come from. Frames carry the 12-byte `virtio_net_hdr_v1` in front, both
/// ways (a TAP with `IFF_VNET_HDR` and `TUNSETVNETHDRSZ` 12 does exactly that).
pub trait NetBackend: Send + Sync {
    /// Read one frame (header included) into `buf`; never blocks: `WouldBlock` when none is
    /// waiting. A frame longer than `buf` may be truncated.
    fn read_frame(&self, buf: &mut [u8]) -> io::Result<usize>;
    /// Send one frame (header included), gathered from `iov`.
    fn write_frame(&self, iov: &[IoSlice]) -> io::Result<usize>;
    /// The driver's features now in effect (the GUEST_* receive offloads as last set by the
    /// driver): the back end turns on exactly the offloads they allow (`TUNSETOFFLOAD`).
    fn set_offload(&self, guest_features: u64) -> io::Result<()>;
    /// A descriptor that polls readable when [`read_frame`](Self::read_frame) has a frame.
    fn readable_fd(&self) -> RawFd;
    /// Which of [`OFFLOAD_FEATURES`] this back end supports (default: all of them).
    fn offload_features(&self) -> u64 {
        OFFLOAD_FEATURES
    }
    /// Whether this queue pair's back end should receive traffic (the driver uses fewer pairs
    /// than offered; a multi-queue TAP detaches the queue). Default: nothing to do.
    fn set_queue_enabled(&self, _enabled: bool) -> io::Result<()> {
        Ok(())
    }
}

/// Counters of the device, shared by its threads.
#[derive(Debug, Default)]
pub struct NetStats {
    /// Frames sent to the back end.
    pub tx_frames: AtomicU64,
    /// Transmit chains dropped: malformed, too long, bad header, or the back end refused them.
    pub tx_dropped: AtomicU64,
    /// Frames delivered to the guest.
    pub rx_frames: AtomicU64,
    /// Frames from the back end dropped: no room in the guest's buffers, or malformed.
    pub rx_dropped: AtomicU64,
    /// Receive chains the guest made unusable (too small for the header, bad addresses).
    pub rx_bad_chains: AtomicU64,
    /// Control commands refused with VIRTIO_NET_ERR.
    pub ctrl_nacks: AtomicU64,
}

impl NetStats {
    fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Read a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// Errors from building a device.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// Zero back ends, or more than [`MAX_QUEUE_PAIRS`].
    #[error("virtio-net needs 1 to 16 queue pairs, got {0}")]
    QueuePairs(usize),
}

impl NetError {
    /// The errno the process should exit with.
    pub fn errno(&self) -> i32 {
        libc::EINVAL
    }
}

/// A virtio-net device.
pub struct Net {
    backends: Vec<Arc<dyn NetBackend>>,
    config: [u8; CONFIG_LEN],
    features: u64,
    queue_sizes: Vec<u16>,
    stats: Arc<NetStats>,
    workers: Vec<QueueWorker>,
}

impl std::fmt::Debug for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Net")
            .field("pairs", &self.backends.len())
            .field("features", &self.features)
            .finish_non_exhaustive()
    }
}

/// Drop offloads whose prerequisites are missing (virtio 1.2 §5.1.3.1).
fn consistent_offloads(mut f: u64) -> u64 {
    if f & bit(VIRTIO_NET_F_CSUM) == 0 {
        f &= !(bit(VIRTIO_NET_F_HOST_TSO4) | bit(VIRTIO_NET_F_HOST_TSO6));
    }
    if f & bit(VIRTIO_NET_F_GUEST_CSUM) == 0 {
        f &= !(bit(VIRTIO_NET_F_GUEST_TSO4) | bit(VIRTIO_NET_F_GUEST_TSO6));
    }
    if f & (bit(VIRTIO_NET_F_GUEST_TSO4) | bit(VIRTIO_NET_F_GUEST_TSO6)) == 0 {
        f &= !bit(VIRTIO_NET_F_GUEST_ECN);
    }
    f
}

impl Net {
    /// A NIC with MAC address `mac` and one queue pair per back end (1..=16; more than one
    /// offers MQ). The offloads offered are those every back end supports.
    pub fn new(mac: [u8; 6], backends: Vec<Arc<dyn NetBackend>>) -> Result<Net, NetError> {
        let pairs = backends.len();
        if !(1..=MAX_QUEUE_PAIRS).contains(&pairs) {
            return Err(NetError::QueuePairs(pairs));
        }
        let offloads = backends
            .iter()
            .fold(OFFLOAD_FEATURES, |f, b| f & b.offload_features());
        let mut features = BASE_FEATURES | consistent_offloads(offloads);
        if pairs > 1 {
            features |= bit(VIRTIO_NET_F_MQ);
        }
        let mut config = [0u8; CONFIG_LEN];
        config[0..6].copy_from_slice(&mac);
        config[6..8].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        config[8..10].copy_from_slice(&(pairs as u16).to_le_bytes());
        Ok(Net {
            backends,
            config,
            features,
            queue_sizes: vec![QUEUE_SIZE; 2 * pairs + 1],
            stats: Arc::default(),
            workers: Vec::new(),
        })
    }

    /// The device's counters.
    pub fn stats(&self) -> Arc<NetStats> {
        self.stats.clone()
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u16 {
        virtio_bindings::virtio_ids::VIRTIO_ID_NET as u16
    }

    fn pci_class(&self) -> u32 {
        // Network controller, Ethernet.
        0x02_00_00
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, a: Activation) -> Result<(), VirtioError> {
        self.reset();
        let features = a.features & (self.features | super::F_VERSION_1);
        let mq = features & bit(VIRTIO_NET_F_MQ) != 0;
        let pairs = if mq { self.backends.len() } else { 1 };
        let ctrl_index = if features & bit(VIRTIO_NET_F_CTRL_VQ) == 0 {
            None
        } else {
            Some(2 * pairs as u16)
        };
        // Until the driver asks for more (VQ_PAIRS_SET), only the first pair carries traffic.
        for (i, b) in self.backends.iter().enumerate() {
            b.set_offload(features).map_err(|e| {
                VirtioError::Backend(format!("cannot set the network offloads: {e}"))
            })?;
            let _ = b.set_queue_enabled(i == 0);
        }
        let mut ctrl_handler = Some(CtrlHandler::new(
            self.backends[..pairs].to_vec(),
            features,
            self.stats.clone(),
        ));
        let result = (|| {
            for q in a.queues {
                let index = q.index;
                let mem = a.mem.clone();
                let interrupt = a.interrupt.clone();
                let mut queue = q.queue;
                if Some(index) == ctrl_index {
                    let Some(mut h) = ctrl_handler.take() else {
                        continue;
                    };
                    let w = QueueWorker::spawn("virtio-net-ctrl".into(), q.notify, move || {
                        serve_queue(&mut queue, &mem, interrupt.as_ref(), index, |m, c| {
                            h.process(m, c)
                        })
                    })
                    .map_err(VirtioError::Thread)?;
                    self.workers.push(w);
                    continue;
                }
                let pair = usize::from(index / 2);
                if pair >= pairs {
                    continue;
                }
                let backend = self.backends[pair].clone();
                if index % 2 == 1 {
                    let mut h = TxHandler::new(backend, features, self.stats.clone());
                    let w =
                        QueueWorker::spawn(format!("virtio-net-tx{pair}"), q.notify, move || {
                            serve_queue(&mut queue, &mem, interrupt.as_ref(), index, |m, c| {
                                h.process(m, c)
                            })
                        })
                        .map_err(VirtioError::Thread)?;
                    self.workers.push(w);
                } else {
                    let h = RxHandler::new(
                        backend,
                        mem,
                        queue,
                        index,
                        interrupt,
                        features,
                        self.stats.clone(),
                    );
                    let t = rx::spawn_rx_thread(format!("virtio-net-rx{pair}"), h, q.notify)
                        .map_err(VirtioError::Thread)?;
                    self.workers.push(t);
                }
            }
            Ok(())
        })();
        if result.is_err() {
            self.reset();
        }
        result
    }

    fn reset(&mut self) {
        // Dropping a worker stops and joins its thread.
        self.workers.clear();
    }
}

/// A back end over one end of an `AF_UNIX` `SOCK_SEQPACKET` socket pair, which keeps frame
/// boundaries: for tests and fuzzing, where the other end plays the network.
#[derive(Debug)]
pub struct SocketBackend {
    sock: OwnedFd,
    offloads: u64,
    /// Every `set_offload` call's argument, in order.
    pub offload_calls: Mutex<Vec<u64>>,
}

impl SocketBackend {
    /// A back end supporting `offloads` (of [`OFFLOAD_FEATURES`]) and the peer's end, which is
    /// blocking; the back end's end does not block.
    pub fn pair(offloads: u64) -> io::Result<(SocketBackend, OwnedFd)> {
        let mut fds = [0; 2];
        // SAFETY: socketpair writes two descriptors into `fds`, which lives for the call.
        let r = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both descriptors are new and owned by nobody else.
        let (ours, peer) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: fcntl only takes the descriptor and flags.
        if unsafe { libc::fcntl(ours.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((
            SocketBackend {
                sock: ours,
                offloads,
                offload_calls: Mutex::new(Vec::new()),
            },
            peer,
        ))
    }
}

impl NetBackend for SocketBackend {
    fn read_frame(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            // SAFETY: recv writes at most `buf.len()` bytes into `buf`.
            let r = unsafe {
                libc::recv(
                    self.sock.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if r >= 0 {
                return Ok(r as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    fn write_frame(&self, iov: &[IoSlice]) -> io::Result<usize> {
        // SAFETY: an all-zero msghdr is valid (no name, no control data).
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
        msg.msg_iovlen = iov.len() as _;
        loop {
            // SAFETY: IoSlice is ABI-compatible with iovec; the kernel only reads the buffers.
            let r = unsafe {
                libc::sendmsg(
                    self.sock.as_raw_fd(),
                    &msg,
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                )
            };
            if r >= 0 {
                return Ok(r as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    fn set_offload(&self, guest_features: u64) -> io::Result<()> {
        if let Ok(mut calls) = self.offload_calls.lock() {
            calls.push(guest_features);
        }
        Ok(())
    }

    fn readable_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }

    fn offload_features(&self) -> u64 {
        self.offloads
    }
}

#[cfg(test)]
mod tests;
