//! virtio-vsock served by rvmspawn itself, for hosts without vhost-vsock. The host side of the
//! guest's sockets is Unix sockets, plus in-process handlers:
//!
//! - A guest connecting to the host (CID 2) port N reaches the Unix listener at `{uds_path}_N`:
//!   the device connects to it and relays the stream. If a [`HostPortHandler`] is registered
//!   for N (with [`VsockUser::add_handler`]), the connection goes to it instead, with no socket
//!   at all: the handler gets every byte the guest sends and the end of each connection. The VMM
//!   uses this for the notify socket. A port with neither gets RST.
//! - A host process connects to the Unix listener at `uds_path` (which the device owns),
//!   writes `CONNECT <port>\n` and, once the guest accepts, reads `OK <local port>\n`; the rest
//!   of the stream is relayed to guest port `<port>`. A refused connection is simply closed.
//!
//! API: [`VsockUser::new`] (guest CID, optional `uds_path`), [`VsockUser::add_handler`], and the
//! [`VirtioDevice`] trait. [`Engine`] is the packet path without its thread, for tests and fuzzing.
//!
//! One device thread per activation polls (epoll, level-triggered) the tx, rx and event queues'
//! eventfds, the listener and every host socket; no socket operation blocks (`MSG_DONTWAIT`,
//! non-blocking connect and accept). Flow control is the virtio-vsock credit scheme both ways:
//! the guest is never sent more than `buf_alloc - (tx_cnt - fwd_cnt)` of what it advertised, and
//! each connection buffers at most [`CONN_BUF`] bytes on the way to the host (our `buf_alloc`;
//! a guest that sends more is reset) and [`FROM_HOST_BUF`] on the way to the guest, after which
//! the device stops reading the host socket, so a slow guest back-pressures the host writer. Our
//! `fwd_cnt` counts bytes the host socket took; a CREDIT_UPDATE goes out when the guest's view
//! of our free space falls under half. Connections are capped at [`MAX_CONNS`].
//!
//! Everything the guest writes is checked: a tx chain with a device-writable descriptor, a
//! header shorter than 44 bytes, payload past the chain or over 64 KiB, a source CID other than
//! the guest's or a destination other than 2 is dropped; an unknown connection, an op in the
//! wrong state or a socket type other than stream is answered with RST.
//!
//! Shutdown: the guest's SHUTDOWN(SEND) becomes `shutdown(SHUT_WR)` on the host socket once the
//! buffered data is written; EOF from the host becomes SHUTDOWN(SEND) to the guest once the data
//! before it has gone. When both directions are done we send SHUTDOWN(RCV|SEND) and wait
//! [`SHUTDOWN_TIMEOUT`] for the guest's RST before resetting ourselves; a guest SHUTDOWN with
//! both flags is answered with RST, as Linux does.
//!
//! Not implemented: SEQPACKET (the feature is not offered), the event queue's transport-reset
//! event (never needed: the VM is not migrated).

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::{Activation, GuestMemoryMmap, Interrupt, VirtioDevice, VirtioError, serve_queue};

/// Queue size of the rx, tx and event queues.
pub const QUEUE_SIZE: u16 = 128;
const VIRTIO_ID_VSOCK: u16 = 19;
/// The host's CID.
pub const HOST_CID: u64 = 2;
/// Length of a virtio-vsock packet header.
pub const HDR_LEN: usize = 44;
/// Our buffer for guest-to-host data per connection (the `buf_alloc` we advertise).
pub const CONN_BUF: u32 = 256 * 1024;
/// Our buffer for host-to-guest data per connection.
pub const FROM_HOST_BUF: usize = 64 * 1024;
/// Most payload in one packet, either way.
pub const MAX_PAYLOAD: u32 = 64 * 1024;
/// Most connections (including host clients that have not sent CONNECT yet).
pub const MAX_CONNS: usize = 256;
/// How long we wait for the guest's RST after our full SHUTDOWN.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a host-initiated connection waits for the guest's RESPONSE.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a host client may take to send its `CONNECT <port>\n` line.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Most RSTs for unknown connections waiting for rx buffers; more are dropped.
const MAX_RSTS: usize = 1024;
/// Descriptors per chain we look at.
const MAX_DESCS: usize = 64;
/// Local ports for host-initiated connections start here.
const LOCAL_PORT_BASE: u32 = 1 << 30;
/// Longest `CONNECT <port>\n` line.
const LINE_MAX: usize = 32;

/// Stream sockets, the only type supported.
pub const TYPE_STREAM: u16 = 1;
/// Packet ops.
pub const OP_REQUEST: u16 = 1;
/// Connection accepted.
pub const OP_RESPONSE: u16 = 2;
/// Connection reset.
pub const OP_RST: u16 = 3;
/// Half or full close.
pub const OP_SHUTDOWN: u16 = 4;
/// Data.
pub const OP_RW: u16 = 5;
/// Credit information.
pub const OP_CREDIT_UPDATE: u16 = 6;
/// Ask for credit information.
pub const OP_CREDIT_REQUEST: u16 = 7;
/// SHUTDOWN flag: the sender will receive no more.
pub const SHUT_RCV: u32 = 1;
/// SHUTDOWN flag: the sender will send no more.
pub const SHUT_SEND: u32 = 2;
const SHUT_BOTH: u32 = SHUT_RCV | SHUT_SEND;

// Epoll tokens; connections use tokens from FIRST_CONN_TOKEN.
const T_KILL: u64 = 0;
const T_RX: u64 = 1;
const T_TX: u64 = 2;
const T_EVENT: u64 = 3;
const T_LISTENER: u64 = 4;
const FIRST_CONN_TOKEN: u64 = 16;

const RXQ: u16 = 0;
const TXQ: u16 = 1;

/// Receives the guest's connections to one host port, in the device thread: keep it quick.
pub trait HostPortHandler: Send + Sync {
    /// Bytes the guest sent on connection `conn` (an id unique for the device's lifetime).
    fn data(&self, conn: u64, bytes: &[u8]);
    /// Connection `conn` ended (guest close or reset, or device reset); called once.
    fn closed(&self, conn: u64);
}

/// A virtio-vsock packet header.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Header {
    /// Source CID.
    pub src_cid: u64,
    /// Destination CID.
    pub dst_cid: u64,
    /// Source port.
    pub src_port: u32,
    /// Destination port.
    pub dst_port: u32,
    /// Payload length.
    pub len: u32,
    /// Socket type.
    pub kind: u16,
    /// Operation.
    pub op: u16,
    /// Op-specific flags.
    pub flags: u32,
    /// Sender's receive buffer size.
    pub buf_alloc: u32,
    /// Bytes the sender has consumed.
    pub fwd_cnt: u32,
}

impl Header {
    /// Decode a little-endian header.
    pub fn parse(b: &[u8; HDR_LEN]) -> Header {
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or_default());
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap_or_default());
        let u16_at = |i: usize| u16::from_le_bytes(b[i..i + 2].try_into().unwrap_or_default());
        Header {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            kind: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }

    /// Encode as little-endian.
    pub fn encode(&self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.kind.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }
}

/// The host side shared by every activation of a device.
#[derive(Clone)]
struct HostSide {
    cid: u64,
    uds_path: Option<PathBuf>,
    listener: Option<Arc<UnixListener>>,
    handlers: HashMap<u32, Arc<dyn HostPortHandler>>,
}

/// A userspace virtio-vsock device.
pub struct VsockUser {
    host: HostSide,
    worker: Option<DeviceThread>,
    /// Whether `uds_path` is ours to remove.
    owns_path: bool,
}

impl std::fmt::Debug for VsockUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VsockUser")
            .field("cid", &self.host.cid)
            .field("uds_path", &self.host.uds_path)
            .finish()
    }
}

impl VsockUser {
    /// A device for the guest with `cid`. With `uds_path`, host clients connect at that path
    /// (a stale socket there is replaced) and guest connections to port N go to `{uds_path}_N`.
    pub fn new(cid: u64, uds_path: Option<PathBuf>) -> io::Result<VsockUser> {
        let listener = match &uds_path {
            Some(p) => {
                let l = match UnixListener::bind(p) {
                    Err(e) if e.kind() == io::ErrorKind::AddrInUse && is_socket(p) => {
                        std::fs::remove_file(p)?;
                        UnixListener::bind(p)?
                    }
                    r => r?,
                };
                l.set_nonblocking(true)?;
                Some(Arc::new(l))
            }
            None => None,
        };
        Ok(VsockUser {
            owns_path: listener.is_some(),
            host: HostSide {
                cid,
                uds_path,
                listener,
                handlers: HashMap::new(),
            },
            worker: None,
        })
    }

    /// Send the guest's connections to host port `port` to `handler` (from the next
    /// activation on).
    pub fn add_handler(&mut self, port: u32, handler: Arc<dyn HostPortHandler>) {
        self.host.handlers.insert(port, handler);
    }

    /// The guest's CID.
    pub fn cid(&self) -> u64 {
        self.host.cid
    }

    /// A device for a new machine (after a guest reboot) with this one's host side: the same
    /// CID, listener and handlers. The socket path stays this device's to remove.
    pub fn share(&self) -> VsockUser {
        VsockUser {
            host: self.host.clone(),
            worker: None,
            owns_path: false,
        }
    }
}

fn is_socket(p: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_socket())
}

impl Drop for VsockUser {
    fn drop(&mut self) {
        self.worker = None;
        if self.owns_path
            && let Some(p) = &self.host.uds_path
        {
            let _ = std::fs::remove_file(p);
        }
    }
}

impl VirtioDevice for VsockUser {
    fn device_type(&self) -> u16 {
        VIRTIO_ID_VSOCK
    }

    fn pci_class(&self) -> u32 {
        // "Other" communication controller.
        0x07_80_00
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; 3]
    }

    fn features(&self) -> u64 {
        0
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_bytes(&self.host.cid.to_le_bytes(), offset, data);
    }

    fn activate(&mut self, a: Activation) -> Result<(), VirtioError> {
        self.reset();
        let mut rx = None;
        let mut tx = None;
        let mut notifies: [Option<EventFd>; 3] = [None, None, None];
        for q in a.queues {
            let i = usize::from(q.index);
            if i < 3 {
                notifies[i] = Some(q.notify);
            }
            match q.index {
                RXQ => rx = Some(q.queue),
                TXQ => tx = Some(q.queue),
                _ => {}
            }
        }
        let Some(rx) = rx else {
            return Err(VirtioError::BadQueue(RXQ));
        };
        let Some(tx) = tx else {
            return Err(VirtioError::BadQueue(TXQ));
        };
        let mut engine =
            Engine::new(self, a.mem, rx, tx, a.interrupt).map_err(VirtioError::Thread)?;
        let kill =
            EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(VirtioError::Thread)?;
        engine
            .register_thread_fds(&kill, notifies)
            .map_err(VirtioError::Thread)?;
        let (done_tx, done) = std::sync::mpsc::channel::<()>();
        let handle = std::thread::Builder::new()
            .name("vsock-user".into())
            .spawn(move || {
                // Dropped last, once the engine is gone.
                let _done = done_tx;
                crate::thread::started(crate::thread::ThreadKind::VsockUser);
                engine.run()
            })
            .map_err(VirtioError::Thread)?;
        self.worker = Some(DeviceThread {
            kill,
            handle: Some(handle),
            done: std::sync::Mutex::new(done),
        });
        Ok(())
    }

    fn reset(&mut self) {
        self.worker = None;
    }
}

/// The running device thread; dropping it stops the thread and joins it, waiting at most as
/// long as for a queue thread (a reset runs on a vCPU thread).
struct DeviceThread {
    kill: EventFd,
    handle: Option<JoinHandle<()>>,
    /// Disconnected when the thread has ended (in a mutex only so the device stays `Sync`).
    done: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
}

impl Drop for DeviceThread {
    fn drop(&mut self) {
        let _ = self.kill.write(1);
        let Some(h) = self.handle.take() else {
            return;
        };
        let done = self.done.lock().unwrap_or_else(|p| p.into_inner());
        match done.recv_timeout(super::worker::STOP_TIMEOUT) {
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => crate::report(&format!(
                "vsock-user did not stop within {:?}; leaving it to finish on its own.",
                super::worker::STOP_TIMEOUT
            )),
            _ => {
                let _ = h.join();
            }
        }
    }
}

/// Where a connection's bytes go on the host.
enum Backend {
    Unix(UnixStream),
    Handler(Arc<dyn HostPortHandler>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// A host client that has not sent its CONNECT line yet (not in the port map).
    Handshake,
    /// We sent (or will send) REQUEST; waiting for the guest's RESPONSE.
    Connecting,
    Established,
    /// We sent SHUTDOWN with both flags; waiting for the guest's RST.
    Closing,
}

// Control packets waiting for an rx buffer.
const P_REQUEST: u8 = 1;
const P_RESPONSE: u8 = 2;
const P_CREDIT_UPDATE: u8 = 4;
const P_CREDIT_REQUEST: u8 = 8;
const P_SHUTDOWN: u8 = 16;

struct Conn {
    id: u64,
    backend: Backend,
    state: State,
    deadline: Option<Instant>,
    /// Host-side port (source of our packets).
    local_port: u32,
    /// Guest-side port.
    peer_port: u32,
    /// Guest-to-host bytes not yet taken by the host socket.
    to_host: VecDeque<u8>,
    /// Leading bytes of `to_host` that are ours (the `OK` line), not the guest's.
    preamble: usize,
    /// Host-to-guest bytes waiting for credit and rx buffers.
    from_host: VecDeque<u8>,
    line: [u8; LINE_MAX],
    line_len: usize,
    // Credit, all wrapping counters.
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    tx_cnt: u32,
    rx_cnt: u32,
    fwd_cnt: u32,
    last_fwd_sent: u32,
    credit_requested: bool,
    pending: u8,
    /// SHUTDOWN flags the guest sent (accumulated).
    peer_shut: u32,
    /// SHUTDOWN flags we sent.
    shut_sent: u32,
    /// The host will send no more (read EOF, or a handler after the guest's SHUTDOWN(SEND)).
    host_eof: bool,
    /// The host socket hung up: no more events, read what is left when there is room.
    hup: bool,
    /// We told the host there is no more (SHUT_WR or `closed`).
    host_wr_done: bool,
    /// Events registered with epoll (None: not registered).
    events: Option<u32>,
    queued: bool,
}

impl Conn {
    fn new(id: u64, backend: Backend, state: State, local_port: u32, peer_port: u32) -> Conn {
        Conn {
            id,
            backend,
            state,
            deadline: None,
            local_port,
            peer_port,
            to_host: VecDeque::new(),
            preamble: 0,
            from_host: VecDeque::new(),
            line: [0; LINE_MAX],
            line_len: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            tx_cnt: 0,
            rx_cnt: 0,
            fwd_cnt: 0,
            last_fwd_sent: 0,
            credit_requested: false,
            pending: 0,
            peer_shut: 0,
            shut_sent: 0,
            host_eof: false,
            hup: false,
            host_wr_done: false,
            events: None,
            queued: false,
        }
    }

    /// Bytes the guest can still take.
    fn peer_credit(&self) -> u32 {
        let in_flight = self.tx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    fn can_send_data(&self) -> bool {
        matches!(self.state, State::Established | State::Closing)
            && !self.from_host.is_empty()
            && self.peer_shut & SHUT_RCV == 0
            && self.peer_credit() > 0
    }

    fn wants_send(&self) -> bool {
        self.state != State::Handshake && (self.pending != 0 || self.can_send_data())
    }

    /// SHUTDOWN flags we should have sent by now.
    fn shut_wanted(&self) -> u32 {
        let mut want = 0;
        if self.host_eof && self.from_host.is_empty() {
            want |= SHUT_SEND;
        }
        if self.host_wr_done {
            want |= SHUT_RCV;
        }
        want
    }

    /// Write `to_host` to the host socket as far as it takes it; Err on a dead socket.
    fn flush_to_host(&mut self) -> Result<(), ()> {
        let Backend::Unix(s) = &self.backend else {
            return Ok(());
        };
        while !self.to_host.is_empty() {
            let (a, _) = self.to_host.as_slices();
            match send_nosignal(s, a) {
                Ok(n) => {
                    self.to_host.drain(..n);
                    let ours = n.min(self.preamble);
                    self.preamble -= ours;
                    self.fwd_cnt = self.fwd_cnt.wrapping_add((n - ours) as u32);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Err(()),
            }
        }
        Ok(())
    }

    /// Read from the host socket into `from_host` while there is room. Err on a socket error.
    fn read_from_host(&mut self, scratch: &mut [u8]) -> Result<(), ()> {
        let Backend::Unix(s) = &mut self.backend else {
            return Ok(());
        };
        while !self.host_eof && self.from_host.len() < FROM_HOST_BUF {
            let room = (FROM_HOST_BUF - self.from_host.len()).min(scratch.len());
            match s.read(&mut scratch[..room]) {
                Ok(0) => self.host_eof = true,
                Ok(n) => self.from_host.extend(&scratch[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Err(()),
            }
        }
        Ok(())
    }

    /// The epoll events this connection wants now (None: leave the socket out of epoll).
    fn wanted_events(&self) -> Option<u32> {
        let Backend::Unix(_) = self.backend else {
            return None;
        };
        if self.hup {
            return None;
        }
        let mut ev = 0;
        let reading = match self.state {
            State::Handshake => true,
            State::Established | State::Closing => {
                !self.host_eof
                    && self.peer_shut & SHUT_RCV == 0
                    && self.from_host.len() < FROM_HOST_BUF
            }
            State::Connecting => false,
        };
        if reading {
            ev |= EventSet::IN.bits();
        }
        if !self.to_host.is_empty() {
            ev |= EventSet::OUT.bits();
        }
        Some(ev)
    }
}

fn send_nosignal(s: &UnixStream, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: the kernel reads at most `buf.len()` bytes from `buf`, which lives for the call;
    // the fd is an open socket owned by `s`.
    let r = unsafe {
        libc::send(
            s.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

/// Connect to the Unix listener at `path` without blocking (a full backlog fails with EAGAIN
/// instead of waiting).
fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: a plain socket() call; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: `addr` is a valid sockaddr_un for the whole call and the length is its size.
    let r = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&raw const addr).cast(),
            std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(UnixStream::from(fd))
}

/// The connections and everything about them that does not touch the queues.
struct Muxer {
    cid: u64,
    uds_path: Option<PathBuf>,
    listener: Option<Arc<UnixListener>>,
    handlers: HashMap<u32, Arc<dyn HostPortHandler>>,
    epoll: Epoll,
    conns: HashMap<u64, Conn>,
    /// (local port, peer port) -> token.
    ports: HashMap<(u32, u32), u64>,
    next_token: u64,
    next_local_port: u32,
    /// RSTs for connections we do not have: (local port, peer port).
    rsts: VecDeque<(u32, u32)>,
    /// Connections that may have something for the guest, served round robin.
    ready: VecDeque<u64>,
    descs: Vec<(u64, u32)>,
    payload: Vec<u8>,
    scratch: Vec<u8>,
}

impl Muxer {
    fn shut_conn_down(&mut self, c: Conn) {
        if let Some(_ev) = c.events
            && let Backend::Unix(s) = &c.backend
        {
            let _ = self.epoll.ctl(
                ControlOperation::Delete,
                s.as_raw_fd(),
                EpollEvent::new(EventSet::empty(), 0),
            );
        }
        if let Backend::Handler(h) = &c.backend
            && !c.host_wr_done
        {
            h.closed(c.id);
        }
        if c.state != State::Handshake {
            self.ports.remove(&(c.local_port, c.peer_port));
        }
    }

    /// Forget a connection without telling the guest.
    fn remove(&mut self, tok: u64) {
        if let Some(c) = self.conns.remove(&tok) {
            self.shut_conn_down(c);
        }
    }

    /// Forget a connection and send the guest RST for it.
    fn reset(&mut self, tok: u64) {
        if let Some(c) = self.conns.remove(&tok) {
            if c.state != State::Handshake {
                self.push_rst(c.local_port, c.peer_port);
            }
            self.shut_conn_down(c);
        }
    }

    fn push_rst(&mut self, local_port: u32, peer_port: u32) {
        if self.rsts.len() < MAX_RSTS {
            self.rsts.push_back((local_port, peer_port));
        }
    }

    fn add_conn(&mut self, c: Conn) -> u64 {
        let tok = self.next_token;
        self.next_token += 1;
        if c.state != State::Handshake {
            self.ports.insert((c.local_port, c.peer_port), tok);
        }
        self.conns.insert(tok, c);
        tok
    }

    fn alloc_local_port(&mut self, peer_port: u32) -> u32 {
        loop {
            let p = self.next_local_port;
            self.next_local_port = if p == u32::MAX {
                LOCAL_PORT_BASE
            } else {
                p + 1
            };
            if !self.ports.contains_key(&(p, peer_port)) {
                return p;
            }
        }
    }

    /// One tx chain from the guest; returns the used length (always 0: we write nothing).
    fn on_tx_chain(&mut self, mem: &GuestMemoryMmap, chain: DescriptorChain<&GuestMemoryMmap>) {
        self.descs.clear();
        for d in chain {
            if d.is_write_only() || self.descs.len() == MAX_DESCS {
                return;
            }
            self.descs.push((d.addr().0, d.len()));
        }
        let mut hdr = [0u8; HDR_LEN];
        if !read_chain(mem, &self.descs, 0, &mut hdr) {
            return;
        }
        let h = Header::parse(&hdr);
        if h.src_cid != self.cid || h.dst_cid != HOST_CID {
            return;
        }
        let len = if h.op == OP_RW { h.len } else { 0 };
        if len > MAX_PAYLOAD {
            if h.op != OP_RST {
                self.reset_pair(h.dst_port, h.src_port);
            }
            return;
        }
        let mut payload = std::mem::take(&mut self.payload);
        let n = len as usize;
        if read_chain(mem, &self.descs, HDR_LEN, &mut payload[..n]) {
            self.on_packet(&h, &payload[..n]);
        } else {
            // The payload is not all there: the stream would lose bytes.
            self.reset_pair(h.dst_port, h.src_port);
        }
        self.payload = payload;
    }

    /// RST the connection (local, peer), known or not.
    fn reset_pair(&mut self, local: u32, peer: u32) {
        match self.ports.get(&(local, peer)) {
            Some(&tok) => self.reset(tok),
            None => self.push_rst(local, peer),
        }
    }

    fn on_packet(&mut self, h: &Header, payload: &[u8]) {
        if h.kind != TYPE_STREAM {
            if h.op != OP_RST {
                self.reset_pair(h.dst_port, h.src_port);
            }
            return;
        }
        let Some(&tok) = self.ports.get(&(h.dst_port, h.src_port)) else {
            match h.op {
                OP_REQUEST => self.guest_connect(h),
                OP_RST => {}
                _ => self.push_rst(h.dst_port, h.src_port),
            }
            return;
        };
        let Some(c) = self.conns.get_mut(&tok) else {
            return;
        };
        c.peer_buf_alloc = h.buf_alloc;
        c.peer_fwd_cnt = h.fwd_cnt;
        c.credit_requested = false;
        match h.op {
            OP_RST => {
                self.remove(tok);
                return;
            }
            OP_RESPONSE if c.state == State::Connecting => {
                c.state = State::Established;
                c.deadline = None;
                let ok = format!("OK {}\n", c.local_port);
                c.to_host.extend(ok.as_bytes());
                c.preamble += ok.len();
            }
            OP_RW if c.state == State::Established && c.peer_shut & SHUT_SEND == 0 => {
                let n = payload.len();
                if c.to_host.len() - c.preamble + n > CONN_BUF as usize {
                    // More than the credit we gave.
                    self.reset(tok);
                    return;
                }
                c.rx_cnt = c.rx_cnt.wrapping_add(n as u32);
                match &c.backend {
                    Backend::Handler(hd) => {
                        if n > 0 {
                            hd.data(c.id, payload);
                        }
                        c.fwd_cnt = c.fwd_cnt.wrapping_add(n as u32);
                    }
                    Backend::Unix(_) => c.to_host.extend(payload),
                }
            }
            OP_CREDIT_UPDATE => {}
            OP_CREDIT_REQUEST => c.pending |= P_CREDIT_UPDATE,
            OP_SHUTDOWN if c.state != State::Connecting => {
                c.peer_shut |= h.flags & SHUT_BOTH;
                if c.peer_shut & SHUT_RCV != 0 {
                    c.from_host.clear();
                }
            }
            // REQUEST on a live connection, RESPONSE or data in the wrong state, unknown ops.
            _ => {
                self.reset(tok);
                return;
            }
        }
        self.settle(tok);
    }

    /// A guest REQUEST for a connection we do not have.
    fn guest_connect(&mut self, h: &Header) {
        if self.conns.len() >= MAX_CONNS {
            self.push_rst(h.dst_port, h.src_port);
            return;
        }
        let backend = if let Some(hd) = self.handlers.get(&h.dst_port) {
            Backend::Handler(hd.clone())
        } else if let Some(base) = &self.uds_path {
            let mut p = OsString::from(base.as_os_str());
            p.push(format!("_{}", h.dst_port));
            match connect_nonblocking(Path::new(&p)) {
                Ok(s) => Backend::Unix(s),
                Err(_) => {
                    self.push_rst(h.dst_port, h.src_port);
                    return;
                }
            }
        } else {
            self.push_rst(h.dst_port, h.src_port);
            return;
        };
        let mut c = Conn::new(
            self.next_token,
            backend,
            State::Established,
            h.dst_port,
            h.src_port,
        );
        c.peer_buf_alloc = h.buf_alloc;
        c.peer_fwd_cnt = h.fwd_cnt;
        c.pending = P_RESPONSE;
        let tok = self.add_conn(c);
        self.settle(tok);
    }

    /// Accept every waiting host client.
    fn accept(&mut self) {
        let Some(l) = self.listener.clone() else {
            return;
        };
        loop {
            let s = match l.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            };
            if self.conns.len() >= MAX_CONNS || s.set_nonblocking(true).is_err() {
                continue; // dropped: the client sees EOF
            }
            let mut c = Conn::new(self.next_token, Backend::Unix(s), State::Handshake, 0, 0);
            c.deadline = Some(Instant::now() + HANDSHAKE_TIMEOUT);
            let tok = self.add_conn(c);
            self.settle(tok);
        }
    }

    /// Read a host client's CONNECT line; the bytes after it start the stream.
    fn handshake(&mut self, tok: u64) {
        let Some(c) = self.conns.get_mut(&tok) else {
            return;
        };
        let Backend::Unix(s) = &mut c.backend else {
            return;
        };
        match s.read(&mut c.line[c.line_len..]) {
            Ok(0) => return self.remove(tok),
            Ok(n) => c.line_len += n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                return;
            }
            Err(_) => return self.remove(tok),
        }
        let Some(nl) = c.line[..c.line_len].iter().position(|&b| b == b'\n') else {
            if c.line_len == LINE_MAX {
                self.remove(tok);
            }
            return;
        };
        let Some(port) = parse_connect(&c.line[..nl]) else {
            return self.remove(tok);
        };
        let rest = c.line_len;
        c.from_host.extend(&c.line[nl + 1..rest]);
        let local = self.alloc_local_port(port);
        let Some(c) = self.conns.get_mut(&tok) else {
            return;
        };
        c.local_port = local;
        c.peer_port = port;
        c.state = State::Connecting;
        c.deadline = Some(Instant::now() + CONNECT_TIMEOUT);
        c.pending |= P_REQUEST;
        self.ports.insert((local, port), tok);
        self.settle(tok);
    }

    /// Events on a host socket.
    fn on_socket(&mut self, tok: u64, ev: u32) {
        let Some(c) = self.conns.get_mut(&tok) else {
            return;
        };
        if ev & EventSet::ERROR.bits() != 0 {
            return self.reset(tok);
        }
        if c.state == State::Handshake {
            return self.handshake(tok);
        }
        if ev & EventSet::HANG_UP.bits() != 0 {
            c.hup = true;
        }
        if ev & EventSet::IN.bits() != 0
            && matches!(c.state, State::Established | State::Closing)
            && c.read_from_host(&mut self.scratch).is_err()
        {
            return self.reset(tok);
        }
        self.settle(tok);
    }

    /// Whether there is a packet for the guest (cleans the ready list as it looks).
    fn has_packet(&mut self) -> bool {
        if !self.rsts.is_empty() {
            return true;
        }
        while let Some(&tok) = self.ready.front() {
            match self.conns.get_mut(&tok) {
                Some(c) if c.wants_send() => return true,
                Some(c) => c.queued = false,
                None => {}
            }
            self.ready.pop_front();
        }
        false
    }

    /// Put the next packet into an rx chain; returns the used length.
    fn write_rx(&mut self, mem: &GuestMemoryMmap, chain: DescriptorChain<&GuestMemoryMmap>) -> u32 {
        self.descs.clear();
        let mut cap = 0usize;
        for d in chain {
            if !d.is_write_only() || self.descs.len() == MAX_DESCS {
                return 0;
            }
            self.descs.push((d.addr().0, d.len()));
            cap = cap.saturating_add(d.len() as usize);
        }
        if cap < HDR_LEN {
            return 0;
        }
        let mut h = Header {
            src_cid: HOST_CID,
            dst_cid: self.cid,
            kind: TYPE_STREAM,
            buf_alloc: CONN_BUF,
            ..Header::default()
        };
        if let Some(&(local, peer)) = self.rsts.front() {
            h.src_port = local;
            h.dst_port = peer;
            h.op = OP_RST;
            if !write_chain(mem, &self.descs, 0, &h.encode()) {
                return 0;
            }
            self.rsts.pop_front();
            return HDR_LEN as u32;
        }
        let Some(tok) = self.ready.pop_front() else {
            return 0;
        };
        let Some(c) = self.conns.get_mut(&tok) else {
            return 0;
        };
        c.queued = false;
        h.src_port = c.local_port;
        h.dst_port = c.peer_port;
        h.fwd_cnt = c.fwd_cnt;
        let p = c.pending;
        let mut n = 0usize;
        let bit = if p & P_REQUEST != 0 {
            h.op = OP_REQUEST;
            P_REQUEST
        } else if p & P_RESPONSE != 0 {
            h.op = OP_RESPONSE;
            P_RESPONSE
        } else if c.can_send_data() {
            h.op = OP_RW;
            n = c
                .from_host
                .len()
                .min(c.peer_credit() as usize)
                .min(cap - HDR_LEN)
                .min(MAX_PAYLOAD as usize);
            0
        } else if p & P_SHUTDOWN != 0 {
            h.op = OP_SHUTDOWN;
            h.flags = c.shut_wanted();
            P_SHUTDOWN
        } else if p & P_CREDIT_UPDATE != 0 {
            h.op = OP_CREDIT_UPDATE;
            P_CREDIT_UPDATE
        } else if p & P_CREDIT_REQUEST != 0 {
            h.op = OP_CREDIT_REQUEST;
            P_CREDIT_REQUEST
        } else {
            return 0;
        };
        h.len = n as u32;
        let (a, b) = c.from_host.as_slices();
        let na = n.min(a.len());
        let written = write_chain(mem, &self.descs, 0, &h.encode())
            && write_chain(mem, &self.descs, HDR_LEN, &a[..na])
            && write_chain(mem, &self.descs, HDR_LEN + na, &b[..n - na]);
        if !written {
            // A chain the guest cannot have meant: keep the packet for the next one.
            c.queued = true;
            self.ready.push_front(tok);
            return 0;
        }
        c.pending &= !(bit | P_CREDIT_UPDATE);
        if h.op == OP_SHUTDOWN {
            c.shut_sent |= h.flags;
        }
        c.from_host.drain(..n);
        c.tx_cnt = c.tx_cnt.wrapping_add(n as u32);
        c.last_fwd_sent = c.fwd_cnt;
        self.settle(tok);
        (HDR_LEN + n) as u32
    }

    /// Reset or drop the connections whose deadline passed.
    fn expire(&mut self, now: Instant, expired: &mut Vec<u64>) {
        expired.clear();
        expired.extend(
            self.conns
                .iter()
                .filter(|(_, c)| c.deadline.is_some_and(|d| d <= now))
                .map(|(t, _)| *t),
        );
        for &tok in expired.iter() {
            self.reset(tok);
        }
    }

    /// `default_ms` (-1: forever), shortened to the next deadline.
    fn timeout_ms(&self, default_ms: i32) -> i32 {
        let now = Instant::now();
        self.conns
            .values()
            .filter_map(|c| c.deadline)
            .map(|d| {
                let ms = d.saturating_duration_since(now).as_millis() + 1;
                i32::try_from(ms).unwrap_or(i32::MAX)
            })
            .fold(default_ms, |t, d| if t < 0 { d } else { t.min(d) })
    }

    fn settle(&mut self, tok: u64) {
        let now = Instant::now();
        let Some(c) = self.conns.get_mut(&tok) else {
            return;
        };
        if c.flush_to_host().is_err() {
            self.reset(tok);
            return;
        }
        if c.hup && !c.host_eof && c.read_from_host(&mut self.scratch).is_err() {
            self.reset(tok);
            return;
        }
        if c.peer_shut & SHUT_SEND != 0 && c.to_host.is_empty() && !c.host_wr_done {
            c.host_wr_done = true;
            match &c.backend {
                Backend::Unix(s) => {
                    let _ = s.shutdown(std::net::Shutdown::Write);
                }
                Backend::Handler(h) => {
                    h.closed(c.id);
                    c.host_eof = true;
                }
            }
        }
        if c.peer_shut == SHUT_BOTH {
            if c.to_host.is_empty() {
                self.reset(tok);
                return;
            }
            // The host has that long to take what is left.
            c.deadline.get_or_insert(now + SHUTDOWN_TIMEOUT);
        }
        if matches!(c.state, State::Established | State::Closing) {
            let want = c.shut_wanted();
            if want & !c.shut_sent != 0 {
                c.pending |= P_SHUTDOWN;
            }
            if want == SHUT_BOTH && c.state != State::Closing {
                c.state = State::Closing;
                c.deadline = Some(now + SHUTDOWN_TIMEOUT);
            }
            let unreported = c.rx_cnt.wrapping_sub(c.last_fwd_sent);
            if c.fwd_cnt != c.last_fwd_sent && unreported > CONN_BUF / 2 {
                c.pending |= P_CREDIT_UPDATE;
            }
            if !c.from_host.is_empty()
                && c.peer_shut & SHUT_RCV == 0
                && c.peer_credit() == 0
                && !c.credit_requested
            {
                c.credit_requested = true;
                c.pending |= P_CREDIT_REQUEST;
            }
        }
        let want_ev = c.wanted_events();
        if want_ev != c.events
            && let Backend::Unix(s) = &c.backend
        {
            let fd = s.as_raw_fd();
            let r = match (c.events, want_ev) {
                (None, Some(ev)) => self.epoll.ctl(
                    ControlOperation::Add,
                    fd,
                    EpollEvent::new(EventSet::from_bits_truncate(ev), tok),
                ),
                (Some(_), Some(ev)) => self.epoll.ctl(
                    ControlOperation::Modify,
                    fd,
                    EpollEvent::new(EventSet::from_bits_truncate(ev), tok),
                ),
                (Some(_), None) => self.epoll.ctl(
                    ControlOperation::Delete,
                    fd,
                    EpollEvent::new(EventSet::empty(), 0),
                ),
                (None, None) => Ok(()),
            };
            if r.is_err() {
                self.reset(tok);
                return;
            }
            c.events = want_ev;
        }
        if !c.queued && c.wants_send() {
            c.queued = true;
            self.ready.push_back(tok);
        }
    }
}

/// Walk `len` bytes of a chain from `offset` bytes into it: `f` gets each piece's guest
/// address and its range in `0..len`. False when the chain is shorter or `f` fails.
fn walk_chain(
    descs: &[(u64, u32)],
    offset: usize,
    len: usize,
    mut f: impl FnMut(GuestAddress, std::ops::Range<usize>) -> bool,
) -> bool {
    let mut skip = offset as u64;
    let mut done = 0;
    for &(addr, dlen) in descs {
        if done == len {
            break;
        }
        let dlen = u64::from(dlen);
        if skip >= dlen {
            skip -= dlen;
            continue;
        }
        let n = ((dlen - skip) as usize).min(len - done);
        let Some(at) = addr.checked_add(skip) else {
            return false;
        };
        if !f(GuestAddress(at), done..done + n) {
            return false;
        }
        done += n;
        skip = 0;
    }
    done == len
}

/// Copy bytes of a chain, `offset` bytes into it, into `buf`.
fn read_chain(mem: &GuestMemoryMmap, descs: &[(u64, u32)], offset: usize, buf: &mut [u8]) -> bool {
    walk_chain(descs, offset, buf.len(), |at, r| {
        mem.read_slice(&mut buf[r], at).is_ok()
    })
}

/// Copy `buf` into a chain's descriptors, `offset` bytes in.
fn write_chain(mem: &GuestMemoryMmap, descs: &[(u64, u32)], offset: usize, buf: &[u8]) -> bool {
    walk_chain(descs, offset, buf.len(), |at, r| {
        mem.write_slice(&buf[r], at).is_ok()
    })
}

/// `CONNECT <port>` (a trailing `\r` is allowed).
fn parse_connect(line: &[u8]) -> Option<u32> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let port = line.strip_prefix(b"CONNECT ")?;
    std::str::from_utf8(port).ok()?.parse().ok()
}

impl Drop for Muxer {
    fn drop(&mut self) {
        for (_, c) in self.conns.drain() {
            if let Backend::Handler(h) = &c.backend
                && !c.host_wr_done
            {
                h.closed(c.id);
            }
        }
    }
}

/// The packet path of one activation: the rx and tx queues, the connections and their
/// sockets. The device thread runs [`Engine::poll`] in a loop; tests and the fuzz target drive
/// it directly.
pub struct Engine {
    mem: GuestMemoryMmap,
    rx: Queue,
    tx: Queue,
    interrupt: Arc<dyn Interrupt>,
    mux: Muxer,
    events: Vec<EpollEvent>,
    expired: Vec<u64>,
    notifies: [Option<EventFd>; 3],
    kill: Option<EventFd>,
    broken: bool,
}

impl Engine {
    /// The packet path for `dev`'s host side, with no thread.
    pub fn new(
        dev: &VsockUser,
        mem: GuestMemoryMmap,
        rx: Queue,
        tx: Queue,
        interrupt: Arc<dyn Interrupt>,
    ) -> io::Result<Engine> {
        let host = &dev.host;
        let epoll = Epoll::new()?;
        if let Some(l) = &host.listener {
            epoll.ctl(
                ControlOperation::Add,
                l.as_raw_fd(),
                EpollEvent::new(EventSet::IN, T_LISTENER),
            )?;
        }
        let mux = Muxer {
            cid: host.cid,
            uds_path: host.uds_path.clone(),
            listener: host.listener.clone(),
            handlers: host.handlers.clone(),
            epoll,
            conns: HashMap::new(),
            ports: HashMap::new(),
            next_token: FIRST_CONN_TOKEN,
            next_local_port: LOCAL_PORT_BASE,
            rsts: VecDeque::new(),
            ready: VecDeque::new(),
            descs: Vec::with_capacity(MAX_DESCS),
            payload: vec![0; MAX_PAYLOAD as usize],
            scratch: vec![0; 16 * 1024],
        };
        Ok(Engine {
            mem,
            rx,
            tx,
            interrupt,
            mux,
            events: vec![EpollEvent::new(EventSet::empty(), 0); 64],
            expired: Vec::new(),
            notifies: [None, None, None],
            kill: None,
            broken: false,
        })
    }

    fn register_thread_fds(
        &mut self,
        kill: &EventFd,
        notifies: [Option<EventFd>; 3],
    ) -> io::Result<()> {
        let kill = kill.try_clone()?;
        let ep = &self.mux.epoll;
        ep.ctl(
            ControlOperation::Add,
            kill.as_raw_fd(),
            EpollEvent::new(EventSet::IN, T_KILL),
        )?;
        for (i, n) in notifies.iter().enumerate() {
            if let Some(fd) = n {
                ep.ctl(
                    ControlOperation::Add,
                    fd.as_raw_fd(),
                    EpollEvent::new(EventSet::IN, T_RX + i as u64),
                )?;
            }
        }
        self.kill = Some(kill);
        self.notifies = notifies;
        Ok(())
    }

    /// Take every chain the guest put on the tx queue; false when the ring is broken.
    pub fn process_tx(&mut self) -> bool {
        if self.broken {
            return false;
        }
        let mux = &mut self.mux;
        let ok = serve_queue(
            &mut self.tx,
            &self.mem,
            self.interrupt.as_ref(),
            TXQ,
            |m, c| {
                mux.on_tx_chain(m, c);
                0
            },
        );
        self.broken = !ok;
        ok
    }

    /// Move waiting packets into the guest's rx buffers; false when the ring is broken.
    pub fn fill_rx(&mut self) -> bool {
        if self.broken {
            return false;
        }
        let mut used = false;
        let r = (|| -> Result<(), virtio_queue::Error> {
            while self.mux.has_packet() {
                let chain = self.rx.iter(&self.mem)?.next();
                match chain {
                    Some(chain) => {
                        let head = chain.head_index();
                        let len = self.mux.write_rx(&self.mem, chain);
                        self.rx.add_used(&self.mem, head, len)?;
                        used = true;
                    }
                    // Out of buffers: ask to be notified, unless some arrived meanwhile.
                    None if self.rx.enable_notification(&self.mem)? => {}
                    None => break,
                }
            }
            Ok(())
        })();
        if r.is_err() {
            self.interrupt.needs_reset();
            self.broken = true;
            return false;
        }
        if used && self.rx.needs_notification(&self.mem).unwrap_or(true) {
            self.interrupt.queue(RXQ);
        }
        true
    }

    /// Wait up to `timeout_ms` (-1: forever) for queue notifications and socket events, handle
    /// them and fill the rx queue. False once the device is stopped or its rings are broken.
    pub fn poll(&mut self, timeout_ms: i32) -> bool {
        if self.broken {
            return false;
        }
        let timeout = self.mux.timeout_ms(timeout_ms);
        let n = match self.mux.epoll.wait(timeout, &mut self.events) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => 0,
            Err(_) => return false,
        };
        for i in 0..n {
            let (tok, ev) = (self.events[i].data(), self.events[i].events());
            match tok {
                T_KILL => return false,
                T_RX | T_TX | T_EVENT => {
                    if let Some(fd) = &self.notifies[(tok - T_RX) as usize] {
                        let _ = fd.read();
                    }
                    if tok == T_TX {
                        self.process_tx();
                    }
                }
                T_LISTENER => self.mux.accept(),
                _ => self.mux.on_socket(tok, ev),
            }
        }
        self.mux.expire(Instant::now(), &mut self.expired);
        self.fill_rx();
        !self.broken
    }

    fn run(mut self) {
        self.process_tx();
        self.fill_rx();
        while self.poll(-1) {}
        if !self.broken {
            // Stopped: what the guest queued last (say, the EXIT_STATUS= it sent just before
            // powering off) still reaches the host; dropping the engine then ends every
            // connection, so handlers see their messages complete.
            self.process_tx();
            return;
        }
        // Broken rings: drop every connection and wait to be stopped.
        let kill = self.kill.take();
        drop(self);
        if let Some(kill) = kill {
            let mut fd = libc::pollfd {
                fd: kill.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: `fd` is one valid pollfd for the whole call.
            while unsafe { libc::poll(&mut fd, 1, -1) } <= 0 {}
        }
    }
}

#[cfg(test)]
mod tests;
