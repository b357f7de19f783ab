//! The plain-data description of a VM that the front end hands to [`crate::run`].
//!
//! Nothing here knows about command-line syntax: the CLI validates user input and builds a
//! `VmConfig`; the VMM checks only what depends on the host (KVM limits, files).

use std::os::fd::OwnedFd;
use std::path::PathBuf;

/// Where the KVM device comes from.
#[derive(Debug)]
pub enum KvmSource {
    /// Open `/dev/kvm` ourselves.
    Open,
    /// An fd inherited through the sd_listen_fds protocol under the name `kvm`.
    Inherited(OwnedFd),
}

/// Everything needed to build and run one VM.
#[derive(Debug)]
pub struct VmConfig {
    /// Machine name (already validated as a hostname by the front end): the SMBIOS system
    /// serial number, and the seed of the system UUID unless one is given.
    pub name: String,
    /// Number of vCPUs, at least 1.
    pub vcpus: u32,
    /// Guest RAM in bytes.
    pub mem_bytes: u64,
    /// Kernel image: bzImage or ELF vmlinux, detected by content.
    pub kernel: PathBuf,
    /// Initrds, loaded back to back in this order.
    pub initrds: Vec<PathBuf>,
    /// Whether a bzImage booted directly is decompressed on the host and booted through PVH,
    /// and where the extracted kernels are cached (`RVMSPAWN_EXTRACT_KERNEL=`, the cache
    /// directory from the environment).
    pub kernel_extraction: boot::Extraction,
    /// Extra kernel command-line arguments, appended after the defaults.
    pub extra_cmdline: Vec<String>,
    /// Where KVM comes from.
    pub kvm: KvmSource,
    /// Back guest RAM with a shared memfd, so that another process (a vhost-user back end such
    /// as virtiofsd) can map it; otherwise it is private anonymous memory, which gets huge pages
    /// on more hosts and boots faster.
    pub shared_memory: bool,
    /// Disks, in the order the guest sees them.
    pub disks: Vec<DiskConfig>,
    /// Host directories shared over virtio-fs, each served by its own virtiofsd.
    pub shares: Vec<FsShare>,
    /// The SMBIOS system UUID; `None` derives a stable one from the machine name.
    pub uuid: Option<[u8; 16]>,
    /// SMBIOS type 11 (OEM) strings, in order: credentials, kernel command-line extras and the
    /// user's own, already in the form the guest's systemd reads.
    pub oem_strings: Vec<String>,
    /// The guest's vsock device and the notify socket on it.
    pub vsock: VsockConfig,
    /// No status lines of our own (the guest's READY=1 is reported unless quiet).
    pub quiet: bool,
    /// `--notify-ready=`: tell our supervisor we are ready when the guest says READY=1 (true),
    /// or as soon as the VM runs (false).
    pub notify_ready: bool,
    /// Boot through UEFI firmware instead of loading the kernel directly. When the firmware
    /// boots the disk (`-i` without `--linux=`), `kernel` is an empty path and `initrds` is
    /// empty.
    pub firmware: Option<FirmwareBoot>,
    /// The guest's network (`--network-tap`, `--network-user-mode`).
    pub network: Network,
    /// The guest's TPM (`--tpm=`, `--tpm-state=`).
    pub tpm: TpmConfig,
    /// The guest's console and what the user's terminal is to it (`--console=`,
    /// `--console-transport=`).
    pub console: ConsoleConfig,
    /// `--forward-journal=`: where systemd-journal-remote writes the guest's journal (a
    /// `.journal` file, or a directory).
    pub forward_journal: Option<PathBuf>,
    /// `--pass-ssh-key=`: make a key pair and pass its public key to the guest's sshd on vsock.
    pub ssh_key: Option<SshKeyConfig>,
    /// How long SIGINT, SIGTERM or SIGRTMIN+4 wait, after pressing the ACPI power button, for
    /// the guest to power off before the VM is stopped at once; zero stops at once.
    pub stop_timeout: std::time::Duration,
    /// `--register=`: whether the VM is registered with systemd-machined while it runs.
    pub register: crate::RegisterMode,
}

/// `--console=`: what the user's terminal is to the guest's console.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConsoleMode {
    /// The terminal in raw mode, every key to the guest; Ctrl-] three times within a second
    /// ends the VM; the window size reaches the guest.
    #[default]
    Interactive,
    /// Output only: standard input is not read, the terminal stays as it is (Ctrl-C stops the
    /// VM).
    ReadOnly,
    /// A transparent byte pipe in raw mode with one escape: Ctrl-a x ends the VM, Ctrl-a a
    /// sends a Ctrl-a.
    Native,
    /// No console device, no `console=` argument, nothing of the guest's printed.
    Headless,
    /// A window shows the guest's display (virtio-gpu) and takes its keyboard and pointer
    /// (virtio-input); no `console=` argument, the terminal stays as it is and shows COM1.
    Gui,
}

/// `--console-transport=`: the device behind the guest's console.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConsoleTransport {
    /// virtio-console, `hvc0`.
    #[default]
    Virtio,
    /// The 16550 UART on COM1, `ttyS0`.
    Serial,
}

/// The guest's console.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConsoleConfig {
    /// `--console=`.
    pub mode: ConsoleMode,
    /// `--console-transport=`.
    pub transport: ConsoleTransport,
    /// The user's `$TERM`, when it is a valid terminal name: the guest gets `TERM=` and
    /// `systemd.tty.term.<tty>=` with it.
    pub term: Option<String>,
}

impl ConsoleConfig {
    /// The guest's console device name, `None` when it has none (headless).
    pub fn tty(&self) -> Option<&'static str> {
        match (self.mode, self.transport) {
            (ConsoleMode::Headless | ConsoleMode::Gui, _) => None,
            (_, ConsoleTransport::Virtio) => Some("hvc0"),
            (_, ConsoleTransport::Serial) => Some("ttyS0"),
        }
    }

    /// What the console adds to the kernel command line, first: `console=TTY`, then
    /// `TERM=` and `systemd.tty.term.TTY=` with the user's terminal type, as vmspawn passes
    /// them; nothing when headless.
    pub fn kernel_args(&self) -> Vec<String> {
        let Some(tty) = self.tty() else {
            return Vec::new();
        };
        let mut args = vec![format!("console={tty}")];
        if let Some(term) = &self.term {
            args.push(format!("TERM={term}"));
            args.push(format!("systemd.tty.term.{tty}={term}"));
        }
        args
    }
}

/// Whether `term` may be passed on as `$TERM` (systemd's `term_env_valid()`: not empty, at
/// most 128 bytes, ASCII letters, digits and `-_+.` only).
pub fn term_valid(term: &str) -> bool {
    !term.is_empty()
        && term.len() <= 128
        && term
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_+.".contains(&b))
}

/// Whether the guest gets a TPM (`--tpm=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TpmMode {
    /// When swtpm and swtpm_setup are found; a TPM that fails to start is left out with a
    /// notice.
    #[default]
    Auto,
    /// Always: a missing swtpm or a failing start is an error.
    Yes,
    /// Never.
    No,
}

/// Where the TPM keeps its state (`--tpm-state=`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum TpmState {
    /// Beside the image or directory as `<image-or-dir>.tpmstate`; the front end resolves it
    /// to [`TpmState::Path`] (or [`TpmState::Off`] without either); the VMM takes an
    /// unresolved `Auto` as `Off`.
    #[default]
    Auto,
    /// A directory in the run's directory, removed when the run ends.
    Off,
    /// This directory, created (mode 0700) and manufactured when needed, kept.
    Path(PathBuf),
}

/// The guest's TPM settings.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TpmConfig {
    /// `--tpm=`.
    pub mode: TpmMode,
    /// `--tpm-state=`.
    pub state: TpmState,
}

/// The guest's network interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Network {
    /// No NIC (vmspawn's default).
    #[default]
    None,
    /// A virtio-net NIC on a host TAP device named after the machine (`--network-tap`).
    Tap {
        /// The guest's MAC (`$SYSTEMD_VMSPAWN_NETWORK_MAC`); `None` derives it from the host's
        /// machine ID and the machine name, as vmspawn does.
        mac: Option<[u8; 6]>,
    },
    /// A virtio-net NIC whose other end is passt: NAT through the host's own sockets, for an
    /// unprivileged user (`--network-user-mode`).
    User,
}

/// UEFI firmware for a boot, chosen and checked by the front end (see the `firmware` crate).
#[derive(Debug)]
pub struct FirmwareBoot {
    /// The read-only code image (e.g. `/usr/share/OVMF/OVMF_CODE_4M.fd`).
    pub code: PathBuf,
    /// The EFI variable store for this run, open read-write, the template's size.
    pub vars: firmware::nvram::VarStore,
    /// The descriptor the firmware was chosen from, for messages.
    pub descriptor: PathBuf,
    /// Hand `kernel`, `initrds` and the command line to the firmware (fw_cfg, as QEMU's
    /// `-kernel`), which then boots them; false: the firmware boots from the disks.
    pub kernel_through_firmware: bool,
    /// The firmware requires SMM (its descriptor says `requires-smm`).
    pub smm: bool,
}

/// Whether the guest gets a vsock device (`--qemu-vsock=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VsockMode {
    /// When vhost-vsock is available.
    #[default]
    Auto,
    /// Always; fail when it cannot be had.
    Yes,
    /// Never.
    No,
}

/// vsock settings.
#[derive(Debug, Default)]
pub struct VsockConfig {
    /// `--qemu-vsock=`.
    pub mode: VsockMode,
    /// `--vsock-cid=`; `None` derives one from the machine name as vmspawn does.
    pub cid: Option<u32>,
    /// An open vhost-vsock device passed in by the parent (fd name `vhost-vsock`).
    pub vhost_fd: Option<OwnedFd>,
}

/// `--pass-ssh-key=` and `--ssh-key-type=`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshKeyConfig {
    /// ssh-keygen's `-t`.
    pub key_type: String,
    /// Asked for explicitly: a failure to make the key is an error; by default (vmspawn's
    /// default is yes) it is a notice and the VM runs without.
    pub required: bool,
}

/// A disk image for the guest (virtio-blk).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskConfig {
    /// Raw image file or block device.
    pub path: PathBuf,
    /// The root disk (`--image=`): for a direct kernel boot its root partition goes on the
    /// kernel command line unless the user's arguments already name one.
    pub root: bool,
    /// Pass the guest's discards on to the image.
    pub discard: bool,
    /// The guest's writes go to a throw-away copy-on-write overlay; the image is opened
    /// read-only and never changes (`-x/--ephemeral`).
    pub ephemeral: bool,
}

/// A host directory the guest mounts over virtio-fs (`--directory=`, `--bind=`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsShare {
    /// The tag the guest mounts it by: `root` for the root directory, `mnt0`, `mnt1`, ... for
    /// bind mounts, as vmspawn names them.
    pub tag: String,
    /// The host directory.
    pub source: PathBuf,
    /// The guest may not change it (virtiofsd refuses writes).
    pub read_only: bool,
    /// Map guest UIDs and GIDs onto a host range; `None`: the same IDs on both sides.
    pub id_map: Option<IdMap>,
    /// Serve a copy of the directory made for this run and removed at its end
    /// (`-x/--ephemeral`): the directory itself never changes.
    pub ephemeral: bool,
}

/// Guest IDs `0..count` are host IDs `shift..shift + count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdMap {
    /// First host ID.
    pub shift: u32,
    /// How many IDs.
    pub count: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_console_puts_its_device_and_terminal_type_on_the_command_line() {
        let mut c = ConsoleConfig::default();
        assert_eq!(c.kernel_args(), ["console=hvc0"]);
        c.term = Some("xterm-256color".into());
        assert_eq!(
            c.kernel_args(),
            [
                "console=hvc0",
                "TERM=xterm-256color",
                "systemd.tty.term.hvc0=xterm-256color"
            ]
        );
        c.transport = ConsoleTransport::Serial;
        assert_eq!(c.kernel_args()[0], "console=ttyS0");
        assert_eq!(c.kernel_args()[2], "systemd.tty.term.ttyS0=xterm-256color");
        c.mode = ConsoleMode::Headless;
        assert!(c.kernel_args().is_empty());
    }

    #[test]
    fn only_plain_terminal_names_are_passed_on() {
        for ok in [
            "xterm-256color",
            "vt220",
            "screen.xterm",
            "rxvt-unicode+x",
            "a_b",
        ] {
            assert!(term_valid(ok), "{ok}");
        }
        let long = "x".repeat(129);
        for bad in ["", "xterm 256", "a;reboot", "dumb\n", "ü", long.as_str()] {
            assert!(!term_valid(bad), "{bad:?}");
        }
    }
}
