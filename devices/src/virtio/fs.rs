//! virtio-fs served by a vhost-user back end (virtiofsd) in another process.
//!
//! rvmspawn is only the vhost-user front end: it tells the back end where guest RAM is (the
//! memfd behind it, which the back end maps), where each ring lies, which eventfd the guest's
//! notifications arrive on (the queue's ioeventfd) and which eventfd raises the queue's
//! interrupt (the MSI vector's irqfd). FUSE requests then go between the guest and the back end
//! without passing through rvmspawn. The config space (the mount tag and the number of request
//! queues) is served here.
//!
//! One connection serves the whole run: virtiofsd exits when its socket closes, so a guest
//! reboot must not close it. Each machine gets its own [`VhostUserFs`] from
//! [`VhostUserFs::share`]; whichever of them the guest activates last owns the back end's rings.
//!
//! Everything the back end says is untrusted, and it may stop answering: every exchange runs
//! under a deadline kept by a watchdog thread, which shuts the socket down when the deadline
//! passes (see `Watchdog` for why the socket timeouts alone are not enough). Any failure ends
//! the connection for good: after a failed exchange nothing says where the next reply starts.

use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vhost::vhost_user::message::VhostUserHeaderFlag;
use vhost::vhost_user::{
    Frontend, VhostUserFrontend, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_queue::QueueT;
use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use super::{
    Activation, ActiveQueue, F_EVENT_IDX, F_INDIRECT_DESC, F_VERSION_1, GuestMemoryMmap, Interrupt,
    VirtioDevice, VirtioError,
};

/// virtio device ID of a file system device.
pub const VIRTIO_ID_FS: u16 = 26;
/// Size of every queue (what systemd-vmspawn gives QEMU's vhost-user-fs-pci: queue-size=1024).
pub const QUEUE_SIZE: u16 = 1024;
/// Most request queues a device offers, whatever the back end and the caller allow.
pub const MAX_REQUEST_QUEUES: u16 = 16;
/// Length of the tag field in the config space; a tag may fill it (no terminating NUL).
pub const TAG_LEN: usize = 36;
/// How long an activation or a reset may wait for the back end. Both run on a vCPU thread (the
/// driver's status write) or in the machine's teardown, so this is how long a back end that
/// stopped answering can stall either.
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the handshake may take. Longer than an operation: the back end may still be
/// starting (the VMM may connect before virtiofsd runs, the connection waiting in the listen
/// backlog), and nothing runs yet that a wait would hold up.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// PCI class "mass storage, other", as QEMU's vhost-user-fs-pci (PCI_CLASS_STORAGE_OTHER).
const PCI_CLASS_STORAGE_OTHER: u32 = 0x01_80_00;
/// VHOST_USER_F_PROTOCOL_FEATURES: a vhost-user bit in the feature word, never the guest's.
const F_PROTOCOL_FEATURES: u64 = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
/// The only feature bits the guest may see. The transport offers these three whatever the
/// device says and implements nothing else (no packed rings, no notification data, no ring
/// reset, no IOMMU), and virtio-fs's own bit (NOTIFICATION) would need a queue we do not set up.
const GUEST_FEATURES: u64 = F_VERSION_1 | F_INDIRECT_DESC | F_EVENT_IDX;

/// Errors from connecting a virtio-fs device to its back end.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// The tag cannot go in the config space.
    #[error("virtio-fs tag {0:?} is invalid: it must be 1 to 36 bytes with no NUL")]
    Tag(String),
    /// The caller allowed no request queue.
    #[error("a virtio-fs device needs at least one request queue")]
    NoQueues,
    /// The socket could not be set up.
    #[error("virtio-fs back-end socket: {0}")]
    Socket(std::io::Error),
    /// The watchdog thread could not be started.
    #[error("cannot start the virtio-fs watchdog thread: {0}")]
    Thread(std::io::Error),
    /// The back end refused a request, answered nonsense or went away.
    #[error("virtio-fs back end, {0}: {1}")]
    Backend(&'static str, String),
    /// The back end did not answer in time.
    #[error("virtio-fs back end did not answer {0} within {1:?}")]
    Timeout(&'static str, Duration),
    /// The back end lacks feature bits the transport offers the guest regardless.
    #[error(
        "virtio-fs back end lacks the virtio features {0:#x} (VERSION_1, INDIRECT_DESC and EVENT_IDX are needed)"
    )]
    Features(u64),
    /// The back end has too few queues for a file system (high priority + one request queue).
    #[error("virtio-fs back end has {0} queues; at least 2 are needed")]
    Queues(u64),
}

impl FsError {
    /// The errno the process should exit with.
    pub fn errno(&self) -> i32 {
        match self {
            FsError::Tag(_) | FsError::NoQueues => libc::EINVAL,
            FsError::Socket(e) | FsError::Thread(e) => e.raw_os_error().unwrap_or(libc::EIO),
            FsError::Backend(..) | FsError::Features(_) | FsError::Queues(_) => libc::EPROTO,
            FsError::Timeout(..) => libc::ETIMEDOUT,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while holding these locks; should it, the state is still consistent
    // enough to shut things down.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Default)]
struct WatchState {
    deadline: Option<Instant>,
    /// The length of the current (or last) deadline, for the error message.
    armed_for: Duration,
    fired: bool,
    stop: bool,
}

struct WatchShared {
    state: Mutex<WatchState>,
    wake: Condvar,
    sock: UnixStream,
}

impl WatchShared {
    fn cut(&self) {
        let _ = self.sock.shutdown(Shutdown::Both);
    }
}

/// Bounds how long the back end may keep us waiting. The vhost crate retries a receive that
/// fails with EAGAIN, which is what a socket receive timeout produces, so SO_RCVTIMEO alone
/// would leave a silent back end blocking the caller (a vCPU thread) forever. Shutting the
/// socket down makes the blocked receive see end-of-file instead, and the crate gives up.
struct Watchdog {
    shared: Arc<WatchShared>,
    thread: Option<JoinHandle<()>>,
}

impl Watchdog {
    fn spawn(sock: UnixStream) -> std::io::Result<Watchdog> {
        let shared = Arc::new(WatchShared {
            state: Mutex::new(WatchState::default()),
            wake: Condvar::new(),
            sock,
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("virtio-fs-watchdog".into())
            .spawn(move || {
                crate::thread::started(crate::thread::ThreadKind::FsWatchdog);
                watch(&s)
            })?;
        Ok(Watchdog {
            shared,
            thread: Some(thread),
        })
    }

    fn arm(&self, timeout: Duration) {
        let mut st = lock(&self.shared.state);
        st.deadline = Instant::now().checked_add(timeout);
        st.armed_for = timeout;
        self.shared.wake.notify_one();
    }

    /// The deadline, if it passed (and the socket was shut down) since the last arming.
    fn disarm(&self) -> Option<Duration> {
        let mut st = lock(&self.shared.state);
        st.deadline = None;
        std::mem::take(&mut st.fired).then_some(st.armed_for)
    }

    fn fired(&self) -> Option<Duration> {
        let st = lock(&self.shared.state);
        st.fired.then_some(st.armed_for)
    }

    fn cut(&self) {
        self.shared.cut();
    }
}

fn watch(s: &WatchShared) {
    let mut st = lock(&s.state);
    loop {
        if st.stop {
            return;
        }
        st = match st.deadline {
            None => s.wake.wait(st).unwrap_or_else(PoisonError::into_inner),
            Some(d) => {
                let now = Instant::now();
                if now >= d {
                    s.cut();
                    st.fired = true;
                    st.deadline = None;
                    continue;
                }
                s.wake
                    .wait_timeout(st, d - now)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0
            }
        };
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        lock(&self.shared.state).stop = true;
        self.shared.wake.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The rings one activation started.
struct Active {
    /// Which handle activated them.
    owner: u64,
    queues: Vec<usize>,
    /// The kick and call eventfds. The back end received duplicates and needs none of these;
    /// they are kept so that an activation owns what it handed out until its rings stop.
    _fds: Vec<EventFd>,
}

/// The connection and what the handshake learned.
struct Link {
    frontend: Frontend,
    /// PROTOCOL_FEATURES was negotiated: SET_FEATURES must carry it, and rings start disabled
    /// until SET_VRING_ENABLE.
    protocol: bool,
    /// Why the connection was given up, once it was.
    broken: Option<String>,
    active: Option<Active>,
}

impl Link {
    /// One request to the back end. A failure ends the connection: the stream may be out of
    /// step, and a back end that misbehaved once is not given guest memory again.
    fn call<T>(
        &mut self,
        wd: &Watchdog,
        what: &'static str,
        f: impl FnOnce(&mut Frontend) -> vhost::Result<T>,
    ) -> Result<T, FsError> {
        if let Some(why) = &self.broken {
            return Err(FsError::Backend(
                what,
                format!("the connection was closed after an earlier failure ({why})"),
            ));
        }
        f(&mut self.frontend).map_err(|e| {
            let err = match wd.fired() {
                Some(t) => FsError::Timeout(what, t),
                None => FsError::Backend(what, e.to_string()),
            };
            wd.cut();
            self.broken = Some(err.to_string());
            err
        })
    }

    /// Stop the running rings so the back end no longer touches the memory they lie in.
    fn stop_rings(&mut self, wd: &Watchdog) -> Result<(), FsError> {
        let Some(active) = self.active.take() else {
            return Ok(());
        };
        for &i in &active.queues {
            if self.protocol {
                self.call(wd, "SET_VRING_ENABLE", |f| f.set_vring_enable(i, false))?;
            }
            self.call(wd, "GET_VRING_BASE", |f| f.get_vring_base(i))?;
        }
        Ok(())
    }
}

/// The connection to the back end, shared by every handle and by its operations thread.
struct Connection {
    /// Set by [`VhostUserFs::disconnect`] (or when the last handle goes): nothing more is asked
    /// of the back end.
    closed: AtomicBool,
    link: Mutex<Link>,
    watchdog: Watchdog,
    /// The deadline of an activation or a reset.
    timeout: Duration,
    next_id: AtomicU64,
    /// Activations and resets waiting for the operations thread.
    ops: Mutex<Ops>,
    ops_changed: Condvar,
}

/// What the operations thread has to do, and is doing.
#[derive(Default)]
struct Ops {
    queue: std::collections::VecDeque<Op>,
    /// The handle whose operation runs now.
    running: Option<u64>,
    /// The last failed operation's handle and error, for [`VhostUserFs::settle`].
    failed: Option<(u64, String)>,
    /// The last handle is gone: finish (quickly: the connection is cut) and end.
    stop: bool,
    /// The thread has ended (set as it returns, also by a panic).
    exited: bool,
}

/// How long the last handle's drop waits for the operations thread to end once the connection
/// is cut (it normally ends at once); after that the thread is left to end by itself.
const OPS_EXIT_WAIT: Duration = Duration::from_millis(250);

/// Marks the operations thread as ended when it returns or unwinds.
struct ExitMark<'a>(&'a Connection);

impl Drop for ExitMark<'_> {
    fn drop(&mut self) {
        lock(&self.0.ops).exited = true;
        self.0.ops_changed.notify_all();
    }
}

/// One exchange with the back end, run by the operations thread so that no vCPU waits for
/// the back end: a driver's status write only queues it.
enum Op {
    /// Start the rings of handle `owner`'s activation.
    Activate {
        owner: u64,
        features: u64,
        /// Kept so the memory the region descriptors name stays mapped and open.
        _mem: GuestMemoryMmap,
        regions: Vec<VhostUserMemoryRegionInfo>,
        rings: Vec<RingPlan>,
        interrupt: Arc<dyn Interrupt>,
    },
    /// Stop handle `owner`'s rings, if they run.
    Reset { owner: u64 },
}

impl Op {
    fn owner(&self) -> u64 {
        match self {
            Op::Activate { owner, .. } | Op::Reset { owner } => *owner,
        }
    }
}

impl Connection {
    /// Queue `op`. A reset supersedes what its handle has queued and not started (an
    /// activation that would be stopped at once, an earlier reset), so a guest that resets its
    /// device over and over while virtiofsd does not answer queues one operation, not one per
    /// status write: a handle never has more than a reset and an activation waiting.
    fn queue(&self, op: Op) {
        let mut ops = lock(&self.ops);
        if let Op::Reset { owner } = op {
            ops.queue.retain(|queued| queued.owner() != owner);
        }
        ops.queue.push_back(op);
        drop(ops);
        self.ops_changed.notify_all();
    }

    /// Whether an operation of handle `owner` is queued or running.
    fn pending(&self, owner: u64) -> bool {
        let ops = lock(&self.ops);
        ops.running == Some(owner) || ops.queue.iter().any(|op| op.owner() == owner)
    }

    /// The operations thread: runs queued operations in order until told to stop.
    fn serve(&self) {
        loop {
            let op = {
                let mut ops = lock(&self.ops);
                loop {
                    if let Some(op) = ops.queue.pop_front() {
                        ops.running = Some(op.owner());
                        break op;
                    }
                    if ops.stop {
                        return;
                    }
                    ops = self
                        .ops_changed
                        .wait(ops)
                        .unwrap_or_else(PoisonError::into_inner);
                }
            };
            let owner = op.owner();
            let failed = if self.closed.load(Ordering::SeqCst) {
                // Disconnected: nothing is asked of the back end any more.
                None
            } else {
                match op {
                    Op::Activate {
                        owner,
                        features,
                        regions,
                        rings,
                        interrupt,
                        ..
                    } => self
                        .start_rings(owner, features, &regions, rings)
                        .err()
                        .map(|e| {
                            // The guest's device fails, never the VMM.
                            interrupt.needs_reset();
                            e.to_string()
                        }),
                    Op::Reset { owner } => self.stop_rings_of(owner).err().map(|e| e.to_string()),
                }
            };
            let mut ops = lock(&self.ops);
            ops.running = None;
            if let Some(e) = failed {
                ops.failed = Some((owner, e));
            }
            self.ops_changed.notify_all();
        }
    }
}

impl Connection {
    /// Run `f` against the back end under one deadline.
    fn with_deadline<T>(
        &self,
        timeout: Duration,
        f: impl FnOnce(&mut Link, &Watchdog) -> Result<T, FsError>,
    ) -> Result<T, FsError> {
        let mut link = lock(&self.link);
        self.watchdog.arm(timeout);
        let r = f(&mut link, &self.watchdog);
        if let Some(t) = self.watchdog.disarm()
            && link.broken.is_none()
        {
            // The deadline passed just as the last answer came: the socket is shut down all
            // the same.
            let err = FsError::Timeout("the operation", t);
            link.broken = Some(err.to_string());
            return Err(err);
        }
        r
    }
}

/// A ring, checked and translated before anything is sent.
struct RingPlan {
    index: usize,
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    call: EventFd,
    kick: EventFd,
}

/// The host address of `len` bytes of guest memory at `addr`, which must lie in one region:
/// the back end translates each ring address through one memory-table entry.
fn host_range(mem: &GuestMemoryMmap, addr: u64, len: u64) -> Option<u64> {
    let (region, off) = mem.to_region_addr(GuestAddress(addr))?;
    let last = off.checked_add(len.checked_sub(1)?)?;
    region.check_address(last)?;
    region.get_host_address(off).ok().map(|p| p as u64)
}

/// Ends the connection's operations thread when the last handle goes: the connection is cut
/// (the back end sees it close, as it would when the socket is dropped), so what is queued
/// finishes at once. The thread is joined when it has ended within [`OPS_EXIT_WAIT`] (so
/// nothing of it outlives the device), and otherwise left to end by itself: a drop never waits
/// longer than that.
struct OpsThread {
    conn: Arc<Connection>,
    handle: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for OpsThread {
    fn drop(&mut self) {
        self.conn.closed.store(true, Ordering::SeqCst);
        self.conn.watchdog.cut();
        let mut ops = lock(&self.conn.ops);
        ops.stop = true;
        self.conn.ops_changed.notify_all();
        let (ops, _) = self
            .conn
            .ops_changed
            .wait_timeout_while(ops, OPS_EXIT_WAIT, |o| !o.exited)
            .unwrap_or_else(PoisonError::into_inner);
        let exited = ops.exited;
        drop(ops);
        let handle = self
            .handle
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let (true, Some(h)) = (exited, handle) {
            let _ = h.join();
        }
    }
}

/// A virtio-fs device whose requests a vhost-user back end (virtiofsd) serves.
pub struct VhostUserFs {
    conn: Arc<Connection>,
    /// Shared by every handle; dropped with the last one.
    ops_thread: Arc<OpsThread>,
    id: u64,
    config: [u8; TAG_LEN + 4],
    queue_sizes: Vec<u16>,
    /// The back end's device features the guest may see.
    features: u64,
}

impl std::fmt::Debug for VhostUserFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tag = &self.config[..TAG_LEN];
        let end = tag.iter().position(|&b| b == 0).unwrap_or(TAG_LEN);
        f.debug_struct("VhostUserFs")
            .field("tag", &String::from_utf8_lossy(&tag[..end]))
            .field("request_queues", &(self.queue_sizes.len() - 1))
            .finish()
    }
}

impl VhostUserFs {
    /// A device with mount tag `tag` (1 to 36 bytes, no NUL) whose back end is at the other end
    /// of `stream`, already connected. The handshake happens here (SET_OWNER, GET_FEATURES,
    /// the protocol features, GET_QUEUE_NUM); the guest gets as many request queues as the back
    /// end has, at most `max_request_queues` and [`MAX_REQUEST_QUEUES`]. Each operation with
    /// the back end must finish in time: the handshake within [`HANDSHAKE_TIMEOUT`], each
    /// activation and reset within [`OPERATION_TIMEOUT`].
    pub fn new(
        stream: UnixStream,
        tag: &str,
        max_request_queues: u16,
    ) -> Result<VhostUserFs, FsError> {
        Self::with_timeouts(
            stream,
            tag,
            max_request_queues,
            HANDSHAKE_TIMEOUT,
            OPERATION_TIMEOUT,
        )
    }

    /// [`VhostUserFs::new`] with other deadlines for the handshake and for each activation
    /// and reset.
    pub fn with_timeouts(
        stream: UnixStream,
        tag: &str,
        max_request_queues: u16,
        handshake: Duration,
        operation: Duration,
    ) -> Result<VhostUserFs, FsError> {
        if tag.is_empty() || tag.len() > TAG_LEN || tag.contains('\0') {
            return Err(FsError::Tag(tag.to_owned()));
        }
        if max_request_queues == 0 {
            return Err(FsError::NoQueues);
        }
        // Not the real bound (see Watchdog), but each blocked system call then returns to the
        // vhost crate now and then instead of sleeping in the kernel indefinitely.
        let wake = operation.max(Duration::from_millis(1));
        stream
            .set_read_timeout(Some(wake))
            .and_then(|()| stream.set_write_timeout(Some(wake)))
            .map_err(FsError::Socket)?;
        let watchdog = Watchdog::spawn(stream.try_clone().map_err(FsError::Socket)?)
            .map_err(FsError::Thread)?;
        let conn = Arc::new(Connection {
            closed: AtomicBool::new(false),
            // Two queues (high priority + one request queue) until GET_QUEUE_NUM says more.
            link: Mutex::new(Link {
                frontend: Frontend::from_stream(stream, 2),
                protocol: false,
                broken: None,
                active: None,
            }),
            watchdog,
            timeout: operation,
            next_id: AtomicU64::new(1),
            ops: Mutex::new(Ops::default()),
            ops_changed: Condvar::new(),
        });
        let (features, queues) = conn.with_deadline(handshake, |l, wd| {
            l.call(wd, "SET_OWNER", |f| f.set_owner())?;
            let features = l.call(wd, "GET_FEATURES", |f| f.get_features())?;
            let missing = GUEST_FEATURES & !features;
            if missing != 0 {
                return Err(FsError::Features(missing));
            }
            if features & F_PROTOCOL_FEATURES == 0 {
                return Ok((features, 2));
            }
            let offered = l.call(wd, "GET_PROTOCOL_FEATURES", |f| f.get_protocol_features())?;
            // MQ to learn the queue count; REPLY_ACK so a request the back end refuses fails
            // the activation instead of leaving a device that never answers. Nothing else:
            // the config space is ours, and the back end gets no channel back to us.
            let wanted =
                offered & (VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::REPLY_ACK);
            l.call(wd, "SET_PROTOCOL_FEATURES", |f| {
                f.set_protocol_features(wanted)
            })?;
            l.protocol = true;
            if wanted.contains(VhostUserProtocolFeatures::REPLY_ACK) {
                l.frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
            }
            if !wanted.contains(VhostUserProtocolFeatures::MQ) {
                return Ok((features, 2));
            }
            let n = l.call(wd, "GET_QUEUE_NUM", |f| f.get_queue_num())?;
            Ok((features, n))
        })?;
        if queues < 2 {
            return Err(FsError::Queues(queues));
        }
        let requests = (queues - 1)
            .min(u64::from(MAX_REQUEST_QUEUES))
            .min(u64::from(max_request_queues)) as u16;
        let mut config = [0u8; TAG_LEN + 4];
        config[..tag.len()].copy_from_slice(tag.as_bytes());
        config[TAG_LEN..].copy_from_slice(&u32::from(requests).to_le_bytes());
        let serving = conn.clone();
        let handle = std::thread::Builder::new()
            .name("virtio-fs-ops".into())
            .spawn(move || {
                let _mark = ExitMark(&serving);
                crate::thread::started(crate::thread::ThreadKind::FsOps);
                serving.serve()
            })
            .map_err(FsError::Thread)?;
        Ok(VhostUserFs {
            id: 0,
            ops_thread: Arc::new(OpsThread {
                conn: conn.clone(),
                handle: Mutex::new(Some(handle)),
            }),
            conn,
            config,
            queue_sizes: vec![QUEUE_SIZE; usize::from(requests) + 1],
            features: features & GUEST_FEATURES,
        })
    }

    /// A device for another machine (after a guest reboot) on the same connection, with the
    /// same tag and queues. The connection closes when the last of them is dropped.
    pub fn share(&self) -> VhostUserFs {
        VhostUserFs {
            conn: self.conn.clone(),
            ops_thread: self.ops_thread.clone(),
            id: self.conn.next_id.fetch_add(1, Ordering::Relaxed),
            config: self.config,
            queue_sizes: self.queue_sizes.clone(),
            features: self.features,
        }
    }

    /// End the connection now, for every handle, without asking the back end anything: the
    /// run is over, and a back end that stopped answering must not hold the stop up. A request
    /// in progress (on a vCPU thread) fails at once; later resets return at once; the back end
    /// sees the socket close and exits (virtiofsd does).
    pub fn disconnect(&self) {
        self.conn.closed.store(true, Ordering::SeqCst);
        self.conn.watchdog.cut();
    }

    /// Why the connection was given up, if it was (without waiting for an operation).
    fn broken(&self) -> Option<String> {
        if self.conn.closed.load(Ordering::SeqCst) {
            return Some("the connection is closed".into());
        }
        let ops = lock(&self.conn.ops);
        ops.failed
            .as_ref()
            .map(|(_, e)| format!("the connection was closed after an earlier failure ({e})"))
    }

    /// Wait until this handle's queued activations and resets are done, at most `timeout`;
    /// the error of the last one that failed, if it was this handle's. For tests and for a
    /// caller that has time to wait (never a vCPU).
    pub fn settle(&self, timeout: Duration) -> Result<(), FsError> {
        let deadline = Instant::now() + timeout;
        let mut ops = lock(&self.conn.ops);
        while ops.running == Some(self.id) || ops.queue.iter().any(|op| op.owner() == self.id) {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return Err(FsError::Timeout("the queued operations", timeout));
            };
            ops = self
                .conn
                .ops_changed
                .wait_timeout(ops, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        match &ops.failed {
            Some((owner, e)) if *owner == self.id => Err(FsError::Backend("operation", e.clone())),
            _ => Ok(()),
        }
    }

    /// The number of request queues the guest is offered.
    pub fn request_queues(&self) -> u16 {
        // At most MAX_REQUEST_QUEUES + 1 entries.
        (self.queue_sizes.len() - 1) as u16
    }
}

/// Check and translate everything an activation needs, so that nothing fails half way through
/// for a reason of ours.
fn plan(
    mem: &GuestMemoryMmap,
    queues: Vec<ActiveQueue>,
    interrupt: &dyn Interrupt,
    queue_count: usize,
) -> Result<(Vec<VhostUserMemoryRegionInfo>, Vec<RingPlan>), String> {
    // The descriptors in the table are borrowed from `mem`'s regions, which outlive the call.
    let regions = mem
        .iter()
        .map(VhostUserMemoryRegionInfo::from_guest_region)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| "guest memory is not shared (no memfd behind it)".to_owned())?;
    let mut rings = Vec::with_capacity(queues.len());
    for q in queues {
        let i = q.index;
        if usize::from(i) >= queue_count {
            return Err(format!("queue {i} does not exist"));
        }
        let n = u64::from(q.queue.size());
        let translate = |addr: u64, len: u64| {
            host_range(mem, addr, len)
                .ok_or_else(|| format!("queue {i}: ring at {addr:#x} is not in one RAM region"))
        };
        // Split-ring sizes, each with its event-index word.
        let desc = translate(q.queue.desc_table(), 16 * n)?;
        let avail = translate(q.queue.avail_ring(), 6 + 2 * n)?;
        let used = translate(q.queue.used_ring(), 6 + 8 * n)?;
        let call = interrupt
            .queue_irqfd(i)
            .ok_or_else(|| format!("queue {i} has no MSI-X vector"))?;
        rings.push(RingPlan {
            index: usize::from(i),
            size: q.queue.size(),
            desc,
            avail,
            used,
            call,
            kick: q.notify,
        });
    }
    Ok((regions, rings))
}

impl VirtioDevice for VhostUserFs {
    fn device_type(&self) -> u16 {
        VIRTIO_ID_FS
    }

    fn pci_class(&self) -> u32 {
        PCI_CLASS_STORAGE_OTHER
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

    /// Checks what the driver set up and queues the activation for the operations thread:
    /// the vCPU that wrote DRIVER_OK does not wait for the back end. If the back end refuses
    /// or does not answer in time, the device asks the driver for a reset
    /// ([`Interrupt::needs_reset`]).
    fn activate(&mut self, a: Activation) -> Result<(), VirtioError> {
        // The transport lets the driver accept only what it offered; the back end must still
        // never be sent a bit it did not offer.
        if a.features & !self.features != 0 {
            return Err(VirtioError::Backend(format!(
                "the driver accepted features {:#x} the back end lacks",
                a.features & !self.features
            )));
        }
        if let Some(why) = self.broken() {
            return Err(VirtioError::Backend(why));
        }
        let Activation {
            mem,
            features,
            queues,
            interrupt,
        } = a;
        let (regions, rings) = plan(&mem, queues, interrupt.as_ref(), self.queue_sizes.len())
            .map_err(VirtioError::Backend)?;
        self.conn.queue(Op::Activate {
            owner: self.id,
            features,
            _mem: mem,
            regions,
            rings,
            interrupt,
        });
        Ok(())
    }

    /// Queues the stop of this handle's rings; [`VirtioDevice::reset_pending`] says when it is
    /// done (the back end stops using the rings then).
    fn reset(&mut self) {
        if self.conn.closed.load(Ordering::SeqCst) {
            // Disconnected: the back end has nothing of ours left to stop.
            return;
        }
        self.conn.queue(Op::Reset { owner: self.id });
    }

    fn reset_pending(&self) -> bool {
        self.conn.pending(self.id)
    }
}

impl Connection {
    /// Start the rings of an activation (the operations thread's part of `activate`).
    fn start_rings(
        &self,
        owner: u64,
        features: u64,
        regions: &[VhostUserMemoryRegionInfo],
        rings: Vec<RingPlan>,
    ) -> Result<(), FsError> {
        self.with_deadline(self.timeout, |l, wd| {
            // A previous machine's or activation's rings, if they were not stopped first.
            l.stop_rings(wd)?;
            let acked = features | if l.protocol { F_PROTOCOL_FEATURES } else { 0 };
            l.call(wd, "SET_FEATURES", |f| f.set_features(acked))?;
            l.call(wd, "SET_MEM_TABLE", |f| {
                f.set_mem_table(regions).map(|_| ())
            })?;
            l.active = Some(Active {
                owner,
                queues: Vec::with_capacity(rings.len()),
                _fds: Vec::with_capacity(2 * rings.len()),
            });
            for r in rings {
                let i = r.index;
                let config = VringConfigData {
                    queue_max_size: QUEUE_SIZE,
                    queue_size: r.size,
                    flags: 0,
                    desc_table_addr: r.desc,
                    used_ring_addr: r.used,
                    avail_ring_addr: r.avail,
                    log_addr: None,
                };
                l.call(wd, "SET_VRING_NUM", |f| f.set_vring_num(i, r.size))?;
                l.call(wd, "SET_VRING_ADDR", |f| f.set_vring_addr(i, &config))?;
                l.call(wd, "SET_VRING_BASE", |f| f.set_vring_base(i, 0))?;
                l.call(wd, "SET_VRING_CALL", |f| f.set_vring_call(i, &r.call))?;
                l.call(wd, "SET_VRING_KICK", |f| f.set_vring_kick(i, &r.kick))?;
                if l.protocol {
                    l.call(wd, "SET_VRING_ENABLE", |f| f.set_vring_enable(i, true))?;
                }
                // The driver may have notified the queue before the ring was enabled (it does
                // not wait for the activation), and a back end drops a kick for a disabled
                // ring: one more makes it look at the ring now. A spare kick costs nothing.
                let _ = r.kick.write(1);
                if let Some(a) = &mut l.active {
                    a.queues.push(i);
                    a._fds.push(r.call);
                    a._fds.push(r.kick);
                }
            }
            Ok(())
        })
    }

    /// Stop handle `owner`'s rings if they are the running ones. On failure the connection is
    /// already shut down: the back end exits and unmaps the memory, which is all a reset has
    /// to achieve.
    fn stop_rings_of(&self, owner: u64) -> Result<(), FsError> {
        {
            let link = lock(&self.link);
            if link.active.as_ref().is_none_or(|a| a.owner != owner) {
                return Ok(());
            }
        }
        self.with_deadline(self.timeout, |l, wd| {
            if l.active.as_ref().is_some_and(|a| a.owner == owner) {
                l.stop_rings(wd)
            } else {
                Ok(())
            }
        })
    }
}

impl Drop for VhostUserFs {
    fn drop(&mut self) {
        // The transport resets its device before guest memory goes away; this covers a device
        // dropped without one.
        self.reset();
    }
}

#[cfg(test)]
mod tests;
