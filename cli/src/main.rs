//! rvmspawn: systemd-vmspawn's command line, booting on KVM without QEMU.
//!
//! Failures print one line and exit with the errno, as systemd's tools do, so callers
//! can tell a bad option (EINVAL) from a missing feature (EOPNOTSUPP) or a missing file.

mod args;
mod config;
mod error;
mod listen_fds;
mod parse;
mod tint;

use std::process::ExitCode;

use args::Args;
use config::{Host, MIB, Settings};
use error::Failure;
use listen_fds::ListenFds;

fn main() -> ExitCode {
    // rvmspawn started as its own machined registrar (vmm/src/machined.rs): no VM, no options.
    if std::env::var_os(vmm::REGISTRAR_ENV).is_some_and(|v| v == vmm::REGISTRAR_ROLE) {
        let args: Vec<_> = std::env::args_os().skip(1).collect();
        return ExitCode::from(u8::try_from(vmm::registrar_main(&args)).unwrap_or(1));
    }
    // SAFETY: this is the first thing the process does: no other thread exists yet and
    // no file has been opened, so fds from 3 on are either passed ones or unused.
    let passed = unsafe { listen_fds::take() };

    let args = match Args::try_parse_from(std::env::args_os()) {
        Ok(args) => args,
        Err(err) => {
            // clap's message (with usage) is kept; only the exit code follows systemd.
            let _ = err.print();
            return if err.use_stderr() {
                errno_exit(libc::EINVAL)
            } else {
                ExitCode::SUCCESS
            };
        }
    };

    match prepare(args, passed) {
        Ok(None) => ExitCode::SUCCESS,
        Ok(Some((config, background))) => {
            // --background=: the interactive console's tint, on a terminal only; reset after.
            // Without the option, vmspawn's default: the terminal's background tinted green.
            // SAFETY: isatty() only inspects the descriptors.
            let tty = unsafe {
                libc::isatty(libc::STDOUT_FILENO) == 1 && libc::isatty(libc::STDIN_FILENO) == 1
            };
            let tint = if config.console.mode == vmm::ConsoleMode::Interactive && tty {
                match background {
                    Some(given) => given,
                    None => default_tint(config.console.term.as_deref()),
                }
            } else {
                None
            };
            if let Some(bg) = &tint {
                print!("\x1b[{bg}m\x1b[K");
                let _ = std::io::Write::flush(&mut std::io::stdout());
            }
            let outcome = vmm::run(config);
            if tint.is_some() {
                print!("\x1b[0m\x1b[K");
                let _ = std::io::Write::flush(&mut std::io::stdout());
            }
            if let Err(err) = &outcome {
                eprintln!("rvmspawn: {}", error_chain(err));
            }
            ExitCode::from(exit_code(&outcome))
        }
        Err(failure) => {
            eprintln!("rvmspawn: {failure}");
            errno_exit(failure.errno)
        }
    }
}

/// `--background=`: `None` for vmspawn's default tint, `Some(None)` for none, else the SGR
/// parameters to use.
type Background = Option<Option<String>>;

/// vmspawn's default tint: none on a dumb terminal or with `$SYSTEMD_TINT_BACKGROUND=0`; the
/// Linux console's background is black; any other terminal is asked.
fn default_tint(term: Option<&str>) -> Option<String> {
    if !tint::wanted(std::env::var_os("SYSTEMD_TINT_BACKGROUND").as_deref())
        || matches!(term, None | Some("dumb"))
    {
        return None;
    }
    let background = if term == Some("linux") {
        Some((0.0, 0.0, 0.0))
    } else {
        tint::query_background(libc::STDIN_FILENO, libc::STDOUT_FILENO)
    };
    background.map(|bg| tint::tint_for(bg, tint::HUE))
}

/// Everything between the command line and the VM; the status lines are printed here so
/// that they only appear for a VM that is about to start. `None`: a listing was printed
/// (`--firmware=list`, `--firmware-features=list`, `--firmware=describe`), nothing to run.
/// The environment is read here, once (in [`Host::detect`]).
fn prepare(
    args: Args,
    passed: Result<ListenFds, Failure>,
) -> Result<Option<(vmm::VmConfig, Background)>, Failure> {
    let mut host = Host::detect()?;
    let settings = Settings::from_args(args, &host)?;
    // Firmware selection depends on it (the run's KVM is the passed one, if any); a direct boot
    // does not open /dev/kvm for it.
    if settings.selects_firmware() {
        host.smm = vmm::smm_support(
            passed
                .as_ref()
                .ok()
                .and_then(|p| p.kvm.as_ref())
                .map(std::os::fd::AsFd::as_fd),
        );
    }
    if let Some(text) = settings.informational(&host)? {
        print!("{text}");
        return Ok(None);
    }
    settings.check()?;
    let name = settings.machine_name(&host)?;
    settings.check_files()?;
    settings.grow_image_file()?;
    let oem_strings = settings.oem_strings()?;

    let mut passed = passed?;
    passed.close_unrecognized();
    let kvm = match passed.kvm.take() {
        Some(fd) => vmm::KvmSource::Inherited(fd),
        None => vmm::KvmSource::Open,
    };
    // After every other check, as it may create the EFI variable store beside the image.
    let firmware = settings.firmware_boot(&host)?;
    let quiet = settings.quiet;
    let background = settings.background.clone();
    let mut config = settings.into_vm_config(name, kvm, oem_strings, firmware);
    config.kernel_extraction = host.kernel_extraction.clone();
    config.console.term = host.term.clone();
    config.stop_timeout = host.stop_timeout;
    config.vsock.vhost_fd = passed.vhost_vsock.take();
    if !quiet {
        eprint!("{}", status_lines(&config));
    }
    Ok(Some((config, background)))
}

/// vmspawn's two status lines, the first extended with the machine's size.
fn status_lines(config: &vmm::VmConfig) -> String {
    let cpus = if config.vcpus == 1 { "vCPU" } else { "vCPUs" };
    // Like vmspawn: the image when there is one, else what is booted.
    let on = config
        .disks
        .iter()
        .find(|d| d.root)
        .map(|d| &d.path)
        .or_else(|| {
            config
                .shares
                .first()
                .filter(|s| s.tag == "root")
                .map(|s| &s.source)
        })
        .unwrap_or(&config.kernel);
    // The hint for the modes that read the terminal, as vmspawn prints it.
    let hint = match config.console.mode {
        vmm::ConsoleMode::Interactive => "Press Ctrl-] three times within 1s to kill VM.\n",
        vmm::ConsoleMode::Native => "Press Ctrl-a x to kill VM.\n",
        vmm::ConsoleMode::ReadOnly | vmm::ConsoleMode::Headless | vmm::ConsoleMode::Gui => "",
    };
    format!(
        "Spawning VM {} on {} with {} {cpus} and {} MiB.\n{hint}",
        config.name,
        on.display(),
        config.vcpus,
        config.mem_bytes / MIB,
    )
}

/// How a run maps to the exit status. Every way the guest or the user ends the VM is a
/// success, as in vmspawn: it returns the guest's EXIT_STATUS when the guest reports one
/// over vsock and EXIT_SUCCESS otherwise, including after
/// Ctrl-] and after shutting the guest down on SIGTERM.
fn exit_code(outcome: &Result<vmm::RunOutcome, vmm::Error>) -> u8 {
    match outcome {
        Ok(o) => o.guest_exit_status.unwrap_or(0),
        Err(err) => errno_code(err.errno()),
    }
}

/// An errno as an exit status: never 0 (that would claim success) and never truncated
/// into something else by the kernel's 8-bit exit status.
fn errno_code(errno: i32) -> u8 {
    u8::try_from(errno.clamp(1, 255)).expect("clamped into u8 range")
}

fn errno_exit(errno: i32) -> ExitCode {
    ExitCode::from(errno_code(errno))
}

/// The error and its causes, as "outer: inner: innermost".
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fmt;
    use std::path::PathBuf;

    #[test]
    fn guest_and_user_endings_are_success() {
        for exit in [
            vmm::VmExit::PowerOff,
            vmm::VmExit::ConsoleKill,
            vmm::VmExit::Signal(libc::SIGTERM),
        ] {
            let outcome = vmm::RunOutcome {
                exit,
                guest_exit_status: None,
            };
            assert_eq!(exit_code(&Ok(outcome)), 0, "{exit:?}");
            // The guest's EXIT_STATUS= wins, however the VM ended.
            let outcome = vmm::RunOutcome {
                exit,
                guest_exit_status: Some(42),
            };
            assert_eq!(exit_code(&Ok(outcome)), 42, "{exit:?}");
        }
    }

    #[test]
    fn errors_exit_with_their_errno() {
        let err = vmm::Error::KvmCapMissing("KVM_CAP_IRQCHIP");
        assert_eq!(exit_code(&Err(err)), libc::EOPNOTSUPP as u8);
        assert_eq!(errno_code(libc::ENOENT), 2);
        assert_eq!(errno_code(0), 1);
        assert_eq!(errno_code(-5), 1);
        assert_eq!(errno_code(4096), 255);
    }

    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Layer>>);

    impl fmt::Display for Layer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Layer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|l| l as _)
        }
    }

    #[test]
    fn error_chains_are_joined() {
        let err = Layer(
            "Failed to load kernel",
            Some(Box::new(Layer("bad magic", None))),
        );
        assert_eq!(error_chain(&err), "Failed to load kernel: bad magic");
        assert_eq!(error_chain(&Layer("alone", None)), "alone");
    }

    fn config(vcpus: u32) -> vmm::VmConfig {
        vmm::VmConfig {
            name: "vm".into(),
            vcpus,
            mem_bytes: 2 << 30,
            kernel: PathBuf::from("/boot/vmlinuz"),
            initrds: Vec::new(),
            kernel_extraction: vmm::KernelExtraction::Off,
            extra_cmdline: Vec::new(),
            kvm: vmm::KvmSource::Open,
            shared_memory: false,
            disks: Vec::new(),
            shares: Vec::new(),
            uuid: None,
            oem_strings: Vec::new(),
            vsock: vmm::VsockConfig::default(),
            quiet: false,
            notify_ready: true,
            firmware: None,
            network: vmm::Network::None,
            tpm: vmm::TpmConfig::default(),
            console: vmm::ConsoleConfig::default(),
            stop_timeout: std::time::Duration::ZERO,
            ssh_key: None,
            forward_journal: None,
            register: vmm::RegisterMode::No,
        }
    }

    #[test]
    fn status() {
        assert_eq!(
            status_lines(&config(2)),
            "Spawning VM vm on /boot/vmlinuz with 2 vCPUs and 2048 MiB.\n\
             Press Ctrl-] three times within 1s to kill VM.\n"
        );
        assert!(status_lines(&config(1)).contains("with 1 vCPU and"));
        let mut c = config(1);
        c.disks.push(vmm::DiskConfig {
            path: PathBuf::from("/srv/os.raw"),
            root: true,
            discard: true,
            ephemeral: false,
        });
        assert!(status_lines(&c).starts_with("Spawning VM vm on /srv/os.raw with"));
        c.console.mode = vmm::ConsoleMode::Native;
        assert!(status_lines(&c).ends_with("MiB.\nPress Ctrl-a x to kill VM.\n"));
        for mode in [vmm::ConsoleMode::ReadOnly, vmm::ConsoleMode::Headless] {
            c.console.mode = mode;
            assert!(status_lines(&c).ends_with("MiB.\n"), "{mode:?}");
        }
    }
}
