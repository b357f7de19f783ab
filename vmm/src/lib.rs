//! The virtual machine monitor: the only crate that talks to KVM.

mod config;

pub use config::{KvmSource, VmConfig};

/// Errors from building or running a VM.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Placeholder until the machine is built.
    #[error("not implemented")]
    NotImplemented,
}

impl Error {
    /// The errno that best describes this error, used as the process exit code.
    pub fn errno(&self) -> i32 {
        match self {
            Error::NotImplemented => libc::EOPNOTSUPP,
        }
    }
}

/// How a VM run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmExit {
    /// The guest powered off (ACPI S5).
    PowerOff,
    /// The guest asked for a reset and the run ends (as `-no-reboot` would).
    Reset,
    /// The user ended the run from the console (Ctrl-] three times).
    ConsoleKill,
    /// A termination signal (SIGTERM/SIGINT) ended the run.
    Signal(i32),
}

/// Build the VM described by `config` and run it until it ends.
pub fn run(_config: VmConfig) -> Result<VmExit, Error> {
    Err(Error::NotImplemented)
}
