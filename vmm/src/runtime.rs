//! The run's own directory, for the sockets that host programs use to reach the guest (the
//! userspace vsock device's `vsock` and `vsock_PORT`). Its path is predictable from the machine
//! name, so scripts can find it: `$XDG_RUNTIME_DIR/rvmspawn/NAME`, or `/run/rvmspawn/NAME` for
//! root without `$XDG_RUNTIME_DIR`, else `/tmp/rvmspawn-UID/NAME`.
//!
//! While a run holds the directory it keeps an exclusive `flock` on it. A second run with the
//! same name (CI jobs booting the same kernel side by side) gets `NAME-PID` instead of
//! stealing the first one's sockets; a directory left behind by a run that was killed (no
//! lock) is emptied and reused. The directory is removed when the run ends.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use crate::Error;

/// The run's directory, removed on drop.
#[derive(Debug)]
pub struct RuntimeDir {
    path: PathBuf,
    _lock: File,
    /// Removes the directory if rvmspawn ends without dropping this (a panic, a second signal).
    _cleanup: crate::cleanup::Registration,
}

/// Where runs keep their directories.
fn base() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| Path::new(d).is_absolute()) {
        return PathBuf::from(d).join("rvmspawn");
    }
    // SAFETY: geteuid cannot fail.
    let uid = unsafe { libc::geteuid() };
    if uid == 0 {
        PathBuf::from("/run/rvmspawn")
    } else {
        PathBuf::from(format!("/tmp/rvmspawn-{uid}"))
    }
}

fn err(what: String, e: &io::Error) -> Error {
    Error::Runtime(
        format!("{what}: {e}"),
        e.raw_os_error().unwrap_or(libc::EIO),
    )
}

impl RuntimeDir {
    /// Create (or take over a stale) directory for machine `name` under the default base.
    pub fn create(name: &str) -> Result<RuntimeDir, Error> {
        Self::create_in(&base(), name)
    }

    /// Create the directory for `name` under `base`: `name`, or `name-PID` while another
    /// run holds `name`.
    pub fn create_in(base: &Path, name: &str) -> Result<RuntimeDir, Error> {
        // The machine name is a valid hostname (the front end checks), so it is one plain
        // path component; refuse anything else rather than trust that.
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(Error::Runtime(
                format!("Machine name '{name}' cannot name a directory"),
                libc::EINVAL,
            ));
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(base)
            .map_err(|e| err(format!("Failed to create {}", base.display()), &e))?;
        match Self::take(base.join(name))? {
            Some(dir) => Ok(dir),
            None => {
                Self::take(base.join(format!("{name}-{}", std::process::id())))?.ok_or_else(|| {
                    Error::Runtime(
                        format!("{}/{name}-PID is in use by another process", base.display()),
                        libc::EBUSY,
                    )
                })
            }
        }
    }

    /// Create and lock `path`, emptying what a dead run left there; `None` if a live run
    /// holds it.
    fn take(path: PathBuf) -> Result<Option<RuntimeDir>, Error> {
        match std::fs::DirBuilder::new().mode(0o700).create(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(err(format!("Failed to create {}", path.display()), &e)),
        }
        let lock =
            File::open(&path).map_err(|e| err(format!("Failed to open {}", path.display()), &e))?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Ok(None);
            }
            return Err(err(format!("Failed to lock {}", path.display()), &e));
        }
        let entries = std::fs::read_dir(&path)
            .map_err(|e| err(format!("Failed to read {}", path.display()), &e))?;
        for entry in entries.flatten() {
            let p = entry.path();
            let removed = if entry.file_type().is_ok_and(|t| t.is_dir()) {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
            removed.map_err(|e| err(format!("Failed to remove stale {}", p.display()), &e))?;
        }
        let gone = path.clone();
        let _cleanup = crate::cleanup::register(move || {
            let _ = std::fs::remove_dir_all(&gone);
        });
        Ok(Some(RuntimeDir {
            path,
            _lock: lock,
            _cleanup,
        }))
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for RuntimeDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> PathBuf {
        let b = std::env::temp_dir().join(format!(
            "rvmspawn-rt-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&b);
        b
    }

    #[test]
    fn a_second_run_of_a_name_gets_its_own_and_both_go_at_the_end() {
        let b = base();
        let d = RuntimeDir::create_in(&b, "vm").unwrap();
        assert_eq!(d.path(), b.join("vm"));
        std::fs::write(d.path().join("vsock"), b"").unwrap();
        let again = RuntimeDir::create_in(&b, "vm").unwrap();
        assert_eq!(again.path(), b.join(format!("vm-{}", std::process::id())));
        // The first run's files are untouched.
        assert!(d.path().join("vsock").exists());
        // A third one in the same process has nowhere left to go.
        assert_eq!(
            RuntimeDir::create_in(&b, "vm").unwrap_err().errno(),
            libc::EBUSY
        );
        drop(d);
        drop(again);
        assert_eq!(std::fs::read_dir(&b).unwrap().count(), 0);
        std::fs::remove_dir_all(&b).unwrap();
    }

    #[test]
    fn a_stale_directory_is_emptied_and_reused() {
        let b = base();
        std::fs::create_dir_all(b.join("vm/sub")).unwrap();
        std::fs::write(b.join("vm/vsock_5000"), b"old").unwrap();
        let d = RuntimeDir::create_in(&b, "vm").unwrap();
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
        drop(d);
        std::fs::remove_dir_all(&b).unwrap();
    }

    #[test]
    fn names_that_are_not_one_component_are_refused() {
        let b = base();
        for name in ["", ".", "..", "a/b"] {
            assert_eq!(
                RuntimeDir::create_in(&b, name).unwrap_err().errno(),
                libc::EINVAL
            );
        }
    }
}
