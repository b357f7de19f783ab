//! AF_VSOCK sockets through the C library's socket calls (std has no vsock), declared here so
//! that the program needs no crates, the socket timeouts std cannot set (on a listener, or
//! zero for none), an AF_PACKET socket that sends one raw Ethernet frame, and the ioctls and
//! `poll` of the graphical console's checks (fbdev screen information, the VT's graphics mode,
//! an evdev axis). x86_64 Linux values throughout (the only target the guest runs).

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
    fn poll(fds: *mut PollFd, nfds: c_ulong, timeout: c_int) -> c_int;
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

/// `open` flags for `OpenOptionsExt::custom_flags`.
pub const O_NONBLOCK: c_int = 0o4_000;
pub const O_NOCTTY: c_int = 0o400;

/// `FBIOGET_VSCREENINFO` and `FBIOGET_FSCREENINFO` (`<linux/fb.h>`: plain numbers, not `_IOR`).
const FBIOGET_VSCREENINFO: c_ulong = 0x4600;
const FBIOGET_FSCREENINFO: c_ulong = 0x4602;
/// `KDSETMODE` and its argument `KD_GRAPHICS` (`<linux/kd.h>`), passed by value.
const KDSETMODE: c_ulong = 0x4b3a;
const KD_GRAPHICS: c_ulong = 1;
/// `EVIOCGABS(0)` (`<linux/input.h>`): `_IOR('E', 0x40 + axis, struct input_absinfo)`.
const EVIOCGABS_0: c_ulong = 0x8018_4540;

/// `struct fb_bitfield` from `<linux/fb.h>`: where a colour's bits are in a pixel.
#[repr(C)]
#[derive(Default, Clone, Copy, Debug)]
pub struct FbBitfield {
    pub offset: u32,
    pub length: u32,
    pub msb_right: u32,
}

/// `struct fb_var_screeninfo` from `<linux/fb.h>` (the fields read here are public).
#[repr(C)]
#[derive(Default, Debug)]
pub struct FbVarScreeninfo {
    pub xres: u32,
    pub yres: u32,
    pub xres_virtual: u32,
    pub yres_virtual: u32,
    pub xoffset: u32,
    pub yoffset: u32,
    pub bits_per_pixel: u32,
    grayscale: u32,
    pub red: FbBitfield,
    pub green: FbBitfield,
    pub blue: FbBitfield,
    transp: FbBitfield,
    nonstd: u32,
    activate: u32,
    height: u32,
    width: u32,
    accel_flags: u32,
    /// pixclock, left/right/upper/lower margins, hsync_len, vsync_len, sync, vmode, rotate,
    /// colorspace.
    timing: [u32; 11],
    reserved: [u32; 4],
}

const _: () = assert!(size_of::<FbVarScreeninfo>() == 160);
const _: () = assert!(std::mem::offset_of!(FbVarScreeninfo, bits_per_pixel) == 24);
const _: () = assert!(std::mem::offset_of!(FbVarScreeninfo, red) == 32);

/// `struct fb_fix_screeninfo` from `<linux/fb.h>` (the fields read here are public).
#[repr(C)]
#[derive(Default, Debug)]
pub struct FbFixScreeninfo {
    pub id: [u8; 16],
    smem_start: c_ulong,
    pub smem_len: u32,
    fb_type: u32,
    type_aux: u32,
    visual: u32,
    xpanstep: u16,
    ypanstep: u16,
    ywrapstep: u16,
    /// Bytes from one line to the next (the stride).
    pub line_length: u32,
    mmio_start: c_ulong,
    mmio_len: u32,
    accel: u32,
    capabilities: u16,
    reserved: [u16; 2],
}

const _: () = assert!(size_of::<FbFixScreeninfo>() == 80);
const _: () = assert!(std::mem::offset_of!(FbFixScreeninfo, smem_len) == 24);
const _: () = assert!(std::mem::offset_of!(FbFixScreeninfo, line_length) == 48);

/// The framebuffer's variable and fixed screen information (`FBIOGET_VSCREENINFO`,
/// `FBIOGET_FSCREENINFO`); the error names the ioctl that failed.
pub fn fb_screeninfo(fb: &File) -> Result<(FbVarScreeninfo, FbFixScreeninfo), String> {
    let mut var = FbVarScreeninfo::default();
    let mut fix = FbFixScreeninfo::default();
    // SAFETY: this ioctl writes one `struct fb_var_screeninfo` (160 bytes, checked above)
    // through the pointer, which points at `var`.
    check(unsafe { ioctl(fb.as_raw_fd(), FBIOGET_VSCREENINFO, &raw mut var) })
        .map_err(|e| format!("ioctl FBIOGET_VSCREENINFO: {e}"))?;
    // SAFETY: this ioctl writes one `struct fb_fix_screeninfo` (80 bytes, checked above)
    // through the pointer, which points at `fix`.
    check(unsafe { ioctl(fb.as_raw_fd(), FBIOGET_FSCREENINFO, &raw mut fix) })
        .map_err(|e| format!("ioctl FBIOGET_FSCREENINFO: {e}"))?;
    Ok((var, fix))
}

/// Put the virtual console `tty` (e.g. `/dev/tty0`, the current one) in graphics mode
/// (`KDSETMODE` `KD_GRAPHICS`): the kernel's console stops drawing text and its cursor on the
/// framebuffer.
pub fn kd_set_graphics(tty: &File) -> io::Result<()> {
    // SAFETY: no pointers: the mode is passed by value.
    check(unsafe { ioctl(tty.as_raw_fd(), KDSETMODE, KD_GRAPHICS) }).map(|_| ())
}

/// `struct input_absinfo` from `<linux/input.h>`.
#[repr(C)]
#[derive(Default, Debug, Clone, Copy)]
pub struct InputAbsinfo {
    pub value: i32,
    pub minimum: i32,
    pub maximum: i32,
    fuzz: i32,
    flat: i32,
    resolution: i32,
}

const _: () = assert!(size_of::<InputAbsinfo>() == 24);

/// The current state of absolute axis `axis` (`ABS_X` = 0, `ABS_Y` = 1...) of an evdev device
/// (`EVIOCGABS`).
pub fn evdev_abs(dev: &File, axis: u8) -> io::Result<InputAbsinfo> {
    let mut info = InputAbsinfo::default();
    // SAFETY: this ioctl writes one `struct input_absinfo` (24 bytes, the size encoded in the
    // request) through the pointer, which points at `info`.
    check(unsafe {
        ioctl(
            dev.as_raw_fd(),
            EVIOCGABS_0 + c_ulong::from(axis),
            &raw mut info,
        )
    })?;
    Ok(info)
}

/// `struct pollfd`.
#[repr(C)]
struct PollFd {
    fd: c_int,
    events: i16,
    revents: i16,
}

const POLLIN: i16 = 1;

/// Wait up to `timeout` until one of `fds` can be read (or has an error or hung up, which the
/// read then tells); which ones can. All false after the timeout or an interrupting signal.
pub fn poll_readable(fds: &[BorrowedFd<'_>], timeout: Duration) -> io::Result<Vec<bool>> {
    let mut pfds: Vec<PollFd> = fds
        .iter()
        .map(|fd| PollFd {
            fd: fd.as_raw_fd(),
            events: POLLIN,
            revents: 0,
        })
        .collect();
    // Rounded up, so that a wait for less than a millisecond does not spin.
    let ms = timeout.as_micros().div_ceil(1000).min(c_int::MAX as u128) as c_int;
    // SAFETY: `pfds` is a live, writable array of `pfds.len()` `struct pollfd`s.
    let ret = unsafe { poll(pfds.as_mut_ptr(), pfds.len() as c_ulong, ms) };
    if ret < 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    Ok(pfds.iter().map(|p| ret > 0 && p.revents != 0).collect())
}
