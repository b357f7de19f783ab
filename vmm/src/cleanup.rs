//! What must be undone however rvmspawn ends, also when it ends abruptly: on a panic (the
//! release build aborts, `panic = "abort"`, so no destructor runs) and on a second termination
//! signal while the run is stopping (which ends the process at once).
//!
//! Two things: the user's terminal, put back the way it was (see
//! [`crate::console::Terminal`], which records it here), and the steps registered with
//! [`register`] (the run directory's removal). [`run_all`] does both; it is safe to call from
//! any thread, also while another thread holds these locks mid-way (it then skips that part
//! rather than wait).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, TryLockError};

/// A clean-up step.
type Step = Box<dyn Fn() + Send + Sync>;

/// The terminal's settings before it went raw, while it is raw.
static SAVED_TERMINAL: Mutex<Option<libc::termios>> = Mutex::new(None);
/// The registered steps, with their ids.
static STEPS: Mutex<Vec<(u64, Step)>> = Mutex::new(Vec::new());
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Take `m` unless another thread holds it: a clean-up never waits for a thread that may be
/// the one that failed.
fn try_lock<T>(m: &Mutex<T>) -> Option<MutexGuard<'_, T>> {
    match m.try_lock() {
        Ok(g) => Some(g),
        Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
        Err(TryLockError::WouldBlock) => None,
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Record the settings to restore the terminal (standard input) to, or forget them (`None`,
/// once it has been restored).
pub fn set_saved_terminal(saved: Option<libc::termios>) {
    *lock(&SAVED_TERMINAL) = saved;
    crate::log::set_raw(saved.is_some());
}

/// Put the terminal back as it was, if it is raw.
pub fn restore_terminal() {
    let Some(mut saved) = try_lock(&SAVED_TERMINAL) else {
        return;
    };
    if let Some(t) = saved.take() {
        // SAFETY: `t` is the termios read from standard input before it was made raw.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &t) };
        crate::log::set_raw(false);
    }
}

/// A registered clean-up step; dropping it unregisters the step (the normal way out has
/// done the work itself).
#[derive(Debug)]
pub struct Registration(u64);

impl Drop for Registration {
    fn drop(&mut self) {
        lock(&STEPS).retain(|(id, _)| *id != self.0);
    }
}

/// Run `step` if rvmspawn ends abruptly before the returned registration is dropped.
pub fn register(step: impl Fn() + Send + Sync + 'static) -> Registration {
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    lock(&STEPS).push((id, Box::new(step)));
    Registration(id)
}

/// Restore the terminal and run every registered step (each once).
pub fn run_all() {
    restore_terminal();
    let steps = try_lock(&STEPS).map(|mut s| std::mem::take(&mut *s));
    for (_, step) in steps.into_iter().flatten() {
        step();
    }
}

/// Clean up and end the process now with `code`, without running destructors or waiting for
/// any thread.
pub fn exit_now(code: i32) -> ! {
    run_all();
    // SAFETY: _exit ends the process; it has no preconditions.
    unsafe { libc::_exit(code) }
}

/// Make a panic clean up before the message is printed (so it is not printed on a raw
/// terminal) and before the process aborts. Installed once; the earlier hook (the standard
/// one, which prints the message) still runs after.
pub fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            run_all();
            previous(info);
        }));
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::process::{Command, Stdio};

    /// Set in the child process that `a_panic_restores_the_terminal_and_runs_the_steps`
    /// starts: the child makes its terminal raw, registers steps and panics.
    const CHILD: &str = "RVMSPAWN_CLEANUP_TEST_CHILD";

    fn termios(fd: i32) -> libc::termios {
        // SAFETY: termios is plain data, written by tcgetattr.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: `t` is a valid termios to write into.
        assert_eq!(unsafe { libc::tcgetattr(fd, &mut t) }, 0);
        t
    }

    /// A new pseudo-terminal: (controller, terminal).
    fn pty() -> (OwnedFd, OwnedFd) {
        // SAFETY: plain calls on a descriptor we own; ptsname's buffer is copied at once.
        unsafe {
            let m = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
            assert!(m >= 0);
            let m = OwnedFd::from_raw_fd(m);
            assert_eq!(libc::grantpt(m.as_raw_fd()), 0);
            assert_eq!(libc::unlockpt(m.as_raw_fd()), 0);
            let name = std::ffi::CStr::from_ptr(libc::ptsname(m.as_raw_fd())).to_owned();
            let s = libc::open(
                name.as_ptr(),
                libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
            );
            assert!(s >= 0);
            (m, OwnedFd::from_raw_fd(s))
        }
    }

    #[test]
    fn a_panic_restores_the_terminal_and_runs_the_steps() {
        if let Some(marker) = std::env::var_os(CHILD) {
            install_panic_hook();
            let terminal = crate::console::Terminal::raw_if_tty();
            assert_eq!(termios(libc::STDIN_FILENO).c_lflag & libc::ICANON, 0);
            let kept = register(move || {
                let _ = std::fs::write(&marker, b"cleaned");
            });
            // As in the release build, which aborts: no destructor restores or removes anything.
            std::mem::forget(terminal);
            std::mem::forget(kept);
            let gone =
                std::path::PathBuf::from(std::env::var_os(CHILD).unwrap()).with_extension("x");
            drop(register(move || {
                let _ = std::fs::write(&gone, b"unregistered step ran");
            }));
            panic!("a VMM bug");
        }
        // In a child process of its own: the hook runs every registered step, and other tests
        // in this process have theirs.
        let (_controller, terminal) = pty();
        let before = termios(terminal.as_raw_fd());
        assert_ne!(before.c_lflag & libc::ICANON, 0);
        let dir = std::env::temp_dir().join(format!("rvmspawn-cleanup-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let marker = dir.join("marker");
        let out = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "cleanup::tests::a_panic_restores_the_terminal_and_runs_the_steps",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD, &marker)
            .stdin(Stdio::from(terminal.try_clone().unwrap()))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "the child panicked: {stderr}");
        assert!(stderr.contains("a VMM bug"), "{stderr}");
        let after = termios(terminal.as_raw_fd());
        assert_eq!(after.c_lflag, before.c_lflag, "terminal restored");
        assert_eq!(after.c_iflag, before.c_iflag);
        assert_eq!(after.c_oflag, before.c_oflag);
        assert_eq!(std::fs::read(&marker).unwrap(), b"cleaned");
        assert!(!marker.with_extension("x").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
