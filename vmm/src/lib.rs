//! The virtual machine monitor: the only crate that talks to KVM.
//!
//! [`run`] builds a machine from a [`VmConfig`], runs it, and rebuilds it when the guest resets
//! (as systemd-vmspawn's QEMU does), until the guest powers off, the user leaves, or a signal
//! arrives.

#[macro_use]
mod log;
mod cleanup;
mod config;
mod console;
mod direct;
mod event_loop;
mod firmware_watch;
mod gui;
mod helper;
mod journal;
mod kvm;
mod machine;
mod machined;
mod memory;
mod net;
mod passt;
mod pci;
mod platform;
mod q35;
mod runtime;
mod seccomp;
mod ssh;
mod swtpm;
mod teardown;
mod vcpu;
mod virtiofs;
mod vsock;
mod x86_64;

pub use boot::Extraction as KernelExtraction;
pub use boot::bls;
pub use boot::{SmbiosError, parse_uuid};
pub use config::{
    ConsoleConfig, ConsoleMode, ConsoleTransport, DiskConfig, FirmwareBoot, FsShare, IdMap,
    KvmSource, Network, SshKeyConfig, TpmConfig, TpmMode, TpmState, VmConfig, VsockConfig,
    VsockMode, term_valid,
};
pub use kvm::smm_support;
pub use machined::{REGISTRAR_ENV, REGISTRAR_ROLE, RegisterMode, registrar_main};
pub use net::{format_mac, guest_mac, parse_mac, tap_name};

/// Most vCPUs a machine can have: APIC IDs are 8 bits in the MADT, and 0xff is the broadcast ID.
pub const MAX_VCPUS: u32 = 254;

/// Errors from building or running a VM.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `/dev/kvm` could not be opened.
    #[error("Failed to open /dev/kvm: {}", strerror(*.0))]
    OpenKvm(i32),
    /// KVM reports an API version other than 12.
    #[error("Unsupported KVM API version {0} (need 12)")]
    KvmApiVersion(i32),
    /// KVM lacks a capability the VMM needs.
    #[error("KVM lacks a required capability: {0}")]
    KvmCapMissing(&'static str),
    /// A KVM ioctl failed.
    #[error("{} failed: {}", .0, strerror(*.1))]
    Kvm(&'static str, i32),
    /// More vCPUs than the machine can have.
    #[error("Too many vCPUs: {requested} requested, at most {max} possible on this host")]
    TooManyVcpus {
        /// What was asked for.
        requested: u32,
        /// The limit.
        max: u32,
    },
    /// Guest memory could not be created.
    #[error("Failed to allocate guest memory: {}", strerror(*.0))]
    Memory(i32),
    /// Loading the kernel or building boot structures failed.
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    /// A thread or signal handler could not be set up.
    #[error("Failed to start a thread: {}", strerror(*.0))]
    Thread(i32),
    /// A host facility (epoll, signalfd, eventfd, the terminal) failed.
    #[error("{0}: {1}")]
    Host(&'static str, std::io::Error),
    /// A device could not be attached.
    #[error("Failed to set up device {0}: {1}")]
    Device(&'static str, String),
    /// A disk image could not be opened or locked.
    #[error(transparent)]
    Disk(#[from] devices::virtio::block::DiskError),
    /// No root partition could be found on the root disk for a direct kernel boot.
    #[error(transparent)]
    Root(#[from] boot::GptError),
    /// vsock was asked for and cannot be had, or the device refused its set-up.
    #[error("{0}")]
    Vsock(String, i32),
    /// The guest's network could not be set up (the TAP, its MAC).
    #[error("{0}")]
    Network(String, i32),
    /// A helper process (virtiofsd) could not be started, or ended while the VM ran.
    #[error("{0}")]
    Helper(String, i32),
    /// The run's directory could not be set up, or is in use by another run.
    #[error("{0}")]
    Runtime(String, i32),
    /// The SMBIOS tables cannot be built (e.g. too much credential data).
    #[error(transparent)]
    Smbios(#[from] boot::SmbiosError),
    /// The TPM could not be started, or a command of ours to it failed.
    #[error("{0}")]
    Tpm(String, i32),
    /// The graphical console's window could not be opened.
    #[error("{0}")]
    Display(String, i32),
    /// The firmware, its variable store or a kernel for it cannot be used.
    #[error("{0}")]
    Firmware(String, i32),
    /// The seccomp filters could not be set up (or `RVMSPAWN_SECCOMP` is invalid).
    #[error("{0}")]
    Seccomp(String, i32),
    /// A vCPU failed (KVM internal error, failed entry, unexpected exit).
    #[error("{0}")]
    Guest(String),
}

fn strerror(errno: i32) -> std::io::Error {
    std::io::Error::from_raw_os_error(errno)
}

impl Error {
    /// The errno that best describes this error, used as the process exit code.
    pub fn errno(&self) -> i32 {
        match self {
            Error::OpenKvm(e) | Error::Kvm(_, e) | Error::Memory(e) | Error::Thread(e) => *e,
            Error::KvmApiVersion(_) | Error::KvmCapMissing(_) => libc::EOPNOTSUPP,
            Error::TooManyVcpus { .. } => libc::EINVAL,
            Error::Boot(e) => e.errno(),
            Error::Host(_, e) => e.raw_os_error().unwrap_or(libc::EIO),
            Error::Device(..) => libc::EIO,
            Error::Disk(e) => e.errno(),
            Error::Root(e) => e.errno(),
            Error::Smbios(e) => e.errno(),
            Error::Vsock(_, errno)
            | Error::Network(_, errno)
            | Error::Runtime(_, errno)
            | Error::Helper(_, errno)
            | Error::Tpm(_, errno)
            | Error::Display(_, errno)
            | Error::Firmware(_, errno)
            | Error::Seccomp(_, errno) => *errno,
            // vmspawn reports a VMM that died abnormally as EPROTO.
            Error::Guest(_) => libc::EPROTO,
        }
    }
}

/// How a VM run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmExit {
    /// The guest powered off (ACPI S5).
    PowerOff,
    /// The user ended the run from the console (Ctrl-] three times).
    ConsoleKill,
    /// A termination signal (SIGTERM/SIGINT/SIGHUP) ended the run.
    Signal(i32),
}

/// How a run ended, and the exit status the guest asked for over the notify socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunOutcome {
    /// How the VM ended.
    pub exit: VmExit,
    /// The guest's `EXIT_STATUS=`, if it sent one.
    pub guest_exit_status: Option<u8>,
}

/// The guest's vsock device, as set up for the whole run.
enum VsockSetup {
    /// The kernel's vhost-vsock, its CID set, and our AF_VSOCK notify listener.
    Vhost {
        file: std::fs::File,
        cid: u64,
        listener: vsock::NotifyListener,
    },
    /// rvmspawn's own device, its host side in the run's directory.
    User {
        device: std::sync::Arc<devices::virtio::vsock_user::VsockUser>,
        notify_port: u32,
    },
}

impl VsockSetup {
    /// The guest's CID.
    fn cid(&self) -> u64 {
        match self {
            VsockSetup::Vhost { cid, .. } => *cid,
            VsockSetup::User { device, .. } => device.cid(),
        }
    }

    /// How `ssh` reaches the guest's port 22 (systemd-ssh-proxy's host names).
    fn ssh_host(&self, run_dir: Option<&runtime::RuntimeDir>) -> String {
        match (self, run_dir) {
            (VsockSetup::Vhost { cid, .. }, _) => format!("vsock/{cid}"),
            (VsockSetup::User { .. }, Some(d)) => {
                format!("vsock-mux/{}", d.path().join("vsock").display())
            }
            (VsockSetup::User { .. }, None) => "vsock-mux/".to_owned(),
        }
    }

    /// The address the guest's systemd is to send its notifications to.
    fn notify_address(&self) -> String {
        match self {
            VsockSetup::Vhost { listener, .. } => listener.address(),
            VsockSetup::User { notify_port, .. } => {
                format!("vsock-stream:{}:{notify_port}", vsock::HOST_CID)
            }
        }
    }

    /// Stop taking notifications, after those already sent. The userspace device has handed
    /// over its last messages by now: stopping the machine ended its connections.
    fn finish(self) {
        if let VsockSetup::Vhost { listener, .. } = self {
            listener.finish();
        }
    }
}

/// Give the guest a vsock device as `--qemu-vsock=` says: vhost-vsock (opened, or the passed
/// fd) with its CID and the notify listener; without vhost-vsock, the userspace device.
/// `None` when vsock is off.
fn setup_vsock(
    v: &mut VsockConfig,
    name: &str,
    notifier: &std::sync::Arc<vsock::Notifier>,
    quiet: bool,
    run_dir: &mut Option<runtime::RuntimeDir>,
) -> Result<Option<VsockSetup>, Error> {
    use std::os::unix::fs::OpenOptionsExt;
    if v.mode == VsockMode::No {
        return Ok(None);
    }
    let file = match v.vhost_fd.take() {
        Some(fd) => std::fs::File::from(fd),
        None => match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(VHOST_VSOCK)
        {
            Ok(f) => f,
            // vmspawn's QEMU would have no vsock at all; ours works without the module.
            Err(e) => {
                let dir = runtime::RuntimeDir::get_or_create(run_dir, || {
                    runtime::RuntimeDir::create(name)
                })?;
                return setup_user_vsock(v, name, notifier, quiet, &e, dir).map(Some);
            }
        },
    };
    let set_cid = |cid: u64| devices::virtio::vsock::set_guest_cid(&file, cid);
    let cid = match v.cid {
        Some(cid) => {
            set_cid(u64::from(cid)).map_err(|e| {
                Error::Vsock(
                    format!("Failed to set CID {cid} for the guest's vsock device: {e}"),
                    e.raw_os_error().unwrap_or(libc::EIO),
                )
            })?;
            u64::from(cid)
        }
        None => {
            // vmspawn's order: 64 CIDs derived from the name, then 64 random ones.
            let derived = (0..64).map(|i| vsock::cid_from_name(name, i));
            let random = (0..64).map(|_| 3 + random_u64() % (u64::from(u32::MAX) - 4));
            let mut chosen = None;
            for cid in derived.chain(random) {
                match set_cid(cid) {
                    Ok(()) => {
                        chosen = Some(cid);
                        break;
                    }
                    Err(e) if e.raw_os_error() == Some(libc::EADDRINUSE) => continue,
                    Err(e) => {
                        return Err(Error::Vsock(
                            format!("Failed to set a CID for the guest's vsock device: {e}"),
                            e.raw_os_error().unwrap_or(libc::EIO),
                        ));
                    }
                }
            }
            chosen.ok_or_else(|| {
                Error::Vsock(
                    "Failed to assign a CID to the guest vsock".into(),
                    libc::EADDRNOTAVAIL,
                )
            })?
        }
    };
    let listener = vsock::NotifyListener::start(notifier.clone())?;
    Ok(Some(VsockSetup::Vhost {
        file,
        cid,
        listener,
    }))
}

/// The kernel's vsock back end.
const VHOST_VSOCK: &str = "/dev/vhost-vsock";

/// The userspace vsock device. Its CIDs are private to this VM (no other guest shares the
/// host side), so the CID is the one asked for or the first one derived from the name.
fn setup_user_vsock(
    v: &VsockConfig,
    name: &str,
    notifier: &std::sync::Arc<vsock::Notifier>,
    quiet: bool,
    why: &std::io::Error,
    dir: &runtime::RuntimeDir,
) -> Result<VsockSetup, Error> {
    use devices::virtio::vsock_user::VsockUser;
    let cid = v
        .cid
        .map_or_else(|| vsock::cid_from_name(name, 0), u64::from);
    let path = dir.path().join("vsock");
    let mut device = VsockUser::new(cid, Some(path.clone())).map_err(|e| {
        Error::Vsock(
            format!("Failed to listen on {}: {e}", path.display()),
            e.raw_os_error().unwrap_or(libc::EIO),
        )
    })?;
    // Like the kernel's choice for VMADDR_PORT_ANY: some port above the reserved ones, below
    // the range the device numbers host-initiated connections from.
    let notify_port = 1024 + u32::try_from(random_u64() % (1 << 29)).unwrap_or(0);
    device.add_handler(
        notify_port,
        std::sync::Arc::new(vsock::NotifyPort::new(notifier.clone())),
    );
    if !quiet {
        status!(
            "No {VHOST_VSOCK} ({why}); vsock is served by rvmspawn: guest CID {cid}, host \
             sockets {} and {}_PORT.",
            path.display(),
            path.display()
        );
    }
    Ok(VsockSetup::User {
        device: std::sync::Arc::new(device),
        notify_port,
    })
}

pub(crate) fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    // SAFETY: getrandom writes at most 8 bytes into `b`.
    unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    u64::from_ne_bytes(b)
}

/// The key types `--ssh-key-type=` accepts.
pub fn ssh_key_types() -> &'static [&'static str] {
    &ssh::KEY_TYPES
}

/// Build the VM described by `config` and run it until it ends.
pub fn run(config: VmConfig) -> Result<RunOutcome, Error> {
    let result = run_vm(config);
    // Everything of the run is released: the terminal, the helpers, the run directory.
    log::phase("run returned");
    result
}

/// How the machine starts: a kernel made ready for a direct boot, or firmware.
enum Start {
    Direct(std::sync::Arc<boot::PreparedKernel>),
    Firmware(FirmwareBoot),
}

fn run_vm(mut config: VmConfig) -> Result<RunOutcome, Error> {
    // A VMM bug must not leave the terminal raw or the run directory behind (the release
    // build aborts on a panic, so no destructor runs).
    cleanup::install_panic_hook();
    devices::set_reporter(log::line);
    // The filters are compiled before any thread starts (each thread installs its own).
    seccomp::prepare()?;
    log::prepare();
    log::phase("start");
    let kvm = kvm::open(config.kvm)?;
    log::phase("KVM opened");
    let max = MAX_VCPUS.min(u32::try_from(kvm.get_max_vcpus()).unwrap_or(MAX_VCPUS));
    if config.vcpus == 0 || config.vcpus > max {
        return Err(Error::TooManyVcpus {
            requested: config.vcpus,
            max,
        });
    }
    // Termination signals are blocked (and read from a signalfd) from here on, before anything
    // that takes time or holds resources, so an early SIGTERM still ends the run cleanly.
    let mut console = event_loop::Console::new(config.console.mode)?;
    console.set_stop_timeout(config.stop_timeout, config.quiet);
    // The window, before the helpers and the main thread's filter: its thread runs the window
    // system's client libraries, which the filters do not confine (docs/security.md).
    let gui = match config.console.mode {
        ConsoleMode::Gui => Some(gui::Gui::open(&config.name)?),
        _ => None,
    };
    if let Some(gui) = &gui {
        console.watch_window(gui.closed_fd())?;
    }
    let firmware = config.firmware.take();
    // The kernel rvmspawn is handed, if any: booted directly, or through the firmware.
    let has_kernel = firmware.as_ref().is_none_or(|f| f.kernel_through_firmware);
    // A UKI brings its own command line and initrds; vmspawn also hands the extra arguments to
    // its stub and boot loader as SMBIOS strings, which systemd in the guest may read. A disk
    // booted through firmware gets them the same way: there is no command line to append to.
    let uki = if has_kernel {
        boot::x86_64::loader::uki_info(&config.kernel)?
    } else {
        None
    };
    // A file that is not a kernel is refused now, before any helper starts (a new TPM's
    // manufacture alone takes a second or more); a bzImage's payload is extracted once per run,
    // also before the sandbox closes below (it may create the cache directory and its files),
    // and every boot loads the result.
    let start = match firmware {
        None => Start::Direct(std::sync::Arc::new(boot::prepare_kernel(
            &config.kernel,
            &config.kernel_extraction,
        )?)),
        Some(fw) => Start::Firmware(fw),
    };
    let extra = config.extra_cmdline.join(" ");
    let mut oem_strings = Vec::with_capacity(config.oem_strings.len() + 2);
    if (uki.is_some() || !has_kernel) && !extra.is_empty() {
        oem_strings.push(format!("io.systemd.stub.kernel-cmdline-extra={extra}"));
        oem_strings.push(format!("io.systemd.boot.kernel-cmdline-extra={extra}"));
    }
    oem_strings.extend(std::mem::take(&mut config.oem_strings));
    // A notify socket the user set themselves wins; then ours is not offered.
    let user_notify = oem_strings
        .iter()
        .any(|s| s.starts_with("io.systemd.credential.binary:vmm.notify_socket="));
    let notifier = std::sync::Arc::new(vsock::Notifier::new(config.quiet, config.notify_ready));
    // The run's directory, made when something needs it (the userspace vsock device's sockets,
    // an ephemeral TPM state), once per run; dropped (removed, with all in it) after the
    // helpers that may write in it are stopped.
    let mut run_dir: Option<runtime::RuntimeDir> = None;
    // The copy an ephemeral --directory= run boots from: removed after the helpers (virtiofsd)
    // that serve it have stopped, as it is declared before them.
    let mut snapshot: Option<runtime::TreeSnapshot> = None;
    let vsock = setup_vsock(
        &mut config.vsock,
        &config.name,
        &notifier,
        config.quiet,
        &mut run_dir,
    )?;
    if let Some(v) = vsock.as_ref().filter(|_| !user_notify) {
        // The notify address, as the credential vmspawn passes (binary form, base64).
        use base64::Engine;
        oem_strings.push(format!(
            "io.systemd.credential.binary:vmm.notify_socket={}",
            base64::engine::general_purpose::STANDARD.encode(v.notify_address())
        ));
    }
    // --pass-ssh-key: a key pair in the run directory, its public half for the guest's sshd on
    // vsock, as vmspawn passes it. Needs vsock; the user's own credentials of the same names win.
    if config.ssh_key.as_ref().is_some_and(|k| k.required) && vsock.is_none() {
        return Err(Error::Helper(
            "--pass-ssh-key=yes needs vsock (--qemu-vsock=no was given)".into(),
            libc::EINVAL,
        ));
    }
    // The key's file, for machined's registration.
    let mut ssh_private_key = None;
    if let (Some(req), Some(v)) = (&config.ssh_key, vsock.as_ref()) {
        let user_has = |id: &str| {
            oem_strings
                .iter()
                .any(|s| s.starts_with(&format!("io.systemd.credential.binary:{id}=")))
        };
        let dir = runtime::RuntimeDir::get_or_create(&mut run_dir, || {
            runtime::RuntimeDir::create(&config.name)
        })?;
        match ssh::generate(dir.path(), &req.key_type) {
            Ok(key) => {
                if !user_has("ssh.ephemeral-authorized_keys-all") {
                    oem_strings.extend(ssh::credentials(&key.public));
                }
                if !config.quiet {
                    status!(
                        "SSH into the guest (its sshd on vsock): ssh -i {} root@{}",
                        key.private.display(),
                        v.ssh_host(run_dir.as_ref())
                    );
                }
                ssh_private_key = Some(key.private);
            }
            Err(e) if !req.required => {
                if !config.quiet {
                    status!("No SSH key for the guest ({e}); --pass-ssh-key=no silences this.");
                }
            }
            Err(e) => return Err(e),
        }
    }
    // --forward-journal: the guest's journald forwards to the host's port (the guest's CID, as
    // in vmspawn), where journal-remote listens (started with the other helpers below).
    let journal = match (&config.forward_journal, vsock.as_ref()) {
        (None, _) => None,
        (Some(_), None) => {
            return Err(Error::Helper(
                "--forward-journal= needs vsock (--qemu-vsock=no was given)".into(),
                libc::EINVAL,
            ));
        }
        (Some(output), Some(v)) => {
            let port = u32::try_from(v.cid()).unwrap_or(u32::MAX);
            let listen = match v {
                VsockSetup::Vhost { .. } => journal::Listen::Vsock(port),
                VsockSetup::User { .. } => {
                    let dir = runtime::RuntimeDir::get_or_create(&mut run_dir, || {
                        runtime::RuntimeDir::create(&config.name)
                    })?;
                    journal::Listen::Unix(dir.path().join(format!("vsock_{port}")))
                }
            };
            oem_strings.push(journal::credential(port));
            Some((listen, output.clone()))
        }
    };
    // Opened and locked once: a reboot keeps the lock.
    let mut disks = Vec::with_capacity(config.disks.len());
    let mut root_arg = None;
    for d in &config.disks {
        let image = devices::virtio::block::DiskImage::open(
            &d.path,
            devices::virtio::block::DiskOptions {
                read_only: false,
                discard: d.discard,
                ephemeral: d.ephemeral,
            },
        )?;
        // vmspawn finds the root partition of the image for a direct boot of a kernel (not a
        // UKI, which knows its root), unless the user's arguments already say where root is.
        if d.root
            && has_kernel
            && uki.is_none()
            && !boot::gpt::cmdline_selects_root(&config.extra_cmdline)
        {
            root_arg = Some(boot::discover_root(image.file())?.kernel_arg());
        }
        disks.push(machine::DiskSpec {
            serial: disk_serial(&d.path),
            image: std::sync::Arc::new(image),
        });
    }
    // One virtiofsd per shared directory, for the whole run (the connection outlives guest
    // reboots; virtiofsd exits when it closes). Declared before `spec`, so the devices'
    // connections close before the helpers are stopped.
    let mut helpers = Vec::with_capacity(config.shares.len());
    let mut fs = Vec::with_capacity(config.shares.len());
    if !config.shares.is_empty() {
        let binary = virtiofs::find_virtiofsd()?;
        for share in &config.shares {
            let copied;
            let share = if share.ephemeral {
                let snap = snapshot.insert(runtime::TreeSnapshot::create(&share.source)?);
                copied = FsShare {
                    source: snap.path().to_owned(),
                    ..share.clone()
                };
                &copied
            } else {
                share
            };
            let (helper, stream) = virtiofs::start(&binary, share)?;
            console.watch_helper(helper.pidfd(), helpers.len())?;
            helpers.push(helper);
            let device = devices::virtio::fs::VhostUserFs::new(
                stream,
                &share.tag,
                u16::try_from(config.vcpus).unwrap_or(u16::MAX),
            )
            .map_err(|e| {
                Error::Helper(
                    format!("virtio-fs device for {}: {e}", share.source.display()),
                    e.errno(),
                )
            })?;
            fs.push(std::sync::Arc::new(device));
        }
    }
    // The NIC's host side, for the whole run: a reboot keeps the TAP (and the guest's MAC) or
    // the connection to passt, which is watched like virtiofsd.
    let net = match config.network {
        Network::None => None,
        Network::Tap { mac } => Some(net::setup_tap(
            &config.name,
            config.vcpus,
            mac,
            config.quiet,
        )?),
        Network::User => {
            let (setup, helper) = net::setup_user_mode(config.quiet)?;
            console.watch_helper(helper.pidfd(), helpers.len())?;
            helpers.push(helper);
            Some(setup)
        }
    };
    // The TPM, for the whole run: a reboot keeps swtpm and its state (the platform reset is a
    // CMD_INIT), and swtpm is watched like virtiofsd. Started before the main thread's filter.
    let tpm = match swtpm::setup(&config.tpm, &mut run_dir, &config.name, config.quiet)? {
        Some(t) => {
            console.watch_helper(t.helper.pidfd(), helpers.len())?;
            helpers.push(t.helper);
            Some(t.tpm)
        }
        None => None,
    };
    if let Some((listen, output)) = &journal {
        let helper = journal::start(listen, output)?;
        console.watch_helper(helper.pidfd(), helpers.len())?;
        helpers.push(helper);
    }
    let is_uki = uki.is_some();
    // A UKI booted directly is measured as systemd-stub would have measured it, before every
    // boot; through the firmware, the stub does it itself.
    let firmware_boot = matches!(start, Start::Firmware(_));
    let measurements = if tpm.is_some() && is_uki && !firmware_boot {
        Some(swtpm::Measurements::of(&config.kernel, &extra)?)
    } else {
        None
    };
    // A direct boot's command line starts with the console's arguments (ConsoleConfig::
    // kernel_args); the user's follow.
    let cmdline = config
        .console
        .kernel_args()
        .into_iter()
        .chain(uki.map(|u| u.cmdline))
        .chain(root_arg)
        .chain(config.extra_cmdline)
        .collect::<Vec<_>>()
        .join(" ");
    let boot_spec = match start {
        Start::Direct(prepared) => machine::BootSpec::Direct(direct::DirectBoot {
            prepared,
            kernel: config.kernel,
            initrds: config.initrds,
            cmdline,
        }),
        Start::Firmware(fw) => {
            let kernel = if fw.kernel_through_firmware {
                Some(std::sync::Arc::new(q35::FirmwareKernel {
                    kernel: read_whole(&config.kernel)?.into(),
                    initrd: config
                        .initrds
                        .iter()
                        .map(|p| read_whole(p))
                        .collect::<Result<Vec<_>, _>>()?
                        .concat()
                        .into(),
                    // A UKI's own .cmdline applies, as with vmspawn (no -append for a UKI).
                    cmdline: (!is_uki).then_some(cmdline),
                }))
            } else {
                None
            };
            let code = std::fs::File::open(&fw.code).map_err(|e| {
                Error::Firmware(
                    format!("Failed to open firmware {}: {e}", fw.code.display()),
                    e.raw_os_error().unwrap_or(libc::EIO),
                )
            })?;
            machine::BootSpec::Firmware(q35::Firmware {
                code: std::sync::Arc::new(code),
                vars: std::sync::Arc::new(fw.vars.file),
                kernel,
                smm: fw.smm,
            })
        }
    };
    let spec = machine::MachineSpec {
        vcpus: config.vcpus,
        mem_bytes: config.mem_bytes,
        boot: boot_spec,
        disks,
        uuid: config
            .uuid
            .unwrap_or_else(|| boot::uuid_from_name(&config.name)),
        oem_strings,
        vsock: match &vsock {
            Some(VsockSetup::Vhost { file, cid, .. }) => Some(machine::VsockSpec::Vhost(
                std::sync::Arc::new(
                    file.try_clone()
                        .map_err(|e| Error::Host("vhost-vsock", e))?,
                ),
                *cid,
            )),
            Some(VsockSetup::User { device, .. }) => Some(machine::VsockSpec::User(device.clone())),
            None => None,
        },
        name: config.name,
        fs,
        net,
        tpm: tpm.clone(),
        console: match (config.console.mode, config.console.transport) {
            (ConsoleMode::Headless, _) => machine::ConsoleSpec::Headless,
            (ConsoleMode::Gui, _) => machine::ConsoleSpec::Gui,
            (_, ConsoleTransport::Serial) => machine::ConsoleSpec::Serial,
            (_, ConsoleTransport::Virtio) => machine::ConsoleSpec::Virtio,
        },
        memory: if config.shared_memory || !config.shares.is_empty() {
            memory::Backing::SharedMemfd
        } else {
            memory::Backing::Private
        },
        // Only where nobody can press the key the firmware then waits for: a console that
        // takes no input, or standard input that is no terminal.
        gui: gui.as_ref().map(gui::Gui::devices),
        watch_boot_failure: firmware_boot
            && !(matches!(
                config.console.mode,
                ConsoleMode::Interactive | ConsoleMode::Native
            ) && std::io::IsTerminal::is_terminal(&std::io::stdin())),
    };
    // Declared after `console`, so dropped (and drained) before the terminal is restored.
    let output = console::ConsoleOutput::start(Box::new(std::io::stdout()))
        .map_err(|e| Error::Host("console output thread", e))?;
    // --register=: the registrar is a helper process too (it must not inherit the main
    // thread's filter); machined learns of the VM before it first runs.
    let _registered = machined::register(
        &machined::Registration {
            name: spec.name.clone(),
            uuid: spec.uuid,
            root_directory: config
                .shares
                .iter()
                .find(|s| s.tag == "root")
                .map(|s| s.source.clone()),
            ifindex: match config.network {
                Network::Tap { .. } => net::ifindex(&net::tap_name(&spec.name).0),
                _ => None,
            },
            vsock_cid: vsock.as_ref().and_then(|v| u32::try_from(v.cid()).ok()),
            ssh_address: ssh_private_key
                .as_ref()
                .and(vsock.as_ref())
                .map(|v| v.ssh_host(run_dir.as_ref())),
            ssh_private_key,
        },
        config.register,
        config.quiet,
    )?;
    // Every helper is started (a helper would inherit the filter of the thread that forks
    // it): confine the main thread before the first machine is built.
    seccomp::install_main()?;
    let result = (|| {
        let mut started = false;
        loop {
            if let Some(tpm) = &spec.tpm {
                // A reboot is a platform reset for the TPM too: PCRs back to their reset values.
                if started {
                    tpm.reset().map_err(|e| {
                        Error::Tpm(format!("Failed to reset the TPM: {e}"), e.errno())
                    })?;
                }
                // Without firmware, rvmspawn starts the TPM up as firmware would, then makes
                // the measurements systemd-stub would have made.
                if !firmware_boot {
                    swtpm::start_up(tpm)?;
                }
                if let Some(m) = &measurements {
                    m.apply(tpm)?;
                }
            }
            let machine =
                machine::Machine::build(&kvm, &spec, output.sink(), console.window_size())?;
            if !started {
                started = true;
                // As vmspawn once its VMM runs; with --notify-ready=no that is also when we are
                // ready, else the guest's READY=1 is.
                let pid = std::process::id();
                vsock::notify_supervisor(&if config.notify_ready {
                    format!("STATUS=VM started.\nX_VMSPAWN_LEADER_PID={pid}")
                } else {
                    format!("READY=1\nSTATUS=VM started.\nX_VMSPAWN_LEADER_PID={pid}")
                });
            }
            let outcome = console.run(&machine);
            log::phase("guest stopped");
            let ending = !matches!(outcome, Ok(event_loop::Outcome::Reset));
            if ending {
                // A signal from now on ends the process at once, whatever holds the stop up.
                console.stopping();
                // The run is over: the virtiofsd connections close now (each virtiofsd exits on
                // that), so the devices' resets do not wait for a back end that may have stalled.
                for f in &spec.fs {
                    f.disconnect();
                }
            }
            output.set_abandon(true);
            let stopping = std::time::Instant::now();
            let stopped = if ending {
                machine.finish()
            } else {
                machine.stop()
            };
            log::phase("machine released");
            debug!("Machine stopped in {} ms.", stopping.elapsed().as_millis());
            output.set_abandon(false);
            match outcome? {
                event_loop::Outcome::Reset if !stopped => {
                    // Its vCPU may still run: a new machine must not start beside it.
                    return Err(Error::Guest(
                        "the guest reset, but a vCPU of the old machine did not stop".into(),
                    ));
                }
                event_loop::Outcome::Reset => continue,
                event_loop::Outcome::HelperExited(i) => {
                    return Err(match helpers.get_mut(i) {
                        Some(h) => h.died(),
                        None => Error::Helper("a helper process ended".into(), libc::EPROTO),
                    });
                }
                event_loop::Outcome::Exit(exit) => {
                    if let Some(v) = vsock {
                        v.finish();
                    }
                    return Ok(RunOutcome {
                        exit,
                        guest_exit_status: notifier.state().exit_status,
                    });
                }
            }
        }
    })();
    // Every way the run ends comes here: swtpm saves its state before the helpers are stopped.
    if let Some(tpm) = &tpm
        && let Err(e) = tpm.shutdown()
    {
        debug!("TPM: shutting swtpm down failed: {e}");
    }
    result
}

/// A kernel or initrd handed to the firmware, read once for the whole run.
fn read_whole(path: &std::path::Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|e| {
        Error::Firmware(
            format!("Failed to read {}: {e}", path.display()),
            e.raw_os_error().unwrap_or(libc::EIO),
        )
    })
}

/// vmspawn's disk serial: the image's file name when it fits the 20 bytes of a virtio-blk ID,
/// else the first 20 hex digits of the name's SHA-256.
fn disk_serial(path: &std::path::Path) -> [u8; devices::virtio::block::ID_BYTES] {
    use sha2::Digest;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    devices::virtio::block::serial_for(&name, |bytes| {
        sha2::Sha256::digest(bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn disk_serial_is_the_name_or_its_hash() {
        assert_eq!(
            &super::disk_serial(std::path::Path::new("/srv/disk.raw"))[..9],
            b"disk.raw\0"
        );
        let long = super::disk_serial(std::path::Path::new("a-rather-long-image-name.raw"));
        assert!(long.iter().all(u8::is_ascii_hexdigit));
    }
}
