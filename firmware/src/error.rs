//! The crate's one error type. Each variant names the file it is about, and [`Error::errno`]
//! gives the errno that becomes rvmspawn's exit status, as in systemd-vmspawn.

use std::io;
use std::path::{Path, PathBuf};

use crate::Skipped;

/// Why no firmware could be chosen, loaded or prepared.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A descriptor file could not be read.
    #[error("Failed to read firmware descriptor '{}'", .path.display())]
    Read {
        /// The descriptor.
        path: PathBuf,
        /// What reading it returned.
        #[source]
        source: io::Error,
    },
    /// A descriptor is not JSON, or lacks a field vmspawn requires.
    #[error("Failed to parse firmware descriptor '{}': {reason}", .path.display())]
    Malformed {
        /// The descriptor.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A descriptor given with `--firmware=PATH` describes firmware rvmspawn cannot boot.
    #[error("Firmware descriptor '{}' cannot be used: {reason}", .path.display())]
    Unsuitable {
        /// The descriptor.
        path: PathBuf,
        /// Why not, e.g. another architecture or SMM.
        reason: String,
    },
    /// Secure Boot was asked for; every Secure Boot build of OVMF needs SMM, which the host
    /// lacks.
    #[error(
        "Secure Boot requested, but selected OVMF firmware doesn't support it. (Every Secure \
         Boot firmware requires SMM, but {why}.)"
    )]
    SecureBootUnsupported {
        /// Why there is no SMM.
        why: String,
    },
    /// No descriptor in the search path is usable with the requested features.
    #[error("{}", not_found(.dirs, .skipped))]
    NotFound {
        /// The directories searched, in priority order.
        dirs: Vec<PathBuf>,
        /// Every descriptor found, with the reason it was passed over.
        skipped: Vec<Skipped>,
    },
    /// A firmware, template or variable-store file could not be opened.
    #[error("Failed to open {what} '{}'", .path.display())]
    Open {
        /// What the file is for, e.g. "firmware code".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What opening it returned.
        #[source]
        source: io::Error,
    },
    /// A firmware, template or variable-store file exists but cannot be used.
    #[error("Invalid {what} '{}': {reason}", .path.display())]
    Invalid {
        /// What the file is for.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A kept variable store does not match its template (another firmware's store).
    #[error(
        "EFI variable store '{}' has {state_len} bytes, but its template '{}' has {template_len}",
        .state.display(),
        .template.display()
    )]
    SizeMismatch {
        /// The variable store.
        state: PathBuf,
        /// Its size.
        state_len: u64,
        /// The template it should have been made from.
        template: PathBuf,
        /// The template's size.
        template_len: u64,
    },
    /// The variable store could not be created or filled from its template.
    #[error("Failed to create EFI variable store '{}'", .path.display())]
    Create {
        /// The variable store (`-` for a private one).
        path: PathBuf,
        /// What failed.
        #[source]
        source: io::Error,
    },
    /// Another process (another VM) holds the variable store.
    #[error("EFI variable store '{}' is in use by another VM", .path.display())]
    Busy {
        /// The variable store.
        path: PathBuf,
    },
}

impl Error {
    /// The errno for the process exit status: ENOENT when nothing usable was found (as
    /// vmspawn's "Failed to find OVMF config"), EOPNOTSUPP for what rvmspawn cannot do yet
    /// (SMM, Secure Boot, other firmware kinds), EINVAL for malformed or mismatched files, and
    /// the system call's own errno for I/O failures.
    pub fn errno(&self) -> i32 {
        match self {
            Error::Read { source, .. }
            | Error::Open { source, .. }
            | Error::Create { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            Error::Malformed { .. } | Error::Invalid { .. } | Error::SizeMismatch { .. } => {
                libc::EINVAL
            }
            Error::Unsuitable { .. } | Error::SecureBootUnsupported { .. } => libc::EOPNOTSUPP,
            Error::NotFound { .. } => libc::ENOENT,
            Error::Busy { .. } => libc::EBUSY,
        }
    }
}

/// One line naming the directories and why each descriptor found there was passed over.
fn not_found(dirs: &[PathBuf], skipped: &[Skipped]) -> String {
    let dirs = dirs
        .iter()
        .map(|d| format!("'{}'", d.display()))
        .collect::<Vec<_>>()
        .join(", ");
    let reasons = if skipped.is_empty() {
        "there are none".to_owned()
    } else {
        skipped
            .iter()
            .map(|s| format!("{}: {}", s.path.display(), s.reason))
            .collect::<Vec<_>>()
            .join("; ")
    };
    format!("Failed to find a usable UEFI firmware descriptor in {dirs}: {reasons}")
}

/// An I/O error's text without std's " (os error N)", as systemd's `%m` prints it.
pub(crate) fn io_text(err: &io::Error) -> String {
    let text = err.to_string();
    match err.raw_os_error() {
        Some(errno) => text
            .strip_suffix(&format!(" (os error {errno})"))
            .map(str::to_owned)
            .unwrap_or(text),
        None => text,
    }
}

/// Shorthand for an [`Error::Invalid`].
pub(crate) fn invalid(what: &'static str, path: &Path, reason: impl Into<String>) -> Error {
    Error::Invalid {
        what,
        path: path.to_owned(),
        reason: reason.into(),
    }
}
