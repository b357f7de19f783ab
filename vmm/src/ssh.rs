//! `--pass-ssh-key=` and `--ssh-key-type=`: an SSH key pair made for the run, whose public half
//! the guest's sshd accepts for root on vsock, as systemd-vmspawn passes it: the credential
//! `ssh.ephemeral-authorized_keys-all` holds the public key, and the credential
//! `systemd.unit-dropin.sshd-vsock@.service` makes the per-connection sshd that systemd's
//! ssh generator binds to vsock port 22 read it (byte for byte vmspawn's drop-in). The key pair
//! lives in the run directory and goes with it.

use std::path::{Path, PathBuf};

use base64::Engine;

use crate::Error;

/// The key types `--ssh-key-type=` accepts (ssh-keygen's `-t`).
pub const KEY_TYPES: [&str; 5] = ["ecdsa", "ecdsa-sk", "ed25519", "ed25519-sk", "rsa"];

/// The drop-in vmspawn passes for `sshd-vsock@.service`.
pub const SSHD_DROPIN: &str = "[Service]\nExecStart=\nExecStart=-sshd -i -o 'AuthorizedKeysFile=%d/ssh.ephemeral-authorized_keys-all .ssh/authorized_keys'\nImportCredential=ssh.ephemeral-authorized_keys-all\n";

/// A key pair made for this run.
#[derive(Debug)]
pub struct SshKey {
    /// The private key's file.
    pub private: PathBuf,
    /// The public key, one line (`TYPE BASE64 COMMENT\n`).
    pub public: String,
}

/// Make a key pair of `key_type` as `dir/ssh-KEYTYPE` (and `.pub`) with `ssh-keygen`, no
/// passphrase.
pub fn generate(dir: &Path, key_type: &str) -> Result<SshKey, Error> {
    let private = dir.join(format!("ssh-{key_type}"));
    let mut cmd = std::process::Command::new("ssh-keygen");
    cmd.args(["-q", "-t", key_type, "-N", "", "-C", "rvmspawn", "-f"])
        .arg(&private)
        .stdin(std::process::Stdio::null());
    crate::helper::prepare_child(&mut cmd, None);
    let out = cmd.output().map_err(|e| {
        Error::Helper(
            format!("Failed to run ssh-keygen for --pass-ssh-key: {e}"),
            e.raw_os_error().unwrap_or(libc::EIO),
        )
    })?;
    if !out.status.success() {
        return Err(Error::Helper(
            format!(
                "ssh-keygen failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            libc::EIO,
        ));
    }
    let mut public_path = private.clone().into_os_string();
    public_path.push(".pub");
    let public = std::fs::read_to_string(&public_path).map_err(|e| {
        Error::Helper(
            format!("Failed to read {}: {e}", Path::new(&public_path).display()),
            e.raw_os_error().unwrap_or(libc::EIO),
        )
    })?;
    Ok(SshKey { private, public })
}

/// The two SMBIOS credential strings vmspawn passes for `public`.
pub fn credentials(public: &str) -> [String; 2] {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    [
        format!(
            "io.systemd.credential.binary:ssh.ephemeral-authorized_keys-all={}",
            b64(public)
        ),
        format!(
            "io.systemd.credential.binary:systemd.unit-dropin.sshd-vsock@.service={}",
            b64(SSHD_DROPIN)
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_credentials_are_vmspawns() {
        let [keys, dropin] = credentials("ssh-ed25519 AAAA rvmspawn\n");
        assert_eq!(
            keys,
            "io.systemd.credential.binary:ssh.ephemeral-authorized_keys-all=c3NoLWVkMjU1MTkgQUFBQSBydm1zcGF3bgo="
        );
        let (name, value) = dropin.split_once('=').unwrap();
        assert_eq!(
            name,
            "io.systemd.credential.binary:systemd.unit-dropin.sshd-vsock@.service"
        );
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(value)
            .unwrap();
        assert_eq!(decoded, SSHD_DROPIN.as_bytes());
        assert!(SSHD_DROPIN.contains("AuthorizedKeysFile=%d/ssh.ephemeral-authorized_keys-all"));
    }

    #[test]
    fn a_key_pair_is_made_where_asked() {
        if std::process::Command::new("ssh-keygen")
            .arg("-?")
            .output()
            .is_err()
        {
            eprintln!("note: no ssh-keygen here; key generation not tested");
            return;
        }
        let dir = std::env::temp_dir().join(format!("rvmspawn-ssh-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = generate(&dir, "ed25519").unwrap();
        assert!(key.public.starts_with("ssh-ed25519 "), "{}", key.public);
        assert!(key.private.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
