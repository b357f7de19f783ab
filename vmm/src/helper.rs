//! Helper processes that serve the guest's devices from outside the VMM (virtiofsd now; swtpm
//! and passt later), started, watched and stopped the way systemd-vmspawn does it.
//!
//! A helper is forked with a parent-death signal (SIGTERM), so it goes when rvmspawn goes, even
//! by SIGKILL; its exit is watched through a pidfd in the event loop, and a helper that dies
//! while the VM runs ends the run with an error (EPROTO, as vmspawn reports a helper killed by a
//! signal). When the run ends, every helper gets SIGTERM and SIGCONT (so a helper stopped by
//! SIGSTOP gets its SIGTERM too, as systemd does it), then SIGKILL if it has not gone within
//! [`STOP_GRACE`], and is reaped.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::Error;

/// How long a helper may take to exit on SIGTERM before it is killed. Short: the helpers keep
/// no state worth a wait (virtiofsd's writes are already the host's), and the whole stop of a
/// run should take well under two seconds.
pub const STOP_GRACE: Duration = Duration::from_secs(1);

/// Find helper program `name` as vmspawn does: in `$PATH`, then at the `fallbacks` paths.
pub fn find_binary(name: &str, fallbacks: &[&str]) -> Option<PathBuf> {
    find_binary_in(std::env::var_os("PATH").as_deref(), name, fallbacks)
}

/// [`find_binary`] with `path` (a `$PATH`-style list of directories, or none) instead of
/// `$PATH`.
pub fn find_binary_in(
    path: Option<&std::ffi::OsStr>,
    name: &str,
    fallbacks: &[&str],
) -> Option<PathBuf> {
    let in_path = path
        .map(|p| std::env::split_paths(p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|d| d.join(name));
    in_path
        .chain(fallbacks.iter().map(PathBuf::from))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A listening Unix stream socket bound to abstract `name`, close-on-exec.
pub fn listen_abstract(name: &str) -> io::Result<OwnedFd> {
    // std's UnixListener::bind_addr would do, but it listens with a backlog we cannot see and
    // returns a type we would only convert back; this keeps the one descriptor explicit.
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
    let listener = std::os::unix::net::UnixListener::bind_addr(&addr)?;
    // SAFETY: into_raw_fd hands over sole ownership of the listening socket.
    Ok(unsafe { OwnedFd::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(listener)) })
}

/// A helper's socket: a listener in the abstract namespace under a random name
/// (`rvmspawn-KIND-PID-…`, 128 random bits), to be passed to the helper, and our connection to
/// it, which waits in the backlog until the helper accepts it. Nothing is created in the file
/// system. `helper` names the helper in errors.
pub fn abstract_pair(
    kind: &str,
    helper: &str,
) -> Result<(OwnedFd, std::os::unix::net::UnixStream), Error> {
    let fail = |what: &str, e: io::Error| {
        Error::Helper(
            format!("Failed to set up the socket for {helper}: {what}: {e}"),
            e.raw_os_error().unwrap_or(libc::EIO),
        )
    };
    let address = format!(
        "rvmspawn-{kind}-{}-{:016x}{:016x}",
        std::process::id(),
        crate::random_u64(),
        crate::random_u64()
    );
    let listener = listen_abstract(&address).map_err(|e| fail("listen", e))?;
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(address.as_bytes())
        .map_err(|e| fail("address", e))?;
    let stream =
        std::os::unix::net::UnixStream::connect_addr(&addr).map_err(|e| fail("connect", e))?;
    Ok((listener, stream))
}

/// Make `cmd`'s child a proper helper of rvmspawn's: `passed` (an fd and the number it must
/// have, 3 or more) left open across exec, the termination signals that rvmspawn blocks (it
/// reads them from a signalfd) unblocked, and SIGTERM as its parent-death signal, so it goes
/// when rvmspawn goes, even by SIGKILL. For every child rvmspawn starts: the supervised helpers
/// and the short-lived `swtpm_setup`.
pub fn prepare_child(cmd: &mut Command, passed: Option<(RawFd, RawFd)>) {
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    // SAFETY: the closure runs in the forked child before exec and calls only
    // async-signal-safe functions (dup2, fcntl, prctl, getppid, sigprocmask, _exit).
    unsafe {
        cmd.pre_exec(move || {
            if let Some((fd, target)) = passed {
                if fd == target {
                    let flags = libc::fcntl(fd, libc::F_GETFD);
                    if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                        return Err(io::Error::last_os_error());
                    }
                } else if libc::dup2(fd, target) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            // rvmspawn blocks its termination signals (it reads them from a signalfd); the
            // helper must get them.
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) < 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died before the death signal was armed.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
}

/// A running helper process.
#[derive(Debug)]
pub struct Helper {
    /// What it is, for messages: "virtiofsd for /srv/root".
    name: String,
    child: Child,
    pidfd: OwnedFd,
    /// Set once reaped, so Drop does not signal a PID that may have been reused.
    reaped: bool,
    /// The end of what the helper wrote to its standard error, when that is captured
    /// ([`Helper::capture_stderr`]): shown only when it dies.
    stderr_tail: Option<StderrTail>,
}

/// A helper's captured standard error: its last bytes, and word from the reader at EOF.
#[derive(Debug)]
struct StderrTail {
    bytes: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    done: std::sync::mpsc::Receiver<()>,
}

/// How much of a captured standard error is kept.
const STDERR_TAIL: usize = 2048;

impl Helper {
    /// Start `cmd` as a helper named `name` (for messages). `pass` is moved into the child as
    /// descriptor `target` (which must be 3 or more, and is left open across exec); stdin is
    /// /dev/null, stdout and stderr are ours.
    pub fn spawn(
        name: String,
        mut cmd: Command,
        pass: Option<(OwnedFd, RawFd)>,
    ) -> Result<Helper, Error> {
        let passed = pass.as_ref().map(|(fd, target)| (fd.as_raw_fd(), *target));
        cmd.stdin(Stdio::null());
        prepare_child(&mut cmd, passed);
        let mut child = cmd.spawn().map_err(|e| {
            Error::Helper(
                format!("Failed to start {name}: {e}"),
                e.raw_os_error().unwrap_or(libc::EIO),
            )
        })?;
        // The child has its copy; ours is closed now.
        drop(pass);
        // SAFETY: pidfd_open on our own child's PID, which cannot be reused before we reap it.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, child.id(), 0) };
        if fd < 0 {
            let e = io::Error::last_os_error();
            let _ = child.kill();
            let _ = child.wait();
            return Err(Error::Helper(
                format!("Failed to watch {name}: pidfd_open: {e}"),
                e.raw_os_error().unwrap_or(libc::EIO),
            ));
        }
        // SAFETY: `fd` is a new pidfd that nothing else owns.
        let pidfd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
        Ok(Helper {
            name,
            child,
            pidfd,
            reaped: false,
            stderr_tail: None,
        })
    }

    /// Read the helper's standard error (spawned with `Stdio::piped()`) on a thread of its own
    /// and keep its last [`STDERR_TAIL`] bytes for [`Helper::died`], instead of showing a
    /// chatty helper's notices on the user's terminal.
    pub fn capture_stderr(&mut self) -> Result<(), Error> {
        use std::io::Read;
        let Some(mut stderr) = self.child.stderr.take() else {
            return Ok(());
        };
        let tail = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let keep = tail.clone();
        let (done_tx, done) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("helper-stderr".into())
            .spawn(move || {
                crate::seccomp::enter(crate::seccomp::Kind::HelperStderr);
                let mut buf = [0u8; 512];
                // Ends at EOF: when the helper (and every copy of its stderr) is gone.
                while let Ok(n) = stderr.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    if let Ok(mut t) = keep.lock() {
                        t.extend_from_slice(&buf[..n]);
                        let excess = t.len().saturating_sub(STDERR_TAIL);
                        t.drain(..excess);
                    }
                }
                let _ = done_tx.send(());
            })
            .map_err(|e| Error::Thread(e.raw_os_error().unwrap_or(libc::EAGAIN)))?;
        self.stderr_tail = Some(StderrTail { bytes: tail, done });
        Ok(())
    }

    /// Pass what the helper writes on its standard error (spawned with `Stdio::piped()`) on to
    /// ours, line by line through rvmspawn's status writer, so that its lines end right on a
    /// terminal in raw mode. The thread ends at EOF, when the helper is gone.
    pub fn relay_stderr(&mut self) -> Result<(), Error> {
        use std::io::BufRead;
        let Some(stderr) = self.child.stderr.take() else {
            return Ok(());
        };
        std::thread::Builder::new()
            .name("helper-stderr".into())
            .spawn(move || {
                crate::seccomp::enter(crate::seccomp::Kind::HelperStderr);
                for line in std::io::BufReader::new(stderr).split(b'\n') {
                    let Ok(line) = line else { break };
                    crate::log::line(&String::from_utf8_lossy(&line));
                }
            })
            .map_err(|e| Error::Thread(e.raw_os_error().unwrap_or(libc::EAGAIN)))?;
        Ok(())
    }

    /// The helper's standard output, when it was spawned with `Stdio::piped()`.
    pub fn take_stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.child.stdout.take()
    }

    /// Readable once the process has exited.
    pub fn pidfd(&self) -> RawFd {
        self.pidfd.as_raw_fd()
    }

    /// The error for a helper that ended while the VM ran: reaps it and says how it ended.
    pub fn died(&mut self) -> Error {
        let how = match self.child.wait() {
            Ok(status) => {
                self.reaped = true;
                match (status.code(), status.signal()) {
                    (Some(code), _) => format!("exited with status {code}"),
                    (_, Some(sig)) => format!("was killed by signal {sig}"),
                    _ => format!("ended ({status})"),
                }
            }
            Err(e) => format!("ended (wait failed: {e})"),
        };
        let said = self
            .stderr_tail
            .as_ref()
            .and_then(|t| {
                // The reader reaches EOF right after the exit, unless something the helper
                // started keeps its stderr open: then make do with what was read.
                let _ = t.done.recv_timeout(Duration::from_millis(500));
                t.bytes
                    .lock()
                    .ok()
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
            })
            .map(|t| t.trim().replace('\n', "; "))
            .filter(|t| !t.is_empty())
            .map(|t| format!(" (it said: {t})"))
            .unwrap_or_default();
        Error::Helper(
            format!("{} {how}{said}; stopping the VM", self.name),
            libc::EPROTO,
        )
    }

    /// Whether the process has exited within `timeout` (without reaping it).
    pub fn exited_within(&self, timeout: Duration) -> bool {
        let mut p = libc::pollfd {
            fd: self.pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: one valid pollfd for the duration of the call.
        unsafe { libc::poll(&mut p, 1, ms) > 0 }
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        if self.reaped {
            return;
        }
        // pidfd_send_signal: signals exactly this process, never a PID reused after it.
        // SIGCONT after SIGTERM: a stopped process acts on its SIGTERM only once continued.
        for signal in [libc::SIGTERM, libc::SIGCONT] {
            // SAFETY: a valid pidfd, a valid signal, no siginfo.
            unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    self.pidfd.as_raw_fd(),
                    signal,
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                )
            };
        }
        if !self.exited_within(STOP_GRACE) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn sh(script: &str) -> Command {
        let mut c = Command::new("sh");
        c.args(["-c", script]);
        c
    }

    #[test]
    fn a_helper_that_dies_is_reported_with_how() {
        let mut h = Helper::spawn("test helper".into(), sh("exit 3"), None).unwrap();
        assert!(h.exited_within(Duration::from_secs(10)));
        let e = h.died();
        assert_eq!(e.errno(), libc::EPROTO);
        assert_eq!(
            e.to_string(),
            "test helper exited with status 3; stopping the VM"
        );
        let mut k = Helper::spawn("killed".into(), sh("kill -9 $$"), None).unwrap();
        assert!(k.exited_within(Duration::from_secs(10)));
        assert!(k.died().to_string().contains("killed by signal 9"));
    }

    #[test]
    fn a_captured_stderr_is_shown_only_when_it_dies() {
        let mut c = sh("echo 'first notice' >&2; echo 'why it failed' >&2; exit 1");
        c.stderr(Stdio::piped());
        let mut h = Helper::spawn("chatty".into(), c, None).unwrap();
        h.capture_stderr().unwrap();
        assert!(h.exited_within(Duration::from_secs(10)));
        assert_eq!(
            h.died().to_string(),
            "chatty exited with status 1 (it said: first notice; why it failed); stopping the VM"
        );
        // Only the tail is kept.
        let mut c = sh("head -c 10000 /dev/zero | tr '\\0' x >&2; echo END >&2; exit 2");
        c.stderr(Stdio::piped());
        let mut h = Helper::spawn("flood".into(), c, None).unwrap();
        h.capture_stderr().unwrap();
        assert!(h.exited_within(Duration::from_secs(10)));
        let msg = h.died().to_string();
        assert!(msg.len() < STDERR_TAIL + 100, "{}", msg.len());
        assert!(msg.contains("END); stopping the VM"), "{msg}");
    }

    #[test]
    fn dropping_stops_it_with_sigterm_even_with_our_signals_blocked() {
        // Block SIGTERM here as the VMM does; the helper must still get it.
        // SAFETY: plain signal-mask calls on this thread.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGTERM);
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        }
        let h = Helper::spawn("sleeper".into(), sh("exec sleep 60"), None).unwrap();
        let pid = h.child.id() as i32;
        let start = Instant::now();
        drop(h);
        assert!(
            start.elapsed() < STOP_GRACE,
            "SIGTERM, not the SIGKILL fallback"
        );
        // Reaped: the PID is gone.
        // SAFETY: signal 0 only checks for existence.
        assert_eq!(unsafe { libc::kill(pid, 0) }, -1);
    }

    #[test]
    fn a_stopped_one_gets_its_sigterm_at_once() {
        let h = Helper::spawn("stopped".into(), sh("exec sleep 60"), None).unwrap();
        // SAFETY: our own child, not reaped yet.
        assert_eq!(unsafe { libc::kill(h.child.id() as i32, libc::SIGSTOP) }, 0);
        // Until the kernel says it is stopped (state T in /proc/PID/stat).
        let stat = format!("/proc/{}/stat", h.child.id());
        let stopped = || {
            std::fs::read_to_string(&stat)
                .ok()
                .and_then(|s| s.rsplit_once(") ").map(|(_, r)| r.starts_with('T')))
                .unwrap_or(false)
        };
        let t0 = Instant::now();
        while !stopped() {
            assert!(t0.elapsed() < Duration::from_secs(10), "never stopped");
            std::thread::yield_now();
        }
        let start = Instant::now();
        drop(h);
        let took = start.elapsed();
        assert!(
            took < STOP_GRACE,
            "SIGTERM + SIGCONT, not the SIGKILL: {took:?}"
        );
    }

    #[test]
    fn one_that_ignores_sigterm_is_killed() {
        let h = Helper::spawn(
            "stubborn".into(),
            sh("trap '' TERM; echo ready; while :; do sleep 1; done"),
            None,
        )
        .unwrap();
        // Wait (boundedly) until the shell ignores SIGTERM: its SigIgn mask in /proc says so.
        let status = format!("/proc/{}/status", h.child.id());
        let term_bit = 1u64 << (libc::SIGTERM - 1);
        let ignores_term = || {
            std::fs::read_to_string(&status).is_ok_and(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("SigIgn:"))
                    .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
                    .is_some_and(|m| m & term_bit != 0)
            })
        };
        let waiting = Instant::now();
        while !ignores_term() {
            assert!(waiting.elapsed() < Duration::from_secs(10), "no trap");
            std::thread::sleep(Duration::from_millis(5));
        }
        let start = Instant::now();
        drop(h);
        let took = start.elapsed();
        assert!(took >= STOP_GRACE && took < STOP_GRACE * 3, "{took:?}");
    }

    #[test]
    fn a_passed_descriptor_arrives_at_its_number() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut h = Helper::spawn(
            "fd user".into(),
            sh("echo hello >&5"),
            Some((OwnedFd::from(b), 5)),
        )
        .unwrap();
        let mut got = String::new();
        use std::io::Read;
        (&a).read_to_string(&mut got).unwrap();
        assert_eq!(got, "hello\n");
        assert!(h.exited_within(Duration::from_secs(10)));
        assert!(h.died().to_string().contains("status 0"));
    }
}
