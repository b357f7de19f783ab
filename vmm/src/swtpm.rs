//! swtpm, the software TPM behind the guest's TPM device, found, set up and started as
//! systemd-vmspawn does it.
//!
//! - `swtpm` and `swtpm_setup` are looked up in `$PATH`, then in `/usr/bin`.
//! - A state directory without the `.manufactured` marker is manufactured first: the
//!   configuration files of swtpm's local CA are written into it (so its signing key and
//!   certificates live with the state), then `swtpm_setup` creates the endorsement keys and their
//!   certificates, and the marker is written. `--profile-name=` is passed only when
//!   `swtpm_setup --print-profiles` works (swtpm 0.7, Debian bookworm's, lacks it).
//! - swtpm runs as a supervised [`Helper`]: `swtpm socket --tpm2 --tpmstate dir=DIR --ctrl
//!   type=unixio,fd=3`, its control channel a listening socket in the abstract namespace that
//!   rvmspawn connected to before swtpm ran (as for virtiofsd). Its standard error is kept and
//!   shown only when it dies.

use std::ffi::OsString;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::Error;
use crate::helper::Helper;

/// The marker vmspawn leaves in a state directory once `swtpm_setup` has run in it.
pub const MANUFACTURED: &str = ".manufactured";

/// The name of the state directory inside the run's directory, for `--tpm-state=off`.
pub const EPHEMERAL_DIR: &str = "tpm";

/// The descriptor number swtpm gets its control socket on.
const CTRL_FD: i32 = 3;

/// Where vmspawn looks after `$PATH`.
const FALLBACK_DIR: &str = "/usr/bin";

/// The two programs a TPM needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binaries {
    /// `swtpm`, the TPM itself.
    pub swtpm: PathBuf,
    /// `swtpm_setup`, which manufactures a new state directory.
    pub setup: PathBuf,
}

/// Find `swtpm` and `swtpm_setup` (`$PATH`, then `/usr/bin`); `None` unless both are there.
pub fn find() -> Option<Binaries> {
    find_in(std::env::var_os("PATH").as_deref())
}

/// [`find`] with `path` (a `$PATH`-style list, or none) instead of `$PATH`.
pub fn find_in(path: Option<&std::ffi::OsStr>) -> Option<Binaries> {
    let one = |name: &str| {
        let fallback = format!("{FALLBACK_DIR}/{name}");
        crate::helper::find_binary_in(path, name, &[fallback.as_str()])
    };
    Some(Binaries {
        swtpm: one("swtpm")?,
        setup: one("swtpm_setup")?,
    })
}

/// The error for `--tpm=yes` without swtpm, as vmspawn words it.
pub fn not_found() -> Error {
    Error::Helper("Failed to find swtpm binary".into(), libc::ENOENT)
}

/// The configuration files of a manufacture in `dir`: (file name, contents), vmspawn's set.
pub fn setup_files(dir: &Path) -> [(&'static str, String); 3] {
    let d = dir.display();
    [
        (
            "swtpm-localca.conf",
            format!(
                "statedir = {d}\nsigningkey = {d}/signing-private-key.pem\nissuercert = \
                 {d}/issuer-certificate.pem\ncertserial = {d}/certificate-serial\n"
            ),
        ),
        (
            "swtpm-localca.options",
            "--platform-manufacturer systemd\n--platform-version 2.1\n--platform-model swtpm\n"
                .into(),
        ),
        (
            "swtpm_setup.conf",
            format!(
                "create_certs_tool = swtpm_localca\ncreate_certs_tool_config = \
                 {d}/swtpm-localca.conf\ncreate_certs_tool_options = {d}/swtpm-localca.options\n"
            ),
        ),
    ]
}

/// `swtpm_setup`'s arguments for manufacturing `dir`, with `profile` if swtpm_setup knows
/// profiles.
pub fn setup_arguments(dir: &Path, profile: Option<&str>) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec!["--tpm-state".into(), dir.into()];
    args.extend(
        [
            "--tpm2",
            "--pcr-banks",
            "sha256",
            "--ecc",
            "--createek",
            "--create-ek-cert",
            "--create-platform-cert",
            "--not-overwrite",
            "--config",
        ]
        .map(OsString::from),
    );
    args.push(dir.join("swtpm_setup.conf").into());
    if let Some(p) = profile {
        args.push(format!("--profile-name={p}").into());
    }
    args
}

/// The newest `default-vN` profile in `swtpm_setup --tpm2 --print-profiles` output (JSON with
/// `"Name":"default-v1"` entries), as vmspawn picks it.
pub fn best_default_profile(listing: &str) -> Option<String> {
    listing
        .match_indices("default-v")
        .filter_map(|(at, prefix)| {
            let digits: String = listing[at + prefix.len()..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            digits.parse::<u32>().ok()
        })
        .max()
        .map(|n| format!("default-v{n}"))
}

/// Run `cmd` to its end with its output captured; the output (stdout and stderr) if it
/// succeeded, else an error naming `what` and showing what it said.
fn run_captured(mut cmd: Command, what: &str) -> Result<String, Error> {
    cmd.stdin(Stdio::null());
    let out = cmd.output().map_err(|e| {
        Error::Helper(
            format!("Failed to run {what}: {e}"),
            e.raw_os_error().unwrap_or(libc::EIO),
        )
    })?;
    let mut said = String::from_utf8_lossy(&out.stdout).into_owned();
    said.push_str(&String::from_utf8_lossy(&out.stderr));
    if out.status.success() {
        return Ok(said);
    }
    let said = said.trim().replace('\n', "; ");
    Err(Error::Helper(
        format!("{what} failed ({}): {said}", out.status),
        libc::EIO,
    ))
}

/// Create `dir` (mode 0700, with its parents) unless it exists.
pub fn create_state_dir(dir: &Path) -> Result<(), Error> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| {
            Error::Helper(
                format!("Failed to create TPM state directory {}: {e}", dir.display()),
                e.raw_os_error().unwrap_or(libc::EIO),
            )
        })
}

/// Manufacture `dir` unless its marker says it was; whether it did.
pub fn manufacture(setup: &Path, dir: &Path) -> Result<bool, Error> {
    let marker = dir.join(MANUFACTURED);
    if marker.exists() {
        return Ok(false);
    }
    let write = |name: &str, contents: &[u8]| {
        let path = dir.join(name);
        std::fs::write(&path, contents).map_err(|e| {
            Error::Helper(
                format!("Failed to write {}: {e}", path.display()),
                e.raw_os_error().unwrap_or(libc::EIO),
            )
        })
    };
    for (name, contents) in setup_files(dir) {
        write(name, contents.as_bytes())?;
    }
    let mut probe = Command::new(setup);
    probe.args(["--tpm2", "--print-profiles"]);
    let profile = run_captured(probe, "swtpm_setup --print-profiles")
        .ok()
        .and_then(|listing| best_default_profile(&listing));
    let mut cmd = Command::new(setup);
    cmd.args(setup_arguments(dir, profile.as_deref()));
    run_captured(cmd, &format!("swtpm_setup for {}", dir.display()))?;
    write(MANUFACTURED, b"")?;
    Ok(true)
}

/// swtpm's arguments for state directory `dir`.
pub fn arguments(dir: &Path) -> Vec<OsString> {
    let mut state = OsString::from("dir=");
    state.push(dir);
    vec![
        "socket".into(),
        "--tpm2".into(),
        "--tpmstate".into(),
        state,
        "--ctrl".into(),
        format!("type=unixio,fd={CTRL_FD}").into(),
    ]
}

/// Start swtpm on state directory `dir`; returns it with our end of its control channel.
pub fn start(swtpm: &Path, dir: &Path) -> Result<(Helper, UnixStream), Error> {
    let name = format!("swtpm for {}", dir.display());
    let (listener, stream) = crate::helper::abstract_pair("swtpm", &name)?;
    let mut cmd = Command::new(swtpm);
    cmd.args(arguments(dir));
    cmd.stdout(Stdio::null());
    cmd.stderr(Stdio::piped());
    let mut helper = Helper::spawn(name, cmd, Some((listener, CTRL_FD)))?;
    helper.capture_stderr()?;
    Ok((helper, stream))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(args: &[OsString]) -> String {
        args.iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn the_files_and_arguments_are_vmspawns() {
        let dir = Path::new("/srv/os.raw.tpmstate");
        let files = setup_files(dir);
        assert_eq!(
            files.iter().map(|f| f.0).collect::<Vec<_>>(),
            [
                "swtpm-localca.conf",
                "swtpm-localca.options",
                "swtpm_setup.conf"
            ]
        );
        // The local CA keeps everything inside the state directory.
        for key in ["statedir", "signingkey", "issuercert", "certserial"] {
            let l = files[0].1.lines().find(|l| l.starts_with(key)).unwrap();
            assert!(l.contains("= /srv/os.raw.tpmstate"), "{l}");
        }
        assert_eq!(
            files[1].1,
            "--platform-manufacturer systemd\n--platform-version 2.1\n--platform-model swtpm\n"
        );
        assert!(
            files[2]
                .1
                .starts_with("create_certs_tool = swtpm_localca\n")
        );
        assert!(files[2].1.contains(
            "create_certs_tool_config = /srv/os.raw.tpmstate/swtpm-localca.conf\n\
             create_certs_tool_options = /srv/os.raw.tpmstate/swtpm-localca.options\n"
        ));
        assert_eq!(
            line(&setup_arguments(dir, None)),
            "--tpm-state /srv/os.raw.tpmstate --tpm2 --pcr-banks sha256 --ecc --createek \
             --create-ek-cert --create-platform-cert --not-overwrite --config \
             /srv/os.raw.tpmstate/swtpm_setup.conf"
        );
        assert!(line(&setup_arguments(dir, Some("default-v2"))).ends_with(
            "/srv/os.raw.tpmstate/swtpm_setup.conf --profile-name=default-v2"
        ));
        assert_eq!(
            line(&arguments(dir)),
            "socket --tpm2 --tpmstate dir=/srv/os.raw.tpmstate --ctrl type=unixio,fd=3"
        );
    }

    #[test]
    fn the_newest_default_profile_is_chosen() {
        let listing = r#"{"AvailableProfiles":[{"Name":"default-v1","Algorithms":"x"},
            {"Name":"default-v2"},{"Name":"custom"},{"Name":"default-v10x"}]}"#;
        assert_eq!(best_default_profile(listing).as_deref(), Some("default-v10"));
        assert_eq!(best_default_profile("swtpm_setup: unrecognized option"), None);
    }

    #[test]
    fn swtpm_is_found_in_the_path_given_then_in_usr_bin() {
        let dir = std::env::temp_dir().join(format!("rvmspawn-swtpm-find-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        for name in ["swtpm", "swtpm_setup"] {
            use std::os::unix::fs::PermissionsExt;
            let p = dir.join(name);
            std::fs::write(&p, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let found = find_in(Some(dir.as_os_str()));
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            found,
            Some(Binaries {
                swtpm: dir.join("swtpm"),
                setup: dir.join("swtpm_setup"),
            })
        );
        // Not in the path: /usr/bin's, if this host has them.
        let host = Path::new("/usr/bin/swtpm").exists() && Path::new("/usr/bin/swtpm_setup").exists();
        assert_eq!(find_in(Some("/nonexistent".as_ref())).is_some(), host);
        assert_eq!(not_found().to_string(), "Failed to find swtpm binary");
        assert_eq!(not_found().errno(), libc::ENOENT);
    }

    #[test]
    fn a_real_manufacture_leaves_the_marker_and_the_state() {
        let setup = Path::new("/usr/bin/swtpm_setup");
        assert!(
            setup.exists() && Path::new("/usr/bin/swtpm").exists(),
            "this test needs swtpm_setup and swtpm: install Debian's swtpm and swtpm-tools"
        );
        let dir = std::env::temp_dir().join(format!("rvmspawn-swtpm-mf-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let state = dir.join("os.raw.tpmstate");
        create_state_dir(&state).unwrap();
        let made = manufacture(setup, &state);
        let marker = state.join(MANUFACTURED).exists();
        let permall = state.join("tpm2-00.permall").exists();
        let mode = {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(&state).unwrap().permissions().mode() & 0o777
        };
        // A second time: nothing to do.
        let again = manufacture(setup, &state);
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(made.unwrap(), "manufactured");
        assert!(marker && permall, "marker {marker}, tpm2-00.permall {permall}");
        assert_eq!(mode, 0o700);
        assert!(!again.unwrap());
    }

    #[test]
    fn a_failing_manufacture_shows_what_swtpm_setup_said() {
        let dir = std::env::temp_dir().join(format!("rvmspawn-swtpm-bad-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        create_state_dir(&dir).unwrap();
        let e = manufacture(Path::new("/bin/false"), &dir).unwrap_err();
        let marker = dir.join(MANUFACTURED).exists();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(e.to_string().starts_with("swtpm_setup for "), "{e}");
        assert!(!marker);
    }
}
