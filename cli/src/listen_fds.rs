//! Fds handed over through systemd's socket-passing protocol (sd_listen_fds(3)): fds 3
//! and up, counted by `$LISTEN_FDS`, meant for the process `$LISTEN_PID`, named by
//! `$LISTEN_FDNAMES`. vmspawn takes `/dev/kvm` and `/dev/vhost-vsock` this way, so an
//! unprivileged caller can be given just those devices.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use crate::error::Failure;
use crate::parse::safe_atou32;

const SD_LISTEN_FDS_START: RawFd = 3;
const VARIABLES: [&str; 3] = ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"];

/// The fds we were given, by purpose.
#[derive(Debug, Default)]
pub struct ListenFds {
    pub kvm: Option<OwnedFd>,
    /// Kept open for the run, because vsock support will use it; until then nobody
    /// reads it, and that is no reason to complain to the caller who passed it.
    pub vhost_vsock: Option<OwnedFd>,
    /// Fd numbers and names we do not know, closed only once the command line has been
    /// accepted, which is when vmspawn looks at passed fds.
    unrecognized: Vec<(RawFd, String, OwnedFd)>,
}

impl ListenFds {
    /// Closes the fds nobody asked for, saying so in vmspawn's words.
    pub fn close_unrecognized(&mut self) {
        for (fd, name, owned) in self.unrecognized.drain(..) {
            eprintln!("Couldn't recognize passed fd {fd} ({name}), closing fd and ignoring...");
            drop(owned);
        }
    }
}

/// Takes the passed fds, marks them close-on-exec and removes the three variables, so
/// that nothing we start believes the fds are meant for it (sd_listen_fds(1)).
///
/// # Safety
///
/// Call it once, before the process has other threads (it changes the environment) and
/// before it opens any file: the fds the variables announce become owned here, so they
/// must not be owned elsewhere, nor be numbers this process reused for its own files.
pub unsafe fn take() -> Result<ListenFds, Failure> {
    let values = VARIABLES.map(std::env::var_os);
    for name in VARIABLES {
        // SAFETY: by this function's contract no other thread exists to read the
        // environment concurrently.
        unsafe { std::env::remove_var(name) };
    }
    let [pid, count, names] = values;
    let Some(names) = passed_fd_names(
        pid.as_deref(),
        count.as_deref(),
        names.as_deref(),
        std::process::id(),
    )?
    else {
        return Ok(ListenFds::default());
    };

    let fds: Vec<RawFd> = (SD_LISTEN_FDS_START..).take(names.len()).collect();
    // All of them first: this also proves each is open before it gets an owner.
    for &fd in &fds {
        set_cloexec(fd)?;
    }
    let mut passed = ListenFds::default();
    for (fd, name) in fds.into_iter().zip(names) {
        // SAFETY: `fd` is open (fcntl() just succeeded on it) and was handed to this
        // process; by this function's contract nothing else owns it, and each number
        // appears once, so the OwnedFd is its only owner.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        // A second fd under a known name is reported rather than silently replacing
        // (and closing) the first.
        match name.as_str() {
            "kvm" if passed.kvm.is_none() => passed.kvm = Some(owned),
            "vhost-vsock" if passed.vhost_vsock.is_none() => passed.vhost_vsock = Some(owned),
            _ => passed.unrecognized.push((fd, name, owned)),
        }
    }
    Ok(passed)
}

fn set_cloexec(fd: RawFd) -> Result<(), Failure> {
    // SAFETY: F_GETFD and F_SETFD only read and change the fd's flags; on an fd that is
    // not open they fail with EBADF and touch nothing.
    let done = unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFD);
        flags >= 0 && libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) >= 0
    };
    if done {
        Ok(())
    } else {
        Err(Failure::io(
            format!("Failed to get passed file descriptors: fd {fd}"),
            &io::Error::last_os_error(),
        ))
    }
}

/// The names of the fds passed to process `our_pid`, one per fd, or `None` when nothing
/// was passed to it. Without `$LISTEN_FDNAMES` every fd is called "unknown". Malformed
/// variables are errors, as in sd_listen_fds_with_names().
fn passed_fd_names(
    pid: Option<&OsStr>,
    count: Option<&OsStr>,
    names: Option<&OsStr>,
    our_pid: u32,
) -> Result<Option<Vec<String>>, Failure> {
    let bad = |what: String| {
        Failure::new(
            libc::EINVAL,
            format!("Failed to get passed file descriptors: {what}"),
        )
    };
    let Some(pid) = pid else {
        return Ok(None);
    };
    let pid_text = pid.to_string_lossy();
    match pid.to_str().map(safe_atou32) {
        Some(Ok(pid)) if pid > 0 && i32::try_from(pid).is_ok() => {
            if pid != our_pid {
                return Ok(None);
            }
        }
        _ => return Err(bad(format!("bad $LISTEN_PID '{pid_text}'"))),
    }
    let Some(count) = count else {
        return Ok(None);
    };
    let count_text = count.to_string_lossy();
    let max = i32::MAX - SD_LISTEN_FDS_START;
    let count = match count.to_str().map(safe_atou32) {
        Some(Ok(n)) if n > 0 && i32::try_from(n).is_ok_and(|n| n <= max) => n as usize,
        _ => return Err(bad(format!("bad $LISTEN_FDS '{count_text}'"))),
    };
    match names {
        None => Ok(Some(vec!["unknown".to_owned(); count])),
        Some(names) => {
            let names: Vec<String> = names
                .to_string_lossy()
                .split(':')
                .map(str::to_owned)
                .collect();
            if names.len() != count {
                return Err(bad(format!(
                    "$LISTEN_FDNAMES has {} names for {count} fds",
                    names.len()
                )));
            }
            Ok(Some(names))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(
        pid: Option<&str>,
        count: Option<&str>,
        names: Option<&str>,
    ) -> Result<Option<Vec<String>>, Failure> {
        passed_fd_names(
            pid.map(OsStr::new),
            count.map(OsStr::new),
            names.map(OsStr::new),
            42,
        )
    }

    #[test]
    fn nothing_passed() {
        assert_eq!(names(None, None, None), Ok(None));
        assert_eq!(names(None, Some("2"), Some("kvm:x")), Ok(None));
        assert_eq!(names(Some("42"), None, None), Ok(None));
    }

    #[test]
    fn meant_for_another_process() {
        assert_eq!(names(Some("43"), Some("1"), Some("kvm")), Ok(None));
        // Even a bad count is not our business then.
        assert_eq!(names(Some("43"), Some("x"), None), Ok(None));
    }

    #[test]
    fn named_fds() {
        let got = names(Some("42"), Some("3"), Some("kvm:vhost-vsock:other"));
        assert_eq!(
            got,
            Ok(Some(vec![
                "kvm".to_owned(),
                "vhost-vsock".to_owned(),
                "other".to_owned()
            ]))
        );
        assert_eq!(
            names(Some("42"), Some("1"), Some("")),
            Ok(Some(vec![String::new()]))
        );
    }

    #[test]
    fn unnamed_fds() {
        let got = names(Some("42"), Some("2"), None);
        assert_eq!(got, Ok(Some(vec!["unknown".to_owned(); 2])));
    }

    #[test]
    fn malformed_variables() {
        for (pid, count, fdnames) in [
            ("x", "1", "kvm"),
            ("0", "1", "kvm"),
            ("-42", "1", "kvm"),
            ("4294967295", "1", "kvm"),
            ("42", "0", ""),
            ("42", "-1", "kvm"),
            ("42", "one", "kvm"),
            ("42", "2147483645", "kvm"),
            ("42", "2", "kvm"),
            ("42", "1", "kvm:vhost-vsock"),
        ] {
            let f = names(Some(pid), Some(count), Some(fdnames)).unwrap_err();
            assert_eq!(f.errno, libc::EINVAL, "{pid} {count} {fdnames}");
            assert!(
                f.message
                    .starts_with("Failed to get passed file descriptors: ")
            );
        }
    }
}
