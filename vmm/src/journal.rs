//! `--forward-journal=FILE|DIR`: the guest's journal on the host, as systemd-vmspawn does it.
//! The guest's journald gets the credential `journal.forward_to_socket=vsock:2:PORT` (systemd
//! 256 and later forward every entry there in the journal export format), and the host side is
//! `systemd-socket-activate --listen ADDRESS systemd-journal-remote --output=PATH
//! --split-mode=none|host` (`none` when PATH ends in `.journal`, else a directory split by
//! host), a supervised helper like virtiofsd: it ends with the run, and its death ends the run.
//!
//! PORT is the guest's CID, as in vmspawn (unique per VM on the host). With vhost-vsock the
//! listener is `vsock:2:PORT`; with rvmspawn's own vsock device the guest's connection to the
//! host's PORT arrives on the Unix socket `<device socket>_PORT`, so that is where
//! journal-remote listens.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::Error;
use crate::helper::Helper;

const SOCKET_ACTIVATE: [&str; 2] = [
    "/usr/bin/systemd-socket-activate",
    "/bin/systemd-socket-activate",
];
const JOURNAL_REMOTE: [&str; 2] = [
    "/usr/lib/systemd/systemd-journal-remote",
    "/lib/systemd/systemd-journal-remote",
];

/// Where the forwarded journal's listener is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// The host's AF_VSOCK port (vhost-vsock).
    Vsock(u32),
    /// A Unix socket path (the userspace vsock device's host side).
    Unix(PathBuf),
}

impl Listen {
    fn address(&self) -> String {
        match self {
            Listen::Vsock(port) => format!("vsock:2:{port}"),
            Listen::Unix(path) => path.display().to_string(),
        }
    }
}

/// The credential vmspawn passes: where the guest's journald forwards to.
pub fn credential(port: u32) -> String {
    use base64::Engine;
    format!(
        "io.systemd.credential.binary:journal.forward_to_socket={}",
        base64::engine::general_purpose::STANDARD.encode(format!("vsock:2:{port}"))
    )
}

/// journal-remote's split mode for `output`: one file when it names a `.journal` file, else
/// one file per host in the directory.
pub fn split_mode(output: &Path) -> &'static str {
    if output.extension().is_some_and(|e| e == "journal") {
        "none"
    } else {
        "host"
    }
}

/// Start journal-remote, socket-activated on `listen`, writing to `output`.
pub fn start(listen: &Listen, output: &Path) -> Result<Helper, Error> {
    let missing = |what: &str, package: &str| {
        Error::Helper(
            format!("--forward-journal= needs {what} (Debian package {package})"),
            libc::ENOENT,
        )
    };
    let activate = crate::helper::find_binary("systemd-socket-activate", &SOCKET_ACTIVATE)
        .ok_or_else(|| missing("systemd-socket-activate", "systemd"))?;
    let remote = JOURNAL_REMOTE
        .iter()
        .map(Path::new)
        .find(|p| p.exists())
        .ok_or_else(|| missing("systemd-journal-remote", "systemd-journal-remote"))?;
    let mut cmd = Command::new(activate);
    cmd.arg("--listen")
        .arg(listen.address())
        .arg(remote)
        .arg(format!("--output={}", output.display()))
        .arg(format!("--split-mode={}", split_mode(output)))
        // As vmspawn: no configuration file of the host's changes what is kept.
        .env("SYSTEMD_JOURNAL_REMOTE_CONFIG_FILE", "/dev/null");
    cmd.stdout(std::process::Stdio::null());
    cmd.stderr(std::process::Stdio::piped());
    let mut helper = Helper::spawn(
        format!("systemd-journal-remote for {}", output.display()),
        cmd,
        None,
    )?;
    helper.capture_stderr()?;
    Ok(helper)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_and_split_mode_are_vmspawns() {
        // base64("vsock:2:1234")
        assert_eq!(
            credential(1234),
            "io.systemd.credential.binary:journal.forward_to_socket=dnNvY2s6MjoxMjM0"
        );
        assert_eq!(split_mode(Path::new("/var/log/vm.journal")), "none");
        assert_eq!(split_mode(Path::new("/var/log/vm")), "host");
        assert_eq!(Listen::Vsock(7).address(), "vsock:2:7");
        assert_eq!(
            Listen::Unix("/run/x/vsock_7".into()).address(),
            "/run/x/vsock_7"
        );
    }
}
