//! vsock for the guest: the vhost-vsock device and its CID, and the notify listener through
//! which the guest's systemd reports `READY=1` and `EXIT_STATUS=N`, as with systemd-vmspawn.

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::Error;

/// The host's CID: where the guest connects to reach us.
pub const HOST_CID: u32 = 2;
/// Largest notification message read from one connection; the rest is dropped.
const MAX_MESSAGE: usize = 4096;
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

/// Apply one notification message (lines `KEY=VALUE`) to `state`; returns whether it made the
/// guest ready. Unknown lines and malformed values are ignored.
pub fn apply_message(state: &mut NotifyState, message: &[u8]) -> bool {
    let mut became_ready = false;
    for line in message.split(|b| *b == b'\n') {
        let Ok(line) = std::str::from_utf8(line) else {
            continue;
        };
        if line == "READY=1" && !state.ready {
            state.ready = true;
            became_ready = true;
        } else if let Some(v) = line.strip_prefix("EXIT_STATUS=")
            && let Ok(n) = v.trim().parse::<u8>()
        {
            state.exit_status = Some(n);
        }
    }
    became_ready
}

/// Listens on AF_VSOCK for the guest's notifications, one connection per message.
pub struct NotifyListener {
    stop: vmm_sys_util::eventfd::EventFd,
    port: u32,
    state: Arc<Mutex<NotifyState>>,
    thread: Option<JoinHandle<()>>,
}

fn os_err(what: &'static str) -> Error {
    Error::Host(what, std::io::Error::last_os_error())
}

impl NotifyListener {
    /// Listen on any port; `on_ready` runs (on the listener's thread) when READY=1 arrives.
    pub fn start(on_ready: Box<dyn Fn() + Send>) -> Result<NotifyListener, Error> {
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
        let state = Arc::new(Mutex::new(NotifyState::default()));
        // Shutting down a listening AF_VSOCK socket does not wake a thread in accept(), so the
        // thread polls the socket and a stop eventfd.
        let stop = vmm_sys_util::eventfd::EventFd::new(libc::EFD_CLOEXEC)
            .map_err(|e| Error::Host("eventfd", e))?;
        let thread = {
            let state = state.clone();
            let stop = stop.try_clone().map_err(|e| Error::Host("eventfd", e))?;
            std::thread::Builder::new()
                .name("vsock-notify".into())
                .spawn(move || serve(&socket, &stop, &state, on_ready))
                .map_err(|e| Error::Host("vsock notify thread", e))?
        };
        Ok(NotifyListener {
            stop,
            port: bound.svm_port,
            state,
            thread: Some(thread),
        })
    }

    /// The address the guest is given, as vmspawn writes it.
    pub fn address(&self) -> String {
        format!("vsock-stream:{HOST_CID}:{}", self.port)
    }

    /// Stop listening, after reading every connection already made (a guest's last
    /// `EXIT_STATUS=` may arrive just before it powers off), and return what the guest said.
    pub fn finish(mut self) -> NotifyState {
        let _ = self.stop.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

fn serve(
    socket: &OwnedFd,
    stop: &vmm_sys_util::eventfd::EventFd,
    state: &Mutex<NotifyState>,
    on_ready: Box<dyn Fn() + Send>,
) {
    let mut buf = vec![0u8; MAX_MESSAGE];
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
        // for long: each message gets a few seconds.
        set_timeout(&stream, Duration::from_secs(5));
        let mut n = 0;
        while n < buf.len() {
            match stream.read(&mut buf[n..]) {
                Ok(0) | Err(_) => break,
                Ok(k) => n += k,
            }
        }
        let became_ready = {
            let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
            apply_message(&mut s, &buf[..n])
        };
        if became_ready {
            on_ready();
        }
    }
}

fn set_timeout(f: &std::fs::File, t: Duration) {
    let tv = libc::timeval {
        tv_sec: t.as_secs() as libc::time_t,
        tv_usec: 0,
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

/// Tell our own supervisor (`$NOTIFY_SOCKET`, when set) that we are ready, as vmspawn forwards
/// the guest's READY=1.
pub fn notify_supervisor_ready() {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let path = std::path::PathBuf::from(path);
    let sock = match std::os::unix::net::UnixDatagram::unbound() {
        Ok(s) => s,
        Err(_) => return,
    };
    let bytes = path.as_os_str().as_encoded_bytes();
    let _ = if let Some(abstract_name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(abstract_name)
            .and_then(|a| sock.send_to_addr(b"READY=1", &a))
    } else {
        sock.send_to(b"READY=1", &path)
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_set_ready_and_exit_status() {
        let mut s = NotifyState::default();
        assert!(apply_message(&mut s, b"READY=1\nSTATUS=booting\n"));
        assert!(!apply_message(&mut s, b"READY=1"));
        apply_message(&mut s, b"EXIT_STATUS=42");
        assert_eq!(s.exit_status, Some(42));
        // Out of range, garbage, binary: ignored.
        apply_message(&mut s, b"EXIT_STATUS=256\nEXIT_STATUS=x\n\xff\xfe\nFOO=1");
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
    fn cids_from_names_are_stable_and_in_range() {
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
