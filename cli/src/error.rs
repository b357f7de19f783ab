//! The one error type of the front end: a message for the user and the errno that
//! becomes the exit code, as systemd tools report failures.

use std::fmt;
use std::io;

use crate::parse::Invalid;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub errno: i32,
    pub message: String,
}

impl Failure {
    pub fn new(errno: i32, message: impl Into<String>) -> Failure {
        Failure {
            errno,
            message: message.into(),
        }
    }

    /// A bad option value. `option` is the long name without dashes.
    pub fn value(option: &str, value: impl fmt::Display, why: Invalid) -> Failure {
        Failure::new(
            why.errno,
            format!(
                "Failed to parse --{option}= value '{value}': {}",
                why.reason
            ),
        )
    }

    /// A failed system call, described like systemd's `%m`.
    pub fn io(context: impl fmt::Display, err: &io::Error) -> Failure {
        let errno = err.raw_os_error().unwrap_or(libc::EIO);
        Failure::new(errno, format!("{context}: {}", strerror(errno)))
    }
}

/// The firmware crate's message, with the failed system call's text appended as `%m` would.
impl From<firmware::Error> for Failure {
    fn from(err: firmware::Error) -> Failure {
        let mut message = err.to_string();
        if let Some(cause) = std::error::Error::source(&err) {
            message.push_str(": ");
            match cause
                .downcast_ref::<io::Error>()
                .and_then(io::Error::raw_os_error)
            {
                Some(errno) => message.push_str(&strerror(errno)),
                None => message.push_str(&cause.to_string()),
            }
        }
        Failure::new(err.errno(), message)
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// The C library's text for `errno`, without the " (os error N)" std appends.
pub fn strerror(errno: i32) -> String {
    let text = io::Error::from_raw_os_error(errno).to_string();
    match text.strip_suffix(&format!(" (os error {errno})")) {
        Some(bare) => bare.to_owned(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages() {
        let f = Failure::value("qemu-mem", "banana", Invalid::syntax("not a size"));
        assert_eq!(f.errno, libc::EINVAL);
        assert_eq!(
            f.to_string(),
            "Failed to parse --qemu-mem= value 'banana': not a size"
        );
    }

    #[test]
    fn io_errors_read_like_percent_m() {
        let err = io::Error::from_raw_os_error(libc::ENOENT);
        let f = Failure::io("Failed to open kernel '/x'", &err);
        assert_eq!(f.errno, libc::ENOENT);
        assert_eq!(
            f.to_string(),
            "Failed to open kernel '/x': No such file or directory"
        );
        let f = Failure::io("x", &io::Error::other("no errno"));
        assert_eq!(f.errno, libc::EIO);
    }

    #[test]
    fn firmware_errors_keep_their_errno_and_cause() {
        let err = firmware::Error::Open {
            what: "firmware code",
            path: "/usr/share/OVMF/OVMF_CODE_4M.fd".into(),
            source: io::Error::from_raw_os_error(libc::ENOENT),
        };
        let f = Failure::from(err);
        assert_eq!(f.errno, libc::ENOENT);
        assert_eq!(
            f.message,
            "Failed to open firmware code '/usr/share/OVMF/OVMF_CODE_4M.fd': No such file or \
             directory"
        );
        let f = Failure::from(firmware::Error::SecureBootUnsupported {
            why: "no SMM here".into(),
        });
        assert_eq!(f.errno, libc::EOPNOTSUPP);
        assert!(
            f.message.starts_with(
                "Secure Boot requested, but selected OVMF firmware doesn't support it."
            ) && f.message.ends_with("but no SMM here.)"),
            "{}",
            f.message
        );
    }
}
