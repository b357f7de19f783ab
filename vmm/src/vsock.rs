//! vsock for the guest: the vhost-vsock device and its CID, and the notify listener through
//! which the guest's systemd reports `READY=1` and `EXIT_STATUS=N`, as with systemd-vmspawn.

use std::collections::HashMap;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::Error;

/// The host's CID: where the guest connects to reach us.
pub const HOST_CID: u32 = 2;
/// Longest notification message (vmspawn's `NOTIFY_BUFFER_MAX`); a longer one is dropped.
pub const MAX_MESSAGE: usize = 4096;
/// How long one notify connection may take to send its message while the VM runs.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// The same once the VM has stopped (at most the listen backlog of connections is left).
const STOPPING_READ_TIMEOUT: Duration = Duration::from_millis(100);
/// vmspawn's key for deriving a CID from the machine name.
const SIP_KEY: [u8; 16] = [
    0x03, 0xad, 0xf0, 0xa4, 0x59, 0x2c, 0x77, 0x11, 0xda, 0x39, 0x0c, 0xba, 0xf5, 0x4c, 0x80, 0x52,
];
/// `UINT_MAX - 4`: CIDs 3 ..= 0xFFFFFFFD.
const CID_RANGE: u64 = u32::MAX as u64 - 4;

/// The `tries`-th CID vmspawn derives from a machine name: 3 + SipHash-2-4 of the name
/// followed by the try number (as a little-endian u32) modulo `UINT_MAX - 4`.
pub fn cid_from_name(name: &str, attempt: u32) -> u64 {
    #[allow(
        deprecated,
        reason = "std's SipHasher is SipHash-2-4, exactly the function needed"
    )]
    let mut h = std::hash::SipHasher::new_with_keys(
        u64::from_le_bytes(SIP_KEY[..8].try_into().expect("8 bytes")),
        u64::from_le_bytes(SIP_KEY[8..].try_into().expect("8 bytes")),
    );
    std::hash::Hasher::write(&mut h, name.as_bytes());
    std::hash::Hasher::write(&mut h, &attempt.to_le_bytes());
    3 + std::hash::Hasher::finish(&h) % CID_RANGE
}

/// What the guest said over the notify socket.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct NotifyState {
    /// `READY=1` arrived.
    pub ready: bool,
    /// The last `EXIT_STATUS=` (0..=255).
    pub exit_status: Option<u8>,
}

/// What one message changed, for the caller to act on outside the state's lock.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// This message made the guest ready (the first `READY=1`).
    pub became_ready: bool,
    /// The message's last `STATUS=` text.
    pub status: Option<String>,
    /// The `EXIT_STATUS=` it carried.
    pub exit_status: Option<u8>,
}

/// Apply one notification message to `state`. Lines end with `\n` or `\r`, as vmspawn splits
/// them; unknown lines and malformed values are ignored.
pub fn apply_message(state: &mut NotifyState, message: &[u8]) -> Applied {
    let mut applied = Applied::default();
    for line in message.split(|b| *b == b'\n' || *b == b'\r') {
        let Ok(line) = std::str::from_utf8(line) else {
            debug!("Ignoring a notify line that is not UTF-8");
            continue;
        };
        if line == "READY=1" {
            if !state.ready {
                state.ready = true;
                applied.became_ready = true;
            }
        } else if let Some(v) = line.strip_prefix("STATUS=") {
            applied.status = Some(v.to_string());
        } else if let Some(v) = line.strip_prefix("EXIT_STATUS=") {
            match v.trim().parse::<u8>() {
                Ok(n) => {
                    state.exit_status = Some(n);
                    applied.exit_status = Some(n);
                }
                Err(_) => debug!("Ignoring malformed notify line {line:?}"),
            }
        }
    }
    applied
}

/// Acts on the guest's notifications, whichever vsock device carries them: keeps the state,
/// prints the READY=1 status line and tells our own supervisor, as vmspawn does.
pub struct Notifier {
    state: Mutex<NotifyState>,
    quiet: bool,
    /// Forward the guest's READY=1 to `$NOTIFY_SOCKET` (`--notify-ready=yes`); with `no`,
    /// rvmspawn reported ready itself when the VM started.
    forward_ready: bool,
    /// Our supervisor's socket (`$NOTIFY_SOCKET` when the notifier was made).
    supervisor: Option<std::ffi::OsString>,
}

impl Notifier {
    /// A notifier with nothing received yet, telling the supervisor in `$NOTIFY_SOCKET`.
    pub fn new(quiet: bool, forward_ready: bool) -> Notifier {
        Notifier {
            state: Mutex::new(NotifyState::default()),
            quiet,
            forward_ready,
            supervisor: std::env::var_os("NOTIFY_SOCKET"),
        }
    }

    /// The same, telling the supervisor at `socket` (a path, or `@NAME` in the abstract
    /// namespace) instead of `$NOTIFY_SOCKET`'s, or none (for tests, which must not change
    /// the process's environment).
    #[cfg(test)]
    pub fn with_supervisor(mut self, socket: Option<std::ffi::OsString>) -> Notifier {
        self.supervisor = socket;
        self
    }

    /// Handle one whole message (one connection's bytes, read to its end). A message longer
    /// than [`MAX_MESSAGE`] is dropped whole, as vmspawn drops one that fills its buffer.
    pub fn message(&self, bytes: &[u8]) {
        if bytes.len() > MAX_MESSAGE {
            debug!("Dropping a notify message of more than {MAX_MESSAGE} bytes from the guest");
            return;
        }
        let applied = {
            let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
            apply_message(&mut s, bytes)
        };
        if applied.became_ready {
            if !self.quiet {
                // On a line of its own, whatever the guest was printing.
                status!("\nVM reported READY=1.");
            }
            if self.forward_ready {
                notify_supervisor_at(self.supervisor.as_deref(), "READY=1");
            }
        }
        if let Some(status) = applied.status {
            notify_supervisor_at(
                self.supervisor.as_deref(),
                &format!("STATUS=VM running: {status}"),
            );
        }
        if let Some(n) = applied.exit_status.filter(|n| *n != 0) {
            debug!("Non-zero exit code received: {n}");
        }
    }

    /// What the guest has said so far.
    pub fn state(&self) -> NotifyState {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The notify port of the userspace vsock device: collects each guest connection's bytes and
/// hands the message to the [`Notifier`] when the connection ends.
pub struct NotifyPort {
    notifier: Arc<Notifier>,
    /// Open connections and their bytes so far; `None` once a message is over the limit.
    /// The device caps its connections, so this is bounded too.
    conns: Mutex<HashMap<u64, Option<Vec<u8>>>>,
}

impl NotifyPort {
    /// A port handler feeding `notifier`.
    pub fn new(notifier: Arc<Notifier>) -> NotifyPort {
        NotifyPort {
            notifier,
            conns: Mutex::new(HashMap::new()),
        }
    }
}

impl devices::virtio::vsock_user::HostPortHandler for NotifyPort {
    fn data(&self, conn: u64, bytes: &[u8]) {
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        let entry = conns.entry(conn).or_insert_with(|| Some(Vec::new()));
        if let Some(buf) = entry {
            if buf.len() + bytes.len() > MAX_MESSAGE {
                *entry = None;
            } else {
                buf.extend_from_slice(bytes);
            }
        }
    }

    fn closed(&self, conn: u64) {
        let message = self
            .conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&conn);
        match message {
            Some(Some(bytes)) => self.notifier.message(&bytes),
            Some(None) => {
                debug!("Dropping a notify message of more than {MAX_MESSAGE} bytes from the guest")
            }
            // A connection that sent nothing.
            None => {}
        }
    }
}

/// Listens on AF_VSOCK for the guest's notifications, one connection per message.
pub struct NotifyListener {
    stop: vmm_sys_util::eventfd::EventFd,
    port: u32,
    thread: Option<JoinHandle<()>>,
}

fn os_err(what: &'static str) -> Error {
    Error::Host(what, std::io::Error::last_os_error())
}

impl NotifyListener {
    /// Listen on any port, handing each connection's message to `notifier`.
    pub fn start(notifier: Arc<Notifier>) -> Result<NotifyListener, Error> {
        // SAFETY: plain socket creation; the result is checked.
        let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(os_err("vsock notify socket"));
        }
        // SAFETY: `fd` is a new socket nobody else owns.
        let socket = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut addr: libc::sockaddr_vm = {
            // SAFETY: sockaddr_vm is plain data; all zeroes is a valid value.
            unsafe { std::mem::zeroed() }
        };
        addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
        addr.svm_cid = libc::VMADDR_CID_ANY;
        addr.svm_port = libc::VMADDR_PORT_ANY;
        let len = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
        // SAFETY: `addr` is a valid sockaddr_vm of `len` bytes.
        if unsafe { libc::bind(fd, (&raw const addr).cast(), len) } < 0 {
            return Err(os_err("vsock notify bind"));
        }
        // Non-blocking for certain (accept must never wait once the VM is gone), whatever the
        // socket family makes of SOCK_NONBLOCK.
        // SAFETY: fcntl on our own descriptor.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFL);
            libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
        // SAFETY: listen on our socket.
        if unsafe { libc::listen(fd, 16) } < 0 {
            return Err(os_err("vsock notify listen"));
        }
        let mut bound = addr;
        let mut bound_len = len;
        // SAFETY: `bound` has room for a sockaddr_vm; the kernel writes at most `bound_len`.
        if unsafe { libc::getsockname(fd, (&raw mut bound).cast(), &mut bound_len) } < 0 {
            return Err(os_err("vsock notify getsockname"));
        }
        // Shutting down a listening AF_VSOCK socket does not wake a thread in accept(), so the
        // thread polls the socket and a stop eventfd.
        let stop = vmm_sys_util::eventfd::EventFd::new(libc::EFD_CLOEXEC)
            .map_err(|e| Error::Host("eventfd", e))?;
        let thread = {
            let stop = stop.try_clone().map_err(|e| Error::Host("eventfd", e))?;
            std::thread::Builder::new()
                .name("vsock-notify".into())
                .spawn(move || {
                    crate::seccomp::enter(crate::seccomp::Kind::VsockNotify);
                    serve(&socket, &stop, &notifier)
                })
                .map_err(|e| Error::Host("vsock notify thread", e))?
        };
        Ok(NotifyListener {
            stop,
            port: bound.svm_port,
            thread: Some(thread),
        })
    }

    /// The address the guest is given, as vmspawn writes it.
    pub fn address(&self) -> String {
        format!("vsock-stream:{HOST_CID}:{}", self.port)
    }

    /// Stop listening, after reading every connection already made: a guest's last
    /// `EXIT_STATUS=` may arrive just before it powers off.
    pub fn finish(mut self) {
        let _ = self.stop.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(socket: &OwnedFd, stop: &vmm_sys_util::eventfd::EventFd, notifier: &Notifier) {
    // One byte more than a message may have, to tell a message at the limit from a longer one.
    let mut buf = vec![0u8; MAX_MESSAGE + 1];
    loop {
        let mut fds = [
            libc::pollfd {
                fd: stop.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: socket.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a valid array of two pollfds for the call.
        if unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) } < 0 {
            continue;
        }
        // The stop eventfd is never read, so once set every later poll sees it: connections
        // already waiting are still served, then the thread ends.
        let stopping = fds[0].revents != 0;
        if fds[1].revents & libc::POLLIN == 0 {
            if stopping {
                return;
            }
            continue;
        }
        // SAFETY: accept on our listening socket without an address.
        let conn = unsafe {
            libc::accept4(
                socket.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        };
        if conn < 0 {
            if stopping {
                return;
            }
            continue;
        }
        // SAFETY: `conn` is a new connected socket nobody else owns.
        let conn = unsafe { OwnedFd::from_raw_fd(conn) };
        let mut stream = std::fs::File::from(conn);
        // A guest that opens a connection and never closes it must not stall the others
        // for long: each message gets a few seconds. Once the run is ending the guest is
        // stopped and what it sent is already here, so a connection left open (a backlog of
        // them, from a hostile guest) must not hold up rvmspawn's exit.
        set_timeout(
            &stream,
            if stopping {
                STOPPING_READ_TIMEOUT
            } else {
                READ_TIMEOUT
            },
        );
        let mut n = 0;
        while n < buf.len() {
            match stream.read(&mut buf[n..]) {
                Ok(0) | Err(_) => break,
                Ok(k) => n += k,
            }
        }
        notifier.message(&buf[..n]);
    }
}

fn set_timeout(f: &std::fs::File, t: Duration) {
    let tv = libc::timeval {
        tv_sec: t.as_secs() as libc::time_t,
        // A zero timeval would mean "no timeout": the sub-second part must not be lost.
        tv_usec: libc::suseconds_t::from(t.subsec_micros()),
    };
    // SAFETY: setsockopt reads a timeval of the given size.
    unsafe {
        libc::setsockopt(
            f.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const tv).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
}

impl Drop for NotifyListener {
    fn drop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Send `message` to our own supervisor (`$NOTIFY_SOCKET`, when set), as vmspawn forwards the
/// guest's notifications. Best effort: a supervisor that went away is not our failure.
pub fn notify_supervisor(message: &str) {
    notify_supervisor_at(std::env::var_os("NOTIFY_SOCKET").as_deref(), message);
}

/// Send `message` to the supervisor listening at `socket` (a path, or `@NAME` in the abstract
/// namespace), if any; best effort, as [`notify_supervisor`].
pub fn notify_supervisor_at(socket: Option<&std::ffi::OsStr>, message: &str) {
    let Some(path) = socket else {
        return;
    };
    let path = std::path::Path::new(path);
    let sock = match std::os::unix::net::UnixDatagram::unbound() {
        Ok(s) => s,
        Err(_) => return,
    };
    let bytes = path.as_os_str().as_encoded_bytes();
    let sent = if let Some(abstract_name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(abstract_name)
            .and_then(|a| sock.send_to_addr(message.as_bytes(), &a))
    } else {
        sock.send_to(message.as_bytes(), path)
    };
    if let Err(e) = sent {
        debug!("Failed to notify {}: {e}", path.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_set_ready_and_exit_status() {
        let mut s = NotifyState::default();
        let a = apply_message(&mut s, b"READY=1\rSTATUS=booting\n");
        assert_eq!(
            a,
            Applied {
                became_ready: true,
                status: Some("booting".into()),
                exit_status: None
            }
        );
        assert!(!apply_message(&mut s, b"READY=1").became_ready);
        assert_eq!(
            apply_message(&mut s, b"EXIT_STATUS=42").exit_status,
            Some(42)
        );
        assert_eq!(s.exit_status, Some(42));
        // Out of range, garbage, binary: ignored.
        let a = apply_message(
            &mut s,
            b"EXIT_STATUS=256\nEXIT_STATUS=x\n\xff\xfe\nFOO=1\nREADY=0",
        );
        assert_eq!(a, Applied::default());
        assert_eq!(s.exit_status, Some(42));
        apply_message(&mut s, b"EXIT_STATUS=0\n");
        assert_eq!(
            s,
            NotifyState {
                ready: true,
                exit_status: Some(0)
            }
        );
    }

    #[test]
    fn the_userspace_port_assembles_messages_per_connection() {
        use devices::virtio::vsock_user::HostPortHandler;
        let notifier = Arc::new(Notifier::new(true, false));
        let port = NotifyPort::new(notifier.clone());
        // Two interleaved connections; a message counts only once its connection ends.
        port.data(1, b"EXIT_STA");
        port.data(2, b"READY=1\n");
        port.data(1, b"TUS=7\n");
        assert_eq!(notifier.state(), NotifyState::default());
        port.closed(2);
        port.closed(1);
        assert_eq!(
            notifier.state(),
            NotifyState {
                ready: true,
                exit_status: Some(7)
            }
        );
        // A message over the limit is dropped whole, even the valid line at its start.
        port.data(3, b"EXIT_STATUS=9\n");
        for _ in 0..MAX_MESSAGE {
            port.data(3, b"x");
        }
        port.closed(3);
        assert_eq!(notifier.state().exit_status, Some(7));
        // Exactly at the limit is still a message.
        let mut m = b"EXIT_STATUS=3\n".to_vec();
        m.resize(MAX_MESSAGE, b'y');
        port.data(4, &m);
        port.closed(4);
        assert_eq!(notifier.state().exit_status, Some(3));
        // Ends of connections that never sent anything, or unknown ones, change nothing.
        port.closed(5);
        assert!(port.conns.lock().unwrap().is_empty());
    }

    #[test]
    fn the_supervisor_gets_ready_and_status() {
        let dir = std::env::temp_dir().join(format!("rvmspawn-notify-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        let path = dir.join("notify");
        let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let recv = || {
            let mut b = [0u8; 256];
            let n = sock.recv(&mut b).unwrap();
            String::from_utf8_lossy(&b[..n]).into_owned()
        };
        let supervisor = Some(path.clone().into_os_string());
        let forwarding = Notifier::new(true, true).with_supervisor(supervisor.clone());
        forwarding.message(b"STATUS=up\nREADY=1\n");
        assert_eq!(recv(), "READY=1");
        assert_eq!(recv(), "STATUS=VM running: up");
        // With --notify-ready=no rvmspawn said READY=1 itself at start: not again.
        let not_forwarding = Notifier::new(true, false).with_supervisor(supervisor);
        not_forwarding.message(b"READY=1\nSTATUS=x");
        assert_eq!(recv(), "STATUS=VM running: x");
        // And the function underneath, given the socket.
        notify_supervisor_at(Some(path.as_os_str()), "STATUS=direct");
        assert_eq!(recv(), "STATUS=direct");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn cids_from_names_are_stable_and_in_range() {
        // vmspawn's values, from the independent SipHash-2-4 of tests/src/lib.rs
        // (`vmspawn_cid`), which checks itself against the algorithm's published vectors.
        assert_eq!(cid_from_name("machine", 0), 111_532_667);
        assert_eq!(cid_from_name("vsockname", 0), 3_381_205_280);
        let a = cid_from_name("machine", 0);
        assert_eq!(a, cid_from_name("machine", 0));
        assert_ne!(a, cid_from_name("machine", 1));
        assert_ne!(a, cid_from_name("other", 0));
        for i in 0..64 {
            let c = cid_from_name("x", i);
            assert!((3..=u64::from(u32::MAX) - 2).contains(&c), "{c}");
        }
    }
}
