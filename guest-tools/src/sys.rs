//! AF_VSOCK sockets through the C library's socket calls (std has no vsock), declared here so
//! that the program needs no crates, the socket timeouts std cannot set (on a listener, or
//! zero for none), and an AF_PACKET socket that sends one raw Ethernet frame. x86_64 Linux
//! values throughout (the only target the guest runs).

use std::ffi::{CString, c_char, c_int, c_uint, c_ulong, c_void};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::Duration;

const AF_VSOCK: c_int = 40;
const AF_PACKET: c_int = 17;
const SOCK_RAW: c_int = 3;
const SOCK_STREAM: c_int = 1;
const SOCK_SEQPACKET: c_int = 5;
const SOCK_CLOEXEC: c_int = 0o2_000_000;
const SOL_SOCKET: c_int = 1;
/// `SO_RCVTIMEO`/`SO_SNDTIMEO` with a `struct timeval` (the `_OLD` numbers, which are the 64-bit
/// ones on x86_64). vsock's and Unix sockets' `accept`, `recv` and `send` honour them.
const SO_RCVTIMEO: c_int = 20;
const SO_SNDTIMEO: c_int = 21;
/// `SO_VM_SOCKETS_CONNECT_TIMEOUT` (level `AF_VSOCK`, `struct timeval`; the kernel's default
/// is 2 s).
const SO_VM_SOCKETS_CONNECT_TIMEOUT: c_int = 6;
const SHUT_WR: c_int = 1;
/// `IOCTL_VM_SOCKETS_GET_LOCAL_CID` on `/dev/vsock`: `_IO(7, 0xb9)`.
const IOCTL_VM_SOCKETS_GET_LOCAL_CID: c_ulong = 0x7b9;

/// Any CID (for bind), and what the CID ioctl answers when there is no vsock device.
pub const VMADDR_CID_ANY: u32 = u32::MAX;

/// `struct sockaddr_vm` from `<linux/vm_sockets.h>`.
#[repr(C)]
#[derive(Default)]
struct SockaddrVm {
    svm_family: u16,
    svm_reserved1: u16,
    svm_port: u32,
    svm_cid: u32,
    svm_flags: u8,
    svm_zero: [u8; 3],
}

const _: () = assert!(size_of::<SockaddrVm>() == 16);

/// `struct sockaddr_ll` from `<linux/if_packet.h>`.
#[repr(C)]
#[derive(Default)]
struct SockaddrLl {
    sll_family: u16,
    /// Big-endian.
    sll_protocol: u16,
    sll_ifindex: i32,
    sll_hatype: u16,
    sll_pkttype: u8,
    sll_halen: u8,
    sll_addr: [u8; 8],
}

const _: () = assert!(size_of::<SockaddrLl>() == 20);

/// `struct timeval` on x86_64.
#[repr(C)]
struct Timeval {
    tv_sec: i64,
    tv_usec: i64,
}

unsafe extern "C" {
    fn socket(domain: c_int, ty: c_int, protocol: c_int) -> c_int;
    fn connect(fd: c_int, addr: *const SockaddrVm, len: u32) -> c_int;
    fn bind(fd: c_int, addr: *const SockaddrVm, len: u32) -> c_int;
    fn listen(fd: c_int, backlog: c_int) -> c_int;
    fn accept4(fd: c_int, addr: *mut SockaddrVm, len: *mut u32, flags: c_int) -> c_int;
    fn setsockopt(fd: c_int, level: c_int, name: c_int, val: *const c_void, len: u32) -> c_int;
    fn shutdown(fd: c_int, how: c_int) -> c_int;
    fn ioctl(fd: c_int, request: c_ulong, ...) -> c_int;
    fn sendto(
        fd: c_int,
        buf: *const c_void,
        len: usize,
        flags: c_int,
        addr: *const SockaddrLl,
        addr_len: u32,
    ) -> isize;
    fn if_nametoindex(name: *const c_char) -> c_uint;
}

#[cfg(test)]
unsafe extern "C" {
    fn fcntl(fd: c_int, cmd: c_int, ...) -> c_int;
}

/// `fcntl`'s set-descriptor-flags command.
#[cfg(test)]
const F_SETFD: c_int = 2;

/// Clear `fd`'s close-on-exec flag, so that a program started next inherits it (for the unit
/// tests' swtpm). Async-signal-safe: fit for `pre_exec`.
#[cfg(test)]
pub fn keep_on_exec(fd: c_int) -> io::Result<()> {
    // SAFETY: no pointers; an invalid fd is an error return.
    check(unsafe { fcntl(fd, F_SETFD, 0 as c_int) }).map(|_| ())
}

/// The socket types a notify address can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SockType {
    Stream,
    SeqPacket,
}

fn check(ret: c_int) -> io::Result<c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn addr(cid: u32, port: u32) -> SockaddrVm {
    SockaddrVm {
        svm_family: AF_VSOCK as u16,
        svm_port: port,
        svm_cid: cid,
        ..Default::default()
    }
}

fn set_timeval(fd: BorrowedFd<'_>, level: c_int, name: c_int, timeout: Duration) -> io::Result<()> {
    let tv = Timeval {
        tv_sec: timeout.as_secs().min(i64::MAX as u64) as i64,
        tv_usec: i64::from(timeout.subsec_micros()),
    };
    // SAFETY: `tv` is a live `struct timeval` of the size passed; the kernel only reads it.
    check(unsafe {
        setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&raw const tv).cast(),
            size_of::<Timeval>() as u32,
        )
    })?;
    Ok(())
}

/// Reads and writes (and `accept` on a listener) on the socket `fd` fail with `WouldBlock` after
/// `timeout` without progress; zero means never, as for the kernel (std refuses zero, and has
/// no timeout for a listener's `accept`).
pub fn set_timeouts(fd: BorrowedFd<'_>, timeout: Duration) -> io::Result<()> {
    set_timeval(fd, SOL_SOCKET, SO_RCVTIMEO, timeout)?;
    set_timeval(fd, SOL_SOCKET, SO_SNDTIMEO, timeout)
}

/// A connected vsock socket; reads and writes go through `File`, whose `read`/`write` are
/// plain read(2)/write(2).
pub struct Vsock {
    file: File,
}

impl Vsock {
    fn new(ty: SockType) -> io::Result<Vsock> {
        let ty = match ty {
            SockType::Stream => SOCK_STREAM,
            SockType::SeqPacket => SOCK_SEQPACKET,
        };
        // SAFETY: no pointers; the result is checked.
        let fd = check(unsafe { socket(AF_VSOCK, ty | SOCK_CLOEXEC, 0) })?;
        // SAFETY: `fd` is a new socket that nothing else owns.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Vsock {
            file: File::from(owned),
        })
    }

    /// Reads and writes (and `accept` on a listener) fail with `WouldBlock` after `timeout`
    /// without progress.
    pub fn set_timeouts(&self, timeout: Duration) -> io::Result<()> {
        set_timeouts(self.as_fd(), timeout)
    }

    /// Connect to `cid:port`. `connect_timeout` replaces the kernel's 2 s.
    pub fn connect(
        ty: SockType,
        cid: u32,
        port: u32,
        connect_timeout: Option<Duration>,
    ) -> io::Result<Vsock> {
        let sock = Vsock::new(ty)?;
        if let Some(t) = connect_timeout {
            set_timeval(sock.as_fd(), AF_VSOCK, SO_VM_SOCKETS_CONNECT_TIMEOUT, t)?;
        }
        let sa = addr(cid, port);
        // SAFETY: `sa` is a valid sockaddr_vm of the length passed; the kernel only reads it.
        check(unsafe { connect(sock.file.as_raw_fd(), &sa, size_of::<SockaddrVm>() as u32) })?;
        Ok(sock)
    }

    /// A stream socket listening on `cid:port` (`VMADDR_CID_ANY` for any).
    pub fn listen(cid: u32, port: u32) -> io::Result<Vsock> {
        let sock = Vsock::new(SockType::Stream)?;
        let sa = addr(cid, port);
        // SAFETY: `sa` is a valid sockaddr_vm of the length passed; the kernel only reads it.
        check(unsafe { bind(sock.file.as_raw_fd(), &sa, size_of::<SockaddrVm>() as u32) })?;
        // SAFETY: no pointers; the result is checked.
        check(unsafe { listen(sock.file.as_raw_fd(), 1) })?;
        Ok(sock)
    }

    /// Accept one connection; returns it with the peer's CID and port.
    pub fn accept(&self) -> io::Result<(Vsock, u32, u32)> {
        let mut sa = SockaddrVm::default();
        let mut len = size_of::<SockaddrVm>() as u32;
        // SAFETY: `sa` and `len` are live and writable, `len` holds the size of `sa`.
        let fd = check(unsafe { accept4(self.file.as_raw_fd(), &mut sa, &mut len, SOCK_CLOEXEC) })?;
        // SAFETY: `fd` is a new socket that nothing else owns.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok((
            Vsock {
                file: File::from(owned),
            },
            sa.svm_cid,
            sa.svm_port,
        ))
    }

    /// No more writes: the peer reads end-of-file once it has everything sent before.
    pub fn shutdown_write(&self) -> io::Result<()> {
        // SAFETY: no pointers; the result is checked.
        check(unsafe { shutdown(self.file.as_raw_fd(), SHUT_WR) })?;
        Ok(())
    }
}

impl AsFd for Vsock {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

impl Read for Vsock {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.file.read(buf)
    }
}

impl Write for Vsock {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The guest's own CID from `/dev/vsock`: `Ok(None)` when there is no vsock device (no
/// `/dev/vsock`, or the ioctl answers `VMADDR_CID_ANY` because no transport has a device).
pub fn local_cid() -> io::Result<Option<u32>> {
    let dev = match File::open("/dev/vsock") {
        Ok(f) => f,
        Err(e) if matches!(e.raw_os_error(), Some(2 | 6 | 19)) => return Ok(None), // ENOENT, ENXIO, ENODEV
        Err(e) => return Err(e),
    };
    let mut cid: u32 = VMADDR_CID_ANY;
    // SAFETY: this ioctl writes one u32 through the pointer, which points at `cid`.
    check(unsafe {
        ioctl(
            dev.as_raw_fd(),
            IOCTL_VM_SOCKETS_GET_LOCAL_CID,
            &raw mut cid,
        )
    })?;
    Ok((cid != VMADDR_CID_ANY).then_some(cid))
}

/// `BLKZEROOUT` (`_IO(0x12, 127)`): zero a byte range of a block device (a range of u64 start
/// and length, both multiples of 512); the kernel sends the device WRITE_ZEROES requests when it
/// has them.
const BLKZEROOUT: c_ulong = 0x127f;

/// Zero `len` bytes of block device `dev` from `start` with `BLKZEROOUT`; returns when the
/// device has done it.
pub fn zero_out(dev: &File, start: u64, len: u64) -> io::Result<()> {
    let range = [start, len];
    // SAFETY: this ioctl reads two u64s through the pointer, which points at `range`.
    check(unsafe { ioctl(dev.as_raw_fd(), BLKZEROOUT, range.as_ptr()) }).map(|_| ())
}

/// Send `frame` (a whole Ethernet frame: destination, source, type, payload; no checksum) out
/// of interface `ifname` through an `AF_PACKET`/`SOCK_RAW` socket, as it is. The kernel refuses
/// one longer than the interface's MTU plus the 14-byte header (plus 4 more when the type is
/// 802.1Q) with EMSGSIZE. Needs CAP_NET_RAW.
pub fn send_raw_frame(ifname: &str, frame: &[u8]) -> io::Result<usize> {
    let name = CString::new(ifname)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in interface name"))?;
    // SAFETY: `name` is a NUL-terminated string that outlives the call, which only reads it.
    let index = unsafe { if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(io::Error::last_os_error());
    }
    // Protocol 0: this socket only sends, it receives nothing.
    // SAFETY: no pointers; the result is checked.
    let fd = check(unsafe { socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, 0) })?;
    // SAFETY: `fd` is a new socket that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let sa = SockaddrLl {
        sll_family: AF_PACKET as u16,
        sll_ifindex: i32::try_from(index)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "interface index"))?,
        ..Default::default()
    };
    // SAFETY: `frame` is readable for its length and `sa` is a valid sockaddr_ll of the length
    // passed; the kernel only reads both.
    let sent = unsafe {
        sendto(
            sock.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            0,
            &sa,
            size_of::<SockaddrLl>() as u32,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(sent as usize)
}
