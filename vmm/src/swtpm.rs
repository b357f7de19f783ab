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

use std::sync::Arc;
use std::time::{Duration, Instant};

use devices::tpm::{Swtpm, Tpm, command};

use crate::helper::Helper;
use crate::runtime::RuntimeDir;
use crate::{Error, TpmMode, TpmState};

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
    // Like a helper: rvmspawn's termination signals unblocked, and gone when rvmspawn goes (a
    // manufacture takes a second or more).
    crate::helper::prepare_child(&mut cmd, None);
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
                format!(
                    "Failed to create TPM state directory {}: {e}",
                    dir.display()
                ),
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

/// The run's TPM, and the swtpm behind it (to be watched and, at the end, stopped).
#[derive(Debug)]
pub struct RunTpm {
    /// swtpm.
    pub helper: Helper,
    /// The device's back end and thread.
    pub tpm: Arc<Tpm>,
}

/// Set up the run's TPM as `config` says: `None` for `--tpm=no`, and in auto mode when swtpm
/// is missing (silently) or fails to start (with one status line). The state directory of
/// `--tpm-state=off` is made in the run's directory (`run_dir`, created if need be).
pub fn setup(
    config: &crate::TpmConfig,
    run_dir: &mut Option<RuntimeDir>,
    name: &str,
    quiet: bool,
) -> Result<Option<RunTpm>, Error> {
    let auto = match config.mode {
        TpmMode::No => return Ok(None),
        TpmMode::Auto => true,
        TpmMode::Yes => false,
    };
    let Some(binaries) = find() else {
        return if auto { Ok(None) } else { Err(not_found()) };
    };
    let started =
        state_dir(&config.state, run_dir, name).and_then(|dir| start_tpm(&binaries, &dir));
    match started {
        Ok(run) => Ok(Some(run)),
        Err(e) if auto => {
            if !quiet {
                status!("Failed to start the TPM, continuing without it: {e}");
            }
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// The state directory for `state`, created (mode 0700) if missing.
fn state_dir(
    state: &TpmState,
    run_dir: &mut Option<RuntimeDir>,
    name: &str,
) -> Result<PathBuf, Error> {
    let dir = match state {
        TpmState::Path(path) => path.clone(),
        // The front end resolves auto; unresolved, it is as good as off.
        TpmState::Off | TpmState::Auto => {
            RuntimeDir::get_or_create(run_dir, || RuntimeDir::create(name))?
                .path()
                .join(EPHEMERAL_DIR)
        }
    };
    create_state_dir(&dir)?;
    Ok(dir)
}

/// Manufacture `dir` if need be, start swtpm on it and connect the TPM to it.
fn start_tpm(binaries: &Binaries, dir: &Path) -> Result<RunTpm, Error> {
    let t0 = Instant::now();
    if manufacture(&binaries.setup, dir)? {
        debug!(
            "TPM: manufactured {} in {} ms.",
            dir.display(),
            t0.elapsed().as_millis()
        );
    }
    let t1 = Instant::now();
    let (mut helper, ctrl) = start(&binaries.swtpm, dir)?;
    let tpm = match Swtpm::connect(ctrl).and_then(Tpm::new) {
        Ok(tpm) => tpm,
        Err(e) => {
            // swtpm may have said why it could not serve.
            let said = if helper.exited_within(Duration::from_millis(100)) {
                format!(" ({})", helper.died())
            } else {
                String::new()
            };
            return Err(Error::Tpm(
                format!("Failed to connect to swtpm: {e}{said}"),
                e.errno(),
            ));
        }
    };
    debug!("TPM: swtpm ready in {} ms.", t1.elapsed().as_millis());
    Ok(RunTpm { helper, tpm })
}

/// Check a response to a command of ours: its response code must be one of `accepted`.
fn check_response(what: &str, response: &[u8], accepted: &[u32]) -> Result<(), Error> {
    match command::response_code(response) {
        Some(rc) if accepted.contains(&rc) => Ok(()),
        Some(rc) => Err(Error::Tpm(
            format!("{what} failed: TPM response code {rc:#x}"),
            libc::EIO,
        )),
        None => Err(Error::Tpm(
            format!("{what} failed: a response of {} bytes", response.len()),
            libc::EIO,
        )),
    }
}

/// Run one command of ours: `what` names it in errors, `accepted` are the response codes that
/// mean it did its job.
fn run_command(tpm: &Tpm, what: &str, cmd: Vec<u8>, accepted: &[u32]) -> Result<(), Error> {
    let response = tpm
        .execute(&cmd)
        .map_err(|e| Error::Tpm(format!("{what} failed: {e}"), e.errno()))?;
    check_response(what, &response, accepted)
}

/// Start the TPM up as firmware does before it starts an OS: `TPM2_Startup(CLEAR)` (also
/// accepted when it already ran) and a full `TPM2_SelfTest`. For a direct boot, before every
/// boot: the guest's kernel then finds a started, tested TPM, as after firmware, and does
/// neither under its own short timeouts (Linux allows `TPM2_Startup` 750 ms, which a loaded or
/// emulated host can miss, and the driver then gives the TPM up).
pub fn start_up(tpm: &Tpm) -> Result<(), Error> {
    let t0 = Instant::now();
    run_command(
        tpm,
        "TPM2_Startup",
        command::startup_clear(),
        &[command::TPM_RC_SUCCESS, command::TPM_RC_INITIALIZE],
    )?;
    run_command(
        tpm,
        "TPM2_SelfTest",
        command::self_test_full(),
        &[command::TPM_RC_SUCCESS, command::TPM_RC_TESTING],
    )?;
    debug!("TPM: started up in {} ms.", t0.elapsed().as_millis());
    Ok(())
}

/// What a measured direct boot of a UKI extends, computed once per run.
#[derive(Debug, Clone, Default)]
pub struct Measurements {
    /// PCR 11: the UKI's sections.
    pub uki: Vec<boot::measure::Digest256>,
    /// PCR 12: the extra command line, if any.
    pub cmdline_extra: Option<boot::measure::Digest256>,
}

impl Measurements {
    /// The measurements of UKI `kernel` booted with extra command line `extra`.
    pub fn of(kernel: &Path, extra: &str) -> Result<Measurements, Error> {
        let file = std::fs::File::open(kernel).map_err(|e| {
            Error::Tpm(
                format!("Failed to open {} to measure it: {e}", kernel.display()),
                e.raw_os_error().unwrap_or(libc::EIO),
            )
        })?;
        let uki = boot::measure::uki_events(&file)
            .map_err(|e| Error::Tpm(format!("Failed to measure the UKI: {e}"), e.errno()))?;
        Ok(Measurements {
            uki,
            cmdline_extra: boot::measure::cmdline_extra_event(extra),
        })
    }

    /// Extend the PCRs with the measurements, before the vCPUs run and after [`start_up`].
    pub fn apply(&self, tpm: &Tpm) -> Result<(), Error> {
        let events = self.uki.iter().map(|d| (boot::measure::UKI_PCR, d)).chain(
            self.cmdline_extra
                .iter()
                .map(|d| (boot::measure::CMDLINE_EXTRA_PCR, d)),
        );
        for (pcr, digest) in events {
            run_command(
                tpm,
                &format!("TPM2_PCR_Extend of PCR {pcr}"),
                command::pcr_extend_sha256(pcr, digest),
                &[command::TPM_RC_SUCCESS],
            )?;
        }
        debug!(
            "TPM: measured the UKI into PCR 11 ({} events){}.",
            self.uki.len(),
            if self.cmdline_extra.is_some() {
                " and the command line extras into PCR 12"
            } else {
                ""
            }
        );
        Ok(())
    }
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
        assert!(
            line(&setup_arguments(dir, Some("default-v2")))
                .ends_with("/srv/os.raw.tpmstate/swtpm_setup.conf --profile-name=default-v2")
        );
        assert_eq!(
            line(&arguments(dir)),
            "socket --tpm2 --tpmstate dir=/srv/os.raw.tpmstate --ctrl type=unixio,fd=3"
        );
    }

    #[test]
    fn the_newest_default_profile_is_chosen() {
        let listing = r#"{"AvailableProfiles":[{"Name":"default-v1","Algorithms":"x"},
            {"Name":"default-v2"},{"Name":"custom"},{"Name":"default-v10x"}]}"#;
        assert_eq!(
            best_default_profile(listing).as_deref(),
            Some("default-v10")
        );
        assert_eq!(
            best_default_profile("swtpm_setup: unrecognized option"),
            None
        );
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
        let host =
            Path::new("/usr/bin/swtpm").exists() && Path::new("/usr/bin/swtpm_setup").exists();
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
        assert!(
            marker && permall,
            "marker {marker}, tpm2-00.permall {permall}"
        );
        assert_eq!(mode, 0o700);
        assert!(!again.unwrap());
    }

    /// TPM2_PCR_Read of SHA-256 PCR `pcr` (below 24); the value from its response.
    fn read_pcr(tpm: &Tpm, pcr: u32) -> [u8; 32] {
        let mut select = [0u8; 3];
        select[(pcr / 8) as usize] = 1 << (pcr % 8);
        let mut cmd = Vec::new();
        cmd.extend(command::TPM_ST_NO_SESSIONS.to_be_bytes());
        cmd.extend(20u32.to_be_bytes());
        cmd.extend(0x0000_017eu32.to_be_bytes()); // TPM_CC_PCR_Read
        cmd.extend(1u32.to_be_bytes()); // one selection
        cmd.extend(0x000bu16.to_be_bytes()); // TPM_ALG_SHA256
        cmd.push(3);
        cmd.extend(select);
        let r = tpm.execute(&cmd).unwrap();
        assert_eq!(command::response_code(&r), Some(command::TPM_RC_SUCCESS));
        // Header, update counter, the selection echoed (10 bytes), digest count, digest size.
        let at = 10 + 4 + 10 + 4;
        assert_eq!(&r[at..at + 2], &32u16.to_be_bytes());
        r[at + 2..at + 34].try_into().unwrap()
    }

    #[test]
    fn a_real_swtpm_starts_takes_the_measurements_and_resets() {
        let b = find_in(Some("/usr/bin".as_ref()))
            .expect("this test needs swtpm and swtpm_setup: install swtpm and swtpm-tools");
        let dir = std::env::temp_dir().join(format!("rvmspawn-swtpm-run-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        create_state_dir(&dir).unwrap();
        let run = start_tpm(&b, &dir).unwrap();
        let m = Measurements {
            uki: vec![[1; 32], [2; 32]],
            cmdline_extra: Some([3; 32]),
        };
        start_up(&run.tpm).unwrap();
        // Started already: TPM2_Startup answers INITIALIZE, which is accepted.
        start_up(&run.tpm).unwrap();
        m.apply(&run.tpm).unwrap();
        let pcr11 = read_pcr(&run.tpm, 11);
        let pcr12 = read_pcr(&run.tpm, 12);
        // A platform reset: PCRs back to zero, and the measurements taken again (Startup
        // answers SUCCESS again, not INITIALIZE: the TPM was reset).
        run.tpm.reset().unwrap();
        start_up(&run.tpm).unwrap();
        m.apply(&run.tpm).unwrap();
        let again = read_pcr(&run.tpm, 11);
        run.tpm.shutdown().unwrap();
        drop(run);
        let permall = dir.join("tpm2-00.permall").exists();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(pcr11, boot::measure::pcr_value(&m.uki));
        assert_eq!(pcr12, boot::measure::pcr_value(&[[3; 32]]));
        assert_eq!(again, pcr11);
        assert!(permall);
    }

    #[test]
    fn auto_goes_on_without_a_tpm_that_fails_to_start_yes_does_not() {
        // A state directory that cannot be made (no swtpm: auto has no TPM either way).
        let state = TpmState::Path("/proc/rvmspawn-no-such/tpm".into());
        let config = |mode| crate::TpmConfig {
            mode,
            state: state.clone(),
        };
        let mut run_dir = None;
        let auto = setup(&config(TpmMode::Auto), &mut run_dir, "vm", true);
        assert!(matches!(auto, Ok(None)), "{auto:?}");
        let no = setup(&config(TpmMode::No), &mut run_dir, "vm", true);
        assert!(matches!(no, Ok(None)), "{no:?}");
        if find().is_some() {
            let e = setup(&config(TpmMode::Yes), &mut run_dir, "vm", true).unwrap_err();
            assert!(
                e.to_string()
                    .starts_with("Failed to create TPM state directory /proc/rvmspawn-no-such/tpm"),
                "{e}"
            );
            assert_ne!(e.errno(), 0);
        }
        // Nothing needed the run's directory.
        assert!(run_dir.is_none());
    }

    #[test]
    fn swtpm_setup_goes_when_rvmspawn_goes() {
        // swtpm_setup runs like a helper: SIGTERM is its parent-death signal, so a killed
        // rvmspawn does not leave a manufacture running. The child reads its own with
        // prctl(PR_GET_PDEATHSIG) (python3 is in scripts/packages.txt).
        let mut cmd = Command::new("python3");
        cmd.args([
            "-c",
            "import ctypes; s = ctypes.c_int(); \
             ctypes.CDLL(None).prctl(2, ctypes.byref(s), 0, 0, 0); print('pdeathsig', s.value)",
        ]);
        let out = run_captured(cmd, "python3").unwrap();
        assert_eq!(out.trim(), format!("pdeathsig {}", libc::SIGTERM));
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
