//! A [`NetBackend`] speaking the stream framing of QEMU's `-netdev stream`, which the `passt`
//! helper uses over a connected `AF_UNIX` `SOCK_STREAM` socket: each Ethernet frame, both ways,
//! is a 4-byte big-endian length followed by that many bytes of frame, with no virtio-net
//! header. Lengths are 14 ([`MIN_FRAME`]) to 65535 ([`STREAM_MAX_FRAME`]); the peer resets the
//! stream on anything else, so such a frame never leaves this back end.
//!
//! Transmit: the guest's `virtio_net_hdr_v1` is dropped (passt terminates TCP and UDP itself,
//! so partial checksums and TSO frames need no completing) and the length prefix and frame go
//! out with one `sendmsg`. A short write leaves the rest of the frame in a buffer that is sent
//! before anything else, so the stream never carries part of a frame followed by another frame.
//! A full socket is waited for with `poll` for at most [`SEND_WAIT`] per call (on the device's
//! transmit thread, never a vCPU); a frame none of which could be written in that time is
//! dropped with `WouldBlock`, while a partly written one stays committed and is finished first
//! at the next write.
//!
//! Receive: whatever the socket holds is read into a buffer allocated once, and each
//! [`read_frame`](NetBackend::read_frame) hands out one complete frame behind 12 zero bytes of
//! header (no offload: checksums complete, no GSO; the device fills in `num_buffers`). A
//! buffered frame is always returned before `WouldBlock`, so the receive thread, which reads
//! until `WouldBlock`, never sleeps on the socket with frames left here.
//!
//! A length out of range from the peer means the stream is out of step: nothing more can be
//! trusted, so the back end shuts the socket down and every later read fails the same way. End
//! of stream, or any other receive error, ends the stream the same way. Shutting the socket down
//! makes it poll as hung up, which the receive thread treats as a back end error (it retries at
//! a slow pace instead of spinning on a readable descriptor).

use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6,
    VIRTIO_NET_HDR_F_DATA_VALID,
};

use super::tap::set_nonblocking;
use super::{HDR_LEN, MIN_FRAME, NetBackend, bit};

/// Largest frame the stream framing carries, either way.
pub const STREAM_MAX_FRAME: usize = 65535;
/// Length of the big-endian length prefix.
const PREFIX_LEN: usize = 4;
/// Size of the receive buffer: several frames' worth, read with one call when they are there.
pub const STREAM_RX_BUF_LEN: usize = 256 * 1024;
/// Socket buffer sizes asked for (the kernel may grant less).
const SOCKET_BUF_LEN: libc::c_int = 16 << 20;
/// Longest a [`write_frame`](NetBackend::write_frame) call waits for room in the socket.
pub const SEND_WAIT: Duration = Duration::from_millis(100);
/// Longest single `poll` while waiting for room.
const POLL_SLICE_MS: u128 = 20;
/// Pieces a frame is sent from without copying: the prefix and this many slices minus one.
const MAX_IOVECS: usize = 17;

/// Receive side: bytes `start..end` of `buf` are read from the socket and not handed out yet.
struct RxSide {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    /// Set once the stream has ended: the kind every later read fails with.
    failed: Option<io::ErrorKind>,
}

/// Transmit side: bytes `start..end` of `buf` are the rest of a frame partly sent.
struct TxSide {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
}

/// The frame back end over a connected stream socket to passt (or anything speaking QEMU's
/// `-netdev stream` framing).
pub struct StreamBackend {
    sock: OwnedFd,
    rx: Mutex<RxSide>,
    tx: Mutex<TxSide>,
    desyncs: AtomicU64,
    /// The driver accepted GUEST_CSUM: received frames are marked DATA_VALID.
    data_valid: AtomicBool,
}

impl std::fmt::Debug for StreamBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamBackend")
            .field("sock", &self.sock)
            .field("desyncs", &self.desyncs())
            .finish_non_exhaustive()
    }
}

fn poisoned() -> io::Error {
    io::Error::other("stream back end lock poisoned")
}

fn ended(kind: io::ErrorKind) -> io::Error {
    io::Error::new(kind, "the network stream has ended")
}

/// The bytes a frame occupies on the stream, in order: the prefix, then `iov` without its first
/// [`HDR_LEN`] bytes (empty pieces left out).
fn stream_pieces<'a>(
    prefix: &'a [u8; PREFIX_LEN],
    iov: &'a [IoSlice<'_>],
) -> impl Iterator<Item = &'a [u8]> {
    let mut skip = HDR_LEN;
    let frame = iov.iter().filter_map(move |s| {
        let s: &'a [u8] = s;
        if skip >= s.len() {
            skip -= s.len();
            return None;
        }
        let rest = &s[skip..];
        skip = 0;
        Some(rest)
    });
    std::iter::once(&prefix[..]).chain(frame)
}

/// `sendmsg` the buffers without blocking or raising SIGPIPE; EINTR is retried.
fn send_iovecs(fd: RawFd, iov: &[libc::iovec]) -> io::Result<usize> {
    // SAFETY: an all-zero msghdr is valid (no name, no control data).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_ptr().cast_mut();
    msg.msg_iovlen = iov.len() as _;
    loop {
        // SAFETY: `msg` points at `iov.len()` iovecs describing live buffers, which the kernel
        // only reads.
        let r = unsafe { libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
        if r >= 0 {
            return Ok(r as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

fn iovec(b: &[u8]) -> libc::iovec {
    libc::iovec {
        iov_base: b.as_ptr().cast_mut().cast(),
        iov_len: b.len(),
    }
}

/// Wait until `fd` polls writable (or hung up, or in error: the next send reports it); `false`
/// when `deadline` passed first.
fn wait_writable(fd: RawFd, deadline: Instant) -> io::Result<bool> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        let ms = left.as_millis().clamp(1, POLL_SLICE_MS) as libc::c_int;
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLOUT,
            revents: 0,
        };
        // SAFETY: `pfd` is one valid pollfd for the call.
        let r = unsafe { libc::poll(&mut pfd, 1, ms) };
        if r > 0 {
            return Ok(true);
        }
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

impl TxSide {
    fn pending(&self) -> bool {
        self.start < self.end
    }

    /// Send the rest of a partly sent frame, waiting for room until `deadline`; `WouldBlock`
    /// when some is still left then.
    fn flush(&mut self, fd: RawFd, deadline: Instant) -> io::Result<()> {
        while self.pending() {
            match send_iovecs(fd, &[iovec(&self.buf[self.start..self.end])]) {
                Ok(n) => self.start = (self.start + n).min(self.end),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if !wait_writable(fd, deadline)? {
                        return Err(e);
                    }
                }
                Err(e) => return Err(e),
            }
        }
        self.start = 0;
        self.end = 0;
        Ok(())
    }

    /// Keep the stream bytes of a frame from offset `from` on, to be sent by [`flush`].
    fn keep(&mut self, prefix: &[u8; PREFIX_LEN], iov: &[IoSlice], from: usize) {
        let mut skip = from;
        let mut at = 0;
        for piece in stream_pieces(prefix, iov) {
            if skip >= piece.len() {
                skip -= piece.len();
                continue;
            }
            let piece = &piece[skip..];
            skip = 0;
            let Some(dst) = self.buf.get_mut(at..at + piece.len()) else {
                break;
            };
            dst.copy_from_slice(piece);
            at += piece.len();
        }
        self.start = 0;
        self.end = at;
    }
}

impl RxSide {
    /// Where the next frame is (offset and length in `buf`) if it is all buffered; `Err` with
    /// the length when the prefix is out of range.
    fn next_frame(&self) -> Result<Option<(usize, usize)>, u32> {
        let avail = &self.buf[self.start..self.end];
        let Some(prefix) = avail.first_chunk::<PREFIX_LEN>() else {
            return Ok(None);
        };
        let len = u32::from_be_bytes(*prefix);
        let frame_len = len as usize;
        if !(MIN_FRAME..=STREAM_MAX_FRAME).contains(&frame_len) {
            return Err(len);
        }
        if avail.len() - PREFIX_LEN < frame_len {
            return Ok(None);
        }
        Ok(Some((self.start + PREFIX_LEN, frame_len)))
    }

    /// Make room at the end of `buf` for at least a whole frame: at most one incomplete frame
    /// is buffered when this is called, so moving it to the front always does.
    fn make_room(&mut self) {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.buf.len() - self.end < PREFIX_LEN + STREAM_MAX_FRAME {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
    }
}

impl StreamBackend {
    /// A back end over `sock`, a connected `AF_UNIX` `SOCK_STREAM` socket whose peer speaks
    /// the stream framing. Makes it non-blocking and asks for 16 MiB socket buffers (what the
    /// kernel refuses is left as it is). The buffers are allocated here, once.
    pub fn new(sock: OwnedFd) -> io::Result<StreamBackend> {
        set_nonblocking(sock.as_raw_fd())?;
        for opt in [libc::SO_SNDBUF, libc::SO_RCVBUF] {
            let len = SOCKET_BUF_LEN;
            // SAFETY: setsockopt reads one int, which lives for the call.
            let _ = unsafe {
                libc::setsockopt(
                    sock.as_raw_fd(),
                    libc::SOL_SOCKET,
                    opt,
                    (&len as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
        }
        Ok(StreamBackend {
            sock,
            rx: Mutex::new(RxSide {
                buf: vec![0; STREAM_RX_BUF_LEN].into_boxed_slice(),
                start: 0,
                end: 0,
                failed: None,
            }),
            tx: Mutex::new(TxSide {
                buf: vec![0; PREFIX_LEN + STREAM_MAX_FRAME].into_boxed_slice(),
                start: 0,
                end: 0,
            }),
            desyncs: AtomicU64::new(0),
            data_valid: AtomicBool::new(false),
        })
    }

    /// How many times the peer sent a length out of range (the stream ends at the first).
    pub fn desyncs(&self) -> u64 {
        self.desyncs.load(Ordering::Relaxed)
    }

    /// End the stream: every later read fails with `kind`, and shutting the socket down both
    /// ways tells the peer and makes the socket poll as hung up.
    fn end_stream(&self, rx: &mut RxSide, kind: io::ErrorKind) {
        rx.failed = Some(kind);
        rx.start = 0;
        rx.end = 0;
        // SAFETY: shutdown only takes the descriptor and a mode.
        let _ = unsafe { libc::shutdown(self.sock.as_raw_fd(), libc::SHUT_RDWR) };
    }

    fn rx(&self) -> io::Result<MutexGuard<'_, RxSide>> {
        self.rx.lock().map_err(|_| poisoned())
    }

    fn tx(&self) -> io::Result<MutexGuard<'_, TxSide>> {
        self.tx.lock().map_err(|_| poisoned())
    }

    /// Bytes of a partly sent frame still waiting to be sent.
    #[cfg(test)]
    fn pending_len(&self) -> usize {
        self.tx().map(|t| t.end - t.start).unwrap_or(0)
    }

    /// Send what is left of a partly sent frame, waiting up to `wait`.
    #[cfg(test)]
    fn finish(&self, wait: Duration) -> io::Result<()> {
        self.tx()?
            .flush(self.sock.as_raw_fd(), Instant::now() + wait)
    }
}

impl NetBackend for StreamBackend {
    /// One frame behind 12 zero bytes of header. A frame longer than `buf` has room for is cut
    /// to `buf.len()` bytes (the rest of it is skipped, the stream stays in step); the device's
    /// receive buffer ([`RX_BUF_LEN`](super::RX_BUF_LEN)) always has room for a whole one.
    /// `WouldBlock` when no whole frame is buffered or waiting in the socket; `InvalidData`
    /// when the peer sent a length out of range, `UnexpectedEof` when it closed the stream, and
    /// from then on the same error on every call.
    fn read_frame(&self, buf: &mut [u8]) -> io::Result<usize> {
        let mut rx = self.rx()?;
        loop {
            if let Some(kind) = rx.failed {
                return Err(ended(kind));
            }
            match rx.next_frame() {
                Ok(Some((at, len))) => {
                    let hdr = HDR_LEN.min(buf.len());
                    buf[..hdr].fill(0);
                    // passt's frames carry complete, correct checksums and never crossed a
                    // wire: the guest need not verify them again.
                    if hdr > 0 && self.data_valid.load(Ordering::Relaxed) {
                        buf[0] = VIRTIO_NET_HDR_F_DATA_VALID as u8;
                    }
                    let copy = len.min(buf.len() - hdr);
                    buf[hdr..hdr + copy].copy_from_slice(&rx.buf[at..at + copy]);
                    rx.start = at + len;
                    if rx.start == rx.end {
                        rx.start = 0;
                        rx.end = 0;
                    }
                    return Ok(hdr + copy);
                }
                Ok(None) => {}
                Err(len) => {
                    self.desyncs.fetch_add(1, Ordering::Relaxed);
                    self.end_stream(&mut rx, io::ErrorKind::InvalidData);
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("the network stream sent a frame length of {len}"),
                    ));
                }
            }
            rx.make_room();
            let end = rx.end;
            let room = &mut rx.buf[end..];
            // SAFETY: recv writes at most `room.len()` bytes into `room`, which lives for the
            // call.
            let r = unsafe {
                libc::recv(
                    self.sock.as_raw_fd(),
                    room.as_mut_ptr().cast(),
                    room.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if r > 0 {
                rx.end = (end + r as usize).min(rx.buf.len());
                continue;
            }
            if r == 0 {
                self.end_stream(&mut rx, io::ErrorKind::UnexpectedEof);
                return Err(ended(io::ErrorKind::UnexpectedEof));
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => return Err(e),
                kind => {
                    self.end_stream(&mut rx, kind);
                    return Err(e);
                }
            }
        }
    }

    /// Send the frame in `iov` (after its 12-byte header, which is dropped) with its length
    /// prefix; `Ok` with the whole length of `iov` once the frame is sent or committed (partly
    /// sent, the rest to follow before any other frame). `InvalidInput`, with nothing sent, for
    /// a frame shorter than 14 or longer than 65535 bytes; `WouldBlock`, with nothing of this
    /// frame sent, when the socket stayed full for [`SEND_WAIT`]; the socket's error (`EPIPE`,
    /// `ECONNRESET`) once the peer is gone.
    fn write_frame(&self, iov: &[IoSlice]) -> io::Result<usize> {
        let total = iov
            .iter()
            .try_fold(0usize, |sum, s| sum.checked_add(s.len()))
            .ok_or(io::ErrorKind::InvalidInput)?;
        let frame_len = total.saturating_sub(HDR_LEN);
        if total < HDR_LEN || !(MIN_FRAME..=STREAM_MAX_FRAME).contains(&frame_len) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("a {frame_len}-byte frame cannot go over the network stream"),
            ));
        }
        let fd = self.sock.as_raw_fd();
        let prefix = (frame_len as u32).to_be_bytes();
        let stream_len = PREFIX_LEN + frame_len;
        let deadline = Instant::now() + SEND_WAIT;
        let mut tx = self.tx()?;
        // The rest of an earlier frame goes first; if it cannot, this frame is dropped.
        tx.flush(fd, deadline)?;

        let mut iovecs = [iovec(&[]); MAX_IOVECS];
        let mut count = 0;
        for piece in stream_pieces(&prefix, iov) {
            if count == MAX_IOVECS {
                count = 0;
                break;
            }
            iovecs[count] = iovec(piece);
            count += 1;
        }
        let sent = if count == 0 {
            // Too many pieces to send in place: copy the frame and send it from the buffer.
            0
        } else {
            loop {
                match send_iovecs(fd, &iovecs[..count]) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        if !wait_writable(fd, deadline)? {
                            return Err(e);
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
        };
        if sent < stream_len {
            tx.keep(&prefix, iov, sent);
            match tx.flush(fd, deadline) {
                Ok(()) => {}
                // Part of the frame is out: it is committed, and finished at the next write.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && (sent > 0 || tx.start > 0) => {}
                Err(e) => {
                    if sent == 0 && tx.start == 0 {
                        // Nothing of it went out: forget it.
                        tx.start = 0;
                        tx.end = 0;
                    }
                    return Err(e);
                }
            }
        }
        Ok(total)
    }

    fn set_offload(&self, guest_features: u64) -> io::Result<()> {
        self.data_valid.store(
            guest_features & bit(VIRTIO_NET_F_GUEST_CSUM) != 0,
            Ordering::Relaxed,
        );
        Ok(())
    }

    fn readable_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }

    /// Checksum and TSO offload from the guest: passt terminates TCP and UDP, so it takes
    /// partial checksums and TSO frames (up to 65535 bytes). Towards the guest only GUEST_CSUM,
    /// for DATA_VALID: passt's frames come complete, never as GSO.
    fn offload_features(&self) -> u64 {
        bit(VIRTIO_NET_F_CSUM)
            | bit(VIRTIO_NET_F_HOST_TSO4)
            | bit(VIRTIO_NET_F_HOST_TSO6)
            | bit(VIRTIO_NET_F_GUEST_CSUM)
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    use std::sync::mpsc;

    use super::*;

    fn pair() -> (StreamBackend, UnixStream) {
        let (ours, peer) = UnixStream::pair().unwrap();
        (StreamBackend::new(OwnedFd::from(ours)).unwrap(), peer)
    }

    /// A frame whose bytes say which frame it is and where in it they are.
    fn frame(id: u32, len: usize) -> Vec<u8> {
        let mut f: Vec<u8> = (0..len)
            .map(|i| (i as u32).wrapping_mul(7).wrapping_add(id) as u8)
            .collect();
        let n = 4.min(len);
        f[..n].copy_from_slice(&id.to_be_bytes()[..n]);
        f
    }

    fn framed(f: &[u8]) -> Vec<u8> {
        let mut v = (f.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(f);
        v
    }

    const HDR: [u8; HDR_LEN] = [1, 4, 54, 0, 0xb4, 0x05, 34, 0, 16, 0, 0, 0];

    fn send(b: &StreamBackend, f: &[u8]) -> io::Result<usize> {
        b.write_frame(&[IoSlice::new(&HDR), IoSlice::new(f)])
    }

    fn peer_nonblocking_read(peer: &mut UnixStream) -> Vec<u8> {
        peer.set_nonblocking(true).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match peer.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("peer read: {e}"),
            }
        }
        peer.set_nonblocking(false).unwrap();
        got
    }

    fn poll_revents(fd: RawFd, events: libc::c_short) -> libc::c_short {
        let mut pfd = libc::pollfd {
            fd,
            events,
            revents: 0,
        };
        // SAFETY: `pfd` is one valid pollfd for the call.
        let r = unsafe { libc::poll(&mut pfd, 1, 0) };
        assert!(r >= 0);
        pfd.revents
    }

    /// xorshift64*: reproducible pseudo-random numbers for the property tests.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    #[test]
    fn guest_frames_lose_the_header_and_gain_a_big_endian_length() {
        let (b, mut peer) = pair();
        let f = frame(1, 300);
        // The header split over two slices, the frame over two more, and an empty one.
        let iov = [
            IoSlice::new(&HDR[..5]),
            IoSlice::new(&[]),
            IoSlice::new(&HDR[5..]),
            IoSlice::new(&f[..100]),
            IoSlice::new(&f[100..]),
        ];
        assert_eq!(b.write_frame(&iov).unwrap(), HDR_LEN + f.len());
        // The header and the first bytes of the frame in one slice.
        let mut joined = HDR.to_vec();
        joined.extend_from_slice(&frame(2, 20));
        assert_eq!(
            b.write_frame(&[IoSlice::new(&joined)]).unwrap(),
            joined.len()
        );

        let mut expected = vec![0, 0, 1, 44];
        expected.extend_from_slice(&f);
        expected.extend_from_slice(&framed(&frame(2, 20)));
        assert_eq!(peer_nonblocking_read(&mut peer), expected);
        assert_eq!(b.pending_len(), 0);
    }

    #[test]
    fn frames_out_of_range_never_reach_the_peer() {
        let (b, mut peer) = pair();
        for len in [0, 1, 13, 65536, 65550] {
            let e = send(&b, &frame(9, len)).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{len}");
        }
        // Shorter than a header.
        let e = b.write_frame(&[IoSlice::new(&HDR[..7])]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert_eq!(
            b.write_frame(&[]).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        assert!(peer_nonblocking_read(&mut peer).is_empty());

        // The limits themselves pass.
        for len in [MIN_FRAME, STREAM_MAX_FRAME] {
            send(&b, &frame(3, len)).unwrap();
            let mut got = vec![0u8; PREFIX_LEN + len];
            peer.read_exact(&mut got).unwrap();
            assert_eq!(got, framed(&frame(3, len)));
        }
    }

    #[test]
    fn peer_frames_get_a_zero_header_one_per_call() {
        let (b, mut peer) = pair();
        let (f1, f2) = (frame(1, 60), frame(2, 1500));
        let mut bytes = framed(&f1);
        bytes.extend_from_slice(&framed(&f2));
        peer.write_all(&bytes).unwrap();

        let mut buf = vec![0xffu8; 2048];
        let n = b.read_frame(&mut buf).unwrap();
        assert_eq!(n, HDR_LEN + f1.len());
        assert_eq!(&buf[..HDR_LEN], &[0; HDR_LEN]);
        assert_eq!(&buf[HDR_LEN..n], &f1[..]);
        // The second frame is buffered: returned even though the socket is empty now.
        assert_eq!(poll_revents(b.readable_fd(), libc::POLLIN), 0);
        buf.fill(0xff);
        let n = b.read_frame(&mut buf).unwrap();
        assert_eq!(&buf[..HDR_LEN], &[0; HDR_LEN]);
        assert_eq!(&buf[HDR_LEN..n], &f2[..]);
        let e = b.read_frame(&mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn a_frame_written_byte_by_byte_comes_out_whole() {
        let (b, mut peer) = pair();
        let f = frame(5, 100);
        let bytes = framed(&f);
        let mut buf = vec![0u8; 256];
        for (i, byte) in bytes.iter().enumerate() {
            peer.write_all(&[*byte]).unwrap();
            match b.read_frame(&mut buf) {
                Ok(n) => {
                    assert_eq!(i, bytes.len() - 1, "frame out before its last byte");
                    assert_eq!(&buf[HDR_LEN..n], &f[..]);
                }
                Err(e) => {
                    assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
                    assert!(i < bytes.len() - 1, "no frame after its last byte");
                }
            }
        }
    }

    #[test]
    fn a_short_buffer_truncates_one_frame_and_keeps_the_next() {
        let (b, mut peer) = pair();
        let (f1, f2) = (frame(1, 200), frame(2, 30));
        peer.write_all(&framed(&f1)).unwrap();
        peer.write_all(&framed(&f2)).unwrap();
        let mut small = [0xffu8; HDR_LEN + 50];
        assert_eq!(b.read_frame(&mut small).unwrap(), small.len());
        assert_eq!(&small[HDR_LEN..], &f1[..50]);
        let mut tiny = [0xffu8; 5];
        assert_eq!(b.read_frame(&mut tiny).unwrap(), 5);
        assert_eq!(tiny, [0; 5]);
        peer.write_all(&framed(&f1)).unwrap();
        let mut buf = [0u8; 300];
        let n = b.read_frame(&mut buf).unwrap();
        assert_eq!(&buf[HDR_LEN..n], &f1[..]);
    }

    #[test]
    fn a_length_out_of_range_ends_the_stream() {
        for bad in [0u32, 13, 65536, u32::MAX] {
            let (b, mut peer) = pair();
            let good = frame(1, 40);
            let mut bytes = framed(&good);
            bytes.extend_from_slice(&bad.to_be_bytes());
            bytes.extend_from_slice(&framed(&frame(2, 40)));
            peer.write_all(&bytes).unwrap();
            let mut buf = [0u8; 128];
            let n = b.read_frame(&mut buf).unwrap();
            assert_eq!(&buf[HDR_LEN..n], &good[..]);
            for _ in 0..2 {
                let e = b.read_frame(&mut buf).unwrap_err();
                assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{bad}");
            }
            assert_eq!(b.desyncs(), 1);
            // The socket is shut down: the peer sees the end, we poll as hung up (the receive
            // thread then backs off), and sending fails.
            let mut rest = Vec::new();
            peer.read_to_end(&mut rest).unwrap();
            assert!(rest.is_empty());
            assert_ne!(
                poll_revents(b.readable_fd(), libc::POLLIN) & libc::POLLHUP,
                0
            );
            assert!(send(&b, &frame(3, 60)).is_err());
        }
    }

    #[test]
    fn end_of_stream_is_an_error_that_stays() {
        let (b, mut peer) = pair();
        // Half a frame, then the peer stops writing (a half-close polls readable forever).
        peer.write_all(&framed(&frame(1, 100))[..50]).unwrap();
        peer.shutdown(std::net::Shutdown::Write).unwrap();
        let mut buf = [0u8; 256];
        for _ in 0..2 {
            let e = b.read_frame(&mut buf).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        }
        assert_ne!(
            poll_revents(b.readable_fd(), libc::POLLIN) & libc::POLLHUP,
            0
        );
        assert_eq!(b.desyncs(), 0);

        // The peer gone altogether: sending fails (EPIPE, without SIGPIPE killing the test).
        let (b, peer) = pair();
        drop(peer);
        let e = send(&b, &frame(1, 100)).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EPIPE));
        assert_eq!(
            b.read_frame(&mut buf).unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
    }

    #[test]
    fn a_full_socket_never_interleaves_frames() {
        let (b, mut peer) = pair();
        // A small send buffer fills quickly.
        let small: libc::c_int = 64 * 1024;
        // SAFETY: setsockopt reads one int, which lives for the call.
        let r = unsafe {
            libc::setsockopt(
                b.readable_fd(),
                libc::SOL_SOCKET,
                libc::SO_SNDBUF,
                (&small as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(r, 0);
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut accepted = Vec::new();
        let mut saw_partial = false;
        let mut dropped = 0;
        let mut id = 0u32;
        // Fill the socket until frames are dropped; a frame cut short stays pending.
        while dropped < 3 {
            id += 1;
            let f = frame(id, 40_000 + rng.below(25_536));
            match send(&b, &f) {
                Ok(_) => accepted.push(f),
                Err(e) => {
                    assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
                    dropped += 1;
                }
            }
            saw_partial |= b.pending_len() > 0;
        }
        assert!(saw_partial, "the socket never took part of a frame");

        // Drain the peer while sending more.
        let (done_tx, done_rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut all = Vec::new();
            peer.read_to_end(&mut all).unwrap();
            done_tx.send(all).unwrap();
        });
        for _ in 0..40 {
            id += 1;
            let f = frame(id, MIN_FRAME + rng.below(STREAM_MAX_FRAME - MIN_FRAME + 1));
            match send(&b, &f) {
                Ok(_) => accepted.push(f),
                Err(e) => assert_eq!(e.kind(), io::ErrorKind::WouldBlock),
            }
        }
        b.finish(Duration::from_secs(30)).unwrap();
        drop(b);
        let all = done_rx.recv().unwrap();
        reader.join().unwrap();

        let mut expected = Vec::new();
        for f in &accepted {
            expected.extend_from_slice(&framed(f));
        }
        assert_eq!(all.len(), expected.len());
        assert!(
            all == expected,
            "the stream is not the accepted frames in order"
        );
    }

    #[test]
    fn random_guest_frames_are_sent_exactly_when_in_range() {
        let (b, mut peer) = pair();
        let mut rng = Rng(42);
        for round in 0..300 {
            let len = match round % 3 {
                0 => rng.below(40),
                1 => 65520 + rng.below(40),
                _ => rng.below(70_000),
            };
            let mut bytes = HDR.to_vec();
            bytes.extend_from_slice(&frame(round, len));
            // Cut the chain into up to 24 random slices (more than fit in place, sometimes).
            let mut cuts: Vec<usize> = (0..rng.below(24))
                .map(|_| rng.below(bytes.len() + 1))
                .collect();
            cuts.push(0);
            cuts.push(bytes.len());
            cuts.sort_unstable();
            let iov: Vec<IoSlice> = cuts
                .windows(2)
                .map(|w| IoSlice::new(&bytes[w[0]..w[1]]))
                .collect();
            let r = b.write_frame(&iov);
            if (MIN_FRAME..=STREAM_MAX_FRAME).contains(&len) {
                assert_eq!(r.unwrap(), bytes.len());
                let mut got = vec![0u8; PREFIX_LEN + len];
                peer.read_exact(&mut got).unwrap();
                assert_eq!(got, framed(&bytes[HDR_LEN..]));
            } else {
                assert_eq!(r.unwrap_err().kind(), io::ErrorKind::InvalidInput);
            }
        }
        assert!(peer_nonblocking_read(&mut peer).is_empty());
    }

    #[test]
    fn random_peer_streams_come_out_in_order_or_end_cleanly() {
        let mut rng = Rng(7);
        for round in 0..40u32 {
            let (b, mut peer) = pair();
            // Valid frames, perhaps followed by garbage.
            let frames: Vec<Vec<u8>> = (0..rng.below(12))
                .map(|i| {
                    frame(
                        i as u32,
                        MIN_FRAME + rng.below(STREAM_MAX_FRAME - MIN_FRAME + 1),
                    )
                })
                .collect();
            let mut bytes = Vec::new();
            for f in &frames {
                bytes.extend_from_slice(&framed(f));
            }
            let garbage = round % 2 == 1;
            if garbage {
                bytes.extend((0..rng.below(100) + 4).map(|_| rng.next() as u8));
            }
            let mut out = vec![0u8; super::super::RX_BUF_LEN];
            let mut got = Vec::new();
            let mut at = 0;
            let mut ended = None;
            while ended.is_none() {
                if at < bytes.len() {
                    let n = (1 + rng.below(100_000)).min(bytes.len() - at);
                    peer.write_all(&bytes[at..at + n]).unwrap();
                    at += n;
                } else if peer.shutdown(std::net::Shutdown::Write).is_err() {
                    break;
                }
                loop {
                    match b.read_frame(&mut out) {
                        Ok(n) => {
                            assert!(n <= out.len() && n > HDR_LEN);
                            assert_eq!(&out[..HDR_LEN], &[0; HDR_LEN]);
                            got.push(out[HDR_LEN..n].to_vec());
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => {
                            ended = Some(e.kind());
                            break;
                        }
                    }
                }
            }
            // Every valid frame came out, in order, before the stream ended; garbage may look
            // like more frames, but never fewer.
            assert!(got.len() >= frames.len());
            assert_eq!(&got[..frames.len()], &frames[..]);
            if !garbage {
                assert_eq!(got.len(), frames.len());
                assert_eq!(ended, Some(io::ErrorKind::UnexpectedEof));
            }
            assert!(matches!(
                ended,
                Some(io::ErrorKind::UnexpectedEof | io::ErrorKind::InvalidData)
            ));
        }
    }

    #[test]
    fn frames_are_marked_data_valid_once_the_guest_takes_checksum_offload() {
        let (b, peer) = pair();
        let frame = vec![7u8; 60];
        let send = |peer: &UnixStream| {
            let mut p = peer;
            p.write_all(&(frame.len() as u32).to_be_bytes()).unwrap();
            p.write_all(&frame).unwrap();
        };
        let mut buf = vec![0u8; 4096];
        send(&peer);
        assert_eq!(b.read_frame(&mut buf).unwrap(), HDR_LEN + 60);
        assert_eq!(
            &buf[..HDR_LEN],
            &[0u8; HDR_LEN],
            "without GUEST_CSUM: no flag"
        );
        b.set_offload(bit(VIRTIO_NET_F_GUEST_CSUM)).unwrap();
        send(&peer);
        assert_eq!(b.read_frame(&mut buf).unwrap(), HDR_LEN + 60);
        assert_eq!(buf[0], VIRTIO_NET_HDR_F_DATA_VALID as u8);
        assert_eq!(&buf[1..HDR_LEN], &[0u8; HDR_LEN - 1]);
        assert_eq!(&buf[HDR_LEN..HDR_LEN + 60], &frame[..]);
        // Switched off again (CTRL_GUEST_OFFLOADS_SET).
        b.set_offload(0).unwrap();
        send(&peer);
        b.read_frame(&mut buf).unwrap();
        assert_eq!(buf[0], 0);
    }
}
