//! From the raw command line to a `vmm::VmConfig`: every value parsed and checked
//! (EINVAL, ERANGE), then vmspawn's rules between options, then refusals of what rvmspawn
//! cannot do yet (EOPNOTSUPP), then the files. Nothing here touches KVM.

use std::cell::OnceCell;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::os::fd::IntoRawFd;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use firmware::nvram::NvramState;

use crate::args::{Args, CredentialArg, FirmwareOption, Mount};
use crate::error::Failure;
use crate::parse::{
    self, BindMount, Credential, CredentialData, Firmware, Invalid, UidRange, hostname_cleanup,
    hostname_is_valid,
};

pub const MIB: u64 = 1 << 20;

/// vmspawn's default.
pub const DEFAULT_MEM: u64 = 2 << 30;

/// Below this a stock distribution kernel with an initrd does not reach userspace; a
/// clear error beats an out-of-memory panic on the guest console.
pub const MIN_MEM: u64 = 64 * MIB;

/// Name for a VM booted with `--linux` alone when the current directory gives none.
pub const FALLBACK_NAME: &str = "rvmspawn";

/// The environment variable that sets the guest's MAC for `--network-tap`, as in vmspawn.
const NETWORK_MAC_ENV: &str = "SYSTEMD_VMSPAWN_NETWORK_MAC";
/// `no` boots a bzImage through the 64-bit boot protocol instead of extracting its payload.
const EXTRACT_KERNEL_ENV: &str = "RVMSPAWN_EXTRACT_KERNEL";
/// How long a graceful stop waits for the guest, in seconds (not a vmspawn setting: vmspawn
/// waits for its D-Bus call over ssh instead).
const STOP_TIMEOUT_ENV: &str = "RVMSPAWN_STOP_TIMEOUT";
/// The graceful stop's wait when `$RVMSPAWN_STOP_TIMEOUT` is unset: long enough for systemd
/// to stop its units (its own default stop timeout is 90 s per unit, but a VM's are few).
pub const DEFAULT_STOP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The guest MAC from `$SYSTEMD_VMSPAWN_NETWORK_MAC`, if set; a bad value is an error naming
/// the variable (EINVAL), as in vmspawn.
fn network_mac(host: &Host) -> Result<Option<[u8; 6]>, Failure> {
    let Some(raw) = &host.network_mac else {
        return Ok(None);
    };
    raw.to_str()
        .and_then(vmm::parse_mac)
        .map(Some)
        .ok_or_else(|| {
            Failure::new(
                libc::EINVAL,
                format!(
                    "Failed to parse provided MAC address via environment variable \
                     ${NETWORK_MAC_ENV}: '{}'",
                    raw.to_string_lossy()
                ),
            )
        })
}

/// What validation needs to know about the host, gathered once so tests can fake it.
#[derive(Debug, Clone)]
pub struct Host {
    /// Relative paths on the command line are relative to this.
    pub cwd: PathBuf,
    /// Physical memory; larger guests are refused.
    pub mem_bytes: u64,
    /// Names a VM that boots the host's own root directory, as vmspawn does.
    pub hostname: String,
    /// Where firmware descriptors are looked for: vmspawn's directories, or the
    /// colon-separated list in `$RVMSPAWN_FIRMWARE_DIRS` (for tests and packagers).
    pub firmware_search: firmware::SearchPath,
    /// `$SYSTEMD_LOG_LEVEL` is `debug` (or 7): say why firmware descriptors were passed over.
    pub debug: bool,
    /// `$SYSTEMD_VMSPAWN_NETWORK_MAC`: the guest's MAC for `--network-tap`.
    pub network_mac: Option<std::ffi::OsString>,
    /// `$RVMSPAWN_EXTRACT_KERNEL` and the cache directory for extracted kernels.
    pub kernel_extraction: vmm::KernelExtraction,
    /// `$TERM`, when it is a valid terminal name (passed on to the guest).
    pub term: Option<String>,
    /// `$RVMSPAWN_STOP_TIMEOUT`: how long a graceful stop waits for the guest.
    pub stop_timeout: std::time::Duration,
    /// Whether firmware that requires SMM can run (the host's KVM emulates SMM); set by
    /// `main` once it knows which KVM the run uses.
    pub smm: firmware::SmmSupport,
}

impl Host {
    pub fn detect() -> Result<Host, Failure> {
        let cwd = std::env::current_dir()
            .map_err(|e| Failure::io("Failed to determine current directory", &e))?;
        // SAFETY: sysconf() only reads system parameters; it has no preconditions.
        let (pages, page_size) = unsafe {
            (
                libc::sysconf(libc::_SC_PHYS_PAGES),
                libc::sysconf(libc::_SC_PAGESIZE),
            )
        };
        let mem_bytes = u64::try_from(pages)
            .ok()
            .zip(u64::try_from(page_size).ok())
            .and_then(|(pages, size)| pages.checked_mul(size))
            .ok_or_else(|| {
                Failure::io(
                    "Failed to determine the host's memory size",
                    &io::Error::last_os_error(),
                )
            })?;
        let hostname = fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim_end().to_owned())
            .unwrap_or_default();
        let env_path = |name| std::env::var_os(name).map(PathBuf::from);
        let firmware_search = match std::env::var_os(FIRMWARE_DIRS_ENV) {
            Some(list) => firmware::SearchPath::from_colon_list(&list),
            None => firmware::SearchPath::system(
                env_path("XDG_CONFIG_HOME").as_deref(),
                env_path("HOME").as_deref(),
            ),
        };
        let debug = std::env::var("SYSTEMD_LOG_LEVEL").is_ok_and(|v| v == "debug" || v == "7");
        Ok(Host {
            cwd,
            mem_bytes,
            hostname,
            firmware_search,
            debug,
            network_mac: std::env::var_os(NETWORK_MAC_ENV),
            kernel_extraction: kernel_extraction(
                std::env::var_os(EXTRACT_KERNEL_ENV).as_deref(),
                env_path("XDG_CACHE_HOME").as_deref(),
                env_path("HOME").as_deref(),
                // SAFETY: geteuid() has no preconditions and cannot fail.
                unsafe { libc::geteuid() } == 0,
            )?,
            term: std::env::var("TERM").ok().filter(|t| vmm::term_valid(t)),
            stop_timeout: stop_timeout(std::env::var_os(STOP_TIMEOUT_ENV).as_deref())?,
            // Set by `main` (`vmm::smm_support`) once it knows which KVM the run uses, when the
            // run selects a firmware (`Settings::selects_firmware`).
            smm: firmware::SmmSupport::Available,
        })
    }
}

/// `$RVMSPAWN_STOP_TIMEOUT`: seconds (a decimal number, at most a day), 0 for no graceful stop;
/// unset: [`DEFAULT_STOP_TIMEOUT`].
fn stop_timeout(value: Option<&OsStr>) -> Result<std::time::Duration, Failure> {
    let Some(value) = value else {
        return Ok(DEFAULT_STOP_TIMEOUT);
    };
    let text = value.to_string_lossy();
    text.trim()
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && (0.0..=86400.0).contains(s))
        .map(std::time::Duration::from_secs_f64)
        .ok_or_else(|| {
            Failure::new(
                libc::EINVAL,
                format!(
                    "Failed to parse ${STOP_TIMEOUT_ENV} value '{text}': expected seconds from 0 to 86400"
                ),
            )
        })
}

/// Whether bzImages are extracted (`$RVMSPAWN_EXTRACT_KERNEL`, a boolean, default yes) and
/// where the extracted kernels are cached: `$XDG_CACHE_HOME/rvmspawn` when that is set (an
/// absolute path), else `/var/cache/rvmspawn` for root and `$HOME/.cache/rvmspawn` for others;
/// with none of them, kernels are extracted into memory, uncached.
fn kernel_extraction(
    value: Option<&OsStr>,
    xdg_cache_home: Option<&Path>,
    home: Option<&Path>,
    root: bool,
) -> Result<vmm::KernelExtraction, Failure> {
    if let Some(value) = value {
        let text = value.to_string_lossy();
        let on = crate::parse::parse_boolean(&text).map_err(|_| {
            Failure::new(
                libc::EINVAL,
                format!("Failed to parse ${EXTRACT_KERNEL_ENV} value '{text}': expected a boolean"),
            )
        })?;
        if !on {
            return Ok(vmm::KernelExtraction::Off);
        }
    }
    let absolute = |p: &&Path| p.is_absolute();
    let cache = match xdg_cache_home.filter(absolute) {
        Some(xdg) => Some(xdg.join("rvmspawn")),
        None if root => Some(PathBuf::from("/var/cache/rvmspawn")),
        None => home.filter(absolute).map(|h| h.join(".cache/rvmspawn")),
    };
    Ok(vmm::KernelExtraction::On { cache })
}

/// The command line, parsed and checked value by value.
#[derive(Debug)]
pub struct Settings {
    pub quiet: bool,
    pub directory: Option<PathBuf>,
    pub image: Option<PathBuf>,
    pub vcpus: u32,
    pub mem_bytes: u64,
    /// `None`: detect.
    pub kvm: Option<bool>,
    pub vsock: Option<bool>,
    /// `None`: pick a free one.
    pub vsock_cid: Option<u32>,
    /// `--notify-ready=`.
    pub notify_ready: bool,
    pub tpm: Option<bool>,
    /// `--tpm-state=`, as given (`auto` is resolved by [`Settings::tpm`]).
    pub tpm_state: vmm::TpmState,
    pub linux: Option<PathBuf>,
    pub initrds: Vec<PathBuf>,
    /// `--console=`.
    pub console: vmm::ConsoleMode,
    /// `--console-transport=`.
    pub console_transport: vmm::ConsoleTransport,
    /// `-n`/`--network-tap` or `--network-user-mode`, whichever came last.
    pub network: vmm::Network,
    /// `--firmware=`; never [`Firmware::List`], which is [`Settings::listing`].
    pub firmware: Firmware,
    /// `--firmware-features=` and `--secure-boot=`, applied in command-line order.
    pub firmware_request: firmware::Request,
    /// `--firmware=list` or `--firmware-features=list`, whichever came first.
    pub listing: Option<Listing>,
    /// `None`: the template the firmware descriptor names.
    pub efi_nvram_template: Option<PathBuf>,
    pub efi_nvram_state: NvramState,
    /// `None`: derive from the image, directory or current directory.
    pub machine: Option<String>,
    pub private_users: Option<UidRange>,
    /// In command-line order.
    pub binds: Vec<BindMount>,
    /// In command-line order, IDs unique.
    pub credentials: Vec<Credential>,
    /// `--uuid=`, in SMBIOS text byte order.
    pub uuid: Option<[u8; 16]>,
    /// `-s/--smbios11=`, in command-line order.
    pub smbios11: Vec<String>,
    pub kernel_args: Vec<String>,
    /// `--extra-drive=`, in command-line order.
    pub extra_drives: Vec<PathBuf>,
    /// `--discard-disk=`.
    pub discard_disk: bool,
    /// `-G/--grow-image=`, rounded up to 4096.
    pub grow_image: Option<u64>,
    /// `--background=`: the SGR parameters of the interactive console's tint; `Some(None)`
    /// for none (an empty value), `None` for vmspawn's default (a green tint of the
    /// terminal's own background, `cli/src/tint.rs`).
    pub background: Option<Option<String>>,
    /// `-x/--ephemeral`.
    pub ephemeral: bool,
    /// `--pass-ssh-key=` and `--ssh-key-type=`.
    pub ssh_key: Option<vmm::SshKeyConfig>,
    /// `--forward-journal=`.
    pub forward_journal: Option<PathBuf>,
    /// `--register=`.
    pub register: vmm::RegisterMode,
    /// Options rvmspawn knows but cannot honour, in the order they are refused: the first
    /// one given is the error [`Settings::check`] reports.
    pub refused: Vec<&'static str>,
    /// The entry [`Settings::check_files`] found in `directory` when `linux` is unset. A cell,
    /// because the checks take `&self` and their caller holds the settings immutably.
    pub boot_entry: OnceCell<vmm::bls::BootEntry>,
}

/// 64 random bits from the kernel (getrandom; the clock as a last resort).
fn random_u64() -> u64 {
    let mut v = [0u8; 8];
    // SAFETY: writes at most 8 bytes into `v`.
    let n = unsafe { libc::getrandom(v.as_mut_ptr().cast(), v.len(), 0) };
    if n == 8 {
        u64::from_ne_bytes(v)
    } else {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    }
}

/// Why a known option is refused (docs/compatibility.md lists them).
fn refusal_reason(option: &str) -> &'static str {
    match option {
        "-S/--slice=" | "--property=" | "--system" | "--user" => {
            "rvmspawn creates no scope unit and talks to no service manager."
        }
        _ => "not implemented.",
    }
}

/// The environment variable that replaces the firmware descriptor search path.
pub const FIRMWARE_DIRS_ENV: &str = "RVMSPAWN_FIRMWARE_DIRS";

/// What a listing option prints instead of starting a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listing {
    /// `--firmware=list`: the descriptor paths.
    Firmware,
    /// `--firmware-features=list`: every feature of the descriptors.
    Features,
}

/// How the guest is started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootMode {
    /// The kernel is loaded directly, without firmware.
    Direct,
    /// UEFI firmware runs first; with `kernel`, it is handed the kernel (as QEMU's
    /// `-kernel`), otherwise it boots from the image.
    Firmware { kernel: bool },
}

/// Parses every occurrence of an option, as getopt would hand each to systemd's parser,
/// and keeps the last one together with the text it came from.
fn last<'a, V, T>(
    option: &str,
    values: &'a [V],
    parse: impl Fn(&'a V) -> Result<T, Invalid>,
) -> Result<Option<(&'a V, T)>, Failure>
where
    V: AsRef<OsStr>,
{
    let mut result = None;
    for value in values {
        let parsed = parse(value).map_err(|why| Failure::value(option, shown(value), why))?;
        result = Some((value, parsed));
    }
    Ok(result)
}

fn last_value<'a, V: AsRef<OsStr>, T>(
    option: &str,
    values: &'a [V],
    parse: impl Fn(&'a V) -> Result<T, Invalid>,
) -> Result<Option<T>, Failure> {
    Ok(last(option, values, parse)?.map(|(_, parsed)| parsed))
}

fn shown(value: &impl AsRef<OsStr>) -> std::path::Display<'_> {
    Path::new(value.as_ref()).display()
}

impl Settings {
    pub fn from_args(args: Args, host: &Host) -> Result<Settings, Failure> {
        let cwd = host.cwd.as_path();
        let path = |v: &OsString| Ok(parse::parse_path(v, cwd));
        let tristate = |v: &String| parse::parse_tristate(v);

        let directory = last_value("directory", &args.directory, path)?.flatten();
        let image = last_value("image", &args.image, path)?.flatten();
        let vcpus = last_value("qemu-smp", &args.qemu_smp, |v| parse::parse_smp(v))?.unwrap_or(1);
        let mem_bytes = match last("qemu-mem", &args.qemu_mem, |v| parse::parse_size(v))? {
            Some((text, bytes)) => guest_memory(bytes, host.mem_bytes)
                .map_err(|why| Failure::value("qemu-mem", text, why))?,
            // Not held against the host's size: like QEMU, the default counts on the
            // guest touching only what it uses.
            None => DEFAULT_MEM,
        };
        let kvm = last_value("qemu-kvm", &args.qemu_kvm, tristate)?.flatten();
        let vsock = last_value("qemu-vsock", &args.qemu_vsock, tristate)?.flatten();
        let vsock_cid =
            last_value("vsock-cid", &args.vsock_cid, |v| parse::parse_vsock_cid(v))?.flatten();
        let notify_ready = last_value("notify-ready", &args.notify_ready, |v| {
            parse::parse_boolean(v)
        })?
        .unwrap_or(true);
        let tpm = last_value("tpm", &args.tpm, tristate)?.flatten();
        let tpm_state = last_value("tpm-state", &args.tpm_state, |v| {
            parse::parse_tpm_state(v, cwd)
        })?
        .unwrap_or_default();
        let linux = last_value("linux", &args.linux, path)?.flatten();
        let extra_drives = args
            .extra_drive
            .iter()
            .map(|v| {
                parse::parse_extra_drive(v, cwd)
                    .map_err(|why| Failure::value("extra-drive", shown(v), why))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let discard_disk = last_value("discard-disk", &args.discard_disk, |v| {
            parse::parse_boolean(v)
        })?
        .unwrap_or(true);
        let grow_image = match last("grow-image", &args.grow_image, |v| parse::parse_size(v))? {
            None => None,
            Some((text, bytes)) => Some(bytes.checked_next_multiple_of(4096).ok_or_else(|| {
                Failure::value(
                    "grow-image",
                    text,
                    parse::Invalid::range("the size does not fit in 64 bits"),
                )
            })?),
        };
        let background = last_value("background", &args.background, |v| {
            parse::parse_background(v)
        })?;
        // Known options that are not (yet) honoured; values are still checked where vmspawn
        // checks them, so that a typo is reported as one.
        let mut refused = Vec::new();
        let pass_ssh_key = last_value("pass-ssh-key", &args.pass_ssh_key, |v| {
            parse::parse_boolean(v)
        })?;
        let ssh_key_type = last_value("ssh-key-type", &args.ssh_key_type, |v| {
            if vmm::ssh_key_types().contains(&v.as_str()) {
                Ok(v.clone())
            } else {
                Err(parse::Invalid::syntax(format!(
                    "expected one of {}",
                    vmm::ssh_key_types().join(", ")
                )))
            }
        })?;
        if pass_ssh_key == Some(false) && ssh_key_type.is_some() && !args.quiet {
            eprintln!("--ssh-key-type= has no effect with --pass-ssh-key=no.");
        }
        // vmspawn's default is yes; a failure to make the key is then only a notice.
        let ssh_key = match pass_ssh_key {
            Some(false) => None,
            explicit => Some(vmm::SshKeyConfig {
                key_type: ssh_key_type.unwrap_or_else(|| "ed25519".to_owned()),
                required: explicit == Some(true),
            }),
        };
        let forward_journal = last_value("forward-journal", &args.forward_journal, |v| {
            parse::parse_path(v, cwd).ok_or_else(|| parse::Invalid::syntax("expected a path"))
        })?;
        let register = match last_value("register", &args.register, tristate)? {
            Some(Some(true)) => vmm::RegisterMode::Yes,
            Some(Some(false)) => vmm::RegisterMode::No,
            Some(None) | None => vmm::RegisterMode::Auto,
        };
        // --keep-unit is accepted as what rvmspawn always does: it creates no scope, and
        // machined files the VM under the unit rvmspawn runs in.
        for (given, name) in [
            (!args.slice.is_empty(), "-S/--slice="),
            (!args.property.is_empty(), "--property="),
            (args.system, "--system"),
            (args.user, "--user"),
        ] {
            if given {
                refused.push(name);
            }
        }
        let initrds = args
            .initrd
            .iter()
            .map(|v| {
                parse::parse_path(v, cwd)
                    .ok_or_else(|| Failure::value("initrd", "", Invalid::syntax("expected a path")))
            })
            .collect::<Result<_, _>>()?;
        let (firmware, firmware_request, listing) = firmware_options(&args.firmware_options, cwd)?;
        let efi_nvram_template = last_value("efi-nvram-template", &args.efi_nvram_template, |v| {
            parse::parse_efi_nvram_template(v, cwd)
        })?
        .flatten();
        let efi_nvram_state = last_value("efi-nvram-state", &args.efi_nvram_state, |v| {
            parse::parse_efi_nvram_state(v, cwd)
        })?
        .unwrap_or_default();
        let machine =
            last_value("machine", &args.machine, |v| parse::parse_machine_name(v))?.flatten();
        let private_users = last_value("private-users", &args.private_users, |v| {
            parse::parse_private_users(v)
        })?;

        let binds = args
            .binds
            .iter()
            .map(|(kind, value)| {
                let (option, read_only) = match kind {
                    Mount::ReadWrite => ("bind", false),
                    Mount::ReadOnly => ("bind-ro", true),
                };
                parse::parse_bind(value, read_only, cwd)
                    .map_err(|why| Failure::value(option, shown(value), why))
            })
            .collect::<Result<_, _>>()?;

        let mut credentials: Vec<Credential> = Vec::new();
        for (kind, value) in &args.credentials {
            let (option, parsed) = match kind {
                CredentialArg::Load => ("load-credential", parse::parse_load_credential(value)),
                CredentialArg::Set => ("set-credential", parse::parse_set_credential(value)),
            };
            let credential = parsed
                .and_then(|c| {
                    if credentials.iter().any(|known| known.id == c.id) {
                        Err(Invalid {
                            errno: libc::EEXIST,
                            reason: format!("credential '{}' is already set", c.id),
                        })
                    } else {
                        Ok(c)
                    }
                })
                .map_err(|why| Failure::value(option, shown(value), why))?;
            credentials.push(credential);
        }

        let uuid = last("uuid", &args.uuid, |v| {
            vmm::parse_uuid(v).map_err(|e| Invalid {
                errno: e.errno(),
                reason: e.to_string(),
            })
        })?
        .map(|(_, u)| u);
        let smbios11 = args
            .smbios11
            .iter()
            .map(|v| {
                v.to_str()
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .ok_or_else(|| {
                        Failure::value(
                            "smbios11",
                            shown(v),
                            Invalid::syntax("an SMBIOS string must be non-empty UTF-8"),
                        )
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;

        // clap keeps only the last of the two (`overrides_with`), as vmspawn's last one wins.
        let network = if args.network_tap {
            vmm::Network::Tap {
                mac: network_mac(host)?,
            }
        } else if args.network_user_mode {
            vmm::Network::User
        } else {
            vmm::Network::None
        };
        Ok(Settings {
            quiet: args.quiet,
            uuid,
            smbios11,
            directory,
            image,
            vcpus,
            mem_bytes,
            kvm,
            vsock,
            vsock_cid,
            notify_ready,
            tpm,
            tpm_state,
            linux,
            initrds,
            console: last_value("console", &args.console, |v| parse::parse_console_mode(v))?
                .unwrap_or_default(),
            console_transport: last_value("console-transport", &args.console_transport, |v| {
                parse::parse_console_transport(v)
            })?
            .unwrap_or_default(),
            network,
            firmware,
            firmware_request,
            listing,
            efi_nvram_template,
            efi_nvram_state,
            machine,
            private_users,
            binds,
            credentials,
            kernel_args: args.kernel_args,
            extra_drives,
            discard_disk,
            grow_image,
            background,
            ephemeral: args.ephemeral,
            ssh_key,
            forward_journal,
            register,
            refused,
            boot_entry: OnceCell::new(),
        })
    }

    /// vmspawn's rules between options, then whatever rvmspawn cannot do yet.
    pub fn check(&self) -> Result<(), Failure> {
        let einval = |message: &str| Err(Failure::new(libc::EINVAL, message));
        if self.directory.is_some() && self.image.is_some() {
            return einval("Please specify either --directory= or --image=, not both.");
        }
        if !self.initrds.is_empty() && self.linux.is_none() {
            return einval("--initrd= requires --linux=.");
        }
        // An image needs firmware to boot it unless a kernel is given (a directory brings
        // its own kernel in a boot entry).
        if self.firmware == Firmware::None && self.image.is_some() && self.linux.is_none() {
            return einval("--firmware=none requires --linux= to be specified.");
        }
        // Booting a kernel with no root file system is our extension; without any of the
        // three vmspawn would look -M up as an installed image or boot the current
        // directory, neither of which exists here.
        if self.directory.is_none() && self.image.is_none() && self.linux.is_none() {
            return Err(Failure::new(
                libc::EOPNOTSUPP,
                "Nothing to boot: specify --directory=, --image= or --linux=; finding images \
                 by machine name or booting the current directory is not supported.",
            ));
        }

        // vmspawn's auto mode falls back to emulation (TCG) when KVM is missing;
        // rvmspawn has no emulator, so auto is the same as yes, and no is impossible.
        if self.kvm == Some(false) {
            return Err(Failure::new(
                libc::EOPNOTSUPP,
                "--qemu-kvm=no is not supported: rvmspawn has no CPU emulator and always \
                 uses KVM.",
            ));
        }
        // A BIOS would need SeaBIOS and its platform; the firmware path is UEFI only.
        if self.firmware == Firmware::Bios {
            return Err(Failure::new(
                libc::EOPNOTSUPP,
                "--firmware=bios is not supported: rvmspawn boots UEFI firmware only.",
            ));
        }
        // vmspawn's UID mapping is for the root directory's virtiofsd.
        if self.private_users.is_some() && self.directory.is_none() {
            return einval("--private-users= requires --directory=.");
        }
        if self.ephemeral && !self.extra_drives.is_empty() {
            return einval("Cannot use --ephemeral with --extra-drive=.");
        }
        if self.ephemeral && self.image.is_none() && self.directory.is_none() {
            return einval("--ephemeral requires --image= or --directory=.");
        }
        // Growing the image would change it, which an ephemeral run never does.
        if self.ephemeral && self.grow_image.is_some() {
            return einval(
                "--grow-image= cannot be combined with --ephemeral: it would change the image.",
            );
        }
        if let Some(first) = self.refused.first() {
            return Err(Failure::new(
                libc::EOPNOTSUPP,
                format!("{first} is not supported: {}", refusal_reason(first)),
            ));
        }
        Ok(())
    }

    /// `-G/--grow-image=`: make the image file at least that large (`ftruncate`, then
    /// `fsync`), as vmspawn does; nothing when it already is. Without `--image=` it has no
    /// effect, which is said unless quiet; a block device cannot grow (EINVAL).
    pub fn grow_image_file(&self) -> Result<(), Failure> {
        let Some(want) = self.grow_image else {
            return Ok(());
        };
        let Some(image) = &self.image else {
            if !self.quiet {
                eprintln!("--grow-image= has no effect without --image=.");
            }
            return Ok(());
        };
        // Looked at before it is opened for writing: an image large enough already need not be
        // writable.
        let meta = fs::metadata(image)
            .map_err(|e| Failure::io(format!("Failed to stat '{}'", image.display()), &e))?;
        if !meta.is_file() {
            return Err(Failure::new(
                libc::EINVAL,
                format!(
                    "--grow-image= grows image files only; '{}' is not a regular file.",
                    image.display()
                ),
            ));
        }
        if meta.len() >= want {
            return Ok(());
        }
        let file = fs::OpenOptions::new()
            .write(true)
            .open(image)
            .map_err(|e| Failure::io(format!("Failed to open '{}'", image.display()), &e))?;
        if !self.quiet {
            eprintln!(
                "Growing image '{}' from {} to {} bytes.",
                image.display(),
                meta.len(),
                want
            );
        }
        file.set_len(want)
            .and_then(|()| file.sync_all())
            .map_err(|e| Failure::io(format!("Failed to grow '{}'", image.display()), &e))
    }

    /// How the guest boots. An image without `--linux=` boots through UEFI firmware (as in
    /// vmspawn); a kernel, given or found in the directory's boot entries, is loaded directly
    /// unless `--firmware=uefi` or a descriptor path asks for the firmware, which then boots
    /// that kernel (vmspawn boots a PE kernel through UEFI by default; the direct boot is
    /// rvmspawn's faster default).
    pub fn boot_mode(&self) -> BootMode {
        let uefi_asked = matches!(self.firmware, Firmware::Uefi | Firmware::Descriptor(_));
        match (self.linux.is_some() || self.directory.is_some(), uefi_asked) {
            (true, false) => BootMode::Direct,
            (true, true) => BootMode::Firmware { kernel: true },
            (false, _) => BootMode::Firmware { kernel: false },
        }
    }

    /// Whether this run selects a firmware descriptor (a firmware boot, or
    /// `--firmware=describe`), which is when the host's SMM support matters.
    pub fn selects_firmware(&self) -> bool {
        matches!(self.boot_mode(), BootMode::Firmware { .. }) || self.firmware == Firmware::Describe
    }

    /// What `--firmware=list`, `--firmware-features=list` or `--firmware=describe` print on
    /// standard output instead of starting a VM; `None` for a VM. Needs no kernel or image.
    pub fn informational(&self, host: &Host) -> Result<Option<String>, Failure> {
        let lines = |items: Vec<String>| items.iter().map(|i| format!("{i}\n")).collect();
        match self.listing {
            Some(Listing::Firmware) => {
                let paths = firmware::list(&host.firmware_search);
                return Ok(Some(lines(
                    paths.iter().map(|p| p.display().to_string()).collect(),
                )));
            }
            Some(Listing::Features) => {
                return Ok(Some(lines(firmware::all_features(&host.firmware_search))));
            }
            None => {}
        }
        if self.firmware != Firmware::Describe {
            return Ok(None);
        }
        let selection = self.select_firmware(host)?;
        if let (Some(theirs), firmware::SmmSupport::Unavailable(why)) =
            (selection.vmspawn_choice(), &host.smm)
        {
            eprintln!(
                "Note: systemd-vmspawn would choose '{}', which requires SMM; {why}, so it was \
                 passed over.",
                theirs.display()
            );
        }
        let json = serde_json::to_string_pretty(&selection.chosen.descriptor.raw)
            .expect("a JSON value serializes");
        Ok(Some(format!("{json}\n")))
    }

    /// vmspawn's selection over the search path, with the reasons at debug level.
    fn select_firmware(&self, host: &Host) -> Result<firmware::Selection, Failure> {
        let selection = firmware::select(&host.firmware_search, &self.firmware_request, &host.smm)?;
        if host.debug {
            for skipped in &selection.skipped {
                eprintln!(
                    "Skipping firmware definition {}: {}.",
                    skipped.path.display(),
                    skipped.reason
                );
            }
            eprintln!(
                "Selected firmware definition {}.",
                selection.chosen.descriptor.path.display()
            );
        }
        Ok(selection)
    }

    /// For a firmware boot: the firmware (the `--firmware=` descriptor, or vmspawn's choice),
    /// its files checked, and the EFI variable store opened (created beside the image or
    /// directory when `--efi-nvram-state=auto` finds none). `None` for a direct boot.
    /// Assumes [`Settings::check`] passed. Touches no KVM, so a missing firmware package is
    /// reported before any VM exists.
    pub fn firmware_boot(&self, host: &Host) -> Result<Option<vmm::FirmwareBoot>, Failure> {
        let BootMode::Firmware { kernel } = self.boot_mode() else {
            // Accepted as vmspawn accepts them, but a direct boot has no variable store: say
            // so rather than ignore them silently.
            if !self.quiet
                && (self.efi_nvram_template.is_some()
                    || self.efi_nvram_state != NvramState::Auto
                    || self.firmware_request != firmware::Request::default())
            {
                eprintln!(
                    "--efi-nvram-template=, --efi-nvram-state=, --firmware-features= and \
                     --secure-boot= apply to firmware boots only; this kernel boots directly \
                     (--firmware=uefi boots it through the firmware)."
                );
            }
            return Ok(None);
        };
        let chosen = match &self.firmware {
            Firmware::Descriptor(path) => firmware::load(path, &host.smm)?,
            _ => self.select_firmware(host)?.chosen,
        };
        let template = self.efi_nvram_template.as_deref();
        chosen.check_files(template)?;
        // An ephemeral run keeps nothing: auto is off, as in vmspawn.
        let state = match &self.efi_nvram_state {
            NvramState::Auto if self.ephemeral => NvramState::Off,
            other => other.clone(),
        };
        let vars = firmware::nvram::open_state(
            template.unwrap_or(&chosen.vars_template),
            &state,
            self.image.as_deref().or(self.directory.as_deref()),
        )?;
        if host.debug {
            let store = match &vars.path {
                Some(path) => format!("'{}'", path.display()),
                None => "a private copy".to_owned(),
            };
            eprintln!(
                "Booting firmware {} ({}), EFI variables in {store}.",
                chosen.code.display(),
                chosen.descriptor.path.display()
            );
        }
        Ok(Some(vmm::FirmwareBoot {
            code: chosen.code,
            vars,
            descriptor: chosen.descriptor.path,
            kernel_through_firmware: kernel,
            smm: chosen.smm,
        }))
    }

    /// The name given with -M, or vmspawn's default: the image file name without `.raw`,
    /// the directory's name, or the host name when booting `/`.
    ///
    /// `--linux` alone is our extension. vmspawn without an image or directory boots the
    /// current directory and is named after it, so that name is kept, cleaned up into a
    /// host name; when nothing usable is left (e.g. in `/`) the VM is called "rvmspawn",
    /// since a VM without a root file system has no better name.
    pub fn machine_name(&self, host: &Host) -> Result<String, Failure> {
        let name = self.base_machine_name(host)?;
        // vmspawn's ephemeral runs are told apart by a random suffix.
        Ok(if self.ephemeral {
            format!("{name}-{:016x}", random_u64())
        } else {
            name
        })
    }

    fn base_machine_name(&self, host: &Host) -> Result<String, Failure> {
        if let Some(name) = &self.machine {
            return Ok(name.clone());
        }
        let file_name = |p: &Path| {
            p.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        let raw = if let Some(image) = &self.image {
            let name = file_name(image);
            name.strip_suffix(".raw").unwrap_or(&name).to_owned()
        } else if let Some(directory) = &self.directory {
            if directory == Path::new("/") {
                host.hostname.clone()
            } else {
                file_name(directory)
            }
        } else {
            let name = hostname_cleanup(&file_name(&host.cwd));
            return Ok(if hostname_is_valid(&name) {
                name
            } else {
                FALLBACK_NAME.to_owned()
            });
        };
        let name = hostname_cleanup(&raw);
        if hostname_is_valid(&name) {
            Ok(name)
        } else {
            Err(Failure::new(
                libc::EINVAL,
                "Failed to determine machine name automatically, please use -M.",
            ))
        }
    }

    /// Fails early, with the file named, instead of after the VM has been set up.
    pub fn check_files(&self) -> Result<(), Failure> {
        if let Some(kernel) = &self.linux {
            check_readable_file("kernel", kernel)?;
        }
        for initrd in &self.initrds {
            check_readable_file("initrd", initrd)?;
        }
        if let Some(image) = &self.image {
            check_image(image)?;
        }
        if let Some(dir) = &self.directory {
            check_directory("directory", dir)?;
            if self.linux.is_none() && self.boot_entry.get().is_none() {
                let entry = vmm::bls::find_boot_entry(dir).map_err(|e| {
                    Failure::new(
                        e.errno(),
                        format!("{e}. Please specify the kernel with --linux=."),
                    )
                })?;
                let _ = self.boot_entry.set(entry);
            }
        }
        for b in &self.binds {
            check_directory("bind mount source", &b.source)?;
        }
        Ok(())
    }

    /// The directories shared with the guest, with vmspawn's tags: `root` for
    /// `--directory=`, then `mnt0`, `mnt1`, ... for the bind mounts in order.
    pub fn shares(&self) -> Vec<vmm::FsShare> {
        let root = self.directory.iter().map(|dir| vmm::FsShare {
            tag: ROOT_TAG.to_owned(),
            source: dir.clone(),
            read_only: false,
            id_map: match self.private_users {
                Some(r) => Some(vmm::IdMap {
                    shift: r.shift,
                    count: r.count,
                }),
                // vmspawn's default: guest root owns what the directory's owner owns.
                None => owner_uid(dir)
                    .filter(|uid| *uid != 0)
                    .map(|shift| vmm::IdMap {
                        shift,
                        count: DEFAULT_UID_RANGE,
                    }),
            },
            ephemeral: self.ephemeral,
        });
        let binds = self.binds.iter().enumerate().map(|(j, b)| vmm::FsShare {
            tag: format!("mnt{j}"),
            source: b.source.clone(),
            read_only: b.read_only,
            id_map: None,
            ephemeral: false,
        });
        root.chain(binds).collect()
    }

    /// vmspawn's `fstab.extra` lines for the bind mounts: `mntJ DEST virtiofs rw|ro,
    /// x-initrd.mount`, which systemd's fstab generator in the guest mounts.
    fn fstab_extra(&self) -> String {
        self.binds
            .iter()
            .enumerate()
            .map(|(j, b)| {
                format!(
                    "mnt{j} {} virtiofs {},x-initrd.mount\n",
                    fstab_escape(&b.target.to_string_lossy()),
                    if b.read_only { "ro" } else { "rw" }
                )
            })
            .collect()
    }

    /// The SMBIOS type 11 strings for the guest: each credential as
    /// `io.systemd.credential.binary:ID=BASE64`, exactly as systemd-vmspawn passes them, then
    /// the `--smbios11=` strings. Reads `--load-credential=` files (relative paths from the
    /// working directory) and our own credentials from `$CREDENTIALS_DIRECTORY`.
    ///
    /// The bind mounts' `fstab.extra` lines are appended to a user-given `fstab.extra`
    /// credential, or become one of their own after the user's credentials.
    pub fn oem_strings(&self) -> Result<Vec<String>, Failure> {
        use base64::Engine;
        let mut strings = Vec::with_capacity(self.credentials.len() + self.smbios11.len() + 1);
        let mut fstab = Some(self.fstab_extra()).filter(|f| !f.is_empty());
        for c in &self.credentials {
            let read = |path: &Path| {
                fs::read(path).map_err(|e| {
                    Failure::io(
                        format!(
                            "Failed to read credential '{}' from '{}'",
                            c.id,
                            path.display()
                        ),
                        &e,
                    )
                })
            };
            let data = match &c.data {
                CredentialData::Value(v) => v.clone(),
                CredentialData::File(path) => read(path)?,
                CredentialData::Inherited(name) => {
                    let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") else {
                        return Err(Failure::new(
                            libc::ENXIO,
                            format!(
                                "Failed to read credential '{}': '{name}' names one of our own \
                                 credentials, but $CREDENTIALS_DIRECTORY is not set",
                                c.id
                            ),
                        ));
                    };
                    read(&Path::new(&dir).join(name))?
                }
            };
            let data = match (c.id.as_str(), fstab.take()) {
                (FSTAB_EXTRA, Some(ours)) => merge_lines(data, &ours),
                (_, ours) => {
                    fstab = ours;
                    data
                }
            };
            strings.push(format!(
                "io.systemd.credential.binary:{}={}",
                c.id,
                base64::engine::general_purpose::STANDARD.encode(data)
            ));
        }
        if let Some(ours) = fstab {
            strings.push(format!(
                "io.systemd.credential.binary:{FSTAB_EXTRA}={}",
                base64::engine::general_purpose::STANDARD.encode(ours)
            ));
        }
        strings.extend(self.smbios11.iter().cloned());
        Ok(strings)
    }

    /// Assumes [`Settings::check`] passed, and [`Settings::check_files`] too for a directory
    /// without `--linux=`; `firmware` comes from [`Settings::firmware_boot`]. Decides nothing
    /// about KVM: the caller says where it comes from. When the firmware boots the image, the
    /// kernel is an empty path.
    pub fn into_vm_config(
        self,
        name: String,
        kvm: vmm::KvmSource,
        oem_strings: Vec<String>,
        firmware: Option<vmm::FirmwareBoot>,
    ) -> vmm::VmConfig {
        let shares = self.shares();
        let tpm_state = self.tpm_state();
        let console_mode = self.console_mode();
        // Accepted as vmspawn accepts it, but there is no TPM to keep a state for: say so
        // rather than ignore it silently.
        if self.tpm == Some(false) && self.tpm_state != vmm::TpmState::Auto && !self.quiet {
            eprintln!("--tpm-state= has no effect with --tpm=no: the VM has no TPM.");
        }
        let (kernel, initrds) = match (self.linux, self.boot_entry.into_inner()) {
            (Some(kernel), _) => (kernel, self.initrds),
            // As vmspawn, the entry's kernel and initrds but not its options: a Type #1 entry's
            // options name the installed system's root (root=UUID=...), not the VM's, and a
            // UKI's .cmdline is read by the loader anyway.
            (None, Some(entry)) => (
                held_open(entry.kernel_file),
                entry.initrd_files.into_iter().map(held_open).collect(),
            ),
            // An image without a kernel: the firmware boots it (check() requires --linux=,
            // --directory= or --image=, and check_files() finds the directory's kernel).
            (None, None) => (PathBuf::new(), Vec::new()),
        };
        vmm::VmConfig {
            name,
            vcpus: self.vcpus,
            mem_bytes: self.mem_bytes,
            kernel,
            initrds,
            // From the environment: prepare() fills it in from the Host.
            kernel_extraction: vmm::KernelExtraction::default(),
            // vmspawn's root for --directory=, after the user's arguments, where vmspawn puts
            // it (the kernel takes the last root=, so these win).
            extra_cmdline: self
                .kernel_args
                .iter()
                .cloned()
                .chain(
                    self.directory
                        .iter()
                        .flat_map(|_| DIRECTORY_ROOT_ARGS.iter().map(|a| a.to_string())),
                )
                .collect(),
            shares,
            kvm,
            // virtiofsd maps guest memory, so it must be shareable (a memfd).
            shared_memory: self.directory.is_some() || !self.binds.is_empty(),
            disks: self
                .image
                .into_iter()
                .map(|path| (path, true))
                .chain(self.extra_drives.into_iter().map(|path| (path, false)))
                .map(|(path, root)| vmm::DiskConfig {
                    path,
                    root,
                    discard: self.discard_disk,
                    ephemeral: self.ephemeral,
                })
                .collect(),
            uuid: self.uuid,
            oem_strings,
            vsock: vmm::VsockConfig {
                mode: match self.vsock {
                    None => vmm::VsockMode::Auto,
                    Some(true) => vmm::VsockMode::Yes,
                    Some(false) => vmm::VsockMode::No,
                },
                cid: self.vsock_cid,
                vhost_fd: None,
            },
            quiet: self.quiet,
            notify_ready: self.notify_ready,
            firmware,
            network: self.network,
            tpm: tpm_config(self.tpm, tpm_state),
            console: vmm::ConsoleConfig {
                mode: console_mode,
                transport: self.console_transport,
                // prepare() fills it in from the Host.
                term: None,
            },
            // As does this.
            stop_timeout: DEFAULT_STOP_TIMEOUT,
            ssh_key: self.ssh_key,
            forward_journal: self.forward_journal,
            register: self.register,
        }
    }

    /// `--console=`, or `--qemu-gui` after the last `--console=`.
    pub fn console_mode(&self) -> vmm::ConsoleMode {
        self.console
    }

    /// `--tpm-state=` with `auto` resolved: `<image-or-dir>.tpmstate` beside the `-i` image or
    /// the `-D` directory (a trailing slash does not count), `off` with neither (`--linux=`
    /// alone), as vmspawn does. `-D /` has no name to put the state beside: `off` too.
    pub fn tpm_state(&self) -> vmm::TpmState {
        if self.tpm_state != vmm::TpmState::Auto {
            return self.tpm_state.clone();
        }
        // An ephemeral run keeps nothing: auto is off, as in vmspawn.
        if self.ephemeral {
            return vmm::TpmState::Off;
        }
        let beside = self.image.as_deref().or(self.directory.as_deref());
        // Path::file_name skips a trailing slash.
        match beside.and_then(|b| Some((b, b.file_name()?))) {
            Some((beside, name)) => {
                let mut name = name.to_owned();
                name.push(TPM_STATE_SUFFIX);
                vmm::TpmState::Path(beside.with_file_name(name))
            }
            None => vmm::TpmState::Off,
        }
    }
}

/// What `--tpm-state=auto` appends to the image's or directory's name.
pub const TPM_STATE_SUFFIX: &str = ".tpmstate";

/// `--tpm=` (`None`: auto) and the resolved state as the VMM takes them.
fn tpm_config(tpm: Option<bool>, state: vmm::TpmState) -> vmm::TpmConfig {
    vmm::TpmConfig {
        mode: match tpm {
            None => vmm::TpmMode::Auto,
            Some(true) => vmm::TpmMode::Yes,
            Some(false) => vmm::TpmMode::No,
        },
        state,
    }
}

/// `--firmware=`, `--firmware-features=` and `--secure-boot=` in command-line order: the last
/// `--firmware=` wins, the feature options add to and take from the request as they come
/// (`--firmware-features=` clears it), and the first `list` ends the processing, as vmspawn
/// prints the list as soon as it meets it (unlike vmspawn, rvmspawn has checked every other
/// option's value by then).
fn firmware_options(
    options: &[(FirmwareOption, OsString)],
    cwd: &Path,
) -> Result<(Firmware, firmware::Request, Option<Listing>), Failure> {
    let mut chosen = Firmware::Auto;
    let mut request = firmware::Request::default();
    let utf8 = |option: &str, value: &OsString| {
        value
            .to_str()
            .map(str::to_owned)
            .ok_or_else(|| Failure::value(option, shown(value), Invalid::syntax("not valid UTF-8")))
    };
    for (option, value) in options {
        match option {
            FirmwareOption::Firmware => match parse::parse_firmware(value, cwd)
                .map_err(|why| Failure::value("firmware", shown(value), why))?
            {
                Firmware::List => return Ok((chosen, request, Some(Listing::Firmware))),
                other => chosen = other,
            },
            FirmwareOption::Features => {
                let spec = utf8("firmware-features", value)?;
                if spec == "list" {
                    return Ok((chosen, request, Some(Listing::Features)));
                }
                request.add_features(&spec);
            }
            FirmwareOption::SecureBoot => {
                let text = utf8("secure-boot", value)?;
                let secure_boot = parse::parse_tristate(&text)
                    .map_err(|why| Failure::value("secure-boot", shown(value), why))?;
                request.set_secure_boot(secure_boot);
            }
        }
    }
    Ok((chosen, request, None))
}

/// Rounds up to whole MiB, as vmspawn does when it passes the size to QEMU, which also
/// keeps guest RAM page-aligned.
fn guest_memory(bytes: u64, host_bytes: u64) -> Result<u64, Invalid> {
    let too_big = || {
        Invalid::range(format!(
            "more than the host's {}M of memory",
            host_bytes / MIB
        ))
    };
    let rounded = bytes.div_ceil(MIB).checked_mul(MIB).ok_or_else(too_big)?;
    if rounded < MIN_MEM {
        return Err(Invalid::range(format!(
            "a guest needs at least {}M of memory",
            MIN_MEM / MIB
        )));
    }
    if rounded > host_bytes {
        return Err(too_big());
    }
    Ok(rounded)
}

fn check_readable_file(what: &str, path: &Path) -> Result<(), Failure> {
    let context = || format!("Failed to open {what} '{}'", path.display());
    let fail = |errno| Failure::io(context(), &io::Error::from_raw_os_error(errno));
    // stat() before open(), because opening a FIFO would block.
    let kind = fs::metadata(path)
        .map_err(|e| Failure::io(context(), &e))?
        .file_type();
    if kind.is_dir() {
        return Err(fail(libc::EISDIR));
    }
    if kind.is_fifo() || kind.is_socket() || kind.is_char_device() || kind.is_block_device() {
        return Err(Failure::new(
            libc::EINVAL,
            format!("{}: not a regular file", context()),
        ));
    }
    fs::File::open(path).map_err(|e| Failure::io(context(), &e))?;
    Ok(())
}

/// A path that opens `file` again, for the VMM, which opens the kernel and initrds by path on
/// every boot, reboots included. A boot entry's files are in the guest's tree, which the guest
/// can write to over virtio-fs: by a reboot, its path could be a symbolic link to any host file.
/// `/proc/self/fd/N` reopens the file that was found, whatever happens to the tree, so the fd
/// stays open for the life of the process.
fn held_open(file: fs::File) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", file.into_raw_fd()))
}

/// The virtio-fs tag of `--directory=`, which the kernel mounts as `root=root`.
const ROOT_TAG: &str = "root";
/// What vmspawn puts on the kernel command line for `--directory=`.
const DIRECTORY_ROOT_ARGS: [&str; 3] = ["root=root", "rootfstype=virtiofs", "rw"];
/// vmspawn's UID range when it maps the directory's owner to guest root.
const DEFAULT_UID_RANGE: u32 = 0x10000;
/// The credential systemd's fstab generator reads extra mounts from.
const FSTAB_EXTRA: &str = "fstab.extra";

fn owner_uid(path: &Path) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(path).ok().map(|m| m.uid())
}

/// fstab's field escaping: blanks, newlines and backslashes as octal escapes.
fn fstab_escape(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            ' ' | '\t' | '\n' | '\\' => format!("\\{:03o}", c as u32),
            c => c.to_string(),
        })
        .collect()
}

/// `ours` after the user's `data`, on a line of its own.
fn merge_lines(mut data: Vec<u8>, ours: &str) -> Vec<u8> {
    if !data.is_empty() && !data.ends_with(b"\n") {
        data.push(b'\n');
    }
    data.extend_from_slice(ours.as_bytes());
    data
}

/// A shared directory must be a directory; virtiofsd serves nothing else.
fn check_directory(what: &str, path: &Path) -> Result<(), Failure> {
    let context = || format!("Failed to open {what} '{}'", path.display());
    let meta = fs::metadata(path).map_err(|e| Failure::io(context(), &e))?;
    if !meta.is_dir() {
        return Err(Failure::io(
            context(),
            &io::Error::from_raw_os_error(libc::ENOTDIR),
        ));
    }
    Ok(())
}

/// A disk image must be a regular file or a block device; the VMM opens and locks it.
fn check_image(path: &Path) -> Result<(), Failure> {
    let context = || format!("Failed to open disk image '{}'", path.display());
    let kind = fs::metadata(path)
        .map_err(|e| Failure::io(context(), &e))?
        .file_type();
    if kind.is_dir() {
        return Err(Failure::io(
            context(),
            &io::Error::from_raw_os_error(libc::EISDIR),
        ));
    }
    if !kind.is_file() && !kind.is_block_device() {
        return Err(Failure::new(
            libc::EINVAL,
            format!("{}: not a regular file or block device", context()),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::CredentialData;

    const EINVAL: i32 = libc::EINVAL;
    const ERANGE: i32 = libc::ERANGE;
    const EOPNOTSUPP: i32 = libc::EOPNOTSUPP;

    fn host() -> Host {
        Host {
            cwd: "/home/u".into(),
            mem_bytes: 8 << 30,
            hostname: "hosty".into(),
            firmware_search: firmware::SearchPath { dirs: Vec::new() },
            debug: false,
            network_mac: None,
            kernel_extraction: vmm::KernelExtraction::Off,
            term: None,
            stop_timeout: DEFAULT_STOP_TIMEOUT,
            smm: firmware::SmmSupport::Unavailable("this test host has no SMM".into()),
        }
    }

    #[test]
    fn stop_timeout_comes_from_the_environment() {
        use std::time::Duration;
        assert_eq!(stop_timeout(None).unwrap(), DEFAULT_STOP_TIMEOUT);
        assert_eq!(stop_timeout(Some(OsStr::new("0"))).unwrap(), Duration::ZERO);
        assert_eq!(
            stop_timeout(Some(OsStr::new("2.5"))).unwrap(),
            Duration::from_millis(2500)
        );
        for bad in ["", "-1", "nan", "inf", "1e9", "soon"] {
            let e = stop_timeout(Some(OsStr::new(bad))).unwrap_err();
            assert_eq!(e.errno, libc::EINVAL, "{bad}");
            assert!(e.message.contains("RVMSPAWN_STOP_TIMEOUT"), "{}", e.message);
        }
    }

    #[test]
    fn kernel_extraction_comes_from_the_environment() {
        let on = |cache: &str| vmm::KernelExtraction::On {
            cache: Some(PathBuf::from(cache)),
        };
        let home = Some(Path::new("/home/u"));
        let xdg = Some(Path::new("/x/cache"));
        // XDG_CACHE_HOME wins, for root too; then /var/cache for root, ~/.cache for others.
        assert_eq!(
            kernel_extraction(None, xdg, home, true),
            Ok(on("/x/cache/rvmspawn"))
        );
        assert_eq!(
            kernel_extraction(None, None, home, true),
            Ok(on("/var/cache/rvmspawn"))
        );
        assert_eq!(
            kernel_extraction(None, None, home, false),
            Ok(on("/home/u/.cache/rvmspawn"))
        );
        // Relative paths are ignored, as the XDG spec says; with nothing left, no cache.
        assert_eq!(
            kernel_extraction(None, Some(Path::new("rel")), Some(Path::new("h")), false),
            Ok(vmm::KernelExtraction::On { cache: None })
        );
        for yes in ["1", "yes", "true", "on"] {
            assert_eq!(
                kernel_extraction(Some(OsStr::new(yes)), None, home, false),
                Ok(on("/home/u/.cache/rvmspawn"))
            );
        }
        for no in ["0", "no", "false", "off"] {
            assert_eq!(
                kernel_extraction(Some(OsStr::new(no)), xdg, home, false),
                Ok(vmm::KernelExtraction::Off)
            );
        }
        let e = kernel_extraction(Some(OsStr::new("maybe")), None, home, false).unwrap_err();
        assert_eq!(e.errno, EINVAL);
        assert_eq!(
            e.message,
            "Failed to parse $RVMSPAWN_EXTRACT_KERNEL value 'maybe': expected a boolean"
        );
    }

    fn settings_on(host: &Host, argv: &[&str]) -> Result<Settings, Failure> {
        let args = Args::try_parse_from(std::iter::once("rvmspawn").chain(argv.iter().copied()))
            .expect("clap accepts the command line");
        Settings::from_args(args, host)
    }

    fn settings(argv: &[&str]) -> Result<Settings, Failure> {
        settings_on(&host(), argv)
    }

    /// Parses and checks, stopping before the files.
    fn checked(argv: &[&str]) -> Result<Settings, Failure> {
        let s = settings(argv)?;
        s.check()?;
        Ok(s)
    }

    fn failure(argv: &[&str]) -> Failure {
        checked(argv).expect_err("should have been refused")
    }

    fn vm_config(argv: &[&str]) -> vmm::VmConfig {
        let host = host();
        let s = checked(argv).expect("valid");
        let name = s.machine_name(&host).expect("named");
        s.into_vm_config(name, vmm::KvmSource::Open, Vec::new(), None)
    }

    #[test]
    fn extra_drives_follow_the_image_and_share_its_discard_setting() {
        let c = vm_config(&[
            "--linux=/k",
            "-i",
            "/root.raw",
            "--extra-drive=/a.raw",
            "--extra-drive=raw:b.raw",
            "--discard-disk=no",
        ]);
        let disks: Vec<(&str, bool, bool)> = c
            .disks
            .iter()
            .map(|d| (d.path.to_str().unwrap(), d.root, d.discard))
            .collect();
        assert_eq!(
            disks,
            [
                ("/root.raw", true, false),
                ("/a.raw", false, false),
                ("/home/u/b.raw", false, false)
            ]
        );
        assert!(vm_config(&["--linux=/k", "-i", "/r"]).disks[0].discard);
        let e = settings(&["--linux=/k", "--extra-drive=qcow2:/x"]).unwrap_err();
        assert_eq!(e.errno, EOPNOTSUPP);
        assert!(
            e.message.contains("--extra-drive= value 'qcow2:/x'"),
            "{}",
            e.message
        );
        assert_eq!(
            settings(&["--linux=/k", "--discard-disk=maybe"])
                .unwrap_err()
                .errno,
            EINVAL
        );
    }

    #[test]
    fn grow_image_rounds_up_and_grows_only_a_smaller_file() {
        let s = settings(&["--linux=/k", "-G", "10000"]).unwrap();
        assert_eq!(s.grow_image, Some(12288));
        assert_eq!(
            settings(&["--linux=/k", "--grow-image=1G"])
                .unwrap()
                .grow_image,
            Some(1 << 30)
        );
        assert_eq!(
            settings(&["--linux=/k", "-G", "lots"]).unwrap_err().errno,
            EINVAL
        );
        let dir = std::env::temp_dir().join(format!("rvmspawn-grow-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let img = dir.join("img.raw");
        fs::write(&img, vec![7u8; 5000]).unwrap();
        let with = |size: &str| {
            settings(&["-q", "--linux=/k", "-i", img.to_str().unwrap(), "-G", size]).unwrap()
        };
        with("8K").grow_image_file().unwrap();
        assert_eq!(fs::metadata(&img).unwrap().len(), 8192);
        // Never shrinks; the data stays.
        with("4K").grow_image_file().unwrap();
        assert_eq!(fs::metadata(&img).unwrap().len(), 8192);
        assert_eq!(fs::read(&img).unwrap()[..5000], [7u8; 5000]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn ephemeral_runs_get_a_random_name_suffix_an_overlay_and_keep_no_state() {
        let host = host();
        let s = checked(&["--linux=/k", "-x", "-i", "/srv/os.raw"]).unwrap();
        let (a, b) = (
            s.machine_name(&host).unwrap(),
            s.machine_name(&host).unwrap(),
        );
        for name in [&a, &b] {
            let (base, suffix) = name.split_at(name.len() - 17);
            assert_eq!(base, "os");
            assert!(suffix.starts_with('-') && suffix[1..].bytes().all(|c| c.is_ascii_hexdigit()));
        }
        assert_ne!(a, b, "random");
        assert_eq!(s.tpm_state(), vmm::TpmState::Off, "auto keeps nothing");
        let c = vm_config(&["--linux=/k", "--ephemeral", "-i", "/srv/os.raw"]);
        assert!(c.disks[0].ephemeral);
        assert!(!vm_config(&["--linux=/k", "-i", "/srv/os.raw"]).disks[0].ephemeral);
        let c = vm_config(&["--linux=/k", "-x", "-D", "/srv/tree", "--bind=/srv/b:/b"]);
        assert!(c.shares[0].ephemeral && !c.shares[1].ephemeral);
        // A state given explicitly is still used.
        let s = checked(&["--linux=/k", "-x", "-i", "/o.raw", "--tpm-state=/st"]).unwrap();
        assert_eq!(s.tpm_state(), vmm::TpmState::Path("/st".into()));
        // vmspawn's refusals.
        for argv in [
            &["--linux=/k", "-x", "-i", "/o.raw", "--extra-drive=/e.raw"][..],
            &["--linux=/k", "-x"],
            &["--linux=/k", "-x", "-i", "/o.raw", "-G", "8G"],
        ] {
            assert_eq!(failure(argv).errno, EINVAL, "{argv:?}");
        }
    }

    #[test]
    fn options_that_need_what_rvmspawn_lacks_are_refused_by_name() {
        for (argv, name) in [
            (&["-S", "machine.slice"][..], "-S/--slice="),
            (&["--property=CPUQuota=50%"], "--property="),
            (&["--system"], "--system"),
            (&["--user"], "--user"),
        ] {
            let mut full = vec!["--linux=/k"];
            full.extend_from_slice(argv);
            let e = checked(&full).unwrap_err();
            assert_eq!(e.errno, EOPNOTSUPP, "{argv:?}");
            assert!(e.message.starts_with(name), "{argv:?}: {}", e.message);
        }
        // What is accepted: the settings rvmspawn already has.
        for ok in [
            "--pass-ssh-key=no",
            "--pass-ssh-key=yes",
            "--ssh-key-type=rsa",
            "--register=no",
            "--register=auto",
            "--register=yes",
            "--keep-unit",
            "--background=48;2;0;40;0",
            "--background=",
        ] {
            checked(&["--linux=/k", ok]).unwrap_or_else(|e| panic!("{ok}: {}", e.message));
        }
        assert_eq!(
            settings(&["--linux=/k", "--register=perhaps"])
                .unwrap_err()
                .errno,
            EINVAL
        );
        assert_eq!(
            settings(&["--linux=/k", "--ssh-key-type=dsa"])
                .unwrap_err()
                .errno,
            EINVAL
        );
        // The SSH key: vmspawn's default (yes, ed25519), a failure then only a notice.
        let key = |argv: &[&str]| settings(argv).unwrap().ssh_key;
        assert_eq!(
            key(&["--linux=/k"]),
            Some(vmm::SshKeyConfig {
                key_type: "ed25519".into(),
                required: false
            })
        );
        assert_eq!(
            key(&["--linux=/k", "--pass-ssh-key=yes", "--ssh-key-type=rsa"]),
            Some(vmm::SshKeyConfig {
                key_type: "rsa".into(),
                required: true
            })
        );
        assert_eq!(key(&["--linux=/k", "--pass-ssh-key=no"]), None);
        assert_eq!(
            settings(&["--linux=/k", "--background=green"])
                .unwrap_err()
                .errno,
            EINVAL
        );
    }

    #[test]
    fn defaults() {
        let c = vm_config(&["--linux=/boot/vmlinuz"]);
        assert_eq!(c.name, "u");
        assert_eq!(c.vcpus, 1);
        assert_eq!(c.mem_bytes, 2 << 30);
        assert_eq!(c.kernel, Path::new("/boot/vmlinuz"));
        assert!(c.initrds.is_empty());
        assert!(c.extra_cmdline.is_empty());
        assert!(matches!(c.kvm, vmm::KvmSource::Open));
    }

    #[test]
    fn everything_supported() {
        let c = vm_config(&[
            "-q",
            "--no-pager",
            "--qemu-smp=4",
            "--qemu-mem=1.5G",
            "--qemu-kvm=yes",
            "--qemu-vsock=auto",
            "--vsock-cid=",
            "--tpm=no",
            "--firmware=",
            "--secure-boot=",
            "--linux",
            "vmlinuz",
            "--initrd=/b/one.img",
            "--initrd",
            "two.img",
            "-M",
            "test-vm",
            "console=ttyS0",
            "--",
            "-x",
        ]);
        assert_eq!(c.name, "test-vm");
        assert_eq!(c.vcpus, 4);
        assert_eq!(c.mem_bytes, 1536 * MIB);
        assert_eq!(c.kernel, Path::new("/home/u/vmlinuz"));
        assert_eq!(
            c.initrds,
            [Path::new("/b/one.img"), Path::new("/home/u/two.img")]
        );
        // Everything after the first argument belongs to the guest, like getopt's "+".
        assert_eq!(c.extra_cmdline, ["console=ttyS0", "--", "-x"]);
    }

    #[test]
    fn options_must_precede_kernel_arguments() {
        let c = vm_config(&["--linux=/k", "quiet", "-q", "--qemu-mem=1G"]);
        assert_eq!(c.extra_cmdline, ["quiet", "-q", "--qemu-mem=1G"]);
        assert_eq!(c.mem_bytes, 2 << 30);
        let c = vm_config(&["--linux=/k", "--", "--qemu-mem=1G"]);
        assert_eq!(c.extra_cmdline, ["--qemu-mem=1G"]);
    }

    #[test]
    fn last_occurrence_wins_but_all_are_checked() {
        let c = vm_config(&[
            "--linux=/k",
            "--qemu-mem=1G",
            "--qemu-mem=3G",
            "--qemu-smp=2",
        ]);
        assert_eq!(c.mem_bytes, 3 << 30);
        let f = failure(&["--linux=/k", "--qemu-mem=banana", "--qemu-mem=3G"]);
        assert_eq!(f.errno, EINVAL);
        // The host-size check only applies to the value that is used.
        let c = vm_config(&["--linux=/k", "--qemu-mem=100G", "--qemu-mem=1G"]);
        assert_eq!(c.mem_bytes, 1 << 30);
        // An empty value resets to the default.
        let c = vm_config(&["--linux=/a", "--linux=/b", "-M", "x", "-M", ""]);
        assert_eq!(c.kernel, Path::new("/b"));
        assert_eq!(c.name, "u");
    }

    #[test]
    fn memory_limits() {
        let mem = |v: &str| settings(&["--linux=/k", &format!("--qemu-mem={v}")]);
        assert_eq!(mem("64M").unwrap().mem_bytes, 64 * MIB);
        assert_eq!(mem("100000K").unwrap().mem_bytes, 98 * MIB);
        assert_eq!(mem("67108865").unwrap().mem_bytes, 65 * MIB);
        assert_eq!(mem("8G").unwrap().mem_bytes, 8 << 30);
        let f = mem("63M").unwrap_err();
        assert_eq!(f.errno, ERANGE);
        assert_eq!(
            f.message,
            "Failed to parse --qemu-mem= value '63M': a guest needs at least 64M of memory"
        );
        let f = mem("9G").unwrap_err();
        assert_eq!(f.errno, ERANGE);
        assert!(f.message.contains("8192M"), "{}", f.message);
        assert_eq!(mem("15E").unwrap_err().errno, ERANGE);
        assert_eq!(mem("18446744073709551615").unwrap_err().errno, ERANGE);
        assert_eq!(mem("16E").unwrap_err().errno, ERANGE);
        assert_eq!(mem("2g").unwrap_err().errno, EINVAL);
        // The default is not held against small hosts.
        let small = Host {
            mem_bytes: 1 << 30,
            ..host()
        };
        let s = settings_on(&small, &["--linux=/k"]).unwrap();
        assert_eq!(s.mem_bytes, 2 << 30);
    }

    #[test]
    fn value_errors_name_option_and_value() {
        let cases: [(&[&str], i32, &str); 21] = [
            (&["--console=tty"], EINVAL, "--console= value 'tty'"),
            (
                &["--console-transport=pci"],
                EINVAL,
                "--console-transport= value 'pci'",
            ),
            (
                &["--tpm-state=vm.tpm"],
                EINVAL,
                "--tpm-state= value 'vm.tpm'",
            ),
            (&["--tpm-state=maybe"], EINVAL, "--tpm-state= value 'maybe'"),
            (&["--qemu-mem=banana"], EINVAL, "--qemu-mem= value 'banana'"),
            (&["--qemu-smp=0"], ERANGE, "--qemu-smp= value '0'"),
            (&["--qemu-smp=2,sockets=2"], EINVAL, "--qemu-smp= value"),
            (&["--qemu-kvm=maybe"], EINVAL, "--qemu-kvm= value 'maybe'"),
            (&["--qemu-vsock=2"], EINVAL, "--qemu-vsock= value '2'"),
            (&["--vsock-cid=2"], ERANGE, "--vsock-cid= value '2'"),
            (&["--tpm=x"], EINVAL, "--tpm= value 'x'"),
            (
                &["--notify-ready=auto"],
                EINVAL,
                "--notify-ready= value 'auto'",
            ),
            (
                &["--firmware=ovmf.json"],
                EINVAL,
                "--firmware= value 'ovmf.json'",
            ),
            (&["--secure-boot=x"], EINVAL, "--secure-boot= value 'x'"),
            (
                &["--firmware=uefi", "--firmware=efi"],
                EINVAL,
                "--firmware= value 'efi'",
            ),
            (
                &["--efi-nvram-template=vars.fd"],
                EINVAL,
                "--efi-nvram-template= value 'vars.fd'",
            ),
            (
                &["--efi-nvram-state=vm.vars"],
                EINVAL,
                "--efi-nvram-state= value 'vm.vars'",
            ),
            (
                &["--firmware-features=x", "--secure-boot=maybe"],
                EINVAL,
                "--secure-boot= value 'maybe'",
            ),
            (&["-M", "a b"], EINVAL, "--machine= value 'a b'"),
            (&["--private-users=x"], EINVAL, "--private-users= value 'x'"),
            (&["--bind-ro=rel"], EINVAL, "--bind-ro= value 'rel'"),
        ];
        for (argv, errno, text) in cases {
            let mut argv = argv.to_vec();
            argv.push("--linux=/k");
            let f = settings(&argv).expect_err(text);
            assert_eq!(f.errno, errno, "{argv:?}");
            assert!(f.message.starts_with("Failed to parse "), "{}", f.message);
            assert!(f.message.contains(text), "{}", f.message);
        }
        let f = settings(&["--initrd="]).unwrap_err();
        assert_eq!(f.errno, EINVAL);
        assert!(f.message.contains("--initrd="), "{}", f.message);
    }

    #[test]
    fn parse_errors_come_before_refusals() {
        let f = failure(&["--linux=/k", "--bind=/a", "--vsock-cid=1"]);
        assert_eq!(f.errno, ERANGE);
        let f = failure(&["-D", "/a", "-i", "/b", "--qemu-mem=x"]);
        assert_eq!(f.errno, EINVAL);
        assert!(f.message.contains("--qemu-mem"), "{}", f.message);
    }

    #[test]
    fn option_combinations() {
        let f = failure(&["-D", "/srv/os", "-i", "/srv/os.raw"]);
        assert_eq!(f.errno, EINVAL);
        assert!(f.message.contains("--directory=") && f.message.contains("--image="));
        let f = failure(&["--initrd=/i"]);
        assert_eq!(f.errno, EINVAL);
        assert_eq!(f.message, "--initrd= requires --linux=.");
        let f = failure(&[]);
        assert_eq!(f.errno, EOPNOTSUPP);
        assert!(f.message.contains("--linux="), "{}", f.message);
        let f = failure(&["-M", "foo", "-q"]);
        assert_eq!(f.errno, EOPNOTSUPP);
        // A directory without a kernel: the kernel is looked up in it, with the files.
        checked(&["-D", "/srv/os"]).unwrap();
        // Initrds still need --linux=: a boot entry brings its own.
        let f = failure(&["-D", "/srv/os", "--initrd=/i"]);
        assert_eq!(f.message, "--initrd= requires --linux=.");
        let f = failure(&["--linux=/k", "--private-users=65536"]);
        assert_eq!(f.errno, EINVAL);
        assert_eq!(f.message, "--private-users= requires --directory=.");
        // An image without a kernel boots through UEFI firmware, which it cannot do without.
        checked(&["-i", "/srv/os.raw"]).unwrap();
        let f = failure(&["-i", "/srv/os.raw", "--firmware=none"]);
        assert_eq!(f.errno, EINVAL);
        assert_eq!(
            f.message,
            "--firmware=none requires --linux= to be specified."
        );
        checked(&["-i", "/srv/os.raw", "--firmware=none", "--linux=/k"]).unwrap();
        checked(&["-D", "/srv/os", "--firmware=none"]).unwrap();
    }

    #[test]
    fn firmware_refusals() {
        let f = failure(&["--linux=/k", "--firmware=bios"]);
        assert_eq!(f.errno, EOPNOTSUPP);
        assert!(
            f.message.starts_with("--firmware=bios is not supported"),
            "{}",
            f.message
        );
        // Secure Boot is for the firmware selection to grant or refuse (it needs SMM).
        for argv in [
            &["-i", "/os.raw", "--secure-boot=yes"][..],
            &["-i", "/os.raw", "--firmware-features=secure-boot"],
            &["--linux=/k", "--secure-boot=1"],
            &["-i", "/os.raw", "--secure-boot=no"],
            &["-i", "/os.raw", "--secure-boot=auto"],
            &["-i", "/os.raw", "--secure-boot=yes", "--secure-boot="],
            &["-i", "/os.raw", "--secure-boot=yes", "--firmware-features="],
        ] {
            checked(argv).unwrap();
        }
    }

    #[test]
    fn firmware_options_apply_in_command_line_order() {
        let set = |items: &[&str]| -> std::collections::BTreeSet<String> {
            items.iter().map(|s| s.to_string()).collect()
        };
        let s = settings(&[
            "--secure-boot=no",
            "--firmware-features=a,~b",
            "--firmware-features=c",
        ])
        .unwrap();
        assert_eq!(s.firmware_request.features_required, set(&["a", "c"]));
        assert_eq!(
            s.firmware_request.features_excluded,
            set(&["b", "enrolled-keys", "secure-boot"])
        );
        // "" forgets everything before it, the default exclusion too.
        let s = settings(&[
            "--secure-boot=no",
            "--firmware-features=",
            "--secure-boot=yes",
        ]);
        let r = s.unwrap().firmware_request;
        assert_eq!(r.features_required, set(&["secure-boot"]));
        assert!(r.features_excluded.is_empty());
        assert_eq!(
            settings(&[]).unwrap().firmware_request,
            firmware::Request::default()
        );
        // The last --firmware= wins; describe is a mode like the others.
        let s = settings(&["--firmware=describe", "--firmware=uefi"]).unwrap();
        assert_eq!((s.firmware, s.listing), (Firmware::Uefi, None));
        let s = settings(&["--firmware=./fw.json", "--firmware="]).unwrap();
        assert_eq!(s.firmware, Firmware::Auto);
        // The first list acts; what follows it is not looked at, as in vmspawn.
        let s = settings(&["--firmware-features=list", "--firmware=list"]).unwrap();
        assert_eq!(s.listing, Some(Listing::Features));
        let s = settings(&["--firmware=list", "--firmware=bad", "--secure-boot=bad"]).unwrap();
        assert_eq!(s.listing, Some(Listing::Firmware));
        // NVRAM options: last wins, auto by default.
        let s = settings(&["--efi-nvram-state=off", "--efi-nvram-state=./v"]).unwrap();
        assert_eq!(s.efi_nvram_state, NvramState::Path("/home/u/v".into()));
        assert_eq!(settings(&[]).unwrap().efi_nvram_state, NvramState::Auto);
        let s = settings(&["--efi-nvram-template=/t.fd"]).unwrap();
        assert_eq!(s.efi_nvram_template.as_deref(), Some(Path::new("/t.fd")));
    }

    #[test]
    fn boot_modes() {
        let mode = |argv: &[&str]| checked(argv).unwrap().boot_mode();
        let firmware = |kernel| BootMode::Firmware { kernel };
        assert_eq!(mode(&["-i", "/os.raw"]), firmware(false));
        assert_eq!(mode(&["-i", "/os.raw", "--firmware=uefi"]), firmware(false));
        assert_eq!(mode(&["--linux=/k"]), BootMode::Direct);
        assert_eq!(mode(&["--linux=/k", "--firmware=none"]), BootMode::Direct);
        assert_eq!(mode(&["--linux=/k", "-i", "/os.raw"]), BootMode::Direct);
        assert_eq!(mode(&["--linux=/k", "--firmware=uefi"]), firmware(true));
        assert_eq!(mode(&["--linux=/k", "--firmware=/fw.json"]), firmware(true));
        assert_eq!(mode(&["-D", "/srv/os"]), BootMode::Direct);
        assert_eq!(mode(&["-D", "/srv/os", "--firmware=uefi"]), firmware(true));
    }

    /// A descriptor directory with one usable firmware whose files exist.
    struct FirmwareTree {
        dir: PathBuf,
        host: Host,
    }

    impl FirmwareTree {
        fn new(tag: &str) -> FirmwareTree {
            let dir = temp_path(tag);
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(dir.join("descriptors")).unwrap();
            fs::write(dir.join("CODE.fd"), b"code").unwrap();
            fs::write(dir.join("VARS.fd"), vec![0xAA; 4096]).unwrap();
            let descriptor = |code: &str, features: &[&str]| {
                serde_json::json!({
                    "description": "test",
                    "interface-types": ["uefi"],
                    "mapping": {
                        "device": "flash",
                        "executable": {"filename": dir.join(code), "format": "raw"},
                        "nvram-template": {"filename": dir.join("VARS.fd"), "format": "raw"}
                    },
                    "targets": [{"architecture": "x86_64", "machines": ["pc-q35-*"]}],
                    "features": features,
                    "tags": []
                })
                .to_string()
            };
            let d = dir.join("descriptors");
            fs::write(
                d.join("50-smm.json"),
                descriptor("SMM.fd", &["requires-smm"]),
            )
            .unwrap();
            fs::write(d.join("60-ok.json"), descriptor("CODE.fd", &["acpi-s3"])).unwrap();
            fs::write(d.join("70-gone.json"), descriptor("GONE.fd", &["gone"])).unwrap();
            fs::write(dir.join("os.raw"), b"disk").unwrap();
            let host = Host {
                firmware_search: firmware::SearchPath {
                    dirs: vec![d.clone()],
                },
                ..host()
            };
            FirmwareTree { dir, host }
        }

        fn path(&self, name: &str) -> String {
            self.dir.join(name).display().to_string()
        }

        fn settings(&self, argv: &[&str]) -> Settings {
            let s = settings_on(&self.host, argv).unwrap();
            s.check().unwrap();
            s
        }
    }

    impl Drop for FirmwareTree {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }

    #[test]
    fn listings_need_nothing_to_boot() {
        let t = FirmwareTree::new("fw-list");
        let text = |argv: &[&str]| {
            settings_on(&t.host, argv)
                .unwrap()
                .informational(&t.host)
                .unwrap()
        };
        let d = t.dir.join("descriptors");
        assert_eq!(
            text(&["--firmware=list"]).unwrap(),
            format!(
                "{}\n{}\n{}\n",
                d.join("50-smm.json").display(),
                d.join("60-ok.json").display(),
                d.join("70-gone.json").display()
            )
        );
        assert_eq!(
            text(&["--firmware-features=list"]).unwrap(),
            "acpi-s3\ngone\nrequires-smm\n"
        );
        let json: serde_json::Value =
            serde_json::from_str(&text(&["--firmware=describe"]).unwrap()).unwrap();
        let chosen: serde_json::Value =
            serde_json::from_slice(&fs::read(d.join("60-ok.json")).unwrap()).unwrap();
        assert_eq!(json, chosen);
        // Features steer describe too.
        let json = text(&["--firmware-features=gone", "--firmware=describe"]).unwrap();
        assert!(json.contains("GONE.fd"), "{json}");
        assert_eq!(text(&["-i", "/os.raw"]), None);
    }

    #[test]
    fn firmware_boot_of_an_image() {
        let t = FirmwareTree::new("fw-image");
        let image = t.path("os.raw");
        let s = t.settings(&["-i", &image, "-M", "vm"]);
        let boot = s.firmware_boot(&t.host).unwrap().unwrap();
        assert_eq!(boot.code, t.dir.join("CODE.fd"));
        assert_eq!(boot.descriptor, t.dir.join("descriptors/60-ok.json"));
        assert!(!boot.kernel_through_firmware);
        assert_eq!(boot.vars.path, Some(t.dir.join("os.raw.efinvramstate")));
        assert_eq!(boot.vars.len, 4096);
        drop(boot);
        // The kernel path stays empty: the firmware boots the image.
        let s = t.settings(&["-i", &image, "-M", "vm", "--efi-nvram-state=off"]);
        let boot = s.firmware_boot(&t.host).unwrap();
        assert_eq!(boot.as_ref().unwrap().vars.path, None);
        let c = s.into_vm_config("vm".into(), vmm::KvmSource::Open, Vec::new(), boot);
        assert_eq!(c.kernel, PathBuf::new());
        assert!(c.initrds.is_empty());
        assert!(c.firmware.is_some());
        assert_eq!(c.disks[0].path, t.dir.join("os.raw"));
    }

    #[test]
    fn firmware_boot_variants() {
        let t = FirmwareTree::new("fw-variants");
        let image = t.path("os.raw");
        // A direct boot needs no firmware.
        let s = t.settings(&["--linux=/k", "-i", &image]);
        assert!(s.firmware_boot(&t.host).unwrap().is_none());
        // A kernel through the firmware, with another template and state file.
        fs::write(t.dir.join("MY_VARS.fd"), vec![0x55; 8192]).unwrap();
        let template = format!("--efi-nvram-template={}", t.path("MY_VARS.fd"));
        let state = format!("--efi-nvram-state={}", t.path("my.state"));
        let s = t.settings(&["--linux=/k", "--firmware=uefi", &template, &state]);
        let boot = s.firmware_boot(&t.host).unwrap().unwrap();
        assert!(boot.kernel_through_firmware);
        assert_eq!(boot.vars.len, 8192);
        assert_eq!(fs::read(t.dir.join("my.state")).unwrap(), vec![0x55; 8192]);
        // An explicit descriptor is used even when selection would pass it over.
        let gone = format!("--firmware={}", t.path("descriptors/70-gone.json"));
        let s = t.settings(&["-i", &image, &gone, "--efi-nvram-state=off"]);
        let f = s.firmware_boot(&t.host).unwrap_err();
        assert_eq!(f.errno, libc::ENOENT);
        assert_eq!(
            f.message,
            format!(
                "Failed to open firmware code '{}': No such file or directory",
                t.path("GONE.fd")
            )
        );
        // ... unless it needs SMM, which this host lacks.
        let smm = format!("--firmware={}", t.path("descriptors/50-smm.json"));
        let s = t.settings(&["-i", &image, &smm]);
        let f = s.firmware_boot(&t.host).unwrap_err();
        assert_eq!(f.errno, EOPNOTSUPP);
        assert!(f.message.contains("SMM"), "{}", f.message);
        // With SMM the Secure Boot firmware is vmspawn's first choice, and asks for SMM.
        fs::write(t.dir.join("SMM.fd"), b"code").unwrap();
        let with_smm = Host {
            smm: firmware::SmmSupport::Available,
            ..t.host.clone()
        };
        let s = settings_on(&with_smm, &["-i", &image, "--efi-nvram-state=off"]).unwrap();
        let boot = s.firmware_boot(&with_smm).unwrap().unwrap();
        assert_eq!(boot.code, t.dir.join("SMM.fd"));
        assert!(boot.smm);
        // Without: --secure-boot=yes fails with vmspawn's message and the reason.
        let s = t.settings(&["-i", &image, "--secure-boot=yes"]);
        let f = s.firmware_boot(&t.host).unwrap_err();
        assert_eq!(f.errno, EOPNOTSUPP);
        assert!(
            f.message.starts_with(
                "Secure Boot requested, but selected OVMF firmware doesn't support it."
            ) && f.message.contains("this test host has no SMM"),
            "{}",
            f.message
        );
        // Nothing matches: ENOENT, with the reasons.
        let s = t.settings(&["-i", &image, "--firmware-features=nothing-has-this"]);
        let f = s.firmware_boot(&t.host).unwrap_err();
        assert_eq!(f.errno, libc::ENOENT);
        assert!(
            f.message
                .contains("lacks required feature 'nothing-has-this'"),
            "{}",
            f.message
        );
    }

    #[test]
    fn directory_and_binds_become_shares_root_args_and_fstab_extra() {
        let dir = std::env::temp_dir().join(format!("rvmspawn-shares-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let d = dir.to_str().unwrap();
        let c = vm_config(&[
            "--linux=/k",
            "-D",
            d,
            "--bind=/srv/a b:/data",
            "--bind-ro=/srv/c",
            "--private-users=100000:1000",
            "quiet",
        ]);
        assert_eq!(
            c.extra_cmdline,
            ["quiet", "root=root", "rootfstype=virtiofs", "rw"]
        );
        assert!(c.shared_memory);
        assert_eq!(
            c.shares,
            [
                vmm::FsShare {
                    tag: "root".into(),
                    source: dir.clone(),
                    read_only: false,
                    id_map: Some(vmm::IdMap {
                        shift: 100000,
                        count: 1000
                    }),
                    ephemeral: false,
                },
                vmm::FsShare {
                    tag: "mnt0".into(),
                    source: "/srv/a b".into(),
                    read_only: false,
                    id_map: None,
                    ephemeral: false,
                },
                vmm::FsShare {
                    tag: "mnt1".into(),
                    source: "/srv/c".into(),
                    read_only: true,
                    id_map: None,
                    ephemeral: false,
                },
            ]
        );
        // Without --private-users a root-owned directory is shared as it is.
        let c = vm_config(&["--linux=/k", "-D", d]);
        assert_eq!(c.shares[0].id_map, None);
        // Without shares, private memory.
        assert!(!vm_config(&["--linux=/k"]).shared_memory);

        let decode = |s: &str| {
            use base64::Engine;
            let b64 = s
                .strip_prefix("io.systemd.credential.binary:fstab.extra=")
                .unwrap();
            String::from_utf8(
                base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .unwrap(),
            )
            .unwrap()
        };
        let ours =
            "mnt0 /data virtiofs rw,x-initrd.mount\nmnt1 /srv/c virtiofs ro,x-initrd.mount\n";
        let s = settings(&[
            "--linux=/k",
            "--bind=/srv/a b:/data",
            "--bind-ro=/srv/c",
            "-s",
            "x",
        ]);
        let strings = s.unwrap().oem_strings().unwrap();
        assert_eq!(strings.len(), 2);
        assert_eq!(decode(&strings[0]), ours);
        assert_eq!(strings[1], "x");
        // A user's fstab.extra keeps its place and gets our lines after its own.
        let s = settings(&[
            "--linux=/k",
            "--set-credential=a:1",
            "--set-credential=fstab.extra:/dev/vdb /srv ext4 defaults",
            "--set-credential=z:2",
            "--bind=/srv/a b:/data",
            "--bind-ro=/srv/c",
        ]);
        let strings = s.unwrap().oem_strings().unwrap();
        assert_eq!(strings.len(), 3);
        assert_eq!(
            decode(&strings[1]),
            format!("/dev/vdb /srv ext4 defaults\n{ours}")
        );
        // Blanks in a destination are escaped as fstab wants.
        let s = settings(&["--linux=/k", "--bind=/a:/my dir"]).unwrap();
        assert_eq!(
            decode(&s.oem_strings().unwrap()[0]),
            "mnt0 /my\\040dir virtiofs rw,x-initrd.mount\n"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    /// A tree with a Type #1 boot entry in /boot (see `boot::bls` for the rules).
    fn tree_with_entry(tag: &str) -> PathBuf {
        let dir = temp_path(tag);
        let _ = fs::remove_dir_all(&dir);
        let mut kernel = vec![0; 0x400];
        kernel[0x202..0x206].copy_from_slice(b"HdrS");
        fs::create_dir_all(dir.join("boot/loader/entries")).unwrap();
        fs::write(dir.join("boot/vmlinuz"), &kernel).unwrap();
        fs::write(dir.join("boot/initrd.img"), b"initrd").unwrap();
        fs::write(
            dir.join("boot/loader/entries/test.conf"),
            "linux /vmlinuz\ninitrd /initrd.img\noptions root=UUID=0000 quiet\n",
        )
        .unwrap();
        dir
    }

    #[test]
    fn directory_without_linux_boots_its_boot_entry() {
        let dir = tree_with_entry("bls");
        let d = dir.to_str().unwrap();
        let s = checked(&["-D", d, "-M", "vm", "systemd.unit=rescue.target"]).unwrap();
        s.check_files().unwrap();
        // Checking again does not look again.
        s.check_files().unwrap();
        let c = s.into_vm_config("vm".into(), vmm::KvmSource::Open, Vec::new(), None);
        // The files found, held open: their paths reopen them even once the tree changes.
        fs::remove_dir_all(&dir).unwrap();
        assert!(
            c.kernel.starts_with("/proc/self/fd/"),
            "{}",
            c.kernel.display()
        );
        assert_eq!(fs::read(&c.kernel).unwrap()[0x202..0x206], *b"HdrS");
        assert_eq!(c.initrds.len(), 1);
        assert_eq!(fs::read(&c.initrds[0]).unwrap(), b"initrd");
        // The entry's options are not used, as in vmspawn.
        assert_eq!(
            c.extra_cmdline,
            [
                "systemd.unit=rescue.target",
                "root=root",
                "rootfstype=virtiofs",
                "rw",
            ]
        );
        assert_eq!(c.shares[0].source, dir);

        // With --linux= the tree is not searched.
        let empty = temp_path("bls-empty");
        fs::create_dir_all(&empty).unwrap();
        let e = empty.to_str().unwrap();
        let kernel = temp_path("bls-kernel");
        fs::write(&kernel, b"k").unwrap();
        let k = format!("--linux={}", kernel.display());
        checked(&["-D", e, &k]).unwrap().check_files().unwrap();
        // Without it, an empty tree is an error naming it.
        let f = checked(&["-D", e]).unwrap().check_files().unwrap_err();
        assert_eq!(f.errno, libc::ENOENT);
        assert!(
            f.message
                .starts_with(&format!("Failed to find a boot entry in '{e}'")),
            "{}",
            f.message
        );
        assert!(f.message.ends_with("--linux=."), "{}", f.message);
        // A missing directory is reported as such, before any lookup.
        let f = checked(&["-D", "/nonexistent-rvmspawn"])
            .unwrap()
            .check_files()
            .unwrap_err();
        assert_eq!(f.errno, libc::ENOENT);
        assert!(
            f.message.starts_with("Failed to open directory"),
            "{}",
            f.message
        );
        fs::remove_dir_all(&empty).unwrap();
        fs::remove_file(&kernel).unwrap();
    }

    #[test]
    fn shared_directories_must_be_directories() {
        let s = settings(&["--linux=/k", "-D", "/nonexistent-rvmspawn"]).unwrap();
        let f = check_directory("directory", s.directory.as_ref().unwrap()).unwrap_err();
        assert_eq!(f.errno, libc::ENOENT);
        assert!(
            f.message
                .starts_with("Failed to open directory '/nonexistent-rvmspawn'"),
            "{}",
            f.message
        );
        let f = check_directory("bind mount source", Path::new("/dev/null")).unwrap_err();
        assert_eq!(f.errno, libc::ENOTDIR);
        assert!(
            f.message.contains("bind mount source '/dev/null'"),
            "{}",
            f.message
        );
    }

    #[test]
    fn tpm_options_and_the_state_beside_the_image_or_directory() {
        let tpm = |argv: &[&str]| vm_config(argv).tpm;
        let path = |p: &str| vmm::TpmState::Path(p.into());
        // The default: auto, its state beside the image or directory (trailing slash or not).
        let c = tpm(&["-i", "/srv/os.raw"]);
        assert_eq!(c.mode, vmm::TpmMode::Auto);
        assert_eq!(c.state, path("/srv/os.raw.tpmstate"));
        assert_eq!(tpm(&["-D", "/srv/tree/"]).state, path("/srv/tree.tpmstate"));
        assert_eq!(tpm(&["-D", "tree"]).state, path("/home/u/tree.tpmstate"));
        // With only a kernel, auto is off.
        assert_eq!(tpm(&["--linux=/k"]).state, vmm::TpmState::Off);
        // The modes, and the last value wins.
        assert_eq!(tpm(&["--linux=/k", "--tpm=yes"]).mode, vmm::TpmMode::Yes);
        assert_eq!(tpm(&["--linux=/k", "--tpm=no"]).mode, vmm::TpmMode::No);
        assert_eq!(
            tpm(&["--linux=/k", "--tpm=no", "--tpm=auto"]).mode,
            vmm::TpmMode::Auto
        );
        // The spellings of the state: a path absolute or ./relative, off (or empty, or a false
        // boolean), auto (or a true boolean).
        let state = |v: &str| tpm(&["-i", "/os.raw", &format!("--tpm-state={v}")]).state;
        assert_eq!(state("/var/tpm"), path("/var/tpm"));
        assert_eq!(state("./tpm"), path("/home/u/tpm"));
        assert_eq!(state("off"), vmm::TpmState::Off);
        assert_eq!(state(""), vmm::TpmState::Off);
        assert_eq!(state("no"), vmm::TpmState::Off);
        assert_eq!(state("yes"), path("/os.raw.tpmstate"));
        assert_eq!(state("auto"), path("/os.raw.tpmstate"));
        // The root directory has no name to put the state beside.
        assert_eq!(tpm(&["-D", "/"]).state, vmm::TpmState::Off);
    }

    #[test]
    fn qemu_gui_is_console_gui_and_the_later_option_wins() {
        let mode = |argv: &[&str]| {
            let mut argv = argv.to_vec();
            argv.push("--linux=/k");
            vm_config(&argv).console.mode
        };
        assert_eq!(mode(&["--qemu-gui"]), vmm::ConsoleMode::Gui);
        assert_eq!(mode(&["--console=gui"]), vmm::ConsoleMode::Gui);
        assert_eq!(
            mode(&["--console=read-only", "--qemu-gui"]),
            vmm::ConsoleMode::Gui
        );
        assert_eq!(
            mode(&["--qemu-gui", "--console=read-only"]),
            vmm::ConsoleMode::ReadOnly
        );
        // gui has no console= argument (and so no TERM= either).
        let c = vm_config(&["--linux=/k", "--console=gui"]).console;
        assert_eq!(c.tty(), None);
    }

    #[test]
    fn console_mode_and_transport() {
        let c = vm_config(&["--linux=/k"]).console;
        assert_eq!(c.mode, vmm::ConsoleMode::Interactive);
        assert_eq!(c.transport, vmm::ConsoleTransport::Virtio);
        for (value, mode) in [
            ("interactive", vmm::ConsoleMode::Interactive),
            ("read-only", vmm::ConsoleMode::ReadOnly),
            ("native", vmm::ConsoleMode::Native),
            ("headless", vmm::ConsoleMode::Headless),
        ] {
            let c = vm_config(&[
                "--linux=/k",
                "--console=native",
                &format!("--console={value}"),
            ]);
            assert_eq!(c.console.mode, mode, "{value}");
        }
        let c = vm_config(&["--linux=/k", "--console-transport=serial"]).console;
        assert_eq!(c.transport, vmm::ConsoleTransport::Serial);
    }

    #[test]
    fn the_last_network_option_wins() {
        let net = |argv: &[&str]| {
            let mut argv = argv.to_vec();
            argv.push("--linux=/k");
            settings(&argv).unwrap().network
        };
        assert_eq!(net(&[]), vmm::Network::None);
        assert_eq!(net(&["-n"]), vmm::Network::Tap { mac: None });
        assert_eq!(net(&["--network-user-mode"]), vmm::Network::User);
        assert_eq!(net(&["-n", "--network-user-mode"]), vmm::Network::User);
        assert_eq!(
            net(&["--network-user-mode", "--network-tap"]),
            vmm::Network::Tap { mac: None }
        );
        assert_eq!(
            net(&["--network-user-mode", "-n", "--network-user-mode"]),
            vmm::Network::User
        );
    }

    #[test]
    fn the_mac_variable_sets_the_tap_mac_and_a_bad_one_is_refused() {
        let with = |mac: &str| Host {
            network_mac: Some(mac.into()),
            ..host()
        };
        let s = settings_on(&with("02-ab-0c-d0-01-ff"), &["-n", "--linux=/k"]).unwrap();
        assert_eq!(
            s.network,
            vmm::Network::Tap {
                mac: Some([0x02, 0xab, 0x0c, 0xd0, 0x01, 0xff])
            }
        );
        let f = settings_on(&with("02:ab:0c"), &["-n", "--linux=/k"]).unwrap_err();
        assert_eq!(f.errno, libc::EINVAL);
        assert!(
            f.message.contains("$SYSTEMD_VMSPAWN_NETWORK_MAC") && f.message.contains("'02:ab:0c'"),
            "{}",
            f.message
        );
        // Only the TAP path uses it, as in vmspawn.
        let s = settings_on(&with("bad"), &["--network-user-mode", "--linux=/k"]).unwrap();
        assert_eq!(s.network, vmm::Network::User);
    }

    #[test]
    fn credentials_become_vmspawn_smbios_strings() {
        let dir = std::env::temp_dir().join(format!("rvmspawn-cred-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let file = dir.join("secret");
        fs::write(&file, b"from a file\n").unwrap();
        let load = format!("--load-credential=loaded:{}", file.display());
        let s = settings(&[
            "--linux=/k",
            r"--set-credential=text:hello\nworld",
            r"--set-credential=bin:a\x00b",
            &load,
            "-s",
            "io.systemd.stub.kernel-cmdline-extra=quiet",
            "--uuid=0123456789abcdef0123456789ABCDEF",
        ])
        .unwrap();
        assert_eq!(
            s.oem_strings().unwrap(),
            [
                "io.systemd.credential.binary:text=aGVsbG8Kd29ybGQ=",
                "io.systemd.credential.binary:bin=YQBi",
                "io.systemd.credential.binary:loaded=ZnJvbSBhIGZpbGUK",
                "io.systemd.stub.kernel-cmdline-extra=quiet",
            ]
        );
        assert_eq!(s.uuid.unwrap()[..2], [0x01, 0x23]);
        // A missing file names the credential and the file, and exits with its errno.
        let missing = format!("--load-credential=gone:{}", dir.join("nope").display());
        let f = settings(&["--linux=/k", &missing])
            .unwrap()
            .oem_strings()
            .unwrap_err();
        assert_eq!(f.errno, libc::ENOENT);
        assert!(
            f.message.contains("'gone'") && f.message.contains("nope"),
            "{}",
            f.message
        );
        fs::remove_dir_all(&dir).unwrap();
        let f = failure(&["--linux=/k", "--uuid=0123"]);
        assert_eq!(f.errno, EINVAL);
        assert!(f.message.contains("--uuid="), "{}", f.message);
        let f = failure(&["--linux=/k", "--uuid=00000000-0000-0000-0000-000000000000"]);
        assert_eq!(f.errno, EINVAL);
        let f = failure(&["--linux=/k", "--smbios11="]);
        assert_eq!(f.errno, EINVAL);
        assert!(f.message.contains("--smbios11="), "{}", f.message);
    }

    #[test]
    fn kvm_cannot_be_turned_off() {
        for no in ["--qemu-kvm=no", "--qemu-kvm=0", "--qemu-kvm=OFF"] {
            let f = failure(&["--linux=/k", no]);
            assert_eq!(f.errno, EOPNOTSUPP);
            assert!(f.message.starts_with("--qemu-kvm=no "), "{}", f.message);
            assert!(f.message.contains("emulator"), "{}", f.message);
        }
    }

    #[test]
    fn notify_ready_defaults_to_yes_and_last_wins() {
        assert!(vm_config(&["--linux=/k"]).notify_ready);
        assert!(!vm_config(&["--linux=/k", "--notify-ready=no"]).notify_ready);
        assert!(vm_config(&["--linux=/k", "--notify-ready=0", "--notify-ready=yes"]).notify_ready);
    }

    #[test]
    fn detect_modes_are_accepted() {
        // (arguments, then the kvm, vsock and tpm settings they give: None is "detect")
        for (argv, kvm, vsock, tpm) in [
            (
                [
                    "--qemu-kvm=auto",
                    "--qemu-vsock=no",
                    "--tpm=auto",
                    "--secure-boot=auto",
                ],
                None,
                Some(false),
                None,
            ),
            (
                ["--qemu-kvm=", "--qemu-vsock=", "--tpm=", "--secure-boot="],
                None,
                None,
                None,
            ),
            (
                [
                    "--qemu-kvm=1",
                    "--qemu-vsock=0",
                    "--tpm=off",
                    "--vsock-cid=",
                ],
                Some(true),
                Some(false),
                Some(false),
            ),
        ] {
            let mut argv = argv.to_vec();
            argv.push("--linux=/k");
            let s = checked(&argv).unwrap();
            assert_eq!((s.kvm, s.vsock, s.tpm), (kvm, vsock, tpm), "{argv:?}");
            assert_eq!(s.vsock_cid, None, "{argv:?}");
        }
    }

    #[test]
    fn binds_and_credentials_keep_command_line_order() {
        let s = settings(&[
            "--bind-ro=/a",
            "--bind=/b:/c",
            "--bind-ro=d\\:e:/f",
            "--set-credential=one:1",
            "--load-credential=two:/etc/two",
            "--set-credential=three:3",
        ])
        .unwrap();
        let binds: Vec<_> = s
            .binds
            .iter()
            .map(|b| {
                (
                    b.source.to_str().unwrap(),
                    b.target.to_str().unwrap(),
                    b.read_only,
                )
            })
            .collect();
        assert_eq!(
            binds,
            [
                ("/a", "/a", true),
                ("/b", "/c", false),
                ("/home/u/d:e", "/f", true)
            ]
        );
        let ids: Vec<_> = s.credentials.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["one", "two", "three"]);
        assert_eq!(
            s.credentials[1].data,
            CredentialData::File("/etc/two".into())
        );
    }

    #[test]
    fn duplicate_credentials() {
        let f = settings(&["--load-credential=x:/a", "--set-credential=x:b"]).unwrap_err();
        assert_eq!(f.errno, libc::EEXIST);
        assert!(
            f.message.contains("--set-credential= value 'x:b'"),
            "{}",
            f.message
        );
        let f = settings(&["--set-credential=x:b", "--load-credential=x:/a"]).unwrap_err();
        assert!(f.message.contains("--load-credential="), "{}", f.message);
    }

    fn name_in(cwd: &str, argv: &[&str]) -> Result<String, Failure> {
        let host = Host {
            cwd: cwd.into(),
            ..host()
        };
        settings_on(&host, argv)?.machine_name(&host)
    }

    #[test]
    fn machine_names_for_kernel_only_boots() {
        assert_eq!(name_in("/home/u", &["--linux=/k"]).unwrap(), "u");
        assert_eq!(
            name_in("/tmp/My Project", &["--linux=/k"]).unwrap(),
            "MyProject"
        );
        assert_eq!(name_in("/", &["--linux=/k"]).unwrap(), FALLBACK_NAME);
        assert_eq!(name_in("/tmp/...", &["--linux=/k"]).unwrap(), FALLBACK_NAME);
        assert_eq!(name_in("/", &["--linux=/k", "-M", "vm"]).unwrap(), "vm");
    }

    #[test]
    fn machine_names_like_vmspawn() {
        assert_eq!(name_in("/", &["-i", "/var/fedora.raw"]).unwrap(), "fedora");
        assert_eq!(
            name_in("/", &["-i", "/var/fedora.qcow2"]).unwrap(),
            "fedora.qcow2"
        );
        assert_eq!(name_in("/var", &["-i", "arch.raw"]).unwrap(), "arch");
        assert_eq!(name_in("/", &["-D", "/srv/debian/"]).unwrap(), "debian");
        assert_eq!(name_in("/", &["-D", "/"]).unwrap(), "hosty");
        assert_eq!(name_in("/", &["-D", "/srv/.."]).unwrap_err().errno, EINVAL);
        assert_eq!(
            name_in("/", &["-i", "/var/öö.raw"]).unwrap_err().errno,
            EINVAL
        );
        assert_eq!(name_in("/", &["-i", "/x.raw", "-M", "y"]).unwrap(), "y");
    }

    fn temp_path(tag: &str) -> PathBuf {
        std::env::temp_dir().join(format!("rvmspawn-config-{}-{tag}", std::process::id()))
    }

    #[test]
    fn file_checks() {
        let kernel = temp_path("kernel");
        fs::write(&kernel, b"not really a kernel").unwrap();
        let with = |argv: &[&str]| settings(argv).unwrap().check_files();

        let k = format!("--linux={}", kernel.display());
        assert_eq!(with(&[&k]), Ok(()));
        assert_eq!(
            with(&[&k, &format!("--initrd={}", kernel.display())]),
            Ok(())
        );

        let f = with(&["--linux=/nonexistent"]).unwrap_err();
        assert_eq!(f.errno, libc::ENOENT);
        assert_eq!(
            f.message,
            "Failed to open kernel '/nonexistent': No such file or directory"
        );
        let f = with(&[&k, "--initrd=/nonexistent.img"]).unwrap_err();
        assert_eq!(
            f.message,
            "Failed to open initrd '/nonexistent.img': No such file or directory"
        );
        let f = with(&["--linux=/"]).unwrap_err();
        assert_eq!(f.errno, libc::EISDIR);
        let f = with(&["--linux=/dev/null"]).unwrap_err();
        assert_eq!(f.errno, EINVAL);
        assert!(f.message.contains("not a regular file"));

        fs::remove_file(&kernel).unwrap();
    }
}
