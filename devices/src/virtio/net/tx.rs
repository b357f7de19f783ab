//! The transmit path: one chain = one `virtio_net_hdr_v1` + one Ethernet frame, gathered into a
//! per-queue buffer, checked, and written to the back end in one call.

use std::io::IoSlice;
use std::sync::Arc;

use virtio_bindings::virtio_net::*;
use virtio_queue::DescriptorChain;
use vm_memory::Bytes;

use super::{HDR_LEN, MAX_TX_BYTES, MAX_TX_DESCRIPTORS, MIN_FRAME, NetBackend, NetStats, bit};
use crate::virtio::GuestMemoryMmap;

/// Why a transmit chain was refused (the chain is returned with length 0 and counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxDrop {
    /// A device-writable descriptor in a transmit chain.
    WriteOnly,
    /// More than [`MAX_TX_DESCRIPTORS`] descriptors.
    TooManyDescriptors,
    /// More than [`MAX_TX_BYTES`] bytes.
    TooLong,
    /// Shorter than a header and an Ethernet header.
    TooShort,
    /// A descriptor outside guest memory.
    BadAddress,
    /// A header the driver may not send with the features it accepted.
    BadHeader,
    /// The back end refused the frame.
    Backend,
}

/// Serves one transmit queue.
pub struct TxHandler {
    backend: Arc<dyn NetBackend>,
    features: u64,
    stats: Arc<NetStats>,
    buf: Vec<u8>,
}

impl std::fmt::Debug for TxHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TxHandler").finish_non_exhaustive()
    }
}

/// Check a transmit header against the frame it precedes and the features the driver accepted.
pub fn valid_tx_header(hdr: &[u8; HDR_LEN], frame_len: usize, features: u64) -> bool {
    let flags = u32::from(hdr[0]);
    let gso_type = u32::from(hdr[1]);
    let gso_size = u16::from_le_bytes([hdr[4], hdr[5]]);
    let csum_start = usize::from(u16::from_le_bytes([hdr[6], hdr[7]]));
    let csum_offset = usize::from(u16::from_le_bytes([hdr[8], hdr[9]]));
    if flags & !(VIRTIO_NET_HDR_F_NEEDS_CSUM | VIRTIO_NET_HDR_F_DATA_VALID) != 0 {
        return false;
    }
    let needs_csum = flags & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0;
    if needs_csum
        && (features & bit(VIRTIO_NET_F_CSUM) == 0 || csum_start + csum_offset + 2 > frame_len)
    {
        return false;
    }
    let needed = match gso_type {
        VIRTIO_NET_HDR_GSO_NONE => return true,
        VIRTIO_NET_HDR_GSO_TCPV4 => VIRTIO_NET_F_HOST_TSO4,
        VIRTIO_NET_HDR_GSO_TCPV6 => VIRTIO_NET_F_HOST_TSO6,
        // UDP fragmentation, USO and ECN are not offered.
        _ => return false,
    };
    features & bit(needed) != 0 && gso_size > 0 && needs_csum
}

impl TxHandler {
    /// A handler sending to `backend` for a driver that accepted `features`.
    pub fn new(backend: Arc<dyn NetBackend>, features: u64, stats: Arc<NetStats>) -> TxHandler {
        TxHandler {
            backend,
            features,
            stats,
            buf: vec![0; MAX_TX_BYTES],
        }
    }

    /// Gather a chain into `self.buf`; the number of bytes.
    fn gather(
        &mut self,
        mem: &GuestMemoryMmap,
        chain: DescriptorChain<&GuestMemoryMmap>,
    ) -> Result<usize, TxDrop> {
        let mut len = 0usize;
        for (i, d) in chain.enumerate() {
            if i == MAX_TX_DESCRIPTORS {
                return Err(TxDrop::TooManyDescriptors);
            }
            if d.is_write_only() {
                return Err(TxDrop::WriteOnly);
            }
            let n = d.len() as usize;
            let end = len
                .checked_add(n)
                .filter(|e| *e <= MAX_TX_BYTES)
                .ok_or(TxDrop::TooLong)?;
            mem.read_slice(&mut self.buf[len..end], d.addr())
                .map_err(|_| TxDrop::BadAddress)?;
            len = end;
        }
        Ok(len)
    }

    /// Send one chain's frame; `Err` says why it was dropped.
    pub fn send(
        &mut self,
        mem: &GuestMemoryMmap,
        chain: DescriptorChain<&GuestMemoryMmap>,
    ) -> Result<(), TxDrop> {
        let len = self.gather(mem, chain)?;
        if len < HDR_LEN + MIN_FRAME {
            return Err(TxDrop::TooShort);
        }
        let mut hdr = [0u8; HDR_LEN];
        hdr.copy_from_slice(&self.buf[..HDR_LEN]);
        if !valid_tx_header(&hdr, len - HDR_LEN, self.features) {
            return Err(TxDrop::BadHeader);
        }
        match self.backend.write_frame(&[IoSlice::new(&self.buf[..len])]) {
            Ok(n) if n == len => Ok(()),
            _ => Err(TxDrop::Backend),
        }
    }

    /// Serve one chain for [`serve_queue`](crate::virtio::serve_queue): the used length is
    /// always 0 (the device writes nothing into a transmit chain).
    pub fn process(
        &mut self,
        mem: &GuestMemoryMmap,
        chain: DescriptorChain<&GuestMemoryMmap>,
    ) -> u32 {
        match self.send(mem, chain) {
            Ok(()) => NetStats::inc(&self.stats.tx_frames),
            Err(_) => NetStats::inc(&self.stats.tx_dropped),
        }
        0
    }
}
