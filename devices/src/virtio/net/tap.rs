//! A [`NetBackend`] over one queue of a host TAP device. The VMM opens the queue with
//! `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR` and sets a 12-byte virtio-net header
//! (`TUNSETVNETHDRSZ`), so every frame read or written already carries the `virtio_net_hdr_v1`
//! the device speaks: the header passes through both ways.
//!
//! Reads and writes never block: the descriptor is non-blocking, and a TAP drops what it cannot
//! queue rather than making the writer wait.

use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use vmm_sys_util::ioctl::{ioctl_with_ref, ioctl_with_val};

use super::vhost::tap_offload_flags;
use super::{NetBackend, OFFLOAD_FEATURES};

/// Length of an interface name in `struct ifreq`, terminating NUL included.
pub const IFNAMSIZ: usize = 16;

/// `struct ifreq` as the TUN ioctls (`TUNSETIFF`, `TUNSETQUEUE`) read it: the name and the
/// flags, then the rest of the union (40 bytes in all).
#[repr(C)]
pub struct IfReq {
    /// The interface name, NUL-padded.
    pub name: [u8; IFNAMSIZ],
    /// `IFF_*` flags.
    pub flags: libc::c_short,
    _pad: [u8; 22],
}

impl IfReq {
    /// A request for interface `name` (cut to `IFNAMSIZ - 1` bytes; empty for none) with
    /// `flags`.
    pub fn new(name: &[u8], flags: libc::c_int) -> IfReq {
        let mut req = IfReq {
            name: [0; IFNAMSIZ],
            flags: flags as libc::c_short,
            _pad: [0; 22],
        };
        let n = name.len().min(IFNAMSIZ - 1);
        req.name[..n].copy_from_slice(&name[..n]);
        req
    }
}

/// One queue of a TAP device, as the frame back end of one virtio-net queue pair.
#[derive(Debug)]
pub struct TapBackend {
    fd: OwnedFd,
}

/// Set `O_NONBLOCK` on `fd`, keeping its other status flags.
pub(super) fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: F_GETFL only reads the descriptor's status flags.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: F_SETFL only changes the descriptor's status flags.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl TapBackend {
    /// A back end over `fd`, one TAP queue opened with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR` and a
    /// 12-byte header already set; makes it non-blocking.
    pub fn new(fd: OwnedFd) -> io::Result<TapBackend> {
        set_nonblocking(fd.as_raw_fd())?;
        Ok(TapBackend { fd })
    }
}

impl NetBackend for TapBackend {
    fn read_frame(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            // SAFETY: read writes at most `buf.len()` bytes into `buf`, which lives for the call.
            let r = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
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
        let count = libc::c_int::try_from(iov.len())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        loop {
            // SAFETY: IoSlice is ABI-compatible with iovec; writev only reads the `count`
            // buffers, which live for the call.
            let r = unsafe { libc::writev(self.fd.as_raw_fd(), iov.as_ptr().cast(), count) };
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
        let flags = libc::c_ulong::from(tap_offload_flags(guest_features));
        // SAFETY: TUNSETOFFLOAD takes its argument by value and touches no memory of ours.
        let r = unsafe { ioctl_with_val(&self.fd, libc::TUNSETOFFLOAD as _, flags) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn readable_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    fn offload_features(&self) -> u64 {
        OFFLOAD_FEATURES
    }

    /// Attach (`IFF_ATTACH_QUEUE`) or detach (`IFF_DETACH_QUEUE`) this queue of a multi-queue
    /// TAP. A single-queue TAP refuses `TUNSETQUEUE` with `EINVAL`, as does attaching a queue
    /// already attached: both mean the queue receives, so enabling succeeds then.
    fn set_queue_enabled(&self, enabled: bool) -> io::Result<()> {
        let flags = if enabled {
            libc::IFF_ATTACH_QUEUE
        } else {
            libc::IFF_DETACH_QUEUE
        };
        let req = IfReq::new(b"", flags);
        // SAFETY: TUNSETQUEUE reads one `struct ifreq`; `IfReq` has its layout (40 bytes) and
        // lives for the call.
        let r = unsafe { ioctl_with_ref(&self.fd, libc::TUNSETQUEUE as _, &req) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if enabled && e.raw_os_error() == Some(libc::EINVAL) {
                return Ok(());
            }
            return Err(e);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::fs::{File, OpenOptions};
    use std::os::fd::FromRawFd;
    use std::os::unix::fs::OpenOptionsExt;

    use virtio_bindings::virtio_net::*;

    use super::super::HDR_LEN;
    use super::*;

    fn pipe() -> (OwnedFd, OwnedFd) {
        let mut fds = [0; 2];
        // SAFETY: pipe2 writes two descriptors into `fds`, which lives for the call.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: both descriptors are new and owned by nobody else.
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
    }

    fn is_nonblocking(fd: RawFd) -> bool {
        // SAFETY: F_GETFL only reads the descriptor's status flags.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        flags >= 0 && flags & libc::O_NONBLOCK != 0
    }

    #[test]
    fn reads_and_writes_pass_through_unchanged() {
        // A pipe stands in for the TAP: frames written come out the other end as they are,
        // header included, and what is written into it is read back whole.
        let (r, w) = pipe();
        let writer = TapBackend::new(w).unwrap();
        let reader = TapBackend::new(r).unwrap();
        assert!(is_nonblocking(writer.readable_fd()));
        assert!(is_nonblocking(reader.readable_fd()));

        let mut buf = [0u8; 64];
        let e = reader.read_frame(&mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);

        let hdr = [1u8, 0, 0, 0, 0, 0, 20, 0, 16, 0, 0, 0];
        let frame: Vec<u8> = (0..30u8).collect();
        let n = writer
            .write_frame(&[IoSlice::new(&hdr), IoSlice::new(&frame)])
            .unwrap();
        assert_eq!(n, HDR_LEN + frame.len());
        let n = reader.read_frame(&mut buf).unwrap();
        assert_eq!(&buf[..HDR_LEN], &hdr);
        assert_eq!(&buf[HDR_LEN..n], &frame[..]);
        assert_eq!(reader.offload_features(), OFFLOAD_FEATURES);
    }

    #[test]
    fn tap_ioctls_on_something_else_fail_cleanly() {
        let (r, _w) = pipe();
        let b = TapBackend::new(r).unwrap();
        assert!(b.set_offload(1 << VIRTIO_NET_F_GUEST_CSUM).is_err());
        assert!(b.set_queue_enabled(false).is_err());
        // ENOTTY, not EINVAL: a non-TAP is not mistaken for a single-queue TAP.
        assert!(b.set_queue_enabled(true).is_err());
    }

    /// Create TAP `name` with `queues` queues the way the VMM does; `None` (with a note) when
    /// this process may not.
    fn create_tap(name: &str, queues: usize) -> Option<Vec<OwnedFd>> {
        let mut flags = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;
        if queues > 1 {
            flags |= libc::IFF_MULTI_QUEUE;
        }
        let mut fds = Vec::new();
        for _ in 0..queues {
            let file: File = match OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_CLOEXEC)
                .open("/dev/net/tun")
            {
                Ok(f) => f,
                Err(e) => {
                    eprintln!("skipped: cannot open /dev/net/tun: {e}");
                    return None;
                }
            };
            let mut req = IfReq::new(name.as_bytes(), flags);
            // SAFETY: TUNSETIFF reads and writes one `struct ifreq`, which lives for the call.
            let r = unsafe {
                vmm_sys_util::ioctl::ioctl_with_mut_ref(&file, libc::TUNSETIFF as _, &mut req)
            };
            if r < 0 {
                eprintln!("skipped: TUNSETIFF: {}", io::Error::last_os_error());
                return None;
            }
            let hdr: libc::c_int = HDR_LEN as libc::c_int;
            // SAFETY: TUNSETVNETHDRSZ reads one int, which lives for the call.
            let r = unsafe { ioctl_with_ref(&file, libc::TUNSETVNETHDRSZ as _, &hdr) };
            assert!(r >= 0, "TUNSETVNETHDRSZ: {}", io::Error::last_os_error());
            fds.push(OwnedFd::from(file));
        }
        Some(fds)
    }

    const ALL_GUEST_OFFLOADS: u64 = (1 << VIRTIO_NET_F_GUEST_CSUM)
        | (1 << VIRTIO_NET_F_GUEST_TSO4)
        | (1 << VIRTIO_NET_F_GUEST_TSO6)
        | (1 << VIRTIO_NET_F_GUEST_ECN);

    #[test]
    fn single_queue_tap_takes_offloads_and_stays_enabled() {
        let name = format!("rvtb{}", std::process::id());
        let Some(mut fds) = create_tap(&name, 1) else {
            return;
        };
        let b = TapBackend::new(fds.remove(0)).unwrap();
        b.set_offload(ALL_GUEST_OFFLOADS).unwrap();
        b.set_offload(0).unwrap();
        b.set_queue_enabled(true).unwrap();
        // A single queue cannot be detached.
        assert!(b.set_queue_enabled(false).is_err());
        // The interface is down: nothing to read, and the read does not block.
        let mut buf = [0u8; 128];
        let e = b.read_frame(&mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn multi_queue_tap_detaches_and_attaches_a_queue() {
        let name = format!("rvtm{}", std::process::id());
        let Some(fds) = create_tap(&name, 2) else {
            return;
        };
        let queues: Vec<TapBackend> = fds
            .into_iter()
            .map(|fd| TapBackend::new(fd).unwrap())
            .collect();
        for q in &queues {
            q.set_offload(ALL_GUEST_OFFLOADS).unwrap();
        }
        queues[1].set_queue_enabled(false).unwrap();
        // Detaching twice is refused by the kernel: the first detach did happen.
        assert!(queues[1].set_queue_enabled(false).is_err());
        queues[1].set_queue_enabled(true).unwrap();
        queues[1].set_queue_enabled(false).unwrap();
        queues[0].set_queue_enabled(true).unwrap();
    }
}
