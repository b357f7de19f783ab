//! The control queue: `class u8, command u8, data[]` in device-readable buffers, then one
//! device-writable `ack` byte (VIRTIO_NET_OK or VIRTIO_NET_ERR).

use std::sync::Arc;

use virtio_bindings::virtio_net::*;
use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestAddress};

use super::{GUEST_OFFLOADS, NetBackend, NetStats, bit};
use crate::virtio::GuestMemoryMmap;

/// Bytes of a command we look at; every command we accept is shorter.
const MAX_COMMAND: usize = 64;
/// Descriptors of a command we look at; a longer chain is refused.
const MAX_DESCRIPTORS: usize = 16;

/// Serves the control queue.
pub struct CtrlHandler {
    backends: Vec<Arc<dyn NetBackend>>,
    features: u64,
    stats: Arc<NetStats>,
    pairs: usize,
}

impl std::fmt::Debug for CtrlHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CtrlHandler")
            .field("pairs", &self.pairs)
            .finish_non_exhaustive()
    }
}

impl CtrlHandler {
    /// A handler for a driver that accepted `features`, over the back ends of the queue pairs
    /// it may use.
    pub fn new(
        backends: Vec<Arc<dyn NetBackend>>,
        features: u64,
        stats: Arc<NetStats>,
    ) -> CtrlHandler {
        CtrlHandler {
            backends,
            features,
            stats,
            pairs: 1,
        }
    }

    /// Queue pairs in use (as last set with VQ_PAIRS_SET).
    pub fn pairs(&self) -> usize {
        self.pairs
    }

    /// Execute a command (`class`, `command`, data); true to acknowledge it.
    pub fn execute(&mut self, class: u8, command: u8, data: &[u8]) -> bool {
        let (class, command) = (u32::from(class), u32::from(command));
        match (class, command) {
            (VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET) => {
                if self.features & bit(VIRTIO_NET_F_MQ) == 0 {
                    return false;
                }
                let Ok(v) = <[u8; 2]>::try_from(data) else {
                    return false;
                };
                let n = usize::from(u16::from_le_bytes(v));
                if !(1..=self.backends.len()).contains(&n) {
                    return false;
                }
                for (i, b) in self.backends.iter().enumerate() {
                    let _ = b.set_queue_enabled(i < n);
                }
                self.pairs = n;
                true
            }
            (VIRTIO_NET_CTRL_GUEST_OFFLOADS, VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET) => {
                if self.features & bit(VIRTIO_NET_F_CTRL_GUEST_OFFLOADS) == 0 {
                    return false;
                }
                let Ok(v) = <[u8; 8]>::try_from(data) else {
                    return false;
                };
                let offloads = u64::from_le_bytes(v);
                // Only receive offloads the driver accepted at negotiation may be switched on.
                if offloads & !(self.features & GUEST_OFFLOADS) != 0 {
                    return false;
                }
                let now = (self.features & !GUEST_OFFLOADS) | offloads;
                self.backends.iter().all(|b| b.set_offload(now).is_ok())
            }
            // A TAP sees every frame anyway: promiscuous and all-multicast are what it does.
            (VIRTIO_NET_CTRL_RX, VIRTIO_NET_CTRL_RX_PROMISC | VIRTIO_NET_CTRL_RX_ALLMULTI) => {
                data.len() == 1
            }
            _ => false,
        }
    }

    /// Serve one command chain for [`serve_queue`](crate::virtio::serve_queue); returns the
    /// used length (1 when the ack byte was written).
    pub fn process(
        &mut self,
        mem: &GuestMemoryMmap,
        chain: DescriptorChain<&GuestMemoryMmap>,
    ) -> u32 {
        let mut cmd = [0u8; MAX_COMMAND];
        let mut len = 0usize;
        let mut ack_at: Option<GuestAddress> = None;
        let mut ok = true;
        for (i, d) in chain.enumerate() {
            if i == MAX_DESCRIPTORS {
                ok = false;
                break;
            }
            if d.is_write_only() {
                if ack_at.is_none() && d.len() > 0 {
                    ack_at = Some(d.addr());
                }
                continue;
            }
            if ack_at.is_some() {
                // Readable after writable: not a command.
                ok = false;
                continue;
            }
            let n = d.len() as usize;
            if n > MAX_COMMAND - len {
                ok = false;
                continue;
            }
            if mem.read_slice(&mut cmd[len..len + n], d.addr()).is_err() {
                ok = false;
            }
            len += n;
        }
        let Some(ack_at) = ack_at else {
            NetStats::inc(&self.stats.ctrl_nacks);
            return 0;
        };
        let ack = ok && len >= 2 && self.execute(cmd[0], cmd[1], &cmd[2..len]);
        if !ack {
            NetStats::inc(&self.stats.ctrl_nacks);
        }
        let status = if ack { VIRTIO_NET_OK } else { VIRTIO_NET_ERR } as u8;
        match mem.write_obj(status, ack_at) {
            Ok(()) => 1,
            Err(_) => 0,
        }
    }
}
