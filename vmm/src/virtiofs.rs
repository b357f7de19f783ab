//! virtiofsd, the helper behind each virtio-fs device, started as systemd-vmspawn starts it.
//!
//! The vhost-user socket is a listening socket in the abstract namespace under a random name:
//! rvmspawn connects first, before virtiofsd even runs (the connection waits in the backlog,
//! and virtiofsd accepts exactly one), then hands virtiofsd the listener as an fd (`--fd 3`),
//! as vmspawn does. Nothing is created in the file system, so nothing is left behind however
//! rvmspawn ends, and no other process can get at the socket without guessing 128 random bits.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::Error;
use crate::config::FsShare;
use crate::helper::Helper;

/// Where vmspawn looks for virtiofsd after `$PATH`.
const FALLBACK_PATHS: [&str; 2] = ["/usr/libexec/virtiofsd", "/usr/lib/virtiofsd"];

/// The descriptor number virtiofsd gets its listening socket on.
const SOCKET_FD: i32 = 3;

/// Find virtiofsd: `$PATH`, then the distributions' libexec locations.
pub fn find_virtiofsd() -> Result<PathBuf, Error> {
    find_virtiofsd_in(std::env::var_os("PATH").as_deref())
}

/// [`find_virtiofsd`] with `path` (a `$PATH`-style list, or none) instead of `$PATH`.
pub fn find_virtiofsd_in(path: Option<&std::ffi::OsStr>) -> Result<PathBuf, Error> {
    crate::helper::find_binary_in(path, "virtiofsd", &FALLBACK_PATHS).ok_or_else(|| {
        Error::Helper(
            format!(
                "Failed to find virtiofsd binary (looked in $PATH, {}); it is needed for \
                 --directory= and --bind=",
                FALLBACK_PATHS.join(", ")
            ),
            libc::ENOENT,
        )
    })
}

/// virtiofsd's arguments for `share`, vmspawn's set plus `--readonly` for `--bind-ro=`, so a
/// read-only mount is enforced by the server and not only by the guest's mount flag.
pub fn arguments(share: &FsShare) -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = vec![
        "--shared-dir".into(),
        share.source.clone().into(),
        "--xattr".into(),
        "--fd".into(),
        SOCKET_FD.to_string().into(),
        "--no-announce-submounts".into(),
        "--log-level=error".into(),
        "--modcaps=-mknod".into(),
    ];
    if share.read_only {
        args.push("--readonly".into());
    }
    if let Some(m) = share.id_map {
        // Guest IDs from 0 are host IDs from `shift`, both ways, for users and groups alike.
        let map = format!("map:0:{}:{}", m.shift, m.count);
        args.extend([
            "--translate-uid".into(),
            map.clone().into(),
            "--translate-gid".into(),
            map.into(),
        ]);
    }
    args
}

/// Start virtiofsd for `share` and return it with our end of its vhost-user connection.
pub fn start(binary: &Path, share: &FsShare) -> Result<(Helper, UnixStream), Error> {
    let name = format!("virtiofsd for {}", share.source.display());
    let (listener, stream) = crate::helper::abstract_pair("virtiofs", &name)?;
    let mut cmd = Command::new(binary);
    cmd.args(arguments(share));
    // Its messages reach the user through rvmspawn's writer: the terminal may be raw.
    cmd.stderr(std::process::Stdio::piped());
    let mut helper = Helper::spawn(name, cmd, Some((listener, SOCKET_FD)))?;
    helper.relay_stderr()?;
    Ok((helper, stream))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::IdMap;

    #[test]
    fn arguments_are_vmspawns_plus_readonly_and_id_maps() {
        let mut share = FsShare {
            tag: "root".into(),
            source: "/srv/root".into(),
            read_only: false,
            id_map: None,
            ephemeral: false,
        };
        let line = |s: &FsShare| {
            arguments(s)
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        };
        assert_eq!(
            line(&share),
            "--shared-dir /srv/root --xattr --fd 3 --no-announce-submounts --log-level=error \
             --modcaps=-mknod"
        );
        share.read_only = true;
        share.id_map = Some(IdMap {
            shift: 100000,
            count: 65536,
        });
        assert!(line(&share).ends_with(
            "--modcaps=-mknod --readonly --translate-uid map:0:100000:65536 \
             --translate-gid map:0:100000:65536"
        ));
    }

    #[test]
    fn virtiofsd_is_looked_up_in_the_path_given() {
        // A directory in the path given with an executable virtiofsd in it is where it is
        // found, before the fallbacks.
        let dir = std::env::temp_dir().join(format!("rvmspawn-find-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        let fake = dir.join("virtiofsd");
        std::fs::write(&fake, "#!/bin/sh\n").unwrap();
        let path = std::env::join_paths(["/nonexistent".as_ref(), dir.as_path()]).unwrap();
        // Not executable: skipped.
        let not_here = find_virtiofsd_in(Some(&path));
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let found = find_virtiofsd_in(Some(&path));
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(found.unwrap(), fake);
        assert_ne!(not_here.ok(), Some(fake));

        // Nowhere in the path: named in the error, unless a fallback has it.
        if FALLBACK_PATHS.iter().any(|p| Path::new(p).exists()) {
            return;
        }
        let e = find_virtiofsd_in(Some("/nonexistent".as_ref())).unwrap_err();
        assert_eq!(e.errno(), libc::ENOENT);
        assert!(e.to_string().contains("virtiofsd"), "{e}");
        assert!(find_virtiofsd_in(None).is_err());
    }

    #[test]
    fn our_connection_waits_for_the_helper_that_accepts_it() {
        // A stand-in for virtiofsd: accepts on fd 3 and echoes one line.
        let script = "exec python3 -c 'import socket; s = socket.socket(fileno=3); \
                      c, _ = s.accept(); c.sendall(c.recv(64))'";
        let address = format!("rvmspawn-test-{:016x}", crate::random_u64());
        let listener = crate::helper::listen_abstract(&address).unwrap();
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(address.as_bytes()).unwrap();
        let mut ours = UnixStream::connect_addr(&addr).unwrap();
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", script]);
        let h = Helper::spawn("echo".into(), cmd, Some((listener, SOCKET_FD))).unwrap();
        use std::io::{Read, Write};
        ours.write_all(b"ping\n").unwrap();
        let mut buf = [0u8; 5];
        ours.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ping\n");
        // Once the helper has gone, so has the name: nobody can connect any more.
        assert!(h.exited_within(std::time::Duration::from_secs(10)));
        assert!(UnixStream::connect_addr(&addr).is_err());
    }
}
