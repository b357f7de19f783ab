//! virtio-net served by the host kernel's vhost-net: rvmspawn only sets the device up (guest
//! memory table, rings, kick and call eventfds, the TAP as back end) and the kernel moves the
//! frames between the rings and the TAP, so the data path never enters rvmspawn.
//!
//! The feature set is the userspace device's, with one queue pair: VERSION_1, MAC, STATUS,
//! MRG_RXBUF (when vhost-net offers it), CSUM/GUEST_CSUM, HOST/GUEST TSO4/TSO6 and GUEST_ECN.
//! The offloads are the TAP's business (`TUNSETOFFLOAD` from what the guest acked); vhost-net
//! only learns the ring features, VERSION_1 and MRG_RXBUF. No CTRL_VQ and therefore no MQ in
//! this first version (MQ requires the control queue).
//!
//! The TAP must have been created with `IFF_VNET_HDR` and a 12-byte header
//! (`TUNSETVNETHDRSZ`): vhost-net leaves the header to the TAP.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};

use vhost::VhostBackend;
use vhost::vhost_kern::vhost_binding::{VHOST_NET_SET_BACKEND, vhost_vring_file};
use virtio_bindings::virtio_net;
use vmm_sys_util::ioctl::{ioctl_with_ref, ioctl_with_val};

use crate::virtio::vhost_kern::{KernelVhost, fail};
use crate::virtio::{
    Activation, F_EVENT_IDX, F_INDIRECT_DESC, F_VERSION_1, GuestMemoryMmap, VirtioDevice,
    VirtioError,
};

/// Queue size of the rx and tx queues.
pub const QUEUE_SIZE: u16 = 256;
const VIRTIO_ID_NET: u16 = 1;
/// Queue indices: one pair, rx then tx.
const RX: usize = 0;
const TX: usize = 1;
const QUEUES: usize = 2;

const fn bit(b: u32) -> u64 {
    1 << b
}

const F_CSUM: u64 = bit(virtio_net::VIRTIO_NET_F_CSUM);
const F_GUEST_CSUM: u64 = bit(virtio_net::VIRTIO_NET_F_GUEST_CSUM);
const F_MAC: u64 = bit(virtio_net::VIRTIO_NET_F_MAC);
const F_GUEST_TSO4: u64 = bit(virtio_net::VIRTIO_NET_F_GUEST_TSO4);
const F_GUEST_TSO6: u64 = bit(virtio_net::VIRTIO_NET_F_GUEST_TSO6);
const F_GUEST_ECN: u64 = bit(virtio_net::VIRTIO_NET_F_GUEST_ECN);
const F_GUEST_UFO: u64 = bit(virtio_net::VIRTIO_NET_F_GUEST_UFO);
const F_HOST_TSO4: u64 = bit(virtio_net::VIRTIO_NET_F_HOST_TSO4);
const F_HOST_TSO6: u64 = bit(virtio_net::VIRTIO_NET_F_HOST_TSO6);
const F_MRG_RXBUF: u64 = bit(virtio_net::VIRTIO_NET_F_MRG_RXBUF);
const F_STATUS: u64 = bit(virtio_net::VIRTIO_NET_F_STATUS);
const F_VHOST_NET_HDR: u64 = bit(vhost::vhost_kern::vhost_binding::VHOST_NET_F_VIRTIO_NET_HDR);

/// What the TAP implements, whatever vhost-net says.
const TAP_FEATURES: u64 = F_MAC
    | F_STATUS
    | F_CSUM
    | F_GUEST_CSUM
    | F_HOST_TSO4
    | F_HOST_TSO6
    | F_GUEST_TSO4
    | F_GUEST_TSO6
    | F_GUEST_ECN;
/// What vhost-net must implement, since the transport offers it unconditionally.
const REQUIRED_VHOST: u64 = F_VERSION_1 | F_INDIRECT_DESC | F_EVENT_IDX;
/// Device features vhost-net may add.
const OPTIONAL_VHOST: u64 = F_MRG_RXBUF;

/// Errors from setting up vhost-net.
#[derive(Debug, thiserror::Error)]
pub enum VhostNetError {
    /// A vhost ioctl failed.
    #[error("vhost-net {0}: {1}")]
    Vhost(&'static str, String),
    /// vhost-net lacks a feature the device cannot do without.
    #[error("vhost-net lacks feature bits {0:#x}")]
    MissingFeatures(u64),
    /// No TAP queue was given.
    #[error("vhost-net needs a TAP file descriptor")]
    NoTap,
}

impl VhostNetError {
    /// The errno for the process exit code.
    pub fn errno(&self) -> i32 {
        match self {
            VhostNetError::Vhost(..) => libc::EIO,
            VhostNetError::MissingFeatures(_) => libc::EOPNOTSUPP,
            VhostNetError::NoTap => libc::EINVAL,
        }
    }
}

/// The device features offered to the driver (beyond the transport's) for what vhost-net
/// reports (`VHOST_GET_FEATURES`).
pub fn offered_features(vhost_features: u64) -> u64 {
    TAP_FEATURES | (vhost_features & OPTIONAL_VHOST)
}

/// The features to hand vhost-net (`VHOST_SET_FEATURES`) for what the driver acked: only those
/// vhost-net knows (it refuses any other bit); the offloads are set on the TAP instead.
pub fn vhost_ack(acked: u64, vhost_features: u64) -> u64 {
    // Bit 27 is VHOST_NET_F_VIRTIO_NET_HDR for vhost (the header is the TAP's, never vhost's).
    acked & vhost_features & !F_VHOST_NET_HDR
}

/// `TUNSETOFFLOAD` flags for what the guest acked: which offloaded frames the TAP may hand it.
/// The kernel refuses TSO/UFO without checksum offload and ECN without TSO, so those only come
/// together.
pub fn tap_offload_flags(acked: u64) -> libc::c_uint {
    if acked & F_GUEST_CSUM == 0 {
        return 0;
    }
    let mut flags = libc::TUN_F_CSUM;
    if acked & F_GUEST_TSO4 != 0 {
        flags |= libc::TUN_F_TSO4;
    }
    if acked & F_GUEST_TSO6 != 0 {
        flags |= libc::TUN_F_TSO6;
    }
    if acked & (F_GUEST_TSO4 | F_GUEST_TSO6) != 0 && acked & F_GUEST_ECN != 0 {
        flags |= libc::TUN_F_TSO_ECN;
    }
    if acked & F_GUEST_UFO != 0 {
        flags |= libc::TUN_F_UFO;
    }
    flags
}

/// The config space: MAC, status (link up) and max_virtqueue_pairs (1).
pub fn config_space(mac: &[u8; 6]) -> [u8; 10] {
    let mut c = [0u8; 10];
    c[..6].copy_from_slice(mac);
    let link_up = u16::try_from(virtio_net::VIRTIO_NET_S_LINK_UP).unwrap_or(1);
    c[6..8].copy_from_slice(&link_up.to_le_bytes());
    c[8..10].copy_from_slice(&1u16.to_le_bytes());
    c
}

/// Attach `tap` (or detach with `None`, which stops the queue) as queue `index`'s back end.
fn set_backend(vhost: &KernelVhost, index: usize, tap: Option<&File>) -> std::io::Result<()> {
    let arg = vhost_vring_file {
        index: u32::try_from(index).unwrap_or(u32::MAX),
        fd: tap.map_or(-1, AsRawFd::as_raw_fd),
    };
    // SAFETY: VHOST_NET_SET_BACKEND reads one `vhost_vring_file`, which lives for the call;
    // the fd in it is ours and stays open while vhost uses it (vhost takes a reference).
    let r = unsafe { ioctl_with_ref(vhost.file(), VHOST_NET_SET_BACKEND(), &arg) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Set the TAP's offloads (`TUNSETOFFLOAD`).
fn set_tap_offload(tap: &File, flags: libc::c_uint) -> std::io::Result<()> {
    // SAFETY: TUNSETOFFLOAD takes its argument by value and touches no memory of ours.
    let r = unsafe { ioctl_with_val(tap, libc::TUNSETOFFLOAD as _, libc::c_ulong::from(flags)) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// A virtio-net device whose data path is the kernel's vhost-net on a TAP.
pub struct VhostNet {
    handle: KernelVhost,
    taps: Vec<File>,
    config: [u8; 10],
    vhost_features: u64,
    running: bool,
}

impl std::fmt::Debug for VhostNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VhostNet")
            .field("mac", &&self.config[..6])
            .field("vhost_features", &self.vhost_features)
            .finish()
    }
}

impl VhostNet {
    /// A device on the open vhost-net file `vhost`, for the TAP queue descriptors `taps` (one
    /// per queue pair; only the first is used in this version) and the guest MAC `mac`, over
    /// guest memory `mem`. Claims the vhost device for this process; a file already ours (a
    /// duplicate kept over a guest reboot) is fine.
    pub fn new(
        vhost: File,
        taps: Vec<OwnedFd>,
        mac: [u8; 6],
        mem: GuestMemoryMmap,
    ) -> Result<VhostNet, VhostNetError> {
        if taps.is_empty() {
            return Err(VhostNetError::NoTap);
        }
        let handle = KernelVhost::claim(vhost, mem)
            .map_err(|e| VhostNetError::Vhost("VHOST_SET_OWNER", e.to_string()))?;
        let vhost_features = handle
            .get_features()
            .map_err(|e| VhostNetError::Vhost("VHOST_GET_FEATURES", e.to_string()))?;
        let missing = REQUIRED_VHOST & !vhost_features;
        if missing != 0 {
            return Err(VhostNetError::MissingFeatures(missing));
        }
        Ok(VhostNet {
            handle,
            taps: taps.into_iter().map(File::from).collect(),
            config: config_space(&mac),
            vhost_features,
            running: false,
        })
    }

    /// Detach the TAP from both queues: vhost stops touching the rings and guest memory.
    fn stop(&mut self) {
        if self.running {
            for i in [RX, TX] {
                let _ = set_backend(&self.handle, i, None);
            }
            self.running = false;
        }
    }
}

impl VirtioDevice for VhostNet {
    fn device_type(&self) -> u16 {
        VIRTIO_ID_NET
    }

    fn pci_class(&self) -> u32 {
        // Network controller, Ethernet.
        0x02_00_00
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; QUEUES]
    }

    fn features(&self) -> u64 {
        offered_features(self.vhost_features)
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::virtio::read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, a: Activation) -> Result<(), VirtioError> {
        self.stop();
        let tap = self
            .taps
            .first()
            .ok_or_else(|| VirtioError::Backend("vhost-net has no TAP".into()))?;
        // What the TAP may hand the guest: only the offloads it acked.
        set_tap_offload(tap, tap_offload_flags(a.features))
            .map_err(|e| VirtioError::Backend(format!("TUNSETOFFLOAD: {e}")))?;
        let h = &self.handle;
        h.set_features(vhost_ack(a.features, self.vhost_features))
            .map_err(fail("VHOST_SET_FEATURES"))?;
        h.set_memory()?;
        let mut ready = Vec::with_capacity(QUEUES);
        for q in &a.queues {
            let i = usize::from(q.index);
            if i >= QUEUES {
                return Err(VirtioError::BadQueue(q.index));
            }
            h.setup_vring(q, a.interrupt.as_ref(), QUEUE_SIZE)?;
            ready.push(i);
        }
        // Only a queue whose ring is set may get the back end (vhost checks the ring).
        for i in ready {
            self.running = true;
            if let Err(e) = set_backend(h, i, Some(tap)) {
                self.stop();
                return Err(VirtioError::Backend(format!(
                    "vhost-net VHOST_NET_SET_BACKEND: {e}"
                )));
            }
        }
        Ok(())
    }

    fn reset(&mut self) {
        self.stop();
    }
}

impl Drop for VhostNet {
    fn drop(&mut self) {
        // Stop the kernel's worker before this machine's memory goes away.
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VHOST_NET_TYPICAL: u64 = F_VERSION_1
        | F_INDIRECT_DESC
        | F_EVENT_IDX
        | F_MRG_RXBUF
        | (1 << 24) // NOTIFY_ON_EMPTY
        | (1 << 27) // VHOST_NET_F_VIRTIO_NET_HDR
        | (1 << 26); // VHOST_F_LOG_ALL

    #[test]
    fn features_are_the_taps_plus_mrg_rxbuf_from_vhost() {
        let offered = offered_features(VHOST_NET_TYPICAL);
        for f in [
            F_MAC,
            F_STATUS,
            F_CSUM,
            F_GUEST_CSUM,
            F_HOST_TSO4,
            F_HOST_TSO6,
            F_GUEST_TSO4,
            F_GUEST_TSO6,
            F_GUEST_ECN,
            F_MRG_RXBUF,
        ] {
            assert_ne!(offered & f, 0, "{f:#x}");
        }
        // Never vhost's own bits, the control queue or MQ.
        assert_eq!(offered & ((1 << 24) | (1 << 26) | (1 << 27)), 0);
        assert_eq!(offered & bit(virtio_net::VIRTIO_NET_F_CTRL_VQ), 0);
        assert_eq!(offered & bit(virtio_net::VIRTIO_NET_F_MQ), 0);
        // A vhost-net without mergeable buffers: not offered.
        assert_eq!(
            offered_features(VHOST_NET_TYPICAL & !F_MRG_RXBUF) & F_MRG_RXBUF,
            0
        );
    }

    #[test]
    fn vhost_only_learns_its_own_bits() {
        let acked = F_VERSION_1 | F_EVENT_IDX | F_MRG_RXBUF | F_GUEST_CSUM | F_GUEST_TSO4 | F_MAC;
        assert_eq!(
            vhost_ack(acked, VHOST_NET_TYPICAL),
            F_VERSION_1 | F_EVENT_IDX | F_MRG_RXBUF
        );
        // Never the header-in-vhost bit: the TAP supplies the header.
        assert_eq!(vhost_ack(u64::MAX, VHOST_NET_TYPICAL) & F_VHOST_NET_HDR, 0);
        assert_eq!(
            vhost_ack(u64::MAX, VHOST_NET_TYPICAL),
            VHOST_NET_TYPICAL & !F_VHOST_NET_HDR
        );
    }

    #[test]
    fn config_space_has_mac_link_up_and_one_pair() {
        let mac = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55];
        let c = config_space(&mac);
        assert_eq!(&c[..6], &mac);
        assert_eq!(u16::from_le_bytes([c[6], c[7]]), 1);
        assert_eq!(u16::from_le_bytes([c[8], c[9]]), 1);
    }

    #[test]
    fn offloads_follow_the_guest_features() {
        assert_eq!(tap_offload_flags(F_GUEST_TSO4 | F_GUEST_ECN), 0);
        assert_eq!(tap_offload_flags(F_GUEST_CSUM), libc::TUN_F_CSUM);
        assert_eq!(
            tap_offload_flags(F_GUEST_CSUM | F_GUEST_TSO4 | F_GUEST_TSO6 | F_GUEST_ECN),
            libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | libc::TUN_F_TSO_ECN
        );
        assert_eq!(
            tap_offload_flags(F_GUEST_CSUM | F_GUEST_ECN),
            libc::TUN_F_CSUM
        );
    }

    #[test]
    fn a_file_that_is_not_vhost_net_is_refused() {
        let mem = GuestMemoryMmap::from_ranges(&[(vm_memory::GuestAddress(0), 0x10_0000)]).unwrap();
        let not_vhost = File::open("/dev/null").unwrap();
        let tap: OwnedFd = File::open("/dev/null").unwrap().into();
        let e = VhostNet::new(not_vhost, vec![tap], [2, 0, 0, 0, 0, 1], mem.clone()).unwrap_err();
        assert!(
            matches!(e, VhostNetError::Vhost("VHOST_SET_OWNER", _)),
            "{e}"
        );
        let e =
            VhostNet::new(File::open("/dev/null").unwrap(), Vec::new(), [2; 6], mem).unwrap_err();
        assert!(matches!(e, VhostNetError::NoTap));
    }
}
