//! passt, the helper behind `--network-user-mode`: user-mode networking (NAT through the host's
//! own sockets, DHCP, DNS forwarding) with no privileges and no host configuration.
//!
//! rvmspawn makes a connected `AF_UNIX` stream socket pair and hands passt one end as
//! descriptor 3 (`--fd 3`, which implies `--one-off`): no socket file exists, no other process
//! can connect, and passt exits as soon as rvmspawn's end closes, however rvmspawn ends. Frames
//! cross the socket in QEMU's stream framing (`devices::virtio::net::stream`). passt runs in
//! the foreground (`-f`) so that its pidfd tells when it dies, as virtiofsd's does.
//!
//! The guest gets slirp's well-known addresses, which is what vmspawn's users have from QEMU's
//! `-nic user`: 10.0.2.15/24 by DHCP, gateway 10.0.2.2 (which passt maps to the host's
//! loopback), DNS 10.0.2.3 (forwarded to the host's resolver), and QEMU's default MAC.

use std::ffi::OsString;
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::Command;

use crate::Error;
use crate::helper::Helper;

/// Where passt is looked for after `$PATH`.
const FALLBACK_PATHS: [&str; 1] = ["/usr/bin/passt"];
/// The descriptor number passt gets its end of the socket pair on.
const SOCKET_FD: i32 = 3;

/// The guest's address, as slirp gives it.
pub const GUEST_ADDRESS: &str = "10.0.2.15";
/// The guest network's prefix length.
pub const PREFIX_LEN: u8 = 24;
/// The gateway, which is also the host (its loopback) as seen from the guest.
pub const GATEWAY: &str = "10.0.2.2";
/// The DNS server the guest is told about; queries to it go to the host's resolver.
pub const DNS: &str = "10.0.2.3";
/// The guest's MAC: QEMU's default, which vmspawn's user-mode guests have.
pub const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

/// Find passt: `$PATH`, then `/usr/bin`. Missing: an error naming the package, exit 2.
pub fn find_passt() -> Result<std::path::PathBuf, Error> {
    crate::helper::find_binary("passt", &FALLBACK_PATHS).ok_or_else(|| {
        Error::Helper(
            format!(
                "Failed to find passt binary (looked in $PATH, {}); --network-user-mode needs \
                 it (Debian and Fedora package: passt)",
                FALLBACK_PATHS.join(", ")
            ),
            libc::ENOENT,
        )
    })
}

/// passt's arguments: foreground, quiet, the socket as `--fd`, slirp's addresses.
pub fn arguments() -> Vec<OsString> {
    let prefix = PREFIX_LEN.to_string();
    let fd = SOCKET_FD.to_string();
    [
        "--foreground",
        "--quiet",
        "--fd",
        &fd,
        "--address",
        GUEST_ADDRESS,
        "--netmask",
        &prefix,
        "--gateway",
        GATEWAY,
        "--dns",
        DNS,
        "--dns-forward",
        DNS,
    ]
    .iter()
    .map(OsString::from)
    .collect()
}

/// Start passt (`binary`) on a new socket pair; the helper and rvmspawn's end of the socket.
pub fn start(binary: &std::path::Path) -> Result<(Helper, OwnedFd), Error> {
    let mut fds = [0; 2];
    // SAFETY: socketpair writes two descriptors into `fds`, which lives for the call.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        return Err(Error::Helper(
            format!("Failed to create the socket for passt: {e}"),
            e.raw_os_error().unwrap_or(libc::EIO),
        ));
    }
    // SAFETY: both descriptors are new and owned by nobody else.
    let (ours, theirs) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let mut cmd = Command::new(binary);
    cmd.args(arguments());
    // passt writes notices even with --quiet (syslog failures, dropping root for nobody, no
    // resolver): kept, and shown only if it dies.
    cmd.stderr(std::process::Stdio::piped());
    let mut helper = Helper::spawn("passt".into(), cmd, Some((theirs, SOCKET_FD)))?;
    helper.capture_stderr()?;
    Ok((helper, ours))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_give_slirps_addresses_on_the_passed_socket() {
        let args: Vec<String> = arguments()
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        let joined = args.join(" ");
        assert!(
            joined.starts_with("--foreground --quiet --fd 3 "),
            "{joined}"
        );
        for pair in [
            "--address 10.0.2.15",
            "--netmask 24",
            "--gateway 10.0.2.2",
            "--dns 10.0.2.3",
            "--dns-forward 10.0.2.3",
        ] {
            assert!(joined.contains(pair), "{pair} in {joined}");
        }
    }

    #[test]
    fn the_guest_mac_is_qemus_default_and_unicast() {
        assert_eq!(crate::net::format_mac(&GUEST_MAC), "52:54:00:12:34:56");
        assert_eq!(GUEST_MAC[0] & 1, 0);
    }
}
